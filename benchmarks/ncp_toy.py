"""Noise-contrastive priors on the 1-D gap toy: predictive std in the gap over predictive std on the data.

Trains, for each seed, on ``uqkit.data.gap_regression`` (160 points on ``[-4, -1] U [1, 4]``, noise 0.1):

* ``plain``: a Gaussian-head network (two hidden layers of 100 ReLU units, mean and softplus variance) on
  the Gaussian NLL;
* ``bll``: the same body with a Bayesian last layer for the mean (``uqkit.nn.BayesianRegressionHead``) on
  the ELBO (weight-space KL / N), no data prior: is a Bayesian last layer alone uncertain in the gap?
* ``ncp``: that Bayesian last layer with the noise-contrastive prior (``uqkit.NoiseContrastivePrior``,
  Hafner et al. 2018's BBB+NCP; ``sigma_x = 0.5``, ``sigma_y = 1``, ``gamma = 0.1``, their toy settings);
* ``ncp-gamma-0.01``: ``ncp`` with a ten times smaller weight of the prior term (the trade-off below);
* ``ncp-gaussian-head``: the plain network with the prior on its predictive (no Bayesian layer).

Each is trained full-batch with Adam, and scored by the ratio of its mean predictive standard deviation
over a grid of the gap ``(-1, 1)`` to that over a grid of the data's intervals (the target of issue 14:
``ncp``'s ratio at least 3), and by its mean predictive std on the data, to set against the true noise
std 0.1: pseudo-inputs also land on the data, where the prior's pull on the function variance is resisted
only by the data term, so the weight ``gamma`` trades the gap's std against over-dispersion on the data.
Writes ``ncp_toy.json`` (every seed's ratios, the settings, the command and
the environment) and ``ncp_toy.png`` (seed 0: predictive mean +- 2 std, the data, the true function).

Run::

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/ncp_toy.py --seeds 5 \\
        --out benchmarks/results/ncp_toy
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _env import benchmark_environment
from torch import nn

import uqkit
from uqkit.data import GAP_REGRESSION_GAP, GAP_REGRESSION_INTERVALS, gap_regression, gap_regression_function

HIDDEN = 100
INPUT_NOISE, PRIOR_STD, NCP_WEIGHT = 0.5, 1.0, 0.1
METHODS = ("plain", "bll", "ncp", "ncp-gamma-0.01", "ncp-gaussian-head")


class GaussianHead(nn.Module):
    """``h -> {"mean": h w + b, "variance": softplus(h a + c) + 1e-6}``."""

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, 2)

    def forward(self, hidden: torch.Tensor) -> dict[str, torch.Tensor]:
        mean, raw = self.linear(hidden).chunk(2, dim=-1)
        return {"mean": mean, "variance": F.softplus(raw) + 1e-6}


def build(method: str) -> nn.Sequential:
    body = [nn.Linear(1, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU()]
    bayesian = method in ("bll", "ncp", "ncp-gamma-0.01")
    head = uqkit.nn.BayesianRegressionHead(HIDDEN) if bayesian else GaussianHead(HIDDEN)
    return nn.Sequential(*body, head)


def train(method: str, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    model = build(method)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed + 1)
    if method == "bll":  # the ELBO of the Bayesian last layer: no data prior, the weight KL / N
        loss_fn = uqkit.NoiseContrastivePrior(INPUT_NOISE, PRIOR_STD, weight=0.0, num_data=len(x))
    elif method == "plain":
        loss_fn = uqkit.NoiseContrastivePrior(INPUT_NOISE, PRIOR_STD, weight=0.0)  # the Gaussian NLL
    else:
        weight = 0.01 if method == "ncp-gamma-0.01" else NCP_WEIGHT
        loss_fn = uqkit.NoiseContrastivePrior(INPUT_NOISE, PRIOR_STD, weight=weight)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model, x, y, generator=generator).backward()
        optimizer.step()
    return model


@torch.no_grad()
def predictive(model: nn.Sequential, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact predictive mean and standard deviation, ``[N]`` each."""
    head = model[-1]
    hidden = model[:-1](x)
    if isinstance(head, uqkit.nn.BayesianRegressionHead):
        prediction = head.predictive(hidden)
        return prediction.mean.squeeze(-1), prediction.variance.sqrt().squeeze(-1)
    out = head(hidden)
    return out["mean"].squeeze(-1), out["variance"].sqrt().squeeze(-1)


def grids(points: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform grids of the gap's interior and of the data's two intervals, ``[N, 1]``."""
    low, high = GAP_REGRESSION_GAP
    gap = torch.linspace(low, high, points + 2)[1:-1]
    data = torch.cat([torch.linspace(a, b, points // 2) for a, b in GAP_REGRESSION_INTERVALS])
    return gap.unsqueeze(1), data.unsqueeze(1)


def std_ratio(model: nn.Sequential) -> dict[str, float]:
    gap, data = grids()
    gap_std, data_std = predictive(model, gap)[1].mean(), predictive(model, data)[1].mean()
    return {"gap_std": float(gap_std), "data_std": float(data_std), "ratio": float(gap_std / data_std)}


def plot(models: dict[str, nn.Sequential], x: torch.Tensor, y: torch.Tensor, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = torch.linspace(-6, 6, 600).unsqueeze(1)
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.4), sharey=True)
    for ax, (name, model) in zip(axes, models.items(), strict=True):
        mean, std = predictive(model, grid)
        g = grid.squeeze(1)
        ax.axvspan(*GAP_REGRESSION_GAP, color="0.92", zorder=0)
        ax.fill_between(
            g, mean - 2 * std, mean + 2 * std, color="tab:blue", alpha=0.25, label="mean +- 2 std"
        )
        ax.plot(g, mean, color="tab:blue", lw=1.5, label="predictive mean")
        ax.plot(g, gap_regression_function(g), color="k", lw=1, ls="--", label="f(x)")
        ax.scatter(x.squeeze(1), y.squeeze(1), s=6, color="tab:red", zorder=3, label="data")
        ratio = std_ratio(model)["ratio"]
        ax.set_title(f"{name}: gap std / data std = {ratio:.1f}", fontsize=10)
        ax.set_xlabel("x")
        ax.set_ylim(-5, 5)
    axes[0].legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2000, help="full-batch Adam steps")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ncp_toy"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in METHODS}
    started = time.perf_counter()
    for seed in range(args.seeds):
        data = gap_regression(num_samples=160, noise=0.1, seed=seed)
        models = {name: train(name, data.inputs, data.labels, args.steps, args.lr, seed) for name in METHODS}
        for name, model in models.items():
            results[name].append(std_ratio(model))
        print(f"seed {seed}: " + ", ".join(f"{n} {results[n][-1]['ratio']:.2f}" for n in METHODS), flush=True)
        if seed == 0:
            plot(models, data.inputs, data.labels, args.out / "ncp_toy.png")
    summary = {}
    for name, rows in results.items():
        ratios = torch.tensor([row["ratio"] for row in rows], dtype=torch.float64)
        gap_std = sum(row["gap_std"] for row in rows) / len(rows)
        data_std = sum(row["data_std"] for row in rows) / len(rows)
        summary[name] = {
            "ratio_mean": float(ratios.mean()),
            "ratio_min": float(ratios.min()),
            "ratio_max": float(ratios.max()),
            "gap_std_mean": gap_std,
            "data_std_mean": data_std,
        }
        print(
            f"{name:>18}: gap std / data std = {ratios.mean():.2f} (min {ratios.min():.2f}, "
            f"max {ratios.max():.2f}) over {len(rows)} seeds; mean std in the gap {gap_std:.3f}, on the data "
            f"{data_std:.3f} (noise 0.1)"
        )
    record = {
        "command": " ".join(["python", *sys.argv]),
        "settings": {
            "data": "gap_regression(num_samples=160, noise=0.1, seed=seed)",
            "network": f"1 -> {HIDDEN} ReLU -> {HIDDEN} ReLU -> head",
            "input_noise": INPUT_NOISE,
            "prior_std": PRIOR_STD,
            "ncp_weight": {"ncp": NCP_WEIGHT, "ncp-gamma-0.01": 0.01, "ncp-gaussian-head": NCP_WEIGHT},
            "steps": args.steps,
            "lr": args.lr,
            "optimizer": "Adam, full batch",
            "ratio": "mean predictive std over 300 gap points / over 300 points of the data intervals",
        },
        "summary": summary,
        "per_seed": results,
        "time_s": time.perf_counter() - started,
        "environment": benchmark_environment(),
    }
    (args.out / "ncp_toy.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out / 'ncp_toy.json'} and {args.out / 'ncp_toy.png'} ({record['time_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
