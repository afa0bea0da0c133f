"""Input checks shared by every public entry point.

Each check raises ``TypeError`` (wrong kind of object or dtype) or ``ValueError`` (wrong shape, range or
value) with a message that names the argument, what was expected and what came. Public functions call
these first, so users see "expected probabilities summing to 1 along dim -1, got sums in [0.2, 3.1]"
instead of a broadcasting error or a silent NaN deep inside a computation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

__all__ = [
    "check_choice",
    "check_finite",
    "check_float_tensor",
    "check_labels",
    "check_logits",
    "check_ndim",
    "check_positive_float",
    "check_positive_int",
    "check_probabilities",
    "check_same_length",
    "check_tensor",
    "check_unit_interval",
    "describe_value",
]


def describe_value(value: Any) -> str:
    """What ``value`` is, for an error message: a tensor's shape and dtype, else its type and repr (at most
    200 characters)."""
    if isinstance(value, torch.Tensor):
        return f"tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    return f"{type(value).__name__} {value!r}"[:200]


def check_tensor(value: Any, name: str) -> torch.Tensor:
    """Return ``value`` if it is a tensor, else raise a ``TypeError`` naming ``name``."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {describe_value(value)}")
    return value


def check_ndim(value: torch.Tensor, name: str, ndims: int | Sequence[int], layout: str = "") -> None:
    """Raise ``ValueError`` unless ``value.ndim`` is one of ``ndims``; ``layout`` names the axes."""
    allowed = (ndims,) if isinstance(ndims, int) else tuple(ndims)
    if value.ndim not in allowed:
        want = " or ".join(f"{n}-D" for n in allowed)
        hint = f" {layout}" if layout else ""
        raise ValueError(f"{name}: expected a {want} tensor{hint}, got shape {tuple(value.shape)}")


def check_finite(value: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` if ``value`` holds NaN or infinite entries, saying how many."""
    if value.is_floating_point() or value.is_complex():
        bad = ~torch.isfinite(value.detach())
        if bool(bad.any()):
            raise ValueError(
                f"{name}: expected finite values, got {int(bad.sum())} non-finite "
                f"(NaN or inf) of {value.numel()}"
            )


def check_float_tensor(
    value: Any,
    name: str,
    ndims: int | Sequence[int] | None = None,
    layout: str = "",
    finite: bool = True,
) -> torch.Tensor:
    """Check that ``value`` is a floating-point tensor (optionally of given ndim, finite)."""
    value = check_tensor(value, name)
    if not value.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {value.dtype}")
    if ndims is not None:
        check_ndim(value, name, ndims, layout)
    if finite:
        check_finite(value, name)
    return value


def check_probabilities(
    probs: Any, name: str = "probs", atol: float | None = None, ndims: int | Sequence[int] = 2
) -> torch.Tensor:
    """Check a ``[B, C]`` tensor of class probabilities: finite, in [0, 1], rows summing to 1.

    ``atol`` defaults to 1e-3 for float32/16 and 1e-6 for float64 (softmax outputs in float32 sum to 1
    only up to rounding).
    """
    probs = check_float_tensor(probs, name, ndims, "[batch, classes]")
    if probs.numel() == 0:
        raise ValueError(f"{name}: expected at least one example, got shape {tuple(probs.shape)}")
    values = probs.detach()  # reading values must not warn about (or touch) an autograd graph
    lo, hi = float(values.min()), float(values.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"{name}: expected probabilities in [0, 1], got values in [{lo:.4g}, {hi:.4g}]"
            " (pass logits through softmax first)"
        )
    if atol is None:
        atol = 1e-6 if probs.dtype == torch.float64 else 1e-3
    sums = values.sum(dim=-1)
    if bool(((sums - 1.0).abs() > atol).any()):
        raise ValueError(
            f"{name}: expected probabilities summing to 1 along dim -1, got sums in "
            f"[{float(sums.min()):.4g}, {float(sums.max()):.4g}]"
        )
    return probs


def check_logits(logits: Any, name: str = "logits", ndims: int | Sequence[int] = 2) -> torch.Tensor:
    """Check a finite floating-point tensor of unnormalised class scores."""
    return check_float_tensor(logits, name, ndims)


def check_labels(
    labels: Any, name: str = "labels", num_classes: int | None = None, length: int | None = None
) -> torch.Tensor:
    """Check a 1-D integer tensor of class indices in ``[0, num_classes)`` and of ``length`` entries."""
    labels = check_tensor(labels, name)
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name}: expected integer class indices (torch.long), got dtype {labels.dtype}")
    check_ndim(labels, name, 1, "[batch]")
    if length is not None and labels.shape[0] != length:
        raise ValueError(f"{name}: expected {length} labels (one per example), got {labels.shape[0]}")
    if labels.numel() and num_classes is not None:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"{name}: expected class indices in [0, {num_classes - 1}], got values in [{lo}, {hi}]"
            )
    return labels


def check_same_length(**tensors: torch.Tensor) -> int:
    """Raise ``ValueError`` unless all tensors share their first dimension; return it."""
    lengths = {name: int(t.shape[0]) for name, t in tensors.items()}
    if len(set(lengths.values())) > 1:
        desc = ", ".join(f"{k} has {v}" for k, v in lengths.items())
        raise ValueError(f"expected the same number of examples in each argument, got: {desc}")
    return next(iter(lengths.values()))


def check_choice(value: Any, name: str, options: Iterable[str]) -> str:
    """Raise ``ValueError`` unless ``value`` is one of ``options``."""
    options = tuple(options)
    if value not in options:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, options))}, got {value!r}")
    return value


def check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    """Raise unless ``value`` is an int (not bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {describe_value(value)}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return value


def check_positive_float(value: Any, name: str, allow_zero: bool = False) -> float:
    """Raise unless ``value`` is a finite real number > 0 (or >= 0 with ``allow_zero``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number, got {describe_value(value)}")
    value = float(value)
    ok = value >= 0 if allow_zero else value > 0
    if not ok or value != value or value in (float("inf"), float("-inf")):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}: expected a finite number {bound}, got {value}")
    return value


def check_unit_interval(value: Any, name: str, open_left: bool = False, open_right: bool = False):
    """Raise unless ``value`` is a number in [0, 1] (ends open as requested)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number, got {describe_value(value)}")
    value = float(value)
    lo_ok = value > 0 if open_left else value >= 0
    hi_ok = value < 1 if open_right else value <= 1
    if not (lo_ok and hi_ok):
        interval = f"{'(' if open_left else '['}0, 1{')' if open_right else ']'}"
        raise ValueError(f"{name}: expected a number in {interval}, got {value}")
    return value
