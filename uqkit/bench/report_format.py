"""What every report of a run shares: Markdown and HTML text, the header, "not applicable" sections, files.

:mod:`uqkit.bench.report` (classification runs, and the entry points :func:`~uqkit.bench.report.write_report`
and :func:`~uqkit.bench.report.format_leaderboard` for every run) and :mod:`uqkit.bench.regression_report`
(the UCI regression runs they hand over) both render ``results.json`` blocks with these pieces. They live
here, below both, so that the regression report need not import the report that dispatches to it.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from uqkit.bench._atomic import atomic_write

__all__ = [
    "REPORT_CSS",
    "atomic_write_bytes",
    "html_key_value_table",
    "html_not_applicable",
    "import_plots",
    "is_regression_task",
    "markdown_code",
    "markdown_escape",
    "markdown_header",
    "markdown_not_applicable",
    "method_order",
    "not_applicable_lines",
    "plain_text",
]

INSTALL_HINT = "pip install 'uqkit[bench]'"
"""How to install what the figures need (matplotlib)."""


def is_regression_task(task: Mapping[str, Any]) -> bool:
    """Whether a task block of ``results.json`` is a regression task (``kind == "regression"``)."""
    return task.get("kind") == "regression"


def not_applicable_lines(task: Mapping[str, Any]) -> list[str]:
    """``method: not applicable: reason`` for each method the task's model could not take (none: ``[]``)."""
    return [f"{name}: not applicable: {reason}" for name, reason in task.get("not_applicable", {}).items()]


def method_order(results: Mapping[str, Any]) -> list[str]:
    """Every method of the run, once: ``config.methods`` order first, then by first appearance.

    This order keys the colour palette, so that a method has the same colour in every figure and task.

    Args:
        results: a valid results dict.

    Returns:
        The method names.
    """
    names = list(results["config"].get("methods") or [])
    for task in results["tasks"].values():
        names += [name for name in task["methods"] if name not in names]
    return list(dict.fromkeys(names))


_MARKDOWN_SPECIAL = re.compile(r"([\\`*\[\]<>|#{}&])")
_EMPHASIS_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")  # intraword ``_`` is literal


def markdown_escape(text: Any) -> str:
    """``text`` with Markdown (and inline HTML) syntax escaped, on one line."""
    text = _MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))
    return _EMPHASIS_UNDERSCORE.sub(r"\\_", text)


def markdown_code(text: str) -> str:
    """A Markdown code span holding ``text`` verbatim, whatever backticks it contains."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    return f"{fence} {text} {fence}" if longest else f"{fence}{text}{fence}"


def plain_text(value: Any) -> str:
    """A JSON value as report text: lists joined by commas, booleans and null as in JSON."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ", ".join(plain_text(item) for item in value)
    if isinstance(value, dict):
        return ", ".join(f"{key}: {plain_text(item)}" for key, item in value.items())
    return str(value)


def markdown_header(results: Mapping[str, Any], title: str) -> list[str]:
    """The report's title, command, creation time, schema version and environment table (Markdown lines)."""
    return [
        f"# {title}",
        "",
        f"Command: {markdown_code(results['command'])}  ",
        f"Created: {markdown_escape(results['created'])}  ",
        f"Schema version: {results['schema_version']}",
        "",
        "## Environment",
        "",
        "| | |",
        "|:---|:---|",
        *(
            f"| {markdown_escape(key)} | {markdown_escape(plain_text(value))} |"
            for key, value in results["environment"].items()
        ),
    ]


def markdown_not_applicable(task: Mapping[str, Any]) -> list[str]:
    """A "Not applicable" section (Markdown lines) listing the methods the model could not take, or ``[]``."""
    lines = not_applicable_lines(task)
    return ["", "### Not applicable", "", *(f"- {markdown_escape(line)}" for line in lines)] if lines else []


def html_not_applicable(task: Mapping[str, Any]) -> list[str]:
    """The "Not applicable" section as HTML, or ``[]``."""
    lines = not_applicable_lines(task)
    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    return ["<h3>Not applicable</h3>", f"<ul>{items}</ul>"] if lines else []


REPORT_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328;
       max-width: 1180px; margin: 2em auto; padding: 0 1em; line-height: 1.45; }
h1, h2, h3 { line-height: 1.2; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .25em; margin-top: 2em; }
code { background: #f6f8fa; padding: .1em .3em; border-radius: 4px; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: .9em; }
th, td { border: 1px solid #d0d7de; padding: .25em .6em; vertical-align: top; }
thead th { background: #f6f8fa; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.best { background: #dafbe1; }
td.tied { background: #f0fbf2; }
.wide { overflow-x: auto; }
.legend { color: #57606a; font-size: .9em; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
figcaption { color: #57606a; font-size: .9em; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: .15em 1em; }
dl.facts dt { font-weight: 600; } dl.facts dd { margin: 0; }
"""
"""The inline style sheet of every ``report.html`` (no external resource)."""


def html_key_value_table(mapping: Mapping[str, Any]) -> str:
    """An HTML table with one row per key: the key as a row header, the value as :func:`plain_text`."""
    rows = "".join(
        f'<tr><th scope="row">{html.escape(str(key))}</th><td>{html.escape(plain_text(value))}</td></tr>'
        for key, value in mapping.items()
    )
    return f"<table>{rows}</table>"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`uqkit.bench._atomic.atomic_write`), replacing it."""
    atomic_write(path, lambda handle: handle.write(data))


def import_plots() -> ModuleType:
    """:mod:`uqkit.bench.plots`, or an ``ImportError`` that says how to install matplotlib."""
    try:
        from uqkit.bench import plots
    except ImportError as error:
        raise ImportError(f"uqkit's benchmark figures need matplotlib: {INSTALL_HINT}") from error
    return plots
