"""``iic-prep extract``: decode every listed video, store its frames (and residuals) in HDF5 shards.

Residual frames are, by default, represented by the RGB stream: the reader derives them from the decoded
frames with the documented quantisation. Measured on real clips (BENCHMARKS.md), a separately stored q90
residual stream is no closer to the true x[t] - x[t-1] than the one derived from the stored frames, while it
costs ~50% more disk and doubles the JPEG decodes per training clip; ``--store-residuals`` keeps it for
those who want residuals computed before the codec.

Unit of work = one shard of ``shard_size`` consecutive videos (sorted by id), written by one process
under a temporary name and renamed when complete. Re-running keeps complete shards whose videos and
settings match, redoes the rest, and rebuilds the manifest from the shards; a run killed at any
moment therefore resumes to the same data as an uninterrupted run. Data extracted with other settings
(layout, split, size, quality, subsampling, residuals, Kinetics subset) is never replaced without
``overwrite``: the dataset folder ``<out>/<name>`` may hold another extraction beside it. A write refused
for want of space or permission ends the run in a `StorageError` (one line), complete shards kept.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import h5py

from .datasets import DatasetIndex, VideoEntry, load_index
from .decode import DecodeError, iter_frames
from .format import (
    FORMAT_VERSION,
    ManifestRow,
    encode_jpeg,
    format_splits,
    quantize_residual,
    shard_damage,
    size_spec,
    write_manifest,
)
from .lock import exclusive
from .parallel import ParallelConfig, StageSummary, TaskReport, run_tasks, threads_per_worker
from .storage import StorageError, storage_errors
from .writer import (
    ShardWriter,
    remove_stale_temporaries,
    shard_estimate,
    shard_rows,
)

log = logging.getLogger(__name__)

# dataset.json's "residual_source" for --store-residuals off / on
RESIDUAL_SOURCES = {False: "derived from the stored RGB frames", True: "stored stream"}


class DatasetExistsError(FileExistsError):
    """The dataset folder holds data extracted with other settings (one-line message naming them)."""


@dataclass(frozen=True)
class ExtractConfig:
    dataset: str
    root: Path
    out: Path  # the data root; the dataset lands in out/<name>
    split: int = 1
    size: tuple[int, int] | int = (128, 171)  # (H, W), or a short side (aspect kept, per-video sizes)
    subset: Path | None = None  # Kinetics: a class or video list restricting the set
    unlabelled: bool = False  # Kinetics: also extract the unlabelled test CSV
    quality: int = 90  # JPEG quality of the RGB and residual streams
    subsampling: str = "420"  # JPEG chroma subsampling: 420 (as JPEG frame folders) or 444
    store_residuals: bool = False  # also store a residual stream (otherwise derived at read time)
    shard_size: int = 64  # videos per shard
    shards_per_folder: int = 1000  # more shards than this: spread over frames/<NNN>/ folders of this many
    parallel: ParallelConfig = ParallelConfig()
    overwrite: bool = False
    repair: bool = False  # verify every kept shard's checksums and redo the damaged ones
    name: str | None = None  # the dataset folder under ``out`` [default: the layout, ``dataset``]

    def __post_init__(self) -> None:
        name = self.name
        if name is not None and (name in ("", ".", "..") or "/" in name or os.sep in name):
            raise ValueError(
                f"--name {name!r}: a folder name is needed, not a path (the dataset goes to "
                "<data root>/<name>)"
            )

    @property
    def data_dir(self) -> Path:
        return Path(self.out) / (self.name or self.dataset)

    def storage(self) -> dict:
        """Settings that change the stored bytes: a shard written with other settings is redone."""
        return {
            "size": size_spec(self.size),
            "quality": self.quality,
            "subsampling": self.subsampling,
            "store_residuals": self.store_residuals,
            "format_version": FORMAT_VERSION,
        }


def encode_video(path: Path, cfg: ExtractConfig, threads: int = 1) -> tuple[list[bytes], list[bytes], str]:
    """Decode ``path``, returning JPEG-encoded RGB frames, residual frames (empty unless
    ``cfg.store_residuals``) and a warning note.

    Frames are encoded as they are decoded, so memory stays at two frames whatever the length.
    Raises `DecodeError` (one-line reason) when nothing can be decoded.
    """
    rgb: list[bytes] = []
    res: list[bytes] = []
    notes: list[str] = []
    prev = None
    for frame in iter_frames(path, cfg.size, threads, notes):
        rgb.append(encode_jpeg(frame, cfg.quality, cfg.subsampling))
        if cfg.store_residuals:
            res.append(encode_jpeg(quantize_residual(frame, prev), cfg.quality, cfg.subsampling))
        prev = frame
    if not rgb:
        raise DecodeError("no decodable frames" + (f" ({'; '.join(notes)})" if notes else ""))
    return rgb, res, "; ".join(notes)


def shard_name(index: int, n_shards: int = 1, per_folder: int = 1000) -> str:
    """``frames/shard-00042.h5``; a dataset of more than ``per_folder`` shards (Kinetics: ~10k at 64 videos a
    shard) spreads them over folders of ``per_folder``: ``frames/012/shard-012345.h5``. The flat names of
    every smaller dataset are those of earlier versions, so their shards are kept on a re-run."""
    if n_shards <= per_folder:
        return f"frames/shard-{index:05d}.h5"
    return f"frames/{index // per_folder:03d}/shard-{index:06d}.h5"


def extract_shard(shard: str, entries: list[VideoEntry], video_root: Path, cfg: ExtractConfig) -> TaskReport:
    """Write one shard with ``entries``; returns its manifest rows (failed videos included)."""
    cv2.setNumThreads(1)
    threads = threads_per_worker(cfg.parallel.workers)
    attrs = {"kind": "frames", "dataset": cfg.dataset, "codec": "jpeg", "settings": json.dumps(cfg.storage())}
    rows, frames, nbytes = [], 0, 0
    with ShardWriter(cfg.data_dir / shard, attrs, planned=len(entries)) as writer:
        for slot, e in enumerate(entries):
            base = dict(
                id=e.id,
                path=e.path,
                class_name=e.class_name,
                label=e.label,
                splits=format_splits(e.splits),
                shard=shard,
                slot=slot,
            )
            try:
                rgb, res, note = encode_video(video_root / e.path, cfg, threads)
            except DecodeError as err:
                rows.append(ManifestRow(**base, n_frames=0, status="failed", reason=str(err)))
                continue
            nbytes += writer.add_stream(slot, "rgb", rgb) + (
                writer.add_stream(slot, "res", res) if res else 0
            )
            frames += len(rgb)
            rows.append(ManifestRow(**base, n_frames=len(rgb), status="ok", reason=note))
        writer.commit(rows)
    return TaskReport(shard, len(entries), frames, nbytes, rows)


def _complete_rows(path: Path, entries: list[VideoEntry], settings: dict) -> list[ManifestRow] | None:
    """Rows of an existing complete shard if it holds exactly ``entries`` with the same settings."""
    rows = shard_rows(path)
    # compare what the lists say too (path, class, label, membership), not only ids: rows of a kept
    # shard go into the manifest as they are
    wanted = [(e.id, e.path, e.class_name, e.label, format_splits(e.splits)) for e in entries]
    if rows is None or [(r.id, r.path, r.class_name, r.label, r.splits) for r in rows] != wanted:
        return None
    with h5py.File(path, "r") as f:
        if json.loads(f.attrs.get("settings", "{}")) != settings:
            return None
    return rows


def plan_shards(
    index: DatasetIndex, shard_size: int, per_folder: int = 1000
) -> list[tuple[str, list[VideoEntry]]]:
    """(shard name, its videos) in id order: ``shard_size`` consecutive videos a shard."""
    entries = list(index.entries)
    n_shards = -(-len(entries) // shard_size)
    return [
        (shard_name(i // shard_size, n_shards, per_folder), entries[i : i + shard_size])
        for i in range(0, len(entries), shard_size)
    ]


# What dataset.json records of a run that another run would replace rather than resume: key -> how a message
# names it. Kinetics' subset and unlabelled are recorded only when used (absent = not used).
RECORDED = {
    "dataset": "layout",
    "split": "split",
    "size": "size",
    "quality": "quality",
    "subsampling": "subsampling",
    "residual_source": "residuals",
    "subset": "subset",
    "unlabelled": "unlabelled videos",
}
UNRECORDED = object()  # a key that an older dataset.json does not have


def _recorded(cfg: ExtractConfig) -> dict:
    """The `RECORDED` values of ``cfg``, as `_write_meta` writes them."""
    return {
        "dataset": cfg.dataset,
        "split": cfg.split,
        "size": size_spec(cfg.size),
        "quality": cfg.quality,
        "subsampling": cfg.subsampling,
        "residual_source": RESIDUAL_SOURCES[cfg.store_residuals],
        "subset": None if cfg.subset is None else str(cfg.subset),
        "unlabelled": cfg.unlabelled,
    }


def _shown(key: str, value) -> str:
    if value is UNRECORDED:
        return "unrecorded"
    if key == "size":
        return f"{value[0]}x{value[1]}" if isinstance(value, list) else f"short side {value['short_side']}"
    if key == "residual_source":
        return next(
            (
                ("stored" if stored else "derived")
                for stored, text in RESIDUAL_SOURCES.items()
                if text == value
            ),
            str(value),
        )
    if key == "unlabelled":
        return "included" if value else "left out"
    return "none" if value is None else str(value)


def settings_differences(meta: dict, cfg: ExtractConfig) -> list[str]:
    """``"size 128x171, asked 112x112"`` for each recorded setting of ``meta`` (a dataset.json) that ``cfg``
    would change: extracting with them replaces the data."""
    defaults = {"subset": None, "unlabelled": False}
    out = []
    for key, wanted in _recorded(cfg).items():
        found = meta.get(key, defaults.get(key, UNRECORDED))
        if found != wanted:
            out.append(f"{RECORDED[key]} {_shown(key, found)}, asked {_shown(key, wanted)}")
    return out


def _check_previous(cfg: ExtractConfig) -> None:
    """Refuse to replace a dataset extracted with other settings unless ``cfg.overwrite``: the same settings
    resume, other ones would rewrite every shard."""
    meta_path = cfg.data_dir / "dataset.json"
    if cfg.overwrite or not meta_path.exists():
        return
    differences = settings_differences(json.loads(meta_path.read_text()), cfg)
    if differences:
        raise DatasetExistsError(
            f"{cfg.data_dir} was extracted with {'; '.join(differences)}: pass "
            "--overwrite to replace it, or --name to extract beside it"
        )


def extract(cfg: ExtractConfig) -> StageSummary:
    """Run the frames stage; see the module docstring for the resume rules."""
    index = load_index(cfg.dataset, cfg.root, cfg.split, cfg.subset, cfg.unlabelled)
    frames = cfg.data_dir / "frames"
    # a write refused for want of space or permission anywhere under the data root ends in one line
    with (
        storage_errors(frames, lambda: shard_estimate(frames), within=cfg.out),
        exclusive(cfg.data_dir, "iic-prep extract"),
    ):
        _check_previous(cfg)
        try:
            return _extract(cfg, index)
        except StorageError:
            # the shards in flight in other workers (joblib killed them); a folder that cannot be written
            # holds none
            with contextlib.suppress(OSError):
                remove_stale_temporaries(frames)
            raise


def _extract(cfg: ExtractConfig, index: DatasetIndex) -> StageSummary:
    """The frames stage in the data folder locked by `extract`."""
    if cfg.overwrite:
        for p in (cfg.data_dir / "frames").rglob("shard-*.h5"):
            p.unlink()
    (cfg.data_dir / "frames").mkdir(parents=True, exist_ok=True)
    stale = remove_stale_temporaries(cfg.data_dir / "frames")
    if stale:
        log.info("removed %d incomplete shard(s) of an earlier run", stale)
    plan = plan_shards(index, cfg.shard_size, cfg.shards_per_folder)
    planned = {name for name, _ in plan}
    for p in (cfg.data_dir / "frames").rglob("shard-*.h5"):
        if f"frames/{p.relative_to(cfg.data_dir / 'frames').as_posix()}" not in planned:
            p.unlink()  # left by an earlier run with another list, shard size or folder spread
    for d in (cfg.data_dir / "frames").iterdir():
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()
    settings = cfg.storage()
    rows: list[ManifestRow] = []
    todo = []
    kept = 0
    for name, entries in plan:
        done = _complete_rows(cfg.data_dir / name, entries, settings)
        if done is not None and cfg.repair and (damage := shard_damage(cfg.data_dir / name)):
            log.warning("repairing %s: %s", name, damage)
            done = None
        if done is None:
            todo.append((name, entries, index.video_root, cfg))
        else:
            rows += done
            kept += 1
    if kept:
        log.info("keeping %d complete shard(s); %d to do", kept, len(todo))
    # until this run completes there is no manifest: readers never pair an old manifest with
    # shards or dataset.json of another run (e.g. a killed re-run with another --size)
    (cfg.data_dir / "manifest.csv").unlink(missing_ok=True)
    _write_meta(cfg, index)
    t0 = time.perf_counter()
    videos = sum(len(t[1]) for t in todo)
    for report in run_tasks(extract_shard, todo, cfg.parallel, videos, "frames", "extract"):
        rows += report.rows
    write_manifest(cfg.data_dir / "manifest.csv", rows)
    return StageSummary.from_rows(
        rows,
        unit="frames",
        bytes=_du(cfg.data_dir / "frames"),
        seconds=time.perf_counter() - t0,
        shards_written=len(todo),
        shards_kept=kept,
        folder=cfg.data_dir,
    )


def _write_meta(cfg: ExtractConfig, index: DatasetIndex) -> None:
    meta = {
        "format": "iic-shards",
        "format_version": FORMAT_VERSION,
        "dataset": cfg.dataset,
        "split": cfg.split,
        "size": size_spec(cfg.size),
        "codec": "jpeg",
        "quality": cfg.quality,
        "subsampling": cfg.subsampling,
        "residual": "q = floor((x[t] - x[t-1]) / 2) + 128, in [0, 255]; frame 0 has residual 0 (q = 128)",
        "residual_source": RESIDUAL_SOURCES[cfg.store_residuals],
        "classes": list(index.classes),
        # Kinetics options, only when used: the dataset.json of every other run stays as it was (its content
        # is part of the data identity that --resume compares)
        **({"subset": str(cfg.subset)} if cfg.subset is not None else {}),
        **({"unlabelled": True} if cfg.unlabelled else {}),
        "shard_size": cfg.shard_size,
        "versions": {
            "av": av.__version__,
            "ffmpeg": _ffmpeg_version(),
            "h5py": h5py.__version__,
            "opencv": cv2.__version__,
        },
    }
    tmp = cfg.data_dir / ".dataset.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(cfg.data_dir / "dataset.json")


def _ffmpeg_version() -> str:
    try:
        return ".".join(str(v) for v in av.library_versions["libavcodec"])
    except (AttributeError, KeyError):
        return "unknown"


def _du(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*.h5"))
