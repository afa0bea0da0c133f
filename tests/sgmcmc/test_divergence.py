"""The divergence monitor of SG-MCMC chains (uqkit/sgmcmc/divergence.py): its rule against a slow reference,
and real SGLD chains on a conjugate linear regression, flagged exactly when the step size passes the
stability limit of the gradient step."""

from __future__ import annotations

import math

import pytest
import torch

from uqkit.sgmcmc import SGLD, Divergence, DivergenceMonitor


def _reference(
    losses: list[list[float]], sampling: list[bool], window: int, tolerance: float, patience: int
) -> list[tuple[int, int, str]]:
    """The rule written out chain by chain: ``(chain, step, reason)`` of each divergence, ``close``
    included."""
    found = []
    for chain in range(len(losses[0])):
        level, total, count, above, last = math.inf, 0.0, 0, 0, -1
        for step, row in enumerate(losses):
            value = row[chain]
            if not math.isfinite(value):
                found.append((chain, step, "non-finite"))
                break
            total, count = total + value, count + 1
            if (step + 1) % window:
                continue
            mean, total, count = total / count, 0.0, 0
            if not sampling[step] and above:  # the stage ended above the tolerance
                found.append((chain, last, "blow-up"))
                break
            if sampling[step]:
                above, last = (above + 1, step) if mean > level + tolerance else (0, last)
                if above >= patience:
                    found.append((chain, step, "blow-up"))
                    break
            else:
                above = 0
            level = min(level, mean)
        else:
            if above:  # the run ended above the tolerance
                found.append((chain, last, "blow-up"))
    return sorted(found, key=lambda event: (event[1], event[0]))


def _run(monitor: DivergenceMonitor, losses: list[list[float]], sampling: list[bool]):
    for step, row in enumerate(losses):
        found = monitor.update(step, torch.tensor(row, dtype=torch.float64), sampling[step])
        assert all(event in monitor.events for event in found)
    monitor.close()
    return sorted(((e.chain, e.step, e.reason) for e in monitor.events), key=lambda e: (e[1], e[0]))


def test_the_rule_on_chains_written_by_hand():
    """Windows of 2 steps; steps 4-11 and 16-17 sample. A non-finite loss is flagged at once; a blow-up
    takes 2 windows in a row above the level + 2 in a sampling stage, or fewer at the stage's end."""
    sampling = [4 <= step < 12 or step >= 16 for step in range(18)]
    chains = {
        "exploration spike, then fine": [1, 1, 40, 40, 0.5, 0.5] + [0.6] * 12,
        "one window above, then back": [1, 1, 0.4, 0.4, 0.5, 0.5, 3, 3] + [0.5] * 10,
        "two windows above": [1, 1, 0.4, 0.4, 0.5, 0.5, 3, 3, 2.6, 2.6] + [0.5] * 8,
        "the stage ends above": [1, 1, 0.4, 0.4] + [0.5] * 6 + [3, 3] + [0.5] * 6,
        "the run ends above": [1, 1, 0.4, 0.4] + [0.5] * 12 + [2.5, 2.5],
        "just under": [1, 1, 0.4, 0.4] + [2.39] * 14,
        "nan": [1, 1, 0.4, math.nan] + [0.5] * 14,
    }
    losses = [list(row) for row in zip(*chains.values(), strict=True)]
    monitor = DivergenceMonitor(len(chains), window=2, tolerance=2.0, patience=2)
    events = _run(monitor, losses, sampling)
    expected = [(6, 3, "non-finite"), (2, 9, "blow-up"), (3, 11, "blow-up"), (4, 17, "blow-up")]
    assert events == _reference(losses, sampling, 2, 2.0, 2) == expected
    assert monitor.diverged.tolist() == [False, False, True, True, True, False, True]
    two = monitor.events[1]
    assert (two.loss, two.level) == (2.6, 0.4) and "2.2 above" in two.describe()
    assert math.isnan(monitor.events[0].loss) and monitor.events[0].as_dict()["loss"] == "nan"
    assert monitor.level[[0, 1, 5]].tolist() == pytest.approx([0.5, 0.4, 0.4])  # the lowest window means


@pytest.mark.parametrize("patience", [1, 2, 3])
def test_random_losses_match_the_reference(patience):
    generator = torch.Generator().manual_seed(patience)
    steps, chains, window = 80, 12, 4
    losses = torch.randn(steps, chains, generator=generator, dtype=torch.float64).cumsum(0) * 0.6
    losses[17, 2] = math.inf
    sampling = [(step // 20) % 2 == 1 for step in range(steps)]
    monitor = DivergenceMonitor(chains, window, tolerance=1.0, patience=patience)
    expected = _reference(losses.tolist(), sampling, window, 1.0, patience)
    assert _run(monitor, losses.tolist(), sampling) == expected
    assert len(expected) >= 4  # the walks do blow up, so the comparison is not empty


def test_reduce_combines_the_window_sums_before_the_mean():
    seen = []

    def two_identical_ranks(totals: torch.Tensor) -> torch.Tensor:
        seen.append(totals.clone())
        return 2 * totals

    monitor = DivergenceMonitor(1, window=2, reduce=two_identical_ranks)
    for step, value in enumerate([1.0, 3.0, 0.0, 1.0]):
        monitor.update(step, value, sampling=True)
    assert [t.tolist() for t in seen] == [[[4.0], [2.0]], [[1.0], [2.0]]]  # [sum, count] per window
    assert monitor.level.tolist() == [0.5] and not monitor.events


def test_checks_its_arguments():
    with pytest.raises(ValueError, match="num_chains"):
        DivergenceMonitor(0, 1)
    with pytest.raises(ValueError, match="tolerance"):
        DivergenceMonitor(1, 1, tolerance=0.0)
    with pytest.raises(TypeError, match="reduce"):
        DivergenceMonitor(1, 1, reduce=3)
    with pytest.raises(ValueError, match="patience"):
        DivergenceMonitor(1, 1, patience=0)
    monitor = DivergenceMonitor(2, 1)
    with pytest.raises(ValueError, match="2 losses"):
        monitor.update(0, torch.zeros(3), True)
    with pytest.raises(TypeError, match="sampling"):
        monitor.update(0, torch.zeros(2), 1)
    with pytest.raises(ValueError, match="step"):
        monitor.update(-1, torch.zeros(2), True)
    assert isinstance(Divergence(0, 0, "blow-up", 1.0, 0.0).as_dict(), dict)


def test_sgld_chains_are_flagged_exactly_past_the_stability_limit():
    """SGLD on a linear-Gaussian model is ``theta' = theta - lr (H theta - b) + noise``: stable when
    ``lr < 2 / lambda_max(H)``, exponentially divergent (by ``|1 - lr lambda_max|`` per step) beyond. At
    equilibrium at ``T = 1`` the mean loss sits above its minimum by about ``d T / (2 N)`` (0.016 nats here;
    the discretisation inflates it at most 10-fold at ``0.9`` of the limit), so the stable chains never come
    near the 2-nat tolerance, and the divergent ones pass it within a few hundred steps."""
    generator = torch.Generator().manual_seed(0)
    n, d, num_data, sigma = 64, 2, 64, 0.5
    mixing = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    x = torch.randn(n, d, generator=generator, dtype=torch.float64) @ mixing
    noise = torch.randn(n, generator=generator, dtype=torch.float64)
    y = x @ torch.tensor([1.0, -0.5], dtype=torch.float64) + sigma * noise
    prior = 2.0
    hessian = x.T @ x / (n * sigma**2) + prior / num_data * torch.eye(d, dtype=torch.float64)
    limit = 2.0 / float(torch.linalg.eigvalsh(hessian).max())
    factors = (0.3, 0.9, 1.05, 1.5)
    weights = [torch.nn.Parameter(torch.zeros(d, dtype=torch.float64)) for _ in factors]
    optimizer = SGLD(
        [{"params": [w], "lr": f * limit} for w, f in zip(weights, factors, strict=True)],
        lr=limit,
        num_data=num_data,
        prior_precision=prior,
    )
    torch.manual_seed(1)
    monitor = DivergenceMonitor(len(factors), window=8)
    for step in range(400):
        losses = torch.stack([((y - x @ w) ** 2).mean() / (2 * sigma**2) for w in weights])
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        optimizer.step()
        monitor.update(step, losses.detach(), sampling=step >= 40)
    monitor.close()
    assert monitor.diverged.tolist() == [False, False, True, True]
    assert {e.reason for e in monitor.events} == {"blow-up"}
    assert all(e.loss - e.level > 2.0 for e in monitor.events)
