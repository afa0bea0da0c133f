"""Does distilling a small posterior recover its NLL gap? Predictive distillation and APD on Fashion-MNIST.

Trains, on the benchmark's Fashion-MNIST task (standardised inputs, its train/validation/test splits), a
teacher of ``M`` networks (a :class:`uqkit.DeepEnsemble`, standing in for ``M`` posterior samples) and one
deterministic network of the same architecture for the same epochs; then distils the teacher post hoc with
the benchmark's helpers (:mod:`uqkit.bench.posterior_distillation`): a student of one network per input-noise
level, from a fresh initialisation and/or warm-started from the teacher's last member (Korattikara et al.
2015), and an APD generator of weight vectors per budget (Wang et al. 2018). Controls: the student's epochs
on the labels alone, from the fresh students' initialisation and continuing the deterministic network.
Reports test NLL, accuracy, ECE and the KL from the teacher's predictive, and the fraction of the
deterministic-to-teacher NLL gap each recovers, ``(NLL_det - NLL) / (NLL_det - NLL_teacher)``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/distillation.py --model mlp --members 4 --epochs 10 \\
        --student-epochs 10 --noise 0 0.3 --warm-start 0 1 --apd-steps 0 --train-subset 5000 --seed 0

docs/distillation.md has the numbers and the other commands.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time

import torch
from _env import benchmark_environment
from torch.nn import functional as F

import uqkit
from uqkit.bench.models import build_model
from uqkit.bench.posterior_distillation import distill_generator, distill_student
from uqkit.bench.tasks import build_task
from uqkit.methods.distillation import distillation_loss
from uqkit.metrics import expected_calibration_error
from uqkit.nn.members import tile_members


def train(model: torch.nn.Module, inputs, labels, epochs: int, members: int, seed: int) -> float:
    """Adam (lr 1e-3, batch 128) on the summed members' cross-entropies; returns seconds."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    shuffle = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    model.train()
    for _ in range(epochs):
        for index in torch.randperm(len(labels), generator=shuffle).split(128):
            logits = model(inputs[index])
            targets = tile_members(labels[index], members) if members > 1 else labels[index]
            loss = members * F.cross_entropy(logits, targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return time.perf_counter() - started


def evaluate(model, inputs, labels, teacher_logits: torch.Tensor | None = None) -> dict[str, float]:
    """Test NLL, accuracy, ECE (15 bins), and the KL from the teacher's predictive (when given)."""
    logits = torch.cat([uqkit.predict(model, batch).logits for batch in inputs.split(1000)], dim=1)
    prediction = uqkit.Prediction(logits)
    log_probs = prediction.log_probs
    result = {
        "nll": float(-log_probs.gather(1, labels[:, None]).double().mean()),
        "accuracy": float((log_probs.argmax(-1) == labels).double().mean()),
        "ece": expected_calibration_error(log_probs.exp(), labels, num_bins=15),
        "num_samples": prediction.num_samples,
    }
    if teacher_logits is not None:
        teacher = uqkit.Prediction(teacher_logits)
        result["kl_from_teacher"] = float(distillation_loss(teacher, log_probs))
    return result


def member_nll(model, inputs, labels) -> float:
    """Mean over the members (samples) of each one's own test NLL."""
    logits = torch.cat([uqkit.predict(model, batch).logits for batch in inputs.split(1000)], dim=1)
    log_probs = logits.log_softmax(-1)
    index = labels.view(1, -1, 1).expand(log_probs.shape[0], -1, 1)
    return float(-log_probs.gather(2, index).double().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mlp", choices=["mlp", "lenet5"])
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2, help="training epochs of teacher and deterministic")
    parser.add_argument("--student-epochs", type=int, default=2)
    parser.add_argument("--noise", type=float, nargs="*", default=[0.0, 0.3], help="input-noise std devs")
    parser.add_argument(
        "--warm-start",
        type=int,
        nargs="*",
        default=[0],
        choices=[0, 1],
        help="students from a fresh initialisation (0) and/or the teacher's last member (1)",
    )
    parser.add_argument("--apd-steps", type=int, nargs="+", default=[1000], help="budgets; 0: no APD")
    parser.add_argument("--train-subset", type=int, default=0, help="first N training examples (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    task = build_task("fashion-mnist", model=args.model, seed=args.seed)
    inputs, labels = task.train.inputs, task.train.labels
    if args.train_subset:
        inputs, labels = inputs[: args.train_subset], labels[: args.train_subset]
    test_x, test_y = task.test.inputs, task.test.labels

    def factory():
        return build_model(args.model, task.input_shape, task.num_classes)

    log = {}
    torch.manual_seed(args.seed)
    teacher = uqkit.DeepEnsemble(factory, args.members)
    log["teacher_train_s"] = train(teacher, inputs, labels, args.epochs, args.members, args.seed)
    torch.manual_seed(args.seed + 100)
    deterministic = factory()
    log["deterministic_train_s"] = train(deterministic, inputs, labels, args.epochs, 1, args.seed)
    teacher.eval()
    deterministic.eval()
    teacher_logits = torch.cat([uqkit.predict(teacher, b).logits for b in test_x.split(1000)], dim=1)
    rows = {
        "deterministic": evaluate(deterministic, test_x, test_y, teacher_logits),
        "teacher": evaluate(teacher, test_x, test_y),
    }
    rows["teacher"]["member_nll_mean"] = member_nll(teacher, test_x, test_y)
    print(f"deterministic {rows['deterministic']}\nteacher {rows['teacher']}", file=sys.stderr, flush=True)

    # controls: the same extra epochs on the labels alone, from the fresh students' initialisation and
    # continuing the deterministic network (the warm students' counterpart)
    for warm in args.warm_start:
        torch.manual_seed(args.seed + 200)
        control = copy.deepcopy(deterministic) if warm else factory()
        seconds = train(control, inputs, labels, args.student_epochs, 1, args.seed + 1)
        name = "labels_continued" if warm else "labels_fresh"
        rows[name] = evaluate(control.eval(), test_x, test_y, teacher_logits)
        rows[name]["train_s"] = seconds
        print(f"{name} {rows[name]}", file=sys.stderr, flush=True)
    for warm in args.warm_start:
        for noise in args.noise:
            torch.manual_seed(args.seed + 200)  # every fresh student starts from the same initialisation
            started = time.perf_counter()
            student = distill_student(
                teacher,
                inputs,
                factory,
                epochs=args.student_epochs,
                input_noise=noise,
                seed=args.seed,
                warm_start=bool(warm),
            )
            name = f"student{'_warm' if warm else ''}_noise_{noise:g}"
            rows[name] = evaluate(student, test_x, test_y, teacher_logits)
            rows[name]["distill_s"] = time.perf_counter() - started
            print(f"{name} {rows[name]}", file=sys.stderr, flush=True)

    for steps in args.apd_steps:
        if steps <= 0:
            continue
        torch.manual_seed(args.seed + 300)
        started = time.perf_counter()
        apd = distill_generator(teacher, factory(), steps=steps, seed=args.seed)
        fit_s = time.perf_counter() - started
        started = time.perf_counter()
        drawn = apd.sample_ensemble(12, generator=torch.Generator().manual_seed(args.seed))
        build_s = time.perf_counter() - started
        name = f"apd_{steps}_steps"
        rows[name] = evaluate(drawn, test_x, test_y, teacher_logits)
        rows[name]["member_nll_mean"] = member_nll(drawn, test_x, test_y)
        rows[name].update({"fit_s": fit_s, "draw_12_networks_s": build_s, "dim": apd.dim})
        print(f"{name} {rows[name]}", file=sys.stderr, flush=True)

    gap = rows["deterministic"]["nll"] - rows["teacher"]["nll"]
    for row in rows.values():
        row["gap_recovered"] = (rows["deterministic"]["nll"] - row["nll"]) / gap if gap > 0 else math.nan
    result = {
        "command": "OMP_NUM_THREADS=1 .venv/bin/python " + " ".join(sys.argv),
        "settings": vars(args),
        "num_train": len(labels),
        "rows": rows,
        "times_s": log,
        "environment": benchmark_environment(),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
