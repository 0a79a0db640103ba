"""THE storage format (docs/format.md): constants, checksums, the content digest, residual quantisation, the
JPEG codec, manifest rows and their I/O, slot names.

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
rebuilt from complete shards alone. `pipeline/writer.py` writes shards atomically, `pipeline/reader.py`
reads them.

This module never imports torch.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import simplejpeg

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
DIGEST_ITEMS = (
    *(f"{m}{suffix}" for m in MODALITIES for suffix in ("_offsets", CRC_SUFFIX)),
    f"flow{CRC_SUFFIX}",
    f"camera{CRC_SUFFIX}",  # a camera shard's (`iic-prep camera`)
)


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
    """Verify every checksum of a shard file (each stored JPEG stream's frames, each array's items): a
    one-line reason for the first damage found, or None when every checksummed byte is intact (streams written
    before checksums cannot be verified and pass). Reads the whole file."""
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
    return quantize_difference(np.subtract(frame, prev, dtype=np.int16))


def quantize_difference(d: np.ndarray) -> np.ndarray:
    """uint8 q = floor(d / 2) + 128 of an int16 difference d in [-255, 255]."""
    return ((d >> 1) + RESIDUAL_ZERO).astype(np.uint8)  # arithmetic shift = floor division by 2


# The residual after the camera's motion (``res-aligned``) keeps a pixel's change only where it exceeds
# ALIGNED_DEAD_ZONE times the median change of its frame (model/data/align.py,
# `VideoStore.aligned_residuals`).
# Warping frame t-1 onto frame t cancels the camera's motion up to interpolation and compression: what is
# left of a moving textured background is a faint image of that texture over the whole frame (measured on
# shaking synthetic videos: 1.7 grey levels on the background against 11.7 on the moving objects, the same
# with the true motion as with the estimate), enough for a network to match views by the background again.
# Most pixels of a frame are background, so the median change is the frame's own misregistration; 5 times it
# leaves 0.02-0.07 grey levels on the background and 9.1-9.3 on the objects (shake, pan, handheld). With a
# still camera the median is 0 and the residual is unchanged. The stabilised clip (``rgb-stable``) holds its
# background to its middle frame's pixels with the same factor (model/data/align.py). BENCHMARKS.md, "Camera
# motion".
ALIGNED_DEAD_ZONE = 5.0


def dead_zone(d: np.ndarray, factor: float = ALIGNED_DEAD_ZONE) -> np.ndarray:
    """``d`` (H, W, C) with every pixel whose largest |change| over channels is at most ``factor`` times the
    median of that over the frame set to 0 (a copy)."""
    magnitude = np.abs(d).max(axis=-1)
    return np.where((magnitude > factor * np.median(magnitude))[..., None], d, 0).astype(d.dtype)


# The camera's part of a flow field (views ``flow-u-aligned`` / ``flow-v-aligned``: model/data/views.py on the
# device, `camera_flow` here for `iic-prep show`): the affine field fitted to the flow by least squares, then
# refitted FLOW_FIT_ROUNDS times on the pixels within FLOW_FIT_INLIER times the median distance of the fit.
FLOW_FIT_ROUNDS = 3
FLOW_FIT_INLIER = 2.5


def camera_flow(flow: np.ndarray) -> np.ndarray:
    """(H, W, 2) float: the affine field ``a + B (x, y)`` fitted robustly to one flow field (x, y in [-1, 1]
    across the frame, as the device's `camera_flow` over a crop)."""
    h, w, _ = flow.shape
    ys, xs = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    X = np.stack([np.ones_like(xs), xs, ys], axis=-1).reshape(-1, 3)
    f = flow.reshape(-1, 2).astype(np.float64)
    keep = np.ones(len(f), bool)
    for _ in range(FLOW_FIT_ROUNDS + 1):
        beta = np.linalg.solve(X[keep].T @ X[keep] + 1e-6 * np.eye(3), X[keep].T @ f[keep])
        fitted = X @ beta
        distance = np.linalg.norm(f - fitted, axis=-1)
        keep = distance <= FLOW_FIT_INLIER * max(float(np.median(distance)), 1e-6)
    return fitted.reshape(h, w, 2)


def dequantize_residual(q: np.ndarray) -> np.ndarray:
    """int16 residual d in [-256, 254] from stored q (d = 2 (q - 128))."""
    return (q.astype(np.int16) - RESIDUAL_ZERO) * 2


# ----------------------------------------------------------------------------------------------------------
# JPEG streams


def encode_jpeg(frame: np.ndarray, quality: int, subsampling: str = "420") -> bytes:
    """(H, W, 3) uint8 RGB -> JPEG bytes; chroma ``420`` (as JPEG frame folders) or ``444``."""
    return simplejpeg.encode_jpeg(
        np.ascontiguousarray(frame), quality=quality, colorspace="RGB", colorsubsampling=subsampling
    )


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


def frames_digest(rows: Sequence[ManifestRow], settings: str) -> str:
    """Identity of a frames shard for the stages computed from its frames (flow, camera): its rows (id, slot,
    frame count, status) and its ``settings`` attribute (`frames_settings`: a re-extract at another size or
    quality changes the frames without changing the rows)."""
    text = "\n".join([settings] + [f"{r.id},{r.slot},{r.n_frames},{r.status}" for r in rows])
    return hashlib.sha1(text.encode()).hexdigest()


def frames_settings(path: Path) -> str:
    """The ``settings`` attribute of the frames shard at ``path`` ("" when it cannot be read)."""
    try:
        with h5py.File(path, "r") as f:
            return str(f.attrs.get("settings", ""))
    except OSError:
        return ""


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
        writer.writerows(
            [getattr(row, f) for f in MANIFEST_FIELDS] for row in sorted(rows, key=lambda r: r.id)
        )
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
            return [
                ManifestRow(vid, rel, cls, int(label), splits, shard, int(slot), int(n), status, reason)
                for vid, rel, cls, label, splits, shard, slot, n, status, reason in reader
            ]
        except ValueError as err:
            raise FormatError(f"{path} line {reader.line_num}: {err}") from None


def rows_to_json(rows: Sequence[ManifestRow]) -> str:
    return json.dumps([dataclasses.asdict(r) for r in rows])


def rows_from_json(text: str) -> list[ManifestRow]:
    return [ManifestRow(**r) for r in json.loads(text)]


def slot_name(slot: int) -> str:
    """The group of the video in position ``slot`` of a shard: ``videos/00042``."""
    return f"videos/{slot:05d}"
