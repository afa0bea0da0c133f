"""Data-parallel training (uqkit/bench/distributed.py): two gloo processes on CPU equal one process with the
same global batch; a run resumed after a kill equals the uninterrupted one; only rank 0 writes.

The two-process runs happen once per module (:func:`two_processes`, ``torch.multiprocessing`` with a file
rendezvous, one thread each); the single-process references run here. One end-to-end test, marked
``torchrun`` and run only with ``UQKIT_TORCHRUN_TESTS=1`` (docs/testing.md), launches
``torchrun ... -m uqkit bench`` on the tiny Fashion-MNIST stand-in of ``conftest.py``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from uqkit.bench.distributed import RankNoise, shard_bounds
from uqkit.bench.registry import DeepEnsembleMethod, MethodContext, SingleNetwork
from uqkit.bench.trainer import TrainConfig, load_checkpoint, train_method

WORLD = 2
NUM_TRAIN, FEATURES, CLASSES = 90, 8, 3
BATCH, EPOCHS, LR = 25, 2, 1e-2
# 90 examples in global batches of 25 (25, 25, 25, 15): the ranks' shards are 12 / 13 and 7 / 8 examples,
# so every step exercises the loss factors N n_r / B of unequal shards. 8 optimizer steps in all.
STEPS = EPOCHS * math.ceil(NUM_TRAIN / BATCH)


def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Float64 inputs: see :func:`_assert_close_states` for why."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(NUM_TRAIN + 30, FEATURES, generator=generator, dtype=torch.float64)
    labels = (inputs[:, 0] + inputs[:, 1] > 0).long() + (inputs[:, 2] > 1).long()
    return inputs[:NUM_TRAIN], labels[:NUM_TRAIN], inputs[NUM_TRAIN:], labels[NUM_TRAIN:]


def _mlp(dropout: bool = False) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(FEATURES, 16), nn.ReLU(), *([nn.Dropout(0.3)] if dropout else []), nn.Linear(16, CLASSES)
    )


def _build(kind: str):
    """The method ``kind`` in float64, built right after seeding torch's global generator (as the runner
    does)."""
    return _build_float32(kind).double()


def _build_float32(kind: str):
    from uqkit.bench.methods_bayesian import VariationalNetwork
    from uqkit.bench.methods_distance import build_sngp
    from uqkit.bench.methods_sgmcmc import SGLDChain
    from uqkit.methods.convert import FlipoutConfig, bayesianize_
    from uqkit.methods.ensemble import DeepEnsemble

    torch.manual_seed(0)
    if kind == "deterministic":
        return SingleNetwork(_mlp())
    if kind == "dropout":  # forward noise from the per-rank stream
        return SingleNetwork(_mlp(dropout=True))
    if kind == "deep-ensemble":  # three members, three batch orders ([3, B] indices sharded along B)
        return DeepEnsembleMethod(DeepEnsemble(_mlp, 3))
    if kind == "sgld":  # SG-MCMC: noise injected in the optimizer step, from the shared stream
        return SGLDChain(_mlp(), NUM_TRAIN, math.ceil(NUM_TRAIN / BATCH))
    if kind == "sngp":  # a GP precision accumulated in the training forward passes, summed over the ranks
        context = MethodContext((FEATURES,), CLASSES, "resmlp", NUM_TRAIN, batch_size=BATCH)
        return build_sngp(context)
    if kind == "flipout":  # per-example Flipout signs and weight noise from the per-rank stream
        network = _mlp()
        bayesianize_(network, FlipoutConfig(posterior_scale_init=0.01))
        return VariationalNetwork(network, NUM_TRAIN, BATCH, num_samples=2)
    raise ValueError(kind)


class _KilledError(Exception):
    """Stands for a kill of every rank at the start of an epoch (after the previous epoch's checkpoint)."""


def _train(kind: str, checkpoint: Path | None = None, kill_at_epoch: int | None = None) -> dict:
    """Train ``kind`` for 2 epochs; its final state, history, and the inputs of every training step."""
    method = _build(kind)
    batches: list[torch.Tensor] = []
    training_loss = method.training_loss

    def recording_loss(inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        batches.append(inputs.clone())
        return training_loss(inputs, labels)

    method.training_loss = recording_loss
    if kill_at_epoch is not None:

        def on_epoch_start(epoch: int, num_epochs: int) -> None:
            if epoch == kill_at_epoch:
                raise _KilledError

        method.on_epoch_start = on_epoch_start
    train_inputs, train_labels, val_inputs, val_labels = _data()
    config = TrainConfig(epochs=EPOCHS, batch_size=BATCH, learning_rate=LR, seed=0, progress=False)
    result = train_method(
        method, kind, train_inputs, train_labels, val_inputs, val_labels, config, checkpoint
    )
    state = copy.deepcopy(method.state_dict())  # tensors, and extra states (SGLD's collector: a dict)
    return {"state": state, "history": result.history, "batches": batches}


TRAINED = ("deterministic", "deep-ensemble", "sgld", "sngp", "flipout")


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    """One rank of the two-process runs: every method of ``TRAINED``, then a killed and resumed run."""
    import torch.distributed as dist

    import uqkit.bench.trainer as trainer

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    writes: list[tuple[int, str]] = []
    save = trainer.atomic_torch_save

    def recording_save(obj, path) -> None:
        writes.append((rank, Path(path).name))
        save(obj, path)

    trainer.atomic_torch_save = recording_save
    out = Path(out_dir)
    results = {kind: _train(kind) for kind in TRAINED}
    results["uninterrupted"] = _train("dropout", out / "uninterrupted.pt")
    with pytest.raises(_KilledError):
        _train("dropout", out / "killed.pt", kill_at_epoch=1)
    results["resumed"] = _train("dropout", out / "killed.pt")
    results["writes"] = writes
    try:  # 90 examples in batches of 89: the last batch holds 1 example for 2 processes
        train_method(_build("deterministic"), "x", *_data(), TrainConfig(1, 89, LR, progress=False))
    except ValueError as error:
        results["refused"] = str(error)
    torch.save(results, out / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> tuple[dict, dict, Path]:
    """The two ranks' results (rank 0, rank 1) and their directory.

    On Linux the ranks are forked from this process after one training here, so that they inherit its
    imports (torch's first optimizer imports ``torch._dynamo``: seconds per process on a busy machine).
    """
    import torch.multiprocessing as mp

    _train("deterministic")  # imports everything training needs, before the fork
    fork = sys.platform == "linux" and "fork" in mp.get_all_start_methods()
    out = tmp_path_factory.mktemp("ddp")
    arguments = (str(out / "rendezvous"), str(out))
    mp.start_processes(_worker, arguments, nprocs=WORLD, start_method="fork" if fork else "spawn")
    return torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt"), out


def _assert_close_states(ours, reference, what: str) -> None:
    """Equal up to reduction order, in float64.

    The two runs add the same per-example gradient terms in another order: each rank sums its 12-13
    examples, gloo adds the ranks' two sums, and the factors ``N n_r / B`` are rounded, where one process
    sums all 25 at once. That perturbs a gradient element by about ``eps sqrt(n) sum_i |term_i|`` (Higham
    2002, sec. 4.2), a relative ``1e-15`` in float64 (``eps = 2.2e-16``) times the cancellation factor
    ``sum_i |term_i| / |sum_i term_i|``. Adam's step ``lr m / sqrt(v)`` normalises the gradient, so a
    relative error ``r`` of a gradient element moves the step by up to ``lr r`` however small the element
    (SGLD's step ``lr (N g + prior)`` by ``lr N |g| r``, its noise being the same in both runs); over 8 steps
    at ``lr = 1e-2`` (SGLD: 0.1, N = 90) that stays below ``1e-9`` for cancellation factors up to ``1e5``.
    In float32 the same argument gives ``1e-6``-``1e-5``, and a gradient element that cancels to its
    roundoff can flip the sign of its Adam step (one measured SNGP bias differed by ``1.5e-6``, ``1.1e-5``
    of its tensor's scale): hence float64. A wrong reduction (a sum instead of a mean under SGLD, equal
    weights on the unequal shards, SGLD's noise per rank) changes a step by a percent or more, ``1e-4`` and
    up.
    """
    if isinstance(reference, dict):
        assert isinstance(ours, dict) and ours.keys() == reference.keys(), what
        for key, value in reference.items():
            _assert_close_states(ours[key], value, f"{what}.{key}")
    elif isinstance(reference, torch.Tensor) and reference.is_floating_point() and reference.numel():
        error = float((ours - reference).abs().max())
        assert error <= 1e-9, f"{what} differs by {error:.3g}"
    else:
        assert _equal(ours, reference), what


def _equal(a, b) -> bool:
    """Exact equality of tensors, or of (nested) dicts and lists of them and plain values."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[key], b[key]) for key in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@pytest.mark.parametrize("kind", ["deterministic", "deep-ensemble", "sgld", "sngp"])
def test_two_processes_equal_one_with_the_same_global_batch(two_processes, kind):
    """Methods without forward noise: the same parameters, buffers (SNGP's precision summed over the
    ranks, SGLD's kept samples) and epoch history as one process with batches of 25."""
    rank0, _, _ = two_processes
    reference = _train(kind)
    _assert_close_states(rank0[kind]["state"], reference["state"], kind)
    for ours, expected in zip(rank0[kind]["history"], reference["history"], strict=True):
        for key in ("train_loss", "val_nll", "val_accuracy"):
            assert ours[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-6), (kind, key)


def test_each_rank_trains_on_its_slice_of_every_global_batch(two_processes):
    """Rank 0 gets the first 12 (last batch: 7) examples of each global batch of 25 (last: 15), rank 1 the
    other 13 (8): together exactly the batches of one process, in order."""
    rank0, rank1, _ = two_processes
    reference = _train("deterministic")["batches"]
    assert [len(batch) for batch in rank0["deterministic"]["batches"]] == [12, 12, 12, 7] * EPOCHS
    assert len(rank1["deterministic"]["batches"]) == len(reference) == STEPS
    for first, second, expected in zip(
        rank0["deterministic"]["batches"], rank1["deterministic"]["batches"], reference, strict=True
    ):
        assert torch.equal(torch.cat([first, second]), expected)


@pytest.mark.parametrize("kind", TRAINED)
def test_the_ranks_end_with_the_same_state(two_processes, kind):
    """Every rank holds the same state, bitwise: the averaged gradients, the optimizer step and the shared
    random stream are the same on each; Flipout's forward noise differs per rank but reaches the
    parameters only through the averaged gradient."""
    rank0, rank1, _ = two_processes
    for name, value in rank0[kind]["state"].items():
        assert _equal(value, rank1[kind]["state"][name]), f"{kind}: {name}"


def test_resume_after_a_kill_equals_the_uninterrupted_run(two_processes):
    """Dropout draws from the per-rank streams, which the checkpoint keeps per rank: the resumed run replays
    the same operations in the same two processes (the two-term average is order-free), so it is exact."""
    rank0, rank1, _ = two_processes
    for rank in (rank0, rank1):
        for name, tensor in rank["uninterrupted"]["state"].items():
            assert torch.equal(rank["resumed"]["state"][name], tensor), name
        assert (
            rank["resumed"]["history"][1]["train_loss"] == rank["uninterrupted"]["history"][1]["train_loss"]
        )


def test_only_rank_zero_writes_checkpoints(two_processes):
    rank0, rank1, _ = two_processes
    assert rank1["writes"] == []
    expected = [(0, "uninterrupted.pt")] * EPOCHS + [(0, "killed.pt")] * EPOCHS
    assert rank0["writes"] == expected


def test_a_checkpoint_of_two_processes_is_refused_by_one(two_processes, tmp_path):
    _, _, out = two_processes
    state = load_checkpoint(out / "uninterrupted.pt")
    assert state["world_size"] == WORLD and len(state["rank_rng"]) == WORLD
    path = tmp_path / "checkpoint.pt"
    torch.save({**state, "epoch": 1}, path)
    with pytest.raises(ValueError, match="written by 2 processes"):
        train_method(
            _build("dropout"),
            "x",
            *_data(),
            TrainConfig(EPOCHS, BATCH, LR, progress=False),
            checkpoint_path=path,
        )


def test_a_last_batch_smaller_than_the_processes_is_refused(two_processes):
    rank0, rank1, _ = two_processes
    for rank in (rank0, rank1):
        assert "the last batch of an epoch holds 1 of the 90 training examples" in rank["refused"]


def test_shards_cover_each_batch_once():
    for size in (1, 2, 7, 25):
        for shards in (1, 2, 3):
            bounds = [shard_bounds(size, index, shards) for index in range(shards)]
            assert bounds[0][0] == 0 and bounds[-1][1] == size
            assert all(bounds[i][1] == bounds[i + 1][0] for i in range(shards - 1))
            assert max(b - a for a, b in bounds) - min(b - a for a, b in bounds) <= 1


def test_rank_noise_is_its_own_stream():
    """Draws inside the block come from the rank's stream and leave the shared one where it was; two
    ranks' streams differ; a saved state continues the stream exactly."""
    torch.manual_seed(0)
    shared = torch.get_rng_state()
    noise0, noise1 = RankNoise(0, 0, "cpu"), RankNoise(0, 1, "cpu")
    with noise0:
        first = torch.rand(4)
    assert torch.equal(torch.get_rng_state(), shared)
    with noise1:
        other = torch.rand(4)
    assert not torch.equal(first, other)
    saved = noise0.state()
    with noise0:
        second = torch.rand(4)
    restored = RankNoise(0, 0, "cpu")
    restored.load_state(saved)
    with restored:
        assert torch.equal(torch.rand(4), second)
    assert not torch.equal(first, second)


BENCH = ["bench", "--quick", "--methods", "deterministic", "--epochs", "1", "--no-progress"]


def _package_root() -> str:
    root = str(Path(__file__).resolve().parents[2])
    return os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])


@pytest.mark.torchrun
@pytest.mark.skipif(
    os.environ.get("UQKIT_TORCHRUN_TESTS") != "1",
    reason="launches torchrun (3 processes importing torch, 15-55 s); run with UQKIT_TORCHRUN_TESTS=1 "
    "-m torchrun (docs/testing.md)",
)
def test_torchrun_bench_equals_one_process_and_rank_zero_writes(fake_fashion_mnist, tmp_path, one_thread):
    """``torchrun --nproc-per-node 2 -m uqkit bench``: the same files as one process, one log, and the
    same numbers up to reduction order (see :func:`_assert_close_states`)."""
    from uqkit.cli import main

    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": _package_root()}
    command = [*torchrun, "-m", "uqkit", *BENCH, "--out", str(tmp_path / "two")]
    parallel = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert parallel.returncode == 0, parallel.stderr[-3000:]
    assert main([*BENCH, "--out", str(tmp_path / "one")]) == 0  # the reference, in this process

    def files(run: Path) -> list[str]:
        return sorted(str(path.relative_to(run)) for path in run.rglob("*") if path.is_file())

    assert files(tmp_path / "two") == files(tmp_path / "one")
    log = (tmp_path / "two" / "log.txt").read_text().splitlines()
    assert sum("[1/1] deterministic" in line for line in log) == 1  # rank 1 neither printed nor logged
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    assert two["environment"]["processes"] == 2 and "processes" not in one["environment"]
    ours = two["tasks"]["fashion-mnist"]["methods"]["deterministic"]
    reference = one["tasks"]["fashion-mnist"]["methods"]["deterministic"]
    for key in ("train_loss", "val_nll", "val_accuracy"):
        expected = reference["history"][0][key]
        assert ours["history"][0][key] == pytest.approx(expected, rel=1e-5, abs=1e-6), key
    for key in ("nll", "accuracy", "brier", "ece"):
        assert ours["metrics"][key] == pytest.approx(reference["metrics"][key], rel=1e-5, abs=1e-6), key


def test_torchrun_refuses_ray_and_the_uci_protocol(monkeypatch, capsys):
    """Checked before any process group starts: ``WORLD_SIZE`` as torchrun sets it is enough."""
    import argparse

    from uqkit.cli import _check_torchrun, main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["bench", "--task", "uci-boston", "--out", "unused"]) == 2
    assert "under torchrun (2 processes): the UCI regression protocol" in capsys.readouterr().err
    ray = argparse.Namespace(executor="ray", task=None, data=None)
    with pytest.raises(ValueError, match="--executor ray under torchrun"):
        _check_torchrun(ray, 2)
    monkeypatch.setenv("WORLD_SIZE", "two")
    assert main(["bench", "--out", "unused"]) == 2
    assert "WORLD_SIZE: expected a positive integer" in capsys.readouterr().err


def test_torchrun_device_must_be_cpu_or_cuda():
    from uqkit.bench.distributed import torchrun_process_group

    with pytest.raises(ValueError, match="rank r uses cuda:LOCAL_RANK"), torchrun_process_group("cuda:1"):
        pass
