"""Tests of uqkit.bench.results_schema: the JSON Schema of results.json, its validation and its docs page.

The documents are real: the results files committed under benchmarks/results/ (a LeNet-5 run, a UCI Boston
run, the default suite over three seeds), each broken in one place. The oracles are the expected path and
message of each break, and jsonschema's own validator for the fast check of lists.
"""

from __future__ import annotations

import copy
import importlib.resources
import importlib.util
import json
import math
import re
import sys
from pathlib import Path

import jsonschema
import pytest

from uqkit.bench import results_schema as schema_module
from uqkit.bench.results_schema import MAX_LISTED_ERRORS, results_schema, validate_results
from uqkit.bench.upgrade import upgrade_results
from uqkit.cli import main

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
RESULT_FILES = sorted(RESULTS.glob("**/results.json"))
NAN_HINT = "(not a JSON number; write null for an undefined value)"


def _load(relative: str) -> dict:
    """A committed file (schema version 1), read as every reader does: upgraded to the current version."""
    return upgrade_results(json.loads((RESULTS / relative / "results.json").read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def lenet() -> dict:
    """A one-seed classification run: fashion-mnist, deterministic LeNet-5, OOD set digits, a shift."""
    return _load("lenet5-20ep/lenet-det")


@pytest.fixture(scope="module")
def boston() -> dict:
    """A regression run: UCI Boston, 20 splits, five methods."""
    return _load("uci-boston")


@pytest.fixture(scope="module")
def three_seeds() -> dict:
    """The default suite over seeds 0, 1, 2, cut to its deterministic method (a smaller document)."""
    results = _load("default-seeds012")
    task = results["tasks"]["fashion-mnist"]
    task["methods"] = {"deterministic": task["methods"]["deterministic"]}
    results["config"]["methods"] = ["deterministic"]
    return results


def _doc_script():
    spec = importlib.util.spec_from_file_location(
        "results_schema_doc", ROOT / "scripts" / "results_schema_doc.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _schemas_of_keys(node, path="#"):
    """(path, subschema) of every key the schema names: ``properties`` entries and the values of free keys
    (not the conditions of ``if``, which describe no key)."""
    if isinstance(node, dict):
        node = {key: child for key, child in node.items() if key != "if"}
        for key, child in node.get("properties", {}).items():
            yield f"{path}/properties/{key}", child
        if isinstance(node.get("additionalProperties"), dict):
            yield f"{path}/additionalProperties", node["additionalProperties"]
        for key, child in node.items():
            yield from _schemas_of_keys(child, f"{path}/{key}")
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from _schemas_of_keys(child, f"{path}/{index}")


# -- the schema and its documentation ---------------------------------------------------------------------
def test_schema_is_draft_2020_12_and_describes_every_key():
    schema = results_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["properties"]["schema_version"]["const"] == schema_module.SCHEMA_VERSION
    keys = list(_schemas_of_keys(schema))
    assert len(keys) > 200
    undocumented = []
    for path, node in keys:
        target = node
        if "$ref" in node:
            target = schema["$defs"][node["$ref"].removeprefix("#/$defs/")]
        if not (node.get("description") or target.get("description")):
            undocumented.append(path)
    assert not undocumented, f"keys without a description: {undocumented}"


def test_schema_ships_inside_the_package(lenet):
    resource = importlib.resources.files("uqkit.bench").joinpath(schema_module.SCHEMA_FILE)
    assert json.loads(resource.read_text(encoding="utf-8")) == results_schema()
    changed = results_schema()  # a copy: changing it changes nothing that validates
    changed["required"].append("not-a-key")
    assert "not-a-key" not in results_schema()["required"]
    validate_results(lenet)
    if sys.version_info >= (3, 11):  # tomllib: the wheel's package data names the schema
        import tomllib

        config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
        assert schema_module.SCHEMA_FILE in config["tool"]["setuptools"]["package-data"]["uqkit.bench"]
        assert any(dep.startswith("jsonschema") for dep in config["project"]["dependencies"])


def test_docs_tables_are_generated_from_the_schema():
    script = _doc_script()
    text = script.DOC.read_text(encoding="utf-8")
    assert script.render(text, script.sections()) == text, "run python scripts/results_schema_doc.py"
    for path in (
        "tasks.<task>.methods.<method>.metrics.ece",
        "tasks.<task>.methods.<method>.ood.<ood set>.scores.in",
        "tasks.<task>.methods.<method>.history[].time_s",
        "tasks.<task>.methods.<method>.seeds.<seed>",
        "tasks.<task>.methods.<method>.summary.<key path>.se",
        "tasks.<task>.methods.<method>.per_split.nll",
        "tasks.<task>.methods.<method>.conformal.gaussian.width[].se",
    ):
        assert f"| `{path}` |" in text
    # a stale page is told apart: drop one row
    stale = text.replace("| `tasks.<task>.num_test` | int ≥ 0 | In-distribution test examples. |\n", "")
    assert stale != text and script.render(stale, script.sections()) == text


def test_documented_example_is_valid():
    doc = (ROOT / "docs" / "results-schema.md").read_text(encoding="utf-8")
    (example,) = re.findall(r"```json\n(.*?)```", doc, flags=re.DOTALL)
    validate_results(json.loads(example))


# -- every committed results file -------------------------------------------------------------------------
def test_the_committed_results_files_are_found():
    assert len(RESULT_FILES) >= 20


@pytest.mark.parametrize("path", RESULT_FILES, ids=lambda path: str(path.parent.relative_to(RESULTS)))
def test_committed_results_file_is_valid(path):
    validate_results(upgrade_results(json.loads(path.read_text(encoding="utf-8"))))


# -- broken documents: the path and what was wrong --------------------------------------------------------
T = "results.tasks['fashion-mnist']"
M = f"{T}.methods['deterministic']"
R = "results.tasks['uci-boston'].methods['deep-ensemble']"
S = f"{M}.seeds['1']"


def _set(results: dict, path: tuple, value) -> None:
    node = results
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value


_DELETE = object()
_METHOD = ("tasks", "fashion-mnist", "methods", "deterministic")


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ((*_METHOD, "metrics", "ece"), _DELETE, f"{M}.metrics: missing key 'ece'"),
        (("environment", "threads"), _DELETE, "results.environment: missing key 'threads'"),
        ((*_METHOD, "num_samples"), "1", f"{M}.num_samples: expected an int in [1, inf], got str '1'"),
        (
            (*_METHOD, "num_parameters"),
            3.0,
            f"{M}.num_parameters: expected an int in [0, inf], got float 3.0",
        ),
        (
            (*_METHOD, "metrics", "nll"),
            math.nan,
            f"{M}.metrics.nll: expected a number in [0, inf] or null, got nan {NAN_HINT}",
        ),
        (
            (*_METHOD, "shift", "values", 1),
            math.nan,
            f"{M}.shift.values[1]: expected a number, got nan {NAN_HINT}",
        ),
        (
            (*_METHOD, "train_time_s"),
            math.inf,
            f"{M}.train_time_s: expected a number in [0, inf] or null, got inf {NAN_HINT}",
        ),
        (
            (*_METHOD, "metrics", "accuracy"),
            89.5,
            f"{M}.metrics.accuracy: expected a number in [0, 1] or null, got 89.5",
        ),
        (
            (*_METHOD, "ood", "digits", "scores", "kind"),
            "aleatoric",
            f"{M}.ood['digits'].scores.kind: expected one of 'total', 'epistemic', got str 'aleatoric'",
        ),
        (
            ("tasks", "fashion-mnist", "kind"),
            "ranking",
            f"{T}.kind: expected one of 'regression', got str 'ranking'",
        ),
        (("tasks",), {}, "results.tasks: expected at least 1 entry, got an empty object"),
        (("config", "methods"), "all", "results.config.methods: expected a list or null, got str 'all'"),
        ((*_METHOD, "history", 3, "val_nll"), _DELETE, f"{M}.history[3]: missing key 'val_nll'"),
        ((*_METHOD, "calibration_curve", "confidence", 4), None, None),  # an empty bin's confidence: valid
    ],
)
def test_broken_classification_document_names_the_path(lenet, path, value, message):
    broken = copy.deepcopy(lenet)
    _set(broken, path, value)
    if message is None:
        validate_results(broken)
        return
    with pytest.raises(ValueError) as caught:
        validate_results(broken)
    assert str(caught.value) == message  # one problem: exactly one line, naming the path


def test_nan_read_from_the_file_is_an_error(lenet):
    broken = copy.deepcopy(lenet)
    broken["tasks"]["fashion-mnist"]["methods"]["deterministic"]["metrics"]["brier"] = math.nan
    text = json.dumps(broken)  # Python writes NaN, which is not JSON, and reads it back
    assert "NaN" in text
    with pytest.raises(
        ValueError, match=re.escape(f"{M}.metrics.brier: expected a number in [0, 2] or null")
    ):
        validate_results(json.loads(text))


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("per_split", "nll", 3), "x", f"{R}.per_split.nll[3]: expected a number or null, got str 'x'"),
        (
            ("metrics", "coverage_95", "mean"),
            95.0,
            f"{R}.metrics.coverage_95.mean: expected a number in [0, 1]",
        ),
        (("num_members",), _DELETE, f"{R}: missing key 'num_members'"),
        (
            ("conformal", "network"),
            "retrained",
            f"{R}.conformal.network: expected one of 'evaluated', 'selection'",
        ),
    ],
)
def test_broken_regression_document_names_the_path(boston, path, value, message):
    broken = copy.deepcopy(boston)
    _set(broken, ("tasks", "uci-boston", "methods", "deep-ensemble", *path), value)
    with pytest.raises(ValueError, match=re.escape(message)):
        validate_results(broken)


def test_rules_across_keys_follow_the_schema(boston, lenet):
    """What a schema cannot state is still checked, with the path: per-split lengths, OOD sets."""
    broken = copy.deepcopy(boston)
    broken["tasks"]["uci-boston"]["methods"]["deep-ensemble"]["per_split"]["rmse"].pop()
    with pytest.raises(
        ValueError, match=re.escape(f"{R}.per_split.rmse: expected 20 values (one per split), got 19")
    ):
        validate_results(broken)
    broken = copy.deepcopy(lenet)
    del broken["tasks"]["fashion-mnist"]["ood_sets"]["digits"]
    with pytest.raises(ValueError, match=re.escape(f"{M}.ood: unexpected OOD set 'digits'")):
        validate_results(broken)


def test_broken_seed_block_names_the_seed(three_seeds):
    validate_results(three_seeds)
    broken = copy.deepcopy(three_seeds)
    del broken["tasks"]["fashion-mnist"]["methods"]["deterministic"]["seeds"]["1"]["metrics"]["nll"]
    with pytest.raises(ValueError, match=re.escape(f"{S}.metrics: missing key 'nll'")):
        validate_results(broken)
    broken = copy.deepcopy(three_seeds)
    broken["tasks"]["fashion-mnist"]["methods"]["deterministic"]["summary"]["metrics.nll"]["se"] = -0.1
    with pytest.raises(
        ValueError, match=re.escape(f"{M}.summary['metrics.nll'].se: expected a number in [0, inf]")
    ):
        validate_results(broken)
    broken = copy.deepcopy(three_seeds)
    broken["config"]["seeds"] = [0, 1, 1]
    with pytest.raises(ValueError, match=re.escape("results.config.seeds: expected distinct values")):
        validate_results(broken)


def test_problems_are_listed_most_relevant_first_and_capped(lenet):
    broken = copy.deepcopy(lenet)
    method = broken["tasks"]["fashion-mnist"]["methods"]["deterministic"]
    method["risk_coverage"]["risk"][:12] = ["bad"] * 12
    del broken["command"]
    with pytest.raises(ValueError) as caught:
        validate_results(broken)
    lines = str(caught.value).splitlines()
    assert lines[0] == "results: missing key 'command'"  # shallowest first, then in path order
    assert len(lines) == MAX_LISTED_ERRORS + 1
    assert lines[1] == f"{M}.risk_coverage.risk[0]: expected a number in [0, 1] or null, got str 'bad'"
    assert lines[-1] == "... and 3 more (schema: uqkit/bench/results.schema.json)"


def _plain_errors(document) -> set[tuple[str, str]]:
    """jsonschema's own validator (per-item descent, no fast list check), with the same number types."""
    base = jsonschema.Draft202012Validator
    checker = base.TYPE_CHECKER.redefine_many(
        {
            "number": schema_module._is_number,
            "integer": schema_module._is_integer,
            "array": schema_module._is_array,
        }
    )
    plain = jsonschema.validators.extend(base, type_checker=checker)(results_schema())
    return {(tuple(e.absolute_path).__repr__(), e.message) for e in plain.iter_errors(document)}


def test_fast_list_check_reports_what_jsonschema_reports(lenet, boston):
    broken = copy.deepcopy(lenet)
    method = broken["tasks"]["fashion-mnist"]["methods"]["deterministic"]
    method["ood"]["digits"]["scores"]["in"][5] = math.nan
    method["calibration_curve"]["count"][2] = -1
    method["calibration_curve"]["count"][3] = True
    method["referral_curve"]["accuracy"][0] = 1.5
    method["shift"]["values"][0] = None
    method["history"][0]["epoch"] = 0
    fast = {
        (tuple(e.absolute_path).__repr__(), e.message) for e in schema_module._validator().iter_errors(broken)
    }
    assert fast == _plain_errors(broken) and len(fast) == 6
    for valid in (lenet, boston):
        assert not list(schema_module._validator().iter_errors(valid)) and not _plain_errors(valid)


def test_report_command_names_the_bad_key_without_a_traceback(lenet, tmp_path, capsys):
    broken = copy.deepcopy(lenet)
    broken["tasks"]["fashion-mnist"]["methods"]["deterministic"]["metrics"]["nll"] = math.nan
    (tmp_path / "results.json").write_text(json.dumps(broken), encoding="utf-8")
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"uqkit: error: {tmp_path / 'results.json'}: not a valid results file: ")
    assert f"{M}.metrics.nll: expected a number in [0, inf] or null, got nan" in err
    assert "Traceback" not in err and not (tmp_path / "report.md").exists()
