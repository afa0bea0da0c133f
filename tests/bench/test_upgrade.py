"""Tests of uqkit.bench.upgrade: old method names and results.json layouts, read as today's.

Oracles: a hand-written old-layout dict and the new layout it must become; for every results file committed
under benchmarks/results/ (all of schema version 1), the same file with its old words replaced as text; a
report rebuilt from a committed file, against the rows of the report committed beside it.
"""

from __future__ import annotations

import copy
import json
import shutil
import warnings
from pathlib import Path

import pytest

from uqkit.bench import runner
from uqkit.bench._atomic import CorruptFileError
from uqkit.bench.registry import METHODS
from uqkit.bench.results_schema import SCHEMA_VERSION, validate_results
from uqkit.bench.run_files import RunConfigMismatchError, prepare_run_dir
from uqkit.bench.upgrade import (
    RENAMED_METHODS,
    UPGRADABLE_VERSIONS,
    current_method_name,
    current_run_identity,
    read_method_block,
    upgrade_method_block,
    upgrade_results,
)
from uqkit.cli import main

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
RESULT_FILES = sorted(RESULTS.glob("**/results.json"))
OLD_RESULT_FILES = [
    path for path in RESULT_FILES if json.loads(path.read_text(encoding="utf-8"))["schema_version"] == 1
]
"""The committed files written before schema version 2 (the later ones are validated as they are)."""
OLD_NAME_WARNING = (
    r"the benchmark method 'gaussian-bnn' is deprecated and will be removed in uqkit 0\.2\.0; "
    r"use 'reparameterization-bnn' instead"
)


# -- method names ------------------------------------------------------------------------------------------
def test_old_method_name_maps_to_the_registered_one_with_a_warning():
    import uqkit.bench.methods_bayesian  # noqa: F401  (registers the BNN methods)

    assert RENAMED_METHODS == {"gaussian-bnn": "reparameterization-bnn"}
    for old, new in RENAMED_METHODS.items():
        assert old not in METHODS and new in METHODS
    with pytest.warns(DeprecationWarning, match=OLD_NAME_WARNING):
        assert current_method_name("gaussian-bnn") == "reparameterization-bnn"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a current name passes through silently
        assert current_method_name("reparameterization-bnn") == "reparameterization-bnn"
        assert current_method_name("no-such-method") == "no-such-method"  # the registry says it is unknown
    with pytest.raises(TypeError, match=r"method name: expected a string, got list"):
        current_method_name(["gaussian-bnn"])


def test_bench_config_runs_an_old_method_name_under_the_new_one(tmp_path):
    with pytest.warns(DeprecationWarning, match=OLD_NAME_WARNING):
        config = runner.BenchConfig(
            out=tmp_path, tasks=["two-moons"], methods=["deterministic", "gaussian-bnn"]
        )
    assert config.methods == ["deterministic", "reparameterization-bnn"]
    assert config.identity()["methods"] == ["deterministic", "reparameterization-bnn"]
    assert runner.BenchConfig(out=tmp_path).methods is None  # the default list stays the default


def test_command_line_logs_the_old_name_and_runs_the_new_one(tmp_path, monkeypatch, capsys):
    seen = {}

    def record_and_stop(config, *args, **kwargs):
        seen["methods"] = config.methods
        raise KeyboardInterrupt  # the CLI's own way out: "interrupted; continue with --resume"

    monkeypatch.setattr("uqkit.bench.runner.run_bench", record_and_stop)
    out = tmp_path / "run"
    argv = ["bench", "--task", "two-moons", "--methods", "flipout-bnn,gaussian-bnn", "--out", str(out)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # the CLI logs it, never raises it
        assert main([*argv, "--no-progress"]) == 130
    assert seen["methods"] == ["flipout-bnn", "reparameterization-bnn"]
    line = "[uqkit] warning: " + OLD_NAME_WARNING.replace("\\", "")
    assert line in capsys.readouterr().out.splitlines()
    assert line in (out / "log.txt").read_text(encoding="utf-8").splitlines()


def test_resume_of_a_run_saved_under_the_old_name_continues_under_the_new_one(tmp_path):
    old = {"tasks": ["two-moons"], "methods": ["deterministic", "gaussian-bnn"], "seed": 0}
    prepare_run_dir(tmp_path, old, resume=False, command="uqkit bench --methods deterministic,gaussian-bnn")
    saved = json.loads((tmp_path / "config.json").read_text(encoding="utf-8"))
    assert saved["identity"] == old  # the run directory is not rewritten
    new = {**old, "methods": ["deterministic", "reparameterization-bnn"]}
    prepare_run_dir(tmp_path, new, resume=True, command="uqkit bench --resume")  # continues
    assert json.loads((tmp_path / "config.json").read_text(encoding="utf-8")) == saved
    for other in (["deterministic", "flipout-bnn"], ["deterministic"]):
        with pytest.raises(RunConfigMismatchError, match=r"differs in: methods"):
            prepare_run_dir(tmp_path, {**old, "methods": other}, resume=True, command="")
    assert current_run_identity(old) == new and old["methods"][1] == "gaussian-bnn"  # a copy
    assert current_run_identity({"methods": None, "seed": 1}) == {"methods": None, "seed": 1}


# -- results.json layouts ----------------------------------------------------------------------------------
def _old_layout() -> dict:
    """Every key that version 1 named otherwise, in a small document (not a whole results file)."""
    return {
        "schema_version": 1,
        "config": {"methods": ["deterministic", "gaussian-bnn"]},
        "tasks": {
            "fashion-mnist": {
                "not_applicable": {"gaussian-bnn": "why"},
                "methods": {
                    "deterministic": {"num_models": 7, "details": {"ensemble_size": 3}},
                    "gaussian-bnn": {"shares_training_with": "gaussian-bnn", "metrics": {"nll": 0.5}},
                    "hyper-deep-ensemble": {
                        "details": {"ensemble_size": 5, "selections": 9},
                        "seeds": {
                            "0": {"details": {"ensemble_size": 5}},
                            "1": {"details": {"ensemble_size": 4}},
                        },
                    },
                },
            },
            "uci-boston": {
                "kind": "regression",
                "methods": {
                    "deep-ensemble": {"num_models": 5, "num_samples": 5},
                    "hyper-deep-ensemble": {"num_models": 5, "details": {"ensemble_size": 5}},
                },
            },
        },
    }


def test_old_layout_is_upgraded_key_by_key():
    old = _old_layout()
    before = copy.deepcopy(old)
    upgraded = upgrade_results(old)
    assert old == before  # the caller's dict is not changed
    assert upgraded == {
        "schema_version": 2,
        "config": {"methods": ["deterministic", "reparameterization-bnn"]},
        "tasks": {
            "fashion-mnist": {
                "not_applicable": {"reparameterization-bnn": "why"},
                "methods": {
                    "deterministic": {"num_members": 7, "details": {"num_members": 3}},
                    "reparameterization-bnn": {
                        "shares_training_with": "reparameterization-bnn",
                        "metrics": {"nll": 0.5},
                    },
                    "hyper-deep-ensemble": {
                        "details": {"num_members": 5, "selections": 9},
                        "seeds": {"0": {"details": {"num_members": 5}}, "1": {"details": {"num_members": 4}}},
                    },
                },
            },
            "uci-boston": {
                "kind": "regression",
                "methods": {
                    "deep-ensemble": {"num_members": 5, "num_samples": 5},
                    "hyper-deep-ensemble": {"num_members": 5, "details": {"num_members": 5}},
                },
            },
        },
    }
    assert list(upgraded["tasks"]["fashion-mnist"]["methods"]) == [
        "deterministic",
        "reparameterization-bnn",
        "hyper-deep-ensemble",
    ]  # the run's method order (it keys the report's colours)
    assert upgrade_results(upgraded) is upgraded  # the current version: nothing to do


def test_a_run_directorys_finished_block_is_read_in_the_current_layout(tmp_path):
    """A run started by an older uqkit resumes with the blocks it finished (the runners read them with
    read_method_block)."""
    old = {"num_models": 5, "num_samples": 5, "details": {"ensemble_size": 5, "retrained": 3}}
    path = tmp_path / "hyper-deep-ensemble.json"
    path.write_text(json.dumps(old), encoding="utf-8")
    new = {"num_members": 5, "num_samples": 5, "details": {"num_members": 5, "retrained": 3}}
    assert read_method_block(path) == new
    assert upgrade_method_block(new) == new and upgrade_method_block(old) == new and "num_models" in old
    path.write_text('{"num_models": 5', encoding="utf-8")
    with pytest.raises(CorruptFileError, match="invalid JSON"):
        read_method_block(path)


def test_versions_that_cannot_be_read_are_refused():
    assert UPGRADABLE_VERSIONS == (1,) and SCHEMA_VERSION == 2
    with pytest.raises(ValueError, match=r"reads schema versions 1, 2, got 3 \(a newer uqkit wrote it"):
        upgrade_results({"schema_version": 3})
    for version in (0, "1", True):
        with pytest.raises(ValueError, match=rf"reads schema versions 1, 2, got {version!r}$"):
            upgrade_results({"schema_version": version})
    assert upgrade_results([1]) == [1] and upgrade_results({}) == {}  # not results: validation says why
    with pytest.raises(ValueError, match=r"got 1; read an older file through uqkit\.bench\.upgrade"):
        validate_results(_old_layout())  # validation checks the current layout, it never upgrades


def _replaced_as_text(text: str) -> dict:
    """A version-1 file read with its old words replaced as text: the independent oracle of the upgrade."""
    for old, new in (
        ('"num_models":', '"num_members":'),
        ('"ensemble_size":', '"num_members":'),
        ('"gaussian-bnn"', '"reparameterization-bnn"'),
    ):
        text = text.replace(old, new)
    results = json.loads(text)
    results["schema_version"] = 2
    return results


def test_the_committed_old_files_hold_every_old_key():
    texts = [path.read_text(encoding="utf-8") for path in OLD_RESULT_FILES]
    assert len(texts) >= 15
    for word in ('"num_models":', '"ensemble_size":', '"gaussian-bnn"'):
        assert any(word in text for text in texts), word  # each step of the upgrade meets a real file


@pytest.mark.parametrize("path", OLD_RESULT_FILES, ids=lambda path: str(path.parent.relative_to(RESULTS)))
def test_committed_file_upgrades_to_its_text_with_the_new_words(path):
    """(That the upgraded file validates: tests/bench/test_results_schema.py, for every committed file.)"""
    text = path.read_text(encoding="utf-8")
    assert upgrade_results(json.loads(text)) == _replaced_as_text(text)


def test_report_rebuilds_a_committed_old_file(tmp_path, capsys):
    """Your-data regression run (2026-12): ``gaussian-bnn`` and ``num_models`` in one file. Its rebuilt table
    is the committed report's table, row for row, under the new name; the file itself is not rewritten."""
    source = RESULTS / "your-data-diabetes"
    shutil.copy(source / "results.json", tmp_path / "results.json")
    assert main(["report", str(tmp_path)]) == 0
    capsys.readouterr()
    assert (tmp_path / "results.json").read_bytes() == (source / "results.json").read_bytes()

    def table(text: str) -> list[str]:
        return [line for line in text.splitlines() if line.startswith("| ") and " x " in line]

    committed = (
        (source / "report.md").read_text(encoding="utf-8").replace("gaussian-bnn", "reparameterization-bnn")
    )
    rebuilt = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "gaussian-bnn" not in rebuilt
    assert table(rebuilt) == table(committed) and len(table(rebuilt)) >= 7
    assert (
        "| reparameterization-bnn | 5.58 | 64.67 | 5.58 | 98.9% | 1 x 10 | 9,988 | 0.7 | epoch 20 |"
        in rebuilt
    )
