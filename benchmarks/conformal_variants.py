"""Coverage and set size of every conformal classification variant on the README's synthetic problem.

10 classes, labels drawn from ``softmax(z)`` with ``z ~ N(0, 2^2)``, an over-confident model with 3 samples
(logits ``2 z + N(0, 1)``); ``--splits`` random splits of 10,000 examples into ``--calibration`` calibration
and the rest test; ``alpha = 0.1``; RAPS with ``k_reg = 1, lam = 0.01``. Prints a Markdown table (mean
coverage, its standard deviation over splits, mean set size, share of empty sets, and SSC: the lowest coverage
over the non-empty set sizes, Angelopoulos et al. 2021) and writes
``benchmarks/results/conformal_variants.json``.

Run: ``.venv/bin/python benchmarks/conformal_variants.py`` (8 s on our 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path

import torch
from _env import benchmark_environment

import uqkit
from uqkit.conformal import SplitConformalClassifier
from uqkit.metrics import empirical_coverage, set_size, size_stratified_coverage

VARIANTS = [
    ("lac", False, {}),
    ("lac", True, {}),
    ("aps", False, {}),
    ("aps", True, {}),
    ("raps", False, {"k_reg": 1, "lam": 0.01}),
    ("raps", True, {"k_reg": 1, "lam": 0.01}),
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", type=int, default=100)
    parser.add_argument("--calibration", type=int, default=1000)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "conformal_variants.json"
    )
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    z = torch.randn(10000, 10) * 2
    labels = torch.distributions.Categorical(logits=z).sample()
    probs = uqkit.Prediction(torch.stack([2 * z + torch.randn_like(z) for _ in range(3)])).probs
    generator = torch.Generator().manual_seed(0)
    rows = []
    for score, randomized, extra in VARIANTS:
        coverage, size, empty, ssc = [], [], [], []
        for _ in range(args.splits):
            order = torch.randperm(len(labels), generator=generator)
            cal, test = order[: args.calibration], order[args.calibration :]
            calibrator = SplitConformalClassifier(score, args.alpha, randomized, **extra)
            sets = calibrator.fit(probs[cal], labels[cal], generator=generator).predict(
                probs[test], generator
            )
            sizes = set_size(sets)
            strata = size_stratified_coverage(sets, labels[test])
            coverage.append(empirical_coverage(sets, labels[test]))
            size.append(sizes.mean)
            empty.append(float(sizes.fraction[0]))
            ssc.append(float(strata.coverage[strata.sizes > 0].min()))
        rows.append(
            {
                "score": score,
                "randomized": randomized,
                **extra,
                "coverage": statistics.mean(coverage),
                "coverage_sd": statistics.pstdev(coverage),
                "mean_size": statistics.mean(size),
                "empty": statistics.mean(empty),
                "ssc": statistics.mean(ssc),
            }
        )
    accuracy = float((probs.argmax(dim=1) == labels).double().mean())
    print(f"top-1 accuracy {accuracy:.3f}; {args.splits} splits, {args.calibration} calibration examples")
    print("| score | randomised | coverage | sd over splits | mean size | empty | SSC |")
    print("|---|---|--:|--:|--:|--:|--:|")
    for row in rows:
        print(
            f"| {row['score']} | {'yes' if row['randomized'] else 'no'} | {row['coverage']:.4f} | "
            f"{row['coverage_sd']:.4f} | {row['mean_size']:.2f} | {100 * row['empty']:.1f}% | "
            f"{row['ssc']:.3f} |"
        )
    record = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "environment": benchmark_environment(),
        "settings": vars(args) | {"out": args.out.name},
        "top1_accuracy": accuracy,
        "variants": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
