"""uqkit.nn.spectral_norm: the bound holds on the true operator norm (SVD of the explicit matrix)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from uqkit.nn.spectral import BoundedSpectralNorm, spectral_norm

# Power iteration on a fixed matrix converges geometrically, the error of the sigma estimate shrinking like
# (sigma_2 / sigma_1)^(2k). The closest pair here is the stride-1 "same" convolution on 6x6 inputs
# (sigma_2 / sigma_1 = 0.9955); after the warm-up plus 200 steps its estimate is within 4e-4 (relative) of
# the SVD, inside this tolerance. (After 50 steps it is still 2.5e-3 too low: with close singular values
# the bound is reached only after a few hundred training steps.)
REL_TOL = 2e-3


def _conv_matrix(conv: nn.Module, input_shape: tuple[int, ...]) -> torch.Tensor:
    """The explicit matrix of a convolution (no bias) on inputs of ``input_shape`` = (C, *spatial).

    Built independently of ``F.conv*``: the image of each basis vector through im2col (``F.unfold``) and
    the per-group kernel matrices. A 1-D convolution is the 2-D one with height 1.
    """
    n = int(torch.Size(input_shape).numel())
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *input_shape)
    weight = conv.weight.detach().double()
    stride, dilation = tuple(conv.stride), tuple(conv.dilation)
    padding = conv.padding
    if padding == "same":  # odd dilation * (kernel - 1): symmetric
        padding = tuple(d * (k - 1) // 2 for d, k in zip(dilation, conv.kernel_size, strict=True))
    if weight.ndim == 3:  # Conv1d -> Conv2d of height 1
        basis, weight = basis.unsqueeze(2), weight.unsqueeze(2)
        padding, stride, dilation = (0, *padding), (1, *stride), (1, *dilation)
    groups = conv.groups
    in_per_group, out_per_group = weight.shape[1], weight.shape[0] // groups
    outputs = []
    for g in range(groups):
        columns = F.unfold(
            basis[:, g * in_per_group : (g + 1) * in_per_group],
            weight.shape[2:],
            dilation=dilation,
            padding=padding,
            stride=stride,
        )
        kernel = weight[g * out_per_group : (g + 1) * out_per_group].reshape(out_per_group, -1)
        outputs.append(kernel @ columns)
    return torch.cat(outputs, dim=1).reshape(n, -1).t()


def _largest_singular_value(matrix: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(matrix.double(), ord=2))


def _train_steps(module: nn.Module, x: torch.Tensor, steps: int = 200) -> None:
    module.train()
    with torch.no_grad():
        for _ in range(steps):
            module(x)


def test_linear_bound_is_reached_and_checked_by_svd():
    torch.manual_seed(0)
    layer = nn.Linear(30, 20)
    with torch.no_grad():
        layer.weight.mul_(5.0)
    raw_sigma = _largest_singular_value(layer.weight.detach())
    bound = 0.9
    assert raw_sigma > 2 * bound
    spectral_norm(layer, bound=bound)
    _train_steps(layer, torch.randn(4, 30))
    layer.eval()
    sigma = _largest_singular_value(layer.weight.detach())
    print(f"Linear: raw sigma {raw_sigma:.4f}, bounded sigma {sigma:.6f}, bound {bound}")
    assert sigma <= bound * (1 + REL_TOL)
    assert sigma == pytest.approx(bound, rel=REL_TOL)  # rescaled exactly onto the bound, not below it
    # The bounded weight is the raw one times c / sigma: same direction.
    raw = layer.parametrizations.weight.original.detach()
    torch.testing.assert_close(layer.weight.detach(), raw * (bound / raw_sigma), rtol=REL_TOL, atol=1e-6)


def test_weight_below_the_bound_is_unchanged():
    torch.manual_seed(1)
    layer = nn.Linear(10, 8)
    with torch.no_grad():
        layer.weight.mul_(0.01)
    raw = layer.weight.detach().clone()
    assert _largest_singular_value(raw) < 0.5
    spectral_norm(layer, bound=0.5)
    _train_steps(layer, torch.randn(3, 10), steps=5)
    assert torch.equal(layer.weight.detach(), raw)


@pytest.mark.parametrize(
    ("conv", "input_shape"),
    [
        (lambda: nn.Conv2d(3, 5, 3, stride=2, padding=1), (3, 7, 6)),
        (
            lambda: nn.Conv2d(4, 6, (3, 2), stride=(1, 2), padding=(1, 0), dilation=(2, 1), groups=2),
            (4, 8, 7),
        ),
        (lambda: nn.Conv2d(2, 4, 3, padding="same"), (2, 6, 6)),
        (lambda: nn.Conv1d(3, 4, 5, stride=2, padding=2), (3, 11)),
    ],
    ids=["stride2-pad1", "groups-dilation", "same", "conv1d"],
)
def test_conv_bound_checked_against_explicit_convolution_matrix(conv, input_shape):
    torch.manual_seed(2)
    conv = conv()
    with torch.no_grad():
        conv.weight.mul_(4.0)
    raw_operator = _largest_singular_value(_conv_matrix(conv, input_shape))
    kernel_matrix = _largest_singular_value(conv.weight.detach().reshape(conv.weight.shape[0], -1))
    bound = 0.8
    assert raw_operator > 1.5 * bound
    spectral_norm(conv, bound=bound)
    _train_steps(conv, torch.randn(2, *input_shape))
    conv.eval()
    sigma = _largest_singular_value(_conv_matrix(conv, input_shape))
    print(
        f"{type(conv).__name__}{tuple(conv.weight.shape)} on {input_shape}: raw operator sigma "
        f"{raw_operator:.4f} (reshaped-kernel sigma {kernel_matrix:.4f}), bounded {sigma:.6f}, bound {bound}"
    )
    assert sigma <= bound * (1 + REL_TOL)
    assert sigma == pytest.approx(bound, rel=REL_TOL)


def test_operator_norm_differs_from_reshaped_kernel_norm():
    """Guards the previous test's power: normalising by the reshaped kernel would miss the bound."""
    torch.manual_seed(3)
    conv = nn.Conv2d(3, 5, 3, stride=1, padding=1)
    operator = _largest_singular_value(_conv_matrix(conv, (3, 8, 8)))
    kernel = _largest_singular_value(conv.weight.detach().reshape(5, -1))
    assert operator / kernel > 1.2


@pytest.mark.parametrize(
    ("conv", "input_shape"),
    [
        (lambda: nn.Conv2d(3, 5, 3, stride=2, padding=1), (3, 7, 6)),
        (lambda: nn.Conv2d(3, 5, 3, stride=2, padding=1), (3, 8, 9)),
        (
            lambda: nn.Conv2d(4, 6, (3, 2), stride=(3, 2), padding=(1, 0), dilation=(2, 1), groups=2),
            (4, 10, 7),
        ),
        (lambda: nn.Conv1d(2, 3, 4, stride=3, padding=1), (2, 13)),
    ],
)
def test_adjoint_identity(conv, input_shape):
    """<A x, y> = <x, A^T y>, also when the stride drops trailing input rows (output_padding)."""
    torch.manual_seed(4)
    conv = conv().double()
    spectral_norm(conv, bound=1.0, input_shape=input_shape[1:])
    parametrization = conv.parametrizations.weight[0]
    weight = conv.parametrizations.weight.original.detach()
    x = torch.randn(1, *input_shape, dtype=torch.float64)
    y = torch.randn_like(parametrization.operator(weight, x))
    lhs = (parametrization.operator(weight, x) * y).sum()
    adjoint = parametrization.adjoint(weight, y)
    assert adjoint.shape == x.shape
    rhs = (x * adjoint).sum()
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)
    # and A^T is the transpose of the explicit matrix
    matrix = _conv_matrix(conv, input_shape)
    torch.testing.assert_close(adjoint.reshape(-1), matrix.t() @ y.reshape(-1), rtol=1e-12, atol=1e-12)


def test_eval_uses_stored_vectors_and_training_updates_them():
    torch.manual_seed(5)
    layer = spectral_norm(nn.Linear(6, 6), bound=0.1)
    parametrization = layer.parametrizations.weight[0]
    with torch.no_grad():  # perturb the raw weight so that one more iteration moves u
        layer.parametrizations.weight.original.add_(torch.randn(6, 6))
    u_before = parametrization.u.clone()
    layer.eval()
    layer(torch.randn(2, 6))
    assert torch.equal(parametrization.u, u_before)
    # eval weight = W * c / max(u^T W v, c) with the stored vectors
    raw = layer.parametrizations.weight.original.detach()
    sigma = parametrization.u @ raw @ parametrization.v
    torch.testing.assert_close(layer.weight.detach(), raw * 0.1 / max(float(sigma), 0.1))
    layer.train()
    layer(torch.randn(2, 6))
    assert not torch.equal(parametrization.u, u_before)


def _eval_weight(layer: nn.Module) -> torch.Tensor:
    """The eval-mode bounded weight from scratch: W * c / max(u^T A v, c) with the stored vectors."""
    parametrization = layer.parametrizations.weight[0]
    raw = layer.parametrizations.weight.original.detach()
    sigma = parametrization.u @ raw @ parametrization.v
    return raw * parametrization.bound / max(float(sigma), parametrization.bound)


def test_eval_cache_follows_every_change_of_weight_vectors_and_bound():
    torch.manual_seed(8)
    layer = spectral_norm(nn.Linear(5, 4), bound=0.3).eval()
    parametrization = layer.parametrizations.weight[0]
    original = layer.parametrizations.weight.original
    x = torch.randn(3, 5)
    with torch.no_grad():
        first = layer.weight
        assert layer.weight is first  # cached: no graph in eval mode under no_grad
        torch.testing.assert_close(first, _eval_weight(layer))
        original.add_(torch.randn(4, 5))  # in-place change of the raw weight (as an optimiser step)
        torch.testing.assert_close(layer(x), F.linear(x, _eval_weight(layer), layer.bias))
        parametrization.v.copy_(F.normalize(torch.randn(5), dim=0))  # as load_state_dict does
        torch.testing.assert_close(layer.weight, _eval_weight(layer))
        parametrization.bound = 0.1
        torch.testing.assert_close(layer.weight, _eval_weight(layer))
        layer.weight.mul_(0.0)  # writing into the returned tensor does not poison later calls
        torch.testing.assert_close(layer.weight, _eval_weight(layer))
        # a new raw weight of the same shape (as torch.func.functional_call passes) is not mistaken for
        # the cached one, even where the allocator reuses the old one's memory
        u, v = parametrization.u, parametrization.v
        for w in (torch.ones(4, 5), torch.eye(4, 5), torch.randn(4, 5)):
            expected = F.linear(x, w * 0.1 / max(float(u @ w @ v), 0.1), layer.bias)
            output = torch.func.functional_call(layer, {"parametrizations.weight.original": w}, (x,))
            torch.testing.assert_close(output, expected)
        original.data = torch.randn(4, 5)  # a new storage without a version bump (as .to() swaps it)
        torch.testing.assert_close(layer.weight, _eval_weight(layer))
        layer64 = copy.deepcopy(layer).double()
        torch.testing.assert_close(layer64.weight, _eval_weight(layer64))
    # with gradients enabled the weight is recomputed with its graph, and gradients reach the raw weight
    weight = layer.weight
    assert weight.grad_fn is not None
    layer(x).sum().backward()
    assert original.grad is not None and bool(original.grad.abs().sum() > 0)
    # training mode never uses the cache, and the power iteration moves u again
    layer.train()
    u_before = parametrization.u.clone()
    with torch.no_grad():
        layer(x)
    assert not torch.equal(parametrization.u, u_before)
    layer.eval()
    with torch.no_grad():
        torch.testing.assert_close(layer.weight, _eval_weight(layer))


def test_eval_cache_survives_deepcopy():
    torch.manual_seed(9)
    model = nn.Sequential(spectral_norm(nn.Linear(4, 4), bound=0.5)).eval()
    x = torch.randn(2, 4)
    with torch.no_grad():
        expected = model(x)  # fills the cache
        clone = copy.deepcopy(model)
        torch.testing.assert_close(clone(x), expected, rtol=0, atol=0)
        clone[0].parametrizations.weight.original.add_(torch.eye(4))
        torch.testing.assert_close(model(x), expected, rtol=0, atol=0)  # the copy's change is its own
        assert not torch.allclose(clone(x), expected)


def test_gradients_through_repeated_training_forwards():
    torch.manual_seed(6)
    model = nn.Sequential(spectral_norm(nn.Linear(5, 5), bound=0.5), nn.ReLU(), nn.Linear(5, 1))
    x = torch.randn(4, 5)
    loss = model(x).sum() + model(x).sum()  # two weight accesses before one backward
    loss.backward()
    grad = model[0].parametrizations.weight.original.grad
    assert grad is not None and torch.isfinite(grad).all()


def test_state_dict_round_trip_into_a_lazy_conv_and_deepcopy():
    torch.manual_seed(7)
    model = nn.Sequential(spectral_norm(nn.Conv2d(2, 3, 3, stride=2), bound=0.7), nn.ReLU())
    x = torch.randn(2, 2, 9, 9)
    _train_steps(model, x, steps=3)
    model.eval()
    expected = model(x)

    fresh = nn.Sequential(spectral_norm(nn.Conv2d(2, 3, 3, stride=2), bound=0.7), nn.ReLU())
    assert not fresh[0].parametrizations.weight[0].initialized
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    torch.testing.assert_close(fresh(x), expected)
    assert fresh[0].parametrizations.weight[0].input_shape.tolist() == [9, 9]

    clone = copy.deepcopy(model)
    torch.testing.assert_close(clone(x), expected)
    clone_parametrization = clone[0].parametrizations.weight[0]
    assert clone_parametrization is not model[0].parametrizations.weight[0]
    clone.train()
    with torch.no_grad():
        clone[0].parametrizations.weight.original.mul_(2.0)
    clone(x)
    assert not torch.equal(clone_parametrization.u, model[0].parametrizations.weight[0].u)


def test_lazy_conv_records_the_first_input_shape():
    conv = spectral_norm(nn.Conv2d(1, 2, 3), bound=1.0)
    with pytest.raises(RuntimeError, match="input shape is not known yet"):
        _ = conv.weight
    conv(torch.randn(1, 1, 5, 6))
    parametrization = conv.parametrizations.weight[0]
    assert parametrization.input_shape.tolist() == [5, 6]
    assert tuple(parametrization.u.shape) == (1, 2, 3, 4)
    assert isinstance(parametrization, BoundedSpectralNorm)


def test_bad_inputs():
    with pytest.raises(TypeError, match=r"module: expected an nn\.Linear"):
        spectral_norm(nn.ReLU())
    with pytest.raises(ValueError, match="bound: expected a finite number > 0"):
        spectral_norm(nn.Linear(2, 2), bound=0.0)
    with pytest.raises(TypeError, match="n_power_iterations: expected an int"):
        spectral_norm(nn.Linear(2, 2), n_power_iterations=1.5)
    with pytest.raises(ValueError, match="n_power_iterations: expected an int >= 1"):
        spectral_norm(nn.Linear(2, 2), n_power_iterations=0)
    with pytest.raises(ValueError, match="input_shape: a Linear layer takes no input_shape"):
        spectral_norm(nn.Linear(2, 2), input_shape=(3, 3))
    with pytest.raises(ValueError, match=r"input_shape: expected the 2 spatial size"):
        spectral_norm(nn.Conv2d(1, 1, 3), input_shape=(1, 5, 5))
    with pytest.raises(ValueError, match="input_shape: expected positive integer sizes"):
        spectral_norm(nn.Conv2d(1, 1, 3), input_shape=(0, 5))
    with pytest.raises(ValueError, match="smaller than the kernel's receptive field"):
        spectral_norm(nn.Conv2d(1, 1, 3), input_shape=(2, 2))
    with pytest.raises(ValueError, match="padding_mode='zeros'"):
        spectral_norm(nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(ValueError, match="padding='same' only when"):
        spectral_norm(nn.Conv2d(1, 1, 2, padding="same"))
    layer = spectral_norm(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="already spectrally normalised"):
        spectral_norm(layer)
    broken = nn.Linear(2, 2)
    with torch.no_grad():
        broken.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="module: expected a finite weight"):
        spectral_norm(broken)
