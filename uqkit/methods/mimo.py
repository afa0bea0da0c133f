"""MIMO: ``M`` independent subnetworks inside one network (Havasi et al. 2021).

A multi-input multi-output network takes ``M`` inputs at once, concatenated along the channel dimension
(feature dimension for vectors), and returns ``M`` predictions from ``M`` output heads. Trained with an
*independent* example for each input, the network has no way of telling member ``m``'s label from the
other inputs, so it learns ``M`` subnetworks that share capacity but fit independently (Havasi et al. 2021,
Sec. 2): an ensemble in one forward pass, at the cost of a wider first and last layer.

Training (Havasi et al. 2021, Sec. 2 and 3.4): member ``m`` sees ``x_{pi_m(i)}`` with label ``y_{pi_m(i)}`` at
batch position ``i``, ``pi_m`` an independent random permutation per member. The loss is the sum of the
members' negative log-likelihoods, ``sum_m CE(f_m(x_{pi_1(i)}, ..., x_{pi_M(i)}), y_{pi_m(i)})``, averaged
over positions. Two refinements of the paper:

* input repetition ``rho``: for a fraction ``rho`` of the positions all members see the same example (the
  members then share more features, which helps when the network is small for ``M`` subnetworks);
* batch repetition ``r``: each example appears ``r`` times in a training batch (``B r`` positions), which
  lowers the variance of the gradient of each subnetwork.

The paper's settings (uncertainty-baselines): CIFAR-10/100 with a Wide ResNet, ``M = 3``, ``rho = 0``,
``r = 4``; ImageNet with a ResNet-50, ``M = 2``, ``rho = 0.6``, ``r = 2``.

Members folded into the batch (:mod:`uqkit.nn.members`): :class:`MIMO` is called like one network,
``mimo(x)`` with ``x`` ``[B, C, *rest]`` (keyword inputs pass through to the network), and returns the ``M``
heads' outputs as ``[M * B, K]``, member-major (row ``m * B + b`` is head ``m`` on example ``b``;
:func:`uqkit.predict` gives ``[M, B, K]``). Training feeds each member its own examples: inside
:func:`uqkit.nn.members.pretiled`, the first input is ``[M * B, C, *rest]`` (member ``m``'s batch in rows
``m * B`` to ``(m + 1) * B - 1``, e.g. :func:`uqkit.nn.members.fold_members` of :meth:`MIMO.training_batch`'s
``[M, B, ...]``); :meth:`MIMO.training_loss` does all of it.

At test time all members get the same input; the ``M`` outputs are the ensemble. When the
network starts with a linear layer or a convolution (possibly after ``nn.Flatten``), the ``M`` copies of one
input meet the first layer's weight blocks ``W = [W_1, ..., W_M]`` as ``W [x; ...; x] = (sum_m W_m) x``, so
:class:`MIMO` runs that layer with the folded weight ``sum_m W_m`` on the un-tiled input: the test-time cost
is that of one network with an ``M`` times wider head, exactly (up to float rounding) the same result.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from uqkit._validation import check_float_tensor, check_labels, check_positive_int, check_unit_interval
from uqkit.nn._cache import VersionedCache, is_cacheable
from uqkit.nn.members import MEMBERS_ATTRIBUTE, fold_members, inputs_pretiled, member_rows, pretiled
from uqkit.prediction import Prediction

__all__ = ["MIMO"]


_FOLDABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)


_Path = list[tuple[nn.Sequential, tuple[nn.Module, ...], int]]


def _first_layer_path(network: nn.Module) -> tuple[_Path, nn.Module] | None:
    """Where the first module with weights sits when only ``nn.Flatten`` / ``nn.Identity`` may precede it.

    Only chains of ``nn.Sequential`` (with ``nn.Sequential``'s own ``forward`` and no hooks) are followed,
    because their execution order is their registration order.

    Returns:
        ``(path, layer)``: ``path`` lists, outermost first, each ``nn.Sequential``, the modules it runs in
        order (its ``_modules`` values) and the index of the one that leads to ``layer``; ``None`` when
        ``network`` is not such a chain or its first layer is not an ``nn.Linear`` / ``nn.Conv1d`` /
        ``nn.Conv2d`` with ``groups = 1`` and no hooks.
    """
    path: _Path = []
    module = network
    while type(module).forward is nn.Sequential.forward:
        if _has_hooks(module):
            return None
        children = tuple(module._modules.values())
        for index, child in enumerate(children):
            if child is None:
                return None
            if isinstance(child, nn.Flatten) and child.start_dim == 1 and child.end_dim == -1:
                continue
            if isinstance(child, nn.Identity):
                continue
            path.append((module, children, index))
            module = child
            break
        else:
            return None
    if type(module) in _FOLDABLE and getattr(module, "groups", 1) == 1 and not _has_hooks(module):
        return path, module
    return None


def _path_is_current(path: _Path, layer: nn.Module) -> bool:
    """Whether a path found by :func:`_first_layer_path` still describes the network (no child replaced)."""
    for sequential, children, _ in path:
        # modules compare by identity: one tuple comparison instead of a Python loop (run on every call)
        if _has_hooks(sequential) or tuple(sequential._modules.values()) != children:
            return False
    return not _has_hooks(layer)


def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


def _input_width(network: nn.Module) -> tuple[str, int] | None:
    """``("channels", C_in)`` when the network's first convolution or ``nn.Linear`` (in registration order)
    is a convolution, ``("features", in_features)`` when it is an ``nn.Linear``; ``None`` when there is none
    or an embedding, recurrent or attention module comes first (its input is no such layout)."""
    for module in network.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return "channels", module.in_channels
        if isinstance(module, nn.Linear):
            return "features", module.in_features
        if isinstance(module, (nn.Embedding, nn.EmbeddingBag, nn.RNNBase, nn.MultiheadAttention)):
            return None
    return None


def _logits_of(outputs: Any) -> torch.Tensor:
    """The logits tensor of a network output: a tensor, an object with ``.logits``, a dict with
    ``"logits"`` or a tuple whose first element is the logits."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, dict) and "logits" in outputs:
        return outputs["logits"]
    if hasattr(outputs, "logits"):
        return outputs.logits
    if isinstance(outputs, tuple) and outputs and isinstance(outputs[0], torch.Tensor):
        return outputs[0]
    raise TypeError(
        "network output: expected a tensor, an object with .logits, a dict with 'logits' or a tuple of "
        f"tensors, got {type(outputs).__name__}"
    )


class MIMO(nn.Module):
    """A multi-input multi-output network: ``M`` subnetworks trained independently in one model.

    Args:
        network: maps ``[B, M * C, *rest]`` (the ``M`` members' inputs concatenated along dimension 1) to
            ``[B, M * K]`` (the ``M`` heads' outputs, member-major; or an object with ``.logits``, a dict
            with ``"logits"``, a tuple with them first). Build your backbone with an ``M`` times wider input
            and output, e.g. ``mlp((M * C, H, W), M * K)`` or a ``ViTConfig(num_channels=M * 3,
            num_labels=M * K)``.
        num_members: ``M`` (Havasi et al.: 3 on CIFAR, 2 on ImageNet).
        example_dims: deprecated and ignored. The input layout is read from the network's first layer
            with weights (a convolution's ``in_channels`` or an ``nn.Linear``'s ``in_features`` must be
            ``M`` times the input's, checked on every call).
        input_repetition: ``rho`` in ``[0, 1]``, the fraction of training positions at which all members see
            the same example (default 0, the paper's CIFAR setting).
        batch_repetition: ``r >= 1``, how many times each example appears in a training batch (default 1;
            the paper uses 4 on CIFAR).
        fold_shared_input: at test time (one input for all members) run the first layer with the folded
            weight ``sum_m W_m`` instead of tiling the input (default ``True``; used when the first layer is
            an ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` with ``groups=1``, possibly after ``nn.Flatten``,
            in a chain of ``nn.Sequential``).

    Shape:
        ``forward``: first input ``[B, C, *rest]`` (the same input to every member), or ``[M * B, C, *rest]``
        inside :func:`uqkit.nn.members.pretiled` (member ``m``'s own batch in rows ``m * B`` to
        ``(m + 1) * B - 1``); output ``[M * B, K]``, member-major.

    Example:
        >>> mimo = MIMO(uqkit.bench.models.mlp((3, 28, 28), 3 * 10), num_members=3)
        >>> loss = mimo.training_loss(x, y)              # independent examples per member
        >>> prediction = uqkit.predict(mimo, x_test)     # Prediction with [3, B, 10] logits
    """

    def __init__(
        self,
        network: nn.Module,
        num_members: int,
        example_dims: int | None = None,
        *,
        input_repetition: float = 0.0,
        batch_repetition: int = 1,
        fold_shared_input: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(network, nn.Module):
            raise TypeError(f"network: expected a torch.nn.Module, got {type(network).__name__}")
        if example_dims is not None:
            warnings.warn(
                "MIMO(example_dims=...) is deprecated and ignored: the input layout is read from the "
                "network's first layer",
                DeprecationWarning,
                stacklevel=2,
            )
        self.network = network
        self.num_members = check_positive_int(num_members, "num_members")
        setattr(self, MEMBERS_ATTRIBUTE, self.num_members)
        self.input_repetition = check_unit_interval(input_repetition, "input_repetition")
        self.batch_repetition = check_positive_int(batch_repetition, "batch_repetition")
        if not isinstance(fold_shared_input, bool):
            raise TypeError(f"fold_shared_input: expected a bool, got {type(fold_shared_input).__name__}")
        self.fold_shared_input = fold_shared_input

    # ----------------------------------------------------------------------------------------------------
    # forward

    def _split_heads(self, outputs: Any, batch: int) -> torch.Tensor:
        """``[B, M * K] -> [M * B, K]``, member-major."""
        outputs = _logits_of(outputs)
        if outputs.dim() != 2 or outputs.shape[0] != batch or outputs.shape[1] % self.num_members:
            raise ValueError(
                f"network output: expected [B, M * K] = [{batch}, {self.num_members} * K], got shape "
                f"{list(outputs.shape)}"
            )
        members = self.num_members
        return outputs.view(batch, members, -1).transpose(0, 1).reshape(members * batch, -1)

    def _check_width(self, inputs: torch.Tensor, width: tuple[str, int] | None = None) -> None:
        """Refuse inputs whose width times ``M`` does not match the network's first layer (``width``:
        :func:`_input_width` of the network, looked up when not given)."""
        if width is None:
            width = _input_width(self.network)
        if width is None or inputs.dim() < 2:
            return
        kind, size = width
        given = inputs.shape[1] if kind == "channels" else math.prod(inputs.shape[1:])
        if self.num_members * given != size:
            raise ValueError(
                f"inputs: expected {size // self.num_members if size % self.num_members == 0 else size} "
                f"{kind} per example (the network's first layer takes M * {kind} = {size} with M = "
                f"{self.num_members}), got shape {list(inputs.shape)}"
            )

    def _folded_weight(self, layer: nn.Module, channels: int) -> torch.Tensor | None:
        """``sum_m W_m`` of the first layer's member blocks, or ``None`` when the shapes do not fold.

        Without a graph to build (eval mode, or ``torch.no_grad``) the sum is cached and reused until the
        weight changes (its version counter, storage or identity), since summing the ``M`` blocks reads as
        much memory as a small batch's forward pass does.
        """
        weight = layer.weight
        members = self.num_members
        if weight.shape[1] != members * channels:
            return None

        def fold() -> torch.Tensor:
            return weight.view(weight.shape[0], members, channels, *weight.shape[2:]).sum(1)

        if (torch.is_grad_enabled() and weight.requires_grad) or not is_cacheable(weight):
            self.__dict__["_fold_cache"] = None
            return fold()
        cache = self.__dict__.get("_fold_cache")
        if cache is None:
            cache = self.__dict__["_fold_cache"] = VersionedCache()
        return cache.get((weight,), members, fold)

    def _first_layer(self) -> tuple[_Path, nn.Module] | None:
        """:func:`_first_layer_path` of the network, reused while no child is replaced and no hook added."""
        found = self.__dict__.get("_fold_path")
        if found is None or not _path_is_current(*found):
            found = _first_layer_path(self.network)
            self.__dict__["_fold_path"] = found
        return found

    def _folded_forward(self, x: torch.Tensor, found: tuple[_Path, nn.Module]) -> torch.Tensor | None:
        """The network on ``M`` copies of ``x``, its first layer (``found``: :meth:`_first_layer`) with the
        summed member blocks; ``None`` when the shapes do not fold."""
        path, layer = found
        inputs = x
        for _, children, index in path:  # nn.Flatten / nn.Identity before the first layer, outermost first
            for child in children[:index]:
                x = child(x)
        linear = isinstance(layer, nn.Linear)
        if linear and x.dim() != 2:  # the members' features are concatenated along dimension 1
            return None
        if not linear and x is not inputs:  # a convolution reads the input's own channels, not flattened ones
            return None
        folded = self._folded_weight(layer, x.shape[1])
        if folded is None:
            return None
        out = F.linear(x, folded, layer.bias) if linear else layer._conv_forward(x, folded, layer.bias)
        for _, children, index in reversed(path):
            for child in children[index + 1 :]:
                out = child(out)
        return out

    def train(self, mode: bool = True) -> MIMO:
        self.__dict__["_fold_cache"] = None
        return super().train(mode)

    def __getstate__(self) -> dict:
        # The fold cache holds weak references (not picklable) and is rebuilt on demand: never copied.
        state = super().__getstate__()
        state["_fold_cache"] = None
        state["_fold_path"] = None
        return state

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The ``M`` heads' outputs ``[M * B, K]``, member-major.

        Args:
            args, kwargs: the network's inputs; the first tensor (positional, else keyword) is the one the
                members share or split: ``[B, C, *rest]`` (the same input for every member), or inside
                :func:`uqkit.nn.members.pretiled` ``[M * B, C, *rest]`` (member ``m``'s batch in rows
                ``m * B`` to ``(m + 1) * B - 1``). Other inputs reach the network unchanged.
        """
        only = len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor)  # the common call
        if only:
            where, key = "arg", 0
        else:
            keys = [("arg", i) for i, v in enumerate(args) if isinstance(v, torch.Tensor)]
            keys += [("kw", k) for k, v in kwargs.items() if isinstance(v, torch.Tensor)]
            if not keys:
                raise TypeError("inputs: expected at least one tensor input, got none")
            where, key = keys[0]
        inputs = args[key] if where == "arg" else kwargs[key]
        check_float_tensor(inputs, "inputs", finite=False)
        members = self.num_members
        if inputs_pretiled():
            batch = member_rows(inputs, members, "inputs")
            x = inputs.unflatten(0, (members, batch))
            self._check_width(x[0])
            # [M, B, C, *rest] -> [B, M * C, *rest]: member-major along the channel dimension
            stacked = x.transpose(0, 1).reshape(batch, members * x.shape[2], *x.shape[3:])
        else:
            batch = inputs.shape[0]
            found = self._first_layer() if self.fold_shared_input and only else None
            if found is not None:
                # The fold runs only where the first layer takes M times the input's width (it sums the
                # weight's M blocks of exactly that width), so that case needs no other check; otherwise the
                # width is checked against the layer found, without walking the network's modules.
                outputs = self._folded_forward(inputs, found)
                if outputs is not None:
                    return self._split_heads(outputs, batch)
                layer = found[1]
                linear = isinstance(layer, nn.Linear)
                width = ("features", layer.in_features) if linear else ("channels", layer.in_channels)
                self._check_width(inputs, width)
            else:
                self._check_width(inputs)
            stacked = inputs.repeat(1, members, *([1] * (inputs.dim() - 2)))
        if where == "arg":
            args = (*args[:key], stacked, *args[key + 1 :])
        else:
            kwargs = {**kwargs, key: stacked}
        return self._split_heads(self.network(*args, **kwargs), batch)

    # ----------------------------------------------------------------------------------------------------
    # training

    def training_indices(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Which example each member sees at each training position: ``[M, B * r]`` indices into the batch.

        Every member's row holds each of ``0..B-1`` exactly ``r`` times (batch repetition). The positions
        are shuffled once; at the last ``round(rho * B * r)`` positions all members share that order (input
        repetition), at the others each member's order is shuffled again, independently.

        Args:
            batch_size: ``B``.
            generator: optional ``torch.Generator`` for reproducible draws.

        Returns:
            An int64 tensor ``[M, B * r]``.
        """
        batch_size = check_positive_int(batch_size, "batch_size")
        total = batch_size * self.batch_repetition
        order = torch.arange(batch_size).repeat(self.batch_repetition)
        order = order[torch.randperm(total, generator=generator)]
        independent = total - round(self.input_repetition * total)
        rows = []
        for _ in range(self.num_members):
            row = order.clone()
            row[:independent] = order[:independent][torch.randperm(independent, generator=generator)]
            rows.append(row)
        return torch.stack(rows)

    def training_batch(
        self, inputs: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Members' inputs and labels for one training step (Havasi et al. 2021, Sec. 2 and 3.4).

        Args:
            inputs: ``[B, C, *rest]``, one batch.
            labels: ``[B]`` (or any ``[B, ...]`` targets).
            generator: optional ``torch.Generator`` for the permutations.

        Returns:
            ``(member_inputs, member_labels)``: ``[M, B * r, C, *rest]`` and ``[M, B * r, ...]``, row ``i`` of
            member ``m`` holding the same example in both.
        """
        check_float_tensor(inputs, "inputs", finite=False)
        if inputs.dim() < 2:
            raise ValueError(f"inputs: expected [B, C, ...], got shape {list(inputs.shape)}")
        if not isinstance(labels, torch.Tensor) or labels.dim() == 0 or labels.shape[0] != inputs.shape[0]:
            raise ValueError(
                f"labels: expected a tensor with {inputs.shape[0]} rows (one per input), got "
                f"{list(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__}"
            )
        index = self.training_indices(inputs.shape[0], generator).to(inputs.device)
        return inputs[index], labels.to(inputs.device)[index]

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``sum_m mean_i CE(logits[m, i], labels[m, i])``: the members' NLLs summed (Havasi et al. 2021).

        Args:
            logits: ``[M * N, K]`` (member-major, as :meth:`forward` returns them) or ``[M, N, K]``.
            labels: ``[M * N]`` or ``[M, N]`` class indices (each member's own labels, from
                :meth:`training_batch`).

        Returns:
            A scalar tensor.
        """
        check_float_tensor(logits, "logits", (2, 3), "[M * N, classes] or [M, N, classes]", finite=False)
        if logits.dim() == 3:
            logits = fold_members(logits)
        if isinstance(labels, torch.Tensor) and labels.dim() == 2:
            labels = fold_members(labels)
        if not isinstance(labels, torch.Tensor) or labels.shape != logits.shape[:1]:
            shape = list(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise ValueError(f"labels: expected shape {list(logits.shape[:1])} ([M * N]), got {shape}")
        member_rows(logits, self.num_members, "logits")
        on_cpu = logits.device.type == "cpu"  # the range check would sync a GPU every step
        check_labels(labels, "labels", num_classes=logits.shape[-1] if on_cpu else None)
        return F.cross_entropy(logits, labels) * self.num_members

    def training_loss(
        self, inputs: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """:meth:`loss` on a fresh :meth:`training_batch` of ``(inputs, labels)`` (``[B, ...]``, ``[B]``):
        each member's examples folded into the batch and run inside :func:`uqkit.nn.members.pretiled`."""
        member_inputs, member_labels = self.training_batch(inputs, labels, generator)
        with pretiled():
            logits = self(fold_members(member_inputs))
        return self.loss(logits, fold_members(member_labels))

    # ----------------------------------------------------------------------------------------------------
    # prediction

    def predict(self, inputs: torch.Tensor) -> Prediction:
        """:func:`uqkit.predict` of this model: the same input to every member, ``[M, B, K]`` logits."""
        from uqkit.methods.prediction_protocol import predict

        return predict(self, inputs)

    def extra_repr(self) -> str:
        return (
            f"num_members={self.num_members}, "
            f"input_repetition={self.input_repetition}, batch_repetition={self.batch_repetition}, "
            f"fold_shared_input={self.fold_shared_input}"
        )
