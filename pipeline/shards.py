"""THE storage format (docs/format.md): atomic HDF5 shard writer, lazy reader, manifest I/O.

A processed dataset is a folder ``<data>/<dataset>/``::

    dataset.json            what was extracted (dataset, split, size, codec, classes, versions)
    manifest.csv            one row per listed video (see `ManifestRow`)
    frames/shard-00000.h5   RGB frames (and, with --store-residuals, residual frames) as JPEG streams
    flow/shard-00000.h5     optical flow, quantised uint8, lossless (written by ``iic-prep flow``)
    flow/manifest.csv       one row per video of the flow stage

Inside a shard every video is a group ``/videos/<slot>`` (slot = 5-digit position in the shard).
A JPEG stream ``name`` is three datasets: ``name`` (uint8, the concatenated JPEG files), ``name_offsets``
(int64, N+1 byte offsets) and ``name_crc32`` (uint32, the CRC32 of each frame's bytes, verified on every read;
absent in shards written before checksums), so a clip of T frames costs two small reads and T decodes.
The rows of the shard's videos are stored in the shard (attribute ``rows``) so that the manifest can be
rebuilt from complete shards alone. Shards are written under a temporary name and renamed when complete:
a file with the final name is always whole.

This module never imports torch: the training core reads through `VideoStore`.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import os
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import simplejpeg

from . import orphans

log = logging.getLogger(__name__)

FORMAT_NAME = "iic-shards"
FORMAT_VERSION = 1
RESIDUAL_ZERO = 128  # stored residual q = floor(d / 2) + 128 in [0, 255], d = x[t] - x[t-1] in [-255, 255]
MODALITIES = ("rgb", "res")


class FormatError(Exception):
    """The data folder is missing, incomplete or of another format version (one-line message)."""


class ChecksumError(FormatError):
    """Stored bytes that are not those written: a frame or flow pair whose CRC32 does not match."""


# ----------------------------------------------------------------------------------------------------------
# checksums: a CRC32 (zlib) per stored frame / flow pair, in ``<name>_crc32`` beside the stream (optional:
# shards written before them have none and are read unverified)

CRC_SUFFIX = "_crc32"


def checksums(items: Iterable) -> np.ndarray:
    """uint32 CRC32 of each bytes-like item (encoded frames; C-contiguous arrays)."""
    return np.array([zlib.crc32(x) for x in items], np.uint32)


# What a shard's content digest hashes of each video: the byte offsets and CRC32s of its stored frame streams
# (what `VideoStore.identity` reads of a frames shard) and, in a flow shard, the CRC32s of its flow pairs.
DIGEST_ITEMS = (*(f"{m}{suffix}" for m in MODALITIES for suffix in ("_offsets", CRC_SUFFIX)), f"flow{CRC_SUFFIX}")


def content_digest(videos: Iterable[tuple[str, dict[str, np.ndarray]]]) -> str:
    """Digest of a shard's content from ``(video id, {item: array})`` in slot order: for each video, each of
    its `DIGEST_ITEMS` (the size and checksum of every compressed frame). `ShardWriter.commit` stores it as
    the shard's ``content_digest`` attribute; `VideoStore.identity` recomputes it for shards without one."""
    h = hashlib.sha256()
    for video_id, arrays in videos:
        for name in DIGEST_ITEMS:
            if name in arrays:
                h.update(f"{video_id}/{name}".encode())
                h.update(np.ascontiguousarray(arrays[name], np.int64).tobytes())
    return h.hexdigest()


def bad_frames(data: bytes | memoryview, offsets: np.ndarray, crcs: np.ndarray) -> list[int]:
    """Positions ``i`` whose bytes ``data[offsets[i]:offsets[i+1]]`` do not have the CRC32 ``crcs[i]``."""
    view = memoryview(data)
    return [i for i in range(len(offsets) - 1) if zlib.crc32(view[offsets[i] : offsets[i + 1]]) != crcs[i]]


def bad_items(array: np.ndarray, crcs: np.ndarray) -> list[int]:
    """Positions ``i`` along the first axis whose ``array[i]`` bytes do not have the CRC32 ``crcs[i]``."""
    array = np.ascontiguousarray(array)
    return [i for i in range(len(array)) if zlib.crc32(array[i]) != crcs[i]]


def damaged_items(group: h5py.Group, item: str) -> list[int] | None:
    """Positions of the items of ``item`` in a video's group that fail their checksum: the frames of a JPEG
    stream (``item_offsets`` present) or the first-axis items of an array; None when ``item`` has no
    checksums (written before they existed: cannot be verified)."""
    if f"{item}{CRC_SUFFIX}" not in group:
        return None
    crcs = group[f"{item}{CRC_SUFFIX}"][()]
    if f"{item}_offsets" in group:
        return bad_frames(group[item][()].tobytes(), group[f"{item}_offsets"][()], crcs)
    return bad_items(group[item][()], crcs)


def shard_damage(path: Path) -> str | None:
    """Verify every checksum of a shard file (each stored JPEG stream's frames, each array's items): a one-line
    reason for the first damage found, or None when every checksummed byte is intact (streams written before
    checksums cannot be verified and pass). Reads the whole file."""
    try:
        with h5py.File(path, "r") as f:
            for slot, group in sorted(f.get("videos", {}).items()):
                for item in sorted(n[: -len(CRC_SUFFIX)] for n in group if n.endswith(CRC_SUFFIX)):
                    if bad := damaged_items(group, item):
                        return f"slot {slot} {item}: {len(bad)} item(s) fail their checksum (first: {bad[0]})"
    except (OSError, KeyError, ValueError) as err:
        return f"unreadable ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
    return None


# ----------------------------------------------------------------------------------------------------------
# residual quantisation


def quantize_residual(frame: np.ndarray, prev: np.ndarray | None) -> np.ndarray:
    """uint8 residual of ``frame`` against ``prev`` (uint8 arrays of one shape); ``prev=None`` -> all zero.

    q = floor(d / 2) + 128 with d = frame - prev in [-255, 255], so q is in [0, 255] without clipping;
    d = 0 is stored exactly (q = 128) and |d - dequantize(q)| <= 1 before any JPEG loss.
    """
    if prev is None:
        return np.full_like(frame, RESIDUAL_ZERO)
    d = np.subtract(frame, prev, dtype=np.int16)
    d >>= 1  # arithmetic shift = floor division by 2
    d += RESIDUAL_ZERO
    return d.astype(np.uint8)


def dequantize_residual(q: np.ndarray) -> np.ndarray:
    """int16 residual d in [-256, 254] from stored q (d = 2 (q - 128))."""
    return (q.astype(np.int16) - RESIDUAL_ZERO) * 2


# ----------------------------------------------------------------------------------------------------------
# JPEG streams


def encode_jpeg(frame: np.ndarray, quality: int, subsampling: str = "420") -> bytes:
    """(H, W, 3) uint8 RGB -> JPEG bytes; chroma ``420`` (as JPEG frame folders) or ``444``."""
    return simplejpeg.encode_jpeg(np.ascontiguousarray(frame), quality=quality, colorspace="RGB", colorsubsampling=subsampling)


def decode_jpegs(blob: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Concatenated JPEG bytes + (T+1) offsets relative to ``blob`` -> (T, H, W, 3) uint8 RGB."""
    buf = blob.tobytes() if not isinstance(blob, bytes) else blob
    first = simplejpeg.decode_jpeg(buf[offsets[0] : offsets[1]], colorspace="RGB")
    out = np.empty((len(offsets) - 1, *first.shape), np.uint8)
    out[0] = first
    for i in range(1, len(offsets) - 1):
        out[i] = simplejpeg.decode_jpeg(buf[offsets[i] : offsets[i + 1]], colorspace="RGB")
    return out


def size_spec(size: tuple[int, int] | int) -> list[int] | dict:
    """How dataset.json (and the shard settings) record the frame size: ``[H, W]`` for one size for every
    video, ``{"short_side": s}`` for aspect-preserving per-video sizes."""
    return {"short_side": int(size)} if isinstance(size, int) else [int(v) for v in size]


# ----------------------------------------------------------------------------------------------------------
# manifest


@dataclass(frozen=True, slots=True)
class ManifestRow:
    """One listed video. ``splits`` reads ``"1:train 2:test 3:train"``; ``status`` is ``ok`` or ``failed``;
    ``reason`` is a one-line failure reason, or a warning for an ok video (e.g. corrupt packets skipped)."""

    id: str
    path: str
    class_name: str
    label: int
    splits: str
    shard: str
    slot: int
    n_frames: int
    status: str
    reason: str = ""

    def in_list(self, split: int, kind: str) -> bool:
        return f"{split}:{kind}" in self.splits.split()

    @property
    def ok(self) -> bool:
        return self.status == "ok"


MANIFEST_FIELDS = tuple(f.name for f in dataclasses.fields(ManifestRow))


def stage_shard(shard: str, stage: str) -> str:
    """The shard of ``stage`` (``flow``, ``frames``) aligned with ``shard``: the same name and subfolder."""
    return f"{stage}/{shard.split('/', 1)[1]}"


def format_splits(splits: dict[int, str]) -> str:
    return " ".join(f"{s}:{kind}" for s, kind in sorted(splits.items()))


def write_manifest(path: Path, rows: Iterable[ManifestRow]) -> None:
    """Write rows (sorted by id) atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(MANIFEST_FIELDS)
        # attribute by attribute: dataclasses.astuple deep-copies every field (10x slower on 650k rows)
        writer.writerows([getattr(row, f) for f in MANIFEST_FIELDS] for row in sorted(rows, key=lambda r: r.id))
    os.replace(tmp, path)


def read_manifest(path: Path) -> list[ManifestRow]:
    if not path.exists():
        raise FormatError(f"no manifest at {path}: run `iic-prep extract` first")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        if tuple(header) != MANIFEST_FIELDS:
            raise FormatError(f"{path} has columns {header}, expected {list(MANIFEST_FIELDS)}")
        try:
            return [ManifestRow(vid, rel, cls, int(label), splits, shard, int(slot), int(n), status, reason)
                    for vid, rel, cls, label, splits, shard, slot, n, status, reason in reader]
        except ValueError as err:
            raise FormatError(f"{path} line {reader.line_num}: {err}") from None


def rows_to_json(rows: Sequence[ManifestRow]) -> str:
    return json.dumps([dataclasses.asdict(r) for r in rows])


def rows_from_json(text: str) -> list[ManifestRow]:
    return [ManifestRow(**r) for r in json.loads(text)]


# ----------------------------------------------------------------------------------------------------------
# writer


def slot_name(slot: int) -> str:
    return f"videos/{slot:05d}"


class ShardWriter:
    """Write one shard under a temporary name; `commit` renames it into place.

    Use as a context manager: leaving the block without `commit` (an exception, a kill) leaves at most
    a ``*.tmp`` file that the next run deletes.
    """

    def __init__(self, path: Path, attrs: dict) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = h5py.File(self.tmp, "w", libver="latest")
        self.file.attrs.update({"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **attrs})
        self.committed = False
        self.items: dict[int, dict[str, np.ndarray]] = {}  # slot -> offsets and CRC32s, for the content digest

    def add_stream(self, slot: int, name: str, encoded: Sequence[bytes]) -> int:
        """Store a list of encoded frames (JPEG) as one byte dataset plus offsets; returns bytes written."""
        group = self.file.require_group(slot_name(slot))
        offsets = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum([len(b) for b in encoded], out=offsets[1:])
        group.create_dataset(name, data=np.frombuffer(b"".join(encoded), np.uint8))
        crcs = checksums(encoded)
        group.create_dataset(f"{name}_offsets", data=offsets)
        group.create_dataset(f"{name}{CRC_SUFFIX}", data=crcs)
        self.items.setdefault(slot, {}).update({f"{name}_offsets": offsets, f"{name}{CRC_SUFFIX}": crcs})
        return int(offsets[-1])

    def add_array(self, slot: int, name: str, array: np.ndarray, compression: str | None = "gzip") -> int:
        """Store an array chunked by its first axis (one chunk per frame), losslessly compressed, with the CRC32
        of each frame's bytes."""
        group = self.file.require_group(slot_name(slot))
        chunks = (1, *array.shape[1:]) if array.shape[0] else None
        array = np.ascontiguousarray(array)
        group.create_dataset(
            name, data=array, chunks=chunks, compression=compression if chunks else None,
            shuffle=bool(chunks and compression),
        )
        crcs = checksums(array)
        group.create_dataset(f"{name}{CRC_SUFFIX}", data=crcs)
        self.items.setdefault(slot, {})[f"{name}{CRC_SUFFIX}"] = crcs
        return int(array.nbytes)

    def commit(self, rows: Sequence[ManifestRow]) -> None:
        self.file.attrs["rows"] = rows_to_json(rows)
        self.file.attrs["content_digest"] = content_digest(
            (r.id, self.items[r.slot]) for r in sorted(rows, key=lambda r: r.slot) if r.slot in self.items)
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

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        if not self.committed:
            self.file.close()
            self.tmp.unlink(missing_ok=True)


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


# ----------------------------------------------------------------------------------------------------------
# reader


def _first_line(err: Exception) -> str:
    lines = str(err).strip("'\"").splitlines()
    return lines[0] if lines else type(err).__name__


# VideoStore.identity per (resolved folder, flow, state stamp of its files), for this process.
_IDENTITIES: dict[tuple, str] = {}
# Shard files a VideoStore keeps open at once (per process: each loader worker has its own).
MAX_OPEN_SHARDS = 256  # UCF101 or HMDB51 at 64 videos a shard: 210 shards, all kept open


class VideoStore:
    """Read-only access to a processed dataset by video id; safe in DataLoader workers.

    HDF5 files are opened lazily on first use in each process (an open handle never crosses a fork:
    handles are keyed by pid and dropped when pickled for spawn).
    """

    def __init__(self, data_dir: Path, locking: bool | None = None) -> None:
        self.data_dir = Path(data_dir)
        meta = self.data_dir / "dataset.json"
        if not meta.exists():
            raise FormatError(f"no processed dataset at {self.data_dir} (dataset.json missing): run `iic-prep extract`")
        self.meta = json.loads(meta.read_text())
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise FormatError(f"{meta} is format version {self.meta.get('format_version')}, this reader reads {FORMAT_VERSION}")
        self.rows = read_manifest(self.data_dir / "manifest.csv")
        self.by_id = {r.id: r for r in self.rows}
        self.flow_rows = {r.id: r for r in read_manifest(self.flow_manifest_path)} if self.has_flow else {}
        self.locking = locking
        # open shards, least recently used first, and per open shard its videos' streams (offsets, CRC32s)
        self._files: OrderedDict[str, h5py.File] = OrderedDict()
        self._streams: dict[str, dict[tuple[str, str], tuple[h5py.Dataset, np.ndarray, np.ndarray | None] | None]] = {}
        self._pid = os.getpid()

    @property
    def flow_manifest_path(self) -> Path:
        return self.data_dir / "flow" / "manifest.csv"

    @property
    def has_flow(self) -> bool:
        return self.flow_manifest_path.exists()

    @property
    def size(self) -> tuple[int, int] | None:
        """(H, W) of every stored frame, or None when each video has its own size (`short_side`)."""
        size = self.meta["size"]
        return tuple(size) if isinstance(size, list) else None

    @property
    def short_side(self) -> int | None:
        """The short side of every video when the aspect ratio was kept (``--size S``), else None."""
        size = self.meta["size"]
        return int(size["short_side"]) if isinstance(size, dict) else None

    def frame_size(self, video_id: str) -> tuple[int, int]:
        """(H, W) of one video's stored frames (read from its first JPEG header when sizes vary)."""
        if self.size is not None:
            return self.size
        blob, offsets, _ = self._stream(self._row(video_id), "rgb")
        height, width, _, _ = simplejpeg.decode_jpeg_header(blob[offsets[0] : offsets[1]].tobytes())
        return int(height), int(width)

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    def fingerprint(self) -> str:
        """Hash of the manifest(s): changes whenever the extracted videos or their flow change."""
        h = hashlib.sha256()
        for p in (self.data_dir / "manifest.csv", self.flow_manifest_path):
            if p.exists():
                h.update(p.read_bytes())
        return h.hexdigest()[:16]

    def identity(self, flow: bool = False) -> str:
        """Hash of what a reader gets from this dataset, wherever its folder is: the manifest, the content
        settings of dataset.json (not the library versions), the byte offsets and CRC32s of every stored JPEG
        stream (the size and checksum of each compressed frame, through each shard's `content_digest`) and,
        with ``flow``, the flow manifest and settings.

        `fingerprint` hashes the manifest files only: two extractions of the same video list with other
        pixels (another synthetic seed, --size or --quality) have the same manifest, and adding flow later
        changes it. This tells them apart and ignores flow unless asked. Cost: one attribute read per shard
        (shards written before the attribute existed: one small read per video, 0.65 ms), computed once per
        process for each state of the files it reads (`_state_stamp`: a stat of each, no read).
        """
        key = (str(self.data_dir.resolve()), bool(flow and self.has_flow), self._state_stamp())
        if key not in _IDENTITIES:
            _IDENTITIES[key] = self._compute_identity(flow, self._shard_digest)
        return _IDENTITIES[key]

    def legacy_identity(self, flow: bool = False) -> str:
        """`identity` as versions before per-shard digests computed it (one running hash over every video's
        items): what checkpoints written by them recorded. Reads every video."""
        return self._compute_identity(flow, None)

    def _state_stamp(self) -> tuple:
        """(name, size, mtime) of the manifests, dataset.json and every shard holding an extracted video: any
        rewrite of what `identity` reads changes it (each stage publishes by replacing files)."""
        names = ["dataset.json", "manifest.csv", "flow/manifest.csv", "flow/flow.json"]
        names += sorted({r.shard for r in self.rows if r.ok})
        stamp = []
        for name in names:
            try:
                st = (self.data_dir / name).stat()
                stamp.append((name, st.st_size, st.st_mtime_ns))
            except FileNotFoundError:
                stamp.append((name, -1, -1))
        return tuple(stamp)

    def _items(self, row: ManifestRow) -> dict[str, np.ndarray]:
        """The `DIGEST_ITEMS` a stored video's group holds, read."""
        group = self._file(row.shard)[slot_name(row.slot)]
        return {name: group[name][()] for name in DIGEST_ITEMS if name in group}

    def digest_from_videos(self, shard: str, rows: Iterable[ManifestRow]) -> str:
        """`content_digest` of ``shard`` computed from the stored items of its videos ``rows`` (what
        `ShardWriter.commit` stored, if nothing changed since)."""
        return content_digest((r.id, self._items(r)) for r in sorted(rows, key=lambda r: r.slot))

    def _shard_digest(self, shard: str, rows: list[ManifestRow]) -> str:
        """The shard's stored `content_digest`, or the same digest computed from its videos (older shards)."""
        stored = self._file(shard).attrs.get("content_digest")
        return str(stored) if stored is not None else self.digest_from_videos(shard, rows)

    def _compute_identity(self, flow: bool, shard_digest: Callable[[str, list[ManifestRow]], str] | None) -> str:
        h = hashlib.sha256()
        h.update(json.dumps({k: v for k, v in self.meta.items() if k != "versions"}, sort_keys=True).encode())
        h.update((self.data_dir / "manifest.csv").read_bytes())
        by_shard: dict[str, list[ManifestRow]] = {}
        for row in sorted((r for r in self.rows if r.ok), key=lambda r: (r.shard, r.slot)):
            by_shard.setdefault(row.shard, []).append(row)
        for shard, rows in by_shard.items():  # in shard order
            try:
                if shard_digest is not None:
                    h.update(f"{shard}:{shard_digest(shard, rows)}".encode())
                else:  # the legacy form: every video's items in one running hash
                    for row in rows:
                        for name, array in self._items(row).items():
                            h.update(f"{row.id}/{name}".encode())
                            h.update(np.ascontiguousarray(array, np.int64).tobytes())
            except (OSError, KeyError) as err:
                raise FormatError(f"{self.data_dir}: cannot read {shard}: {err}") from None
        if flow and self.has_flow:
            h.update(self.flow_manifest_path.read_bytes())
            h.update(json.dumps(self.flow_meta.get("settings"), sort_keys=True).encode())
        return h.hexdigest()[:16]

    def ok_rows(self, split: int | None = None, kind: str | None = None) -> list[ManifestRow]:
        """Videos extracted OK, optionally only those that ``split``'s ``kind`` list (train/test) names."""
        return [r for r in self.rows if r.ok and (split is None or r.in_list(split, kind))]

    # -- file handles ------------------------------------------------------------------------------------
    def _file(self, rel: str) -> h5py.File:
        """The open shard ``rel``. At most `MAX_OPEN_SHARDS` stay open per process (least recently used closed
        first, with the streams read from it): a Kinetics-size dataset has ~10,000 shards, and each open HDF5
        file holds a descriptor and its metadata cache in every loader worker."""
        self._own_handles()
        f = self._files.get(rel)
        if f is not None:
            self._files.move_to_end(rel)
            return f
        while len(self._files) >= max(2, MAX_OPEN_SHARDS):  # 2: a clip's frames and flow shards stay open together
            old, handle = self._files.popitem(last=False)
            self._streams.pop(old, None)
            handle.close()
        kwargs = {} if self.locking is None else {"locking": self.locking}
        f = self._files[rel] = h5py.File(self.data_dir / rel, "r", **kwargs)
        return f

    def _own_handles(self) -> None:
        """Forked: never use the parent's handles (nor the streams read through them)."""
        if self._pid != os.getpid():
            self._files, self._streams, self._pid = OrderedDict(), {}, os.getpid()

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files, self._streams = OrderedDict(), {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_files": OrderedDict(), "_streams": {}}

    def _row(self, video_id: str, flow: bool = False) -> ManifestRow:
        table = self.flow_rows if flow else self.by_id
        row = table.get(video_id)
        if row is None:
            raise KeyError(f"video {video_id!r} is not in the {'flow ' if flow else ''}manifest of {self.data_dir}")
        if not row.ok:
            raise KeyError(f"video {video_id!r} failed {'flow' if flow else 'extraction'}: {row.reason}")
        return row

    # -- frames and residuals ----------------------------------------------------------------------------
    def n_frames(self, video_id: str) -> int:
        return self._row(video_id).n_frames

    def read(self, video_id: str, modality: str, start: int = 0, length: int | None = None) -> np.ndarray:
        """Frames ``start .. start+length-1`` of ``modality`` (``rgb`` or ``res``) -> (T, H, W, 3) uint8.

        ``res`` is the residual q (see `quantize_residual`; residual 0 is that of frame 0): read from the
        ``res`` stream when the shard stores one, otherwise derived from the stored RGB frames (one more
        frame decoded: the one before ``start``).
        """
        row = self._row(video_id)
        return self._read(row, (modality,), start, row.n_frames - start if length is None else length)[modality]

    def read_clip(self, video_id: str, modalities: Sequence[str], start: int, length: int) -> dict[str, np.ndarray]:
        """`read` for several of ``rgb``/``res`` at once: a derived residual reuses the RGB frames decoded for
        ``rgb`` (one JPEG decode per frame instead of two)."""
        return self._read(self._row(video_id), tuple(modalities), start, length)

    def _read(self, row: ManifestRow, modalities: tuple[str, ...], start: int, length: int) -> dict[str, np.ndarray]:
        unknown = set(modalities) - set(MODALITIES)
        if unknown:
            raise ValueError(f"unknown modality {sorted(unknown)}; stored are {MODALITIES}")
        if start < 0 or length < 1 or start + length > row.n_frames:
            raise IndexError(f"frames [{start}, {start + length}) outside video {row.id!r} of {row.n_frames} frames")
        out: dict[str, np.ndarray] = {}
        if "res" in modalities and self._stream(row, "res") is None:  # derive residuals from the frames
            first = max(start - 1, 0)
            rgb = self._decode(row, "rgb", first, start + length - first)
            out["res"] = quantize_residual(rgb[1:], rgb[:-1])
            if start == 0:
                out["res"] = np.concatenate([quantize_residual(rgb[:1], None), out["res"]])
            else:
                rgb = rgb[1:]
            if "rgb" in modalities:
                out["rgb"] = rgb
        for m in modalities:
            if m not in out:
                out[m] = self._decode(row, m, start, length)
        return out

    def _group(self, row: ManifestRow) -> h5py.Group:
        try:
            return self._file(row.shard)[slot_name(row.slot)]
        except (OSError, KeyError) as err:
            raise FormatError(f"{self.data_dir}: cannot read video {row.id!r} from {row.shard} slot {row.slot}: "
                              f"{_first_line(err)}") from None

    def _stream(self, row: ManifestRow, name: str) -> tuple[h5py.Dataset, np.ndarray, np.ndarray | None] | None:
        """(byte dataset, offsets, CRC32s or None) of a video's JPEG stream, the last two in memory, looked up
        once per process. The shard's offsets are the truth: a manifest that counts other frames is refused
        (every read goes through here)."""
        key = (row.id, name)
        self._own_handles()
        cached = self._streams.get(row.shard)
        if cached is not None and key in cached:
            self._files.move_to_end(row.shard)  # used: the last shard to close
        else:
            group = self._group(row)  # opens the shard (and may close the least recently used one)
            cached = self._streams.setdefault(row.shard, {})
            if name not in group:
                cached[key] = None
            else:
                offsets = group[f"{name}_offsets"][()]
                self._check_count(row, f"{name} frames", len(offsets) - 1)
                crcs = group[f"{name}{CRC_SUFFIX}"][()] if f"{name}{CRC_SUFFIX}" in group else None
                if crcs is not None and len(crcs) != len(offsets) - 1:
                    raise ChecksumError(f"{self.data_dir}: {row.shard} video {row.id!r}: {len(crcs)} {name} checksums "
                                        f"for {len(offsets) - 1} frames")
                cached[key] = (group[name], offsets, crcs)
        return cached[key]

    def _corrupt(self, row: ManifestRow, what: str, index: int, stage: str) -> ChecksumError:
        return ChecksumError(f"{self.data_dir}: {row.shard} video {row.id!r} {what} {index}: checksum mismatch, the "
                             f"stored bytes are corrupt (`iic-prep {stage} --repair` rewrites the shard)")

    def _check_count(self, row: ManifestRow, what: str, stored: int) -> None:
        if stored != row.n_frames:
            manifest = "flow manifest" if what == "flow pairs" else "manifest"
            raise FormatError(f"{self.data_dir}: {row.shard} holds {stored} {what} of video {row.id!r}, its {manifest} "
                              f"says {row.n_frames}: the {manifest} does not belong to these shards "
                              "(`iic-prep check`; re-run the stage to rebuild it)")

    def _decode(self, row: ManifestRow, name: str, start: int, length: int) -> np.ndarray:
        """Frames ``start .. start+length-1`` of a stream, each checked against its CRC32 before decoding."""
        blob, offsets, crcs = self._stream(row, name)
        offsets = offsets[start : start + length + 1]
        data = blob[offsets[0] : offsets[-1]].tobytes()
        offsets = offsets - offsets[0]
        if crcs is not None:
            bad = bad_frames(data, offsets, crcs[start : start + length])
            if bad:
                raise self._corrupt(row, f"{name} frame", start + bad[0], "extract")
        return decode_jpegs(data, offsets)

    def frames(self, video_id: str, start: int = 0, length: int | None = None) -> np.ndarray:
        return self.read(video_id, "rgb", start, length)

    def residuals(self, video_id: str, start: int = 0, length: int | None = None) -> np.ndarray:
        return self.read(video_id, "res", start, length)

    # -- flow ----------------------------------------------------------------------------------------------
    def n_flow(self, video_id: str) -> int:
        """Number of stored flow pairs: n_frames - 1 (pair t is the motion from frame t to t+1)."""
        return self._row(video_id, flow=True).n_frames

    def flow(self, video_id: str, start: int = 0, length: int | None = None) -> np.ndarray:
        """Flow pairs ``start .. start+length-1`` -> (T, 2, H, W) uint8 (channel 0 = u, 1 = v), quantised
        with the bound in ``flow_bound``; pair t moves frame t to frame t+1."""
        row = self._row(video_id, flow=True)
        length = row.n_frames - start if length is None else length
        if start < 0 or length < 1 or start + length > row.n_frames:
            raise IndexError(f"flow pairs [{start}, {start + length}) outside video {video_id!r} of {row.n_frames} pairs")
        group = self._group(row)
        self._check_count(row, "flow pairs", group["flow"].shape[0])
        try:
            pairs = group["flow"][start : start + length]
        except OSError as err:  # a chunk that does not inflate: find it
            for t in range(start, start + length):
                try:
                    group["flow"][t]
                except OSError:
                    raise FormatError(f"{self.data_dir}: {row.shard} video {row.id!r} flow pair {t}: unreadable, the "
                                      f"stored bytes are corrupt ({_first_line(err)}; `iic-prep flow --repair` "
                                      "rewrites the shard)") from None
            raise
        if f"flow{CRC_SUFFIX}" in group:
            bad = bad_items(pairs, group[f"flow{CRC_SUFFIX}"][start : start + length])
            if bad:
                raise self._corrupt(row, "flow pair", start + bad[0], "flow")
        return pairs

    @property
    def flow_meta(self) -> dict:
        path = self.data_dir / "flow" / "flow.json"
        if not path.exists():
            raise FormatError(f"no flow at {self.data_dir}: run `iic-prep flow` first")
        return json.loads(path.read_text())
