"""Proper scoring rules and accuracy for probabilistic classifiers.

All functions take predictive probabilities ``probs`` of shape ``[B, C]`` (for a :class:`~uqkit.Prediction`
pass ``prediction.probs``) and integer class indices ``labels`` of shape ``[B]``, and return a Python float.
"""

from __future__ import annotations

import torch

from uqkit.metrics._inputs import check_probs_and_labels

__all__ = ["accuracy", "brier_score", "nll"]


def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of examples whose most probable class is the label.

    The predicted class is ``probs.argmax(dim=-1)``; among tied maxima it is the lowest class index.

    Args:
        probs: predictive probabilities, rows summing to 1.
        labels: true class indices in ``[0, C)``.

    Returns:
        Accuracy in ``[0, 1]``.

    Shape:
        ``probs``: ``[B, C]``; ``labels``: ``[B]``.
    """
    probs, labels = check_probs_and_labels(probs, labels)
    return float((probs.argmax(dim=-1) == labels).double().mean())


def nll(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Negative log-likelihood (log loss) of the labels, ``-1/B sum_i log p_i[y_i]`` (nats).

    The probability of the label is clamped below at ``torch.finfo(probs.dtype).tiny`` (the smallest
    positive normal number, about 1.2e-38 in float32 and 2.2e-308 in float64) so that a zero probability
    gives a large finite loss instead of ``inf``. Probabilities are not renormalised. Apart from that clamp
    (scikit-learn's ``log_loss`` clips at the larger machine epsilon) this is the log loss.

    Args:
        probs: predictive probabilities, rows summing to 1.
        labels: true class indices in ``[0, C)``.

    Returns:
        Mean negative log-likelihood, >= 0.

    Shape:
        ``probs``: ``[B, C]``; ``labels``: ``[B]``.
    """
    probs, labels = check_probs_and_labels(probs, labels)
    label_probs = probs.gather(1, labels.unsqueeze(1)).squeeze(1)
    tiny = torch.finfo(probs.dtype).tiny
    return float(-label_probs.clamp_min(tiny).log().double().mean())


def brier_score(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Multiclass Brier score, ``1/B sum_i sum_c (p_ic - 1[y_i = c])^2`` (Brier 1950).

    This is the form used by Ovadia et al. 2019, "Can you trust your model's uncertainty?": the squared
    error summed over all ``C`` classes, in ``[0, 2]``. For two classes it equals twice the binary Brier
    score ``1/B sum_i (p_i1 - y_i)^2`` (e.g. scikit-learn's ``brier_score_loss`` on ``probs[:, 1]``).

    Args:
        probs: predictive probabilities, rows summing to 1.
        labels: true class indices in ``[0, C)``.

    Returns:
        Brier score in ``[0, 2]``; lower is better.

    Shape:
        ``probs``: ``[B, C]``; ``labels``: ``[B]``.
    """
    probs, labels = check_probs_and_labels(probs, labels)
    one_hot = torch.nn.functional.one_hot(labels, num_classes=probs.shape[1]).to(probs.dtype)
    return float((probs - one_hot).square().sum(dim=1).double().mean())
