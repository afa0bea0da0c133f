"""The UCI regression form of ``hyper-deep-ensemble`` (uqkit/bench/regression_hyper.py): the search space,
the greedy selection on validation NLL checked by brute force, stratification, the retrained members'
weights, deterministic prediction, and choices blind to test data."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from test_regression import _tiny_table  # the same tiny table (tests/bench is on sys.path under pytest)

from uqkit.bench import regression
from uqkit.bench.regression import REGRESSION_METHODS, evaluate_regression_method, model_splits
from uqkit.bench.regression_hyper import HyperEnsembleRegression
from uqkit.bench.regression_stack import stack_size

pytestmark = pytest.mark.usefixtures("one_thread")


def _small(**changes) -> HyperEnsembleRegression:
    defaults = {"epochs": 15, "search_candidates": 6, "retrained": 3, "num_members": 3}
    return dataclasses.replace(REGRESSION_METHODS["hyper-deep-ensemble"], **{**defaults, **changes})


def test_candidates_alternate_the_protocols_learning_rates_and_draw_l2_and_dropout_from_the_space():
    method = REGRESSION_METHODS["hyper-deep-ensemble"]
    candidates = method.candidates(400, seed=3)
    assert (
        len(candidates) == method.search_candidates == 10
        and method.retrained == 5
        and method.num_members == 5
    )
    # the untuned network (a deep ensemble's member) at each of the protocol's learning rates
    assert candidates[:2] == [
        {"learning_rate": 1e-3, "l2": 0.0, "dropout": 0.0},
        {"learning_rate": 1e-2, "l2": 0.0, "dropout": 0.0},
    ]
    assert [c["learning_rate"] for c in candidates] == [1e-3, 1e-2] * 5
    for c in candidates[2:]:
        assert 1e-2 / 400 <= c["l2"] <= 1e2 / 400 and 0.0 <= c["dropout"] <= 0.3
    assert method.candidates(400, seed=3) == candidates and method.candidates(400, seed=4) != candidates
    with pytest.raises(ValueError, match="searches its own dropout"):
        dataclasses.replace(method, dropout_rates=(0.1,))
    with pytest.raises(ValueError, match=r"untuned network at each of the 2 learning rates .* got 1"):
        dataclasses.replace(method, search_candidates=1)


def _mixture_nll_by_loop(mean, variance, targets, rows) -> float:
    """Brute force: ``-(1/V) sum_v log[(1/L) sum_{r in rows} N(y_v; mu_r, sigma_r^2)]`` by explicit loops."""
    total = 0.0
    for v in range(targets.shape[0]):
        y = float(targets[v])
        density = sum(
            math.exp(-((y - float(mean[r, v])) ** 2) / (2 * float(variance[r, v])))
            / math.sqrt(2 * math.pi * float(variance[r, v]))
            for r in rows
        )
        total -= math.log(density / len(rows))
    return total / targets.shape[0]


def test_selection_is_the_greedy_mixture_on_validation_and_retrained_members_keep_their_weights():
    table = _tiny_table(splits=2)
    method = _small()
    fit = method.fit(table, seed=0)
    networks = fit.networks
    splits = len(table.splits)
    split_of_model = model_splits(stack_size(networks.model), splits, networks.rows)
    with torch.no_grad():
        mean, variance = networks.model(networks.phase.eval_x[split_of_model])
    for split in range(splits):
        members = fit.configs[split]["members"]
        rows = networks.rows[split].tolist()
        counts = [rows.count(r) for r in sorted(set(rows))]
        assert counts == [m["count"] for m in members] and 1 <= len(members) <= method.num_members
        # the selected multiset's validation NLL, recomputed by loops, is the greedy's last score ...
        targets = networks.phase.eval_y[split, :, 0]
        nll = _mixture_nll_by_loop(mean[..., 0], variance[..., 0], targets, rows)
        assert nll == pytest.approx(fit.details["final_val_nll"][split], rel=1e-5, abs=1e-5)
        # ... no worse than the best search candidate alone (greedy's first pick is the pool's best, and
        # every later addition lowers the NLL), nor than any one of its members alone
        assert nll <= min(v for v in fit.validation_nll[split] if v is not None) + 1e-5
        for row in sorted(set(rows)):
            assert nll <= _mixture_nll_by_loop(mean[..., 0], variance[..., 0], targets, [row]) + 1e-6
    # the retrained members: one network per distinct member, each weighted by its count at test
    assert stack_size(fit.model) == stack_size(networks.model)
    assert [r.tolist() for r in fit.rows] == [r.tolist() for r in networks.rows]
    assert fit.training["selection_network_epochs"] == (method.search_candidates + method.retrained) * 15
    assert fit.epochs == [max(m["epochs"] for m in c["members"]) for c in fit.configs]


def test_members_predict_deterministically_without_dropout():
    fit = _small(epochs=5).fit(_tiny_table(splits=1), seed=0)
    assert fit.model.dropout is None
    x = torch.randn(stack_size(fit.model), 7, 3)
    first, second = fit.model(x), fit.model(x)
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_choices_never_depend_on_test_data_and_the_block_reports_the_budget():
    table = _tiny_table(splits=2)
    changed_targets = table.targets.clone()
    test = table.splits[0][1]
    changed_targets[test] = changed_targets[test] * -50 + 1e4
    method = _small()
    first = evaluate_regression_method(method, table, seed=1)
    second = evaluate_regression_method(method, dataclasses.replace(table, targets=changed_targets), seed=1)
    assert first["selection"]["validation_nll"][0] == second["selection"]["validation_nll"][0]
    assert first["per_split"]["members"][0] == second["per_split"]["members"][0]
    assert first["per_split"]["nll"][0] != second["per_split"]["nll"][0]
    for key in ("nll", "rmse", "nll_mixture", "coverage_95"):
        assert all(math.isfinite(v) for v in first["per_split"][key])
    details = first["details"]
    assert details["networks_trained_per_split"] == 9 and details["deep_ensemble_trainings"] == 3.0
    assert first["selection"]["grid"] == method.candidates(40, seed=1)
    assert first["num_members"] == details["num_members"] == method.num_members  # one word counts members
    assert first["conformal"]["network"] == "selection"
    assert isinstance(regression.REGRESSION_METHODS["hyper-deep-ensemble"], HyperEnsembleRegression)
