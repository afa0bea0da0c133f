"""The reliability benchmark: tasks, methods, one trainer, evaluation and report.

Importing the package registers every benchmark method (the spine's in :mod:`uqkit.bench.registry`, the
Bayesian ones in :mod:`uqkit.bench.methods_bayesian`, SNGP and heteroscedastic in
:mod:`uqkit.bench.methods_distance`, BatchEnsemble, MIMO and rank-1 BNNs in
:mod:`uqkit.bench.methods_ensembles`, the last-layer Laplace in :mod:`uqkit.bench.methods_posthoc`, hyper-deep
ensembles in :mod:`uqkit.bench.methods_hyper`,
SGLD and cyclical SG-MCMC in :mod:`uqkit.bench.methods_sgmcmc`, their distilled forms in
:mod:`uqkit.bench.methods_distilled`), and every recipe of the UCI regression protocol (the default ones in
:mod:`uqkit.bench.regression`, the opt-in ones in :mod:`uqkit.bench.regression_sgmcmc`,
:mod:`uqkit.bench.regression_distilled`, :mod:`uqkit.bench.regression_apd` and
:mod:`uqkit.bench.regression_hyper`).
"""

from uqkit.bench import (
    methods_bayesian,
    methods_distance,
    methods_distilled,
    methods_ensembles,
    methods_hyper,
    methods_posthoc,
    methods_sgmcmc,
    registry,
    regression_apd,
    regression_distilled,
    regression_hyper,
    regression_sgmcmc,
)

__all__ = [
    "methods_bayesian",
    "methods_distance",
    "methods_distilled",
    "methods_ensembles",
    "methods_hyper",
    "methods_posthoc",
    "methods_sgmcmc",
    "registry",
    "regression_apd",
    "regression_distilled",
    "regression_hyper",
    "regression_sgmcmc",
]
