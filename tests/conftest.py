"""Fixtures and hooks shared across the test suite."""

from __future__ import annotations

import math
import os
from collections.abc import Callable

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


class TinyHuggingFace:
    """Hugging Face ``transformers`` classifiers built from tiny configs (random weights, nothing downloaded),
    and inputs for them, shared by the tests on models this project did not write.

    * ViT (``ViTForImageClassification``): its ``forward`` checks the channel dimension of its input and its
      patch embedding reads ``projection.weight.dtype``; 8 x 8 images, 4 x 4 patches.
    * BERT (``BertForSequenceClassification``): keyword inputs (``input_ids=..., attention_mask=...``), an
      output object with ``.logits``, ``position_ids`` of shape ``[1, T]`` shared by the batch.
    """

    HIDDEN = 16
    VOCAB = 50

    def __init__(self, transformers) -> None:
        self.transformers = transformers

    def _common(self) -> dict:
        return {
            "hidden_size": self.HIDDEN,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 32,
        }

    def vit(self, channels: int = 3, labels: int = 3, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
        config = self.transformers.ViTConfig(
            image_size=8, patch_size=4, num_channels=channels, num_labels=labels, **self._common()
        )
        return self.transformers.ViTForImageClassification(config).to(dtype)

    def bert(self, labels: int = 3, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
        config = self.transformers.BertConfig(
            vocab_size=self.VOCAB, max_position_embeddings=20, num_labels=labels, **self._common()
        )
        return self.transformers.BertForSequenceClassification(config).to(dtype)

    @staticmethod
    def images(batch: int = 2, channels: int = 3, dtype: torch.dtype = torch.float32) -> dict:
        """``{"pixel_values": [B, C, 8, 8]}``."""
        return {"pixel_values": torch.randn(batch, channels, 8, 8, dtype=dtype)}

    def text(self, batch: int = 4, length: int = 7) -> dict:
        """``{"input_ids": [B, T], "attention_mask": [B, T]}``, example 0 padded after position 5."""
        ids = torch.randint(1, self.VOCAB, (batch, length))
        mask = torch.ones(batch, length, dtype=torch.long)
        mask[0, 5:] = 0
        ids[0, 5:] = 0
        return {"input_ids": ids, "attention_mask": mask}

    def model_and_inputs(
        self, name: str, dtype: torch.dtype = torch.float32
    ) -> tuple[Callable[[], torch.nn.Module], Callable[..., dict]]:
        """``(factory, inputs)`` for ``name`` ``"vit"`` or ``"bert"``: ``inputs(batch)``, keyword inputs."""
        if name == "vit":
            return (lambda: self.vit(dtype=dtype)), (lambda batch=2: self.images(batch, dtype=dtype))
        if name == "bert":
            return (lambda: self.bert(dtype=dtype)), (lambda batch=4: self.text(batch))
        raise ValueError(f"name: expected 'vit' or 'bert', got {name!r}")


@pytest.fixture
def tiny_hf() -> TinyHuggingFace:
    """:class:`TinyHuggingFace`; skips the test where ``transformers`` (``dev`` extra) is not installed."""
    return TinyHuggingFace(pytest.importorskip("transformers"))
