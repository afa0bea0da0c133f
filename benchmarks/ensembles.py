"""Cost of efficient ensembles (project issue 6): M = 4 members of an MLP 784-512-512-10 and of LeNet-5.

For each backbone and batch size, all in one process with the rows interleaved in every timing round:

* one model; a naive Python loop over 4 models; :class:`uqkit.DeepEnsemble` (stacked parameters, one
  vectorized forward); ``torch.func.vmap`` over ``functional_call`` with stacked parameters (the textbook
  vectorization, as a reference);
* BatchEnsemble (Wen et al. 2020; uqkit's layers through ``bayesianize_(model, BatchEnsembleConfig())``),
  MIMO (Havasi et al. 2021; ``uqkit.MIMO`` on the backbone with 4x inputs and outputs), rank-1 BNN
  (Dusenberry et al. 2020; ``bayesianize_(model, Rank1Config())``);
* torch-uncertainty's BatchEnsemble layers (``BatchLinear``/``BatchConv2d``, inputs repeated ``M`` times as
  that library expects) when the package is installed: it is never a uqkit dependency, see
  ``benchmarks/requirements-ensembles.txt``.

Measured per row: train step (zero_grad, forward, loss, backward, Adam step) and inference (eval mode, no
gradients, one forward pass giving all members' logits) as medians over interleaved rounds, parameter count,
and peak memory: the largest amount of tensor memory allocated during one call beyond what was allocated
before it (activations, gradients, temporaries; parameters and optimizer state live before the call and
are reported as ``parameters``), from ``torch.profiler`` with ``profile_memory=True`` (the running sum of
every allocation and free recorded by the CPU allocator, in time order; the profiler does not see frees of
blocks allocated before it started, such as the previous step's gradients, so this is the peak of the memory
allocated during the call).

Losses: one model and MIMO on their own objective; every ensemble-like row on the sum over members of the
mean cross-entropy (uqkit's member models fold the members into the batch, ``[M * B, C]``, and the labels are
tiled to match, as torch-uncertainty does);
rank-1 adds the factors' KL / 60000.

Writes ``benchmarks/results/ensembles.json`` (command, environment, all numbers, the issue's targets and
whether they are met) and prints Markdown tables. Run with the benchmark environment to include
torch-uncertainty: ``/work/venvs/bench/bin/python benchmarks/ensembles.py`` (see the requirements file).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from _env import benchmark_environment
from bayesian_layers import _interpreter, time_interleaved
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from torch.profiler import ProfilerActivity, profile

from uqkit.bench.models import LeNet5, mlp
from uqkit.methods import MIMO, BatchEnsembleConfig, DeepEnsemble, Rank1Config, bayesianize_
from uqkit.nn.members import fold_members, tile_members
from uqkit.objectives import kl_divergence

M = 4
INPUT = (1, 28, 28)
CLASSES = 10
NUM_DATA = 60_000
BACKBONES: dict[str, Callable[[int, int], nn.Module]] = {
    "mlp 784-512-512-10": lambda channels, outputs: mlp((channels, 28, 28), outputs),
    "lenet5": lambda channels, outputs: LeNet5(channels, outputs),
}
ONE, LOOP, VECTORIZED, VMAP = "one model", "naive loop (4 models)", "uqkit DeepEnsemble", "torch.func.vmap"
BE, TU_BE, MIMO_ROW, RANK1 = (
    "uqkit BatchEnsemble",
    "torch-uncertainty BatchEnsemble",
    "uqkit MIMO",
    "uqkit rank-1",
)


def _members_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum over members of the mean cross-entropy of ``[M * B, C]`` member-major logits (or ``[M, B, C]``)
    against ``[B]`` labels, tiled to the members."""
    if logits.dim() == 3:
        logits = fold_members(logits)
    return M * F.cross_entropy(logits, tile_members(labels, M))


@dataclass
class Row:
    """One benchmarked model: its parameters, a loss of a batch and a prediction of a batch."""

    name: str
    params: list[torch.Tensor]
    modules: list[nn.Module]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    infer: Callable[[torch.Tensor], torch.Tensor]

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.params)

    def train(self, mode: bool) -> None:
        for module in self.modules:
            module.train(mode)


# -- rows ----------------------------------------------------------------------------------------------------
def torch_uncertainty_layers() -> Any | None:
    """torch-uncertainty's ``layers/batch_ensemble.py``, loaded as a file.

    ``import torch_uncertainty`` imports Lightning (its CLI and trainer), which the layers do not need; the
    file itself needs only torch and einops.
    """
    spec = importlib.util.find_spec("torch_uncertainty")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "layers" / "batch_ensemble.py"
    file_spec = importlib.util.spec_from_file_location("torch_uncertainty_batch_ensemble", path)
    module = importlib.util.module_from_spec(file_spec)
    file_spec.loader.exec_module(module)
    return module


def torch_uncertainty_model(backbone: str, layers: Any) -> nn.Module:
    if backbone.startswith("mlp"):
        return nn.Sequential(
            nn.Flatten(),
            layers.BatchLinear(784, 512, M),
            nn.ReLU(),
            layers.BatchLinear(512, 512, M),
            nn.ReLU(),
            layers.BatchLinear(512, CLASSES, M),
        )
    return nn.Sequential(
        layers.BatchConv2d(1, 6, 5, M, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        layers.BatchConv2d(6, 16, 5, M),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        layers.BatchLinear(16 * 5 * 5, 120, M),
        nn.ReLU(),
        layers.BatchLinear(120, 84, M),
        nn.ReLU(),
        layers.BatchLinear(84, CLASSES, M),
    )


def build_rows(backbone: str, tu_layers: Any | None) -> list[Row]:
    build = BACKBONES[backbone]
    rows = []

    one = build(1, CLASSES)
    rows.append(Row(ONE, list(one.parameters()), [one], lambda x, y: F.cross_entropy(one(x), y), one))

    loop = [build(1, CLASSES) for _ in range(M)]
    rows.append(
        Row(
            LOOP,
            [p for net in loop for p in net.parameters()],
            loop,
            lambda x, y: sum(F.cross_entropy(net(x), y) for net in loop),
            lambda x: torch.stack([net(x) for net in loop]),
        )
    )

    ensemble = DeepEnsemble(lambda: build(1, CLASSES), M)
    rows.append(
        Row(
            VECTORIZED,
            list(ensemble.parameters()),
            [ensemble],
            lambda x, y: _members_ce(ensemble(x), y),
            ensemble,
        )
    )

    members = [build(1, CLASSES) for _ in range(M)]
    stacked, buffers = stack_module_state(members)  # leaves with requires_grad
    base = copy.deepcopy(members[0]).to("meta")
    batched = vmap(
        lambda p, b, x: functional_call(base, (p, b), (x,)), in_dims=(0, 0, None), randomness="different"
    )
    rows.append(
        Row(
            VMAP,
            list(stacked.values()),
            [base],
            lambda x, y: _members_ce(batched(stacked, buffers, x), y),
            lambda x: batched(stacked, buffers, x),
        )
    )

    batchensemble = build(1, CLASSES)
    bayesianize_(batchensemble, BatchEnsembleConfig(num_members=M))
    rows.append(
        Row(
            BE,
            list(batchensemble.parameters()),
            [batchensemble],
            lambda x, y: _members_ce(batchensemble(x), y),
            batchensemble,
        )
    )

    if tu_layers is not None:
        tu = torch_uncertainty_model(backbone, tu_layers)

        def tu_repeat(x: torch.Tensor) -> torch.Tensor:
            return x.repeat(M, *([1] * (x.dim() - 1)))  # [M * B, ...], member-major, as the library expects

        rows.append(
            Row(
                TU_BE,
                list(tu.parameters()),
                [tu],
                lambda x, y: M * F.cross_entropy(tu(tu_repeat(x)), y.repeat(M)),
                lambda x: tu(tu_repeat(x)),
            )
        )

    mimo = MIMO(build(M * INPUT[0], M * CLASSES), M)
    rows.append(Row(MIMO_ROW, list(mimo.parameters()), [mimo], mimo.training_loss, mimo))

    rank1 = build(1, CLASSES)
    bayesianize_(rank1, Rank1Config(num_members=M))
    rows.append(
        Row(
            RANK1,
            list(rank1.parameters()),
            [rank1],
            lambda x, y: _members_ce(rank1(x), y) + kl_divergence(rank1) / NUM_DATA,
            rank1,
        )
    )
    return rows


# -- measurements --------------------------------------------------------------------------------------------
def make_train_step(row: Row, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    optimizer = torch.optim.Adam(row.params, lr=1e-3)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        row.loss(x, y).backward()
        optimizer.step()

    return step


def make_inference(row: Row, x: torch.Tensor) -> Callable[[], None]:
    def infer() -> None:
        with torch.no_grad():
            row.infer(x)

    return infer


def peak_memory(fn: Callable[[], None]) -> int:
    """Peak bytes allocated during one call of ``fn`` beyond what was allocated before it.

    The running sum of the CPU allocator's allocations and frees recorded by ``torch.profiler``: each op's
    own (self) allocations net of its frees, and the allocations and frees outside any op, in time order.
    """
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    changes = []
    for event in prof.events():
        change = event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage
        if change:
            changes.append((event.time_range.start, change))
    current = peak = 0
    for _, change in sorted(changes, key=lambda item: item[0]):
        current += change
        peak = max(peak, current)
    return peak


def run_backbone(backbone: str, batch: int, args: argparse.Namespace, tu_layers: Any | None) -> list[dict]:
    torch.manual_seed(args.seed)
    rows = build_rows(backbone, tu_layers)
    x, y = torch.randn(batch, *INPUT), torch.randint(0, CLASSES, (batch,))
    for row in rows:
        row.train(True)
    train_fns = {row.name: make_train_step(row, x, y) for row in rows}
    train = time_interleaved(train_fns, args.repeats, args.steps, args.warmup)
    train_memory = {
        name: peak_memory(fn) for name, fn in train_fns.items()
    }  # after warm-up: Adam state exists
    for row in rows:
        row.train(False)
    infer_fns = {row.name: make_inference(row, x) for row in rows}
    infer = time_interleaved(infer_fns, args.repeats, args.steps, args.warmup)
    infer_memory = {name: peak_memory(fn) for name, fn in infer_fns.items()}
    results = []
    for row in rows:
        results.append(
            {
                "backbone": backbone,
                "batch": batch,
                "model": row.name,
                "parameters": row.num_parameters,
                "parameters_vs_one": row.num_parameters / rows[0].num_parameters,
                "train_step_ms": 1e3 * train[row.name],
                "train_vs_one": train[row.name] / train[ONE],
                "train_vs_loop": train[row.name] / train[LOOP],
                "inference_ms": 1e3 * infer[row.name],
                "inference_vs_one": infer[row.name] / infer[ONE],
                "inference_vs_loop": infer[row.name] / infer[LOOP],
                "train_peak_memory_mb": train_memory[row.name] / 2**20,
                "inference_peak_memory_mb": infer_memory[row.name] / 2**20,
            }
        )
    return results


# -- targets and output --------------------------------------------------------------------------------------
def targets(rows: list[dict]) -> list[dict]:
    """The issue's CPU targets, checked on the measured rows."""

    def get(backbone: str, batch: int, model: str) -> dict | None:
        return next(
            (r for r in rows if (r["backbone"], r["batch"], r["model"]) == (backbone, batch, model)), None
        )

    checks = []
    for backbone in sorted({r["backbone"] for r in rows}):
        for batch in sorted({r["batch"] for r in rows if r["backbone"] == backbone}):
            vec, be, tu, mimo = (get(backbone, batch, m) for m in (VECTORIZED, BE, TU_BE, MIMO_ROW))
            where = f"{backbone}, batch {batch}"
            if vec and batch in (16, 256):
                limit = 0.8 if batch == 16 else 1.0
                checks.append(
                    _check(f"{where}: DeepEnsemble inference / loop", vec["inference_vs_loop"], limit)
                )
            if vec:
                checks.append(_check(f"{where}: DeepEnsemble train step / loop", vec["train_vs_loop"], 1.0))
            if be:
                checks.append(
                    _check(f"{where}: BatchEnsemble parameters / one", be["parameters_vs_one"], 1.05)
                )
            if be and tu:
                ratio = be["inference_ms"] / tu["inference_ms"]
                checks.append(_check(f"{where}: BatchEnsemble inference / torch-uncertainty's", ratio, 1.0))
            if mimo:
                checks.append(_check(f"{where}: MIMO inference / one", mimo["inference_vs_one"], 1.2))
    return checks


def _check(name: str, value: float, limit: float) -> dict:
    return {"target": name, "value": value, "at_most": limit, "met": value <= limit}


def markdown(results: dict) -> str:
    out = []
    for backbone in dict.fromkeys(r["backbone"] for r in results["rows"]):
        for batch in dict.fromkeys(r["batch"] for r in results["rows"] if r["backbone"] == backbone):
            out += [
                f"\n**{backbone}, batch {batch}, M = {M}**\n",
                "| model | parameters | x one | train step (ms) | x one | x loop | inference (ms) | x one "
                "| x loop | train peak (MB) | inference peak (MB) |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for r in results["rows"]:
                if (r["backbone"], r["batch"]) != (backbone, batch):
                    continue
                out.append(
                    f"| {r['model']} | {r['parameters']:,} | {r['parameters_vs_one']:.2f} | "
                    f"{r['train_step_ms']:.2f} | {r['train_vs_one']:.2f} | {r['train_vs_loop']:.2f} | "
                    f"{r['inference_ms']:.2f} | {r['inference_vs_one']:.2f} | {r['inference_vs_loop']:.2f} | "
                    f"{r['train_peak_memory_mb']:.1f} | {r['inference_peak_memory_mb']:.1f} |"
                )
    if results["environment"]["torch_uncertainty"] is None:
        out.append("\ntorch-uncertainty is not installed here: its rows are skipped.")
    out += ["", "| target | value | at most | met |", "|---|---:|---:|---|"]
    for t in results["targets"]:
        out.append(
            f"| {t['target']} | {t['value']:.2f} | {t['at_most']:.2f} | {'yes' if t['met'] else 'no'} |"
        )
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 256])
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds per measurement")
    parser.add_argument("--steps", type=int, default=10, help="timed calls per model per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "ensembles.json"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tu_layers = torch_uncertainty_layers()
    tu_version = None
    if tu_layers is not None:
        from importlib.metadata import version

        tu_version = version("torch-uncertainty")
    results: dict = {
        "command": shlex.join([_interpreter(), *sys.argv]),
        "arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "environment": benchmark_environment(torch_uncertainty=tu_version),
        "notes": (
            f"M = {M} members. Times are medians over repeats x steps calls, rows interleaved in one "
            "process. Train step = zero_grad + forward + loss + backward + Adam step; inference = one "
            "no-grad forward in eval mode returning every member's logits ([M, B, C]; torch-uncertainty: "
            "[M * B, C] from the input repeated M times). Peak memory: the largest net tensor allocation "
            "during one call (activations, gradients, temporaries) above what lived before it, from "
            "torch.profiler's memory events; parameters and Adam state are not included."
        ),
        "rows": [],
    }
    for backbone in args.backbones:
        for batch in args.batch_sizes:
            results["rows"] += run_backbone(backbone, batch, args, tu_layers)
    results["targets"] = targets(results["rows"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    print(f"\nwrote {args.out}")
    return results


if __name__ == "__main__":
    main()
