"""One training loop for every method: seeded, checked for non-finite losses, checkpointed, resumable.

Determinism: the batch order comes from a ``torch.Generator`` seeded with the run's seed, and stochastic
layers (dropout, weight noise) draw from torch's global generator, seeded before the method is built. Both
generators' states are saved in every epoch checkpoint, so a run resumed after a kill continues with the
same batches and the same noise as an uninterrupted run, and ends with the same weights (on CPU).

Checkpoints are written atomically (temporary file, then ``os.replace``) and read with
``torch.load(weights_only=True)``: they hold only tensors, numbers, strings, lists and dicts.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from uqkit.bench._atomic import atomic_write, read_torch
from uqkit.bench.evaluate import predict_in_batches
from uqkit.bench.progress import progress_bar, report_epoch
from uqkit.bench.registry import Method

__all__ = [
    "NonFiniteLossError",
    "TrainConfig",
    "TrainResult",
    "atomic_torch_save",
    "load_checkpoint",
    "train_method",
]


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (Adam, constant learning rate)."""

    epochs: int
    batch_size: int
    learning_rate: float
    seed: int = 0
    device: str = "cpu"
    progress: bool = True


@dataclass
class TrainResult:
    history: list[dict[str, float]]
    train_time_s: float


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically (see :func:`uqkit.bench._atomic.atomic_write`)."""
    atomic_write(path, lambda handle: torch.save(obj, handle))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint written by this module, with ``weights_only=True`` (no arbitrary unpickling).

    Raises:
        CorruptFileError: naming the file, when it is truncated or garbled (see :func:`read_torch`).
    """
    return read_torch(path)


def _evaluate_validation(
    method: Method, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int, device: str
) -> tuple[float, float]:
    """Validation accuracy and mean NLL of the predictive distribution; leaves the method in train mode."""
    prediction = predict_in_batches(method, inputs, batch_size, device, progress=False)
    log_probs = prediction.log_probs
    method.train()
    accuracy = float((log_probs.argmax(dim=-1) == labels).double().mean())
    nll = float(-log_probs.gather(1, labels.unsqueeze(1)).double().mean())
    return accuracy, nll


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
    """Train ``method`` with Adam on its :meth:`~uqkit.bench.registry.Method.training_loss`.

    The caller seeds torch's global generator before building the method; this function seeds the batch
    order. With ``checkpoint_path``, an epoch checkpoint is written after every epoch, and training resumes
    from it when it exists.

    Raises:
        NonFiniteLossError: naming the method, epoch and step, when a loss is NaN or infinite.
    """
    device = torch.device(config.device)
    method.to(device)
    optimizer = torch.optim.Adam(method.parameter_groups(config.learning_rate), lr=config.learning_rate)
    shuffle = torch.Generator().manual_seed(config.seed)
    history: list[dict[str, float]] = []
    start_epoch, elapsed = 0, 0.0
    if checkpoint_path is not None and Path(checkpoint_path).exists():
        state = load_checkpoint(checkpoint_path)
        method.load_state_dict(state["method"])
        optimizer.load_state_dict(state["optimizer"])
        shuffle.set_state(state["shuffle_rng"])
        torch.set_rng_state(state["torch_rng"])
        history, start_epoch, elapsed = state["history"], int(state["epoch"]), float(state["elapsed_s"])

    num_examples = len(train_labels)
    steps_per_epoch = math.ceil(num_examples / config.batch_size)
    method.train()
    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        method.on_epoch_start(epoch, config.epochs)
        order = torch.randperm(num_examples, generator=shuffle)
        loss_sum = 0.0
        bar = progress_bar(
            total=steps_per_epoch,
            desc=f"{name} epoch {epoch + 1}/{config.epochs}",
            enabled=config.progress,
        )
        with bar:
            for step in range(steps_per_epoch):
                index = order[step * config.batch_size : (step + 1) * config.batch_size]
                x = train_inputs[index].to(device, non_blocking=True)
                y = train_labels[index].to(device, non_blocking=True)
                loss = method.training_loss(x, y)
                if not torch.isfinite(loss):
                    value = float(loss.detach())
                    raise NonFiniteLossError(
                        f"method {name!r}: non-finite training loss ({value}) at epoch {epoch + 1}, "
                        f"step {step + 1}; lower the learning rate (--lr) or check the inputs"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += float(loss.detach()) * len(index)
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum / min(num_examples, (step + 1) * config.batch_size):.4f}")
        val_accuracy, val_nll = _evaluate_validation(
            method, val_inputs, val_labels.cpu(), max(config.batch_size, 512), config.device
        )
        epoch_time = time.perf_counter() - started
        elapsed += epoch_time
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": loss_sum / num_examples,
                "val_accuracy": val_accuracy,
                "val_nll": val_nll,
                "time_s": epoch_time,
            }
        )
        report_epoch(name, history[-1], config.epochs, enabled=config.progress)
        if checkpoint_path is not None:
            atomic_torch_save(
                {
                    "epoch": epoch + 1,
                    "method": method.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "shuffle_rng": shuffle.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "history": history,
                    "elapsed_s": elapsed,
                },
                checkpoint_path,
            )
    method.eval()
    return TrainResult(history=history, train_time_s=elapsed)
