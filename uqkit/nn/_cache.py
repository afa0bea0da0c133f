"""When a value computed from a tensor may be cached across eval-mode calls (shared by the layers)."""

from __future__ import annotations

import torch

__all__ = ["is_cacheable"]


def is_cacheable(tensor: torch.Tensor) -> bool:
    """Whether a value computed from ``tensor`` may be reused while ``tensor``'s version counter is unchanged.

    False under ``torch.compile`` tracing, inside ``torch.func`` transforms (wrapped tensors have no stable
    identity) and for inference tensors or in inference mode (no version counters).
    """
    if torch.compiler.is_compiling():
        return False
    is_wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
    if is_wrapped is not None and is_wrapped(tensor):
        return False
    return not torch.is_inference_mode_enabled() and not tensor.is_inference()
