"""uqkit: trustworthy uncertainty for PyTorch models at close to the cost of one model."""

from uqkit import calibration, conformal, data, metrics, nn, sgmcmc
from uqkit._deprecation import renamed_module_attribute
from uqkit.methods.apd import APD
from uqkit.methods.apd_mixture import APDMixture
from uqkit.methods.convert import RENAMED as _RENAMED_CONFIGS
from uqkit.methods.convert import (
    BatchEnsembleConfig,
    FlipoutConfig,
    Rank1Config,
    ReparameterizationConfig,
    bayesianize_,
)
from uqkit.methods.distillation import distill_predictive
from uqkit.methods.ensemble import DeepEnsemble
from uqkit.methods.laplace import LastLayerLaplace
from uqkit.methods.mimo import MIMO
from uqkit.methods.ncp import NoiseContrastivePrior, ncp_loss
from uqkit.methods.optimal_scales import fit_posterior_scales_
from uqkit.methods.prediction_protocol import predict
from uqkit.methods.sngp import SNGP
from uqkit.objectives import ELBO, gaussian_nll_loss, kl_divergence
from uqkit.prediction import GaussianPrediction, Prediction

__version__ = "0.1.0"

__all__ = [
    "APD",
    "ELBO",
    "MIMO",
    "SNGP",
    "APDMixture",
    "BatchEnsembleConfig",
    "DeepEnsemble",
    "FlipoutConfig",
    "GaussianPrediction",
    "LastLayerLaplace",
    "NoiseContrastivePrior",
    "Prediction",
    "Rank1Config",
    "ReparameterizationConfig",
    "__version__",
    "bayesianize_",
    "calibration",
    "conformal",
    "data",
    "distill_predictive",
    "fit_posterior_scales_",
    "gaussian_nll_loss",
    "kl_divergence",
    "metrics",
    "ncp_loss",
    "nn",
    "predict",
    "sgmcmc",
]


def __getattr__(name: str):
    """Former names (``GaussianConfig``), deprecated: docs/architecture.md, "Names"."""
    return renamed_module_attribute(__name__, name, _RENAMED_CONFIGS, globals())
