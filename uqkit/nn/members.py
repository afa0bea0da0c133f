"""Members folded into the batch: the one convention of every member family (issue "Any model").

Inside a model, the ``M`` members of a deep ensemble, a BatchEnsemble / rank-1 network or a MIMO network
travel in the batch dimension, member-major: row ``m * B + b`` of a ``[M * B, ...]`` tensor is member ``m``'s
copy of example ``b`` (edward2's BatchEnsemble tiles inputs the same way). A ``forward`` that reads or checks
shapes therefore sees an ordinary batch, and parameter-free modules (activations, pooling, ``Flatten``,
dropout, reshapes) need no wrapper. The member model tiles its ``[B, ...]`` inputs on entry
(:func:`tile_inputs`) and returns ``[M * B, ...]`` outputs; :func:`uqkit.predict` turns them into
``[M, B, C]`` (:func:`unfold_members`). Labels for training are tiled with :func:`tile_members`; one batch per
member is folded with :func:`fold_members` and passed inside :func:`pretiled`. See docs/architecture.md.

Member-vectorized layers read their ``[M * B, ...]`` input as ``[M, B, ...]``. Two facts help them go fast:

* :func:`tiled_source`: whether an input's rows are known to be ``M`` tiles of one ``[B, ...]`` batch (it was
  made by :func:`tile_inputs`, or is a same-layout view of such a tensor, e.g. after ``nn.Flatten``), so that
  a first layer can run once on the un-tiled batch with the members' weights side by side;
* :func:`folded_batch`: the ``(M, B)`` of the member model being run, so that a layer fed a tensor shared by
  the whole batch (one row, e.g. a transformer's ``position_ids`` of shape ``[1, T]``) can give each member's
  rows that member's result.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import torch

__all__ = [
    "MEMBERS_ATTRIBUTE",
    "fold_members",
    "folded_batch",
    "inputs_pretiled",
    "member_rows",
    "members_running",
    "num_members",
    "pretiled",
    "running_member",
    "set_folded_batch",
    "set_running_member",
    "tile_inputs",
    "tile_members",
    "tiled_source",
    "unfold_members",
    "with_member_dim",
]


def with_member_dim(inputs: torch.Tensor, num_members: int, example_dims: int) -> torch.Tensor:
    """Deprecated: member models now take ``[B, ...]`` inputs as they are and tile them themselves.

    Returns ``inputs`` as ``[M, B, ...]`` (the old layout), broadcasting a ``[B, ...]`` input with
    ``example_dims + 1`` dimensions.

    Raises:
        ValueError: when ``inputs`` has neither ``example_dims + 1`` nor ``example_dims + 2`` dimensions, or
            a leading member dimension other than ``num_members``.
    """
    warnings.warn(
        "uqkit.nn.members.with_member_dim is deprecated: member models (DeepEnsemble, MIMO, models converted "
        "with BatchEnsembleConfig / Rank1Config) take [B, ...] inputs as the original model did and return "
        "[M * B, ...]; use uqkit.predict for [M, B, C] predictions",
        DeprecationWarning,
        stacklevel=2,
    )
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
    # ``torch.cat`` of M references: the same values as ``tensor.repeat`` along ``dim``, at a third of its
    # cost for a small batch (one copy per member instead of repeat's strided gather).
    return torch.cat([tensor] * num_members, dim)


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
    if (
        batch_dim == 0
        and not kwargs
        and len(args) == 1
        and isinstance(args[0], torch.Tensor)
        and args[0].dim() > 0
        and type(num_members) is int
        and num_members > 1
        and not inputs_pretiled()
    ):
        # One positional tensor, the common call: the general path below in a few microseconds less.
        tiled = torch.cat([args[0]] * num_members)  # as tile_members
        tiled._uqkit_tiled_from = (args[0], num_members)
        return (tiled,), kwargs
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
            tiled = tile_members(value, num_members, batch_dim)
            if batch_dim == 0:
                tiled._uqkit_tiled_from = (value, num_members)  # read by tiled_source
            return tiled
        return value

    return tuple(tile(v) for v in args), {k: tile(v) for k, v in kwargs.items()}


_TILE_MARK = "_uqkit_tiled_from"


def tiled_source(tensor: torch.Tensor, num_members: int) -> torch.Tensor | None:
    """The ``[B, ...]`` batch whose ``M``-fold tile (:func:`tile_members`) ``tensor`` is, when that is known.

    Known for a tensor made by :func:`tile_inputs` (outside :func:`pretiled`), and for a view of one that
    keeps its rows (same storage, offset and number of elements, contiguous, same first dimension: e.g.
    ``x.flatten(1)`` or ``x.view(M * B, -1)``); ``None`` otherwise (nothing is compared element by element).
    A layer may then run once on the source with the members' weights side by side.

    Returns:
        The source reshaped to ``[B, *tensor.shape[1:]]``, or ``None``.
    """
    candidate = tensor if hasattr(tensor, _TILE_MARK) else getattr(tensor, "_base", None)
    mark = getattr(candidate, _TILE_MARK, None) if candidate is not None else None
    if mark is None:
        return None
    source, members = mark
    if members != num_members or num_members < 2:
        return None
    if candidate is not tensor and not (
        tensor.is_contiguous()
        and candidate.is_contiguous()
        and tensor.data_ptr() == candidate.data_ptr()
        and tensor.numel() == candidate.numel()
        and tensor.dim() >= 1
        and tensor.shape[0] == candidate.shape[0]
    ):
        return None
    return source.reshape(tensor.shape[0] // num_members, *tensor.shape[1:])


_FOLDED = threading.local()


@contextlib.contextmanager
def members_running(num_members: int, batch: int) -> Iterator[None]:
    """Within this block a member model with ``M = num_members`` runs on ``[M * B, ...]`` with ``B = batch``
    (read by :func:`folded_batch`). Nested blocks restore the outer values on exit."""
    previous = getattr(_FOLDED, "value", None)
    _FOLDED.value = (num_members, batch)
    try:
        yield
    finally:
        _FOLDED.value = previous


def set_folded_batch(value: tuple[int, int] | None) -> None:
    """Set what :func:`folded_batch` returns (:func:`members_running` without a context manager's per-call
    cost, for a member model's forward; the caller restores the previous value)."""
    _FOLDED.value = value


def folded_batch() -> tuple[int, int] | None:
    """``(M, B)`` of the member model being run (see :func:`members_running`), or ``None`` outside one."""
    return getattr(_FOLDED, "value", None)


_ONE_MEMBER = threading.local()


def running_member() -> int | None:
    """The index ``m`` of the member that :class:`uqkit.DeepEnsemble`'s member-by-member inference is running
    now (its stacked twins then compute member ``m``'s output alone on ``[B, ...]``), or ``None`` (members
    folded)."""
    return getattr(_ONE_MEMBER, "index", None)


def set_running_member(index: int | None) -> None:
    """Set what :func:`running_member` returns (a member model's forward, around each member's pass; the
    caller restores the previous value)."""
    _ONE_MEMBER.index = index


def member_rows(tensor: torch.Tensor, num_members: int, name: str = "input") -> int:
    """``B`` for a ``[M * B, ...]`` tensor, member-major.

    Raises:
        ValueError: when ``tensor`` has no dimensions or its first is not a multiple of ``num_members``.
    """
    if tensor.dim() == 0 or tensor.shape[0] % num_members:
        raise ValueError(
            f"{name}: expected a multiple of M = {num_members} rows (members folded into the batch, "
            f"member-major [M * B, ...]), got shape {list(tensor.shape)}"
        )
    return tensor.shape[0] // num_members
