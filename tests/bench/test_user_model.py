"""uqkit.bench.user_model: factories load from a file or a module, and the methods that change an
architecture (MC dropout, MIMO) do it on the factory's model."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from torch import nn

import uqkit
from uqkit.bench.models import build_model
from uqkit.bench.user_model import build_user_model, is_factory_spec, widen_for_members, with_mc_dropout
from uqkit.methods.mimo import MIMO
from uqkit.nn import MCDropout


@pytest.fixture
def factory_file(tmp_path):
    path = tmp_path / "uqkit_test_factories.py"
    path.write_text(
        textwrap.dedent(
            """
            from torch import nn
            CALLS = []
            def net():
                CALLS.append(1)
                return nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Dropout(0.25), nn.Linear(8, 2))
            def plain():
                return nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
            """
        )
    )
    return path


def test_factory_from_a_file_gives_a_fresh_model_per_call(factory_file):
    spec = f"{factory_file}:net"
    assert is_factory_spec(spec) and not is_factory_spec("mlp")
    first, second = build_model(spec, (3,), 2), build_model(spec, (3,), 2)
    assert isinstance(first, nn.Sequential) and first is not second
    assert first[0].weight.data_ptr() != second[0].weight.data_ptr()


def test_factory_from_a_module(monkeypatch, factory_file):
    monkeypatch.syspath_prepend(str(factory_file.parent))
    try:
        assert isinstance(build_user_model("uqkit_test_factories:plain"), nn.Sequential)
    finally:
        sys.modules.pop("uqkit_test_factories", None)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nowhere.py:net", "--model nowhere.py:net: no such file nowhere.py"),
        ("no_such_module_x:net", "cannot import module 'no_such_module_x' (ModuleNotFoundError"),
        ("{file}:missing", "has no attribute 'missing' (callables there: net, plain)"),
        ("{file}:CALLS", "CALLS is a list, not a callable"),
        (":net", "expected MODULE:FACTORY or path/to/file.py:FACTORY"),
    ],
)
def test_factory_problems_name_the_option_and_the_problem(factory_file, spec, message):
    with pytest.raises(ValueError) as error:
        build_user_model(spec.format(file=factory_file))
    assert message in str(error.value)


def test_mc_dropout_keeps_the_models_own_dropout_on(factory_file):
    model = build_model(f"{factory_file}:net", (3,), 2, dropout=lambda: MCDropout(0.1)).eval()
    (dropout,) = [m for m in model.modules() if isinstance(m, MCDropout)]
    assert dropout.p == 0.25 and not any(type(m) is nn.Dropout for m in model.modules())
    x = torch.randn(4, 3)
    assert not torch.equal(model(x), model(x))  # on in eval mode
    with pytest.raises(ValueError, match="this model has none"):
        with_mc_dropout(build_user_model(f"{factory_file}:plain"))


def test_widened_model_is_a_mimo_network_with_independent_heads():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    middle = model[2]
    widened = widen_for_members(model, 3)
    assert widened[0].weight.shape == (8, 9) and widened[4].weight.shape == (6, 8)
    assert widened[2] is middle  # only the first and the last layer change
    mimo = MIMO(widened, 3)
    x = torch.randn(5, 3)
    prediction = uqkit.predict(mimo, x)
    assert prediction.logits.shape == (3, 5, 2)
    # head m is rows m*2..m*2+1 of the widened output on the input tiled to every member
    direct = widened(x.repeat(1, 3)).view(5, 3, 2).transpose(0, 1)
    torch.testing.assert_close(prediction.logits, direct)


def test_widening_a_convolutional_model_and_a_single_layer():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 2))
    widened = widen_for_members(model, 2)
    assert widened[0].in_channels == 2 and widened[0].padding == (1, 1) and widened[3].out_features == 4
    assert widened(torch.randn(3, 2, 5, 5)).shape == (3, 4)
    single = widen_for_members(nn.Linear(3, 2), 2)
    assert (single.in_features, single.out_features) == (6, 4)


def test_widening_refuses_a_model_it_cannot_widen():
    with pytest.raises(
        ValueError, match=r"must be an nn.Linear, nn.Conv1d or nn.Conv2d \(groups=1\), found Embedding"
    ):
        widen_for_members(nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2)), 2)
    with pytest.raises(ValueError, match=r"the model has no nn\.Linear"):
        widen_for_members(nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten()), 2)
