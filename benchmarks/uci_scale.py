"""The UCI protocol on a kin8nm-sized table (8,192 rows, 8 features): time per method, sequential and on Ray.

Issue 15, item 5. The ``kin8nm`` table (DELVE's "kin" family: an 8-link robot arm, non-linear, medium noise)
is not shipped and cannot be downloaded here, so this script first *generates* a table of its shape in the
UCI directory format that ``uqkit bench --task uci --data-dir DIR`` reads (``data.txt``,
``index_features.txt``, ``index_target.txt``; no split files: the 20 standard 90/10 splits); the product
itself never generates or downloads it. The values imitate the arm: 8 joint angles drawn uniformly in
[-pi/2, pi/2], the target the distance of a planar 8-link arm's end (links of length 1/8) from the point
(0.5, 0), plus Gaussian noise of a tenth of its standard deviation. The time of the UCI protocol depends on
the table's shape (rows, features; 400 epochs of batches of 100), not on its values.

Each method is then run alone, once per mode, with the ``uqkit`` command in a fresh process (the timings
include Python's start and, for Ray, Ray's):

* ``sequential``: ``uqkit bench --task uci --data-dir DIR --methods M`` (one stack of the 20 splits, this
  process, one thread);
* ``ray``: the same with ``--executor ray --workers W --split-chunks K`` (``K`` stacks of 20 / K splits, one
  Ray task each, ``W`` workers of one thread).

The generated table and the run directories go to ``runs/uci-scale/`` (git-ignored);
``--out``/``uci_scale.json`` (not a ``uqkit bench`` results file; written after every run, with the commands
and environments) gets the times and the NLL of each run, and the table is printed. A record of the same
setting (table, workers, chunks) is added to, not replaced, so the modes can run apart:
``--modes sequential`` beside other single-threaded work, then ``--modes ray`` when both cores are free.

Full measurement (2026-12-07, AMD EPYC, 2 cores: 64 min sequentially for the five default methods, 38 min
with Ray; benchmarks/results/uci-scale/, the README's table). Run the Ray mode on a quiet machine::

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/uci_scale.py --workers 2 --split-chunks 2

Smoke run (about a minute)::

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/uci_scale.py --rows 300 \\
        --methods deterministic --table /tmp/uci-scale-tiny/table --runs /tmp/uci-scale-tiny/runs \\
        --out /tmp/uci-scale-tiny/results
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _env import benchmark_environment

ROOT = Path(__file__).resolve().parents[1]
RECORD = "uci_scale.json"  # not results.json: the results files under benchmarks/results are uqkit bench runs


def make_table(directory: Path, rows: int = 8192, features: int = 8, seed: int = 0) -> Path:
    """Write a kin8nm-shaped regression table in the UCI directory format to ``directory``."""
    rng = np.random.default_rng(seed)
    angles = rng.uniform(-math.pi / 2, math.pi / 2, size=(rows, features))
    heading = np.cumsum(angles, axis=1)  # each link's absolute angle
    link = 1.0 / features
    x = link * np.cos(heading).sum(axis=1)
    y = link * np.sin(heading).sum(axis=1)
    target = np.hypot(x - 0.5, y)
    target = target + 0.1 * target.std() * rng.normal(size=rows)
    directory.mkdir(parents=True, exist_ok=True)
    np.savetxt(directory / "data.txt", np.column_stack([angles, target]), fmt="%.6f")
    (directory / "index_features.txt").write_text("".join(f"{j}\n" for j in range(features)))
    (directory / "index_target.txt").write_text(f"{features}\n")
    return directory


def run_mode(table: Path, method: str, mode: str, args: argparse.Namespace, runs: Path) -> dict:
    """One ``uqkit bench`` run of ``method`` in ``mode``; its wall time and the run's own times."""
    out = runs / mode / method
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "uqkit.cli", "bench", "--task", "uci", "--data-dir", str(table)]
    command += ["--methods", method, "--out", str(out), "--no-progress"]
    if mode == "ray":
        command += [
            "--executor",
            "ray",
            "--workers",
            str(args.workers),
            "--split-chunks",
            str(args.split_chunks),
        ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    results = json.loads((out / "results.json").read_text())
    (task,) = results["tasks"].values()
    block = task["methods"][method]
    return {
        "command": shlex.join(["uqkit", *command[3:]]),
        "wall_time_s": wall,
        "run_time_s": results["total_time_s"],  # inside the run: no Python or Ray start
        "compute_time_s": block["train_time_s"],  # summed over the chunks' cells
        "nll": block["metrics"]["nll"],
        "rmse": block["metrics"]["rmse"],
        "executor": results["environment"].get("executor"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", type=Path, default=ROOT / "runs" / "uci-scale" / "kin8nm-sized")
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument(
        "--methods",
        default=None,
        help="comma-separated (default: the UCI task's default methods; the opt-in SG-MCMC, APD and "
        "hyper-deep-ensemble recipes take hours each at this size)",
    )
    parser.add_argument("--modes", default="sequential,ray")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--split-chunks", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "uci-scale")
    parser.add_argument(
        "--runs", type=Path, default=ROOT / "runs" / "uci-scale", help="the runs' directories"
    )
    args = parser.parse_args(argv)
    from uqkit.bench.regression import REGRESSION_METHODS, default_regression_methods

    methods = args.methods.split(",") if args.methods else default_regression_methods()
    unknown = sorted(set(methods) - set(REGRESSION_METHODS))
    if unknown:
        parser.error(f"unknown regression method(s) {unknown}; known: {sorted(REGRESSION_METHODS)}")
    if not (args.table / "data.txt").exists():
        make_table(args.table, args.rows, args.features)
        print(f"[uci-scale] wrote a {args.rows} x {args.features} table to {args.table}")
    command = shlex.join(["python", "benchmarks/uci_scale.py", *(sys.argv[1:] if argv is None else argv)])
    record = {
        "commands": [command],
        "table": {"path": str(args.table), "rows": args.rows, "features": args.features},
        "workers": args.workers,
        "split_chunks": args.split_chunks,
        "environment": benchmark_environment(),
        "methods": {},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    previous = args.out / RECORD
    if previous.exists():  # modes run apart (e.g. sequential, then Ray on a quiet machine) add up
        old = json.loads(previous.read_text())
        same = {key: old.get(key) for key in ("table", "workers", "split_chunks")}
        if same != {key: record[key] for key in same}:
            parser.error(
                f"{previous} holds a measurement of another setting ({same}); give another --out or remove it"
            )
        record["commands"] = [*old.get("commands", [old.get("command")]), command]
        record["methods"] = old["methods"]
        record["environments"] = [*old.get("environments", [old["environment"]]), record["environment"]]
        del record["environment"]
    for method in methods:
        for mode in args.modes.split(","):
            result = run_mode(args.table, method, mode, args, args.runs)
            record["methods"].setdefault(method, {})[mode] = result
            (args.out / RECORD).write_text(json.dumps(record, indent=1), encoding="utf-8")
            print(
                f"[uci-scale] {method:<16} {mode:<10} wall {result['wall_time_s']:7.1f} s, run "
                f"{result['run_time_s']:7.1f} s, compute {result['compute_time_s']:7.1f} s, NLL "
                f"{result['nll']['mean']:.3f} ± {result['nll']['se']:.3f}"
            )
    print("| method | sequential wall (s) | Ray wall (s) | speed-up |")
    print("|---|--:|--:|--:|")
    for method, modes in record["methods"].items():
        if {"sequential", "ray"} <= set(modes):
            seq, ray = modes["sequential"]["wall_time_s"], modes["ray"]["wall_time_s"]
            print(f"| {method} | {seq:.0f} | {ray:.0f} | {seq / ray:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
