"""Post-hoc benchmark methods on the trained deterministic network: ``laplace``.

Importing this module registers it in :data:`uqkit.bench.registry.METHODS`.

``laplace`` is :class:`uqkit.LastLayerLaplace` on the ``deterministic`` method's network, reused as it is
(``shares_training_with``, as ``temperature-scaled`` does): after training, the generalized Gauss-Newton of
the last ``nn.Linear`` is summed over the training split (the runner hands it to
:meth:`~uqkit.bench.registry.Method.fit_post_hoc`), the prior precision maximises the Laplace evidence, and
the prediction is the GLM predictive by the probit approximation, ``S = 1``: its probabilities carry the
posterior's uncertainty, but as one distribution they have no epistemic part (the leaderboard's epistemic
AUROC is 0.5, as for every ``S = 1`` method).
The choices (Kronecker-factored GGN, evidence, probit; against the exact GGN, the validation-NLL grid and
Monte Carlo) were measured on Fashion-MNIST's validation split: the constants below, and docs/laplace.md,
"In the benchmark".

The method is classification-only: the benchmark's regression networks end in a Gaussian head (a mean and
a scale per target from one layer), while the Laplace's Gaussian likelihood needs a layer that returns the
mean alone. A model whose output is not its last ``nn.Linear``'s is refused when the method is built (the
user-model path then reports it as not applicable, with the reason).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from uqkit.bench.models import build_model
from uqkit.bench.registry import MethodContext, NotApplicableError, SingleNetwork, register_method
from uqkit.methods.laplace import DEFAULT_MEMORY_BUDGET, LastLayerLaplace
from uqkit.methods.laplace_curvature import STRUCTURES
from uqkit.methods.prediction_protocol import predict
from uqkit.prediction import Prediction

__all__ = ["LAPLACE_HESSIAN", "LAPLACE_PRIOR_PRECISION", "LAPLACE_SAMPLES", "LaplaceMethod", "build_laplace"]

LAPLACE_HESSIAN = "kron"
"""Structure of the GGN: the Kronecker factors. Chosen on Fashion-MNIST's validation split (the default run's
deterministic MLP, seed 0; one thread beside other jobs, 2026-12-07; deterministic: NLL 0.2883, ECE 1.26%):
``kron`` NLL 0.2850, ECE 0.61%, fit on 54,000 in 4.5 s, 6,000 predicted in 0.44 s; ``full`` (exact) 0.2860,
1.18%, 62 s, 11 s. docs/laplace.md, "In the benchmark"."""
LAPLACE_PRIOR_PRECISION = "marglik"
"""How the prior precision is set: the Laplace evidence. Against the validation NLL over a grid
(``"val_nll"``), same measurement: ``kron`` 0.2850 / 0.61% (evidence, delta 92) and 0.2850 / 0.66% (grid,
delta 95); ``full`` 0.2860 / 1.18% and 0.2852 / 0.74%. The evidence needs no held-out data and ties on NLL."""
LAPLACE_SAMPLES: int | None = None
"""``None``: the probit predictive (``S = 1``). Monte Carlo with 32 samples was worse on validation (NLL
0.2878 against 0.2850 for ``kron``) for an epistemic split (mutual information) the probit cannot give."""


class LaplaceMethod(SingleNetwork):
    """The deterministic network with a last-layer Laplace posterior fitted after training.

    The :class:`~uqkit.LastLayerLaplace` is kept outside the module tree (its ``model`` is ``self.network``,
    which the state dict already holds); its fitted posterior travels as the method's extra state
    (:meth:`get_extra_state`), so a model file written after the fit reloads without the training data.

    Args:
        network: the backbone; its output must be its last ``nn.Linear``'s.
        hessian: ``"full"``, ``"kron"`` or ``"diag"``.
        prior_precision: ``"marglik"``, ``"val_nll"`` or a number.
        num_samples: ``None`` for the probit predictive, else Monte Carlo samples.
    """

    shares_training_with = "deterministic"
    classification_only = (
        "the benchmark's regression networks end in a Gaussian head (mean and scale from one layer); the "
        "Laplace's Gaussian likelihood needs a last layer that returns the mean alone"
    )

    def __init__(
        self,
        network: nn.Module,
        hessian: str = LAPLACE_HESSIAN,
        prior_precision: str | float = LAPLACE_PRIOR_PRECISION,
        num_samples: int | None = LAPLACE_SAMPLES,
    ) -> None:
        super().__init__(network)
        try:
            laplace = LastLayerLaplace(network, "classification", hessian, prior_precision=prior_precision)
        except ValueError as error:  # no nn.Linear output layer, or a layer too large for the structure
            raise NotApplicableError(str(error)) from None
        object.__setattr__(self, "laplace", laplace)  # not a submodule: its model is self.network
        self.laplace_samples = num_samples
        self.num_samples = 1 if num_samples is None else num_samples

    @property
    def fitted(self) -> bool:
        """Whether the posterior has been fitted (or loaded)."""
        return self.laplace.curvature is not None

    def fit_post_hoc(
        self,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        train: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        """Sum the last layer's GGN over the training split ``train``, then set the prior precision (by the
        evidence; by the NLL on the validation split ``inputs, labels`` with ``"val_nll"``).

        Raises:
            ValueError: without ``train``.
        """
        if train is None:
            raise ValueError(
                "laplace: fit_post_hoc needs the training split, train=(inputs, labels): the posterior's "
                "curvature is a sum over the data the network was trained on"
            )
        val = (inputs, labels) if self.laplace.prior_method == "val_nll" else (None, None)
        self.laplace.fit(train[0], train[1], val=val[0], val_targets=val[1])

    def predict(self, inputs: torch.Tensor) -> Prediction:
        """The GLM predictive of :meth:`uqkit.LastLayerLaplace.predict` (probit, or Monte Carlo).

        Before :meth:`fit_post_hoc` there is no posterior yet: the prediction is the MAP network's own
        (``S = 1``), the deterministic method's. That is what the trainer's validation passes score when
        ``laplace`` trains its network itself (a run without ``deterministic``), so the epoch it keeps is the
        one ``deterministic`` would keep.
        """
        if not self.fitted:
            return predict(self.network, inputs, num_samples=1, output=self.likelihood.output)
        return self.laplace.predict(inputs, num_samples=self.laplace_samples)

    # -- the fitted posterior as state -------------------------------------------------------------------
    def get_extra_state(self) -> dict[str, Any]:
        """The fitted posterior: the Laplace's buffers (its curvature's included) and the data count; ``{}``
        before the fit."""
        if not self.fitted:
            return {}
        buffers = {
            name: tensor.detach().clone()
            for name, tensor in self.laplace.named_buffers()
            if not name.startswith("model.")
        }
        return {
            "hessian": self.laplace.hessian,
            "num_data": self.laplace.curvature.num_data,
            "buffers": buffers,
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore a posterior saved by :meth:`get_extra_state` (``{}``: none).

        Raises:
            ValueError: for a posterior of another Hessian structure than this method's.
        """
        laplace = self.laplace
        laplace.curvature = None
        if not state:
            return
        if state["hessian"] != laplace.hessian:
            raise ValueError(
                f"laplace: the saved posterior has hessian={state['hessian']!r}, this method "
                f"hessian={laplace.hessian!r}"
            )
        layer = laplace.layer
        curvature = laplace._empty_curvature()
        curvature.num_data = int(state["num_data"])
        laplace.curvature = curvature
        for name, tensor in state["buffers"].items():
            owner, _, attribute = name.rpartition(".")
            setattr(laplace.get_submodule(owner), attribute, tensor.to(layer.weight.device))

    def _apply(self, fn, recurse: bool = True):  # .to(), .double(): the posterior moves with the network
        super()._apply(fn, recurse)
        if self.fitted:
            self.laplace._apply(fn, recurse)  # its model is self.network, already converted: a no-op there
        return self


def build_laplace(
    context: MethodContext,
    hessian: str = LAPLACE_HESSIAN,
    prior_precision: str | float = LAPLACE_PRIOR_PRECISION,
    num_samples: int | None = LAPLACE_SAMPLES,
) -> LaplaceMethod:
    """The ``laplace`` method for a task: the task's backbone with a last-layer Laplace.

    A ``"full"`` structure asked for falls back to ``"kron"`` where the exact GGN would exceed the default
    memory budget (a large output layer of a user's model).
    """
    network = build_model(context.model, context.input_shape, context.num_classes)
    last = list(network.modules())[-1]
    if hessian == "full" and isinstance(last, nn.Linear):
        bias, itemsize = last.bias is not None, last.weight.dtype.itemsize
        if STRUCTURES["full"].nbytes(1, last.out_features, last.in_features, bias, itemsize) > (
            DEFAULT_MEMORY_BUDGET
        ):
            hessian = "kron"
    return LaplaceMethod(network, hessian, prior_precision, num_samples)


register_method(
    "laplace",
    "the deterministic network + last-layer Laplace (K-FAC GGN, evidence prior, probit; Daxberger 2021)",
)(build_laplace)
