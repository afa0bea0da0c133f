"""Stacked layers: ``M`` layers of one shape, their weights stacked along a leading dimension, run as one
batched computation.

Two kinds of model hold their members this way, and share :class:`StackedLinear`, the one stacked linear layer
of uqkit (``weight`` ``[M, out, in]``, each member's as ``nn.Linear`` holds it):

* **Member models** (:class:`uqkit.DeepEnsemble`) fold their ``M`` members into the batch, member-major
  (:mod:`uqkit.nn.members`): a stacked twin reads its ``[M * B, ...]`` input as ``[M, B, ...]`` and applies
  member ``m``'s weights to rows ``m * B`` to ``(m + 1) * B - 1``. :class:`StackedModule` is the base of those
  twins (the ensemble's convolutions, embeddings and norms are in :mod:`uqkit.methods.ensemble`).
* **Stacks of independent small networks**, ``K`` models each trained on its own inputs: the UCI regression
  protocol trains many tiny networks (20 splits x ensemble members x hyper-parameter configurations, each one
  hidden layer of 50 units). Looping over them in Python would spend all the time in per-call overhead;
  stacking their weights turns each layer of all ``K`` models into one batched matrix product
  (``torch.baddbmm``). Their inputs are ``[K, B, features]``, where model ``k`` gets its own minibatch
  ``inputs[k]`` (of its own split), or ``[B, features]`` broadcast to every model; a :class:`StackedLinear`
  applies to them with :meth:`StackedLinear.per_member`.

  Every model's parameters are slices ``[k]`` of the stacked tensors and no operation mixes models, so a loss
  that is a *sum* of per-model losses gives each model exactly the gradient it would get alone, and an
  element-wise optimiser (Adam, SGD) then trains ``K`` independent models.

  * :class:`StackedFlipoutLinear`: ``K`` :class:`~uqkit.nn.FlipoutLinear` layers (Wen et al. 2018): per-model
    posterior means and scales, one ``Delta W`` per model and forward pass, signs per example.
  * :class:`StackedDropout`: MC dropout (Gal & Ghahramani 2016) with a drop rate per model.
  * :class:`StackedGaussianMLP`: the protocol's network, ``in -> 50 ReLU -> (mean, variance)``, with a
    Gaussian output head (variance ``softplus + floor``, Lakshminarayanan et al. 2017, Sec. 2.2.1).
  * :class:`StackedBayesianLastLayerMLP`: the same network with a Bayesian last layer for the mean (the
    stacked twin of :class:`~uqkit.nn.BayesianRegressionHead`; Hafner et al. 2018's BBB+NCP model).

  The Bayesian stacks keep their posterior parameters ``[K, in, out]`` (``weight_mean``, ``weight_rho``):
  their noise is drawn in that layout, so changing it would change the random streams (not the
  distribution) of the published UCI runs.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from uqkit._validation import check_positive_float, check_positive_int
from uqkit.nn._noise import rademacher
from uqkit.nn._posterior import BayesianModule, StochasticModule
from uqkit.nn.dropout import drop_rates
from uqkit.nn.members import folded_batch, running_member, tiled_source
from uqkit.nn.priors import Prior

__all__ = [
    "StackedBayesianLastLayerMLP",
    "StackedDropout",
    "StackedFlipoutLinear",
    "StackedGaussianMLP",
    "StackedLinear",
    "StackedModule",
    "stack_tensors",
    "stacked_parameter",
]


class StackedModule(nn.Module):
    """Base class of member-vectorized twins whose parameters and buffers carry a leading member dimension.

    A twin keeps the source module's parameter and buffer names, each with shape ``[M, *shape]``, so that
    :meth:`member_state` (member ``m``'s tensors, keyed by the source module's names) can rebuild the source
    module of any member. Its input is ``[M * B, ...]``, members folded into the batch, member-major.

    A tensor with one row (shared by the whole batch, e.g. a transformer's ``position_ids`` ``[1, T]``)
    inside a running :class:`uqkit.DeepEnsemble` gives each member's ``B`` rows that member's result
    (:meth:`_split_members` / :meth:`_join_members`).

    A twin that can also run one member alone on an ordinary ``[B, ...]`` batch (with its slice ``m`` of the
    stacked tensors, as the source module would) overrides :meth:`runs_one_member` and, while
    :func:`running_member` returns ``m``, computes member ``m``'s result: :class:`uqkit.DeepEnsemble`'s
    member-by-member inference (see there) is used only when every twin of the network can.

    Attributes:
        num_members: ``M``.
    """

    num_members: int

    def runs_one_member(self) -> bool:
        """Whether this twin, as configured now, computes member :func:`running_member`'s output alone on a
        ``[B, ...]`` batch while that is set (``False`` here: a twin must opt in)."""
        return False

    def member_state(self, index: int) -> dict[str, torch.Tensor]:
        """Member ``index``'s parameters and buffers, named as in the source module (views, not copies)."""
        return {
            name: tensor[index]
            for name, tensor in itertools.chain(self.named_parameters(), self.named_buffers())
        }

    def _split_members(self, inputs: torch.Tensor) -> tuple[torch.Tensor, int]:
        """``[M * B, ...] -> ([M, B, ...], B)``; a one-row input shared by the batch -> ``([M, 1, ...], B)``
        (expanded, no copy).

        Raises:
            ValueError: when the rows are not a multiple of ``M`` (and not one row shared by the batch).
        """
        members = self.num_members
        rows = inputs.shape[0] if inputs.dim() else 0
        running = folded_batch()
        if rows == 1 and members > 1 and running is not None and running[0] == members:
            return inputs.unsqueeze(0).expand(members, *inputs.shape), running[1]
        if inputs.dim() == 0 or rows % members:
            raise ValueError(
                f"{type(self).__name__} input: expected a multiple of M = {members} rows (members folded "
                f"into the batch, member-major [M * B, ...]), got shape {list(inputs.shape)}"
            )
        return inputs.unflatten(0, (members, rows // members)), rows // members

    @staticmethod
    def _join_members(outputs: torch.Tensor, batch: int) -> torch.Tensor:
        """``[M, B, ...] -> [M * B, ...]`` (a ``[M, 1, ...]`` result of a shared row expanded to ``B``)."""
        if outputs.shape[1] != batch:
            outputs = outputs.expand(outputs.shape[0], batch, *outputs.shape[2:])
        return outputs.reshape(outputs.shape[0] * batch, *outputs.shape[2:])


def stack_tensors(modules: Sequence[nn.Module], name: str) -> torch.Tensor | None:
    """``[M, *shape]``: the tensor attribute ``name`` of each of the ``M`` modules, detached and stacked
    (``None`` where the first module's is ``None``, e.g. a layer without bias)."""
    tensors = [getattr(module, name) for module in modules]
    if tensors[0] is None:
        return None
    return torch.stack([t.detach() for t in tensors])


def stacked_parameter(modules: Sequence[nn.Module], name: str) -> nn.Parameter | None:
    """:func:`stack_tensors` as a new ``nn.Parameter`` (``requires_grad`` as the first module's), for a
    stacked twin of ``M`` modules."""
    stacked = stack_tensors(modules, name)
    if stacked is None:
        return None
    return nn.Parameter(stacked, requires_grad=getattr(modules[0], name).requires_grad)


class _StackedLinearFunction(torch.autograd.Function):
    """``y_m = x_m W_m^T + b_m`` by ``torch.baddbmm``, with the weight gradient computed in ``W``'s layout.

    Autograd's own backward for ``bmm(x, W.mT)`` returns the weight gradient transposed (strides of
    ``W.mT``), which the gradient accumulation then copies into ``W``'s layout on every step; computing
    ``dW_m = dY_m^T x_m`` directly gives it contiguous. The backward is made of differentiable ops, so higher
    derivatives work.
    """

    @staticmethod
    def forward(inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if bias is None:
            return torch.bmm(inputs, weight.mT)
        return torch.baddbmm(bias.unsqueeze(1), inputs, weight.mT)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        x, weight, bias = inputs
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        grad_x = torch.bmm(grad, weight) if ctx.needs_input_grad[0] else None
        grad_weight = torch.bmm(grad.mT, x) if ctx.needs_input_grad[1] else None
        grad_bias = grad.sum(1) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias


class StackedLinear(StackedModule):
    """``M`` ``nn.Linear`` layers as one batched matrix product.

    ``y_m = x_m W_m^T + b_m`` for every member ``m`` with one ``torch.baddbmm`` on ``[M, B * T, in]``. An
    input known to be ``M`` tiles of one batch (:func:`uqkit.nn.members.tiled_source`, e.g. the first layer
    of an ensemble; or the un-tiled batch itself at the start of a :class:`uqkit.DeepEnsemble`'s
    ``nn.Sequential`` chain) enters the product as an expanded view of the un-tiled batch (no copy). Reading
    the weights as one ``[M * out, in]`` matrix for such an input (a single ``F.linear``) measured slower on
    CPU (MLP 784-512-512-10, 4 members, inference at batch 16: 1.07x vs 0.81x the time of a loop over 4
    models).

    It is the one stacked linear layer of uqkit: :class:`uqkit.DeepEnsemble` builds it from its members'
    ``nn.Linear`` layers, and the stacks of independent regression networks below create it fresh
    (:meth:`from_shape`) and apply it to ``[M, B, in]`` inputs, member ``m`` on its own rows
    (:meth:`per_member`).

    Args:
        modules: the ``M`` members' ``nn.Linear`` layers (same shapes).

    Shape:
        input ``[M * B, *, in_features]``, output ``[M * B, *, out_features]``. ``weight`` is
        ``[M, out_features, in_features]``, ``bias`` ``[M, out_features]``.
    """

    def __init__(self, modules: Sequence[nn.Linear]) -> None:
        super().__init__()
        self._set_tensors(stacked_parameter(modules, "weight"), stacked_parameter(modules, "bias"))

    def _set_tensors(self, weight: nn.Parameter, bias: nn.Parameter | None) -> None:
        self.num_members, self.out_features, self.in_features = (int(size) for size in weight.shape)
        self.weight = weight
        self.bias = bias

    @classmethod
    def from_shape(
        cls, num_members: int, in_features: int, out_features: int, bias: bool = True
    ) -> StackedLinear:
        """``M`` new layers, each initialised as ``nn.Linear(in_features, out_features)`` initialises one:
        weights and biases uniform in ``+-1 / sqrt(in_features)``.

        The weights are drawn as one ``[M, in, out]`` tensor and transposed to ``[M, out, in]``, then the
        biases ``[M, out]``: the order in which the UCI regression stacks have always drawn them, so a seed
        gives the same networks as before the two stacked linear layers became one (issue 16).

        Raises:
            TypeError, ValueError: for sizes that are not ints ``>= 1``, a ``bias`` that is not a bool.
        """
        num_members = check_positive_int(num_members, "num_members")
        in_features = check_positive_int(in_features, "in_features")
        out_features = check_positive_int(out_features, "out_features")
        if not isinstance(bias, bool):
            raise TypeError(f"bias: expected a bool, got {type(bias).__name__}")
        bound = 1.0 / math.sqrt(in_features)
        weight = torch.empty(num_members, in_features, out_features).uniform_(-bound, bound)
        weight = nn.Parameter(weight.transpose(1, 2).contiguous())
        biases = (
            nn.Parameter(torch.empty(num_members, out_features).uniform_(-bound, bound)) if bias else None
        )
        layer = cls.__new__(cls)
        StackedModule.__init__(layer)
        layer._set_tensors(weight, biases)
        return layer

    def runs_one_member(self) -> bool:
        return True

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if inputs.dim() < 2 or inputs.shape[-1] != self.in_features:
            raise ValueError(
                f"StackedLinear input: expected [M * B, *, {self.in_features}], got shape "
                f"{list(inputs.shape)}"
            )
        member = running_member()
        if member is not None:
            return F.linear(inputs, self.weight[member], None if self.bias is None else self.bias[member])
        members = self.num_members
        source = tiled_source(inputs, members)
        if source is not None:
            return self._forward_shared(source)
        rows = inputs.shape[0]
        if inputs.dim() == 2 and rows % members == 0 and inputs.is_contiguous():
            # the common [M * B, in] case in as few ops as possible (one view in, one view out)
            flat = inputs.view(members, rows // members, self.in_features)
            return self._product(flat).view(rows, self.out_features)
        split, batch = self._split_members(inputs)
        flat = split.reshape(members, -1, self.in_features)
        middle = inputs.shape[1:-1]
        return self._join_members(self._product(flat).view(members, -1, *middle, self.out_features), batch)

    def _accepts_shared(self, source: torch.Tensor) -> bool:
        return source.dim() >= 2 and source.shape[-1] == self.in_features

    def _forward_shared(self, source: torch.Tensor) -> torch.Tensor:
        """Every member's output ``[M * B, *, out]`` (member-major) for one batch ``[B, *, in]`` that all
        members read: the members' products with an expanded view of it (no copy)."""
        members, batch = self.num_members, source.shape[0]
        if source.dim() == 2:
            return self._product(source.expand(members, -1, -1)).view(members * batch, self.out_features)
        flat = source.reshape(1, -1, self.in_features).expand(members, -1, -1)
        out = self._product(flat).view(members, batch, *source.shape[1:-1], self.out_features)
        return self._join_members(out, batch)

    def per_member(self, inputs: torch.Tensor) -> torch.Tensor:
        """``[M, N, in] -> [M, N, out]``: member ``m``'s layer applied to ``inputs[m]`` (members on a leading
        dimension, as the stacks of independent networks hold them; an expanded ``[M, N, in]`` view of one
        ``[N, in]`` batch is not copied).

        Raises:
            ValueError: for an input that is not ``[M, N, in_features]``.
        """
        if inputs.dim() != 3 or inputs.shape[0] != self.num_members or inputs.shape[2] != self.in_features:
            raise ValueError(
                f"StackedLinear.per_member input: expected [M, N, in_features] = [{self.num_members}, N, "
                f"{self.in_features}], got shape {list(inputs.shape)}"
            )
        # The product runs on a [M, in, out] copy of the weights, as the UCI stacks' layer computed it before
        # the weights were stored [M, out, in] (issue 16): the BLAS kernels round a transposed operand
        # differently (6e-7 relative after 20 epochs on Boston), and over a few hundred epochs that flipped
        # the validation-chosen epoch on 3 of Boston's 20 splits. The copy keeps the UCI tables' numbers
        # bit for bit; the weights are small (50 x 13 per network), so it costs nothing measurable.
        weight = self.weight.mT.contiguous()
        if self.bias is None:
            return torch.bmm(inputs, weight)
        return torch.baddbmm(self.bias.unsqueeze(1), inputs, weight)

    def _product(self, flat: torch.Tensor) -> torch.Tensor:
        """``[M, N, in] -> [M, N, out]``."""
        if torch.is_grad_enabled():
            return _StackedLinearFunction.apply(flat, self.weight, self.bias)
        # no graph: the same product without autograd.Function's per-call argument binding
        return _StackedLinearFunction.forward(flat, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (
            f"num_members={self.num_members}, in_features={self.in_features}, "
            f"out_features={self.out_features}, bias={self.bias is not None}"
        )


def _per_model_inputs(inputs: torch.Tensor, num_models: int) -> torch.Tensor:
    """``[K, B, D]`` as it is, or ``[B, D]`` broadcast to every model as an expanded ``[K, B, D]`` view."""
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"input: expected a torch.Tensor, got {type(inputs).__name__}")
    if inputs.dim() == 2:
        return inputs.unsqueeze(0).expand(num_models, *inputs.shape)
    if inputs.dim() == 3 and inputs.shape[0] == num_models:
        return inputs
    raise ValueError(
        f"input: expected [B, features] or [K, B, features] with K = {num_models} models, got shape "
        f"{list(inputs.shape)}"
    )


def _per_model(layer: StackedLinear | StackedFlipoutLinear, inputs: torch.Tensor) -> torch.Tensor:
    """``[K, B, in] -> [K, B, out]``: a stacked linear or Flipout layer, model ``k`` on ``inputs[k]``."""
    return layer.per_member(inputs) if isinstance(layer, StackedLinear) else layer(inputs)


class StackedFlipoutLinear(BayesianModule):
    """``K`` independent :class:`~uqkit.nn.FlipoutLinear` layers as one batched product (Wen et al. 2018).

    Model ``k`` has a mean-field Gaussian posterior ``N(mean[k], softplus(rho[k])^2)`` over its weights
    and bias. Each forward pass draws one perturbation ``Delta W[k] = sigma[k] * eps`` per model and
    decorrelates it across that model's examples with Rademacher signs ``r`` (inputs) and ``s`` (outputs),
    Wen et al. 2018, eq. (5):

        ``y[k, n] = x[k, n] mean[k] + b[k] + ((x[k, n] * r[k, n]) Delta W[k] + Delta b[k]) * s[k, n]``.

    ``kl_divergence()`` is the sum of the ``K`` models' KL terms (closed form for a Normal prior).

    Args:
        num_models: ``K``.
        in_features, out_features: as ``nn.Linear``.
        prior: prior over every weight and bias (default ``NormalPrior(scale=1.0)``).
        posterior_scale_init: initial posterior standard deviation, ``>= 0`` (default 0.01).

    Shape:
        input ``[K, B, in_features]`` or ``[B, in_features]``; output ``[K, B, out_features]``.
        ``weight_mean``, ``weight_rho``: ``[K, in, out]``; ``bias_mean``, ``bias_rho``: ``[K, out]``.
    """

    def __init__(
        self,
        num_models: int,
        in_features: int,
        out_features: int,
        prior: Prior | None = None,
        posterior_scale_init: float = 1e-2,
    ) -> None:
        super().__init__(prior, posterior_scale_init)
        self.num_models = check_positive_int(num_models, "num_models")
        self.in_features = check_positive_int(in_features, "in_features")
        self.out_features = check_positive_int(out_features, "out_features")
        self._register_posterior("weight", (num_models, in_features, out_features))
        self._register_posterior("bias", (num_models, out_features))
        self.reset_means()

    @torch.no_grad()
    def reset_means(self) -> None:
        """Initialise the posterior means as ``nn.Linear`` initialises its weights, model by model."""
        bound = 1.0 / math.sqrt(self.in_features)
        self.weight_mean.uniform_(-bound, bound)
        self.bias_mean.uniform_(-bound, bound)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x = _per_model_inputs(input, self.num_models)
        if x.shape[-1] != self.in_features:
            raise ValueError(f"input: expected {self.in_features} features, got shape {list(input.shape)}")
        out = torch.baddbmm(self.bias_mean.unsqueeze(1), x, self.weight_mean)
        if not self.samples:
            return out
        models, batch = x.shape[:2]
        signs = rademacher(
            (models, batch, self.in_features + self.out_features), dtype=x.dtype, device=x.device
        )
        r_in, s_out = signs.split((self.in_features, self.out_features), dim=-1)
        delta_w = self.posterior_perturbation("weight")
        delta_b = self.posterior_perturbation("bias")
        perturbation = torch.baddbmm(delta_b.unsqueeze(1), x * r_in, delta_w)
        return out + perturbation * s_out

    def extra_repr(self) -> str:
        return (
            f"num_models={self.num_models}, in_features={self.in_features}, "
            f"out_features={self.out_features}, {super().extra_repr()}"
        )


class StackedDropout(StochasticModule):
    """Always-on inverted dropout (MC dropout, Gal & Ghahramani 2016) with its own rate for each model.

    Element ``(k, n, j)`` is zeroed with probability ``p[k]`` and the others scaled by ``1 / (1 - p[k])``,
    in training and eval mode alike; inside :func:`uqkit.nn.use_posterior_mean` it is the identity.

    Args:
        rates: ``K`` drop probabilities in ``[0, 1)``.

    Shape:
        input ``[K, B, ...]``; output the same.
    """

    def __init__(self, rates: Sequence[float] | torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("rates", drop_rates(rates))

    @property
    def num_models(self) -> int:
        return int(self.rates.shape[0])

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.dim() < 2 or input.shape[0] != self.num_models:
            raise ValueError(f"input: expected [{self.num_models}, B, ...], got shape {list(input.shape)}")
        if not self.samples or not bool((self.rates > 0).any()):
            return input
        keep = (1.0 - self.rates).to(input.dtype).reshape(-1, *([1] * (input.dim() - 1)))
        mask = torch.rand_like(input).lt_(keep).div_(keep)  # 0 or 1 / (1 - p), in place: one buffer
        return input * mask

    def extra_repr(self) -> str:
        return f"num_models={self.num_models}"


class StackedGaussianMLP(nn.Module):
    """``K`` one-hidden-layer networks with a Gaussian output head: ``x -> (mean, variance)``.

    ``h = relu(W1 drop(x) + b1)``, ``[mu, v] = W2 drop(h) + b2``, ``sigma^2 = softplus(v) + min_variance``
    (Lakshminarayanan et al. 2017, Sec. 2.2.1; Nix & Weigend 1994). Dropout, when a model's rate is
    positive, sits before each linear layer as in Gal & Ghahramani's UCI networks.

    Args:
        num_models: ``K``.
        in_features: input features ``D``.
        hidden: hidden units (50 in the published UCI tables, 100 for protein).
        out_features: target dimension (1 for UCI).
        dropout: ``None`` for no dropout, or ``K`` (or one, broadcast) MC dropout rates.
        flipout: use :class:`StackedFlipoutLinear` (a mean-field BNN) instead of :class:`StackedLinear`
            (created with :meth:`StackedLinear.from_shape`).
        prior, posterior_scale_init: of the Flipout layers.
        min_variance: floor added to the softplus variance (default 1e-6, as Lakshminarayanan et al.).

    Shape:
        input ``[K, B, D]`` or ``[B, D]``; outputs ``mean`` and ``variance``, each ``[K, B, out_features]``.
    """

    def __init__(
        self,
        num_models: int,
        in_features: int,
        hidden: int = 50,
        out_features: int = 1,
        dropout: Sequence[float] | torch.Tensor | None = None,
        flipout: bool = False,
        prior: Prior | None = None,
        posterior_scale_init: float = 1e-2,
        min_variance: float = 1e-6,
    ) -> None:
        super().__init__()
        self.num_models = check_positive_int(num_models, "num_models")
        self.out_features = check_positive_int(out_features, "out_features")
        self.min_variance = check_positive_float(min_variance, "min_variance")
        if flipout:
            self.hidden = StackedFlipoutLinear(num_models, in_features, hidden, prior, posterior_scale_init)
            self.output = StackedFlipoutLinear(
                num_models, hidden, 2 * out_features, prior, posterior_scale_init
            )
        else:
            self.hidden = StackedLinear.from_shape(num_models, in_features, hidden)
            self.output = StackedLinear.from_shape(num_models, hidden, 2 * out_features)
        self.dropout: StackedDropout | None = None
        if dropout is not None:
            rates = torch.as_tensor(dropout, dtype=torch.float64).reshape(-1)
            if rates.numel() == 1:
                rates = rates.expand(num_models)
            if rates.numel() != num_models:
                raise ValueError(f"dropout: expected 1 or {num_models} rates, got {rates.numel()}")
            self.dropout = StackedDropout(rates)

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.dropout is None else self.dropout(x)

    def forward(self, input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = _per_model_inputs(input, self.num_models)
        hidden = F.relu(_per_model(self.hidden, self._drop(x)))
        out = _per_model(self.output, self._drop(hidden))
        mean, raw = out.split(self.out_features, dim=-1)
        return mean, F.softplus(raw) + self.min_variance

    def weight_norms(self) -> torch.Tensor:
        """``[K]`` squared L2 norms of each model's weight matrices (biases excluded), for weight decay."""
        norms = []
        for layer in (self.hidden, self.output):
            weight = layer.weight if isinstance(layer, StackedLinear) else layer.weight_mean
            norms.append(weight.square().sum(dim=(1, 2)))
        return norms[0] + norms[1]


class StackedBayesianLastLayerMLP(BayesianModule):
    """``K`` one-hidden-layer networks whose mean is a Bayesian last layer: ``x -> (mean, variance)``.

    ``h = relu(W1 x + b1)``; the mean function ``f = h w + b`` has a factorised Gaussian posterior over
    ``w`` (``[K, hidden, out]``, ``N(m, softplus(rho)^2)``) and a deterministic bias ``b``; the noise
    variance is ``sigma^2 = softplus(h a + c) + min_variance``. As ``f`` is linear in ``w``, the function
    distribution ``q(f | x) = N(h m + b, (h * h) s^2)`` and the predictive ``N(h m + b, (h * h) s^2 +
    sigma^2)`` are exact (see :class:`~uqkit.nn.BayesianRegressionHead`, the single-model layer). This is
    the network of Hafner et al. 2018's BBB+NCP, trained in the UCI benchmark with the noise-contrastive
    prior on ``q(f | x~)`` (:mod:`uqkit.methods.ncp`).

    ``forward`` returns the exact predictive's mean and variance (no sampling); :meth:`moments` returns the
    three parts. ``kl_divergence()`` is the sum over the ``K`` models of ``KL(q(w) || p(w))``.

    Args:
        num_models: ``K``.
        in_features: input features ``D``.
        hidden: hidden units.
        out_features: target dimension.
        prior: weight prior of the mean layer (default ``NormalPrior(scale=1.0)``).
        posterior_scale_init: initial posterior standard deviation of the mean's weights, ``> 0``.
        min_variance: floor added to the softplus noise variance.

    Shape:
        input ``[K, B, D]`` or ``[B, D]``; outputs each ``[K, B, out_features]``.
    """

    def __init__(
        self,
        num_models: int,
        in_features: int,
        hidden: int = 50,
        out_features: int = 1,
        prior: Prior | None = None,
        posterior_scale_init: float = 0.1,
        min_variance: float = 1e-6,
    ) -> None:
        super().__init__(prior, check_positive_float(posterior_scale_init, "posterior_scale_init"))
        self.num_models = check_positive_int(num_models, "num_models")
        self.out_features = check_positive_int(out_features, "out_features")
        self.min_variance = check_positive_float(min_variance, "min_variance")
        self.hidden = StackedLinear.from_shape(num_models, in_features, hidden)
        self.noise = StackedLinear.from_shape(num_models, hidden, out_features)
        self._register_posterior("weight", (num_models, hidden, out_features))
        self.bias = nn.Parameter(torch.empty(num_models, out_features))
        with torch.no_grad():  # as nn.Linear(hidden, out_features), model by model
            bound = 1.0 / math.sqrt(hidden)
            self.weight_mean.uniform_(-bound, bound)
            self.bias.uniform_(-bound, bound)

    def moments(self, input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(function mean, function variance, noise variance)``, each ``[K, B, out_features]``."""
        x = _per_model_inputs(input, self.num_models)
        hidden = F.relu(self.hidden.per_member(x))
        function_mean = torch.baddbmm(self.bias.unsqueeze(1), hidden, self.weight_mean)
        function_variance = torch.bmm(hidden * hidden, self.posterior_scale("weight").square())
        return function_mean, function_variance, F.softplus(self.noise.per_member(hidden)) + self.min_variance

    def forward(self, input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        function_mean, function_variance, noise_variance = self.moments(input)
        return function_mean, function_variance + noise_variance

    def extra_repr(self) -> str:
        return f"num_models={self.num_models}, out_features={self.out_features}, {super().extra_repr()}"
