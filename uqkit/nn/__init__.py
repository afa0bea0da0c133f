"""Stochastic layers: drop-in Bayesian twins of ``torch.nn`` layers and always-on MC dropout.

Every layer is a plain module, ``y = layer(x)``, that samples on each forward pass in training and eval
mode; :func:`use_posterior_mean` gives the deterministic mean-weight output. Bayesian layers expose
``kl_divergence()``; :func:`uqkit.kl_divergence` sums them over a model.
"""

from uqkit._deprecation import renamed_module_attribute
from uqkit.nn import priors
from uqkit.nn._noise import rademacher
from uqkit.nn._posterior import BayesianModule, StochasticModule, use_posterior_mean
from uqkit.nn.batchensemble import BatchEnsembleConv1d, BatchEnsembleConv2d, BatchEnsembleLinear
from uqkit.nn.dropout import MCDropout, MemberDropout
from uqkit.nn.flipout import FlipoutConv1d, FlipoutConv2d, FlipoutLinear, FlipoutLSTM
from uqkit.nn.gp import RandomFeatureGP
from uqkit.nn.heteroscedastic import HeteroscedasticHead
from uqkit.nn.priors import NormalPrior, ScaleMixtureNormalPrior
from uqkit.nn.rank1 import Rank1Conv1d, Rank1Conv2d, Rank1Linear
from uqkit.nn.regression_head import BayesianRegressionHead
from uqkit.nn.reparam import RENAMED as _RENAMED_LAYERS
from uqkit.nn.reparam import (
    ReparameterizationConv1d,
    ReparameterizationConv2d,
    ReparameterizationLinear,
    ReparameterizationLSTM,
)
from uqkit.nn.spectral import BoundedSpectralNorm, spectral_norm
from uqkit.nn.stacked import (
    StackedBayesianLastLayerMLP,
    StackedDropout,
    StackedFlipoutLinear,
    StackedGaussianMLP,
    StackedLinear,
)

__all__ = [
    "BatchEnsembleConv1d",
    "BatchEnsembleConv2d",
    "BatchEnsembleLinear",
    "BayesianModule",
    "BayesianRegressionHead",
    "BoundedSpectralNorm",
    "FlipoutConv1d",
    "FlipoutConv2d",
    "FlipoutLSTM",
    "FlipoutLinear",
    "HeteroscedasticHead",
    "MCDropout",
    "MemberDropout",
    "NormalPrior",
    "RandomFeatureGP",
    "Rank1Conv1d",
    "Rank1Conv2d",
    "Rank1Linear",
    "ReparameterizationConv1d",
    "ReparameterizationConv2d",
    "ReparameterizationLSTM",
    "ReparameterizationLinear",
    "ScaleMixtureNormalPrior",
    "StackedBayesianLastLayerMLP",
    "StackedDropout",
    "StackedFlipoutLinear",
    "StackedGaussianMLP",
    "StackedLinear",
    "StochasticModule",
    "priors",
    "rademacher",
    "spectral_norm",
    "use_posterior_mean",
]


def __getattr__(name: str):
    """The layers' former names (``GaussianLinear``, ...), deprecated: docs/architecture.md, "Names"."""
    return renamed_module_attribute(__name__, name, _RENAMED_LAYERS, globals())
