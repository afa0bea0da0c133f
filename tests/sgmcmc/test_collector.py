"""The sample collector: its one vectorized pass equals a loop over the stored models; it keeps what its
thinning rule picks; it survives save/load, state_dict and device/dtype moves; flat samples round-trip."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import uqkit
from uqkit._atomic import CorruptFileError
from uqkit.bench.models import LeNet5
from uqkit.sgmcmc import SGHMC, CycleEnds, CyclicalSchedule, EveryKSteps, SampleCollector

TOL = {"rtol": 1e-10, "atol": 1e-10}  # float64: a stacked product against a loop differs by rounding only


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3)).double()


def _sample_chain(model: nn.Module, collector: SampleCollector, steps: int) -> list[dict[str, torch.Tensor]]:
    """Run SGHMC for ``steps`` steps; returns a copy of the model's state at every step the collector kept."""
    generator = torch.Generator().manual_seed(0)
    optimizer = SGHMC(model.parameters(), lr=0.05, num_data=100)
    kept = []
    model.train()
    for step in range(steps):
        x = torch.randn(8, 5, generator=generator, dtype=torch.float64)
        y = torch.randint(0, 3, (8,), generator=generator)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        if collector.step(step):
            kept.append({k: v.clone() for k, v in model.state_dict().items()})
    return kept


def _loop_logits(states, x: torch.Tensor) -> torch.Tensor:
    outputs = []
    for state in states:
        model = _net()
        model.load_state_dict(state)
        with torch.no_grad():
            outputs.append(model.eval()(x))
    return torch.stack(outputs)


def test_predictions_equal_a_loop_over_the_stored_models():
    torch.manual_seed(0)
    model = _net()
    collector = SampleCollector(model, EveryKSteps(5, burn_in=10))
    states = _sample_chain(model, collector, 40)
    assert collector.num_samples == len(states) == 6
    x = torch.randn(7, 5, dtype=torch.float64)
    prediction = uqkit.predict(collector, x)
    assert prediction.logits.shape == (6, 7, 3)
    torch.testing.assert_close(prediction.logits, _loop_logits(states, x), **TOL)
    # batch-norm running statistics are part of each sample
    assert not torch.equal(states[0]["1.running_mean"], states[-1]["1.running_mean"])


def test_thinning_counts_with_the_cyclical_schedule():
    torch.manual_seed(0)
    model = _net()
    schedule = CyclicalSchedule(0.05, 60, 3, exploration=0.7)
    rule = CycleEnds(schedule, samples_per_cycle=2, spacing=2)
    collector = SampleCollector(model, rule)
    _sample_chain(model, collector, 60)
    assert collector.num_samples == rule.num_samples() == 6


def test_collect_and_explicit_errors():
    model = _net()
    collector = SampleCollector(model)
    with pytest.raises(RuntimeError, match="no samples"):
        uqkit.predict(collector, torch.randn(2, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="thinning"):
        collector.step(0)
    assert collector.collect() == 0 and collector.collect() == 1
    assert collector.samples()["0.weight"].shape == (2, 16, 5)
    collector.clear()
    assert collector.num_samples == 0 and collector.samples()["0.weight"].shape == (0, 16, 5)
    with pytest.raises(TypeError, match="model"):
        SampleCollector("net")
    with pytest.raises(TypeError, match="thinning"):
        SampleCollector(model, thinning=3)


def test_samples_are_copies():
    model = _net()
    collector = SampleCollector(model)
    collector.collect()
    before = collector.samples()["0.weight"][0].clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    assert torch.equal(collector.samples()["0.weight"][0], before)


def _filled(count: int = 3) -> tuple[nn.Module, SampleCollector]:
    torch.manual_seed(0)
    model = _net()
    collector = SampleCollector(model)
    for _ in range(count):
        with torch.no_grad():
            for param in model.parameters():
                param.add_(torch.randn_like(param))
            model[1].running_mean.add_(1.0)
        collector.collect()
    return model, collector


def test_save_and_load_round_trip(tmp_path):
    _, collector = _filled()
    path = tmp_path / "samples.pt"
    collector.save(path)
    fresh = SampleCollector(_net()).load(path)
    x = torch.randn(4, 5, dtype=torch.float64)
    # the same samples through the same ops: equal
    torch.testing.assert_close(
        uqkit.predict(fresh, x).logits, uqkit.predict(collector, x).logits, rtol=0, atol=0
    )
    for name, tensor in collector.samples().items():
        assert torch.equal(fresh.samples()[name], tensor)
    assert [p.name for p in tmp_path.iterdir()] == ["samples.pt"]  # written atomically: no temporary left
    torch.load(path, weights_only=True)  # tensors, numbers and strings only


def test_load_names_a_corrupt_or_foreign_file(tmp_path):
    _, collector = _filled()
    path = tmp_path / "samples.pt"
    collector.save(path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CorruptFileError, match=r"samples\.pt"):
        SampleCollector(_net()).load(path)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(CorruptFileError, match=r"other\.pt.*format"):
        SampleCollector(_net()).load(other)
    collector.save(path)
    with pytest.raises(CorruptFileError, match=r"samples\.pt"):
        SampleCollector(nn.Sequential(nn.Linear(5, 3))).load(path)


def test_state_dict_carries_any_number_of_samples():
    _, collector = _filled(4)
    owner = nn.Module()
    owner.samples = collector
    fresh_owner = nn.Module()
    fresh_owner.samples = SampleCollector(_net())
    fresh_owner.load_state_dict(owner.state_dict())
    assert fresh_owner.samples.num_samples == 4
    torch.testing.assert_close(fresh_owner.samples.flat_samples(), collector.flat_samples())


def test_flat_samples_round_trip():
    model, collector = _filled(3)
    flat = collector.flat_samples()
    size = sum(p.numel() for p in model.parameters())
    assert flat.shape == (3, size)
    last = torch.nn.utils.parameters_to_vector(model.parameters())
    torch.testing.assert_close(flat[-1], last)  # the last sample is the model's current state
    x = torch.randn(6, 5, dtype=torch.float64)
    before = uqkit.predict(collector, x).logits
    names = collector.parameter_names
    assert names == [name for name, _ in model.named_parameters()]
    with torch.no_grad():  # buffers of the new samples are copied from the model
        model[1].running_mean.copy_(collector.samples()["1.running_mean"][0])
    other = SampleCollector(model)
    other.set_flat_samples(flat[:1])
    torch.testing.assert_close(uqkit.predict(other, x).logits[0], before[0], **TOL)
    with pytest.raises(ValueError, match="P = "):
        other.set_flat_samples(flat[:, :-1])
    with pytest.raises(ValueError, match="finite"):
        other.set_flat_samples(torch.full_like(flat, float("nan")))


def test_moves_with_to_and_keeps_training_mode():
    _, collector = _filled(2)
    collector.to(torch.float32)
    assert collector.samples()["0.weight"].dtype == torch.float32
    logits = uqkit.predict(collector, torch.randn(3, 5)).logits
    assert logits.dtype == torch.float32
    collector.train()
    assert collector.ensemble.training
    collector.eval()
    assert not collector.ensemble.training


def test_lenet_samples_in_one_pass():
    torch.manual_seed(0)
    model = LeNet5(1, 10).double()
    collector = SampleCollector(model)
    states = []
    for _ in range(4):
        with torch.no_grad():
            for param in model.parameters():
                param.mul_(1.1)
        collector.collect()
        states.append({k: v.clone() for k, v in model.state_dict().items()})
    x = torch.randn(5, 1, 28, 28, dtype=torch.float64)
    outputs = []
    for state in states:
        member = LeNet5(1, 10).double()
        member.load_state_dict(state)
        with torch.no_grad():
            outputs.append(member.eval()(x))
    torch.testing.assert_close(uqkit.predict(collector, x).logits, torch.stack(outputs), **TOL)


class _Shifted(nn.Module):
    """A model with a batch-shaped keyword input and a Gaussian output (a dict of mean and variance)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(5, 2).double()

    def forward(self, x: torch.Tensor, offset: torch.Tensor, scale: torch.Tensor) -> dict[str, torch.Tensor]:
        mean = self.linear(x) + offset
        return {"mean": mean * scale, "variance": F.softplus(mean) + 0.1}


@pytest.mark.parametrize("rows", [1, 7, 20, None])
def test_predictions_in_slices_of_the_batch_equal_one_pass(rows):
    torch.manual_seed(0)
    _, collector = _filled(4)
    x = torch.randn(9, 5, dtype=torch.float64)
    reference = uqkit.predict(collector, x).logits
    collector.rows_per_pass = rows
    torch.testing.assert_close(uqkit.predict(collector, x).logits, reference, **TOL)  # rounding only

    shifted = _Shifted()
    gaussian = SampleCollector(shifted, rows_per_pass=None)
    for _ in range(3):
        with torch.no_grad():
            shifted.linear.weight.add_(0.1)
        gaussian.collect()
    offset, scale = torch.randn(9, 2, dtype=torch.float64), torch.tensor([2.0, 3.0], dtype=torch.float64)
    whole = uqkit.predict(gaussian, x, offset=offset, scale=scale)
    gaussian.rows_per_pass = rows
    sliced = uqkit.predict(gaussian, x, offset=offset, scale=scale)  # offset sliced, scale shared
    torch.testing.assert_close(sliced.sample_mean, whole.sample_mean, **TOL)
    torch.testing.assert_close(sliced.sample_variance, whole.sample_variance, **TOL)
    assert whole.sample_mean.shape == (3, 9, 2)
    with pytest.raises(ValueError, match="rows_per_pass"):
        SampleCollector(shifted, rows_per_pass=0)


def test_a_batch_run_member_by_member_is_not_sliced():
    """Slices bound a folded pass; a batch that the samples' ensemble runs one sample at a time (its rule,
    here met at any size) goes in whole, and gives the loop's logits."""
    _, collector = _filled(4)
    states = [{name: value[index] for name, value in collector.samples().items()} for index in range(4)]
    collector.rows_per_pass = 20
    collector.eval().ensemble.member_by_member_rows = 0
    x = torch.randn(80, 5, dtype=torch.float64)
    calls = []
    handle = collector.ensemble.register_forward_pre_hook(lambda module, args: calls.append(len(args[0])))
    logits = uqkit.predict(collector, x).logits
    handle.remove()
    assert calls == [80]
    torch.testing.assert_close(logits, _loop_logits(states, x), **TOL)
    collector.ensemble.member_by_member_rows = None  # folded: slices of 20 // 4 = 5 examples
    calls.clear()
    handle = collector.ensemble.register_forward_pre_hook(lambda module, args: calls.append(len(args[0])))
    torch.testing.assert_close(uqkit.predict(collector, x).logits, logits, **TOL)
    handle.remove()
    assert calls == [5] * 16


@pytest.mark.usefixtures("one_thread")
def test_hugging_face_model_sampled_and_predicted_in_one_pass(tiny_hf):
    """A model nobody here wrote: SGHMC on a tiny BERT classifier (keyword inputs, an output object with
    .logits, non-persistent position buffers), its samples predicted with uqkit.predict as README shows."""
    torch.manual_seed(0)
    model = tiny_hf.bert(labels=3, dtype=torch.float64)
    optimizer = SGHMC(model.parameters(), lr=0.01, num_data=100, prior_precision=1.0)
    collector = SampleCollector(model, EveryKSteps(2))
    states = []
    for step in range(6):
        inputs = tiny_hf.text(batch=4)
        optimizer.zero_grad()
        F.cross_entropy(model(**inputs).logits, torch.tensor([0, 1, 2, 1])).backward()
        optimizer.step()
        if collector.step(step):
            states.append({k: v.clone() for k, v in model.state_dict().items()})
    inputs = tiny_hf.text(batch=5)
    prediction = uqkit.predict(collector, **inputs)
    assert prediction.logits.shape == (3, 5, 3)
    loop = []
    for state in states:
        member = tiny_hf.bert(labels=3, dtype=torch.float64)
        member.load_state_dict(state)
        with torch.no_grad():
            loop.append(member.eval()(**inputs).logits)
    torch.testing.assert_close(prediction.logits, torch.stack(loop), **TOL)
