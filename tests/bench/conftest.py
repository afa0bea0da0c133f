"""Fixtures for the benchmark tests: a tiny, learnable Fashion-MNIST stand-in written as real IDX files."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) as a gzipped IDX file: magic 0x00 0x00 0x08 ndim, big-endian dims, payload."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def make_fake_fashion_mnist(directory: Path, num_train: int = 400, num_test: int = 200, seed: int = 0):
    """Ten classes, each a bright horizontal band at its own height plus noise, and 20% of the labels
    redrawn at random: learnable in a few steps, but never perfectly (so NLL and ECE stay informative)."""
    rng = np.random.default_rng(seed)
    for prefix, count in (("train", num_train), ("t10k", num_test)):
        labels = np.arange(count) % 10
        rng.shuffle(labels)
        images = rng.integers(0, 60, size=(count, 28, 28))
        for index, label in enumerate(labels):
            row = 2 + 2 * int(label)
            images[index, row : row + 3, 4:24] = 220
        noisy = rng.random(count) < 0.2
        labels[noisy] = rng.integers(0, 10, size=int(noisy.sum()))
        write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return directory


@pytest.fixture(scope="session")
def fake_fashion_mnist_dir(tmp_path_factory) -> Path:
    return make_fake_fashion_mnist(tmp_path_factory.mktemp("fashion-mnist"))


@pytest.fixture
def fake_fashion_mnist(fake_fashion_mnist_dir, monkeypatch) -> Path:
    monkeypatch.setenv("UQKIT_DATA", str(fake_fashion_mnist_dir))
    return fake_fashion_mnist_dir


def run_uci_task(out, methods=None, data_dir=None, log=print, executor=None, **options) -> dict:
    """The task ``uci`` of the UCI directory ``data_dir`` through the one driver,
    :func:`uqkit.bench.runner.run_bench` (``options``: more :class:`~uqkit.bench.runner.BenchConfig` fields,
    e.g. ``seed``, ``resume``, ``split_chunks``)."""
    from uqkit.bench.runner import BenchConfig, run_bench

    config = BenchConfig(
        out=Path(out), tasks=["uci"], methods=methods, data_dir=data_dir, progress=False, **options
    )
    return run_bench(config, log=log, executor=executor)


@pytest.fixture
def run_uci():
    """:func:`run_uci_task`: ``run_uci(out, methods, data_dir, log=..., split_chunks=2, ...)``."""
    return run_uci_task


@pytest.fixture
def uci_toy_directory(tmp_path) -> Path:
    """A tiny regression table (40 rows) in the UCI directory format: ``tmp_path / "toy"``."""
    return write_uci_directory(tmp_path / "toy")


def write_uci_directory(directory: Path, rows: int = 40, seed: int = 0) -> Path:
    """A tiny regression table in the UCI directory format (``data.txt``, ``index_features.txt``,
    ``index_target.txt``): two Gaussian features, target ``x0 - x1`` plus noise of std 0.2."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 2))
    y = x[:, 0] - x[:, 1] + 0.2 * rng.normal(size=rows)
    np.savetxt(directory / "data.txt", np.column_stack([x, y]))
    (directory / "index_features.txt").write_text("0\n1\n")
    (directory / "index_target.txt").write_text("2\n")
    return directory
