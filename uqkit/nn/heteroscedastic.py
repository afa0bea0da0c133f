"""Heteroscedastic classification head: input-dependent correlated Gaussian noise on the logits.

Collier et al. 2021 ("Correlated input-dependent label noise in large-scale image classification", CVPR)
model the label noise of example ``x`` with a latent utility ``u = mu(x) + eps``, ``eps ~ N(0, Sigma(x))``,
and the label distribution ``p(y = c | x) = E_eps[softmax(u / tau)_c]``, with a temperature
``tau`` and a low-rank plus diagonal covariance (Collier et al. 2021, Sec. 3)

    Sigma(x) = V(x) V(x)^T + diag(d(x)^2),       V(x) in R^{C x R},  d(x) in R^C_{>0}.

Noise is drawn by reparameterisation, ``eps = V(x) z_R + d(x) * z_C`` with ``z_R ~ N(0, I_R)`` and
``z_C ~ N(0, I_C)``, and the expectation is a Monte Carlo average over ``S`` draws; training minimises the
negative log of that average.

The noise ``eps`` models label noise: it is aleatoric uncertainty, part of one predictive distribution, not
a sample from a posterior over the model (Collier et al. 2021, Sec. 3; Kendall & Gal 2017).
:meth:`HeteroscedasticHead.forward` therefore returns that one distribution (the log of its Monte Carlo
mean), and :func:`uqkit.predict` on a model ending with the head gives ``S = 1``: its total uncertainty is all
aleatoric and its epistemic part (mutual information) is 0. The draws themselves are available from
:meth:`HeteroscedasticHead.sample_logits`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from uqkit._validation import check_float_tensor, check_positive_float, check_positive_int
from uqkit.nn.modes import evaluation_mode
from uqkit.prediction import Prediction

__all__ = ["HeteroscedasticHead"]


class HeteroscedasticHead(nn.Module):
    """Output layer with input-dependent low-rank plus diagonal Gaussian logit noise (Collier et al. 2021).

    ``mu(h) = W h + b``; ``V(h)`` is a linear map of ``h`` reshaped to ``[C, R]``;
    ``d(h) = softplus(A h + a)``. The ``S`` Monte Carlo logits are ``(mu(h) + V(h) z_R + d(h) * z_C) / tau``.

    Args:
        in_features: size ``H`` of the hidden representation.
        num_classes: number of classes ``C`` (``>= 2``).
        num_factors: rank ``R`` of the low-rank part of the covariance (``>= 1``). Default 6.
        temperature: ``tau > 0`` of the softmax. Default 1.0.
        num_samples: Monte Carlo samples ``S`` per forward pass and per prediction. Default 16.

    Shape:
        input ``[B, H]``; :meth:`forward` returns ``[B, C]`` log-probabilities (the log of the Monte Carlo
        mean of the softmax); :meth:`predict` a :class:`~uqkit.Prediction` of that distribution (``S = 1``);
        :meth:`sample_logits` returns ``[S, B, C]``.

    Example:
        >>> head = HeteroscedasticHead(512, 10, num_factors=4)
        >>> loss = F.nll_loss(head(hidden), labels)  # forward gives log-probabilities, not logits
        >>> prediction = uqkit.predict(nn.Sequential(backbone, head), x)  # the predictive, S = 1
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        num_factors: int = 6,
        temperature: float = 1.0,
        num_samples: int = 16,
    ) -> None:
        super().__init__()
        self.in_features = check_positive_int(in_features, "in_features")
        self.num_classes = check_positive_int(num_classes, "num_classes", minimum=2)
        self.num_factors = check_positive_int(num_factors, "num_factors")
        self.temperature = check_positive_float(temperature, "temperature")
        self.num_samples = check_positive_int(num_samples, "num_samples")
        self.mean = nn.Linear(in_features, num_classes)
        self.factor_loading = nn.Linear(in_features, num_classes * num_factors)
        self.diagonal = nn.Linear(in_features, num_classes)

    def _check_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = check_float_tensor(hidden, "hidden", 2, "[batch, in_features]", finite=False)
        if hidden.shape[1] != self.in_features:
            raise ValueError(
                f"hidden: expected {self.in_features} features (shape [batch, {self.in_features}]), "
                f"got shape {tuple(hidden.shape)}"
            )
        return hidden

    def noise_parameters(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean ``mu`` ``[B, C]``, factor loading ``V`` ``[B, C, R]``, diagonal scale ``d`` ``[B, C]``."""
        hidden = self._check_hidden(hidden)
        loading = self.factor_loading(hidden).view(-1, self.num_classes, self.num_factors)
        return self.mean(hidden), loading, F.softplus(self.diagonal(hidden))

    def covariance(self, hidden: torch.Tensor) -> torch.Tensor:
        """``Sigma(h) = V V^T + diag(d^2)``, the covariance of the pre-temperature logits, ``[B, C, C]``."""
        _, loading, scale = self.noise_parameters(hidden)
        return loading @ loading.transpose(1, 2) + torch.diag_embed(scale.square())

    def sample_logits(
        self,
        hidden: torch.Tensor,
        num_samples: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``S`` draws of the tempered logits ``(mu + V z_R + d * z_C) / tau``, ``[S, B, C]``.

        Args:
            hidden: ``[B, H]`` hidden representations.
            num_samples: ``S``; default the head's ``num_samples``.
            generator: optional ``torch.Generator`` for the noise (``z_R`` is drawn first, then ``z_C``).
        """
        num_samples = (
            self.num_samples if num_samples is None else check_positive_int(num_samples, "num_samples")
        )
        mean, loading, scale = self.noise_parameters(hidden)
        batch = mean.shape[0]
        factory = {"dtype": mean.dtype, "device": mean.device, "generator": generator}
        z_factors = torch.randn(num_samples, batch, self.num_factors, **factory)
        z_diagonal = torch.randn(num_samples, batch, self.num_classes, **factory)
        # V z_R for every sample as one batched product over examples: [B, C, R] @ [B, R, S] -> [B, C, S].
        correlated = torch.bmm(loading, z_factors.permute(1, 2, 0)).permute(2, 0, 1)
        return (mean + correlated + scale * z_diagonal) / self.temperature

    @staticmethod
    def _log_mean_softmax(logits: torch.Tensor) -> torch.Tensor:
        """``log (1/S) sum_s softmax(logits_s)`` of ``[S, B, C]`` logits, with log-sum-exp over samples."""
        return torch.logsumexp(torch.log_softmax(logits, dim=-1), dim=0) - math.log(logits.shape[0])

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Log of the Monte Carlo predictive, ``log (1/S) sum_s softmax(logits_s)``, ``[B, C]``.

        Computed with log-sum-exp over samples (Collier et al. 2021); use it with ``F.nll_loss``.
        """
        return self._log_mean_softmax(self.sample_logits(hidden))

    def predict(self, hidden: torch.Tensor) -> Prediction:
        """``uqkit.predict(self, hidden)``: the predictive ``p(y | h) = E_eps[softmax((mu + eps) / tau)]``.

        The draws of ``eps`` are label noise (aleatoric), not posterior samples, so they are averaged into
        one distribution (Collier et al. 2021, Sec. 3) before the uncertainty is split: the forward pass
        returns the log of the Monte Carlo mean softmax over :attr:`num_samples` draws, a valid set of
        logits (``softmax(log p) = p``), and :func:`uqkit.predict` sees a deterministic model: ``S = 1``,
        ``total = aleatoric = H[p]``, ``epistemic = 0``. For the draws themselves use :meth:`sample_logits`.

        Like :func:`uqkit.predict`, it runs in eval mode and without gradients, and restores the training
        flags afterwards.

        Returns:
            A :class:`~uqkit.Prediction` of ``[1, B, C]`` logits.
        """
        with evaluation_mode(self), torch.no_grad():
            return Prediction(self(hidden).unsqueeze(0))

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, num_classes={self.num_classes}, "
            f"num_factors={self.num_factors}, "
            f"temperature={self.temperature}, num_samples={self.num_samples}"
        )
