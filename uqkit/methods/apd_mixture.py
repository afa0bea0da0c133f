"""APD of a posterior with several modes: one generator per group of samples, :class:`APDMixture`.

:class:`uqkit.APD` fits one generator ``G(z)``, ``z ~ N(0, I)``, to all ``K`` samples. ``G`` is a continuous
map from a unimodal ``z``: where the samples come from several separated modes (a cyclical SG-MCMC chain
visits one mode per cycle, Zhang et al. 2020; several chains each sample their own), it puts mass between
them, and networks whose weights lie between two modes are poor networks. Wang et al. 2018 distil the
samples of one SGLD chain (one mode) with one GAN. :class:`APDMixture` keeps their generator for each
mode: given a group label per sample (the cycle or chain it came from), it fits one :class:`uqkit.APD`
per group ``g`` to that group's ``K_g`` samples (in the group's own principal coordinates) and draws from
the mixture with the samples' weights,

    ``q(theta) = sum_g (K_g / K) q_g(theta)``,   ``q_g`` the law of ``G_g(z)``,

as the samples' predictive weighs every sample ``1 / K``. ``S`` drawn networks are stratified over the
groups: group ``g`` gives ``floor(S K_g / K)`` of them, and the ``S`` minus their sum left over go one each
to the groups with the largest remainders ``S K_g / K - floor(S K_g / K)`` (ties to the lower label), so that
``S = 12`` networks from four groups of three samples are three per group, as the samples are. Measured on
UCI Boston (docs/distillation.md, "One generator per cycle").
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from uqkit._validation import check_float_tensor, check_positive_int
from uqkit.methods.apd import APD, ensemble_from_vectors, predict_drawn_networks
from uqkit.methods.ensemble import DeepEnsemble
from uqkit.prediction import GaussianPrediction, Prediction

__all__ = ["APDMixture", "stratified_counts"]

_FORMAT = "uqkit.APDMixture"
_VERSION = 1


def stratified_counts(num_samples: int, weights: torch.Tensor) -> list[int]:
    """How many of ``num_samples`` draws each group gives: ``floor(S w_g)``, then one more to each of the
    groups with the largest remainders until they sum to ``S`` (ties to the lower index).

    Args:
        num_samples: ``S >= 1``.
        weights: ``[G]`` non-negative group weights summing to 1.

    Raises:
        ValueError: for weights that are not a 1-D non-negative vector summing to 1.
    """
    num_samples = check_positive_int(num_samples, "num_samples")
    weights = check_float_tensor(weights, "weights", 1, "[G] group weights")
    if weights.numel() == 0 or bool((weights < 0).any()) or abs(float(weights.sum()) - 1.0) > 1e-6:
        raise ValueError(f"weights: expected [G] non-negative weights summing to 1, got {weights.tolist()}")
    exact = weights.double() * num_samples
    counts = exact.floor().long()
    remainder = exact - counts
    left = num_samples - int(counts.sum())
    # stable sort: equal remainders keep their order, so ties go to the lower index
    order = torch.sort(remainder, descending=True, stable=True).indices
    counts[order[:left]] += 1
    return counts.tolist()


class APDMixture(nn.Module):
    """APD generators, one per group of samples (a cycle or a chain), drawn as a mixture weighted by the
    groups' sample counts (module docstring).

    Args:
        template: the architecture (as :class:`uqkit.APD`'s).
        **settings: :class:`uqkit.APD` settings for every group's generator (``coordinates``, ``max_rank``,
            ``latent_dim``, ``hidden``).

    Attributes:
        components: the fitted :class:`uqkit.APD` of each group, in increasing label order (empty before
            :meth:`fit`).
        weights: ``[G]`` each group's share of the samples, ``K_g / K``.
        num_parameters: ``P``.

    Example:
        >>> mixture = uqkit.APDMixture(net())
        >>> mixture.fit(samples, torch.arange(16) // 4, steps=1000)  # 4 cycles of 4 samples
        >>> prediction = uqkit.predict(mixture, x, num_samples=12)  # [12, B, C], 3 networks per cycle
    """

    state_format = _FORMAT
    """The ``"format"`` of :meth:`state` (to tell it from an :class:`uqkit.APD`'s)."""

    def __init__(self, template: nn.Module, **settings: Any) -> None:
        super().__init__()
        APD(template, **settings)  # validates the template and the settings
        self.settings = dict(settings)
        self.__dict__["template"] = template  # not a submodule, as APD's
        self.num_parameters = sum(p.numel() for p in template.parameters())
        self.components = nn.ModuleList()
        self.register_buffer("weights", None)

    @property
    def dims(self) -> list[int]:
        """Each group's coordinate count ``r_g`` (:attr:`uqkit.APD.dim`); empty before :meth:`fit`."""
        return [apd.dim for apd in self.components]

    @property
    def fitted(self) -> bool:
        """Whether :meth:`fit` (or :meth:`load`) has set the generators."""
        return len(self.components) > 0

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError(
                "APDMixture: call fit(samples, groups) (or APDMixture.load) before drawing weights"
            )

    def fit(
        self, samples: torch.Tensor, groups: torch.Tensor | Sequence[int], **options: Any
    ) -> list[dict[str, list[float]]]:
        """Fit one :class:`uqkit.APD` per group to its samples (:meth:`uqkit.APD.fit`, with ``options``).

        The groups' generators are fitted one after the other, in increasing label order, each built from
        the global random generator and using ``options["generator"]`` (if given) in turn; a second call
        starts afresh.

        Args:
            samples: ``[K, P]`` flattened weight vectors.
            groups: ``[K]`` integer label of each sample's group (e.g. its cycle); every group needs at
                least 2 samples (:class:`uqkit.APD`'s minimum).
            **options: :meth:`uqkit.APD.fit` options (``steps``, ``learning_rate``, ``generator``, ...).

        Returns:
            Each group's :meth:`uqkit.APD.fit` history, in label order.

        Raises:
            TypeError, ValueError: for bad ``samples`` (as :meth:`uqkit.APD.fit`) or ``groups`` (not ``[K]``
                integers, or a group of fewer than 2 samples).
        """
        samples = check_float_tensor(samples, "samples", 2, "[K, P] flattened weight vectors")
        labels = torch.as_tensor(groups)
        if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.dim() != 1:
            raise TypeError(
                f"groups: expected [K] integer labels, got {labels.dtype} of shape {tuple(labels.shape)}"
            )
        if labels.numel() != samples.shape[0]:
            raise ValueError(
                f"groups: expected one label per sample ({samples.shape[0]}), got {labels.numel()}"
            )
        values, counts = torch.unique(labels, return_counts=True)
        if bool((counts < 2).any()):
            small = values[counts < 2].tolist()
            raise ValueError(f"groups: expected at least 2 samples in every group, got 1 in group(s) {small}")
        components = []
        histories = []
        for value in values.tolist():
            apd = APD(self.template, **self.settings)
            histories.append(apd.fit(samples[labels.to(samples.device) == value], **options))
            components.append(apd)
        self.components = nn.ModuleList(components)
        self.weights = (counts.double() / counts.sum()).to(samples.device, samples.dtype)
        return histories

    # -- drawing networks ----------------------------------------------------------------------------------
    def sample(self, num_samples: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """``[S, P]`` weight vectors, :func:`stratified_counts` of them from each group's generator, in group
        order (no gradients)."""
        num_samples = check_positive_int(num_samples, "num_samples")
        self._check_fitted()
        counts = stratified_counts(num_samples, self.weights)
        parts = [
            apd.sample(count, generator=generator)
            for apd, count in zip(self.components, counts, strict=True)
            if count > 0
        ]
        return torch.cat(parts)

    def sample_ensemble(self, num_samples: int, *, generator: torch.Generator | None = None) -> DeepEnsemble:
        """``S`` drawn networks as one member-vectorized :class:`uqkit.DeepEnsemble`."""
        return ensemble_from_vectors(self.template, self.sample(num_samples, generator=generator))

    def uqkit_predict(
        self,
        *inputs: Any,
        num_samples: int | None = None,
        generator: torch.Generator | None = None,
        **options: Any,
    ) -> Prediction | GaussianPrediction:
        """The hook :func:`uqkit.predict` calls: ``S`` (default
        :data:`~uqkit.methods.apd.DEFAULT_PREDICT_SAMPLES`) freshly drawn networks' prediction, ``[S, B, C]``
        (stratified over the groups)."""
        return predict_drawn_networks(self, "an APDMixture", inputs, num_samples, generator, options)

    def forward(self, *inputs: Any, **options: Any) -> Prediction | GaussianPrediction:
        """``mixture(x)``: :meth:`uqkit_predict`."""
        return self.uqkit_predict(*inputs, **options)

    # -- files ---------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The fitted mixture as plain data (the weights and each group's :meth:`uqkit.APD.state`)."""
        self._check_fitted()
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "settings": dict(self.settings),
            "weights": self.weights.detach().cpu(),
            "components": [apd.state() for apd in self.components],
        }

    @classmethod
    def from_state(cls, content: dict[str, Any], template: nn.Module) -> APDMixture:
        """The :class:`APDMixture` of :meth:`state`'s ``content``, for ``template``'s architecture.

        Raises:
            ValueError: for content that is not an APDMixture's, or one fitted for another parameter count.
        """
        if not isinstance(content, dict) or content.get("format") != _FORMAT:
            raise ValueError(
                "content: expected the dict of APDMixture.state() or a file written by APDMixture.save"
            )
        mixture = cls(template, **content["settings"])
        mixture.components = nn.ModuleList(APD.from_state(part, template) for part in content["components"])
        device = next(template.parameters()).device
        mixture.weights = content["weights"].to(device)
        return mixture

    def save(self, path: str | os.PathLike) -> None:
        """Write :meth:`state` to ``path`` (``torch.load(path, weights_only=True)`` reads it)."""
        torch.save(self.state(), path)

    @classmethod
    def load(cls, path: str | os.PathLike, template: nn.Module) -> APDMixture:
        """The :class:`APDMixture` of a file written by :meth:`save`, for ``template``'s architecture.

        Raises:
            ValueError: for a file that is not an APDMixture's.
        """
        content = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(content, dict) or content.get("format") != _FORMAT:
            raise ValueError(f"path: expected a file written by APDMixture.save, got {os.fspath(path)!r}")
        return cls.from_state(content, template)

    def extra_repr(self) -> str:
        return f"num_parameters={self.num_parameters}, groups={len(self.components)}"
