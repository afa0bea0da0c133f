"""Statistics over seeds: mean and standard error, Student's t tail, the paired t-test, aggregated blocks."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from uqkit.bench.seeds import (
    aggregate_seed_blocks,
    mean_and_standard_error,
    paired_t_test,
    student_t_two_sided_p,
)

stats = pytest.importorskip("scipy.stats")


def test_mean_and_standard_error_match_numpy():
    values = [0.31, 0.29, 0.35, 0.30]
    summary = mean_and_standard_error(values)
    assert summary["n"] == 4
    assert summary["mean"] == pytest.approx(np.mean(values), abs=1e-15)
    assert summary["se"] == pytest.approx(np.std(values, ddof=1) / math.sqrt(4), abs=1e-15)


def test_mean_and_standard_error_undefined_cases():
    assert mean_and_standard_error([0.3]) == {"mean": 0.3, "se": None, "n": 1}
    assert mean_and_standard_error([0.3, None]) == {"mean": None, "se": None, "n": 2}
    assert mean_and_standard_error([0.3, float("nan")])["mean"] is None
    with pytest.raises(TypeError, match="values: expected numbers or None"):
        mean_and_standard_error([0.3, "0.4"])


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 8, 19, 30])
@pytest.mark.parametrize("t", [0.0, 0.5, -1.3, 2.2, 4.0, 12.0])
def test_student_t_tail_equals_scipy(t, df):
    # Abramowitz & Stegun's finite series are exact: agreement to rounding error.
    assert student_t_two_sided_p(t, df) == pytest.approx(2 * stats.t.sf(abs(t), df), abs=1e-12)


def test_student_t_tail_closed_forms():
    # df = 1 (Cauchy): p = 1 - 2 atan(|t|) / pi; df = 2: p = 1 - |t| / sqrt(2 + t^2).
    assert student_t_two_sided_p(1.0, 1) == pytest.approx(0.5, abs=1e-15)
    assert student_t_two_sided_p(3.0, 2) == pytest.approx(1 - 3 / math.sqrt(11), abs=1e-15)
    assert student_t_two_sided_p(math.inf, 3) == 0.0
    with pytest.raises(ValueError, match="df: expected a positive integer, got 0"):
        student_t_two_sided_p(1.0, 0)


def test_paired_t_test_by_hand():
    # d = [1, 2, 3]: mean 2, s = 1, t = 2 / (1 / sqrt 3) = 2 sqrt 3 with 2 degrees of freedom.
    t, p = paired_t_test([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])
    assert t == pytest.approx(2 * math.sqrt(3), abs=1e-12)
    assert p == pytest.approx(1 - t / math.sqrt(2 + t * t), abs=1e-12)


def test_paired_t_test_tells_a_real_difference_from_noise():
    nll = [0.312, 0.298, 0.325, 0.305, 0.317]
    noise = [0.004, -0.006, 0.002, -0.003, 0.005]  # no systematic difference
    shift = [0.021, 0.019, 0.024, 0.018, 0.022]  # about 0.02 worse on every seed
    equal = [a + d for a, d in zip(nll, noise, strict=True)]
    worse = [a + d for a, d in zip(nll, shift, strict=True)]
    for other, significant in ((equal, False), (worse, True)):
        t, p = paired_t_test(other, nll)
        reference = stats.ttest_rel(other, nll)
        assert t == pytest.approx(reference.statistic, rel=1e-10)
        assert p == pytest.approx(reference.pvalue, rel=1e-9)
        assert (p < 0.05) is significant
    # Paired, the 0.02 gap is measured against the differences' spread (0.002), not the seeds' (0.01).
    assert paired_t_test(worse, nll)[1] < 1e-4


def test_paired_t_test_degenerate_cases():
    assert paired_t_test([0.9, 0.8], [0.9, 0.8]) == (0.0, 1.0)  # identical on every seed
    assert paired_t_test([1.0, 2.0], [0.5, 1.5]) == (math.inf, 0.0)  # the same gap on every seed
    assert paired_t_test([0.9], [0.8]) is None  # one seed: no test
    assert paired_t_test([0.9, None], [0.8, 0.7]) is None
    with pytest.raises(ValueError, match="one value per seed in each, got 2 and 3"):
        paired_t_test([0.1, 0.2], [0.1, 0.2, 0.3])


def _block(rng: np.random.Generator) -> dict:
    """A classification result block with the keys that aggregation treats specially."""
    count = rng.integers(0, 50, 4).tolist()
    count[0] = 0
    confidence = [None if c == 0 else float(x) for c, x in zip(count, rng.uniform(0.3, 1.0, 4), strict=True)]
    accuracy = [None if c == 0 else float(x) for c, x in zip(count, rng.uniform(0.3, 1.0, 4), strict=True)]
    return {
        "num_samples": 5,
        "train_time_s": float(rng.uniform(1, 2)),
        "inference_ms_per_example": float(rng.uniform(0.01, 0.02)),
        "description": "a method",
        "metrics": {key: float(rng.uniform(0.1, 0.9)) for key in ("accuracy", "nll", "brier", "ece", "aurc")},
        "calibration_curve": {
            "bin_lower": [0.0, 0.25, 0.5, 0.75],
            "bin_upper": [0.25, 0.5, 0.75, 1.0],
            "confidence": confidence,
            "accuracy": accuracy,
            "count": count,
        },
        "referral_curve": {"referred_fraction": [0.0, 0.5], "accuracy": rng.uniform(0.8, 1, 2).tolist()},
        "risk_coverage": {"coverage": [0.5, 1.0], "risk": rng.uniform(0, 0.2, 2).tolist()},
        "ood": {
            "digits": {
                "total": {"auroc": float(rng.uniform(0.5, 1)), "aupr": 0.7, "fpr95": None},
                "epistemic": {"auroc": 0.5, "aupr": 0.5, "fpr95": 0.95},
                "scores": {"kind": "total", "in": rng.uniform(0, 1, 3).tolist(), "ood": [1.0, 2.0]},
            }
        },
        "shift": None,
        "history": [{"epoch": 1, "val_nll": float(rng.uniform(0.2, 0.4))}],
        "selected_epochs": [int(rng.integers(1, 4))],
    }


def test_aggregate_seed_blocks_means_pools_and_keeps_every_seed():
    rng = np.random.default_rng(0)
    blocks = {3: _block(rng), 1: _block(rng), 2: _block(rng)}
    before = copy.deepcopy(blocks)
    aggregated = aggregate_seed_blocks(blocks)
    assert blocks == before  # the seeds' blocks are not modified
    ordered = list(blocks.values())
    assert list(aggregated["seeds"]) == ["3", "1", "2"]
    assert aggregated["seeds"]["1"] == blocks[1]
    for key in ("accuracy", "nll", "brier", "ece", "aurc"):
        values = [block["metrics"][key] for block in ordered]
        assert aggregated["metrics"][key] == pytest.approx(np.mean(values), abs=1e-15)
        summary = aggregated["summary"][f"metrics.{key}"]
        assert summary["mean"] == aggregated["metrics"][key] and summary["n"] == 3
        assert summary["se"] == pytest.approx(np.std(values, ddof=1) / math.sqrt(3), abs=1e-15)
    mean_risk = np.mean([block["risk_coverage"]["risk"] for block in ordered], axis=0)
    np.testing.assert_allclose(aggregated["risk_coverage"]["risk"], mean_risk, rtol=0, atol=1e-15)
    assert aggregated["risk_coverage"]["coverage"] == [0.5, 1.0]
    total_auroc = np.mean([block["ood"]["digits"]["total"]["auroc"] for block in ordered])
    assert aggregated["ood"]["digits"]["total"]["auroc"] == pytest.approx(total_auroc, abs=1e-15)
    assert aggregated["ood"]["digits"]["total"]["fpr95"] is None  # undefined stays undefined
    assert aggregated["summary"]["ood.digits.total.fpr95"] == {"mean": None, "se": None, "n": 3}
    assert aggregated["summary"]["train_time_s"]["mean"] == aggregated["train_time_s"]
    # per-input scores, history and selected epochs are not averaged: the first seed's
    assert aggregated["ood"]["digits"]["scores"] == blocks[3]["ood"]["digits"]["scores"]
    assert aggregated["history"] == blocks[3]["history"]
    assert aggregated["selected_epochs"] == blocks[3]["selected_epochs"]
    assert aggregated["num_samples"] == 5 and aggregated["shift"] is None
    # the reliability diagram pools the seeds' bins: counts add up, per-bin means weighted by counts
    curve = aggregated["calibration_curve"]
    counts = np.array([block["calibration_curve"]["count"] for block in ordered])
    assert curve["count"] == counts.sum(axis=0).tolist()
    assert curve["confidence"][0] is None and curve["accuracy"][0] is None  # empty in every seed
    for index in range(1, 4):
        if counts[:, index].sum() == 0:
            continue
        weighted = sum(
            block["calibration_curve"]["count"][index] * block["calibration_curve"]["accuracy"][index]
            for block in ordered
            if block["calibration_curve"]["count"][index]
        )
        assert curve["accuracy"][index] == pytest.approx(weighted / counts[:, index].sum(), abs=1e-15)


def test_aggregate_seed_blocks_rejects_mismatched_or_too_few_blocks():
    rng = np.random.default_rng(1)
    with pytest.raises(ValueError, match="at least 2 seeds"):
        aggregate_seed_blocks({0: _block(rng)})
    first, second = _block(rng), _block(rng)
    second["risk_coverage"]["risk"] = [0.1, 0.2, 0.3]
    second["risk_coverage"]["coverage"] = [0.3, 0.6, 1.0]
    with pytest.raises(ValueError, match=r"risk_coverage.coverage: expected lists of one length"):
        aggregate_seed_blocks({0: first, 1: second})
