"""Old benchmark names and ``results.json`` layouts, read as today's: the one place that knows them.

Two kinds of old name reach the benchmark:

* a **renamed method** on the command line, in ``BenchConfig.methods`` or in a run directory's saved identity
  (``gaussian-bnn``, renamed ``reparameterization-bnn`` because "Gaussian" names the distribution of a
  regressor's outputs only, docs/architecture.md "Names"): :func:`current_method_name` maps it, with a
  ``DeprecationWarning`` that names the new one, until uqkit 0.2.0 (:data:`uqkit._deprecation.REMOVED_IN`);
* a **results file of an older schema version**: :func:`upgrade_results` rewrites it to
  :data:`~uqkit.bench.results_schema.SCHEMA_VERSION`, one version step at a time, before it is validated or
  reported. Old files are never rewritten on disk; readers upgrade what they read.

Version steps:

* 1 -> 2 (2026-12, issue 16: one word counts members): a regression method block's ``num_models`` is
  ``num_members``; ``details.ensemble_size`` (``hyper-deep-ensemble``) is ``details.num_members``; the method
  ``gaussian-bnn`` is ``reparameterization-bnn`` (its block, ``config.methods``, ``not_applicable`` and
  ``shares_training_with``). Numbers are unchanged.

A run directory's finished method blocks carry no version; :func:`read_method_block` reads each through the
same steps, so a run started by an older uqkit resumes.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from uqkit._deprecation import warn_renamed
from uqkit.bench._atomic import read_json
from uqkit.bench.results_schema import SCHEMA_VERSION

__all__ = [
    "RENAMED_METHODS",
    "UPGRADABLE_VERSIONS",
    "current_method_name",
    "current_run_identity",
    "read_method_block",
    "upgrade_method_block",
    "upgrade_results",
]

RENAMED_METHODS: dict[str, str] = {"gaussian-bnn": "reparameterization-bnn"}
"""Old benchmark method name -> its name now; the old one is accepted (with a warning) until uqkit 0.2.0."""


def current_method_name(name: str) -> str:
    """``name``, or the current name of a renamed benchmark method (:data:`RENAMED_METHODS`), with a
    ``DeprecationWarning`` that names it.

    Args:
        name: a method name, as given to ``--methods`` or :func:`uqkit.bench.registry.build_method`.

    Returns:
        The name under which the method is registered now (``name`` itself if it was never renamed).

    Raises:
        TypeError: ``name`` is not a string.
    """
    if not isinstance(name, str):
        raise TypeError(f"method name: expected a string, got {type(name).__name__} {name!r}")
    new = RENAMED_METHODS.get(name)
    if new is None:
        return name
    warn_renamed(f"the benchmark method {name!r}", repr(new))
    return new


def current_run_identity(identity: Mapping[str, Any]) -> dict[str, Any]:
    """A run directory's saved identity (``config.json``) with renamed methods under their current names,
    without warnings (the run was started before the rename; nothing the user typed is old).

    A resumed run then continues: a renamed method's cell has no files under its new name, so it is trained
    and evaluated afresh, and its old files (``methods/<task>/gaussian-bnn.json``, ...) are left as they are,
    unused; every other finished method is reused. Returns a new dict; ``identity`` is not changed.
    """
    if not isinstance(identity, Mapping):
        raise TypeError(f"identity: expected a mapping, got {type(identity).__name__}")
    current = dict(identity)
    if isinstance(current.get("methods"), list):
        current["methods"] = [_current(name) for name in current["methods"]]
    return current


def _current(name: Any) -> Any:
    """A method name under its current name, without a warning; anything else (a malformed file) as it is,
    for validation to name."""
    return RENAMED_METHODS.get(name, name) if isinstance(name, str) else name


def _renamed_keys(mapping: Mapping[str, Any], renames: Mapping[str, str]) -> dict[str, Any]:
    """``mapping`` with its keys renamed, in the same order."""
    return {renames.get(key, key): value for key, value in mapping.items()}


def _version_1_method(block: dict[str, Any]) -> dict[str, Any]:
    """One method block (or one seed's block) of schema version 1, as version 2 (only a regression block ever
    had ``num_models``)."""
    block = _renamed_keys(block, {"num_models": "num_members"})
    if isinstance(block.get("details"), dict):
        block["details"] = _renamed_keys(block["details"], {"ensemble_size": "num_members"})
    if "shares_training_with" in block:
        block["shares_training_with"] = _current(block["shares_training_with"])
    if isinstance(block.get("seeds"), dict):
        block["seeds"] = {
            seed: _version_1_method(seed_block) if isinstance(seed_block, dict) else seed_block
            for seed, seed_block in block["seeds"].items()
        }
    return block


def _version_1_to_2(results: dict[str, Any]) -> dict[str, Any]:
    """Schema version 1 -> 2: members counted by ``num_members``; ``gaussian-bnn`` is
    ``reparameterization-bnn``. Keys that are not where version 1 put them are left alone (validation
    names them)."""
    config = results.get("config")
    if isinstance(config, dict) and isinstance(config.get("methods"), list):
        config["methods"] = [_current(name) for name in config["methods"]]
    tasks = results.get("tasks")
    for task in tasks.values() if isinstance(tasks, dict) else []:
        if not isinstance(task, dict):
            continue
        if isinstance(task.get("not_applicable"), dict):
            task["not_applicable"] = _renamed_keys(task["not_applicable"], RENAMED_METHODS)
        methods = task.get("methods")
        if isinstance(methods, dict):  # (the whole dict is a copy already)
            task["methods"] = {
                _current(name): _version_1_method(block) if isinstance(block, dict) else block
                for name, block in methods.items()
            }
    results["schema_version"] = 2
    return results


_STEPS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _version_1_to_2}
"""Version ``v`` -> the step that rewrites a results dict of version ``v`` (in place) as version ``v + 1``."""

UPGRADABLE_VERSIONS: tuple[int, ...] = tuple(sorted(_STEPS))
"""The older schema versions :func:`upgrade_results` reads."""


def upgrade_method_block(block: Any) -> Any:
    """One method's result block, as a run directory keeps it (``methods/<task>/<method>.json``, a regression
    cell's chunk), in the current layout: a run started by an older uqkit resumes with the blocks it
    finished then. A block has no version of its own, so every version step is applied; each is a no-op on
    a current block. Returns a new dict (``block`` itself if it is not a dict)."""
    if not isinstance(block, dict):
        return block
    return _version_1_method(copy.deepcopy(block))


def read_method_block(path: str | os.PathLike) -> dict[str, Any]:
    """:func:`upgrade_method_block` of the JSON file ``path``: what the runners read a finished block with.

    Raises:
        uqkit.bench._atomic.CorruptFileError: the file is truncated or not a JSON object (as ``read_json``).
    """
    return upgrade_method_block(read_json(Path(path)))


def upgrade_results(results: Any) -> Any:
    """A results dict of an older schema version, rewritten as the current one
    (:data:`~uqkit.bench.results_schema.SCHEMA_VERSION`); read every ``results.json`` through it before
    :func:`~uqkit.bench.results_schema.validate_results` (``uqkit report`` and the report functions do).

    Args:
        results: a parsed ``results.json``, of any version listed in :data:`UPGRADABLE_VERSIONS` or the
            current one.

    Returns:
        ``results`` itself when it is not of an older version (the current one, or something that is not a
        results dict at all: validation then says what is wrong); else a new dict of the current version
        (``results`` is not changed). The values, every number included, are the file's.

    Raises:
        ValueError: ``results`` names a schema version newer than this uqkit's, or one it cannot upgrade.
    """
    if not isinstance(results, dict) or "schema_version" not in results:
        return results
    version = results["schema_version"]
    if version == SCHEMA_VERSION:
        return results
    if isinstance(version, bool) or not isinstance(version, int) or version not in _STEPS:
        readable = ", ".join(str(v) for v in (*UPGRADABLE_VERSIONS, SCHEMA_VERSION))
        newer = (
            version > SCHEMA_VERSION if isinstance(version, int) and not isinstance(version, bool) else False
        )
        hint = " (a newer uqkit wrote it: upgrade uqkit to read it)" if newer else ""
        raise ValueError(
            f"results.schema_version: this uqkit reads schema versions {readable}, got {version!r}{hint}"
        )
    upgraded = copy.deepcopy(results)
    while upgraded["schema_version"] != SCHEMA_VERSION:
        upgraded = _STEPS[upgraded["schema_version"]](upgraded)
    return upgraded
