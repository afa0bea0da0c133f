"""Post-hoc calibrators and differentiable calibration objectives.

* :class:`TemperatureScaler`: temperature scaling of logits, fitted on a validation split (Guo et al. 2017).
* :func:`soft_binned_ece`: soft-binned calibration error, differentiable (Karandikar et al. 2021).
"""

from uqkit.calibration.soft_binning import soft_binned_ece
from uqkit.calibration.temperature import TemperatureScaler

__all__ = ["TemperatureScaler", "soft_binned_ece"]
