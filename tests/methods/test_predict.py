"""Monte Carlo prediction (uqkit/methods/predict.py)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from uqkit.methods import predict
from uqkit.nn import FlipoutLinear, FlipoutLSTM, GaussianLinear, MCDropout, use_posterior_mean
from uqkit.prediction import Prediction

pytestmark = pytest.mark.usefixtures("one_thread")


def test_batched_samples_keep_examples_in_order(roundoff_tolerance):
    # zero posterior scale: every sample of example b must be the deterministic output of example b, so a
    # wrong reshape of the [S * B] batch would show another example's logits
    torch.manual_seed(0)
    model = nn.Sequential(FlipoutLinear(4, 8, posterior_scale_init=0.0), nn.ReLU(), FlipoutLinear(8, 3))
    model[2].reset_posterior_scale(0.0)
    x = torch.randn(5, 4)
    pred = predict(model, x, num_samples=7)
    assert isinstance(pred, Prediction) and pred.logits.shape == (7, 5, 3)
    expected = model(x).detach()
    # A batch of 35 and a batch of 5 may take differently blocked BLAS kernels (1.5e-8 apart on an Intel
    # Xeon): allow their rounding, from the network run on absolute values (sum of |terms| of each logit,
    # the first layer's error carried through the second) and the 4 + 8 products summed on the way.
    first, second = model[0], model[2]
    hidden = F.linear(x.abs(), first.weight_mean.abs(), first.bias_mean.abs())
    magnitude = F.linear(hidden, second.weight_mean.abs(), second.bias_mean.abs()).detach()
    tolerance = roundoff_tolerance(magnitude, 4 + 8, torch.float32)
    assert bool(((pred.logits - expected).abs() <= tolerance).all())
    # a wrong example is off by about the logits' spread, far above that
    assert float((expected[1:] - expected[:-1]).abs().amax()) > 1e3 * float(tolerance.amax())


def test_batched_samples_follow_the_posterior_predictive():
    # One Flipout layer: each sample of example b is N(x_b m + b, sum_i x_bi^2 s_i^2 + s_b^2). The copies in
    # one pass share Delta W (uncorrelated, not independent): pool many calls, count calls as independent.
    torch.manual_seed(0)
    model = nn.Sequential(FlipoutLinear(4, 2, posterior_scale_init=0.4)).double()
    x = torch.randn(3, 4, dtype=torch.float64)
    calls = 2000
    logits = torch.cat([predict(model, x, num_samples=3).logits for _ in range(calls)])  # [3 * calls, B, C]
    layer = model[0]
    mean = x @ layer.weight_mean.T + layer.bias_mean
    var = x.square() @ layer.posterior_scale("weight").square().T + layer.posterior_scale("bias").square()
    assert bool(((logits.mean(0) - mean).abs() < 5 * (var / calls).sqrt()).all())
    assert bool(((logits.var(0) - var).abs() < 5 * var * math.sqrt(2 / calls)).all())
    assert not torch.equal(logits[0], logits[1])


def test_shared_sample_layers_get_one_pass_per_sample():
    torch.manual_seed(0)
    model = nn.Sequential(GaussianLinear(4, 3, posterior_scale_init=0.5))
    x = torch.randn(4).expand(2, 4)  # two copies of one input
    logits = predict(model, x, num_samples=5).logits
    assert torch.equal(logits[:, 0], logits[:, 1])  # one weight sample per pass, shared by the batch
    assert len({tuple(row.tolist()) for row in logits[:, 0]}) == 5  # and a fresh one for each sample
    with pytest.raises(
        ValueError, match=r"samples_per_pass: expected 1 because 0 share\(s\) one weight sample"
    ):
        predict(model, x, num_samples=5, samples_per_pass=5)


def test_eval_mode_inside_and_training_flags_restored():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), MCDropout(0.5), nn.Linear(4, 2)).train()
    model[3].eval()
    stats = model[1].running_mean.clone()
    pred = predict(model, torch.randn(6, 3), num_samples=3)
    assert torch.equal(model[1].running_mean, stats)  # batch norm ran in eval mode
    assert not torch.equal(pred.logits[0], pred.logits[1])  # MC dropout still sampled
    assert [m.training for m in model] == [True, True, True, False]


def test_time_major_sequence_model_with_batch_dim():
    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = FlipoutLSTM(3, 4)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.rnn(x)[0][-1])

    torch.manual_seed(0)
    model = Classifier()
    x = torch.randn(6, 5, 3)  # [T, B, F]
    assert predict(model, x, num_samples=4, batch_dim=1).logits.shape == (4, 5, 2)
    with pytest.raises(ValueError, match=r"model output: expected 24 rows .* is batch_dim=0 right\?"):
        predict(model, x, num_samples=4)


def test_deterministic_models_and_bad_arguments():
    model = nn.Sequential(nn.Linear(3, 2))
    x = torch.randn(4, 3)
    assert predict(model, x, num_samples=1).logits.shape == (1, 4, 2)
    with pytest.raises(ValueError, match="num_samples: expected 1 for a model with no sampling layer"):
        predict(model, x, num_samples=2)
    bayesian = nn.Sequential(FlipoutLinear(3, 2))
    with use_posterior_mean(bayesian), pytest.raises(ValueError, match="no sampling layer"):
        predict(bayesian, x, num_samples=2)
    with pytest.raises(ValueError, match="num_samples: expected an int >= 1"):
        predict(bayesian, x, num_samples=0)
    with pytest.raises(ValueError, match=r"batch_dim: expected an int in \[-2, 1\]"):
        predict(bayesian, x, num_samples=2, batch_dim=2)
    with pytest.raises(TypeError, match=r"x: expected a torch\.Tensor"):
        predict(bayesian, x.tolist(), num_samples=2)
    with pytest.raises(TypeError, match=r"model: expected a torch\.nn\.Module"):
        predict(lambda t: t, x, num_samples=2)
    with pytest.raises(ValueError, match=r"model output: expected a 2-D tensor \[batch, classes\]"):
        predict(nn.Sequential(FlipoutLinear(3, 2), nn.Unflatten(1, (1, 2))), x, num_samples=2)
