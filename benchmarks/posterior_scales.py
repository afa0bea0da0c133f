"""The learned posterior scales of a finished `uqkit bench` run's Bayesian networks, per layer.

Loads ``<run>/models/<task>/<method>.pt`` (``torch.load(weights_only=True)``) for each method, turns every
``*_rho`` parameter into its posterior standard deviation ``sigma = softplus(rho)`` and prints, per parameter
tensor, the quantiles of ``sigma`` as a Markdown table, with a first row for the scale every parameter starts
from (``BNN_POSTERIOR_SCALE_INIT``: before training every ``rho`` holds the same value). Several runs can be
compared side by side, e.g. a 5-epoch run against a longer one::

    python benchmarks/posterior_scales.py runs/default runs/default-10-epochs
    python benchmarks/posterior_scales.py runs/default --methods flipout-bnn --task fashion-mnist

The trainer keeps only the last epoch's checkpoint. To see the scales move epoch by epoch, run the benchmark
through ``record``, which runs ``uqkit <args>`` unchanged except that every epoch checkpoint it writes also
appends the quantiles of each ``*_rho`` tensor and the epoch's history entry (train loss = -ELBO / N, with
the KL warm-up's weight in epoch 1; validation NLL and ECE) to ``<out>/sigma_epochs.jsonl``; the report then
prints them as a second table::

    python benchmarks/posterior_scales.py record bench --methods flipout-bnn --out runs/bnn
    python benchmarks/posterior_scales.py runs/bnn --methods flipout-bnn

Whether the scales still move at the end (a decaying schedule stops them either way): ``drift RUN METHOD``
prints Adam's expected normalised step on each layer's ``rho`` at the final state::

    python benchmarks/posterior_scales.py drift runs/bnn flipout-bnn

``validate RUN METHOD`` prints the validation NLL, ECE and accuracy of the saved model (after its post-hoc
step; the run's history holds those of the epochs before it). ``optimum RUN METHOD`` puts the trained
means' scales at the optimum of their objective (``uqkit.fit_posterior_scales_``) for a grid of KL weights
and prior scales and prints the validation numbers, the median scales and the drift of each::

    python benchmarks/posterior_scales.py validate runs/bnn flipout-bnn

``scalefit KL_WEIGHT PRIOR_SCALE MODE bench ...`` runs the benchmark (through ``record``) with another KL
weight and prior on Fashion-MNIST and the scales put at the optimum after training (``end``), at every epoch
start (``epoch``), ``both`` or ``none``::

    python benchmarks/posterior_scales.py scalefit 0.01 0.1 both bench --methods flipout-bnn --out runs/sf
    python benchmarks/posterior_scales.py optimum runs/bnn flipout-bnn --kl-weights 0.01,0.001
"""

from __future__ import annotations

import argparse
import json
import time
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


def _file_names(method: str) -> tuple[str, ...]:
    """The names ``method``'s files may have: its own, then its old names (a run made before it was renamed,
    e.g. ``gaussian-bnn`` for ``reparameterization-bnn``, names its files so)."""
    from uqkit.bench.upgrade import RENAMED_METHODS

    return (method, *(old for old, new in RENAMED_METHODS.items() if new == method))


def _method_file(run: Path, folder: str, task: str, method: str, suffix: str) -> Path:
    """``<run>/<folder>/<task>/<method><suffix>``, under the method's old name if only that exists."""
    paths = [run / folder / task / f"{name}{suffix}" for name in _file_names(method)]
    return next((path for path in paths if path.exists()), paths[0])


def _load_state(run: Path, task: str, method: str) -> tuple[dict[str, torch.Tensor], str]:
    """The finished method's state, or else its last epoch checkpoint's; and a label saying which."""
    path = _method_file(run, "models", task, method, ".pt")
    label = run.name
    if not path.exists():
        path = _method_file(run, "checkpoints", task, method, ".pt")
        if not path.exists():
            raise FileNotFoundError(
                f"{run}: neither models/ nor checkpoints/{task}/{method}.pt exists; pass the directory of a "
                f"run that trained {method!r}"
            )
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(saved, dict) or "method" not in saved:
        raise ValueError(f"{path}: expected a method file or checkpoint with a 'method' state dict")
    if "epoch" in saved and "optimizer" in saved:
        label = f"{run.name} (unfinished: epoch {saved['epoch']} checkpoint)"
    return saved["method"], label


def _validation_nll(run: Path, task: str, method: str) -> str:
    path = _method_file(run, "methods", task, method, ".json")
    if not path.exists():
        return "n/a"
    history = json.loads(path.read_text(encoding="utf-8")).get("history") or []
    return " / ".join(f"{epoch['val_nll']:.4f}" for epoch in history) or "n/a"


EPOCH_LOG = "sigma_epochs.jsonl"


def record(uqkit_args: list[str]) -> int:
    """Run ``uqkit <uqkit_args>`` (which must name ``--out``) logging each epoch checkpoint's scales."""
    from uqkit.bench import trainer
    from uqkit.cli import main as uqkit_main

    if "--out" not in uqkit_args:
        raise SystemExit("record: pass the run directory with --out, e.g. record bench --out runs/bnn")
    log = Path(uqkit_args[uqkit_args.index("--out") + 1]) / EPOCH_LOG
    save = trainer.atomic_torch_save

    def save_and_log(obj, path):
        if isinstance(obj, dict) and {"epoch", "history", "method"} <= obj.keys():  # an epoch checkpoint
            rows = {name: values for name, _, values in scale_quantiles(obj["method"])}
            entry = {"path": str(path), "epoch": obj["epoch"], "hist": obj["history"][-1], "sigma": rows}
            with open(log, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry) + "\n")
        return save(obj, path)

    trainer.atomic_torch_save = save_and_log
    return uqkit_main(uqkit_args)


def scalefit(kl_weight: float, prior_scale: float, mode: str, uqkit_args: list[str]) -> int:
    """Run ``uqkit <uqkit_args>`` (through :func:`record`) with Fashion-MNIST's BNNs at KL weight
    ``kl_weight`` and prior ``N(0, prior_scale^2)``, their scales put at the optimum of that objective
    (``uqkit.fit_posterior_scales_``) after training (``mode`` ``"end"``: the benchmark's post-hoc step), at
    the start of every epoch (``"epoch"``: one pass over the training split, then Adam trains on), both
    (``"both"``) or never (``"none"``). Measures whether training the means under scales at the optimum helps.
    """
    from uqkit.bench import methods_bayesian as mb
    from uqkit.bench import runner
    from uqkit.methods.optimal_scales import fit_posterior_scales_

    if mode not in ("end", "epoch", "both", "none"):
        raise SystemExit(f"scalefit: MODE must be end, epoch, both or none, got {mode!r}")
    mb.BNN_TASK_KL_WEIGHTS = {"fashion-mnist": kl_weight}
    mb.BNN_PRIOR_SCALE = prior_scale
    mb.BNN_TASK_OPTIMAL_SCALES = frozenset({"fashion-mnist"} if mode in ("end", "both") else ())
    training_inputs = {}
    train_method = runner.train_method

    def keep_inputs(method, name, inputs, *args, **kwargs):
        training_inputs["x"] = inputs
        return train_method(method, name, inputs, *args, **kwargs)

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        fit_posterior_scales_(self.network, training_inputs["x"], kl_weight=self.elbo.kl_weight, passes=1)

    runner.train_method = keep_inputs
    if mode in ("epoch", "both"):
        mb.VariationalNetwork.on_epoch_start = on_epoch_start
    return record(uqkit_args)


def _rebuild(run: Path, method: str, task_name: str = "fashion-mnist"):
    """The run's trained ``method`` (a ``VariationalNetwork``, train mode) and the task, rebuilt with today's
    ``methods_bayesian`` constants (prior, initial scale, KL weight), which must match the run's."""
    from uqkit.bench import methods_bayesian as mb
    from uqkit.bench.models import build_model
    from uqkit.bench.tasks import build_task
    from uqkit.methods.convert import FlipoutConfig, ReparameterizationConfig, bayesianize_
    from uqkit.nn.priors import NormalPrior

    state, label = _load_state(run, task_name, method)
    task = build_task(task_name)
    network = build_model(task.model, task.input_shape, task.num_classes)
    prior = NormalPrior(scale=mb.BNN_TASK_PRIOR_SCALES.get(task_name, mb.BNN_PRIOR_SCALE))
    if method == "flipout-bnn":
        config = FlipoutConfig(prior=prior, posterior_scale_init=mb.BNN_POSTERIOR_SCALE_INIT)
    else:
        config = ReparameterizationConfig(
            prior=prior, posterior_scale_init=mb.BNN_POSTERIOR_SCALE_INIT, local_reparameterization=True
        )
    bayesianize_(network, config)
    kl_weight = mb.BNN_TASK_KL_WEIGHTS.get(task_name, mb.BNN_KL_WEIGHT)
    model = mb.VariationalNetwork(network, len(task.train.labels), 128, mb.BNN_SAMPLES, kl_weight=kl_weight)
    model.load_state_dict(state)
    model.train()
    return model, task, label


def drift_of(model, task, batches: int = 60) -> list[tuple[str, float, float, float]]:
    """Adam's expected normalised step ``E[g] / rms(g)`` on each weight ``rho`` tensor of ``model`` (a
    ``VariationalNetwork``) at its current state: ``batches`` training minibatches of 128 (seeded), the
    model's own KL weight (its ``elbo``) and priors.

    Returns:
        ``(name, layer mean of E[g] / rms(g), share of E[g] > 0, median rho drift per epoch at the undecayed
        rho rate)`` per weight ``rho`` tensor.
    """
    from uqkit.bench import methods_bayesian as mb

    model.train()
    rhos = {n: p for n, p in model.named_parameters() if n.endswith("weight_rho")}
    first = {n: torch.zeros_like(p) for n, p in rhos.items()}
    second = {n: torch.zeros_like(p) for n, p in rhos.items()}
    generator = torch.Generator().manual_seed(123)
    torch.manual_seed(123)
    for _ in range(batches):
        index = torch.randint(0, len(task.train.labels), (128,), generator=generator)
        model.zero_grad()
        model.training_loss(task.train.inputs[index], task.train.labels[index]).backward()
        for n, p in rhos.items():
            first[n] += p.grad
            second[n] += p.grad.square()
    model.zero_grad()
    rho_lr = 1e-3 * mb.BNN_SCALE_LR_FACTOR  # the default base rate times the scales' factor
    steps = -(-len(task.train.labels) // 128)
    rows = []
    for n in rhos:
        ratio = first[n] / second[n].sqrt().clamp_min(1e-30) / batches**0.5  # E[g] / rms(g)
        positive = float((first[n] > 0).float().mean())
        rows.append((n, float(ratio.mean()), positive, float(-(steps * rho_lr * ratio).median())))
    return rows


def drift(run: Path, method: str, batches: int = 60, task_name: str = "fashion-mnist") -> int:
    """Print, per weight ``rho`` tensor, Adam's expected normalised step ``E[g] / rms(g)`` at the run's final
    state (or last checkpoint): ``batches`` training minibatches of 128 (seeded), the task's KL weight
    (``methods_bayesian.BNN_TASK_KL_WEIGHTS``; 1 is the ELBO).

    At a stationary point of the (weighted) ELBO ``E[g] = 0`` for every ``rho``; a layer mean far from 0 (the
    noise of one weight's estimate is about ``1 / sqrt(batches)``, of a layer's mean far less) means its
    scales were still moving when training stopped, whatever a decayed learning rate made them do.
    Rebuilds the MLP with today's ``methods_bayesian`` constants (prior, initial scale,
    KL weight), which must match the run's.
    """
    model, task, label = _rebuild(run, method, task_name)
    print(f"{label} {method}: KL weight {model.elbo.current_kl_weight:g}, {batches} minibatches of 128")
    _print_drift(drift_of(model, task, batches))
    return 0


def _print_drift(rows) -> None:
    from uqkit.bench import methods_bayesian as mb

    for name, mean, positive, median in rows:
        print(
            f"  {name}: layer mean E[g]/rms(g) {mean:+.4f}, share of E[g] > 0 {positive:.3f}, median rho "
            f"drift per epoch at the undecayed rho rate {1e-3 * mb.BNN_SCALE_LR_FACTOR:g}: {median:+.3f}"
        )


def _validation(model, task) -> dict[str, float]:
    """The trainer's validation numbers (NLL, ECE, accuracy) of ``model``, seeded."""
    from uqkit.bench.evaluate import predict_in_batches

    torch.manual_seed(0)
    prediction = predict_in_batches(model, task.val.inputs, 512, progress=False)
    model.train()
    return model.likelihood.validation_metrics(prediction, task.val.labels)


def optimum(
    run: Path,
    method: str,
    kl_weights: list[float],
    prior_scales: list[float],
    passes: int = 3,
    drift_batches: int = 60,
    task_name: str = "fashion-mnist",
    run_kl_weight: float | None = None,
) -> int:
    """Put the run's posterior scales at the optimum of ``N E_q[mean NLL] + tau KL`` given its means
    (``uqkit.fit_posterior_scales_`` with ``passes`` passes over the training split) for every ``tau`` in
    ``kl_weights`` and prior scale in ``prior_scales``, and print for each the validation NLL / ECE /
    accuracy, the median ``sigma`` per weight tensor and the drift of ``rho`` under that objective
    (``drift_of``: ~0 at the optimum), beside the trained state's; then the quantiles of ``sigma`` of the pair
    with the lowest validation NLL.

    The first pass starts from the trained scales, whatever ``tau`` and the prior, so it is made once and
    shared by the grid (``fit_posterior_scales_(..., ggn=...)``). The trained row's drift is under the
    run's own KL weight, ``run_kl_weight`` (default: today's ``methods_bayesian`` value for the task).
    """
    from uqkit.methods.optimal_scales import diagonal_ggn, fit_posterior_scales_
    from uqkit.nn import BayesianModule
    from uqkit.nn.priors import NormalPrior

    model, task, label = _rebuild(run, method, task_name)
    if run_kl_weight is not None:
        model.elbo.kl_weight = run_kl_weight
    layers = [m for m in model.network.modules() if isinstance(m, BayesianModule)]
    trained = {n: p.detach().clone() for n, p in model.state_dict().items() if n.endswith("_rho")}
    trained_tau, trained_prior = model.elbo.kl_weight, layers[0].prior
    num_data = len(task.train.labels)
    started = time.perf_counter()
    torch.manual_seed(0)
    first = diagonal_ggn(model.network, task.train.inputs, batch_size=512)
    seconds = time.perf_counter() - started
    print(f"{label} {method}: one Gauss-Newton pass over {num_data:,} training examples: {seconds:.1f} s")

    def medians() -> str:
        return " / ".join(f"{float(layer.posterior_scale('weight').median()):.4f}" for layer in layers)

    def drifts() -> str:
        return " / ".join(f"{mean:+.4f}" for _, mean, _, _ in drift_of(model, task, drift_batches))

    print()
    print(
        f"| tau | prior s | val NLL | val ECE | val acc | median weight sigma per layer | drift E[g]/rms(g) "
        f"per layer ({drift_batches} batches) |"
    )
    print("|--:|--:|--:|--:|--:|---|---|")
    base = _validation(model, task)
    print(
        f"| {trained_tau:g} (trained) | {trained_prior.scale:g} | {base['val_nll']:.4f} | "
        f"{100 * base['val_ece']:.2f}% | {100 * base['val_accuracy']:.2f}% | {medians()} | {drifts()} |"
    )
    results = {}
    for scale in prior_scales:
        for tau in kl_weights:
            model.load_state_dict({**model.state_dict(), **trained})
            for layer in layers:
                layer.prior = NormalPrior(scale=scale)
            model.elbo.kl_weight = tau
            torch.manual_seed(1)
            fit_posterior_scales_(
                model.network, task.train.inputs, ggn=first, num_data=num_data, kl_weight=tau, passes=passes
            )
            metrics = _validation(model, task)
            results[(tau, scale)] = (metrics["val_nll"], model.network.state_dict())
            print(
                f"| {tau:g} | {scale:g} | {metrics['val_nll']:.4f} | {100 * metrics['val_ece']:.2f}% | "
                f"{100 * metrics['val_accuracy']:.2f}% | {medians()} | {drifts()} |",
                flush=True,
            )
    (tau, scale), (nll, state) = min(results.items(), key=lambda item: item[1][0])
    print()
    print(f"lowest validation NLL {nll:.4f}: tau {tau:g}, prior scale {scale:g}; sigma quantiles:")
    header = " | ".join(f"q{round(100 * q):02d}" for q in QUANTILES)
    print(f"| posterior | entries | {header} |")
    print("|---|--:|" + "--:|" * len(QUANTILES))
    for name, count, values in scale_quantiles(state):
        print(f"| {name} | {count:,} | {' | '.join(f'{v:.4f}' for v in values)} |")
    return 0


def _epoch_rows(run: Path, method: str) -> list[str]:
    """Markdown rows of ``<run>/sigma_epochs.jsonl`` for ``method`` (none if the run was not recorded)."""
    path = run / EPOCH_LOG
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        if Path(entry["path"]).stem not in _file_names(method):
            continue
        hist = entry["hist"]
        cells = " | ".join(
            f"{values[1]:.4f} / {values[2]:.4f} / {values[3]:.4f}"
            for name, values in entry["sigma"].items()
            if name.endswith("weight")
        )
        rows.append(
            f"| {run.name} | {method} | {entry['epoch']} | {cells} | {hist['train_loss']:.3f} | "
            f"{hist['val_nll']:.4f} | {100 * hist.get('val_ece', float('nan')):.2f}% |"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    import sys

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["record"]:
        return record(argv[1:])
    if argv[:1] == ["optimum"]:
        parser = argparse.ArgumentParser(prog="posterior_scales.py optimum")
        parser.add_argument("run", type=Path)
        parser.add_argument("method")
        parser.add_argument("--kl-weights", default="0.01,0.001,0.0001", help="comma list of tau")
        parser.add_argument("--prior-scales", default="0.1", help="comma list of prior standard deviations")
        parser.add_argument("--passes", type=int, default=3)
        parser.add_argument("--drift-batches", type=int, default=60)
        parser.add_argument("--run-kl-weight", type=float, help="the run's KL weight, if not today's")
        args = parser.parse_args(argv[1:])
        return optimum(
            args.run,
            args.method,
            [float(v) for v in args.kl_weights.split(",")],
            [float(v) for v in args.prior_scales.split(",")],
            args.passes,
            args.drift_batches,
            run_kl_weight=args.run_kl_weight,
        )
    if argv[:1] == ["scalefit"]:
        if len(argv) < 5:
            raise SystemExit("usage: posterior_scales.py scalefit KL_WEIGHT PRIOR MODE bench ... --out RUN")
        return scalefit(float(argv[1]), float(argv[2]), argv[3], argv[4:])
    if argv[:1] == ["validate"]:
        if len(argv) != 3:
            raise SystemExit("usage: posterior_scales.py validate RUN METHOD")
        model, task, label = _rebuild(Path(argv[1]), argv[2])
        metrics = _validation(model, task)
        print(
            f"{label} {argv[2]}: val NLL {metrics['val_nll']:.4f}, ECE {100 * metrics['val_ece']:.2f}%, "
            f"accuracy {100 * metrics['val_accuracy']:.2f}% (the saved model, after any post-hoc step)"
        )
        return 0
    if argv[:1] == ["drift"]:
        if len(argv) not in (3, 4):
            raise SystemExit("usage: posterior_scales.py drift RUN METHOD [BATCHES]")
        return drift(Path(argv[1]), argv[2], int(argv[3]) if len(argv) == 4 else 60)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="run directories of finished `uqkit bench` runs")
    parser.add_argument("--task", default="fashion-mnist")
    parser.add_argument("--methods", default="flipout-bnn,reparameterization-bnn", help="comma list")
    args = parser.parse_args(argv)

    header = " | ".join(f"q{round(100 * q):02d}" for q in QUANTILES)
    print(f"| run | method | posterior | entries | {header} |")
    print("|---|---|---|--:|" + "--:|" * len(QUANTILES))
    init = f"{BNN_POSTERIOR_SCALE_INIT:.4g}"
    print(f"| (before training) | every | every | | {' | '.join([init] * len(QUANTILES))} |")
    nll_lines, missing, found = [], [], 0
    for run in args.runs:
        for method in args.methods.split(","):
            try:
                state, label = _load_state(run, args.task, method)
            except FileNotFoundError as error:
                missing.append(str(error))
                continue
            found += 1
            for name, count, values in scale_quantiles(state):
                cells = " | ".join(f"{v:.4f}" for v in values)
                print(f"| {label} | {method} | {name} | {count:,} | {cells} |")
            nll_lines.append(
                f"{run.name} {method}: val NLL per epoch {_validation_nll(run, args.task, method)}"
            )
    if not found:
        raise SystemExit("\n".join(missing))
    print()
    print("\n".join(nll_lines + [f"skipped: {line}" for line in missing]))
    epoch_rows = [row for run in args.runs for m in args.methods.split(",") for row in _epoch_rows(run, m)]
    if epoch_rows:
        layers = epoch_rows[0].count(" / ") // 2
        heads = " | ".join(f"weights {i + 1}: sigma q10 / q50 / q90" for i in range(layers))
        print()
        print(f"| run | method | epoch | {heads} | -ELBO / N | val NLL | val ECE |")
        print("|---|---|--:|" + "---|" * layers + "--:|--:|--:|")
        print("\n".join(epoch_rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
