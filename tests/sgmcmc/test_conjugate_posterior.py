"""SGLD, SGHMC and preconditioned SGLD recover the posterior of a conjugate Bayesian linear regression.

The model: ``y = x^T w + e``, ``e ~ N(0, sigma^2)`` with ``sigma`` known, prior ``w ~ N(0, lambda^-1 I)``. The
posterior is Gaussian with precision ``A = X^T X / sigma^2 + lambda I`` and mean ``A^-1 X^T y / sigma^2``.

The data set is ``COPIES`` copies of a base set of ``BASE`` examples and every batch is one copy, so the
mean loss of a batch (what users write) is exactly the data set's mean loss: the tests check the samplers'
``N``-scaling (``N = COPIES * BASE`` while the loss is a mean over ``BASE``) without the extra variance of
subsampled gradients.

``CHAINS`` independent chains run side by side as the rows of one ``[CHAINS, D]`` parameter (every optimizer
is elementwise, and the loss is the sum of the chains' mean losses, so each row gets its own chain's
gradient). Tolerances:

* *step size*: with a Gaussian target, each sampler is a linear recursion ``z' = F z + noise`` whose
  stationary covariance ``P = F P F^T + Q`` is solved exactly; its distance to the posterior covariance is the
  discretisation bias at this step size (a few percent here). The stationary mean is exactly the posterior
  mean (the recursion's fixed point).
* *sample count*: averages along a chain are autocorrelated, so their standard error is that of ``T / tau``
  effective samples, not ``T``. With independent chains it is measured without modelling ``tau``: the spread
  of the chains' own averages (batch means, one batch per chain) over ``sqrt(CHAINS)``. The tests also
  require enough effective samples, so that a chain that does not move (huge standard error) cannot pass.

Each estimate must lie within ``bias + 4 standard errors`` of the closed form.
"""

from __future__ import annotations

import pytest
import torch

from uqkit.sgmcmc import SGHMC, SGLD, PreconditionedSGLD

SIGMA = 0.5
PRIOR_PRECISION = 2.0
D = 2
BASE = 16
COPIES = 4
NUM_DATA = COPIES * BASE
CHAINS = 400
BURN_IN = 1000
SAMPLES = 2000
Z = 4.0  # standard errors allowed


def _problem():
    generator = torch.Generator().manual_seed(0)
    mixing = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)  # correlated inputs
    x = torch.randn(BASE, D, generator=generator, dtype=torch.float64) @ mixing
    w = torch.tensor([1.0, -0.5], dtype=torch.float64)
    y = x @ w + SIGMA * torch.randn(BASE, generator=generator, dtype=torch.float64)
    precision = COPIES * x.T @ x / SIGMA**2 + PRIOR_PRECISION * torch.eye(D, dtype=torch.float64)
    covariance = torch.linalg.inv(precision)
    mean = covariance @ (COPIES * x.T @ y / SIGMA**2)
    return x, y, mean, covariance, precision


def _mean_losses(weights: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The sum over chains of each chain's mean negative log-likelihood of the batch (up to a constant)."""
    residual = y[:, None] - x @ weights.T  # [BASE, CHAINS]
    return (residual**2).mean(0).sum() / (2 * SIGMA**2)


def _run(make_optimizer, seed: int = 1):
    """``[SAMPLES, CHAINS, D]`` states after the burn-in, and the optimizer."""
    x, y, *_ = _problem()
    torch.manual_seed(seed)
    weights = torch.nn.Parameter(torch.randn(CHAINS, D, dtype=torch.float64))
    optimizer = make_optimizer([weights])
    kept = torch.empty(SAMPLES, CHAINS, D, dtype=torch.float64)
    for step in range(BURN_IN + SAMPLES):
        optimizer.zero_grad(set_to_none=True)
        _mean_losses(weights, x, y).backward()
        optimizer.step()
        if step >= BURN_IN:
            kept[step - BURN_IN] = weights.detach()
    return kept, optimizer


def _stationary_covariance(transition: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``P`` with ``P = F P F^T + Q`` (vec(P) = (I - F kron F)^-1 vec(Q))."""
    size = transition.shape[0]
    system = torch.eye(size * size, dtype=torch.float64) - torch.kron(transition, transition)
    return torch.linalg.solve(system, noise.reshape(-1)).reshape(size, size)


def _estimates(kept: torch.Tensor):
    """Pooled mean and covariance, their standard errors from the spread of the chains' own estimates, and
    the effective number of samples of each coordinate's mean."""
    grand = kept.mean((0, 1))
    chain_means = kept.mean(0)  # [CHAINS, D]
    centered = kept - grand
    chain_covariances = torch.einsum("tci,tcj->cij", centered, centered) / kept.shape[0]
    mean_se = chain_means.std(0) / CHAINS**0.5
    covariance_se = chain_covariances.std(0) / CHAINS**0.5
    variance = centered.pow(2).mean((0, 1))
    effective = variance / mean_se.pow(2)  # var / SE^2 of the pooled mean = CHAINS * T / tau
    return grand, chain_covariances.mean(0), mean_se, covariance_se, effective


def _check(kept: torch.Tensor, stationary: torch.Tensor, temperature: float = 1.0) -> None:
    _, _, mean, covariance, _ = _problem()
    covariance = temperature * covariance
    grand, estimate, mean_se, covariance_se, effective = _estimates(kept)
    assert effective.min() > 2000, f"too few effective samples ({effective.tolist()}): the chains barely move"
    bias = (stationary - covariance).abs()
    scale = covariance.diagonal().sqrt()
    assert (bias <= 0.1 * scale[:, None] * scale[None, :]).all(), "step too large for a meaningful test"
    assert ((grand - mean).abs() <= Z * mean_se).all(), (grand, mean, mean_se)
    tolerance = bias + Z * covariance_se
    assert (tolerance <= 0.2 * scale[:, None] * scale[None, :]).all()  # the test can tell 2x errors apart
    assert ((estimate - covariance).abs() <= tolerance).all(), (estimate, covariance, tolerance)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_sgld_recovers_the_posterior(temperature):
    lr = 0.01
    kept, _ = _run(
        lambda p: SGLD(p, lr=lr, num_data=NUM_DATA, temperature=temperature, prior_precision=PRIOR_PRECISION)
    )
    *_, precision = _problem()
    step = lr / NUM_DATA  # theta' = theta - (lr / N) A (theta - mu) + sqrt(2 lr T / N) xi
    transition = torch.eye(D, dtype=torch.float64) - step * precision
    noise = 2 * step * temperature * torch.eye(D, dtype=torch.float64)
    _check(kept, _stationary_covariance(transition, noise), temperature)


def test_sghmc_recovers_the_posterior():
    lr, friction = 0.003, 0.3
    kept, _ = _run(
        lambda p: SGHMC(p, lr=lr, num_data=NUM_DATA, prior_precision=PRIOR_PRECISION, friction=friction)
    )
    *_, precision = _problem()
    step = lr / NUM_DATA
    eye = torch.eye(D, dtype=torch.float64)
    # state (theta - mu, v): v' = (1 - a) v - (lr / N) A (theta - mu) + noise; theta' = theta + v'
    transition = torch.cat(
        [
            torch.cat([eye - step * precision, (1 - friction) * eye], 1),
            torch.cat([-step * precision, (1 - friction) * eye], 1),
        ]
    )
    noise = 2 * friction * step * torch.ones(2, 2, dtype=torch.float64).kron(eye)
    _check(kept, _stationary_covariance(transition, noise)[:D, :D])


def test_preconditioned_sgld_recovers_the_posterior_where_gamma_is_negligible():
    """pSGLD drops Li et al.'s correction Gamma (the drift from G depending on theta). The test runs it where
    the paper says that is harmless: a slowly varying preconditioner (alpha = 0.999, an average over about
    1,000 steps, with a damping eps = 1 that keeps G within a few percent across chains). Its oracle is the
    stationary covariance of the recursion with G frozen at the run's mean preconditioner.

    (With the paper's eps = 1e-5 and these exact gradients, G = 1 / sqrt(V) follows |theta - mu| itself,
    the case where Gamma matters: the covariance then comes out 2-4 times too large.)"""
    lr, alpha, eps = 0.01, 0.999, 1.0
    kept, optimizer = _run(
        lambda p: PreconditionedSGLD(
            p, lr=lr, num_data=NUM_DATA, prior_precision=PRIOR_PRECISION, alpha=alpha, eps=eps
        )
    )
    square_avg = optimizer.state[optimizer.param_groups[0]["params"][0]]["square_avg"]
    preconditioner = 1 / (eps + square_avg.sqrt())  # [CHAINS, D]
    spread = preconditioner.std(0) / preconditioner.mean(0)
    assert (spread < 0.1).all(), f"the preconditioner varies too much for a frozen-G oracle: {spread}"
    *_, precision = _problem()
    step = lr / NUM_DATA
    frozen = torch.diag(preconditioner.mean(0))
    transition = torch.eye(D, dtype=torch.float64) - step * frozen @ precision
    _check(kept, _stationary_covariance(transition, 2 * step * frozen))
