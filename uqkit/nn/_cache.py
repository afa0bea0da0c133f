"""Eval-mode caches of tensors derived from parameters (shared by the layers that keep one)."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable, Sequence

import torch

__all__ = ["VersionedCache", "is_cacheable"]


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


class VersionedCache:
    """One tensor computed from some source tensors, reused while neither they nor it have changed.

    A change is an in-place write (a version-counter bump) of a source or of the value, a new storage
    (``param.data = other`` swaps it without a version bump), a different source tensor (after ``.to()``),
    or a different ``extra`` key. Sources are held by weak reference, so replaced tensors are not kept
    alive; for the same reason the cache cannot be pickled or deep-copied: owners drop it in
    ``__getstate__`` and it is rebuilt on demand.
    """

    def __init__(self) -> None:
        self._sources: tuple[weakref.ref, ...] = ()
        self._key: tuple | None = None
        self._value: torch.Tensor | None = None
        self._value_version = -1

    @property
    def value(self) -> torch.Tensor | None:
        """The cached tensor (``None`` before the first :meth:`get`)."""
        return self._value

    def get(
        self, sources: Sequence[torch.Tensor], extra: Hashable, compute: Callable[[], torch.Tensor]
    ) -> torch.Tensor:
        """The cached value if ``sources`` and ``extra`` are as when it was computed, else ``compute()``."""
        # Checked on every call of an eval-mode forward: list comprehensions and one loop, no generators.
        key = (tuple([t._version for t in sources]), tuple([t.data_ptr() for t in sources]), extra)
        value = self._value
        if (
            value is not None
            and self._key == key
            and value._version == self._value_version
            and len(self._sources) == len(sources)
        ):
            for ref, t in zip(self._sources, sources, strict=True):
                if ref() is not t:
                    break
            else:
                return value
        self._value = compute()
        self._sources = tuple(weakref.ref(t) for t in sources)
        self._key = key
        self._value_version = self._value._version
        return self._value
