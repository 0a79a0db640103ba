"""``iic-prep camera``: the camera's motion between consecutive stored frames, one 2x3 affine per frame, in
small shards aligned with the frames (docs/format.md, "A camera shard").

Why: with a moving camera the residual ``x[t] - x[t-1]`` is mostly an image of the background's texture, so a
network can match an RGB clip to its residual by appearance and learns nothing of motion. The ``res-aligned``
view (model/data/align.py) warps frame t-1 onto frame t by this estimate before taking the difference, which
cancels whatever moves with the camera and leaves what moves in the scene.

The estimate (`estimate_motion`), for each pair of consecutive stored frames: Lucas-Kanade (OpenCV's pyramidal
``calcOpticalFlowPyrLK``) tracks a regular grid of points (`GRID` along the short side) from frame t-1 to
frame t and back; points that do not come back within `FB_PX` are dropped; a similarity (shift, rotation,
scale: ``estimateAffinePartial2D``) is fitted to the rest with RANSAC (`RANSAC_PX`). The consensus of a
regular grid is the background wherever the background covers most of the frame, moving objects are the
outliers. A pair where fewer than `MIN_INLIERS` of the grid points agree gets the identity (no compensation:
its aligned residual is the plain one) and is counted in the video's manifest note. A grid rather than the
strongest corners (``goodFeaturesToTrack``): the strongest corners of a scene are often on its moving
objects (the synthetic sprites' stripes), which pulls the fit to them; measured in bench/bench_camera.py
(BENCHMARKS.md, "Camera motion"), the grid is 4-14x closer to the true camera motion at a similar cost.

Like flow, it is computed from the STORED frames (what training reads and warps), so the raw videos need not
be present. Unit of work = one frames shard; a camera shard records the frames it was computed from
(``frames_digest``), is recomputed when they were re-extracted since, and is refused with other settings
unless ``overwrite``. Entry t of a video maps pixel coordinates of frame t-1 to frame t (``[x', y'] = M_t
[x, y, 1]``, x right, y down, pixel centres at integers); entry 0 is the identity.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import h5py
import numpy as np

from .format import (
    FORMAT_VERSION,
    FormatError,
    ManifestRow,
    frames_digest,
    frames_settings,
    read_manifest,
    stage_shard,
)
from .lock import exclusive
from .parallel import ParallelConfig, StageSummary, TaskReport, run_tasks
from .reader import CAMERA_DIR, CAMERA_META, VideoStore
from .storage import StorageError, storage_errors
from .writer import ShardWriter, remove_stale_temporaries, shard_estimate, shard_rows

log = logging.getLogger(__name__)

METHOD = "lk-grid-similarity"
GRID = 12  # tracked points along the short side (a regular grid: 12 x 16 at 96x128, 12 x 16 at 128x171)
WINDOW = 9  # Lucas-Kanade window side, px
LEVELS = 2  # pyramid levels above the frame (tracks shifts of ~18 px a frame)
FB_PX = 0.5  # forward-backward tolerance: a point tracked to frame t and back must land within this, px
RANSAC_PX = 0.5  # a point agrees with the similarity when it lands within this of its track, px
MIN_INLIERS = 0.1  # share of the grid that must agree, else the pair gets the identity
MIN_POINTS = 8  # and at least this many points


class CameraExistsError(FileExistsError):
    """The camera folder holds estimates made with other settings (one-line message naming them)."""


def params() -> dict:
    """The estimator's parameters, as recorded in the settings."""
    return {
        "grid": GRID,
        "window": WINDOW,
        "levels": LEVELS,
        "fb_px": FB_PX,
        "ransac_px": RANSAC_PX,
        "min_inliers": MIN_INLIERS,
    }


def grid_points(height: int, width: int) -> np.ndarray:
    """(P, 1, 2) float32 (x, y) of a regular grid with `GRID` points along the short side."""
    step = min(height, width) / GRID
    ys = np.arange(step / 2, height, step)
    xs = np.arange(step / 2, width, step)
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32)[:, None]


def estimate_motion(prev: np.ndarray, cur: np.ndarray, points: np.ndarray | None = None) -> np.ndarray | None:
    """The similarity (2, 3) float64 carrying pixel coordinates of gray frame ``prev`` to gray frame ``cur``
    ((H, W) uint8), or None when too few grid points agree on one (module docstring)."""
    points = grid_points(*prev.shape) if points is None else points
    lk = dict(winSize=(WINDOW, WINDOW), maxLevel=LEVELS, minEigThreshold=1e-3)
    ahead, found, _ = cv2.calcOpticalFlowPyrLK(prev, cur, points, None, **lk)
    back, found_back, _ = cv2.calcOpticalFlowPyrLK(cur, prev, ahead, None, **lk)
    returned = np.linalg.norm((back - points)[:, 0], axis=1) < FB_PX
    ok = (found[:, 0] == 1) & (found_back[:, 0] == 1) & returned
    need = max(MIN_POINTS, MIN_INLIERS * len(points))
    if ok.sum() < need:
        return None
    m, inliers = cv2.estimateAffinePartial2D(
        points[ok],
        ahead[ok],
        method=cv2.RANSAC,
        ransacReprojThreshold=RANSAC_PX,
        maxIters=2000,
        confidence=0.999,
        refineIters=10,
    )
    if m is None or inliers is None or inliers.sum() < need:
        return None
    return m.astype(np.float64)


def video_motion(frames: np.ndarray) -> tuple[np.ndarray, int]:
    """Camera motion of a video ``(N, H, W, 3)`` uint8 RGB -> ((N, 2, 3) float32, entry t from frame t-1 to t,
    entry 0 the identity; the number of pairs left at the identity for want of agreement)."""
    motion = np.tile(np.eye(2, 3, dtype=np.float32), (len(frames), 1, 1))
    if len(frames) < 2:
        return motion, 0
    points = grid_points(*frames.shape[1:3])
    prev = cv2.cvtColor(frames[0], cv2.COLOR_RGB2GRAY)
    lost = 0
    for t in range(1, len(frames)):
        cur = cv2.cvtColor(frames[t], cv2.COLOR_RGB2GRAY)
        m = estimate_motion(prev, cur, points)
        if m is None:
            lost += 1
        else:
            motion[t] = m
        prev = cur
    return motion, lost


# ---------------------------------------------------------------------------------------------- the stage


@dataclass(frozen=True)
class CameraStageConfig:
    data: Path  # the processed dataset folder, e.g. data/ucf101
    parallel: ParallelConfig = ParallelConfig()
    overwrite: bool = False

    @property
    def folder(self) -> Path:
        return Path(self.data) / CAMERA_DIR

    def settings(self) -> dict:
        """What changes the stored estimates: a shard made with other settings is refused or redone."""
        return {
            "method": METHOD,
            "params": params(),
            "opencv": cv2.__version__,
            "source": "stored frames",
            "format_version": FORMAT_VERSION,
        }


def camera_shard(shard: str, rows: list[ManifestRow], cfg: CameraStageConfig, attrs: dict) -> TaskReport:
    """Estimate the camera motion of one frames shard's videos into ``shard``; the report's rows are its
    rows (``n_frames`` = entries, a note for the pairs left at the identity)."""
    cv2.setNumThreads(1)
    store = VideoStore(cfg.data)
    out, pairs, nbytes = [], 0, 0
    try:
        with ShardWriter(cfg.data / shard, attrs, planned=sum(r.ok for r in rows)) as writer:
            for r in sorted(rows, key=lambda r: r.slot):
                if not r.ok:
                    out.append(replace(r, shard=shard, status="failed", reason=f"no frames: {r.reason}"))
                    continue
                motion, lost = video_motion(store.frames(r.id))
                nbytes += writer.add_array(r.slot, "camera", motion, compression=None)
                pairs += len(motion) - 1
                note = f"{lost} of {len(motion) - 1} frame pairs without an estimate (identity)"
                out.append(replace(r, shard=shard, status="ok", reason=note if lost else ""))
            writer.commit(out)
    finally:
        store.close()
    return TaskReport(shard, len(rows), pairs, nbytes, out)


def _complete(path: Path, attrs: dict) -> list[ManifestRow] | None:
    """Rows of an existing camera shard made from the same frames with the same settings, else None."""
    rows = shard_rows(path)
    if rows is None:
        return None
    with h5py.File(path, "r") as f:
        same = all(f.attrs.get(k) == attrs[k] for k in ("settings", "frames_digest"))
    return rows if same else None


def _prepare(cfg: CameraStageConfig, settings: dict) -> None:
    """Start from scratch on --overwrite; refuse to replace estimates made with other settings."""
    meta = cfg.folder / CAMERA_META
    if meta.exists():
        found = json.loads(meta.read_text()).get("settings") or {}
        if found != settings:
            if any(cfg.folder.rglob("shard-*.h5")) and not cfg.overwrite:
                keys = sorted(k for k in set(found) | set(settings) if found.get(k) != settings.get(k))
                shown = "; ".join(f"{k} {found.get(k, 'unrecorded')}, asked {settings.get(k)}" for k in keys)
                raise CameraExistsError(
                    f"{cfg.folder} was estimated with {shown}: pass --overwrite to estimate it again"
                )
            shutil.rmtree(cfg.folder, ignore_errors=True)
    if cfg.overwrite:
        shutil.rmtree(cfg.folder, ignore_errors=True)
    cfg.folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(cfg.folder)
    tmp = cfg.folder / f".{CAMERA_META}.tmp"
    tmp.write_text(
        json.dumps({"settings": settings, "created": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2)
    )
    tmp.replace(meta)


def compute(cfg: CameraStageConfig) -> StageSummary:
    """Estimate the camera motion of every extracted video of ``cfg.data``; resumable (module docstring)."""
    if not (Path(cfg.data) / "dataset.json").exists():
        raise FormatError(f"no processed dataset at {cfg.data}: run `iic-prep extract` first")
    by_shard: dict[str, list[ManifestRow]] = defaultdict(list)
    for r in read_manifest(Path(cfg.data) / "manifest.csv"):
        by_shard[r.shard].append(r)
    with (
        storage_errors(cfg.folder, lambda: shard_estimate(cfg.folder), within=cfg.data),
        exclusive(cfg.data, "iic-prep camera"),
    ):
        try:
            return _compute(cfg, by_shard)
        except StorageError:
            with contextlib.suppress(OSError):
                remove_stale_temporaries(cfg.folder)
            raise


def _compute(cfg: CameraStageConfig, by_shard: dict[str, list[ManifestRow]]) -> StageSummary:
    settings = cfg.settings()
    _prepare(cfg, settings)
    rows: list[ManifestRow] = []
    todo = []
    kept = 0
    for frames_shard, shard_rows_ in sorted(by_shard.items()):
        shard = stage_shard(frames_shard, CAMERA_DIR)
        attrs = {
            "kind": "camera",
            "settings": json.dumps(settings),
            "frames_digest": frames_digest(shard_rows_, frames_settings(cfg.data / frames_shard)),
            "method": METHOD,
        }
        done = _complete(cfg.data / shard, attrs)
        if done is None and (cfg.data / shard).exists():
            log.info("%s: made from other frames or settings: estimating it again", shard)
        if done is None:
            todo.append((shard, shard_rows_, cfg, attrs))
        else:
            rows += done
            kept += 1
    planned = {stage_shard(s, CAMERA_DIR) for s in by_shard}
    for p in cfg.folder.rglob("shard-*.h5"):
        if f"{CAMERA_DIR}/{p.relative_to(cfg.folder).as_posix()}" not in planned:
            p.unlink()  # of frames shards that no longer exist
    if kept:
        log.info("keeping %d complete camera shard(s); %d to do", kept, len(todo))
    t0 = time.perf_counter()
    videos = sum(len(t[1]) for t in todo)
    for report in run_tasks(camera_shard, todo, cfg.parallel, videos, "pairs", "camera"):
        rows += report.rows
    return StageSummary.from_rows(
        rows,
        unit="frames",
        bytes=sum(p.stat().st_size for p in cfg.folder.rglob("shard-*.h5")),
        seconds=time.perf_counter() - t0,
        shards_written=len(todo),
        shards_kept=kept,
        folder=cfg.folder,
    )
