"""``csgmcmc-distilled`` and ``apd``: csgmcmc's samples distilled post hoc into one network or a weight
generator, sharing csgmcmc's training in a run."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from uqkit.bench.methods_distilled import APD_MAX_PARAMETERS, DistilledCSGMCMC, GeneratedCSGMCMC
from uqkit.bench.registry import METHODS, MethodContext, NotApplicableError, build_method, methods_for_task
from uqkit.bench.runner import BenchConfig, run_bench
from uqkit.bench.trainer import TrainConfig, train_method

BATCH = 16
OPTIONS = {"base_lr": 0.05, "num_cycles": 2, "samples_per_cycle": 2, "exploration": 0.4}


def _data(n: int = 96):
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(n, 6, generator=generator, dtype=torch.float64)
    labels = (inputs[:, 0] + inputs[:, 1] > 0).long() + (inputs[:, 2] > 1).long()
    return inputs, labels


def _network() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3)).double()


def _train(method) -> None:
    inputs, labels = _data()
    config = TrainConfig(epochs=4, batch_size=BATCH, learning_rate=1e-3, seed=0, progress=False)
    train_method(method, "sampler", inputs, labels, inputs[:32], labels[:32], config)
    method.eval()


def _kl(teacher: torch.Tensor, student: torch.Tensor) -> float:
    """Mean KL(teacher || student) of probabilities [B, C]."""
    return float((teacher * (teacher.log() - student.log())).sum(-1).mean().detach())


def _configure(method):
    for name, value in OPTIONS.items():
        setattr(method, name, value)
    return method


def test_distilled_student_predicts_alone_and_moves_towards_the_samples_predictive():
    torch.manual_seed(0)
    method = _configure(DistilledCSGMCMC(_network(), _network(), 96, 96 // BATCH))
    method.student_epochs = 30
    _train(method)
    inputs, labels = _data()
    teacher = method.predict_with_samples(inputs).probs  # [B, C], the samples' predictive
    assert method.network.num_samples == 4
    last_sample = method.network.ensemble.members()[-1]
    with torch.no_grad():
        before = _kl(teacher, last_sample(inputs).softmax(-1))
    method.fit_post_hoc(inputs[:32], labels[:32], train=(inputs, labels))
    prediction = method.predict(inputs)
    assert prediction.logits.shape == (1, 96, 3) and method.num_samples == 1
    after = _kl(teacher, prediction.probs)
    assert after < 0.5 * before, (before, after)  # the warm start alone would leave it at `before`
    assert method.num_parameters() == sum(p.numel() for p in _network().parameters())


def test_apd_draws_networks_whose_predictive_matches_the_samples_and_survives_a_state_dict_round_trip():
    torch.manual_seed(0)
    context = MethodContext((6,), 3, "mlp", 96)
    method = _configure(GeneratedCSGMCMC(_network(), context, 96, 96 // BATCH))
    method.__dict__["_template_factory"] = _network
    method.apd_steps = 20  # integration only: the GAN itself is tested in tests/methods/test_apd.py
    _train(method)
    inputs, labels = _data()
    method.fit_post_hoc(inputs[:32], labels[:32], train=(inputs, labels))
    prediction = method.predict(inputs)
    assert prediction.logits.shape == (method.drawn_networks, 96, 3) and method.num_samples == 12
    teacher = method.predict_with_samples(inputs).probs  # [B, C], the samples' predictive
    uniform = torch.full_like(teacher, 1 / 3)
    assert _kl(teacher, prediction.probs) < 0.25 * _kl(teacher, uniform)
    restored = _configure(GeneratedCSGMCMC(_network(), context, 96, 96 // BATCH))
    restored.__dict__["_template_factory"] = _network
    restored.load_state_dict(method.state_dict())
    restored.eval()
    torch.testing.assert_close(restored.predict(inputs).logits, prediction.logits)


def test_registered_opt_in_sharing_csgmcmc_and_apd_refuses_large_backbones():
    for name in ("csgmcmc-distilled", "apd"):
        assert not METHODS[name].default and name in methods_for_task("fashion-mnist", opt_in=True)
    mlp = MethodContext((1, 28, 28), 10, "mlp", 1000)
    assert build_method("csgmcmc-distilled", mlp).shares_training_with == "csgmcmc"
    with pytest.raises(NotApplicableError, match=f"{APD_MAX_PARAMETERS:,}"):
        build_method("apd", mlp)
    assert (
        build_method("apd", MethodContext((1, 28, 28), 10, "lenet5", 1000)).shares_training_with == "csgmcmc"
    )


def test_bench_run_distils_csgmcmc_samples_without_retraining(tmp_path, fake_fashion_mnist):
    config = BenchConfig(
        out=tmp_path / "run",
        methods=["csgmcmc", "csgmcmc-distilled"],
        model="mlp",
        quick=True,
        progress=False,
    )
    results = run_bench(config, log=lambda _: None)
    methods = results["tasks"]["fashion-mnist"]["methods"]
    assert methods["csgmcmc-distilled"]["shares_training_with"] == "csgmcmc"
    assert methods["csgmcmc-distilled"]["num_samples"] == 1
    assert methods["csgmcmc"]["num_samples"] >= 4
