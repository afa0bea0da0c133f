"""Fixtures shared across the test suite."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """Run a test on one torch thread, then restore the setting.

    Tiny tensors gain nothing from threads, and on a busy machine each OpenMP region can stall.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
