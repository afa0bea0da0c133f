"""The ``hyper-deep-ensemble`` benchmark method (Wenzel et al. 2020), for the Fashion-MNIST tasks.

Importing this module registers it in :data:`uqkit.bench.registry.METHODS`. The algorithm is
:mod:`uqkit.methods.hyper_ensemble`'s; the benchmark runs it in two trainings of the run's epochs each:

1. **Random search** (the runner's training): :data:`SEARCH_CANDIDATES` networks of the task's backbone, the
   first with the default hyperparameters (no L2, dropout or label smoothing: the deep ensemble's member), the
   others drawn from :func:`search_space` (L2 log-uniform in ``(1e-2 / N, 1e2 / N)`` for ``N`` training
   examples, dropout uniform in ``(0, 0.3)`` after every hidden activation, label smoothing log-uniform in
   ``(1e-5, 0.2)``), trained as one :class:`~uqkit.methods.hyper_ensemble.HyperEnsemble` stack, each
   candidate on its own batch order (as the deep ensemble's members), the whole stack kept at the epoch where
   its candidates' averaged prediction has the lowest validation NLL (the deep ensemble's rule;
   :class:`HyperCandidates`).
2. **Greedy selection** of up to :data:`NUM_MEMBERS` distinct candidates on validation NLL, with
   replacement (:func:`~uqkit.methods.hyper_ensemble.greedy_ensemble_selection`).
3. **Stratification** (:meth:`HyperDeepEnsembleMethod.fit_post_hoc`): :data:`RETRAINED` new initialisations
   of the selected hyperparameters, spread round-robin over the distinct ones, most selected first, trained
   as a second stack with the same trainer, epochs, learning rate, (constant) schedule and epoch rule, new
   batch orders.
4. **Final greedy selection** of :data:`NUM_MEMBERS` distinct networks over the stratified pool (the
   search's networks of the selected hyperparameters and the retrained ones; fewer only when no addition
   lowers the validation NLL). A network selected ``c`` times weighs ``c / L`` of the ``L`` selections: the
   final ensemble runs each network once and predicts ``[L, B, C]``, its rows repeated ``c`` times.

Budget: ``SEARCH_CANDIDATES + RETRAINED = 15`` networks, each trained for the run's epochs, against the
deep ensemble's 5: three deep ensembles' training (a LeNet-5 training step of the two stacks measured
2.8-3.5x the deep ensemble's, docs/hyper_ensembles.md). The paper retrains each selected hyperparameter with
``K`` new initialisations (up to ``K^2 = 25`` networks, after a search of up to 100 candidates in
uncertainty-baselines' CIFAR sweeps); this budget keeps the whole method at 3x a deep ensemble. Every
selection uses the validation split only. The numbers (networks trained, epochs, selections, validation
NLLs) are in the method's ``details`` in ``results.json``.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from uqkit._validation import check_positive_int
from uqkit.bench.models import build_model
from uqkit.bench.registry import DeepEnsembleMethod, Method, MethodContext, register_method
from uqkit.methods.hyper_ensemble import (
    HyperEnsemble,
    Hyperparameters,
    HyperparameterSpace,
    greedy_ensemble_selection,
    member_log_probs,
    retrain_and_select,
)

__all__ = [
    "NUM_MEMBERS",
    "RETRAINED",
    "SEARCH_CANDIDATES",
    "HyperCandidates",
    "HyperDeepEnsembleMethod",
    "build_hyper_deep_ensemble",
    "search_space",
]

NUM_MEMBERS = 5
SEARCH_CANDIDATES = 10
RETRAINED = 5
DROPOUT_RANGE = (0.0, 0.3)
HYPER_TASKS = ("fashion-mnist", "fashion-mnist-holdout")
_VALIDATION_BATCH = 1000
EPOCH_SELECTIONS = ("ensemble", "member")


def search_space(num_train: int) -> HyperparameterSpace:
    """The random search's space for ``num_train`` training examples: uncertainty-baselines' L2 range
    ``(1e-2 / N, 1e2 / N)`` and label-smoothing range ``(1e-5, 0.2)``, dropout uniform in ``(0, 0.3)``."""
    return HyperparameterSpace.for_training_set(num_train, dropout=DROPOUT_RANGE)


class HyperCandidates(DeepEnsembleMethod):
    """A :class:`~uqkit.methods.hyper_ensemble.HyperEnsemble` trained by the benchmark's trainer.

    Each member gets its own batch order (``num_batch_orders = M``, as the deep ensemble's members) and its
    own hyperparameters in the loss (:meth:`HyperEnsemble.loss`). The learning rate is constant, inherited
    from the deep ensemble's recipe (:class:`~uqkit.bench.registry.DeepEnsembleMethod`), so that the untuned
    candidate is a deep ensemble's member: with the task's cosine decay, the search's networks on LeNet-5 at
    20 epochs pooled to a validation NLL of 0.2128 at best (25 networks, five of them untuned), while the
    deep ensemble's five reached 0.2066 (docs/hyper_ensembles.md, "The learning-rate schedule").

    Args:
        network: the stack of candidates.
        epoch_selection: ``"ensemble"`` (default) keeps the whole stack at the epoch of the lowest validation
            NLL of its members' averaged probabilities, the deep ensemble's rule; ``"member"`` keeps each
            candidate at its own epoch of lowest validation NLL (``select_members_separately``). Chosen on
            validation: on LeNet-5 at 20 epochs the final ensemble's validation NLL was 0.2055 / 0.2002 with
            ``"ensemble"`` against 0.2116 / 0.2052 with ``"member"`` (seeds 0 / 1; docs/hyper_ensembles.md,
            "Which epoch each network keeps"): a candidate's own best epoch is an earlier, less confident
            network, which an ensemble does not need.
    """

    classification_only = "label smoothing and the greedy selection act on class probabilities"

    def __init__(self, network: HyperEnsemble, epoch_selection: str = "ensemble") -> None:
        super().__init__(network)
        if epoch_selection not in EPOCH_SELECTIONS:
            raise ValueError(f"epoch_selection must be one of {EPOCH_SELECTIONS}, got {epoch_selection!r}")
        self.epoch_selection = epoch_selection

    @property
    def select_members_separately(self) -> bool:  # read by the deep ensemble's epoch selection
        return self.epoch_selection == "member"

    def training_loss(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Sum over members of their label-smoothed cross-entropy plus L2 term; ``[M, B, ...]`` inputs with
        ``[M, B]`` labels (one batch per member) or ``[B, ...]`` with ``[B]``."""
        return self.network.loss(inputs, labels)


class HyperDeepEnsembleMethod(HyperCandidates):
    """The random search's candidates while the trainer runs, the selected hyper-deep ensemble after
    :meth:`fit_post_hoc` (which trains the stratified networks and selects the final members).

    Args:
        factory: builds one member (the task's backbone with ``nn.Dropout`` after every hidden activation).
        candidates: the random search's hyperparameters.
        num_members: the final ensemble's size (most distinct selections).
        num_retrained: the networks of the stratification stage; ``None`` retrains each distinct selected
            hyperparameter ``num_members - 1`` times (the paper's full stratification: ``num_members``
            initialisations each, up to ``num_members**2`` networks in the pool).
        training: the run's :class:`~uqkit.bench.trainer.TrainConfig` (the retraining stage uses its epochs,
            batch size, learning rate, schedule and device, with batch orders seeded from
            ``seed + len(candidates)``).
        epoch_selection: how both stacks (search and retraining) keep an epoch: ``"member"`` each network
            at its own best, ``"ensemble"`` each stack at its averaged prediction's best
            (:class:`HyperCandidates`).
    """

    def __init__(
        self,
        factory,
        candidates: list[Hyperparameters],
        num_members: int,
        num_retrained: int | None,
        training=None,
        epoch_selection: str = "ensemble",
    ) -> None:
        super().__init__(HyperEnsemble(factory, candidates), epoch_selection)
        self.factory = factory
        self.num_members = num_members
        self.num_retrained = num_retrained
        self.training_config = training
        self.record: dict[str, Any] = {}

    def _use_network(self, network: HyperEnsemble) -> None:
        self.network = network
        self._count_members()

    def _count_members(self) -> None:
        """``S``: one row per selection (a member chosen twice predicts twice); a batch order per network."""
        self.num_samples = self.network.uqkit_num_members
        self.num_batch_orders = self.network.num_members

    def fit_post_hoc(
        self,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        train: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        """Select on the validation split (``inputs``, ``labels``), retrain the selected hyperparameters on
        ``train`` and select the final members (module docstring, steps 2-4).

        Raises:
            ValueError: without the training split or the run's training configuration.
        """
        from uqkit.bench.trainer import train_method

        if train is None or self.training_config is None:
            raise ValueError(
                "hyper-deep-ensemble: the retraining stage needs the training split and the run's training "
                "configuration (MethodContext.training); got "
                f"train={'given' if train is not None else None}, training={self.training_config}"
            )
        if self.record:  # selected already (the network is the final ensemble)
            return
        config = self.training_config
        started = time.perf_counter()
        candidates = self.network
        candidate_log_probs = member_log_probs(candidates, inputs, _VALIDATION_BATCH)
        search = greedy_ensemble_selection(candidate_log_probs, labels, self.num_members)
        retraining_config = replace(
            config,
            seed=config.seed + candidates.num_members,
            schedule=self.learning_rate_schedule or config.schedule,
        )
        retraining: dict[str, Any] = {}

        def fit(stack: HyperEnsemble) -> None:
            method = HyperCandidates(stack, self.epoch_selection)
            method.use_likelihood(self.likelihood)
            result = train_method(
                method, "hyper-deep-ensemble retraining", *train, inputs, labels, retraining_config
            )
            retraining.update(selected_epochs=result.selected_epochs, train_time_s=result.train_time_s)

        with torch.random.fork_rng():
            torch.manual_seed(retraining_config.seed)  # the new initialisations and their dropout masks
            result = retrain_and_select(
                candidates,
                candidate_log_probs,
                search,
                fit,
                inputs,
                labels,
                self.num_members,
                self.num_retrained,
                _VALIDATION_BATCH,
            )
        self._use_network(result.ensemble.to(inputs.device))
        self.record = self._describe(candidates, result, config, retraining, time.perf_counter() - started)

    def _describe(self, candidates, result, config, retraining, seconds) -> dict[str, Any]:
        searched = [h.to_dict() for h in candidates.hyperparameters]
        retrained = result.retrained.hyperparameters
        members = []
        counts = result.ensemble.multiplicity.tolist()
        for (stage, index), count in zip(result.sources, counts, strict=True):
            hyperparameters = searched[index] if stage == 0 else retrained[index].to_dict()
            members.append(
                {"stage": ("search", "retrained")[stage], "index": index, "count": count, **hyperparameters}
            )
        networks = candidates.num_members + len(result.retrained_from)
        return {
            "networks_trained": networks,
            "search_candidates": candidates.num_members,
            "retrained": len(result.retrained_from),
            "epochs_each": config.epochs,
            "epoch_selection": self.epoch_selection,
            "network_epochs": networks * config.epochs,
            "deep_ensemble_trainings": networks / self.num_members,
            "num_members": self.num_members,
            "members_selected": len(result.final.distinct),
            "selections": len(result.final.indices),
            "search": {
                "hyperparameters": searched,
                "selection": list(result.search.indices),
                "val_nll": list(result.search.scores),
            },
            "retraining": {
                "from_candidates": list(result.retrained_from),
                "selected_epochs": retraining.get("selected_epochs", []),
                "train_time_s": retraining.get("train_time_s", math.nan),
            },
            "final": {"members": members, "val_nll": list(result.final.scores)},
            "selection_and_retraining_time_s": seconds,
        }

    def result_details(self) -> dict[str, Any]:
        """The search's budget and selections (empty before :meth:`fit_post_hoc`)."""
        return dict(self.record)

    def get_extra_state(self) -> dict[str, Any]:
        return self.record

    def set_extra_state(self, state: Any) -> None:
        self.record = dict(state) if state else {}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load a state; one saved after selection rebuilds the network with the final ensemble's size."""
        size = state_dict.get("network.l2")
        if size is not None and size.shape[0] != self.network.num_members:
            self.network = HyperEnsemble(self.factory, [Hyperparameters()] * size.shape[0])
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self._count_members()  # the loaded multiplicities
        return result


def _factory(context: MethodContext):
    def factory() -> nn.Module:
        return build_model(
            context.model, context.input_shape, context.num_classes, dropout=lambda: nn.Dropout(0.0)
        )

    return factory


@register_method(
    "hyper-deep-ensemble",
    f"hyper-deep ensemble (Wenzel et al. 2020) of {NUM_MEMBERS}: random search of {SEARCH_CANDIDATES} "
    f"(L2, dropout, label smoothing), greedy selection on validation NLL, {RETRAINED} retrained "
    f"initialisations, final greedy selection; {SEARCH_CANDIDATES + RETRAINED} networks x the run's epochs "
    f"({(SEARCH_CANDIDATES + RETRAINED) / NUM_MEMBERS:g}x a deep ensemble's training)",
    tasks=HYPER_TASKS,
    default=False,
)
def _hyper_deep_ensemble(context: MethodContext) -> Method:
    return build_hyper_deep_ensemble(context)


def build_hyper_deep_ensemble(
    context: MethodContext,
    search_candidates: int = SEARCH_CANDIDATES,
    retrained: int | None = RETRAINED,
    epoch_selection: str = "ensemble",
) -> HyperDeepEnsembleMethod:
    """The ``hyper-deep-ensemble`` method with another budget: ``search_candidates`` networks searched (the
    first the untuned one) and ``retrained`` new initialisations (``None``: the paper's full stratification,
    ``NUM_MEMBERS - 1`` new initialisations of each distinct selected hyperparameter, known after the search)
    and ``epoch_selection`` (``"ensemble"`` or ``"member"``, :class:`HyperCandidates`).

    The draws come from one generator seeded from the run's seed, ``search_candidates - 1`` rows at once, so
    a larger search holds a smaller one's hyperparameters as its first candidates
    (``benchmarks/hyper_search_size.py`` registers such a variant under another name).
    """
    if search_candidates < NUM_MEMBERS:
        raise ValueError(
            f"search_candidates must be at least the ensemble's {NUM_MEMBERS} members, got "
            f"{search_candidates}"
        )
    if retrained is not None:
        check_positive_int(retrained, "retrained (None for the paper's full stratification)")
    generator = torch.Generator().manual_seed(int(torch.randint(2**31 - 1, ())))  # from the run's seed
    drawn = search_space(context.num_train).sample(search_candidates - 1, generator)
    candidates = [Hyperparameters(), *drawn]  # the first: the untuned network (a deep ensemble's member)
    return HyperDeepEnsembleMethod(
        _factory(context), candidates, NUM_MEMBERS, retrained, context.training, epoch_selection
    )
