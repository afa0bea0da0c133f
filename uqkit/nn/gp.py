"""Random-feature Gaussian-process output layer with a Laplace posterior (Liu et al. 2020, SNGP).

The layer approximates a Gaussian process with the RBF kernel

    k(h, h') = exp(-||h - h'||^2 / (2 l^2))

by ``D`` random Fourier features (Rahimi & Recht 2007, Sec. 3): with ``W_j ~ N(0, I / l^2)`` and
``b_j ~ U[0, 2 pi)`` drawn once and frozen,

    phi(h) = sqrt(2 / D) cos(W h + b),       E[phi(h)^T phi(h')] = k(h, h'),

and a GP with that kernel is the Bayesian linear model ``f(h) = phi(h)^T beta`` with ``beta ~ N(0, I)``
(Liu et al. 2020, eq. (7)). Each class ``k`` has its own ``beta_k``; the logits are ``phi(h)^T beta``.

**Training** finds the MAP ``beta`` (Liu et al. 2020, Algorithm 1; Liu et al. 2022, JMLR, Sec. 3.2): it
minimises ``-log p(D | beta) + (ridge / 2) ||beta||^2``, the negative log posterior under the prior
``beta ~ N(0, I / ridge)``. Per training example that is the cross-entropy plus
:meth:`RandomFeatureGP.prior_penalty` ``= ridge ||beta||^2 / (2 N)`` with ``N`` the training-set size (the
trainer must add it; edward2's ``l2_regularization`` plays this role there).

**Posterior.** The posterior over ``beta`` is its Laplace approximation at the MAP: a Gaussian whose
precision is the prior precision plus the Hessian of the negative log-likelihood, accumulated over the
training data. The ``likelihood`` option chooses the Hessian weights ``w_ik``:

* ``"softmax"`` (default; Liu et al. 2020, eq. (9)): one ``D x D`` precision per class,
  ``P_k = ridge * I + sum_i p_ik (1 - p_ik) phi_i phi_i^T`` with ``p_ik`` the softmax probability of class
  ``k``. These are the diagonal blocks of the exact softmax Hessian ``sum_i (diag(p_i) - p_i p_i^T) x
  phi_i phi_i^T``; the classes' ``beta_k`` are independent a posteriori.
* ``"softmax-shared"``: one precision shared by the classes, weighted by the largest softmax probability,
  ``w_i = p_i (1 - p_i)``; an approximation of this library (its former default), kept for comparison.
* ``"unit"``: one shared precision with unit weights ``w_i = 1``, ``P = ridge * I + sum_i phi_i phi_i^T``: the
  exact posterior of GP regression with unit noise (edward2's and uncertainty-baselines' default
  ``gp_cov_likelihood='gaussian'``; edward2's ``'binary_logistic'`` weight ``p (1 - p)`` is for one logit
  only). Its former name ``"gaussian"`` is accepted with a ``DeprecationWarning`` until uqkit 0.2.0: for a
  classifier the weights are not those of its likelihood, and "Gaussian" names the distribution of a
  regressor's outputs in this library (docs/architecture.md, "Names").

Any other weights can be passed to :meth:`RandomFeatureGP.update_precision`.

**Prediction**: the posterior variance of class ``k``'s logit is ``var_k(h) = phi(h)^T P_k^{-1} phi(h)``
(computed through the Cholesky factor ``P_k = L_k L_k^T`` as ``||L_k^{-1} phi(h)||^2``, never forming a
``B x B`` matrix), and the predictive distribution is either the mean-field approximation of the
softmax-Gaussian integral ``softmax(logits / sqrt(1 + lambda var))``, ``lambda = pi / 8`` (Lu et al. 2020,
"Mean-field approximation to Gaussian-softmax integral", as used by Liu et al. 2020, Sec. 3.2), or Monte
Carlo samples ``logits + sqrt(var) * eps``. The layer is a
:class:`uqkit.methods.prediction_protocol.PredictiveHead`: :func:`uqkit.predict` on any model whose output
layer it is records the variances during the forward pass and draws the samples (or the mean-field logits)
from them, so the network runs once whatever ``S``.

When to accumulate (Liu et al. 2020, Sec. 3.2 and Algorithm 1): with ``momentum=None`` the precision is an
exact sum; call :meth:`RandomFeatureGP.reset_precision` at the start of every epoch (or of the last one) so
that the precision after training is the sum over the last epoch. With ``momentum=m`` in ``(0, 1)`` the data
term is an exponentially discounted sum ``m * old + batch``, i.e. the precision of roughly the last
``batch_size / (1 - m)`` examples, with no reset needed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from uqkit._deprecation import warn_renamed
from uqkit._validation import (
    check_choice,
    check_float_tensor,
    check_positive_float,
    check_positive_int,
    check_unit_interval,
)
from uqkit.nn.modes import evaluation_mode
from uqkit.prediction import Prediction

__all__ = ["RandomFeatureGP"]

_LIKELIHOODS = ("softmax", "softmax-shared", "unit")
_RENAMED_LIKELIHOODS = {"gaussian": "unit"}  # deprecated; removed in uqkit 0.2.0
# Per-class precisions hold C * D^2 numbers; beyond this many (1 GiB of float32) ask for a shared one.
_MAX_PRECISION_ELEMENTS = 2**28


class RandomFeatureGP(nn.Module):
    """Gaussian-process output layer: random Fourier features, trainable output weights, Laplace precision.

    Args:
        in_features: size ``H`` of the hidden representation.
        num_classes: number of outputs ``C`` (classes), ``>= 1``.
        num_features: number ``D`` of random Fourier features. Default 1024.
        length_scale: ``l`` of the RBF kernel ``exp(-||h - h'||^2 / (2 l^2))`` on the (normalised) hidden
            representation. Default ``None``: ``sqrt(in_features) / 4``, sized for the layer-normalised
            input, whose ``H`` coordinates have unit variance: two unrelated representations lie about
            ``sqrt(2 H)`` apart, where the kernel is ``exp(-16)`` (uncorrelated), while representations a
            quarter of that distance apart keep a correlation ``exp(-1)``. The scale is then the same for
            every width (with ``l = 1`` and ``H = 512`` the kernel between any two distinct training
            points is ~0, the features carry no smoothness, and training fails). Pass a number when
            ``normalize_input=False``.
        ridge_penalty: prior precision of ``beta`` (prior ``N(0, I / ridge)``; the ``ridge * I`` term of
            ``P``, and the weight of :meth:`prior_penalty`); 1.0 is the unit-variance GP prior.
        momentum: ``None`` (default) for an exact sum of the precision over training batches, or a discount
            ``m`` in ``(0, 1)`` for a moving precision (see the module docstring).
        mean_field_factor: ``lambda`` of the mean-field logits ``logits / sqrt(1 + lambda var)``;
            ``pi / 8`` (the probit approximation of the logistic sigmoid).
        normalize_input: layer-normalise ``h`` (without affine parameters, so the kernel's length scale is
            not learned away) before the random features. Default ``True``.
        likelihood: the Laplace weights of the precision: ``"softmax"`` (default; one precision per class,
            weights ``p_k (1 - p_k)``, Liu et al. 2020, eq. (9)), ``"softmax-shared"`` (one precision,
            weight ``p (1 - p)`` of the largest probability) or ``"unit"`` (one precision, unit weights;
            formerly ``"gaussian"``, deprecated). See the module docstring.
        num_samples: the default of :func:`uqkit.predict`: ``None`` (default) for the mean-field logits, an
            int ``S`` for ``S`` Monte Carlo samples of the logits (kept as :attr:`default_num_samples`).

    Attributes:
        track_precision: when ``True`` (default), every forward pass in training mode adds the batch to the
            precision (the logits are detached: the precision is not differentiated).
        num_precisions: ``K``, the number of precision matrices: ``C`` for ``"softmax"``, else 1.

    Buffers:
        ``feature_weight`` ``[D, H]`` and ``feature_bias`` ``[D]``: the frozen random features.
        ``precision``: ``[K, D, D]``, the posterior precisions ``P_k`` of the classes' ``beta_k`` (``K = 1``:
        one shared by every class).

    Shape:
        input ``[B, H]``; ``forward`` returns ``[B, C]`` logits (the posterior mean).

    Raises:
        ValueError: for ``likelihood="softmax"`` when the ``C`` precisions would hold more than ``2^28``
            numbers (use fewer features or ``likelihood="unit"``).

    Example:
        >>> gp = RandomFeatureGP(128, 10, num_features=512)
        >>> gp.reset_precision()              # at the start of an epoch
        >>> loss = F.cross_entropy(gp(h), y) + gp.prior_penalty(num_data)  # also updates gp.precision
        >>> gp.eval(); prediction = uqkit.predict(gp, h)  # mean-field logits as a uqkit.Prediction
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        num_features: int = 1024,
        length_scale: float | None = None,
        ridge_penalty: float = 1.0,
        momentum: float | None = None,
        mean_field_factor: float = math.pi / 8,
        normalize_input: bool = True,
        likelihood: str = "softmax",
        num_samples: int | None = None,
    ) -> None:
        super().__init__()
        self.in_features = check_positive_int(in_features, "in_features")
        self.num_classes = check_positive_int(num_classes, "num_classes")
        self.num_features = check_positive_int(num_features, "num_features")
        if length_scale is None:
            length_scale = math.sqrt(in_features) / 4.0
        self.length_scale = check_positive_float(length_scale, "length_scale")
        self.ridge_penalty = check_positive_float(ridge_penalty, "ridge_penalty")
        if momentum is not None:
            momentum = check_unit_interval(momentum, "momentum", open_left=True, open_right=True)
        self.momentum = momentum
        self.mean_field_factor = check_positive_float(mean_field_factor, "mean_field_factor", allow_zero=True)
        if isinstance(likelihood, str) and likelihood in _RENAMED_LIKELIHOODS:
            new = _RENAMED_LIKELIHOODS[likelihood]
            warn_renamed(f"RandomFeatureGP(likelihood={likelihood!r})", f"likelihood={new!r}")
            likelihood = new
        self.likelihood = check_choice(likelihood, "likelihood", _LIKELIHOODS)
        self.num_precisions = num_classes if likelihood == "softmax" else 1
        if self.num_precisions * num_features**2 > _MAX_PRECISION_ELEMENTS:
            raise ValueError(
                f"likelihood='softmax' keeps one {num_features} x {num_features} precision per class: "
                f"{num_classes} of them hold {num_classes * num_features**2:,} numbers (more than "
                f"{_MAX_PRECISION_ELEMENTS:,}); use fewer num_features or likelihood='unit'"
            )
        self.normalize_input = bool(normalize_input)
        self.track_precision = True
        self.default_num_samples = (
            None if num_samples is None else check_positive_int(num_samples, "num_samples")
        )
        self._recording = False
        self._recorded: tuple[torch.Tensor, torch.Tensor] | None = None

        self.register_buffer("feature_weight", torch.randn(num_features, in_features) / self.length_scale)
        self.register_buffer("feature_bias", torch.rand(num_features) * (2 * math.pi))
        self.register_buffer("precision", self._prior_precision(torch.float32, torch.device("cpu")))
        # Cholesky factors of the precisions and their inverses, recomputed lazily after the precision
        # changes (see _invalidate); not saved.
        self.register_buffer("_precision_cholesky", torch.zeros(0), persistent=False)
        self.register_buffer("_inverse_cholesky", torch.zeros(0), persistent=False)
        self.output = nn.Linear(num_features, num_classes, bias=False)

    # -- features and mean -----------------------------------------------------------------------------------
    def _check_hidden(self, hidden: torch.Tensor, finite: bool = False) -> torch.Tensor:
        # Shape and dtype only on the hot path (non-finite values propagate to the logits, as in any layer).
        hidden = check_float_tensor(hidden, "hidden", 2, "[batch, in_features]", finite=finite)
        if hidden.shape[1] != self.in_features:
            raise ValueError(
                f"hidden: expected {self.in_features} features (shape [batch, {self.in_features}]), "
                f"got shape {tuple(hidden.shape)}"
            )
        return hidden

    def random_features(self, hidden: torch.Tensor) -> torch.Tensor:
        """``phi(h) = sqrt(2 / D) cos(W norm(h) + b)`` (Rahimi & Recht 2007), shape ``[B, D]``."""
        hidden = self._check_hidden(hidden)
        if self.normalize_input:
            hidden = F.layer_norm(hidden, (self.in_features,))
        projection = F.linear(hidden, self.feature_weight, self.feature_bias)
        scale = math.sqrt(2.0 / self.num_features)
        if torch.is_grad_enabled() and projection.requires_grad:
            return scale * torch.cos(projection)
        return projection.cos_().mul_(scale)  # no graph: reuse the projection's memory

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Posterior-mean logits ``phi(h)^T beta``, ``[B, C]``; in training mode, updates the precision."""
        features = self.random_features(hidden)
        logits = self.output(features)
        if self.training and self.track_precision:
            self._accumulate(features.detach(), self._likelihood_weights(logits.detach()))
        if self._recording:
            self._recorded = (logits, self._class_variance(self._whitened(features), logits.dtype))
        return logits

    def prior_penalty(self, num_data: int) -> torch.Tensor:
        """The prior's share of one example's loss, ``ridge ||beta||^2 / (2 N)`` (a scalar tensor).

        Adding it to the mean cross-entropy of a batch makes the training objective the negative log
        posterior of ``beta`` under the prior ``N(0, I / ridge)`` divided by ``N`` (Liu et al. 2020,
        Algorithm 1), so that gradient descent finds the MAP at which the Laplace precision is taken.

        Args:
            num_data: ``N``, the number of training examples.
        """
        num_data = check_positive_int(num_data, "num_data")
        return self.output.weight.square().sum() * (self.ridge_penalty / (2.0 * num_data))

    # -- precision -----------------------------------------------------------------------------------------
    def _prior_precision(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        eye = torch.eye(self.num_features, dtype=dtype, device=device)
        return (self.ridge_penalty * eye).expand(self.num_precisions, -1, -1).clone()

    def _likelihood_weights(self, logits: torch.Tensor) -> torch.Tensor:
        """Hessian weights ``[B, K]`` of the likelihood at the current logits."""
        if self.likelihood == "unit":
            return torch.ones(logits.shape[0], 1, dtype=logits.dtype, device=logits.device)
        probabilities = torch.softmax(logits, dim=-1)
        if self.likelihood == "softmax-shared":
            probabilities = probabilities.max(dim=-1, keepdim=True).values
        return probabilities * (1.0 - probabilities)

    @torch.no_grad()
    def _accumulate(self, features: torch.Tensor, weights: torch.Tensor) -> None:
        """``P_k += sum_i w_ik phi_i phi_i^T`` (or the discounted update) for every precision ``k``."""
        features = features.to(self.precision.dtype)
        weights = weights.to(features.dtype).t().unsqueeze(2)  # [K, B, 1]
        batch_term = (features * weights).transpose(1, 2) @ features  # [K, D, D]
        if self.momentum is None:
            self.precision.add_(batch_term)
        else:
            prior = self._prior_precision(self.precision.dtype, self.precision.device)
            self.precision.sub_(prior).mul_(self.momentum).add_(prior).add_(batch_term)
        self._invalidate()

    def update_precision(self, hidden: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        """Add a batch to the precision: ``P_k += sum_i w_ik phi_i phi_i^T`` (or the discounted update).

        Args:
            hidden: ``[B, H]`` hidden representations of training examples.
            weights: non-negative Hessian weights, ``[B]`` (the same for every precision) or ``[B, K]``;
                ``None`` computes them from the current logits with the layer's likelihood. For GP
                regression with noise variance ``s^2`` (prior ``ridge_penalty=1``) pass ``1 / s^2``.
        """
        features = self.random_features(self._check_hidden(hidden, finite=True)).detach()
        if weights is None:
            weights = self._likelihood_weights(self.output(features).detach())
        else:
            weights = check_float_tensor(weights, "weights", (1, 2), "[batch] or [batch, K]")
            expected = (features.shape[0], self.num_precisions)
            if weights.shape not in (expected[:1], expected):
                raise ValueError(
                    f"weights: expected shape [{expected[0]}] or [{expected[0]}, {expected[1]}] (one weight "
                    f"per example and precision), got {tuple(weights.shape)}"
                )
            weights = weights.reshape(expected[0], -1).expand(expected)
            if bool((weights < 0).any()):
                raise ValueError(
                    f"weights: expected non-negative values, got minimum {float(weights.min()):.4g}"
                )
        self._accumulate(features, weights.detach())

    @torch.no_grad()
    def reset_precision(self) -> None:
        """Reset the precision to the prior, ``ridge_penalty * I`` (call at the start of an epoch)."""
        self.precision.copy_(self._prior_precision(self.precision.dtype, self.precision.device))
        self._invalidate()

    @torch.no_grad()
    def combine_precision(self, sum_over_copies: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Make the precision that of the union of the batches that several copies of this layer accumulated
        (data-parallel training: each process adds its own examples):
        ``P = ridge * I + sum_r (P_r - ridge * I)``.

        Every copy must have started from the prior (:meth:`reset_precision`) since the last combination;
        with a ``momentum``, the discounted sums then add the same way, as the discount acts per step.

        Args:
            sum_over_copies: ``tensor -> element-wise sum of tensor over the copies`` (e.g. an all-reduce).
        """
        prior = self._prior_precision(self.precision.dtype, self.precision.device)
        self.precision.copy_(sum_over_copies(self.precision - prior).add_(prior))
        self._invalidate()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        key = prefix + "precision"
        saved = state_dict.get(key)
        if saved is not None and saved.shape != self.precision.shape:
            raise RuntimeError(
                f"{key}: expected a precision of shape {tuple(self.precision.shape)} "
                f"(likelihood={self.likelihood!r}, {self.num_precisions} of {self.num_features} x "
                f"{self.num_features}), got {tuple(saved.shape)}; build the layer with the likelihood and "
                "num_features it was saved with"
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._invalidate()

    def _invalidate(self) -> None:
        self._precision_cholesky = self._precision_cholesky.new_zeros(0)
        self._inverse_cholesky = self._inverse_cholesky.new_zeros(0)

    def precision_cholesky(self) -> torch.Tensor:
        """Lower Cholesky factors ``L_k`` of the precisions, ``P_k = L_k L_k^T``, ``[K, D, D]`` (cached).

        Computed in float64 and cast back, so a float32 precision summed over many examples stays stable.

        Raises:
            RuntimeError: if a precision is not positive definite.
        """
        if self._precision_cholesky.shape != self.precision.shape:
            factor, info = torch.linalg.cholesky_ex(self.precision.detach().double())
            if bool((info != 0).any()):
                raise RuntimeError(
                    "RandomFeatureGP: the precision matrix is not positive definite (non-finite features or "
                    "negative weights?); call reset_precision()"
                )
            self._precision_cholesky = factor.to(self.precision.dtype)
        return self._precision_cholesky

    def covariance(self) -> torch.Tensor:
        """The posterior covariances ``P_k^{-1}`` of the classes' ``beta_k``, ``[K, D, D]`` (via Cholesky)."""
        return torch.cholesky_inverse(self.precision_cholesky())

    # -- predictive distribution --------------------------------------------------------------------------
    def _whitened(self, features: torch.Tensor) -> torch.Tensor:
        """Rows ``L_k^{-1} phi_i``, ``[K, B, D]``: their squared norms are the predictive variances.

        A batch of at least ``D`` examples builds and caches ``L_k^{-1}`` (``K D^3`` operations once, then a
        matrix product per batch, the cheapest for repeated prediction); a smaller batch with no cached
        inverse uses a triangular solve (``K B D^2``).
        """
        factor = self.precision_cholesky()
        features = features.to(factor.dtype)
        if self._inverse_cholesky.shape != factor.shape and features.shape[0] >= self.num_features:
            identity = torch.eye(self.num_features, dtype=torch.float64, device=factor.device)
            inverse = torch.linalg.solve_triangular(factor.double(), identity, upper=False)
            self._inverse_cholesky = inverse.to(factor.dtype)
        if self._inverse_cholesky.shape == factor.shape:
            return features @ self._inverse_cholesky.transpose(1, 2)
        return torch.linalg.solve_triangular(factor, features.t(), upper=False).transpose(1, 2)

    def _class_variance(self, whitened: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``[K, B, D]`` whitened features -> ``[B, C]`` variances (a shared precision broadcast)."""
        variance = whitened.square().sum(dim=2).t().to(dtype)  # [B, K]
        return variance.expand(-1, self.num_classes)

    def predictive_variance(self, hidden: torch.Tensor) -> torch.Tensor:
        """Posterior variance ``phi(h)^T P_k^{-1} phi(h)`` of each class's logit, ``[B, C]``.

        Only the diagonal: the cost is ``O(K B D^2)`` and no ``B x B`` matrix is formed. With a shared
        precision (``K = 1``) the ``C`` columns are one tensor, broadcast.
        """
        return self._class_variance(self._whitened(self.random_features(hidden)), hidden.dtype)

    def predictive_covariance(self, hidden: torch.Tensor) -> torch.Tensor:
        """Joint posterior covariance ``Phi P_k^{-1} Phi^T`` of each class's batch logits, ``[C, B, B]``."""
        whitened = self._whitened(self.random_features(hidden))
        joint = (whitened @ whitened.transpose(1, 2)).to(hidden.dtype)
        return joint.expand(self.num_classes, -1, -1)

    def mean_and_variance(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior-mean logits ``[B, C]`` and their variances ``[B, C]``, from one feature computation."""
        features = self.random_features(hidden)
        mean = self.output(features)
        return mean, self._class_variance(self._whitened(features), mean.dtype)

    # -- the PredictiveHead protocol of uqkit.predict -----------------------------------------------------
    @contextmanager
    def record_predictive(self) -> Iterator[None]:
        """Within the block, each forward pass keeps its logits and their variances for
        :meth:`predictive_logits` (outside it, forward passes compute no variance)."""
        previous = self._recording
        self._recording, self._recorded = True, None
        try:
            yield
        finally:
            self._recording, self._recorded = previous, None

    def predictive_logits(self, logits: torch.Tensor, num_samples: int | None) -> torch.Tensor:
        """The predictive distribution of the logits this layer returned last, inside
        :meth:`record_predictive`.

        Args:
            logits: the model's output; it must be the ``[B, C]`` logits this layer returned.
            num_samples: ``None`` for the mean-field logits ``logits / sqrt(1 + lambda var)`` (Lu et al.
                2020; Liu et al. 2020, Sec. 3.2); an int ``S`` for ``S`` Monte Carlo samples of the logits
                from their Gaussian posterior ``N(logits, var)``, independent across classes (the classes'
                ``beta_k`` are independent a posteriori), drawn from torch's global generator.

        Returns:
            ``[1, B, C]`` mean-field logits or ``[S, B, C]`` samples.

        Raises:
            RuntimeError: when no forward pass was recorded.
            ValueError: when ``logits`` are not the logits this layer returned (the layer must be the
                model's output layer).
        """
        if self._recorded is None:
            raise RuntimeError(
                "RandomFeatureGP: no forward pass recorded; call the model inside record_predictive() "
                "(uqkit.predict does)"
            )
        mean, variance = self._recorded
        if logits is not mean and not (logits.shape == mean.shape and torch.equal(logits, mean)):
            raise ValueError(
                f"model output: expected the [B, C] logits that the RandomFeatureGP returned (it must be the "
                f"model's output layer, shape {tuple(mean.shape)}), got other values of shape "
                f"{tuple(logits.shape)}"
            )
        if num_samples is None:
            return (mean * torch.rsqrt(1.0 + self.mean_field_factor * variance)).unsqueeze(0)
        num_samples = check_positive_int(num_samples, "num_samples")
        noise = torch.randn((num_samples, *mean.shape), dtype=mean.dtype, device=mean.device)
        return torch.addcmul(mean, variance.sqrt(), noise)

    def predict(self, hidden: torch.Tensor, num_samples: int | None = None) -> Prediction:
        """What ``uqkit.predict(self, hidden, num_samples=num_samples)`` gives: mean-field logits (``S = 1``)
        for ``num_samples=None`` and no :attr:`default_num_samples`, else ``S`` Monte Carlo samples
        (:meth:`predictive_logits`), in eval mode (the precision is not updated) and without gradients; the
        training flags are restored afterwards."""
        if num_samples is None:
            num_samples = self.default_num_samples
        with evaluation_mode(self), torch.no_grad(), self.record_predictive():
            return Prediction(self.predictive_logits(self(hidden), num_samples))

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, num_classes={self.num_classes}, "
            f"num_features={self.num_features}, length_scale={self.length_scale}, "
            f"ridge_penalty={self.ridge_penalty}, momentum={self.momentum}, likelihood={self.likelihood!r}, "
            f"normalize_input={self.normalize_input}, num_samples={self.default_num_samples}"
        )
