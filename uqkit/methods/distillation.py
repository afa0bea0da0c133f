"""Predictive distillation of a posterior (or any ensemble) into one network: :func:`distill_predictive`.

Bayesian Dark Knowledge (Korattikara et al. 2015, "Bayesian Dark Knowledge", Sec. 2) trains a *student*
``S(y | x, w)`` to match the teacher's posterior predictive ``p(y | x, D) = (1 / K) sum_k p(y | x, theta_k)``,
the Monte Carlo average over ``K`` posterior samples (SG-MCMC samples, or the members of a deep ensemble).
Their Eq. (1)-(3): the loss for one input is

    L(w | x) = KL( p(y | x, D) || S(y | x, w) ) = -E_{p(y | x, D)} log S(y | x, w) + const,

averaged over a set ``D'`` of student inputs: the training inputs, or inputs "near" them, obtained by
perturbing them (their Sec. 2; Gaussian noise ``x' = x + sigma eps``, ``eps ~ N(0, I)``, here
``input_noise = sigma``). This is Hinton et al.'s (2015) distillation on the teacher's predictive, at
temperature 1: a temperature ``T != 1`` would change the distribution the student learns, so none is offered.

* **Classification.** The teacher's predictive is ``pbar(x) = mean_k softmax(f_k(x))`` (what
  :func:`uqkit.predict` gives as :attr:`uqkit.Prediction.probs`), and the loss is
  ``KL(pbar(x) || softmax(g_w(x)))`` summed over classes and averaged over the batch.
* **Gaussian regression.** The teacher's predictive is the mixture ``(1 / K) sum_k N(mu_k, s2_k)`` (a
  :class:`uqkit.GaussianPrediction`), the student a Gaussian ``N(m, v)``. The cross-entropy
  ``-E_mix log N(y | m, v) = 1/2 log(2 pi v) + (Var_mix + (E_mix - m)^2) / (2 v)`` depends on the mixture only
  through its mean ``E_mix`` and variance ``Var_mix``, so it equals, up to a constant that does not depend
  on the student, ``KL(N(E_mix, Var_mix) || N(m, v))``, which is the loss used (summed over targets,
  averaged over the batch; zero exactly when the student's mean and variance are the mixture's).

The student is trained in place with Adam (or the optimizer given) and costs one network at test time:
``uqkit.predict(student, x)`` is ``S = 1``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from uqkit._validation import (
    check_float_tensor,
    check_positive_float,
    check_positive_int,
)
from uqkit.methods.prediction_protocol import predict, read_output
from uqkit.prediction import GaussianPrediction, Prediction

__all__ = ["distill_predictive", "distillation_loss"]

_LOG_FLOOR = -1e4
"""Floor of the teacher's log-probabilities: a class whose probability underflows to 0 (log -inf) then
contributes ``0 * (floor - log q) = 0`` to the KL instead of ``0 * -inf = NaN``."""


def distillation_loss(
    target: Prediction | GaussianPrediction, student_output: torch.Tensor | tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """The per-batch distillation loss: the KL from the teacher's predictive to the student's.

    Args:
        target: the teacher's prediction on the batch (``[S, B, C]`` logits, or ``[S, B, D]`` means and
            variances).
        student_output: the student's ``[B, C]`` logits, or its ``(mean, variance)`` ``[B, D]`` each.

    Returns:
        Scalar: ``mean_b KL(pbar_b || softmax(g_b))`` for classification; ``mean_b sum_d KL(N(E_mix, Var_mix)
        || N(m, v))`` for Gaussian regression (module docstring).

    Raises:
        TypeError: when one side is a classifier and the other a Gaussian.
        ValueError: when the batch or class/target counts differ.
    """
    if isinstance(target, GaussianPrediction):
        if not isinstance(student_output, tuple):
            raise TypeError(
                "student output: expected a Gaussian (mean and variance) to match the teacher's Gaussian "
                f"predictive, got {type(student_output).__name__}"
            )
        mean, variance = student_output
        _check_match(mean, target.mean, "student mean")
        _check_match(variance, target.variance, "student variance")
        teacher_mean, teacher_variance = target.mean.detach(), target.variance.detach()
        ratio = teacher_variance / variance
        kl = 0.5 * (ratio - 1 - ratio.log() + (teacher_mean - mean).square() / variance)
        return kl.sum(dim=-1).mean()
    if isinstance(student_output, tuple):
        raise TypeError(
            "student output: expected [B, C] logits to match the teacher's classifier, got a Gaussian"
        )
    _check_match(student_output, target.probs, "student logits")
    teacher_log_probs = target.log_probs.detach().clamp(min=_LOG_FLOOR)
    return F.kl_div(
        student_output.log_softmax(dim=-1), teacher_log_probs, reduction="batchmean", log_target=True
    )


def _check_match(value: torch.Tensor, reference: torch.Tensor, name: str) -> None:
    if value.shape != reference.shape:
        raise ValueError(
            f"{name}: expected shape {tuple(reference.shape)} (the teacher's predictive on the batch), got "
            f"{tuple(value.shape)}"
        )


def _batches(
    data: torch.Tensor | Iterable[Any], batch_size: int, generator: torch.Generator | None
) -> Iterable[tuple[torch.Tensor, torch.Tensor | None]]:
    """``(inputs, index)`` batches: a shuffled pass over a tensor (``index`` for cached targets), or the
    batches of a loader (``index = None``; a tuple or list batch contributes its first element)."""
    if isinstance(data, torch.Tensor):
        order = torch.randperm(data.shape[0], generator=generator)
        for start in range(0, data.shape[0], batch_size):
            index = order[start : start + batch_size]
            yield data[index.to(data.device)], index
        return
    for step, batch in enumerate(data):
        inputs = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
        if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point():
            raise TypeError(
                f"data: expected batches that are float tensors (or tuples whose first element is one), got "
                f"{type(inputs).__name__} at batch {step}"
            )
        yield inputs, None


def _device(module: nn.Module) -> torch.device | None:
    parameter = next(module.parameters(), None)
    return None if parameter is None else parameter.device


def distill_predictive(
    teacher: nn.Module,
    student: nn.Module,
    data: torch.Tensor | Iterable[Any],
    *,
    epochs: int = 10,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    input_noise: float = 0.0,
    num_samples: int | None = None,
    output: Callable[[Any], Any] | None = None,
    student_output: Callable[[Any], Any] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    generator: torch.Generator | None = None,
) -> list[float]:
    """Train ``student`` in place to match the posterior predictive of ``teacher`` (Korattikara et al. 2015).

    Minimises ``mean_{x' in D'} KL(p_teacher(y | x') || p_student(y | x'))`` (module docstring), where ``D'``
    is ``data``, perturbed by Gaussian noise of standard deviation ``input_noise`` drawn anew at every step.
    The teacher's predictive is :func:`uqkit.predict` of ``teacher`` (eval mode, no gradients): any model
    it accepts, e.g. a :class:`uqkit.DeepEnsemble` of posterior samples (``[K, B, C]`` logits), a Bayesian
    network, or a model with a :class:`uqkit.GaussianPrediction`. Without input noise and with a tensor
    ``data``, the teacher's predictive is computed once for every example and reused in every epoch.

    Args:
        teacher: the model whose predictive is distilled.
        student: the network trained; called as ``student(x)`` on a batch ``[B, ...]``, in training mode (its
            mode is restored afterwards). Its output is read as :func:`uqkit.predict` reads outputs (logits,
            or a Gaussian dict/object), after ``student_output`` if given.
        data: the student's inputs: a float tensor ``[N, ...]`` (shuffled every epoch with ``generator``), or
            an iterable of batches (a ``DataLoader``), each a tensor or a tuple whose first element is the
            inputs (labels are ignored: the targets come from the teacher).
        epochs: passes over ``data``.
        batch_size: examples per step (tensor ``data`` only).
        learning_rate: Adam's step size (when ``optimizer`` is not given).
        input_noise: ``sigma >= 0``, the standard deviation of the Gaussian noise added to every input
            (BDK's perturbed inputs; 0: the inputs as they are).
        num_samples: the teacher's ``S`` for :func:`uqkit.predict` (``None``: the teacher's default).
        output: ``output=`` of :func:`uqkit.predict` for the teacher.
        student_output: a callable mapping the student's raw output to logits or a Gaussian dict.
        optimizer: an optimizer over the student's parameters (default: ``Adam(student.parameters(),
            learning_rate)``).
        generator: random generator for the shuffling and the input noise (default: the global one).

    Returns:
        The mean distillation loss (the KL, nats per example) of each epoch.

    Raises:
        TypeError: for a ``teacher`` or ``student`` that is not an ``nn.Module``, or bad ``data``.
        ValueError: for bad numbers, empty ``data``, the teacher passed as its own student, or a student
            whose output does not match the teacher's predictive.
        RuntimeError: when a loss is NaN or infinite (naming the epoch and step).

    Example:
        >>> teacher = uqkit.DeepEnsemble(net, 4)  # trained, or the stored samples of an SG-MCMC run
        >>> student = net()
        >>> losses = distill_predictive(teacher, student, train_inputs, epochs=5, input_noise=0.1)
        >>> prediction = uqkit.predict(student, x)  # one network: S = 1
    """
    for value, name in ((teacher, "teacher"), (student, "student")):
        if not isinstance(value, nn.Module):
            raise TypeError(f"{name}: expected an nn.Module, got {type(value).__name__}")
    if student is teacher:
        raise ValueError("student: expected a network other than the teacher, got the teacher itself")
    if isinstance(data, torch.Tensor):
        check_float_tensor(data, "data")
        if data.ndim < 1 or data.shape[0] == 0:
            raise ValueError(f"data: expected at least one example [N, ...], got shape {tuple(data.shape)}")
    elif not isinstance(data, Iterable):
        raise TypeError(
            f"data: expected a float tensor [N, ...] or an iterable of batches, got {type(data).__name__}"
        )
    epochs = check_positive_int(epochs, "epochs")
    batch_size = check_positive_int(batch_size, "batch_size")
    learning_rate = check_positive_float(learning_rate, "learning_rate")
    input_noise = check_positive_float(input_noise, "input_noise", allow_zero=True)
    if num_samples is not None:
        num_samples = check_positive_int(num_samples, "num_samples")
    if optimizer is None:
        parameters = [p for p in student.parameters() if p.requires_grad]
        if not parameters:
            raise ValueError("student: expected trainable parameters, got none with requires_grad=True")
        optimizer = torch.optim.Adam(parameters, lr=learning_rate)
    elif not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer: expected a torch.optim.Optimizer, got {type(optimizer).__name__}")

    device = _device(student)
    cached: Prediction | GaussianPrediction | None = None
    if input_noise == 0 and isinstance(data, torch.Tensor):
        cached = _teacher_predictive(teacher, data, batch_size, num_samples, output)

    was_training = student.training
    student.train()
    losses: list[float] = []
    try:
        for epoch in range(epochs):
            total, count = 0.0, 0
            for step, (inputs, index) in enumerate(_batches(data, batch_size, generator)):
                if device is not None:
                    inputs = inputs.to(device)
                if input_noise > 0:
                    noise = torch.randn(inputs.shape, generator=generator, dtype=inputs.dtype)
                    inputs = inputs + input_noise * noise.to(inputs.device)
                if cached is not None and index is not None:
                    target = _select(cached, index)
                else:
                    target = predict(teacher, inputs, num_samples=num_samples, output=output)
                loss = distillation_loss(target, read_output(student(inputs), student_output))
                if not torch.isfinite(loss):
                    raise RuntimeError(
                        f"distill_predictive: non-finite distillation loss ({float(loss.detach())}) at epoch "
                        f"{epoch + 1}, step {step + 1}; lower learning_rate, or check the teacher's "
                        "predictive and the student's output"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * inputs.shape[0]
                count += inputs.shape[0]
            if count == 0:
                raise ValueError(
                    f"data: expected at least one batch in epoch {epoch + 1}, got none (an iterator is used "
                    "up after one pass: pass a DataLoader or a list of batches)"
                )
            losses.append(total / count)
    finally:
        student.train(was_training)
    return losses


def _teacher_predictive(
    teacher: nn.Module,
    data: torch.Tensor,
    batch_size: int,
    num_samples: int | None,
    output: Callable[[Any], Any] | None,
) -> Prediction | GaussianPrediction:
    """The teacher's predictive on every example, reduced to one sample (``S = 1``) that carries it: the log
    of the mixture probabilities as logits, or the mixture's mean and variance."""
    device = _device(teacher)
    log_probs, means, variances = [], [], []
    chunk = max(batch_size, 256)
    for start in range(0, data.shape[0], chunk):
        inputs = data[start : start + chunk]
        prediction = predict(
            teacher, inputs if device is None else inputs.to(device), num_samples=num_samples, output=output
        )
        if isinstance(prediction, GaussianPrediction):
            means.append(prediction.mean)
            variances.append(prediction.variance)
        else:
            log_probs.append(prediction.log_probs.clamp(min=_LOG_FLOOR))
    if means:
        return GaussianPrediction(torch.cat(means)[None], torch.cat(variances)[None])
    return Prediction(torch.cat(log_probs)[None])


def _select(
    prediction: Prediction | GaussianPrediction, index: torch.Tensor
) -> Prediction | GaussianPrediction:
    if isinstance(prediction, GaussianPrediction):
        index = index.to(prediction.mean.device)
        return GaussianPrediction(prediction.mean[None, index], prediction.variance[None, index])
    index = index.to(prediction.logits.device)
    return Prediction(prediction.logits[:, index])
