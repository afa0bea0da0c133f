"""The numbers of a regression prediction, the same for the UCI tables' splits and for the user's data.

Every prediction is a :class:`~uqkit.GaussianPrediction` in the targets' own units, ``[S, B, D]`` means and
variances of ``S`` members or samples: its moment-matched Gaussian (mean ``E_s mu_s``, variance
``E_s sigma_s^2 + Var_s mu_s``) is scored by the Gaussian NLL, RMSE and central-interval coverage; the exact
equal-weight mixture of the ``S`` Gaussians by :func:`mixture_nll`. Over the splits of a table, each number
is summarised by its mean and standard error (:func:`summarize_splits`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from uqkit.metrics.regression import gaussian_nll, interval_coverage, rmse
from uqkit.prediction import GaussianPrediction

__all__ = ["COVERAGE_LEVELS", "mixture_nll", "prediction_metrics", "summarize_splits"]

COVERAGE_LEVELS = tuple(round(0.05 * i, 2) for i in range(1, 20))
"""Nominal probabilities of the central intervals in the coverage calibration curve (0.05 ... 0.95)."""


def mixture_nll(mean: torch.Tensor, variance: torch.Tensor, targets: torch.Tensor) -> float:
    """Exact NLL of the equal-weight Gaussian mixture ``[S, B, D]`` (log-mean-exp over the ``S``
    components), averaged over the ``B * D`` targets."""
    log_prob = -0.5 * (2 * math.pi * variance).log() - (targets - mean).square() / (2 * variance)
    return float(-(torch.logsumexp(log_prob.double(), dim=0) - math.log(mean.shape[0])).mean())


def prediction_metrics(prediction: GaussianPrediction, targets: torch.Tensor) -> dict[str, Any]:
    """The test numbers of one split: ``nll`` (the moment-matched Gaussian's), ``rmse``, ``nll_mixture``
    (:func:`mixture_nll`), ``coverage_95`` and ``coverage``, the observed coverage of the central interval
    at each of :data:`COVERAGE_LEVELS`.

    Args:
        prediction: ``[S, B, D]`` means and variances in the targets' units.
        targets: ``[B, D]``.
    """
    mean, variance = prediction.mean, prediction.variance
    return {
        "nll": gaussian_nll(mean, variance, targets),
        "rmse": rmse(mean, targets),
        "nll_mixture": mixture_nll(prediction.sample_mean, prediction.sample_variance, targets),
        "coverage_95": interval_coverage(mean, variance, targets, 0.95),
        "coverage": [interval_coverage(mean, variance, targets, level) for level in COVERAGE_LEVELS],
    }


def summarize_splits(values: Sequence[float]) -> dict[str, float]:
    """Mean and standard error (sample standard deviation / sqrt(n); 0 for one value) of per-split values."""
    tensor = torch.tensor(list(values), dtype=torch.float64)
    se = float(tensor.std(unbiased=True) / math.sqrt(tensor.numel())) if tensor.numel() > 1 else 0.0
    return {"mean": float(tensor.mean()), "se": se}
