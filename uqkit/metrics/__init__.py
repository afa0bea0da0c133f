"""Evaluation metrics: pure functions of tensors, no state.

* Classification (:mod:`.classification`): :func:`accuracy`, :func:`nll`, :func:`brier_score`.
* Calibration (:mod:`.calibration_error`): :func:`expected_calibration_error`, :func:`calibration_curve`.
* OOD detection (:mod:`.ood`): :func:`ood_auroc`, :func:`ood_aupr`, :func:`fpr_at_95_tpr`.
* Selective prediction (:mod:`.selective`): :func:`risk_coverage_curve`, :func:`aurc`,
  :func:`referral_curve`.
* Regression (:mod:`.regression`): :func:`rmse`, :func:`gaussian_nll`, :func:`interval_coverage`.
* Conformal sets and intervals (:mod:`.conformal`): :func:`empirical_coverage`, :func:`set_size`,
  :func:`size_stratified_coverage`, :func:`interval_width`.
"""

from uqkit.metrics.calibration_error import CalibrationCurve, calibration_curve, expected_calibration_error
from uqkit.metrics.classification import accuracy, brier_score, nll
from uqkit.metrics.conformal import (
    SetSize,
    SizeStratifiedCoverage,
    empirical_coverage,
    interval_width,
    set_size,
    size_stratified_coverage,
)
from uqkit.metrics.ood import fpr_at_95_tpr, ood_aupr, ood_auroc
from uqkit.metrics.regression import gaussian_nll, interval_coverage, rmse
from uqkit.metrics.selective import (
    ReferralCurve,
    RiskCoverageCurve,
    aurc,
    referral_curve,
    risk_coverage_curve,
)

__all__ = [
    "CalibrationCurve",
    "ReferralCurve",
    "RiskCoverageCurve",
    "SetSize",
    "SizeStratifiedCoverage",
    "accuracy",
    "aurc",
    "brier_score",
    "calibration_curve",
    "empirical_coverage",
    "expected_calibration_error",
    "fpr_at_95_tpr",
    "gaussian_nll",
    "interval_coverage",
    "interval_width",
    "nll",
    "ood_aupr",
    "ood_auroc",
    "referral_curve",
    "risk_coverage_curve",
    "rmse",
    "set_size",
    "size_stratified_coverage",
]
