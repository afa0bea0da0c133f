"""How the benchmark's SG-MCMC settings are chosen: a small grid, scored on the validation split.

Trains the benchmark's ``csgmcmc`` (or ``sgld``) method (:mod:`uqkit.bench.methods_sgmcmc`) with the
benchmark's trainer on Fashion-MNIST, once per setting of the grid (step size, SGHMC friction, temperature),
for ``budget_multiple`` (4) times ``--epochs``, and scores the samples' predictive on the validation split
(NLL, accuracy). The choice is the lowest validation NLL; the test NLL is computed for that setting only,
to report it.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sgmcmc_recipe.py --model lenet5 --epochs 20 \\
        --lrs 0.05 0.1 0.2 --frictions 0.1 0.9 --temperatures 1 0.1 \\
        --out benchmarks/results/sgmcmc_recipe.json

``--weight-decays`` sets the Gaussian prior (precision ``w N``), ``--explorations`` the fraction ``beta`` of
each cycle without noise. ``--samples-per-cycle S`` keeps ``S`` states per cycle (one epoch apart, the last at
the cycle's end) and scores every ``k <= S`` as its own row: the last ``k`` states of each cycle are exactly
what a run with ``samples_per_cycle = k`` keeps, since the chain does not depend on its thinning. Each row
also holds every sample's own validation NLL and the chain's per-epoch validation NLL (the trainer's
history), to see where a setting gains or loses. ``--skip-test`` leaves the test split untouched (a sweep
whose choice is measured on test later, by ``uqkit bench``). The results file is rewritten after every
setting.

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
from uqkit.bench.methods_sgmcmc import (
    CSGMCMC_EXPLORATION,
    CSGMCMC_SAMPLES_PER_CYCLE,
    CSGMCMC_WEIGHT_DECAY,
    CyclicalSGMCMC,
    SGLDChain,
)
from uqkit.bench.models import build_model
from uqkit.bench.tasks import TASKS, build_task
from uqkit.bench.trainer import TrainConfig, train_method
from uqkit.prediction import Prediction


def build(method: str, task, num_train: int, setting: dict, batch_size: int):
    network = build_model(task.model, task.input_shape, task.num_classes)
    steps_per_epoch = math.ceil(num_train / batch_size)
    options = {
        "base_lr": setting["lr"],
        "temperature": setting["temperature"],
        "weight_decay": setting["weight_decay"],
    }
    if method == "csgmcmc":
        return CyclicalSGMCMC(
            network,
            num_train,
            steps_per_epoch,
            friction=setting["friction"],
            exploration=setting["exploration"],
            samples_per_cycle=setting["samples_kept_per_cycle"],
            **options,
        )
    return SGLDChain(network, num_train, steps_per_epoch, **options)


def subsets(method, samples_per_cycle: int | None) -> dict[int | None, list[int]]:
    """Sample indices of each scored variant: ``{k: the last k samples of every cycle}`` for cSGHMC (the
    collector keeps the samples in step order, ``samples_per_cycle`` per cycle), ``{None: all}`` for SGLD."""
    total = method.num_collected
    if samples_per_cycle is None or total % samples_per_cycle:
        return {None: list(range(total))}
    cycles = total // samples_per_cycle
    return {
        k: [
            c * samples_per_cycle + j
            for c in range(cycles)
            for j in range(samples_per_cycle - k, samples_per_cycle)
        ]
        for k in range(1, samples_per_cycle + 1)
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", choices=["csgmcmc", "sgld"], default="csgmcmc")
    parser.add_argument("--model", default="lenet5")
    parser.add_argument("--epochs", type=int, default=20, help="the task's epochs (the method trains 4x)")
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    parser.add_argument("--frictions", type=float, nargs="+", default=[0.1])
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0])
    parser.add_argument("--weight-decays", type=float, nargs="+", default=[CSGMCMC_WEIGHT_DECAY])
    parser.add_argument("--explorations", type=float, nargs="+", default=[CSGMCMC_EXPLORATION])
    parser.add_argument(
        "--samples-per-cycle",
        type=int,
        default=CSGMCMC_SAMPLES_PER_CYCLE,
        help="states kept per cycle; every k up to this is scored as its own row",
    )
    parser.add_argument("--skip-test", action="store_true", help="do not score the chosen setting on test")
    parser.add_argument("--train-subset", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    task = build_task("fashion-mnist", args.model, seed=args.seed)
    batch_size = TASKS["fashion-mnist"].batch_size
    train_inputs, train_labels = task.train.inputs, task.train.labels
    if args.train_subset is not None:
        train_inputs, train_labels = train_inputs[: args.train_subset], train_labels[: args.train_subset]
    csgmcmc = args.method == "csgmcmc"
    frictions = args.frictions if csgmcmc else [None]
    explorations = args.explorations if csgmcmc else [None]
    kept = args.samples_per_cycle if csgmcmc else None
    grid = itertools.product(args.lrs, frictions, args.temperatures, args.weight_decays, explorations)
    rows, best = [], None
    for lr, friction, temperature, weight_decay, exploration in grid:
        setting = {
            "lr": lr,
            "friction": friction,
            "temperature": temperature,
            "weight_decay": weight_decay,
            "exploration": exploration,
            "samples_kept_per_cycle": kept,
        }
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
        trained = train_method(
            method, args.method, train_inputs, train_labels, task.val.inputs, task.val.labels, config
        )
        train_s = time.perf_counter() - started
        val = predict_in_batches(method, task.val.inputs, 1000, progress=False)
        sample_nll = [metrics.nll(Prediction(logits).probs, task.val.labels) for logits in val.logits]
        for per_cycle, indices in subsets(method, kept).items():
            probs = Prediction(val.logits[indices]).probs
            row = {
                **setting,
                "samples_per_cycle": per_cycle,
                "samples": len(indices),
                "val_nll": metrics.nll(probs, task.val.labels),
                "val_accuracy": metrics.accuracy(probs, task.val.labels),
                "sample_val_nll": [sample_nll[i] for i in indices],
                "chain_val_nll": [entry["val_nll"] for entry in trained.history],
                "train_s": train_s,
            }
            rows.append(row)
            summary = {k: v for k, v in row.items() if k not in ("sample_val_nll", "chain_val_nll")}
            print(summary, file=sys.stderr, flush=True)
            if best is None or row["val_nll"] < best[0]["val_nll"]:
                best = (row, method, indices)
        results = {
            "command": shlex.join([_interpreter(), *sys.argv]),
            "environment": benchmark_environment(),
            "arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "rows": rows,
            "chosen": best[0],
        }
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2) + "\n")
    if not args.skip_test:
        _, method, indices = best
        test = predict_in_batches(method, task.test.inputs, 1000, progress=False)
        results["chosen_test_nll"] = metrics.nll(Prediction(test.logits[indices]).probs, task.test.labels)
    print(json.dumps({k: results.get(k) for k in ("rows", "chosen", "chosen_test_nll")}, indent=1))
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
