"""Uncertainty for a model you did not write: a Hugging Face ``transformers`` ViT, made Bayesian, a deep
ensemble and a BatchEnsemble, and a BERT predicting with keyword inputs.

Run from the repository root (after ``bash scripts/test.sh``, whose ``dev`` extra installs ``transformers``;
elsewhere ``pip install transformers``):

    .venv/bin/python examples/your_model.py

The models are built from tiny configs (random weights: nothing is downloaded) and trained for a few steps on
a synthetic two-class image problem (a bright top half or a bright bottom half, plus noise). The ViT is used
exactly as its documentation calls it (``model(pixel_values).logits``; its ``forward`` checks the channel
dimension of the input), and three uncertainty-aware versions of it are made in one line each:

* ``uqkit.bayesianize_(model, uqkit.FlipoutConfig())``: every ``nn.Linear`` and ``nn.Conv2d`` becomes a
  Flipout layer (mean-field Gaussian weights), trained on ``uqkit.ELBO``;
* ``uqkit.DeepEnsemble(lambda: ViTForImageClassification(config), 4)``: four independently initialised
  copies, run as one vectorized model;
* ``uqkit.bayesianize_(model, uqkit.BatchEnsembleConfig(num_members=4))``: four members sharing each weight.

Member models return ``[M * B, C]`` logits (members folded into the batch, member-major), so training tiles
the labels with ``tile_members``. Each ends in ``uqkit.predict(model, pixel_values)``: a ``uqkit.Prediction``
with a leading sample/member dimension; the script prints accuracy, NLL and the mean epistemic uncertainty
(mutual information) on the data and on noise images.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

import uqkit
from uqkit import metrics
from uqkit.nn.members import num_members, tile_members

try:
    from transformers import BertConfig, BertForSequenceClassification, ViTConfig, ViTForImageClassification
except ImportError:  # pragma: no cover - the dev extra installs it
    sys.exit("examples/your_model.py needs transformers: pip install 'transformers>=5'")

VIT = ViTConfig(
    image_size=8,
    patch_size=4,
    num_channels=3,
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=64,
    num_labels=2,
)


def your_model() -> nn.Module:
    return ViTForImageClassification(VIT)


def two_halves(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``[n, 3, 8, 8]`` images with a bright top (label 0) or bottom (label 1) half, and their labels."""
    labels = torch.randint(0, 2, (n,), generator=generator)
    images = torch.randn(n, 3, 8, 8, generator=generator)
    rows = torch.arange(8)[None, :] >= 4  # bottom half
    bright = rows == labels[:, None].bool()  # [n, 8]: the rows of the labelled half
    return images + 2.0 * bright[:, None, :, None], labels


def report(name: str, prediction: uqkit.Prediction, labels: torch.Tensor, far: uqkit.Prediction) -> None:
    accuracy = float((prediction.predicted_class == labels).float().mean())
    nll = float(metrics.nll(prediction.probs, labels))
    near, away = float(prediction.mutual_information.mean()), float(far.mutual_information.mean())
    print(
        f"{name:<14} S={prediction.logits.shape[0]:<3} accuracy {accuracy:.3f}  NLL {nll:.3f}  "
        f"epistemic: data {near:.4f}, noise images {away:.4f}"
    )


def fit(model: nn.Module, loss: Callable[[], torch.Tensor], steps: int) -> None:
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()


def members_nll(model: nn.Module, pixel_values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum over members of the mean cross-entropy: a member model returns ``[M * B, C]`` logits (members
    folded into the batch, member-major), so the labels are tiled to ``[M * B]``."""
    members = num_members(model)
    return members * F.cross_entropy(model(pixel_values).logits, tile_members(labels, members))


def text_model_demo() -> uqkit.Prediction:
    """A BERT with keyword inputs and an output object: converted in one line, predicted as it is called."""
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=3,
    )
    bert = BertForSequenceClassification(config)
    uqkit.bayesianize_(bert, uqkit.FlipoutConfig(num_samples=8))  # uqkit.predict's default S for it
    input_ids = torch.randint(1, 100, (4, 12))
    attention_mask = torch.ones(4, 12, dtype=torch.long)
    prediction = uqkit.predict(bert, input_ids=input_ids, attention_mask=attention_mask)
    print(f"bert + Flipout: logits {tuple(prediction.logits.shape)} (S, B, C)")
    return prediction


def main(steps: int = 150, seed: int = 0) -> dict[str, uqkit.Prediction]:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    x, y = two_halves(256, generator)
    x_test, y_test = two_halves(256, generator)
    noise = 3.0 * torch.randn(256, 3, 8, 8, generator=generator)  # far from both classes
    results = {}

    # 1. Bayesian: convert the layers in place (pretrained weights would be kept as the posterior means)
    bnn = your_model()
    conversion = uqkit.bayesianize_(bnn, uqkit.FlipoutConfig())
    print(f"bayesianize_: {len(conversion.converted)} layers converted")
    elbo = uqkit.ELBO(num_data=len(x))  # mean NLL + KL / N, the KL collected from the model's layers
    fit(bnn, lambda: elbo(bnn(x).logits, y, bnn), steps)
    results["flipout-bnn"] = uqkit.predict(bnn, x_test, num_samples=16)  # .logits read from the output
    report("flipout-bnn", results["flipout-bnn"], y_test, uqkit.predict(bnn, noise, num_samples=16))

    # 2. Deep ensemble: M copies with independent initialisations, one vectorized forward, [M * B, C] out
    ensemble = uqkit.DeepEnsemble(your_model, 4)
    fit(ensemble, lambda: members_nll(ensemble, x, y), steps)  # ensemble(x).logits: [4 * B, 2]
    results["deep-ensemble"] = uqkit.predict(ensemble, x_test)  # [4, B, 2]
    report("deep-ensemble", results["deep-ensemble"], y_test, uqkit.predict(ensemble, noise))

    # 3. BatchEnsemble: members share each weight and differ by rank-1 factors; called as before
    batchensemble = your_model()
    uqkit.bayesianize_(
        batchensemble, uqkit.BatchEnsembleConfig(num_members=4, fast_weight_init="random_sign")
    )
    fit(batchensemble, lambda: members_nll(batchensemble, x, y), steps)
    results["batchensemble"] = uqkit.predict(batchensemble, x_test)
    report("batchensemble", results["batchensemble"], y_test, uqkit.predict(batchensemble, noise))

    results["bert-flipout"] = text_model_demo()
    return results


if __name__ == "__main__":
    main()
