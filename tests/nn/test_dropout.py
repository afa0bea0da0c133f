"""Always-on Monte Carlo dropout (uqkit/nn/dropout.py)."""

import math

import pytest
import torch
from torch import nn

from uqkit.nn import MCDropout, use_posterior_mean


def test_drops_in_eval_mode_with_rate_p_and_inverted_scaling():
    torch.manual_seed(0)
    p, n = 0.3, 200_000
    layer = MCDropout(p).eval()
    x = torch.rand(n) + 0.5  # no zeros in the input
    out = layer(x)
    dropped = out == 0
    # fraction of zeros ~ Binomial(n, p) / n: standard error sqrt(p (1 - p) / n)
    assert abs(float(dropped.float().mean()) - p) < 5 * math.sqrt(p * (1 - p) / n)
    torch.testing.assert_close(out[~dropped], x[~dropped] / (1 - p))  # survivors scaled by 1 / (1 - p)


def test_masks_are_independent_across_examples_and_calls():
    torch.manual_seed(0)
    layer = MCDropout(0.5).eval()
    x = torch.ones(2, 50_000)
    out = layer(x)
    a, b = (out[0] > 0).float(), (out[1] > 0).float()
    # two copies of one input: the masks agree by chance only, P(agree) = p^2 + (1 - p)^2 = 0.5
    assert abs(float((a == b).float().mean()) - 0.5) < 5 * math.sqrt(0.25 / 50_000)
    assert not torch.equal(layer(x), layer(x))
    assert layer.per_example_noise is True


def test_posterior_mean_is_the_identity_and_expectation_matches():
    torch.manual_seed(0)
    layer = MCDropout(0.2)
    x = torch.randn(10)
    with use_posterior_mean(nn.Sequential(layer)):
        assert layer(x) is x
    samples = torch.stack([layer(x) for _ in range(20_000)])
    # E[out] = x; Var[out] = x^2 p / (1 - p)
    se = (x.square() * 0.2 / 0.8 / 20_000).sqrt()
    assert bool(((samples.mean(0) - x).abs() < 5 * se).all())


def test_zero_rate_inplace_and_validation():
    x = torch.randn(5)
    assert torch.equal(MCDropout(0.0)(x), x)
    y = torch.ones(1000)
    out = MCDropout(0.5, inplace=True)(y)
    assert out.data_ptr() == y.data_ptr()
    with pytest.raises(ValueError, match=r"p: expected a number in \[0, 1\)"):
        MCDropout(1.0)
    with pytest.raises(TypeError, match="p: expected a number"):
        MCDropout("0.5")
