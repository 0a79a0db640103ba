"""Run shard tasks over joblib (loky processes) or a Dask cluster, with a progress bar.

A task is "one shard": idempotent, writes its own file, returns a `TaskReport`. The same code runs
locally or on a cluster: ``--backend dask --scheduler ADDR`` only swaps joblib's backend
(``joblib.parallel_config(backend="dask")`` with a ``dask.distributed.Client``); the shard files must
then live on a filesystem every worker sees.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from joblib import Parallel, delayed, parallel_config
from tqdm import tqdm

from . import orphans
from .names import BACKENDS

log = logging.getLogger(__name__)

EXIT_SOME_FAILED = 3  # documented exit status: the run finished but some listed videos failed


@dataclass(frozen=True)
class ParallelConfig:
    workers: int = 1
    backend: str = "loky"
    scheduler: str | None = None  # dask scheduler address, e.g. tcp://127.0.0.1:8786


@dataclass
class TaskReport:
    """What a shard task did; ``items`` are videos, ``units`` frames (or flow pairs)."""

    shard: str
    items: int
    units: int
    bytes: int
    rows: list = field(default_factory=list)


@dataclass(frozen=True)
class StageSummary:
    """What a run of a stage (extract, flow) did; ``units`` are frames or flow pairs."""

    unit: str
    videos: int
    ok: int
    units: int
    bytes: int
    seconds: float
    shards_written: int
    shards_kept: int
    folder: Path
    failures: tuple[tuple[str, str], ...]  # (id, one-line reason)

    @classmethod
    def from_rows(cls, rows: list, **kw) -> StageSummary:
        """Counts from the stage's manifest rows (``n_frames`` holds the units)."""
        failures = tuple((r.id, r.reason) for r in sorted(rows, key=lambda r: r.id) if not r.ok)
        return cls(
            videos=len(rows),
            ok=len(rows) - len(failures),
            units=sum(r.n_frames for r in rows),
            failures=failures,
            **kw,
        )

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def exit_code(self) -> int:
        return EXIT_SOME_FAILED if self.failures else 0

    def head(self) -> str:
        """The summary line (what the run did)."""
        return (
            f"videos: {self.videos} ({self.ok} ok, {self.failed} failed)   {self.unit}: {self.units}   "
            f"shards: {self.shards_written} written, {self.shards_kept} kept   "
            f"on disk: {self.bytes / 2**20:.1f} MiB   time: {self.seconds:.1f} s   -> {self.folder}"
        )

    def failure_lines(self, show: int = 20) -> list[str]:
        """The first ``show`` failures, one line each (all of them are in the manifest)."""
        more = (
            [
                f"  ... and {self.failed - show} more failed (reasons in {self.folder}/manifest.csv, "
                f"shares in `iic-prep info`)"
            ]
            if self.failed > show
            else []
        )
        return [f"  failed {vid}: {reason}" for vid, reason in self.failures[:show]] + more

    def lines(self, show: int = 20) -> list[str]:
        """The summary line, then the first ``show`` failures."""
        return [self.head()] + self.failure_lines(show)


def threads_per_worker(workers: int) -> int:
    """Decoder threads for each of ``workers`` processes, so that together they fill the cores once."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def run_tasks(
    fn: Callable[..., TaskReport],
    tasks: Sequence[tuple],
    cfg: ParallelConfig,
    total_items: int,
    unit: str = "frames",
    desc: str = "",
) -> Iterator[TaskReport]:
    """Yield the report of each task as it completes, updating a bar with items/s and ``unit``/s."""
    with ExitStack() as stack:
        if cfg.backend == "dask":
            from dask.distributed import Client  # optional dependency, imported only when asked for

            client = stack.enter_context(Client(cfg.scheduler, set_as_default=True))
            log.info(
                "dask cluster %s with %d workers", cfg.scheduler, len(client.scheduler_info()["workers"])
            )
            stack.enter_context(parallel_config(backend="dask"))
            n_jobs = -1
        elif cfg.backend == "loky":
            n_jobs = cfg.workers
        else:
            raise ValueError(f"unknown backend {cfg.backend!r}; choose one of {', '.join(BACKENDS)}")
        stack.enter_context(orphans.quiet_leak_guard())
        log.debug(
            "%s: %d task(s) of %d video(s) on %s with %s worker(s)",
            desc or fn.__name__,
            len(tasks),
            total_items,
            cfg.backend,
            "the cluster's" if n_jobs == -1 else n_jobs,
        )
        bar = stack.enter_context(
            tqdm(total=total_items, unit="video", desc=desc, smoothing=0.1, dynamic_ncols=True)
        )
        start, units = time.perf_counter(), 0
        if n_jobs == 1 and cfg.backend == "loky":
            results = (fn(*t) for t in tasks)  # in-process: simpler tracebacks, no pickling
        else:
            if cfg.backend == "loky":  # local worker processes end with this process (pipeline/orphans.py)
                tasks = [(fn, os.getpid(), *t) for t in tasks]
                fn = orphans.guarded
            results = Parallel(n_jobs=n_jobs, return_as="generator_unordered")(delayed(fn)(*t) for t in tasks)
        for report in results:
            units += report.units
            bar.update(report.items)
            bar.set_postfix_str(
                f"{units / max(time.perf_counter() - start, 1e-9):.0f} {unit}/s", refresh=False
            )
            yield report
