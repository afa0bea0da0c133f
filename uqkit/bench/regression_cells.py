"""The UCI tables' policy of the one driver: their cells, a (table, method, chunk of splits) each, and
their merge.

:func:`uqkit.bench.runner.run_bench` drives every run; for the UCI tables (``uqkit bench --task
uci-boston``, ``uci-concrete``, ``uci --data-dir DIR``) it asks :class:`UCIPolicy` for the cells and for each
method's block (:mod:`uqkit.bench.task_policy`). The protocol itself (the choice on validation, the
retraining, the test) is :mod:`uqkit.bench.regression`.

:func:`uqkit.bench.regression.evaluate_regression_method` trains all 20 splits of a (table, method) as one
stacked model. To spread one method over several workers (``uqkit bench --task uci --split-chunks K``), the
splits are partitioned into ``K`` contiguous chunks (:func:`partition_splits`); each chunk is one cell
(:func:`run_regression_cell`): the same protocol on a table that holds only the chunk's splits, a stack of
its own, written atomically to ``methods/<task>/<method>/chunk-<c>-of-<K>.json``. When every chunk of a
method is done, :func:`merge_chunk_blocks` joins them into the method's block, as if one stack had run.

The chunking is part of the computation, not of the executor: a stack draws its initial weights, batch
orders and noise for all its models at once, so a split trained beside 9 others draws other random numbers
than beside 19 others, and chunk ``c`` runs under its own seed (:func:`chunk_seed`; chunk 0 keeps the run's
seed) so that no two chunks share their draws. A run with ``K`` chunks therefore gives numbers of the same
distribution as the one-stack run (``K = 1``, the default), not the same numbers; for a given ``K`` they are
the same on every executor. ``K`` is part of the run's identity (``--resume`` keeps it).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from uqkit._validation import check_choice, check_positive_int
from uqkit.bench import regression
from uqkit.bench.executors import Cell
from uqkit.bench.regression import (
    REGRESSION_METHODS,
    REGRESSION_TASKS,
    default_regression_methods,
    load_regression_table,
    regression_task_block,
)
from uqkit.bench.regression_metrics import summarize_splits
from uqkit.bench.run_files import json_safe, write_json
from uqkit.bench.task_policy import PlannedCell, TaskPlan

if TYPE_CHECKING:  # the runner imports this policy
    from uqkit.bench.runner import BenchConfig

__all__ = [
    "REGRESSION_SEEDS_ERROR",
    "UCIPolicy",
    "chunk_path",
    "chunk_seed",
    "merge_chunk_blocks",
    "method_chunks",
    "partition_splits",
    "run_regression_cell",
]

CHUNK_SEED_STRIDE = 1_000_003
"""Chunk ``c`` of a run with seed ``s`` runs under ``s + c * CHUNK_SEED_STRIDE``: far from every seed a run
derives from its own (``s + 1`` ... ``s + 13`` and ``1000 s + split``)."""


def partition_splits(num_splits: int, num_chunks: int) -> list[range]:
    """Partition splits ``0 .. num_splits - 1`` into ``num_chunks`` contiguous chunks of near-equal size
    (the first ``num_splits % num_chunks`` chunks one split larger).

    Raises:
        ValueError: ``num_chunks`` is not in ``[1, num_splits]``.
    """
    check_positive_int(num_splits, "num_splits")
    check_positive_int(num_chunks, "--split-chunks")
    if num_chunks > num_splits:
        raise ValueError(
            f"--split-chunks: expected at most the table's {num_splits} splits, got {num_chunks}"
        )
    size, larger = divmod(num_splits, num_chunks)
    bounds = [0]
    for chunk in range(num_chunks):
        bounds.append(bounds[-1] + size + (1 if chunk < larger else 0))
    return [range(bounds[c], bounds[c + 1]) for c in range(num_chunks)]


def chunk_seed(seed: int, chunk: int) -> int:
    """The seed of chunk ``chunk``: ``seed`` for chunk 0, ``seed + chunk * CHUNK_SEED_STRIDE`` after."""
    check_positive_int(seed, "seed", minimum=0)
    check_positive_int(chunk, "chunk", minimum=0)
    return seed + chunk * CHUNK_SEED_STRIDE


def chunk_path(out: str | os.PathLike, task_name: str, method_name: str, chunk: int, num_chunks: int) -> Path:
    """Where a cell writes its block: ``methods/<task>/<method>.json`` for the one-stack run, else
    ``methods/<task>/<method>/chunk-<c>-of-<K>.json``."""
    methods = Path(out) / "methods" / task_name
    if num_chunks == 1:
        return methods / f"{method_name}.json"
    return methods / method_name / f"chunk-{chunk}-of-{num_chunks}.json"


def run_regression_cell(
    task: str,
    data_dir: str | None,
    method: Any,
    seed: int,
    chunk: int,
    num_chunks: int,
    out: str,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """One cell: ``method`` on chunk ``chunk`` of ``num_chunks`` of task ``task``'s splits; its block is
    written atomically (:func:`chunk_path`) and returned.

    A top-level function of small picklable arguments (the method's recipe travels with the cell, the
    table is read from ``data_dir`` or the installed package on the worker's disk), so that it runs in this
    process or as a Ray task (:mod:`uqkit.bench.executors`).

    Args:
        task: a name of :data:`~uqkit.bench.regression.REGRESSION_TASKS`.
        data_dir: the UCI-format directory of the ``uci`` task (None for the others).
        method: the :class:`~uqkit.bench.regression.RegressionMethod`.
        seed: the run's seed.
        chunk, num_chunks: which chunk of :func:`partition_splits`.
        out: the run directory.
        log: progress printer (None: quiet).
    """
    table = load_regression_table(task, data_dir)
    task_name = task if task != "uci" else f"uci-{table.name}"
    splits = partition_splits(len(table.splits), num_chunks)[chunk]
    if num_chunks > 1:
        table = dataclasses.replace(table, splits=tuple(table.splits[i] for i in splits))
    block = regression.evaluate_regression_method(method, table, chunk_seed(seed, chunk), log)
    block = json_safe(block)
    write_json(block, chunk_path(out, task_name, method.name, chunk, num_chunks))
    return block


# ---------------------------------------------------------------------------------------------------------
# Merging the chunks of a method
# ---------------------------------------------------------------------------------------------------------
def _pooled_summary(summaries: Sequence[dict[str, Any]], counts: Sequence[int]) -> dict[str, float | None]:
    """``{"mean", "se"}`` over all values from each chunk's ``{"mean", "se"}`` over its ``counts[c]`` values.

    With ``s_c = se_c sqrt(n_c)`` a chunk's sample standard deviation, the pooled sum of squares is
    ``sum_c (n_c - 1) s_c^2 + n_c (m_c - m)^2`` about the overall mean ``m = sum_c n_c m_c / N``; the sample
    standard deviation is its ``/ (N - 1)`` root, and ``se = sd / sqrt(N)`` (as a one-chunk summary). A
    ``None`` (undefined) value anywhere gives ``None``.
    """
    means, errors = [s["mean"] for s in summaries], [s["se"] for s in summaries]
    if any(value is None for value in (*means, *errors)):
        return {"mean": None, "se": None}
    total = sum(counts)
    mean = sum(n * m for n, m in zip(counts, means, strict=True)) / total
    squares = sum(
        (n - 1) * (se * math.sqrt(n)) ** 2 + n * (m - mean) ** 2
        for n, m, se in zip(counts, means, errors, strict=True)
    )
    se = math.sqrt(squares / (total - 1)) / math.sqrt(total) if total > 1 else 0.0
    return {"mean": mean, "se": se}


def _weighted_mean(values: Sequence[Any], weights: Sequence[int]) -> Any:
    """Element-wise weighted mean of numbers or equal-length lists of numbers (None if any is None)."""
    if isinstance(values[0], list):
        return [_weighted_mean(column, weights) for column in zip(*values, strict=True)]
    if any(value is None for value in values):
        return None
    return sum(w * v for w, v in zip(weights, values, strict=True)) / sum(weights)


def _is_summary(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"mean", "se"}


def _merge(values: list[Any], counts: list[int], path: str) -> Any:
    """The merge of one key of the chunks' blocks: equal values kept, ``{"mean", "se"}`` pooled, dicts
    merged key by key."""
    if all(value == values[0] for value in values[1:]):
        return values[0]
    if _is_summary(values[0]) and all(_is_summary(value) for value in values):
        return _pooled_summary(values, counts)
    if all(isinstance(value, dict) for value in values) and all(set(v) == set(values[0]) for v in values):
        return {key: _merge([v[key] for v in values], counts, f"{path}.{key}") for key in values[0]}
    if all(isinstance(value, list) for value in values) and len({len(v) for v in values}) == 1:
        return [_merge(list(column), counts, f"{path}[]") for column in zip(*values, strict=True)]
    raise ValueError(
        f"{path}: the chunks of a method hold different values and there is no rule to merge them "
        f"(uqkit/bench/regression_cells.py, merge_chunk_blocks): {values!r:.200}"
    )


def _merge_details(values: list[Any], counts: list[int], path: str, per_split: Sequence[str] = ()) -> Any:
    """The merge of a method's ``details`` (method-specific): the lists at the paths ``per_split`` (the
    method's ``per_split_details``, e.g. ``details.student.validation_nll``: one entry per split, so each
    chunk's as long as its number of splits) concatenated in split order, even where two chunks' lists
    happen to be equal; dicts merged key by key; anything else by :func:`_merge`'s rules (equal in every
    chunk, or an error naming the path)."""
    if path in per_split:
        for value, count in zip(values, counts, strict=True):
            if not isinstance(value, list) or len(value) != count:
                raise ValueError(f"{path}: expected one entry per split ({count}), got {value!r:.200}")
        return [item for value in values for item in value]
    if all(isinstance(value, dict) for value in values) and all(set(v) == set(values[0]) for v in values):
        return {
            key: _merge_details([v[key] for v in values], counts, f"{path}.{key}", per_split)
            for key in values[0]
        }
    return _merge(values, counts, path)


def merge_chunk_blocks(
    blocks: Sequence[dict[str, Any]], test_rows: Sequence[int], per_split_details: Sequence[str] = ()
) -> dict[str, Any]:
    """One method's block from its chunks' blocks (in chunk order), as one stack over all splits would
    have written it.

    * ``per_split`` lists and ``selection.validation_nll``: concatenated, in split order;
    * ``metrics``: mean and standard error over the concatenated per-split values (as one run computes);
    * ``coverage_curve.observed``, ``training.retraining_network_epochs`` and a ``num_parameters`` that
      differs between splits: the mean over splits (each chunk's weighted by its number of splits);
    * ``train_time_s`` and ``selection_time_s``: summed (the compute spent, not the wall time);
      ``inference_ms_per_example``: weighted by each chunk's test rows (``test_rows``);
    * any other ``{"mean", "se"}`` over splits (``conformal``): pooled exactly (:func:`_pooled_summary`);
    * ``details`` (method-specific): the lists at ``per_split_details`` (the method's, paths from
      ``details``) concatenated, the rest merged by the rules here (:func:`_merge_details`);
    * everything else must be equal in every chunk (description, parameter count, grid, ...).

    Raises:
        ValueError: a key differs between chunks and has no rule (a new field: add its rule here).
    """
    blocks = list(blocks)
    if len(blocks) == 1:
        return blocks[0]
    counts = [len(block["per_split"]["nll"]) for block in blocks]
    merged: dict[str, Any] = {}
    for key in blocks[0]:
        values = [block[key] for block in blocks]
        if key == "per_split":
            merged[key] = {
                name: (
                    None
                    if values[0][name] is None
                    else [item for value in values for item in value[name]]  # splits in chunk order
                )
                for name in values[0]
            }
        elif key in ("train_time_s", "selection_time_s"):
            merged[key] = sum(values)
        elif key == "num_parameters" and len(set(values)) > 1:  # a mean over splits (hyper-deep-ensemble)
            merged[key] = _weighted_mean(values, counts)
        elif key == "inference_ms_per_example":
            merged[key] = _weighted_mean(values, list(test_rows))
        elif key == "selection":
            nll = [item for value in values for item in value["validation_nll"]]
            rest = [{k: v for k, v in value.items() if k != "validation_nll"} for value in values]
            merged[key] = {**_merge(rest, counts, key), "validation_nll": nll}
        elif key == "details":  # method-specific; per-split lists concatenated
            merged[key] = _merge_details(values, counts, key, per_split_details)
        elif key == "training":  # retraining_network_epochs is a mean over splits
            retraining = _weighted_mean([value["retraining_network_epochs"] for value in values], counts)
            rest = [{k: v for k, v in value.items() if k != "retraining_network_epochs"} for value in values]
            merged[key] = {**_merge(rest, counts, key), "retraining_network_epochs": retraining}
        elif key == "coverage_curve":
            observed = _weighted_mean([value["observed"] for value in values], counts)
            rest = [{k: v for k, v in value.items() if k != "observed"} for value in values]
            merged[key] = {**_merge(rest, counts, key), "observed": observed}
        elif key != "metrics":
            merged[key] = _merge(values, counts, key)
    per_split = merged["per_split"]
    merged["metrics"] = {
        name: (
            summarize_splits(per_split[name])
            if isinstance(per_split.get(name), list) and None not in per_split[name]
            else _merge([block["metrics"][name] for block in blocks], counts, f"metrics.{name}")
        )
        for name in blocks[0]["metrics"]
    }
    return {key: merged[key] for key in blocks[0]}  # the order of a one-stack block


def method_chunks(method: Any, num_chunks: int) -> int:
    """How many chunks ``method``'s splits run in: ``num_chunks``, or 1 for a method whose recipe is drawn
    once for all splits (``shared_random_search``: the hyper-deep ensemble's random search), which a chunk,
    under its own seed, would draw again, differently."""
    return 1 if getattr(method, "shared_random_search", False) else num_chunks


# ---------------------------------------------------------------------------------------------------------
# The UCI tables' policy
# ---------------------------------------------------------------------------------------------------------
REGRESSION_SEEDS_ERROR = (
    "--seeds/--num-seeds: regression runs (the UCI tasks, your regression data) take one seed: their "
    "results.json layout has no per-seed blocks yet, and the UCI tasks' error bars already cover their 20 "
    "train/test splits, each with its own validation carving and initialisation. Run each seed with "
    "--seed S --out DIR instead"
)
"""Why a regression run refuses several seeds (docs/results-schema.md, "Several seeds")."""

_FIXED_OPTIONS = {
    "model": "--model",
    "epochs": "--epochs",
    "batch_size": "--batch-size",
    "learning_rate": "--lr",
    "target": "--target",
    "ood": "--ood",
    "kind": "--kind",
}
"""Options of a run that the UCI protocol fixes (network, batch) or chooses per split (learning rate,
epochs), and those of the user's data: a UCI run leaves them unset."""


class UCIPolicy:
    """The policy of the UCI tables (:mod:`uqkit.bench.task_policy`): a cell is one (table, method, chunk of
    splits) running the UCI protocol (:func:`run_regression_cell`); a method's block is the merge of its
    chunks (:func:`merge_chunk_blocks`, written to ``methods/<task>/<method>.json`` when chunked), logged
    with its NLL and RMSE.

    The run uses one torch thread (``torch_threads``): the stacked products are far too small to gain from
    more, and on a busy machine every OpenMP region can stall. Its identity (:meth:`identity`) keeps the
    layout of the runs made before :func:`~uqkit.bench.runner.run_bench` drove the UCI tables, so that their
    run directories resume.
    """

    torch_threads = 1

    def __init__(self) -> None:
        self.out: Path | None = None
        # (task, method) -> the test rows of each chunk, the per-split paths of its details
        self.chunks: dict[tuple[str, str], tuple[list[int], tuple[str, ...]]] = {}

    def check(self, config: BenchConfig) -> BenchConfig:
        """Check a UCI run's options (every option the protocol fixes unset, one seed, ``data_dir`` exactly
        for the ``uci`` task, known methods); ``split_chunks`` defaults to 1."""
        given = [flag for key, flag in _FIXED_OPTIONS.items() if getattr(config, key) is not None]
        given += ["--quick"] if config.quick else []
        given += ["--device"] if config.device != "cpu" else []
        if given:
            raise ValueError(
                f"{', '.join(given)}: not used by regression tasks (the UCI protocol fixes the network and "
                "batch; learning rates and epochs are chosen on validation)"
            )
        for task in config.tasks:
            check_choice(task, "--task", REGRESSION_TASKS)
        if config.data_dir is not None and "uci" not in config.tasks:
            raise ValueError("--data-dir: only the task 'uci' reads a directory; add --task uci")
        if config.data_dir is None and "uci" in config.tasks:
            raise ValueError("--data-dir: task 'uci' reads a UCI directory; pass --data-dir DIR")
        if config.seeds is not None and len(config.seeds) > 1:
            raise ValueError(REGRESSION_SEEDS_ERROR)
        check_positive_int(config.seed, "--seed", minimum=0)
        for name in config.methods or []:
            check_choice(name, "--methods", REGRESSION_METHODS)
        split_chunks = 1 if config.split_chunks is None else config.split_chunks
        check_positive_int(split_chunks, "--split-chunks")
        return dataclasses.replace(config, split_chunks=split_chunks)

    def prepare(self, config: BenchConfig, log: Callable[[str], None]) -> BenchConfig:
        """Nothing to read before the run directory is written: the tables are read by :meth:`plan`."""
        return config

    def identity(self, config: BenchConfig) -> dict[str, Any]:
        """Tasks, methods (the default ones named), seed, data directory, every method's recipe, and the
        split chunks when more than one (so that runs made before chunks existed still resume)."""
        names = _method_names(config)
        identity = {
            "kind": "regression",
            "tasks": list(config.tasks),
            "methods": names,
            "seed": config.seed,
            "data_dir": None if config.data_dir is None else str(Path(config.data_dir).resolve()),
            "recipes": {name: dataclasses.asdict(REGRESSION_METHODS[name]) for name in names},
        }
        if config.split_chunks != 1:
            identity["split_chunks"] = config.split_chunks
        return identity

    def plan(self, config: BenchConfig, task: str, log: Callable[[str], None]) -> TaskPlan:
        """Every (method, chunk of splits) of the table of ``task``: the method's recipe travels with its
        cells, the table is read on the worker's disk (from an absolute ``data_dir``)."""
        directory = str(Path(config.data_dir).resolve()) if task == "uci" else None
        table = load_regression_table(task, directory)
        task_name = task if task != "uci" else f"uci-{table.name}"
        log(f"[uqkit] {task_name}: {len(table)} rows, {len(table.splits)} splits")
        names = _method_names(config)
        plan = TaskPlan(task_name, regression_task_block(task, table))
        self.out = Path(config.out)
        out = str(self.out.resolve())  # a Ray worker may run in another working directory
        for index, name in enumerate(names, start=1):
            method = REGRESSION_METHODS[name]
            chunks = method_chunks(method, config.split_chunks)
            parts = partition_splits(len(table.splits), chunks)
            test_rows = [sum(int(table.splits[i][1].numel()) for i in part) for part in parts]
            self.chunks[task_name, name] = (test_rows, tuple(getattr(method, "per_split_details", ())))
            label = f"[uqkit] {task_name} [{index}/{len(names)}] {name}"
            if chunks < config.split_chunks:
                log(f"{label}: one stack of all splits ({name} draws its search once for all of them)")
            plan.methods[name] = []
            for chunk in range(chunks):
                key = (task_name, name, chunk)
                args = (run_regression_cell, task, directory, method, config.seed, chunk, chunks, out)
                line = label + (f": splits chunk {chunk + 1} of {chunks}" if chunks > 1 else "")
                path = chunk_path(self.out, task_name, name, chunk, chunks)
                plan.cells.append(PlannedCell(Cell(key, args), path, line))
                plan.methods[name].append(key)
        return plan

    def merge(
        self, plan: TaskPlan, method: str, blocks: dict[tuple, dict[str, Any]], log: Callable[[str], None]
    ) -> dict[str, Any]:
        """The method's chunks merged (:func:`merge_chunk_blocks`) and written to
        ``methods/<task>/<method>.json``; its NLL and RMSE logged."""
        test_rows, per_split = self.chunks[plan.name, method]
        block = next(iter(blocks.values()))  # one chunk: its cell wrote the method's file
        if len(blocks) > 1:
            block = json_safe(merge_chunk_blocks(list(blocks.values()), test_rows, per_split))
            write_json(block, chunk_path(self.out, plan.name, method, 0, 1))
        nll, error = block["metrics"]["nll"], block["metrics"]["rmse"]
        log(
            f"[uqkit]   {method}: NLL {nll['mean']:.3f} ± {nll['se']:.3f}, RMSE {error['mean']:.3f} ± "
            f"{error['se']:.3f} ({block['train_time_s']:.1f} s)"
        )
        return block


def _method_names(config: BenchConfig) -> list[str]:
    """The methods of a UCI run: ``config.methods``, else :func:`default_regression_methods`."""
    return list(config.methods) if config.methods else default_regression_methods()
