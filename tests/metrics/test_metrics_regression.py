"""rmse, gaussian_nll and interval_coverage against references and the Gaussian's own statistics."""

import math

import pytest
import torch
from scipy.stats import norm

from uqkit.metrics import gaussian_nll, interval_coverage, rmse

DTYPES = [torch.float32, torch.float64]
SHAPES = [(50,), (40, 3)]


def random_regression(seed: int, shape: tuple, dtype: torch.dtype):
    generator = torch.Generator().manual_seed(seed)
    mean = torch.randn(shape, generator=generator, dtype=torch.float64)
    variance = torch.rand(shape, generator=generator, dtype=torch.float64) * 2 + 0.05
    targets = mean + torch.randn(shape, generator=generator, dtype=torch.float64) * 1.3
    return mean.to(dtype), variance.to(dtype), targets.to(dtype)


def rel_for(dtype):
    return 1e-5 if dtype == torch.float32 else 1e-12


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rmse_matches_loop(dtype, shape, seed):
    mean, _, targets = random_regression(seed, shape, dtype)
    squares = [(y - m) ** 2 for m, y in zip(mean.flatten().tolist(), targets.flatten().tolist(), strict=True)]
    assert rmse(mean, targets) == pytest.approx(math.sqrt(sum(squares) / len(squares)), rel=rel_for(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gaussian_nll_matches_normal_log_prob(dtype, shape, seed):
    mean, variance, targets = random_regression(seed, shape, dtype)
    normal = torch.distributions.Normal(mean.double(), variance.double().sqrt())
    expected = float(-normal.log_prob(targets.double()).mean())
    assert gaussian_nll(mean, variance, targets) == pytest.approx(expected, rel=1e-12)


def test_gaussian_nll_closed_form():
    # y = mu, var = 1: 0.5 log(2 pi); y - mu = 2, var = 4: 0.5 log(8 pi) + 4 / 8.
    mean = torch.tensor([0.0, 1.0])
    variance = torch.tensor([1.0, 4.0])
    targets = torch.tensor([0.0, 3.0])
    expected = (0.5 * math.log(2 * math.pi) + 0.5 * math.log(8 * math.pi) + 0.5) / 2
    assert gaussian_nll(mean, variance, targets) == pytest.approx(expected, rel=1e-7)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("level", [0.5, 0.9, 0.95])
def test_interval_coverage_of_samples_from_the_predictive_is_the_level(dtype, level):
    n = 20_000
    generator = torch.Generator().manual_seed(1234)
    mean = torch.randn(n, 2, generator=generator, dtype=torch.float64) * 3
    variance = torch.rand(n, 2, generator=generator, dtype=torch.float64) + 0.1
    targets = mean + variance.sqrt() * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    coverage = interval_coverage(mean.to(dtype), variance.to(dtype), targets.to(dtype), level=level)
    # Each element is inside with probability `level`, independently: binomial std over 2n elements.
    binomial_std = math.sqrt(level * (1 - level) / (2 * n))
    assert abs(coverage - level) < 4 * binomial_std


@pytest.mark.parametrize("level", [0.5, 0.8, 0.95, 0.99])
def test_interval_coverage_endpoints_use_the_normal_quantile(level):
    z = float(norm.ppf((1 + level) / 2))
    sd = torch.tensor([0.5, 0.5, 2.0, 2.0], dtype=torch.float64)
    mean = torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=torch.float64)
    # Two just inside and two just outside the interval (relative margin 1e-9).
    offsets = torch.tensor([1 - 1e-9, -(1 + 1e-9), -(1 - 1e-9), 1 + 1e-9], dtype=torch.float64)
    targets = mean + offsets * z * sd
    assert interval_coverage(mean, sd.square(), targets, level=level) == 0.5


def test_interval_coverage_matches_loop_with_scipy_quantile():
    mean, variance, targets = random_regression(5, (300,), torch.float64)
    z = norm.ppf(0.5 + 0.9 / 2)
    inside = [
        abs(y - m) <= z * math.sqrt(v)
        for m, v, y in zip(mean.tolist(), variance.tolist(), targets.tolist(), strict=True)
    ]
    assert interval_coverage(mean, variance, targets, level=0.9) == sum(inside) / len(inside)


ONE = torch.ones(4)


@pytest.mark.parametrize(
    ("mean", "variance", "targets", "error", "match"),
    [
        (ONE, ONE, torch.ones(5), ValueError, "expected the same shape"),
        (ONE, torch.ones(4, 1), ONE, ValueError, "expected the same shape"),
        (torch.ones(2, 2, 2), torch.ones(2, 2, 2), torch.ones(2, 2, 2), ValueError, "1-D or 2-D"),
        (torch.empty(0), torch.empty(0), torch.empty(0), ValueError, "mean: expected at least one element"),
        (ONE, ONE, torch.tensor([1.0, float("nan"), 0.0, 0.0]), ValueError, "targets: expected finite"),
        (torch.ones(4, dtype=torch.long), ONE, ONE, TypeError, "mean: expected a floating-point"),
        (ONE, ONE, [1.0, 1.0, 1.0, 1.0], TypeError, "targets: expected a torch.Tensor"),
    ],
)
def test_bad_inputs_are_rejected(mean, variance, targets, error, match):
    with pytest.raises(error, match=match):
        gaussian_nll(mean, variance, targets)
    with pytest.raises(error, match=match):
        interval_coverage(mean, variance, targets)


@pytest.mark.parametrize(
    ("mean", "targets", "error", "match"),
    [
        (ONE, torch.ones(5), ValueError, "expected the same shape"),
        (torch.ones(4, 1), ONE, ValueError, "expected the same shape"),
        (torch.ones(2, 2, 2), torch.ones(2, 2, 2), ValueError, "1-D or 2-D"),
        (torch.empty(0, 3), torch.empty(0, 3), ValueError, "mean: expected at least one element"),
        (torch.tensor([float("inf"), 0.0, 0.0, 0.0]), ONE, ValueError, "mean: expected finite"),
        (ONE, torch.ones(4, dtype=torch.int32), TypeError, "targets: expected a floating-point"),
    ],
)
def test_rmse_bad_inputs_are_rejected(mean, targets, error, match):
    with pytest.raises(error, match=match):
        rmse(mean, targets)


@pytest.mark.parametrize(
    "bad_variance", [torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.tensor([1.0, -2.0, 1.0, 1.0])]
)
def test_non_positive_variance_is_rejected(bad_variance):
    with pytest.raises(ValueError, match="variance: expected strictly positive values"):
        gaussian_nll(ONE, bad_variance, ONE)
    with pytest.raises(ValueError, match="variance: expected strictly positive values"):
        interval_coverage(ONE, bad_variance, ONE)


@pytest.mark.parametrize(
    ("level", "error"),
    [(0.0, ValueError), (1.0, ValueError), (1.5, ValueError), (-0.2, ValueError), ("0.9", TypeError)],
)
def test_bad_level_is_rejected(level, error):
    with pytest.raises(error, match="level: expected a number"):
        interval_coverage(ONE, ONE, ONE, level=level)
