"""The lazy reader of a processed dataset: `VideoStore` (frames, residuals, flow, camera motion by video id;
docs/format.md).

The training core reads the data only through it. This module never imports torch.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import cv2
import h5py
import numpy as np
import simplejpeg

from .format import (
    ALIGNED_DEAD_ZONE,
    CRC_SUFFIX,
    FLOW_FIT_INLIER,
    FLOW_FIT_ROUNDS,
    FORMAT_VERSION,
    MODALITIES,
    ChecksumError,
    FormatError,
    ManifestRow,
    bad_frames,
    bad_items,
    dead_zone,
    decode_jpegs,
    frames_digest,
    quantize_difference,
    quantize_residual,
    read_manifest,
    slot_name,
    stage_shard,
)
from .identity import DataIdentity

__all__ = [
    "VideoStore",
    "FormatError",
    "ChecksumError",
    "ManifestRow",
    "MAX_OPEN_SHARDS",
    "FLOW_FIT_INLIER",  # the device's flow-*-aligned views fit the camera's flow as the pipeline does
    "FLOW_FIT_ROUNDS",
]


def _first_line(err: Exception) -> str:
    lines = str(err).strip("'\"").splitlines()
    return lines[0] if lines else type(err).__name__


CAMERA_DIR, CAMERA_META = "camera", "camera.json"  # `iic-prep camera` (pipeline/camera.py)
# A video's JPEG stream as the reader keeps it: (byte dataset, offsets, CRC32s or None)
_Stream = tuple[h5py.Dataset, np.ndarray, np.ndarray | None]
# Shard files a VideoStore keeps open at once (per process: each loader worker has its own).
MAX_OPEN_SHARDS = 256  # UCF101 or HMDB51 at 64 videos a shard: 210 shards, all kept open


def aligned_residual_q(
    prev: np.ndarray, cur: np.ndarray, motion: np.ndarray, factor: float = ALIGNED_DEAD_ZONE
) -> np.ndarray:
    """(H, W, 3) uint8 q of ``cur - W(prev)``: ``prev`` warped onto ``cur`` by the camera's ``motion`` (2x3,
    OpenCV, bilinear), 0 where the warped frame has no pixel, changes within ``factor`` times the frame's
    median change set to 0 (`format.dead_zone`; 0: kept)."""
    height, width = cur.shape[:2]
    warped = cur.copy()  # pixels with no source keep the current frame's: residual 0
    cv2.warpAffine(
        prev,
        np.asarray(motion, np.float64),
        (width, height),
        dst=warped,
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_TRANSPARENT,
    )
    d = np.subtract(cur, warped, dtype=np.int16)
    return quantize_difference(dead_zone(d, factor) if factor else d)


class VideoStore(DataIdentity):
    """Read-only access to a processed dataset by video id; safe in DataLoader workers.

    HDF5 files are opened lazily on first use in each process (an open handle never crosses a fork:
    handles are keyed by pid and dropped when pickled for spawn).
    """

    def __init__(self, data_dir: Path, locking: bool | None = None) -> None:
        self.data_dir = Path(data_dir)
        meta = self.data_dir / "dataset.json"
        if not meta.exists():
            raise FormatError(
                f"no processed dataset at {self.data_dir} (dataset.json missing): run `iic-prep extract`"
            )
        self.meta = json.loads(meta.read_text())
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise FormatError(
                f"{meta} is format version {self.meta.get('format_version')}, "
                f"this reader reads {FORMAT_VERSION}"
            )
        self.rows = read_manifest(self.data_dir / "manifest.csv")
        self.by_id = {r.id: r for r in self.rows}
        self.flow_rows = {r.id: r for r in read_manifest(self.flow_manifest_path)} if self.has_flow else {}
        self.locking = locking
        # open shards, least recently used first, and per open shard its videos' streams (offsets, CRC32s)
        self._files: OrderedDict[str, h5py.File] = OrderedDict()
        self._streams: dict[str, dict[tuple[str, str], _Stream | None]] = {}
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
        # at least 2: a clip's frames and flow shards stay open together
        while len(self._files) >= max(2, MAX_OPEN_SHARDS):
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
            raise KeyError(
                f"video {video_id!r} is not in the {'flow ' if flow else ''}manifest of {self.data_dir}"
            )
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
        length = row.n_frames - start if length is None else length
        return self._read(row, (modality,), start, length)[modality]

    def read_clip(
        self, video_id: str, modalities: Sequence[str], start: int, length: int
    ) -> dict[str, np.ndarray]:
        """`read` for several of ``rgb``/``res`` at once: a derived residual reuses the RGB frames decoded for
        ``rgb`` (one JPEG decode per frame instead of two)."""
        return self._read(self._row(video_id), tuple(modalities), start, length)

    def _read(
        self, row: ManifestRow, modalities: tuple[str, ...], start: int, length: int
    ) -> dict[str, np.ndarray]:
        unknown = set(modalities) - set(MODALITIES)
        if unknown:
            raise ValueError(f"unknown modality {sorted(unknown)}; stored are {MODALITIES}")
        if start < 0 or length < 1 or start + length > row.n_frames:
            raise IndexError(
                f"frames [{start}, {start + length}) outside video {row.id!r} of {row.n_frames} frames"
            )
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
            raise FormatError(
                f"{self.data_dir}: cannot read video {row.id!r} from {row.shard} "
                f"slot {row.slot}: {_first_line(err)}"
            ) from None

    def _stream(self, row: ManifestRow, name: str) -> _Stream | None:
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
                    raise ChecksumError(
                        f"{self.data_dir}: {row.shard} video {row.id!r}: {len(crcs)} {name} "
                        f"checksums for {len(offsets) - 1} frames"
                    )
                cached[key] = (group[name], offsets, crcs)
        return cached[key]

    def _corrupt(self, row: ManifestRow, what: str, index: int, stage: str) -> ChecksumError:
        return ChecksumError(
            f"{self.data_dir}: {row.shard} video {row.id!r} {what} {index}: checksum "
            f"mismatch, the stored bytes are corrupt (`iic-prep {stage} --repair` rewrites "
            "the shard)"
        )

    def _check_count(self, row: ManifestRow, what: str, stored: int) -> None:
        if stored != row.n_frames:
            manifest = "flow manifest" if what == "flow pairs" else "manifest"
            raise FormatError(
                f"{self.data_dir}: {row.shard} holds {stored} {what} of video {row.id!r}, "
                f"its {manifest} says {row.n_frames}: the {manifest} does not belong to these "
                "shards (`iic-prep check`; re-run the stage to rebuild it)"
            )

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
            raise IndexError(
                f"flow pairs [{start}, {start + length}) outside video {video_id!r} of {row.n_frames} pairs"
            )
        group = self._group(row)
        self._check_count(row, "flow pairs", group["flow"].shape[0])
        try:
            pairs = group["flow"][start : start + length]
        except OSError as err:  # a chunk that does not inflate: find it
            for t in range(start, start + length):
                try:
                    group["flow"][t]
                except OSError:
                    raise FormatError(
                        f"{self.data_dir}: {row.shard} video {row.id!r} flow pair {t}: "
                        f"unreadable, the stored bytes are corrupt ({_first_line(err)}; "
                        "`iic-prep flow --repair` rewrites the shard)"
                    ) from None
            raise
        if f"flow{CRC_SUFFIX}" in group:
            bad = bad_items(pairs, group[f"flow{CRC_SUFFIX}"][start : start + length])
            if bad:
                raise self._corrupt(row, "flow pair", start + bad[0], "flow")
        return pairs

    # -- camera motion (`iic-prep camera`) -----------------------------------------------------------------
    @property
    def has_camera(self) -> bool:
        return (self.data_dir / CAMERA_DIR / CAMERA_META).exists()

    def _no_camera(self, why: str) -> FormatError:
        return FormatError(
            f"{self.data_dir}: {why}: run `iic-prep camera --data {self.data_dir}` to estimate it "
            "(the res-aligned view needs it)"
        )

    def camera(self, video_id: str, start: int = 0, length: int | None = None) -> np.ndarray:
        """The camera's motion at frames ``start .. start+length-1`` -> (T, 2, 3) float32: entry t carries
        pixel coordinates of frame t-1 to frame t (``[x', y'] = M [x, y, 1]``); entry 0 is the identity."""
        row = self._row(video_id)
        length = row.n_frames - start if length is None else length
        if start < 0 or length < 1 or start + length > row.n_frames:
            raise IndexError(
                f"frames [{start}, {start + length}) outside video {video_id!r} of {row.n_frames} frames"
            )
        return self._camera(row)[start : start + length]

    def _camera(self, row: ManifestRow) -> np.ndarray:
        """A video's whole (N, 2, 3) camera motion, read and verified once per process and kept with its
        shard; a camera shard made from other frames than the stored ones (re-extracted since) is refused."""
        shard = stage_shard(row.shard, CAMERA_DIR)
        key = (row.id, "camera")
        self._own_handles()
        cached = self._streams.get(shard)
        if cached is not None and key in cached:
            self._files.move_to_end(shard)
            return cached[key]
        if not self.has_camera:
            raise self._no_camera("no camera motion estimate")
        if not (self.data_dir / shard).exists():
            raise self._no_camera(f"no camera motion for video {row.id!r} ({shard} is missing)")
        settings = str(self._group(row).file.attrs.get("settings", ""))
        try:
            f = self._file(shard)
        except OSError as err:
            raise FormatError(f"{self.data_dir}: cannot read {shard}: {_first_line(err)}") from None
        cached = self._streams.setdefault(shard, {})
        if ("", "frames_digest") not in cached:
            if f.attrs.get("frames_digest") != frames_digest(self._shard_rows(row.shard), settings):
                raise self._no_camera(f"{shard} was estimated from other frames (re-extracted since)")
            cached["", "frames_digest"] = True
        group = self._group_of(shard, row)
        if "camera" not in group:
            raise self._no_camera(f"{shard} holds no camera motion for video {row.id!r}")
        motion = group["camera"][()]
        self._check_count(row, "camera entries", len(motion))
        if "camera" + CRC_SUFFIX in group:
            bad = bad_items(motion, group["camera" + CRC_SUFFIX][()])
            if bad:
                raise ChecksumError(
                    f"{self.data_dir}: {shard} video {row.id!r} camera entry {bad[0]}: checksum mismatch, "
                    "the stored bytes are corrupt (`iic-prep camera --overwrite` estimates them again)"
                )
        cached[key] = motion.astype(np.float32, copy=False)
        return cached[key]

    def _shard_rows(self, shard: str) -> list[ManifestRow]:
        """The manifest rows of a frames shard, in manifest order."""
        if getattr(self, "_by_shard", None) is None:
            self._by_shard: dict[str, list[ManifestRow]] = {}
            for r in self.rows:
                self._by_shard.setdefault(r.shard, []).append(r)
        return self._by_shard.get(shard, [])

    def _group_of(self, shard: str, row: ManifestRow) -> h5py.Group:
        try:
            return self._file(shard)[slot_name(row.slot)]
        except (OSError, KeyError) as err:
            raise FormatError(
                f"{self.data_dir}: cannot read video {row.id!r} from {shard} slot {row.slot}: "
                f"{_first_line(err)}"
            ) from None

    def aligned_residuals(
        self, video_id: str, start: int = 0, length: int | None = None, factor: float = ALIGNED_DEAD_ZONE
    ) -> np.ndarray:
        """Residuals of frames ``start .. start+length-1`` after the camera's motion -> (T, H, W, 3) uint8 q
        (the quantisation of `read`'s ``res``): frame t minus frame t-1 warped onto it by `camera` (bilinear),
        changes within ``factor`` times the frame's median change set to 0 (`format.dead_zone`; 0: kept);
        where the warped frame has no pixel (outside frame t-1) and at frame 0 the residual is 0. For
        pictures and checks: training computes the same on its device, the median over its crop
        (model/data/align.py)."""
        row = self._row(video_id)
        length = row.n_frames - start if length is None else length
        motion = self.camera(video_id, start, length)
        first = max(start - 1, 0)
        rgb = self.read(video_id, "rgb", first, start + length - first)
        height, width = rgb.shape[1:3]
        out = np.empty((length, height, width, 3), np.uint8)
        for i in range(length):
            t = start + i
            cur = rgb[t - first]
            if t == 0:
                out[i] = quantize_residual(cur, None)
                continue
            out[i] = aligned_residual_q(rgb[t - 1 - first], cur, motion[i], factor)
        return out

    def camera_identity(self) -> str:
        """Hash of the camera estimates (settings and each camera shard's content digest): what a feature
        cache of the ``res-aligned`` view keys on besides `identity`. Empty when there are none."""
        if not self.has_camera:
            return ""
        settings = json.loads((self.data_dir / CAMERA_DIR / CAMERA_META).read_text()).get("settings")
        h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())  # not its date: a rerun keeps it
        for shard in sorted({r.shard for r in self.rows if r.ok}):
            path = self.data_dir / stage_shard(shard, CAMERA_DIR)
            try:
                with h5py.File(path, "r") as f:
                    h.update(
                        f"{shard}:{f.attrs.get('content_digest')}:{f.attrs.get('frames_digest')}".encode()
                    )
            except OSError:
                h.update(f"{shard}:missing".encode())
        return h.hexdigest()[:16]

    @property
    def flow_meta(self) -> dict:
        path = self.data_dir / "flow" / "flow.json"
        if not path.exists():
            raise FormatError(f"no flow at {self.data_dir}: run `iic-prep flow` first")
        return json.loads(path.read_text())
