"""Vectorized deep ensembles (uqkit/methods/ensemble.py): every result is checked against a loop over the
exported members, in float64 so that the tolerance is rounding only. The ensemble takes ``[B, ...]`` inputs
(tiled to its members) or, inside ``pretiled()``, one batch per member folded into the batch, and returns
``[M * B, ...]`` member-major; ``_run`` unfolds it to ``[M, B, ...]``."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import uqkit
import uqkit.methods.ensemble as ensemble_module
from uqkit.bench.models import Conv1dNet, LeNet5, ResidualMLP, mlp
from uqkit.methods import DeepEnsemble, predict, register_vectorization, vmap_vectorization
from uqkit.methods.ensemble import (
    _REGISTRY,
    MEMBER_BY_MEMBER_BYTES,
    MEMBER_BY_MEMBER_MIN_BATCH,
    MEMBER_BY_MEMBER_ROWS,
    StackedBatchNorm,
    StackedConv,
    StackedGroupNorm,
    StackedLinear,
    StackedModule,
    VmapStacked,
)
from uqkit.nn import MCDropout
from uqkit.nn.dropout import MemberDropout
from uqkit.nn.members import fold_members, pretiled, tile_members, unfold_members

pytestmark = pytest.mark.usefixtures("one_thread")

M = 3
TOL = {"rtol": 1e-10, "atol": 1e-10}


class Scale(nn.Module):
    """A module with a parameter of its own and a buffer: no registered type, so it runs through vmap."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(0.3 * torch.randn(features))
        self.register_buffer("shift", torch.randn(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.log_scale.exp() + self.shift


class Gate(nn.Module):
    """A custom module with parameters only in its children and a rank-agnostic forward."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.value = nn.Linear(features, features)
        self.gate = nn.Linear(features, features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.value(x) * torch.sigmoid(self.gate(x)), x], dim=-1)


def _fallback_net() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 6), Scale(6), nn.GroupNorm(2, 6), nn.Tanh(), nn.Linear(6, 3))


def _norm_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 5 * 5, 6),
        nn.LayerNorm(6),
        nn.BatchNorm1d(6, momentum=None),
        Gate(6),
        nn.Linear(12, 3),
    )


def _conv_variants() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=1, groups=2, bias=False),
        nn.ELU(),
        nn.Conv2d(6, 6, 3, padding="same", padding_mode="reflect"),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(24, 3),
    )


# name -> (factory, example shape)
ARCHITECTURES = {
    "mlp": (lambda: mlp((1, 4, 4), 3, hidden=(8, 8)), (1, 4, 4)),
    "lenet5": (lambda: LeNet5(1, 4), (1, 28, 28)),
    "cnn1d": (lambda: Conv1dNet(2, 20, 3), (2, 20)),
    "resmlp": (lambda: ResidualMLP(5, 3, width=8, depth=2), (5,)),
    "vmap-fallback": (_fallback_net, (5,)),
    "norms-and-custom-block": (_norm_net, (2, 5, 5)),
    "conv-groups-padding": (_conv_variants, (4, 7, 6)),
}


def _ensemble(name: str, seed: int = 0) -> DeepEnsemble:
    factory, _ = ARCHITECTURES[name]
    torch.manual_seed(seed)
    return DeepEnsemble(lambda: factory().double(), M)


def _run(ensemble: nn.Module, x: torch.Tensor, per_member: bool = False) -> torch.Tensor:
    """``[M, B, ...]`` outputs for ``[B, ...]`` inputs, or for ``[M, B, ...]`` (one batch per member)."""
    members = ensemble.num_members
    if not per_member:
        return unfold_members(ensemble(x), members)
    with pretiled():
        return unfold_members(ensemble(fold_members(x)), members)


def _inputs(name: str, *leading: int) -> torch.Tensor:
    return torch.randn(*leading, *ARCHITECTURES[name][1], dtype=torch.float64)


def _loop(members: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """The reference: member ``m`` on ``x[m]``."""
    return torch.stack([member(xm) for member, xm in zip(members, x, strict=True)])


def _stacked_grads(ensemble: DeepEnsemble, member: int) -> dict[str, torch.Tensor]:
    """Member ``member``'s slice of the stacked gradients, under the exported member's parameter names."""
    grads = {}
    for name, twin_name in ensemble._leaves:
        twin = ensemble.get_submodule(twin_name)
        owner = twin.module if isinstance(twin, VmapStacked) else twin
        for key, _ in owner.named_parameters():
            grads[f"{name}.{key}" if name else key] = owner.get_parameter(key).grad[member]
    return grads


@pytest.mark.parametrize("name", ARCHITECTURES)
@pytest.mark.parametrize("per_member", [False, True], ids=["broadcast", "per-member"])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_vectorized_equals_loop_over_exported_members(name, per_member, mode):
    ensemble = _ensemble(name)
    ensemble.train(mode == "train")
    members = ensemble.members()  # exported before the forward: batch norm updates both the same way
    torch.manual_seed(1)
    x = _inputs(name, M, 4) if per_member else _inputs(name, 4)
    out = _run(ensemble, x, per_member)
    reference = _loop(members, x if per_member else x.expand(M, *x.shape))
    torch.testing.assert_close(out, reference, **TOL)

    # gradients of a loss that weighs every member and output differently
    weights = torch.randn_like(reference)
    (out * weights).sum().backward()
    (reference * weights).sum().backward()
    assert sum(1 for _ in ensemble.parameters()) == sum(1 for _ in members[0].parameters())
    for index, member in enumerate(members):
        grads = _stacked_grads(ensemble, index)
        assert sorted(grads) == sorted(n for n, _ in member.named_parameters())
        for param_name, param in member.named_parameters():
            torch.testing.assert_close(grads[param_name], param.grad, **TOL, msg=param_name)
    # running statistics (batch norm) moved exactly as the members' did
    for after, before in zip(ensemble.members(), members, strict=True):
        for (n, a), (_, b) in zip(after.named_buffers(), before.named_buffers(), strict=True):
            torch.testing.assert_close(a, b, **TOL, msg=n)


# the networks whose folded pass starts at their first twin on the un-tiled input: nn.Sequential chains whose
# first module with parameters (after nn.Flatten) is a Linear or a convolution with groups = 1
STARTS_UNTILED = {"mlp", "lenet5", "cnn1d", "resmlp", "vmap-fallback", "norms-and-custom-block"}


class _Custom(nn.Module):
    """A Linear first, but a forward of its own: the ensemble cannot know what reads the input."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + x[:, :3]


def _tile_spy(monkeypatch) -> list[int]:
    """Records the batch of every call of the ensemble's ``tile_inputs``."""
    calls: list[int] = []
    real = ensemble_module.tile_inputs

    def spy(args, kwargs, members):
        calls.append(members)
        return real(args, kwargs, members)

    monkeypatch.setattr(ensemble_module, "tile_inputs", spy)
    return calls


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_a_chain_starts_on_the_untiled_input(name, monkeypatch):
    # such a chain's first twin multiplies the un-tiled batch by the members' weights side by side, so the
    # input is never copied M times; results and gradients equal the members' (as in the test above)
    ensemble = _ensemble(name)
    members = ensemble.members()
    tiled = _tile_spy(monkeypatch)
    x = _inputs(name, 4).requires_grad_()
    out = _run(ensemble, x)
    reference = _loop(members, x.expand(M, *x.shape))
    torch.testing.assert_close(out, reference, **TOL)
    weights = torch.randn_like(reference)
    grad = torch.autograd.grad((out * weights).sum(), x)[0]
    torch.testing.assert_close(grad, torch.autograd.grad((reference * weights).sum(), x)[0], **TOL)
    assert tiled == ([] if name in STARTS_UNTILED else [M])


def test_the_untiled_start_is_not_taken_where_it_could_differ(monkeypatch):
    tiled = _tile_spy(monkeypatch)
    torch.manual_seed(0)
    x = torch.randn(4, 5, dtype=torch.float64)

    custom = DeepEnsemble(lambda: _Custom().double(), M)  # its own forward: tiled
    torch.testing.assert_close(custom(x), torch.cat([member(x) for member in custom.members()]), **TOL)
    assert tiled == [M]

    chain = DeepEnsemble(lambda: nn.Sequential(nn.Flatten(), nn.Linear(5, 3)).double(), M)
    reference = torch.cat([member(x) for member in chain.members()])
    tiled.clear()
    chain(x)
    assert tiled == []
    seen = []
    handle = chain.network[1].register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    torch.testing.assert_close(chain(x), reference, **TOL)  # a hook sees the folded rows, as always
    assert tiled == [M] and seen == [M * 4]
    handle.remove()
    with pretiled():
        chain(tile_members(x, M))
    assert tiled == [M, M]

    torch.manual_seed(0)  # dropout in front: each member's copy of a row draws its own mask, so tile
    dropped = DeepEnsemble(lambda: nn.Sequential(nn.Dropout(0.5), nn.Linear(5, 3)).double(), M)
    rows = unfold_members(dropped(torch.ones(4, 5, dtype=torch.float64)), M)
    assert tiled == [M, M, M] and not torch.equal(rows[0], rows[1])


def test_layers_map_to_stacked_twins_and_fallback():
    ensemble = _ensemble("vmap-fallback")
    kinds = [type(m) for m in ensemble.network]
    assert kinds == [StackedLinear, VmapStacked, StackedGroupNorm, nn.Tanh, StackedLinear]
    norms = _ensemble("norms-and-custom-block").network
    assert [type(m) for m in norms][:3] == [StackedConv, StackedBatchNorm, nn.ReLU]  # ReLU as it is
    # a custom block is kept, with its children stacked
    assert type(norms[7]) is Gate and type(norms[7].value) is StackedLinear
    assert type(_ensemble("mlp").network) is nn.Sequential
    assert type(_ensemble("lenet5").network) is LeNet5


def test_members_come_from_independent_factory_calls():
    factory = ARCHITECTURES["lenet5"][0]
    torch.manual_seed(5)
    expected = [factory() for _ in range(M)]
    torch.manual_seed(5)
    ensemble = DeepEnsemble(factory, M)
    for member, reference in zip(ensemble.members(), expected, strict=True):
        assert type(member) is LeNet5
        for a, b in zip(member.state_dict().values(), reference.state_dict().values(), strict=True):
            assert torch.equal(a, b)
    first, second = ensemble.members()[:2]
    assert not torch.equal(first[0].weight, second[0].weight)


def test_exported_members_are_independent_copies():
    ensemble = _ensemble("mlp")
    member = ensemble.members()[1]
    before = ensemble.network[1].weight.detach().clone()
    with torch.no_grad():
        member[1].weight.add_(1.0)
    assert torch.equal(ensemble.network[1].weight, before)
    assert member[1].weight.requires_grad and member.training == ensemble.training
    ensemble.eval()
    assert all(not m.training for m in ensemble.members()[0].modules())


def test_one_adam_step_on_the_stack_equals_independent_adams():
    # Adam is per element: one optimizer over the stacked parameters is M independent optimizers
    ensemble = _ensemble("norms-and-custom-block").train()
    members = ensemble.members()
    torch.manual_seed(2)
    x, y = _inputs("norms-and-custom-block", 6), torch.randint(0, 3, (6,))
    stacked_opt = torch.optim.Adam(ensemble.parameters(), lr=0.01)
    member_opts = [torch.optim.Adam(m.parameters(), lr=0.01) for m in members]
    for _ in range(2):
        stacked_opt.zero_grad()
        logits = ensemble(x)  # [M * B, C]
        # sum over members of the mean cross-entropy: labels tiled to the members
        (F.cross_entropy(logits, tile_members(y, M)) * M).backward()
        stacked_opt.step()
        for member, opt in zip(members, member_opts, strict=True):
            opt.zero_grad()
            F.cross_entropy(member(x), y).backward()
            opt.step()
    for after, reference in zip(ensemble.members(), members, strict=True):
        for (n, a), (_, b) in zip(after.state_dict().items(), reference.state_dict().items(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=n)


def test_state_dict_round_trip_and_deepcopy():
    ensemble = _ensemble("norms-and-custom-block").eval()
    x = _inputs("norms-and-custom-block", 4)
    other = _ensemble("norms-and-custom-block", seed=9).eval()
    assert not torch.allclose(other(x), ensemble(x))
    other.load_state_dict(ensemble.state_dict())
    torch.testing.assert_close(other(x), ensemble(x), rtol=0, atol=0)
    assert all(value.shape[0] == M for value in ensemble.state_dict().values())

    twin = copy.deepcopy(ensemble)
    torch.testing.assert_close(twin(x), ensemble(x), rtol=0, atol=0)
    with torch.no_grad():
        twin.network[0].weight.zero_()
    assert not torch.equal(twin(x), ensemble(x))
    assert len(twin.members()) == M


def test_dtype_and_device_moves_carry_to_the_members():
    torch.manual_seed(0)
    ensemble = DeepEnsemble(lambda: nn.Sequential(nn.Linear(3, 2)), 2).double()
    assert all(p.dtype == torch.float64 for m in ensemble.members() for p in m.parameters())


def test_dropout_members_draw_independent_masks():
    torch.manual_seed(0)
    ensemble = DeepEnsemble(lambda: nn.Sequential(nn.Linear(6, 50), nn.ReLU(), nn.Dropout(0.5)), 2).train()
    assert isinstance(ensemble.network[2], nn.Dropout)  # parameter-free: kept as it is
    with torch.no_grad():
        ensemble.network[0].weight.copy_(ensemble.network[0].weight[:1].expand(2, -1, -1))
        ensemble.network[0].bias.fill_(1.0)
    out = _run(ensemble, torch.randn(4, 6))
    assert not torch.equal(out[0] == 0, out[1] == 0)  # same pre-activations, different masks


def test_inference_without_a_graph_equals_the_autograd_path():
    # without a graph StackedLinear calls the product directly instead of through autograd.Function
    ensemble = _ensemble("mlp").eval()
    x = _inputs("mlp", 7)
    with_graph = ensemble(x)
    assert with_graph.requires_grad
    with torch.no_grad():
        without = ensemble(x)
    assert torch.equal(with_graph.detach(), without)


def _rows_seen(ensemble: DeepEnsemble) -> tuple[list[int], list]:
    """The rows of every input that the stacked twins receive (forward pre-hooks), and the hooks."""
    seen: list[int] = []
    handles = [
        twin.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
        for twin in ensemble.modules()
        if isinstance(twin, StackedModule)
    ]
    return seen, handles


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_inference_member_by_member_equals_the_members(name):
    ensemble = _ensemble(name).eval()
    ensemble.member_by_member_rows = 0  # the rule's row count met at any batch
    batch = MEMBER_BY_MEMBER_MIN_BATCH
    x = _inputs(name, batch)
    members = [member.eval() for member in ensemble.members()]
    reference = torch.cat([member(x) for member in members])
    by_member = name != "vmap-fallback"  # a vmap twin cannot run one member: the rule keeps the folded pass
    assert ensemble.runs_member_by_member(batch) is by_member
    seen, handles = _rows_seen(ensemble)
    with torch.no_grad():
        out = ensemble(x)
    torch.testing.assert_close(out, reference, **TOL)
    assert set(seen) == ({batch} if by_member else {M * batch})  # each twin ran one member's B rows
    seen.clear()
    with_graph = ensemble(x)  # gradients wanted: folded, one pass
    assert set(seen) == {M * batch} and with_graph.requires_grad
    torch.testing.assert_close(with_graph.detach(), reference, **TOL)
    seen.clear()
    xs = _inputs(name, M, batch)
    with torch.no_grad(), pretiled():  # one batch per member: folded
        out = unfold_members(ensemble(fold_members(xs)), M)
    assert set(seen) == {M * batch}
    torch.testing.assert_close(out, _loop(members, xs), **TOL)
    for handle in handles:
        handle.remove()


def test_member_by_member_rule():
    ensemble = DeepEnsemble(lambda: nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)), 4)
    assert ensemble.member_by_member_rows == MEMBER_BY_MEMBER_ROWS == 512
    assert MEMBER_BY_MEMBER_MIN_BATCH == 64
    ensemble.eval()
    assert not ensemble.runs_member_by_member(127) and ensemble.runs_member_by_member(128)  # 4 x 128 rows
    assert not ensemble.runs_member_by_member(128, torch.device("cuda"))  # on CPU only
    ensemble.train()  # batch statistics: the batch norm twin runs folded
    assert not ensemble.runs_member_by_member(128)
    ensemble.eval().member_by_member_rows = None
    assert not ensemble.runs_member_by_member(10_000)
    many = DeepEnsemble(lambda: nn.Linear(3, 2), 32)
    assert not many.runs_member_by_member(63) and many.runs_member_by_member(64)  # 2,016 rows, but B >= 64
    assert not DeepEnsemble(lambda: nn.Linear(3, 2), 1).runs_member_by_member(10_000)
    ensemble.member_by_member_rows = MEMBER_BY_MEMBER_ROWS
    ensemble.network.insert(2, MemberDropout([0.1, 0.2, 0.3, 0.4]))  # reads the folded rows: stays folded
    assert not ensemble.runs_member_by_member(128)
    del ensemble.network[2]
    assert ensemble.runs_member_by_member(128)
    shared = DeepEnsemble(lambda: nn.Sequential(nn.Linear(3, 3), _Offset(3), nn.Linear(3, 2)), 4).eval()
    assert shared.runs_member_by_member(128)  # a buffer equal in every member is shared, as it is
    assert copy.deepcopy(shared).runs_member_by_member(128)
    with pytest.raises(ValueError, match=r"member_by_member_rows: expected an int >= 0, got -1"):
        ensemble.member_by_member_rows = -1
    with pytest.raises(TypeError, match="member_by_member_rows: expected an int"):
        ensemble.member_by_member_rows = 1.5
    with pytest.raises(ValueError, match="batch: expected an int >= 0, got -1"):
        ensemble.runs_member_by_member(-1)


def _pooled_conv() -> nn.Module:
    """A convolution whose output grows with the image (8 channels per pixel), pooled to 2 outputs."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2)
    )


def test_narrow_networks_fold_with_several_threads():
    # the first member-by-member pass measures the widest twin output per example; with more than one
    # thread a network whose folded activations stay under MEMBER_BY_MEMBER_BYTES then runs folded
    assert MEMBER_BY_MEMBER_BYTES == 8 * 2**20
    members, batch = 4, 128  # 512 folded rows: the rows rule holds
    torch.manual_seed(0)
    ensemble = DeepEnsemble(_pooled_conv, members).eval()
    seen, handles = _rows_seen(ensemble)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        # 8 x 8 images: 8 * 64 floats (2 KiB) per example, 1 MiB folded; 32 x 32: 16 MiB folded; a new input
        # shape is measured anew. Rows each twin saw, call by call:
        calls = [(8, [batch, members * batch]), (32, [batch, batch]), (8, [batch, members * batch])]
        for size, expected in calls:
            x = torch.randn(batch, 1, size, size)
            reference = torch.cat([member.eval()(x) for member in ensemble.members()])
            rows = []
            for _ in expected:
                seen.clear()
                with torch.no_grad():
                    torch.testing.assert_close(ensemble(x), reference, rtol=1e-5, atol=1e-6)
                rows.append(seen[0])
            assert rows == expected, size  # measured in a pass member by member, then per the bytes
            assert ensemble.runs_member_by_member(batch) is (size == 32)
        torch.set_num_threads(1)  # one thread: no batching gain, member by member whatever the width
        assert ensemble.runs_member_by_member(batch)
        seen.clear()
        with torch.no_grad():
            ensemble(x)
        assert seen[0] == batch
    finally:
        torch.set_num_threads(threads)
        for handle in handles:
            handle.remove()


class _Offset(nn.Module):
    """A buffer and no parameter: the same in every member, so the ensemble shares it."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.register_buffer("offset", torch.linspace(-1.0, 1.0, features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.offset


class _WithSummary(nn.Module):
    """Returns the logits and their mean over the batch: not a concatenation of the members' outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.linear(x)
        return logits, logits.mean()


def test_an_output_that_is_not_batch_shaped_runs_folded():
    torch.manual_seed(0)
    ensemble = DeepEnsemble(lambda: _WithSummary().double(), M).eval()
    x = torch.randn(MEMBER_BY_MEMBER_MIN_BATCH, 3, dtype=torch.float64)
    with torch.no_grad():
        ensemble.member_by_member_rows = None
        folded = ensemble(x)
        ensemble.member_by_member_rows = 0
        tried = ensemble(x)
    assert tried[1].shape == () and torch.equal(tried[1], folded[1])  # the mean over all M * B rows
    torch.testing.assert_close(tried[0], folded[0], **TOL)


def test_predict_returns_the_members_as_samples():
    ensemble = _ensemble("mlp").train()
    x = _inputs("mlp", 5)
    pred = predict(ensemble, x)
    assert isinstance(pred, uqkit.Prediction) and pred.logits.shape == (M, 5, 3)
    members = [m.eval() for m in ensemble.members()]
    torch.testing.assert_close(pred.logits, torch.stack([m(x) for m in members]), **TOL)
    assert ensemble.training  # mode restored


def test_stochastic_members_draw_fresh_dropout_per_member():
    torch.manual_seed(0)
    ensemble = DeepEnsemble(lambda: nn.Sequential(nn.Linear(4, 64), MCDropout(0.5), nn.Linear(64, 2)), 2)
    x = torch.randn(3, 4)
    logits = _run(ensemble.eval(), x)
    assert not torch.equal(logits, _run(ensemble, x))  # MC dropout stays on
    with torch.no_grad():  # member 1's rows come from member 1's head: zero it
        ensemble.network[2].weight[1].zero_()
        ensemble.network[2].bias[1].zero_()
    logits = _run(ensemble, x)
    assert bool((logits[1] == 0).all()) and bool((logits[0] != 0).any())


def test_bad_arguments_are_rejected():
    with pytest.raises(TypeError, match="factory: expected a callable"):
        DeepEnsemble(nn.Linear(2, 2), 2)
    with pytest.raises(ValueError, match=r"num_members: expected an int >= 1, got 0"):
        DeepEnsemble(lambda: nn.Linear(2, 2), 0)
    with pytest.raises(TypeError, match="num_members: expected an int"):
        DeepEnsemble(lambda: nn.Linear(2, 2), True)
    with pytest.raises(TypeError, match=r"factory: expected it to return an nn\.Module, got int"):
        DeepEnsemble(lambda: 3, 2)
    widths = itertools.count(2)
    with pytest.raises(ValueError, match=r"factory: expected every call to build the same architecture"):
        DeepEnsemble(lambda: nn.Linear(2, next(widths)), 2)
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="factory: expected a new model on every call"):
        DeepEnsemble(lambda: model, 2)

    def tied():
        net = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
        net[1].weight = net[0].weight
        return net

    with pytest.raises(ValueError, match="tied"):
        DeepEnsemble(tied, 2)
    with pytest.raises(ValueError, match=r"Flatten at '0' acts on the batch dimension"):
        DeepEnsemble(lambda: nn.Sequential(nn.Flatten(0), nn.Linear(4, 2)), 2)

    ensemble = DeepEnsemble(lambda: nn.Sequential(nn.Linear(4, 2)), 2)
    with pytest.raises(
        ValueError, match=r"StackedLinear input: expected \[M \* B, \*, 4\], got shape \[10, 3\]"
    ):
        ensemble(torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"expected a batch of M \* B rows with M = 2"), pretiled():
        ensemble(torch.randn(5, 4))


def test_an_op_that_vmap_cannot_batch_is_named():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(3))

        def forward(self, x):
            return x * self.weight if x.sum() > 0 else x

    ensemble = DeepEnsemble(lambda: nn.Sequential(nn.Linear(3, 3), DataDependent()), 2)
    with pytest.raises(
        RuntimeError,
        match=r"DataDependent at '1' has no registered stacked implementation.*"
        r"data-dependent control flow",
    ):
        ensemble(torch.randn(4, 3))


def test_register_vectorization_routes_a_type():
    class Reshaper(nn.Module):
        """Stateless and exact on the folded batch too; registered to route it through vmap anyway."""

        def __init__(self):
            super().__init__()
            self.inner = nn.Identity()

        def forward(self, x):
            return self.inner(x).reshape(x.shape[0], -1)

    factory = lambda: nn.Sequential(nn.Conv1d(1, 2, 3), Reshaper(), nn.Linear(8, 2))  # noqa: E731
    try:
        register_vectorization(Reshaper, vmap_vectorization)
        torch.manual_seed(0)
        ensemble = DeepEnsemble(factory, 2)
        x = torch.randn(5, 1, 6)
        torch.testing.assert_close(_run(ensemble, x), torch.stack([m(x) for m in ensemble.members()]))
    finally:
        del _REGISTRY[Reshaper]
    with pytest.raises(TypeError, match=r"module_type: expected a subclass of nn\.Module"):
        register_vectorization(int, vmap_vectorization)
    with pytest.raises(TypeError, match="converter: expected a callable"):
        register_vectorization(Reshaper, None)


def test_uqkit_exports():
    assert uqkit.DeepEnsemble is DeepEnsemble


@pytest.mark.compile
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")
def test_torch_compile_matches_eager_in_training_and_eval():
    torch.manual_seed(9)
    ensemble = DeepEnsemble(lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), 3)
    compiled = torch.compile(ensemble)
    x = torch.randn(5, 4)
    out = compiled(x)
    torch.testing.assert_close(out, ensemble(x), rtol=1e-6, atol=1e-6)
    out.sum().backward()
    assert ensemble.network[0].weight.grad.shape == (3, 8, 4)
    ensemble.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), ensemble(x), rtol=1e-6, atol=1e-6)
