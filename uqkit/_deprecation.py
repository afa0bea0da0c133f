"""Old names kept for one release: each use warns with a ``DeprecationWarning`` that names the new one.

Three kinds of renamed name, one helper each:

* an attribute or property (``Prediction.total`` -> ``total_entropy``): :func:`deprecated_property`;
* a keyword argument (``ensemble_size=`` -> ``num_members=``): the decorator :func:`renamed_keywords`;
* a module attribute (a class, ``GaussianLinear`` -> ``ReparameterizationLinear``): the module defines
  ``__getattr__`` with :func:`renamed_module_attribute`, so the old name is the very same object
  (``isinstance`` and ``is`` hold) and warns only when it is looked up.

Every name these helpers keep is listed in docs/architecture.md ("Names"); all go in :data:`REMOVED_IN`.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

__all__ = [
    "REMOVED_IN",
    "deprecated_property",
    "renamed_keywords",
    "renamed_module_attribute",
    "warn_renamed",
]

REMOVED_IN = "0.2.0"
"""The release that drops the deprecated names."""

_Function = TypeVar("_Function", bound=Callable[..., Any])


def warn_renamed(old: str, new: str, stacklevel: int = 3) -> None:
    """Warn that ``old`` is deprecated for ``new``; ``stacklevel=3`` points at the caller's caller."""
    warnings.warn(
        f"{old} is deprecated and will be removed in uqkit {REMOVED_IN}; use {new} instead",
        DeprecationWarning,
        stacklevel=stacklevel,
    )


def deprecated_property(old: str, new: str) -> property:
    """A read-only property ``old`` that warns and returns the attribute ``new`` of the same object.

    Example:
        >>> class Prediction:
        ...     total = deprecated_property("total", "total_entropy")
    """

    def getter(self: Any) -> Any:
        owner = type(self).__name__
        warn_renamed(f"{owner}.{old}", f"{owner}.{new}")
        return getattr(self, new)

    return property(getter, doc=f"Deprecated alias of :attr:`{new}` (removed in {REMOVED_IN}).")


def renamed_keywords(**renames: str) -> Callable[[_Function], _Function]:
    """Accept each keyword ``old=`` as ``new=``, with a warning; both at once is a ``TypeError``.

    Args:
        renames: ``old="new"`` pairs of keyword names.

    Example:
        >>> @renamed_keywords(ensemble_size="num_members")
        ... def hyper_deep_ensemble(..., num_members: int = 5): ...
    """

    def decorate(function: _Function) -> _Function:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in renames.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(
                            f"{function.__qualname__}: got both {new}= and its deprecated name {old}=; "
                            f"pass {new}= only"
                        )
                    warn_renamed(f"{function.__qualname__}({old}=...)", f"{new}=...")
                    kwargs[new] = kwargs.pop(old)
            return function(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def renamed_module_attribute(module: str, name: str, renames: Mapping[str, str], namespace: dict) -> Any:
    """The body of a module's ``__getattr__``: ``namespace[renames[name]]`` with a warning.

    Args:
        module: the module's ``__name__``.
        name: the attribute looked up.
        renames: old name -> new name, both attributes of the module.
        namespace: the module's ``globals()``.

    Raises:
        AttributeError: ``name`` is not an old name (as for any missing module attribute).
    """
    if name not in renames:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    new = renames[name]
    warn_renamed(f"{module}.{name}", f"{module}.{new}", stacklevel=4)
    return namespace[new]
