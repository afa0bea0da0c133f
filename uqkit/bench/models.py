"""Backbones used by the benchmark tasks.

Each builder returns a plain ``nn.Module`` mapping ``[B, *input_shape]`` to ``[B, num_classes]`` logits. The
``dropout`` argument inserts a dropout module after every hidden activation; the benchmark passes
:class:`uqkit.nn.MCDropout` for MC dropout (always on, Gal & Ghahramani 2016) and nothing otherwise, so every
method of a task trains the same architecture.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

DropoutFactory = Callable[[], nn.Module] | None

__all__ = ["MODEL_BUILDERS", "Conv1dNet", "LeNet5", "ResidualMLP", "build_model", "mlp"]


def _maybe(dropout: DropoutFactory) -> list[nn.Module]:
    return [dropout()] if dropout is not None else []


def mlp(
    input_shape: Sequence[int],
    num_classes: int,
    hidden: Sequence[int] = (512, 512),
    dropout: DropoutFactory = None,
) -> nn.Sequential:
    """Fully connected ReLU network ``prod(input_shape) -> hidden... -> num_classes`` (784-512-512-10)."""
    in_features = int(torch.Size(input_shape).numel())
    layers: list[nn.Module] = [nn.Flatten()]
    for width in hidden:
        layers += [nn.Linear(in_features, width), nn.ReLU(), *_maybe(dropout)]
        in_features = width
    layers.append(nn.Linear(in_features, num_classes))
    return nn.Sequential(*layers)


class LeNet5(nn.Sequential):
    """LeNet-5 as used by uncertainty-baselines for (Fashion-)MNIST.

    conv 5x5 (6, padding 2) -> ReLU -> max-pool 2 -> conv 5x5 (16) -> ReLU -> max-pool 2 -> FC 120 -> FC 84
    -> FC ``num_classes`` (LeCun et al. 1998, with ReLU activations and max pooling).

    Shape:
        input ``[B, C, 28, 28]``, output ``[B, num_classes]``.
    """

    def __init__(self, in_channels: int, num_classes: int, dropout: DropoutFactory = None) -> None:
        super().__init__(
            nn.Conv2d(in_channels, 6, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, kernel_size=5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120),
            nn.ReLU(),
            *_maybe(dropout),
            nn.Linear(120, 84),
            nn.ReLU(),
            *_maybe(dropout),
            nn.Linear(84, num_classes),
        )


class Conv1dNet(nn.Sequential):
    """Small 1-D CNN for MNIST-1D (three conv layers of 32 channels, stride 2, then a linear head).

    Shape:
        input ``[B, C, L]``, output ``[B, num_classes]``.
    """

    def __init__(self, in_channels: int, length: int, num_classes: int, dropout: DropoutFactory = None):
        channels = 32
        layers: list[nn.Module] = []
        c_in = in_channels
        for _ in range(3):
            layers += [nn.Conv1d(c_in, channels, kernel_size=5, stride=2, padding=2), nn.ReLU()]
            layers += _maybe(dropout)
            c_in = channels
            length = (length + 2 * 2 - 5) // 2 + 1
        layers += [nn.Flatten(), nn.Linear(channels * length, num_classes)]
        super().__init__(*layers)


class _ResidualBlock(nn.Module):
    def __init__(self, width: int, dropout: DropoutFactory) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)
        self.activation = nn.ReLU()
        self.dropout = dropout() if dropout is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.dropout(self.activation(self.linear(x)))


class ResidualMLP(nn.Sequential):
    """Residual MLP (the two-moons backbone of the SNGP paper, Liu et al. 2020: input projection, residual
    dense blocks of equal width, linear head).

    Shape:
        input ``[B, D]``, output ``[B, num_classes]``.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        width: int = 128,
        depth: int = 3,
        dropout: DropoutFactory = None,
    ) -> None:
        super().__init__(
            nn.Linear(in_features, width),
            *[_ResidualBlock(width, dropout) for _ in range(depth)],
            nn.Linear(width, num_classes),
        )


def _build_mlp(shape, num_classes, dropout):
    return mlp(shape, num_classes, dropout=dropout)


def _build_lenet5(shape, num_classes, dropout):
    if len(shape) != 3:
        raise ValueError(f"model 'lenet5' needs image inputs [C, H, W], got input shape {list(shape)}")
    return LeNet5(shape[0], num_classes, dropout=dropout)


def _build_cnn1d(shape, num_classes, dropout):
    if len(shape) != 2:
        raise ValueError(f"model 'cnn1d' needs sequence inputs [C, L], got input shape {list(shape)}")
    return Conv1dNet(shape[0], shape[1], num_classes, dropout=dropout)


def _build_resmlp(shape, num_classes, dropout):
    in_features = int(torch.Size(shape).numel())
    return nn.Sequential(nn.Flatten(), ResidualMLP(in_features, num_classes, dropout=dropout))


MODEL_BUILDERS: dict[str, Callable[[Sequence[int], int, DropoutFactory], nn.Module]] = {
    "mlp": _build_mlp,
    "lenet5": _build_lenet5,
    "cnn1d": _build_cnn1d,
    "resmlp": _build_resmlp,
}


def build_model(
    name: str, input_shape: Sequence[int], num_classes: int, dropout: DropoutFactory = None
) -> nn.Module:
    """Build the backbone ``name`` (one of :data:`MODEL_BUILDERS`) for a task's input shape and classes.

    A ``name`` with a colon is the user's factory (``MODULE:FACTORY`` or ``file.py:FACTORY``,
    :func:`uqkit.bench.user_model.build_user_model`): its model is what it is, ``input_shape`` and
    ``num_classes`` are checked against it by the task, and ``dropout`` keeps its own ``nn.Dropout`` layers
    on at prediction.
    """
    from uqkit.bench.user_model import build_user_model, is_factory_spec

    if is_factory_spec(name):
        return build_user_model(name, dropout=dropout)
    if name not in MODEL_BUILDERS:
        raise ValueError(f"model: expected one of {', '.join(sorted(MODEL_BUILDERS))}, got {name!r}")
    return MODEL_BUILDERS[name](tuple(input_shape), num_classes, dropout)
