"""Evaluation of a trained method on a task, every number computed from :class:`uqkit.Prediction`.

The output is the per-method block of ``results.json`` (docs/results-schema.md): test metrics, the
reliability curve, referral and risk-coverage curves, OOD detection with total and epistemic uncertainty for
every OOD set of the task, accuracy/ECE/NLL along the task's shift, the inference cost, and the coverage and
size of conformal prediction sets calibrated on the validation split (:mod:`uqkit.bench.evaluate_conformal`).
For a task with 2-D vector inputs (two moons) it adds the method's uncertainty surface on a regular grid (the
SNGP paper's figure 1, Liu et al. 2020).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from uqkit import metrics
from uqkit.bench.evaluate_conformal import conformal_sets_block
from uqkit.bench.inference import predict_in_batches
from uqkit.bench.likelihoods import NUM_BINS
from uqkit.bench.progress import progress_bar
from uqkit.bench.registry import Method
from uqkit.bench.tasks import Task
from uqkit.prediction import Prediction

__all__ = ["SurfaceGrid", "evaluate_method", "predict_in_batches", "surface_grid"]

MAX_SCORES_SAVED = 2000
MAX_CURVE_POINTS = 200
SURFACE_RESOLUTION = 48
"""Grid points per axis of the uncertainty surface of a 2-D task."""
SURFACE_PADDING = 1.0
"""Margin added on every side of the bounding box of the training and OOD inputs (input units)."""
SURFACE_DECIMALS = 3
MAX_SURFACE_POINTS = 300
"""Most training (and, separately, OOD) points stored with a surface to be overlaid on the figure."""


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _classification_metrics(prediction: Prediction, labels: torch.Tensor) -> dict[str, float]:
    probs = prediction.probs
    correct = prediction.predicted_class == labels
    return {
        "accuracy": metrics.accuracy(probs, labels),
        "nll": metrics.nll(probs, labels),
        "brier": metrics.brier_score(probs, labels),
        "ece": metrics.expected_calibration_error(probs, labels, num_bins=NUM_BINS),
        "aurc": metrics.aurc(prediction.total_entropy, correct),
    }


def _evenly_spaced(values: torch.Tensor, count: int) -> list[float]:
    """At most ``count`` entries of a sorted curve, evenly spaced, always keeping the last one."""
    if len(values) <= count:
        return values.tolist()
    index = torch.linspace(0, len(values) - 1, count).round().long()
    return values[index].tolist()


def _score_sample(scores: torch.Tensor, seed: int) -> list[float]:
    if len(scores) > MAX_SCORES_SAVED:
        generator = torch.Generator().manual_seed(seed)
        scores = scores[torch.randperm(len(scores), generator=generator)[:MAX_SCORES_SAVED]]
    return [round(float(s), 6) for s in scores]


def _ood_block(in_prediction: Prediction, ood_prediction: Prediction, seed: int) -> dict[str, Any]:
    block: dict[str, Any] = {}
    for kind in ("total", "epistemic"):
        in_scores = in_prediction.uncertainty(kind)
        ood_scores = ood_prediction.uncertainty(kind)
        block[kind] = {
            "auroc": metrics.ood_auroc(in_scores, ood_scores),
            "aupr": metrics.ood_aupr(in_scores, ood_scores),
            "fpr95": metrics.fpr_at_95_tpr(in_scores, ood_scores),
        }
    block["scores"] = {
        "kind": "total",
        "in": _score_sample(in_prediction.total_entropy, seed),
        "ood": _score_sample(ood_prediction.total_entropy, seed + 1),
    }
    return block


@dataclass(frozen=True)
class SurfaceGrid:
    """A regular grid over the plane: ``x`` (``[nx]``) and ``y`` (``[ny]``) coordinates, increasing."""

    x: torch.Tensor
    y: torch.Tensor

    def points(self) -> torch.Tensor:
        """``[ny * nx, 2]`` grid points, row-major: point ``i * nx + j`` is ``(x[j], y[i])``."""
        grid_y, grid_x = torch.meshgrid(self.y, self.x, indexing="ij")
        return torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1)


def surface_grid(
    points: torch.Tensor, resolution: int = SURFACE_RESOLUTION, padding: float = SURFACE_PADDING
) -> SurfaceGrid:
    """A ``resolution x resolution`` grid over the bounding box of ``points`` padded by ``padding``.

    Args:
        points: ``[N, 2]`` inputs whose bounding box the grid covers (training and OOD inputs).
        resolution: grid points per axis, at least 2.
        padding: margin added on each side of the bounding box, in input units, ``>= 0``.

    Returns:
        The grid; its ``x`` spans ``[min x - padding, max x + padding]``, likewise ``y``.

    Shape:
        points: ``[N, 2]`` with ``N >= 1``.
    """
    if not isinstance(points, torch.Tensor):
        raise TypeError(f"points: expected a torch.Tensor, got {type(points).__name__}")
    if points.dim() != 2 or points.shape[1] != 2 or points.shape[0] == 0:
        raise ValueError(f"points: expected shape [N, 2] with N >= 1, got {list(points.shape)}")
    if not bool(torch.isfinite(points).all()):
        raise ValueError("points: expected finite values, got NaN or inf")
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 2:
        raise ValueError(f"resolution: expected an int >= 2, got {resolution!r}")
    if isinstance(padding, bool) or not isinstance(padding, (int, float)) or not padding >= 0:
        raise ValueError(f"padding: expected a number >= 0, got {padding!r}")
    low = points.min(dim=0).values.double() - padding
    high = points.max(dim=0).values.double() + padding
    axes = [torch.linspace(float(low[d]), float(high[d]), resolution) for d in range(2)]
    return SurfaceGrid(axes[0], axes[1])


def _rounded(values: torch.Tensor, decimals: int = SURFACE_DECIMALS) -> list:
    return torch.round(values.double(), decimals=decimals).tolist()


def _point_sample(inputs: torch.Tensor, seed: int) -> torch.Tensor:
    """At most :data:`MAX_SURFACE_POINTS` rows of ``inputs``, a fixed random subset."""
    if len(inputs) <= MAX_SURFACE_POINTS:
        return torch.arange(len(inputs))
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(len(inputs), generator=generator)[:MAX_SURFACE_POINTS].sort().values


def _surface_block(
    method: Method, task: Task, batch_size: int, device: str, seed: int, label: str, progress: bool
) -> dict[str, Any]:
    """Total and epistemic uncertainty of ``method`` on a grid over the task's training and OOD inputs."""
    ood_inputs = [ood_set.inputs.reshape(-1, 2) for ood_set in task.ood_sets.values()]
    grid = surface_grid(torch.cat([task.train.inputs.reshape(-1, 2), *ood_inputs]))
    grid_points = grid.points().to(task.train.inputs.dtype)
    prediction = predict_in_batches(method, grid_points, batch_size, device, f"{label} surface", progress)
    shape = (len(grid.y), len(grid.x))
    train_index = _point_sample(task.train.inputs, seed)
    train_points = task.train.inputs[train_index].reshape(-1, 2)
    all_ood = torch.cat(ood_inputs) if ood_inputs else torch.zeros(0, 2)
    ood_points = all_ood[_point_sample(all_ood, seed + 1)]
    return {
        "x": _rounded(grid.x),
        "y": _rounded(grid.y),
        "total": _rounded(prediction.total_entropy.reshape(shape)),
        "epistemic": _rounded(prediction.mutual_information.reshape(shape)),
        "train_points": {
            "x": _rounded(train_points[:, 0]),
            "y": _rounded(train_points[:, 1]),
            "label": task.train.labels[train_index].tolist(),
        },
        "ood_points": {"x": _rounded(ood_points[:, 0]), "y": _rounded(ood_points[:, 1])},
    }


def evaluate_method(
    method: Method,
    task: Task,
    batch_size: int = 1000,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
    name: str = "",
) -> dict[str, Any]:
    """Evaluate ``method`` on ``task``; returns the per-method result block (without training fields).

    Stochastic predictions draw from torch's global generator, seeded here with ``seed`` so that the same
    trained method always gets the same numbers. For a task with 2-D vector inputs (``input_shape == (2,)``)
    the block gets a ``surface``: total and epistemic uncertainty on a :func:`surface_grid` over the
    training and OOD inputs, with (a sample of) those inputs to overlay. The ``conformal`` block holds the
    coverage and size of conformal prediction sets calibrated on the validation split. A regression task
    (``task.kind``) gets the block of :func:`uqkit.bench.evaluate_regression.evaluate_regression` instead.
    """
    if task.kind == "regression":
        from uqkit.bench.evaluate_regression import evaluate_regression

        return evaluate_regression(method, task, batch_size, device, seed, progress, name)
    torch.manual_seed(seed)
    label = name or type(method).__name__
    test_inputs, test_labels = task.test.inputs, task.test.labels

    started = time.perf_counter()
    prediction = predict_in_batches(method, test_inputs, batch_size, device, f"{label} test", progress)
    inference_s = time.perf_counter() - started

    probs = prediction.probs
    correct = prediction.predicted_class == test_labels
    curve = metrics.calibration_curve(probs, test_labels, num_bins=NUM_BINS)
    referral = metrics.referral_curve(prediction.total_entropy, correct)
    risk_coverage = metrics.risk_coverage_curve(prediction.total_entropy, correct)

    result: dict[str, Any] = {
        "num_samples": prediction.num_samples,
        "num_parameters": method.num_parameters(),
        "inference_ms_per_example": 1000.0 * inference_s / len(test_labels),
        "metrics": _classification_metrics(prediction, test_labels),
        "calibration_curve": curve.to_dict(),
        "referral_curve": referral.to_dict(),
        "risk_coverage": {
            "coverage": _evenly_spaced(risk_coverage.coverage, MAX_CURVE_POINTS),
            "risk": _evenly_spaced(risk_coverage.risk, MAX_CURVE_POINTS),
        },
        "ood": {},
        "shift": None,
    }
    for offset, (ood_name, ood_set) in enumerate(task.ood_sets.items()):
        ood_prediction = predict_in_batches(
            method, ood_set.inputs, batch_size, device, f"{label} OOD {ood_name}", progress
        )
        result["ood"][ood_name] = _ood_block(prediction, ood_prediction, seed + 10 * offset)

    if task.shift is not None:
        shift = {"values": list(task.shift.values), "accuracy": [], "ece": [], "nll": []}
        shift_labels = test_labels if task.shift.labels is None else task.shift.labels.to(test_labels.device)
        with progress_bar(len(task.shift.values), f"{label} {task.shift.name}", progress, "level") as bar:
            for value in task.shift.values:
                shifted = predict_in_batches(
                    method, task.shift.inputs_at(value), batch_size, device, "", progress=False
                )
                shifted_probs = shifted.probs
                shift["accuracy"].append(metrics.accuracy(shifted_probs, shift_labels))
                shift["ece"].append(
                    metrics.expected_calibration_error(shifted_probs, shift_labels, num_bins=NUM_BINS)
                )
                shift["nll"].append(metrics.nll(shifted_probs, shift_labels))
                bar.update(1)
        result["shift"] = shift
    if tuple(task.input_shape) == (2,):
        result["surface"] = _surface_block(method, task, batch_size, device, seed, label, progress)
    result["conformal"] = _conformal_block(
        method, task, prediction, batch_size, device, seed, label, progress
    )
    return result


def _conformal_block(
    method: Method,
    task: Task,
    test_prediction: Prediction,
    batch_size: int,
    device: str,
    seed: int,
    label: str,
    progress: bool,
) -> dict[str, Any] | None:
    """Conformal sets calibrated on the method's own predictions on the validation split, scored on the test
    set (:func:`uqkit.bench.evaluate_conformal.conformal_sets_block`); ``None`` without validation data.

    Predicted last, so that the draws of a stochastic method's other predictions are those they were before
    the block existed."""
    if len(task.val) == 0:
        return None
    val_prediction = predict_in_batches(
        method, task.val.inputs, batch_size, device, f"{label} validation", progress
    )
    return conformal_sets_block(val_prediction, task.val.labels, test_prediction, task.test.labels, seed)
