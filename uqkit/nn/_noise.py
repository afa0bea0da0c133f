"""The one place where Bayesian layers draw sign noise and turn raw parameters into posterior scales.

* :func:`rademacher` draws the Flipout sign vectors (Wen et al. 2018, Sec. 3.1): entries exactly ``+1`` or
  ``-1`` with probability 1/2 each, independent. It is built from uniform random bits, 16 per draw of the
  random number generator, written straight into the sign bit of the float ``1.0`` (about seven times
  faster on a CPU than ``randint(0, 2) * 2 - 1``, and exact by construction: no float ever lies outside
  ``{-1, +1}``).
* :func:`posterior_scale` and :func:`scale_to_rho` are the softplus parametrisation of a posterior standard
  deviation, ``sigma = log(1 + exp(rho))`` (Blundell et al. 2015, Sec. 3.2), which keeps ``sigma`` positive
  without constraints on ``rho``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from uqkit._validation import check_positive_float

__all__ = ["posterior_scale", "rademacher", "scale_to_rho", "scales_to_rho"]

_BITS_PER_DRAW = 16
_ONE_FLOAT32_BITS = 0x3F800000  # IEEE-754 bit pattern of float32 1.0; setting bit 31 makes it -1.0
_SIGN_BIT = -(2**31)  # 0x80000000 as a signed int32


def rademacher(
    shape: Sequence[int] | torch.Size,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw independent Rademacher signs: each entry is exactly ``+1`` or ``-1`` with probability 1/2.

    Each draw of the random number generator gives an integer uniform on ``[0, 2**16)``, whose 16 bits are
    independent fair coins; bit ``k`` becomes the sign bit of the float32 ``1.0`` of one entry.

    Args:
        shape: shape of the result.
        dtype: a floating-point dtype for the result (the signs are exact in every float format).
        device: device of the result (default: the current default device).
        generator: optional ``torch.Generator`` for reproducible draws.

    Returns:
        A tensor of ``shape`` and ``dtype`` holding only ``+1`` and ``-1``.

    Raises:
        TypeError: if ``dtype`` is not a floating-point dtype.
        ValueError: if ``shape`` has a negative entry.
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype: expected a floating-point torch.dtype, got {dtype!r}")
    size = torch.Size(shape)
    if any(d < 0 for d in size):
        raise ValueError(f"shape: expected non-negative sizes, got {tuple(size)}")
    numel = size.numel()
    draws = -(-numel // _BITS_PER_DRAW)  # ceil division
    bits = torch.randint(
        0, 2**_BITS_PER_DRAW, (draws, 1), dtype=torch.int32, device=device, generator=generator
    )
    shifts = torch.arange(31 - _BITS_PER_DRAW + 1, 32, dtype=torch.int32, device=bits.device)
    # bit k of a draw moves to bit 31 (the sign bit); every other bit becomes that of 1.0f.
    words = (bits << shifts).bitwise_and_(_SIGN_BIT).bitwise_or_(_ONE_FLOAT32_BITS)
    signs = words.view(-1)[:numel].view(torch.float32).view(size)
    return signs if dtype == torch.float32 else signs.to(dtype)


def posterior_scale(rho: torch.Tensor) -> torch.Tensor:
    """Posterior standard deviation ``sigma = softplus(rho) = log(1 + exp(rho))`` (Blundell et al. 2015).

    ``rho = -inf`` gives ``sigma = 0`` exactly (a point mass: the layer then equals its deterministic
    twin).

    Args:
        rho: unconstrained parameter, any shape.

    Returns:
        ``sigma`` with the shape and dtype of ``rho``, all entries ``>= 0``.
    """
    return F.softplus(rho)


def scale_to_rho(scale: float, name: str = "scale") -> float:
    """Inverse of :func:`posterior_scale` for one number: the ``rho`` with ``softplus(rho) = scale``.

    Uses ``rho = scale + log(-expm1(-scale))``, stable for small and large ``scale``; ``scale = 0`` maps
    to ``-inf``.

    Args:
        scale: a standard deviation ``>= 0``.
        name: the argument name used in error messages.

    Returns:
        ``rho`` as a Python float.

    Raises:
        TypeError, ValueError: if ``scale`` is not a finite number ``>= 0``.
    """
    scale = check_positive_float(scale, name, allow_zero=True)
    if scale == 0.0:
        return -math.inf
    return scale + math.log(-math.expm1(-scale))


def scales_to_rho(scale: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`posterior_scale` elementwise: ``rho = scale + log(-expm1(-scale))``.

    The tensor form of :func:`scale_to_rho`, computed in float64 and returned in ``scale``'s dtype;
    ``scale = 0`` maps to ``-inf``.

    Args:
        scale: standard deviations ``>= 0``, any shape.

    Returns:
        ``rho`` with ``softplus(rho) = scale``, of ``scale``'s shape and dtype.

    Raises:
        ValueError: if an entry of ``scale`` is negative or not finite.
    """
    if not bool(torch.isfinite(scale).all()) or bool((scale < 0).any()):
        raise ValueError(
            "scale: expected finite standard deviations >= 0, got a negative or non-finite entry"
        )
    wide = scale.double()
    return (wide + torch.log(-torch.expm1(-wide))).to(scale.dtype)
