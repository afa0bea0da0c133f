"""BatchEnsemble layers (uqkit/nn/batchensemble.py) against M ordinary layers with weights W * (s r^T)."""

import copy
import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from uqkit.nn import BatchEnsembleConv1d, BatchEnsembleConv2d, BatchEnsembleLinear
from uqkit.nn.batchensemble import _MemberBase
from uqkit.nn.members import fold_members, tile_inputs, tile_members, unfold_members

pytestmark = [
    pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN"),
    pytest.mark.usefixtures("one_thread"),
]


def run(layer: nn.Module, x: torch.Tensor, member_input: bool) -> torch.Tensor:
    """``[M, B, ...]`` outputs of a layer fed ``[M, B, ...]`` (one batch per member, folded into the batch) or
    ``[B, ...]`` (tiled to the members as a converted model tiles its inputs)."""
    members = layer.num_members if hasattr(layer, "num_members") else layer[0].num_members
    folded = fold_members(x) if member_input else tile_inputs((x,), {}, members)[0][0]
    out = layer(folded)
    assert out.shape[0] == folded.shape[0]
    return unfold_members(out, members)


def _randomize(layer: nn.Module) -> None:
    """Fast weights away from +-1 so that a swapped or missing factor changes the output."""
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()


def member_linear(layer: BatchEnsembleLinear, m: int) -> nn.Linear:
    """The ordinary nn.Linear of member m: weight[o, i] = W[o, i] * s[m, o] * r[m, i]."""
    twin = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, dtype=torch.float64)
    with torch.no_grad():
        twin.weight.copy_(layer.weight * torch.outer(layer.s[m], layer.r[m]))
        if layer.bias is not None:
            twin.bias.copy_(layer.bias[m])
    return twin


def member_conv(layer, m: int, twin_cls):
    """The ordinary conv of member m: kernel entry [o, j] times s[m, o] * r[m, input channel of (o, j)]."""
    twin = twin_cls(
        layer.in_channels,
        layer.out_channels,
        layer.kernel_size,
        stride=layer.stride,
        padding=layer.padding,
        dilation=layer.dilation,
        groups=layer.groups,
        bias=layer.bias is not None,
        padding_mode=layer.padding_mode,
        dtype=torch.float64,
    )
    weight = layer.weight.detach().clone()
    out_per_group = layer.out_channels // layer.groups
    in_per_group = layer.in_channels // layer.groups
    for o in range(layer.out_channels):
        group = o // out_per_group
        for j in range(in_per_group):
            weight[o, j] *= layer.s[m, o] * layer.r[m, group * in_per_group + j]
    with torch.no_grad():
        twin.weight.copy_(weight)
        if layer.bias is not None:
            twin.bias.copy_(layer.bias[m])
    return twin


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("member_input", [True, False])
def test_linear_equals_member_layers_with_rank1_scaled_weights(bias, member_input):
    torch.manual_seed(0)
    layer = BatchEnsembleLinear(6, 4, num_members=3, bias=bias, dtype=torch.float64)
    _randomize(layer)
    x = torch.randn(3, 5, 6, dtype=torch.float64) if member_input else torch.randn(5, 6, dtype=torch.float64)
    out = run(layer, x, member_input)
    assert out.shape == (3, 5, 4)
    for m in range(3):
        expected = member_linear(layer, m)(x[m] if member_input else x)
        torch.testing.assert_close(out[m], expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.member_weights()[1], member_linear(layer, 1).weight, rtol=0, atol=1e-14)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("per_example", [False, True])
def test_linear_short_path_equals_the_general_combine(bias, per_example):
    # MemberLinearBase._combine runs [M, B, in] inputs in six ops; _MemberBase._combine handles any shape
    torch.manual_seed(9)
    layer = BatchEnsembleLinear(6, 4, num_members=3, bias=bias, dtype=torch.float64)
    _randomize(layer)
    x = torch.randn(3, 5, 6, dtype=torch.float64, requires_grad=True)
    r, s = layer.r, layer.s
    if per_example:  # the rank-1 layers' per-example factor samples
        r = torch.randn(3, 5, 6, dtype=torch.float64, requires_grad=True)
        s = torch.randn(3, 5, 4, dtype=torch.float64, requires_grad=True)
    inputs = [x, r, s, layer.weight] + ([layer.bias] if bias else [])
    outputs, grads = [], []
    for combine in (layer._combine, partial(_MemberBase._combine, layer)):
        out = combine(x, r, s)
        outputs.append(out)
        grads.append(torch.autograd.grad(out.sin().sum(), inputs))
    assert outputs[0].shape == (15, 4)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-12, atol=1e-12)
    for short, general in zip(*grads, strict=True):
        torch.testing.assert_close(short, general, rtol=1e-12, atol=1e-12)
    # a [M * B, T, in] input takes the general path: each position of member m's examples uses member m
    tokens = torch.randn(3 * 2, 5, 6, dtype=torch.float64)
    out = unfold_members(layer(tokens), 3)
    for m in range(3):
        expected = member_linear(layer, m)(tokens[2 * m : 2 * m + 2])
        torch.testing.assert_close(out[m], expected, rtol=1e-12, atol=1e-12)


CONV_CASES = [
    (BatchEnsembleConv2d, nn.Conv2d, (4, 6, (3, 2)), {}, (2, 4, 7, 6)),
    (
        BatchEnsembleConv2d,
        nn.Conv2d,
        (4, 6, 3),
        {"stride": (2, 1), "padding": (1, 2), "dilation": (1, 2)},
        (2, 4, 9, 8),
    ),
    (
        BatchEnsembleConv2d,
        nn.Conv2d,
        (4, 6, 3),
        {"groups": 2, "bias": False, "padding": "same"},
        (2, 4, 6, 6),
    ),
    (BatchEnsembleConv2d, nn.Conv2d, (2, 4, 3), {"padding": 1, "padding_mode": "reflect"}, (3, 2, 5, 5)),
    (BatchEnsembleConv1d, nn.Conv1d, (4, 2, 5), {"stride": 2, "padding": 2, "groups": 2}, (2, 4, 11)),
    (BatchEnsembleConv1d, nn.Conv1d, (3, 4, 3), {"padding_mode": "circular", "padding": 1}, (2, 3, 8)),
]


@pytest.mark.parametrize(("cls", "twin_cls", "args", "kwargs", "shape"), CONV_CASES)
@pytest.mark.parametrize("member_input", [True, False])
def test_conv_equals_member_convs_with_channel_scaled_kernels(
    cls, twin_cls, args, kwargs, shape, member_input
):
    torch.manual_seed(1)
    members = 3
    layer = cls(*args, members, **kwargs, dtype=torch.float64)
    _randomize(layer)
    x = (
        torch.randn(members, *shape, dtype=torch.float64)
        if member_input
        else torch.randn(shape, dtype=torch.float64)
    )
    out = run(layer, x, member_input)
    for m in range(members):
        expected = member_conv(layer, m, twin_cls)(x[m] if member_input else x)
        assert out[m].shape == expected.shape
        torch.testing.assert_close(out[m], expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        layer.member_weights()[2], member_conv(layer, 2, twin_cls).weight, rtol=0, atol=1e-14
    )


@pytest.mark.parametrize(
    ("layer", "shape"),
    [
        (lambda: BatchEnsembleConv2d(3, 5, 3, num_members=4, padding=1), (6, 3, 8, 8)),
        (lambda: BatchEnsembleConv1d(1, 4, 3, num_members=3, padding_mode="reflect", padding=1), (5, 1, 9)),
        (lambda: BatchEnsembleLinear(7, 4, num_members=2), (6, 7)),
    ],
)
def test_tiled_input_equals_explicitly_repeated_input_with_gradients(layer, shape):
    # an input known to be a tile takes the side-by-side-weights path, a plain repeat the scaled-input path
    torch.manual_seed(2)
    layer = layer().double()
    _randomize(layer)
    x = torch.randn(shape, dtype=torch.float64)
    tiled = tile_inputs((x,), {}, layer.num_members)[0][0]
    repeated = tile_members(x, layer.num_members)
    outputs, grads = [], []
    for inputs in (tiled, repeated):
        out = layer(inputs)
        outputs.append(out)
        grads.append(torch.autograd.grad(out.sin().sum(), list(layer.parameters())))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-12, atol=1e-12)
    for shared, explicit in zip(*grads, strict=True):
        torch.testing.assert_close(shared, explicit, rtol=1e-12, atol=1e-12)


def test_sign_init_gives_only_plus_minus_one_with_half_probability_each():
    torch.manual_seed(3)
    layer = BatchEnsembleLinear(500, 400, num_members=4)
    for factor in (layer.r, layer.s):
        assert set(factor.unique().tolist()) == {-1.0, 1.0}
    signs = torch.cat([layer.r.flatten(), layer.s.flatten()]).detach()
    # mean of n fair +-1 signs has standard deviation 1/sqrt(n); allow 5 of them
    assert abs(float(signs.mean())) < 5 / math.sqrt(signs.numel())
    # members start different: the fraction of agreeing signs between two members is ~ 1/2
    agree = float((layer.r[0] == layer.r[1]).double().mean())
    assert abs(agree - 0.5) < 5 * 0.5 / math.sqrt(500)


def test_other_fast_weight_inits():
    torch.manual_seed(4)
    normal = BatchEnsembleLinear(1000, 1000, num_members=4, fast_weight_init="normal", fast_weight_std=0.5)
    values = torch.cat([normal.r.flatten(), normal.s.flatten()]).detach()
    n = values.numel()
    assert abs(float(values.mean()) - 1.0) < 5 * 0.5 / math.sqrt(n)
    assert abs(float(values.std()) - 0.5) < 5 * 0.5 / math.sqrt(2 * n)
    ones = BatchEnsembleLinear(3, 2, num_members=2, fast_weight_init="ones")
    x = torch.randn(4, 3)
    out = run(ones, x, member_input=False)
    torch.testing.assert_close(out[0] - ones.bias[0], out[1] - ones.bias[1], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out[0], F.linear(x, ones.weight, ones.bias[0]), rtol=1e-6, atol=1e-6)


@torch.no_grad()
def test_shared_weight_and_bias_initialised_like_the_torch_twin():
    torch.manual_seed(5)
    layer = BatchEnsembleLinear(400, 300, num_members=4)
    bound = 1 / math.sqrt(400)  # kaiming_uniform(a=sqrt(5)) and the bias both give U(-1/sqrt(fan_in), ...)
    assert float(layer.weight.abs().max()) <= bound and float(layer.weight.abs().max()) > 0.99 * bound
    assert float(layer.bias.abs().max()) <= bound
    assert not torch.equal(layer.bias[0], layer.bias[1])  # each member draws its own bias


def test_parameter_overhead_is_small():
    layer = BatchEnsembleLinear(784, 512, num_members=4)
    extra = sum(p.numel() for p in layer.parameters()) - sum(
        p.numel() for p in nn.Linear(784, 512).parameters()
    )
    assert extra == 4 * (784 + 512) + 3 * 512


def test_gradients_reach_shared_and_fast_weights():
    torch.manual_seed(6)
    layer = BatchEnsembleConv2d(2, 3, 3, num_members=2)
    layer(torch.randn(4, 2, 5, 5)).square().sum().backward()  # [M * B] = [2 * 2]
    for name, p in layer.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), name


def test_state_dict_deepcopy_and_sequential():
    torch.manual_seed(7)
    model = nn.Sequential(
        BatchEnsembleConv2d(1, 4, 3, num_members=3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        BatchEnsembleLinear(4 * 3 * 3, 5, num_members=3),
    )
    x = torch.randn(2, 1, 8, 8)
    out = run(model, x, member_input=False)
    assert out.shape == (3, 2, 5)
    member = 1
    conv = member_conv(model[0], member, nn.Conv2d).float()
    linear = member_linear(model[4], member).float()
    loop = linear(F.max_pool2d(F.relu(conv(x)), 2).flatten(1))
    torch.testing.assert_close(out[member], loop, rtol=1e-5, atol=1e-5)

    clone = copy.deepcopy(model)
    torch.testing.assert_close(run(clone, x, False), out, rtol=0, atol=0)
    fresh = nn.Sequential(
        BatchEnsembleConv2d(1, 4, 3, num_members=3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        BatchEnsembleLinear(4 * 3 * 3, 5, num_members=3),
    )
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(run(fresh, x, False), out, rtol=0, atol=0)
    assert model.double()(tile_members(x.double(), 3)).dtype == torch.float64


@pytest.mark.parametrize(
    ("build", "x", "error", "match"),
    [
        (lambda: BatchEnsembleLinear(3, 2, num_members=0), None, ValueError, "num_members"),
        (lambda: BatchEnsembleLinear(3, 2, 2, fast_weight_init="sign"), None, ValueError, "fast_weight_init"),
        (lambda: BatchEnsembleConv2d(3, 4, 3, 2, groups=2), None, ValueError, "groups: expected a divisor"),
        (lambda: BatchEnsembleLinear(3, 2, 2), torch.randn(4, 5), ValueError, "in_features last"),
        (
            lambda: BatchEnsembleLinear(3, 2, 4),
            torch.randn(10, 3),
            ValueError,
            "expected a multiple of M = 4 rows",
        ),
        (lambda: BatchEnsembleLinear(3, 2, 2), torch.ones(4, 3, dtype=torch.long), TypeError, "floating"),
        (lambda: BatchEnsembleConv2d(3, 4, 3, 2), torch.randn(2, 2, 5, 5), ValueError, "\\[M \\* B, 3, 2"),
    ],
)
def test_bad_arguments_are_rejected_with_clear_messages(build, x, error, match):
    with pytest.raises(error, match=match):
        layer = build()
        layer(x)


@pytest.mark.compile
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")
def test_torch_compile():
    torch.manual_seed(8)
    layer = BatchEnsembleLinear(4, 3, num_members=2)
    compiled = torch.compile(layer)
    x = torch.randn(10, 4)  # [M * B] = [2 * 5]
    torch.testing.assert_close(compiled(x), layer(x), rtol=1e-6, atol=1e-6)
    compiled(x).sum().backward()
    assert layer.r.grad is not None
