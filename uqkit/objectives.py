"""Training objectives for Bayesian networks: the KL term collected from a model, and the ELBO loss.

The KL divergence is summed once, here, over every layer that defines ``kl_divergence()``; it is scaled once,
in :class:`ELBO`, by ``1 / num_data``. Layers never return ``(output, kl)`` tuples.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from uqkit._validation import (
    check_float_tensor,
    check_labels,
    check_positive_float,
    check_positive_int,
    check_tensor,
)

__all__ = ["ELBO", "gaussian_nll_loss", "kl_divergence"]

_HALF_LOG_TWO_PI = 0.5 * math.log(2.0 * math.pi)


def _kl_modules(model: nn.Module) -> list[nn.Module]:
    """Outermost modules that define ``kl_divergence()``, each once (a shared layer counts once)."""
    found: list[nn.Module] = []
    seen: set[int] = set()

    def visit(module: nn.Module) -> None:
        if id(module) in seen:
            return
        seen.add(id(module))
        if callable(getattr(type(module), "kl_divergence", None)):
            found.append(module)  # its own method accounts for its children
            return
        for child in module.children():
            visit(child)

    visit(model)
    return found


def gaussian_nll_loss(
    mean: torch.Tensor, variance: torch.Tensor, targets: torch.Tensor, beta: float = 0.0
) -> torch.Tensor:
    """Per-example Gaussian negative log-likelihood, optionally beta-weighted (Seitzer et al. 2022).

    ``l_i = 1/2 log(2 pi sigma_i^2) + (y_i - mu_i)^2 / (2 sigma_i^2)`` (Nix & Weigend 1994;
    Lakshminarayanan et al. 2017, eq. (1)), the constant included so that ``beta = 0`` gives the true NLL.
    With ``beta > 0`` each term is weighted by ``stop_gradient(sigma_i^(2 beta))`` ("beta-NLL", Seitzer et
    al. 2022, eq. (5)): ``beta = 0`` is the NLL, ``beta = 1`` gives the mean the gradient of the squared
    error, and values in between (0.5 is the paper's recommendation) keep high-variance points from being
    ignored by the mean.

    Args:
        mean: predicted means.
        variance: predicted variances, ``> 0``, the same shape.
        targets: observed values, broadcastable to ``mean`` (e.g. ``[B, 1]`` against ``[K, B, 1]``).
        beta: the weighting exponent in ``[0, 1]``.

    Returns:
        The per-element loss, the broadcast shape of the inputs (reduce it as the model needs: a stacked
        model averages over examples and sums over models).
    """
    check_tensor(mean, "mean")
    check_tensor(variance, "variance")
    check_tensor(targets, "targets")
    if mean.shape != variance.shape:
        raise ValueError(
            f"mean and variance: expected the same shape, got {tuple(mean.shape)} and {tuple(variance.shape)}"
        )
    beta = check_positive_float(beta, "beta", allow_zero=True)
    if beta > 1.0:
        raise ValueError(f"beta: expected a number in [0, 1], got {beta}")
    loss = 0.5 * variance.log() + (targets - mean).square() / (2.0 * variance) + _HALF_LOG_TWO_PI
    if beta > 0.0:
        loss = loss * variance.detach().pow(beta)
    return loss


def kl_divergence(model: nn.Module) -> torch.Tensor:
    """``KL(q || p)`` of a whole Bayesian model: the sum of ``kl_divergence()`` of its Bayesian layers.

    Each module that defines a ``kl_divergence()`` method (the layers of :mod:`uqkit.nn`, or your own) is
    counted once, even if it is used at several places in the model; a module's own method is trusted to
    include its children. Layers with a :class:`~uqkit.nn.priors.NormalPrior` give their closed form; other
    priors an unbiased Monte Carlo estimate.

    Args:
        model: a module containing at least one Bayesian layer (e.g. after :func:`uqkit.bayesianize_`).

    Returns:
        A scalar tensor (nats), differentiable in the posterior parameters. It is *not* divided by the
        number of training examples: :class:`ELBO` does that.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module``.
        ValueError: if ``model`` has no module with a ``kl_divergence()`` method.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    layers = _kl_modules(model)
    if not layers:
        raise ValueError(
            "model: expected at least one Bayesian layer (a module with a kl_divergence() method), found "
            f"none in {type(model).__name__}; convert it first: "
            "uqkit.bayesianize_(model, uqkit.FlipoutConfig())"
        )
    total = layers[0].kl_divergence()
    for layer in layers[1:]:
        total = total + layer.kl_divergence()
    return total


class ELBO(nn.Module):
    """Negative evidence lower bound per training example, as a loss (Blundell et al. 2015, eq. (1)).

    ``loss = mean NLL + kl_weight_t * KL(q || p) / num_data``: the minibatch estimate of
    ``-ELBO / num_data``, so that its scale matches the usual mean cross-entropy and learning rates carry
    over. The mean NLL averages over the examples of the batch and, for ``[S, B, C]`` logits, over the ``S``
    posterior samples (a Monte Carlo estimate of the expected log-likelihood); targets are given once,
    ``[B]``.

    KL annealing (optional, "warm-up", Sønderby et al. 2016): ``kl_weight_t = kl_weight * min(1, t /
    warmup_steps)`` rises linearly over the first ``warmup_steps`` training calls; ``t`` counts the calls made
    with gradients enabled (``t = 1`` on the first), so evaluation under ``torch.no_grad()`` does not advance
    it. The counter is saved in ``state_dict()`` for resuming.

    Args:
        num_data: ``N``, the number of training examples (not batches).
        kl_weight: final weight of the KL term, ``>= 0`` (1 gives the ELBO; below 1 a "cold" posterior).
        warmup_steps: number of training calls over which the KL weight rises from 0; 0 (default) turns
            annealing off.
        nll: optional ``nll(outputs, targets) -> scalar mean negative log-likelihood`` for other likelihoods
            (e.g. Gaussian regression); default: mean cross-entropy of logits.

    Example:
        >>> elbo = uqkit.ELBO(num_data=len(train_set))
        >>> loss = elbo(model(x), y, model)
        >>> loss.backward()
        >>> elbo.last_nll, elbo.last_kl  # detached parts, for logging
    """

    def __init__(
        self,
        num_data: int,
        kl_weight: float = 1.0,
        warmup_steps: int = 0,
        nll: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.num_data = check_positive_int(num_data, "num_data")
        self.kl_weight = check_positive_float(kl_weight, "kl_weight", allow_zero=True)
        self.warmup_steps = check_positive_int(warmup_steps, "warmup_steps", minimum=0)
        if nll is not None and not callable(nll):
            raise TypeError(
                f"nll: expected a callable nll(outputs, targets) or None, got {type(nll).__name__}"
            )
        self.nll = nll
        self.step = 0
        self.last_nll: torch.Tensor | None = None
        self.last_kl: torch.Tensor | None = None

    @property
    def current_kl_weight(self) -> float:
        """The KL weight that the next training call will use."""
        if self.warmup_steps == 0:
            return self.kl_weight
        return self.kl_weight * min(1.0, (self.step + 1) / self.warmup_steps)

    def _mean_nll(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.nll is not None:
            check_tensor(logits, "logits")
            return self.nll(logits, targets)
        on_cpu = logits.device.type == "cpu"  # the finiteness and range checks would sync a GPU every step
        check_float_tensor(logits, "logits", (2, 3), "[batch, classes] or [samples, batch, classes]", on_cpu)
        batch = logits.shape[-2]
        check_labels(
            targets,
            "targets",
            num_classes=logits.shape[-1] if on_cpu else None,
            length=batch,
        )
        if logits.ndim == 2:
            return F.cross_entropy(logits, targets)
        # [S, B, C] -> cross_entropy's [B, C, S] layout, targets broadcast over samples without copying
        return F.cross_entropy(logits.permute(1, 2, 0), targets[:, None].expand(batch, logits.shape[0]))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, model: nn.Module) -> torch.Tensor:
        """The loss for one minibatch.

        Args:
            logits: ``[B, C]`` or ``[S, B, C]`` outputs of ``model`` on the batch (any outputs with ``nll``).
            targets: ``[B]`` class indices (whatever ``nll`` takes, with ``nll``).
            model: the model whose layers' KL enters the loss.

        Returns:
            A scalar tensor: ``mean NLL + kl_weight_t * KL / num_data``.
        """
        nll = self._mean_nll(logits, targets)
        kl = kl_divergence(model)
        weight = self.current_kl_weight
        if torch.is_grad_enabled():
            self.step += 1
        self.last_nll, self.last_kl = nll.detach(), kl.detach()
        return nll + kl * (weight / self.num_data)

    def get_extra_state(self) -> dict[str, Any]:
        return {"step": self.step}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])

    def extra_repr(self) -> str:
        return f"num_data={self.num_data}, kl_weight={self.kl_weight}, warmup_steps={self.warmup_steps}"
