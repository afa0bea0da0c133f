"""In-place conversion of a deterministic model into a Bayesian or member-vectorized one: bayesianize_.

One entry point, a config object and a filter, as in ``torchao.quantize_(model, config, filter_fn)``: every
``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d`` and ``nn.LSTM`` anywhere in the model (nested containers, shared
modules, any qualified name) is replaced by its twin of the family that the config names, with the
pretrained weights copied into the posterior means (Flipout, reparameterisation) or the shared weight
(BatchEnsemble, rank-1). Anything left alone is listed in the returned :class:`ConversionReport`: nothing is
skipped silently.

The member-vectorized families (:class:`BatchEnsembleConfig`, :class:`Rank1Config`) fold the ``M`` members
into the batch (:mod:`uqkit.nn.members`): the converted model is called exactly as before its conversion
(positional and keyword inputs, ``[B, ...]``), tiles every batch-shaped tensor input to ``[M * B, ...]`` on
entry (a forward pre-hook on the root model, :func:`remove_member_tiling` takes it off) and returns
``[M * B, ...]``, member-major; ``model.uqkit_num_members`` is ``M``. Everything between the converted layers
(pooling, ``Flatten``, activations, dropout, residual additions, shape checks) sees an ordinary batch.

The type registry maps ``(config type, module type)`` to a converter; :func:`register_conversion` adds
entries (e.g. for your own layers). Only exact types match: a subclass of ``nn.Linear`` (such as the output
projection inside ``nn.MultiheadAttention``, whose owner reads ``.weight`` directly) is reported, not
converted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from uqkit._deprecation import renamed_module_attribute
from uqkit._validation import check_positive_float, check_positive_int
from uqkit.methods.prediction_protocol import NUM_SAMPLES_ATTRIBUTE
from uqkit.nn import (
    BatchEnsembleConv1d,
    BatchEnsembleConv2d,
    BatchEnsembleLinear,
    BayesianModule,
    FlipoutConv1d,
    FlipoutConv2d,
    FlipoutLinear,
    FlipoutLSTM,
    Rank1Conv1d,
    Rank1Conv2d,
    Rank1Linear,
    ReparameterizationConv1d,
    ReparameterizationConv2d,
    ReparameterizationLinear,
    ReparameterizationLSTM,
    StochasticModule,
)
from uqkit.nn._posterior import check_prior
from uqkit.nn.batchensemble import MemberConvBase, MemberLinearBase, check_fast_weight_init
from uqkit.nn.members import MEMBERS_ATTRIBUTE, tile_inputs
from uqkit.nn.priors import NormalPrior, Prior
from uqkit.nn.rank1 import RANK1_POSTERIOR_SCALE_INIT, default_rank1_prior

__all__ = [
    "BatchEnsembleConfig",
    "ConversionReport",
    "FlipoutConfig",
    "Rank1Config",
    "ReparameterizationConfig",
    "bayesianize_",
    "register_conversion",
    "remove_member_tiling",
]

RENAMED = {"GaussianConfig": "ReparameterizationConfig"}
"""Former names (deprecated; removed in uqkit 0.2.0)."""


def __getattr__(name: str):
    return renamed_module_attribute(__name__, name, RENAMED, globals())


def _validate_config(config: Any) -> None:
    check_prior(config.prior)
    check_positive_float(config.posterior_scale_init, "posterior_scale_init", allow_zero=True)
    if getattr(config, "num_samples", None) is not None:
        check_positive_int(config.num_samples, "num_samples")


@dataclass(frozen=True)
class FlipoutConfig:
    """Convert to Flipout layers (Wen et al. 2018): per-example pseudo-independent weight noise.

    Args:
        prior: prior of every converted weight and bias (default ``NormalPrior(scale=1.0)``).
        posterior_scale_init: initial posterior standard deviation of every converted parameter, ``>= 0``
            (default 0.01). 0 makes the converted model compute exactly what the original computed, to check
            a conversion; its KL is infinite, so train from a positive scale.
        batch_dim: the dimension that indexes examples in the inputs of converted ``nn.Linear`` layers
            (:class:`~uqkit.nn.FlipoutLinear`'s ``batch_dim``), ``>= 0``: default 0, 1 for layers that see
            time-major ``[T, B, F]`` inputs. Each example draws its own signs, shared by its other positions.
            Convolutions always take ``[B, C, ...]`` and LSTMs follow their ``batch_first``; convert layers
            of different layouts with two calls and a ``filter_fn``.
        num_samples: optional default ``S`` of :func:`uqkit.predict` for the converted model, ``>= 1``:
            :func:`bayesianize_` sets the model's ``uqkit_num_samples`` to it. ``None`` (default): the model
            keeps its setting (without one, :func:`uqkit.predict` draws 8 samples).
    """

    prior: Prior = field(default_factory=NormalPrior)
    posterior_scale_init: float = 1e-2
    batch_dim: int = 0
    num_samples: int | None = None
    family: ClassVar[str] = "flipout"

    def __post_init__(self) -> None:
        _validate_config(self)
        check_positive_int(self.batch_dim, "batch_dim", minimum=0)

    def layer_kwargs(self, source: nn.Module) -> dict[str, Any]:
        """Keyword arguments that the config adds to the constructor of the twin of ``source``."""
        kwargs: dict[str, Any] = {"prior": self.prior, "posterior_scale_init": self.posterior_scale_init}
        if type(source) is nn.Linear:
            kwargs["batch_dim"] = self.batch_dim
        return kwargs


@dataclass(frozen=True)
class ReparameterizationConfig:
    """Convert to mean-field layers trained with the reparameterisation trick (Blundell et al. 2015): one
    weight sample per forward pass (:class:`uqkit.nn.ReparameterizationLinear` and its twins). Formerly
    ``GaussianConfig``.

    Args:
        prior: prior of every converted weight and bias (default ``NormalPrior(scale=1.0)``).
        posterior_scale_init: initial posterior standard deviation, ``>= 0`` (default 0.01).
        local_reparameterization: sample the pre-activations of converted ``nn.Linear`` layers per example
            (Kingma et al. 2015). Convolutions and LSTMs have no local form and draw one weight sample per
            forward pass either way. Default ``False``.
        num_samples: optional default ``S`` of :func:`uqkit.predict` for the converted model, as in
            :class:`FlipoutConfig`.
    """

    prior: Prior = field(default_factory=NormalPrior)
    posterior_scale_init: float = 1e-2
    local_reparameterization: bool = False
    num_samples: int | None = None
    family: ClassVar[str] = "reparameterization"

    def __post_init__(self) -> None:
        _validate_config(self)
        if not isinstance(self.local_reparameterization, bool):
            kind = type(self.local_reparameterization).__name__
            raise TypeError(f"local_reparameterization: expected a bool, got {kind}")

    def layer_kwargs(self, source: nn.Module) -> dict[str, Any]:
        """Keyword arguments that the config adds to the constructor of the twin of ``source``."""
        kwargs: dict[str, Any] = {"prior": self.prior, "posterior_scale_init": self.posterior_scale_init}
        if type(source) is nn.Linear:
            kwargs["local_reparameterization"] = self.local_reparameterization
        return kwargs


CONVERSION_FAST_WEIGHT_STD = 0.1
"""Default std of a conversion's ``N(1, std^2)`` fast weights (BatchEnsemble) and factor means (rank-1)."""


@dataclass(frozen=True)
class BatchEnsembleConfig:
    """Convert to BatchEnsemble layers (Wen et al. 2020): ``M`` members sharing each weight, rank-1 factors.

    The converted model is called as before its conversion (``[B, ...]`` inputs, positional or keyword),
    tiles them to the ``M`` members and returns ``[M * B, ...]``, member-major (row ``m * B + b`` from member
    ``m``; :func:`uqkit.predict` gives ``[M, B, C]``, and training tiles the labels with
    :func:`uqkit.nn.members.tile_members`). The pretrained weight becomes the shared ``W`` and its bias every
    member's bias.

    Fast weights for a conversion (the default, ``"normal"`` with std :data:`CONVERSION_FAST_WEIGHT_STD` =
    0.1): every member starts at ``W * (s_m r_m^T)`` with ``r_m, s_m ~ N(1, 0.1^2)``, near the pretrained
    function and different from the other members. Wen et al. 2020 train from scratch and initialise with
    random signs; on a pretrained ``W`` those flip signs on both sides of every ReLU and the pretrained
    function is gone (on a trained MLP 784-512-512-10: 6 % of the validation predictions unchanged, NLL 2.37
    instead of 0.348). ``"ones"`` keeps the function exactly, but all members then get identical gradients
    and stay identical through training: an ensemble of one. With ``N(1, 0.1^2)`` the same MLP's logits move
    by 10 % (relative RMS), 96 % of its predictions are unchanged, the members' mean NLL rises from 0.348 to
    0.357 and their ensemble's is 0.345; two members disagree on 5.5 % of the inputs (std 0.05: 98 %, 0.349,
    0.346, 2.7 %; std 0.5, uncertainty-baselines' ``random_sign_init = -0.5``: 78 %, 0.848, 0.521; measured by
    ``benchmarks/convert_fast_weights.py``). Pass ``fast_weight_init="random_sign"`` to train a freshly built
    model as the paper does (the benchmark's ``batchensemble`` does), or ``"ones"`` to check a conversion:
    every member then computes exactly what the original computed.

    Args:
        num_members: ``M`` (default 4, as Wen et al.).
        fast_weight_init: ``"normal"`` (default), ``"random_sign"`` or ``"ones"``; see
            :class:`uqkit.nn.BatchEnsembleLinear`.
        fast_weight_std: standard deviation of the ``"normal"`` initialisation (default 0.1).
    """

    num_members: int = 4
    fast_weight_init: str = "normal"
    fast_weight_std: float = CONVERSION_FAST_WEIGHT_STD
    family: ClassVar[str] = "batchensemble"

    def __post_init__(self) -> None:
        check_positive_int(self.num_members, "num_members")
        check_fast_weight_init(self.fast_weight_init, self.fast_weight_std)

    def layer_kwargs(self, source: nn.Module) -> dict[str, Any]:
        """Keyword arguments that the config adds to the constructor of the twin of ``source``."""
        return {
            "num_members": self.num_members,
            "fast_weight_init": self.fast_weight_init,
            "fast_weight_std": self.fast_weight_std,
        }


@dataclass(frozen=True)
class Rank1Config:
    """Convert to rank-1 BNN layers (Dusenberry et al. 2020): BatchEnsemble with Gaussian factors.

    Inputs and outputs as :class:`BatchEnsembleConfig`; the KL of the factors is collected by
    :func:`uqkit.kl_divergence`. The factor means start as :class:`BatchEnsembleConfig`'s fast weights,
    ``N(1, 0.1^2)``, near the pretrained function (see there), and drawn from the default prior
    ``N(1, 0.1^2)``: the KL at initialisation is what a typical draw from the prior costs (1/2 nat per entry
    for the means), not the 200 nats per ``-1`` entry that random signs would cost under that prior. With
    ``posterior_scale_init=0`` and ``fast_weight_init="ones"`` every member computes exactly what the original
    computed. To train a freshly built model, choose the init and the prior together (the benchmark's
    ``rank1-bnn``: random signs under the prior ``N(1, 2)``, of which they are a typical draw).

    Args:
        num_members: ``M``, the number of mixture components (default 4).
        prior: prior of every factor entry (default ``NormalPrior(scale=0.1, loc=1.0)``).
        posterior_scale_init: initial posterior standard deviation of the factors (default ~0.0316).
        fast_weight_init: initialisation of the factor means (default ``"normal"``).
        fast_weight_std: standard deviation of the ``"normal"`` initialisation (default 0.1).
    """

    num_members: int = 4
    prior: Prior = field(default_factory=default_rank1_prior)
    posterior_scale_init: float = RANK1_POSTERIOR_SCALE_INIT
    fast_weight_init: str = "normal"
    fast_weight_std: float = CONVERSION_FAST_WEIGHT_STD
    family: ClassVar[str] = "rank1"

    def __post_init__(self) -> None:
        check_positive_int(self.num_members, "num_members")
        _validate_config(self)
        check_fast_weight_init(self.fast_weight_init, self.fast_weight_std)

    def layer_kwargs(self, source: nn.Module) -> dict[str, Any]:
        """Keyword arguments that the config adds to the constructor of the twin of ``source``."""
        return {
            "num_members": self.num_members,
            "prior": self.prior,
            "posterior_scale_init": self.posterior_scale_init,
            "fast_weight_init": self.fast_weight_init,
            "fast_weight_std": self.fast_weight_std,
        }


Config = FlipoutConfig | ReparameterizationConfig | BatchEnsembleConfig | Rank1Config
_CONFIG_TYPES = (FlipoutConfig, ReparameterizationConfig, BatchEnsembleConfig, Rank1Config)
Converter = Callable[[nn.Module, Any], nn.Module]


class UnsupportedModuleError(ValueError):
    """Raised by a converter for a module of a registered type whose settings the twin lacks."""


def _factory(module: nn.Module) -> dict[str, Any]:
    weight = next(module.parameters())
    return {"device": weight.device, "dtype": weight.dtype}


def _linear_args(module: nn.Linear) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return (module.in_features, module.out_features, module.bias is not None), {}


def _conv_args(module: nn.Conv1d | nn.Conv2d) -> tuple[tuple[Any, ...], dict[str, Any]]:
    args = (
        module.in_channels,
        module.out_channels,
        module.kernel_size,
        module.stride,
        module.padding,
        module.dilation,
        module.groups,
        module.bias is not None,
        module.padding_mode,
    )
    return args, {}


def _lstm_args(module: nn.LSTM) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if module.proj_size != 0:
        raise UnsupportedModuleError(f"proj_size={module.proj_size} (Bayesian LSTMs support proj_size=0)")
    args = (
        module.input_size,
        module.hidden_size,
        module.num_layers,
        module.bias,
        module.batch_first,
        module.dropout,
        module.bidirectional,
    )
    return args, {}


def _twin_converter(
    twin: type[BayesianModule], arguments: Callable[[Any], tuple[tuple[Any, ...], dict[str, Any]]]
) -> Converter:
    """A converter that builds ``twin`` from the source's constructor arguments and copies its weights."""

    def convert(module: nn.Module, config: Config) -> nn.Module:
        args, kwargs = arguments(module)
        layer = twin(*args, **kwargs, **config.layer_kwargs(module), **_factory(module))
        with torch.no_grad():
            for name in layer.posterior_names:  # twins keep the source's parameter names
                layer.posterior_mean(name).copy_(getattr(module, name))
        return layer.train(module.training)

    return convert


_REGISTRY: dict[tuple[type, type[nn.Module]], Converter] = {}


def register_conversion(config_type: type, module_type: type[nn.Module], converter: Converter) -> None:
    """Teach :func:`bayesianize_` to convert modules of exactly ``module_type`` under ``config_type`` configs.

    Args:
        config_type: the config class, e.g. :class:`FlipoutConfig`.
        module_type: the deterministic module class to replace (matched exactly, not by subclass).
        converter: ``converter(module, config) -> new_module``; it may raise ``UnsupportedModuleError`` to
            leave a module alone with a reason in the report.
    """
    if not isinstance(config_type, type) or not isinstance(module_type, type):
        raise TypeError("config_type, module_type: expected classes")
    if not issubclass(module_type, nn.Module):
        raise TypeError(f"module_type: expected a subclass of nn.Module, got {module_type!r}")
    if not callable(converter):
        raise TypeError(f"converter: expected a callable, got {type(converter).__name__}")
    _REGISTRY[(config_type, module_type)] = converter


for _config, _twins in (
    (FlipoutConfig, (FlipoutLinear, FlipoutConv1d, FlipoutConv2d, FlipoutLSTM)),
    (
        ReparameterizationConfig,
        (
            ReparameterizationLinear,
            ReparameterizationConv1d,
            ReparameterizationConv2d,
            ReparameterizationLSTM,
        ),
    ),
):
    for _source, _twin, _arguments in zip(
        (nn.Linear, nn.Conv1d, nn.Conv2d, nn.LSTM),
        _twins,
        (_linear_args, _conv_args, _conv_args, _lstm_args),
        strict=True,
    ):
        register_conversion(_config, _source, _twin_converter(_twin, _arguments))


def _member_converter(twin: type[nn.Module], keywords: tuple[str, ...]) -> Converter:
    """A converter to a member-vectorized twin: the source's weight becomes the shared ``W`` and its bias
    the bias of every member."""

    def convert(module: nn.Module, config: Config) -> nn.Module:
        arguments = {name: getattr(module, name) for name in keywords}
        arguments["bias"] = module.bias is not None
        layer = twin(**arguments, **config.layer_kwargs(module), **_factory(module))
        with torch.no_grad():
            layer.weight.copy_(module.weight)
            if module.bias is not None:
                layer.bias.copy_(module.bias.expand_as(layer.bias))
        return layer.train(module.training)

    return convert


_LINEAR_KEYWORDS = ("in_features", "out_features")
_CONV_KEYWORDS = (
    "in_channels",
    "out_channels",
    "kernel_size",
    "stride",
    "padding",
    "dilation",
    "groups",
    "padding_mode",
)
for _config, _twins in (
    (BatchEnsembleConfig, (BatchEnsembleLinear, BatchEnsembleConv1d, BatchEnsembleConv2d)),
    (Rank1Config, (Rank1Linear, Rank1Conv1d, Rank1Conv2d)),
):
    for _source, _twin, _keywords in zip(
        (nn.Linear, nn.Conv1d, nn.Conv2d),
        _twins,
        (_LINEAR_KEYWORDS, _CONV_KEYWORDS, _CONV_KEYWORDS),
        strict=True,
    ):
        register_conversion(_config, _source, _member_converter(_twin, _keywords))


class TileMembers:
    """Forward pre-hook of a converted member model: tiles its ``[B, ...]`` inputs to ``[M * B, ...]``.

    Every batch-shaped tensor among the positional and keyword inputs is tiled, member-major
    (:func:`uqkit.nn.members.tile_inputs`; inside :func:`uqkit.nn.members.pretiled` nothing is tiled). A
    plain object (no closure), so that it survives ``copy.deepcopy`` and ``torch.save`` of the model.
    """

    def __init__(self, num_members: int) -> None:
        self.num_members = check_positive_int(num_members, "num_members")

    def __call__(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return tile_inputs(args, kwargs, self.num_members)

    def __repr__(self) -> str:
        return f"TileMembers(num_members={self.num_members})"


def _tiling_hooks(model: nn.Module) -> list[int]:
    return [key for key, hook in model._forward_pre_hooks.items() if isinstance(hook, TileMembers)]


def _install_member_tiling(model: nn.Module, num_members: int) -> None:
    """Tile the inputs of ``model`` to ``num_members`` members on entry; mark it as a member model."""
    existing = [model._forward_pre_hooks[key].num_members for key in _tiling_hooks(model)]
    if existing and existing[0] != num_members:
        raise ValueError(
            f"config: expected num_members = {existing[0]}, as in the model's earlier member conversion "
            f"(its inputs are tiled to {existing[0]} members), got {num_members}"
        )
    if not existing:
        model.register_forward_pre_hook(TileMembers(num_members), with_kwargs=True)
    setattr(model, MEMBERS_ATTRIBUTE, num_members)


def remove_member_tiling(model: nn.Module) -> bool:
    """Take off the input tiling that :func:`bayesianize_` installed on a BatchEnsemble / rank-1 model.

    The model then takes ``[M * B, ...]`` inputs (member-major) and is no longer marked as a member model.

    Returns:
        Whether a tiling hook was found and removed.
    """
    keys = _tiling_hooks(model)
    for key in keys:
        del model._forward_pre_hooks[key]
        model._forward_pre_hooks_with_kwargs.pop(key, None)
    if keys and MEMBERS_ATTRIBUTE in model.__dict__:
        delattr(model, MEMBERS_ATTRIBUTE)
    return bool(keys)


@dataclass
class ConversionReport:
    """What :func:`bayesianize_` did.

    Attributes:
        converted: ``(qualified name, original type, new type)`` per converted module (a module shared by
            several names is listed under each).
        skipped: ``(qualified name, type, reason)`` per module with parameters that was left alone.
    """

    converted: list[tuple[str, str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"converted {len(self.converted)} module(s):"]
        lines += [f"  {name}: {old} -> {new}" for name, old, new in self.converted]
        if self.skipped:
            lines.append(f"left alone {len(self.skipped)} module(s) with parameters:")
            lines += [f"  {name}: {kind} ({reason})" for name, kind, reason in self.skipped]
        return "\n".join(lines)


def _supported_types(config: Config) -> list[str]:
    return [f"nn.{m.__name__}" for c, m in _REGISTRY if c is type(config)]


def _skip_reason(module: nn.Module, config: Config) -> str | None:
    """Why a module with parameters of no registered type is left alone."""
    if isinstance(module, StochasticModule):
        return "already a stochastic layer"
    if isinstance(module, (MemberLinearBase, MemberConvBase)):
        return "already a member-vectorized layer"
    for config_type, module_type in _REGISTRY:
        if config_type is type(config) and isinstance(module, module_type):
            return f"a subclass of nn.{module_type.__name__}; only exact types are converted"
    return f"no {config.family} twin for this type (supported: {', '.join(_supported_types(config))})"


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attribute = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attribute, module)


def bayesianize_(
    model: nn.Module,
    config: Config,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
) -> ConversionReport:
    """Replace, in place, the supported layers of ``model`` by twins of the ``config``'s family.

    ``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d`` and ``nn.LSTM`` become Flipout layers under
    :class:`FlipoutConfig` and reparameterisation-trick layers under :class:`ReparameterizationConfig`, with
    the same constructor arguments, device and dtype, and with the pretrained weights and biases copied into
    the posterior means (posterior scales set to ``config.posterior_scale_init``). A module shared by several
    names is replaced by one twin shared the same way. With ``posterior_scale_init=0`` the converted model
    computes what the original computed.

    Under :class:`BatchEnsembleConfig` and :class:`Rank1Config`, ``nn.Linear``, ``nn.Conv1d`` and
    ``nn.Conv2d`` become BatchEnsemble or rank-1 layers of ``config.num_members`` members (the pretrained
    weight shared, its bias copied to every member; LSTMs, embeddings and normalisation layers are
    reported, not converted, and are shared by the members). The root ``model`` gets a forward pre-hook
    (:class:`TileMembers`) that tiles its ``[B, ...]`` inputs to ``[M * B, ...]`` and the attribute
    ``uqkit_num_members = M``: it is called exactly as before and returns ``[M * B, ...]``, member-major.

    A config's ``num_samples`` (Flipout, reparameterisation), when given, becomes the root model's
    ``uqkit_num_samples``, the number of samples :func:`uqkit.predict` draws when its call gives none.

    Args:
        model: the model to convert (modified in place). It cannot itself be a supported layer: wrap it,
            e.g. ``nn.Sequential(layer)``.
        config: :class:`FlipoutConfig`, :class:`ReparameterizationConfig`, :class:`BatchEnsembleConfig` or
            :class:`Rank1Config` (defaults are usable as they are).
        filter_fn: optional ``filter_fn(module, qualified_name) -> bool`` called on each supported module;
            only those for which it returns ``True`` are converted.

    Returns:
        A :class:`ConversionReport` listing what was converted and every module with parameters left alone,
        with the reason.

    Raises:
        TypeError: for a ``model`` that is not an ``nn.Module``, an unknown ``config`` or a ``filter_fn`` that
            is not callable.
        ValueError: if nothing was converted (the message lists what was found), or if ``model`` itself is
            a supported layer.

    Example:
        >>> only_head = lambda module, name: name.startswith("head")
        >>> report = uqkit.bayesianize_(model, uqkit.FlipoutConfig(), filter_fn=only_head)
        >>> print(report)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(config, _CONFIG_TYPES):
        raise TypeError(
            "config: expected uqkit.FlipoutConfig(), uqkit.ReparameterizationConfig(), "
            f"uqkit.BatchEnsembleConfig() or uqkit.Rank1Config(), got {type(config).__name__}"
        )
    if filter_fn is not None and not callable(filter_fn):
        raise TypeError(
            f"filter_fn: expected a callable (module, name) -> bool, got {type(filter_fn).__name__}"
        )
    if (type(config), type(model)) in _REGISTRY:
        raise ValueError(
            f"model: is itself an nn.{type(model).__name__}, which cannot be replaced in place; wrap it, "
            "e.g. bayesianize_(nn.Sequential(model), config)"
        )

    report = ConversionReport()
    names_of: dict[int, list[str]] = {}
    modules: dict[int, nn.Module] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names_of.setdefault(id(module), []).append(name)
        modules[id(module)] = module

    replacements: dict[int, nn.Module] = {}
    for key, module in modules.items():
        names = names_of[key]
        kind = type(module).__name__
        if isinstance(module, parametrize.ParametrizationList):
            continue  # reported through its owner (parametrized module)
        if parametrize.is_parametrized(module):
            report.skipped += [(name, kind, "has parametrizations (e.g. weight norm)") for name in names]
            continue
        converter = _REGISTRY.get((type(config), type(module)))
        if converter is None:
            if any(True for _ in module.parameters(recurse=False)):
                report.skipped += [(name, kind, _skip_reason(module, config)) for name in names]
            continue
        if filter_fn is not None and not filter_fn(module, names[0]):
            report.skipped += [(name, kind, "excluded by filter_fn") for name in names]
            continue
        try:
            replacements[key] = converter(module, config)
        except UnsupportedModuleError as error:
            report.skipped += [(name, kind, str(error)) for name in names]

    if not replacements:
        found = sorted({kind for _, kind, _ in report.skipped})
        raise ValueError(
            f"model: nothing to convert for {type(config).__name__}: expected at least one of "
            f"{', '.join(_supported_types(config))}, found {found if found else 'no module with parameters'}"
            f"\n{report}"
        )
    for key, new in replacements.items():
        for name in names_of[key]:
            _replace(model, name, new)
            report.converted.append((name, type(modules[key]).__name__, type(new).__name__))
    if isinstance(config, (BatchEnsembleConfig, Rank1Config)):
        _install_member_tiling(model, config.num_members)
    if getattr(config, "num_samples", None) is not None:
        setattr(model, NUM_SAMPLES_ATTRIBUTE, config.num_samples)
    return report
