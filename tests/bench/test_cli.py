"""The ``uqkit`` command: bad options and missing data give clear messages, not tracebacks."""

from __future__ import annotations

import re

import pytest

import uqkit.data.fashion_mnist_loader as fashion_mnist_loader
from uqkit.cli import main


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


def test_list_shows_tasks_and_methods(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("fashion-mnist", "fashion-mnist-holdout", "mnist1d", "two-moons"):
        assert name in out
    for name in ("deterministic", "temperature-scaled", "mc-dropout", "deep-ensemble"):
        assert name in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", "--task", "imagenet"], r"--task: expected one of fashion-mnist, .*got 'imagenet'"),
        (["bench", "--methods", "deterministic,magic"], r"--methods: unknown method 'magic'"),
        (["bench", "--model", "resnet"], r"--model: task 'fashion-mnist' supports mlp, lenet5"),
        (["bench", "--device", "tpu"], r"--device: expected 'cpu' or 'cuda\[:N\]', got 'tpu'"),
    ],
)
def test_bad_values_give_one_line_errors(capsys, tmp_path, argv, message):
    err = _error(capsys, [*argv, "--out", str(tmp_path / "run")])
    assert err.startswith("uqkit: error: ")
    assert "Traceback" not in err
    assert re.search(message, err), err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", "--epochs", "0"], "expected a positive integer, got 0"),
        (["bench", "--lr", "-1"], "expected a positive finite number"),
        (["bench", "--frobnicate"], "unrecognized arguments: --frobnicate"),
        (["launch"], "invalid choice: 'launch'"),
    ],
)
def test_bad_options_exit_with_usage(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_dataset_says_where_it_looked_and_how_to_get_it(capsys, tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("UQKIT_DATA", str(empty))
    monkeypatch.setattr(fashion_mnist_loader, "DEBIAN_DIR", tmp_path / "not-installed")
    err = _error(capsys, ["bench", "--quick", "--no-progress", "--out", str(tmp_path / "run")])
    assert "apt-get install dataset-fashion-mnist" in err
    assert str(empty) in err
    assert "Traceback" not in err


def test_resume_without_a_run_and_report_without_results(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "no earlier run found" in _error(capsys, ["bench", "--resume"])
    assert "does not exist" in _error(capsys, ["report", str(tmp_path / "nothing")])


@pytest.mark.parametrize(
    ("argv", "runner"),
    [
        ([], "uqkit.bench.runner.run_bench"),
        (["--task", "uci-boston"], "uqkit.bench.runner.run_bench"),  # the one driver, every task
    ],
)
def test_ctrl_c_says_how_to_resume(capsys, tmp_path, monkeypatch, argv, runner):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, interrupted)
    out = tmp_path / "run"
    assert main(["bench", *argv, "--out", str(out), "--no-progress"]) == 130
    captured = capsys.readouterr()
    assert f"run directory: {out}" in captured.out
    assert f"uqkit bench --resume --out {out}" in captured.err and "Traceback" not in captured.err
