"""Split-conformal sets and intervals of a benchmark method, calibrated on the validation split.

The benchmark's part of :mod:`uqkit.conformal`: every method's own predictions on the task's validation split
calibrate the conformal threshold at each level of :data:`ALPHAS` (``1 - alpha`` = 90% and 95%), and the
sets or intervals are scored on the test set. Nothing here ever reads a test label before the threshold is
fixed.

* Classification (:func:`conformal_sets_block`): two scores, each a ``[B, C]`` set per test input.
  ``lac`` (Sadinle, Lei & Wasserman 2019), not randomised: the smallest sets on average, coverage in
  ``[1 - alpha, 1 - alpha + 1 / (n + 1)]``; ``aps`` (Romano, Sesia & Candes 2020), randomised: sets that
  grow with the input's ambiguity, coverage exactly ``1 - alpha`` in expectation. The uniform draws of APS
  come from a ``torch.Generator`` seeded with the run's seed (the same draws at every level, so the sets of
  the two levels are nested).
* Regression (:func:`conformal_intervals`, one split; :func:`summarize_intervals` over splits): the
  normalised residual ``|y - mu| / sigma`` of the Gaussian predictive (intervals ``mu +- q sigma``), the
  absolute residual ``|y - mu|`` (``mu +- q``), and, for comparison, the Gaussian central interval
  ``mu +- z_{1 - alpha/2} sigma`` of the same predictions, which needs no calibration.

A validation split smaller than ``(1 - alpha) / alpha`` examples (9 at ``alpha = 0.1``, 19 at 0.05) gives an
infinite threshold: full sets, unbounded intervals (stored as ``null`` widths and thresholds), coverage 1.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from uqkit import metrics
from uqkit.conformal import SplitConformalClassifier, SplitConformalRegressor
from uqkit.prediction import GaussianPrediction, Prediction

__all__ = [
    "ALPHAS",
    "INTERVAL_KINDS",
    "SET_SCORES",
    "conformal_intervals",
    "conformal_sets_block",
    "summarize_intervals",
]

ALPHAS = (0.1, 0.05)
"""Miscoverage levels of the benchmark: target coverage 90% and 95%."""

SET_SCORES = {"lac": False, "aps": True}
"""Classification scores of the benchmark, ``score -> randomized``."""

INTERVAL_KINDS = ("normalized", "absolute", "gaussian")
"""Regression intervals: the two conformal scores, then the uncalibrated Gaussian interval."""

_SMALL_SPLIT = r"alpha=.* needs at least .* calibration examples"


@contextlib.contextmanager
def _quietly_too_small() -> Iterator[None]:
    """Silence the conformal calibrators' "too few calibration examples" warning: the benchmark records
    the infinite threshold (``null`` in JSON) and the report says what it means."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_SMALL_SPLIT, category=UserWarning)
        yield


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one thread, then restore the setting. The conformal arithmetic is a few passes over
    ``[B, C]`` tensors (about 30 ms for the default run's 10,000 x 10); measured with two threads on a
    2-core machine that another job shared, every OpenMP region could stall, and it took 1.1-1.3 s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def conformal_sets_block(
    val_prediction: Prediction,
    val_labels: torch.Tensor,
    test_prediction: Prediction,
    test_labels: torch.Tensor,
    seed: int,
    alphas: Sequence[float] = ALPHAS,
) -> dict[str, Any]:
    """Conformal prediction sets of a classifier: calibrated on validation, scored on test.

    Args:
        val_prediction: the method's prediction on the validation split (the calibration split).
        val_labels: ``[n]`` validation labels.
        test_prediction: the method's prediction on the test set.
        test_labels: ``[B]`` test labels.
        seed: seeds the uniform draws of the randomised scores (one generator per score and level, so that
            every level sees the same draws).
        alphas: miscoverage levels.

    Returns:
        The ``conformal`` block of a method (docs/results-schema.md): ``alphas``, ``num_calibration`` and, per
        score of :data:`SET_SCORES`, lists over ``alphas`` of the test ``coverage``, ``mean_set_size``, the
        distribution of set sizes ``size_fraction`` (``C + 1`` fractions, size 0 to ``C``), the
        ``worst_size_stratified_coverage`` and the calibrated ``threshold`` (``inf`` when the validation
        split is too small; ``null`` once written to JSON).
    """
    block: dict[str, Any] = {
        "alphas": list(alphas),
        "calibration": "validation",
        "num_calibration": len(val_labels),
    }
    with _one_thread():
        for score, randomized in SET_SCORES.items():
            block[score] = _sets_of_score(
                score, randomized, val_prediction, val_labels, test_prediction, test_labels, seed, alphas
            )
    return block


def _sets_of_score(
    score: str,
    randomized: bool,
    val_prediction: Prediction,
    val_labels: torch.Tensor,
    test_prediction: Prediction,
    test_labels: torch.Tensor,
    seed: int,
    alphas: Sequence[float],
) -> dict[str, Any]:
    """The entry of one score of :func:`conformal_sets_block`."""
    entry: dict[str, Any] = {
        "randomized": randomized,
        "coverage": [],
        "mean_set_size": [],
        "size_fraction": [],
        "worst_size_stratified_coverage": [],
        "threshold": [],
    }
    for alpha in alphas:
        generator = torch.Generator().manual_seed(seed)
        calibrator = SplitConformalClassifier(score=score, alpha=alpha, randomized=randomized)
        with _quietly_too_small():
            calibrator.fit(val_prediction, val_labels, generator=generator)
        sets = calibrator.predict(test_prediction, generator=generator)
        sizes = metrics.set_size(sets)
        entry["coverage"].append(metrics.empirical_coverage(sets, test_labels))
        entry["mean_set_size"].append(sizes.mean)
        entry["size_fraction"].append(sizes.fraction.tolist())
        entry["worst_size_stratified_coverage"].append(
            metrics.size_stratified_coverage(sets, test_labels).worst
        )
        entry["threshold"].append(calibrator.threshold_)
    return entry


def _gaussian_intervals(prediction: GaussianPrediction, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The central ``1 - alpha`` interval ``mu +- z sigma`` of the (moment-matched) Gaussian predictive."""
    z = float(torch.special.ndtri(torch.tensor(1.0 - alpha / 2.0, dtype=torch.float64)))
    mean, stddev = prediction.mean.double(), prediction.stddev.double()
    return mean - z * stddev, mean + z * stddev


def conformal_intervals(
    val_prediction: GaussianPrediction,
    val_targets: torch.Tensor,
    test_prediction: GaussianPrediction,
    test_targets: torch.Tensor,
    alphas: Sequence[float] = ALPHAS,
) -> dict[str, dict[str, list[float]]]:
    """Conformal intervals of one split of a regressor: calibrated on validation, scored on test.

    Args:
        val_prediction: the method's Gaussian prediction on the validation rows, in the targets' units.
        val_targets: ``[n, D]`` validation targets, same units.
        test_prediction: the prediction on the test rows.
        test_targets: ``[B, D]`` test targets.
        alphas: miscoverage levels.

    Returns:
        ``{kind: {"coverage": [...], "width": [...]}}`` for each kind of :data:`INTERVAL_KINDS`, lists over
        ``alphas``: the fraction of test targets inside their interval and the mean interval width (over
        test rows and targets, in the targets' units; ``inf`` when the validation split is too small).
    """
    block: dict[str, dict[str, list[float]]] = {
        kind: {"coverage": [], "width": []} for kind in INTERVAL_KINDS
    }
    test_targets = test_targets.double().reshape(test_prediction.mean.shape)
    val_targets = val_targets.double().reshape(val_prediction.mean.shape)
    with _one_thread():
        for alpha in alphas:
            for kind in INTERVAL_KINDS:
                if kind == "gaussian":
                    intervals = _gaussian_intervals(test_prediction, alpha)
                else:
                    calibrator = SplitConformalRegressor(score=kind, alpha=alpha)
                    with _quietly_too_small():
                        calibrator.fit(val_prediction, val_targets)
                    intervals = calibrator.predict(test_prediction)
                block[kind]["coverage"].append(metrics.empirical_coverage(intervals, test_targets))
                block[kind]["width"].append(metrics.interval_width(intervals))
    return block


def _summary(values: Sequence[float]) -> dict[str, float | None]:
    """Mean and standard error (sample standard deviation / sqrt(n)) over splits; ``se`` is ``None`` for one
    split; the mean is ``inf`` if any value is (an unbounded interval)."""
    tensor = torch.tensor(list(values), dtype=torch.float64)
    if not bool(torch.isfinite(tensor).all()):
        return {"mean": math.inf, "se": None}
    se = float(tensor.std(unbiased=True) / math.sqrt(tensor.numel())) if tensor.numel() > 1 else None
    return {"mean": float(tensor.mean()), "se": se}


def summarize_intervals(
    per_split: Sequence[dict[str, dict[str, list[float]]]],
    num_calibration: int,
    network: str,
    alphas: Sequence[float] = ALPHAS,
) -> dict[str, Any]:
    """The ``conformal`` block of a regression method: :func:`conformal_intervals` of every split, each
    coverage and width summarised as ``{"mean", "se"}`` over the splits.

    Args:
        per_split: one :func:`conformal_intervals` result per split.
        num_calibration: validation rows of each split.
        network: ``"evaluated"`` (the network of the method's other metrics) or ``"selection"`` (the UCI
            protocol: the network trained on the fit part while choosing hyper-parameters, see
            :func:`uqkit.bench.regression.evaluate_regression_method`).
        alphas: the levels of ``per_split``.
    """
    block: dict[str, Any] = {
        "alphas": list(alphas),
        "calibration": "validation",
        "network": network,
        "num_calibration": num_calibration,
    }
    for kind in INTERVAL_KINDS:
        block[kind] = {
            key: [_summary([split[kind][key][index] for split in per_split]) for index in range(len(alphas))]
            for key in ("coverage", "width")
        }
    return block
