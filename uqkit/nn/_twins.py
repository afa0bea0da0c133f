"""Constructor arguments, parameters and initialisation shared by the Bayesian twins of ``torch.nn`` layers.

Each base here takes exactly the arguments of its ``torch.nn`` twin (plus ``prior`` and
``posterior_scale_init``), registers a Gaussian posterior for each parameter of the twin (``weight`` ->
``weight_mean``, ``weight_rho``), initialises the means as the twin initialises its weights, and provides the
twin's deterministic computation given explicit weights. The Flipout and reparameterisation families then
only add how noise enters the forward pass.

A converted layer keeps the attributes that model code reads of the layer it replaces: ``in_features``,
``out_features``, ``in_channels``, ``out_channels``, ``kernel_size``, ``stride``, ``padding``,
``dilation``, ``groups``, ``padding_mode``, an LSTM's ``input_size``, ``hidden_size``, ``num_layers``,
``batch_first``, ... as the twin stores them, and ``weight`` and ``bias`` (an LSTM's ``weight_ih_l0``, ...)
as the posterior means, the parameters themselves (read-only attributes: e.g. a Hugging Face ViT's patch
embedding reads ``self.projection.weight.dtype``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from uqkit._validation import check_float_tensor, check_positive_int
from uqkit.nn._posterior import BayesianModule
from uqkit.nn.priors import Prior

__all__: list[str] = []

_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def _check_input(x: Any, name: str, ndims: tuple[int, ...], layout: str, features: int, dim: int) -> None:
    check_float_tensor(x, name, ndims, layout, finite=False)
    if x.shape[dim] != features:
        raise ValueError(
            f"{name}: expected {features} features (channels) in dim {dim} {layout}, "
            f"got shape {tuple(x.shape)}"
        )


def _as_tuple(value: Any, n: int, name: str, minimum: int) -> tuple[int, ...]:
    values = (value,) * n if isinstance(value, int) and not isinstance(value, bool) else value
    if (
        not isinstance(values, Sequence)
        or len(values) != n
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in values)
    ):
        raise ValueError(f"{name}: expected an int >= {minimum} or a tuple of {n} such ints, got {value!r}")
    return tuple(values)


@dataclass(frozen=True)
class ConvGeometry:
    """Validated constructor arguments of an ``nn.Conv1d`` / ``nn.Conv2d``, one tuple entry per spatial dim.

    ``pad_widths`` are the ``F.pad`` widths (last dim first) used for the non-zero padding modes.
    """

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: str | tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
    padding_mode: str
    pad_widths: tuple[int, ...]


def conv_geometry(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    kernel_size: int | tuple[int, ...],
    stride: int | tuple[int, ...],
    padding: str | int | tuple[int, ...],
    dilation: int | tuple[int, ...],
    groups: int,
    padding_mode: str,
) -> ConvGeometry:
    """Check a convolution's constructor arguments as ``torch.nn.Conv{1,2}d`` does; return them as tuples."""
    n = spatial_dims
    in_channels = check_positive_int(in_channels, "in_channels")
    out_channels = check_positive_int(out_channels, "out_channels")
    groups = check_positive_int(groups, "groups")
    if in_channels % groups or out_channels % groups:
        raise ValueError(
            f"groups: expected a divisor of in_channels ({in_channels}) and out_channels "
            f"({out_channels}), got {groups}"
        )
    kernel = _as_tuple(kernel_size, n, "kernel_size", 1)
    strides = _as_tuple(stride, n, "stride", 1)
    dilations = _as_tuple(dilation, n, "dilation", 1)
    if isinstance(padding, str):
        if padding not in ("same", "valid"):
            raise ValueError(f"padding: expected 'same', 'valid' or ints, got {padding!r}")
        if padding == "same" and any(s != 1 for s in strides):
            raise ValueError(f"padding: 'same' needs stride 1, got stride {strides}")
        pads: str | tuple[int, ...] = padding
    else:
        pads = _as_tuple(padding, n, "padding", 0)
    if padding_mode not in _PADDING_MODES:
        raise ValueError(f"padding_mode: expected one of {_PADDING_MODES}, got {padding_mode!r}")
    widths: list[int] = []
    for d in reversed(range(n)):
        if pads == "valid":
            left = right = 0
        elif pads == "same":
            total = dilations[d] * (kernel[d] - 1)
            left, right = total // 2, total - total // 2
        else:
            left = right = pads[d]
        widths += [left, right]
    return ConvGeometry(
        in_channels, out_channels, kernel, strides, pads, dilations, groups, padding_mode, tuple(widths)
    )


def convolve(
    conv: Callable[..., torch.Tensor],
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    geometry: ConvGeometry,
) -> torch.Tensor:
    """``conv(x, weight, bias)`` with the stride, padding (any mode), dilation and groups of ``geometry``."""
    if geometry.padding_mode == "zeros":
        return conv(x, weight, bias, geometry.stride, geometry.padding, geometry.dilation, geometry.groups)
    x = F.pad(x, geometry.pad_widths, mode=geometry.padding_mode)
    return conv(x, weight, bias, geometry.stride, 0, geometry.dilation, geometry.groups)


def _reset_like_linear(layer: BayesianModule) -> None:
    """Means as ``nn.Linear`` and ``nn.ConvNd`` initialise their weights; scales to ``posterior_scale_init``.

    Kaiming-uniform weights with ``a = sqrt(5)``, bias ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``.
    """
    weight = layer.posterior_mean("weight")
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    if layer.has_bias:
        fan_in = weight[0].numel()
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        nn.init.uniform_(layer.posterior_mean("bias"), -bound, bound)
    layer.reset_posterior_scale(layer.posterior_scale_init)


class _MeanWeights:
    """``weight`` and ``bias`` of a Bayesian ``nn.Linear`` / ``nn.ConvNd``: the posterior means (``bias`` is
    ``None`` without one, as in ``torch.nn``), so that code reading ``layer.weight.dtype`` or ``.shape`` keeps
    working after conversion."""

    @property
    def weight(self) -> torch.Tensor:
        """The posterior mean of the weight (the ``weight_mean`` parameter)."""
        return self.posterior_mean("weight")  # type: ignore[attr-defined]

    @property
    def bias(self) -> torch.Tensor | None:
        """The posterior mean of the bias (the ``bias_mean`` parameter), ``None`` for a layer without bias."""
        return self.posterior_mean("bias") if self.has_bias else None  # type: ignore[attr-defined]


class LinearPosterior(_MeanWeights, BayesianModule):
    """Parameters of a Bayesian ``nn.Linear``: ``weight`` ``[out, in]`` and optional ``bias`` ``[out]``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        prior: Prior | None = None,
        posterior_scale_init: float = 1e-2,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(prior, posterior_scale_init)
        self.in_features = check_positive_int(in_features, "in_features", minimum=0)
        self.out_features = check_positive_int(out_features, "out_features", minimum=0)
        factory = {"device": device, "dtype": dtype}
        self._register_posterior("weight", (out_features, in_features), **factory)
        if bias:
            self._register_posterior("bias", (out_features,), **factory)
        self.reset_parameters()

    reset_parameters = _reset_like_linear

    def _check_input(self, x: Any) -> None:
        check_float_tensor(x, "input", finite=False)
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"input: expected a tensor [..., {self.in_features}] (in_features last), got shape "
                f"{tuple(x.shape)}"
            )

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.has_bias}, "
            + super().extra_repr()
        )


class ConvPosterior(_MeanWeights, BayesianModule):
    """Parameters and convolution of a Bayesian ``nn.Conv1d`` / ``nn.Conv2d``.

    Subclasses set ``spatial_dims`` and ``conv`` (``F.conv1d`` or ``F.conv2d``): one implementation serves
    every dimensionality.
    """

    spatial_dims: ClassVar[int]
    conv: ClassVar[Callable[..., torch.Tensor]]

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...] = 1,
        padding: str | int | tuple[int, ...] = 0,
        dilation: int | tuple[int, ...] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        prior: Prior | None = None,
        posterior_scale_init: float = 1e-2,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(prior, posterior_scale_init)
        geometry = conv_geometry(
            self.spatial_dims,
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            padding_mode,
        )
        self.in_channels, self.out_channels = geometry.in_channels, geometry.out_channels
        self.kernel_size, self.stride, self.padding = geometry.kernel_size, geometry.stride, geometry.padding
        self.dilation, self.groups, self.padding_mode = (
            geometry.dilation,
            geometry.groups,
            geometry.padding_mode,
        )
        self._geometry = geometry
        self.transposed, self.output_padding = False, (0,) * self.spatial_dims  # as nn.ConvNd stores them
        factory = {"device": device, "dtype": dtype}
        shape = (out_channels, in_channels // groups, *self.kernel_size)
        self._register_posterior("weight", shape, **factory)
        if bias:
            self._register_posterior("bias", (out_channels,), **factory)
        self.reset_parameters()

    reset_parameters = _reset_like_linear

    def _convolve(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The twin's convolution with the given weights (``x`` batched)."""
        return convolve(type(self).conv, x, weight, bias, self._geometry)

    def _batched(self, x: Any) -> tuple[torch.Tensor, bool]:
        """Check the input; return it with a batch dimension, and whether one was added."""
        n = self.spatial_dims
        layout = f"[batch, channels, {n} spatial dims] or [channels, {n} spatial dims]"
        _check_input(x, "input", (n + 1, n + 2), layout, self.in_channels, -(n + 1))
        unbatched = x.ndim == n + 1
        return (x.unsqueeze(0) if unbatched else x), unbatched

    def extra_repr(self) -> str:
        text = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
            f", padding={self.padding}, dilation={self.dilation}, groups={self.groups}, bias={self.has_bias}"
        )
        if self.padding_mode != "zeros":
            text += f", padding_mode={self.padding_mode!r}"
        return f"{text}, {super().extra_repr()}"


class LSTMPosterior(BayesianModule):
    """Parameters, input handling and the fused kernel of a Bayesian ``nn.LSTM``.

    Parameter names follow ``nn.LSTM``: ``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``,
    ``bias_hh_l{k}`` (suffix ``_reverse`` for the backward direction), each with ``_mean`` and ``_rho``.
    Gate order ``(input, forget, cell, output)`` as in ``nn.LSTM``. Each family defines
    ``_sample_forward(x, (h_0, c_0)) -> (output, h_n, c_n)`` on time-major input: how noise enters.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        *,
        prior: Prior | None = None,
        posterior_scale_init: float = 1e-2,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(prior, posterior_scale_init)
        self.input_size = check_positive_int(input_size, "input_size")
        self.hidden_size = check_positive_int(hidden_size, "hidden_size")
        self.num_layers = check_positive_int(num_layers, "num_layers")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout <= 1:
            raise ValueError(f"dropout: expected a number in [0, 1], got {dropout!r}")
        if proj_size != 0:
            raise ValueError(f"proj_size: Bayesian LSTMs support proj_size=0 only, got {proj_size!r}")
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)
        self.bidirectional = bool(bidirectional)
        self.proj_size = 0
        factory = {"device": device, "dtype": dtype}
        gates = 4 * hidden_size
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else hidden_size * self.num_directions
            for suffix in self._suffixes(layer):
                self._register_posterior(f"weight_ih{suffix}", (gates, layer_input), **factory)
                self._register_posterior(f"weight_hh{suffix}", (gates, hidden_size), **factory)
                if bias:
                    self._register_posterior(f"bias_ih{suffix}", (gates,), **factory)
                    self._register_posterior(f"bias_hh{suffix}", (gates,), **factory)
        self.reset_parameters()

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def __getattr__(self, name: str) -> Any:
        """``nn.LSTM``'s parameter names (``weight_ih_l0``, ``bias_hh_l1_reverse``, ...) read the posterior
        means, as the attributes of the replaced ``nn.LSTM`` did."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in self.__dict__.get("posterior_names", ()):
                return super().__getattr__(f"{name}_mean")
            raise

    @property
    def all_weights(self) -> list[list[torch.Tensor]]:
        """The posterior means grouped per layer and direction, in ``nn.LSTM.all_weights``' order."""
        return [
            [self.posterior_mean(name) for name in self._cell_names(suffix)]
            for layer in range(self.num_layers)
            for suffix in self._suffixes(layer)
        ]

    def _suffixes(self, layer: int) -> tuple[str, ...]:
        return (f"_l{layer}", f"_l{layer}_reverse")[: self.num_directions]

    def _cell_names(self, suffix: str) -> tuple[str, ...]:
        """Posterior names of one layer and direction, in ``nn.LSTM``'s flat-weight order."""
        names = (f"weight_ih{suffix}", f"weight_hh{suffix}")
        return names + ((f"bias_ih{suffix}", f"bias_hh{suffix}") if self.bias else ())

    def reset_parameters(self) -> None:
        """Means ``U(-1/sqrt(hidden_size), 1/sqrt(hidden_size))`` as in ``nn.LSTM``; scales to the init."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for name in self.posterior_names:
            nn.init.uniform_(self.posterior_mean(name), -bound, bound)
        self.reset_posterior_scale(self.posterior_scale_init)

    def _fused(
        self, x: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor], weights: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``nn.LSTM``'s own kernel with the given flat weights; ``x`` is ``[T, B, F]``."""
        out, h, c = torch.lstm(
            x, hx, weights, self.bias, self.num_layers, self.dropout, self.training, self.bidirectional, False
        )
        return out, h, c

    def forward(
        self, input: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Run the LSTM with sampled weights (mean weights inside ``use_posterior_mean``).

        Args:
            input: ``[T, B, input_size]`` (``[B, T, input_size]`` if ``batch_first``) or unbatched
                ``[T, input_size]``.
            hx: optional initial ``(h_0, c_0)``, each ``[num_layers * num_directions, B, hidden_size]``
                (no batch dimension for unbatched input); zeros by default.

        Returns:
            ``(output, (h_n, c_n))`` exactly as ``nn.LSTM``: ``output`` is ``[T, B, D * hidden_size]``
            (batch first if ``batch_first``), ``h_n`` and ``c_n`` are ``[num_layers * D, B, hidden_size]``.
        """
        if isinstance(input, PackedSequence):
            raise TypeError("input: PackedSequence is not supported by Bayesian LSTMs; pass a padded tensor")
        layout = "[seq, batch, features] (batch first if batch_first) or unbatched [seq, features]"
        _check_input(input, "input", (2, 3), layout, self.input_size, -1)
        unbatched = input.ndim == 2
        x = input.unsqueeze(1) if unbatched else (input.transpose(0, 1) if self.batch_first else input)
        state_shape = (self.num_layers * self.num_directions, x.shape[1], self.hidden_size)
        if hx is None:
            zeros = x.new_zeros(state_shape)
            state = (zeros, zeros)
        else:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"hx: expected a tuple (h_0, c_0), got {type(hx).__name__}")
            state = tuple(s.unsqueeze(1) if unbatched else s for s in hx)
            for name, s in zip(("h_0", "c_0"), state, strict=True):
                check_float_tensor(s, f"hx[{name}]", finite=False)
                if tuple(s.shape) != state_shape:
                    raise ValueError(
                        f"hx: expected {name} of shape {state_shape} (num_layers * directions, batch, "
                        f"hidden_size), got {tuple(s.shape)}"
                    )
        if self.samples:
            out, h, c = self._sample_forward(x, state)
        else:
            means = [self.posterior_mean(n) for n in self.posterior_names]
            out, h, c = self._fused(x, state, means)
        if unbatched:
            return out.squeeze(1), (h.squeeze(1), c.squeeze(1))
        return (out.transpose(0, 1) if self.batch_first else out), (h, c)

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, bias={self.bias}"
        text += (
            f", batch_first={self.batch_first}, dropout={self.dropout}, bidirectional={self.bidirectional}"
        )
        return f"{text}, {super().extra_repr()}"
