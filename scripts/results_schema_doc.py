"""Render the key tables of docs/results-schema.md from the schema, uqkit/bench/results.schema.json.

The schema file is the one source of the ``results.json`` layout: every key's type, bounds and description.
This script writes them as Markdown tables between the page's ``<!-- BEGIN GENERATED: name -->`` and
``<!-- END GENERATED: name -->`` markers and leaves the prose around them alone; a test
(tests/bench/test_results_schema.py) fails when the page is stale.

    python scripts/results_schema_doc.py          # rewrite the tables in docs/results-schema.md
    python scripts/results_schema_doc.py --check  # exit 1 if they differ from the schema
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from uqkit.bench.results_schema import results_schema

DOC = Path(__file__).resolve().parents[1] / "docs" / "results-schema.md"

_TYPE_WORDS = {
    "integer": "int",
    "number": "number",
    "string": "string",
    "boolean": "bool",
    "array": "list",
    "object": "object",
    "null": "null",
}


def _resolve(node: Mapping[str, Any], schema: Mapping[str, Any]) -> tuple[Mapping[str, Any], str | None]:
    """``node`` with a local ``$ref`` followed (its own keywords win), and the name of the definition."""
    ref = node.get("$ref")
    if ref is None:
        return node, None
    name = ref.removeprefix("#/$defs/")
    target, _ = _resolve(schema["$defs"][name], schema)
    merged = {**target, **{key: value for key, value in node.items() if key != "$ref"}}
    if "properties" in target and "properties" in node:
        merged["properties"] = {**target["properties"], **node["properties"]}
    if "required" in target and "required" in node:
        merged["required"] = [*target["required"], *node["required"]]
    return merged, name


def _bounds(node: Mapping[str, Any]) -> str:
    low, high = node.get("minimum"), node.get("maximum")
    if low is not None and high is not None:
        return f" in [{low:g}, {high:g}]"
    if low is not None:
        return f" ≥ {low:g}"
    return "" if high is None else f" ≤ {high:g}"


def type_text(node: Mapping[str, Any], schema: Mapping[str, Any]) -> str:
    """A key's type in words: ``number in [0, 1] or null``, ``list of int``, ``object: method → string``."""
    node, _ = _resolve(node, schema)
    if "const" in node:
        return f"`{json.dumps(node['const'])}`"
    if "enum" in node:
        return "one of " + ", ".join(f"`{json.dumps(value)}`" for value in node["enum"])
    types = node.get("type", [])
    types = [types] if isinstance(types, str) else list(types)
    words = []
    for name in (name for name in types if name != "null"):
        word = _TYPE_WORDS[name]
        if name in ("integer", "number"):
            word += _bounds(node)
        elif name == "array" and "items" in node:
            item = type_text(node["items"], schema)
            word += f" of {f'({item})' if ' or ' in item else item}"
            if "minItems" in node:
                word += f", at least {node['minItems']}"
        elif name == "object" and isinstance(node.get("additionalProperties"), Mapping):
            key = node.get("propertyNames", {}).get("title", "name")
            value, _ = _resolve(node["additionalProperties"], schema)
            value_text = "object" if "properties" in value else type_text(value, schema)
            word += f": {key} → {value_text}"
            if "minProperties" in node:
                word += f", at least {node['minProperties']} entry"
        words.append(word)
    text = " or ".join(words)
    if "null" in types:
        text = f"{text} or null" if text else "null"
    return text


def rows(
    node: Mapping[str, Any], path: str, schema: Mapping[str, Any], optional: bool = False, seen: tuple = ()
) -> Iterator[tuple[str, str, str]]:
    """``(key path, type, description)`` for ``node`` and every key below it, parents first.

    Free keys appear as ``<title>`` of their ``propertyNames`` (``<task>``, ``<method>``), list items as
    ``[]``; a definition met again inside itself (a method's per-seed blocks) is listed once, unexpanded.
    """
    resolved, name = _resolve(node, schema)
    kind = type_text(node, schema) + (", *optional*" if optional else "")
    yield path, kind, resolved.get("description", "")
    if name is not None and name in seen:
        return
    seen = (*seen, name) if name else seen
    required = set(resolved.get("required", []))
    for key, child in resolved.get("properties", {}).items():
        yield from rows(child, f"{path}.{key}", schema, key not in required, seen)
    extra = resolved.get("additionalProperties")
    if isinstance(extra, Mapping):
        child, _ = _resolve(extra, schema)
        if "properties" in child:
            title = resolved.get("propertyNames", {}).get("title", "name")
            yield from rows(extra, f"{path}.<{title}>", schema, False, seen)
    items = resolved.get("items")
    if isinstance(items, Mapping):
        child, _ = _resolve(items, schema)
        if "properties" in child:
            yield from (row for row in rows(items, f"{path}[]", schema, False, seen) if row[0] != f"{path}[]")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _table(entries: list[tuple[str, str, str]]) -> str:
    lines = ["| key | type | meaning |", "|:---|:---|:---|"]
    lines += [f"| `{path}` | {kind} | {_cell(text)} |" for path, kind, text in entries]
    return "\n".join(lines)


def sections(schema: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The generated tables, by marker name: ``run``, ``environment``, ``config``, ``tasks``, ``methods``
    (classification) and ``regression``."""
    schema = results_schema() if schema is None else schema
    top = schema["properties"]
    required = set(schema["required"])
    run = [
        row
        for key in ("schema_version", "created", "command", "total_time_s", "benchmark_environment")
        for row in rows(top[key], key, schema, key not in required)
    ]
    task = "tasks.<task>"
    classification = list(rows(schema["$defs"]["classificationTask"], task, schema))[1:]
    tasks_rows = [next(rows(top["tasks"], "tasks", schema))]
    tasks_rows += [row for row in classification if not row[0].startswith(f"{task}.methods.")]
    methods = [row for row in classification if row[0].startswith(f"{task}.methods.")]
    regression = list(rows(schema["$defs"]["regressionTask"], task, schema))[1:]
    return {
        "run": _table(run),
        "environment": _table(list(rows(top["environment"], "environment", schema))),
        "config": _table(list(rows(top["config"], "config", schema))),
        "tasks": _table(tasks_rows),
        "methods": _table(methods),
        "regression": _table(regression),
    }


def render(text: str, tables: Mapping[str, str]) -> str:
    """``text`` with each generated region replaced by its table; every region must be present."""
    for name, table in tables.items():
        pattern = re.compile(
            rf"(<!-- BEGIN GENERATED: {name} -->\n).*?(<!-- END GENERATED: {name} -->)", flags=re.DOTALL
        )
        if not pattern.search(text):
            raise ValueError(f"docs/results-schema.md: no region <!-- BEGIN GENERATED: {name} --> ... END")
        text = pattern.sub(lambda match, table=table: f"{match.group(1)}{table}\n{match.group(2)}", text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the page differs from the schema")
    args = parser.parse_args(argv)
    text = DOC.read_text(encoding="utf-8")
    new = render(text, sections())
    if args.check:
        if new != text:
            print(f"{DOC} is stale: run python scripts/results_schema_doc.py", file=sys.stderr)
            return 1
        return 0
    if new != text:
        DOC.write_text(new, encoding="utf-8")
        print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
