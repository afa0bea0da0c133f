"""uqkit.predict on Hugging Face models built from tiny configs (random weights, nothing downloaded),
converted with bayesianize_: no adapter, the output object's .logits is read, keyword inputs pass through."""

from __future__ import annotations

import pytest
import torch

import uqkit
from uqkit.methods import FlipoutConfig, ReparameterizationConfig, bayesianize_

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = [FlipoutConfig(posterior_scale_init=0.05), ReparameterizationConfig(posterior_scale_init=0.05)]


def _check_examples_in_order(model: torch.nn.Module, **inputs: torch.Tensor) -> None:
    """With every posterior scale at 0 the layers still sample (with no noise), so each of the S samples of
    example b must be the posterior-mean network's logits of example b: a mix-up of examples, copies or
    keyword inputs in the repeated batch would show another example's logits (examples differ by far more
    than the tolerance, checked)."""
    for module in model.modules():
        if isinstance(module, uqkit.nn.BayesianModule):
            module.reset_posterior_scale(0.0)
    logits = uqkit.predict(model, **inputs, num_samples=3).logits
    was_training = model.training
    with uqkit.nn.use_posterior_mean(model.eval()), torch.no_grad():  # predict runs in eval mode too
        expected = model(**inputs).logits
    model.train(was_training)
    tolerance = 1e-5
    assert bool(((logits - expected).abs() <= tolerance).all()), float((logits - expected).abs().max())
    gaps = torch.cdist(expected, expected) + torch.eye(len(expected)) * 1e9
    assert float(gaps.min()) > 50 * tolerance


@pytest.mark.parametrize("config", CONFIGS, ids=["flipout", "gaussian"])
def test_vision_transformer_after_conversion(config, tiny_hf):
    """ViT's patch embedding reads projection.weight.dtype and checks the channel dimension of its input."""
    torch.manual_seed(0)
    model = tiny_hf.vit()
    bayesianize_(model, config)
    projection = model.vit.embeddings.patch_embeddings.projection
    assert not isinstance(projection, torch.nn.Conv2d)  # converted, yet read as the Conv2d it replaces
    pixel_values = torch.randn(5, 3, 8, 8)
    prediction = uqkit.predict(model, pixel_values, num_samples=4)
    assert isinstance(prediction, uqkit.Prediction) and prediction.logits.shape == (4, 5, 3)
    assert bool(torch.isfinite(prediction.logits).all())
    assert not torch.equal(prediction.logits[0], prediction.logits[1])  # samples differ
    with pytest.raises(ValueError, match="channel dimension"):
        uqkit.predict(model, torch.randn(5, 2, 8, 8), num_samples=2)
    _check_examples_in_order(model, pixel_values=pixel_values)


@pytest.mark.parametrize("config", CONFIGS, ids=["flipout", "gaussian"])
def test_text_model_with_keyword_inputs(config, tiny_hf):
    """BERT takes input_ids= and attention_mask= and returns an output object with .logits; the [B, T] ids
    and mask are both repeated for the copies."""
    torch.manual_seed(0)
    model = tiny_hf.bert()
    bayesianize_(model, config)
    ids = torch.randint(0, 50, (4, 6))
    mask = torch.ones(4, 6, dtype=torch.long)
    mask[1, 3:] = 0
    prediction = uqkit.predict(model, input_ids=ids, attention_mask=mask, num_samples=4)
    assert prediction.logits.shape == (4, 4, 3)
    assert not torch.equal(prediction.logits[0], prediction.logits[1])
    _check_examples_in_order(model, input_ids=ids, attention_mask=mask)
