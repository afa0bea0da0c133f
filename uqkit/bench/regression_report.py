"""The report of a regression run: NLL and RMSE tables beside the published numbers, coverage figures.

Reads only ``results.json`` (regression tasks, ``kind: "regression"``, see docs/results-schema.md), so
``uqkit report RUN_DIR`` rebuilds it. :func:`uqkit.bench.report.format_leaderboard` and
:func:`uqkit.bench.report.write_report` hand regression runs to :func:`format_regression_tables` and
:func:`write_regression_report`, which checks the results with
:func:`uqkit.bench.results_schema.validate_results`. The pieces every report shares come from
:mod:`uqkit.bench.report_format`; this module does not import :mod:`uqkit.bench.report`, which imports it.
"""

from __future__ import annotations

import base64
import html
import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from uqkit.bench import conformal_report, report_format, results_schema
from uqkit.bench.upgrade import upgrade_results

__all__ = [
    "PUBLISHED_LABELS",
    "PUBLISHED_NLL_KIND",
    "format_regression_tables",
    "regression_header",
    "regression_rows",
    "write_regression_report",
]

PUBLISHED_LABELS = {
    "deep-ensemble": "Deep Ensembles (Lakshminarayanan et al. 2017), published",
    "mc-dropout": "MC dropout (Gal & Ghahramani, 2018 grid-search rerun), published",
    "pbp": "PBP (Hernandez-Lobato & Adams 2015), published",
}
"""Row labels of the published numbers kept in ``tasks.<task>.published``."""

PUBLISHED_NLL_KIND = {"deep-ensemble": "nll", "mc-dropout": "nll_mixture", "pbp": "nll"}
"""Which of our NLL columns (a key of ``metrics``) each published NLL is like for like with.

- ``deep-ensemble``: Lakshminarayanan et al. 2017 (Sec. 2.4) score the ensemble as one Gaussian with the
  mixture's mean and variance: our moment-matched ``nll``.
- ``mc-dropout``: the DropoutUncertaintyExps readme reports the test log-likelihood of the Monte Carlo
  mixture, ``logsumexp_t log N(y; mu_t, 1/tau) - log T`` (its ``ll``), negated: our exact ``nll_mixture``.
- ``pbp``: Hernandez-Lobato & Adams 2015 score one Gaussian (the ADF predictive's mean and variance): ``nll``.

A key missing here (a future reference) is shown in the ``nll`` column.
"""

_NLL_COLUMNS = {"nll": 1, "nll_mixture": 3}
"""Positions of the two NLL columns in :data:`_HEADER`."""

_HEADER = (
    "method",
    "NLL (moment-matched)",
    "RMSE",
    "NLL (mixture)",
    "95% cov.",
    "members x S",
    "params",
    "train s",
    "chosen",
)


def _pm(summary: Mapping[str, Any] | None, decimals: int = 2) -> str:
    """``mean ± se``; the mean alone where the standard error is null (one split)."""
    if not summary or summary.get("mean") is None:
        return "—"
    if summary.get("se") is None:
        return f"{summary['mean']:.{decimals}f}"
    return f"{summary['mean']:.{decimals}f} ± {summary['se']:.{decimals}f}"


def _pair(values: Any) -> str:
    if not values:
        return "—"
    return f"{values[0]:.2f} ± {values[1]:.2f}"


def _chosen(method: Mapping[str, Any]) -> str:
    """The hyper-parameters chosen on validation, summarised over splits (e.g. ``lr 0.01 x14``)."""
    per_split = method["per_split"]
    parts = []
    rates = Counter(per_split["learning_rate"])
    if len(method["selection"]["grid"]) > 1 or len(rates) > 1:
        parts.append("lr " + ", ".join(f"{lr:g} x{n}" for lr, n in sorted(rates.items())))
    for key, label in (("dropout", "p"), ("prior_precision", "lambda"), ("temperature", "T")):
        if per_split.get(key):  # the SG-MCMC methods choose a prior precision and a temperature
            counts = Counter(per_split[key])
            parts.append(f"{label} " + ", ".join(f"{v:g} x{n}" for v, n in sorted(counts.items())))
    epochs = sorted(per_split["epochs"])
    if len(epochs) == 1:
        parts.append(f"epoch {epochs[0]}")
    elif method["selection"]["select_epochs"]:
        parts.append(f"epochs {epochs[0]}-{epochs[-1]} (median {epochs[len(epochs) // 2]})")
    else:
        parts.append(f"epochs {epochs[0]}")
    divergence = (method.get("details") or {}).get("divergence") or {}
    reruns = [
        f"split {split} at lr {divergence['retraining_learning_rate'][split]:g}"
        for split, events in enumerate(divergence.get("retraining", []))
        if events
    ]
    if reruns:  # an SG-MCMC chain that diverged in the retraining ran again at a smaller step size
        parts.append("diverged, rerun: " + ", ".join(reruns))
    return "; ".join(parts)


_OOD_AFTER = _HEADER.index("95% cov.") + 1
"""Where a task's OOD columns go (after the coverage)."""


def regression_header(task: Mapping[str, Any]) -> list[str]:
    """The column titles of a regression task's table: :data:`_HEADER`, with one column per OOD set (the
    user's data) after the coverage."""
    ood = [f"AUROC {name} (total / epistemic)" for name in task.get("ood_sets", {})]
    return [*_HEADER[:_OOD_AFTER], *ood, *_HEADER[_OOD_AFTER:]]


def _auroc_pair(method: Mapping[str, Any], ood_name: str) -> str:
    scores = method["ood"][ood_name]
    cells = [scores[kind]["auroc"] for kind in ("total", "epistemic")]
    return " / ".join("—" if value is None else f"{value:.3f}" for value in cells)


def regression_rows(task: Mapping[str, Any]) -> list[list[str]]:
    """Table rows of a regression task: one per method, then one per published reference.

    A published NLL sits in the column of the NLL it is like for like with (:data:`PUBLISHED_NLL_KIND`); the
    other NLL column of its row stays empty.

    Args:
        task: a regression task's block of ``results.json``.

    Returns:
        Rows of cells in the order of :func:`regression_header` (NLL and RMSE as ``mean ± standard error``,
        the mean alone for one split; OOD columns: AUROC with the total / epistemic variance as score).
    """
    rows = []
    ood_names = list(task.get("ood_sets", {}))
    for name, method in task["methods"].items():
        metrics = method["metrics"]
        rows.append(
            [
                name,
                _pm(metrics["nll"]),
                _pm(metrics["rmse"]),
                _pm(metrics["nll_mixture"]),
                f"{100 * metrics['coverage_95']['mean']:.1f}%",
                *(_auroc_pair(method, ood_name) for ood_name in ood_names),
                f"{method['num_members']} x {method['num_samples'] // method['num_members']}",
                f"{method['num_parameters']:,}",
                f"{method['train_time_s']:.1f}",
                _chosen(method),
            ]
        )
    width = len(regression_header(task))
    for key, published in task["published"].items():
        row = [PUBLISHED_LABELS.get(key, f"{key}, published"), "—", _pair(published.get("rmse"))]
        row += ["—"] * (width - 3)
        row[_NLL_COLUMNS[PUBLISHED_NLL_KIND.get(key, "nll")]] = _pair(published.get("nll"))
        rows.append(row)
    return rows


def _text_table(header: list[str], rows: list[list[str]]) -> str:
    table = [header, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = []
    for index, row in enumerate(table):
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _splits_text(task: Mapping[str, Any]) -> str:
    if task["num_splits"] == 1:
        return f"one split, {task['num_test']} test rows"
    return f"{task['num_splits']} splits, {task['num_test']} test rows each"


def format_regression_tables(results: Mapping[str, Any]) -> str:
    """Fixed-width text tables, one per regression task, for the terminal; the methods that could not be
    built on the task's model follow, with the reason."""
    parts = []
    for name, task in results["tasks"].items():
        if not report_format.is_regression_task(task):
            continue
        title = f"{name}: {task['description']} ({_splits_text(task)})"
        table = _text_table(regression_header(task), regression_rows(task))
        parts.append("\n".join([title, table, *report_format.not_applicable_lines(task)]))
    return "\n\n".join(parts)


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|:---|" + "---:|" * (len(header) - 2) + ":---|"]
    lines += ["| " + " | ".join(report_format.markdown_escape(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


_LEGEND = (
    "NLL (moment-matched): negative log-likelihood of the test targets (nats, original units) under one "
    "Gaussian with the mean and variance of the mixture of the members and samples (Lakshminarayanan et al. "
    "2017); NLL (mixture): under the exact equal-weight Gaussian mixture. A published NLL sits in the column "
    "it is like for like with: Deep Ensembles and PBP score one Gaussian (moment-matched), the MC dropout "
    "rerun the exact mixture of its samples. Mean ± standard error over the splits (sample standard "
    "deviation / sqrt(splits)). 95% cov.: fraction of test targets inside the central 95% interval. chosen: "
    "hyper-parameters chosen on the validation split of each training split (x = number of splits); "
    "diverged, rerun: the splits whose SG-MCMC chain diverged in the retraining and ran again at a smaller "
    "step size, the one their samples came from (docs/sgmcmc.md). With "
    "one split (your own data: uqkit bench --data), the mean alone, and the epoch of lowest validation NLL "
    "whose weights the method kept; AUROC <OOD set>: OOD detection scored by the predictive variance "
    "(total) / the variance of the members' or samples' means (epistemic)."
)


def _facts(task: Mapping[str, Any]) -> list[tuple[str, str]]:
    protocol = task["protocol"]
    if protocol["hidden_units"] is None:
        network = f"the model {protocol.get('model', '(not recorded)')}"
    else:
        network = f"one hidden layer of {protocol['hidden_units']} ReLU units"
    facts = [
        ("data", f"{task['num_rows']} rows x {task['num_features']} features; source {task['source']}"),
        (
            "splits",
            f"{task['num_splits']} split{'s' if task['num_splits'] != 1 else ''} of {task['num_train']} "
            f"train / {task['num_test']} test rows",
        ),
        (
            "protocol",
            f"{network}, batch {protocol['batch_size']}, {protocol['optimizer']}; validation "
            f"{100 * protocol['validation_fraction']:.0f}% of each training split; "
            f"{protocol['standardization']}",
        ),
    ]
    facts += [(f"OOD set {name}", text) for name, text in task.get("ood_sets", {}).items()]
    return facts


def write_regression_report(results: Mapping[str, Any], run_dir: str | os.PathLike) -> dict[str, Any]:
    """Write ``report.md``, a self-contained ``report.html`` and ``figures/<task>_coverage.png``.

    Args:
        results: a results dict following the schema (an older version is upgraded first,
            :func:`uqkit.bench.upgrade.upgrade_results`; checked here with
            :func:`uqkit.bench.results_schema.validate_results`) whose tasks are all regression tasks.
        run_dir: the run directory (created if missing).

    Returns:
        ``{"markdown": Path, "html": Path, "figures": list[Path]}``.

    Raises:
        ValueError: if ``results`` holds a classification task.
        ImportError: if matplotlib is not installed (``pip install 'uqkit[bench]'``).
    """
    results = upgrade_results(results)
    results_schema.validate_results(results)
    kinds = {report_format.is_regression_task(task) for task in results["tasks"].values()}
    if kinds != {True}:
        raise ValueError("results: expected only regression tasks; run regression and classification apart")
    plots = report_format.import_plots()
    run_dir = Path(run_dir)
    (run_dir / "figures").mkdir(parents=True, exist_ok=True)
    colors = plots.method_colors(report_format.method_order(results))
    md = report_format.markdown_header(results, "uqkit regression benchmark report")
    body = [
        "<h1>uqkit regression benchmark report</h1>",
        f"<p>Command: <code>{html.escape(results['command'])}</code><br>Created: "
        f"{html.escape(results['created'])}</p>",
        "<h2>Environment</h2>",
        report_format.html_key_value_table(results["environment"]),
    ]
    figure_paths = []
    for name, task in results["tasks"].items():
        rows, header = regression_rows(task), regression_header(task)
        png = plots.figure_png(plots.coverage_figure(name, task, colors))
        file_name = f"{plots._slug(name)}_coverage.png"
        path = run_dir / "figures" / file_name
        report_format.atomic_write_bytes(path, png)
        figure_paths.append(path)
        caption = (
            "Interval coverage: observed fraction of test targets inside the central interval of each "
            "nominal probability, mean over splits; the dashed diagonal is perfect calibration."
        )
        md += [
            "",
            f"## Task {report_format.markdown_escape(name)}",
            "",
            report_format.markdown_escape(task["description"]),
            "",
        ]
        md += [f"- **{label}**: {report_format.markdown_escape(text)}" for label, text in _facts(task)]
        md += [
            "",
            _markdown_table(header, rows),
            "",
            report_format.markdown_escape(_LEGEND),
            *report_format.markdown_not_applicable(task),
            *conformal_report.markdown_lines(
                conformal_report.conformal_interval_table(task), report_format.markdown_escape
            ),
            "",
            f"![interval coverage](figures/{file_name})",
        ]
        md += ["", f"*{report_format.markdown_escape(caption)}*"]
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        trs = "".join(
            "<tr>" + "".join(f'<td class="num">{html.escape(c)}</td>' for c in row) + "</tr>" for row in rows
        )
        facts = "".join(f"<dt>{html.escape(a)}</dt><dd>{html.escape(b)}</dd>" for a, b in _facts(task))
        data = base64.b64encode(png).decode("ascii")
        body += [
            f"<h2>Task {html.escape(name)}</h2>",
            f"<p>{html.escape(task['description'])}</p>",
            f'<dl class="facts">{facts}</dl>',
            f'<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table></div>',
            f'<p class="legend">{html.escape(_LEGEND)}</p>',
            *report_format.html_not_applicable(task),
            *conformal_report.html_lines(conformal_report.conformal_interval_table(task)),
            f'<figure><img src="data:image/png;base64,{data}" alt="interval coverage">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>",
        ]
    markdown_path, html_path = run_dir / "report.md", run_dir / "report.html"
    report_format.atomic_write_bytes(markdown_path, ("\n".join(md) + "\n").encode("utf-8"))
    title = "uqkit regression report: " + ", ".join(results["tasks"])
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{report_format.REPORT_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
    report_format.atomic_write_bytes(html_path, page.encode("utf-8"))
    return {"markdown": markdown_path, "html": html_path, "figures": figure_paths}
