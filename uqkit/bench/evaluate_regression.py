"""Evaluation of a trained method on a regression task of the user's data (``uqkit bench --data ...``).

The block has the layout of the UCI benchmark's method blocks (``kind: "regression"`` tasks of
docs/results-schema.md) with one split: the user's train/test split. Predictions are made in the
standardised units the method trained in and mapped back (``mu = target_mean + target_std * mu'``,
``sigma^2 = target_std^2 * sigma'^2``), so every number is in the targets' own units. The Gaussian NLL and
RMSE average over test examples and targets; standard errors are ``null`` (one split: there is no spread over
splits to report). OOD sets are scored by the predictive variance (total) and by the variance of the
members' or samples' means (epistemic), summed over targets in standardised units. Conformal intervals
(normalised and absolute residual) are calibrated on the validation split, which trained nothing but chose
the epoch, and scored on the test split beside the Gaussian intervals of the same predictions.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from uqkit import metrics
from uqkit.bench.evaluate_conformal import conformal_intervals, summarize_intervals
from uqkit.bench.inference import predict_in_batches
from uqkit.bench.registry import Method
from uqkit.bench.regression_metrics import COVERAGE_LEVELS, prediction_metrics
from uqkit.bench.tasks import Task
from uqkit.nn.members import num_members
from uqkit.prediction import GaussianPrediction

__all__ = ["evaluate_regression", "regression_training_fields"]


def _ood_scores(in_prediction: GaussianPrediction, ood_prediction: GaussianPrediction) -> dict[str, Any]:
    block = {}
    for kind in ("total", "epistemic"):
        in_scores = in_prediction.uncertainty(kind).sum(dim=-1)
        ood_scores = ood_prediction.uncertainty(kind).sum(dim=-1)
        block[kind] = {
            "auroc": metrics.ood_auroc(in_scores, ood_scores),
            "aupr": metrics.ood_aupr(in_scores, ood_scores),
            "fpr95": metrics.fpr_at_95_tpr(in_scores, ood_scores),
        }
    return block


def evaluate_regression(
    method: Method,
    task: Task,
    batch_size: int = 1000,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
    name: str = "",
) -> dict[str, Any]:
    """Test metrics of ``method`` on the regression ``task`` in the targets' units (block without the
    training fields; see :func:`regression_training_fields`).

    Stochastic predictions draw from torch's global generator, seeded here with ``seed``.
    """
    torch.manual_seed(seed)
    label = name or type(method).__name__
    started = time.perf_counter()
    standardised = predict_in_batches(method, task.test.inputs, batch_size, device, f"{label} test", progress)
    inference_s = time.perf_counter() - started
    prediction = _original_units(standardised, task)
    targets = _original_targets(task.test.labels, task)
    values = prediction_metrics(prediction, targets)
    observed = values.pop("coverage")
    ood = {}
    for ood_name, ood_set in task.ood_sets.items():
        ood_prediction = predict_in_batches(
            method, ood_set.inputs, batch_size, device, f"{label} OOD {ood_name}", progress
        )
        ood[ood_name] = _ood_scores(standardised, ood_prediction)
    members = num_members(method.network)
    conformal = _conformal_block(method, task, prediction, targets, batch_size, device, label, progress)
    return {
        "num_members": members,
        "num_samples": standardised.num_samples,
        "num_parameters": method.num_parameters(),
        "inference_ms_per_example": 1000.0 * inference_s / len(targets),
        "metrics": {key: {"mean": value, "se": None} for key, value in values.items()},
        "per_split": {key: [value] for key, value in values.items()},
        "coverage_curve": {"expected": list(COVERAGE_LEVELS), "observed": observed},
        "ood": ood,
        "conformal": conformal,
    }


def _original_units(prediction: GaussianPrediction, task: Task) -> GaussianPrediction:
    """A prediction in the standardised units the method trained in, mapped to the targets' units."""
    mean, std = task.target_mean.double(), task.target_std.double()
    return GaussianPrediction(
        prediction.sample_mean.double() * std + mean, prediction.sample_variance.double() * std.square()
    )


def _original_targets(targets: torch.Tensor, task: Task) -> torch.Tensor:
    """Standardised targets mapped back to their own units."""
    return targets.double() * task.target_std.double() + task.target_mean.double()


def _conformal_block(
    method: Method,
    task: Task,
    test_prediction: GaussianPrediction,
    test_targets: torch.Tensor,
    batch_size: int,
    device: str,
    label: str,
    progress: bool,
) -> dict[str, Any] | None:
    """Conformal intervals calibrated on the method's own predictions on the validation split, scored on the
    test split, beside the Gaussian intervals of the same predictions (targets' units); ``None`` without
    validation data. Predicted after everything else, so that the other numbers keep their draws."""
    if len(task.val) == 0:
        return None
    standardised = predict_in_batches(
        method, task.val.inputs, batch_size, device, f"{label} validation", progress
    )
    val_prediction, val_targets = (
        _original_units(standardised, task),
        _original_targets(task.val.labels, task),
    )
    split = conformal_intervals(val_prediction, val_targets, test_prediction, test_targets)
    return summarize_intervals([split], len(task.val), network="evaluated")


def regression_training_fields(
    block: dict[str, Any],
    history: list[dict[str, float]],
    selected_epochs: list[int] | None,
    learning_rate: float,
    epochs: int,
    validation_fraction: float,
) -> dict[str, Any]:
    """``block`` completed with the training part of a regression method block: the per-split learning rate
    and epoch (the one whose weights the method kept, chosen on validation NLL), the ``selection``, and
    ``training`` in the UCI layout (the one training's network epochs as its ``retraining``)."""
    chosen = selected_epochs[0] if selected_epochs else epochs
    best = min((entry["val_nll"] for entry in history), default=None)
    block["per_split"].update({"learning_rate": [learning_rate], "dropout": None, "epochs": [int(chosen)]})
    block["selection"] = {
        "grid": [{"learning_rate": learning_rate}],
        "select_epochs": True,
        "max_epochs": epochs,
        "validation_fraction": validation_fraction,
        "validation_nll": [[best]],
    }
    block["selection_time_s"] = 0.0
    facts = block.get("training")
    if isinstance(facts, dict) and "network_epochs" in facts:  # the runner's facts, in the UCI layout
        block["training"] = {
            "optimizer": facts["optimizer"],
            "selection_network_epochs": 0,  # no separate choice: the one training keeps its best epoch
            "retraining_network_epochs": float(facts["network_epochs"]),
        }
    return block
