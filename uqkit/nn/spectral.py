"""Spectral normalisation with a soft bound, for distance-preserving hidden layers (Liu et al. 2020, SNGP).

:func:`spectral_norm` re-parametrises the weight ``W`` of a ``Linear``, ``Conv1d`` or ``Conv2d`` layer as

    W_bounded = W * c / max(sigma(W), c)

so that the layer's largest singular value ``sigma`` is at most the bound ``c`` and the weight is left
unchanged when it already is (Liu et al. 2020, Sec. 3.2, the spectral-normalisation step of SNGP, with
``c`` the "norm multiplier"; Miyato et al. 2018 always divide by ``sigma``, i.e. ``c = 1`` and no ``max``).

``sigma`` is estimated by power iteration (Miyato et al. 2018, Algorithm 1) on the layer's *linear
operator*, not on a reshaped kernel: for a ``Linear`` layer the operator is ``x -> W x``; for a convolution
it is the convolution itself, ``x -> conv(x, W)`` on inputs of the layer's spatial shape, whose adjoint is
the transposed convolution with the ``output_padding`` that gives back the input shape exactly. The
largest singular value of a convolution's operator differs from that of its kernel reshaped to a
``[C_out, C_in * k * k]`` matrix (by up to a factor ``sqrt(k * k)`` for stride 1), and only the operator's
norm bounds the layer's Lipschitz constant (Gouk et al. 2021, Sec. 3.2).

Power-iteration state: the left and right singular vector estimates ``u`` (output space) and ``v`` (input
space) live in buffers of the parametrization (``module.parametrizations.weight[0]``), so they travel with
``state_dict``, ``deepcopy`` and ``.to()``. In training mode every access to ``module.weight`` runs
``n_power_iterations`` steps from the stored vectors and stores the result; in eval mode the stored
vectors are used as they are and ``sigma = u^T A v`` is recomputed from the current weight, which is exact
once the iteration has converged (as in ``torch.nn.utils.parametrizations.spectral_norm``).

Eval-mode cache: where no graph is built (eval mode, and gradients disabled or the weight not requiring
them) the bounded weight is a function of the raw weight, the stored vectors and the bound alone, so it is
computed once and reused by later forward passes, which then cost what the unnormalised layer costs. It is
recomputed when any of them is replaced, gets new storage or is changed in place (tensor identity, data
pointer and autograd's version counter: optimiser steps, ``load_state_dict``, ``copy_``/``add_`` under
``no_grad``, ``.to()``, ``param.data = ...``), when the bound changes, and at every ``train()``/``eval()``
switch; it is never used in training mode, under ``torch.compile``, ``torch.func`` transforms or
``inference_mode``. In-place writes through ``.data`` (``w.data.add_(...)``), which the version counter does
not see, are not detected: after one in eval mode call ``model.eval()`` again.

A convolution's operator depends on the input's spatial shape. Pass it as ``input_shape`` or let the first
forward pass record it (a forward pre-hook stores it in a buffer and runs a warm-up of power iterations);
later inputs of another size reuse the recorded shape (for zero padding the operator norm grows with the
input size towards that of the infinite-input convolution, so record the largest size you will use).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from uqkit._validation import check_positive_float, check_positive_int
from uqkit.nn._cache import VersionedCache, is_cacheable

__all__ = ["BoundedSpectralNorm", "spectral_norm"]

_WARMUP_ITERATIONS = 15  # power iterations run once when the vectors are (re)initialised
_EPS = 1e-12

_CONV_FUNCTIONS = {
    1: (F.conv1d, F.conv_transpose1d),
    2: (F.conv2d, F.conv_transpose2d),
}


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm().clamp_min(_EPS)


def _resolve_padding(module: nn.modules.conv._ConvNd) -> tuple[int, ...]:
    """Numeric zero padding of a convolution (``"valid"`` and symmetric ``"same"`` resolved)."""
    spatial = len(module.kernel_size)
    if isinstance(module.padding, str):
        if module.padding == "valid":
            return (0,) * spatial
        totals = [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size, strict=True)]
        if any(t % 2 for t in totals):
            raise ValueError(
                "module: spectral_norm supports padding='same' only when dilation * (kernel_size - 1) is "
                f"even in every dimension (symmetric padding), got kernel_size={module.kernel_size}, "
                f"dilation={module.dilation}"
            )
        return tuple(t // 2 for t in totals)
    return tuple(module.padding)


class BoundedSpectralNorm(nn.Module):
    """Parametrization ``W -> W * c / max(sigma(W), c)`` with ``sigma`` from power iteration on the operator.

    Registered on a layer's ``weight`` by :func:`spectral_norm`; use that function rather than this class.

    Args:
        module: the ``nn.Linear``, ``nn.Conv1d`` or ``nn.Conv2d`` whose weight is bounded.
        bound: the bound ``c > 0`` on the largest singular value.
        n_power_iterations: power-iteration steps per weight access in training mode (``>= 1``).
        input_shape: spatial shape of the convolution's input (``(L,)`` or ``(H, W)``); ``None`` for a
            ``Linear`` layer, or to record it from the first forward pass.

    Buffers:
        ``u``: ``[out_features]`` or ``[1, C_out, *output_spatial]``, the left singular vector estimate.
        ``v``: ``[in_features]`` or ``[1, C_in, *input_spatial]``, the right singular vector estimate.
        ``input_shape``: (convolutions) the recorded spatial input shape, empty until known.
    """

    def __init__(
        self,
        module: nn.Module,
        bound: float,
        n_power_iterations: int,
        input_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.bound = bound
        self.n_power_iterations = n_power_iterations
        self._eval_cache: VersionedCache | None = None  # the eval-mode bounded weight, see forward()
        weight = module.weight
        factory = {"dtype": weight.dtype, "device": weight.device}
        self.is_conv = isinstance(module, (nn.Conv1d, nn.Conv2d))
        if self.is_conv:
            self.spatial_dims = len(module.kernel_size)
            self.stride = tuple(module.stride)
            self.padding = _resolve_padding(module)
            self.dilation = tuple(module.dilation)
            self.groups = int(module.groups)
            self.register_buffer("input_shape", torch.zeros(0, dtype=torch.long))
            self.register_buffer("u", torch.zeros(0, **factory))
            self.register_buffer("v", torch.zeros(0, **factory))
            if input_shape is not None:
                self._initialize_vectors(_check_input_shape(input_shape, self.spatial_dims), weight.detach())
        else:
            self.register_buffer("u", _normalize(torch.randn(weight.shape[0], **factory)))
            self.register_buffer("v", _normalize(torch.randn(weight.shape[1], **factory)))
            with torch.no_grad():
                self._power_iteration(weight.detach(), _WARMUP_ITERATIONS)

    # -- the operator and its adjoint ----------------------------------------------------------------------
    def _output_spatial(self, input_spatial: Sequence[int], kernel: Sequence[int]) -> list[int]:
        return [
            (n + 2 * p - d * (k - 1) - 1) // s + 1
            for n, p, d, k, s in zip(
                input_spatial, self.padding, self.dilation, kernel, self.stride, strict=True
            )
        ]

    def operator(self, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Apply the layer's linear operator (no bias) to ``x``.

        Shape:
            ``x``: ``[in_features]`` (Linear) or ``[N, C_in, *input_shape]`` (convolution).
        """
        if not self.is_conv:
            return weight @ x
        conv, _ = _CONV_FUNCTIONS[self.spatial_dims]
        return conv(x, weight, None, self.stride, self.padding, self.dilation, self.groups)

    def adjoint(self, weight: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Apply the adjoint (transpose) of :meth:`operator` to ``y``: ``<A x, y> = <x, A^T y>``.

        For a convolution this is the transposed convolution with ``output_padding`` chosen so that its
        output has exactly the recorded input shape (a strided convolution drops the last
        ``(n + 2p - d(k-1) - 1) mod s`` input rows; the transpose must give them back, as zeros' partners).

        Shape:
            ``y``: ``[out_features]`` (Linear) or ``[N, C_out, *output_spatial]`` (convolution).
        """
        if not self.is_conv:
            return weight.t() @ y
        _, conv_transpose = _CONV_FUNCTIONS[self.spatial_dims]
        kernel = weight.shape[2:]
        input_spatial = [int(n) for n in self.input_shape]
        output_spatial = y.shape[2:]
        output_padding = tuple(
            n - ((m - 1) * s - 2 * p + d * (k - 1) + 1)
            for n, m, s, p, d, k in zip(
                input_spatial, output_spatial, self.stride, self.padding, self.dilation, kernel, strict=True
            )
        )
        return conv_transpose(
            y, weight, None, self.stride, self.padding, output_padding, self.groups, self.dilation
        )

    # -- state ---------------------------------------------------------------------------------------------
    @property
    def initialized(self) -> bool:
        """Whether the power-iteration vectors exist (for a convolution: whether the input shape is known)."""
        return self.u.numel() > 0

    def _initialize_vectors(self, shape: list[int], weight: torch.Tensor) -> None:
        """Record a convolution's spatial input shape; initialise ``u`` and ``v`` with a warm-up."""
        out_channels, in_channels_per_group = weight.shape[:2]
        in_channels = in_channels_per_group * self.groups
        output_spatial = self._output_spatial(shape, weight.shape[2:])
        if any(n < 1 for n in output_spatial):
            raise ValueError(
                f"input_shape: spatial shape {tuple(shape)} is smaller than the kernel's receptive field "
                f"(kernel_size={tuple(weight.shape[2:])}, padding={self.padding}, dilation={self.dilation})"
            )
        factory = {"dtype": weight.dtype, "device": weight.device}
        self.input_shape = torch.tensor(shape, dtype=torch.long, device=weight.device)
        self.u = _normalize(torch.randn(1, out_channels, *output_spatial, **factory))
        self.v = _normalize(torch.randn(1, in_channels, *shape, **factory))
        with torch.no_grad():
            self._power_iteration(weight.detach(), _WARMUP_ITERATIONS)

    def _power_iteration(self, weight: torch.Tensor, steps: int) -> None:
        u, v = self.u, self.v
        for _ in range(steps):
            v = _normalize(self.adjoint(weight, u))
            u = _normalize(self.operator(weight, v))
        self.u.copy_(u)
        self.v.copy_(v)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # A layer whose input shape was not yet recorded holds empty buffers: take the saved shapes.
        for name in ("u", "v", "input_shape"):
            saved = state_dict.get(prefix + name)
            current = getattr(self, name, None)
            if saved is not None and current is not None and saved.shape != current.shape:
                setattr(self, name, torch.empty_like(saved, dtype=current.dtype, device=current.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- the parametrization ---------------------------------------------------------------------------------
    def spectral_norm_estimate(self, weight: torch.Tensor) -> torch.Tensor:
        """``sigma = u^T A v``, the power-iteration estimate of the largest singular value of ``weight``.

        The vectors are treated as constants, so gradients flow through ``weight`` only (Miyato et al. 2018).
        """
        if not self.initialized:
            raise RuntimeError(
                "spectral_norm: the convolution's input shape is not known yet; run one forward pass or "
                "pass input_shape=(H, W) to spectral_norm"
            )
        if self.training:
            with torch.no_grad():
                self._power_iteration(weight.detach(), self.n_power_iterations)
        # Clones: the stored vectors change in place at the next training access, and autograd must see
        # the values used here.
        u = self.u.clone(memory_format=torch.contiguous_format)
        v = self.v.clone(memory_format=torch.contiguous_format)
        return (u * self.operator(weight, v)).sum()

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.training or (torch.is_grad_enabled() and weight.requires_grad) or not is_cacheable(weight):
            self._eval_cache = None
            return self._bounded(weight)
        # Eval mode without a graph: the result depends only on the weight, the stored vectors and the
        # bound, so it is computed once and reused until one of them changes (see the module docstring).
        if self._eval_cache is None:
            self._eval_cache = VersionedCache()
        return self._eval_cache.get((weight, self.u, self.v), self.bound, lambda: self._bounded(weight))

    def _bounded(self, weight: torch.Tensor) -> torch.Tensor:
        sigma = self.spectral_norm_estimate(weight)
        bound = torch.as_tensor(self.bound, dtype=sigma.dtype, device=sigma.device)
        return weight * (bound / torch.maximum(sigma, bound))

    def train(self, mode: bool = True) -> BoundedSpectralNorm:
        self._eval_cache = None
        return super().train(mode)

    def __getstate__(self) -> dict:
        # The cache holds weak references (not picklable) and is rebuilt on demand: never copied or saved.
        state = super().__getstate__()
        state["_eval_cache"] = None
        return state

    def _record_input_shape(self, module: nn.Module, args: tuple) -> None:
        """Forward pre-hook of a convolution: record the spatial shape of its first input."""
        if self.initialized or not args:
            return
        x = args[0]
        if isinstance(x, torch.Tensor) and x.ndim >= self.spatial_dims + 1:
            shape = [int(n) for n in x.shape[-self.spatial_dims :]]
            self._initialize_vectors(shape, module.parametrizations.weight.original.detach())

    def extra_repr(self) -> str:
        shape = f", input_shape={tuple(self.input_shape.tolist())}" if self.is_conv else ""
        return f"bound={self.bound}, n_power_iterations={self.n_power_iterations}{shape}"


def _check_input_shape(input_shape: Sequence[int], spatial_dims: int) -> list[int]:
    if isinstance(input_shape, int):
        input_shape = (input_shape,)
    if not isinstance(input_shape, (tuple, list, torch.Size)) or len(input_shape) != spatial_dims:
        raise ValueError(
            f"input_shape: expected the {spatial_dims} spatial size(s) of the convolution's input "
            f"({'(L,)' if spatial_dims == 1 else '(H, W)'}), got {input_shape!r}"
        )
    if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in input_shape):
        raise ValueError(f"input_shape: expected positive integer sizes, got {tuple(input_shape)}")
    return [int(n) for n in input_shape]


def spectral_norm(
    module: nn.Module,
    bound: float = 1.0,
    n_power_iterations: int = 1,
    input_shape: Sequence[int] | None = None,
) -> nn.Module:
    """Bound the largest singular value of a layer's weight operator by ``bound`` (Liu et al. 2020).

    The weight becomes ``W * c / max(sigma, c)``: rescaled only when its largest singular value ``sigma``
    exceeds ``c`` (SNGP's soft spectral normalisation, Liu et al. 2020, Sec. 3.2), with ``sigma`` from
    power iteration on the layer's linear operator (Miyato et al. 2018, Algorithm 1): the matrix for a
    ``Linear`` layer, the convolution itself (with its stride, padding, dilation and groups) for ``Conv1d``
    and ``Conv2d``. See the module docstring for the training/eval behaviour of the power iteration.

    Implemented with ``torch.nn.utils.parametrize``: the layer stays a drop-in module (``nn.Sequential``,
    ``state_dict``, ``deepcopy``), its raw weight is ``module.parametrizations.weight.original``, and
    ``parametrize.remove_parametrizations(module, "weight")`` bakes the bounded weight in. Inside
    ``parametrize.cached()`` the bounded weight is computed once per context.

    Args:
        module: an ``nn.Linear``, ``nn.Conv1d`` or ``nn.Conv2d`` (zero padding), modified in place.
        bound: ``c > 0``, the bound on the largest singular value. Liu et al. use values just below 1 for
            residual MLP blocks (so that ``x + f(x)`` is bi-Lipschitz) and 6 for Wide ResNets.
        n_power_iterations: power-iteration steps per forward pass in training mode, ``>= 1``.
        input_shape: for convolutions, the spatial input shape (``(L,)`` or ``(H, W)``); ``None`` records it
            from the first forward pass. Must be ``None`` for ``Linear``.

    Returns:
        ``module`` itself, with its weight parametrized.

    Raises:
        TypeError: if ``module`` is not a Linear/Conv1d/Conv2d layer.
        ValueError: on a bad ``bound``, ``n_power_iterations`` or ``input_shape``, a non-zero padding mode,
            or a weight that is already spectrally normalised.

    Example:
        >>> layer = spectral_norm(nn.Conv2d(3, 16, 3, stride=2, padding=1), bound=0.95)
        >>> y = layer(torch.randn(8, 3, 32, 32))  # records input_shape (32, 32)
    """
    if not isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
        raise TypeError(f"module: expected an nn.Linear, nn.Conv1d or nn.Conv2d, got {type(module).__name__}")
    bound = check_positive_float(bound, "bound")
    n_power_iterations = check_positive_int(n_power_iterations, "n_power_iterations")
    if isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.padding_mode != "zeros":
        raise ValueError(
            f"module: spectral_norm supports convolutions with padding_mode='zeros', got "
            f"{module.padding_mode!r}"
        )
    if isinstance(module, nn.Linear) and input_shape is not None:
        raise ValueError(f"input_shape: a Linear layer takes no input_shape, got {input_shape!r}")
    if parametrize.is_parametrized(module, "weight") and any(
        isinstance(p, BoundedSpectralNorm) for p in module.parametrizations.weight
    ):
        raise ValueError("module: its weight is already spectrally normalised")
    if not math.isfinite(float(module.weight.detach().abs().max())):
        raise ValueError("module: expected a finite weight, got NaN or infinite entries")

    parametrization = BoundedSpectralNorm(module, bound, n_power_iterations, input_shape)
    # unsafe=True: the parametrization keeps the weight's shape and dtype; the default consistency check
    # would evaluate it, which a convolution cannot do before its input shape is known.
    parametrize.register_parametrization(module, "weight", parametrization, unsafe=True)
    if parametrization.is_conv:
        module.register_forward_pre_hook(parametrization._record_input_shape)
    return module
