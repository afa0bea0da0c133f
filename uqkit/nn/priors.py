"""Weight priors for Bayesian layers, and their KL divergence from a mean-field Gaussian posterior.

A prior is a small frozen dataclass of Python floats (so it works with any dtype and device, is hashable,
copies and pickles). Each prior gives ``kl_divergence(mean, scale)``: the KL divergence
``KL(q || p) = sum_i KL(N(mean_i, scale_i^2) || p)`` summed over all entries of a factorised Gaussian
posterior ``q``. Every scale here is a *standard deviation*, never a variance.

* :class:`NormalPrior`: ``p(w) = N(w; loc, scale^2)``; the KL is in closed form.
* :class:`ScaleMixtureNormalPrior`: Blundell et al. 2015, eq. (7),
  ``p(w) = pi N(w; 0, scale1^2) + (1 - pi) N(w; 0, scale2^2)``; its KL has no closed form, so it is the
  unbiased one-sample Monte Carlo estimate ``-H[q] - log p(w)``, ``w = mean + scale * eps`` (Blundell et al.
  2015, eq. (2), with the Gaussian entropy ``H[q]`` in closed form to lower the variance). It is
  differentiable in ``mean`` and ``scale`` through the reparameterisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

from uqkit._deprecation import renamed_module_attribute
from uqkit._validation import check_float_tensor, check_positive_float, check_unit_interval

__all__ = ["NormalPrior", "Prior", "ScaleMixtureNormalPrior"]

RENAMED = {"gaussian_entropy": "normal_entropy"}
"""Former names (deprecated; removed in uqkit 0.2.0)."""


def __getattr__(name: str):
    return renamed_module_attribute(__name__, name, RENAMED, globals())


_HALF_LOG_TWO_PI = 0.5 * math.log(2.0 * math.pi)


def _check_posterior(mean: torch.Tensor, scale: torch.Tensor) -> None:
    check_float_tensor(mean, "mean", finite=False)
    check_float_tensor(scale, "scale", finite=False)
    if mean.shape != scale.shape:
        raise ValueError(
            f"mean and scale: expected the same shape, got {tuple(mean.shape)} and {tuple(scale.shape)}"
        )


def _sum_squares(values: torch.Tensor) -> torch.Tensor:
    flat = values.reshape(-1)
    return torch.dot(flat, flat)  # one pass, no temporary of the full size


class _NormalKL(torch.autograd.Function):
    """``sum_i [(s_i^2 + (m_i - loc)^2) / (2 s_p^2) - log s_i] + n (log s_p - 1/2)``, hand-written backward.

    Autograd's generic backward of this sum makes about nine passes over the parameters; the gradients
    ``dKL/dm = (m - loc) / s_p^2`` and ``dKL/ds = s / s_p^2 - 1 / s`` need four, which matters because the
    KL of every layer is evaluated at every training step.
    """

    @staticmethod
    def forward(ctx, mean: torch.Tensor, scale: torch.Tensor, loc: float, prior_scale: float) -> torch.Tensor:
        centred = mean if loc == 0.0 else mean - loc
        quadratic = (_sum_squares(scale) + _sum_squares(centred)) / (2.0 * prior_scale**2)
        ctx.save_for_backward(mean, scale)
        ctx.loc, ctx.prior_scale = loc, prior_scale
        return quadratic - scale.log().sum() + mean.numel() * (math.log(prior_scale) - 0.5)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        mean, scale = ctx.saved_tensors
        variance = ctx.prior_scale**2
        grad_mean = grad_scale = None
        if ctx.needs_input_grad[0]:
            centred = mean if ctx.loc == 0.0 else mean - ctx.loc
            grad_mean = centred * (grad / variance)
        if ctx.needs_input_grad[1]:
            grad_scale = torch.reciprocal(scale)
            torch.sub(scale, grad_scale, alpha=variance, out=grad_scale)  # s - s_p^2 / s
            grad_scale.mul_(grad / variance)
        return grad_mean, grad_scale, None, None


def normal_entropy(scale: torch.Tensor) -> torch.Tensor:
    """Entropy of a factorised normal distribution, ``sum_i (log scale_i + (1 + log 2 pi) / 2)`` (nats).

    Formerly ``gaussian_entropy`` (deprecated; "Gaussian" names distributions of outputs in uqkit).
    """
    return scale.log().sum() + scale.numel() * (0.5 + _HALF_LOG_TWO_PI)


@dataclass(frozen=True)
class NormalPrior:
    """Gaussian prior ``N(loc, scale^2)`` on every weight, with a closed-form KL.

    Args:
        scale: prior standard deviation (not variance), ``> 0``. Default 1.
        loc: prior mean. Default 0.

    Example:
        >>> NormalPrior(scale=0.1).kl_divergence(torch.zeros(3), torch.full((3,), 0.1))
        tensor(0.)
    """

    scale: float = 1.0
    loc: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", check_positive_float(self.scale, "scale"))
        if (
            isinstance(self.loc, bool)
            or not isinstance(self.loc, (int, float))
            or not math.isfinite(self.loc)
        ):
            raise TypeError(f"loc: expected a finite number, got {self.loc!r}")
        object.__setattr__(self, "loc", float(self.loc))

    def log_prob(self, weights: torch.Tensor) -> torch.Tensor:
        """Elementwise ``log N(weights; loc, scale^2)``."""
        z = (weights - self.loc) / self.scale
        return -0.5 * z * z - math.log(self.scale) - _HALF_LOG_TWO_PI

    def kl_divergence(self, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Closed-form ``KL(N(mean, scale^2) || N(loc, prior_scale^2))`` summed over all entries.

        ``KL = sum_i [log(s_p / s_i) + (s_i^2 + (m_i - loc)^2) / (2 s_p^2) - 1/2]``.

        Args:
            mean: posterior means, any shape.
            scale: posterior standard deviations, same shape, ``> 0``.

        Returns:
            A scalar tensor (nats).
        """
        _check_posterior(mean, scale)
        return _NormalKL.apply(mean, scale, self.loc, self.scale)


@dataclass(frozen=True)
class ScaleMixtureNormalPrior:
    """Scale mixture of two zero-mean Gaussians (Blundell et al. 2015, eq. (7)).

    ``p(w) = pi N(w; 0, scale1^2) + (1 - pi) N(w; 0, scale2^2)``: a broad component (``scale1``) and a
    narrow one (``scale2``) that pulls many weights near zero. Blundell et al. use ``pi`` in {1/4, 1/2},
    ``-log scale1`` in {0, 1, 2}, ``-log scale2`` in {6, 7, 8}.

    Args:
        pi: weight of the first component, in (0, 1). Default 0.5.
        scale1: standard deviation of the first component, ``> 0``. Default 1.
        scale2: standard deviation of the second component, ``> 0``. Default ``exp(-6)``.
    """

    pi: float = 0.5
    scale1: float = 1.0
    scale2: float = math.exp(-6.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pi", check_unit_interval(self.pi, "pi", open_left=True, open_right=True))
        object.__setattr__(self, "scale1", check_positive_float(self.scale1, "scale1"))
        object.__setattr__(self, "scale2", check_positive_float(self.scale2, "scale2"))

    def log_prob(self, weights: torch.Tensor) -> torch.Tensor:
        """Elementwise ``log p(weights)``, computed stably with log-sum-exp of the two components."""
        sq = weights * weights
        log_a = math.log(self.pi) - math.log(self.scale1) - 0.5 * sq / self.scale1**2
        log_b = math.log1p(-self.pi) - math.log(self.scale2) - 0.5 * sq / self.scale2**2
        return torch.logaddexp(log_a, log_b) - _HALF_LOG_TWO_PI

    def kl_divergence(self, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """One-sample Monte Carlo estimate of ``KL(q || p)``, unbiased, differentiable.

        ``KL = -H[q] - E_q[log p(w)]`` with the entropy ``H[q]`` exact and the expectation estimated by one
        draw ``w = mean + scale * eps``, ``eps ~ N(0, I)`` (Blundell et al. 2015, eqs. (1)-(2)).

        Args:
            mean: posterior means, any shape.
            scale: posterior standard deviations, same shape, ``> 0``.

        Returns:
            A scalar tensor (nats); a fresh random estimate on each call.
        """
        _check_posterior(mean, scale)
        weights = torch.addcmul(mean, scale, torch.randn_like(scale))
        return -normal_entropy(scale) - self.log_prob(weights).sum()


Prior = NormalPrior | ScaleMixtureNormalPrior
"""Type of the priors that the Bayesian layers accept."""
