"""How far converting a trained model to BatchEnsemble moves its function, per fast-weight initialisation.

Trains the benchmark's MLP 784-512-512-10 for 2 epochs on Fashion-MNIST (Adam, lr 1e-3, batch 128, seed
0, one thread), converts copies with :func:`uqkit.bayesianize_` and :class:`uqkit.BatchEnsembleConfig` (4
members) under each fast-weight initialisation, and reports on the validation split (never the test split):
the relative RMS change of the logits against the original, the fraction of predictions unchanged, the
members' mean NLL, the NLL of their ensemble (the mean of their probabilities) and how often members 0 and 1
disagree. This chose the conversion default, ``N(1, 0.1^2)`` (docs/efficient_ensembles.md, "Converting a
trained model"). Run from the repository root: ``.venv/bin/python benchmarks/convert_fast_weights.py``
(about 3 minutes on one core).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from uqkit.bench.models import build_model
from uqkit.bench.tasks import build_task
from uqkit.methods.convert import BatchEnsembleConfig, bayesianize_
from uqkit.nn.members import unfold_members

MEMBERS = 4
EPOCHS = 2
INITS = (
    ("ones", 0.1),
    ("normal", 0.02),
    ("normal", 0.05),
    ("normal", 0.1),
    ("normal", 0.2),
    ("normal", 0.5),
    ("random_sign", 0.1),
)


def _train(inputs: torch.Tensor, labels: torch.Tensor) -> torch.nn.Module:
    network = build_model("mlp", (1, 28, 28), 10)
    optimizer = torch.optim.Adam(network.parameters(), 1e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(EPOCHS):
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(labels), 128):
            index = order[start : start + 128]
            optimizer.zero_grad()
            F.cross_entropy(network(inputs[index]), labels[index]).backward()
            optimizer.step()
    return network.eval()


def _row(name: str, logits: torch.Tensor, original: torch.Tensor, labels: torch.Tensor) -> str:
    """One table row for member logits ``[M, B, C]`` against the original's ``[B, C]``."""
    change = float((logits - original).norm() / original.expand_as(logits).norm())
    unchanged = float((logits.argmax(-1) == original.argmax(-1)).double().mean())
    member_nll = sum(float(F.cross_entropy(member, labels)) for member in logits) / len(logits)
    mixture = torch.log_softmax(logits, -1).logsumexp(0) - math.log(len(logits))
    disagree = float((logits[0].argmax(-1) != logits[1].argmax(-1)).double().mean())
    return (
        f"| {name} | {change:.2f} | {100 * unchanged:.1f} % | {member_nll:.3f} | "
        f"{float(F.nll_loss(mixture, labels)):.3f} | {100 * disagree:.1f} % |"
    )


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    task = build_task("fashion-mnist")
    network = _train(task.train.inputs, task.train.labels)
    x, y = task.val.inputs, task.val.labels
    with torch.no_grad():
        original = network(x)
    accuracy = float((original.argmax(-1) == y).double().mean())
    nll = float(F.cross_entropy(original, y))
    print(f"original: validation NLL {nll:.3f}, accuracy {100 * accuracy:.1f} %\n")
    print(
        "| fast weights | relative change of the logits | predictions unchanged | members' mean NLL | "
        "ensemble NLL | two members disagree |"
    )
    print("|---|--:|--:|--:|--:|--:|")
    for init, std in INITS:
        torch.manual_seed(1)
        converted = copy.deepcopy(network)
        bayesianize_(converted, BatchEnsembleConfig(MEMBERS, fast_weight_init=init, fast_weight_std=std))
        with torch.no_grad():
            logits = unfold_members(converted(x), MEMBERS)  # called as before: [M * B, C] -> [M, B, C]
        name = f"N(1, {std:g}^2)" if init == "normal" else init
        print(_row(name, logits, original, y))


if __name__ == "__main__":
    main()
