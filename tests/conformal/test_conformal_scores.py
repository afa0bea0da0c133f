"""LAC, APS and RAPS scores against loops written from the papers' definitions."""

from __future__ import annotations

import pytest
import torch

from uqkit.conformal import aps_scores, lac_scores, raps_scores


def _probs(batch: int = 30, classes: int = 6, seed: int = 0, ties: bool = False) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, classes, generator=generator, dtype=torch.float64) * 2
    if ties:
        logits = logits.round()  # equal probabilities within a row
    return torch.softmax(logits, dim=-1)


def _raps_loop(probs: torch.Tensor, k_reg: int, lam: float, u: torch.Tensor | None) -> torch.Tensor:
    """Angelopoulos et al. 2021, Algorithm 2, per example and class: sum_{j <= L} (p_(j) + lam 1[j > k_reg])
    - u p_y, with the classes ranked by decreasing probability, ties by class index."""
    out = torch.empty_like(probs)
    for b, row in enumerate(probs.tolist()):
        ranking = sorted(range(len(row)), key=lambda c, row=row: (-row[c], c))
        for y in range(len(row)):
            position = ranking.index(y) + 1  # L, 1-based
            total = sum(row[ranking[j - 1]] + lam * (j > k_reg) for j in range(1, position + 1))
            out[b, y] = total - (0.0 if u is None else float(u[b]) * row[y])
    return out


def test_lac_is_one_minus_probability():
    probs = _probs()
    assert torch.equal(lac_scores(probs), 1 - probs)
    assert lac_scores(probs.float()).dtype == torch.float64


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("randomized", [False, True])
def test_aps_matches_loop(ties, randomized):
    probs = _probs(seed=1, ties=ties)
    u = torch.rand(probs.shape[0], generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    u = u if randomized else None
    torch.testing.assert_close(aps_scores(probs, u), _raps_loop(probs, 0, 0.0, u), rtol=0, atol=1e-12)


@pytest.mark.parametrize(("k_reg", "lam"), [(0, 0.1), (1, 0.01), (2, 0.5), (6, 0.3), (3, 0.0)])
@pytest.mark.parametrize("randomized", [False, True])
def test_raps_matches_loop(k_reg, lam, randomized):
    probs = _probs(seed=3, ties=True)
    u = torch.rand(probs.shape[0], generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    u = u if randomized else None
    torch.testing.assert_close(
        raps_scores(probs, k_reg, lam, u), _raps_loop(probs, k_reg, lam, u), rtol=0, atol=1e-12
    )


def test_raps_without_penalty_is_aps():
    probs = _probs(seed=5)
    assert torch.equal(raps_scores(probs, 2, 0.0), aps_scores(probs))


@pytest.mark.parametrize("u_value", [None, 0.0, 0.5, 1.0])
def test_adaptive_scores_grow_along_the_ranking(u_value):
    """The set {y : s(x, y, u) <= q} is a top-k set: scores never decrease from one rank to the next."""
    probs = _probs(batch=200, seed=6)
    u = None if u_value is None else torch.full((200,), u_value, dtype=torch.float64)
    order = probs.argsort(dim=-1, descending=True, stable=True)
    for scores in (aps_scores(probs, u), raps_scores(probs, 1, 0.05, u)):
        ranked = scores.gather(-1, order)
        assert bool((ranked[:, 1:] >= ranked[:, :-1] - 1e-12).all())


@pytest.mark.parametrize(
    ("probs", "error", "match"),
    [
        (
            torch.full((3, 4), 0.3, dtype=torch.float64),
            ValueError,
            "probs: expected probabilities summing to 1",
        ),
        (torch.tensor([[1.5, -0.5]]), ValueError, r"probs: expected probabilities in \[0, 1\]"),
        (torch.tensor([0.5, 0.5]), ValueError, "probs: expected a 2-D tensor"),
        (torch.tensor([[1, 0]]), TypeError, "probs: expected a floating-point tensor"),
        ([[0.5, 0.5]], TypeError, "probs: expected a torch.Tensor"),
    ],
)
def test_scores_reject_malformed_probabilities(probs, error, match):
    for score in (lac_scores, aps_scores, lambda p: raps_scores(p, 1, 0.1)):
        with pytest.raises(error, match=match):
            score(probs)


@pytest.mark.parametrize(
    ("u", "error", "match"),
    [
        (torch.rand(4, dtype=torch.float64), ValueError, "u: expected 3 uniform draws"),
        (torch.tensor([0.1, 1.2, 0.3]), ValueError, r"u: expected values in \[0, 1\]"),
        (torch.tensor([0, 1, 0]), TypeError, "u: expected a floating-point tensor"),
        (torch.rand(3, 1), ValueError, "u: expected a 1-D tensor"),
    ],
)
def test_adaptive_scores_reject_malformed_uniforms(u, error, match):
    probs = _probs(batch=3)
    with pytest.raises(error, match=match):
        aps_scores(probs, u)
    with pytest.raises(error, match=match):
        raps_scores(probs, 1, 0.1, u)


@pytest.mark.parametrize(
    ("k_reg", "lam", "error", "match"),
    [
        (-1, 0.1, ValueError, r"k_reg: expected an int >= 0"),
        (1.5, 0.1, TypeError, "k_reg: expected an int"),
        (1, -0.1, ValueError, "lam: expected a finite number >= 0"),
        (1, float("nan"), ValueError, "lam: expected a finite number >= 0"),
        (1, "0.1", TypeError, "lam: expected a number"),
    ],
)
def test_raps_rejects_bad_regularisation(k_reg, lam, error, match):
    with pytest.raises(error, match=match):
        raps_scores(_probs(batch=3), k_reg, lam)
