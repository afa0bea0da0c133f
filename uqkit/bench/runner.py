"""Run a benchmark suite: tasks x methods, resumable, writing ``results.json`` and the report.

Layout of a run directory::

    config.json                      the suite's configuration (checked on --resume)
    checkpoints/<task>/<method>.pt   epoch checkpoint while a method trains
    models/<task>/<method>.pt        the finished method (after training and post-hoc fitting)
    methods/<task>/<method>.json     the finished method's evaluation; its presence means "done"
    results.json                     everything, schema in docs/results-schema.md
    report.md, report.html, figures/

A run over several seeds (``--seeds 0,1,2``, ``--num-seeds N``) keeps each seed's files one level down,
``checkpoints/<task>/seed-<s>/<method>.pt``, ``models/<task>/seed-<s>/<method>.pt`` and
``methods/<task>/seed-<s>/<method>.json``: a (task, method, seed) cell is finished once its JSON is written.
A one-seed run keeps the layout above, so earlier run directories resume and report as before.

A user's data and model (``uqkit bench --data PATH --model MODULE:FACTORY``) are one more task
(:func:`uqkit.bench.user_task.build_user_task`), checked and probed for the methods that apply to the model
(:mod:`uqkit.bench.applicability`) before the run directory is touched; the rest is the same run.

Each (task, method, seed) is one cell (:func:`run_cell`), run in this process or as a Ray task
(:mod:`uqkit.bench.executors`); a method that reuses another's network (``shares_training_with``) runs after
that method's cell.

:func:`run_bench` is the one driver of every run: what a cell is, and how a method's block is made from its
cells' blocks, is the policy of the run's tasks (:mod:`uqkit.bench.task_policy`). The classification tasks
and the user's data follow :class:`SuitePolicy` (the cells above); the UCI tables (``uci-boston``,
``uci-concrete``, ``uci`` with ``--data-dir``) follow :class:`~uqkit.bench.regression_cells.UCIPolicy`: a
cell is one (table, method, chunk of splits) of the UCI protocol, written to ``methods/<task>/<method>.json``
(one chunk, the default) or ``methods/<task>/<method>/chunk-<c>-of-<K>.json`` (``--split-chunks K``, merged
into ``methods/<task>/<method>.json`` once the method's last chunk is done).

A method is finished once its JSON is written (atomically); ``--resume`` skips finished methods, continues a
method from its last epoch checkpoint, and never loses a finished result. A truncated or garbled file (a
disk filled up, a copy cut short) is reported by name and moved aside to ``<name>.corrupt``, never deleted;
the work it held is redone: a method's JSON from its model file, a model file from its epoch checkpoint, an
epoch checkpoint from scratch. A corrupt ``config.json`` stops ``--resume`` with an error naming it.

Under ``torchrun`` (:mod:`uqkit.bench.distributed`) every rank runs this same suite and trains each method
data-parallel; rank 0 alone reads and sets aside the run directory's files (every rank gets what it found),
writes, and evaluates.
"""

from __future__ import annotations

import datetime as _dt
import functools
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

import uqkit
from uqkit.bench._atomic import CorruptFileError
from uqkit.bench.distributed import is_main_process, on_main, world_size
from uqkit.bench.evaluate import evaluate_method
from uqkit.bench.executors import Cell, LocalExecutor, RayExecutor
from uqkit.bench.likelihoods import likelihood_of
from uqkit.bench.models import MODEL_BUILDERS
from uqkit.bench.registry import (
    METHODS,
    Method,
    MethodContext,
    NotApplicableError,
    build_method,
    methods_for_task,
)
from uqkit.bench.regression import REGRESSION_TASKS
from uqkit.bench.regression_cells import REGRESSION_SEEDS_ERROR, UCIPolicy
from uqkit.bench.report import SCHEMA_VERSION
from uqkit.bench.run_files import (
    RunConfigMismatchError,
    json_safe,
    prepare_run_dir,
    read_or_set_aside,
    set_aside_corrupt,
    write_json,
)
from uqkit.bench.seeds import aggregate_seed_blocks
from uqkit.bench.task_policy import PlannedCell, TaskPlan, TaskPolicy
from uqkit.bench.tasks import TASKS, Task, TaskInfo, build_task
from uqkit.bench.trainer import (
    TrainConfig,
    TrainResult,
    atomic_torch_save,
    load_checkpoint,
    train_method,
)
from uqkit.bench.upgrade import current_method_name, read_method_block
from uqkit.bench.user_model import is_factory_spec

__all__ = [
    "REGRESSION_SEEDS_ERROR",
    "BenchConfig",
    "RunConfigMismatchError",
    "SuitePolicy",
    "check_config",
    "environment",
    "run_bench",
    "run_cell",
    "run_planned_cell",
    "task_policy",
]

DEFAULT_TASKS = ("fashion-mnist",)


@dataclass
class BenchConfig:
    """Configuration of one ``uqkit bench`` run (the command line, parsed).

    ``seeds`` (``--seeds``, ``--num-seeds``): run every cell once per seed; when given it replaces ``seed``
    (``None``: the one seed ``seed``). ``data_dir`` (``--data-dir``, the ``uci`` task's directory) and
    ``split_chunks`` (``--split-chunks``) are the UCI tables' (:class:`uqkit.bench.regression_cells.
    UCIPolicy`); the other options of a run on them stay unset (the UCI protocol fixes them).
    """

    out: Path
    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))
    methods: list[str] | None = None
    model: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    seed: int = 0
    seeds: list[int] | None = None
    device: str = "cpu"
    quick: bool = False
    resume: bool = False
    progress: bool = True
    command: str = ""
    data: Path | None = None
    target: str | None = None
    ood: Path | None = None
    kind: str | None = None
    data_dir: Path | None = None
    split_chunks: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.methods, (list, tuple)):  # an old method name warns and runs under its new one
            self.methods = [current_method_name(name) for name in self.methods]

    def seed_list(self) -> list[int]:
        """The run's seeds: ``seeds`` (``--seeds``, ``--num-seeds``) when given, else ``[seed]``."""
        return list(self.seeds) if self.seeds else [self.seed]

    def identity(self) -> dict[str, Any]:
        """The fields that must match between a run and its resumption (with ``--data``: the data, its
        target, OOD set and kind too; with several seeds: the seeds)."""
        keys = ("tasks", "methods", "model", "epochs", "batch_size", "learning_rate", "seed", "quick")
        identity = {key: getattr(self, key) for key in keys}
        identity["seed"] = self.seed_list()[0]
        if len(self.seed_list()) > 1:
            identity["seeds"] = self.seed_list()
        if self.data is not None:
            identity["data"] = str(Path(self.data).resolve())
            identity["ood"] = None if self.ood is None else str(Path(self.ood).resolve())
            identity.update(target=self.target, kind=self.kind)
        return identity


def environment(device: str) -> dict[str, Any]:
    """Versions and hardware the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    env = {
        "uqkit": uqkit.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    if world_size() > 1:
        env["processes"] = world_size()  # data-parallel training under torchrun
    return env


def _check_user_config(config: BenchConfig) -> None:
    """The options of a run on the user's data (``--data``)."""
    model = config.model
    if model is not None and not is_factory_spec(model) and model not in MODEL_BUILDERS:
        raise ValueError(
            f"--model: expected MODULE:FACTORY, path/to/file.py:FACTORY or a backbone "
            f"({', '.join(sorted(MODEL_BUILDERS))}), got {model!r}"
        )
    for method in config.methods or []:
        if method not in METHODS:
            raise ValueError(f"--methods: unknown method {method!r}; known: {', '.join(METHODS)}")


def _check_seeds(config: BenchConfig) -> None:
    """``seeds``: distinct non-negative ints, at least one; ``seed``: a non-negative int."""
    for name, values in (("--seed", [config.seed]), ("--seeds", config.seeds or [])):
        for value in values:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}: expected non-negative integers, got {value!r}")
    if config.seeds is not None:
        if len(config.seeds) == 0:
            raise ValueError("--seeds: expected at least one seed, got none")
        repeated = sorted({seed for seed in config.seeds if list(config.seeds).count(seed) > 1})
        if repeated:
            raise ValueError(
                f"--seeds: expected distinct seeds, got {', '.join(map(str, repeated))} more than once"
            )


def _check_config(config: BenchConfig) -> None:
    _check_seeds(config)
    if config.data_dir is not None:
        raise ValueError("--data-dir: only the regression task 'uci' reads a directory; add --task uci")
    if config.split_chunks is not None:
        raise ValueError(
            "--split-chunks: only UCI regression tasks train splits; drop it or add --task uci-..."
        )
    if config.data is None and is_factory_spec(config.model):
        raise ValueError(f"--model {config.model}: a model factory runs on your own data; add --data PATH")
    if config.data is None and (config.target, config.ood, config.kind) != (None, None, None):
        raise ValueError("--target, --ood and --kind describe your own data; add --data PATH")
    if config.data is not None:
        _check_user_config(config)
    for task in config.tasks if config.data is None else []:
        if task not in TASKS:
            raise ValueError(f"--task: expected one of {', '.join(TASKS)}, got {task!r}")
        if config.model is not None and config.model not in TASKS[task].models:
            raise ValueError(
                f"--model: task {task!r} supports {', '.join(TASKS[task].models)}, got {config.model!r}"
            )
        for method in config.methods or []:
            if method not in METHODS:
                raise ValueError(f"--methods: unknown method {method!r}; known: {', '.join(METHODS)}")
            if method not in methods_for_task(task, opt_in=True):
                raise ValueError(f"--methods: method {method!r} does not apply to task {task!r}")
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device: {config.device!r} asked for, but CUDA is not available here; use cpu")
    if config.device != "cpu" and not config.device.startswith("cuda"):
        raise ValueError(f"--device: expected 'cpu' or 'cuda[:N]', got {config.device!r}")
    for name in ("epochs", "batch_size"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')}: expected a positive integer, got {value}")
    if config.learning_rate is not None and not config.learning_rate > 0:
        raise ValueError(f"--lr: expected a positive number, got {config.learning_rate}")


def _train_config(config: BenchConfig, info: TaskInfo) -> TrainConfig:
    default_epochs = info.quick_epochs if config.quick else info.epochs
    return TrainConfig(
        epochs=config.epochs if config.epochs is not None else default_epochs,
        batch_size=config.batch_size or info.batch_size,
        learning_rate=config.learning_rate or info.learning_rate,
        seed=config.seed,
        device=config.device,
        progress=config.progress,
        schedule=info.schedule,
    )


def _method_train_config(method: Method, train_config: TrainConfig) -> TrainConfig:
    """The task's training configuration, with the method's own learning-rate schedule where it has one and
    ``budget_multiple`` times the task's epochs."""
    changes: dict[str, Any] = {}
    if method.learning_rate_schedule is not None:
        changes["schedule"] = method.learning_rate_schedule
    if method.budget_multiple != 1:
        changes["epochs"] = train_config.epochs * method.budget_multiple
    return replace(train_config, **changes) if changes else train_config


def _training_facts(method: Method, method_config: TrainConfig) -> dict[str, Any]:
    """How much training the method used: the result block's ``training`` (``network_epochs``: passes of
    one network over the training set, ``epochs`` times the independently shuffled members; for a method
    that reuses another's network, that network's training)."""
    orders = int(method.num_batch_orders)
    return {
        "epochs": method_config.epochs,
        "budget_multiple": int(method.budget_multiple),
        "network_epochs": method_config.epochs * orders,
        "batch_orders": orders,
        "optimizer": method.optimizer_name,
        "selects_best_epoch": bool(method.select_best_epoch),
    }


def _train(
    method: Method,
    method_name: str,
    task: Task,
    train_config: TrainConfig,
    checkpoint: Path,
    log: Callable[[str], None],
) -> TrainResult:
    """:func:`train_method`, resuming from ``checkpoint``; from scratch if that checkpoint is corrupt."""
    arguments = (task.train.inputs, task.train.labels, task.val.inputs, task.val.labels, train_config)
    try:
        return train_method(method, method_name, *arguments, checkpoint_path=checkpoint)
    except CorruptFileError as error:
        if error.path != checkpoint:
            raise
        on_main(set_aside_corrupt, error, f"training {method_name} from scratch", log)
    return train_method(method, method_name, *arguments, checkpoint_path=checkpoint)


def _method_context(task: Task, train_config: TrainConfig) -> MethodContext:
    return MethodContext(
        task.input_shape,
        task.num_classes,
        task.model,
        len(task.train),
        task.name,
        batch_size=train_config.batch_size,
        training=train_config,
    )


def _training_base(task: Task, method_name: str, train_config: TrainConfig) -> str | None:
    """The method whose trained network ``method_name`` reuses (``shares_training_with``), or None.

    It is an attribute of the built method, so the method is built here, with the random state restored
    afterwards (the cell builds it again under its own seed). A method that cannot be built on the task has
    none: its cell raises the reason, as it would have in a sequential run."""
    with torch.random.fork_rng(devices=[]):
        try:
            return build_method(method_name, _method_context(task, train_config)).shares_training_with
        except NotApplicableError:
            return None


def _run_method(
    config: BenchConfig, task: Task, method_name: str, train_config: TrainConfig, log: Callable[[str], None]
) -> dict | None:
    """Train (or reload), post-hoc fit and evaluate one method under ``config.seed``; returns its result
    block (``None`` on the ranks other than 0 under torchrun: they train and fit post-hoc, but do not
    evaluate)."""
    torch.manual_seed(config.seed)
    method = build_method(method_name, _method_context(task, train_config))
    method.use_likelihood(likelihood_of(task.kind))
    method_config = _method_train_config(method, train_config)
    model_path = _cell_path(config, "models", task.name, method_name, ".pt")
    history: list[dict[str, float]]
    checkpoint = _cell_path(config, "checkpoints", task.name, method_name, ".pt")
    redo = f"training {method_name} again (from its epoch checkpoint if any)"
    state = read_or_set_aside(model_path, load_checkpoint, redo, log)
    if state is not None:  # finished training earlier, killed during evaluation
        method.load_state_dict(state["method"])
        history, train_time, shared = state["history"], float(state["train_time_s"]), state["shared"]
        selected = state.get("selected_epochs")
    else:
        base = method.shares_training_with
        base_path = _cell_path(config, "models", task.name, base, ".pt") if base else None  # the same seed's
        redo = f"training {method_name} on its own, without {base}'s network"
        state = None if base_path is None else read_or_set_aside(base_path, load_checkpoint, redo, log)
        if state is not None:
            prefix = "network."
            network_state = {k[len(prefix) :]: v for k, v in state["method"].items() if k.startswith(prefix)}
            method.network.load_state_dict(network_state)
            history, train_time, shared = state["history"], float(state["train_time_s"]), base
            selected = state.get("selected_epochs")
        else:
            result = _train(method, method_name, task, method_config, checkpoint, log)
            history, train_time, shared = result.history, result.train_time_s, None
            selected = result.selected_epochs
        method.to(config.device)
        started = time.perf_counter()
        train = (task.train.inputs.to(config.device), task.train.labels.to(config.device))
        method.fit_post_hoc(task.val.inputs.to(config.device), task.val.labels.to(config.device), train)
        train_time += time.perf_counter() - started
        if is_main_process():  # under torchrun only rank 0 writes
            atomic_torch_save(
                {
                    "method": method.state_dict(),
                    "history": history,
                    "train_time_s": train_time,
                    "shared": shared,
                    "selected_epochs": selected,
                },
                model_path,
            )
    if not is_main_process():  # under torchrun rank 0 evaluates; the others go on to the next method
        return None
    method.to(config.device)
    block = evaluate_method(
        method, task, device=config.device, seed=config.seed, progress=config.progress, name=method_name
    )
    block["train_time_s"] = train_time
    block["shares_training_with"] = shared
    block["history"] = history
    block["selected_epochs"] = selected  # per part (one, or one per ensemble member): best validation NLL
    block["learning_rate_schedule"] = method.own_schedule or method_config.schedule
    block["training"] = _training_facts(method, method_config)
    block["description"] = METHODS[method_name].description
    details = method.result_details()
    if details:
        block["details"] = details  # method-specific (e.g. a search's budget); docs/results-schema.md
    if task.kind == "regression":
        from uqkit.bench.evaluate_regression import regression_training_fields

        fraction = len(task.val) / (len(task.train) + len(task.val))
        epochs, rate = method_config.epochs, method_config.learning_rate
        regression_training_fields(block, history, selected, rate, epochs, fraction)
    return json_safe(block)


def _regression_header(task: Task, train_config: TrainConfig) -> dict[str, Any]:
    """The block of a regression task (the user's data) in the layout of the UCI tasks, with one split."""
    num_rows = len(task.train) + len(task.val) + len(task.test)
    return {
        "kind": "regression",
        "description": task.description,
        "source": task.source,
        "num_rows": num_rows,
        "num_features": int(torch.Size(task.input_shape).numel()),
        "num_splits": 1,
        "num_train": len(task.train),
        "num_val": len(task.val),
        "num_test": len(task.test),
        "num_targets": task.num_classes // 2,
        "input_shape": list(task.input_shape),
        "protocol": {
            "hidden_units": None,
            "model": task.model,
            "batch_size": train_config.batch_size,
            "optimizer": "Adam",
            "validation_fraction": len(task.val) / (len(task.train) + len(task.val)),
            "standardization": "table inputs and the targets standardised with the training split's mean and "
            "std; metrics in the targets' units",
        },
        "published": {},
        "ood_sets": {name: ood.description for name, ood in task.ood_sets.items()},
        "methods": {},
    }


def _task_header(task: Task) -> dict[str, Any]:
    return {
        "description": task.description,
        "num_classes": task.num_classes,
        "input_shape": list(task.input_shape),
        "model": task.model,
        "num_train": len(task.train),
        "num_val": len(task.val),
        "num_test": len(task.test),
        "ood_sets": {name: ood.description for name, ood in task.ood_sets.items()},
        "shift": (
            None
            if task.shift is None
            else {"name": task.shift.name, "unit": task.shift.unit, "values": list(task.shift.values)}
        ),
        "methods": {},
    }


def _method_names(config: BenchConfig, task_name: str) -> list[str]:
    """The methods of the run on a task: ``--methods``, else every default method that applies to it (every
    default classification-suite method for the user's data); opt-in methods (``default=False``, e.g.
    ``csgmcmc``) run only when ``--methods`` names them."""
    if config.methods:
        return list(config.methods)
    if config.data is not None:
        return [name for name, entry in METHODS.items() if entry.tasks is None and entry.default]
    return methods_for_task(task_name)


def _user_task(config: BenchConfig, log: Callable[[str], None]) -> tuple[Task, TaskInfo, dict[str, str]]:
    """The user's task (``--data``), its training defaults and ``{method: reason}`` for the methods that do
    not apply to its model; every check made before anything is trained or written.

    Raises:
        UserDataError, ValueError: bad data or model (naming the file or ``--model``), or a model on which no
            method of the run can be built.
    """
    from uqkit.bench.applicability import probe_methods
    from uqkit.bench.user_task import USER_TASK_INFO, build_user_task

    log(f"[uqkit] checking {config.data} and the model {config.model or 'mlp'}")
    task = build_user_task(config.data, config.model, config.target, config.ood, config.kind, config.seed)
    train_config = _train_config(config, USER_TASK_INFO)
    context = MethodContext(
        task.input_shape, task.num_classes, task.model, len(task.train), task.name, train_config.batch_size
    )
    names = _method_names(config, task.name)
    not_applicable = probe_methods(names, task, context, config.seed)
    for name, reason in not_applicable.items():
        log(f"[uqkit] {name}: not applicable: {reason}")
    if len(not_applicable) == len(names):
        raise ValueError(
            f"--model {task.model}: no method of the run can be built on it (see the reasons above)"
        )
    return task, USER_TASK_INFO, not_applicable


_TASKS_KEPT = 2
"""Built tasks a process keeps for its next cells (a Fashion-MNIST task holds about 220 MB)."""
_built_tasks: dict[tuple, tuple[Task, TaskInfo]] = {}


def _task_key(config: BenchConfig, task_name: str, seed: int) -> tuple:
    """What a built task depends on: the task (or the user's files), model, --quick, seed, data root."""
    if config.data is not None:
        files = tuple(None if p is None else str(Path(p).resolve()) for p in (config.data, config.ood))
        return ("data", *files, config.model, config.target, config.kind, seed)
    return ("task", task_name, config.model, config.quick, seed, os.environ.get("UQKIT_DATA"))


def _keep_task(key: tuple, built: tuple[Task, TaskInfo]) -> tuple[Task, TaskInfo]:
    _built_tasks.pop(key, None)
    _built_tasks[key] = built
    while len(_built_tasks) > _TASKS_KEPT:
        del _built_tasks[next(iter(_built_tasks))]  # the oldest
    return built


def _cell_task(config: BenchConfig, task_name: str, seed: int) -> tuple[Task, TaskInfo]:
    """The task of a cell and its training defaults, built from its name (or the user's files) on this
    process's disk, or reused from this process's previous cells. Cells never carry data: a Ray worker
    builds the task it needs once (about 1-3 s for Fashion-MNIST) and keeps it for its next cells."""
    key = _task_key(config, task_name, seed)
    if key in _built_tasks:
        return _keep_task(key, _built_tasks[key])
    if config.data is not None:
        from uqkit.bench.user_task import USER_TASK_INFO, build_user_task

        task = build_user_task(config.data, config.model, config.target, config.ood, config.kind, seed)
        return _keep_task(key, (task, USER_TASK_INFO))
    task = build_task(task_name, config.model, quick=config.quick, seed=seed)
    return _keep_task(key, (task, TASKS[task_name]))


def _cell_path(config: BenchConfig, folder: str, task_name: str, method_name: str, suffix: str) -> Path:
    """Where a cell under ``config.seed`` keeps a file: ``<out>/<folder>/<task>/<method><suffix>`` in a
    one-seed run (the layout of every run before seeds existed), ``<out>/<folder>/<task>/seed-<seed>/
    <method><suffix>`` in a run over several seeds. ``folder``: ``methods`` (the result), ``models``,
    ``checkpoints``."""
    directory = config.out / folder / task_name
    if len(config.seed_list()) > 1:
        directory = directory / f"seed-{config.seed}"
    return directory / f"{method_name}{suffix}"


def _seed_text(config: BenchConfig, seed: int) -> str:
    return f" with seed {seed}" if len(config.seed_list()) > 1 else ""


def _done_path(config: BenchConfig, task_name: str, method_name: str, seed: int) -> Path:
    """The finished cell's result block (its presence means "done"): ``methods/<task>/<method>.json``, or
    ``methods/<task>/seed-<seed>/<method>.json`` in a run over several seeds."""
    return _cell_path(replace(config, seed=seed), "methods", task_name, method_name, ".json")


def run_cell(
    config: BenchConfig, task_name: str, method_name: str, seed: int, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """One cell of the suite: train (or reload), post-hoc fit and evaluate ``method_name`` on ``task_name``
    under ``seed``, write the result block atomically to ``methods/<task>/<method>.json`` and return it.

    A top-level function of small picklable arguments, so that it runs in this process or as a Ray task
    (:mod:`uqkit.bench.executors`); it builds the task from its name (or the user's files) on the local disk.
    A method that reuses another's network reads that method's ``models/<task>/<base>.pt``: its cell must run
    after the base's (:func:`run_bench` orders them).

    Args:
        config: the run's configuration (its ``seed`` is replaced by ``seed``).
        task_name: a task of the run.
        method_name: a method of the run.
        seed: the cell's seed.
        log: where warnings go (a corrupt file set aside).
    """
    if seed != config.seed:
        config = replace(config, seed=seed)
    task, info = _cell_task(config, task_name, seed)
    block = _run_method(config, task, method_name, _train_config(config, info), log)
    write_json(block, _done_path(config, task_name, method_name, seed))
    return block


class SuitePolicy:
    """The policy of the classification tasks and of the user's data (:mod:`uqkit.bench.task_policy`): a
    cell trains one method once under one seed (:func:`run_cell`), a method that reuses another's network
    runs after that method's cell, and a method's block is its one seed's block, or over several seeds
    :func:`uqkit.bench.seeds.aggregate_seed_blocks` (means, ``seeds``, ``summary``)."""

    torch_threads = None

    def __init__(self) -> None:
        self.user: tuple[Task, TaskInfo, dict[str, str]] | None = None  # the user's task, once probed

    def check(self, config: BenchConfig) -> BenchConfig:
        _check_config(config)
        return config

    def prepare(self, config: BenchConfig, log: Callable[[str], None]) -> BenchConfig:
        """With ``config.data``, build and probe the user's task (its name replaces ``config.tasks``)."""
        if config.data is None:
            return config
        self.user = _user_task(config, log)
        config = replace(config, tasks=[self.user[0].name])
        if self.user[0].kind == "regression" and len(config.seed_list()) > 1:
            raise ValueError(REGRESSION_SEEDS_ERROR)
        return config

    def identity(self, config: BenchConfig) -> dict[str, Any]:
        return config.identity()

    def plan(self, config: BenchConfig, task_name: str, log: Callable[[str], None]) -> TaskPlan:
        seeds = config.seed_list()
        if self.user is not None:
            task, info, not_applicable = self.user
            _keep_task(_task_key(config, task_name, seeds[0]), (task, info))
        else:
            log(f"[uqkit] building task {task_name}{' (quick)' if config.quick else ''}")
            task, info = _cell_task(config, task_name, seeds[0])
            not_applicable = {}
        train_config = _train_config(config, info)
        header = _regression_header(task, train_config) if task.kind == "regression" else _task_header(task)
        header["training"] = {
            "epochs": train_config.epochs,
            "batch_size": train_config.batch_size,
            "learning_rate": train_config.learning_rate,
            "schedule": train_config.schedule,
            "optimizer": "Adam",
        }
        if self.user is not None:
            header["not_applicable"] = not_applicable
        names = [name for name in _method_names(config, task_name) if name not in not_applicable]
        bases = {name: _training_base(task, name, train_config) for name in names}
        # a Ray worker may run in another working directory (a cluster node): cells get absolute paths
        absolute = {
            key: getattr(config, key) for key in ("out", "data", "ood") if getattr(config, key) is not None
        }
        cell_config = replace(config, **{key: Path(value).resolve() for key, value in absolute.items()})
        plan = TaskPlan(task_name, header, methods={name: [] for name in names})
        count = len(names) * len(seeds)
        for index, (seed, method_name) in enumerate(((s, n) for s in seeds for n in names), start=1):
            key = (task_name, method_name, seed)
            base = bases[method_name]
            after = ((task_name, base, seed),) if base in names else ()
            plan.cells.append(
                PlannedCell(
                    Cell(key, (run_cell, cell_config, task_name, method_name, seed), after),
                    _done_path(config, task_name, method_name, seed),
                    f"[uqkit] {task_name} [{index}/{count}] {method_name}{_seed_text(config, seed)}",
                )
            )
            plan.methods[method_name].append(key)
        return plan

    def merge(
        self, plan: TaskPlan, method: str, blocks: dict[tuple, dict[str, Any]], log: Callable[[str], None]
    ) -> dict[str, Any]:
        if len(blocks) == 1:
            return next(iter(blocks.values()))
        return aggregate_seed_blocks({key[2]: block for key, block in blocks.items()})


def task_policy(config: BenchConfig) -> TaskPolicy:
    """The policy of ``config``'s tasks (:mod:`uqkit.bench.task_policy`): the UCI tables'
    (:class:`~uqkit.bench.regression_cells.UCIPolicy`) when every task is one of
    :data:`~uqkit.bench.regression.REGRESSION_TASKS`, else the suite's (:class:`SuitePolicy`).

    Raises:
        ValueError: UCI tables mixed with other tasks in one run.
    """
    uci = [task in REGRESSION_TASKS for task in config.tasks] if config.data is None else [False]
    if any(uci) and not all(uci):
        raise ValueError(
            f"--task: expected only regression tasks ({', '.join(REGRESSION_TASKS)}) or only classification "
            f"tasks in one run, got {', '.join(config.tasks)}"
        )
    return UCIPolicy() if any(uci) else SuitePolicy()


def check_config(config: BenchConfig) -> BenchConfig:
    """``config`` checked by its tasks' policy (:func:`task_policy`), reading and writing nothing (the CLI
    calls it before the run directory is made); returned with the policy's defaults filled in.

    Raises:
        ValueError: a bad option, or one the run's tasks do not take, naming it.
    """
    return task_policy(config).check(config)


def run_bench(
    config: BenchConfig, log=print, executor: LocalExecutor | RayExecutor | None = None
) -> dict[str, Any]:
    """Run the suite described by ``config``; returns the results dict also written to results.json.

    The one driver of every run. Its tasks' policy (:func:`task_policy`, :mod:`uqkit.bench.task_policy`)
    lists each task's cells and merges a method's cells into its block: for the classification tasks and the
    user's data a cell is one (task, method, seed) (:func:`run_cell`); for the UCI tables (``uci-boston``,
    ``uci-concrete``, ``uci`` with ``config.data_dir``) one (table, method, chunk of splits) of the UCI
    protocol (``config.split_chunks``; :func:`uqkit.bench.regression_cells.run_regression_cell`). This
    function owns the rest: the run directory and its identity (``config.json``), resume (with
    ``config.resume``, a cell whose result file exists is finished and read back, a corrupt one set aside
    and run again; without it every cell runs), the executor (default: a
    :class:`~uqkit.bench.executors.LocalExecutor`, in this process; a method that reuses another method's
    network runs after it), the log, and ``results.json``, assembled in the run's method order.

    With ``config.data`` the one task is the user's data and model; it is checked, and the methods that
    cannot be built on the model are found, before the run directory is written.

    With several seeds (``config.seeds``) every (task, method) cell runs once per seed, each seed exactly as
    a one-seed run with that ``seed`` would (the task built with it too); ``results.json`` holds each
    method's mean over seeds with every seed's block (:func:`uqkit.bench.seeds.aggregate_seed_blocks`).

    Raises:
        ValueError: a bad option (naming it), or UCI tables mixed with other tasks.
        RunConfigMismatchError: ``config.out`` holds a run and ``config.resume`` is False, or it holds a
            different run.
    """
    policy = task_policy(config)
    config = policy.prepare(policy.check(replace(config, seed=config.seed_list()[0])), log)
    executor = executor if executor is not None else LocalExecutor()
    config.out.mkdir(parents=True, exist_ok=True)
    on_main(prepare_run_dir, config.out, policy.identity(config), config.resume, config.command)
    threads = torch.get_num_threads()
    if policy.torch_threads is not None:
        torch.set_num_threads(policy.torch_threads)
    try:
        return _run_planned(config, policy, log, executor)
    finally:
        torch.set_num_threads(threads)
        _built_tasks.clear()


def _results_config(config: BenchConfig) -> dict[str, Any]:
    """``results.json``'s ``config``: the run's options; the ones not given (``None``: ``data``, ``target``,
    ``ood``, ``kind``, ``data_dir``, ``split_chunks``) and ``progress`` left out, ``seeds`` only over several
    seeds (the layout of every run before seeds existed)."""
    block = {**asdict(config), "out": str(config.out), "tasks": list(config.tasks)}
    block.pop("progress")
    if len(config.seed_list()) == 1:
        block.pop("seeds")
    for key in ("data", "target", "ood", "kind", "data_dir", "split_chunks"):
        if block[key] is None:
            block.pop(key)
        elif key in ("data", "ood", "data_dir"):  # paths as the file holds them: the returned dict validates
            block[key] = str(block[key])
    return block


def _run_planned(
    config: BenchConfig, policy: TaskPolicy, log: Callable[[str], None], executor: LocalExecutor | RayExecutor
) -> dict[str, Any]:
    """The body of :func:`run_bench`, in its prepared run directory."""
    started_at = time.perf_counter()
    results: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": config.command,
        "environment": {**environment(config.device), "executor": executor.describe()},
        "config": _results_config(config),
        "tasks": {},
    }
    if not executor.in_process:  # the threads each cell ran on
        results["environment"]["threads"] = executor.threads_per_worker
    plans: list[TaskPlan] = []
    blocks: dict[tuple, dict] = {}
    merged: dict[tuple[str, str], dict] = {}  # (task, method) -> the method's block
    method_of: dict[tuple, tuple[TaskPlan, str]] = {}  # cell key -> its task's plan and its method

    def finished(key: tuple, block: dict) -> None:
        """Keep a cell's block; with its method's last cell, merge the method's block (logged at once)."""
        blocks[key] = block
        plan, name = method_of[key]
        if is_main_process() and all(other in blocks for other in plan.methods[name]):
            cell_blocks = {other: blocks[other] for other in plan.methods[name]}
            merged[plan.name, name] = policy.merge(plan, name, cell_blocks, log)

    cells: list[Cell] = []
    started: dict[tuple, PlannedCell] = {}
    for task in config.tasks:
        plan = policy.plan(config, task, log)
        plans.append(plan)
        method_of.update({key: (plan, name) for name, keys in plan.methods.items() for key in keys})
        results["tasks"][plan.name] = plan.header
        for planned in plan.cells:
            key = planned.cell.key
            # only a resumed run reads finished cells: result files without the run's config.json (a copied
            # or committed results folder) are not this run's work
            block = (
                read_or_set_aside(planned.path, read_method_block, f"running {key[1]} again", log)
                if config.resume
                else None
            )
            if block is not None:
                log(f"{planned.line}: finished earlier, kept")
                finished(key, block)
            else:
                cells.append(planned.cell)
                started[key] = planned
    _run_cells(cells, executor, log, started, finished)
    if not is_main_process():  # under torchrun: rank 0 evaluated the cells and writes the results
        return results
    for plan in plans:
        plan.header["methods"] = {name: merged[plan.name, name] for name in plan.methods}
    results["total_time_s"] = time.perf_counter() - started_at
    write_json(results, config.out / "results.json")
    return results


def run_planned_cell(function: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """``function(*args, **kwargs)``: the one function an executor maps over a run's cells, whose first
    argument is the cell's own function (:class:`~uqkit.bench.task_policy.PlannedCell`), so that the cells
    of any policy run on one executor. Top-level, so that Ray pickles it by reference."""
    return function(*args, **kwargs)


def _run_cells(
    cells: list[Cell],
    executor: LocalExecutor | RayExecutor,
    log: Callable[[str], None],
    started: dict[tuple, PlannedCell],
    finished: Callable[[tuple, dict], None],
) -> None:
    """Run the unfinished ``cells`` on ``executor``; each result block goes to ``finished(key, block)`` as
    its cell finishes."""
    if executor.in_process:  # the cells log to this run's log
        for cell, block in executor.map(
            functools.partial(run_planned_cell, log=log), cells, lambda c: log(started[c.key].line)
        ):
            finished(cell.key, block)
        return
    if cells:  # a Ray worker prints; Ray forwards it to this console
        log(f"[uqkit] {len(cells)} cells on {executor.describe()}")
    for count, (cell, block) in enumerate(executor.map(run_planned_cell, cells), start=1):
        planned = started[cell.key]
        log(f"{planned.line}: done ({count}/{len(cells)}; trained in {block['train_time_s']:.1f} s)")
        if not planned.path.exists():  # a cluster node that does not share the run directory: written here
            write_json(block, planned.path)
        finished(cell.key, block)


def default_run_dir(root: str | os.PathLike = "runs") -> Path:
    """``runs/<UTC timestamp>``: a fresh directory name for a new run."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path(root) / stamp


def latest_run_dir(root: str | os.PathLike = "runs") -> Path | None:
    """The most recent run directory under ``root`` (by name), or None."""
    root = Path(root)
    if not root.is_dir():
        return None
    runs = sorted(p for p in root.iterdir() if (p / "config.json").exists())
    return runs[-1] if runs else None
