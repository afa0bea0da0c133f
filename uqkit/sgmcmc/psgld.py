"""Preconditioned SGLD with an RMSprop preconditioner (Li et al. 2016): :class:`PreconditionedSGLD`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from uqkit._validation import check_positive_float, check_unit_interval
from uqkit.sgmcmc._base import SGMCMCOptimizer, sgmcmc_defaults

__all__ = ["PreconditionedSGLD"]


class PreconditionedSGLD(SGMCMCOptimizer):
    """Preconditioned SGLD (Li, Chen, Carlson & Carin 2016, "Preconditioned stochastic gradient Langevin
    dynamics for deep neural networks", Algorithm 1), for a loss that is the *mean* negative log-likelihood.

    The paper's update, with ``g_bar`` the batch-mean gradient of the log-likelihood, decay ``alpha`` and
    damping ``lambda_p`` (here ``eps``)::

        V <- alpha V + (1 - alpha) g_bar * g_bar
        G <- diag(1 / (eps + sqrt(V)))
        Delta theta = (epsilon / 2) [G (grad log p(theta) + N g_bar) + Gamma] + N(0, epsilon T G).

    With the mean loss ``L`` (``g_bar = -grad L``; ``V`` is the same, the sign squares away), the prior
    ``N(0, lambda^-1 I)`` (:mod:`uqkit.sgmcmc._base`) and ``epsilon = 2 lr / N``::

        V <- alpha V + (1 - alpha) grad L * grad L
        theta <- theta - lr G (grad L + (lambda / N) theta) + sqrt(2 lr T / N) sqrt(G) xi,   xi ~ N(0, I).

    ``V`` starts at 0 and is updated before it is used, as in the paper's Algorithm 1. It is accumulated
    from the likelihood's gradient only, as in the paper (the prior's gradient is not in ``g_bar``).

    **The correction term Gamma is dropped.** ``Gamma_i = sum_j d G_ij / d theta_j`` accounts for ``G``
    depending on ``theta``; it needs second derivatives of ``V`` through the gradient history and has no
    cheap estimate. Li et al. drop it in their experiments too: with ``alpha`` close to 1, ``V`` is an
    average over about ``1 / (1 - alpha)`` steps and changes slowly, so ``Gamma`` is small, and they bound
    the bias its omission adds (their Sec. 3.2 and Corollary 2: a bias term proportional to ``(1 - alpha)``
    relative to the step size). Keep ``alpha`` near 1 (the default 0.99) for that bound to be small.

    Without noise (``temperature = 0`` or ``noise = False``) and without a prior this is exactly
    ``torch.optim.RMSprop(lr=lr, alpha=alpha, eps=eps)``.

    Args:
        params: parameters or parameter groups, as for any ``torch.optim.Optimizer``.
        lr: learning rate on the mean loss, ``> 0`` (``epsilon = 2 lr / N``).
        num_data: ``N``, the number of training examples.
        temperature: ``T >= 0``; the noise covariance is ``(2 lr T / N) G``.
        prior_precision: ``lambda >= 0`` of the prior ``N(0, lambda^-1 I)``.
        alpha: the decay of the squared-gradient average, in ``[0, 1)`` (the paper's ``alpha``; 0.99).
        eps: the damping ``> 0`` added to ``sqrt(V)`` (the paper's ``lambda``; 1e-5 as in its experiments).
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
        alpha: float = 0.99,
        eps: float = 1e-5,
        generator: torch.Generator | None = None,
    ) -> None:
        defaults = sgmcmc_defaults(lr, num_data, temperature, prior_precision)
        defaults.update(alpha=check_unit_interval(alpha, "alpha", open_right=True), eps=eps)
        check_positive_float(eps, "eps")
        super().__init__(params, defaults, generator)

    def _check_group(self, group: dict[str, Any]) -> None:
        super()._check_group(group)
        check_unit_interval(group["alpha"], "alpha", open_right=True)
        check_positive_float(group["eps"], "eps")

    def _update(self, param: torch.Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        if "square_avg" not in state:
            state["square_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        square_avg = state["square_avg"]
        alpha = group["alpha"]
        square_avg.mul_(alpha).addcmul_(param.grad, param.grad, value=1 - alpha)
        preconditioner = square_avg.sqrt().add_(group["eps"]).reciprocal_()  # G
        param.addcmul_(self.energy_gradient(param, group), preconditioner, value=-group["lr"])
        scale = self.noise_scale(group, 2.0)
        if scale:
            param.addcmul_(self.standard_normal(param), preconditioner.sqrt_(), value=scale)
