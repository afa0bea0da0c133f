"""Base classes shared by every stochastic layer, and the posterior-mean switch.

* :class:`StochasticModule`: a module that draws noise on every forward pass, in training *and* eval mode
  (eval changes batch-norm and dropout statistics, not the posterior). Inside
  :func:`use_posterior_mean` it computes its deterministic mean-weight output instead.
* :class:`BayesianModule`: a stochastic module whose parameters have a factorised Gaussian posterior
  ``q(w) = N(mean, softplus(rho)^2)`` (Blundell et al. 2015) and a prior; ``kl_divergence()`` gives
  ``KL(q || p)`` summed over all its parameters.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

import torch
from torch import nn

from uqkit.nn import _noise
from uqkit.nn.priors import NormalPrior, Prior, ScaleMixtureNormalPrior

__all__ = ["BayesianModule", "StochasticModule", "use_posterior_mean"]


class StochasticModule(nn.Module):
    """Base of layers that sample on every forward pass.

    Subclasses set ``per_example_noise``: ``True`` when the noise of different examples in a batch is
    uncorrelated (Flipout, local reparameterisation, MC dropout), so that ``S`` samples of one input can be
    computed in one forward pass over the input repeated ``S`` times; ``False`` when one weight sample is
    shared by the whole batch (plain reparameterisation).
    """

    per_example_noise: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__()
        self._use_posterior_mean = False

    @property
    def samples(self) -> bool:
        """Whether the next forward pass draws noise (``False`` inside :func:`use_posterior_mean`)."""
        return not self._use_posterior_mean


def check_prior(prior: object) -> Prior:
    """Return ``prior`` if it is a prior of :mod:`uqkit.nn.priors`, else raise a ``TypeError`` naming the
    argument ``prior``."""
    if not isinstance(prior, (NormalPrior, ScaleMixtureNormalPrior)):
        raise TypeError(
            "prior: expected a uqkit.nn.priors.NormalPrior or ScaleMixtureNormalPrior, got "
            f"{type(prior).__name__} {prior!r}"[:200]
        )
    return prior


class BayesianModule(StochasticModule):
    """A stochastic layer with a mean-field Gaussian posterior over some of its parameters.

    For each posterior named ``name`` (``"weight"``, ``"bias"``, ``"weight_ih_l0"``, ...) the module holds
    two parameters, ``{name}_mean`` and ``{name}_rho``, with posterior standard deviation
    ``softplus({name}_rho)``.

    Args:
        prior: the prior over every parameter of the layer (default ``NormalPrior(scale=1.0)``).
        posterior_scale_init: initial posterior standard deviation of every parameter, ``>= 0``; ``0``
            (``rho = -inf``) makes the layer compute exactly what its ``torch.nn`` twin computes, with an
            infinite KL: use it to check equivalence, and train from a positive scale.
    """

    def __init__(self, prior: Prior | None = None, posterior_scale_init: float = 1e-2) -> None:
        super().__init__()
        self.prior: Prior = NormalPrior() if prior is None else check_prior(prior)
        self._rho_init = _noise.scale_to_rho(posterior_scale_init, "posterior_scale_init")
        self.posterior_scale_init = float(posterior_scale_init)
        self.posterior_names: list[str] = []

    def _register_posterior(self, name: str, shape: tuple[int, ...], **factory: object) -> None:
        """Create the ``{name}_mean`` and ``{name}_rho`` parameters (means left uninitialised)."""
        self.register_parameter(f"{name}_mean", nn.Parameter(torch.empty(shape, **factory)))
        self.register_parameter(f"{name}_rho", nn.Parameter(torch.full(shape, self._rho_init, **factory)))
        self.posterior_names.append(name)

    @property
    def has_bias(self) -> bool:
        """Whether the layer has a (Bayesian) bias."""
        return "bias" in self.posterior_names

    def posterior_mean(self, name: str) -> torch.Tensor:
        """The mean of the posterior ``name``."""
        return getattr(self, f"{name}_mean")

    def posterior_scale(self, name: str) -> torch.Tensor:
        """The standard deviation ``softplus(rho)`` of the posterior ``name``."""
        return _noise.posterior_scale(getattr(self, f"{name}_rho"))

    def posterior_perturbation(self, name: str) -> torch.Tensor:
        """A fresh draw of ``w - mean = softplus(rho) * eps``, ``eps ~ N(0, I)``, of posterior ``name``."""
        rho = getattr(self, f"{name}_rho")
        scale, noise = _noise.posterior_scale(rho), torch.randn_like(rho)
        if torch.is_grad_enabled() and rho.requires_grad:
            return scale * noise
        return noise.mul_(scale)  # no graph to keep: save an allocation

    def posterior_sample(self, name: str) -> torch.Tensor:
        """A fresh draw ``w = mean + softplus(rho) * eps`` from the posterior ``name`` (reparameterised)."""
        return self.posterior_mean(name) + self.posterior_perturbation(name)

    @torch.no_grad()
    def reset_posterior_scale(self, scale: float) -> None:
        """Set the posterior standard deviation of every parameter of the layer to ``scale`` (``>= 0``)."""
        rho = _noise.scale_to_rho(scale)
        for name in self.posterior_names:
            getattr(self, f"{name}_rho").fill_(rho)

    def kl_divergence(self) -> torch.Tensor:
        """``KL(q || p)`` summed over every parameter of the layer (a scalar tensor, nats).

        Closed form for a :class:`~uqkit.nn.priors.NormalPrior`; a one-sample unbiased Monte Carlo estimate
        for a :class:`~uqkit.nn.priors.ScaleMixtureNormalPrior`, which has none.
        """
        terms = [
            self.prior.kl_divergence(self.posterior_mean(name), self.posterior_scale(name))
            for name in self.posterior_names
        ]
        return torch.stack(terms).sum()

    def extra_repr(self) -> str:
        return f"prior={self.prior}, posterior_scale_init={self.posterior_scale_init:g}"


@contextmanager
def use_posterior_mean(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every stochastic layer of ``model`` outputs its deterministic mean-weight value.

    Bayesian layers use their posterior means as weights; :class:`~uqkit.nn.MCDropout` becomes the
    identity (inverted dropout's expectation). The previous setting of each layer is restored on exit, so
    blocks nest.

    Args:
        model: any module; its stochastic layers are found anywhere inside it.

    Yields:
        ``model`` itself.

    Example:
        >>> with use_posterior_mean(model):
        ...     logits = model(x)  # deterministic
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    layers = [m for m in model.modules() if isinstance(m, StochasticModule)]
    previous = [m._use_posterior_mean for m in layers]
    for layer in layers:
        layer._use_posterior_mean = True
    try:
        yield model
    finally:
        for layer, was in zip(layers, previous, strict=True):
            layer._use_posterior_mean = was
