"""The UCI regression benchmark's cells: a (table, method, chunk of splits) each, and their merge.

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
import datetime as _dt
import functools
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from uqkit._validation import check_choice, check_positive_int
from uqkit.bench import regression
from uqkit.bench.executors import Cell, LocalExecutor
from uqkit.bench.regression import (
    REGRESSION_METHODS,
    REGRESSION_TASKS,
    default_regression_methods,
    load_regression_table,
    regression_task_block,
)
from uqkit.bench.regression_metrics import summarize_splits
from uqkit.bench.regression_stack import BATCH_SIZE, HIDDEN_UNITS
from uqkit.bench.report import SCHEMA_VERSION
from uqkit.bench.run_files import json_safe, prepare_run_dir, read_or_set_aside, write_json
from uqkit.bench.runner import environment
from uqkit.bench.upgrade import read_method_block

__all__ = [
    "chunk_path",
    "chunk_seed",
    "merge_chunk_blocks",
    "partition_splits",
    "run_cells",
    "run_regression_bench",
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
# A run's cells
# ---------------------------------------------------------------------------------------------------------
class _MethodChunks:
    """The chunks of one (task, method) of a run, collected until the method's block can be written."""

    def __init__(
        self, task_name: str, name: str, label: str, test_rows: list[int], per_split_details: Sequence[str]
    ) -> None:
        self.task_name, self.name, self.label, self.test_rows = task_name, name, label, test_rows
        self.per_split_details = per_split_details
        self.blocks: dict[int, dict[str, Any]] = {}
        self.block: dict[str, Any] | None = None  # the method's block, once every chunk is done

    def add(self, chunk: int, block: dict[str, Any], out: Path, log: Callable[[str], None]) -> None:
        """Keep a finished chunk; with the last one, merge, write ``methods/<task>/<method>.json`` (when
        chunked: the one-stack cell wrote it) and log the method's numbers."""
        self.blocks[chunk] = block
        if len(self.blocks) < len(self.test_rows):
            return
        if len(self.test_rows) == 1:
            self.done(self.blocks[0], log)
            return
        blocks = [self.blocks[c] for c in range(len(self.test_rows))]
        merged = json_safe(merge_chunk_blocks(blocks, self.test_rows, self.per_split_details))
        write_json(merged, chunk_path(out, self.task_name, self.name, 0, 1))
        self.done(merged, log)

    def done(self, block: dict[str, Any], log: Callable[[str], None]) -> None:
        self.block = block
        nll, error = block["metrics"]["nll"], block["metrics"]["rmse"]
        log(
            f"[uqkit]   {self.name}: NLL {nll['mean']:.3f} ± {nll['se']:.3f}, RMSE {error['mean']:.3f} ± "
            f"{error['se']:.3f} ({block['train_time_s']:.1f} s)"
        )


def run_cells(
    results: dict[str, Any],
    out: Path,
    tasks: Sequence[str],
    names: Sequence[str],
    data_dir: str | os.PathLike | None,
    seed: int,
    log: Callable[[str], None],
    resume: bool,
    executor: Any,
    num_chunks: int,
) -> None:
    """The body of :func:`run_regression_bench`: every (task, method, chunk of
    splits) not finished earlier is a cell (:func:`run_regression_cell`) run by ``executor``; a method's
    block goes into ``results`` (and, merged, to its file) once all its chunks are done."""
    total_started = time.perf_counter()
    directory = None if data_dir is None else str(data_dir)
    methods: dict[tuple[str, str], _MethodChunks] = {}
    cells: list[Cell] = []
    for task in tasks:
        table = load_regression_table(task, directory if task == "uci" else None)
        task_name = task if task != "uci" else f"uci-{table.name}"
        results["tasks"][task_name] = regression_task_block(task, table)
        log(f"[uqkit] {task_name}: {len(table)} rows, {len(table.splits)} splits")
        for index, name in enumerate(names, start=1):
            method = REGRESSION_METHODS[name]  # the recipe travels with the cell
            chunks = method_chunks(method, num_chunks)
            parts = partition_splits(len(table.splits), chunks)
            test_rows = [sum(int(table.splits[i][1].numel()) for i in part) for part in parts]
            label = f"[uqkit] {task_name} [{index}/{len(names)}] {name}"
            per_split = getattr(method, "per_split_details", ())
            entry = _MethodChunks(task_name, name, label, test_rows, per_split)
            methods[task_name, name] = entry
            redo = f"running {name} again"
            whole = chunk_path(out, task_name, name, 0, 1)
            kept = read_or_set_aside(whole, read_method_block, redo, log) if resume else None
            if kept is not None:
                log(entry.label)
                log(f"[uqkit]   {name}: finished in the earlier run, kept ({whole})")
                entry.done(kept, log)
                continue
            if chunks < num_chunks:
                log(f"{entry.label}: one stack of all splits ({name} draws its search once for all of them)")
            for chunk in range(chunks):
                path = chunk_path(out, task_name, name, chunk, chunks)
                block = (
                    read_or_set_aside(path, read_method_block, redo, log) if resume and chunks > 1 else None
                )
                if block is not None:
                    log(f"{entry.label}: splits chunk {chunk + 1} of {chunks} finished earlier, kept")
                    entry.add(chunk, block, out, log)
                    continue
                # a Ray worker may run in another working directory (a cluster node): absolute paths
                cell_dir = str(Path(directory).resolve()) if task == "uci" and directory is not None else None
                args = (task, cell_dir, method, seed, chunk, chunks, str(Path(out).resolve()))
                cells.append(Cell((task_name, name, chunk), args))

    def on_start(cell: Cell) -> None:
        entry, chunk = methods[cell.key[:2]], cell.key[2]
        chunks = len(entry.test_rows)
        log(entry.label + (f": splits chunk {chunk + 1} of {chunks}" if chunks > 1 else ""))

    if executor.in_process:  # the cells log to this run's log
        outcomes = executor.map(functools.partial(run_regression_cell, log=log), cells, on_start)
    else:  # a Ray worker prints; Ray forwards it to this console
        if cells:
            log(f"[uqkit] {len(cells)} cells on {executor.describe()}")
        outcomes = executor.map(run_regression_cell, cells)
    for cell, block in outcomes:
        entry, chunk = methods[cell.key[:2]], cell.key[2]
        if not executor.in_process:
            log(
                f"{entry.label}: splits chunk {chunk + 1} of {len(entry.test_rows)} done "
                f"({block['train_time_s']:.1f} s)"
            )
            path = chunk_path(out, entry.task_name, entry.name, chunk, len(entry.test_rows))
            if not path.exists():  # a cluster node that does not share the run directory: written here
                write_json(block, path)
        entry.add(chunk, block, out, log)
    for (task_name, name), entry in methods.items():
        results["tasks"][task_name]["methods"][name] = entry.block
    results["total_time_s"] = time.perf_counter() - total_started
    results["environment"]["threads"] = (
        torch.get_num_threads() if executor.in_process else executor.threads_per_worker
    )


def _run_identity(
    tasks: Sequence[str],
    names: Sequence[str],
    data_dir: str | os.PathLike | None,
    seed: int,
    split_chunks: int = 1,
) -> dict[str, Any]:
    """What a resumed run must share with the run it continues (the split chunks only when more than one,
    so that runs made before chunks existed still resume)."""
    identity = {
        "kind": "regression",
        "tasks": list(tasks),
        "methods": list(names),
        "seed": seed,
        "data_dir": None if data_dir is None else str(Path(data_dir).resolve()),
        "recipes": {name: dataclasses.asdict(REGRESSION_METHODS[name]) for name in names},
    }
    if split_chunks != 1:
        identity["split_chunks"] = split_chunks
    return identity


def run_regression_bench(
    out: str | os.PathLike,
    tasks: Sequence[str],
    methods: Sequence[str] | None = None,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    command: str = "",
    log: Callable[[str], None] = print,
    resume: bool = False,
    executor: Any = None,
    split_chunks: int = 1,
) -> dict[str, Any]:
    """Run regression ``methods`` (default: :func:`default_regression_methods`) on ``tasks``; write
    ``results.json`` and the report.

    Each finished method's block is also written (atomically) to ``methods/<task>/<method>.json`` as soon as
    it is done, and the run's identity (tasks, methods, seed, data directory and every method's recipe) to
    ``config.json``. A run directory that holds a run is only continued with ``resume=True`` and the same
    identity; finished methods are then read back instead of retrained.
    The run uses one torch thread (restored afterwards): its batched products are far too small to gain
    from more, and on a busy machine every OpenMP region can stall.

    Args:
        out: the run directory.
        tasks: names from :data:`REGRESSION_TASKS` (``uci`` reads ``data_dir``).
        methods: names from :data:`REGRESSION_METHODS`, or None for the default ones (all but the opt-in).
        data_dir: a UCI-format directory for the ``uci`` task.
        seed: the run's seed.
        command: the command line, recorded in the results.
        log: progress printer.
        resume: continue the run in ``out`` (``uqkit bench --resume``), keeping its finished methods.
        executor: where the (table, method, chunk) cells run (:mod:`uqkit.bench.executors`; default: this
            process, one after the other).
        split_chunks: train each method's splits as this many stacks, one cell each
            (the module docstring; 1, the default: one stack of all splits).

    Returns:
        The results dict written to ``out/results.json``.

    Raises:
        RunConfigMismatchError: ``out`` holds a run and ``resume`` is False, or it holds a different run.
    """
    for task in tasks:
        check_choice(task, "--task", REGRESSION_TASKS)
    names = list(methods) if methods else default_regression_methods()
    for name in names:
        check_choice(name, "--methods", REGRESSION_METHODS)
    check_positive_int(seed, "--seed", minimum=0)
    check_positive_int(split_chunks, "--split-chunks")
    executor = executor if executor is not None else LocalExecutor()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prepare_run_dir(out, _run_identity(tasks, names, data_dir, seed, split_chunks), resume, command)
    results: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "created": "",
        "command": command,
        "environment": {**environment("cpu"), "executor": executor.describe()},
        "config": {
            "tasks": list(tasks),
            "methods": list(methods) if methods else None,
            "epochs": None,
            "seed": seed,
            "quick": False,
            "batch_size": BATCH_SIZE,
            "model": f"mlp-{HIDDEN_UNITS}",
            "device": "cpu",
            "data_dir": None if data_dir is None else str(data_dir),
            "split_chunks": split_chunks,
        },
        "tasks": {},
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the stacked products are small: threads only add OpenMP synchronisation
    try:
        run_cells(results, out, tasks, names, data_dir, seed, log, resume, executor, split_chunks)
    finally:
        torch.set_num_threads(threads)
    results["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    write_json(results, out / "results.json")
    return results
