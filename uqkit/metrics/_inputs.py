"""Input checks shared by the metric functions (built on :mod:`uqkit._validation`).

Metrics are evaluation quantities, not losses: the checked tensors are returned detached from any autograd
graph, so results are plain numbers and curves hold no graph.
"""

from __future__ import annotations

from typing import Any

import torch

from uqkit._validation import (
    check_float_tensor,
    check_labels,
    check_ndim,
    check_probabilities,
    check_tensor,
)

__all__ = [
    "check_bool_mask",
    "check_correct",
    "check_probs_and_labels",
    "check_regression_inputs",
    "check_same_device",
    "check_scores",
]


def check_same_device(**tensors: torch.Tensor) -> None:
    """Raise ``ValueError`` unless all tensors live on one device, naming each tensor's device."""
    devices = {name: value.device for name, value in tensors.items()}
    if len(set(devices.values())) > 1:
        desc = ", ".join(f"{name} is on {device}" for name, device in devices.items())
        raise ValueError(f"expected all arguments on the same device, got: {desc}")


def check_probs_and_labels(probs: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Check ``[B, C]`` probabilities and ``[B]`` class indices in ``[0, C)``; return both, labels as long."""
    probs = check_probabilities(probs, "probs")
    batch, num_classes = probs.shape
    labels = check_labels(labels, "labels", num_classes=num_classes, length=batch)
    check_same_device(probs=probs, labels=labels)
    return probs.detach(), labels.long()


def check_scores(value: Any, name: str) -> torch.Tensor:
    """Check a non-empty, finite, 1-D floating-point tensor of per-example scores."""
    value = check_float_tensor(value, name, 1, "[batch]")
    if value.numel() == 0:
        raise ValueError(f"{name}: expected at least one score, got an empty tensor")
    return value.detach()


def check_bool_mask(value: Any, name: str, ndim: int, layout: str, meaning: str) -> torch.Tensor:
    """Check a ``torch.bool`` tensor of ``ndim`` dimensions (``layout`` names them; ``meaning`` says what
    ``True`` means, for the error message)."""
    value = check_tensor(value, name)
    if value.dtype != torch.bool:
        raise TypeError(f"{name}: expected a bool tensor {layout} ({meaning}), got dtype {value.dtype}")
    check_ndim(value, name, ndim, layout)
    return value


def check_correct(correct: Any, length: int, name: str = "correct") -> torch.Tensor:
    """Check a 1-D ``torch.bool`` tensor of ``length`` entries (``True`` where the prediction is right)."""
    correct = check_bool_mask(correct, name, 1, "[batch]", "True where the prediction is correct")
    if correct.shape[0] != length:
        raise ValueError(f"{name}: expected {length} entries (one per example), got {correct.shape[0]}")
    return correct


def check_regression_inputs(**tensors: Any) -> tuple[torch.Tensor, ...]:
    """Check non-empty, finite ``[B]`` or ``[B, D]`` float tensors that all share one shape; return them."""
    checked = tuple(
        check_float_tensor(value, name, (1, 2), "[batch] or [batch, outputs]").detach()
        for name, value in tensors.items()
    )
    shapes = {name: tuple(value.shape) for name, value in zip(tensors, checked, strict=True)}
    if len(set(shapes.values())) > 1:
        desc = ", ".join(f"{name} has shape {shape}" for name, shape in shapes.items())
        raise ValueError(f"expected the same shape in each argument, got: {desc}")
    check_same_device(**dict(zip(tensors, checked, strict=True)))
    first_name, first = next(iter(tensors)), checked[0]
    if first.numel() == 0:
        raise ValueError(f"{first_name}: expected at least one element, got shape {tuple(first.shape)}")
    return checked
