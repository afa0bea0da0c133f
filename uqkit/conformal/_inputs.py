"""Input checks shared by the conformal calibrators."""

from __future__ import annotations

from typing import Any

import torch

from uqkit._validation import check_probabilities
from uqkit.prediction import Prediction

__all__ = ["check_generator", "check_score", "probabilities", "uniform"]


def check_score(score: Any, options: tuple[str, ...]) -> str:
    """Return ``score`` if it is one of ``options`` (lower-case names), else raise naming them."""
    if not isinstance(score, str) or score not in options:
        raise ValueError(f"score: expected one of {', '.join(map(repr, options))}, got {score!r}")
    return score


def check_generator(generator: Any, device: torch.device) -> torch.Generator | None:
    """Return ``generator`` if it is ``None`` or a ``torch.Generator`` on ``device``, else raise."""
    if generator is None:
        return None
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")
    if generator.device.type != device.type:
        raise ValueError(
            f"generator: expected a generator on the prediction's device ({device.type}), got one on "
            f"{generator.device.type}"
        )
    return generator


def uniform(count: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """``[count]`` float64 draws from U(0, 1) (``torch.rand``), from ``generator`` when one is given."""
    generator = check_generator(generator, device)
    return torch.rand(count, generator=generator, dtype=torch.float64, device=device)


def probabilities(prediction: Any, name: str = "prediction") -> torch.Tensor:
    """``[B, C]`` float64 predictive probabilities from a :class:`~uqkit.Prediction` or a tensor of them.

    A ``Prediction`` gives its predictive ``probs``, the mean over its samples of the softmax; a tensor must
    hold probabilities already (rows in [0, 1] summing to 1), not logits.
    """
    if isinstance(prediction, Prediction):
        probs = prediction.probs
    elif isinstance(prediction, torch.Tensor):
        probs = check_probabilities(prediction, name)
    else:
        raise TypeError(
            f"{name}: expected a uqkit.Prediction or a [batch, classes] tensor of probabilities, got "
            f"{type(prediction).__name__}"
        )
    if probs.shape[0] == 0:
        raise ValueError(f"{name}: expected at least one example, got shape {tuple(probs.shape)}")
    return probs.detach().double()
