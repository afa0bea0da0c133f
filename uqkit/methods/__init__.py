"""Methods that turn a model into one that predicts with uncertainty."""

from uqkit.methods.convert import (
    BatchEnsembleConfig,
    ConversionReport,
    FlipoutConfig,
    GaussianConfig,
    Rank1Config,
    bayesianize_,
    register_conversion,
)
from uqkit.methods.ensemble import DeepEnsemble, register_vectorization, vmap_vectorization
from uqkit.methods.laplace import LastLayerLaplace
from uqkit.methods.mimo import MIMO
from uqkit.methods.optimal_scales import diagonal_ggn, fit_posterior_scales_, optimal_posterior_scale
from uqkit.methods.predict import predict
from uqkit.methods.sngp import SNGP

__all__ = [
    "MIMO",
    "SNGP",
    "BatchEnsembleConfig",
    "ConversionReport",
    "DeepEnsemble",
    "FlipoutConfig",
    "GaussianConfig",
    "LastLayerLaplace",
    "Rank1Config",
    "bayesianize_",
    "diagonal_ggn",
    "fit_posterior_scales_",
    "optimal_posterior_scale",
    "predict",
    "register_conversion",
    "register_vectorization",
    "vmap_vectorization",
]
