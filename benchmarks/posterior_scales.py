"""The learned posterior scales of a finished `uqkit bench` run's Bayesian networks, per layer.

Loads ``<run>/models/<task>/<method>.pt`` (``torch.load(weights_only=True)``) for each method, turns every
``*_rho`` parameter into its posterior standard deviation ``sigma = softplus(rho)`` and prints, per parameter
tensor, the quantiles of ``sigma`` as a Markdown table, with a first row for the scale every parameter starts
from (``BNN_POSTERIOR_SCALE_INIT``: before training every ``rho`` holds the same value). Several runs can be
compared side by side, e.g. a 5-epoch run against a longer one::

    python benchmarks/posterior_scales.py runs/default runs/default-10-epochs
    python benchmarks/posterior_scales.py runs/default --methods flipout-bnn --task fashion-mnist
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from uqkit.bench.methods_bayesian import BNN_POSTERIOR_SCALE_INIT

QUANTILES = (0.01, 0.1, 0.5, 0.9, 0.99)


def scale_quantiles(state: dict[str, torch.Tensor]) -> list[tuple[str, int, list[float]]]:
    """``(parameter name, number of entries, quantiles of softplus(rho))`` for every ``*_rho`` tensor.

    Args:
        state: a method's ``state_dict``.

    Returns:
        One row per posterior, in the state dict's order; the name drops the ``_rho`` suffix.

    Raises:
        ValueError: if the state has no ``*_rho`` entry (not a Bayesian network).
    """
    rows = []
    levels = torch.tensor(QUANTILES, dtype=torch.float64)
    for name, rho in state.items():
        if not name.endswith("_rho"):
            continue
        sigma = F.softplus(rho.detach().double()).reshape(-1)
        rows.append((name.removesuffix("_rho"), sigma.numel(), torch.quantile(sigma, levels).tolist()))
    if not rows:
        raise ValueError("state: expected *_rho entries of a Bayesian network, found none")
    return rows


def _load_state(run: Path, task: str, method: str) -> dict[str, torch.Tensor]:
    path = run / "models" / task / f"{method}.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; pass the directory of a run that trained {method!r}")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(saved, dict) or "method" not in saved:
        raise ValueError(f"{path}: expected a finished method file with a 'method' state dict")
    return saved["method"]


def _validation_nll(run: Path, task: str, method: str) -> str:
    path = run / "methods" / task / f"{method}.json"
    if not path.exists():
        return "n/a"
    history = json.loads(path.read_text(encoding="utf-8")).get("history") or []
    return " / ".join(f"{epoch['val_nll']:.4f}" for epoch in history) or "n/a"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="run directories of finished `uqkit bench` runs")
    parser.add_argument("--task", default="fashion-mnist")
    parser.add_argument("--methods", default="flipout-bnn,gaussian-bnn", help="comma list")
    args = parser.parse_args(argv)

    header = " | ".join(f"q{round(100 * q):02d}" for q in QUANTILES)
    print(f"| run | method | posterior | entries | {header} |")
    print("|---|---|---|--:|" + "--:|" * len(QUANTILES))
    init = f"{BNN_POSTERIOR_SCALE_INIT:.4g}"
    print(f"| (before training) | every | every | | {' | '.join([init] * len(QUANTILES))} |")
    nll_lines = []
    for run in args.runs:
        for method in args.methods.split(","):
            for name, count, values in scale_quantiles(_load_state(run, args.task, method)):
                cells = " | ".join(f"{v:.4f}" for v in values)
                print(f"| {run.name} | {method} | {name} | {count:,} | {cells} |")
            nll_lines.append(
                f"{run.name} {method}: val NLL per epoch {_validation_nll(run, args.task, method)}"
            )
    print()
    print("\n".join(nll_lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
