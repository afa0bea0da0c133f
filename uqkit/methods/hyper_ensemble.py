"""Hyper-deep ensembles (Wenzel et al. 2020): ensembles over weights *and* hyperparameters.

Wenzel, Snoek, Tran & Jenatton 2020, "Hyperparameter Ensembles for Robustness and Uncertainty
Quantification" (NeurIPS), Sec. 3: a random search over hyperparameters, a greedy selection of an ensemble
from the trained candidates on validation NLL (Caruana et al. 2004, "Ensemble Selection from Libraries of
Models", with replacement), the selected hyperparameters retrained from new random initialisations
("stratified across initialisations"), and a final greedy selection over that stratified pool. The predictive
is the uniform mixture over the selected multiset, ``p(y | x) = (1 / L) sum_l softmax(f_l(x))`` (a member
selected twice counts twice). docs/efficient_ensembles.md has the equations and what this implementation
simplifies.

* :func:`greedy_ensemble_selection`: Caruana's greedy forward selection with replacement, on the validation
  NLL of the averaged predictive, until ``num_members`` distinct candidates are in, or earlier when no
  addition lowers the NLL (Wenzel et al.'s rule, as their code); ties go to the lowest candidate index. A
  candidate selected ``c`` times of ``L`` weighs ``c / L``; :class:`HyperEnsemble` stores it once with that
  multiplicity.
* :class:`Hyperparameters`, :class:`HyperparameterSpace`: the per-member hyperparameters (L2 coefficient,
  dropout rate, label smoothing) and the random-search distribution over them (log-uniform L2 and label
  smoothing, as uncertainty-baselines' sweeps; uniform dropout rate).
* :class:`HyperEnsemble`: ``M`` networks with their own hyperparameters trained as *one* vectorized stack
  (:class:`uqkit.DeepEnsemble`, members folded into the batch): member ``m``'s loss is its own label-smoothed
  cross-entropy plus its own L2 term on its slice of the stacked weights, and its dropout layers drop at its
  own rate (:class:`uqkit.nn.dropout.MemberDropout`). The loss is the sum of the members' losses, so with a
  per-element optimiser this is ``M`` independent trainings.
* :func:`stratified_retraining`, :func:`retrain_and_select`, :func:`hyper_deep_ensemble`: the algorithm.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from uqkit._deprecation import renamed_keywords
from uqkit._validation import (
    check_float_tensor,
    check_labels,
    check_positive_int,
    check_tensor,
)
from uqkit.methods.ensemble import DeepEnsemble
from uqkit.methods.prediction_protocol import predict
from uqkit.nn.dropout import MemberDropout
from uqkit.nn.members import fold_members, pretiled, tile_members

__all__ = [
    "GreedySelection",
    "HyperDeepEnsembleResult",
    "HyperEnsemble",
    "HyperparameterSpace",
    "Hyperparameters",
    "greedy_ensemble_selection",
    "greedy_mixture_selection",
    "hyper_deep_ensemble",
    "member_log_probs",
    "retrain_and_select",
    "stratified_retraining",
]

_LOG_NORMALIZATION_TOLERANCE = 1e-3
_IMPROVEMENT_TOLERANCE = 1e-12
"""Relative decrease of the NLL below which an addition does not count as one: adding a copy of the only
member leaves the NLL unchanged in exact arithmetic, but ``logaddexp`` rounding can lower it by ~1e-16."""


# ---------------------------------------------------------------------------------------------------------
# Greedy ensemble selection (Caruana et al. 2004).


@dataclass(frozen=True)
class GreedySelection:
    """The result of :func:`greedy_ensemble_selection`.

    Attributes:
        indices: the selected candidates in the order they were added; a candidate selected twice appears
            twice (the ensemble is a multiset, each entry weighing ``1 / len(indices)``).
        scores: the validation NLL of the ensemble after each addition (decreasing strictly).
        num_candidates: ``K``, the size of the pool.
        stopped_early: whether selection stopped before ``num_members`` distinct candidates because no
            addition lowered the NLL.
    """

    indices: tuple[int, ...]
    scores: tuple[float, ...]
    num_candidates: int
    stopped_early: bool

    @property
    def counts(self) -> tuple[int, ...]:
        """How often each of the ``K`` candidates was selected."""
        return tuple(self.indices.count(index) for index in range(self.num_candidates))

    @property
    def distinct(self) -> tuple[int, ...]:
        """The selected candidates without repeats, in the order of their first selection."""
        return tuple(dict.fromkeys(self.indices))

    @property
    def score(self) -> float:
        """The validation NLL of the selected ensemble."""
        return self.scores[-1]


def _true_class_log_probs(log_probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[K, N]``: candidate ``k``'s log-probability of example ``n``'s label, in float64."""
    index = labels.view(1, -1, 1).expand(log_probs.shape[0], -1, 1)
    return log_probs.detach().double().gather(2, index).squeeze(2)


@renamed_keywords(size="num_members")
def greedy_ensemble_selection(
    log_probs: torch.Tensor, labels: torch.Tensor, num_members: int, max_selections: int | None = None
) -> GreedySelection:
    """Greedy ensemble selection with replacement on validation NLL (Caruana et al. 2004, Sec. 2).

    Starting from the empty multiset ``E``, each step adds the candidate ``k`` (any of the ``K``, one already
    in ``E`` included) that gives the lowest validation NLL of the averaged predictive

        ``NLL(E + k) = -(1 / N) sum_n log[(1 / (|E| + 1)) (sum_{e in E} p_e(y_n | x_n) + p_k(y_n | x_n))]``,

    while ``E`` holds fewer than ``num_members`` *distinct* candidates, as uncertainty-baselines'
    ``greedy_selection`` (Wenzel et al. 2020's code) counts the ensemble size; a candidate added again
    raises its weight in the mixture to ``count / |E|``. Selection stops early when the best addition does
    not lower the NLL strictly (by more than float64 rounding, a relative ``1e-12``), and after
    ``max_selections`` additions (a safeguard of ours: re-adding members can keep lowering the NLL by ever
    smaller amounts). Among candidates with equal NLL the lowest index is added, so the first step picks the
    best candidate on its
    own. The NLL is computed in float64 with ``logaddexp``, so tiny probabilities do not underflow.

    Args:
        log_probs: ``[K, N, C]`` log-probabilities of the ``K`` candidates on the ``N`` validation examples
            (``log_softmax`` of their logits; each row must normalise).
        labels: ``[N]`` class indices of the validation examples.
        num_members: the most distinct candidates, ``>= 1`` (the ensemble's members; formerly ``size``).
        max_selections: the most additions, ``>= num_members``; default ``4 * num_members``.

    Returns:
        A :class:`GreedySelection` with at least one index.

    Raises:
        TypeError, ValueError: for log-probabilities that are not a finite ``[K, N, C]`` float tensor whose
            rows normalise, labels that are not ``N`` class indices in ``[0, C)``, or a bad ``num_members``
            or ``max_selections``.

    Shape:
        ``log_probs [K, N, C]``, ``labels [N]``.
    """
    log_probs = check_float_tensor(log_probs, "log_probs", 3, "[candidates, examples, classes]")
    candidates, examples, classes = log_probs.shape
    if candidates == 0 or examples == 0 or classes == 0:
        raise ValueError(
            f"log_probs: expected at least one candidate, example and class, got shape "
            f"{tuple(log_probs.shape)}"
        )
    normalization = log_probs.detach().double().logsumexp(dim=-1).abs().max()
    if float(normalization) > _LOG_NORMALIZATION_TOLERANCE:
        raise ValueError(
            "log_probs: expected log-probabilities (log_softmax of logits; logsumexp over the classes 0), "
            f"got a logsumexp of up to {float(normalization):.3g} in absolute value"
        )
    labels = check_labels(labels, "labels", num_classes=classes, length=examples)
    return greedy_mixture_selection(
        _true_class_log_probs(log_probs, labels.to(log_probs.device)), num_members, max_selections
    )


@renamed_keywords(size="num_members")
def greedy_mixture_selection(
    log_likelihoods: torch.Tensor, num_members: int, max_selections: int | None = None
) -> GreedySelection:
    """:func:`greedy_ensemble_selection` on each candidate's log-likelihood of each validation target, for
    any predictive (a regression network's Gaussian density ``log N(y_n; mu_k(x_n), sigma_k^2(x_n))``, a
    classifier's ``log p_k(y_n | x_n)``): the same rule, on the NLL of the equal-weight mixture of the
    selected multiset, ``-(1 / N) sum_n log[(1 / |E|) sum_{e in E} exp(l_{e,n})]``.

    Args:
        log_likelihoods: ``[K, N]`` finite log-likelihoods of the ``K`` candidates on the ``N`` examples.
        num_members: the most distinct candidates, ``>= 1`` (formerly ``size``).
        max_selections: the most additions, ``>= num_members``; default ``4 * num_members``.

    Returns:
        A :class:`GreedySelection` with at least one index.

    Raises:
        TypeError, ValueError: for log-likelihoods that are not a finite, non-empty ``[K, N]`` float
            tensor, or a bad ``num_members`` or ``max_selections``.

    Shape:
        ``log_likelihoods [K, N]``.
    """
    log_likelihoods = check_float_tensor(log_likelihoods, "log_likelihoods", 2, "[candidates, examples]")
    candidates, examples = log_likelihoods.shape
    if candidates == 0 or examples == 0:
        raise ValueError(
            f"log_likelihoods: expected at least one candidate and example, got shape "
            f"{tuple(log_likelihoods.shape)}"
        )
    num_members = check_positive_int(num_members, "num_members")
    max_selections = 4 * num_members if max_selections is None else max_selections
    max_selections = check_positive_int(max_selections, "max_selections", minimum=num_members)
    true = log_likelihoods.detach().double()
    indices: list[int] = []
    scores: list[float] = []
    log_sum: torch.Tensor | None = None  # log sum_{e in E} p_e(y_n | x_n), [N]
    while len(set(indices)) < num_members and len(indices) < max_selections:
        totals = true if log_sum is None else torch.logaddexp(log_sum.unsqueeze(0), true)  # [K, N]
        candidate_nlls = math.log(len(indices) + 1) - totals.mean(dim=1)
        best = int(torch.argmin(candidate_nlls))  # the first (lowest) index among equal minima
        nll = float(candidate_nlls[best])
        if scores and not nll < scores[-1] - _IMPROVEMENT_TOLERANCE * max(1.0, abs(scores[-1])):
            return GreedySelection(tuple(indices), tuple(scores), candidates, stopped_early=True)
        indices.append(best)
        scores.append(nll)
        log_sum = totals[best]
    return GreedySelection(tuple(indices), tuple(scores), candidates, stopped_early=False)


# ---------------------------------------------------------------------------------------------------------
# Hyperparameters and the random search.


@dataclass(frozen=True)
class Hyperparameters:
    """One member's hyperparameters.

    Attributes:
        l2: coefficient ``lambda >= 0`` of the L2 term ``lambda ||W||^2`` added to the member's mean loss per
            example, over its weight matrices and kernels (biases and normalisation scales excluded).
        dropout: drop probability in ``[0, 1)`` of every dropout layer of the member.
        label_smoothing: ``eps`` in ``[0, 1)``: the member is trained on the targets
            ``(1 - eps) onehot(y) + eps / C`` (Szegedy et al. 2016), as
            ``F.cross_entropy(label_smoothing=eps)``.
    """

    l2: float = 0.0
    dropout: float = 0.0
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        for name in ("l2", "dropout", "label_smoothing"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name}: expected a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.l2 < 0:
            raise ValueError(f"l2: expected a coefficient >= 0, got {self.l2}")
        for name in ("dropout", "label_smoothing"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name}: expected a number in [0, 1), got {getattr(self, name)}")

    def to_dict(self) -> dict[str, float]:
        """``{"l2": ..., "dropout": ..., "label_smoothing": ...}``."""
        return {"l2": self.l2, "dropout": self.dropout, "label_smoothing": self.label_smoothing}


def _check_range(value: tuple[float, float], name: str, low: float, high: float, positive: bool) -> None:
    if (
        not isinstance(value, tuple)
        or len(value) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        raise ValueError(f"{name}: expected a (low, high) tuple of numbers, got {value!r}")
    lo, hi = value
    if not (low <= lo <= hi <= high) or (positive and lo <= 0):
        bound = f"0 < low <= high <= {high}" if positive else f"{low} <= low <= high < {high}"
        raise ValueError(f"{name}: expected {bound}, got {value!r}")


@dataclass(frozen=True)
class HyperparameterSpace:
    """The random-search distribution over :class:`Hyperparameters` (Wenzel et al. 2020, Sec. 3 / App. C).

    ``l2`` and ``label_smoothing`` are drawn log-uniformly from their ranges (uncertainty-baselines'
    hyper-deep-ensemble sweeps draw both so), ``dropout`` uniformly. A range with ``low == high`` fixes the
    value.

    Attributes:
        l2: ``(low, high)``, ``0 < low <= high``. Default ``(1e-7, 1e-3)``; :meth:`for_training_set` gives
            uncertainty-baselines' ``(1e-2 / N, 1e2 / N)`` (a Gaussian prior of precision 0.02 to 200, per
            training example).
        dropout: ``(low, high)`` within ``[0, 1)``. Default ``(0, 0.3)``.
        label_smoothing: ``(low, high)``, ``0 < low <= high < 1``. Default ``(1e-5, 0.2)`` (as
            uncertainty-baselines).
    """

    l2: tuple[float, float] = (1e-7, 1e-3)
    dropout: tuple[float, float] = (0.0, 0.3)
    label_smoothing: tuple[float, float] = (1e-5, 0.2)

    def __post_init__(self) -> None:
        _check_range(self.l2, "l2", 0.0, math.inf, positive=True)
        _check_range(self.dropout, "dropout", 0.0, 1.0 - 1e-12, positive=False)
        _check_range(self.label_smoothing, "label_smoothing", 0.0, 1.0 - 1e-12, positive=True)

    @classmethod
    def for_training_set(cls, num_train: int, **overrides: tuple[float, float]) -> HyperparameterSpace:
        """The space with uncertainty-baselines' L2 range for ``N = num_train`` examples, ``(1e-2 / N,
        1e2 / N)`` (their sweeps normalise the coefficient by the training-set size); other ranges default
        or from ``overrides``."""
        num_train = check_positive_int(num_train, "num_train")
        return cls(**{"l2": (1e-2 / num_train, 1e2 / num_train), **overrides})

    def sample(self, num: int, generator: torch.Generator | None = None) -> list[Hyperparameters]:
        """``num`` independent draws (from ``generator``, else torch's global generator)."""
        num = check_positive_int(num, "num")
        uniform = torch.rand(num, 3, generator=generator, dtype=torch.float64)

        def log_uniform(column: torch.Tensor, bounds: tuple[float, float]) -> list[float]:
            lo, hi = math.log(bounds[0]), math.log(bounds[1])
            return torch.exp(lo + (hi - lo) * column).tolist()

        l2 = log_uniform(uniform[:, 0], self.l2)
        dropout = (self.dropout[0] + (self.dropout[1] - self.dropout[0]) * uniform[:, 1]).tolist()
        smoothing = log_uniform(uniform[:, 2], self.label_smoothing)
        return [Hyperparameters(*values) for values in zip(l2, dropout, smoothing, strict=True)]


# ---------------------------------------------------------------------------------------------------------
# Members with their own hyperparameters, stacked.


def _member_dropout_(network: nn.Module, rates: list[float]) -> int:
    """Replace every ``nn.Dropout`` under ``network`` by :class:`MemberDropout` with ``rates``; returns how
    many names were replaced."""
    replaced = 0
    for name, module in list(network.named_modules()):
        if type(module) is not nn.Dropout:
            continue
        parent_name, _, attribute = name.rpartition(".")
        parent = network.get_submodule(parent_name)
        setattr(parent, attribute, MemberDropout(rates))
        replaced += 1
    return replaced


class HyperEnsemble(nn.Module):
    """``M`` networks, each with its own :class:`Hyperparameters`, trained as one vectorized stack.

    The members are a :class:`uqkit.DeepEnsemble` of ``factory`` (stacked parameters ``[M, *shape]``, members
    folded into the batch, ``[M * B, ...]`` member-major), so all candidates of a random search whose shapes
    agree train in one computation. Per member ``m`` with hyperparameters ``(lambda_m, p_m, eps_m)``:

    * dropout: every ``nn.Dropout`` of the factory's model is replaced by :class:`MemberDropout`, which drops
      member ``m``'s rows at rate ``p_m`` (the factory's own rate is ignored);
    * the objective (:meth:`loss`) is ``sum_m [CE_eps_m(member m's batch) + lambda_m ||W_m||^2]``: member
      ``m``'s mean label-smoothed cross-entropy on its own rows, plus its L2 term over its slices of the
      stacked weight matrices and kernels (parameters with at least 2 dimensions per member; biases and
      normalisation scales are not penalised). Members share no parameter and each term depends on one
      member's slices only, so each member gets exactly the gradient it would get trained alone, and an
      element-wise optimiser (Adam, SGD) trains ``M`` independent networks.

    A selected ensemble weighs member ``m`` by its ``multiplicity`` ``c_m`` (how often the greedy selection
    chose it): the model's output repeats member ``m``'s rows ``c_m`` times, ``[L * B, ...]`` with
    ``L = sum_m c_m`` (its ``uqkit_num_members``), so ``uqkit.predict(hyper_ensemble, x)`` gives ``[L, B, C]``
    logits, the uniform mixture over the multiset, at the cost of ``M`` networks (dropout off in eval mode).
    The hyperparameters and multiplicities are buffers (``l2``, ``dropout``, ``label_smoothing``,
    ``multiplicity``, each ``[M]``), saved with the weights.

    Args:
        factory: ``factory() -> nn.Module`` building one member (as :class:`uqkit.DeepEnsemble`'s); its
            ``nn.Dropout`` layers are where the members' dropout applies.
        hyperparameters: the ``M`` members' :class:`Hyperparameters`.
        multiplicity: ``M`` ints ``>= 1`` (default all 1: every member once).

    Raises:
        TypeError: for hyperparameters that are not :class:`Hyperparameters`.
        ValueError: for no hyperparameters, a positive dropout rate when the factory's model has no
            ``nn.Dropout`` layer, or multiplicities that are not ``M`` positive ints.

    Example:
        >>> space = HyperparameterSpace.for_training_set(len(train))
        >>> stack = HyperEnsemble(lambda: Net(dropout=nn.Dropout(0.0)), space.sample(10))
        >>> loss = stack.loss(x, y)  # [B, ...] shared by the members, or [M, B, ...] one batch per member
        >>> uqkit.predict(stack, x)  # [10, B, C]
    """

    def __init__(
        self,
        factory: Callable[[], nn.Module],
        hyperparameters: Sequence[Hyperparameters],
        multiplicity: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        hyperparameters = list(hyperparameters)
        if not hyperparameters:
            raise ValueError("hyperparameters: expected one Hyperparameters per member, got none")
        for index, value in enumerate(hyperparameters):
            if not isinstance(value, Hyperparameters):
                raise TypeError(
                    f"hyperparameters[{index}]: expected a Hyperparameters, got {type(value).__name__}"
                )
        self.ensemble = DeepEnsemble(factory, len(hyperparameters))
        self.factory = factory
        self.num_members = len(hyperparameters)
        multiplicity = [1] * self.num_members if multiplicity is None else list(multiplicity)
        if len(multiplicity) != self.num_members or not all(
            isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in multiplicity
        ):
            raise ValueError(
                f"multiplicity: expected {self.num_members} ints >= 1 (one per member), got {multiplicity!r}"
            )
        rates = [h.dropout for h in hyperparameters]
        if not _member_dropout_(self.ensemble.network, rates) and any(rate > 0 for rate in rates):
            raise ValueError(
                f"hyperparameters: dropout rates {rates} asked for, but the factory's model has no "
                "nn.Dropout layer to apply them (build it with nn.Dropout where the members drop units)"
            )

        def buffer(name: str) -> torch.Tensor:
            return torch.tensor([getattr(h, name) for h in hyperparameters], dtype=torch.float64).to(
                torch.get_default_dtype()
            )

        self.register_buffer("l2", buffer("l2"))
        self.register_buffer("dropout", buffer("dropout"))
        self.register_buffer("label_smoothing", buffer("label_smoothing"))
        self.register_buffer("multiplicity", torch.tensor(multiplicity, dtype=torch.long))

    @property
    def uqkit_num_members(self) -> int:
        """``L = sum_m c_m``: the rows of members the model returns per example (the member-model attribute
        :data:`uqkit.nn.members.MEMBERS_ATTRIBUTE` that :func:`uqkit.predict` reads)."""
        return int(self.multiplicity.sum())

    @property
    def hyperparameters(self) -> list[Hyperparameters]:
        """The ``M`` members' hyperparameters (from the buffers)."""
        columns = zip(self.l2.tolist(), self.dropout.tolist(), self.label_smoothing.tolist(), strict=True)
        return [Hyperparameters(*values) for values in columns]

    def forward(self, *args, **kwargs):
        """The members' outputs, ``[M * B, ...]`` (see :class:`uqkit.DeepEnsemble`); with multiplicities
        other than 1, member ``m``'s rows repeated ``c_m`` times, ``[L * B, ...]``."""
        outputs = self.ensemble(*args, **kwargs)
        if bool((self.multiplicity == 1).all()):
            return outputs
        if not isinstance(outputs, torch.Tensor):
            raise TypeError(
                f"HyperEnsemble with multiplicities: expected the members to return a tensor, got "
                f"{type(outputs).__name__}"
            )
        members = outputs.unflatten(0, (self.num_members, outputs.shape[0] // self.num_members))
        repeated = members.repeat_interleave(self.multiplicity.to(outputs.device), dim=0)
        return repeated.flatten(0, 1)

    def penalties(self) -> torch.Tensor:
        """``[M]``: ``lambda_m ||W_m||^2`` over each member's weight matrices and kernels."""
        norms = torch.zeros_like(self.l2)
        for parameter in self.ensemble.parameters():
            if parameter.dim() >= 3:  # [M, *shape] with a matrix or kernel per member
                norms = norms + parameter.square().flatten(1).sum(dim=1).to(norms.dtype)
        return self.l2 * norms

    def data_losses(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``[M]``: each member's mean label-smoothed cross-entropy on its own rows.

        With ``eps_m`` member ``m``'s label smoothing and ``C`` classes, row ``i`` of member ``m`` costs
        ``(1 - eps_m) (-log p_i(y_i)) + eps_m (1 / C) sum_c (-log p_i(c))``, the cross-entropy against the
        smoothed targets (as ``F.cross_entropy(..., label_smoothing=eps_m)``).

        Args:
            logits: ``[M * B, C]``, member-major.
            labels: ``[M * B]`` class indices (each member's own labels, folded the same way).
        """
        check_tensor(logits, "logits")
        if logits.dim() != 2 or logits.shape[0] % self.num_members or labels.shape != logits.shape[:1]:
            raise ValueError(
                f"logits, labels: expected [M * B, C] logits and [M * B] labels with M = {self.num_members}, "
                f"got shapes {list(logits.shape)} and {list(labels.shape)}"
            )
        log_probs = F.log_softmax(logits, dim=-1)
        nll = -log_probs.gather(1, labels.unsqueeze(1)).squeeze(1)
        uniform = -log_probs.mean(dim=1)
        smoothing = self.label_smoothing.to(log_probs.dtype).repeat_interleave(
            logits.shape[0] // self.num_members
        )
        rows = (1.0 - smoothing) * nll + smoothing * uniform
        return rows.view(self.num_members, -1).mean(dim=1)

    def loss(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The stack's training objective: ``sum_m [CE_eps_m + lambda_m ||W_m||^2]`` (scalar).

        Args:
            inputs: ``[M, B, ...]`` with ``labels [M, B]`` (one batch per member, e.g. independent shuffles),
                or ``[B, ...]`` with ``labels [B]`` (the same batch for every member).
            labels: class indices, as above.
        """
        members = self.num_members
        if labels.dim() == 2:
            if inputs.shape[0] != members or labels.shape[0] != members:
                raise ValueError(
                    f"inputs, labels: expected one batch per member, [{members}, B, ...] and [{members}, B], "
                    f"got shapes {list(inputs.shape)} and {list(labels.shape)}"
                )
            with pretiled():
                logits = self.ensemble(fold_members(inputs))
            labels = fold_members(labels)
        else:
            logits, labels = self.ensemble(inputs), tile_members(labels, members)
        return (self.data_losses(logits, labels) + self.penalties().to(logits.dtype)).sum()

    def members(self) -> list[nn.Module]:
        """The ``M`` members as ordinary modules of the factory's architecture (their dropout layers are the
        factory's, at its rate), copies of their weights (:meth:`uqkit.DeepEnsemble.members`)."""
        return self.ensemble.members()

    @classmethod
    def from_members(
        cls, members: Sequence[tuple[HyperEnsemble, int]], multiplicity: Sequence[int] | None = None
    ) -> HyperEnsemble:
        """A new stack of the given members of existing stacks (copies; one member may appear several times).

        Args:
            members: ``(stack, index)`` pairs; every stack must be of the same architecture.
            multiplicity: the new members' multiplicities (default 1 each).

        Returns:
            A :class:`HyperEnsemble` whose member ``j`` is a copy of ``members[j]`` (weights and
            hyperparameters), on the first stack's device and dtype, in eval mode.

        Raises:
            ValueError: for no members, an index out of range, or stacks of different architectures.
        """
        members = list(members)
        if not members:
            raise ValueError("members: expected at least one (stack, index) pair, got none")
        for position, (stack, index) in enumerate(members):
            if not isinstance(stack, HyperEnsemble):
                raise TypeError(f"members[{position}]: expected a HyperEnsemble, got {type(stack).__name__}")
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < stack.num_members:
                raise ValueError(
                    f"members[{position}]: expected an index in [0, {stack.num_members}), got {index!r}"
                )
        first = members[0][0]
        reference = next(first.parameters())
        combined = cls(
            first.factory, [stack.hyperparameters[index] for stack, index in members], multiplicity
        )
        combined.to(device=reference.device, dtype=reference.dtype)
        target = combined.state_dict()
        states = {id(stack): stack.state_dict() for stack, _ in members}
        for state in states.values():
            layout = {name: tuple(value.shape[1:]) for name, value in state.items()}
            expected = {name: tuple(value.shape[1:]) for name, value in target.items()}
            if layout != expected:
                raise ValueError(
                    "members: expected stacks of one architecture, got stacks whose tensors differ"
                )
        combined.load_state_dict(
            {
                name: torch.stack([states[id(stack)][name][index] for stack, index in members])
                for name in target
                if name != "multiplicity"
            }
            | {"multiplicity": combined.multiplicity}
        )
        return combined.eval()

    def extra_repr(self) -> str:
        return f"num_members={self.num_members}"


def member_log_probs(model: nn.Module, inputs: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """``[M, N, C]`` log-probabilities of each member of ``model`` on ``inputs`` (:func:`uqkit.predict` in
    batches of ``batch_size``: eval mode, no gradients)."""
    check_tensor(inputs, "inputs")
    batch_size = check_positive_int(batch_size, "batch_size")
    parts = [
        predict(model, inputs[start : start + batch_size]).logits.log_softmax(dim=-1)
        for start in range(0, inputs.shape[0], batch_size)
    ]
    return torch.cat(parts, dim=1)


# ---------------------------------------------------------------------------------------------------------
# The algorithm: random search, greedy selection, stratification across initialisations, final selection.


@renamed_keywords(num_models="num_retrained")
def stratified_retraining(selection: Sequence[int], num_retrained: int) -> list[int]:
    """Which selected candidates to retrain from new random initialisations, ``num_retrained`` in all.

    Wenzel et al. 2020 (Sec. 3, ``hyper_deep_ens``) retrain each hyperparameter the first greedy selection
    chose with ``K`` new initialisations. Here the retraining budget is ``num_retrained`` networks, spread
    over the distinct selected candidates round-robin, the most often selected first (ties: the earlier
    selected); ``num_retrained = (K - 1) * d`` for ``d`` distinct candidates gives each ``K`` initialisations
    with the search's own network.

    Args:
        selection: the first selection's indices (:attr:`GreedySelection.indices`), repeats included.
        num_retrained: how many networks to retrain, ``>= 1`` (formerly ``num_models``, as in
            :func:`retrain_and_select`).

    Returns:
        ``num_retrained`` candidate indices (a candidate once per new initialisation), round by round.
    """
    num_retrained = check_positive_int(num_retrained, "num_retrained")
    selection = list(selection)
    if not selection:
        raise ValueError("selection: expected at least one selected candidate, got none")
    first = {index: position for position, index in reversed(list(enumerate(selection)))}
    order = sorted(first, key=lambda index: (-selection.count(index), first[index]))
    return [order[j % len(order)] for j in range(num_retrained)]


@dataclass
class HyperDeepEnsembleResult:
    """What :func:`retrain_and_select` (and :func:`hyper_deep_ensemble`) returns.

    Attributes:
        ensemble: the final :class:`HyperEnsemble`: member ``j`` is the ``j``-th distinct selection of
            ``final``, with its count as multiplicity.
        search: the first greedy selection, over the random search's candidates.
        retrained: the stack of retrained networks (member ``j`` from candidate ``retrained_from[j]``).
        retrained_from: the search candidate each retrained network took its hyperparameters from.
        pool: the stratified pool the final selection chose from, as ``(stage, index)``: ``(0, i)`` the
            search's candidate ``i``, ``(1, j)`` retrained network ``j``.
        final: the final greedy selection, its indices into ``pool``.
    """

    ensemble: HyperEnsemble
    search: GreedySelection
    retrained: HyperEnsemble
    retrained_from: list[int]
    pool: list[tuple[int, int]]
    final: GreedySelection

    @property
    def sources(self) -> list[tuple[int, int]]:
        """``(stage, index)`` of each member of the final ensemble (see :attr:`pool`)."""
        return [self.pool[index] for index in self.final.distinct]


@renamed_keywords(ensemble_size="num_members")
def retrain_and_select(
    candidates: HyperEnsemble,
    candidate_log_probs: torch.Tensor,
    search: GreedySelection,
    fit: Callable[[HyperEnsemble], None],
    val_inputs: torch.Tensor,
    val_labels: torch.Tensor,
    num_members: int,
    num_retrained: int | None = None,
    batch_size: int = 512,
) -> HyperDeepEnsembleResult:
    """The stratification and the final selection of a hyper-deep ensemble (Wenzel et al. 2020, Sec. 3).

    Retrains the hyperparameters of the first selection with new initialisations
    (:func:`stratified_retraining`; the new stack is built from torch's global generator and trained by
    ``fit``), and selects ``num_members`` members greedily (:func:`greedy_ensemble_selection`) from the
    stratified pool: the search's networks of the selected hyperparameters, then the retrained networks.

    Args:
        candidates: the trained search candidates.
        candidate_log_probs: ``[K, N, C]`` their validation log-probabilities (:func:`member_log_probs`).
        search: the first greedy selection over them.
        fit: ``fit(stack)`` trains a new :class:`HyperEnsemble` in place (its :meth:`HyperEnsemble.loss`).
        val_inputs, val_labels: the validation split the selection is made on.
        num_members: the final ensemble's size, its most distinct members (formerly ``ensemble_size``).
        num_retrained: how many networks to retrain; default ``(num_members - 1) * d`` for ``d`` distinct
            selected hyperparameters (each then has ``num_members`` initialisations, as the paper's).
        batch_size: of the validation predictions.

    Returns:
        A :class:`HyperDeepEnsembleResult`.
    """
    num_members = check_positive_int(num_members, "num_members")
    distinct = list(search.distinct)
    if num_retrained is None:
        num_retrained = max(1, (num_members - 1) * len(distinct))
    retrained_from = stratified_retraining(search.indices, num_retrained)
    hyperparameters = candidates.hyperparameters
    retrained = HyperEnsemble(candidates.factory, [hyperparameters[index] for index in retrained_from])
    fit(retrained)
    pool = [(0, index) for index in distinct] + [(1, index) for index in range(len(retrained_from))]
    pool_log_probs = torch.cat(
        [
            candidate_log_probs[distinct].to(val_inputs.device),
            member_log_probs(retrained, val_inputs, batch_size).to(val_inputs.device),
        ]
    )
    final = greedy_ensemble_selection(pool_log_probs, val_labels, num_members)
    stacks = (candidates, retrained)
    ensemble = HyperEnsemble.from_members(
        [(stacks[pool[i][0]], pool[i][1]) for i in final.distinct],
        [final.counts[i] for i in final.distinct],
    )
    return HyperDeepEnsembleResult(ensemble, search, retrained, retrained_from, pool, final)


@renamed_keywords(ensemble_size="num_members")
def hyper_deep_ensemble(
    factory: Callable[[], nn.Module],
    fit: Callable[[HyperEnsemble], None],
    val_inputs: torch.Tensor,
    val_labels: torch.Tensor,
    *,
    num_members: int = 5,
    num_candidates: int = 10,
    num_retrained: int | None = None,
    space: HyperparameterSpace | None = None,
    include_default: bool = True,
    generator: torch.Generator | None = None,
    batch_size: int = 512,
) -> HyperDeepEnsembleResult:
    """A hyper-deep ensemble (Wenzel et al. 2020, Sec. 3, ``hyper_deep_ens``), every stage on ``fit``.

    1. Random search: ``num_candidates`` hyperparameters from ``space`` (the first the default,
       :class:`Hyperparameters` ``()``, with ``include_default``, as uncertainty-baselines' sweeps include
       the untuned model), trained as one :class:`HyperEnsemble` by ``fit``.
    2. Greedy selection of ``num_members`` on validation NLL (:func:`greedy_ensemble_selection`).
    3. Stratification and final selection (:func:`retrain_and_select`).

    Args:
        factory: builds one member (with ``nn.Dropout`` layers where dropout applies).
        fit: ``fit(stack)`` trains a :class:`HyperEnsemble` in place on the training split, e.g. Adam on
            ``stack.loss(x, y)``; selection happens on the validation split only.
        val_inputs, val_labels: the validation split.
        num_members: ``K``, the final ensemble's size, its most distinct members (formerly
            ``ensemble_size``).
        num_candidates: the random search's size.
        num_retrained: see :func:`retrain_and_select`.
        space: the search space (default :class:`HyperparameterSpace` ``()``).
        include_default: make the first candidate the default hyperparameters (no L2, dropout or smoothing).
        generator: draws the hyperparameters (initialisations come from torch's global generator).
        batch_size: of the validation predictions.

    Returns:
        A :class:`HyperDeepEnsembleResult`; ``result.ensemble`` predicts with ``uqkit.predict``.
    """
    num_candidates = check_positive_int(num_candidates, "num_candidates")
    num_members = check_positive_int(num_members, "num_members")
    space = HyperparameterSpace() if space is None else space
    if not isinstance(space, HyperparameterSpace):
        raise TypeError(f"space: expected a HyperparameterSpace, got {type(space).__name__}")
    drawn = num_candidates - int(bool(include_default))
    hyperparameters = ([Hyperparameters()] if include_default else []) + (
        space.sample(drawn, generator) if drawn else []
    )
    candidates = HyperEnsemble(factory, hyperparameters)
    fit(candidates)
    candidate_log_probs = member_log_probs(candidates, val_inputs, batch_size)
    search = greedy_ensemble_selection(candidate_log_probs, val_labels, num_members)
    return retrain_and_select(
        candidates,
        candidate_log_probs,
        search,
        fit,
        val_inputs,
        val_labels,
        num_members,
        num_retrained,
        batch_size,
    )
