"""Several training runs side by side on one CPU machine (the demo's methods, a benchmark's seeds).

The tiny presets' convolutions scale poorly over intra-op threads: on 2 cores one run trains 1.54x faster
with 2 threads than with 1, but two one-thread runs side by side do 1.39x the steps of one two-thread run
(1.26x end to end; BENCHMARKS.md, "Runs side by side"). So on CPU `train_all` trains each run with one
thread, ``jobs`` at a time, in joblib's (loky) worker processes. A run's weights depend on its own config
only (its seed and its thread count, `model/train.py`), never on which runs train beside it, how many at a
time, or in which order: the same runs give bit-identical checkpoints with ``jobs`` 1 or 2. Each worker
process ends with the process that started it (`pipeline/orphans.py`); a killed sweep resumes every
unfinished run from its ``last.pt``. Hand the runs longest first: workers take them in order, so the long one
does not start last. `side_by_side` runs any picklable tasks this way; a `TrainTask` can carry work that
needs its run's weights (`iic demo` computes each run's retrieval features in the worker that trained it, so
no core idles while the longest run ends).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from joblib import Parallel, delayed

from ...pipeline import orphans
from ..config import TrainConfig
from .train import train

T = TypeVar("T")


def cpu_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def side_by_side(tasks: Sequence[Callable[[], T]], jobs: int) -> Iterator[tuple[int, T, float]]:
    """Run every task (a picklable callable without arguments), ``jobs`` at a time in worker processes that
    end with this one (``jobs`` <= 1 or a single task: one after another here); yields ``(index, result,
    seconds)`` as each task ends. Workers take the tasks in the order given."""
    if jobs <= 1 or len(tasks) <= 1:
        yield from (_timed(i, t) for i, t in enumerate(tasks))
        return
    calls = (delayed(orphans.guarded)(_timed, os.getpid(), i, t) for i, t in enumerate(tasks))
    with orphans.quiet_leak_guard():  # a training run grows its worker past loky's leak guard by design
        yield from Parallel(n_jobs=min(jobs, len(tasks)), return_as="generator_unordered")(calls)


def _timed(i: int, task: Callable[[], T]) -> tuple[int, T, float]:
    t0 = time.perf_counter()
    result = task()
    return i, result, time.perf_counter() - t0


@dataclass(frozen=True)
class TrainTask:
    """Train (or resume) one run, then call ``then(cfg, final)`` in the same process if given: work that needs
    the finished weights (e.g. the evaluation's features) runs beside the other runs' training instead of
    after all of them. Returns the final checkpoint."""

    cfg: TrainConfig
    then: Callable[[TrainConfig, Path], object] | None = None

    def __call__(self) -> Path:
        final = Path(self.cfg.out) / "final.pt"
        if not final.exists():
            final = train(self.cfg, resume=(Path(self.cfg.out) / "last.pt").exists(), progress=False)
        if self.then is not None:
            self.then(self.cfg, final)
        return final


def train_all(
    cfgs: Sequence[TrainConfig], jobs: int, done: Callable[[TrainConfig, Path, float], None] | None = None
) -> list[Path]:
    """Train every config whose ``final.pt`` does not exist yet (an interrupted one resumes), ``jobs`` at a
    time in worker processes (``jobs`` <= 1: one after another in this process); returns every final
    checkpoint, in the order of ``cfgs``. ``done(cfg, final, seconds)`` is called as each run ends."""
    finals = [Path(c.out) / "final.pt" for c in cfgs]
    pending = [i for i, f in enumerate(finals) if not f.exists()]
    for j, final, seconds in side_by_side([TrainTask(cfgs[i]) for i in pending], jobs):
        finals[pending[j]] = final
        if done is not None:
            done(cfgs[pending[j]], final, seconds)
    return finals
