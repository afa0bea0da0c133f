"""MC dropout trains on Gal & Ghahramani's (2016) objective: cross-entropy plus the L2 form of the KL term."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from uqkit.bench.registry import MethodContext, build_method
from uqkit.nn import MCDropout
from uqkit.nn.dropout import dropout_weight_decay


def test_mc_dropout_loss_is_cross_entropy_plus_hand_computed_weight_decay():
    context = MethodContext(input_shape=(1, 4, 4), num_classes=3, model="mlp", num_train=250)
    torch.manual_seed(0)
    method = build_method("mc-dropout", context).double()
    linears = [m for m in method.network if isinstance(m, nn.Linear)]
    dropouts = [m for m in method.network if isinstance(m, MCDropout)]
    assert len(linears) == 3 and len(dropouts) == 2  # 16-512-512-3, a dropout after each hidden ReLU
    p, n, length_scale = dropouts[0].p, 250, method.length_scale
    # By hand: the first layer's input is never dropped (keep probability 1); the two others follow a dropout.
    expected_penalty = (
        length_scale**2
        / (2 * n)
        * (
            linears[0].weight.square().sum()
            + (1 - p) * linears[1].weight.square().sum()
            + (1 - p) * linears[2].weight.square().sum()
            + sum(layer.bias.square().sum() for layer in linears)
        )
    )
    inputs = torch.randn(7, 1, 4, 4, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    torch.manual_seed(1)
    loss = method.training_loss(inputs, labels)
    torch.manual_seed(1)  # the same dropout masks
    cross_entropy = F.cross_entropy(method.network(inputs), labels)
    assert float(expected_penalty.detach()) > 0
    torch.testing.assert_close(loss - cross_entropy, expected_penalty, rtol=1e-12, atol=0.0)
    # and it is differentiable in the weights: the gradient of the penalty alone is lambda_i * 2 W_i
    method.zero_grad()
    dropout_weight_decay(method.network, length_scale, n).backward()
    torch.testing.assert_close(
        linears[1].weight.grad, length_scale**2 * (1 - p) / n * linears[1].weight, rtol=1e-12, atol=0.0
    )


def test_dropout_weight_decay_reads_the_rate_in_front_of_each_layer():
    model = nn.Sequential(MCDropout(0.5), nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[1].weight.fill_(1.0)  # ||W||^2 = 4, behind a dropout of rate 0.5
        model[3].weight.fill_(2.0)  # ||W||^2 = 8, behind none
    value = dropout_weight_decay(model, length_scale=2.0, num_data=4)  # l^2 / (2N) = 0.5
    assert float(value.detach()) == pytest.approx(0.5 * (0.5 * 4 + 1.0 * 8))
    with pytest.raises(ValueError, match="length_scale"):
        dropout_weight_decay(model, length_scale=0.0, num_data=4)
