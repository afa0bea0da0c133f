"""Flipout layers (uqkit/nn/flipout.py) against their torch.nn twins and the math of Wen et al. 2018."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_sequence

from uqkit.nn import (
    BayesianModule,
    FlipoutConv1d,
    FlipoutConv2d,
    FlipoutLinear,
    FlipoutLSTM,
    NormalPrior,
    use_posterior_mean,
)
from uqkit.nn import flipout as flipout_module

pytestmark = [
    pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN"),
    pytest.mark.usefixtures("one_thread"),
]


# (torch.nn twin, Flipout layer, constructor args, constructor kwargs, input shape)
TWIN_CASES = [
    (nn.Linear, FlipoutLinear, (6, 4), {}, (5, 6)),
    (nn.Linear, FlipoutLinear, (6, 4), {"bias": False}, (3, 2, 6)),
    (nn.Linear, FlipoutLinear, (6, 4), {}, (6,)),
    (nn.Conv1d, FlipoutConv1d, (3, 4, 3), {"stride": 2, "padding": 1}, (2, 3, 11)),
    (
        nn.Conv1d,
        FlipoutConv1d,
        (4, 4, 3),
        {"padding": "same", "padding_mode": "circular", "groups": 2},
        (3, 4, 9),
    ),
    (nn.Conv1d, FlipoutConv1d, (3, 2, 2), {"dilation": 3, "bias": False}, (3, 12)),
    (
        nn.Conv2d,
        FlipoutConv2d,
        (4, 6, (3, 2)),
        {"stride": (2, 1), "padding": (1, 0), "dilation": (1, 2)},
        (2, 4, 9, 8),
    ),
    (
        nn.Conv2d,
        FlipoutConv2d,
        (4, 6, 3),
        {"groups": 2, "padding": "same", "padding_mode": "reflect"},
        (2, 4, 7, 7),
    ),
    (nn.Conv2d, FlipoutConv2d, (2, 3, (1, 3)), {"bias": False, "padding": "valid"}, (2, 5, 6)),
]


def load_means(bayesian: BayesianModule, twin: nn.Module) -> None:
    """Copy the twin's parameters into the posterior means (same names by construction)."""
    with torch.no_grad():
        for name, value in twin.named_parameters():
            getattr(bayesian, f"{name}_mean").copy_(value)


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
    with use_posterior_mean(layer):  # mean weights: exact again, whatever the scale
        assert torch.equal(layer(x), twin(x))


def test_layers_have_the_twin_parameter_names_and_default_init():
    torch.manual_seed(0)
    twin = nn.Conv2d(3, 5, (2, 3))
    torch.manual_seed(0)
    layer = FlipoutConv2d(3, 5, (2, 3))
    # same initialisation scheme consumed from the same seed: identical means
    assert torch.equal(layer.weight_mean, twin.weight) and torch.equal(layer.bias_mean, twin.bias)
    assert set(dict(layer.named_parameters())) == {"weight_mean", "weight_rho", "bias_mean", "bias_rho"}


def _lstm_pair(**kwargs):
    torch.manual_seed(0)
    twin = nn.LSTM(5, 7, **kwargs)
    layer = FlipoutLSTM(5, 7, **kwargs, posterior_scale_init=0.0)
    load_means(layer, twin)
    return twin, layer


LSTM_CASES = [
    {},
    {"num_layers": 2, "bidirectional": True, "batch_first": True},
    {"num_layers": 3, "bias": False},
]


def _lstm_tolerance(roundoff_tolerance, layer: FlipoutLSTM, x: torch.Tensor) -> float:
    """Our gate loop and ``nn.LSTM``'s kernel (native or oneDNN) sum the same products in another order.

    A gate pre-activation sums ``input + hidden`` products, each at most ``max|w| * max(|x|, 1)`` (hidden
    and cell states are bounded by 1); its rounding is carried through every time step and layer, so the
    reduction length counts them all. Gates then pass through sigmoid/tanh (Lipschitz 1).
    """
    width = max(x.shape[-1], 2 * layer.hidden_size) + layer.hidden_size
    weight = max(float(p.detach().abs().max()) for n, p in layer.named_parameters() if n.endswith("_mean"))
    magnitude = width * weight * max(float(x.abs().max()), 1.0)
    steps = x.shape[1 if layer.batch_first else 0] if x.dim() == 3 else x.shape[0]
    return roundoff_tolerance(magnitude, width * steps * layer.num_layers, x.dtype)


@pytest.mark.parametrize("kwargs", LSTM_CASES)
def test_lstm_zero_scale_equals_nn_lstm(kwargs, roundoff_tolerance):
    twin, layer = _lstm_pair(**kwargs)
    x = torch.randn(3, 6, 5)
    directions = 2 if kwargs.get("bidirectional") else 1
    batch = 3 if kwargs.get("batch_first") else 6
    state = (torch.randn(kwargs.get("num_layers", 1) * directions, batch, 7),) * 2
    tolerance = _lstm_tolerance(roundoff_tolerance, layer, x)
    # PyTorch's native CPU kernel and oneDNN (the default on CPU) are other code paths than our gate loop:
    # equal up to the rounding of reordered sums.
    with torch.backends.mkldnn.flags(enabled=False):
        out, (h, c) = layer(x, state)
        ref, (h_ref, c_ref) = twin(x, state)
    for ours, theirs in ((out, ref), (h, h_ref), (c, c_ref)):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=tolerance)
    out, _ = layer(x, state)
    torch.testing.assert_close(out, twin(x, state)[0], rtol=0, atol=tolerance)
    layer.reset_posterior_scale(0.1)
    with use_posterior_mean(layer):  # the mean path runs nn.LSTM's own kernel: exact under any backend
        assert torch.equal(layer(x, state)[0], twin(x, state)[0])


def test_lstm_unbatched_input_and_default_state(roundoff_tolerance):
    twin, layer = _lstm_pair(num_layers=2)
    x = torch.randn(4, 5)
    tolerance = _lstm_tolerance(roundoff_tolerance, layer, x)
    with torch.backends.mkldnn.flags(enabled=False):
        out, (h, _) = layer(x)
        ref, (h_ref, _) = twin(x)
    assert out.shape == (4, 7)
    torch.testing.assert_close(out, ref, rtol=0, atol=tolerance)
    torch.testing.assert_close(h, h_ref, rtol=0, atol=tolerance)


class _Recorder:
    """Records every weight perturbation and sign draw that the Flipout layers make."""

    def __init__(self, monkeypatch):
        self.perturbations, self.signs = {}, []
        draw_signs, draw_perturbation = flipout_module.rademacher, BayesianModule.posterior_perturbation

        def record_signs(*args, **kwargs):
            self.signs.append(draw_signs(*args, **kwargs))
            return self.signs[-1]

        def record_perturbation(layer, name):
            self.perturbations[name] = draw_perturbation(layer, name)
            return self.perturbations[name]

        monkeypatch.setattr(flipout_module, "rademacher", record_signs)
        monkeypatch.setattr(BayesianModule, "posterior_perturbation", record_perturbation)


def _example_weights(layer, rec, name, r, s):
    """Wen et al. 2018 eq. (4): W_n = mean + Delta W * (s_n r_n^T), with the bias riding on s_n."""
    mean, delta = layer.posterior_mean(name), rec.perturbations[name]
    if delta.ndim == 1:
        return mean + delta * s
    sign = s[:, None] * r[None, :]
    return mean + delta * sign.reshape(sign.shape + (1,) * (delta.ndim - 2))


def test_linear_output_is_the_per_example_weight_product(monkeypatch):
    rec = _Recorder(monkeypatch)
    torch.manual_seed(0)
    layer = FlipoutLinear(6, 4, posterior_scale_init=0.3)
    x = torch.randn(5, 6, dtype=torch.float32)
    out = layer(x)
    r, s = rec.signs[0][:, :6], rec.signs[0][:, 6:]
    for n in range(5):
        w = _example_weights(layer, rec, "weight", r[n], s[n])
        b = _example_weights(layer, rec, "bias", None, s[n])
        torch.testing.assert_close(out[n], w @ x[n] + b)


@pytest.mark.parametrize(
    ("batch_dim", "shape", "examples"),
    [
        (1, (4, 3, 6), 3),  # time-major [T, B, F]: one weight sample per example, shared over the T steps
        (0, (3, 4, 6), 3),  # batch-major [B, T, F]
        (2, (2, 4, 3, 6), 3),  # [T1, T2, B, F]
        (1, (4, 6), 1),  # unbatched time-major [T, F]: one example
    ],
)
def test_linear_draws_one_weight_sample_per_example_along_batch_dim(monkeypatch, batch_dim, shape, examples):
    """Position p of example n computes W_n x + b_n with W_n from example n's signs (Wen et al. 2018,
    eq. (4)), whatever the layout: the signs follow batch_dim, and the other positions share them."""
    rec = _Recorder(monkeypatch)
    torch.manual_seed(0)
    layer = FlipoutLinear(6, 4, batch_dim=batch_dim, posterior_scale_init=0.3)
    x = torch.randn(shape)
    out = layer(x)
    assert out.shape == (*shape[:-1], 4)
    signs = rec.signs[0]
    assert signs.shape == (examples, 6 + 4)
    # positions of example n, moved to the front: [examples, positions, features]
    by_example = x.movedim(batch_dim, 0) if examples > 1 else x.unsqueeze(0)
    out_by_example = out.movedim(batch_dim, 0) if examples > 1 else out.unsqueeze(0)
    for n in range(examples):
        w = _example_weights(layer, rec, "weight", signs[n, :6], signs[n, 6:])
        b = _example_weights(layer, rec, "bias", None, signs[n, 6:])
        expected = by_example[n].reshape(-1, 6) @ w.T + b
        torch.testing.assert_close(out_by_example[n].reshape(-1, 4), expected)


def test_linear_batch_dim_gives_identical_examples_uncorrelated_noise_and_positions_one_sample():
    """Statistics of the time-major layout without the recorder: with x[t, b] = v for all t and b, the T steps
    of one example are equal (one weight sample), and two examples of one pass are uncorrelated: their product
    moment is within 5 standard errors of 0, while a layer that shares signs across examples (the old
    dim-0 signs, here along T) would make them equal."""
    torch.manual_seed(0)
    layer = FlipoutLinear(5, 3, batch_dim=1, posterior_scale_init=0.5).double()
    v = torch.randn(5, dtype=torch.float64)
    x = v.expand(4, 2, 5)  # [T=4, B=2, F]
    with torch.no_grad(), use_posterior_mean(layer):
        mean = layer(v)
    with torch.no_grad():
        out = torch.stack([layer(x) for _ in range(4000)]) - mean  # [passes, T, B, C]
    assert torch.equal(out[:, 1:], out[:, :1].expand_as(out[:, 1:]))  # every step: the example's one sample
    a, b = out[:, 0, 0], out[:, 0, 1]
    product = a * b
    assert bool((product.mean(0).abs() < 5 * product.std(0) / math.sqrt(product.shape[0])).all())
    # the two examples' weights coincide only when their signs do, up to a joint flip: P = 2 / 2^(5 + 3)
    assert float((a == b).all(-1).double().mean()) < 0.05


def test_conv2d_output_is_the_per_example_weight_convolution(monkeypatch):
    rec = _Recorder(monkeypatch)
    torch.manual_seed(0)
    layer = FlipoutConv2d(4, 6, (3, 2), stride=(2, 1), padding=1, groups=2, posterior_scale_init=0.3)
    x = torch.randn(3, 4, 7, 6)
    out = layer(x)
    signs = rec.signs[0]
    for n in range(3):
        r, s = signs[n, :4], signs[n, 4:]
        # grouped conv: input channel index inside the group, repeated for each group's outputs
        r_in = r.view(2, 2).repeat_interleave(3, dim=0)  # [out=6, in/groups=2]
        w = layer.weight_mean + rec.perturbations["weight"] * (s[:, None] * r_in)[:, :, None, None]
        b = _example_weights(layer, rec, "bias", None, s)
        ref = F.conv2d(x[n : n + 1], w, b, stride=(2, 1), padding=1, groups=2)
        torch.testing.assert_close(out[n : n + 1], ref)


def test_lstm_output_is_nn_lstm_with_per_example_weights(monkeypatch):
    rec = _Recorder(monkeypatch)
    torch.manual_seed(0)
    layer = FlipoutLSTM(3, 4, num_layers=2, bidirectional=True, posterior_scale_init=0.2)
    x, batch = torch.randn(5, 2, 3), 2
    out, (h, _) = layer(x)
    for n in range(batch):
        twin = nn.LSTM(3, 4, num_layers=2, bidirectional=True)
        for k, (layer_index, suffix) in enumerate(
            [(0, "_l0"), (0, "_l0_reverse"), (1, "_l1"), (1, "_l1_reverse")]
        ):
            in_width = 3 if layer_index == 0 else 8
            r_ih, s_ih, r_hh, s_hh = rec.signs[k][n].split((in_width, 16, 4, 16))
            with torch.no_grad():
                for part, r, s in (("ih", r_ih, s_ih), ("hh", r_hh, s_hh)):
                    w = _example_weights(layer, rec, f"weight_{part}{suffix}", r, s)
                    getattr(twin, f"weight_{part}{suffix}").copy_(w)
                    getattr(twin, f"bias_{part}{suffix}").copy_(
                        _example_weights(layer, rec, f"bias_{part}{suffix}", None, s)
                    )
        ref, (h_ref, _) = twin(x[:, n : n + 1])
        torch.testing.assert_close(out[:, n : n + 1], ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(h[:, n : n + 1], h_ref, rtol=1e-5, atol=1e-6)


def _check_moments(samples, mean, var, independent):
    """Sample mean and variance along dim 0 within 5 standard errors of the analytic values.

    ``independent`` is the number of independent draws among the samples (copies inside one forward pass
    share Delta W, so only the passes are independent): the standard errors ``sqrt(var / n)`` and
    ``var sqrt(2 / (n - 1))`` (Gaussian samples) use it, which errs on the wide side.
    """
    got_mean, got_var = samples.mean(0), samples.var(0)
    se_mean, se_var = (var / independent).sqrt(), var * math.sqrt(2.0 / (independent - 1))
    assert bool(((got_mean - mean).abs() < 5 * se_mean).all()), (got_mean - mean).abs().max()
    assert bool(((got_var - var).abs() < 5 * se_var).all()), ((got_var - var) / var).abs().max()


def test_linear_output_mean_and_variance_match_the_analytic_values():
    # y_j ~ N(sum_i x_i m_ji + b_j, sum_i x_i^2 s_ji^2 + s_bj^2) for every example, whatever its batch-mates.
    torch.manual_seed(0)
    layer = FlipoutLinear(5, 3, posterior_scale_init=0.3).double()
    x = torch.randn(5, dtype=torch.float64)
    with torch.no_grad():
        layer.bias_rho.fill_(math.log(math.expm1(0.5)))  # a bias variance that matters
        samples = torch.cat([layer(x.expand(2, 5)) for _ in range(8000)])
    w_var = layer.posterior_scale("weight").square()
    b_var = layer.posterior_scale("bias").square()
    _check_moments(samples, layer.weight_mean @ x + layer.bias_mean, w_var @ x.square() + b_var, 8000)


def test_conv2d_output_mean_and_variance_match_the_analytic_values():
    # Var y[c, h, w] = sum over the receptive field of x^2 s^2, i.e. conv(x^2, s^2) + s_b^2. One sign per
    # channel spans the kernel, so copies in one pass are strongly dependent: many passes of two copies.
    torch.manual_seed(0)
    layer = FlipoutConv2d(2, 3, 3, padding=1, posterior_scale_init=0.3).double()
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        samples = torch.cat([layer(x.repeat(2, 1, 1, 1)) for _ in range(6000)])
    var = F.conv2d(
        x.square(),
        layer.posterior_scale("weight").square(),
        layer.posterior_scale("bias").square(),
        padding=1,
    )
    mean = F.conv2d(x, layer.weight_mean, layer.bias_mean, padding=1)
    _check_moments(samples, mean, var, 6000)


@pytest.mark.parametrize(
    ("layer", "x"),
    [
        (FlipoutLinear(4, 3, posterior_scale_init=0.5), torch.randn(4)),
        (FlipoutConv2d(2, 3, 2, posterior_scale_init=0.5), torch.randn(2, 3, 3)),
    ],
)
def test_copies_of_one_input_get_uncorrelated_perturbations(layer, x):
    # Flipout's signs make the noise of two examples uncorrelated although they share Delta W (even given
    # Delta W, as every example draws its own signs); over M pairs a sample correlation has standard error
    # about 1/sqrt(M).
    torch.manual_seed(0)
    calls, pairs = 20, 400
    with torch.no_grad(), use_posterior_mean(layer):
        mean = layer(x.unsqueeze(0))
    with torch.no_grad():
        out = torch.cat([layer(x.repeat(2 * pairs, *[1] * x.ndim)) for _ in range(calls)]) - mean
    a, b = out[0::2].reshape(calls * pairs, -1), out[1::2].reshape(calls * pairs, -1)
    corr = (a * b).mean(0) / (a.square().mean(0) * b.square().mean(0)).sqrt()
    assert float(corr.abs().max()) < 5 / math.sqrt(calls * pairs)
    assert not torch.equal(a, b)


def test_expected_gradients_match_the_gradient_of_the_expected_loss():
    # L = sum y^2; E[L] = sum_n sum_j (mean_nj^2 + sum_i x_ni^2 s_ji^2 + s_bj^2), so
    # dE[L]/d rho_ji = 2 s_ji sigmoid(rho_ji) sum_n x_ni^2 and dE[L]/d m_ji = 2 sum_n mean_nj x_ni.
    torch.manual_seed(0)
    layer = FlipoutLinear(3, 2, posterior_scale_init=0.4).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    grads = []
    for _ in range(3000):
        layer.zero_grad()
        layer(x).square().sum().backward()
        grads.append(torch.cat([layer.weight_mean.grad.flatten(), layer.weight_rho.grad.flatten()]))
    grads = torch.stack(grads)
    with torch.no_grad():
        mean_out = x @ layer.weight_mean.T + layer.bias_mean
        scale = layer.posterior_scale("weight")
        expected = torch.cat(
            [
                (2 * mean_out.T @ x).flatten(),
                (2 * scale * torch.sigmoid(layer.weight_rho) * x.square().sum(0)).flatten(),
            ]
        )
    se = grads.std(0) / math.sqrt(len(grads))
    assert bool(((grads.mean(0) - expected).abs() < 5 * se + 1e-9).all())


def test_layers_sample_in_eval_mode_and_use_posterior_mean_restores():
    torch.manual_seed(0)
    layer = FlipoutLinear(4, 3).eval()
    x = torch.randn(2, 4)
    assert not torch.equal(layer(x), layer(x))  # eval mode changes nothing about the posterior
    with use_posterior_mean(layer):
        assert layer.samples is False
        with use_posterior_mean(layer):
            pass
        assert layer.samples is False  # nested blocks restore the outer setting
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight_mean, layer.bias_mean), rtol=0, atol=0)
    assert layer.samples is True


def test_kl_divergence_is_a_method_not_a_tuple():
    layer = FlipoutLinear(4, 3, prior=NormalPrior(0.5))
    out = layer(torch.randn(2, 4))
    assert isinstance(out, torch.Tensor)
    expected = sum(
        torch.distributions.kl_divergence(
            torch.distributions.Normal(layer.posterior_mean(n), layer.posterior_scale(n)),
            torch.distributions.Normal(torch.tensor(0.0), torch.tensor(0.5)),
        ).sum()
        for n in ("weight", "bias")
    )
    torch.testing.assert_close(layer.kl_divergence(), expected)


def _same_seed_outputs(a, b, x):
    torch.manual_seed(1)
    out_a = a(x)
    torch.manual_seed(1)
    return out_a, b(x)


@pytest.mark.parametrize(
    ("make", "x"),
    [
        (lambda: FlipoutLinear(4, 3), torch.randn(2, 4)),
        (lambda: FlipoutLinear(4, 3, batch_dim=1), torch.randn(5, 2, 4)),
        (lambda: FlipoutConv1d(2, 3, 3), torch.randn(2, 2, 6)),
        (lambda: FlipoutLSTM(4, 3, num_layers=2), torch.randn(5, 2, 4)),
    ],
)
def test_state_dict_round_trip_and_deepcopy(make, x):
    torch.manual_seed(0)
    layer = make()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1)  # move away from a fresh layer's values
    fresh = make()
    fresh.load_state_dict(layer.state_dict())
    a, b = _same_seed_outputs(layer, fresh, x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    clone = copy.deepcopy(layer)
    a, b = _same_seed_outputs(layer, clone, x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with torch.no_grad():
        next(clone.parameters()).add_(1.0)
    assert not torch.equal(next(clone.parameters()), next(layer.parameters()))


def test_layers_compose_in_nn_sequential_and_convert_dtype():
    model = nn.Sequential(
        FlipoutConv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), FlipoutLinear(2 * 4 * 4, 3)
    ).double()
    out = model(torch.randn(5, 1, 6, 6, dtype=torch.float64))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64 and out.shape == (5, 3)


@pytest.mark.compile
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")
def test_torch_compile_of_a_tiny_layer(roundoff_tolerance):
    # One graph (and its backward) for both checks: the scale is data, not structure.
    torch.manual_seed(0)
    layer = FlipoutLinear(4, 3, posterior_scale_init=0.0)
    compiled = torch.compile(layer)
    x = torch.randn(8, 4)
    expected = F.linear(x, layer.weight_mean, layer.bias_mean)
    # inductor's kernel is another code path: equal up to the rounding of the 4 products (and the bias)
    magnitude = F.linear(x.abs(), layer.weight_mean.abs(), layer.bias_mean.abs()).detach()
    assert bool(((compiled(x) - expected).abs() <= roundoff_tolerance(magnitude, 4 + 1, x.dtype)).all())
    layer.reset_posterior_scale(0.5)
    a, b = compiled(x), compiled(x)
    assert torch.isfinite(a).all() and not torch.equal(a, b)  # still samples when compiled
    a.sum().backward()
    assert layer.weight_rho.grad is not None and bool(layer.weight_rho.grad.abs().sum() > 0)


@pytest.mark.compile
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")
def test_torch_compile_keeps_the_time_major_sign_layout():
    # compiled code draws its own random numbers: check the layout's property, not the values
    torch.manual_seed(0)
    model = nn.Sequential(FlipoutLinear(4, 3, batch_dim=1, posterior_scale_init=0.5), nn.Tanh())
    assert "batch_dim=1" in repr(model)
    compiled = torch.compile(model)
    x = torch.randn(4).expand(5, 6, 4)  # [T, B, F], every entry the same vector
    with torch.no_grad():
        out = compiled(x)
    assert out.shape == (5, 6, 3)
    assert torch.equal(out, out[:1].expand_as(out))  # one weight sample per example, shared by its steps
    assert len({tuple(row.tolist()) for row in out[0]}) == 6  # and one per example


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: FlipoutConv2d(3, 4, 3, groups=2), ValueError, "groups: expected a divisor"),
        (lambda: FlipoutConv2d(2, 4, (3, 0)), ValueError, "kernel_size: expected an int >= 1"),
        (lambda: FlipoutConv1d(2, 4, 3, padding="full"), ValueError, "padding: expected 'same'"),
        (lambda: FlipoutConv1d(2, 4, 3, padding="same", stride=2), ValueError, "'same' needs stride 1"),
        (lambda: FlipoutConv1d(2, 4, 3, padding_mode="mirror"), ValueError, "padding_mode: expected one of"),
        (lambda: FlipoutLinear(3, 2, prior="normal"), TypeError, "prior: expected a uqkit.nn.priors"),
        (
            lambda: FlipoutLinear(3, 2, posterior_scale_init=-1.0),
            ValueError,
            "posterior_scale_init: expected",
        ),
        (lambda: FlipoutLinear(3.0, 2), TypeError, "in_features: expected an int"),
        (lambda: FlipoutLinear(3, 2, batch_dim=-1), ValueError, "batch_dim: expected an int >= 0, got -1"),
        (lambda: FlipoutLinear(3, 2, batch_dim=True), TypeError, "batch_dim: expected an int"),
        (lambda: FlipoutLSTM(3, 2, proj_size=1), ValueError, "proj_size: Bayesian LSTMs support proj_size=0"),
        (lambda: FlipoutLSTM(3, 2, dropout=1.5), ValueError, r"dropout: expected a number in \[0, 1\]"),
    ],
)
def test_constructors_reject_bad_arguments(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_forward_rejects_bad_inputs():
    with pytest.raises(ValueError, match=r"input: expected a tensor \[..., 3\]"):
        FlipoutLinear(3, 2)(torch.randn(4, 5))
    with pytest.raises(TypeError, match="input: expected a floating-point tensor"):
        FlipoutLinear(3, 2)(torch.ones(4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="expected 2 features"):
        FlipoutConv2d(2, 3, 3)(torch.randn(1, 3, 5, 5))
    with pytest.raises(ValueError, match="input: expected a 3-D or 4-D tensor"):
        FlipoutConv2d(2, 3, 3)(torch.randn(5, 5))
    lstm = FlipoutLSTM(3, 2)
    with pytest.raises(TypeError, match="PackedSequence is not supported"):
        lstm(pack_sequence([torch.randn(3, 3), torch.randn(2, 3)]))
    with pytest.raises(ValueError, match=r"hx: expected h_0 of shape \(1, 4, 2\)"):
        lstm(torch.randn(5, 4, 3), (torch.zeros(1, 3, 2), torch.zeros(1, 3, 2)))
    with pytest.raises(TypeError, match=r"hx: expected a tuple \(h_0, c_0\)"):
        lstm(torch.randn(5, 4, 3), torch.zeros(1, 4, 2))
    with pytest.raises(TypeError, match=r"model: expected a torch\.nn\.Module"), use_posterior_mean("model"):
        pass
