"""End to end: ``uqkit bench --model FACTORY --data PATH`` on a tiny .npz, CSV (classification and regression)
and image folder; methods that cannot be built on the model are listed with the reason; --resume; and every
bad input stops before training with an error naming the file, no traceback, only the run's log written."""

from __future__ import annotations

import csv
import json
import math
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from uqkit.bench import runner
from uqkit.bench.evaluate_regression import evaluate_regression
from uqkit.bench.registry import Method
from uqkit.bench.report import validate_results
from uqkit.bench.runner import BenchConfig, run_bench
from uqkit.bench.user_task import build_user_task
from uqkit.cli import main

FACTORIES = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Custom(nn.Module):  # not an nn.Sequential: SNGP and the heteroscedastic head cannot split it
        def __init__(self):
            super().__init__()
            self.inp, self.out = nn.Linear(4, 16), nn.Linear(16, 3)

        def forward(self, x):
            return self.out(torch.relu(self.inp(x)))

    def custom():
        return Custom()

    def table():
        return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 3))

    def regressor():
        return nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 2))

    def image():
        return nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.ReLU(), nn.Linear(16, 2))

    def not_a_module():
        return [nn.Linear(4, 3)]

    def five_outputs():
        return nn.Linear(4, 5)

    class Dict(nn.Module):
        def forward(self, x):
            return {"logits": x[:, :3]}

    def a_dict():
        return Dict()
    """
)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A factory file, a tiny 3-class .npz with an OOD set, a 3-class CSV with text labels, a regression CSV
    in large units, and a 2-class image folder."""
    root = tmp_path_factory.mktemp("user")
    (root / "factories.py").write_text(FACTORIES)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 4)).astype(np.float32)
    y = np.digitize(x[:, 0] + 0.5 * x[:, 1], [-0.5, 0.5])  # 3 classes
    np.savez(
        root / "tiny.npz",
        x_train=x[:60],
        y_train=y[:60],
        x_test=x[60:],
        y_test=y[60:],
        x_ood=rng.normal(size=(20, 4)) * 6,
    )
    names = np.array(["low", "mid", "high"])[y]
    with open(root / "classes.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["a", "b", "c", "d", "kind of thing"])
        writer.writerows([[*row.tolist(), name] for row, name in zip(x, names, strict=True)])
    target = 50.0 + 20.0 * (x[:, 0] - x[:, 2]) + rng.normal(size=90)  # std about 28, noise 1
    with open(root / "prices.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["a", "b", "c", "d", "price"])
        writer.writerows([[*row.tolist(), value] for row, value in zip(x, target, strict=True)])
    from PIL import Image

    for label, name in enumerate(("ants", "bees")):
        for i in range(12):
            pixels = (rng.random((6, 6)) * 100).astype(np.uint8)
            pixels[3 * label : 3 * label + 3] += 150
            (root / "images" / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / "images" / name / f"{i}.png")
    return {name: root / name for name in ("factories.py", "tiny.npz", "classes.csv", "prices.csv", "images")}


def _bench(files, out: Path, data: str, model: str, *extra: str) -> int:
    argv = ["bench", "--data", str(files[data]), "--model", f"{files['factories.py']}:{model}"]
    return main([*argv, *extra, "--epochs", "1", "--no-progress", "--out", str(out)])


def _results(out: Path) -> dict:
    results = json.loads((out / "results.json").read_text())
    validate_results(results)
    return results


def test_npz_run_lists_the_methods_the_model_cannot_take(files, tmp_path, capsys):
    methods = "deterministic,temperature-scaled,deep-ensemble,mimo,sngp,mc-dropout"
    assert _bench(files, tmp_path / "run", "tiny.npz", "custom", "--methods", methods) == 0
    printed = capsys.readouterr().out
    results = _results(tmp_path / "run")
    task = results["tasks"]["tiny"]
    assert task["num_classes"] == 3 and task["input_shape"] == [4] and task["num_test"] == 30
    assert set(task["methods"]) == {"deterministic", "temperature-scaled", "deep-ensemble", "mimo"}
    reasons = task["not_applicable"]
    assert set(reasons) == {"sngp", "mc-dropout"}
    assert "expected a sequential backbone ending with an nn.Linear" in reasons["sngp"]
    assert "nn.Dropout" in reasons["mc-dropout"]
    assert set(task["ood_sets"]) == {"ood"} and "auroc" in task["methods"]["mimo"]["ood"]["ood"]["total"]
    assert (
        task["methods"]["deep-ensemble"]["num_samples"] == 5 and task["methods"]["mimo"]["num_samples"] == 2
    )
    line = f"sngp: not applicable: {reasons['sngp']}"
    assert line in printed  # the leaderboard
    report = (tmp_path / "run" / "report.md").read_text()
    assert "### Not applicable" in report and "mc-dropout: not applicable" in report
    assert "Not applicable" in (tmp_path / "run" / "report.html").read_text()
    assert line in (tmp_path / "run" / "log.txt").read_text()


def test_csv_classification_with_text_labels(files, tmp_path):
    argv = ["--target", "kind of thing", "--methods", "deterministic,temperature-scaled,heteroscedastic"]
    assert _bench(files, tmp_path / "run", "classes.csv", "table", *argv) == 0
    task = _results(tmp_path / "run")["tasks"]["classes"]
    assert task["num_classes"] == 3 and task["not_applicable"] == {}
    assert task["num_test"] == 18 and task["num_train"] + task["num_val"] == 72  # 20% test, seeded
    assert set(task["methods"]) == {"deterministic", "temperature-scaled", "heteroscedastic"}
    assert "test set: 20% of the rows" in task["description"]


def test_csv_regression_learns_and_reports_in_the_targets_units(files, tmp_path, capsys):
    methods = "deterministic,deep-ensemble,mimo,temperature-scaled,mc-dropout,flipout-bnn"
    argv = ["--target", "price", "--methods", methods]
    out = tmp_path / "run"
    status = main(
        [
            "bench",
            "--data",
            str(files["prices.csv"]),
            "--model",
            f"{files['factories.py']}:regressor",
            *argv,
            "--epochs",
            "40",
            "--batch-size",
            "16",
            "--lr",
            "0.01",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    assert status == 0
    printed = capsys.readouterr().out
    task = _results(out)["tasks"]["prices"]
    assert task["kind"] == "regression" and task["num_splits"] == 1 and task["num_targets"] == 1
    assert set(task["not_applicable"]) == {"temperature-scaled", "mc-dropout"}
    assert task["not_applicable"]["temperature-scaled"].startswith("classification only")
    assert set(task["methods"]) == {"deterministic", "deep-ensemble", "mimo", "flipout-bnn"}
    deterministic = task["methods"]["deterministic"]
    # in the targets' units (not standardised ones, where it would be about 0.1): far below the target's
    # spread (about 26), above the noise (1)
    assert 0.5 < deterministic["metrics"]["rmse"]["mean"] < 6.0
    assert deterministic["metrics"]["rmse"]["se"] is None
    assert 0.0 <= deterministic["metrics"]["coverage_95"]["mean"] <= 1.0
    assert task["methods"]["deep-ensemble"]["num_members"] == 5
    assert "prices: " in printed and "temperature-scaled: not applicable: classification only" in printed
    assert "### Not applicable" in (out / "report.md").read_text()


def test_image_folder(files, tmp_path):
    assert _bench(files, tmp_path / "run", "images", "image", "--methods", "deterministic,mimo") == 0
    task = _results(tmp_path / "run")["tasks"]["images"]
    assert task["input_shape"] == [1, 6, 6] and task["num_classes"] == 2 and task["num_test"] == 5
    assert set(task["methods"]) == {"deterministic", "mimo"}


def test_help_documents_the_conventions(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for phrase in (
        "one logit per class",
        "two values per target",
        "softplus(v) + 1e-6",
        "PATH/train/<class>/* and PATH/test/<class>/*",
        "20% of the rows, drawn with --seed",
        "10% of the training rows drawn with --seed",
    ):
        assert phrase in text, phrase


def test_resume_after_interrupt_keeps_the_finished_method(files, tmp_path, monkeypatch):
    def config(out: Path, **overrides) -> BenchConfig:
        settings = {"data": files["tiny.npz"], "epochs": 2, **overrides}
        return BenchConfig(
            out=out,
            tasks=["tiny"],
            methods=["deterministic", "deep-ensemble"],
            model=f"{files['factories.py']}:table",
            progress=False,
            **settings,
        )

    uninterrupted = run_bench(config(tmp_path / "whole"), log=lambda *_: None)
    trained: list[str] = []
    original = runner.train_method

    def interrupt_the_ensemble(method, name, *args, **kwargs):
        trained.append(name)
        if name == "deep-ensemble" and len(trained) == 2:
            raise KeyboardInterrupt
        return original(method, name, *args, **kwargs)

    monkeypatch.setattr(runner, "train_method", interrupt_the_ensemble)
    out = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        run_bench(config(out), log=lambda *_: None)
    trained.clear()
    copy = tmp_path / "elsewhere" / "tiny.npz"  # the same table at another path: another run
    copy.parent.mkdir()
    copy.write_bytes(files["tiny.npz"].read_bytes())
    with pytest.raises(runner.RunConfigMismatchError, match="differs in: data"):
        run_bench(config(out, resume=True, data=copy), log=lambda *_: None)
    resumed = run_bench(config(out, resume=True), log=lambda *_: None)
    assert trained == ["deep-ensemble"]
    for name in ("deterministic", "deep-ensemble"):
        a, b = (r["tasks"]["tiny"]["methods"][name] for r in (uninterrupted, resumed))
        for block in (a, b):
            for key in ("train_time_s", "inference_ms_per_example", "history"):
                block.pop(key)
        assert a == b, name


def _write_npz(path: Path, **changes) -> Path:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 4)).astype(np.float32)
    arrays = {"x_train": x[:20], "y_train": np.arange(20) % 3, "x_test": x[20:], "y_test": np.arange(10) % 3}
    arrays.update(changes)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def _nan_inputs() -> np.ndarray:
    x = np.zeros((20, 4), dtype=np.float32)
    x[7, 2] = np.nan
    return x


@pytest.mark.parametrize(
    ("data", "model", "message"),
    [
        ({"y_test": None}, "table", "bad.npz: missing key 'y_test'"),
        ({"y_train": np.zeros(19, dtype=int)}, "table", "bad.npz: y_train has 19 rows but x_train has 20"),
        (
            {"x_train": _nan_inputs()},
            "table",
            "bad.npz: x_train has 1 NaN or infinite values (the first in row 7)",
        ),
        ({"y_test": np.full(10, 4)}, "table", "bad.npz: y_test has labels in [4, 4], out of range"),
        ({}, "no_such_factory", "has no attribute 'no_such_factory'"),
        ({}, "not_a_module", "not_a_module() returned a list, expected a torch.nn.Module"),
        ({}, "five_outputs", "returns outputs of shape [2, 5] for 2 training rows, but {data} has 3 classes"),
        ({}, "a_dict", "the model returns a dict; uqkit bench expects one tensor: one logit per class"),
    ],
)
def test_bad_input_is_named_before_training(files, tmp_path, capsys, monkeypatch, data, model, message):
    def no_training(*args, **kwargs):
        raise AssertionError("trained despite bad input")

    monkeypatch.setattr(runner, "train_method", no_training)
    path = _write_npz(tmp_path / "bad.npz", **data)
    out = tmp_path / "run"
    argv = ["bench", "--data", str(path), "--model", f"{files['factories.py']}:{model}", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("uqkit: error: ") and "Traceback" not in err
    assert message.format(data=path) in err, err
    assert [p.name for p in out.iterdir()] == ["log.txt"]  # nothing written but the run's log
    assert message.format(data=path) in (out / "log.txt").read_text()


def test_a_factory_that_cannot_be_imported(files, tmp_path, capsys):
    broken = tmp_path / "broken.py"
    broken.write_text("import torch\nraise RuntimeError('needs a GPU')\n")
    data = _write_npz(tmp_path / "ok.npz")
    for spec, message in (
        (f"{broken}:make", f"importing {broken} failed: RuntimeError: needs a GPU"),
        ("no_such_package_q.models:make", "cannot import module 'no_such_package_q.models'"),
        (f"{tmp_path / 'absent.py'}:make", "no such file"),
    ):
        out = tmp_path / spec.split(":")[0].replace("/", "_")
        assert main(["bench", "--data", str(data), "--model", spec, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
        assert [p.name for p in out.iterdir()] == ["log.txt"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--data", "{dir}/none.npz"], "none.npz: no such file or folder (--data)"),
        (["--data", "{dir}/classes.csv"], "classes.csv: a CSV needs --target COLUMN"),
        (["--data", "{dir}/classes.csv", "--target", "colour"], "classes.csv: no column 'colour' (--target)"),
        (["--data", "{dir}/tiny.npz", "--target", "y"], "--target: only a CSV has a target column"),
        (["--data", "{dir}/tiny.npz", "--task", "two-moons"], "--task and --data: the data is the task"),
        (["--target", "y"], "--target, --ood and --kind describe your own data; add --data PATH"),
        (["--model", "m.py:make"], "a model factory runs on your own data; add --data PATH"),
    ],
)
def test_bad_options_give_one_line_errors(files, tmp_path, capsys, argv, message):
    directory = files["tiny.npz"].parent
    argv = [part.format(dir=directory) for part in argv]
    assert main(["bench", *argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("uqkit: error: ") and message in err and "Traceback" not in err, err


class _ConstantGaussian(Method):
    """Predicts mean' = 0.5 and raw scale 0 (variance softplus(0) + 1e-6) in standardised units."""

    def __init__(self) -> None:
        super().__init__()
        self.network = torch.nn.Linear(4, 2)
        torch.nn.init.zeros_(self.network.weight)
        with torch.no_grad():
            self.network.bias.copy_(torch.tensor([0.5, 0.0]))


def test_regression_evaluation_maps_predictions_to_the_targets_units(files):
    from uqkit.bench.likelihoods import GAUSSIAN

    task = build_user_task(files["prices.csv"], f"{files['factories.py']}:regressor", target="price")
    method = _ConstantGaussian()
    method.use_likelihood(GAUSSIAN)
    block = evaluate_regression(method, task, progress=False)
    mean = float(task.target_mean) + 0.5 * float(task.target_std)
    variance = (math.log(2.0) + 1e-6) * float(task.target_std) ** 2
    targets = (task.test.labels * task.target_std + task.target_mean).double().flatten().tolist()
    nll = sum(0.5 * math.log(2 * math.pi * variance) + (y - mean) ** 2 / (2 * variance) for y in targets)
    rmse = math.sqrt(sum((y - mean) ** 2 for y in targets) / len(targets))
    inside = sum(abs(y - mean) <= 1.959963984540054 * math.sqrt(variance) for y in targets)
    assert block["metrics"]["nll"]["mean"] == pytest.approx(nll / len(targets), rel=1e-6)
    assert block["metrics"]["rmse"]["mean"] == pytest.approx(rmse, rel=1e-6)
    assert block["metrics"]["coverage_95"]["mean"] == pytest.approx(inside / len(targets))
    assert block["num_members"] == 1 and block["num_samples"] == 1
