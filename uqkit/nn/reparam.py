"""Mean-field layers trained with the reparameterisation trick (Blundell et al. 2015; Kingma et al. 2015).

The layers are named after their gradient estimator, as :mod:`uqkit.nn.flipout`'s are: both families hold the
same factorised normal posterior over the weights (in this library "Gaussian" names a distribution of the
outputs, as in :class:`uqkit.GaussianPrediction`; docs/architecture.md, "Names"). The former names
``GaussianLinear``, ``GaussianConv1d``, ``GaussianConv2d`` and ``GaussianLSTM`` are deprecated aliases.

Each forward pass draws one weight sample ``W = mean + softplus(rho) * eps``, ``eps ~ N(0, I)``, shared by
every example of the batch (Bayes by Backprop, Blundell et al. 2015, Sec. 3.2). One draw per batch is cheap
but correlates the examples' noise, so the gradient variance does not fall as ``1 / batch``
(``per_example_noise = False``; :func:`uqkit.predict` then draws each sample with its own forward pass).

:class:`ReparameterizationLinear` also offers the local reparameterisation trick (Kingma et al. 2015, eqs.
(6)-(7)): for a factorised Gaussian posterior the pre-activation ``b_nj = sum_i x_ni W_ji + bias_j`` is itself
Gaussian,
``N(x_n mean_j + bias_mean_j, sum_i x_ni^2 sigma_ji^2 + sigma_bias_j^2)``, so it is sampled directly,
independently per example: lower-variance gradients at the cost of a second matrix product.

Layers sample in training and eval mode alike; inside :func:`uqkit.nn.use_posterior_mean` they use the
posterior means. With the posterior scale at zero they equal their ``torch.nn`` twin exactly.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from uqkit._deprecation import renamed_module_attribute
from uqkit.nn._twins import ConvPosterior, LinearPosterior, LSTMPosterior
from uqkit.nn.priors import Prior

__all__ = [
    "ReparameterizationConv1d",
    "ReparameterizationConv2d",
    "ReparameterizationLSTM",
    "ReparameterizationLinear",
]

RENAMED = {
    "GaussianConv1d": "ReparameterizationConv1d",
    "GaussianConv2d": "ReparameterizationConv2d",
    "GaussianLSTM": "ReparameterizationLSTM",
    "GaussianLinear": "ReparameterizationLinear",
}
"""The layers' former names (deprecated; removed in uqkit 0.2.0)."""


def __getattr__(name: str):
    return renamed_module_attribute(__name__, name, RENAMED, globals())


class ReparameterizationLinear(LinearPosterior):
    """Bayesian ``nn.Linear`` with a factorised Gaussian posterior (Bayes by Backprop).

    Args:
        in_features, out_features, bias, device, dtype: as ``torch.nn.Linear``.
        prior: prior over the weights and bias (default ``NormalPrior(scale=1.0)``).
        posterior_scale_init: initial posterior standard deviation, ``>= 0`` (default 0.01).
        local_reparameterization: sample the pre-activations per example (Kingma et al. 2015) instead of
            one weight matrix per batch. Default ``False``.

    Shape:
        input ``[*, in_features]``; output ``[*, out_features]``. With local reparameterisation every row
        of the input gets independent noise.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        prior: Prior | None = None,
        posterior_scale_init: float = 1e-2,
        local_reparameterization: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            in_features,
            out_features,
            bias,
            prior=prior,
            posterior_scale_init=posterior_scale_init,
            device=device,
            dtype=dtype,
        )
        if not isinstance(local_reparameterization, bool):
            raise TypeError(
                f"local_reparameterization: expected a bool, got {type(local_reparameterization).__name__}"
            )
        self.local_reparameterization = local_reparameterization

    @property
    def per_example_noise(self) -> bool:  # type: ignore[override]
        """Local reparameterisation draws independent noise per example; one weight sample does not."""
        return self.local_reparameterization

    def output_moments(self, input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact mean and variance of the output under the posterior (Kingma et al. 2015, eqs. (6)-(7)).

        The output ``b_nj = sum_i x_ni W_ji + bias_j`` is linear in the weights, so under the factorised
        Gaussian posterior it is Gaussian, ``N(x_n mean_j + bias_mean_j, sum_i x_ni^2 sigma_ji^2 +
        sigma_bias_j^2)``, independently per example and output. This is the distribution that local
        reparameterisation samples, and the function-space distribution of a Bayesian last layer
        (:class:`uqkit.nn.BayesianRegressionHead`).

        Args:
            input: ``[*, in_features]``.

        Returns:
            ``(mean, variance)``, each ``[*, out_features]``, differentiable in the input and the posterior.
        """
        self._check_input(input)
        mean = F.linear(input, self.weight_mean, self.bias_mean if self.has_bias else None)
        weight_var = self.posterior_scale("weight").square()
        bias_var = self.posterior_scale("bias").square() if self.has_bias else None
        return mean, F.linear(input * input, weight_var, bias_var)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input(input)
        if not self.samples:
            return F.linear(input, self.weight_mean, self.bias_mean if self.has_bias else None)
        if self.local_reparameterization:
            mean, variance = self.output_moments(input)
            return torch.addcmul(mean, std_from_variance(variance), torch.randn_like(mean))
        bias = self.posterior_sample("bias") if self.has_bias else None
        return F.linear(input, self.posterior_sample("weight"), bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, local_reparameterization={self.local_reparameterization}"


def std_from_variance(variance: torch.Tensor) -> torch.Tensor:
    """``sqrt(variance)``, with gradient 0 (not ``inf * 0 = NaN``) where the variance is 0.

    The pre-activation variance ``sum_i x_i^2 sigma_i^2 (+ sigma_b^2)`` is 0 for an all-zero input row of a
    layer without bias (or for zero posterior scales). There the output is the mean whatever ``sigma`` and
    ``x`` in a neighbourhood along which it is defined, so 0 is the gradient (the minimum-norm subgradient
    of the norm ``sqrt(sum_i x_i^2 sigma_i^2)``); ``variance.sqrt()``'s backward, ``1 / (2 sqrt(v))``, would
    be infinite and multiply the chain rule's ``dv = 0`` into NaN. The inner ``where`` keeps the
    unselected branch's gradient finite (the usual double-``where``), so the function stays differentiable
    to every order elsewhere.
    """
    positive = variance > 0
    return torch.where(positive, torch.where(positive, variance, 1.0).sqrt(), 0.0)


class _ReparameterizationConvNd(ConvPosterior):
    """One weight sample per forward pass, convolved with the twin's own operator."""

    per_example_noise: ClassVar[bool] = False

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x, unbatched = self._batched(input)
        sample = self.posterior_sample if self.samples else self.posterior_mean
        out = self._convolve(x, sample("weight"), sample("bias") if self.has_bias else None)
        return out.squeeze(0) if unbatched else out


class ReparameterizationConv1d(_ReparameterizationConvNd):
    """Bayesian ``nn.Conv1d`` with a factorised Gaussian posterior, one weight sample per forward pass.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode,
            device, dtype: as ``torch.nn.Conv1d``.
        prior: prior over the weights and bias (default ``NormalPrior(scale=1.0)``).
        posterior_scale_init: initial posterior standard deviation, ``>= 0`` (default 0.01).

    Shape:
        as ``torch.nn.Conv1d``.
    """

    spatial_dims: ClassVar[int] = 1
    conv = staticmethod(F.conv1d)


class ReparameterizationConv2d(_ReparameterizationConvNd):
    """Bayesian ``nn.Conv2d`` with a factorised Gaussian posterior, one weight sample per forward pass.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode,
            device, dtype: as ``torch.nn.Conv2d``.
        prior: prior over the weights and bias (default ``NormalPrior(scale=1.0)``).
        posterior_scale_init: initial posterior standard deviation, ``>= 0`` (default 0.01).

    Shape:
        as ``torch.nn.Conv2d``.
    """

    spatial_dims: ClassVar[int] = 2
    conv = staticmethod(F.conv2d)


class ReparameterizationLSTM(LSTMPosterior):
    """Bayesian ``nn.LSTM`` with a factorised Gaussian posterior: one weight sample per forward pass.

    The sampled weights run through ``nn.LSTM``'s own fused kernel, so the layer costs one LSTM call plus
    the weight draw. Arguments, shapes and outputs as :class:`~uqkit.nn.FlipoutLSTM`.
    """

    per_example_noise: ClassVar[bool] = False

    def _sample_forward(
        self, x: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self._fused(x, hx, [self.posterior_sample(name) for name in self.posterior_names])
