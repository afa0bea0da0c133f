"""The UCI regression form of ``csgmcmc-distilled``, an opt-in method of :mod:`uqkit.bench.regression`.

``csgmcmc``'s samples (:mod:`uqkit.bench.regression_sgmcmc`; the same chains, configurations and seeds)
distilled into one Gaussian-head network per split, the classification twin's predictive distillation
(Korattikara et al. 2015, "Bayesian Dark Knowledge"; :mod:`uqkit.methods.distillation`): the student
``N(mu(x), sigma^2(x))`` is trained on the training inputs to minimise

    ``KL( N(m_T(x), v_T(x)) || N(mu(x), sigma^2(x)) ) = NLL(m_T(x); mu, sigma^2) + v_T(x) / (2 sigma^2) + c``,

``m_T``, ``v_T`` the mean and variance of the samples' Gaussian mixture (the cross-entropy from the mixture
depends on it only through them; ``c`` the teacher's entropy, constant). It predicts at one network's cost.

Inside the protocol, every choice on validation: the students of the selection phase distil each split's
samples of the fit part (its chosen configuration's), with Adam at each learning rate of
``student_learning_rates`` for up to ``student_epochs`` epochs, scored by their own validation NLL after every
epoch; the split's (learning rate, epoch) of lowest validation NLL then distils the samples of the whole
training split. The student starts from a new initialisation (the classification twin warm-starts from the
chain's last state, which is not kept here) and sees the training inputs only (no input noise, as the twin's
default).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from uqkit.bench.regression import (
    RegressionFit,
    SelectionNetworks,
    register_regression_method,
    training_budget,
)
from uqkit.bench.regression_sgmcmc import CHAIN_EPOCHS, CyclicalSGMCMCRegression, csgmcmc_recipe
from uqkit.bench.regression_stack import SplitData, build_stack, split_data, stack_size, train_stack
from uqkit.data.uci import RegressionTable
from uqkit.nn.stacked import StackedGaussianMLP

__all__ = ["DistilledSGMCMCRegression", "mixture_moments"]


def mixture_moments(samples: StackedGaussianMLP, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and variance of each split's equal-weight mixture of its samples' Gaussians at its inputs.

    Args:
        samples: a split-major stack of ``P * K`` networks (``K`` samples of each of ``P`` splits).
        x: ``[P, N, D]`` each split's inputs.

    Returns:
        ``[P, N, 1]`` each: ``E_k mu_k`` and ``E_k sigma_k^2 + Var_k mu_k``.
    """
    splits = x.shape[0]
    kept = stack_size(samples) // splits
    with torch.no_grad():
        mean, variance = samples(x.repeat_interleave(kept, dim=0))
    mean = mean.reshape(splits, kept, *mean.shape[1:])
    variance = variance.reshape(splits, kept, *variance.shape[1:])
    return mean.mean(dim=1), variance.mean(dim=1) + mean.var(dim=1, unbiased=False)


def _distillation_phase(phase: SplitData, samples: StackedGaussianMLP) -> tuple[SplitData, torch.Tensor]:
    """``phase`` with the samples' mixture mean as the training targets, and the mixture's variance."""
    mean, variance = mixture_moments(samples, phase.train_x)
    distilled = SplitData(
        phase.train_x, mean.to(phase.train_y.dtype), phase.eval_x, phase.eval_y, phase.standardizers
    )
    return distilled, variance


@dataclass(frozen=True)
class DistilledSGMCMCRegression(CyclicalSGMCMCRegression):
    """``csgmcmc``'s samples distilled into one network per split (module docstring).

    Attributes:
        student_learning_rates: the students' Adam learning rates, chosen on validation.
        student_epochs: the most epochs of a student (its epoch count chosen on validation).
    """

    per_split_details: ClassVar[tuple[str, ...]] = (
        *CyclicalSGMCMCRegression.per_split_details,
        "details.student.validation_nll",
    )
    """The lists of ``details`` with one entry per split (chunks of splits concatenate them)."""
    student_learning_rates: tuple[float, ...] = (1e-3, 1e-2)
    student_epochs: int = 400

    def fit(
        self, table: RegressionTable, seed: int, log: Callable[[str], None] | None = None
    ) -> RegressionFit:
        """``csgmcmc``'s fit, then the students: chosen on the selection phase's samples and validation
        rows, then distilled from the whole training split's samples."""
        teacher = super().fit(table, seed, log)
        started = time.perf_counter()
        splits, rates = len(table.splits), self.student_learning_rates
        selection = teacher.networks
        phase, spread = _distillation_phase(selection.phase, selection.model)
        split_of_model = torch.arange(splits).repeat_interleave(len(rates))
        students, result = train_stack(
            self,
            phase,
            split_of_model,
            [{"learning_rate": rate} for rate in rates] * splits,
            self.student_epochs,
            seed + 21,
            validation_every=1,
            scoring="posterior-mean",
            independent_parts=True,
            teacher_variance=spread,
        )
        student_nll = torch.tensor(result.selected_nlls, dtype=torch.float64).reshape(splits, len(rates))
        chosen = student_nll.argmin(dim=1) + torch.arange(splits) * len(rates)
        epochs = torch.tensor(result.selected_epochs)[chosen]
        networks = build_stack(self, torch.zeros(splits), table.num_features)
        state = students.network.state_dict()
        networks.load_state_dict({name: value[chosen] for name, value in state.items()})
        networks = SelectionNetworks(networks.eval(), epochs.tolist(), selection.phase, selection.pairs)
        student_selection = time.perf_counter() - started
        if log is not None:
            log(f"[uqkit]   {self.name}: students chosen on validation in {student_selection:.1f} s")
        full, full_spread = _distillation_phase(
            split_data(table, [(train, train) for train, _ in table.splits]), teacher.model
        )
        chosen_rates = [float(rates[int(c) % len(rates)]) for c in chosen]
        student, _ = train_stack(
            self,
            full,
            torch.arange(splits),
            [{"learning_rate": rate} for rate in chosen_rates],
            int(epochs.max()),
            seed + 27,
            snapshot_epochs=epochs,
            teacher_variance=full_spread,
        )
        configs = [
            {**config, "student_learning_rate": lr, "student_epochs": int(e)}
            for config, lr, e in zip(teacher.configs, chosen_rates, epochs, strict=True)
        ]
        details = {
            **(teacher.details or {}),
            "student": {
                "learning_rates": list(rates),
                "max_epochs": self.student_epochs,
                "validation_nll": student_nll.tolist(),
                "warm_start": False,
                "input_noise": 0.0,
            },
        }
        return RegressionFit(
            student.network,
            1,
            configs,
            teacher.epochs,
            teacher.validation_nll,
            networks,
            teacher.selection_time_s + student_selection,
            teacher.grid,
            training_budget(
                "SGHMC, then Adam (student)",
                teacher.training["selection_network_epochs"] + len(rates) * self.student_epochs,
                [teacher.training["retraining_network_epochs"] + int(e) for e in epochs],
            ),
            details,
        )


register_regression_method(
    DistilledSGMCMCRegression(
        "csgmcmc-distilled",
        "csgmcmc's 12 samples per split distilled into one network (Korattikara et al. 2015: KL from the "
        "samples' mixture to the student's Gaussian at the training inputs), one network's cost at test; "
        "csgmcmc's choices, then the student's learning rate in {1e-3, 1e-2} and epochs (<= 400) on "
        f"validation; chains of {CHAIN_EPOCHS} epochs",
        **csgmcmc_recipe(),
    ),
    default=False,
)
