"""Stochastic gradient Langevin dynamics (Welling & Teh 2011): :class:`SGLD`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from uqkit.sgmcmc._base import SGMCMCOptimizer, sgmcmc_defaults

__all__ = ["SGLD"]


class SGLD(SGMCMCOptimizer):
    """Stochastic gradient Langevin dynamics (Welling & Teh 2011, "Bayesian learning via stochastic gradient
    Langevin dynamics", Eq. 4), for a loss that is the *mean* negative log-likelihood of the batch.

    The paper's update with step size ``epsilon``, ``n`` examples per batch and ``N`` in the data set::

        Delta theta = (epsilon / 2) (grad log p(theta) + (N / n) sum_i grad log p(x_i | theta)) + eta,
        eta ~ N(0, epsilon T I)

    (``T``: the temperature, 1 for the posterior). With the mean loss ``L`` and the Gaussian prior of
    precision ``lambda`` (:mod:`uqkit.sgmcmc._base`), ``(N / n) sum_i grad log p = -N grad L`` and
    ``grad log p(theta) = -lambda theta``, so with ``epsilon = 2 lr / N``::

        theta <- theta - lr (grad L + (lambda / N) theta) + sqrt(2 lr T / N) xi,     xi ~ N(0, I).

    Without noise (``temperature = 0``, or a group's ``noise = False``) this is exactly
    ``torch.optim.SGD(lr=lr, weight_decay=lambda / N)``. The paper decays ``epsilon_t = a (b + t)^-gamma``
    (:func:`uqkit.sgmcmc.polynomial_step_size`); set a group's ``lr`` before each step for any schedule.

    Args:
        params: parameters or parameter groups, as for any ``torch.optim.Optimizer``.
        lr: learning rate on the mean loss, ``> 0`` (``epsilon = 2 lr / N``).
        num_data: ``N``, the number of training examples the mean loss is an estimate over.
        temperature: ``T >= 0``; the noise variance is ``2 lr T / N``.
        prior_precision: ``lambda >= 0`` of the prior ``N(0, lambda^-1 I)`` (0: a flat prior).
        generator: optional ``torch.Generator`` for the noise (on the parameters' device).

    Raises:
        TypeError, ValueError: for an argument of the wrong type or out of range, naming it.

    Example:
        >>> optimizer = SGLD(model.parameters(), lr=1e-2, num_data=len(dataset), prior_precision=1.0)
        >>> loss = F.cross_entropy(model(x), y)  # mean over the batch
        >>> optimizer.zero_grad(); loss.backward(); optimizer.step()
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float,
        num_data: int,
        temperature: float = 1.0,
        prior_precision: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        defaults = sgmcmc_defaults(lr, num_data, temperature, prior_precision)
        super().__init__(params, defaults, generator)

    def _update(self, param: torch.Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        param.add_(self.energy_gradient(param, group), alpha=-group["lr"])
        scale = self.noise_scale(group, 2.0)
        if scale:
            param.add_(self.standard_normal(param), alpha=scale)
