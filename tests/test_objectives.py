"""KL collection and the ELBO loss (uqkit/objectives.py)."""

import pytest
import torch
import torch.nn.functional as F
from torch import distributions as D
from torch import nn

from uqkit.nn import FlipoutConv2d, FlipoutLinear, NormalPrior, ReparameterizationLSTM
from uqkit.objectives import ELBO, kl_divergence


def _closed_form(model, prior_scale):
    """Sum over every (mean, rho) pair of the model of KL(N(m, softplus(rho)^2) || N(0, s^2))."""
    params = dict(model.named_parameters())
    total = torch.zeros((), dtype=torch.float64)
    for name, mean in params.items():
        if name.endswith("_mean"):
            scale = F.softplus(params[name[: -len("_mean")] + "_rho"])
            prior = D.Normal(
                torch.zeros((), dtype=torch.float64), torch.tensor(prior_scale, dtype=torch.float64)
            )
            total = total + D.kl_divergence(D.Normal(mean.double(), scale.double()), prior).sum()
    return total


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        prior = NormalPrior(scale=0.5)
        self.features = nn.Sequential(FlipoutConv2d(1, 2, 3, prior=prior), nn.ReLU(), nn.Flatten())
        self.rnn = ReparameterizationLSTM(4, 3, num_layers=2, prior=prior)
        self.head = FlipoutLinear(2 * 4 * 4, 3, prior=prior)

    def forward(self, x):
        return self.head(self.features(x))


def test_model_kl_is_the_sum_of_every_layers_closed_form():
    torch.manual_seed(0)
    model = _Net()
    expected = _closed_form(model, 0.5)
    assert kl_divergence(model).item() == pytest.approx(expected.item(), rel=1e-5)


def test_shared_layers_and_custom_kl_modules_count_once():
    layer = FlipoutLinear(3, 3)
    assert kl_divergence(nn.Sequential(layer, nn.ReLU(), layer)).item() == pytest.approx(
        layer.kl_divergence().item()
    )

    class Wrapper(nn.Module):  # a module with its own kl_divergence() covers its children
        def __init__(self):
            super().__init__()
            self.inner = FlipoutLinear(3, 3)

        def kl_divergence(self):
            return 2 * self.inner.kl_divergence()

    wrapper = Wrapper()
    model = nn.Sequential(wrapper, FlipoutLinear(3, 2))
    expected = 2 * wrapper.inner.kl_divergence() + model[1].kl_divergence()
    assert kl_divergence(model).item() == pytest.approx(expected.item())


def test_kl_divergence_errors():
    with pytest.raises(ValueError, match="model: expected at least one Bayesian layer"):
        kl_divergence(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(TypeError, match=r"model: expected a torch\.nn\.Module"):
        kl_divergence([FlipoutLinear(2, 2)])


def _model_and_batch():
    torch.manual_seed(0)
    model = nn.Sequential(FlipoutLinear(4, 8), nn.ReLU(), FlipoutLinear(8, 3))
    return model, torch.randn(6, 4), torch.tensor([0, 1, 2, 2, 1, 0])


def test_elbo_is_mean_nll_plus_kl_over_num_data():
    model, x, y = _model_and_batch()
    logits = model(x)
    elbo = ELBO(num_data=500)
    loss = elbo(logits, y, model)
    expected = F.cross_entropy(logits, y) + kl_divergence(model) / 500
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(elbo.last_kl, kl_divergence(model).detach())
    loss.backward()
    assert model[0].weight_rho.grad is not None


def test_elbo_averages_the_nll_over_samples_without_repeating_targets():
    model, x, y = _model_and_batch()
    logits = torch.stack([model(x) for _ in range(5)])  # [S, B, C]
    loss = ELBO(num_data=100, kl_weight=0.0)(logits, y, model)
    expected = torch.stack([F.cross_entropy(logits[s], y) for s in range(5)]).mean()
    torch.testing.assert_close(loss, expected)


def test_kl_warmup_rises_linearly_over_training_calls_only():
    model, x, y = _model_and_batch()
    elbo = ELBO(num_data=10, kl_weight=0.8, warmup_steps=4)
    kl = kl_divergence(model).item()
    weights = []
    for call in range(6):
        if call == 2:
            with torch.no_grad():  # evaluation does not advance the schedule
                elbo(model(x), y, model)
        logits = model(x)
        loss = elbo(logits, y, model)
        weights.append((loss.item() - F.cross_entropy(logits, y).item()) * 10 / kl)
    assert weights == pytest.approx([0.2, 0.4, 0.6, 0.8, 0.8, 0.8], rel=1e-4)
    restored = ELBO(num_data=10, kl_weight=0.8, warmup_steps=4)
    restored.load_state_dict(elbo.state_dict())
    assert restored.step == elbo.step == 6
    assert restored.current_kl_weight == pytest.approx(0.8)


def test_custom_nll_for_regression():
    torch.manual_seed(0)
    model = FlipoutLinear(3, 1)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    elbo = ELBO(num_data=50, nll=lambda out, target: 0.5 * (out - target).square().mean())
    out = model(x)
    torch.testing.assert_close(
        elbo(out, y, model), 0.5 * (out - y).square().mean() + model.kl_divergence() / 50
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_data": 0}, ValueError, "num_data: expected an int >= 1"),
        ({"num_data": 10, "kl_weight": -1.0}, ValueError, "kl_weight: expected a finite number >= 0"),
        ({"num_data": 10, "warmup_steps": -2}, ValueError, "warmup_steps: expected an int >= 0"),
        ({"num_data": 10, "nll": "mse"}, TypeError, "nll: expected a callable"),
    ],
)
def test_elbo_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ELBO(**kwargs)


def test_elbo_rejects_bad_inputs():
    model, x, y = _model_and_batch()
    elbo = ELBO(num_data=10)
    with pytest.raises(ValueError, match="targets: expected 6 labels"):
        elbo(model(x), y[:5], model)
    with pytest.raises(TypeError, match="targets: expected integer class indices"):
        elbo(model(x), y.float(), model)
    with pytest.raises(ValueError, match=r"targets: expected class indices in \[0, 2\]"):
        elbo(model(x), y + 1, model)
    with pytest.raises(ValueError, match="logits: expected a 2-D or 3-D tensor"):
        elbo(model(x)[0], y, model)
    with pytest.raises(ValueError, match="model: expected at least one Bayesian layer"):
        elbo(model(x), y, nn.Linear(2, 2))
