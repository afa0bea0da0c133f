"""Monte Carlo dropout (Gal & Ghahramani 2016): dropout that stays on at prediction time.

Averaging the network's output over dropout masks approximates the predictive distribution of a Bayesian
network with a Bernoulli variational posterior over the rows of the next layer's weights (Gal & Ghahramani
2016, Sec. 3). :class:`MCDropout` therefore drops units in training *and* eval mode; inside
:func:`uqkit.nn.use_posterior_mean` it is the identity, the expectation of inverted dropout. Its KL term is,
up to constants, the L2 weight decay of the following layer (Gal & Ghahramani 2016, eq. (4)): use the
optimiser's ``weight_decay``, not :func:`uqkit.kl_divergence`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from uqkit._validation import check_unit_interval
from uqkit.nn._posterior import StochasticModule

__all__ = ["MCDropout"]


class MCDropout(StochasticModule):
    """Always-on inverted dropout: zeroes each element with probability ``p``, scales the rest by ``1/(1-p)``.

    Args:
        p: drop probability in [0, 1). Default 0.5.
        inplace: overwrite the input (as ``torch.nn.Dropout``). Default ``False``.

    Shape:
        any; the output has the input's shape. Masks are independent per element, hence per example.

    Example:
        >>> model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), MCDropout(0.1), nn.Linear(32, 3)).eval()
        >>> uqkit.predict(model, x, num_samples=20)  # samples differ although the model is in eval mode
    """

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        super().__init__()
        self.p = check_unit_interval(p, "p", open_right=True)
        self.inplace = bool(inplace)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.samples or self.p == 0.0:
            return input
        return F.dropout(input, self.p, training=True, inplace=self.inplace)

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}"
