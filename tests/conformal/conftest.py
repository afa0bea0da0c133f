"""Shared by the conformal tests: the statistical check of the coverage guarantee over random splits."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import pytest

# Standard errors of slack on each side of the guaranteed range. One-sided, a correct implementation fails
# with probability Phi(-4) = 3e-5 per check. A quantile one rank off (no finite-sample correction, or one rank
# too high) moves the mean coverage by 1 / (n + 1); at the sizes of the tests (n = 14, alpha = 0.1, 300
# splits) that lands 0.033 outside the guaranteed range [0.9, 0.967], 9 standard errors (0.0037 each), of
# which the slack takes 4.
NUM_STANDARD_ERRORS = 4.0


def coverage_standard_error(n: int, m: int, alpha: float, splits: int) -> float:
    """Standard error of the mean test coverage over ``splits`` independent calibration/test splits.

    For one split with ``n`` calibration and ``m`` test points and continuous scores, the coverage is
    ``F(q) + e``: ``F(q)``, the probability mass below the threshold, is the ``k``-th order statistic of ``n``
    uniforms, ``Beta(k, n + 1 - k)``, with ``k = ceil((n + 1)(1 - alpha))``, of mean ``c = k / (n + 1)`` and
    variance ``c (1 - c) / (n + 2)``; ``e`` is the binomial noise of ``m`` test points, of variance about
    ``c (1 - c) / m``. The splits are independent, so the mean over them has variance ``var / splits``.
    """
    k = math.ceil((n + 1) * (1 - alpha) - 1e-9)  # computed here, independently of the code under test
    c = k / (n + 1)
    variance = c * (1 - c) / (n + 2) + c * (1 - c) / m
    return math.sqrt(variance / splits)


def check_mean_coverage(coverages: Sequence[float], n: int, m: int, alpha: float, upper: bool = True) -> None:
    """Assert ``1 - alpha <= mean coverage <= 1 - alpha + 1 / (n + 1)``, each side with its sampling slack.

    ``upper=False`` checks the lower bound only (conservative sets, e.g. the non-randomised APS).
    """
    mean = sum(coverages) / len(coverages)
    slack = NUM_STANDARD_ERRORS * coverage_standard_error(n, m, alpha, len(coverages))
    assert mean >= 1 - alpha - slack, f"mean coverage {mean:.4f} below 1 - alpha = {1 - alpha} - {slack:.4f}"
    if upper:
        bound = 1 - alpha + 1 / (n + 1)
        assert mean <= bound + slack, f"mean coverage {mean:.4f} above 1 - alpha + 1/(n+1) = {bound:.4f}"


@pytest.fixture(name="check_mean_coverage")
def check_mean_coverage_fixture() -> Callable[..., None]:
    """:func:`check_mean_coverage`, for test modules (a ``conftest`` cannot be imported by name)."""
    return check_mean_coverage


@pytest.fixture(name="coverage_standard_error")
def coverage_standard_error_fixture() -> Callable[..., float]:
    return coverage_standard_error
