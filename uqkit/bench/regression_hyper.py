"""The UCI regression form of ``hyper-deep-ensemble`` (Wenzel et al. 2020), an opt-in method of
:mod:`uqkit.bench.regression`.

The algorithm is the classification twin's (:mod:`uqkit.bench.methods_hyper`, docs/hyper_ensembles.md),
run per split inside the UCI protocol, every choice on the split's validation part:

1. **Random search**: ``search_candidates`` configurations, the same for every split: the first untuned (no
   L2, no dropout: a deep ensemble's member), one at each learning rate of the grid, the others drawn from
   :class:`~uqkit.methods.hyper_ensemble.HyperparameterSpace` for the fit part's ``N`` rows (L2 log-uniform
   in ``(1e-2 / N, 1e2 / N)``, dropout uniform in ``(0, 0.3)`` before each layer). Label smoothing has no
   regression analogue (it smooths class targets): the space's draws of it are discarded. The learning
   rate alternates over the protocol's grid ``{1e-3, 1e-2}`` (candidate ``i`` gets ``learning_rates[i mod
   2]``), so that, as for every other method, it is chosen on validation from that grid. The untuned network
   at every learning rate puts each deep-ensemble member's configuration in the pool: with one untuned
   network at 1e-3 only, Concrete's pool held no low-dropout network at 1e-2 (the deep ensemble's choice on
   all 20 splits), and the selection kept 1e-3 networks that underfit in 400 epochs (test RMSE 5.82 against
   the deep ensemble's 5.09; docs/hyper_ensembles.md). Every candidate of
   every split is one slice of one stack (per-model learning rate, dropout rate and L2 coefficient),
   trained up to 400 epochs on the fit part and kept at its own epoch of lowest validation NLL.
2. **Greedy selection** of up to ``members`` distinct candidates with replacement on the validation NLL of
   their Gaussian mixture (:func:`~uqkit.methods.hyper_ensemble.greedy_mixture_selection`, Caruana et al.
   2004, on each network's log-density of each validation target).
3. **Stratification**: ``retrained`` new initialisations of the selected configurations, round robin, most
   selected first (:func:`~uqkit.methods.hyper_ensemble.stratified_retraining`), trained as step 1.
4. **Final greedy selection** over the stratified pool (the search's selected networks and the retrained
   ones); a network selected ``c`` of ``L`` times weighs ``c / L`` in the predictive mixture.
5. **The protocol's retraining**: each finally selected network's configuration is trained again from a new
   initialisation on the whole training split for its chosen number of epochs, and tested with its weight.

Dropout is training-only here (``use_posterior_mean`` at validation and test; the networks predict
deterministically), as in the classification twin. Budget: ``search_candidates + retrained = 15`` networks
of up to 400 epochs per split on the fit part (three times a 5-member ensemble's networks, as the
classification twin) plus the final members' retraining; in the block's ``training`` and ``details``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from uqkit.bench.regression import (
    RegressionFit,
    RegressionMethod,
    SelectionNetworks,
    register_regression_method,
    training_budget,
    validation_pairs,
)
from uqkit.bench.regression_stack import HIDDEN_UNITS, split_data, train_stack
from uqkit.data.uci import RegressionTable
from uqkit.methods.hyper_ensemble import (
    Hyperparameters,
    HyperparameterSpace,
    greedy_mixture_selection,
    stratified_retraining,
)
from uqkit.nn import use_posterior_mean
from uqkit.nn.stacked import StackedGaussianMLP
from uqkit.objectives import gaussian_nll_loss

__all__ = ["HyperEnsembleRegression"]

_DIVERGED_LOG_LIKELIHOOD = -1e30
"""Stands for a non-finite validation log-density (a network that diverged from its first epoch), so that
the greedy selection never picks it while a finite candidate is left."""


@dataclass(frozen=True)
class HyperEnsembleRegression(RegressionMethod):
    """A hyper-deep ensemble of up to ``members`` Gaussian-head networks per split (module docstring).

    Attributes:
        search_candidates: the random search's size (the first ``len(learning_rates)`` untuned, one per
            learning rate; at least that many).
        retrained: the networks of the stratification stage.
        dropout_range: the search's dropout range.
    """

    shared_random_search: ClassVar[bool] = True
    """The search's configurations are drawn once for all splits: ``--split-chunks`` runs it unchunked."""
    per_split_details: ClassVar[tuple[str, ...]] = (
        "details.members_selected",
        "details.selections",
        "details.search_selection",
        "details.final_val_nll",
    )
    """The lists of ``details`` with one entry per split (chunks of splits concatenate them)."""
    search_candidates: int = 10
    retrained: int = 5
    dropout_range: tuple[float, float] = (0.0, 0.3)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.flipout or self.ncp or self.dropout_rates is not None or self.adversarial:
            raise ValueError(f"{self.name}: the hyper-deep ensemble searches its own dropout and L2 only")
        if self.search_candidates < 1 or self.retrained < 1 or self.num_members < 1:
            raise ValueError(f"{self.name}: search_candidates, retrained and members must be >= 1")
        if self.search_candidates < len(self.learning_rates):
            raise ValueError(
                f"{self.name}: search_candidates must hold the untuned network at each of the "
                f"{len(self.learning_rates)} learning rates {tuple(self.learning_rates)}, got "
                f"{self.search_candidates}"
            )

    @property
    def uses_dropout(self) -> bool:
        return True

    def candidates(self, num_train: int, seed: int) -> list[dict[str, float]]:
        """The random search's configurations for a fit part of ``num_train`` rows, drawn from ``seed``."""
        generator = torch.Generator().manual_seed(seed)
        space = HyperparameterSpace.for_training_set(num_train, dropout=self.dropout_range)
        untuned = [Hyperparameters()] * len(self.learning_rates)  # a deep ensemble's member at each rate
        count = self.search_candidates - len(untuned)
        drawn = space.sample(count, generator) if count > 0 else []
        return [
            {
                "learning_rate": float(self.learning_rates[index % len(self.learning_rates)]),
                "l2": hyperparameters.l2,
                "dropout": hyperparameters.dropout,
            }
            for index, hyperparameters in enumerate([*untuned, *drawn])
        ]

    def grid(self) -> list[dict[str, float]]:
        """The search's configurations (drawn at :meth:`fit` for the fit part's size; here for a nominal
        1000 rows, for the recipe)."""
        return self.candidates(1000, 0)

    def train_networks(
        self, phase, split_of_model: torch.Tensor, configs: list[dict[str, float]], seed: int
    ) -> tuple[StackedGaussianMLP, torch.Tensor, torch.Tensor]:
        """Train network ``k`` with ``configs[k]`` on split ``split_of_model[k]`` of ``phase`` (one stack),
        each kept at its epoch of lowest validation NLL (dropout off when scoring).

        Returns:
            The stack at those epochs, the ``[K]`` epochs, and the ``[K, V]`` validation log-densities
            ``log N(y_v; mu_k(x_v), sigma_k^2(x_v))`` there (standardised units).
        """

        stack, result = train_stack(
            self,
            phase,
            split_of_model,
            configs,
            self.epochs,
            seed,
            validation_every=self.score_every,
            scoring="posterior-mean",
            independent_parts=True,
        )
        model = stack.network
        log_densities = _log_densities(model, phase.eval_x[split_of_model], phase.eval_y[split_of_model])
        finite = torch.isfinite(log_densities)
        log_densities = torch.where(
            finite, log_densities, torch.full_like(log_densities, _DIVERGED_LOG_LIKELIHOOD)
        )
        return model, torch.tensor(result.selected_epochs), log_densities

    def fit(
        self, table: RegressionTable, seed: int, log: Callable[[str], None] | None = None
    ) -> RegressionFit:
        """The five stages of the module docstring."""
        started = time.perf_counter()
        splits, size = len(table.splits), self.num_members
        pairs = validation_pairs(table, seed)
        phase = split_data(table, pairs)
        candidates = self.candidates(phase.train_x.shape[1], seed)
        count = len(candidates)
        search, search_epochs, search_ll = self.train_networks(
            phase, torch.arange(splits).repeat_interleave(count), candidates * splits, seed
        )
        search_ll = search_ll.reshape(splits, count, -1)
        first = [greedy_mixture_selection(search_ll[split], size) for split in range(splits)]
        retrained_from = [stratified_retraining(s.indices, self.retrained) for s in first]
        retrained, retrained_epochs, retrained_ll = self.train_networks(
            phase,
            torch.arange(splits).repeat_interleave(self.retrained),
            [candidates[index] for indices in retrained_from for index in indices],
            seed + 3,
        )
        retrained_ll = retrained_ll.reshape(splits, self.retrained, -1)
        # The final selection per split over its stratified pool: (stage, index) with stage 0 the search's
        # candidate ``index``, stage 1 the split's retrained network ``index``.
        members: list[list[dict[str, Any]]] = []
        selection_states: list[dict[str, torch.Tensor]] = []
        final_scores = []
        for split in range(splits):
            distinct = list(first[split].distinct)
            pool = [(0, index) for index in distinct] + [(1, index) for index in range(self.retrained)]
            pool_ll = torch.cat([search_ll[split, distinct], retrained_ll[split]])
            final = greedy_mixture_selection(pool_ll, size)
            final_scores.append(final.score)
            split_members = []
            for position in final.distinct:
                stage, index = pool[position]
                row = split * (count if stage == 0 else self.retrained) + index
                stack, epochs = (search, search_epochs) if stage == 0 else (retrained, retrained_epochs)
                config = candidates[index if stage == 0 else retrained_from[split][index]]
                split_members.append(
                    {
                        "stage": ("search", "retrained")[stage],
                        "index": index,
                        "count": final.counts[position],
                        **config,
                        "epochs": int(epochs[row]),
                    }
                )
                selection_states.append({name: value[row] for name, value in stack.state_dict().items()})
            members.append(split_members)
        rows = _rows(members)
        networks = SelectionNetworks(
            _deterministic_stack(selection_states, table.num_features),
            [max(m["epochs"] for m in split_members) for split_members in members],
            phase,
            pairs,
            rows,
        )
        selection_time = time.perf_counter() - started
        if log is not None:
            log(
                f"[uqkit]   {self.name}: search, selection and stratification on validation in "
                f"{selection_time:.1f} s"
            )
        # The protocol's retraining of the final members on the whole training split.
        flat = [member for split_members in members for member in split_members]
        split_of_model = torch.tensor([s for s, split_members in enumerate(members) for _ in split_members])
        full = split_data(table, [(train, train) for train, _ in table.splits])
        snapshot = torch.tensor([member["epochs"] for member in flat])
        stack, _ = train_stack(
            self,
            full,
            split_of_model,
            [{key: member[key] for key in ("learning_rate", "dropout", "l2")} for member in flat],
            int(snapshot.max()),
            seed + 7,
            snapshot_epochs=snapshot,
        )
        state = stack.network.state_dict()
        model = _deterministic_stack(
            [{name: value[k] for name, value in state.items()} for k in range(len(flat))], table.num_features
        )
        best = search_ll.mean(dim=2).neg()  # [splits, candidates] validation NLL of each at its epoch
        configs = [
            {
                "learning_rate": max(split_members, key=lambda m: m["count"])["learning_rate"],
                "members": split_members,
            }
            for split_members in members
        ]
        networks_trained = count + self.retrained
        details = {
            "search_candidates": count,
            "retrained": self.retrained,
            "num_members": size,
            "networks_trained_per_split": networks_trained,
            "max_epochs_each": self.epochs,
            "deep_ensemble_trainings": networks_trained / size,
            "label_smoothing": "none: no regression analogue",
            "members_selected": [len(split_members) for split_members in members],
            "selections": [sum(m["count"] for m in split_members) for split_members in members],
            "search_selection": [list(s.indices) for s in first],
            "final_val_nll": final_scores,
        }
        return RegressionFit(
            model,
            size,
            configs,
            [max(member["epochs"] for member in split_members) for split_members in members],
            [[v if math.isfinite(v) else None for v in row] for row in best.tolist()],
            networks,
            selection_time,
            candidates,
            training_budget(
                "Adam",
                networks_trained * self.epochs,
                [sum(m["epochs"] for m in split_members) for split_members in members],
            ),
            details,
            rows,
        )


def _log_densities(model: StackedGaussianMLP, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[K, V]`` Gaussian log-densities of each model's targets, dropout off."""
    with torch.no_grad(), use_posterior_mean(model):
        mean, variance = model(x)
    return -gaussian_nll_loss(mean, variance, y).squeeze(-1)


def _rows(members: list[list[dict[str, Any]]]) -> list[torch.Tensor]:
    """Per split, its rows of the member stack (split-major), each repeated by its selection count."""
    rows, start = [], 0
    for split_members in members:
        counts = torch.tensor([member["count"] for member in split_members])
        rows.append(torch.arange(start, start + len(split_members)).repeat_interleave(counts))
        start += len(split_members)
    return rows


def _deterministic_stack(states: list[dict[str, torch.Tensor]], in_features: int) -> StackedGaussianMLP:
    """One stack without dropout from per-network states (their dropout rates dropped: it was training's)."""
    model = StackedGaussianMLP(len(states), in_features, HIDDEN_UNITS)
    names = model.state_dict().keys()
    model.load_state_dict({name: torch.stack([state[name] for state in states]) for name in names})
    return model.eval()


register_regression_method(
    HyperEnsembleRegression(
        "hyper-deep-ensemble",
        "hyper-deep ensemble (Wenzel et al. 2020) of up to 5: random search of 10 (L2, dropout; lr from the "
        "protocol's grid), greedy selection on validation NLL, 5 retrained initialisations, final greedy "
        "selection, each network's epochs chosen on validation (at most 400), members retrained on the "
        "whole training split; 15 networks per split (3x a 5-member ensemble's)",
        num_members=5,
        learning_rates=(1e-3, 1e-2),
        epochs=400,
        select_epochs=True,
        search_candidates=10,
        retrained=5,
    ),
    default=False,
)
