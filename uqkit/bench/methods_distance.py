"""Benchmark methods with distance-aware or input-dependent uncertainty: ``sngp`` and ``heteroscedastic``.

Importing this module registers both methods in :data:`uqkit.bench.registry.METHODS`.

* ``sngp`` (Liu et al. 2020): a residual, spectrally normalised version of the task's backbone and a
  random-feature GP head (:class:`uqkit.SNGP`). MLP backbones become residual MLPs of the same width:
  ``mlp`` (784-512-512-10 on Fashion-MNIST) becomes an input projection to 512 and one residual block of
  width 512, the same weight matrices as the MLP's two hidden layers; ``resmlp`` (two moons) keeps its
  structure (projection to 128, three residual blocks), the SNGP paper's two-moons network. The
  convolutional backbones (``lenet5``, ``cnn1d``) keep their hidden layers, spectrally normalised, and are
  *not* residual, so there SNGP's distance preservation is only an upper bound (see :class:`uqkit.SNGP`).
  The loss is the per-example negative log posterior of the GP output weights, cross-entropy plus the
  ``N(0, I)`` prior's ``||beta||^2 / (2 N)``; the Laplace precisions (one per class, Liu et al. 2020,
  eq. (9)) are reset at the start of every epoch (through ``on_epoch_start``), so after training they are
  the exact sums over the last epoch (Algorithm 1); prediction uses Monte Carlo samples of the GP logits,
  so that the epistemic part (mutual information) is reported too.
* ``heteroscedastic`` (Collier et al. 2021): the task's backbone without its output layer, followed by a
  :class:`uqkit.nn.HeteroscedasticHead`. Its Monte Carlo draws are label noise, averaged into one predictive
  distribution (``S = 1``): all of its uncertainty is aleatoric.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from uqkit.bench.models import ResidualMLP, build_model
from uqkit.bench.registry import Method, MethodContext, register_method
from uqkit.methods.sngp import SNGP
from uqkit.nn.heteroscedastic import HeteroscedasticHead

__all__ = ["HeteroscedasticClassifier", "SNGPClassifier", "split_output_layer"]

SNGP_SPECTRAL_BOUND = {"mlp": 0.95, "resmlp": 0.95, "lenet5": 6.0, "cnn1d": 6.0}
# Random features per backbone. With per-class precisions the GP head costs about K * D^2 per example at
# prediction (K classes), so D trades NLL against inference time. Default task (Fashion-MNIST MLP, 5 epochs,
# seed 0; 2026-12-07), validation NLL and inference time against the deterministic MLP (one thread, batch
# 1000, ``benchmarks/sngp.py --num-features 128 256 512``): D = 128: 0.385, 1.5x; D = 256: 0.354, 2.3x;
# D = 512: 0.345, 5.3x. 256 is the knee (the paper uses 1024 on CIFAR, behind a wide ResNet).
SNGP_NUM_FEATURES = {"mlp": 256, "resmlp": 128, "lenet5": 256, "cnn1d": 128}
SNGP_SAMPLES = 10
# Chosen on the default task's validation NLL after its 5 epochs (2026-12-07): constant 0.3851, cosine 0.3942
# (runs with 1 and 2 torch threads). SNGP is still fitting at epoch 5 (validation NLL 0.43, 0.39, 0.385 in
# epochs 3-5), and cosine decay slows those last epochs; the plain MLP, which has converged, gains from it.
SNGP_SCHEDULE = "constant"
# Laplace weights of the GP precision: the paper's per-class p_k (1 - p_k) (Liu et al. 2020, eq. (9));
# docs/sngp.md compares it with the alternatives.
SNGP_LIKELIHOOD = "softmax"
SNGP_MLP_WIDTH = 512
HETEROSCEDASTIC_FACTORS = 4
HETEROSCEDASTIC_SAMPLES = 16


def split_output_layer(model: nn.Module) -> tuple[nn.Sequential, nn.Linear]:
    """Split a sequential backbone into its hidden layers and its final ``nn.Linear`` output layer.

    Nested ``nn.Sequential`` models (e.g. ``Flatten`` then a ``ResidualMLP``) are flattened first.

    Raises:
        ValueError: if the model does not end with an ``nn.Linear``.
    """
    layers: list[nn.Module] = []

    def flatten(module: nn.Module) -> None:
        if isinstance(module, nn.Sequential):
            for child in module.children():
                flatten(child)
        else:
            layers.append(module)

    flatten(model)
    if not layers or not isinstance(layers[-1], nn.Linear):
        raise ValueError(
            f"model: expected a sequential backbone ending with an nn.Linear output layer, got "
            f"{type(model).__name__} ending with {type(layers[-1]).__name__ if layers else 'nothing'}"
        )
    return nn.Sequential(*layers[:-1]), layers[-1]


def _sngp_backbone(context: MethodContext) -> tuple[nn.Sequential, int]:
    """The hidden part of the task's backbone in SNGP's residual form; returns it and its output width."""
    in_features = int(torch.Size(context.input_shape).numel())
    if context.model == "mlp":
        network = ResidualMLP(in_features, context.num_classes, width=SNGP_MLP_WIDTH, depth=1)
    elif context.model == "resmlp":
        network = ResidualMLP(in_features, context.num_classes)
    else:
        network = build_model(context.model, context.input_shape, context.num_classes)
        hidden, head = split_output_layer(network)
        return hidden, head.in_features
    hidden, head = split_output_layer(network)
    return nn.Sequential(nn.Flatten(), *hidden), head.in_features


class SNGPClassifier(Method):
    """Benchmark wrapper of :class:`uqkit.SNGP`: cross-entropy on the posterior-mean logits, precision reset
    at every epoch start, ``S`` Monte Carlo samples of the GP logits at prediction.

    Trained at a constant learning rate, whatever the task's schedule (:data:`SNGP_SCHEDULE`).
    """

    learning_rate_schedule = SNGP_SCHEDULE
    classification_only = "the random-feature GP head's Laplace posterior is over class logits"

    def __init__(self, network: SNGP, num_samples: int, num_data: int) -> None:
        super().__init__()
        self.network = network
        self.num_samples = num_samples
        self.num_data = num_data

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        """Reset the GP precision, so that it sums over exactly one epoch (the last, after training)."""
        self.network.reset_precision()

    def combine_rank_statistics(self, sum_over_ranks: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Sum the GP precision's data term over the ranks (each rank summed its own examples since the
        reset at the epoch's start)."""
        self.network.gp.combine_precision(sum_over_ranks)

    def training_loss(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-example negative log posterior: cross-entropy plus the ``N(0, I)`` prior's
        ``||beta||^2 / (2 N)`` on the GP output weights (Liu et al. 2020, Algorithm 1)."""
        return F.cross_entropy(self.network(inputs), labels) + self.network.prior_penalty(self.num_data)


class HeteroscedasticClassifier(Method):
    """Hidden layers + :class:`~uqkit.nn.HeteroscedasticHead`; NLL of the Monte Carlo predictive.

    The head's Monte Carlo draws are label noise (aleatoric), averaged into one predictive distribution
    (Collier et al. 2021): the prediction has ``S = 1`` and no epistemic part.
    """

    classification_only = "the head models noise on class logits"

    def __init__(self, hidden: nn.Module, head: HeteroscedasticHead) -> None:
        super().__init__()
        self.network = nn.Sequential(hidden, head)
        self.num_samples = 1  # one distribution; the head averages its own head.num_samples draws

    def training_loss(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.nll_loss(self.network(inputs), labels)


def build_sngp(context: MethodContext, likelihood: str = SNGP_LIKELIHOOD) -> SNGPClassifier:
    """The ``sngp`` method for a task; ``likelihood`` chooses the Laplace weights of the GP precision."""
    backbone, width = _sngp_backbone(context)
    network = SNGP(
        backbone,
        width,
        context.num_classes,
        spectral_bound=SNGP_SPECTRAL_BOUND.get(context.model, 0.95),
        num_features=SNGP_NUM_FEATURES.get(context.model, 128),
        likelihood=likelihood,
    )
    return SNGPClassifier(network, SNGP_SAMPLES, context.num_train)


def build_heteroscedastic(context: MethodContext) -> HeteroscedasticClassifier:
    network = build_model(context.model, context.input_shape, context.num_classes)
    hidden, output = split_output_layer(network)
    head = HeteroscedasticHead(
        output.in_features,
        context.num_classes,
        num_factors=min(HETEROSCEDASTIC_FACTORS, context.num_classes),
        num_samples=HETEROSCEDASTIC_SAMPLES,
    )
    return HeteroscedasticClassifier(hidden, head)


register_method(
    "sngp",
    f"SNGP: residual spectral-normalised backbone + random-feature GP, {SNGP_SAMPLES} MC samples "
    "(Liu et al. 2020)",
)(build_sngp)
register_method(
    "heteroscedastic",
    f"heteroscedastic head, rank-{HETEROSCEDASTIC_FACTORS} + diagonal logit noise, "
    f"{HETEROSCEDASTIC_SAMPLES} MC samples (Collier et al. 2021)",
)(build_heteroscedastic)
