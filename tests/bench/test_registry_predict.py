"""Benchmark methods predict through :func:`uqkit.predict` of their network (uqkit/bench/registry.py)."""

from __future__ import annotations

import pytest
import torch

from uqkit.bench.registry import MethodContext, build_method

pytestmark = pytest.mark.usefixtures("one_thread")


def _context(num_classes: int = 4) -> MethodContext:
    return MethodContext(
        input_shape=(6,), num_classes=num_classes, model="resmlp", num_train=40, batch_size=8
    )


def test_temperature_scaled_divides_the_networks_logits_by_the_fitted_temperature():
    torch.manual_seed(0)
    method = build_method("temperature-scaled", _context()).eval()
    x, y = torch.randn(64, 6), torch.randint(0, 4, (64,))  # labels unrelated to an untrained network's logits
    with torch.no_grad():
        for p in method.network.parameters():
            p.mul_(3.0)  # over-confident logits: the fitted temperature is far from 1
    method.fit_post_hoc(x, y)
    temperature = method.scaler.temperature
    assert temperature > 1.5
    test = torch.randn(5, 6)
    with torch.no_grad():
        prediction = method.predict(test)
        expected = method.network(test) / temperature
    assert prediction.logits.shape == (1, 5, 4)
    torch.testing.assert_close(prediction.logits[0], expected)


def test_deep_ensemble_rows_are_its_exported_members():
    torch.manual_seed(1)
    method = build_method("deep-ensemble", _context()).eval()
    x = torch.randn(5, 6)
    with torch.no_grad():
        logits = method.predict(x).logits
        expected = torch.stack([member.eval()(x) for member in method.network.members()])
    assert logits.shape == (method.num_samples, 5, 4) == expected.shape
    assert not torch.allclose(expected[0], expected[1], atol=1e-2)  # the members differ
    torch.testing.assert_close(logits, expected)
