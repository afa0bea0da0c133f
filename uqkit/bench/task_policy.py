"""A task's policy: what :func:`uqkit.bench.runner.run_bench` asks a task for, the one driver of every run.

``run_bench`` owns the run: the run directory and its ``config.json`` (the identity ``--resume`` checks),
resume (with ``--resume``, a cell whose result file exists is finished), the executor, the log and
``results.json``. What a
cell *is*, and how a method's block is made from its cells' blocks, is a policy of the task:

* the classification suite and the user's data (:class:`uqkit.bench.runner.SuitePolicy`): a cell trains
  one :class:`~uqkit.bench.registry.Method` once under one seed (:func:`uqkit.bench.runner.run_cell`); a
  method's block is its one seed's block, or the aggregate over seeds;
* the UCI tables (:class:`uqkit.bench.regression_cells.UCIPolicy`): a cell is the UCI protocol on a chunk
  of the table's splits (:func:`uqkit.bench.regression_cells.run_regression_cell`); a method's block is the
  merge of its chunks (:func:`uqkit.bench.regression_cells.merge_chunk_blocks`).

A run's tasks share one policy (a run is of one kind: its ``results.json`` has one ``config``).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from uqkit.bench.executors import Cell

if TYPE_CHECKING:  # the config is the runner's; the runner imports the policies
    from uqkit.bench.runner import BenchConfig

__all__ = ["PlannedCell", "TaskPlan", "TaskPolicy"]

Key = tuple[Hashable, ...]


@dataclass(frozen=True)
class PlannedCell:
    """One cell of a task, as its policy plans it.

    Attributes:
        cell: the executor's cell; ``cell.args`` is ``(cell function, *its arguments)``: a top-level function
            of small picklable arguments that writes its block atomically to ``path`` and returns it, and
            takes a ``log`` keyword (in-process runs hand it the run's log).
        path: the cell's result file; its presence means the cell is finished (``--resume`` keeps it).
        line: the cell's progress line (``[uqkit] <task> [i/n] <method>...``).
    """

    cell: Cell
    path: Path
    line: str


@dataclass
class TaskPlan:
    """The cells of one task of a run, and where their blocks go.

    Attributes:
        name: the task's key in ``results.json`` (``uci`` is ``uci-<table>``).
        header: the task's block of ``results.json`` without its methods' blocks.
        cells: every cell of the task (finished or not), in run order.
        methods: each method of the task, in the run's order, with the keys of its cells in the order its
            merge takes them (seeds, or chunks of splits).
    """

    name: str
    header: dict[str, Any]
    cells: list[PlannedCell] = field(default_factory=list)
    methods: dict[str, list[Key]] = field(default_factory=dict)


class TaskPolicy(Protocol):
    """How the tasks of one kind run (module docstring).

    Attributes:
        torch_threads: torch threads of the run in this process (restored afterwards); ``None``: unchanged.
    """

    torch_threads: int | None

    def check(self, config: BenchConfig) -> BenchConfig:
        """Check ``config``'s options, reading and writing nothing; return it with the policy's defaults.

        Raises:
            ValueError: a bad option, or one the task's kind does not take, naming it.
        """
        ...

    def prepare(self, config: BenchConfig, log: Callable[[str], None]) -> BenchConfig:
        """What must be known before the run directory is written (the user's data read and its methods
        probed); return the configuration to run."""
        ...

    def identity(self, config: BenchConfig) -> dict[str, Any]:
        """What a resumed run must share with the run it continues (``config.json``)."""
        ...

    def plan(self, config: BenchConfig, task: str, log: Callable[[str], None]) -> TaskPlan:
        """The cells of ``task`` (a name of ``config.tasks``)."""
        ...

    def merge(
        self, plan: TaskPlan, method: str, blocks: dict[Key, dict[str, Any]], log: Callable[[str], None]
    ) -> dict[str, Any]:
        """``method``'s block in ``results.json`` from its cells' ``blocks`` (keyed as ``plan.methods``)."""
        ...
