"""Tests of uqkit/data/idx.py, uqkit/data/fashion_mnist_loader.py and rotated_fashion_mnist.

Every test writes its own tiny IDX files with the independent writer below; none needs the network or the
Debian package, except the one marked test that checks the real files when they are installed.
"""

from __future__ import annotations

import gzip
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import uqkit.data.fashion_mnist_loader as fashion_module
from uqkit.data import (
    FASHION_MNIST_CLASSES,
    DatasetNotFoundError,
    LabeledData,
    fashion_mnist,
    read_idx,
    rotate_images,
    rotated_fashion_mnist,
)

TYPE_CODES = {"u1": 0x08, "i1": 0x09, ">i2": 0x0B, ">i4": 0x0C, ">f4": 0x0D, ">f8": 0x0E}
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def idx_bytes(array: np.ndarray, big_endian_dtype: str) -> bytes:
    """Encode ``array`` as IDX, straight from the format description (header, big-endian dims, data)."""
    header = struct.pack(">BBBB", 0, 0, TYPE_CODES[big_endian_dtype], array.ndim)
    dims = struct.pack(f">{array.ndim}I", *array.shape)
    return header + dims + array.astype(big_endian_dtype).tobytes()


def write_file(path: Path, content: bytes, gz: bool) -> Path:
    path.write_bytes(gzip.compress(content) if gz else content)
    return path


def write_split(directory: Path, split: str, images: np.ndarray, labels: np.ndarray, gz: bool) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    image_name, label_name = SPLIT_FILES[split]
    write_file(directory / f"{image_name}{suffix}", idx_bytes(images, "u1"), gz)
    write_file(directory / f"{label_name}{suffix}", idx_bytes(labels, "u1"), gz)


def random_split(num: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(num, 28, 28), dtype=np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255  # both ends of the range
    labels = rng.integers(0, 10, size=num, dtype=np.uint8)
    return images, labels


@pytest.fixture
def data_dir(tmp_path: Path) -> tuple[Path, dict]:
    """A directory with a 5-image train split (gzipped) and a 3-image test split (plain)."""
    directory = tmp_path / "fmnist"
    arrays = {"train": random_split(5, seed=1), "test": random_split(3, seed=2)}
    write_split(directory, "train", *arrays["train"], gz=True)
    write_split(directory, "test", *arrays["test"], gz=False)
    return directory, arrays


# -- read_idx ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", list(TYPE_CODES))
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trips_every_type_code(tmp_path, dtype, gz):
    rng = np.random.default_rng(0)
    native = np.dtype(dtype).newbyteorder("=")
    if native.kind == "f":
        array = rng.standard_normal((3, 4, 2)).astype(native)
    else:
        info = np.iinfo(native)
        array = rng.integers(info.min, info.max, size=(3, 4, 2), endpoint=True).astype(native)
    path = write_file(tmp_path / "array.idx", idx_bytes(array, dtype), gz)  # no .gz suffix either way
    result = read_idx(path)
    assert result.dtype == torch.from_numpy(array).dtype
    assert torch.equal(result, torch.from_numpy(array))


def test_read_idx_returns_a_writable_tensor(tmp_path):
    path = write_file(tmp_path / "a.idx", idx_bytes(np.arange(6, dtype=np.uint8), "u1"), gz=False)
    result = read_idx(str(path))
    result[0] = 7  # would warn or fail on a read-only numpy buffer
    assert result.tolist() == [7, 1, 2, 3, 4, 5]


def test_read_idx_one_dimension_and_empty(tmp_path):
    path = write_file(tmp_path / "e.idx", idx_bytes(np.zeros((0, 28), dtype=np.uint8), "u1"), gz=False)
    assert read_idx(path).shape == (0, 28)


def _valid() -> bytes:
    return idx_bytes(np.arange(12, dtype=np.uint8).reshape(3, 4), "u1")


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda b: b"\x01" + b[1:], r"magic number to start with bytes 0x00 0x00, got 0x01 0x00"),
        (lambda b: b[:2] + b"\x0a" + b[3:], r"unknown IDX type code 0x0a"),
        (lambda b: b[:3] + b"\x00", r"at least 1 dimension"),
        (lambda b: b[:3] + b"\x09" + b[4:], r"truncated IDX header: 9 dimensions"),
        (lambda b: b[:-1], r"payload size does not match.*need 12 bytes, got 11 \(file truncated\?\)"),
        (lambda b: b + b"\x00", r"need 12 bytes, got 13 \(trailing bytes\)"),
        (lambda b: b[:3], r"at least a 4-byte header, got 3 bytes"),
    ],
)
def test_read_idx_rejects_corrupt_files_naming_the_file(tmp_path, corrupt, message):
    path = write_file(tmp_path / "broken-idx1-ubyte", corrupt(_valid()), gz=False)
    with pytest.raises(ValueError, match=message) as error:
        read_idx(path)
    assert str(path) in str(error.value)


def test_read_idx_rejects_truncated_gzip_naming_the_file(tmp_path):
    compressed = gzip.compress(_valid())
    path = tmp_path / "cut.gz"
    path.write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated gzip") as error:
        read_idx(path)
    assert str(path) in str(error.value)


def test_read_idx_bad_path(tmp_path):
    with pytest.raises(TypeError, match=r"path: expected a str or os\.PathLike, got int"):
        read_idx(3)
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "absent")


# -- fashion_mnist -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("split", ["train", "test"])
def test_fashion_mnist_decodes_and_scales(data_dir, split):
    directory, arrays = data_dir
    images, labels = arrays[split]
    data = fashion_mnist(split, root=directory)
    assert isinstance(data, LabeledData)
    assert data.inputs.dtype == torch.float32 and data.labels.dtype == torch.long
    assert data.inputs.shape == (len(labels), 1, 28, 28)
    expected = torch.from_numpy(images.astype(np.float32) / np.float32(255.0)).unsqueeze(1)
    assert torch.equal(data.inputs, expected)
    assert torch.equal(data.labels, torch.from_numpy(labels.astype(np.int64)))
    assert float(data.inputs.min()) == 0.0 and float(data.inputs.max()) == 1.0


def test_fashion_mnist_returns_fresh_tensors_and_caches_decoding(data_dir, monkeypatch):
    directory, arrays = data_dir
    calls = []

    def counting_read_idx(path):
        calls.append(path)
        return read_idx(path)

    monkeypatch.setattr(fashion_module, "read_idx", counting_read_idx)
    first = fashion_mnist("train", root=directory)
    first.inputs.fill_(0.5)
    first.labels.fill_(9)
    second = fashion_mnist("train", root=directory)
    assert len(calls) == 2  # images and labels read once, then served from the cache
    images, labels = arrays["train"]
    assert torch.equal(second.labels, torch.from_numpy(labels.astype(np.int64)))
    assert torch.equal(second.inputs.mul(255).round().to(torch.uint8).squeeze(1), torch.from_numpy(images))


def test_fashion_mnist_cache_sees_a_rewritten_file(data_dir):
    directory, _ = data_dir
    assert len(fashion_mnist("test", root=directory)) == 3
    write_split(directory, "test", *random_split(4, seed=3), gz=False)
    assert len(fashion_mnist("test", root=directory)) == 4


def test_fashion_mnist_root_wins_over_env(data_dir, tmp_path, monkeypatch):
    directory, _ = data_dir
    other = tmp_path / "other"
    write_split(other, "test", *random_split(7, seed=4), gz=True)
    monkeypatch.setenv("UQKIT_DATA", str(other))
    assert len(fashion_mnist("test", root=directory)) == 3
    assert len(fashion_mnist("test")) == 7  # env var used when root is not given


def test_fashion_mnist_falls_back_to_debian_dir(data_dir, monkeypatch, tmp_path):
    directory, _ = data_dir
    monkeypatch.delenv("UQKIT_DATA", raising=False)
    monkeypatch.setattr(fashion_module, "DEBIAN_DIR", directory)
    assert len(fashion_mnist("train")) == 5
    monkeypatch.setenv("UQKIT_DATA", str(tmp_path / "empty"))  # env dir lacks the files: next in order
    assert len(fashion_mnist("train")) == 5


def test_missing_data_message_lists_directories_and_how_to_get_it(tmp_path, monkeypatch):
    env_dir, debian_dir = tmp_path / "env", tmp_path / "no-such-debian-dir"
    env_dir.mkdir()
    (env_dir / "t10k-images-idx3-ubyte.gz").write_bytes(b"")  # images only: labels reported missing
    monkeypatch.setenv("UQKIT_DATA", str(env_dir))
    monkeypatch.setattr(fashion_module, "DEBIAN_DIR", debian_dir)
    with pytest.raises(DatasetNotFoundError) as error:
        fashion_mnist("test")
    message = str(error.value)
    assert isinstance(error.value, FileNotFoundError)
    assert f"{env_dir} (missing t10k-labels-idx1-ubyte[.gz])" in message
    assert f"{debian_dir} (directory does not exist)" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "https://github.com/zalandoresearch/fashion-mnist" in message
    assert "root=" in message and "UQKIT_DATA" in message


def test_missing_data_with_root_searches_only_root(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_module, "DEBIAN_DIR", tmp_path / "debian")
    with pytest.raises(DatasetNotFoundError, match="'train' split not found") as error:
        fashion_mnist("train", root=tmp_path)
    assert str(tmp_path) in str(error.value) and "debian" not in str(error.value)


@pytest.mark.parametrize(
    ("images", "labels", "message"),
    [
        (np.zeros((2, 27, 28), np.uint8), np.zeros(2, np.uint8), r"images of shape \[N, 28, 28\]"),
        (np.zeros((2, 28, 28), np.uint8), np.zeros(3, np.uint8), r"holds 2 images but .* holds 3 labels"),
        (np.zeros((2, 28, 28), np.uint8), np.array([1, 10], np.uint8), r"labels in \[0, 9\], got a maximum"),
        (np.zeros((2, 28, 28), np.uint8), np.zeros((2, 1), np.uint8), r"uint8 labels of shape \[N\]"),
    ],
)
def test_fashion_mnist_rejects_wrong_contents(tmp_path, images, labels, message):
    write_split(tmp_path, "test", images, labels, gz=False)
    with pytest.raises(ValueError, match=message):
        fashion_mnist("test", root=tmp_path)


def test_fashion_mnist_reports_corrupt_file(data_dir):
    directory, _ = data_dir
    labels_path = directory / "t10k-labels-idx1-ubyte"
    labels_path.write_bytes(labels_path.read_bytes()[:-1])
    with pytest.raises(ValueError, match="payload size") as error:
        fashion_mnist("test", root=directory)
    assert str(labels_path) in str(error.value)


def test_fashion_mnist_bad_arguments(data_dir):
    directory, _ = data_dir
    with pytest.raises(ValueError, match=r"split: expected one of 'train', 'test', got 'val'"):
        fashion_mnist("val", root=directory)
    with pytest.raises(TypeError, match=r"root: expected a str or os\.PathLike path or None, got int"):
        fashion_mnist("train", root=5)
    with pytest.raises(ValueError, match="root: expected a non-empty path"):
        fashion_mnist("train", root="")


def test_class_names():
    assert len(FASHION_MNIST_CLASSES) == 10
    assert FASHION_MNIST_CLASSES[0] == "T-shirt/top" and FASHION_MNIST_CLASSES[9] == "Ankle boot"


# -- rotated_fashion_mnist -----------------------------------------------------------------------------------
def test_rotated_fashion_mnist_rotates_the_test_split(data_dir):
    directory, _ = data_dir
    test = fashion_mnist("test", root=directory)
    rotated = rotated_fashion_mnist(30, root=directory)
    assert torch.equal(rotated.labels, test.labels)
    assert torch.equal(rotated.inputs, rotate_images(test.inputs, 30))
    assert torch.equal(rotated_fashion_mnist(0, root=directory).inputs, test.inputs)


def test_rotated_fashion_mnist_checks_angle_before_loading(tmp_path):
    with pytest.raises(TypeError, match="angle_degrees: expected a real number"):
        rotated_fashion_mnist("30", root=tmp_path)
    with pytest.raises(ValueError, match="angle_degrees: expected a finite number"):
        rotated_fashion_mnist(float("nan"), root=tmp_path)


# -- the real files, when the Debian package is installed ----------------------------------------------------
@pytest.mark.skipif(
    not all(
        (fashion_module.DEBIAN_DIR / f"{name}.gz").is_file() for pair in SPLIT_FILES.values() for name in pair
    ),
    reason="Debian package dataset-fashion-mnist not installed",
)
def test_real_fashion_mnist_from_debian_package():
    start = time.perf_counter()
    train = fashion_mnist("train", root=fashion_module.DEBIAN_DIR)
    test = fashion_mnist("test", root=fashion_module.DEBIAN_DIR)
    print(f"loaded Fashion-MNIST train+test in {time.perf_counter() - start:.2f} s")
    assert train.inputs.shape == (60000, 1, 28, 28) and test.inputs.shape == (10000, 1, 28, 28)
    assert torch.equal(torch.bincount(train.labels, minlength=10), torch.full((10,), 6000))
    assert torch.equal(torch.bincount(test.labels, minlength=10), torch.full((10,), 1000))
    assert float(train.inputs.min()) == 0.0 and float(train.inputs.max()) == 1.0
