"""Accuracy and calibration of Gaussian predictive distributions for regression.

Every function takes tensors of one shape, ``[B]`` or ``[B, D]`` (for a :class:`~uqkit.GaussianPrediction`
pass ``prediction.mean`` and ``prediction.variance``), and averages over all ``B * D`` elements.
"""

from __future__ import annotations

import math

import torch

from uqkit._validation import check_unit_interval
from uqkit.metrics._inputs import check_regression_inputs

__all__ = ["gaussian_nll", "interval_coverage", "rmse"]


def _check_variance(variance: torch.Tensor) -> None:
    smallest = float(variance.min())
    if smallest <= 0:
        raise ValueError(f"variance: expected strictly positive values, got minimum {smallest:.4g}")


def rmse(mean: torch.Tensor, targets: torch.Tensor) -> float:
    """Root mean squared error, ``sqrt(1/N sum_i (y_i - mu_i)^2)`` over all ``N`` elements.

    Args:
        mean: predicted means (finite).
        targets: observed values (finite).

    Returns:
        RMSE, >= 0, in the units of the targets.

    Shape:
        ``mean``, ``targets``: ``[B]`` or ``[B, D]``, the same.
    """
    mean, targets = check_regression_inputs(mean=mean, targets=targets)
    return math.sqrt(float((targets - mean).double().square().mean()))


def gaussian_nll(mean: torch.Tensor, variance: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean negative log-likelihood of the targets under independent Gaussians ``N(mu, sigma^2)`` (nats).

    ``1/N sum_i [ 1/2 log(2 pi sigma_i^2) + (y_i - mu_i)^2 / (2 sigma_i^2) ]`` over all ``N`` elements,
    with the constant ``1/2 log(2 pi)`` included, so it equals ``-Normal(mu, sigma).log_prob(y).mean()``
    (unlike ``torch.nn.GaussianNLLLoss``, which drops the constant by default). This is the test NLL
    reported by Lakshminarayanan et al. 2017 and Hernandez-Lobato & Adams 2015.

    Args:
        mean: predicted means (finite).
        variance: predicted variances, all > 0 (finite).
        targets: observed values (finite).

    Returns:
        Mean negative log-likelihood; lower is better (can be negative).

    Shape:
        ``mean``, ``variance``, ``targets``: ``[B]`` or ``[B, D]``, all the same.
    """
    mean, variance, targets = check_regression_inputs(mean=mean, variance=variance, targets=targets)
    _check_variance(variance)
    mean, variance, targets = mean.double(), variance.double(), targets.double()
    per_element = 0.5 * torch.log(2 * math.pi * variance) + (targets - mean).square() / (2 * variance)
    return float(per_element.mean())


def interval_coverage(
    mean: torch.Tensor, variance: torch.Tensor, targets: torch.Tensor, level: float = 0.95
) -> float:
    """Fraction of targets inside the central Gaussian prediction interval of probability ``level``.

    The interval is ``mu +- z sigma`` with ``z = Phi^{-1}((1 + level) / 2)`` (``Phi`` the standard normal
    CDF, ``z = 1.95996...`` for 0.95), endpoints included. For calibrated predictions the coverage is close
    to ``level``.

    Args:
        mean: predicted means (finite).
        variance: predicted variances, all > 0 (finite).
        targets: observed values (finite).
        level: nominal coverage, in ``(0, 1)``.

    Returns:
        Empirical coverage in ``[0, 1]``.

    Shape:
        ``mean``, ``variance``, ``targets``: ``[B]`` or ``[B, D]``, all the same.
    """
    mean, variance, targets = check_regression_inputs(mean=mean, variance=variance, targets=targets)
    _check_variance(variance)
    level = check_unit_interval(level, "level", open_left=True, open_right=True)
    z = float(torch.special.ndtri(torch.tensor((1.0 + level) / 2.0, dtype=torch.float64)))
    inside = (targets.double() - mean.double()).abs() <= z * variance.double().sqrt()
    return float(inside.double().mean())
