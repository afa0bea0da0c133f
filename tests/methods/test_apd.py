"""APD (uqkit/methods/apd.py): WGAN-GP generator of weight vectors, its coordinates, flattening, files.

The statistical test (issue 14, item 6): a generator trained on ``K`` samples of a known Gaussian with a
strongly non-diagonal covariance reproduces its mean, variances and correlations. Its tolerances are the
sampling error (``K`` training samples and ``N`` drawn vectors, ``z = 4`` standard errors) plus a stated
slack for what a short GAN training leaves; the same check rejects a generator collapsed to the mean and one
with the right marginals but independent coordinates.
"""

import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parameters_to_vector

import uqkit
from uqkit import APD, DeepEnsemble
from uqkit.methods.apd import ensemble_from_vectors, parameter_vectors

pytestmark = [
    pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN"),
    pytest.mark.usefixtures("one_thread"),
]

DIM = 6
STDS = torch.tensor([0.5, 1.0, 2.0, 1.0, 0.3, 1.5], dtype=torch.float64)
RHO = 0.8  # AR(1) correlations rho^|i - j|: neighbours 0.8, next 0.64, ...
MEAN = torch.tensor([1.0, -2.0, 0.5, 3.0, 0.0, -1.0], dtype=torch.float64)
NUM_TRAIN = 4000
NUM_DRAWN = 20000
Z = 4.0
SLACK_MEAN = 0.1  # GAN slack on the mean, in standard deviations of the coordinate
SLACK_LOG_VARIANCE = 0.2  # on log(variance ratio), i.e. about +-20% of the variance (+-10% of the std)
SLACK_CORRELATION = 0.1  # on each correlation coefficient


def _covariance() -> torch.Tensor:
    index = torch.arange(DIM)
    correlation = RHO ** (index[:, None] - index[None, :]).abs().double()
    return STDS[:, None] * correlation * STDS[None, :]


def _gaussian_samples(count: int, seed: int) -> torch.Tensor:
    factor = torch.linalg.cholesky(_covariance())
    noise = torch.randn(count, DIM, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return MEAN + noise @ factor.T


def moment_errors(draws: torch.Tensor) -> dict[str, float]:
    """How far the draws' mean, variances and correlations are from the known Gaussian's, each divided by
    its tolerance (so the check passes when every value is <= 1).

    Standard errors for ``n_eff = 1 / (1 / K + 1 / N)`` (the generator learns from ``K`` samples and is
    read through ``N`` draws; the two errors add): mean ``sd_i / sqrt(n_eff)``; ``log`` of a sample variance
    ``sqrt(2 / n_eff)``; a sample correlation ``(1 - rho^2) / sqrt(n_eff)`` (Fisher's large-sample variance).
    """
    n_eff = 1.0 / (1.0 / NUM_TRAIN + 1.0 / draws.shape[0])
    covariance = _covariance()
    sd = covariance.diagonal().sqrt()
    correlation = covariance / (sd[:, None] * sd[None, :])
    mean = draws.mean(dim=0)
    drawn = torch.cov(draws.T)
    drawn_sd = drawn.diagonal().clamp_min(1e-300).sqrt()
    drawn_correlation = drawn / (drawn_sd[:, None] * drawn_sd[None, :])
    mean_error = ((mean - MEAN).abs() / sd) / (Z / math.sqrt(n_eff) + SLACK_MEAN)
    log_ratio = (drawn.diagonal().clamp_min(1e-300) / covariance.diagonal()).log().abs()
    variance_error = log_ratio / (Z * math.sqrt(2 / n_eff) + SLACK_LOG_VARIANCE)
    off = ~torch.eye(DIM, dtype=torch.bool)
    tolerance = Z * (1 - correlation.square()) / math.sqrt(n_eff) + SLACK_CORRELATION
    correlation_error = ((drawn_correlation - correlation).abs() / tolerance)[off]
    return {
        "mean": float(mean_error.max()),
        "variance": float(variance_error.max()),
        "correlation": float(correlation_error.max()),
    }


def _passes(draws: torch.Tensor) -> bool:
    return max(moment_errors(draws).values()) <= 1.0


def _template() -> nn.Module:
    return nn.Linear(DIM - 1, 1).double()  # 5 weights + 1 bias = DIM parameters


@pytest.fixture(scope="module")
def gaussian_apd() -> dict[str, APD]:
    """One APD per coordinate system, trained on the same 4,000 Gaussian samples (lr 2e-3, betas (0.5, 0.9),
    generator weights averaged with decay 0.98). Largest error / tolerance over 3 seeds, float64 and
    float32: 0.74 (standardized, 300 steps), 0.68 (pca, 100 steps; it starts at the samples' Gaussian)."""
    samples = _gaussian_samples(NUM_TRAIN, seed=0)
    fitted = {}
    for coordinates, steps in (("standardized", 300), ("pca", 100)):
        torch.manual_seed(1)
        apd = APD(_template(), coordinates=coordinates, hidden=32)
        apd.fit(
            samples,
            steps=steps,
            learning_rate=2e-3,
            betas=(0.5, 0.9),
            average=0.98,
            batch_size=256,
            generator=torch.Generator().manual_seed(2),
        )
        fitted[coordinates] = apd
    return fitted


@pytest.mark.parametrize("coordinates", ["standardized", "pca"])
def test_generator_reproduces_a_known_gaussian(gaussian_apd, coordinates):
    draws = gaussian_apd[coordinates].sample(NUM_DRAWN, generator=torch.Generator().manual_seed(3))
    errors = moment_errors(draws)
    assert max(errors.values()) <= 1.0, errors


def _untrained(coordinates: str) -> APD:
    """An APD with its coordinates set from the Gaussian samples and the generator at its start, ``c = z``."""
    apd = APD(_template(), coordinates=coordinates, hidden=32)
    apd._coordinates_of(_gaussian_samples(NUM_TRAIN, seed=0))
    apd._build(DIM, DIM, torch.float64, torch.device("cpu"))
    return apd


def test_the_check_rejects_a_collapsed_or_uncorrelated_generator():
    # the true Gaussian's own draws pass: the tolerance is not too tight
    assert _passes(_gaussian_samples(NUM_DRAWN, seed=5))
    # a generator collapsed to the mean (its linear path zeroed: c = 0): the variances fail
    collapsed = _untrained("standardized")
    with torch.no_grad():
        collapsed.generator_network.linear.weight.zero_()
    jitter = 1e-6 * torch.randn(
        NUM_DRAWN, DIM, generator=torch.Generator().manual_seed(6), dtype=torch.float64
    )
    draws = collapsed.sample(NUM_DRAWN) + jitter  # the jitter only makes correlations defined
    assert moment_errors(draws)["variance"] > 1.0
    # independent coordinates with the samples' means and variances (the untrained standardized generator,
    # c = z): means and variances pass, the correlations fail
    errors = moment_errors(
        _untrained("standardized").sample(NUM_DRAWN, generator=torch.Generator().manual_seed(7))
    )
    assert errors["mean"] <= 1.0 and errors["variance"] <= 1.0
    assert errors["correlation"] > 1.0


def test_pca_coordinates_are_whitened_and_decode_to_the_samples():
    torch.manual_seed(0)
    size, rank, count = 20, 3, 50
    mixing = torch.randn(rank, size, dtype=torch.float64)
    samples = torch.randn(count, rank, dtype=torch.float64) @ mixing + torch.randn(size, dtype=torch.float64)
    template = nn.Linear(19, 1).double()  # 20 parameters
    apd = APD(template)
    coordinates = apd._coordinates_of(samples)
    assert coordinates.shape == (count, rank)  # the round-off directions of the rank-3 span are dropped
    torch.testing.assert_close(
        coordinates.T @ coordinates / (count - 1), torch.eye(rank, dtype=torch.float64)
    )
    apd._build(rank, 2, torch.float64, torch.device("cpu"))
    torch.testing.assert_close(apd.decode(coordinates), samples, rtol=0, atol=1e-10)
    apd_capped = APD(template, max_rank=2)
    assert apd_capped._coordinates_of(samples).shape == (count, 2)


def test_vectors_round_trip_through_a_deep_ensemble():
    torch.manual_seed(0)
    factory = lambda: nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 4))  # noqa: E731
    teacher = DeepEnsemble(factory, 3)
    vectors = parameter_vectors(teacher)
    members = teacher.members()
    assert vectors.shape == (3, sum(p.numel() for p in members[0].parameters()))
    for row, member in zip(vectors, members, strict=True):
        torch.testing.assert_close(row, parameters_to_vector(member.parameters()), rtol=0, atol=0)
    rebuilt = ensemble_from_vectors(factory(), vectors)
    torch.testing.assert_close(parameter_vectors(rebuilt), vectors, rtol=0, atol=0)
    x = torch.randn(5, 1, 6, 6)
    expected = uqkit.predict(teacher, x).logits
    torch.testing.assert_close(uqkit.predict(rebuilt, x).logits, expected)


@pytest.fixture(scope="module")
def small_apd() -> tuple[APD, nn.Module]:
    torch.manual_seed(0)
    factory = lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))  # noqa: E731
    samples = parameter_vectors(DeepEnsemble(factory, 6))
    apd = APD(factory(), hidden=16)
    apd.fit(samples, steps=5, generator=torch.Generator().manual_seed(0))
    return apd, factory()


def test_predict_draws_networks_from_the_generator(small_apd):
    apd, _ = small_apd
    x = torch.randn(7, 4)
    prediction = uqkit.predict(apd, x, num_samples=5, generator=torch.Generator().manual_seed(4))
    assert prediction.logits.shape == (5, 7, 3)
    ensemble = apd.sample_ensemble(5, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(prediction.logits, uqkit.predict(ensemble, x).logits, rtol=0, atol=0)
    vectors = apd.sample(5, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(parameter_vectors(ensemble), vectors, rtol=0, atol=0)
    assert uqkit.predict(apd, x).logits.shape == (12, 7, 3)  # DEFAULT_PREDICT_SAMPLES


def test_save_and_load_with_weights_only(small_apd, tmp_path):
    apd, template = small_apd
    path = tmp_path / "apd.pt"
    apd.save(path)
    torch.load(path, weights_only=True)  # plain tensors, numbers and strings
    loaded = APD.load(path, template)
    seed = torch.Generator().manual_seed(9)
    torch.testing.assert_close(
        loaded.sample(4, generator=torch.Generator().manual_seed(9)),
        apd.sample(4, generator=seed),
        rtol=0,
        atol=0,
    )
    with pytest.raises(ValueError, match="expected an architecture of 67 parameters"):
        APD.load(path, nn.Linear(4, 3))


def test_inputs_are_checked():
    template = nn.Linear(3, 2)  # 8 parameters
    apd = APD(template)
    with pytest.raises(RuntimeError, match="call fit"):
        apd.sample(2)
    with pytest.raises(ValueError, match=r"expected \[K, 8\]"):
        apd.fit(torch.randn(10, 7))
    with pytest.raises(ValueError, match=r"expected \[K, 8\]"):
        apd.fit(torch.randn(1, 8))
    with pytest.raises(ValueError, match="identical"):
        apd.fit(torch.ones(4, 8))
    with pytest.raises(ValueError, match="non-finite"):
        apd.fit(torch.full((4, 8), float("nan")))
    with pytest.raises(ValueError, match="coordinates"):
        APD(template, coordinates="full")
    with pytest.raises(TypeError, match="template"):
        APD(lambda: template)
    with pytest.raises(ValueError, match=r"expected \[S, 8\]"):
        ensemble_from_vectors(template, torch.randn(2, 9))


def test_a_diverging_training_is_reported():
    torch.manual_seed(0)
    samples = torch.randn(16, 8)
    apd = APD(nn.Linear(3, 2), hidden=16)
    with pytest.raises(RuntimeError, match=r"non-finite .* loss"):
        apd.fit(samples, steps=50, learning_rate=1e30)
