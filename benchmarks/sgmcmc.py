"""Predicting with stored SG-MCMC samples (project issue 14): K = 12 LeNet-5 samples in one pass vs a loop.

For each batch size, in one process with the rows interleaved in every timing round (medians):

* ``loop over K models``: ``K`` ordinary ``LeNet5`` modules holding the samples, eval mode, no gradients,
  ``torch.stack([model(x) for model in models])``: what a user writes without the collector;
* ``uqkit.predict(collector, x)``: :class:`uqkit.sgmcmc.SampleCollector`'s samples as one
  :class:`uqkit.DeepEnsemble` (stacked parameters), through the public prediction entry point (the
  ``[K, B, C]`` :class:`uqkit.Prediction`); without gradients on CPU a batch of at least 64 examples runs
  sample by sample (the ensemble's member-by-member inference, see ``uqkit/methods/ensemble.py``);
* ``uqkit.predict, folded passes``: the same with ``member_by_member_rows = None``, i.e. the samples folded
  into the batch, ``[K * B, ...]``, one vectorized pass per slice of at most ``rows_per_pass`` rows (the
  path before member-by-member inference);
* ``collector(x), one folded pass``: the folded forward of all ``K * B`` rows in one pass (``[K * B, C]``),
  without slicing;
* ``loop over K models, WindowMaxPool2d``: the loop with the collector's pooling (non-overlapping max
  pooling by elementwise maxima, :class:`uqkit.methods.ensemble.WindowMaxPool2d`): what of the gain is the
  faster pooling kernel rather than the vectorization.

The samples are a real short chain: LeNet-5 trained by :class:`uqkit.sgmcmc.SGHMC` on random inputs for a
few steps between samples (values do not change the cost; they make the equality check meaningful). Also
reported: the largest difference between the one-pass logits and the loop's, and the one-off time to build
the vectorized model from the stored samples (cached until a sample is added).

Target (issue 14): ``uqkit.predict(collector, x)`` at batch 256 takes at most 0.8x the loop's time.

Writes ``benchmarks/results/sgmcmc.json`` (command, environment, numbers, the target and whether it is met)
and prints a Markdown table. Run on a quiet machine, e.g. ``OMP_NUM_THREADS=1 python benchmarks/sgmcmc.py
--threads 1`` and without ``--threads`` for all cores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from _env import benchmark_environment
from bayesian_layers import _interpreter, time_interleaved

import uqkit
from uqkit.bench.models import LeNet5
from uqkit.methods.ensemble import WindowMaxPool2d
from uqkit.sgmcmc import SGHMC, EveryKSteps, SampleCollector

LOOP, PREDICT, FORWARD = "loop over K models", "uqkit.predict(collector, x)", "collector(x), one folded pass"
PREDICT_FOLDED = "uqkit.predict, folded passes"
LOOP_POOL = "loop over K models, WindowMaxPool2d"
TARGET = 0.8


def sampled_chain(num_samples: int, seed: int) -> tuple[SampleCollector, list[torch.nn.Module]]:
    """A collector of ``num_samples`` SGHMC samples of LeNet-5, and the same samples as separate models."""
    torch.manual_seed(seed)
    model = LeNet5(1, 10)
    every = 3
    collector = SampleCollector(model, EveryKSteps(every))
    optimizer = SGHMC(model.parameters(), lr=0.05, num_data=60_000, prior_precision=30.0)
    models = []
    for step in range(num_samples * every):
        x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        if collector.step(step):
            copy = LeNet5(1, 10)
            copy.load_state_dict(model.state_dict())
            models.append(copy.eval())
    return collector.eval(), models


def with_window_pooling(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` whose non-overlapping ``nn.MaxPool2d`` are :class:`WindowMaxPool2d`, as inside the
    collector's vectorized model: the loop row that separates the faster pooling from the vectorization."""
    copy = LeNet5(1, 10)
    copy.load_state_dict(model.state_dict())
    for index, module in enumerate(copy):
        if isinstance(module, torch.nn.MaxPool2d) and WindowMaxPool2d.applies_to(module):
            copy[index] = WindowMaxPool2d(module)
    return copy.eval()


@contextlib.contextmanager
def folded(collector: SampleCollector) -> Iterator[None]:
    """Within the block the samples' ensemble folds every batch into one pass (no member-by-member)."""
    ensemble = collector.ensemble
    rows = ensemble.member_by_member_rows
    ensemble.member_by_member_rows = None
    try:
        yield
    finally:
        ensemble.member_by_member_rows = rows


def run(args: argparse.Namespace) -> list[dict]:
    rows = []
    collector, models = sampled_chain(args.samples, args.seed)
    pooled = [with_window_pooling(model) for model in models]
    started = time.perf_counter()
    collector.ensemble  # noqa: B018  (builds and caches the vectorized model)
    build_s = time.perf_counter() - started
    for batch in args.batch_sizes:
        x = torch.randn(batch, 1, 28, 28)

        def loop(x: torch.Tensor = x) -> torch.Tensor:
            with torch.no_grad():
                return torch.stack([model(x) for model in models])

        def one_pass(x: torch.Tensor = x) -> torch.Tensor:
            return uqkit.predict(collector, x).logits

        def predict_folded(x: torch.Tensor = x) -> torch.Tensor:
            with folded(collector):
                return uqkit.predict(collector, x).logits

        def forward(x: torch.Tensor = x) -> torch.Tensor:
            with torch.no_grad(), folded(collector):
                return collector(x)

        def loop_pool(x: torch.Tensor = x) -> torch.Tensor:
            with torch.no_grad():
                return torch.stack([model(x) for model in pooled])

        difference = float((one_pass() - loop()).abs().max())
        rows_run = {
            LOOP: loop,
            PREDICT: one_pass,
            PREDICT_FOLDED: predict_folded,
            FORWARD: forward,
            LOOP_POOL: loop_pool,
        }
        times = time_interleaved(rows_run, args.repeats, args.steps, args.warmup)
        for name, seconds in times.items():
            rows.append(
                {
                    "batch": batch,
                    "row": name,
                    "ms": 1000 * seconds,
                    "vs_loop": seconds / times[LOOP],
                    "max_abs_difference_to_loop": difference if name == PREDICT else None,
                }
            )
    for row in rows:
        row["build_ms"] = 1000 * build_s if row["row"] != LOOP else None
    return rows


def targets(rows: list[dict]) -> list[dict]:
    found = [r for r in rows if r["row"] == PREDICT and r["batch"] == 256]
    if not found:
        return []
    ratio = found[0]["vs_loop"]
    return [
        {
            "target": f"uqkit.predict with 12 stored samples at batch 256 <= {TARGET}x a loop over 12 models",
            "measured": ratio,
            "met": ratio <= TARGET,
        }
    ]


def markdown(results: dict) -> str:
    lines = [
        f"K = {results['arguments']['samples']} LeNet-5 samples, inference (eval, no gradients), "
        f"{results['environment']['threads']} thread(s)",
        "",
        "| batch | row | ms | vs loop |",
        "|---:|:---|---:|---:|",
    ]
    for r in results["rows"]:
        lines.append(f"| {r['batch']} | {r['row']} | {r['ms']:.2f} | {r['vs_loop']:.2f}x |")
    for t in results["targets"]:
        lines.append(f"\n{t['target']}: measured {t['measured']:.2f}x, {'met' if t['met'] else 'NOT met'}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=12)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds per measurement")
    parser.add_argument("--steps", type=int, default=10, help="timed calls per row per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "sgmcmc.json"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict = {
        "command": shlex.join([_interpreter(), *sys.argv]),
        "arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "environment": benchmark_environment(),
        "notes": (
            "Times are medians over repeats x steps calls, rows interleaved in one process. Every row "
            "computes all K samples' logits of the batch in eval mode without gradients. build_ms: the "
            "one-off construction of the vectorized model from the stored samples (cached afterwards)."
        ),
        "rows": run(args),
    }
    results["targets"] = targets(results["rows"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    print(f"\nwrote {args.out}")
    return results


if __name__ == "__main__":
    main()
