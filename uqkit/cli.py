"""The ``uqkit`` command: ``uqkit bench``, ``uqkit list``, ``uqkit report RUN_DIR``.

``torchrun --nproc-per-node N -m uqkit bench ...`` trains every method data-parallel over ``N`` processes
(:mod:`uqkit.bench.distributed`); rank 0 alone prints, logs and writes the run directory.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["main"]


def _comma_list(text: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of names, got {text!r}")
    return items


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _seed_list(text: str) -> list[int]:
    """``--seeds``: a comma-separated list of distinct non-negative integers."""
    seeds = []
    for item in (part.strip() for part in text.split(",")):
        if not item.isdecimal():
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list of non-negative integers (e.g. 0,1,2), got {text!r}"
            )
        seeds.append(int(item))
    repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    if repeated:
        raise argparse.ArgumentTypeError(
            f"expected distinct seeds, got {', '.join(map(str, repeated))} more than once in {text!r}"
        )
    return seeds


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return value


_YOUR_DATA_HELP = """\
your model, your data:
  uqkit bench --data PATH [--model MODULE:FACTORY | --model path/to/file.py:FACTORY] [--target COLUMN]

  --model FACTORY  a callable with no arguments returning a fresh torch.nn.Module, called once for
                   every copy a method needs (each ensemble member, each method). Its model maps a
                   batch [B, *input shape] to one tensor [B, K]:
                     classification: one logit per class (K = number of classes);
                     regression: two values per target (K = 2 D for D targets): first the D means,
                     then D unconstrained scales v, variance = softplus(v) + 1e-6 (as uqkit's own
                     Gaussian heads, e.g. uqkit.nn.StackedGaussianMLP).
                   Without --model: the built-in mlp backbone (or name one: mlp, resmlp, lenet5, cnn1d).
  --data PATH      one of:
                     file.npz: x_train, y_train, x_test, y_test; optional x_val, y_val, and x_ood
                       (an OOD set); labels are class indices 0..C-1 (C = largest y_train + 1);
                     file.csv with --target COLUMN (header row; every other column a numeric feature);
                       20% of the rows, drawn with --seed, are the test set; --ood FILE: a CSV of OOD
                       inputs with the same feature columns; the target's sorted values are the classes;
                     a folder of images (read with Pillow), one sub-folder per class (sorted names give
                       labels 0, 1, ...): PATH/<class>/* (20% drawn with --seed are the test set), or
                       PATH/train/<class>/* and PATH/test/<class>/* (optional PATH/val/<class>/*);
                       images become [C, H, W] floats in [0, 1] (1 channel if all grey-scale, else RGB),
                       all of one size; --ood FOLDER: OOD images.
  kind             inferred from the targets: text or integer labels -> classification, real values ->
                   regression; --kind overrides.
  validation       x_val/y_val or PATH/val when given, else 10% of the training rows drawn with --seed.
  inputs           tables ([N, D]) standardised per feature with training statistics; others as given.
                   Regression targets are standardised for training; metrics are in their own units.
  methods          every method that can be built on the model runs; the others are listed with the
                   reason in the leaderboard, results.json and the report. Data and model are checked
                   before any training; errors name the file and the problem.
  defaults         20 epochs, batch 64, Adam lr 1e-3 (constant); --epochs, --batch-size, --lr override.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="uqkit", description="Uncertainty for PyTorch models: benchmark methods side by side."
    )
    sub = parser.add_subparsers(dest="command", metavar="{bench,list,report}")
    sub.required = True

    bench = sub.add_parser(
        "bench",
        help="train and evaluate methods on a task (or your data and model), write results and report",
        description="Train and evaluate methods on a built-in task, or on your own data and model (--data).",
        epilog=_YOUR_DATA_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_argument("--task", type=_comma_list, default=None, help="task name(s), comma separated")
    bench.add_argument("--methods", type=_comma_list, default=None, help="comma list (default: all)")
    bench.add_argument(
        "--model",
        default=None,
        help="backbone (e.g. mlp, lenet5; default per task), or with --data your model factory: "
        "MODULE:FACTORY or path/to/file.py:FACTORY (see below)",
    )
    bench.add_argument("--epochs", type=_positive_int, default=None, help="epochs (default per task)")
    bench.add_argument("--batch-size", type=_positive_int, default=None, help="training batch size")
    bench.add_argument("--lr", type=_positive_float, default=None, help="Adam learning rate")
    bench.add_argument(
        "--seed", type=int, default=None, help="random seed (default 0); with --num-seeds the first seed"
    )
    seeds = bench.add_mutually_exclusive_group()
    seeds.add_argument(
        "--seeds",
        type=_seed_list,
        default=None,
        help="run every (task, method) cell once per seed, e.g. 0,1,2; the leaderboard shows mean ± "
        "standard error over seeds (classification and your classification data)",
    )
    seeds.add_argument(
        "--num-seeds",
        type=_positive_int,
        default=None,
        help="N seeds: --seed S (default 0) to S+N-1; as --seeds",
    )
    bench.add_argument("--out", type=Path, default=None, help="run directory (default runs/<timestamp>)")
    bench.add_argument("--resume", action="store_true", help="continue the run in --out (or the latest)")
    bench.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    bench.add_argument("--quick", action="store_true", help="seconds-long smoke configuration")
    bench.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress output (bars on a terminal, one line per epoch elsewhere)",
    )
    bench.add_argument(
        "--data-dir", type=Path, default=None, help="UCI-format directory for --task uci (regression)"
    )
    bench.add_argument(
        "--data", type=Path, default=None, help="your data: an .npz, a .csv or a folder of images"
    )
    bench.add_argument("--target", default=None, help="with a CSV --data: the target column")
    bench.add_argument(
        "--ood", type=Path, default=None, help="with --data: a CSV or image folder of OOD inputs"
    )
    bench.add_argument(
        "--kind",
        choices=("classification", "regression"),
        default=None,
        help="with --data: override the kind",
    )
    scale = bench.add_argument_group(
        "where the cells run",
        "A run is a set of independent cells: (task, method, seed) for classification and your data,\n"
        "(table, method, chunk of splits) for UCI regression. Each cell writes its result to the run\n"
        "directory when it finishes, so --resume skips finished cells; the numbers do not depend on the\n"
        "executor. Ray is an optional extra: pip install 'uqkit[ray]'.",
    )
    scale.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="local: one cell after the other in this process (default); ray: cells as Ray tasks, a task "
        "whose worker dies is retried",
    )
    scale.add_argument(
        "--workers",
        type=_positive_int,
        metavar="N",
        default=None,
        help="with --executor ray: cells at once on a local Ray instance (default: the CPUs / "
        "--threads-per-worker)",
    )
    scale.add_argument(
        "--address",
        default=None,
        metavar="ADDRESS",
        help="with --executor ray: an existing Ray cluster ('auto', 'ray://HEAD:10001'); the run directory "
        "and the data must be at the same path on every node",
    )
    scale.add_argument(
        "--threads-per-worker",
        type=_positive_int,
        metavar="K",
        default=None,
        help="with --executor ray: torch threads (and CPUs reserved) per cell (default 1)",
    )
    scale.add_argument(
        "--split-chunks",
        type=_positive_int,
        metavar="K",
        default=None,
        help="UCI regression: train each method's 20 splits as this many stacks, one cell each (default 1: "
        "one stack); more chunks spread one method over workers, with other random draws per split",
    )

    sub.add_parser("list", help="show tasks and methods")

    report = sub.add_parser("report", help="rebuild report.md/report.html from a run's results.json")
    report.add_argument("run_dir", type=Path)
    return parser


def _cmd_list() -> int:
    from uqkit.bench.registry import METHODS, methods_for_task
    from uqkit.bench.tasks import TASKS

    print("tasks:")
    for name, info in TASKS.items():
        print(f"  {name:<24} {info.description}")
        print(f"  {'':<24} models: {', '.join(info.models)}; default epochs {info.epochs}")
    print("methods:")
    for name, entry in METHODS.items():
        opt_in = "" if entry.default else " [opt-in: name it in --methods]"
        print(f"  {name:<24} {entry.description}{opt_in}")
    print("methods per task:")
    for name in TASKS:
        print(f"  {name:<24} {', '.join(methods_for_task(name, opt_in=True))}")
    from uqkit.bench.regression import REGRESSION_METHODS, REGRESSION_TASKS, is_opt_in_regression_method

    print("regression tasks (20 standard splits each):")
    for name, info in REGRESSION_TASKS.items():
        print(f"  {name:<24} {info.description}")
    print("regression methods (every regression task):")
    for name, method in REGRESSION_METHODS.items():
        opt_in = " [opt-in: name it in --methods]" if is_opt_in_regression_method(name) else ""
        print(f"  {name:<24} {method.description}{opt_in}")
    return 0


def _finish_report(results: dict, run_dir: Path, log: Callable[[str], None] = print) -> Path:
    from uqkit.bench.report import format_leaderboard, write_report

    paths = write_report(results, run_dir)
    log(format_leaderboard(results))
    return Path(paths["html"])


def _run_dir(args: argparse.Namespace) -> Path:
    """``--out``, else the latest run under ``runs/`` for ``--resume``, else a new run directory."""
    from uqkit.bench.runner import default_run_dir, latest_run_dir

    if args.out is not None:
        return args.out
    if not args.resume:
        return default_run_dir()
    out = latest_run_dir()
    if out is None:
        raise ValueError("--resume: no earlier run found under runs/; pass --out RUN_DIR")
    return out


class _QuietLog:
    """The log of a rank other than 0 under torchrun: rank 0 prints and logs for the run."""

    def __call__(self, message: str) -> None:
        pass

    def write(self, message: str) -> None:
        pass


class _RunLog:
    """Prints a message and appends it to the run directory's ``log.txt`` (created with the directory)."""

    def __init__(self, out: Path) -> None:
        self.path = Path(out) / "log.txt"

    def __call__(self, message: str) -> None:
        print(message)
        self.write(message)

    def write(self, message: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(message + "\n")


def _interruptible(out: Path, run: Callable[[], dict], log: Callable[[str], None] = print) -> dict | None:
    """``run()`` in the run directory ``out``; on Ctrl-C say how to resume and return ``None``."""
    log(f"[uqkit] run directory: {out}")
    try:
        return run()
    except KeyboardInterrupt:
        print(
            f"\n[uqkit] interrupted; finished methods are saved. Continue with:\n"
            f"  uqkit bench --resume --out {shlex.quote(str(out))}  (plus the same options)",
            file=sys.stderr,
        )
        return None


def _executor(args: argparse.Namespace):
    """The executor of ``--executor`` and its options (not started)."""
    from uqkit.bench.executors import make_executor

    return make_executor(args.executor, args.workers, args.address, args.threads_per_worker)


def _run_with_executor(
    out: Path, executor, run: Callable[[Any], dict], log: Callable[[str], None]
) -> dict | None:
    """``run(executor)`` in the run directory ``out``, with the executor started (Ray: its instance) and
    closed afterwards; on Ctrl-C say how to resume and return ``None``."""
    with executor:
        if executor.name != "local":
            log(f"[uqkit] executor: {executor.describe()}, ready in {executor.startup_time_s:.1f} s")
        return _interruptible(out, lambda: run(executor), log)


def _current_methods(methods: list[str] | None, log: Callable[[str], None]) -> list[str] | None:
    """``--methods`` with each renamed method under its current name; the deprecation warning that names the
    new one goes to the log (the terminal and ``log.txt``), where a ``DeprecationWarning`` would be hidden."""
    if methods is None:
        return None
    from uqkit.bench.upgrade import current_method_name

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DeprecationWarning)
        names = [current_method_name(name) for name in methods]
    for warning in caught:
        log(f"[uqkit] warning: {warning.message}")
    return names


def _logged(
    args: argparse.Namespace, argv: list[str], command: Callable[[Any, list[str], Path, Callable], int]
) -> int:
    """``command(args, argv, log)`` with a log that also goes to the run directory's ``log.txt``; an error
    is written there too (then raised to be printed, without traceback, by :func:`main`)."""
    from uqkit.bench.distributed import is_main_process, on_main

    out = on_main(_run_dir, args)  # under torchrun: rank 0's choice (a new directory is named by the time)
    log = _RunLog(out) if is_main_process() else _QuietLog()
    try:
        args.methods = _current_methods(args.methods, log)
        return command(args, argv, out, log)
    except Exception as error:
        log.write(f"uqkit: error: {error}")
        raise


def _resolve_seeds(args: argparse.Namespace) -> None:
    """Set ``args.seeds`` to the run's seeds (``--seeds``, ``--num-seeds`` from ``--seed``, else
    ``[--seed]``) and ``args.seed`` to the first."""
    if args.seeds is not None and args.seed is not None:
        raise ValueError("--seed and --seeds: give the seeds in one of them (--seeds 0,1,2 or --seed 0)")
    first = 0 if args.seed is None else args.seed
    if first < 0:
        raise ValueError(f"--seed: expected a non-negative integer, got {first}")
    if args.seeds is None:
        args.seeds = [first + index for index in range(args.num_seeds or 1)]
    args.seed = args.seeds[0]


def _cmd_bench(args: argparse.Namespace, argv: list[str]) -> int:
    from uqkit.bench.distributed import launched_world_size, torchrun_process_group

    processes = launched_world_size()
    if processes == 1:
        return _cmd_bench_here(args, argv)
    _check_torchrun(args, processes)
    with torchrun_process_group(args.device) as device:
        args.device = device
        return _cmd_bench_here(args, argv)


def _check_torchrun(args: argparse.Namespace, processes: int) -> None:
    """The options that a data-parallel run under torchrun (``processes`` ranks) cannot take."""
    from uqkit.bench.regression import REGRESSION_TASKS

    if getattr(args, "executor", None) == "ray":
        raise ValueError(
            f"--executor ray under torchrun ({processes} processes): choose one; Ray runs whole cells in "
            "parallel, torchrun trains one method data-parallel. Run Ray without torchrun"
        )
    if args.task and any(task in REGRESSION_TASKS for task in args.task) and args.data is None:
        raise ValueError(
            f"--task {','.join(args.task)} under torchrun ({processes} processes): the UCI regression "
            "protocol trains all its splits as one stacked model in one process and has no data-parallel "
            "form; run it without torchrun"
        )


def _cmd_bench_here(args: argparse.Namespace, argv: list[str]) -> int:
    from uqkit.bench.runner import check_config

    _resolve_seeds(args)
    if args.data is not None and args.task:
        raise ValueError("--task and --data: the data is the task; pass one of them")
    # the options are checked before the run directory is made; a renamed method's warning is given once,
    # in the run's log (_logged)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        check_config(_bench_config(args, argv, args.out or Path("runs")))
    _executor(args)
    return _logged(args, argv, _run_suite)


def _bench_config(args: argparse.Namespace, argv: list[str], out: Path):
    """The :class:`~uqkit.bench.runner.BenchConfig` of ``uqkit bench``'s options, run in ``out``."""
    from uqkit.bench.distributed import is_main_process
    from uqkit.bench.runner import BenchConfig
    from uqkit.bench.user_task import task_name

    tasks = [task_name(args.data)] if args.data is not None else args.task or ["fashion-mnist"]
    return BenchConfig(
        out=out,
        tasks=tasks,
        methods=args.methods,
        model=args.model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        seed=args.seed,
        seeds=args.seeds if len(args.seeds) > 1 else None,
        device=args.device,
        quick=args.quick,
        resume=args.resume,
        progress=not args.no_progress and is_main_process(),
        command=shlex.join(["uqkit", *argv]),
        data=args.data,
        target=args.target,
        ood=args.ood,
        kind=args.kind,
        data_dir=args.data_dir,
        split_chunks=args.split_chunks,
    )


def _run_suite(args: argparse.Namespace, argv: list[str], out: Path, log: Callable[[str], None]) -> int:
    """``uqkit bench`` on any task (classification, the UCI tables, the user's data ``--data``) with the
    one driver, :func:`uqkit.bench.runner.run_bench`."""
    from uqkit.bench.distributed import is_main_process
    from uqkit.bench.runner import run_bench

    config = _bench_config(args, argv, out)
    results = _run_with_executor(out, _executor(args), lambda executor: run_bench(config, log, executor), log)
    if results is None:
        return 130
    if not is_main_process():  # under torchrun rank 0 writes the report
        return 0
    html = _finish_report(results, out, log)
    if "total_time_s" in results:
        log(f"[uqkit] total time {results['total_time_s']:.1f} s")
    log(f"[uqkit] results: {out / 'results.json'}")
    log(f"[uqkit] report:  {html}  (and {out / 'report.md'})")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    path = args.run_dir / "results.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; pass the directory of a finished `uqkit bench` run")
    from uqkit.bench._atomic import read_json
    from uqkit.bench.report import validate_results
    from uqkit.bench.upgrade import upgrade_results

    results = read_json(path)  # a truncated or garbled file: a CorruptFileError naming it
    try:
        results = upgrade_results(results)  # an older schema version, as the current one (not rewritten)
        validate_results(results)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: not a valid results file: {error}") from None
    html = _finish_report(results, args.run_dir)
    print(f"[uqkit] report: {html}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``uqkit`` console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    from uqkit.bench.trainer import NonFiniteLossError
    from uqkit.data import DatasetNotFoundError

    try:
        if args.command == "list":
            return _cmd_list()
        if args.command == "bench":
            return _cmd_bench(args, argv)
        return _cmd_report(args)
    except (DatasetNotFoundError, FileNotFoundError, ValueError, ImportError, NonFiniteLossError) as error:
        print(f"uqkit: error: {error}", file=sys.stderr)
        return 2 if not isinstance(error, NonFiniteLossError) else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
