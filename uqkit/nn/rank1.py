"""Rank-1 Bayesian neural network layers (Dusenberry et al. 2020): BatchEnsemble with random fast weights.

A rank-1 BNN layer has the structure of a BatchEnsemble layer (:mod:`uqkit.nn.batchensemble`): a shared
weight ``W`` (a deterministic point estimate), per-member biases, and per-member rank-1 factors ``r_m``
(input features / channels) and ``s_m`` (output features / channels), member ``m`` computing

    ``y_m = ((x_m * r_m) W^T) * s_m + b_m``.

Only the factors are random (Dusenberry et al. 2020, Sec. 3): each member is one component of a mixture
posterior over ``(r, s)``, ``q(r, s) = (1/M) sum_m N(r; mu_r_m, sigma_r_m^2) N(s; mu_s_m, sigma_s_m^2)``
(factorised Gaussians, ``sigma = softplus(rho)``), with a prior ``p(r) p(s)`` that is typically
``N(1, sigma_prior^2)`` per entry (the factors multiply ``W``, so "no change" is 1, not 0). The layer is
trained on the ELBO; its KL term (:meth:`kl_divergence`) covers the factors only:

    ``KL(q || p) <= (1/M) sum_m [KL(q_r_m || p_r) + KL(q_s_m || p_s)]``

the convexity bound for a uniform mixture (the mixture's own KL has no closed form). Together with the
expected log-likelihood of the mixture, ``(1/M) sum_m E_{q_m}[log p(y | r, s)]`` (the mean over members of
the training loss), this gives a lower bound on the ELBO of the mixture posterior.

Sampling: on every forward pass (training and eval), each example of each member draws its own
``r ~ N(mu_r_m, sigma_r_m^2)`` and ``s ~ N(mu_s_m, sigma_s_m^2)`` by reparameterisation. The factors enter
elementwise, so per-example samples cost no extra matrix product (the rank-1 parametrisation's point,
Dusenberry et al. 2020, Sec. 3.1), and the examples' noise is independent, which lowers the gradient
variance compared with one sample per batch (``per_example_noise = True``). Inside
:func:`uqkit.nn.use_posterior_mean`, or with the posterior scales at zero, the layer uses the means and equals
the :class:`~uqkit.nn.BatchEnsembleLinear` / ``Conv`` layer with ``r = mu_r``, ``s = mu_s`` exactly.

Defaults: posterior standard deviations ``sqrt(0.001 / 0.999) ~ 0.0316`` (``dropout_rate = 1e-3``) and
prior ``N(1, 0.1^2)`` as in uncertainty-baselines' rank-1 CIFAR configuration, and factor means drawn from
that prior, ``N(1, 0.1^2)`` (:data:`RANK1_FAST_WEIGHT_STD`), so that the initial means are a typical draw of
the prior. (uncertainty-baselines' BatchEnsemble CIFAR default is ``N(1, 0.5^2)``,
``random_sign_init = -0.5``; their rank-1 CIFAR script starts the means at random signs,
``random_sign_init = 0.5``, and anneals the KL in over 200 of its 250 epochs;
``fast_weight_init="random_sign"`` gives that start.) Choose the means' initialisation and the prior together:
per entry the KL at initialisation is ``log(p / s) + s^2 / (2 p^2) - 1/2 + (mu - 1)^2 / (2 p^2)`` for prior
scale ``p`` and posterior scale ``s``, so a mean drawn from the prior costs 1/2 nat on average beyond the
``mu = 1`` value, a ``N(1, 0.5^2)`` mean under the ``N(1, 0.1^2)`` prior 12.5 nats and a ``-1`` mean 200 nats.
:class:`uqkit.Rank1Config` (conversions) draws the means from ``N(1, 0.1^2)``; the benchmark's ``rank1-bnn``
starts them at random signs under the prior ``N(1, 2)``, of which they are a typical draw
(:mod:`uqkit.bench.methods_ensembles`).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from uqkit.nn._posterior import BayesianModule
from uqkit.nn.batchensemble import (
    MemberConvBase,
    MemberLinearBase,
    check_fast_weight_init,
    init_fast_weights_,
)
from uqkit.nn.priors import NormalPrior, Prior

__all__ = ["Rank1Conv1d", "Rank1Conv2d", "Rank1Linear"]

RANK1_POSTERIOR_SCALE_INIT = math.sqrt(1e-3 / (1.0 - 1e-3))
"""Initial posterior standard deviation of the factors (uncertainty-baselines: ``dropout_rate = 1e-3``)."""

RANK1_FAST_WEIGHT_STD = 0.1
"""Standard deviation of the default ``"normal"`` factor-mean initialisation: the default prior's scale, so
the means start as a typical draw of :func:`default_rank1_prior` (KL 1/2 nat per entry, not 12.5 as for
``N(1, 0.5^2)`` means under that prior)."""


def default_rank1_prior() -> NormalPrior:
    """``N(1, 0.1^2)`` on every factor entry (uncertainty-baselines' rank-1 CIFAR prior mean and stddev)."""
    return NormalPrior(scale=0.1, loc=1.0)


class _Rank1Mixin:
    """Gaussian posteriors on the factors ``r`` ``[M, in]`` and ``s`` ``[M, out]``; KL; the forward pass."""

    per_example_noise: ClassVar[bool] = True

    def _setup_factors(self, init: str, std: float, factory: dict[str, Any]) -> None:
        self.fast_weight_init, self.fast_weight_std = check_fast_weight_init(init, std)
        self._register_posterior("r", (self.num_members, self.input_size), **factory)
        self._register_posterior("s", (self.num_members, self.output_size), **factory)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Shared weight and biases as the ``torch.nn`` twin; factor means per ``fast_weight_init``; factor
        scales to ``posterior_scale_init``."""
        self.reset_shared_parameters()
        init_fast_weights_(self.r_mean, self.fast_weight_init, self.fast_weight_std)
        init_fast_weights_(self.s_mean, self.fast_weight_init, self.fast_weight_std)
        self.reset_posterior_scale(self.posterior_scale_init)

    def _factor_sample(self, name: str, batch: int) -> torch.Tensor:
        """``[M, B, features]``: one reparameterised draw per member and example."""
        mean = self.posterior_mean(name)
        scale = self.posterior_scale(name)
        noise = torch.randn(mean.shape[0], batch, mean.shape[1], dtype=mean.dtype, device=mean.device)
        return torch.addcmul(mean.unsqueeze(1), scale.unsqueeze(1), noise)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x, source = self._member_input(input)
        if not self.samples:
            if source is not None and self._shared_is_cheaper(source):
                return self._combine_shared(source, self.r_mean, self.s_mean)
            return self._combine(x, self.r_mean, self.s_mean, source)
        batch = x.shape[1]
        r, s = self._factor_sample("r", batch), self._factor_sample("s", batch)
        return self._combine(x, r, s, source)

    def kl_divergence(self) -> torch.Tensor:
        """``(1/M) sum_m [KL(q(r_m) || p) + KL(q(s_m) || p)]``: the factors' KL, averaged over the mixture's
        ``M`` components (an upper bound on the mixture's KL; a scalar tensor, nats). ``W`` and the biases
        are point estimates and add nothing.

        Closed form for a :class:`~uqkit.nn.priors.NormalPrior`; an unbiased one-sample Monte Carlo estimate
        for a :class:`~uqkit.nn.priors.ScaleMixtureNormalPrior`.
        """
        return super().kl_divergence() / self.num_members  # type: ignore[misc]

    def extra_repr(self) -> str:
        text = super().extra_repr()  # type: ignore[misc]
        return (
            f"{text}, prior={self.prior}, posterior_scale_init={self.posterior_scale_init:g}, "
            f"fast_weight_init={self.fast_weight_init!r}"
        )


class Rank1Linear(_Rank1Mixin, MemberLinearBase, BayesianModule):
    """Rank-1 BNN ``nn.Linear`` (Dusenberry et al. 2020): ``M`` members sharing ``W``, Gaussian factors.

    Member ``m`` computes ``y_m = ((x_m * r_m) W^T) * s_m + b_m`` with ``r_m``, ``s_m`` sampled per example
    from the member's Gaussian posterior (see the module docstring); all members in one matrix product.

    Args:
        in_features, out_features, bias, device, dtype: as ``torch.nn.Linear``.
        num_members: ``M``, the number of mixture components (Dusenberry et al. use 4).
        prior: prior of every factor entry (default ``NormalPrior(scale=0.1, loc=1.0)``).
        posterior_scale_init: initial posterior standard deviation of the factors, ``>= 0`` (default
            ``sqrt(1e-3 / (1 - 1e-3))``). 0 makes the layer equal to :class:`~uqkit.nn.BatchEnsembleLinear`
            with ``r = r_mean``, ``s = s_mean`` (with an infinite KL: train from a positive scale).
        fast_weight_init: initialisation of the factor means, as :class:`~uqkit.nn.BatchEnsembleLinear`
            (default ``"normal"``).
        fast_weight_std: standard deviation of the ``"normal"`` initialisation (default
            :data:`RANK1_FAST_WEIGHT_STD` = 0.1, the default prior's scale).

    Shape:
        input ``[M * B, *, in_features]`` (member ``m`` in rows ``m * B`` to ``(m + 1) * B - 1``); output
        ``[M * B, *, out_features]``. Each example draws its own factors (shared by its ``*`` positions).

    Attributes:
        weight: the shared ``W``, ``[out_features, in_features]`` (deterministic).
        r_mean, r_rho: posterior of the input factors, ``[M, in_features]``.
        s_mean, s_rho: posterior of the output factors, ``[M, out_features]``.
        bias: per-member biases, ``[M, out_features]`` (deterministic, or ``None``).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        num_members: int,
        bias: bool = True,
        *,
        prior: Prior | None = None,
        posterior_scale_init: float = RANK1_POSTERIOR_SCALE_INIT,
        fast_weight_init: str = "normal",
        fast_weight_std: float = RANK1_FAST_WEIGHT_STD,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(default_rank1_prior() if prior is None else prior, posterior_scale_init)
        factory = {"device": device, "dtype": dtype}
        self._setup_linear(in_features, out_features, num_members, bias, factory)
        self._setup_factors(fast_weight_init, fast_weight_std, factory)


class _Rank1ConvNd(_Rank1Mixin, MemberConvBase, BayesianModule):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...],
        num_members: int,
        stride: int | tuple[int, ...] = 1,
        padding: str | int | tuple[int, ...] = 0,
        dilation: int | tuple[int, ...] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        prior: Prior | None = None,
        posterior_scale_init: float = RANK1_POSTERIOR_SCALE_INIT,
        fast_weight_init: str = "normal",
        fast_weight_std: float = RANK1_FAST_WEIGHT_STD,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(default_rank1_prior() if prior is None else prior, posterior_scale_init)
        factory = {"device": device, "dtype": dtype}
        self._setup_conv(
            in_channels,
            out_channels,
            kernel_size,
            num_members,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            factory,
        )
        self._setup_factors(fast_weight_init, fast_weight_std, factory)


class Rank1Conv1d(_Rank1ConvNd):
    """Rank-1 BNN ``nn.Conv1d`` (Dusenberry et al. 2020): Gaussian factors over input and output channels.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode,
            device, dtype: as ``torch.nn.Conv1d``.
        num_members, prior, posterior_scale_init, fast_weight_init, fast_weight_std: as
            :class:`Rank1Linear`.

    Shape:
        input ``[M * B, C_in, L]`` (member-major); output ``[M * B, C_out, L_out]``.
    """

    spatial_dims: ClassVar[int] = 1
    conv = staticmethod(F.conv1d)


class Rank1Conv2d(_Rank1ConvNd):
    """Rank-1 BNN ``nn.Conv2d`` (Dusenberry et al. 2020): Gaussian factors over input and output channels.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode,
            device, dtype: as ``torch.nn.Conv2d``.
        num_members, prior, posterior_scale_init, fast_weight_init, fast_weight_std: as
            :class:`Rank1Linear`.

    Shape:
        input ``[M * B, C_in, H, W]`` (member-major); output ``[M * B, C_out, H_out, W_out]``.
    """

    spatial_dims: ClassVar[int] = 2
    conv = staticmethod(F.conv2d)
