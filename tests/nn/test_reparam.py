"""Reparameterised Gaussian layers (uqkit/nn/reparam.py): twins, shared samples, local reparameterisation."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from uqkit.nn import (
    BayesianModule,
    ReparameterizationConv1d,
    ReparameterizationConv2d,
    ReparameterizationLinear,
    ReparameterizationLSTM,
    use_posterior_mean,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN"),
    pytest.mark.usefixtures("one_thread"),
]


def load_means(bayesian: BayesianModule, twin: nn.Module) -> None:
    with torch.no_grad():
        for name, value in twin.named_parameters():
            getattr(bayesian, f"{name}_mean").copy_(value)


TWIN_CASES = [
    (nn.Linear, ReparameterizationLinear, (6, 4), {}, (5, 6)),
    (nn.Linear, ReparameterizationLinear, (6, 4), {"bias": False}, (3, 2, 6)),
    (
        nn.Linear,
        lambda *a, **k: ReparameterizationLinear(*a, **k, local_reparameterization=True),
        (6, 4),
        {},
        (5, 6),
    ),
    (
        nn.Conv1d,
        ReparameterizationConv1d,
        (4, 2, 3),
        {"stride": 2, "groups": 2, "padding_mode": "replicate", "padding": 2},
        (2, 4, 9),
    ),
    (
        nn.Conv2d,
        ReparameterizationConv2d,
        (3, 4, (2, 3)),
        {"dilation": (2, 1), "padding": "same"},
        (2, 3, 7, 6),
    ),
    (nn.Conv2d, ReparameterizationConv2d, (3, 4, 3), {"bias": False}, (3, 6, 6)),
]


@pytest.mark.parametrize(("twin_cls", "cls", "args", "kwargs", "shape"), TWIN_CASES)
def test_zero_posterior_scale_equals_the_twin_exactly(twin_cls, cls, args, kwargs, shape):
    torch.manual_seed(0)
    twin = twin_cls(*args, **kwargs)
    layer = cls(*args, **kwargs, posterior_scale_init=0.0)
    load_means(layer, twin)
    x = torch.randn(shape)
    assert torch.equal(layer(x), twin(x))
    layer.reset_posterior_scale(0.1)
    assert not torch.equal(layer(x), twin(x))
    with use_posterior_mean(layer):
        assert torch.equal(layer(x), twin(x))


@pytest.mark.parametrize("kwargs", [{}, {"num_layers": 2, "bidirectional": True, "batch_first": True}])
def test_lstm_zero_scale_equals_nn_lstm_under_the_default_backend(kwargs):
    # sampled weights go through nn.LSTM's own fused kernel: exact whatever the backend
    torch.manual_seed(0)
    twin = nn.LSTM(5, 7, **kwargs)
    layer = ReparameterizationLSTM(5, 7, **kwargs, posterior_scale_init=0.0)
    load_means(layer, twin)
    x = torch.randn(3, 6, 5)
    out, (h, c) = layer(x)
    ref, (h_ref, c_ref) = twin(x)
    assert torch.equal(out, ref) and torch.equal(h, h_ref) and torch.equal(c, c_ref)


class _SampleRecorder:
    def __init__(self, monkeypatch):
        self.samples = {}
        draw = BayesianModule.posterior_sample

        def record(layer, name):
            self.samples[name] = draw(layer, name)
            return self.samples[name]

        monkeypatch.setattr(BayesianModule, "posterior_sample", record)


def test_linear_and_conv_use_one_weight_sample_per_forward(monkeypatch):
    rec = _SampleRecorder(monkeypatch)
    torch.manual_seed(0)
    linear = ReparameterizationLinear(4, 3, posterior_scale_init=0.3)
    x = torch.randn(5, 4)
    torch.testing.assert_close(linear(x), F.linear(x, rec.samples["weight"], rec.samples["bias"]))
    conv = ReparameterizationConv2d(2, 3, 3, stride=2, posterior_scale_init=0.3)
    x = torch.randn(2, 2, 7, 7)
    torch.testing.assert_close(conv(x), F.conv2d(x, rec.samples["weight"], rec.samples["bias"], stride=2))


def test_lstm_is_nn_lstm_with_the_sampled_weights(monkeypatch):
    rec = _SampleRecorder(monkeypatch)
    torch.manual_seed(0)
    layer = ReparameterizationLSTM(3, 4, num_layers=2, posterior_scale_init=0.3)
    x = torch.randn(5, 2, 3)
    out, _ = layer(x)
    twin = nn.LSTM(3, 4, num_layers=2)
    with torch.no_grad():
        for name, p in twin.named_parameters():
            p.copy_(rec.samples[name])
    torch.testing.assert_close(out, twin(x)[0])


@pytest.mark.parametrize(
    ("layer", "x"),
    [
        (ReparameterizationLinear(4, 3, posterior_scale_init=0.5), torch.randn(4)),
        (ReparameterizationConv2d(2, 3, 2), torch.randn(2, 3, 3)),
    ],
)
def test_shared_sample_gives_identical_perturbations_to_copies(layer, x):
    with torch.no_grad():
        out = layer(torch.stack([x, x]))
        assert torch.equal(out[0], out[1])
        assert not torch.equal(layer(x.unsqueeze(0)), layer(x.unsqueeze(0)))
    assert layer.per_example_noise is False


def _check_moments(samples, mean, var, independent):
    """Sample mean and variance along dim 0 within 5 standard errors (Gaussian samples)."""
    got_mean, got_var = samples.mean(0), samples.var(0)
    se_mean, se_var = (var / independent).sqrt(), var * math.sqrt(2.0 / (independent - 1))
    assert bool(((got_mean - mean).abs() < 5 * se_mean).all()), (got_mean - mean).abs().max()
    assert bool(((got_var - var).abs() < 5 * se_var).all()), ((got_var - var) / var).abs().max()


@pytest.mark.parametrize("local", [False, True])
def test_linear_output_mean_and_variance_match_the_analytic_values(local):
    # Kingma et al. 2015 eqs. (6)-(7): y_j ~ N(x m_j + b_j, sum_i x_i^2 s_ji^2 + s_bj^2).
    torch.manual_seed(0)
    layer = ReparameterizationLinear(5, 3, posterior_scale_init=0.3, local_reparameterization=local).double()
    x = torch.randn(5, dtype=torch.float64)
    with torch.no_grad():
        layer.bias_rho.fill_(math.log(math.expm1(0.5)))
        if local:  # independent per example: one pass over many copies
            samples = layer(x.expand(8000, 5))
        else:  # one weight sample per pass: many passes
            samples = torch.cat([layer(x.unsqueeze(0)) for _ in range(8000)])
    var = layer.posterior_scale("weight").square() @ x.square() + layer.posterior_scale("bias").square()
    _check_moments(samples, layer.weight_mean @ x + layer.bias_mean, var, 8000)


def test_local_reparameterization_noise_is_independent_per_example():
    torch.manual_seed(0)
    layer = ReparameterizationLinear(4, 3, posterior_scale_init=0.5, local_reparameterization=True)
    x = torch.randn(4)
    with torch.no_grad():
        out = layer(x.expand(2 * 5000, 4)) - F.linear(x, layer.weight_mean, layer.bias_mean)
    a, b = out[0::2], out[1::2]
    corr = (a * b).mean(0) / (a.square().mean(0) * b.square().mean(0)).sqrt()
    assert float(corr.abs().max()) < 5 / math.sqrt(5000)
    assert layer.per_example_noise is True


def test_conv2d_output_mean_and_variance_match_the_analytic_values():
    torch.manual_seed(0)
    layer = ReparameterizationConv2d(2, 3, 3, padding=1, posterior_scale_init=0.3).double()
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        samples = torch.cat([layer(x) for _ in range(6000)])
    w_var, b_var = layer.posterior_scale("weight").square(), layer.posterior_scale("bias").square()
    var = F.conv2d(x.square(), w_var, b_var, padding=1)
    _check_moments(samples, F.conv2d(x, layer.weight_mean, layer.bias_mean, padding=1), var, 6000)


def test_state_dict_deepcopy_and_flags():
    torch.manual_seed(0)
    layer = ReparameterizationLinear(4, 3, local_reparameterization=True)
    fresh = ReparameterizationLinear(4, 3, local_reparameterization=True)
    fresh.load_state_dict(layer.state_dict())
    clone = copy.deepcopy(layer)
    x = torch.randn(2, 4)
    outs = []
    for module in (layer, fresh, clone):
        torch.manual_seed(1)
        outs.append(module(x))
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    assert (
        ReparameterizationConv1d(2, 2, 1).per_example_noise is False
        and ReparameterizationLSTM(2, 2).per_example_noise is False
    )
    assert "local_reparameterization=True" in repr(layer)


def test_bad_arguments():
    with pytest.raises(TypeError, match="local_reparameterization: expected a bool"):
        ReparameterizationLinear(3, 2, local_reparameterization=1)
    with pytest.raises(ValueError, match="expected 3 features"):
        ReparameterizationConv1d(3, 2, 1)(torch.randn(2, 4, 5))


@pytest.mark.parametrize("bias", [False, True])
def test_local_reparameterization_gradients_at_zero_variance_are_zero_not_nan(bias):
    # Without bias an all-zero input row has pre-activation variance sum_i x_i^2 s_i^2 = 0: its output is the
    # mean whatever the scales, so its noise term contributes nothing to any gradient. sqrt's backward at 0 is
    # infinite, and infinity times dv = 0 made every rho gradient NaN. Reference: the same noise (the forward
    # pass's only draw, same seed) applied by hand to the rows with positive variance, double precision.
    torch.manual_seed(0)
    layer = ReparameterizationLinear(
        4, 3, bias=bias, posterior_scale_init=0.2, local_reparameterization=True
    ).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    x[2] = 0.0
    x.requires_grad_(True)
    upstream = torch.randn(5, 3, dtype=torch.float64)
    torch.manual_seed(1)
    (layer(x) * upstream).sum().backward()

    torch.manual_seed(1)
    eps = torch.randn(5, 3, dtype=torch.float64)
    params = {name: p.detach().clone().requires_grad_(True) for name, p in layer.named_parameters()}
    x_ref = x.detach().clone().requires_grad_(True)
    bias_mean = params["bias_mean"] if bias else None
    bias_var = F.softplus(params["bias_rho"]).square() if bias else None
    mean = F.linear(x_ref, params["weight_mean"], bias_mean)
    var = F.linear(x_ref.square(), F.softplus(params["weight_rho"]).square(), bias_var)
    positive = var > 0
    assert bool(positive.all()) == bias  # the case under test: only the zero row without bias has v = 0
    reference = mean + torch.where(positive, var, 1.0).sqrt() * torch.where(positive, eps, 0.0)
    (reference * upstream).sum().backward()

    for name, p in layer.named_parameters():
        assert torch.isfinite(p.grad).all(), name
        torch.testing.assert_close(p.grad, params[name].grad, rtol=1e-12, atol=1e-12, msg=name)
    assert torch.isfinite(x.grad).all()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-12, atol=1e-12)


def test_local_reparameterization_input_gradient_at_zero_scale_equals_the_twins():
    # Zero posterior scales give variance 0 everywhere: the layer is nn.Linear, and so is its input gradient
    # (it was NaN: infinity from sqrt's backward times the zero variances of the weights).
    torch.manual_seed(0)
    twin = nn.Linear(4, 3).double()
    layer = ReparameterizationLinear(4, 3, posterior_scale_init=0.0, local_reparameterization=True).double()
    load_means(layer, twin)
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    x_twin = x.detach().clone().requires_grad_(True)
    upstream = torch.randn(6, 3, dtype=torch.float64)
    (layer(x) * upstream).sum().backward()
    (twin(x_twin) * upstream).sum().backward()
    torch.testing.assert_close(x.grad, x_twin.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.weight_mean.grad, twin.weight.grad, rtol=1e-12, atol=1e-12)
