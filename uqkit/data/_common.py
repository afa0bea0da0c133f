"""Helpers shared by the data loaders: optional imports, seeds and paths."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType
from typing import Any

from uqkit._validation import check_positive_int

INSTALL_HINT = "pip install 'uqkit[data]'"

_MAX_SEED = 2**32 - 1  # numpy's and scikit-learn's legacy seeding accepts [0, 2**32 - 1]


def import_optional(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise an ``ImportError`` that says how to install it.

    Args:
        module: dotted module name, e.g. ``"sklearn.datasets"``.
        purpose: what needs it, for the message, e.g. ``"digits_ood"``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        top = module.split(".")[0]
        raise ImportError(
            f"{purpose} needs the optional dependency {top!r} (could not import {module!r}: {error}); "
            f"install it with: {INSTALL_HINT}"
        ) from error


def check_seed(seed: Any, name: str = "seed") -> int:
    """Raise unless ``seed`` is an int in ``[0, 2**32 - 1]`` (the range numpy and scikit-learn accept)."""
    check_positive_int(seed, name, minimum=0)
    if seed > _MAX_SEED:
        raise ValueError(f"{name}: expected an int in [0, {_MAX_SEED}], got {seed}")
    return seed


def check_optional_path(value: Any, name: str) -> Path | None:
    """Return ``None`` or ``value`` as a ``Path``; raise ``TypeError`` for anything but str or PathLike."""
    if value is None:
        return None
    if isinstance(value, (str, os.PathLike)):
        if os.fspath(value) == "":
            raise ValueError(f"{name}: expected a non-empty path, got {value!r}")
        return Path(value).expanduser()
    raise TypeError(
        f"{name}: expected a str or os.PathLike path or None, got {type(value).__name__} {value!r}"
    )
