"""Adversarial posterior distillation (APD): a generator of network weights, :class:`APD`.

Wang et al. 2018, "Adversarial Distillation of Bayesian Neural Network Posteriors" (ICML; arXiv:1806.10317)
distil ``K`` stored posterior samples ``theta_1..K`` (SGLD samples in the paper) into a generator
``G(z) -> theta``, ``z ~ N(0, I)``, trained as a Wasserstein GAN with gradient penalty (WGAN-GP, Gulrajani
et al. 2017, Algorithm 1) against the samples: the critic ``D`` minimises

    L_D = E_z D(G(z)) - E_k D(theta_k) + lambda E_xhat (||grad_xhat D(xhat)||_2 - 1)^2,
          xhat = eps theta_k + (1 - eps) G(z),  eps ~ U[0, 1],

for ``n_critic`` steps (default 5) per generator step, the generator minimises ``L_G = -E_z D(G(z))``, with
``lambda = 10`` and Adam (``lr = 1e-4``, ``betas = (0, 0.9)``), the paper's defaults. Drawing ``S`` weight
vectors from ``G`` gives ``S`` networks: the posterior itself is distilled, not only its predictive.

**Coordinates (the design for large ``P``).** A generator whose last layer maps ``H`` hidden units to all
``P`` weights, and a critic whose first layer reads them, cost ``2 H P`` parameters (plus Adam's two moments
each): 63M numbers for LeNet-5 (``P = 61,706``) at ``H = 256``, and every training step multiplies by them.
Yet ``K`` samples span an affine subspace of dimension at most ``K - 1`` (11 for 12 cyclical SG-MCMC
samples). :class:`APD` (``coordinates="pca"``, the default) therefore runs the GAN in the whitened
principal coordinates of the samples: with ``Theta - mean = U diag(s) V^T`` (thin SVD of the centred
``[K, P]`` matrix), the ``r <= min(K - 1, P, max_rank)`` components above round-off, and
``sd_j = s_j / sqrt(K - 1)``,

    theta = mean + c^T B,   B = diag(sd_1..r) V_{1..r}^T   ([r, P]),   c = G(z) in R^r,

so each real sample has coordinates ``c_k = sqrt(K - 1) U_k`` (unit variance along each component). The
map ``c -> theta`` is an isometry up to the per-component scales ``sd_j``: for ``r = K - 1`` it loses nothing
of the samples, and the GAN is WGAN-GP in weight space restricted to the samples' affine span, with the
Wasserstein distance measured in whitened units (same optimum, ``G``'s law = the samples' law; better
conditioned, since weight coordinates differ in scale by orders of magnitude). Memory: ``B`` is ``r P``
numbers (at most ``max_rank`` stored directions, the samples themselves when ``K - 1 <= max_rank``), the
networks ``O(H (r + H))``. ``coordinates="standardized"`` is the literal full-space version: ``theta =
mean + sd * c`` with per-coordinate standard deviations and ``c in R^P`` (the ``2 H P`` cost above; for
small networks, or to learn correlations the samples' span does not fix).

**Flattening.** A weight vector is ``torch.nn.utils.parameters_to_vector(model.parameters())`` of the
architecture: the parameters in ``model.parameters()`` order, each flattened row-major. Buffers (batch-norm
running statistics) are not part of it; drawn networks take the template's buffers. :func:`parameter_vectors`
flattens models (e.g. ``DeepEnsemble.members()``), :func:`ensemble_from_vectors` turns ``[S, P]`` vectors into
one member-vectorized :class:`uqkit.DeepEnsemble`, so the ``S`` drawn networks predict in one pass,
``uqkit.predict(ensemble, x) -> [S, B, C]`` (the stacked twins measured faster than ``torch.func.vmap`` over
``functional_call`` on CPU, docs/efficient_ensembles.md; :meth:`APD.sample_ensemble`).
"""

from __future__ import annotations

import copy
import itertools
import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from uqkit._validation import (
    check_choice,
    check_float_tensor,
    check_positive_float,
    check_positive_int,
    check_unit_interval,
)
from uqkit.methods.ensemble import DeepEnsemble
from uqkit.methods.prediction_protocol import predict
from uqkit.prediction import GaussianPrediction, Prediction

__all__ = [
    "APD",
    "COORDINATES",
    "DEFAULT_PREDICT_SAMPLES",
    "WeightGenerator",
    "ensemble_from_vectors",
    "parameter_vectors",
    "predict_drawn_networks",
]

COORDINATES = ("pca", "standardized")
"""The GAN's coordinates: whitened principal coordinates of the samples, or every weight standardised."""

DEFAULT_PREDICT_SAMPLES = 12
"""Networks drawn by ``uqkit.predict(apd, x)`` when ``num_samples`` is not given."""

_FORMAT = "uqkit.APD"
_VERSION = 1


def _count(template: nn.Module) -> int:
    return sum(p.numel() for p in template.parameters())


def parameter_vectors(models: Iterable[nn.Module] | DeepEnsemble) -> torch.Tensor:
    """The flattened parameters of each model, ``[K, P]``: row ``k`` is
    ``torch.nn.utils.parameters_to_vector(models[k].parameters())`` (detached).

    Args:
        models: models of one architecture, or a :class:`uqkit.DeepEnsemble` (its :meth:`members`).

    Raises:
        TypeError: for an entry that is not an ``nn.Module``.
        ValueError: for no models, a model without parameters, or models with different parameter counts.
    """
    if isinstance(models, DeepEnsemble):
        models = models.members()
    rows = []
    for index, model in enumerate(models):
        if not isinstance(model, nn.Module):
            raise TypeError(f"models[{index}]: expected an nn.Module, got {type(model).__name__}")
        parameters = list(model.parameters())
        if not parameters:
            raise ValueError(f"models[{index}]: expected a model with parameters, got none")
        rows.append(parameters_to_vector([p.detach() for p in parameters]))
        if rows[-1].shape != rows[0].shape:
            raise ValueError(
                f"models[{index}]: expected {rows[0].numel()} parameters as models[0] has, got "
                f"{rows[-1].numel()}"
            )
    if not rows:
        raise ValueError("models: expected at least one model, got none")
    return torch.stack(rows)


def ensemble_from_vectors(template: nn.Module, vectors: torch.Tensor) -> DeepEnsemble:
    """``S`` copies of ``template`` with the weights ``vectors[s]``, as one :class:`uqkit.DeepEnsemble`.

    Args:
        template: the architecture (left unchanged; its buffers are copied into every member).
        vectors: ``[S, P]`` flattened parameters in ``parameters_to_vector(template.parameters())`` order.

    Returns:
        A ``DeepEnsemble`` of ``S`` members on the template's device and dtype: ``uqkit.predict(ensemble, x)``
        gives ``[S, B, C]``.

    Raises:
        TypeError: for a ``template`` that is not an ``nn.Module`` or non-float ``vectors``.
        ValueError: for ``vectors`` that are not ``[S, P]`` with ``P`` the template's parameter count, or
            non-finite.
    """
    if not isinstance(template, nn.Module):
        raise TypeError(f"template: expected an nn.Module, got {type(template).__name__}")
    size = _count(template)
    vectors = check_float_tensor(vectors, "vectors", 2, "[samples, parameters]")
    if vectors.shape[1] != size or vectors.shape[0] == 0:
        raise ValueError(
            f"vectors: expected [S, {size}] (the template's parameter count) with S >= 1, got shape "
            f"{tuple(vectors.shape)}"
        )
    reference = next(template.parameters())
    rows = iter(vectors.detach().to(device=reference.device, dtype=reference.dtype))

    def member() -> nn.Module:
        copied = copy.deepcopy(template)
        vector_to_parameters(next(rows), copied.parameters())
        return copied

    return DeepEnsemble(member, vectors.shape[0])


def _mlp(sizes: Sequence[int], activation: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for index, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(fan_in, fan_out))
        if index < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class WeightGenerator(nn.Module):
    """APD's generator in the GAN's coordinates: ``G(z) = A z + MLP(z)``.

    The MLP (``latent_dim -> hidden -> hidden -> dim``, ReLU) has its last layer initialised to zero and the
    linear path ``A`` (no bias) to the identity when ``latent_dim == dim`` (else PyTorch's default), so the
    generator starts at ``c = z ~ N(0, I)``: in the whitened principal coordinates that is the Gaussian with
    the samples' mean and covariance, in standardised ones independent coordinates with the samples' means
    and variances. Training then learns the departures (correlations, skew, several modes).

    Shape:
        input ``[N, latent_dim]``, output ``[N, dim]``.
    """

    def __init__(self, latent_dim: int, hidden: int, dim: int) -> None:
        super().__init__()
        self.mlp = _mlp((latent_dim, hidden, hidden, dim), nn.ReLU)
        self.linear = nn.Linear(latent_dim, dim, bias=False)
        with torch.no_grad():
            last = self.mlp[-1]
            last.weight.zero_()
            last.bias.zero_()
            if latent_dim == dim:
                self.linear.weight.copy_(torch.eye(dim))

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.linear(latent) + self.mlp(latent)


class _LeakyReLU(nn.LeakyReLU):
    def __init__(self) -> None:
        super().__init__(0.2)


class APD(nn.Module):
    """A generator of weight vectors distilled from posterior samples by WGAN-GP (Wang et al. 2018).

    Build it with the architecture, :meth:`fit` it to ``[K, P]`` samples, then draw networks:
    :meth:`sample` (``[S, P]`` vectors), :meth:`sample_ensemble` (a ``DeepEnsemble`` of ``S`` networks), or
    ``uqkit.predict(apd, x, num_samples=S)`` (``S`` fresh networks per call, ``[S, B, C]``). See the module
    docstring for the equations and the coordinates.

    Args:
        template: the architecture (an ``nn.Module``; its parameter values are not used, its buffers are).
        coordinates: ``"pca"`` (default) or ``"standardized"`` (module docstring).
        max_rank: the most principal directions kept with ``"pca"`` (memory ``max_rank * P`` numbers).
        latent_dim: ``dim z``; default ``min(d, 64)`` with ``d`` the GAN's coordinate count.
        hidden: width of the generator's and the critic's two hidden layers.

    Attributes:
        num_parameters: ``P``, the template's parameter count.
        dim: ``d``, the coordinate count (``r`` for ``"pca"``, ``P`` for ``"standardized"``); 0 before fit.
        generator_network: ``G``, a :class:`WeightGenerator` ``z [N, latent_dim] -> c [N, d]`` (``None``
            before :meth:`fit`).

    Example:
        >>> apd = uqkit.APD(net())
        >>> history = apd.fit(samples, steps=2000)  # samples: [K, P], e.g. parameter_vectors(ensemble)
        >>> prediction = uqkit.predict(apd, x, num_samples=12)  # [12, B, C]
        >>> apd.save("apd.pt"); apd = uqkit.APD.load("apd.pt", net())
    """

    def __init__(
        self,
        template: nn.Module,
        *,
        coordinates: str = "pca",
        max_rank: int = 256,
        latent_dim: int | None = None,
        hidden: int = 256,
    ) -> None:
        super().__init__()
        if not isinstance(template, nn.Module):
            raise TypeError(f"template: expected an nn.Module, got {type(template).__name__}")
        if isinstance(template, APD):
            raise TypeError("template: expected the network's architecture, got an APD")
        self.num_parameters = _count(template)
        if self.num_parameters == 0:
            raise ValueError("template: expected a model with parameters, got none")
        self.coordinates = check_choice(coordinates, "coordinates", COORDINATES)
        self.max_rank = check_positive_int(max_rank, "max_rank")
        self.latent_setting = None if latent_dim is None else check_positive_int(latent_dim, "latent_dim")
        self.latent_dim = self.latent_setting
        self.hidden = check_positive_int(hidden, "hidden")
        self.__dict__["template"] = template  # not a submodule: its weights are never used
        self.dim = 0
        self.generator_network: WeightGenerator | None = None
        self.register_buffer("center", None)
        self.register_buffer("basis", None)  # [r, P] ("pca") or [P] standard deviations ("standardized")

    # -- construction --------------------------------------------------------------------------------------
    def _build(self, dim: int, latent_dim: int, dtype: torch.dtype, device: torch.device) -> None:
        self.dim = dim
        self.latent_dim = latent_dim
        self.generator_network = WeightGenerator(latent_dim, self.hidden, dim).to(device, dtype)

    def _critic(self) -> nn.Sequential:
        reference = self.center
        return _mlp((self.dim, self.hidden, self.hidden, 1), _LeakyReLU).to(reference.device, reference.dtype)

    def _coordinates_of(self, samples: torch.Tensor) -> torch.Tensor:
        """Set ``center`` and ``basis`` from the samples; return the samples' coordinates ``[K, d]``."""
        count = samples.shape[0]
        center = samples.mean(dim=0)
        centred = samples - center
        if self.coordinates == "standardized":
            sd = centred.square().sum(dim=0).div(count - 1).sqrt()
            coordinates = centred / torch.where(sd > 0, sd, torch.ones_like(sd))
            self.center, self.basis = center, sd
            return coordinates
        left, singular, right_t = torch.linalg.svd(centred, full_matrices=False)
        tolerance = max(centred.shape) * torch.finfo(samples.dtype).eps * float(singular[0])
        rank = min(int((singular > tolerance).sum()), self.max_rank)
        if rank == 0:
            raise ValueError("samples: expected samples that differ, got K identical weight vectors")
        scale = math.sqrt(count - 1)
        self.center = center
        self.basis = (singular[:rank, None] / scale) * right_t[:rank]
        return left[:, :rank] * scale

    def decode(self, coordinates: torch.Tensor) -> torch.Tensor:
        """Weight vectors ``[N, P]`` of GAN coordinates ``[N, d]``: ``mean + c B`` or ``mean + sd * c``."""
        self._check_fitted()
        if self.coordinates == "standardized":
            return self.center + coordinates * self.basis
        return torch.addmm(self.center.unsqueeze(0), coordinates, self.basis)

    @property
    def fitted(self) -> bool:
        """Whether :meth:`fit` (or :meth:`load`) has set the generator."""
        return self.generator_network is not None

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError("APD: call fit(samples) (or APD.load) before drawing weights")

    # -- training ------------------------------------------------------------------------------------------
    def fit(
        self,
        samples: torch.Tensor,
        *,
        steps: int = 2000,
        critic_steps: int = 5,
        penalty: float = 10.0,
        batch_size: int = 64,
        learning_rate: float = 1e-4,
        betas: tuple[float, float] = (0.0, 0.9),
        average: float | None = 0.99,
        generator: torch.Generator | None = None,
    ) -> dict[str, list[float]]:
        """Train the generator on the samples with WGAN-GP (module docstring; Gulrajani et al. 2017, Alg. 1).

        The coordinates, the generator and a new critic are built from ``samples`` (their dtype and device;
        networks initialised from the global random generator); a second call starts afresh.

        Args:
            samples: ``[K, P]`` weight vectors, ``K >= 2``, flattened as :func:`parameter_vectors` does.
            steps: generator updates.
            critic_steps: ``n_critic``, critic updates per generator update.
            penalty: ``lambda``, the gradient-penalty weight.
            batch_size: samples (drawn with replacement) and generated vectors per update.
            learning_rate, betas: Adam's, for both networks.
            average: the decay ``beta`` of the exponential moving average of the generator's weights,
                ``bar_w <- beta bar_w + (1 - beta) w`` after every generator update, which becomes the fitted
                generator (Yazici et al. 2019); ``None``: the last iterate.
            generator: random generator for ``z``, the batches and the interpolation (default: global).

        Returns:
            ``{"wasserstein": [...], "gradient_penalty": [...]}``: per generator step, the critic's estimate
            ``E D(theta) - E D(G(z))`` and the penalty term (unweighted) of its last update.

        Raises:
            TypeError, ValueError: for bad arguments (``samples`` not ``[K, P]`` with the template's ``P``,
                non-finite, ``K < 2`` or all equal).
            RuntimeError: when a loss becomes NaN or infinite (naming the step).
        """
        samples = check_float_tensor(samples, "samples", 2, "[K, P] flattened weight vectors")
        if samples.shape[1] != self.num_parameters or samples.shape[0] < 2:
            raise ValueError(
                f"samples: expected [K, {self.num_parameters}] (K >= 2 samples of the template's "
                f"{self.num_parameters} parameters), got shape {tuple(samples.shape)}"
            )
        steps = check_positive_int(steps, "steps")
        critic_steps = check_positive_int(critic_steps, "critic_steps")
        penalty = check_positive_float(penalty, "penalty", allow_zero=True)
        batch_size = check_positive_int(batch_size, "batch_size")
        learning_rate = check_positive_float(learning_rate, "learning_rate")
        if (
            not isinstance(betas, (tuple, list))
            or len(betas) != 2
            or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas)
        ):
            raise ValueError(f"betas: expected two numbers in [0, 1), got {betas!r}")
        if average is not None:
            average = check_unit_interval(average, "average", open_right=True)

        real = self._coordinates_of(samples.detach())
        dim = real.shape[1]
        latent = self.latent_setting if self.latent_setting is not None else min(dim, 64)
        self._build(dim, latent, samples.dtype, samples.device)
        critic = self._critic()
        network = self.generator_network
        adam = {"lr": learning_rate, "betas": tuple(float(b) for b in betas)}
        critic_optimizer = torch.optim.Adam(critic.parameters(), **adam)
        generator_optimizer = torch.optim.Adam(network.parameters(), **adam)

        def draw(shape: tuple[int, ...], uniform: bool = False) -> torch.Tensor:
            sampler = torch.rand if uniform else torch.randn
            return sampler(shape, generator=generator, dtype=real.dtype).to(real.device)

        history: dict[str, list[float]] = {"wasserstein": [], "gradient_penalty": []}
        count = real.shape[0]
        averaged = None if average is None else copy.deepcopy(network).requires_grad_(False)
        for step in range(steps):
            for _ in range(critic_steps):
                index = torch.randint(count, (batch_size,), generator=generator).to(real.device)
                batch = real[index]
                with torch.no_grad():
                    fake = network(draw((batch_size, latent)))
                mix = draw((batch_size, 1), uniform=True)
                between = (mix * batch + (1 - mix) * fake).requires_grad_(True)
                # one critic pass over real, generated and interpolated rows (rows do not interact)
                scores = critic(torch.cat([batch, fake, between])).squeeze(-1)
                real_score, fake_score, between_score = scores.split(batch_size)
                (gradient,) = torch.autograd.grad(between_score.sum(), between, create_graph=True)
                gradient_penalty = (gradient.norm(dim=1) - 1).square().mean()
                distance = real_score.mean() - fake_score.mean()
                loss = -distance + penalty * gradient_penalty
                _descend(critic_optimizer, loss, "critic", step)
            for parameter in critic.parameters():
                parameter.requires_grad_(False)
            generator_loss = -critic(network(draw((batch_size, latent)))).mean()
            _descend(generator_optimizer, generator_loss, "generator", step)
            for parameter in critic.parameters():
                parameter.requires_grad_(True)
            if averaged is not None:
                with torch.no_grad():
                    for mean, parameter in zip(averaged.parameters(), network.parameters(), strict=True):
                        mean.lerp_(parameter, 1 - average)
            history["wasserstein"].append(float(distance.detach()))
            history["gradient_penalty"].append(float(gradient_penalty.detach()))
        if averaged is not None:
            self.generator_network = averaged.requires_grad_(True)
        return history

    # -- drawing networks ----------------------------------------------------------------------------------
    def sample(self, num_samples: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """``[S, P]`` weight vectors ``G(z_s)``, ``z_s ~ N(0, I)`` (no gradients)."""
        num_samples = check_positive_int(num_samples, "num_samples")
        self._check_fitted()
        reference = self.center
        latent = torch.randn((num_samples, self.latent_dim), generator=generator, dtype=reference.dtype)
        with torch.no_grad():
            return self.decode(self.generator_network(latent.to(reference.device)))

    def sample_ensemble(self, num_samples: int, *, generator: torch.Generator | None = None) -> DeepEnsemble:
        """``S`` drawn networks as one member-vectorized :class:`uqkit.DeepEnsemble` (on the template's device
        and dtype); ``uqkit.predict(ensemble, x)`` gives ``[S, B, C]``."""
        return ensemble_from_vectors(self.template, self.sample(num_samples, generator=generator))

    def uqkit_predict(
        self,
        *inputs: Any,
        num_samples: int | None = None,
        generator: torch.Generator | None = None,
        **options: Any,
    ) -> Prediction | GaussianPrediction:
        """The hook :func:`uqkit.predict` calls: ``S`` (default :data:`DEFAULT_PREDICT_SAMPLES`) freshly drawn
        networks' prediction, ``[S, B, C]``; the other options go to :func:`uqkit.predict` of the ensemble."""
        return predict_drawn_networks(self, "an APD", inputs, num_samples, generator, options)

    def forward(self, *inputs: Any, **options: Any) -> Prediction | GaussianPrediction:
        """``apd(x)``: :meth:`uqkit_predict`."""
        return self.uqkit_predict(*inputs, **options)

    # -- files ---------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The fitted generator as plain data (settings, coordinates and weights; not the critic): what
        :meth:`save` writes and :meth:`from_state` reads, loadable with ``torch.load(weights_only=True)``."""
        self._check_fitted()
        config = {
            "coordinates": self.coordinates,
            "max_rank": self.max_rank,
            "latent_dim": self.latent_dim,
            "hidden": self.hidden,
            "dim": self.dim,
            "num_parameters": self.num_parameters,
        }
        state = {name: tensor.detach().cpu() for name, tensor in self.state_dict().items()}
        return {"format": _FORMAT, "version": _VERSION, "config": config, "state": state}

    @classmethod
    def from_state(cls, content: dict[str, Any], template: nn.Module) -> APD:
        """The :class:`APD` of :meth:`state`'s ``content``, for ``template``'s architecture, on its device.

        Raises:
            ValueError: for content that is not an APD's, or one fitted for another parameter count.
        """
        if not isinstance(content, dict) or content.get("format") != _FORMAT:
            raise ValueError("content: expected the dict of APD.state() or a file written by APD.save")
        config = content["config"]
        apd = cls(
            template,
            coordinates=config["coordinates"],
            max_rank=config["max_rank"],
            latent_dim=config["latent_dim"],
            hidden=config["hidden"],
        )
        if apd.num_parameters != config["num_parameters"]:
            raise ValueError(
                f"template: expected an architecture of {config['num_parameters']} parameters (the saved "
                f"generator's), got {apd.num_parameters}"
            )
        state = content["state"]
        apd.center, apd.basis = state["center"], state["basis"]
        apd._build(config["dim"], config["latent_dim"], state["center"].dtype, torch.device("cpu"))
        apd.load_state_dict(state)
        return apd.to(next(template.parameters()).device)

    def save(self, path: str | os.PathLike) -> None:
        """Write :meth:`state` to ``path`` (``torch.load(path, weights_only=True)`` reads it)."""
        torch.save(self.state(), path)

    @classmethod
    def load(cls, path: str | os.PathLike, template: nn.Module) -> APD:
        """The :class:`APD` of a file written by :meth:`save` (read with ``weights_only=True``), for
        ``template``'s architecture, on the template's device.

        Raises:
            ValueError: for a file that is not an APD's, or one saved for another parameter count.
        """
        content = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(content, dict) or content.get("format") != _FORMAT:
            raise ValueError(f"path: expected a file written by APD.save, got {os.fspath(path)!r}")
        return cls.from_state(content, template)

    def extra_repr(self) -> str:
        return (
            f"num_parameters={self.num_parameters}, coordinates={self.coordinates!r}, dim={self.dim}, "
            f"latent_dim={self.latent_dim}, hidden={self.hidden}"
        )


def _descend(optimizer: torch.optim.Optimizer, loss: torch.Tensor, name: str, step: int) -> None:
    """One optimizer step on ``loss``, after checking that it is finite."""
    if not torch.isfinite(loss):
        raise RuntimeError(
            f"APD.fit: non-finite {name} loss ({float(loss.detach())}) at generator step {step + 1}; lower "
            "learning_rate, or check the samples"
        )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def predict_drawn_networks(
    source: Any,
    what: str,
    inputs: tuple[Any, ...],
    num_samples: int | None,
    generator: torch.Generator | None,
    options: dict[str, Any],
) -> Prediction | GaussianPrediction:
    """:func:`uqkit.predict` of ``S`` networks freshly drawn from a weight generator (``source``: an
    :class:`APD` or an :class:`~uqkit.methods.apd_mixture.APDMixture`, anything with ``sample_ensemble``):
    ``S = num_samples`` (default :data:`DEFAULT_PREDICT_SAMPLES`), ``[S, B, C]``; ``options`` go to
    :func:`uqkit.predict` of the drawn ensemble (``mean_field`` must be None: the draws are the samples).

    Raises:
        ValueError: ``mean_field`` is given (``what`` names the generator in the message).
    """
    if options.get("mean_field") is not None:
        raise ValueError(f"mean_field: expected None for {what}, got {options['mean_field']}")
    options.pop("mean_field", None)
    count = DEFAULT_PREDICT_SAMPLES if num_samples is None else num_samples
    ensemble = source.sample_ensemble(count, generator=generator)
    return predict(ensemble, *inputs, num_samples=count, **options)
