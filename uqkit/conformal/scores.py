"""Non-conformity scores of every class for split-conformal classification: LAC, APS and RAPS.

Each function maps ``[B, C]`` predictive probabilities ``p`` to ``[B, C]`` scores ``s(x, y)``, one per
candidate class ``y``; larger means "less like the training data". The conformal set of a test input is
``{y : s(x, y) <= q}`` for the calibrated threshold ``q`` (:func:`uqkit.conformal.conformal_quantile` of the
true-label scores of a calibration split). Notation: ``pi_1(x), ..., pi_C(x)`` orders the classes by
decreasing ``p`` (ties by class index), ``r(x, y)`` is the 1-based rank of ``y`` in that order, and
``u ~ U(0, 1)`` is one uniform draw per example (the randomised scores).

* LAC (Sadinle, Lei & Wasserman 2019): ``s(x, y) = 1 - p_y(x)``.
* APS (Romano, Sesia & Candes 2020): ``s(x, y, u) = sum_{j <= r(x, y)} p_{pi_j}(x) - u p_y(x)``, the mass of
  the classes ranked at or above ``y``, less a uniform fraction of ``y``'s own mass; ``u = 0`` is the
  non-randomised score.
* RAPS (Angelopoulos, Bates, Malik & Jordan 2021, Algorithm 2): the APS score plus
  ``lambda * max(r(x, y) - k_reg, 0)``, a penalty on every class ranked below ``k_reg``.
"""

from __future__ import annotations

from typing import Any

import torch

from uqkit._validation import (
    check_float_tensor,
    check_positive_float,
    check_positive_int,
    check_probabilities,
)

__all__ = ["aps_scores", "check_raps_parameters", "class_order", "lac_scores", "raps_scores"]


def _check_uniform(u: Any, batch: int) -> torch.Tensor:
    u = check_float_tensor(u, "u", 1, "[batch]")
    if u.shape[0] != batch:
        raise ValueError(f"u: expected {batch} uniform draws (one per example), got {u.shape[0]}")
    if u.numel() and (float(u.min()) < 0.0 or float(u.max()) > 1.0):
        lo, hi = float(u.min()), float(u.max())
        raise ValueError(f"u: expected values in [0, 1], got values in [{lo:.4g}, {hi:.4g}]")
    return u


def lac_scores(probs: torch.Tensor) -> torch.Tensor:
    """LAC (least ambiguous set-valued classifier) scores ``1 - p_y`` of every class (Sadinle et al. 2019).

    Args:
        probs: ``[B, C]`` predictive probabilities (rows in [0, 1] summing to 1).

    Returns:
        ``[B, C]`` scores in float64.
    """
    probs = check_probabilities(probs, "probs")
    return 1.0 - probs.detach().double()


def class_order(probs: torch.Tensor) -> torch.Tensor:
    """``[B, C]`` class indices by decreasing probability, ties by class index (a stable sort): row ``b`` is
    ``pi_1(x_b), ..., pi_C(x_b)``."""
    return torch.sort(probs, dim=-1, descending=True, stable=True).indices


def _adaptive_scores(probs: torch.Tensor, k_reg: int, lam: float, u: torch.Tensor | None) -> torch.Tensor:
    """The RAPS score of every class (APS when ``lam = 0``), float64, in class order."""
    probs = check_probabilities(probs, "probs").detach().double()
    order = class_order(probs)
    ranks = torch.arange(1, probs.shape[-1] + 1, device=probs.device, dtype=probs.dtype)
    sorted_scores = probs.gather(-1, order).cumsum(dim=-1) + lam * (ranks - k_reg).clamp_min(0.0)
    scores = torch.empty_like(probs).scatter_(-1, order, sorted_scores)
    if u is None:
        return scores
    u = _check_uniform(u, probs.shape[0]).detach().to(device=probs.device, dtype=torch.float64)
    return scores - u.unsqueeze(-1) * probs


def aps_scores(probs: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
    """APS (adaptive prediction sets) scores of every class (Romano, Sesia & Candes 2020).

    ``s(x, y, u) = sum_{j <= r(x, y)} p_{pi_j}(x) - u p_y(x)``: the cumulated mass of the classes ranked at
    or above ``y``, less ``u`` times ``y``'s own probability. ``u = None`` is the non-randomised score
    (``u = 0``, the mass including ``y``).

    Args:
        probs: ``[B, C]`` predictive probabilities.
        u: ``[B]`` uniform draws in ``[0, 1]``, one per example and shared by its classes, or ``None``.

    Returns:
        ``[B, C]`` scores in float64, non-decreasing along each row's ranking.
    """
    return _adaptive_scores(probs, 0, 0.0, u)


def check_raps_parameters(k_reg: Any, lam: Any) -> tuple[int, float]:
    """Check RAPS's ``k_reg`` (an int >= 0) and ``lam`` (a finite number >= 0); return them."""
    return check_positive_int(k_reg, "k_reg", minimum=0), check_positive_float(lam, "lam", allow_zero=True)


def raps_scores(probs: torch.Tensor, k_reg: int, lam: float, u: torch.Tensor | None = None) -> torch.Tensor:
    """RAPS (regularised adaptive prediction sets) scores of every class (Angelopoulos et al. 2021).

    ``s(x, y, u) = sum_{j <= r(x, y)} p_{pi_j}(x) - u p_y(x) + lam * max(r(x, y) - k_reg, 0)``: the APS
    score plus a penalty of ``lam`` for each rank beyond ``k_reg`` (their Algorithm 2:
    ``E = sum_{j <= L} (p_(j) + lam 1[j > k_reg]) - u p_(L)``). ``lam = 0`` is APS.

    Args:
        probs: ``[B, C]`` predictive probabilities.
        k_reg: the number of top-ranked classes that carry no penalty, an int >= 0.
        lam: the penalty per rank beyond ``k_reg``, a number >= 0.
        u: ``[B]`` uniform draws in ``[0, 1]`` (one per example), or ``None`` for the non-randomised score.

    Returns:
        ``[B, C]`` scores in float64, non-decreasing along each row's ranking.
    """
    k_reg, lam = check_raps_parameters(k_reg, lam)
    return _adaptive_scores(probs, k_reg, lam, u)
