"""Posterior scales at their ELBO optimum (uqkit/methods/optimal_scales.py) against closed forms and a loop.

Oracles: (a) Bayesian linear regression, where the expected NLL is quadratic in the weights and the
mean-field optimum of ``N E_q[mean NLL] + tau KL`` is ``1 / sigma_j^2 = 1 / s^2 + (X^T X)_jj / (tau
noise^2)``; its stationarity is checked on the exact expected objective with autograd; (b) the Gauss-Newton
diagonal summed from per-example Jacobians of every output (a loop of autograd calls) and the Hessian of the
loss in the outputs (``torch.func.hessian``), on the same forward pass's weight noise (same seed), for
Flipout and Gaussian linear and convolution layers in float64.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import hessian
from torch.nn import functional as F

import uqkit
from uqkit.methods.optimal_scales import diagonal_ggn, fit_posterior_scales_, optimal_posterior_scale
from uqkit.nn import (
    FlipoutConv1d,
    FlipoutConv2d,
    FlipoutLinear,
    FlipoutLSTM,
    NormalPrior,
    ReparameterizationConv1d,
    ReparameterizationConv2d,
    ReparameterizationLinear,
    ScaleMixtureNormalPrior,
)

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64


def _regression_data(n: int = 200, d: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=generator, dtype=F64) * torch.tensor([0.3, 1.0, 2.0, 5.0], dtype=F64)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 0.1], dtype=F64) + 0.3 * torch.randn(
        n, generator=generator, dtype=F64
    )
    return x, y


@pytest.mark.parametrize("layer_type", [FlipoutLinear, ReparameterizationLinear])
@pytest.mark.parametrize("kl_weight", [1.0, 0.01])
def test_linear_regression_scales_are_the_exact_mean_field_optimum(layer_type, kl_weight):
    x, y = _regression_data()
    n, noise, prior = x.shape[0], 0.3, NormalPrior(scale=0.5)
    torch.manual_seed(0)
    layer = layer_type(4, 1, prior=prior, posterior_scale_init=0.2, dtype=F64)
    fit_posterior_scales_(layer, x, kl_weight=kl_weight, likelihood="regression", sigma=noise, batch_size=64)

    # closed form of the module docstring's eq. (1) for a linear model: h_j = (X^T X)_jj / (N noise^2)
    expected_weight = (1 / prior.scale**2 + x.square().sum(0) / (kl_weight * noise**2)).rsqrt()
    expected_bias = (1 / prior.scale**2 + torch.tensor([n / (kl_weight * noise**2)], dtype=F64)).rsqrt()
    torch.testing.assert_close(layer.posterior_scale("weight")[0], expected_weight, rtol=1e-10, atol=0)
    torch.testing.assert_close(layer.posterior_scale("bias"), expected_bias, rtol=1e-10, atol=0)

    # stationarity of the exact objective: E_q[sum_i (y_i - x_i w - b)^2] / (2 noise^2) + tau KL
    def objective() -> torch.Tensor:
        mean = layer.weight_mean[0]
        residual = y - x @ mean - layer.bias_mean[0]
        spread = (
            x.square() @ layer.posterior_scale("weight")[0].square() + layer.posterior_scale("bias")[0] ** 2
        )
        return (residual.square() + spread).sum() / (2 * noise**2) + kl_weight * layer.kl_divergence()

    rhos = [layer.weight_rho, layer.bias_rho]
    grads = torch.autograd.grad(objective(), rhos)
    for rho, grad in zip(rhos, grads, strict=True):
        # d/drho of each term is O(N h sigma^2) = O(1); float64 rounding leaves ~1e-12 of it
        assert float(grad.abs().max()) < 1e-9, (rho.shape, grad)
        # and a step away in either direction makes the objective larger (a minimum, not a maximum)
    base = float(objective().detach())
    for delta in (-0.05, 0.05):
        with torch.no_grad():
            layer.weight_rho.add_(delta)
        assert float(objective().detach()) > base
        with torch.no_grad():
            layer.weight_rho.sub_(delta)


def test_optimal_scale_formula_and_limits():
    h = torch.tensor([0.0, 1e-4, 1.0], dtype=F64)
    sigma = optimal_posterior_scale(h, num_data=1000, kl_weight=0.1, prior_scale=0.2)
    torch.testing.assert_close(sigma, (25.0 + 1e4 * h).rsqrt(), rtol=1e-14, atol=0)
    assert float(sigma[0]) == pytest.approx(0.2)  # a weight the data ignores keeps its prior scale
    with pytest.raises(ValueError, match="ggn"):
        optimal_posterior_scale(-h, num_data=10)
    with pytest.raises(ValueError, match="kl_weight"):
        optimal_posterior_scale(h, num_data=10, kl_weight=0.0)


def _brute_force_ggn(model, x, likelihood, noise=None):
    """sum over examples of J_i^T Lambda_i J_i (diagonal), one autograd call per example and output."""
    names = [n for n, _ in model.named_parameters() if n.endswith("_mean")]
    params = [p for n, p in model.named_parameters() if n.endswith("_mean")]
    outputs = model(x)
    flat = outputs.reshape(outputs.shape[0], -1)
    total = [torch.zeros_like(p) for p in params]
    label = torch.tensor(0)  # the Hessian of the cross-entropy in the logits does not depend on the label
    for i in range(flat.shape[0]):
        jac = [torch.autograd.grad(flat[i, k], params, retain_graph=True) for k in range(flat.shape[1])]
        if likelihood == "classification":
            lam = hessian(lambda z: F.cross_entropy(z, label))(flat[i].detach())
        else:
            lam = torch.eye(flat.shape[1], dtype=flat.dtype) / noise**2
        for j in range(len(params)):
            stacked = torch.stack([jac[k][j] for k in range(flat.shape[1])])  # [K, *shape]
            total[j] += torch.einsum("k...,kl,l...->...", stacked, lam, stacked)
    return {name.removesuffix("_mean"): t / flat.shape[0] for name, t in zip(names, total, strict=True)}


class _Sequence(nn.Module):
    """A Flipout linear layer applied at every step of [B, T, F] inputs, then a Gaussian read-out."""

    def __init__(self) -> None:
        super().__init__()
        self.step = FlipoutLinear(3, 4, prior=NormalPrior(0.5), posterior_scale_init=0.3)
        self.out = ReparameterizationLinear(4, 3, prior=NormalPrior(0.5), posterior_scale_init=0.3)

    def forward(self, x):
        return self.out(torch.tanh(self.step(x)).mean(1))


def _models():
    prior = {"prior": NormalPrior(0.5), "posterior_scale_init": 0.3}
    mlp = nn.Sequential(
        FlipoutLinear(5, 6, **prior),
        nn.ReLU(inplace=True),
        ReparameterizationLinear(6, 6, local_reparameterization=True, **prior),
        nn.Tanh(),
        ReparameterizationLinear(6, 3, **prior),
    )
    conv2d = nn.Sequential(
        FlipoutConv2d(2, 4, 3, stride=2, padding=1, groups=2, padding_mode="circular", **prior),
        nn.ReLU(),
        ReparameterizationConv2d(4, 3, (2, 3), padding=(1, 0), **prior),
        nn.Tanh(),
        nn.Flatten(),
        ReparameterizationLinear(3 * 4 * 1, 3, local_reparameterization=True, **prior),
    )
    conv1d = nn.Sequential(
        ReparameterizationConv1d(2, 3, 4, padding="same", dilation=2, **prior),
        nn.Tanh(),
        FlipoutConv1d(3, 2, 3, stride=2, bias=False, padding_mode="reflect", padding=1, **prior),
        nn.Flatten(),
        FlipoutLinear(2 * 4, 3, **prior),
    )
    return {
        "mlp": (mlp, (7, 5)),
        "conv2d": (conv2d, (5, 2, 6, 6)),
        "conv1d": (conv1d, (5, 2, 8)),
        "sequence": (_Sequence(), (4, 6, 3)),
    }


@pytest.mark.parametrize("name", ["mlp", "conv2d", "conv1d", "sequence"])
@pytest.mark.parametrize("likelihood", ["classification", "regression"])
def test_ggn_diagonal_matches_per_example_jacobians(name, likelihood):
    torch.manual_seed(1)
    model, shape = _models()[name]
    model = model.double()
    x = torch.randn(*shape, dtype=F64)
    noise = 0.7 if likelihood == "regression" else None
    torch.manual_seed(5)  # the same weight noise in both passes
    ggn = diagonal_ggn(model, x, likelihood=likelihood, sigma=noise, batch_size=len(x))
    torch.manual_seed(5)
    model.eval()
    expected = _brute_force_ggn(model, x, likelihood, noise)
    assert set(ggn) == set(expected)
    for key, value in expected.items():
        assert float(value.abs().max()) > 0, key  # the oracle is not trivially zero
        torch.testing.assert_close(ggn[key], value, rtol=1e-10, atol=1e-14, msg=key)
    assert all(p.grad is None for p in model.parameters())  # .grad untouched


def test_batches_and_loaders_give_the_whole_data_average():
    torch.manual_seed(0)
    model = nn.Sequential(FlipoutLinear(5, 4, posterior_scale_init=0.0), nn.ReLU(), FlipoutLinear(4, 3))
    model = model.double()
    x = torch.randn(30, 5, dtype=F64)
    with uqkit.nn.use_posterior_mean(model):  # deterministic: batching cannot change the result
        whole = diagonal_ggn(model, x, batch_size=30)
        parts = diagonal_ggn(model, [(x[:7], None), (x[7:],)], batch_size=4)
        chunked = diagonal_ggn(model, x, batch_size=4)
    for key in whole:
        torch.testing.assert_close(parts[key], whole[key], rtol=1e-12, atol=0)
        torch.testing.assert_close(chunked[key], whole[key], rtol=1e-12, atol=0)


def test_fit_sets_every_layer_from_its_own_prior_and_keeps_the_means():
    torch.manual_seed(0)
    model = nn.Sequential(
        FlipoutLinear(5, 4, prior=NormalPrior(0.1)),
        nn.ReLU(),
        ReparameterizationLinear(4, 3, prior=NormalPrior(2.0)),
    ).double()
    model.train()
    means = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("_mean")}
    x = torch.randn(50, 5, dtype=F64)
    torch.manual_seed(3)
    ggn = fit_posterior_scales_(model, x, num_data=1000, kl_weight=0.5, passes=1)
    assert model.training and all(m.training for m in model.modules())  # flags restored
    for index, scale in ((0, 0.1), (2, 2.0)):
        for name in ("weight", "bias"):
            expected = optimal_posterior_scale(
                ggn[f"{index}.{name}"], num_data=1000, kl_weight=0.5, prior_scale=scale
            )
            torch.testing.assert_close(model[index].posterior_scale(name), expected, rtol=1e-12, atol=0)
    for n, p in model.named_parameters():
        if n.endswith("_mean"):
            assert torch.equal(p, means[n])


def test_later_passes_move_log_sigma_halfway_to_the_optimum_at_the_current_scales():
    torch.manual_seed(0)
    model = nn.Sequential(FlipoutLinear(5, 8), nn.Tanh(), ReparameterizationLinear(8, 3)).double()
    x = torch.randn(40, 5, dtype=F64)
    reference = {n: p.detach().clone() for n, p in model.state_dict().items()}
    torch.manual_seed(7)
    fit_posterior_scales_(model, x, kl_weight=0.3, passes=2)
    damped = {
        f"{i}.{n}": model[i].posterior_scale(n).detach().clone() for i in (0, 2) for n in ("weight", "bias")
    }

    model.load_state_dict(reference)
    torch.manual_seed(7)  # the same draws, pass by pass
    fit_posterior_scales_(model, x, kl_weight=0.3, passes=1)
    first = {
        f"{i}.{n}": model[i].posterior_scale(n).detach().clone() for i in (0, 2) for n in ("weight", "bias")
    }
    second = diagonal_ggn(model, x)
    for key, scale in first.items():
        target = optimal_posterior_scale(second[key], num_data=40, kl_weight=0.3, prior_scale=1.0)
        torch.testing.assert_close(damped[key], (scale * target).sqrt(), rtol=1e-12, atol=0)
        assert not torch.allclose(target, scale, rtol=1e-3)  # the second pass did move the scales


def test_refuses_what_it_cannot_compute():
    lstm = nn.Sequential(FlipoutLSTM(3, 4))
    with pytest.raises(TypeError, match="FlipoutLSTM"):
        diagonal_ggn(lstm, torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match="found none"):
        diagonal_ggn(nn.Linear(3, 2), torch.randn(2, 3))
    mixture = FlipoutLinear(3, 2, prior=ScaleMixtureNormalPrior())
    with pytest.raises(TypeError, match="NormalPrior"):
        fit_posterior_scales_(mixture, torch.randn(4, 3))
    shared = FlipoutLinear(3, 3)
    with pytest.raises(ValueError, match="twice"):
        diagonal_ggn(nn.Sequential(shared, shared), torch.randn(4, 3))
    with pytest.raises(ValueError, match="sigma"):
        diagonal_ggn(shared, torch.randn(4, 3), likelihood="regression")
    with pytest.raises(ValueError, match="logits"):
        diagonal_ggn(nn.Sequential(shared, nn.Flatten(0)), torch.randn(4, 3))
    with pytest.raises(ValueError, match="passes=1"):
        fit_posterior_scales_(shared, ggn={}, num_data=4)
    with pytest.raises(ValueError, match="num_data"):
        fit_posterior_scales_(shared, torch.randn(4, 3), ggn={})
    with pytest.raises(ValueError, match="'bias'"):
        fit_posterior_scales_(shared, ggn={"weight": torch.ones(3, 3)}, num_data=4, passes=1)
    assert math.isfinite(float(shared.weight_rho.detach().sum()))
