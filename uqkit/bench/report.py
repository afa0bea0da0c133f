"""The benchmark report: check ``results.json``, render leaderboards, write Markdown and HTML with figures.

``uqkit bench`` writes every number of a run into ``results.json`` (schema version 1, documented key by key
in ``docs/results-schema.md``); this module is its consumer:

* :func:`validate_results` checks a results dict against :data:`REQUIRED_KEYS` and a few consistency rules,
  raising ``ValueError`` with the path of the first bad key
  (``results.tasks['fashion-mnist'].methods['deterministic'].metrics: missing key 'ece'``);
* :func:`build_leaderboard` builds the table of one task (methods sorted by NLL, best values marked);
  :func:`format_leaderboard` renders it as fixed-width text for the terminal and
  :func:`leaderboard_markdown` as GitHub Markdown; the HTML report renders the same rows;
* :func:`write_report` writes ``report.md``, a self-contained ``report.html`` and ``figures/*.png``
  (drawn by :mod:`uqkit.bench.plots`, which needs matplotlib).

Only the figures need matplotlib; validation and leaderboards use the standard library alone.
"""

from __future__ import annotations

import base64
import html
import itertools
import math
import os
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from uqkit.bench import conformal_report
from uqkit.bench.report_format import REPORT_CSS as _CSS
from uqkit.bench.report_format import atomic_write_bytes as _atomic_write
from uqkit.bench.report_format import html_key_value_table as _html_key_value_table
from uqkit.bench.report_format import html_not_applicable as _html_not_applicable
from uqkit.bench.report_format import import_plots as _import_plots
from uqkit.bench.report_format import is_regression_task, method_order, not_applicable_lines
from uqkit.bench.report_format import markdown_escape as _md
from uqkit.bench.report_format import markdown_header as _markdown_header
from uqkit.bench.report_format import markdown_not_applicable as _markdown_not_applicable
from uqkit.bench.report_format import plain_text as _plain
from uqkit.bench.seeds import mean_and_standard_error, paired_t_test

__all__ = [
    "REGRESSION_TASK_KEYS",
    "REQUIRED_KEYS",
    "SCHEMA_VERSION",
    "ByKind",
    "Leaderboard",
    "LeaderboardColumn",
    "ListOf",
    "MapOf",
    "NotRequired",
    "Nullable",
    "Number",
    "build_leaderboard",
    "format_leaderboard",
    "is_regression_task",
    "leaderboard_markdown",
    "method_order",
    "not_applicable_lines",
    "schema_key_paths",
    "validate_results",
    "write_report",
]

SCHEMA_VERSION = 1
"""Version of the ``results.json`` layout that this module reads and documents."""


# ---------------------------------------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Number:
    """A JSON number (int or float, not bool), optionally bounded; NaN passes the bounds (undefined).

    Args:
        low: smallest allowed value, or None for no lower bound.
        high: largest allowed value, or None for no upper bound.
        nullable: whether ``null`` (an undefined value, rendered as "—") is allowed.
    """

    low: float | None = None
    high: float | None = None
    nullable: bool = True


@dataclass(frozen=True)
class Nullable:
    """``spec`` or ``null``."""

    spec: Any


@dataclass(frozen=True)
class NotRequired:
    """An optional key of a fixed-key object: may be absent; checked against ``spec`` when present."""

    spec: Any


@dataclass(frozen=True)
class ListOf:
    """A JSON array whose every item matches ``spec``."""

    spec: Any


@dataclass(frozen=True)
class ByKind:
    """An object checked against ``specs[value["kind"]]``, or ``default`` when it has no ``kind`` key.

    Args:
        default: the spec of objects without ``kind`` (what every file before the key existed holds).
        specs: ``kind`` value -> spec.
    """

    default: Any
    specs: Mapping[str, Any]


@dataclass(frozen=True)
class MapOf:
    """A JSON object with free (user-chosen) string keys, e.g. task or method names, values matching ``spec``.

    Args:
        spec: what every value must match.
        min_items: the fewest entries allowed.
    """

    spec: Any
    min_items: int = 0


FRACTION = Number(0.0, 1.0)
"""A fraction in ``[0, 1]`` (accuracy, ECE, AUROC, ...), or null."""
NON_NEGATIVE = Number(0.0, None)
"""A number ``>= 0`` (NLL, seconds, ...), or null."""

_OOD_SCORES = {"auroc": FRACTION, "aupr": FRACTION, "fpr95": FRACTION}

_ALPHAS = ListOf(Number(0.0, 1.0, nullable=False))
_CONFORMAL_SETS = {
    "randomized": bool,
    "coverage": ListOf(FRACTION),
    "mean_set_size": ListOf(NON_NEGATIVE),
    "size_fraction": ListOf(ListOf(FRACTION)),
    "worst_size_stratified_coverage": ListOf(FRACTION),
    "threshold": ListOf(Number()),
}
_CONFORMAL = NotRequired(
    Nullable(
        {
            "alphas": _ALPHAS,
            "calibration": str,
            "num_calibration": int,
            "lac": _CONFORMAL_SETS,
            "aps": _CONFORMAL_SETS,
        }
    )
)
"""Conformal prediction sets at each level of ``alphas``, calibrated on the validation split (lists over
``alphas``); optional, as files written before it lack it."""

_METHOD_KEYS: dict[str, Any] = {
    "num_samples": int,
    "num_parameters": int,
    "train_time_s": NON_NEGATIVE,
    "inference_ms_per_example": NON_NEGATIVE,
    "description": NotRequired(str),
    "shares_training_with": NotRequired(Nullable(str)),
    "learning_rate_schedule": NotRequired(str),
    "details": NotRequired({}),
    "training": NotRequired(
        {
            "epochs": int,
            "budget_multiple": int,
            "network_epochs": int,
            "batch_orders": int,
            "optimizer": str,
            "selects_best_epoch": bool,
        }
    ),
    "metrics": {
        "accuracy": FRACTION,
        "nll": NON_NEGATIVE,
        "brier": Number(0.0, 2.0),
        "ece": FRACTION,
        "aurc": FRACTION,
    },
    "calibration_curve": {
        "bin_lower": ListOf(Number(0.0, 1.0)),
        "bin_upper": ListOf(Number(0.0, 1.0)),
        "confidence": ListOf(FRACTION),
        "accuracy": ListOf(FRACTION),
        "count": ListOf(Number(0.0, None, nullable=False)),
    },
    "referral_curve": {"referred_fraction": ListOf(FRACTION), "accuracy": ListOf(FRACTION)},
    "risk_coverage": {"coverage": ListOf(FRACTION), "risk": ListOf(FRACTION)},
    "ood": MapOf(
        {
            "total": _OOD_SCORES,
            "epistemic": _OOD_SCORES,
            "scores": {"kind": str, "in": ListOf(Number()), "ood": ListOf(Number())},
        }
    ),
    "shift": Nullable(
        {
            "values": ListOf(Number(nullable=False)),
            "accuracy": ListOf(FRACTION),
            "ece": ListOf(FRACTION),
            "nll": ListOf(NON_NEGATIVE),
        }
    ),
    "surface": NotRequired(
        {
            "x": ListOf(Number(nullable=False)),
            "y": ListOf(Number(nullable=False)),
            "total": ListOf(ListOf(NON_NEGATIVE)),
            "epistemic": ListOf(ListOf(NON_NEGATIVE)),
            "train_points": {
                "x": ListOf(Number(nullable=False)),
                "y": ListOf(Number(nullable=False)),
                "label": ListOf(int),
            },
            "ood_points": {"x": ListOf(Number(nullable=False)), "y": ListOf(Number(nullable=False))},
        }
    ),
    "conformal": _CONFORMAL,
    "history": ListOf(
        {
            "epoch": int,
            "train_loss": Number(),
            "val_accuracy": FRACTION,
            "val_nll": NON_NEGATIVE,
            "time_s": NON_NEGATIVE,
        }
    ),
}

_SEED_BLOCK = dict(_METHOD_KEYS)
"""One seed's block of a method run over several seeds: the keys of a one-seed method block."""
_OVER_SEEDS = {"mean": Number(), "se": NON_NEGATIVE, "n": int}
"""A number over seeds: mean, standard error (null with one seed or an undefined value) and seed count."""
_METHOD_KEYS["seeds"] = NotRequired(MapOf(_SEED_BLOCK, min_items=2))
_METHOD_KEYS["summary"] = NotRequired(MapOf(_OVER_SEEDS))
"""A run over several seeds (``--seeds``): every seed's block, and the leaderboard's numbers over seeds
(:func:`uqkit.bench.seeds.aggregate_seed_blocks`); the method's other keys hold the means."""

_SUMMARY = {"mean": Number(), "se": NON_NEGATIVE}

_INTERVALS = {
    "coverage": ListOf({"mean": FRACTION, "se": NON_NEGATIVE}),
    "width": ListOf({"mean": NON_NEGATIVE, "se": NON_NEGATIVE}),
}
_CONFORMAL_INTERVALS = NotRequired(
    Nullable(
        {
            "alphas": _ALPHAS,
            "calibration": str,
            "network": str,
            "num_calibration": int,
            "normalized": _INTERVALS,
            "absolute": _INTERVALS,
            "gaussian": _INTERVALS,
        }
    )
)
"""Conformal intervals of a regression method and the Gaussian intervals beside them (lists over
``alphas``, each value a mean and standard error over splits); optional."""

_REGRESSION_METHOD_KEYS: dict[str, Any] = {
    "description": str,
    "num_models": int,
    "num_samples": int,
    "num_parameters": int,
    "train_time_s": NON_NEGATIVE,
    "selection_time_s": NON_NEGATIVE,
    "inference_ms_per_example": NON_NEGATIVE,
    "metrics": {
        "nll": _SUMMARY,
        "rmse": {"mean": NON_NEGATIVE, "se": NON_NEGATIVE},
        "nll_mixture": _SUMMARY,
        "coverage_95": {"mean": FRACTION, "se": NON_NEGATIVE},
    },
    "per_split": {
        "nll": ListOf(Number()),
        "rmse": ListOf(NON_NEGATIVE),
        "nll_mixture": ListOf(Number()),
        "coverage_95": ListOf(FRACTION),
        "learning_rate": ListOf(Number(0.0, None)),
        "dropout": Nullable(ListOf(FRACTION)),
        "epochs": ListOf(int),
        "prior_precision": NotRequired(ListOf(Number(0.0, None))),
        "temperature": NotRequired(ListOf(Number(0.0, None))),
        "members": NotRequired(ListOf(ListOf({}))),
        "student_learning_rate": NotRequired(ListOf(Number(0.0, None))),
        "student_epochs": NotRequired(ListOf(int)),
    },
    "training": NotRequired(
        {
            "optimizer": str,
            "selection_network_epochs": int,
            "retraining_network_epochs": NON_NEGATIVE,
        }
    ),
    "details": NotRequired({}),
    "selection": {
        "grid": ListOf(MapOf(Number())),
        "select_epochs": bool,
        "max_epochs": int,
        "validation_fraction": FRACTION,
        "validation_nll": ListOf(ListOf(Number())),
    },
    "coverage_curve": {"expected": ListOf(FRACTION), "observed": ListOf(FRACTION)},
    "ood": NotRequired(MapOf({"total": _OOD_SCORES, "epistemic": _OOD_SCORES})),
    "conformal": _CONFORMAL_INTERVALS,
}

_NOT_APPLICABLE = NotRequired(MapOf(str))
"""Methods of the run that could not be built on the task's model (the user's), name -> reason."""

REGRESSION_TASK_KEYS: dict[str, Any] = {
    "kind": str,
    "description": str,
    "source": str,
    "num_rows": int,
    "num_features": int,
    "num_splits": int,
    "num_train": int,
    "num_test": int,
    "protocol": {
        "hidden_units": Nullable(int),
        "model": NotRequired(str),
        "batch_size": int,
        "optimizer": str,
        "validation_fraction": FRACTION,
        "standardization": str,
    },
    "published": MapOf({"nll": Nullable(ListOf(Number())), "rmse": Nullable(ListOf(Number()))}),
    "ood_sets": NotRequired(MapOf(str)),
    "not_applicable": _NOT_APPLICABLE,
    "methods": MapOf(_REGRESSION_METHOD_KEYS, min_items=1),
}
"""The layout of a regression task (``tasks.<task>.kind == "regression"``) in ``results.json`` version 1.

Regression tasks were added without a version change: a task without ``kind`` (every file written before)
is a classification task checked against ``REQUIRED_KEYS["tasks"]``; one with ``kind: "regression"`` is
checked against this spec instead. See the regression section of ``docs/results-schema.md``.
"""

REQUIRED_KEYS: dict[str, Any] = {
    "schema_version": int,
    "created": str,
    "command": str,
    "environment": {
        "uqkit": str,
        "torch": str,
        "python": str,
        "numpy": str,
        "platform": str,
        "cpu": str,
        "cpu_count": NotRequired(Nullable(int)),
        "threads": int,
        "device": str,
        "gpu": NotRequired(str),
        "executor": NotRequired(str),
    },
    "config": {
        "tasks": ListOf(str),
        "methods": Nullable(ListOf(str)),
        "epochs": Nullable(int),
        "seed": int,
        "seeds": NotRequired(ListOf(int)),
        "quick": bool,
        "batch_size": Nullable(int),
        "learning_rate": NotRequired(Number(0.0, None)),
        "model": Nullable(str),
        "device": NotRequired(str),
    },
    "tasks": MapOf(
        ByKind(
            {
                "description": str,
                "num_classes": int,
                "input_shape": ListOf(int),
                "num_train": int,
                "num_val": int,
                "num_test": int,
                "model": NotRequired(str),
                "training": NotRequired(
                    {"epochs": int, "batch_size": int, "learning_rate": Number(0.0, None), "optimizer": str}
                ),
                "ood_sets": MapOf(str),
                "shift": Nullable({"name": str, "unit": str, "values": ListOf(Number(nullable=False))}),
                "not_applicable": _NOT_APPLICABLE,
                "methods": MapOf(_METHOD_KEYS, min_items=1),
            },
            {"regression": REGRESSION_TASK_KEYS},
        ),
        min_items=1,
    ),
}
"""The layout of ``results.json`` version 1, as nested Python values.

A ``dict`` is an object with exactly these keys required (extra keys are allowed and ignored);
:class:`MapOf` an object with free keys (task, method and OOD set names); :class:`ListOf` an array;
:class:`Number` a number or null within bounds; :class:`Nullable` a value or null; :class:`NotRequired` a key
that may be absent; ``int``, ``str``, ``bool`` the JSON scalars. ``docs/results-schema.md`` explains every
key and its units.
"""

_SAME_LENGTH = {
    "calibration_curve": ("bin_lower", "bin_upper", "confidence", "accuracy", "count"),
    "referral_curve": ("referred_fraction", "accuracy"),
    "risk_coverage": ("coverage", "risk"),
    "shift": ("values", "accuracy", "ece", "nll"),
}


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"[:120]


def _spec_name(spec: Any) -> str:
    if isinstance(spec, Number):
        low = "-inf" if spec.low is None else f"{spec.low:g}"
        high = "inf" if spec.high is None else f"{spec.high:g}"
        bounds = "" if spec.low is None and spec.high is None else f" in [{low}, {high}]"
        return f"a number{bounds}{' or null' if spec.nullable else ''}"
    if isinstance(spec, Nullable):
        return f"{_spec_name(spec.spec)} or null"
    if isinstance(spec, ListOf):
        return "a list"
    if isinstance(spec, (dict, MapOf)):
        return "an object (dict)"
    return {int: "an int", str: "a string", bool: "a bool"}[spec]


def _has_kind(value: Any, spec: Any) -> bool:
    """Whether ``value`` is of the JSON kind of ``spec`` (object, list, number, ...), contents unchecked."""
    if isinstance(spec, (dict, MapOf)):
        return isinstance(value, dict)
    if isinstance(spec, ListOf):
        return isinstance(value, (list, tuple))
    if spec is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(spec, Number):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, spec)


def _check_number(value: Any, spec: Number, path: str) -> None:
    if value is None and spec.nullable:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{path}: expected {_spec_name(spec)}, got {_describe(value)}")
    if math.isnan(value):
        return
    if (spec.low is not None and value < spec.low) or (spec.high is not None and value > spec.high):
        raise ValueError(f"{path}: expected {_spec_name(spec)}, got {value!r}")


def _check_value(value: Any, spec: Any, path: str) -> None:
    """Raise ``ValueError`` naming ``path`` unless ``value`` matches ``spec`` (see :data:`REQUIRED_KEYS`)."""
    if isinstance(spec, Number):
        _check_number(value, spec, path)
    elif isinstance(spec, ByKind):
        if isinstance(value, dict) and "kind" in value:
            if value["kind"] not in spec.specs:
                kinds = ", ".join(map(repr, spec.specs))
                raise ValueError(f"{path}.kind: expected one of {kinds}, got {_describe(value['kind'])}")
            _check_value(value, spec.specs[value["kind"]], path)
        else:
            _check_value(value, spec.default, path)
    elif isinstance(spec, Nullable):
        if value is None:
            return
        if not _has_kind(value, spec.spec):
            raise ValueError(f"{path}: expected {_spec_name(spec)}, got {_describe(value)}")
        _check_value(value, spec.spec, path)
    elif isinstance(spec, ListOf):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{path}: expected a list, got {_describe(value)}")
        for index, item in enumerate(value):
            _check_value(item, spec.spec, f"{path}[{index}]")
    elif isinstance(spec, MapOf):
        if not isinstance(value, dict):
            raise ValueError(f"{path}: expected an object (dict), got {_describe(value)}")
        if len(value) < spec.min_items:
            raise ValueError(f"{path}: expected at least {spec.min_items} entry, got an empty object")
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{path}: expected string keys, got {_describe(key)}")
            _check_value(item, spec.spec, f"{path}[{key!r}]")
    elif isinstance(spec, dict):
        if not isinstance(value, dict):
            raise ValueError(f"{path}: expected an object (dict), got {_describe(value)}")
        for key, sub_spec in spec.items():
            if key not in value:
                if isinstance(sub_spec, NotRequired):
                    continue
                raise ValueError(f"{path}: missing key {key!r}")
            if isinstance(sub_spec, NotRequired):
                sub_spec = sub_spec.spec
            _check_value(value[key], sub_spec, f"{path}.{key}")
    elif spec is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{path}: expected an int, got {_describe(value)}")
    elif not isinstance(value, spec):
        raise ValueError(f"{path}: expected {_spec_name(spec)}, got {_describe(value)}")


def _regression_run(results: Mapping[str, Any]) -> bool:
    """True for a run of regression tasks only; ``ValueError`` for a run mixing both kinds."""
    kinds = {is_regression_task(task) for task in results["tasks"].values()}
    if len(kinds) > 1:
        raise ValueError(
            "results: expected regression or classification tasks, got both in one run; run them apart"
        )
    return kinds == {True}


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
            if values is not None and len(values) != splits:
                raise ValueError(
                    f"{path}.per_split.{key}: expected {splits} values (one per split), got {len(values)}"
                )
        curve = method["coverage_curve"]
        if len(curve["expected"]) != len(curve["observed"]):
            raise ValueError(
                f"{path}.coverage_curve: expected lists of the same length, got expected has "
                f"{len(curve['expected'])}, observed has {len(curve['observed'])}"
            )
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


def _check_consistency(results: Mapping[str, Any]) -> None:
    """Rules across keys: OOD sets and shifts agree between a task and its methods; curve lengths match."""
    for task_name, task in results["tasks"].items():
        task_path = f"results.tasks[{task_name!r}]"
        if is_regression_task(task):
            _check_regression_consistency(task, task_path)
            continue
        for method_name, method in task["methods"].items():
            path = f"{task_path}.methods[{method_name!r}]"
            _check_method_consistency(task, method, task_path, path)
            if "seeds" in method:
                _check_seed_names(results, method, path)
            for seed, block in method.get("seeds", {}).items():
                _check_method_consistency(task, block, task_path, f"{path}.seeds[{seed!r}]")


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
        block = method[block_name]
        if block is None:
            continue
        lengths = {key: len(block[key]) for key in keys}
        if len(set(lengths.values())) > 1:
            desc = ", ".join(f"{key} has {n}" for key, n in lengths.items())
            raise ValueError(f"{path}.{block_name}: expected lists of the same length, got {desc}")
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
    for name, keys in (("train_points", ("x", "y", "label")), ("ood_points", ("x", "y"))):
        lengths = {key: len(surface[name][key]) for key in keys}
        if len(set(lengths.values())) > 1:
            desc = ", ".join(f"{key} has {n}" for key, n in lengths.items())
            raise ValueError(f"{path}.{name}: expected lists of the same length, got {desc}")
    labels = surface["train_points"]["label"]
    if any(not 0 <= label < num_classes for label in labels):
        raise ValueError(f"{path}.train_points.label: expected class indices in [0, {num_classes - 1}]")


def validate_results(results: Any) -> None:
    """Check a results dict against ``results.json`` schema version :data:`SCHEMA_VERSION`.

    Checks every key of :data:`REQUIRED_KEYS` (presence, type, and bounds such as fractions in ``[0, 1]``,
    which catch percentages written as fractions), then the rules across keys: every OOD set of a task
    appears in each of its methods and no other; a method has a ``shift`` block exactly when its task has
    one; the parallel lists of a curve have the same length; an optional ``surface`` grid has ``len(y)`` rows
    of ``len(x)`` values over increasing axes, its point lists pair up and its labels are class indices; an
    optional ``conformal`` block has one entry per level of its ``alphas`` in every list (and ``C + 1``
    fractions in each ``size_fraction``). Extra keys are allowed.

    Args:
        results: the parsed ``results.json``.

    Returns:
        None; raises on the first problem found.

    Raises:
        ValueError: naming the path of the bad key and what was expected, e.g.
            ``results.tasks['fashion-mnist'].methods['deterministic'].metrics: missing key 'ece'``.
    """
    if not isinstance(results, dict):
        raise ValueError(
            f"results: expected an object (dict) parsed from results.json, got {_describe(results)}"
        )
    if "schema_version" in results and results["schema_version"] != SCHEMA_VERSION:
        raise ValueError(
            f"results.schema_version: this uqkit reads schema version {SCHEMA_VERSION}, "
            f"got {results['schema_version']!r}"
        )
    _check_value(results, REQUIRED_KEYS, "results")
    _check_consistency(results)


def schema_key_paths(spec: Any = None, prefix: str = "") -> list[str]:
    """Every key path of the schema, e.g. ``tasks.<task>.methods.<method>.metrics.ece``.

    Free keys (:class:`MapOf`) appear as ``<task>``, ``<method>``, ``<ood set>`` or ``<name>``, a method's
    per-seed blocks as ``...seeds.<seed>`` alone (each has the keys of a method block); list items as
    ``[]``. Used to keep ``docs/results-schema.md`` complete.

    Args:
        spec: a part of :data:`REQUIRED_KEYS` (default: all of it).
        prefix: the path of ``spec``.

    Returns:
        The paths in schema order, parents before children.
    """
    spec = REQUIRED_KEYS if spec is None else spec
    if isinstance(spec, ByKind):  # the default (classification) layout; regression: REGRESSION_TASK_KEYS
        return schema_key_paths(spec.default, prefix)
    if isinstance(spec, (Nullable, NotRequired)):
        return schema_key_paths(spec.spec, prefix)
    if isinstance(spec, ListOf):
        return schema_key_paths(spec.spec, f"{prefix}[]") if isinstance(spec.spec, dict) else []
    if isinstance(spec, MapOf):
        key = prefix.rsplit(".", 1)[-1]
        if key == "seeds":  # each seed's block has the keys of a method block, documented once
            return [f"{prefix}.<seed>"]
        placeholder = {"tasks": "<task>", "methods": "<method>", "ood": "<ood set>", "summary": "<key path>"}
        placeholder = placeholder.get(key, "<name>")
        return schema_key_paths(spec.spec, f"{prefix}.{placeholder}")
    if not isinstance(spec, dict):
        return []
    paths = []
    for key, sub_spec in spec.items():
        path = f"{prefix}.{key}" if prefix else key
        paths.append(path)
        paths.extend(schema_key_paths(sub_spec, path))
    return paths


# ---------------------------------------------------------------------------------------------------------
# Leaderboard: built in one place, rendered as text, Markdown and HTML
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LeaderboardColumn:
    """One numeric column of a leaderboard.

    Attributes:
        header: the column title.
        better: ``"higher"`` or ``"lower"`` for a quality column (its best value is marked), None for a cost
            or size column (never marked).
        formatter: turns a value into its cell text.
    """

    header: str
    better: str | None
    formatter: Callable[[float], str]

    def format(self, value: float | None) -> str:
        """The cell text; ``"—"`` for an undefined (null or NaN) value."""
        return "—" if value is None else self.formatter(value)


@dataclass(frozen=True)
class Leaderboard:
    """The leaderboard of one task: one row per method, sorted by NLL (undefined NLL last).

    Attributes:
        task: the task name.
        description: the task description.
        num_test: the number of test examples.
        columns: the numeric columns (the method name column is implicit).
        methods: method names, row order.
        values: ``values[row][column]`` in display units (percent for accuracy and ECE), None if undefined;
            over several seeds, the mean.
        best: ``best[row][column]`` true where the value is the best of a quality column (ties all marked).
        seeds: the seeds of a run over several seeds (``()`` for one seed).
        errors: over several seeds, ``errors[row][column]``: the standard error of the mean of a quality
            column (None if undefined, and for other columns); None for one seed.
        tied: over several seeds, ``tied[row][column]`` true where a quality column's value is not the best
            but not significantly different from it (:data:`SIGNIFICANCE_TEST`); None for one seed.
    """

    task: str
    description: str
    num_test: int
    columns: tuple[LeaderboardColumn, ...]
    methods: tuple[str, ...]
    values: tuple[tuple[float | None, ...], ...]
    best: tuple[tuple[bool, ...], ...]
    seeds: tuple[str, ...] = ()
    errors: tuple[tuple[float | None, ...], ...] | None = None
    tied: tuple[tuple[bool, ...], ...] | None = None

    def cells(self) -> list[list[str]]:
        """``cells[row][column]`` formatted text (``mean ± se`` over several seeds), without marks."""
        errors = self.errors or [[None] * len(self.columns)] * len(self.values)
        return [
            [
                column.format(value)
                + ("" if error is None or value is None else f" ± {column.format(error)}")
                for column, value, error in zip(self.columns, row, row_errors, strict=True)
            ]
            for row, row_errors in zip(self.values, errors, strict=True)
        ]

    def marks(self) -> list[list[str]]:
        """``marks[row][column]``: ``"best"``, ``"tied"`` (not significantly different from the best) or
        ``""``."""
        tied = self.tied or [[False] * len(self.columns)] * len(self.values)
        return [
            ["best" if is_best else "tied" if is_tied else "" for is_best, is_tied in zip(b, t, strict=True)]
            for b, t in zip(self.best, tied, strict=True)
        ]


def _defined(value: Any) -> float | None:
    """``value`` as a float, or None where it is null or NaN (undefined)."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _fixed(decimals: int) -> Callable[[float], str]:
    return lambda value: f"{value:.{decimals}f}"


def _leaderboard_columns(ood_names: Sequence[str]) -> list[tuple[LeaderboardColumn, Callable[[dict], Any]]]:
    """The columns of a task's leaderboard, each with how to read its value from a method's block."""

    def metric(key: str, scale: float = 1.0) -> Callable[[dict], Any]:
        return lambda method: None if method["metrics"][key] is None else method["metrics"][key] * scale

    columns: list[tuple[LeaderboardColumn, Callable[[dict], Any]]] = [
        (LeaderboardColumn("S", None, lambda v: f"{v:.0f}"), lambda m: m["num_samples"]),
        (LeaderboardColumn("acc %", "higher", _fixed(2)), metric("accuracy", 100.0)),
        (LeaderboardColumn("NLL", "lower", _fixed(3)), metric("nll")),
        (LeaderboardColumn("Brier", "lower", _fixed(4)), metric("brier")),
        (LeaderboardColumn("ECE %", "lower", _fixed(2)), metric("ece", 100.0)),
    ]
    for ood_name in ood_names:
        for kind in ("total", "epistemic"):
            columns.append(
                (
                    LeaderboardColumn(f"AUROC {ood_name} ({kind})", "higher", _fixed(3)),
                    lambda m, o=ood_name, k=kind: m["ood"][o][k]["auroc"],
                )
            )
    columns += [
        (LeaderboardColumn("train s", None, _fixed(1)), lambda m: m["train_time_s"]),
        (LeaderboardColumn("ms/ex", None, _fixed(3)), lambda m: m["inference_ms_per_example"]),
        (LeaderboardColumn("params", None, lambda v: f"{v:,.0f}"), lambda m: m["num_parameters"]),
    ]
    return columns


def _task_names(results: Mapping[str, Any], task: str | None) -> list[str]:
    if task is None:
        return list(results["tasks"])
    if not isinstance(task, str):
        raise TypeError(f"task: expected a task name (str) or None, got {_describe(task)}")
    if task not in results["tasks"]:
        raise ValueError(f"task: expected one of {', '.join(map(repr, results['tasks']))}, got {task!r}")
    return [task]


def build_leaderboard(results: Mapping[str, Any], task: str) -> Leaderboard:
    """The leaderboard of ``task``: the one place where the rows of every rendering are built.

    Columns: ``S`` (samples at prediction), accuracy %, NLL, Brier, ECE % (Guo et al. 2017), AUROC of each
    OOD set with total and with epistemic uncertainty as the score, training seconds, inference
    milliseconds per example, parameter count. Rows are sorted by NLL ascending (the proper scoring rule
    that rewards both accuracy and calibration); methods with an undefined NLL come last, ties keep the
    results order. In each quality column, every row holding the best defined value is marked, unless all
    defined values of the column are equal (e.g. an epistemic AUROC of 0.5 for every method with S = 1).

    Args:
        results: a valid results dict (see :func:`validate_results`).
        task: a task name in ``results["tasks"]``.

    Returns:
        The :class:`Leaderboard`.
    """
    validate_results(results)
    if not isinstance(task, str):
        raise TypeError(f"task: expected a task name (str), got {_describe(task)}")
    (task,) = _task_names(results, task)
    return _build_leaderboard(results, task)


def _build_leaderboard(results: Mapping[str, Any], task: str) -> Leaderboard:
    """:func:`build_leaderboard` for already validated ``results`` and an existing ``task``."""
    block = results["tasks"][task]
    columns = _leaderboard_columns(list(block["ood_sets"]))
    rows = [
        (name, tuple(_defined(read(method)) for _, read in columns))
        for name, method in block["methods"].items()
    ]
    seeds = _run_seeds(block)
    nll_index = [column.header for column, _ in columns].index("NLL")
    rows.sort(key=lambda row: (row[1][nll_index] is None, row[1][nll_index] or 0.0))
    best_values: list[float | None] = []
    for index, (column, _) in enumerate(columns):
        defined = [row[1][index] for row in rows if row[1][index] is not None]
        if column.better is None or len(set(defined)) < 2:  # nothing to tell apart: no mark
            best_values.append(None)
        else:
            best_values.append(max(defined) if column.better == "higher" else min(defined))
    best = tuple(
        tuple(
            best_value is not None and value == best_value
            for value, best_value in zip(values, best_values, strict=True)
        )
        for _, values in rows
    )
    board = Leaderboard(
        task=task,
        description=block["description"],
        num_test=block["num_test"],
        columns=tuple(column for column, _ in columns),
        methods=tuple(name for name, _ in rows),
        values=tuple(values for _, values in rows),
        best=best,
    )
    return _with_seed_statistics(board, block, columns, seeds) if seeds else board


SIGNIFICANCE_TEST = "paired t-test over seeds, two-sided, alpha = 0.05"
"""How the leaderboard of a run over several seeds tells differences to the best method from noise: the
per-seed differences of a method's value and the best method's (same seeds, hence same data splits), tested
by :func:`uqkit.bench.seeds.paired_t_test`; ``p >= 0.05`` marks the value as not significantly different."""

_ALPHA = 0.05


def _run_seeds(task: Mapping[str, Any]) -> tuple[str, ...]:
    """The seeds of a task run over several seeds (every method has the same ``seeds``), else ``()``."""
    names = {tuple(method.get("seeds", ())) for method in task["methods"].values()}
    return next(iter(names)) if len(names) == 1 else ()


def _with_seed_statistics(
    board: Leaderboard,
    task: Mapping[str, Any],
    columns: Sequence[tuple[LeaderboardColumn, Callable[[dict], Any]]],
    seeds: tuple[str, ...],
) -> Leaderboard:
    """``board`` with the standard errors over ``seeds`` of its quality columns, and the values not
    significantly different from their column's best (:data:`SIGNIFICANCE_TEST`)."""
    per_seed = {  # method -> column -> values, one per seed
        name: [[read(task["methods"][name]["seeds"][seed]) for seed in seeds] for _, read in columns]
        for name in board.methods
    }
    errors, tied = [], []
    for row, name in enumerate(board.methods):
        row_errors, row_tied = [], []
        for index, (column, _) in enumerate(columns):
            values = per_seed[name][index]
            quality = column.better is not None
            row_errors.append(mean_and_standard_error(values)["se"] if quality else None)
            best_rows = [other for other in range(len(board.methods)) if board.best[other][index]]
            test = None
            if quality and best_rows and not board.best[row][index]:
                test = paired_t_test(values, per_seed[board.methods[best_rows[0]]][index])
            row_tied.append(test is not None and test[1] >= _ALPHA)
        errors.append(tuple(row_errors))
        tied.append(tuple(row_tied))
    return replace(board, seeds=seeds, errors=tuple(errors), tied=tuple(tied))


def _seeds_legend(board: Leaderboard, tied_mark: str) -> str:
    """Over several seeds: what the numbers and the not-significant mark (``tied_mark``) mean; else ""."""
    if not board.seeds:
        return ""
    return (
        f"Mean ± standard error over {len(board.seeds)} seeds ({', '.join(board.seeds)}). {tied_mark}: not "
        f"significantly different from the column's best ({SIGNIFICANCE_TEST}). "
    )


def _legend(board: Leaderboard) -> str:
    """What the columns mean, for the line under a table."""
    text = "Sorted by NLL. Higher is better for acc"
    if any(column.header.startswith("AUROC") for column in board.columns):
        return (
            f"{text} and AUROC, lower for NLL, Brier and ECE. AUROC (total) scores inputs by the entropy of "
            "the predictive distribution, (epistemic) by the mutual information; a method with S = 1 has no "
            "epistemic uncertainty, so its epistemic AUROC is 0.5."
        )
    return f"{text}, lower for NLL, Brier and ECE."


def _text_table(board: Leaderboard) -> str:
    header = ["method", *(column.header for column in board.columns)]
    body = []
    for name, cells, marks in zip(board.methods, board.cells(), board.marks(), strict=True):
        row = [name]
        for column, cell, mark in zip(board.columns, cells, marks, strict=True):
            # quality columns get a one-character mark slot so that decimals stay aligned
            row.append(cell + _TEXT_MARKS[mark] if column.better else cell)
        body.append(row)
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        parts = [row[0].ljust(widths[0])] + [
            cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)
        ]
        return "  ".join(parts).rstrip()

    title = (
        f"Task {board.task}: {board.description} ({board.num_test:,} test examples)"
        if board.description
        else f"Task {board.task} ({board.num_test:,} test examples)"
    )
    rule = "  ".join("-" * width for width in widths)
    legend = f"* best in column. {_seeds_legend(board, '~')}{_legend(board)}"
    legend = textwrap.wrap(legend, max(len(rule), 80))
    return "\n".join([title, line(header), rule, *map(line, body), *legend])


_TEXT_MARKS = {"best": "*", "tied": "~", "": " "}


def _text_board(results: Mapping[str, Any], name: str) -> str:
    lines = not_applicable_lines(results["tasks"][name])
    return "\n".join([_text_table(_build_leaderboard(results, name)), *lines])


def format_leaderboard(results: Mapping[str, Any], task: str | None = None) -> str:
    """Fixed-width text leaderboards for the terminal, one per task (see :func:`build_leaderboard`).

    Numbers are right-aligned; the best value of each quality column carries a ``*``; undefined values
    show as ``—``. Methods that could not be built on the task's model follow the table, one line each with
    the reason (:func:`not_applicable_lines`).

    Args:
        results: a valid results dict.
        task: a single task to show, or None for every task in results order.

    Returns:
        The tables, separated by blank lines.
    """
    validate_results(results)
    if _regression_run(results):
        from uqkit.bench.regression_report import format_regression_tables

        return format_regression_tables(results)
    return "\n\n".join(_text_board(results, name) for name in _task_names(results, task))


def _markdown_table(board: Leaderboard) -> str:
    header = ["method", *(column.header for column in board.columns)]
    lines = [
        "| " + " | ".join(_md(cell) for cell in header) + " |",
        "|:---|" + "---:|" * len(board.columns),
    ]
    for name, cells, marks in zip(board.methods, board.cells(), board.marks(), strict=True):
        row = [_md(name)] + [
            f"**{cell}**" if mark == "best" else f"_{cell}_" if mark == "tied" else cell
            for cell, mark in zip(cells, marks, strict=True)
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _markdown_board(board: Leaderboard) -> str:
    legend = f"Best value per column in bold. {_seeds_legend(board, 'In italics')}{_legend(board)}"
    return f"{_markdown_table(board)}\n\n{legend}"


def leaderboard_markdown(results: Mapping[str, Any], task: str | None = None) -> str:
    """The leaderboards of :func:`format_leaderboard` as GitHub Markdown tables, best values in bold.

    Args:
        results: a valid results dict.
        task: a single task to show, or None for every task.

    Returns:
        For each task a ``#### <task>`` heading line, the table and a legend line, separated by blank
        lines.
    """
    validate_results(results)
    if _regression_run(results):
        raise ValueError(
            "results: a regression run has no leaderboard; use format_leaderboard or write_report"
        )
    boards = [_build_leaderboard(results, name) for name in _task_names(results, task)]
    return "\n\n".join(f"#### {_md(board.task)}\n\n{_markdown_board(board)}" for board in boards)


def _html_table(board: Leaderboard) -> str:
    esc = html.escape
    head = "".join(f'<th class="num">{esc(column.header)}</th>' for column in board.columns)
    rows = []
    for name, cells, marks in zip(board.methods, board.cells(), board.marks(), strict=True):
        tds = "".join(
            f'<td class="num best"><strong>{esc(cell)}</strong></td>'
            if mark == "best"
            else f'<td class="num tied"><em>{esc(cell)}</em></td>'
            if mark == "tied"
            else f'<td class="num">{esc(cell)}</td>'
            for cell, mark in zip(cells, marks, strict=True)
        )
        rows.append(f'<tr><th scope="row">{esc(name)}</th>{tds}</tr>')
    return (
        f'<table class="leaderboard"><thead><tr><th>method</th>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


# ---------------------------------------------------------------------------------------------------------
# The written report
# ---------------------------------------------------------------------------------------------------------
def _task_facts(task: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(label, text) lines describing a task's data, OOD sets and shift."""
    shape = "×".join(str(n) for n in task["input_shape"])
    facts = [
        (
            "data",
            f"{task['num_classes']} classes, input {shape}; {task['num_train']:,} train, "
            f"{task['num_val']:,} validation, {task['num_test']:,} test examples",
        ),
    ]
    if task.get("model"):
        facts.append(("model", str(task["model"])))
    if isinstance(task.get("training"), dict):
        facts.append(("training", _plain(task["training"])))
    for name, description in task["ood_sets"].items():
        facts.append((f"OOD set {name}", description))
    shift = task["shift"]
    if shift is not None:
        values = ", ".join(f"{v:g}" for v in shift["values"])
        facts.append(("shift", f"{shift['name']} ({shift['unit']}): {values}"))
    return facts


@dataclass(frozen=True)
class _RenderedFigure:
    task: str
    file_name: str
    caption: str
    png: bytes


def _training_text(method: Mapping[str, Any]) -> str:
    """How much training a method used, in words (from its ``training`` block; "" for older files)."""
    training = method.get("training")
    if not isinstance(training, dict):
        return ""
    epochs, orders = training["epochs"], training["batch_orders"]
    text = f"{epochs} epochs" + (f" × {orders} members" if orders > 1 else "")
    if training["budget_multiple"] != 1:
        text += f" ({training['budget_multiple']}× the task's {epochs // training['budget_multiple']})"
    text += f", {training['optimizer']}"
    if not training["selects_best_epoch"]:
        text += ", no epoch selection"
    return text


def _methods_rows(task: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """(method, S, training, description) for the methods of a task that describe themselves."""
    rows = []
    for name, method in task["methods"].items():
        note = method.get("description") or ""
        if method.get("shares_training_with"):
            note += f" (reuses the network trained for {method['shares_training_with']})"
        rows.append((name, str(method["num_samples"]), _training_text(method), note.strip()))
    return rows if any(note for *_, note in rows) else []


def _figures_note(board: Leaderboard) -> str:
    """What the figures of a run over several seeds show (uqkit.bench.seeds.aggregate_seed_blocks)."""
    return (
        f"Over the {len(board.seeds)} seeds: the reliability diagrams pool the seeds' test predictions; the "
        "referral, risk-coverage, shift and conformal curves are means over seeds; the OOD score histograms "
        f"and uncertainty surfaces show seed {board.seeds[0]} alone."
    )


def _markdown_report(results: Mapping[str, Any], figures: Sequence[_RenderedFigure]) -> str:
    lines = [
        *_markdown_header(results, "uqkit benchmark report"),
        "",
        "## Configuration",
        "",
        "| | |",
        "|:---|:---|",
        *(f"| {_md(key)} | {_md(_plain(value))} |" for key, value in results["config"].items()),
    ]
    for task_name, task in results["tasks"].items():
        lines += ["", f"## Task {_md(task_name)}", "", _md(task["description"]), ""]
        lines += [f"- **{_md(label)}**: {_md(text)}" for label, text in _task_facts(task)]
        board = _build_leaderboard(results, task_name)
        lines += ["", "### Leaderboard", "", _markdown_board(board)]
        lines += _markdown_not_applicable(task)
        lines += conformal_report.markdown_lines(
            conformal_report.conformal_set_table(task, board.methods), _md
        )
        method_rows = _methods_rows(task)
        if method_rows:
            lines += [
                "",
                "### Methods",
                "",
                "| method | S | training | description |",
                "|:---|---:|:---|:---|",
            ]
            lines += [
                f"| {_md(name)} | {s} | {_md(training)} | {_md(note)} |"
                for name, s, training, note in method_rows
            ]
        task_figures = [figure for figure in figures if figure.task == task_name]
        if task_figures:
            lines += ["", "### Figures"]
            lines += ["", _md(_figures_note(board))] if board.seeds else []
        for figure in task_figures:
            alt = _md(figure.caption.split(":")[0])
            lines += ["", f"![{alt}](figures/{figure.file_name})", "", f"*{_md(figure.caption)}*"]
    return "\n".join(lines) + "\n"


def _html_report(results: Mapping[str, Any], figures: Sequence[_RenderedFigure]) -> str:
    esc = html.escape
    body = [
        "<h1>uqkit benchmark report</h1>",
        f"<p>Command: <code>{esc(results['command'])}</code><br>Created: {esc(results['created'])}<br>"
        f"Schema version: {esc(str(results['schema_version']))}</p>",
        "<h2>Environment</h2>",
        _html_key_value_table(results["environment"]),
        "<h2>Configuration</h2>",
        _html_key_value_table(results["config"]),
    ]
    for task_name, task in results["tasks"].items():
        facts = "".join(f"<dt>{esc(label)}</dt><dd>{esc(text)}</dd>" for label, text in _task_facts(task))
        board = _build_leaderboard(results, task_name)
        body += [
            f"<h2>Task {esc(task_name)}</h2>",
            f"<p>{esc(task['description'])}</p>",
            f'<dl class="facts">{facts}</dl>',
            "<h3>Leaderboard</h3>",
            f'<div class="wide">{_html_table(board)}</div>',
            f'<p class="legend">Best value per column in bold. {esc(_seeds_legend(board, "In italics"))}'
            f"{esc(_legend(board))}</p>",
            *_html_not_applicable(task),
            *conformal_report.html_lines(conformal_report.conformal_set_table(task, board.methods)),
        ]
        method_rows = _methods_rows(task)
        if method_rows:
            rows = "".join(
                f'<tr><th scope="row">{esc(name)}</th><td class="num">{esc(s)}</td><td>{esc(training)}</td>'
                f"<td>{esc(note)}</td></tr>"
                for name, s, training, note in method_rows
            )
            body += [
                "<h3>Methods</h3>",
                "<table><thead><tr><th>method</th><th>S</th><th>training</th><th>description</th></tr>"
                f"</thead><tbody>{rows}</tbody></table>",
            ]
        task_figures = [figure for figure in figures if figure.task == task_name]
        if task_figures:
            body.append("<h3>Figures</h3>")
            body += [f'<p class="legend">{esc(_figures_note(board))}</p>'] if board.seeds else []
        for figure in task_figures:
            data = base64.b64encode(figure.png).decode("ascii")
            body.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{esc(figure.caption.split(":")[0])}">'
                f"<figcaption>{esc(figure.caption)}</figcaption></figure>"
            )
    title = "uqkit benchmark report: " + ", ".join(results["tasks"])
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def write_report(results: Mapping[str, Any], run_dir: str | os.PathLike) -> dict[str, Any]:
    """Write the report of a run: ``report.md``, a self-contained ``report.html`` and ``figures/*.png``.

    ``report.md`` holds the command, creation time, environment and configuration, then for each task its
    data, the Markdown leaderboard (:func:`leaderboard_markdown`'s table), the methods and the figures as
    ``figures/<name>.png`` links. ``report.html`` has the same content with the figures embedded as base64
    ``data:`` URIs, inline CSS and no external resource, every string HTML-escaped: it can be mailed or
    opened offline. Figures (:func:`uqkit.bench.plots.task_figures`) are drawn with matplotlib's Agg
    canvas directly, without pyplot, so the user's matplotlib backend and global state are untouched.
    Files are written atomically; existing ones are replaced.

    Args:
        results: a valid results dict (see :func:`validate_results`).
        run_dir: the run directory (created if missing).

    Returns:
        ``{"markdown": Path, "html": Path, "figures": list[Path]}``: the paths written, figures in report
        order (per task: uncertainty surface for 2-D inputs, reliability, referral, OOD histograms per OOD
        set, shift, risk-coverage).

    Raises:
        ValueError: if ``results`` does not follow the schema.
        ImportError: if matplotlib is not installed (``pip install 'uqkit[bench]'``).
    """
    validate_results(results)
    if not isinstance(run_dir, (str, os.PathLike)):
        raise TypeError(f"run_dir: expected a path (str or os.PathLike), got {_describe(run_dir)}")
    if _regression_run(results):
        from uqkit.bench.regression_report import write_regression_report

        return write_regression_report(results, run_dir)
    plots = _import_plots()
    run_dir = Path(run_dir)
    figure_dir = run_dir / "figures"
    figure_dir.mkdir(parents=True, exist_ok=True)

    colors = plots.method_colors(method_order(results))
    rendered: list[_RenderedFigure] = []
    used_names: set[str] = set()
    for task_name, task in results["tasks"].items():
        for task_figure in plots.task_figures(task_name, task, colors):
            stem, suffix = task_figure.name, 2
            while f"{stem}.png" in used_names:  # distinct names that slug to the same file name
                stem, suffix = f"{task_figure.name}-{suffix}", suffix + 1
            used_names.add(f"{stem}.png")
            png = plots.figure_png(task_figure.figure)
            rendered.append(_RenderedFigure(task_name, f"{stem}.png", task_figure.caption, png))

    figure_paths = []
    for figure in rendered:
        path = figure_dir / figure.file_name
        _atomic_write(path, figure.png)
        figure_paths.append(path)
    markdown_path, html_path = run_dir / "report.md", run_dir / "report.html"
    _atomic_write(markdown_path, _markdown_report(results, rendered).encode("utf-8"))
    _atomic_write(html_path, _html_report(results, rendered).encode("utf-8"))
    return {"markdown": markdown_path, "html": html_path, "figures": figure_paths}
