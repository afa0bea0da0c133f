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
    "HyperEnsemble",
    "HyperparameterSpace",
    "Hyperparameters",
    "LastLayerLaplace",
    "NoiseContrastivePrior",
    "Rank1Config",
    "bayesianize_",
    "greedy_ensemble_selection",
    "hyper_deep_ensemble",
    "ncp_loss",
    "predict",
    "register_conversion",
    "register_vectorization",
    "vmap_vectorization",
]
