"""Risk-coverage curves, AURC and referral curves against slow loops, including the tie rule."""

import itertools
import json

import pytest
import torch

from uqkit.metrics import ReferralCurve, RiskCoverageCurve, aurc, referral_curve, risk_coverage_curve

DTYPES = [torch.float32, torch.float64]


def random_selective_inputs(seed: int, n: int, dtype: torch.dtype, ties: bool):
    generator = torch.Generator().manual_seed(seed)
    uncertainty = torch.rand(n, generator=generator, dtype=torch.float64)
    # Errors are more likely when uncertain, so the curves are informative.
    correct = torch.rand(n, generator=generator, dtype=torch.float64) > 0.8 * uncertainty
    if ties:
        uncertainty = (uncertainty * 4).floor()
    return uncertainty.to(dtype), correct


def reference_risks_without_ties(uncertainty: torch.Tensor, correct: torch.Tensor) -> list[float]:
    pairs = sorted(zip(uncertainty.tolist(), correct.tolist(), strict=True))
    risks = []
    for k in range(1, len(pairs) + 1):
        risks.append(sum(not right for _, right in pairs[:k]) / k)
    return risks


def reference_risks_with_ties(uncertainty: torch.Tensor, correct: torch.Tensor) -> list[float]:
    """Expected errors among the k most certain when ties are broken uniformly at random."""
    u, c = uncertainty.tolist(), correct.tolist()
    n = len(u)
    kth_smallest = sorted(u)
    risks = []
    for k in range(1, n + 1):
        boundary = kth_smallest[k - 1]
        below = [i for i in range(n) if u[i] < boundary]
        tied = [i for i in range(n) if u[i] == boundary]
        errors_below = sum(not c[i] for i in below)
        errors_tied = sum(not c[i] for i in tied)
        risks.append((errors_below + (k - len(below)) * errors_tied / len(tied)) / k)
    return risks


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_risk_coverage_without_ties_matches_sort_and_count(dtype, seed):
    uncertainty, correct = random_selective_inputs(seed, 157, dtype, ties=False)
    assert uncertainty.unique().numel() == 157
    curve = risk_coverage_curve(uncertainty, correct)
    expected = reference_risks_without_ties(uncertainty, correct)
    torch.testing.assert_close(curve.risk, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(curve.coverage, torch.arange(1, 158, dtype=torch.float64) / 157)
    assert aurc(uncertainty, correct) == pytest.approx(sum(expected) / len(expected), abs=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_risk_coverage_with_ties_matches_slow_expectation(dtype, seed):
    uncertainty, correct = random_selective_inputs(seed, 90, dtype, ties=True)
    curve = risk_coverage_curve(uncertainty, correct)
    expected = reference_risks_with_ties(uncertainty, correct)
    torch.testing.assert_close(curve.risk, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)
    assert aurc(uncertainty, correct) == pytest.approx(sum(expected) / len(expected), abs=1e-12)


def test_tie_rule_is_the_average_over_all_orders_of_the_ties():
    uncertainty = torch.tensor([0.3, 0.1, 0.3, 0.3, 0.1, 0.9, 0.3])
    correct = torch.tensor([True, False, False, True, True, False, False])
    n = len(uncertainty)
    # Brute force: every input order, stable sort, plain sort-and-count; then average the curves.
    total = torch.zeros(n, dtype=torch.float64)
    permutations = list(itertools.permutations(range(n)))
    for permutation in permutations:
        index = torch.tensor(permutation)
        order = torch.argsort(uncertainty[index], stable=True)
        errors = (~correct[index][order]).double().cumsum(0)
        total += errors / torch.arange(1, n + 1)
    torch.testing.assert_close(risk_coverage_curve(uncertainty, correct).risk, total / len(permutations))


def test_curves_do_not_depend_on_input_order():
    uncertainty, correct = random_selective_inputs(7, 60, torch.float64, ties=True)
    permutation = torch.randperm(60, generator=torch.Generator().manual_seed(0))
    first = risk_coverage_curve(uncertainty, correct)
    second = risk_coverage_curve(uncertainty[permutation], correct[permutation])
    torch.testing.assert_close(first.risk, second.risk)
    torch.testing.assert_close(
        referral_curve(uncertainty, correct).accuracy,
        referral_curve(uncertainty[permutation], correct[permutation]).accuracy,
    )


def test_constant_uncertainty_gives_flat_risk_at_the_error_rate():
    correct = torch.tensor([True, False, True, True, False, True, True, True])
    curve = risk_coverage_curve(torch.ones(8), correct)
    torch.testing.assert_close(curve.risk, torch.full((8,), 2 / 8, dtype=torch.float64))
    assert aurc(torch.ones(8), correct) == pytest.approx(0.25)


def test_aurc_closed_forms():
    correct = torch.tensor([True, True, True, False])
    # Perfect ranking (the error is the most uncertain): risks 0, 0, 0, 1/4 -> AURC = 1/16.
    assert aurc(torch.tensor([0.1, 0.2, 0.3, 0.4]), correct) == pytest.approx(1 / 16)
    # Worst ranking (the error is the most certain): risks 1, 1/2, 1/3, 1/4 -> AURC = 25/48.
    assert aurc(torch.tensor([0.4, 0.3, 0.2, 0.1]), correct) == pytest.approx(25 / 48)


def reference_referral_accuracy(uncertainty, correct, fractions) -> list[float]:
    pairs = sorted(zip(uncertainty.tolist(), correct.tolist(), strict=True))
    n = len(pairs)
    accuracies = []
    for fraction in fractions:
        retained = max(1, n - round(fraction * n))  # Python round: nearest, halves to even
        accuracies.append(sum(right for _, right in pairs[:retained]) / retained)
    return accuracies


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n", [1, 10, 101])
def test_referral_curve_default_fractions_match_slow_loop(dtype, seed, n):
    uncertainty, correct = random_selective_inputs(seed, n, dtype, ties=False)
    curve = referral_curve(uncertainty, correct)
    fractions = [i / 20 for i in range(20)]
    assert curve.referred_fraction.tolist() == fractions
    expected = reference_referral_accuracy(uncertainty, correct, fractions)
    torch.testing.assert_close(curve.accuracy, torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("as_tensor", [False, True])
def test_referral_curve_custom_fractions_keep_at_least_one(as_tensor):
    uncertainty, correct = random_selective_inputs(3, 10, torch.float64, ties=False)
    fractions = [0.0, 0.25, 0.5, 0.96, 0.999]  # 10 * 0.999 rounds to 10: still one retained
    argument = torch.tensor(fractions) if as_tensor else fractions
    curve = referral_curve(uncertainty, correct, argument)
    expected = reference_referral_accuracy(uncertainty, correct, curve.referred_fraction.tolist())
    torch.testing.assert_close(curve.accuracy, torch.tensor(expected, dtype=torch.float64))
    most_certain = int(torch.argmin(uncertainty))
    assert float(curve.accuracy[-1]) == float(correct[most_certain])


def test_referral_accuracy_is_one_minus_risk():
    uncertainty, correct = random_selective_inputs(11, 40, torch.float32, ties=True)
    risk = risk_coverage_curve(uncertainty, correct).risk
    curve = referral_curve(uncertainty, correct, [0.0, 0.5, 0.75])  # retain 40, 20, 10
    torch.testing.assert_close(curve.accuracy, 1 - risk[[39, 19, 9]])


def test_to_dict_is_json_friendly():
    uncertainty, correct = random_selective_inputs(0, 5, torch.float32, ties=False)
    rc = risk_coverage_curve(uncertainty, correct)
    ref = referral_curve(uncertainty, correct)
    assert isinstance(rc, RiskCoverageCurve) and isinstance(ref, ReferralCurve)
    assert json.loads(json.dumps(rc.to_dict()))["risk"] == rc.risk.tolist()
    assert json.loads(json.dumps(ref.to_dict()))["accuracy"] == ref.accuracy.tolist()


GOOD_U, GOOD_C = torch.tensor([0.1, 0.2, 0.3]), torch.tensor([True, False, True])


@pytest.mark.parametrize(
    "function",
    [risk_coverage_curve, aurc, referral_curve],
)
@pytest.mark.parametrize(
    ("uncertainty", "correct", "error", "match"),
    [
        (GOOD_U, torch.tensor([1, 0, 1]), TypeError, "correct: expected a bool tensor"),
        (GOOD_U, torch.tensor([True, False]), ValueError, "correct: expected 3 entries"),
        (GOOD_U, torch.tensor([[True, False, True]]), ValueError, "correct: expected a 1-D"),
        (GOOD_U, [True, False, True], TypeError, "correct: expected a torch.Tensor"),
        (torch.empty(0), torch.empty(0, dtype=torch.bool), ValueError, "uncertainty: expected at least one"),
        (torch.tensor([0.1, float("nan"), 0.3]), GOOD_C, ValueError, "uncertainty: expected finite"),
        (torch.ones(3, 1), GOOD_C, ValueError, "uncertainty: expected a 1-D"),
        (torch.tensor([1, 2, 3]), GOOD_C, TypeError, "uncertainty: expected a floating-point"),
    ],
)
def test_bad_inputs_are_rejected(function, uncertainty, correct, error, match):
    with pytest.raises(error, match=match):
        function(uncertainty, correct)


@pytest.mark.parametrize(
    ("fractions", "error", "match"),
    [
        ([0.0, 1.0], ValueError, r"referred_fractions: expected a number in \[0, 1\)"),
        ([-0.1], ValueError, r"referred_fractions: expected a number in \[0, 1\)"),
        ([float("nan")], ValueError, r"referred_fractions: expected a number in \[0, 1\)"),
        ([], ValueError, "referred_fractions: expected at least one fraction"),
        ("0.5", TypeError, "referred_fractions: expected a sequence"),
        (0.5, TypeError, "referred_fractions: expected a sequence"),
        (["0.5"], TypeError, "referred_fractions: expected a number"),
        (torch.zeros(2, 2), ValueError, "referred_fractions: expected a 1-D"),
    ],
)
def test_bad_referred_fractions_are_rejected(fractions, error, match):
    with pytest.raises(error, match=match):
        referral_curve(GOOD_U, GOOD_C, fractions)
