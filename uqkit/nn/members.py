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

import torch
from torch import nn

__all__ = ["Memberwise", "with_member_dim"]


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
