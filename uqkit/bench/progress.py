"""Progress output of the benchmark's loops: bars on a terminal, one line per epoch elsewhere, or silence.

On a terminal (``sys.stderr.isatty()``) the training and evaluation loops draw tqdm bars (from the ``bench``
extra) with rate and ETA. Anywhere else (a log file, a pipe, CI) a bar would write every update as a
carriage-return frame, so nothing is drawn per batch: training prints one line per epoch
(:func:`report_epoch`) and evaluation prints nothing. ``enabled=False`` (``--no-progress``) silences both.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

__all__ = ["progress_bar", "report_epoch", "stderr_is_terminal"]


class _Silent:
    """Stands in for a tqdm bar when no bar is drawn."""

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int = 1) -> None:
        return None

    def set_postfix(self, **kwargs: Any) -> None:
        return None


def stderr_is_terminal() -> bool:
    """Whether ``sys.stderr`` (looked up now, so a redirected stream counts) is an interactive terminal."""
    isatty = getattr(sys.stderr, "isatty", None)
    try:
        return bool(isatty is not None and isatty())
    except (ValueError, OSError):  # a closed or detached stream
        return False


def progress_bar(total: int, desc: str, enabled: bool = True, unit: str = "batch"):
    """A context-managed progress bar on stderr with rate and ETA, when ``enabled`` and stderr is a
    terminal; otherwise a silent stand-in with the same methods (``update``, ``set_postfix``)."""
    if not enabled or not stderr_is_terminal():
        return _Silent()
    try:
        from tqdm.auto import tqdm
    except ImportError as error:  # pragma: no cover - the bench extra installs tqdm
        raise ImportError("progress bars need tqdm: pip install 'uqkit[bench]'") from error
    return tqdm(total=total, desc=desc, unit=unit, leave=False, file=sys.stderr, dynamic_ncols=True)


def report_epoch(name: str, record: Mapping[str, float], epochs: int, enabled: bool = True) -> None:
    """One line on stderr for a finished epoch, where no bar is drawn (stderr not a terminal).

    Args:
        name: the method.
        record: the epoch's history entry: ``epoch`` (1-based), ``train_loss``, ``val_nll``,
            ``val_accuracy`` (a fraction; for regression ``val_rmse`` instead; neither after an epoch that
            was not scored on validation) and ``time_s``.
        epochs: the number of epochs of the run.
        enabled: ``False`` for ``--no-progress``: print nothing.

    Example line::

        [uqkit] mc-dropout epoch 3/10: train loss 0.4123, val NLL 0.3921, val accuracy 86.12%, 12.3 s
    """
    if not enabled or stderr_is_terminal():
        return
    quality = ""  # an epoch after which the method was not scored on validation has none
    if "val_nll" in record:
        quality += f"val NLL {record['val_nll']:.4f}, "
    if "val_accuracy" in record:
        quality += f"val accuracy {100 * record['val_accuracy']:.2f}%, "
    elif "val_rmse" in record:
        quality += f"val RMSE {record['val_rmse']:.4f}, "
    print(
        f"[uqkit] {name} epoch {int(record['epoch'])}/{epochs}: train loss {record['train_loss']:.4f}, "
        f"{quality}{record['time_s']:.1f} s",
        file=sys.stderr,
        flush=True,
    )
