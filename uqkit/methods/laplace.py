"""Last-layer Laplace approximation of a trained network: :class:`LastLayerLaplace`.

The network is trained as usual; afterwards only its last linear layer ``f = W phi(x) + b`` is treated as
Bayesian (MacKay 1992, "A practical Bayesian framework for backpropagation networks"; Kristiadi et al.
2020; Daxberger et al. 2021, "Laplace Redux"). With the prior ``theta ~ N(0, I / delta)`` on its weights
``theta = [W | b]`` the posterior is approximated by ``N(theta_MAP, P^-1)`` with the posterior precision

    P = H + delta I,    H = sum_i J_i^T Lambda_i J_i = sum_i Lambda_i (x) phi~_i phi~_i^T

the generalized Gauss-Newton (GGN) of the negative log-likelihood at the trained weights (``phi~ = [phi, 1]``
when the layer has a bias; ``Lambda_i = diag(p_i) - p_i p_i^T`` for the softmax, ``I / sigma^2`` for a
Gaussian likelihood). ``hessian`` picks its structure (:mod:`uqkit.methods.laplace_curvature`): ``"full"``
(exact), ``"kron"`` (Kronecker-factored, Ritter et al. 2018, as laplace-torch's ``KronLLLaplace``) or
``"diag"``.

**Prior precision.** ``"marglik"`` (default) maximises the Laplace approximation of the log evidence
(MacKay 1992; Immer et al. 2021, "Scalable marginal likelihood estimation for model selection in deep
learning"; laplace-torch's ``optimize_prior_precision(method="marglik")``)

    log p(D | delta) ~ log p(D | theta_MAP) - 1/2 [ log det P - P_n log delta + delta ||theta_MAP||^2 ]

(``P_n`` parameters). With ``lambda_j`` the eigenvalues of ``H`` (of the chosen structure) its derivative in
``t = log delta`` is ``-1/2 (delta ||theta||^2 - sum_j lambda_j / (lambda_j + delta))``, the difference of
an increasing and a decreasing function of ``t``: the evidence has a single maximum, at MacKay's fixed point
``delta = gamma / ||theta||^2`` with ``gamma = sum_j lambda_j / (lambda_j + delta)`` the effective number of
parameters. It is found by bisection in ``t`` to machine precision (laplace-torch runs 100 Adam steps).
``"val_nll"`` picks the value of a grid with the smallest negative log-likelihood of the predictive on
validation data; a number fixes it.

**Predictive** (the GLM predictive of Immer et al. 2021, "Improving predictions of Bayesian neural nets via
local linearization"): the outputs are linear in ``theta``, so ``f(x) ~ N(f_MAP(x), J Sigma J^T)`` with
``Sigma = P^-1``, ``J = I_C (x) phi~^T``.

* classification, ``num_samples=None``: the probit approximation (Spiegelhalter & Lauritzen 1990; MacKay
  1992), ``p = softmax(f / sqrt(1 + pi / 8 * diag(J Sigma J^T)))``. It is deterministic, so it comes as a
  :class:`~uqkit.Prediction` with ``S = 1`` whose logits are these log-probabilities: ``probs`` and the total
  uncertainty are the predictive's; ``epistemic`` is 0 (a single distribution cannot split it).
* classification, ``num_samples=S``: Monte Carlo, ``S`` samples of the logits from ``N(f, J Sigma J^T)``:
  ``[S, B, C]``, whose mean softmax, aleatoric and epistemic parts are the usual ones.
* regression: :class:`~uqkit.GaussianPrediction` with the mean ``f_MAP(x)`` and the predictive variance
  ``diag(J Sigma J^T) + sigma^2`` (``S = 1``); with ``num_samples=S``, ``S`` sampled means of variance
  ``sigma^2`` each, so that ``epistemic`` is the model's variance and ``aleatoric`` the noise.

A :class:`uqkit.DeepEnsemble` gets one Laplace approximation per member (its own GGN and prior precision;
the members travel folded into the batch): predictions are ``[M * S, B, C]``, member-major (``S = 1`` per
member for the probit).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from uqkit._validation import check_choice, check_labels, check_positive_float, check_positive_int
from uqkit.methods.laplace_curvature import STRUCTURES, LastLayerCurvature
from uqkit.methods.prediction_protocol import read_output
from uqkit.nn.modes import evaluation_mode
from uqkit.nn.stacked import StackedLinear
from uqkit.prediction import GaussianPrediction, Prediction

__all__ = ["DEFAULT_MC_SAMPLES", "DEFAULT_MEMORY_BUDGET", "DEFAULT_PRIOR_GRID", "LastLayerLaplace"]

DEFAULT_MC_SAMPLES = 100
"""Monte Carlo samples per member when ``mean_field=False`` is asked for without ``num_samples``."""

DEFAULT_MEMORY_BUDGET = 1 << 30
"""Bytes a Hessian structure may take (1 GiB) unless ``memory_budget`` says otherwise."""

DEFAULT_PRIOR_GRID = tuple(10.0 ** (-4 + 8 * i / 99) for i in range(100))
"""Prior precisions tried by ``"val_nll"``: 100 values log-spaced from 1e-4 to 1e4 (laplace-torch's grid)."""

_LINEAR = (nn.Linear, StackedLinear)
_PRIOR_METHODS = ("marglik", "val_nll")


def _format_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    return f"{type(value).__name__} {value!r}"[:200]


@contextlib.contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode (:func:`uqkit.nn.modes.evaluation_mode`) and no gradients inside."""
    with evaluation_mode(model), torch.no_grad():
        yield


def _find_last_layer(model: nn.Module, name: str | None) -> tuple[str, nn.Module]:
    linear = [n for n, m in model.named_modules() if isinstance(m, _LINEAR)]
    listing = ", ".join(repr(n) for n in linear[-8:]) or "none"
    if name is not None:
        if not isinstance(name, str):
            raise TypeError(f"last_layer: expected None or a module name (str), got {_describe(name)}")
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            raise ValueError(
                f"last_layer: the model has no module {name!r} (its nn.Linear layers: {listing})"
            ) from None
        if not isinstance(layer, _LINEAR):
            raise ValueError(
                f"last_layer: expected an nn.Linear, but {name!r} is a {type(layer).__name__} (the model's "
                f"nn.Linear layers: {listing})"
            )
        return name, layer
    last_name, last = list(model.named_modules())[-1]
    if not isinstance(last, _LINEAR):
        raise ValueError(
            f"model: expected its last module to be an nn.Linear (the output layer), but {last_name!r} is a "
            f"{type(last).__name__}; name the output layer with last_layer=... (nn.Linear layers: {listing})"
        )
    return last_name, last


def _tensor_rows(inputs: torch.Tensor | Mapping[str, Any], name: str) -> int:
    if isinstance(inputs, torch.Tensor):
        if inputs.ndim == 0:
            raise ValueError(f"{name}: expected a batch of inputs [N, ...], got a 0-d tensor")
        return int(inputs.shape[0])
    rows = {key: int(v.shape[0]) for key, v in inputs.items() if isinstance(v, torch.Tensor) and v.ndim}
    if not rows:
        raise TypeError(f"{name}: expected tensors among the keyword inputs, got keys {list(inputs)[:8]}")
    if len(set(rows.values())) > 1:
        raise ValueError(f"{name}: expected the same number of rows in every input tensor, got {rows}")
    return next(iter(rows.values()))


def _slice_inputs(inputs: torch.Tensor | Mapping[str, Any], part: slice, rows: int):
    if isinstance(inputs, torch.Tensor):
        return inputs[part]
    return {
        key: (v[part] if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == rows else v)
        for key, v in inputs.items()
    }


def _batches(
    data: Any, targets: torch.Tensor | None, batch_size: int, name: str
) -> Iterator[tuple[torch.Tensor | Mapping[str, Any], torch.Tensor]]:
    """``(inputs, targets)`` batches of a DataLoader (or any iterable of pairs) or of tensors cut in chunks.

    ``inputs`` is a tensor (the model is called ``model(x)``) or a mapping of keyword inputs
    (``model(**inputs)``, e.g. ``input_ids`` and ``attention_mask``).
    """
    if isinstance(data, (torch.Tensor, Mapping)):
        if not isinstance(targets, torch.Tensor):
            raise TypeError(
                f"{name}_targets: expected the targets tensor of the {name} inputs ({name}=x, "
                f"{name}_targets=y, or a DataLoader of (x, y)), got {_describe(targets)}"
            )
        rows = _tensor_rows(data, name)
        if targets.ndim == 0 or targets.shape[0] != rows:
            raise ValueError(
                f"{name}_targets: expected {rows} rows (one per input), got shape {tuple(targets.shape)}"
            )
        for start in range(0, rows, batch_size):
            part = slice(start, min(start + batch_size, rows))
            yield _slice_inputs(data, part, rows), targets[part]
        return
    if targets is not None:
        raise ValueError(
            f"{name}_targets: expected None when {name} is a DataLoader (its batches carry the targets), got "
            f"{_describe(targets)}"
        )
    if not isinstance(data, Iterable):
        raise TypeError(
            f"{name}: expected a DataLoader (or another iterable of (inputs, targets) batches), a tensor "
            f"or a dict of input tensors, got {_describe(data)}"
        )
    for index, batch in enumerate(data):
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise ValueError(
                f"{name}: expected batches of (inputs, targets), batch {index} is {_describe(batch)}"
            )
        inputs, batch_targets = batch
        if not isinstance(inputs, (torch.Tensor, Mapping)) or not isinstance(batch_targets, torch.Tensor):
            raise TypeError(
                f"{name}: expected batches of (inputs tensor or dict of tensors, targets tensor), batch "
                f"{index} holds ({type(inputs).__name__}, {type(batch_targets).__name__})"
            )
        yield inputs, batch_targets


def _covariance_factor(covariance: torch.Tensor) -> torch.Tensor:
    """``L`` with ``L L^T = covariance`` (Cholesky; a symmetric square root where that fails)."""
    factor, info = torch.linalg.cholesky_ex(covariance)
    failed = info != 0
    if bool(failed.any()):  # singular (e.g. zero features and no bias): eigen-decomposition, clamped at 0
        values, vectors = torch.linalg.eigh(covariance[failed])
        factor[failed] = vectors * values.clamp_min(0).sqrt()[..., None, :]
    return factor


def _marglik_precision(eigenvalues: torch.Tensor, multiplicity: int, norm: torch.Tensor) -> torch.Tensor:
    """``[M]`` prior precisions maximising the Laplace evidence (module docstring), in float64.

    In ``t = log delta`` the evidence's derivative has the sign of ``gamma(t) - e^t ||theta||^2`` with
    ``gamma(t) = r sum_j lambda_j / (lambda_j + e^t)`` decreasing: at ``e^t = min(lambda_max, 1 / (2
    ||theta||^2))`` it is ``>= 0`` (``gamma >= r / 2``), at ``e^t = P_n / ||theta||^2`` it is ``< 0``
    (``gamma < P_n``). Bisection between them.
    """
    values = eigenvalues.double()
    norm = norm.double()
    params = multiplicity * values.shape[1]
    top = values.amax(dim=1)
    if bool((top <= 0).any()):
        raise ValueError(
            "prior_precision='marglik': the GGN of the last layer is zero for member(s) "
            f"{torch.nonzero(top <= 0).flatten().tolist()} (no curvature in the data: all features zero?); "
            "the evidence has no maximum. Give a prior_precision number"
        )
    if bool((norm <= 0).any()):
        raise ValueError(
            "prior_precision='marglik': the last layer's weights are all zero, so the evidence grows without "
            "bound with the prior precision. Give a prior_precision number"
        )
    low = torch.minimum(top.log(), (0.5 / norm).log())
    high = (params / norm).log()
    for _ in range(200):
        middle = (low + high) / 2
        delta = middle.exp()
        gamma = multiplicity * (values / (values + delta[:, None])).sum(dim=1)
        rising = gamma > delta * norm
        low = torch.where(rising, middle, low)
        high = torch.where(rising, high, middle)
    return ((low + high) / 2).exp()


class LastLayerLaplace(nn.Module):
    """Laplace approximation of the last linear layer of a trained network (see the module docstring).

    Args:
        model: a trained ``nn.Module`` whose output is the output of its last ``nn.Linear`` (logits, or the
            regression mean): the last module in ``model.named_modules()``, or the one named by
            ``last_layer``. A :class:`uqkit.DeepEnsemble` (its stacked last layer) gets one approximation
            per member. The model is used as it is (not copied); change it after :meth:`fit` and the
            posterior no longer matches.
        likelihood: ``"classification"`` (softmax, integer class targets ``[N]``) or ``"regression"``
            (Gaussian, float targets ``[N, K]``, or ``[N]`` for ``K = 1``).
        hessian: the structure of the GGN: ``"full"`` (exact; ``(C F)^2`` entries, ``F`` = features + 1 for
            the bias), ``"kron"`` (Kronecker-factored, ``C^2 + D^2``), ``"diag"`` (``C F``). For regression
            the exact GGN is ``I_K (x) G / sigma^2``, so ``"full"`` keeps only ``G`` (``F^2``).
        prior_precision: ``"marglik"`` (default: maximise the Laplace evidence), ``"val_nll"`` (the grid
            value with the smallest validation NLL; :meth:`fit` needs ``val``), or a positive number.
        sigma: regression only: the standard deviation of the Gaussian observation noise. ``None``
            (default): its maximum-likelihood value at the trained weights, the root mean squared training
            residual (per member); it underestimates the noise of a network that fits its training data
            closely, so pass a value estimated on held-out data where one exists.
        last_layer: the qualified name of the output layer (``"head.fc"``), when it is not the last module.
        memory_budget: bytes the chosen structure may take (default 1 GiB); a structure that would need more
            is refused here, before anything is allocated, with its size and the cheaper structures'.

    Attributes (after :meth:`fit`):
        prior_precision: ``[M]`` the prior precision of each member (``M = 1`` for a plain model).
        sigma: ``[M]`` the observation noise (regression), else ``None``.
        curvature: the GGN (:class:`uqkit.methods.laplace_curvature.LastLayerCurvature`).

    Raises:
        TypeError, ValueError: for bad arguments, a model without a suitable last layer, or a structure over
            ``memory_budget``.

    Example:
        >>> la = uqkit.LastLayerLaplace(model, "classification", "kron").fit(train_loader)
        >>> prediction = uqkit.predict(la, x_test)          # probit: [1, B, C]
        >>> samples = uqkit.predict(la, x_test, num_samples=64)  # Monte Carlo: [64, B, C]
    """

    def __init__(
        self,
        model: nn.Module,
        likelihood: str = "classification",
        hessian: str = "kron",
        *,
        prior_precision: str | float = "marglik",
        sigma: float | None = None,
        last_layer: str | None = None,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {_describe(model)}")
        self.likelihood = check_choice(likelihood, "likelihood", ("classification", "regression"))
        self.hessian = check_choice(hessian, "hessian", tuple(STRUCTURES))
        if isinstance(prior_precision, str):
            if prior_precision not in _PRIOR_METHODS:
                raise ValueError(
                    "prior_precision: expected 'marglik', 'val_nll' or a positive number, got "
                    f"{prior_precision!r}"
                )
            self.prior_method, self._fixed_precision = prior_precision, None
        else:
            self.prior_method = "fixed"
            self._fixed_precision = check_positive_float(prior_precision, "prior_precision")
        if sigma is not None:
            if likelihood == "classification":
                raise ValueError(f"sigma: expected None for likelihood='classification', got {sigma!r}")
            sigma = check_positive_float(sigma, "sigma")
        self._sigma_argument = sigma
        self.memory_budget = check_positive_int(memory_budget, "memory_budget")
        self.model = model
        self.last_layer_name, layer = _find_last_layer(model, last_layer)
        self.num_members = layer.num_members if isinstance(layer, StackedLinear) else 1
        self.num_outputs, self.num_features = layer.out_features, layer.in_features
        self.has_bias = layer.bias is not None
        self._check_budget(layer.weight.dtype.itemsize)
        self.curvature: LastLayerCurvature | None = None
        for name in ("prior_precision", "sigma", "log_likelihood", "map_norm"):
            self.register_buffer(name, None)

    # -- the layer ---------------------------------------------------------------------------------------
    @property
    def layer(self) -> nn.Module:
        """The last linear layer (``nn.Linear``, or the ensemble's ``StackedLinear``)."""
        return self.model.get_submodule(self.last_layer_name)

    def _empty_curvature(self):
        """A zero curvature of this approximation's structure, shape, dtype and device (filled by ``fit``, or
        by a saved posterior's buffers)."""
        return STRUCTURES[self.hessian](
            self.num_members,
            self._curvature_outputs,
            self.num_features,
            self.has_bias,
            dtype=self.layer.weight.dtype,
            device=self.layer.weight.device,
        )

    @property
    def _curvature_outputs(self) -> int:
        """Outputs the GGN couples: ``C`` for the softmax; 1 for the Gaussian (``K`` identical blocks)."""
        return self.num_outputs if self.likelihood == "classification" else 1

    @property
    def _multiplicity(self) -> int:
        return 1 if self.likelihood == "classification" else self.num_outputs

    @property
    def num_parameters(self) -> int:
        """Weights of one member's last layer, ``C (D + 1)`` (``C D`` without a bias)."""
        return self.num_outputs * (self.num_features + int(self.has_bias))

    def _check_budget(self, itemsize: int) -> None:
        def need(structure: str) -> int:
            return STRUCTURES[structure].nbytes(
                self.num_members, self._curvature_outputs, self.num_features, self.has_bias, itemsize
            )

        wanted = need(self.hessian)
        if wanted <= self.memory_budget:
            return
        order = list(STRUCTURES)
        cheaper = [s for s in order[order.index(self.hessian) + 1 :] if need(s) <= self.memory_budget]
        advice = (
            " or ".join(f"hessian={s!r} ({_format_bytes(need(s))})" for s in cheaper)
            if cheaper
            else "no structure fits"
        )
        members = f"{self.num_members} members x " if self.num_members > 1 else ""
        raise ValueError(
            f"hessian={self.hessian!r}: last layer {self.last_layer_name!r} ({members}"
            f"{self.num_parameters:,} weights, {self.num_outputs} outputs x {self.num_features} features) "
            f"needs {_format_bytes(wanted)} for this structure, over "
            f"memory_budget={_format_bytes(self.memory_budget)}; use {advice}, or raise memory_budget"
        )

    def _features(
        self, inputs: tuple[Any, ...], kwargs: dict[str, Any], output: Callable[[Any], Any] | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward pass (call inside :func:`_evaluating`): ``(phi~ [M, B, F], f [M, B, C])``."""
        layer = self.layer
        calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        handle = layer.register_forward_hook(lambda module, args, out: calls.append((args[0], out)))
        try:
            result = self.model(*inputs, **kwargs)
        finally:
            handle.remove()
        name = self.last_layer_name
        if len(calls) != 1:
            raise ValueError(
                f"last layer {name!r}: expected one call per forward pass of the model, got {len(calls)}"
            )
        features, outputs = calls[0]
        value = read_output(result, output)
        if isinstance(value, tuple) or not (value is outputs or torch.equal(value, outputs)):
            raise ValueError(
                f"model output: expected the output of the last layer {name!r} itself (the logits or the "
                "regression mean), but the model returns something else (a softmax or a scale after it, or "
                "a Gaussian head); name the layer whose output the model returns with last_layer=..."
            )
        members = self.num_members
        first = next((v for v in (*inputs, *kwargs.values()) if isinstance(v, torch.Tensor) and v.ndim), None)
        batch = int(first.shape[0]) if first is not None else features.shape[0] // members
        if features.ndim != 2 or features.shape[0] != members * batch:
            raise ValueError(
                f"last layer {name!r}: expected inputs [{'M * ' if members > 1 else ''}B, "
                f"{self.num_features}] (one feature vector per example, B = {batch}), got shape "
                f"{tuple(features.shape)}; layers applied per token or position are not supported"
            )
        dtype = layer.weight.dtype
        features = features.to(dtype).reshape(members, batch, self.num_features)
        outputs = outputs.to(dtype).reshape(members, batch, self.num_outputs)
        if self.has_bias:
            features = torch.cat([features, features.new_ones(members, batch, 1)], dim=2)
        return features, outputs

    def _targets(self, targets: torch.Tensor, batch: int, name: str) -> torch.Tensor:
        if self.likelihood == "classification":
            return check_labels(targets, f"{name}_targets", num_classes=self.num_outputs, length=batch)
        if not targets.is_floating_point():
            raise TypeError(f"{name}_targets: expected float regression targets, got dtype {targets.dtype}")
        if targets.ndim == 1 and self.num_outputs == 1:
            targets = targets[:, None]
        if tuple(targets.shape) != (batch, self.num_outputs):
            raise ValueError(
                f"{name}_targets: expected shape ({batch}, {self.num_outputs}) (one row of "
                f"{self.num_outputs} output(s) per example), got {tuple(targets.shape)}"
            )
        return targets

    # -- fit ---------------------------------------------------------------------------------------------
    def fit(
        self,
        data: Any,
        targets: torch.Tensor | None = None,
        *,
        val: Any = None,
        val_targets: torch.Tensor | None = None,
        batch_size: int = 512,
    ) -> LastLayerLaplace:
        """Accumulate the GGN over the training data, then set the prior precision.

        Args:
            data: a ``DataLoader`` (or any iterable) of ``(inputs, targets)`` batches, or the inputs as one
                tensor (``model(x)``) or a dict of tensors (``model(**inputs)``), then with ``targets``.
            targets: the targets when ``data`` is a tensor or a dict.
            val, val_targets: validation data in the same forms, for ``prior_precision="val_nll"`` only.
            batch_size: rows per forward pass when ``data`` is a tensor or a dict.

        Returns:
            ``self``.

        Raises:
            TypeError, ValueError: for data or targets of the wrong kind or shape, no examples, validation
                data with another prior method (or none with ``"val_nll"``).
        """
        batch_size = check_positive_int(batch_size, "batch_size")
        if self.prior_method == "val_nll" and val is None:
            raise ValueError("val: expected validation data for prior_precision='val_nll', got None")
        if self.prior_method != "val_nll" and val is not None:
            raise ValueError(
                f"val: only used with prior_precision='val_nll' (this approximation uses "
                f"{self.prior_method!r}); call optimize_prior_precision('val_nll', val, ...) instead"
            )
        layer = self.layer
        self.curvature = None
        curvature = self._empty_curvature()
        loss = torch.zeros(self.num_members, dtype=torch.float64, device=layer.weight.device)
        with _evaluating(self.model):
            for inputs, batch_targets in _batches(data, targets, batch_size, "data"):
                args, kwargs = ((inputs,), {}) if isinstance(inputs, torch.Tensor) else ((), dict(inputs))
                features, outputs = self._features(args, kwargs, None)
                batch = outputs.shape[1]
                batch_targets = self._targets(batch_targets.to(outputs.device), batch, "data")
                if self.likelihood == "classification":
                    flat = F.cross_entropy(
                        outputs.flatten(0, 1), batch_targets.repeat(self.num_members), reduction="none"
                    )
                    loss += flat.view(self.num_members, batch).sum(1).double()
                    curvature.accumulate(features, outputs.softmax(dim=-1))
                else:
                    loss += (outputs - batch_targets.to(outputs.dtype)).square().sum((1, 2)).double()
                    curvature.accumulate(features, None)
        count = curvature.num_data
        if count == 0:
            raise ValueError("data: expected at least one example, got none")
        if self.likelihood == "classification":
            self.sigma, self.log_likelihood = None, -loss
            scale = torch.ones(self.num_members, dtype=layer.weight.dtype, device=loss.device)
        else:
            values = count * self.num_outputs
            if self._sigma_argument is None:
                sigma = (loss / values).sqrt()
                if bool((sigma <= 0).any()):
                    raise ValueError(
                        "sigma: the network fits its training targets exactly, so the maximum-likelihood "
                        "noise is 0; pass sigma=..."
                    )
            else:
                sigma = torch.full_like(loss, self._sigma_argument)
            self.sigma = sigma
            self.log_likelihood = (
                -0.5 * loss / sigma.square() - values * (sigma * math.sqrt(2 * math.pi)).log()
            )
            scale = sigma.square().reciprocal().to(layer.weight.dtype)
        curvature.finalize(scale)
        self.curvature = curvature
        weight = layer.weight.detach().reshape(self.num_members, -1).double()
        norm = weight.square().sum(1)
        if self.has_bias:
            norm = norm + layer.bias.detach().reshape(self.num_members, -1).double().square().sum(1)
        self.map_norm = norm
        if self.prior_method == "fixed":
            self.prior_precision = torch.full_like(norm, self._fixed_precision)
        else:
            self.optimize_prior_precision(self.prior_method, val, val_targets, batch_size=batch_size)
        return self

    def _check_fitted(self) -> LastLayerCurvature:
        if self.curvature is None:
            raise RuntimeError("LastLayerLaplace: call fit(...) first")
        return self.curvature

    def _deltas(self, prior_precision: float | torch.Tensor | None) -> torch.Tensor:
        """``[M]`` float64 prior precisions: those given (a number or ``[M]`` values), else the current."""
        if prior_precision is None:
            return self.prior_precision
        if isinstance(prior_precision, torch.Tensor):
            values = prior_precision.detach().double().to(self.map_norm.device).reshape(-1)
            if values.numel() == 1:
                values = values.expand(self.num_members)
            if (
                values.numel() != self.num_members
                or not bool((values > 0).all())
                or not values.isfinite().all()
            ):
                raise ValueError(
                    f"prior_precision: expected a positive number or {self.num_members} positive values (one "
                    f"per member), got {_describe(prior_precision)}"
                )
            return values
        value = check_positive_float(prior_precision, "prior_precision")
        return torch.full_like(self.map_norm, value)

    # -- prior precision ---------------------------------------------------------------------------------
    def log_marginal_likelihood(self, prior_precision: float | torch.Tensor | None = None) -> torch.Tensor:
        """``[M]`` Laplace approximation of the log evidence (module docstring), float64.

        Args:
            prior_precision: a positive number or ``[M]`` values; default: the current ``prior_precision``.
        """
        curvature = self._check_fitted()
        delta = self._deltas(prior_precision)
        values = curvature.eigenvalues().double()
        params = self._multiplicity * values.shape[1]
        log_det = self._multiplicity * (values + delta[:, None]).log().sum(1)
        return self.log_likelihood - 0.5 * (log_det - params * delta.log() + delta * self.map_norm)

    def optimize_prior_precision(
        self,
        method: str = "marglik",
        val: Any = None,
        val_targets: torch.Tensor | None = None,
        *,
        grid: Iterable[float] | None = None,
        batch_size: int = 512,
    ) -> torch.Tensor:
        """Set ``prior_precision`` by the marginal likelihood or by the validation NLL over a grid.

        ``"val_nll"`` evaluates every grid value in one pass over the validation data (the predictive
        variances for all of them at once); the NLL is that of the probit predictive for classification and
        of the Gaussian predictive (variance ``diag(J Sigma J^T) + sigma^2``) for regression. Ties go to the
        smallest value. Each member picks its own.

        Args:
            method: ``"marglik"`` or ``"val_nll"``.
            val, val_targets: validation data (as :meth:`fit` takes data), for ``"val_nll"``.
            grid: prior precisions to try (default :data:`DEFAULT_PRIOR_GRID`).
            batch_size: rows per forward pass when ``val`` is a tensor or a dict.

        Returns:
            The new ``prior_precision`` ``[M]``.
        """
        curvature = self._check_fitted()
        check_choice(method, "method", _PRIOR_METHODS)
        if method == "marglik":
            if val is not None or grid is not None:
                raise ValueError("val, grid: expected None for method='marglik' (the evidence needs no data)")
            self.prior_precision = _marglik_precision(
                curvature.eigenvalues(), self._multiplicity, self.map_norm
            )
            return self.prior_precision
        if val is None:
            raise ValueError("val: expected validation data for method='val_nll', got None")
        values = torch.tensor(DEFAULT_PRIOR_GRID if grid is None else list(grid), dtype=torch.float64)
        if (
            values.ndim != 1
            or values.numel() == 0
            or not bool((values > 0).all() and values.isfinite().all())
        ):
            raise ValueError(f"grid: expected positive finite prior precisions, got {values.tolist()[:8]}")
        values = values.to(self.map_norm.device)
        batch_size = check_positive_int(batch_size, "batch_size")
        dtype = self.layer.weight.dtype
        deltas = values.to(dtype)[None].expand(self.num_members, -1)
        total = torch.zeros(self.num_members, values.numel(), dtype=torch.float64, device=values.device)
        with _evaluating(self.model):
            for inputs, batch_targets in _batches(val, val_targets, batch_size, "val"):
                args, kwargs = ((inputs,), {}) if isinstance(inputs, torch.Tensor) else ((), dict(inputs))
                features, outputs = self._features(args, kwargs, None)
                batch_targets = self._targets(batch_targets.to(outputs.device), outputs.shape[1], "val")
                variance = curvature.variances(features, deltas)  # [M, n, C (or 1), G]
                if self.likelihood == "classification":
                    scaled = outputs[..., None] / (1 + math.pi / 8 * variance).sqrt()
                    log_probs = scaled.log_softmax(dim=2)
                    index = batch_targets[None, :, None, None].expand(self.num_members, -1, 1, values.numel())
                    total -= log_probs.gather(2, index).sum((1, 2)).double()
                else:
                    noise = self.sigma.to(dtype).square()[:, None, None, None]
                    predictive = variance + noise  # [M, n, 1, G], the same for every output
                    error = (batch_targets.to(dtype)[None, :, :, None] - outputs[..., None]).square()
                    nll = 0.5 * (predictive.log() + math.log(2 * math.pi) + error / predictive)
                    total += nll.sum((1, 2)).double()
        self.prior_precision = values[total.argmin(dim=1)]
        return self.prior_precision

    # -- prediction --------------------------------------------------------------------------------------
    def linearized_outputs(
        self, *inputs: Any, output: Callable[[Any], Any] | None = None, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The GLM predictive of the outputs, ``N(f, J Sigma J^T)`` per example.

        Returns:
            ``(mean [M, B, C], covariance [M, B, C, C])`` (regression: ``K`` outputs, a diagonal covariance).
        """
        curvature = self._check_fitted()
        with _evaluating(self.model):
            features, outputs = self._features(inputs, kwargs, output)
            delta = self.prior_precision.to(outputs.dtype)
            if self.likelihood == "classification":
                return outputs, curvature.covariance(features, delta)
            variance = curvature.variance(features, delta).expand(-1, -1, self.num_outputs)
            return outputs, torch.diag_embed(variance)

    def predict(
        self,
        *inputs: Any,
        num_samples: int | None = None,
        mean_field: bool | None = None,
        output: Callable[[Any], Any] | None = None,
        generator: torch.Generator | None = None,
        batch_dim: int = 0,
        samples_per_pass: int | None = None,
        **kwargs: Any,
    ) -> Prediction | GaussianPrediction:
        """The GLM predictive at ``inputs`` (module docstring); what ``uqkit.predict(la, ...)`` returns.

        Args:
            *inputs, **kwargs: the model's inputs (``[B, ...]``); the backbone runs once whatever ``S``.
            num_samples: ``None`` (default): the closed form (probit for classification, ``S = M``);
                ``S``: Monte Carlo, ``S / M`` samples per member (a multiple of ``M``).
            mean_field: ``True``: the closed form (``num_samples`` must be ``None`` or ``M``); ``False``:
                Monte Carlo (default ``num_samples``: ``M`` x :data:`DEFAULT_MC_SAMPLES`); ``None``: as
                ``num_samples`` says.
            output: callable mapping the model's output to its logits, when it is none of the forms
                :func:`uqkit.predict` reads.
            generator: for the Monte Carlo draws.
            batch_dim, samples_per_pass: accepted for :func:`uqkit.predict`; must be 0 and ``None``.

        Returns:
            classification: :class:`~uqkit.Prediction` ``[S, B, C]`` (the probit's log-probabilities as
            logits when ``S = M``); regression: :class:`~uqkit.GaussianPrediction` ``[S, B, K]``.
        """
        curvature = self._check_fitted()
        if batch_dim != 0:
            raise ValueError(f"batch_dim: expected 0 (examples along the first dimension), got {batch_dim!r}")
        if samples_per_pass is not None:
            raise ValueError(
                f"samples_per_pass: expected None (the network runs once for any num_samples), got "
                f"{samples_per_pass!r}"
            )
        if mean_field is not None and not isinstance(mean_field, bool):
            raise TypeError(f"mean_field: expected None, True or False, got {mean_field!r}")
        members = self.num_members
        if num_samples is not None:
            num_samples = check_positive_int(num_samples, "num_samples")
            if num_samples % members:
                raise ValueError(
                    f"num_samples: expected a multiple of the M = {members} members, got {num_samples}"
                )
        closed_form = mean_field if mean_field is not None else num_samples is None
        if closed_form and num_samples not in (None, members):
            raise ValueError(
                f"num_samples: expected None or {members} with mean_field=True (one closed-form prediction "
                f"per member), got {num_samples}"
            )
        per_member = DEFAULT_MC_SAMPLES if num_samples is None else num_samples // members
        with _evaluating(self.model):
            features, outputs = self._features(inputs, kwargs, output)
            delta = self.prior_precision.to(outputs.dtype)
            draws = None  # standard normal draws for Monte Carlo: [M, S / M, B, outputs]
            if not closed_form:
                shape = (members, per_member, *outputs.shape[1:])
                draws = torch.randn(shape, generator=generator, dtype=outputs.dtype, device=outputs.device)
            if self.likelihood == "regression":
                variance = curvature.variance(features, delta).expand(-1, -1, self.num_outputs)
                noise = self.sigma.to(outputs.dtype).square()[:, None, None].expand_as(outputs)
                if draws is None:
                    return GaussianPrediction(outputs, variance + noise)
                means = outputs[:, None] + variance.sqrt()[:, None] * draws
                noise = noise[:, None].expand_as(means)
                return GaussianPrediction(means.flatten(0, 1), noise.flatten(0, 1))
            if draws is None:
                variance = curvature.variance(features, delta)
                return Prediction((outputs / (1 + math.pi / 8 * variance).sqrt()).log_softmax(dim=-1))
            factor = _covariance_factor(curvature.covariance(features, delta))  # [M, B, C, C]
            logits = outputs[:, None] + torch.einsum("mbck,msbk->msbc", factor, draws)
            return Prediction(logits.flatten(0, 1))

    def uqkit_predict(self, *inputs: Any, **options: Any) -> Prediction | GaussianPrediction:
        """The hook :func:`uqkit.predict` calls: :meth:`predict`."""
        return self.predict(*inputs, **options)

    def forward(self, *inputs: Any, **kwargs: Any) -> Prediction | GaussianPrediction:
        """``la(x)``: :meth:`predict`."""
        return self.predict(*inputs, **kwargs)

    # -- inspection --------------------------------------------------------------------------------------
    def precision_matrix(self) -> torch.Tensor:
        """``[M, P, P]`` dense posterior precision ``H + delta I``, parameters in the order of
        ``torch.nn.utils.parameters_to_vector(layer.parameters())`` of each member: the weight row by row,
        then the bias (laplace-torch's order). Refused over ``memory_budget``."""
        curvature = self._check_fitted()
        size = self.num_parameters
        itemsize = self.layer.weight.dtype.itemsize
        if self.num_members * size * size * itemsize > self.memory_budget:
            raise ValueError(
                f"precision_matrix: {self.num_members} x {size} x {size} entries take "
                f"{_format_bytes(self.num_members * size * size * itemsize)}, over memory_budget="
                f"{_format_bytes(self.memory_budget)}"
            )
        dense = curvature.precision(self.prior_precision.to(self.layer.weight.dtype))
        width = self.num_features + int(self.has_bias)
        if self._multiplicity > 1:  # regression: I_K (x) the one block
            eye = torch.eye(self._multiplicity, dtype=dense.dtype, device=dense.device)
            dense = torch.einsum("kl,mde->mkdle", eye, dense).reshape(self.num_members, size, size)
        order = [c * width + d for c in range(self.num_outputs) for d in range(self.num_features)]
        if self.has_bias:
            order += [c * width + self.num_features for c in range(self.num_outputs)]
        index = torch.tensor(order, device=dense.device)
        return dense[:, index][:, :, index]

    def extra_repr(self) -> str:
        members = f", members={self.num_members}" if self.num_members > 1 else ""
        return (
            f"likelihood={self.likelihood!r}, hessian={self.hessian!r}, last_layer={self.last_layer_name!r}, "
            f"prior_precision={self.prior_method!r}{members}"
        )
