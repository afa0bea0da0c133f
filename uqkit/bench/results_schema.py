"""Validation of ``results.json`` against its JSON Schema, ``uqkit/bench/results.schema.json``.

The schema file (JSON Schema draft 2020-12, shipped inside the package) is the layout and its documentation:
every key has a ``description``, and ``docs/results-schema.md`` is generated from it
(``scripts/results_schema_doc.py``). :func:`validate_results` checks a parsed file with ``jsonschema``, then
the rules across keys that a schema cannot state (a method's OOD sets are its task's, parallel lists have
equal lengths, per-split lists have one value per split, ...).

Numbers follow JSON: a finite number, or ``null`` for an undefined value. Python's ``json`` module reads and
writes ``NaN`` and ``Infinity``, which are not JSON; here they are not numbers, so a NaN where the schema
wants a number is an error naming its path (the runner writes ``null`` instead, with ``allow_nan=False``).
Integers are Python ints (not ``3.0``, not ``True``). A results dict built in memory (what
:func:`uqkit.bench.runner.run_bench` returns) may hold tuples where the file holds lists.
"""

from __future__ import annotations

import copy
import functools
import importlib.resources
import itertools
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

__all__ = ["MAX_LISTED_ERRORS", "SCHEMA_FILE", "SCHEMA_VERSION", "results_schema", "validate_results"]

SCHEMA_VERSION = 2
"""Version of the ``results.json`` layout that this module reads (the schema's ``schema_version``); a file of
an older version is read through :func:`uqkit.bench.upgrade.upgrade_results` first. Version 2 (2026-12):
members are counted by ``num_members`` (version 1: ``num_models``, ``details.ensemble_size``) and the method
``gaussian-bnn`` is ``reparameterization-bnn``."""

SCHEMA_FILE = "results.schema.json"
"""The schema's file name inside the ``uqkit.bench`` package."""

MAX_LISTED_ERRORS = 10
"""At most this many schema violations are listed in the error, shallowest first."""

_TYPE_NAMES = {
    "integer": "an int",
    "number": "a number",
    "string": "a string",
    "boolean": "a bool",
    "array": "a list",
    "object": "an object (dict)",
}
_NAVIGATION = {"properties": "fixed", "additionalProperties": "free", "patternProperties": "free"}


@functools.cache
def _schema() -> dict[str, Any]:
    text = importlib.resources.files("uqkit.bench").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    return json.loads(text)


def results_schema() -> dict[str, Any]:
    """The ``results.json`` schema (``uqkit/bench/results.schema.json``, JSON Schema draft 2020-12), parsed:
    a fresh copy, which the caller may change without affecting :func:`validate_results`."""
    return copy.deepcopy(_schema())


def _is_number(checker: Any, instance: Any) -> bool:
    """A JSON number: int or float, not bool, finite (NaN and Infinity are not JSON)."""
    return isinstance(instance, (int, float)) and not isinstance(instance, bool) and math.isfinite(instance)


def _is_integer(checker: Any, instance: Any) -> bool:
    """A JSON integer as Python's ``json`` reads it: an int, not bool (``3.0`` is a float)."""
    return isinstance(instance, int) and not isinstance(instance, bool)


def _is_array(checker: Any, instance: Any) -> bool:
    """A JSON array: a list, or a tuple in a results dict built in memory (``json`` writes it as a list)."""
    return isinstance(instance, (list, tuple))


_SCALAR_TYPES: dict[str, Callable[[Any], bool]] = {
    "null": lambda value: value is None,
    "number": lambda value: _is_number(None, value),
    "integer": lambda value: _is_integer(None, value),
    "string": lambda value: isinstance(value, str),
    "boolean": lambda value: isinstance(value, bool),
}
_SCALAR_KEYWORDS = {"type", "minimum", "maximum", "description", "title"}
_scalar_checks: dict[int, tuple[Any, Callable[[Any], bool] | None]] = {}


def _scalar_check(schema: Any) -> Callable[[Any], bool] | None:
    """For an item schema of scalars (``type`` with optional ``minimum`` / ``maximum``, possibly behind a
    ``$ref`` to ``#/$defs/...``), a predicate that is true exactly when an item is valid; else None."""
    cached = _scalar_checks.get(id(schema))
    if cached is not None and cached[0] is schema:
        return cached[1]
    resolved = schema
    if isinstance(schema, dict) and set(schema) == {"$ref"} and schema["$ref"].startswith("#/$defs/"):
        resolved = _schema()["$defs"].get(schema["$ref"].removeprefix("#/$defs/"))
    check = None
    if isinstance(resolved, dict) and "type" in resolved and set(resolved) <= _SCALAR_KEYWORDS:
        types = [resolved["type"]] if isinstance(resolved["type"], str) else list(resolved["type"])
        low, high = resolved.get("minimum"), resolved.get("maximum")
        if set(types) <= set(_SCALAR_TYPES):
            tests = [_SCALAR_TYPES[name] for name in types]

            def check(value: Any) -> bool:
                if not any(test(value) for test in tests):
                    return False
                if not _is_number(None, value):
                    return True
                return (low is None or value >= low) and (high is None or value <= high)

    _scalar_checks[id(schema)] = (schema, check)
    return check


def _fast_items(original: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
    """The ``items`` keyword, with lists of scalars checked in one loop: jsonschema's per-item descent
    costs ~30 us, and a results file holds ~10^5 numbers. An item that fails the loop's check is handed to
    the validator, so the errors (and their paths) are jsonschema's own."""

    def items(validator: Any, items: Any, instance: Any, schema: Mapping[str, Any]) -> Iterator[Any]:
        check = _scalar_check(items)
        if check is None or "prefixItems" in schema or not validator.is_type(instance, "array"):
            yield from original(validator, items, instance, schema)
            return
        for index, value in enumerate(instance):
            if not check(value):
                yield from validator.descend(value, items, path=index)

    return items


@functools.cache
def _validator() -> Any:
    try:
        import jsonschema
    except ImportError as error:  # a core dependency: only a broken install lacks it
        raise ImportError("validating results.json needs jsonschema: pip install 'jsonschema>=4.18'") from (
            error
        )
    base = jsonschema.Draft202012Validator
    types = {"number": _is_number, "integer": _is_integer, "array": _is_array}
    checker = base.TYPE_CHECKER.redefine_many(types)
    schema = _schema()
    base.check_schema(schema)
    keywords = {"items": _fast_items(base.VALIDATORS["items"])}
    return jsonschema.validators.extend(base, validators=keywords, type_checker=checker)(schema)


def _describe(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value!r} (not a JSON number; write null for an undefined value)"
    return f"{type(value).__name__} {value!r}"[:120]


def _bound(value: float | None, default: str) -> str:
    return default if value is None else f"{value:g}"


def _expected(schema: Mapping[str, Any]) -> str:
    """What a (sub)schema of scalar type accepts, in words: ``a number in [0, 1] or null``."""
    types = schema.get("type", [])
    types = [types] if isinstance(types, str) else list(types)
    words = " or ".join(_TYPE_NAMES.get(name, name) for name in types if name != "null") or "null"
    if {"integer", "number"} & set(types) and ("minimum" in schema or "maximum" in schema):
        low, high = _bound(schema.get("minimum"), "-inf"), _bound(schema.get("maximum"), "inf")
        words += f" in [{low}, {high}]"
    return words + (" or null" if "null" in types and words != "null" else "")


def _path(error: Any) -> str:
    """The error's place in the file, ``results.tasks['fashion-mnist'].methods['deterministic'].metrics``:
    fixed keys (schema ``properties``) after a dot, free keys (task, method, OOD set names) and list indices
    in brackets; read off the schema path, which says how the validator descended into the instance."""
    instance_path = list(error.absolute_path)
    steps: list[str] = []
    tokens = list(error.absolute_schema_path)
    index = 0
    while index < len(tokens) and len(steps) < len(instance_path):
        token = tokens[index]
        key = instance_path[len(steps)]
        if token in _NAVIGATION:
            free = _NAVIGATION[token] == "free"
            steps.append(f"[{key!r}]" if free or not str(key).isidentifier() else f".{key}")
            index += 1 if token == "additionalProperties" else 2  # skip the property name or pattern
        elif token in ("items", "prefixItems"):
            steps.append(f"[{key}]")
            index += 1 if token == "items" else 2
        else:
            index += 1
    for key in instance_path[len(steps) :]:  # not accounted for by the schema path: generic form
        steps.append(f"[{key}]" if isinstance(key, int) else f"[{key!r}]")
    return "results" + "".join(steps)


def _message(error: Any) -> str:
    """One schema violation as ``<path>: <what was expected>, got <what came>``."""
    keyword, schema, instance = error.validator, error.schema, error.instance
    if keyword == "required":
        match = re.match(r"(.+) is a required property$", error.message)
        return f"missing key {match.group(1) if match else error.message}"
    if keyword in ("type", "minimum", "maximum"):
        got = _describe(instance) if keyword == "type" else repr(instance)
        return f"expected {_expected(schema)}, got {got}"
    if keyword == "enum":
        return f"expected one of {', '.join(map(repr, error.validator_value))}, got {_describe(instance)}"
    if keyword == "const":
        return f"expected {error.validator_value!r}, got {_describe(instance)}"
    if keyword == "minProperties":
        count = error.validator_value
        got = "an empty object" if not instance else f"{len(instance)}"
        return f"expected at least {count} entr{'y' if count == 1 else 'ies'}, got {got}"
    if keyword == "minItems":
        return f"expected at least {error.validator_value} items, got {len(instance)}"
    if keyword == "uniqueItems":
        return f"expected distinct values, got {_describe(instance)}"
    if keyword == "pattern" and "propertyNames" in error.absolute_schema_path:
        return f"expected keys matching {error.validator_value!r}, got key {instance!r}"
    return error.message


def _schema_errors(results: Mapping[str, Any]) -> list[str]:
    """Every schema violation, shallowest first (a missing block before what is wrong inside another), then
    in path order."""
    errors = sorted(_validator().iter_errors(results), key=lambda error: (len(error.path), list(error.path)))
    return [f"{_path(error)}: {_message(error)}" for error in errors]


def validate_results(results: Any) -> None:
    """Check a results dict against ``results.json`` schema version :data:`SCHEMA_VERSION`.

    First the JSON Schema (:func:`results_schema`, ``uqkit/bench/results.schema.json``): presence and type
    of every key, bounds such as fractions in ``[0, 1]`` (which catch percentages written as fractions),
    allowed values (a task's ``kind``), finite numbers or ``null``. Then the rules across keys: every OOD
    set of a task appears in each of its methods and no other; a method has a ``shift`` block exactly when
    its task has one; the parallel lists of a curve have the same length; an optional ``surface`` grid has
    ``len(y)`` rows of ``len(x)`` values over increasing axes, its point lists pair up and its labels are
    class indices; an optional ``conformal`` block has one entry per level of its ``alphas`` in every list
    (and ``C + 1`` fractions in each ``size_fraction``); a method's ``seeds`` name ``config.seeds``; a
    regression method's per-split lists have ``num_splits`` values. Extra keys are allowed. A file of an older
    schema version is an error here: read it through :func:`uqkit.bench.upgrade.upgrade_results` first.

    Args:
        results: the parsed ``results.json``.

    Returns:
        None.

    Raises:
        ValueError: naming the path of each bad key (at most :data:`MAX_LISTED_ERRORS`, shallowest
            first) and what was expected, e.g.
            ``results.tasks['fashion-mnist'].methods['deterministic'].metrics: missing key 'ece'``.
    """
    if not isinstance(results, dict):
        raise ValueError(
            f"results: expected an object (dict) parsed from results.json, got {_describe(results)}"
        )
    if "schema_version" in results and results["schema_version"] != SCHEMA_VERSION:
        version = results["schema_version"]
        older = isinstance(version, int) and not isinstance(version, bool) and version < SCHEMA_VERSION
        hint = "; read an older file through uqkit.bench.upgrade.upgrade_results first" if older else ""
        raise ValueError(
            f"results.schema_version: this uqkit reads schema version {SCHEMA_VERSION}, got {version!r}{hint}"
        )
    problems = _schema_errors(results)
    if problems:
        listed = problems[:MAX_LISTED_ERRORS]
        more = len(problems) - len(listed)
        tail = [f"... and {more} more (schema: uqkit/bench/{SCHEMA_FILE})"] if more else []
        raise ValueError("\n".join([*listed, *tail]))
    _check_consistency(results)


# ---------------------------------------------------------------------------------------------------------
# Rules across keys (the schema cannot state them)
# ---------------------------------------------------------------------------------------------------------
_SAME_LENGTH = {
    "calibration_curve": ("bin_lower", "bin_upper", "confidence", "accuracy", "count"),
    "referral_curve": ("referred_fraction", "accuracy"),
    "risk_coverage": ("coverage", "risk"),
    "shift": ("values", "accuracy", "ece", "nll"),
}


def _check_consistency(results: Mapping[str, Any]) -> None:
    """Rules across keys: OOD sets and shifts agree between a task and its methods; curve lengths match."""
    for task_name, task in results["tasks"].items():
        task_path = f"results.tasks[{task_name!r}]"
        if task.get("kind") == "regression":
            _check_regression_consistency(task, task_path)
            continue
        for method_name, method in task["methods"].items():
            path = f"{task_path}.methods[{method_name!r}]"
            _check_method_consistency(task, method, task_path, path)
            if "seeds" in method:
                _check_seed_names(results, method, path)
            for seed, block in method.get("seeds", {}).items():
                _check_method_consistency(task, block, task_path, f"{path}.seeds[{seed!r}]")


def _check_equal_lengths(block: Mapping[str, Any], keys: Iterable[str], path: str) -> None:
    lengths = {key: len(block[key]) for key in keys}
    if len(set(lengths.values())) > 1:
        desc = ", ".join(f"{key} has {n}" for key, n in lengths.items())
        raise ValueError(f"{path}: expected lists of the same length, got {desc}")


def _check_ood_names(task: Mapping[str, Any], method: Mapping[str, Any], task_path: str, path: str) -> None:
    """A method's ``ood`` names exactly the task's ``ood_sets``."""
    for ood_name in task.get("ood_sets", {}):
        if ood_name not in method.get("ood", {}):
            raise ValueError(f"{path}.ood: missing key {ood_name!r} (listed in {task_path}.ood_sets)")
    for ood_name in method.get("ood", {}):
        if ood_name not in task.get("ood_sets", {}):
            raise ValueError(
                f"{path}.ood: unexpected OOD set {ood_name!r}, not listed in {task_path}.ood_sets"
            )


def _check_regression_consistency(task: Mapping[str, Any], task_path: str) -> None:
    """Per-split lists hold one value per split; the coverage curve's lists pair up; OOD sets agree."""
    splits = task["num_splits"]
    for method_name, method in task["methods"].items():
        path = f"{task_path}.methods[{method_name!r}]"
        _check_ood_names(task, method, task_path, path)
        for key, values in method["per_split"].items():
            if isinstance(values, list) and len(values) != splits:
                raise ValueError(
                    f"{path}.per_split.{key}: expected {splits} values (one per split), got {len(values)}"
                )
        _check_equal_lengths(method["coverage_curve"], ("expected", "observed"), f"{path}.coverage_curve")
        _check_conformal(method.get("conformal"), ("normalized", "absolute", "gaussian"), f"{path}.conformal")


def _check_conformal(
    block: Mapping[str, Any] | None, parts: Sequence[str], path: str, classes: int = 0
) -> None:
    """Every list of a ``conformal`` block's ``parts`` has one entry per level of ``alphas``; with
    ``classes``, every ``size_fraction`` row has ``classes + 1`` entries (sizes 0 to ``C``)."""
    if block is None:
        return
    levels = len(block["alphas"])
    for part in parts:
        for key, values in block[part].items():
            if isinstance(values, list) and len(values) != levels:
                raise ValueError(
                    f"{path}.{part}.{key}: expected {levels} values (one per alpha), got {len(values)}"
                )
        for index, row in enumerate(block[part].get("size_fraction", [])):
            if len(row) != classes + 1:
                raise ValueError(
                    f"{path}.{part}.size_fraction[{index}]: expected {classes + 1} fractions (set sizes 0 to "
                    f"{classes}), got {len(row)}"
                )


def _check_method_consistency(
    task: Mapping[str, Any], method: Mapping[str, Any], task_path: str, path: str
) -> None:
    """The rules across keys of one classification method block (or one seed's block of it)."""
    _check_ood_names(task, method, task_path, path)
    if (task["shift"] is None) != (method["shift"] is None):
        expected = "null" if task["shift"] is None else "an object"
        state = "null" if task["shift"] is None else "not null"
        raise ValueError(f"{path}.shift: expected {expected} because {task_path}.shift is {state}")
    for block_name, keys in _SAME_LENGTH.items():
        if method[block_name] is not None:
            _check_equal_lengths(method[block_name], keys, f"{path}.{block_name}")
    if "surface" in method:
        _check_surface(method["surface"], task["num_classes"], f"{path}.surface")
    _check_conformal(method.get("conformal"), ("lac", "aps"), f"{path}.conformal", task["num_classes"])


def _check_seed_names(results: Mapping[str, Any], method: Mapping[str, Any], path: str) -> None:
    """A method's ``seeds`` holds one block per seed of ``config.seeds``, in that order."""
    expected = [str(seed) for seed in results["config"].get("seeds") or []]
    if list(method["seeds"]) != expected:
        raise ValueError(
            f"{path}.seeds: expected one block per seed of results.config.seeds, {expected}, got "
            f"{list(method['seeds'])}"
        )


def _check_surface(surface: Mapping[str, Any], num_classes: int, path: str) -> None:
    """A surface grid is ``len(y)`` rows of ``len(x)`` values with increasing axes; point lists pair up."""
    for axis in ("x", "y"):
        values = surface[axis]
        if len(values) < 2 or any(b <= a for a, b in itertools.pairwise(values)):
            raise ValueError(f"{path}.{axis}: expected at least 2 strictly increasing grid coordinates")
    rows, columns = len(surface["y"]), len(surface["x"])
    for kind in ("total", "epistemic"):
        grid = surface[kind]
        if len(grid) != rows or any(len(row) != columns for row in grid):
            raise ValueError(
                f"{path}.{kind}: expected {rows} rows (len(y)) of {columns} values (len(x)), got "
                f"{len(grid)} rows of lengths {sorted({len(row) for row in grid})}"
            )
    _check_equal_lengths(surface["train_points"], ("x", "y", "label"), f"{path}.train_points")
    _check_equal_lengths(surface["ood_points"], ("x", "y"), f"{path}.ood_points")
    labels = surface["train_points"]["label"]
    if any(not 0 <= label < num_classes for label in labels):
        raise ValueError(f"{path}.train_points.label: expected class indices in [0, {num_classes - 1}]")
