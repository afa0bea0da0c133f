"""bayesianize_ with the member-vectorized configs (BatchEnsembleConfig, Rank1Config)."""

import copy

import pytest
import torch
from torch import nn

import uqkit
from uqkit.bench.models import build_model
from uqkit.methods.convert import BatchEnsembleConfig, Rank1Config, bayesianize_
from uqkit.nn import (
    BatchEnsembleConv1d,
    BatchEnsembleConv2d,
    BatchEnsembleLinear,
    Rank1Conv2d,
    Rank1Linear,
    use_posterior_mean,
)
from uqkit.nn.members import Memberwise, with_member_dim

pytestmark = [
    pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN"),
    pytest.mark.usefixtures("one_thread"),
]

BACKBONES = [("mlp", (1, 28, 28)), ("lenet5", (1, 28, 28)), ("cnn1d", (1, 40)), ("resmlp", (2,))]


@pytest.mark.parametrize(("name", "shape"), BACKBONES)
@pytest.mark.parametrize(
    "config",
    [
        BatchEnsembleConfig(num_members=3, fast_weight_init="ones"),
        Rank1Config(3, posterior_scale_init=0.0, fast_weight_init="ones"),
    ],
)
def test_conversion_with_unit_factors_gives_every_member_the_original_function(name, shape, config):
    torch.manual_seed(0)
    original = build_model(name, shape, 5)
    model = copy.deepcopy(original)
    report = bayesianize_(model, config)
    assert not report.skipped
    x = torch.randn(4, *shape)
    out = model(with_member_dim(x, 3, len(shape)))
    assert out.shape == (3, 4, 5)
    expected = original(x)
    for m in range(3):
        torch.testing.assert_close(out[m], expected, rtol=1e-5, atol=1e-5)


def test_converted_lenet_has_the_expected_layers_and_members_differ_with_sign_init():
    torch.manual_seed(1)
    model = build_model("lenet5", (1, 28, 28), 10)
    report = bayesianize_(model, BatchEnsembleConfig(num_members=4))
    kinds = [new for _, _, new in report.converted]
    assert kinds.count("BatchEnsembleConv2d") == 2 and kinds.count("BatchEnsembleLinear") == 3
    assert kinds.count("Memberwise") == 3  # two max-pools and the flatten
    assert isinstance(model[2], Memberwise) and isinstance(model[2].module, nn.MaxPool2d)
    out = model(torch.randn(2, 1, 28, 28))  # starts with a conv: [B, ...] broadcasts
    assert out.shape == (4, 2, 10) and not torch.allclose(out[0], out[1])
    params = sum(p.numel() for p in model.parameters())
    single = sum(p.numel() for p in build_model("lenet5", (1, 28, 28), 10).parameters())
    fast = (1 + 6) + (6 + 16) + (400 + 120) + (120 + 84) + (84 + 10)  # r and s of each layer
    biases = 6 + 16 + 120 + 84 + 10
    assert params - single == 4 * fast + 3 * biases  # 6.6 % of LeNet-5


def test_batch_ensemble_mlp_has_at_most_five_percent_more_parameters():
    model = build_model("mlp", (1, 28, 28), 10)
    single = sum(p.numel() for p in model.parameters())
    bayesianize_(model, BatchEnsembleConfig(num_members=4))
    assert sum(p.numel() for p in model.parameters()) <= 1.05 * single


def test_rank1_conversion_collects_the_kl_and_samples():
    torch.manual_seed(2)
    model = build_model("lenet5", (1, 28, 28), 10)
    bayesianize_(model, Rank1Config(num_members=2))
    layers = [m for m in model.modules() if isinstance(m, (Rank1Linear, Rank1Conv2d))]
    assert len(layers) == 5
    total = sum(layer.kl_divergence() for layer in layers)
    torch.testing.assert_close(uqkit.kl_divergence(model), total)
    x = torch.randn(3, 1, 28, 28)
    assert not torch.equal(model(x), model(x))
    with use_posterior_mean(model):
        assert torch.equal(model(x), model(x))


def test_conv_arguments_and_dtype_carry_over():
    conv = nn.Conv1d(4, 6, 3, stride=2, padding=1, groups=2, bias=False, padding_mode="reflect").double()
    model = nn.Sequential(conv, nn.Flatten())
    bayesianize_(model, BatchEnsembleConfig(num_members=2, fast_weight_init="ones"))
    layer = model[0]
    assert isinstance(layer, BatchEnsembleConv1d) and layer.weight.dtype == torch.float64
    assert (layer.stride, layer.padding, layer.groups, layer.padding_mode, layer.bias) == (
        (2,),
        (1,),
        2,
        "reflect",
        None,
    )
    x = torch.randn(3, 4, 9, dtype=torch.float64)
    torch.testing.assert_close(model(x)[1], conv(x).flatten(1), rtol=1e-12, atol=1e-12)


def test_unsupported_modules_are_reported_and_conversion_is_not_repeated():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.LazyLinear(3))
    report = bayesianize_(model, BatchEnsembleConfig())
    assert [(name, kind) for name, kind, _ in report.skipped] == [("1", "BatchNorm2d"), ("3", "LazyLinear")]
    assert isinstance(model[0], BatchEnsembleConv2d) and isinstance(model[2], Memberwise)
    report = bayesianize_(nn.Sequential(BatchEnsembleLinear(2, 2, 2), nn.Flatten()), Rank1Config())
    assert report.skipped == [("0", "BatchEnsembleLinear", "already a member-vectorized layer")]
    twice = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    bayesianize_(twice, BatchEnsembleConfig())
    with pytest.raises(ValueError, match="nothing to convert"):
        bayesianize_(twice, BatchEnsembleConfig())  # the wrapped Flatten is not wrapped again
    assert isinstance(twice[0].module, nn.Flatten)


def test_config_arguments_are_checked():
    with pytest.raises(ValueError, match="num_members"):
        BatchEnsembleConfig(num_members=0)
    with pytest.raises(ValueError, match="fast_weight_init"):
        BatchEnsembleConfig(fast_weight_init="signs")
    with pytest.raises(TypeError, match="prior"):
        Rank1Config(prior=0.1)
    with pytest.raises(ValueError, match="posterior_scale_init"):
        Rank1Config(posterior_scale_init=-1.0)
