"""The trainer: golden losses, determinism, learning-rate schedule, non-finite losses, checkpoints, resume."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
from torch import nn

from uqkit.bench._atomic import CorruptFileError
from uqkit.bench.registry import SingleNetwork
from uqkit.bench.trainer import (
    NonFiniteLossError,
    TrainConfig,
    atomic_torch_save,
    learning_rate_factor,
    load_checkpoint,
    train_method,
)


def _data(seed: int = 0, n: int = 96):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, 8, generator=generator)
    labels = (inputs[:, 0] + inputs[:, 1] > 0).long() + (inputs[:, 2] > 1).long()
    return inputs, labels


def _method(dropout: bool = True) -> SingleNetwork:
    layers = [nn.Linear(8, 16), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(0.3))
    layers.append(nn.Linear(16, 3))
    return SingleNetwork(nn.Sequential(*layers))


def _train(epochs: int = 3, checkpoint=None, method=None, seed: int = 0, schedule: str = "constant"):
    """Train ``method`` (by default a fresh one, built right after seeding torch's global generator)."""
    inputs, labels = _data()
    if method is None:
        torch.manual_seed(seed)
        method = _method()
    config = TrainConfig(
        epochs=epochs, batch_size=32, learning_rate=1e-2, seed=seed, progress=False, schedule=schedule
    )
    result = train_method(method, "toy", inputs, labels, inputs[:32], labels[:32], config, checkpoint)
    return method, result


# Recorded once from this implementation (torch 2.13.0, CPU, seed 0): the first epochs' mean training losses.
# A change to seeding, batch order, initialisation or the optimiser step changes them.
GOLDEN_EPOCH_LOSSES = [1.1628049612045288, 1.0691746870676677, 1.0080397526423137]


def test_golden_losses_of_the_first_epochs():
    _, result = _train(epochs=3)
    losses = [entry["train_loss"] for entry in result.history]
    assert losses == pytest.approx(GOLDEN_EPOCH_LOSSES, rel=1e-5)


def test_same_seed_same_weights_different_seed_different_weights():
    first, _ = _train(seed=0)
    second, _ = _train(seed=0)
    third, _ = _train(seed=1)
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key])
    assert not torch.equal(first.network[0].weight, third.network[0].weight)


class _FailingLoss(SingleNetwork):
    """Loss turns NaN at the 5th call: epoch 2, step 2 with 3 steps per epoch."""

    def __init__(self) -> None:
        super().__init__(nn.Linear(8, 3))
        self.calls = 0

    def training_loss(self, inputs, labels):
        self.calls += 1
        loss = super().training_loss(inputs, labels)
        return loss * float("nan") if self.calls == 5 else loss


def test_non_finite_loss_names_method_epoch_and_step():
    inputs, labels = _data()
    config = TrainConfig(epochs=3, batch_size=32, learning_rate=1e-2, progress=False)
    with pytest.raises(NonFiniteLossError, match=r"method 'toy'.*nan.*epoch 2, step 2"):
        train_method(_FailingLoss(), "toy", inputs, labels, inputs, labels, config)


class _InterruptError(Exception):
    pass


def _interrupt_in_epoch_3(method):
    """``method`` whose loss raises at step 2 of epoch 3 (3 steps an epoch: two epochs checkpointed)."""
    original_loss = method.training_loss
    calls = {"n": 0}

    def loss_then_interrupt(inputs, labels):
        calls["n"] += 1
        if calls["n"] == 2 * 3 + 2:
            raise _InterruptError
        return original_loss(inputs, labels)

    method.training_loss = loss_then_interrupt
    return method


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_resume_from_epoch_checkpoint_reproduces_uninterrupted_training(tmp_path, schedule):
    reference, reference_result = _train(epochs=3, checkpoint=tmp_path / "reference.pt", schedule=schedule)

    # Interrupt during epoch 3 (after two complete epochs were checkpointed).
    torch.manual_seed(0)
    interrupted = _interrupt_in_epoch_3(_method())
    with pytest.raises(_InterruptError):
        _train(epochs=3, checkpoint=tmp_path / "run.pt", method=interrupted, schedule=schedule)
    assert load_checkpoint(tmp_path / "run.pt")["epoch"] == 2

    # A fresh process would rebuild the method from the seed and resume from the checkpoint.
    torch.random.manual_seed(12345)  # unrelated global state must not matter: the checkpoint restores it
    resumed, resumed_result = _train(
        epochs=3, checkpoint=tmp_path / "run.pt", method=_method(), schedule=schedule
    )
    for key, value in reference.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    strip = [{k: v for k, v in h.items() if k != "time_s"} for h in reference_result.history]
    assert strip == [{k: v for k, v in h.items() if k != "time_s"} for h in resumed_result.history]


def test_resume_with_another_schedule_names_the_checkpoint(tmp_path):
    _train(epochs=1, checkpoint=tmp_path / "run.pt", schedule="constant")
    with pytest.raises(ValueError, match=r"run\.pt.*'constant'.*'cosine'"):
        _train(epochs=2, checkpoint=tmp_path / "run.pt", schedule="cosine")


def test_cosine_factor_closed_form_and_unknown_schedule():
    assert learning_rate_factor("cosine", 0, 100) == 1.0
    assert learning_rate_factor("cosine", 50, 100) == pytest.approx(0.5, abs=1e-15)
    assert learning_rate_factor("cosine", 99, 100) == pytest.approx((1 + math.cos(math.pi * 0.99)) / 2)
    assert learning_rate_factor("constant", 99, 100) == 1.0
    with pytest.raises(ValueError, match=r"schedule: expected one of cosine, constant, got 'linear'"):
        learning_rate_factor("linear", 0, 1)
    with pytest.raises(ValueError, match="schedule"):
        _train(epochs=1, schedule="linear")


def test_cosine_schedule_equals_torch_cosine_annealing_per_step():
    """Oracle: a plain loop over the trainer's batches with ``torch.optim.lr_scheduler.CosineAnnealingLR``
    (``T_max`` = all steps, ``eta_min = 0``, stepped after every batch), in float64 without dropout."""
    inputs, labels = _data()
    inputs = inputs.double()
    torch.manual_seed(0)
    method = _method(dropout=False).double()
    plain = SingleNetwork(pickle.loads(pickle.dumps(method.network)))
    epochs, batch = 3, 32
    config = TrainConfig(epochs, batch, learning_rate=1e-2, seed=5, progress=False, schedule="cosine")
    train_method(method, "toy", inputs, labels, inputs[:32], labels[:32], config)

    optimizer = torch.optim.Adam(plain.parameters(), lr=1e-2)
    steps = epochs * math.ceil(len(labels) / batch)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=0.0)
    shuffle = torch.Generator().manual_seed(5)
    for _ in range(epochs):
        for index in torch.randperm(len(labels), generator=shuffle).split(batch):
            optimizer.zero_grad()
            plain.training_loss(inputs[index], labels[index]).backward()
            optimizer.step()
            scheduler.step()
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(method.state_dict()[key], value, rtol=1e-10, atol=1e-12, msg=key)
    # The schedule matters: the same run at a constant learning rate ends elsewhere.
    constant = SingleNetwork(pickle.loads(pickle.dumps(plain.network)))
    config = TrainConfig(epochs, batch, learning_rate=1e-2, seed=5, progress=False, schedule="constant")
    train_method(constant, "toy", inputs, labels, inputs[:32], labels[:32], config)
    assert not torch.allclose(constant.network[0].weight, method.network[0].weight, atol=1e-3)


def test_history_records_validation_ece():
    _, result = _train(epochs=2)
    assert all(0.0 <= entry["val_ece"] <= 1.0 for entry in result.history)


def test_atomic_save_leaves_previous_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    atomic_torch_save({"epoch": 1, "w": torch.ones(3)}, path)

    def broken_save(obj, handle):
        handle.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    state = load_checkpoint(path)
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary file left behind


class _NotATensor:
    pass


def test_checkpoints_load_with_weights_only(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"payload": _NotATensor()}, path)
    # torch's restricted unpickler refuses the class (nothing is constructed); the error names the file
    with pytest.raises(CorruptFileError, match=r"evil\.pt: unreadable.*Unsupported global"):
        load_checkpoint(path)


def test_a_method_with_its_own_schedule_trains_with_it_and_records_it():
    from dataclasses import replace

    from uqkit.bench.methods_distance import SNGP_SCHEDULE, SNGPClassifier
    from uqkit.bench.runner import _method_train_config

    task_config = TrainConfig(epochs=1, batch_size=8, learning_rate=1e-3, schedule="cosine")
    plain = SingleNetwork(nn.Linear(2, 3))
    assert _method_train_config(plain, task_config) is task_config
    assert SNGPClassifier.learning_rate_schedule == SNGP_SCHEDULE == "constant"
    own = SingleNetwork(nn.Linear(2, 3))
    own.learning_rate_schedule = "constant"
    assert _method_train_config(own, task_config) == replace(task_config, schedule="constant")


class _ScriptedValidation(SingleNetwork):
    """A network whose validation NLL per epoch is scripted, so that the best epoch is known in advance."""

    def __init__(self, nlls: list[float]) -> None:
        super().__init__(_method().network)
        self.nlls, self.calls = nlls, 0

    def validation_nlls(self, prediction, labels):
        self.calls += 1
        return [self.nlls[self.calls - 1]]


def _scripted(nlls: list[float]) -> _ScriptedValidation:
    torch.manual_seed(0)
    return _ScriptedValidation(nlls)


def _state_after(epochs: int) -> dict[str, torch.Tensor]:
    """The weights after ``epochs`` epochs of a constant-rate run (whose last epoch is its best)."""
    method, _ = _train(epochs=epochs, method=_scripted([3.0, 2.0, 1.0][:epochs]))
    return method.state_dict()


@pytest.mark.parametrize(("nlls", "best"), [([0.5, 0.3, 0.4], 2), ([0.2, 0.3, 0.4], 1), ([0.5, 0.4, 0.3], 3)])
def test_training_ends_with_the_epoch_of_lowest_validation_nll(nlls, best):
    method, result = _train(epochs=3, method=_scripted(nlls))
    assert result.selected_epochs == [best]
    expected = _state_after(best)  # the same arithmetic, stopped after that epoch
    for key, value in method.state_dict().items():
        assert torch.equal(value, expected[key]), key
    if best != 3:  # the last epoch's weights differ, so keeping them would fail the check above
        assert not torch.equal(method.network[0].weight, _state_after(3)["network.0.weight"])


def test_non_finite_validation_nll_is_never_selected():
    _, result = _train(epochs=3, method=_scripted([0.5, float("nan"), 0.6]))
    assert result.selected_epochs == [1]


def test_resume_keeps_the_best_epoch_seen_before_the_interruption(tmp_path):
    """Best at epoch 1, interrupted in epoch 3: the resumed run must end with epoch 1's weights, which only
    the checkpoint still holds."""
    interrupted = _interrupt_in_epoch_3(_scripted([0.2, 0.5, 0.6]))
    with pytest.raises(_InterruptError):
        _train(epochs=3, checkpoint=tmp_path / "run.pt", method=interrupted)
    resumed = _scripted([0.2, 0.5, 0.6])
    resumed.calls = 2  # a fresh process: the scripted NLLs continue at epoch 3
    method, result = _train(epochs=3, checkpoint=tmp_path / "run.pt", method=resumed)
    assert result.selected_epochs == [1]
    expected = _state_after(1)
    for key, value in method.state_dict().items():
        assert torch.equal(value, expected[key]), key


class _TwoOrders(SingleNetwork):
    """Two batch orders, each on its own data (``order_rows``: rows 1 and 0 of the data), scored by itself
    every 2 epochs with scripted part NLLs, its loss non-finite from the second epoch on
    (``independent_parts``)."""

    order_rows = torch.tensor([1, 0])
    num_batch_orders = 2
    validation_every = 2
    independent_parts = True

    def __init__(self, part_nlls: list[list[float]]) -> None:
        super().__init__(nn.Linear(1, 1))
        self.part_nlls, self.scored = part_nlls, 0
        self.seen: list[list[torch.Tensor]] = [[], []]
        self.ended: list[int] = []

    def draw_batch_orders(self, num_examples: int, generators: list[torch.Generator]) -> torch.Tensor:
        return torch.rand(2, num_examples, generator=generators[1]).argsort(dim=1)

    def training_loss(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        for order in range(2):
            self.seen[order].append(inputs[order].flatten())
        loss = (self.network(inputs) - labels).square().mean()
        return loss * float("nan") if self.ended else loss

    def score_validation(self, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[dict, list[float]]:
        self.scored += 1
        nlls = self.part_nlls[self.scored - 1]
        return {"val_nll": min(nlls)}, nlls

    def on_epoch_end(self, epoch: int, num_epochs: int) -> None:
        self.ended.append(epoch)


def test_order_rows_own_orders_validation_schedule_and_independent_parts():
    """Order j's batches come from row order_rows[j] of the [2, N, 1] data, in the method's own order; it is
    scored after epochs 2, 4 and 5 (every 2, and the last), each part ends at its lowest NLL (a part never
    finite at the first scored epoch, with NLL inf); a NaN loss does not stop it."""
    rows = torch.stack([torch.arange(10.0), torch.arange(100.0, 110.0)]).unsqueeze(-1)
    torch.manual_seed(0)
    method = _TwoOrders([[5.0, math.nan], [3.0, math.inf], [4.0, math.nan]])
    config = TrainConfig(epochs=5, batch_size=4, learning_rate=1e-2, seed=3, progress=False)
    result = train_method(method, "two", rows, rows, rows[:, :3], rows[:, :3], config)
    for order in range(2):
        seen = torch.cat(method.seen[order])
        assert len(seen) == 50 and set(seen.tolist()) == set(rows[1 - order].flatten().tolist())
    expected = torch.rand(2, 10, generator=torch.Generator().manual_seed(3 + 1)).argsort(dim=1)
    assert torch.equal(torch.cat(method.seen[0][:3]), rows[1, expected[0], 0])  # the method's own order
    assert method.ended == [1, 2, 3, 4, 5]
    assert [("val_nll" in entry) for entry in result.history] == [False, True, False, True, True]
    assert result.selected_epochs == [4, 2] and result.selected_nlls == [3.0, math.inf]
    with pytest.raises(ValueError, match="order_rows"):
        train_method(_TwoOrders([]), "two", rows[:1], rows[:1], rows[:1], rows[:1], config)  # no row 1
