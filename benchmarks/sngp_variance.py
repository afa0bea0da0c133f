"""Does SNGP's posterior variance carry distance information? Mean GP logit variance per data set.

Loads trained ``sngp`` methods (or the ``sngp-<likelihood>`` variants of ``benchmarks/sngp_likelihoods.py``)
from a ``uqkit bench`` run directory, rebuilds the task exactly as the run did (same seed), and reports the
posterior variance of the GP logits ``phi(h)^T P_k^{-1} phi(h)`` (Liu et al. 2020, eq. (9)), averaged over
the classes and the examples of each data set: training data (a fixed subset of up to ``--max-examples``),
test data, and every OOD set of the task (near-OOD: held-out classes; far-OOD: digits; two moons: the
OOD cluster). The prior variance, far from all data, is ``phi^T phi / ridge ~ 1``. A distance-aware
posterior shows training < test < near-OOD < far-OOD. Also reports the AUROC of the variance itself as an
OOD score against the test data, the fraction of examples whose variance is below 0.5, and the quartiles.

Run (after the bench run)::

    .venv/bin/python benchmarks/sngp_variance.py runs/sngp-weights-holdout --task fashion-mnist-holdout \\
        --methods sngp-softmax,sngp-softmax-shared,sngp-unit
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import sngp_likelihoods  # noqa: F401  (registers the sngp-<likelihood> variants)
import torch
from sklearn.metrics import roc_auc_score

from uqkit.bench.registry import MethodContext, build_method
from uqkit.bench.tasks import build_task
from uqkit.bench.trainer import load_checkpoint


@torch.no_grad()
def logit_variance(method, inputs: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """``[N]``: the GP posterior variance of the logits, averaged over the classes."""
    network = method.network
    parts = [
        network.gp.predictive_variance(network.backbone(batch)).mean(dim=1)
        for batch in inputs.split(batch_size)
    ]
    return torch.cat(parts)


def summarize(variance: torch.Tensor) -> dict[str, float]:
    quartiles = torch.quantile(variance.double(), torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
    return {
        "mean": float(variance.mean()),
        "q25": float(quartiles[0]),
        "median": float(quartiles[1]),
        "q75": float(quartiles[2]),
        "below_0.5": float((variance < 0.5).double().mean()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--task", required=True)
    parser.add_argument("--methods", default="sngp")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-examples", type=int, default=10_000)
    args = parser.parse_args(argv)

    task = build_task(args.task, None, quick=False, seed=args.seed)
    context = MethodContext(task.input_shape, task.num_classes, task.model, len(task.train), task.name)
    subset = torch.randperm(len(task.train), generator=torch.Generator().manual_seed(0))[: args.max_examples]
    sets = {"train": task.train.inputs[subset], "test": task.test.inputs}
    sets.update({name: ood.inputs for name, ood in task.ood_sets.items()})
    results = {}
    for name in args.methods.split(","):
        method = build_method(name, context)
        method.load_state_dict(load_checkpoint(args.run_dir / "models" / task.name / f"{name}.pt")["method"])
        method.eval()
        variances = {key: logit_variance(method, inputs) for key, inputs in sets.items()}
        row = {key: summarize(value) for key, value in variances.items()}
        for key in task.ood_sets:
            scores = torch.cat([variances["test"], variances[key]]).numpy()
            labels = [0] * len(variances["test"]) + [1] * len(variances[key])
            row[key]["auroc_vs_test"] = float(roc_auc_score(labels, scores))
        results[name] = row
        print(
            f"\n{name} ({task.name}): mean GP logit variance [quartiles], share < 0.5, AUROC of the variance"
        )
        for key, stats in row.items():
            auroc = f", AUROC vs test {stats['auroc_vs_test']:.3f}" if "auroc_vs_test" in stats else ""
            print(
                f"  {key:>18}: {stats['mean']:.3f} "
                f"[{stats['q25']:.3f} {stats['median']:.3f} {stats['q75']:.3f}], "
                f"< 0.5: {stats['below_0.5']:.1%}{auroc}"
            )
    out = args.run_dir / "sngp_variance.json"
    out.write_text(json.dumps({"command": " ".join(["python", *sys.argv]), "results": results}, indent=1))
    print(f"\nwritten {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
