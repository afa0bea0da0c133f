"""Uncertainty for a model you already have: a Bayesian version, a deep ensemble and a BatchEnsemble.

Run from the repository root (after the README's set-up):

    .venv/bin/python examples/your_model.py

It builds a small classifier (the stand-in for yours), then makes three uncertainty-aware versions of it and
trains each for a few steps on a synthetic two-class problem (no data files needed):

* ``uqkit.bayesianize_(model, uqkit.FlipoutConfig())``: every ``nn.Linear`` becomes a ``FlipoutLinear``
  (mean-field Gaussian weights), trained on ``uqkit.ELBO``;
* ``uqkit.DeepEnsemble(factory, 4)``: four independently initialised copies, run as one vectorized model;
* ``uqkit.bayesianize_(model, uqkit.BatchEnsembleConfig(num_members=4))``: four members sharing each weight.

Each ends in a ``uqkit.Prediction`` with a leading sample/member dimension, and the script prints its
accuracy, NLL and mean epistemic uncertainty (mutual information) on the data and on far-away inputs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

import uqkit
from uqkit import metrics
from uqkit.nn.members import num_members, tile_members


def your_model() -> nn.Module:
    return nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))


def two_blobs(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.randint(0, 2, (n,), generator=generator)
    inputs = torch.randn(n, 2, generator=generator) + (labels[:, None] * 2.0 - 1.0)
    return inputs, labels


def report(name: str, prediction: uqkit.Prediction, labels: torch.Tensor, far: uqkit.Prediction) -> None:
    accuracy = float((prediction.predicted_class == labels).float().mean())
    nll = float(metrics.nll(prediction.probs, labels))
    near, away = float(prediction.epistemic.mean()), float(far.epistemic.mean())
    print(
        f"{name:<14} S={prediction.logits.shape[0]:<3} accuracy {accuracy:.3f}  NLL {nll:.3f}  "
        f"epistemic: data {near:.4f}, far away {away:.4f}"
    )


def fit(model: nn.Module, loss: Callable[[], torch.Tensor], steps: int) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()


def members_nll(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum over members of the mean cross-entropy: a member model returns ``[M * B, C]`` (members folded
    into the batch, member-major), so the labels are tiled to ``[M * B]``."""
    members = num_members(model)
    return members * F.cross_entropy(model(inputs), tile_members(labels, members))


def main(steps: int = 200, seed: int = 0) -> dict[str, uqkit.Prediction]:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    x, y = two_blobs(512, generator)
    x_test, y_test = two_blobs(512, generator)
    angle = torch.rand(256, generator=generator) * 2 * torch.pi
    far = 10.0 * torch.stack([angle.cos(), angle.sin()], dim=1)  # a circle of radius 10 around the data
    results = {}

    # 1. Bayesian: convert the layers in place (pretrained weights would be kept as the posterior means)
    bnn = your_model()
    conversion = uqkit.bayesianize_(bnn, uqkit.FlipoutConfig())
    print(f"bayesianize_: {len(conversion.converted)} layers converted")
    elbo = uqkit.ELBO(num_data=len(x))  # mean NLL + KL / N, the KL collected from the model's layers
    fit(bnn, lambda: elbo(bnn(x), y, bnn), steps)
    results["flipout-bnn"] = uqkit.predict(bnn, x_test, num_samples=16)
    report("flipout-bnn", results["flipout-bnn"], y_test, uqkit.predict(bnn, far, num_samples=16))

    # 2. Deep ensemble: M copies with independent initialisations, one vectorized forward, [M * B, C] out
    ensemble = uqkit.DeepEnsemble(your_model, 4)
    fit(ensemble, lambda: members_nll(ensemble, x, y), steps)  # ensemble(x): [4 * B, 2]
    results["deep-ensemble"] = uqkit.predict(ensemble, x_test)  # [4, B, 2]
    report("deep-ensemble", results["deep-ensemble"], y_test, uqkit.predict(ensemble, far))

    # 3. BatchEnsemble: members share each weight and differ by rank-1 factors; called as before
    batchensemble = your_model()
    uqkit.bayesianize_(batchensemble, uqkit.BatchEnsembleConfig(num_members=4))
    fit(batchensemble, lambda: members_nll(batchensemble, x, y), steps)
    results["batchensemble"] = uqkit.predict(batchensemble, x_test)
    report("batchensemble", results["batchensemble"], y_test, uqkit.predict(batchensemble, far))
    return results


if __name__ == "__main__":
    main()
