"""Fixtures and hooks shared across the test suite."""

from __future__ import annotations

import math
import os

import pytest
import torch

INDUCTOR_CPU_CAPABILITY_SKIP = (
    "ATEN_CPU_CAPABILITY=default: inductor's generated C++ does not build without a vector ISA "
    "(\"'at::vec' has not been declared\"), a torch limitation"
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the ``compile`` tests where inductor cannot build its C++: under ``ATEN_CPU_CAPABILITY=default``.

    Only that one environment, and only tests marked ``compile``; everywhere else they run.
    """
    if os.environ.get("ATEN_CPU_CAPABILITY", "").strip().lower() != "default":
        return
    skip = pytest.mark.skip(reason=INDUCTOR_CPU_CAPABILITY_SKIP)
    for item in items:
        if item.get_closest_marker("compile") is not None:
            item.add_marker(skip)


def roundoff_tolerance(
    magnitude: float | torch.Tensor, reduction_length: int, dtype: torch.dtype, ulps: float = 8.0
) -> float | torch.Tensor:
    """How far two kernels may disagree on the same sums: ``ulps * eps * sqrt(n) * magnitude``.

    Two BLAS or convolution kernels (another blocking, another vector width, another thread count) add
    the same ``n`` products in another order. Each partial sum is rounded with a relative error of at
    most ``eps / 2`` (``torch.finfo(dtype).eps``), so the results differ by at most about
    ``n * eps * sum_i |a_i b_i|`` (Higham, *Accuracy and Stability of Numerical Algorithms*, 2002, §4.2),
    and, with errors of random sign, typically by ``sqrt(n) * eps * sum_i |a_i b_i|``. ``magnitude`` is
    ``sum_i |a_i b_i|`` (a bound on it, or a tensor of them, one per output), ``ulps`` a safety factor on
    the typical case that stays orders of magnitude below any real bug (a wrong example, a wrong sign, a
    wrong weight change the result by about ``magnitude`` itself).

    Use it only where the arithmetic differs; where it is provably the same (the same op on the same
    shapes: copies, a resumed run replaying the same ops), tests assert exact equality.
    """
    return ulps * torch.finfo(dtype).eps * math.sqrt(reduction_length) * magnitude


@pytest.fixture(name="roundoff_tolerance")
def roundoff_tolerance_fixture():
    """:func:`roundoff_tolerance`, for test modules (a ``conftest`` cannot be imported by name)."""
    return roundoff_tolerance


@pytest.fixture
def one_thread():
    """Run a test on one torch thread, then restore the setting.

    Tiny tensors gain nothing from threads, and on a busy machine each OpenMP region can stall.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
