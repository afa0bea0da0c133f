"""Tests of uqkit.bench.report (schema, leaderboards, written report) and uqkit.bench.plots (figures).

The results dict is synthetic: two tasks (one with a shift and two OOD sets, one with neither) and three
methods, with plausible random numbers and a few undefined (``None``) values, as ``uqkit bench`` writes
them. The oracles are computed here, independently of the module: the expected row order and best cells
from the raw numbers, the expected figure files from the task layout, the embedded images from the files.
"""

from __future__ import annotations

import base64
import copy
import json
import math
import os
import re
import stat
import sys
from pathlib import Path

import numpy as np
import pytest

from uqkit.bench import report
from uqkit.bench.report import (
    build_leaderboard,
    format_leaderboard,
    leaderboard_markdown,
    validate_results,
    write_report,
)

matplotlib = pytest.importorskip("matplotlib")
from matplotlib.image import imread  # noqa: E402

from uqkit.bench import plots  # noqa: E402

SHIFT_TASK = "rotated-fashion"
PLAIN_TASK = "mnist1d"
OOD_SETS = {"digits": "far-OOD: sklearn digits resized to 28x28", "noise": "uniform noise images"}
METHODS = {"deterministic": 1, "mc-dropout": 10, "deep-ensemble": 5}  # name -> S
NUM_BINS = 15
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# -- synthetic results ------------------------------------------------------------------------------------
def _method_block(rng: np.random.Generator, samples: int, ood_sets, shift_values) -> dict:
    accuracy = float(rng.uniform(0.80, 0.92))
    edges = np.linspace(0.0, 1.0, NUM_BINS + 1)
    count = rng.integers(5, 400, NUM_BINS)
    count[:2] = 0  # low-confidence bins of a 10-class problem are often empty
    confidence = (edges[:-1] + edges[1:]) / 2 + rng.uniform(-0.02, 0.02, NUM_BINS)
    bin_accuracy = np.clip(confidence - rng.uniform(-0.05, 0.12, NUM_BINS), 0, 1)
    coverage = np.linspace(0.005, 1.0, 200)
    referred = np.arange(20) / 20
    block = {
        "num_samples": samples,
        "num_parameters": int(rng.integers(10_000, 700_000)) * samples,
        "train_time_s": float(rng.uniform(5, 60)) * samples,
        "inference_ms_per_example": float(rng.uniform(0.01, 0.2)) * samples,
        "metrics": {
            "accuracy": accuracy,
            "nll": float(rng.uniform(0.25, 0.6)),
            "brier": float(rng.uniform(0.12, 0.3)),
            "ece": float(rng.uniform(0.005, 0.08)),
            "aurc": float(rng.uniform(0.01, 0.05)),
        },
        "calibration_curve": {
            "bin_lower": edges[:-1].tolist(),
            "bin_upper": edges[1:].tolist(),
            "confidence": [None if c == 0 else float(v) for c, v in zip(count, confidence, strict=True)],
            "accuracy": [None if c == 0 else float(v) for c, v in zip(count, bin_accuracy, strict=True)],
            "count": [int(c) for c in count],
        },
        "referral_curve": {
            "referred_fraction": referred.tolist(),
            "accuracy": (accuracy + (0.995 - accuracy) * referred**0.7).tolist(),
        },
        "risk_coverage": {
            "coverage": coverage.tolist(),
            "risk": ((1 - accuracy) * coverage**1.5).tolist(),
        },
        "ood": {},
        "shift": None,
        "history": [
            {
                "epoch": epoch,
                "train_loss": 1.0 / epoch,
                "val_accuracy": accuracy - 0.05 / epoch,
                "val_nll": 0.3 + 0.2 / epoch,
                "time_s": float(rng.uniform(1, 10)),
            }
            for epoch in (1, 2, 3)
        ],
        "description": f"a method with S = {samples}",
    }
    for offset, ood_name in enumerate(ood_sets):
        in_scores = rng.gamma(1.0, 0.3, 300)
        ood_scores = rng.gamma(2.0 + offset, 0.4, 250)
        epistemic = None if samples == 1 else float(rng.uniform(0.6, 0.9))
        block["ood"][ood_name] = {
            "total": {"auroc": float(rng.uniform(0.7, 0.95)), "aupr": 0.8, "fpr95": 0.4},
            "epistemic": {"auroc": 0.5 if samples == 1 else epistemic, "aupr": 0.5, "fpr95": 0.95},
            "scores": {"kind": "total", "in": in_scores.tolist(), "ood": ood_scores.tolist()},
        }
    if shift_values is not None:
        angle = np.asarray(shift_values, dtype=float)
        block["shift"] = {
            "values": list(shift_values),
            "accuracy": (accuracy * (1 - 0.8 * np.sin(np.radians(angle) / 2) ** 2)).tolist(),
            "ece": (block["metrics"]["ece"] + 0.3 * np.sin(np.radians(angle) / 2) ** 2).tolist(),
            "nll": (block["metrics"]["nll"] + 2 * np.sin(np.radians(angle) / 2) ** 2).tolist(),
        }
    return block


def make_results(seed: int = 0, methods: dict[str, int] = METHODS) -> dict:
    """A synthetic ``results.json`` (schema version 2) with a few undefined (null) values."""
    rng = np.random.default_rng(seed)
    shift_values = list(range(0, 181, 15))
    results = {
        "schema_version": 2,
        "created": "2026-11-26T17:00:00+00:00",
        "command": "uqkit bench --quick",
        "environment": {
            "uqkit": "0.1.0",
            "torch": "2.13.0+cpu",
            "python": "3.11.7",
            "numpy": "2.1.0",
            "platform": "Linux-6.1-x86_64",
            "cpu": "Intel(R) Xeon(R) CPU @ 2.20GHz",
            "threads": 2,
            "device": "cpu",
        },
        "config": {
            "tasks": [SHIFT_TASK, PLAIN_TASK],
            "methods": list(methods),
            "epochs": 3,
            "seed": 0,
            "quick": False,
            "batch_size": 128,
            "model": "mlp",
        },
        "tasks": {},
    }
    for task_name, ood_sets, shift in ((SHIFT_TASK, OOD_SETS, shift_values), (PLAIN_TASK, {}, None)):
        results["tasks"][task_name] = {
            "description": f"{task_name}, MLP 784-512-512-10",
            "num_classes": 10,
            "input_shape": [1, 28, 28] if shift else [40],
            "num_train": 54000,
            "num_val": 6000,
            "num_test": 10000,
            "ood_sets": dict(ood_sets),
            "shift": None if shift is None else {"name": "rotation", "unit": "degrees", "values": shift},
            "methods": {name: _method_block(rng, s, ood_sets, shift) for name, s in methods.items()},
        }
    # undefined values, as a producer writes them for undefined metrics
    first, second = list(methods)[:2]
    results["tasks"][SHIFT_TASK]["methods"][second]["metrics"]["brier"] = None
    results["tasks"][SHIFT_TASK]["methods"][second]["ood"]["noise"]["epistemic"]["auroc"] = None
    results["tasks"][PLAIN_TASK]["methods"][first]["metrics"]["ece"] = None
    return results


@pytest.fixture(scope="module")
def results() -> dict:
    return make_results()


@pytest.fixture(scope="module")
def written(results, tmp_path_factory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("run")
    return run_dir, write_report(results, run_dir)


def _at(results: dict, path: tuple) -> tuple[dict, str]:
    """The dict holding the last key of ``path``, and that key."""
    node = results
    for key in path[:-1]:
        node = node[key]
    return node, path[-1]


# -- validation -------------------------------------------------------------------------------------------
def test_synthetic_results_are_valid(results):
    validate_results(results)
    validate_results(json.loads(json.dumps(results, allow_nan=False)))  # standard JSON, as the runner writes


T = f"results.tasks[{SHIFT_TASK!r}]"
M = f"{T}.methods['deterministic']"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        (
            ("tasks", SHIFT_TASK, "methods", "deterministic", "metrics", "ece"),
            f"{M}.metrics: missing key 'ece'",
        ),
        (("environment", "threads"), "results.environment: missing key 'threads'"),
        (("schema_version",), "results: missing key 'schema_version'"),
        (("tasks", SHIFT_TASK, "shift"), f"{T}: missing key 'shift'"),
        (
            ("tasks", SHIFT_TASK, "methods", "deterministic", "ood", "digits", "epistemic", "fpr95"),
            f"{M}.ood['digits'].epistemic: missing key 'fpr95'",
        ),
        (
            ("tasks", SHIFT_TASK, "methods", "deterministic", "history", 1, "val_nll"),
            f"{M}.history[1]: missing key 'val_nll'",
        ),
        (("tasks", SHIFT_TASK, "methods", "deterministic", "ood", "noise"), f"{M}.ood: missing key 'noise'"),
    ],
)
def test_missing_key_is_named_with_its_path(results, path, message):
    broken = copy.deepcopy(results)
    node, key = _at(broken, path)
    del node[key]
    with pytest.raises(ValueError, match=re.escape(message)):
        validate_results(broken)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (
            ("tasks", SHIFT_TASK, "num_classes"),
            "ten",
            f"{T}.num_classes: expected an int in [1, inf], got str 'ten'",
        ),
        (
            ("tasks", SHIFT_TASK, "num_classes"),
            True,
            f"{T}.num_classes: expected an int in [1, inf], got bool True",
        ),
        (
            ("tasks", SHIFT_TASK, "methods", "deterministic", "metrics", "accuracy"),
            89.5,
            f"{M}.metrics.accuracy: expected a number in [0, 1] or null, got 89.5",
        ),
        (
            ("tasks", SHIFT_TASK, "methods", "deterministic", "calibration_curve", "count", 3),
            "7",
            f"{M}.calibration_curve.count[3]: expected a number in [0, inf], got str '7'",
        ),
        (
            ("tasks", SHIFT_TASK, "methods", "deterministic", "shift", "ece", 2),
            -0.1,
            f"{M}.shift.ece[2]: expected a number in [0, 1] or null, got -0.1",
        ),
        (
            ("tasks", SHIFT_TASK, "methods", "deterministic", "calibration_curve", "count", 0),
            None,
            f"{M}.calibration_curve.count[0]: expected a number in [0, inf], got NoneType None",
        ),
        (("config", "quick"), "yes", "results.config.quick: expected a bool, got str 'yes'"),
        (("config", "methods"), "all", "results.config.methods: expected a list or null, got str 'all'"),
        (
            ("tasks", SHIFT_TASK, "methods"),
            {},
            f"{T}.methods: expected at least 1 entry, got an empty object",
        ),
        (("tasks", SHIFT_TASK, "shift"), [0, 15], f"{T}.shift: expected an object (dict) or null, got list"),
        (("schema_version",), 3, "results.schema_version: this uqkit reads schema version 2, got 3"),
        (
            ("schema_version",),
            1,
            "results.schema_version: this uqkit reads schema version 2, got 1; read an older file through "
            "uqkit.bench.upgrade.upgrade_results first",
        ),
    ],
)
def test_mistyped_value_is_named_with_its_path(results, path, value, message):
    broken = copy.deepcopy(results)
    node, key = _at(broken, path)
    node[key] = value
    with pytest.raises(ValueError, match=re.escape(message)):
        validate_results(broken)


def test_top_level_must_be_an_object():
    with pytest.raises(ValueError, match=r"results: expected an object \(dict\).*got list"):
        validate_results([1, 2])


def test_cross_key_rules(results):
    extra_ood = copy.deepcopy(results)
    extra_ood["tasks"][PLAIN_TASK]["methods"]["deterministic"]["ood"]["svhn"] = copy.deepcopy(
        results["tasks"][SHIFT_TASK]["methods"]["deterministic"]["ood"]["digits"]
    )
    with pytest.raises(
        ValueError, match=r"\['mnist1d'\].methods\['deterministic'\].ood: unexpected OOD set 'svhn'"
    ):
        validate_results(extra_ood)

    no_shift = copy.deepcopy(results)
    no_shift["tasks"][SHIFT_TASK]["methods"]["mc-dropout"]["shift"] = None
    with pytest.raises(
        ValueError, match=re.escape(f"{T}.methods['mc-dropout'].shift: expected an object because")
    ):
        validate_results(no_shift)

    short = copy.deepcopy(results)
    short["tasks"][PLAIN_TASK]["methods"]["deep-ensemble"]["referral_curve"]["accuracy"].pop()
    with pytest.raises(
        ValueError,
        match="referral_curve: expected lists of the same length, got "
        "referred_fraction has 20, accuracy has 19",
    ):
        validate_results(short)


# -- leaderboards -----------------------------------------------------------------------------------------
def _expected_table(results: dict, task: str) -> tuple[list[str], list[str], dict[str, list[float | None]]]:
    """Independent oracle: headers, methods sorted by NLL (undefined last), raw values per header."""
    block = results["tasks"][task]

    def defined(value):
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)

    columns = {
        "S": lambda m: m["num_samples"],
        "acc %": lambda m: 100 * m["metrics"]["accuracy"],
        "NLL": lambda m: m["metrics"]["nll"],
        "Brier": lambda m: m["metrics"]["brier"],
        "ECE %": lambda m: None if m["metrics"]["ece"] is None else 100 * m["metrics"]["ece"],
    }
    for ood in block["ood_sets"]:
        columns[f"AUROC {ood} (total)"] = lambda m, o=ood: m["ood"][o]["total"]["auroc"]
        columns[f"AUROC {ood} (epistemic)"] = lambda m, o=ood: m["ood"][o]["epistemic"]["auroc"]
    columns |= {
        "train s": lambda m: m["train_time_s"],
        "ms/ex": lambda m: m["inference_ms_per_example"],
        "params": lambda m: m["num_parameters"],
    }
    order = sorted(block["methods"], key=lambda name: block["methods"][name]["metrics"]["nll"])
    values = {h: [defined(read(block["methods"][name])) for name in order] for h, read in columns.items()}
    return list(columns), order, values


FORMATS = {
    "S": "{:.0f}",
    "acc %": "{:.2f}",
    "NLL": "{:.3f}",
    "Brier": "{:.4f}",
    "ECE %": "{:.2f}",
    "train s": "{:.1f}",
    "ms/ex": "{:.3f}",
    "params": "{:,.0f}",
}
HIGHER_IS_BETTER = {"acc %"}
LOWER_IS_BETTER = {"NLL", "Brier", "ECE %"}


def _expected_best(header: str, column: list[float | None]) -> list[bool]:
    defined = [v for v in column if v is not None]
    if len(set(defined)) < 2:  # nothing to tell apart
        return [False] * len(column)
    if header.startswith("AUROC") or header in HIGHER_IS_BETTER:
        return [v is not None and v == max(defined) for v in column]
    if header in LOWER_IS_BETTER:
        return [v is not None and v == min(defined) for v in column]
    return [False] * len(column)


@pytest.mark.parametrize("task", [SHIFT_TASK, PLAIN_TASK])
def test_text_leaderboard_sorts_by_nll_and_stars_the_best(results, task):
    headers, order, values = _expected_table(results, task)
    lines = format_leaderboard(results, task).splitlines()
    assert lines[0].startswith(f"Task {task}: ")
    assert re.split(r"\s{2,}", lines[1].strip()) == ["method", *headers]
    rows = [re.split(r"\s{2,}", line.strip()) for line in lines[3 : 3 + len(order)]]
    assert [row[0] for row in rows] == order
    for j, header in enumerate(headers):
        best = _expected_best(header, values[header])
        for i, row in enumerate(rows):
            cell = row[1 + j]
            value = values[header][i]
            text = "—" if value is None else FORMATS.get(header, "{:.3f}").format(value)
            assert cell == text + ("*" if best[i] else ""), (header, order[i], cell)
    # the synthetic data has an undefined value in a quality column, shown as a dash and never starred
    assert any(cell == "—" for row in rows for cell in row)
    assert lines[3 + len(order)].startswith("* best in column")


def test_text_leaderboard_of_all_tasks_and_unknown_task(results):
    both = format_leaderboard(results)
    assert both == format_leaderboard(results, SHIFT_TASK) + "\n\n" + format_leaderboard(results, PLAIN_TASK)
    with pytest.raises(ValueError, match=r"task: expected one of 'rotated-fashion', 'mnist1d', got 'cifar'"):
        format_leaderboard(results, "cifar")
    with pytest.raises(TypeError, match="task: expected a task name"):
        build_leaderboard(results, None)


def test_undefined_nll_sorts_last(results):
    changed = copy.deepcopy(results)
    changed["tasks"][PLAIN_TASK]["methods"]["mc-dropout"]["metrics"]["nll"] = None
    board = build_leaderboard(changed, PLAIN_TASK)
    assert board.methods[-1] == "mc-dropout"
    nll = [
        row[board.columns.index(next(c for c in board.columns if c.header == "NLL"))] for row in board.values
    ]
    assert nll[:-1] == sorted(nll[:-1]) and nll[-1] is None


def test_no_mark_where_every_method_ties():
    board = build_leaderboard(make_results(methods={"a": 1, "b": 1, "c": 1}), SHIFT_TASK)
    for j, column in enumerate(board.columns):
        marked = [row[j] for row in board.best]
        if column.header.endswith("(epistemic)"):  # S = 1 everywhere: AUROC 0.5 (or undefined) for all
            assert {row[j] for row in board.values} <= {0.5, None} and not any(marked)
        elif column.better is not None:
            assert sum(marked) == 1, column.header


def test_markdown_leaderboard_bolds_the_best(results):
    headers, order, values = _expected_table(results, SHIFT_TASK)
    text = leaderboard_markdown(results, SHIFT_TASK)
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert [c.strip() for c in table[0].strip("|").split("|")] == ["method", *headers]
    assert table[1] == "|:---|" + "---:|" * len(headers)
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]
    assert [row[0] for row in rows] == order
    for j, header in enumerate(headers):
        best = _expected_best(header, values[header])
        assert [row[1 + j].startswith("**") for row in rows] == best, header
    assert "Best value per column in bold" in text


def test_markdown_escapes_names():
    results = make_results(methods={"a|b": 1, "*x*": 3, "_y_ & z_w": 2})
    table = leaderboard_markdown(results, PLAIN_TASK)
    assert r"a\|b" in table and r"\*x\*" in table
    assert r"\_y\_ \& z_w" in table  # an intraword underscore is not emphasis: left as it is
    for line in table.splitlines():
        if line.startswith("|"):
            assert len(re.split(r"(?<!\\)\|", line)) == len(re.split(r"(?<!\\)\|", table.splitlines()[2]))


# -- the written report -----------------------------------------------------------------------------------
def _expected_figure_names() -> list[str]:
    shift = [
        f"{SHIFT_TASK}_{kind}"
        for kind in ("reliability", "referral", "ood_digits", "ood_noise", "shift", "risk_coverage")
    ]
    plain = [f"{PLAIN_TASK}_{kind}" for kind in ("reliability", "referral", "risk_coverage")]
    return [f"{name}.png" for name in shift + plain]


def test_write_report_writes_markdown_html_and_every_figure(written):
    run_dir, paths = written
    assert paths["markdown"] == run_dir / "report.md" and paths["markdown"].is_file()
    assert paths["html"] == run_dir / "report.html" and paths["html"].is_file()
    assert [path.name for path in paths["figures"]] == _expected_figure_names()
    assert sorted(p.name for p in (run_dir / "figures").iterdir()) == sorted(_expected_figure_names())
    umask = os.umask(0)
    os.umask(umask)
    for path in [paths["markdown"], paths["html"], *paths["figures"]]:  # shareable, as open() would make
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path
    assert not [p for p in run_dir.rglob("*.tmp")]
    markdown = paths["markdown"].read_text(encoding="utf-8")
    for path in paths["figures"]:
        data = path.read_bytes()
        assert data[:8] == PNG_MAGIC
        assert 5_000 < len(data) < 400_000, (path.name, len(data))
        image = imread(path)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300
        assert image.std() > 0.05  # not a blank canvas
        assert f"](figures/{path.name})" in markdown
    # the figures come after their task's leaderboard, in order
    positions = [markdown.index(f"figures/{path.name}") for path in paths["figures"]]
    assert positions == sorted(positions)
    assert markdown.index(f"## Task {PLAIN_TASK}") > positions[5]
    assert "`uqkit bench --quick`" in markdown and "Intel(R) Xeon(R) CPU @ 2.20GHz" in markdown
    assert leaderboard_markdown(make_results(), SHIFT_TASK).split("\n\n")[1] in markdown


def test_html_is_self_contained_and_embeds_each_figure(written):
    _, paths = written
    page = paths["html"].read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    for external in ('src="http', "src='http", "href=", "<link", "<script", "@import", "url("):
        assert external not in page, external
    embedded = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert [base64.b64decode(data) for data in embedded] == [p.read_bytes() for p in paths["figures"]]
    assert page.count('<table class="leaderboard">') == 2


def test_html_and_markdown_escape_a_hostile_method_name(tmp_path):
    name = '<script>alert("x")</script>'
    results = make_results(methods={"deterministic": 1, name: 4})
    paths = write_report(results, tmp_path)
    page = paths["html"].read_text(encoding="utf-8")
    assert "<script" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    markdown = paths["markdown"].read_text(encoding="utf-8")
    assert r'\<script\>alert("x")\</script\>' in markdown
    assert re.search(r"(?<!\\)[<>]", markdown) is None  # every angle bracket escaped: no raw HTML


def test_report_round_trips_through_json(written, tmp_path):
    """As ``uqkit report RUN_DIR`` does: read results.json back and rebuild the same report."""
    _, paths = written
    with open(tmp_path / "results.json", "w", encoding="utf-8") as handle:
        json.dump(make_results(), handle)
    with open(tmp_path / "results.json", encoding="utf-8") as handle:
        loaded = json.load(handle)
    again = write_report(loaded, tmp_path)
    assert again["markdown"].read_text(encoding="utf-8") == paths["markdown"].read_text(encoding="utf-8")
    assert [p.read_bytes() for p in again["figures"]] == [p.read_bytes() for p in paths["figures"]]


def test_write_report_rejects_bad_input(results, tmp_path):
    broken = copy.deepcopy(results)
    del broken["command"]
    with pytest.raises(ValueError, match="results: missing key 'command'"):
        write_report(broken, tmp_path)
    with pytest.raises(TypeError, match="run_dir: expected a path"):
        write_report(results, 3)
    assert not (tmp_path / "report.md").exists()


def test_missing_matplotlib_names_the_extra(results, tmp_path, monkeypatch):
    for name in [name for name in sys.modules if name.split(".")[0] == "matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)  # every submodule too: imports find them cached
    monkeypatch.delitem(sys.modules, "uqkit.bench.plots")
    monkeypatch.delattr("uqkit.bench.plots", raising=False)
    with pytest.raises(ImportError, match=re.escape("pip install 'uqkit[bench]'")):
        write_report(results, tmp_path)
    # the leaderboards need no matplotlib
    assert format_leaderboard(results, PLAIN_TASK).startswith("Task mnist1d")


# -- figures ----------------------------------------------------------------------------------------------
def _colors(results):
    return plots.method_colors(report.method_order(results))


def test_reliability_bars_are_the_bin_accuracies(results):
    task = results["tasks"][SHIFT_TASK]
    figure = plots.reliability_figure(SHIFT_TASK, task, _colors(results))
    reliability_axes = [ax for ax in figure.axes if ax.get_title()]
    assert [ax.get_title().split("\n")[0] for ax in reliability_axes] == list(METHODS)
    for ax, (_name, method) in zip(reliability_axes, task["methods"].items(), strict=True):
        curve = method["calibration_curve"]
        expected = [
            a for a, c in zip(curve["accuracy"], curve["count"], strict=True) if c > 0 and a is not None
        ]
        accuracy_bars = ax.containers[0]
        assert [bar.get_height() for bar in accuracy_bars] == pytest.approx(expected)
        gaps = ax.containers[1]
        expected_gap = [
            c - a
            for a, c, n in zip(curve["accuracy"], curve["confidence"], curve["count"], strict=True)
            if n > 0
        ]
        assert [bar.get_height() for bar in gaps] == pytest.approx(expected_gap)
        assert [bar.get_y() for bar in gaps] == pytest.approx(expected)  # from accuracy to confidence
        assert f"ECE {100 * method['metrics']['ece']:.2f}%" in ax.get_title()


def test_method_colours_agree_across_figures(results):
    colors = _colors(results)
    assert len(set(colors.values())) == len(METHODS)
    task = results["tasks"][SHIFT_TASK]
    for figure in (
        plots.referral_figure(SHIFT_TASK, task, colors),
        plots.risk_coverage_figure(SHIFT_TASK, task, colors),
        plots.shift_figure(SHIFT_TASK, task, colors),
    ):
        lines = figure.axes[0].get_lines()
        assert [matplotlib.colors.to_hex(line.get_color()) for line in lines] == [
            colors[name].lower() for name in METHODS
        ]
    referral = plots.referral_figure(SHIFT_TASK, task, colors).axes[0].get_lines()
    for line, method in zip(referral, task["methods"].values(), strict=True):
        np.testing.assert_allclose(line.get_ydata(), 100 * np.array(method["referral_curve"]["accuracy"]))
    reliability = plots.reliability_figure(SHIFT_TASK, task, colors)
    bars = [ax.containers[0][0] for ax in reliability.axes if ax.get_title()]
    assert [matplotlib.colors.to_hex(bar.get_facecolor()) for bar in bars] == [
        c.lower() for c in colors.values()
    ]


def test_ood_histograms_show_both_densities(results):
    task = results["tasks"][SHIFT_TASK]
    figure = plots.ood_score_figure(SHIFT_TASK, task, "digits", _colors(results))
    for ax, method in zip(figure.axes, task["methods"].values(), strict=True):
        block = method["ood"]["digits"]
        assert ax.get_title().endswith(f"AUROC {block['total']['auroc']:.3f}")
        # each filled histogram is a density: the area of its polygon (shoelace formula) is 1
        for patch in ax.patches[:2]:
            x, y = patch.get_xy()[:, 0], patch.get_xy()[:, 1]
            area = 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
            assert area == pytest.approx(1.0, rel=1e-6)
    with pytest.raises(ValueError, match="ood_set: expected one of 'digits', 'noise', got 'svhn'"):
        plots.ood_score_figure(SHIFT_TASK, task, "svhn", _colors(results))


def test_no_shift_figure_without_shift_and_no_pyplot(results):
    assert plots.shift_figure(PLAIN_TASK, results["tasks"][PLAIN_TASK], _colors(results)) is None
    had_pyplot = "matplotlib.pyplot" in sys.modules
    plots.figure_png(plots.referral_figure(PLAIN_TASK, results["tasks"][PLAIN_TASK], _colors(results)))
    assert had_pyplot or "matplotlib.pyplot" not in sys.modules


def test_method_colors_rejects_duplicates():
    with pytest.raises(ValueError, match="methods: expected distinct names"):
        plots.method_colors(["a", "a"])
    with pytest.raises(TypeError, match="methods: expected a sequence of method names, got str"):
        plots.method_colors("abc")


# -- the uncertainty surface of a 2-D task ----------------------------------------------------------------
SURFACE_X = np.linspace(-1.0, 1.0, 6)
SURFACE_Y = np.linspace(0.0, 2.0, 5)
SURFACE_PEAK = 0.8  # the largest normalised uncertainty on the synthetic surface


def _surface(num_classes: int, scale: float) -> dict:
    """Total uncertainty ``log(C) * SURFACE_PEAK * scale * (x + 1) / 2 * y / 2`` on the grid, in nats."""
    grid_x, grid_y = np.meshgrid(SURFACE_X, SURFACE_Y)  # rows follow y
    normalised = SURFACE_PEAK * scale * (grid_x + 1) / 2 * grid_y / 2
    total = math.log(num_classes) * normalised
    return {
        "x": SURFACE_X.tolist(),
        "y": SURFACE_Y.tolist(),
        "total": total.tolist(),
        "epistemic": (0.5 * total).tolist(),
        "train_points": {"x": [-0.5, 0.0, 0.5], "y": [0.5, 1.0, 1.5], "label": [0, 1, 9]},
        "ood_points": {"x": [0.9, 0.8], "y": [1.9, 1.8]},
    }


def _with_surfaces(results: dict, methods=("deterministic", "deep-ensemble")) -> dict:
    """``results`` with a surface on some methods of the plain task (10 classes); the first peaks at 0.8."""
    results = copy.deepcopy(results)
    task = results["tasks"][PLAIN_TASK]
    for index, name in enumerate(methods):
        task["methods"][name]["surface"] = _surface(task["num_classes"], 1.0 / (index + 1))
    return results


def test_surface_is_optional_and_valid(results):
    validate_results(_with_surfaces(results))


S = f"results.tasks['{PLAIN_TASK}'].methods['deterministic'].surface"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.pop("epistemic"), f"{S}: missing key 'epistemic'"),
        (lambda s: s["total"].pop(), f"{S}.total: expected 5 rows (len(y)) of 6 values (len(x)), got 4 rows"),
        (lambda s: s["epistemic"][2].pop(), f"{S}.epistemic: expected 5 rows (len(y)) of 6 values"),
        (lambda s: s["x"].reverse(), f"{S}.x: expected at least 2 strictly increasing grid coordinates"),
        (
            lambda s: s["total"][0].__setitem__(0, -0.1),
            f"{S}.total[0][0]: expected a number in [0, inf] or null, got -0.1",
        ),
        (
            lambda s: s["train_points"]["label"].pop(),
            f"{S}.train_points: expected lists of the same length, got x has 3, y has 3, label has 2",
        ),
        (lambda s: s["train_points"]["label"].__setitem__(0, 10), f"{S}.train_points.label: expected class"),
        (lambda s: s["ood_points"]["y"].append(None), f"{S}.ood_points.y[2]: expected a number"),
    ],
)
def test_bad_surface_is_named_with_its_path(results, edit, message):
    bad = _with_surfaces(results)
    edit(bad["tasks"][PLAIN_TASK]["methods"]["deterministic"]["surface"])
    with pytest.raises(ValueError, match=re.escape(message)):
        validate_results(bad)


def test_surface_figure_shows_normalised_uncertainty_and_the_points(results):
    with_surfaces = _with_surfaces(results)
    task = with_surfaces["tasks"][PLAIN_TASK]
    assert plots.surface_figure(PLAIN_TASK, results["tasks"][PLAIN_TASK], _colors(results)) is None
    figure = plots.surface_figure(PLAIN_TASK, task, _colors(with_surfaces))
    panels = [ax for ax in figure.axes if ax.get_title()]
    assert [ax.get_title().split("\n")[0] for ax in panels] == ["deterministic", "deep-ensemble"]
    colorbars = [ax for ax in figure.axes if not ax.get_title()]
    assert len(colorbars) == 1 and "entropy / log C" in colorbars[0].get_ylabel()  # one shared scale
    for ax, scale in zip(panels, (1.0, 0.5), strict=True):
        contour = ax.collections[0]
        # total / log(10): the synthetic surface's own peak, on the shared [0, 1] levels
        assert contour.zmax == pytest.approx(SURFACE_PEAK * scale)
        assert contour.levels[0] == 0.0 and contour.levels[-1] == 1.0
        train, ood = ax.collections[1], ax.collections[2]
        np.testing.assert_allclose(train.get_offsets(), [[-0.5, 0.5], [0.0, 1.0], [0.5, 1.5]])
        colours = [matplotlib.colors.to_hex(c) for c in train.get_facecolors()]
        assert colours[0] != colours[1] and len(set(colours)) == 3  # one colour per class
        np.testing.assert_allclose(ood.get_offsets(), [[0.9, 1.9], [0.8, 1.8]])
        assert ax.get_xlim() == pytest.approx((-1.0, 1.0)) and ax.get_ylim() == pytest.approx((0.0, 2.0))


def test_write_report_puts_the_surface_first(results, tmp_path):
    paths = write_report(_with_surfaces(results), tmp_path)
    names = [path.name for path in paths["figures"]]
    expected = _expected_figure_names()
    assert names == [*expected[:6], f"{PLAIN_TASK}_surface.png", *expected[6:]]
    markdown = paths["markdown"].read_text(encoding="utf-8")
    assert "Uncertainty surface (Liu et al. 2020, fig. 1)" in markdown
