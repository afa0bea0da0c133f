"""Expected calibration error and reliability diagrams (calibration curves) for the top-label confidence.

Both functions share one binning routine, :func:`_bin_statistics`, so the ECE is always the weighted gap of
the curve that :func:`calibration_curve` returns.

Binning schemes:

* ``"equal_width"`` (Guo et al. 2017, "On calibration of modern neural networks", Sec. 2): ``M`` bins with
  edges ``e_m = m / M`` (computed in float64, then rounded to the dtype of ``probs``); bin ``m`` holds the
  confidences in ``(e_m, e_{m+1}]``, a half-open interval closed on the right, so a confidence exactly on an
  inner edge goes to the lower bin. A confidence of exactly 0 (impossible for the maximum of a
  distribution, but accepted) goes to the first bin.
* ``"equal_mass"`` (adaptive binning, Nixon et al. 2019, "Measuring calibration in deep learning"): the
  examples are sorted by confidence (a stable sort, so tied confidences keep their input order) and the
  sorted list is cut into ``M`` consecutive bins with the rule of ``torch.tensor_split`` /
  ``numpy.array_split``: with ``n = q M + r``, the first ``r`` bins hold ``q + 1`` examples and the others
  ``q``. Tied confidences may therefore fall into two neighbouring bins. When ``n < M`` the last bins are
  empty. Nixon et al.'s ACE also averages over classes; here the adaptive bins are used for the top-label
  ECE only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from uqkit._validation import check_choice, check_positive_int
from uqkit.metrics._inputs import check_probs_and_labels

__all__ = ["CalibrationCurve", "calibration_curve", "expected_calibration_error"]

BINNINGS = ("equal_width", "equal_mass")


@dataclass(frozen=True)
class CalibrationCurve:
    """Per-bin statistics of a reliability diagram.

    Attributes:
        bin_lower: ``[M]`` lower end of each bin. Equal-width: the edge ``m / M`` (exclusive). Equal-mass:
            the smallest confidence in the bin (inclusive), NaN for an empty bin.
        bin_upper: ``[M]`` upper end of each bin (inclusive). Equal-width: the edge ``(m + 1) / M``.
            Equal-mass: the largest confidence in the bin, NaN for an empty bin.
        confidence: ``[M]`` mean top-label confidence of the examples in each bin, NaN for an empty bin.
        accuracy: ``[M]`` fraction of correct top-label predictions in each bin, NaN for an empty bin.
        count: ``[M]`` number of examples in each bin (``torch.long``).
    """

    bin_lower: torch.Tensor
    bin_upper: torch.Tensor
    confidence: torch.Tensor
    accuracy: torch.Tensor
    count: torch.Tensor

    def to_dict(self) -> dict[str, list]:
        """Plain Python lists, JSON-friendly: floats (NaN replaced by ``None``) and integer counts."""
        return {
            "bin_lower": _to_list(self.bin_lower),
            "bin_upper": _to_list(self.bin_upper),
            "confidence": _to_list(self.confidence),
            "accuracy": _to_list(self.accuracy),
            "count": [int(c) for c in self.count.tolist()],
        }


def _to_list(values: torch.Tensor) -> list[float | None]:
    return [None if math.isnan(v) else float(v) for v in values.tolist()]


@dataclass(frozen=True)
class _BinSums:
    """Per-bin sums from which both the curve and the ECE are computed (sums in float64)."""

    bin_lower: torch.Tensor
    bin_upper: torch.Tensor
    count: torch.Tensor
    confidence_sum: torch.Tensor
    correct_sum: torch.Tensor
    num_examples: int


def _bin_statistics(probs: torch.Tensor, labels: torch.Tensor, num_bins: int, binning: str) -> _BinSums:
    """Validate the inputs, assign each example to a bin and sum its confidence and correctness per bin."""
    probs, labels = check_probs_and_labels(probs, labels)
    num_bins = check_positive_int(num_bins, "num_bins")
    binning = check_choice(binning, "binning", BINNINGS)

    predicted = probs.argmax(dim=-1)
    confidence = probs.gather(1, predicted.unsqueeze(1)).squeeze(1).contiguous()
    correct = predicted == labels
    n, device = confidence.shape[0], probs.device

    if binning == "equal_width":
        edges = (torch.arange(num_bins + 1, dtype=torch.float64, device=device) / num_bins).to(probs.dtype)
        # searchsorted (left) returns the first edge >= c, i.e. m + 1 for c in (e_m, e_{m+1}].
        bin_index = (torch.searchsorted(edges, confidence) - 1).clamp(0, num_bins - 1)
        bin_lower, bin_upper = edges[:-1], edges[1:]
    else:
        order = torch.argsort(confidence, stable=True)
        bins = torch.arange(num_bins, device=device)
        sizes = n // num_bins + (bins < n % num_bins).long()
        bin_of_rank = torch.repeat_interleave(bins, sizes)
        bin_index = torch.empty_like(order)
        bin_index[order] = bin_of_rank
        nan = torch.full((num_bins,), float("nan"), dtype=probs.dtype, device=device)
        bin_lower = nan.scatter_reduce(0, bin_index, confidence, "amin", include_self=False)
        bin_upper = nan.scatter_reduce(0, bin_index, confidence, "amax", include_self=False)

    zeros = torch.zeros(num_bins, dtype=torch.float64, device=device)
    return _BinSums(
        bin_lower=bin_lower,
        bin_upper=bin_upper,
        count=torch.bincount(bin_index, minlength=num_bins),
        confidence_sum=zeros.index_add(0, bin_index, confidence.double()),
        correct_sum=zeros.index_add(0, bin_index, correct.double()),
        num_examples=n,
    )


def calibration_curve(
    probs: torch.Tensor, labels: torch.Tensor, num_bins: int = 15, binning: str = "equal_width"
) -> CalibrationCurve:
    """Reliability diagram of the top-label confidence: mean confidence and accuracy per confidence bin.

    Args:
        probs: predictive probabilities, rows summing to 1.
        labels: true class indices in ``[0, C)``.
        num_bins: number of bins ``M`` (a positive int; 15 as in Guo et al. 2017).
        binning: ``"equal_width"`` or ``"equal_mass"``; see the module docstring for the exact rules.

    Returns:
        A :class:`CalibrationCurve`; ``confidence``, ``accuracy`` and the bin ends are in the dtype of
        ``probs``.

    Shape:
        ``probs``: ``[B, C]``; ``labels``: ``[B]``; every field of the result: ``[M]``.
    """
    sums = _bin_statistics(probs, labels, num_bins, binning)
    count = sums.count.double()
    empty = sums.count == 0
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=probs.device)
    return CalibrationCurve(
        bin_lower=sums.bin_lower,
        bin_upper=sums.bin_upper,
        confidence=torch.where(empty, nan, sums.confidence_sum / count).to(probs.dtype),
        accuracy=torch.where(empty, nan, sums.correct_sum / count).to(probs.dtype),
        count=sums.count,
    )


def expected_calibration_error(
    probs: torch.Tensor, labels: torch.Tensor, num_bins: int = 15, binning: str = "equal_width"
) -> float:
    """Expected calibration error of the top-label confidence (Guo et al. 2017, eq. 3).

    ``ECE = sum_m |B_m| / n * |acc(B_m) - conf(B_m)|``, where ``B_m`` are the examples in bin ``m``,
    ``acc`` their accuracy and ``conf`` their mean confidence; empty bins contribute 0. Equivalently
    ``1/n sum_m |sum_{i in B_m} (1[correct_i] - conf_i)|``, which is how it is computed (in float64).

    Args:
        probs: predictive probabilities, rows summing to 1.
        labels: true class indices in ``[0, C)``.
        num_bins: number of bins ``M`` (a positive int; 15 as in Guo et al. 2017).
        binning: ``"equal_width"`` (Guo et al. 2017) or ``"equal_mass"`` (adaptive bins, Nixon et al.
            2019); see the module docstring for the exact rules.

    Returns:
        ECE in ``[0, 1]``.

    Shape:
        ``probs``: ``[B, C]``; ``labels``: ``[B]``.
    """
    sums = _bin_statistics(probs, labels, num_bins, binning)
    return float((sums.correct_sum - sums.confidence_sum).abs().sum() / sums.num_examples)
