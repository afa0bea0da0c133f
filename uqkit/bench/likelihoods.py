"""What a task's network outputs mean: class logits, or a Gaussian per target. The one place where
classification and regression differ for training and validation.

* :data:`CATEGORICAL` (classification): the network returns ``[B, C]`` logits, one per class; the loss is
  the mean cross-entropy.
* :data:`GAUSSIAN` (regression): the network returns ``[B, 2 D]`` values for ``D`` targets: the first ``D``
  columns are the means, the last ``D`` an unconstrained scale ``v`` that :func:`gaussian_head` maps to a
  variance ``sigma^2 = softplus(v) + 1e-6``, exactly as uqkit's own Gaussian heads do
  (:class:`uqkit.nn.StackedGaussianMLP`: Lakshminarayanan et al. 2017, Sec. 2.2.1; Nix & Weigend 1994).
  The loss is the Gaussian negative log-likelihood per example (summed over the ``D`` targets, averaged
  over examples and samples).

A benchmark method (:class:`uqkit.bench.registry.Method`) holds one of these as ``method.likelihood``; its
training loss, its :func:`uqkit.predict` call and the trainer's validation all go through it, so every
method that is not classification-only trains and predicts on either kind of task unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from uqkit.metrics import expected_calibration_error
from uqkit.objectives import gaussian_nll_loss
from uqkit.prediction import GaussianPrediction, Prediction

__all__ = [
    "CATEGORICAL",
    "GAUSSIAN",
    "MIN_VARIANCE",
    "NUM_BINS",
    "Likelihood",
    "gaussian_head",
    "likelihood_of",
]

MIN_VARIANCE = 1e-6
"""Floor added to the softplus variance: the default ``min_variance`` of :class:`uqkit.nn.StackedGaussianMLP`
(a test pins the two mappings to each other)."""

NUM_BINS = 15
"""Equal-width bins of every ECE the benchmark reports, validation and test (Guo et al. 2017)."""


def gaussian_head(outputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{"mean", "variance"}`` of raw Gaussian-head outputs ``[..., 2 D]``: the first ``D`` values are the
    means, the last ``D`` unconstrained scales ``v`` with ``variance = softplus(v) + MIN_VARIANCE``.

    Shape:
        outputs ``[..., 2 D]``; mean and variance ``[..., D]``.

    Raises:
        ValueError: for outputs whose last dimension is not even.
    """
    width = outputs.shape[-1]
    if width % 2:
        raise ValueError(
            f"outputs: expected 2 values per target (mean, then scale) in the last dimension, got {width}"
        )
    mean, raw = outputs.split(width // 2, dim=-1)
    return {"mean": mean, "variance": F.softplus(raw) + MIN_VARIANCE}


@dataclass(frozen=True)
class Likelihood:
    """How a task's targets are scored against its network's outputs.

    Attributes:
        kind: ``"classification"`` or ``"regression"``, the task's kind.
        output: the ``output=`` of :func:`uqkit.predict` (``None``: the outputs are logits).
        loss: ``loss(outputs, targets)``: the mean negative log-likelihood per example (scalar tensor);
            outputs ``[B, K]`` or ``[S, B, K]`` (targets shared by the ``S`` samples).
    """

    kind: str
    output: Callable[[torch.Tensor], dict[str, torch.Tensor]] | None
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

    def nll(self, prediction: Prediction | GaussianPrediction, targets: torch.Tensor) -> float:
        """Mean NLL of the predictive distribution: for regression of the moment-matched Gaussian
        (:class:`uqkit.GaussianPrediction`'s mean and variance), summed over targets."""
        if self.kind == "classification":
            log_probs = prediction.log_probs
            return float(-log_probs.gather(1, targets.unsqueeze(1)).double().mean())
        return _gaussian_nll(prediction.mean, prediction.variance, targets)

    def member_nlls(self, prediction: Prediction | GaussianPrediction, targets: torch.Tensor) -> list[float]:
        """The mean NLL of each of the ``S`` samples (members) on its own."""
        if self.kind == "classification":
            log_probs = prediction.logits.log_softmax(dim=-1)
            index = targets.view(1, -1, 1).expand(log_probs.shape[0], -1, 1)
            return (-log_probs.gather(2, index).squeeze(2).double().mean(dim=1)).tolist()
        return [
            _gaussian_nll(mean, variance, targets)
            for mean, variance in zip(prediction.sample_mean, prediction.sample_variance, strict=True)
        ]

    def validation_metrics(
        self, prediction: Prediction | GaussianPrediction, targets: torch.Tensor
    ) -> dict[str, float]:
        """The trainer's per-epoch validation numbers (history keys): accuracy, NLL and ECE (15 bins) for
        classification; NLL and RMSE (in the training targets' units) for regression."""
        if self.kind == "classification":
            log_probs = prediction.log_probs
            return {
                "val_accuracy": float((log_probs.argmax(dim=-1) == targets).double().mean()),
                "val_nll": self.nll(prediction, targets),
                "val_ece": expected_calibration_error(log_probs.exp(), targets, num_bins=NUM_BINS),
            }
        error = (prediction.mean.double() - targets.double()).square().mean()
        return {"val_nll": self.nll(prediction, targets), "val_rmse": float(error.sqrt())}


def _gaussian_nll(mean: torch.Tensor, variance: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean over examples of the Gaussian NLL summed over the ``D`` targets (``[B, D]`` each)."""
    per_example = gaussian_nll_loss(mean.double(), variance.double(), targets.double()).sum(dim=-1)
    value = float(per_example.mean())
    return value if math.isfinite(value) else math.inf


def _cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(outputs, targets)


def _gaussian_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Gaussian NLL per example, summed over targets; ``[S, B, 2 D]`` outputs share ``[B, D]`` targets."""
    head = gaussian_head(outputs)
    return gaussian_nll_loss(head["mean"], head["variance"], targets).sum(dim=-1).mean()


CATEGORICAL = Likelihood("classification", None, _cross_entropy)
GAUSSIAN = Likelihood("regression", gaussian_head, _gaussian_loss)


def likelihood_of(kind: str) -> Likelihood:
    """The likelihood of a task of ``kind`` (``"classification"`` or ``"regression"``)."""
    for likelihood in (CATEGORICAL, GAUSSIAN):
        if likelihood.kind == kind:
            return likelihood
    raise ValueError(f"kind: expected 'classification' or 'regression', got {kind!r}")
