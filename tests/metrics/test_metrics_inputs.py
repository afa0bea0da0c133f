"""Shared metric input handling: autograd inputs are detached, devices must agree."""

import warnings

import pytest
import torch

import uqkit.metrics as metrics
from uqkit.metrics._inputs import check_same_device


def test_inputs_that_require_grad_give_plain_numbers_without_warnings():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(30, 4, generator=generator).requires_grad_()
    probs, labels = logits.softmax(dim=-1), torch.randint(4, (30,), generator=generator)
    scores = torch.rand(30, generator=generator).requires_grad_()
    correct = torch.rand(30, generator=generator) > 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "Converting a tensor with requires_grad=True to a scalar"
        values = [
            metrics.accuracy(probs, labels),
            metrics.nll(probs, labels),
            metrics.brier_score(probs, labels),
            metrics.expected_calibration_error(probs, labels, binning="equal_mass"),
            metrics.ood_auroc(scores[:10], scores[10:]),
            metrics.ood_aupr(scores[:10], scores[10:]),
            metrics.fpr_at_95_tpr(scores[:10], scores[10:]),
            metrics.aurc(scores, correct),
            metrics.rmse(scores, scores * 2),
            metrics.gaussian_nll(scores, scores + 1, scores),
            metrics.interval_coverage(scores, scores + 1, scores),
        ]
        curves = [
            metrics.calibration_curve(probs, labels).confidence,
            metrics.risk_coverage_curve(scores, correct).risk,
            metrics.referral_curve(scores, correct).accuracy,
        ]
    assert all(type(value) is float for value in values)
    assert not any(curve.requires_grad for curve in curves)
    assert metrics.nll(probs, labels) == pytest.approx(metrics.nll(probs.detach(), labels))


def test_tensors_on_different_devices_are_rejected():
    with pytest.raises(ValueError, match="same device, got: a is on cpu, b is on meta"):
        check_same_device(a=torch.ones(2), b=torch.ones(2, device="meta"))
    check_same_device(a=torch.ones(2), b=torch.zeros(3))  # same device: no error


def test_all_names_are_exported():
    assert sorted(metrics.__all__) == metrics.__all__
    for name in metrics.__all__:
        assert hasattr(metrics, name)
