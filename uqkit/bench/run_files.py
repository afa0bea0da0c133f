"""The files of a run directory, shared by every benchmark run: JSON written atomically, the run's identity
in ``config.json`` (checked on ``--resume``), and files read back with a corrupt one set aside.

Under ``torchrun`` (:mod:`uqkit.bench.distributed`) rank 0 alone writes, reads and sets aside; every rank
gets what it read.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from uqkit.bench._atomic import CorruptFileError, atomic_write, read_json, set_aside
from uqkit.bench.distributed import is_main_process, on_main
from uqkit.bench.upgrade import current_run_identity

__all__ = [
    "RunConfigMismatchError",
    "json_safe",
    "prepare_run_dir",
    "read_or_set_aside",
    "set_aside_corrupt",
    "write_json",
]


class RunConfigMismatchError(ValueError):
    """``--resume`` was asked for a run directory made with a different configuration."""


def write_json(obj: Any, path: Path) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (paths as strings, no NaN: see
    :func:`json_safe`); under torchrun only rank 0 writes."""
    if not is_main_process():
        return
    text = json.dumps(obj, indent=1, allow_nan=False, default=_json_default)
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None (JSON has no NaN), recursively through
    dicts, lists and tuples (tuples become lists)."""
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def prepare_run_dir(out: Path, identity: dict[str, Any], resume: bool, command: str) -> None:
    """Start a run directory (write ``config.json``) or check that ``--resume`` continues the same run.

    ``identity`` is what a resumed run must share with the run it continues (compared after a JSON round
    trip, as it is stored). A run saved with a method's old name continues under its new name
    (:func:`uqkit.bench.upgrade.current_run_identity`: that method is trained afresh, its old files unused).

    Raises:
        RunConfigMismatchError: ``out`` holds a run and ``resume`` is False, or it holds a different run.
    """
    identity = json.loads(json.dumps(identity))
    config_path = out / "config.json"
    if not config_path.exists():
        write_json({"identity": identity, "command": command}, config_path)
        return
    if not resume:
        raise RunConfigMismatchError(
            f"run directory {out} already holds a run; pass --resume to continue it, or --out to start a "
            "new one"
        )
    saved = read_json(config_path).get("identity")
    if isinstance(saved, dict):
        saved = current_run_identity(saved)
    if saved != identity:
        saved = saved if isinstance(saved, dict) else {}
        differing = [key for key in sorted(set(identity) | set(saved)) if saved.get(key) != identity.get(key)]
        values = [f"{key} {identity.get(key)!r} here, {saved.get(key)!r} in the run" for key in differing]
        details = "".join(f"; {text}" for text in values if len(text) <= 100)  # long ones: the name only
        raise RunConfigMismatchError(
            f"--resume: {out} was started with a different configuration (differs in: "
            f"{', '.join(differing)}{details}); pass --out to start a new run"
        )


def set_aside_corrupt(error: CorruptFileError, redo: str, log: Callable[[str], None]) -> None:
    """Warn that ``error.path`` is corrupt, move it to ``<name>.corrupt``, and say what is redone."""
    aside = set_aside(error.path)
    log(f"[uqkit] warning: {error}; moved it to {aside.name} and {redo}")


def read_or_set_aside(
    path: Path, read: Callable[[Path], dict[str, Any]], redo: str, log: Callable[[str], None]
) -> dict[str, Any] | None:
    """``read(path)``; ``None`` if there is no such file, or if it was corrupt (then set aside; ``redo``
    says what is done instead).

    ``read`` is :func:`~uqkit.bench.trainer.load_checkpoint` for checkpoints and model files,
    :func:`~uqkit.bench._atomic.read_json` for a finished method's result block. Under torchrun rank 0
    reads (and sets aside) and every rank gets its result.
    """
    return on_main(_read_here_or_set_aside, path, read, redo, log)


def _read_here_or_set_aside(
    path: Path, read: Callable[[Path], dict[str, Any]], redo: str, log: Callable[[str], None]
) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        return read(path)
    except CorruptFileError as error:
        set_aside_corrupt(error, redo, log)
        return None
