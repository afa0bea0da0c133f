"""Tests for uqkit.calibration.temperature: oracles are known temperatures, scipy's scalar minimiser and
the Fisher information of the temperature MLE."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar

from uqkit.calibration import TemperatureScaler


def _synthetic(seed: int, n: int = 20000, num_classes: int = 10, scale: float = 2.0):
    """Base logits z ~ N(0, scale^2) and labels drawn from softmax(z): z is calibrated by construction."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, num_classes, generator=gen, dtype=torch.float64) * scale
    labels = torch.multinomial(torch.softmax(z, dim=-1), 1, generator=gen).squeeze(1)
    return z, labels


def _nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    return float(torch.nn.functional.cross_entropy(logits.double() / temperature, labels))


def _log_temperature_sd(z: torch.Tensor) -> float:
    """Asymptotic sd of the MLE of log T at T = 1 from the Fisher information of beta = 1 / T.

    d^2/d beta^2 of the summed NLL of softmax(beta z) is sum_i Var_{softmax(beta z_i)}[z_i]; at beta = 1,
    sd(log T) = sd(beta) = 1 / sqrt(I).
    """
    p = torch.softmax(z, dim=-1)
    variance = (p * z**2).sum(-1) - (p * z).sum(-1) ** 2
    return 1.0 / math.sqrt(float(variance.sum()))


@pytest.mark.parametrize("true_temperature", [0.5, 2.0, 3.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_recovers_known_temperature(true_temperature, seed):
    z, labels = _synthetic(seed)
    # The 3% tolerance is over 4 standard deviations of the MLE of log T: a correct fit passes for any seed.
    assert 4 * _log_temperature_sd(z) < 0.03
    scaler = TemperatureScaler().fit((z * true_temperature).float(), labels)
    assert scaler.temperature == pytest.approx(true_temperature, rel=0.03)


def test_fit_matches_scipy_minimiser_of_the_nll():
    z, labels = _synthetic(seed=3, n=4000, num_classes=5, scale=3.0)
    logits = z * 1.7 + 0.3 * torch.randn(z.shape, generator=torch.Generator().manual_seed(9), dtype=z.dtype)
    scaler = TemperatureScaler().fit(logits, labels)
    res = minimize_scalar(
        lambda log_t: _nll(logits, labels, math.exp(log_t)),
        bracket=(-2.0, 2.0),
        method="brent",
        options={"xtol": 1e-12},
    )
    assert math.log(scaler.temperature) == pytest.approx(res.x, abs=1e-5)


def test_fit_returns_self_and_sets_the_parameter():
    z, labels = _synthetic(seed=4, n=500)
    scaler = TemperatureScaler()
    assert scaler.fit(z * 2.0, labels) is scaler
    assert math.exp(float(scaler.log_temperature.detach())) == pytest.approx(scaler.temperature)
    assert scaler.temperature != 1.0


@pytest.mark.parametrize("distortion", [0.3, 1.0, 4.0])
def test_scaled_nll_is_at_most_unscaled_nll(distortion):
    z, labels = _synthetic(seed=5, n=3000)
    logits = z * distortion
    scaler = TemperatureScaler().fit(logits, labels)
    scaled = _nll(scaler(logits).detach(), labels)
    unscaled = _nll(logits, labels)
    assert scaled <= unscaled + 1e-12
    if distortion != 1.0:  # a miscalibrated model must gain clearly
        assert scaled < unscaled - 1e-3


def test_calibrated_logits_are_a_fixed_point():
    z, labels = _synthetic(seed=6)
    scaler = TemperatureScaler().fit(z, labels)
    assert abs(math.log(scaler.temperature)) < 4 * _log_temperature_sd(z)


def test_scaling_keeps_argmax_shape_and_dtype():
    z, labels = _synthetic(seed=7, n=1000)
    scaler = TemperatureScaler().fit(z * 3.0, labels)
    samples = torch.randn(4, 50, 10, generator=torch.Generator().manual_seed(0))
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        logits = samples.to(dtype)
        out = scaler(logits)
        assert out.shape == logits.shape and out.dtype == dtype
        if dtype != torch.bfloat16:  # bfloat16 rounding of the quotient can create ties
            assert torch.equal(out.argmax(-1), logits.argmax(-1))
    expected = samples.double() / scaler.temperature
    torch.testing.assert_close(scaler(samples.double()), expected)


def test_before_fit_the_scaler_is_the_identity():
    scaler = TemperatureScaler()
    logits = torch.randn(8, 3)
    assert scaler.temperature == 1.0
    torch.testing.assert_close(scaler(logits), logits)


def test_fit_is_deterministic_and_does_not_depend_on_previous_state():
    z, labels = _synthetic(seed=8, n=2000)
    first = TemperatureScaler().fit(z * 2.5, labels)
    reused = TemperatureScaler().fit(z * 0.4, labels).fit(z * 2.5, labels)
    assert first.temperature == reused.temperature


def test_fit_detaches_logits_and_forward_is_differentiable():
    z, labels = _synthetic(seed=9, n=500)
    logits = (z * 2.0).float().requires_grad_(True)
    scaler = TemperatureScaler().fit(logits, labels)
    assert logits.grad is None
    scaler(logits).sum().backward()
    assert logits.grad is not None and scaler.log_temperature.grad is not None
    # d/d log T of sum(z / T) = -sum(z) / T
    expected = -float(logits.detach().double().sum()) / scaler.temperature
    assert float(scaler.log_temperature.grad) == pytest.approx(expected, rel=1e-4, abs=1e-4)


def test_state_dict_round_trip():
    z, labels = _synthetic(seed=10, n=1000)
    fitted = TemperatureScaler().fit(z * 2.0, labels)
    restored = TemperatureScaler()
    restored.load_state_dict(fitted.state_dict())
    assert restored.temperature == fitted.temperature
    torch.testing.assert_close(restored(z), fitted(z))
    assert list(fitted.state_dict()) == ["log_temperature"]


def test_refuses_probabilities_in_fit_and_forward():
    z, labels = _synthetic(seed=11, n=200)
    probs = torch.softmax(z, dim=-1)
    scaler = TemperatureScaler()
    with pytest.raises(ValueError, match="look like probabilities"):
        scaler.fit(probs, labels)
    with pytest.raises(ValueError, match="pass the pre-softmax logits"):
        scaler(probs.float().unsqueeze(0))
    # logits that happen to lie in [0, 1] but do not sum to 1 are accepted
    in_unit = torch.rand(200, 10, generator=torch.Generator().manual_seed(0))
    TemperatureScaler().fit(in_unit, labels)


def test_overflowing_logits_raise_runtime_error():
    logits = torch.tensor([[1e308, -1e308], [-1e308, 1e308]], dtype=torch.float64)
    labels = torch.tensor([1, 0])
    with pytest.raises(RuntimeError, match="NLL at T = 1 is"):
        TemperatureScaler().fit(logits, labels)


@pytest.mark.parametrize(
    ("logits", "labels", "error", "match"),
    [
        (np.zeros((4, 3)), torch.zeros(4, dtype=torch.long), TypeError, "logits: expected a torch.Tensor"),
        (torch.zeros(4, 3, dtype=torch.long), torch.zeros(4, dtype=torch.long), TypeError, "floating-point"),
        (
            torch.zeros(4),
            torch.zeros(4, dtype=torch.long),
            ValueError,
            "logits: expected a 2-D or 3-D tensor",
        ),
        (
            torch.zeros(2, 4, 3, 1),
            torch.zeros(4, dtype=torch.long),
            ValueError,
            "expected a 2-D or 3-D tensor",
        ),
        (torch.zeros(2, 4, 3), torch.zeros(2, dtype=torch.long), ValueError, "labels: expected 4 labels"),
        (torch.zeros(0, 4, 3), torch.zeros(4, dtype=torch.long), ValueError, "at least one example"),
        (torch.zeros(4, 1), torch.zeros(4, dtype=torch.long), ValueError, "at least 2 classes"),
        (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), ValueError, "at least one example"),
        (
            torch.tensor([[0.0, float("nan")], [1.0, 2.0]]),
            torch.zeros(2, dtype=torch.long),
            ValueError,
            "logits: expected finite values",
        ),
        (torch.zeros(4, 3), torch.zeros(4), TypeError, "labels: expected integer class indices"),
        (torch.zeros(4, 3), torch.zeros(3, dtype=torch.long), ValueError, "labels: expected 4 labels"),
        (
            torch.zeros(4, 3),
            torch.tensor([0, 1, 2, 3]),
            ValueError,
            r"labels: expected class indices in \[0, 2\]",
        ),
        (torch.zeros(4, 3), torch.zeros(4, 1, dtype=torch.long), ValueError, "labels: expected a 1-D"),
    ],
)
def test_fit_rejects_bad_inputs(logits, labels, error, match):
    with pytest.raises(error, match=match):
        TemperatureScaler().fit(logits, labels)


@pytest.mark.parametrize(("max_iter", "error"), [(0, ValueError), (2.5, TypeError), (True, TypeError)])
def test_fit_rejects_bad_max_iter(max_iter, error):
    with pytest.raises(error, match="max_iter"):
        TemperatureScaler().fit(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), max_iter=max_iter)


@pytest.mark.parametrize(
    ("logits", "error", "match"),
    [
        ([1.0, 2.0], TypeError, "logits: expected a torch.Tensor"),
        (torch.zeros(3, dtype=torch.int32), TypeError, "floating-point"),
        (torch.tensor(1.0), ValueError, r"logits: expected a tensor \[..., classes\]"),
        (torch.zeros(5, 1), ValueError, "at least 2 classes"),
        (torch.tensor([[0.0, float("inf")]]), ValueError, "finite"),
    ],
)
def test_forward_rejects_bad_inputs(logits, error, match):
    with pytest.raises(error, match=match):
        TemperatureScaler()(logits)


def _averaged_nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    """NLL of the averaged predictive (1/S) sum_s softmax(z_s / T), computed directly in float64."""
    probs = torch.softmax(logits.double() / temperature, dim=-1).mean(0)
    return float(-probs[torch.arange(len(labels)), labels].log().mean())


def _overconfident_samples(seed: int, samples: int = 8, n: int = 3000, num_classes: int = 5):
    """[S, B, C] logits of an over-confident stochastic model: each sample is a noisy, sharpened copy of the
    calibrated logits z (labels drawn from softmax(z)), so every sample is over-confident and the samples
    disagree (their average is softer than each of them)."""
    z, labels = _synthetic(seed, n=n, num_classes=num_classes, scale=1.5)
    gen = torch.Generator().manual_seed(seed + 100)
    noise = torch.randn(samples, *z.shape, generator=gen, dtype=z.dtype)
    return 3.0 * (z + 1.5 * noise), labels


def test_fit_on_samples_minimises_the_nll_of_the_averaged_predictive():
    """[S, B, C]: one T divides every sample, fitted on the NLL of the mean over S of softmax(z_s / T).

    Oracle: a grid search (step 1e-3 in log T) of that NLL computed directly. Power: the T fitted on the
    flattened [S * B, C] rows (each sample as its own example) is clearly different and its averaged NLL
    clearly worse, so an implementation that flattens fails.
    """
    logits, labels = _overconfident_samples(seed=4)
    scaler = TemperatureScaler().fit(logits.float(), labels)
    grid = torch.arange(-1.0, 3.0, 1e-3, dtype=torch.float64)
    nlls = torch.tensor([_averaged_nll(logits, labels, math.exp(float(g))) for g in grid])
    best = float(grid[int(nlls.argmin())])
    assert math.log(scaler.temperature) == pytest.approx(best, abs=2e-3)
    assert _averaged_nll(logits, labels, scaler.temperature) <= float(nlls.min()) + 1e-6

    flattened = TemperatureScaler().fit(logits.flatten(0, 1).float(), labels.repeat(logits.shape[0]))
    assert abs(math.log(flattened.temperature) - best) > 0.1
    assert _averaged_nll(logits, labels, flattened.temperature) > float(nlls.min()) + 1e-3
    # one sample ([1, B, C]) is the [B, C] case
    single = TemperatureScaler().fit(logits[0].float(), labels).temperature
    assert TemperatureScaler().fit(logits[:1].float(), labels).temperature == pytest.approx(single, rel=1e-6)


def test_scaling_samples_divides_every_sample():
    logits, labels = _overconfident_samples(seed=5, samples=3, n=200)
    scaler = TemperatureScaler().fit(logits, labels)
    scaled = scaler(logits)
    assert scaled.shape == logits.shape
    for s in range(logits.shape[0]):
        torch.testing.assert_close(scaled[s], logits[s] / scaler.temperature)
