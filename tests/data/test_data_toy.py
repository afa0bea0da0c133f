"""Tests of uqkit/data/toy.py: two moons and the OOD blob."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from uqkit.data import TWO_MOONS_OOD_CENTER, TWO_MOONS_OOD_STD, LabeledData, two_moons, two_moons_ood

sklearn_datasets = pytest.importorskip("sklearn.datasets")


def noise_free_moons(points_per_arc: int = 2001) -> torch.Tensor:
    """Dense points on the two half circles of make_moons: (cos t, sin t) and (1 - cos t, 0.5 - sin t)."""
    t = torch.linspace(0, math.pi, points_per_arc, dtype=torch.float64)
    upper = torch.stack([t.cos(), t.sin()], dim=1)
    lower = torch.stack([1 - t.cos(), 0.5 - t.sin()], dim=1)
    return torch.cat([upper, lower])


def test_two_moons_is_make_moons():
    data = two_moons(num_samples=300, noise=0.2, seed=7)
    points, labels = sklearn_datasets.make_moons(n_samples=300, noise=0.2, random_state=7)
    assert isinstance(data, LabeledData)
    assert data.inputs.dtype == torch.float32 and data.labels.dtype == torch.long
    assert torch.equal(data.inputs, torch.as_tensor(points, dtype=torch.float32))
    assert torch.equal(data.labels, torch.as_tensor(labels))


def test_noise_free_points_lie_on_their_arcs():
    data = two_moons(num_samples=101, noise=0.0)
    x, y = data.inputs[:, 0].double(), data.inputs[:, 1].double()
    upper, lower = data.labels == 0, data.labels == 1
    assert int(upper.sum()) == 50 and int(lower.sum()) == 51
    torch.testing.assert_close(x[upper] ** 2 + y[upper] ** 2, torch.ones(50, dtype=torch.float64))
    torch.testing.assert_close(
        (x[lower] - 1) ** 2 + (y[lower] - 0.5) ** 2, torch.ones(51, dtype=torch.float64)
    )
    assert float(y[upper].min()) >= -1e-6 and float(y[lower].max()) <= 0.5 + 1e-6


def test_two_moons_seeds():
    a, b, c = two_moons(seed=1), two_moons(seed=1), two_moons(seed=2)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.inputs, c.inputs)
    assert len(a) == 1000


def test_ood_blob_is_seeded_and_has_the_documented_distribution():
    a, b, c = two_moons_ood(seed=0), two_moons_ood(seed=0), two_moons_ood(seed=1)
    assert torch.equal(a.inputs, b.inputs) and not torch.equal(a.inputs, c.inputs)
    assert a.inputs.shape == (200, 2) and a.inputs.dtype == torch.float32
    assert torch.equal(a.labels, torch.zeros(200, dtype=torch.long))
    big = two_moons_ood(num_samples=20000, seed=3).inputs.double()
    # Sample mean: standard error std / sqrt(n) = 0.0014 per axis; allow 5 of them.
    center = torch.tensor(TWO_MOONS_OOD_CENTER, dtype=torch.float64)
    assert float((big.mean(dim=0) - center).abs().max()) < 5 * TWO_MOONS_OOD_STD / math.sqrt(20000)
    # Sample std: standard error about std / sqrt(2 n) = 0.001; allow 5 of them.
    std_error = TWO_MOONS_OOD_STD / math.sqrt(2 * 20000)
    assert float((big.std(dim=0) - TWO_MOONS_OOD_STD).abs().max()) < 5 * std_error


def test_ood_blob_is_far_from_the_moons():
    center = torch.tensor([TWO_MOONS_OOD_CENTER], dtype=torch.float64)
    assert float(torch.cdist(center, noise_free_moons()).min()) > 1.5  # 1.58, to the end (-1, 0) of class 0
    moons = two_moons(num_samples=1000, noise=0.1, seed=0).inputs
    blob = two_moons_ood(num_samples=200, seed=0).inputs
    assert float(torch.cdist(blob, moons).min()) > 0.3


def test_bad_inputs(monkeypatch):
    with pytest.raises(ValueError, match="num_samples: expected an int >= 2, got 1"):
        two_moons(num_samples=1)
    with pytest.raises(ValueError, match=r"noise: expected a finite number >= 0, got -0\.1"):
        two_moons(noise=-0.1)
    with pytest.raises(ValueError, match="noise: expected a finite number >= 0, got nan"):
        two_moons(noise=float("nan"))
    with pytest.raises(TypeError, match="seed: expected an int"):
        two_moons(seed="0")
    with pytest.raises(ValueError, match="num_samples: expected an int >= 1, got 0"):
        two_moons_ood(num_samples=0)
    with pytest.raises(ValueError, match="seed: expected an int >= 0, got -3"):
        two_moons_ood(seed=-3)
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(
        ImportError, match=r"two_moons needs the optional dependency 'sklearn'.*uqkit\[data\]"
    ):
        two_moons()
    assert len(two_moons_ood()) == 200  # needs only torch
