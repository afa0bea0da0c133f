"""The UCI protocol of ``uqkit bench --task uci-*`` on the first ``n`` standard splits only: a reduced run.

Runs :func:`uqkit.bench.regression.evaluate_regression_method` (selection on each split's validation part,
retraining, test) for each method on the same first ``n`` splits, and writes every method's results block
with the command and the environment; prints test NLL (moment-matched and mixture), RMSE, 95% coverage and
the per-split paired NLL difference of each method against the first one. For when the full 20-split run
(``uqkit bench --task uci-boston --methods flipout-bnn,ncp``) is too long for the machine at hand.

Run::

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/uci_first_splits.py --task uci-boston \\
        --splits 8 --methods flipout-bnn,ncp --out benchmarks/results/ncp_uci/uci-boston_8.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import torch
from _env import benchmark_environment

from uqkit.bench.regression import REGRESSION_METHODS, evaluate_regression_method, load_regression_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True, help="uci-boston or uci-concrete")
    parser.add_argument("--splits", type=int, required=True, help="the first n of the 20 standard splits")
    parser.add_argument("--methods", required=True, help="comma list; the first is the reference")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    table = load_regression_table(args.task)
    table = dataclasses.replace(table, splits=table.splits[: args.splits])
    names = args.methods.split(",")
    blocks = {}
    for name in names:
        started = time.perf_counter()
        block = evaluate_regression_method(REGRESSION_METHODS[name], table, seed=args.seed)
        blocks[name] = block
        m = block["metrics"]
        print(
            f"{args.task} {name} (first {args.splits} splits): "
            f"NLL {m['nll']['mean']:.3f} ± {m['nll']['se']:.3f}, "
            f"mixture {m['nll_mixture']['mean']:.3f}, RMSE {m['rmse']['mean']:.2f} ± {m['rmse']['se']:.2f}, "
            f"95% coverage {100 * m['coverage_95']['mean']:.1f}% ({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
    reference = blocks[names[0]]["per_split"]["nll"]
    paired = {}
    for name in names[1:]:
        diff = [a - b for a, b in zip(blocks[name]["per_split"]["nll"], reference, strict=True)]
        mean = sum(diff) / len(diff)
        se = (
            math.sqrt(sum((d - mean) ** 2 for d in diff) / (len(diff) - 1) / len(diff))
            if len(diff) > 1
            else 0.0
        )
        paired[name] = {
            "mean": mean,
            "se": se,
            "lower_on_splits": sum(d < 0 for d in diff),
            "splits": len(diff),
        }
        print(
            f"  {name} - {names[0]}: NLL {mean:+.3f} ± {se:.3f} (paired over splits), lower on "
            f"{paired[name]['lower_on_splits']} of {len(diff)}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "command": " ".join(["python", *sys.argv]),
        "task": args.task,
        "splits": args.splits,
        "seed": args.seed,
        "paired_nll_difference": paired,
        "methods": blocks,
        "environment": benchmark_environment(),
    }
    args.out.write_text(json.dumps(record, indent=1, default=float) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
