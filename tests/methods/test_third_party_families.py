"""Every family on models this project did not write (tiny Hugging Face ViT and BERT, ``tiny_hf`` fixture):
one training step and :func:`uqkit.predict`, each against an independent reference (a loop over members or
samples, or the head's own distribution of the features it was given). Forward passes and members' export of
the member families are in test_third_party_members.py, prediction of the Bayesian conversions in
test_predict_third_party.py."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import uqkit
from uqkit.methods import (
    BatchEnsembleConfig,
    DeepEnsemble,
    FlipoutConfig,
    Rank1Config,
    ReparameterizationConfig,
)
from uqkit.nn import HeteroscedasticHead, MCDropout, RandomFeatureGP, use_posterior_mean

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

NAMES = ["vit", "bert"]
M = 3
CLASSES = 3


def _labels(inputs: dict) -> torch.Tensor:
    return torch.arange(next(iter(inputs.values())).shape[0]) % CLASSES


def _adam_step(model: nn.Module, loss: torch.Tensor) -> float:
    """One Adam step on ``loss``; returns the fraction of trainable parameters that moved."""
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.Adam(params, lr=1e-2)
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    return sum(not torch.equal(a, p.detach()) for a, p in zip(before, params, strict=True)) / len(params)


@pytest.mark.parametrize(
    "config", [FlipoutConfig, ReparameterizationConfig], ids=["flipout", "reparameterization"]
)
@pytest.mark.parametrize("name", NAMES)
def test_bayesian_conversion_trains_on_the_elbo(name, config, tiny_hf):
    factory, inputs = tiny_hf.model_and_inputs(name)
    torch.manual_seed(0)
    model = factory().train()
    uqkit.bayesianize_(model, config(posterior_scale_init=0.05, num_samples=4))
    batch = inputs()
    loss = uqkit.ELBO(num_data=100)(model(**batch).logits, _labels(batch), model)
    assert _adam_step(model, loss) >= 0.9  # posterior means and scales alike (a pooler may stay unused)
    assert uqkit.predict(model, **batch).logits.shape == (4, len(_labels(batch)), CLASSES)  # config's S


def _with_mc_dropout(model: nn.Module, p: float) -> nn.Module:
    """The user's swap: every ``nn.Dropout`` becomes an always-on :class:`uqkit.nn.MCDropout`."""
    for name, module in list(model.named_modules()):
        if type(module) is nn.Dropout:
            parent, _, attribute = name.rpartition(".")
            setattr(model.get_submodule(parent), attribute, MCDropout(p))
    return model


@pytest.mark.parametrize("name", NAMES)
def test_mc_dropout_predicts_the_loop_of_stochastic_passes_and_trains(name, tiny_hf):
    factory, inputs = tiny_hf.model_and_inputs(name)
    torch.manual_seed(1)
    model = _with_mc_dropout(factory(), 0.2)
    assert sum(isinstance(m, MCDropout) for m in model.modules()) >= 2
    batch = inputs()
    torch.manual_seed(2)
    logits = uqkit.predict(model, **batch, num_samples=3, samples_per_pass=1).logits
    torch.manual_seed(2)
    with torch.no_grad():  # the reference: three passes in eval mode, dropout still on
        expected = torch.stack([model.eval()(**batch).logits for _ in range(3)])
    torch.testing.assert_close(logits, expected)
    assert not torch.allclose(expected[0], expected[1])  # samples differ in eval mode
    batched = uqkit.predict(model, **batch, num_samples=5).logits  # one pass over the repeated batch
    assert batched.shape == (5, len(_labels(batch)), CLASSES)
    with use_posterior_mean(model), torch.no_grad():
        plain = model(**batch).logits
    spread = float((batched - plain).abs().mean())
    assert 0 < spread < 10 * float(plain.abs().mean())  # samples around the undropped network's logits
    loss = F.cross_entropy(model.train()(**batch).logits, _labels(batch))
    assert _adam_step(model, loss) >= 0.9


@pytest.mark.parametrize("name", NAMES)
def test_deep_ensemble_predicts_its_exported_members(name, tiny_hf):
    factory, inputs = tiny_hf.model_and_inputs(name)
    torch.manual_seed(3)
    ensemble = DeepEnsemble(factory, M)
    batch = inputs()
    logits = uqkit.predict(ensemble, **batch).logits  # default S = M
    with torch.no_grad():
        expected = torch.stack([member.eval()(**batch).logits for member in ensemble.members()])
    assert logits.shape == (M, len(_labels(batch)), CLASSES)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)


def _member_of_converted(original: nn.Module, converted: nn.Module, member: int) -> nn.Module:
    """Member ``m`` of a BatchEnsemble / rank-1 model (at the factor means) as a copy of the original model:
    each converted layer's weight becomes ``W * outer(s_m, r_m)`` and its bias ``b_m`` (Wen et al. 2020,
    eq. (1)): ``((x * r) W^T) * s + b = x (W * s r^T)^T + b``. Groups of 1 only (the tiny models' layers)."""
    copy_ = copy.deepcopy(original)
    for name, layer in converted.named_modules():
        r = getattr(layer, "r_mean", getattr(layer, "r", None))
        s = getattr(layer, "s_mean", getattr(layer, "s", None))
        if not isinstance(r, torch.Tensor) or not isinstance(s, torch.Tensor):
            continue
        target = copy_.get_submodule(name)
        assert getattr(target, "groups", 1) == 1
        extra = (1,) * (layer.weight.dim() - 2)
        factor = s[member].view(-1, 1, *extra) * r[member].view(1, -1, *extra)
        with torch.no_grad():
            target.weight.copy_(layer.weight * factor)
            if layer.bias is not None:
                target.bias.copy_(layer.bias[member])
    return copy_.eval()


@pytest.mark.parametrize("config", [BatchEnsembleConfig, Rank1Config], ids=["batchensemble", "rank1"])
@pytest.mark.parametrize("name", NAMES)
def test_converted_member_model_predicts_the_loop_over_its_members(name, config, tiny_hf):
    factory, inputs = tiny_hf.model_and_inputs(name, torch.float64)
    torch.manual_seed(4)
    original = factory().eval()
    model = copy.deepcopy(original)
    uqkit.bayesianize_(model, config(M, fast_weight_init="random_sign"))
    batch = inputs()
    with use_posterior_mean(model):
        logits = uqkit.predict(model, **batch).logits  # default S = M, one row per member
    with torch.no_grad():
        expected = torch.stack([_member_of_converted(original, model, m)(**batch).logits for m in range(M)])
    assert logits.shape == (M, len(_labels(batch)), CLASSES)
    assert not torch.allclose(expected[0], expected[1])  # random-sign members differ
    torch.testing.assert_close(logits, expected, rtol=1e-9, atol=1e-9)


def _captured_head_inputs(model: nn.Module, batch: dict) -> torch.Tensor:
    """The features the classifier head receives in an eval pass (a forward hook on ``model.classifier``)."""
    seen = []
    handle = model.classifier.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    with torch.no_grad():
        model.eval()(**batch)
    handle.remove()
    return seen[0]


@pytest.mark.parametrize("name", NAMES)
def test_gp_head_replacing_the_classifier_trains_and_predicts_its_posterior(name, tiny_hf):
    """SNGP's output layer as the zoo model's classifier: its logits are the model's ``.logits``."""
    factory, inputs = tiny_hf.model_and_inputs(name)
    torch.manual_seed(5)
    model = factory()
    model.classifier = RandomFeatureGP(tiny_hf.HIDDEN, CLASSES, num_features=32)
    batch = inputs(6)
    model.train()
    loss = F.cross_entropy(model(**batch).logits, _labels(batch)) + model.classifier.prior_penalty(100)
    assert _adam_step(model, loss) >= 0.9
    precision = model.classifier.precision.clone()
    model.classifier.reset_precision()
    with torch.no_grad():
        model.train()(**batch)  # one pass over the "training set" fills the precision
    assert not torch.equal(model.classifier.precision, precision)
    hidden = _captured_head_inputs(model, batch)
    mean, variance = model.classifier.mean_and_variance(hidden)
    mean_field = uqkit.predict(model, **batch, mean_field=True).logits
    torch.testing.assert_close(
        mean_field[0], mean / torch.sqrt(1 + model.classifier.mean_field_factor * variance)
    )
    samples = uqkit.predict(model, **batch, num_samples=4000).logits
    torch.testing.assert_close(
        samples.mean(0), mean, rtol=0, atol=float(5 * variance.max().sqrt() / 4000**0.5)
    )
    torch.testing.assert_close(samples.var(0), variance, rtol=0.15, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_heteroscedastic_head_replacing_the_classifier_trains_and_predicts_its_predictive(name, tiny_hf):
    factory, inputs = tiny_hf.model_and_inputs(name)
    torch.manual_seed(6)
    model = factory()
    head = HeteroscedasticHead(tiny_hf.HIDDEN, CLASSES, num_factors=2, num_samples=8)
    model.classifier = head
    batch = inputs(5)
    loss = F.nll_loss(model.train()(**batch).logits, _labels(batch))  # the head returns log-probabilities
    assert _adam_step(model, loss) >= 0.9
    hidden = _captured_head_inputs(model, batch)
    torch.manual_seed(7)
    prediction = uqkit.predict(model, **batch)
    torch.manual_seed(7)  # the same draws: the head is the only source of noise in eval mode
    with torch.no_grad():
        expected = head.sample_logits(hidden).softmax(-1).mean(0)
    assert prediction.logits.shape == (1, len(_labels(batch)), CLASSES)  # S = 1: label noise averaged
    torch.testing.assert_close(prediction.probs, expected)
