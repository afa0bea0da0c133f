"""The ``hyper-deep-ensemble`` bench method (uqkit/bench/methods_hyper.py): its search, its budget, its two
training stages on validation only, and a reload of the finished method."""

from __future__ import annotations

import math

import pytest
import torch

from uqkit.bench import methods_hyper
from uqkit.bench.likelihoods import GAUSSIAN
from uqkit.bench.registry import METHODS, MethodContext, NotApplicableError, build_method, methods_for_task
from uqkit.bench.trainer import TrainConfig, train_method
from uqkit.methods.hyper_ensemble import Hyperparameters
from uqkit.nn.dropout import MemberDropout

pytestmark = pytest.mark.usefixtures("one_thread")

TRAINING = TrainConfig(epochs=2, batch_size=16, learning_rate=1e-2, seed=0, progress=False, schedule="cosine")


def _context(model="resmlp", shape=(6,), num_train=64, training=TRAINING) -> MethodContext:
    return MethodContext(shape, 3, model, num_train, "fashion-mnist", batch_size=16, training=training)


def test_registered_for_the_fashion_mnist_tasks_with_its_budget_in_the_description():
    assert METHODS["hyper-deep-ensemble"].tasks == ("fashion-mnist", "fashion-mnist-holdout")
    assert "hyper-deep-ensemble" in methods_for_task("fashion-mnist", opt_in=True)
    assert "hyper-deep-ensemble" not in methods_for_task("fashion-mnist")  # opt-in: 3x a deep ensemble
    assert "hyper-deep-ensemble" not in methods_for_task("two-moons", opt_in=True)
    description = METHODS["hyper-deep-ensemble"].description
    assert "15 networks" in description and "3x a deep ensemble" in description
    assert methods_hyper.SEARCH_CANDIDATES + methods_hyper.RETRAINED == 3 * methods_hyper.NUM_MEMBERS


@pytest.mark.parametrize(("model", "shape"), [("mlp", (1, 28, 28)), ("lenet5", (1, 28, 28))])
def test_search_candidates_are_one_stack_with_the_default_first_and_draws_from_the_space(model, shape):
    torch.manual_seed(0)
    method = build_method("hyper-deep-ensemble", _context(model, shape, num_train=54_000))
    network = method.network
    assert network.num_members == method.num_samples == method.num_batch_orders == 10
    candidates = network.hyperparameters
    assert candidates[0] == Hyperparameters()
    space = methods_hyper.search_space(54_000)
    for h in candidates[1:]:
        assert space.l2[0] * (1 - 1e-6) <= h.l2 <= space.l2[1] * (1 + 1e-6)
        assert space.dropout[0] <= h.dropout <= space.dropout[1]
        assert (
            space.label_smoothing[0] * (1 - 1e-6)
            <= h.label_smoothing
            <= space.label_smoothing[1] * (1 + 1e-6)
        )
    dropouts = [m for m in network.modules() if isinstance(m, MemberDropout)]
    assert len(dropouts) == 2  # after every hidden activation of the classifier
    torch.testing.assert_close(dropouts[0].rates, network.dropout)
    x, y = torch.randn(10, 4, *shape), torch.randint(0, 3, (10, 4))
    loss = method.training_loss(x, y)  # one batch per candidate
    assert loss.dim() == 0 and torch.isfinite(loss)
    with pytest.raises(NotApplicableError, match="classification only"):
        method.use_likelihood(GAUSSIAN)


def test_a_wider_search_holds_the_default_searchs_hyperparameters_first():
    context = _context("mlp", (1, 28, 28), num_train=54_000)
    torch.manual_seed(3)
    default = build_method("hyper-deep-ensemble", context).network.hyperparameters
    torch.manual_seed(3)
    wider = methods_hyper.build_hyper_deep_ensemble(context, search_candidates=20)
    assert wider.network.num_members == 20 and wider.num_retrained == methods_hyper.RETRAINED
    assert wider.network.hyperparameters[:10] == default
    assert len(set(wider.network.hyperparameters[10:]) - set(default)) == 10  # new draws
    with pytest.raises(ValueError, match="at least the ensemble's 5 members, got 4"):
        methods_hyper.build_hyper_deep_ensemble(context, search_candidates=4)
    with pytest.raises(ValueError, match=r"retrained .*None for the paper's full stratification.*got 0"):
        methods_hyper.build_hyper_deep_ensemble(context, retrained=0)


def _data(seed: int, n: int):
    generator = torch.Generator().manual_seed(seed)
    centers = torch.randn(3, 6, generator=generator) * 2
    labels = torch.randint(0, 3, (n,), generator=generator)
    return centers[labels] + torch.randn(n, 6, generator=generator), labels


def test_fit_post_hoc_retrains_the_selection_and_records_the_budget(tmp_path):
    torch.manual_seed(0)
    train, val = _data(0, 64), _data(1, 48)
    method = build_method("hyper-deep-ensemble", _context())
    result = train_method(method, "hyper-deep-ensemble", *train, *val, TRAINING)
    assert len(result.selected_epochs) == 1  # the stack at its averaged prediction's best epoch
    method.fit_post_hoc(*val, train=train)
    details = method.result_details()
    members, selections = details["members_selected"], details["selections"]
    assert 1 <= members <= 5 and method.network.num_members == members
    assert method.num_samples == selections == sum(m["count"] for m in details["final"]["members"])
    assert (
        details["networks_trained"] == 15 and details["search_candidates"] == 10 and details["retrained"] == 5
    )
    assert details["epochs_each"] == 2 and details["network_epochs"] == 30
    assert details["epoch_selection"] == "ensemble"
    assert details["deep_ensemble_trainings"] == 3.0 and details["num_members"] == 5 == method.num_members
    assert len(details["retraining"]["selected_epochs"]) == 1
    search = details["search"]["selection"]
    assert set(details["retraining"]["from_candidates"]) == set(search)
    for member in details["final"]["members"]:
        if member["stage"] == "search":
            assert member["index"] in search
            expected = details["search"]["hyperparameters"][member["index"]]
        else:
            expected = details["search"]["hyperparameters"][
                details["retraining"]["from_candidates"][member["index"]]
            ]
        assert {k: member[k] for k in expected} == expected
    # the final validation NLL is that of the method's own prediction
    val_nll = method.likelihood.nll(method.predict(val[0]), val[1])
    assert val_nll == pytest.approx(details["final"]["val_nll"][-1], rel=1e-5)
    # the pool holds the search's best candidate, so the final first pick is at least as good
    assert details["final"]["val_nll"][0] <= details["search"]["val_nll"][0] + 1e-12

    # a reload of the finished method (the runner's path after a kill during evaluation)
    path = tmp_path / "method.pt"
    torch.save({"method": method.state_dict()}, path)
    torch.manual_seed(5)
    fresh = build_method("hyper-deep-ensemble", _context())
    fresh.load_state_dict(torch.load(path, weights_only=True)["method"])
    assert fresh.num_samples == selections and fresh.result_details() == details
    torch.testing.assert_close(fresh.predict(val[0]).logits, method.predict(val[0]).logits)


def test_fit_post_hoc_needs_the_runs_training_configuration():
    torch.manual_seed(0)
    method = build_method("hyper-deep-ensemble", _context(training=None))
    with pytest.raises(ValueError, match=r"needs the training split and the run's training configuration"):
        method.fit_post_hoc(*_data(1, 8), train=_data(0, 8))
    assert math.isfinite(float(method.training_loss(*_data(0, 4)).detach()))


def test_full_stratification_gives_each_selected_hyperparameter_five_initialisations():
    torch.manual_seed(0)
    train, val = _data(0, 64), _data(1, 48)
    method = methods_hyper.build_hyper_deep_ensemble(_context(), retrained=None)
    assert method.num_retrained is None
    train_method(method, "hyper-deep-ensemble", *train, *val, TRAINING)
    method.fit_post_hoc(*val, train=train)
    details = method.result_details()
    distinct = set(details["search"]["selection"])
    retrained_from = details["retraining"]["from_candidates"]
    assert details["retrained"] == len(retrained_from) == 4 * len(distinct)
    assert details["networks_trained"] == 10 + 4 * len(distinct)
    assert {index: retrained_from.count(index) for index in distinct} == dict.fromkeys(distinct, 4)


def test_the_default_keeps_each_stack_at_its_averaged_predictions_best_epoch():
    torch.manual_seed(0)
    train, val = _data(0, 64), _data(1, 48)
    training = TrainConfig(epochs=5, batch_size=16, learning_rate=0.1, seed=0, progress=False)  # overfits
    method = build_method("hyper-deep-ensemble", _context(training=training))
    assert method.epoch_selection == "ensemble" and not method.select_members_separately
    result = train_method(method, "hyper-deep-ensemble", *train, *val, training)
    val_nlls = [row["val_nll"] for row in result.history]
    best = min(range(len(val_nlls)), key=val_nlls.__getitem__)
    assert result.selected_epochs == [best + 1]  # one epoch for the whole stack of 10
    assert best + 1 < training.epochs  # so that the state below is not simply the last epoch's
    # the stack loaded is that epoch's: its averaged prediction scores the history's minimum
    assert method.likelihood.nll(method.predict(val[0]), val[1]) == pytest.approx(val_nlls[best], rel=1e-5)
    method.fit_post_hoc(*val, train=train)
    details = method.result_details()
    assert details["epoch_selection"] == "ensemble"
    assert len(details["retraining"]["selected_epochs"]) == 1  # the retrained stack: one epoch too
    expected = r"epoch_selection must be one of \('ensemble', 'member'\), got 'last'"
    with pytest.raises(ValueError, match=expected):
        methods_hyper.build_hyper_deep_ensemble(_context(), epoch_selection="last")


def test_member_epoch_selection_keeps_each_network_at_its_own_best_epoch():
    torch.manual_seed(0)
    train, val = _data(0, 64), _data(1, 48)
    training = TrainConfig(epochs=5, batch_size=16, learning_rate=0.1, seed=0, progress=False)
    method = methods_hyper.build_hyper_deep_ensemble(_context(training=training), epoch_selection="member")
    result = train_method(method, "hyper-deep-ensemble", *train, *val, training)
    assert len(result.selected_epochs) == 10
    # each candidate's kept state scores its own recorded best validation NLL
    logits = method.predict(val[0]).logits  # [10, B, C], row m candidate m
    own = method.likelihood.member_nlls(method.predict(val[0]), val[1])
    assert logits.shape[0] == 10
    assert own == pytest.approx(result.selected_nlls, rel=1e-5)
    assert len(set(result.selected_epochs)) > 1  # the rule is per candidate here, not one epoch in disguise
    method.fit_post_hoc(*val, train=train)
    details = method.result_details()
    assert details["epoch_selection"] == "member" and len(details["retraining"]["selected_epochs"]) == 5
