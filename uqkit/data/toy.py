"""Toy problems: two moons (classification) and a 1-D regression with a gap in its inputs.

Two moons is the 2-D toy problem for distance-aware uncertainty (Liu et al. 2020, SNGP, Figure 1).
Noise-free, class 0 lies on the upper half circle ``(cos t, sin t)`` and class 1 on the lower half circle
``(1 - cos t, 0.5 - sin t)``, ``t in [0, pi]`` (scikit-learn's ``make_moons``); together they span
``[-1, 2] x [-0.5, 1]``.

The gap regression (:func:`gap_regression`) draws inputs from ``[-4, -1] U [1, 4]`` only, so a model's
uncertainty in ``(-1, 1)``, between the two clusters, shows whether it knows it has seen no data there (the
"in-between" uncertainty of Foong et al. 2019; the setting of Hafner et al. 2018's noise-contrastive priors).
"""

from __future__ import annotations

import torch

from uqkit._validation import check_positive_float, check_positive_int
from uqkit.data._common import check_seed, import_optional
from uqkit.data.labeled import LabeledData, RegressionData

__all__ = [
    "GAP_REGRESSION_GAP",
    "GAP_REGRESSION_INTERVALS",
    "TWO_MOONS_OOD_CENTER",
    "TWO_MOONS_OOD_STD",
    "gap_regression",
    "gap_regression_function",
    "two_moons",
    "two_moons_ood",
]

# Below-left of both moons: 1.58 from the nearest noise-free moon point (the end (-1, 0) of class 0) and 2.2
# from class 1. With a standard deviation of 0.2 per axis, 99.99% of the blob (radius 0.86, chi-square with
# 2 degrees of freedom) stays more than 0.7 from the noise-free moons.
TWO_MOONS_OOD_CENTER: tuple[float, float] = (-1.5, -1.5)
TWO_MOONS_OOD_STD = 0.2


def two_moons(num_samples: int = 1000, noise: float = 0.1, seed: int = 0) -> LabeledData:
    """Two interleaving half circles, one per class (``sklearn.datasets.make_moons``).

    Args:
        num_samples: total points; class 0 gets ``num_samples // 2``, class 1 the rest.
        noise: standard deviation of the Gaussian noise added to each coordinate.
        seed: seed of scikit-learn's generator (also shuffles the order).

    Returns:
        ``LabeledData`` with float32 points and long labels in ``{0, 1}``.

    Shape:
        ``inputs``: ``[num_samples, 2]``; ``labels``: ``[num_samples]``.

    Raises:
        ImportError: scikit-learn is not installed (``pip install 'uqkit[data]'``).
    """
    check_positive_int(num_samples, "num_samples", minimum=2)
    noise = check_positive_float(noise, "noise", allow_zero=True)
    check_seed(seed)
    datasets = import_optional("sklearn.datasets", "two_moons")
    points, labels = datasets.make_moons(n_samples=num_samples, noise=noise, random_state=seed)
    return LabeledData(
        torch.as_tensor(points, dtype=torch.float32), torch.as_tensor(labels, dtype=torch.long)
    )


def two_moons_ood(num_samples: int = 200, seed: int = 0) -> LabeledData:
    """An isotropic Gaussian blob away from both moons, as out-of-distribution inputs for :func:`two_moons`.

    Points are ``TWO_MOONS_OOD_CENTER + TWO_MOONS_OOD_STD * z`` with ``z ~ N(0, I_2)`` drawn by a
    ``torch.Generator`` seeded with ``seed``. The centre ``(-1.5, -1.5)`` is 1.58 away from the nearest
    noise-free moon point, so a distance-aware model should be uncertain on the whole blob. The SNGP paper
    (Liu et al. 2020) shows the uncertainty surface over the plane rather than a fixed OOD set; this blob is
    our choice of a concrete set to score.

    Args:
        num_samples: number of points.
        seed: seed of the generator.

    Returns:
        ``LabeledData`` with float32 points. Its labels are all zero and meaningless (OOD points belong to no
        class); they exist only so the result has the same type as the in-distribution set.

    Shape:
        ``inputs``: ``[num_samples, 2]``; ``labels``: ``[num_samples]``.
    """
    check_positive_int(num_samples, "num_samples")
    check_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(num_samples, 2, generator=generator, dtype=torch.float32)
    points = torch.tensor(TWO_MOONS_OOD_CENTER, dtype=torch.float32) + TWO_MOONS_OOD_STD * noise
    return LabeledData(points, torch.zeros(num_samples, dtype=torch.long))


GAP_REGRESSION_INTERVALS: tuple[tuple[float, float], tuple[float, float]] = ((-4.0, -1.0), (1.0, 4.0))
"""The two input intervals of :func:`gap_regression`, equally likely."""
GAP_REGRESSION_GAP: tuple[float, float] = (-1.0, 1.0)
"""The gap between them: no training input falls inside."""


def gap_regression_function(inputs: torch.Tensor) -> torch.Tensor:
    """The noise-free target of :func:`gap_regression`, ``f(x) = sin(x) + 0.3 x``, elementwise.

    Over ``[-4, 4]`` it ranges within about ``[-1.5, 1.5]``; in the gap it rises from ``f(-1) = -1.14`` to
    ``f(1) = 1.14`` through ``f(0) = 0``.
    """
    if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point():
        raise TypeError(f"inputs: expected a floating-point tensor, got {type(inputs).__name__}")
    return torch.sin(inputs) + 0.3 * inputs


def gap_regression(num_samples: int = 160, noise: float = 0.1, seed: int = 0) -> RegressionData:
    """A 1-D regression task with a gap in its inputs, generated locally (nothing is downloaded).

    Inputs are uniform on ``[-4, -1] U [1, 4]`` (:data:`GAP_REGRESSION_INTERVALS`: each interval with
    probability 1/2, then uniform within it), none in the gap ``(-1, 1)`` (:data:`GAP_REGRESSION_GAP`);
    targets are ``y = f(x) + noise * eps``, ``f`` = :func:`gap_regression_function`, ``eps ~ N(0, 1)``
    (homoscedastic). Everything is drawn by one ``torch.Generator`` seeded with ``seed``.

    Args:
        num_samples: number of points (``>= 2``).
        noise: standard deviation of the target noise, ``>= 0``.
        seed: seed of the generator.

    Returns:
        :class:`~uqkit.data.RegressionData` with float32 ``inputs`` ``[N, 1]`` and targets ``labels``
        ``[N, 1]``.
    """
    check_positive_int(num_samples, "num_samples", minimum=2)
    noise = check_positive_float(noise, "noise", allow_zero=True)
    check_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    interval = torch.randint(0, 2, (num_samples, 1), generator=generator)
    uniform = torch.rand(num_samples, 1, generator=generator, dtype=torch.float64)
    (low_a, high_a), (low_b, high_b) = GAP_REGRESSION_INTERVALS
    low = torch.where(interval == 0, low_a, low_b).double()
    width = torch.where(interval == 0, high_a - low_a, high_b - low_b).double()
    inputs = low + width * uniform
    targets = gap_regression_function(inputs) + noise * torch.randn(
        num_samples, 1, generator=generator, dtype=torch.float64
    )
    return RegressionData(inputs.float(), targets.float())
