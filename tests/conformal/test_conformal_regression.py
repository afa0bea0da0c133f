"""SplitConformalRegressor: intervals against crepes (absolute and normalised residuals) and MAPIE (CQR) on
the same data; the coverage guarantee over random splits; input errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import uqkit
from uqkit.conformal import PredictionIntervals, QuantilePrediction, SplitConformalRegressor
from uqkit.metrics import empirical_coverage

ALPHA = 0.1


def _problem(size: int, seed: int, outputs: int = 1):
    """Heteroscedastic data ``y = 2 sin(x) + (0.2 + |x|) e`` and a deliberately miscalibrated model: a biased,
    damped mean, a constant predictive variance, and quantile bands that are too narrow and off-centre.

    Returns ``(gaussian, quantiles, targets)``: a ``GaussianPrediction`` ``[size, outputs]`` from 3 samples,
    a ``QuantilePrediction`` ``[size, outputs]`` and ``targets`` ``[size, outputs]``.
    """
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(size, outputs, generator=generator, dtype=torch.float64) * 4 - 2
    noise = torch.randn(size, outputs, generator=generator, dtype=torch.float64)
    targets = 2 * torch.sin(x) + (0.2 + x.abs()) * noise
    center = 1.5 * torch.sin(x) + 0.3
    spread = torch.randn(3, size, outputs, generator=generator, dtype=torch.float64) * 0.1
    gaussian = uqkit.GaussianPrediction(
        center + spread, torch.full((3, size, outputs), 0.25, dtype=torch.float64)
    )
    quantiles = QuantilePrediction(center - 0.5 * (0.3 + 0.5 * x.abs()), center + 0.8 * (0.3 + 0.5 * x.abs()))
    return gaussian, quantiles, targets


# -- the oracles --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("score", ["absolute", "normalized"])
def test_residual_intervals_match_crepes(score):
    crepes = pytest.importorskip("crepes")
    gaussian, _, targets = _problem(400, seed=0)
    n = 57  # alpha (n + 1) = 5.8, away from crepes' floating-point floor
    mean, sigma, y = gaussian.mean[:, 0], gaussian.stddev[:, 0], targets[:, 0]
    lower, upper = SplitConformalRegressor(score, ALPHA).fit(gaussian[:n], targets[:n]).predict(gaussian[n:])
    regressor = crepes.ConformalRegressor()
    sigmas = (lambda part: part.numpy()) if score == "normalized" else (lambda part: None)
    regressor.fit((y[:n] - mean[:n]).numpy(), sigmas=sigmas(sigma[:n]))
    expected = regressor.predict_int(mean[n:].numpy(), sigmas=sigmas(sigma[n:]), confidence=1 - ALPHA)
    np.testing.assert_allclose(lower[:, 0].numpy(), expected[:, 0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(upper[:, 0].numpy(), expected[:, 1], rtol=0, atol=1e-12)


def test_absolute_takes_point_predictions():
    gaussian, _, targets = _problem(300, seed=1)
    from_gaussian = SplitConformalRegressor("absolute", ALPHA).fit(gaussian[:100], targets[:100])
    mean = gaussian.mean[:, 0]
    from_points = SplitConformalRegressor("absolute", ALPHA).fit(mean[:100], targets[:100, 0])
    assert torch.equal(from_gaussian.threshold_, from_points.threshold_)
    intervals = from_points.predict(mean[100:])
    assert intervals.lower.shape == (200,)
    assert torch.equal(intervals.lower, from_gaussian.predict(gaussian[100:]).lower[:, 0])


def _column(index: int, level: float):
    """A fitted linear quantile regressor whose prediction is column ``index`` of its input."""
    from sklearn.linear_model import QuantileRegressor

    regressor = QuantileRegressor(quantile=level, alpha=0.0)
    regressor.coef_, regressor.intercept_, regressor.n_features_in_ = np.eye(3)[index], 0.0, 3
    return regressor


def test_cqr_matches_mapie():
    """MAPIE's conformalized quantile regressor on prefit lower / upper / median models that read our bands;
    ``symmetric_correction=True`` is Romano et al.'s one score ``max(lo - y, y - hi)``."""
    regression = pytest.importorskip("mapie.regression")
    _, quantiles, targets = _problem(400, seed=2)
    n = 57
    lower, upper = quantiles.lower[:, 0], quantiles.upper[:, 0]
    features = torch.stack([lower, upper, (lower + upper) / 2], dim=1).numpy()
    mapie = regression.ConformalizedQuantileRegressor(
        [_column(0, ALPHA / 2), _column(1, 1 - ALPHA / 2), _column(2, 0.5)],
        confidence_level=1 - ALPHA,
        prefit=True,
    )
    mapie.conformalize(features[:n], targets[:n, 0].numpy())
    _, expected = mapie.predict_interval(features[n:], symmetric_correction=True)
    intervals = SplitConformalRegressor("cqr", ALPHA).fit(quantiles[:n], targets[:n]).predict(quantiles[n:])
    np.testing.assert_allclose(intervals.lower[:, 0].numpy(), expected[:, 0, 0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(intervals.upper[:, 0].numpy(), expected[:, 1, 0], rtol=0, atol=1e-12)


# -- behaviour ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("score", ["absolute", "normalized", "cqr"])
def test_each_output_is_its_own_problem(score):
    gaussian, quantiles, targets = _problem(200, seed=3, outputs=3)
    prediction = quantiles if score == "cqr" else gaussian
    joint = SplitConformalRegressor(score, ALPHA).fit(prediction[:80], targets[:80])
    intervals = joint.predict(prediction[80:])
    assert joint.threshold_.shape == (3,) and intervals.lower.shape == (120, 3)
    for d in range(3):
        if score == "cqr":
            part = QuantilePrediction(quantiles.lower[:, d : d + 1], quantiles.upper[:, d : d + 1])
        else:
            part = uqkit.GaussianPrediction(
                gaussian.sample_mean[..., d : d + 1], gaussian.sample_variance[..., d : d + 1]
            )
        single = SplitConformalRegressor(score, ALPHA).fit(part[:80], targets[:80, d])
        assert single.threshold_[0] == joint.threshold_[d]
        assert torch.equal(single.predict(part[80:]).upper[:, 0], intervals.upper[:, d])


def test_cqr_shrinks_bands_that_are_too_wide():
    _, quantiles, targets = _problem(300, seed=4)
    wide = QuantilePrediction(quantiles.lower - 5, quantiles.upper + 5)
    calibrator = SplitConformalRegressor("cqr", ALPHA).fit(wide[:100], targets[:100])
    assert float(calibrator.threshold_) < 0
    intervals = calibrator.predict(wide[100:])
    assert bool((intervals.width < (wide.upper - wide.lower)[100:]).all())


@pytest.mark.parametrize("score", ["absolute", "normalized", "cqr"])
def test_too_small_a_calibration_split_gives_unbounded_intervals_with_a_warning(score):
    gaussian, quantiles, targets = _problem(20, seed=5)
    prediction = quantiles if score == "cqr" else gaussian
    calibrator = SplitConformalRegressor(score, 0.05)
    with pytest.warns(UserWarning, match="at least 19 calibration examples"):
        calibrator.fit(prediction[:10], targets[:10])
    lower, upper = calibrator.predict(prediction[10:])
    assert bool((lower == -float("inf")).all() and (upper == float("inf")).all())


def test_intervals_unpack_and_have_a_width():
    intervals = PredictionIntervals(torch.tensor([0.0, -1.0]), torch.tensor([2.0, float("inf")]))
    lower, upper = intervals
    assert torch.equal(lower, intervals.lower) and torch.equal(upper, intervals.upper)
    assert intervals.width.tolist() == [2.0, float("inf")]


# -- the coverage guarantee ---------------------------------------------------------------------------------
POOL, N_CAL, SPLITS = 300, 14, 300  # as in the classification tests: the range is [0.9, 0.9667]


@pytest.mark.parametrize("score", ["absolute", "normalized", "cqr"])
def test_mean_coverage_over_random_splits_is_within_the_guarantee(score, check_mean_coverage, one_thread):
    """Over 300 random calibration/test splits of one fixed problem, 1 - alpha <= mean coverage <=
    1 - alpha + 1/(n + 1), each side with a slack of 4 standard errors (conftest.coverage_standard_error)."""
    gaussian, quantiles, targets = _problem(POOL, seed=6)
    prediction = quantiles if score == "cqr" else gaussian
    generator = torch.Generator().manual_seed(7)
    coverages = []
    for _ in range(SPLITS):
        order = torch.randperm(POOL, generator=generator)
        cal, test = order[:N_CAL], order[N_CAL:]
        calibrator = SplitConformalRegressor(score, ALPHA).fit(prediction[cal], targets[cal])
        coverages.append(empirical_coverage(calibrator.predict(prediction[test]), targets[test]))
    check_mean_coverage(coverages, N_CAL, POOL - N_CAL, ALPHA)


def test_the_miscalibrated_model_needs_the_correction():
    """The Gaussian and quantile intervals the model gives by themselves miss the target coverage, so the
    coverage tests above measure the conformal step, not a model that was right already."""
    gaussian, quantiles, targets = _problem(POOL, seed=6)
    z = 1.6448536269514722  # Phi^{-1}(0.95)
    gaussian_interval = (gaussian.mean - z * gaussian.stddev, gaussian.mean + z * gaussian.stddev)
    assert empirical_coverage(gaussian_interval, targets) < 0.8
    assert empirical_coverage((quantiles.lower, quantiles.upper), targets) < 0.6


# -- input errors -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"score": "residual"}, ValueError, "score: expected one of 'absolute', 'normalized', 'cqr'"),
        ({"alpha": 1.2}, ValueError, r"alpha: expected a number in \(0, 1\)"),
        ({"alpha": [0.1]}, TypeError, "alpha: expected a number"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        SplitConformalRegressor(**kwargs)


def test_fit_and_predict_reject_malformed_inputs():
    gaussian, quantiles, targets = _problem(40, seed=8, outputs=2)
    with pytest.raises(RuntimeError, match="call fit"):
        SplitConformalRegressor().predict(gaussian)
    cases = [
        (
            "absolute",
            quantiles,
            targets,
            TypeError,
            "score='absolute' expects a uqkit.GaussianPrediction or a",
        ),
        (
            "normalized",
            gaussian.mean,
            targets,
            TypeError,
            r"score='normalized' expects a uqkit\.GaussianPrediction",
        ),
        ("cqr", gaussian, targets, TypeError, r"score='cqr' expects a uqkit\.conformal\.QuantilePrediction"),
        (
            "absolute",
            gaussian,
            targets[:, 0],
            ValueError,
            r"targets: expected the prediction's shape \(40, 2\)",
        ),
        ("absolute", gaussian, targets[:-1], ValueError, "targets: expected the prediction's shape"),
        ("absolute", gaussian, targets.long(), TypeError, "targets: expected a floating-point tensor"),
        (
            "absolute",
            gaussian,
            targets.clone().fill_(float("nan")),
            ValueError,
            "targets: expected finite values",
        ),
        ("absolute", gaussian.mean[:0], targets[:0], ValueError, "expected at least one calibration example"),
        ("absolute", gaussian.mean.int(), targets, TypeError, "prediction: expected a floating-point tensor"),
    ]
    for score, prediction, y, error, match in cases:
        with pytest.raises(error, match=match):
            SplitConformalRegressor(score, ALPHA).fit(prediction, y)
    calibrator = SplitConformalRegressor("normalized", ALPHA).fit(gaussian, targets)
    with pytest.raises(
        ValueError, match=r"prediction: expected the output shape of the calibration split, \(2,\)"
    ):
        calibrator.predict(
            uqkit.GaussianPrediction(
                torch.zeros(5, 3, dtype=torch.float64), torch.ones(5, 3, dtype=torch.float64)
            )
        )
    with pytest.raises(TypeError, match="score='normalized' expects"):
        calibrator.predict(quantiles)


@pytest.mark.parametrize(
    ("lower", "upper", "error", "match"),
    [
        (torch.zeros(4), torch.ones(5), ValueError, "lower and upper: expected the same shape"),
        (torch.zeros(4), [1.0] * 4, TypeError, "upper: expected a torch.Tensor"),
        (torch.zeros(4, 2, 1), torch.ones(4, 2, 1), ValueError, "lower: expected a 1-D or 2-D tensor"),
        (torch.tensor([0.0, float("inf")]), torch.ones(2), ValueError, "lower: expected finite values"),
        (
            torch.zeros(3, dtype=torch.long),
            torch.ones(3),
            TypeError,
            "lower: expected a floating-point tensor",
        ),
    ],
)
def test_quantile_prediction_rejects_malformed_bands(lower, upper, error, match):
    with pytest.raises(error, match=match):
        QuantilePrediction(lower, upper)
