"""The efficient-ensemble bench methods (uqkit/bench/methods_ensembles.py) on every backbone."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

import uqkit
from uqkit.bench import methods_ensembles
from uqkit.bench.models import build_model
from uqkit.bench.registry import MethodContext, build_method, methods_for_task
from uqkit.bench.runner import BenchConfig, run_bench
from uqkit.nn import Rank1Linear, use_posterior_mean
from uqkit.nn.members import fold_members, pretiled

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
    """``predict`` returns ``[M * S, B, C]`` member-major: row ``m * S + s`` is sample ``s`` of member ``m``.

    Each member gets a marker of +100 on its own class in the output bias, so the arg-max of every row names
    the member that computed it; with ``S = 3`` samples and ``M = 4`` members a sample-major (transposed)
    layout puts member ``k % 4`` in row ``k`` instead of member ``k // 3`` and fails. A small posterior scale
    (1e-3) keeps each sample within about 1e-2 of its member's posterior-mean logits, far below the spread
    between examples, so a permuted batch dimension fails as well.
    """
    torch.manual_seed(2)
    members, samples, batch = 4, 3, 7
    built = build_method("rank1-bnn", _context("mlp", (1, 28, 28)))
    method = methods_ensembles.Rank1Network(built.network, members, 300, 32, samples_per_member=samples)
    layers = [m for m in method.network.modules() if isinstance(m, Rank1Linear)]
    with torch.no_grad():
        for layer in layers:
            layer.reset_posterior_scale(1e-3)
        layers[-1].bias[torch.arange(members), torch.arange(members)] += 100.0  # member m marks class m
    x = torch.randn(batch, 1, 28, 28)
    with torch.no_grad():
        logits = method.predict(x).logits
        with use_posterior_mean(method.network):
            means = method.member_logits(x)  # [M, B, C]
    assert logits.shape == (members * samples, batch, 5) and method.num_samples == members * samples
    rows = torch.arange(members * samples)
    assert torch.equal(logits.argmax(-1), (rows // samples)[:, None].expand(-1, batch))  # member-major
    assert not torch.equal(rows // samples, rows % members)  # the transposed layout would name other members
    expected = means.repeat_interleave(samples, dim=0)  # row m * S + s holds member m's logits
    spread = float((means - means.mean(dim=1, keepdim=True)).abs().mean())  # between examples, ~1
    torch.testing.assert_close(logits, expected, rtol=0, atol=0.05 * spread)
    for m in range(members):
        group = logits[m * samples : (m + 1) * samples]
        assert all(not torch.equal(group[a], group[b]) for a in range(samples) for b in range(a))  # S draws
    y = torch.randint(0, 5, (batch,))
    loss = built.training_loss(x, y)
    elbo = built.elbo
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
    with pretiled():  # one batch per member, folded into the batch
        logits = mimo(fold_members(member_inputs))
    torch.testing.assert_close(loss, mimo.loss(logits, fold_members(member_labels)))
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


def test_rank1_bnn_factor_means_start_typical_under_the_prior_and_members_differ():
    """The KL at initialisation is what factor means drawn from the prior cost (Dusenberry et al. 2020, ELBO).

    Per entry, ``KL(N(mu, s^2) || N(1, p^2)) = log(p / s) + s^2 / (2 p^2) - 1/2 + (mu - 1)^2 / (2 p^2)``; the
    layers average over the ``M`` members. For ``n`` entries in all with means typical under the prior,
    ``sum (mu - 1)^2 / p^2`` has mean ``n`` and standard deviation at most ``sqrt(2 n)`` (``chi^2(n)`` for
    Gaussian draws; ``2 Binomial(n, 1/2)``, sd ``sqrt(n)``, for random signs under ``p^2 = 2``), so the KL
    lies within ``K0 + (n +- 5 sqrt(2 n)) / (2 M)`` (``K0`` the means-free part). Random signs under
    ``N(1, 0.5^2)`` (the benchmark until 2026-12) put ``(mu - 1)^2 / p^2 = 16`` on half the entries,
    ``8 n / (2 M)`` in all: for the MLP 0.21 nats per example where the bound allows 0.03 (0.33 nats per
    example in all, as much as the NLL).
    """
    torch.manual_seed(6)
    num_train = 54_000
    method = build_method("rank1-bnn", MethodContext((1, 28, 28), 10, "mlp", num_train, 128))
    layers = [m for m in method.network.modules() if isinstance(m, Rank1Linear)]
    assert len(layers) == 3
    members = layers[0].num_members
    prior, scale = layers[0].prior, float(layers[0].posterior_scale("r")[0, 0].detach())
    n = sum(layer.r_mean.numel() + layer.s_mean.numel() for layer in layers)  # all members' entries

    def means_free(p: float) -> float:
        return n / members * (math.log(p / scale) + scale**2 / (2 * p**2) - 0.5)

    with torch.no_grad():
        kl = float(uqkit.kl_divergence(method.network))
    margin = 5 * math.sqrt(2 * n)
    assert (means_free(prior.scale) + (n - margin) / (2 * members)) / num_train < kl / num_train
    assert kl / num_train < (means_free(prior.scale) + (n + margin) / (2 * members)) / num_train
    before = means_free(0.5) + 8 * n / (2 * members)  # random signs under N(1, 0.5^2), for the record
    assert before / num_train > (means_free(0.5) + (n + margin) / (2 * members)) / num_train + 0.15
    # the members differ at initialisation: two members' factor means differ with mean square 2 (+-1 signs)
    for layer in layers:
        gap = (layer.r_mean[0] - layer.r_mean[1]).detach()
        assert float(gap.pow(2).mean()) > 1.0
    x = torch.randn(64, 1, 28, 28)
    with torch.no_grad(), use_posterior_mean(method.network):
        logits = method.member_logits(x)
    disagreement = float((logits.argmax(-1)[0] != logits.argmax(-1)[1]).double().mean())
    assert disagreement > 0.25  # ten classes; identical members would agree everywhere
