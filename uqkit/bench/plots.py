"""Figures of a benchmark run, drawn from one task's block of ``results.json`` (docs/results-schema.md).

Per task: reliability diagrams (Guo et al. 2017, fig. 1), referral curves (Filos et al. 2019),
histograms of the uncertainty score on in-distribution and OOD inputs, accuracy and ECE along the task's
shift (Ovadia et al. 2019, fig. 2), risk-coverage curves (Geifman & El-Yaniv 2017) and the mean size of
conformal prediction sets (calibrated on validation); for a task with 2-D inputs, the uncertainty surface of
every method (Liu et al. 2020, fig. 1). A method keeps its colour in every figure (:func:`method_colors`).

Figures are :class:`matplotlib.figure.Figure` objects attached to an Agg canvas directly, never through
pyplot: nothing global (backend, open-figure registry, rcParams) is touched, and they are freed like any
object. matplotlib is an optional dependency (``pip install 'uqkit[bench]'``).
"""

from __future__ import annotations

import hashlib
import io
import math
import re
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

try:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import LogLocator, NullFormatter
except ImportError as _error:  # pragma: no cover - exercised by a test that hides matplotlib
    raise ImportError(
        f"uqkit.bench.plots needs matplotlib: pip install 'uqkit[bench]' ({_error})"
    ) from _error

__all__ = [
    "DPI",
    "PALETTE",
    "TaskFigure",
    "conformal_set_size_figure",
    "coverage_figure",
    "figure_png",
    "method_colors",
    "ood_score_figure",
    "referral_figure",
    "reliability_figure",
    "risk_coverage_figure",
    "shift_figure",
    "surface_figure",
    "task_figures",
]

DPI = 110
"""Resolution of the saved PNGs (dots per inch)."""

PALETTE = (
    "#0072B2",  # blue
    "#E69F00",  # orange
    "#009E73",  # bluish green
    "#CC79A7",  # reddish purple
    "#56B4E9",  # sky blue
    "#D55E00",  # vermillion
    "#882255",  # wine
    "#8C564B",  # brown
    "#BCBD22",  # olive
    "#17BECF",  # cyan
)
"""Method colours in order: Okabe & Ito's colour-blind-safe set (without yellow), Tol's wine, three of
Tableau's. No grey: grey is the in-distribution colour of the OOD histograms."""

_IN_DISTRIBUTION_COLOR = "#9A9A9A"
_SURFACE_CMAP = "Blues"
_CLASS_COLORS = ("#E69F00", "#009E73", "#CC79A7", "#D55E00", "#F0E442", "#882255")
"""Training-point colours per class on the surface figure: none of them blue, the surface's colour map."""
_OOD_POINT_COLOR = "#C0392B"
_GAP_COLOR = "#C0392B"
_TITLE_SIZE = 9.5
_LABEL_SIZE = 8.5
_TICK_SIZE = 7.5


@dataclass(frozen=True)
class TaskFigure:
    """One figure of a task.

    Attributes:
        name: file stem, unique within a run for distinct task and OOD set names (``<task>_reliability``).
        caption: one or two sentences saying what the figure shows; the text before the first colon is a
            short title.
        figure: the figure, attached to an Agg canvas.
    """

    name: str
    caption: str
    figure: Figure


def method_colors(methods: Sequence[str]) -> dict[str, str]:
    """A fixed colour per method, keyed by position in ``methods`` (cycling through :data:`PALETTE`).

    Pass the same order for every figure of a run (``uqkit.bench.report.method_order``) and a method has
    the same colour everywhere.

    Args:
        methods: method names, without duplicates.

    Returns:
        ``{method: hex colour}`` in the order of ``methods``.
    """
    if isinstance(methods, str) or not isinstance(methods, Sequence):
        raise TypeError(f"methods: expected a sequence of method names, got {type(methods).__name__}")
    if len(set(methods)) != len(methods):
        raise ValueError(f"methods: expected distinct names, got {list(methods)!r}")
    return {name: PALETTE[index % len(PALETTE)] for index, name in enumerate(methods)}


# -- helpers ----------------------------------------------------------------------------------------------
def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _text(name: Any, width: int = 32) -> str:
    """``name`` for a matplotlib label: shortened to ``width`` characters, ``$`` not starting mathtext."""
    text = " ".join(str(name).split())
    if len(text) > width:
        text = text[: width - 1] + "…"
    return text.replace("$", r"\$")


def _wrapped(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(_text(text, 400), width)) or " "


def _floats(values: Sequence[Any]) -> np.ndarray:
    """A float array with NaN where a value is null."""
    return np.array([np.nan if value is None else float(value) for value in values], dtype=float)


def _format_fraction(value: Any, decimals: int = 3, percent: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{100 * value:.{decimals}f}%" if percent else f"{value:.{decimals}f}"


def _ordered_methods(task: Mapping[str, Any], colors: Mapping[str, str]) -> list[str]:
    """The task's methods in palette order (methods unknown to ``colors`` last)."""
    methods = task["methods"]
    return [name for name in colors if name in methods] + [name for name in methods if name not in colors]


def _color(name: str, colors: Mapping[str, str]) -> str:
    return colors.get(name, PALETTE[len(colors) % len(PALETTE)])


def _grid(count: int, max_columns: int = 4) -> tuple[int, int]:
    columns = min(count, max_columns)
    return math.ceil(count / columns), columns


def _style(ax, grid: bool = True) -> None:
    ax.tick_params(labelsize=_TICK_SIZE)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if grid:
        ax.grid(True, color="#E5E5E5", linewidth=0.7)
        ax.set_axisbelow(True)


def _slug(text: str) -> str:
    """A file-name-safe form of ``text``; a short hash keeps distinct names distinct when characters go."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "x"
    if slug != text:
        slug += "-" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:6]
    return slug


def _line_legend(ax, count: int) -> None:
    ax.legend(
        loc="best",
        fontsize=_TICK_SIZE,
        frameon=True,
        framealpha=0.9,
        edgecolor="#DDDDDD",
        ncols=1 if count <= 6 else 2,
    )


# -- figures ----------------------------------------------------------------------------------------------
def reliability_figure(task_name: str, task: Mapping[str, Any], colors: Mapping[str, str]) -> Figure:
    """Reliability diagrams (Guo et al. 2017, fig. 1), one panel per method, in a grid.

    Each panel: bars of accuracy per confidence bin in the method's colour, the diagonal of perfect
    calibration, the gap between each bin's accuracy and mean confidence hatched, ECE in the title; below
    it, the number of examples per bin (log scale), showing where the confidences lie.

    Args:
        task_name: the task's name (figure title).
        task: the task's block of ``results.json``.
        colors: ``{method: colour}`` from :func:`method_colors`.

    Returns:
        The figure.
    """
    methods = _ordered_methods(task, colors)
    rows, columns = _grid(len(methods))
    figure = _new_figure(2.35 * columns + 0.4, 3.05 * rows + 0.45)
    grid = figure.add_gridspec(2 * rows, columns, height_ratios=[3.3, 1.0] * rows)
    count_axes = []
    for index, name in enumerate(methods):
        row, column = divmod(index, columns)
        method = task["methods"][name]
        curve = method["calibration_curve"]
        lower, upper = _floats(curve["bin_lower"]), _floats(curve["bin_upper"])
        width = upper - lower
        accuracy, confidence = _floats(curve["accuracy"]), _floats(curve["confidence"])
        count = _floats(curve["count"])
        has_examples = np.isfinite(accuracy) & np.isfinite(lower) & np.isfinite(width) & (count > 0)
        has_gap = has_examples & np.isfinite(confidence)

        ax = figure.add_subplot(grid[2 * row, column])
        ax_count = figure.add_subplot(
            grid[2 * row + 1, column], sharex=ax, sharey=count_axes[0] if count_axes else None
        )
        count_axes.append(ax_count)
        ax.bar(
            lower[has_examples],
            accuracy[has_examples],
            width=width[has_examples],
            align="edge",
            color=_color(name, colors),
            edgecolor="white",
            linewidth=0.6,
            label="accuracy",
        )
        ax.bar(
            lower[has_gap],
            (confidence - accuracy)[has_gap],
            bottom=accuracy[has_gap],
            width=width[has_gap],
            align="edge",
            facecolor=(0.75, 0.22, 0.17, 0.18),
            edgecolor=_GAP_COLOR,
            hatch="////",
            linewidth=0.5,
            label="gap to confidence",
        )
        ax.plot([0, 1], [0, 1], linestyle="--", color="#333333", linewidth=0.9, label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(
            f"{_text(name, 26)}\nECE {_format_fraction(method['metrics']['ece'], 2, percent=True)}",
            fontsize=_TITLE_SIZE,
        )
        ax.tick_params(labelbottom=False)
        _style(ax, grid=False)

        ax_count.bar(
            lower[count > 0],
            count[count > 0],
            width=width[count > 0],
            align="edge",
            color="#B8B8B8",
            edgecolor="white",
            linewidth=0.4,
        )
        ax_count.set_xlabel("confidence", fontsize=_LABEL_SIZE)
        _style(ax_count, grid=False)
        if column == 0:
            ax.set_ylabel("accuracy", fontsize=_LABEL_SIZE)
            ax_count.set_ylabel("count", fontsize=_LABEL_SIZE)
        else:
            ax.tick_params(labelleft=False)
            ax_count.tick_params(labelleft=False)
        if index == 0:
            ax.legend(loc="upper left", fontsize=6.5, frameon=False, handlelength=1.4)
    if any(ax.patches for ax in count_axes):  # counts span decades (most examples are confident)
        count_axes[0].set_yscale("log")
        count_axes[0].yaxis.set_major_locator(LogLocator(numticks=3))
        count_axes[0].yaxis.set_minor_formatter(NullFormatter())
    figure.suptitle(f"{_text(task_name, 60)}: reliability diagrams (test set)", fontsize=11)
    return figure


def referral_figure(task_name: str, task: Mapping[str, Any], colors: Mapping[str, str]) -> Figure:
    """Referral curves (Filos et al. 2019): accuracy on the retained examples vs the fraction referred.

    Args:
        task_name: the task's name (figure title).
        task: the task's block of ``results.json``.
        colors: ``{method: colour}`` from :func:`method_colors`.

    Returns:
        The figure: one line per method.
    """
    methods = _ordered_methods(task, colors)
    figure = _new_figure(6.2, 4.1)
    ax = figure.add_subplot()
    for name in methods:
        curve = task["methods"][name]["referral_curve"]
        ax.plot(
            100 * _floats(curve["referred_fraction"]),
            100 * _floats(curve["accuracy"]),
            color=_color(name, colors),
            linewidth=1.8,
            marker="o",
            markersize=2.5,
            label=_text(name),
        )
    ax.set_xlabel("examples referred to an expert, most uncertain first (%)", fontsize=_LABEL_SIZE)
    ax.set_ylabel("accuracy on the retained examples (%)", fontsize=_LABEL_SIZE)
    ax.set_title(f"{_text(task_name, 60)}: referral curves (test set)", fontsize=_TITLE_SIZE + 1)
    _style(ax)
    _line_legend(ax, len(methods))
    return figure


def risk_coverage_figure(task_name: str, task: Mapping[str, Any], colors: Mapping[str, str]) -> Figure:
    """Risk-coverage curves (Geifman & El-Yaniv 2017): error rate on the most certain fraction kept.

    Args:
        task_name: the task's name (figure title).
        task: the task's block of ``results.json``.
        colors: ``{method: colour}`` from :func:`method_colors`.

    Returns:
        The figure: one line per method, the AURC in the legend.
    """
    methods = _ordered_methods(task, colors)
    figure = _new_figure(6.2, 4.1)
    ax = figure.add_subplot()
    for name in methods:
        method = task["methods"][name]
        curve = method["risk_coverage"]
        aurc = _format_fraction(method["metrics"]["aurc"], 4)
        ax.plot(
            100 * _floats(curve["coverage"]),
            100 * _floats(curve["risk"]),
            color=_color(name, colors),
            linewidth=1.8,
            label=f"{_text(name)} (AURC {aurc})",
        )
    ax.set_xlim(0, 100)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("coverage: examples kept, most certain first (%)", fontsize=_LABEL_SIZE)
    ax.set_ylabel("risk: error rate on the kept examples (%)", fontsize=_LABEL_SIZE)
    ax.set_title(f"{_text(task_name, 60)}: risk–coverage curves (test set)", fontsize=_TITLE_SIZE + 1)
    _style(ax)
    _line_legend(ax, len(methods))
    return figure


def _score_bins(in_scores: np.ndarray, ood_scores: np.ndarray, count: int = 40) -> np.ndarray:
    both = np.concatenate([in_scores, ood_scores])
    low, high = float(both.min()), float(both.max())
    if high - low < 1e-12:  # one value only (e.g. zero epistemic uncertainty): a bin around it
        low, high = low - 0.5, high + 0.5
    return np.linspace(low, high, count + 1)


def ood_score_figure(
    task_name: str, task: Mapping[str, Any], ood_set: str, colors: Mapping[str, str]
) -> Figure:
    """Densities of the uncertainty score on in-distribution test inputs and on one OOD set, per method.

    Each panel overlays the two normalised histograms (shared bins); its title gives the AUROC of the
    stored score kind (OOD is the positive class, higher score = more likely OOD).

    Args:
        task_name: the task's name (figure title).
        task: the task's block of ``results.json``.
        ood_set: a key of ``task["ood_sets"]``.
        colors: ``{method: colour}`` from :func:`method_colors`.

    Returns:
        The figure.
    """
    if ood_set not in task["ood_sets"]:
        raise ValueError(
            f"ood_set: expected one of {', '.join(map(repr, task['ood_sets']))}, got {ood_set!r}"
        )
    methods = _ordered_methods(task, colors)
    rows, columns = _grid(len(methods))
    figure = _new_figure(2.55 * columns + 0.4, 2.35 * rows + 0.75)
    for index, name in enumerate(methods):
        _row, column = divmod(index, columns)
        block = task["methods"][name]["ood"][ood_set]
        scores = block["scores"]
        kind = scores["kind"]
        in_scores, ood_scores = _floats(scores["in"]), _floats(scores["ood"])
        in_scores, ood_scores = in_scores[np.isfinite(in_scores)], ood_scores[np.isfinite(ood_scores)]
        auroc = block[kind]["auroc"] if isinstance(block.get(kind), Mapping) else None
        ax = figure.add_subplot(rows, columns, index + 1)
        if len(in_scores) and len(ood_scores):
            bins = _score_bins(in_scores, ood_scores)
            ax.hist(
                in_scores,
                bins=bins,
                density=True,
                histtype="stepfilled",
                color=_IN_DISTRIBUTION_COLOR,
                alpha=0.55,
                label="in-distribution",
            )
            ax.hist(
                ood_scores,
                bins=bins,
                density=True,
                histtype="stepfilled",
                color=_color(name, colors),
                alpha=0.5,
                label=f"OOD: {_text(ood_set, 20)}",
            )
            ax.hist(
                ood_scores,
                bins=bins,
                density=True,
                histtype="step",
                color=_color(name, colors),
                linewidth=1.0,
            )
        else:
            ax.text(0.5, 0.5, "no scores", ha="center", va="center", transform=ax.transAxes, color="#777777")
        ax.set_title(f"{_text(name, 26)}\nAUROC {_format_fraction(auroc)}", fontsize=_TITLE_SIZE)
        ax.set_xlabel(f"{_text(kind, 20)} uncertainty", fontsize=_LABEL_SIZE)
        if column == 0:
            ax.set_ylabel("density", fontsize=_LABEL_SIZE)
        ax.set_yticks([])
        _style(ax, grid=False)
        ax.spines["left"].set_visible(False)
    handles = [
        Patch(facecolor=_IN_DISTRIBUTION_COLOR, alpha=0.55, label="in-distribution test"),
        Patch(facecolor="#666666", alpha=0.5, label=f"OOD: {_text(ood_set, 30)} (method colour)"),
    ]
    figure.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=_TICK_SIZE, frameon=False)
    title = f"{_text(task_name, 40)}: uncertainty on in-distribution vs OOD '{_text(ood_set, 30)}'"
    figure.suptitle(_wrapped(title, 95), fontsize=11)
    return figure


def shift_figure(task_name: str, task: Mapping[str, Any], colors: Mapping[str, str]) -> Figure | None:
    """Accuracy and ECE along the task's shift (e.g. rotation), one line per method (Ovadia et al. 2019).

    Args:
        task_name: the task's name (figure title).
        task: the task's block of ``results.json``.
        colors: ``{method: colour}`` from :func:`method_colors`.

    Returns:
        The figure (two panels), or None when the task has no shift.
    """
    shift = task["shift"]
    if shift is None:
        return None
    methods = _ordered_methods(task, colors)
    figure = _new_figure(9.6, 4.1)
    ax_accuracy, ax_ece = figure.subplots(1, 2)
    for name in methods:
        curve = task["methods"][name]["shift"]
        values = _floats(curve["values"])
        style = dict(color=_color(name, colors), linewidth=1.7, marker="o", markersize=3.2, label=_text(name))
        ax_accuracy.plot(values, 100 * _floats(curve["accuracy"]), **style)
        ax_ece.plot(values, 100 * _floats(curve["ece"]), **style)
    x_label = f"{_text(shift['name'], 30)} ({_text(shift['unit'], 20)})"
    for ax, y_label, title in (
        (ax_accuracy, "accuracy (%)", "accuracy (higher is better)"),
        (ax_ece, "ECE (%)", "calibration error (lower is better)"),
    ):
        ax.set_xlabel(x_label, fontsize=_LABEL_SIZE)
        ax.set_ylabel(y_label, fontsize=_LABEL_SIZE)
        ax.set_title(title, fontsize=_TITLE_SIZE)
        ax.set_ylim(bottom=0)
        _style(ax)
    handles, labels = ax_accuracy.get_legend_handles_labels()
    figure.legend(
        handles,
        labels,
        loc="outside lower center",
        ncols=min(len(methods), 5),
        fontsize=_TICK_SIZE,
        frameon=False,
    )
    figure.suptitle(f"{_text(task_name, 60)}: test set under {_text(shift['name'], 30)}", fontsize=11)
    return figure


def surface_figure(task_name: str, task: Mapping[str, Any], colors: Mapping[str, str]) -> Figure | None:
    """Predictive uncertainty over the input plane, one panel per method (Liu et al. 2020, fig. 1).

    Each panel fills the contours of the total predictive entropy divided by ``log C`` (0: certain, 1: the
    uniform prediction) on the method's ``surface`` grid, on one colour scale shared by every panel, and
    overlays the stored training points (coloured by class) and OOD points (red crosses). The panel title
    gives the method's OOD AUROC (total uncertainty) of each of the task's OOD sets.

    Args:
        task_name: the task's name (figure title).
        task: the task's block of ``results.json``.
        colors: ``{method: colour}`` from :func:`method_colors` (sets the panel order).

    Returns:
        The figure, or None when no method of the task has a ``surface``.
    """
    methods = [name for name in _ordered_methods(task, colors) if "surface" in task["methods"][name]]
    if not methods:
        return None
    normaliser = math.log(task["num_classes"]) if task["num_classes"] > 1 else 1.0
    levels = np.linspace(0.0, 1.0, 11)
    rows, columns = _grid(len(methods))
    figure = _new_figure(2.7 * columns + 0.9, 2.55 * rows + 0.8)
    axes, filled = [], None
    for index, name in enumerate(methods):
        method = task["methods"][name]
        surface = method["surface"]
        x, y = _floats(surface["x"]), _floats(surface["y"])
        uncertainty = np.clip(np.array(surface["total"], dtype=float) / normaliser, 0.0, 1.0)
        ax = figure.add_subplot(rows, columns, index + 1)
        axes.append(ax)
        filled = ax.contourf(x, y, uncertainty, levels=levels, cmap=_SURFACE_CMAP, vmin=0.0, vmax=1.0)
        train = surface["train_points"]
        labels = np.asarray(train["label"], dtype=int)
        point_colors = [_CLASS_COLORS[label % len(_CLASS_COLORS)] for label in labels]
        ax.scatter(
            _floats(train["x"]), _floats(train["y"]), c=point_colors, s=4, linewidths=0, alpha=0.8, zorder=3
        )
        ood = surface["ood_points"]
        ax.scatter(
            _floats(ood["x"]),
            _floats(ood["y"]),
            marker="x",
            s=7,
            linewidths=0.7,
            color=_OOD_POINT_COLOR,
            zorder=4,
        )
        aurocs = ", ".join(_format_fraction(block["total"]["auroc"]) for block in method["ood"].values())
        title = _text(name, 26) + (f"\nOOD AUROC {aurocs}" if aurocs else "")
        ax.set_title(title, fontsize=_TITLE_SIZE, color=_color(name, colors))
        ax.set_xlim(x[0], x[-1])
        ax.set_ylim(y[0], y[-1])
        ax.set_aspect("equal", adjustable="box")
        ax.tick_params(labelsize=_TICK_SIZE)
    colorbar = figure.colorbar(filled, ax=axes, shrink=0.85, ticks=levels[::2])
    colorbar.set_label("total uncertainty: entropy / log C", fontsize=_LABEL_SIZE)
    colorbar.ax.tick_params(labelsize=_TICK_SIZE)
    num_classes = max(1, task["num_classes"])
    handles = [
        Line2D(
            [],
            [],
            linestyle="",
            marker="o",
            markersize=4,
            color=_CLASS_COLORS[c % len(_CLASS_COLORS)],
            label=f"train, class {c}",
        )
        for c in range(min(num_classes, len(_CLASS_COLORS)))
    ]
    handles.append(
        Line2D([], [], linestyle="", marker="x", markersize=5, color=_OOD_POINT_COLOR, label="OOD inputs")
    )
    figure.legend(
        handles=handles, loc="outside lower center", ncols=len(handles), fontsize=_TICK_SIZE, frameon=False
    )
    figure.suptitle(f"{_text(task_name, 60)}: predictive uncertainty over the input plane", fontsize=11)
    return figure


_SET_SCORE_STYLE = {
    "lac": {"label": "LAC", "alpha": 0.95, "hatch": None},
    "aps": {"label": "APS (randomised)", "alpha": 0.45, "hatch": "////"},
}


def conformal_set_size_figure(
    task_name: str, task: Mapping[str, Any], colors: Mapping[str, str]
) -> Figure | None:
    """Mean size of the conformal prediction sets of every method, one panel per level ``alpha``.

    Each method has a bar per score (LAC solid, randomised APS hatched) in its colour, the bar's length the
    mean number of classes per test set, its test coverage written at its end; a dotted line marks one
    class. The sets are calibrated on the validation split (the ``conformal`` block of each method).

    Args:
        task_name: the task's name (figure title).
        task: the task's block of ``results.json``.
        colors: ``{method: colour}`` from :func:`method_colors`.

    Returns:
        The figure, or None when no method of the task has a ``conformal`` block.
    """
    methods = [name for name in _ordered_methods(task, colors) if task["methods"][name].get("conformal")]
    if not methods:
        return None
    alphas = task["methods"][methods[0]]["conformal"]["alphas"]
    scores = [score for score in _SET_SCORE_STYLE if score in task["methods"][methods[0]]["conformal"]]
    figure = _new_figure(3.6 * len(alphas) + 0.6, 0.42 * len(methods) * len(scores) / 2 + 1.7)
    axes = figure.subplots(1, len(alphas), sharey=True, squeeze=False)[0]
    height = 0.8 / len(scores)
    largest = max(
        (size or 0.0)
        for name in methods
        for score in scores
        for size in task["methods"][name]["conformal"][score]["mean_set_size"]
    )
    positions = np.arange(len(methods))[::-1]  # the first method on top
    for level, (ax, alpha) in enumerate(zip(axes, alphas, strict=True)):
        for offset, score in enumerate(scores):
            style = _SET_SCORE_STYLE[score]
            y = positions + (len(scores) / 2 - offset - 0.5) * height
            for name, row in zip(methods, y, strict=True):
                block = task["methods"][name]["conformal"][score]
                size, coverage = block["mean_set_size"][level], block["coverage"][level]
                ax.barh(
                    row,
                    np.nan if size is None else size,
                    height=height * 0.92,
                    color=_color(name, colors),
                    alpha=style["alpha"],
                    hatch=style["hatch"],
                    edgecolor=_color(name, colors),
                    linewidth=0.6,
                )
                ax.text(
                    (size or 0.0) + 0.02 * max(largest, 1.0),
                    row,
                    _format_fraction(coverage, 1, percent=True),
                    va="center",
                    fontsize=6.5,
                    color="#444444",
                )
        ax.axvline(1.0, color="#555555", linestyle=":", linewidth=0.9)
        ax.set_xlim(0, max(largest, 1.0) * 1.3)
        ax.set_title(f"1 − α = {100 * (1 - alpha):g}%", fontsize=_TITLE_SIZE)
        ax.set_xlabel("mean set size (classes), test set", fontsize=_LABEL_SIZE)
        _style(ax)
        ax.grid(False, axis="y")
    axes[0].set_yticks(positions, [_text(name, 22) for name in methods])
    handles = [
        Patch(
            facecolor="#777777",
            alpha=_SET_SCORE_STYLE[s]["alpha"],
            hatch=_SET_SCORE_STYLE[s]["hatch"],
            edgecolor="#555555",
            label=_SET_SCORE_STYLE[s]["label"],
        )
        for s in scores
    ]
    handles.append(Line2D([], [], color="#555555", linestyle=":", label="one class"))
    figure.legend(
        handles=handles, loc="outside lower center", ncols=len(handles), fontsize=_TICK_SIZE, frameon=False
    )
    figure.suptitle(
        f"{_text(task_name, 60)}: conformal prediction sets (calibrated on validation; test coverage at "
        "each bar's end)",
        fontsize=10,
    )
    return figure


def task_figures(task_name: str, task: Mapping[str, Any], colors: Mapping[str, str]) -> list[TaskFigure]:
    """Every figure of one task, in report order.

    The uncertainty surface (when the methods have a ``surface``, i.e. for 2-D inputs), reliability
    diagrams, referral curves, one OOD score figure per OOD set, accuracy/ECE under shift (when the task has
    a shift), risk-coverage curves, conformal set sizes (when the methods have a ``conformal`` block).

    Args:
        task_name: the task's name.
        task: the task's block of a validated ``results.json``.
        colors: ``{method: colour}`` from :func:`method_colors`, for the whole run.

    Returns:
        The figures with their file stems and captions.
    """
    stem = _slug(task_name)
    num_bins = len(next(iter(task["methods"].values()))["calibration_curve"]["bin_lower"])
    figures = []
    surface = surface_figure(task_name, task, colors)
    if surface is not None:
        figures.append(
            TaskFigure(
                f"{stem}_surface",
                "Uncertainty surface (Liu et al. 2020, fig. 1): total predictive entropy divided by log C "
                "(0 certain, 1 uniform) over the input plane, one colour scale for every method; dots: "
                "training points coloured by class; red crosses: OOD inputs; OOD AUROC in each title.",
                surface,
            )
        )
    figures += [
        TaskFigure(
            f"{stem}_reliability",
            "Reliability diagrams: accuracy per confidence bin (bars) against perfect calibration "
            "(diagonal); hatched: gap to the bin's mean confidence; below: examples per bin (log scale); "
            f"ECE with {num_bins} equal-width bins.",
            reliability_figure(task_name, task, colors),
        ),
        TaskFigure(
            f"{stem}_referral",
            "Referral curves: accuracy on the test examples kept when the most uncertain fraction is "
            "referred to an expert (higher is better).",
            referral_figure(task_name, task, colors),
        ),
    ]
    for ood_set, description in task["ood_sets"].items():
        figures.append(
            TaskFigure(
                f"{stem}_ood_{_slug(ood_set)}",
                f"OOD detection, {ood_set}: density of the uncertainty score on in-distribution test inputs "
                f"(grey) and on {ood_set} ({description}); AUROC in each panel title.",
                ood_score_figure(task_name, task, ood_set, colors),
            )
        )
    shift = shift_figure(task_name, task, colors)
    if shift is not None:
        name = task["shift"]["name"]
        figures.append(
            TaskFigure(
                f"{stem}_shift",
                f"Distribution shift: accuracy and ECE of the test set under {name} "
                f"({task['shift']['unit']}).",
                shift,
            )
        )
    figures.append(
        TaskFigure(
            f"{stem}_risk_coverage",
            "Risk–coverage curves: error rate on the most certain fraction of the test examples "
            "(lower is better); AURC, the area under each curve, in the legend.",
            risk_coverage_figure(task_name, task, colors),
        )
    )
    conformal = conformal_set_size_figure(task_name, task, colors)
    if conformal is not None:
        figures.append(
            TaskFigure(
                f"{stem}_conformal",
                "Conformal prediction sets: mean number of classes per test set of each method at coverage "
                "target 1 − α, the threshold calibrated on the method's own predictions on the validation "
                "split; LAC solid, randomised APS hatched; the test coverage at each bar's end.",
                conformal,
            )
        )
    return figures


def figure_png(figure: Figure, dpi: int = DPI) -> bytes:
    """The figure as PNG bytes, rendered by its Agg canvas.

    Args:
        figure: a figure from this module.
        dpi: resolution in dots per inch.

    Returns:
        The PNG file content.
    """
    if not isinstance(figure, Figure):
        raise TypeError(f"figure: expected a matplotlib Figure, got {type(figure).__name__}")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    return buffer.getvalue()


def coverage_figure(task_name: str, task: Mapping[str, Any], colors: Mapping[str, str]) -> Figure:
    """Regression calibration: observed vs expected coverage of the central Gaussian prediction intervals.

    For each nominal probability ``q`` the interval ``mu +- Phi^{-1}((1 + q) / 2) sigma`` of the predictive
    Gaussian should hold a fraction ``q`` of the test targets; the curve is the observed fraction, averaged
    over the splits. Above the diagonal the predictions are under-confident, below it over-confident.

    Args:
        task_name: the task's name (figure title).
        task: a regression task's block of ``results.json``.
        colors: ``{method: colour}`` from :func:`method_colors`.

    Returns:
        The figure: the diagonal and one line per method.
    """
    methods = _ordered_methods(task, colors)
    figure = _new_figure(5.2, 4.6)
    ax = figure.add_subplot()
    ax.plot([0, 100], [0, 100], color="#444444", linewidth=1.0, linestyle="--", label="calibrated")
    for name in methods:
        curve = task["methods"][name]["coverage_curve"]
        ax.plot(
            100 * _floats(curve["expected"]),
            100 * _floats(curve["observed"]),
            color=_color(name, colors),
            linewidth=1.8,
            marker="o",
            markersize=2.5,
            label=_text(name),
        )
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_aspect("equal")
    ax.set_xlabel("expected coverage of the central interval (%)", fontsize=_LABEL_SIZE)
    ax.set_ylabel("observed coverage on test, mean over splits (%)", fontsize=_LABEL_SIZE)
    ax.set_title(f"{_text(task_name, 60)}: interval coverage", fontsize=_TITLE_SIZE + 1)
    _style(ax)
    _line_legend(ax, len(methods) + 1)
    return figure
