"""Inference of a :class:`uqkit.DeepEnsemble` folded into one pass vs member by member (the rule's evidence).

Without gradients on CPU, ``DeepEnsemble`` runs a large batch member by member (the architecture's
``forward`` once per member on ``[B, ...]``) instead of one pass over the folded ``[M * B, ...]`` batch; the
rule (``M * B >= member_by_member_rows`` = 512 and ``B >= 64``) is documented in
``uqkit/methods/ensemble.py``. This script measures both strategies for LeNet-5 and the MLP 784-512-512-10
over a grid of ``(M, B)``: each cell in a fresh process (``--cell``), both strategies interleaved in every
timing round (as the other benchmarks time their rows), on one thread. Reported per cell: the median thread
CPU time of one call (robust to other jobs on the machine), the minor page faults per call (the folded
pass's large temporaries are returned to the kernel between passes and faulted back), and the ratio member
by member / folded.

Writes ``benchmarks/results/member_by_member.json`` (command, environment, numbers) and prints a Markdown
table. ``OMP_NUM_THREADS=1 python benchmarks/member_by_member.py`` (about 4 minutes on a quiet machine);
``--quick`` runs two cells per backbone.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from _env import benchmark_environment
from bayesian_layers import _interpreter

import uqkit
from uqkit.bench.models import LeNet5, mlp

BACKBONES = {"lenet5": lambda: LeNet5(1, 10), "mlp 784-512-512-10": lambda: mlp((1, 28, 28), 10)}
GRID = [(4, 16), (4, 64), (4, 128), (4, 256), (12, 32), (12, 64), (12, 256), (16, 32)]
QUICK_GRID = [(4, 16), (4, 256)]
MODES = ("folded", "member by member")


def measure_cell(backbone: str, members: int, batch: int, repeats: int, seed: int) -> dict:
    """Both strategies on one ``(M, B)`` cell in this process, interleaved: ``{mode: {ms, faults}}``."""
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    ensemble = uqkit.DeepEnsemble(BACKBONES[backbone], members).eval()
    x = torch.randn(batch, 1, 28, 28)
    settings = {"folded": None, "member by member": 0}  # member_by_member_rows
    steps = max(1, 2048 // (members * batch))  # calls per strategy per round
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    faults = dict.fromkeys(MODES, 0)
    with torch.no_grad():
        for mode in MODES:
            ensemble.member_by_member_rows = settings[mode]
            for _ in range(3):
                ensemble(x)
        for _ in range(repeats):
            for mode in MODES:
                ensemble.member_by_member_rows = settings[mode]
                for _ in range(steps):
                    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                    start = time.thread_time()
                    ensemble(x)
                    times[mode].append(time.thread_time() - start)
                    faults[mode] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    calls = repeats * steps
    return {
        mode: {"ms": 1000 * statistics.median(times[mode]), "page_faults_per_call": faults[mode] / calls}
        for mode in MODES
    }


def run(args: argparse.Namespace) -> list[dict]:
    rows = []
    for backbone in args.backbones:
        for members, batch in QUICK_GRID if args.quick else GRID:
            cell = {"backbone": backbone, "members": members, "batch": batch, "rows": members * batch}
            spec = json.dumps([backbone, members, batch, args.repeats, args.seed])
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            result = subprocess.run(
                [sys.executable, __file__, "--cell", spec],
                capture_output=True,
                text=True,
                check=True,
                env=env,
            )
            cell.update(json.loads(result.stdout.strip().splitlines()[-1]))
            cell["member_by_member_vs_folded"] = cell["member by member"]["ms"] / cell["folded"]["ms"]
            probe = uqkit.DeepEnsemble(BACKBONES[backbone], members)
            cell["rule_runs_member_by_member"] = probe.eval().runs_member_by_member(batch)
            rows.append(cell)
            print(markdown_row(cell), flush=True)
    return rows


HEADER = [
    "| backbone | M | B | M * B | folded (ms) | faults/call | member by member (ms) | faults/call | ratio "
    "| rule |",
    "|---|--:|--:|--:|--:|--:|--:|--:|--:|---|",
]


def markdown_row(cell: dict) -> str:
    folded, by_member = cell["folded"], cell["member by member"]
    return (
        f"| {cell['backbone']} | {cell['members']} | {cell['batch']} | {cell['rows']} | {folded['ms']:.2f} | "
        f"{folded['page_faults_per_call']:.0f} | {by_member['ms']:.2f} | "
        f"{by_member['page_faults_per_call']:.0f} | {cell['member_by_member_vs_folded']:.2f}x | "
        f"{'member by member' if cell['rule_runs_member_by_member'] else 'folded'} |"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    parser.add_argument("--repeats", type=int, default=15, help="interleaved rounds per cell")
    parser.add_argument("--quick", action="store_true", help="two cells per backbone")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cell", help=argparse.SUPPRESS)  # internal: one cell in a fresh process
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "member_by_member.json"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.cell:
        print(json.dumps(measure_cell(*json.loads(args.cell))))
        return None
    torch.set_num_threads(1)
    results: dict = {
        "command": shlex.join([_interpreter(), *sys.argv]),
        "arguments": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "cell"
        },
        "environment": benchmark_environment(),
        "notes": (
            "Each cell in a fresh process (one thread), both strategies interleaved in every round; ms: "
            "median thread CPU time of one call; faults/call: minor page faults per call; ratio: member by "
            "member / folded; rule: what DeepEnsemble chooses without gradients."
        ),
    }
    print("\n".join(HEADER), flush=True)
    results["rows"] = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return results


if __name__ == "__main__":
    main()
