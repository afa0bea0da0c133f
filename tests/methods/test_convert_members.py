"""bayesianize_ with the member-vectorized configs (BatchEnsembleConfig, Rank1Config)."""

import copy
import dataclasses
import math

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
from uqkit.nn.members import num_members, unfold_members

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
    out = unfold_members(model(x), 3)  # called as the original: [B, ...] in, [M * B, C] out
    assert out.shape == (3, 4, 5)
    expected = original(x)
    for m in range(3):
        torch.testing.assert_close(out[m], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config", [BatchEnsembleConfig(), Rank1Config()], ids=["batchensemble", "rank1"])
def test_default_conversion_keeps_the_pretrained_function_and_members_differ(config):
    """With the default ``N(1, 0.1^2)`` factors every member stays near the original function.

    For one layer with ``r, s ~ N(1, sigma^2)``, ``y_m - y = sigma (delta * W x + W (eps * x)) + O(sigma^2)``:
    relative mean-square change ``sigma^2 (1 + sum W^2 x^2 / |W x|^2)``, about ``2 sigma^2`` for generic
    weights; over ``L`` layers the changes add, ``2 L sigma^2``. A rank-1 member also samples its factors,
    ``sigma^2 = 0.1^2 + 0.0316^2``. The test allows twice the resulting RMS, ``2 sqrt(2 L) sigma`` (0.51 for
    the MLP's three layers); random signs change the output by more than its whole size (relative change
    above 1: the signs flip on both sides of every ReLU), and so fail it.
    """
    torch.manual_seed(3)
    original = build_model("mlp", (1, 28, 28), 10)
    x = torch.randn(256, 1, 28, 28)
    with torch.no_grad():
        expected = original(x)
    sigma = math.hypot(0.1, getattr(config, "posterior_scale_init", 0.0))
    bound = 2 * math.sqrt(2 * 3) * sigma
    for explicit, keeps in (({}, True), ({"fast_weight_init": "random_sign"}, False)):
        model = copy.deepcopy(original)
        bayesianize_(model, dataclasses.replace(config, **explicit))
        with torch.no_grad():
            out = unfold_members(model(x), config.num_members)
        change = [float((out[m] - expected).norm() / expected.norm()) for m in range(config.num_members)]
        assert all(c < bound for c in change) == keeps, (explicit, change, bound)
        if keeps:  # and the members differ from each other: 4 independent draws, not one function
            assert all(c > 0.1 * bound for c in change), change
            assert not torch.allclose(out[0], out[1], rtol=0, atol=0.01 * float(expected.abs().mean()))


def test_fast_weight_inits_of_the_configs():
    """Default ``N(1, 0.1^2)`` fast weights and factor means (mean and std within 5 standard errors);
    ``"random_sign"`` passed explicitly still gives entries exactly ``+-1``, about half of each."""
    torch.manual_seed(4)
    for config, names in ((BatchEnsembleConfig, ("r", "s")), (Rank1Config, ("r_mean", "s_mean"))):
        model = nn.Sequential(nn.Linear(300, 200))
        bayesianize_(model, config())
        values = torch.cat([getattr(model[0], name).detach().flatten() for name in names])
        n = values.numel()
        assert abs(float(values.mean()) - 1.0) < 5 * 0.1 / math.sqrt(n)
        assert abs(float(values.std()) - 0.1) < 5 * 0.1 / math.sqrt(2 * n)
        model = nn.Sequential(nn.Linear(300, 200))
        bayesianize_(model, config(fast_weight_init="random_sign"))
        values = torch.cat([getattr(model[0], name).detach().flatten() for name in names])
        assert set(values.unique().tolist()) == {-1.0, 1.0}
        assert abs(float(values.mean())) < 5 / math.sqrt(values.numel())


def test_converted_lenet_has_the_expected_layers_and_members_differ_with_sign_init():
    torch.manual_seed(1)
    model = build_model("lenet5", (1, 28, 28), 10)
    report = bayesianize_(model, BatchEnsembleConfig(num_members=4, fast_weight_init="random_sign"))
    kinds = [new for _, _, new in report.converted]
    assert kinds.count("BatchEnsembleConv2d") == 2 and kinds.count("BatchEnsembleLinear") == 3
    assert len(kinds) == 5 and isinstance(model[2], nn.MaxPool2d)  # parameter-free layers stay as they are
    assert num_members(model) == 4
    out = unfold_members(model(torch.randn(2, 1, 28, 28)), 4)
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
    out = unfold_members(model(x), 2)
    torch.testing.assert_close(out[1], conv(x).flatten(1), rtol=1e-12, atol=1e-12)


def test_unsupported_modules_are_reported_and_conversion_is_not_repeated():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.LazyLinear(3))
    report = bayesianize_(model, BatchEnsembleConfig())
    assert [(name, kind) for name, kind, _ in report.skipped] == [("1", "BatchNorm2d"), ("3", "LazyLinear")]
    assert isinstance(model[0], BatchEnsembleConv2d) and isinstance(model[2], nn.Flatten)
    with pytest.raises(ValueError, match="already a member-vectorized layer"):
        bayesianize_(nn.Sequential(BatchEnsembleLinear(2, 2, 2), nn.Flatten()), Rank1Config())
    twice = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    bayesianize_(twice, BatchEnsembleConfig())
    with pytest.raises(ValueError, match="nothing to convert"):
        bayesianize_(twice, BatchEnsembleConfig())
    assert len(twice._forward_pre_hooks) == 1  # one tiling hook, installed once


def test_config_arguments_are_checked():
    with pytest.raises(ValueError, match="num_members"):
        BatchEnsembleConfig(num_members=0)
    with pytest.raises(ValueError, match="fast_weight_init"):
        BatchEnsembleConfig(fast_weight_init="signs")
    with pytest.raises(TypeError, match="prior"):
        Rank1Config(prior=0.1)
    with pytest.raises(ValueError, match="posterior_scale_init"):
        Rank1Config(posterior_scale_init=-1.0)
