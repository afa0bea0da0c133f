"""Metrics of conformal prediction sets and intervals: coverage, set size, size-stratified coverage, width.

Prediction sets are ``[B, C]`` ``torch.bool`` masks (``True`` for the classes in each set), as returned by
:meth:`uqkit.conformal.SplitConformalClassifier.predict`; intervals are ``(lower, upper)`` pairs of tensors,
such as :class:`uqkit.conformal.PredictionIntervals`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from uqkit._validation import check_labels, check_tensor
from uqkit.metrics._inputs import check_bool_mask, check_regression_inputs, check_same_device

__all__ = [
    "SetSize",
    "SizeStratifiedCoverage",
    "empirical_coverage",
    "interval_width",
    "set_size",
    "size_stratified_coverage",
]


def _check_sets(sets: Any, name: str = "sets") -> torch.Tensor:
    sets = check_bool_mask(sets, name, 2, "[batch, classes]", "True for the classes in each set")
    if sets.shape[0] == 0 or sets.shape[1] == 0:
        raise ValueError(
            f"{name}: expected at least one example and one class, got shape {tuple(sets.shape)}"
        )
    return sets


def _check_sets_and_labels(sets: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
    sets = _check_sets(sets)
    labels = check_labels(labels, "labels", num_classes=sets.shape[1], length=sets.shape[0])
    check_same_device(sets=sets, labels=labels)
    return sets, labels.long()


def _covered(sets: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[B]`` bool: does each set hold its label?"""
    return sets.gather(1, labels.unsqueeze(1)).squeeze(1)


def _check_intervals(intervals: Any, name: str = "intervals") -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(intervals, tuple) and len(intervals) == 2):
        raise TypeError(
            f"{name}: expected a (lower, upper) pair of tensors such as uqkit.conformal.PredictionIntervals, "
            f"got {type(intervals).__name__}"
        )
    lower, upper = intervals
    for bound, label in ((lower, "lower"), (upper, "upper")):
        check_tensor(bound, f"{name}.{label}")
        if bound.is_floating_point() and bool(torch.isnan(bound.detach()).any()):
            raise ValueError(f"{name}.{label}: expected no NaN (infinite bounds are allowed)")
    # bounds may be infinite (too small a calibration split): check them with finite stand-ins
    check_regression_inputs(lower=lower.nan_to_num(), upper=upper.nan_to_num())
    return lower.detach(), upper.detach()


def empirical_coverage(prediction: Any, targets: torch.Tensor) -> float:
    """Fraction of examples whose prediction set or interval holds the observed value.

    * Sets: ``(1/B) sum_b 1[y_b in C(x_b)]`` for a ``[B, C]`` bool mask and ``[B]`` labels.
    * Intervals: ``(1/N) sum 1[lower <= y <= upper]`` over all ``N = B * D`` elements (endpoints included,
      as the conformal interval ``{y : s(x, y) <= q}`` is closed).

    For split-conformal sets at level ``alpha`` the expected coverage is at least ``1 - alpha``.

    Args:
        prediction: a ``[B, C]`` ``torch.bool`` mask of prediction sets, or a ``(lower, upper)`` pair of
            ``[B]`` / ``[B, D]`` tensors (e.g. :class:`uqkit.conformal.PredictionIntervals`).
        targets: ``[B]`` integer labels in ``[0, C)`` for sets; for intervals, finite values of the bounds'
            shape (or ``[B]`` for ``[B, 1]`` bounds).

    Returns:
        Coverage in ``[0, 1]``.
    """
    if isinstance(prediction, torch.Tensor):
        sets, labels = _check_sets_and_labels(prediction, targets)
        return float(_covered(sets, labels).double().mean())
    if not isinstance(prediction, tuple):
        raise TypeError(
            "prediction: expected a [batch, classes] torch.bool mask of prediction sets or a (lower, upper) "
            f"pair of tensors, got {type(prediction).__name__}"
        )
    lower, upper = _check_intervals(prediction)
    targets = check_tensor(targets, "targets")
    if lower.ndim == 2 and lower.shape[1] == 1 and targets.shape == lower.shape[:1]:
        targets = targets.unsqueeze(1)
    check_regression_inputs(lower=lower.nan_to_num(), upper=upper.nan_to_num(), targets=targets)
    targets = targets.detach()
    return float(((lower <= targets) & (targets <= upper)).double().mean())


@dataclass(frozen=True)
class SetSize:
    """Sizes of prediction sets: per example, their mean and their distribution.

    Attributes:
        sizes: ``[B]`` ``torch.long`` number of classes in each set.
        mean: the mean size, ``sizes.mean()``.
        counts: ``[C + 1]`` ``torch.long``: ``counts[k]`` sets hold ``k`` classes (``k = 0`` is an empty set).
        fraction: ``[C + 1]`` ``counts / B``, the distribution of sizes.
    """

    sizes: torch.Tensor
    mean: float
    counts: torch.Tensor
    fraction: torch.Tensor


def set_size(sets: torch.Tensor) -> SetSize:
    """Sizes of prediction sets, with their mean and distribution (the efficiency of a conformal method).

    Args:
        sets: ``[B, C]`` ``torch.bool`` mask of prediction sets.

    Returns:
        :class:`SetSize`.
    """
    sets = _check_sets(sets).detach()
    sizes = sets.sum(dim=1)
    counts = torch.bincount(sizes, minlength=sets.shape[1] + 1)
    return SetSize(
        sizes=sizes,
        mean=float(sizes.double().mean()),
        counts=counts,
        fraction=counts.double() / sets.shape[0],
    )


@dataclass(frozen=True)
class SizeStratifiedCoverage:
    """Coverage within each set size (Angelopoulos et al. 2021, Section 4: size-stratified coverage).

    Attributes:
        sizes: ``[K]`` the set sizes that occur, increasing.
        coverage: ``[K]`` float64 coverage among the sets of each size.
        counts: ``[K]`` number of sets of each size.
        worst: the lowest coverage over the sizes that occur (their SSC metric; ``1 - alpha`` is ideal).
    """

    sizes: torch.Tensor
    coverage: torch.Tensor
    counts: torch.Tensor

    @property
    def worst(self) -> float:
        return float(self.coverage.min())


def size_stratified_coverage(sets: torch.Tensor, labels: torch.Tensor) -> SizeStratifiedCoverage:
    """Coverage of prediction sets stratified by their size.

    For each size ``k`` that occurs,
    ``coverage_k = #{b : |C(x_b)| = k, y_b in C(x_b)} / #{b : |C(x_b)| = k}``.
    A method with only marginal coverage can over-cover on large sets and under-cover on small ones; an
    adaptive one has every ``coverage_k`` near ``1 - alpha``. Empty sets (``k = 0``) cover nothing.

    Args:
        sets: ``[B, C]`` ``torch.bool`` mask of prediction sets.
        labels: ``[B]`` integer labels in ``[0, C)``.

    Returns:
        :class:`SizeStratifiedCoverage`.
    """
    sets, labels = _check_sets_and_labels(sets, labels)
    sizes = sets.detach().sum(dim=1)
    covered = _covered(sets.detach(), labels).double()
    present, inverse, counts = torch.unique(sizes, sorted=True, return_inverse=True, return_counts=True)
    hits = torch.zeros(present.shape[0], dtype=torch.float64, device=sets.device).index_add_(
        0, inverse, covered
    )
    return SizeStratifiedCoverage(sizes=present, coverage=hits / counts, counts=counts)


def interval_width(intervals: Any) -> float:
    """Mean width ``(1/N) sum (upper - lower)`` of intervals over all ``N = B * D`` elements.

    Args:
        intervals: a ``(lower, upper)`` pair of ``[B]`` / ``[B, D]`` tensors of one shape (e.g.
            :class:`uqkit.conformal.PredictionIntervals`); bounds may be infinite.

    Returns:
        The mean width (``+inf`` if any interval is unbounded), in the units of the targets.
    """
    lower, upper = _check_intervals(intervals)
    return float((upper.double() - lower.double()).mean())
