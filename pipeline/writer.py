"""The atomic shard writer: a shard is written under a temporary name and renamed when complete, so a file
with the final name is always whole (docs/format.md).

A write that fails for want of space or permission (a full disk, a read-only folder) ends in a
`StorageError`: one line naming the folder and what to do, with the shard's temporary file removed and the
complete shards kept, so that a rerun resumes. It crosses a worker process boundary as it is (joblib
re-raises it in the run's process with its message).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import h5py
import numpy as np

from . import orphans
from .format import (
    CRC_SUFFIX,
    FORMAT_NAME,
    FORMAT_VERSION,
    ManifestRow,
    checksums,
    content_digest,
    rows_from_json,
    rows_to_json,
    slot_name,
)
from .storage import storage_errors


def shard_estimate(folder: Path, written: int = 0, videos: int = 0, planned: int | None = None) -> int | None:
    """Bytes the next shard of ``folder`` is expected to take: the largest complete shard there, else the
    shard being written scaled from its ``videos`` so far (``written`` bytes) to its ``planned`` videos."""
    try:
        sizes = [p.stat().st_size for p in Path(folder).glob("shard-*.h5")]
    except OSError:  # an unreadable folder: estimate from the shard being written
        sizes = []
    if sizes:
        return max(sizes)
    if written and videos:
        return -(-written * max(planned or videos, videos) // videos)
    return written or None


class ShardWriter:
    """Write one shard under a temporary name; `commit` renames it into place.

    Use as a context manager: leaving the block without `commit` (an exception, a kill) leaves at most
    a ``*.tmp`` file that the next run deletes (none after an exception). A write that fails for want of
    space or permission raises `StorageError`; ``planned`` (the videos the shard will hold) scales its
    estimate of the space the shard needs.
    """

    def __init__(self, path: Path, attrs: dict, planned: int | None = None) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        self.planned = planned
        self.attempted: dict[int, int] = {}  # slot -> bytes handed to HDF5 (the basis of the space estimate)
        self.committed = False
        # slot -> offsets and CRC32s, for the content digest
        self.items: dict[int, dict[str, np.ndarray]] = {}
        self.file: h5py.File | None = None
        try:
            with self._writing():
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.file = h5py.File(self.tmp, "w", libver="latest")
                self.file.attrs.update({"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **attrs})
        except OSError:
            self._discard()  # no `with` block yet to do it
            raise

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        with storage_errors(
            self.path.parent,
            lambda: shard_estimate(
                self.path.parent, sum(self.attempted.values()), len(self.attempted), self.planned
            ),
        ):
            yield

    def add_stream(self, slot: int, name: str, encoded: Sequence[bytes]) -> int:
        """Store a list of encoded frames (JPEG) as one byte dataset plus offsets; returns bytes written."""
        offsets = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum([len(b) for b in encoded], out=offsets[1:])
        self.attempted[slot] = self.attempted.get(slot, 0) + int(offsets[-1])
        with self._writing():
            group = self.file.require_group(slot_name(slot))
            group.create_dataset(name, data=np.frombuffer(b"".join(encoded), np.uint8))
            crcs = checksums(encoded)
            group.create_dataset(f"{name}_offsets", data=offsets)
            group.create_dataset(f"{name}{CRC_SUFFIX}", data=crcs)
        self.items.setdefault(slot, {}).update({f"{name}_offsets": offsets, f"{name}{CRC_SUFFIX}": crcs})
        return int(offsets[-1])

    def add_array(self, slot: int, name: str, array: np.ndarray, compression: str | None = "gzip") -> int:
        """Store an array chunked by its first axis (one chunk per frame), losslessly compressed, with the
        CRC32 of each frame's bytes."""
        chunks = (1, *array.shape[1:]) if array.shape[0] else None
        array = np.ascontiguousarray(array)
        self.attempted[slot] = self.attempted.get(slot, 0) + int(array.nbytes)
        with self._writing():
            group = self.file.require_group(slot_name(slot))
            group.create_dataset(
                name,
                data=array,
                chunks=chunks,
                compression=compression if chunks else None,
                shuffle=bool(chunks and compression),
            )
            crcs = checksums(array)
            group.create_dataset(f"{name}{CRC_SUFFIX}", data=crcs)
        self.items.setdefault(slot, {})[f"{name}{CRC_SUFFIX}"] = crcs
        return int(array.nbytes)

    def commit(self, rows: Sequence[ManifestRow]) -> None:
        with self._writing():
            self.file.attrs["rows"] = rows_to_json(rows)
            self.file.attrs["content_digest"] = content_digest(
                (r.id, self.items[r.slot]) for r in sorted(rows, key=lambda r: r.slot) if r.slot in self.items
            )
            self.file.flush()
            self.file.close()
            fd = os.open(self.tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            orphans.exit_if_orphaned()  # a worker whose run died publishes nothing
            os.replace(self.tmp, self.path)
        self.committed = True

    def _discard(self) -> None:
        """Close and delete the temporary file (a failed or abandoned shard). Called while an error is on its
        way out: a second one here (closing flushes what a failed write left; a read-only folder refuses even
        an unlink) must not replace it, and a temporary file left behind is deleted by the next run."""
        if self.file is not None:
            with contextlib.suppress(OSError):
                self.file.close()
        with contextlib.suppress(OSError):
            self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        if not self.committed:
            self._discard()


def shard_rows(path: Path) -> list[ManifestRow] | None:
    """Rows stored in a complete shard, or None when the file is missing or unreadable."""
    try:
        with h5py.File(path, "r") as f:
            return rows_from_json(f.attrs["rows"])
    except (OSError, KeyError, ValueError):
        return None


def remove_stale_temporaries(folder: Path) -> int:
    """Delete ``*.tmp`` files left by a killed run (call only while holding the data lock)."""
    stale = list(Path(folder).rglob("*.tmp"))  # rglob matches dot files too; shards may sit in subfolders
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)
