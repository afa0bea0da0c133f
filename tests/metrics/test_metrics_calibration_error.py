"""ECE and calibration curves: a hand-computed example, slow references for both binnings, bad inputs."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from uqkit.metrics import CalibrationCurve, calibration_curve, expected_calibration_error

DTYPES = [torch.float32, torch.float64]

# Six examples, 4 classes, num_bins = 5 -> edges 0, 0.2, 0.4, 0.6, 0.8, 1.0; bins are (lo, hi].
HAND_PROBS = [
    [0.4, 0.3, 0.2, 0.1],  # conf 0.4 (exactly on an edge -> bin 1 = (0.2, 0.4]), predicted 0, label 0: right
    [0.3, 0.3, 0.2, 0.2],  # conf 0.3 -> bin 1, predicted 0 (tie: lowest index), label 1: wrong
    [0.45, 0.35, 0.1, 0.1],  # conf 0.45 -> bin 2 = (0.4, 0.6], predicted 0, label 1: wrong
    [0.1, 0.7, 0.1, 0.1],  # conf 0.7 -> bin 3 = (0.6, 0.8], predicted 1, label 1: right
    [0.05, 0.05, 0.1, 0.8],  # conf 0.8 (on an edge -> bin 3), predicted 3, label 0: wrong
    [0.9, 0.05, 0.05, 0.0],  # conf 0.9 -> bin 4 = (0.8, 1.0], predicted 0, label 0: right
]
HAND_LABELS = [0, 1, 1, 1, 0, 0]
# Per bin, |sum(correct) - sum(conf)|:
#   bin 0: empty                      -> 0
#   bin 1: |1 - (0.4 + 0.3)| = 0.3     (acc 0.5, conf 0.35)
#   bin 2: |0 - 0.45|        = 0.45    (acc 0.0, conf 0.45)
#   bin 3: |1 - (0.7 + 0.8)| = 0.5     (acc 0.5, conf 0.75)
#   bin 4: |1 - 0.9|         = 0.1     (acc 1.0, conf 0.9)
# ECE = (0.3 + 0.45 + 0.5 + 0.1) / 6 = 1.35 / 6 = 0.225.
# With [lo, hi) bins instead, 0.4 and 0.8 move up a bin: (0.3 + 0.15 + 0.3 + 0.7) / 6 = 0.2417.
HAND_ECE = 0.225


@pytest.mark.parametrize("dtype", DTYPES)
def test_hand_computed_ece_pins_right_closed_bins(dtype):
    probs, labels = torch.tensor(HAND_PROBS, dtype=dtype), torch.tensor(HAND_LABELS)
    assert expected_calibration_error(probs, labels, num_bins=5) == pytest.approx(HAND_ECE, abs=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_hand_computed_calibration_curve(dtype):
    probs, labels = torch.tensor(HAND_PROBS, dtype=dtype), torch.tensor(HAND_LABELS)
    curve = calibration_curve(probs, labels, num_bins=5)
    assert curve.count.tolist() == [0, 2, 1, 2, 1]
    torch.testing.assert_close(curve.bin_lower, torch.tensor([0.0, 0.2, 0.4, 0.6, 0.8], dtype=dtype))
    torch.testing.assert_close(curve.bin_upper, torch.tensor([0.2, 0.4, 0.6, 0.8, 1.0], dtype=dtype))
    nan = float("nan")
    expected_conf = torch.tensor([nan, 0.35, 0.45, 0.75, 0.9], dtype=dtype)
    expected_acc = torch.tensor([nan, 0.5, 0.0, 0.5, 1.0], dtype=dtype)
    torch.testing.assert_close(curve.confidence, expected_conf, equal_nan=True)
    torch.testing.assert_close(curve.accuracy, expected_acc, equal_nan=True)
    as_dict = curve.to_dict()
    assert as_dict["accuracy"] == [None, 0.5, 0.0, 0.5, 1.0]
    assert as_dict["count"] == [0, 2, 1, 2, 1]
    assert as_dict["confidence"][0] is None and as_dict["bin_lower"][1] == pytest.approx(0.2)
    json.dumps(as_dict, allow_nan=False)  # JSON-friendly: no NaN left


def test_confidence_of_one_goes_to_last_bin():
    probs = torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=torch.float64)
    curve = calibration_curve(probs, torch.tensor([0, 1]), num_bins=2)
    # 0.5 is on the inner edge -> bin 0 = (0, 0.5]; 1.0 -> bin 1 = (0.5, 1].
    assert curve.count.tolist() == [1, 1]
    assert curve.accuracy.tolist() == [0.0, 1.0]


def reference_ece_and_counts(probs: np.ndarray, labels: np.ndarray, num_bins: int, binning: str):
    """Slow pure-Python ECE: Guo et al. (lo, hi] bins, or np.array_split of the stably sorted confidences."""
    confidences = [float(max(row)) for row in probs]
    correct = [int(np.argmax(row)) == int(y) for row, y in zip(probs, labels, strict=True)]
    n = len(confidences)
    if binning == "equal_width":
        bins = []
        for m in range(num_bins):
            lo, hi = m / num_bins, (m + 1) / num_bins
            bins.append(
                [i for i in range(n) if lo < confidences[i] <= hi or (m == 0 and confidences[i] == 0)]
            )
    else:
        order = np.argsort(np.array(confidences), kind="stable")
        bins = [list(chunk) for chunk in np.array_split(order, num_bins)]
    ece = 0.0
    for members in bins:
        if members:
            acc = sum(correct[i] for i in members) / len(members)
            conf = sum(confidences[i] for i in members) / len(members)
            ece += len(members) / n * abs(acc - conf)
    return ece, [len(members) for members in bins]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("num_bins", [1, 7, 15])
@pytest.mark.parametrize("binning", ["equal_width", "equal_mass"])
def test_ece_matches_slow_reference(dtype, seed, num_bins, binning):
    generator = torch.Generator().manual_seed(seed)
    logits = 1.5 * torch.randn(203, 5, generator=generator, dtype=torch.float64)
    probs = torch.softmax(logits, dim=-1).to(dtype)
    labels = torch.randint(5, (203,), generator=generator)
    ref_ece, ref_counts = reference_ece_and_counts(probs.double().numpy(), labels.numpy(), num_bins, binning)
    ece = expected_calibration_error(probs, labels, num_bins=num_bins, binning=binning)
    assert ece == pytest.approx(ref_ece, abs=1e-6 if dtype == torch.float32 else 1e-12)
    curve = calibration_curve(probs, labels, num_bins=num_bins, binning=binning)
    assert curve.count.tolist() == ref_counts
    # ECE is the count-weighted gap of the curve's bins.
    filled = curve.count > 0
    weighted_gap = (
        curve.count[filled] / 203 * (curve.accuracy[filled] - curve.confidence[filled]).abs()
    ).sum()
    assert float(weighted_gap) == pytest.approx(ece, abs=1e-5)


@pytest.mark.parametrize(("n", "num_bins"), [(100, 10), (103, 10), (15, 4), (3, 3)])
def test_equal_mass_bins_hold_equal_counts_in_confidence_order(n, num_bins):
    generator = torch.Generator().manual_seed(n)
    probs = torch.softmax(torch.randn(n, 3, generator=generator), dim=-1)
    labels = torch.randint(3, (n,), generator=generator)
    curve = calibration_curve(probs, labels, num_bins=num_bins, binning="equal_mass")
    q, r = divmod(n, num_bins)
    assert curve.count.tolist() == [q + 1] * r + [q] * (num_bins - r)
    # Bins are consecutive runs of the sorted confidences.
    assert bool((curve.bin_lower <= curve.bin_upper).all())
    assert bool((curve.bin_upper[:-1] <= curve.bin_lower[1:]).all())
    confidence = probs.max(dim=-1).values
    assert float(curve.bin_lower[0]) == float(confidence.min())
    assert float(curve.bin_upper[-1]) == float(confidence.max())


def test_equal_mass_with_fewer_examples_than_bins_leaves_empty_bins_nan():
    probs = torch.tensor([[0.6, 0.4], [0.9, 0.1]])
    labels = torch.tensor([0, 1])
    curve = calibration_curve(probs, labels, num_bins=4, binning="equal_mass")
    assert curve.count.tolist() == [1, 1, 0, 0]
    assert curve.to_dict()["bin_lower"][2:] == [None, None]
    assert torch.isnan(curve.confidence[2:]).all()
    # bin 0: conf 0.6 right -> 0.4; bin 1: conf 0.9 wrong -> 0.9; ECE = (0.4 + 0.9) / 2
    assert expected_calibration_error(probs, labels, num_bins=4, binning="equal_mass") == pytest.approx(0.65)


def test_calibration_curve_is_frozen():
    curve = calibration_curve(torch.tensor([[0.7, 0.3]]), torch.tensor([0]))
    assert isinstance(curve, CalibrationCurve)
    with pytest.raises(dataclasses.FrozenInstanceError):
        curve.count = torch.zeros(15)


def test_perfectly_calibrated_bins_have_zero_ece():
    # Every example has confidence 0.75 and 3 of each 4 are right: one bin, acc = conf.
    probs = torch.tensor([[0.75, 0.25]] * 8, dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1] * 2)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-15)
    assert math.isclose(expected_calibration_error(probs, torch.ones(8, dtype=torch.long)), 0.75)


@pytest.mark.parametrize("function", [expected_calibration_error, calibration_curve])
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_bins": 0}, ValueError, "num_bins: expected an int >= 1"),
        ({"num_bins": 2.5}, TypeError, "num_bins: expected an int"),
        ({"num_bins": True}, TypeError, "num_bins: expected an int"),
        ({"binning": "quantile"}, ValueError, "binning: expected one of 'equal_width', 'equal_mass'"),
        ({"probs": torch.tensor([[0.5, 0.6]])}, ValueError, "summing to 1"),
        ({"labels": torch.tensor([0, 1])}, ValueError, "expected 1 labels"),
        ({"labels": torch.tensor([3])}, ValueError, "class indices"),
    ],
)
def test_bad_inputs_are_rejected(function, kwargs, error, match):
    arguments = {"probs": torch.tensor([[0.5, 0.5]]), "labels": torch.tensor([0]), **kwargs}
    with pytest.raises(error, match=match):
        function(**arguments)
