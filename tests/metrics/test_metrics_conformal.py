"""empirical_coverage, set_size, size_stratified_coverage and interval_width against loops."""

from __future__ import annotations

import math

import pytest
import torch

from uqkit.conformal import PredictionIntervals
from uqkit.metrics import empirical_coverage, interval_width, set_size, size_stratified_coverage


def _sets(batch: int = 200, classes: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    sets = torch.rand(batch, classes, generator=generator) < torch.rand(batch, 1, generator=generator)
    labels = torch.randint(0, classes, (batch,), generator=generator)
    return sets, labels


def _intervals(shape: tuple, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    center = torch.randn(shape, generator=generator, dtype=torch.float64)
    half = torch.rand(shape, generator=generator, dtype=torch.float64)
    targets = center + torch.randn(shape, generator=generator, dtype=torch.float64)
    return PredictionIntervals(center - half, center + half), targets


def test_set_coverage_matches_loop():
    sets, labels = _sets()
    hits = [bool(sets[b, labels[b]]) for b in range(len(labels))]
    assert empirical_coverage(sets, labels) == pytest.approx(sum(hits) / len(hits), abs=1e-15)


@pytest.mark.parametrize("shape", [(50,), (40, 3)])
def test_interval_coverage_matches_loop_and_includes_endpoints(shape):
    intervals, targets = _intervals(shape)
    targets.view(-1)[:5] = intervals.upper.view(-1)[:5]  # on the closed end
    flat = zip(intervals.lower.flatten(), intervals.upper.flatten(), targets.flatten(), strict=True)
    hits = [bool(lo <= y <= hi) for lo, hi, y in flat]
    assert empirical_coverage(intervals, targets) == pytest.approx(sum(hits) / len(hits), abs=1e-15)
    assert empirical_coverage((intervals.lower, intervals.upper), targets) == empirical_coverage(
        intervals, targets
    )


def test_interval_coverage_with_unbounded_intervals_and_flat_targets():
    lower = torch.tensor([[-math.inf], [0.0], [0.0]])
    upper = torch.tensor([[math.inf], [1.0], [1.0]])
    assert empirical_coverage((lower, upper), torch.tensor([100.0, 0.5, 2.0])) == pytest.approx(2 / 3)


def test_set_size_counts_and_distribution():
    sets, _ = _sets()
    sizes = [int(row.sum()) for row in sets]
    result = set_size(sets)
    assert result.sizes.tolist() == sizes
    assert result.mean == pytest.approx(sum(sizes) / len(sizes))
    assert result.counts.tolist() == [sizes.count(k) for k in range(7)]
    assert result.fraction.sum().item() == pytest.approx(1.0)
    assert result.counts[0] > 0  # the random sets include empty ones, counted at size 0


def test_size_stratified_coverage_matches_loop():
    sets, labels = _sets(seed=2)
    result = size_stratified_coverage(sets, labels)
    by_size: dict[int, list[bool]] = {}
    for b in range(len(labels)):
        by_size.setdefault(int(sets[b].sum()), []).append(bool(sets[b, labels[b]]))
    assert result.sizes.tolist() == sorted(by_size)
    assert result.counts.tolist() == [len(by_size[k]) for k in sorted(by_size)]
    expected = [sum(by_size[k]) / len(by_size[k]) for k in sorted(by_size)]
    assert result.coverage.tolist() == pytest.approx(expected)
    assert result.worst == pytest.approx(min(expected))
    assert result.coverage[0] == 0  # size 0 covers nothing


@pytest.mark.parametrize("shape", [(50,), (40, 3)])
def test_interval_width_is_the_mean_width(shape):
    intervals, _ = _intervals(shape)
    widths = [
        float(hi - lo) for lo, hi in zip(intervals.lower.flatten(), intervals.upper.flatten(), strict=True)
    ]
    assert interval_width(intervals) == pytest.approx(sum(widths) / len(widths))
    assert interval_width((torch.tensor([0.0, -math.inf]), torch.tensor([1.0, 0.0]))) == math.inf


@pytest.mark.parametrize(
    ("sets", "labels", "error", "match"),
    [
        (torch.ones(4, 3), torch.zeros(4, dtype=torch.long), TypeError, "sets: expected a bool tensor"),
        (
            torch.ones(4, dtype=torch.bool),
            torch.zeros(4, dtype=torch.long),
            ValueError,
            "sets: expected a 2-D",
        ),
        (torch.ones(0, 3, dtype=torch.bool), torch.zeros(0, dtype=torch.long), ValueError, "at least one"),
        (
            torch.ones(4, 3, dtype=torch.bool),
            torch.zeros(5, dtype=torch.long),
            ValueError,
            "labels: expected 4",
        ),
        (
            torch.ones(4, 3, dtype=torch.bool),
            torch.full((4,), 3),
            ValueError,
            r"labels: expected class indices",
        ),
        (
            torch.ones(4, 3, dtype=torch.bool),
            torch.zeros(4),
            TypeError,
            "labels: expected integer class indices",
        ),
        (
            [[True]],
            torch.zeros(1, dtype=torch.long),
            TypeError,
            r"mask of prediction sets or a \(lower, upper\) pair",
        ),
    ],
)
def test_set_metrics_reject_malformed_inputs(sets, labels, error, match):
    with pytest.raises(error, match=match):
        empirical_coverage(sets, labels)
    if isinstance(sets, torch.Tensor):
        with pytest.raises(error, match=match):
            size_stratified_coverage(sets, labels)


def test_set_size_rejects_malformed_sets():
    with pytest.raises(TypeError, match=r"sets: expected a bool tensor \[batch, classes\]"):
        set_size(torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(TypeError, match=r"sets: expected a torch\.Tensor"):
        set_size([[True, False]])


@pytest.mark.parametrize(
    ("intervals", "targets", "error", "match"),
    [
        ((torch.zeros(3),), torch.zeros(3), TypeError, r"intervals: expected a \(lower, upper\) pair"),
        ((torch.zeros(3), torch.ones(4)), torch.zeros(3), ValueError, "expected the same shape"),
        ((torch.zeros(3), torch.ones(3)), torch.zeros(4), ValueError, "expected the same shape"),
        (
            (torch.tensor([0.0, math.nan]), torch.ones(2)),
            torch.zeros(2),
            ValueError,
            "intervals.lower: expected no NaN",
        ),
        (
            (torch.zeros(3), torch.ones(3)),
            torch.tensor([0.0, math.inf, 0.0]),
            ValueError,
            "targets: expected finite",
        ),
        ((torch.zeros(3, dtype=torch.long), torch.ones(3)), torch.zeros(3), TypeError, "floating-point"),
        ((torch.zeros(0), torch.ones(0)), torch.zeros(0), ValueError, "at least one element"),
    ],
)
def test_interval_metrics_reject_malformed_inputs(intervals, targets, error, match):
    with pytest.raises(error, match=match):
        empirical_coverage(intervals, targets)


@pytest.mark.parametrize(
    ("intervals", "error", "match"),
    [
        ((torch.zeros(3),), TypeError, r"intervals: expected a \(lower, upper\) pair"),
        ((torch.zeros(3), torch.ones(4)), ValueError, "expected the same shape"),
        ((torch.tensor([math.nan]), torch.ones(1)), ValueError, "intervals.lower: expected no NaN"),
        ((torch.zeros(0), torch.ones(0)), ValueError, "at least one element"),
    ],
)
def test_interval_width_rejects_malformed_intervals(intervals, error, match):
    with pytest.raises(error, match=match):
        interval_width(intervals)
