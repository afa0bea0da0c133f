"""uqkit.predict for every family through its protocol (uqkit/methods/prediction_protocol.py): member models
unfolded member-major, samples inside members, predictive heads (SNGP), output forms, Gaussian outputs,
defaults."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import uqkit
from uqkit.methods.prediction_protocol import DEFAULT_NUM_SAMPLES
from uqkit.nn import MCDropout, RandomFeatureGP, StochasticModule, members
from uqkit.prediction import GaussianPrediction, Prediction

pytestmark = pytest.mark.usefixtures("one_thread")


class _RowTag(StochasticModule):
    """A 'sampling' layer (per-example noise) that writes each row's index into the last column, so that a
    test can read where every output row came from."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(x.shape[0], dtype=x.dtype).unsqueeze(1)
        return torch.cat([x[:, :-1], rows], dim=1)


class _TwoMembers(nn.Module):
    """A member model written by hand, as the folded convention asks: it tiles its [B, F] inputs to M = 2
    members (member-major rows m * B + b) and member m computes ``x @ W_m``; optional extra layers run on
    the folded [M * B, C] logits."""

    uqkit_num_members = 2

    def __init__(self, features: int = 3, classes: int = 4, tail: nn.Module | None = None) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.randn(2, features, classes))
        self.tail = tail if tail is not None else nn.Identity()

    def member_logits(self, x: torch.Tensor, member: int) -> torch.Tensor:
        """The reference: member ``member`` alone on ``x`` (no tiling)."""
        return x @ self.weights[member]

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        (x,), kwargs = members.tile_inputs((x,), {"scale": scale}, 2)
        scale = kwargs["scale"]
        rows = x.shape[0] // 2
        logits = torch.cat([x[m * rows : (m + 1) * rows] @ self.weights[m] for m in range(2)])
        if scale is not None:
            logits = logits * scale
        return self.tail(logits)


def test_member_model_rows_come_out_member_major():
    torch.manual_seed(0)
    model = _TwoMembers()
    x = torch.randn(5, 3)
    prediction = uqkit.predict(model, x)  # default num_samples: M = 2
    assert prediction.logits.shape == (2, 5, 4)
    for m in range(2):
        torch.testing.assert_close(prediction.logits[m], model.member_logits(x, m).detach())
    # power: the two members' logits differ, so a transposed or interleaved layout would fail the check above
    assert not torch.allclose(model.member_logits(x, 0), model.member_logits(x, 1), atol=0.1)
    interleaved = model(x).detach().reshape(5, 2, 4).transpose(0, 1)  # rows read as b * M + m
    assert not torch.allclose(interleaved[0], model.member_logits(x, 0), atol=0.1)
    with pytest.raises(ValueError, match="num_samples: expected 2 \\(one per member\\)"):
        uqkit.predict(model, x, num_samples=4)
    with pytest.raises(ValueError, match="num_samples: expected a multiple of the model's M = 2 members"):
        uqkit.predict(model, x, num_samples=3)


def test_samples_inside_members_are_member_major():
    """num_samples = k * M: inputs repeated k times (rows p * B + b), then tiled by the model (rows
    m * (k * B) + p * B + b); Prediction row m * k + p must be sample p of member m. The _RowTag layer
    records each output's row index, so the expected index of every (m, p, b) is known exactly."""
    model = _TwoMembers(tail=_RowTag())
    x = torch.randn(5, 3)
    k, batch = 3, 5
    logits = uqkit.predict(model, x, num_samples=2 * k).logits
    assert logits.shape == (6, 5, 4)
    tags = logits[..., -1]
    for m in range(2):
        for p in range(k):
            expected = m * (k * batch) + p * batch + torch.arange(batch, dtype=tags.dtype)
            assert torch.equal(tags[m * k + p], expected), (m, p)
            reference = model.member_logits(x, m).detach()[:, :-1]
            torch.testing.assert_close(logits[m * k + p, :, :-1], reference)
    # in several passes (samples_per_pass=1) each pass is one copy: the member-major order holds across passes
    tags = uqkit.predict(model, x, num_samples=2 * k, samples_per_pass=1).logits[..., -1]
    for m in range(2):
        for p in range(k):
            assert torch.equal(tags[m * k + p], m * batch + torch.arange(batch, dtype=tags.dtype))
    # default with sampling layers inside members: one pass, one sample per member
    assert uqkit.predict(model, x).num_samples == 2


def test_keyword_inputs_and_output_forms():
    """Keyword inputs pass through (batch-shaped tensors repeated, others unchanged); the model may return
    a tensor, an object with .logits, a dict, a tuple; output= maps anything else."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), MCDropout(0.5))
    x = torch.randn(5, 3)

    class Output:
        def __init__(self, logits: torch.Tensor) -> None:
            self.logits = logits

    class Wrapped(nn.Module):
        def __init__(self, form: str) -> None:
            super().__init__()
            self.net, self.form = net, form

        def forward(self, *, inputs: torch.Tensor, bias: torch.Tensor, mask: torch.Tensor) -> object:
            assert mask.shape == (4,) and inputs.shape[0] == bias.shape[0]  # the shared mask is not repeated
            logits = self.net(inputs) * mask + bias
            return {
                "tensor": logits,
                "object": Output(logits),
                "dict": {"loss": None, "logits": logits},
                "tuple": (logits, "hidden states"),
                "custom": {"scores": [logits]},
            }[self.form]

    bias = torch.randn(5, 1)
    mask = torch.tensor([1.0, 0.0, 1.0, 1.0])
    for form in ("tensor", "object", "dict", "tuple"):
        torch.manual_seed(1)
        got = uqkit.predict(Wrapped(form), inputs=x, bias=bias, mask=mask, num_samples=3).logits
        assert got.shape == (3, 5, 4)
        assert torch.equal(got[:, :, 1], bias.squeeze(1).expand(3, 5))  # masked column: the example's bias
        assert not torch.equal(got[0], got[1])  # dropout sampled per copy
        if form == "tensor":
            reference = got
        else:
            assert torch.equal(got, reference), form  # same draws, same numbers
    torch.manual_seed(1)
    custom = uqkit.predict(
        Wrapped("custom"), inputs=x, bias=bias, mask=mask, num_samples=3, output=lambda out: out["scores"][0]
    )
    assert torch.equal(custom.logits, reference)
    with pytest.raises(
        TypeError, match=r"model output: expected logits .*the model returned a dict with keys \['scores'\]"
    ):
        uqkit.predict(Wrapped("custom"), inputs=x, bias=bias, mask=mask, num_samples=3)
    with pytest.raises(TypeError, match="output: expected a callable"):
        uqkit.predict(net, x, output="logits")
    with pytest.raises(
        TypeError, match=r"inputs: expected at least one torch\.Tensor input, got \(mask=list\)"
    ):
        uqkit.predict(net, mask=[1.0])


def test_default_number_of_samples():
    x = torch.randn(4, 3)
    deterministic = nn.Linear(3, 2)
    assert uqkit.predict(deterministic, x).num_samples == 1
    sampler = nn.Sequential(nn.Linear(3, 2), MCDropout(0.5))
    assert uqkit.predict(sampler, x).num_samples == DEFAULT_NUM_SAMPLES == 8
    sampler.uqkit_num_samples = 5
    assert uqkit.predict(sampler, x).num_samples == 5
    assert uqkit.predict(sampler, x, num_samples=2).num_samples == 2  # the call wins
    sampler.uqkit_num_samples = 0
    with pytest.raises(ValueError, match=r"model\.uqkit_num_samples: expected an int >= 1"):
        uqkit.predict(sampler, x)
    with pytest.raises(ValueError, match="mean_field: expected None for a model without a predictive head"):
        uqkit.predict(deterministic, x, mean_field=True)


class _GaussianRegressor(nn.Module):
    """A Gaussian-head regressor: mean and softplus variance, with MC dropout on the hidden layer."""

    def __init__(self, form: str) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), MCDropout(0.3), nn.Linear(16, 4))
        self.form = form

    def forward(self, x: torch.Tensor) -> object:
        mean, raw = self.body(x).chunk(2, dim=-1)
        variance = nn.functional.softplus(raw) + 1e-3
        if self.form == "dict":
            return {"mean": mean, "variance": variance}
        return torch.distributions.Normal(mean, variance.sqrt())


@pytest.mark.parametrize("form", ["dict", "normal"])
def test_gaussian_outputs_give_a_gaussian_prediction(form):
    torch.manual_seed(0)
    model = _GaussianRegressor(form)
    x = torch.randn(6, 3)
    torch.manual_seed(3)
    prediction = uqkit.predict(model, x, num_samples=4, samples_per_pass=1)
    assert isinstance(prediction, GaussianPrediction) and prediction.sample_mean.shape == (4, 6, 2)
    torch.manual_seed(3)  # the reference: 4 separate passes with the same dropout draws
    with torch.no_grad():
        outputs = [model(x) for _ in range(4)]
    means = torch.stack([o["mean"] if form == "dict" else o.mean for o in outputs])
    variances = torch.stack([o["variance"] if form == "dict" else o.variance for o in outputs])
    torch.testing.assert_close(prediction.sample_mean, means)
    torch.testing.assert_close(prediction.sample_variance, variances)
    assert float(prediction.epistemic_variance.min()) > 0  # the samples differ


def _sngp(num_samples: int | None = None) -> uqkit.SNGP:
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(2, 8), nn.Tanh())
    return uqkit.SNGP(backbone, 8, 3, num_features=32, num_samples=num_samples)


def _trained_precision(model: uqkit.SNGP) -> None:
    model.train()
    with torch.no_grad():
        model(torch.randn(64, 2))
    model.eval()


def test_sngp_mean_field_or_monte_carlo():
    model = _sngp()
    _trained_precision(model)
    x = torch.randn(5, 2)
    with torch.no_grad():
        mean, variance = model.gp.mean_and_variance(model.backbone(x))
    mean_field = mean / torch.sqrt(1 + math.pi / 8 * variance)
    default = uqkit.predict(model, x)  # num_samples=None on the model's default (None): mean-field
    assert default.num_samples == 1
    torch.testing.assert_close(default.logits[0], mean_field)
    torch.manual_seed(0)
    samples = uqkit.predict(model, x, num_samples=4000).logits  # Monte Carlo: N(mean, variance) per logit
    assert samples.shape == (4000, 5, 3)
    assert bool(((samples.mean(0) - mean).abs() < 5 * (variance / 4000).sqrt()).all())
    assert bool(((samples.var(0) - variance).abs() < 5 * variance * math.sqrt(2 / 4000)).all())
    # the model's own setting, and mean_field=True to override it
    model.num_samples = 6
    assert uqkit.predict(model, x).num_samples == 6 and model.predict(x).num_samples == 6
    torch.testing.assert_close(uqkit.predict(model, x, mean_field=True).logits[0], mean_field)
    model.num_samples = None
    assert uqkit.predict(model, x, mean_field=False).num_samples == DEFAULT_NUM_SAMPLES
    with pytest.raises(ValueError, match=r"num_samples: expected 1 \(one mean-field logit per member\)"):
        uqkit.predict(model, x, num_samples=3, mean_field=True)


def test_sngp_head_output_must_be_the_model_output():
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.sngp = _sngp()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * self.sngp(x)

    with pytest.raises(ValueError, match="expected the \\[B, C\\] logits that the RandomFeatureGP returned"):
        uqkit.predict(Scaled(), torch.randn(4, 2))
    with_dropout = _sngp()
    with_dropout.backbone.append(MCDropout(0.1))
    with pytest.raises(ValueError, match="together with sampling layers"):
        uqkit.predict(with_dropout, torch.randn(4, 2))


def test_gp_head_inside_a_member_model():
    """A member model whose members share a GP head: mean-field logits of member m are the GP's on member
    m's hidden representation (here, the input shifted by m)."""

    class Members(nn.Module):
        uqkit_num_members = 2

        def __init__(self) -> None:
            super().__init__()
            self.gp = RandomFeatureGP(2, 3, num_features=16)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            (x,), _ = members.tile_inputs((x,), {}, 2)
            shift = torch.arange(2, dtype=x.dtype).repeat_interleave(x.shape[0] // 2).unsqueeze(1)
            return self.gp(x + shift)

    torch.manual_seed(0)
    model = Members()
    x = torch.randn(4, 2)
    logits = uqkit.predict(model, x).logits
    assert logits.shape == (2, 4, 3)
    for m in range(2):
        torch.testing.assert_close(logits[m], uqkit.predict(model.gp, x + m).logits[0])
    torch.manual_seed(0)
    sampled = uqkit.predict(model, x, num_samples=6).logits  # 3 Monte Carlo samples per member
    assert sampled.shape == (6, 4, 3)
    # reference: the head draws its [3, M * B, C] standard normals once; sample p of member m is
    # mean_m + sqrt(var_m) * noise[p, member m's rows], at Prediction row m * 3 + p
    torch.manual_seed(0)
    noise = torch.randn(3, 8, 3)
    model.gp.eval()
    for m in range(2):
        with torch.no_grad():
            mean, variance = model.gp.mean_and_variance(x + m)
        for p in range(3):
            expected = mean + variance.sqrt() * noise[p, m * 4 : (m + 1) * 4]
            torch.testing.assert_close(sampled[m * 3 + p], expected)


def test_heteroscedastic_model_is_one_averaged_distribution():
    torch.manual_seed(0)
    head = uqkit.nn.HeteroscedasticHead(4, 3, num_samples=32)
    model = nn.Sequential(nn.Linear(2, 4), head)
    x = torch.randn(5, 2)
    torch.manual_seed(1)
    prediction = uqkit.predict(model, x)
    torch.manual_seed(1)
    with torch.no_grad():
        expected = model(x)  # log of the Monte Carlo predictive over the head's 32 draws
    assert isinstance(prediction, Prediction) and prediction.num_samples == 1
    torch.testing.assert_close(prediction.log_probs, expected)
    assert bool((prediction.mutual_information == 0).all())
