"""The finite-sample-corrected conformal quantile of calibration scores (Vovk et al. 2005; Lei et al. 2018).

Given ``n`` calibration scores ``s_1, ..., s_n`` exchangeable with a test score ``s``, the threshold

    ``q = s_(k)``, the ``k``-th smallest score, with ``k = ceil((n + 1)(1 - alpha))``,

(the empirical quantile of level ``ceil((n + 1)(1 - alpha)) / n``) gives ``P(s <= q) >= 1 - alpha``; when the
scores are almost surely distinct, also ``P(s <= q) = k / (n + 1) <= 1 - alpha + 1 / (n + 1)``. When
``k > n``, that is ``n < (1 - alpha) / alpha``, no calibration score is large enough: the threshold is
``+inf`` (every set holds every class, every interval is the whole line), and a warning says so.
"""

from __future__ import annotations

import math
import warnings
from fractions import Fraction
from typing import Any

import torch

from uqkit._validation import check_float_tensor, check_positive_int, check_unit_interval

__all__ = ["check_alpha", "conformal_quantile", "conformal_rank", "minimum_calibration_size"]


def check_alpha(alpha: Any, name: str = "alpha") -> float:
    """Return ``alpha`` as a float if it is a number in the open interval ``(0, 1)``, else raise."""
    return check_unit_interval(alpha, name, open_left=True, open_right=True)


def _exact(alpha: float) -> Fraction:
    """``alpha`` as the shortest decimal that rounds to it (``0.1`` is read as 1/10, not as its binary value).

    This keeps ``(n + 1)(1 - alpha)`` exact: in floating point, ``10 * (1 - 0.7)`` is ``3.0000000000000004``,
    whose ceiling would be 4 instead of 3.
    """
    return Fraction(repr(float(alpha)))


def conformal_rank(n: int, alpha: float) -> int:
    """``k = ceil((n + 1)(1 - alpha))``, the rank of the conformal quantile among ``n`` calibration scores.

    Computed in exact rational arithmetic. ``k > n`` means that the threshold is infinite.
    """
    return math.ceil((n + 1) * (1 - _exact(alpha)))


def minimum_calibration_size(alpha: float) -> int:
    """The smallest ``n`` with a finite threshold at level ``alpha``: ``ceil((1 - alpha) / alpha)``."""
    alpha = check_alpha(alpha)
    exact = _exact(alpha)
    return math.ceil((1 - exact) / exact)


def conformal_quantile(scores: torch.Tensor, alpha: float, *, stacklevel: int = 2) -> torch.Tensor:
    """Split-conformal threshold: the ``ceil((n + 1)(1 - alpha))``-th smallest calibration score.

    With ``k = ceil((n + 1)(1 - alpha))`` (computed exactly, ``alpha`` read as the decimal it prints as), the
    threshold is the order statistic ``s_(k)``; a test point whose score is exchangeable with the ``n``
    calibration scores has ``P(s <= s_(k)) >= 1 - alpha``, and ``<= 1 - alpha + 1 / (n + 1)`` when the scores
    are distinct (Vovk et al. 2005; Lei et al. 2018, Theorem 2.2; Angelopoulos & Bates 2021, eq. 1). This is
    ``numpy.quantile(scores, k / n, method="lower")``, not the plain ``1 - alpha`` quantile, which
    under-covers by up to ``1 / (n + 1)``.

    When ``k > n`` (that is ``n < (1 - alpha) / alpha``: fewer than 9 scores at ``alpha = 0.1``, 19 at
    0.05), the threshold is ``+inf``, so that the coverage guarantee still holds (every set is the full set,
    every interval unbounded); a ``UserWarning`` says how many scores are needed for a finite one.

    Args:
        scores: ``[n]`` calibration scores, or ``[n, D]`` for ``D`` independent problems (one per column,
            e.g. one per regression output). Finite, ``n >= 1``.
        alpha: miscoverage level in ``(0, 1)``; the target coverage is ``1 - alpha``.
        stacklevel: which call the ``UserWarning`` names, as in ``warnings.warn``: 2 (default) the caller
            of this function; a calibrator's ``fit`` passes 3, its own caller.

    Returns:
        The threshold: a 0-d tensor for ``[n]`` scores, ``[D]`` for ``[n, D]``; dtype and device of
        ``scores``; ``+inf`` where ``k > n``.

    Raises:
        TypeError, ValueError: on a non-tensor, a non-float or non-finite tensor, a wrong rank, ``n = 0``, or
            ``alpha`` outside ``(0, 1)``, a ``stacklevel`` that is not an int ``>= 1``.
    """
    stacklevel = check_positive_int(stacklevel, "stacklevel")
    scores = check_float_tensor(scores, "scores", (1, 2), "[calibration] or [calibration, outputs]")
    alpha = check_alpha(alpha)
    n = int(scores.shape[0])
    if n == 0:
        raise ValueError(f"scores: expected at least one calibration score, got shape {tuple(scores.shape)}")
    k = conformal_rank(n, alpha)
    if k > n:
        warnings.warn(
            f"alpha={alpha} needs at least {minimum_calibration_size(alpha)} calibration examples for a "
            f"finite conformal threshold (n >= (1 - alpha) / alpha), got {n}: the threshold is +inf, so "
            "every prediction set holds every class and every interval is (-inf, inf)",
            UserWarning,
            stacklevel=stacklevel,
        )
        return torch.full(scores.shape[1:], math.inf, dtype=scores.dtype, device=scores.device)
    return scores.detach().kthvalue(k, dim=0).values
