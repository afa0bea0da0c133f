"""MNIST-1D (Greydanus 2020), generated locally and cached as ``.npz``; never downloads.

MNIST-1D ("Scaling down deep learning", Greydanus 2020, arXiv:2011.14439) turns ten 1-D digit templates into
length-40 signals by random padding, scaling, translation, correlated and i.i.d. noise and shear. We build it
with the ``mnist1d`` package's own generator (``mnist1d.data.make_dataset``) and never call its
``get_dataset``, which downloads a pickle from GitHub. The generated arrays are cached as an ``.npz`` file
(read back with ``allow_pickle=False``), written atomically, under a name keyed by every generator argument
and the package version.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
import warnings
import zipfile
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from uqkit._validation import check_choice, check_positive_int
from uqkit.data._common import check_optional_path, check_seed, import_optional
from uqkit.data.labeled import LabeledData

__all__ = ["mnist1d"]

CACHE_ENV_VAR = "UQKIT_CACHE"
_DEFAULT_CACHE = Path("~/.cache/uqkit")
_NUM_CLASSES = 10
_CACHE_FORMAT = 1  # bump when the layout of the cached arrays changes
_ARRAYS = ("x", "y", "x_test", "y_test", "t")
_SPLIT_KEYS = {"train": ("x", "y"), "test": ("x_test", "y_test")}


def _cache_dir(cache_dir: Path | None) -> Path:
    if cache_dir is not None:
        return cache_dir
    env = os.environ.get(CACHE_ENV_VAR)
    return Path(env).expanduser() if env else _DEFAULT_CACHE.expanduser()


def _package_version() -> str:
    try:
        return metadata.version("mnist1d")
    except metadata.PackageNotFoundError:
        return "unknown"


def _cache_path(directory: Path, args: dict) -> Path:
    keyed = {key: value for key, value in args.items() if key != "url"}
    keyed["mnist1d_version"] = _package_version()
    keyed["cache_format"] = _CACHE_FORMAT
    digest = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]
    return directory / f"mnist1d-seed{args['seed']}-n{args['num_samples']}-{digest}.npz"


def _generate(data_module, seed: int, num_samples: int) -> dict[str, np.ndarray]:
    """Run the package's generator, restoring the global RNGs it reseeds (``random`` and ``np.random``)."""
    args = data_module.get_dataset_args()
    args.seed = seed
    args.num_samples = num_samples
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        dataset = data_module.make_dataset(args)
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
    return {key: np.asarray(dataset[key]) for key in _ARRAYS}


def _load(path: Path) -> dict[str, np.ndarray] | None:
    """The cached arrays, or ``None`` (with a warning) if the file is unreadable or incomplete."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in _ARRAYS}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        warnings.warn(f"ignoring unreadable MNIST-1D cache {path} ({error}); regenerating", stacklevel=3)
        return None


def _save_atomically(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` via a temporary file in the same directory and ``os.replace``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        warnings.warn(f"could not cache MNIST-1D in {path.parent} ({error})", stacklevel=3)
        return
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(file, **arrays)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def mnist1d(
    split: str, seed: int = 0, num_samples: int = 5000, cache_dir: str | os.PathLike | None = None
) -> LabeledData:
    """Generate (or load from the cache) a split of MNIST-1D (Greydanus 2020, arXiv:2011.14439).

    Uses the package's default generator arguments (``get_dataset_args()``) with ``seed`` and ``num_samples``
    replaced: ``num_samples // 10`` signals per class, shuffled, standardised over the whole set, and split
    80/20 into train and test. The generator reseeds Python's and NumPy's global random state; this function
    restores both afterwards. Generating the default 5,000 samples takes about a second.

    Args:
        split: ``"train"`` (80% of the samples) or ``"test"`` (20%).
        seed: generator seed; the same seed gives the same data, different seeds different data.
        num_samples: total samples over both splits; a positive multiple of 10 (one tenth per class).
        cache_dir: directory for the ``.npz`` cache; defaults to ``$UQKIT_CACHE``, else ``~/.cache/uqkit``.

    Returns:
        ``LabeledData`` with float32 signals (about zero mean and unit variance) and long labels ``0..9``.

    Shape:
        ``inputs``: ``[N, 1, 40]`` with ``N = 0.8 * num_samples`` (train) or ``0.2 * num_samples`` (test);
        ``labels``: ``[N]``.

    Raises:
        ImportError: the ``mnist1d`` package is not installed (``pip install 'uqkit[data]'``).
    """
    check_choice(split, "split", tuple(_SPLIT_KEYS))
    check_seed(seed)
    check_positive_int(num_samples, "num_samples", minimum=_NUM_CLASSES)
    if num_samples % _NUM_CLASSES:
        raise ValueError(
            f"num_samples: expected a multiple of {_NUM_CLASSES} (the generator makes num_samples // "
            f"{_NUM_CLASSES} per class), got {num_samples}"
        )
    cache_dir = check_optional_path(cache_dir, "cache_dir")
    data_module = import_optional("mnist1d.data", "mnist1d")

    args = data_module.get_dataset_args(as_dict=True)
    args.update(seed=seed, num_samples=num_samples)
    path = _cache_path(_cache_dir(cache_dir), args)
    arrays = _load(path) if path.is_file() else None
    if arrays is None:
        arrays = _generate(data_module, seed, num_samples)
        _save_atomically(path, arrays)

    inputs_key, labels_key = _SPLIT_KEYS[split]
    inputs = torch.from_numpy(arrays[inputs_key].astype(np.float32)).unsqueeze(1)
    labels = torch.from_numpy(arrays[labels_key].astype(np.int64))
    return LabeledData(inputs, labels)
