"""Split conformal prediction on top of any prediction: sets for classifiers, intervals for regressors.

Calibrate on a held-out split, then predict sets (``[B, C]`` bool masks) or intervals that hold the truth
with probability at least ``1 - alpha`` (equations and papers: ``docs/conformal.md``).

* :class:`SplitConformalClassifier`: LAC, APS and RAPS sets, randomised or not, from a
  :class:`~uqkit.Prediction` (its predictive probabilities) or a ``[B, C]`` tensor of probabilities.
* :class:`SplitConformalRegressor`: absolute-residual and normalised-residual intervals from a
  :class:`~uqkit.GaussianPrediction`, CQR intervals from a :class:`QuantilePrediction`; returns
  :class:`PredictionIntervals`.
* :func:`conformal_quantile`: the finite-sample-corrected quantile ``s_(ceil((n + 1)(1 - alpha)))``.
* :func:`lac_scores`, :func:`aps_scores`, :func:`raps_scores`: the classification scores of every class.

The metrics of sets and intervals are in :mod:`uqkit.metrics`: ``empirical_coverage``, ``set_size``,
``size_stratified_coverage``, ``interval_width``.
"""

from uqkit.conformal.classification import SplitConformalClassifier
from uqkit.conformal.quantile import conformal_quantile, minimum_calibration_size
from uqkit.conformal.regression import PredictionIntervals, QuantilePrediction, SplitConformalRegressor
from uqkit.conformal.scores import aps_scores, lac_scores, raps_scores

__all__ = [
    "PredictionIntervals",
    "QuantilePrediction",
    "SplitConformalClassifier",
    "SplitConformalRegressor",
    "aps_scores",
    "conformal_quantile",
    "lac_scores",
    "minimum_calibration_size",
    "raps_scores",
]
