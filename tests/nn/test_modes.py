import pytest
import torch
from torch import nn

from uqkit.nn.modes import evaluation_mode


def _mixed_model() -> nn.Sequential:
    """A model in training whose frozen backbone block is in eval mode: mixed flags to give back."""
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5), nn.Linear(4, 2))
    model.train()
    model[1].eval()
    return model


def test_eval_inside_and_every_flag_restored_afterwards():
    model = _mixed_model()
    before = [module.training for module in model.modules()]
    with evaluation_mode(model) as inside:
        assert inside is model
        assert not any(module.training for module in model.modules())
        x = torch.randn(5, 3)
        assert torch.equal(model(x), model(x))  # dropout off, batch norm on running statistics
    assert [module.training for module in model.modules()] == before
    assert before != [True] * len(before)  # the mixed case: model.train(True) would not restore it


def test_flags_restored_when_the_block_raises():
    model = _mixed_model()
    before = [module.training for module in model.modules()]
    with pytest.raises(RuntimeError, match="inside"), evaluation_mode(model):
        raise RuntimeError("inside")
    assert [module.training for module in model.modules()] == before


def test_gradients_stay_on():
    model = nn.Linear(3, 1)
    with evaluation_mode(model):
        model(torch.randn(2, 3)).sum().backward()
    assert model.weight.grad is not None


def test_rejects_a_non_module():
    with (
        pytest.raises(TypeError, match=r"model: expected a torch\.nn\.Module, got Tensor"),
        evaluation_mode(torch.zeros(1)),
    ):
        pass
