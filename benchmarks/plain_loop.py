"""The plain PyTorch baseline that ``uqkit bench`` must match: Fashion-MNIST, MLP 784-512-512-10, Adam.

Same split as the benchmark (``uqkit.data.fashion_mnist`` + ``train_val_split(val_fraction=0.1, seed)``),
inputs in [0, 1] (``--standardize``: the benchmark's scalar standardisation), Adam lr 1e-3, batch 128,
constant learning rate, the last epoch evaluated. ``--members`` models, each seeded ``seed + m`` (weights
and its own shuffle); model 0 is the deterministic row, all of them the ensemble, model 0 with a
temperature fitted on validation the temperature-scaled row. Metrics: ``uqkit.metrics`` (ECE: 15 bins).

    .venv/bin/python benchmarks/plain_loop.py --epochs 10 --out benchmarks/results/plain_loop.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from _env import benchmark_environment
from torch import nn
from torch.nn import functional as F

from uqkit import data, metrics
from uqkit.calibration import TemperatureScaler


def train_one(x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)
    )
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    shuffle = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for index in torch.randperm(len(y), generator=shuffle).split(128):
            optimizer.zero_grad()
            F.cross_entropy(net(x[index]), y[index]).backward()
            optimizer.step()
    return net.eval()


def scores(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    return {
        "nll": metrics.nll(probs, labels),
        "ece": metrics.expected_calibration_error(probs, labels, num_bins=15),
        "accuracy": metrics.accuracy(probs, labels),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--standardize", action="store_true", help="the benchmark's (x - mean) / std")
    parser.add_argument("--out", default=None, help="write the numbers to this JSON file")
    args = parser.parse_args()
    train, val = data.train_val_split(data.fashion_mnist("train"), val_fraction=0.1, seed=args.seed)
    test = data.fashion_mnist("test")
    mean, std = (float(train.inputs.mean()), float(train.inputs.std())) if args.standardize else (0.0, 1.0)
    x_train, x_val, x_test = ((part.inputs - mean) / std for part in (train, val, test))
    started = time.perf_counter()
    nets = [train_one(x_train, train.labels, args.epochs, args.seed + m) for m in range(args.members)]
    with torch.no_grad():
        test_logits = torch.stack([net(x_test) for net in nets])
        val_logits = torch.stack([net(x_val) for net in nets])
    scaler = TemperatureScaler().fit(val_logits[0], val.labels)  # outside no_grad: fit differentiates
    with torch.no_grad():
        validation = {
            "deterministic": scores(val_logits[0].softmax(-1), val.labels),
            f"ensemble-{args.members}": scores(val_logits.softmax(-1).mean(0), val.labels),
        }
        rows = {
            "deterministic": scores(test_logits[0].softmax(-1), test.labels),
            "temperature-scaled": scores(scaler(test_logits[0]).softmax(-1), test.labels),
            f"ensemble-{args.members}": scores(test_logits.softmax(-1).mean(0), test.labels),
        }
    for name, row in rows.items():
        ece, acc = 100 * row["ece"], 100 * row["accuracy"]
        print(f"{name:20s} NLL {row['nll']:.3f}  ECE {ece:.2f}%  acc {acc:.2f}%")
    if args.out:
        record = {
            "command": " ".join([".venv/bin/python", *sys.argv]),
            "environment": benchmark_environment(train_time_s=time.perf_counter() - started),
            "config": vars(args),
            "validation": validation,
            "test": rows,
        }
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(record, handle, indent=2)


if __name__ == "__main__":
    main()
