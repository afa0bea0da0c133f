"""The benchmark's Bayesian networks reach their ELBO optimum for the posterior scales within its budget."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from uqkit.bench import methods_bayesian
from uqkit.bench.methods_bayesian import BNN_POSTERIOR_SCALE_INIT, BNN_PRIOR_SCALE, VariationalNetwork
from uqkit.bench.tasks import TASKS
from uqkit.bench.trainer import TrainConfig, train_method
from uqkit.methods.convert import FlipoutConfig, ReparameterizationConfig, bayesianize_
from uqkit.nn.priors import NormalPrior

# The default benchmark: Fashion-MNIST's 54,000 training images (60,000 less 6,000 for validation).
NUM_TRAIN = 54_000


class _IgnoredByLikelihood(nn.Module):
    """Logits that do not depend on ``layer``'s output: its likelihood gradient is exactly zero."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x) * 0.0


def _config(family: str):
    prior = NormalPrior(scale=BNN_PRIOR_SCALE)
    if family == "flipout":
        return FlipoutConfig(prior=prior, posterior_scale_init=BNN_POSTERIOR_SCALE_INIT)
    return ReparameterizationConfig(
        prior=prior, posterior_scale_init=BNN_POSTERIOR_SCALE_INIT, local_reparameterization=True
    )


@pytest.mark.parametrize("kl_weight", [1.0, methods_bayesian.BNN_TASK_KL_WEIGHTS["fashion-mnist"]])
def test_scales_of_a_weight_the_likelihood_ignores_reach_the_prior_scale_within_the_budget(kl_weight):
    # With no likelihood gradient the ELBO of a weight is its KL alone, KL(N(m, s^2) || N(0, p^2)), minimised
    # at s = p (d/ds = s / p^2 - 1 / s). Trained by the benchmark's own trainer with its default epochs,
    # batch size, learning rate, schedule, training-set size and KL warm-up, every scale must get there from
    # BNN_POSTERIOR_SCALE_INIT (1e-3, rho = -6.9; p = BNN_PRIOR_SCALE = 0.1 has rho* = -2.25). (Without a
    # likelihood gradient both families get the same gradients, so one suffices.) With one learning rate for
    # all parameters (lr 1e-3) Adam moves rho by at most about 1e-3 a step, times the schedule's factor
    # (mean 1/2 under cosine decay), so after 5 x 422 steps rho has risen by at most about 1.1 (constant:
    # 2.1): sigma <= 0.003 (0.008), far outside the band below. A KL weight below 1 (a tempered posterior)
    # scales the gradient, not its optimum, and Adam's step does not depend on the gradient's scale.
    defaults = TASKS["fashion-mnist"]
    config = TrainConfig(
        epochs=defaults.epochs,
        batch_size=defaults.batch_size,
        learning_rate=defaults.learning_rate,
        progress=False,
        schedule=defaults.schedule,
    )
    torch.manual_seed(0)
    network = _IgnoredByLikelihood(nn.Linear(4, 3))
    bayesianize_(network, _config("flipout"))
    method = VariationalNetwork(network, NUM_TRAIN, config.batch_size, num_samples=2, kl_weight=kl_weight)
    inputs = torch.randn(NUM_TRAIN, 4)
    labels = torch.randint(0, 3, (NUM_TRAIN,))
    train_method(method, "flipout-bnn", inputs, labels, inputs[:64], labels[:64], config)

    layer = network.layer
    for name in layer.posterior_names:
        sigma = layer.posterior_scale(name).detach()
        # Adam's step on rho is at most its learning rate (times 1 + its bias correction's overshoot, small
        # after warm-up), so near the optimum sigma = softplus(rho) wobbles by at most about
        # sigmoid(rho*) * lr_rho = 0.095 * 1e-2 ~ 1% of p (less as a schedule decays lr_rho): a 5% band is
        # far tighter than the gap a stuck scale leaves.
        assert torch.allclose(sigma, torch.full_like(sigma, BNN_PRIOR_SCALE), rtol=0.05), (name, sigma)


def test_parameter_groups_put_every_parameter_in_exactly_one_group_with_the_scales_faster():
    network = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    bayesianize_(network, _config("flipout"))
    method = VariationalNetwork(network, NUM_TRAIN, 128, num_samples=2)
    groups = method.parameter_groups(1e-3)
    grouped = [id(p) for group in groups for p in group["params"]]
    assert sorted(grouped) == sorted(id(p) for p in method.parameters())
    by_lr = {
        group["lr"]: {n for n, p in method.named_parameters() if any(p is q for q in group["params"])}
        for group in groups
    }
    assert by_lr[1e-3] == {n for n, _ in method.named_parameters() if not n.endswith("_rho")}
    fast = 1e-3 * methods_bayesian.BNN_SCALE_LR_FACTOR
    assert fast > 1e-3 and not math.isclose(fast, 1e-3)
    assert by_lr[fast] == {n for n, _ in method.named_parameters() if n.endswith("_rho")}


def test_prior_scale_is_the_tasks_own_where_its_validation_chose_one():
    from uqkit.bench.methods_bayesian import BNN_TASK_PRIOR_SCALES
    from uqkit.bench.registry import MethodContext, build_method

    contexts = {
        BNN_TASK_PRIOR_SCALES["two-moons"]: MethodContext((2,), 2, "resmlp", 100, "two-moons"),
        BNN_PRIOR_SCALE: MethodContext((1, 28, 28), 10, "mlp", 100, "fashion-mnist"),
    }
    assert len(contexts) == 2  # the two tasks' scales differ
    for expected, context in contexts.items():
        for name in ("flipout-bnn", "reparameterization-bnn"):
            method = build_method(name, context)
            priors = {
                module.prior for module in method.network.modules() if hasattr(module, "posterior_names")
            }
            assert priors == {NormalPrior(scale=expected)}, (context.task, name, priors)


def test_kl_weight_is_the_tasks_own_and_weighs_the_kl_term():
    from uqkit.bench.methods_bayesian import BNN_KL_WEIGHT, BNN_TASK_KL_WEIGHTS
    from uqkit.bench.registry import MethodContext, build_method
    from uqkit.objectives import kl_divergence

    contexts = {
        BNN_KL_WEIGHT: MethodContext((2,), 2, "resmlp", 100, "two-moons"),
        BNN_TASK_KL_WEIGHTS["fashion-mnist"]: MethodContext((1, 28, 28), 10, "mlp", 100, "fashion-mnist"),
    }
    assert len(contexts) == 2 and BNN_KL_WEIGHT == 1.0  # the ELBO itself wherever no validation chose another
    for expected, context in contexts.items():
        torch.manual_seed(0)
        method = build_method("flipout-bnn", context)
        method.elbo.step = method.elbo.warmup_steps  # past the warm-up: the full weight
        inputs = torch.randn(8, *context.input_shape)
        labels = torch.randint(0, context.num_classes, (8,))
        torch.manual_seed(1)
        loss = method.training_loss(inputs, labels)
        torch.manual_seed(1)
        nll = nn.functional.cross_entropy(method.network(inputs), labels)
        kl = kl_divergence(method.network)
        torch.testing.assert_close(loss, nll + expected * kl / context.num_train, rtol=1e-5, atol=0)


@pytest.mark.parametrize("family", ["flipout", "reparameterization"])
def test_fit_post_hoc_puts_the_scales_at_the_optimum_of_the_methods_own_objective(family):
    import copy

    from uqkit.methods.optimal_scales import fit_posterior_scales_

    torch.manual_seed(0)
    network = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    bayesianize_(network, _config(family))
    method = VariationalNetwork(network, 1000, 32, num_samples=2, kl_weight=0.05, optimal_scales=True)
    plain = VariationalNetwork(copy.deepcopy(network), 1000, 32, num_samples=2, kl_weight=0.05)
    reference = copy.deepcopy(network)
    inputs, labels = torch.randn(40, 4), torch.randint(0, 3, (40,))
    val = (torch.randn(10, 4), torch.randint(0, 3, (10,)))

    torch.manual_seed(1)
    method.fit_post_hoc(*val, train=(inputs, labels))
    torch.manual_seed(1)
    fit_posterior_scales_(
        reference, inputs, num_data=1000, kl_weight=0.05, passes=methods_bayesian.BNN_OPTIMAL_SCALE_PASSES
    )
    for (name, got), expected in zip(
        network.state_dict().items(), reference.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(got, expected, rtol=0, atol=0, msg=name)  # same code, same draws
    rhos = [n for n in network.state_dict() if n.endswith("_rho")]
    assert any(not torch.equal(network.state_dict()[n], plain.network.state_dict()[n]) for n in rhos)

    before = copy.deepcopy(plain.network.state_dict())
    plain.fit_post_hoc(*val, train=(inputs, labels))  # without optimal_scales: nothing changes
    assert all(torch.equal(v, plain.network.state_dict()[n]) for n, v in before.items())
    with pytest.raises(ValueError, match="train"):
        method.fit_post_hoc(*val)


def test_scales_go_to_the_optimum_only_on_the_tasks_that_chose_it():
    from uqkit.bench.methods_bayesian import BNN_TASK_OPTIMAL_SCALES
    from uqkit.bench.registry import MethodContext, build_method

    assert {"fashion-mnist", "fashion-mnist-holdout"} <= BNN_TASK_OPTIMAL_SCALES
    for context, expected in (
        (MethodContext((1, 28, 28), 10, "mlp", 100, "fashion-mnist"), True),
        (MethodContext((2,), 2, "resmlp", 100, "two-moons"), False),
    ):
        for name in ("flipout-bnn", "reparameterization-bnn"):
            assert build_method(name, context).optimal_scales is expected, (context.task, name)


def test_the_old_name_gaussian_bnn_builds_reparameterization_bnn_with_a_warning():
    """``gaussian-bnn`` (renamed: "Gaussian" names outputs, not weights) still builds, until uqkit 0.2.0: the
    very network of ``reparameterization-bnn`` (same layers, same initial draws), with a warning naming it."""
    from uqkit.bench.registry import METHODS, MethodContext, build_method, methods_for_task
    from uqkit.nn import FlipoutLinear, ReparameterizationLinear

    context = MethodContext((2,), 2, "resmlp", 100, "two-moons")
    torch.manual_seed(0)
    new = build_method("reparameterization-bnn", context)
    torch.manual_seed(0)
    with pytest.warns(
        DeprecationWarning,
        match=r"'gaussian-bnn' is deprecated and will be removed in uqkit 0\.2\.0; use 'reparameterization-",
    ):
        old = build_method("gaussian-bnn", context)
    layers = [module for module in old.network.modules() if isinstance(module, ReparameterizationLinear)]
    assert layers and all(layer.local_reparameterization for layer in layers)
    assert not any(isinstance(module, FlipoutLinear) for module in old.network.modules())
    assert old.state_dict().keys() == new.state_dict().keys()
    for name, value in old.state_dict().items():
        other = new.state_dict()[name]
        assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other, name
    assert "gaussian-bnn" not in METHODS
    for task in ("fashion-mnist", "two-moons"):
        names = methods_for_task(task)
        assert "gaussian-bnn" not in names
        assert names.index("reparameterization-bnn") == names.index("flipout-bnn") + 1  # the old place
