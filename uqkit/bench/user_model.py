"""Your model in ``uqkit bench --model MODULE:FACTORY`` (or ``--model path/to/file.py:FACTORY``).

``FACTORY`` is a callable with no arguments that returns a fresh ``torch.nn.Module``; the benchmark calls it
once for every copy a method needs (each member of a deep ensemble, each method). Its model maps a batch of
inputs ``[B, *input_shape]`` to one tensor ``[B, K]``: one logit per class for classification, or two values
per target for regression (the mean, then an unconstrained scale that uqkit maps to a variance,
:func:`uqkit.bench.likelihoods.gaussian_head`).

Methods that change the architecture do it on the factory's model:

* ``mc-dropout``: the model's ``nn.Dropout`` modules are kept on at prediction (:class:`uqkit.nn.MCDropout`
  of the same rate); a model without one cannot have MC dropout (:func:`with_mc_dropout`).
* ``mimo``: the first ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` takes ``M`` times its inputs and the last
  ``nn.Linear`` gives ``M`` times its outputs (:func:`widen_for_members`).
* ``sngp``, ``heteroscedastic``: the model must be an ``nn.Sequential`` ending with an ``nn.Linear``.

Every failure is a ``ValueError`` naming ``--model``'s value and the problem, never a traceback of the
user's code.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

from torch import nn

__all__ = ["build_user_model", "is_factory_spec", "load_factory", "widen_for_members", "with_mc_dropout"]


def is_factory_spec(model: str | None) -> bool:
    """Whether ``--model``'s value names a factory (``MODULE:FACTORY`` or ``file.py:FACTORY``), not a
    built-in backbone such as ``mlp``."""
    return isinstance(model, str) and ":" in model


def _describe_error(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def _import_file(spec: str, path: Path):
    if not path.is_file():
        raise ValueError(f"--model {spec}: no such file {path}")
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    name = f"uqkit_user_model_{digest}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise ValueError(f"--model {spec}: {path} cannot be imported as a Python file")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as error:  # the user's code: report it, no traceback
        del sys.modules[name]
        raise ValueError(f"--model {spec}: importing {path} failed: {_describe_error(error)}") from None
    return module


@functools.lru_cache(maxsize=16)
def load_factory(spec: str) -> Callable[[], nn.Module]:
    """The callable named by ``spec``: ``package.module:name`` (imported) or ``path/to/file.py:name``
    (executed as a module; relative to the working directory).

    Raises:
        ValueError: the module or file cannot be imported (the error is named), it has no such attribute,
            or the attribute is not callable.
    """
    where, _, attribute = spec.rpartition(":")
    if not where or not attribute:
        raise ValueError(f"--model {spec}: expected MODULE:FACTORY or path/to/file.py:FACTORY")
    if where.endswith(".py") or "/" in where or "\\" in where:
        module = _import_file(spec, Path(where))
        origin = where
    else:
        try:
            module = importlib.import_module(where)
        except Exception as error:  # ModuleNotFoundError, or the module's own code failing
            raise ValueError(
                f"--model {spec}: cannot import module {where!r} ({_describe_error(error)})"
            ) from None
        origin = f"module {where}"
    if not hasattr(module, attribute):
        names = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
        raise ValueError(
            f"--model {spec}: {origin} has no attribute {attribute!r} (callables there: {shown})"
        )
    factory = getattr(module, attribute)
    if not callable(factory):
        raise ValueError(
            f"--model {spec}: {origin}'s {attribute} is a {type(factory).__name__}, not a callable"
        )
    return factory


def build_user_model(spec: str, dropout: Callable[[], nn.Module] | None = None) -> nn.Module:
    """A fresh model from the factory named by ``spec``; with ``dropout`` (MC dropout asked for), its
    ``nn.Dropout`` modules kept on at prediction (:func:`with_mc_dropout`).

    Raises:
        ValueError: the factory cannot be loaded, raises, or does not return an ``nn.Module``; or MC dropout
            is asked of a model without dropout.
    """
    factory = load_factory(spec)
    name = spec.rpartition(":")[2]
    try:
        model = factory()
    except Exception as error:  # the user's code
        raise ValueError(f"--model {spec}: calling {name}() failed: {_describe_error(error)}") from None
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"--model {spec}: {name}() returned a {type(model).__name__}, expected a torch.nn.Module"
        )
    return with_mc_dropout(model) if dropout is not None else model


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def with_mc_dropout(model: nn.Module) -> nn.Module:
    """``model`` with every ``nn.Dropout`` replaced, in place, by an always-on :class:`uqkit.nn.MCDropout` of
    the same rate (Gal & Ghahramani 2016).

    Raises:
        ValueError: if the model has no ``nn.Dropout``.
    """
    from uqkit.nn import MCDropout

    found = [(name, module) for name, module in model.named_modules() if type(module) is nn.Dropout]
    if not found:
        raise ValueError(
            "MC dropout keeps the model's own nn.Dropout layers on at prediction; this model has none"
        )
    for name, module in found:
        _replace(model, name, MCDropout(module.p))
    return model


_WIDENABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)


def _widened(layer: nn.Module, inputs: int, outputs: int) -> nn.Module:
    """A fresh layer like ``layer`` with ``inputs`` times its inputs and ``outputs`` times its outputs."""
    bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        return nn.Linear(layer.in_features * inputs, layer.out_features * outputs, bias=bias)
    return type(layer)(
        layer.in_channels * inputs,
        layer.out_channels * outputs,
        layer.kernel_size,
        stride=layer.stride,
        padding=layer.padding,
        dilation=layer.dilation,
        bias=bias,
        padding_mode=layer.padding_mode,
    )


def widen_for_members(model: nn.Module, num_members: int) -> nn.Module:
    """``model`` made a MIMO network of ``M = num_members`` (Havasi et al. 2021), in place (a model that is
    one layer is returned as a new layer): its first layer
    with weights (registration order) takes ``M`` times its input features or channels, its last
    ``nn.Linear`` gives ``M`` times its outputs (member-major blocks), both freshly initialised.

    Raises:
        ValueError: if the first module with parameters is not an ``nn.Linear`` / ``nn.Conv1d`` /
            ``nn.Conv2d`` with ``groups = 1``, or there is no ``nn.Linear`` output layer.
    """
    weighted = [
        (name, module)
        for name, module in model.named_modules()
        if next(module.parameters(recurse=False), None) is not None
    ]
    linear = [(name, module) for name, module in weighted if isinstance(module, nn.Linear)]
    if (
        not weighted
        or not isinstance(weighted[0][1], _WIDENABLE)
        or getattr(weighted[0][1], "groups", 1) != 1
    ):
        found = f"{type(weighted[0][1]).__name__} {weighted[0][0]!r}" if weighted else "no layer with weights"
        raise ValueError(
            f"MIMO widens the model's first layer to take M inputs; it must be an nn.Linear, nn.Conv1d or "
            f"nn.Conv2d (groups=1), found {found}"
        )
    if not linear:
        raise ValueError("MIMO widens the model's output layer to M heads; the model has no nn.Linear")
    (first_name, first), (last_name, last) = weighted[0], linear[-1]
    if first is last:
        if not first_name:  # the model is one layer
            return _widened(first, num_members, num_members)
        _replace(model, first_name, _widened(first, num_members, num_members))
        return model
    _replace(model, first_name, _widened(first, num_members, 1))
    _replace(model, last_name, _widened(last, 1, num_members))
    return model
