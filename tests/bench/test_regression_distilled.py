"""The UCI regression form of ``csgmcmc-distilled`` (uqkit/bench/regression_distilled.py): the stacked
distillation loss reaches the teacher's mixture moments, the teacher is ``csgmcmc``'s, and the student is one
network chosen on validation only."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from test_regression import _tiny_table  # the same tiny table (tests/bench is on sys.path under pytest)

from uqkit.bench.regression import REGRESSION_METHODS, evaluate_regression_method
from uqkit.bench.regression_distilled import mixture_moments
from uqkit.bench.regression_stack import SplitData, build_stack, stack_size, train_stack

pytestmark = pytest.mark.usefixtures("one_thread")


def _small(name: str, **changes):
    defaults = {
        "epochs": 12,
        "learning_rates": (1e-2, 3e-2),
        "prior_precisions": (10.0,),
        "temperatures": (1.0,),
    }
    if name == "csgmcmc-distilled":
        defaults["student_epochs"] = 10
    return dataclasses.replace(REGRESSION_METHODS[name], **{**defaults, **changes})


def test_the_student_learns_the_teachers_mean_and_variance():
    """With the teacher's variance, the loss is KL(N(m_T, v_T) || N(mu, sigma^2)) up to a constant, whose
    minimum 0 is the student equal to the teacher: 400 Adam steps on 80 rows bring its mean KL below 0.01
    nats (measured 4e-4) and its variance within 20% of the teacher's. Without it, the student fits the
    means only and its variance collapses (KL 62 nats)."""
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.uniform(-2.0, 2.0, size=(2, 80, 1))).float()
    teacher_mean, teacher_variance = torch.sin(2 * x), 0.05 + 0.3 * torch.sigmoid(3 * x)
    phase = SplitData(x, teacher_mean, x[:, :10], teacher_mean[:, :10], [None, None])
    method = REGRESSION_METHODS["csgmcmc-distilled"]

    def kl_after(variance):
        stack, _ = train_stack(
            method, phase, torch.arange(2), [{"learning_rate": 1e-2}] * 2, 400, 0, teacher_variance=variance
        )
        with torch.no_grad():
            mean, student_variance = stack.network(x)
        ratio = teacher_variance / student_variance
        kl = 0.5 * (ratio - 1 - ratio.log() + (teacher_mean - mean).square() / student_variance)
        return float(kl.mean()), ratio

    kl, ratio = kl_after(teacher_variance)
    assert kl < 0.01 and float(ratio.min()) > 0.8 and float(ratio.max()) < 1.25
    kl_means_only, _ = kl_after(None)
    assert kl_means_only > 1.0


def test_mixture_moments_are_the_samples_mean_and_total_variance():
    samples = REGRESSION_METHODS["csgmcmc"]  # any stack of 2 splits x 3 samples
    torch.manual_seed(0)
    stack = build_stack(samples, torch.zeros(6), 2)
    x = torch.randn(2, 5, 2)
    mean, variance = mixture_moments(stack, x)
    with torch.no_grad():
        mu, s2 = stack(x.repeat_interleave(3, dim=0))
    for split in range(2):
        rows = slice(3 * split, 3 * split + 3)
        torch.testing.assert_close(mean[split], mu[rows].mean(0))
        torch.testing.assert_close(variance[split], s2[rows].mean(0) + mu[rows].var(0, unbiased=False))


def test_distils_csgmcmcs_samples_into_one_network_chosen_on_validation_only():
    table = _tiny_table(splits=2)
    method = _small("csgmcmc-distilled")
    fit = method.fit(table, seed=0)
    teacher = _small("csgmcmc").fit(table, seed=0)
    assert fit.validation_nll == teacher.validation_nll  # the same chains and choices as csgmcmc
    assert fit.num_members == 1 and stack_size(fit.model) == 2 and stack_size(fit.networks.model) == 2
    student = fit.details["student"]
    for split, config in enumerate(fit.configs):
        assert {k: config[k] for k in teacher.configs[split]} == teacher.configs[split]
        best = min(range(2), key=lambda i: student["validation_nll"][split][i])
        assert config["student_learning_rate"] == method.student_learning_rates[best]
        assert 1 <= config["student_epochs"] <= method.student_epochs
    changed_targets = table.targets.clone()
    changed_targets[table.splits[0][1]] *= -50
    first = evaluate_regression_method(method, table, seed=0)
    second = evaluate_regression_method(method, dataclasses.replace(table, targets=changed_targets), seed=0)
    for key in ("student_learning_rate", "student_epochs", "learning_rate", "prior_precision"):
        assert first["per_split"][key][0] == second["per_split"][key][0]
    assert first["num_members"] == first["num_samples"] == 1
    assert all(math.isfinite(v) for v in first["per_split"]["nll"])
    assert first["per_split"]["nll"][0] != second["per_split"]["nll"][0]
