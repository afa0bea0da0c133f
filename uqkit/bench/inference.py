"""Batched prediction of a trained method: the one inference loop behind the trainer's validation passes and
every evaluation (:mod:`uqkit.bench.evaluate`, :mod:`uqkit.bench.evaluate_regression`)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from uqkit.bench.progress import progress_bar
from uqkit.prediction import GaussianPrediction, Prediction

if TYPE_CHECKING:
    from uqkit.bench.registry import Method

__all__ = ["predict_in_batches"]


def predict_in_batches(
    method: Method,
    inputs: torch.Tensor,
    batch_size: int,
    device: str = "cpu",
    desc: str = "predict",
    progress: bool = True,
) -> Prediction | GaussianPrediction:
    """Predict ``inputs`` in batches (no gradients, eval mode); logits (or Gaussian means and variances)
    gathered on the CPU."""
    method.eval()
    parts = []
    num_batches = math.ceil(len(inputs) / batch_size)
    with torch.no_grad(), progress_bar(num_batches, desc, enabled=progress) as bar:
        for start in range(0, len(inputs), batch_size):
            batch = inputs[start : start + batch_size].to(device)
            prediction = method.predict(batch)
            if isinstance(prediction, GaussianPrediction):
                parts.append((prediction.sample_mean.cpu(), prediction.sample_variance.cpu()))
            else:
                parts.append(prediction.logits.cpu())
            bar.update(1)
    if isinstance(parts[0], tuple):
        means, variances = zip(*parts, strict=True)
        return GaussianPrediction(torch.cat(means, dim=1), torch.cat(variances, dim=1))
    return Prediction(torch.cat(parts, dim=1))
