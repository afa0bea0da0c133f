"""In-place conversion of a deterministic model into a Bayesian one: :func:`bayesianize_`.

One entry point, a config object and a filter, as in ``torchao.quantize_(model, config, filter_fn)``: every
``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d`` and ``nn.LSTM`` anywhere in the model (nested containers, shared
modules, any qualified name) is replaced by its stochastic twin of the family that the config names, with the
pretrained weights copied into the posterior means. Anything left alone is listed in the returned
:class:`ConversionReport`: nothing is skipped silently.

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

from uqkit._validation import check_positive_float
from uqkit.nn import (
    BayesianModule,
    FlipoutConv1d,
    FlipoutConv2d,
    FlipoutLinear,
    FlipoutLSTM,
    GaussianConv1d,
    GaussianConv2d,
    GaussianLinear,
    GaussianLSTM,
    StochasticModule,
)
from uqkit.nn._posterior import _check_prior
from uqkit.nn.priors import NormalPrior, Prior

__all__ = [
    "ConversionReport",
    "FlipoutConfig",
    "GaussianConfig",
    "bayesianize_",
    "register_conversion",
]


def _validate_config(config: FlipoutConfig | GaussianConfig) -> None:
    _check_prior(config.prior)
    check_positive_float(config.posterior_scale_init, "posterior_scale_init", allow_zero=True)


@dataclass(frozen=True)
class FlipoutConfig:
    """Convert to Flipout layers (Wen et al. 2018): per-example pseudo-independent weight noise.

    Args:
        prior: prior of every converted weight and bias (default ``NormalPrior(scale=1.0)``).
        posterior_scale_init: initial posterior standard deviation of every converted parameter, ``>= 0``
            (default 0.01). 0 makes the converted model compute exactly what the original computed, to check
            a conversion; its KL is infinite, so train from a positive scale.
    """

    prior: Prior = field(default_factory=NormalPrior)
    posterior_scale_init: float = 1e-2
    family: ClassVar[str] = "flipout"

    def __post_init__(self) -> None:
        _validate_config(self)

    def layer_kwargs(self, source: nn.Module) -> dict[str, Any]:
        """Keyword arguments that the config adds to the constructor of the twin of ``source``."""
        return {"prior": self.prior, "posterior_scale_init": self.posterior_scale_init}


@dataclass(frozen=True)
class GaussianConfig:
    """Convert to reparameterised Gaussian layers (Blundell et al. 2015): one weight sample per forward.

    Args:
        prior: prior of every converted weight and bias (default ``NormalPrior(scale=1.0)``).
        posterior_scale_init: initial posterior standard deviation, ``>= 0`` (default 0.01).
        local_reparameterization: sample the pre-activations of converted ``nn.Linear`` layers per example
            (Kingma et al. 2015). Convolutions and LSTMs have no local form and draw one weight sample per
            forward pass either way. Default ``False``.
    """

    prior: Prior = field(default_factory=NormalPrior)
    posterior_scale_init: float = 1e-2
    local_reparameterization: bool = False
    family: ClassVar[str] = "gaussian"

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


Config = FlipoutConfig | GaussianConfig
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
    (GaussianConfig, (GaussianLinear, GaussianConv1d, GaussianConv2d, GaussianLSTM)),
):
    for _source, _twin, _arguments in zip(
        (nn.Linear, nn.Conv1d, nn.Conv2d, nn.LSTM),
        _twins,
        (_linear_args, _conv_args, _conv_args, _lstm_args),
        strict=True,
    ):
        register_conversion(_config, _source, _twin_converter(_twin, _arguments))


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
    """Replace, in place, the supported layers of ``model`` by Bayesian twins of the ``config``'s family.

    ``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d`` and ``nn.LSTM`` become Flipout layers under
    :class:`FlipoutConfig` and reparameterised Gaussian layers under :class:`GaussianConfig`, with the same
    constructor arguments, device and dtype, and with the pretrained weights and biases copied into the
    posterior means (posterior scales set to ``config.posterior_scale_init``). A module shared by several
    names is replaced by one twin shared the same way. With ``posterior_scale_init=0`` the converted model
    computes what the original computed.

    Args:
        model: the model to convert (modified in place). It cannot itself be a supported layer: wrap it,
            e.g. ``nn.Sequential(layer)``.
        config: :class:`FlipoutConfig` or :class:`GaussianConfig` (defaults are usable as they are).
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
    if not isinstance(config, (FlipoutConfig, GaussianConfig)):
        raise TypeError(
            f"config: expected uqkit.FlipoutConfig() or uqkit.GaussianConfig(), got {type(config).__name__}"
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
            continue  # reported through the parametrized module that owns it
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
    return report
