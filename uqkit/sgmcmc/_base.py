"""What every SG-MCMC optimizer of :mod:`uqkit.sgmcmc` shares: the posterior energy of a mean loss, the prior
term, the temperature, and the injected Gaussian noise.

**Convention.** The user's loss is the *mean* negative log-likelihood of a batch of ``n`` examples, what
``F.cross_entropy`` returns::

    L(theta) = -(1 / n) sum_i log p(y_i | x_i, theta).

With ``N = num_data`` training examples and the Gaussian prior ``N(0, lambda^-1 I)`` (``lambda =
prior_precision``), the posterior energy ``U(theta) = -log p(D | theta) - log p(theta)`` is estimated by::

    U~(theta) = N L(theta) + (lambda / 2) ||theta||^2,      grad U~ = N g,   g = grad L + (lambda / N) theta.

So the prior enters as a weight decay of ``lambda / N`` on the mean loss's gradient (PyTorch's
``weight_decay = w`` on a mean loss is ``prior_precision = w N``). Every optimizer steps on ``g`` with a
learning rate ``lr`` as SGD does; the paper's step size on the energy is ``lr / N`` (SGLD's ``epsilon = 2 lr /
N``, SGHMC's ``eta = lr / N``; each class documents its mapping). ``temperature = T`` targets the tempered
posterior ``p(theta | D)^(1 / T) ∝ exp(-U / T)``: the drift is unchanged and the injected noise's variance is
multiplied by ``T`` (``T = 1``: the posterior; ``T < 1``: a "cold" posterior; ``T = 0``: no noise, the plain
optimizer of the mean loss plus the prior's weight decay).

Each parameter group carries ``noise`` (default ``True``); with ``noise = False`` the step adds no noise
(the exploration stage of cyclical SG-MCMC, :class:`uqkit.sgmcmc.CyclicalSchedule`). Noise is drawn from
``generator`` when one is given, else from torch's global generator (so ``torch.manual_seed`` and a saved
``torch.get_rng_state()`` reproduce a chain).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from uqkit._validation import check_positive_float, check_positive_int

__all__ = ["SGMCMCOptimizer"]


class SGMCMCOptimizer(torch.optim.Optimizer):
    """Base class: hyper-parameter checks, the energy gradient ``g`` and the noise draw.

    Subclasses implement :meth:`_update` for one parameter. Hyper-parameters live in the parameter groups
    (``lr``, ``num_data``, ``temperature``, ``prior_precision``, ``noise`` and the subclass's own), so they
    can differ between groups, are saved by ``state_dict()``, and can be changed between steps (a schedule
    sets ``lr`` and ``noise``).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        defaults: dict[str, Any],
        generator: torch.Generator | None = None,
    ) -> None:
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")
        self.generator = generator
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (``torch.optim.Optimizer.add_param_group``), checking its hyper-parameters.

        Raises:
            TypeError, ValueError: for a hyper-parameter of the wrong type or out of range, naming it.
        """
        super().add_param_group(param_group)
        self._check_group(self.param_groups[-1])

    def _check_group(self, group: dict[str, Any]) -> None:
        """Check the hyper-parameters of ``group``; subclasses extend it with their own."""
        _check_shared(group)

    @staticmethod
    def energy_gradient(param: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        """``g = grad L + (lambda / N) theta``: the posterior energy's stochastic gradient divided by ``N``.

        Raises:
            RuntimeError: for a sparse gradient.
        """
        grad = param.grad
        if grad.is_sparse:
            raise RuntimeError("SG-MCMC optimizers do not support sparse gradients")
        decay = group["prior_precision"] / group["num_data"]
        return grad.add(param, alpha=decay) if decay else grad

    def noise_scale(self, group: dict[str, Any], factor: float) -> float:
        """``sqrt(factor * lr * T / N)`` when the group adds noise, else 0.

        ``factor`` is the paper's constant (2 for SGLD's ``N(0, epsilon)``; ``2 * friction`` for SGHMC).
        """
        if not group["noise"] or group["temperature"] == 0:
            return 0.0
        return math.sqrt(factor * group["lr"] * group["temperature"] / group["num_data"])

    def standard_normal(self, param: torch.Tensor) -> torch.Tensor:
        """A standard normal tensor shaped like ``param`` (from ``generator`` when set)."""
        return torch.randn(param.shape, generator=self.generator, dtype=param.dtype, device=param.device)

    @torch.no_grad()
    def step(self, closure: Any = None) -> torch.Tensor | None:
        """One update of every parameter that has a gradient.

        Args:
            closure: optional callable that re-evaluates the model and returns the loss.

        Returns:
            The closure's loss, or ``None``.

        Raises:
            ValueError: for a learning rate set (e.g. by a schedule) to a negative or non-finite value.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            check_positive_float(group["lr"], "lr", allow_zero=True)
            for param in group["params"]:
                if param.grad is not None:
                    self._update(param, group, self.state[param])
        return loss

    def _update(self, param: torch.Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement _update")


def sgmcmc_defaults(
    lr: float, num_data: int, temperature: float, prior_precision: float, noise: bool = True
) -> dict[str, Any]:
    """The shared parameter-group defaults, checked (so that a bad argument is reported by its name even
    before a group uses it)."""
    defaults = {
        "lr": lr,
        "num_data": num_data,
        "temperature": temperature,
        "prior_precision": prior_precision,
        "noise": noise,
    }
    check_positive_float(lr, "lr")
    _check_shared(defaults)
    return defaults


def _check_shared(group: dict[str, Any]) -> None:
    check_positive_float(group["lr"], "lr", allow_zero=True)
    check_positive_int(group["num_data"], "num_data")
    check_positive_float(group["temperature"], "temperature", allow_zero=True)
    check_positive_float(group["prior_precision"], "prior_precision", allow_zero=True)
    if not isinstance(group["noise"], bool):
        raise TypeError(f"noise: expected a bool, got {type(group['noise']).__name__} {group['noise']!r}")
