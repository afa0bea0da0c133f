"""uqkit.nn.RandomFeatureGP: an exact RBF-kernel GP, closed-form precision updates, predictive moments."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import uqkit
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
        likelihood="unit",
    ).to(dtype)
    # Bayesian linear regression on the features: prior beta ~ N(0, I) (ridge 1), noise s^2 -> weights 1/s^2.
    gp.update_precision(train_x, weights=torch.full((n,), 1 / noise_variance, dtype=dtype))
    features = gp.random_features(train_x)
    beta = torch.cholesky_solve(
        (features.t() @ train_y / noise_variance).unsqueeze(1), gp.precision_cholesky()[0]
    )
    with torch.no_grad():
        gp.output.weight.copy_(beta.t())
    gp.eval()
    rff_variance = gp.predictive_variance(test_x)[:, 0]
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
    torch.testing.assert_close(variance[:, 1], variance[:, 0], rtol=0, atol=0)  # [B] weights: one for all
    variance = variance[:, 0]
    print("variance at distances", distances.tolist(), "->", [round(v, 4) for v in variance.tolist()])
    assert bool((variance.diff() > 0).all())
    assert float(variance[0]) < 0.05
    # Far away the posterior returns to the prior: phi^T phi = 1 up to the feature noise (std <= 1/sqrt(D)).
    far = gp.predictive_variance(torch.tensor([[8.0], [-9.0]], dtype=dtype))[:, 0]
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


def _three_clusters(num_classes: int, n: int = 90, seed: int = 22) -> tuple[torch.Tensor, torch.Tensor]:
    """Overlapping Gaussian clusters in 4-D (float64): the MAP probabilities stay away from 0 and 1."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    centres = 1.5 * torch.randn(num_classes, 4, generator=generator, dtype=torch.float64)
    return centres[labels] + torch.randn(n, 4, generator=generator, dtype=torch.float64), labels


def _newton_map(features: torch.Tensor, labels: torch.Tensor, num_classes: int, ridge: float):
    """MAP of softmax regression on fixed features under ``beta ~ N(0, I / ridge)`` and the Hessian there.

    An oracle independent of the layer: the negative log posterior
    ``sum_i -log softmax(phi_i^T beta)_{y_i} + (ridge / 2) ||beta||^2`` (Liu et al. 2020, Algorithm 1) is
    minimised by Newton's method with its exact Hessian from autograd, in float64, until the step is below
    1e-12. Returns ``beta`` ``[C, D]`` and the full ``[C D, C D]`` Hessian (index ``k * D + d``).
    """
    dim = features.shape[1]

    def objective(flat: torch.Tensor) -> torch.Tensor:
        logits = features @ flat.view(num_classes, dim).t()
        return F.cross_entropy(logits, labels, reduction="sum") + 0.5 * ridge * flat.square().sum()

    flat = torch.zeros(num_classes * dim, dtype=torch.float64)
    for _ in range(100):
        gradient = torch.autograd.functional.jacobian(objective, flat)
        step = torch.linalg.solve(torch.autograd.functional.hessian(objective, flat), gradient)
        flat = flat - step
        if float(step.abs().max()) < 1e-12:
            break
    else:
        raise AssertionError("Newton's method did not converge")
    return flat.view(num_classes, dim), torch.autograd.functional.hessian(objective, flat)


@pytest.mark.parametrize(
    ("likelihood", "num_classes"), [("softmax", 3), ("softmax", 2), ("softmax-shared", 2)]
)
def test_precision_is_the_laplace_hessian_at_the_map(likelihood, num_classes):
    """Liu et al. 2020, eq. (9): after one training pass at the MAP, P_k is the k-th diagonal block of the
    Hessian of the negative log posterior, computed by autograd at the Newton MAP (float64).

    With two classes p_1 (1 - p_1) = p_2 (1 - p_2) = p_top (1 - p_top), so the shared top-class precision
    must equal both blocks too. The tolerance is float64 round-off of sums of 90 terms of size <= 1.
    """
    ridge, num_features = 1.5, 12
    hidden, labels = _three_clusters(num_classes)
    torch.manual_seed(23)
    gp = RandomFeatureGP(
        4,
        num_classes,
        num_features=num_features,
        length_scale=2.0,
        ridge_penalty=ridge,
        likelihood=likelihood,
    ).double()
    beta, hessian = _newton_map(gp.random_features(hidden).detach(), labels, num_classes, ridge)
    probabilities = torch.softmax(gp.random_features(hidden).detach() @ beta.t(), dim=1)
    assert (
        float(probabilities.min()) > 0.01 and float(probabilities.max()) < 0.99
    )  # weights p (1 - p) >= 0.01
    with torch.no_grad():
        gp.output.weight.copy_(beta)

    # The library's per-example training loss has zero gradient at the paper's MAP: it is the negative log
    # posterior divided by N (a missing or mis-scaled prior term leaves a gradient of order 1e-2 here).
    gp.train()
    gp.track_precision = False
    loss = F.cross_entropy(gp(hidden), labels) + gp.prior_penalty(len(labels))
    (gradient,) = torch.autograd.grad(loss, gp.output.weight)
    assert float(gradient.abs().max()) < 1e-9
    (likelihood_only,) = torch.autograd.grad(F.cross_entropy(gp(hidden), labels), gp.output.weight)
    assert float(likelihood_only.abs().max()) > 1e-3

    # One pass of training-mode batches accumulates the precision.
    gp.track_precision = True
    gp.reset_precision()
    with torch.no_grad():
        for batch in hidden.split(32):
            gp(batch)
    blocks = [
        hessian[k * num_features : (k + 1) * num_features, k * num_features : (k + 1) * num_features]
        for k in range(num_classes)
    ]
    for k in range(num_classes):
        precision = gp.precision[k if gp.num_precisions > 1 else 0]
        torch.testing.assert_close(precision, blocks[k], rtol=1e-10, atol=1e-10)
    # the predictive variance of class k's logit is phi^T (H_kk)^-1 phi
    gp.eval()
    test_hidden = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    phi = gp.random_features(test_hidden)
    expected = torch.stack([(phi * torch.linalg.solve(block, phi.t()).t()).sum(1) for block in blocks], dim=1)
    torch.testing.assert_close(gp.predictive_variance(test_hidden), expected, rtol=1e-9, atol=1e-12)
    if num_classes == 3:  # the blocks differ: one shared precision could not match them
        assert float((blocks[0] - blocks[1]).abs().max()) > 1e-2


def test_unit_weights_match_sklearn_gaussian_process_regression():
    """``likelihood="unit"``: GP regression with unit noise on the random features. scikit-learn's
    GaussianProcessRegressor with the linear kernel ``phi^T phi' / ridge`` on the features (the function-space
    form: an n x n solve, not the layer's D x D precision) gives the same posterior variance and mean."""
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, DotProduct

    ridge = 2.0
    hidden, _ = _three_clusters(3, n=50)
    targets = torch.sin(hidden).sum(1)
    torch.manual_seed(24)
    gp = RandomFeatureGP(4, 1, num_features=40, ridge_penalty=ridge, likelihood="unit").double()
    gp.train()
    with torch.no_grad():
        for batch in hidden.split(16):
            gp(batch)  # unit weights do not depend on the (random) output weights
    features = gp.random_features(hidden).detach().numpy()
    test_hidden = torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(6)) * 2
    kernel = ConstantKernel(1.0 / ridge, "fixed") * DotProduct(0.0, "fixed")
    regressor = GaussianProcessRegressor(kernel, alpha=1.0, optimizer=None).fit(features, targets.numpy())
    test_features = gp.random_features(test_hidden).detach()
    mean, std = regressor.predict(test_features.numpy(), return_std=True)
    gp.eval()
    torch.testing.assert_close(
        gp.predictive_variance(test_hidden)[:, 0], torch.from_numpy(std**2), rtol=1e-8, atol=1e-12
    )
    # the posterior mean P^-1 Phi^T y set as the output weights reproduces sklearn's mean
    beta = torch.cholesky_solve(
        (gp.random_features(hidden).t() @ targets).unsqueeze(1), gp.precision_cholesky()[0]
    )
    with torch.no_grad():
        gp.output.weight.copy_(beta.t())
        torch.testing.assert_close(gp(test_hidden)[:, 0], torch.from_numpy(mean), rtol=1e-8, atol=1e-10)


def test_momentum_precision_is_a_discounted_sum():
    """``momentum=m``: after batches 1..T the data term weighs batch t by m^(T - t); an exact-sum layer fed
    all examples at once with those weights (through update_precision) is the oracle."""
    torch.manual_seed(25)
    momentum, ridge = 0.9, 2.0
    moving = RandomFeatureGP(5, 3, num_features=16, momentum=momentum, ridge_penalty=ridge).double()
    exact = copy.deepcopy(moving)
    exact.momentum = None
    batches = [torch.randn(8, 5, dtype=torch.float64) for _ in range(3)]
    moving.train()
    weights = []
    with torch.no_grad():
        for age, batch in zip((2, 1, 0), batches, strict=True):
            moving(batch)
            probabilities = torch.softmax(moving.output(moving.random_features(batch)), dim=1)
            weights.append(momentum**age * probabilities * (1 - probabilities))  # eq. (9), per class
    exact.update_precision(torch.cat(batches), weights=torch.cat(weights))
    torch.testing.assert_close(moving.precision, exact.precision, rtol=1e-12, atol=1e-12)
    # eval-mode and untracked forwards leave the precision alone; a reset gives the prior back
    before = moving.precision.clone()
    moving.eval()
    moving(batches[0])
    moving.train()
    moving.track_precision = False
    moving(batches[0])
    torch.testing.assert_close(moving.precision, before, rtol=0, atol=0)
    moving.reset_precision()
    torch.testing.assert_close(moving.precision, ridge * torch.eye(16, dtype=torch.float64).expand(3, -1, -1))


@pytest.mark.parametrize("momentum", [None, 0.9])
def test_combined_precision_of_copies_equals_one_layer_fed_every_batch(momentum):
    """Data-parallel training: two copies, each fed its half of every batch from the prior, combined with a
    sum over the copies, hold the precision of one layer fed the whole batches (the discount, if any, acts
    per step on both halves alike). Float64: the sums differ only in order (1e-12)."""
    torch.manual_seed(26)
    ridge = 2.0
    whole = RandomFeatureGP(5, 3, num_features=16, momentum=momentum, ridge_penalty=ridge).double().train()
    copies = [copy.deepcopy(whole), copy.deepcopy(whole)]
    with torch.no_grad():
        for _ in range(3):
            batch = torch.randn(9, 5, dtype=torch.float64)
            whole(batch)
            copies[0](batch[:4])
            copies[1](batch[4:])
    precisions = [layer.precision.clone() for layer in copies]
    assert not torch.allclose(precisions[0], whole.precision)  # one copy alone saw only its half
    for index, layer in enumerate(copies):
        other = precisions[1 - index] - _prior(ridge)  # what the other copy contributes to the all-reduce
        layer.combine_precision(lambda tensor, other=other: tensor + other)
        torch.testing.assert_close(layer.precision, whole.precision, rtol=1e-12, atol=1e-12)


def _prior(ridge: float) -> torch.Tensor:
    return ridge * torch.eye(16, dtype=torch.float64).expand(3, -1, -1)


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
    """``[B, C]``: phi^T P_k^-1 phi for each class's precision, by a dense solve."""
    phi = _reference_features(gp, hidden)
    return torch.stack([(phi * torch.linalg.solve(p, phi.t()).t()).sum(1) for p in gp.precision], dim=1)


def test_mean_field_prediction():
    gp, hidden = _trained_layer()
    logits = _reference_features(gp, hidden) @ gp.output.weight.t().detach()
    variance = _reference_variance(gp, hidden)
    prediction = gp.predict(hidden)
    assert isinstance(prediction, Prediction) and prediction.num_samples == 1
    torch.testing.assert_close(prediction.logits[0], logits / torch.sqrt(1 + math.pi / 8 * variance))
    torch.testing.assert_close(gp.predictive_variance(hidden), variance)
    mean, var = gp.mean_and_variance(hidden)
    torch.testing.assert_close(mean, logits)
    torch.testing.assert_close(var, variance)


def test_predict_equals_uqkit_predict_and_leaves_the_layer_as_it_was():
    # the layer's own predict does not go through uqkit.predict (uqkit.nn imports nothing of uqkit.methods)
    gp, hidden = _trained_layer()
    gp.train()
    precision = gp.precision.clone()
    for num_samples in (None, 6):
        torch.manual_seed(1)
        own = gp.predict(hidden, num_samples=num_samples).logits
        torch.manual_seed(1)
        torch.testing.assert_close(
            own, uqkit.predict(gp, hidden, num_samples=num_samples).logits, rtol=0, atol=0
        )
        assert gp.training and torch.equal(gp.precision, precision) and not own.requires_grad
    gp.default_num_samples = 4
    torch.manual_seed(2)
    own = gp.predict(hidden).logits
    torch.manual_seed(2)
    assert own.shape == (4, 5, 3) and torch.equal(own, uqkit.predict(gp, hidden).logits)


def test_monte_carlo_prediction_moments():
    gp, hidden = _trained_layer()
    samples = 20000
    torch.manual_seed(0)
    prediction = gp.predict(hidden, num_samples=samples)
    assert prediction.logits.shape == (samples, 5, 3)
    mean, variance = gp.mean_and_variance(hidden)
    # sample mean within 5 standard errors; sample variance within 5 * var * sqrt(2 / S)
    sample_mean, sample_var = prediction.logits.mean(0), prediction.logits.var(0)
    assert variance.shape == (5, 3) and float((variance[:, 0] - variance[:, 1]).abs().max()) > 1e-3
    assert bool(((sample_mean - mean).abs() <= 5 * torch.sqrt(variance / samples)).all())
    assert bool(((sample_var - variance).abs() <= 5 * variance * math.sqrt(2 / samples)).all())


def test_covariance_paths_agree():
    gp, hidden = _trained_layer()
    # covariance() is P^-1
    eye = torch.eye(64, dtype=torch.float64).expand(3, -1, -1)
    torch.testing.assert_close(gp.covariance() @ gp.precision, eye)
    # joint covariance of each class: Phi P_k^-1 Phi^T, whose diagonal is the class's variance
    phi = _reference_features(gp, hidden)
    joint = gp.predictive_covariance(hidden)
    torch.testing.assert_close(joint, phi @ torch.linalg.solve(gp.precision, phi.t()))
    torch.testing.assert_close(torch.diagonal(joint, dim1=1, dim2=2).t(), gp.predictive_variance(hidden))
    # a batch >= D caches L^-1 and then small batches use it: same numbers as the triangular solve
    small_before = gp.predictive_variance(hidden)
    big = torch.randn(100, 8, dtype=torch.float64)
    torch.testing.assert_close(gp.predictive_variance(big), _reference_variance(gp, big))
    assert gp._inverse_cholesky.shape == (3, 64, 64)
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
    prior_variance = _reference_features(gp, hidden).square().sum(1, keepdim=True).expand(-1, 3)
    torch.testing.assert_close(gp.predictive_variance(hidden), prior_variance)
    shared = RandomFeatureGP(8, 3, num_features=64, likelihood="unit").double()
    with pytest.raises(RuntimeError, match=r"precision: expected a precision of shape \(1, 64, 64\)"):
        shared.load_state_dict(gp.state_dict())


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
    with pytest.raises(ValueError, match="likelihood: expected one of 'softmax', 'softmax-shared', 'unit'"):
        RandomFeatureGP(2, 3, likelihood="poisson")
    with pytest.raises(ValueError, match="one 16384 x 16384 precision per class"):
        RandomFeatureGP(2, 3, num_features=16384)
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
    with pytest.raises(ValueError, match=r"weights: expected shape \[2\] or \[2, 3\] .*, got \(3,\)"):
        gp.update_precision(torch.randn(2, 4), weights=torch.ones(3))
    with pytest.raises(ValueError, match=r"weights: expected shape \[2\] or \[2, 3\] .*, got \(2, 2\)"):
        gp.update_precision(torch.randn(2, 4), weights=torch.ones(2, 2))
    with pytest.raises(ValueError, match="num_data: expected an int >= 1"):
        gp.prior_penalty(0)
    with pytest.raises(ValueError, match="weights: expected non-negative values"):
        gp.update_precision(torch.randn(2, 4), weights=torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="num_samples: expected an int >= 1"):
        gp.predict(torch.randn(2, 4), num_samples=0)
    with torch.no_grad():
        gp.precision.neg_()
    gp._invalidate()
    with pytest.raises(RuntimeError, match="not positive definite"):
        gp.predictive_variance(torch.randn(2, 4))


def test_former_likelihood_name_gaussian_warns_and_means_unit():
    """``likelihood="gaussian"`` (deprecated) is ``"unit"``: same option, same precision after an update."""
    hidden = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    unit = RandomFeatureGP(4, 3, num_features=16, likelihood="unit").double()
    torch.manual_seed(0)
    with pytest.warns(DeprecationWarning, match=r"likelihood='gaussian'\) is deprecated .*likelihood='unit'"):
        old = RandomFeatureGP(4, 3, num_features=16, likelihood="gaussian").double()
    assert old.likelihood == "unit" and old.num_precisions == 1
    for gp in (unit, old):
        gp.train()(hidden)  # a training pass adds the batch to the precision
    assert torch.equal(old.precision, unit.precision)
    assert not torch.equal(unit.precision, unit._prior_precision(torch.float64, unit.precision.device))
