"""Hyper-deep ensembles (uqkit/methods/hyper_ensemble.py): the greedy selection against a brute-force table
of every multiset's NLL, the stacked members against separate trainings (float64, so the tolerance is
rounding only), the search space's distribution, and the algorithm's bookkeeping."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import uqkit
from uqkit.methods.hyper_ensemble import (
    HyperEnsemble,
    Hyperparameters,
    HyperparameterSpace,
    greedy_ensemble_selection,
    greedy_mixture_selection,
    hyper_deep_ensemble,
    member_log_probs,
    retrain_and_select,
    stratified_retraining,
)

pytestmark = pytest.mark.usefixtures("one_thread")


# --- greedy selection --------------------------------------------------------------------------------------


def _multiset_nll(log_probs: np.ndarray, labels: np.ndarray, multiset: tuple[int, ...]) -> float:
    """Brute force: the validation NLL of the uniform mixture over ``multiset``, by an explicit loop."""
    total = 0.0
    for n in range(log_probs.shape[1]):
        mixture = sum(math.exp(log_probs[k, n, labels[n]]) for k in multiset) / len(multiset)
        total -= math.log(mixture)
    return total / log_probs.shape[1]


def _multiset_nlls(log_probs: np.ndarray, labels: np.ndarray, size: int) -> dict[tuple[int, ...], float]:
    """The NLL of every multiset of 1..size candidates."""
    return {
        multiset: _multiset_nll(log_probs, labels, multiset)
        for count in range(1, size + 1)
        for multiset in itertools.combinations_with_replacement(range(log_probs.shape[0]), count)
    }


def _greedy_by_brute_force(log_probs: np.ndarray, labels: np.ndarray, size: int, cap: int):
    """The greedy rule with every multiset's NLL computed from scratch: add the candidate whose multiset has
    the lowest NLL (lowest index on ties) while fewer than ``size`` distinct are in and fewer than ``cap``
    added; stop when that NLL is not lower by more than rounding (1e-12 relative)."""
    chosen: list[int] = []
    scores: list[float] = []
    while len(set(chosen)) < size and len(chosen) < cap:
        options = [
            (_multiset_nll(log_probs, labels, tuple(sorted([*chosen, k]))), k)
            for k in range(log_probs.shape[0])
        ]
        best_score = min(score for score, _ in options)
        best = min(k for score, k in options if score == best_score)
        if scores and not best_score < scores[-1] - 1e-12 * max(1.0, abs(scores[-1])):
            return chosen, scores, True
        chosen.append(best)
        scores.append(best_score)
    return chosen, scores, False


def _log_probs(logits: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(logits).log_softmax(dim=-1)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_greedy_selection_equals_the_brute_force_reference(seed):
    rng = np.random.default_rng(seed)
    candidates, examples, classes, size = 4, 25, 3, 3
    labels = rng.integers(0, classes, examples)
    logits = rng.normal(size=(candidates, examples, classes)) * rng.uniform(0.5, 3.0, size=(candidates, 1, 1))
    log_probs = _log_probs(logits)
    expected, expected_scores, stopped = _greedy_by_brute_force(log_probs.numpy(), labels, size, cap=4 * size)
    selection = greedy_ensemble_selection(log_probs, torch.from_numpy(labels), size)
    assert list(selection.indices) == expected
    np.testing.assert_allclose(selection.scores, expected_scores, rtol=1e-12)
    assert selection.stopped_early == stopped
    assert len(selection.distinct) <= size and len(selection.indices) <= 4 * size
    # greedy is never better than the best multiset of its length (it may be worse)
    table = _multiset_nlls(log_probs.numpy(), labels, len(expected))
    assert selection.score >= min(v for k, v in table.items() if len(k) == len(expected)) - 1e-12


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_selection_on_gaussian_log_densities_equals_the_brute_force_reference(seed):
    """Regression candidates: the same rule on each network's Gaussian log-density of each target (densities
    above 1 included: the mixture NLL may be negative); the brute force reads them as one-class
    log-probabilities."""
    rng = np.random.default_rng(seed)
    candidates, examples, size = 5, 30, 3
    y = rng.normal(size=examples)
    mean = y * rng.uniform(0.0, 1.0, size=(candidates, 1)) + 0.3 * rng.normal(size=(candidates, examples))
    scale = rng.uniform(0.1, 2.0, size=(candidates, 1))
    mean[0], scale[0] = y + 0.1 * rng.normal(size=examples), 0.1  # a sharp candidate: densities above 1
    log_density = -0.5 * np.log(2 * np.pi * scale**2) - (y - mean) ** 2 / (2 * scale**2)
    assert log_density.max() > 0  # some densities exceed 1
    expected, expected_scores, stopped = _greedy_by_brute_force(
        log_density[:, :, None], np.zeros(examples, dtype=np.int64), size, cap=4 * size
    )
    selection = greedy_mixture_selection(torch.from_numpy(log_density), size)
    assert list(selection.indices) == expected and selection.stopped_early == stopped
    np.testing.assert_allclose(selection.scores, expected_scores, rtol=1e-12)
    with pytest.raises(ValueError, match="log_likelihoods"):
        greedy_mixture_selection(torch.tensor([[0.0, math.inf]]), 1)
    with pytest.raises(ValueError, match=r"log_likelihoods: expected .*\[candidates, examples\]"):
        greedy_mixture_selection(torch.zeros(2, 3, 1), 1)


def test_greedy_selection_stops_after_max_selections():
    rng = np.random.default_rng(0)
    log_probs = _log_probs(rng.normal(size=(3, 20, 4)))
    labels = torch.from_numpy(rng.integers(0, 4, 20))
    unlimited = greedy_ensemble_selection(log_probs, labels, 3, max_selections=100)
    capped = greedy_ensemble_selection(log_probs, labels, 3, max_selections=3)
    assert capped.indices == unlimited.indices[:3] and not capped.stopped_early
    with pytest.raises(ValueError, match="max_selections: expected an int >= 3, got 2"):
        greedy_ensemble_selection(log_probs, labels, 3, max_selections=2)


def test_greedy_selection_with_replacement_weights_a_strong_member_twice():
    # true-class probabilities: A is right on 8 examples and poor on 2, B mediocre on those 8 but good on the
    # 2, C poor everywhere; two classes, so p(other) = 1 - p(true)
    p_true = np.array(
        [
            [0.95] * 8 + [0.1] * 2,  # A
            [0.5] * 8 + [0.9] * 2,  # B
            [0.3] * 10,  # C
        ]
    )
    labels = np.zeros(10, dtype=np.int64)
    log_probs = torch.from_numpy(np.log(np.stack([p_true, 1 - p_true], axis=-1)))
    table = _multiset_nlls(log_probs.numpy(), labels, 3)
    selection = greedy_ensemble_selection(log_probs, torch.from_numpy(labels), 3)
    # A, then B, then A again (weights 2/3 and 1/3); then neither C nor more of A or B lowers the NLL
    assert selection.indices == (0, 1, 0) and selection.stopped_early
    assert selection.counts == (2, 1, 0) and selection.distinct == (0, 1)
    best_multiset = min((v, k) for k, v in table.items())
    assert best_multiset[1] == (0, 0, 1)
    assert selection.score == pytest.approx(best_multiset[0], rel=1e-12)
    without_replacement = min(v for k, v in table.items() if len(set(k)) == len(k))
    assert selection.score < without_replacement - 0.01  # replacement matters (0.379 against 0.396)


def test_greedy_selection_stops_when_no_candidate_lowers_the_nll_and_breaks_ties_by_index():
    p_true = np.array([[0.4] * 6, [0.9] * 6, [0.9] * 6, [0.2] * 6])  # 1 and 2 identical and best
    labels = np.zeros(6, dtype=np.int64)
    log_probs = torch.from_numpy(np.log(np.stack([p_true, 1 - p_true], axis=-1)))
    selection = greedy_ensemble_selection(log_probs, torch.from_numpy(labels), 5)
    # adding 1 or 2 again leaves the NLL at -log 0.9 (up to rounding, which must not count as a gain),
    # anything else raises it: stop after one
    assert selection.indices == (1,) and selection.stopped_early
    assert selection.score == pytest.approx(-math.log(0.9), rel=1e-12)


def test_greedy_selection_checks_its_inputs():
    log_probs = torch.randn(3, 5, 4).log_softmax(-1)
    labels = torch.tensor([0, 1, 2, 3, 0])
    with pytest.raises(ValueError, match=r"log_probs: expected log-probabilities \(log_softmax"):
        greedy_ensemble_selection(torch.randn(3, 5, 4), labels, 2)
    with pytest.raises(ValueError, match="log_probs: expected a 3-D tensor"):
        greedy_ensemble_selection(log_probs[0], labels, 2)
    with pytest.raises(
        ValueError, match=r"labels: expected class indices in \[0, 3\], got values in \[0, 4\]"
    ):
        greedy_ensemble_selection(log_probs, torch.tensor([0, 1, 2, 4, 0]), 2)
    with pytest.raises(ValueError, match="labels: expected 5 labels"):
        greedy_ensemble_selection(log_probs, labels[:4], 2)
    with pytest.raises(ValueError, match="num_members: expected an int >= 1, got 0"):
        greedy_ensemble_selection(log_probs, labels, 0)


def test_former_keyword_names_warn_and_count_the_same():
    """Deprecated keywords: ``size=`` and ``ensemble_size=`` mean ``num_members=``, ``num_models=``
    ``num_retrained=``."""
    rng = np.random.default_rng(3)
    log_probs = _log_probs(rng.normal(size=(4, 12, 3)))
    labels = torch.from_numpy(rng.integers(0, 3, 12))
    with pytest.warns(DeprecationWarning, match=r"greedy_ensemble_selection\(size=\.\.\.\) is deprecated"):
        old = greedy_ensemble_selection(log_probs, labels, size=2)
    assert old == greedy_ensemble_selection(log_probs, labels, num_members=2)
    log_likelihoods = log_probs.gather(2, labels.view(1, -1, 1).expand(4, -1, 1)).squeeze(2)
    with pytest.warns(DeprecationWarning, match=r"greedy_mixture_selection\(size=\.\.\.\)"):
        old = greedy_mixture_selection(log_likelihoods, size=2)
    assert old == greedy_mixture_selection(log_likelihoods, 2)
    with pytest.warns(
        DeprecationWarning, match=r"stratified_retraining\(num_models=\.\.\.\).*num_retrained="
    ):
        assert stratified_retraining([3, 1, 3], num_models=3) == stratified_retraining([3, 1, 3], 3)
    # ensemble_size= reaches the check of num_members, which runs before any training
    for function, args in (
        (hyper_deep_ensemble, (_net, None, None, None)),
        (retrain_and_select, (None,) * 6),
    ):
        warns = pytest.warns(DeprecationWarning, match=rf"{function.__name__}\(ensemble_size=\.\.\.\)")
        with warns, pytest.raises(ValueError, match="num_members: expected an int >= 1, got 0"):
            function(*args, ensemble_size=0)


def test_stratified_retraining_is_round_robin_most_selected_first():
    # counts: 3 -> 2, 1 -> 2, 2 -> 1; 3 was selected before 1
    assert stratified_retraining([3, 1, 3, 2, 1], 5) == [3, 1, 2, 3, 1]
    assert stratified_retraining([3, 1, 3, 2, 1], 2) == [3, 1]
    assert stratified_retraining([4], 3) == [4, 4, 4]
    with pytest.raises(ValueError, match="selection: expected at least one"):
        stratified_retraining([], 3)


# --- the search space --------------------------------------------------------------------------------------


def test_search_space_draws_log_uniform_l2_and_smoothing_and_uniform_dropout():
    space = HyperparameterSpace.for_training_set(1000, dropout=(0.1, 0.3))
    assert space.l2 == (1e-5, 1e-1)
    draws = space.sample(4000, torch.Generator().manual_seed(0))
    n = len(draws)
    for name, (low, high), transform in (
        ("l2", space.l2, math.log),
        ("label_smoothing", space.label_smoothing, math.log),
        ("dropout", space.dropout, lambda v: v),
    ):
        values = np.array([transform(getattr(h, name)) for h in draws])
        lo, hi = transform(low), transform(high)
        assert lo <= values.min() and values.max() <= hi, name
        # uniform on [lo, hi] in the transformed scale: mean (lo + hi) / 2, sd (hi - lo) / sqrt(12)
        standard_error = (hi - lo) / math.sqrt(12 * n)
        assert abs(values.mean() - (lo + hi) / 2) < 5 * standard_error, name
        assert abs(values.std() - (hi - lo) / math.sqrt(12)) < 0.05 * (hi - lo) / math.sqrt(12), name


def test_hyperparameters_and_space_check_their_values():
    with pytest.raises(ValueError, match=r"dropout: expected a number in \[0, 1\), got 1.0"):
        Hyperparameters(dropout=1.0)
    with pytest.raises(ValueError, match=r"l2: expected a coefficient >= 0, got -1\.0"):
        Hyperparameters(l2=-1.0)
    with pytest.raises(ValueError, match="l2: expected 0 < low <= high"):
        HyperparameterSpace(l2=(0.0, 1e-3))
    with pytest.raises(ValueError, match=r"label_smoothing: expected a \(low, high\) tuple"):
        HyperparameterSpace(label_smoothing=0.1)


# --- members with their own hyperparameters, stacked -------------------------------------------------------


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Linear(4, 8),
        nn.ReLU(),
        nn.Dropout(0.0),
        nn.Linear(8, 8),
        nn.ReLU(),
        nn.Dropout(0.0),
        nn.Linear(8, 3),
    )


# dyadic values: exact in the float32 buffers, so the float64 reference uses the very same numbers
HYPERPARAMETERS = [
    Hyperparameters(l2=2**-6, dropout=0.25, label_smoothing=0.125),
    Hyperparameters(l2=0.0, dropout=0.5, label_smoothing=0.0),
    Hyperparameters(l2=2**-4, dropout=0.0, label_smoothing=0.25),
]


class _FixedMask(nn.Module):
    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.mask = mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask


def test_stacked_members_train_as_separate_networks_with_their_own_hyperparameters():
    torch.manual_seed(0)
    stack = HyperEnsemble(_net, HYPERPARAMETERS).double().train()
    members = [member.double().train() for member in stack.members()]
    num, batch = len(HYPERPARAMETERS), 16
    x = torch.randn(num, batch, 4, dtype=torch.float64)  # one batch per member
    y = torch.randint(0, 3, (num, batch))

    torch.manual_seed(1)
    stack.zero_grad()
    stack.loss(x, y).backward()

    torch.manual_seed(1)  # the same uniforms, in the order the two dropout layers draw them
    noise = [torch.rand(num, batch, 8, dtype=torch.float64) for _ in range(2)]
    optimizers = [torch.optim.Adam(member.parameters(), lr=1e-2) for member in members]
    for k, (member, h) in enumerate(zip(members, HYPERPARAMETERS, strict=True)):
        keep = 1.0 - h.dropout
        member[2] = _FixedMask((noise[0][k] < keep).double() / keep)
        member[5] = _FixedMask((noise[1][k] < keep).double() / keep)
        penalty = sum(p.square().sum() for p in member.parameters() if p.dim() >= 2)
        loss = F.cross_entropy(member(x[k]), y[k], label_smoothing=h.label_smoothing) + h.l2 * penalty
        member.zero_grad()
        loss.backward()
    stacked = dict(stack.ensemble.network.named_parameters())
    for k, member in enumerate(members):
        for name, parameter in member.named_parameters():
            torch.testing.assert_close(stacked[name].grad[k], parameter.grad, rtol=1e-10, atol=1e-12)

    # one Adam step each: the same parameters after it
    torch.optim.Adam(stack.parameters(), lr=1e-2).step()
    for optimizer in optimizers:
        optimizer.step()
    for k, member in enumerate(members):
        for name, parameter in member.named_parameters():
            torch.testing.assert_close(stacked[name].detach()[k], parameter.detach(), rtol=1e-10, atol=1e-12)


def test_stack_keeps_hyperparameters_predicts_members_and_gathers_them():
    torch.manual_seed(0)
    stack = HyperEnsemble(_net, HYPERPARAMETERS)
    assert stack.hyperparameters == HYPERPARAMETERS
    x = torch.randn(7, 4)
    prediction = uqkit.predict(stack, x)
    assert prediction.logits.shape == (3, 7, 3)
    for k, member in enumerate(stack.members()):
        torch.testing.assert_close(prediction.logits[k], member.eval()(x))
    gathered = HyperEnsemble.from_members([(stack, 2), (stack, 0), (stack, 2)])
    assert gathered.hyperparameters == [HYPERPARAMETERS[2], HYPERPARAMETERS[0], HYPERPARAMETERS[2]]
    torch.testing.assert_close(uqkit.predict(gathered, x).logits, prediction.logits[[2, 0, 2]])
    weighted = HyperEnsemble.from_members([(stack, 2), (stack, 0)], multiplicity=[2, 1])
    assert weighted.num_members == 2 and weighted.uqkit_num_members == 3
    torch.testing.assert_close(uqkit.predict(weighted, x).logits, prediction.logits[[2, 2, 0]])
    torch.testing.assert_close(
        member_log_probs(gathered, x, batch_size=3), prediction.logits[[2, 0, 2]].log_softmax(-1)
    )
    with pytest.raises(ValueError, match=r"dropout rates \[0.25\] asked for, but the factory's model has no"):
        HyperEnsemble(lambda: nn.Linear(4, 3), [Hyperparameters(dropout=0.25)])
    with pytest.raises(ValueError, match=r"members\[0\]: expected an index in \[0, 3\), got 3"):
        HyperEnsemble.from_members([(stack, 3)])


def test_hyper_deep_ensemble_runs_every_stage_and_selects_on_validation():
    torch.manual_seed(0)
    centers = torch.randn(3, 4) * 2
    train_y, val_y = torch.randint(0, 3, (96,)), torch.randint(0, 3, (60,))
    train_x = centers[train_y] + torch.randn(96, 4)
    val_x = centers[val_y] + torch.randn(60, 4)
    fitted: list[list[Hyperparameters]] = []

    def fit(stack: HyperEnsemble) -> None:
        fitted.append(stack.hyperparameters)
        optimizer = torch.optim.Adam(stack.parameters(), lr=1e-2)
        for _ in range(30):
            optimizer.zero_grad()
            stack.loss(train_x, train_y).backward()
            optimizer.step()

    result = hyper_deep_ensemble(
        _net, fit, val_x, val_y, num_members=3, num_candidates=5, generator=torch.Generator().manual_seed(0)
    )
    assert len(fitted) == 2 and len(fitted[0]) == 5 and fitted[0][0] == Hyperparameters()
    distinct = result.search.distinct
    assert len(fitted[1]) == 2 * len(distinct)  # (K - 1) new initialisations per selected hyperparameter
    assert sorted(set(result.retrained_from)) == sorted(distinct)
    assert fitted[1] == [fitted[0][i] for i in result.retrained_from]
    assert result.pool == [(0, i) for i in distinct] + [(1, j) for j in range(len(fitted[1]))]
    # the final ensemble is the selected multiset, each network once with its count: its validation NLL is
    # the selection's last score
    assert result.ensemble.num_members == len(result.final.distinct) <= 3
    assert result.ensemble.uqkit_num_members == len(result.final.indices)
    assert result.ensemble.multiplicity.tolist() == [result.final.counts[i] for i in result.final.distinct]
    predictive = uqkit.predict(result.ensemble, val_x).log_probs
    nll = float(-predictive.gather(1, val_y.unsqueeze(1)).double().mean())
    assert nll == pytest.approx(result.final.score, rel=1e-5)
    for j, (stage, index) in enumerate(result.sources):  # each member is a copy of a pool network
        source = fitted[0][index] if stage == 0 else fitted[1][index]
        assert result.ensemble.hyperparameters[j] == source
