"""SNGP: a spectral-normalised residual network with a random-feature Gaussian-process head (Liu et al. 2020).

Liu et al. 2020 ("Simple and principled uncertainty estimation with deterministic deep learning via
distance awareness") make a single network *distance aware*, i.e. its uncertainty grows with the distance
of a test input from the training data, with two changes:

1. **Distance-preserving hidden map.** Every hidden weight is spectrally normalised to a largest singular
   value of at most ``c`` (:func:`uqkit.nn.spectral_norm`). In a *residual* block ``x + f(x)`` with
   ``Lip(f) <= c < 1`` this makes the block bi-Lipschitz,
   ``(1 - c) ||x - x'|| <= ||h(x) - h(x')|| <= (1 + c) ||x - x'||`` (Liu et al. 2020, Sec. 3.2),
   so distances in the input space survive, up to these factors, in the hidden space. **The backbone must
   be residual for this guarantee**: spectral normalisation of a plain feed-forward network only bounds
   distances from above, and the network may still collapse far-away inputs onto the training data.
2. **Distance-aware output layer.** The dense output layer becomes a Gaussian process with an RBF kernel
   on the hidden representation, approximated by random Fourier features with a Laplace posterior
   (:class:`uqkit.nn.RandomFeatureGP`); far from the training data its predictive variance returns to
   the prior's and its predictions to uniform.

Training minimises the negative log posterior of the output weights (Liu et al. 2020, Algorithm 1): per
example, the cross-entropy of the posterior-mean logits plus :meth:`SNGP.prior_penalty` ``(N)``, the
``N(0, I)`` prior's ``||beta||^2 / (2 N)``. The precision matrices are accumulated during training forward
passes and must be reset at the start of each epoch (or of the last epoch) with :meth:`SNGP.reset_precision`,
so that after training they hold the sum over one pass over the training data (Liu et al. 2020,
Algorithm 1).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from uqkit._validation import check_positive_int
from uqkit.nn.gp import RandomFeatureGP
from uqkit.nn.spectral import BoundedSpectralNorm, spectral_norm
from uqkit.prediction import Prediction

__all__ = ["SNGP"]

_NORMALISED_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d)


def _has_spectral_norm(module: nn.Module) -> bool:
    return parametrize.is_parametrized(module, "weight") and any(
        isinstance(p, BoundedSpectralNorm) for p in module.parametrizations.weight
    )


class SNGP(nn.Module):
    """Spectral-normalised neural Gaussian process (Liu et al. 2020): ``backbone`` + :class:`RandomFeatureGP`.

    The constructor applies :func:`uqkit.nn.spectral_norm` **in place** to every ``nn.Linear``, ``nn.Conv1d``
    and ``nn.Conv2d`` inside ``backbone`` (layers already spectrally normalised are left as they are). The
    backbone should be residual (``x + f(x)`` blocks); see the module docstring.

    Args:
        backbone: maps inputs to ``[B, hidden_dim]`` hidden representations (the network without its
            output layer).
        hidden_dim: size of the backbone's output.
        num_classes: number of classes.
        spectral_bound: the bound ``c`` on every hidden layer's largest singular value. With ``c < 1``
            each residual MLP block is bi-Lipschitz (default 0.95); Liu et al. report a larger bound (6)
            for their Wide ResNet, whose batch-norm layers rescale the activations anyway.
        n_power_iterations: power-iteration steps per training forward pass. Default 1.
        num_samples: what :func:`uqkit.predict` does by default: ``None`` (default) to predict with the
            mean-field logits (``S = 1``); an int ``S`` for ``S`` Monte Carlo samples of the GP logits. Any
            call can choose: ``uqkit.predict(model, x, num_samples=S)`` for Monte Carlo,
            ``uqkit.predict(model, x, mean_field=True)`` for mean-field.
        **gp_options: passed to :class:`~uqkit.nn.RandomFeatureGP` (``num_features``, ``length_scale``,
            ``ridge_penalty``, ``momentum``, ``mean_field_factor``, ``normalize_input``, ``likelihood``).

    Shape:
        input: whatever ``backbone`` takes; ``forward`` returns ``[B, C]`` posterior-mean logits.

    Example:
        >>> backbone = nn.Sequential(nn.Linear(2, 128), *[ResidualBlock(128) for _ in range(6)])
        >>> model = SNGP(backbone, hidden_dim=128, num_classes=2, num_features=1024)
        >>> for epoch in range(num_epochs):
        ...     model.reset_precision()
        ...     for x, y in loader:
        ...         loss = F.cross_entropy(model(x), y) + model.prior_penalty(len(loader.dataset))
        ...         loss.backward(); optimizer.step(); optimizer.zero_grad()
        >>> prediction = uqkit.predict(model, x_test)  # mean-field; num_samples=S for Monte Carlo
    """

    def __init__(
        self,
        backbone: nn.Module,
        hidden_dim: int,
        num_classes: int,
        *,
        spectral_bound: float = 0.95,
        n_power_iterations: int = 1,
        num_samples: int | None = None,
        **gp_options,
    ) -> None:
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"backbone: expected an nn.Module, got {type(backbone).__name__}")
        if num_samples is not None:
            num_samples = check_positive_int(num_samples, "num_samples")
        layers = [m for m in backbone.modules() if isinstance(m, _NORMALISED_TYPES)]
        if not layers:
            raise ValueError(
                "backbone: expected at least one nn.Linear, nn.Conv1d or nn.Conv2d to spectrally normalise, "
                f"found none in {type(backbone).__name__}"
            )
        for layer in layers:
            if not _has_spectral_norm(layer):
                spectral_norm(layer, bound=spectral_bound, n_power_iterations=n_power_iterations)
        self.backbone = backbone
        self.gp = RandomFeatureGP(hidden_dim, num_classes, num_samples=num_samples, **gp_options)
        self.spectral_bound = spectral_bound

    @property
    def num_samples(self) -> int | None:
        """The default of :func:`uqkit.predict`: ``None`` for the mean-field logits, an int ``S`` for ``S``
        Monte Carlo samples (the GP head's ``default_num_samples``)."""
        return self.gp.default_num_samples

    @num_samples.setter
    def num_samples(self, value: int | None) -> None:
        self.gp.default_num_samples = None if value is None else check_positive_int(value, "num_samples")

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Posterior-mean logits ``[B, C]``; in training mode also accumulates the GP precision."""
        return self.gp(self.backbone(inputs))

    def prior_penalty(self, num_data: int) -> torch.Tensor:
        """The GP prior's share of one example's loss, ``ridge ||beta||^2 / (2 N)``; add it to the mean
        cross-entropy (see :meth:`uqkit.nn.RandomFeatureGP.prior_penalty`)."""
        return self.gp.prior_penalty(num_data)

    def reset_precision(self) -> None:
        """Reset the GP precision to its prior (call at the start of each epoch, or of the last one)."""
        self.gp.reset_precision()

    def predict(self, *inputs, num_samples: int | None = None, **kwargs) -> Prediction:
        """``uqkit.predict(self, *inputs, num_samples=num_samples, **kwargs)``: see :func:`uqkit.predict`."""
        from uqkit.methods.prediction_protocol import predict

        return predict(self, *inputs, num_samples=num_samples, **kwargs)

    def extra_repr(self) -> str:
        return f"spectral_bound={self.spectral_bound}, num_samples={self.num_samples}"
