"""The benchmark's error for a diverged SG-MCMC chain (:mod:`uqkit.sgmcmc.divergence` detects it)."""

from __future__ import annotations

from uqkit.bench.trainer import NonFiniteLossError
from uqkit.sgmcmc.divergence import Divergence

__all__ = ["ChainDivergenceError"]


class ChainDivergenceError(NonFiniteLossError):
    """An SG-MCMC chain of a benchmark method diverged (a non-finite loss, or a loss far above its running
    level in a sampling stage) and the method could not recover it. A :class:`NonFiniteLossError`, so that
    ``uqkit bench`` reports it as a failed training run.

    Attributes:
        divergence: what the monitor found (step, loss, level, reason), where one divergence is the cause.
    """

    def __init__(self, message: str, divergence: Divergence | None = None) -> None:
        super().__init__(message)
        self.divergence = divergence
