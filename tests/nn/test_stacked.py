"""Stacked layers (uqkit/nn/stacked.py) against loops over the single-model layers, and Flipout's math."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from uqkit.nn import (
    FlipoutLinear,
    NormalPrior,
    StackedDropout,
    StackedFlipoutLinear,
    StackedGaussianMLP,
    StackedLinear,
    use_posterior_mean,
)
from uqkit.objectives import kl_divergence

pytestmark = pytest.mark.usefixtures("one_thread")


def _linear_twins(stacked: StackedLinear) -> list[nn.Linear]:
    """``nn.Linear`` copies of each member of a stacked linear layer."""
    layers = []
    for k in range(stacked.num_members):
        layer = nn.Linear(stacked.in_features, stacked.out_features, dtype=stacked.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(stacked.weight[k])
            layer.bias.copy_(stacked.bias[k])
        layers.append(layer)
    return layers


def test_stacked_linear_equals_loop_over_linear_outputs_and_gradients():
    torch.manual_seed(0)
    stacked = StackedLinear.from_shape(4, 5, 3).double()
    twins = _linear_twins(stacked)
    x = torch.randn(4, 7, 5, dtype=torch.float64)  # a different batch per model
    out = stacked.per_member(x)
    loop = torch.stack([twin(x[k]) for k, twin in enumerate(twins)])
    torch.testing.assert_close(out, loop, rtol=0, atol=1e-14)
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    sum((twin(x[k]) * weights[k]).sum() for k, twin in enumerate(twins)).backward()
    for k, twin in enumerate(twins):
        torch.testing.assert_close(stacked.weight.grad[k], twin.weight.grad, rtol=0, atol=1e-13)
        torch.testing.assert_close(stacked.bias.grad[k], twin.bias.grad, rtol=0, atol=1e-13)
    broadcast = stacked.per_member(x[0].expand(4, -1, -1))  # one [B, D] batch for every model, not copied
    torch.testing.assert_close(broadcast, torch.stack([twin(x[0]) for twin in twins]), rtol=0, atol=1e-14)
    # the same layer on the members folded into the batch, as a DeepEnsemble runs it
    torch.testing.assert_close(stacked(x.reshape(28, 5)), out.detach().reshape(28, 3), rtol=0, atol=1e-14)
    with pytest.raises(
        ValueError, match=r"expected \[M, N, in_features\] = \[4, N, 5\], got shape \[3, 7, 5\]"
    ):
        stacked.per_member(x[:3])


def test_stacked_linear_from_modules_holds_each_member_s_linear():
    torch.manual_seed(0)
    members = [nn.Linear(5, 3) for _ in range(4)]
    stacked = StackedLinear(members)
    assert (stacked.num_members, stacked.in_features, stacked.out_features) == (4, 5, 3)
    for k, member in enumerate(members):
        assert torch.equal(stacked.weight[k], member.weight) and torch.equal(stacked.bias[k], member.bias)
    assert stacked.weight.data_ptr() not in {member.weight.data_ptr() for member in members}  # a copy


def test_stacked_linear_from_shape_draws_in_the_uci_stacks_order():
    # The UCI regression stacks drew [K, in, out] weights, then [K, out] biases; a seed must keep giving
    # the same networks (their published numbers), now stored [K, out, in].
    torch.manual_seed(5)
    stacked = StackedLinear.from_shape(3, 4, 6)
    torch.manual_seed(5)
    bound = 4**-0.5
    weight = torch.empty(3, 4, 6).uniform_(-bound, bound)
    bias = torch.empty(3, 6).uniform_(-bound, bound)
    assert torch.equal(stacked.weight.detach(), weight.transpose(1, 2))
    assert torch.equal(stacked.bias.detach(), bias)
    assert stacked.weight.is_contiguous() and StackedLinear.from_shape(3, 4, 6, bias=False).bias is None
    with pytest.raises(ValueError, match="in_features"):
        StackedLinear.from_shape(3, 0, 6)
    with pytest.raises(TypeError, match="bias"):
        StackedLinear.from_shape(3, 4, 6, bias=1)


def test_stacked_linear_initialisation_is_nn_linear_s():
    torch.manual_seed(0)
    stacked = StackedLinear.from_shape(200, 16, 8)
    bound = 16**-0.5
    weight, bias = stacked.weight.detach(), stacked.bias.detach()
    assert float(weight.abs().max()) <= bound and float(bias.abs().max()) <= bound
    # uniform on [-b, b]: variance b^2 / 3, with 25 600 draws the sample variance is within ~2%
    assert float(weight.var()) == pytest.approx(bound**2 / 3, rel=0.05)
    assert not torch.equal(weight[0], weight[1])


def _flipout_twins(stacked: StackedFlipoutLinear) -> list[FlipoutLinear]:
    twins = []
    for k in range(stacked.num_models):
        twin = FlipoutLinear(
            stacked.in_features,
            stacked.out_features,
            prior=stacked.prior,
            posterior_scale_init=stacked.posterior_scale_init,
        ).to(stacked.weight_mean.dtype)
        with torch.no_grad():
            twin.weight_mean.copy_(stacked.weight_mean[k].T)
            twin.weight_rho.copy_(stacked.weight_rho[k].T)
            twin.bias_mean.copy_(stacked.bias_mean[k])
            twin.bias_rho.copy_(stacked.bias_rho[k])
        twins.append(twin)
    return twins


def test_stacked_flipout_at_zero_noise_equals_linear_loop():
    torch.manual_seed(0)
    stacked = StackedFlipoutLinear(3, 4, 2, posterior_scale_init=0.0).double()
    x = torch.randn(3, 6, 4, dtype=torch.float64)
    loop = torch.stack([F.linear(x[k], stacked.weight_mean[k].T, stacked.bias_mean[k]) for k in range(3)])
    torch.testing.assert_close(stacked(x), loop, rtol=0, atol=1e-14)
    twins = _flipout_twins(stacked)
    torch.testing.assert_close(torch.stack([t(x[k]) for k, t in enumerate(twins)]), loop, rtol=0, atol=1e-14)


def test_stacked_flipout_kl_is_the_sum_of_the_single_layers():
    torch.manual_seed(0)
    stacked = StackedFlipoutLinear(3, 4, 2, prior=NormalPrior(0.5), posterior_scale_init=0.05).double()
    with torch.no_grad():
        stacked.weight_rho.add_(0.3 * torch.randn_like(stacked.weight_rho))
    twins = _flipout_twins(stacked)
    want = sum(float(t.kl_divergence().detach()) for t in twins)
    assert float(kl_divergence(stacked).detach()) == pytest.approx(want, rel=1e-12)


def test_stacked_flipout_matches_the_single_layer_in_distribution():
    """Per example, ``y = x mean + b + s * ((x * r) Delta W + Delta b)`` is Gaussian with mean
    ``x mean + b`` and variance ``sum_i x_i^2 sigma_ij^2 + sigma_bj^2`` (signs square away); examples are
    uncorrelated.

    The stack holds ``draws`` copies of one posterior, so one forward pass gives ``draws`` independent
    samples (each model draws its own ``Delta W``); the single layer is sampled in a loop.
    """
    torch.manual_seed(0)
    draws = 4000
    stacked = StackedFlipoutLinear(draws, 3, 2, posterior_scale_init=0.3).double()
    with torch.no_grad():
        for name in ("weight_mean", "weight_rho", "bias_mean", "bias_rho"):
            value = getattr(stacked, name)
            value.copy_(value[0] + (0.5 * torch.randn_like(value[0]) if "rho" in name else 0.0))
    twin = _flipout_twins(stacked)[0]
    x = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.7, -1.1]], dtype=torch.float64)
    with torch.no_grad():
        stacked_out = stacked(x)  # [draws, 2, 2]
        single_out = torch.stack([twin(x) for _ in range(1500)])
    mean = x @ stacked.weight_mean[0].detach() + stacked.bias_mean[0].detach()
    scale_w, scale_b = F.softplus(stacked.weight_rho[0].detach()), F.softplus(stacked.bias_rho[0].detach())
    variance = (x**2) @ scale_w**2 + scale_b**2
    for out in (stacked_out, single_out):
        n = out.shape[0]
        # standard error of a mean: sqrt(var / n); of a variance: var * sqrt(2 / n); 5 s.e. tolerance
        assert torch.all((out.mean(0) - mean).abs() <= 5 * (variance / n).sqrt())
        assert torch.all((out.var(0) - variance).abs() <= 5 * variance * (2 / n) ** 0.5)
        centred = out - mean
        correlation = (centred[:, 0, :] * centred[:, 1, :]).mean(0) / variance.prod(0).sqrt()
        assert torch.all(correlation.abs() <= 5 / n**0.5)


def test_stacked_flipout_posterior_mean_and_noise_per_model():
    torch.manual_seed(0)
    stacked = StackedFlipoutLinear(2, 3, 2, posterior_scale_init=0.1)
    x = torch.randn(5, 3)
    with use_posterior_mean(stacked):
        torch.testing.assert_close(stacked(x), stacked(x))
    assert not torch.equal(stacked(x), stacked(x))


def test_stacked_dropout_rate_per_model():
    torch.manual_seed(0)
    rates = [0.0, 0.1, 0.5]
    dropout = StackedDropout(rates)
    x = torch.ones(3, 4000, 25)
    out = dropout(x)
    for k, p in enumerate(rates):
        dropped = float((out[k] == 0).double().mean())
        n = x[k].numel()
        assert abs(dropped - p) <= 5 * (p * (1 - p) / n) ** 0.5 + 1e-12
        kept = out[k][out[k] != 0]
        torch.testing.assert_close(kept, torch.full_like(kept, 1 / (1 - p)))
    dropout.eval()  # MC dropout: still on in eval mode
    assert bool((dropout(x)[2] == 0).any())
    with use_posterior_mean(dropout):
        assert torch.equal(dropout(x), x)
    with pytest.raises(ValueError, match="rates"):
        StackedDropout([0.2, 1.0])
    with pytest.raises(ValueError, match=r"\[3, B"):
        dropout(torch.ones(2, 5))


def test_stacked_gaussian_mlp_equals_loop_over_single_networks():
    torch.manual_seed(0)
    model = StackedGaussianMLP(3, 4, hidden=6, min_variance=1e-6).double()
    hidden, output = _linear_twins(model.hidden), _linear_twins(model.output)
    x = torch.randn(3, 5, 4, dtype=torch.float64)
    mean, variance = model(x)
    y = torch.randn(3, 5, 1, dtype=torch.float64)
    loss = (0.5 * variance.log() + (y - mean) ** 2 / (2 * variance)).sum()
    loss.backward()
    for k in range(3):
        out = output[k](torch.relu(hidden[k](x[k])))
        want_mean, want_var = out[:, :1], F.softplus(out[:, 1:]) + 1e-6
        torch.testing.assert_close(mean[k], want_mean, rtol=0, atol=1e-13)
        torch.testing.assert_close(variance[k], want_var, rtol=0, atol=1e-13)
        (0.5 * want_var.log() + (y[k] - want_mean) ** 2 / (2 * want_var)).sum().backward()
        torch.testing.assert_close(model.hidden.weight.grad[k], hidden[k].weight.grad, rtol=0, atol=1e-12)
        torch.testing.assert_close(model.output.bias.grad[k], output[k].bias.grad, rtol=0, atol=1e-12)
    norms = model.weight_norms().detach()
    for k in range(3):
        want = hidden[k].weight.square().sum() + output[k].weight.square().sum()
        assert float(norms[k]) == pytest.approx(float(want.detach()), rel=1e-12)


def test_stacked_gaussian_mlp_is_a_plain_module():
    model = StackedGaussianMLP(2, 3, hidden=4, dropout=[0.1, 0.2], flipout=True)
    clone = copy.deepcopy(model)
    clone.load_state_dict(model.state_dict())
    assert set(model.state_dict()) == set(clone.state_dict())
    assert "dropout.rates" in model.state_dict()
    mean, variance = model(torch.randn(5, 3))
    assert mean.shape == variance.shape == (2, 5, 1) and bool((variance > 0).all())
    with pytest.raises(ValueError, match="dropout"):
        StackedGaussianMLP(2, 3, dropout=[0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="features"):
        model(torch.randn(5, 4))
