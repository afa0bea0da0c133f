"""The UCI regression forms of ``sgld`` and ``csgmcmc`` (opt-in methods of :mod:`uqkit.bench.regression`).

Each split's network (the protocol's one hidden layer of 50 ReLU units with a Gaussian head, mean and
softplus variance, as every other regression method) is one SG-MCMC chain on the posterior

    ``p(theta | D) ∝ exp(-U(theta) / T)``,   ``U(theta) = sum_i -log N(y_i; mu_theta(x_i), sigma^2_theta(x_i))
    + (lambda / 2) ||theta||^2``,

over all its weights and biases, in standardised units: the heteroscedastic Gaussian likelihood of the
other methods and a Gaussian prior ``N(0, lambda^-1 I)``. The optimizers are :mod:`uqkit.sgmcmc`'s, on the
mean NLL of each batch with ``num_data = N`` the rows the chain trains on (the 80% fit part while
choosing on validation, the whole training split after): their update is ``N``-scaled as documented there.

* ``csgmcmc``: cSGHMC (Zhang et al. 2020), :class:`uqkit.sgmcmc.SGHMC` (friction 0.1) under
  :class:`uqkit.sgmcmc.CyclicalSchedule`, 4 cosine cycles over the chain, the first 80% of each cycle
  without noise, 3 samples per cycle spread over its sampling stage (:class:`uqkit.sgmcmc.CycleEnds`): 12.
* ``sgld``: SGLD (Welling & Teh 2011), :class:`uqkit.sgmcmc.SGLD` with the polynomially decaying step size
  ``lr (1 + t / steps_per_epoch)^-0.55``; the first half of the chain is burn-in, the second half keeps 12
  states evenly spaced (:class:`uqkit.sgmcmc.EveryKSteps`).

Budget, as the classification twins (the budget of 4 deterministic runs, the same cycles, samples and
schedules): a chain runs 4 x 400 = 1,600 epochs (:data:`CHAIN_EPOCHS`), 400 being the epochs every
regression method trains each configuration for while choosing on validation (the protocol's cap,
docs/regression.md); ``csgmcmc``'s 4 cycles are one deterministic run each. There is no epoch selection: the
samples are what the chain visited.

Selection on validation only, per split, as the protocol: every configuration of the grid (step size
``lr``, prior precision ``lambda`` and temperature ``T``) runs its chains on the split's fit part, and the
one whose 12 samples give the lowest validation NLL (the moment-matched mixture, as the ensembles are
chosen) is run again on the whole training split, from a new initialisation, and tested. A configuration is
one stack of chains, one per split, with its own optimizer: the samplers act elementwise, so the chains of
a stack are independent (a loss that sums the models' mean NLLs gives each its own gradient), but a stack
shares one step size, prior and temperature. The kept samples are one stack of ``splits x 12`` networks,
predicted in one pass like a deep ensemble.

Divergence (docs/sgmcmc.md#divergence-detection): every chain's loss is watched by a
:class:`uqkit.sgmcmc.DivergenceMonitor` (one window per epoch): a non-finite loss, or epoch-mean losses in a
sampling stage more than :attr:`SGMCMCRegressionMethod.divergence_tolerance` (2 nats) above the lowest the
chain had reached, for 2 epochs in a row or to the stage's end. While choosing, a diverged chain scores its
configuration ``inf`` for its split; in the retraining its samples are discarded and the split's chain runs
again at half the step size, up to :attr:`SGMCMCRegressionMethod.max_step_halvings` times, after which
:class:`~uqkit.bench.divergence.ChainDivergenceError` names the split and step
(:meth:`SGMCMCRegressionMethod.fit`).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from uqkit.bench.divergence import ChainDivergenceError
from uqkit.bench.regression import (
    RegressionFit,
    RegressionMethod,
    SelectionNetworks,
    register_regression_method,
    training_budget,
    validation_pairs,
)
from uqkit.bench.regression_stack import (
    BATCH_SIZE,
    build_stack,
    group_nll,
    sample_stack,
    split_data,
    stack_size,
    train_stack,
)
from uqkit.data.uci import RegressionTable
from uqkit.nn.stacked import StackedGaussianMLP
from uqkit.sgmcmc import SGHMC, SGLD, CycleEnds, CyclicalSchedule, EveryKSteps, polynomial_step_size
from uqkit.sgmcmc.divergence import DEFAULT_PATIENCE, DEFAULT_TOLERANCE, Divergence, DivergenceMonitor

__all__ = [
    "CHAIN_EPOCHS",
    "CyclicalSGMCMCRegression",
    "SGLDRegression",
    "SGMCMCRegressionMethod",
    "csgmcmc_recipe",
]


@dataclass(frozen=True)
class SGMCMCRegressionMethod(RegressionMethod):
    """An SG-MCMC chain per split, its thinned samples mixed at test; the step size (``learning_rates``),
    prior precision and temperature chosen per split on validation.

    Attributes:
        prior_precisions: grid of ``lambda`` of the prior ``N(0, lambda^-1 I)`` over every weight and bias.
        temperatures: grid of ``T`` (1: the posterior; below 1: a cold posterior).
        epochs: the chain's length in epochs (no epoch selection; :data:`CHAIN_EPOCHS`).
        divergence_tolerance: nats per example above its running level at which a chain's epoch-mean loss
            in a sampling stage is a divergence (:class:`uqkit.sgmcmc.DivergenceMonitor`).
        max_step_halvings: how many times a diverged retraining chain is rerun at half the step size before
            the fit fails (:meth:`fit`).
    """

    prior_precisions: tuple[float, ...] = (1.0,)
    temperatures: tuple[float, ...] = (1.0,)
    divergence_tolerance: float = DEFAULT_TOLERANCE
    max_step_halvings: int = 2
    optimizer_name: ClassVar[str] = ""
    schedule_name: ClassVar[str] = ""
    per_split_details: ClassVar[tuple[str, ...]] = (
        "details.divergence.selection",
        "details.divergence.retraining",
        "details.divergence.retraining_learning_rate",
    )
    """The lists of ``details`` with one entry per split (chunks of splits concatenate them)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_members != 1 or self.flipout or self.dropout_rates is not None or self.ncp:
            raise ValueError(
                f"{self.name}: an SG-MCMC method is one chain per split, without Flipout or dropout"
            )
        if self.select_epochs:
            raise ValueError(f"{self.name}: a chain keeps what it visited; select_epochs must be False")
        if not self.learning_rates or any(lr <= 0 for lr in self.learning_rates):
            raise ValueError(f"{self.name}: learning_rates must be > 0, got {self.learning_rates}")
        if not self.prior_precisions or any(p < 0 for p in self.prior_precisions):
            raise ValueError(f"{self.name}: prior_precisions must be >= 0, got {self.prior_precisions}")
        if not self.temperatures or any(t < 0 for t in self.temperatures):
            raise ValueError(f"{self.name}: temperatures must be >= 0, got {self.temperatures}")
        if not self.divergence_tolerance > 0:
            raise ValueError(
                f"{self.name}: divergence_tolerance must be > 0, got {self.divergence_tolerance}"
            )
        if not isinstance(self.max_step_halvings, int) or self.max_step_halvings < 0:
            raise ValueError(
                f"{self.name}: max_step_halvings must be an int >= 0, got {self.max_step_halvings!r}"
            )

    def grid(self) -> list[dict[str, float]]:
        """Every ``{"learning_rate", "prior_precision", "temperature"}`` configuration."""
        return [
            {"learning_rate": float(lr), "prior_precision": float(p), "temperature": float(t)}
            for lr, p, t in itertools.product(self.learning_rates, self.prior_precisions, self.temperatures)
        ]

    def chains(self, config: dict[str, float], total_steps: int, steps_per_epoch: int) -> StackChains:
        """The sampler of one run (subclasses)."""
        raise NotImplementedError(f"{type(self).__name__} must implement chains")

    def schedule_details(self) -> dict[str, Any]:
        """The schedule's fixed settings for the block's ``details`` (subclasses)."""
        raise NotImplementedError(f"{type(self).__name__} must implement schedule_details")

    def run_chains(
        self,
        phase,
        split_of_model: torch.Tensor,
        config: dict[str, float],
        seed: int,
        raise_on_nonfinite: bool,
    ) -> tuple[StackedGaussianMLP, StackChains]:
        """Run the chains of ``config``, chain ``k`` on split ``split_of_model[k]`` of ``phase``, for
        :attr:`epochs`; return their samples as one stack (chain-major: ``[chains * K]`` networks) and the
        run's sampler (with the steps it kept)."""
        num_train = phase.train_x.shape[1]
        steps_per_epoch = math.ceil(num_train / BATCH_SIZE)
        chains = self.chains(config, self.epochs * steps_per_epoch, steps_per_epoch)
        train_stack(
            self,
            phase,
            split_of_model,
            [config] * split_of_model.numel(),
            self.epochs,
            seed,
            independent_parts=not raise_on_nonfinite,
            sampler=chains,
        )
        chains.finish()
        return chains.samples(self, phase.train_x.shape[2]), chains

    def fit(
        self, table: RegressionTable, seed: int, log: Callable[[str], None] | None = None
    ) -> RegressionFit:
        """Choose each split's configuration on its validation part (the samples' validation NLL), run the
        chosen configuration's chain on the whole training split, and return its samples.

        Divergences (:class:`uqkit.sgmcmc.DivergenceMonitor`: a non-finite loss, or an epoch's mean loss in
        a sampling stage more than :attr:`divergence_tolerance` above the chain's running level): while
        choosing, a diverged chain's configuration scores ``inf`` for its split (a step size that diverges
        is a bad choice). In the retraining, a diverged chain's samples are all discarded and its split's
        chain is run again, from the start, at half the step size, up to :attr:`max_step_halvings` times.
        Every divergence and the step size each split's samples came from are in ``details["divergence"]``;
        the reruns' epochs count in ``training["retraining_network_epochs"]``.

        Raises:
            ChainDivergenceError: every configuration's chain of a split diverged while choosing, or a
                split's chain still diverges after :attr:`max_step_halvings` halvings; it names the method,
                the split, the step and the step size.
        """
        started = time.perf_counter()
        splits, grid = len(table.splits), self.grid()
        pairs = validation_pairs(table, seed)
        phase = split_data(table, pairs)
        every_split = torch.arange(splits)
        scores = torch.empty(splits, len(grid), dtype=torch.float64)
        candidates = []
        selection_events: list[list[dict[str, Any]]] = [[] for _ in range(splits)]
        for index, config in enumerate(grid):
            # the same seed for every configuration: the same initialisations and batch orders
            samples, chains = self.run_chains(phase, every_split, config, seed, raise_on_nonfinite=False)
            kept = stack_size(samples) // splits
            mean, variance = sample_stack(samples, phase.eval_x.repeat_interleave(kept, dim=0), 1)
            shape = (splits, kept, *mean.shape[1:])
            nll = group_nll(mean.reshape(shape), variance.reshape(shape), phase.eval_y).double()
            for split in range(splits):
                divergence = chains.divergence(split)
                if divergence is not None:
                    nll[split] = math.inf
                    selection_events[split].append({**config, **_event(divergence)})
            scores[:, index] = torch.where(torch.isfinite(nll), nll, torch.full_like(nll, math.inf))
            candidates.append(samples)
        for split in torch.isinf(scores).all(dim=1).nonzero().flatten().tolist():
            first = selection_events[split][0] if selection_events[split] else None
            detail = "their validation NLL is not finite"
            if first is not None:
                rate, step, reason = first["learning_rate"], first["step"], first["reason"]
                detail = f"the first at step size {rate:g}, step {step}: {reason}"
            raise ChainDivergenceError(
                f"{self.name}: the chains of all {len(grid)} configurations diverged while choosing on "
                f"validation for split {split} (0-based, of the {splits} this fit trains; {detail}); choose "
                "smaller learning_rates"
            )
        chosen = scores.argmin(dim=1)
        selection = _gather_samples([candidates[int(c)] for c in chosen], splits)
        networks = SelectionNetworks(selection, [self.epochs] * splits, phase, pairs)
        selection_time = time.perf_counter() - started
        if log is not None:
            log(
                f"[uqkit]   {self.name}: step size, prior and temperature chosen on validation in "
                f"{selection_time:.1f} s"
            )
        full = split_data(table, [(train, train) for train, _ in table.splits])
        retraining = _Retraining(splits)
        for index in sorted(set(chosen.tolist())):
            these = (chosen == index).nonzero().flatten().tolist()
            self._retrain(full, these, grid[index], seed + 7, retraining, log)
        model = _gather_samples(retraining.parts, splits)
        validation_nll = [[v if math.isfinite(v) else None for v in row] for row in scores.tolist()]
        num_fit, num_train = phase.train_x.shape[1], full.train_x.shape[1]
        details = {
            "sampler": self.optimizer_name,
            "schedule": self.schedule_name,
            "chain_epochs": self.epochs,
            "samples_per_chain": stack_size(model) // splits,
            "num_data": {"selection": num_fit, "retraining": num_train},
            "steps_per_epoch": {
                "selection": math.ceil(num_fit / BATCH_SIZE),
                "retraining": math.ceil(num_train / BATCH_SIZE),
            },
            "sample_steps": retraining.kept_steps,
            **self.schedule_details(),
            "divergence": {
                "tolerance": self.divergence_tolerance,
                "window": "one epoch",
                "patience": DEFAULT_PATIENCE,
                "max_step_halvings": self.max_step_halvings,
                "selection": selection_events,
                "retraining": retraining.events,
                "retraining_learning_rate": retraining.learning_rates,
            },
        }
        return RegressionFit(
            model,
            stack_size(model) // splits,
            [grid[int(c)] for c in chosen],
            [self.epochs] * splits,
            validation_nll,
            networks,
            selection_time,
            grid,
            training_budget(self.optimizer_name, len(grid) * self.epochs, retraining.epochs),
            details,
        )

    def _retrain(
        self,
        phase,
        splits: list[int],
        config: dict[str, float],
        seed: int,
        retraining: _Retraining,
        log: Callable[[str], None] | None,
    ) -> None:
        """Run ``config``'s chains on ``splits`` of ``phase`` into ``retraining``; rerun the diverged ones
        at half the step size (:meth:`fit`)."""
        rate = config["learning_rate"]
        for halvings in range(self.max_step_halvings + 1):
            samples, chains = self.run_chains(
                phase, torch.tensor(splits), {**config, "learning_rate": rate}, seed, raise_on_nonfinite=False
            )
            retraining.kept_steps = chains.kept_steps
            per_chain = stack_size(samples) // len(splits)
            diverged = []
            for position, split in enumerate(splits):
                retraining.epochs[split] += self.epochs
                divergence = chains.divergence(position)
                if divergence is None:
                    retraining.parts[split] = _slice_stack(samples, position * per_chain, per_chain)
                    retraining.learning_rates[split] = rate
                    continue
                retraining.events[split].append({"learning_rate": rate, **_event(divergence)})
                diverged.append(split)
                if halvings == self.max_step_halvings:
                    raise ChainDivergenceError(
                        f"{self.name}: the chain of split {split} (0-based, of the {len(retraining.parts)} "
                        f"this fit trains) diverged in the retraining at step size {rate:g} (the chosen "
                        f"{config['learning_rate']:g} halved {halvings} times): {divergence.describe()} "
                        f"(epoch {divergence.step // chains.steps_per_epoch + 1}); choose smaller "
                        "learning_rates",
                        divergence,
                    )
                if log is not None:
                    log(
                        f"[uqkit]   {self.name}: split {split}'s chain diverged at step size {rate:g} "
                        f"({divergence.describe()}); its samples are discarded and it runs again at "
                        f"{rate / 2:g}"
                    )
            if not diverged:
                return
            splits, rate = diverged, rate / 2


def _event(divergence: Divergence) -> dict[str, Any]:
    """A divergence for ``details["divergence"]``: step, reason, loss and running level."""
    return {key: value for key, value in divergence.as_dict().items() if key != "chain"}


class _Retraining:
    """What the retraining of every split gathers: its samples, the step size they came from, its
    divergences and its epochs (reruns included)."""

    def __init__(self, splits: int) -> None:
        self.parts: list[dict[str, torch.Tensor] | None] = [None] * splits
        self.learning_rates: list[float | None] = [None] * splits
        self.events: list[list[dict[str, Any]]] = [[] for _ in range(splits)]
        self.epochs: list[int] = [0] * splits
        self.kept_steps: list[int] = []


class StackChains:
    """One SG-MCMC run of a stack of chains for :func:`uqkit.bench.regression_stack.train_stack` (its
    ``sampler``): the optimizer, the step size of each step, the states its thinning rule keeps, and the
    chains' divergence check (:class:`uqkit.sgmcmc.DivergenceMonitor`, one window per epoch).

    Args:
        make_optimizer: ``make_optimizer(params, num_data)`` builds the sampler.
        set_step: ``set_step(step, optimizer)`` sets the step size (and noise) of 0-based ``step``.
        thinning: ``thinning(step) -> bool``, which steps' states are kept.
        sampling: ``sampling(step) -> bool``, whether ``step`` is in a sampling stage (where a loss far
            above its running level is a divergence).
        steps_per_epoch: the monitor's window.
        tolerance: the monitor's tolerance (nats per example).
    """

    def __init__(
        self,
        make_optimizer: Callable[[Iterable[torch.Tensor], int], torch.optim.Optimizer],
        set_step: Callable[[int, torch.optim.Optimizer], None],
        thinning: Callable[[int], bool],
        sampling: Callable[[int], bool],
        steps_per_epoch: int,
        tolerance: float = DEFAULT_TOLERANCE,
    ) -> None:
        self.make_optimizer = make_optimizer
        self.set_step = set_step
        self.thinning = thinning
        self.sampling = sampling
        self.steps_per_epoch = steps_per_epoch
        self.tolerance = tolerance
        self.monitor: DivergenceMonitor | None = None
        self.kept: list[dict[str, torch.Tensor]] = []
        self.kept_steps: list[int] = []

    def optimizer(self, params: Iterable[torch.Tensor], num_data: int) -> torch.optim.Optimizer:
        return self.make_optimizer(params, num_data)

    def before_step(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        self.set_step(step, optimizer)

    def after_step(self, step: int, model: nn.Module, losses: torch.Tensor) -> None:
        if self.monitor is None:
            self.monitor = DivergenceMonitor(losses.numel(), self.steps_per_epoch, self.tolerance)
        self.monitor.update(step, losses, self.sampling(step))
        if self.thinning(step):
            self.kept.append({name: value.detach().clone() for name, value in model.state_dict().items()})
            self.kept_steps.append(step)

    def finish(self) -> None:
        """After the run's last step: judge the windows that ended it (:meth:`DivergenceMonitor.close`)."""
        if self.monitor is not None:
            self.monitor.close()

    def divergence(self, chain: int) -> Divergence | None:
        """Chain ``chain``'s divergence, or None if it ran clean (or nothing ran)."""
        events = [] if self.monitor is None else self.monitor.events
        return next((event for event in events if event.chain == chain), None)

    def samples(self, method: RegressionMethod, in_features: int) -> StackedGaussianMLP:
        """The kept states as one stack of ``chains * K`` networks, chain-major (chain ``c``'s ``K``
        samples are rows ``c K .. c K + K - 1``).

        Raises:
            RuntimeError: when the run kept no state (too short for its thinning rule).
        """
        if not self.kept:
            raise RuntimeError(f"{method.name}: the chain kept no sample; run it for more epochs")
        state = {
            name: torch.stack([sample[name] for sample in self.kept], dim=1).flatten(0, 1)
            for name in self.kept[0]
        }
        model = build_stack(method, torch.zeros(next(iter(state.values())).shape[0]), in_features)
        model.load_state_dict(state)
        return model.eval()


def _slice_stack(stack: StackedGaussianMLP, start: int, count: int) -> dict[str, torch.Tensor]:
    """Rows ``start .. start + count - 1`` of every stacked tensor of ``stack``."""
    return {name: value[start : start + count] for name, value in stack.state_dict().items()}


def _gather_samples(parts: list, splits: int) -> StackedGaussianMLP:
    """One split-major stack from each split's part: a stack whose first ``K`` rows are that split's
    (a selection candidate of all splits, row block ``split``) or a state dict of its ``K`` rows."""
    states = []
    for split, part in enumerate(parts):
        if isinstance(part, dict):
            states.append(part)
        else:
            per_split = stack_size(part) // splits
            states.append(_slice_stack(part, split * per_split, per_split))
    state = {name: torch.cat([s[name] for s in states]) for name in states[0]}
    rows, hidden, in_features = state["hidden.weight"].shape  # StackedLinear: [K, out, in]
    model = StackedGaussianMLP(rows, in_features, hidden)
    model.load_state_dict(state)
    return model.eval()


@dataclass(frozen=True)
class CyclicalSGMCMCRegression(SGMCMCRegressionMethod):
    """cSGHMC (Zhang et al. 2020) per split: :class:`uqkit.sgmcmc.SGHMC` under a cyclical cosine
    schedule, ``samples_per_cycle`` states spread over each cycle's sampling stage.

    Attributes:
        friction: SGHMC's ``alpha`` (``1 - momentum``).
        cycles: ``M`` cosine cycles over the chain.
        exploration: ``beta``, the fraction of each cycle without noise.
        samples_per_cycle: states kept per cycle, spread over its sampling stage (an epoch of a UCI table
            is 4 to 10 steps, so one epoch apart, as the classification twin keeps them, would be nearly
            the same state at the cycle's end, where the step size is close to 0).
    """

    friction: float = 0.1
    cycles: int = 4
    exploration: float = 0.8
    samples_per_cycle: int = 3
    optimizer_name: ClassVar[str] = "SGHMC"
    schedule_name: ClassVar[str] = "cyclical"

    def schedule(self, base_lr: float, total_steps: int) -> CyclicalSchedule:
        """The chain's schedule (``min(cycles, total_steps)`` cycles; in a run so short that a cycle's
        sampling stage would be empty, its last step samples)."""
        cycles = min(self.cycles, total_steps)
        length = math.ceil(total_steps / cycles)
        return CyclicalSchedule(base_lr, total_steps, cycles, min(self.exploration, (length - 1) / length))

    def chains(self, config: dict[str, float], total_steps: int, steps_per_epoch: int) -> StackChains:
        schedule = self.schedule(config["learning_rate"], total_steps)
        stage = schedule.cycle_length - schedule.sampling_start(0)
        thinning = CycleEnds(schedule, min(self.samples_per_cycle, max(stage, 1)))

        def make_optimizer(params: Iterable[torch.Tensor], num_data: int) -> SGHMC:
            return SGHMC(
                params,
                lr=config["learning_rate"],
                num_data=num_data,
                temperature=config["temperature"],
                prior_precision=config["prior_precision"],
                friction=self.friction,
            )

        return StackChains(
            make_optimizer,
            lambda step, optimizer: schedule.apply(optimizer, step),
            thinning,
            schedule.is_sampling,
            steps_per_epoch,
            self.divergence_tolerance,
        )

    def schedule_details(self) -> dict[str, Any]:
        return {
            "cycles": self.cycles,
            "exploration": self.exploration,
            "samples_per_cycle": self.samples_per_cycle,
            "friction": self.friction,
        }


@dataclass(frozen=True)
class SGLDRegression(SGMCMCRegressionMethod):
    """SGLD (Welling & Teh 2011) per split: the polynomially decaying step size ``lr (1 + t / s)^-gamma``
    (``s`` the steps of one epoch), a burn-in, then ``samples_kept`` states evenly spaced.

    Attributes:
        gamma: the decay exponent (:func:`uqkit.sgmcmc.polynomial_step_size`).
        burn_in_fraction: the fraction of the chain before the first sample.
        samples_kept: ``K``, evenly spaced over the steps after the burn-in.
    """

    gamma: float = 0.55
    burn_in_fraction: float = 0.5
    samples_kept: int = 12
    optimizer_name: ClassVar[str] = "SGLD"
    schedule_name: ClassVar[str] = "polynomial"

    def thinning(self, total_steps: int) -> EveryKSteps:
        """``samples_kept`` states evenly spaced after the burn-in, the last at the final step (fewer in a
        run shorter than that after its burn-in)."""
        sampling = max(1, total_steps - math.floor(self.burn_in_fraction * total_steps))
        every = max(1, sampling // self.samples_kept)
        return EveryKSteps(every, burn_in=total_steps - min(self.samples_kept, sampling) * every)

    def chains(self, config: dict[str, float], total_steps: int, steps_per_epoch: int) -> StackChains:
        base_lr = config["learning_rate"]

        def make_optimizer(params: Iterable[torch.Tensor], num_data: int) -> SGLD:
            return SGLD(
                params,
                lr=base_lr,
                num_data=num_data,
                temperature=config["temperature"],
                prior_precision=config["prior_precision"],
            )

        def set_step(step: int, optimizer: torch.optim.Optimizer) -> None:
            rate = polynomial_step_size(step, base_lr, steps_per_epoch, self.gamma)
            for group in optimizer.param_groups:
                group["lr"] = rate

        thinning = self.thinning(total_steps)
        return StackChains(
            make_optimizer,
            set_step,
            thinning,
            lambda step: step >= thinning.burn_in,
            steps_per_epoch,
            self.divergence_tolerance,
        )

    def schedule_details(self) -> dict[str, Any]:
        return {
            "gamma": self.gamma,
            "decay_steps": "one epoch",
            "burn_in_fraction": self.burn_in_fraction,
            "samples_kept": self.samples_kept,
        }


SGMCMC_BUDGET = 4
"""A chain's length in deterministic runs, as the classification twins' ``budget_multiple``."""
CHAIN_EPOCHS = SGMCMC_BUDGET * 400
"""A chain's epochs: 4 times the 400 epochs every regression method trains each configuration for while
choosing on validation (the protocol's cap), one cosine cycle of ``csgmcmc`` per deterministic run."""


def csgmcmc_recipe() -> dict[str, Any]:
    """``csgmcmc``'s grids and chain length (shared with ``csgmcmc-distilled``, which distils its samples)."""
    return {
        "learning_rates": (0.01, 0.03),
        "prior_precisions": (10.0, 30.0),
        "temperatures": (1.0, 0.3),
        "epochs": CHAIN_EPOCHS,
    }


register_regression_method(
    CyclicalSGMCMCRegression(
        "csgmcmc",
        f"cyclical SG-MCMC (Zhang et al. 2020): cSGHMC, friction 0.1, 4 cosine cycles over a {CHAIN_EPOCHS}-"
        "epoch chain (4 deterministic runs), 3 samples per cycle (12); heteroscedastic Gaussian likelihood, "
        "prior N(0, 1/lambda); step size in {0.01, 0.03}, lambda in {10, 30}, temperature in {1, 0.3} "
        "chosen on validation",
        **csgmcmc_recipe(),
    ),
    default=False,
)
register_regression_method(
    SGLDRegression(
        "sgld",
        f"SGLD (Welling & Teh 2011): step size decaying as (1 + t / epoch)^-0.55 over a {CHAIN_EPOCHS}-epoch "
        "chain (4 deterministic runs), 12 samples over its second half; heteroscedastic Gaussian "
        "likelihood, prior N(0, 1/lambda); step size in {0.1, 0.3}, lambda in {1, 10}, temperature in "
        "{1, 0.3} chosen on validation",
        learning_rates=(0.1, 0.3),
        prior_precisions=(1.0, 10.0),
        temperatures=(1.0, 0.3),
        epochs=CHAIN_EPOCHS,
    ),
    default=False,
)
