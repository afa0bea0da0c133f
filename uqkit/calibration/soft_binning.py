"""Soft-binned calibration error (Karandikar et al. 2021, "Soft calibration objectives for neural networks").

The binned ECE assigns each confidence to exactly one bin, so it is piecewise constant in the confidences
and has no useful gradient. Soft binning replaces the hard assignment by a soft membership of every
confidence in every bin, which makes the calibration error differentiable and usable as a training loss.
"""

from __future__ import annotations

import torch

from uqkit._validation import check_labels, check_positive_float, check_positive_int, check_probabilities

__all__ = ["soft_binned_ece"]


def _soft_bin_membership(confidence: torch.Tensor, num_bins: int, temperature: float) -> torch.Tensor:
    """``[B, M]`` soft membership ``u_{M,T}(c_i)_j`` of each confidence in each of ``M`` bins.

    ``u_{M,T}(c)_j = exp(-(c - xi_j)^2 / T) / sum_k exp(-(c - xi_k)^2 / T)`` with centres
    ``xi_j = (j - 1/2) / M``, the midpoints of the ``M`` equal-width bins of [0, 1]. Each row sums to 1.
    """
    centres = (torch.arange(num_bins, dtype=confidence.dtype, device=confidence.device) + 0.5) / num_bins
    squared_distance = (confidence.unsqueeze(-1) - centres) ** 2
    return torch.softmax(-squared_distance / temperature, dim=-1)


def soft_binned_ece(
    probs: torch.Tensor,
    labels: torch.Tensor,
    num_bins: int = 15,
    temperature: float = 0.01,
    p: float = 2,
) -> torch.Tensor:
    """Soft-binned expected calibration error, SB-ECE (Karandikar et al. 2021, Section 4).

    With confidence ``c_i = max_k probs[i, k]`` and correctness ``a_i = 1[argmax_k probs[i, k] = y_i]`` of
    the ``n`` examples, the soft membership of ``c_i`` in bin ``j`` of ``M`` is

    ``u_{M,T}(c_i)_j = exp(-(c_i - xi_j)^2 / T) / sum_{k=1}^{M} exp(-(c_i - xi_k)^2 / T)``,

    a softmax with temperature ``T`` over the negative squared distances to the bin centres
    ``xi_j = (j - 1/2) / M`` (midpoints of the equal-width bins). Per bin, the soft bin size, soft accuracy
    and soft confidence are

    ``|B_j| = sum_i u_{M,T}(c_i)_j``,
    ``A_j = (1 / |B_j|) sum_i u_{M,T}(c_i)_j a_i``,
    ``C_j = (1 / |B_j|) sum_i u_{M,T}(c_i)_j c_i``,

    and the calibration error is

    ``SB-ECE_{M,T,p} = ( sum_j (|B_j| / n) |A_j - C_j|^p )^(1/p)``.

    As ``T -> 0`` the membership becomes the one-hot bin assignment, and SB-ECE with ``p = 1`` becomes the
    equal-width binned ECE of Guo et al. (2017). As in the paper, ``a_i`` is treated as a constant (it is
    piecewise constant in ``probs``); gradients flow through the confidences ``c_i``. A bin with
    ``|B_j| = 0`` (all memberships underflowed) contributes 0.

    To use it as a training loss (the paper's "SB-ECE" auxiliary objective), add it to the NLL::

        probs = torch.softmax(logits, dim=-1)
        loss = F.cross_entropy(logits, y) + lam * soft_binned_ece(probs, y)

    Small ``T`` follows the hard ECE closely but its gradients are concentrated near bin edges; the paper
    tunes ``T`` (around 1e-4 to 1e-2 for 15 bins) together with ``lam``.

    Args:
        probs: ``[B, C]`` class probabilities (rows in [0, 1] summing to 1), e.g. ``softmax(logits)``.
        labels: ``[B]`` integer class indices in ``[0, C)``.
        num_bins: number of bins ``M`` (>= 1).
        temperature: soft-binning temperature ``T`` (> 0); not the temperature of temperature scaling.
        p: exponent of the ``l_p`` calibration error (>= 1); ``p = 2`` is the paper's default.

    Returns:
        A scalar tensor, differentiable with respect to ``probs``; float16/bfloat16 inputs are computed in
        float32 and the result is cast back.

    Shape:
        ``probs``: ``[B, C]``; ``labels``: ``[B]``; output: ``[]``.
    """
    # Validate a detached view: the checks read values with float(), which would warn on a graph tensor.
    check_probabilities(probs.detach() if isinstance(probs, torch.Tensor) else probs, "probs")
    labels = check_labels(labels, "labels", num_classes=probs.shape[1], length=probs.shape[0])
    num_bins = check_positive_int(num_bins, "num_bins")
    temperature = check_positive_float(temperature, "temperature")
    p = check_positive_float(p, "p")
    if p < 1.0:
        raise ValueError(f"p: expected a finite number >= 1 (an l_p norm), got {p}")

    work = probs.to(torch.promote_types(probs.dtype, torch.float32))
    confidence, predicted = work.max(dim=-1)
    correct = (predicted == labels.to(predicted.device)).to(work.dtype)  # a_i, a constant

    membership = _soft_bin_membership(confidence, num_bins, temperature)  # [B, M]
    bin_size = membership.sum(dim=0)  # |B_j|
    accuracy_mass = membership.T @ correct  # |B_j| A_j
    confidence_mass = membership.T @ confidence  # |B_j| C_j
    tiny = torch.finfo(work.dtype).tiny
    gap = (accuracy_mass - confidence_mass) / bin_size.clamp_min(tiny)  # A_j - C_j (0 for empty bins)
    total = (bin_size / work.shape[0] * gap.abs() ** p).sum()
    # x^(1/p) has an infinite derivative at 0; take the subgradient 0 there instead of NaN.
    positive = total > 0
    error = torch.where(positive, total.clamp_min(tiny) ** (1.0 / p), torch.zeros_like(total))
    return error.to(probs.dtype)
