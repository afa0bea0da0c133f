"""Stochastic gradient Hamiltonian Monte Carlo with friction (Chen et al. 2014): :class:`SGHMC`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from uqkit._validation import check_unit_interval
from uqkit.sgmcmc._base import SGMCMCOptimizer, sgmcmc_defaults

__all__ = ["SGHMC"]


class SGHMC(SGMCMCOptimizer):
    """Stochastic gradient HMC (Chen, Fox & Guestrin 2014, "Stochastic gradient Hamiltonian Monte Carlo"),
    in the momentum form of their Sec. 3.3 (Eq. 15), for a loss that is the *mean* negative log-likelihood.

    Chen et al. reparametrise SGHMC with step size ``eta = epsilon^2 M^-1``, friction ``alpha = epsilon M^-1
    C`` and velocity ``v = epsilon M^-1 r`` (Eq. 15)::

        theta <- theta + v
        v <- v - eta grad U~(theta) - alpha v + N(0, 2 (alpha - beta_hat) eta T),

    taking the estimate of the gradient noise ``beta_hat = 0`` (as they recommend for small ``eta``) and
    ``T`` the temperature. With the mean loss ``L``, the prior ``N(0, lambda^-1 I)``
    (:mod:`uqkit.sgmcmc._base`, ``grad U~ = N (grad L + (lambda / N) theta)``) and ``eta = lr / N``, one step
    at the current ``theta`` is::

        v <- (1 - alpha) v - lr (grad L + (lambda / N) theta) + sqrt(2 alpha lr T / N) xi,   xi ~ N(0, I)
        theta <- theta + v.

    This parametrisation is by **friction** ``alpha`` (``friction``), in ``(0, 1]``; ``1 - alpha`` is the
    momentum of SGD with momentum. Without noise (``temperature = 0`` or ``noise = False``) and at a
    constant ``lr`` this is exactly ``torch.optim.SGD(lr=lr, momentum=1 - alpha, weight_decay=lambda / N)``
    (with ``v = -lr * momentum_buffer``). With ``alpha = 1`` it is :class:`SGLD` with the same ``lr``.
    Zhang et al. 2020's cSGHMC uses this form (their code's ``alpha`` is this friction).

    The velocity starts at 0 and is kept in ``state["momentum_buffer"]`` (saved by ``state_dict()``); it is
    never resampled.

    Args:
        params: parameters or parameter groups, as for any ``torch.optim.Optimizer``.
        lr: learning rate on the mean loss, ``> 0`` (``eta = lr / N``).
        num_data: ``N``, the number of training examples.
        temperature: ``T >= 0``; the noise variance is ``2 alpha lr T / N``.
        prior_precision: ``lambda >= 0`` of the prior ``N(0, lambda^-1 I)``.
        friction: ``alpha`` in ``(0, 1]`` (default 0.1: momentum 0.9).
        generator: optional ``torch.Generator`` for the noise.

    Raises:
        TypeError, ValueError: for an argument of the wrong type or out of range, naming it.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float,
        num_data: int,
        temperature: float = 1.0,
        prior_precision: float = 0.0,
        friction: float = 0.1,
        generator: torch.Generator | None = None,
    ) -> None:
        defaults = sgmcmc_defaults(lr, num_data, temperature, prior_precision)
        defaults["friction"] = check_unit_interval(friction, "friction", open_left=True)
        super().__init__(params, defaults, generator)

    def _check_group(self, group: dict[str, Any]) -> None:
        super()._check_group(group)
        check_unit_interval(group["friction"], "friction", open_left=True)

    def _update(self, param: torch.Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        velocity = state["momentum_buffer"]
        friction = group["friction"]
        velocity.mul_(1 - friction).add_(self.energy_gradient(param, group), alpha=-group["lr"])
        scale = self.noise_scale(group, 2.0 * friction)
        if scale:
            velocity.add_(self.standard_normal(param), alpha=scale)
        param.add_(velocity)
