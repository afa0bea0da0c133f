"""The ``laplace`` benchmark method (uqkit/bench/methods_posthoc.py): uqkit.LastLayerLaplace fitted on the
training split of the deterministic network it shares, its posterior saved with the method, refused with a
reason where it cannot apply."""

from __future__ import annotations

import copy
import io
import json
import math

import pytest
import torch
from torch import nn

from uqkit import LastLayerLaplace
from uqkit.bench.applicability import not_applicable_reason
from uqkit.bench.likelihoods import GAUSSIAN
from uqkit.bench.methods_posthoc import LAPLACE_HESSIAN, LaplaceMethod, build_laplace
from uqkit.bench.registry import MethodContext, NotApplicableError, build_method
from uqkit.bench.runner import BenchConfig, run_bench
from uqkit.bench.tasks import Task
from uqkit.data import LabeledData

pytestmark = pytest.mark.usefixtures("one_thread")

CONTEXT = MethodContext(input_shape=(6,), num_classes=4, model="resmlp", num_train=48, batch_size=8)


def _data(rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 6, generator=generator)
    return x, (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()


def _fitted(hessian: str = LAPLACE_HESSIAN, prior_precision="marglik") -> tuple[LaplaceMethod, tuple, tuple]:
    torch.manual_seed(0)
    method = build_laplace(CONTEXT, hessian=hessian, prior_precision=prior_precision).eval()
    train, val = _data(48, 1), _data(32, 2)
    method.fit_post_hoc(*val, train=train)
    return method, train, val


@pytest.mark.parametrize("hessian", ["full", "kron"])
def test_prediction_is_the_last_layer_laplace_of_the_network_on_the_training_split(hessian):
    method, train, _ = _fitted(hessian)
    oracle = LastLayerLaplace(copy.deepcopy(method.network), "classification", hessian).fit(*train)
    test = torch.randn(7, 6)
    with torch.no_grad():
        prediction = method.predict(test)
        expected = oracle.predict(test)
    assert prediction.logits.shape == (1, 7, 4) and method.num_samples == 1
    torch.testing.assert_close(method.laplace.prior_precision, oracle.prior_precision)
    torch.testing.assert_close(prediction.probs, expected.probs)
    plain = method.network(test).softmax(-1)
    assert not torch.allclose(prediction.probs, plain, atol=1e-3)  # the posterior widens the predictive


def test_val_nll_prior_is_chosen_on_the_validation_split():
    method, train, val = _fitted(prior_precision="val_nll")
    oracle = LastLayerLaplace(
        copy.deepcopy(method.network), "classification", "full", prior_precision="val_nll"
    )
    oracle.fit(*train, val=val[0], val_targets=val[1])
    torch.testing.assert_close(method.laplace.prior_precision, oracle.prior_precision)


@pytest.mark.parametrize("hessian", ["full", "kron"])
def test_the_fitted_posterior_reloads_from_the_state_dict_without_data(hessian):
    method, _, _ = _fitted(hessian)
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)  # as the runner reads model files
    torch.manual_seed(5)  # another initialisation: everything must come from the state
    other = "kron" if hessian == "full" else "full"
    with pytest.raises(ValueError, match=f"the saved posterior has hessian='{hessian}'"):
        build_laplace(CONTEXT, hessian=other).load_state_dict(state)
    fresh = build_laplace(CONTEXT, hessian=hessian).eval()
    assert not fresh.fitted
    fresh.load_state_dict(state)
    test = torch.randn(9, 6)
    with torch.no_grad():
        torch.testing.assert_close(fresh.predict(test).logits, method.predict(test).logits)
        reference = method.predict(test).probs.double()
        torch.testing.assert_close(fresh.double().predict(test.double()).probs, reference)


def test_unfitted_it_predicts_with_the_map_network_and_refuses_to_fit_without_the_training_split():
    method = build_laplace(CONTEXT).eval()
    x, y = _data(8, 0)
    with torch.no_grad():  # before the fit (the trainer's validation passes): the MAP network, S = 1
        assert torch.equal(method.predict(x).logits, method.network(x).unsqueeze(0))
    with pytest.raises(ValueError, match="needs the training split"):
        method.fit_post_hoc(x, y)


def test_bench_laplace_alone_trains_the_deterministic_network_itself(fake_fashion_mnist, tmp_path):
    """Without ``deterministic`` in the run, ``laplace`` trains its network itself, choosing its epoch on the
    MAP network's validation NLL exactly as ``deterministic`` does, then fits the posterior."""
    alone = run_bench(
        BenchConfig(out=tmp_path / "alone", methods=["laplace"], quick=True, progress=False),
        log=lambda _: None,
    )["tasks"]["fashion-mnist"]["methods"]["laplace"]
    base = run_bench(
        BenchConfig(out=tmp_path / "base", methods=["deterministic"], quick=True, progress=False),
        log=lambda _: None,
    )["tasks"]["fashion-mnist"]["methods"]["deterministic"]
    assert alone["shares_training_with"] is None
    assert [e["val_nll"] for e in alone["history"]] == pytest.approx([e["val_nll"] for e in base["history"]])
    assert alone["selected_epochs"] == base["selected_epochs"]
    assert math.isfinite(alone["metrics"]["nll"]) and alone["metrics"]["nll"] != base["metrics"]["nll"]


def test_not_applicable_with_the_reason():
    with pytest.raises(NotApplicableError, match="classification only: the benchmark's regression networks"):
        build_method("laplace", CONTEXT).use_likelihood(GAUSSIAN)
    with pytest.raises(NotApplicableError, match=r"expected its last module to be an nn\.Linear"):
        LaplaceMethod(nn.Sequential(nn.Linear(6, 4), nn.Softmax(dim=-1)))


def test_the_user_model_probe_reports_a_model_whose_output_is_not_its_last_linear(monkeypatch):
    class ScaledOutput(nn.Module):  # the last module is an nn.Linear, but the model rescales its output
        def __init__(self):
            super().__init__()
            self.out = nn.Linear(6, 4)

        def forward(self, x):
            return 2 * self.out(x)

    def build(name, shape, classes, dropout=None):
        return (
            ScaledOutput() if name == "scaled" else nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
        )

    monkeypatch.setattr("uqkit.bench.methods_posthoc.build_model", build)
    x, y = _data(16, 0)
    split = LabeledData(x, y)
    task = Task("user", "", 4, (6,), split, split, split, "scaled")
    context = MethodContext((6,), 4, "scaled", 16)
    assert "the model returns something else" in not_applicable_reason("laplace", task, context)
    linear = MethodContext((6,), 4, "linear", 16)
    assert not_applicable_reason("laplace", task, linear) is None


def test_bench_shares_the_deterministic_network_and_resumes_from_the_saved_posterior(
    fake_fashion_mnist, tmp_path
):
    out = tmp_path / "run"
    config = BenchConfig(out=out, methods=["deterministic", "laplace"], quick=True, progress=False)
    results = run_bench(config, log=lambda message: None)
    methods = results["tasks"]["fashion-mnist"]["methods"]
    laplace, deterministic = methods["laplace"], methods["deterministic"]
    assert laplace["shares_training_with"] == "deterministic" and laplace["num_samples"] == 1
    assert laplace["num_parameters"] == deterministic["num_parameters"]
    assert abs(laplace["metrics"]["accuracy"] - deterministic["metrics"]["accuracy"]) < 0.02
    assert laplace["metrics"]["nll"] != deterministic["metrics"]["nll"]
    # killed after training and fitting, before evaluation: the model file alone must give the same numbers
    (out / "methods" / "fashion-mnist" / "laplace.json").unlink()
    resumed = run_bench(BenchConfig(**{**config.__dict__, "resume": True}), log=lambda message: None)
    again = resumed["tasks"]["fashion-mnist"]["methods"]["laplace"]
    assert json.dumps(again["metrics"]) == json.dumps(laplace["metrics"])
