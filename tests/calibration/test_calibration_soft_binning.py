"""Tests for uqkit.calibration.soft_binning: oracles are an independent slow loop over examples and bins,
the hard equal-width ECE (its T -> 0 limit, written here, not imported), finite differences and a
calibrated-by-construction data set."""

from __future__ import annotations

import math

import pytest
import torch

from uqkit.calibration import TemperatureScaler, soft_binned_ece


def _random_probs(seed: int, n: int, num_classes: int, scale: float = 2.0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, num_classes, generator=gen, dtype=torch.float64) * scale
    labels = torch.randint(num_classes, (n,), generator=gen)
    return torch.softmax(logits, dim=-1).to(dtype), labels


def _slow_hard_ece(probs: torch.Tensor, labels: torch.Tensor, num_bins: int) -> float:
    """Equal-width binned ECE (Guo et al. 2017) with bins ((k - 1) / M, k / M], as a plain Python loop."""
    rows = probs.double().tolist()
    counts = [0] * num_bins
    correct_sums = [0.0] * num_bins
    confidence_sums = [0.0] * num_bins
    for row, label in zip(rows, labels.tolist(), strict=True):
        confidence = max(row)
        predicted = row.index(confidence)
        k = min(max(math.ceil(confidence * num_bins) - 1, 0), num_bins - 1)
        counts[k] += 1
        correct_sums[k] += float(predicted == label)
        confidence_sums[k] += confidence
    n = len(rows)
    return sum(abs(correct_sums[k] - confidence_sums[k]) / n for k in range(num_bins) if counts[k])


def _slow_soft_binned_ece(probs, labels, num_bins: int, temperature: float, p: float) -> float:
    """SB-ECE of Karandikar et al. (2021) with explicit loops over examples and bins."""
    rows = probs.double().tolist()
    centres = [(j + 0.5) / num_bins for j in range(num_bins)]
    sizes = [0.0] * num_bins
    accuracy_mass = [0.0] * num_bins
    confidence_mass = [0.0] * num_bins
    for row, label in zip(rows, labels.tolist(), strict=True):
        confidence = max(row)
        correct = float(row.index(confidence) == label)
        logs = [-((confidence - xi) ** 2) / temperature for xi in centres]
        top = max(logs)
        weights = [math.exp(v - top) for v in logs]
        norm = sum(weights)
        for j in range(num_bins):
            u = weights[j] / norm
            sizes[j] += u
            accuracy_mass[j] += u * correct
            confidence_mass[j] += u * confidence
    n = len(rows)
    total = 0.0
    for j in range(num_bins):
        if sizes[j] > 0:
            a_j, c_j = accuracy_mass[j] / sizes[j], confidence_mass[j] / sizes[j]
            total += sizes[j] / n * abs(a_j - c_j) ** p
    return total ** (1.0 / p)


@pytest.mark.parametrize(("num_bins", "temperature", "p"), [(15, 0.01, 2), (10, 0.003, 1), (5, 0.05, 3.5)])
def test_matches_slow_loop_reference(num_bins, temperature, p):
    probs, labels = _random_probs(seed=0, n=300, num_classes=4)
    value = soft_binned_ece(probs, labels, num_bins=num_bins, temperature=temperature, p=p)
    expected = _slow_soft_binned_ece(probs, labels, num_bins, temperature, p)
    assert value.dtype == torch.float64 and value.shape == ()
    assert float(value) == pytest.approx(expected, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("num_bins", [5, 15])
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_converges_to_hard_ece_as_temperature_goes_to_zero(num_bins, dtype, tol):
    probs, labels = _random_probs(seed=1, n=2000, num_classes=4, dtype=dtype)
    confidence = probs.double().max(dim=-1).values
    distance_to_edge = (confidence * num_bins - (confidence * num_bins).round()).abs() / num_bins
    keep = distance_to_edge > 0.005  # away from edges, the nearest centre takes all the membership
    probs, labels = probs[keep], labels[keep]
    hard = _slow_hard_ece(probs, labels, num_bins)
    soft = soft_binned_ece(probs, labels, num_bins=num_bins, temperature=1e-6, p=1)
    assert hard > 0.05  # random labels: far from calibrated, so the comparison is not trivially 0 == 0
    assert float(soft) == pytest.approx(hard, abs=tol)


@pytest.mark.parametrize("p", [1, 2])
def test_gradcheck_through_softmax(p):
    gen = torch.Generator().manual_seed(2)
    logits = (torch.randn(12, 3, generator=gen, dtype=torch.float64) * 1.5).requires_grad_(True)
    labels = torch.randint(3, (12,), generator=gen)

    def loss(x: torch.Tensor) -> torch.Tensor:
        return soft_binned_ece(torch.softmax(x, dim=-1), labels, num_bins=6, temperature=0.05, p=p)

    assert torch.autograd.gradcheck(loss, (logits,), eps=1e-6, atol=1e-7)


def test_gradient_flows_only_through_the_confidence():
    probs, labels = _random_probs(seed=3, n=50, num_classes=5)
    probs.requires_grad_(True)
    soft_binned_ece(probs, labels, temperature=0.02).backward()
    argmax_mask = torch.nn.functional.one_hot(probs.detach().argmax(-1), 5).bool()
    assert torch.all(probs.grad[~argmax_mask] == 0)  # correctness a_i is a constant
    assert torch.count_nonzero(probs.grad[argmax_mask]) == 50


def _calibrated_groups() -> tuple[torch.Tensor, torch.Tensor]:
    """Groups of equal confidence c whose accuracy is exactly c: A_j = C_j in every soft bin, for any T."""
    rows, labels = [], []
    for (top, second), n, n_correct in [((0.5, 0.3), 4, 2), ((0.75, 0.15), 8, 6), ((0.9, 0.05), 10, 9)]:
        row = [top, second, 1.0 - top - second]
        for i in range(n):
            rows.append(row)
            labels.append(0 if i < n_correct else 1 + i % 2)
    return torch.tensor(rows, dtype=torch.float64), torch.tensor(labels)


@pytest.mark.parametrize(("temperature", "p"), [(1e-4, 1), (0.01, 2), (0.5, 2), (0.05, 3)])
def test_zero_when_calibrated_in_every_soft_bin(temperature, p):
    probs, labels = _calibrated_groups()
    value = soft_binned_ece(probs, labels, temperature=temperature, p=p)
    assert float(value) == pytest.approx(0.0, abs=1e-12)
    # one wrong label breaks the calibration of a group, and the error becomes clearly positive
    labels[0] = 2
    assert float(soft_binned_ece(probs, labels, temperature=temperature, p=p)) > 1e-3


def test_gradient_at_zero_error_is_finite():
    probs, labels = _calibrated_groups()
    probs.requires_grad_(True)
    soft_binned_ece(probs, labels, p=2).backward()
    assert torch.isfinite(probs.grad).all()


def test_training_loss_reduces_soft_binned_ece():
    """Fit a temperature by gradient descent on NLL + lambda * SB-ECE for an overconfident model."""
    gen = torch.Generator().manual_seed(4)
    base = torch.randn(3000, 10, generator=gen) * 2.0
    labels = torch.multinomial(torch.softmax(base, dim=-1), 1, generator=gen).squeeze(1)
    logits = base * 3.0  # overconfident: the calibrating temperature is 3
    scaler = TemperatureScaler()
    optimizer = torch.optim.Adam(scaler.parameters(), lr=0.05)

    def sb_ece() -> float:
        with torch.no_grad():
            return float(soft_binned_ece(torch.softmax(scaler(logits), dim=-1), labels))

    before = sb_ece()
    for _ in range(80):
        optimizer.zero_grad()
        calibrated = scaler(logits)
        loss = torch.nn.functional.cross_entropy(calibrated, labels) + 1.0 * soft_binned_ece(
            torch.softmax(calibrated, dim=-1), labels
        )
        loss.backward()
        optimizer.step()
    after = sb_ece()
    assert before > 0.1
    assert after < 0.25 * before
    assert scaler.temperature == pytest.approx(3.0, rel=0.15)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"probs": [[0.5, 0.5]]}, TypeError, "probs: expected a torch.Tensor"),
        ({"probs": torch.ones(2, 2, dtype=torch.long)}, TypeError, "probs: expected a floating-point"),
        ({"probs": torch.full((3,), 1 / 3)}, ValueError, "probs: expected a 2-D tensor"),
        (
            {"probs": torch.tensor([[1.5, -0.5], [0.5, 0.5]])},
            ValueError,
            r"probs: expected probabilities in \[0, 1\]",
        ),
        ({"probs": torch.tensor([[0.2, 0.2], [0.5, 0.5]])}, ValueError, "summing to 1"),
        ({"probs": torch.tensor([[float("nan"), 0.5], [0.5, 0.5]])}, ValueError, "probs: expected finite"),
        ({"labels": torch.tensor([0.0, 1.0])}, TypeError, "labels: expected integer class indices"),
        ({"labels": torch.tensor([0, 1, 1])}, ValueError, "labels: expected 2 labels"),
        ({"labels": torch.tensor([0, 2])}, ValueError, r"labels: expected class indices in \[0, 1\]"),
        ({"num_bins": 0}, ValueError, "num_bins: expected an int >= 1"),
        ({"num_bins": 2.0}, TypeError, "num_bins: expected an int"),
        ({"temperature": 0.0}, ValueError, "temperature: expected a finite number > 0"),
        ({"temperature": -1e-3}, ValueError, "temperature: expected a finite number > 0"),
        ({"temperature": float("inf")}, ValueError, "temperature: expected a finite number > 0"),
        ({"p": 0.5}, ValueError, "p: expected a finite number >= 1"),
        ({"p": "2"}, TypeError, "p: expected a number"),
    ],
)
def test_rejects_bad_inputs(kwargs, error, match):
    arguments = {"probs": torch.tensor([[0.7, 0.3], [0.4, 0.6]]), "labels": torch.tensor([0, 1])}
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        soft_binned_ece(**arguments)
