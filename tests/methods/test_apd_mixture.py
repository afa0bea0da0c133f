"""APDMixture (uqkit/methods/apd_mixture.py): one APD generator per group of samples, drawn stratified.

The statistical test: samples of two separated Gaussian modes (two cycles of a chain), labelled by mode.
The mixture's draws keep the modes' weights, put no mass between the modes, and reproduce each mode's mean
and variances; one generator fitted to the pooled samples (what ``uqkit.APD`` alone does) puts a large
share of its draws between them, which the same check rejects.
"""

import math

import pytest
import torch
from torch import nn

import uqkit
from uqkit import APD, APDMixture
from uqkit.methods.apd import parameter_vectors
from uqkit.methods.apd_mixture import stratified_counts
from uqkit.methods.ensemble import DeepEnsemble

pytestmark = [
    pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN"),
    pytest.mark.usefixtures("one_thread"),
]

DIM = 6
STDS = torch.tensor([0.5, 1.0, 2.0, 1.0, 0.3, 1.5], dtype=torch.float64)
SEPARATION = 8.0  # mode B sits SEPARATION standard deviations of mode A away along every coordinate
SCALE_B = 0.5  # mode B's standard deviations, relative to mode A's
COUNTS = (3000, 1000)  # samples of mode A and mode B
NUM_DRAWN = 20000
Z = 4.0
SLACK_MEAN = 0.1
SLACK_LOG_VARIANCE = 0.2


def _modes() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Means and standard deviations of the two modes."""
    mean_a = torch.zeros(DIM, dtype=torch.float64)
    return mean_a, mean_a + SEPARATION * STDS, STDS, SCALE_B * STDS


def _samples(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[4000, 6]`` samples (mode A's first) and their mode labels."""
    mean_a, mean_b, sd_a, sd_b = _modes()
    generator = torch.Generator().manual_seed(seed)
    a = mean_a + sd_a * torch.randn(COUNTS[0], DIM, generator=generator, dtype=torch.float64)
    b = mean_b + sd_b * torch.randn(COUNTS[1], DIM, generator=generator, dtype=torch.float64)
    labels = torch.cat([torch.zeros(COUNTS[0]), torch.ones(COUNTS[1])]).long()
    return torch.cat([a, b]), labels


def _position(draws: torch.Tensor) -> torch.Tensor:
    """Each draw's position along the line from mode A's mean to mode B's, in mode A's standard deviation
    along it (mode A at 0 with standard deviation 1, mode B at :data:`FAR` with standard deviation 0.5)."""
    mean_a, mean_b, sd_a, _ = _modes()
    direction = (mean_b - mean_a) / sd_a
    return ((draws - mean_a) / sd_a) @ (direction / direction.norm())


FAR = SEPARATION * math.sqrt(DIM)
"""Mode B's position along the line (every coordinate is SEPARATION of mode A's deviations away)."""


def _between(draws: torch.Tensor) -> float:
    """The share of draws more than 4 deviations from both modes along the line (the true law has 3e-5)."""
    position = _position(draws)
    return float(((position > 4.0) & (position < FAR - 4.0 * SCALE_B)).double().mean())


def _mode_errors(draws: torch.Tensor, mean: torch.Tensor, sd: torch.Tensor, count: int) -> float:
    """Largest error / tolerance of the draws' means and variances against one mode (as tests/methods/
    test_apd.py: ``z = 4`` standard errors for ``n_eff = 1 / (1 / K + 1 / N)``, plus a GAN slack)."""
    n_eff = 1.0 / (1.0 / count + 1.0 / draws.shape[0])
    mean_error = ((draws.mean(dim=0) - mean).abs() / sd) / (Z / math.sqrt(n_eff) + SLACK_MEAN)
    log_ratio = (draws.var(dim=0) / sd.square()).log().abs()
    variance_error = log_ratio / (Z * math.sqrt(2 / n_eff) + SLACK_LOG_VARIANCE)
    return float(torch.cat([mean_error, variance_error]).max())


def _template() -> nn.Module:
    return nn.Linear(DIM - 1, 1).double()  # 6 parameters


FIT = {
    "steps": 100,
    "learning_rate": 2e-3,
    "betas": (0.5, 0.9),
    "average": 0.98,
    "batch_size": 256,
}


@pytest.fixture(scope="module")
def two_modes() -> tuple[APDMixture, APD]:
    """The mixture (one generator per mode) and one generator of the pooled samples, same settings."""
    samples, labels = _samples(seed=0)
    torch.manual_seed(1)
    mixture = APDMixture(_template(), hidden=32)
    mixture.fit(samples, labels, generator=torch.Generator().manual_seed(2), **FIT)
    torch.manual_seed(1)
    pooled = APD(_template(), hidden=32)
    pooled.fit(samples, generator=torch.Generator().manual_seed(2), **FIT)
    return mixture, pooled


def test_a_generator_per_mode_reproduces_two_separated_modes(two_modes):
    mixture, _ = two_modes
    assert mixture.dims == [DIM, DIM]
    torch.testing.assert_close(mixture.weights, torch.tensor([0.75, 0.25], dtype=torch.float64))
    draws = mixture.sample(NUM_DRAWN, generator=torch.Generator().manual_seed(3))
    drawn_a, drawn_b = draws[:15000], draws[15000:]  # stratified, in group order
    mean_a, mean_b, sd_a, sd_b = _modes()
    assert float((_position(drawn_a) < FAR / 2).double().mean()) > 0.999
    assert float((_position(drawn_b) > FAR / 2).double().mean()) > 0.999
    assert _between(draws) < 0.01
    assert _mode_errors(drawn_a, mean_a, sd_a, COUNTS[0]) <= 1.0
    assert _mode_errors(drawn_b, mean_b, sd_b, COUNTS[1]) <= 1.0


def test_the_check_rejects_one_generator_of_the_pooled_samples(two_modes):
    _, pooled = two_modes
    samples, _ = _samples(seed=0)
    assert _between(samples) < 0.01  # the samples themselves pass
    draws = pooled.sample(NUM_DRAWN, generator=torch.Generator().manual_seed(3))
    assert _between(draws) > 0.05


def test_stratified_counts():
    assert stratified_counts(12, torch.full((4,), 0.25)) == [3, 3, 3, 3]
    assert stratified_counts(10, torch.tensor([0.5, 0.3, 0.2])) == [5, 3, 2]
    assert stratified_counts(7, torch.full((3,), 1 / 3)) == [3, 2, 2]  # the tie goes to the lower index
    assert stratified_counts(1, torch.tensor([0.2, 0.8])) == [0, 1]
    generator = torch.Generator().manual_seed(0)
    for count in range(1, 30):
        weights = torch.rand(5, generator=generator, dtype=torch.float64)
        weights /= weights.sum()
        counts = stratified_counts(count, weights)
        assert sum(counts) == count
        assert all(abs(c - count * float(w)) < 1 for c, w in zip(counts, weights, strict=True))
    with pytest.raises(ValueError, match="weights"):
        stratified_counts(3, torch.tensor([0.5, 0.6]))
    with pytest.raises(ValueError, match="weights"):
        stratified_counts(3, torch.tensor([1.5, -0.5]))


@pytest.fixture(scope="module")
def small_mixture() -> tuple[APDMixture, nn.Module]:
    torch.manual_seed(0)
    factory = lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))  # noqa: E731
    samples = parameter_vectors(DeepEnsemble(factory, 6))
    mixture = APDMixture(factory(), hidden=16)
    mixture.fit(
        samples, torch.tensor([2, 2, 5, 5, 5, 2]), steps=5, generator=torch.Generator().manual_seed(0)
    )
    return mixture, factory()


def test_predict_save_and_load(small_mixture, tmp_path):
    mixture, template = small_mixture
    assert len(mixture.components) == 2 and mixture.dims == [2, 2]
    x = torch.randn(7, 4)
    prediction = uqkit.predict(mixture, x, num_samples=5, generator=torch.Generator().manual_seed(4))
    assert prediction.logits.shape == (5, 7, 3)
    ensemble = mixture.sample_ensemble(5, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(prediction.logits, uqkit.predict(ensemble, x).logits, rtol=0, atol=0)
    path = tmp_path / "mixture.pt"
    mixture.save(path)
    torch.load(path, weights_only=True)
    loaded = APDMixture.load(path, template)
    torch.testing.assert_close(
        loaded.sample(6, generator=torch.Generator().manual_seed(9)),
        mixture.sample(6, generator=torch.Generator().manual_seed(9)),
        rtol=0,
        atol=0,
    )
    with pytest.raises(ValueError, match=r"APDMixture\.save"):
        APDMixture.load(_apd_file(tmp_path, template), template)  # an APD's file


def _apd_file(tmp_path, template: nn.Module):
    apd = APD(template, hidden=8)
    apd.fit(torch.randn(4, sum(p.numel() for p in template.parameters())), steps=1)
    path = tmp_path / "apd.pt"
    apd.save(path)
    return path


def test_inputs_are_checked():
    template = nn.Linear(3, 2)  # 8 parameters
    mixture = APDMixture(template)
    with pytest.raises(RuntimeError, match="call fit"):
        mixture.sample(2)
    samples = torch.randn(6, 8)
    with pytest.raises(ValueError, match="one label per sample"):
        mixture.fit(samples, torch.zeros(5, dtype=torch.long))
    with pytest.raises(TypeError, match="integer labels"):
        mixture.fit(samples, torch.zeros(6))
    with pytest.raises(ValueError, match="at least 2 samples"):
        mixture.fit(samples, torch.tensor([0, 0, 0, 1, 1, 2]))
    with pytest.raises(ValueError, match="coordinates"):
        APDMixture(template, coordinates="full")
