"""Benchmark methods with mean-field variational weights: ``flipout-bnn`` and ``gaussian-bnn``.

Importing this module registers both in :data:`uqkit.bench.registry.METHODS`. Each takes the task's
backbone, converts every ``nn.Linear``/``nn.Conv*`` in place with :func:`uqkit.bayesianize_` (Flipout, Wen
et al. 2018; or Gaussian weights with the reparameterization trick, Blundell et al. 2015), trains on
:class:`uqkit.ELBO` with one weight sample per step, and predicts with ``S`` posterior samples through
:func:`uqkit.predict`.
"""

from __future__ import annotations

import torch

from uqkit.bench.models import build_model
from uqkit.bench.registry import Method, MethodContext, register_method
from uqkit.methods.convert import FlipoutConfig, GaussianConfig, bayesianize_
from uqkit.methods.predict import predict
from uqkit.nn.priors import NormalPrior
from uqkit.objectives import ELBO
from uqkit.prediction import Prediction

__all__ = ["VariationalNetwork"]

BNN_SAMPLES = 10
BNN_PRIOR_SCALE = 1.0
BNN_POSTERIOR_SCALE_INIT = 1e-3
BNN_KL_WARMUP_EPOCHS = 1


class VariationalNetwork(Method):
    """A Bayesian network trained on the ELBO (KL annealed in over the first epoch) and predicting with
    ``S`` samples of its weights."""

    def __init__(self, network: torch.nn.Module, num_train: int, batch_size: int, num_samples: int):
        super().__init__()
        self.network = network
        self.num_samples = num_samples
        steps_per_epoch = max(1, -(-num_train // batch_size))
        self.elbo = ELBO(num_data=num_train, warmup_steps=BNN_KL_WARMUP_EPOCHS * steps_per_epoch)

    def training_loss(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.elbo(self.network(inputs), labels, self.network)

    def predict(self, inputs: torch.Tensor) -> Prediction:
        return predict(self.network, inputs, num_samples=self.num_samples)


def _variational(context: MethodContext, config) -> Method:
    network = build_model(context.model, context.input_shape, context.num_classes)
    bayesianize_(network, config)
    return VariationalNetwork(network, context.num_train, context.batch_size, num_samples=BNN_SAMPLES)


@register_method(
    "flipout-bnn",
    f"mean-field Gaussian weights with Flipout (Wen et al. 2018), ELBO, {BNN_SAMPLES} samples",
)
def _flipout_bnn(context: MethodContext) -> Method:
    prior = NormalPrior(scale=BNN_PRIOR_SCALE)
    return _variational(context, FlipoutConfig(prior=prior, posterior_scale_init=BNN_POSTERIOR_SCALE_INIT))


@register_method(
    "gaussian-bnn",
    f"mean-field Gaussian weights, local reparameterization (Kingma 2015), ELBO, {BNN_SAMPLES} samples",
)
def _gaussian_bnn(context: MethodContext) -> Method:
    prior = NormalPrior(scale=BNN_PRIOR_SCALE)
    config = GaussianConfig(
        prior=prior, posterior_scale_init=BNN_POSTERIOR_SCALE_INIT, local_reparameterization=True
    )
    return _variational(context, config)
