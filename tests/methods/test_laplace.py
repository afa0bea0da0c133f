"""Last-layer Laplace (uqkit/methods/laplace.py, uqkit/methods/laplace_curvature.py) against closed forms.

The oracles here need no peer library: the GGN summed from per-example Jacobians (``torch.func.jacrev``) and
loss Hessians in the outputs (``torch.func.hessian``), dense inverses and log-determinants in float64, the
evidence's stationarity, Monte Carlo moments, and a loop over an ensemble's members. Comparisons with
laplace-torch are in test_laplace_oracle.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import uqkit
from uqkit.methods.laplace import LastLayerLaplace
from uqkit.methods.laplace_curvature import softmax_variances

pytestmark = pytest.mark.usefixtures("one_thread")

IN, HIDDEN, CLASSES, OUTPUTS, N = 3, 5, 4, 2, 40


def _mlp(outputs: int, seed: int = 0, bias: bool = True) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(IN, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, outputs, bias=bias)).double()


def _data(likelihood: str, rows: int = N, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, IN, generator=generator, dtype=torch.float64)
    if likelihood == "classification":
        return x, torch.randint(0, CLASSES, (rows,), generator=generator)
    return x, torch.randn(rows, OUTPUTS, generator=generator, dtype=torch.float64)


def _jacobians(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(J [N, C, P], f [N, C])``: Jacobians in the last layer's weight (row by row), then bias; jacrev."""
    layer = model[-1]
    features = model[:-1](x).detach()
    params = {name: p.detach() for name, p in layer.named_parameters()}

    def outputs(values: dict, phi: torch.Tensor) -> torch.Tensor:
        return functional_call(layer, values, (phi,))

    rows = []
    for phi in features:
        jac = jacrev(outputs)(params, phi)
        rows.append(torch.cat([jac[name].flatten(1) for name in params], dim=1))
    return torch.stack(rows), layer(features).detach()


def _output_hessians(likelihood: str, f: torch.Tensor, y: torch.Tensor, sigma: float) -> torch.Tensor:
    """``[N, C, C]`` Hessians of each example's negative log-likelihood in its outputs (reverse over reverse:
    torch.func.hessian's forward mode loads TorchScript decompositions, deprecated in torch 2.13)."""

    def nll(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if likelihood == "classification":
            return F.cross_entropy(out[None], target[None])
        return 0.5 * ((out - target) / sigma).square().sum()

    return torch.stack([jacrev(jacrev(nll))(out, target) for out, target in zip(f, y, strict=True)])


def _ggn(model, x, y, likelihood, sigma=1.0):
    jac, f = _jacobians(model, x)
    lam = _output_hessians(likelihood, f, y, sigma)
    return torch.einsum("ncp,nck,nkq->pq", jac, lam, jac), jac, lam, f


@pytest.mark.parametrize("likelihood", ["classification", "regression"])
@pytest.mark.parametrize("bias", [True, False])
def test_full_ggn_is_the_sum_of_per_example_jacobian_products(likelihood, bias):
    outputs = CLASSES if likelihood == "classification" else OUTPUTS
    model = _mlp(outputs, bias=bias)
    x, y = _data(likelihood)
    sigma = None if likelihood == "classification" else 0.7
    la = LastLayerLaplace(model, likelihood, "full", prior_precision=0.3, sigma=sigma).fit(
        x, y, batch_size=16
    )
    expected, *_ = _ggn(model, x, y, likelihood, sigma or 1.0)
    expected = expected + 0.3 * torch.eye(expected.shape[0], dtype=torch.float64)
    got = la.precision_matrix()
    assert got.shape == (1, *expected.shape)
    assert torch.allclose(got[0], expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("likelihood", ["classification", "regression"])
def test_kron_and_diag_structures_follow_their_definitions(likelihood):
    outputs = CLASSES if likelihood == "classification" else OUTPUTS
    model = _mlp(outputs)
    x, y = _data(likelihood)
    sigma = None if likelihood == "classification" else 0.7
    full, _, lam, _ = _ggn(model, x, y, likelihood, sigma or 1.0)
    eye = torch.eye(full.shape[0], dtype=torch.float64)
    diag = LastLayerLaplace(model, likelihood, "diag", prior_precision=0.3, sigma=sigma).fit(x, y)
    assert torch.allclose(diag.precision_matrix()[0], torch.diag(full.diagonal()) + 0.3 * eye, rtol=1e-10)
    # K-FAC: weight block B (x) A with B = sum_i Lambda_i and A = mean_i phi_i phi_i^T; bias block B
    phi = model[:-1](x).detach()
    factor_b, factor_a = lam.sum(0), phi.T @ phi / len(x)
    expected = torch.block_diag(torch.kron(factor_b, factor_a), factor_b) + 0.3 * eye
    kron = LastLayerLaplace(model, likelihood, "kron", prior_precision=0.3, sigma=sigma).fit(
        x, y, batch_size=7
    )
    assert torch.allclose(kron.precision_matrix()[0], expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("hessian", ["full", "kron", "diag"])
def test_loader_and_tensors_in_other_batch_sizes_give_the_same_posterior(hessian):
    model = _mlp(CLASSES)
    x, y = _data("classification")
    a = LastLayerLaplace(model, "classification", hessian).fit(DataLoader(TensorDataset(x, y), batch_size=6))
    b = LastLayerLaplace(model, "classification", hessian).fit(x, y)
    assert torch.allclose(a.precision_matrix(), b.precision_matrix(), rtol=1e-10, atol=1e-12)
    assert torch.allclose(a.prior_precision, b.prior_precision, rtol=1e-9)


@pytest.mark.parametrize("likelihood", ["classification", "regression"])
@pytest.mark.parametrize("hessian", ["full", "kron", "diag"])
def test_evidence_matches_its_dense_formula_and_is_maximal(likelihood, hessian):
    outputs = CLASSES if likelihood == "classification" else OUTPUTS
    model = _mlp(outputs)
    x, y = _data(likelihood)
    sigma = None if likelihood == "classification" else 0.7
    la = LastLayerLaplace(model, likelihood, hessian, sigma=sigma).fit(x, y)
    delta = float(la.prior_precision)
    weights = torch.cat([p.detach().flatten() for p in model[-1].parameters()])
    f = model(x).detach()
    if likelihood == "classification":
        log_lik = -F.cross_entropy(f, y, reduction="sum")
    else:
        log_lik = -0.5 * ((f - y) / sigma).square().sum() - y.numel() * math.log(
            sigma * math.sqrt(2 * math.pi)
        )
    for value in (0.05, delta, 7.0):
        precision = LastLayerLaplace(model, likelihood, hessian, prior_precision=value, sigma=sigma).fit(x, y)
        dense = precision.precision_matrix()[0]
        expected = log_lik - 0.5 * (
            torch.logdet(dense) - len(weights) * math.log(value) + value * weights.square().sum()
        )
        assert torch.allclose(la.log_marginal_likelihood(value), expected[None], rtol=1e-10)
    # the maximum: MacKay's fixed point delta = gamma / ||theta||^2, and lower evidence on either side
    eigenvalues = torch.linalg.eigvalsh(la.precision_matrix()[0]) - delta
    gamma = (eigenvalues / (eigenvalues + delta)).sum()
    assert math.isclose(delta, float(gamma / weights.square().sum()), rel_tol=1e-8)
    best = la.log_marginal_likelihood()
    assert bool((la.log_marginal_likelihood(delta * 1.01) < best).all())
    assert bool((la.log_marginal_likelihood(delta / 1.01) < best).all())


@pytest.mark.parametrize("hessian", ["full", "kron", "diag"])
def test_probit_predictive_from_the_dense_posterior(hessian):
    model = _mlp(CLASSES)
    x, y = _data("classification")
    x_test, _ = _data("classification", rows=9, seed=5)
    la = LastLayerLaplace(model, "classification", hessian).fit(x, y)
    covariance = torch.linalg.inv(la.precision_matrix()[0])
    jac, f = _jacobians(model, x_test)
    f_cov = jac @ covariance @ jac.mT
    mean, cov = la.linearized_outputs(x_test)
    assert torch.allclose(mean[0], f, rtol=1e-12) and torch.allclose(cov[0], f_cov, rtol=1e-9, atol=1e-12)
    expected = torch.softmax(f / (1 + math.pi / 8 * f_cov.diagonal(dim1=1, dim2=2)).sqrt(), dim=-1)
    prediction = uqkit.predict(la, x_test)
    assert isinstance(prediction, uqkit.Prediction) and prediction.logits.shape == (1, 9, CLASSES)
    assert torch.allclose(prediction.probs, expected, rtol=1e-10)
    assert torch.allclose(la(x_test).probs, expected, rtol=1e-10)  # forward is predict
    # the uncertainty is the posterior's: a larger prior precision shrinks it towards the MAP softmax
    tight = LastLayerLaplace(model, "classification", hessian, prior_precision=1e8).fit(x, y)
    assert torch.allclose(uqkit.predict(tight, x_test).probs, f.softmax(-1), atol=1e-6)
    assert not torch.allclose(prediction.probs, f.softmax(-1), atol=1e-3)


@pytest.mark.parametrize("hessian", ["full", "kron", "diag"])
def test_monte_carlo_logits_have_the_linearised_mean_and_covariance(hessian):
    model = _mlp(CLASSES)
    x, y = _data("classification")
    x_test, _ = _data("classification", rows=3, seed=5)
    la = LastLayerLaplace(model, "classification", hessian, prior_precision=0.5).fit(x, y)
    mean, cov = (t[0] for t in la.linearized_outputs(x_test))
    samples = 20_000
    generator = torch.Generator().manual_seed(0)
    logits = la.predict(x_test, num_samples=samples, generator=generator).logits  # [S, B, C]
    assert logits.shape == (samples, 3, CLASSES)
    variance = cov.diagonal(dim1=1, dim2=2)
    # 5 standard errors of a sample mean, and of a Gaussian sample covariance, sqrt((s_ck^2 + s_cc s_kk) / S)
    assert bool(((logits.mean(0) - mean).abs() <= 5 * (variance / samples).sqrt()).all())
    centred = logits - logits.mean(0)
    sample_cov = torch.einsum("sbc,sbk->bck", centred, centred) / (samples - 1)
    spread = ((cov.square() + variance[:, :, None] * variance[:, None, :]) / samples).sqrt()
    assert bool(((sample_cov - cov).abs() <= 5 * spread).all())
    again = la.predict(x_test, num_samples=samples, generator=torch.Generator().manual_seed(0)).logits
    assert torch.equal(logits, again)
    pred = uqkit.predict(la, x_test, num_samples=8)
    assert pred.logits.shape == (8, 3, CLASSES) and bool((pred.mutual_information > 0).all())


@pytest.mark.parametrize("hessian", ["full", "kron", "diag"])
def test_regression_predictive_variance_is_model_variance_plus_noise(hessian):
    model = _mlp(OUTPUTS)
    x, y = _data("regression")
    x_test, _ = _data("regression", rows=6, seed=5)
    la = LastLayerLaplace(model, "regression", hessian, sigma=0.7).fit(x, y)
    covariance = torch.linalg.inv(la.precision_matrix()[0])
    jac, f = _jacobians(model, x_test)
    model_variance = (jac @ covariance @ jac.mT).diagonal(dim1=1, dim2=2)
    prediction = uqkit.predict(la, x_test)
    assert isinstance(prediction, uqkit.GaussianPrediction)
    assert prediction.sample_mean.shape == (1, 6, OUTPUTS)
    assert torch.allclose(prediction.mean, f, rtol=1e-12)
    assert torch.allclose(prediction.variance, model_variance + 0.49, rtol=1e-10)
    # Monte Carlo: the sampled means carry the model's variance (epistemic), the noise stays aleatoric
    samples = uqkit.predict(la, x_test, num_samples=4000)
    assert samples.sample_mean.shape == (4000, 6, OUTPUTS)
    assert torch.allclose(samples.aleatoric_variance, torch.full_like(f, 0.49))
    assert bool(
        (
            (samples.epistemic_variance - model_variance).abs() <= 5 * model_variance * math.sqrt(2 / 4000)
        ).all()
    )


def test_regression_noise_defaults_to_the_training_residual():
    model = _mlp(OUTPUTS)
    x, y = _data("regression")
    la = LastLayerLaplace(model, "regression", "kron").fit(x, y)
    rms = (model(x) - y).square().mean().sqrt()
    assert torch.allclose(la.sigma, rms[None].detach(), rtol=1e-12)
    one_output = _mlp(1)
    la = LastLayerLaplace(one_output, "regression", "diag", sigma=0.5).fit(x, y[:, 0])  # [N] targets, K = 1
    assert uqkit.predict(la, x[:3]).mean.shape == (3, 1)


@pytest.mark.parametrize("hessian", ["full", "kron", "diag"])
def test_validation_grid_picks_the_smallest_predictive_nll(hessian):
    model = _mlp(CLASSES)
    x, y = _data("classification")
    x_val, y_val = _data("classification", rows=30, seed=7)
    grid = [0.01, 0.1, 1.0, 10.0, 100.0]
    la = LastLayerLaplace(model, "classification", hessian, prior_precision="val_nll")
    la.fit(x, y, val=DataLoader(TensorDataset(x_val, y_val), batch_size=8))
    nll = []
    for value in grid:
        fixed = LastLayerLaplace(model, "classification", hessian, prior_precision=value).fit(x, y)
        nll.append(float(F.nll_loss(uqkit.predict(fixed, x_val).log_probs, y_val)))
    chosen = la.optimize_prior_precision("val_nll", x_val, y_val, grid=grid)
    assert float(chosen) == grid[nll.index(min(nll))]
    assert len(set(nll)) == len(nll)  # the grid values differ, so the choice means something


def test_validation_grid_for_regression_uses_the_gaussian_nll():
    model = _mlp(OUTPUTS)
    x, y = _data("regression")
    x_val, y_val = _data("regression", rows=30, seed=7)
    grid = [0.01, 0.3, 3.0, 30.0]
    la = LastLayerLaplace(model, "regression", "full", sigma=0.4).fit(x, y)
    nll = []
    for value in grid:
        fixed = LastLayerLaplace(model, "regression", "full", sigma=0.4, prior_precision=value).fit(x, y)
        pred = uqkit.predict(fixed, x_val)
        nll.append(float(F.gaussian_nll_loss(pred.mean, y_val, pred.variance, full=True)))
    assert float(la.optimize_prior_precision("val_nll", x_val, y_val, grid=grid)) == grid[nll.index(min(nll))]


class _HeadFirst(nn.Module):
    """A model whose output layer is registered before its body: not the last of ``named_modules``."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Module()
        self.head.fc = nn.Linear(HIDDEN, CLASSES)
        self.body = nn.Sequential(nn.Linear(IN, HIDDEN), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head.fc(self.body(x))


def test_a_named_last_layer_equals_the_same_network_as_a_sequential():
    torch.manual_seed(0)
    model = _HeadFirst().double()
    with pytest.raises(
        ValueError, match=r"its last module to be an nn.Linear .* 'body.1' is a Tanh.*last_layer"
    ):
        LastLayerLaplace(model)
    x, y = _data("classification")
    la = LastLayerLaplace(model, "classification", "full", last_layer="head.fc").fit(x, y)
    plain = nn.Sequential(model.body, model.head.fc)
    reference = LastLayerLaplace(plain, "classification", "full").fit(x, y)
    assert torch.allclose(la.precision_matrix(), reference.precision_matrix(), rtol=1e-12)
    assert torch.allclose(uqkit.predict(la, x[:5]).logits, uqkit.predict(reference, x[:5]).logits)
    with pytest.raises(ValueError, match=r"last_layer: the model has no module 'head.out' \(its nn.Linear"):
        LastLayerLaplace(model, last_layer="head.out")
    with pytest.raises(ValueError, match=r"last_layer: expected an nn.Linear, but 'body.1' is a Tanh"):
        LastLayerLaplace(model, last_layer="body.1")


class _Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = _mlp(CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * self.net(x)


def test_a_model_that_changes_the_last_layers_output_is_refused():
    x, y = _data("classification")
    with pytest.raises(
        ValueError, match=r"model output: expected the output of the last layer 'net.2' itself"
    ):
        LastLayerLaplace(_Scaled()).fit(x, y)


@pytest.mark.parametrize("hessian", ["full", "kron", "diag"])
def test_deep_ensemble_members_equal_one_laplace_each(hessian):
    torch.manual_seed(0)
    members = 3
    ensemble = uqkit.DeepEnsemble(lambda: _mlp(CLASSES, seed=torch.randint(0, 99, ()).item()), members)
    x, y = _data("classification")
    x_test, _ = _data("classification", rows=5, seed=5)
    la = LastLayerLaplace(ensemble, "classification", hessian).fit(x, y, batch_size=16)
    probit = uqkit.predict(la, x_test)
    assert probit.logits.shape == (members, 5, CLASSES)
    for index, member in enumerate(ensemble.members()):
        alone = LastLayerLaplace(member, "classification", hessian).fit(x, y)
        assert torch.allclose(la.prior_precision[index], alone.prior_precision[0], rtol=1e-9)
        assert torch.allclose(
            la.precision_matrix()[index], alone.precision_matrix()[0], rtol=1e-10, atol=1e-12
        )
        assert torch.allclose(probit.logits[index], uqkit.predict(alone, x_test).logits[0], atol=1e-12)
    # Monte Carlo: [M * S, B, C], member-major; each member's samples centre on its own logits
    samples = uqkit.predict(la, x_test, num_samples=members * 2000).logits.view(members, 2000, 5, CLASSES)
    mean, cov = la.linearized_outputs(x_test)
    error = (samples.mean(1) - mean).abs()
    assert bool((error <= 5 * (cov.diagonal(dim1=2, dim2=3) / 2000).sqrt()).all())
    with pytest.raises(ValueError, match=r"num_samples: expected a multiple of the M = 3 members, got 4"):
        uqkit.predict(la, x_test, num_samples=4)


def test_a_hessian_over_the_memory_budget_fails_before_allocating():
    # on the meta device nothing is allocated at all: the refusal comes from the sizes alone
    model = nn.Sequential(nn.Linear(8, 4096, device="meta"), nn.Linear(4096, 1000, device="meta"))
    params = 1000 * 4097
    full = 3 * params * params * 4
    with pytest.raises(ValueError) as error:
        LastLayerLaplace(model, "classification", "full")
    message = str(error.value)
    assert f"{full / 2**40:.1f} TiB" in message and "4,097,000 weights" in message
    kron = 2 * (1000 * 1000 + 4096 * 4096) * 4
    diag = 1000 * 4097 * 4
    assert (
        f"use hessian='kron' ({kron / 2**20:.1f} MiB) or hessian='diag' ({diag / 2**20:.1f} MiB)" in message
    )
    with pytest.raises(
        ValueError, match=rf"needs {kron / 2**20:.1f} MiB .* over memory_budget=100.0 MiB; use hessian='diag'"
    ):
        LastLayerLaplace(model, "classification", "kron", memory_budget=100 * 2**20)
    LastLayerLaplace(model, "classification", "kron")  # 136 MiB: within the default 1 GiB
    small = _mlp(CLASSES)
    with pytest.raises(ValueError, match=r"no structure fits, or raise memory_budget"):
        LastLayerLaplace(small, "classification", "diag", memory_budget=8)


def test_invalid_arguments_are_refused_with_what_came():
    model = _mlp(CLASSES)
    x, y = _data("classification")
    cases = [
        (dict(likelihood="poisson"), ValueError, r"likelihood: expected one of .*got 'poisson'"),
        (
            dict(hessian="lowrank"),
            ValueError,
            r"hessian: expected one of 'full', 'kron', 'diag', got 'lowrank'",
        ),
        (
            dict(prior_precision="cv"),
            ValueError,
            r"prior_precision: expected 'marglik', 'val_nll' or a positive",
        ),
        (dict(prior_precision=-1.0), ValueError, r"prior_precision: expected a finite number > 0, got -1.0"),
        (dict(sigma=0.5), ValueError, r"sigma: expected None for likelihood='classification', got 0.5"),
        (dict(memory_budget=0), ValueError, r"memory_budget: expected an int >= 1, got 0"),
    ]
    for options, kind, message in cases:
        with pytest.raises(kind, match=message):
            LastLayerLaplace(model, **options)
    with pytest.raises(TypeError, match=r"model: expected a torch.nn.Module, got str"):
        LastLayerLaplace("net")
    la = LastLayerLaplace(model, "classification", "kron")
    with pytest.raises(RuntimeError, match=r"call fit\(...\) first"):
        la.predict(x)
    with pytest.raises(TypeError, match=r"data_targets: expected the targets tensor"):
        la.fit(x)
    with pytest.raises(
        ValueError, match=r"data_targets: expected 40 rows \(one per input\), got shape \(39,\)"
    ):
        la.fit(x, y[:-1])
    with pytest.raises(ValueError, match=r"data_targets: expected class indices in \[0, 3\], got values in"):
        la.fit(x, y + 4)
    with pytest.raises(ValueError, match=r"data: expected batches of \(inputs, targets\), batch 0 is"):
        la.fit([x])
    with pytest.raises(ValueError, match=r"val: only used with prior_precision='val_nll'"):
        la.fit(x, y, val=x)
    with pytest.raises(ValueError, match=r"val: expected validation data for prior_precision='val_nll'"):
        LastLayerLaplace(model, prior_precision="val_nll").fit(x, y)
    with pytest.raises(ValueError, match=r"data: expected at least one example"):
        la.fit(DataLoader(TensorDataset(x[:0], y[:0])))
    la.fit(x, y)
    with pytest.raises(ValueError, match=r"num_samples: expected None or 1 with mean_field=True"):
        la.predict(x, num_samples=5, mean_field=True)
    with pytest.raises(ValueError, match=r"batch_dim: expected 0"):
        uqkit.predict(la, x, batch_dim=1)
    assert uqkit.predict(la, x, mean_field=False).logits.shape == (100, N, CLASSES)
    regression = LastLayerLaplace(_mlp(OUTPUTS), "regression", "diag", sigma=1.0)
    with pytest.raises(ValueError, match=r"data_targets: expected shape \(40, 2\)"):
        regression.fit(x, torch.randn(N, 3, dtype=torch.float64))
    with pytest.raises(
        TypeError, match=r"data_targets: expected float regression targets, got dtype torch.int64"
    ):
        regression.fit(x, y)


def test_hugging_face_classifier_equals_a_laplace_on_its_features(tiny_hf):
    torch.manual_seed(0)
    model = tiny_hf.bert(labels=3, dtype=torch.float64).eval()
    inputs = tiny_hf.text(batch=12)
    labels = torch.arange(12) % 3
    la = LastLayerLaplace(model, "classification", "full").fit(inputs, labels, batch_size=5)
    assert la.last_layer_name == "classifier"
    prediction = uqkit.predict(la, **inputs)
    # the same head on the pooled features the classifier reads, as a plain one-layer model
    features = []
    handle = model.classifier.register_forward_hook(lambda module, args, out: features.append(args[0]))
    with torch.no_grad():
        model(**inputs)
    handle.remove()
    head = nn.Sequential(model.classifier)
    reference = LastLayerLaplace(head, "classification", "full").fit(features[0], labels)
    assert torch.allclose(la.prior_precision, reference.prior_precision, rtol=1e-8)
    assert torch.allclose(prediction.probs, uqkit.predict(reference, features[0]).probs, rtol=1e-8)
    assert model.training is False and prediction.logits.shape == (1, 12, 3)


def test_softmax_variances_keep_the_digits_of_confident_predictions():
    logits = torch.tensor([[12.0, 0.0, -1.0], [0.5, 0.0, -0.5], [-3.0, 14.0, 2.0]])
    exact = torch.softmax(logits.double(), -1)
    exact = exact * (1 - exact)
    probs = torch.softmax(logits, -1)
    error = ((softmax_variances(probs).double() - exact).abs() / exact).max()
    naive = (((probs - probs.square()).double() - exact).abs() / exact).max()
    assert float(error) < 1e-6 < 1e-3 < float(naive)  # p = 1 - 6e-6 keeps 1 - p to 3 digits by subtraction


@pytest.mark.parametrize("hessian", ["full", "kron", "diag"])
def test_float32_curvature_of_a_confident_network_matches_float64(hessian):
    # a last layer that is 1 - 2.5e-6 sure of every example: logits 14 * one_hot(y) + noise
    generator = torch.Generator().manual_seed(0)
    y = torch.randint(0, CLASSES, (200,), generator=generator)
    x = F.one_hot(y, CLASSES).double() + 0.01 * torch.randn(
        200, CLASSES, generator=generator, dtype=torch.float64
    )
    model = nn.Sequential(nn.Linear(CLASSES, CLASSES))
    with torch.no_grad():
        model[0].weight.copy_(14 * torch.eye(CLASSES))
        model[0].bias.zero_()

    def ggn_diagonal(dtype: torch.dtype) -> torch.Tensor:
        la = LastLayerLaplace(model.to(dtype), "classification", hessian, prior_precision=1.0)
        la.fit(x.to(dtype), y)
        return la.curvature.precision(torch.zeros(1, dtype=dtype))[0].diagonal().double()  # H, no prior

    single, double = ggn_diagonal(torch.float32), ggn_diagonal(torch.float64)
    # sums of 200 positive terms p (1 - p) phi^2 (times A for "kron"): float32 keeps each to about 200 eps;
    # p (1 - p) as p - p^2 keeps 1 - p = 2.5e-6 to 2 digits, sum_i p - sum_i p^2 to none
    assert float(((single - double).abs() / double).max()) < 1e-4


def test_full_covariance_survives_a_singular_ggn_in_float32():
    # the softmax GGN is singular (shifting all logits together changes no probability); with a prior
    # precision 1e-11 of its scale, float32 round-off makes H + delta I indefinite and Cholesky fails
    model = _mlp(CLASSES).float()
    x, y = _data("classification")
    la = LastLayerLaplace(model, "classification", "full", prior_precision=1e-9).fit(x.float(), y)
    _, info = torch.linalg.cholesky_ex(la.curvature.precision(la.prior_precision.float()))
    assert bool((info > 0).all())
    _, cov = la.linearized_outputs(x[:4].float())
    values = torch.linalg.eigvalsh(cov.double())  # positive semi-definite up to float32 round-off
    assert bool(torch.isfinite(cov).all()) and bool((values >= -1e-5 * values.amax(-1, keepdim=True)).all())
    # the shift of all logits has variance ~ 1 / delta: the probit predictive is uniform
    assert torch.allclose(
        uqkit.predict(la, x[:4].float()).probs, torch.full((4, CLASSES), 1 / CLASSES), atol=1e-3
    )
    assert uqkit.predict(la, x[:4].float(), num_samples=16).logits.isfinite().all()
