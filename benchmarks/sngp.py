"""Inference cost of the ``sngp`` benchmark method against ``deterministic`` (project issue 7).

Both methods are built exactly as ``uqkit bench`` builds them for Fashion-MNIST with the MLP backbone
(:func:`uqkit.bench.registry.build_method`): ``deterministic`` is the MLP 784-512-512-10 with one softmax;
``sngp`` is the residual spectral-normalised MLP with a random-feature GP output layer and ``S`` Monte Carlo
samples of the GP logits (Liu et al. 2020). SNGP's precision matrix is first accumulated over one pass of
training-mode batches (as after its last epoch), and one warm-up prediction builds its cached Cholesky
factors, so the timings are those of repeated prediction, as in evaluation. The inputs are random (the cost
does not depend on the pixel values).

Timing: ``method.predict`` on one batch, eval mode, no gradients; the methods alternate within each
repeat (interleaved, one process), and the median over repeats is reported per batch size, with the ratio
SNGP / deterministic. ``--num-features D1 D2 ...`` times SNGP with each number of random features (default:
the benchmark's own, ``SNGP_NUM_FEATURES["mlp"]``).

Writes ``benchmarks/results/sngp.json`` (command, arguments, environment, results) and prints a Markdown
table. Run: ``.venv/bin/python benchmarks/sngp.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from _env import benchmark_environment

import uqkit.bench.methods_distance as methods_distance
from uqkit.bench.registry import Method, MethodContext, build_method

CONTEXT = MethodContext(
    input_shape=(1, 28, 28), num_classes=10, model="mlp", num_train=54_000, task="fashion-mnist"
)


def build(name: str, precision_batches: int, seed: int, num_features: int | None = None) -> Method:
    """The bench method ``name``; SNGP (with ``num_features`` random features) with its precision accumulated
    over ``precision_batches`` batches."""
    torch.manual_seed(seed)
    table = methods_distance.SNGP_NUM_FEATURES
    default = table[CONTEXT.model]
    table[CONTEXT.model] = num_features or default
    try:
        method = build_method(name, CONTEXT)
    finally:
        table[CONTEXT.model] = default
    if name == "sngp":
        method.train()
        method.on_epoch_start(0, 1)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for _ in range(precision_batches):
                method.network(torch.randn(128, *CONTEXT.input_shape, generator=generator))
    return method.eval()


def time_predict(method: Method, inputs: torch.Tensor) -> float:
    """Seconds of one ``method.predict(inputs)`` with no gradients."""
    with torch.no_grad():
        started = time.perf_counter()
        method.predict(inputs)
        return time.perf_counter() - started


def measure(
    batch_sizes: list[int],
    repeats: int,
    warmup: int,
    precision_batches: int,
    seed: int,
    num_features: list[int],
) -> list[dict]:
    methods = {"deterministic": build("deterministic", precision_batches, seed)}
    for features in num_features:
        methods[f"sngp-{features}"] = build("sngp", precision_batches, seed, features)
    names = list(methods)
    generator = torch.Generator().manual_seed(seed + 1)
    rows = []
    for batch_size in batch_sizes:
        inputs = torch.randn(batch_size, *CONTEXT.input_shape, generator=generator)
        for _ in range(warmup):
            for method in methods.values():
                time_predict(method, inputs)
        times: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(repeats):
            for name, method in methods.items():  # interleaved: drift affects both methods alike
                times[name].append(time_predict(method, inputs))
        medians = {name: statistics.median(values) for name, values in times.items()}
        rows.append(
            {
                "batch_size": batch_size,
                **{
                    name: {
                        "num_samples": methods[name].num_samples,
                        "num_parameters": sum(p.numel() for p in methods[name].parameters()),
                        "median_ms_per_batch": 1000 * medians[name],
                        "median_ms_per_example": 1000 * medians[name] / batch_size,
                        "min_ms_per_batch": 1000 * min(times[name]),
                        "max_ms_per_batch": 1000 * max(times[name]),
                    }
                    for name in names
                },
                "over_deterministic": {name: medians[name] / medians["deterministic"] for name in names[1:]},
            }
        )
    return rows


def environment() -> dict:
    return benchmark_environment()


def markdown(rows: list[dict]) -> str:
    lines = ["| batch | method | S | ms / batch | / deterministic |", "|---:|:---|---:|---:|---:|"]
    for row in rows:
        for name, ratio in [("deterministic", 1.0), *row["over_deterministic"].items()]:
            cell = row[name]
            lines.append(
                f"| {row['batch_size']} | {name} | {cell['num_samples']} | {cell['median_ms_per_batch']:.2f} "
                f"| {ratio:.2f}x |"
            )
    return "\n".join(lines)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text}")
    return value


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=_positive_int, nargs="+", default=[1000, 256])
    parser.add_argument("--repeats", type=_positive_int, default=100)
    parser.add_argument("--warmup", type=_positive_int, default=3)
    parser.add_argument("--precision-batches", type=_positive_int, default=20)
    parser.add_argument(
        "--threads", type=_positive_int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--num-features", type=_positive_int, nargs="+", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "sngp.json")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    num_features = args.num_features or [methods_distance.SNGP_NUM_FEATURES[CONTEXT.model]]
    rows = measure(
        args.batch_sizes, args.repeats, args.warmup, args.precision_batches, args.seed, num_features
    )
    results = {
        "command": shlex.join([os.path.relpath(sys.executable), *(sys.argv if argv is None else argv)]),
        "arguments": {
            key: os.path.relpath(value) if isinstance(value, Path) else value
            for key, value in vars(args).items()
        },
        "environment": environment(),
        "inference": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(markdown(rows))
    return results


if __name__ == "__main__":
    main()
