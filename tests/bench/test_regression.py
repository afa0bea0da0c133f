"""UCI regression benchmark (uqkit/bench/regression.py): stacked training, selection on validation only,
results schema, report and CLI, on tiny tables made here."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from uqkit.bench import regression
from uqkit.bench.registry import methods_for_task, register_task_methods
from uqkit.bench.regression import (
    PUBLISHED,
    REGRESSION_METHODS,
    default_regression_methods,
    evaluate_regression_method,
)
from uqkit.bench.regression_stack import StackedAdam, split_data, train_stack
from uqkit.bench.report import format_leaderboard, validate_results, write_report
from uqkit.bench.runner import BenchConfig, RunConfigMismatchError, run_bench
from uqkit.cli import main
from uqkit.data import RegressionTable, load_uci_directory
from uqkit.nn import StackedBayesianLastLayerMLP
from uqkit.objectives import gaussian_nll_loss

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny_table(rows: int = 60, splits: int = 3, seed: int = 0) -> RegressionTable:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 3))
    y = x @ np.array([1.0, -2.0, 0.5]) + 0.3 * rng.normal(size=rows) * (1 + np.abs(x[:, 0]))
    pairs = []
    for _ in range(splits):
        perm = rng.permutation(rows)
        pairs.append((torch.from_numpy(perm[:50]), torch.from_numpy(perm[50:])))
    return RegressionTable(
        "tiny",
        torch.from_numpy(x),
        torch.from_numpy(y * 10 + 100),
        ("a", "b", "c"),
        "y",
        tuple(pairs),
        "test",
    )


def _small(name: str, **changes) -> regression.RegressionMethod:
    defaults = {"epochs": 4, "num_samples": 4, "validation_samples": 2}
    return dataclasses.replace(REGRESSION_METHODS[name], **{**defaults, **changes})


def test_gaussian_nll_loss_is_the_normal_log_density_and_beta_weights_its_gradient():
    torch.manual_seed(0)
    mean = torch.randn(7, 1, dtype=torch.float64, requires_grad=True)
    variance = (torch.rand(7, 1, dtype=torch.float64) + 0.1).requires_grad_(True)
    y = torch.randn(7, 1, dtype=torch.float64)
    loss = gaussian_nll_loss(mean, variance, y)
    want = -torch.distributions.Normal(mean, variance.sqrt()).log_prob(y)
    torch.testing.assert_close(loss, want)
    beta = 0.5
    gaussian_nll_loss(mean, variance, y, beta=beta).sum().backward()
    # Seitzer et al. 2022: the NLL gradient scaled by stop_gradient(variance ** beta)
    grad_mean = -(y - mean.detach()) / variance.detach() * variance.detach() ** beta
    grad_var = (0.5 / variance.detach() - (y - mean.detach()) ** 2 / (2 * variance.detach() ** 2)) * (
        variance.detach() ** beta
    )
    torch.testing.assert_close(mean.grad, grad_mean)
    torch.testing.assert_close(variance.grad, grad_var)
    with pytest.raises(ValueError, match="beta"):
        gaussian_nll_loss(mean, variance, y, beta=1.5)


@pytest.fixture
def float64_default():
    """torch.optim.Adam keeps its step count in the default dtype: float64 makes its bias correction exact."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def test_stacked_adam_equals_torch_adam_per_model_with_its_own_learning_rate(float64_default):
    torch.manual_seed(0)
    stacked = torch.randn(3, 4, 2, dtype=torch.float64, requires_grad=True)
    singles = [stacked[k].detach().clone().requires_grad_(True) for k in range(3)]
    rates = [1e-3, 1e-2, 1e-1]
    optimizer = StackedAdam([stacked], torch.tensor(rates, dtype=torch.float64))
    references = [torch.optim.Adam([p], lr=lr) for p, lr in zip(singles, rates, strict=True)]
    targets = torch.randn(3, 4, 2, dtype=torch.float64)
    for _ in range(5):
        optimizer.zero_grad()
        ((stacked - targets) ** 4).sum().backward()
        optimizer.step()
        for k, (param, reference) in enumerate(zip(singles, references, strict=True)):
            reference.zero_grad()
            ((param - targets[k]) ** 4).sum().backward()
            reference.step()
    for k in range(3):
        torch.testing.assert_close(stacked[k].detach(), singles[k].detach(), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="lr"):
        StackedAdam([stacked], torch.tensor([1e-3, -1.0, 1.0]))


def test_a_snapshot_equals_the_shorter_training_of_the_same_model():
    """Models in a stack are independent, so keeping model k after epoch e is training it for e epochs."""
    table = _tiny_table()
    phase = split_data(table, [(train, test) for train, test in table.splits])
    method = _small("deep-ensemble", num_members=1)
    splits, configs = torch.arange(3), [{"learning_rate": 1e-2}] * 3
    long, _ = train_stack(method, phase, splits, configs, 3, seed=5, snapshot_epochs=torch.tensor([1, 3, 2]))
    one, _ = train_stack(method, phase, splits, configs, 1, seed=5)
    two, _ = train_stack(method, phase, splits, configs, 2, seed=5)
    long, one, two = (stack.network.state_dict() for stack in (long, one, two))
    for name, value in long.items():
        torch.testing.assert_close(value[0], one[name][0], rtol=0, atol=0)
        torch.testing.assert_close(value[2], two[name][2], rtol=0, atol=0)
    assert not torch.equal(long["hidden.weight"][1], one["hidden.weight"][1])


def test_a_stack_predicts_each_networks_gaussians_on_its_own_inputs():
    """StackedRegression.predict: ``[K * S, B, 1]`` network-major, row block k the network k's S passes on
    its own inputs x[k]; a Flipout stack draws each pass's weight noise anew (its samples differ)."""
    table = _tiny_table()
    phase = split_data(table, [(train, test) for train, test in table.splits])
    for name, samples in (("deterministic", 1), ("flipout-bnn", 4)):
        recipe = _small(name, num_samples=samples)
        stack, _ = train_stack(recipe, phase, torch.arange(3), [{"learning_rate": 1e-2}] * 3, 1, seed=0)
        x = phase.eval_x
        prediction = stack.predict(x)
        assert prediction.sample_mean.shape == (3 * samples, x.shape[1], 1)
        if samples == 1:
            with torch.no_grad():
                mean, variance = stack.network(x)
            torch.testing.assert_close(prediction.sample_mean, mean)
            torch.testing.assert_close(prediction.sample_variance, variance)
        else:
            first = prediction.sample_mean[:samples]
            assert not torch.equal(first[0], first[1])


@pytest.mark.parametrize("name", ["deep-ensemble", "mc-dropout", "ncp"])
def test_hyper_parameters_never_depend_on_test_data(name):
    table = _tiny_table()
    changed_targets = table.targets.clone()
    test = table.splits[0][1]
    changed_targets[test] = changed_targets[test] * -50 + 1e4  # wildly different test targets of split 0
    changed = dataclasses.replace(table, targets=changed_targets)
    method = _small(name, learning_rates=(1e-3, 3e-2), select_epochs=True)
    first = evaluate_regression_method(method, table, seed=1)
    second = evaluate_regression_method(method, changed, seed=1)
    # Split 0's choice sees only split 0's training rows (other splits may train on those test rows).
    assert first["selection"]["validation_nll"][0] == second["selection"]["validation_nll"][0]
    for key in ("learning_rate", "epochs"):
        assert first["per_split"][key][0] == second["per_split"][key][0]
    if name == "mc-dropout":
        assert first["per_split"]["dropout"][0] == second["per_split"]["dropout"][0]
    if name == "ncp":
        for key in ("input_noise", "output_prior_scale"):
            assert first["per_split"][key][0] == second["per_split"][key][0]
    assert first["per_split"]["nll"][0] != second["per_split"]["nll"][0]  # its test data did change


def test_members_is_the_deprecated_name_of_num_members():
    """``members=`` (constructor, ``dataclasses.replace``) and ``.members`` still work for one release, with a
    DeprecationWarning; the recipe's fields (the run's identity) hold ``num_members`` only."""
    with pytest.warns(
        DeprecationWarning, match=r"RegressionMethod\(members=\.\.\.\).*removed in uqkit 0\.2\.0"
    ) as caught:
        old = regression.RegressionMethod("old", "an old recipe", members=3)
    assert caught[0].filename == __file__  # the warning points at the caller, as uqkit/_deprecation.py's
    assert old.num_members == 3 and "members" not in dataclasses.asdict(old)
    with pytest.warns(DeprecationWarning, match="num_members"):
        assert old.members == 3
    with pytest.warns(DeprecationWarning, match=r"HyperEnsembleRegression\(members="):
        fewer = dataclasses.replace(REGRESSION_METHODS["hyper-deep-ensemble"], members=2)
    assert fewer.num_members == 2 and type(fewer).__name__ == "HyperEnsembleRegression"
    assert dataclasses.replace(fewer, epochs=3).num_members == 2  # replace keeps it, without a warning


def test_ncp_grid_and_recipe():
    method = REGRESSION_METHODS["ncp"]
    grid = method.grid()
    assert len(grid) == len(method.learning_rates) * len(method.input_noises) * len(
        method.output_prior_scales
    )
    assert {tuple(sorted(c)) for c in grid} == {
        ("dropout", "input_noise", "learning_rate", "output_prior_scale")
    }
    assert {(c["input_noise"], c["output_prior_scale"]) for c in grid} == {
        (a, b) for a in method.input_noises for b in method.output_prior_scales
    }
    assert method.num_samples == method.validation_samples == 1  # the exact Gaussian predictive
    assert "input_noise" not in REGRESSION_METHODS["deterministic"].grid()[0]
    with pytest.raises(ValueError, match="input_noises"):
        dataclasses.replace(method, input_noises=None)
    with pytest.raises(ValueError, match="ncp"):
        dataclasses.replace(REGRESSION_METHODS["deterministic"], input_noises=(0.1,))
    with pytest.raises(ValueError, match="Flipout"):
        dataclasses.replace(method, flipout=True)


def test_ncp_training_is_the_ncp_loss_of_each_model():
    """The stacked NCP loss of model k is its expected NLL plus ncp_weight times the KL from
    N(y, prior[k]^2) to its function distribution at its batch perturbed with noise[k] (Hafner et al.)."""
    from uqkit.methods.ncp import expected_gaussian_nll, output_prior_divergence

    table = _tiny_table()
    phase = split_data(table, [(train, test) for train, test in table.splits])
    method = _small("ncp", epochs=1)
    noise, prior = torch.tensor([0.1, 0.5, 1.0]), torch.tensor([0.5, 1.0, 2.0])
    configs = [
        {"learning_rate": 1e-2, "input_noise": float(a), "output_prior_scale": float(b)}
        for a, b in zip(noise, prior, strict=True)
    ]
    stack, _ = train_stack(method, phase, torch.arange(3), configs, 1, seed=2)
    model = stack.network
    assert isinstance(model, StackedBayesianLastLayerMLP)
    x, y = phase.train_x[:, :8], phase.train_y[:, :8]
    torch.manual_seed(11)
    losses = stack.ncp_losses(x, y)
    torch.manual_seed(11)
    eps = torch.randn_like(x)
    for k in range(3):
        clean = [part[k] for part in model.moments(x)]
        noisy = [part[k] for part in model.moments(x + noise[k] * eps)]
        want = (
            expected_gaussian_nll(*clean, y[k]).mean()
            + method.ncp_weight * output_prior_divergence(noisy[0], noisy[1], y[k], float(prior[k])).mean()
        )
        torch.testing.assert_close(losses[k], want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="input_noise"):
        train_stack(method, phase, torch.arange(3), [{"learning_rate": 1e-2}] * 3, 1, seed=2)


def test_reported_nll_and_rmse_are_in_original_units():
    """Scaling the target by c adds log c to every split's NLL and multiplies RMSE by c, exactly as the
    change of variables says, because the network only ever sees standardised targets."""
    table = _tiny_table()
    scaled = dataclasses.replace(table, targets=table.targets * 1000.0 + 7.0)
    method = _small("deterministic", learning_rates=(1e-2,))
    base = evaluate_regression_method(method, table, seed=0)
    big = evaluate_regression_method(method, scaled, seed=0)
    for a, b in zip(base["per_split"]["nll"], big["per_split"]["nll"], strict=True):
        assert b == pytest.approx(a + math.log(1000.0), abs=1e-4)
    for a, b in zip(base["per_split"]["rmse"], big["per_split"]["rmse"], strict=True):
        assert b == pytest.approx(1000.0 * a, rel=1e-4)


@pytest.fixture
def small_methods(monkeypatch):
    for name in list(REGRESSION_METHODS):
        monkeypatch.setitem(REGRESSION_METHODS, name, _small(name, epochs=2))


def test_run_writes_valid_results_and_report(run_uci, tmp_path, small_methods, uci_toy_directory):
    data = uci_toy_directory
    results = run_uci(tmp_path / "run", data_dir=data, log=lambda _: None)
    validate_results(json.loads((tmp_path / "run" / "results.json").read_text()))
    task = results["tasks"]["uci-toy"]
    assert task["kind"] == "regression" and task["num_splits"] == 20 and task["num_train"] == 36
    assert list(task["methods"]) == default_regression_methods()
    ensemble = task["methods"]["deep-ensemble"]
    assert ensemble["num_members"] == 5 and len(ensemble["per_split"]["nll"]) == 20
    values = ensemble["per_split"]["nll"]
    mean, se = np.mean(values), np.std(values, ddof=1) / np.sqrt(20)
    assert ensemble["metrics"]["nll"]["mean"] == pytest.approx(mean) and ensemble["metrics"]["nll"]["se"] == (
        pytest.approx(se)
    )
    paths = write_report(results, tmp_path / "run")
    assert paths["figures"][0].name == "uci-toy_coverage.png" and paths["figures"][0].stat().st_size > 1000
    text = paths["markdown"].read_text()
    assert "deep-ensemble" in text and "±" in text
    assert "deep-ensemble" in format_leaderboard(results)


def test_results_validation_catches_regression_mistakes(run_uci, tmp_path, small_methods, uci_toy_directory):
    data = uci_toy_directory
    results = run_uci(tmp_path / "run", ["deterministic"], data_dir=data, log=lambda _: None)
    bad = json.loads(json.dumps(results))
    bad["tasks"]["uci-toy"]["methods"]["deterministic"]["per_split"]["nll"].pop()
    with pytest.raises(ValueError, match=r"per_split.nll: expected 20 values"):
        validate_results(bad)
    bad = json.loads(json.dumps(results))
    bad["tasks"]["uci-toy"]["methods"]["deterministic"]["metrics"]["coverage_95"]["mean"] = 95.0
    with pytest.raises(ValueError, match=r"coverage_95.mean: expected a number in \[0, 1\]"):
        validate_results(bad)
    bad = json.loads(json.dumps(results))
    bad["tasks"]["uci-toy"]["kind"] = "ranking"
    with pytest.raises(ValueError, match="kind: expected one of 'regression'"):
        validate_results(bad)


def test_resume_keeps_finished_methods_and_refuses_other_runs(
    run_uci, tmp_path, small_methods, monkeypatch, uci_toy_directory
):
    data = uci_toy_directory
    run = tmp_path / "run"
    first = run_uci(run, ["deterministic"], data_dir=data, log=lambda _: None)
    with pytest.raises(RunConfigMismatchError, match="already holds a run; pass --resume"):
        run_uci(run, ["deterministic"], data_dir=data, log=lambda _: None)
    with pytest.raises(RunConfigMismatchError, match="differs in: methods, recipes"):
        run_uci(run, ["mc-dropout"], data_dir=data, log=lambda _: None, resume=True)
    with pytest.raises(RunConfigMismatchError, match="differs in: seed"):
        run_uci(run, ["deterministic"], data_dir=data, seed=1, resume=True)
    # a killed run: results.json never written; the finished method must not be trained again
    (run / "results.json").unlink()

    def fail(*args, **kwargs):
        raise AssertionError("a finished method was retrained")

    monkeypatch.setattr(regression, "evaluate_regression_method", fail)
    resumed = run_uci(run, ["deterministic"], data_dir=data, log=lambda _: None, resume=True)
    kept, before = resumed["tasks"]["uci-toy"]["methods"], first["tasks"]["uci-toy"]["methods"]
    assert kept["deterministic"]["per_split"] == before["deterministic"]["per_split"]
    validate_results(json.loads((run / "results.json").read_text()))


def test_result_files_without_the_runs_config_are_not_kept_without_resume(
    run_uci, tmp_path, small_methods, monkeypatch, uci_toy_directory
):
    """A results folder copied without its config.json (e.g. a committed one) holds finished method files;
    a new run there (no --resume) trains every method again instead of reporting the copied numbers."""
    data = uci_toy_directory
    run = tmp_path / "run"
    run_uci(run, ["deterministic"], data_dir=data, log=lambda _: None)
    (run / "config.json").unlink()
    trained = []
    original = regression.evaluate_regression_method
    monkeypatch.setattr(
        regression,
        "evaluate_regression_method",
        lambda *args, **kwargs: trained.append(1) or original(*args, **kwargs),
    )
    lines: list[str] = []
    run_uci(run, ["deterministic"], data_dir=data, log=lines.append)
    assert trained == [1]
    assert not any("finished earlier, kept" in line for line in lines)


def test_resume_sets_aside_a_corrupt_method_file_and_runs_that_method_again(
    run_uci, tmp_path, small_methods, uci_toy_directory
):
    data = uci_toy_directory
    run = tmp_path / "run"
    methods = ["deterministic", "mc-dropout"]
    first = run_uci(run, methods, data_dir=data, log=lambda _: None)
    (run / "results.json").unlink()  # killed before the end
    bad = run / "methods" / "uci-toy" / "mc-dropout.json"
    cut = bad.read_bytes()[:100]
    bad.write_bytes(cut)  # truncated
    kept = (run / "methods" / "uci-toy" / "deterministic.json").read_bytes()
    messages: list[str] = []
    resumed = run_uci(run, methods, data_dir=data, log=messages.append, resume=True)
    warnings = [m for m in messages if "warning" in m]
    assert len(warnings) == 1 and str(bad) in warnings[0] and "invalid JSON" in warnings[0]
    assert bad.with_name("mc-dropout.json.corrupt").read_bytes() == cut  # set aside, not deleted
    assert (run / "methods" / "uci-toy" / "deterministic.json").read_bytes() == kept
    assert any("[1/2] deterministic: finished earlier, kept" in m for m in messages)
    again, before = resumed["tasks"]["uci-toy"]["methods"], first["tasks"]["uci-toy"]["methods"]
    assert again["mc-dropout"]["per_split"] == before["mc-dropout"]["per_split"]  # same ops, same process
    validate_results(json.loads((run / "results.json").read_text()))


def test_a_run_directory_of_the_driver_before_run_bench_resumes(
    run_uci, tmp_path, small_methods, uci_toy_directory
):
    """A UCI run directory written before run_bench drove the UCI tables (its config.json's identity in the
    layout below, written by ``regression_cells._run_identity``) is continued by ``--resume``, its finished
    methods kept; a different recipe still refuses, naming it."""
    data, run = uci_toy_directory, tmp_path / "run"
    first = run_uci(run, ["deterministic", "mc-dropout"], data, log=lambda _: None)
    (run / "results.json").unlink()  # killed before the end
    (run / "methods" / "uci-toy" / "mc-dropout.json").unlink()  # killed during the second method
    identity = {  # the earlier driver's layout, spelled out
        "kind": "regression",
        "tasks": ["uci"],
        "methods": ["deterministic", "mc-dropout"],
        "seed": 0,
        "data_dir": str(data.resolve()),
        "recipes": {
            name: dataclasses.asdict(REGRESSION_METHODS[name]) for name in ("deterministic", "mc-dropout")
        },
    }
    (run / "config.json").write_text(json.dumps({"identity": identity, "command": "uqkit bench ..."}))
    messages: list[str] = []
    resumed = run_uci(run, ["deterministic", "mc-dropout"], data, log=messages.append, resume=True)
    assert any("[1/2] deterministic: finished earlier, kept" in m for m in messages)
    assert sum("[2/2] mc-dropout" in m and "kept" not in m for m in messages) == 1  # run again
    again, before = resumed["tasks"]["uci-toy"]["methods"], first["tasks"]["uci-toy"]["methods"]
    assert again["deterministic"] == before["deterministic"]  # read back
    assert again["mc-dropout"]["per_split"] == before["mc-dropout"]["per_split"]  # same ops, same process
    identity["recipes"]["deterministic"]["epochs"] += 1
    (run / "config.json").write_text(json.dumps({"identity": identity, "command": "uqkit bench ..."}))
    with pytest.raises(RunConfigMismatchError, match="differs in: recipes"):
        run_uci(run, ["deterministic", "mc-dropout"], data, log=lambda _: None, resume=True)


def test_options_of_a_uci_run_are_checked_before_the_run_directory_is_made(
    run_uci, tmp_path, uci_toy_directory
):
    out = tmp_path / "run"
    cases = [
        (
            {"tasks": ["uci-boston"], "epochs": 3, "learning_rate": 0.1},
            "--epochs, --lr: not used by regression",
        ),
        ({"tasks": ["uci-boston"], "quick": True}, "--quick: not used by regression tasks"),
        ({"tasks": ["uci-boston", "two-moons"]}, "expected only regression tasks"),
        ({"tasks": ["uci-boston"], "data_dir": uci_toy_directory}, "--data-dir: only the task 'uci'"),
        ({"tasks": ["uci"]}, "--data-dir: task 'uci' reads a UCI directory"),
        ({"tasks": ["uci-boston"], "seeds": [0, 1]}, "take one seed"),
        ({"tasks": ["uci-boston"], "split_chunks": 0}, "--split-chunks: expected an int >= 1, got 0"),
        ({"tasks": ["uci-boston"], "methods": ["sngp"]}, "--methods: expected one of 'deterministic'"),
        ({"tasks": ["two-moons"], "split_chunks": 2}, "--split-chunks: only UCI regression tasks"),
        (
            {"tasks": ["two-moons"], "data_dir": uci_toy_directory},
            "--data-dir: only the regression task 'uci'",
        ),
    ]
    for options, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            run_bench(BenchConfig(out=out, progress=False, **options), log=lambda _: None)
    assert not out.exists()


def test_cli_regression_resume(tmp_path, small_methods, capsys, uci_toy_directory):
    data = uci_toy_directory
    argv = ["bench", "--task", "uci", "--data-dir", str(data), "--methods", "deterministic"]
    assert main([*argv, "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    assert main([*argv, "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert main([*argv, "--out", str(tmp_path / "run"), "--no-progress", "--resume"]) == 0
    assert "deterministic: finished earlier, kept" in capsys.readouterr().out


def test_cli_malformed_directory_names_file_and_line(tmp_path, capsys, uci_toy_directory):
    data = uci_toy_directory
    lines = (data / "data.txt").read_text().splitlines()
    lines[6] = "1.0 oops 2.0"
    (data / "data.txt").write_text("\n".join(lines) + "\n")
    assert main(["bench", "--task", "uci", "--data-dir", str(data), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "data.txt line 7" in err and "'oops'" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--task", "uci-boston,fashion-mnist"], "expected only regression tasks"),
        (["--task", "uci"], "--data-dir: task 'uci' reads a UCI directory"),
        (["--task", "uci-boston", "--epochs", "3"], "--epochs: not used by regression tasks"),
        (["--task", "uci-boston", "--methods", "sngp"], "--methods: expected one of 'deterministic'"),
        (["--task", "fashion-mnist", "--data-dir", "x"], "--data-dir: only the regression task 'uci'"),
    ],
)
def test_cli_regression_option_errors(tmp_path, capsys, argv, message):
    assert main(["bench", *argv, "--out", str(tmp_path / "run")]) == 2
    assert message in capsys.readouterr().err


def test_list_shows_regression_tasks_and_methods(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("uci-boston", "uci-concrete", "uci ", "flipout-bnn"):
        assert name in out


OPT_IN = ("sgld", "csgmcmc", "csgmcmc-distilled", "apd", "hyper-deep-ensemble")


def test_opt_in_methods_are_listed_and_run_only_when_named(
    run_uci, tmp_path, small_methods, capsys, monkeypatch, uci_toy_directory
):
    """The regression twins of the opt-in classification methods are registered for every UCI task but
    left out of a run without --methods; named, they run and write valid results and a report."""
    distilled = dataclasses.replace(REGRESSION_METHODS["csgmcmc-distilled"], student_epochs=3)
    monkeypatch.setitem(REGRESSION_METHODS, "csgmcmc-distilled", distilled)
    monkeypatch.setitem(
        REGRESSION_METHODS, "apd", dataclasses.replace(REGRESSION_METHODS["apd"], apd_steps=3)
    )
    assert set(OPT_IN) <= set(REGRESSION_METHODS) and not set(OPT_IN) & set(default_regression_methods())
    assert methods_for_task("uci-boston") == default_regression_methods()
    assert methods_for_task("uci", opt_in=True) == list(REGRESSION_METHODS)
    assert list(REGRESSION_METHODS)[: len(default_regression_methods())] == default_regression_methods()
    with pytest.raises(ValueError, match="uci-boston are listed already"):
        register_task_methods(["uci-boston"], lambda opt_in: [])
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in OPT_IN:
        assert any(line.split()[:1] == [name] and "[opt-in" in line for line in lines[-12:])
    data = uci_toy_directory
    results = run_uci(tmp_path / "run", list(OPT_IN), data_dir=data, log=lambda _: None)
    validate_results(json.loads((tmp_path / "run" / "results.json").read_text()))
    methods = results["tasks"]["uci-toy"]["methods"]
    assert list(methods) == list(OPT_IN)
    assert methods["csgmcmc"]["training"]["optimizer"] == "SGHMC"
    assert methods["sgld"]["details"]["schedule"] == "polynomial"
    assert methods["hyper-deep-ensemble"]["details"]["networks_trained_per_split"] == 15
    assert methods["csgmcmc-distilled"]["num_members"] == 1  # one student per split
    assert methods["apd"]["num_members"] == 12  # networks drawn from each split's generator
    text = write_report(results, tmp_path / "run")["markdown"].read_text()
    assert "hyper-deep-ensemble" in text and "; lambda " in text and "; T " in text  # the samplers' choices


def test_energy_and_wine_from_shared_data_load_in_the_literature_shapes():
    root = Path(__file__).resolve().parents[3] / "shared" / "data" / "uci"
    if not root.is_dir():
        pytest.skip("shared UCI tables not present")
    energy = load_uci_directory(root / "energy")
    wine = load_uci_directory(root / "wine-quality-red")
    assert energy.inputs.shape == (768, 8) and [len(s) for s in energy.splits[0]] == [691, 77]
    assert wine.inputs.shape == (1599, 11) and [len(s) for s in wine.splits[0]] == [1439, 160]


def test_published_nll_sits_beside_the_like_for_like_number():
    """Gal's readme reports the exact Monte Carlo mixture log-likelihood; Lakshminarayanan et al. (Sec. 2.4)
    and PBP score one Gaussian. Each published NLL must sit in the column of the NLL it compares with."""
    from uqkit.bench.regression_report import _HEADER, regression_rows

    task = {"methods": {}, "published": {key: dict(PUBLISHED["boston"][key]) for key in PUBLISHED["boston"]}}
    rows = {row[0].split(" ")[0]: dict(zip(_HEADER, row, strict=True)) for row in regression_rows(task)}
    moment, mixture = "NLL (moment-matched)", "NLL (mixture)"
    assert rows["MC"][mixture] == "2.40 ± 0.04" and rows["MC"][moment] == "—"
    assert rows["Deep"][moment] == "2.41 ± 0.25" and rows["Deep"][mixture] == "—"
    assert rows["PBP"][moment] == "2.57 ± 0.09" and rows["PBP"][mixture] == "—"
    assert rows["MC"]["RMSE"] == "2.90 ± 0.18"
