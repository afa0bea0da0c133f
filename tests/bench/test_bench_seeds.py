"""``uqkit bench --seeds``: a cell per (task, method, seed), per-seed files, means, resume, significance."""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from uqkit.bench import runner
from uqkit.bench.report import (
    build_leaderboard,
    format_leaderboard,
    leaderboard_markdown,
    validate_results,
    write_report,
)
from uqkit.bench.runner import BenchConfig, run_bench
from uqkit.bench.seeds import aggregate_seed_blocks, paired_t_test
from uqkit.cli import main

METHODS = ["deterministic", "temperature-scaled"]  # the second reuses the first's network
TASK = "fashion-mnist"


def _config(out: Path, **overrides) -> BenchConfig:
    return BenchConfig(out=out, methods=list(METHODS), quick=True, progress=False, **overrides)


def _without_timings(block: dict) -> dict:
    """A method's results minus the wall-clock fields (and the summary, which holds their means)."""
    drop = ("train_time_s", "inference_ms_per_example", "summary")
    block = {k: v for k, v in block.items() if k not in drop}
    block["history"] = [{k: v for k, v in h.items() if k != "time_s"} for h in block["history"]]
    if "seeds" in block:
        block["seeds"] = {seed: _without_timings(seed_block) for seed, seed_block in block["seeds"].items()}
    return block


@pytest.fixture(scope="module")
def fake_data(fake_fashion_mnist_dir):
    previous = os.environ.get("UQKIT_DATA")
    os.environ["UQKIT_DATA"] = str(fake_fashion_mnist_dir)
    yield fake_fashion_mnist_dir
    if previous is None:
        del os.environ["UQKIT_DATA"]
    else:
        os.environ["UQKIT_DATA"] = previous


@pytest.fixture(scope="module")
def two_seed_run(fake_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("seeds") / "run"
    return out, run_bench(_config(out, seeds=[0, 1]), log=lambda *_: None)


@pytest.fixture(scope="module")
def seed_one_run(fake_data, tmp_path_factory):
    """A one-seed run with seed 1, given as a one-element seed list."""
    out = tmp_path_factory.mktemp("seed1") / "run"
    return out, run_bench(_config(out, seeds=[1]), log=lambda *_: None)


def test_two_seeds_write_per_seed_cells_and_their_means(two_seed_run):
    out, results = two_seed_run
    assert json.loads((out / "results.json").read_text()) == results
    validate_results(results)
    assert results["config"]["seeds"] == [0, 1] and results["config"]["seed"] == 0
    for seed in (0, 1):
        for name in METHODS:
            assert (out / "methods" / TASK / f"seed-{seed}" / f"{name}.json").exists()
            assert (out / "models" / TASK / f"seed-{seed}" / f"{name}.pt").exists()
    assert not (out / "methods" / TASK / "deterministic.json").exists()
    methods = results["tasks"][TASK]["methods"]
    for name in METHODS:
        block = methods[name]
        assert list(block["seeds"]) == ["0", "1"]
        per_seed = [block["seeds"][seed] for seed in ("0", "1")]
        assert per_seed[0] == json.loads((out / "methods" / TASK / "seed-0" / f"{name}.json").read_text())
        for key in ("accuracy", "nll", "brier", "ece", "aurc"):
            values = [seed_block["metrics"][key] for seed_block in per_seed]
            assert block["metrics"][key] == pytest.approx(np.mean(values), abs=1e-15), (name, key)
            summary = block["summary"][f"metrics.{key}"]
            assert summary["n"] == 2 and summary["mean"] == block["metrics"][key]
            assert summary["se"] == pytest.approx(abs(values[0] - values[1]) / 2, abs=1e-15)  # s/sqrt(2)
        auroc = [seed_block["ood"]["digits"]["total"]["auroc"] for seed_block in per_seed]
        assert block["ood"]["digits"]["total"]["auroc"] == pytest.approx(np.mean(auroc), abs=1e-15)
        # different seeds: different validation split, quick subsets, initialisation and batches
        assert per_seed[0]["metrics"]["nll"] != per_seed[1]["metrics"]["nll"], name
    # temperature scaling reused the same seed's deterministic network: same history, same accuracy
    for seed in ("0", "1"):
        scaled, plain = methods["temperature-scaled"]["seeds"][seed], methods["deterministic"]["seeds"][seed]
        assert scaled["shares_training_with"] == "deterministic"
        assert scaled["history"] == plain["history"]
        assert scaled["metrics"]["accuracy"] == plain["metrics"]["accuracy"]


def test_a_seed_of_a_multi_seed_run_equals_the_one_seed_run_whose_layout_is_unchanged(
    two_seed_run, seed_one_run
):
    multi = two_seed_run[1]["tasks"][TASK]["methods"]
    out, single = seed_one_run
    assert "seeds" not in single["config"] and single["config"]["seed"] == 1
    assert sorted(p.name for p in (out / "methods" / TASK).iterdir()) == [f"{name}.json" for name in METHODS]
    assert sorted(p.name for p in (out / "models" / TASK).iterdir()) == [f"{name}.pt" for name in METHODS]
    for name in METHODS:
        block = single["tasks"][TASK]["methods"][name]
        assert "seeds" not in block and "summary" not in block
        assert _without_timings(block) == _without_timings(multi[name]["seeds"]["1"]), name
    board = build_leaderboard(single, TASK)
    assert board.seeds == () and board.errors is None and board.tied is None
    assert "±" not in format_leaderboard(single) and "paired t-test" not in format_leaderboard(single)


def test_resume_reruns_only_the_missing_cell(two_seed_run, tmp_path, monkeypatch):
    source, results = two_seed_run
    out = tmp_path / "run"
    shutil.copytree(source, out)
    (out / "methods" / TASK / "seed-1" / "temperature-scaled.json").unlink()
    (out / "results.json").unlink()
    ran, trained = [], []
    run_method, train_method = runner._run_method, runner.train_method

    def record_run(config, task, name, *args, **kwargs):
        ran.append((name, config.seed))
        return run_method(config, task, name, *args, **kwargs)

    def record_training(method, name, *args, **kwargs):
        trained.append(name)
        return train_method(method, name, *args, **kwargs)

    monkeypatch.setattr(runner, "_run_method", record_run)
    monkeypatch.setattr(runner, "train_method", record_training)
    with pytest.raises(runner.RunConfigMismatchError, match="seeds"):
        run_bench(_config(out, seeds=[0, 1, 2], resume=True), log=lambda *_: None)
    resumed = run_bench(_config(out, seeds=[0, 1], resume=True), log=lambda *_: None)
    assert ran == [("temperature-scaled", 1)]  # one cell evaluated again ...
    assert trained == []  # ... from its saved model, nothing trained
    for name in METHODS:
        before, after = results["tasks"][TASK]["methods"][name], resumed["tasks"][TASK]["methods"][name]
        assert _without_timings(before) == _without_timings(after), name


def _three_seed_results(results: dict, nll: dict[str, list[float]]) -> dict:
    """``results`` of the two-seed run made into three seeds whose test NLLs are ``nll[method]``."""
    results = copy.deepcopy(results)
    results["config"]["seeds"] = [0, 1, 2]
    for name, values in nll.items():
        method = results["tasks"][TASK]["methods"][name]
        blocks = {seed: copy.deepcopy(method["seeds"][str(seed % 2)]) for seed in range(3)}
        for seed, value in enumerate(values):
            blocks[seed]["metrics"]["nll"] = value
        results["tasks"][TASK]["methods"][name] = aggregate_seed_blocks(blocks)
    validate_results(results)
    return results


def test_leaderboard_shows_standard_errors_and_marks_differences_that_are_not_significant(two_seed_run):
    best = [0.500, 0.520, 0.510]
    for other, significant in (([0.503, 0.518, 0.514], False), ([0.540, 0.561, 0.549], True)):
        results = _three_seed_results(two_seed_run[1], {"temperature-scaled": best, "deterministic": other})
        board = build_leaderboard(results, TASK)
        column = [c.header for c in board.columns].index("NLL")
        assert board.seeds == ("0", "1", "2")
        assert board.methods == ("temperature-scaled", "deterministic")
        assert board.best[0][column] and not board.best[1][column]
        assert board.values[1][column] == pytest.approx(np.mean(other), abs=1e-12)
        assert board.errors[1][column] == pytest.approx(np.std(other, ddof=1) / math.sqrt(3), abs=1e-12)
        assert (paired_t_test(other, best)[1] < 0.05) is significant
        assert board.tied[1][column] is (not significant)
        assert board.marks()[1][column] == ("" if significant else "tied")
        text = format_leaderboard(results)
        nll_cell = f"{np.mean(other):.3f} ± {np.std(other, ddof=1) / math.sqrt(3):.3f}"
        assert nll_cell + ("" if significant else "~") in text
        assert "paired t-test over seeds, two-sided, alpha = 0.05" in " ".join(text.split())  # wrapped
        markdown = leaderboard_markdown(results)
        assert (f"_{nll_cell}_" in markdown) is (not significant)
        assert f"**{np.mean(best):.3f} ± " in markdown


def test_multi_seed_report_is_written_and_names_the_test(two_seed_run, tmp_path):
    results = two_seed_run[1]
    paths = write_report(results, tmp_path)
    html = Path(paths["html"]).read_text()
    markdown = Path(paths["markdown"]).read_text()
    for text in (html, markdown):
        assert "Mean ± standard error over 2 seeds (0, 1)" in text
        assert "paired t-test over seeds" in text
        assert "show seed 0 alone" in text
    broken = copy.deepcopy(results)
    broken["config"]["seeds"] = [0, 2]
    with pytest.raises(ValueError, match=r"\.seeds: expected one block per seed of results.config.seeds"):
        validate_results(broken)


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--seeds", "0,0,1"], "expected distinct seeds, got 0 more than once"),
        (["--seeds", "0,-1"], "expected a comma-separated list of non-negative integers"),
        (["--seeds", "0,1", "--num-seeds", "2"], "not allowed with argument"),
        (["--num-seeds", "0"], "expected a positive integer, got 0"),
    ],
)
def test_bad_seed_options_exit_with_usage(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_seed_options_resolve_and_regression_refuses_several_seeds(capsys, tmp_path, monkeypatch):
    err = _error(capsys, ["bench", "--seed", "1", "--seeds", "0,1", "--out", str(tmp_path / "a")])
    assert "--seed and --seeds: give the seeds in one of them" in err
    err = _error(capsys, ["bench", "--task", "uci-boston", "--seeds", "0,1", "--out", str(tmp_path / "b")])
    assert "take one seed" in err and "20 train/test splits" in err
    data = tmp_path / "regression.npz"  # your regression data: refused before the run directory is written
    inputs = np.random.default_rng(0).normal(size=(40, 3)).astype("float32")
    np.savez(data, x_train=inputs[:30], y_train=inputs[:30, 0], x_test=inputs[30:], y_test=inputs[30:, 0])
    config = BenchConfig(
        out=tmp_path / "c", data=data, methods=["deterministic"], seeds=[0, 1], progress=False
    )
    with pytest.raises(ValueError, match="take one seed"):
        run_bench(config, log=lambda *_: None)
    assert not (tmp_path / "c").exists()
    configs = []
    monkeypatch.setattr(runner, "run_bench", lambda config, log, executor=None: configs.append(config) or {})
    monkeypatch.setattr("uqkit.cli._finish_report", lambda *args: tmp_path / "report.html")
    for argv in (["--seed", "5", "--num-seeds", "3"], ["--num-seeds", "2"], ["--seeds", "4"], []):
        assert main(["bench", *argv, "--out", str(tmp_path / f"run{len(configs)}")]) == 0
    assert [(c.seed, c.seeds) for c in configs] == [(5, [5, 6, 7]), (0, [0, 1]), (4, None), (0, None)]
