"""Methods that turn a model into one that predicts with uncertainty."""

from uqkit._deprecation import renamed_module_attribute
from uqkit.methods.apd import APD, ensemble_from_vectors, parameter_vectors
from uqkit.methods.apd_mixture import APDMixture
from uqkit.methods.convert import RENAMED as _RENAMED_CONFIGS
from uqkit.methods.convert import (
    BatchEnsembleConfig,
    ConversionReport,
    FlipoutConfig,
    Rank1Config,
    ReparameterizationConfig,
    bayesianize_,
    register_conversion,
)
from uqkit.methods.distillation import distill_predictive, distillation_loss
from uqkit.methods.ensemble import DeepEnsemble, register_vectorization, vmap_vectorization
from uqkit.methods.hyper_ensemble import (
    HyperEnsemble,
    Hyperparameters,
    HyperparameterSpace,
    greedy_ensemble_selection,
    hyper_deep_ensemble,
)
from uqkit.methods.laplace import LastLayerLaplace
from uqkit.methods.mimo import MIMO
from uqkit.methods.ncp import NoiseContrastivePrior, ncp_loss
from uqkit.methods.optimal_scales import diagonal_ggn, fit_posterior_scales_, optimal_posterior_scale
from uqkit.methods.prediction_protocol import predict
from uqkit.methods.sngp import SNGP

__all__ = [
    "APD",
    "MIMO",
    "SNGP",
    "APDMixture",
    "BatchEnsembleConfig",
    "ConversionReport",
    "DeepEnsemble",
    "FlipoutConfig",
    "HyperEnsemble",
    "HyperparameterSpace",
    "Hyperparameters",
    "LastLayerLaplace",
    "NoiseContrastivePrior",
    "Rank1Config",
    "ReparameterizationConfig",
    "bayesianize_",
    "diagonal_ggn",
    "distill_predictive",
    "distillation_loss",
    "ensemble_from_vectors",
    "fit_posterior_scales_",
    "greedy_ensemble_selection",
    "hyper_deep_ensemble",
    "ncp_loss",
    "optimal_posterior_scale",
    "parameter_vectors",
    "predict",
    "register_conversion",
    "register_vectorization",
    "vmap_vectorization",
]


def __getattr__(name: str):
    """Former names (``GaussianConfig``), deprecated: docs/architecture.md, "Names"."""
    return renamed_module_attribute(__name__, name, _RENAMED_CONFIGS, globals())
