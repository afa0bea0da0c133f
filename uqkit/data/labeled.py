"""A labelled data set as two plain tensors, and a seeded train/validation split."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from uqkit._validation import check_labels, check_tensor, check_unit_interval
from uqkit.data._common import check_seed

__all__ = ["LabeledData", "RegressionData", "train_val_split"]


@dataclass(frozen=True, eq=False)
class LabeledData:
    """Inputs and their integer labels, one row per example.

    The dataclass is frozen (its fields cannot be reassigned) but the tensors themselves are ordinary
    tensors; the loaders in :mod:`uqkit.data` return fresh tensors on every call, so modifying them does not
    affect later calls.

    Args:
        inputs: ``[N, ...]`` floating-point inputs.
        labels: ``[N]`` class indices, ``torch.long``.

    Shape:
        ``inputs``: ``[N, ...]``; ``labels``: ``[N]``; ``len(data) == N``.
    """

    inputs: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        inputs = check_tensor(self.inputs, "inputs")
        if not inputs.is_floating_point():
            raise TypeError(f"inputs: expected a floating-point tensor, got dtype {inputs.dtype}")
        if inputs.ndim == 0:
            raise ValueError("inputs: expected a tensor of shape [N, ...], got a 0-D tensor")
        check_labels(self.labels, "labels", length=int(inputs.shape[0]))
        if self.labels.dtype != torch.long:
            raise TypeError(f"labels: expected dtype torch.int64 (long), got {self.labels.dtype}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: torch.Tensor) -> LabeledData:
        """The examples at ``indices`` (a 1-D long index or a ``[N]`` boolean mask), as new tensors."""
        return LabeledData(self.inputs[indices], self.labels[indices])

    def __repr__(self) -> str:
        return (
            f"LabeledData(inputs={tuple(self.inputs.shape)} {self.inputs.dtype}, "
            f"labels={tuple(self.labels.shape)} {self.labels.dtype})"
        )


@dataclass(frozen=True, eq=False)
class RegressionData:
    """Inputs and their real-valued targets, one row per example.

    The targets are in ``labels`` (the name :class:`LabeledData` uses), so that the benchmark's trainer and
    runner read both kinds of data alike.

    Args:
        inputs: ``[N, ...]`` floating-point inputs.
        labels: ``[N, D]`` floating-point targets.
    """

    inputs: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        for name in ("inputs", "labels"):
            value = check_tensor(getattr(self, name), name)
            if not value.is_floating_point() or value.ndim == 0:
                shape = list(value.shape)
                raise TypeError(
                    f"{name}: expected a floating-point tensor [N, ...], got {value.dtype} {shape}"
                )
        if self.labels.ndim != 2 or self.labels.shape[0] != self.inputs.shape[0]:
            raise ValueError(
                f"labels: expected [N, D] targets with N = {self.inputs.shape[0]}, got shape "
                f"{list(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def check_labeled_data(data: Any, name: str = "data") -> LabeledData:
    """Raise ``TypeError`` unless ``data`` is a :class:`LabeledData`."""
    if not isinstance(data, LabeledData):
        raise TypeError(f"{name}: expected a LabeledData, got {type(data).__name__}")
    return data


def train_val_split(
    data: LabeledData, val_fraction: float = 0.1, seed: int = 0
) -> tuple[LabeledData, LabeledData]:
    """Split ``data`` at random into a training and a validation part, reproducibly.

    ``round(val_fraction * N)`` examples, drawn without replacement by ``torch.randperm`` with a
    ``torch.Generator`` seeded by ``seed``, form the validation part; the rest form the training part.
    Each part keeps the original order of its examples. Not stratified.

    Args:
        data: the examples to split.
        val_fraction: the fraction in ``(0, 1)`` to put in the validation part.
        seed: seed of the permutation; the same seed gives the same split.

    Returns:
        ``(train, val)``, disjoint and together holding every example of ``data`` once.

    Raises:
        ValueError: ``val_fraction`` outside ``(0, 1)``, or a part that would be empty.
    """
    check_labeled_data(data)
    val_fraction = check_unit_interval(val_fraction, "val_fraction", open_left=True, open_right=True)
    check_seed(seed)
    total = len(data)
    num_val = round(val_fraction * total)
    if num_val < 1 or num_val > total - 1:
        raise ValueError(
            f"val_fraction: {val_fraction} of {total} examples gives {num_val} validation and "
            f"{total - num_val} training examples; expected both parts non-empty"
        )
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(total, generator=generator)
    val_indices = order[:num_val].sort().values
    train_indices = order[num_val:].sort().values
    return data.subset(train_indices), data.subset(val_indices)
