"""Out-of-distribution sets: handwritten digits as far-OOD, and held-out classes as near-OOD."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from uqkit._validation import check_float_tensor, check_positive_int
from uqkit.data._common import import_optional
from uqkit.data.labeled import LabeledData, check_labeled_data

__all__ = ["digits_ood", "holdout_split"]

_DIGITS_MAX_VALUE = 16.0  # load_digits() pixels are counts of set bits in 4x4 blocks: 0..16
_BISECTION_RTOL = 1e-7  # relative width of the final bracket on the scale factor


def _scale_to_mean(images: torch.Tensor, target_mean: float) -> torch.Tensor:
    """``clamp(a * images, 0, 1)`` with the ``a >= 0`` whose mean is ``target_mean``.

    ``m(a) = mean(clamp(a * x, 0, 1))`` is continuous and non-decreasing in ``a``, from 0 at ``a = 0`` up to
    the fraction of non-zero pixels once every non-zero pixel saturates (``a >= 1 / min_positive x``). When no
    pixel saturates it is linear, ``a = target_mean / mean(x)``; otherwise ``a`` is found by bisection.
    """
    x = images.double()
    positive = x[x > 0]
    reachable = positive.numel() / x.numel()
    if target_mean >= reachable:
        raise ValueError(
            f"reference: mean intensity {target_mean:.4g} cannot be matched by rescaling digits clipped to "
            f"[0, 1]: at most {reachable:.4g} (the fraction of non-zero pixels) is reachable"
        )

    def mean_at(scale: float) -> float:
        return float((scale * x).clamp(0.0, 1.0).mean())

    scale = target_mean / float(x.mean())
    if scale * float(x.max()) > 1.0:  # some pixels saturate: the linear solution undershoots; bisect
        low, high = scale, 1.0 / float(positive.min())
        while high - low > _BISECTION_RTOL * high:
            middle = 0.5 * (low + high)
            if mean_at(middle) < target_mean:
                low = middle
            else:
                high = middle
        scale = 0.5 * (low + high)
    return (scale * x).clamp(0.0, 1.0).to(images.dtype)


def digits_ood(size: int = 28, reference: torch.Tensor | None = None) -> LabeledData:
    """Far-OOD images for Fashion-MNIST: scikit-learn's 8x8 handwritten digits, upsampled.

    The 1,797 images of ``sklearn.datasets.load_digits()`` (UCI optical recognition of handwritten
    digits, bundled with scikit-learn, no download) have values ``0..16``. They are divided by 16 to lie in
    ``[0, 1]``, the Fashion-MNIST range, and resized to ``size x size`` with ``F.interpolate`` (bilinear,
    ``align_corners=False``, no antialiasing), which keeps them in ``[0, 1]``.

    If ``reference`` (in-distribution images in ``[0, 1]``, e.g. Fashion-MNIST training inputs) is given,
    the digits are rescaled linearly, ``clamp(a * x, 0, 1)`` with one factor ``a`` for the whole set, so
    that their mean intensity equals the reference's. This removes mean brightness as a trivial cue for
    OOD detection. When no pixel would exceed 1, ``a = mean(reference) / mean(digits)``; otherwise ``a``
    is solved for by bisection so that the mean after clipping still matches.

    Args:
        size: output height and width in pixels.
        reference: optional ``[N, ...]`` float tensor of in-distribution images with values in ``[0, 1]``
            and a positive mean.

    Returns:
        ``LabeledData`` with float32 inputs in ``[0, 1]`` and the digit labels ``0..9`` (long). The labels
        name digits, not Fashion-MNIST classes; OOD evaluation ignores them.

    Shape:
        ``inputs``: ``[1797, 1, size, size]``; ``labels``: ``[1797]``.

    Raises:
        ImportError: scikit-learn is not installed (``pip install 'uqkit[data]'``).
        ValueError: a ``reference`` outside ``[0, 1]``, empty, with zero mean, or with a mean the clipped
            rescaling cannot reach.
    """
    check_positive_int(size, "size")
    target_mean = None
    if reference is not None:
        # finite=False: the range check below also rejects NaN and inf, in one pass instead of two.
        reference = check_float_tensor(reference, "reference", finite=False)
        if reference.numel() == 0:
            raise ValueError(f"reference: expected a non-empty tensor, got shape {tuple(reference.shape)}")
        low, high = (float(v) for v in reference.aminmax())
        if not (low >= 0.0 and high <= 1.0):  # written so that NaN fails too
            raise ValueError(
                f"reference: expected finite images with values in [0, 1] (before any mean/std "
                f"normalisation), got values in [{low:.4g}, {high:.4g}]"
            )
        target_mean = float(reference.mean())
        if target_mean <= 0.0:
            raise ValueError("reference: expected a positive mean intensity, got 0 (all-black images)")

    datasets = import_optional("sklearn.datasets", "digits_ood")
    digits = datasets.load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / _DIGITS_MAX_VALUE
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    images = images.clamp(0.0, 1.0)  # bilinear weights are convex; this only removes float rounding
    if target_mean is not None:
        images = _scale_to_mean(images, target_mean)
    return LabeledData(images, torch.as_tensor(digits.target, dtype=torch.long))


def _check_classes(in_classes: Any) -> tuple[int, ...]:
    if isinstance(in_classes, (str, bytes)) or not isinstance(in_classes, Sequence):
        kind = type(in_classes).__name__
        raise TypeError(f"in_classes: expected a sequence of class indices, got {kind} {in_classes!r}")
    classes = tuple(in_classes)
    if not classes:
        raise ValueError("in_classes: expected at least one class, got an empty sequence")
    for value in classes:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"in_classes: expected int class indices, got {type(value).__name__} {value!r}")
        if value < 0:
            raise ValueError(f"in_classes: expected non-negative class indices, got {value}")
    if len(set(classes)) != len(classes):
        raise ValueError(f"in_classes: expected distinct classes, got {classes}")
    return classes


def holdout_split(
    data: LabeledData, in_classes: Sequence[int] = (0, 1, 2, 3, 4, 5)
) -> tuple[LabeledData, LabeledData]:
    """Split ``data`` by class into an in-distribution part and a held-out (near-OOD) part.

    Near-OOD protocol: train on some classes of a data set and treat its other classes as out-of-distribution
    (e.g. Fashion-MNIST classes 0-5 in, 6-9 out).

    The in-distribution part is relabelled so that ``in_classes[i]`` becomes class ``i``; with the default
    ``in_classes = (0, ..., k - 1)`` in order, the labels are unchanged. The held-out part keeps its original
    labels (they are not classes of the in-distribution model).

    Args:
        data: the examples to split.
        in_classes: the distinct, non-negative class indices to keep as in-distribution.

    Returns:
        ``(in_distribution, held_out)``, each keeping the original order of its examples.

    Raises:
        ValueError: empty or repeated ``in_classes``, or a part that would be empty.
    """
    check_labeled_data(data)
    classes = _check_classes(in_classes)
    class_tensor = torch.tensor(classes, dtype=torch.long, device=data.labels.device)
    is_in = torch.isin(data.labels, class_tensor)
    if not bool(is_in.any()):
        raise ValueError(f"in_classes: no example has a label in {classes}")
    if bool(is_in.all()):
        raise ValueError(f"in_classes: every example has a label in {classes}, so the held-out part is empty")
    inside = data.subset(is_in)
    # Position of each label in in_classes: exactly one match per row since the classes are distinct.
    new_labels = (inside.labels.unsqueeze(1) == class_tensor).long().argmax(dim=1)
    return LabeledData(inside.inputs, new_labels), data.subset(~is_in)
