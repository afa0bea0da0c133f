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
