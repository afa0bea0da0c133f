"""The benchmark's distilled posteriors: ``csgmcmc-distilled`` and ``apd``.

Both reuse ``csgmcmc``'s training (``shares_training_with``: the runner copies its collected samples in,
or trains the same chain itself when that run has no ``csgmcmc``) and distil the samples post hoc, in
:meth:`~uqkit.bench.registry.Method.fit_post_hoc`:

* ``csgmcmc-distilled``: predictive distillation (Korattikara et al. 2015, "Bayesian Dark Knowledge") of the
  samples' posterior predictive into one network of the backbone's architecture, started from the chain's last
  sample; it predicts at one network's cost (``S = 1``).
* ``apd``: adversarial posterior distillation (Wang et al. 2018): a weight generator and a WGAN-GP critic
  fitted to the samples' flattened parameters, one generator per cycle (:class:`uqkit.APDMixture`: one
  generator across the cycles' modes puts mass between them); ``S`` networks drawn from the generators
  predict, as many from each cycle as it has samples (``S = 12`` of 16 samples: 3 per cycle). Only for
  backbones of at most :data:`APD_MAX_PARAMETERS` parameters (the paper's scale; LeNet-5 has 61,706, the
  default MLP 669,706).

The distillation itself lives in :mod:`uqkit.bench.posterior_distillation` (settings and their measurements in
docs/distillation.md).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from uqkit.bench.methods_sgmcmc import CyclicalSGMCMC, steps_per_epoch
from uqkit.bench.models import build_model
from uqkit.bench.posterior_distillation import (
    APD_DRAWN_NETWORKS,
    APD_STEPS,
    STUDENT_EPOCHS,
    DistilledGenerator,
    DistilledStudent,
    cycle_groups,
)
from uqkit.bench.registry import Method, MethodContext, NotApplicableError, register_method
from uqkit.methods.prediction_protocol import predict
from uqkit.prediction import GaussianPrediction, Prediction

__all__ = ["APD_MAX_PARAMETERS", "DistilledCSGMCMC", "GeneratedCSGMCMC"]

APD_MAX_PARAMETERS = 100_000
"""Largest backbone (in parameters) ``apd`` is built for: Wang et al. 2018 distil networks of this order."""


class DistilledCSGMCMC(DistilledStudent, CyclicalSGMCMC):
    """``csgmcmc``'s samples distilled into one network (predictive distillation); ``S = 1`` once distilled.

    While the chain trains (when no ``csgmcmc`` network was shared), the chain predicts, as in ``csgmcmc``.
    """

    shares_training_with = "csgmcmc"

    def __init__(self, network: nn.Module, student: nn.Module, num_data: int, steps_per_epoch: int) -> None:
        CyclicalSGMCMC.__init__(self, network, num_data, steps_per_epoch)
        self.student = student  # not attach_student: S is this class's property (the chain's while it trains)

    @property
    def num_samples(self) -> int:  # type: ignore[override]
        """1: the student, or the chain while it trains."""
        return 1

    def teacher(self) -> nn.Module:
        """The samples as one :class:`uqkit.DeepEnsemble` (whose last member warm-starts the student)."""
        return self.network.ensemble

    def predict(self, inputs: torch.Tensor) -> Prediction | GaussianPrediction:
        """The student's prediction (``S = 1``); the chain's while the chain trains."""
        if self._uses_chain():
            return predict(self.chain, inputs, output=self.likelihood.output)
        return predict(self.student, inputs, output=self.likelihood.output)

    def num_parameters(self) -> int:
        """The student's parameters: what predicts."""
        return sum(p.numel() for p in self.student.parameters())


class GeneratedCSGMCMC(DistilledGenerator, CyclicalSGMCMC):
    """``csgmcmc``'s samples distilled into an APD weight generator; ``S`` drawn networks predict."""

    shares_training_with = "csgmcmc"

    def __init__(
        self, network: nn.Module, context: MethodContext, num_data: int, steps_per_epoch: int
    ) -> None:
        CyclicalSGMCMC.__init__(self, network, num_data, steps_per_epoch)
        shape, classes, model = context.input_shape, context.num_classes, context.model
        # attach_generator's state, without its assignment of S (a property here: the chain's while it trains)
        self.__dict__["_template_factory"] = lambda: build_model(model, shape, classes)
        self.__dict__["_apd"] = None
        self.__dict__["_drawn"] = None

    @property
    def num_samples(self) -> int:  # type: ignore[override]
        """``S`` drawn networks; 1 (the chain) while the chain trains."""
        return 1 if self._apd is None else self.drawn_networks

    def posterior_vectors(self) -> torch.Tensor:
        """The collector's ``[K, P]`` samples."""
        return self.network.flat_samples()

    def posterior_groups(self, num_samples: int) -> torch.Tensor | None:
        """The cycle of each sample (kept in chain order, the same number per cycle: ``samples_per_cycle``,
        or fewer where the cycles' sampling stages are shorter): one generator per cycle."""
        return cycle_groups(num_samples, math.ceil(num_samples / self.num_cycles))

    def predict(self, inputs: torch.Tensor) -> Prediction | GaussianPrediction:
        """``S`` networks drawn from the generator; the chain's prediction while the chain trains."""
        if self._apd is None:
            return predict(self.chain, inputs, output=self.likelihood.output)
        return DistilledGenerator.predict(self, inputs)

    def num_parameters(self) -> int:
        """The generator's parameters (what is stored to predict)."""
        return sum(p.numel() for p in self._apd.parameters()) if self._apd is not None else 0


@register_method(
    "csgmcmc-distilled",
    f"csgmcmc's samples distilled into one network (Bayesian dark knowledge, Korattikara et al. 2015): "
    f"{STUDENT_EPOCHS} epochs of KL to the samples' predictive on the training inputs, started from the "
    "last sample; one network's inference cost",
    default=False,
)
def _csgmcmc_distilled(context: MethodContext) -> Method:
    network = build_model(context.model, context.input_shape, context.num_classes)
    student = build_model(context.model, context.input_shape, context.num_classes)
    return DistilledCSGMCMC(network, student, context.num_train, steps_per_epoch(context))


@register_method(
    "apd",
    "csgmcmc's samples distilled into weight generators (APD, Wang et al. 2018), one per cycle: WGAN-GP in "
    f"the cycle's principal coordinates, {APD_STEPS} generator steps each; {APD_DRAWN_NETWORKS} drawn "
    "networks predict, stratified over the cycles; "
    f"backbones up to {APD_MAX_PARAMETERS:,} parameters",
    default=False,
)
def _apd(context: MethodContext) -> Method:
    network = build_model(context.model, context.input_shape, context.num_classes)
    size = sum(p.numel() for p in network.parameters())
    if size > APD_MAX_PARAMETERS:
        raise NotApplicableError(
            f"apd distils networks of up to {APD_MAX_PARAMETERS:,} parameters; the {context.model} backbone "
            f"has {size:,} (use --model lenet5)"
        )
    return GeneratedCSGMCMC(network, context, context.num_train, steps_per_epoch(context))
