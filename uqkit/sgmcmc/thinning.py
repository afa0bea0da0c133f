"""When a chain's state is kept as a sample: :class:`EveryKSteps` and :class:`CycleEnds`.

A thinning rule is a callable ``rule(step) -> bool`` of the 0-based step just taken (after
``optimizer.step()``), read by :meth:`uqkit.sgmcmc.SampleCollector.step`; any callable with that signature
works. Both rules here are pure functions of the step, so a resumed chain keeps the same samples, and both
say in advance how many samples a run of ``total_steps`` steps keeps (:meth:`num_samples`).
"""

from __future__ import annotations

from dataclasses import dataclass

from uqkit._validation import check_positive_int
from uqkit.sgmcmc.schedule import CyclicalSchedule

__all__ = ["CycleEnds", "EveryKSteps"]


@dataclass(frozen=True)
class EveryKSteps:
    """Keep the state after every ``every``-th step once ``burn_in`` steps are done: steps
    ``burn_in + every - 1``, ``burn_in + 2 every - 1``, ... (0-based).

    Args:
        every: ``k >= 1``, the thinning interval.
        burn_in: ``>= 0`` steps discarded before the first interval starts.

    Raises:
        TypeError, ValueError: for a non-int or out-of-range argument, naming it.
    """

    every: int
    burn_in: int = 0

    def __post_init__(self) -> None:
        check_positive_int(self.every, "every")
        check_positive_int(self.burn_in, "burn_in", minimum=0)

    def __call__(self, step: int) -> bool:
        step = check_positive_int(step, "step", minimum=0)
        return step >= self.burn_in and (step - self.burn_in + 1) % self.every == 0

    def num_samples(self, total_steps: int) -> int:
        """How many of steps ``0 .. total_steps - 1`` are kept: ``floor((total_steps - burn_in) / every)``."""
        check_positive_int(total_steps, "total_steps", minimum=0)
        return max(total_steps - self.burn_in, 0) // self.every


@dataclass(frozen=True)
class CycleEnds:
    """Keep ``samples_per_cycle`` states at the end of each cycle's sampling stage of a
    :class:`~uqkit.sgmcmc.CyclicalSchedule` (Zhang et al. 2020 keep the last few epochs' states of each
    cycle): in cycle ``c``, the steps ``end_c``, ``end_c - spacing``, ..., ``end_c - (samples_per_cycle - 1)
    spacing``, where ``end_c`` is the cycle's last step; only steps inside the sampling stage are kept (a
    shortened last cycle may keep fewer).

    Args:
        schedule: the run's :class:`~uqkit.sgmcmc.CyclicalSchedule`.
        samples_per_cycle: ``>= 1`` samples per cycle.
        spacing: steps between two samples of a cycle (e.g. the steps of one epoch, to keep the state at the
            end of each of the cycle's last epochs); ``None`` (default): the sampling stage's length divided
            by ``samples_per_cycle`` (at least 1), spreading the samples over the stage.

    Raises:
        TypeError: for a ``schedule`` that is not a :class:`~uqkit.sgmcmc.CyclicalSchedule`.
        ValueError: when the samples of a full cycle do not fit in its sampling stage.
    """

    schedule: CyclicalSchedule
    samples_per_cycle: int
    spacing: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.schedule, CyclicalSchedule):
            raise TypeError(
                f"schedule: expected a uqkit.sgmcmc.CyclicalSchedule, got {type(self.schedule).__name__}"
            )
        check_positive_int(self.samples_per_cycle, "samples_per_cycle")
        stage = self._stage_length()
        if self.spacing is None:
            object.__setattr__(self, "spacing", max(1, stage // self.samples_per_cycle))
        check_positive_int(self.spacing, "spacing")
        needed = (self.samples_per_cycle - 1) * self.spacing + 1
        if needed > stage:
            raise ValueError(
                f"samples_per_cycle, spacing: {self.samples_per_cycle} samples {self.spacing} steps apart "
                f"span {needed} steps, but a cycle's sampling stage has {stage} (cycle length "
                f"{self.schedule.cycle_length}, exploration {self.schedule.exploration}); expected them "
                "to fit"
            )

    def _stage_length(self) -> int:
        """Steps in the sampling stage of a full-length cycle."""
        return self.schedule.cycle_length - (self.schedule.sampling_start(0))

    def __call__(self, step: int) -> bool:
        schedule = self.schedule
        cycle = schedule.cycle(step)
        before_end = schedule.cycle_end(cycle) - step
        return (
            step >= schedule.sampling_start(cycle)
            and before_end % self.spacing == 0
            and before_end // self.spacing < self.samples_per_cycle
        )

    def num_samples(self, total_steps: int | None = None) -> int:
        """How many states a run of the schedule keeps (``total_steps``, if given, must be the schedule's)."""
        schedule = self.schedule
        if total_steps is not None and total_steps != schedule.total_steps:
            raise ValueError(
                f"total_steps: expected the schedule's {schedule.total_steps} steps, got {total_steps}"
            )
        count = 0
        for cycle in range(schedule.num_run_cycles):
            stage = schedule.cycle_end(cycle) - schedule.sampling_start(cycle) + 1
            if stage > 0:
                count += min(self.samples_per_cycle, (stage - 1) // self.spacing + 1)
        return count
