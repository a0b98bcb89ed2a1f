"""Executors: where a study's independent tasks (one per design) run.

``LocalExecutor`` runs them here, one after another (the simulator already uses the cores).
``DaskExecutor`` sends them to a ``dask.distributed`` cluster: a ``LocalCluster`` of worker
processes by default, or any running scheduler (``tcp://host:8786``; e.g. one started by
dask-jobqueue on Slurm). A task is a module-level function and picklable arguments, so both
give the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from bayesneuron.errors import BayesneuronError

__all__ = ["LocalExecutor", "DaskExecutor", "make_executor"]

Task = tuple[Callable, tuple]


class LocalExecutor:
    """Run tasks in this process, in order."""

    def run(self, tasks: Mapping[object, Task]) -> Iterator[tuple[object, object]]:
        """Yield ``(key, fn(*args))`` for every ``key: (fn, args)``."""
        for key, (fn, args) in tasks.items():
            yield key, fn(*args)

    def __str__(self) -> str:
        return "this process"


class DaskExecutor:
    """Run tasks on a Dask cluster; results come back as they finish.

    Args:
        scheduler: address of a running scheduler; ``None`` starts a ``LocalCluster`` of
            ``n_workers`` processes with one thread each (closed again after each ``run``).
        n_workers: workers of the local cluster.
    """

    def __init__(self, scheduler: str | None = None, n_workers: int = 2):
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise BayesneuronError(
                "the dask executor needs dask.distributed: pip install 'bayesneuron[dask]'"
            ) from None
        if n_workers < 1:
            raise BayesneuronError(f"n_workers = {n_workers} must be ≥ 1")
        self.scheduler, self.n_workers = scheduler, n_workers

    def _client(self):
        from distributed import Client, LocalCluster

        if self.scheduler is not None:
            try:
                return Client(self.scheduler, timeout="20s"), None
            except OSError as e:
                raise BayesneuronError(
                    f"cannot reach the Dask scheduler at {self.scheduler}: {e}"
                ) from None
        cluster = LocalCluster(
            n_workers=self.n_workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
        return Client(cluster), cluster

    def run(self, tasks: Mapping[object, Task]) -> Iterator[tuple[object, object]]:
        """Yield ``(key, result)`` in completion order; a failed task raises its error."""
        if not tasks:
            return
        from distributed import as_completed

        client, cluster = self._client()
        try:
            futures = {
                client.submit(fn, *args, pure=False, key=f"bayesneuron-{key}-{id(tasks)}"): key
                for key, (fn, args) in tasks.items()
            }
            for fut in as_completed(futures):
                yield futures[fut], fut.result()
        finally:
            client.close()
            if cluster is not None:
                cluster.close()

    def __str__(self) -> str:
        where = self.scheduler or f"a local Dask cluster of {self.n_workers} processes"
        return f"Dask ({where})"


def make_executor(name: str, scheduler: str | None = None, n_workers: int = 2):
    """``"local"`` or ``"dask"`` → an executor."""
    if name == "local":
        if scheduler is not None:
            raise BayesneuronError("--scheduler needs --executor dask")
        return LocalExecutor()
    if name == "dask":
        return DaskExecutor(scheduler, n_workers)
    raise BayesneuronError(f"executor {name!r} unknown; use 'local' or 'dask'")
