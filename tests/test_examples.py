"""The README's "your model" example runs (few steps) and returns predictions in the documented shapes."""

import importlib.util
from pathlib import Path

import pytest

import uqkit

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "your_model.py"


@pytest.mark.usefixtures("one_thread")
def test_your_model_example_runs_and_predicts_with_a_sample_dimension(capsys):
    spec = importlib.util.spec_from_file_location("your_model_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(steps=3)
    samples = {"flipout-bnn": 16, "deep-ensemble": 4, "batchensemble": 4}
    assert set(results) == set(samples)
    for name, prediction in results.items():
        assert isinstance(prediction, uqkit.Prediction)
        assert prediction.logits.shape == (samples[name], 512, 2), name
        assert bool((prediction.epistemic >= -1e-6).all()), name
    out = capsys.readouterr().out
    assert "bayesianize_: 3 layers converted" in out and "deep-ensemble" in out
