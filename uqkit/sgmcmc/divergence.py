"""Divergence detection for SG-MCMC chains: :class:`DivergenceMonitor` and the :class:`Divergence` it reports.

A chain whose step size is too large for the curvature it meets does not always end in a NaN. The
cyclical schedule of Zhang et al. 2020 restarts every cycle at its peak step size, and a chain thrown off
its mode there can land on a plateau where its loss stays finite but far above anything it had reached
(e.g. a Gaussian head that predicts a huge variance, whose mean then gets almost no gradient) and keep
sampling there: a silent divergence. The monitor watches the loss each chain is trained on and flags

* **non-finite**: a NaN or infinite loss, at any step;
* **blow-up**: in a sampling stage, the chain's mean loss over a window of steps (one epoch, so that it
  estimates the loss on the whole training set) more than ``tolerance`` above the chain's running level
  (the lowest window mean it has reached so far) for ``patience`` windows in a row, or for the last
  windows of a sampling stage (the stage ends, or the run: :meth:`DivergenceMonitor.close`), where a
  cyclical chain keeps its samples.

Only sampling steps are judged for a blow-up, because the exploration stage is *meant* to leave the mode:
a cyclical chain's loss rises by tens of nats right after each restart and comes back within the stage.
``patience`` lets a chain make a short excursion inside a sampling stage: SGLD's chains on UCI Boston
climb up to 1.6 nats above their level for a few batches and are back by the next epoch. At equilibrium a
chain's loss sits above its minimum by the posterior's spread, a few tenths of a nat per example there at
``T = 1``, while the chains that diverged sat 3 to 7 nats above it for hundreds of epochs (docs/sgmcmc.md
has the measurements), so :data:`DEFAULT_TOLERANCE` nats per example for :data:`DEFAULT_PATIENCE` windows
separates the two with a margin both ways. What to do about a divergence (fail, or run the chain again with
a smaller step size) is the caller's policy; the monitor records it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from uqkit._validation import check_positive_float, check_positive_int

__all__ = ["DEFAULT_PATIENCE", "DEFAULT_TOLERANCE", "Divergence", "DivergenceMonitor"]

DEFAULT_TOLERANCE = 2.0
"""Nats per example (the loss is a mean over the batch) above its running level that count as a blow-up."""
DEFAULT_PATIENCE = 2
"""Windows in a row above the tolerance that make a blow-up (fewer at the end of a sampling stage)."""


@dataclass(frozen=True)
class Divergence:
    """One chain's divergence.

    Attributes:
        chain: the chain's index (0-based, in the order of the losses given to the monitor).
        step: the 0-based step of the non-finite loss, or the last step of the last window above the
            tolerance.
        reason: ``"non-finite"`` or ``"blow-up"``.
        loss: the non-finite loss, or the mean loss of that window.
        level: the chain's running level (the lowest window mean before; ``inf`` before the first window).
    """

    chain: int
    step: int
    reason: str
    loss: float
    level: float

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (non-finite numbers as strings, so that it is valid JSON)."""
        return {key: _json_number(value) for key, value in asdict(self).items()}

    def describe(self) -> str:
        """A sentence for an error message."""
        if self.reason == "non-finite":
            return f"non-finite loss ({self.loss}) at step {self.step}"
        return (
            f"loss blew up by step {self.step}: mean {self.loss:.4g} over its last window, "
            f"{self.loss - self.level:.3g} above the chain's running level {self.level:.4g}"
        )


def _json_number(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class DivergenceMonitor:
    """Watch the losses of ``num_chains`` chains step by step and flag the ones that diverge (module
    docstring): a non-finite loss at any step, or window means in a sampling stage more than ``tolerance``
    above the chain's running level for ``patience`` windows in a row (or up to the stage's end).

    Windows are the steps ``[w * window, (w + 1) * window)`` (aligned on the step, so one epoch each when
    ``window`` is the steps of an epoch and the run starts at step 0); a window is in the sampling stage
    when its last step is. The running level of a chain is the lowest of its window means so far, every
    window counted, exploration ones included. A chain is reported once; after that it is no longer judged
    (:attr:`diverged`). Call :meth:`close` after the last step, to judge the windows that ended the run.

    Args:
        num_chains: ``K >= 1``, the chains whose losses :meth:`update` receives.
        window: ``>= 1`` steps per window (an epoch's steps).
        tolerance: ``> 0``, the excess over the running level, in the loss's units (nats per example for a
            mean negative log-likelihood), that counts as a blow-up (:data:`DEFAULT_TOLERANCE`).
        patience: ``>= 1`` windows in a row above the tolerance that make a blow-up
            (:data:`DEFAULT_PATIENCE`).
        reduce: optional ``reduce(tensor) -> tensor`` applied to each window's ``[2, K]`` sums and counts
            before the mean is taken (data-parallel training: the sum over the processes, so that every
            process judges the same mean).

    Raises:
        TypeError, ValueError: for an argument of the wrong type or out of range, naming it.

    Example:
        >>> monitor = DivergenceMonitor(1, window=len(loader))
        >>> for step, (x, y) in enumerate(batches):
        ...     loss = F.cross_entropy(model(x), y)
        ...     ...
        ...     if monitor.update(step, loss.detach(), schedule.is_sampling(step)):
        ...         raise RuntimeError(monitor.events[0].describe())
        >>> if monitor.close():
        ...     raise RuntimeError(monitor.events[0].describe())
    """

    def __init__(
        self,
        num_chains: int,
        window: int,
        tolerance: float = DEFAULT_TOLERANCE,
        patience: int = DEFAULT_PATIENCE,
        reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.num_chains = check_positive_int(num_chains, "num_chains")
        self.window = check_positive_int(window, "window")
        self.tolerance = check_positive_float(tolerance, "tolerance")
        self.patience = check_positive_int(patience, "patience")
        if reduce is not None and not callable(reduce):
            raise TypeError(f"reduce: expected a callable or None, got {type(reduce).__name__}")
        self.reduce = reduce
        self.level = torch.full((self.num_chains,), math.inf, dtype=torch.float64)
        self.diverged = torch.zeros(self.num_chains, dtype=torch.bool)
        self.events: list[Divergence] = []
        self._sum = torch.zeros(self.num_chains, dtype=torch.float64)
        self._count = 0
        self._above = torch.zeros(self.num_chains, dtype=torch.long)  # sampling windows above, in a row
        self._last = torch.zeros(self.num_chains, dtype=torch.float64)  # the mean of the last of them
        self._last_step = 0

    def update(self, step: int, losses: torch.Tensor | float, sampling: bool) -> list[Divergence]:
        """Take the losses of 0-based ``step`` and return the divergences found at it (empty: none).

        Args:
            step: the step just taken (windows end where ``(step + 1) % window == 0``).
            losses: ``[K]`` (or a number when ``K = 1``) each chain's loss at the step.
            sampling: whether ``step`` is in a sampling stage (a blow-up is judged only then).

        Raises:
            TypeError, ValueError: for a negative ``step``, a non-bool ``sampling``, or losses of another
                shape.
        """
        step = check_positive_int(step, "step", minimum=0)
        if not isinstance(sampling, bool):
            raise TypeError(f"sampling: expected a bool, got {type(sampling).__name__} {sampling!r}")
        losses = torch.as_tensor(losses).detach().reshape(-1)
        if losses.device.type != "cpu":
            losses = losses.cpu()
        if losses.numel() != self.num_chains:
            raise ValueError(
                f"losses: expected {self.num_chains} losses (one per chain), got shape {tuple(losses.shape)}"
            )
        found = []
        if not math.isfinite(float(losses.sum())):  # one check for the common case, then chain by chain
            bad = ~torch.isfinite(losses) & ~self.diverged
            for chain in bad.nonzero().flatten().tolist():
                level = float(self.level[chain])
                found.append(Divergence(chain, step, "non-finite", float(losses[chain]), level))
            self.diverged |= bad
        self._sum += losses  # a diverged chain's sum may turn non-finite: it is no longer judged
        self._count += 1
        if (step + 1) % self.window == 0:
            found += self._close_window(step, sampling)
        self.events += found
        return found

    def close(self) -> list[Divergence]:
        """End the run: a chain whose last sampling windows were above the tolerance (fewer than
        ``patience`` of them) is a blow-up. Returns the divergences found (also in :attr:`events`)."""
        found = self._confirm(self._above > 0)
        self._above.zero_()
        self.events += found
        return found

    def _close_window(self, step: int, sampling: bool) -> list[Divergence]:
        totals = torch.stack([self._sum, torch.full_like(self._sum, float(self._count))])
        if self.reduce is not None:
            totals = self.reduce(totals)
        mean = totals[0] / totals[1]
        self._sum.zero_()
        self._count = 0
        if not sampling:  # a sampling stage that ended above the tolerance is a blow-up
            found = self._confirm(self._above > 0)
            self._above.zero_()
        else:
            above = (mean > self.level + self.tolerance) & ~self.diverged
            self._above = torch.where(above, self._above + 1, torch.zeros_like(self._above))
            self._last = torch.where(above, mean, self._last)
            self._last_step = step
            found = self._confirm(self._above >= self.patience)
        self.level = torch.where(self.diverged, self.level, torch.minimum(self.level, mean))
        return found

    def _confirm(self, blown: torch.Tensor) -> list[Divergence]:
        blown = blown & ~self.diverged
        found = [
            Divergence(chain, self._last_step, "blow-up", float(self._last[chain]), float(self.level[chain]))
            for chain in blown.nonzero().flatten().tolist()
        ]
        self.diverged |= blown
        self._above[blown] = 0
        return found
