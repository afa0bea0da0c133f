"""A stack of Gaussian-head networks trained as one :class:`~uqkit.bench.registry.Method` by the one trainer.

The UCI protocol trains many tiny networks (splits x hyper-parameter configurations x ensemble members,
each one hidden layer of 50 units). :class:`StackedRegression` holds all ``K`` of them as one
:class:`~uqkit.nn.StackedGaussianMLP` (or :class:`~uqkit.nn.StackedBayesianLastLayerMLP`), network ``k``
trained on its own split with its own configuration; :func:`train_stack` trains it with
:func:`uqkit.bench.trainer.train_method`, as any other method:

* data: the splits' ``[P, N, D]`` inputs, one batch order per network (``order_rows``: network ``k``'s
  batches from its own split's rows), the ``K`` orders drawn as one ``torch.rand(K, N).argsort`` per epoch;
* loss: the sum over networks of each network's mean (beta-)NLL on its batch (plus its adversarial term,
  dropout weight decay, L2, or NCP term; a Flipout stack's negative ELBO per example, :class:`uqkit.ELBO`,
  without warm-up), so that every network gets exactly the gradient it would get alone;
* optimizer: :class:`StackedAdam` (Adam with a learning rate per network; ``torch.optim.Adam`` gives one
  tensor one rate), or an SG-MCMC sampler of the stack (:class:`StackSampler`);
* validation: every ``validation_every`` epochs, the NLL of each group of ``group_size`` networks (a split's
  configuration: its members' moment-matched mixture, or each network alone at its posterior mean); the
  trainer keeps each group at its epoch of lowest validation NLL (:meth:`StackedRegression.part_state`);
* a network that diverges (non-finite loss) while a grid is scored only spoils its own slice and its group
  scores ``inf`` (``independent_parts``); after the choice, a divergence stops training.

Models never interact, so this is exactly the set of independent trainings, at the cost of a handful of
batched products per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from uqkit.bench.likelihoods import GAUSSIAN, Likelihood
from uqkit.bench.registry import Method, NotApplicableError
from uqkit.bench.trainer import NonFiniteLossError, TrainConfig, TrainResult, train_method
from uqkit.data.uci import RegressionTable, Standardizer
from uqkit.methods.ncp import expected_gaussian_nll, output_prior_divergence
from uqkit.nn import use_posterior_mean
from uqkit.nn.priors import NormalPrior
from uqkit.nn.stacked import StackedBayesianLastLayerMLP, StackedGaussianMLP
from uqkit.objectives import ELBO, gaussian_nll_loss
from uqkit.prediction import GaussianPrediction

if TYPE_CHECKING:
    from uqkit.bench.regression import RegressionMethod

__all__ = [
    "BATCH_SIZE",
    "HIDDEN_UNITS",
    "SplitData",
    "StackSampler",
    "StackedAdam",
    "StackedRegression",
    "build_stack",
    "group_nll",
    "sample_stack",
    "split_data",
    "stack_size",
    "train_stack",
]

BATCH_SIZE = 100
HIDDEN_UNITS = 50
_HALF_LOG_TWO_PI = 0.5 * math.log(2.0 * math.pi)
SCORINGS = ("predictive", "posterior-mean")


# ---------------------------------------------------------------------------------------------------------
# Adam with one learning rate per stacked network
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
# Data: each split standardised with its own training rows
# ---------------------------------------------------------------------------------------------------------
@dataclass
class SplitData:
    """The data of one phase of the protocol, standardised per split: ``[P, N, D]`` training inputs and
    ``[P, N, 1]`` targets, ``[P, V, D]`` and ``[P, V, 1]`` evaluation rows (validation while choosing;
    the training rows again when retraining), and each split's :class:`~uqkit.data.Standardizer`."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    eval_x: torch.Tensor
    eval_y: torch.Tensor
    standardizers: list[Standardizer]


def split_data(table: RegressionTable, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> SplitData:
    """Standardise each ``(train, eval)`` index pair of ``table`` with its training rows' statistics and
    stack them (the pairs must hold training sets of one size, and evaluation sets of one size)."""
    train_x, train_y, eval_x, eval_y, standardizers = [], [], [], [], []
    for train_index, eval_index in pairs:
        standardizer = Standardizer(table.inputs[train_index], table.targets[train_index])
        standardizers.append(standardizer)
        train_x.append(standardizer.inputs(table.inputs[train_index]))
        train_y.append(standardizer.targets(table.targets[train_index]))
        eval_x.append(standardizer.inputs(table.inputs[eval_index]))
        eval_y.append(standardizer.targets(table.targets[eval_index]))
    dtype = torch.get_default_dtype()
    return SplitData(
        torch.stack(train_x).to(dtype),
        torch.stack(train_y).to(dtype),
        torch.stack(eval_x).to(dtype),
        torch.stack(eval_y).to(dtype),
        standardizers,
    )


# ---------------------------------------------------------------------------------------------------------
# The networks, their samples and their validation NLL
# ---------------------------------------------------------------------------------------------------------
def build_stack(
    recipe: RegressionMethod, dropout: torch.Tensor, in_features: int
) -> StackedGaussianMLP | StackedBayesianLastLayerMLP:
    """A freshly initialised stack of ``dropout.numel()`` networks of ``recipe``'s architecture (a Bayesian
    last layer with ``ncp``; Flipout layers with ``flipout``; a dropout rate per network where the recipe
    uses dropout), drawing its initial weights from torch's global generator."""
    if recipe.ncp:
        return StackedBayesianLastLayerMLP(
            dropout.numel(), in_features, HIDDEN_UNITS, posterior_scale_init=recipe.posterior_scale_init
        )
    return StackedGaussianMLP(
        dropout.numel(),
        in_features,
        HIDDEN_UNITS,
        dropout=dropout if recipe.uses_dropout else None,
        flipout=recipe.flipout,
        prior=NormalPrior(scale=recipe.prior_scale),
        posterior_scale_init=recipe.posterior_scale_init,
    )


def stack_size(network: nn.Module) -> int:
    """The number of networks of a stack (the leading dimension of its parameters)."""
    return next(network.parameters()).shape[0]


@torch.no_grad()
def sample_stack(
    network: nn.Module, x: torch.Tensor, num_samples: int, one_pass_per_sample: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[K, S, B, D]`` means and variances of ``num_samples`` stochastic passes of every network of the
    stack ``network`` on its inputs ``x[k]`` (``[K, B, features]``).

    The ``S`` passes are one forward pass over the inputs repeated ``S`` times: every stochastic layer draws
    independent noise per example (dropout masks, Flipout signs). A Flipout layer's ``Delta W`` is shared
    within one pass, so that repeated examples would see ``S`` sign draws of one ``Delta W``: with
    ``one_pass_per_sample`` (a Flipout stack), the passes run one by one and each sample has its own.
    """
    models, batch = x.shape[:2]
    if num_samples == 1:
        mean, variance = network(x)
        return mean.unsqueeze(1), variance.unsqueeze(1)
    if one_pass_per_sample:
        outputs = [network(x) for _ in range(num_samples)]
        return torch.stack([m for m, _ in outputs], 1), torch.stack([v for _, v in outputs], 1)
    mean, variance = network(x.repeat(1, num_samples, 1))
    shape = (models, num_samples, batch, mean.shape[-1])
    return mean.reshape(shape), variance.reshape(shape)


def group_nll(mean: torch.Tensor, variance: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``[G]`` NLL of each group's moment-matched mixture: means and variances ``[G, M, S, B, D]`` (a
    group's ``M`` networks, ``S`` samples each), targets ``[G, B, D]``; a mean over the ``B * D`` values."""
    groups = mean.shape[0]
    mean = mean.reshape(groups, -1, *mean.shape[-2:])
    variance = variance.reshape(groups, -1, *variance.shape[-2:])
    mix_mean = mean.mean(dim=1)
    mix_var = variance.mean(dim=1) + mean.var(dim=1, unbiased=False)
    nll = 0.5 * mix_var.log() + (targets - mix_mean).square() / (2 * mix_var) + _HALF_LOG_TWO_PI
    return nll.mean(dim=(1, 2))


class StackSampler(Protocol):
    """An SG-MCMC run of a stack (the regression forms of ``sgld`` and ``csgmcmc``,
    :mod:`uqkit.bench.regression_sgmcmc`): the optimizer, the per-step schedule, the samples."""

    def optimizer(self, params: Iterable[torch.Tensor], num_data: int) -> torch.optim.Optimizer:
        """The sampler over ``params`` for a training set of ``num_data`` rows per network."""
        ...

    def before_step(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        """Set the 0-based ``step``'s step size (and noise switch) before the optimizer's step."""
        ...

    def after_step(self, step: int, model: nn.Module, losses: torch.Tensor) -> None:
        """Keep the stack's state after ``step`` if the thinning rule picks it; ``losses``: ``[K]`` each
        model's loss at the step (its divergence check)."""
        ...


def _sum_of_means(per_network: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The data term of a stack's ELBO: the sum over networks of each one's mean NLL (``per_network``)."""
    return per_network.sum()


# ---------------------------------------------------------------------------------------------------------
# The stack as a method
# ---------------------------------------------------------------------------------------------------------
class StackedRegression(Method):
    """``K`` Gaussian-head networks of ``recipe``'s architecture trained as one method (module docstring).

    Network ``k`` trains on split ``split_of_model[k]`` of ``[P, N, D]`` data (the trainer hands the method
    ``[K, B, D]`` inputs and ``[K, B, 1]`` targets, a batch of its own split per network; validation data
    are ``[P, V, ...]`` too) with configuration ``configs[k]``: its
    ``learning_rate`` and, where present, its ``dropout`` rate, NCP ``input_noise`` and
    ``output_prior_scale``, and ``l2`` coefficient.

    Args:
        recipe: the :class:`~uqkit.bench.regression.RegressionMethod` (loss, architecture, samples).
        configs: one configuration per network.
        split_of_model: ``[K]`` the split (row of the data) of each network.
        num_train: ``N``, the training rows of each network (its weight decay, ELBO and sampler scale).
        in_features: input features.
        input_ranges: ``[K, D]`` each network's range of every standardised input over its training rows
            (adversarial training's ``epsilon`` is a fraction of it); None without adversarial training.
        group_size: ``M``, consecutive networks scored as one group (a configuration's members).
        validation_every: score on validation every this many epochs (and after the last); None: never.
        scoring: ``"predictive"``, a group's moment-matched mixture of ``validation_samples`` passes of each
            member (the protocol's choice); ``"posterior-mean"``, each network's Gaussian NLL at its
            posterior mean (dropout off).
        validation_samples: stochastic passes per network when scoring ``"predictive"``.
        independent_parts: go on after a network's loss is not finite (scoring a grid), its group scoring
            ``inf``; ``False``: stop with :class:`~uqkit.bench.trainer.NonFiniteLossError` naming the splits.
        snapshot_epochs: ``[K]`` the epoch (1-based) after which each network's parameters are kept; the
            trained stack holds those (the networks are independent, so training the others longer changes
            nothing).
        sampler: an SG-MCMC sampler of the stack in place of :class:`StackedAdam` (learning rates unused).
        distillation: the targets are ``[K, B, 2]``, a teacher's predictive mean and variance ``(m_T, v_T)``
            at each training row, and the loss is the predictive distillation loss ``KL(N(m_T, v_T) ||
            N(mu, sigma^2))`` up to the teacher's entropy, ``NLL(m_T; mu, sigma^2) + v_T / (2 sigma^2)``
            (Korattikara et al. 2015; :func:`uqkit.methods.distillation.distillation_loss`).
    """

    likelihood: Likelihood = GAUSSIAN

    def __init__(
        self,
        recipe: RegressionMethod,
        configs: Sequence[dict[str, Any]],
        split_of_model: torch.Tensor,
        num_train: int,
        in_features: int,
        input_ranges: torch.Tensor | None = None,
        group_size: int = 1,
        validation_every: int | None = None,
        scoring: str = "predictive",
        validation_samples: int = 1,
        independent_parts: bool = False,
        snapshot_epochs: torch.Tensor | None = None,
        sampler: StackSampler | None = None,
        distillation: bool = False,
    ) -> None:
        super().__init__()
        if scoring not in SCORINGS:
            raise ValueError(f"scoring: expected one of {', '.join(SCORINGS)}, got {scoring!r}")
        models = len(configs)
        if models % group_size:
            raise ValueError(f"group_size: expected a divisor of the {models} networks, got {group_size}")
        self.recipe, self.split_of_model, self.num_train = recipe, split_of_model, num_train
        self.order_rows = split_of_model
        self.num_members = models
        self.learning_rates = self._per_model(configs, "learning_rate")
        dropout = self._per_model(configs, "dropout")
        self.dropout = torch.zeros(models) if dropout is None else dropout
        self.input_noise = self._per_model(configs, "input_noise")
        self.prior_scale = self._per_model(configs, "output_prior_scale")
        self.l2 = self._per_model(configs, "l2")
        if recipe.ncp and (self.input_noise is None or self.prior_scale is None):
            raise ValueError(f"{recipe.name}: ncp training needs input_noise and prior_scale, one per model")
        self.network = build_stack(recipe, self.dropout, in_features)
        self.elbo = ELBO(num_data=num_train, nll=_sum_of_means) if recipe.flipout else None
        self.weight_decay = recipe.lengthscale**2 * (1.0 - self.dropout) / (2.0 * num_train)
        self.epsilon = None
        if recipe.adversarial > 0:
            if input_ranges is None:
                raise ValueError(f"{recipe.name}: adversarial training needs each network's input_ranges")
            self.epsilon = (recipe.adversarial * input_ranges).unsqueeze(1)  # [K, 1, D]
        self.group_size, self.scoring, self.validation_samples = group_size, scoring, validation_samples
        self.num_batch_orders = models
        self.num_samples = recipe.num_samples
        self.validation_every = validation_every
        self.select_best_epoch = validation_every is not None
        self.independent_parts = independent_parts
        self.sampler, self.distillation = sampler, distillation
        self.snapshot_epochs = snapshot_epochs
        self.snapshots = None if snapshot_epochs is None else self._stacked_state(clone=True)
        self.diverged = torch.zeros(models, dtype=torch.bool)
        self.step_losses: torch.Tensor | None = None
        """``[K]`` each network's loss at the last training step (the sampler's divergence check)."""
        self.epoch = 0

    @staticmethod
    def _per_model(configs: Sequence[dict[str, Any]], key: str) -> torch.Tensor | None:
        """``[K]`` values of hyper-parameter ``key`` of each network's configuration (None if absent)."""
        if key not in configs[0]:
            return None
        return torch.tensor([config[key] for config in configs])

    def _stacked_state(self, clone: bool = False) -> dict[str, torch.Tensor]:
        """The network's tensors with a leading network dimension (every parameter and buffer of a stack)."""
        return {
            name: value.detach().clone() if clone else value.detach()
            for name, value in self.network.state_dict().items()
            if value.dim() and value.shape[0] == self.num_members
        }

    def use_likelihood(self, likelihood: Likelihood) -> None:
        """A stack of Gaussian-head networks is a regression method only.

        Raises:
            NotApplicableError: for a classification likelihood.
        """
        if likelihood.kind != "regression":
            raise NotApplicableError("a stack of Gaussian-head networks predicts regression targets only")
        self.likelihood = likelihood

    # The trainer's hooks -----------------------------------------------------------------------------
    def make_optimizer(self, learning_rate: float) -> torch.optim.Optimizer:
        """:class:`StackedAdam` with each network's learning rate, or the sampler (``learning_rate``, the
        trainer's one rate, is not used)."""
        if self.sampler is not None:
            return self.sampler.optimizer(self.network.parameters(), self.num_train)
        return StackedAdam(self.network.parameters(), self.learning_rates)

    def draw_batch_orders(self, num_examples: int, generators: list[torch.Generator]) -> torch.Tensor:
        """Each network's own order of its split's rows, all ``K`` drawn at once from the first generator
        (``torch.rand(K, N).argsort``)."""
        return torch.rand(self.num_members, num_examples, generator=generators[0]).argsort(dim=1)

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        self.epoch = epoch + 1

    def on_step_start(self, step: int, total_steps: int, optimizer: torch.optim.Optimizer) -> None:
        if self.sampler is not None:
            self.sampler.before_step(step, optimizer)

    def on_step_end(self, step: int, total_steps: int) -> None:
        if self.sampler is not None:
            assert self.step_losses is not None
            self.sampler.after_step(step, self.network, self.step_losses)

    def on_epoch_end(self, epoch: int, num_epochs: int) -> None:
        """Keep the networks whose snapshot epoch this is."""
        if self.snapshots is None:
            return
        done = self.snapshot_epochs == epoch
        if bool(done.any()):
            for name, value in self._stacked_state().items():
                self.snapshots[name][done] = value[done]

    def on_train_end(self) -> None:
        """Load each network's snapshot (with ``snapshot_epochs``)."""
        if self.snapshots is not None:
            self.network.load_state_dict({**self.network.state_dict(), **self.snapshots})

    # Training loss -----------------------------------------------------------------------------------
    def training_loss(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The sum over networks of each one's mean loss on its ``[B, D]`` batch of ``[K, B, D]`` inputs
        (module docstring); ``labels`` are ``[K, B, 1]`` targets (``[K, B, 2]`` with ``distillation``)."""
        recipe, network = self.recipe, self.network
        targets, teacher_variance = labels, None
        if self.distillation:
            targets, teacher_variance = labels[..., :1], labels[..., 1:]
        if self.epsilon is not None:
            inputs = inputs.requires_grad_(True)
        if recipe.ncp:
            per_model = self.ncp_losses(inputs, targets)
        else:
            mean, variance = network(inputs)
            per_model = gaussian_nll_loss(mean, variance, targets, beta=recipe.beta).mean(dim=(1, 2))
            if teacher_variance is not None:
                spread = teacher_variance.to(variance.dtype) / (2 * variance)
                per_model = per_model + spread.mean(dim=(1, 2))
        if self.epsilon is not None:
            (grad,) = torch.autograd.grad(per_model.sum(), inputs, retain_graph=True)
            adversarial = (inputs + self.epsilon * grad.sign()).detach()
            mean, variance = network(adversarial)
            adversarial_loss = gaussian_nll_loss(mean, variance, targets, beta=recipe.beta)
            per_model = per_model + adversarial_loss.mean(dim=(1, 2))
        if recipe.dropout_rates is not None:
            per_model = per_model + self.weight_decay.to(per_model.dtype) * network.weight_norms()
        if self.l2 is not None:
            per_model = per_model + self.l2.to(per_model.dtype) * network.weight_norms()
        self.step_losses = per_model.detach()
        self.diverged.logical_or_(~torch.isfinite(self.step_losses))
        if not self.independent_parts and bool(self.diverged.any()):
            bad = self.diverged.nonzero().flatten()
            raise NonFiniteLossError(
                f"{recipe.name}: non-finite training loss at epoch {self.epoch} for {bad.numel()} models "
                f"(splits {sorted(set(self.split_of_model[bad].tolist()))[:5]}, learning rates "
                f"{sorted(set(self.learning_rates[bad].tolist()))})"
            )
        # A diverged network (possible while scoring a grid) only spoils its own slice: the gradient of a
        # sum reaches each term with weight 1 whatever the others hold.
        if self.elbo is not None:
            return self.elbo(per_model, targets, network)
        return per_model.sum()

    def ncp_losses(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``[K]`` NCP losses (Hafner et al. 2018): expected NLL on the batch plus ``ncp_weight`` times the
        KL from ``N(y, prior_scale[k]^2)`` to the function distribution at the batch perturbed by
        ``input_noise[k]``, each a mean over the network's batch; clean and perturbed rows in one pass."""
        assert self.input_noise is not None and self.prior_scale is not None
        noise = self.input_noise.to(inputs.dtype).reshape(-1, 1, 1)
        batch = inputs.shape[1]
        both = torch.cat([inputs, inputs + noise * torch.randn_like(inputs)], dim=1)
        function_mean, function_variance, noise_variance = self.network.moments(both)
        nll = expected_gaussian_nll(
            function_mean[:, :batch], function_variance[:, :batch], noise_variance[:, :batch], targets
        )
        divergence = output_prior_divergence(
            function_mean[:, batch:],
            function_variance[:, batch:],
            targets,
            self.prior_scale.to(inputs.dtype).reshape(-1, 1, 1),
        )
        return nll.mean(dim=(1, 2)) + self.recipe.ncp_weight * divergence.mean(dim=(1, 2))

    # Prediction and validation -----------------------------------------------------------------------
    def sample(self, inputs: torch.Tensor, num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``[K, S, B, D]`` means and variances of ``num_samples`` passes of each network on its inputs
        ``inputs[k]`` (:func:`sample_stack`)."""
        return sample_stack(self.network, inputs, num_samples, one_pass_per_sample=self.recipe.flipout)

    def predict(self, inputs: torch.Tensor) -> GaussianPrediction:
        """Every network's ``num_samples`` Gaussians on its own inputs ``inputs[k]`` (``[K, B, D]``), as one
        :class:`~uqkit.GaussianPrediction` of ``[K * S, B, 1]`` (network-major): a split's predictive is
        the slice of its networks' rows."""
        mean, variance = self.sample(inputs, self.num_samples)
        return GaussianPrediction(mean.flatten(0, 1), variance.flatten(0, 1))

    def score_validation(
        self, inputs: torch.Tensor, labels: torch.Tensor
    ) -> tuple[dict[str, float], list[float]]:
        """The validation NLL of each group of ``group_size`` networks (``scoring``) on its split's rows of
        the ``[P, V, D]`` inputs and ``[P, V, 1]`` targets; the history gets their mean over the finite
        ones."""
        inputs, labels = inputs[self.split_of_model], labels[self.split_of_model]
        if self.scoring == "predictive":
            mean, variance = self.sample(inputs, self.validation_samples)
            groups = self.num_members // self.group_size
            shape = (groups, self.group_size, *mean.shape[1:])
            nll = group_nll(mean.reshape(shape), variance.reshape(shape), labels[:: self.group_size])
        else:
            with use_posterior_mean(self.network):
                mean, variance = self.network(inputs)
            nll = gaussian_nll_loss(mean, variance, labels).mean(dim=(1, 2))
        finite = nll[torch.isfinite(nll)]
        summary = float(finite.double().mean()) if finite.numel() else math.inf
        return {"val_nll": summary}, nll.tolist()

    def part_state(self, index: int) -> dict[str, Any]:
        """Group ``index``'s slice (its ``group_size`` networks) of every stacked tensor, flattened into one
        copy (``{"flat": [P]}``)."""
        return self.part_states([index])[0]

    def part_states(self, indices: list[int]) -> list[dict[str, Any]]:
        """:meth:`part_state` of the groups ``indices``, gathered at once (an index per stacked tensor, one
        copy per group)."""
        groups = self.num_members // self.group_size
        rows = torch.tensor(indices, dtype=torch.long)
        gathered = [value.reshape(groups, -1)[rows] for value in self._stacked_state().values()]
        return [{"flat": row.clone()} for row in torch.cat(gathered, dim=1)]

    def load_part_states(self, states: list[dict[str, Any]]) -> None:
        """Load every group's state (from :meth:`part_state`), each possibly from another epoch."""
        flat = torch.stack([state["flat"] for state in states])  # [groups, P]
        current = self._stacked_state()
        sizes = [value.numel() // len(states) for value in current.values()]
        loaded = {
            name: column.reshape(value.shape).to(value.dtype)
            for (name, value), column in zip(current.items(), flat.split(sizes, dim=1), strict=True)
        }
        self.network.load_state_dict({**self.network.state_dict(), **loaded})


def train_stack(
    recipe: RegressionMethod,
    data: SplitData,
    split_of_model: torch.Tensor,
    configs: Sequence[dict[str, Any]],
    num_epochs: int,
    seed: int,
    *,
    group_size: int = 1,
    validation_every: int | None = None,
    scoring: str = "predictive",
    validation_samples: int = 1,
    independent_parts: bool = False,
    snapshot_epochs: torch.Tensor | None = None,
    sampler: StackSampler | None = None,
    teacher_variance: torch.Tensor | None = None,
) -> tuple[StackedRegression, TrainResult]:
    """Train ``K = len(configs)`` networks, network ``k`` on split ``split_of_model[k]`` of ``data`` with
    ``configs[k]``, as one :class:`StackedRegression` with :func:`uqkit.bench.trainer.train_method`.

    Seeds: the initial weights (and every stochastic layer's noise) from torch's global generator seeded
    with ``seed``, the batch orders from ``seed + 1``. With ``validation_every``, the networks are scored on
    ``data``'s evaluation rows of their splits and each group ends at its epoch of lowest validation NLL
    (``TrainResult.selected_epochs`` and ``selected_nlls``, one per group). ``teacher_variance``
    (``[P, N, 1]``): distil a teacher whose predictive mean at the training rows is ``data.train_y``
    (:class:`StackedRegression`'s ``distillation``). The other arguments are :class:`StackedRegression`'s.
    """
    train_x, train_y = data.train_x, data.train_y
    if teacher_variance is not None:
        train_y = torch.cat([train_y, teacher_variance.to(train_y.dtype)], dim=-1)
    if validation_every is None:
        val_x, val_y = data.train_x[:, :0], data.train_y[:, :0]
    else:
        val_x, val_y = data.eval_x, data.eval_y
    ranges = None
    if recipe.adversarial > 0:
        ranges = (data.train_x.amax(dim=1) - data.train_x.amin(dim=1))[split_of_model]  # [K, D]
    torch.manual_seed(seed)
    method = StackedRegression(
        recipe,
        configs,
        split_of_model,
        data.train_x.shape[1],
        data.train_x.shape[2],
        input_ranges=ranges,
        group_size=group_size,
        validation_every=validation_every,
        scoring=scoring,
        validation_samples=validation_samples,
        independent_parts=independent_parts,
        snapshot_epochs=snapshot_epochs,
        sampler=sampler,
        distillation=teacher_variance is not None,
    )
    config = TrainConfig(
        epochs=num_epochs,
        batch_size=BATCH_SIZE,
        learning_rate=float(method.learning_rates[0]),
        seed=seed + 1,
        progress=False,
    )
    result = train_method(method, recipe.name, train_x, train_y, val_x, val_y, config)
    return method, result
