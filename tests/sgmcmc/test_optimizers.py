"""The SG-MCMC optimizers: without noise they are the plain optimizers; their noise has the paper's scale."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from uqkit.sgmcmc import SGHMC, SGLD, PreconditionedSGLD

NUM_DATA = 500
PRIOR_PRECISION = 5.0


def _trajectory(make_optimizer, steps: int = 25) -> list[torch.Tensor]:
    """Weights of a small network after each step on fixed random batches (float64)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    optimizer = make_optimizer(model.parameters())
    generator = torch.Generator().manual_seed(1)
    states = []
    for _ in range(steps):
        x = torch.randn(16, 4, generator=generator, dtype=torch.float64)
        y = torch.randint(0, 3, (16,), generator=generator)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        states.append(torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone())
    return states


def _assert_same_trajectory(ours, reference):
    # float64; the same update written with other elementwise ops (e.g. -lr * (m b + g) against
    # m (-lr b) - lr g) rounds differently by ~1e-16 per step, far below 1e-12 after 25 steps
    for a, b in zip(_trajectory(ours), _trajectory(reference), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("switch", ["temperature", "noise"])
def test_sgld_without_noise_is_sgd_with_the_prior_as_weight_decay(switch):
    options = {"temperature": 0.0} if switch == "temperature" else {}

    def ours(params):
        optimizer = SGLD(params, lr=0.1, num_data=NUM_DATA, prior_precision=PRIOR_PRECISION, **options)
        if switch == "noise":
            optimizer.param_groups[0]["noise"] = False
        return optimizer

    decay = PRIOR_PRECISION / NUM_DATA
    _assert_same_trajectory(ours, lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=decay))


def test_sghmc_without_noise_is_sgd_with_momentum():
    decay = PRIOR_PRECISION / NUM_DATA
    _assert_same_trajectory(
        lambda p: SGHMC(p, lr=0.05, num_data=NUM_DATA, temperature=0.0, prior_precision=PRIOR_PRECISION),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=decay),
    )


def test_psgld_without_noise_or_prior_is_rmsprop():
    _assert_same_trajectory(
        lambda p: PreconditionedSGLD(p, lr=0.01, num_data=NUM_DATA, temperature=0.0, alpha=0.9, eps=1e-3),
        lambda p: torch.optim.RMSprop(p, lr=0.01, alpha=0.9, eps=1e-3),
    )


def test_sghmc_with_full_friction_is_sgld():
    def same_noise(make):
        def build(params):
            return make(params, torch.Generator().manual_seed(7))

        return build

    sgld = same_noise(lambda p, g: SGLD(p, lr=0.05, num_data=NUM_DATA, temperature=2.0, generator=g))
    sghmc = same_noise(
        lambda p, g: SGHMC(p, lr=0.05, num_data=NUM_DATA, temperature=2.0, friction=1.0, generator=g)
    )
    _assert_same_trajectory(sghmc, sgld)


def _one_noisy_step(optimizer_class, **options) -> torch.Tensor:
    """The change of 200,000 parameters with a zero gradient in one step: pure noise."""
    torch.manual_seed(3)
    param = nn.Parameter(torch.zeros(200_000, dtype=torch.float64))
    optimizer = optimizer_class([param], **options)
    param.grad = torch.zeros_like(param)
    optimizer.step()
    return param.detach()


@pytest.mark.parametrize(
    ("optimizer_class", "options", "variance"),
    [
        # SGLD: N(0, epsilon T) with epsilon = 2 lr / N
        (SGLD, {"lr": 0.2, "num_data": 1000, "temperature": 0.5}, 2 * 0.2 * 0.5 / 1000),
        # pSGLD: N(0, epsilon T G), G = 1 / (eps + sqrt(V)) = 1 / eps with V = 0 (zero gradient)
        (PreconditionedSGLD, {"lr": 0.2, "num_data": 1000, "eps": 0.5}, 2 * 0.2 / 1000 / 0.5),
        # SGHMC: v = N(0, 2 alpha eta T) with eta = lr / N, theta' = theta + v
        (
            SGHMC,
            {"lr": 0.2, "num_data": 1000, "friction": 0.25, "temperature": 3.0},
            2 * 0.25 * 0.2 * 3 / 1000,
        ),
    ],
)
def test_noise_has_the_papers_variance(optimizer_class, options, variance):
    change = _one_noisy_step(optimizer_class, **options)
    count = change.numel()
    assert abs(float(change.mean())) <= 4 * math.sqrt(variance / count)
    # the sample variance of n normals has relative standard error sqrt(2 / n)
    assert float(change.var()) == pytest.approx(variance, rel=4 * math.sqrt(2 / count))
    fourth = float(change.pow(4).mean()) / float(change.var()) ** 2
    assert fourth == pytest.approx(3.0, abs=0.05)  # Gaussian kurtosis (a uniform or sign noise fails)


def test_noise_follows_the_generator_and_the_global_seed():
    def draw(generator=None):
        torch.manual_seed(5)
        param = nn.Parameter(torch.zeros(10))
        optimizer = SGLD([param], lr=0.1, num_data=10, generator=generator)
        param.grad = torch.zeros(10)
        optimizer.step()
        return param.detach().clone()

    assert torch.equal(draw(), draw())
    first = draw(torch.Generator().manual_seed(1))
    assert torch.equal(first, draw(torch.Generator().manual_seed(1)))
    assert not torch.equal(first, draw())


def test_state_dict_round_trip_continues_the_same_chain():
    def run(split: bool) -> torch.Tensor:
        torch.manual_seed(0)
        param = nn.Parameter(torch.randn(6))
        optimizer = SGHMC([param], lr=0.1, num_data=20)
        for step in range(6):
            if split and step == 3:
                saved, rng = optimizer.state_dict(), torch.get_rng_state()
                param_copy = param.detach().clone()
                param = nn.Parameter(param_copy)
                optimizer = SGHMC([param], lr=0.5, num_data=20)
                optimizer.load_state_dict(saved)
                torch.set_rng_state(rng)
            param.grad = param.detach() * 2
            optimizer.step()
        return param.detach()

    torch.testing.assert_close(run(True), run(False))


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda p: SGLD(p, lr=0.0, num_data=10), "lr"),
        (lambda p: SGLD(p, lr=-1.0, num_data=10), "lr"),
        (lambda p: SGLD(p, lr=0.1, num_data=0), "num_data"),
        (lambda p: SGLD(p, lr=0.1, num_data=10.0), "num_data"),
        (lambda p: SGLD(p, lr=0.1, num_data=10, temperature=-1.0), "temperature"),
        (lambda p: SGLD(p, lr=0.1, num_data=10, prior_precision=float("nan")), "prior_precision"),
        (lambda p: SGHMC(p, lr=0.1, num_data=10, friction=0.0), "friction"),
        (lambda p: SGHMC(p, lr=0.1, num_data=10, friction=1.5), "friction"),
        (lambda p: PreconditionedSGLD(p, lr=0.1, num_data=10, alpha=1.0), "alpha"),
        (lambda p: PreconditionedSGLD(p, lr=0.1, num_data=10, eps=0.0), "eps"),
        (lambda p: SGLD(p, lr=0.1, num_data=10, generator=3), "generator"),
        (lambda p: SGLD([{"params": p, "temperature": -2.0}], lr=0.1, num_data=10), "temperature"),
    ],
)
def test_bad_arguments_are_named(build, message):
    with pytest.raises((TypeError, ValueError), match=message):
        build([nn.Parameter(torch.zeros(2))])


def test_a_negative_learning_rate_set_between_steps_is_refused():
    param = nn.Parameter(torch.zeros(2))
    optimizer = SGLD([param], lr=0.1, num_data=10)
    optimizer.param_groups[0]["lr"] = -0.1
    param.grad = torch.zeros(2)
    with pytest.raises(ValueError, match="lr"):
        optimizer.step()
