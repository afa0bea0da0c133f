"""Runs over several seeds: one result block per seed, their mean, standard errors and a paired t-test.

``uqkit bench --seeds 0,1,2`` runs every (task, method) cell once per seed. This module turns the per-seed
result blocks of one method into the block that ``results.json`` holds for it (:func:`aggregate_seed_blocks`),
and gives the report its statistics (:func:`mean_and_standard_error`, :func:`paired_t_test`).

Statistics over ``n`` seeds, ``x_1 .. x_n``:

* mean ``m = sum_i x_i / n``; standard error ``se = s / sqrt(n)`` with the sample standard deviation
  ``s = sqrt(sum_i (x_i - m)^2 / (n - 1))`` (undefined for ``n = 1``);
* paired t-test of two methods ``a``, ``b`` on the same seeds (Student 1908; e.g. Demšar 2006, sec. 3.1.1, for
  comparing learners): differences ``d_i = a_i - b_i``, ``t = mean(d) / (s_d / sqrt(n))`` with ``n - 1``
  degrees of freedom, two-sided ``p = P(|T| >= |t|)``. Pairing by seed removes what a seed does to every
  method alike (its data split and test subset).

The Student t distribution function for an integer number of degrees of freedom ``nu`` has a closed form
(Abramowitz & Stegun 1964, eq. 26.7.3 for odd ``nu``, 26.7.4 for even ``nu``), so this module needs only the
standard library (like the report that uses it); the tests check it against ``scipy.stats``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "MEAN_KEYS",
    "SUMMARY_METRICS",
    "aggregate_seed_blocks",
    "mean_and_standard_error",
    "paired_t_test",
    "student_t_two_sided_p",
]

MEAN_KEYS = (
    "train_time_s",
    "inference_ms_per_example",
    "metrics",
    "referral_curve",
    "risk_coverage",
    "shift",
    "conformal",
)
"""Keys of a classification result block that the aggregated block holds as means over seeds, element by
element (curves on a grid that is the same for every seed). ``ood.<set>.total`` and ``ood.<set>.epistemic``
are means too; ``calibration_curve`` pools the seeds' bins; every other key is the first seed's."""

SUMMARY_METRICS = ("accuracy", "nll", "brier", "ece", "aurc")
"""The ``metrics`` keys that get a ``summary`` entry (mean, standard error, n)."""

_OOD_KINDS = ("total", "epistemic")
_OOD_SCORES = ("auroc", "aupr", "fpr95")


def _defined(value: Any) -> float | None:
    """``value`` as a float, or None for null or NaN (undefined)."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _check_values(values: Any, name: str) -> list[float | None]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{name}: expected a sequence of numbers (one per seed), got {type(values).__name__}")
    for value in values:
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise TypeError(f"{name}: expected numbers or None, got {type(value).__name__} {value!r}")
    return [_defined(value) for value in values]


def mean_and_standard_error(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean and standard error of the mean of one number over seeds.

    ``se = s / sqrt(n)``, ``s`` the sample standard deviation (divisor ``n - 1``). A value that is undefined
    (None or NaN) for any seed makes the mean undefined too: an undefined number is not averaged away.

    Args:
        values: one value per seed.

    Returns:
        ``{"mean": m, "se": se, "n": n}``; ``mean`` None if any value is undefined or there is none, ``se``
        None unless ``mean`` is defined and ``n >= 2``.
    """
    numbers = _check_values(values, "values")
    n = len(numbers)
    if n == 0 or any(value is None for value in numbers):
        return {"mean": None, "se": None, "n": n}
    mean = math.fsum(numbers) / n
    if n < 2:
        return {"mean": mean, "se": None, "n": n}
    variance = math.fsum((value - mean) ** 2 for value in numbers) / (n - 1)
    return {"mean": mean, "se": math.sqrt(variance / n), "n": n}


def student_t_two_sided_p(t: float, df: int) -> float:
    """Two-sided tail probability ``P(|T| >= |t|)`` of Student's t with ``df`` degrees of freedom.

    ``1 - A(t | df)`` with the closed forms of Abramowitz & Stegun (1964), ``theta = atan(|t| / sqrt(df))``:
    eq. 26.7.3 (odd ``df``): ``A = 2/pi (theta + sin(theta) (cos(theta) + 2/3 cos^3(theta) + ... +
    (2 4 ... (df-3)) / (1 3 ... (df-2)) cos^(df-2)(theta)))``, ``A = 2 theta / pi`` for ``df = 1``;
    eq. 26.7.4 (even ``df``): ``A = sin(theta) (1 + 1/2 cos^2(theta) + ... + (1 3 ... (df-3)) / (2 4 ...
    (df-2)) cos^(df-2)(theta))``.

    Args:
        t: the t statistic (``inf`` allowed: p = 0).
        df: degrees of freedom, a positive integer.

    Returns:
        The p-value in ``[0, 1]``.
    """
    if isinstance(df, bool) or not isinstance(df, int) or df < 1:
        raise ValueError(f"df: expected a positive integer, got {df!r}")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or math.isnan(t):
        raise ValueError(f"t: expected a number (not NaN), got {t!r}")
    theta = math.atan(abs(t) / math.sqrt(df)) if math.isfinite(t) else math.pi / 2
    cos2, sin = math.cos(theta) ** 2, math.sin(theta)
    if df % 2 == 1:
        term, series = math.cos(theta), 0.0
        for k in range(1, (df - 1) // 2 + 1):  # (df - 1) / 2 terms: cos, 2/3 cos^3, ..., up to cos^(df-2)
            series += term
            term *= cos2 * (2 * k) / (2 * k + 1)
        probability_inside = 2.0 / math.pi * (theta + sin * series)
    else:
        term, series = 1.0, 0.0
        for k in range(1, df // 2 + 1):  # df / 2 terms: 1, 1/2 cos^2, ..., up to cos^(df-2)
            series += term
            term *= cos2 * (2 * k - 1) / (2 * k)
        probability_inside = sin * series
    return min(1.0, max(0.0, 1.0 - probability_inside))


def paired_t_test(a: Sequence[float | None], b: Sequence[float | None]) -> tuple[float, float] | None:
    """Paired two-sided t-test of ``a`` against ``b`` over the same seeds (see the module docstring).

    Args:
        a: one value per seed for the first method.
        b: the second method's values for the same seeds, in the same order.

    Returns:
        ``(t, p)``; ``None`` when the test is undefined: fewer than 2 seeds, or an undefined value. Equal
        pairs on every seed (all differences 0) give ``(0.0, 1.0)``; constant non-zero differences (no spread)
        give ``(±inf, 0.0)``.
    """
    first, second = _check_values(a, "a"), _check_values(b, "b")
    if len(first) != len(second):
        raise ValueError(f"a, b: expected one value per seed in each, got {len(first)} and {len(second)}")
    if len(first) < 2 or any(value is None for value in [*first, *second]):
        return None
    differences = [x - y for x, y in zip(first, second, strict=True)]
    summary = mean_and_standard_error(differences)
    mean, se = summary["mean"], summary["se"]
    if se == 0.0:
        return (0.0, 1.0) if mean == 0.0 else (math.copysign(math.inf, mean), 0.0)
    t = mean / se
    return t, student_t_two_sided_p(t, len(differences) - 1)


def _mean(values: list[Any], path: str) -> Any:
    """The element-by-element mean of equally shaped JSON values (one per seed).

    Numbers: the mean (an int when every seed has the same int; None if any is undefined). Objects and
    lists: recursively, key by key or item by item (the same keys and lengths are required). Strings,
    booleans and nulls: the first seed's.
    """
    first = values[0]
    if isinstance(first, dict):
        keys = list(first)
        for value in values[1:]:
            if not isinstance(value, dict) or list(value) != keys:
                raise ValueError(f"{path}: expected the same keys for every seed, got {keys} and {value}")
        return {key: _mean([value[key] for value in values], f"{path}.{key}") for key in keys}
    if isinstance(first, list):
        if any(not isinstance(value, list) or len(value) != len(first) for value in values):
            lengths = [len(value) if isinstance(value, list) else None for value in values]
            raise ValueError(f"{path}: expected lists of one length for every seed, got lengths {lengths}")
        return [_mean([value[index] for value in values], f"{path}[{index}]") for index in range(len(first))]
    if isinstance(first, bool) or not isinstance(first, (int, float)):
        return first
    if all(isinstance(v, int) and not isinstance(v, bool) and v == first for v in values):
        return first
    return mean_and_standard_error(values)["mean"]


def _pooled_calibration_curve(curves: list[Mapping[str, Any]], path: str) -> dict[str, Any]:
    """The reliability diagram of all seeds' test predictions together: per bin, counts summed and the
    confidence and accuracy averaged with the seeds' counts as weights (null for a bin empty in all seeds)."""
    pooled = {key: list(curves[0][key]) for key in ("bin_lower", "bin_upper")}
    for curve in curves[1:]:
        if curve["bin_lower"] != pooled["bin_lower"] or curve["bin_upper"] != pooled["bin_upper"]:
            raise ValueError(f"{path}: expected the same confidence bins for every seed")
    counts = [math.fsum(curve["count"][i] for curve in curves) for i in range(len(pooled["bin_lower"]))]
    pooled["count"] = [int(count) if float(count).is_integer() else count for count in counts]
    for key in ("confidence", "accuracy"):
        pooled[key] = [
            math.fsum(curve["count"][i] * curve[key][i] for curve in curves if curve["count"][i]) / total
            if total
            else None
            for i, total in enumerate(counts)
        ]
    return pooled


def _summary(blocks: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean, standard error and n of the leaderboard's numbers, keyed by their key path in a block:
    ``metrics.<name>``, ``ood.<set>.<total|epistemic>.<auroc|aupr|fpr95>``, ``train_time_s``,
    ``inference_ms_per_example``."""
    paths = [("metrics", name) for name in SUMMARY_METRICS]
    paths += [
        ("ood", name, kind, score)
        for name in blocks[0]["ood"]
        for kind in _OOD_KINDS
        for score in _OOD_SCORES
    ]
    paths += [("train_time_s",), ("inference_ms_per_example",)]

    def read(block: Mapping[str, Any], path: tuple[str, ...]) -> Any:
        for key in path:
            block = block[key]
        return block

    return {
        ".".join(path): mean_and_standard_error([read(block, path) for block in blocks]) for path in paths
    }


def aggregate_seed_blocks(blocks: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """The ``results.json`` block of a method run over several seeds.

    Every key of a one-seed block keeps its meaning, so readers of a one-seed file read this one unchanged:
    :data:`MEAN_KEYS` and ``ood.<set>.total`` / ``ood.<set>.epistemic`` hold means over seeds (element by
    element along their curves), ``calibration_curve`` the seeds' bins pooled (counts summed, confidence and
    accuracy weighted by the counts), and every other key (the per-input OOD ``scores``, the uncertainty
    ``surface``, ``history``, ``selected_epochs``, ``details``, ...) is the first seed's. Added keys:

    * ``seeds``: ``{"<seed>": <that seed's full block>}``, in run order;
    * ``summary``: ``{"<key path>": {"mean", "se", "n"}}`` (:func:`mean_and_standard_error`) for
      ``metrics.<name>`` (:data:`SUMMARY_METRICS`), ``ood.<set>.<total|epistemic>.<auroc|aupr|fpr95>``,
      ``train_time_s`` and ``inference_ms_per_example``, e.g. ``summary["metrics.nll"]["se"]``.

    Args:
        blocks: seed -> that seed's result block (as ``evaluate_method`` and the runner write it), in run
            order; at least two.

    Returns:
        The aggregated block.
    """
    if not isinstance(blocks, Mapping) or len(blocks) < 2:
        raise ValueError(
            f"blocks: expected a mapping seed -> result block with at least 2 seeds, got {blocks!r}"[:200]
        )
    seeds = list(blocks)
    if any(isinstance(seed, bool) or not isinstance(seed, int) for seed in seeds):
        raise TypeError(f"blocks: expected int seeds as keys, got {seeds}")
    ordered = [blocks[seed] for seed in seeds]
    aggregated = dict(ordered[0])
    for key in MEAN_KEYS:
        if key in aggregated and aggregated[key] is not None:
            aggregated[key] = _mean([block[key] for block in ordered], key)
    aggregated["ood"] = {
        name: {
            **first,
            **{
                kind: _mean([block["ood"][name][kind] for block in ordered], f"ood.{name}.{kind}")
                for kind in _OOD_KINDS
            },
        }
        for name, first in ordered[0]["ood"].items()
    }
    aggregated["calibration_curve"] = _pooled_calibration_curve(
        [block["calibration_curve"] for block in ordered], "calibration_curve"
    )
    aggregated["seeds"] = {str(seed): dict(block) for seed, block in zip(seeds, ordered, strict=True)}
    aggregated["summary"] = _summary(ordered)
    return aggregated
