"""The member dimension of vectorized ensembles: one convention, two small helpers.

Member-vectorized modules (stacked deep ensembles, BatchEnsemble, rank-1 BNNs, MIMO) take and return
tensors with a leading member dimension, ``[M, B, ...]``. An input without it, ``[B, ...]``, is broadcast to
all ``M`` members (the same batch for every member, as at test time). See docs/architecture.md.

* :func:`with_member_dim` is the one place that decides whether an input already carries the member
  dimension and broadcasts it when it does not.
* :class:`Memberwise` runs a module that knows nothing of members (pooling, ``Flatten``, activations,
  dropout) on ``[M, B, ...]`` by folding the member dimension into the batch, ``[M * B, ...]``, and
  unfolding the result. This is exact for any module that treats batch elements independently and has no
  parameters of its own.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

__all__ = [
    "MEMBERS_ATTRIBUTE",
    "Memberwise",
    "fold_members",
    "inputs_pretiled",
    "num_members",
    "pretiled",
    "tile_inputs",
    "tile_members",
    "unfold_members",
    "with_member_dim",
]


def with_member_dim(inputs: torch.Tensor, num_members: int, example_dims: int) -> torch.Tensor:
    """Return ``inputs`` as ``[M, B, ...]``, broadcasting a ``[B, ...]`` input to all members.

    Args:
        inputs: ``[M, B, *example_shape]`` or ``[B, *example_shape]``.
        num_members: ``M``.
        example_dims: the number of dimensions of one example (1 for a feature vector, 3 for ``[C, H, W]``).

    Returns:
        ``[M, B, *example_shape]``; a broadcast input is an expanded view (no copy).

    Raises:
        ValueError: when ``inputs`` has neither ``example_dims + 1`` nor ``example_dims + 2`` dimensions, or
            a leading member dimension other than ``num_members``.
    """
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"inputs: expected a torch.Tensor, got {type(inputs).__name__}")
    if inputs.dim() == example_dims + 1:
        return inputs.unsqueeze(0).expand(num_members, *inputs.shape)
    if inputs.dim() == example_dims + 2:
        if inputs.shape[0] != num_members:
            raise ValueError(
                f"inputs: expected a leading member dimension of size {num_members} ([M, B, ...]), got "
                f"shape {list(inputs.shape)}"
            )
        return inputs
    raise ValueError(
        f"inputs: expected [B, ...] with {example_dims + 1} dimensions or [M, B, ...] with "
        f"{example_dims + 2}, got shape {list(inputs.shape)}"
    )


class Memberwise(nn.Module):
    """Apply a member-agnostic module to ``[M, B, ...]`` inputs by folding members into the batch.

    ``Memberwise(nn.MaxPool2d(2))`` maps ``[M, B, C, H, W]`` to ``[M, B, C, H / 2, W / 2]``;
    ``Memberwise(nn.Flatten())`` maps ``[M, B, C, H, W]`` to ``[M, B, C * H * W]``.

    Args:
        module: a module that treats batch elements independently and has no parameters (a module with
            parameters would share them across members, which is not what a member-vectorized model means).

    Shape:
        input ``[M, B, *in_shape]``, output ``[M, B, *out_shape]``.

    Raises:
        ValueError: at construction, when ``module`` has parameters.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        if any(True for _ in module.parameters()):
            raise ValueError(
                f"module: expected a module without parameters (they would be shared by all members), got "
                f"{type(module).__name__} with parameters {[name for name, _ in module.named_parameters()]}"
            )
        self.module = module

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if inputs.dim() < 2:
            raise ValueError(f"inputs: expected [M, B, ...], got shape {list(inputs.shape)}")
        members, batch = inputs.shape[:2]
        outputs = self.module(inputs.reshape(members * batch, *inputs.shape[2:]))
        return outputs.reshape(members, batch, *outputs.shape[1:])

    def extra_repr(self) -> str:
        return "members folded into the batch"


# --- Members folded into the batch (issue "Any model"): the convention every member family follows. ---
#
# Inside a model, the M members travel in the batch dimension, member-major: row ``m * B + b`` of a
# ``[M * B, ...]`` tensor is member ``m``'s copy of example ``b`` (edward2's BatchEnsemble tiles inputs the
# same way). A model's ``forward`` that reads or checks shapes therefore sees an ordinary batch. The member
# model (DeepEnsemble, MIMO, a model converted with BatchEnsembleConfig / Rank1Config) tiles its ``[B, ...]``
# inputs on entry and returns ``[M * B, ...]`` outputs; :func:`uqkit.predict` turns them into ``[M, B, C]``.

MEMBERS_ATTRIBUTE = "uqkit_num_members"
"""Name of the int attribute that marks a module as a member model (its ``M``) for :func:`num_members`."""

_PRETILED = threading.local()


def tile_members(tensor: torch.Tensor, num_members: int, dim: int = 0) -> torch.Tensor:
    """``[B, ...] -> [M * B, ...]``, member-major (``[x, x, ..., x]`` along ``dim``): the one helper for
    tiling inputs or labels, e.g. ``F.cross_entropy(model(x), tile_members(y, M))``.

    Raises:
        TypeError: for a ``tensor`` that is not a tensor.
        ValueError: for ``num_members < 1`` or a ``dim`` out of range.
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"tensor: expected a torch.Tensor, got {type(tensor).__name__}")
    if isinstance(num_members, bool) or not isinstance(num_members, int) or num_members < 1:
        raise ValueError(f"num_members: expected an int >= 1, got {num_members!r}")
    if tensor.dim() == 0 or not -tensor.dim() <= dim < tensor.dim():
        raise ValueError(f"dim: expected a dimension of a tensor of shape {list(tensor.shape)}, got {dim}")
    if num_members == 1:
        return tensor
    repeats = [1] * tensor.dim()
    repeats[dim] = num_members
    return tensor.repeat(*repeats)


def unfold_members(tensor: torch.Tensor, num_members: int, dim: int = 0) -> torch.Tensor:
    """``[M * B, ...] -> [M, B, ...]`` (member-major rows, as :func:`tile_members` makes them); a view.

    Raises:
        ValueError: when the size of ``dim`` is not a multiple of ``num_members``.
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"tensor: expected a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() == 0 or not -tensor.dim() <= dim < tensor.dim():
        raise ValueError(f"dim: expected a dimension of a tensor of shape {list(tensor.shape)}, got {dim}")
    dim %= tensor.dim()
    rows = tensor.shape[dim]
    if rows % num_members:
        raise ValueError(
            f"expected {num_members} members folded into dimension {dim} (a multiple of {num_members} rows, "
            f"member-major), got shape {list(tensor.shape)}"
        )
    return tensor.unflatten(dim, (num_members, rows // num_members))


def fold_members(tensor: torch.Tensor) -> torch.Tensor:
    """``[M, B, ...] -> [M * B, ...]`` (member-major): e.g. one batch per member, for :func:`pretiled`."""
    if not isinstance(tensor, torch.Tensor) or tensor.dim() < 2:
        shape = list(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise ValueError(f"tensor: expected [M, B, ...] with at least 2 dimensions, got {shape}")
    return tensor.flatten(0, 1)


def num_members(model: torch.nn.Module) -> int:
    """``M`` of a member model (its int attribute :data:`MEMBERS_ATTRIBUTE`), 1 for any other module."""
    value = getattr(model, MEMBERS_ATTRIBUTE, 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TypeError(f"model: expected {MEMBERS_ATTRIBUTE} to be an int >= 1, got {value!r}")
    return value


@contextlib.contextmanager
def pretiled() -> Iterator[None]:
    """Within this block, member models take inputs whose batch is already ``[M * B, ...]`` (member-major,
    e.g. a different batch per member during training) and do not tile them again."""
    previous = getattr(_PRETILED, "active", False)
    _PRETILED.active = True
    try:
        yield
    finally:
        _PRETILED.active = previous


def inputs_pretiled() -> bool:
    """Whether the caller is inside :func:`pretiled`."""
    return getattr(_PRETILED, "active", False)


def tile_inputs(
    args: tuple[Any, ...], kwargs: dict[str, Any], num_members: int, batch_dim: int = 0
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Tile every batch-shaped tensor among positional and keyword inputs to ``M`` members.

    The batch size ``B`` is the size along ``batch_dim`` of the first tensor input (positional first, then
    keyword in order); every tensor input with that size along ``batch_dim`` is tiled with
    :func:`tile_members`; other values (and tensors of another size, e.g. a shared mask) pass unchanged.
    Inside :func:`pretiled` nothing is tiled, and the first tensor's batch must be a multiple of ``M``.

    Raises:
        ValueError: inside :func:`pretiled`, when the batch is not a multiple of ``num_members``.
    """
    tensors = [v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor) and v.dim() > batch_dim]
    if not tensors or num_members == 1:
        return args, kwargs
    batch = tensors[0].shape[batch_dim]
    if inputs_pretiled():
        if batch % num_members:
            raise ValueError(
                f"inputs: inside uqkit.nn.members.pretiled() expected a batch of M * B rows with M = "
                f"{num_members} (member-major), got {batch} along dimension {batch_dim}"
            )
        return args, kwargs

    def tile(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.dim() > batch_dim and value.shape[batch_dim] == batch:
            return tile_members(value, num_members, batch_dim)
        return value

    return tuple(tile(v) for v in args), {k: tile(v) for k, v in kwargs.items()}
