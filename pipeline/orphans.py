"""Worker processes end with the run that started them.

A ``kill -9`` of ``iic-prep extract`` or ``flow`` used to leave its loky workers running (reparented to
PID 1): they finished the shards already handed to them, without the run's folder lock, beside a resumed run.
Every task sent to a local worker process is wrapped by `guarded`, which starts (once per process) a daemon
thread that ends the process as soon as its parent is no longer the run's process, and `ShardWriter.commit`
asks `exit_if_orphaned` right before it publishes a shard, so a worker cannot publish after its run is gone.
Nothing happens in the run's own process (tasks run in-process with one worker) or on a Dask cluster (its
workers belong to the cluster, not to the run). `quiet_leak_guard` keeps loky's replacement of a worker that
outgrew its leak guard from alarming a user: nothing is lost then.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

EXIT_ORPHANED = 70  # a worker whose run died exits with this status (EX_SOFTWARE); nobody is left to read it
POLL_S = 0.1

_parent: int | None = None  # the run's PID, set in a worker process by its first guarded task
_lock = threading.Lock()


def orphaned() -> bool:
    """True in a worker process whose run (its parent when it was started) has died."""
    return _parent is not None and os.getppid() != _parent


def exit_if_orphaned() -> None:
    if orphaned():
        os._exit(EXIT_ORPHANED)  # no cleanup: the run's lock is gone and a resumed run owns the folder now


def _watch() -> None:
    while True:
        exit_if_orphaned()
        time.sleep(POLL_S)


def watch_parent(parent: int) -> None:
    """In a worker process started by ``parent``: end the process within `POLL_S` of the parent's death."""
    global _parent
    if os.getpid() == parent:
        return
    with _lock:
        if _parent is None:
            _parent = parent
            threading.Thread(target=_watch, name="iic-orphan-guard", daemon=True).start()


def guarded(fn: Callable[..., Any], parent: int, *args: Any) -> Any:
    """``fn(*args)`` in a worker that watches ``parent`` (the run's PID, taken when the task was made)."""
    watch_parent(parent)
    exit_if_orphaned()
    return fn(*args)


@contextmanager
def quiet_leak_guard() -> Iterator[None]:
    """Silence loky's leak-guard warning ("A worker stopped while some jobs were given to the executor") in
    the block. loky replaces a worker whose memory grew by 300 MB since its first task and warns if tasks are
    waiting; decoding an HD video or training a run grows a worker that much by design. The task had ended and
    returned its result, and the replacement takes the next one: nothing is lost, so the warning would only
    alarm."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="A worker stopped while some jobs were given", category=UserWarning
        )
        yield
