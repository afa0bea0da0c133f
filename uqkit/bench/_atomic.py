"""Atomic file writes: the one place the benchmark's checkpoints, results and reports are written."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write"]


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(handle)`` on a new temporary file beside ``path``, fsync it, then ``os.replace`` it.

    A kill at any moment leaves either the previous complete file or the new complete file, never a torn
    one, and no temporary file behind after an exception. The file gets the usual permissions (``0o666``
    less the umask), unlike ``tempfile.mkstemp``'s ``0o600``: results and reports are meant to be shared.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
