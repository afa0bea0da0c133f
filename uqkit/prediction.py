"""One shape convention for every stochastic prediction.

Every method in uqkit, from a deterministic network to a deep ensemble or a Bayesian network, returns its
outputs with a leading sample (or member) dimension ``S``: classification logits ``[S, B, C]``, regression
mean and variance ``[S, B, D]``. A deterministic model is the case ``S = 1``. :class:`Prediction` and
:class:`GaussianPrediction` turn those into the predictive distribution and split its uncertainty into
total, aleatoric and epistemic parts (Depeweg et al. 2018, "Decomposition of uncertainty in Bayesian deep
learning for efficient and risk-sensitive learning"; Smith & Gal 2018). Each part is named by what it
measures, since a classifier measures it in entropy and a regressor in variance:

=========  ==========================================  ===========================================
part       :class:`Prediction` (nats)                  :class:`GaussianPrediction` (squared units)
=========  ==========================================  ===========================================
total      ``total_entropy = H[ E_s p_s ]``            ``variance = E_s sigma_s^2 + Var_s mu_s``
aleatoric  ``expected_entropy = E_s H[ p_s ]``         ``aleatoric_variance = E_s sigma_s^2``
epistemic  ``mutual_information = total - aleatoric``  ``epistemic_variance = Var_s mu_s``
=========  ==========================================  ===========================================

The mutual information is that between the label and the sample (the model), ``>= 0``; the variance split is
the law of total variance, Depeweg et al.'s decomposition for regression. ``uncertainty(kind)`` reads a part
by the names ``"total"``, ``"aleatoric"`` and ``"epistemic"`` in both classes. The former attribute names
``total``, ``aleatoric`` and ``epistemic`` (an entropy in one class, a variance in the other) are deprecated
aliases.
"""

from __future__ import annotations

import math

import torch

from uqkit._deprecation import deprecated_property
from uqkit._validation import check_float_tensor, check_same_length

__all__ = ["GaussianPrediction", "Prediction"]

UNCERTAINTY_KINDS = ("total", "aleatoric", "epistemic")
"""The parts of the decomposition, as :meth:`Prediction.uncertainty` and results.json name them."""


def _entropy_from_log_probs(log_probs: torch.Tensor) -> torch.Tensor:
    """Entropy ``-sum p log p`` over the last dim, with ``0 log 0 = 0``."""
    probs = log_probs.exp()
    plogp = torch.where(probs > 0, probs * log_probs, torch.zeros_like(probs))
    return -plogp.sum(dim=-1)


# What each part of the uncertainty is called in each class.
_ENTROPY_PARTS = dict(total="total_entropy", aleatoric="expected_entropy", epistemic="mutual_information")
_VARIANCE_PARTS = dict(total="variance", aleatoric="aleatoric_variance", epistemic="epistemic_variance")


def _check_kind(kind: str) -> str:
    if kind not in UNCERTAINTY_KINDS:
        raise ValueError(f"kind: expected 'total', 'aleatoric' or 'epistemic', got {kind!r}")
    return kind


class Prediction:
    """Predictive distribution of a classifier from ``S`` samples or members of logits.

    Args:
        logits: ``[S, B, C]`` logits of ``S`` samples (MC dropout, Bayesian posterior samples) or members
            (ensembles), or ``[B, C]`` for a single deterministic prediction (``S = 1``). Must be finite.

    Shape:
        ``probs``: ``[B, C]``, the mean of the ``S`` softmaxes (the Bayesian model average).
        ``confidence``, ``predicted_class``, ``total_entropy``, ``expected_entropy``,
        ``mutual_information``: ``[B]``.

    Example:
        >>> pred = Prediction(torch.randn(10, 4, 3))
        >>> pred.probs.shape, pred.mutual_information.shape
        (torch.Size([4, 3]), torch.Size([4]))
    """

    def __init__(self, logits: torch.Tensor) -> None:
        logits = check_float_tensor(logits, "logits", (2, 3), "[samples, batch, classes] or [batch, classes]")
        if logits.ndim == 2:
            logits = logits.unsqueeze(0)
        if logits.shape[0] == 0 or logits.shape[-1] == 0:
            raise ValueError(
                f"logits: expected at least one sample and one class, got shape {tuple(logits.shape)}"
            )
        self.logits = logits
        self._sample_log_probs: torch.Tensor | None = None
        self._log_probs: torch.Tensor | None = None
        self._probs: torch.Tensor | None = None

    # -- shapes -----------------------------------------------------------------------------------------
    @property
    def num_samples(self) -> int:
        """``S``, the number of samples or members."""
        return int(self.logits.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.logits.shape[-1])

    def __len__(self) -> int:
        return int(self.logits.shape[1])

    # -- predictive distribution ------------------------------------------------------------------------
    @property
    def sample_log_probs(self) -> torch.Tensor:
        """``[S, B, C]`` log-softmax of each sample."""
        if self._sample_log_probs is None:
            self._sample_log_probs = torch.log_softmax(self.logits, dim=-1)
        return self._sample_log_probs

    @property
    def log_probs(self) -> torch.Tensor:
        """``[B, C]`` log of the mean probability, computed stably with log-sum-exp over samples."""
        if self._log_probs is None:
            self._log_probs = torch.logsumexp(self.sample_log_probs, dim=0) - math.log(self.num_samples)
        return self._log_probs

    @property
    def probs(self) -> torch.Tensor:
        """``[B, C]`` predictive probabilities: the mean over samples of the softmax."""
        if self._probs is None:
            probs = self.log_probs.exp()
            self._probs = probs / probs.sum(dim=-1, keepdim=True)
        return self._probs

    @property
    def confidence(self) -> torch.Tensor:
        """``[B]`` probability of the predicted class."""
        return self.probs.max(dim=-1).values

    @property
    def predicted_class(self) -> torch.Tensor:
        """``[B]`` index of the most probable class under the predictive distribution."""
        return self.probs.argmax(dim=-1)

    # -- uncertainty ------------------------------------------------------------------------------------
    @property
    def total_entropy(self) -> torch.Tensor:
        """``[B]`` total uncertainty: entropy of the predictive distribution, ``H[E_s p_s]`` (nats)."""
        return _entropy_from_log_probs(self.log_probs)

    @property
    def expected_entropy(self) -> torch.Tensor:
        """``[B]`` aleatoric uncertainty: the mean over samples of each sample's entropy, ``E_s H[p_s]``
        (nats)."""
        return _entropy_from_log_probs(self.sample_log_probs).mean(dim=0)

    @property
    def mutual_information(self) -> torch.Tensor:
        """``[B]`` epistemic uncertainty: mutual information between label and sample (nats),
        ``total_entropy - expected_entropy`` (Depeweg et al. 2018).

        Non-negative by Jensen's inequality; float rounding below zero (of order 1e-7) is clamped to 0.
        Exactly 0 when ``S = 1``.
        """
        return (self.total_entropy - self.expected_entropy).clamp_min(0.0)

    total = deprecated_property("total", "total_entropy")
    aleatoric = deprecated_property("aleatoric", "expected_entropy")
    epistemic = deprecated_property("epistemic", "mutual_information")

    def uncertainty(self, kind: str) -> torch.Tensor:
        """The ``[B]`` part of the uncertainty named ``kind``: ``"total"`` (:attr:`total_entropy`),
        ``"aleatoric"`` (:attr:`expected_entropy`) or ``"epistemic"`` (:attr:`mutual_information`)."""
        return getattr(self, _ENTROPY_PARTS[_check_kind(kind)])

    # -- conveniences -----------------------------------------------------------------------------------
    def __getitem__(self, index) -> Prediction:
        """Select examples (the batch dimension), keeping all samples."""
        logits = self.logits[:, index]
        if logits.ndim == 2:  # an integer index dropped the batch dimension
            logits = logits.unsqueeze(1)
        return Prediction(logits)

    def to(self, *args, **kwargs) -> Prediction:
        return Prediction(self.logits.to(*args, **kwargs))

    def detach(self) -> Prediction:
        return Prediction(self.logits.detach())

    @staticmethod
    def cat(predictions: list[Prediction]) -> Prediction:
        """Concatenate predictions of the same ``S`` and ``C`` along the batch dimension."""
        if not predictions:
            raise ValueError("predictions: expected a non-empty list of Prediction")
        shapes = {(p.num_samples, p.num_classes) for p in predictions}
        if len(shapes) > 1:
            raise ValueError(
                f"predictions: expected the same (samples, classes) in every part, got {sorted(shapes)}"
            )
        return Prediction(torch.cat([p.logits for p in predictions], dim=1))

    def __repr__(self) -> str:
        s, b, c = self.logits.shape
        return f"Prediction(samples={s}, batch={b}, classes={c})"


class GaussianPrediction:
    """Predictive distribution of a regressor: an equal-weight mixture of ``S`` Gaussians per output.

    Args:
        mean: ``[S, B, D]`` (or ``[B, D]`` for ``S = 1``) per-sample predictive means.
        variance: same shape, per-sample predictive variances (aleatoric noise), all > 0.

    The mixture is summarised by its first two moments (Lakshminarayanan et al. 2017, eq. after (2)):
    ``mean = E_s mu_s`` and ``variance = E_s sigma_s^2 + Var_s mu_s``, with
    ``aleatoric_variance = E_s sigma_s^2`` and ``epistemic_variance = Var_s mu_s`` (population variance over
    samples; the law of total variance, as in Depeweg et al. 2018).

    Shape:
        ``mean``, ``variance``, ``aleatoric_variance``, ``epistemic_variance``, ``stddev``: ``[B, D]``.
    """

    def __init__(self, mean: torch.Tensor, variance: torch.Tensor) -> None:
        layout = "[samples, batch, outputs] or [batch, outputs]"
        mean = check_float_tensor(mean, "mean", (2, 3), layout)
        variance = check_float_tensor(variance, "variance", (2, 3), layout)
        if mean.shape != variance.shape:
            raise ValueError(
                f"mean and variance: expected the same shape, got {tuple(mean.shape)} and "
                f"{tuple(variance.shape)}"
            )
        if mean.ndim == 2:
            mean, variance = mean.unsqueeze(0), variance.unsqueeze(0)
        if variance.numel() and float(variance.min()) <= 0:
            raise ValueError(
                f"variance: expected strictly positive values, got minimum {float(variance.min()):.4g}"
            )
        check_same_length(mean=mean, variance=variance)
        self.sample_mean = mean
        self.sample_variance = variance

    @property
    def num_samples(self) -> int:
        return int(self.sample_mean.shape[0])

    def __len__(self) -> int:
        return int(self.sample_mean.shape[1])

    @property
    def mean(self) -> torch.Tensor:
        """``[B, D]`` mixture mean."""
        return self.sample_mean.mean(dim=0)

    @property
    def aleatoric_variance(self) -> torch.Tensor:
        """``[B, D]`` aleatoric uncertainty: the mean of the per-sample variances, ``E_s sigma_s^2``."""
        return self.sample_variance.mean(dim=0)

    @property
    def epistemic_variance(self) -> torch.Tensor:
        """``[B, D]`` epistemic uncertainty: the variance of the per-sample means, ``Var_s mu_s`` (0 when
        ``S = 1``)."""
        return self.sample_mean.var(dim=0, unbiased=False)

    @property
    def variance(self) -> torch.Tensor:
        """``[B, D]`` total uncertainty: the mixture variance, ``aleatoric_variance + epistemic_variance``."""
        return self.aleatoric_variance + self.epistemic_variance

    @property
    def stddev(self) -> torch.Tensor:
        return self.variance.sqrt()

    total = deprecated_property("total", "variance")
    aleatoric = deprecated_property("aleatoric", "aleatoric_variance")
    epistemic = deprecated_property("epistemic", "epistemic_variance")

    def uncertainty(self, kind: str) -> torch.Tensor:
        """The ``[B, D]`` part of the uncertainty named ``kind``: ``"total"`` (:attr:`variance`),
        ``"aleatoric"`` (:attr:`aleatoric_variance`) or ``"epistemic"`` (:attr:`epistemic_variance`)."""
        return getattr(self, _VARIANCE_PARTS[_check_kind(kind)])

    def __getitem__(self, index) -> GaussianPrediction:
        mean, var = self.sample_mean[:, index], self.sample_variance[:, index]
        if mean.ndim == 2:
            mean, var = mean.unsqueeze(1), var.unsqueeze(1)
        return GaussianPrediction(mean, var)

    def __repr__(self) -> str:
        s, b, d = self.sample_mean.shape
        return f"GaussianPrediction(samples={s}, batch={b}, outputs={d})"
