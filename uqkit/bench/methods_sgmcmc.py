"""SG-MCMC benchmark methods: ``sgld`` and ``csgmcmc`` (classification).

Importing this module registers both in :data:`uqkit.bench.registry.METHODS`, for every classification task
and its backbone, as *opt-in* methods (``default=False``: they run when ``--methods`` names them, since each
trains for the budget of several deterministic runs).

Both train one network (the chain) with an SG-MCMC optimizer of :mod:`uqkit.sgmcmc` on the mean
cross-entropy of each batch (``num_data`` the training-set size, so that the chain targets the posterior of
the whole training set), keep thinned states on the way in a :class:`uqkit.sgmcmc.SampleCollector`, and
predict with those ``K`` samples as one member-vectorized model: after training, ``method.network`` is the
collector, and ``uqkit.predict(method.network, x)`` gives ``[K, B, C]`` logits. There is no epoch selection
(``select_best_epoch = False``): the samples are what the chain visited. Both take ``budget_multiple = 4``
times the task's epochs (the budget of 4 deterministic runs; a 5-member deep ensemble costs 5) and ignore
the task's Adam learning rate (their step sizes are SGD-style rates on the mean loss, below).

* ``csgmcmc`` (Zhang et al. 2020, "Cyclical stochastic gradient MCMC for Bayesian deep learning"): cSGHMC,
  :class:`uqkit.sgmcmc.SGHMC` under :class:`uqkit.sgmcmc.CyclicalSchedule` with ``M = 4`` cosine cycles
  (one per deterministic run's budget), each an exploration stage without noise (the first ``beta = 0.8``
  of the cycle: momentum SGD) and a sampling stage with noise, and 4 samples per cycle kept at the ends of
  the cycle's last 4 epochs (:class:`uqkit.sgmcmc.CycleEnds` with one epoch's steps between samples), as
  Zhang et al.'s code keeps the last epochs' states of each cycle: ``K = 16``.
* ``sgld`` (Welling & Teh 2011): :class:`uqkit.sgmcmc.SGLD` with noise at every step and the paper's
  polynomially decaying step size (:func:`uqkit.sgmcmc.polynomial_step_size`, ``gamma = 0.55``, decay scale
  one epoch); the first half of the budget is burn-in, and the second half keeps ``K = 12`` states evenly
  spaced (:class:`uqkit.sgmcmc.EveryKSteps`). Same budget as ``csgmcmc`` (Zhang et al.'s comparison).

The Gaussian prior is a weight decay ``w`` on the mean loss, precision ``w N``. ``csgmcmc``'s settings were
chosen on the Fashion-MNIST validation split (never on test) by ``benchmarks/sgmcmc_recipe.py``, LeNet-5,
20-epoch task (80 epochs), seed 0; validation NLL of the samples (docs/sgmcmc.md has the table):

* prior ``w``, at ``T = 1`` and 3 samples per cycle: 0.227 / **0.221** / 0.228 at ``w`` = 5e-4 (Zhang et
  al.'s) / 1e-3 / 2e-3: a weaker prior overfits in the later cycles, a stronger one makes the cycles alike;
* temperature, at ``w = 5e-4`` and 3 samples per cycle: ``T = 0.1`` (a cold posterior) 0.233 against 0.227
  at ``T = 1``: without augmentation the noise's diversity is worth more than the sharper samples;
* samples per cycle (scored from one run), at ``w = 1e-3``: 0.221 / 0.221 / 0.221 / **0.220** with 1 / 2 /
  3 / 4;
* step size, at ``w = 5e-4``: 0.227 at 0.1 against 0.344 at 0.3 (and, at a small scale, 4 epochs on 12,000
  examples: 0.632 / 0.507 / 0.504 at 0.02 / 0.05 / 0.1).

Friction (Zhang et al.'s momentum form), the exploration fraction and ``sgld``'s settings (``w = 5e-4``,
``T = 1``) were not swept.

Divergence: both watch the chain's training loss (:class:`uqkit.sgmcmc.DivergenceMonitor`, one window per
epoch) and stop the run with a :class:`~uqkit.bench.divergence.ChainDivergenceError` (a
:class:`~uqkit.bench.trainer.NonFiniteLossError`) naming the method, epoch, step and step size when the
loss is non-finite, or when the epoch-mean loss in the sampling stage (``csgmcmc``: the last 20% of each
cycle; ``sgld``: after the burn-in) stays more than ``divergence_tolerance`` (2 nats) above the lowest epoch
mean the chain has reached for 2 epochs in a row, or up to the stage's end. The run fails rather than
recovering: here the step size is a fixed recipe, not chosen on validation, so a divergence means the
recipe does not suit the task (docs/sgmcmc.md).

A subclass (e.g. a distilled student of the samples) overrides :meth:`SGMCMCMethod.fit_post_hoc` and
:meth:`SGMCMCMethod.predict`; the samples' own prediction stays available as
:meth:`SGMCMCMethod.predict_with_samples`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from uqkit._validation import check_positive_float
from uqkit.bench.distributed import world_size
from uqkit.bench.divergence import ChainDivergenceError
from uqkit.bench.models import build_model
from uqkit.bench.registry import Method, MethodContext, register_method
from uqkit.methods.prediction_protocol import predict
from uqkit.prediction import GaussianPrediction, Prediction
from uqkit.sgmcmc import (
    SGHMC,
    SGLD,
    CycleEnds,
    CyclicalSchedule,
    EveryKSteps,
    SampleCollector,
    polynomial_step_size,
)
from uqkit.sgmcmc.divergence import DEFAULT_TOLERANCE, Divergence, DivergenceMonitor

__all__ = ["CyclicalSGMCMC", "SGLDChain", "SGMCMCMethod"]

SGMCMC_BUDGET = 4
"""Training budget of both methods in deterministic runs (the task's epochs times this)."""
PRIOR_WEIGHT_DECAY = 5e-4
"""The Gaussian prior as a weight decay on the mean loss: ``prior_precision = N * PRIOR_WEIGHT_DECAY``."""
CSGMCMC_CYCLES = 4
CSGMCMC_SAMPLES_PER_CYCLE = 4
CSGMCMC_EXPLORATION = 0.8
CSGMCMC_LR = 0.1
CSGMCMC_FRICTION = 0.1
CSGMCMC_TEMPERATURE = 1.0
CSGMCMC_WEIGHT_DECAY = 1e-3
SGLD_SAMPLES = 12
SGLD_LR = 0.1
SGLD_GAMMA = 0.55
SGLD_BURN_IN_FRACTION = 0.5
SGLD_TEMPERATURE = 1.0


class SGMCMCMethod(Method):
    """One network sampled by an SG-MCMC optimizer; predicts with the kept samples as one vectorized model.

    ``self.chain`` is the network the optimizer updates; ``self.network`` is the
    :class:`uqkit.sgmcmc.SampleCollector` of its samples. While the trainer runs (from the first step to
    :meth:`on_train_end`) and while no sample is kept, :meth:`predict` uses the chain (the trainer's
    per-epoch validation history is the chain's); otherwise the samples, ``S = K``. So a method rebuilt from
    its saved ``state_dict`` predicts with its samples, and so does a method that reuses this one's training
    (``shares_training_with``: the runner copies ``network``, i.e. the samples, into it).

    Subclasses implement :meth:`make_optimizer`, :meth:`on_step_start` (the step size and noise of a step)
    and :meth:`thinning` (which steps are kept), each a function of the global step and the run's length
    only, so that a run resumed from an epoch checkpoint (which holds the chain, the optimizer's momentum,
    the samples kept so far and the random generators) continues exactly.

    Args:
        network: the backbone (the chain's starting point).
        num_data: ``N``, the training-set size.
        steps_per_epoch: training steps per epoch (to express spacings in epochs).
        temperature: ``T`` of the sampler (1: the posterior).
        weight_decay: ``w >= 0``, the Gaussian prior as a weight decay on the mean loss: precision ``w N``.
        divergence_tolerance: ``> 0`` nats per example above the chain's running level at which an epoch's
            mean loss in the sampling stage stops the run (:meth:`on_step_end`).
    """

    method_name = "sg-mcmc"
    """The benchmark method's name, for error messages."""

    select_best_epoch = False
    budget_multiple = SGMCMC_BUDGET
    classification_only = (
        "the SG-MCMC methods' step sizes, prior and temperature were chosen on classification only"
    )

    def __init__(
        self,
        network: nn.Module,
        num_data: int,
        steps_per_epoch: int,
        temperature: float,
        weight_decay: float = PRIOR_WEIGHT_DECAY,
        divergence_tolerance: float = DEFAULT_TOLERANCE,
    ) -> None:
        super().__init__()
        self.chain = network
        self.network = SampleCollector(network)
        self._sampling = False
        self.num_data = int(num_data)
        self.steps_per_epoch = int(steps_per_epoch)
        self.temperature = float(temperature)
        self.weight_decay = check_positive_float(weight_decay, "weight_decay", allow_zero=True)
        self.prior_precision = self.weight_decay * self.num_data
        self.divergence_tolerance = check_positive_float(divergence_tolerance, "divergence_tolerance")
        self._monitor: DivergenceMonitor | None = None
        self._step_loss: torch.Tensor | None = None
        self._step = 0
        self._step_size = 0.0

    @property
    def num_samples(self) -> int:  # type: ignore[override]
        """``K`` when predicting with the samples, 1 (the chain) while training or before any sample."""
        return 1 if self._uses_chain() else self.network.num_samples

    def _uses_chain(self) -> bool:
        return self._sampling or self.network.num_samples == 0

    @property
    def num_collected(self) -> int:
        """The samples kept so far."""
        return self.network.num_samples

    def training_loss(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The mean NLL of the batch under the chain (the optimizer scales it by ``N`` and adds the prior).

        Raises:
            ChainDivergenceError: for a non-finite loss while training.
        """
        loss = self.likelihood.loss(self.chain(inputs), labels)
        if self._sampling:  # training: the trainer's steps, watched by on_step_end
            self._step_loss = loss.detach()
            if not torch.isfinite(self._step_loss):
                level = math.inf if self._monitor is None else float(self._monitor.level[0])
                self._diverged(Divergence(0, self._step, "non-finite", float(self._step_loss), level))
        return loss

    def _sum_over_ranks(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum over the data-parallel ranks (on the chain's device, for NCCL), so that every rank judges
        the same epoch mean."""
        import torch.distributed as dist

        total = tensor.to(next(self.chain.parameters()).device).clone()
        dist.all_reduce(total)
        return total.cpu()

    def is_sampling(self, step: int, total_steps: int) -> bool:
        """Whether ``step`` of a run of ``total_steps`` is in the sampling stage (subclasses)."""
        raise NotImplementedError(f"{type(self).__name__} must implement is_sampling")

    def _diverged(self, divergence: Divergence) -> None:
        epoch, within = divmod(divergence.step, self.steps_per_epoch)
        raise ChainDivergenceError(
            f"method {self.method_name!r}: the chain diverged at epoch {epoch + 1}, step {within + 1} "
            f"(global step {divergence.step}), step size {self._step_size:.3g}: {divergence.describe()}; "
            f"lower its base_lr (now {getattr(self, 'base_lr', None)}) or its temperature",
            divergence,
        )

    def thinning(self, total_steps: int):
        """The rule ``rule(step) -> bool`` for a run of ``total_steps`` steps (subclasses)."""
        raise NotImplementedError(f"{type(self).__name__} must implement thinning")

    def _plan(self, total_steps: int) -> None:
        """Give the collector its thinning rule for a run of ``total_steps`` (once per run length)."""
        self._sampling = True
        if getattr(self, "_planned_steps", None) != total_steps:
            self.network.thinning = self.thinning(total_steps)
            self._planned_steps = total_steps

    def on_step_start(self, step: int, total_steps: int, optimizer: torch.optim.Optimizer) -> None:
        """Note the step and its step size (subclasses set the step size, then call this)."""
        self._step = step
        self._step_size = float(optimizer.param_groups[0]["lr"])

    def on_step_end(self, step: int, total_steps: int) -> None:
        """Check the step's loss for a divergence, then keep the chain's state if the thinning rule picks
        ``step``.

        Raises:
            ChainDivergenceError: when the epoch that ``step`` ends makes a blow-up: in the sampling stage,
                epoch-mean losses more than :attr:`divergence_tolerance` above the lowest epoch mean so far
                for 2 epochs in a row, or up to the stage's end (:class:`uqkit.sgmcmc.DivergenceMonitor`).
        """
        self._plan(total_steps)
        if self._step_loss is not None:
            if self._monitor is None:
                reduce = self._sum_over_ranks if world_size() > 1 else None
                self._monitor = DivergenceMonitor(
                    1, self.steps_per_epoch, self.divergence_tolerance, reduce=reduce
                )
            if self._monitor.update(step, self._step_loss, self.is_sampling(step, total_steps)):
                self._diverged(self._monitor.events[-1])
            self._step_loss = None
        self.network.step(step)

    def on_train_end(self) -> None:
        """From now on, predict with the samples.

        Raises:
            ChainDivergenceError: when the run ended in a blow-up (its last epochs above the tolerance).
            RuntimeError: when the run kept no sample (too short for the thinning rule).
        """
        if self._monitor is not None and self._monitor.close():
            self._diverged(self._monitor.events[-1])
        if self.network.num_samples == 0:
            raise RuntimeError(
                f"{type(self).__name__}: the run kept no sample; train for more epochs (the samples are "
                "kept in the second part of the run)"
            )
        self._sampling = False

    def predict_with_samples(self, inputs: torch.Tensor) -> Prediction | GaussianPrediction:
        """:func:`uqkit.predict` of the samples' vectorized model: ``[K, B, C]`` logits."""
        return predict(self.network, inputs, output=self.likelihood.output)

    def predict(self, inputs: torch.Tensor) -> Prediction | GaussianPrediction:
        """The samples' prediction; the chain's (``S = 1``) while training or before any sample."""
        if self._uses_chain():
            return predict(self.chain, inputs, output=self.likelihood.output)
        return self.predict_with_samples(inputs)

    def num_parameters(self) -> int:
        """The chain's parameters plus the ``K`` stored samples' (``(K + 1) P``)."""
        return (self.network.num_samples + 1) * sum(p.numel() for p in self.chain.parameters())


class CyclicalSGMCMC(SGMCMCMethod):
    """cSGHMC (Zhang et al. 2020): :class:`uqkit.sgmcmc.SGHMC` under a :class:`uqkit.sgmcmc.CyclicalSchedule`
    of ``num_cycles`` cycles, ``samples_per_cycle`` states kept at the ends of each cycle's last epochs.

    Args:
        network, num_data, steps_per_epoch, temperature, weight_decay: as :class:`SGMCMCMethod`.
        base_lr: ``alpha_0``, each cycle's initial step size (on the mean loss).
        friction: SGHMC's ``alpha`` (``1 - momentum``).
        num_cycles: ``M``.
        exploration: ``beta``, the fraction of each cycle without noise.
        samples_per_cycle: states kept per cycle, one epoch apart, the last at the cycle's end (closer when
            a cycle's sampling stage is shorter than that, e.g. in a 1-epoch ``--quick`` run).
    """

    optimizer_name = "SGHMC"
    own_schedule = "cyclical"
    method_name = "csgmcmc"

    def __init__(
        self,
        network: nn.Module,
        num_data: int,
        steps_per_epoch: int,
        temperature: float = CSGMCMC_TEMPERATURE,
        base_lr: float = CSGMCMC_LR,
        friction: float = CSGMCMC_FRICTION,
        num_cycles: int = CSGMCMC_CYCLES,
        exploration: float = CSGMCMC_EXPLORATION,
        samples_per_cycle: int = CSGMCMC_SAMPLES_PER_CYCLE,
        weight_decay: float = CSGMCMC_WEIGHT_DECAY,
    ) -> None:
        super().__init__(network, num_data, steps_per_epoch, temperature, weight_decay)
        self.base_lr = base_lr
        self.friction = friction
        self.num_cycles = num_cycles
        self.exploration = exploration
        self.samples_per_cycle = samples_per_cycle

    def schedule(self, total_steps: int) -> CyclicalSchedule:
        """The run's cyclical schedule (``min(num_cycles, total_steps)`` cycles; in a run so short that a
        cycle's sampling stage would be empty, its last step samples)."""
        cycles = min(self.num_cycles, total_steps)
        length = math.ceil(total_steps / cycles)
        exploration = min(self.exploration, (length - 1) / length)
        return CyclicalSchedule(self.base_lr, total_steps, cycles, exploration)

    def thinning(self, total_steps: int) -> CycleEnds:
        """``samples_per_cycle`` states at the end of each cycle, one epoch apart where the stage allows."""
        schedule = self.schedule(total_steps)
        stage = schedule.cycle_length - schedule.sampling_start(0)
        fits = (self.samples_per_cycle - 1) * self.steps_per_epoch + 1 <= stage
        per_cycle = min(self.samples_per_cycle, max(stage, 1))
        return CycleEnds(schedule, per_cycle, self.steps_per_epoch if fits else None)

    def make_optimizer(self, learning_rate: float) -> torch.optim.Optimizer:
        """SGHMC over the chain's parameters (``learning_rate``, the task's Adam rate, is not used)."""
        return SGHMC(
            self.chain.parameters(),
            lr=self.base_lr,
            num_data=self.num_data,
            temperature=self.temperature,
            prior_precision=self.prior_precision,
            friction=self.friction,
        )

    def on_step_start(self, step: int, total_steps: int, optimizer: torch.optim.Optimizer) -> None:
        """The step size of Zhang et al.'s Eq. 1; noise only in the sampling stage."""
        self._plan(total_steps)
        self.schedule(total_steps).apply(optimizer, step)
        super().on_step_start(step, total_steps, optimizer)

    def is_sampling(self, step: int, total_steps: int) -> bool:
        """Whether ``step`` is in its cycle's sampling stage."""
        return self.schedule(total_steps).is_sampling(step)


class SGLDChain(SGMCMCMethod):
    """SGLD (Welling & Teh 2011): a polynomially decaying step size, a burn-in, then evenly thinned samples.

    Args:
        network, num_data, steps_per_epoch, temperature, weight_decay: as :class:`SGMCMCMethod`.
        base_lr: the step size at step 0 (on the mean loss).
        gamma: the decay exponent of :func:`uqkit.sgmcmc.polynomial_step_size` (decay scale: one epoch).
        num_samples_kept: ``K``, evenly spaced over the steps after the burn-in.
        burn_in_fraction: the fraction of the run before the first sample.
    """

    optimizer_name = "SGLD"
    own_schedule = "polynomial"
    method_name = "sgld"

    def __init__(
        self,
        network: nn.Module,
        num_data: int,
        steps_per_epoch: int,
        temperature: float = SGLD_TEMPERATURE,
        base_lr: float = SGLD_LR,
        gamma: float = SGLD_GAMMA,
        num_samples_kept: int = SGLD_SAMPLES,
        burn_in_fraction: float = SGLD_BURN_IN_FRACTION,
        weight_decay: float = PRIOR_WEIGHT_DECAY,
    ) -> None:
        super().__init__(network, num_data, steps_per_epoch, temperature, weight_decay)
        self.base_lr = base_lr
        self.gamma = gamma
        self.num_samples_kept = num_samples_kept
        self.burn_in_fraction = burn_in_fraction

    def thinning(self, total_steps: int) -> EveryKSteps:
        """``K`` states evenly spaced after the burn-in, the last at the final step (fewer in a run shorter
        than ``K`` steps after its burn-in)."""
        sampling = max(1, total_steps - math.floor(self.burn_in_fraction * total_steps))
        every = max(1, sampling // self.num_samples_kept)
        kept = min(self.num_samples_kept, sampling)
        return EveryKSteps(every, burn_in=total_steps - kept * every)

    def make_optimizer(self, learning_rate: float) -> torch.optim.Optimizer:
        """SGLD over the chain's parameters (``learning_rate``, the task's Adam rate, is not used)."""
        return SGLD(
            self.chain.parameters(),
            lr=self.base_lr,
            num_data=self.num_data,
            temperature=self.temperature,
            prior_precision=self.prior_precision,
        )

    def on_step_start(self, step: int, total_steps: int, optimizer: torch.optim.Optimizer) -> None:
        """``lr_t = base_lr (1 + t / steps_per_epoch)^-gamma`` (Welling & Teh's ``a (b + t)^-gamma``)."""
        self._plan(total_steps)
        rate = polynomial_step_size(step, self.base_lr, self.steps_per_epoch, self.gamma)
        for group in optimizer.param_groups:
            group["lr"] = rate
        super().on_step_start(step, total_steps, optimizer)

    def is_sampling(self, step: int, total_steps: int) -> bool:
        """Whether ``step`` is past the burn-in."""
        return step >= self.thinning(total_steps).burn_in


def steps_per_epoch(context: MethodContext) -> int:
    """Optimizer steps in one epoch of the task: ``ceil(num_train / batch_size)``, at least 1 (the
    schedules of the SG-MCMC methods and their distilled forms count in epochs)."""
    return max(1, math.ceil(context.num_train / context.batch_size))


@register_method(
    "csgmcmc",
    f"cyclical SG-MCMC (Zhang et al. 2020): cSGHMC, {CSGMCMC_CYCLES} cycles over {SGMCMC_BUDGET}x the "
    f"task's epochs, {CSGMCMC_SAMPLES_PER_CYCLE} samples per cycle "
    f"(K = {CSGMCMC_CYCLES * CSGMCMC_SAMPLES_PER_CYCLE}), lr {CSGMCMC_LR}, friction {CSGMCMC_FRICTION}, "
    f"T = {CSGMCMC_TEMPERATURE:g}, exploration {CSGMCMC_EXPLORATION}, prior weight decay "
    f"{CSGMCMC_WEIGHT_DECAY:g}",
    default=False,
)
def _csgmcmc(context: MethodContext) -> Method:
    network = build_model(context.model, context.input_shape, context.num_classes)
    return CyclicalSGMCMC(network, context.num_train, steps_per_epoch(context))


@register_method(
    "sgld",
    f"SGLD (Welling & Teh 2011), polynomial step decay from lr {SGLD_LR}, {SGMCMC_BUDGET}x the task's "
    f"epochs, {SGLD_SAMPLES} samples over the second half, T = {SGLD_TEMPERATURE:g}",
    default=False,
)
def _sgld(context: MethodContext) -> Method:
    network = build_model(context.model, context.input_shape, context.num_classes)
    return SGLDChain(network, context.num_train, steps_per_epoch(context))
