"""Step-size schedules of SG-MCMC: the cyclical cosine schedule of Zhang et al. 2020
(:class:`CyclicalSchedule`, :func:`cyclical_step_size`) and the polynomial decay of Welling & Teh 2011
(:func:`polynomial_step_size`). Each is a pure function of the step, so a chain resumed from a checkpoint at
step ``t`` recomputes its step size and stage from ``t`` alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from uqkit._validation import check_positive_float, check_positive_int, check_unit_interval

__all__ = ["CyclicalSchedule", "cyclical_step_size", "polynomial_step_size"]


def _check_step(step: Any, total_steps: int | None = None) -> int:
    step = check_positive_int(step, "step", minimum=0)
    if total_steps is not None and step >= total_steps:
        raise ValueError(f"step: expected a 0-based step < total_steps = {total_steps}, got {step}")
    return step


def cyclical_step_size(step: int, base_lr: float, total_steps: int, num_cycles: int) -> float:
    """The cyclical cosine step size of Zhang et al. 2020 ("Cyclical stochastic gradient MCMC for Bayesian
    deep learning", Eq. 1) at 0-based ``step``::

        alpha_k = (alpha_0 / 2) [cos(pi mod(k - 1, ceil(K / M)) / ceil(K / M)) + 1],    k = step + 1,

    with ``alpha_0 = base_lr``, ``K = total_steps`` and ``M = num_cycles``: each cycle of ``ceil(K / M)``
    steps starts at ``alpha_0`` and decays to nearly 0.

    Raises:
        TypeError, ValueError: for an argument of the wrong type or out of range (``step`` outside
            ``[0, total_steps)``, ``num_cycles > total_steps``), naming it.
    """
    return CyclicalSchedule(base_lr, total_steps, num_cycles).lr(step)


def polynomial_step_size(step: int, base_lr: float, decay_steps: float, gamma: float = 0.55) -> float:
    """The decaying step size of Welling & Teh 2011 (Sec. 3, ``epsilon_t = a (b + t)^-gamma``), written as
    ``base_lr (1 + step / decay_steps)^-gamma`` (``a = base_lr decay_steps^gamma``, ``b = decay_steps``).

    The Robbins-Monro conditions (``sum epsilon_t = inf``, ``sum epsilon_t^2 < inf``) hold for ``gamma`` in
    ``(0.5, 1]``; Welling & Teh used 0.55.

    Raises:
        TypeError, ValueError: for a negative ``step``, a non-positive ``base_lr`` or ``decay_steps``, or a
            ``gamma`` outside ``(0.5, 1]``.
    """
    step = _check_step(step)
    check_positive_float(base_lr, "base_lr")
    check_positive_float(decay_steps, "decay_steps")
    check_positive_float(gamma, "gamma")
    if not 0.5 < gamma <= 1.0:
        raise ValueError(f"gamma: expected a number in (0.5, 1] (Robbins-Monro conditions), got {gamma}")
    return base_lr * (1.0 + step / decay_steps) ** (-gamma)


@dataclass(frozen=True)
class CyclicalSchedule:
    """Cyclical SG-MCMC's schedule (Zhang et al. 2020, Eq. 1 and Algorithm 1): ``M`` cosine cycles of the
    step size, each an exploration stage followed by a sampling stage.

    At 0-based step ``t`` (the paper's ``k = t + 1``), with cycle length ``L = ceil(K / M)``:

    * step size ``alpha_k = (alpha_0 / 2) [cos(pi r_k) + 1]`` with ``r_k = mod(k - 1, L) / L``, the position
      within the cycle (:meth:`lr`, :meth:`position`);
    * stage: exploration while ``r_k < beta`` (an optimizer step: no noise), sampling once ``r_k >= beta``
      (the SG-MCMC step with its noise) (:meth:`is_sampling`). The paper collects samples in the sampling
      stage (see :class:`uqkit.sgmcmc.CycleEnds`).

    When ``M`` does not divide ``K`` the last cycle is shorter, as the formula implies (and there may be
    fewer than ``M`` cycles: :attr:`num_run_cycles`, e.g. ``K = 10, M = 6`` gives 5 cycles of 2 steps).

    Args:
        base_lr: ``alpha_0 > 0``, the step size at the start of every cycle (a learning rate on the mean
            loss, as the optimizers of :mod:`uqkit.sgmcmc` take it).
        total_steps: ``K >= 1``, the number of steps of the whole run.
        num_cycles: ``M`` in ``[1, K]``.
        exploration: ``beta`` in ``[0, 1]``, the fraction of each cycle spent exploring (0: sample from the
            first step; 1: never sample).

    Raises:
        TypeError, ValueError: for an argument of the wrong type or out of range, naming it.

    Example:
        >>> schedule = CyclicalSchedule(base_lr=0.1, total_steps=4000, num_cycles=4, exploration=0.8)
        >>> for step, (x, y) in enumerate(batches):
        ...     schedule.apply(optimizer, step)  # sets lr, and noise on in the sampling stage only
        ...     ...
    """

    base_lr: float
    total_steps: int
    num_cycles: int
    exploration: float = 0.8

    def __post_init__(self) -> None:
        check_positive_float(self.base_lr, "base_lr")
        check_positive_int(self.total_steps, "total_steps")
        check_positive_int(self.num_cycles, "num_cycles")
        if self.num_cycles > self.total_steps:
            raise ValueError(
                f"num_cycles: expected at most total_steps = {self.total_steps} cycles, got {self.num_cycles}"
            )
        check_unit_interval(self.exploration, "exploration")

    @property
    def cycle_length(self) -> int:
        """``L = ceil(K / M)`` steps."""
        return math.ceil(self.total_steps / self.num_cycles)

    @property
    def num_run_cycles(self) -> int:
        """The number of cycles the ``K`` steps hold, ``ceil(K / L)`` (``M`` when ``M`` divides ``K``)."""
        return math.ceil(self.total_steps / self.cycle_length)

    def cycle(self, step: int) -> int:
        """The 0-based cycle of ``step``."""
        return _check_step(step, self.total_steps) // self.cycle_length

    def position(self, step: int) -> float:
        """``r_k = mod(k - 1, L) / L`` in ``[0, 1)``: how far into its cycle ``step`` is."""
        return (_check_step(step, self.total_steps) % self.cycle_length) / self.cycle_length

    def lr(self, step: int) -> float:
        """``alpha_k = (alpha_0 / 2) [cos(pi r_k) + 1]``."""
        return 0.5 * self.base_lr * (math.cos(math.pi * self.position(step)) + 1.0)

    def is_sampling(self, step: int) -> bool:
        """Whether ``step`` is in its cycle's sampling stage (``r_k >= beta``)."""
        return self.position(step) >= self.exploration

    def sampling_start(self, cycle: int) -> int:
        """The first step of ``cycle``'s sampling stage: ``cycle L + j`` for the smallest integer ``j`` with
        ``j / L >= beta`` (past the cycle's end when it has no sampling stage)."""
        check_positive_int(cycle, "cycle", minimum=0)
        length = self.cycle_length
        offset = math.ceil(self.exploration * length)
        while offset > 0 and (offset - 1) / length >= self.exploration:  # float rounding, either way
            offset -= 1
        while offset / length < self.exploration:
            offset += 1
        return cycle * length + offset

    def cycle_end(self, cycle: int) -> int:
        """The last step of ``cycle`` (of the run, for the last one)."""
        check_positive_int(cycle, "cycle", minimum=0)
        return min((cycle + 1) * self.cycle_length, self.total_steps) - 1

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> bool:
        """Set every parameter group's ``lr`` to :meth:`lr` ``(step)`` and, in the groups that have a
        ``noise`` switch (the optimizers of :mod:`uqkit.sgmcmc`), ``noise`` to :meth:`is_sampling`.

        Call it before each ``optimizer.step()``. An optimizer without the switch (e.g. ``torch.optim.SGD``)
        gets only the step size: the schedule of a snapshot ensemble.

        Returns:
            Whether ``step`` is in a sampling stage.

        Raises:
            TypeError: for an ``optimizer`` that is not a ``torch.optim.Optimizer``.
        """
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer: expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
        lr, sampling = self.lr(step), self.is_sampling(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
            if "noise" in group:
                group["noise"] = sampling
        return sampling
