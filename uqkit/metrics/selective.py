"""Selective prediction: how the error rate falls as the most uncertain predictions are abstained on.

Given per-example ``uncertainty`` (higher = less certain) and ``correct`` (``True`` where the prediction
is right), keeping the ``k`` most certain examples gives a selective risk (error rate among the kept) at
coverage ``k / n``.

Ties: examples with equal uncertainty cannot be ordered, so when the ``k`` kept examples take only part
of a group of tied examples, the number of errors counted from that group is its expected value under a
uniformly random order of the group: ``(number taken) * (errors in the group) / (size of the group)``.
The curves therefore do not depend on the input order, and a constant uncertainty gives a flat risk equal
to the overall error rate. Without ties this is the plain sort-and-count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from uqkit._validation import check_ndim, check_unit_interval
from uqkit.metrics._inputs import check_correct, check_same_device, check_scores

__all__ = ["ReferralCurve", "RiskCoverageCurve", "aurc", "referral_curve", "risk_coverage_curve"]


@dataclass(frozen=True)
class RiskCoverageCurve:
    """Selective risk at each coverage.

    Attributes:
        coverage: ``[n]`` float64, ``k / n`` for ``k = 1, ..., n``.
        risk: ``[n]`` float64, error rate among the ``k`` most certain examples (ties as in the module
            docstring).
    """

    coverage: torch.Tensor
    risk: torch.Tensor

    def to_dict(self) -> dict[str, list[float]]:
        """Plain Python lists (JSON-friendly)."""
        return {"coverage": self.coverage.tolist(), "risk": self.risk.tolist()}


@dataclass(frozen=True)
class ReferralCurve:
    """Accuracy on the examples kept after referring the most uncertain ones (Filos et al. 2019).

    Attributes:
        referred_fraction: ``[F]`` float64, the requested fractions of examples referred to an expert.
        accuracy: ``[F]`` float64, accuracy on the examples retained at each fraction.
    """

    referred_fraction: torch.Tensor
    accuracy: torch.Tensor

    def to_dict(self) -> dict[str, list[float]]:
        """Plain Python lists (JSON-friendly)."""
        return {"referred_fraction": self.referred_fraction.tolist(), "accuracy": self.accuracy.tolist()}


def _expected_errors_among_most_certain(uncertainty: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """``[n]`` float64: expected number of errors among the ``k`` most certain examples, ``k = 1..n``."""
    _, group, group_size = torch.unique(uncertainty, sorted=True, return_inverse=True, return_counts=True)
    group_size = group_size.double()
    group_errors = torch.zeros_like(group_size).index_add(0, group, (~correct).double())
    errors_before = group_errors.cumsum(0) - group_errors
    kept_before = group_size.cumsum(0) - group_size
    # The k-th most certain example (k = 1..n) belongs to the group whose sorted positions cover it.
    device = uncertainty.device
    group_of_rank = torch.repeat_interleave(
        torch.arange(group_size.numel(), device=device), group_size.long()
    )
    k = torch.arange(1, uncertainty.numel() + 1, dtype=torch.float64, device=device)
    taken = k - kept_before[group_of_rank]
    return errors_before[group_of_rank] + taken * group_errors[group_of_rank] / group_size[group_of_rank]


def _check_selective_inputs(
    uncertainty: torch.Tensor, correct: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    uncertainty = check_scores(uncertainty, "uncertainty")
    correct = check_correct(correct, uncertainty.numel())
    check_same_device(uncertainty=uncertainty, correct=correct)
    return uncertainty, correct


def risk_coverage_curve(uncertainty: torch.Tensor, correct: torch.Tensor) -> RiskCoverageCurve:
    """Risk-coverage curve of selective classification (El-Yaniv & Wiener 2010; Geifman & El-Yaniv 2017).

    Sort the examples by ``uncertainty`` ascending and keep the ``k`` most certain for ``k = 1, ..., n``:
    ``coverage_k = k / n`` and ``risk_k`` = error rate among the kept (ties: see the module docstring).

    Args:
        uncertainty: per-example uncertainty, higher = less certain (non-empty, finite).
        correct: bool, ``True`` where the prediction is correct.

    Returns:
        A :class:`RiskCoverageCurve` with ``n`` points.

    Shape:
        ``uncertainty``, ``correct``: ``[n]``; ``coverage``, ``risk``: ``[n]``.
    """
    uncertainty, correct = _check_selective_inputs(uncertainty, correct)
    expected_errors = _expected_errors_among_most_certain(uncertainty, correct)
    n = uncertainty.numel()
    k = torch.arange(1, n + 1, dtype=torch.float64, device=uncertainty.device)
    return RiskCoverageCurve(coverage=k / n, risk=expected_errors / k)


def aurc(uncertainty: torch.Tensor, correct: torch.Tensor) -> float:
    """Area under the risk-coverage curve, ``AURC = 1/n sum_{k=1}^n risk_k``.

    The mean selective risk over the coverages ``1/n, 2/n, ..., 1``, i.e. the right Riemann sum of the
    risk-coverage curve (Geifman et al. 2019, "Bias-reduced uncertainty estimation for deep neural
    classifiers"; Ding et al. 2020, "Revisiting the evaluation of uncertainty estimation"). Lower is
    better; ties as in the module docstring.

    Args:
        uncertainty: per-example uncertainty, higher = less certain (non-empty, finite).
        correct: bool, ``True`` where the prediction is correct.

    Returns:
        AURC in ``[0, 1]``.

    Shape:
        ``uncertainty``, ``correct``: ``[n]``.
    """
    return float(risk_coverage_curve(uncertainty, correct).risk.mean())


def _default_referred_fractions() -> torch.Tensor:
    return torch.arange(20, dtype=torch.float64) / 20  # 0.0, 0.05, ..., 0.95


def _check_referred_fractions(referred_fractions: Sequence[float] | torch.Tensor | None) -> torch.Tensor:
    if referred_fractions is None:
        return _default_referred_fractions()
    if isinstance(referred_fractions, torch.Tensor):
        check_ndim(referred_fractions, "referred_fractions", 1, "[fractions]")
        values = referred_fractions.tolist()
    elif isinstance(referred_fractions, Sequence) and not isinstance(referred_fractions, str):
        values = list(referred_fractions)
    else:
        raise TypeError(
            "referred_fractions: expected a sequence or 1-D tensor of numbers in [0, 1) or None, "
            f"got {type(referred_fractions).__name__}"
        )
    if not values:
        raise ValueError("referred_fractions: expected at least one fraction, got none")
    for value in values:
        check_unit_interval(value, "referred_fractions", open_right=True)
    return torch.tensor([float(v) for v in values], dtype=torch.float64)


def referral_curve(
    uncertainty: torch.Tensor,
    correct: torch.Tensor,
    referred_fractions: Sequence[float] | torch.Tensor | None = None,
) -> ReferralCurve:
    """Accuracy after referring the most uncertain examples to an expert (Filos et al. 2019).

    As in the diabetic retinopathy benchmark of Filos et al. 2019 ("A systematic comparison of Bayesian
    deep learning robustness in diabetic retinopathy tasks"), for each fraction ``f`` the
    ``round(f n)`` most uncertain examples (nearest integer, halves to even) are referred and the accuracy
    is measured on the ``n - round(f n)`` retained ones; at least one example is always retained. The
    accuracy at ``k`` retained examples is ``1 - risk_k`` of :func:`risk_coverage_curve`, ties included.

    Args:
        uncertainty: per-example uncertainty, higher = less certain (non-empty, finite).
        correct: bool, ``True`` where the prediction is correct.
        referred_fractions: fractions in ``[0, 1)`` to evaluate; default ``0.0, 0.05, ..., 0.95``.

    Returns:
        A :class:`ReferralCurve` with one point per fraction.

    Shape:
        ``uncertainty``, ``correct``: ``[n]``; ``referred_fraction``, ``accuracy``: ``[F]``.
    """
    uncertainty, correct = _check_selective_inputs(uncertainty, correct)
    fractions = _check_referred_fractions(referred_fractions).to(uncertainty.device)
    n = uncertainty.numel()
    referred = torch.round(fractions * n).long()
    retained = (n - referred).clamp_min(1)
    expected_errors = _expected_errors_among_most_certain(uncertainty, correct)
    accuracy = 1.0 - expected_errors[retained - 1] / retained.double()
    return ReferralCurve(referred_fraction=fractions, accuracy=accuracy)
