"""What `batchensemble`, `mimo` and `rank1-bnn` add to the default `uqkit bench` run (project issue 6).

The methods are built exactly as ``uqkit bench`` builds them for Fashion-MNIST with the MLP 784-512-512-10
(:func:`uqkit.bench.registry.build_method`), next to ``deterministic`` as the reference. Two costs are timed,
with random inputs (the cost does not depend on pixel values):

* one training step: ``training_loss`` on a batch of 128, backward, Adam step (training mode);
* prediction: ``method.predict`` on a batch of 1,000 (eval mode, no gradients), per example.

Methods alternate within each repeat (interleaved, one process); medians over repeats. The default run's
budget is then estimated as ``steps x step time + evaluated examples x prediction time``, with the default
suite's 8 epochs x 422 steps and about 190,000 predicted examples (10,000 test, 13 rotation angles of the
test set, the digits OOD set, and 8 validation passes of 6,000).

Writes ``benchmarks/results/ensemble_bench_cost.json`` (command, arguments, environment, results) and prints
a Markdown table. Run under the exclusive CPU lock: ``flock -x /tmp/uqkit-cpu.lock .venv/bin/python
benchmarks/ensemble_bench_cost.py``.
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

from uqkit.bench.registry import MethodContext, build_method

METHODS = ("deterministic", "batchensemble", "mimo", "rank1-bnn")
CONTEXT = MethodContext(
    input_shape=(1, 28, 28), num_classes=10, model="mlp", num_train=54_000, task="fashion-mnist"
)
DEFAULT_STEPS = 8 * 422
DEFAULT_EVALUATED_EXAMPLES = 10_000 + 13 * 10_000 + 1_797 + 8 * 6_000


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="training steps per timed block")
    parser.add_argument("--predictions", type=int, default=3, help="predictions of 1,000 per timed block")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "ensemble_bench_cost.json"
    )
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    methods = {name: build_method(name, CONTEXT) for name in METHODS}
    optimizers = {name: torch.optim.Adam(m.parameters(), lr=1e-3) for name, m in methods.items()}
    x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
    test = torch.randn(1000, 1, 28, 28)

    def step(name: str) -> None:
        method = methods[name].train()
        loss = method.training_loss(x, y)
        optimizers[name].zero_grad()
        loss.backward()
        optimizers[name].step()

    for name in METHODS:  # warm-up
        for _ in range(3):
            step(name)
    step_times: dict[str, list[float]] = {name: [] for name in METHODS}
    predict_times: dict[str, list[float]] = {name: [] for name in METHODS}
    for _ in range(args.repeats):
        for name in METHODS:
            started = time.perf_counter()
            for _ in range(args.steps):
                step(name)
            step_times[name].append((time.perf_counter() - started) / args.steps)
            method = methods[name].eval()
            with torch.no_grad():
                started = time.perf_counter()
                for _ in range(args.predictions):
                    method.predict(test)
            predict_times[name].append((time.perf_counter() - started) / args.predictions / len(test))

    base_step = statistics.median(step_times["deterministic"])
    base_predict = statistics.median(predict_times["deterministic"])
    rows = []
    for name in METHODS:
        step_s, predict_s = statistics.median(step_times[name]), statistics.median(predict_times[name])
        rows.append(
            {
                "method": name,
                "num_samples": methods[name].num_samples,
                "parameters": sum(p.numel() for p in methods[name].parameters()),
                "train_step_ms": 1000 * step_s,
                "train_step_ratio": step_s / base_step,
                "predict_ms_per_example": 1000 * predict_s,
                "predict_ratio": predict_s / base_predict,
                "default_run_estimate_s": DEFAULT_STEPS * step_s + DEFAULT_EVALUATED_EXAMPLES * predict_s,
            }
        )
    added = sum(r["default_run_estimate_s"] for r in rows if r["method"] != "deterministic")
    results = {
        "command": shlex.join([os.path.relpath(sys.executable), *(sys.argv if argv is None else argv)]),
        "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "environment": benchmark_environment(),
        "rows": rows,
        "added_by_the_three_methods_s": added,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")

    print("| method | S | params | train step ms | x det | predict ms/ex | x det | default-run estimate s |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        print(
            f"| {r['method']} | {r['num_samples']} | {r['parameters']:,} | {r['train_step_ms']:.2f} | "
            f"{r['train_step_ratio']:.2f} | {r['predict_ms_per_example']:.4f} | {r['predict_ratio']:.2f} | "
            f"{r['default_run_estimate_s']:.0f} |"
        )
    print(f"\nadded by batchensemble + mimo + rank1-bnn: {added:.0f} s")
    return results


if __name__ == "__main__":
    main()
