"""Executors (uqkit/bench/executors.py), the suite's cells (uqkit/bench/runner.py) and the UCI chunks
(uqkit/bench/regression_cells.py): a local Ray with 2 workers equals the sequential run, a killed worker is
retried with nothing lost, dependent methods run after their base, and missing Ray says how to install it.

The Ray tests share one local Ray instance of 2 workers (about 10 s to start and warm up here); they are
skipped when Ray is not installed (``pip install 'uqkit[ray]'``, part of ``uqkit[dev]``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from uqkit.bench import regression, runner
from uqkit.bench.executors import Cell, LocalExecutor, RayExecutor, make_executor
from uqkit.bench.regression import REGRESSION_METHODS, evaluate_regression_method
from uqkit.bench.regression_cells import (
    _merge_details,
    _pooled_summary,
    chunk_seed,
    merge_chunk_blocks,
    method_chunks,
    partition_splits,
)
from uqkit.bench.report import validate_results
from uqkit.bench.run_files import json_safe
from uqkit.bench.runner import BenchConfig, RunConfigMismatchError, run_bench, run_cell
from uqkit.cli import main
from uqkit.data import load_uci_directory

pytestmark = pytest.mark.usefixtures("one_thread")

FOUR = ["temperature-scaled", "deterministic", "mc-dropout", "deep-ensemble"]  # the first reuses the second


def _config(out: Path, methods, **changes) -> BenchConfig:
    return BenchConfig(
        out=out, tasks=["two-moons"], methods=list(methods), quick=True, progress=False, **changes
    )


def _assert_close(a, b, path: str = "") -> None:
    """``a == b`` for JSON values, numbers to 1e-9 relative (a wrong seed moves them by 1e-3 or more); wall
    times (``*time_s``, ``inference_ms_per_example``) are skipped: they differ between runs by nature."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (path, sorted(a), sorted(b))
        for key in a:
            if not (key.endswith("time_s") or key == "inference_ms_per_example"):
                _assert_close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_close(x, y, f"{path}[{index}]")
    elif isinstance(a, float) and not isinstance(b, bool) and isinstance(b, (int, float)):
        assert b == pytest.approx(a, rel=1e-9, abs=1e-12), path
    else:
        assert a == b, path


# --- the local executor and the options --------------------------------------------------------------------


def _record(log: list, value: int) -> int:
    log.append(value)
    return 10 * value


def test_local_executor_runs_a_cell_after_the_cells_it_waits_for():
    ran: list[int] = []
    cells = [
        Cell(("b",), (ran, 2), after=(("a",),)),
        Cell(("a",), (ran, 1)),
        Cell(("c",), (ran, 3), (("x",),)),
    ]
    outcomes = list(LocalExecutor().map(_record, cells))
    assert ran == [1, 2, 3]  # "b" waits for "a"; "c" waits for a cell that is not in the list: none
    assert [(cell.key, result) for cell, result in outcomes] == [(("a",), 10), (("b",), 20), (("c",), 30)]
    with pytest.raises(ValueError, match="form a cycle"):
        list(
            LocalExecutor().map(
                _record, [Cell(("a",), (ran, 1), (("b",),)), Cell(("b",), (ran, 2), (("a",),))]
            )
        )
    with pytest.raises(ValueError, match="unique keys"):
        list(LocalExecutor().map(_record, [Cell(("a",), (ran, 1)), Cell(("a",), (ran, 2))]))


def test_executor_options_are_checked_before_anything_runs(tmp_path, capsys):
    with pytest.raises(ValueError, match="--workers: only with --executor ray"):
        make_executor("local", workers=2)
    with pytest.raises(ValueError, match="--executor: expected one of 'local', 'ray', got 'dask'"):
        make_executor("dask")
    with pytest.raises(ValueError, match="with --address auto the cluster's own CPUs are used"):
        make_executor("ray", workers=2, address="auto")
    out = tmp_path / "run"
    assert main(["bench", "--task", "two-moons", "--workers", "2", "--out", str(out)]) == 2
    assert "--workers: only with --executor ray" in capsys.readouterr().err
    assert main(["bench", "--task", "two-moons", "--split-chunks", "2", "--out", str(out)]) == 2
    assert "--split-chunks: only UCI regression tasks" in capsys.readouterr().err
    assert not out.exists()  # nothing was started


def test_without_ray_the_ray_executor_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'uqkit\[ray\]'"):
        RayExecutor(workers=2).start()
    argv = ["bench", "--task", "two-moons", "--quick", "--executor", "ray", "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    assert "pip install 'uqkit[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "run" / "methods").exists()


@pytest.fixture(scope="module")
def sequential_four(tmp_path_factory):
    """The four cells run one after the other in this process (the local executor), and its log."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    messages: list[str] = []
    try:
        out = tmp_path_factory.mktemp("local") / "run"
        return run_bench(_config(out, FOUR), log=messages.append), messages
    finally:
        torch.set_num_threads(threads)


def test_a_method_that_reuses_a_network_runs_after_the_method_that_trains_it(sequential_four):
    results, started = sequential_four
    order = [line.rsplit(" ", 1)[1] for line in started if line.startswith("[uqkit] two-moons [")]
    assert order.index("deterministic") < order.index("temperature-scaled")
    methods = results["tasks"]["two-moons"]["methods"]
    assert list(methods) == FOUR  # results.json keeps the run's method order
    assert methods["temperature-scaled"]["shares_training_with"] == "deterministic"
    assert methods["temperature-scaled"]["history"] == methods["deterministic"]["history"]


# --- UCI regression: chunks of splits ----------------------------------------------------------------------


def test_partition_splits_and_chunk_seeds():
    assert partition_splits(20, 3) == [range(0, 7), range(7, 14), range(14, 20)]
    assert partition_splits(20, 1) == [range(0, 20)]
    with pytest.raises(ValueError, match="--split-chunks: expected at most the table's 20 splits, got 21"):
        partition_splits(20, 21)
    assert chunk_seed(5, 0) == 5 and chunk_seed(5, 2) != chunk_seed(5, 1) != 5


def test_per_split_details_concatenate_and_a_shared_search_is_not_chunked():
    chunk_a = {"steps": [3, 6], "per_split": [0.1, 0.2], "student": {"nll": [[1.0, 2.0], [3.0, 4.0]]}}
    chunk_b = {"steps": [3, 6], "per_split": [0.3, 0.4, 0.5], "student": {"nll": [[5.0, 6.0]] * 3}}
    paths = ("details.per_split", "details.student.nll", "details.equal")
    chunk_a["equal"], chunk_b["equal"] = [7, 7], [7, 7, 7]
    merged = _merge_details([chunk_a, chunk_b], [2, 3], "details", paths)
    assert merged["steps"] == [3, 6]  # a setting, equal in every chunk: kept
    assert merged["per_split"] == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert merged["student"]["nll"] == [[1.0, 2.0], [3.0, 4.0]] + [[5.0, 6.0]] * 3
    assert merged["equal"] == [7] * 5
    # per-split lists of two equal chunks concatenate too (equal values are no sign of a setting there)
    same = {"per_split": [0.1, 0.2], "student": {"nll": [[1.0], [2.0]]}, "equal": [7, 7], "steps": [3, 6]}
    assert _merge_details([same, same], [2, 2], "details", paths)["per_split"] == [0.1, 0.2, 0.1, 0.2]
    with pytest.raises(ValueError, match=r"details\.per_split: expected one entry per split \(3\)"):
        _merge_details([chunk_a, {**chunk_b, "per_split": [0.3]}], [2, 3], "details", paths)
    with pytest.raises(ValueError, match=r"details\.other: the chunks of a method hold different values"):
        _merge_details([{"other": "a"}, {"other": "b"}], [2, 3], "details")
    # the hyper-deep ensemble draws its search once for all splits: a chunk would draw another
    assert method_chunks(REGRESSION_METHODS["hyper-deep-ensemble"], 4) == 1
    assert method_chunks(REGRESSION_METHODS["deep-ensemble"], 4) == 4


def test_pooled_mean_and_standard_error_equal_those_of_all_values():
    values = np.random.default_rng(0).normal(size=20)

    def summary(x):
        return {
            "mean": float(np.mean(x)),
            "se": float(np.std(x, ddof=1) / np.sqrt(len(x))) if len(x) > 1 else 0.0,
        }

    for sizes in ([7, 7, 6], [19, 1], [10, 10]):
        parts = np.split(values, np.cumsum(sizes)[:-1])
        pooled = _pooled_summary([summary(p) for p in parts], sizes)
        assert pooled["mean"] == pytest.approx(summary(values)["mean"], rel=1e-12)
        assert pooled["se"] == pytest.approx(summary(values)["se"], rel=1e-12)


@pytest.fixture
def tiny_methods(monkeypatch):
    """Two-epoch recipes (the recipe travels with each cell, so Ray workers train these too)."""
    for name in ("deterministic", "mc-dropout"):
        recipe = dataclasses.replace(REGRESSION_METHODS[name], epochs=2, num_samples=4, validation_samples=2)
        monkeypatch.setitem(REGRESSION_METHODS, name, recipe)


def test_a_chunked_method_is_its_chunks_run_alone_and_merged(
    run_uci, tmp_path, tiny_methods, uci_toy_directory
):
    data = uci_toy_directory
    results = run_uci(tmp_path / "run", ["mc-dropout"], data, seed=3, log=lambda _: None, split_chunks=3)
    validate_results(json.loads((tmp_path / "run" / "results.json").read_text()))
    block = results["tasks"]["uci-toy"]["methods"]["mc-dropout"]
    # oracle: each chunk alone, a table of its splits under its own seed
    table = load_uci_directory(data)
    method = REGRESSION_METHODS["mc-dropout"]
    alone, saved_times = [], []
    for chunk, part in enumerate(partition_splits(20, 3)):
        sub = dataclasses.replace(table, splits=tuple(table.splits[i] for i in part))
        alone.append(json_safe(evaluate_regression_method(method, sub, chunk_seed(3, chunk))))
        saved = json.loads(
            (tmp_path / "run" / "methods" / "uci-toy" / "mc-dropout" / f"chunk-{chunk}-of-3.json").read_text()
        )
        _assert_close(saved, alone[-1])
        saved_times.append(saved["train_time_s"])
    for key in ("nll", "rmse", "dropout", "epochs", "coverage_95"):
        assert block["per_split"][key] == [v for a in alone for v in a["per_split"][key]], key
    values = block["per_split"]["nll"]
    assert block["metrics"]["nll"]["mean"] == pytest.approx(np.mean(values), rel=1e-12)
    assert block["metrics"]["nll"]["se"] == pytest.approx(np.std(values, ddof=1) / np.sqrt(20), rel=1e-12)
    observed = np.average([a["coverage_curve"]["observed"] for a in alone], axis=0, weights=[7, 7, 6])
    assert block["coverage_curve"]["observed"] == pytest.approx(observed.tolist(), rel=1e-12)
    assert block["train_time_s"] == pytest.approx(sum(saved_times), rel=1e-12)  # compute spent, summed
    with pytest.raises(ValueError, match="no rule to merge them"):
        merge_chunk_blocks([{**alone[0], "new": 1}, {**alone[1], "new": 2}], [1, 1])


def test_a_chunked_run_resumes_its_unfinished_chunks_only(
    run_uci, tmp_path, tiny_methods, monkeypatch, uci_toy_directory
):
    data = uci_toy_directory
    run = tmp_path / "run"
    first = run_uci(run, ["deterministic"], data, log=lambda _: None, split_chunks=2)
    with pytest.raises(RunConfigMismatchError, match="differs in: split_chunks"):
        run_uci(run, ["deterministic"], data, log=lambda _: None, resume=True)
    # killed after the first chunk: the method's block and the second chunk never written
    (run / "results.json").unlink()
    (run / "methods" / "uci-toy" / "deterministic.json").unlink()
    (run / "methods" / "uci-toy" / "deterministic" / "chunk-1-of-2.json").unlink()
    sizes: list[int] = []
    original = regression.evaluate_regression_method

    def record(method, table, seed, log=None):
        sizes.append(len(table.splits))
        return original(method, table, seed, log)

    monkeypatch.setattr(regression, "evaluate_regression_method", record)
    resumed = run_uci(run, ["deterministic"], data, log=lambda _: None, resume=True, split_chunks=2)
    assert sizes == [10]  # the second chunk only
    _assert_close(first["tasks"]["uci-toy"]["methods"], resumed["tasks"]["uci-toy"]["methods"])


def test_cli_split_chunks(tmp_path, tiny_methods, capsys, uci_toy_directory):
    data = uci_toy_directory
    argv = ["bench", "--task", "uci", "--data-dir", str(data), "--methods", "deterministic", "--no-progress"]
    assert main([*argv, "--split-chunks", "21", "--out", str(tmp_path / "bad")]) == 2
    assert "--split-chunks: expected at most the table's 20 splits, got 21" in capsys.readouterr().err
    assert main([*argv, "--split-chunks", "2", "--out", str(tmp_path / "run")]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["config"]["split_chunks"] == 2
    assert results["environment"]["executor"] == "local (in process, sequential)"
    assert "splits chunk 2 of 2" in capsys.readouterr().out


# --- Ray ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_executor():
    """A local Ray instance with 2 workers of one torch thread each, shared by the tests below."""
    pytest.importorskip("ray")
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test file
    executor = RayExecutor(workers=2)
    executor.start()
    yield executor
    executor.close()


@pytest.mark.ray
def test_ray_with_two_workers_runs_four_cells_equal_to_the_sequential_run(
    ray_executor, sequential_four, tmp_path
):
    out = tmp_path / "run"
    messages: list[str] = []
    results = run_bench(_config(out, FOUR), log=messages.append, executor=ray_executor)
    assert sum("done (" in m for m in messages) == 4
    assert (
        results["environment"]["executor"].startswith("ray ")
        and "2 workers" in results["environment"]["executor"]
    )
    validate_results(json.loads((out / "results.json").read_text()))
    ray_methods = results["tasks"]["two-moons"]["methods"]
    assert list(ray_methods) == FOUR
    assert ray_methods["temperature-scaled"]["shares_training_with"] == "deterministic"  # ran after its base
    _assert_close(sequential_four[0]["tasks"]["two-moons"]["methods"], ray_methods)
    for name in FOUR:  # every cell wrote its result, so --resume skips it
        _assert_close(
            json.loads((out / "methods" / "two-moons" / f"{name}.json").read_text()), ray_methods[name]
        )
    resumed: list[str] = []
    run_bench(_config(out, FOUR, resume=True), log=resumed.append, executor=ray_executor)
    assert sum("finished earlier, kept" in m for m in resumed) == 4 and not any(
        "done (" in m for m in resumed
    )


def _dies_once(marker: Path, *args):
    """:func:`run_cell`, but where ``marker`` does not exist yet, the worker process dies in the middle of
    the cell: after training (the model file is saved), when the evaluation starts."""
    if not marker.exists():
        marker.write_text(str(os.getpid()))

        def die(*_, **__):
            os._exit(1)  # as kill -9 or the kernel's OOM killer: no exception, no cleanup

        runner.evaluate_method = die  # this worker process only; it does not outlive the cell
    else:
        marker.with_suffix(".ran").write_text(str(os.getpid()))
    return run_cell(*args)


@pytest.mark.ray
def test_a_worker_killed_mid_cell_is_retried_and_nothing_is_lost(ray_executor, sequential_four, tmp_path):
    config = _config(tmp_path / "run", ["deterministic", "mc-dropout"])
    (tmp_path / "mc-dropout.died").touch()  # only the deterministic cell dies
    cells = [
        Cell(("two-moons", name, 0), (tmp_path / f"{name}.died", config, "two-moons", name, 0))
        for name in config.methods
    ]
    outcomes = {cell.key[1]: block for cell, block in ray_executor.map(_dies_once, cells)}
    assert sorted(outcomes) == ["deterministic", "mc-dropout"]
    died, ran = (int((tmp_path / f"deterministic.{end}").read_text()) for end in ("died", "ran"))
    assert died != ran  # the first attempt's process died mid-cell; a new worker ran the cell again
    assert (tmp_path / "run" / "models" / "two-moons" / "deterministic.pt").exists()  # saved before it died
    for name, block in outcomes.items():
        _assert_close(sequential_four[0]["tasks"]["two-moons"]["methods"][name], block)
        saved = json.loads((tmp_path / "run" / "methods" / "two-moons" / f"{name}.json").read_text())
        _assert_close(saved, block)


@pytest.mark.ray
def test_ray_regression_chunks_equal_the_local_run(
    run_uci, ray_executor, tmp_path, tiny_methods, uci_toy_directory
):
    data = uci_toy_directory
    arguments = (["deterministic", "mc-dropout"], data)
    local = run_uci(tmp_path / "local", *arguments, log=lambda _: None, split_chunks=2)
    remote = run_uci(tmp_path / "ray", *arguments, log=lambda _: None, split_chunks=2, executor=ray_executor)
    validate_results(json.loads((tmp_path / "ray" / "results.json").read_text()))
    assert remote["environment"]["threads"] == 1
    _assert_close(local["tasks"], remote["tasks"])
    nll = remote["tasks"]["uci-toy"]["methods"]["mc-dropout"]["metrics"]["nll"]
    assert (
        math.isfinite(nll["mean"])
        and len(remote["tasks"]["uci-toy"]["methods"]["mc-dropout"]["per_split"]["nll"]) == 20
    )
