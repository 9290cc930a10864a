"""Run a sweep on a Dask cluster: a ``LocalCluster`` on this machine's cores by default, or any cluster by
its scheduler's address (``dask scheduler`` / ``dask worker``). Dask schedules, retries and recovers; this
module only submits the points not yet stored, stores each as it finishes and draws the table.

Nothing recomputed, nothing lost: a point already stored (same content hash, its files there) is not
submitted; each finished point is stored at once (:class:`~scanctl.sweep.store.PointStore`); a point whose
worker dies is run again by Dask elsewhere (up to ``distributed.scheduler.allowed-failures`` times, then it
is recorded as ``lost``); a point raising is retried once (:data:`RETRIES`) and then recorded; Ctrl-C stops
submitting, keeps every finished point and writes the table of what is there.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from scanctl.errors import ScanctlError
from scanctl.sweep.point import Task, run_point, tasks
from scanctl.sweep.spec import Spec
from scanctl.sweep.store import PointStore

log = logging.getLogger(__name__)

#: Retries of a point whose task raised (a point's own failure is a result, not an exception: this covers
#: the machinery, e.g. a worker that could not unpickle the task).
RETRIES = 1
#: How long to wait for a scheduler given by address (s).
CONNECT_TIMEOUT_S = 5.0


#: Unset in the local cluster's worker processes (None unsets a key of Dask's nanny environment): Dask sets
#: ``MALLOC_TRIM_THRESHOLD_=65536``, which turns off glibc's dynamic mmap threshold, so every array over 128 kB
#: the Bloch simulation allocates is mapped and unmapped afresh: a point then costs 40-60 % more CPU
#: (measured: 0.22 s against 0.14-0.18 s a point of gre_2d at 32 x 32, the same process with and without it).
WORKER_ENVIRON_UNSET = {"MALLOC_TRIM_THRESHOLD_": None}
#: The local cluster's Dask settings: no statistical profiler (it samples every thread's stack every 10 ms for a
#: dashboard the sweep does not serve; measured: 0.173 s against 0.159 s CPU a point, three runs each), and the
#: system monitor (every 500 ms) and event-loop tick (every 20 ms) slowed to what a sweep of scans needs: the
#: scheduler and client in this process then take 5-6 ms of CPU a 0.2 s task instead of 12-14 ms (an idle
#: 1-worker cluster running 40 tasks, twice each way), CPU that two workers on two cores would share with them.
WORKER_CONFIG = {"distributed.worker.profile.enabled": False, "distributed.admin.system-monitor.interval": "5s",
                 "distributed.admin.tick.interval": "1s"}


class SchedulerError(ScanctlError):
    """The Dask scheduler cannot be reached, or no cluster can be started."""


@dataclass
class Summary:
    """What a sweep did."""

    points: int
    stored_before: int  # found finished, not rerun
    computed: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    interrupted: bool = False
    all_completed: bool = False  # every point of the sweep is stored, completed
    wall_s: float = 0.0  # the whole sweep: cluster start and stop, points, table and plots
    compute_s: float = 0.0  # from the first point submitted to the last one stored
    files: list[Path] = field(default_factory=list)


def run_sweep(spec: Spec, out_dir: str | os.PathLike[str], *, scheduler: str | None = None,
              workers: int | None = None, stream: TextIO = sys.stderr) -> Summary:
    """Run every point of ``spec`` not yet stored in ``out_dir``, then write the table and plots. Returns
    the summary (``interrupted`` after Ctrl-C: the finished points are kept and tabled). Raises
    SchedulerError when the scheduler cannot be reached, SweepError/SweepOutputError for bad input or an
    unwritable ``out_dir``."""
    t0 = time.perf_counter()
    store = PointStore(out_dir)
    all_tasks = tasks(spec)
    missing = [t for t in all_tasks if store.done(t) is None]
    summary = Summary(len(all_tasks), len(all_tasks) - len(missing))
    try:
        if missing:
            with _client(scheduler, workers) as client:
                _compute(client, missing, store, summary, Progress(len(missing), stream))
    except KeyboardInterrupt:
        summary.interrupted = True
    rows, summary.files = finish(spec, all_tasks, store)
    summary.all_completed = all(r["outcome"] == "completed" for r in rows)
    summary.wall_s = time.perf_counter() - t0
    return summary


def finish(spec: Spec, all_tasks: list[Task], store: PointStore) -> tuple[list[dict[str, Any]], list[Path]]:
    """Write the table and plots from what is stored; returns the rows and the files written."""
    from scanctl.sweep.plots import plot_figures

    rows = store.rows(all_tasks, spec.names, spec.reference_index())
    plots = store.root / "plots"
    unchanged = store.table_unchanged(rows, spec.names) and plots.is_dir()
    files = store.write_table(rows, spec.names)
    done = [r for r in rows if r["outcome"] != "pending"]
    if unchanged:  # the plots are drawn from the table alone: a resumed finished sweep keeps them
        files += sorted(plots.glob("*.png"))
    elif done:
        files += plot_figures(done, spec.names, plots)
    return rows, files


def _compute(client: Any, missing: list[Task], store: PointStore, summary: Summary, progress: Progress) -> None:
    from distributed import as_completed

    t0 = time.perf_counter()
    futures = {client.submit(run_point, t, key=f"scanctl-point-{t.key}", retries=RETRIES, pure=False): t
               for t in missing}
    try:
        for future in as_completed(futures):
            task = futures.pop(future)
            out = _outcome(future, task)
            store.save(task, out)
            outcome = out["result"]["outcome"]
            summary.computed += 1
            summary.outcomes[outcome] = summary.outcomes.get(outcome, 0) + 1
            progress.step(outcome)
            future.release()
            summary.compute_s = time.perf_counter() - t0
    finally:
        progress.close()
        if futures:  # interrupted: nothing more is started for this sweep
            client.cancel(list(futures))


def _outcome(future: Any, task: Task) -> dict[str, Any]:
    """The point's result, or a result saying why the cluster could not give one."""
    from distributed import KilledWorker

    try:
        return dict(future.result())
    except KilledWorker as exc:
        reason = f"lost: every worker that ran it died ({exc})"
    except Exception as exc:  # noqa: BLE001 - the machinery failed on this point: recorded, the sweep goes on
        reason = f"error: {type(exc).__name__}: {exc}"
    outcome, _, message = reason.partition(": ")
    return {"result": {"index": task.index, "key": task.key, "values": task.values, "outcome": outcome,
                       "message": message, "figures": {}, "notes": [], "outputs": [], "wall_s": None},
            "files": {}}


@contextmanager
def _client(scheduler: str | None, workers: int | None) -> Iterator[Any]:
    """A Dask client: on the scheduler at ``scheduler``, or on a new LocalCluster of ``workers`` processes
    (default: the machine's cores), one thread each (a scan is CPU-bound Python)."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise SchedulerError("scanctl sweep needs Dask distributed: pip install 'scanctl[sweep]'") from exc
    if scheduler is not None:
        if not scheduler.startswith(("tcp://", "tls://", "ws://", "wss://", "inproc://", "ucx://")):
            raise SchedulerError(f"--scheduler {scheduler!r}: give the scheduler's address, e.g. tcp://HOST:8786")
        try:
            client = Client(scheduler, timeout=f"{CONNECT_TIMEOUT_S}s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise SchedulerError(f"--scheduler {scheduler}: cannot be reached within {CONNECT_TIMEOUT_S:g} s "
                                 f"({type(exc).__name__}: {exc})") from None
        try:
            yield client
        finally:
            client.close()
        return
    import dask

    n = workers or os.cpu_count() or 1
    logging.getLogger("distributed").setLevel(logging.ERROR)  # its INFO chatter is not the sweep's progress
    # (for as long as the cluster lives: a worker that died is started again with the same environment)
    environ = {**dask.config.get("distributed.nanny.pre-spawn-environ"), **WORKER_ENVIRON_UNSET}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ, **WORKER_CONFIG}):
        with _sigint_ignored():  # the workers inherit it: a Ctrl-C at the terminal is this process's to handle
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                                   silence_logs=logging.ERROR)
        try:
            with Client(cluster) as client:
                yield client
        finally:
            cluster.close()


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored while the block runs (in the main thread; elsewhere nothing changes). Processes started
    meanwhile keep ignoring it, so Ctrl-C at a terminal — sent to the whole process group — reaches only
    this process, which stops the sweep and closes the cluster, instead of killing each worker mid-point."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class Progress:
    """Points done of those to run, the rate and the time left, on one line of ``stream`` (rewritten on a
    terminal; otherwise a line at most every few seconds, and the last)."""

    def __init__(self, total: int, stream: TextIO, width: int = 30) -> None:
        self.total, self.stream, self.width = total, stream, width
        self.tty = stream.isatty()
        self.done = 0
        self.failed = 0
        self.t0 = time.monotonic()
        self._last = 0.0

    def step(self, outcome: str) -> None:
        self.done += 1
        self.failed += outcome != "completed"
        now = time.monotonic()
        if now - self._last < (0.1 if self.tty else 5.0) and self.done < self.total:
            return
        self._last = now
        elapsed = now - self.t0
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        filled = int(self.width * self.done / max(self.total, 1))
        line = (f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} points, "
                f"{self.failed} not completed, {60 * rate:.1f}/min, {_duration(left)} left")
        self.stream.write(f"\r{line}" if self.tty else f"{line}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self.done:
            self.stream.write("\n")
            self.stream.flush()


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
