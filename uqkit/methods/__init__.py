"""Methods that turn a model into one that predicts with uncertainty."""

from uqkit.methods.convert import (
    ConversionReport,
    FlipoutConfig,
    GaussianConfig,
    bayesianize_,
    register_conversion,
)
from uqkit.methods.ensemble import DeepEnsemble, register_vectorization, vmap_vectorization
from uqkit.methods.predict import predict
from uqkit.methods.sngp import SNGP

__all__ = [
    "SNGP",
    "ConversionReport",
    "DeepEnsemble",
    "FlipoutConfig",
    "GaussianConfig",
    "bayesianize_",
    "predict",
    "register_conversion",
    "register_vectorization",
    "vmap_vectorization",
]
