"""accuracy, nll and brier_score against scikit-learn on random inputs, plus closed forms and bad inputs."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, brier_score_loss, log_loss

from uqkit.metrics import accuracy, brier_score, nll

DTYPES = [torch.float32, torch.float64]
SEEDS = [0, 1, 2, 3]


def random_probs_and_labels(seed: int, batch: int, num_classes: int, dtype: torch.dtype):
    generator = torch.Generator().manual_seed(seed)
    logits = 2.0 * torch.randn(batch, num_classes, generator=generator, dtype=torch.float64)
    probs = torch.softmax(logits, dim=-1).to(dtype)
    labels = torch.randint(num_classes, (batch,), generator=generator)
    return probs, labels


def rtol_for(dtype: torch.dtype) -> float:
    return 1e-5 if dtype == torch.float32 else 1e-12


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("num_classes", [2, 3, 7])
def test_metrics_match_sklearn(seed, dtype, num_classes):
    probs, labels = random_probs_and_labels(seed, 257, num_classes, dtype)
    p, y = probs.numpy(), labels.numpy()  # native dtype: sklearn checks row sums at that precision

    assert accuracy(probs, labels) == pytest.approx(accuracy_score(y, p.argmax(axis=1)), abs=0)
    assert nll(probs, labels) == pytest.approx(
        log_loss(y, p, labels=list(range(num_classes))), rel=rtol_for(dtype)
    )
    sklearn_brier = brier_score_loss(y, p, labels=list(range(num_classes)), scale_by_half=False)
    assert brier_score(probs, labels) == pytest.approx(sklearn_brier, rel=rtol_for(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", SEEDS)
def test_binary_brier_is_twice_sklearn_binary_brier(seed, dtype):
    probs, labels = random_probs_and_labels(seed, 300, 2, dtype)
    binary = brier_score_loss(labels.numpy(), probs[:, 1].double().numpy())
    assert brier_score(probs, labels) == pytest.approx(2 * binary, rel=rtol_for(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_closed_forms(dtype):
    probs = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5], [0.1, 0.6, 0.3], [1.0, 0.0, 0.0]], dtype=dtype)
    labels = torch.tensor([1, 2, 0, 0])
    # argmax: 0 (tie, lowest index), 2, 1, 0 -> correct for examples 2 and 4 only.
    assert accuracy(probs, labels) == 0.5
    expected_nll = -(math.log(0.5) + math.log(0.5) + math.log(0.1) + math.log(1.0)) / 4
    assert nll(probs, labels) == pytest.approx(expected_nll, rel=rtol_for(dtype))
    # (0.25 + 0.25 + 0) + (0.04 + 0.09 + 0.25) + (0.81 + 0.36 + 0.09) + 0 = 2.14
    assert brier_score(probs, labels) == pytest.approx(2.14 / 4, rel=rtol_for(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_nll_clamps_zero_probability_at_tiny(dtype):
    probs = torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=dtype)
    labels = torch.tensor([1, 0])
    expected = (-math.log(torch.finfo(dtype).tiny) - math.log(0.5)) / 2
    assert nll(probs, labels) == pytest.approx(expected, rel=1e-6)


def test_int32_labels_give_the_same_result():
    probs, labels = random_probs_and_labels(5, 50, 4, torch.float64)
    for metric in (accuracy, nll, brier_score):
        assert metric(probs, labels.int()) == metric(probs, labels)


def test_float32_and_float64_agree():
    probs, labels = random_probs_and_labels(9, 100, 5, torch.float64)
    for metric in (accuracy, nll, brier_score):
        assert metric(probs.float(), labels) == pytest.approx(metric(probs, labels), rel=1e-5)


BAD_INPUTS = [
    (torch.tensor([[0.5, 0.6]]), torch.tensor([0]), ValueError, "summing to 1"),
    (torch.tensor([[1.2, -0.2]]), torch.tensor([0]), ValueError, r"in \[0, 1\]"),
    (torch.tensor([0.5, 0.5]), torch.tensor([0]), ValueError, "2-D"),
    (torch.tensor([[float("nan"), 0.5]]), torch.tensor([0]), ValueError, "finite"),
    (torch.tensor([[1, 0]]), torch.tensor([0]), TypeError, "floating-point"),
    (np.array([[0.5, 0.5]]), torch.tensor([0]), TypeError, "torch.Tensor"),
    (torch.empty(0, 3), torch.empty(0, dtype=torch.long), ValueError, "at least one example"),
    (torch.tensor([[0.5, 0.5]]), torch.tensor([0.0]), TypeError, "integer class indices"),
    (torch.tensor([[0.5, 0.5]]), torch.tensor([True]), TypeError, "integer class indices"),
    (torch.tensor([[0.5, 0.5]]), torch.tensor([0, 1]), ValueError, "expected 1 labels"),
    (torch.tensor([[0.5, 0.5]]), torch.tensor([2]), ValueError, r"class indices in \[0, 1\]"),
    (torch.tensor([[0.5, 0.5]]), torch.tensor([[0]]), ValueError, "labels: expected a 1-D"),
]


@pytest.mark.parametrize("metric", [accuracy, nll, brier_score])
@pytest.mark.parametrize(("probs", "labels", "error", "match"), BAD_INPUTS)
def test_bad_inputs_are_rejected(metric, probs, labels, error, match):
    with pytest.raises(error, match=match):
        metric(probs, labels)
