"""Last-layer Laplace: uqkit against laplace-torch 0.3, side by side in one process (project issue 13).

The network and data of the issue's anchor table: an MLP 784-512-512-10 (:func:`uqkit.bench.models.mlp`)
trained for 5 epochs with plain Adam (lr 1e-3, batch 128, constant rate, seed 0) on the 54,000 training
images of the benchmark's Fashion-MNIST task (standardised; 6,000 held out), then, for the Hessian structures
``full`` and ``kron`` of the last layer (5,130 weights) and each library:

* fit: the GGN over the 54,000 training images (batches of 512);
* marglik: the prior precision maximising the Laplace evidence (uqkit: bisection on MacKay's fixed point;
  laplace-torch: ``optimize_prior_precision(method="marglik")``, its default 100 Adam steps);
* predict: the GLM predictive with the probit approximation on the 10,000 test images (batches of 1,000);
* peak memory added: the peak resident set size during fit + marglik + predict above the level before it,
  sampled every 5 ms from ``/proc/self/statm`` (large tensors are returned to the system when freed, so each
  configuration is measured on its own);
* test NLL, ECE (15 equal-width bins) and the far-OOD AUROC against the benchmark's digits, scored by the
  entropy of the predictive.

Timings are medians over ``--repeats`` runs for the cheap configurations (everything but the full
structure); the full one runs once per library (laplace-torch's took minutes in the issue's measurement).
Run with ``OMP_NUM_THREADS=1`` so that both libraries get the same single thread.

Writes ``benchmarks/results/laplace.json`` (command, arguments, environment, results) and prints a Markdown
table. Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/laplace.py`` (needs the dev extra's oracles,
requirements-oracles.txt).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from _env import benchmark_environment
from torch.utils.data import DataLoader, TensorDataset

import uqkit
from uqkit import metrics
from uqkit.bench.models import mlp
from uqkit.bench.tasks import build_task

PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * PAGE


class PeakMemory:
    """Peak resident set size above the level at entry, sampled every 5 ms in a thread."""

    def __enter__(self) -> PeakMemory:
        self.start = self.peak = _rss()
        self._running = True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while self._running:
            self.peak = max(self.peak, _rss())
            time.sleep(0.005)

    def __exit__(self, *exc) -> None:
        self._running = False
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def added(self) -> int:
        return self.peak - self.start


def train_network(task, epochs: int, seed: int) -> torch.nn.Module:
    """The anchor's MLP, 5 epochs of plain Adam (lr 1e-3, batch 128, constant rate)."""
    torch.manual_seed(seed)
    model = mlp(task.input_shape, task.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    x, y = task.train.inputs, task.train.labels
    for _ in range(epochs):
        for index in torch.randperm(len(y), generator=generator).split(128):
            optimizer.zero_grad()
            F.cross_entropy(model(x[index]), y[index]).backward()
            optimizer.step()
    return model.eval()


def _in_batches(predict: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([predict(part) for part in inputs.split(1000)])


def _entropy(probs: torch.Tensor) -> torch.Tensor:
    return -(probs * probs.clamp_min(1e-30).log()).sum(-1)


def run_uqkit(model, hessian: str, train, test_inputs):
    la = uqkit.LastLayerLaplace(model, "classification", hessian, prior_precision=1.0)
    started = time.perf_counter()
    la.fit(*train, batch_size=512)
    fit = time.perf_counter() - started
    started = time.perf_counter()
    la.optimize_prior_precision("marglik")
    marglik = time.perf_counter() - started
    started = time.perf_counter()
    probs = _in_batches(lambda x: la.predict(x).probs, test_inputs)
    predict = time.perf_counter() - started
    return la, float(la.prior_precision), fit, marglik, predict, probs


def _laplace_torch_factory():
    """laplace-torch's ``Laplace`` (this script is ``laplace.py`` too: its folder leaves ``sys.path``)."""
    here = Path(__file__).resolve().parent
    sys.path[:] = [entry for entry in sys.path if Path(entry or os.getcwd()).resolve() != here]
    if getattr(sys.modules.get("laplace"), "__file__", None) == str(Path(__file__).resolve()):
        del sys.modules["laplace"]
    from laplace import Laplace

    return Laplace


def run_laplace_torch(model, hessian: str, train, test_inputs):
    Laplace = _laplace_torch_factory()
    loader = DataLoader(TensorDataset(*train), batch_size=512)
    la = Laplace(model, "classification", subset_of_weights="last_layer", hessian_structure=hessian)
    started = time.perf_counter()
    la.fit(loader)
    fit = time.perf_counter() - started
    started = time.perf_counter()
    la.optimize_prior_precision(method="marglik")
    marglik = time.perf_counter() - started

    def predict_batch(x):
        return la(x, pred_type="glm", link_approx="probit")

    started = time.perf_counter()
    probs = _in_batches(predict_batch, test_inputs)
    predict = time.perf_counter() - started
    return predict_batch, float(la.prior_precision), fit, marglik, predict, probs


def measure(library: str, model, hessian: str, task, repeats: int) -> dict:
    runner = run_uqkit if library == "uqkit" else run_laplace_torch
    train = (task.train.inputs, task.train.labels)
    fits, margliks, predicts, peaks = [], [], [], []
    for _ in range(repeats):
        with PeakMemory() as memory:
            handle, delta, fit, marglik, predict, probs = runner(model, hessian, train, task.test.inputs)
        fits.append(fit), margliks.append(marglik), predicts.append(predict), peaks.append(memory.added)
        print(
            f"  {library} {hessian}: fit {fit:.2f} s, marglik {marglik:.2f} s, predict {predict:.2f} s",
            flush=True,
        )
    if library == "uqkit":
        ood = _in_batches(lambda x: handle.predict(x).probs, task.ood_sets["digits"].inputs)
    else:
        ood = _in_batches(handle, task.ood_sets["digits"].inputs)
    labels = task.test.labels
    return {
        "library": library,
        "hessian": hessian,
        "repeats": repeats,
        "fit_s": statistics.median(fits),
        "marglik_s": statistics.median(margliks),
        "predict_s": statistics.median(predicts),
        "peak_memory_added_mib": statistics.median(peaks) / 2**20,
        "prior_precision": delta,
        "test_nll": metrics.nll(probs, labels),
        "ece": metrics.expected_calibration_error(probs, labels, num_bins=15),
        "digits_auroc": metrics.ood_auroc(_entropy(probs), _entropy(ood)),
        "all_fit_s": fits,
        "all_marglik_s": margliks,
        "all_predict_s": predicts,
    }


def markdown(rows: list[dict], deterministic: dict) -> str:
    lines = [
        "| | fit on 54,000 | + marglik prior | predict 10,000 | peak memory added | prior precision "
        "| test NLL | ECE | digits AUROC |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
        f"| deterministic | — | — | — | — | — | {deterministic['test_nll']:.4f} | "
        f"{100 * deterministic['ece']:.2f}% | {deterministic['digits_auroc']:.3f} |",
    ]
    for row in rows:
        lines.append(
            f"| {row['library']}, {row['hessian']} | {row['fit_s']:.2f} s | {row['marglik_s']:.3f} s | "
            f"{row['predict_s']:.2f} s | {row['peak_memory_added_mib']:.0f} MiB | "
            f"{row['prior_precision']:.4g} | "
            f"{row['test_nll']:.4f} | {100 * row['ece']:.2f}% | {row['digits_auroc']:.3f} |"
        )
    ratios = []
    for hessian in ("full", "kron"):
        ours = next((r for r in rows if r["library"] == "uqkit" and r["hessian"] == hessian), None)
        theirs = next((r for r in rows if r["library"] == "laplace-torch" and r["hessian"] == hessian), None)
        if ours and theirs:
            ratios.append(
                f"{hessian}: fit {ours['fit_s'] / theirs['fit_s']:.3f}x, fit + marglik "
                f"{(ours['fit_s'] + ours['marglik_s']) / (theirs['fit_s'] + theirs['marglik_s']):.3f}x, "
                "predict "
                f"{ours['predict_s'] / theirs['predict_s']:.3f}x, memory "
                f"{ours['peak_memory_added_mib'] / max(theirs['peak_memory_added_mib'], 1e-9):.2f}x, "
                f"NLL difference {ours['test_nll'] - theirs['test_nll']:+.4f}"
            )
    return "\n".join(lines) + "\n\nuqkit / laplace-torch: " + "; ".join(ratios)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the kron configurations")
    parser.add_argument("--hessians", nargs="+", default=["kron", "full"], choices=["kron", "full"])
    parser.add_argument("--libraries", nargs="+", default=["uqkit", "laplace-torch"])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "laplace.json")
    args = parser.parse_args(argv)
    task = build_task("fashion-mnist", "mlp", quick=False, seed=args.seed)
    started = time.perf_counter()
    model = train_network(task, args.epochs, args.seed)
    print(f"trained in {time.perf_counter() - started:.1f} s", flush=True)
    with torch.no_grad():
        probs = model(task.test.inputs).softmax(-1)
        ood = model(task.ood_sets["digits"].inputs).softmax(-1)
    labels = task.test.labels
    deterministic = {
        "test_nll": metrics.nll(probs, labels),
        "ece": metrics.expected_calibration_error(probs, labels, num_bins=15),
        "digits_auroc": metrics.ood_auroc(_entropy(probs), _entropy(ood)),
    }
    rows = []
    for hessian in args.hessians:
        for library in args.libraries:
            repeats = args.repeats if hessian == "kron" else 1
            rows.append(measure(library, model, hessian, task, repeats))
    table = markdown(rows, deterministic)
    results = {
        "command": shlex.join([os.path.relpath(sys.executable), *(sys.argv if argv is None else argv)]),
        "arguments": {
            key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()
        },
        "environment": benchmark_environment(
            omp_num_threads=os.environ.get("OMP_NUM_THREADS"), laplace_torch=_laplace_torch_version()
        ),
        "deterministic": deterministic,
        "results": rows,
        "markdown": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(table)
    return results


def _laplace_torch_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("laplace-torch")
    except Exception:  # not installed: only uqkit was measured
        return None


if __name__ == "__main__":
    main()
