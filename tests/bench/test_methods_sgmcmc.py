"""The SG-MCMC benchmark methods: the trainer's hooks drive the sampler and its collector; a run resumed after
a kill keeps the same samples; the finished method predicts with its samples as one vectorized model."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import uqkit
from uqkit.bench.divergence import ChainDivergenceError
from uqkit.bench.methods_sgmcmc import CyclicalSGMCMC, SGLDChain
from uqkit.bench.registry import METHODS, MethodContext, build_method, methods_for_task
from uqkit.bench.report import _training_text
from uqkit.bench.runner import BenchConfig, run_bench
from uqkit.bench.trainer import NonFiniteLossError, TrainConfig, load_checkpoint, train_method
from uqkit.sgmcmc import SampleCollector

BATCH = 16


def _data(n: int = 96):
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(n, 6, generator=generator, dtype=torch.float64)
    labels = (inputs[:, 0] + inputs[:, 1] > 0).long() + (inputs[:, 2] > 1).long()
    return inputs, labels


def _network() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3)).double()


def _csgmcmc(**options) -> CyclicalSGMCMC:
    torch.manual_seed(0)
    defaults = {"base_lr": 0.05, "num_cycles": 2, "samples_per_cycle": 2, "exploration": 0.4}
    return CyclicalSGMCMC(_network(), 96, 96 // BATCH, **{**defaults, **options})


def _train(method, epochs: int = 4, checkpoint=None):
    inputs, labels = _data()
    config = TrainConfig(epochs=epochs, batch_size=BATCH, learning_rate=1e-3, seed=0, progress=False)
    return train_method(method, "sampler", inputs, labels, inputs[:32], labels[:32], config, checkpoint)


def test_cyclical_run_keeps_its_samples_and_predicts_with_them():
    method = _csgmcmc()
    seen = []
    original = method.on_step_end

    def record(step, total):
        before = method.num_collected
        original(step, total)
        if method.num_collected > before:
            seen.append((step, {k: v.clone() for k, v in method.chain.state_dict().items()}))

    method.on_step_end = record
    result = _train(method)
    # 4 epochs of 6 steps, 2 cycles of 12 sampling from step 5 (0.4 * 12 = 4.8): samples at the ends of
    # the last 2 epochs of each cycle
    assert [step for step, _ in seen] == [5, 11, 17, 23]
    assert result.selected_epochs == [4]  # no epoch selection: the last state
    assert method.num_samples == 4
    x = _data()[0][:5]
    logits = uqkit.predict(method.network, x).logits
    assert logits.shape == (4, 5, 3)
    torch.testing.assert_close(method.predict(x).logits, logits)
    for index, (_, state) in enumerate(seen):
        member = _network()
        member.load_state_dict(state)
        with torch.no_grad():  # float64: a stacked product against a loop differs by rounding only
            torch.testing.assert_close(logits[index], member(x), rtol=1e-10, atol=1e-10)


def test_schedule_and_noise_follow_the_cycles():
    method = _csgmcmc()
    rates = []
    original = method.on_step_start

    def record(step, total, optimizer):
        original(step, total, optimizer)
        group = optimizer.param_groups[0]
        rates.append((group["lr"], group["noise"]))
        assert method.num_samples == 1  # while training (validation too) the chain predicts

    method.on_step_start = record
    _train(method)
    schedule = method.schedule(24)
    assert rates == [(schedule.lr(s), schedule.is_sampling(s)) for s in range(24)]
    assert [noise for _, noise in rates[:12]] == [False] * 5 + [True] * 7


def test_resume_after_a_kill_gives_the_same_samples(tmp_path):
    reference = _csgmcmc()
    _train(reference, checkpoint=tmp_path / "reference.pt")

    killed = _csgmcmc()
    original = killed.on_step_end

    def kill(step, total):
        original(step, total)
        if step == 20:  # in epoch 4, after 3 checkpointed epochs and 3 samples
            raise KeyboardInterrupt

    killed.on_step_end = kill
    with pytest.raises(KeyboardInterrupt):
        _train(killed, checkpoint=tmp_path / "run.pt")
    assert load_checkpoint(tmp_path / "run.pt")["epoch"] == 3

    torch.manual_seed(12345)  # the checkpoint restores the generators
    resumed = _csgmcmc()
    _train(resumed, checkpoint=tmp_path / "run.pt")
    assert resumed.num_samples == reference.num_samples == 4
    torch.testing.assert_close(
        resumed.network.flat_samples(), reference.network.flat_samples(), rtol=0, atol=0
    )


def test_sgld_keeps_evenly_spaced_samples_after_burn_in():
    torch.manual_seed(0)
    method = SGLDChain(_network(), 96, 96 // BATCH, base_lr=0.05, num_samples_kept=4)
    rates = []
    original = method.on_step_start

    def record(step, total, optimizer):
        original(step, total, optimizer)
        rates.append(optimizer.param_groups[0]["lr"])

    method.on_step_start = record
    _train(method)
    rule = method.thinning(24)
    assert [s for s in range(24) if rule(s)] == [14, 17, 20, 23]
    assert method.num_samples == 4
    assert rates == pytest.approx([0.05 * (1 + s / 6) ** -0.55 for s in range(24)])


def test_state_dict_round_trip_of_a_finished_method():
    method = _csgmcmc()
    _train(method)
    fresh = _csgmcmc()
    assert fresh.num_samples == 1  # no sample yet: the chain predicts
    fresh.load_state_dict(method.state_dict())
    assert fresh.num_samples == 4
    shared = _csgmcmc()  # what the runner does for a method with shares_training_with = "csgmcmc"
    prefix = "network."
    shared.network.load_state_dict(
        {k[len(prefix) :]: v for k, v in method.state_dict().items() if k.startswith(prefix)}
    )
    assert shared.num_samples == 4
    x = _data()[0][:3]
    torch.testing.assert_close(fresh.predict(x).logits, method.predict(x).logits)
    assert method.num_parameters() == 5 * sum(p.numel() for p in method.chain.parameters())


def test_weight_decay_is_the_prior_precision_per_example():
    method = _csgmcmc(weight_decay=2e-3)
    (group,) = method.make_optimizer(1e-3).param_groups
    assert group["prior_precision"] == pytest.approx(2e-3 * 96)  # w N, N = 96 training examples
    chain = SGLDChain(_network(), 96, 96 // BATCH, weight_decay=0.0)
    (group,) = chain.make_optimizer(1e-3).param_groups
    assert group["prior_precision"] == 0.0
    with pytest.raises(ValueError, match=r"weight_decay: expected a finite number >= 0, got -1.0"):
        _csgmcmc(weight_decay=-1.0)


def test_registered_as_opt_in_and_classification_only():
    assert not METHODS["csgmcmc"].default and not METHODS["sgld"].default
    assert "csgmcmc" not in methods_for_task("fashion-mnist")  # a run without --methods leaves them out
    assert {"csgmcmc", "sgld"} <= set(methods_for_task("fashion-mnist", opt_in=True))
    context = MethodContext((6,), 3, "mlp", 96, "toy", batch_size=BATCH)
    method = build_method("csgmcmc", context)
    assert isinstance(method.network, SampleCollector) and method.budget_multiple == 4
    from uqkit.bench.likelihoods import likelihood_of
    from uqkit.bench.registry import NotApplicableError

    with pytest.raises(NotApplicableError, match="classification"):
        method.use_likelihood(likelihood_of("regression"))


def test_bench_run_records_samples_and_training(tmp_path, fake_fashion_mnist):
    config = BenchConfig(
        out=tmp_path / "run", methods=["csgmcmc", "sgld"], model="mlp", quick=True, progress=False
    )
    results = run_bench(config, log=lambda _: None)
    for name in ("csgmcmc", "sgld"):
        block = results["tasks"]["fashion-mnist"]["methods"][name]
        assert block["num_samples"] >= 4
        assert block["training"]["epochs"] == 4 and block["training"]["budget_multiple"] == 4
        assert block["training"]["network_epochs"] == 4
        assert block["training"]["optimizer"] == {"csgmcmc": "SGHMC", "sgld": "SGLD"}[name]
        assert block["selected_epochs"] == [4] and not block["training"]["selects_best_epoch"]
        assert block["learning_rate_schedule"] == {"csgmcmc": "cyclical", "sgld": "polynomial"}[name]
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["tasks"]["fashion-mnist"]["methods"]["csgmcmc"]["training"]["optimizer"] == "SGHMC"
    text = _training_text(saved["tasks"]["fashion-mnist"]["methods"]["csgmcmc"])
    assert text == "4 epochs (4× the task's 1), SGHMC, no epoch selection"


def test_a_chain_that_blows_up_in_a_sampling_stage_stops_the_run():
    """A step size 40 times the tests' (2.0 on the mean loss) throws the chain off: in the second cycle's
    sampling stage its epoch-mean loss is far above the lowest it had reached. The run fails with an error
    naming the method, epoch and step instead of keeping samples from there (a finite loss: the trainer's
    own non-finite check never fires)."""
    method = _csgmcmc(base_lr=2.0)
    with pytest.raises(
        ChainDivergenceError, match=r"method 'csgmcmc'.* epoch \d+, step \d+ .*blew up"
    ) as error:
        _train(method, epochs=8)
    divergence = error.value.divergence
    assert isinstance(error.value, NonFiniteLossError) and divergence.reason == "blow-up"
    assert math.isfinite(divergence.loss) and divergence.loss - divergence.level > method.divergence_tolerance
    assert method.is_sampling(divergence.step, 8 * 96 // BATCH)
    assert (divergence.step + 1) % (96 // BATCH) == 0  # judged at an epoch's end, on the epoch's mean


def test_a_healthy_chain_is_not_stopped_and_a_non_finite_loss_is_named():
    _train(SGLDChain(_network(), 96, 96 // BATCH), epochs=8)  # the tests' step size: no divergence
    method = SGLDChain(_network(), 96, 96 // BATCH)
    inputs, labels = _data()
    inputs[5] = math.nan
    config = TrainConfig(epochs=2, batch_size=BATCH, learning_rate=1e-3, seed=0, progress=False)
    with pytest.raises(ChainDivergenceError, match=r"method 'sgld'.*non-finite loss \(nan\)"):
        train_method(method, "sgld", inputs, labels, inputs[:32], labels[:32], config)
