"""Member families on models this project did not write: Hugging Face ``transformers`` models built from tiny
configs (random weights, nothing downloaded), called exactly as their own documentation calls them.

* ViT: ``forward`` checks the channel dimension of its input and reads
  ``patch_embeddings.projection.weight.dtype``; the ensemble's [M * B] batch must pass both.
* BERT: keyword inputs (``input_ids=..., attention_mask=...``), an output object with ``.logits``, and
  ``position_ids`` of shape [1, T] shared by the whole batch.

Each family is checked against a loop over its members (DeepEnsemble: the exported members; BatchEnsemble /
rank-1 at the posterior mean: the same model converted with unit factors, i.e. the original function), in
float64, and takes one training step with tiled labels.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from uqkit.methods import MIMO, BatchEnsembleConfig, DeepEnsemble, Rank1Config, bayesianize_
from uqkit.nn import use_posterior_mean
from uqkit.nn.members import num_members, tile_members, unfold_members

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

M = 3
CLASSES = 3


class Logits(nn.Module):
    """The three-line adapter a user writes: the model's ``.logits``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.model(*args, **kwargs).logits


NAMES = ["vit", "bert"]


def _train_step(model: nn.Module, kwargs: dict, members: int) -> None:
    """One Adam step on the mean cross-entropy of every member against the tiled labels."""
    batch = next(v for v in kwargs.values() if isinstance(v, torch.Tensor)).shape[0]
    labels = torch.arange(batch) % CLASSES
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in model.parameters()]
    logits = model(**kwargs).logits
    assert logits.shape == (members * batch, CLASSES)
    loss = F.cross_entropy(logits, tile_members(labels, members))
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    moved = [not torch.equal(a, p.detach()) for a, p in zip(before, model.parameters(), strict=True)]
    assert sum(moved) >= 0.9 * len(moved)  # every trained parameter but a few unused ones (e.g. a pooler)


@pytest.mark.parametrize("name", NAMES)
def test_deep_ensemble_equals_its_members_and_trains(name, tiny_hf):
    factory, inputs = tiny_hf.model_and_inputs(name, torch.float64)
    torch.manual_seed(0)
    ensemble = DeepEnsemble(factory, M).eval()
    assert num_members(ensemble) == M
    kwargs = inputs()
    out = ensemble(**kwargs)  # the model's own output object, [M * B, C] logits
    members = ensemble.members()
    assert all(type(m) is type(factory()) for m in members)
    expected = torch.stack([m(**kwargs).logits for m in members])
    torch.testing.assert_close(unfold_members(out.logits, M), expected, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(expected[0], expected[1])  # independent initialisations
    _train_step(ensemble, kwargs, M)


def test_deep_ensemble_inference_member_by_member(tiny_hf):
    """Without gradients and from ``member_by_member_rows`` folded rows, BERT's members run one after another
    on the un-tiled keyword inputs (its [1, T] position buffer as it is) and return the model's own output
    object with the members' logits; ViT's embeddings (a vmap twin) keep it folded."""
    factory, inputs = tiny_hf.model_and_inputs("bert", torch.float64)
    torch.manual_seed(0)
    ensemble = DeepEnsemble(factory, M).eval()
    ensemble.member_by_member_rows = 0
    kwargs = inputs(64)
    assert ensemble.runs_member_by_member(64)
    with torch.no_grad():
        out = ensemble(**kwargs)
        expected = torch.stack([m(**kwargs).logits for m in ensemble.members()])
    assert type(out) is type(factory()(**kwargs))
    torch.testing.assert_close(unfold_members(out.logits, M), expected, rtol=1e-10, atol=1e-10)
    vit = DeepEnsemble(tiny_hf.model_and_inputs("vit")[0], M)
    vit.member_by_member_rows = 0
    assert not vit.eval().runs_member_by_member(64)


def test_deep_ensemble_with_an_adapter_returns_logits(tiny_hf):
    torch.manual_seed(1)
    ensemble = DeepEnsemble(lambda: Logits(tiny_hf.bert(dtype=torch.float64)), M).eval()
    kwargs = tiny_hf.text()
    logits = ensemble(**kwargs)
    members = ensemble.members()
    expected = torch.stack([member(**kwargs) for member in members])
    torch.testing.assert_close(unfold_members(logits, M), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("config", [BatchEnsembleConfig, Rank1Config], ids=["batchensemble", "rank1"])
@pytest.mark.parametrize("name", NAMES)
def test_converted_model_is_called_as_before_and_equals_the_original_with_unit_factors(name, config, tiny_hf):
    factory, inputs = tiny_hf.model_and_inputs(name, torch.float64)
    torch.manual_seed(2)
    original = factory().eval()
    model = copy.deepcopy(original)
    extra = {"posterior_scale_init": 0.0} if config is Rank1Config else {}
    bayesianize_(model, config(M, fast_weight_init="ones", **extra))
    assert num_members(model) == M
    kwargs = inputs()
    with torch.no_grad():
        expected = original(**kwargs).logits
        out = unfold_members(model(**kwargs).logits, M)
    for m in range(M):  # unit factors: every member computes the original function
        torch.testing.assert_close(out[m], expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("config", [BatchEnsembleConfig, Rank1Config], ids=["batchensemble", "rank1"])
@pytest.mark.parametrize("name", NAMES)
def test_converted_model_members_differ_and_train(name, config, tiny_hf):
    factory, inputs = tiny_hf.model_and_inputs(name, torch.float64)
    torch.manual_seed(3)
    model = factory()
    bayesianize_(model, config(M))
    kwargs = inputs()
    with torch.no_grad(), use_posterior_mean(model):
        out = unfold_members(model.eval()(**kwargs).logits, M)
    assert not torch.allclose(out[0], out[1])  # N(1, 0.1^2) factors: members near, not equal
    _train_step(model, kwargs, M)


def test_mimo_infers_the_layout_of_a_vision_transformer(tiny_hf):
    torch.manual_seed(4)
    vit = tiny_hf.vit(channels=M * 3, labels=M * CLASSES, dtype=torch.float64)  # M times channels, labels
    mimo = MIMO(vit, M)
    x = tiny_hf.images(batch=5, dtype=torch.float64)["pixel_values"]
    logits = mimo.eval()(x)
    assert logits.shape == (M * 5, CLASSES)
    # member m's head on the same input in every slot: the network on [x, x, x] along channels
    stacked = mimo.network(x.repeat(1, M, 1, 1)).logits.view(5, M, CLASSES)
    torch.testing.assert_close(unfold_members(logits, M), stacked.transpose(0, 1), rtol=1e-10, atol=1e-10)
    mimo.train()
    loss = mimo.training_loss(x, torch.arange(5) % CLASSES)
    loss.backward()
    assert torch.isfinite(loss) and mimo.network.classifier.weight.grad is not None
    with pytest.raises(ValueError, match="expected 3 channels per example"):
        mimo(torch.randn(2, 6, 8, 8, dtype=torch.float64))
