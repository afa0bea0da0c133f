"""The 1-D gap regression toy of uqkit/data/toy.py (no scikit-learn needed, unlike two moons)."""

from __future__ import annotations

import math

import pytest
import torch

from uqkit.data import (
    GAP_REGRESSION_GAP,
    GAP_REGRESSION_INTERVALS,
    RegressionData,
    gap_regression,
    gap_regression_function,
)


def test_inputs_cover_both_intervals_uniformly_and_never_the_gap():
    data = gap_regression(num_samples=20_000, noise=0.1, seed=3)
    assert isinstance(data, RegressionData)
    assert data.inputs.shape == data.labels.shape == (20_000, 1)
    assert data.inputs.dtype == data.labels.dtype == torch.float32
    x = data.inputs.squeeze(1).double()
    (a_lo, a_hi), (b_lo, b_hi) = GAP_REGRESSION_INTERVALS
    left, right = (x >= a_lo) & (x <= a_hi), (x >= b_lo) & (x <= b_hi)
    assert bool((left | right).all())
    assert not bool(((x > GAP_REGRESSION_GAP[0]) & (x < GAP_REGRESSION_GAP[1])).any())
    n = x.numel()
    # each interval with probability 1/2: within 5 binomial standard errors sqrt(n / 4)
    assert abs(int(left.sum()) - n / 2) < 5 * math.sqrt(n / 4)
    # uniform within an interval of width 3: mean at its centre (se = sqrt(3^2 / 12 / m)), quartiles
    for mask, lo, hi in ((left, a_lo, a_hi), (right, b_lo, b_hi)):
        part = x[mask]
        assert abs(float(part.mean()) - (lo + hi) / 2) < 5 * math.sqrt(9 / 12 / part.numel())
        frac_low_quarter = float((part < lo + 0.75).double().mean())
        assert abs(frac_low_quarter - 0.25) < 5 * math.sqrt(0.25 * 0.75 / part.numel())


def test_targets_are_the_function_plus_gaussian_noise():
    clean = gap_regression(num_samples=500, noise=0.0, seed=1)
    torch.testing.assert_close(clean.labels, gap_regression_function(clean.inputs), rtol=0, atol=1e-6)
    x = torch.tensor([0.0, 1.0, -2.5], dtype=torch.float64)
    torch.testing.assert_close(gap_regression_function(x), torch.sin(x) + 0.3 * x)
    noisy = gap_regression(num_samples=50_000, noise=0.2, seed=1)
    residual = (noisy.labels - gap_regression_function(noisy.inputs)).double()
    n = residual.numel()
    assert abs(float(residual.mean())) < 5 * 0.2 / math.sqrt(n)
    assert abs(float(residual.std()) - 0.2) < 5 * 0.2 / math.sqrt(2 * n)


def test_seeded_and_validated():
    a, b = gap_regression(seed=4), gap_regression(seed=4)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.inputs, gap_regression(seed=5).inputs)
    assert len(gap_regression()) == 160
    with pytest.raises(ValueError, match="num_samples"):
        gap_regression(num_samples=1)
    with pytest.raises(ValueError, match="noise"):
        gap_regression(noise=-0.1)
    with pytest.raises(TypeError, match="inputs"):
        gap_regression_function([0.0])
