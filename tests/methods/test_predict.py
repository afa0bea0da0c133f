"""Monte Carlo prediction (uqkit/methods/prediction_protocol.py)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from uqkit.methods import FlipoutConfig, bayesianize_, predict
from uqkit.nn import FlipoutLinear, FlipoutLSTM, MCDropout, ReparameterizationLinear, use_posterior_mean
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
    model = nn.Sequential(ReparameterizationLinear(4, 3, posterior_scale_init=0.5))
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


class _TimeMajorClassifier(nn.Module):
    """``[T, B, F]`` -> Flipout LSTM -> deterministic head on the last step (the LSTM is the only noise)."""

    def __init__(self, features: int, hidden: int, classes: int, scale: float) -> None:
        super().__init__()
        self.rnn = FlipoutLSTM(features, hidden, posterior_scale_init=scale)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][-1])


def _mean_with_error(units: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over dim 0 of independent units and its standard error, ``std / sqrt(n)``."""
    return units.mean(0), units.std(0) / math.sqrt(units.shape[0])


def _agree(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """How many standard errors of their difference two independent estimates ``(value, se)`` are apart."""
    return (a[0] - b[0]).abs() / (a[1].square() + b[1].square()).sqrt()


def test_time_major_sequence_model_matches_each_example_run_alone():
    """predict(batch_dim=1) on a time-major LSTM model: each of the S samples of example b has the law of the
    model run on example b alone, and no two rows of one pass share a perturbation.

    Reference: ``passes`` independent forward passes of each example alone. Under test: ``calls`` calls of
    predict with S = 2 (the rows of one call share Delta W, so the calls are the independent units), on
    three distinct examples and a fourth that repeats the first. Means and variances must agree with the
    reference within 5 standard errors of their difference (a mix-up of examples in the [S * B] batch moves
    a mean by far more, checked below). Two rows of one pass with the same input, whether two samples of one
    example or two identical examples, differ only by their signs: ``(y - y')^2 / 2`` estimates
    E[Var(y | Delta W)], which must be more than 5 standard errors above 0 (rows that share a perturbation
    give exactly 0) and the same for both pairs.
    """
    torch.manual_seed(0)
    model = _TimeMajorClassifier(3, 8, 2, scale=0.05).double()
    with torch.no_grad():
        model.head.weight.mul_(4.0)  # spread the examples' mean logits apart
    scales = torch.tensor([[[0.2], [3.0], [-3.0]]], dtype=torch.float64)
    distinct = torch.randn(5, 3, 3, dtype=torch.float64) * scales  # [T, B, F]
    x = torch.cat([distinct, distinct[:, :1]], dim=1)  # example 3 is example 0 again
    calls, passes = 800, 800
    samples = torch.stack([predict(model, x, num_samples=2, batch_dim=1).logits for _ in range(calls)])
    with torch.no_grad():
        alone = torch.stack([torch.cat([model(x[:, b : b + 1]) for b in range(3)]) for _ in range(passes)])
    assert samples.shape == (calls, 2, 4, 2) and alone.shape == (passes, 3, 2)
    alone = torch.cat([alone, alone[:, :1]], dim=1)  # the reference of example 3 is that of example 0

    mean = _mean_with_error(samples.mean(1))
    ref_mean = _mean_with_error(alone)
    assert bool((_agree(mean, ref_mean) < 5).all()), _agree(mean, ref_mean)
    # power: swapping two distinct examples would move a mean by more than 3 x 5 standard errors
    gaps = (ref_mean[0][:3].unsqueeze(0) - ref_mean[0][:3].unsqueeze(1)).abs().amax(-1)
    tolerance = 5 * (mean[1].square() + ref_mean[1].square()).sqrt()
    assert float(gaps[~torch.eye(3, dtype=torch.bool)].min()) > 3 * float(tolerance.max())

    var = _mean_with_error((samples - mean[0]).square().mean(1))
    ref_var = _mean_with_error((alone - ref_mean[0]).square())
    assert bool((_agree(var, ref_var) < 5).all()), _agree(var, ref_var)

    copies = _mean_with_error((samples[:, 0] - samples[:, 1]).square() / 2)  # [B, C]
    twins = _mean_with_error((samples[:, :, 0] - samples[:, :, 3]).square().mean(1) / 2)  # [C]
    assert bool((copies[0] > 5 * copies[1]).all()), copies[0] / copies[1]
    assert bool((twins[0] > 5 * twins[1]).all()), twins[0] / twins[1]
    assert bool((_agree(twins, (copies[0][0], copies[1][0])) < 5).all())

    # the layer-layout check does not get in the way of an error about the model's output rows
    plain = nn.Sequential(MCDropout(0.5), nn.Flatten(0, 1), nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"model output: expected 16 rows .* is batch_dim=1 right\?"):
        predict(plain, x.float(), num_samples=4, batch_dim=1)


class _TimeMajorLinear(nn.Module):
    """``[T, B, F]`` -> FlipoutLinear(batch_dim) at every step -> mean over T -> deterministic head.

    The logits are linear in the Flipout noise, so the law of one example is closed-form: with one weight
    sample ``W_b`` for all of example b's steps, ``y_b = A (W_b xbar_b + bias_b) + a``, ``xbar_b`` the mean of
    its steps, ``Var y_bc = sum_h A_ch^2 (sum_i sigma_hi^2 xbar_bi^2 + sigma_bias,h^2)``.
    """

    def __init__(self, batch_dim: int) -> None:
        super().__init__()
        self.encoder = FlipoutLinear(4, 6, batch_dim=batch_dim, posterior_scale_init=0.5)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).mean(0))

    def moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Closed-form ``[B, C]`` mean and variance of the logits of each example run alone."""
        xbar, layer, a = x.mean(0), self.encoder, self.head.weight
        hidden_var = xbar.square() @ layer.posterior_scale("weight").square().T
        hidden_var = hidden_var + layer.posterior_scale("bias").square()
        mean = self.head(xbar @ layer.weight_mean.T + layer.bias_mean)
        return mean.detach(), (hidden_var @ a.square().T).detach()


def test_time_major_flipout_linear_gives_each_example_and_sample_its_own_weights():
    """A FlipoutLinear with batch_dim=1 on [T, B, F]: every sample has the law of its example run alone
    (closed form), two samples of one call and two identical examples of one call are uncorrelated:
    E[(y - y')^2] / 2 is the full variance, not 0 (one shared perturbation) nor a fraction of it (noise drawn
    per time step).
    The layer with the default batch_dim=0 draws its signs per time step, shared by every example and
    sample; predict refuses it instead of returning identical samples."""
    torch.manual_seed(0)
    model = _TimeMajorLinear(batch_dim=1).double()
    x = torch.randn(7, 3, 4, dtype=torch.float64)
    x[:, 1] = x[:, 0]  # examples 0 and 1 are the same sequence
    calls = 4000
    samples = torch.stack([predict(model, x, num_samples=2, batch_dim=1).logits for _ in range(calls)])
    mean, var = model.moments(x)
    # each call's two copies are uncorrelated: count the calls as the independent units (wide side)
    got_mean, got_var = samples.mean((0, 1)), samples.var((0, 1))
    assert bool(((got_mean - mean).abs() < 5 * (var / calls).sqrt()).all())
    assert bool(((got_var - var).abs() < 5 * var * math.sqrt(2 / (calls - 1))).all())
    # the per-time-step alternative has a clearly smaller variance, so the check above has power
    per_step_var = (x.square().mean(0) / x.shape[0]) @ model.encoder.posterior_scale("weight").square().T
    per_step_var = (per_step_var + model.encoder.posterior_scale("bias").square() / x.shape[0]) @ (
        model.head.weight.square().T
    )
    assert bool(((var - per_step_var.detach()) > 10 * var * math.sqrt(2 / (calls - 1))).all())
    for a, b in ((samples[:, 0], samples[:, 1]), (samples[:, :, 0], samples[:, :, 1])):
        half_square, se = _mean_with_error((a - b).square() / 2)
        reference = var if a.shape[-2] == 3 else var[0]
        assert bool(((half_square - reference).abs() < 5 * se).all()), (half_square - reference) / se

    default = _TimeMajorLinear(batch_dim=0).double()
    with pytest.raises(
        ValueError,
        match=r"FlipoutLinear 'encoder': expected one sign vector for each of the 6 examples of "
        r"predict\(\.\.\., batch_dim=1\): 2 sample\(s\) x a batch of 3, got 7 sign vectors \(dim 0\) for "
        r"its input of shape \(7, 6, 4\).*FlipoutConfig\(batch_dim=k\)",
    ):
        predict(default, x, num_samples=2, batch_dim=1)


def test_flipout_config_batch_dim_converts_a_time_major_model():
    """bayesianize_ with FlipoutConfig(batch_dim=1) on the nn.Linear layers that see [T, B, F], and the
    default on the head that sees [B, H]: the samples of one example differ, identical examples differ."""

    class Pooled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Sequential(nn.Linear(4, 8), nn.Tanh())
            self.head = nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.encoder(x).mean(0))

    torch.manual_seed(0)
    model = Pooled()
    time_major = FlipoutConfig(batch_dim=1, posterior_scale_init=0.3)
    bayesianize_(model, time_major, filter_fn=lambda module, name: name.startswith("encoder"))
    batch_first = FlipoutConfig(posterior_scale_init=0.3)
    bayesianize_(model, batch_first, filter_fn=lambda module, name: name == "head")
    assert model.encoder[0].batch_dim == 1 and model.head.batch_dim == 0
    x = torch.randn(5, 1, 4).expand(5, 3, 4)  # three copies of one sequence
    logits = predict(model, x, num_samples=4, batch_dim=1).logits  # [4, 3, 3]
    rows = logits.reshape(12, 3)
    assert len({tuple(row.tolist()) for row in rows}) == 12  # no two samples or examples alike
    with pytest.raises(ValueError, match=r"FlipoutLinear 'encoder\.0': expected one sign vector"):
        predict(model, x, num_samples=4)  # batch_dim=0 reads the 5 steps as examples; the encoder disagrees
    with pytest.raises(ValueError, match=r"batch_dim: expected an int >= 0, got -1"):
        FlipoutConfig(batch_dim=-1)


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
    with pytest.raises(TypeError, match=r"inputs: expected at least one torch\.Tensor input, got \(list\)"):
        predict(bayesian, x.tolist(), num_samples=2)
    with pytest.raises(TypeError, match=r"inputs\[1\]: got the int 2; num_samples is keyword-only"):
        predict(bayesian, x, 2)  # the signature before issue 18
    with pytest.raises(TypeError, match=r"model: expected a torch\.nn\.Module"):
        predict(lambda t: t, x, num_samples=2)
    with pytest.raises(ValueError, match=r"model output: expected a 2-D tensor \[batch, classes\]"):
        predict(nn.Sequential(FlipoutLinear(3, 2), nn.Unflatten(1, (1, 2))), x, num_samples=2)
