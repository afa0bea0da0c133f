"""The two-moons uncertainty surface: the grid, its values on a method with closed-form uncertainty, and a
quick ``uqkit bench --task two-moons`` run writing the ``surface`` key and the surface figure (Liu et al.
2020, fig. 1).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from uqkit import data
from uqkit.bench.evaluate import MAX_SURFACE_POINTS, SURFACE_RESOLUTION, evaluate_method, surface_grid
from uqkit.bench.registry import Method
from uqkit.bench.report import validate_results
from uqkit.bench.tasks import OODSet, Task
from uqkit.cli import main
from uqkit.prediction import Prediction

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")


# -- the grid ---------------------------------------------------------------------------------------------
def test_surface_grid_covers_the_padded_bounding_box():
    points = torch.tensor([[0.0, -2.0], [3.0, 1.0], [1.0, 0.5]])
    grid = surface_grid(points, resolution=5, padding=1.0)
    torch.testing.assert_close(grid.x, torch.linspace(-1.0, 4.0, 5))
    torch.testing.assert_close(grid.y, torch.linspace(-3.0, 2.0, 5))
    flat = grid.points()
    assert flat.shape == (25, 2)
    # row-major: point i * nx + j is (x[j], y[i])
    torch.testing.assert_close(flat[2 * 5 + 3], torch.tensor([grid.x[3], grid.y[2]]))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"points": [[0.0, 1.0]]}, TypeError, "points: expected a torch.Tensor, got list"),
        (
            {"points": torch.zeros(3, 3)},
            ValueError,
            r"points: expected shape \[N, 2\] with N >= 1, got \[3, 3\]",
        ),
        (
            {"points": torch.zeros(0, 2)},
            ValueError,
            r"points: expected shape \[N, 2\] with N >= 1, got \[0, 2\]",
        ),
        ({"points": torch.tensor([[0.0, math.nan]])}, ValueError, "points: expected finite values"),
        (
            {"points": torch.zeros(2, 2), "resolution": 1},
            ValueError,
            "resolution: expected an int >= 2, got 1",
        ),
        (
            {"points": torch.zeros(2, 2), "padding": -0.5},
            ValueError,
            "padding: expected a number >= 0, got -0.5",
        ),
    ],
)
def test_surface_grid_rejects_bad_input(kwargs, error, message):
    with pytest.raises(error, match=message):
        surface_grid(**kwargs)


# -- the surface of methods with closed-form uncertainty ---------------------------------------------------
class _OppositeSamples(Method):
    """Two samples with logits ``(+x1, 0)`` and ``(-x1, 0)``: the mean prediction is uniform everywhere, so
    total = log 2, aleatoric = H(sigmoid(x1)) and epistemic = log 2 - H(sigmoid(x1))."""

    num_samples = 2

    def __init__(self) -> None:
        super().__init__()
        self.network = torch.nn.Identity()

    def predict(self, inputs: torch.Tensor) -> Prediction:
        first = torch.stack([inputs[:, 0], torch.zeros(len(inputs))], dim=1)
        return Prediction(torch.stack([first, -first]))


def _binary_entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.log() + (1 - p) * (1 - p).log())


def _tiny_task(input_shape=(2,)) -> Task:
    generator = torch.Generator().manual_seed(0)
    train = data.LabeledData(torch.randn(30, 2, generator=generator), torch.arange(30) % 2)
    test = data.LabeledData(torch.randn(20, 2, generator=generator), torch.arange(20) % 2)
    ood = OODSet("a shifted blob", torch.randn(10, 2, generator=generator) + 4.0)
    return Task("toy", "toy", 2, input_shape, train, train, test, "mlp", {"blob": ood})


def test_surface_matches_the_closed_form():
    task = _tiny_task()
    block = evaluate_method(_OppositeSamples(), task, batch_size=512, progress=False)
    surface = block["surface"]
    x, y = torch.tensor(surface["x"]), torch.tensor(surface["y"])
    everything = torch.cat([task.train.inputs, task.ood_sets["blob"].inputs])
    n = SURFACE_RESOLUTION
    assert len(x) == len(y) == n
    rounding = 0.5e-3 + 1e-6  # values are stored with 3 decimals
    assert x[0].item() == pytest.approx(everything[:, 0].min().item() - 1.0, abs=rounding)
    assert y[-1].item() == pytest.approx(everything[:, 1].max().item() + 1.0, abs=rounding)
    total, epistemic = torch.tensor(surface["total"]), torch.tensor(surface["epistemic"]).double()
    assert total.shape == epistemic.shape == (n, n)
    torch.testing.assert_close(total, torch.full((n, n), math.log(2)), atol=rounding, rtol=0)
    # depends on the column only; |d/dx epistemic| <= 0.23, so x's rounding adds at most 1.2e-4
    expected = math.log(2) - _binary_entropy(torch.sigmoid(x.double()))
    torch.testing.assert_close(epistemic, expected.expand(n, n), atol=rounding + 1.2e-4, rtol=0)
    # every training and OOD point is stored (fewer than the cap), with its label
    stored_x = torch.tensor(surface["train_points"]["x"])
    torch.testing.assert_close(stored_x, task.train.inputs[:, 0], atol=rounding, rtol=0)
    assert surface["train_points"]["label"] == task.train.labels.tolist()
    assert len(surface["ood_points"]["x"]) == 10


def test_no_surface_for_inputs_that_are_not_2d_vectors():
    block = evaluate_method(
        _OppositeSamples(), _tiny_task(input_shape=(1, 2)), batch_size=512, progress=False
    )
    assert "surface" not in block


# -- a quick run through the command line -----------------------------------------------------------------
def test_quick_two_moons_run_writes_surface_and_figure(tmp_path):
    out = tmp_path / "run"
    status = main(
        [
            "bench",
            "--task",
            "two-moons",
            "--quick",
            "--methods",
            "deterministic,sngp",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    assert status == 0
    results = json.loads((out / "results.json").read_text())
    validate_results(results)
    task = results["tasks"]["two-moons"]
    for name in ("deterministic", "sngp"):
        surface = task["methods"][name]["surface"]
        assert len(surface["total"]) == len(surface["y"]) and len(surface["total"][0]) == len(surface["x"])
        assert max(max(row) for row in surface["total"]) <= math.log(2) + 1e-4  # entropy of 2 classes
        assert len(surface["train_points"]["x"]) == min(task["num_train"], MAX_SURFACE_POINTS)
    # a single network has no epistemic uncertainty anywhere
    assert {v for row in task["methods"]["deterministic"]["surface"]["epistemic"] for v in row} == {0.0}
    figure = out / "figures" / "two-moons_surface.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (out / "report.md").read_text()
    assert markdown.index("figures/two-moons_surface.png") < markdown.index(
        "figures/two-moons_reliability.png"
    )
