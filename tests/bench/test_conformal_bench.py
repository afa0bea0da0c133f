"""Conformal sets and intervals in the benchmark (uqkit/bench/evaluate_conformal.py and its callers):
calibrated on the validation split, never on test; coverage near 1 - alpha where it must be; results keys,
report table and figure; the regression paths (your data, and UCI's selection network)."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from uqkit import data
from uqkit.bench import plots, regression
from uqkit.bench.evaluate import evaluate_method, predict_in_batches
from uqkit.bench.evaluate_conformal import ALPHAS
from uqkit.bench.evaluate_regression import evaluate_regression
from uqkit.bench.likelihoods import GAUSSIAN
from uqkit.bench.registry import Method, MethodContext, build_method
from uqkit.bench.regression_stack import split_data, train_stack
from uqkit.bench.report import method_order, validate_results, write_report
from uqkit.bench.runner import BenchConfig, run_bench
from uqkit.bench.tasks import Task, build_task
from uqkit.bench.user_task import build_user_task
from uqkit.conformal import SplitConformalClassifier, conformal_quantile
from uqkit.data import RegressionTable

pytestmark = pytest.mark.usefixtures("one_thread")


def _spread(alpha: float, num_calibration: int, num_test: int) -> float:
    """Standard deviation of a split-conformal test coverage over calibration and test draws: the coverage
    given the calibration split is Beta(k, n + 1 - k), variance ~ alpha (1 - alpha) / (n + 2), and the test
    set adds a binomial alpha (1 - alpha) / B."""
    return math.sqrt(alpha * (1 - alpha) * (1 / (num_calibration + 2) + 1 / num_test))


# -- classification ---------------------------------------------------------------------------------------
def _deterministic(task: Task, seed: int = 0) -> Method:
    torch.manual_seed(seed)
    context = MethodContext(task.input_shape, task.num_classes, task.model, len(task.train), task.name)
    return build_method("deterministic", context)


def test_sets_are_calibrated_on_the_validation_split_never_on_test(fake_fashion_mnist):
    task = build_task("fashion-mnist", quick=True, seed=0)
    task = dataclasses.replace(task, ood_sets={}, shift=None)  # not needed here: faster
    method = _deterministic(task)  # untrained: near-uniform probabilities, distinct on val and test
    block = evaluate_method(method, task, seed=3, progress=False)["conformal"]
    assert block["alphas"] == list(ALPHAS) and block["num_calibration"] == len(task.val)
    val = predict_in_batches(method, task.val.inputs, 1000, progress=False)
    test = predict_in_batches(method, task.test.inputs, 1000, progress=False)
    for index, alpha in enumerate(ALPHAS):
        # LAC: the conformal quantile of 1 - p_y over the validation examples
        val_scores = 1.0 - val.probs.double().gather(1, task.val.labels.view(-1, 1)).squeeze(1)
        test_scores = 1.0 - test.probs.double().gather(1, task.test.labels.view(-1, 1)).squeeze(1)
        expected = float(conformal_quantile(val_scores, alpha))
        assert block["lac"]["threshold"][index] == pytest.approx(expected, abs=1e-12)
        assert abs(float(conformal_quantile(test_scores, alpha)) - expected) > 1e-6  # the test can tell
        # randomised APS: the calibrator fitted on validation with the run's seed
        aps = SplitConformalClassifier("aps", alpha, randomized=True)
        aps.fit(val, task.val.labels, generator=torch.Generator().manual_seed(3))
        assert block["aps"]["threshold"][index] == pytest.approx(aps.threshold_, abs=1e-12)
    # new test labels change the coverage, never a threshold
    shuffled = torch.roll(task.test.labels, 1)
    relabelled = dataclasses.replace(task, test=data.LabeledData(task.test.inputs, shuffled))
    again = evaluate_method(method, relabelled, seed=3, progress=False)["conformal"]
    for score in ("lac", "aps"):
        assert again[score]["threshold"] == block[score]["threshold"]
        assert again[score]["mean_set_size"] == block[score]["mean_set_size"]
    assert again["lac"]["coverage"] != block["lac"]["coverage"]


class _FixedLinear(Method):
    """A fixed linear classifier of 3 features into 4 classes, the data-generating model of the test below."""

    def __init__(self) -> None:
        super().__init__()
        self.network = nn.Linear(3, 4)
        with torch.no_grad():
            self.network.weight.copy_(torch.tensor([[2.0, 0, 0], [0, 2.0, 0], [0, 0, 2.0], [-1.0, -1.0, 0]]))
            self.network.bias.zero_()


def _linear_task(num_val: int, num_test: int, seed: int = 0) -> Task:
    """Labels drawn from the fixed linear model's own softmax: validation and test are exchangeable."""
    generator = torch.Generator().manual_seed(seed)
    model = _FixedLinear().network

    def split(size: int) -> data.LabeledData:
        inputs = torch.randn(size, 3, generator=generator)
        with torch.no_grad():
            probs = model(inputs).softmax(-1)
        return data.LabeledData(inputs, torch.multinomial(probs, 1, generator=generator).squeeze(1))

    return Task(
        "linear", "a fixed linear model", 4, (3,), split(100), split(num_val), split(num_test), "linear"
    )


def test_coverage_is_near_the_target_with_enough_validation_and_test_examples():
    num_val = num_test = 5000
    task = _linear_task(num_val, num_test)
    block = evaluate_method(_FixedLinear(), task, seed=0, progress=False)["conformal"]
    for index, alpha in enumerate(ALPHAS):
        tolerance = 4 * _spread(alpha, num_val, num_test)
        aps, lac = block["aps"], block["lac"]
        assert abs(aps["coverage"][index] - (1 - alpha)) < tolerance, (alpha, aps["coverage"])
        # LAC (not randomised): between 1 - alpha and 1 - alpha + 1 / (n + 1) in expectation
        assert 1 - alpha - tolerance < lac["coverage"][index] < 1 - alpha + 1 / (num_val + 1) + tolerance
        for entry in (aps, lac):
            fraction = np.array(entry["size_fraction"][index])
            assert fraction.shape == (5,) and fraction.sum() == pytest.approx(1.0)
            assert entry["mean_set_size"][index] == pytest.approx((np.arange(5) * fraction).sum())
            assert entry["worst_size_stratified_coverage"][index] <= entry["coverage"][index]
    # the larger level needs the larger sets
    assert block["lac"]["mean_set_size"][1] > block["lac"]["mean_set_size"][0]
    # seeded: the same run gives the same randomised sets, another seed other draws
    assert evaluate_method(_FixedLinear(), task, seed=0, progress=False)["conformal"] == block
    other = evaluate_method(_FixedLinear(), task, seed=1, progress=False)["conformal"]
    assert other["aps"]["threshold"] != block["aps"]["threshold"]
    assert other["lac"] == block["lac"]


@pytest.fixture(scope="module")
def quick_results(fake_fashion_mnist_dir, tmp_path_factory):
    """A ``--quick`` run of two methods on the tiny Fashion-MNIST stand-in, with its report."""
    out = tmp_path_factory.mktemp("conformal") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("UQKIT_DATA", str(fake_fashion_mnist_dir))
        config = BenchConfig(
            out=out, methods=["deterministic", "temperature-scaled"], quick=True, progress=False
        )
        results = run_bench(config, log=lambda *_: None)
    write_report(results, out)
    return out, results


def test_results_and_report_hold_the_conformal_table_and_figure(quick_results):
    out, _ = quick_results
    saved = json.loads((out / "results.json").read_text())
    validate_results(saved)
    task = saved["tasks"]["fashion-mnist"]
    for name, method in task["methods"].items():
        block = method["conformal"]
        assert block["num_calibration"] == task["num_val"] and block["calibration"] == "validation", name
        assert block["lac"]["randomized"] is False and block["aps"]["randomized"] is True
        for score in ("lac", "aps"):
            assert len(block[score]["coverage"]) == len(ALPHAS)
            assert all(1.0 <= size <= 10.0 for size in block[score]["mean_set_size"])
    markdown = (out / "report.md").read_text()
    assert "### Conformal prediction sets (coverage / mean set size)" in markdown
    assert "| method | LAC 90% | LAC 95% | APS 90% | APS 95% |" in markdown
    lac = task["methods"]["deterministic"]["conformal"]["lac"]
    assert f"{100 * lac['coverage'][0]:.1f}% / {lac['mean_set_size'][0]:.2f}" in markdown
    assert "validation split (40 examples; never the test set)" in markdown
    assert "](figures/fashion-mnist_conformal.png)" in markdown
    page = (out / "report.html").read_text()
    assert "<h3>Conformal prediction sets (coverage / mean set size)</h3>" in page
    assert page.count("data:image/png;base64,") == len(list((out / "figures").glob("*.png")))


def test_set_size_figure_draws_each_mean_set_size(quick_results):
    _, results = quick_results
    task = results["tasks"]["fashion-mnist"]
    colors = plots.method_colors(method_order(results))
    figure = plots.conformal_set_size_figure("fashion-mnist", task, colors)
    assert len(figure.axes) == len(ALPHAS)
    for level, ax in enumerate(figure.axes):
        widths = [patch.get_width() for patch in ax.patches]
        expected = [
            task["methods"][name]["conformal"][score]["mean_set_size"][level]
            for score in ("lac", "aps")
            for name in colors
        ]
        assert widths == pytest.approx(expected)
        labels = [text.get_text() for text in ax.texts]
        assert labels == [
            f"{100 * task['methods'][name]['conformal'][score]['coverage'][level]:.1f}%"
            for score in ("lac", "aps")
            for name in colors
        ]
    without = {**task, "methods": {n: {**m, "conformal": None} for n, m in task["methods"].items()}}
    assert plots.conformal_set_size_figure("fashion-mnist", without, colors) is None


def test_validation_names_a_conformal_list_of_the_wrong_length(quick_results):
    _, results = quick_results
    bad = json.loads(json.dumps(results))
    bad["tasks"]["fashion-mnist"]["methods"]["deterministic"]["conformal"]["aps"]["coverage"].pop()
    with pytest.raises(
        ValueError, match=r"conformal.aps.coverage: expected 2 values \(one per alpha\), got 1"
    ):
        validate_results(bad)
    bad = json.loads(json.dumps(results))
    bad["tasks"]["fashion-mnist"]["methods"]["deterministic"]["conformal"]["lac"]["size_fraction"][0].pop()
    with pytest.raises(ValueError, match=r"size_fraction\[0\]: expected 11 fractions"):
        validate_results(bad)
    old = json.loads(json.dumps(results))  # a file written before the block existed
    del old["tasks"]["fashion-mnist"]["methods"]["deterministic"]["conformal"]
    validate_results(old)


# -- regression: your data --------------------------------------------------------------------------------
class _ConstantGaussian(Method):
    """Predicts mean 0.5 and variance softplus(0) + 1e-6 in standardised units, whatever the input."""

    def __init__(self) -> None:
        super().__init__()
        self.network = nn.Linear(4, 2)
        nn.init.zeros_(self.network.weight)
        with torch.no_grad():
            self.network.bias.copy_(torch.tensor([0.5, 0.0]))


def _regression_npz(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(500, 4)).astype(np.float32)
    y = (30.0 + 8.0 * x[:, 0] + rng.normal(size=500) * (1 + np.abs(x[:, 1]))).astype(np.float32)
    splits = {"train": slice(0, 200), "val": slice(200, 300), "test": slice(300, 500)}
    np.savez(path, **{f"{a}_{name}": v[s] for name, s in splits.items() for a, v in (("x", x), ("y", y))})
    return path


def test_your_data_regression_intervals_are_calibrated_on_validation(tmp_path):
    task = build_user_task(_regression_npz(tmp_path / "reg.npz"), kind="regression")
    method = _ConstantGaussian()
    method.use_likelihood(GAUSSIAN)
    block = evaluate_regression(method, task, progress=False)["conformal"]
    assert block["network"] == "evaluated" and block["num_calibration"] == 100
    scale = float(task.target_std)
    mu, sigma = float(task.target_mean) + 0.5 * scale, math.sqrt(math.log(2.0) + 1e-6) * scale
    y_val = (task.val.labels.double() * scale + float(task.target_mean)).flatten()
    y_test = (task.test.labels.double() * scale + float(task.target_mean)).flatten()
    for index, alpha in enumerate(ALPHAS):
        k = math.ceil((100 + 1) * (1 - alpha))  # the k-th smallest validation residual
        q_normalized = float(((y_val - mu).abs() / sigma).sort().values[k - 1])
        q_absolute = float((y_val - mu).abs().sort().values[k - 1])
        z = float(torch.special.ndtri(torch.tensor(1 - alpha / 2, dtype=torch.float64)))
        for kind, half in (
            ("normalized", q_normalized * sigma),
            ("absolute", q_absolute),
            ("gaussian", z * sigma),
        ):
            assert block[kind]["width"][index]["mean"] == pytest.approx(2 * half, rel=1e-6), (
                kind
            )  # float32 network
            inside = float(((y_test - mu).abs() <= half).double().mean())
            assert block[kind]["coverage"][index]["mean"] == pytest.approx(inside), kind
            assert block[kind]["width"][index]["se"] is None  # one split
    # other test targets: other coverage, the same intervals
    moved = dataclasses.replace(task, test=data.RegressionData(task.test.inputs, task.test.labels + 0.3))
    again = evaluate_regression(method, moved, progress=False)["conformal"]
    assert again["normalized"]["width"] == block["normalized"]["width"]
    assert again["normalized"]["coverage"] != block["normalized"]["coverage"]


# -- regression: UCI protocol -----------------------------------------------------------------------------
def _table(rows: int = 150, splits: int = 3, train: int = 120, seed: int = 0) -> RegressionTable:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 3))
    y = x @ np.array([1.0, -2.0, 0.5]) + 0.3 * rng.normal(size=rows) * (1 + np.abs(x[:, 0]))
    pairs = []
    for _ in range(splits):
        perm = rng.permutation(rows)
        pairs.append((torch.from_numpy(perm[:train]), torch.from_numpy(perm[train:])))
    return RegressionTable(
        "tiny", torch.from_numpy(x), torch.from_numpy(y * 10 + 100), ("a", "b", "c"), "y", tuple(pairs), "t"
    )


def _method(name: str = "deterministic", **changes) -> regression.RegressionMethod:
    defaults = {"epochs": 5, "num_samples": 4, "validation_samples": 2, "learning_rates": (1e-3, 3e-2)}
    return dataclasses.replace(regression.REGRESSION_METHODS[name], **{**defaults, **changes})


def test_uci_selection_network_is_the_chosen_configuration_at_the_chosen_epoch():
    """The kept network equals the selection stack trained again and snapshotted at each split's chosen
    epoch (a deterministic network: the validation scoring draws nothing, so the training is the same)."""
    table, method = _table(), _method(epochs=15)
    configs, epochs, _, networks = regression._select(method, table, seed=2)
    # it tells a snapshot at the chosen epoch from the last, and the chosen configuration from the first
    assert min(epochs) < method.epochs and any(config != method.grid()[0] for config in configs)
    assert networks.epochs == epochs
    grid = method.grid()
    splits = len(table.splits)
    split_of_model = torch.arange(splits).repeat_interleave(len(grid))
    chosen = [split * len(grid) + grid.index(config) for split, config in enumerate(configs)]
    snapshot = torch.tensor([epochs[int(split)] for split in split_of_model])
    phase = split_data(table, regression.validation_pairs(table, 2))
    again, _ = train_stack(
        method, phase, split_of_model, grid * splits, method.epochs, 2, snapshot_epochs=snapshot
    )
    for name, value in networks.model.state_dict().items():
        torch.testing.assert_close(value, again.network.state_dict()[name][chosen], rtol=0, atol=0)


def test_uci_intervals_never_read_the_test_targets():
    # one split: with more, a split's test rows are other splits' training rows
    table = _table(splits=1)
    method = _method("mc-dropout", dropout_rates=(0.01, 0.1), learning_rates=(1e-2,))
    block = regression.evaluate_regression_method(method, table, seed=1)["conformal"]
    assert block["network"] == "selection" and block["num_calibration"] == 24  # 20% of 120 training rows
    changed = table.targets.clone()
    test = table.splits[0][1]
    changed[test] = changed[test] * -3 + 50
    again = regression.evaluate_regression_method(method, dataclasses.replace(table, targets=changed), seed=1)
    for kind in ("normalized", "absolute", "gaussian"):
        assert again["conformal"][kind]["width"] == block[kind]["width"], kind
    assert again["conformal"]["absolute"]["coverage"] != block["absolute"]["coverage"]
    for kind in ("normalized", "absolute", "gaussian"):
        for index in range(len(ALPHAS)):
            assert 0.0 <= block[kind]["coverage"][index]["mean"] <= 1.0
            assert block[kind]["width"][index]["mean"] > 0 and block[kind]["width"][index]["se"] is None


def test_uci_run_reports_the_conformal_intervals(run_uci, tmp_path, monkeypatch):
    monkeypatch.setitem(regression.REGRESSION_METHODS, "deterministic", _method(epochs=2))
    directory = tmp_path / "toy"
    directory.mkdir()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2))
    np.savetxt(directory / "data.txt", np.column_stack([x, x[:, 0] - x[:, 1] + 0.2 * rng.normal(size=200)]))
    (directory / "index_features.txt").write_text("0\n1\n")
    (directory / "index_target.txt").write_text("2\n")
    results = run_uci(tmp_path / "run", ["deterministic"], data_dir=directory, log=lambda _: None)
    validate_results(json.loads((tmp_path / "run" / "results.json").read_text()))
    block = results["tasks"]["uci-toy"]["methods"]["deterministic"]["conformal"]
    assert block["num_calibration"] == 36  # 20% of the 180 training rows of each split
    markdown = write_report(results, tmp_path / "run")["markdown"].read_text()
    assert "### Conformal intervals (coverage / mean width)" in markdown
    assert "| method | 1 − α | Gaussian | normalized | absolute |" in markdown
    normalized = block["normalized"]
    cell = f"{100 * normalized['coverage'][0]['mean']:.1f}% / {normalized['width'][0]['mean']:.3f}"
    assert "| deterministic | 90% | " in markdown and cell in markdown
    assert "selection network" in markdown


def test_a_validation_split_too_small_for_a_finite_threshold_gives_full_sets_and_no_warning(tmp_path):
    """8 validation rows < (1 - 0.1) / 0.1: infinite thresholds, recorded as null, said in the report."""
    table, method = _table(rows=60, splits=1, train=40), _method(epochs=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        block = regression.evaluate_regression_method(method, table, seed=0)["conformal"]
        sets = evaluate_method(_FixedLinear(), _linear_task(5, 50), progress=False)["conformal"]
    assert block["num_calibration"] == 8
    for kind in ("normalized", "absolute"):
        assert [entry["mean"] for entry in block[kind]["width"]] == [math.inf, math.inf]
        assert [entry["mean"] for entry in block[kind]["coverage"]] == [1.0, 1.0]
    assert all(math.isfinite(entry["mean"]) for entry in block["gaussian"]["width"])
    assert sets["lac"]["threshold"] == [math.inf, math.inf] and sets["lac"]["mean_set_size"] == [4.0, 4.0]
    assert sets["aps"]["coverage"] == [1.0, 1.0]


def test_the_calibration_runs_on_one_thread_and_restores_the_setting(monkeypatch):
    from uqkit.bench import evaluate_conformal
    from uqkit.prediction import Prediction

    seen = []
    fit = SplitConformalClassifier.fit
    monkeypatch.setattr(
        SplitConformalClassifier,
        "fit",
        lambda self, *a, **k: seen.append(torch.get_num_threads()) or fit(self, *a, **k),
    )
    torch.set_num_threads(2)
    logits, labels = torch.randn(1, 30, 4), torch.arange(30) % 4
    evaluate_conformal.conformal_sets_block(Prediction(logits), labels, Prediction(logits), labels, seed=0)
    assert seen == [1] * 4 and torch.get_num_threads() == 2  # the one_thread fixture restores it after
