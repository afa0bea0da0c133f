"""Where a benchmark's cells run: in this process, one after the other (the default), or as Ray tasks.

A *cell* is one independent piece of a run: a (task, method, seed) of the classification suite
(:func:`uqkit.bench.runner.run_cell`), or a (table, method, chunk of splits) of the UCI regression benchmark
(:func:`uqkit.bench.regression_cells.run_regression_cell`). Its function is a top-level function of small
picklable arguments (names, paths, configurations, never data): it loads the data from the local disk,
computes, writes its result atomically to the run directory (so that ``--resume`` skips it) and returns it.

An executor maps such a function over a list of :class:`Cell` and yields ``(cell, result)`` as cells finish:

* :class:`LocalExecutor` runs them in this process, in the given order (a cell waits for the cells named
  in its ``after``): today's behaviour, and the default.
* :class:`RayExecutor` runs them as Ray tasks (https://docs.ray.io), on a local Ray instance of ``workers``
  concurrent cells or on an existing cluster (``address``). Each task reserves ``threads_per_worker`` CPUs
  and runs torch on that many threads (``torch.set_num_threads`` and ``OMP_NUM_THREADS``, one by default:
  our small products gain nothing from more, and threads of concurrent cells fight over the cores). A task
  whose worker process dies (killed, out of memory, a lost node) is retried ``max_retries`` times; an
  exception raised by the cell itself is not retried and stops the run (finished cells stay saved). A cell
  waits for the cells in its ``after`` through Ray's own dependencies (their results are its extra
  arguments), so there are no waves: a dependent cell starts as soon as its base is done.

The numbers do not depend on the executor: a cell seeds everything it draws, so it computes the same thing
in any process (``tests/bench/test_executors.py`` checks Ray against the local executor).

Ray is an optional extra (``pip install 'uqkit[ray]'``), imported only by :meth:`RayExecutor.start`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from uqkit._validation import check_choice, check_positive_int

__all__ = ["EXECUTORS", "RAY_INSTALL_HINT", "Cell", "LocalExecutor", "RayExecutor", "make_executor"]

EXECUTORS = ("local", "ray")
"""Names of the executors, for ``uqkit bench --executor``."""

RAY_INSTALL_HINT = "pip install 'uqkit[ray]'"

DEFAULT_MAX_RETRIES = 3
"""Times a Ray task is run again after its worker process died."""


@dataclass(frozen=True)
class Cell:
    """One independent piece of a run.

    Attributes:
        key: names the cell, e.g. ``("fashion-mnist", "deterministic", 0)``; unique within a run.
        args: the arguments of the cell function: small and picklable (names, paths, configurations).
        after: keys of cells that must finish before this one starts (e.g. ``temperature-scaled`` reuses
            the network that the ``deterministic`` cell saves). Keys of cells that are not in the list
            handed to the executor (finished in an earlier run) are ignored.
    """

    key: tuple[Hashable, ...]
    args: tuple[Any, ...]
    after: tuple[tuple[Hashable, ...], ...] = ()


def _check_cells(cells: Sequence[Cell]) -> list[Cell]:
    cells = list(cells)
    for cell in cells:
        if not isinstance(cell, Cell):
            raise TypeError(f"cells: expected Cell objects, got {type(cell).__name__}")
    keys = [cell.key for cell in cells]
    if len(set(keys)) != len(keys):
        repeated = sorted({str(key) for key in keys if keys.count(key) > 1})
        raise ValueError(f"cells: expected unique keys, got repeated {', '.join(repeated)}")
    return cells


def _dependency_order(cells: list[Cell]) -> list[Cell]:
    """``cells`` in their given order, except that a cell comes after the cells named in its ``after``.

    Raises:
        ValueError: the ``after`` relations form a cycle.
    """
    present = {cell.key for cell in cells}
    waiting = list(cells)
    done: set[tuple[Hashable, ...]] = set()
    ordered: list[Cell] = []
    while waiting:
        ready = next(
            (cell for cell in waiting if all(key in done or key not in present for key in cell.after)), None
        )
        if ready is None:
            raise ValueError(f"cells: the 'after' relations form a cycle among {[c.key for c in waiting]}")
        waiting.remove(ready)
        done.add(ready.key)
        ordered.append(ready)
    return ordered


class LocalExecutor:
    """Runs every cell in this process, one after the other (in the given order, dependencies first).

    ``in_process`` is True: the caller may hand a cell function that is not picklable (e.g. one that logs
    to the caller's log).
    """

    name = "local"
    in_process = True

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release."""

    def describe(self) -> str:
        """One line for the run's log and ``results.json`` (``environment.executor``)."""
        return "local (in process, sequential)"

    def map(
        self,
        function: Callable[..., Any],
        cells: Sequence[Cell],
        on_start: Callable[[Cell], None] | None = None,
    ) -> Iterator[tuple[Cell, Any]]:
        """Yield ``(cell, function(*cell.args))`` for each cell, in dependency order.

        Args:
            function: the cell function.
            cells: the cells to run.
            on_start: called with each cell just before it runs (progress messages).
        """
        for cell in _dependency_order(_check_cells(cells)):
            if on_start is not None:
                on_start(cell)
            yield cell, function(*cell.args)


def _call_in_worker(function: Callable[..., Any], threads: int, args: tuple, *after: Any) -> Any:
    """The body of every Ray task: ``function(*args)`` on ``threads`` torch threads (``after`` are the
    results of the cells this one waited for; Ray passes them in only to order the tasks)."""
    import torch

    torch.set_num_threads(threads)
    return function(*args)


def _import_ray():
    """``import ray``, or an ImportError that says how to install it."""
    try:
        import ray
    except ImportError as error:
        raise ImportError(
            f"--executor ray needs the optional dependency 'ray' ({error}); install it with: "
            f"{RAY_INSTALL_HINT}"
        ) from error
    return ray


class RayExecutor:
    """Runs cells as Ray tasks, on a local Ray instance or an existing cluster.

    Args:
        workers: cells run at once on a local Ray instance, which gets ``workers * threads_per_worker``
            CPUs (default: the machine's CPUs divided by ``threads_per_worker``). Not with ``address``
            (a cluster has its own CPUs).
        address: an existing Ray cluster (``"auto"``, ``"ray://head:10001"``, ``"10.0.0.1:6379"``); the
            run directory must be on a file system every node sees, and the data at the same path on
            every node (``$UQKIT_DATA``, ``--data-dir``): cells read it there, it never travels with them.
        threads_per_worker: torch threads of each cell, and the CPUs each Ray task reserves.
        max_retries: times a task is run again after its worker process died.

    Use it as a context manager (or call :meth:`start` and :meth:`close`). When Ray is already initialised
    in this process (a notebook, a test), that instance is used and left running on :meth:`close`.
    """

    name = "ray"
    in_process = False

    def __init__(
        self,
        workers: int | None = None,
        address: str | None = None,
        threads_per_worker: int = 1,
        max_retries: int = DEFAULT_MAX_RETRIES,
    ) -> None:
        check_positive_int(threads_per_worker, "--threads-per-worker")
        check_positive_int(max_retries, "max_retries", minimum=0)
        if workers is not None:
            check_positive_int(workers, "--workers")
            if address is not None:
                raise ValueError(
                    f"--workers: sets the size of a local Ray instance; with --address {address} the "
                    "cluster's own CPUs are used, drop --workers"
                )
        if address is not None and (not isinstance(address, str) or not address.strip()):
            raise ValueError(f"--address: expected a Ray cluster address (e.g. 'auto'), got {address!r}")
        self.workers = workers
        self.address = address
        self.threads_per_worker = threads_per_worker
        self.max_retries = max_retries
        self._ray = None
        self._owns_instance = False
        self.startup_time_s: float | None = None

    def __enter__(self) -> RayExecutor:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _local_workers(self) -> int:
        if self.workers is not None:
            return self.workers
        return max(1, (os.cpu_count() or 1) // self.threads_per_worker)

    def start(self) -> None:
        """Import Ray and connect to (or start) its instance; a second call does nothing.

        Raises:
            ImportError: Ray is not installed (the message says ``pip install 'uqkit[ray]'``).
        """
        if self._ray is not None:
            return
        ray = _import_ray()
        started = time.perf_counter()
        if not ray.is_initialized():
            threads = str(self.threads_per_worker)
            options: dict[str, Any] = {
                "include_dashboard": False,
                "logging_level": logging.WARNING,
                "runtime_env": {"env_vars": {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}},
            }
            if self.address is not None:
                options["address"] = self.address
            else:
                options["num_cpus"] = self._local_workers() * self.threads_per_worker
                # cells exchange small result dictionaries only: a small object store leaves memory to them
                options["object_store_memory"] = 256 * 1024**2
            ray.init(**options)
            self._owns_instance = True
        self._ray = ray
        self.startup_time_s = time.perf_counter() - started

    def close(self) -> None:
        """Shut down the Ray instance this executor started (one it found running is left alone)."""
        if self._ray is not None and self._owns_instance:
            self._ray.shutdown()
        self._ray, self._owns_instance = None, False

    def describe(self) -> str:
        """One line for the run's log and ``results.json`` (``environment.executor``)."""
        where = (
            f"cluster {self.address}"
            if self.address is not None
            else f"local, {self._local_workers()} workers"
        )
        return f"ray {_ray_version()} ({where}, {self.threads_per_worker} torch thread(s) per cell)"

    def map(
        self,
        function: Callable[..., Any],
        cells: Sequence[Cell],
        on_start: Callable[[Cell], None] | None = None,
    ) -> Iterator[tuple[Cell, Any]]:
        """Submit every cell as a Ray task and yield ``(cell, result)`` as they finish.

        ``on_start`` is called when a cell is submitted (Ray does not say when it starts). An exception
        raised by a cell is raised here (its type kept), after cancelling the cells still running.
        """
        cells = _dependency_order(_check_cells(cells))
        self.start()
        ray = self._ray
        remote = ray.remote(_call_in_worker).options(
            num_cpus=self.threads_per_worker, max_retries=self.max_retries, retry_exceptions=False
        )
        function_ref = ray.put(function)  # pickled once, not once per cell
        refs: dict[tuple[Hashable, ...], Any] = {}
        cell_of: dict[Any, Cell] = {}
        for cell in cells:  # dependency order: every ``after`` ref already exists
            after = [refs[key] for key in cell.after if key in refs]
            if on_start is not None:
                on_start(cell)
            ref = remote.remote(function_ref, self.threads_per_worker, cell.args, *after)
            refs[cell.key] = ref
            cell_of[ref] = cell
        pending = list(cell_of)
        try:
            while pending:
                (ready,), pending = ray.wait(pending, num_returns=1)
                yield cell_of[ready], self._result(ready, cell_of[ready])
        finally:
            for ref in pending:  # an error, Ctrl-C, or the caller stopped early
                ray.cancel(ref, force=True)

    def _result(self, ref: Any, cell: Cell) -> Any:
        """``ray.get(ref)``; a cell's own exception is raised as itself (a ``ValueError`` stays one, with its
        message), a worker that died more than ``max_retries`` times as a ``RuntimeError`` naming the cell."""
        exceptions = self._ray.exceptions
        try:
            return self._ray.get(ref)
        except exceptions.RayTaskError as error:
            cause = getattr(error, "cause", None)
            if isinstance(cause, BaseException):
                raise cause from error
            raise
        except (
            exceptions.WorkerCrashedError,
            exceptions.NodeDiedError,
            exceptions.OutOfMemoryError,
        ) as error:
            raise RuntimeError(
                f"cell {cell.key}: its Ray worker died {self.max_retries + 1} times "
                f"({type(error).__name__}); finished cells are saved, continue with --resume"
            ) from error


def _ray_version() -> str:
    try:
        import ray
    except ImportError:  # pragma: no cover - describe() runs after start()
        return "(not installed)"
    return ray.__version__


def make_executor(
    name: str = "local",
    workers: int | None = None,
    address: str | None = None,
    threads_per_worker: int | None = None,
) -> LocalExecutor | RayExecutor:
    """The executor that ``uqkit bench --executor NAME`` asks for (not started yet).

    Raises:
        ValueError: an unknown name, or ``--workers``, ``--address`` or ``--threads-per-worker`` without
            ``--executor ray``.
    """
    check_choice(name, "--executor", EXECUTORS)
    if name == "local":
        given = [
            flag
            for flag, value in (
                ("--workers", workers),
                ("--address", address),
                ("--threads-per-worker", threads_per_worker),
            )
            if value is not None
        ]
        if given:
            raise ValueError(
                f"{', '.join(given)}: only with --executor ray (the local executor runs in this process)"
            )
        return LocalExecutor()
    return RayExecutor(workers, address, threads_per_worker if threads_per_worker is not None else 1)
