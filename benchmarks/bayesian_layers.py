"""Speed and gradient variance of uqkit's Bayesian layers (project issue 5).

(a) Train step (forward, loss = mean cross-entropy + KL / N, backward, optimiser step) and inference (one
    forward pass in eval mode, no gradients) of an MLP 784-512-512-10, as ratios to the same model built from
    ``nn.Linear``, all measured in one process, interleaved, beside bayesian-torch's ``LinearFlipout`` and
    ``LinearReparameterization`` when that package is installed (it is never a uqkit dependency; see
    ``benchmarks/requirements.txt``). Also: ``uqkit.predict`` with ``S`` samples in one batched pass against
    ``S`` separate passes.
(b) Gradient variance of the loss with respect to the weight means at batch sizes 16, 64 and 256, reported
    as ``variance x batch`` (constant for the ideal 1/B reduction of independent per-example noise, Wen et al.
    2018, Fig. 1), for Flipout, a shared-sample Gaussian layer, a local-reparameterisation Gaussian layer and
    the deterministic network (minibatch noise only).

Writes ``benchmarks/results/bayesian_layers.json`` (command, environment, medians of repeated runs) and prints
Markdown tables. Run with ``.venv-bench/bin/python benchmarks/bayesian_layers.py`` to include bayesian-torch.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from _env import benchmark_environment
from torch import nn

from uqkit.methods import predict
from uqkit.nn import FlipoutLinear, ReparameterizationLinear
from uqkit.objectives import kl_divergence

SIZES = (784, 512, 512, 10)
NUM_DATA = 60_000  # the KL is divided by this, as for (Fashion-)MNIST


# -- models --------------------------------------------------------------------------------------------------
class BayesianTorchMLP(nn.Module):
    """The MLP from bayesian-torch layers, whose forward returns ``(out, kl)``: KL summed here."""

    def __init__(self, layer: type, sizes: tuple[int, ...], posterior_scale: float) -> None:
        super().__init__()
        rho = float(torch.log(torch.expm1(torch.tensor(posterior_scale))))
        self.layers = nn.ModuleList(layer(i, o, posterior_rho_init=rho) for i, o in itertools.pairwise(sizes))

    def forward(self, x: torch.Tensor, return_kl: bool = True):
        kl = 0.0
        for k, layer in enumerate(self.layers):
            x, layer_kl = layer(x, return_kl=True) if return_kl else (layer(x, return_kl=False), 0.0)
            kl = kl + layer_kl
            if k < len(self.layers) - 1:
                x = F.relu(x)
        return (x, kl) if return_kl else x


def mlp(make_layer: Callable[[int, int], nn.Module], sizes: tuple[int, ...] = SIZES) -> nn.Sequential:
    layers: list[nn.Module] = []
    for k, (i, o) in enumerate(itertools.pairwise(sizes)):
        layers.append(make_layer(i, o))
        if k < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def bayesian_torch_layers() -> dict[str, type] | None:
    try:
        from bayesian_torch.layers import LinearFlipout, LinearReparameterization
    except ImportError:
        return None
    return {"LinearFlipout": LinearFlipout, "LinearReparameterization": LinearReparameterization}


def speed_models(posterior_scale: float) -> dict[str, tuple[nn.Module, str]]:
    """name -> (model, kind) where kind says how the loss is formed."""
    models: dict[str, tuple[nn.Module, str]] = {
        "nn.Linear": (mlp(nn.Linear), "plain"),
        "uqkit FlipoutLinear": (
            mlp(lambda i, o: FlipoutLinear(i, o, posterior_scale_init=posterior_scale)),
            "uqkit",
        ),
        "uqkit ReparameterizationLinear": (
            mlp(lambda i, o: ReparameterizationLinear(i, o, posterior_scale_init=posterior_scale)),
            "uqkit",
        ),
        "uqkit ReparameterizationLinear (local reparam.)": (
            mlp(
                lambda i, o: ReparameterizationLinear(
                    i, o, posterior_scale_init=posterior_scale, local_reparameterization=True
                )
            ),
            "uqkit",
        ),
    }
    for name, layer in (bayesian_torch_layers() or {}).items():
        models[f"bayesian-torch {name}"] = (BayesianTorchMLP(layer, SIZES, posterior_scale), "tuple")
    return models


# -- (a) speed -----------------------------------------------------------------------------------------------
def make_train_step(model: nn.Module, kind: str, x: torch.Tensor, y: torch.Tensor, optimizer: str):
    opt = (
        torch.optim.Adam(model.parameters(), lr=1e-3)
        if optimizer == "adam"
        else torch.optim.SGD(model.parameters(), lr=1e-3)
    )

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        if kind == "tuple":
            logits, kl = model(x)
            loss = F.cross_entropy(logits, y) + kl / NUM_DATA
        else:
            loss = F.cross_entropy(model(x), y)
            if kind == "uqkit":
                loss = loss + kl_divergence(model) / NUM_DATA
        loss.backward()
        opt.step()

    return step


def make_inference(model: nn.Module, kind: str, x: torch.Tensor):
    def infer() -> None:
        with torch.no_grad():
            model(x, return_kl=False) if kind == "tuple" else model(x)

    return infer


def time_interleaved(fns: dict[str, Callable[[], None]], repeats: int, steps: int, warmup: int):
    """Median seconds per call of each function; rounds of ``steps`` calls, models interleaved per round."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            for _ in range(steps):
                start = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def run_speed(args: argparse.Namespace) -> list[dict]:
    rows = []
    for batch in args.batch_sizes:
        torch.manual_seed(args.seed)
        x, y = torch.randn(batch, SIZES[0]), torch.randint(0, SIZES[-1], (batch,))
        models = speed_models(args.posterior_scale)
        for model, _ in models.values():
            model.train()
        train = time_interleaved(
            {n: make_train_step(m, k, x, y, args.optimizer) for n, (m, k) in models.items()},
            args.repeats,
            args.steps,
            args.warmup,
        )
        for model, _ in models.values():
            model.eval()
        infer = time_interleaved(
            {n: make_inference(m, k, x) for n, (m, k) in models.items()},
            args.repeats,
            args.steps,
            args.warmup,
        )
        base_train, base_infer = train["nn.Linear"], infer["nn.Linear"]
        bt_train = train.get("bayesian-torch LinearFlipout")
        for name, (model, _) in models.items():
            rows.append(
                {
                    "model": name,
                    "batch": batch,
                    "parameters": sum(p.numel() for p in model.parameters()),
                    "train_step_ms": 1e3 * train[name],
                    "train_step_ratio": train[name] / base_train,
                    "train_vs_bayesian_torch_flipout": train[name] / bt_train if bt_train else None,
                    "inference_ms": 1e3 * infer[name],
                    "inference_ratio": infer[name] / base_infer,
                }
            )
    return rows


def run_predict(args: argparse.Namespace) -> dict:
    """``uqkit.predict`` with all S samples in one pass over the repeated batch vs S separate passes."""
    torch.manual_seed(args.seed)
    model = mlp(lambda i, o: FlipoutLinear(i, o, posterior_scale_init=args.posterior_scale)).eval()
    x = torch.randn(args.predict_batch, SIZES[0])
    s = args.predict_samples
    times = time_interleaved(
        {
            "batched": lambda: predict(model, x, num_samples=s),
            "separate": lambda: predict(model, x, num_samples=s, samples_per_pass=1),
        },
        args.repeats,
        max(1, args.steps // 4),
        args.warmup,
    )
    return {
        "model": "uqkit FlipoutLinear MLP",
        "batch": args.predict_batch,
        "num_samples": s,
        "batched_ms": 1e3 * times["batched"],
        "separate_ms": 1e3 * times["separate"],
        "speedup": times["separate"] / times["batched"],
    }


# -- (b) gradient variance -----------------------------------------------------------------------------------
def variance_models(scale: float, reference: nn.Sequential) -> dict[str, nn.Module]:
    """Models sharing the reference network's weights as their weight means."""
    makers = {
        "nn.Linear (minibatch noise only)": nn.Linear,
        "uqkit FlipoutLinear": lambda i, o: FlipoutLinear(i, o, posterior_scale_init=scale),
        "uqkit ReparameterizationLinear (shared sample)": lambda i, o: ReparameterizationLinear(
            i, o, posterior_scale_init=scale
        ),
        "uqkit ReparameterizationLinear (local reparam.)": lambda i, o: ReparameterizationLinear(
            i, o, posterior_scale_init=scale, local_reparameterization=True
        ),
    }
    models = {}
    for name, make in makers.items():
        model = mlp(make)
        with torch.no_grad():
            for layer, ref in zip(model, reference, strict=True):
                if isinstance(ref, nn.Linear):
                    (layer.weight if isinstance(layer, nn.Linear) else layer.weight_mean).copy_(ref.weight)
                    (layer.bias if isinstance(layer, nn.Linear) else layer.bias_mean).copy_(ref.bias)
        models[name] = model
    return models


def weight_means(model: nn.Module) -> list[torch.Tensor]:
    return [p for n, p in model.named_parameters() if n.endswith("weight") or n.endswith("weight_mean")]


def gradient_variance(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int, draws: int) -> float:
    """Mean over the weight means of the variance (over minibatches and noise) of d loss / d mean."""
    params = weight_means(model)
    total = torch.zeros(sum(p.numel() for p in params), dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    for _ in range(draws):
        index = torch.randint(0, x.shape[0], (batch,))
        loss = F.cross_entropy(model(x[index]), y[index])
        grads = torch.autograd.grad(loss, params)
        flat = torch.cat([g.reshape(-1) for g in grads]).double()
        total += flat
        total_sq += flat * flat
    mean = total / draws
    variance = (total_sq - draws * mean * mean) / (draws - 1)
    return float(variance.mean())


def run_variance(args: argparse.Namespace) -> list[dict]:
    torch.manual_seed(args.seed)
    pool = 20_000
    x = torch.randn(pool, SIZES[0])
    teacher = torch.randn(SIZES[0], SIZES[-1])
    y = (x @ teacher).argmax(dim=1)  # labels from a random linear teacher
    reference = mlp(nn.Linear)
    rows = []
    for name, model in variance_models(args.posterior_scale, reference).items():
        model.train()
        for batch in args.grad_batch_sizes:
            variance = gradient_variance(model, x, y, batch, args.grad_draws)
            rows.append(
                {"model": name, "batch": batch, "variance": variance, "variance_x_batch": variance * batch}
            )
    for name in {r["model"] for r in rows}:
        mine = [r for r in rows if r["model"] == name]
        first = mine[0]["variance_x_batch"]
        for r in mine:
            r["relative_to_smallest_batch"] = r["variance_x_batch"] / first
    return rows


# -- output --------------------------------------------------------------------------------------------------
def environment(args: argparse.Namespace) -> dict:
    try:
        from importlib.metadata import PackageNotFoundError, version

        bt_version = version("bayesian-torch") if bayesian_torch_layers() else None
    except PackageNotFoundError:
        bt_version = None
    return benchmark_environment(bayesian_torch=bt_version)


def markdown(results: dict) -> str:
    out = []
    if results.get("speed"):
        out += [
            "| model | batch | train step (ms) | x nn.Linear | x bayesian-torch Flipout | inference (ms) "
            "| x nn.Linear | parameters |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in results["speed"]:
            vs_bt = (
                f"{r['train_vs_bayesian_torch_flipout']:.2f}" if r["train_vs_bayesian_torch_flipout"] else "-"
            )
            out.append(
                f"| {r['model']} | {r['batch']} | {r['train_step_ms']:.2f} | {r['train_step_ratio']:.2f} | "
                f"{vs_bt} | {r['inference_ms']:.2f} | {r['inference_ratio']:.2f} | {r['parameters']:,} |"
            )
        if results["environment"]["bayesian_torch"] is None:
            out.append("\nbayesian-torch is not installed here: its rows are skipped (see requirements.txt).")
    if results.get("predict"):
        p = results["predict"]
        out += [
            "",
            f"`uqkit.predict`, {p['model']}, batch {p['batch']}, S = {p['num_samples']}: one batched pass "
            f"{p['batched_ms']:.1f} ms, {p['num_samples']} separate passes {p['separate_ms']:.1f} ms "
            f"(batched is {p['speedup']:.2f}x faster).",
        ]
    if results.get("variance"):
        out += [
            "",
            "| model | batch | grad. variance | variance x batch | relative to batch "
            f"{results['variance'][0]['batch']} |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in results["variance"]:
            out.append(
                f"| {r['model']} | {r['batch']} | {r['variance']:.3e} | {r['variance_x_batch']:.3e} | "
                f"{r['relative_to_smallest_batch']:.2f} |"
            )
    return "\n".join(out)


def _interpreter() -> str:
    """The Python that ran the benchmark, relative to the working directory when inside it."""
    path = os.path.relpath(sys.executable)
    return path if not path.startswith("..") else sys.executable


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds per measurement")
    parser.add_argument("--steps", type=int, default=20, help="timed calls per model per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    parser.add_argument("--posterior-scale", type=float, default=0.05, help="posterior std of every layer")
    parser.add_argument("--predict-batch", type=int, default=256)
    parser.add_argument("--predict-samples", type=int, default=10)
    parser.add_argument("--grad-batch-sizes", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--grad-draws", type=int, default=100, help="minibatches per variance estimate")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-variance", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "bayesian_layers.json"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict = {
        "command": shlex.join([_interpreter(), *sys.argv]),
        "arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "environment": environment(args),
        "notes": (
            "Times are medians over repeats x steps calls, models interleaved in one process. Train step = "
            "zero_grad + forward + mean cross-entropy + KL / 60000 (bayesian-torch: the KL its layers "
            "return) "
            "+ backward + optimiser step. Gradient variance: mean over the weight means of the variance of "
            "d(mean cross-entropy)/d(mean) across minibatches drawn from 20,000 synthetic examples and fresh "
            "weight noise; the KL's gradient is deterministic (closed form) and left out."
        ),
    }
    if not args.skip_speed:
        results["speed"] = run_speed(args)
        results["predict"] = run_predict(args)
    if not args.skip_variance:
        results["variance"] = run_variance(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    print(f"\nwrote {args.out}")
    return results


if __name__ == "__main__":
    main()
