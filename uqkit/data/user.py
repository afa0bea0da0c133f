"""Your own data for ``uqkit bench --data PATH``: an ``.npz``, a CSV table or a folder of images.

Every file is read and checked before anything is trained; a problem is a :class:`UserDataError` whose
message names the file and what is wrong with it ("data.npz: y_train has 120 rows but x_train has 100").

Formats and conventions:

* **.npz** (:func:`read_npz`): arrays ``x_train, y_train, x_test, y_test``; optional ``x_val, y_val`` (both
  or neither) and ``x_ood`` (inputs of an out-of-distribution set). Inputs are numbers, one row per example,
  any shape per example (``[N, D]`` tables, ``[N, C, H, W]`` images, ...), the same in every array.
* **CSV** (:func:`read_csv`): a header row, then one example per line; ``target`` names the target column,
  every other column is a numeric feature. The test set is :data:`TEST_FRACTION` of the rows, drawn with
  the seed. ``ood``: a CSV of OOD inputs with the same feature columns (a target column there is ignored).
* **folder of images** (:func:`read_image_folder`, read with Pillow): one sub-folder per class, class
  names sorted to give label indices 0, 1, ...; either ``PATH/<class>/*`` (the test set is
  :data:`TEST_FRACTION` of the images, drawn with the seed) or ``PATH/train/<class>/*`` and
  ``PATH/test/<class>/*`` (optional ``PATH/val/<class>/*``). Images become ``[C, H, W]`` floats in
  ``[0, 1]``: one channel when every image is grey-scale, else RGB (alpha dropped); all of one size.
  ``ood``: a folder of images (searched recursively), converted the same way.

Targets are returned as read (numbers, or text for a CSV's class names); :func:`class_labels` and
:func:`regression_targets` turn them into class indices or real-valued targets and check them.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "IMAGE_SUFFIXES",
    "REQUIRED_ARRAYS",
    "TEST_FRACTION",
    "UserData",
    "UserDataError",
    "class_labels",
    "held_out_rows",
    "infer_kind",
    "read_csv",
    "read_image_folder",
    "read_npz",
    "regression_targets",
]

REQUIRED_ARRAYS = ("x_train", "y_train", "x_test", "y_test")
OPTIONAL_ARRAYS = ("x_val", "y_val", "x_ood")
TEST_FRACTION = 0.2
"""Fraction of the rows (CSV) or images (a folder without ``train/`` and ``test/``) held out for testing."""
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


class UserDataError(ValueError):
    """A data file that cannot be used as it is; the message names the file and the problem."""


@dataclass(frozen=True, eq=False)
class UserData:
    """The splits of a user's data set as read, before labels are resolved and inputs standardised.

    Attributes:
        source: the path given.
        layout: one line on where the splits came from (given, or drawn with the seed).
        x_train, x_test: ``[N, ...]`` float32 inputs.
        y_train, y_test: targets as read: numbers (``[N]`` or ``[N, D]``) or text.
        x_val, y_val: a validation split when the data gives one, else ``None``.
        x_ood: OOD inputs, or ``None``.
        ood_source: where the OOD inputs came from ("" without any).
        class_names: the class of each label index when the labels were given as names (image folders),
            else ``None`` (:func:`class_labels` names CSV classes).
    """

    source: str
    layout: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    x_ood: np.ndarray | None = None
    ood_source: str = ""
    class_names: tuple[str, ...] | None = None


# ---------------------------------------------------------------------------------------------------------
# checks shared by every format
# ---------------------------------------------------------------------------------------------------------
def _check_finite(source: str, name: str, values: np.ndarray) -> None:
    if values.dtype.kind not in "fc":
        return
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise UserDataError(
            f"{source}: {name} has {int(bad.sum())} NaN or infinite values (the first in row {row}); "
            "remove or fill them"
        )


def _numeric(source: str, name: str, values: np.ndarray) -> np.ndarray:
    if values.dtype.kind not in "biuf":
        raise UserDataError(f"{source}: {name} must hold numbers, got dtype {values.dtype}")
    _check_finite(source, name, values)
    return values


def _check_splits(source: str, arrays: dict[str, np.ndarray]) -> None:
    """Inputs and targets of each split pair up; every input array has the training inputs' row shape."""
    for split in ("train", "val", "test"):
        x, y = arrays.get(f"x_{split}"), arrays.get(f"y_{split}")
        if x is None:
            continue
        if x.ndim == 0 or y.ndim == 0:
            raise UserDataError(f"{source}: x_{split} and y_{split} must have one row per example")
        if len(y) != len(x):
            raise UserDataError(f"{source}: y_{split} has {len(y)} rows but x_{split} has {len(x)}")
        if len(x) == 0:
            raise UserDataError(f"{source}: x_{split} has no rows")
    shape = arrays["x_train"].shape[1:]
    for name, x in arrays.items():
        if name.startswith("x_") and x.shape[1:] != shape:
            raise UserDataError(
                f"{source}: {name} has rows of shape {list(x.shape[1:])}, but x_train has {list(shape)}"
            )
        if name.startswith("y_") and x.shape[1:] != arrays["y_train"].shape[1:]:
            raise UserDataError(
                f"{source}: {name} has rows of shape {list(x.shape[1:])}, but y_train has "
                f"{list(arrays['y_train'].shape[1:])}"
            )


def held_out_rows(num_rows: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(kept, held_out)`` row indices: ``round(fraction * num_rows)`` rows (at least one) drawn by
    ``torch.randperm`` with a generator seeded by ``seed``, as :func:`uqkit.data.train_val_split` draws
    them; each part in the original order."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(num_rows, generator=generator)
    count = max(1, round(fraction * num_rows))
    return order[count:].sort().values, order[:count].sort().values


def _split(source: str, what: str, x: np.ndarray, y: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    if len(x) < 5:
        raise UserDataError(
            f"{source}: {len(x)} {what} are too few to hold out a test set and a validation set; "
            "give at least 5"
        )
    kept, held = held_out_rows(len(x), TEST_FRACTION, seed)
    return {"x_train": x[kept], "y_train": y[kept], "x_test": x[held], "y_test": y[held]}


# ---------------------------------------------------------------------------------------------------------
# .npz
# ---------------------------------------------------------------------------------------------------------
def read_npz(path: str | Path) -> UserData:
    """Read an ``.npz`` with ``x_train, y_train, x_test, y_test`` (optional ``x_val, y_val``, ``x_ood``).

    Raises:
        UserDataError: unreadable file, a missing or unknown key, an ``x_val`` without ``y_val``, arrays whose
            rows do not pair up or differ in shape, non-numeric or non-finite values.
    """
    source = str(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except FileNotFoundError:
        raise UserDataError(f"{source}: no such file") from None
    except (OSError, ValueError) as error:
        raise UserDataError(f"{source}: not a readable .npz file ({error})") from None
    expected = ", ".join(REQUIRED_ARRAYS) + "; optional " + ", ".join(OPTIONAL_ARRAYS)
    missing = [name for name in REQUIRED_ARRAYS if name not in arrays]
    if missing:
        raise UserDataError(f"{source}: missing key {', '.join(map(repr, missing))} (expected {expected})")
    unknown = sorted(set(arrays) - set(REQUIRED_ARRAYS) - set(OPTIONAL_ARRAYS))
    if unknown:
        raise UserDataError(f"{source}: unknown key {', '.join(map(repr, unknown))} (expected {expected})")
    if ("x_val" in arrays) != ("y_val" in arrays):
        have, lack = ("x_val", "y_val") if "x_val" in arrays else ("y_val", "x_val")
        raise UserDataError(f"{source}: has {have} but no {lack}; give both or neither")
    for name, values in arrays.items():
        if name.startswith("x_"):
            arrays[name] = _numeric(source, name, values).astype(np.float32)
        elif values.dtype.kind not in "US":
            arrays[name] = _numeric(source, name, values)
    ood = arrays.pop("x_ood", None)
    _check_splits(source, arrays)
    if ood is not None and ood.shape[1:] != arrays["x_train"].shape[1:]:
        raise UserDataError(
            f"{source}: x_ood has rows of shape {list(ood.shape[1:])}, but x_train has "
            f"{list(arrays['x_train'].shape[1:])}"
        )
    layout = "train/test" + ("/validation" if "x_val" in arrays else "") + " splits as given"
    return UserData(
        source,
        layout,
        arrays["x_train"],
        arrays["y_train"],
        arrays["x_test"],
        arrays["y_test"],
        arrays.get("x_val"),
        arrays.get("y_val"),
        ood,
        f"{source}: x_ood" if ood is not None else "",
    )


# ---------------------------------------------------------------------------------------------------------
# CSV
# ---------------------------------------------------------------------------------------------------------
def _read_table(path: str | Path) -> tuple[list[str], list[list[str]]]:
    source = str(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = [row for row in csv.reader(handle) if any(cell.strip() for cell in row)]
    except FileNotFoundError:
        raise UserDataError(f"{source}: no such file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise UserDataError(f"{source}: not a readable CSV file ({error})") from None
    if len(rows) < 2:
        raise UserDataError(
            f"{source}: expected a header row and at least one data row, got {len(rows)} rows"
        )
    header = [name.strip() for name in rows[0]]
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise UserDataError(
                f"{source}: data row {number - 1} has {len(row)} fields, the header has {len(header)}"
            )
    return header, rows[1:]


def _number(source: str, column: str, row: int, cell: str) -> float:
    text = cell.strip()
    if not text:
        raise UserDataError(
            f"{source}: column {column!r}, data row {row} is empty (no missing values allowed)"
        )
    try:
        value = float(text)
    except ValueError:
        raise UserDataError(
            f"{source}: column {column!r}, data row {row} holds {text!r}, not a number (only the target "
            "column may hold text)"
        ) from None
    if not math.isfinite(value):
        raise UserDataError(
            f"{source}: column {column!r}, data row {row} holds {text!r}, a NaN or infinite value"
        )
    return value


def _features(source: str, header: list[str], rows: list[list[str]], columns: Sequence[str]) -> np.ndarray:
    index = [header.index(column) for column in columns]
    return np.array(
        [[_number(source, header[i], number, row[i]) for i in index] for number, row in enumerate(rows, 1)],
        dtype=np.float32,
    ).reshape(len(rows), len(index))


def read_csv(path: str | Path, target: str, ood: str | Path | None = None, seed: int = 0) -> UserData:
    """Read a CSV table with a header row; ``target`` is the target column, every other one a feature.

    The test set is :data:`TEST_FRACTION` of the rows, drawn with ``seed`` (:func:`held_out_rows`).

    Args:
        path: the CSV file.
        target: the name of the target column (numbers, or text class names).
        ood: optional CSV of OOD inputs with the same feature columns (a target column is ignored).
        seed: seed of the test split.

    Raises:
        UserDataError: naming the file, the column and the data row of any problem.
    """
    source = str(path)
    header, rows = _read_table(path)
    if target not in header:
        shown = ", ".join(map(repr, header[:12])) + (", ..." if len(header) > 12 else "")
        raise UserDataError(f"{source}: no column {target!r} (--target); its columns are {shown}")
    if len(set(header)) != len(header):
        twice = sorted({name for name in header if header.count(name) > 1})
        raise UserDataError(f"{source}: column names must be unique, {', '.join(map(repr, twice))} repeat")
    columns = [name for name in header if name != target]
    if not columns:
        raise UserDataError(f"{source}: no feature column besides the target {target!r}")
    x = _features(source, header, rows, columns)
    position = header.index(target)
    cells = [row[position].strip() for row in rows]
    empty = next((number for number, cell in enumerate(cells, 1) if not cell), None)
    if empty is not None:
        raise UserDataError(
            f"{source}: column {target!r}, data row {empty} is empty (no missing values allowed)"
        )
    try:
        y: np.ndarray = np.array([float(cell) for cell in cells])
    except ValueError:
        y = np.array(cells)
    else:
        _check_finite(source, f"column {target!r}", y)
    splits = _split(source, "rows", x, y, seed)
    x_ood, ood_source = None, ""
    if ood is not None:
        ood_header, ood_rows = _read_table(ood)
        missing = [column for column in columns if column not in ood_header]
        if missing:
            raise UserDataError(
                f"{ood}: missing feature column {', '.join(map(repr, missing[:5]))} of {source} (--ood needs "
                "the same feature columns)"
            )
        x_ood, ood_source = _features(str(ood), ood_header, ood_rows, columns), str(ood)
    layout = f"test set: {TEST_FRACTION:.0%} of the rows, drawn with the seed"
    return UserData(source, layout, **splits, x_ood=x_ood, ood_source=ood_source)


# ---------------------------------------------------------------------------------------------------------
# folder of images
# ---------------------------------------------------------------------------------------------------------
def _image_files(folder: Path, recursive: bool = False) -> list[Path]:
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        path
        for path in found
        if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES
    )


def _class_folders(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.is_dir() and not path.name.startswith("."))


def _open_images(files: Sequence[Path]) -> list:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as error:  # pragma: no cover - the bench and dev extras install Pillow
        raise ImportError("reading a folder of images needs Pillow: pip install 'uqkit[bench]'") from error

    images = []
    for path in files:
        try:
            with Image.open(path) as image:
                image.load()
                images.append(image.copy())
        except (OSError, UnidentifiedImageError, ValueError) as error:
            raise UserDataError(f"{path}: not an image Pillow can read ({error})") from None
    return images


class _ImageConverter:
    """Turns Pillow images into ``[C, H, W]`` float32 arrays in ``[0, 1]`` of one size and mode."""

    def __init__(self, mode: str, size: tuple[int, int], reference: Path) -> None:
        self.mode, self.size, self.reference = mode, size, reference

    def __call__(self, images: Sequence, files: Sequence[Path]) -> np.ndarray:
        arrays = []
        for image, path in zip(images, files, strict=True):
            if image.size != self.size:
                raise UserDataError(
                    f"{path}: is {image.size[0]}x{image.size[1]} pixels, but {self.reference} is "
                    f"{self.size[0]}x{self.size[1]}; all images must have one size"
                )
            array = np.asarray(image.convert(self.mode), dtype=np.float32) / 255.0
            arrays.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
        return np.stack(arrays)


def _read_classes(
    folder: Path, classes: Sequence[str] | None
) -> tuple[list, list[Path], np.ndarray, list[str]]:
    """Images and label indices of ``folder/<class>/*``; ``classes`` fixes the names (test, val folders)."""
    found = _class_folders(folder)
    names = [path.name for path in found]
    if classes is None:
        if len(names) < 2:
            raise UserDataError(
                f"{folder}: expected one sub-folder of images per class (at least 2 classes), found "
                f"{len(names)} sub-folder{'s' if len(names) != 1 else ''}"
            )
        classes = names
    images, files, labels = [], [], []
    for path in found:
        if path.name not in classes:
            raise UserDataError(
                f"{path}: class {path.name!r} has no folder among the training classes {list(classes)}"
            )
        class_files = _image_files(path)
        if not class_files:
            raise UserDataError(f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)})")
        images += _open_images(class_files)
        files += class_files
        labels += [list(classes).index(path.name)] * len(class_files)
    return images, files, np.array(labels, dtype=np.int64), list(classes)


def read_image_folder(path: str | Path, ood: str | Path | None = None, seed: int = 0) -> UserData:
    """Read a folder with one sub-folder of images per class (class names sorted: label indices).

    Layouts: ``PATH/<class>/*`` (test set: :data:`TEST_FRACTION` of the images, drawn with ``seed``), or
    ``PATH/train/<class>/*`` with ``PATH/test/<class>/*`` and optionally ``PATH/val/<class>/*``. Images are
    read with Pillow into ``[C, H, W]`` float32 in ``[0, 1]``: one channel when every image (OOD ones
    included) is grey-scale, else three (RGB; alpha dropped).

    Args:
        path: the folder.
        ood: optional folder of OOD images (searched recursively), of the same size.
        seed: seed of the test split (first layout).

    Raises:
        UserDataError: naming the folder or image file of any problem (too few classes, an empty class
            folder, a file Pillow cannot read, images of different sizes, a test class unknown in training).
    """
    root = Path(path)
    if not root.is_dir():
        raise UserDataError(f"{root}: no such folder")
    split_names = [name for name in ("train", "val", "test") if (root / name).is_dir()]
    groups: dict[str, tuple[list, list[Path], np.ndarray]] = {}
    if split_names:
        if "train" not in split_names or "test" not in split_names:
            raise UserDataError(
                f"{root}: has {'/, '.join(split_names)}/ but not both train/ and test/ (layouts: "
                f"{root}/<class>/*, or {root}/train/<class>/* with {root}/test/<class>/*)"
            )
        images, files, labels, classes = _read_classes(root / "train", None)
        groups["train"] = (images, files, labels)
        for name in split_names[1:]:
            images, files, labels, _ = _read_classes(root / name, classes)
            groups[name] = (images, files, labels)
        layout = "train/" + ("val/" if "val" in split_names else "") + "test/ folders as given"
    else:
        images, files, labels, classes = _read_classes(root, None)
        groups["all"] = (images, files, labels)
        layout = f"test set: {TEST_FRACTION:.0%} of the images, drawn with the seed"
    ood_images, ood_files = [], []
    if ood is not None:
        ood_root = Path(ood)
        if not ood_root.is_dir():
            raise UserDataError(f"{ood_root}: no such folder (--ood with image data is a folder of images)")
        ood_files = _image_files(ood_root, recursive=True)
        if not ood_files:
            raise UserDataError(f"{ood_root}: no image files ({', '.join(IMAGE_SUFFIXES)})")
        ood_images = _open_images(ood_files)
    every = [image for images, _, _ in groups.values() for image in images] + ood_images
    grey = all(image.mode in _GREY_MODES for image in every)
    first_images, first_files, _ = next(iter(groups.values()))
    convert = _ImageConverter("L" if grey else "RGB", first_images[0].size, first_files[0])
    arrays = {name: (convert(images, files), labels) for name, (images, files, labels) in groups.items()}
    if "all" in arrays:
        x, y = arrays.pop("all")
        splits = _split(str(root), "images", x, y, seed)
    else:
        splits = {f"{k}_{name}": v for name, (x, y) in arrays.items() for k, v in (("x", x), ("y", y))}
    x_ood = convert(ood_images, ood_files) if ood is not None else None
    return UserData(
        str(root),
        layout,
        **splits,
        x_ood=x_ood,
        ood_source=str(ood) if ood is not None else "",
        class_names=tuple(classes),
    )


# ---------------------------------------------------------------------------------------------------------
# targets: classification labels or regression values
# ---------------------------------------------------------------------------------------------------------
def _is_text(values: np.ndarray) -> bool:
    return values.dtype.kind in "US"


def infer_kind(data: UserData) -> str:
    """``"classification"`` for text or integer-valued targets of one column, else ``"regression"``."""
    y = data.y_train
    if _is_text(y) or data.class_names is not None:
        return "classification"
    if y.ndim > 2 or (y.ndim == 2 and y.shape[1] != 1):
        return "regression"
    if y.dtype.kind in "biu" or bool(np.all(np.equal(np.mod(y, 1), 0))):
        return "classification"
    return "regression"


def _one_column(source: str, name: str, values: np.ndarray) -> np.ndarray:
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1:
        raise UserDataError(
            f"{source}: {name} has rows of shape {list(values.shape[1:])}; classification needs one label "
            "per example"
        )
    return values


def class_labels(data: UserData) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    """Class indices of every split and the class names.

    * Folder classes are indices already (:attr:`UserData.class_names`).
    * A CSV's target values (text or numbers) are the classes, sorted; each split's values index them.
    * An ``.npz``'s numeric labels are class indices ``0 .. C - 1``, ``C = max(y_train) + 1``; a negative or
      non-integer label, or a test or validation label ``>= C``, is out of range.

    Returns:
        ``({"train": [N], "test": [N'], "val": [N''] (when given)}, class names)``.

    Raises:
        UserDataError: a label out of range, non-integer numeric labels, fewer than two classes.
    """
    source = data.source
    splits = {name: getattr(data, f"y_{name}") for name in ("train", "val", "test")}
    splits = {name: _one_column(source, f"y_{name}", y) for name, y in splits.items() if y is not None}
    if data.class_names is not None:
        return {name: torch.as_tensor(y, dtype=torch.long) for name, y in splits.items()}, data.class_names
    csv_file = source.lower().endswith(".csv")
    if csv_file or any(_is_text(y) for y in splits.values()):
        values = sorted(
            set().union(*(set(y.tolist()) for y in splits.values())), key=lambda v: (str(type(v)), v)
        )
        names = tuple(f"{v:g}" if isinstance(v, float) else str(v) for v in values)
        if not csv_file and not all(_is_text(y) for y in splits.values()):
            raise UserDataError(f"{source}: labels must be all numbers or all text in every split")
        if csv_file and not _is_text(splits["train"]):
            _integer_labels(source, "the target column", splits["train"])
        index = {value: i for i, value in enumerate(values)}
        labels = {
            name: torch.tensor([index[v] for v in y.tolist()], dtype=torch.long) for name, y in splits.items()
        }
    else:
        for name, y in splits.items():
            _integer_labels(source, f"y_{name}", y)
        num_classes = int(splits["train"].max()) + 1
        for name, y in splits.items():
            low, high = int(y.min()), int(y.max())
            if low < 0 or high >= num_classes:
                raise UserDataError(
                    f"{source}: y_{name} has labels in [{low}, {high}], out of range: class indices must be "
                    f"in [0, {num_classes - 1}] (y_train's largest label is {num_classes - 1})"
                )
        labels = {name: torch.as_tensor(y.astype(np.int64)) for name, y in splits.items()}
        names = tuple(str(c) for c in range(num_classes))
    if len(names) < 2:
        raise UserDataError(
            f"{source}: classification needs at least 2 classes, the labels hold {len(names)}"
        )
    return labels, names


def _integer_labels(source: str, name: str, values: np.ndarray) -> None:
    if values.dtype.kind in "biu":
        return
    fractional = np.flatnonzero(np.mod(values, 1) != 0)
    if fractional.size:
        row = int(fractional[0])
        raise UserDataError(
            f"{source}: {name} holds {values[row]:g} (row {row}), not an integer class label; for "
            "real-valued targets pass --kind regression"
        )


def regression_targets(data: UserData) -> dict[str, torch.Tensor]:
    """``[N, D]`` float targets of every split (``[N]`` targets become ``[N, 1]``).

    Raises:
        UserDataError: text targets, or a target that is constant over the training split.
    """
    out = {}
    for name in ("train", "val", "test"):
        y = getattr(data, f"y_{name}")
        if y is None:
            continue
        if _is_text(y) or data.class_names is not None:
            raise UserDataError(
                f"{data.source}: regression needs numeric targets; y_{name} holds class names"
            )
        out[name] = torch.as_tensor(np.asarray(y, dtype=np.float32).reshape(len(y), -1))
    if bool((out["train"].std(dim=0) == 0).any()):
        raise UserDataError(f"{data.source}: a regression target is constant over the training split")
    return out
