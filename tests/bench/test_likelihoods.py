"""uqkit.bench.likelihoods: the Gaussian head is uqkit's own, its loss the closed-form NLL, and every method
takes the likelihood of its task (or says it is classification-only)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from uqkit.bench.likelihoods import CATEGORICAL, GAUSSIAN, gaussian_head, likelihood_of
from uqkit.bench.registry import METHODS, MethodContext, NotApplicableError, build_method
from uqkit.nn.stacked import StackedGaussianMLP
from uqkit.objectives import ELBO
from uqkit.prediction import GaussianPrediction


def test_gaussian_head_is_the_mapping_of_uqkits_gaussian_heads():
    torch.manual_seed(0)
    stack = StackedGaussianMLP(1, 3, hidden=5, out_features=2)
    x = torch.randn(7, 3)
    mean, variance = stack(x)
    raw = stack.output(torch.relu(stack.hidden(x.unsqueeze(0))))  # [1, 7, 4]: 2 means, then 2 scales
    head = gaussian_head(raw)
    torch.testing.assert_close(head["mean"], mean, rtol=0, atol=0)
    torch.testing.assert_close(head["variance"], variance, rtol=0, atol=0)


def test_gaussian_loss_is_the_per_example_nll_summed_over_targets():
    outputs = torch.tensor([[0.5, -1.0, 0.2, 3.0], [1.0, 2.0, -4.0, 0.0]])  # 2 examples, D = 2
    targets = torch.tensor([[1.0, 0.0], [0.0, 2.5]])
    expected = 0.0
    for row, target in zip(outputs.tolist(), targets.tolist(), strict=True):
        for d in range(2):
            variance = math.log1p(math.exp(row[2 + d])) + 1e-6
            expected += 0.5 * math.log(2 * math.pi * variance) + (target[d] - row[d]) ** 2 / (2 * variance)
    assert GAUSSIAN.loss(outputs, targets).item() == pytest.approx(expected / 2, rel=1e-6)
    # [S, B, 2D] outputs share the [B, D] targets: the mean over the S samples of each sample's loss
    samples = torch.stack([outputs, outputs.flip(0)])
    by_sample = (GAUSSIAN.loss(outputs, targets) + GAUSSIAN.loss(outputs.flip(0), targets)) / 2
    torch.testing.assert_close(GAUSSIAN.loss(samples, targets), by_sample)


def test_gaussian_validation_nll_is_the_moment_matched_nll():
    mean = torch.tensor([[[0.0]], [[2.0]]])  # two samples of one example
    variance = torch.tensor([[[1.0]], [[1.0]]])
    prediction = GaussianPrediction(mean, variance)  # mixture mean 1, variance 1 + 1 = 2
    expected = 0.5 * math.log(2 * math.pi * 2.0) + (3.0 - 1.0) ** 2 / (2 * 2.0)
    values = GAUSSIAN.validation_metrics(prediction, torch.tensor([[3.0]]))
    assert values["val_nll"] == pytest.approx(expected)
    assert values["val_rmse"] == pytest.approx(2.0)
    assert GAUSSIAN.member_nlls(prediction, torch.tensor([[3.0]])) == pytest.approx(
        [0.5 * math.log(2 * math.pi) + 4.5, 0.5 * math.log(2 * math.pi) + 0.5]
    )


def test_likelihood_of_names_the_kinds():
    assert likelihood_of("classification") is CATEGORICAL and likelihood_of("regression") is GAUSSIAN
    with pytest.raises(ValueError, match="kind: expected 'classification' or 'regression', got 'ranking'"):
        likelihood_of("ranking")


CONTEXT = MethodContext((3,), 2, "mlp", 64, "test", batch_size=16)
CLASSIFICATION_ONLY = {
    "temperature-scaled",
    "laplace",
    "sngp",
    "heteroscedastic",
    "hyper-deep-ensemble",
    "sgld",
    "csgmcmc",
    "csgmcmc-distilled",
    "apd",
}
# apd is built only for backbones of at most 100k weights
SMALL_BACKBONE = {"apd": MethodContext((1, 28, 28), 2, "lenet5", 64, "test", batch_size=16)}


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_trains_on_a_gaussian_likelihood_unless_classification_only(name):
    torch.manual_seed(0)
    method = build_method(name, SMALL_BACKBONE.get(name, CONTEXT))
    if name in CLASSIFICATION_ONLY:
        with pytest.raises(NotApplicableError, match="classification only"):
            method.use_likelihood(GAUSSIAN)
        return
    method.use_likelihood(GAUSSIAN)
    for module in method.modules():
        if isinstance(module, ELBO):
            assert module.nll is GAUSSIAN.loss  # the ELBO's data term is the Gaussian NLL too
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    orders = method.num_batch_orders
    if orders > 1:
        x, y = torch.stack([x] * orders), torch.stack([y] * orders)
    loss = method.training_loss(x, y)
    assert loss.ndim == 0 and torch.isfinite(loss)
    method.eval()
    with torch.no_grad():
        prediction = method.predict(torch.randn(5, 3))
    assert isinstance(prediction, GaussianPrediction)
    assert prediction.mean.shape == (5, 1) and prediction.num_samples == method.num_samples


def test_deterministic_gaussian_loss_equals_the_likelihood_of_its_network():
    torch.manual_seed(0)
    method = build_method("deterministic", CONTEXT)
    method.use_likelihood(GAUSSIAN)
    x, y = torch.randn(6, 3), torch.randn(6, 1)
    torch.testing.assert_close(method.training_loss(x, y), GAUSSIAN.loss(method.network(x), y))
    method.use_likelihood(CATEGORICAL)  # and back: cross-entropy on class labels
    labels = torch.tensor([0, 1, 1, 0, 1, 0])
    torch.testing.assert_close(
        method.training_loss(x, labels), nn.functional.cross_entropy(method.network(x), labels)
    )
