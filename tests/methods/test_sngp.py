"""uqkit SNGP (Liu et al. 2020) and the ``sngp`` / ``heteroscedastic`` benchmark methods."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from uqkit.bench import methods_distance
from uqkit.bench.registry import METHODS, MethodContext, build_method
from uqkit.bench.trainer import TrainConfig, train_method
from uqkit.methods.sngp import SNGP
from uqkit.prediction import Prediction


class _Residual(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.relu(self.linear(x))


def _two_clusters(n: int = 200, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    centres = torch.tensor([[-1.0, 0.0], [1.0, 0.0]])[labels]
    return centres + 0.3 * torch.randn(n, 2, generator=generator), labels


def _sngp(seed: int = 0, **options) -> SNGP:
    torch.manual_seed(seed)
    backbone = nn.Sequential(nn.Linear(2, 32), _Residual(32), _Residual(32))
    return SNGP(backbone, 32, 2, num_features=128, **options)


def _fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 30) -> list[float]:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(epochs):
        model.train()
        model.reset_precision()
        for start in range(0, len(y), 50):
            loss = F.cross_entropy(model(x[start : start + 50]), y[start : start + 50])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def test_every_hidden_layer_is_bounded_after_training():
    model = _sngp(spectral_bound=0.9)
    x, y = _two_clusters()
    _fit(model, x, y, epochs=60)
    for name in ("0", "1.linear", "2.linear"):
        layer = model.backbone.get_submodule(name)
        sigma = float(torch.linalg.matrix_norm(layer.weight.detach(), ord=2))
        # one power-iteration step per training forward tracks the moving weight to within ~1%
        assert sigma <= 0.9 * 1.01, (name, sigma)


@pytest.mark.parametrize("likelihood", ["gaussian", "softmax"])
def test_sngp_is_distance_aware_after_training(likelihood):
    model = _sngp(likelihood=likelihood)
    x, y = _two_clusters()
    losses = _fit(model, x, y)
    assert losses[-1] < 0.5 * losses[0]
    far_points = torch.tensor([[0.0, 6.0], [0.0, -6.0], [8.0, 8.0], [-8.0, 5.0]])
    with torch.no_grad():
        train_prediction = model.predict(x)
        near = model.gp.predictive_variance(model.backbone(x))
        far = model.gp.predictive_variance(model.backbone(far_points))
        far_prediction = model.predict(far_points)
    print(f"{likelihood}: mean variance near {float(near.mean()):.3f}, far {far.tolist()}")
    assert float((train_prediction.predicted_class == y).float().mean()) > 0.95
    assert bool((far > near.mean()).all())
    if likelihood == "gaussian":  # unit Hessian weights: the GP-regression posterior shrinks near the data
        assert bool((far > 2 * near.mean()).all()) and bool((far > near.max()).all())
    # With the softmax Laplace weights p (1 - p), confidently classified training points barely shrink
    # the posterior (here: mean variance ~0.9 near vs ~1 far); distance awareness then comes mostly from
    # the mean logits, which fall back towards zero away from the data:
    # far away the predictive distribution is less confident than on the training data
    assert float(far_prediction.confidence.max()) < float(train_prediction.confidence.mean())


def test_predict_sample_counts():
    model = _sngp(num_samples=6).eval()
    x, _ = _two_clusters(10)
    assert model.predict(x).logits.shape == (6, 10, 2)
    mean_field = model.predict(x, num_samples=None)
    assert mean_field.logits.shape == (6, 10, 2)  # None falls back to the model's setting
    assert _sngp().eval().predict(x).logits.shape == (1, 10, 2)
    assert isinstance(model.predict(x, num_samples=3), Prediction)


def test_already_normalised_layers_are_kept():
    from uqkit.nn.spectral import spectral_norm

    torch.manual_seed(0)
    layer = spectral_norm(nn.Linear(3, 3), bound=0.5)
    model = SNGP(nn.Sequential(layer, nn.Linear(3, 4)), 4, 2)
    assert model.backbone[0].parametrizations.weight[0].bound == 0.5
    assert model.backbone[1].parametrizations.weight[0].bound == 0.95


def test_sngp_bad_inputs():
    with pytest.raises(TypeError, match=r"backbone: expected an nn\.Module"):
        SNGP(lambda x: x, 2, 2)
    with pytest.raises(ValueError, match=r"backbone: expected at least one nn\.Linear"):
        SNGP(nn.ReLU(), 2, 2)
    with pytest.raises(ValueError, match="num_samples: expected an int >= 1"):
        SNGP(nn.Linear(2, 2), 2, 2, num_samples=0)
    with pytest.raises(ValueError, match="bound: expected a finite number > 0"):
        SNGP(nn.Linear(2, 2), 2, 2, spectral_bound=-1.0)
    model = SNGP(nn.Linear(2, 3), 2, 2)
    with pytest.raises(ValueError, match=r"hidden: expected 2 features"):
        model(torch.randn(4, 2))


# -- benchmark methods -------------------------------------------------------------------------------------

CONTEXTS = {
    "mlp": MethodContext((1, 28, 28), 10, "mlp", 100),
    "lenet5": MethodContext((1, 28, 28), 10, "lenet5", 100),
    "cnn1d": MethodContext((1, 40), 10, "cnn1d", 100),
    "resmlp": MethodContext((2,), 2, "resmlp", 100),
}


def test_methods_are_registered():
    assert "sngp" in METHODS and "heteroscedastic" in METHODS
    assert METHODS["sngp"].tasks is None and METHODS["heteroscedastic"].tasks is None


@pytest.mark.parametrize("model", list(CONTEXTS))
@pytest.mark.parametrize("name", ["sngp", "heteroscedastic"])
def test_bench_methods_train_and_predict(name, model):
    context = CONTEXTS[model]
    torch.manual_seed(0)
    method = build_method(name, context)
    x = torch.randn(64, *context.input_shape)
    y = (x.flatten(1)[:, 0] > 0).long()  # learnable from the first input coordinate
    optimizer = torch.optim.Adam(method.parameters(), lr=3e-3)
    method.train()
    losses = []
    for step in range(25):
        if name == "sngp" and step % 5 == 0:
            method.on_epoch_start(step // 5, 5)
        loss = method.training_loss(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    method.eval()
    with torch.no_grad():
        prediction = method.predict(x[:7])
    assert isinstance(prediction, Prediction)
    assert prediction.logits.shape == (method.num_samples, 7, context.num_classes)
    # SNGP's samples are posterior draws; the heteroscedastic head's label-noise draws make one distribution
    expected_samples = methods_distance.SNGP_SAMPLES if name == "sngp" else 1
    assert method.num_samples == expected_samples
    if name == "heteroscedastic":
        assert method.network[1].num_samples == methods_distance.HETEROSCEDASTIC_SAMPLES


def test_sngp_parameter_count_matches_the_mlp():
    context = CONTEXTS["mlp"]
    deterministic = sum(p.numel() for p in build_method("deterministic", context).parameters())
    sngp = sum(p.numel() for p in build_method("sngp", context).parameters())
    assert abs(sngp - deterministic) / deterministic < 0.01


def test_on_epoch_start_resets_the_precision():
    method = build_method("sngp", CONTEXTS["resmlp"])
    gp = method.network.gp
    method.train()
    method.training_loss(torch.randn(8, 2), torch.zeros(8, dtype=torch.long))
    assert not torch.equal(gp.precision, torch.eye(gp.num_features))
    method.on_epoch_start(1, 3)
    assert torch.equal(gp.precision, torch.eye(gp.num_features))


def test_trainer_checkpoint_round_trip_with_lazy_convolutions(tmp_path):
    """The runner reloads a finished method into a freshly built one: spectral-norm buffers of convolutions
    (whose input shape is only known after a forward pass) and the GP precision must load."""
    context = CONTEXTS["lenet5"]
    torch.manual_seed(0)
    method = build_method("sngp", context)
    x, y = torch.randn(40, 1, 28, 28), torch.arange(40) % 10
    config = TrainConfig(epochs=1, batch_size=20, learning_rate=1e-3, progress=False)
    train_method(method, "sngp", x, y, x[:10], y[:10], config, checkpoint_path=tmp_path / "ckpt.pt")
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)["method"]
    fresh = build_method("sngp", context)
    fresh.load_state_dict(state)
    method.eval()
    fresh.eval()
    with torch.no_grad():
        torch.manual_seed(1)
        expected = method.predict(x[:5]).logits
        torch.manual_seed(1)
        torch.testing.assert_close(fresh.predict(x[:5]).logits, expected)


def test_split_output_layer():
    hidden, head = methods_distance.split_output_layer(
        nn.Sequential(nn.Flatten(), nn.Sequential(nn.Linear(4, 3)))
    )
    assert isinstance(head, nn.Linear) and head.in_features == 4
    assert len(hidden) == 1
    with pytest.raises(ValueError, match=r"model: expected a sequential backbone ending with an nn\.Linear"):
        methods_distance.split_output_layer(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
