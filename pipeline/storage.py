"""What a failed write says: a full disk, a read-only folder or a denied permission ends a stage in one
`StorageError` line that names the place, what was kept and what to do, instead of the system's (or HDF5's)
error. Shared by the shard writers and by the training core's checkpoints and evaluation outputs: it knows
nothing of what is written. Never imports torch.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

SHARDS_KEPT = "shards so far are kept"
RERUN = "rerun to resume"

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
READ_ONLY = (errno.EROFS,)
DENIED = (errno.EACCES, errno.EPERM)
_HDF5_ERRNO = re.compile(r"errno = (\d+)")  # HDF5 writes the failed system call's errno into its message


class StorageError(OSError):
    """A stage's output cannot be written: no space left, a read-only folder, permission denied. The message
    is one line naming the folder and what to do; what was complete is kept."""


def write_errno(err: OSError) -> int | None:
    """The errno of a failed write: the exception's own, or the one HDF5 names in its message."""
    if err.errno is not None:
        return err.errno
    found = _HDF5_ERRNO.search(str(err))
    return int(found.group(1)) if found else None


def size_text(n: float) -> str:
    """A byte count as a message shows it: ``850 kB``, ``4.2 MB``, ``37 MB``, ``12 GB``."""
    if n < 1e6:
        return f"{n / 1e3:.0f} kB"
    if n < 10e6:
        return f"{n / 1e6:.1f} MB"
    return f"{n / 1e6:.0f} MB" if n < 10e9 else f"{n / 1e9:.0f} GB"


def _free_bytes(folder: Path) -> int | None:
    """Free bytes for this user on the filesystem of ``folder`` (or of its nearest existing parent)."""
    for place in (folder, *folder.parents):
        try:
            return shutil.disk_usage(place).free
        except OSError:  # not created yet: ask its parent
            continue
    return None


def storage_error(
    err: OSError,
    folder: Path,
    needed: int | None = None,
    what: str = "the next shard",
    kept: str = SHARDS_KEPT,
    then: str = RERUN,
) -> StorageError | None:
    """The `StorageError` for ``err`` raised while writing into ``folder`` when it is a want of space
    (``needed``: the bytes ``what`` is expected to take, if known) or of permission; None for any other
    error, which is not about the place. ``kept`` says what is safe, ``then`` what to do after the remedy."""
    if isinstance(err, StorageError):
        return err
    code = write_errno(err)
    folder = Path(folder)
    if code in NO_SPACE:
        free = _free_bytes(folder)
        room = [f"{size_text(free)} free"] if free is not None else []
        room += [f"~{size_text(needed)} needed for {what}"] if needed else []
        full = "no space left" if code == errno.ENOSPC else "disk quota exceeded"
        return StorageError(
            f"{full} on {folder}{': ' + ', '.join(room) if room else ''} ({kept}; free space and {then})"
        )
    if code in READ_ONLY:
        return StorageError(
            f"cannot write to {folder}: read-only file system ({kept}; make it writable or choose another "
            f"folder, and {then})"
        )
    if code in DENIED:
        return StorageError(
            f"cannot write to {folder}: permission denied ({kept}; give this user write access or choose "
            f"another folder, and {then})"
        )
    return None


@contextlib.contextmanager
def storage_errors(
    folder: Path,
    needed: Callable[[], int | None] = lambda: None,
    within: Path | None = None,
    what: str = "the next shard",
    kept: str = SHARDS_KEPT,
    then: str = RERUN,
) -> Iterator[None]:
    """Raise a failed write in the block (`storage_error`) as a `StorageError` naming ``folder``. With
    ``within`` (a block that also reads elsewhere), only errors of a named file under ``within`` are
    translated, and the folder named is that file's."""
    try:
        yield
    except OSError as err:
        if within is not None:
            name = getattr(err, "filename", None)
            if name is None or not Path(os.path.abspath(name)).is_relative_to(os.path.abspath(within)):
                raise
            folder = Path(name).parent
        translated = storage_error(err, folder, needed(), what, kept, then)
        if translated is None or translated is err:
            raise
        raise translated from None
