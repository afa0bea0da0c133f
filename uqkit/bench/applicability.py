"""Which methods can be built on a user's model, and why the others cannot, found before any training.

A method applies when its builder accepts the model (e.g. SNGP and the heteroscedastic head need an
``nn.Sequential`` ending with an ``nn.Linear``, MIMO a first ``nn.Linear`` / ``nn.Conv*`` to widen, MC
dropout an ``nn.Dropout`` to keep on, the Bayesian conversions a layer to convert, the last-layer Laplace a
model whose output is its last ``nn.Linear``'s), when it has a form for the task's kind (temperature
scaling, the Laplace, SNGP and the heteroscedastic head are classification-only), and when its training loss
(with a backward pass), its post-hoc fit and its prediction run on a few training rows. A method that does
not apply is recorded, with the reason, in ``results.json`` (``tasks.<task>.not_applicable``), the
leaderboard and the report, instead of stopping the run.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from uqkit.bench.likelihoods import likelihood_of
from uqkit.bench.registry import MethodContext, NotApplicableError, build_method
from uqkit.bench.tasks import Task

__all__ = ["PROBE_ROWS", "not_applicable_reason", "probe_methods"]

PROBE_ROWS = 4
"""Training rows the probe's loss and prediction run on (4: enough for batch normalisation in training)."""


def _reason(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else ""
    if not isinstance(error, (NotApplicableError, ValueError)) or not text:
        text = f"{type(error).__name__}: {text}".rstrip(": ")
    return text if len(text) <= 300 else text[:297] + "..."


def not_applicable_reason(name: str, task: Task, context: MethodContext, seed: int = 0) -> str | None:
    """``None`` when the method ``name`` builds on the task's model and trains and predicts on
    :data:`PROBE_ROWS` training rows; otherwise why not, in one line.

    Torch's global random state is restored afterwards, so probing changes no later result.
    """
    rows = min(PROBE_ROWS, len(task.train))
    inputs, labels = task.train.inputs[:rows], task.train.labels[:rows]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            method = build_method(name, context)
            method.use_likelihood(likelihood_of(task.kind))
            orders = int(method.num_batch_orders)
            method.train()
            if orders > 1:  # one batch per member, as the trainer hands them over
                loss = method.training_loss(torch.stack([inputs] * orders), torch.stack([labels] * orders))
            else:
                loss = method.training_loss(inputs, labels)
            if not bool(torch.isfinite(loss)):
                return f"its training loss is not finite ({float(loss)}) on {rows} training rows"
            loss.backward()
            method.eval()
            method.fit_post_hoc(inputs, labels, (inputs, labels))  # e.g. a Laplace needs an nn.Linear output
            with torch.no_grad():
                method.predict(inputs)
        except Exception as error:  # the user's model may raise anything: it becomes the reason
            return _reason(error)
    return None


def probe_methods(names: Sequence[str], task: Task, context: MethodContext, seed: int = 0) -> dict[str, str]:
    """``{method: reason}`` for each of ``names`` that cannot be built on the task's model."""
    reasons = {name: not_applicable_reason(name, task, context, seed) for name in names}
    return {name: reason for name, reason in reasons.items() if reason is not None}
