"""Last-layer Laplace against laplace-torch 0.3 (Daxberger et al. 2021) as the oracle, in float64.

laplace-torch is a test-only dependency: the ``dev`` extra installs its ordinary dependencies and
scripts/_venv.sh installs it and its torch-pinned companions with ``--no-deps`` from
requirements-oracles.txt (a plain ``pip install laplace-torch`` would pull another torch build). Its default
backend (curvlinops, exact "type-2" GGN; K-FAC with ``separate_weight_and_bias``) is the one compared.

For each likelihood and Hessian structure the same posterior precision (Hessian + prior), the same
linearised outputs ``(f, J Sigma J^T)``, the same closed-form predictive (probit; Gaussian) and the same log
evidence must come out to round-off; the evidence-maximising prior precision must match laplace-torch's
gradient ascent once that has converged, and be at least as good by laplace-torch's own objective.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import uqkit
from uqkit.methods.laplace import LastLayerLaplace

laplace = pytest.importorskip("laplace", reason="laplace-torch (requirements-oracles.txt) is not installed")

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:By default `link_approx` is `probit`:UserWarning"),
    # laplace-torch's Jacobians use forward-mode AD; torch 2.13 loads its decompositions via TorchScript
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
]


@pytest.fixture(autouse=True)
def _float64_default():
    """laplace-torch builds its full GGN as ``operator @ torch.eye(P)`` with the default dtype: in float32
    that rounds a float64 GGN to float32 (relative 2e-8). The oracle runs with float64 as the default."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(default)


IN, HIDDEN, CLASSES, OUTPUTS, N = 3, 6, 4, 2, 40
SIGMA = 0.6
STRUCTURES = ["full", "kron", "diag"]
LIKELIHOODS = ["classification", "regression"]


def _problem(likelihood: str, seed: int = 0):
    """A tiny float64 MLP and random data: ``(model, train loader, x_test)``."""
    torch.manual_seed(seed)
    outputs = CLASSES if likelihood == "classification" else OUTPUTS
    model = nn.Sequential(nn.Linear(IN, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, outputs)).double()
    x = torch.randn(N, IN, dtype=torch.float64)
    y = (
        torch.randint(0, CLASSES, (N,))
        if likelihood == "classification"
        else torch.randn(N, OUTPUTS, dtype=torch.float64)
    )
    # batches of 16, 16 and 8: laplace-torch rescales its K-FAC factors per batch; the sums must not care
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    return model, loader, torch.randn(7, IN, dtype=torch.float64)


def _reference(model, likelihood, hessian, loader, **options):
    if likelihood == "regression":
        options.setdefault("sigma_noise", SIGMA)
    reference = laplace.Laplace(
        model, likelihood, subset_of_weights="last_layer", hessian_structure=hessian, **options
    )
    reference.fit(loader)
    return reference


def _close(got: torch.Tensor, expected: torch.Tensor, rel: float = 1e-10) -> bool:
    """Equal to round-off, measured against the largest entry (float64 sums in another order)."""
    return got.shape == expected.shape and float((got - expected).abs().max()) <= rel * float(
        expected.abs().max()
    )


def _dense(reference, hessian: str) -> torch.Tensor:
    precision = reference.posterior_precision
    if hessian == "kron":
        return precision.to_matrix()
    return torch.diag(precision) if hessian == "diag" else precision


def _ours(model, likelihood, hessian, loader, **options):
    sigma = SIGMA if likelihood == "regression" else None
    return LastLayerLaplace(model, likelihood, hessian, sigma=sigma, **options).fit(loader)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("hessian", STRUCTURES)
def test_posterior_predictive_and_evidence_equal_laplace_torch(likelihood, hessian):
    model, loader, x_test = _problem(likelihood)
    reference = _reference(model, likelihood, hessian, loader, prior_precision=0.7)
    ours = _ours(model, likelihood, hessian, loader, prior_precision=0.7)

    assert _close(ours.precision_matrix()[0], _dense(reference, hessian))

    mean, covariance = ours.linearized_outputs(x_test)
    if likelihood == "classification":
        ref_mean, ref_covariance = reference._glm_predictive_distribution(x_test)
    else:
        ref_mean, ref_covariance = reference(x_test)
    assert _close(mean[0], ref_mean)
    assert _close(covariance[0], ref_covariance)

    prediction = uqkit.predict(ours, x_test)
    if likelihood == "classification":
        assert _close(prediction.probs, reference(x_test, link_approx="probit"))
    else:
        expected = ref_covariance.diagonal(dim1=1, dim2=2) + SIGMA**2
        assert _close(prediction.mean, ref_mean) and _close(prediction.variance, expected)

    for value in (0.05, 0.7, 7.0):
        expected = reference.log_marginal_likelihood(
            prior_precision=torch.tensor(value, dtype=torch.float64)
        ).detach()
        assert _close(ours.log_marginal_likelihood(value), expected[None])


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("hessian", STRUCTURES)
def test_evidence_maximising_prior_precision_matches_laplace_torch(likelihood, hessian):
    model, loader, _ = _problem(likelihood)
    ours = _ours(model, likelihood, hessian, loader)  # prior_precision="marglik", the default
    reference = _reference(model, likelihood, hessian, loader)
    # laplace-torch's default, 100 Adam steps of 0.1 on log delta from 1, stops short; given enough steps
    # it reaches the same maximum
    reference.optimize_prior_precision(pred_type="glm", method="marglik", n_steps=1000, lr=0.05)
    theirs = float(reference.prior_precision)
    assert math.isclose(float(ours.prior_precision), theirs, rel_tol=1e-4)
    at_ours = reference.log_marginal_likelihood(prior_precision=ours.prior_precision.clone()).detach()
    at_theirs = reference.log_marginal_likelihood(
        prior_precision=torch.tensor(theirs, dtype=torch.float64)
    ).detach()
    assert float(at_ours) >= float(at_theirs) - 1e-10


def _offline_nll(likelihood: str):
    """The validation loss laplace-torch's grid search should minimise, computed per grid value.

    Its default (a torchmetrics ``RunningNLLMetric``) is never reset between grid values in laplace-torch
    0.3, so each value is scored by the running mean over all values tried so far; a callable is scored
    afresh each time.
    """
    if likelihood == "classification":
        return lambda probs, targets: -probs.gather(1, targets[:, None]).log().mean()
    return lambda mean, covariance, targets: F.gaussian_nll_loss(
        mean, targets, covariance.diagonal(dim1=1, dim2=2) + SIGMA**2, full=True
    )


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("hessian", STRUCTURES)
def test_validation_grid_choice_matches_laplace_torch(likelihood, hessian):
    model, loader, _ = _problem(likelihood)
    _, val_loader, _ = _problem(likelihood, seed=3)
    # the model of seed 0 with data of seed 3
    grid = torch.logspace(-2, 2, 21)
    ours = _ours(model, likelihood, hessian, loader, prior_precision=1.0)
    ours.optimize_prior_precision("val_nll", val_loader, grid=grid.tolist())
    reference = _reference(model, likelihood, hessian, loader)
    reference.optimize_prior_precision(
        pred_type="glm",
        method="gridsearch",
        val_loader=val_loader,
        loss=_offline_nll(likelihood),
        log_prior_prec_min=-2,
        log_prior_prec_max=2,
        grid_size=21,
    )
    assert math.isclose(float(ours.prior_precision), float(reference.prior_precision), rel_tol=1e-6)


def test_monte_carlo_predictive_matches_laplace_torch():
    model, loader, x_test = _problem("classification")
    reference = _reference(model, "classification", "full", loader, prior_precision=0.3)
    ours = _ours(model, "classification", "full", loader, prior_precision=0.3)
    samples = 20_000
    torch.manual_seed(0)
    theirs = reference(x_test, link_approx="mc", n_samples=samples)
    probs = uqkit.predict(ours, x_test, num_samples=samples).logits.softmax(-1)  # [S, B, C]
    # two independent Monte Carlo means: their difference has variance about 2 Var[softmax] / S
    tolerance = 5 * (2 * probs.var(0) / samples).sqrt()
    assert bool(((probs.mean(0) - theirs).abs() <= tolerance).all())
    # and the Monte Carlo mean differs from the probit's (the approximations are distinct)
    assert not torch.allclose(
        probs.mean(0), reference(x_test, link_approx="probit"), atol=float(tolerance.max())
    )


def test_deep_ensemble_members_equal_laplace_torch_on_each_member():
    torch.manual_seed(0)
    ensemble = uqkit.DeepEnsemble(
        lambda: nn.Sequential(nn.Linear(IN, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, CLASSES)).double(), 2
    )
    _, loader, x_test = _problem("classification")
    ours = LastLayerLaplace(ensemble, "classification", "kron", prior_precision=0.7).fit(loader)
    probit = uqkit.predict(ours, x_test).logits.softmax(-1)  # [M, B, C]
    for index, member in enumerate(ensemble.members()):
        reference = _reference(member, "classification", "kron", loader, prior_precision=0.7)
        assert _close(ours.precision_matrix()[index], _dense(reference, "kron"))
        assert _close(probit[index], reference(x_test, link_approx="probit"))
