"""Priors and their KL divergences (uqkit/nn/priors.py)."""

import math

import pytest
import torch
from torch import distributions as D

from uqkit.nn.priors import NormalPrior, ScaleMixtureNormalPrior


def _posterior(n=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(n, generator=g, dtype=torch.float64) * 0.5
    scale = torch.rand(n, generator=g, dtype=torch.float64) * 0.5 + 0.05
    return mean, scale


@pytest.mark.parametrize("prior", [NormalPrior(), NormalPrior(scale=0.3, loc=0.2)])
def test_normal_kl_equals_the_closed_form_of_torch_distributions(prior):
    mean, scale = _posterior()
    p = D.Normal(torch.tensor(prior.loc, dtype=torch.float64), torch.tensor(prior.scale, dtype=torch.float64))
    expected = D.kl_divergence(D.Normal(mean, scale), p).sum()
    assert float(prior.kl_divergence(mean, scale)) == pytest.approx(float(expected), rel=1e-12)


def test_normal_kl_matches_a_monte_carlo_estimate():
    # KL = E_q[log q(w) - log p(w)]; with 200,000 draws per coordinate the standard error is far below 1%.
    torch.manual_seed(0)
    prior = NormalPrior(scale=0.5, loc=0.1)
    mean, scale = _posterior(n=5)
    w = mean + scale * torch.randn(200_000, 5, dtype=torch.float64)
    log_ratio = D.Normal(mean, scale).log_prob(w) - prior.log_prob(w)
    se = float(log_ratio.sum(1).std()) / math.sqrt(w.shape[0])
    assert float(prior.kl_divergence(mean, scale)) == pytest.approx(
        float(log_ratio.sum(1).mean()), abs=5 * se
    )


def test_normal_kl_gradients_match_autograd_of_the_formula():
    prior = NormalPrior(scale=0.7, loc=-0.3)
    mean, scale = _posterior()
    mean.requires_grad_()
    scale.requires_grad_()
    assert torch.autograd.gradcheck(prior.kl_divergence, (mean, scale))
    prior.kl_divergence(mean, scale).backward()
    reference = (
        torch.log(prior.scale / scale) + (scale**2 + (mean - prior.loc) ** 2) / (2 * prior.scale**2) - 0.5
    ).sum()
    g_mean, g_scale = torch.autograd.grad(reference, (mean, scale))
    torch.testing.assert_close(mean.grad, g_mean)
    torch.testing.assert_close(scale.grad, g_scale)


def test_normal_kl_is_zero_when_posterior_equals_prior():
    prior = NormalPrior(scale=0.2, loc=0.5)
    assert float(prior.kl_divergence(torch.full((4,), 0.5), torch.full((4,), 0.2))) == pytest.approx(
        0, abs=1e-5
    )


def test_scale_mixture_log_prob_equals_torch_mixture():
    prior = ScaleMixtureNormalPrior(pi=0.25, scale1=1.0, scale2=math.exp(-6))
    w = torch.linspace(-3, 3, 101, dtype=torch.float64)
    mixture = D.MixtureSameFamily(
        D.Categorical(torch.tensor([0.25, 0.75], dtype=torch.float64)),
        D.Normal(torch.zeros(2, dtype=torch.float64), torch.tensor([1.0, math.exp(-6)], dtype=torch.float64)),
    )
    torch.testing.assert_close(prior.log_prob(w), mixture.log_prob(w))


def _quadrature_kl(prior, mean, scale):
    """KL(N(mean, scale^2) || prior) per coordinate by the trapezoid rule on a fine grid (float64)."""
    z = torch.linspace(-9, 9, 4001, dtype=torch.float64)
    w = mean[:, None] + scale[:, None] * z
    q = D.Normal(0.0, 1.0).log_prob(z).exp()
    integrand = q * (D.Normal(mean[:, None], scale[:, None]).log_prob(w) - prior.log_prob(w))
    return torch.trapezoid(integrand, z, dim=1)


def test_scale_mixture_kl_is_unbiased_against_quadrature():
    torch.manual_seed(0)
    prior = ScaleMixtureNormalPrior(pi=0.5, scale1=1.0, scale2=math.exp(-2))
    mean, scale = _posterior(n=20)
    exact = float(_quadrature_kl(prior, mean, scale).sum())
    draws = torch.stack([prior.kl_divergence(mean, scale) for _ in range(4000)])
    se = float(draws.std()) / math.sqrt(len(draws))
    assert float(draws.mean()) == pytest.approx(exact, abs=5 * se)
    assert se < 0.05 * abs(exact)  # the test has power


def test_scale_mixture_kl_gradient_is_unbiased():
    # d KL / d mean by central differences of the quadrature KL against the mean of 4000 MC gradients.
    torch.manual_seed(1)
    prior = ScaleMixtureNormalPrior(pi=0.5, scale1=1.0, scale2=0.2)
    mean, scale = _posterior(n=3, seed=2)
    h = 1e-5
    numeric = torch.stack(
        [
            (_quadrature_kl(prior, mean + h * e, scale) - _quadrature_kl(prior, mean - h * e, scale)).sum()
            / (2 * h)
            for e in torch.eye(3, dtype=torch.float64)
        ]
    )
    # the KL sums over entries, so one call on 4000 stacked copies gives 4000 independent one-sample gradients
    m = mean.repeat(4000, 1).requires_grad_()
    grads = torch.autograd.grad(prior.kl_divergence(m, scale.repeat(4000, 1)), m)[0]
    se = grads.std(0) / math.sqrt(len(grads))
    assert bool(((grads.mean(0) - numeric).abs() < 5 * se + 1e-6).all())


def test_priors_are_hashable_frozen_and_validated():
    assert hash(NormalPrior()) == hash(NormalPrior(1.0, 0.0))
    with pytest.raises(AttributeError):
        NormalPrior().scale = 2.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="scale: expected a finite number > 0"):
        NormalPrior(scale=0.0)
    with pytest.raises(TypeError, match="loc: expected a finite number"):
        NormalPrior(loc=float("nan"))
    with pytest.raises(ValueError, match=r"pi: expected a number in \(0, 1\)"):
        ScaleMixtureNormalPrior(pi=1.0)
    with pytest.raises(ValueError, match="scale2: expected a finite number > 0"):
        ScaleMixtureNormalPrior(scale2=-1.0)


def test_kl_rejects_mismatched_shapes_and_non_tensors():
    with pytest.raises(ValueError, match="mean and scale: expected the same shape"):
        NormalPrior().kl_divergence(torch.zeros(3), torch.ones(4))
    with pytest.raises(TypeError, match=r"scale: expected a torch\.Tensor"):
        ScaleMixtureNormalPrior().kl_divergence(torch.zeros(3), [1.0, 1.0, 1.0])
