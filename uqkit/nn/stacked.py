"""Stacks of independent small networks trained as one batch: ``K`` models, each on its own inputs.

The UCI regression protocol trains many tiny networks (20 splits x ensemble members x hyper-parameter
configurations, each one hidden layer of 50 units). Looping over them in Python would spend all the time in
per-call overhead; stacking their weights along a leading model dimension turns each layer of all ``K``
models into one batched matrix product (``torch.baddbmm``). Inputs follow the member convention of
:mod:`uqkit.nn.members`: ``[K, B, features]``, where model ``k`` gets its own minibatch ``inputs[k]`` (of its
own split), or ``[B, features]`` broadcast to every model.

Every model's parameters are slices ``[k]`` of the stacked tensors and no operation mixes models, so a loss
that is a *sum* of per-model losses gives each model exactly the gradient it would get alone, and an
element-wise optimiser (Adam, SGD) then trains ``K`` independent models.

* :class:`StackedLinear`: ``K`` ``nn.Linear`` layers, initialised like ``nn.Linear`` each.
* :class:`StackedFlipoutLinear`: ``K`` :class:`~uqkit.nn.FlipoutLinear` layers (Wen et al. 2018): per-model
  posterior means and scales, one ``Delta W`` per model and forward pass, signs per example.
* :class:`StackedDropout`: MC dropout (Gal & Ghahramani 2016) with a drop rate per model.
* :class:`StackedGaussianMLP`: the protocol's network, ``in -> 50 ReLU -> (mean, variance)``, with a
  Gaussian output head (variance ``softplus + floor``, Lakshminarayanan et al. 2017, Sec. 2.2.1).
* :class:`StackedBayesianLastLayerMLP`: the same network with a Bayesian last layer for the mean (the
  stacked twin of :class:`~uqkit.nn.BayesianRegressionHead`; Hafner et al. 2018's BBB+NCP model).

This is deliberately the one small place for stacked weights in uqkit; the general member-vectorised
ensemble (``uqkit.DeepEnsemble``) should absorb it once it takes per-member inputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from uqkit._validation import check_positive_float, check_positive_int
from uqkit.nn._noise import rademacher
from uqkit.nn._posterior import BayesianModule, StochasticModule
from uqkit.nn.dropout import drop_rates
from uqkit.nn.members import _with_member_dim as with_member_dim
from uqkit.nn.priors import Prior

__all__ = [
    "StackedBayesianLastLayerMLP",
    "StackedDropout",
    "StackedFlipoutLinear",
    "StackedGaussianMLP",
    "StackedLinear",
]


class StackedLinear(nn.Module):
    """``K`` independent ``nn.Linear(in_features, out_features)`` layers applied as one batched product.

    ``y[k] = x[k] W[k] + b[k]``. Each model is initialised as ``nn.Linear`` would be (weights and bias
    uniform in ``+-1/sqrt(in_features)``).

    Args:
        num_models: ``K``.
        in_features, out_features: as ``nn.Linear``.
        bias: whether the layers have biases.

    Shape:
        input ``[K, B, in_features]`` or ``[B, in_features]`` (broadcast); output ``[K, B, out_features]``.
        ``weight`` is ``[K, in_features, out_features]`` (the transpose of ``nn.Linear.weight`` of each
        model), ``bias`` ``[K, out_features]``.
    """

    def __init__(self, num_models: int, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.num_models = check_positive_int(num_models, "num_models")
        self.in_features = check_positive_int(in_features, "in_features")
        self.out_features = check_positive_int(out_features, "out_features")
        self.weight = nn.Parameter(torch.empty(num_models, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(num_models, out_features)) if bias else None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.in_features)
        self.weight.uniform_(-bound, bound)
        if self.bias is not None:
            self.bias.uniform_(-bound, bound)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x = with_member_dim(input, self.num_models, 1)
        if x.shape[-1] != self.in_features:
            raise ValueError(f"input: expected {self.in_features} features, got shape {list(input.shape)}")
        if self.bias is None:
            return torch.bmm(x, self.weight)
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight)

    def extra_repr(self) -> str:
        return (
            f"num_models={self.num_models}, in_features={self.in_features}, out_features={self.out_features}"
        )


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
        x = with_member_dim(input, self.num_models, 1)
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
        flipout: use :class:`StackedFlipoutLinear` (a mean-field BNN) instead of :class:`StackedLinear`.
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
            self.hidden = StackedLinear(num_models, in_features, hidden)
            self.output = StackedLinear(num_models, hidden, 2 * out_features)
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
        x = with_member_dim(input, self.num_models, 1)
        hidden = F.relu(self.hidden(self._drop(x)))
        out = self.output(self._drop(hidden))
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
        self.hidden = StackedLinear(num_models, in_features, hidden)
        self.noise = StackedLinear(num_models, hidden, out_features)
        self._register_posterior("weight", (num_models, hidden, out_features))
        self.bias = nn.Parameter(torch.empty(num_models, out_features))
        with torch.no_grad():  # as nn.Linear(hidden, out_features), model by model
            bound = 1.0 / math.sqrt(hidden)
            self.weight_mean.uniform_(-bound, bound)
            self.bias.uniform_(-bound, bound)

    def moments(self, input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(function mean, function variance, noise variance)``, each ``[K, B, out_features]``."""
        x = with_member_dim(input, self.num_models, 1)
        hidden = F.relu(self.hidden(x))
        function_mean = torch.baddbmm(self.bias.unsqueeze(1), hidden, self.weight_mean)
        function_variance = torch.bmm(hidden * hidden, self.posterior_scale("weight").square())
        return function_mean, function_variance, F.softplus(self.noise(hidden)) + self.min_variance

    def forward(self, input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        function_mean, function_variance, noise_variance = self.moments(input)
        return function_mean, function_variance + noise_variance

    def extra_repr(self) -> str:
        return f"num_models={self.num_models}, out_features={self.out_features}, {super().extra_repr()}"
