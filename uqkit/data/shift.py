"""Covariate shift by rotation: the rotated-MNIST protocol of Ovadia et al. (2019).

Ovadia et al., "Can you trust your model's uncertainty? Evaluating predictive uncertainty under dataset
shift" (NeurIPS 2019), evaluate models trained on upright images on the test set rotated by increasing
angles from 0 to 180 degrees; :data:`ROTATION_ANGLES` are the angles we use, in 15-degree steps.
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Any

import torch
import torch.nn.functional as F

from uqkit._validation import check_float_tensor
from uqkit.data.fashion_mnist_loader import fashion_mnist
from uqkit.data.labeled import LabeledData

__all__ = ["ROTATION_ANGLES", "rotate_images", "rotated_fashion_mnist"]

ROTATION_ANGLES: tuple[int, ...] = tuple(range(0, 181, 15))


def _check_angle(angle: Any, name: str = "angle_degrees") -> float:
    if isinstance(angle, bool) or not isinstance(angle, numbers.Real):
        raise TypeError(f"{name}: expected a real number of degrees, got {type(angle).__name__} {angle!r}")
    angle = float(angle)
    if not math.isfinite(angle):
        raise ValueError(f"{name}: expected a finite number of degrees, got {angle}")
    return angle


def rotate_images(images: torch.Tensor, angle_degrees: float) -> torch.Tensor:
    """Rotate images about their centre by ``angle_degrees``, counter-clockwise as displayed.

    "As displayed" means with row 0 at the top, as ``matplotlib.pyplot.imshow`` shows an image: a positive
    angle turns the content counter-clockwise, so a rotation by 90 degrees equals
    ``torch.rot90(images, 1, dims=(-2, -1))`` for square images. The rotation is done in pixel units (so it
    stays a rotation for non-square images) about the image centre, ``((W - 1) / 2, (H - 1) / 2)`` in pixel
    indices, with ``F.affine_grid`` and ``F.grid_sample`` (bilinear, ``align_corners=False``). Output pixels
    whose source lies outside the image are filled with zeros (blended with zero near the border).

    For an output pixel at ``p`` (pixel offset from the centre, x to the right and y down) the input is
    sampled at ``R(-angle) p`` where, for y pointing down, a counter-clockwise turn by ``a`` is
    ``R(a) = [[cos a, sin a], [-sin a, cos a]]``.

    Args:
        images: ``[N, C, H, W]`` floating-point images.
        angle_degrees: rotation angle in degrees (any finite real; positive = counter-clockwise).

    Returns:
        The rotated images, a new tensor of the same shape and dtype. An angle of exactly 0 returns an exact
        copy (``images.clone()``), without interpolation.

    Shape:
        ``images``: ``[N, C, H, W]``; output: ``[N, C, H, W]``.
    """
    images = check_float_tensor(images, "images", 4, "[batch, channels, height, width]")
    angle = _check_angle(angle_degrees)
    if angle == 0.0:
        return images.clone()
    height, width = images.shape[-2:]
    radians = math.radians(angle)
    cos, sin = math.cos(radians), math.sin(radians)
    # affine_grid works in normalised coordinates, x in [-1, 1] across the width and y across the height:
    # pixel offset (u, v) = (x * W / 2, y * H / 2). Sampling at R(-a) (u, v) in pixels becomes, normalised,
    # x_in = cos * x - sin * (H / W) * y and y_in = sin * (W / H) * x + cos * y.
    theta = torch.tensor(
        [[cos, -sin * height / width, 0.0], [sin * width / height, cos, 0.0]],
        dtype=images.dtype,
        device=images.device,
    )
    grid = F.affine_grid(theta.expand(images.shape[0], 2, 3), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def rotated_fashion_mnist(angle_degrees: float, root: str | os.PathLike | None = None) -> LabeledData:
    """The Fashion-MNIST test split rotated by ``angle_degrees`` (Ovadia et al. 2019 rotation shift).

    Args:
        angle_degrees: rotation in degrees, counter-clockwise as displayed (see :func:`rotate_images`); the
            protocol uses :data:`ROTATION_ANGLES` (0 to 180 in steps of 15), but any finite angle works.
        root: directory of the Fashion-MNIST files, as in :func:`~uqkit.data.fashion_mnist`.

    Returns:
        ``LabeledData`` with the rotated float32 images in ``[0, 1]`` and the unchanged long labels.

    Shape:
        ``inputs``: ``[10000, 1, 28, 28]``; ``labels``: ``[10000]``.
    """
    _check_angle(angle_degrees)
    test = fashion_mnist("test", root=root)
    return LabeledData(rotate_images(test.inputs, angle_degrees), test.labels)
