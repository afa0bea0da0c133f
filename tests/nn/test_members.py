"""The member-dimension helpers against per-member loops."""

import pytest
import torch
from torch import nn

from uqkit.nn.members import Memberwise, with_member_dim


def test_with_member_dim_broadcasts_and_passes_through():
    x = torch.randn(5, 3, 4, 4)
    broadcast = with_member_dim(x, num_members=2, example_dims=3)
    assert broadcast.shape == (2, 5, 3, 4, 4)
    assert torch.equal(broadcast[0], x) and torch.equal(broadcast[1], x)
    stacked = torch.randn(2, 5, 3, 4, 4)
    assert with_member_dim(stacked, num_members=2, example_dims=3) is stacked


@pytest.mark.parametrize(
    ("shape", "message"), [((3, 5, 4), "leading member dimension of size 2"), ((4,), "expected \\[B, ...\\]")]
)
def test_with_member_dim_rejects_wrong_shapes(shape, message):
    with pytest.raises(ValueError, match=message):
        with_member_dim(torch.randn(*shape), num_members=2, example_dims=1)


@pytest.mark.parametrize("module", [nn.MaxPool2d(2), nn.Flatten(), nn.ReLU()])
def test_memberwise_equals_loop_over_members(module):
    x = torch.randn(3, 4, 2, 6, 6)
    out = Memberwise(module)(x)
    expected = torch.stack([module(x[m]) for m in range(3)])
    assert torch.equal(out, expected)  # selections and copies: no arithmetic, exact on any kernel


def test_memberwise_average_pool_equals_loop_over_members(roundoff_tolerance):
    module = nn.AvgPool2d(3, stride=1)
    x = torch.randn(3, 4, 2, 6, 6)
    out = Memberwise(module)(x)
    expected = torch.stack([module(x[m]) for m in range(3)])
    # a batch of 12 and a batch of 4 may take another vectorised path: the 9-term mean up to its rounding
    magnitude = Memberwise(module)(x.abs())
    assert bool(((out - expected).abs() <= roundoff_tolerance(magnitude, 9, x.dtype)).all())


def test_memberwise_refuses_modules_with_parameters():
    with pytest.raises(ValueError, match="without parameters"):
        Memberwise(nn.Linear(2, 2))
