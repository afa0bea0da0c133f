"""Tests of uqkit/data/ood.py: the digits far-OOD set and the held-out-class split."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from uqkit.data import LabeledData, digits_ood, holdout_split

sklearn_datasets = pytest.importorskip("sklearn.datasets")


@pytest.fixture(scope="module")
def sklearn_digits():
    return sklearn_datasets.load_digits()


def slow_upsample(image: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize (up or down, no antialiasing), ``align_corners=False``.

    Output pixel ``k`` reads the input at ``(k + 0.5) * in / out - 0.5``, clamped below at 0, with the last
    pixel repeated past the end.
    """
    height, width = image.shape
    out = torch.zeros(size, size, dtype=torch.float64)

    def source(k: int, length: int) -> tuple[int, int, float]:
        position = max((k + 0.5) * length / size - 0.5, 0.0)
        low = min(math.floor(position), length - 1)
        return low, min(low + 1, length - 1), position - low

    for i in range(size):
        r0, r1, fr = source(i, height)
        for j in range(size):
            c0, c1, fc = source(j, width)
            out[i, j] = (
                (1 - fr) * (1 - fc) * image[r0, c0]
                + (1 - fr) * fc * image[r0, c1]
                + fr * (1 - fc) * image[r1, c0]
                + fr * fc * image[r1, c1]
            )
    return out


def test_digits_shape_range_and_labels(sklearn_digits):
    data = digits_ood()
    assert isinstance(data, LabeledData)
    assert data.inputs.shape == (1797, 1, 28, 28) and data.inputs.dtype == torch.float32
    assert float(data.inputs.min()) == 0.0 and float(data.inputs.max()) == 1.0
    assert torch.equal(data.labels, torch.as_tensor(sklearn_digits.target, dtype=torch.long))


def test_digits_at_native_size_are_the_pixels_over_16(sklearn_digits):
    data = digits_ood(size=8)
    expected = torch.as_tensor(sklearn_digits.images, dtype=torch.float32).unsqueeze(1) / 16
    assert torch.equal(data.inputs, expected)


def test_digits_upsampling_matches_slow_bilinear_reference(sklearn_digits):
    data = digits_ood(size=28)
    for index in (0, 5, 1796):
        image = torch.as_tensor(sklearn_digits.images[index], dtype=torch.float64) / 16
        expected = slow_upsample(image, 28)
        torch.testing.assert_close(data.inputs[index, 0].double(), expected, atol=1e-6, rtol=0)


def test_digits_downsampling_is_plain_bilinear_without_antialiasing(sklearn_digits):
    data = digits_ood(size=5)
    image = torch.as_tensor(sklearn_digits.images[3], dtype=torch.float64) / 16
    torch.testing.assert_close(data.inputs[3, 0].double(), slow_upsample(image, 5), atol=1e-6, rtol=0)


def test_digits_match_a_dimmer_reference_by_one_linear_factor():
    plain = digits_ood()
    reference = torch.rand(50, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 0.4  # mean 0.2
    matched = digits_ood(reference=reference)
    assert float(matched.inputs.mean()) == pytest.approx(float(reference.mean()), abs=1e-5)
    factor = float(reference.mean()) / float(plain.inputs.double().mean())
    torch.testing.assert_close(matched.inputs, plain.inputs * factor, atol=1e-6, rtol=1e-5)


def test_digits_match_a_brighter_reference_with_clipping():
    plain = digits_ood()
    matched = digits_ood(reference=torch.full((10,), 0.6))
    assert float(matched.inputs.double().mean()) == pytest.approx(0.6, abs=1e-5)
    assert float(matched.inputs.max()) == 1.0 and float(matched.inputs.min()) == 0.0
    saturated = matched.inputs == 1.0
    assert bool(saturated.any())
    # Every pixel that did not saturate is the plain pixel times one common factor, and that factor is what
    # saturates exactly the pixels above 1 / factor.
    unsaturated = ~saturated & (plain.inputs > 0)
    ratios = matched.inputs[unsaturated].double() / plain.inputs[unsaturated].double()
    factor = float(ratios.mean())
    assert float((ratios - factor).abs().max()) < 1e-5 * factor
    assert factor > 0.6 / float(plain.inputs.mean())  # clipping forces a larger factor than the linear one
    assert bool((plain.inputs[saturated] * factor >= 1.0 - 1e-5).all())


def test_digits_unreachable_reference_mean():
    nonzero = float((digits_ood().inputs > 0).float().mean())
    with pytest.raises(ValueError, match=r"cannot be matched .* at most 0\.70"):
        digits_ood(reference=torch.full((4,), min(nonzero + 0.05, 1.0)))


def test_digits_bad_inputs():
    with pytest.raises(ValueError, match=r"reference: expected finite images with values in \[0, 1\]"):
        digits_ood(reference=torch.tensor([-0.5, 0.5]))
    with pytest.raises(ValueError, match=r"got values in \[nan, nan\]"):
        digits_ood(reference=torch.tensor([float("nan"), 0.5]))
    with pytest.raises(ValueError, match=r"got values in \[0\.5, inf\]"):
        digits_ood(reference=torch.tensor([float("inf"), 0.5]))
    with pytest.raises(TypeError, match="reference: expected a floating-point tensor"):
        digits_ood(reference=torch.ones(3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="reference: expected a positive mean intensity"):
        digits_ood(reference=torch.zeros(3))
    with pytest.raises(ValueError, match="reference: expected a non-empty tensor"):
        digits_ood(reference=torch.zeros(0))
    with pytest.raises(ValueError, match="size: expected an int >= 1, got 0"):
        digits_ood(size=0)
    with pytest.raises(TypeError, match="size: expected an int"):
        digits_ood(size=28.0)


def test_digits_without_sklearn_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(
        ImportError, match=r"digits_ood needs the optional dependency 'sklearn'.*uqkit\[data\]"
    ):
        digits_ood()


# -- holdout_split -------------------------------------------------------------------------------------------
@pytest.fixture
def ten_classes() -> LabeledData:
    """35 examples with labels 0..9 cycling; inputs[k] = k, so rows can be traced back."""
    count = 35
    return LabeledData(torch.arange(count, dtype=torch.float32).unsqueeze(1), torch.arange(count) % 10)


def test_holdout_split_default_keeps_labels(ten_classes):
    inside, held_out = holdout_split(ten_classes)
    assert set(inside.labels.tolist()) == set(range(6))
    assert set(held_out.labels.tolist()) == {6, 7, 8, 9}
    expected_in = [k for k in range(35) if k % 10 < 6]
    assert inside.inputs[:, 0].long().tolist() == expected_in  # original order, right rows
    assert torch.equal(inside.labels, torch.tensor(expected_in) % 10)  # unchanged labels
    expected_out = [k for k in range(35) if k % 10 >= 6]
    assert held_out.inputs[:, 0].long().tolist() == expected_out
    assert torch.equal(held_out.labels, torch.tensor(expected_out) % 10)


def test_holdout_split_relabels_other_classes(ten_classes):
    inside, held_out = holdout_split(ten_classes, in_classes=[7, 2])
    original = inside.inputs[:, 0].long() % 10
    assert set(original.tolist()) == {2, 7}
    assert torch.equal(inside.labels, torch.where(original == 7, 0, 1))  # 7 -> 0, 2 -> 1
    assert 2 not in held_out.labels.tolist() and 7 not in held_out.labels.tolist()
    assert len(inside) + len(held_out) == len(ten_classes)


def test_holdout_split_bad_inputs(ten_classes):
    with pytest.raises(TypeError, match="data: expected a LabeledData, got tuple"):
        holdout_split((ten_classes.inputs, ten_classes.labels))
    with pytest.raises(ValueError, match="in_classes: expected at least one class"):
        holdout_split(ten_classes, in_classes=())
    with pytest.raises(ValueError, match="in_classes: expected distinct classes"):
        holdout_split(ten_classes, in_classes=(1, 1))
    with pytest.raises(ValueError, match="in_classes: expected non-negative class indices, got -1"):
        holdout_split(ten_classes, in_classes=(0, -1))
    with pytest.raises(TypeError, match="in_classes: expected int class indices, got float"):
        holdout_split(ten_classes, in_classes=(0, 1.0))
    with pytest.raises(TypeError, match="in_classes: expected a sequence of class indices, got str"):
        holdout_split(ten_classes, in_classes="012")
    with pytest.raises(ValueError, match=r"in_classes: no example has a label in \(11,\)"):
        holdout_split(ten_classes, in_classes=(11,))
    with pytest.raises(ValueError, match="held-out part is empty"):
        holdout_split(ten_classes, in_classes=tuple(range(10)))
