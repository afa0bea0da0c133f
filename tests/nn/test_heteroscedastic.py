"""uqkit.nn.HeteroscedasticHead: zero noise is the tempered softmax, Monte Carlo moments match Sigma(h)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import uqkit
from uqkit.nn.heteroscedastic import HeteroscedasticHead
from uqkit.prediction import Prediction


def _head(seed: int = 0, **options) -> HeteroscedasticHead:
    torch.manual_seed(seed)
    return HeteroscedasticHead(6, 4, num_factors=2, **options).double()


def test_zero_noise_equals_tempered_softmax():
    head = _head(temperature=0.5, num_samples=7)
    with torch.no_grad():
        head.factor_loading.weight.zero_()
        head.factor_loading.bias.zero_()
        head.diagonal.weight.zero_()
        head.diagonal.bias.fill_(-math.inf)  # softplus(-inf) = 0 exactly
    hidden = torch.randn(5, 6, dtype=torch.float64)
    mean = hidden @ head.mean.weight.t() + head.mean.bias
    expected = torch.log_softmax(mean / 0.5, dim=1)
    torch.testing.assert_close(head(hidden), expected)
    prediction = head.predict(hidden)
    assert isinstance(prediction, Prediction) and prediction.num_samples == 1
    torch.testing.assert_close(prediction.log_probs, expected)


def test_predict_equals_uqkit_predict_and_restores_the_mode():
    head = _head(num_samples=5).train()
    hidden = torch.randn(4, 6, dtype=torch.float64)
    torch.manual_seed(3)
    own = head.predict(hidden).logits
    torch.manual_seed(3)
    assert torch.equal(own, uqkit.predict(head, hidden).logits)
    assert head.training and all(module.training for module in head.modules()) and not own.requires_grad


def test_covariance_is_low_rank_plus_diagonal():
    head = _head()
    hidden = torch.randn(3, 6, dtype=torch.float64)
    loading = (hidden @ head.factor_loading.weight.t() + head.factor_loading.bias).reshape(3, 4, 2)
    scale = torch.log1p(torch.exp(hidden @ head.diagonal.weight.t() + head.diagonal.bias))
    expected = loading @ loading.transpose(1, 2) + torch.diag_embed(scale**2)
    torch.testing.assert_close(head.covariance(hidden), expected)


def test_monte_carlo_logit_covariance_matches_sigma():
    """Sample covariance of S draws of tau * logits - mu vs V V^T + diag(d^2).

    For Gaussian samples the sample covariance entry (i, j) has variance (Sigma_ij^2 + Sigma_ii Sigma_jj) / S
    (Wishart); every entry must be within 5 of its standard deviations, and the mean within 5 standard errors.
    """
    head = _head(temperature=2.0)
    hidden = torch.randn(3, 6, dtype=torch.float64)
    samples = 40000
    logits = head.sample_logits(hidden, num_samples=samples, generator=torch.Generator().manual_seed(1))
    assert logits.shape == (samples, 3, 4)
    mean, _, _ = head.noise_parameters(hidden)
    noise = logits * 2.0 - mean  # [S, B, C]
    sigma = head.covariance(hidden).detach()
    centred = noise - noise.mean(0)
    sample_cov = torch.einsum("sbi,sbj->bij", centred, centred) / (samples - 1)
    diag = torch.diagonal(sigma, dim1=1, dim2=2)
    std = torch.sqrt((sigma**2 + diag.unsqueeze(2) * diag.unsqueeze(1)) / samples)
    assert bool(((sample_cov - sigma).abs() <= 5 * std).all())
    assert bool((noise.mean(0).abs() <= 5 * torch.sqrt(diag / samples)).all())
    # and the correlations are real: a diagonal-only model would miss them by far more than the tolerance
    off_diagonal = ~torch.eye(4, dtype=torch.bool)
    assert bool((sigma[:, off_diagonal].abs() > 10 * std[:, off_diagonal]).any())


def test_forward_is_log_of_monte_carlo_mean_softmax():
    head = _head(num_samples=5)
    hidden = torch.randn(4, 6, dtype=torch.float64)
    torch.manual_seed(3)
    log_probs = head(hidden)
    torch.manual_seed(3)
    logits = head.sample_logits(hidden)
    expected = torch.log(torch.softmax(logits, dim=-1).mean(0))
    torch.testing.assert_close(log_probs, expected)
    torch.testing.assert_close(log_probs.exp().sum(1), torch.ones(4, dtype=torch.float64))
    # trainable end to end: the NLL has gradients for every parameter
    F.nll_loss(log_probs, torch.tensor([0, 1, 2, 3])).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head.parameters())


def test_monte_carlo_predictive_converges_to_the_expectation():
    """With many samples the predictive equals E[softmax((mu + eps) / tau)] by an independent Monte Carlo."""
    head = _head(num_samples=20000)
    hidden = torch.randn(2, 6, dtype=torch.float64)
    mean, loading, scale = (t.detach() for t in head.noise_parameters(hidden))
    generator = torch.Generator().manual_seed(5)
    reference = torch.zeros(2, 4, dtype=torch.float64)
    draws = 20000
    for b in range(2):
        chol = torch.linalg.cholesky(loading[b] @ loading[b].t() + torch.diag(scale[b] ** 2))
        eps = torch.randn(draws, 4, dtype=torch.float64, generator=generator) @ chol.t()
        reference[b] = torch.softmax(mean[b] + eps, dim=1).mean(0)
    with torch.no_grad():
        probs = head(hidden).exp()
    # each estimate has standard error <= 0.5 / sqrt(20000); the difference of two, 5 standard errors
    assert float((probs - reference).abs().max()) <= 5 * math.sqrt(2) * 0.5 / math.sqrt(draws)


def test_prediction_is_the_averaged_predictive_with_no_epistemic_part():
    """The noise is label noise (aleatoric, Collier et al. 2021): predict gives the one distribution
    p = (1/S) sum_s softmax(logits_s) of the head's own draws, with total = aleatoric = H[p], epistemic = 0.

    Reading the S draws as posterior samples (the former behaviour) reports their mutual information as
    epistemic: with noise as large as here it is far from 0, and the aleatoric part is the mean entropy of
    the draws, below H[p].
    """
    head = _head(num_samples=64)
    with torch.no_grad():
        head.diagonal.bias.fill_(2.0)  # noise scale ~2 on logits of scale ~1: the draws disagree
    hidden = torch.randn(5, 6, dtype=torch.float64)
    with torch.no_grad():
        torch.manual_seed(7)
        prediction = uqkit.predict(head, hidden)
        torch.manual_seed(7)
        draws = head.sample_logits(hidden)
    probs = torch.softmax(draws, dim=-1).mean(0)  # the Monte Carlo predictive of the same 64 draws
    entropy = -(probs * probs.log()).sum(-1)
    assert prediction.num_samples == 1 and prediction.logits.shape == (1, 5, 4)
    torch.testing.assert_close(prediction.probs, probs)
    torch.testing.assert_close(prediction.total_entropy, entropy)
    torch.testing.assert_close(prediction.expected_entropy, entropy)
    assert bool((prediction.mutual_information == 0).all())
    # the draws' mutual information, what was reported as epistemic, is not negligible here
    assert float(Prediction(draws).mutual_information.min()) > 0.05


def test_benchmark_method_reports_label_noise_as_aleatoric():
    from uqkit.bench.methods_distance import HeteroscedasticClassifier

    torch.manual_seed(0)
    method = HeteroscedasticClassifier(nn.Sequential(nn.Linear(3, 6), nn.Tanh()), _head().float())
    x = torch.randn(8, 3)
    with torch.no_grad():
        prediction = method.predict(x)
        torch.manual_seed(1)
        log_probs = method.network(x)  # forward: log of the Monte Carlo mean softmax, used for training
        torch.manual_seed(1)
        again = method.predict(x)
    assert method.num_samples == 1 and prediction.logits.shape == (1, 8, 4)
    assert bool((prediction.mutual_information == 0).all())
    torch.testing.assert_close(prediction.total_entropy, prediction.expected_entropy)
    torch.testing.assert_close(again.log_probs, log_probs)  # same draws: the same distribution


def test_bad_inputs():
    with pytest.raises(ValueError, match="num_classes: expected an int >= 2"):
        HeteroscedasticHead(4, 1)
    with pytest.raises(ValueError, match="num_factors: expected an int >= 1"):
        HeteroscedasticHead(4, 3, num_factors=0)
    with pytest.raises(ValueError, match="temperature: expected a finite number > 0"):
        HeteroscedasticHead(4, 3, temperature=0.0)
    with pytest.raises(TypeError, match="num_samples: expected an int"):
        HeteroscedasticHead(4, 3, num_samples=2.5)
    head = HeteroscedasticHead(4, 3)
    with pytest.raises(
        ValueError, match=r"hidden: expected 4 features \(shape \[batch, 4\]\), got shape \(2, 3\)"
    ):
        head(torch.randn(2, 3))
    with pytest.raises(ValueError, match="num_samples: expected an int >= 1"):
        head.sample_logits(torch.randn(2, 4), num_samples=0)
    with pytest.raises(ValueError, match="num_samples: expected 1 for a model with no sampling layer"):
        uqkit.predict(head, torch.randn(2, 4), num_samples=2)  # label noise: one averaged distribution
