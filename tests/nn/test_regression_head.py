"""The Bayesian last-layer regression head (uqkit/nn/regression_head.py) and its stacked twin."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import uqkit
from uqkit.nn import (
    BayesianRegressionHead,
    ReparameterizationLinear,
    StackedBayesianLastLayerMLP,
    use_posterior_mean,
)
from uqkit.objectives import kl_divergence

pytestmark = pytest.mark.usefixtures("one_thread")


def _head(seed: int = 0) -> BayesianRegressionHead:
    torch.manual_seed(seed)
    head = BayesianRegressionHead(5, 2, posterior_scale_init=0.3).double()
    with torch.no_grad():
        head.function_bias.uniform_(-1, 1)
        head.function.weight_rho.uniform_(-2, 0)
    return head


def test_output_moments_are_kingma_s_closed_form():
    torch.manual_seed(0)
    layer = ReparameterizationLinear(4, 3, posterior_scale_init=0.2).double()
    with torch.no_grad():
        layer.weight_rho.uniform_(-3, 0)
    x = torch.randn(6, 4, dtype=torch.float64)
    mean, variance = layer.output_moments(x)
    s_w, s_b = layer.posterior_scale("weight"), layer.posterior_scale("bias")
    torch.testing.assert_close(mean, x @ layer.weight_mean.T + layer.bias_mean, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(variance, x.square() @ s_w.square().T + s_b.square(), rtol=1e-14, atol=1e-14)
    with pytest.raises(ValueError, match="in_features"):
        layer.output_moments(torch.randn(2, 5, dtype=torch.float64))


def test_function_distribution_and_predictive_are_the_closed_forms():
    head = _head()
    h = torch.randn(7, 5, dtype=torch.float64)
    mean, variance = head.function_distribution(h)
    s = head.function.posterior_scale("weight")
    torch.testing.assert_close(
        mean, h @ head.function.weight_mean.T + head.function_bias, rtol=1e-14, atol=1e-14
    )
    torch.testing.assert_close(variance, h.square() @ s.square().T, rtol=1e-14, atol=1e-14)
    noise = F.softplus(head.noise(h)) + 1e-6
    torch.testing.assert_close(head.noise_variance(h), noise)
    with torch.no_grad():
        prediction = head.predictive(h)
    torch.testing.assert_close(prediction.mean, mean.detach())
    torch.testing.assert_close(prediction.variance, (variance + noise).detach())


def test_forward_draws_the_function_per_example_with_the_closed_form_moments():
    head = _head(1)
    h = torch.randn(5, dtype=torch.float64)
    n = 20_000
    with torch.no_grad():
        out = head(h.expand(n, 5))
        mean, variance = head.function_distribution(h.unsqueeze(0))
    draws = out["mean"]
    # within 5 standard errors: of the mean sqrt(v / n), of the variance v sqrt(2 / (n - 1))
    assert bool(((draws.mean(0) - mean[0]).abs() < 5 * (variance[0] / n).sqrt()).all())
    assert bool(((draws.var(0) - variance[0]).abs() < 5 * variance[0] * math.sqrt(2 / (n - 1))).all())
    first, second = draws[0::2] - mean, draws[1::2] - mean  # independent per example
    corr = (first * second).mean(0) / (first.square().mean(0) * second.square().mean(0)).sqrt()
    assert float(corr.abs().max()) < 5 / math.sqrt(n / 2)
    torch.testing.assert_close(out["variance"][0], head.noise_variance(h))
    with use_posterior_mean(head), torch.no_grad():
        torch.testing.assert_close(head(h.unsqueeze(0))["mean"], mean)


def test_predict_splits_the_predictive_into_noise_and_function_variance():
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Linear(3, 5), nn.ReLU(), BayesianRegressionHead(5, posterior_scale_init=0.5)
    ).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    with torch.no_grad():
        prediction = uqkit.predict(model, x, num_samples=4000)
        exact = model[-1].predictive(model[:-1](x))
        _, function_variance = model[-1].function_distribution(model[:-1](x))
    torch.testing.assert_close(
        prediction.aleatoric_variance, exact.variance - function_variance, rtol=1e-12, atol=1e-12
    )
    # the epistemic part is the sample variance of 4000 draws: within 5 standard errors of v
    tolerance = 5 * function_variance * math.sqrt(2 / 3999)
    assert bool(((prediction.epistemic_variance - function_variance).abs() < tolerance).all())


def test_kl_is_the_mean_layer_s_and_bad_features_are_named():
    head = _head()
    torch.testing.assert_close(kl_divergence(head), head.function.kl_divergence())
    with pytest.raises(ValueError, match="hidden"):
        head(torch.randn(3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="posterior_scale_init"):
        BayesianRegressionHead(5, posterior_scale_init=0.0)


def test_stacked_bayesian_last_layer_equals_the_closed_form_model_by_model():
    torch.manual_seed(3)
    model = StackedBayesianLastLayerMLP(3, 4, hidden=6, posterior_scale_init=0.2).double()
    with torch.no_grad():
        model.weight_rho.uniform_(-3, 0)
    x = torch.randn(3, 5, 4, dtype=torch.float64)
    function_mean, function_variance, noise_variance = model.moments(x)
    mean, variance = model(x)
    for k in range(3):
        h = torch.relu(x[k] @ model.hidden.weight[k].T + model.hidden.bias[k])
        s = model.posterior_scale("weight")[k]
        want_mean = h @ model.weight_mean[k] + model.bias[k]
        torch.testing.assert_close(function_mean[k], want_mean, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(function_variance[k], h.square() @ s.square(), rtol=1e-13, atol=1e-13)
        want_noise = F.softplus(h @ model.noise.weight[k].T + model.noise.bias[k]) + 1e-6
        torch.testing.assert_close(noise_variance[k], want_noise, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(mean, function_mean)
    torch.testing.assert_close(variance, function_variance + noise_variance)
    single = [
        uqkit.nn.priors.NormalPrior().kl_divergence(model.weight_mean[k], model.posterior_scale("weight")[k])
        for k in range(3)
    ]
    torch.testing.assert_close(kl_divergence(model), torch.stack(single).sum())
