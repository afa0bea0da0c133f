"""Out-of-distribution detection metrics from per-example uncertainty scores.

Conventions for every function here: ``in_scores`` are the scores of in-distribution inputs and
``ood_scores`` those of out-of-distribution inputs; a higher score means "more likely OOD" (entropy, mutual
information, 1 - max probability, ...), and OOD is the positive class. Scores that tie are handled as
scikit-learn does: a threshold ``t`` flags every input with score ``>= t``.
"""

from __future__ import annotations

import torch

from uqkit.metrics._inputs import check_same_device, check_scores

__all__ = ["fpr_at_95_tpr", "ood_aupr", "ood_auroc"]


def _check_in_and_ood(in_scores: torch.Tensor, ood_scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate both score sets and return them as float64 (exact for float32 and float64 inputs)."""
    in_scores = check_scores(in_scores, "in_scores")
    ood_scores = check_scores(ood_scores, "ood_scores")
    check_same_device(in_scores=in_scores, ood_scores=ood_scores)
    return in_scores.double(), ood_scores.double()


def _counts_per_distinct_score(
    in_scores: torch.Tensor, ood_scores: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Distinct scores (ascending) and, for each, how many in-distribution and OOD inputs have it."""
    scores = torch.cat([in_scores, ood_scores])
    is_ood = torch.cat([torch.zeros_like(in_scores), torch.ones_like(ood_scores)])
    distinct, group, counts = torch.unique(scores, sorted=True, return_inverse=True, return_counts=True)
    ood_counts = torch.zeros_like(distinct).index_add(0, group, is_ood)
    return distinct, counts.double() - ood_counts, ood_counts


def ood_auroc(in_scores: torch.Tensor, ood_scores: torch.Tensor) -> float:
    """Area under the ROC curve for separating OOD (positive) from in-distribution inputs.

    Computed as the Mann-Whitney U statistic, ``P(s_ood > s_in) + 1/2 P(s_ood = s_in)`` (Hanley & McNeil
    1982): rank all scores together, give tied scores their average rank, and
    ``AUROC = (R_ood - n_ood (n_ood + 1) / 2) / (n_ood n_in)`` with ``R_ood`` the rank sum of the OOD
    scores. This equals the trapezoidal area under the ROC curve, ties included, as in scikit-learn's
    ``roc_auc_score``.

    Args:
        in_scores: scores of in-distribution inputs (non-empty, finite).
        ood_scores: scores of OOD inputs (non-empty, finite); higher means more likely OOD.

    Returns:
        AUROC in ``[0, 1]``; 0.5 for uninformative scores.

    Shape:
        ``in_scores``: ``[N_in]``; ``ood_scores``: ``[N_ood]``.
    """
    in_scores, ood_scores = _check_in_and_ood(in_scores, ood_scores)
    _, in_counts, ood_counts = _counts_per_distinct_score(in_scores, ood_scores)
    counts = in_counts + ood_counts
    # Ranks (1-based) of a group of tied scores run from end - count + 1 to end; their average:
    average_rank = counts.cumsum(0) - (counts - 1) / 2
    n_in, n_ood = in_scores.numel(), ood_scores.numel()
    rank_sum_ood = (average_rank * ood_counts).sum()
    return float((rank_sum_ood - n_ood * (n_ood + 1) / 2) / (n_ood * n_in))


def ood_aupr(in_scores: torch.Tensor, ood_scores: torch.Tensor) -> float:
    """Area under the precision-recall curve with OOD as the positive class, as average precision.

    ``AP = sum_k (R_k - R_{k-1}) P_k`` over the distinct score thresholds ``t_1 > t_2 > ...`` (with
    ``R_0 = 0``), where at threshold ``t_k`` every input with score ``>= t_k`` is flagged, ``P_k`` is the
    fraction of flagged inputs that are OOD and ``R_k`` the fraction of OOD inputs flagged. Tied scores
    therefore enter together, with no interpolation, as in scikit-learn's ``average_precision_score``.

    Args:
        in_scores: scores of in-distribution inputs (non-empty, finite).
        ood_scores: scores of OOD inputs (non-empty, finite); higher means more likely OOD.

    Returns:
        Average precision in ``(0, 1]``; ``n_ood / (n_ood + n_in)`` for uninformative scores.

    Shape:
        ``in_scores``: ``[N_in]``; ``ood_scores``: ``[N_ood]``.
    """
    in_scores, ood_scores = _check_in_and_ood(in_scores, ood_scores)
    _, in_counts, ood_counts = _counts_per_distinct_score(in_scores, ood_scores)
    # Thresholds from the highest score down: cumulative counts of flagged inputs.
    in_counts, ood_counts = in_counts.flip(0), ood_counts.flip(0)
    true_positives = ood_counts.cumsum(0)
    flagged = true_positives + in_counts.cumsum(0)
    precision = true_positives / flagged
    recall_step = ood_counts / ood_scores.numel()
    return float((recall_step * precision).sum())


def fpr_at_95_tpr(in_scores: torch.Tensor, ood_scores: torch.Tensor) -> float:
    """False positive rate at 95% true positive rate: in-distribution inputs wrongly flagged as OOD.

    Threshold rule: ``t`` is the largest threshold that flags at least 95% of the OOD inputs, i.e. the
    ``k``-th largest OOD score with ``k = ceil(0.95 n_ood)`` (computed exactly in integers). The result is
    the fraction of in-distribution inputs with score ``>= t``. Because the false positive rate can only
    grow as the threshold falls, this is the smallest false positive rate of any threshold whose true
    positive rate is at least 0.95 (Hendrycks & Gimpel 2017; Liang et al. 2018).

    Args:
        in_scores: scores of in-distribution inputs (non-empty, finite).
        ood_scores: scores of OOD inputs (non-empty, finite); higher means more likely OOD.

    Returns:
        False positive rate in ``[0, 1]``; lower is better.

    Shape:
        ``in_scores``: ``[N_in]``; ``ood_scores``: ``[N_ood]``.
    """
    in_scores, ood_scores = _check_in_and_ood(in_scores, ood_scores)
    n_ood = ood_scores.numel()
    k = -(-95 * n_ood // 100)  # ceil(0.95 n_ood) without floating-point rounding
    threshold = torch.topk(ood_scores, k).values[-1]
    return float((in_scores >= threshold).double().mean())
