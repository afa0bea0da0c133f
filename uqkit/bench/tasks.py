"""Benchmark tasks: a training set, a validation split, a test set, and named OOD sets and shifts.

A task is everything a method needs to be trained and judged, built from :mod:`uqkit.data` (which never
downloads). Inputs are standardised with the training set's mean and standard deviation (one scalar per
task, the usual Fashion-MNIST practice); OOD and shifted inputs go through the same transform, so every input
a model sees comes from the same preprocessing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from uqkit import data

__all__ = ["TASKS", "OODSet", "Shift", "Task", "TaskInfo", "build_task"]


@dataclass(frozen=True)
class OODSet:
    """Inputs that are out of distribution for the task, with a one-line description."""

    description: str
    inputs: torch.Tensor


@dataclass(frozen=True)
class Shift:
    """A named distribution shift: ``inputs_at(value)`` gives shifted test inputs whose labels are ``labels``
    (``None``: the inputs are the whole test set, in order, and its labels apply)."""

    name: str
    unit: str
    values: tuple[float, ...]
    inputs_at: Callable[[float], torch.Tensor]
    labels: torch.Tensor | None = None


@dataclass(frozen=True)
class Task:
    """A fully built task: data splits (already standardised), OOD sets, shift and training defaults.

    ``kind`` is ``"classification"`` (``num_classes`` logits, labels in :class:`uqkit.data.LabeledData`) or
    ``"regression"`` (a user's data, :mod:`uqkit.bench.user_task`: ``[N, D]`` targets standardised with the
    training split's ``target_mean`` and ``target_std`` in :class:`uqkit.data.RegressionData`;
    ``num_classes`` is then the network's output width, ``2 D``). ``source`` names the data's file or folder.
    """

    name: str
    description: str
    num_classes: int
    input_shape: tuple[int, ...]
    train: data.LabeledData | data.RegressionData
    val: data.LabeledData | data.RegressionData
    test: data.LabeledData | data.RegressionData
    model: str
    ood_sets: dict[str, OODSet] = field(default_factory=dict)
    shift: Shift | None = None
    kind: str = "classification"
    target_mean: torch.Tensor | None = None
    target_std: torch.Tensor | None = None
    source: str = ""


@dataclass(frozen=True)
class TaskInfo:
    """How to build a task, and its training defaults (used unless the command line overrides them).

    ``schedule`` is the learning-rate schedule of :func:`uqkit.bench.trainer.learning_rate_factor`.
    """

    description: str
    models: tuple[str, ...]
    epochs: int
    batch_size: int
    learning_rate: float
    builder: Callable[[str, bool, int], Task] | None  # None: built from files (uqkit.bench.user_task)
    quick_epochs: int = 1
    schedule: str = "constant"


_QUICK_SIZES = {"train": 1500, "val": 300, "test": 600, "ood": 400}
# Test images the rotation shift is evaluated on (a fixed random subset): 13 angles x 2,000 images instead
# of x 10,000 keeps the sampling methods' evaluation, and so the default run, within its 10-minute budget;
# the standard error of an accuracy near 0.8 on 2,000 images is about 0.9 points.
SHIFT_TEST_SIZE = 2000


def _subset(split: data.LabeledData, size: int, seed: int) -> data.LabeledData:
    if size >= len(split):
        return split
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(split), generator=generator)[:size]
    return data.LabeledData(split.inputs[index], split.labels[index])


class _Standardize:
    """``(x - mean) / std`` with the training set's scalar statistics."""

    def __init__(self, train_inputs: torch.Tensor) -> None:
        self.mean = float(train_inputs.mean())
        self.std = float(train_inputs.std())

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        return (inputs - self.mean) / self.std

    def split(self, part: data.LabeledData) -> data.LabeledData:
        return data.LabeledData(self(part.inputs), part.labels)


def _fashion_mnist_task(
    name: str, model: str, quick: bool, seed: int, in_classes: tuple[int, ...] | None
) -> Task:
    train_full = data.fashion_mnist("train")
    test = data.fashion_mnist("test")
    ood_sets_raw: dict[str, tuple[str, torch.Tensor]] = {}
    if in_classes is not None:
        train_full, _ = data.holdout_split(train_full, in_classes)
        test, near = data.holdout_split(test, in_classes)
        held_out = sorted(set(range(10)) - set(in_classes))
        ood_sets_raw["held-out-classes"] = (
            f"near-OOD: Fashion-MNIST test images of the held-out classes {held_out}",
            near.inputs,
        )
    train, val = data.train_val_split(train_full, val_fraction=0.1, seed=seed)
    if quick:
        train = _subset(train, _QUICK_SIZES["train"], seed)
        val = _subset(val, _QUICK_SIZES["val"], seed)
        test = _subset(test, _QUICK_SIZES["test"], seed)
    digits = data.digits_ood(size=28, reference=train.inputs)
    ood_sets_raw["digits"] = ("far-OOD: scikit-learn digits resized to 28x28", digits.inputs)
    standardize = _Standardize(train.inputs)
    ood_sets = {}
    for key, (description, inputs) in ood_sets_raw.items():
        if quick:
            inputs = inputs[: _QUICK_SIZES["ood"]]
        ood_sets[key] = OODSet(description, standardize(inputs))
    shift_part = _subset(test, SHIFT_TEST_SIZE, seed)

    def rotated(angle: float) -> torch.Tensor:
        return standardize(data.rotate_images(shift_part.inputs, angle))

    classes = "classes 0-5" if in_classes is not None else "10 classes"
    return Task(
        name=name,
        description=f"Fashion-MNIST ({classes}), {model}",
        num_classes=len(in_classes) if in_classes is not None else 10,
        input_shape=(1, 28, 28),
        train=standardize.split(train),
        val=standardize.split(val),
        test=standardize.split(test),
        model=model,
        ood_sets=ood_sets,
        shift=Shift(
            "rotation",
            "degrees",
            tuple(float(a) for a in data.ROTATION_ANGLES),
            rotated,
            labels=shift_part.labels,
        ),
    )


def _build_fashion_mnist(model: str, quick: bool, seed: int) -> Task:
    return _fashion_mnist_task("fashion-mnist", model, quick, seed, None)


def _build_fashion_mnist_holdout(model: str, quick: bool, seed: int) -> Task:
    return _fashion_mnist_task("fashion-mnist-holdout", model, quick, seed, (0, 1, 2, 3, 4, 5))


def _build_mnist1d(model: str, quick: bool, seed: int) -> Task:
    # The dataset itself is generated with the package's default seed, so every run sees the same data;
    # ``seed`` only drives the validation split and training.
    train_full = data.mnist1d("train", num_samples=5000)
    test = data.mnist1d("test", num_samples=5000)
    train, val = data.train_val_split(train_full, val_fraction=0.1, seed=seed)
    if quick:
        train = _subset(train, _QUICK_SIZES["train"], seed)
        test = _subset(test, _QUICK_SIZES["test"], seed)
    standardize = _Standardize(train.inputs)
    return Task(
        name="mnist1d",
        description=f"MNIST-1D (Greydanus 2020), {model}",
        num_classes=10,
        input_shape=tuple(train.inputs.shape[1:]),
        train=standardize.split(train),
        val=standardize.split(val),
        test=standardize.split(test),
        model=model,
    )


def _build_two_moons(model: str, quick: bool, seed: int) -> Task:
    train_full = data.two_moons(num_samples=1000 if not quick else 400, noise=0.1, seed=seed)
    train, val = data.train_val_split(train_full, val_fraction=0.1, seed=seed)
    test = data.two_moons(num_samples=1000 if not quick else 300, noise=0.1, seed=seed + 1)
    ood = data.two_moons_ood(num_samples=200 if not quick else 100, seed=seed + 2)
    return Task(
        name="two-moons",
        description=f"Two moons (scikit-learn make_moons, noise 0.1) with an OOD cluster, {model}",
        num_classes=2,
        input_shape=(2,),
        train=train,
        val=val,
        test=test,
        model=model,
        ood_sets={"ood-cluster": OODSet("a Gaussian cluster away from both moons", ood.inputs)},
    )


FASHION_MNIST_SCHEDULE = "cosine"
"""Chosen on the validation split (``uqkit bench --methods deterministic,deep-ensemble --epochs 10``, MLP,
seed 0): the deterministic network's last-epoch validation NLL / ECE is 0.288 / 2.57% with cosine decay and
0.361 / 4.28% at a constant rate, whose best epoch (7: 0.315 / 1.87%, optimistic: selected on the same
split) is still worse. With cosine the best epoch is the last, so no best-epoch selection is needed. The
other tasks keep a constant rate (not measured)."""

TASKS: dict[str, TaskInfo] = {
    "fashion-mnist": TaskInfo(
        "Fashion-MNIST, 10 classes; far-OOD: digits; shift: rotation 0-180 degrees",
        ("mlp", "lenet5"),
        epochs=5,  # keeps the 11-method default run within 10 minutes on 2 CPU cores (README)
        batch_size=128,
        learning_rate=1e-3,
        builder=_build_fashion_mnist,
        schedule=FASHION_MNIST_SCHEDULE,
    ),
    "fashion-mnist-holdout": TaskInfo(
        "Fashion-MNIST classes 0-5; near-OOD: classes 6-9; far-OOD: digits; shift: rotation",
        ("mlp", "lenet5"),
        epochs=8,
        batch_size=128,
        learning_rate=1e-3,
        builder=_build_fashion_mnist_holdout,
        schedule=FASHION_MNIST_SCHEDULE,
    ),
    "mnist1d": TaskInfo(
        "MNIST-1D (generated locally), 10 classes",
        ("mlp", "cnn1d"),
        epochs=30,
        batch_size=128,
        learning_rate=1e-3,
        builder=_build_mnist1d,
        quick_epochs=2,
    ),
    "two-moons": TaskInfo(
        "Two moons with an OOD cluster (the SNGP paper's toy problem)",
        ("resmlp", "mlp"),
        epochs=100,
        batch_size=64,
        learning_rate=1e-3,
        builder=_build_two_moons,
        quick_epochs=3,
    ),
}


def build_task(name: str, model: str | None = None, quick: bool = False, seed: int = 0) -> Task:
    """Build the task ``name`` with backbone ``model`` (the task's first model when ``None``)."""
    if name not in TASKS:
        raise ValueError(f"task: expected one of {', '.join(TASKS)}, got {name!r}")
    info = TASKS[name]
    model = info.models[0] if model is None else model
    if model not in info.models:
        raise ValueError(f"model: task {name!r} supports {', '.join(info.models)}, got {model!r}")
    return info.builder(model, quick, seed)
