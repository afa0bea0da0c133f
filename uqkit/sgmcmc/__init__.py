"""Stochastic-gradient MCMC: samplers, their step-size schedules, and the samples as one vectorized model.

* Optimizers (``torch.optim.Optimizer``, for a loss that is the *mean* negative log-likelihood of the batch,
  with ``num_data = N``, a ``temperature`` and a Gaussian prior's ``prior_precision``; conventions in
  :mod:`uqkit.sgmcmc._base`): :class:`SGLD` (Welling & Teh 2011), :class:`PreconditionedSGLD` (Li et al.
  2016), :class:`SGHMC` (Chen et al. 2014).
* Schedules: :class:`CyclicalSchedule` / :func:`cyclical_step_size` (Zhang et al. 2020: cosine cycles, an
  exploration stage without noise, then a sampling stage), :func:`polynomial_step_size` (Welling & Teh).
* Samples: :class:`SampleCollector` keeps thinned states (:class:`EveryKSteps`, :class:`CycleEnds`) and
  predicts with them as one :class:`uqkit.DeepEnsemble` (``uqkit.predict(collector, x)``: ``[K, B, C]``);
  it saves and loads them, and gives them as a ``[K, P]`` matrix.
* Divergence: :class:`DivergenceMonitor` flags a chain whose loss is non-finite, or far above its running
  level in a sampling stage (:class:`Divergence`).

Equations and the mapping to the papers: docs/sgmcmc.md.
"""

from uqkit.sgmcmc._base import SGMCMCOptimizer
from uqkit.sgmcmc.collector import SampleCollector
from uqkit.sgmcmc.divergence import Divergence, DivergenceMonitor
from uqkit.sgmcmc.psgld import PreconditionedSGLD
from uqkit.sgmcmc.schedule import CyclicalSchedule, cyclical_step_size, polynomial_step_size
from uqkit.sgmcmc.sghmc import SGHMC
from uqkit.sgmcmc.sgld import SGLD
from uqkit.sgmcmc.thinning import CycleEnds, EveryKSteps

__all__ = [
    "SGHMC",
    "SGLD",
    "CycleEnds",
    "CyclicalSchedule",
    "Divergence",
    "DivergenceMonitor",
    "EveryKSteps",
    "PreconditionedSGLD",
    "SGMCMCOptimizer",
    "SampleCollector",
    "cyclical_step_size",
    "polynomial_step_size",
]
