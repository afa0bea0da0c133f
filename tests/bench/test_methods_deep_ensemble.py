"""The benchmark's deep ensemble shuffles every member independently (Lakshminarayanan et al. 2017)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from uqkit import DeepEnsemble
from uqkit.bench.registry import DeepEnsembleMethod, SingleNetwork
from uqkit.bench.trainer import TrainConfig, load_checkpoint, train_method

MEMBERS = 3


def _data(n: int = 80):
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(n, 6, generator=generator, dtype=torch.float64)
    labels = (inputs[:, 0] + inputs[:, 1] > 0).long() + (inputs[:, 2] > 1).long()
    return inputs, labels


def _ensemble() -> DeepEnsembleMethod:
    torch.manual_seed(0)
    network = DeepEnsemble(lambda: nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3)), MEMBERS)
    return DeepEnsembleMethod(network.double())


def _config(seed: int, schedule: str = "cosine") -> TrainConfig:
    return TrainConfig(
        epochs=2, batch_size=32, learning_rate=1e-2, seed=seed, progress=False, schedule=schedule
    )


def test_each_member_gets_its_own_batch_from_its_own_permutation():
    inputs, labels = _data()
    method = _ensemble()
    seen = []
    original = method.training_loss

    def record(x, y):
        seen.append((x.clone(), y.clone()))
        return original(x, y)

    method.training_loss = record
    train_method(method, "ensemble", inputs, labels, inputs[:16], labels[:16], _config(seed=4))
    x, y = seen[0]
    assert x.shape == (MEMBERS, 32, 6) and y.shape == (MEMBERS, 32)
    for a in range(MEMBERS):
        for b in range(a + 1, MEMBERS):
            assert not torch.equal(x[a], x[b])
    # Over an epoch (3 steps: 32 + 32 + 16), every member sees every training example exactly once.
    epoch = torch.cat([batch for batch, _ in seen[:3]], dim=1)  # [M, 80, 6]
    for member in range(MEMBERS):
        rows = epoch[member]
        assert torch.equal(rows[torch.argsort(rows[:, 0])], inputs[torch.argsort(inputs[:, 0])])


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_ensemble_equals_members_trained_alone_with_their_own_shuffles(schedule):
    """Member m of the vectorized ensemble trained with seed s = a single model from the same initial weights
    trained with seed s + m: the same batches, the same Adam steps (float64; only kernels differ)."""
    inputs, labels = _data()
    method = _ensemble()
    initial = method.network.members()
    train_method(method, "ensemble", inputs, labels, inputs[:16], labels[:16], _config(7, schedule))
    trained = method.network.members()
    for member in range(MEMBERS):
        alone = SingleNetwork(copy.deepcopy(initial[member]))
        train_method(alone, "alone", inputs, labels, inputs[:16], labels[:16], _config(7 + member, schedule))
        for key, value in alone.network.state_dict().items():
            expected = trained[member].state_dict()[key]
            assert not torch.allclose(value, initial[member].state_dict()[key]), key  # it did train
            torch.testing.assert_close(expected, value, rtol=1e-9, atol=1e-11, msg=f"member {member} {key}")


class _InterruptError(Exception):
    pass


def test_resumed_ensemble_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    inputs, labels = _data()
    reference = _ensemble()
    train_method(reference, "e", inputs, labels, inputs[:16], labels[:16], _config(3), tmp_path / "ref.pt")

    interrupted = _ensemble()
    original, calls = interrupted.training_loss, {"n": 0}

    def loss_then_interrupt(x, y):
        calls["n"] += 1
        if calls["n"] == 3 + 2:  # epoch 2, step 2
            raise _InterruptError
        return original(x, y)

    interrupted.training_loss = loss_then_interrupt
    with pytest.raises(_InterruptError):
        train_method(
            interrupted, "e", inputs, labels, inputs[:16], labels[:16], _config(3), tmp_path / "run.pt"
        )
    assert len(load_checkpoint(tmp_path / "run.pt")["shuffle_rng"]) == MEMBERS
    torch.manual_seed(12345)  # unrelated global state must not matter
    resumed = _ensemble()
    train_method(resumed, "e", inputs, labels, inputs[:16], labels[:16], _config(3), tmp_path / "run.pt")
    for key, value in reference.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_validation_nlls_are_each_members_own_nll_when_selected_separately():
    inputs, labels = _data()
    method = _ensemble().eval()
    method.select_members_separately = True
    with torch.no_grad():
        prediction = method.predict(inputs)
        expected = [float(nn.functional.cross_entropy(prediction.logits[m], labels)) for m in range(MEMBERS)]
    assert method.validation_nlls(prediction, labels) == pytest.approx(expected, rel=1e-12)


class _ScriptedMembers(DeepEnsembleMethod):
    """Per-member validation NLLs scripted per epoch (``script[epoch][member]``), selected separately."""

    select_members_separately = True

    def __init__(self, script: list[list[float]]) -> None:
        super().__init__(_ensemble().network)
        self.script, self.calls = script, 0

    def validation_nlls(self, prediction, labels):
        self.calls += 1
        return self.script[self.calls - 1]


def _train_scripted(script: list[list[float]]) -> tuple[DeepEnsembleMethod, list[int]]:
    inputs, labels = _data()
    method = _ScriptedMembers(script)
    config = TrainConfig(epochs=len(script), batch_size=32, learning_rate=1e-2, seed=1, progress=False)
    result = train_method(method, "ensemble", inputs, labels, inputs[:16], labels[:16], config)
    return method, result.selected_epochs


def test_each_member_ends_with_its_own_best_epoch():
    # member 0 best at epoch 1, member 1 at epoch 3, member 2 at epoch 2
    method, selected = _train_scripted([[0.1, 0.9, 0.8], [0.2, 0.8, 0.3], [0.3, 0.7, 0.4]])
    assert selected == [1, 3, 2]
    # Members are independent (own parameters, own batches, per-element Adam), so member m's weights after
    # epoch e equal those of a constant-rate run of e epochs whose last epoch is every member's best.
    after = {
        epochs: _train_scripted([[1.0 - e / 10] * MEMBERS for e in range(epochs)])[0] for epochs in (1, 2, 3)
    }
    for member, epoch in enumerate(selected):
        got, want = method.part_state(member), after[epoch].part_state(member)
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=0)
    # keeping the last epoch instead would fail: member 0's epoch-3 weights differ from its epoch-1 weights
    assert any(
        not torch.equal(after[3].part_state(0)[key], after[1].part_state(0)[key])
        for key in after[1].part_state(0)
    )


def test_part_states_round_trip_through_load_part_states():
    method = _ensemble()
    method.select_members_separately = True
    states = [method.part_state(m) for m in range(MEMBERS)]
    other = _ensemble()
    other.select_members_separately = True
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(1.0)
    other.load_part_states(states)
    for key, value in method.state_dict().items():
        assert torch.equal(value, other.state_dict()[key]), key


def test_by_default_the_ensemble_is_selected_as_a_whole_on_its_predictive_nll():
    inputs, labels = _data()
    method = _ensemble().eval()
    with torch.no_grad():
        prediction = method.predict(inputs)
    expected = float(-prediction.log_probs.gather(1, labels.unsqueeze(1)).double().mean())
    members = [float(nn.functional.cross_entropy(prediction.logits[m], labels)) for m in range(MEMBERS)]
    assert method.validation_nlls(prediction, labels) == pytest.approx([expected], rel=1e-12)
    # the mixture's NLL, not a member's nor their mean (Jensen: below the mean for members that differ)
    assert expected < sum(members) / MEMBERS
    assert all(abs(expected - member) > 1e-3 for member in members)
