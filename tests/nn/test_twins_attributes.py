"""Converted Flipout / Gaussian layers keep the attributes that model code reads of the layers they replace
(uqkit/nn/_twins.py): ``weight``/``bias`` as the posterior means, and the geometry of ``torch.nn``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import uqkit
from uqkit.methods import FlipoutConfig, ReparameterizationConfig, bayesianize_

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = [
    FlipoutConfig(),
    ReparameterizationConfig(),
    ReparameterizationConfig(local_reparameterization=True),
]
_LINEAR = ("in_features", "out_features")
_CONV = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups")
_CONV_ALL = (*_CONV, "padding_mode", "transposed", "output_padding")
_LSTM = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional")


class _ShapeReadingModel(nn.Module):
    """Model code that reads its layers as torch.nn users do: the dtype of a weight, the channel count."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, 4, kernel_size=(2, 3), stride=(1, 2), padding=(1, 0), dilation=1, groups=1)
        self.head = nn.Linear(4, 2)
        self.rnn = nn.LSTM(2, 5, num_layers=2, bidirectional=True, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.proj.in_channels:
            raise ValueError(f"expected {self.proj.in_channels} channels, got {x.shape[1]}")
        x = x.to(self.proj.weight.dtype)
        h = self.proj(x).mean((2, 3))
        logits = self.head(h)
        assert logits.shape[-1] == self.head.out_features and self.head.bias.shape == (2,)
        seq, _ = self.rnn(logits.unsqueeze(1).expand(-1, 3, -1))
        assert seq.shape[-1] == 2 * self.rnn.hidden_size and self.rnn.weight_ih_l0.shape == (20, 2)
        return logits + 0 * seq[:, -1, :2]


@pytest.mark.parametrize("config", CONFIGS, ids=["flipout", "gaussian", "gaussian-local"])
def test_converted_layers_keep_the_attributes_model_code_reads(config):
    torch.manual_seed(0)
    model = _ShapeReadingModel()
    reference = _ShapeReadingModel()
    reference.load_state_dict(model.state_dict())
    bayesianize_(model, config)
    assert not isinstance(model.proj, nn.Conv2d) and not isinstance(model.rnn, nn.LSTM)
    for name, attributes in (("proj", _CONV_ALL), ("head", _LINEAR), ("rnn", _LSTM)):
        converted, original = getattr(model, name), getattr(reference, name)
        for attribute in attributes:
            assert getattr(converted, attribute) == getattr(original, attribute), (name, attribute)
    # weight and bias are the posterior means themselves (the parameters), holding the pretrained values
    for name in ("proj", "head"):
        converted, original = getattr(model, name), getattr(reference, name)
        assert converted.weight is converted.weight_mean and converted.bias is converted.bias_mean
        torch.testing.assert_close(converted.weight, original.weight, rtol=0, atol=0)
        assert (
            converted.weight.dtype == original.weight.dtype
            and converted.weight.device == original.weight.device
        )
    for name in ("weight_ih_l0", "weight_hh_l1_reverse", "bias_ih_l1"):
        assert getattr(model.rnn, name) is getattr(model.rnn, f"{name}_mean")
        torch.testing.assert_close(getattr(model.rnn, name), getattr(reference.rnn, name), rtol=0, atol=0)
    assert [[t.shape for t in group] for group in model.rnn.all_weights] == [
        [t.shape for t in group] for group in reference.rnn.all_weights
    ]
    with pytest.raises(AttributeError):
        _ = model.rnn.weight_ih_l7  # not a parameter of this LSTM
    # the model runs, and follows .to(dtype) through its weights
    x = torch.randn(6, 3, 5, 7)
    assert model(x).shape == (6, 2)
    prediction = uqkit.predict(model.double(), x, num_samples=2)
    assert prediction.logits.dtype == torch.float64 and prediction.logits.shape == (2, 6, 2)
    with pytest.raises(ValueError, match="expected 3 channels, got 2"):
        model(torch.randn(6, 2, 5, 7))


def test_layers_without_bias_report_none():
    model = nn.Sequential(
        nn.Linear(3, 2, bias=False), nn.Unflatten(1, (2, 1)), nn.Conv1d(2, 2, 1, bias=False)
    )
    bayesianize_(model, FlipoutConfig())
    assert model[0].bias is None and model[2].bias is None
    assert model[0].weight.shape == (2, 3) and model[2].weight.shape == (2, 2, 1)
