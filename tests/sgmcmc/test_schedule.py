"""The cyclical schedule equals Zhang et al. 2020's Eq. 1 and Algorithm 1; the polynomial decay its formula;
the thinning rules keep the steps they promise, as many as they promise."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from uqkit.sgmcmc import (
    SGHMC,
    CycleEnds,
    CyclicalSchedule,
    EveryKSteps,
    cyclical_step_size,
    polynomial_step_size,
)


@pytest.mark.parametrize(("total", "cycles"), [(400, 4), (10, 3), (1, 1), (97, 5), (10, 6)])
def test_step_size_equals_eq_1(total, cycles):
    base = 0.3
    schedule = CyclicalSchedule(base, total, cycles, exploration=0.75)
    length = math.ceil(total / cycles)
    for step in range(total):
        k = step + 1  # the paper counts from 1
        expected = base / 2 * (math.cos(math.pi * ((k - 1) % length) / length) + 1)
        assert schedule.lr(step) == pytest.approx(expected, rel=1e-12)
        assert cyclical_step_size(step, base, total, cycles) == pytest.approx(expected, rel=1e-12)
        position = ((k - 1) % length) / length
        assert schedule.is_sampling(step) == (position >= 0.75)  # Algorithm 1: explore while r(k) < beta
        assert schedule.cycle(step) == step // length


def test_each_cycle_starts_at_the_base_rate_and_samples_at_its_end():
    schedule = CyclicalSchedule(1.0, 100, 4, exploration=0.8)
    assert [schedule.lr(s) for s in (0, 25, 50, 75)] == [1.0] * 4
    assert schedule.lr(24) < 0.01
    sampling = [s for s in range(100) if schedule.is_sampling(s)]
    assert sampling == [s for c in range(4) for s in range(25 * c + 20, 25 * c + 25)]
    assert [schedule.sampling_start(c) for c in range(4)] == [20, 45, 70, 95]
    assert schedule.cycle_end(3) == 99


@pytest.mark.parametrize("exploration", [0.0, 0.3, 1 / 3, 0.7, 1.0])
def test_sampling_start_is_the_first_sampling_step(exploration):
    schedule = CyclicalSchedule(0.1, 30, 2, exploration)
    for cycle in range(2):
        stage = [s for s in range(15 * cycle, 15 * cycle + 15) if schedule.is_sampling(s)]
        assert schedule.sampling_start(cycle) == (stage[0] if stage else 15 * cycle + 15)


def test_apply_sets_learning_rate_and_noise():
    schedule = CyclicalSchedule(0.2, 40, 2, exploration=0.5)
    param = nn.Parameter(torch.zeros(3))
    optimizer = SGHMC([param], lr=1.0, num_data=10)
    assert schedule.apply(optimizer, 3) is False
    assert optimizer.param_groups[0]["lr"] == schedule.lr(3) and optimizer.param_groups[0]["noise"] is False
    assert schedule.apply(optimizer, 15) is True
    assert optimizer.param_groups[0]["noise"] is True
    plain = torch.optim.SGD([param], lr=1.0)
    schedule.apply(plain, 20)  # the first step of cycle 2: the base rate
    assert plain.param_groups[0]["lr"] == pytest.approx(0.2) and "noise" not in plain.param_groups[0]


def test_polynomial_step_size_equals_welling_and_teh():
    a, b, gamma = 0.5 * 100**0.55, 100.0, 0.55  # epsilon_t = a (b + t)^-gamma
    for step in (0, 1, 10, 1000):
        assert polynomial_step_size(step, 0.5, 100.0, gamma) == pytest.approx(a * (b + step) ** -gamma)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: CyclicalSchedule(0.0, 10, 2), "base_lr"),
        (lambda: CyclicalSchedule(0.1, 0, 1), "total_steps"),
        (lambda: CyclicalSchedule(0.1, 10, 11), "num_cycles"),
        (lambda: CyclicalSchedule(0.1, 10, 2, exploration=1.5), "exploration"),
        (lambda: CyclicalSchedule(0.1, 10, 2).lr(10), "step"),
        (lambda: CyclicalSchedule(0.1, 10, 2).lr(-1), "step"),
        (lambda: CyclicalSchedule(0.1, 10, 2).apply(object(), 0), "optimizer"),
        (lambda: polynomial_step_size(0, 0.1, 10.0, gamma=0.5), "gamma"),
        (lambda: EveryKSteps(0), "every"),
        (lambda: EveryKSteps(2, burn_in=-1), "burn_in"),
        (lambda: CycleEnds(CyclicalSchedule(0.1, 100, 4, 0.8), 3, spacing=3), "fit"),
        (lambda: CycleEnds("schedule", 3), "schedule"),
    ],
)
def test_bad_arguments_are_named(build, message):
    with pytest.raises((TypeError, ValueError), match=message):
        build()


@pytest.mark.parametrize(("every", "burn_in", "total"), [(1, 0, 7), (5, 0, 23), (5, 3, 23), (4, 30, 23)])
def test_every_k_steps(every, burn_in, total):
    rule = EveryKSteps(every, burn_in)
    kept = [s for s in range(total) if rule(s)]
    assert kept == list(range(burn_in + every - 1, total, every))
    assert rule.num_samples(total) == len(kept)


@pytest.mark.parametrize(
    ("total", "cycles", "per_cycle", "spacing"),
    [(100, 4, 3, 2), (100, 4, 3, None), (90, 4, 2, 1), (40, 8, 1, 1)],
)
def test_cycle_ends(total, cycles, per_cycle, spacing):
    schedule = CyclicalSchedule(0.1, total, cycles, exploration=0.8)
    rule = CycleEnds(schedule, per_cycle, spacing)
    kept = [s for s in range(total) if rule(s)]
    gap = rule.spacing
    expected = []
    for cycle in range(schedule.num_run_cycles):
        end = schedule.cycle_end(cycle)
        expected += sorted(
            end - j * gap for j in range(per_cycle) if end - j * gap >= schedule.sampling_start(cycle)
        )
    assert kept == expected
    assert all(schedule.is_sampling(s) for s in kept)
    assert rule.num_samples() == len(kept) == rule.num_samples(total)


def test_cycle_ends_spread_over_the_stage_by_default():
    rule = CycleEnds(CyclicalSchedule(0.1, 100, 4, exploration=0.8), 2)  # stage of 5 steps: spacing 2
    assert [s for s in range(25) if rule(s)] == [22, 24]
