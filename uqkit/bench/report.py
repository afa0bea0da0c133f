"""The benchmark report: check ``results.json``, render leaderboards, write Markdown and HTML with figures.

``uqkit bench`` writes every number of a run into ``results.json`` (schema version 2: the JSON Schema
``uqkit/bench/results.schema.json``, rendered key by key in ``docs/results-schema.md``); this module is its
consumer. Every function here takes a results dict of an older schema version too, and reads it through
:func:`uqkit.bench.upgrade.upgrade_results` first (the caller's dict is not changed):

* :func:`validate_results` (from :mod:`uqkit.bench.results_schema`) checks a results dict against the schema
  and a few rules across keys, raising ``ValueError`` with the path of each bad key
  (``results.tasks['fashion-mnist'].methods['deterministic'].metrics: missing key 'ece'``);
* :func:`build_leaderboard` builds the table of one task (methods sorted by NLL, best values marked);
  :func:`format_leaderboard` renders it as fixed-width text for the terminal and
  :func:`leaderboard_markdown` as GitHub Markdown; the HTML report renders the same rows;
* :func:`write_report` writes ``report.md``, a self-contained ``report.html`` and ``figures/*.png``
  (drawn by :mod:`uqkit.bench.plots`, which needs matplotlib).

Only the figures need matplotlib; validation needs ``jsonschema``, the leaderboards the standard library.
"""

from __future__ import annotations

import base64
import html
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
from uqkit.bench.results_schema import SCHEMA_VERSION, validate_results
from uqkit.bench.seeds import mean_and_standard_error, paired_t_test
from uqkit.bench.upgrade import upgrade_results

__all__ = [
    "SCHEMA_VERSION",
    "Leaderboard",
    "LeaderboardColumn",
    "build_leaderboard",
    "format_leaderboard",
    "is_regression_task",
    "leaderboard_markdown",
    "method_order",
    "not_applicable_lines",
    "validate_results",
    "write_report",
]


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"[:120]


def _regression_run(results: Mapping[str, Any]) -> bool:
    """True for a run of regression tasks only; ``ValueError`` for a run mixing both kinds."""
    kinds = {is_regression_task(task) for task in results["tasks"].values()}
    if len(kinds) > 1:
        raise ValueError(
            "results: expected regression or classification tasks, got both in one run; run them apart"
        )
    return kinds == {True}


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
    results = upgrade_results(results)
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
    results = upgrade_results(results)
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
    results = upgrade_results(results)
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
    results = upgrade_results(results)
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
