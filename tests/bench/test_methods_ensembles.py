"""The efficient-ensemble bench methods (uqkit/bench/methods_ensembles.py) on every backbone."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from uqkit.bench import methods_ensembles
from uqkit.bench.models import build_model
from uqkit.bench.registry import MethodContext, build_method, methods_for_task
from uqkit.bench.runner import BenchConfig, run_bench
from uqkit.nn import use_posterior_mean

pytestmark = [
    pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN"),
    pytest.mark.usefixtures("one_thread"),
]

BACKBONES = [("mlp", (1, 28, 28)), ("lenet5", (1, 28, 28)), ("cnn1d", (1, 40)), ("resmlp", (2,))]
METHODS = ("batchensemble", "mimo", "rank1-bnn")


def _context(model, shape, num_train=300):
    return MethodContext(input_shape=shape, num_classes=5, model=model, num_train=num_train, batch_size=32)


def test_registered_for_every_classification_task():
    for task in ("fashion-mnist", "two-moons"):
        assert set(METHODS) <= set(methods_for_task(task))


@pytest.mark.parametrize(("model", "shape"), BACKBONES)
@pytest.mark.parametrize("name", METHODS)
def test_methods_train_and_predict_on_every_backbone(name, model, shape):
    torch.manual_seed(0)
    method = build_method(name, _context(model, shape))
    x, y = torch.randn(6, *shape), torch.randint(0, 5, (6,))
    loss = method.training_loss(x, y)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in method.parameters() if p.requires_grad)
    method.eval()
    with torch.no_grad():
        prediction = method.predict(x)
    assert prediction.logits.shape == (method.num_samples, 6, 5)


def test_batchensemble_loss_is_the_members_mean_cross_entropy_on_the_whole_batch():
    torch.manual_seed(1)
    method = build_method("batchensemble", _context("lenet5", (1, 28, 28)))
    x, y = torch.randn(5, 1, 28, 28), torch.randint(0, 5, (5,))
    logits = method.predict(x).logits
    assert logits.shape == (4, 5, 5)
    expected = sum(F.cross_entropy(logits[m], y) for m in range(4)) / 4
    torch.testing.assert_close(method.training_loss(x, y), expected)
    single = sum(p.numel() for p in build_model("mlp", (1, 28, 28), 10).parameters())
    mlp = build_method("batchensemble", MethodContext((1, 28, 28), 10, "mlp", 100))
    assert sum(p.numel() for p in mlp.parameters()) <= 1.05 * single


def test_rank1_prediction_groups_samples_by_member():
    torch.manual_seed(2)
    method = build_method("rank1-bnn", _context("mlp", (1, 28, 28)))
    samples = methods_ensembles.RANK1_SAMPLES_PER_MEMBER
    x = torch.randn(7, 1, 28, 28)
    with torch.no_grad():
        logits = method.predict(x).logits
        assert logits.shape == (4 * samples, 7, 5)
        assert not torch.equal(logits[0], logits[1])  # the samples of a member differ
        with use_posterior_mean(method.network):
            means = method.predict(x).logits
            members = method.member_logits(x)
    for m in range(4):
        for s in range(samples):
            torch.testing.assert_close(means[m * samples + s], members[m], rtol=1e-6, atol=1e-6)
    y = torch.randint(0, 5, (7,))
    loss = method.training_loss(x, y)
    elbo = method.elbo
    assert elbo.warmup_steps == -(-300 // 32)  # KL annealed in over the first epoch
    torch.testing.assert_close(loss, elbo.last_nll + elbo.last_kl * (1 / elbo.warmup_steps) / 300)


def test_mimo_members_see_independent_examples_in_training():
    torch.manual_seed(3)
    method = build_method("mimo", _context("mlp", (1, 28, 28)))
    mimo = method.network
    assert mimo.num_members == methods_ensembles.MIMO_MEMBERS and method.num_samples == mimo.num_members
    x, y = torch.randn(64, 1, 28, 28), torch.arange(64) % 5
    generator = torch.Generator().manual_seed(4)
    torch.manual_seed(5)
    loss = method.training_loss(x, y)
    torch.manual_seed(5)
    member_inputs, member_labels = mimo.training_batch(x, y)
    torch.testing.assert_close(loss, mimo.loss(mimo(member_inputs), member_labels))
    assert mimo.input_repetition == methods_ensembles.MIMO_INPUT_REPETITION
    assert mimo.batch_repetition == methods_ensembles.MIMO_BATCH_REPETITION
    index = mimo.training_indices(1000, generator)
    # members agree at the repeated fraction rho of the positions, and almost nowhere else
    agreement = float((index[0] == index[1]).double().mean())
    assert abs(agreement - mimo.input_repetition) < 0.01 + 5 * (0.25 / 1000) ** 0.5


def test_quick_run_of_the_three_methods(fake_fashion_mnist, tmp_path):
    out = tmp_path / "run"
    run_bench(BenchConfig(out=out, methods=list(METHODS), quick=True, progress=False, epochs=1))
    results = json.loads((out / "results.json").read_text())
    methods = results["tasks"]["fashion-mnist"]["methods"]
    assert list(methods) == list(METHODS)
    expected_samples = {
        "batchensemble": 4,
        "mimo": methods_ensembles.MIMO_MEMBERS,
        "rank1-bnn": 4 * methods_ensembles.RANK1_SAMPLES_PER_MEMBER,
    }
    for name, block in methods.items():
        assert block["num_samples"] == expected_samples[name]
        assert block["metrics"]["accuracy"] > 0.2  # learnable stand-in data, ten classes
