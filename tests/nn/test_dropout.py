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


# --- MemberDropout: a rate per member of a folded batch [M * B, ...] ---------------------------------------


def test_member_dropout_drops_each_members_rows_at_its_own_rate_with_inverted_scaling():
    from uqkit.nn.dropout import MemberDropout

    torch.manual_seed(0)
    rates, batch, features = [0.0, 0.2, 0.5], 100, 200  # n = 20,000 elements per member
    layer = MemberDropout(rates).train()
    x = torch.rand(len(rates) * batch, features) + 0.5  # no zeros in the input
    out = layer(x).view(len(rates), batch, features)
    x = x.view(len(rates), batch, features)
    n = batch * features
    torch.testing.assert_close(out[0], x[0], rtol=0, atol=0)  # rate 0: untouched
    for member, p in enumerate(rates[1:], start=1):
        dropped = out[member] == 0
        # zeros ~ Binomial(n, p) / n: standard error sqrt(p (1 - p) / n)
        assert abs(float(dropped.float().mean()) - p) < 5 * math.sqrt(p * (1 - p) / n), member
        torch.testing.assert_close(out[member][~dropped], x[member][~dropped] / (1 - p))


def test_member_dropout_is_the_identity_in_eval_mode_and_checks_its_inputs():
    from uqkit.nn.dropout import MemberDropout

    layer = MemberDropout([0.5, 0.5]).eval()
    x = torch.randn(6, 3)
    assert layer(x) is x
    with pytest.raises(ValueError, match=r"MemberDropout input: expected a multiple of M = 2 rows"):
        layer.train()(torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"rates: expected one or more drop probabilities in \[0, 1\)"):
        MemberDropout([0.1, 1.0])
    with pytest.raises(ValueError, match="rates: expected one or more"):
        MemberDropout([])
