"""uqkit.data.user: the user's .npz, CSV and image folders are read as given, and every problem is named."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from uqkit.data.user import (
    TEST_FRACTION,
    UserDataError,
    class_labels,
    held_out_rows,
    infer_kind,
    read_csv,
    read_image_folder,
    read_npz,
    regression_targets,
)


def _arrays(rows: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    half = rows // 2
    return {"x_train": x[:half], "y_train": y[:half], "x_test": x[half:], "y_test": y[half:]}


def _npz(tmp_path: Path, **arrays) -> Path:
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return path


def _write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_npz_is_read_as_given(tmp_path):
    arrays = _arrays()
    arrays["x_ood"] = np.full((4, 3), 9.0)
    data = read_npz(_npz(tmp_path, **arrays))
    np.testing.assert_array_equal(data.x_train, arrays["x_train"])
    np.testing.assert_array_equal(data.y_test, arrays["y_test"])
    assert data.x_train.dtype == np.float32 and data.x_val is None
    np.testing.assert_array_equal(data.x_ood, arrays["x_ood"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda a: a.pop("y_test"),
            "data.npz: missing key 'y_test' (expected x_train, y_train, x_test, y_test",
        ),
        (lambda a: a.update(y_train=a["y_train"][:-1]), "data.npz: y_train has 9 rows but x_train has 10"),
        (lambda a: a.update(x_test=a["x_test"][:, :2]), "x_test has rows of shape [2], but x_train has [3]"),
        (lambda a: a.update(x_val=a["x_train"]), "data.npz: has x_val but no y_val"),
        (lambda a: a.update(z=a["x_train"]), "data.npz: unknown key 'z'"),
        (
            lambda a: a["x_train"].__setitem__((4, 1), np.inf),
            "x_train has 1 NaN or infinite values (the first in row 4)",
        ),
        (lambda a: a.update(x_ood=np.ones((3, 5))), "x_ood has rows of shape [5], but x_train has [3]"),
    ],
)
def test_npz_problems_name_the_file_and_the_problem(tmp_path, change, message):
    arrays = _arrays()
    change(arrays)
    with pytest.raises(UserDataError) as error:
        read_npz(_npz(tmp_path, **arrays))
    assert message in str(error.value)


def test_npz_that_is_not_an_npz(tmp_path):
    path = tmp_path / "data.npz"
    path.write_text("hello")
    with pytest.raises(UserDataError, match=r"data.npz: not a readable .npz file"):
        read_npz(path)


def test_npz_labels_are_class_indices_checked_against_training(tmp_path):
    arrays = _arrays()
    labels, names = class_labels(read_npz(_npz(tmp_path, **arrays)))
    assert names == ("0", "1")
    assert torch.equal(labels["test"], torch.as_tensor(arrays["y_test"]))
    arrays["y_test"] = arrays["y_test"].copy()
    arrays["y_test"][3] = 2  # class 2 never appears in training: out of range
    with pytest.raises(
        UserDataError, match=r"y_test has labels in \[0, 2\], out of range: class indices must be in \[0, 1\]"
    ):
        class_labels(read_npz(_npz(tmp_path, **arrays)))
    arrays = _arrays()
    arrays["y_train"] = arrays["y_train"] - 1
    with pytest.raises(UserDataError, match=r"y_train has labels in \[-1, 0\], out of range"):
        class_labels(read_npz(_npz(tmp_path, **arrays)))


def test_kind_is_inferred_from_the_targets(tmp_path):
    arrays = _arrays()
    assert infer_kind(read_npz(_npz(tmp_path, **arrays))) == "classification"
    arrays["y_train"] = arrays["y_train"].astype(np.float64)  # 0.0 / 1.0: still integer labels
    assert infer_kind(read_npz(_npz(tmp_path, **arrays))) == "classification"
    arrays["y_train"] = arrays["x_train"][:, 0] * 1.5  # real values
    data = read_npz(_npz(tmp_path, **arrays))
    assert infer_kind(data) == "regression"
    with pytest.raises(
        UserDataError, match=r"y_train holds .* not an integer class label; .*--kind regression"
    ):
        class_labels(data)
    targets = regression_targets(data)
    assert targets["train"].shape == (10, 1) and targets["train"].dtype == torch.float32


def test_constant_regression_target_is_refused(tmp_path):
    arrays = _arrays()
    arrays["y_train"] = np.full(10, 2.5)
    with pytest.raises(UserDataError, match="constant over the training split"):
        regression_targets(read_npz(_npz(tmp_path, **arrays)))


def test_held_out_rows_are_seeded_disjoint_and_cover_everything():
    kept, held = held_out_rows(50, 0.2, seed=3)
    assert len(held) == 10 and len(kept) == 40
    assert sorted(torch.cat([kept, held]).tolist()) == list(range(50))
    _, again_held = held_out_rows(50, 0.2, seed=3)
    assert torch.equal(held, again_held) and not torch.equal(held, held_out_rows(50, 0.2, seed=4)[1])


def test_csv_text_classes_are_sorted_and_the_test_split_is_seeded(tmp_path):
    rows = [[float(i), float(i % 3), ["low", "mid", "high"][i % 3]] for i in range(30)]
    path = _write_csv(tmp_path / "t.csv", ["a", "b", "label"], rows)
    data = read_csv(path, "label", seed=1)
    assert len(data.x_test) == round(TEST_FRACTION * 30) and len(data.x_train) == 24
    labels, names = class_labels(data)
    assert names == ("high", "low", "mid")
    # every row keeps its own label: feature b is i % 3, and its class name is the same row's
    index = {0.0: names.index("low"), 1.0: names.index("mid"), 2.0: names.index("high")}
    assert labels["train"].tolist() == [index[float(b)] for b in data.x_train[:, 1]]
    assert torch.equal(torch.as_tensor(read_csv(path, "label", seed=1).x_test), torch.as_tensor(data.x_test))


@pytest.mark.parametrize(
    ("rows", "target", "message"),
    [
        ([[1, 2, 0]] * 6, "y", r"t.csv: no column 'y' \(--target\); its columns are 'a', 'b', 'c'"),
        ([[1, "red", 0]] * 6, "c", r"t.csv: column 'b', data row 1 holds 'red', not a number"),
        ([[1, "", 0]] * 6, "c", r"t.csv: column 'b', data row 1 is empty"),
        ([[1, "nan", 0]] * 6, "c", r"t.csv: column 'b', data row 1 holds 'nan', a NaN or infinite value"),
        ([[1, 2]] + [[1, 2, 0]] * 5, "c", r"t.csv: data row 1 has 2 fields, the header has 3"),
        ([[1, 2, 0]] * 3, "c", r"t.csv: 3 rows are too few"),
    ],
)
def test_csv_problems_name_the_file_column_and_row(tmp_path, rows, target, message):
    path = _write_csv(tmp_path / "t.csv", ["a", "b", "c"], rows)
    with pytest.raises(UserDataError, match=message):
        read_csv(path, target)


def test_csv_ood_needs_the_same_feature_columns(tmp_path):
    path = _write_csv(tmp_path / "t.csv", ["a", "b", "c"], [[i, i, i % 2] for i in range(10)])
    ood = _write_csv(tmp_path / "ood.csv", ["b", "a"], [[5, 7]])
    data = read_csv(path, "c", ood=ood)
    np.testing.assert_array_equal(data.x_ood, [[7.0, 5.0]])  # reordered as the training features
    bad = _write_csv(tmp_path / "bad.csv", ["a"], [[5]])
    with pytest.raises(UserDataError, match=r"bad.csv: missing feature column 'b'"):
        read_csv(path, "c", ood=bad)


def _image(path: Path, value: int, size=(6, 4), mode="L") -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode == "L" else (value, 0, 255 - value)
    Image.new(mode, size, color).save(path)


def test_image_folder_classes_sorted_values_in_unit_interval(tmp_path):
    for name, value in (("zebra", 255), ("cat", 51)):
        for i in range(5):
            _image(tmp_path / "img" / name / f"{i}.png", value)
    (tmp_path / "img" / "cat" / "notes.txt").write_text("not an image: ignored")
    data = read_image_folder(tmp_path / "img", seed=0)
    assert data.class_names == ("cat", "zebra")
    assert data.x_train.shape == (8, 1, 4, 6) and len(data.x_test) == 2  # [C, H, W], 20% held out
    labels, _ = class_labels(data)
    for x, y in zip(data.x_train, labels["train"], strict=True):  # every pixel: 51/255 for cat, 1 for zebra
        np.testing.assert_allclose(x, 0.2 if int(y) == 0 else 1.0, atol=1e-6)


def test_image_folder_train_test_layout_and_rgb(tmp_path):
    for split in ("train", "test"):
        for name in ("a", "b"):
            _image(tmp_path / "img" / split / name / "0.png", 10, mode="RGB")
            _image(tmp_path / "img" / split / name / "1.png", 20)
    data = read_image_folder(tmp_path / "img")
    assert data.x_train.shape == (4, 3, 4, 6)  # one RGB image makes every image RGB
    assert "as given" in data.layout and data.x_val is None
    np.testing.assert_allclose(data.x_test[0, :, 0, 0], [10 / 255, 0, 245 / 255], atol=1e-6)


def test_image_folder_problems_name_the_file(tmp_path):
    for i in range(3):
        _image(tmp_path / "img" / "a" / f"{i}.png", 10)
        _image(tmp_path / "img" / "b" / f"{i}.png", 10)
    _image(tmp_path / "img" / "b" / "big.png", 10, size=(7, 4))
    with pytest.raises(
        UserDataError, match=r"big.png: is 7x4 pixels, but .*0.png is 6x4; all images must have one size"
    ):
        read_image_folder(tmp_path / "img")
    (tmp_path / "img" / "b" / "big.png").write_bytes(b"not a png")
    with pytest.raises(UserDataError, match=r"big.png: not an image Pillow can read"):
        read_image_folder(tmp_path / "img")
    (tmp_path / "img" / "b" / "big.png").unlink()
    (tmp_path / "img" / "c").mkdir()
    with pytest.raises(UserDataError, match=r"img/c: no image files"):
        read_image_folder(tmp_path / "img")
    with pytest.raises(UserDataError, match=r"one sub-folder of images per class \(at least 2 classes\)"):
        read_image_folder(tmp_path / "img" / "a")


def test_image_test_class_must_be_a_training_class(tmp_path):
    _image(tmp_path / "img" / "train" / "a" / "0.png", 10)
    _image(tmp_path / "img" / "train" / "b" / "0.png", 10)
    _image(tmp_path / "img" / "test" / "z" / "0.png", 10)
    with pytest.raises(UserDataError, match=r"test/z: class 'z' has no folder among the training classes"):
        read_image_folder(tmp_path / "img")
    (tmp_path / "img" / "test").rename(tmp_path / "img" / "val")
    with pytest.raises(UserDataError, match=r"not both train/ and test/"):
        read_image_folder(tmp_path / "img")
