"""One training loop for every method: seeded, checked for non-finite losses, checkpointed, resumable.

Learning rate: ``TrainConfig.schedule`` ``"cosine"`` decays every parameter group's learning rate per step
from its base value to 0 over the run, ``lr_t = lr * (1 + cos(pi * t / T)) / 2`` for step ``t`` of ``T``
(Loshchilov & Hutter 2017 without restarts, as uncertainty-baselines trains its models); ``"constant"``
keeps it. The factor is a function of the global step alone, so a resumed run recomputes it.

Batch order: a method with ``num_batch_orders = k > 1`` (a deep ensemble: one per member, as
Lakshminarayanan et al. 2017 shuffle each member independently) gets ``k`` independent permutations of the
training set per epoch, order ``j`` from a ``torch.Generator`` seeded with ``seed + j``; its loss receives
``[k, B, ...]`` inputs and ``[k, B]`` labels. Order 0 is the single-order methods' order, so member ``j`` sees
exactly the batches of a single model trained with seed ``seed + j``. A method may draw its orders itself
(:meth:`~uqkit.bench.registry.Method.draw_batch_orders`). With ``order_rows`` (a stack of networks, each on
its own data: the UCI protocol's splits), the training and validation tensors are ``[R, N, ...]``, ``R`` data
sets, and order ``j`` takes its examples from row ``order_rows[j]``.

Epoch selection: after every epoch the trainer scores the method on the validation split and keeps, for
each independently selected part (:meth:`~uqkit.bench.registry.Method.validation_nlls`: the whole method,
or each member of a deep ensemble with ``select_members_separately``), the state of the epoch with its
lowest validation NLL; training ends with those states loaded (early stopping by checkpoint selection;
chosen on validation, never on test).
``TrainResult.selected_epochs`` says which epochs they were. A method with ``select_best_epoch = False``
(a sampler) ends with its last epoch's state (``selected_epochs`` is then ``[epochs]``). A method may score
itself (:meth:`~uqkit.bench.registry.Method.score_validation`) and only after some epochs
(``validation_every``; the last epoch always, unless it is ``None``: never). A method of independent parts
(``independent_parts``: a stack of networks) may go on training after a non-finite loss: the parts it spoils
score ``inf`` and are never selected.

A method's own optimizer and steps: :meth:`~uqkit.bench.registry.Method.make_optimizer` may return the
method's optimizer (SG-MCMC), which the trainer then steps without its learning-rate schedule; around every
step it calls ``method.on_step_start(step, total_steps, optimizer)`` and ``method.on_step_end(step,
total_steps)`` with the 0-based global step, ``method.on_epoch_end(epoch, epochs)`` after every epoch
(1-based, after validation), and ``method.on_train_end()`` once at the end.

Determinism: stochastic layers (dropout, weight noise) draw from torch's global generator, seeded before
the method is built. Every generator's state is saved in every epoch checkpoint, so a run resumed after a
kill continues with the same batches and the same noise as an uninterrupted run, and ends with the same
weights (on CPU).

Checkpoints are written atomically (temporary file, then ``os.replace``) and read with
``torch.load(weights_only=True)``: they hold only tensors, numbers, strings, lists and dicts.

Data-parallel training: under a process group of more than one rank (``torchrun``, see
:mod:`uqkit.bench.distributed`), each rank trains on its slice of every global batch of
``config.batch_size`` examples, DistributedDataParallel averages the gradients, and the result equals one
process with the same global batch up to reduction order; only rank 0 writes the epoch checkpoint, and every
rank resumes from it.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from uqkit.bench._atomic import atomic_write, read_torch
from uqkit.bench.distributed import (
    DataParallel,
    barrier,
    check_in_sync,
    is_main_process,
    on_main,
    world_size,
)
from uqkit.bench.inference import predict_in_batches
from uqkit.bench.progress import progress_bar, report_epoch
from uqkit.bench.registry import Method

__all__ = [
    "ADAM_EPS",
    "SCHEDULES",
    "NonFiniteLossError",
    "TrainConfig",
    "TrainResult",
    "atomic_torch_save",
    "learning_rate_factor",
    "load_checkpoint",
    "train_method",
]

SCHEDULES = ("cosine", "constant")
ADAM_EPS = 1e-8
"""Adam's ``eps`` for every parameter group that does not set its own (torch's default)."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (Adam; ``schedule``: one of :data:`SCHEDULES`)."""

    epochs: int
    batch_size: int
    learning_rate: float
    seed: int = 0
    device: str = "cpu"
    progress: bool = True
    schedule: str = "constant"


def learning_rate_factor(schedule: str, step: int, total_steps: int) -> float:
    """The factor on the base learning rate at 0-based ``step`` of ``total_steps``.

    ``"cosine"``: ``(1 + cos(pi * step / total_steps)) / 2``, 1 at the first step and decaying towards 0
    (Loshchilov & Hutter 2017, SGDR eq. (5) with ``eta_min = 0`` and one cycle); ``"constant"``: 1.

    Raises:
        ValueError: for a ``schedule`` that is not in :data:`SCHEDULES`.
    """
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * step / max(total_steps, 1)))
    raise ValueError(f"schedule: expected one of {', '.join(SCHEDULES)}, got {schedule!r}")


@dataclass
class TrainResult:
    """Per-epoch history, training time, the epoch (1-based) whose state each part ends with and, for a
    method that selects its epochs, each part's validation NLL there (``inf`` for a part never finite)."""

    history: list[dict[str, float]]
    train_time_s: float
    selected_epochs: list[int]
    selected_nlls: list[float] = field(default_factory=list)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically (see :func:`uqkit.bench._atomic.atomic_write`)."""
    atomic_write(path, lambda handle: torch.save(obj, handle))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint written by this module, with ``weights_only=True`` (no arbitrary unpickling).

    Raises:
        CorruptFileError: naming the file, when it is truncated or garbled (see :func:`read_torch`).
    """
    return read_torch(path)


def _load_if_exists(path: str | os.PathLike | None) -> dict[str, Any] | None:
    """:func:`load_checkpoint` of ``path``, or ``None`` when there is no such file (or no path)."""
    return None if path is None or not Path(path).exists() else load_checkpoint(path)


def _evaluate_validation(
    method: Method, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int, device: str
) -> tuple[dict[str, float], list[float]]:
    """The validation numbers of the predictive distribution (history keys: accuracy, mean NLL and ECE with
    15 bins, as the evaluation, for classification; NLL and RMSE for regression: the method's likelihood's
    :meth:`~uqkit.bench.likelihoods.Likelihood.validation_metrics`), and the NLL of each independently
    selected part (:meth:`Method.validation_nlls`).

    A method that scores itself (:meth:`Method.score_validation`) is scored by it, in eval mode and without
    gradients. Leaves the method in train mode.
    """
    method.eval()
    with torch.no_grad():
        scored = method.score_validation(inputs, labels)
    if scored is not None:
        method.train()
        return scored
    prediction = predict_in_batches(method, inputs, batch_size, device, progress=False)
    method.train()
    return method.likelihood.validation_metrics(prediction, labels), method.validation_nlls(
        prediction, labels
    )


def _validates_after(method: Method, epoch: int, num_epochs: int) -> bool:
    """Whether the trainer scores ``method`` on validation after 1-based ``epoch``: every
    ``validation_every`` epochs and after the last (never with ``None``)."""
    every = method.validation_every
    return every is not None and (epoch % every == 0 or epoch == num_epochs)


def train_method(
    method: Method,
    name: str,
    train_inputs: torch.Tensor,
    train_labels: torch.Tensor,
    val_inputs: torch.Tensor,
    val_labels: torch.Tensor,
    config: TrainConfig,
    checkpoint_path: str | os.PathLike | None = None,
) -> TrainResult:
    """Train ``method`` on its :meth:`~uqkit.bench.registry.Method.training_loss` (Adam, or its own).

    The caller seeds torch's global generator before building the method; this function seeds the batch
    orders (``method.num_batch_orders`` of them, see the module docstring) and sets the learning rate of
    every parameter group at every step by ``config.schedule``. With ``checkpoint_path``, an epoch checkpoint
    is written after every epoch, and training resumes from it when it exists.

    Under a process group of more than one rank it trains data-parallel (module docstring); every rank calls
    it with the same arguments.

    Raises:
        NonFiniteLossError: naming the method, epoch and step, when a loss is NaN or infinite.
        ValueError: for an unknown ``config.schedule``, a checkpoint written with another schedule or by
            another number of processes, or (data-parallel) an epoch whose last batch has fewer examples
            than processes.
    """
    learning_rate_factor(config.schedule, 0, 1)  # validates the name before any work
    device = torch.device(config.device)
    method.to(device)
    optimizer = method.make_optimizer(config.learning_rate)
    scheduled = optimizer is None  # the trainer's schedule; a method's own optimizer sets its own rates
    if optimizer is None:
        optimizer = torch.optim.Adam(
            method.parameter_groups(config.learning_rate), lr=config.learning_rate, eps=ADAM_EPS
        )
    base_learning_rates = [group["lr"] for group in optimizer.param_groups] if scheduled else []
    num_orders = int(method.num_batch_orders)
    shuffles = [torch.Generator().manual_seed(config.seed + order) for order in range(num_orders)]
    history: list[dict[str, float]] = []
    start_epoch, elapsed = 0, 0.0
    best: dict[str, list] = {"nll": [], "epoch": [], "states": []}  # per part, filled after epoch 1
    order_rows = None if method.order_rows is None else method.order_rows.reshape(-1, 1)
    if order_rows is not None and (
        len(order_rows) != num_orders
        or train_labels.dim() < 2
        or not 0 <= int(order_rows.min()) <= int(order_rows.max()) < len(train_labels) == len(val_labels)
    ):
        raise ValueError(
            f"method {name!r}: order_rows expects a row of [R, N, ...] training and validation data for "
            f"each of its {num_orders} batch orders, got rows {order_rows.flatten().tolist()[:8]} of data of "
            f"shapes {tuple(train_labels.shape)} and {tuple(val_labels.shape)}"
        )
    num_examples = train_labels.shape[1] if order_rows is not None else len(train_labels)
    steps_per_epoch = math.ceil(num_examples / config.batch_size)
    parallel = None
    if world_size() > 1:
        last_batch = num_examples - (steps_per_epoch - 1) * config.batch_size
        if last_batch < world_size():
            raise ValueError(
                f"--batch-size {config.batch_size}: the last batch of an epoch holds {last_batch} of the "
                f"{num_examples} training examples, fewer than the {world_size()} processes it is split "
                "across; choose another batch size"
            )
        parallel = DataParallel(method, device, config.seed)
    state = on_main(_load_if_exists, checkpoint_path)  # rank 0 reads, every rank gets the same state
    if state is not None:
        saved_world_size = int(state.get("world_size", 1))
        if parallel is not None:
            parallel.load_checkpoint_state(state, checkpoint_path)
        elif saved_world_size != 1:
            raise ValueError(
                f"checkpoint {checkpoint_path}: written by {saved_world_size} processes; resume it under "
                f"torchrun --nproc-per-node {saved_world_size}, or start a new run (--out)"
            )
        method.load_state_dict(state["method"])
        optimizer.load_state_dict(state["optimizer"])
        saved_schedule = state.get("schedule", "constant")
        if saved_schedule != config.schedule:
            raise ValueError(
                f"checkpoint {checkpoint_path}: written with learning-rate schedule {saved_schedule!r}, this "
                f"run uses {config.schedule!r}; start a new run (--out)"
            )
        saved_rngs = state["shuffle_rng"]
        saved_rngs = saved_rngs if isinstance(saved_rngs, list) else [saved_rngs]
        if len(saved_rngs) != num_orders:
            raise ValueError(
                f"checkpoint {checkpoint_path}: holds {len(saved_rngs)} batch order(s), this method draws "
                f"{num_orders}; start a new run (--out)"
            )
        for shuffle, rng in zip(shuffles, saved_rngs, strict=True):
            shuffle.set_state(rng)
        torch.set_rng_state(state["torch_rng"])
        history, start_epoch, elapsed = state["history"], int(state["epoch"]), float(state["elapsed_s"])
        best = state.get("best", best)

    progress = config.progress and is_main_process()
    total_steps = config.epochs * steps_per_epoch
    method.train()
    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        method.on_epoch_start(epoch, config.epochs)
        orders = method.draw_batch_orders(num_examples, shuffles)
        loss_sum, seen = 0.0, 0
        bar = progress_bar(
            total=steps_per_epoch, desc=f"{name} epoch {epoch + 1}/{config.epochs}", enabled=progress
        )
        with bar:
            for step in range(steps_per_epoch):
                index = orders[:, step * config.batch_size : (step + 1) * config.batch_size]
                if num_orders == 1:
                    index = index[0]
                weight = None
                if parallel is not None:
                    index, weight = parallel.shard(index)  # this rank's examples, the factor on its loss
                global_step = epoch * steps_per_epoch + step
                method.on_step_start(global_step, total_steps, optimizer)
                rows = index if order_rows is None else (order_rows, index)
                x = train_inputs[rows].to(device, non_blocking=True)
                y = train_labels[rows].to(device, non_blocking=True)
                loss = method.training_loss(x, y) if parallel is None else parallel.loss(x, y)
                if not method.independent_parts and not torch.isfinite(loss):
                    value = float(loss.detach())
                    raise NonFiniteLossError(
                        f"method {name!r}: non-finite training loss ({value}) at epoch {epoch + 1}, "
                        f"step {step + 1}; lower the learning rate (--lr) or check the inputs"
                    )
                if scheduled:
                    factor = learning_rate_factor(config.schedule, global_step, total_steps)
                    for group, base in zip(optimizer.param_groups, base_learning_rates, strict=True):
                        group["lr"] = base * factor
                optimizer.zero_grad(set_to_none=True)
                (loss if weight is None else loss * weight).backward()
                optimizer.step()
                method.on_step_end(global_step, total_steps)
                loss_sum += float(loss.detach()) * index.shape[-1]
                seen += index.shape[-1]
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}")
        if parallel is not None:
            loss_sum = parallel.end_epoch(loss_sum, epoch + 1)  # combined statistics, ranks checked equal
        validation: dict[str, float] = {}
        if _validates_after(method, epoch + 1, config.epochs):
            validation, part_nlls = _evaluate_validation(
                method, val_inputs, val_labels.cpu(), max(config.batch_size, 512), config.device
            )
            if method.select_best_epoch:
                _keep_best_parts(method, best, part_nlls, epoch + 1)
        method.on_epoch_end(epoch + 1, config.epochs)
        epoch_time = time.perf_counter() - started
        elapsed += epoch_time
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": loss_sum / num_examples,
                **validation,
                "time_s": epoch_time,
            }
        )
        report_epoch(name, history[-1], config.epochs, enabled=progress)
        if checkpoint_path is not None:
            checkpoint = {
                "epoch": epoch + 1,
                "method": method.state_dict(),
                "optimizer": optimizer.state_dict(),
                "shuffle_rng": [shuffle.get_state() for shuffle in shuffles],
                "schedule": config.schedule,
                "torch_rng": torch.get_rng_state(),
                "history": history,
                "elapsed_s": elapsed,
                "best": best,
            }
            if parallel is not None:
                checkpoint.update(parallel.checkpoint_state())  # every rank's own stream (a collective)
            if is_main_process():
                atomic_torch_save(checkpoint, checkpoint_path)
            barrier()  # no rank goes on (or reads the checkpoint) before it is written
    if best["states"]:
        method.load_part_states(best["states"])
    selected = list(best["epoch"]) if method.select_best_epoch and best["epoch"] else [config.epochs]
    method.on_train_end()
    if parallel is not None:
        check_in_sync(method, "at the end of training")
    method.eval()
    return TrainResult(
        history=history, train_time_s=elapsed, selected_epochs=selected, selected_nlls=list(best["nll"])
    )


def _keep_best_parts(method: Method, best: dict[str, list], part_nlls: list[float], epoch: int) -> None:
    """Record, in ``best``, the state of every part whose validation NLL at ``epoch`` is its lowest so far.

    A non-finite NLL never counts as an improvement. ``best`` holds per-part lists ``"nll"``, ``"epoch"``
    and ``"states"`` (tensors only, so that it is saved in the epoch checkpoint and read with
    ``weights_only=True``).
    """
    if not best["nll"]:
        best["nll"] = [math.inf] * len(part_nlls)
        best["epoch"] = [epoch] * len(part_nlls)
        best["states"] = method.part_states(list(range(len(part_nlls))))
    if len(part_nlls) != len(best["nll"]):
        raise ValueError(
            f"validation_nlls: expected {len(best['nll'])} parts as in earlier epochs, got {len(part_nlls)}"
        )
    improved = [i for i, nll in enumerate(part_nlls) if math.isfinite(nll) and nll < best["nll"][i]]
    for index, state in zip(improved, method.part_states(improved) if improved else [], strict=True):
        best["nll"][index], best["epoch"][index] = part_nlls[index], epoch
        best["states"][index] = state
