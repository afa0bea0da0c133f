"""End to end: a --quick run writes every documented key and every figure; resume after a kill."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from uqkit.bench import runner
from uqkit.bench.registry import methods_for_task
from uqkit.bench.report import validate_results
from uqkit.bench.runner import BenchConfig, run_bench
from uqkit.cli import main

SPINE_METHODS = ["deterministic", "temperature-scaled", "mc-dropout", "deep-ensemble"]


def _config(out: Path, methods, **overrides) -> BenchConfig:
    return BenchConfig(out=out, methods=list(methods), quick=True, progress=False, **overrides)


def _without_timings(block: dict) -> dict:
    """A method's results minus the wall-clock fields, which differ between runs by nature."""
    block = {k: v for k, v in block.items() if k not in ("train_time_s", "inference_ms_per_example")}
    block["history"] = [{k: v for k, v in h.items() if k != "time_s"} for h in block["history"]]
    return block


@pytest.fixture(scope="module")
def quick_run(fake_fashion_mnist_dir, tmp_path_factory):
    """One ``uqkit bench --quick`` run through the command line, shared by the checks below."""
    out = tmp_path_factory.mktemp("quick") / "run"
    previous = os.environ.get("UQKIT_DATA")
    os.environ["UQKIT_DATA"] = str(fake_fashion_mnist_dir)
    try:
        status = main(["bench", "--quick", "--no-progress", "--out", str(out)])
    finally:
        if previous is None:
            del os.environ["UQKIT_DATA"]
        else:
            os.environ["UQKIT_DATA"] = previous
    assert status == 0
    return out


def test_quick_run_writes_every_documented_key(quick_run):
    results = json.loads((quick_run / "results.json").read_text())
    validate_results(results)  # every key of docs/results-schema.md, with its type
    assert results["schema_version"] == 2
    assert {"uqkit", "torch", "python", "cpu", "threads"} <= set(results["environment"])
    assert results["command"].startswith("uqkit bench --quick")
    task = results["tasks"]["fashion-mnist"]
    assert list(task["methods"]) == methods_for_task("fashion-mnist")
    assert set(SPINE_METHODS) <= set(task["methods"])
    for name, block in task["methods"].items():
        assert 0.0 <= block["metrics"]["accuracy"] <= 1.0, name
        assert block["metrics"]["nll"] > 0
        assert set(block["ood"]) == {"digits"}
        for kind in ("total", "epistemic"):
            assert 0.0 <= block["ood"]["digits"][kind]["auroc"] <= 1.0
        assert block["shift"]["values"] == [float(a) for a in range(0, 181, 15)]
        assert len(block["shift"]["accuracy"]) == 13
        assert block["num_parameters"] > 0 and block["inference_ms_per_example"] > 0
        assert len(block["history"]) == 1
        conformal = block["conformal"]  # calibrated on the 40 validation images, scored on the 200 test ones
        assert conformal["num_calibration"] == task["num_val"] and conformal["alphas"] == [0.1, 0.05]
        for score in ("lac", "aps"):
            assert all(0.0 <= value <= 1.0 for value in conformal[score]["coverage"]), (name, score)
            assert all(1.0 <= size <= 10.0 for size in conformal[score]["mean_set_size"]), (name, score)
    # S = 1 methods carry no epistemic uncertainty; ensembles and MC dropout do.
    assert task["methods"]["deterministic"]["num_samples"] == 1
    assert task["methods"]["deep-ensemble"]["num_samples"] == 5
    assert task["methods"]["deterministic"]["ood"]["digits"]["epistemic"]["auroc"] == 0.5
    assert task["methods"]["deep-ensemble"]["ood"]["digits"]["epistemic"]["auroc"] != 0.5


def test_temperature_scaled_reuses_the_deterministic_network(quick_run):
    methods = json.loads((quick_run / "results.json").read_text())["tasks"]["fashion-mnist"]["methods"]
    scaled, plain = methods["temperature-scaled"], methods["deterministic"]
    assert scaled["shares_training_with"] == "deterministic"
    assert scaled["history"] == plain["history"]
    # Scaling by one temperature never changes the predicted class.
    assert scaled["metrics"]["accuracy"] == plain["metrics"]["accuracy"]


def test_quick_run_writes_a_self_contained_report_with_every_plot(quick_run):
    figures = sorted(p.name for p in (quick_run / "figures").glob("*.png"))
    for kind in ("reliability", "referral", "ood", "shift", "risk", "conformal"):
        assert any(kind in name for name in figures), (kind, figures)
    html = (quick_run / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(figures)
    assert 'src="http' not in html
    markdown = (quick_run / "report.md").read_text()
    for name in figures:
        assert f"figures/{name}" in markdown


def test_report_command_rebuilds_the_same_markdown(quick_run, capsys):
    before = (quick_run / "report.md").read_text()
    (quick_run / "report.md").unlink()
    assert main(["report", str(quick_run)]) == 0
    assert (quick_run / "report.md").read_text() == before
    assert "deep-ensemble" in capsys.readouterr().out  # the leaderboard


def test_resume_after_interrupt_skips_finished_methods_and_matches(fake_fashion_mnist, tmp_path, monkeypatch):
    methods = ["deterministic", "mc-dropout"]
    uninterrupted = run_bench(_config(tmp_path / "uninterrupted", methods), log=lambda *_: None)

    trained: list[str] = []
    interrupts = [KeyboardInterrupt]  # Ctrl-C once, when the second method starts training
    original = runner.train_method

    def interrupt_second_method(method, name, *args, **kwargs):
        trained.append(name)
        if name == "mc-dropout" and interrupts:
            raise interrupts.pop()
        return original(method, name, *args, **kwargs)

    monkeypatch.setattr(runner, "train_method", interrupt_second_method)
    out = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        run_bench(_config(out, methods), log=lambda *_: None)
    assert (out / "methods" / "fashion-mnist" / "deterministic.json").exists()
    assert not (out / "results.json").exists()

    trained.clear()
    with pytest.raises(runner.RunConfigMismatchError, match="--resume"):
        run_bench(_config(out, methods), log=lambda *_: None)  # no --resume: refuses to overwrite
    with pytest.raises(runner.RunConfigMismatchError, match="was started with"):
        run_bench(_config(out, methods, seed=3, resume=True), log=lambda *_: None)
    resumed = run_bench(_config(out, methods, resume=True), log=lambda *_: None)
    assert trained == ["mc-dropout"]  # the finished method was not retrained
    for name in methods:
        a = _without_timings(uninterrupted["tasks"]["fashion-mnist"]["methods"][name])
        b = _without_timings(resumed["tasks"]["fashion-mnist"]["methods"][name])
        assert a == b, name


def test_resume_after_sigkill(fake_fashion_mnist, tmp_path):
    """A real SIGKILL in the middle of the second method: the first stays finished, the run completes."""
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "uqkit.cli", "bench", "--quick", "--no-progress", "--epochs", "40",
        "--methods", "deterministic,deep-ensemble", "--out", str(out),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "methods" / "fashion-mnist" / "deterministic.json"
    checkpoint = out / "checkpoints" / "fashion-mnist" / "deep-ensemble.pt"
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert first.exists() and checkpoint.exists(), "the run ended before the kill could land"
    finished = first.read_bytes()
    results = run_bench(
        _config(out, ["deterministic", "deep-ensemble"], epochs=40, resume=True), log=lambda *_: None
    )
    assert first.read_bytes() == finished  # the finished result was kept as it was
    history = results["tasks"]["fashion-mnist"]["methods"]["deep-ensemble"]["history"]
    assert [h["epoch"] for h in history] == list(range(1, 41))
    assert all(math.isfinite(h["train_loss"]) for h in history)


# --- corrupt files in a run directory: named, set aside (never deleted), redone; finished methods kept ---

CORRUPT_METHODS = ["deterministic", "mc-dropout"]


@pytest.fixture(scope="module")
def finished_run(fake_fashion_mnist_dir, tmp_path_factory):
    """A finished two-method quick run; each test below corrupts a copy of it and resumes."""
    out = tmp_path_factory.mktemp("finished") / "run"
    previous = os.environ.get("UQKIT_DATA")
    os.environ["UQKIT_DATA"] = str(fake_fashion_mnist_dir)
    try:
        results = run_bench(_config(out, CORRUPT_METHODS), log=lambda *_: None)
    finally:
        if previous is None:
            del os.environ["UQKIT_DATA"]
        else:
            os.environ["UQKIT_DATA"] = previous
    return out, results


def _truncate(path: Path) -> bytes:
    """Cut ``path`` to half its size, as a full disk or a cut copy leaves it; returns the cut bytes."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return data[: len(data) // 2]


def _resume_copy(finished_run, tmp_path, monkeypatch, corrupt):
    """Copy the finished run, let ``corrupt(run_dir)`` damage it, resume; returns what the resume did."""
    source, uninterrupted = finished_run
    out = tmp_path / "run"
    shutil.copytree(source, out)
    (out / "results.json").unlink()  # as a run killed before its end leaves it
    corrupt(out)
    finished = (out / "methods" / "fashion-mnist" / "deterministic.json").read_bytes()
    trained: list[str] = []
    original = runner.train_method

    def record(method, name, *args, **kwargs):
        trained.append(name)
        return original(method, name, *args, **kwargs)

    monkeypatch.setattr(runner, "train_method", record)
    messages: list[str] = []
    resumed = run_bench(_config(out, CORRUPT_METHODS, resume=True), log=messages.append)
    # the finished method is kept, byte for byte, and every result equals the uninterrupted run's
    assert (out / "methods" / "fashion-mnist" / "deterministic.json").read_bytes() == finished
    for name in CORRUPT_METHODS:
        a = _without_timings(uninterrupted["tasks"]["fashion-mnist"]["methods"][name])
        b = _without_timings(resumed["tasks"]["fashion-mnist"]["methods"][name])
        assert a == b, name  # the same ops replayed in the same process: exactly equal
    validate_results(json.loads((out / "results.json").read_text()))
    return out, trained, [m for m in messages if "warning" in m]


def _check_set_aside(out: Path, relative: str, cut: bytes, warnings: list[str]) -> None:
    """One warning naming the file and the problem; the bad bytes kept beside it as ``<name>.corrupt``."""
    path = out / relative
    assert len(warnings) == 1, warnings
    assert str(path) in warnings[0] and "unreadable" in warnings[0] and ".corrupt" in warnings[0]
    assert path.with_name(path.name + ".corrupt").read_bytes() == cut
    assert path.exists()  # written again by the redone work


def test_corrupt_model_file_is_set_aside_and_the_method_retrained_from_its_checkpoint(
    fake_fashion_mnist, finished_run, tmp_path, monkeypatch
):
    relative = "models/fashion-mnist/mc-dropout.pt"
    cut = b""

    def corrupt(out: Path) -> None:
        nonlocal cut
        (out / "methods" / "fashion-mnist" / "mc-dropout.json").unlink()  # killed during evaluation
        cut = _truncate(out / relative)

    out, trained, warnings = _resume_copy(finished_run, tmp_path, monkeypatch, corrupt)
    _check_set_aside(out, relative, cut, warnings)
    assert "PytorchStreamReader" in warnings[0]  # torch's own reason, on one line
    assert trained == ["mc-dropout"]  # resumed from its last (complete) epoch checkpoint


def test_corrupt_checkpoint_is_set_aside_and_the_method_trained_from_scratch(
    fake_fashion_mnist, finished_run, tmp_path, monkeypatch
):
    relative = "checkpoints/fashion-mnist/mc-dropout.pt"
    cut = b""

    def corrupt(out: Path) -> None:
        nonlocal cut
        (out / "methods" / "fashion-mnist" / "mc-dropout.json").unlink()  # killed during training
        (out / "models" / "fashion-mnist" / "mc-dropout.pt").unlink()
        cut = _truncate(out / relative)

    out, trained, warnings = _resume_copy(finished_run, tmp_path, monkeypatch, corrupt)
    _check_set_aside(out, relative, cut, warnings)
    assert "from scratch" in warnings[0]
    assert trained == ["mc-dropout", "mc-dropout"]  # the failed resume, then from scratch


def test_corrupt_method_results_are_set_aside_and_the_method_evaluated_again(
    fake_fashion_mnist, finished_run, tmp_path, monkeypatch
):
    relative = "methods/fashion-mnist/mc-dropout.json"
    cut = b""

    def corrupt(out: Path) -> None:
        nonlocal cut
        cut = _truncate(out / relative)

    out, trained, warnings = _resume_copy(finished_run, tmp_path, monkeypatch, corrupt)
    _check_set_aside(out, relative, cut, warnings)
    assert "invalid JSON" in warnings[0]
    assert trained == []  # its model file is intact: evaluated again, not retrained


def test_corrupt_config_stops_resume_with_the_file_named(fake_fashion_mnist, finished_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished_run[0], out)
    (out / "config.json").write_text('{"identity": {"tasks": ["fashion-mnist"], ')
    argv = ["bench", "--quick", "--no-progress", "--methods", ",".join(CORRUPT_METHODS), "--out", str(out)]
    assert main([*argv, "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("uqkit: error: ") and "Traceback" not in err
    assert f"{out / 'config.json'}: unreadable, invalid JSON" in err


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('{\n "schema_version": 1,\n', "invalid JSON"),
        ("", "empty file"),
        ("[1, 2]", "expected a JSON object, got a JSON array"),
        ('{"schema_version": 1}', "not a valid results file: results: missing key"),
    ],
)
def test_report_on_a_corrupt_results_file_names_it(tmp_path, capsys, content, problem):
    (tmp_path / "results.json").write_text(content)
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("uqkit: error: ") and "Traceback" not in err
    assert str(tmp_path / "results.json") in err and problem in err
    assert not (tmp_path / "report.md").exists()
