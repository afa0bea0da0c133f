"""In-place conversion to Bayesian layers (uqkit/methods/convert.py)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

import uqkit
from uqkit.methods import convert
from uqkit.methods.convert import (
    ConversionReport,
    FlipoutConfig,
    ReparameterizationConfig,
    bayesianize_,
    register_conversion,
)
from uqkit.methods.prediction_protocol import DEFAULT_NUM_SAMPLES
from uqkit.nn import (
    FlipoutConv2d,
    FlipoutLinear,
    FlipoutLSTM,
    NormalPrior,
    ReparameterizationLinear,
    use_posterior_mean,
)

pytestmark = pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")


class CNNLSTM(nn.Module):
    """Nested model: convs with batch norm, a 1-D conv over width, a 2-layer bidirectional LSTM, a head."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, (3, 2), stride=(2, 1), padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Sequential(nn.Conv2d(4, 4, 3, padding="same", groups=2, bias=False), nn.ReLU()),
        )
        self.mixer = nn.ModuleDict({"conv": nn.Conv1d(4, 6, 3, padding=1, padding_mode="reflect")})
        self.rnn = nn.LSTM(6, 5, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(10, 3))

    def forward(self, x):
        h = self.features(x).mean(dim=2)  # [B, 4, W]
        h = F.relu(self.mixer["conv"](h)).transpose(1, 2)  # [B, W, 6]
        out, _ = self.rnn(h)
        return self.head(out[:, -1])


def _pretrained():
    torch.manual_seed(0)
    model = CNNLSTM()
    x = torch.randn(4, 1, 8, 7)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):  # "pretrained": weights and batch-norm statistics moved away from their init
        opt.zero_grad()
        F.cross_entropy(model(x), torch.tensor([0, 1, 2, 1])).backward()
        opt.step()
    return model.eval(), x


def _lstm_head_tolerance(model: CNNLSTM) -> float:
    """Rounding allowed between FlipoutLSTM's gate loop and ``nn.LSTM``'s kernel (another summation order).

    Float32 (eps 1.2e-7), 8 ulps on the typical ``sqrt(n)`` growth; n: the 6 + 5 gate products carried
    over the 7 steps and 2 layers of the recurrence (times 2 directions feeding layer 2), the sum of their
    magnitudes bounded by the largest weight times the 6 + 10 widths (the features are ReLU'd convolutions
    of order 1), and the head's 10 products. A wrong conversion (another weight, a lost bias) is off by
    about the logits themselves.
    """
    eps = torch.finfo(torch.float32).eps
    weight = max(float(p.detach().abs().max()) for n, p in model.rnn.named_parameters() if "rho" not in n)
    return 8 * eps * math.sqrt((6 + 10 + 5) * 7 * 2 + 10) * (16 * weight)


def test_flipout_conversion_with_zero_scale_reproduces_the_original_exactly():
    model, x = _pretrained()
    reference = model(x)
    report = bayesianize_(model, FlipoutConfig(posterior_scale_init=0.0))
    tolerance = _lstm_head_tolerance(model)
    # the convolutions and the head run the same ops as before (a zero perturbation adds exact zeros); the
    # LSTM runs our gate loop instead of nn.LSTM's kernel, under either CPU backend
    for mkldnn in (False, True):
        with torch.backends.mkldnn.flags(enabled=mkldnn):
            torch.testing.assert_close(model(x), reference, rtol=0, atol=tolerance)
    assert [(name, new) for name, _, new in report.converted] == [
        ("features.0", "FlipoutConv2d"),
        ("features.3.0", "FlipoutConv2d"),
        ("mixer.conv", "FlipoutConv1d"),
        ("rnn", "FlipoutLSTM"),
        ("head.1", "FlipoutLinear"),
    ]
    assert report.skipped == [("features.1", "BatchNorm2d", report.skipped[0][2])]
    assert "no flipout twin" in report.skipped[0][2]
    assert isinstance(model.rnn, FlipoutLSTM) and model.rnn.batch_first and model.rnn.bidirectional
    model.rnn.reset_posterior_scale(0.1)
    with use_posterior_mean(model):  # mean weights: nn.LSTM's own kernel again, exact
        assert torch.equal(model(x), reference)


@pytest.mark.parametrize("local", [False, True])
def test_gaussian_conversion_with_zero_scale_reproduces_the_original_exactly(local):
    model, x = _pretrained()
    reference = model(x)
    report = bayesianize_(
        model, ReparameterizationConfig(posterior_scale_init=0.0, local_reparameterization=local)
    )
    assert torch.equal(model(x), reference)
    assert {new for _, _, new in report.converted} == {
        "ReparameterizationConv2d",
        "ReparameterizationConv1d",
        "ReparameterizationLSTM",
        "ReparameterizationLinear",
    }
    assert model.head[1].local_reparameterization is local


def test_converted_layers_get_the_config_prior_scale_dtype_and_mode():
    model = nn.Sequential(nn.Linear(3, 4), nn.Conv1d(4, 2, 1)).double().train()
    model[1].eval()
    prior = NormalPrior(scale=0.3)
    bayesianize_(model, FlipoutConfig(prior=prior, posterior_scale_init=0.05))
    for layer in model:
        assert layer.prior == prior and layer.weight_mean.dtype == torch.float64
        torch.testing.assert_close(layer.posterior_scale("weight"), torch.full_like(layer.weight_rho, 0.05))
    assert model[0].training and not model[1].training


def test_filter_fn_chooses_by_module_and_qualified_name():
    model, _ = _pretrained()
    seen = []

    def only_head(module, name):
        seen.append((type(module).__name__, name))
        return name.startswith("head")

    report = bayesianize_(model, FlipoutConfig(), filter_fn=only_head)
    assert [c[0] for c in report.converted] == ["head.1"]
    assert ("LSTM", "rnn") in seen and ("Linear", "head.1") in seen
    assert ("rnn", "LSTM", "excluded by filter_fn") in report.skipped
    assert isinstance(model.features[0], nn.Conv2d) and isinstance(model.head[1], FlipoutLinear)


def test_unsupported_modules_are_reported_not_silently_skipped():
    torch.manual_seed(0)
    model = nn.ModuleDict(
        {
            "attention": nn.MultiheadAttention(8, 2),
            "projected": nn.LSTM(4, 6, proj_size=2),
            "normed": weight_norm(nn.Linear(3, 3)),
            "norm": nn.LayerNorm(3),
            "plain": nn.Linear(3, 3),
        }
    )
    report = bayesianize_(model, ReparameterizationConfig())
    reasons = {name: reason for name, _, reason in report.skipped}
    assert "subclass of nn.Linear" in reasons["attention.out_proj"]
    assert (
        "no reparameterization twin" in reasons["attention"]
        and "no reparameterization twin" in reasons["norm"]
    )
    assert "proj_size=2" in reasons["projected"]
    assert "parametrizations" in reasons["normed"]
    assert not any("parametrizations." in name for name in reasons)
    assert report.converted == [("plain", "Linear", "ReparameterizationLinear")]
    assert "left alone 5 module(s)" in str(report)


def test_shared_modules_stay_shared():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    report = bayesianize_(model, FlipoutConfig())
    assert model[0] is model[2] and isinstance(model[0], FlipoutLinear)
    assert [c[0] for c in report.converted] == ["0", "2"]


def test_nothing_to_convert_is_an_error_that_says_what_was_found():
    with pytest.raises(ValueError, match=r"nothing to convert for FlipoutConfig: .* found \['BatchNorm1d'\]"):
        bayesianize_(nn.Sequential(nn.BatchNorm1d(3), nn.ReLU()), FlipoutConfig())
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="excluded by filter_fn"):
        bayesianize_(model, FlipoutConfig(), filter_fn=lambda module, name: False)
    bayesianize_(model, FlipoutConfig())
    with pytest.raises(ValueError, match="already a stochastic layer"):
        bayesianize_(model, FlipoutConfig())


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"model: is itself an nn\.Linear"):
        bayesianize_(nn.Linear(2, 2), FlipoutConfig())
    with pytest.raises(TypeError, match=r"config: expected uqkit\.FlipoutConfig"):
        bayesianize_(nn.Sequential(nn.Linear(2, 2)), "flipout")
    with pytest.raises(TypeError, match="filter_fn: expected a callable"):
        bayesianize_(nn.Sequential(nn.Linear(2, 2)), FlipoutConfig(), filter_fn="head")
    with pytest.raises(TypeError, match=r"model: expected a torch\.nn\.Module"):
        bayesianize_({"a": nn.Linear(2, 2)}, FlipoutConfig())
    with pytest.raises(TypeError, match=r"prior: expected a uqkit\.nn\.priors"):
        FlipoutConfig(prior=1.0)
    with pytest.raises(ValueError, match="posterior_scale_init: expected a finite number >= 0"):
        ReparameterizationConfig(posterior_scale_init=-0.1)
    with pytest.raises(TypeError, match="local_reparameterization: expected a bool"):
        ReparameterizationConfig(local_reparameterization="yes")


def test_register_conversion_extends_the_registry(monkeypatch):
    monkeypatch.setattr(convert, "_REGISTRY", dict(convert._REGISTRY))

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(3))

    def to_reparameterization(module, config):
        layer = ReparameterizationLinear(3, 3, bias=False, prior=config.prior)
        with torch.no_grad():
            layer.weight_mean.copy_(torch.diag(module.weight))
        return layer

    register_conversion(ReparameterizationConfig, Scaled, to_reparameterization)
    model = nn.Sequential(Scaled())
    report = bayesianize_(model, ReparameterizationConfig())
    assert isinstance(report, ConversionReport) and isinstance(model[0], ReparameterizationLinear)
    torch.testing.assert_close(model[0].weight_mean, torch.eye(3))
    with pytest.raises(TypeError, match=r"module_type: expected a subclass of nn\.Module"):
        register_conversion(ReparameterizationConfig, int, to_reparameterization)


def test_conv_twin_gets_every_constructor_argument():
    conv = nn.Conv2d(
        4, 6, (3, 1), stride=(1, 2), padding=(2, 0), dilation=(2, 1), groups=2, padding_mode="circular"
    )
    model = nn.Sequential(conv)
    bayesianize_(model, FlipoutConfig(posterior_scale_init=0.0))
    layer = model[0]
    assert isinstance(layer, FlipoutConv2d)
    assert (
        layer.kernel_size,
        layer.stride,
        layer.padding,
        layer.dilation,
        layer.groups,
        layer.padding_mode,
    ) == (
        (3, 1),
        (1, 2),
        (2, 0),
        (2, 1),
        2,
        "circular",
    )
    x = torch.randn(2, 4, 6, 6)
    assert torch.equal(layer(x), conv(x))


@pytest.mark.parametrize(
    "config",
    [FlipoutConfig(num_samples=5), ReparameterizationConfig(num_samples=5)],
    ids=["flipout", "reparameterization"],
)
def test_config_num_samples_is_the_converted_models_default_for_predict(config):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    bayesianize_(model, config)
    assert model.uqkit_num_samples == 5
    x = torch.randn(6, 3)
    logits = uqkit.predict(model, x).logits
    assert logits.shape == (5, 6, 2)
    assert not torch.equal(logits[0], logits[1])  # five samples, not one repeated
    assert uqkit.predict(model, x, num_samples=3).logits.shape == (3, 6, 2)  # the call's S wins
    plain = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    bayesianize_(plain, type(config)())
    assert not hasattr(plain, "uqkit_num_samples")
    assert uqkit.predict(plain, x).logits.shape[0] == DEFAULT_NUM_SAMPLES
    with pytest.raises(ValueError, match="num_samples: expected an int >= 1, got 0"):
        type(config)(num_samples=0)
    with pytest.raises(TypeError, match="num_samples: expected an int"):
        type(config)(num_samples=2.0)
