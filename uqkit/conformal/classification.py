"""Split-conformal prediction sets for classifiers: LAC, APS and RAPS, randomised or not.

Split conformal prediction (Vovk et al. 2005; Papadopoulos et al. 2002; Lei et al. 2018) turns any
classifier's predictive probabilities into sets ``C(x)`` of classes with the marginal guarantee
``P(y in C(x)) >= 1 - alpha`` for a test point exchangeable with a held-out calibration split: score each
calibration example's true label (:mod:`uqkit.conformal.scores`), take the finite-sample-corrected quantile
``q`` of those ``n`` scores (:func:`uqkit.conformal.conformal_quantile`), and return, for a test input, the
classes whose score is at most ``q``. The equations and the choice of variants are in ``docs/conformal.md``.
"""

from __future__ import annotations

from typing import Any

import torch

from uqkit._validation import check_labels
from uqkit.conformal._inputs import check_generator, check_score, probabilities, uniform
from uqkit.conformal.quantile import check_alpha, conformal_quantile
from uqkit.conformal.scores import check_raps_parameters, class_order, lac_scores, raps_scores
from uqkit.prediction import Prediction

__all__ = ["SplitConformalClassifier"]

_SCORES = ("lac", "aps", "raps")
_RAPS_DEFAULTS = {"k_reg": 1, "lam": 0.01}


class SplitConformalClassifier:
    """Prediction sets with coverage ``>= 1 - alpha``, calibrated on a held-out split.

    Scores (``score``), with ``p`` the predictive probabilities, ``r(x, y)`` the rank of class ``y`` by
    decreasing ``p`` and ``u ~ U(0, 1)`` one draw per example:

    * ``"lac"``, the threshold classifier of Sadinle, Lei & Wasserman 2019: ``s = 1 - p_y``; the set is
      ``{y : p_y >= 1 - q}``, the smallest sets on average for a calibrated model; it may be empty.
    * ``"aps"``, adaptive prediction sets (Romano, Sesia & Candes 2020): ``s`` is the mass of the classes
      ranked at or above ``y`` (less ``u p_y`` when randomised); the set is the top classes, as many as the
      input needs.
    * ``"raps"`` (Angelopoulos et al. 2021): APS plus ``lam * max(r(x, y) - k_reg, 0)``, which keeps the
      sets of a model with many small, noisy tail probabilities small.

    Variants (``randomized``):

    * ``"aps"`` / ``"raps"``, ``randomized=True``: calibration and test scores use ``u`` (the papers'
      randomised sets); the set ``{y : s(x, y, u) <= q}`` may be empty, and its coverage lies in
      ``[1 - alpha, 1 - alpha + 1 / (n + 1)]``.
    * ``"aps"`` / ``"raps"``, ``randomized=False``: scores with ``u = 0``, and the set holds the top-ranked
      classes up to and including the first whose score passes ``q`` (the papers' non-randomised sets, as in
      their reference code): never empty, coverage ``>= 1 - alpha`` but possibly more (conservative).
    * ``"lac"``, ``randomized=False``: ``{y : 1 - p_y <= q}``, coverage in
      ``[1 - alpha, 1 - alpha + 1 / (n + 1)]``.
    * ``"lac"``, ``randomized=True``: the LAC score is continuous, so the randomisation goes into the
      threshold instead: the smoothed conformal p-value (Vovk, Gammerman & Shafer 2005, Section 2.4)
      ``p(y) = (#{i : s_i > s_y} + u (#{i : s_i = s_y} + 1)) / (n + 1)`` and the set ``{y : p(y) > alpha}``,
      whose coverage is exactly ``1 - alpha``.

    The guarantee is marginal (over calibration and test draws) and needs the calibration split to be
    exchangeable with the test data and unused in training. The threshold is ``+inf`` (every set is the full
    set, with a warning) when ``n < (1 - alpha) / alpha``; randomised LAC needs no such minimum.

    Args:
        score: ``"lac"``, ``"aps"`` or ``"raps"``.
        alpha: miscoverage level in ``(0, 1)``: sets hold the true class with probability ``>= 1 - alpha``.
        randomized: use the randomised variant (above). Randomised sets draw ``u`` at :meth:`fit` (APS,
            RAPS) and at :meth:`predict`; pass a ``torch.Generator`` there to reproduce them.
        k_reg: RAPS only: the number of top-ranked classes without penalty, an int >= 0 (default 1).
        lam: RAPS only: the penalty per rank beyond ``k_reg``, >= 0 (default 0.01). Choose ``k_reg`` and
            ``lam`` on data other than the calibration split (Angelopoulos et al. 2021, Section 2.2).

    Attributes (after :meth:`fit`):
        threshold_: the calibrated threshold ``q`` (a float; ``+inf`` when ``n`` is too small; ``None`` for
            randomised LAC, which compares p-values instead).
        calibration_scores_: ``[n]`` the sorted true-label scores of the calibration split (float64).
        num_classes_: ``C``.

    Shape:
        :meth:`fit`: a :class:`~uqkit.Prediction` of ``B`` examples (or ``[B, C]`` probabilities) and ``[B]``
        labels. :meth:`predict`: returns a ``[B, C]`` ``torch.bool`` mask, ``True`` for the classes in each
        set.

    Example::

        calibrator = SplitConformalClassifier(score="aps", alpha=0.1, randomized=True)
        calibrator.fit(uqkit.predict(model, x_val), y_val, generator=torch.Generator().manual_seed(0))
        sets = calibrator.predict(uqkit.predict(model, x_test), generator=torch.Generator().manual_seed(1))
        uqkit.metrics.empirical_coverage(sets, y_test), uqkit.metrics.set_size(sets).mean
    """

    def __init__(
        self,
        score: str = "lac",
        alpha: float = 0.1,
        randomized: bool = False,
        k_reg: int | None = None,
        lam: float | None = None,
    ) -> None:
        self.score = check_score(score, _SCORES)
        self.alpha = check_alpha(alpha)
        if not isinstance(randomized, bool):
            raise TypeError(f"randomized: expected a bool, got {type(randomized).__name__} {randomized!r}")
        self.randomized = randomized
        if score != "raps" and (k_reg is not None or lam is not None):
            raise ValueError(f"k_reg and lam: apply to score='raps' only, got them with score={score!r}")
        k_reg = _RAPS_DEFAULTS["k_reg"] if k_reg is None else k_reg
        lam = _RAPS_DEFAULTS["lam"] if lam is None else lam
        self.k_reg, self.lam = check_raps_parameters(k_reg, lam)
        self.threshold_: float | None = None
        self.calibration_scores_: torch.Tensor | None = None
        self.num_classes_: int | None = None

    @property
    def _smoothed(self) -> bool:
        """Randomised LAC: smoothed p-values instead of a threshold."""
        return self.score == "lac" and self.randomized

    def _scores(self, probs: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
        """``[B, C]`` scores of every class; ``u`` is used by the randomised APS and RAPS only."""
        if self.score == "lac":
            return lac_scores(probs)
        lam = self.lam if self.score == "raps" else 0.0
        k_reg = self.k_reg if self.score == "raps" else 0
        return raps_scores(probs, k_reg, lam, u)

    def _uniform(self, needed: bool, count: int, generator: Any, device: torch.device) -> torch.Tensor | None:
        """``count`` U(0, 1) draws if ``needed``, else ``None``; the generator is checked either way."""
        check_generator(generator, device)
        return uniform(count, generator, device) if needed else None

    def fit(
        self,
        prediction: Prediction | torch.Tensor,
        labels: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> SplitConformalClassifier:
        """Calibrate on a held-out split: score each example's true label and take the conformal quantile.

        Args:
            prediction: the model's :class:`~uqkit.Prediction` on the calibration split (its predictive
                ``probs``, the mean over samples of the softmax, are scored), or ``[B, C]`` probabilities.
                Never the training data, never the test data.
            labels: ``[B]`` integer class indices in ``[0, C)``.
            generator: the source of the uniform draws of randomised APS / RAPS (on the prediction's device);
                ``None`` uses torch's global generator.

        Returns:
            ``self``, calibrated.

        Raises:
            TypeError, ValueError: on malformed inputs (not probabilities, labels out of range or of another
                length, no example, a generator of another type or device).

        Warns:
            UserWarning: when ``B < (1 - alpha) / alpha``: the threshold is ``+inf`` (full sets).
        """
        probs = probabilities(prediction, "prediction")
        batch, num_classes = probs.shape
        labels = check_labels(labels, "labels", num_classes=num_classes, length=batch)
        # only randomised APS / RAPS scores the calibration split with u; randomised LAC uses u at predict
        u = self._uniform(self.randomized and self.score != "lac", batch, generator, probs.device)
        labels = labels.to(device=probs.device, dtype=torch.long)
        true_scores = self._scores(probs, u).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        self.calibration_scores_ = true_scores.sort().values
        self.num_classes_ = num_classes
        if self._smoothed:
            self.threshold_ = None
        else:
            self.threshold_ = float(conformal_quantile(true_scores, self.alpha, stacklevel=3))
        return self

    def predict(
        self, prediction: Prediction | torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Prediction sets for new inputs.

        Args:
            prediction: the model's :class:`~uqkit.Prediction` (or ``[B, C]`` probabilities) on the inputs,
                with the ``C`` classes of the calibration split.
            generator: the source of the uniform draws of the randomised variants (one per example); ``None``
                uses torch's global generator.

        Returns:
            ``[B, C]`` ``torch.bool`` mask on the prediction's device, ``True`` for the classes in each set.

        Raises:
            RuntimeError: before :meth:`fit`.
            TypeError, ValueError: on malformed inputs or another number of classes.
        """
        if self.calibration_scores_ is None:
            raise RuntimeError(
                "SplitConformalClassifier: call fit(...) on a calibration split before predict"
            )
        probs = probabilities(prediction, "prediction")
        if probs.shape[1] != self.num_classes_:
            raise ValueError(
                f"prediction: expected {self.num_classes_} classes (as in the calibration split), got "
                f"{probs.shape[1]}"
            )
        u = self._uniform(self.randomized, probs.shape[0], generator, probs.device)
        if self._smoothed:
            return self._smoothed_sets(lac_scores(probs), u)
        scores = self._scores(probs, u)
        if self.score == "lac" or self.randomized:
            return scores <= self.threshold_
        return self._sets_through_crossing(probs, scores)

    def _sets_through_crossing(self, probs: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Non-randomised APS / RAPS sets: the top classes up to and including the first whose score passes
        the threshold, i.e. class ``pi_r`` is in the set iff ``r = 1`` or ``s(pi_{r-1}) <= q``."""
        order = class_order(probs)
        sorted_scores = scores.gather(-1, order)
        previous = torch.cat([torch.full_like(sorted_scores[:, :1], -torch.inf), sorted_scores[:, :-1]], -1)
        return torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, order, previous <= self.threshold_)

    def _smoothed_sets(self, scores: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Randomised LAC: ``{y : #{s_i > s_y} + u (#{s_i = s_y} + 1) > alpha (n + 1)}``."""
        calibration = self.calibration_scores_.to(scores.device)
        n = calibration.shape[0]
        below_or_equal = torch.searchsorted(calibration, scores.contiguous(), right=True)
        below = torch.searchsorted(calibration, scores.contiguous(), right=False)
        greater, equal = n - below_or_equal, below_or_equal - below
        return greater + u.unsqueeze(-1) * (equal + 1) > self.alpha * (n + 1)

    def __repr__(self) -> str:
        extra = f", k_reg={self.k_reg}, lam={self.lam}" if self.score == "raps" else ""
        fitted = "" if self.calibration_scores_ is None else f", n={self.calibration_scores_.shape[0]}"
        return (
            f"SplitConformalClassifier(score={self.score!r}, alpha={self.alpha}, "
            f"randomized={self.randomized}{extra}{fitted})"
        )
