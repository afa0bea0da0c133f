"""Mean-field posterior scales at their (weighted) ELBO optimum, given the means, in one pass over the data.

For a factorised Gaussian posterior ``q(w) = N(mu, sigma^2)``, a prior ``N(m, s^2)`` and the objective that
:class:`uqkit.ELBO` minimises, times ``N``,

    ``L(mu, sigma) = N E_q[mean NLL(w)] + tau KL(q || p)``                 (``tau``: ``ELBO``'s ``kl_weight``)

the derivative in one scale ``sigma_j`` is, by Price's / Bonnet's theorem
(``d/dsigma E_q[f] = sigma E_q[d^2 f / dw^2]``) and ``d KL / d sigma = sigma / s^2 - 1 / sigma``,

    ``dL / dsigma_j = sigma_j N E_q[H_jj] + tau (sigma_j / s^2 - 1 / sigma_j)``

with ``H_jj`` the diagonal of the Hessian of the mean NLL. It vanishes at

    ``1 / sigma_j^2 = 1 / s^2 + N E_q[H_jj] / tau``                                            (1)

whatever the means. With ``H`` replaced by the generalized Gauss-Newton matrix ``G`` (the Fisher of the
likelihood, positive semi-definite), (1) is the fixed point of the precision update of variational online
Gauss-Newton (VOGN; Khan et al. 2018, "Fast and Scalable Bayesian Deep Learning by Weight-Perturbation in
Adam", Sec. 3: ``sigma^2 = 1 / (N (s_t + lambda / N))`` with ``s_t`` a running average of the Gauss-Newton
diagonal and ``lambda = 1 / s^2``), for ``tau = 1``; a KL weight ``tau`` divides the data term's precision by
``tau`` (Osawa et al. 2019 call it tempering). So instead of letting a noisy gradient move ``rho`` for
thousands of steps, the scales can be set to (1) for the current means in one pass over the training data:
:func:`diagonal_ggn` estimates ``h_j = E_q[G_jj]`` (the per-example average), :func:`optimal_posterior_scale`
evaluates (1), and :func:`fit_posterior_scales_` writes ``rho = softplus^-1(sigma)`` into every layer.

When ``G = H``. For the output layer of a network (its outputs are linear in its weights) and for linear
regression, ``G_jj = H_jj`` exactly and (1) is the exact stationary point. For a hidden layer of a ReLU
network ``H - G`` is the NLL's gradient times the curvature of the network function; within a linear piece
that curvature is zero, but the kinks of the activations contribute to ``E_q[H]`` (Price's theorem
differentiates across them), so there (1) is the Gauss-Newton approximation of the optimum.

The diagonal ``G_jj = sum_i J_ij^T Lambda_i J_ij`` (``J_i`` the Jacobian of example ``i``'s outputs,
``Lambda_i`` the Hessian of its NLL in the outputs) is computed without per-example Jacobians. Write
``Lambda_i = sum_r v_ir v_ir^T``: ``v_ir = sqrt(p_ir) (p_i - e_r)`` for a softmax over ``C`` classes (``p_i``
the predicted probabilities; ``sum_r p_ir (p_i - e_r)(p_i - e_r)^T = diag(p_i) - p_i p_i^T``), and
``v_ir = e_r / noise`` for a Gaussian likelihood with fixed noise. One backward pass per ``r`` gives every
layer's output gradient ``delta_ir = J_i^T v_ir`` at that layer; a linear layer's per-example weight gradient
is the outer product ``delta_ir a_i^T`` of it and the layer's input ``a_i``, so its square summed over the
examples is ``(delta_r^2)^T (a^2)`` (one matrix product; ``sum_i delta_ir^2`` for the bias). A convolution's
per-example gradient is a sum over positions, ``delta_ir unfold(a_i)^T``: it is formed per example (in
chunks) and squared. The layers sample as they do in training (one weight draw per example for Flipout and
local reparameterisation), so the pass averages ``G`` over the posterior as well as the data, the ``E_q`` of
(1); inside :func:`uqkit.nn.use_posterior_mean` it is ``G`` at the means.

Supported: :class:`~uqkit.nn.FlipoutLinear`, :class:`~uqkit.nn.ReparameterizationLinear` (with or without
local reparameterisation), :class:`~uqkit.nn.FlipoutConv1d` / ``Conv2d`` and
:class:`~uqkit.nn.ReparameterizationConv1d` / ``Conv2d``, each with a :class:`~uqkit.nn.priors.NormalPrior`
(the mixture prior has no closed-form KL, so no closed-form optimum). Bayesian LSTMs, rank-1 and stacked
layers are refused with their names: their weights enter the outputs through more than one product per
example.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from uqkit._validation import check_choice, check_positive_float, check_positive_int
from uqkit.nn._noise import scales_to_rho
from uqkit.nn._posterior import BayesianModule
from uqkit.nn._twins import ConvPosterior, LinearPosterior
from uqkit.nn.modes import evaluation_mode
from uqkit.nn.priors import NormalPrior

__all__ = ["diagonal_ggn", "fit_posterior_scales_", "optimal_posterior_scale"]

CHUNK_ELEMENTS = 1 << 22
"""Largest per-example gradient block (in elements) formed at once for a convolution or a linear layer
that sees more than one position per example."""


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"[:120]


def _bayesian_layers(model: nn.Module) -> list[tuple[str, BayesianModule]]:
    """The model's Bayesian layers; an error naming any that this module cannot handle."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {_describe(model)}")
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, BayesianModule)]
    if not layers:
        raise ValueError(
            "model: expected Bayesian layers (uqkit.nn Flipout*/Gaussian* Linear or Conv, e.g. from "
            "uqkit.bayesianize_), found none"
        )
    unsupported = [
        f"{name or '(model)'} ({type(m).__name__})"
        for name, m in layers
        if not isinstance(m, (LinearPosterior, ConvPosterior))
    ]
    if unsupported:
        raise TypeError(
            "model: the posterior scales have a closed-form optimum here only for Bayesian Linear and "
            f"Conv1d/Conv2d layers (Flipout or Gaussian); unsupported: {', '.join(unsupported[:8])}"
        )
    return layers


def _input_batches(data: Any, batch_size: int) -> Iterator[torch.Tensor]:
    """Input tensors of ``data``: a tensor cut into ``batch_size`` rows, or an iterable of batches (tensors,
    or ``(inputs, targets)`` pairs of which the inputs are used)."""
    if isinstance(data, torch.Tensor):
        if data.ndim == 0:
            raise ValueError("data: expected a batch of inputs [N, ...], got a 0-d tensor")
        for start in range(0, data.shape[0], batch_size):
            yield data[start : start + batch_size]
        return
    if not isinstance(data, Iterable):
        raise TypeError(
            f"data: expected an input tensor [N, ...] or an iterable of batches (a DataLoader), got "
            f"{_describe(data)}"
        )
    for index, batch in enumerate(data):
        inputs = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
        if not isinstance(inputs, torch.Tensor):
            raise TypeError(
                f"data: expected batches of input tensors or (inputs, targets) pairs, batch {index} holds "
                f"{_describe(inputs)}"
            )
        yield inputs


class _Recorder:
    """Forward hooks that keep each layer's input and output, and the squared per-example gradients."""

    def __init__(self, layers: list[tuple[str, BayesianModule]]) -> None:
        self.layers = layers
        self.inputs: list[torch.Tensor | None] = [None] * len(layers)
        self.outputs: list[torch.Tensor | None] = [None] * len(layers)
        self.sums = {
            (index, name): torch.zeros_like(layer.posterior_mean(name), dtype=torch.float64)
            for index, (_, layer) in enumerate(layers)
            for name in layer.posterior_names
        }

    def hook(self, index: int):
        def record(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            if self.outputs[index] is not None:
                raise ValueError(
                    f"model: layer {self.layers[index][0]!r} ran twice in one forward pass; a shared layer's "
                    "per-example gradient is a sum over its uses, which this estimator does not form"
                )
            self.inputs[index] = args[0].detach()
            self.outputs[index] = output
            return output.clone()  # later in-place operations (ReLU(inplace=True)) act on the copy

        return record

    @contextmanager
    def attached(self) -> Iterator[None]:
        handles = [layer.register_forward_hook(self.hook(i)) for i, (_, layer) in enumerate(self.layers)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def clear(self) -> None:
        self.inputs = [None] * len(self.layers)
        self.outputs = [None] * len(self.layers)

    def accumulate(self, index: int, features: torch.Tensor, delta: torch.Tensor) -> None:
        """Add ``sum_i g_i^2`` of layer ``index``'s weight (and bias) for output gradients ``delta``."""
        layer = self.layers[index][1]
        weight, bias = self.sums[(index, "weight")], self.sums.get((index, "bias"))
        if isinstance(layer, LinearPosterior) and features.ndim == 2:
            square = delta.square()
            weight += (square.T @ features).double()  # features hold a^2 here
            if bias is not None:
                bias += square.sum(0).double()
            return
        # features [B, G, K, P] (positions P), delta [B, G, O, P]: per-example gradients formed in chunks
        groups, outs, ins = delta.shape[1], delta.shape[2], features.shape[2]
        step = max(1, CHUNK_ELEMENTS // (groups * outs * ins))
        for start in range(0, features.shape[0], step):
            part = slice(start, start + step)
            grads = torch.einsum("bgop,bgkp->bgok", delta[part], features[part])
            weight += grads.square().sum(0).reshape(weight.shape).double()
            if bias is not None:
                bias += delta[part].sum(-1).square().sum(0).reshape(bias.shape).double()


def _layer_features(layer: BayesianModule, x: torch.Tensor) -> torch.Tensor:
    """What :meth:`_Recorder.accumulate` multiplies the output gradients with: ``a^2`` ``[B, in]`` for a
    linear layer on ``[B, in]`` inputs, else the per-example inputs of every output position, ``[B, G, K,
    P]`` (``G`` groups, ``K`` inputs of one output, ``P`` positions)."""
    if isinstance(layer, LinearPosterior):
        if x.ndim == 2:
            return x.square()
        dim = getattr(layer, "batch_dim", 0)
        x = x.movedim(dim, 0) if x.ndim > dim + 1 else x.unsqueeze(0)
        return x.reshape(x.shape[0], 1, -1, x.shape[-1]).transpose(2, 3)  # [B, 1, in, P]
    assert isinstance(layer, ConvPosterior)
    n = layer.spatial_dims
    x = x.unsqueeze(0) if x.ndim == n + 1 else x
    geometry = layer._geometry
    mode = "constant" if geometry.padding_mode == "zeros" else geometry.padding_mode
    x = F.pad(x, geometry.pad_widths, mode=mode)
    kernel, dilation, stride = geometry.kernel_size, geometry.dilation, geometry.stride
    if n == 1:
        x, kernel, dilation, stride = x.unsqueeze(2), (1, *kernel), (1, *dilation), (1, *stride)
    columns = F.unfold(x, kernel, dilation=dilation, padding=0, stride=stride)  # [B, C_in * k, P]
    return columns.reshape(x.shape[0], geometry.groups, -1, columns.shape[-1])


def _output_gradients(layer: BayesianModule, delta: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """The output gradient in the layout :meth:`_Recorder.accumulate` pairs with ``features``."""
    if isinstance(layer, LinearPosterior):
        if features.ndim == 2:
            return delta
        dim = getattr(layer, "batch_dim", 0)
        delta = delta.movedim(dim, 0) if delta.ndim > dim + 1 else delta.unsqueeze(0)
        return delta.reshape(delta.shape[0], 1, -1, delta.shape[-1]).transpose(2, 3)  # [B, 1, out, P]
    delta = delta.unsqueeze(0) if delta.ndim == layer.spatial_dims + 1 else delta
    return delta.reshape(delta.shape[0], layer._geometry.groups, -1, delta[0, 0].numel())


def _output_factors(outputs: torch.Tensor, likelihood: str, sigma: float | None) -> Iterator[torch.Tensor]:
    """Cotangents ``v_r`` ``[B, ...]`` with ``sum_r v_ir v_ir^T`` the Hessian of the NLL in the outputs."""
    if likelihood == "classification":
        if outputs.ndim != 2:
            raise ValueError(
                f"model: expected logits [batch, classes] for likelihood='classification', got shape "
                f"{tuple(outputs.shape)}"
            )
        probs = outputs.detach().softmax(dim=-1)
        for c in range(outputs.shape[1]):
            v = probs.clone()
            v[:, c] -= 1.0
            yield v * probs[:, c : c + 1].sqrt()
        return
    if outputs.ndim not in (1, 2):
        raise ValueError(
            f"model: expected outputs [batch] or [batch, targets] for likelihood='regression', got shape "
            f"{tuple(outputs.shape)}"
        )
    flat = outputs.reshape(outputs.shape[0], -1)
    for k in range(flat.shape[1]):
        v = torch.zeros_like(flat)
        v[:, k] = 1.0 / sigma
        yield v.reshape(outputs.shape)


def diagonal_ggn(
    model: nn.Module,
    data: Any,
    *,
    likelihood: str = "classification",
    sigma: float | None = None,
    batch_size: int = 512,
) -> dict[str, torch.Tensor]:
    """Per-example average diagonal of the generalized Gauss-Newton matrix of the NLL, for every Bayesian
    layer's weights and biases (see the module docstring for the estimator).

    The model is run in eval mode (restored afterwards); its Bayesian layers sample as always, so the result
    averages over one posterior draw per forward pass (per example for Flipout and local
    reparameterisation): the ``E_q[G]`` of eq. (1). Inside :func:`uqkit.nn.use_posterior_mean` it is the
    diagonal at the means. Parameter gradients (``.grad``) are left untouched.

    Args:
        model: a network with Bayesian ``Linear`` / ``Conv1d`` / ``Conv2d`` layers (``uqkit.nn``).
        data: the inputs: a tensor ``[N, ...]`` (cut into ``batch_size`` rows), or an iterable of batches
            (tensors, or ``(inputs, targets)`` pairs; the targets are not used: the Gauss-Newton matrix
            depends on the model's predictions only).
        likelihood: ``"classification"`` (the model returns logits ``[B, C]``, softmax cross-entropy; ``C``
            backward passes per batch) or ``"regression"`` (outputs ``[B]`` or ``[B, K]``, Gaussian with
            standard deviation ``sigma``; ``K`` backward passes).
        sigma: regression only: the observation noise's standard deviation, ``> 0``.
        batch_size: rows per forward pass when ``data`` is a tensor.

    Returns:
        ``{"<layer name>.<weight|bias>": h}``, each ``h`` of the parameter's shape and dtype, ``>= 0``:
        ``(1 / N) sum_i diag(G_i)`` over the ``N`` examples seen.

    Raises:
        TypeError, ValueError: for a model without supported Bayesian layers, or with unsupported ones, a
            layer that runs twice in one pass, bad arguments, outputs of the wrong shape, or no examples.
    """
    ggn, _ = _diagonal_ggn(model, _bayesian_layers(model), data, likelihood, sigma, batch_size)
    return ggn


def _diagonal_ggn(
    model: nn.Module,
    layers: list[tuple[str, BayesianModule]],
    data: Any,
    likelihood: str,
    sigma: float | None,
    batch_size: int,
) -> tuple[dict[str, torch.Tensor], int]:
    """:func:`diagonal_ggn`, and the number of examples it averaged over."""
    likelihood = check_choice(likelihood, "likelihood", ("classification", "regression"))
    if likelihood == "regression":
        if sigma is None:
            raise ValueError("sigma: expected the observation noise's standard deviation for regression")
        sigma = check_positive_float(sigma, "sigma")
    elif sigma is not None:
        raise ValueError(f"sigma: expected None for likelihood='classification', got {_describe(sigma)}")
    batch_size = check_positive_int(batch_size, "batch_size")
    recorder = _Recorder(layers)
    examples = 0
    with evaluation_mode(model), recorder.attached(), torch.enable_grad():
        for inputs in _input_batches(data, batch_size):
            recorder.clear()
            outputs = model(inputs)
            if not isinstance(outputs, torch.Tensor):
                raise TypeError(f"model: expected a tensor output, got {type(outputs).__name__}")
            missing = [layers[i][0] for i, out in enumerate(recorder.outputs) if out is None]
            if missing:
                raise ValueError(f"model: Bayesian layers {missing[:8]} did not run in the forward pass")
            if not outputs.requires_grad:
                raise ValueError("model: its output does not depend on trainable posterior means")
            features = [
                _layer_features(layer, x) for (_, layer), x in zip(layers, recorder.inputs, strict=True)
            ]
            factors = list(_output_factors(outputs, likelihood, sigma))
            for r, v in enumerate(factors):
                deltas = torch.autograd.grad(
                    outputs, recorder.outputs, grad_outputs=v, retain_graph=r < len(factors) - 1
                )
                for index, ((_, layer), delta) in enumerate(zip(layers, deltas, strict=True)):
                    shaped = _output_gradients(layer, delta, features[index])
                    recorder.accumulate(index, features[index], shaped)
            examples += outputs.shape[0]
    recorder.clear()
    if examples == 0:
        raise ValueError("data: expected at least one example, got none")
    ggn = {
        f"{layers[index][0]}.{name}" if layers[index][0] else name: (total / examples).to(
            layers[index][1].posterior_mean(name).dtype
        )
        for (index, name), total in recorder.sums.items()
    }
    return ggn, examples


def optimal_posterior_scale(
    ggn: torch.Tensor, *, num_data: int, kl_weight: float = 1.0, prior_scale: float = 1.0
) -> torch.Tensor:
    """Eq. (1) of the module docstring: ``sigma = (1 / s^2 + N h / tau)^(-1/2)``.

    Args:
        ggn: ``h``, the per-example average Gauss-Newton (or Hessian) diagonal, ``>= 0``, any shape.
        num_data: ``N``, the number of training examples (``uqkit.ELBO``'s ``num_data``).
        kl_weight: ``tau``, the weight of the KL term (``uqkit.ELBO``'s ``kl_weight``; 1 is the ELBO).
        prior_scale: ``s``, the prior's standard deviation.

    Returns:
        The posterior standard deviations, of ``ggn``'s shape and dtype.
    """
    num_data = check_positive_int(num_data, "num_data")
    kl_weight = check_positive_float(kl_weight, "kl_weight")
    prior_scale = check_positive_float(prior_scale, "prior_scale")
    if not isinstance(ggn, torch.Tensor) or not ggn.is_floating_point():
        raise TypeError(f"ggn: expected a floating-point tensor, got {_describe(ggn)}")
    if bool((ggn < 0).any()) or not bool(torch.isfinite(ggn).all()):
        raise ValueError("ggn: expected finite entries >= 0 (a Gauss-Newton diagonal)")
    precision = prior_scale**-2 + (num_data / kl_weight) * ggn.double()
    return precision.rsqrt().to(ggn.dtype)


def fit_posterior_scales_(
    model: nn.Module,
    data: Any = None,
    *,
    num_data: int | None = None,
    kl_weight: float = 1.0,
    passes: int = 3,
    likelihood: str = "classification",
    sigma: float | None = None,
    batch_size: int = 512,
    ggn: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Set every posterior scale of ``model``'s Bayesian layers, in place, to the optimum (1) of the
    (weighted) ELBO ``N E_q[mean NLL] + tau KL(q || p)`` given the current means (module docstring).

    Each pass runs :func:`diagonal_ggn` over ``data`` (the training data) with the layers sampling at their
    current scales, and evaluates (1) with each layer's prior scale. The first pass sets the scales to that
    value. The ``E_q`` of (1) is over the posterior that (1) itself defines, so later passes iterate towards
    the fixed point, each moving ``log sigma`` halfway to the pass's value (``sigma <- sqrt(sigma
    sigma_new)``): the undamped iteration oscillates (wider scales make the sampled network less confident,
    which raises ``G`` and narrows the scales again). On the benchmark's Fashion-MNIST MLP (KL weight 0.01)
    the first pass from the trained scales moved the median scales by a factor 5-10; the third pass changed
    them by a median 2-5%, the sixth by under 2% (docs/bayesian_layers.md). ``rho = softplus^-1(sigma)``;
    the means are not changed.

    Args:
        model: a network with Bayesian ``Linear`` / ``Conv1d`` / ``Conv2d`` layers with ``NormalPrior``\\ s.
        data, likelihood, sigma, batch_size: as :func:`diagonal_ggn`.
        num_data: ``N`` of the objective (``uqkit.ELBO``'s ``num_data``); default the number of examples in
            ``data``.
        kl_weight: ``tau`` (``uqkit.ELBO``'s ``kl_weight``; 1 for the ELBO itself).
        passes: passes over ``data``, ``>= 1`` (default 3).
        ggn: the first pass's result, precomputed by :func:`diagonal_ggn` (or returned by this function) at
            the model's current scales: it sets the scales for another ``kl_weight`` or prior without a pass
            over the data (``passes=1``; more passes need ``data`` too). Needs ``num_data``.

    Returns:
        The Gauss-Newton diagonals of the last pass (as :func:`diagonal_ggn`).

    Raises:
        TypeError, ValueError: as :func:`diagonal_ggn`; a layer whose prior is not a ``NormalPrior``; neither
            ``data`` nor ``ggn``; ``passes > 1`` without ``data``; ``ggn`` without ``num_data``, or without an
            entry or with another shape for a posterior.

    Example:
        >>> uqkit.bayesianize_(model, uqkit.FlipoutConfig(prior=NormalPrior(0.1)))
        >>> ...  # train the means with uqkit.ELBO(num_data=len(x_train), kl_weight=0.01)
        >>> fit_posterior_scales_(model, x_train, kl_weight=0.01)
    """
    layers = _bayesian_layers(model)
    for name, layer in layers:
        if not isinstance(layer.prior, NormalPrior):
            raise TypeError(
                f"model: layer {name!r} has a {type(layer.prior).__name__}; the optimum (1) needs a "
                "NormalPrior (a closed-form KL)"
            )
    kl_weight = check_positive_float(kl_weight, "kl_weight")
    passes = check_positive_int(passes, "passes")
    if ggn is not None and not isinstance(ggn, dict):
        raise TypeError(f"ggn: expected a dict from diagonal_ggn, got {_describe(ggn)}")
    if num_data is not None:
        num_data = check_positive_int(num_data, "num_data")
    if data is None and (ggn is None or passes > 1):
        raise ValueError(
            "data: expected the training inputs (a precomputed ggn alone serves passes=1 only), got None"
        )
    if ggn is not None and num_data is None:
        raise ValueError("num_data: expected the number of training examples with a precomputed ggn")
    for index in range(passes):
        if index > 0 or ggn is None:
            ggn, examples = _diagonal_ggn(model, layers, data, likelihood, sigma, batch_size)
            num_data = examples if num_data is None else num_data
        with torch.no_grad():
            for prefix, layer in layers:
                for name in layer.posterior_names:
                    key = f"{prefix}.{name}" if prefix else name
                    shape = layer.posterior_mean(name).shape
                    if not isinstance(ggn.get(key), torch.Tensor) or ggn[key].shape != shape:
                        raise ValueError(f"ggn: expected an entry {key!r} of shape {tuple(shape)}")
                    target = optimal_posterior_scale(
                        ggn[key], num_data=num_data, kl_weight=kl_weight, prior_scale=layer.prior.scale
                    )
                    if index > 0:
                        target = (target.double() * layer.posterior_scale(name).double()).sqrt()
                    getattr(layer, f"{name}_rho").copy_(scales_to_rho(target))
    return ggn
