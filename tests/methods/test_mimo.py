"""MIMO (uqkit/methods/mimo.py): member inputs and outputs, training batches, the folded test-time input."""

import copy
import math

import pytest
import torch
from torch import nn

from uqkit import MIMO, Prediction
from uqkit.bench.models import build_model
from uqkit.nn.members import fold_members, pretiled, unfold_members

pytestmark = [
    pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN"),
    pytest.mark.usefixtures("one_thread"),
]

BACKBONES = [("mlp", (1, 28, 28)), ("lenet5", (2, 28, 28)), ("cnn1d", (1, 40)), ("resmlp", (2,))]


def _mimo(name, shape, members=3, classes=4, **kwargs):
    network = build_model(name, (members * shape[0], *shape[1:]), members * classes).double()
    return MIMO(network, members, **kwargs)


def run(mimo, x):
    """``[M, B, K]``: every member on the shared input ``x`` ``[B, ...]``."""
    return unfold_members(mimo(x), mimo.num_members)


def run_members(mimo, x):
    """``[M, B, K]``: member ``m`` on its own input ``x[m]`` (``[M, B, ...]`` folded, inside ``pretiled``)."""
    with pretiled():
        return unfold_members(mimo(fold_members(x)), mimo.num_members)


@pytest.mark.parametrize(("name", "shape"), BACKBONES)
def test_member_inputs_are_concatenated_along_channels_and_heads_split(name, shape):
    torch.manual_seed(0)
    mimo = _mimo(name, shape)
    x = torch.randn(3, 5, *shape, dtype=torch.float64)
    out = run_members(mimo, x)
    assert out.shape == (3, 5, 4)
    reference = mimo.network(torch.cat([x[0], x[1], x[2]], dim=1))  # [B, 3 * C, ...]
    for m in range(3):
        torch.testing.assert_close(out[m], reference[:, 4 * m : 4 * (m + 1)], rtol=0, atol=0)


@pytest.mark.parametrize(("name", "shape"), BACKBONES)
def test_shared_input_folding_equals_tiling_and_members_differ(name, shape):
    torch.manual_seed(1)
    mimo = _mimo(name, shape)
    x = torch.randn(6, *shape, dtype=torch.float64)
    folded = run(mimo, x)
    tiled = run_members(mimo, x.expand(3, *x.shape))
    torch.testing.assert_close(folded, tiled, rtol=1e-10, atol=1e-12)
    mimo.fold_shared_input = False
    torch.testing.assert_close(run(mimo, x), tiled, rtol=0, atol=0)
    # members with the same input give different outputs
    assert (folded[0] - folded[1]).abs().min() > 0 and (folded[1] - folded[2]).abs().min() > 0
    prediction = mimo.predict(x)
    assert isinstance(prediction, Prediction) and prediction.logits.shape == (3, 6, 4)


def test_folding_is_skipped_when_the_first_layer_is_not_foldable():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(6, 6)

        def forward(self, x):
            return self.linear(x.flip(1))  # reorders features before the first layer

    torch.manual_seed(2)
    mimo = MIMO(Custom(), 3)
    x = torch.randn(4, 2)
    torch.testing.assert_close(run(mimo, x), run_members(mimo, x.expand(3, 4, 2)), rtol=0, atol=0)
    grouped = MIMO(nn.Sequential(nn.Conv1d(3, 3, 1, groups=3), nn.Flatten()), 3)
    x = torch.randn(4, 1, 2)
    torch.testing.assert_close(run(grouped, x), run_members(grouped, x.expand(3, *x.shape)), rtol=0, atol=0)


def test_training_batch_gives_each_member_independent_permutations():
    mimo = _mimo("mlp", (1, 28, 28), members=3)
    generator = torch.Generator().manual_seed(3)
    batch, draws = 64, 300
    agreements = 0
    for _ in range(draws):
        index = mimo.training_indices(batch, generator)
        assert index.shape == (3, batch)
        for row in index:  # a permutation of the batch
            assert torch.equal(row.sort().values, torch.arange(batch))
        agreements += int((index[0] == index[1]).sum())
    # two independent uniform permutations agree at Poisson(1) positions on average
    assert abs(agreements / draws - 1.0) < 5 * math.sqrt(1.0 / draws)
    inputs = torch.randn(batch, 1, 28, 28, dtype=torch.float64)
    labels = torch.arange(batch)
    member_inputs, member_labels = mimo.training_batch(inputs, labels, generator)
    assert member_inputs.shape == (3, batch, 1, 28, 28) and member_labels.shape == (3, batch)
    for m in range(3):
        # each member's input and label are the same example
        assert torch.equal(member_inputs[m], inputs[member_labels[m]])


@pytest.mark.parametrize("rho", [0.0, 0.6, 1.0])
def test_input_repetition_fraction_and_batch_repetition(rho):
    mimo = _mimo("mlp", (1, 28, 28), members=3, input_repetition=rho, batch_repetition=4)
    generator = torch.Generator().manual_seed(4)
    batch = 50
    total = batch * 4
    shared = 0.0
    for _ in range(100):
        index = mimo.training_indices(batch, generator)
        assert index.shape == (3, total)
        for row in index:  # every example exactly r = 4 times per member
            assert torch.equal(torch.bincount(row, minlength=batch), torch.full((batch,), 4))
        shared += float((index == index[0]).all(0).double().mean())
    # fraction of positions where all members see the same example: rho, plus chance coincidences of the
    # independent part (all three of them equal: probability < (4 / 200)^2)
    expected = rho + (1 - rho) * (4 / total) ** 2
    assert abs(shared / 100 - expected) < 0.01


def test_loss_sums_member_cross_entropies():
    torch.manual_seed(5)
    logits = torch.randn(3, 7, 4, dtype=torch.float64)
    labels = torch.randint(0, 4, (3, 7))
    expected = sum(nn.functional.cross_entropy(logits[m], labels[m]) for m in range(3))
    mimo = MIMO(nn.Linear(6, 12), 3)
    torch.testing.assert_close(mimo.loss(logits, labels), expected)  # [M, N, K] against [M, N]
    torch.testing.assert_close(mimo.loss(fold_members(logits), fold_members(labels)), expected)  # folded


def test_members_learn_independent_subnetworks():
    """Havasi et al. 2021, Fig. 2: each member's output comes to depend on its own input only."""
    torch.manual_seed(6)
    centres = torch.randn(3, 4) * 3
    members = 2
    network = nn.Sequential(nn.Linear(members * 4, 32), nn.ReLU(), nn.Linear(32, members * 3))
    mimo = MIMO(network, members)
    optimizer = torch.optim.Adam(mimo.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(7)
    for _ in range(300):
        labels = torch.randint(0, 3, (64,))
        inputs = centres[labels] + torch.randn(64, 4)
        optimizer.zero_grad()
        mimo.training_loss(inputs, labels, generator).backward()
        optimizer.step()
    labels = torch.randint(0, 3, (2, 500))
    inputs = centres[labels] + torch.randn(2, 500, 4)
    with torch.no_grad():
        out = run_members(mimo, inputs)
        accuracy = (out.argmax(-1) == labels).double().mean(1)
        assert bool((accuracy > 0.9).all()), accuracy
        # replacing member 1's input barely moves member 0's prediction
        other = inputs.clone()
        other[1] = centres[torch.randint(0, 3, (500,))] + torch.randn(500, 4)
        changed = (run_members(mimo, other)[0].argmax(-1) != out[0].argmax(-1)).double().mean()
    assert float(changed) < 0.05


def test_bad_arguments():
    network = nn.Sequential(nn.Linear(6, 6))
    with pytest.raises(TypeError, match="network"):
        MIMO("mlp", 3)
    with pytest.raises(ValueError, match="input_repetition"):
        MIMO(network, 3, input_repetition=1.5)
    with pytest.raises(ValueError, match="batch_repetition"):
        MIMO(network, 3, batch_repetition=0)
    mimo = MIMO(network, 3)
    with pytest.raises(ValueError, match="expected 2 features per example"):
        mimo(torch.randn(2, 4, 2))
    convolutional = MIMO(nn.Sequential(nn.Conv2d(3 * 2, 4, 3), nn.Flatten(), nn.LazyLinear(3 * 2)), 3)
    with pytest.raises(ValueError, match="expected 2 channels per example"):  # checked on the folded path
        convolutional(torch.randn(2, 3, 5, 5))
    with pytest.raises(ValueError, match="expected a multiple of M = 3 rows"), pretiled():
        mimo(torch.randn(4, 2))
    with pytest.raises(ValueError, match="labels: expected a tensor with 4 rows"):
        mimo.training_batch(torch.randn(4, 2), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"network output: expected \[B, M \* K\]"):
        MIMO(nn.Sequential(nn.Linear(6, 5)), 3)(torch.randn(4, 2))
    with pytest.raises(ValueError, match=r"labels: expected shape \[12\]"):
        mimo.loss(torch.randn(3, 4, 2), torch.zeros(4, dtype=torch.long))


def test_folded_weight_is_cached_without_a_graph_and_follows_weight_updates():
    torch.manual_seed(3)
    mimo = _mimo("mlp", (1, 28, 28)).eval()
    x = torch.randn(5, 1, 28, 28, dtype=torch.float64)
    with torch.no_grad():
        first = run(mimo, x)
        cached = mimo._fold_cache.value
        torch.testing.assert_close(run(mimo, x), first, rtol=0, atol=0)
        assert mimo._fold_cache.value is cached  # reused
    # an optimizer step changes the weight in place: the next call must see it
    optimizer = torch.optim.SGD(mimo.parameters(), lr=0.1)
    mimo.training_loss(x, torch.tensor([0, 1, 2, 3, 0])).backward()
    optimizer.step()
    with torch.no_grad():
        after = run(mimo, x)
        tiled = run_members(mimo, x.expand(3, *x.shape))
    torch.testing.assert_close(after, tiled, rtol=1e-10, atol=1e-12)
    assert (after - first).abs().max() > 1e-6
    copied = copy.deepcopy(mimo)  # the weak reference is not copied
    with torch.no_grad():
        torch.testing.assert_close(run(copied, x), after, rtol=0, atol=0)


def test_folding_keeps_gradients_and_follows_nested_sequentials():
    torch.manual_seed(4)
    network = nn.Sequential(
        nn.Flatten(), nn.Sequential(nn.Identity(), nn.Linear(3 * 6, 8), nn.Tanh()), nn.Linear(8, 3 * 2)
    ).double()
    mimo = MIMO(network, 3)
    x = torch.randn(4, 1, 6, dtype=torch.float64)
    folded = run(mimo, x)
    grads = torch.autograd.grad(folded.square().sum(), list(mimo.parameters()))
    mimo.fold_shared_input = False
    tiled = run(mimo, x)
    reference = torch.autograd.grad(tiled.square().sum(), list(mimo.parameters()))
    torch.testing.assert_close(folded, tiled, rtol=1e-10, atol=1e-12)
    for grad, expected in zip(grads, reference, strict=True):
        torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)


def test_replacing_the_first_layer_or_adding_a_hook_after_a_call_is_seen():
    torch.manual_seed(5)
    mimo = _mimo("mlp", (1, 28, 28)).eval()
    x = torch.randn(3, 1, 28, 28, dtype=torch.float64)
    with torch.no_grad():
        run(mimo, x)  # the first layer's place in the network and its folded weight are now cached
        replacement = nn.Linear(3 * 28 * 28, mimo.network[1].out_features).double()
        mimo.network[1] = replacement
        torch.testing.assert_close(
            run(mimo, x), run_members(mimo, x.expand(3, *x.shape)), rtol=1e-10, atol=1e-12
        )
        calls = []
        replacement.register_forward_hook(lambda module, args, out: calls.append(out.shape))
        run(mimo, x)
    assert calls == [torch.Size([3, replacement.out_features])]  # hooked: run as a module, on [B, M * C]


@pytest.mark.compile
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")
def test_torch_compile_matches_eager_with_the_folded_input():
    torch.manual_seed(6)
    mimo = MIMO(nn.Sequential(nn.Linear(3 * 4, 8), nn.ReLU(), nn.Linear(8, 3 * 2)), 3).eval()
    compiled = torch.compile(mimo)
    x = torch.randn(5, 4)
    with torch.no_grad():
        torch.testing.assert_close(run(compiled, x), run(mimo, x), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(
            run_members(compiled, x.expand(3, 5, 4)), run(mimo, x), rtol=1e-5, atol=1e-6
        )
