"""uqkit.nn.RandomFeatureGP: an exact RBF-kernel GP, closed-form precision updates, predictive moments."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from uqkit.nn.gp import RandomFeatureGP
from uqkit.prediction import Prediction


def _rbf(a: torch.Tensor, b: torch.Tensor, length_scale: float) -> torch.Tensor:
    return torch.exp(-torch.cdist(a, b).square() / (2 * length_scale**2))


def _exact_gp(train_x, train_y, test_x, length_scale, noise_variance):
    """Posterior of GP regression with the RBF kernel (unit amplitude) and Gaussian noise (Rasmussen &
    Williams 2006, eqs. (2.25)-(2.26)): mean k*^T (K + s^2 I)^-1 y, variance k** - k*^T (K + s^2 I)^-1 k*."""
    gram = _rbf(train_x, train_x, length_scale) + noise_variance * torch.eye(
        len(train_x), dtype=train_x.dtype
    )
    cross = _rbf(test_x, train_x, length_scale)  # [m, n]
    weights = torch.linalg.solve(gram, cross.t())  # a = (K + s^2 I)^-1 k*, one column per test point
    alpha = torch.linalg.solve(gram, train_y)
    return cross @ alpha, 1.0 - (cross.t() * weights).sum(0), weights, alpha


def _rff_fourth_moment(points, u, v, length_scale):
    """E[(u.z)^2 (v.z)^2] for z_i = sqrt(2) cos(w.x_i + b), w ~ N(0, I / l^2), b ~ U[0, 2 pi).

    Averaging a product of four cosines over b keeps the three terms whose phases cancel, and averaging
    cos(w . d) over w gives the kernel of the displacement d:
    E[cos t_i cos t_j cos t_k cos t_l] = (1/8) [k(x_i + x_j - x_k - x_l) + k(x_i - x_j + x_k - x_l)
    + k(x_i - x_j - x_k + x_l)], where k(d) = exp(-||d||^2 / (2 l^2)); the factor sqrt(2)^4 = 4 gives 1/2.
    """
    x = points

    def kernel_of(sj: int, sk: int, sl: int) -> torch.Tensor:
        displacement = (
            x[:, None, None, None]
            + sj * x[None, :, None, None]
            + sk * x[None, None, :, None]
            + sl * x[None, None, None]
        )
        return torch.exp(-displacement.square().sum(-1) / (2 * length_scale**2))

    total = kernel_of(1, -1, -1) + kernel_of(-1, 1, -1) + kernel_of(-1, -1, 1)
    return 0.5 * torch.einsum("i,j,k,l,ijkl->", u, u, v, v, total)


def _first_order_std(train_x, test_x, weights, alpha, length_scale):
    """Standard deviation (times sqrt(D)) of the first-order error of the random-feature posterior.

    With K_hat = K + E, E = (1/D) sum_j (z_j z_j^T - K) over the points (x*, X), the posterior variance
    changes to first order by u^T E u with u = (1, -a), and the mean by u^T E v with v = (0, alpha)
    (differentiate k** - k*^T (K + s^2 I)^-1 k* and k*^T (K + s^2 I)^-1 y). Each is a mean of D i.i.d.
    terms, so its standard deviation is sqrt(Var[(u.z)(v.z)] / D), computed here in closed form.
    """
    var_std, mean_std = [], []
    for m in range(len(test_x)):
        points = torch.cat([test_x[m : m + 1], train_x])
        u = torch.cat([torch.ones(1, dtype=train_x.dtype), -weights[:, m]])
        v = torch.cat([torch.zeros(1, dtype=train_x.dtype), alpha])
        gram = _rbf(points, points, length_scale)
        var_std.append(
            (_rff_fourth_moment(points, u, u, length_scale) - (u @ gram @ u) ** 2).clamp_min(0).sqrt()
        )
        mean_std.append(
            (_rff_fourth_moment(points, u, v, length_scale) - (u @ gram @ v) ** 2).clamp_min(0).sqrt()
        )
    return torch.stack(var_std), torch.stack(mean_std)


@pytest.mark.parametrize("dim", [1, 2])
def test_random_feature_posterior_matches_exact_gp(dim):
    """Posterior mean and variance of GP regression with D = 4096 random features vs the exact RBF GP.

    Tolerance: the random-feature Gram matrix is an average of D i.i.d. rank-one terms, so the error of
    the posterior is, to first order, a mean of D i.i.d. terms with the standard deviation sigma/sqrt(D)
    computed by ``_first_order_std``; every test point must be within 4.5 of its own standard deviations
    (two-sided Gaussian tail 7e-6 per point). The second-order remainder is O(n / (s^2 D)): the maximal
    z-scores measured with D = 1024 and D = 4096 over five seeds are alike (<= 3.0), so it is negligible.
    """
    torch.manual_seed(10 + dim)
    n, noise_variance, length_scale, num_features = (
        (10, 0.25, 0.8, 4096) if dim == 1 else (20, 0.25, 1.0, 4096)
    )
    dtype = torch.float64
    train_x = torch.rand(n, dim, dtype=dtype) * 4 - 2
    train_y = torch.sin(2 * train_x).sum(1)
    if dim == 1:
        test_x = torch.linspace(-5, 5, 21, dtype=dtype).unsqueeze(1)
    else:
        test_x = torch.rand(20, 2, dtype=dtype) * 10 - 5
    mean, variance, weights, alpha = _exact_gp(train_x, train_y, test_x, length_scale, noise_variance)
    var_std, mean_std = _first_order_std(train_x, test_x, weights, alpha, length_scale)
    var_tol = 4.5 * var_std / math.sqrt(num_features)
    mean_tol = 4.5 * mean_std / math.sqrt(num_features)

    gp = RandomFeatureGP(
        dim,
        1,
        num_features=num_features,
        length_scale=length_scale,
        normalize_input=False,
        likelihood="gaussian",
    ).to(dtype)
    # Bayesian linear regression on the features: prior beta ~ N(0, I) (ridge 1), noise s^2 -> weights 1/s^2.
    gp.update_precision(train_x, weights=torch.full((n,), 1 / noise_variance, dtype=dtype))
    features = gp.random_features(train_x)
    beta = torch.cholesky_solve(
        (features.t() @ train_y / noise_variance).unsqueeze(1), gp.precision_cholesky()
    )
    with torch.no_grad():
        gp.output.weight.copy_(beta.t())
    gp.eval()
    rff_variance = gp.predictive_variance(test_x)
    with torch.no_grad():
        rff_mean = gp(test_x).squeeze(1)
    var_error, mean_error = (rff_variance - variance).abs(), (rff_mean - mean).abs()
    var_z, mean_z = float((var_error / var_tol * 4.5).max()), float((mean_error / mean_tol * 4.5).max())
    print(
        f"\n{dim}-D, D={num_features}: max |variance error| {float(var_error.max()):.4f} "
        f"(max z {var_z:.2f}), "
        f"max |mean error| {float(mean_error.max()):.4f} (max z {mean_z:.2f})"
    )
    assert bool((var_error <= var_tol).all())
    assert bool((mean_error <= mean_tol).all())
    # Power: a kernel with length scale off by sqrt(2) (e.g. W ~ N(0, 1/(2 l^2)) instead of N(0, 1/l^2))
    # would fail these tolerances.
    wrong_mean, wrong_variance, _, _ = _exact_gp(
        train_x, train_y, test_x, length_scale * math.sqrt(2), noise_variance
    )
    assert bool(((wrong_variance - variance).abs() > 2 * var_tol).any())
    assert bool(((wrong_mean - mean).abs() > 2 * mean_tol).any())


def test_predictive_variance_grows_with_distance_from_training_data():
    torch.manual_seed(20)
    dtype = torch.float64
    gp = RandomFeatureGP(1, 2, num_features=2048, length_scale=0.5, normalize_input=False).to(dtype)
    train_x = torch.linspace(-1, 1, 40, dtype=dtype).unsqueeze(1)
    gp.update_precision(train_x, weights=torch.full((40,), 100.0, dtype=dtype))
    distances = torch.tensor([0.0, 0.25, 0.5, 1.0, 1.5], dtype=dtype)
    variance = gp.predictive_variance((1.0 + distances).unsqueeze(1))
    print("variance at distances", distances.tolist(), "->", [round(v, 4) for v in variance.tolist()])
    assert bool((variance.diff() > 0).all())
    assert float(variance[0]) < 0.05
    # Far away the posterior returns to the prior: phi^T phi = 1 up to the feature noise (std <= 1/sqrt(D)).
    far = gp.predictive_variance(torch.tensor([[8.0], [-9.0]], dtype=dtype))
    torch.testing.assert_close(far, torch.ones(2, dtype=dtype), atol=5 / math.sqrt(2048), rtol=0)


def _reference_features(gp: RandomFeatureGP, hidden: torch.Tensor) -> torch.Tensor:
    """phi(h) written independently: layer norm by hand, then sqrt(2/D) cos(W h + b)."""
    centred = hidden - hidden.mean(dim=1, keepdim=True)
    normalised = centred / torch.sqrt(centred.square().mean(dim=1, keepdim=True) + 1e-5)
    return math.sqrt(2.0 / gp.num_features) * torch.cos(normalised @ gp.feature_weight.t() + gp.feature_bias)


def test_feature_buffers_follow_rahimi_recht():
    torch.manual_seed(21)
    gp = RandomFeatureGP(64, 3, num_features=4000, length_scale=2.0)
    # W ~ N(0, 1 / l^2), b ~ U[0, 2 pi): moments within 5 standard errors.
    weights = gp.feature_weight.flatten().double()
    assert abs(float(weights.mean())) < 5 * 0.5 / math.sqrt(weights.numel())
    assert float(weights.std()) == pytest.approx(0.5, rel=5 * math.sqrt(0.5 / weights.numel()))
    bias = gp.feature_bias.double()
    assert float(bias.min()) >= 0 and float(bias.max()) < 2 * math.pi
    assert float(bias.mean()) == pytest.approx(
        math.pi, abs=5 * (2 * math.pi / math.sqrt(12)) / math.sqrt(4000)
    )
    assert RandomFeatureGP(64, 2).length_scale == pytest.approx(2.0)  # default sqrt(H) / 4


def test_precision_update_equals_closed_form_on_a_batch():
    torch.manual_seed(22)
    gp = RandomFeatureGP(6, 4, num_features=32, ridge_penalty=0.5).double()
    first, second = torch.randn(10, 6, dtype=torch.float64), torch.randn(7, 6, dtype=torch.float64)

    def batch_term(hidden):
        phi = _reference_features(gp, hidden)
        top = torch.softmax(phi @ gp.output.weight.t().detach(), dim=1).max(dim=1).values
        return (phi * (top * (1 - top)).unsqueeze(1)).t() @ phi

    gp.train()
    gp(first)
    expected = 0.5 * torch.eye(32, dtype=torch.float64) + batch_term(first)
    torch.testing.assert_close(gp.precision, expected)
    gp(second)
    expected = expected + batch_term(second)
    torch.testing.assert_close(gp.precision, expected)
    # eval-mode and untracked forwards leave it alone
    gp.eval()
    gp(first)
    gp.train()
    gp.track_precision = False
    gp(first)
    torch.testing.assert_close(gp.precision, expected)
    # reset gives the prior back
    gp.reset_precision()
    torch.testing.assert_close(gp.precision, 0.5 * torch.eye(32, dtype=torch.float64))


def test_gaussian_likelihood_and_momentum_update():
    torch.manual_seed(23)
    gp = RandomFeatureGP(
        5, 2, num_features=16, likelihood="gaussian", momentum=0.9, ridge_penalty=2.0
    ).double()
    prior = 2.0 * torch.eye(16, dtype=torch.float64)
    first, second = torch.randn(8, 5, dtype=torch.float64), torch.randn(8, 5, dtype=torch.float64)
    gp.train()
    gp(first)
    phi_1 = _reference_features(gp, first)
    expected = 0.9 * (prior - prior) + prior + phi_1.t() @ phi_1
    torch.testing.assert_close(gp.precision, expected)
    gp(second)
    phi_2 = _reference_features(gp, second)
    expected = 0.9 * (expected - prior) + prior + phi_2.t() @ phi_2
    torch.testing.assert_close(gp.precision, expected)
    # explicit weights
    gp.update_precision(first, weights=torch.linspace(0, 1, 8, dtype=torch.float64))
    expected = (
        0.9 * (expected - prior)
        + prior
        + (phi_1 * torch.linspace(0, 1, 8, dtype=torch.float64)[:, None]).t() @ phi_1
    )
    torch.testing.assert_close(gp.precision, expected)


def _trained_layer(seed: int = 24) -> tuple[RandomFeatureGP, torch.Tensor]:
    torch.manual_seed(seed)
    gp = RandomFeatureGP(8, 3, num_features=64).double()
    with torch.no_grad():
        gp.output.weight.mul_(20.0)
    gp.train()
    gp(torch.randn(200, 8, dtype=torch.float64))
    gp.eval()
    return gp, torch.randn(5, 8, dtype=torch.float64)


def _reference_variance(gp: RandomFeatureGP, hidden: torch.Tensor) -> torch.Tensor:
    phi = _reference_features(gp, hidden)
    return (phi * torch.linalg.solve(gp.precision, phi.t()).t()).sum(1)


def test_mean_field_prediction():
    gp, hidden = _trained_layer()
    logits = _reference_features(gp, hidden) @ gp.output.weight.t().detach()
    variance = _reference_variance(gp, hidden)
    prediction = gp.predict(hidden)
    assert isinstance(prediction, Prediction) and prediction.num_samples == 1
    torch.testing.assert_close(
        prediction.logits[0], logits / torch.sqrt(1 + math.pi / 8 * variance).unsqueeze(1)
    )
    torch.testing.assert_close(gp.predictive_variance(hidden), variance)
    mean, var = gp.mean_and_variance(hidden)
    torch.testing.assert_close(mean, logits)
    torch.testing.assert_close(var, variance)


def test_monte_carlo_prediction_moments():
    gp, hidden = _trained_layer()
    samples = 20000
    prediction = gp.predict(hidden, num_samples=samples, generator=torch.Generator().manual_seed(0))
    assert prediction.logits.shape == (samples, 5, 3)
    mean, variance = gp.mean_and_variance(hidden)
    # sample mean within 5 standard errors; sample variance within 5 * var * sqrt(2 / S)
    sample_mean, sample_var = prediction.logits.mean(0), prediction.logits.var(0)
    assert bool(((sample_mean - mean).abs() <= 5 * torch.sqrt(variance / samples).unsqueeze(1)).all())
    assert bool(
        (
            (sample_var - variance.unsqueeze(1)).abs() <= 5 * variance.unsqueeze(1) * math.sqrt(2 / samples)
        ).all()
    )


def test_covariance_paths_agree():
    gp, hidden = _trained_layer()
    # covariance() is P^-1
    torch.testing.assert_close(gp.covariance() @ gp.precision, torch.eye(64, dtype=torch.float64))
    # joint covariance: Phi P^-1 Phi^T, whose diagonal is the variance
    phi = _reference_features(gp, hidden)
    joint = gp.predictive_covariance(hidden)
    torch.testing.assert_close(joint, phi @ torch.linalg.solve(gp.precision, phi.t()))
    torch.testing.assert_close(torch.diagonal(joint), gp.predictive_variance(hidden))
    # a batch >= D caches L^-1 and then small batches use it: same numbers as the triangular solve
    small_before = gp.predictive_variance(hidden)
    big = torch.randn(100, 8, dtype=torch.float64)
    torch.testing.assert_close(gp.predictive_variance(big), _reference_variance(gp, big))
    assert gp._inverse_cholesky.shape == (64, 64)
    torch.testing.assert_close(gp.predictive_variance(hidden), small_before)


def test_state_dict_deepcopy_and_cache_invalidation():
    gp, hidden = _trained_layer()
    variance = gp.predictive_variance(hidden)
    assert "precision" in gp.state_dict() and "feature_weight" in gp.state_dict()
    assert "_precision_cholesky" not in gp.state_dict()
    clone = copy.deepcopy(gp)
    torch.testing.assert_close(clone.predictive_variance(hidden), variance)

    torch.manual_seed(99)
    other = RandomFeatureGP(8, 3, num_features=64).double().eval()
    other.predictive_variance(hidden)  # fills the cache of the prior precision
    other.load_state_dict(gp.state_dict())
    torch.testing.assert_close(other.predictive_variance(hidden), variance)
    torch.testing.assert_close(other.predict(hidden).logits, gp.predict(hidden).logits)

    gp.reset_precision()  # the cached factor must not survive a reset
    torch.testing.assert_close(
        gp.predictive_variance(hidden), _reference_features(gp, hidden).square().sum(1)
    )


def test_bad_inputs():
    with pytest.raises(TypeError, match="in_features: expected an int"):
        RandomFeatureGP(2.0, 3)
    with pytest.raises(ValueError, match="num_classes: expected an int >= 1"):
        RandomFeatureGP(2, 0)
    with pytest.raises(ValueError, match="num_features: expected an int >= 1"):
        RandomFeatureGP(2, 3, num_features=0)
    with pytest.raises(ValueError, match="length_scale: expected a finite number > 0"):
        RandomFeatureGP(2, 3, length_scale=-1.0)
    with pytest.raises(ValueError, match="ridge_penalty: expected a finite number > 0"):
        RandomFeatureGP(2, 3, ridge_penalty=0.0)
    with pytest.raises(ValueError, match=r"momentum: expected a number in \(0, 1\)"):
        RandomFeatureGP(2, 3, momentum=1.0)
    with pytest.raises(ValueError, match="likelihood: expected one of 'softmax', 'gaussian'"):
        RandomFeatureGP(2, 3, likelihood="poisson")
    gp = RandomFeatureGP(4, 3, num_features=8)
    with pytest.raises(
        ValueError, match=r"hidden: expected 4 features \(shape \[batch, 4\]\), got shape \(2, 5\)"
    ):
        gp(torch.randn(2, 5))
    with pytest.raises(
        ValueError, match=r"hidden: expected a 2-D tensor \[batch, in_features\], got shape \(4,\)"
    ):
        gp(torch.randn(4))
    with pytest.raises(TypeError, match="hidden: expected a floating-point tensor"):
        gp(torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="hidden: expected finite values"):
        gp.update_precision(torch.full((2, 4), float("nan")))
    with pytest.raises(ValueError, match=r"weights: expected one weight per example \(2\), got 3"):
        gp.update_precision(torch.randn(2, 4), weights=torch.ones(3))
    with pytest.raises(ValueError, match="weights: expected non-negative values"):
        gp.update_precision(torch.randn(2, 4), weights=torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="num_samples: expected an int >= 1"):
        gp.predict(torch.randn(2, 4), num_samples=0)
    with torch.no_grad():
        gp.precision.neg_()
    gp._invalidate()
    with pytest.raises(RuntimeError, match="not positive definite"):
        gp.predictive_variance(torch.randn(2, 4))
