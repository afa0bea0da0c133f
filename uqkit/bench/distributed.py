"""Data-parallel training of one method under ``torchrun``: DistributedDataParallel in the one trainer.

``torchrun --nproc-per-node N -m uqkit bench ...`` starts ``N`` processes (ranks). The command line sees
torchrun's ``WORLD_SIZE`` and initialises the default process group (:func:`torchrun_process_group`: gloo on
CPU, NCCL on CUDA with rank ``r`` on ``cuda:LOCAL_RANK``); every rank then runs the same suite, and the
trainer (:func:`uqkit.bench.trainer.train_method`) trains each method data-parallel through
:class:`DataParallel`.

The invariant: a run with ``N`` processes equals one process with the same **global** batch
(``--batch-size``), up to floating-point reduction order.

* Batches: every rank draws the same batch orders (the same seeds), so all ranks agree on each global batch
  of ``B`` examples; rank ``r`` takes the contiguous slice ``[B r / N, B (r + 1) / N)`` of it
  (:func:`shard_bounds`; a deep ensemble's ``[k, B]`` orders are sliced along ``B``).
* Gradients: :class:`torch.nn.parallel.DistributedDataParallel` averages them over the ranks after every
  backward pass. Rank ``r`` scales its loss by ``N n_r / B`` (``n_r`` the size of its slice), so the
  average is ``sum_r (n_r / B) grad L_r``: the gradient of the global batch's loss for every loss of the
  form "mean over the batch + a term that does not depend on the batch" (cross-entropy, the ELBO's
  ``KL / N``, weight decay, SG-MCMC's ``N x mean NLL + prior``), also when the last batch of an epoch does not
  split evenly. Every other step of the trainer (optimizer, schedule, hooks, validation, epoch selection)
  runs identically on every rank, so all ranks hold the same parameters throughout; the trainer checks that
  at the end of every epoch (:func:`check_in_sync`).
* Random numbers: two streams. The *shared* stream is torch's global generator, seeded identically on
  every rank: initialisation, batch order, the optimizer's step (SG-MCMC's injected noise is drawn once,
  identically on every rank, and so added once), hooks, validation and post-hoc fits. The *per-rank* stream
  (:class:`RankNoise`, seeded from the run's seed and the rank) is swapped in for the training forward pass
  only: dropout masks, Flipout signs, weight and MC noise of the rank's own examples, independent across
  ranks as they are across the examples of one process. (A shared stream there would give example ``i`` of
  every shard the same noise.) Methods without forward noise therefore train exactly as in one process, up
  to reduction order; methods with forward noise train with other, equally distributed noise.
* Statistics that a training forward pass accumulates over its batch (SNGP's GP precision) are summed over
  the ranks at the end of every epoch (:meth:`uqkit.bench.registry.Method.combine_rank_statistics`).
* Checkpoints: the trainer gathers every rank's per-rank stream into the epoch checkpoint; rank 0 writes it
  and every rank waits at a barrier. On ``--resume`` rank 0 reads it and broadcasts it (:func:`on_main`), so
  every rank continues from the same state with its own stream; a checkpoint written by another number of
  processes is refused.
* Files: only rank 0 writes (checkpoints, model files, results, report, log); the runner reads and sets
  aside files on rank 0 and broadcasts what it found, and evaluation runs on rank 0 while the others go on.

Not supported: the UCI regression protocol (its splits already train as one stacked model in one process),
``--executor ray`` with torchrun, and a global batch whose last batch has fewer examples than processes.
"""

from __future__ import annotations

import datetime
import inspect
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

__all__ = [
    "DDP_TIMEOUT",
    "DataParallel",
    "RankNoise",
    "barrier",
    "check_in_sync",
    "is_main_process",
    "launched_world_size",
    "on_main",
    "rank",
    "shard_bounds",
    "torchrun_process_group",
    "world_size",
]

DDP_TIMEOUT = datetime.timedelta(hours=2)
"""How long a collective waits for the other ranks (gloo's default is 30 minutes): the other ranks wait for
rank 0 while it evaluates a method, which can take longer on a large test set."""

_NOISE_TAG = 0x44445030  # separates the per-rank streams' seeds from any other use of the run's seed

T = TypeVar("T")


def _dist():
    import torch.distributed as dist

    return dist


def _initialized() -> bool:
    dist = _dist()
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank in the default process group (0 without one)."""
    return _dist().get_rank() if _initialized() else 0


def world_size() -> int:
    """The number of processes in the default process group (1 without one)."""
    return _dist().get_world_size() if _initialized() else 1


def is_main_process() -> bool:
    """Whether this process is rank 0, the one that writes files (always true without a process group)."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (nothing without a process group)."""
    if world_size() > 1:
        _dist().barrier()


def on_main(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``function(*args, **kwargs)`` on rank 0; every rank returns its result, or raises the exception it
    raised (broadcast with pickle). Without a process group: just the call.

    For the decisions that must agree across ranks and that read or change files: does a checkpoint exist,
    what does it hold, is a run directory free. Every rank must call it at the same point.
    """
    if world_size() == 1:
        return function(*args, **kwargs)
    outcome: list[Any] = [None]
    if is_main_process():
        try:
            outcome[0] = (True, function(*args, **kwargs))
        except Exception as error:  # re-raised below, on every rank
            outcome[0] = (False, error)
    _dist().broadcast_object_list(outcome, src=0)
    succeeded, value = outcome[0]
    if not succeeded:
        raise value
    return value


def launched_world_size() -> int:
    """``WORLD_SIZE`` as set by ``torchrun`` (1 when the command was not started by it).

    Raises:
        ValueError: for a ``WORLD_SIZE`` that is not a positive integer.
    """
    text = os.environ.get("WORLD_SIZE", "1")
    try:
        size = int(text)
    except ValueError:
        size = 0
    if size < 1:
        raise ValueError(f"WORLD_SIZE: expected a positive integer (torchrun sets it), got {text!r}")
    return size


@contextmanager
def torchrun_process_group(device: str) -> Iterator[str]:
    """Initialise the default process group from torchrun's environment; yields this rank's device.

    gloo for ``device="cpu"``; NCCL for ``device="cuda"``, rank ``r`` on ``cuda:LOCAL_RANK``. The group is
    destroyed on exit.

    Raises:
        ValueError: for a device other than ``cpu`` and ``cuda`` (an explicit ``cuda:N`` would put every
            rank on one GPU), or CUDA asked for without enough GPUs.
    """
    dist = _dist()
    if not dist.is_available():
        raise ValueError("torchrun: this torch build has no torch.distributed")
    if device not in ("cpu", "cuda"):
        raise ValueError(
            f"--device: under torchrun expected 'cpu' or 'cuda' (rank r uses cuda:LOCAL_RANK), got {device!r}"
        )
    options: dict[str, Any] = {"timeout": DDP_TIMEOUT}
    if device == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if local_rank >= available:
            raise ValueError(
                f"--device cuda: local rank {local_rank} needs cuda:{local_rank}, but {available} GPU(s) are "
                "visible; lower --nproc-per-node or use --device cpu"
            )
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)
        options["backend"] = "nccl"
        if "device_id" in inspect.signature(dist.init_process_group).parameters:  # torch >= 2.3
            options["device_id"] = torch.device(device)
    else:
        options.update(backend="gloo")
    dist.init_process_group(**options)
    try:
        yield device
    finally:
        dist.destroy_process_group()


def shard_bounds(size: int, shard: int, num_shards: int) -> tuple[int, int]:
    """``[start, stop)`` of shard ``shard`` of ``num_shards`` contiguous, balanced shards of ``size`` items
    (sizes differ by at most one; the first shards are the smaller ones)."""
    return size * shard // num_shards, size * (shard + 1) // num_shards


def _rank_seed(seed: int, rank_index: int) -> int:
    """The per-rank stream's seed: a hash of the run's seed and the rank (numpy's SeedSequence)."""
    sequence = np.random.SeedSequence([seed % 2**64, rank_index, _NOISE_TAG])
    return int(sequence.generate_state(1, np.uint64)[0])


class RankNoise:
    """This rank's own random stream, swapped in for the training forward passes (``with noise: ...``).

    Inside the block torch's global generator (and the CUDA generator of ``device``) hold the rank's
    state; on exit the rank's state is kept and the shared state put back, so that whatever the block drew
    leaves the shared stream untouched.

    Args:
        seed: the run's seed; the stream is seeded from it and ``rank_index`` (:func:`_rank_seed`).
        rank_index: the rank.
        device: the device whose CUDA generator is swapped too (``cpu``: only the CPU generator).
    """

    def __init__(self, seed: int, rank_index: int, device: str | torch.device) -> None:
        self.device = torch.device(device)
        stream_seed = _rank_seed(seed, rank_index)
        self.cpu_state = torch.Generator().manual_seed(stream_seed).get_state()
        self.cuda_state = None
        if self.device.type == "cuda":
            self.cuda_state = torch.Generator(device=self.device).manual_seed(stream_seed).get_state()
        self._shared: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def __enter__(self) -> RankNoise:
        cuda = self.device.type == "cuda"
        self._shared = (torch.get_rng_state(), torch.cuda.get_rng_state(self.device) if cuda else None)
        torch.set_rng_state(self.cpu_state)
        if cuda:
            torch.cuda.set_rng_state(self.cuda_state, self.device)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        shared_cpu, shared_cuda = self._shared
        self.cpu_state = torch.get_rng_state()
        torch.set_rng_state(shared_cpu)
        if shared_cuda is not None:
            self.cuda_state = torch.cuda.get_rng_state(self.device)
            torch.cuda.set_rng_state(shared_cuda, self.device)
        self._shared = None

    def state(self) -> dict[str, torch.Tensor]:
        """The stream's state (tensors only, for a ``weights_only`` checkpoint)."""
        state = {"cpu": self.cpu_state.clone()}
        if self.cuda_state is not None:
            state["cuda"] = self.cuda_state.clone()
        return state

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Continue the stream from ``state`` (from :meth:`state`)."""
        self.cpu_state = state["cpu"].clone()
        if self.cuda_state is not None:
            if "cuda" not in state:
                raise ValueError(
                    "per-rank random state: expected a CUDA state for a CUDA run, got a CPU-only one"
                )
            self.cuda_state = state["cuda"].clone()


def check_in_sync(module: nn.Module, when: str) -> None:
    """Check that every rank holds the same parameters, buffers and shared random state.

    Compares one float64 checksum per tensor (its sum; a generator's state weighted by position: the CPU
    one, and the CUDA one of ``module``'s device) across the ranks with one all-reduce (the max of the
    checksums and of their negatives). Data-parallel training keeps them bitwise equal, so any difference
    is a bug: e.g. a method whose state depends on the rank's shard in a way
    :meth:`~uqkit.bench.registry.Method.combine_rank_statistics` does not combine.

    Raises:
        RuntimeError: naming the tensors that differ.
    """
    if world_size() == 1:
        return
    named = [*module.named_parameters(), *module.named_buffers()]
    device = named[0][1].device if named else torch.device("cpu")
    sums = [tensor.detach().double().sum().to(device) for _, tensor in named]
    names = [name for name, _ in named]
    states = {"torch's global random state (the shared stream)": torch.get_rng_state()}
    if device.type == "cuda":
        states["the CUDA random state (the shared stream)"] = torch.cuda.get_rng_state(device)
    for name, state in states.items():
        state = state.double()
        sums.append((state * torch.arange(1, state.numel() + 1, dtype=torch.float64)).sum().to(device))
        names.append(name)
    checksums = torch.nan_to_num(torch.stack(sums), nan=1.5e308, posinf=1.7e308, neginf=-1.7e308)
    both = torch.cat([checksums, -checksums])
    _dist().all_reduce(both, op=_dist().ReduceOp.MAX)
    high, low = both[: len(sums)], -both[len(sums) :]
    differing = [names[index] for index in torch.nonzero(high != low).flatten().tolist()]
    if differing:
        shown = ", ".join(differing[:5]) + (f" and {len(differing) - 5} more" if len(differing) > 5 else "")
        raise RuntimeError(
            f"data-parallel training: the ranks disagree {when} on {shown}; every rank must hold the same "
            "state (a method that accumulates statistics over its batch in training must combine them in "
            "Method.combine_rank_statistics)"
        )


class _TrainingLoss(nn.Module):
    """The module DistributedDataParallel wraps: its forward is the method's training loss."""

    def __init__(self, method: nn.Module) -> None:
        super().__init__()
        self.method = method

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.method.training_loss(inputs, labels)


class DataParallel:
    """One method's data-parallel training in the trainer (one per :func:`train_method` call).

    Wraps the method's training loss in :class:`torch.nn.parallel.DistributedDataParallel`
    (``static_graph=True``: the parameters a method's loss leaves unused, e.g. a temperature trained after
    training, are found at the first step and skipped from then on; the set must not change between steps;
    buffers are not broadcast from rank 0 at each forward, as every rank's stay equal or are combined by
    :meth:`~uqkit.bench.registry.Method.combine_rank_statistics`).

    Args:
        method: the :class:`~uqkit.bench.registry.Method`, already on ``device``.
        device: this rank's device.
        seed: the run's seed (seeds :class:`RankNoise`).
    """

    def __init__(self, method: nn.Module, device: torch.device, seed: int) -> None:
        from torch.nn.parallel import DistributedDataParallel

        self.method = method
        self.rank, self.world_size = rank(), world_size()
        options: dict[str, Any] = {"static_graph": True}
        if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
            options["forward_sync_buffers"] = False  # torch >= 2.13; broadcast_buffers is deprecated there
        else:
            options["broadcast_buffers"] = False
        if device.type == "cuda":
            options["device_ids"] = [device]
        self.module = DistributedDataParallel(_TrainingLoss(method), **options)
        self.noise = RankNoise(seed, self.rank, device)

    def shard(self, index: torch.Tensor) -> tuple[torch.Tensor, float]:
        """This rank's slice of a global batch's indices (``[B]`` or ``[k, B]``, sliced along ``B``), and the
        factor ``N n_r / B`` on its loss (see the module docstring)."""
        size = index.shape[-1]
        start, stop = shard_bounds(size, self.rank, self.world_size)
        return index[..., start:stop], self.world_size * (stop - start) / size

    def loss(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The method's training loss on this rank's examples, drawn from the per-rank stream; its backward
        pass averages the gradients over the ranks."""
        with self.noise:
            return self.module(inputs, labels)

    def end_epoch(self, loss_sum: float, epoch: int) -> float:
        """Combine the ranks' batch statistics, check that the ranks agree, and return the sum of the
        ranks' ``loss_sum`` (each the sum of its losses times its examples)."""
        self.method.combine_rank_statistics(self.sum_over_ranks)
        check_in_sync(self.method, f"after epoch {epoch}")
        total = torch.tensor([loss_sum], dtype=torch.float64, device=self._device())
        return float(self.sum_over_ranks(total)[0])

    def sum_over_ranks(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of ``tensor`` over the ranks (a new tensor, on every rank)."""
        total = tensor.detach().clone()
        _dist().all_reduce(total)
        return total

    def checkpoint_state(self) -> dict[str, Any]:
        """What an epoch checkpoint needs in addition (gathered from every rank: call it on all)."""
        states: list[Any] = [None] * self.world_size
        _dist().all_gather_object(states, self.noise.state())
        return {"world_size": self.world_size, "rank_rng": states}

    def load_checkpoint_state(self, state: dict[str, Any], path: Any) -> None:
        """Continue from an epoch checkpoint's per-rank streams.

        Raises:
            ValueError: for a checkpoint written by another number of processes.
        """
        saved = int(state.get("world_size", 1))
        if saved != self.world_size or "rank_rng" not in state:
            raise ValueError(
                f"checkpoint {path}: written by {saved} process(es), this run has {self.world_size}; resume "
                f"with the same number (torchrun --nproc-per-node {saved}, or no torchrun for 1), or start a "
                "new run (--out)"
            )
        self.noise.load_state(state["rank_rng"][self.rank])

    def _device(self) -> torch.device:
        parameters = list(self.method.parameters())
        return parameters[0].device if parameters else torch.device("cpu")
