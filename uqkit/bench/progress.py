"""Progress bars with ETA for the benchmark's loops (tqdm, from the ``bench`` extra), or silence."""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["progress_bar"]


class _Silent:
    """Stands in for a tqdm bar when progress output is off."""

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int = 1) -> None:
        return None

    def set_postfix(self, **kwargs: Any) -> None:
        return None


def progress_bar(total: int, desc: str, enabled: bool = True, unit: str = "batch"):
    """A context-managed progress bar on stderr showing rate and ETA; a silent stand-in when disabled."""
    if not enabled:
        return _Silent()
    try:
        from tqdm.auto import tqdm
    except ImportError as error:  # pragma: no cover - the bench extra installs tqdm
        raise ImportError("progress bars need tqdm: pip install 'uqkit[bench]'") from error
    return tqdm(total=total, desc=desc, unit=unit, leave=False, file=sys.stderr, dynamic_ncols=True)
