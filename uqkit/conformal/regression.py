"""Split-conformal prediction intervals for regressors: absolute residual, normalised residual and CQR.

With a calibration split of ``n`` examples, a score ``s(x, y)`` per example and output, and the conformal
quantile ``q`` of the calibration scores (one per output), the interval ``{y : s(x, y) <= q}`` holds a new
target with probability ``>= 1 - alpha`` (and ``<= 1 - alpha + 1 / (n + 1)`` for distinct scores):

* ``"absolute"`` (Papadopoulos et al. 2002; Lei et al. 2018): ``s = |y - mu(x)|``, interval ``mu +- q``.
* ``"normalized"`` (Papadopoulos et al. 2008; Lei et al. 2018, Section 5.2): ``s = |y - mu(x)| / sigma(x)``
  with ``sigma`` the predictive standard deviation, interval ``mu +- q sigma``.
* ``"cqr"``, conformalized quantile regression (Romano, Patterson & Candes 2019):
  ``s = max(lo(x) - y, y - hi(x))`` for predicted lower and upper quantiles, interval
  ``[lo - q, hi + q]`` (``q < 0`` shrinks a band that was too wide).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from uqkit._validation import check_float_tensor
from uqkit.conformal._inputs import check_score
from uqkit.conformal.quantile import check_alpha, conformal_quantile
from uqkit.prediction import GaussianPrediction

__all__ = ["PredictionIntervals", "QuantilePrediction", "SplitConformalRegressor"]

_SCORES = ("absolute", "normalized", "cqr")
_LAYOUT = "[batch] or [batch, outputs]"


class PredictionIntervals(NamedTuple):
    """Closed intervals ``[lower, upper]``, one per example and output; unpacks as ``lower, upper``.

    Shape:
        ``lower``, ``upper``, ``width``: the same, ``[B]`` or ``[B, D]``. Bounds may be infinite.
    """

    lower: torch.Tensor
    upper: torch.Tensor

    @property
    def width(self) -> torch.Tensor:
        """``upper - lower`` (``+inf`` for unbounded intervals)."""
        return self.upper - self.lower


class QuantilePrediction:
    """Lower and upper conditional quantiles of a quantile regressor, the input of CQR.

    Typically the ``alpha / 2`` and ``1 - alpha / 2`` quantiles, from heads trained with the pinball loss
    (Koenker & Bassett 1978) as in Romano et al. 2019; any pair of finite bands works, crossed ones included
    (CQR's score and its guarantee need no order between them).

    Args:
        lower: ``[B]`` or ``[B, D]`` finite predicted lower quantiles.
        upper: the same shape, predicted upper quantiles.
    """

    def __init__(self, lower: torch.Tensor, upper: torch.Tensor) -> None:
        lower = check_float_tensor(lower, "lower", (1, 2), _LAYOUT)
        upper = check_float_tensor(upper, "upper", (1, 2), _LAYOUT)
        if lower.shape != upper.shape:
            raise ValueError(
                f"lower and upper: expected the same shape, got {tuple(lower.shape)} and {tuple(upper.shape)}"
            )
        if lower.device != upper.device:
            raise ValueError(f"lower and upper: expected one device, got {lower.device} and {upper.device}")
        self.lower = lower
        self.upper = upper

    def __len__(self) -> int:
        return int(self.lower.shape[0])

    def __getitem__(self, index) -> QuantilePrediction:
        """Select examples (the batch dimension)."""
        lower, upper = self.lower[index], self.upper[index]
        if lower.ndim < self.lower.ndim:  # an integer index dropped the batch dimension
            lower, upper = lower.unsqueeze(0), upper.unsqueeze(0)
        return QuantilePrediction(lower, upper)

    def __repr__(self) -> str:
        return f"QuantilePrediction(shape={tuple(self.lower.shape)})"


def _as_2d(value: torch.Tensor) -> torch.Tensor:
    return value.unsqueeze(-1) if value.ndim == 1 else value


class SplitConformalRegressor:
    """Prediction intervals with coverage ``>= 1 - alpha`` per output, calibrated on a held-out split.

    Each output dimension is its own conformal problem with its own threshold, so the guarantee holds for
    each output separately (not jointly).

    Args:
        score: ``"absolute"`` (``|y - mu|``), ``"normalized"`` (``|y - mu| / sigma``) or ``"cqr"``
            (``max(lo - y, y - hi)``); see the module docstring.
        alpha: miscoverage level in ``(0, 1)``.

    Inputs by score:
        * ``"absolute"``: a :class:`~uqkit.GaussianPrediction` (its mixture ``mean``) or a tensor of point
          predictions, ``[B]`` or ``[B, D]``.
        * ``"normalized"``: a :class:`~uqkit.GaussianPrediction` (``mean`` and ``stddev``, the square root of
          the predictive variance ``aleatoric + epistemic``).
        * ``"cqr"``: a :class:`QuantilePrediction`.

    Attributes (after :meth:`fit`):
        threshold_: ``[D]`` float64 thresholds ``q`` (``+inf`` when ``n < (1 - alpha) / alpha``, with a
            warning).
        calibration_scores_: ``[n, D]`` calibration scores, each column sorted.

    Shape:
        targets: the shape of the predictions (``[B]`` or ``[B, D]``; ``[B]`` is also accepted for a
        ``[B, 1]`` :class:`~uqkit.GaussianPrediction`). :meth:`predict` returns :class:`PredictionIntervals`
        of the predictions' shape.

    Example::

        calibrator = SplitConformalRegressor(score="normalized", alpha=0.1).fit(val_prediction, y_val)
        lower, upper = calibrator.predict(test_prediction)
    """

    def __init__(self, score: str = "absolute", alpha: float = 0.1) -> None:
        self.score = check_score(score, _SCORES)
        self.alpha = check_alpha(alpha)
        self.threshold_: torch.Tensor | None = None
        self.calibration_scores_: torch.Tensor | None = None
        self._shape: tuple[int, ...] | None = None

    def _center_and_scale(self, prediction: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(mu, sigma)`` of an absolute / normalized input, each ``[B]`` or ``[B, D]``, float64."""
        if isinstance(prediction, GaussianPrediction):
            mean = prediction.mean.detach().double()
            return mean, (prediction.stddev.detach().double() if self.score == "normalized" else None)
        if self.score == "absolute" and isinstance(prediction, torch.Tensor):
            return check_float_tensor(prediction, "prediction", (1, 2), _LAYOUT).detach().double(), None
        wanted = {
            "absolute": "a uqkit.GaussianPrediction or a tensor of point predictions",
            "normalized": "a uqkit.GaussianPrediction (mean and variance)",
        }[self.score]
        raise TypeError(f"prediction: score={self.score!r} expects {wanted}, got {type(prediction).__name__}")

    def _bands(self, prediction: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(prediction, QuantilePrediction):
            raise TypeError(
                f"prediction: score='cqr' expects a uqkit.conformal.QuantilePrediction (lower and upper "
                f"quantiles), got {type(prediction).__name__}"
            )
        return prediction.lower.detach().double(), prediction.upper.detach().double()

    def _reference(self, prediction: Any) -> torch.Tensor:
        """A tensor of the prediction's shape (the mean or the lower band), to check shapes against."""
        return self._bands(prediction)[0] if self.score == "cqr" else self._center_and_scale(prediction)[0]

    def _check_targets(self, targets: Any, shape: torch.Size) -> torch.Tensor:
        targets = check_float_tensor(targets, "targets", (1, 2), _LAYOUT)
        if targets.shape != shape and not (len(shape) == 2 and shape[1] == 1 and targets.shape == shape[:1]):
            raise ValueError(
                f"targets: expected the prediction's shape {tuple(shape)}, got {tuple(targets.shape)}"
            )
        return targets.detach().double().reshape(shape)

    def _scores(self, prediction: Any, targets: torch.Tensor) -> torch.Tensor:
        if self.score == "cqr":
            lower, upper = self._bands(prediction)
            return torch.maximum(lower - targets, targets - upper)
        mean, sigma = self._center_and_scale(prediction)
        residual = (targets - mean).abs()
        return residual if sigma is None else residual / sigma

    def fit(self, prediction: Any, targets: torch.Tensor) -> SplitConformalRegressor:
        """Calibrate on a held-out split: score each example and take the conformal quantile per output.

        Args:
            prediction: the model's prediction on the calibration split (see the class docstring for the
                type each score takes). Never the training data, never the test data.
            targets: the observed values, the prediction's shape.

        Returns:
            ``self``, calibrated.

        Raises:
            TypeError, ValueError: on a prediction of the wrong type for the score, non-finite or
                mismatched targets, or no example.

        Warns:
            UserWarning: when ``B < (1 - alpha) / alpha``: the threshold is ``+inf`` (unbounded intervals).
        """
        reference = self._reference(prediction)
        if reference.shape[0] == 0:
            raise ValueError("prediction: expected at least one calibration example, got 0")
        targets = self._check_targets(targets, reference.shape).to(reference.device)
        scores = _as_2d(self._scores(prediction, targets))
        self.calibration_scores_ = scores.sort(dim=0).values
        self.threshold_ = conformal_quantile(scores, self.alpha, stacklevel=3)
        self._shape = tuple(reference.shape[1:])
        return self

    def predict(self, prediction: Any) -> PredictionIntervals:
        """Intervals for new inputs.

        Args:
            prediction: the model's prediction on the inputs, of the type and output shape of :meth:`fit`.

        Returns:
            :class:`PredictionIntervals` ``(lower, upper)``, float64, the prediction's shape and device.

        Raises:
            RuntimeError: before :meth:`fit`.
            TypeError, ValueError: on a prediction of the wrong type or with another number of outputs.
        """
        if self.threshold_ is None:
            raise RuntimeError("SplitConformalRegressor: call fit(...) on a calibration split before predict")
        reference = self._reference(prediction)
        if tuple(reference.shape[1:]) != self._shape:
            raise ValueError(
                f"prediction: expected the output shape of the calibration split, {self._shape}, got "
                f"{tuple(reference.shape[1:])}"
            )
        q = self.threshold_.to(reference.device)
        q = q if reference.ndim == 2 else q.squeeze(0)
        if self.score == "cqr":
            lower, upper = self._bands(prediction)
            return PredictionIntervals(lower - q, upper + q)
        mean, sigma = self._center_and_scale(prediction)
        half_width = q if sigma is None else q * sigma
        return PredictionIntervals(mean - half_width, mean + half_width)

    def __repr__(self) -> str:
        fitted = "" if self.calibration_scores_ is None else f", n={self.calibration_scores_.shape[0]}"
        return f"SplitConformalRegressor(score={self.score!r}, alpha={self.alpha}{fitted})"
