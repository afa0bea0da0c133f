"""The user's data and model as a benchmark :class:`~uqkit.bench.tasks.Task` (``uqkit bench --data ...``).

A user task is a task like the built-in ones, so the one runner trains, evaluates, reports and resumes it.
Everything is checked here, before anything is trained or written: the data files (:mod:`uqkit.data.user`),
the labels, and the model, built once from ``--model`` and run on two training rows to check that it returns
one logit per class (classification) or two values per target (regression: the mean, then a scale mapped to
a variance by :func:`uqkit.bench.likelihoods.gaussian_head`).

Policy (documented in ``uqkit bench --help`` and the README):

* the task's kind is inferred from the targets (text or integer labels: classification; real values:
  regression), or given (``--kind``);
* the validation split, when the data has none, is :data:`VAL_FRACTION` of the training rows drawn with the
  seed, as the built-in tasks carve theirs;
* table inputs (``[N, D]``) are standardised per feature with the training split's mean and standard
  deviation (population; a constant feature is only centred); other inputs (images, sequences) are used as
  given (folder images are in ``[0, 1]``); OOD inputs go through the same transform;
* regression targets are standardised with the training split's statistics for training; the evaluation
  maps predictions back and reports in the targets' units.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from uqkit.bench.models import build_model
from uqkit.bench.tasks import OODSet, Task, TaskInfo
from uqkit.data import LabeledData, RegressionData
from uqkit.data.user import (
    UserData,
    UserDataError,
    class_labels,
    held_out_rows,
    infer_kind,
    read_csv,
    read_image_folder,
    read_npz,
    regression_targets,
)

__all__ = ["KINDS", "USER_TASK_INFO", "VAL_FRACTION", "build_user_task", "load_user_data", "task_name"]

KINDS = ("classification", "regression")
VAL_FRACTION = 0.1
"""Fraction of the training rows held out for validation when the data gives no validation split (the
built-in tasks' fraction)."""
USER_TASK_INFO = TaskInfo(
    "your data (--data) and model (--model)",
    models=(),
    epochs=20,
    batch_size=64,
    learning_rate=1e-3,
    builder=None,
    quick_epochs=2,
)
"""Training defaults of a user task (constant learning rate); ``--epochs``, ``--batch-size`` and ``--lr``
override them."""


def task_name(data_path: str | Path) -> str:
    """The task's name: the data file's stem or the folder's name (``cancer.csv`` -> ``cancer``)."""
    path = Path(data_path)
    return (path.name if path.is_dir() else path.stem) or "data"


def load_user_data(
    data_path: str | Path, target: str | None = None, ood: str | Path | None = None, seed: int = 0
) -> UserData:
    """Read ``data_path`` by its kind: a folder of images, an ``.npz`` or a ``.csv`` (``target`` needed).

    Raises:
        UserDataError: a missing path, an unknown format, ``--target`` / ``--ood`` where they do not apply, or
            any problem of the file itself.
    """
    path = Path(data_path)
    if path.is_dir():
        if target is not None:
            raise UserDataError(f"--target: only a CSV has a target column; {path} is a folder of images")
        return read_image_folder(path, ood, seed)
    if not path.exists():
        raise UserDataError(f"{path}: no such file or folder (--data)")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        if target is not None:
            raise UserDataError(
                f"--target: only a CSV has a target column; {path} is an .npz (y_train, y_test)"
            )
        if ood is not None:
            raise UserDataError(f"--ood: an .npz holds its OOD inputs as the array x_ood; {path} is an .npz")
        return read_npz(path)
    if suffix == ".csv":
        if target is None:
            raise UserDataError(f"{path}: a CSV needs --target COLUMN, the name of its target column")
        return read_csv(path, target, ood, seed)
    raise UserDataError(
        f"{path}: expected an .npz file, a .csv file or a folder of images (one sub-folder per class), "
        f"got a {suffix or 'suffix-less'} file"
    )


class _FeatureStandardizer:
    """``(x - mean) / std`` per feature with the training rows' statistics (``std = 0`` -> 1)."""

    def __init__(self, train_inputs: torch.Tensor) -> None:
        self.mean = train_inputs.mean(dim=0)
        std = train_inputs.std(dim=0, unbiased=False)
        self.std = torch.where(std > 0, std, torch.ones_like(std))

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        return (inputs - self.mean) / self.std


def _check_model(
    model: str, input_shape: tuple[int, ...], num_outputs: int, kind: str, rows: torch.Tensor, detail: str
) -> None:
    """Build ``model`` and run it on ``rows``; it must return a tensor ``[B, num_outputs]``.

    Raises:
        ValueError: naming ``--model`` and what came (a factory that fails, a forward pass that fails, an
            output of another width than the classes or ``2 D`` asks for).
    """
    network = build_model(model, input_shape, num_outputs)
    network.eval()
    try:
        with torch.no_grad():
            outputs = network(rows)
    except Exception as error:  # the user's forward: report it, no traceback
        message = str(error).strip().splitlines()
        raise ValueError(
            f"--model {model}: the model failed on {len(rows)} training rows of shape {list(rows.shape)}: "
            f"{type(error).__name__}: {message[0] if message else ''}"
        ) from None
    expected = (
        f"one logit per class, [{len(rows)}, {num_outputs}]"
        if kind == "classification"
        else f"two values per target (the mean, then a scale), [{len(rows)}, {num_outputs}]"
    )
    if not isinstance(outputs, torch.Tensor):
        raise ValueError(
            f"--model {model}: the model returns a {type(outputs).__name__}; uqkit bench expects one tensor: "
            f"{expected}"
        )
    if list(outputs.shape) != [len(rows), num_outputs]:
        raise ValueError(
            f"--model {model}: the model returns outputs of shape {list(outputs.shape)} for {len(rows)} "
            f"training rows, but {detail}; expected {expected}"
        )


def build_user_task(
    data_path: str | Path,
    model: str | None = None,
    target: str | None = None,
    ood: str | Path | None = None,
    kind: str | None = None,
    seed: int = 0,
) -> Task:
    """The task of the user's data and model, checked before any training.

    Args:
        data_path: an ``.npz``, a ``.csv`` or a folder of images (:func:`load_user_data`).
        model: ``MODULE:FACTORY`` / ``file.py:FACTORY`` or a built-in backbone (default ``mlp``).
        target: a CSV's target column.
        ood: a CSV (tables) or folder (images) of OOD inputs.
        kind: ``"classification"`` or ``"regression"``; ``None`` infers it from the targets.
        seed: seeds the test split (CSV, a folder without ``train/`` and ``test/``) and the validation split.

    Raises:
        UserDataError: a problem with the data, naming the file.
        ValueError: a problem with ``--model`` or ``--kind``.
    """
    model = "mlp" if model is None else model
    if kind is not None and kind not in KINDS:
        raise ValueError(f"--kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    data = load_user_data(data_path, target, ood, seed)
    inferred = kind is None
    kind = kind or infer_kind(data)
    if kind == "classification":
        labels, classes = class_labels(data)
        num_outputs = len(classes)
        detail = f"{data.source} has {num_outputs} classes"
        if inferred:
            detail += " (classification inferred from integer or text targets; --kind regression if not)"
    else:
        labels = regression_targets(data)
        num_targets = int(labels["train"].shape[1])
        num_outputs = 2 * num_targets
        detail = f"{data.source} has {num_targets} regression target{'s' if num_targets > 1 else ''}"
    inputs = {name: torch.as_tensor(getattr(data, f"x_{name}")) for name in labels}
    layout = data.layout
    if "val" not in inputs:
        kept, held = held_out_rows(len(inputs["train"]), VAL_FRACTION, seed)
        if len(kept) < 2:
            raise UserDataError(
                f"{data.source}: {len(inputs['train'])} training examples are too few; give at least 3"
            )
        inputs["val"], labels["val"] = inputs["train"][held], labels["train"][held]
        inputs["train"], labels["train"] = inputs["train"][kept], labels["train"][kept]
        layout += f"; validation: {VAL_FRACTION:.0%} of the training examples, drawn with the seed"
    transform = _FeatureStandardizer(inputs["train"]) if inputs["train"].ndim == 2 else None
    if transform is not None:
        inputs = {name: transform(x) for name, x in inputs.items()}
        layout += "; features standardised with the training statistics"
    target_mean = target_std = None
    if kind == "regression":
        target_mean = labels["train"].mean(dim=0)
        target_std = labels["train"].std(dim=0, unbiased=False)
        labels = {name: (y - target_mean) / target_std for name, y in labels.items()}
    input_shape = tuple(int(n) for n in inputs["train"].shape[1:])
    _check_model(model, input_shape, num_outputs, kind, inputs["train"][:2], detail)
    ood_sets = {}
    if data.x_ood is not None:
        ood_inputs = torch.as_tensor(np.asarray(data.x_ood, dtype=np.float32))
        ood_sets["ood"] = OODSet(
            f"your OOD set: {data.ood_source}", transform(ood_inputs) if transform else ood_inputs
        )
    container = LabeledData if kind == "classification" else RegressionData
    splits = {name: container(inputs[name], labels[name]) for name in ("train", "val", "test")}
    classes_text = f"{num_outputs} classes" if kind == "classification" else detail.split(" has ")[1]
    return Task(
        name=task_name(data_path),
        description=f"{data.source}: {kind}, {classes_text} ({layout}); model {model}",
        num_classes=num_outputs,
        input_shape=input_shape,
        **splits,
        model=model,
        ood_sets=ood_sets,
        kind=kind,
        target_mean=target_mean,
        target_std=target_std,
        source=data.source,
    )
