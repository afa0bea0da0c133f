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

At test time all members get the same input; the ``M`` outputs are the ensemble, ``[M, B, C]``. When the
network starts with a linear layer or a convolution (possibly after ``nn.Flatten``), the ``M`` copies of one
input meet the first layer's weight blocks ``W = [W_1, ..., W_M]`` as ``W [x; ...; x] = (sum_m W_m) x``, so
:class:`MIMO` runs that layer with the folded weight ``sum_m W_m`` on the un-tiled input: the test-time cost
is that of one network with an ``M`` times wider head, exactly (up to float rounding) the same result.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from uqkit._validation import check_float_tensor, check_labels, check_positive_int, check_unit_interval
from uqkit.nn._cache import VersionedCache, is_cacheable
from uqkit.nn.members import with_member_dim
from uqkit.prediction import Prediction

__all__ = ["MIMO"]


_FOLDABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)


_Path = list[tuple[nn.Sequential, list[nn.Module], int]]


def _first_layer_path(network: nn.Module) -> tuple[_Path, nn.Module] | None:
    """Where the first module with weights sits when only ``nn.Flatten`` / ``nn.Identity`` may precede it.

    Only chains of ``nn.Sequential`` (with ``nn.Sequential``'s own ``forward`` and no hooks) are followed,
    because their execution order is their registration order.

    Returns:
        ``(path, layer)``: ``path`` lists, outermost first, each ``nn.Sequential``, its children and the index
        of the child that leads to ``layer``; ``None`` when ``network`` is not such a chain or its first layer
        is not an ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` with ``groups = 1`` and no hooks.
    """
    path: _Path = []
    module = network
    while type(module).forward is nn.Sequential.forward:
        if _has_hooks(module):
            return None
        children = list(module.children())
        for index, child in enumerate(children):
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
        modules = sequential._modules
        if _has_hooks(sequential) or len(modules) != len(children):
            return False
        if not all(a is b for a, b in zip(modules.values(), children, strict=True)):
            return False
    return not _has_hooks(layer)


def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


class MIMO(nn.Module):
    """A multi-input multi-output network: ``M`` subnetworks trained independently in one model.

    Args:
        network: maps ``[B, M * C, *rest]`` (the ``M`` members' inputs concatenated along dimension 1) to
            ``[B, M * K]`` (the ``M`` heads' outputs, member-major). Build your backbone with an ``M`` times
            wider input and output, e.g. ``mlp((M * C, H, W), M * K)``.
        num_members: ``M`` (Havasi et al.: 3 on CIFAR, 2 on ImageNet).
        example_dims: dimensions of one example, ``len([C, *rest])`` (1 for feature vectors, 3 for images).
        input_repetition: ``rho`` in ``[0, 1]``, the fraction of training positions at which all members see
            the same example (default 0, the paper's CIFAR setting).
        batch_repetition: ``r >= 1``, how many times each example appears in a training batch (default 1;
            the paper uses 4 on CIFAR).
        fold_shared_input: at test time (one input for all members) run the first layer with the folded
            weight ``sum_m W_m`` instead of tiling the input (default ``True``; used when the first layer is
            an ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` with ``groups=1``, possibly after ``nn.Flatten``,
            in a chain of ``nn.Sequential``).

    Shape:
        ``forward``: input ``[B, C, *rest]`` (the same input to every member) or ``[M, B, C, *rest]`` (one
        input per member); output ``[M, B, K]``.

    Example:
        >>> mimo = MIMO(uqkit.bench.models.mlp((3, 28, 28), 3 * 10), num_members=3, example_dims=3)
        >>> inputs, labels = mimo.training_batch(x, y)   # [3, B, 1, 28, 28], [3, B]
        >>> loss = mimo.loss(mimo(inputs), labels)
        >>> prediction = mimo.predict(x_test)            # Prediction with [3, B, 10] logits
    """

    def __init__(
        self,
        network: nn.Module,
        num_members: int,
        example_dims: int,
        *,
        input_repetition: float = 0.0,
        batch_repetition: int = 1,
        fold_shared_input: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(network, nn.Module):
            raise TypeError(f"network: expected a torch.nn.Module, got {type(network).__name__}")
        self.network = network
        self.num_members = check_positive_int(num_members, "num_members")
        self.example_dims = check_positive_int(example_dims, "example_dims")
        self.input_repetition = check_unit_interval(input_repetition, "input_repetition")
        self.batch_repetition = check_positive_int(batch_repetition, "batch_repetition")
        if not isinstance(fold_shared_input, bool):
            raise TypeError(f"fold_shared_input: expected a bool, got {type(fold_shared_input).__name__}")
        self.fold_shared_input = fold_shared_input

    # ----------------------------------------------------------------------------------------------------
    # forward

    def _split_heads(self, outputs: torch.Tensor, batch: int) -> torch.Tensor:
        if outputs.dim() != 2 or outputs.shape[0] != batch or outputs.shape[1] % self.num_members:
            raise ValueError(
                f"network output: expected [B, M * K] = [{batch}, {self.num_members} * K], got shape "
                f"{list(outputs.shape)}"
            )
        return outputs.view(batch, self.num_members, -1).transpose(0, 1)

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

    def _folded_forward(self, x: torch.Tensor) -> torch.Tensor | None:
        """The network on ``M`` copies of ``x``, its first layer with the summed member blocks."""
        found = self.__dict__.get("_fold_path")
        if found is None or not _path_is_current(*found):
            found = _first_layer_path(self.network)
            self.__dict__["_fold_path"] = found  # reused while no child is replaced and no hook added
        if found is None:
            return None
        path, layer = found
        for _, children, index in path:  # nn.Flatten / nn.Identity before the first layer, outermost first
            for child in children[:index]:
                x = child(x)
        linear = isinstance(layer, nn.Linear)
        if linear and x.dim() != 2:  # the members' features are concatenated along dimension 1
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

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """The ``M`` heads' outputs ``[M, B, K]``.

        Args:
            inputs: ``[B, C, *rest]`` (the same input for every member) or ``[M, B, C, *rest]`` (one each).
        """
        check_float_tensor(inputs, "inputs", finite=False)
        if self.fold_shared_input and inputs.dim() == self.example_dims + 1:
            outputs = self._folded_forward(inputs)
            if outputs is not None:
                return self._split_heads(outputs, inputs.shape[0])
        x = with_member_dim(inputs, self.num_members, self.example_dims)
        batch = x.shape[1]
        # [M, B, C, *rest] -> [B, M * C, *rest]: member-major along the channel dimension
        stacked = x.transpose(0, 1).reshape(batch, self.num_members * x.shape[2], *x.shape[3:])
        return self._split_heads(self.network(stacked), batch)

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
        check_float_tensor(inputs, "inputs", self.example_dims + 1, "[B, C, ...]", finite=False)
        if not isinstance(labels, torch.Tensor) or labels.dim() == 0 or labels.shape[0] != inputs.shape[0]:
            raise ValueError(
                f"labels: expected a tensor with {inputs.shape[0]} rows (one per input), got "
                f"{list(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__}"
            )
        index = self.training_indices(inputs.shape[0], generator).to(inputs.device)
        return inputs[index], labels.to(inputs.device)[index]

    @staticmethod
    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``sum_m mean_i CE(logits[m, i], labels[m, i])``: the members' NLLs summed (Havasi et al. 2021).

        Args:
            logits: ``[M, N, K]``.
            labels: ``[M, N]`` class indices (each member's own labels, from :meth:`training_batch`).

        Returns:
            A scalar tensor.
        """
        check_float_tensor(logits, "logits", 3, "[members, batch, classes]", finite=False)
        if not isinstance(labels, torch.Tensor) or labels.shape != logits.shape[:2]:
            shape = list(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise ValueError(
                f"labels: expected shape {list(logits.shape[:2])} ([members, batch]), got {shape}"
            )
        on_cpu = logits.device.type == "cpu"  # the range check would sync a GPU every step
        check_labels(labels.reshape(-1), "labels", num_classes=logits.shape[-1] if on_cpu else None)
        members = logits.shape[0]
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        return nll * members

    def training_loss(
        self, inputs: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """:meth:`loss` on a fresh :meth:`training_batch` of ``(inputs, labels)`` (``[B, ...]``, ``[B]``)."""
        member_inputs, member_labels = self.training_batch(inputs, labels, generator)
        return self.loss(self(member_inputs), member_labels)

    # ----------------------------------------------------------------------------------------------------
    # prediction

    def predict(self, inputs: torch.Tensor) -> Prediction:
        """The ensemble's prediction for ``[B, C, *rest]`` inputs: the same input to every member.

        Returns:
            :class:`uqkit.Prediction` with ``[M, B, K]`` logits.
        """
        check_float_tensor(inputs, "inputs", self.example_dims + 1, "[B, C, ...]", finite=False)
        return Prediction(self(inputs))

    def extra_repr(self) -> str:
        return (
            f"num_members={self.num_members}, example_dims={self.example_dims}, "
            f"input_repetition={self.input_repetition}, batch_repetition={self.batch_repetition}, "
            f"fold_shared_input={self.fold_shared_input}"
        )
