"""How the benchmark's deep-ensemble recipe was chosen: schedule x epoch selection, on validation.

Trains the ``deep-ensemble`` method of ``uqkit bench`` (5 MLPs 784-512-512-10 on Fashion-MNIST, Adam lr 1e-3,
batch 128, each member shuffled independently) once per schedule, keeps every member's validation and test
logits after every epoch, and scores three selections from them per schedule (constant rate or cosine
decay): the last epoch; each member at the epoch of its own lowest validation NLL; all members at the epoch
of the ensemble's lowest validation NLL. The choice is made on the validation columns; the test columns are
printed beside them only to report the chosen recipe.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ensemble_recipe.py --epochs 10 \\
        --out benchmarks/results/ensemble_recipe_10.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch
from _env import benchmark_environment

from uqkit.bench.registry import MethodContext, build_method
from uqkit.bench.tasks import build_task
from uqkit.bench.trainer import learning_rate_factor
from uqkit.metrics import expected_calibration_error


def train_and_record(task, schedule: str, epochs: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[E, M, N, C]`` validation and test logits of every member after every epoch."""
    torch.manual_seed(seed)
    context = MethodContext(task.input_shape, task.num_classes, task.model, len(task.train), task.name, 128)
    method = build_method("deep-ensemble", context)
    optimizer = torch.optim.Adam(method.parameters(), lr=1e-3)
    shuffles = [torch.Generator().manual_seed(seed + m) for m in range(method.num_batch_orders)]
    num_examples = len(task.train.labels)
    steps = math.ceil(num_examples / 128)
    val_logits, test_logits = [], []
    for epoch in range(epochs):
        orders = torch.stack([torch.randperm(num_examples, generator=g) for g in shuffles])
        method.train()
        for step in range(steps):
            index = orders[:, step * 128 : (step + 1) * 128]
            loss = method.training_loss(task.train.inputs[index], task.train.labels[index])
            for group in optimizer.param_groups:
                group["lr"] = 1e-3 * learning_rate_factor(schedule, epoch * steps + step, epochs * steps)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        method.eval()
        with torch.no_grad():
            val_logits.append(torch.cat([method.predict(b).logits for b in task.val.inputs.split(1000)], 1))
            test_logits.append(torch.cat([method.predict(b).logits for b in task.test.inputs.split(1000)], 1))
        print(f"{schedule} epoch {epoch + 1}/{epochs}", file=sys.stderr, flush=True)
    return torch.stack(val_logits), torch.stack(test_logits)


def scores(member_logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """NLL and ECE (15 bins) of the ensemble's mixture predictive over ``[M, N, C]`` member logits."""
    probs = member_logits.softmax(dim=-1).mean(dim=0)
    nll = float(-probs.gather(1, labels.unsqueeze(1)).log().double().mean())
    return {"nll": nll, "ece": expected_calibration_error(probs, labels, num_bins=15)}


def member_nll(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float(torch.nn.functional.cross_entropy(logits.double(), labels))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    schedules = ["constant", "cosine"]
    parser.add_argument("--schedules", nargs="+", default=schedules, choices=schedules)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    task = build_task("fashion-mnist", seed=args.seed)
    started = time.perf_counter()
    rows = {}
    for schedule in args.schedules:
        val, test = train_and_record(task, schedule, args.epochs, args.seed)
        last = args.epochs - 1
        members = range(val.shape[1])
        nlls = [[member_nll(val[e, m], task.val.labels) for e in range(args.epochs)] for m in members]
        best = [min(range(args.epochs), key=nlls[m].__getitem__) for m in members]
        chosen_val = torch.stack([val[best[m], m] for m in members])
        chosen_test = torch.stack([test[best[m], m] for m in members])
        rows[f"{schedule}, last epoch"] = {
            "validation": scores(val[last], task.val.labels),
            "test": scores(test[last], task.test.labels),
        }
        ensemble_nlls = [scores(val[e], task.val.labels)["nll"] for e in range(args.epochs)]
        joint = min(range(args.epochs), key=ensemble_nlls.__getitem__)
        rows[f"{schedule}, the ensemble's best epoch"] = {
            "epochs": [joint + 1],
            "validation": scores(val[joint], task.val.labels),
            "test": scores(test[joint], task.test.labels),
        }
        rows[f"{schedule}, each member's best epoch"] = {
            "epochs": [b + 1 for b in best],
            "validation": scores(chosen_val, task.val.labels),
            "test": scores(chosen_test, task.test.labels),
        }
    for name, row in rows.items():
        v, t = row["validation"], row["test"]
        print(
            f"{name:35s} validation NLL {v['nll']:.4f} ECE {100 * v['ece']:.2f}%   "
            f"test NLL {t['nll']:.4f} ECE {100 * t['ece']:.2f}%  {row.get('epochs', '')}"
        )
    if args.out:
        record = {
            "command": " ".join(["OMP_NUM_THREADS=1 .venv/bin/python", *sys.argv]),
            "environment": benchmark_environment(time_s=time.perf_counter() - started),
            "config": vars(args),
            "recipes": rows,
        }
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(record, handle, indent=2)


if __name__ == "__main__":
    main()
