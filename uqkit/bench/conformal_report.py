"""The conformal tables of the report: prediction sets (classification) and intervals (regression).

Reads the ``conformal`` block of each method (docs/results-schema.md, written by
:mod:`uqkit.bench.evaluate_conformal`) and renders one table per task with the text that says what the
numbers mean, as Markdown lines or HTML. :mod:`uqkit.bench.report` and :mod:`uqkit.bench.regression_report`
place it under each task's leaderboard.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ConformalTable",
    "conformal_interval_table",
    "conformal_set_table",
    "html_lines",
    "markdown_lines",
]

_SET_SCORES = {"lac": "LAC", "aps": "APS"}
_INTERVAL_KINDS = {"gaussian": "Gaussian", "normalized": "normalized", "absolute": "absolute"}


@dataclass(frozen=True)
class ConformalTable:
    """A rendered-ready conformal table: a title, column headers, rows of cell texts and a legend."""

    title: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    legend: str


def _percent(value: Any) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}%"


def _number(value: Any, decimals: int) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{decimals}f}"


def _level(alpha: float) -> str:
    return f"{100 * (1 - alpha):g}%"


def _blocks(task: Mapping[str, Any], order: Sequence[str] | None) -> list[tuple[str, Mapping[str, Any]]]:
    """``(method, conformal block)`` for the methods that have one, in ``order`` (default: the task's)."""
    names = list(order) if order is not None else list(task["methods"])
    return [
        (name, task["methods"][name]["conformal"]) for name in names if task["methods"][name].get("conformal")
    ]


def _spread(alpha: float, num_calibration: int, num_test: int) -> float:
    """The standard deviation of a split-conformal test coverage around its expectation, over calibration
    and test draws: ``sqrt(alpha (1 - alpha) (1 / (n + 2) + 1 / B))`` (the coverage given the calibration
    split is Beta-distributed with variance ``~ alpha (1 - alpha) / (n + 2)``; the test set adds a binomial
    ``alpha (1 - alpha) / B``)."""
    return math.sqrt(alpha * (1 - alpha) * (1 / (num_calibration + 2) + 1 / max(num_test, 1)))


def conformal_set_table(task: Mapping[str, Any], order: Sequence[str] | None = None) -> ConformalTable | None:
    """The conformal prediction sets of a classification task: one row per method, one column per score and
    level, each cell ``coverage / mean set size`` on the test set.

    Args:
        task: a classification task's block of ``results.json``.
        order: the method order (the leaderboard's); default the task's.

    Returns:
        The table, or None when no method has a ``conformal`` block.
    """
    blocks = _blocks(task, order)
    if not blocks:
        return None
    alphas = blocks[0][1]["alphas"]
    header = ["method", *(f"{label} {_level(alpha)}" for label in _SET_SCORES.values() for alpha in alphas)]
    rows = []
    for name, block in blocks:
        cells = [name]
        for score in _SET_SCORES:
            for index in range(len(alphas)):
                coverage, size = block[score]["coverage"][index], block[score]["mean_set_size"][index]
                cells.append(f"{_percent(coverage)} / {_number(size, 2)}")
        rows.append(tuple(cells))
    num_calibration, num_test = blocks[0][1]["num_calibration"], task["num_test"]
    spread = _spread(alphas[0], num_calibration, num_test)
    legend = (
        "Split conformal prediction sets (docs/conformal.md). The threshold is calibrated on each "
        f"method's own predicted probabilities on the validation split ({num_calibration:,} examples; "
        f"never the test set), and the sets are scored on the {num_test:,} test examples. Each cell: "
        "coverage, the fraction of test labels inside their set, whose target is the column's 1 − α, / "
        "mean set size, the average number of classes per set (smaller is better at the same coverage). "
        "LAC (Sadinle et al. 2019) keeps the classes whose probability is at least 1 − q: the smallest "
        "sets on average, coverage between 1 − α and 1 − α + 1/(n + 1) in expectation. APS (Romano et "
        "al. 2020), randomised with a generator seeded by the run's seed, adds classes by decreasing "
        "probability until their mass passes q: coverage exactly 1 − α in expectation, sets that grow "
        "with the input's ambiguity. A test coverage varies around its expectation by about "
        f"±{100 * spread:.1f} points at 1 − α = {_level(alphas[0])} (one standard deviation over the "
        "validation and test draws). The validation split also chose each method's epoch (and fitted "
        "its post-hoc calibration, e.g. the temperature), a mild reuse outside the guarantee."
    )
    title = "Conformal prediction sets (coverage / mean set size)"
    return ConformalTable(title, tuple(header), tuple(rows), legend)


def conformal_interval_table(
    task: Mapping[str, Any], order: Sequence[str] | None = None
) -> ConformalTable | None:
    """The conformal intervals of a regression task beside its Gaussian intervals: one row per method and
    level, each cell ``coverage / mean width`` on the test rows (means over splits).

    Args:
        task: a regression task's block of ``results.json``.
        order: the method order; default the task's.

    Returns:
        The table, or None when no method has a ``conformal`` block.
    """
    blocks = _blocks(task, order)
    if not blocks:
        return None
    header = ("method", "1 − α", *_INTERVAL_KINDS.values())
    rows = []
    for name, block in blocks:
        for index, alpha in enumerate(block["alphas"]):
            cells = [name, _level(alpha)]
            for kind in _INTERVAL_KINDS:
                coverage, width = block[kind]["coverage"][index]["mean"], block[kind]["width"][index]["mean"]
                cells.append(f"{_percent(coverage)} / {_number(width, 3)}")
            rows.append(tuple(cells))
    first = blocks[0][1]
    splits = "" if task["num_splits"] == 1 else " of each split, means over the splits"
    legend = (
        "Split conformal intervals (docs/conformal.md), calibrated on the validation rows "
        f"({first['num_calibration']:,}{splits}; never the test rows) and scored on the test rows. Each "
        "cell: coverage, the fraction of test targets inside their interval, whose target is the row's "
        "1 − α, / mean width in the target's units (narrower is better at the same coverage). normalized: "
        "μ ± q σ, q the conformal quantile of |y − μ| / σ on validation, so the width follows the "
        "predicted σ; absolute: μ ± q, q the quantile of |y − μ|, one width for every input; Gaussian: "
        "the central interval μ ± z σ of the predictive itself, not calibrated, for comparison. —: an "
        "unbounded interval, the validation split being smaller than (1 − α) / α rows."
    )
    if any(block["network"] == "selection" for _, block in blocks):
        legend += (
            " The UCI protocol retrains the chosen configuration on the whole training split, which leaves no"
            " held-out rows; these intervals are those of the selection network, trained on the fit part "
            "(80%) with the chosen configuration and kept at the chosen epoch, calibrated on the validation "
            "part (20%) that chose them (a mild reuse outside the guarantee). Their Gaussian coverage can "
            "therefore differ from the 95% cov. column above, which is the retrained network's."
        )
    else:
        legend += " The validation split also chose the epoch, a mild reuse outside the guarantee."
    title = "Conformal intervals (coverage / mean width)"
    return ConformalTable(title, header, tuple(rows), legend)


def markdown_lines(table: ConformalTable | None, escape) -> list[str]:
    """The table as Markdown lines under a ``###`` heading (``[]`` for None); ``escape`` escapes cell text."""
    if table is None:
        return []
    lines = [
        "",
        f"### {escape(table.title)}",
        "",
        "| " + " | ".join(escape(cell) for cell in table.header) + " |",
        "|:---|" + "---:|" * (len(table.header) - 1),
    ]
    lines += ["| " + " | ".join(escape(cell) for cell in row) + " |" for row in table.rows]
    return [*lines, "", escape(table.legend)]


def html_lines(table: ConformalTable | None) -> list[str]:
    """The table as HTML under an ``<h3>`` heading (``[]`` for None), every string escaped."""
    if table is None:
        return []
    esc = html.escape
    head = "".join(f"<th>{esc(cell)}</th>" for cell in table.header)
    body = "".join(
        f'<tr><th scope="row">{esc(row[0])}</th>'
        + "".join(f'<td class="num">{esc(cell)}</td>' for cell in row[1:])
        + "</tr>"
        for row in table.rows
    )
    return [
        f"<h3>{esc(table.title)}</h3>",
        f'<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>',
        f'<p class="legend">{esc(table.legend)}</p>',
    ]
