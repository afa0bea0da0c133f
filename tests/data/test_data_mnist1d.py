"""Tests of uqkit/data/mnist1d_generator.py: local generation, the .npz cache, and never downloading."""

from __future__ import annotations

import random
import sys

import numpy as np
import pytest
import torch

from uqkit.data import LabeledData, mnist1d

mnist1d_data = pytest.importorskip("mnist1d.data")

SAMPLES = 200  # 160 train + 40 test; generation takes a few tens of milliseconds


def package_reference(seed: int, num_samples: int) -> dict:
    """The oracle: the package's own generator with the same two arguments changed."""
    args = mnist1d_data.get_dataset_args()
    args.seed, args.num_samples = seed, num_samples
    return mnist1d_data.make_dataset(args)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Fail any attempt to download: the package's get_dataset and requests.get."""

    def refuse(*args, **kwargs):
        raise AssertionError("mnist1d must never download")

    monkeypatch.setattr(mnist1d_data, "get_dataset", refuse)
    monkeypatch.setattr(mnist1d_data.requests, "get", refuse)


@pytest.mark.parametrize(
    ("split", "x_key", "y_key", "count"), [("train", "x", "y", 160), ("test", "x_test", "y_test", 40)]
)
def test_matches_the_package_generator(tmp_path, split, x_key, y_key, count):
    data = mnist1d(split, seed=4, num_samples=SAMPLES, cache_dir=tmp_path)
    reference = package_reference(4, SAMPLES)
    assert isinstance(data, LabeledData)
    assert data.inputs.shape == (count, 1, 40) and data.inputs.dtype == torch.float32
    assert data.labels.shape == (count,) and data.labels.dtype == torch.long
    assert torch.equal(data.inputs[:, 0], torch.from_numpy(reference[x_key].astype(np.float32)))
    assert torch.equal(data.labels, torch.from_numpy(reference[y_key]).long())


def test_second_call_loads_the_npz_cache(tmp_path, monkeypatch):
    first = mnist1d("train", seed=1, num_samples=SAMPLES, cache_dir=tmp_path)
    files = sorted(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz" and "seed1-n200" in files[0].name  # no temp left
    with np.load(files[0], allow_pickle=False) as archive:  # plain arrays, no pickle
        assert sorted(archive.files) == ["t", "x", "x_test", "y", "y_test"]

    def refuse(*args, **kwargs):
        raise AssertionError("should have loaded the cache")

    monkeypatch.setattr(mnist1d_data, "make_dataset", refuse)
    second = mnist1d("train", seed=1, num_samples=SAMPLES, cache_dir=tmp_path)
    test = mnist1d("test", seed=1, num_samples=SAMPLES, cache_dir=tmp_path)  # same file serves both splits
    assert torch.equal(second.inputs, first.inputs) and torch.equal(second.labels, first.labels)
    assert len(test) == 40


def test_cache_is_keyed_by_seed_and_size(tmp_path):
    mnist1d("train", seed=0, num_samples=SAMPLES, cache_dir=tmp_path)
    mnist1d("train", seed=1, num_samples=SAMPLES, cache_dir=tmp_path)
    mnist1d("train", seed=0, num_samples=100, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 3


def test_seeds_are_reproducible_and_distinct(tmp_path):
    a = mnist1d("train", seed=2, num_samples=SAMPLES, cache_dir=tmp_path / "a")
    b = mnist1d("train", seed=2, num_samples=SAMPLES, cache_dir=tmp_path / "b")  # regenerated, not cached
    c = mnist1d("train", seed=3, num_samples=SAMPLES, cache_dir=tmp_path / "a")
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.inputs, c.inputs)


def test_global_random_state_is_restored(tmp_path):
    np.random.seed(99)
    random.seed(99)
    numpy_expected, python_expected = np.random.rand(), random.random()
    np.random.seed(99)
    random.seed(99)
    mnist1d("train", seed=0, num_samples=SAMPLES, cache_dir=tmp_path)  # the generator reseeds both
    assert np.random.rand() == numpy_expected and random.random() == python_expected


def test_cache_dir_defaults_to_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv("UQKIT_CACHE", str(tmp_path / "env-cache"))
    mnist1d("test", seed=0, num_samples=SAMPLES)
    assert len(list((tmp_path / "env-cache").glob("mnist1d-*.npz"))) == 1


def test_corrupt_cache_is_regenerated_with_a_warning(tmp_path):
    expected = mnist1d("train", seed=0, num_samples=SAMPLES, cache_dir=tmp_path)
    (path,) = tmp_path.glob("*.npz")
    path.write_bytes(b"not a zip file")
    with pytest.warns(UserWarning, match="ignoring unreadable MNIST-1D cache"):
        again = mnist1d("train", seed=0, num_samples=SAMPLES, cache_dir=tmp_path)
    assert torch.equal(again.inputs, expected.inputs)
    with np.load(path, allow_pickle=False) as archive:  # rewritten
        assert archive["x"].shape == (160, 40)


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match=r"split: expected one of 'train', 'test', got 'val'"):
        mnist1d("val", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="num_samples: expected a multiple of 10"):
        mnist1d("train", num_samples=205, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="num_samples: expected an int >= 10, got 5"):
        mnist1d("train", num_samples=5, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="seed: expected an int >= 0, got -1"):
        mnist1d("train", seed=-1, cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"seed: expected an int in \[0, 4294967295\]"):
        mnist1d("train", seed=2**32, cache_dir=tmp_path)
    with pytest.raises(TypeError, match="seed: expected an int"):
        mnist1d("train", seed=1.5, cache_dir=tmp_path)
    with pytest.raises(TypeError, match=r"cache_dir: expected a str or os\.PathLike path or None, got int"):
        mnist1d("train", cache_dir=3)
    assert list(tmp_path.iterdir()) == []


def test_missing_package_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mnist1d", None)
    monkeypatch.setitem(sys.modules, "mnist1d.data", None)
    with pytest.raises(ImportError, match=r"mnist1d needs the optional dependency 'mnist1d'.*uqkit\[data\]"):
        mnist1d("train", num_samples=SAMPLES, cache_dir=tmp_path)
