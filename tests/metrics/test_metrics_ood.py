"""OOD AUROC / AUPR against scikit-learn (with ties), FPR@95%TPR against a slow threshold sweep."""

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from uqkit.metrics import fpr_at_95_tpr, ood_aupr, ood_auroc

DTYPES = [torch.float32, torch.float64]
SEEDS = [0, 1, 2, 3]


def random_scores(seed: int, n_in: int, n_ood: int, dtype: torch.dtype, ties: bool):
    generator = torch.Generator().manual_seed(seed)
    in_scores = torch.randn(n_in, generator=generator, dtype=torch.float64)
    ood_scores = torch.randn(n_ood, generator=generator, dtype=torch.float64) + 0.8
    if ties:  # a coarse grid: many scores shared within and across the two sets
        in_scores, ood_scores = (in_scores * 2).round() / 2, (ood_scores * 2).round() / 2
    return in_scores.to(dtype), ood_scores.to(dtype)


def sklearn_inputs(in_scores: torch.Tensor, ood_scores: torch.Tensor):
    y_true = np.concatenate([np.zeros(len(in_scores)), np.ones(len(ood_scores))])
    y_score = np.concatenate([in_scores.double().numpy(), ood_scores.double().numpy()])
    return y_true, y_score


def reference_fpr_at_95_tpr(in_scores: torch.Tensor, ood_scores: torch.Tensor) -> float:
    """Sweep every candidate threshold; the smallest FPR among those flagging >= 95% of OOD inputs."""
    ins, oods = in_scores.double().tolist(), ood_scores.double().tolist()
    best = None
    for threshold in sorted(set(ins) | set(oods)):
        flagged_ood = sum(s >= threshold for s in oods)
        if 100 * flagged_ood >= 95 * len(oods):  # TPR >= 0.95 in exact integer arithmetic
            fpr = sum(s >= threshold for s in ins) / len(ins)
            best = fpr if best is None else min(best, fpr)
    return best


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize(("n_in", "n_ood"), [(120, 80), (37, 211), (1, 5), (6, 1)])
def test_auroc_and_aupr_match_sklearn(dtype, seed, ties, n_in, n_ood):
    in_scores, ood_scores = random_scores(seed, n_in, n_ood, dtype, ties)
    y_true, y_score = sklearn_inputs(in_scores, ood_scores)
    assert ood_auroc(in_scores, ood_scores) == pytest.approx(roc_auc_score(y_true, y_score), abs=1e-12)
    assert ood_aupr(in_scores, ood_scores) == pytest.approx(
        average_precision_score(y_true, y_score), abs=1e-12
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize(("n_in", "n_ood"), [(120, 80), (50, 20), (30, 7), (9, 1), (10, 100)])
def test_fpr_at_95_tpr_matches_threshold_sweep(dtype, seed, ties, n_in, n_ood):
    in_scores, ood_scores = random_scores(seed, n_in, n_ood, dtype, ties)
    assert fpr_at_95_tpr(in_scores, ood_scores) == reference_fpr_at_95_tpr(in_scores, ood_scores)


def test_fpr_at_95_tpr_threshold_is_the_ceil_95_percent_ood_score():
    # 20 OOD scores 1..20: ceil(0.95 * 20) = 19 must be flagged -> threshold = 2 (19 scores >= 2).
    ood = torch.arange(1.0, 21.0)
    in_scores = torch.tensor([0.5, 1.0, 1.5, 2.0, 2.5, 30.0])  # 2.0, 2.5, 30.0 are >= 2
    assert fpr_at_95_tpr(in_scores, ood) == pytest.approx(3 / 6)
    # 21 OOD scores 0..20: ceil(19.95) = 20 must be flagged -> threshold = 1 (20 scores >= 1);
    # in-distribution scores >= 1: 1.0, 1.5, 2.0, 2.5, 30.0.
    ood = torch.arange(0.0, 21.0)
    assert fpr_at_95_tpr(in_scores, ood) == pytest.approx(5 / 6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_closed_forms(dtype):
    in_scores = torch.tensor([0.1, 0.2, 0.3], dtype=dtype)
    ood_scores = torch.tensor([0.7, 0.8], dtype=dtype)
    assert ood_auroc(in_scores, ood_scores) == 1.0
    assert ood_aupr(in_scores, ood_scores) == 1.0
    assert fpr_at_95_tpr(in_scores, ood_scores) == 0.0
    # Swapped: every OOD score below every in-distribution score.
    assert ood_auroc(ood_scores, in_scores) == 0.0
    assert fpr_at_95_tpr(ood_scores, in_scores) == 1.0
    # Constant scores carry no information.
    constant_in, constant_ood = torch.zeros(3, dtype=dtype), torch.zeros(5, dtype=dtype)
    assert ood_auroc(constant_in, constant_ood) == 0.5
    assert ood_aupr(constant_in, constant_ood) == pytest.approx(5 / 8)
    assert fpr_at_95_tpr(constant_in, constant_ood) == 1.0


def test_mixed_dtypes_are_accepted():
    in32, ood32 = random_scores(4, 40, 30, torch.float32, ties=True)
    assert ood_auroc(in32, ood32.double()) == ood_auroc(in32, ood32)
    assert ood_aupr(in32.double(), ood32) == ood_aupr(in32, ood32)


@pytest.mark.parametrize("metric", [ood_auroc, ood_aupr, fpr_at_95_tpr])
@pytest.mark.parametrize(
    ("in_scores", "ood_scores", "error", "match"),
    [
        (torch.empty(0), torch.ones(3), ValueError, "in_scores: expected at least one score"),
        (torch.ones(3), torch.empty(0), ValueError, "ood_scores: expected at least one score"),
        (torch.ones(3, 1), torch.ones(3), ValueError, "in_scores: expected a 1-D tensor"),
        (torch.ones(3), torch.ones(2, 2), ValueError, "ood_scores: expected a 1-D tensor"),
        (torch.tensor([0.0, float("nan")]), torch.ones(3), ValueError, "in_scores: expected finite"),
        (torch.ones(3), torch.tensor([float("inf")]), ValueError, "ood_scores: expected finite"),
        (torch.ones(3, dtype=torch.long), torch.ones(3), TypeError, "in_scores: expected a floating-point"),
        ([0.1, 0.2], torch.ones(3), TypeError, "in_scores: expected a torch.Tensor"),
    ],
)
def test_bad_inputs_are_rejected(metric, in_scores, ood_scores, error, match):
    with pytest.raises(error, match=match):
        metric(in_scores, ood_scores)
