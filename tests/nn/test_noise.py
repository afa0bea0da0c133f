"""The shared noise helper and the softplus scale parametrisation (uqkit/nn/_noise.py)."""

import math

import pytest
import torch
import torch.nn.functional as F

from uqkit.nn import rademacher
from uqkit.nn._noise import posterior_scale, scale_to_rho


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_rademacher_gives_only_plus_and_minus_one(dtype):
    signs = rademacher((257, 33), dtype=dtype)  # an odd size: the last draw is only partly used
    assert signs.shape == (257, 33) and signs.dtype == dtype
    assert set(torch.unique(signs.float()).tolist()) == {-1.0, 1.0}
    assert bool(((signs == 1) | (signs == -1)).all())


def test_rademacher_is_a_fair_coin_at_every_bit_position():
    # 16 entries come from the 16 bits of one draw: each bit position must be a fair coin on its own, and
    # neighbouring bits independent. With n = 2**20 draws the standard error of a mean of +-1 is 1/sqrt(n).
    torch.manual_seed(0)
    n = 2**16
    signs = rademacher((n, 16)).double()  # row = one draw of the generator, column = bit position
    tol = 5 / math.sqrt(n)
    assert abs(float(signs.mean())) < 5 / math.sqrt(signs.numel())
    assert float(signs.mean(dim=0).abs().max()) < tol
    neighbours = (signs[:, 1:] * signs[:, :-1]).mean(dim=0)  # E[s_k s_k+1] = 0 for independent signs
    assert float(neighbours.abs().max()) < tol
    across_draws = (signs[1:] * signs[:-1]).mean(dim=0)
    assert float(across_draws.abs().max()) < tol


def test_rademacher_uses_the_generator_and_the_global_seed():
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert torch.equal(rademacher((100,), generator=g1), rademacher((100,), generator=g2))
    torch.manual_seed(3)
    a = rademacher((100,))
    torch.manual_seed(3)
    assert torch.equal(a, rademacher((100,)))
    assert not torch.equal(a, rademacher((100,)))


def test_rademacher_empty_and_bad_inputs():
    assert rademacher((0, 5)).shape == (0, 5)
    with pytest.raises(TypeError, match="dtype: expected a floating-point"):
        rademacher((3,), dtype=torch.int64)
    with pytest.raises(ValueError, match="shape: expected non-negative"):
        rademacher((3, -1))


@pytest.mark.parametrize("scale", [1e-8, 1e-3, 0.05, 1.0, 7.0, 60.0])
def test_scale_to_rho_inverts_softplus(scale):
    rho = scale_to_rho(scale)
    assert math.isfinite(rho)
    recovered = float(posterior_scale(torch.tensor(rho, dtype=torch.float64)))
    assert recovered == pytest.approx(scale, rel=1e-12)
    assert float(F.softplus(torch.tensor(rho, dtype=torch.float64))) == pytest.approx(scale, rel=1e-12)


def test_zero_scale_is_minus_infinity_and_gives_exactly_zero():
    rho = scale_to_rho(0.0)
    assert rho == -math.inf
    assert float(posterior_scale(torch.tensor([rho]))) == 0.0


@pytest.mark.parametrize(("bad", "error"), [(-0.1, ValueError), (math.inf, ValueError), ("1", TypeError)])
def test_scale_to_rho_rejects_bad_scales(bad, error):
    with pytest.raises(error, match="posterior_scale_init: expected"):
        scale_to_rho(bad, "posterior_scale_init")
