"""The UCI regression form of ``apd``, an opt-in method of :mod:`uqkit.bench.regression`.

``csgmcmc``'s samples (:mod:`uqkit.bench.regression_sgmcmc`; the same chains, configurations and seeds, as
``csgmcmc-distilled`` reruns them) distilled into generators of weight vectors per split, the classification
twin's adversarial posterior distillation (Wang et al. 2018, "Adversarial Distillation of Bayesian Neural
Network Posteriors"; :class:`uqkit.APD`, docs/distillation.md): a generator ``G(z)``, ``z ~ N(0, I)``, and a
critic ``D`` trained as a WGAN-GP (Gulrajani et al. 2017, Algorithm 1) against samples ``theta_k``
(flattened weights of the protocol's Gaussian-head network),

    ``min_G max_D  E_k D(theta_k) - E_z D(G(z)) - lambda E_xhat (||grad D(xhat)||_2 - 1)^2``,

one generator per cycle of the chain (:class:`uqkit.APDMixture`), each against its cycle's samples (3 of
the split's ``K = 12``) in their whitened principal coordinates (``r = 2``): the cycles sample separate
modes, and one generator for all 12 put mass between them (validation NLL 0.47 against the samples' 0.34 on
Boston's first 4 splits; docs/distillation.md, "One generator per cycle"). ``S`` networks drawn from the
generators, as many from each cycle as it has samples (3 of ``S = 12``), predict as an equal-weight
Gaussian mixture, as the samples do:

    ``p(y | x, D) ~ (1 / S) sum_s N(y; mu_{theta_s}(x), sigma^2_{theta_s}(x))``.

The GAN's settings: ``distill_generator`` of :mod:`uqkit.bench.posterior_distillation` with
:data:`REGRESSION_APD_STEPS` generator updates of 5 critic updates each per generator, hidden layers of
:data:`REGRESSION_APD_HIDDEN` units, Adam at ``APD_LEARNING_RATE``, ``S = APD_DRAWN_NETWORKS``; nothing here
is chosen on test rows. The protocol's selection phase gets generators too: fitted to each split's fit-part
samples, their drawn networks give the split conformal intervals (calibrated on the validation rows, as
every method's selection networks) and a validation NLL beside the samples' (the block's
``details.apd.splits``), the only numbers on which the GAN's settings may be judged. The splits' generators
are fitted one after the other (times in docs/regression.md).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from uqkit.bench.posterior_distillation import (
    APD_DRAWN_NETWORKS,
    APD_LEARNING_RATE,
    cycle_groups,
    distill_generator,
)
from uqkit.bench.regression import (
    RegressionFit,
    SelectionNetworks,
    register_regression_method,
    training_budget,
)
from uqkit.bench.regression_distilled import mixture_moments
from uqkit.bench.regression_sgmcmc import CHAIN_EPOCHS, CyclicalSGMCMCRegression, csgmcmc_recipe
from uqkit.bench.regression_stack import build_stack
from uqkit.data.uci import RegressionTable
from uqkit.nn.stacked import StackedGaussianMLP
from uqkit.objectives import gaussian_nll_loss

__all__ = [
    "REGRESSION_APD_HIDDEN",
    "REGRESSION_APD_STEPS",
    "GeneratedSGMCMCRegression",
    "stack_from_vectors",
    "stack_vectors",
]

REGRESSION_APD_STEPS = 500
"""Generator updates of each cycle's WGAN-GP (4 generators per split)."""
REGRESSION_APD_HIDDEN = 64
"""Width of each generator's and critic's two hidden layers: a cycle's 3 samples span ``r = 2``
coordinates. With these settings one generator per cycle reached the samples' validation NLL on Boston's
first 4 splits, and one generator for all 12 samples did not (docs/distillation.md)."""


def stack_vectors(stack: StackedGaussianMLP) -> torch.Tensor:
    """``[K, P]`` the flattened weights of each network of a stack: row ``k`` is
    ``parameters_to_vector`` of a one-network stack holding network ``k`` (each parameter's row ``k``,
    flattened row-major, in ``parameters()`` order), the layout :class:`uqkit.APD` reads with a one-network
    stack as its template.

    Raises:
        TypeError: for a ``stack`` that is not a :class:`~uqkit.nn.stacked.StackedGaussianMLP`.
    """
    if not isinstance(stack, StackedGaussianMLP):
        raise TypeError(f"stack: expected a StackedGaussianMLP, got {type(stack).__name__}")
    return torch.cat([p.detach().flatten(1) for p in stack.parameters()], dim=1)


def stack_from_vectors(vectors: torch.Tensor, like: StackedGaussianMLP) -> StackedGaussianMLP:
    """The inverse of :func:`stack_vectors`: a stack of ``len(vectors)`` networks of ``like``'s
    architecture (``like`` a stack of any size; copied, then its parameters replaced), in eval mode.

    Raises:
        TypeError: for a ``like`` that is not a :class:`~uqkit.nn.stacked.StackedGaussianMLP`.
        ValueError: for ``vectors`` that are not ``[N, P]`` with ``P`` one network's parameter count.
    """
    if not isinstance(like, StackedGaussianMLP):
        raise TypeError(f"like: expected a StackedGaussianMLP, got {type(like).__name__}")
    sizes = [p[0].numel() for p in like.parameters()]
    if vectors.dim() != 2 or vectors.shape[1] != sum(sizes) or vectors.shape[0] == 0:
        raise ValueError(
            f"vectors: expected [N, {sum(sizes)}] (N >= 1 networks of {sum(sizes)} parameters), got shape "
            f"{tuple(vectors.shape)}"
        )
    count = vectors.shape[0]
    model = StackedGaussianMLP(count, like.hidden.in_features, like.hidden.out_features)
    with torch.no_grad():
        for parameter, block in zip(model.parameters(), vectors.split(sizes, dim=1), strict=True):
            parameter.copy_(block.reshape(count, *parameter.shape[1:]))
    return model.eval()


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class GeneratedSGMCMCRegression(CyclicalSGMCMCRegression):
    """``csgmcmc``'s samples distilled into APD weight generators per split, one per cycle;
    ``drawn_networks`` networks drawn from them predict (module docstring).

    Attributes:
        apd_steps: generator updates of each cycle's WGAN-GP.
        apd_learning_rate: Adam's step size for the generators and the critics.
        drawn_networks: ``S``, the networks drawn from each split's generators to predict (stratified over
            the cycles).
        apd_hidden: width of the generators' and the critics' two hidden layers (the GAN's cost per step
            grows as its square).
    """

    per_split_details: ClassVar[tuple[str, ...]] = (
        *CyclicalSGMCMCRegression.per_split_details,
        "details.apd.splits",
    )
    """The lists of ``details`` with one entry per split (chunks of splits concatenate them)."""
    apd_steps: int = REGRESSION_APD_STEPS
    apd_learning_rate: float = APD_LEARNING_RATE
    drawn_networks: int = APD_DRAWN_NETWORKS
    apd_hidden: int = REGRESSION_APD_HIDDEN

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("apd_steps", "drawn_networks", "apd_hidden"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{self.name}: {name} must be an int >= 1, got {value!r}")
        if not self.apd_learning_rate > 0:
            raise ValueError(f"{self.name}: apd_learning_rate must be > 0, got {self.apd_learning_rate!r}")

    def generate(
        self, samples: StackedGaussianMLP, splits: int, seed: int
    ) -> tuple[StackedGaussianMLP, list[int], list[float]]:
        """Fit each split's generators (one per cycle) to its samples (a split-major stack of ``splits * K``,
        each split's in chain order) and draw :attr:`drawn_networks` networks from them.

        Returns:
            The drawn networks as one split-major stack of ``splits * S``, each split's coordinate count
            (the sum of its generators' ``r``) and its fitting time in seconds.
        """
        vectors = stack_vectors(samples)
        kept = vectors.shape[0] // splits
        # kept in chain order, the same number per cycle (samples_per_cycle, or fewer when the sampling stages
        # are shorter)
        groups = cycle_groups(kept, math.ceil(kept / self.cycles))
        template = build_stack(self, torch.zeros(1), samples.hidden.in_features)
        drawn, ranks, times = [], [], []
        for split in range(splits):
            started = time.perf_counter()
            torch.manual_seed(seed + split)  # the generators' and critics' initialisation
            apd = distill_generator(
                vectors[split * kept : (split + 1) * kept],
                template,
                groups=groups,
                steps=self.apd_steps,
                learning_rate=self.apd_learning_rate,
                seed=seed + split,
                hidden=self.apd_hidden,
            )
            drawn.append(
                apd.sample(self.drawn_networks, generator=torch.Generator().manual_seed(seed + split))
            )
            ranks.append(sum(apd.dims) if groups is not None else apd.dim)
            times.append(time.perf_counter() - started)
        return stack_from_vectors(torch.cat(drawn), template), ranks, times

    def fit(
        self, table: RegressionTable, seed: int, log: Callable[[str], None] | None = None
    ) -> RegressionFit:
        """``csgmcmc``'s fit, then a generator per split on the selection phase's samples (for the conformal
        intervals and the validation NLL) and one on the whole training split's samples (tested)."""
        teacher = super().fit(table, seed, log)
        splits = len(table.splits)
        selection = teacher.networks
        started = time.perf_counter()
        drawn_selection, _, selection_times = self.generate(selection.model, splits, seed + 41)
        phase = selection.phase
        validation_nll = []
        for model in (selection.model, drawn_selection):
            mean, variance = mixture_moments(model, phase.eval_x)
            validation_nll.append(gaussian_nll_loss(mean, variance, phase.eval_y).mean(dim=(1, 2)))
        networks = SelectionNetworks(drawn_selection, selection.epochs, phase, selection.pairs)
        if log is not None:
            log(
                f"[uqkit]   {self.name}: generators of the selection phase fitted in "
                f"{time.perf_counter() - started:.1f} s"
            )
        model, ranks, times = self.generate(teacher.model, splits, seed + 47)
        details = {
            **(teacher.details or {}),
            "apd": {
                "coordinates": "pca",
                "generators": "one per cycle",
                "generator_steps": self.apd_steps,
                "critic_steps_per_generator_step": 5,
                "learning_rate": self.apd_learning_rate,
                "hidden": self.apd_hidden,
                "drawn_networks": self.drawn_networks,
                "generators_per_split": 2,
                # one entry per split (never equal between chunks of splits, which concatenate them)
                "splits": [
                    {
                        "rank": rank,
                        "validation_nll_samples": _finite(samples_nll),
                        "validation_nll_generated": _finite(generated_nll),
                        "fit_time_s": a + b,
                    }
                    for rank, samples_nll, generated_nll, a, b in zip(
                        ranks, *(v.tolist() for v in validation_nll), selection_times, times, strict=True
                    )
                ],
            },
        }
        return RegressionFit(
            model,
            self.drawn_networks,
            teacher.configs,
            teacher.epochs,
            teacher.validation_nll,
            networks,
            teacher.selection_time_s + sum(selection_times),
            teacher.grid,
            training_budget(
                "SGHMC, then Adam (APD's WGAN-GP)",
                teacher.training["selection_network_epochs"],
                [teacher.training["retraining_network_epochs"]] * splits,
            ),
            details,
        )


register_regression_method(
    GeneratedSGMCMCRegression(
        "apd",
        "csgmcmc's 12 samples per split distilled into weight generators, one per cycle (APD, Wang et al. "
        f"2018: WGAN-GP in the cycle's principal coordinates, {REGRESSION_APD_STEPS} generator steps each, "
        f"hidden {REGRESSION_APD_HIDDEN}, Adam lr {APD_LEARNING_RATE:g}); {APD_DRAWN_NETWORKS} drawn "
        "networks, 3 per cycle, predict as a Gaussian mixture; csgmcmc's choices on "
        f"validation; chains of {CHAIN_EPOCHS} epochs",
        **csgmcmc_recipe(),
    ),
    default=False,
)
