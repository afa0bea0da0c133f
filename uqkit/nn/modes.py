"""A model in eval mode for the length of a block, every module's training flag restored afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

__all__ = ["evaluation_mode"]


@contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode (batch-norm running statistics, no dropout) inside the block, and give
    every submodule back its own training flag afterwards, also when the block raises.

    ``model.train(previous)`` would not do: a model whose modules were in mixed modes (a frozen, eval-mode
    backbone inside a model in training) must come back mixed. Gradients are not switched off; add
    ``torch.no_grad()`` where none are needed. Sampling layers (Flipout, MC dropout) keep sampling in eval
    mode where they are built to.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in flags:
            module.training = training
