"""Tests of uqkit/data/shift.py: rotation against torch.rot90 and a slow bilinear reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from uqkit.data import ROTATION_ANGLES, rotate_images


def slow_rotate(image: torch.Tensor, angle_degrees: float) -> torch.Tensor:
    """Reference rotation of one ``[H, W]`` image, pixel by pixel, in float64.

    The output pixel at (row i, column j) has offset (u, v) = (j - cx, i - cy) from the centre (x right, y
    down). Turning the content counter-clockwise as displayed by ``a`` means sampling the input at
    (u cos a - v sin a, u sin a + v cos a), bilinearly, with zeros outside the image.
    """
    height, width = image.shape
    cy, cx = (height - 1) / 2, (width - 1) / 2
    a = math.radians(angle_degrees)
    out = torch.zeros(height, width, dtype=torch.float64)

    def pixel(row: int, col: int) -> float:
        inside = 0 <= row < height and 0 <= col < width
        return float(image[row, col]) if inside else 0.0

    for i in range(height):
        for j in range(width):
            u, v = j - cx, i - cy
            col = cx + u * math.cos(a) - v * math.sin(a)
            row = cy + u * math.sin(a) + v * math.cos(a)
            r0, c0 = math.floor(row), math.floor(col)
            fr, fc = row - r0, col - c0
            out[i, j] = (
                (1 - fr) * (1 - fc) * pixel(r0, c0)
                + (1 - fr) * fc * pixel(r0, c0 + 1)
                + fr * (1 - fc) * pixel(r0 + 1, c0)
                + fr * fc * pixel(r0 + 1, c0 + 1)
            )
    return out


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(3, 2, 28, 28, generator=torch.Generator().manual_seed(0))


def test_zero_angle_returns_an_exact_copy(images):
    rotated = rotate_images(images, 0)
    assert torch.equal(rotated, images)
    assert rotated.data_ptr() != images.data_ptr()


@pytest.mark.parametrize(("angle", "quarter_turns"), [(90, 1), (180, 2), (270, 3), (-90, -1), (450, 1)])
def test_right_angles_equal_rot90(images, angle, quarter_turns):
    # On a square image pixel centres map onto pixel centres, so bilinear interpolation is exact up to the
    # float rounding of cos and sin (cos(pi / 2) = 6e-17): every pixel must match, border included.
    expected = torch.rot90(images, quarter_turns, dims=(-2, -1))
    torch.testing.assert_close(rotate_images(images, angle), expected, atol=1e-5, rtol=0)


def test_positive_angle_turns_counter_clockwise_as_displayed():
    image = torch.zeros(1, 1, 5, 5)
    image[0, 0, 2, 4] = 1.0  # right of the centre (row 2, column 4)
    rotated = rotate_images(image, 90)
    assert rotated[0, 0, 0, 2] == pytest.approx(1.0, abs=1e-6)  # now above the centre (row 0 is the top)
    assert float(rotated.sum()) == pytest.approx(1.0, abs=1e-6)


def test_non_square_rotation_is_a_true_rotation():
    # A 90-degree turn of a 6x10 image about its centre equals rot90 of the image padded to 10x10, cropped
    # back to its 6x10 window (zeros where the turned content leaves the window). Only correct if the
    # aspect ratio is handled; in normalised coordinates the turn would be stretched.
    image = torch.rand(2, 1, 6, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    padded = torch.nn.functional.pad(image, (0, 0, 2, 2))
    expected = torch.rot90(padded, 1, dims=(-2, -1))[..., 2:8, :]
    torch.testing.assert_close(rotate_images(image, 90), expected, atol=1e-10, rtol=0)


@pytest.mark.parametrize("angle", [37.0, -110.5, 15])
def test_arbitrary_angle_matches_slow_reference(angle):
    image = torch.rand(1, 1, 7, 9, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    rotated = rotate_images(image, angle)
    assert rotated.dtype == torch.float64 and rotated.shape == image.shape
    torch.testing.assert_close(rotated[0, 0], slow_rotate(image[0, 0], angle), atol=1e-10, rtol=0)


def test_rotation_keeps_the_unit_range_and_shape(images):
    rotated = rotate_images(images, 33.3)
    assert rotated.shape == images.shape and rotated.dtype == images.dtype
    assert float(rotated.min()) >= 0.0 and float(rotated.max()) <= 1.0
    # Rotation turns every channel the same way: channels rotated separately give the same result.
    separately = torch.cat([rotate_images(images[:, c : c + 1], 33.3) for c in range(2)], dim=1)
    torch.testing.assert_close(rotated, separately)


def test_accepts_numpy_scalars(images):
    torch.testing.assert_close(rotate_images(images, np.float64(90.0)), rotate_images(images, 90))


def test_rotation_angles():
    assert ROTATION_ANGLES == (0, 15, 30, 45, 60, 75, 90, 105, 120, 135, 150, 165, 180)


def test_bad_inputs(images):
    with pytest.raises(TypeError, match=r"images: expected a floating-point tensor, got dtype torch\.uint8"):
        rotate_images(images.to(torch.uint8), 10)
    with pytest.raises(ValueError, match=r"images: expected a 4-D tensor \[batch, channels, height, width\]"):
        rotate_images(images[0], 10)
    with pytest.raises(TypeError, match=r"images: expected a torch\.Tensor"):
        rotate_images(images.numpy(), 10)
    with pytest.raises(ValueError, match="images: expected finite values"):
        rotate_images(torch.full((1, 1, 4, 4), float("nan")), 10)
    for bad in ("90", True, None, torch.tensor(90.0)):
        with pytest.raises(TypeError, match="angle_degrees: expected a real number of degrees"):
            rotate_images(images, bad)
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match="angle_degrees: expected a finite number of degrees"):
            rotate_images(images, bad)
