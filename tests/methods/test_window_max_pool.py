"""WindowMaxPool2d: DeepEnsemble's max pooling by elementwise maxima equals ``F.max_pool2d`` exactly (a
maximum involves no rounding), falls back to it where it must, and is what DeepEnsemble converts eligible
pools to."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from uqkit.bench.models import LeNet5
from uqkit.methods import DeepEnsemble
from uqkit.methods.ensemble import WindowMaxPool2d
from uqkit.nn.members import unfold_members


@pytest.mark.parametrize("kernel", [2, 3, (2, 3), 1])
def test_equals_max_pool_without_gradients(kernel):
    pool = nn.MaxPool2d(kernel)
    twin = WindowMaxPool2d(pool)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, 5, 12, 18, generator=generator)
    x[0, 0, :2, :2] = 1.0  # ties inside a window
    with torch.no_grad():
        assert torch.equal(twin(x), pool(x))  # the same values: maxima are exact
        transposed = x.transpose(2, 3).contiguous().transpose(2, 3)  # a non-contiguous layout
        assert torch.equal(twin(transposed), pool(transposed))


def test_falls_back_where_it_must():
    pool = nn.MaxPool2d(2)
    twin = WindowMaxPool2d(pool)
    x = torch.randn(2, 3, 7, 9)  # not a multiple of the window: floor mode drops the remainder
    with torch.no_grad():
        assert torch.equal(twin(x), pool(x))
    y = torch.randn(2, 3, 8, 8, requires_grad=True)
    (twin(y) * torch.arange(48.0).view(1, 3, 4, 4)).sum().backward()
    expected = y.detach().clone().requires_grad_()
    (pool(expected) * torch.arange(48.0).view(1, 3, 4, 4)).sum().backward()
    assert torch.equal(y.grad, expected.grad)  # max_pool2d's gradient: one maximum per window


@pytest.mark.parametrize(
    ("pool", "eligible"),
    [
        (nn.MaxPool2d(2), True),
        (nn.MaxPool2d((2, 3)), True),
        (nn.MaxPool2d(2, stride=2), True),
        (nn.MaxPool2d(3, stride=2), False),
        (nn.MaxPool2d(2, padding=1), False),
        (nn.MaxPool2d(2, dilation=2), False),
        (nn.MaxPool2d(2, ceil_mode=True), False),
        (nn.MaxPool2d(2, return_indices=True), False),
    ],
)
def test_deep_ensemble_converts_only_eligible_pools(pool, eligible):
    ensemble = DeepEnsemble(lambda: nn.Sequential(nn.Conv2d(1, 2, 3), pool), 2)
    assert isinstance(ensemble.network[1], WindowMaxPool2d) is eligible
    assert WindowMaxPool2d.applies_to(pool) is eligible


def test_lenet_ensemble_without_gradients_equals_its_members():
    torch.manual_seed(0)
    ensemble = DeepEnsemble(lambda: LeNet5(1, 10).double(), 3).eval()
    x = torch.randn(6, 1, 28, 28, dtype=torch.float64)
    with torch.no_grad():
        ours = unfold_members(ensemble(x), 3)
        loop = torch.stack([member.eval()(x) for member in ensemble.members()])
    torch.testing.assert_close(ours, loop, rtol=1e-10, atol=1e-10)  # float64: stacked vs loop, rounding
