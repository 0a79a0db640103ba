"""Several training runs side by side on one CPU machine (the demo's methods, a benchmark's seeds).

The tiny presets' convolutions scale poorly over intra-op threads: on 2 cores one run trains 1.54x faster
with 2 threads than with 1, but two one-thread runs side by side do 1.39x the steps of one two-thread run
(1.26x end to end; BENCHMARKS.md, "Several runs at once"). So on CPU `train_all` trains each run with one thread, ``jobs`` at a
time, in joblib's (loky) worker processes. A run's weights depend on its own config only (its seed and its
thread count, `model/train.py`), never on which runs train beside it, how many at a time, or in which order:
the same runs give bit-identical checkpoints with ``jobs`` 1 or 2. Each worker process ends with the process
that started it (`pipeline/orphans.py`); a killed sweep resumes every unfinished run from its ``last.pt``.
Hand the runs longest first: workers take them in order, so the long one does not start last.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from joblib import Parallel, delayed

from ..pipeline import orphans
from .config import TrainConfig
from .train import train


def cpu_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _train_one(i: int, cfg: TrainConfig) -> tuple[int, Path, float]:
    t0 = time.perf_counter()
    final = train(cfg, resume=(Path(cfg.out) / "last.pt").exists(), progress=False)
    return i, final, time.perf_counter() - t0


def train_all(cfgs: Sequence[TrainConfig], jobs: int,
              done: Callable[[TrainConfig, Path, float], None] | None = None) -> list[Path]:
    """Train every config whose ``final.pt`` does not exist yet (an interrupted one resumes), ``jobs`` at a
    time in worker processes (``jobs`` <= 1: one after another in this process); returns every final
    checkpoint, in the order of ``cfgs``. ``done(cfg, final, seconds)`` is called as each run ends."""
    finals = [Path(c.out) / "final.pt" for c in cfgs]
    pending = [i for i, f in enumerate(finals) if not f.exists()]
    if jobs <= 1 or len(pending) <= 1:
        results: Iterator = (_train_one(i, cfgs[i]) for i in pending)
    else:
        tasks = (delayed(orphans.guarded)(_train_one, os.getpid(), i, cfgs[i]) for i in pending)
        results = Parallel(n_jobs=min(jobs, len(pending)), return_as="generator_unordered")(tasks)
    for i, final, seconds in results:
        finals[i] = final
        if done is not None:
            done(cfgs[i], final, seconds)
    return finals
