"""The environment record every benchmark script writes beside its numbers."""

from __future__ import annotations

import datetime
import subprocess
from typing import Any

from uqkit.bench.runner import environment


def benchmark_environment(**extra: Any) -> dict[str, Any]:
    """uqkit's run environment (versions, CPU, threads) plus the git commit and the date."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        **environment("cpu"),
        "uqkit_commit": commit,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }
