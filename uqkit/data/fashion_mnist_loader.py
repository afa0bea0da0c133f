"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017) from local IDX files; never downloads.

The loader looks for the four official files
(https://github.com/zalandoresearch/fashion-mnist), gzipped or not, in this order:

1. the ``root`` argument, if given (and only there);
2. otherwise ``$UQKIT_DATA`` if the variable is set, then ``/usr/share/datasets/fashion-mnist``, where the
   Debian package ``dataset-fashion-mnist`` puts them.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

from uqkit._validation import check_choice
from uqkit.data._common import check_optional_path
from uqkit.data.idx import read_idx
from uqkit.data.labeled import LabeledData

__all__ = ["FASHION_MNIST_CLASSES", "DatasetNotFoundError", "fashion_mnist"]

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

DATA_ENV_VAR = "UQKIT_DATA"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
IMAGE_SIZE = 28

# split -> (images file, labels file), without the optional ".gz".
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

_HOW_TO_GET = (
    "To get the data, either install the Debian package (apt-get install dataset-fashion-mnist), or "
    "download the four official IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
    "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) from "
    "https://github.com/zalandoresearch/fashion-mnist into a directory and pass root=<directory> or set "
    f"{DATA_ENV_VAR}=<directory>."
)


class DatasetNotFoundError(FileNotFoundError):
    """A data set's files are in none of the directories searched; the message lists them and says how
    to get the data."""


def _search_dirs(root: Path | None) -> list[Path]:
    if root is not None:
        return [root]
    dirs = []
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        dirs.append(Path(env).expanduser())
    dirs.append(DEBIAN_DIR)
    return dirs


def _find(directory: Path, name: str) -> Path | None:
    """``directory/name`` or ``directory/name.gz``, the uncompressed one first; ``None`` if neither."""
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _locate(split: str, root: Path | None) -> tuple[Path, Path]:
    """The images and labels files of ``split`` in the first directory that has both."""
    searched = []
    for directory in _search_dirs(root):
        found = [_find(directory, name) for name in _FILES[split]]
        if all(path is not None for path in found):
            return found[0], found[1]
        missing = [f"{name}[.gz]" for name, path in zip(_FILES[split], found, strict=True) if path is None]
        reason = "directory does not exist" if not directory.is_dir() else "missing " + ", ".join(missing)
        searched.append(f"  - {directory} ({reason})")
    raise DatasetNotFoundError(
        f"Fashion-MNIST {split!r} split not found. Looked in:\n" + "\n".join(searched) + "\n" + _HOW_TO_GET
    )


@functools.lru_cache(maxsize=4)
def _decode(images_path: Path, labels_path: Path, _stamp: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """Read and check one split as uint8 tensors; cached per resolved path and file size/mtime."""
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.dtype != torch.uint8 or images.ndim != 3 or tuple(images.shape[1:]) != (IMAGE_SIZE,) * 2:
        raise ValueError(
            f"{images_path}: expected uint8 images of shape [N, {IMAGE_SIZE}, {IMAGE_SIZE}], got shape "
            f"{tuple(images.shape)} and dtype {images.dtype}"
        )
    if labels.dtype != torch.uint8 or labels.ndim != 1:
        raise ValueError(
            f"{labels_path}: expected uint8 labels of shape [N], got shape {tuple(labels.shape)} and "
            f"dtype {labels.dtype}"
        )
    if labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds {labels.shape[0]} labels"
        )
    if labels.numel() and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
        raise ValueError(
            f"{labels_path}: expected labels in [0, {len(FASHION_MNIST_CLASSES) - 1}], got a "
            f"maximum of {int(labels.max())}"
        )
    return images, labels


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def fashion_mnist(split: str, root: str | os.PathLike | None = None) -> LabeledData:
    """Load a Fashion-MNIST split from local IDX files (Xiao et al. 2017, arXiv:1708.07747).

    Pixels are scaled from ``0..255`` to ``[0, 1]`` (divided by 255) and nothing else: no mean/std
    normalisation is applied here; models or tasks normalise. Decoded files are cached in-process
    (keyed by resolved path, size and modification time), and every call returns new tensors, so callers may
    modify what they get without affecting later calls.

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000 images).
        root: directory holding the files; if ``None``, ``$UQKIT_DATA`` and then
            ``/usr/share/datasets/fashion-mnist`` are searched. Each file may be gzipped (``.gz``) or not.

    Returns:
        ``LabeledData`` with float32 ``inputs`` in ``[0, 1]`` and long ``labels`` in ``0..9`` (names in
        :data:`FASHION_MNIST_CLASSES`).

    Shape:
        ``inputs``: ``[N, 1, 28, 28]``; ``labels``: ``[N]``.

    Raises:
        DatasetNotFoundError: no searched directory holds both files of the split; the message lists every
            directory looked in and how to get the data.
        ValueError: bad ``split``, or files that are not valid IDX or not Fashion-MNIST shaped.
    """
    check_choice(split, "split", tuple(_FILES))
    root = check_optional_path(root, "root")
    images_path, labels_path = (path.resolve() for path in _locate(split, root))
    images, labels = _decode(images_path, labels_path, (_stamp(images_path), _stamp(labels_path)))
    inputs = images.unsqueeze(1).to(torch.float32).div_(255.0)
    return LabeledData(inputs, labels.to(torch.long))
