"""Deep ensembles run as one vectorized computation: :class:`DeepEnsemble`.

A deep ensemble (Lakshminarayanan et al. 2017, "Simple and scalable predictive uncertainty estimation using
deep ensembles") is ``M`` copies of a network trained from independent random initialisations; its
predictive distribution is the mixture ``p(y | x) = (1 / M) sum_m softmax(f_m(x))`` (their Eq. 1 with
uniform weights), which :func:`uqkit.predict` forms from the members' logits.

:class:`DeepEnsemble` keeps the members' parameters *stacked* (one tensor ``[M, *shape]`` per parameter) and
runs all members in one vectorized forward pass, for training as for prediction. The members travel folded
into the batch, member-major (:mod:`uqkit.nn.members`): ``ensemble(x)`` tiles every batch-shaped tensor input
``[B, ...]`` to ``[M * B, ...]`` (row ``m * B + b`` is member ``m``'s copy of example ``b``), runs the
architecture's own ``forward`` on that ordinary-looking batch, and returns what the architecture returns
(``[M * B, C]`` logits, or the object, dict or tuple a model-zoo model returns). Code that checks or reads
shapes (``x.shape[1] == channels``, ``batch_size, seq_len = input_ids.shape``) therefore runs unchanged.

Each module of the factory's architecture with parameters is replaced by a member-vectorized twin through a
type registry (like :func:`uqkit.bayesianize_`'s; :func:`register_vectorization` adds entries). A twin views
its ``[M * B, ...]`` input as ``[M, B, ...]`` and applies member ``m``'s weights to rows ``m * B`` to
``(m + 1) * B - 1``:

* ``nn.Linear`` -> :class:`StackedLinear` (:mod:`uqkit.nn.stacked`, uqkit's one stacked linear layer, also
  the layer of the UCI regression stacks): weights ``[M, out, in]`` and one batched matrix product
  (``torch.baddbmm``) on ``[M, B * T, in]`` (inputs with extra dimensions, ``[M * B, T, in]``, included), with
  the weight gradient computed directly in the weight's layout.
* ``nn.Conv1d``/``nn.Conv2d``/``nn.Conv3d`` -> :class:`StackedConv`; ``nn.Embedding`` ->
  :class:`StackedEmbedding`; ``nn.LayerNorm`` -> :class:`StackedLayerNorm`; ``nn.GroupNorm`` ->
  :class:`StackedGroupNorm`; ``nn.BatchNorm1d/2d/3d`` -> :class:`StackedBatchNorm` (per-member batch and
  running statistics). Attention projections are ``nn.Linear``.
* Parameter-free modules (activations, pooling, ``Flatten``, dropout, ``Identity``, ...) are kept as they
  are: the batch is an ordinary batch, and dropout draws its own mask for every row, hence every member.
  One exception, for speed only: ``nn.MaxPool2d`` with non-overlapping windows becomes
  :class:`WindowMaxPool2d`, the same values without torch's CPU pooling indices when no gradient is needed.
* Containers and custom modules without parameters of their own (a residual block, a transformer layer, a
  whole Hugging Face model) are kept, with their children converted, and run their own ``forward``. Buffers
  of their own that are equal in every member (a transformer's ``position_ids``) are shared.
* Anything else with parameters or buffers (a module with a parameter of its own, such as a vision
  transformer's embeddings with their class token) runs through ``torch.func.vmap`` over
  ``functional_call`` with stacked parameters (:class:`VmapStacked`, positional and keyword inputs), the
  fallback. It answers attribute reads (``embeddings.patch_embeddings.projection.weight.dtype``) from the
  module it wraps. An op that vmap cannot batch raises a ``RuntimeError`` naming the module.

Every module must treat dimension 0 as the batch (as ``nn.Linear`` on ``[B, T, D]`` does); a module that
sees time-major ``[T, B, D]`` inputs would mix members.

**Inference member by member.** A folded pass's activations are ``M`` times one member's. Without gradients,
on CPU, for a batch of at least :data:`MEMBER_BY_MEMBER_MIN_BATCH` (64) examples and at least
:attr:`DeepEnsemble.member_by_member_rows` (default :data:`MEMBER_BY_MEMBER_ROWS`, 512) folded rows
``M * B``, :class:`DeepEnsemble` instead runs the architecture's ``forward`` once per member on the
un-tiled ``[B, ...]`` inputs, each twin computing that member's output with its slice ``m`` of the stacked
tensors (:func:`running_member`), and concatenates the outputs member-major: the same values, with the
memory footprint of one model on ``B`` rows. It applies when every module of the network with parameters
or buffers can run one member (a twin whose :meth:`StackedModule.runs_one_member` says so: the built-in
twins, batch norm with running statistics, not :class:`VmapStacked`; or buffers shared by all members;
not, e.g., a :class:`uqkit.nn.dropout.MemberDropout` put in later, which reads the folded rows), outside
:func:`uqkit.nn.members.pretiled`, and when every tensor of the first member's output is ``[B, ...]``
(anything else, e.g. a mean over the batch, runs the folded pass). Parameter-free modules must treat rows
independently, as in the folded pass. Why:
with glibc's allocator a folded pass's large temporaries (LeNet-5's first convolution gives ``M * B x 6 x 28
x 28``) are returned to the kernel between passes and page-faulted back on every pass, and they outgrow the
caches. Measured with ``benchmarks/member_by_member.py`` (one thread, torch 2.13, both strategies
interleaved, thread CPU time, a shared 2-core machine): member by member took 0.44x-0.69x the folded pass's
time for LeNet-5 in every cell the rule picks (``M * B`` = 512 to 3,072; 4,600-63,000 page faults per
folded call, at most a few hundred member by member) and 0.81x-0.99x for the MLP 784-512-512-10, whose
activations are narrow; in the cells it leaves folded it took 0.97x-1.30x (small batches, where the
per-member calls cost more than the folding saves). ``ensemble.member_by_member_rows = None`` always folds.

**Narrow networks fold on several threads.** The first member-by-member pass for inputs of a new shape also
measures the bytes per example of the widest tensor a twin returns (forward hooks, that pass only). With
more than one torch thread, a network whose widest folded activation, ``M * B`` times that, stays under
:data:`MEMBER_BY_MEMBER_BYTES` (8 MiB) runs folded from the next call on: its matrix products are then
batched over the members (``baddbmm``, each thread a whole member's product), which the per-member products
are not. On one thread the products gain nothing from batching and member by member avoids the folded
pass's page faults (the measurements above), so the rule is unchanged there. Measured with
``benchmarks/ensembles.py`` on 2 threads (2-core AMD EPYC, torch 2.13, each run at high priority beside
other jobs): the MLP 784-512-512-10 at ``M = 4``, ``B = 256`` (2 MiB folded) took 0.86-0.91x the loop over 4
models folded (from the un-tiled input, below) against 1.02-1.06x member by member (commit 347ffc5, which
always folded: 0.87-0.99x); LeNet-5 (19 MiB) stays member by member. How often a folded pass page-faults
depends on the process's allocation history: in a fresh process that only predicts, the MLP's folded pass
faulted about 1,000 times per call in most runs and took 1.07-1.16x the loop (347ffc5: 0.89-1.19x).

**A chain starts on the un-tiled input.** For an ``nn.Sequential`` network (its own ``forward``) whose
first module with parameters is a ``StackedLinear`` or a ``StackedConv`` with ``groups = 1``, after
``nn.Flatten`` / ``nn.Identity`` modules only, the folded pass never tiles the input: the first twin
multiplies the ``[B, ...]`` batch once by the members' weights side by side (as it does for a tiled input,
:func:`~uqkit.nn.members.tiled_source`) and the rest of the chain runs on its member-major output. The
result is the same, without the ``M``-fold copy of the input (3 MiB for the MLP at ``B = 256``, which also
made the folded pass fault more often). Not taken when one of these modules has forward hooks (they would
see the un-tiled input), or for a module in front that could treat each member's copy of a row differently
(e.g. dropout).

Measured on 2 CPU cores (torch 2.13, ``benchmarks/ensembles.py``, 4 members, time relative to a Python loop
over 4 models; ``benchmarks/results/ensembles.json``): see docs/efficient_ensembles.md. ``torch.func.vmap``
over stacked parameters of the whole model measured slower than the stacked twins at small batches (MLP
training step 1.85x vs 0.93x a loop at batch 16), hence the registry with vmap only as the fallback.
"""

from __future__ import annotations

import copy
import itertools
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from torch.nn import functional as F
from torch.utils import _pytree as pytree

from uqkit._validation import check_positive_int
from uqkit.nn.members import (
    MEMBERS_ATTRIBUTE,
    folded_batch,
    inputs_pretiled,
    running_member,
    set_folded_batch,
    set_running_member,
    tile_inputs,
    tiled_source,
)
from uqkit.nn.stacked import StackedLinear, StackedModule, stack_tensors, stacked_parameter

__all__ = [
    "MEMBER_BY_MEMBER_BYTES",
    "MEMBER_BY_MEMBER_MIN_BATCH",
    "MEMBER_BY_MEMBER_ROWS",
    "DeepEnsemble",
    "StackedBatchNorm",
    "StackedConv",
    "StackedEmbedding",
    "StackedGroupNorm",
    "StackedLayerNorm",
    "StackedLinear",
    "StackedModule",
    "VmapStacked",
    "WindowMaxPool2d",
    "register_vectorization",
    "running_member",
    "vmap_vectorization",
]


MEMBER_BY_MEMBER_ROWS = 512
"""Default of :attr:`DeepEnsemble.member_by_member_rows`: without gradients, a folded batch of at least this
many rows (``M * B``) runs member by member (see :class:`DeepEnsemble`)."""

MEMBER_BY_MEMBER_MIN_BATCH = 64
"""Member-by-member inference needs at least this many examples per member, so that the per-call cost of the
network's forward (``M`` calls instead of one) is spread over enough rows."""

MEMBER_BY_MEMBER_BYTES = 8 * 2**20
"""With more than one torch thread, member-by-member inference also needs the folded pass's widest activation
(the largest output of a twin, on ``M * B`` rows, as measured in the first member-by-member pass) to take at
least this many bytes; a narrower network (an MLP) runs folded, where its matrix products are batched over
the members (see :class:`DeepEnsemble`)."""


def _global_forward_hooks() -> bool:
    """Whether a global module forward (pre-)hook is registered (``register_module_forward_hook``)."""
    hooks = torch.nn.modules.module
    names = ("_global_forward_hooks", "_global_forward_pre_hooks")
    return any(getattr(hooks, name, None) for name in names)


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


class StackedConv(StackedModule):
    """``M`` convolutions (1-D, 2-D or 3-D) with stacked weights ``[M, out, in / groups, *K]``.

    An input known to be ``M`` tiles of one batch (:func:`uqkit.nn.members.tiled_source`, e.g. the first
    layer of an ensemble; or the un-tiled batch itself at the start of a :class:`DeepEnsemble`'s
    ``nn.Sequential`` chain) with ``groups = 1`` is one convolution of the un-tiled batch with the members'
    filters side by side, ``M * out`` output channels, copied into member-major rows. Any other input runs
    one convolution per member on its ``B`` rows and its slice of the stacked weights. Folding the members
    into the channels and running one grouped convolution with ``M * groups`` groups computes the same, but
    measured slower than the per-member convolutions on CPU (torch 2.13, oneDNN, 2 cores, LeNet-5 with 4
    members: 1.65x vs 1.46x the time of a loop over 4 models in inference at batch 16, 2.34x vs 1.2x for a
    training step at batch 256), so it is not used. Padding modes other than ``'zeros'`` pad explicitly
    first, as ``nn.Conv*d`` does.

    Args:
        modules: the ``M`` members' ``nn.Conv1d``, ``nn.Conv2d`` or ``nn.Conv3d`` layers (same settings).

    Shape:
        input ``[M * B, C_in, *S_in]``, output ``[M * B, C_out, *S_out]``.
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
        self.weight = stacked_parameter(modules, "weight")
        self.bias = stacked_parameter(modules, "bias")

    def _conv(self, inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, groups: int):
        padding = self.padding
        if self.padding_mode != "zeros":
            inputs = F.pad(inputs, self.explicit_padding, mode=self.padding_mode)
            padding = 0
        return _CONV[self.spatial_dims](inputs, weight, bias, self.stride, padding, self.dilation, groups)

    def runs_one_member(self) -> bool:
        return True

    def _accepts_shared(self, source: torch.Tensor) -> bool:
        shape_ok = source.dim() == self.spatial_dims + 2 and source.shape[1] == self.in_channels
        return self.groups == 1 and shape_ok

    def _forward_shared(self, source: torch.Tensor) -> torch.Tensor:
        """Every member's output ``[M * B, out, *S]`` (member-major) for one batch ``[B, in, *S]`` that all
        members read (``groups = 1``): one convolution with the members' filters side by side."""
        members = self.num_members
        weight = self.weight.reshape(members * self.out_channels, *self.weight.shape[2:])
        bias = None if self.bias is None else self.bias.reshape(-1)
        out = self._conv(source, weight, bias, 1)  # [B, M * out, *S]
        out = out.view(out.shape[0], members, self.out_channels, *out.shape[2:]).transpose(0, 1)
        return out.reshape(members * out.shape[1], *out.shape[2:])

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if inputs.dim() != self.spatial_dims + 2 or inputs.shape[1] != self.in_channels:
            raise ValueError(
                f"StackedConv input: expected [M * B, {self.in_channels}, *spatial] with {self.spatial_dims} "
                f"spatial dimension(s), got shape {list(inputs.shape)}"
            )
        member = running_member()
        if member is not None:
            bias = None if self.bias is None else self.bias[member]
            return self._conv(inputs, self.weight[member], bias, self.groups)
        members = self.num_members
        source = tiled_source(inputs, members)
        if source is not None and self.groups == 1:
            return self._forward_shared(source)
        split, batch = self._split_members(inputs)
        biases = [None] * members if self.bias is None else self.bias.unbind(0)
        weights = self.weight.unbind(0)
        outputs = [self._conv(split[m], weights[m], biases[m], self.groups) for m in range(members)]
        if split.shape[1] == batch:
            return torch.cat(outputs)  # [M * B, out, *S], member-major: the stacked outputs, one copy
        return self._join_members(torch.stack(outputs), batch)

    def extra_repr(self) -> str:
        return (
            f"num_members={self.num_members}, {self.in_channels}, {self.out_channels}, "
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"groups={self.groups}, bias={self.bias is not None}, padding_mode={self.padding_mode!r}"
        )


class StackedEmbedding(StackedModule):
    """``M`` ``nn.Embedding`` tables as one lookup in the ``[M * V, D]`` table of all members.

    Member ``m``'s index ``i`` reads row ``m * V + i``. ``padding_idx`` keeps its meaning: its rows get no
    gradient. Embeddings with ``max_norm``, ``scale_grad_by_freq`` or ``sparse`` are not converted to this
    twin (they run through :class:`VmapStacked`).

    Args:
        modules: the ``M`` members' ``nn.Embedding`` layers.

    Shape:
        input ``[M * B, *]`` indices (or ``[1, *]`` shared by the batch), output ``[M * B, *, D]``.
    """

    def __init__(self, modules: Sequence[nn.Embedding]) -> None:
        super().__init__()
        source = modules[0]
        self.num_members = len(modules)
        self.num_embeddings = source.num_embeddings
        self.embedding_dim = source.embedding_dim
        self.padding_idx = source.padding_idx
        self.weight = stacked_parameter(modules, "weight")

    def runs_one_member(self) -> bool:
        return True

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        member = running_member()
        if member is not None:
            return F.embedding(inputs, self.weight[member], self.padding_idx)
        split, batch = self._split_members(inputs)
        members, vocabulary = self.num_members, self.num_embeddings
        offsets = torch.arange(members, device=inputs.device, dtype=inputs.dtype) * vocabulary
        flat = split + offsets.view(members, *([1] * (split.dim() - 1)))
        out = F.embedding(flat, self.weight.reshape(members * vocabulary, self.embedding_dim))
        if self.padding_idx is not None and torch.is_grad_enabled() and self.weight.requires_grad:
            out = torch.where((split == self.padding_idx).unsqueeze(-1), out.detach(), out)
        return self._join_members(out, batch)

    def extra_repr(self) -> str:
        text = f"num_members={self.num_members}, {self.num_embeddings}, {self.embedding_dim}"
        return text if self.padding_idx is None else f"{text}, padding_idx={self.padding_idx}"


def _member_affine(
    normalized: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, shape: torch.Size
) -> torch.Tensor:
    """``normalized * weight[m] + bias[m]`` for ``normalized`` ``[M, B, ...]``, parameters as ``shape``."""
    if weight is not None and bias is not None:
        return torch.addcmul(bias.view(shape), normalized, weight.view(shape))
    if weight is not None:
        return normalized * weight.view(shape)
    if bias is not None:
        return normalized + bias.view(shape)
    return normalized


class StackedLayerNorm(StackedModule):
    """``M`` ``nn.LayerNorm`` layers: one normalisation, then each member's elementwise affine map.

    Args:
        modules: the ``M`` members' ``nn.LayerNorm`` layers.

    Shape:
        input ``[M * B, *, *normalized_shape]``, output the same.
    """

    def __init__(self, modules: Sequence[nn.LayerNorm]) -> None:
        super().__init__()
        source = modules[0]
        self.num_members = len(modules)
        self.normalized_shape = tuple(source.normalized_shape)
        self.eps = source.eps
        self.weight = stacked_parameter(modules, "weight")
        self.bias = stacked_parameter(modules, "bias")

    def runs_one_member(self) -> bool:
        return True

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        member = running_member()
        if member is not None:
            weight = None if self.weight is None else self.weight[member]
            bias = None if self.bias is None else self.bias[member]
            return F.layer_norm(inputs, self.normalized_shape, weight, bias, self.eps)
        split, batch = self._split_members(inputs)
        out = F.layer_norm(split, self.normalized_shape, None, None, self.eps)
        middle = (1,) * (split.dim() - 1 - len(self.normalized_shape))
        shape = torch.Size((self.num_members, *middle, *self.normalized_shape))
        return self._join_members(_member_affine(out, self.weight, self.bias, shape), batch)

    def extra_repr(self) -> str:
        return f"num_members={self.num_members}, {self.normalized_shape}, eps={self.eps}"


class StackedGroupNorm(StackedModule):
    """``M`` ``nn.GroupNorm`` layers: one normalisation per example (it mixes no examples), then each
    member's per-channel affine map.

    Args:
        modules: the ``M`` members' ``nn.GroupNorm`` layers.

    Shape:
        input ``[M * B, C, *S]``, output the same.
    """

    def __init__(self, modules: Sequence[nn.GroupNorm]) -> None:
        super().__init__()
        source = modules[0]
        self.num_members = len(modules)
        self.num_groups = source.num_groups
        self.num_channels = source.num_channels
        self.eps = source.eps
        self.weight = stacked_parameter(modules, "weight")
        self.bias = stacked_parameter(modules, "bias")

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if inputs.dim() < 2 or inputs.shape[1] != self.num_channels:
            raise ValueError(
                f"StackedGroupNorm input: expected [M * B, {self.num_channels}, *], got shape "
                f"{list(inputs.shape)}"
            )
        member = running_member()
        if member is not None:
            weight = None if self.weight is None else self.weight[member]
            bias = None if self.bias is None else self.bias[member]
            return F.group_norm(inputs, self.num_groups, weight, bias, self.eps)
        normalized = F.group_norm(inputs, self.num_groups, None, None, self.eps)
        split, batch = self._split_members(normalized)
        shape = torch.Size((self.num_members, 1, self.num_channels, *([1] * (inputs.dim() - 2))))
        return self._join_members(_member_affine(split, self.weight, self.bias, shape), batch)

    def runs_one_member(self) -> bool:
        return True

    def extra_repr(self) -> str:
        return f"num_members={self.num_members}, {self.num_groups}, {self.num_channels}, eps={self.eps}"


class StackedBatchNorm(StackedModule):
    """``M`` batch-norm layers (1-D, 2-D or 3-D), each with its own batch and running statistics.

    With batch statistics (training), the members are moved into the channels,
    ``[M * B, C, *S] -> [B, M * C, *S]``, so one ``F.batch_norm`` computes each member's statistics over its
    own ``B`` rows, updates each member's running statistics (buffers ``[M, C]``, read as ``[M * C]`` views)
    and applies each member's affine map; the result is copied back to member-major rows. With running
    statistics (eval), each member's normalisation and affine map is one elementwise ``scale * x + shift``.
    Momentum, cumulative averages (``momentum=None``) and ``track_running_stats`` are those of
    ``nn.BatchNorm*d``.

    Args:
        modules: the ``M`` members' ``nn.BatchNorm1d``, ``nn.BatchNorm2d`` or ``nn.BatchNorm3d`` layers.

    Shape:
        input ``[M * B, C, *S]``, output the same.
    """

    def __init__(self, modules: Sequence[nn.modules.batchnorm._BatchNorm]) -> None:
        super().__init__()
        source = modules[0]
        self.num_members = len(modules)
        self.num_features = source.num_features
        self.eps = source.eps
        self.momentum = source.momentum
        self.track_running_stats = source.track_running_stats
        self.weight = stacked_parameter(modules, "weight")
        self.bias = stacked_parameter(modules, "bias")
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            self.register_buffer(name, stack_tensors(modules, name))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if inputs.dim() < 2 or inputs.shape[1] != self.num_features:
            raise ValueError(
                f"StackedBatchNorm input: expected [M * B, {self.num_features}, ...], got shape "
                f"{list(inputs.shape)}"
            )
        member = running_member()
        if member is not None:
            return F.batch_norm(
                inputs,
                self.running_mean[member],
                self.running_var[member],
                None if self.weight is None else self.weight[member],
                None if self.bias is None else self.bias[member],
                False,
                0.0,
                self.eps,
            )
        split, batch = self._split_members(inputs)
        members, channels, spatial = self.num_members, self.num_features, inputs.shape[2:]
        use_batch_stats = self.training or self.running_mean is None
        if not use_batch_stats:
            scale = torch.rsqrt(self.running_var + self.eps)
            if self.weight is not None:
                scale = scale * self.weight
            shift = -self.running_mean * scale
            if self.bias is not None:
                shift = shift + self.bias
            shape = torch.Size((members, 1, channels, *([1] * len(spatial))))
            return self._join_members(torch.addcmul(shift.view(shape), split, scale.view(shape)), batch)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked[0])
        track = self.training and self.track_running_stats and self.running_mean is not None
        folded = split.expand(members, batch, *split.shape[2:]).transpose(0, 1)
        folded = folded.reshape(batch, members * channels, *spatial)
        out = F.batch_norm(
            folded,
            self.running_mean.view(-1) if track else None,
            self.running_var.view(-1) if track else None,
            None if self.weight is None else self.weight.reshape(-1),
            None if self.bias is None else self.bias.reshape(-1),
            True,
            factor,
            self.eps,
        )
        out = out.view(batch, members, channels, *spatial).transpose(0, 1)
        return out.reshape(members * batch, channels, *spatial)

    def runs_one_member(self) -> bool:
        """With running statistics only (eval): batch statistics and their updates stay folded."""
        return not self.training and self.running_mean is not None

    def extra_repr(self) -> str:
        members, features = self.num_members, self.num_features
        return f"num_members={members}, {features}, eps={self.eps}, momentum={self.momentum}"


class VmapStacked(StackedModule):
    """Any module, vectorized with ``torch.func.vmap`` over ``functional_call`` with stacked parameters.

    The fallback for modules of no registered type that have parameters or buffers of their own. Parameters
    and buffers are stacked with ``torch.func.stack_module_state`` and kept, under the source's names, in a
    copy of the source module (``self.module``), which ``functional_call`` runs once per member under
    ``vmap`` (with ``randomness="different"``: dropout inside draws independent masks per member).

    Positional and keyword tensor inputs with ``M * B`` rows are split into the members' ``[B, ...]``
    batches; other values (and tensors of other sizes, e.g. a mask shared by the batch) reach every member
    unchanged. Every tensor in the output (also inside tuples, lists, dicts and Hugging Face ``ModelOutput``
    objects) comes back as ``[M * B, ...]``. Attributes that ``self`` lacks are read from ``self.module``, so
    model code reading e.g. ``embeddings.patch_embeddings.projection.weight.dtype`` keeps working (it sees the
    stacked ``[M, ...]`` parameters).

    Args:
        modules: the ``M`` members' modules (same type and shapes).
        name: the module's qualified name in the architecture, for error messages.

    Shape:
        every batch-shaped tensor argument ``[M * B, ...]``, every tensor output ``[M * B, ...]``.
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

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            modules = self.__dict__.get("_modules", {})
            if "module" not in modules:
                raise
            return getattr(modules["module"], name)

    def member_state(self, index: int) -> dict[str, torch.Tensor]:
        return {
            name: tensor[index]
            for name, tensor in itertools.chain(self.module.named_parameters(), self.module.named_buffers())
        }

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        members = self.num_members
        tensors = [v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor) and v.dim() > 0]
        running = folded_batch()
        if running is not None and running[0] == members:
            rows = members * running[1]
        elif tensors:
            rows = tensors[0].shape[0]
        else:
            rows = 0
        if rows % members or (rows == 0 and tensors):
            shapes = [list(t.shape) for t in tensors]
            raise ValueError(
                f"{type(self.module).__name__} input: expected a multiple of M = {members} rows (members "
                f"folded into the batch, member-major [M * B, ...]), got tensors of shapes {shapes}"
            )

        def split(value: Any) -> Any:
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == rows and rows:
                return value.unflatten(0, (members, rows // members))
            return value

        def dims(value: Any) -> int | None:
            return (
                0 if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == rows else None
            )

        member_args, member_kwargs = tuple(split(v) for v in args), {k: split(v) for k, v in kwargs.items()}
        in_dims = (tuple(dims(v) for v in args), {k: dims(v) for k, v in kwargs.items()})
        params = dict(self.module.named_parameters())
        buffers = dict(self.module.named_buffers())

        def one_member(member_params, member_buffers, call_args, call_kwargs):
            return functional_call(self.module, (member_params, member_buffers), call_args, call_kwargs)

        try:
            batched = vmap(one_member, in_dims=(0, 0, *in_dims), randomness="different")
            outputs = batched(params, buffers, member_args, member_kwargs)
        except RuntimeError as error:
            where = f" at {self.source_name!r}" if self.source_name else ""
            raise RuntimeError(
                f"DeepEnsemble: {type(self.module).__name__}{where} has no registered stacked implementation "
                f"(registered: {', '.join(_registered_names())}) and torch.func.vmap cannot run it: {error}. "
                "Register one with uqkit.methods.register_vectorization."
            ) from error
        return pytree.tree_map(
            lambda v: v.flatten(0, 1) if isinstance(v, torch.Tensor) and v.dim() > 1 else v, outputs
        )

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
            one position and returns one module mapping ``[M * B, ...]`` to ``[M * B, ...]`` (member-major).
            It must return a :class:`StackedModule` (whose :meth:`~StackedModule.member_state` rebuilds each
            member) or a module without parameters and buffers. :func:`vmap_vectorization` is a ready-made
            converter.

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


class WindowMaxPool2d(nn.Module):
    """``nn.MaxPool2d`` with non-overlapping windows (``stride == kernel_size``, no padding, dilation 1, floor
    mode), computed without gradients as the elementwise maximum of the ``k_h * k_w`` strided views of the
    input: the same values as ``F.max_pool2d`` (a maximum is exact), without the indices that torch's CPU
    kernel computes for NCHW inputs even when nothing needs them.

    Measured on CPU (torch 2.13, one thread, ``[256, 6, 28, 28]``, ``k = 2``): 1.2 ms against 11.4 ms for
    ``F.max_pool2d``; pooling was 55% of LeNet-5's inference time. With gradients enabled (training), or an
    input whose height or width is not a multiple of the window, it calls ``F.max_pool2d`` (whose gradient
    goes to one maximum per window, where elementwise maxima would split it between ties).

    :class:`DeepEnsemble` converts every such ``nn.MaxPool2d`` to this module (a parameter-free entry of its
    type registry); other ``nn.MaxPool2d`` settings are kept as they are.

    Args:
        pool: the ``nn.MaxPool2d`` it replaces.

    Shape:
        input ``[N, C, H, W]``, output ``[N, C, H / k_h, W / k_w]``.
    """

    def __init__(self, pool: nn.MaxPool2d) -> None:
        super().__init__()
        self.kernel_size = _pair(pool.kernel_size)

    @staticmethod
    def applies_to(pool: nn.MaxPool2d) -> bool:
        """Whether ``pool`` has non-overlapping windows without padding, dilation, ceil mode or indices."""
        kernel = _pair(pool.kernel_size)
        stride = kernel if pool.stride is None else _pair(pool.stride)
        return (
            stride == kernel
            and _pair(pool.padding) == (0, 0)
            and _pair(pool.dilation) == (1, 1)
            and not pool.ceil_mode
            and not pool.return_indices
        )

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        kh, kw = self.kernel_size
        if (
            inputs.dim() != 4
            or inputs.shape[2] % kh
            or inputs.shape[3] % kw
            or (torch.is_grad_enabled() and inputs.requires_grad)
        ):
            return F.max_pool2d(inputs, self.kernel_size, self.kernel_size)
        n, c, h, w = inputs.shape
        windows = inputs.reshape(n, c, h // kh, kh, w // kw, kw)
        out = windows[:, :, :, 0, :, 0]
        for i, j in itertools.product(range(kh), range(kw)):
            if i or j:
                out = torch.maximum(out, windows[:, :, :, i, :, j])
        return out.contiguous()  # a no-op after a maximum; a copy of the view for a 1 x 1 window

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _max_pool(modules: Sequence[nn.Module], name: str) -> nn.Module:
    source = modules[0]
    return WindowMaxPool2d(source) if WindowMaxPool2d.applies_to(source) else source


def _embedding(modules: Sequence[nn.Module], name: str) -> nn.Module:
    source = modules[0]
    if source.max_norm is not None or source.scale_grad_by_freq or source.sparse:
        return VmapStacked(modules, name)  # renormalisation / gradient scaling: the module's own code
    return StackedEmbedding(modules)


def _registered_names() -> list[str]:
    return sorted(t.__name__ for t in _REGISTRY)


register_vectorization(nn.Linear, lambda modules, name: StackedLinear(modules))
for _conv in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
    register_vectorization(_conv, lambda modules, name: StackedConv(modules))
register_vectorization(nn.Embedding, _embedding)
register_vectorization(nn.LayerNorm, lambda modules, name: StackedLayerNorm(modules))
register_vectorization(nn.GroupNorm, lambda modules, name: StackedGroupNorm(modules))
for _norm in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
    register_vectorization(_norm, lambda modules, name: StackedBatchNorm(modules))
register_vectorization(nn.MaxPool2d, _max_pool)


def _own_tensors(module: nn.Module) -> list[torch.Tensor]:
    return list(itertools.chain(module.parameters(recurse=False), module.buffers(recurse=False)))


def _has_own_tensors(module: nn.Module) -> bool:
    """Whether ``module`` has a parameter or buffer of its own (``None`` entries do not count)."""
    return any(t is not None for t in itertools.chain(module._parameters.values(), module._buffers.values()))


def _has_state(module: nn.Module, recurse: bool) -> bool:
    return any(True for _ in itertools.chain(module.parameters(recurse), module.buffers(recurse)))


def _shared_buffers(modules: Sequence[nn.Module]) -> bool:
    """Whether the modules have buffers but no parameters of their own, equal in every member."""
    first = modules[0]
    if any(True for _ in first.parameters(recurse=False)) or not first._buffers:
        return False
    return all(
        (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))
        for module in modules[1:]
        for a, b in zip(first._buffers.values(), module._buffers.values(), strict=True)
    )


def _check_foldable(module: nn.Module, name: str) -> None:
    """Refuse parameter-free settings that act across the batch dimension (that would mix members)."""
    dims = []
    if isinstance(module, nn.Flatten):
        dims = [module.start_dim]
    elif isinstance(module, nn.Unflatten):
        dims = [module.dim]
    if 0 in dims:
        raise ValueError(
            f"DeepEnsemble: {type(module).__name__} at {name!r} acts on the batch dimension (dim 0), which "
            "carries the members folded into the batch; expected a module that treats examples independently"
        )


class _Converter:
    """Builds the vectorized twin of an architecture from the ``M`` members, recording every stateful leaf."""

    def __init__(self) -> None:
        self.memo: dict[int, nn.Module] = {}
        self.leaves: list[tuple[str, str]] = []  # (name in the members, name in the twin)
        self.shared: list[tuple[str, str]] = []  # modules whose own buffers all members share

    def convert(self, modules: Sequence[nn.Module], name: str, twin_name: str) -> nn.Module:
        key = id(modules[0])
        if key in self.memo:  # a module shared by several names stays shared
            return self.memo[key]
        source = modules[0]
        converter = _REGISTRY.get(type(source))
        has_children = any(True for _ in source.children())
        if converter is None and not _has_state(source, recurse=True):
            for inner_name, inner in source.named_modules(prefix=name):
                _check_foldable(inner, inner_name)
            new = source  # parameter-free: the folded batch is an ordinary batch
        elif converter is None and has_children and not _has_state(source, recurse=False):
            new = self._recurse(modules, name, twin_name)
        elif converter is None and _shared_buffers(modules):
            new = self._recurse(modules, name, twin_name) if has_children else source
            new._buffers = OrderedDict(source._buffers)
            self.shared.append((name, twin_name))
        else:
            new = (converter or vmap_vectorization)(modules, name)
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
    ``[M, *shape]`` parameters of this module, and every layer with parameters is replaced by its
    member-vectorized twin (see the module docstring for the registry and the vmap fallback). All members
    train together with one optimizer over ``ensemble.parameters()``: with a per-element optimizer (SGD,
    Adam, ...) and a loss that is a sum of per-member losses, this is exactly ``M`` independent trainings on
    the same batches (or on their own batches, folded with :func:`uqkit.nn.members.fold_members` and passed
    inside :func:`uqkit.nn.members.pretiled`).

    In inference (no gradients, CPU) a large batch runs member by member: the architecture's ``forward``
    once per member on the ``[B, ...]`` inputs, outputs concatenated member-major, as the module docstring
    describes (:meth:`runs_member_by_member`, :attr:`member_by_member_rows`); the result is the same. On
    more than one thread a network with narrow activations (:data:`MEMBER_BY_MEMBER_BYTES`, measured in its
    first member-by-member pass) folds instead.

    Args:
        factory: ``factory() -> nn.Module`` building one member. Every call must build the same architecture
            with new parameters. The member is called as ``ensemble`` is called (any positional and keyword
            inputs) and may return a tensor, an object with ``.logits``, a dict or a tuple.
        num_members: ``M >= 1``.
        example_dims: deprecated and ignored (inputs are no longer told apart by their rank).

    Shape:
        inputs: every tensor input whose first dimension is the batch size ``B`` (that of the first tensor
        input) is tiled to ``[M * B, ...]``, member-major; other inputs pass unchanged. Inside
        :func:`uqkit.nn.members.pretiled` the inputs are ``[M * B, ...]`` already (one batch per member).
        Output: what the architecture returns for a batch of ``M * B``, e.g. ``[M * B, C]`` logits, row
        ``m * B + b`` from member ``m`` (:func:`uqkit.nn.members.unfold_members` gives ``[M, B, C]``).

    Attributes:
        num_members: ``M`` (also as ``uqkit_num_members``, read by :func:`uqkit.nn.members.num_members`).
        network: the member-vectorized twin of the architecture (its parameters are the stacked ones).
        member_by_member_rows: inference runs member by member from this many folded rows ``M * B``
            (:data:`MEMBER_BY_MEMBER_ROWS`); ``None``: always one folded pass.

    Raises:
        TypeError: for a ``factory`` that is not callable or does not return an ``nn.Module``.
        ValueError: for a bad ``num_members``, for calls of ``factory`` that build different architectures or
            share parameters, or for tied weights.

    Example:
        >>> net = lambda: nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 3))
        >>> ensemble = uqkit.DeepEnsemble(net, 4)
        >>> logits = ensemble(x)  # [4 * B, 3]
        >>> loss = 4 * F.cross_entropy(logits, tile_members(y, 4))  # the sum of the members' mean NLLs
        >>> prediction = uqkit.predict(ensemble, x)  # [4, B, 3] logits
        >>> members = ensemble.members()  # 4 ordinary modules
    """

    def __init__(
        self, factory: Callable[[], nn.Module], num_members: int, *, example_dims: int | None = None
    ) -> None:
        super().__init__()
        if isinstance(factory, nn.Module) or not callable(factory):
            raise TypeError(
                "factory: expected a callable building a new member on each call (e.g. lambda: Net()), got "
                f"{type(factory).__name__}"
            )
        if example_dims is not None:
            warnings.warn(
                "DeepEnsemble(example_dims=...) is deprecated and ignored: inputs are [B, ...] as the "
                "member takes them (tiled inside), or [M * B, ...] inside uqkit.nn.members.pretiled()",
                DeprecationWarning,
                stacklevel=2,
            )
        self.num_members = check_positive_int(num_members, "num_members")
        setattr(self, MEMBERS_ATTRIBUTE, self.num_members)
        members = [factory() for _ in range(self.num_members)]
        _check_members(members)
        converter = _Converter()
        self.network = converter.convert(members, "", "network")
        self.member_by_member_rows = MEMBER_BY_MEMBER_ROWS
        self.__dict__["_widest"] = None  # (input signature, bytes per example of the widest twin output)
        self.__dict__["_leaves"] = converter.leaves
        self.__dict__["_shared_modules"] = [self.get_submodule(name) for _, name in converter.shared]
        self.__dict__["_shared"] = converter.shared
        self.__dict__["_template"] = copy.deepcopy(members[0]).to("meta")  # architecture only, no memory

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        members = self.num_members
        if not kwargs and len(args) == 1 and isinstance(args[0], torch.Tensor) and args[0].dim() > 0:
            first = args[0]  # the common call, ensemble(x), without the generic walk over the inputs
        else:
            first = next(
                (v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor) and v.dim() > 0), None
            )
            if first is None:
                return self.network(*args, **kwargs)
        batch = first.shape[0]
        if not torch.is_grad_enabled() and not inputs_pretiled():
            signature = (tuple(first.shape[1:]), first.dtype)
            widest = self._widest[1] if self._widest is not None and self._widest[0] == signature else None
            if self._by_member(batch, first.device, widest):
                measure = signature if widest is None else None
                out = self._forward_member_by_member(args, kwargs, batch, measure)
                if out is not None:
                    return out
        if members > 1 and len(args) == 1 and not kwargs and first is args[0] and not inputs_pretiled():
            start = self._untiled_start(first)
            if start is not None:
                return self._forward_folded(start[1:], {}, batch, start[0])
        args, kwargs = tile_inputs(args, kwargs, members)
        if not inputs_pretiled():
            batch *= members
        return self._forward_folded(args, kwargs, batch // members)

    def _forward_folded(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], batch: int, start: int | None = None
    ) -> Any:
        """The network on the folded ``[M * B, ...]`` inputs (``batch`` = ``B``); with ``start``, the
        ``nn.Sequential`` network from its module ``start`` on, that twin taking the un-tiled ``[B, ...]``
        input ``args[0]`` (:meth:`_untiled_start`)."""
        outer = running_member()  # only set here if another ensemble runs this one inside a member pass
        previous = folded_batch()
        set_running_member(None)
        set_folded_batch((self.num_members, batch))
        try:
            if start is None:
                return self.network(*args, **kwargs)
            modules = list(self.network)
            out = modules[start]._forward_shared(args[0])
            for module in modules[start + 1 :]:
                out = module(out)
            return out
        finally:
            set_folded_batch(previous)
            set_running_member(outer)

    def _untiled_start(self, inputs: torch.Tensor) -> tuple[int, torch.Tensor] | None:
        """Where a folded pass can start without tiling its one input: for an ``nn.Sequential`` network
        (its own ``forward``) whose first modules are ``nn.Identity`` / ``nn.Flatten`` (keeping dimension 0,
        so they treat rows independently and commute with tiling) followed by a ``StackedLinear`` or a
        ``StackedConv`` with ``groups = 1``, that twin's index and its input computed from the un-tiled
        ``[B, ...]`` batch. The twin then multiplies the batch once by the members' weights side by side, as
        it does on a tiled input (:func:`~uqkit.nn.members.tiled_source`), so the result is the same without
        the ``M``-fold copy of the input. ``None`` for any other network, or when a module involved has
        forward hooks (they would see the un-tiled input or be skipped)."""
        network = self.network
        if type(network).forward is not nn.Sequential.forward or _global_forward_hooks():
            return None
        if network._forward_hooks or network._forward_pre_hooks:
            return None
        for index, module in enumerate(network):
            if module._forward_hooks or module._forward_pre_hooks:
                return None
            if isinstance(module, (StackedLinear, StackedConv)):
                return (index, inputs) if module._accepts_shared(inputs) else None
            if isinstance(module, nn.Flatten) and inputs.dim() and module.start_dim % inputs.dim():
                inputs = module(inputs)
            elif not isinstance(module, nn.Identity):
                return None
        return None

    @property
    def member_by_member_rows(self) -> int | None:
        """Inference runs member by member from this many folded rows ``M * B`` (class docstring); ``None``:
        always folded. Default :data:`MEMBER_BY_MEMBER_ROWS`."""
        return self._member_by_member_rows

    @member_by_member_rows.setter
    def member_by_member_rows(self, rows: int | None) -> None:
        if rows is not None:
            check_positive_int(rows, "member_by_member_rows", minimum=0)
        self.__dict__["_member_by_member_rows"] = rows

    def runs_member_by_member(self, batch: int, device: torch.device | str = "cpu") -> bool:
        """Whether a forward pass runs member by member when it needs no gradients (and its inputs are not
        :func:`~uqkit.nn.members.pretiled`): the rule of the module docstring, with the widest activation
        measured in the last member-by-member pass (before any, member by member).

        Args:
            batch: ``B``, the examples per member.
            device: where the inputs are (the rule is for CPU).

        Raises:
            TypeError, ValueError: for a ``batch`` that is not an int ``>= 0``, or a ``device`` torch does
                not know.
        """
        check_positive_int(batch, "batch", minimum=0)
        return self._by_member(batch, device, None if self._widest is None else self._widest[1])

    def _by_member(self, batch: int, device: torch.device | str, widest: int | None) -> bool:
        """The rule, with ``widest`` the measured bytes per example of the widest twin output (``None``:
        not measured yet for these inputs, which runs member by member and measures it)."""
        rows, members = self._member_by_member_rows, self.num_members
        return (
            rows is not None
            and members > 1
            and members * batch >= rows
            and batch >= MEMBER_BY_MEMBER_MIN_BATCH
            and torch.device(device).type == "cpu"
            and (
                widest is None
                or torch.get_num_threads() == 1
                or members * batch * widest >= MEMBER_BY_MEMBER_BYTES
            )
            and self._network_runs_one_member()
        )

    def _network_runs_one_member(self) -> bool:
        """Whether every module of the network with parameters or buffers can run one member alone: a twin
        whose :meth:`~StackedModule.runs_one_member` says so, or a module whose buffers all members share.
        Read at each call: a module put into the network later (e.g. a per-member dropout, which reads the
        folded rows) keeps the folded pass."""
        shared = {id(module) for module in self._shared_modules}
        for module in self.network.modules():
            if isinstance(module, StackedModule):
                if not module.runs_one_member():
                    return False
            elif id(module) not in shared and _has_own_tensors(module):
                return False
        return True

    def _forward_member_by_member(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], batch: int, measure: Any = None
    ) -> Any:
        """Each member's network on the un-tiled ``[B, ...]`` inputs in turn, outputs concatenated
        member-major; ``None`` when the first member's output has a tensor that is not ``[B, ...]`` (the
        caller then runs the folded pass, whose result such an output need not be a concatenation of).
        With ``measure`` (the inputs' signature), the first member's pass also records the bytes per example
        of the widest twin output, for the rule."""
        outer = running_member()
        previous = folded_batch()
        set_folded_batch(None)
        parts: list[list[Any]] = []
        spec = None
        try:
            for index in range(self.num_members):
                set_running_member(index)
                if not index and measure is not None:
                    leaves, spec = pytree.tree_flatten(self._measured(args, kwargs, batch, measure))
                else:
                    leaves, spec = pytree.tree_flatten(self.network(*args, **kwargs))
                if not index and not all(
                    leaf is None or (isinstance(leaf, torch.Tensor) and leaf.dim() and leaf.shape[0] == batch)
                    for leaf in leaves
                ):
                    return None
                parts.append(leaves)
        finally:
            set_running_member(outer)
            set_folded_batch(previous)
        joined = [None if group[0] is None else torch.cat(group) for group in zip(*parts, strict=True)]
        return pytree.tree_unflatten(joined, spec)

    def _measured(self, args: tuple[Any, ...], kwargs: dict[str, Any], batch: int, signature: Any) -> Any:
        """The network on the inputs (one member's pass), recording the bytes per example of the largest
        tensor a twin returns as ``(signature, bytes)`` for :meth:`_by_member`."""
        widest = 0

        def record(module: nn.Module, inputs: Any, output: Any) -> None:
            nonlocal widest
            for leaf in pytree.tree_leaves(output):
                if isinstance(leaf, torch.Tensor):
                    widest = max(widest, -(-leaf.numel() * leaf.element_size() // max(batch, 1)))

        twins = [module for module in self.network.modules() if isinstance(module, StackedModule)]
        handles = [twin.register_forward_hook(record) for twin in twins]
        try:
            out = self.network(*args, **kwargs)
        finally:
            for handle in handles:
                handle.remove()
        self.__dict__["_widest"] = (signature, widest)
        return out

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
            for name, twin_name in self._shared:
                target, twin = member.get_submodule(name), self.get_submodule(twin_name)
                for attribute, value in twin._buffers.items():
                    target._buffers[attribute] = None if value is None else value.detach().clone()
            tensors = itertools.chain(member.named_parameters(), member.named_buffers())
            left = [name for name, tensor in tensors if tensor.is_meta]
            if left:
                raise RuntimeError(f"DeepEnsemble.members: no stacked tensor found for {left}")
            exported.append(member.train(self.training))
        return exported

    def extra_repr(self) -> str:
        return f"num_members={self.num_members}"
