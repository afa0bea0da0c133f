"""File I/O in one place: atomic writes, and reads that name a corrupt file.

Every benchmark checkpoint, result and report, and every saved set of SG-MCMC samples
(:meth:`uqkit.sgmcmc.SampleCollector.save`), is written with :func:`atomic_write`; every JSON or
``torch.save`` file of a run directory is read with :func:`read_json` or :func:`read_torch`, which turn a
truncated or garbled file into a :class:`CorruptFileError` naming the file and the problem. :func:`set_aside`
moves such a file out of the way (renamed, never deleted) so that a resumed run can redo that piece of work.
"""

from __future__ import annotations

import json
import os
import pickle
import secrets
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["CorruptFileError", "atomic_write", "read_json", "read_torch", "set_aside"]

CORRUPT_SUFFIX = ".corrupt"
"""Appended to the name of a file that :func:`set_aside` moves out of the way."""


class CorruptFileError(ValueError):
    """A file could not be read: truncated, garbled, or not what it should hold.

    Attributes:
        path: the file.
        problem: what was wrong with it, in words.
    """

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: unreadable, {problem}")

    def __reduce__(self):  # pickles with its two arguments (an exception re-raised in another process)
        return type(self), (self.path, self.problem)


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


def read_json(path: str | os.PathLike, expect: type = dict) -> Any:
    """The JSON value in ``path``, which must be of type ``expect`` (an object, by default).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CorruptFileError: it is not UTF-8, not valid JSON (with the line and column), or not an ``expect``.
    """
    path = Path(path)
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as error:
        raise CorruptFileError(path, f"not UTF-8 text ({error.reason} at byte {error.start})") from None
    except json.JSONDecodeError as error:
        problem = "empty file" if not error.doc.strip() else f"invalid JSON ({error})"
        raise CorruptFileError(path, problem) from None
    if not isinstance(value, expect):
        raise CorruptFileError(
            path, f"expected a JSON {_json_type(expect)}, got a JSON {_json_type(type(value))}"
        )
    return value


def _json_type(kind: type) -> str:
    names = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean"}
    return names.get(kind, "null" if kind is type(None) else kind.__name__)


def read_torch(path: str | os.PathLike) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``: tensors, numbers, strings, lists, dicts.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CorruptFileError: the file is truncated or garbled (torch's reader, the zip container or the
            restricted unpickler failed), with torch's message.
    """
    import torch

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as error:
        size = path.stat().st_size
        message = _torch_problem(error)
        raise CorruptFileError(path, f"not a complete torch.save file ({size} bytes; {message})") from None


def _torch_problem(error: BaseException) -> str:
    """The informative part of a ``torch.load`` error, on one line (torch's messages run to a paragraph)."""
    text = str(error)
    if "WeightsUnpickler error:" in text:  # the restricted unpickler's reason sits after boilerplate
        text = text.split("WeightsUnpickler error:", 1)[1].strip().split("\n\n", 1)[0]
    text = " ".join(text.split())
    text = text.split(". ", 1)[0].rstrip(".")  # miniz and friends: the first sentence names the failure
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def set_aside(path: str | os.PathLike) -> Path:
    """Rename ``path`` to ``<name>.corrupt`` (``<name>.corrupt.1``, ... if taken); returns the new path.

    Nothing is deleted: the bad file stays beside the good ones for inspection.
    """
    path = Path(path)
    target = path.with_name(path.name + CORRUPT_SUFFIX)
    counter = 0
    while target.exists():
        counter += 1
        target = path.with_name(f"{path.name}{CORRUPT_SUFFIX}.{counter}")
    os.replace(path, target)
    return target
