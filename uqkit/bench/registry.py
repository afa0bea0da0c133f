"""Methods behind one interface, and the registry that names them.

A method is built from the task (input shape, number of classes, backbone name, training-set size) and
gives two things: a training loss for a batch, and ``predict(x) -> Prediction`` with the leading sample or
member dimension of :class:`uqkit.Prediction`, which is :func:`uqkit.predict` of the method's network for
every method (the benchmark builds no prediction of its own). Both go through the method's
:class:`~uqkit.bench.likelihoods.Likelihood` (class logits by default; a regression task hands every method
the Gaussian one with :meth:`Method.use_likelihood`, and a method that is classification-only refuses it).
The trainer and the evaluation only ever talk to this interface, so a new method is one builder registered
here (or from another module with :func:`register_method`), and nothing else changes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from uqkit.bench.likelihoods import CATEGORICAL, Likelihood
from uqkit.bench.models import build_model
from uqkit.bench.upgrade import current_method_name
from uqkit.methods.prediction_protocol import predict
from uqkit.objectives import ELBO
from uqkit.prediction import Prediction

if TYPE_CHECKING:
    from uqkit.bench.trainer import TrainConfig

__all__ = [
    "METHODS",
    "TASK_METHODS",
    "Method",
    "MethodContext",
    "MethodEntry",
    "NotApplicableError",
    "build_method",
    "methods_for_task",
    "register_method",
    "register_task_methods",
]


@dataclass(frozen=True)
class MethodContext:
    """What a method builder knows about the task it is built for."""

    input_shape: tuple[int, ...]
    num_classes: int
    model: str
    num_train: int
    task: str = ""
    batch_size: int = 128  # training batch size (e.g. to express a schedule in epochs)
    training: TrainConfig | None = None  # the run's training configuration, for a method that trains more
    # networks than the trainer's one run (hyper-deep-ensemble's retraining stage); None outside a run


class NotApplicableError(ValueError):
    """A method cannot be built for this task or model; the message says why (e.g. a classification-only
    method on a regression task, or a model without the layer the method needs)."""


class Method(nn.Module):
    """Base class of benchmark methods.

    Subclasses keep the trained backbone in ``self.network`` (the trainer and checkpoints rely on the
    name when a method shares its training with another) and implement :meth:`training_loss`;
    :meth:`predict` is :func:`uqkit.predict` of ``self.network`` with ``S = num_samples``.

    Attributes:
        num_samples: ``S``, the leading dimension of the predictions (1 for a deterministic model).
        shares_training_with: name of a method whose trained ``network`` this one reuses as-is (same
            architecture, seed and training); the runner then copies that network instead of retraining.
        num_batch_orders: ``k``, the number of independent batch orders the trainer draws (1: one shuffle of
            the training set per epoch). With ``k > 1``, :meth:`training_loss` receives ``[k, B, ...]`` inputs
            and ``[k, B]`` labels, row ``j`` from the ``j``-th order (a deep ensemble's members, each
            shuffled independently).
        learning_rate_schedule: the method's own learning-rate schedule (one of
            :data:`uqkit.bench.trainer.SCHEDULES`), where validation chose another than the task's;
            ``None`` (default): the task's.
        likelihood: what the network's outputs mean (:data:`~uqkit.bench.likelihoods.CATEGORICAL` logits
            by default); set with :meth:`use_likelihood`.
        classification_only: why the method has no regression form (``None``: it has one, through its
            likelihood).
        select_best_epoch: whether the trainer ends with the state of the epoch of lowest validation NLL
            (default, :meth:`validation_nlls`) or, ``False``, with the last epoch's state (a sampler whose
            state is the samples it collected along the way). Validation is scored every epoch either way.
        budget_multiple: ``r >= 1``; the method trains ``r`` times the task's epochs (a method whose budget
            is that of ``r`` deterministic runs, e.g. cyclical SG-MCMC with ``r`` cycles). The runner applies
            it (:func:`uqkit.bench.runner._method_train_config`) and records it in the result block.
        optimizer_name: the optimizer's name for the result block (``"Adam"``, the trainer's, unless
            :meth:`make_optimizer` returns another).
        own_schedule: the name of the per-step schedule a method with its own optimizer applies itself (e.g.
            ``"cyclical"``), recorded as the result block's ``learning_rate_schedule``; ``None``: the
            trainer's.
        order_rows: ``None`` (default): one training set, ``[N, ...]`` tensors. Else ``[num_batch_orders]``
            rows of ``[R, N, ...]`` training and validation tensors (``R`` data sets of one size), batch
            order ``j`` drawing its batches from row ``order_rows[j]``: a stack of networks, each on its own
            split (:class:`uqkit.bench.regression_stack.StackedRegression`).
        validation_every: score on validation after every this many epochs and after the last (1, default:
            every epoch); ``None``: never (nothing to select, e.g. a retraining on all the training data).
        independent_parts: whether the parts of :meth:`validation_nlls` are trained independently (a stack
            of networks whose loss is the sum of theirs): a non-finite loss then spoils only the parts whose
            terms are not finite, which score ``inf`` and are never selected, and training goes on; ``False``
            (default): the trainer stops with :class:`~uqkit.bench.trainer.NonFiniteLossError`.
    """

    num_samples: int = 1
    shares_training_with: str | None = None
    num_batch_orders: int = 1
    learning_rate_schedule: str | None = None
    likelihood: Likelihood = CATEGORICAL
    classification_only: str | None = None
    select_best_epoch: bool = True
    budget_multiple: int = 1
    optimizer_name: str = "Adam"
    own_schedule: str | None = None
    order_rows: torch.Tensor | None = None
    validation_every: int | None = 1
    independent_parts: bool = False

    def use_likelihood(self, likelihood: Likelihood) -> None:
        """Train and predict with ``likelihood`` (every :class:`uqkit.ELBO` of the method scores its data
        term with it too).

        Raises:
            NotApplicableError: for a regression likelihood on a classification-only method.
        """
        if likelihood.kind != "classification" and self.classification_only is not None:
            raise NotApplicableError(f"classification only: {self.classification_only}")
        self.likelihood = likelihood
        for module in self.modules():
            if isinstance(module, ELBO):
                module.nll = None if likelihood.output is None else likelihood.loss

    def training_loss(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scalar loss of one training batch."""
        raise NotImplementedError(f"{type(self).__name__} must implement training_loss")

    def predict(self, inputs: torch.Tensor) -> Prediction:
        """Prediction with ``[S, B, C]`` logits (a :class:`uqkit.GaussianPrediction` for regression) for a
        batch of inputs: ``uqkit.predict(self.network, inputs, num_samples=self.num_samples)`` with the
        likelihood's ``output`` (members unfolded member-major, sampling layers sampled ``S / M`` times per
        member; see :func:`uqkit.predict`)."""
        return predict(self.network, inputs, num_samples=self.num_samples, output=self.likelihood.output)

    def parameter_groups(self, learning_rate: float) -> list[dict]:
        """Adam parameter groups for training at base ``learning_rate`` (default: one group, every parameter).

        A method whose parameters need their own step size (e.g. the posterior scales of a Bayesian
        network) returns several groups, each a dict with ``"params"`` and its ``"lr"``.
        """
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": learning_rate}]

    def validation_nlls(self, prediction: Prediction, labels: torch.Tensor) -> list[float]:
        """The validation NLL of each part the trainer selects an epoch for independently.

        Default: one part, the whole method, scored by the NLL of its predictive distribution. A method of
        independently trained members (a deep ensemble) returns one NLL per member, and implements
        :meth:`part_state` and :meth:`load_part_states` to match.
        """
        return [self.likelihood.nll(prediction, labels)]

    def part_state(self, index: int) -> dict[str, Any]:
        """A detached copy of part ``index``'s state (default: the whole state dict, extra states too)."""
        return {
            name: value.detach().clone() if isinstance(value, torch.Tensor) else copy.deepcopy(value)
            for name, value in self.state_dict().items()
        }

    def part_states(self, indices: list[int]) -> list[dict[str, Any]]:
        """:meth:`part_state` of each part of ``indices`` (the trainer's call; a method of many parts may
        copy them at once)."""
        return [self.part_state(index) for index in indices]

    def load_part_states(self, states: list[dict[str, Any]]) -> None:
        """Load the parts' states (from :meth:`part_state`), each possibly from another epoch."""
        self.load_state_dict(states[0])

    def result_details(self) -> dict[str, Any]:
        """Method-specific facts for ``results.json`` (the block's ``details``; default: none), e.g. how many
        networks a search trained; read after training and post-hoc fitting, also when a finished method is
        reloaded, so they must come from the method's state."""
        return {}

    def combine_rank_statistics(self, sum_over_ranks: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Called by the trainer in data-parallel training (``torchrun``, :mod:`uqkit.bench.distributed`) at
        the end of every epoch, before validation; default: nothing.

        A method whose training forward passes accumulate a statistic over their batch (SNGP's GP precision)
        holds, on each rank, the statistic of that rank's examples only; it makes it the statistic of all
        examples here, with ``sum_over_ranks(tensor)`` (the element-wise sum over the ranks, the same on
        every rank). Parameters need nothing: their gradients are averaged at every step.
        """

    def draw_batch_orders(self, num_examples: int, generators: list[torch.Generator]) -> torch.Tensor:
        """``[num_batch_orders, num_examples]``: this epoch's order of the training examples for each batch
        order, drawn from ``generators`` (one per order, order ``j``'s seeded with the run's seed plus ``j``,
        saved in the epoch checkpoints). Default: a ``torch.randperm`` per order from its own generator."""
        return torch.stack([torch.randperm(num_examples, generator=generator) for generator in generators])

    def score_validation(
        self, inputs: torch.Tensor, labels: torch.Tensor
    ) -> tuple[dict[str, float], list[float]] | None:
        """The method's own validation scoring, or ``None`` (default) for the trainer's: the predictive
        distribution in batches through the likelihood (its :meth:`~uqkit.bench.likelihoods.Likelihood.
        validation_metrics`) and :meth:`validation_nlls`.

        Called by the trainer in eval mode without gradients. Returns the history's validation numbers (e.g.
        ``{"val_nll": ...}``) and the validation NLL of each part, as :meth:`validation_nlls`.
        """
        return None

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        """Called by the trainer before each epoch (0-based ``epoch``); default: nothing.

        SNGP uses it to reset its precision matrix, so that after training it holds the last epoch's sum.
        """

    def make_optimizer(self, learning_rate: float) -> torch.optim.Optimizer | None:
        """The method's own optimizer, or ``None`` (default) for the trainer's Adam over
        :meth:`parameter_groups` at ``learning_rate`` with the task's learning-rate schedule.

        A method that returns an optimizer owns its step sizes: the trainer applies no schedule to it, and
        the method sets them in :meth:`on_step_start` (SG-MCMC's cyclical schedule). Its ``state_dict`` goes
        into the epoch checkpoints as Adam's does.
        """
        return None

    def on_epoch_end(self, epoch: int, num_epochs: int) -> None:
        """Called by the trainer after each epoch (1-based ``epoch``, after its validation and epoch
        selection); default: nothing. For a method that keeps states of its own (a stack whose networks end
        at different epochs)."""

    def on_step_start(self, step: int, total_steps: int, optimizer: torch.optim.Optimizer) -> None:
        """Called by the trainer before each training step (0-based global ``step`` of ``total_steps``, the
        batch not yet drawn through the model); default: nothing. For the method's own per-step schedule
        (it must be a function of ``step``, so that a resumed run repeats it)."""

    def on_step_end(self, step: int, total_steps: int) -> None:
        """Called by the trainer after each optimizer step (0-based global ``step`` of ``total_steps``);
        default: nothing. For a sampler that keeps the state after some steps (anything it keeps must be in
        its ``state_dict()``, which the epoch checkpoints save)."""

    def on_train_end(self) -> None:
        """Called once by the trainer when training is over (after the selected epoch's state is loaded,
        before the method is switched to eval mode); default: nothing. Not called when the runner reloads a
        finished method from its model file, so anything it changes must be in the ``state_dict()``."""

    def num_parameters(self) -> int:
        """The number of parameters the method predicts with (the result block's ``num_parameters``);
        default: every parameter of the method."""
        return sum(p.numel() for p in self.parameters())

    def fit_post_hoc(
        self,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        train: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        """Fit anything that is fitted after training (default: nothing).

        Args:
            inputs, labels: the validation split (held out from training): what a calibrator is fitted on.
            train: ``(inputs, labels)`` of the training split the network was trained on, for a method whose
                post-hoc part is a sum over the training data (the last-layer Laplace's curvature); the
                runner always passes it, ``None`` where no training data is at hand.
        """


@dataclass(frozen=True)
class MethodEntry:
    """A registered method: its builder, a one-line description, the tasks it applies to, and whether a run
    without ``--methods`` includes it (``default``; ``False``: opt-in, e.g. a method whose training budget is
    several deterministic runs)."""

    builder: Callable[[MethodContext], Method]
    description: str
    tasks: tuple[str, ...] | None = None  # None: every classification task
    default: bool = True


METHODS: dict[str, MethodEntry] = {}


def register_method(name: str, description: str, tasks: tuple[str, ...] | None = None, default: bool = True):
    """Decorator registering a builder ``MethodContext -> Method`` under ``name`` (``default=False``: run
    only when ``--methods`` names it)."""

    def decorate(builder: Callable[[MethodContext], Method]) -> Callable[[MethodContext], Method]:
        if name in METHODS:
            raise ValueError(f"method {name!r} is already registered")
        METHODS[name] = MethodEntry(builder, description, tasks, default)
        return builder

    return decorate


TASK_METHODS: dict[str, Callable[[bool], list[str]]] = {}
"""Tasks whose methods another registry lists (:func:`register_task_methods`): task -> ``lister(opt_in)``."""


def register_task_methods(tasks: Iterable[str], lister: Callable[[bool], list[str]]) -> None:
    """Let ``lister(opt_in)`` answer :func:`methods_for_task` for ``tasks``: a family of tasks whose
    methods are registered elsewhere (the UCI regression tasks: :mod:`uqkit.bench.regression`'s recipes).

    Raises:
        ValueError: for a task whose methods are listed already.
    """
    if not callable(lister):
        raise TypeError(f"lister: expected a callable lister(opt_in) -> names, got {type(lister).__name__}")
    tasks = list(tasks)
    taken = [task for task in tasks if task in TASK_METHODS]
    if taken:
        raise ValueError(f"tasks: the methods of {', '.join(taken)} are listed already")
    for task in tasks:
        TASK_METHODS[task] = lister


def methods_for_task(task: str, opt_in: bool = False) -> list[str]:
    """Names of the registered methods that apply to ``task``, in registration order: the ones a run
    without ``--methods`` trains, and with ``opt_in=True`` also those that run only when named
    (``register_method(..., default=False)``).

    For a task of a family registered with :func:`register_task_methods` (the regression tasks
    ``uci-boston``, ``uci-concrete``, ``uci``: the recipes of :data:`uqkit.bench.regression.
    REGRESSION_METHODS`, which share names with their classification twins) the family's lister answers.
    """
    if task in TASK_METHODS:
        return TASK_METHODS[task](opt_in)
    return [
        name
        for name, entry in METHODS.items()
        if (entry.tasks is None or task in entry.tasks) and (opt_in or entry.default)
    ]


def build_method(name: str, context: MethodContext) -> Method:
    """Build the registered method ``name`` for the task described by ``context`` (the old name of a renamed
    method builds it under its new one, with a ``DeprecationWarning``: :func:`uqkit.bench.upgrade.
    current_method_name`)."""
    name = current_method_name(name)
    if name not in METHODS:
        raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {name!r}")
    return METHODS[name].builder(context)


# --------------------------------------------------------------------------------------------------------
# The methods of the benchmark spine.


class SingleNetwork(Method):
    """One network trained on its likelihood (cross-entropy for classification); predicts with ``S = 1``."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def training_loss(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.likelihood.loss(self.network(inputs), labels)


class TemperatureScaled(SingleNetwork):
    """The deterministic network plus a :class:`~uqkit.calibration.TemperatureScaler` (Guo et al. 2017)
    fitted on the validation split held out from the training data."""

    shares_training_with = "deterministic"
    classification_only = "temperature scaling rescales class logits"

    def __init__(self, network: nn.Module) -> None:
        super().__init__(network)
        from uqkit.calibration import TemperatureScaler

        self.scaler = TemperatureScaler()

    def fit_post_hoc(
        self,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        train: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        """Fit the temperature on the validation split (``train`` is not used)."""
        with torch.no_grad():
            logits = self.network(inputs)
        self.scaler.fit(logits, labels)

    def predict(self, inputs: torch.Tensor) -> Prediction:
        """:func:`uqkit.predict` of the network with its logits divided by the fitted temperature."""
        return predict(self.network, inputs, num_samples=self.num_samples, output=self.scaler)


class MonteCarloDropout(SingleNetwork):
    """Dropout kept on at prediction time; ``S`` stochastic passes (Gal & Ghahramani 2016).

    The training loss is the paper's objective per example: the mean cross-entropy (dropout on) plus the KL
    term, an L2 penalty ``l^2 (1 - p) / (2 N)`` on the weights behind a dropout of rate ``p`` and
    ``l^2 / (2 N)`` on the biases and undropped layers (:func:`uqkit.nn.dropout.dropout_weight_decay`),
    with prior length-scale ``l`` and ``N`` training examples. The optimiser applies no weight decay.
    """

    def __init__(self, network: nn.Module, num_samples: int, length_scale: float, num_data: int) -> None:
        super().__init__(network)
        self.num_samples = num_samples
        self.length_scale = length_scale
        self.num_data = num_data

    def training_loss(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        from uqkit.nn.dropout import dropout_weight_decay

        penalty = dropout_weight_decay(self.network, self.length_scale, self.num_data)
        return super().training_loss(inputs, labels) + penalty


class DeepEnsembleMethod(Method):
    """``M`` independently initialised networks (Lakshminarayanan et al. 2017), predicting ``[M, B, C]``.

    The network returns ``[M * B, C]`` (members folded into the batch, member-major); :func:`uqkit.predict`
    unfolds it.

    The members run as one vectorized computation (:class:`uqkit.DeepEnsemble`, kept in ``self.network``).
    Each member is shuffled independently, as in the paper: ``num_batch_orders = M``, so the trainer hands
    member ``m`` its own batch (``[M, B, ...]`` inputs, ``[M, B]`` labels; order ``m`` is seeded with
    ``seed + m``). The training loss is the sum of the members' mean cross-entropies on their batches.
    Members share no parameters and Adam's update is per element, so this is exactly M independent
    trainings, member ``m`` with the batches of a single model trained with seed ``seed + m``.

    Recipe, chosen on the validation split of Fashion-MNIST (MLP, 10 epochs;
    ``benchmarks/ensemble_recipe.py``): a constant learning rate, and all members at the epoch of the
    *ensemble's* lowest validation NLL. Ensemble validation NLL, seeds 0 and 1 on the final code: that
    selection 0.2725 / 0.2592; each member at its own best epoch 0.2742 / 0.2611 (it picks under-trained
    members: epochs 7, 8, 5, 5, 5 for seed 0); constant, last epoch 0.2819 / 0.2613. Cosine decay (seed 0,
    before members were folded into the batch): last epoch 0.2717, members' best epochs 0.2686, against 0.2662
    for the constant rate with members' best epochs. ``select_members_separately = True`` keeps each member's
    own best epoch instead (the trainer then selects per member through :meth:`validation_nlls`).
    """

    learning_rate_schedule = "constant"
    select_members_separately = False

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.num_samples = network.num_members
        self.num_batch_orders = network.num_members

    def validation_nlls(self, prediction: Prediction, labels: torch.Tensor) -> list[float]:
        """The ensemble's validation NLL; with ``select_members_separately``, each member's own (``[M, B, C]``
        logits, row ``m`` member ``m``)."""
        if not self.select_members_separately:
            return super().validation_nlls(prediction, labels)
        return self.likelihood.member_nlls(prediction, labels)

    def part_state(self, index: int) -> dict[str, Any]:
        """The whole state; with ``select_members_separately``, member ``index``'s slice of every stacked
        parameter and buffer of the network (all carry a leading ``M``; the method's own extra state, if any,
        is not per member and stays as it is)."""
        if not self.select_members_separately:
            return super().part_state(index)
        state = self.network.state_dict()
        members = self.network.num_members
        odd = [name for name, tensor in state.items() if tensor.dim() == 0 or tensor.shape[0] != members]
        if odd:
            raise ValueError(
                f"deep ensemble: expected every parameter and buffer to carry a leading member dimension of "
                f"{members}, got {odd}"
            )
        return {name: tensor[index].detach().clone() for name, tensor in state.items()}

    def load_part_states(self, states: list[dict[str, Any]]) -> None:
        """Load the state; with ``select_members_separately``, the members' (``m`` from ``states[m]``)."""
        if not self.select_members_separately:
            super().load_part_states(states)
            return
        self.network.load_state_dict(
            {name: torch.stack([state[name] for state in states]) for name in states[0]}
        )

    def training_loss(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Sum of the members' mean NLLs (cross-entropies for classification); ``[M, B, ...]`` inputs with
        ``[M, B]`` labels (a batch per member, folded into the batch inside ``pretiled()``) or ``[B, ...]``
        with ``[B]`` (tiled). Regression targets carry their ``D`` as a last dimension."""
        from uqkit.nn.members import fold_members, pretiled, tile_members

        members = self.network.num_members
        if labels.dim() == (2 if self.likelihood.kind == "classification" else 3):
            with pretiled():
                logits = self.network(fold_members(inputs))  # [M * B, C], member-major
            labels = fold_members(labels)
        else:
            logits, labels = self.network(inputs), tile_members(labels, members)
        return members * self.likelihood.loss(logits, labels)  # mean over M * B, times M: sum of the means


MC_DROPOUT_RATE = 0.1
MC_DROPOUT_SAMPLES = 10
MC_DROPOUT_LENGTH_SCALE = 1e-2
"""Prior length-scale ``l`` of MC dropout's weight decay, the value of Gal's reference code."""
ENSEMBLE_MEMBERS = 5


def _backbone(context: MethodContext, dropout=None) -> nn.Module:
    return build_model(context.model, context.input_shape, context.num_classes, dropout=dropout)


@register_method("deterministic", "one network, softmax probabilities")
def _deterministic(context: MethodContext) -> Method:
    return SingleNetwork(_backbone(context))


@register_method("temperature-scaled", "the deterministic network + temperature scaling fitted on validation")
def _temperature_scaled(context: MethodContext) -> Method:
    return TemperatureScaled(_backbone(context))


@register_method(
    "mc-dropout", f"MC dropout, rate {MC_DROPOUT_RATE}, {MC_DROPOUT_SAMPLES} samples (Gal & Ghahramani 2016)"
)
def _mc_dropout(context: MethodContext) -> Method:
    from uqkit.nn import MCDropout

    network = _backbone(context, dropout=lambda: MCDropout(MC_DROPOUT_RATE))
    return MonteCarloDropout(network, MC_DROPOUT_SAMPLES, MC_DROPOUT_LENGTH_SCALE, context.num_train)


@register_method(
    "deep-ensemble", f"{ENSEMBLE_MEMBERS} networks, independent initialisations (Lakshminarayanan 2017)"
)
def _deep_ensemble(context: MethodContext) -> Method:
    from uqkit.methods.ensemble import DeepEnsemble

    network = DeepEnsemble(lambda: _backbone(context), ENSEMBLE_MEMBERS)
    return DeepEnsembleMethod(network)
