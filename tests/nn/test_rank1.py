"""Rank-1 BNN layers (uqkit/nn/rank1.py): BatchEnsemble at zero scale, closed-form KL, output moments."""

import copy
import math

import pytest
import torch
from torch import nn

import uqkit
from uqkit.nn import (
    BatchEnsembleConv1d,
    BatchEnsembleConv2d,
    BatchEnsembleLinear,
    Rank1Conv1d,
    Rank1Conv2d,
    Rank1Linear,
    use_posterior_mean,
)
from uqkit.nn.members import fold_members, tile_inputs, tile_members, unfold_members
from uqkit.nn.priors import NormalPrior, ScaleMixtureNormalPrior

pytestmark = [
    pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN"),
    pytest.mark.usefixtures("one_thread"),
]


def tiled(x: torch.Tensor, members: int) -> torch.Tensor:
    """``[B, ...] -> [M * B, ...]`` as a converted model tiles its inputs (known to be a tile)."""
    return tile_inputs((x,), {}, members)[0][0]


CASES = [
    (Rank1Linear, BatchEnsembleLinear, (6, 4), {}, (5, 6)),
    (Rank1Linear, BatchEnsembleLinear, (6, 4), {"bias": False}, (5, 2, 6)),
    (
        Rank1Conv2d,
        BatchEnsembleConv2d,
        (4, 6, (3, 2)),
        {"stride": 2, "groups": 2, "padding": 1},
        (2, 4, 7, 6),
    ),
    (Rank1Conv1d, BatchEnsembleConv1d, (3, 4, 3), {"padding_mode": "circular", "padding": 1}, (2, 3, 8)),
]


def _batch_ensemble_twin(rank1, be_cls, args, kwargs):
    be = be_cls(*args, 3, **kwargs)
    with torch.no_grad():
        be.weight.copy_(rank1.weight)
        be.r.copy_(rank1.r_mean)
        be.s.copy_(rank1.s_mean)
        if be.bias is not None:
            be.bias.copy_(rank1.bias)
    return be


@pytest.mark.parametrize(("cls", "be_cls", "args", "kwargs", "shape"), CASES)
def test_zero_posterior_scale_equals_batch_ensemble(cls, be_cls, args, kwargs, shape):
    torch.manual_seed(0)
    layer = cls(*args, 3, **kwargs, posterior_scale_init=0.0).double()
    be = _batch_ensemble_twin(layer, be_cls, args, kwargs).double()
    x = tiled(torch.randn(shape, dtype=torch.float64), 3)  # [M * B, ...], a known tile
    per_member = fold_members(torch.randn(3, *shape, dtype=torch.float64))  # one batch per member
    assert torch.equal(layer(per_member), be(per_member))  # the same products, exactly
    # a tiled input: BatchEnsemble folds the factors into the weights, rank-1 samples per example
    torch.testing.assert_close(layer(x), be(x), rtol=1e-12, atol=1e-12)
    layer.reset_posterior_scale(0.1)
    assert (layer(x) - be(x)).abs().max() > 1e-3
    with use_posterior_mean(layer):
        assert torch.equal(layer(x), be(x))
        assert torch.equal(layer(per_member), be(per_member))
    assert not torch.equal(layer(x), layer(x))  # samples on every forward pass


def test_kl_is_the_closed_form_averaged_over_members():
    torch.manual_seed(1)
    prior = NormalPrior(scale=0.3, loc=1.0)
    layer = Rank1Conv2d(3, 5, 3, num_members=4, prior=prior, posterior_scale_init=0.05)
    with torch.no_grad():
        layer.r_rho.normal_(-2.0, 0.3)
        layer.s_rho.normal_(-2.0, 0.3)
    total = 0.0
    for name in ("r", "s"):
        mean = getattr(layer, f"{name}_mean").detach().double()
        sigma = torch.log1p(torch.exp(getattr(layer, f"{name}_rho").detach().double()))
        kl = torch.log(0.3 / sigma) + (sigma**2 + (mean - 1.0) ** 2) / (2 * 0.3**2) - 0.5
        total += float(kl.sum())
    expected = total / 4
    assert math.isclose(float(layer.kl_divergence().detach()), expected, rel_tol=1e-5)
    model = nn.Sequential(layer, nn.ReLU())
    assert math.isclose(float(uqkit.kl_divergence(model).detach()), expected, rel_tol=1e-5)
    # the shared weight and the biases are point estimates: no gradient from the KL
    layer.kl_divergence().backward()
    assert layer.weight.grad is None and layer.bias.grad is None and layer.r_rho.grad is not None


def test_scale_mixture_prior_gives_an_unbiased_kl_estimate():
    torch.manual_seed(2)
    prior = ScaleMixtureNormalPrior(pi=0.5, scale1=1.0, scale2=0.1)
    layer = Rank1Linear(3, 2, num_members=2, prior=prior, posterior_scale_init=0.2)
    estimates = torch.stack([layer.kl_divergence().detach() for _ in range(4000)])
    # exact expectation by Monte Carlo with many more draws, computed independently here
    total = 0.0
    for name in ("r", "s"):
        mean = getattr(layer, f"{name}_mean").detach().double()
        sigma = torch.log1p(torch.exp(getattr(layer, f"{name}_rho").detach().double()))
        w = mean + sigma * torch.randn(50_000, *mean.shape, dtype=torch.float64)
        log_q = (-0.5 * ((w - mean) / sigma) ** 2 - sigma.log() - 0.5 * math.log(2 * math.pi)).sum((1, 2))
        log_p = torch.logaddexp(
            math.log(0.5) - 0.5 * w**2 - 0.5 * math.log(2 * math.pi),
            math.log(0.5) - 0.5 * (w / 0.1) ** 2 - math.log(0.1) - 0.5 * math.log(2 * math.pi),
        ).sum((1, 2))
        total += float((log_q - log_p).mean())
    standard_error = float(estimates.std()) / math.sqrt(len(estimates))
    assert abs(float(estimates.mean()) - total / 2) < 5 * standard_error + 0.01


def test_output_moments_match_the_closed_form_and_examples_are_independent():
    """y_o = z_o s_o + b_o with z_o = sum_i x_i r_i W_oi; r, s independent Gaussians."""
    torch.manual_seed(3)
    layer = Rank1Linear(4, 3, num_members=2, posterior_scale_init=0.3, dtype=torch.float64)
    with torch.no_grad():
        layer.s_rho.normal_(0.0, 0.5)
    x = torch.randn(4, dtype=torch.float64)
    n = 40_000
    with torch.no_grad():
        y = unfold_members(layer(tile_members(x.expand(n, 4), 2)), 2)  # [M, n, 3]: a draw per example
    r_mu, s_mu = layer.r_mean.detach(), layer.s_mean.detach()
    r_sd = torch.log1p(torch.exp(layer.r_rho.detach()))
    s_sd = torch.log1p(torch.exp(layer.s_rho.detach()))
    w = layer.weight.detach()
    for m in range(2):
        z_mean = w @ (x * r_mu[m])
        z_var = (w**2) @ (x**2 * r_sd[m] ** 2)
        mean = z_mean * s_mu[m] + layer.bias[m].detach()
        var = (z_var + z_mean**2) * (s_sd[m] ** 2 + s_mu[m] ** 2) - z_mean**2 * s_mu[m] ** 2
        sample_mean, sample_var = y[m].mean(0), y[m].var(0)
        assert torch.all((sample_mean - mean).abs() < 5 * (var / n).sqrt()), (sample_mean, mean)
        # a product of Gaussians has kurtosis below 9: sd(sample variance) < sqrt(8 / n) var
        assert torch.all((sample_var - var).abs() < 5 * math.sqrt(8 / n) * var), (sample_var, var)
        corr = torch.corrcoef(torch.stack([y[m, 0::2, 0], y[m, 1::2, 0]]))[0, 1]
        assert abs(float(corr)) < 5 / math.sqrt(n / 2)


def test_default_factor_initialisation_and_prior():
    torch.manual_seed(4)
    layer = Rank1Linear(800, 600, num_members=4)
    means = torch.cat([layer.r_mean.flatten(), layer.s_mean.flatten()]).detach()
    assert abs(float(means.mean()) - 1.0) < 5 * 0.1 / math.sqrt(means.numel())
    assert abs(float(means.std()) - 0.1) < 0.002
    scales = layer.posterior_scale("r")
    torch.testing.assert_close(scales, torch.full_like(scales, math.sqrt(1e-3 / (1 - 1e-3))))
    assert layer.prior == NormalPrior(scale=0.1, loc=1.0)
    signs = Rank1Linear(50, 40, num_members=4, fast_weight_init="random_sign")
    assert set(signs.r_mean.detach().unique().tolist()) == {-1.0, 1.0}


def test_default_factor_means_are_a_typical_draw_of_the_default_prior():
    # Per factor entry, KL(N(mu, s^2) || N(1, p^2)) = log(p / s) + s^2 / (2 p^2) - 1/2 + (mu - 1)^2 / (2 p^2).
    # Means drawn from the prior make the last term chi2_1 / 2: mean 1/2, standard deviation sqrt(2) / 2.
    # (Means from N(1, 0.5^2) under this prior would add 12.5 nats per entry instead of 0.5.)
    torch.manual_seed(5)
    layer = Rank1Linear(30, 20, num_members=4)
    entries = 4 * (30 + 20)
    p, s = 0.1, math.sqrt(1e-3 / (1 - 1e-3))
    constant = math.log(p / s) + s**2 / (2 * p**2) - 0.5
    per_entry = (
        float(layer.kl_divergence().detach()) * 4 / entries
    )  # kl_divergence averages over the 4 members
    assert abs(per_entry - (constant + 0.5)) < 5 * (math.sqrt(2) / 2) / math.sqrt(entries)


def test_training_step_moves_every_parameter_and_state_dict_round_trips():
    torch.manual_seed(5)
    model = nn.Sequential(Rank1Linear(4, 8, 3), nn.ReLU(), Rank1Linear(8, 2, 3))
    elbo = uqkit.ELBO(num_data=100)
    logits = unfold_members(model(tile_members(torch.randn(6, 4), 3)), 3)  # [M, B, C]: ELBO averages over M
    elbo(logits, torch.randint(0, 2, (6,)), model).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), name
    clone = copy.deepcopy(model)
    fresh = nn.Sequential(Rank1Linear(4, 8, 3), nn.ReLU(), Rank1Linear(8, 2, 3))
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(15, 4)  # [M * B]
    with use_posterior_mean(model), use_posterior_mean(clone), use_posterior_mean(fresh):
        assert torch.equal(model(x), clone(x)) and torch.equal(model(x), fresh(x))


def test_bad_arguments():
    with pytest.raises(TypeError, match="prior"):
        Rank1Linear(3, 2, 2, prior="normal")
    with pytest.raises(ValueError, match="posterior_scale_init"):
        Rank1Linear(3, 2, 2, posterior_scale_init=-1.0)
    with pytest.raises(ValueError, match="in_features last"):
        Rank1Linear(3, 2, 2)(torch.randn(4, 5))
    with pytest.raises(ValueError, match="expected a multiple of M = 4 rows"):
        Rank1Linear(3, 2, 4)(torch.randn(6, 3))


@pytest.mark.compile
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")
def test_torch_compile():
    torch.manual_seed(6)
    layer = Rank1Linear(4, 3, num_members=2, posterior_scale_init=0.0)
    compiled = torch.compile(layer)
    x = torch.randn(10, 4)  # [M * B]
    torch.testing.assert_close(compiled(x), layer(x), rtol=1e-6, atol=1e-6)
    layer.reset_posterior_scale(0.5)
    a, b = compiled(x), compiled(x)
    assert not torch.equal(a, b)
    a.sum().backward()
    assert layer.r_rho.grad is not None


@pytest.mark.parametrize(
    ("layer", "shape"),
    [
        (lambda: Rank1Conv2d(1, 4, 3, num_members=3, padding=1), (5, 1, 6, 6)),
        (lambda: Rank1Conv1d(1, 2, 3, num_members=2, padding_mode="circular", padding=1), (4, 1, 7)),
        (lambda: Rank1Linear(1, 3, num_members=2), (4, 1)),
    ],
)
def test_shared_one_channel_input_equals_repeated_input_with_the_same_samples(layer, shape):
    # one input channel and a shared input: the product runs once and each sample scales its output
    layer = layer().double()
    layer.reset_posterior_scale(0.3)
    x = torch.randn(shape, dtype=torch.float64)
    repeated = tile_members(x, layer.num_members)  # a plain repeat: the scaled-input path
    outputs, grads = [], []
    for inputs in (tiled(x, layer.num_members), repeated):
        torch.manual_seed(5)  # the same factor samples for both
        out = layer(inputs)
        outputs.append(out)
        grads.append(torch.autograd.grad(out.cos().sum(), list(layer.parameters())))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-12, atol=1e-12)
    for shared, explicit in zip(*grads, strict=True):
        torch.testing.assert_close(shared, explicit, rtol=1e-12, atol=1e-12)
