"""One prediction entry point for every family: ``uqkit.predict(model, *inputs, ...)``.

:func:`predict` calls ``model(*inputs, **kwargs)`` exactly as the user would, one or a few times, and returns
a :class:`~uqkit.Prediction` with ``[S, B, C]`` logits (or a :class:`~uqkit.GaussianPrediction` with
``[S, B, D]`` means and variances for a Gaussian-head regressor). It needs no isinstance chain over the
families: each family declares what it is through a small protocol, read off the model.

**Protocol.**

1. *Members* (:func:`uqkit.nn.members.num_members`): a member model (``DeepEnsemble``, ``MIMO``, a model
   converted with ``BatchEnsembleConfig`` / ``Rank1Config``, or any module with an int attribute
   ``uqkit_num_members = M``) tiles its ``[B, ...]`` inputs itself and returns ``[M * B, C]`` outputs,
   member-major (row ``m * B + b``); :func:`predict` unfolds them into ``[M, B, C]``.
2. *Sampling layers* (:class:`uqkit.nn.StochasticModule` whose ``samples`` is true: Flipout, Gaussian, MC
   dropout, rank-1 factors): each forward pass draws fresh noise. When every sampling layer draws its noise
   independently (or, for Flipout, uncorrelatedly) per example (``per_example_noise``), ``k`` samples of a
   batch are computed in one forward pass over the batch repeated ``k`` times, ``[k * B, ...]``, cheaper than
   ``k`` calls of ``[B, ...]`` (larger matrix products; the per-call overhead and Flipout's draw of
   ``Delta W`` paid once). Each sample of each example has exactly the law of the posterior predictive.
   Samples are independent for local reparameterisation and dropout; Flipout's copies share one
   ``Delta W`` per layer and draw independent sign vectors (Wen et al. 2018, Sec. 3.1): pairwise
   uncorrelated at every pre-activation, not independent, so averages of nonlinear functions vary somewhat
   more from call to call than with ``k`` independent passes (``samples_per_pass=1`` gives those). Layers
   that share one weight sample across the batch (plain reparameterisation: ``ReparameterizationLinear``
   without local reparameterisation, ``ReparameterizationConv*``, ``ReparameterizationLSTM``) get one forward
   pass per sample.
3. *Predictive heads* (:class:`PredictiveHead`, e.g. :class:`uqkit.nn.RandomFeatureGP` inside
   :class:`uqkit.SNGP`): the output layer whose logits are the model's output and that knows their
   predictive distribution. During the forward pass it records what it needs (the GP's logit variances);
   afterwards it turns the logits it returned into ``S`` Monte Carlo samples or one mean-field logit, so
   the backbone runs once whatever ``S``.
4. *Outputs*: the model may return a tensor of logits, an object with a ``.logits`` tensor (Hugging Face
   ``ModelOutput``), a dict with ``"logits"``, a Gaussian (a dict with ``"mean"`` and ``"variance"``, or an
   object with ``.mean`` and ``.variance`` tensors such as ``torch.distributions.Normal``; it gives a
   :class:`~uqkit.GaussianPrediction`), or a tuple or list whose first element is the logits. ``output=``
   takes a callable that maps anything else to one of these.

5. *Own predictive* (:data:`PREDICT_METHOD`, e.g. :class:`uqkit.LastLayerLaplace`): a module with a method
   ``uqkit_predict(*inputs, num_samples=..., output=..., batch_dim=..., samples_per_pass=..., mean_field=...,
   **kwargs)`` makes its prediction itself; :func:`predict` hands the call over unchanged (the options keep
   their meaning; that method validates them).

A heteroscedastic head (:class:`uqkit.nn.HeteroscedasticHead`) needs nothing: its forward pass returns the
log of its Monte Carlo predictive, label noise averaged into one distribution, so the model is a
deterministic one (``S = 1``, all uncertainty aleatoric) unless other sampling layers make it stochastic.

**Default number of samples** (``num_samples=None``), in this order:

* the model's int attribute ``uqkit_num_samples`` (:data:`NUM_SAMPLES_ATTRIBUTE`), when set: your setting;
* a model with a predictive head: ``M`` times the head's ``default_num_samples`` (SNGP's ``num_samples``);
  when that is ``None``, the mean-field prediction (``S = M``);
* a member model: ``M`` (one pass; with sampling layers inside the members, one sample of each member, the
  cheapest stratified estimate of the mixture);
* a model with sampling layers: :data:`DEFAULT_NUM_SAMPLES` (8);
* a deterministic model: 1.

**Row layout.** ``S = M * k``: sample ``p`` of member ``m`` is row ``m * k + p`` (member-major: the first
``k`` rows are member 0). With sampling layers inside members the inputs are repeated ``k`` times along the
batch (``[k * B, ...]``, copy-major) before the member model tiles them, so its output rows come as
``m * (k * B) + p * B + b``.

The copies are stacked along ``batch_dim``, so every Flipout layer must draw its signs along the dimension
that carries them in its own input (``FlipoutLinear(batch_dim=...)``, ``FlipoutLSTM``'s ``batch_first``);
the layers check it during the call (:func:`uqkit.nn.flipout.check_example_dims`) and raise instead of
returning samples that share one perturbation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, ExitStack
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from uqkit._validation import check_float_tensor, check_positive_int
from uqkit.nn import StochasticModule
from uqkit.nn.flipout import check_example_dims
from uqkit.nn.members import num_members
from uqkit.nn.modes import evaluation_mode
from uqkit.prediction import GaussianPrediction, Prediction

__all__ = [
    "DEFAULT_NUM_SAMPLES",
    "NUM_SAMPLES_ATTRIBUTE",
    "PREDICT_METHOD",
    "PredictiveHead",
    "predict",
    "read_output",
]

DEFAULT_NUM_SAMPLES = 8
"""Samples drawn from a model with sampling layers when neither the call nor the model says how many."""

NUM_SAMPLES_ATTRIBUTE = "uqkit_num_samples"
"""Name of the optional int attribute of a model that sets its default ``num_samples`` for :func:`predict`."""

PREDICT_METHOD = "uqkit_predict"
"""Name of the method through which a module makes its own prediction (protocol item 5)."""


@runtime_checkable
class PredictiveHead(Protocol):
    """An output layer that turns the logits it returned into their predictive distribution.

    Implemented by :class:`uqkit.nn.RandomFeatureGP`. The head's output must be the model's logits (a head
    whose logits are transformed afterwards is refused by the implementation).

    Attributes:
        default_num_samples: the number of Monte Carlo samples :func:`predict` draws by default; ``None``
            for the mean-field prediction.
    """

    default_num_samples: int | None

    def record_predictive(self) -> AbstractContextManager[None]:
        """Within the block, the head keeps what it needs from its forward passes (e.g. logit variances)."""
        ...

    def predictive_logits(self, logits: torch.Tensor, num_samples: int | None) -> torch.Tensor:
        """``[S, *logits.shape]`` samples of the logits the head returned last (while recording), or, for
        ``num_samples=None``, ``[1, *logits.shape]`` mean-field logits."""
        ...


def _repeat_along(x: torch.Tensor, copies: int, dim: int) -> torch.Tensor:
    if copies == 1:
        return x
    repeats = [1] * x.ndim
    repeats[dim] = copies
    return x.repeat(*repeats)  # copy-major: [x, x, ..., x] along dim


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, Mapping):
        return f"a {type(value).__name__} with keys {list(value)[:8]}"
    if isinstance(value, (tuple, list)):
        kinds = ", ".join(type(v).__name__ for v in value[:4])
        return f"a {type(value).__name__} of {len(value)} ({kinds}{', ...' if len(value) > 4 else ''})"
    return f"a {type(value).__name__}"


def _gaussian(value: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(mean, variance)`` of a Gaussian output (dict or object with ``mean`` and ``variance`` tensors)."""
    if isinstance(value, torch.Tensor):
        return None
    if isinstance(value, Mapping):
        mean, variance = value.get("mean"), value.get("variance")
    else:
        mean, variance = getattr(value, "mean", None), getattr(value, "variance", None)
    if isinstance(mean, torch.Tensor) and isinstance(variance, torch.Tensor):
        return mean, variance
    return None


def read_output(value: Any, output: Callable[[Any], Any] | None) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """The logits tensor, or the ``(mean, variance)`` pair, of one model output, read as :func:`predict` reads
    it (also used by :class:`uqkit.LastLayerLaplace` and :func:`uqkit.distill_predictive`).

    Args:
        value: the model's output: a tensor of logits, a Gaussian (a dict or an object with ``mean`` and
            ``variance`` tensors), an object or dict with a ``logits`` tensor, or a tuple or list whose first
            element is the logits.
        output: ``None``, or a callable applied to ``value`` first that returns one of those forms.

    Raises:
        TypeError: when the output is none of those forms.
    """
    if output is not None:
        value = output(value)
    if isinstance(value, torch.Tensor):
        return value
    gaussian = _gaussian(value)
    if gaussian is not None:
        return gaussian
    logits = value.get("logits") if isinstance(value, Mapping) else getattr(value, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    what = "output(...) returned" if output is not None else "the model returned"
    raise TypeError(
        f"model output: expected logits as a tensor, an object with a .logits tensor, a dict with 'logits', "
        f"a tuple whose first element is the logits, or a Gaussian (mean and variance, as a dict or "
        f"attributes); {what} {_describe(value)}. Pass output=callable mapping it to the logits"
    )


def _batch_size(inputs: tuple[Any, ...], kwargs: dict[str, Any], batch_dim: int) -> tuple[int, int]:
    """``(B, batch_dim)`` from the first tensor input (positional first), ``batch_dim`` made non-negative."""
    first = next((v for v in (*inputs, *kwargs.values()) if isinstance(v, torch.Tensor)), None)
    if first is None:
        got = ", ".join(
            [type(v).__name__ for v in inputs] + [f"{k}={type(v).__name__}" for k, v in kwargs.items()]
        )
        raise TypeError(f"inputs: expected at least one torch.Tensor input, got ({got})")
    if (
        isinstance(batch_dim, bool)
        or not isinstance(batch_dim, int)
        or not -first.ndim <= batch_dim < first.ndim
    ):
        raise ValueError(
            f"batch_dim: expected an int in [{-first.ndim}, {first.ndim - 1}] (the first tensor input has "
            f"shape {tuple(first.shape)}), got {batch_dim!r}"
        )
    batch_dim %= first.ndim
    return int(first.shape[batch_dim]), batch_dim


def _repeat_inputs(
    inputs: tuple[Any, ...], kwargs: dict[str, Any], copies: int, batch: int, batch_dim: int
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Repeat every batch-shaped tensor input (size ``batch`` along ``batch_dim``) ``copies`` times."""

    def repeat(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.ndim > batch_dim and value.shape[batch_dim] == batch:
            return _repeat_along(value, copies, batch_dim)
        return value

    return tuple(repeat(v) for v in inputs), {k: repeat(v) for k, v in kwargs.items()}


def _default_num_samples(
    model: nn.Module, members: int, head: PredictiveHead | None, sampling: bool
) -> tuple[int, bool]:
    """``(S, mean_field)`` when the call gives no ``num_samples`` (see the module docstring)."""
    setting = getattr(model, NUM_SAMPLES_ATTRIBUTE, None)
    if setting is not None:
        return check_positive_int(setting, f"model.{NUM_SAMPLES_ATTRIBUTE}"), False
    if head is not None:
        per_member = head.default_num_samples
        return members * (1 if per_member is None else per_member), per_member is None
    if members > 1:
        return members, False
    return (DEFAULT_NUM_SAMPLES if sampling else 1), False


def _find_head(model: nn.Module) -> tuple[str, PredictiveHead] | None:
    heads = [(name, m) for name, m in model.named_modules() if isinstance(m, PredictiveHead)]
    if len(heads) > 1:
        names = ", ".join(repr(name) for name, _ in heads)
        raise ValueError(
            f"model: expected at most one predictive head (RandomFeatureGP), got {len(heads)}: {names}"
        )
    return heads[0] if heads else None


def predict(
    model: nn.Module,
    *inputs: Any,
    num_samples: int | None = None,
    output: Callable[[Any], Any] | None = None,
    batch_dim: int = 0,
    samples_per_pass: int | None = None,
    mean_field: bool | None = None,
    **kwargs: Any,
) -> Prediction | GaussianPrediction:
    """Predict with uncertainty: ``S`` samples or members of ``model(*inputs, **kwargs)``.

    The model runs in eval mode (batch-norm uses its running statistics; ``nn.Dropout`` is off) and under
    ``torch.no_grad()``; the stochastic layers of :mod:`uqkit.nn` sample in eval mode too. Each module's
    training flag is restored afterwards. See the module docstring for how each family is recognised.

    Args:
        model: any ``nn.Module``: a deterministic network, one with sampling layers (after
            :func:`uqkit.bayesianize_` with ``FlipoutConfig`` / ``ReparameterizationConfig``, or with
            :class:`uqkit.nn.MCDropout`), a member model (``uqkit_num_members = M``), an :class:`uqkit.SNGP`
            or another model with a :class:`PredictiveHead`, or a Gaussian-head regressor.
        *inputs: positional inputs of ``model``.
        num_samples: ``S``. ``None`` (default): what the model needs (module docstring: the model's
            ``uqkit_num_samples``; ``M`` for a member model; the head's setting for SNGP; 8 for a model with
            sampling layers; 1 for a deterministic one). For a member model a multiple of ``M``.
        output: optional callable applied to each model output, returning the logits (or a Gaussian, as a
            dict with ``"mean"`` and ``"variance"``) when the output is none of the forms the module
            docstring lists.
        batch_dim: the dimension of the inputs that indexes examples (e.g. 1 for a time-major LSTM input);
            ``B`` is the size of the first tensor input along it, and every tensor input of that size there
            is repeated for the Monte Carlo copies (others, e.g. a shared mask, pass unchanged). Flipout
            layers must draw their signs along the same examples (``FlipoutConfig(batch_dim=1)``); a layer
            that does not raises a ``ValueError``.
        samples_per_pass: how many samples (per member) to compute in one forward pass over the repeated
            batch (memory grows with it). Default: all of them when every sampling layer has per-example
            noise, else 1. Values above 1 are refused for models with a shared-sample layer.
        mean_field: for a model with a predictive head (SNGP): ``True`` for the mean-field logits
            ``logits / sqrt(1 + lambda var)`` (``S = M``), ``False`` for Monte Carlo samples (``num_samples``
            of them, by default the head's setting, or ``8 M`` where that is mean-field), ``None``
            (default): Monte Carlo when ``num_samples`` is given, else the head's setting. Must be ``None``
            for other models.
        **kwargs: keyword inputs of ``model`` (e.g. ``input_ids=..., attention_mask=...``); batch-shaped
            tensors among them are repeated like the positional ones. The names of :func:`predict`'s own
            options above are not passed on: a model input with such a name must be given positionally.

    Returns:
        :class:`uqkit.Prediction` with ``[S, B, C]`` logits, or :class:`uqkit.GaussianPrediction` with
        ``[S, B, D]`` means and variances; sample ``p`` of member ``m`` is row ``m * k + p``, ``k = S / M``.

    Raises:
        TypeError: for a ``model`` that is not an ``nn.Module``, no tensor input, or an output that is none
            of the accepted forms.
        ValueError: for bad ``num_samples``, ``batch_dim``, ``samples_per_pass`` or ``mean_field``, for
            ``num_samples > M`` with no sampling layer (every sample would be the same), a ``num_samples``
            that is not a multiple of ``M``, batched samples with a shared-sample layer, a sampling Flipout
            layer whose example dimension does not hold the repeated examples, or model outputs that are
            not ``[rows, C]`` with the expected number of rows.

    Example:
        >>> pred = uqkit.predict(model, x, num_samples=32)
        >>> pred.probs, pred.mutual_information
        >>> uqkit.predict(hf_model, input_ids=ids, attention_mask=mask)  # .logits read from the output
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    own_predict = getattr(model, PREDICT_METHOD, None)
    if callable(own_predict):
        options = {"output": output, "batch_dim": batch_dim, "samples_per_pass": samples_per_pass}
        return own_predict(*inputs, num_samples=num_samples, mean_field=mean_field, **options, **kwargs)
    if output is not None and not callable(output):
        raise TypeError(
            f"output: expected a callable mapping the model output to logits, got {_describe(output)}"
        )
    if mean_field is not None and not isinstance(mean_field, bool):
        raise TypeError(f"mean_field: expected None, True or False, got {mean_field!r}")
    for index, value in enumerate(inputs):
        if isinstance(value, int) and not isinstance(value, bool):
            raise TypeError(
                f"inputs[{index}]: got the int {value}; num_samples is keyword-only "
                f"(uqkit.predict(model, x, num_samples={value})); pass an int model input by keyword"
            )
    batch, batch_dim = _batch_size(inputs, kwargs, batch_dim)
    members = num_members(model)
    found = _find_head(model)
    head_name, head = found if found is not None else ("", None)
    sampling = [(n, m) for n, m in model.named_modules() if isinstance(m, StochasticModule) and m.samples]

    if head is None and mean_field is not None:
        raise ValueError(
            "mean_field: expected None for a model without a predictive head (RandomFeatureGP), got "
            f"{mean_field}"
        )
    if head is not None and sampling:
        names = ", ".join(n or type(m).__name__ for n, m in sampling)
        raise ValueError(
            f"model: a predictive head ({type(head).__name__} {head_name!r}) together with sampling layers "
            f"({names}) is not supported; wrap them in use_posterior_mean or drop one of them"
        )
    if num_samples is None and mean_field and head is not None:
        num_samples = members  # one mean-field logit per member, whatever the model's default
    elif num_samples is None:
        num_samples, default_mean_field = _default_num_samples(model, members, head, bool(sampling))
        if mean_field is None:
            mean_field = default_mean_field
        elif default_mean_field:  # mean_field=False on a head whose default is mean-field
            num_samples = members * DEFAULT_NUM_SAMPLES
    num_samples = check_positive_int(num_samples, "num_samples")
    if num_samples % members:
        raise ValueError(
            f"num_samples: expected a multiple of the model's M = {members} members (each forward pass gives "
            f"one sample per member), got {num_samples}"
        )
    per_member = num_samples // members

    head_samples, passes = 1, per_member
    if head is not None:
        passes = 1
        if mean_field:
            if per_member != 1:
                raise ValueError(
                    f"num_samples: expected {members} (one mean-field logit per member) with "
                    f"mean_field=True, got {num_samples}"
                )
        else:
            head_samples = per_member
    elif per_member > 1 and not sampling:
        if members > 1:
            raise ValueError(
                f"num_samples: expected {members} (one per member) for a member model with no sampling "
                f"layer, got {num_samples}; every member's samples would be identical"
            )
        raise ValueError(
            f"num_samples: expected 1 for a model with no sampling layer, got {num_samples}; every sample "
            "would be identical (convert the model with uqkit.bayesianize_, add uqkit.nn.MCDropout, or leave "
            "uqkit.nn.use_posterior_mean)"
        )
    shared = [n or type(m).__name__ for n, m in sampling if not m.per_example_noise]
    if samples_per_pass is None:
        samples_per_pass = 1 if shared else passes
    samples_per_pass = min(check_positive_int(samples_per_pass, "samples_per_pass"), passes)
    if shared and samples_per_pass > 1:
        raise ValueError(
            f"samples_per_pass: expected 1 because {', '.join(shared)} share(s) one weight sample across the "
            f"batch, so repeated copies would get identical samples; got {samples_per_pass}"
        )

    means: list[torch.Tensor] = []
    variances: list[torch.Tensor] = []
    with evaluation_mode(model), torch.no_grad(), check_example_dims(model) as expect_examples:
        done = 0
        while done < passes:
            copies = min(samples_per_pass, passes - done)
            # each Flipout layer must draw its signs along these copies * batch examples (members of a
            # member model ride in the same dimension)
            expect_examples(
                {copies * batch, members * copies * batch},
                f"predict(..., batch_dim={batch_dim}): {copies} sample(s) x a batch of {batch}",
            )
            args, kw = _repeat_inputs(inputs, kwargs, copies, batch, batch_dim)
            with ExitStack() as stack:
                if head is not None:
                    stack.enter_context(head.record_predictive())
                result = read_output(model(*args, **kw), output)
                if isinstance(result, tuple):  # Gaussian (mean, variance)
                    if head is not None:
                        raise TypeError(
                            "model output: expected the logits of the predictive head, got a Gaussian"
                        )
                    for values, name, parts in zip(
                        result, ("mean", "variance"), (means, variances), strict=True
                    ):
                        check_float_tensor(
                            values, f"model output {name}", 2, "[batch, outputs]", finite=False
                        )
                        _check_rows(values, members, copies, batch, batch_dim)
                        parts.append(_member_major(values.unsqueeze(0), members, copies, batch))
                else:
                    check_float_tensor(result, "model output", 2, "[batch, classes] logits", finite=False)
                    _check_rows(result, members, copies, batch, batch_dim)
                    if head is not None:
                        result = head.predictive_logits(result, None if mean_field else head_samples)
                    else:
                        result = result.unsqueeze(0)
                    means.append(_member_major(result, members, copies, batch))
            done += copies
    mean = torch.cat(means, dim=1).flatten(0, 1)
    if variances:
        return GaussianPrediction(mean, torch.cat(variances, dim=1).flatten(0, 1))
    return Prediction(mean)


def _check_rows(values: torch.Tensor, members: int, copies: int, batch: int, batch_dim: int) -> None:
    rows = members * copies * batch
    if values.ndim >= 1 and values.shape[0] == rows:
        return
    layout = f"{copies} sample(s) of a batch of {batch}" + (
        f" for each of {members} members" if members > 1 else ""
    )
    raise ValueError(
        f"model output: expected {rows} rows ({layout}), got shape {tuple(values.shape)}; is "
        f"batch_dim={batch_dim} right?"
    )


def _member_major(samples: torch.Tensor, members: int, copies: int, batch: int) -> torch.Tensor:
    """``[h, M * copies * B, ...]`` (rows ``m * copies * B + p * B + b``) -> ``[M, copies * h, B, ...]``."""
    h = samples.shape[0]
    grid = samples.reshape(h, members, copies, batch, *samples.shape[2:])
    return grid.movedim(0, 2).reshape(members, copies * h, batch, *samples.shape[2:])
