"""The folded-member helpers (uqkit/nn/members.py) against explicit per-member references."""

import pytest
import torch

from uqkit.nn.members import (
    fold_members,
    pretiled,
    tile_inputs,
    tile_members,
    tiled_source,
    unfold_members,
    with_member_dim,
)


def test_tile_and_unfold_are_member_major_inverses():
    x = torch.randn(4, 3)
    tiled = tile_members(x, 3)
    assert tiled.shape == (12, 3)
    for m in range(3):  # rows m * B .. (m + 1) * B - 1 are member m's copy
        assert torch.equal(tiled[m * 4 : (m + 1) * 4], x)
    assert torch.equal(unfold_members(tiled, 3), torch.stack([x, x, x]))
    stacked = torch.randn(3, 4, 2)
    assert torch.equal(unfold_members(fold_members(stacked), 3), stacked)
    with pytest.raises(ValueError, match="a multiple of 3 rows"):
        unfold_members(torch.randn(10, 2), 3)


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_tile_members_along_any_dim_is_m_copies_in_order(dim):
    x = torch.randn(5, 4, requires_grad=True)
    source = x.t()  # non-contiguous [4, 5]
    tiled = tile_members(source, 3, dim)
    size = source.shape[dim]
    assert tiled.shape[dim] == 3 * size and tiled.dim() == 2
    for m in range(3):
        assert torch.equal(tiled.narrow(dim, m * size, size), source)
    tiled.sum().backward()  # every entry feeds M copies
    assert torch.equal(x.grad, torch.full_like(x, 3.0))
    labels = torch.tensor([2, 0, 1])
    assert torch.equal(tile_members(labels, 2), torch.tensor([2, 0, 1, 2, 0, 1]))
    assert tile_members(labels, 1) is labels


def test_tile_inputs_tiles_batch_shaped_tensors_only_and_marks_the_tiles():
    x, mask, shared = torch.randn(3, 5), torch.ones(3, 7), torch.randn(1, 7)
    (tx, flag), kwargs = tile_inputs((x, True), {"mask": mask, "shared": shared}, 3)  # B == M: examples
    assert flag is True and kwargs["shared"] is shared
    assert torch.equal(tx, tile_members(x, 3)) and torch.equal(kwargs["mask"], tile_members(mask, 3))
    assert torch.equal(tiled_source(tx, 3), x)
    assert torch.equal(tiled_source(tx.view(9, 5, 1).flatten(1), 3), x)  # a row-keeping view of a tile
    assert tiled_source(tx + 0, 3) is None and tiled_source(tile_members(x, 3), 3) is None
    assert tiled_source(tx, 2) is None
    (alone,), none = tile_inputs((x,), {}, 3)  # one positional tensor: the short path, the same tile
    assert none == {} and torch.equal(alone, tile_members(x, 3)) and torch.equal(tiled_source(alone, 3), x)
    assert tile_inputs((x,), {}, 1)[0][0] is x
    with pretiled():
        (same,), _ = tile_inputs((tx,), {}, 3)
        assert same is tx
        with pytest.raises(ValueError, match="M \\* B rows with M = 2"):
            tile_inputs((torch.randn(5, 2),), {}, 2)


def test_with_member_dim_is_deprecated():
    with pytest.warns(DeprecationWarning, match="with_member_dim is deprecated"):
        out = with_member_dim(torch.randn(5, 3), 2, example_dims=1)
    assert out.shape == (2, 5, 3)
