"""Monte Carlo dropout (Gal & Ghahramani 2016): dropout that stays on at prediction time.

Averaging the network's output over dropout masks approximates the predictive distribution of a Bayesian
network with a Bernoulli variational posterior over the rows of the next layer's weights (Gal & Ghahramani
2016, Sec. 3). :class:`MCDropout` therefore drops units in training *and* eval mode; inside
:func:`uqkit.nn.use_posterior_mean` it is the identity, the expectation of inverted dropout. Its KL term is,
up to constants, an L2 penalty on the weights (Gal & Ghahramani 2016, eq. (4)); :func:`dropout_weight_decay`
computes it per training example, to be added to the mean cross-entropy. :func:`uqkit.kl_divergence` does
not include it, and no optimiser ``weight_decay`` is implied.

:class:`MemberDropout` is ordinary (training-only) dropout with its own rate for each member of a member model
whose members ride folded in the batch (``[M * B, ...]``, :mod:`uqkit.nn.members`): the members of a
hyper-deep ensemble (Wenzel et al. 2020, :class:`uqkit.methods.hyper_ensemble.HyperEnsemble`) each train with
their own dropout rate in one vectorized stack.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from uqkit._validation import check_positive_int, check_unit_interval
from uqkit.nn._posterior import StochasticModule
from uqkit.nn.members import member_rows

__all__ = ["MCDropout", "MemberDropout", "drop_rates", "dropout_weight_decay"]


class MCDropout(StochasticModule):
    """Always-on inverted dropout: zeroes each element with probability ``p``, scales the rest by ``1/(1-p)``.

    Args:
        p: drop probability in [0, 1). Default 0.5.
        inplace: overwrite the input (as ``torch.nn.Dropout``). Default ``False``.

    Shape:
        any; the output has the input's shape. Masks are independent per element, hence per example.

    Example:
        >>> model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), MCDropout(0.1), nn.Linear(32, 3)).eval()
        >>> uqkit.predict(model, x, num_samples=20)  # samples differ although the model is in eval mode
    """

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        super().__init__()
        self.p = check_unit_interval(p, "p", open_right=True)
        self.inplace = bool(inplace)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.samples or self.p == 0.0:
            return input
        return F.dropout(input, self.p, training=True, inplace=self.inplace)

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}"


def drop_rates(rates: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """One or more drop probabilities, checked to lie in ``[0, 1)``, as a 1-D tensor of the default dtype
    (the ``rates`` buffer of :class:`MemberDropout` and :class:`uqkit.nn.StackedDropout`).

    Raises:
        ValueError: for no rates, or a rate outside ``[0, 1)`` or not finite.
    """
    rates = torch.as_tensor(rates, dtype=torch.float64).reshape(-1)
    if rates.numel() == 0 or bool(((rates < 0) | (rates >= 1) | ~torch.isfinite(rates)).any()):
        raise ValueError(f"rates: expected one or more drop probabilities in [0, 1), got {rates.tolist()}")
    return rates.to(torch.get_default_dtype())


class MemberDropout(nn.Module):
    """Inverted dropout with its own rate ``p_m`` for each member ``m`` of a folded batch ``[M * B, ...]``.

    In training mode, every element of member ``m``'s rows (``m * B`` to ``(m + 1) * B - 1``, member-major as
    :mod:`uqkit.nn.members` folds them) is zeroed with probability ``p_m`` and the others are scaled by
    ``1 / (1 - p_m)``, so that its expectation is the input (Srivastava et al. 2014, inverted as
    ``nn.Dropout``); in eval mode it is the identity, as ``nn.Dropout``. Member ``m`` therefore trains as the
    same network with ``nn.Dropout(p_m)`` would. A :class:`uqkit.DeepEnsemble` keeps a factory's
    ``nn.Dropout`` as it is (one rate for every row); :class:`uqkit.methods.hyper_ensemble.HyperEnsemble`
    puts this module in its place to give each member its own rate.

    The mask is drawn as ``torch.rand(M, B, *rest) < 1 - p_m`` from torch's global generator.

    Args:
        rates: the ``M`` drop probabilities, each in ``[0, 1)``.

    Shape:
        input ``[M * B, ...]`` (members folded into the batch, member-major); output the same.

    Raises:
        ValueError: for no rates or a rate outside ``[0, 1)``; in the forward pass, for an input whose rows
            are not a multiple of ``M``.
    """

    def __init__(self, rates: Sequence[float] | torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("rates", drop_rates(rates))

    @property
    def num_members(self) -> int:
        """``M``, the number of rates."""
        return int(self.rates.shape[0])

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        members = self.num_members
        batch = member_rows(input, members, "MemberDropout input")
        if not self.training or not bool((self.rates > 0).any()):
            return input
        rest = input.shape[1:]
        keep = (1.0 - self.rates).to(input.dtype).reshape(members, 1, *([1] * len(rest)))
        noise = torch.rand((members, batch, *rest), dtype=input.dtype, device=input.device)
        mask = (noise < keep).to(input.dtype).div_(keep)  # 0 or 1 / (1 - p_m)
        return (input.reshape(members, batch, *rest) * mask).reshape(input.shape)

    def extra_repr(self) -> str:
        return f"num_members={self.num_members}, rates={[round(float(r), 4) for r in self.rates]}"


def dropout_weight_decay(model: nn.Module, length_scale: float, num_data: int) -> torch.Tensor:
    """MC dropout's KL term per training example: L2 weight decay (Gal & Ghahramani 2016, eq. (4)).

    With a prior ``N(0, I / l^2)`` on the weights and keep probability ``1 - p`` on a layer's inputs, the
    objective is the mean cross-entropy plus

    ``sum_i l^2 (1 - p_i) / (2 N) ||W_i||^2 + l^2 / (2 N) ||b_i||^2``

    (for classification, model precision ``tau = 1``), applied to the weights ``W_i`` as they are stored, as
    in Gal's reference code (DropoutUncertaintyExps, ``reg = l^2 (1 - p) / (2 N tau)``). Here ``p_i`` is the
    rate of the last :class:`MCDropout` before layer ``i`` in module registration order (the forward order
    of an ``nn.Sequential``), 0 when none comes between it and the previous layer with parameters: an input
    that is never dropped has keep probability 1. Every parameter named ``bias`` gets ``l^2 / (2 N)``.

    Args:
        model: the network; its modules with parameters of their own are the layers ``i``.
        length_scale: the prior length-scale ``l > 0`` (Gal's code uses ``1e-2``).
        num_data: ``N``, the number of training examples.

    Returns:
        A scalar tensor (differentiable in the parameters), in nats per example.

    Raises:
        ValueError: for a non-positive ``length_scale`` or ``num_data``.
    """
    if not length_scale > 0:
        raise ValueError(f"length_scale: expected a positive prior length-scale, got {length_scale!r}")
    num_data = check_positive_int(num_data, "num_data")
    base = length_scale**2 / (2.0 * num_data)
    total: torch.Tensor | None = None
    drop_rate = 0.0
    for module in model.modules():
        if isinstance(module, MCDropout):
            drop_rate = module.p
            continue
        parameters = list(module.named_parameters(recurse=False))
        if not parameters:
            continue
        for name, parameter in parameters:
            keep = 1.0 if name == "bias" else 1.0 - drop_rate
            term = base * keep * parameter.square().sum()
            total = term if total is None else total + term
        drop_rate = 0.0
    if total is None:
        return torch.zeros(())
    return total
