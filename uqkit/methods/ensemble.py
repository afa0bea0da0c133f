"""Deep ensembles run as one vectorized computation: :class:`DeepEnsemble`.

A deep ensemble (Lakshminarayanan et al. 2017, "Simple and scalable predictive uncertainty estimation using
deep ensembles") is ``M`` copies of a network trained from independent random initialisations; its
predictive distribution is the mixture ``p(y | x) = (1 / M) sum_m softmax(f_m(x))`` (their Eq. 1 with
uniform weights), which :class:`uqkit.Prediction` forms from the ``[M, B, C]`` member logits.

:class:`DeepEnsemble` keeps the members' parameters *stacked* (one tensor ``[M, *shape]`` per parameter) and
runs all members in one vectorized forward pass, for training as for prediction. Each module of the
factory's architecture is replaced by a member-vectorized twin through a type registry (like
:func:`uqkit.bayesianize_`'s; :func:`register_vectorization` adds entries):

* ``nn.Linear`` -> :class:`StackedLinear`: weights ``[M, out, in]`` and one batched matrix product
  (``torch.baddbmm``) on ``[M, N, in]``, with the weight gradient computed directly in the weight's layout.
* ``nn.Conv1d``/``nn.Conv2d``/``nn.Conv3d`` -> :class:`StackedConv`: a broadcast input (the same batch for
  every member, as at test time or for the first layer) is one convolution with the members' filters side by
  side (``M * out`` output channels); otherwise one convolution per member on the stacked weights (a grouped
  convolution over members folded into channels measured slower, see :class:`StackedConv`).
* ``nn.LayerNorm`` -> :class:`StackedLayerNorm`; ``nn.BatchNorm1d``/``nn.BatchNorm2d``/``nn.BatchNorm3d`` ->
  :class:`StackedBatchNorm` with per-member batch statistics and running statistics ``[M, C]``.
* Parameter-free modules that treat batch elements independently (activations, pooling, ``Flatten``,
  dropout, ``Identity``, ...) -> :class:`FoldedMemberwise`, a :class:`uqkit.nn.members.Memberwise` that
  folds the member dimension into the batch without copying (activations and ``Identity``, which act on
  each entry alone, take the ``[M, B, ...]`` tensor as it is).
* Containers (``nn.Sequential``, ``nn.ModuleList``, ``nn.ModuleDict``) and custom modules without parameters
  or buffers of their own (e.g. a residual block ``x + act(linear(x))``) are kept, with their children
  converted, and run their own ``forward`` on ``[M, B, ...]`` tensors. Such a ``forward`` must be agnostic of
  leading dimensions (elementwise arithmetic, ``torch.cat(..., dim=-1)``); one that reshapes with
  ``x.shape[0]`` or reduces over dimension 0 must be registered (for instance with
  :func:`vmap_vectorization`).
* Anything else with parameters or buffers, and unregistered parameter-free leaf modules, run through
  ``torch.func.vmap`` over ``functional_call`` with stacked parameters (:class:`VmapStacked`). An op that vmap
  cannot batch raises a ``RuntimeError`` naming the module, its position and vmap's message about the op.

Measured on 2 CPU cores (torch 2.13, ``benchmarks/ensembles.py``, 4 members, time relative to a Python loop
over 4 models, rows interleaved in one process; ``benchmarks/results/ensembles.json``, 2026-12-02): MLP
784-512-512-10 training step 0.93x at batch 16 and 0.93x at batch 256, inference 0.61x and 0.96x; LeNet-5
training step 0.73x and 0.97x, inference 0.88x and 0.93x (single ratios move by 0.1-0.2 between runs on
this shared virtual machine). ``torch.func.vmap`` over stacked parameters of the whole model measured, in
the same order, training 1.85x, 1.05x, 0.80x, 1.30x and inference 0.80x, 1.02x, 1.14x, 1.25x, hence the
registry with vmap only as the fallback. On this CPU a stacked product costs about what the members'
separate products cost at large batches (four 784x512 products: 0.74x at batch 16, 1.02x at batch 256);
at small batches most of the gain is the Python and dispatch overhead of ``4 x depth`` module calls.

Inputs: ``ensemble(x)`` takes ``[B, *example_shape]`` (broadcast to every member, an expanded view with no
copy) or ``[M, B, *example_shape]`` (one batch per member, e.g. bootstrap or per-split training). The rank of
one example, ``example_dims``, is what tells the two apart; it is inferred when the architecture's first
leaf module is an ``nn.Linear`` (1), ``nn.Conv1d`` (2), ``nn.Conv2d`` (3) or ``nn.Conv3d`` (4), and must be
given otherwise (e.g. an MLP that starts with ``nn.Flatten``).
"""

from __future__ import annotations

import copy
import itertools
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from torch.nn import functional as F

from uqkit._validation import check_positive_int
from uqkit.nn.dropout import MCDropout
from uqkit.nn.members import Memberwise, with_member_dim

__all__ = [
    "DeepEnsemble",
    "FoldedMemberwise",
    "StackedBatchNorm",
    "StackedConv",
    "StackedLayerNorm",
    "StackedLinear",
    "StackedModule",
    "VmapStacked",
    "register_vectorization",
    "vmap_vectorization",
]


class StackedModule(nn.Module):
    """Base class of member-vectorized twins whose parameters and buffers carry a leading member dimension.

    A twin keeps the source module's parameter and buffer names, each with shape ``[M, *shape]``, so that
    :meth:`member_state` (member ``m``'s tensors, keyed by the source module's names) can rebuild the source
    module of any member.

    Attributes:
        num_members: ``M``.
    """

    num_members: int

    def member_state(self, index: int) -> dict[str, torch.Tensor]:
        """Member ``index``'s parameters and buffers, named as in the source module (views, not copies)."""
        return {
            name: tensor[index]
            for name, tensor in itertools.chain(self.named_parameters(), self.named_buffers())
        }

    def _check_members(self, inputs: torch.Tensor, min_dims: int) -> None:
        if inputs.dim() < min_dims or inputs.shape[0] != self.num_members:
            raise ValueError(
                f"{type(self).__name__} input: expected [M={self.num_members}, B, ...] with at least "
                f"{min_dims} dimensions, got shape {list(inputs.shape)}"
            )


def _stack(modules: Sequence[nn.Module], name: str) -> torch.Tensor | None:
    tensors = [getattr(module, name) for module in modules]
    if tensors[0] is None:
        return None
    return torch.stack([t.detach() for t in tensors])


def _stacked_parameter(modules: Sequence[nn.Module], name: str) -> nn.Parameter | None:
    stacked = _stack(modules, name)
    if stacked is None:
        return None
    return nn.Parameter(stacked, requires_grad=getattr(modules[0], name).requires_grad)


def _is_broadcast(inputs: torch.Tensor) -> bool:
    """Whether ``inputs`` ``[M, ...]`` is one batch expanded to all members (as by ``with_member_dim``)."""
    return inputs.shape[0] > 1 and inputs.stride(0) == 0


class _StackedLinearFunction(torch.autograd.Function):
    """``y_m = x_m W_m^T + b_m`` by ``torch.baddbmm``, with the weight gradient computed in ``W``'s layout.

    Autograd's own backward for ``bmm(x, W.mT)`` returns the weight gradient transposed (strides of
    ``W.mT``), which the gradient accumulation then copies into ``W``'s layout on every step; computing
    ``dW_m = dY_m^T x_m`` directly gives it contiguous. The backward is made of differentiable ops, so higher
    derivatives work.
    """

    @staticmethod
    def forward(inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if bias is None:
            return torch.bmm(inputs, weight.mT)
        return torch.baddbmm(bias.unsqueeze(1), inputs, weight.mT)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        x, weight, bias = inputs
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        grad_x = torch.bmm(grad, weight) if ctx.needs_input_grad[0] else None
        grad_weight = torch.bmm(grad.mT, x) if ctx.needs_input_grad[1] else None
        grad_bias = grad.sum(1) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias


class StackedLinear(StackedModule):
    """``M`` ``nn.Linear`` layers as one batched matrix product.

    ``y_m = x_m W_m^T + b_m`` for every member ``m`` with one ``torch.baddbmm``, also for a broadcast input
    (an expanded view). Reading the weights as one ``[M * out, in]`` matrix for a broadcast input (a single
    ``F.linear``) measured slower on CPU (MLP 784-512-512-10, 4 members, inference at batch 16: 1.07x vs
    0.81x the time of a loop over 4 models), as its batch-major output slows the next layers.

    Args:
        modules: the ``M`` members' ``nn.Linear`` layers (same shapes).

    Shape:
        input ``[M, *, in_features]``, output ``[M, *, out_features]``.
    """

    def __init__(self, modules: Sequence[nn.Linear]) -> None:
        super().__init__()
        self.num_members = len(modules)
        self.in_features = modules[0].in_features
        self.out_features = modules[0].out_features
        self.weight = _stacked_parameter(modules, "weight")
        self.bias = _stacked_parameter(modules, "bias")

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        self._check_members(inputs, 2)
        if inputs.shape[-1] != self.in_features:
            raise ValueError(
                f"StackedLinear input: expected [M, *, {self.in_features}], got shape {list(inputs.shape)}"
            )
        members, middle = inputs.shape[0], inputs.shape[1:-1]
        flat = inputs.reshape(members, -1, self.in_features)
        if torch.is_grad_enabled():
            out = _StackedLinearFunction.apply(flat, self.weight, self.bias)
        else:  # no graph: the same product without autograd.Function's per-call argument binding
            out = _StackedLinearFunction.forward(flat, self.weight, self.bias)
        return out.reshape(members, *middle, self.out_features)

    def extra_repr(self) -> str:
        return (
            f"num_members={self.num_members}, in_features={self.in_features}, "
            f"out_features={self.out_features}, bias={self.bias is not None}"
        )


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


class StackedConv(StackedModule):
    """``M`` convolutions (1-D, 2-D or 3-D) with stacked weights ``[M, out, in / groups, *K]``.

    A broadcast input (one batch for every member, stride 0 along ``M``) with ``groups = 1`` is one
    convolution with the members' filters side by side, ``M * out`` output channels, read back as
    ``[M, B, out, ...]`` (a batch-major view). Any other input runs one convolution per member on its
    slice of the stacked weights. Folding the members into the channels and running one grouped convolution
    with ``M * groups`` groups computes the same, but measured slower than the per-member convolutions on
    CPU (torch 2.13, oneDNN, 2 cores, LeNet-5 with 4 members: 1.65x vs 1.46x the time of a loop over 4
    models in inference at batch 16, 2.34x vs 1.2x for a training step at batch 256), so it is not used.
    Padding modes other than ``'zeros'`` pad explicitly first, as ``nn.Conv*d`` does.

    Args:
        modules: the ``M`` members' ``nn.Conv1d``, ``nn.Conv2d`` or ``nn.Conv3d`` layers (same settings).

    Shape:
        input ``[M, B, C_in, *S_in]``, output ``[M, B, C_out, *S_out]``.
    """

    def __init__(self, modules: Sequence[nn.Conv1d | nn.Conv2d | nn.Conv3d]) -> None:
        super().__init__()
        source = modules[0]
        self.num_members = len(modules)
        self.spatial_dims = len(source.kernel_size)
        self.in_channels = source.in_channels
        self.out_channels = source.out_channels
        self.kernel_size = source.kernel_size
        self.stride = source.stride
        self.padding = source.padding
        self.dilation = source.dilation
        self.groups = source.groups
        self.padding_mode = source.padding_mode
        self.explicit_padding = list(source._reversed_padding_repeated_twice)
        self.weight = _stacked_parameter(modules, "weight")
        self.bias = _stacked_parameter(modules, "bias")

    def _conv(self, inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, groups: int):
        padding = self.padding
        if self.padding_mode != "zeros":
            inputs = F.pad(inputs, self.explicit_padding, mode=self.padding_mode)
            padding = 0
        return _CONV[self.spatial_dims](inputs, weight, bias, self.stride, padding, self.dilation, groups)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        self._check_members(inputs, self.spatial_dims + 3)
        if inputs.dim() != self.spatial_dims + 3 or inputs.shape[2] != self.in_channels:
            raise ValueError(
                f"StackedConv input: expected [M, B, {self.in_channels}, *spatial] with {self.spatial_dims} "
                f"spatial dimension(s), got shape {list(inputs.shape)}"
            )
        members, batch = inputs.shape[:2]
        if _is_broadcast(inputs) and self.groups == 1:
            weight = self.weight.reshape(members * self.out_channels, *self.weight.shape[2:])
            bias = None if self.bias is None else self.bias.reshape(-1)
            out = self._conv(inputs[0], weight, bias, 1)  # [B, M * out, *S]
            return out.view(batch, members, self.out_channels, *out.shape[2:]).transpose(0, 1)
        biases = [None] * members if self.bias is None else self.bias.unbind(0)
        weights = self.weight.unbind(0)
        return torch.stack(
            [self._conv(inputs[m], weights[m], biases[m], self.groups) for m in range(members)]
        )

    def extra_repr(self) -> str:
        return (
            f"num_members={self.num_members}, {self.in_channels}, {self.out_channels}, "
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"groups={self.groups}, bias={self.bias is not None}, padding_mode={self.padding_mode!r}"
        )


class StackedLayerNorm(StackedModule):
    """``M`` ``nn.LayerNorm`` layers: one normalisation, then each member's elementwise affine map.

    Args:
        modules: the ``M`` members' ``nn.LayerNorm`` layers.

    Shape:
        input ``[M, *, *normalized_shape]``, output the same.
    """

    def __init__(self, modules: Sequence[nn.LayerNorm]) -> None:
        super().__init__()
        source = modules[0]
        self.num_members = len(modules)
        self.normalized_shape = tuple(source.normalized_shape)
        self.eps = source.eps
        self.weight = _stacked_parameter(modules, "weight")
        self.bias = _stacked_parameter(modules, "bias")

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        self._check_members(inputs, len(self.normalized_shape) + 1)
        out = F.layer_norm(inputs, self.normalized_shape, None, None, self.eps)
        middle = (1,) * (inputs.dim() - 1 - len(self.normalized_shape))
        if self.weight is not None:
            out = out * self.weight.view(self.num_members, *middle, *self.normalized_shape)
        if self.bias is not None:
            out = out + self.bias.view(self.num_members, *middle, *self.normalized_shape)
        return out

    def extra_repr(self) -> str:
        return f"num_members={self.num_members}, {self.normalized_shape}, eps={self.eps}"


class StackedBatchNorm(StackedModule):
    """``M`` batch-norm layers (1-D, 2-D or 3-D), each with its own batch and running statistics.

    The members are folded into the channels, ``[M, B, C, *S] -> [B, M * C, *S]``, so one
    ``F.batch_norm`` computes each member's statistics over its own batch, updates each member's running
    statistics (buffers ``[M, C]``, read as ``[M * C]`` views) and applies each member's affine map. Training
    and eval behaviour (momentum, cumulative averages with ``momentum=None``, ``track_running_stats``) are
    those of ``nn.BatchNorm*d``.

    Args:
        modules: the ``M`` members' ``nn.BatchNorm1d``, ``nn.BatchNorm2d`` or ``nn.BatchNorm3d`` layers.

    Shape:
        input ``[M, B, C, *S]`` (``[M, B, C]`` or ``[M, B, C, L]`` for 1-D), output the same.
    """

    def __init__(self, modules: Sequence[nn.modules.batchnorm._BatchNorm]) -> None:
        super().__init__()
        source = modules[0]
        self.num_members = len(modules)
        self.num_features = source.num_features
        self.eps = source.eps
        self.momentum = source.momentum
        self.track_running_stats = source.track_running_stats
        self.weight = _stacked_parameter(modules, "weight")
        self.bias = _stacked_parameter(modules, "bias")
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            self.register_buffer(name, _stack(modules, name))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        self._check_members(inputs, 3)
        if inputs.shape[2] != self.num_features:
            raise ValueError(
                f"StackedBatchNorm input: expected [M, B, {self.num_features}, ...], got shape "
                f"{list(inputs.shape)}"
            )
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked[0])
        use_batch_stats = self.training or self.running_mean is None
        track = not self.training or self.track_running_stats
        members, batch = inputs.shape[:2]
        folded = inputs.transpose(0, 1).reshape(batch, members * self.num_features, *inputs.shape[3:])
        out = F.batch_norm(
            folded,
            self.running_mean.view(-1) if track and self.running_mean is not None else None,
            self.running_var.view(-1) if track and self.running_var is not None else None,
            None if self.weight is None else self.weight.reshape(-1),
            None if self.bias is None else self.bias.reshape(-1),
            use_batch_stats,
            factor,
            self.eps,
        )
        return out.view(batch, members, self.num_features, *out.shape[2:]).transpose(0, 1)

    def extra_repr(self) -> str:
        members, features = self.num_members, self.num_features
        return f"num_members={members}, {features}, eps={self.eps}, momentum={self.momentum}"


class VmapStacked(StackedModule):
    """Any module, vectorized with ``torch.func.vmap`` over ``functional_call`` with stacked parameters.

    The fallback for modules of no registered type. Parameters and buffers are stacked with
    ``torch.func.stack_module_state`` and kept, under the source's names, in a copy of the source module
    (``self.module``), which ``functional_call`` runs once per member under ``vmap`` (with
    ``randomness="different"``: dropout inside draws independent masks per member).

    Args:
        modules: the ``M`` members' modules (same type and shapes).
        name: the module's qualified name in the architecture, for error messages.

    Shape:
        every tensor argument ``[M, ...]`` (member ``m`` gets ``[...]``), output ``[M, ...]``.
    """

    def __init__(self, modules: Sequence[nn.Module], name: str = "") -> None:
        super().__init__()
        self.num_members = len(modules)
        self.source_name = name
        params, buffers = stack_module_state(list(modules))
        self.module = copy.deepcopy(modules[0])
        for key, value in itertools.chain(params.items(), buffers.items()):
            owner_name, _, attribute = key.rpartition(".")
            owner = self.module.get_submodule(owner_name)
            if attribute in owner._parameters:
                requires_grad = owner._parameters[attribute].requires_grad
                owner._parameters[attribute] = nn.Parameter(value.detach(), requires_grad=requires_grad)
            else:
                owner._buffers[attribute] = value.detach()

    def member_state(self, index: int) -> dict[str, torch.Tensor]:
        return {
            name: tensor[index]
            for name, tensor in itertools.chain(self.module.named_parameters(), self.module.named_buffers())
        }

    def forward(self, *inputs: Any) -> Any:
        for value in inputs:
            if isinstance(value, torch.Tensor):
                self._check_members(value, 1)
        params = dict(self.module.named_parameters())
        buffers = dict(self.module.named_buffers())
        in_dims = tuple(0 if isinstance(v, torch.Tensor) else None for v in inputs)

        def one_member(member_params, member_buffers, *member_inputs):
            return functional_call(self.module, (member_params, member_buffers), member_inputs)

        try:
            batched = vmap(one_member, in_dims=(0, 0, *in_dims), randomness="different")
            return batched(params, buffers, *inputs)
        except RuntimeError as error:
            where = f" at {self.source_name!r}" if self.source_name else ""
            raise RuntimeError(
                f"DeepEnsemble: {type(self.module).__name__}{where} has no registered stacked implementation "
                f"(registered: {', '.join(_registered_names())}) and torch.func.vmap cannot run it: {error}. "
                "Register one with uqkit.methods.register_vectorization."
            ) from error

    def extra_repr(self) -> str:
        return f"num_members={self.num_members}, torch.func.vmap over {type(self.module).__name__}"


Converter = Callable[[Sequence[nn.Module], str], nn.Module]
"""``converter(modules, qualified_name) -> vectorized module``: the ``M`` members' modules at one position."""

_REGISTRY: dict[type[nn.Module], Converter] = {}


def register_vectorization(module_type: type[nn.Module], converter: Converter) -> None:
    """Teach :class:`DeepEnsemble` to vectorize modules of exactly ``module_type``.

    Args:
        module_type: the module class (matched exactly, not by subclass).
        converter: ``converter(modules, qualified_name) -> module`` receives the ``M`` members' modules at
            one position and returns one module mapping ``[M, B, ...]`` to ``[M, B, ...]``. It must return a
            :class:`StackedModule` (whose :meth:`~StackedModule.member_state` rebuilds each member) or a
            module without parameters and buffers. :func:`vmap_vectorization` and folding into the batch
            (``lambda modules, name: FoldedMemberwise(modules[0])``) are ready-made converters.

    Raises:
        TypeError: for a ``module_type`` that is not an ``nn.Module`` subclass or a non-callable converter.
    """
    if not isinstance(module_type, type) or not issubclass(module_type, nn.Module):
        raise TypeError(f"module_type: expected a subclass of nn.Module, got {module_type!r}")
    if not callable(converter):
        raise TypeError(f"converter: expected a callable, got {type(converter).__name__}")
    _REGISTRY[module_type] = converter


def vmap_vectorization(modules: Sequence[nn.Module], name: str = "") -> nn.Module:
    """Converter running the modules through ``torch.func.vmap`` (:class:`VmapStacked`)."""
    return VmapStacked(modules, name)


class FoldedMemberwise(Memberwise):
    """:class:`~uqkit.nn.members.Memberwise` that folds members into the batch without copying.

    The stacked layers hand on tensors in one of two layouts: member-major (``[M, B, ...]`` contiguous) or
    batch-major (a transposed view of a contiguous ``[B, M, ...]``, which is what a grouped convolution or a
    broadcast matrix product produces). A member-agnostic module treats the rows of a folded batch
    independently, so any fold order is exact: member-major inputs fold to ``[M * B, ...]``, batch-major ones
    to ``[B * M, ...]``, both views, and the output keeps the input's layout (so the next stacked layer can
    fold it for free too). ``Memberwise`` alone would copy a batch-major tensor.

    With ``deterministic=True`` (modules whose output is a function of their input, not dropout) an input
    that is one batch expanded to all members (stride 0 along ``M``, as ``DeepEnsemble`` passes a
    ``[B, ...]`` input on) runs once and its output is expanded again (a view), so that the broadcast reaches
    the first layer with parameters.

    With ``elementwise=True`` (activations, ``nn.Identity``: modules that act on each entry alone and accept
    any shape) a non-broadcast input is passed to the module as it is, ``[M, B, ...]``, with no fold: the
    output keeps the input's layout, and two reshapes per call are saved.

    Args:
        module: a module without parameters that treats batch elements independently.
        deterministic: whether the module's output is a function of its input (default ``True``).
        elementwise: whether the module acts on each entry alone, for any input shape (default ``False``).

    Shape:
        input ``[M, B, *in_shape]``, output ``[M, B, *out_shape]``.
    """

    def __init__(self, module: nn.Module, deterministic: bool = True, elementwise: bool = False) -> None:
        super().__init__(module)
        self.deterministic = deterministic
        self.elementwise = elementwise

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if inputs.dim() < 2:
            raise ValueError(f"inputs: expected [M, B, ...], got shape {list(inputs.shape)}")
        members, batch = inputs.shape[:2]
        if self.deterministic and _is_broadcast(inputs):
            outputs = self.module(inputs[0])
            return outputs.unsqueeze(0).expand(members, *outputs.shape)
        if self.elementwise:
            return self.module(inputs)
        swapped = inputs.transpose(0, 1)
        if not inputs.is_contiguous() and swapped.is_contiguous():  # batch-major
            outputs = self.module(swapped.reshape(batch * members, *inputs.shape[2:]))
            return outputs.view(batch, members, *outputs.shape[1:]).transpose(0, 1)
        return super().forward(inputs)

    def extra_repr(self) -> str:
        if self.elementwise:
            return f"elementwise on [M, B, ...], deterministic={self.deterministic}"
        return f"members folded into the batch, deterministic={self.deterministic}"


def _memberwise(modules: Sequence[nn.Module], name: str) -> nn.Module:
    return FoldedMemberwise(modules[0], deterministic=False)


def _shared_memberwise(modules: Sequence[nn.Module], name: str) -> nn.Module:
    return FoldedMemberwise(modules[0])


def _elementwise(modules: Sequence[nn.Module], name: str) -> nn.Module:
    return FoldedMemberwise(modules[0], elementwise=True)


def _registered_names() -> list[str]:
    return sorted(t.__name__ for t in _REGISTRY)


register_vectorization(nn.Linear, lambda modules, name: StackedLinear(modules))
for _conv in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
    register_vectorization(_conv, lambda modules, name: StackedConv(modules))
register_vectorization(nn.LayerNorm, lambda modules, name: StackedLayerNorm(modules))
for _norm in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
    register_vectorization(_norm, lambda modules, name: StackedBatchNorm(modules))
for _random in (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, MCDropout):
    register_vectorization(_random, _memberwise)  # each member draws its own mask (distinct rows once folded)
for _activation in (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid,
    nn.Tanh, nn.Softplus, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.LogSigmoid, nn.Softsign,
    nn.Tanhshrink, nn.Identity,
):  # fmt: skip
    register_vectorization(_activation, _elementwise)
for _deterministic in (
    # pooling
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    # shape
    nn.Flatten, nn.Unflatten,
):  # fmt: skip
    register_vectorization(_deterministic, _shared_memberwise)


def _has_state(module: nn.Module, recurse: bool) -> bool:
    return any(True for _ in itertools.chain(module.parameters(recurse), module.buffers(recurse)))


def _check_foldable(module: nn.Module, name: str) -> None:
    """Refuse parameter-free settings that act across the batch dimension (folding would mix members)."""
    dims = []
    if isinstance(module, nn.Flatten):
        dims = [module.start_dim]
    elif isinstance(module, nn.Unflatten):
        dims = [module.dim]
    if 0 in dims:
        raise ValueError(
            f"DeepEnsemble: {type(module).__name__} at {name!r} acts on the batch dimension (dim 0), which "
            "the members share once folded into the batch; expected a module that treats examples "
            "independently"
        )


class _Converter:
    """Builds the vectorized twin of an architecture from the ``M`` members, recording every stateful leaf."""

    def __init__(self) -> None:
        self.memo: dict[int, nn.Module] = {}
        self.leaves: list[tuple[str, str]] = []  # (name in the members, name in the twin)

    def convert(self, modules: Sequence[nn.Module], name: str, twin_name: str) -> nn.Module:
        key = id(modules[0])
        if key in self.memo:  # a module shared by several names stays shared
            return self.memo[key]
        source = modules[0]
        converter = _REGISTRY.get(type(source))
        structural = not _has_state(source, recurse=False) and any(True for _ in source.children())
        if converter is None and structural:
            new = self._recurse(modules, name, twin_name)
        else:
            if converter is None:
                converter = vmap_vectorization
            elif converter in (_memberwise, _shared_memberwise):
                _check_foldable(source, name)
            new = converter(modules, name)
            if isinstance(new, StackedModule):
                self.leaves.append((name, twin_name))
            elif _has_state(new, recurse=True):
                raise TypeError(
                    f"converter for {type(source).__name__}: expected a StackedModule or a module without "
                    f"parameters and buffers, got {type(new).__name__} with state"
                )
            new.train(source.training)
        self.memo[key] = new
        return new

    def _recurse(self, modules: Sequence[nn.Module], name: str, twin_name: str) -> nn.Module:
        """A shallow copy of a container/custom module with every child converted."""
        new = copy.copy(modules[0])
        new.__dict__ = modules[0].__dict__.copy()
        new._parameters, new._buffers = OrderedDict(), OrderedDict()
        new._modules = OrderedDict()
        for child_name in modules[0]._modules:
            children = [module._modules[child_name] for module in modules]
            if children[0] is None:
                new._modules[child_name] = None
                continue
            prefix, twin_prefix = (f"{name}." if name else ""), (f"{twin_name}." if twin_name else "")
            new._modules[child_name] = self.convert(children, prefix + child_name, twin_prefix + child_name)
        return new


_INFERRED_DIMS = {nn.Linear: 1, nn.Conv1d: 2, nn.Conv2d: 3, nn.Conv3d: 4}


def _infer_example_dims(model: nn.Module) -> int:
    first = next((m for m in model.modules() if not any(True for _ in m.children())), None)
    if type(first) in _INFERRED_DIMS:
        return _INFERRED_DIMS[type(first)]
    found = type(first).__name__ if first is not None else "no module"
    raise ValueError(
        "example_dims: expected an int (the number of dimensions of one example: 1 for [D], 3 for "
        f"[C, H, W]); it can only be inferred when the first leaf module is nn.Linear or nn.Conv1d/2d/3d, "
        f"found {found}"
    )


def _architecture(module: nn.Module) -> list[tuple[Any, ...]]:
    layout: list[tuple[Any, ...]] = [(name, type(m)) for name, m in module.named_modules()]
    for name, tensor in itertools.chain(module.named_parameters(), module.named_buffers()):
        layout.append((name, tuple(tensor.shape), tensor.dtype, tensor.device))
    return layout


def _check_members(members: list[nn.Module]) -> None:
    for index, member in enumerate(members):
        if not isinstance(member, nn.Module):
            raise TypeError(f"factory: expected it to return an nn.Module, got {type(member).__name__}")
        tensors = list(itertools.chain(member.parameters(), member.buffers()))
        by_module = [
            id(t)
            for m in {id(m): m for m in member.modules()}.values()
            for t in itertools.chain(m.parameters(recurse=False), m.buffers(recurse=False))
        ]
        if len(by_module) != len(tensors):
            raise ValueError(
                "factory: expected no tensor shared by two different modules (tied weights), got a model "
                f"where {len(by_module) - len(tensors)} parameter(s)/buffer(s) are tied; stacking would "
                "untie them"
            )
        if index and _architecture(member) != _architecture(members[0]):
            first, other = _architecture(members[0]), _architecture(member)
            difference = next((a, b) for a, b in itertools.zip_longest(first, other) if a != b)
            raise ValueError(
                f"factory: expected every call to build the same architecture, call 0 and call {index} "
                f"differ: {difference[0]} vs {difference[1]}"
            )
    seen: set[int] = set()
    for member in members:
        ids = {id(t) for t in itertools.chain(member.parameters(), member.buffers())}
        if ids & seen:
            raise ValueError(
                "factory: expected a new model on every call (independent initialisations), got models that "
                "share parameters or buffers (does the factory return the same model each time?)"
            )
        seen |= ids


class DeepEnsemble(nn.Module):
    """``M`` independently initialised networks with stacked parameters, run as one vectorized computation.

    Deep ensembles (Lakshminarayanan et al. 2017): the factory is called ``num_members`` times (independent
    initialisations from the global random generator, in order: ``torch.manual_seed(s)`` before building
    gives the same members as ``[factory() for _ in range(M)]``), the members' parameters are stacked into
    ``[M, *shape]`` parameters of this module, and every layer is replaced by its member-vectorized twin
    (see the module docstring for the registry and the vmap fallback). All members train together with one
    optimizer over ``ensemble.parameters()``: with a per-element optimizer (SGD, Adam, ...) and a loss that is
    a sum of per-member losses, this is exactly ``M`` independent trainings on the same batches (or on their
    own batches, with ``[M, B, ...]`` inputs).

    Args:
        factory: ``factory() -> nn.Module`` building one member, mapping ``[B, *example_shape]`` to
            ``[B, *out_shape]`` (``[B, C]`` logits for a classifier). Every call must build the same
            architecture with new parameters.
        num_members: ``M >= 1``.
        example_dims: the number of dimensions of one example (1 for feature vectors ``[D]``, 2 for
            ``[C, L]``, 3 for images ``[C, H, W]``); inferred when the first leaf module is ``nn.Linear`` or
            ``nn.Conv1d/2d/3d``, required otherwise.

    Shape:
        input ``[B, *example_shape]`` (broadcast: every member sees the same batch) or
        ``[M, B, *example_shape]`` (member ``m`` sees ``x[m]``); output ``[M, B, *out_shape]``.

    Attributes:
        num_members: ``M``.
        example_dims: the rank of one example.
        network: the member-vectorized twin of the architecture (its parameters are the stacked ones).
        member_vectorized: ``True``: :func:`uqkit.predict` reads the leading output dimension as members.

    Raises:
        TypeError: for a ``factory`` that is not callable or does not return an ``nn.Module``.
        ValueError: for a bad ``num_members`` or ``example_dims``, for calls of ``factory`` that build
            different architectures or share parameters, or for tied weights.

    Example:
        >>> net = lambda: nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 3))
        >>> ensemble = uqkit.DeepEnsemble(net, 4)
        >>> logits = ensemble(x)  # [4, B, 3]
        >>> # the sum of the members' mean cross-entropies; labels [B] broadcast, never repeated:
        >>> loss = 4 * F.cross_entropy(logits.permute(1, 2, 0), y[:, None].expand(-1, 4))
        >>> pred = uqkit.predict(ensemble, x, num_samples=4)
        >>> members = ensemble.members()  # 4 ordinary modules
    """

    member_vectorized = True

    def __init__(
        self, factory: Callable[[], nn.Module], num_members: int, *, example_dims: int | None = None
    ) -> None:
        super().__init__()
        if isinstance(factory, nn.Module) or not callable(factory):
            raise TypeError(
                "factory: expected a callable building a new member on each call (e.g. lambda: Net()), got "
                f"{type(factory).__name__}"
            )
        self.num_members = check_positive_int(num_members, "num_members")
        members = [factory() for _ in range(self.num_members)]
        _check_members(members)
        if example_dims is None:
            example_dims = _infer_example_dims(members[0])
        self.example_dims = check_positive_int(example_dims, "example_dims")
        converter = _Converter()
        self.network = converter.convert(members, "", "network")
        self.__dict__["_leaves"] = converter.leaves
        self.__dict__["_template"] = copy.deepcopy(members[0]).to("meta")  # architecture only, no memory

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.network(with_member_dim(inputs, self.num_members, self.example_dims))

    def members(self) -> list[nn.Module]:
        """The ``M`` members as ordinary modules of the factory's architecture, with copies of their weights.

        Each is independent of the ensemble (changing one changes neither the others nor the ensemble) and
        is in the ensemble's training mode, on its device and dtype.

        Returns:
            A list of ``M`` ``nn.Module``.
        """
        exported = []
        for index in range(self.num_members):
            member = copy.deepcopy(self._template)
            for name, twin_name in self._leaves:
                target = member.get_submodule(name)
                for key, value in self.get_submodule(twin_name).member_state(index).items():
                    owner_name, _, attribute = key.rpartition(".")
                    owner = target.get_submodule(owner_name)
                    tensor = value.detach().clone()
                    if attribute in owner._parameters:
                        requires_grad = owner._parameters[attribute].requires_grad
                        owner._parameters[attribute] = nn.Parameter(tensor, requires_grad=requires_grad)
                    else:
                        owner._buffers[attribute] = tensor
            tensors = itertools.chain(member.named_parameters(), member.named_buffers())
            left = [name for name, tensor in tensors if tensor.is_meta]
            if left:
                raise RuntimeError(f"DeepEnsemble.members: no stacked tensor found for {left}")
            exported.append(member.train(self.training))
        return exported

    def extra_repr(self) -> str:
        return f"num_members={self.num_members}, example_dims={self.example_dims}"
