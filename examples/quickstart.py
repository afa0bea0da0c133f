"""Quick start: a small MLP on Fashion-MNIST for one epoch, then calibration and OOD detection.

Run from the repository root (after the README's set-up):

    .venv/bin/python examples/quickstart.py

It prints accuracy, NLL and ECE before and after temperature scaling (fitted on a validation split held out
from the training data), and the OOD AUROC against scikit-learn's digits using the predictive entropy.
"""

from __future__ import annotations

import time

import torch
from torch import nn
from torch.nn import functional as F

import uqkit
from uqkit import data, metrics
from uqkit.calibration import TemperatureScaler


def main(epochs: int = 1, seed: int = 0) -> None:
    torch.manual_seed(seed)
    train, val = data.train_val_split(data.fashion_mnist("train"), val_fraction=0.1, seed=seed)
    test = data.fashion_mnist("test")
    digits = data.digits_ood(size=28, reference=train.inputs)
    mean, std = float(train.inputs.mean()), float(train.inputs.std())

    def prepare(x: torch.Tensor) -> torch.Tensor:
        return ((x - mean) / std).flatten(1)

    model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x_train, y_train = prepare(train.inputs), train.labels
    started = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(y_train))
        for start in range(0, len(order), 128):
            index = order[start : start + 128]
            loss = F.cross_entropy(model(x_train[index]), y_train[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    print(f"trained {epochs} epoch(s) in {time.perf_counter() - started:.1f} s")

    model.eval()
    with torch.no_grad():
        val_logits = model(prepare(val.inputs))
        test_logits = model(prepare(test.inputs))
        digits_logits = model(prepare(digits.inputs))
    scaler = TemperatureScaler().fit(val_logits, val.labels)

    with torch.no_grad():
        scaled_logits = scaler(test_logits)

    print(f"{'':<22}{'accuracy':>10}{'NLL':>8}{'ECE':>8}")
    for label, logits in (("before scaling", test_logits), ("temperature-scaled", scaled_logits)):
        prediction = uqkit.Prediction(logits)
        probs = prediction.probs
        print(
            f"{label:<22}{metrics.accuracy(probs, test.labels):>10.4f}"
            f"{metrics.nll(probs, test.labels):>8.4f}"
            f"{metrics.expected_calibration_error(probs, test.labels):>8.4f}"
        )
    print(f"fitted temperature: {scaler.temperature:.3f}")
    auroc = metrics.ood_auroc(
        uqkit.Prediction(test_logits).total_entropy, uqkit.Prediction(digits_logits).total_entropy
    )
    print(f"OOD AUROC, Fashion-MNIST test vs digits (predictive entropy): {auroc:.4f}")


if __name__ == "__main__":
    main()
