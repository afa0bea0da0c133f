"""BatchEnsemble layers (Wen et al. 2020): ``M`` ensemble members sharing one weight matrix.

Member ``m`` of a BatchEnsemble layer uses the weight ``W_m = W * (s_m r_m^T)``: a weight ``W`` shared by
all members, times the rank-1 matrix of two per-member "fast weight" vectors, ``r_m`` over the input
features and ``s_m`` over the output features, plus a per-member bias ``b_m``. Because the rank-1 factor
acts elementwise, the member's output needs no member-specific matrix (Wen et al. 2020, eq. (5), the
vectorised form):

    ``y_m = ((x_m * r_m) W^T) * s_m + b_m``

so all ``M`` members are computed with *one* matrix product (or convolution) over the folded batch
``[M * B, ...]``: the cost of one layer on an ``M`` times larger batch, and ``M (in + 2 out)`` parameters
on top of the shared ``W`` (1-2 % of a layer's). For a convolution ``r_m`` scales the input channels and
``s_m`` the output channels, broadcast over the spatial positions.

Inputs and outputs carry the members folded into the batch, member-major (:mod:`uqkit.nn.members`):
``[M * B, ...]``, rows ``m * B`` to ``(m + 1) * B - 1`` belong to member ``m`` and get its fast weights; a
batch that is not a multiple of ``M`` is refused. Layers stack directly, and parameter-free layers in between
(pooling, ``Flatten``, activations) see an ordinary batch. A model converted with
:func:`uqkit.bayesianize_` tiles its ``[B, ...]`` inputs on entry (as edward2's BatchEnsemble models do), so
it is called as before its conversion; for an input known to be such a tile
(:func:`uqkit.nn.members.tiled_source`), the layer runs one product of the un-tiled batch with the members'
weights side by side. Like the layers they replace, the layers expose ``weight`` (the shared ``W``),
``bias``, ``in_features`` / ``out_features`` or ``in_channels``, ``out_channels``, ``kernel_size``,
``stride``, ``padding``, ``dilation`` and ``groups``.

Fast-weight initialisation (``fast_weight_init``): Wen et al. 2020 (Sec. 3, Appendix B) initialise ``r`` and
``s`` with random signs so that the members start decorrelated; the reference implementation (edward2 /
uncertainty-baselines, flag ``random_sign_init``) offers either random signs (entries ``+-1``) or a Gaussian
around 1. ``"random_sign"`` (default) draws exact ``+-1`` entries with probability 1/2 each through
:func:`uqkit.nn.rademacher`; ``"normal"`` draws ``N(1, fast_weight_std^2)`` (uncertainty-baselines'
BatchEnsemble CIFAR default, ``random_sign_init = -0.5``); ``"ones"`` starts every member at ``W`` itself.
These defaults are for a layer trained from scratch. On a pretrained ``W`` random signs flip the signs on
both sides of every ReLU and the pretrained function is gone, so :func:`uqkit.bayesianize_` defaults to
``"normal"`` with std 0.1 (:class:`uqkit.BatchEnsembleConfig`, where the choice is measured). The shared
``W`` is initialised as its ``torch.nn`` twin initialises its weight; each member's bias is drawn
independently from the twin's bias distribution.

The shared structure (parameters, input handling, the one batched product) lives in the mixins
:class:`MemberLinearBase` / :class:`MemberConvBase`, which the rank-1 BNN layers (:mod:`uqkit.nn.rank1`)
reuse with random fast weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from uqkit._validation import check_choice, check_float_tensor, check_positive_float, check_positive_int
from uqkit.nn._noise import rademacher
from uqkit.nn._twins import conv_geometry, convolve
from uqkit.nn.members import member_rows, tiled_source

__all__ = ["BatchEnsembleConv1d", "BatchEnsembleConv2d", "BatchEnsembleLinear"]

FAST_WEIGHT_INITS = ("random_sign", "normal", "ones")


def init_fast_weights_(tensor: torch.Tensor, init: str, std: float) -> torch.Tensor:
    """Fill ``tensor`` in place with fast-weight values: ``+-1`` signs, ``N(1, std^2)``, or ones."""
    with torch.no_grad():
        if init == "random_sign":
            tensor.copy_(rademacher(tensor.shape, dtype=tensor.dtype, device=tensor.device))
        elif init == "normal":
            tensor.normal_(1.0, std)
        else:
            tensor.fill_(1.0)
    return tensor


def check_fast_weight_init(init: Any, std: Any) -> tuple[str, float]:
    """``(init, std)`` checked: ``init`` one of :data:`FAST_WEIGHT_INITS` (argument ``fast_weight_init``),
    ``std >= 0`` (argument ``fast_weight_std``); shared by the BatchEnsemble and rank-1 layers and their
    configs in :func:`uqkit.bayesianize_`."""
    return check_choice(init, "fast_weight_init", FAST_WEIGHT_INITS), check_positive_float(
        std, "fast_weight_std", allow_zero=True
    )


class _MemberBase(nn.Module):
    """The shared weight ``W`` and the per-member bias ``[M, out]`` of a member-vectorized layer.

    Subclasses define ``_weight_shape()``, ``_check_example()``, ``_product()`` (the one batched product of
    ``W`` with a folded input), how the factors broadcast (``_factor_view``) and how a product with the
    members' weights side by side is read back (``_members_first``).
    """

    def _setup_shared(self, num_members: int, out_features: int, bias: bool, factory: dict[str, Any]) -> None:
        self.num_members = check_positive_int(num_members, "num_members")
        if not isinstance(bias, bool):
            raise TypeError(f"bias: expected a bool, got {type(bias).__name__}")
        self.weight = nn.Parameter(torch.empty(self._weight_shape(), **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(num_members, out_features, **factory))
        else:
            self.register_parameter("bias", None)

    def reset_shared_parameters(self) -> None:
        """``W`` as the ``torch.nn`` twin initialises its weight (Kaiming uniform, ``a = sqrt(5)``); each
        member's bias independently ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight[0].numel()
            bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            nn.init.uniform_(self.bias, -bound, bound)

    def _member_input(self, input: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Check ``input`` ``[M * B, ...]`` and return it as ``[M, B, ...]`` (a view), with the un-tiled
        ``[B, ...]`` batch when the rows are known to be ``M`` tiles of it (:func:`tiled_source`), else
        ``None``."""
        check_float_tensor(input, "input", finite=False)
        members = self.num_members
        x = input.view(members, member_rows(input, members), *input.shape[1:])
        self._check_example(x)
        if not self._source_may_help(input):
            return x, None
        return x, tiled_source(input, members)

    def _source_may_help(self, input: torch.Tensor) -> bool:
        """Whether the un-tiled batch of ``input`` could be used: for a one-feature input (see
        :meth:`_combine`) or where the members' weights side by side are cheaper (:meth:`_shared_is_cheaper`,
        with ``source.numel() = input.numel() / M``). Elsewhere the look-up (and its reshape) is skipped."""
        raise NotImplementedError

    def _combine(
        self, x: torch.Tensor, r: torch.Tensor, s: torch.Tensor, source: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``((x * r) W^T) * s + b`` for ``x`` ``[M, B, ...]``, factors ``[M, in]`` or ``[M, B, in]``;
        returns ``[M * B, ...]``.

        Factors of shape ``[M, features]`` apply to every example of a member; ``[M, B, features]`` give
        each example its own factors (the rank-1 BNN's per-example samples).
        """
        members, batch = x.shape[:2]
        if r.shape[-1] == 1 and source is not None:
            # One input feature or channel: ``(x * r) W^T = r (x W^T)`` with ``r`` a scalar per member (and
            # example), so the product runs once on the un-tiled input and needs no input gradient.
            out = self._product(source, self.weight).unsqueeze(0)
            out = out * self._factor_view(r, out.dim())
        else:
            scaled = x * self._factor_view(r, x.dim())
            out = self._product(scaled.reshape(members * batch, *x.shape[2:]), self.weight)
            out = out.view(members, batch, *out.shape[1:])
        if self.bias is None:
            out = out * self._factor_view(s, out.dim())
        else:
            out = torch.addcmul(self._factor_view(self.bias, out.dim()), out, self._factor_view(s, out.dim()))
        return out.reshape(members * batch, *out.shape[2:])

    def _combine_shared(self, x: torch.Tensor, r: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """:meth:`_combine` for the un-tiled batch ``x`` ``[B, ...]`` of a tiled input, factors ``[M, feat]``.

        By linearity ``((x * r_m) W^T) * s_m = x (W * (s_m r_m^T))^T``: one product of the un-tiled input
        with the members' weights side by side (``M * out`` outputs), copied into member-major rows. Same
        result; it avoids the product on ``M`` copies of the input and, in training, the gradient with
        respect to the scaled input, which a first layer does not need (for a one-channel convolution on CPU
        that gradient alone cost more than the rest of a LeNet-5 step, batch 4 x 256).
        """
        weight = self._scaled_weights(r, s)  # [M, out, in / groups, *kernel]
        members, out_size = weight.shape[:2]
        bias = None if self.bias is None else self.bias.reshape(-1)
        out = self._product(x, weight.reshape(members * out_size, *weight.shape[2:]), bias)
        return self._members_first(out, members, out_size)

    def _shared_is_cheaper(self, source: torch.Tensor) -> bool:
        """Whether the members' weights side by side (:meth:`_combine_shared`) cost less than scaling the
        tiled input: both paths do the same product, so it is the ``M * weight.numel()`` entries of the
        scaled weights against the ``M * source.numel()`` of the scaled input. A convolution's small kernel
        takes the shared path; the first ``nn.Linear`` of an MLP at batch 16 (784 x 512 weights against
        16 x 784 inputs) does not: building its scaled weights cost twice its product (measured)."""
        return getattr(self, "groups", 1) == 1 and self.weight.numel() <= source.numel()

    def _scaled_weights(self, r: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """The ``M`` members' weights ``W * (s_m r_m^T)``, ``[M, *weight.shape]``, for factors ``[M, feat]``.

        For grouped convolutions, ``r`` indexes all input channels; member ``m``'s weight entry
        ``[o, j, ...]`` of group ``g = o // (out / groups)`` is scaled by
        ``s_m[o] * r_m[g * in / groups + j]``.
        """
        out_size, in_per_group = self.weight.shape[:2]
        groups = getattr(self, "groups", 1)
        if groups == 1:
            scale = s[:, :, None] * r[:, None, :]
        else:
            group_of_output = torch.arange(out_size, device=self.weight.device) // (out_size // groups)
            input_index = group_of_output[:, None] * in_per_group + torch.arange(
                in_per_group, device=self.weight.device
            )
            scale = s[:, :, None] * r[:, input_index]  # [M, out, in / groups]
        return self.weight * scale.reshape(*scale.shape, *((1,) * (self.weight.dim() - 2)))

    def _factor_view(self, factor: torch.Tensor, dims: int) -> torch.Tensor:
        """``factor`` ``[M, F]`` or ``[M, B, F]`` viewed to broadcast against ``[M, B, ...]`` of ``dims``."""
        raise NotImplementedError

    def _members_first(self, out: torch.Tensor, members: int, size: int) -> torch.Tensor:
        """``[B, ..., M * size, ...]`` from a product with the members' weights side by side ->
        ``[M * B, ..., size, ...]``, member-major."""
        raise NotImplementedError


class MemberLinearBase(_MemberBase):
    """Parameters and batched product of a member-vectorized ``nn.Linear`` (BatchEnsemble, rank-1)."""

    def _setup_linear(
        self, in_features: int, out_features: int, num_members: int, bias: bool, factory: dict[str, Any]
    ) -> None:
        self.in_features = check_positive_int(in_features, "in_features")
        self.out_features = check_positive_int(out_features, "out_features")
        self._setup_shared(num_members, out_features, bias, factory)

    @property
    def input_size(self) -> int:
        return self.in_features

    @property
    def output_size(self) -> int:
        return self.out_features

    def _weight_shape(self) -> tuple[int, ...]:
        return (self.out_features, self.in_features)

    def _check_example(self, x: torch.Tensor) -> None:
        if x.dim() < 3 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"input: expected [M * B, *, {self.in_features}] (members folded into the batch, in_features "
                f"last), got shape {[x.shape[0] * x.shape[1], *x.shape[2:]]}"
            )

    def _source_may_help(self, input: torch.Tensor) -> bool:
        # plain attributes only (``W`` is [out, in]): run on every call, and a parameter or a missing
        # attribute (``groups``) goes through nn.Module.__getattr__
        return (
            self.in_features == 1 or self.out_features * self.in_features * self.num_members <= input.numel()
        )

    def _factor_view(self, factor: torch.Tensor, dims: int) -> torch.Tensor:
        # One view op ([M, 1|B, *1, features]): these run three times per layer call, and at a small batch
        # the per-op overhead is a measurable part of the layer's time.
        if factor.dim() == 3 and dims == 3:
            return factor
        examples = factor.shape[1] if factor.dim() == 3 else 1
        return factor.reshape(factor.shape[0], examples, *((1,) * (dims - 3)), factor.shape[-1])

    def _members_first(self, out: torch.Tensor, members: int, size: int) -> torch.Tensor:
        out = out.unflatten(-1, (members, size)).movedim(-2, 0)  # [M, B, *, size]
        return out.reshape(members * out.shape[1], *out.shape[2:])

    def _combine(
        self, x: torch.Tensor, r: torch.Tensor, s: torch.Tensor, source: torch.Tensor | None = None
    ) -> torch.Tensor:
        """:meth:`_MemberBase._combine` for the common ``[M, B, in]`` input, in seven ops instead of ten.

        ``F.linear`` takes the ``[M, B, in]`` scaled input as it is (one product, no reshape around it) and
        the factors broadcast as ``[M, 1|B, features]``: at a small batch each op's fixed cost (a few
        microseconds) is a measurable part of the layer's time. Same values as the general path (tested).
        """
        if x.dim() != 3 or (r.shape[-1] == 1 and source is not None):
            return super()._combine(x, r, s, source)
        out = F.linear(x * (r if r.dim() == 3 else r.unsqueeze(1)), self.weight)  # [M, B, out]
        s = s if s.dim() == 3 else s.unsqueeze(1)
        out = out * s if self.bias is None else torch.addcmul(self.bias.unsqueeze(1), out, s)
        return out.view(x.shape[0] * x.shape[1], out.shape[2])

    def _product(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        return F.linear(x, weight, bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"num_members={self.num_members}, bias={self.bias is not None}"
        )


class MemberConvBase(_MemberBase):
    """Parameters and batched convolution of a member-vectorized ``nn.Conv1d`` / ``nn.Conv2d``.

    Subclasses set ``spatial_dims`` and ``conv`` (``F.conv1d`` or ``F.conv2d``).
    """

    spatial_dims: ClassVar[int]
    conv: ClassVar[Callable[..., torch.Tensor]]

    def _setup_conv(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...],
        num_members: int,
        stride: int | tuple[int, ...],
        padding: str | int | tuple[int, ...],
        dilation: int | tuple[int, ...],
        groups: int,
        bias: bool,
        padding_mode: str,
        factory: dict[str, Any],
    ) -> None:
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
        self._geometry = geometry
        self.in_channels, self.out_channels = geometry.in_channels, geometry.out_channels
        self.kernel_size, self.stride, self.padding = geometry.kernel_size, geometry.stride, geometry.padding
        self.dilation, self.groups = geometry.dilation, geometry.groups
        self.padding_mode = geometry.padding_mode
        self._setup_shared(num_members, out_channels, bias, factory)

    @property
    def input_size(self) -> int:
        return self.in_channels

    @property
    def output_size(self) -> int:
        return self.out_channels

    def _weight_shape(self) -> tuple[int, ...]:
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    def _check_example(self, x: torch.Tensor) -> None:
        n = self.spatial_dims
        if x.dim() != n + 3 or x.shape[2] != self.in_channels:
            raise ValueError(
                f"input: expected [M * B, {self.in_channels}, {n} spatial dim(s)] (members folded into the "
                f"batch), got shape {[x.shape[0] * x.shape[1], *x.shape[2:]]}"
            )

    def _source_may_help(self, input: torch.Tensor) -> bool:
        kernel = self.out_channels * self.in_channels * math.prod(self.kernel_size)  # W's entries, groups = 1
        return self.in_channels == 1 or (self.groups == 1 and kernel * self.num_members <= input.numel())

    def _factor_view(self, factor: torch.Tensor, dims: int) -> torch.Tensor:
        examples = factor.shape[1] if factor.dim() == 3 else 1  # [M, 1|B, channels, *1], one view op
        return factor.reshape(factor.shape[0], examples, factor.shape[-1], *((1,) * self.spatial_dims))

    def _members_first(self, out: torch.Tensor, members: int, size: int) -> torch.Tensor:
        out = out.view(out.shape[0], members, size, *out.shape[2:]).transpose(0, 1)
        return out.reshape(members * out.shape[1], *out.shape[2:])

    def _product(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        return convolve(type(self).conv, x, weight, bias, self._geometry)

    def extra_repr(self) -> str:
        text = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"num_members={self.num_members}, stride={self.stride}, padding={self.padding}, "
            f"dilation={self.dilation}, groups={self.groups}, bias={self.bias is not None}"
        )
        if self.padding_mode != "zeros":
            text += f", padding_mode={self.padding_mode!r}"
        return text


class _BatchEnsembleMixin:
    """Deterministic fast weights ``r`` ``[M, in]`` and ``s`` ``[M, out]``, and the forward pass."""

    def _setup_fast_weights(self, init: str, std: float, factory: dict[str, Any]) -> None:
        self.fast_weight_init, self.fast_weight_std = check_fast_weight_init(init, std)
        members = self.num_members
        self.r = nn.Parameter(torch.empty(members, self.input_size, **factory))
        self.s = nn.Parameter(torch.empty(members, self.output_size, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Shared weight and biases as the ``torch.nn`` twin; fast weights per ``fast_weight_init``."""
        self.reset_shared_parameters()
        init_fast_weights_(self.r, self.fast_weight_init, self.fast_weight_std)
        init_fast_weights_(self.s, self.fast_weight_init, self.fast_weight_std)

    def member_weights(self) -> torch.Tensor:
        """The ``M`` members' full weights ``W * (s_m r_m^T)``, ``[M, *weight.shape]`` (for inspection).

        For grouped convolutions, ``r`` indexes all input channels; member ``m``'s weight entry
        ``[o, j, ...]`` of group ``g = o // (out / groups)`` is scaled by
        ``s_m[o] * r_m[g * in / groups + j]``.
        """
        return self._scaled_weights(self.r, self.s)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x, source = self._member_input(input)
        if source is not None and self._shared_is_cheaper(source):
            return self._combine_shared(source, self.r, self.s)
        return self._combine(x, self.r, self.s, source)

    def extra_repr(self) -> str:
        text = super().extra_repr()  # type: ignore[misc]
        return f"{text}, fast_weight_init={self.fast_weight_init!r}"


class BatchEnsembleLinear(_BatchEnsembleMixin, MemberLinearBase):
    """``M`` members of an ``nn.Linear`` sharing one weight: ``W_m = W * (s_m r_m^T)`` (Wen et al. 2020).

    Computes ``y_m = ((x_m * r_m) W^T) * s_m + b_m`` for all members with one matrix product.

    Args:
        in_features, out_features, bias, device, dtype: as ``torch.nn.Linear``.
        num_members: ``M``, the ensemble size (Wen et al. use 4).
        fast_weight_init: ``"random_sign"`` (default, entries exactly ``+-1``), ``"normal"``
            (``N(1, fast_weight_std^2)``) or ``"ones"``; see the module docstring.
        fast_weight_std: standard deviation of the ``"normal"`` initialisation (default 0.5).

    Shape:
        input ``[M * B, *, in_features]`` (member ``m`` in rows ``m * B`` to ``(m + 1) * B - 1``); output
        ``[M * B, *, out_features]``.

    Attributes:
        weight: the shared ``W``, ``[out_features, in_features]``.
        r: input fast weights, ``[M, in_features]``.
        s: output fast weights, ``[M, out_features]``.
        bias: per-member biases, ``[M, out_features]`` (or ``None``).

    Example:
        >>> layer = BatchEnsembleLinear(784, 10, num_members=4)
        >>> layer(tile_members(torch.randn(32, 784), 4)).shape
        torch.Size([128, 10])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        num_members: int,
        bias: bool = True,
        *,
        fast_weight_init: str = "random_sign",
        fast_weight_std: float = 0.5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self._setup_linear(in_features, out_features, num_members, bias, factory)
        self._setup_fast_weights(fast_weight_init, fast_weight_std, factory)


class _BatchEnsembleConvNd(_BatchEnsembleMixin, MemberConvBase):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...],
        num_members: int,
        stride: int | tuple[int, ...] = 1,
        padding: str | int | tuple[int, ...] = 0,
        dilation: int | tuple[int, ...] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        fast_weight_init: str = "random_sign",
        fast_weight_std: float = 0.5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self._setup_conv(
            in_channels,
            out_channels,
            kernel_size,
            num_members,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            factory,
        )
        self._setup_fast_weights(fast_weight_init, fast_weight_std, factory)


class BatchEnsembleConv1d(_BatchEnsembleConvNd):
    """``M`` members of an ``nn.Conv1d`` sharing one kernel (Wen et al. 2020), one batched convolution.

    Member ``m`` convolves with ``W * (s_m r_m^T)``: ``r_m`` scales the input channels and ``s_m`` the output
    channels, ``y_m = conv(x_m * r_m, W) * s_m + b_m``.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode,
            device, dtype: as ``torch.nn.Conv1d``.
        num_members: ``M``, the ensemble size.
        fast_weight_init, fast_weight_std: as :class:`BatchEnsembleLinear`.

    Shape:
        input ``[M * B, C_in, L]`` (member-major); output ``[M * B, C_out, L_out]``.
    """

    spatial_dims: ClassVar[int] = 1
    conv = staticmethod(F.conv1d)


class BatchEnsembleConv2d(_BatchEnsembleConvNd):
    """``M`` members of an ``nn.Conv2d`` sharing one kernel (Wen et al. 2020), one batched convolution.

    Member ``m`` convolves with ``W * (s_m r_m^T)``: ``r_m`` scales the input channels and ``s_m`` the output
    channels (broadcast over kernel positions), ``y_m = conv(x_m * r_m, W) * s_m + b_m``.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode,
            device, dtype: as ``torch.nn.Conv2d`` (non-square kernels, strides and paddings included).
        num_members: ``M``, the ensemble size.
        fast_weight_init, fast_weight_std: as :class:`BatchEnsembleLinear`.

    Shape:
        input ``[M * B, C_in, H, W]`` (member-major); output ``[M * B, C_out, H_out, W_out]``.

    Example:
        >>> layer = BatchEnsembleConv2d(3, 8, 3, num_members=4, padding=1)
        >>> layer(tile_members(torch.randn(2, 3, 16, 16), 4)).shape
        torch.Size([8, 8, 16, 16])
    """

    spatial_dims: ClassVar[int] = 2
    conv = staticmethod(F.conv2d)
