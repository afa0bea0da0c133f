"""Gaussian regression head whose mean is a Bayesian last layer (Hafner et al. 2018, the BBB model of NCP).

The head maps the features ``h`` of a network's last hidden layer to a Gaussian over the target,

    ``y | h, w ~ N(f, sigma^2(h))``,   ``f = h w + b``,   ``w ~ q(w) = N(m, diag(s^2))``,

with a factorised Gaussian posterior over the mean's weights ``w`` (a
:class:`~uqkit.nn.ReparameterizationLinear` without bias), a deterministic bias ``b`` and a deterministic
noise variance ``sigma^2(h) = softplus(h a + c) + min_variance`` (the variance head of Nix & Weigend 1994 and
Lakshminarayanan et al. 2017; Hafner et al. put the softplus on the standard deviation). This is the
architecture of Hafner et al.'s BBB and BBB+NCP models: Bayesian about the mean only, at the output layer.

Because ``f`` is linear in ``w``, its distribution under the posterior is exactly Gaussian, the *function
distribution* ``q(f | h) = N(h m + b, (h * h) s^2)`` (the pre-activation distribution of Kingma et al.
2015, eq. (6)), and the predictive is exactly ``N(h m + b, (h * h) s^2 + sigma^2(h))``. The
noise-contrastive prior (:class:`uqkit.NoiseContrastivePrior`) is a prior on ``q(f | x~)`` at perturbed
inputs, and the expected log-likelihood of the data under ``q`` has a closed form; both read the function
distribution from the head's output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from uqkit._validation import check_float_tensor, check_positive_float, check_positive_int
from uqkit.nn.priors import Prior
from uqkit.nn.reparam import ReparameterizationLinear, std_from_variance
from uqkit.prediction import GaussianPrediction

__all__ = ["BayesianRegressionHead"]


class BayesianRegressionHead(nn.Module):
    """Gaussian regression output layer with a Bayesian last layer for the mean (Hafner et al. 2018).

    Each forward pass draws ``f ~ q(f | h)`` independently per example and output (exact: ``f`` is Gaussian
    given ``h``), so :func:`uqkit.predict` with ``S`` samples gives the mixture of ``N(f_s, sigma^2)``:
    aleatoric part ``sigma^2(h)``, epistemic part the variance of the ``f_s`` (``(h * h) s^2`` as ``S``
    grows). Inside :func:`uqkit.nn.use_posterior_mean` ``f`` is the function mean ``h m + b``.
    :meth:`predictive` gives the exact predictive without sampling.

    Args:
        in_features: size ``H`` of the features.
        out_features: target dimension ``D``. Default 1.
        prior: weight prior of the mean layer (default ``NormalPrior(scale=1.0)``); it enters a loss only
            through :func:`uqkit.kl_divergence` (``NoiseContrastivePrior(num_data=...)`` or ``uqkit.ELBO``).
        posterior_scale_init: initial posterior standard deviation of the mean's weights, ``> 0``.
            Default 0.1.
        min_variance: floor added to the softplus noise variance, ``> 0``. Default 1e-6.

    Shape:
        input ``[*, H]``; :meth:`forward` returns a dict of four ``[*, D]`` tensors: ``"mean"`` (a draw of
        ``f``), ``"variance"`` (the noise variance ``sigma^2``), ``"function_mean"`` and
        ``"function_variance"`` (the moments of ``q(f | h)``).

    Example:
        >>> model = nn.Sequential(nn.Linear(1, 50), nn.ReLU(), uqkit.nn.BayesianRegressionHead(50))
        >>> loss = uqkit.NoiseContrastivePrior(input_noise=0.5)(model, x, y)
        >>> prediction = uqkit.predict(model, x, num_samples=64)  # GaussianPrediction
    """

    def __init__(
        self,
        in_features: int,
        out_features: int = 1,
        *,
        prior: Prior | None = None,
        posterior_scale_init: float = 0.1,
        min_variance: float = 1e-6,
    ) -> None:
        super().__init__()
        self.in_features = check_positive_int(in_features, "in_features")
        self.out_features = check_positive_int(out_features, "out_features")
        check_positive_float(posterior_scale_init, "posterior_scale_init")
        self.min_variance = check_positive_float(min_variance, "min_variance")
        self.function = ReparameterizationLinear(
            in_features,
            out_features,
            bias=False,
            prior=prior,
            posterior_scale_init=posterior_scale_init,
            local_reparameterization=True,
        )
        self.function_bias = nn.Parameter(torch.zeros(out_features))
        self.noise = nn.Linear(in_features, out_features)

    def _check_hidden(self, hidden: torch.Tensor) -> None:
        check_float_tensor(hidden, "hidden", finite=False)
        if hidden.ndim == 0 or hidden.shape[-1] != self.in_features:
            raise ValueError(
                f"hidden: expected features [..., {self.in_features}], got shape {tuple(hidden.shape)}"
            )

    def function_distribution(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, variance)`` of ``q(f | h) = N(h m + b, (h * h) s^2)``, each ``[*, D]``."""
        self._check_hidden(hidden)
        mean, variance = self.function.output_moments(hidden)
        return mean + self.function_bias, variance

    def noise_variance(self, hidden: torch.Tensor) -> torch.Tensor:
        """The aleatoric variance ``sigma^2(h) = softplus(h a + c) + min_variance``, ``[*, D]``."""
        self._check_hidden(hidden)
        return F.softplus(self.noise(hidden)) + self.min_variance

    def forward(self, hidden: torch.Tensor) -> dict[str, torch.Tensor]:
        function_mean, function_variance = self.function_distribution(hidden)
        noise_variance = F.softplus(self.noise(hidden)) + self.min_variance
        if self.function.samples:
            draw = torch.randn_like(function_mean)
            mean = torch.addcmul(function_mean, std_from_variance(function_variance), draw)
        else:
            mean = function_mean
        return {
            "mean": mean,
            "variance": noise_variance,
            "function_mean": function_mean,
            "function_variance": function_variance,
        }

    def predictive(self, hidden: torch.Tensor) -> GaussianPrediction:
        """The exact predictive ``N(h m + b, (h * h) s^2 + sigma^2(h))`` for ``[B, H]`` features (``S = 1``).

        Its ``aleatoric`` part is the whole variance (one Gaussian carries no sample split); use
        :func:`uqkit.predict` with samples for the split into aleatoric and epistemic parts.
        """
        check_float_tensor(hidden, "hidden", 2, "[batch, in_features]", finite=False)
        function_mean, function_variance = self.function_distribution(hidden)
        return GaussianPrediction(function_mean, function_variance + self.noise_variance(hidden))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"
