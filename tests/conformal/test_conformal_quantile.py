"""conformal_quantile against MAPIE's and crepes' split-conformal quantiles, exact ranks and the edge case."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from uqkit.conformal import conformal_quantile, minimum_calibration_size
from uqkit.conformal.quantile import conformal_rank

mapie_utils = pytest.importorskip("mapie.utils")
crepes = pytest.importorskip("crepes")

# (n, alpha) with alpha (n + 1) not an integer: crepes floors (1 - confidence)(n + 1) in floating point,
# which at an integer can land one rank off (see test_rank_is_exact_where_floating_point_is_not).
SIZES = [
    (10, 0.1),
    (24, 0.1),
    (57, 0.1),
    (200, 0.1),
    (30, 0.05),
    (101, 0.05),
    (13, 0.2),
    (50, 0.33),
    (7, 0.4),
]


def _scores(n: int, seed: int = 0, columns: int | None = None) -> torch.Tensor:
    shape = (n,) if columns is None else (n, columns)
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3


@pytest.mark.parametrize(("n", "alpha"), SIZES)
def test_matches_mapie_quantile(n, alpha):
    scores = _scores(n, seed=n)
    expected = mapie_utils._compute_classification_quantile(scores.numpy(), np.array([alpha]))[0]
    assert float(conformal_quantile(scores, alpha)) == expected


@pytest.mark.parametrize(("n", "alpha"), SIZES)
def test_matches_crepes_conformal_regressor(n, alpha):
    """crepes' normalisation-free conformal regressor: the interval y_hat +- q with the same q."""
    scores = _scores(n, seed=n + 1)
    regressor = crepes.ConformalRegressor()
    regressor.fit(scores.numpy())  # residuals; crepes takes their absolute values
    interval = regressor.predict_int(np.zeros(1), confidence=1 - alpha)
    assert float(conformal_quantile(scores, alpha)) == interval[0, 1]


def test_is_the_kth_smallest_score():
    scores = _scores(40, seed=3)
    for alpha in (0.025, 0.1, 0.25, 0.5, 0.9):
        k = math.ceil(41 * (1 - alpha) - 1e-9)
        assert float(conformal_quantile(scores, alpha)) == sorted(scores.tolist())[k - 1]


def test_rank_is_exact_where_floating_point_is_not():
    # 10 * (1 - 0.7) = 3.0000000000000004 in floating point, whose ceiling is 4; the rank is 3.
    assert 10 * (1 - 0.7) > 3
    assert conformal_rank(9, 0.7) == 3
    # 100 * (1 - 0.1) is 90 exactly: the 90th smallest of 99, not the 91st.
    assert conformal_rank(99, 0.1) == 90
    scores = _scores(99, seed=4)
    assert float(conformal_quantile(scores, 0.1)) == sorted(scores.tolist())[89]


def test_columns_are_independent_problems():
    scores = _scores(30, seed=5, columns=3)
    thresholds = conformal_quantile(scores, 0.1)
    assert thresholds.shape == (3,)
    for d in range(3):
        assert thresholds[d] == conformal_quantile(scores[:, d], 0.1)


@pytest.mark.parametrize("alpha", [0.1, 0.05, 0.2, 0.3])
def test_too_few_scores_give_an_infinite_threshold_with_a_warning(alpha):
    smallest = minimum_calibration_size(alpha)
    assert smallest == math.ceil((1 - alpha) / alpha - 1e-9)
    with pytest.warns(UserWarning, match=rf"at least {smallest} calibration examples"):
        below = conformal_quantile(_scores(smallest - 1), alpha)
    assert math.isinf(float(below)) and float(below) > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        at = conformal_quantile(_scores(smallest, seed=6), alpha)
    assert float(at) == float(_scores(smallest, seed=6).max())  # k = n: the largest score
    # crepes agrees: unbounded intervals below the boundary, finite above it (at it, where alpha (n + 1) = 1,
    # its floating-point floor of 0.999... can give an unbounded one)
    for n, bounded in ((smallest - 1, False), (smallest + 1, True)):
        regressor = crepes.ConformalRegressor()
        regressor.fit(_scores(n, seed=6).numpy())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            interval = regressor.predict_int(np.zeros(1), confidence=1 - alpha)
        assert bool(np.isfinite(interval).all()) == bounded


def test_infinite_threshold_of_columns():
    with pytest.warns(UserWarning):
        thresholds = conformal_quantile(_scores(3, columns=2), 0.1)
    assert thresholds.shape == (2,) and bool(torch.isinf(thresholds).all())


def test_keeps_dtype():
    assert conformal_quantile(_scores(20).float(), 0.1).dtype == torch.float32


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5])
def test_rejects_alpha_outside_the_open_unit_interval(alpha):
    with pytest.raises(ValueError, match=r"alpha: expected a number in \(0, 1\)"):
        conformal_quantile(_scores(20), alpha)
    with pytest.raises(ValueError, match="alpha"):
        minimum_calibration_size(alpha)


@pytest.mark.parametrize("alpha", ["0.1", None, True])
def test_rejects_alpha_that_is_not_a_number(alpha):
    with pytest.raises(TypeError, match="alpha: expected a number"):
        conformal_quantile(_scores(20), alpha)


@pytest.mark.parametrize(
    ("scores", "error", "match"),
    [
        ([0.1, 0.2], TypeError, "scores: expected a torch.Tensor"),
        (torch.arange(5), TypeError, "scores: expected a floating-point tensor"),
        (torch.zeros(2, 3, 4), ValueError, r"scores: expected a 1-D or 2-D tensor"),
        (torch.zeros(0), ValueError, "scores: expected at least one calibration score"),
        (torch.tensor([0.1, float("nan"), 0.3]), ValueError, "scores: expected finite values"),
    ],
)
def test_rejects_malformed_scores(scores, error, match):
    with pytest.raises(error, match=match):
        conformal_quantile(scores, 0.1)
