"""The README's "your model" example (a Hugging Face ViT and BERT from tiny configs) runs (few steps) and
returns predictions in the documented shapes."""

import importlib.util
from pathlib import Path

import pytest
import torch

import uqkit

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "your_model.py"


@pytest.mark.usefixtures("one_thread")
def test_your_model_example_runs_and_predicts_with_a_sample_dimension(capsys):
    pytest.importorskip("transformers")
    spec = importlib.util.spec_from_file_location("your_model_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(steps=3)
    shapes = {
        "flipout-bnn": (16, 256, 2),
        "deep-ensemble": (4, 256, 2),
        "batchensemble": (4, 256, 2),
        "bert-flipout": (8, 4, 3),  # FlipoutConfig(num_samples=8): uqkit.predict's default
    }
    assert set(results) == set(shapes)
    for name, prediction in results.items():
        assert isinstance(prediction, uqkit.Prediction)
        assert prediction.logits.shape == shapes[name], name
        assert bool((prediction.mutual_information >= -1e-6).all()), name
        assert not torch.equal(prediction.logits[0], prediction.logits[1]), name  # samples / members differ
    out = capsys.readouterr().out
    # the ViT's patch convolution, attention projections, MLP and classifier
    assert "bayesianize_: 8 layers converted" in out and "deep-ensemble" in out
