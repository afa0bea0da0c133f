"""Members folded into the batch (issue 18): every member family is called as the model it wraps, with
``[B, ...]`` inputs (positional and keyword), and returns ``[M * B, ...]`` member-major; a batch of B == M
examples is never misread as members. Checked against loops over members in float64."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from uqkit.methods import MIMO, BatchEnsembleConfig, DeepEnsemble, Rank1Config, bayesianize_
from uqkit.methods.convert import remove_member_tiling
from uqkit.methods.ensemble import StackedEmbedding, StackedGroupNorm, VmapStacked
from uqkit.nn import use_posterior_mean
from uqkit.nn.members import fold_members, num_members, pretiled, tile_members, unfold_members

pytestmark = pytest.mark.usefixtures("one_thread")

M = 3
TOL = {"rtol": 1e-10, "atol": 1e-10}


class ShapeChecking(nn.Module):
    """A forward that reads and checks shapes as model-zoo code does, with keyword inputs."""

    def __init__(self, channels: int = 2) -> None:
        super().__init__()
        self.channels = channels
        self.conv = nn.Conv2d(channels, 4, 3, padding=1)
        self.head = nn.Linear(4 + 5, 3)

    def forward(self, pixels: torch.Tensor, *, extra: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        if pixels.shape[1] != self.channels:
            raise ValueError(f"expected {self.channels} channels, got {pixels.shape[1]}")
        pixels = pixels.to(self.conv.weight.dtype)  # model code reading layer.weight.dtype
        batch = pixels.shape[0]
        if extra.shape != (batch, 5):
            raise ValueError(f"extra: expected [{batch}, 5], got {list(extra.shape)}")
        pooled = self.conv(pixels).relu().mean((2, 3)).reshape(batch, -1)
        return self.head(torch.cat([pooled, extra], dim=1)) * scale


def _inputs(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch, 2, 5, 5, dtype=torch.float64), torch.randn(batch, 5, dtype=torch.float64)


@pytest.mark.parametrize("batch", [M, 1, 4])  # B == M must read as examples, never as members
def test_deep_ensemble_runs_a_shape_checking_forward_with_keywords(batch):
    torch.manual_seed(0)
    ensemble = DeepEnsemble(lambda: ShapeChecking().double(), M)
    x, extra = _inputs(batch)
    out = ensemble(x, extra=extra, scale=2.0)
    assert out.shape == (M * batch, 3)
    expected = torch.stack([m(x, extra=extra, scale=2.0) for m in ensemble.members()])
    torch.testing.assert_close(unfold_members(out, M), expected, **TOL)


@pytest.mark.parametrize("config", [BatchEnsembleConfig, Rank1Config], ids=["batchensemble", "rank1"])
@pytest.mark.parametrize("batch", [M, 2])
def test_converted_model_is_called_exactly_as_before(config, batch):
    torch.manual_seed(1)
    model = ShapeChecking().double()
    original = copy.deepcopy(model)
    report = bayesianize_(model, config(M, fast_weight_init="random_sign"))
    assert len(report.converted) == 2 and num_members(model) == M
    for name in ("in_channels", "out_channels", "kernel_size", "stride", "padding"):
        assert getattr(model.conv, name) == getattr(original.conv, name), name
    assert model.conv.weight.shape == original.conv.weight.shape  # the shared slow weight
    assert (model.head.in_features, model.head.out_features) == (9, 3)
    x, extra = _inputs(batch)
    with use_posterior_mean(model):
        out = unfold_members(model(x, extra=extra), M)
    # member m by hand: W * (s_m r_m^T), its own bias, on the original forward
    for m in range(M):
        member = copy.deepcopy(original)
        for name in ("conv", "head"):
            layer, target = getattr(model, name), getattr(member, name)
            r = layer.r if hasattr(layer, "r") else layer.r_mean
            s = layer.s if hasattr(layer, "s") else layer.s_mean
            scale = s[m].view(-1, 1, *([1] * (layer.weight.dim() - 2))) * r[m].view(
                1, -1, *([1] * (layer.weight.dim() - 2))
            )
            with torch.no_grad():
                target.weight.copy_(layer.weight * scale)
                target.bias.copy_(layer.bias[m])
        torch.testing.assert_close(out[m], member(x, extra=extra), **TOL)
    assert not torch.allclose(out[0], out[1])


@pytest.mark.parametrize("config", [BatchEnsembleConfig(M), Rank1Config(M)], ids=["batchensemble", "rank1"])
def test_tiling_survives_deepcopy_state_dict_and_save_and_can_be_removed(config):
    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    bayesianize_(model, config)
    x = torch.randn(5, 2, 4)
    fresh = nn.Sequential(nn.Flatten(), nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    bayesianize_(fresh, config)
    fresh.load_state_dict(model.state_dict())
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    with use_posterior_mean(model):
        out = model(x)
        assert out.shape == (M * 5, 2)
        for other in (copy.deepcopy(model), fresh, loaded):
            assert num_members(other) == M
            with use_posterior_mean(other):
                torch.testing.assert_close(other(x), out, rtol=0, atol=0)
        assert remove_member_tiling(model) and num_members(model) == 1
        # a plain repeat takes the scaled-input path, the tile the side-by-side weights: rounding apart
        torch.testing.assert_close(model(tile_members(x, M)), out, rtol=1e-5, atol=1e-6)
    assert not remove_member_tiling(model)


def test_pretiled_runs_one_batch_per_member_and_refuses_a_batch_not_a_multiple_of_m():
    torch.manual_seed(3)
    ensemble = DeepEnsemble(lambda: ShapeChecking().double(), M)
    x, extra = torch.randn(M, 2, 2, 5, 5, dtype=torch.float64), torch.randn(M, 2, 5, dtype=torch.float64)
    with pretiled():
        out = unfold_members(ensemble(fold_members(x), extra=fold_members(extra)), M)
    for m, member in enumerate(ensemble.members()):
        torch.testing.assert_close(out[m], member(x[m], extra=extra[m]), **TOL)
    with pytest.raises(ValueError, match="expected a batch of M \\* B rows with M = 3"), pretiled():
        ensemble(torch.randn(4, 2, 5, 5, dtype=torch.float64), extra=torch.randn(4, 5, dtype=torch.float64))


def test_one_training_step_with_tiled_labels_equals_the_members_steps():
    torch.manual_seed(4)
    ensemble = DeepEnsemble(lambda: ShapeChecking().double(), M)
    members = ensemble.members()
    x, extra = _inputs(4)
    y = torch.tensor([0, 1, 2, 1])
    lr = 0.1
    loss = M * F.cross_entropy(ensemble(x, extra=extra), tile_members(y, M))  # the sum of members' means
    torch.optim.SGD(ensemble.parameters(), lr=lr).zero_grad()
    loss.backward()
    with torch.no_grad():
        for p in ensemble.parameters():
            p -= lr * p.grad
    for member in members:
        F.cross_entropy(member(x, extra=extra), y).backward()
        with torch.no_grad():
            for p in member.parameters():
                p -= lr * p.grad
    after = ensemble.members()
    for trained, expected in zip(after, members, strict=True):
        for a, b in zip(trained.parameters(), expected.parameters(), strict=True):
            torch.testing.assert_close(a, b, **TOL)


class Tokens(nn.Module):
    """Embedding with padding, position embeddings from a [1, T] buffer shared by the batch, GroupNorm,
    BatchNorm1d and a module with a parameter of its own (vmap fallback) taking a keyword input."""

    def __init__(self) -> None:
        super().__init__()
        self.words = nn.Embedding(11, 6, padding_idx=0)
        self.positions = nn.Embedding(7, 6)
        self.register_buffer("position_ids", torch.arange(7)[None], persistent=False)
        self.gated = Gated(6)
        self.group = nn.GroupNorm(2, 6)
        self.batch_norm = nn.BatchNorm1d(6)
        self.head = nn.Linear(6, 3)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        length = ids.shape[1]
        h = self.words(ids) + self.positions(self.position_ids[:, :length])
        h = self.gated(h, mask=mask)
        h = self.group(h.transpose(1, 2)).transpose(1, 2)
        pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return self.head(self.batch_norm(pooled))


class Gated(nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.gate = nn.Parameter(torch.randn(features))

    def forward(self, h: torch.Tensor, *, mask: torch.Tensor) -> torch.Tensor:
        return h * torch.sigmoid(self.gate) * mask[..., None]


class Holder(nn.Module):
    """Tokens inside a container with a buffer of its own, equal in every member (shared)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = Tokens()
        self.register_buffer("offset", torch.zeros(1))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.body(ids, mask) + self.offset


@pytest.mark.parametrize("training", [True, False])
def test_embedding_group_norm_batch_norm_and_vmap_fallback_equal_the_loop(training):
    torch.manual_seed(5)
    ensemble = DeepEnsemble(lambda: Tokens().double(), M).train(training)
    net = ensemble.network
    assert isinstance(net.words, StackedEmbedding) and isinstance(net.positions, StackedEmbedding)
    assert isinstance(net.group, StackedGroupNorm) and isinstance(net.gated, VmapStacked)
    assert net.gated.gate.shape == (M, 6)  # attributes read through the vmap fallback
    ids = torch.randint(1, 11, (4, 5))
    ids[0, 3:] = 0
    mask = (ids != 0).double()
    members = ensemble.members()
    out = unfold_members(ensemble(ids, mask=mask), M)
    expected = torch.stack([member(ids, mask=mask) for member in members])
    torch.testing.assert_close(out, expected, **TOL)
    if training:  # running statistics followed each member's own batch
        for m, member in enumerate(members):
            torch.testing.assert_close(net.batch_norm.running_mean[m], member.batch_norm.running_mean, **TOL)
    out.sum().backward()
    assert float(net.words.weight.grad[:, 0].abs().sum()) == 0.0  # padding_idx gets no gradient
    assert float(net.words.weight.grad[:, 1:].abs().sum()) > 0.0


def test_shared_buffers_of_a_container_are_exported_to_every_member():
    torch.manual_seed(6)
    ensemble = DeepEnsemble(Holder, 2).double().eval()
    ids = torch.randint(1, 11, (3, 4))
    mask = torch.ones(3, 4, dtype=torch.float64)
    members = ensemble.members()
    assert all(torch.equal(m.body.position_ids, torch.arange(7)[None]) for m in members)
    assert ("", "network") in ensemble._shared and "network.offset" in ensemble.state_dict()
    expected = torch.stack([m(ids, mask) for m in members])
    torch.testing.assert_close(unfold_members(ensemble(ids, mask), 2), expected, **TOL)


def test_a_batch_that_is_not_a_multiple_of_m_is_refused_by_the_layers():
    layer = DeepEnsemble(lambda: nn.Linear(3, 2), 4).network
    with pytest.raises(ValueError, match="expected a multiple of M = 4 rows"):
        layer(torch.randn(10, 3))


def test_example_dims_is_deprecated():
    with pytest.warns(DeprecationWarning, match="example_dims"):
        DeepEnsemble(lambda: nn.Linear(3, 2), 2, example_dims=1)
    with pytest.warns(DeprecationWarning, match="example_dims"):
        MIMO(nn.Linear(6, 4), 2, example_dims=1)


@pytest.mark.parametrize("batch", [2, 5])  # B == M included
def test_mimo_on_a_linear_network_infers_the_layout_and_returns_member_major_heads(batch):
    torch.manual_seed(7)
    network = nn.Sequential(nn.Linear(2 * 3, 8), nn.ReLU(), nn.Linear(8, 2 * 4)).double()
    mimo = MIMO(network, 2)
    x = torch.randn(batch, 3, dtype=torch.float64)
    out = unfold_members(mimo(x), 2)
    heads = network(torch.cat([x, x], dim=1)).view(batch, 2, 4)
    torch.testing.assert_close(out, heads.transpose(0, 1), **TOL)
    own = torch.randn(2, batch, 3, dtype=torch.float64)
    with pretiled():
        out = unfold_members(mimo(fold_members(own)), 2)
    heads = network(torch.cat([own[0], own[1]], dim=1)).view(batch, 2, 4)
    torch.testing.assert_close(out, heads.transpose(0, 1), **TOL)
    with pytest.raises(ValueError, match="expected 3 features per example"):
        mimo(torch.randn(batch, 4, dtype=torch.float64))
