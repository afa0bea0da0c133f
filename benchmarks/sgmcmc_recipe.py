"""How the benchmark's SG-MCMC settings are chosen: a small grid, scored on the validation split.

Trains the benchmark's ``csgmcmc`` (or ``sgld``) method (:mod:`uqkit.bench.methods_sgmcmc`) with the
benchmark's trainer on Fashion-MNIST, once per setting of the grid (step size, SGHMC friction, temperature),
for ``budget_multiple`` (4) times ``--epochs``, and scores the samples' predictive on the validation split
(NLL, accuracy). The choice is the lowest validation NLL; the test NLL is computed for that setting only,
to report it.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sgmcmc_recipe.py --model lenet5 --epochs 20 \\
        --lrs 0.05 0.1 0.2 --frictions 0.1 0.9 --temperatures 1 0.1 \\
        --out benchmarks/results/sgmcmc_recipe.json

``--train-subset N`` trains on the first ``N`` training examples (a quick check that a setting trains at
all; its numbers do not choose anything).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import shlex
import sys
import time
from pathlib import Path

import torch
from _env import benchmark_environment
from bayesian_layers import _interpreter

from uqkit import metrics
from uqkit.bench.evaluate import predict_in_batches
from uqkit.bench.methods_sgmcmc import CyclicalSGMCMC, SGLDChain
from uqkit.bench.models import build_model
from uqkit.bench.tasks import TASKS, build_task
from uqkit.bench.trainer import TrainConfig, train_method


def build(method: str, task, num_train: int, setting: dict, batch_size: int):
    network = build_model(task.model, task.input_shape, task.num_classes)
    steps_per_epoch = math.ceil(num_train / batch_size)
    options = {"base_lr": setting["lr"], "temperature": setting["temperature"]}
    if method == "csgmcmc":
        return CyclicalSGMCMC(network, num_train, steps_per_epoch, friction=setting["friction"], **options)
    return SGLDChain(network, num_train, steps_per_epoch, **options)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", choices=["csgmcmc", "sgld"], default="csgmcmc")
    parser.add_argument("--model", default="lenet5")
    parser.add_argument("--epochs", type=int, default=20, help="the task's epochs (the method trains 4x)")
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    parser.add_argument("--frictions", type=float, nargs="+", default=[0.1])
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0])
    parser.add_argument("--train-subset", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    task = build_task("fashion-mnist", args.model, seed=args.seed)
    batch_size = TASKS["fashion-mnist"].batch_size
    train_inputs, train_labels = task.train.inputs, task.train.labels
    if args.train_subset is not None:
        train_inputs, train_labels = train_inputs[: args.train_subset], train_labels[: args.train_subset]
    frictions = args.frictions if args.method == "csgmcmc" else [None]
    rows = []
    for lr, friction, temperature in itertools.product(args.lrs, frictions, args.temperatures):
        setting = {"lr": lr, "friction": friction, "temperature": temperature}
        torch.manual_seed(args.seed)
        method = build(args.method, task, len(train_labels), setting, batch_size)
        config = TrainConfig(
            epochs=args.epochs * method.budget_multiple,
            batch_size=batch_size,
            learning_rate=1e-3,
            seed=args.seed,
            progress=False,
        )
        started = time.perf_counter()
        train_method(
            method, args.method, train_inputs, train_labels, task.val.inputs, task.val.labels, config
        )
        val = predict_in_batches(method, task.val.inputs, 1000, progress=False)
        row = {
            **setting,
            "samples": method.num_samples,
            "val_nll": metrics.nll(val.probs, task.val.labels),
            "val_accuracy": metrics.accuracy(val.probs, task.val.labels),
            "train_s": time.perf_counter() - started,
            "method": method,
        }
        rows.append(row)
        print({k: v for k, v in row.items() if k != "method"}, file=sys.stderr, flush=True)
    best = min(rows, key=lambda r: r["val_nll"])
    test = predict_in_batches(best["method"], task.test.inputs, 1000, progress=False)
    results = {
        "command": shlex.join([_interpreter(), *sys.argv]),
        "environment": benchmark_environment(),
        "arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "rows": [{k: v for k, v in r.items() if k != "method"} for r in rows],
        "chosen": {k: v for k, v in best.items() if k not in ("method",)},
        "chosen_test_nll": metrics.nll(test.probs, task.test.labels),
    }
    print(json.dumps({k: results[k] for k in ("rows", "chosen", "chosen_test_nll")}, indent=1))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
