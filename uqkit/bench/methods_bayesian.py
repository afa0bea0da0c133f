"""Benchmark methods with mean-field variational weights: ``flipout-bnn`` and ``reparameterization-bnn``.

Importing this module registers both in :data:`uqkit.bench.registry.METHODS`. Each takes the task's
backbone, converts every ``nn.Linear``/``nn.Conv*`` in place with :func:`uqkit.bayesianize_` (Flipout, Wen
et al. 2018; or :class:`~uqkit.ReparameterizationConfig`, the reparameterization trick of Blundell et al.
2015 in its local form, Kingma et al. 2015), trains on :class:`uqkit.ELBO` with one weight sample per step,
and predicts with ``S`` posterior samples through :func:`uqkit.predict`. Where a task's validation chose it
(:data:`BNN_TASK_OPTIMAL_SCALES`), the posterior scales are then put at the optimum of the trained objective
given the means (:func:`uqkit.fit_posterior_scales_`).

Both are named by their gradient estimator, as their layers are (docs/architecture.md, "Names"):
``reparameterization-bnn`` was ``gaussian-bnn`` until 2026-12, and the old name is still accepted, with a
deprecation warning, until uqkit 0.2.0 (:data:`uqkit.bench.upgrade.RENAMED_METHODS`).
"""

from __future__ import annotations

import torch

from uqkit.bench.models import build_model
from uqkit.bench.registry import Method, MethodContext, register_method
from uqkit.bench.trainer import ADAM_EPS
from uqkit.methods.convert import FlipoutConfig, ReparameterizationConfig, bayesianize_
from uqkit.methods.optimal_scales import fit_posterior_scales_
from uqkit.nn.priors import NormalPrior
from uqkit.objectives import ELBO

__all__ = ["VariationalNetwork"]

BNN_SAMPLES = 10
BNN_PRIOR_SCALE = 0.1
"""Standard deviation of the N(0, s^2) prior on every weight and bias: a hyper-parameter of the model (the
ELBO keeps its full KL / N), chosen on Fashion-MNIST's validation NLL (0.418 after 5 epochs, against 0.434
for 0.3; at epoch 1 0.448, against 0.510 for a fan-in prior ``1 / sqrt(fan_in)`` and 0.486 for 0.05;
docs/bayesian_layers.md, "Posterior scales in the benchmark"). Under N(0, 1) the
mean-field posterior of the 670,000-weight MLP over-regularises: its KL is about 19 nats per training example
and the validation NLL rises as the scales grow."""
BNN_TASK_PRIOR_SCALES = {"two-moons": 1.0}
"""Tasks whose own validation chose another prior scale than :data:`BNN_PRIOR_SCALE`. Two moons (900 training
points, a residual MLP of width 128): validation NLL after 100 epochs, flipout / reparameterization, 0.070 /
0.064 under N(0, 1), 0.110 / 0.109 under N(0, 0.3^2), 0.283 / 0.277 under N(0, 0.1^2) (2026-12-07)."""


def bnn_prior(context: MethodContext) -> NormalPrior:
    """The task's ``N(0, s^2)`` weight prior: :data:`BNN_TASK_PRIOR_SCALES`, else :data:`BNN_PRIOR_SCALE`."""
    return NormalPrior(scale=BNN_TASK_PRIOR_SCALES.get(context.task, BNN_PRIOR_SCALE))


BNN_KL_WEIGHT = 1.0
"""Weight of the KL term in the loss (``uqkit.ELBO(kl_weight=...)``): 1 is the ELBO."""
BNN_TASK_KL_WEIGHTS = {"fashion-mnist": 1e-4, "fashion-mnist-holdout": 1e-4}
"""Tasks whose validation chose a tempered ("cold") posterior, ``kl_weight < 1`` (Wenzel et al. 2020, "How
good is the Bayes posterior in deep neural networks really?"; Zhang et al. 2018 weigh the KL the same
way). A deliberate deviation from the ELBO, measured on Fashion-MNIST (MLP, 5 epochs, seed 0, prior
``N(0, 0.1^2)``; docs/bayesian_layers.md). With the scales *trained* by Adam (2026-12-07) the full ELBO's
mean-field optimum underfits: validation NLL after 5 epochs, ``flipout-bnn``, 0.418 (weight 1), 0.303 (0.1),
0.289 (0.01), 0.290 (0.001); ``reparameterization-bnn`` 0.423 (1) and 0.300 (0.01); but the scales were not
at the optimum of their objective. With the scales put *at* that optimum after training
(:data:`BNN_TASK_OPTIMAL_SCALES`; 2026-12-07, on the means of a 0.01 run, validation NLL 0.2901 with their
trained scales): 0.3027 at 0.01, 0.2909 at 0.001, **0.2902** at 1e-4 (0.2900 at 1e-5); 1e-4 is the largest
weight tied with the best (prediction-seed spread 0.0001-0.0005). The held-out-classes task shares the data
and model and inherits the choice. Two moons keeps the ELBO (its validation under ``N(0, 1)``, 0.070 /
0.064, shows no underfitting); MNIST-1D was not measured and keeps the ELBO."""


def bnn_kl_weight(context: MethodContext) -> float:
    """The task's KL weight: :data:`BNN_TASK_KL_WEIGHTS`, else :data:`BNN_KL_WEIGHT`."""
    return BNN_TASK_KL_WEIGHTS.get(context.task, BNN_KL_WEIGHT)


BNN_TASK_OPTIMAL_SCALES = frozenset({"fashion-mnist", "fashion-mnist-holdout"})
"""Tasks whose Bayesian networks end with their posterior scales at the optimum of their objective
``N E_q[mean NLL] + kl_weight KL`` given the trained means: after training (the epoch of lowest validation
NLL), :meth:`VariationalNetwork.fit_post_hoc` runs :func:`uqkit.fit_posterior_scales_` over the training split
(:data:`BNN_OPTIMAL_SCALE_PASSES` passes of the Gauss-Newton diagonal; about 40 s each for the MLP on two
CPU cores). Adam on ``rho`` does not get there in the budget (issue 17 item 2). Measured only where a KL
weight was chosen on validation (Fashion-MNIST); elsewhere the scales stay as trained.
docs/bayesian_layers.md, "Scales at the optimum", has the measurement."""
BNN_OPTIMAL_SCALE_PASSES = 3


def bnn_optimal_scales(context: MethodContext) -> bool:
    """Whether the task's BNNs put their scales at the optimum after training
    (:data:`BNN_TASK_OPTIMAL_SCALES`)."""
    return context.task in BNN_TASK_OPTIMAL_SCALES


BNN_POSTERIOR_SCALE_INIT = 1e-3
BNN_KL_WARMUP_EPOCHS = 1
BNN_SCALE_LR_FACTOR = 10.0
"""The posterior scales' ``rho`` train at this multiple of the base learning rate (``parameter_groups``)."""


class VariationalNetwork(Method):
    """A Bayesian network trained on the ELBO (KL annealed in over the first epoch; weighted by ``kl_weight``,
    1 for the ELBO itself) and predicting with ``S`` samples of its weights.

    With ``optimal_scales``, :meth:`fit_post_hoc` then sets the posterior scales to the optimum of that
    objective given the trained means (:func:`uqkit.fit_posterior_scales_` over the training split)."""

    def __init__(
        self,
        network: torch.nn.Module,
        num_train: int,
        batch_size: int,
        num_samples: int,
        kl_weight: float = BNN_KL_WEIGHT,
        optimal_scales: bool = False,
    ):
        super().__init__()
        self.network = network
        self.num_samples = num_samples
        self.optimal_scales = bool(optimal_scales)
        steps_per_epoch = max(1, -(-num_train // batch_size))
        self.elbo = ELBO(
            num_data=num_train, kl_weight=kl_weight, warmup_steps=BNN_KL_WARMUP_EPOCHS * steps_per_epoch
        )

    def parameter_groups(self, learning_rate: float) -> list[dict]:
        """Two Adam groups: the posterior means at ``learning_rate``, the scales' ``rho`` at
        ``BNN_SCALE_LR_FACTOR * learning_rate``.

        Adam moves a parameter by about its learning rate per step whatever the gradient's size, so at
        lr 1e-3 the ``rho`` of a scale initialised at ``BNN_POSTERIOR_SCALE_INIT`` (``rho = -6.9``) rises by
        at most about 2 in the benchmark's 2,110 steps: ``sigma <= 0.008``, still climbing, far from the
        ELBO optimum (the prior scale ``BNN_PRIOR_SCALE`` for a weight the likelihood ignores). ``rho``
        lives on a log scale (``sigma ~ exp(rho)`` for small ``sigma``), so a larger step size on ``rho``
        is a change of the optimiser only; the objective stays the ELBO. The task's learning-rate schedule
        scales both groups alike. 10 was kept over 100 on validation NLL (docs/bayesian_layers.md,
        "Posterior scales in the benchmark").
        """
        scales = [p for name, p in self.named_parameters() if name.endswith("_rho") and p.requires_grad]
        chosen = {id(p) for p in scales}
        others = [p for p in self.parameters() if p.requires_grad and id(p) not in chosen]
        groups = [{"params": others, "lr": learning_rate}]
        if scales:
            # Adam's eps (1e-8) stands for "a negligible gradient"; a KL weight below 1 shrinks the scales'
            # KL gradient by that factor, so eps shrinks with it (else near its optimum a scale the
            # likelihood ignores stalls where its gradient is comparable to eps: 88% of the prior scale at
            # kl_weight 0.01 in the test budget).
            eps = ADAM_EPS * min(1.0, self.elbo.kl_weight)
            groups.append({"params": scales, "lr": learning_rate * BNN_SCALE_LR_FACTOR, "eps": eps})
        return groups

    def training_loss(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.elbo(self.network(inputs), labels, self.network)

    def fit_post_hoc(
        self,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        train: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        """With ``optimal_scales``: every posterior scale to the optimum of ``N E_q[mean NLL] + kl_weight KL``
        given the trained means, ``1 / sigma^2 = 1 / s^2 + N h / kl_weight`` with ``h`` the Gauss-Newton
        diagonal over the training split ``train`` (:func:`uqkit.fit_posterior_scales_`,
        :data:`BNN_OPTIMAL_SCALE_PASSES` passes). The validation split is not used.

        Raises:
            ValueError: with ``optimal_scales`` and no training split, or on a regression likelihood (the
                Gauss-Newton diagonal here is the softmax's).
        """
        if not self.optimal_scales:
            return
        if train is None:
            raise ValueError("train: expected the training split (inputs, labels) for the scales' optimum")
        if self.likelihood.kind != "classification":
            raise ValueError("optimal_scales: implemented for class logits, not a regression likelihood")
        fit_posterior_scales_(
            self.network,
            train[0],
            num_data=self.elbo.num_data,
            kl_weight=self.elbo.kl_weight,
            passes=BNN_OPTIMAL_SCALE_PASSES,
        )


def _variational(context: MethodContext, config) -> Method:
    network = build_model(context.model, context.input_shape, context.num_classes)
    bayesianize_(network, config)
    return VariationalNetwork(
        network,
        context.num_train,
        context.batch_size,
        BNN_SAMPLES,
        kl_weight=bnn_kl_weight(context),
        optimal_scales=bnn_optimal_scales(context),
    )


@register_method(
    "flipout-bnn",
    f"mean-field Gaussian weights with Flipout (Wen et al. 2018), ELBO (KL weight per task), "
    f"{BNN_SAMPLES} samples",
)
def _flipout_bnn(context: MethodContext) -> Method:
    prior = bnn_prior(context)
    return _variational(context, FlipoutConfig(prior=prior, posterior_scale_init=BNN_POSTERIOR_SCALE_INIT))


@register_method(
    "reparameterization-bnn",
    f"mean-field Gaussian weights, local reparameterization (Kingma 2015), ELBO (KL weight per task), "
    f"{BNN_SAMPLES} samples",
)
def _reparameterization_bnn(context: MethodContext) -> Method:
    prior = bnn_prior(context)
    config = ReparameterizationConfig(
        prior=prior, posterior_scale_init=BNN_POSTERIOR_SCALE_INIT, local_reparameterization=True
    )
    return _variational(context, config)
