"""Prediction and GaussianPrediction against slow float64 references written here."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from uqkit import GaussianPrediction, Prediction


def _reference(logits: np.ndarray):
    """Slow loop: mean of softmaxes, entropy of the mean, mean of entropies (float64)."""
    samples, batch, classes = logits.shape
    probs = np.zeros((batch, classes))
    aleatoric = np.zeros(batch)
    for s in range(samples):
        for b in range(batch):
            z = logits[s, b] - logits[s, b].max()
            p = np.exp(z) / np.exp(z).sum()
            probs[b] += p / samples
            aleatoric[b] += -sum(q * math.log(q) for q in p if q > 0) / samples
    total = np.array([-sum(q * math.log(q) for q in row if q > 0) for row in probs])
    return probs, total, aleatoric


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_properties_match_slow_reference(dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(7, 11, 5, generator=generator)).to(dtype)
    prediction = Prediction(logits)
    probs, total, aleatoric = _reference(logits.double().numpy())
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(prediction.probs.double().numpy(), probs, atol=tol)
    np.testing.assert_allclose(prediction.total_entropy.double().numpy(), total, atol=10 * tol)
    np.testing.assert_allclose(prediction.expected_entropy.double().numpy(), aleatoric, atol=10 * tol)
    np.testing.assert_allclose(
        prediction.mutual_information.double().numpy(), total - aleatoric, atol=20 * tol
    )
    assert torch.equal(prediction.predicted_class, torch.from_numpy(probs.argmax(axis=1)))
    np.testing.assert_allclose(prediction.confidence.double().numpy(), probs.max(axis=1), atol=tol)
    assert prediction.num_samples == 7 and len(prediction) == 11 and prediction.num_classes == 5
    assert prediction.probs.dtype == dtype


def test_epistemic_is_nonnegative_and_zero_without_disagreement():
    logits = torch.randn(1, 50, 4, dtype=torch.float64)
    single = Prediction(logits[0])  # [B, C] means S = 1
    assert single.num_samples == 1
    assert torch.equal(single.mutual_information, torch.zeros(50, dtype=torch.float64))
    repeated = Prediction(logits.expand(6, 50, 4))
    assert float(repeated.mutual_information.abs().max()) < 1e-12
    disagreeing = Prediction(20 * torch.randn(6, 50, 4))
    assert bool((disagreeing.mutual_information >= 0).all())
    assert float(disagreeing.mutual_information.mean()) > 0.3  # confident members that disagree


def test_extreme_logits_stay_finite():
    logits = torch.tensor([[[1e4, -1e4, 0.0]], [[-1e4, 1e4, 0.0]]])
    prediction = Prediction(logits)
    assert torch.allclose(prediction.probs, torch.tensor([[0.5, 0.5, 0.0]]))
    assert (
        torch.isfinite(prediction.total_entropy).all() and torch.isfinite(prediction.expected_entropy).all()
    )
    assert prediction.total_entropy.item() == pytest.approx(math.log(2), abs=1e-6)
    assert prediction.expected_entropy.item() == pytest.approx(0.0, abs=1e-6)


def test_indexing_and_concatenation_keep_samples():
    prediction = Prediction(torch.randn(3, 10, 4))
    part = prediction[2:5]
    assert torch.equal(part.logits, prediction.logits[:, 2:5])
    assert torch.equal(prediction[4].logits, prediction.logits[:, 4:5])
    joined = Prediction.cat([prediction[:4], prediction[4:]])
    assert torch.equal(joined.logits, prediction.logits)
    assert torch.equal(prediction.uncertainty("epistemic"), prediction.mutual_information)


@pytest.mark.parametrize(
    ("logits", "error", "message"),
    [
        ([[0.1, 0.9]], TypeError, "logits: expected a torch.Tensor, got list"),
        (torch.ones(2, 3, dtype=torch.long), TypeError, "logits: expected a floating-point tensor"),
        (torch.ones(3), ValueError, r"logits: expected a 2-D or 3-D tensor .*got shape \(3,\)"),
        (torch.tensor([[0.0, float("nan")]]), ValueError, "logits: expected finite values, got 1 non-finite"),
        (torch.ones(0, 2, 3), ValueError, "at least one sample and one class"),
    ],
)
def test_bad_logits(logits, error, message):
    with pytest.raises(error, match=message):
        Prediction(logits)


def test_bad_uncertainty_kind_and_cat():
    prediction = Prediction(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="kind: expected 'total', 'aleatoric' or 'epistemic', got 'mutual'"):
        prediction.uncertainty("mutual")
    with pytest.raises(ValueError, match="expected the same"):
        Prediction.cat([prediction, Prediction(torch.randn(3, 3, 4))])
    with pytest.raises(ValueError, match="non-empty"):
        Prediction.cat([])


def test_gaussian_mixture_moments_match_slow_reference_and_sampling():
    generator = torch.Generator().manual_seed(0)
    mean = torch.randn(5, 4, 2, generator=generator, dtype=torch.float64)
    variance = torch.rand(5, 4, 2, generator=generator, dtype=torch.float64) + 0.1
    prediction = GaussianPrediction(mean, variance)
    m, v = mean.numpy(), variance.numpy()
    mixture_mean = m.mean(axis=0)
    second_moment = (v + m**2).mean(axis=0)
    np.testing.assert_allclose(prediction.mean.numpy(), mixture_mean, atol=1e-12)
    np.testing.assert_allclose(prediction.variance.numpy(), second_moment - mixture_mean**2, atol=1e-12)
    np.testing.assert_allclose(prediction.aleatoric_variance.numpy(), v.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(prediction.epistemic_variance.numpy(), m.var(axis=0), atol=1e-12)
    # Sampling the mixture: pick a component uniformly, then draw from it.
    n = 200_000
    component = torch.randint(0, 5, (n,), generator=generator)
    draws = mean[component] + variance[component].sqrt() * torch.randn(n, 4, 2, generator=generator).double()
    standard_error = (prediction.variance / n).sqrt()
    assert bool(((draws.mean(0) - prediction.mean).abs() < 5 * standard_error).all())
    assert torch.allclose(draws.var(0), prediction.variance, rtol=0.03)


def test_gaussian_single_sample_and_bad_input():
    single = GaussianPrediction(torch.zeros(3, 1), torch.ones(3, 1))
    assert single.num_samples == 1 and torch.equal(single.epistemic_variance, torch.zeros(3, 1))
    assert torch.equal(single.stddev, torch.ones(3, 1))
    with pytest.raises(ValueError, match="variance: expected strictly positive values, got minimum -1"):
        GaussianPrediction(torch.zeros(3, 1), -torch.ones(3, 1))
    with pytest.raises(ValueError, match=r"expected the same shape, got \(3, 1\) and \(3, 2\)"):
        GaussianPrediction(torch.zeros(3, 1), torch.ones(3, 2))


@pytest.mark.parametrize(
    ("old", "new", "kind"),
    [
        ("total", "total_entropy", "total"),
        ("aleatoric", "expected_entropy", "aleatoric"),
        ("epistemic", "mutual_information", "epistemic"),
    ],
)
def test_entropy_parts_old_names_warn_and_equal_the_new(old, new, kind):
    prediction = Prediction(3 * torch.randn(5, 4, 3, generator=torch.Generator().manual_seed(1)))
    with pytest.warns(DeprecationWarning, match=rf"Prediction\.{old} is deprecated .*use Prediction\.{new}"):
        value = getattr(prediction, old)
    assert torch.equal(value, getattr(prediction, new))
    assert torch.equal(prediction.uncertainty(kind), getattr(prediction, new))


@pytest.mark.parametrize(
    ("old", "new", "kind"),
    [
        ("total", "variance", "total"),
        ("aleatoric", "aleatoric_variance", "aleatoric"),
        ("epistemic", "epistemic_variance", "epistemic"),
    ],
)
def test_variance_parts_old_names_warn_and_equal_the_new(old, new, kind):
    generator = torch.Generator().manual_seed(2)
    prediction = GaussianPrediction(torch.randn(5, 4, 2, generator=generator), torch.rand(5, 4, 2) + 0.1)
    with pytest.warns(
        DeprecationWarning, match=rf"GaussianPrediction\.{old} is deprecated .*use GaussianPrediction\.{new}"
    ):
        value = getattr(prediction, old)
    assert torch.equal(value, getattr(prediction, new))
    assert torch.equal(prediction.uncertainty(kind), getattr(prediction, new))
    with pytest.raises(ValueError, match="kind: expected 'total', 'aleatoric' or 'epistemic', got 'entropy'"):
        prediction.uncertainty("entropy")


def test_the_new_names_do_not_warn():
    prediction = Prediction(torch.randn(2, 3, 4))
    gaussian = GaussianPrediction(torch.randn(2, 3, 1), torch.ones(2, 3, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        values = [prediction.total_entropy, prediction.expected_entropy, prediction.mutual_information]
        values += [gaussian.variance, gaussian.aleatoric_variance, gaussian.epistemic_variance]
        values += [
            p.uncertainty(kind)
            for p in (prediction, gaussian)
            for kind in ("total", "aleatoric", "epistemic")
        ]
    assert all(bool(torch.isfinite(value).all()) for value in values)
