"""``iic-prep flow``: dense optical flow of every extracted video into shards aligned with the frames.

Flow is computed from the STORED frames (grayscale of the decoded JPEG frames at the stored size): the flow
then lines up pixel for pixel with what training reads, the raw videos need not be present any more, and
decoding a stored frame costs 0.1 ms against several ms of TV-L1 (the endpoint error between this choice and
a fresh decode of the source is measured in bench/bench_flow_stage.py and BENCHMARKS.md).

TV-L1 takes seconds per video, so the unit of work is one video (progress, pairs/s and ETA per video; a
kill loses at most the videos in flight): a worker writes the quantised flow of a video to
``flow/.parts/<shard>/<slot>.npy`` (atomically), and when every video of a frames shard is done the main
process assembles ``flow/shard-N.h5`` (same slots, lossless gzip) under a temporary name and renames it.

``tvl1-torch`` on the CPU runs like the OpenCV methods, ``--workers`` processes, each with one torch thread
and a batch of its video's pairs at a time; on CUDA one process (here, with the loky backend) drives the GPU
with large batches.  Why not torch threads: see ``pipeline/tvl1_torch.py``.  The device is not part of the
settings that decide a redo (CPU and GPU results differ by float rounding only); each shard records the
device and torch version it was computed with.

Re-running resumes. Flow computed with other settings (method, bound, estimator parameters, OpenCV version)
is refused unless ``--overwrite``; a flow shard computed from frames re-extracted since (stale: its
``frames_digest`` no longer matches its frames shard) is recomputed, with a warning.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

import h5py
import numpy as np

from . import orphans
from .flowcalc import (
    TORCH_METHODS,
    FlowConfig,
    FlowError,
    compute_flow,
    flow_params,
    init_worker_threads,
    make_estimator,
    opencv_version,
    rgb_to_gray,
    to_stored,
    torch_device,
)
from .format import (
    FORMAT_VERSION,
    FormatError,
    ManifestRow,
    frames_digest,
    frames_settings,
    read_manifest,
    shard_damage,
    stage_shard,
    write_manifest,
)
from .lock import exclusive
from .parallel import ParallelConfig, StageSummary, TaskReport, run_tasks
from .reader import VideoStore
from .storage import StorageError, storage_errors
from .writer import (
    ShardWriter,
    remove_stale_temporaries,
    shard_estimate,
    shard_rows,
)

log = logging.getLogger(__name__)


class FlowExistsError(FileExistsError):
    """The flow folder holds flow computed with other settings (one-line message naming them)."""


@dataclass(frozen=True)
class FlowStageConfig:
    data: Path  # the processed dataset folder, e.g. data/ucf101
    flow: FlowConfig = FlowConfig()
    parallel: ParallelConfig = ParallelConfig()
    overwrite: bool = False
    repair: bool = False  # verify every kept flow shard's checksums and redo the damaged ones

    @property
    def folder(self) -> Path:
        return Path(self.data) / "flow"

    def settings(self) -> dict:
        """What changes the stored flow: a part or shard made with other settings is redone."""
        return {
            "method": self.flow.method,
            "bound": self.flow.bound,
            "params": flow_params(self.flow),
            "opencv": opencv_version(),
            "source": "stored frames",
            "format_version": FORMAT_VERSION,
        }


_ESTIMATORS: dict = {}  # one estimator per worker process and config (TV-L1 setup is not free)


def _estimator(cfg: FlowConfig, processes: int = 1):
    """This process's estimator: one OpenCV thread, one torch thread on the CPU (the parallelism is the
    processes); ``processes`` sharing the free memory cap a torch method's batch."""
    key = (os.getpid(), cfg, processes)
    if key not in _ESTIMATORS:
        init_worker_threads(1)
        _ESTIMATORS.clear()
        _ESTIMATORS[key] = make_estimator(cfg, threads=1, processes=processes)
    return _ESTIMATORS[key]


def _part_path(folder: Path, row: ManifestRow) -> Path:
    return folder / ".parts" / Path(row.shard).stem / f"{row.slot:05d}.npy"


def flow_row(row: ManifestRow, shard: str, n_pairs: int, status: str, reason: str = "") -> ManifestRow:
    return replace(row, shard=shard, n_frames=n_pairs, status=status, reason=reason)


_STORES: dict[str, VideoStore] = {}  # one lazily opened reader per worker process and dataset


def video_flow(row: ManifestRow, data: Path, cfg: FlowConfig, processes: int = 1) -> np.ndarray:
    """Quantised flow ``(N-1, 2, H, W)`` uint8 of one extracted video (`FlowError` if N < 2); ``processes``:
    how many flow processes share this machine's memory (caps a torch method's batch)."""
    key = f"{data}@{(Path(data) / 'manifest.csv').stat().st_mtime_ns}"  # a re-extracted dataset is a new key
    store = _STORES.get(key) or _STORES.setdefault(key, VideoStore(data))
    frames = store.frames(row.id)
    return to_stored(compute_flow(rgb_to_gray(frames), _estimator(cfg, processes)), cfg.bound)


def flow_task(row: ManifestRow, cfg: FlowStageConfig) -> TaskReport:
    """Compute one video's flow into its part file; the report's rows hold its flow-manifest row."""
    shard = stage_shard(row.shard, "flow")
    if not row.ok:
        return TaskReport(shard, 1, 0, 0, [flow_row(row, shard, 0, "failed", f"no frames: {row.reason}")])
    try:
        flow = video_flow(
            row, cfg.data, cfg.flow, cfg.parallel.workers if cfg.parallel.backend == "loky" else 1
        )
    except FlowError as err:
        return TaskReport(shard, 1, 0, 0, [flow_row(row, shard, 0, "failed", str(err))])
    part = _part_path(cfg.folder, row)
    tmp = part.with_name(f"{part.name}.{os.getpid()}.tmp")
    try:
        with storage_errors(cfg.folder, lambda: shard_estimate(cfg.folder, flow.nbytes)):
            part.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                np.save(f, flow)
            orphans.exit_if_orphaned()  # a worker whose run died publishes nothing
            os.replace(tmp, part)
    except StorageError:
        tmp.unlink(missing_ok=True)
        raise
    return TaskReport(shard, 1, len(flow), flow.nbytes, [flow_row(row, shard, len(flow), "ok")])


def assemble_shard(shard: str, rows: list[ManifestRow], cfg: FlowStageConfig, attrs: dict) -> int:
    """Write ``flow/shard-N.h5`` from the parts of its videos; returns its size in bytes."""
    with ShardWriter(cfg.data / shard, attrs, planned=sum(r.ok for r in rows)) as writer:
        for r in rows:
            if r.ok:
                writer.add_array(r.slot, "flow", np.load(_part_path(cfg.folder, r)))
        writer.commit(rows)
    shutil.rmtree(cfg.folder / ".parts" / Path(shard).stem, ignore_errors=True)
    return (cfg.data / shard).stat().st_size


def settings_differences(found: dict, wanted: dict) -> list[str]:
    """``"method tvl1, asked dis"`` for each flow setting (`FlowStageConfig.settings`) that differs; for the
    estimator's parameters, the first one that differs."""
    first = ["method", "bound", "opencv", "source", "format_version"]
    out = []
    for key in first + sorted((set(found) | set(wanted)) - set(first)):
        a, b = found.get(key, "unrecorded"), wanted.get(key, "unrecorded")
        if a == b:
            continue
        if key != "params":
            out.append(f"{key} {a}, asked {b}")
        elif isinstance(a, dict) and isinstance(b, dict) and found.get("method") == wanted.get("method"):
            # the parameters repeat the method, bound and OpenCV version: name the first other one
            name = next((k for k in sorted(set(a) | set(b)) if k not in first and a.get(k) != b.get(k)), None)
            if name is not None:
                out.append(f"estimator parameter {name} {a.get(name, 'unset')}, asked {b.get(name, 'unset')}")
    return out


def _prepare(cfg: FlowStageConfig, settings: dict) -> None:
    """Start from scratch on --overwrite; refuse to replace flow computed with other settings; drop stale
    temporaries."""
    meta = cfg.folder / "flow.json"
    if not cfg.overwrite and meta.exists():
        found = json.loads(meta.read_text()).get("settings") or {}
        computed = any(cfg.folder.rglob("shard-*.h5")) or any((cfg.folder / ".parts").rglob("*.npy"))
        if found != settings and computed:
            differences = settings_differences(found, settings) or ["other settings"]
            raise FlowExistsError(
                f"{cfg.folder} was computed with {'; '.join(differences)}: pass --overwrite to recompute it"
            )
    if cfg.overwrite or (meta.exists() and json.loads(meta.read_text()).get("settings") != settings):
        # --overwrite, or the flow.json of a run that computed nothing
        shutil.rmtree(cfg.folder, ignore_errors=True)
    cfg.folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(cfg.folder)
    for tmp in (cfg.folder / ".parts").glob("*/*.tmp"):
        tmp.unlink()
    meta_tmp = cfg.folder / ".flow.json.tmp"
    meta_tmp.write_text(
        json.dumps(
            {"settings": settings, **settings, "created": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2
        )
    )
    meta_tmp.replace(meta)


def compute(cfg: FlowStageConfig) -> StageSummary:
    """Run the flow stage over every video of ``cfg.data``; resumable (see module docstring)."""
    if not (Path(cfg.data) / "dataset.json").exists():
        raise FormatError(f"no processed dataset at {cfg.data}: run `iic-prep extract` first")
    frame_rows = read_manifest(Path(cfg.data) / "manifest.csv")
    device = torch_device(cfg.flow) if cfg.flow.method in TORCH_METHODS else None  # FlowDeviceError first
    settings = cfg.settings()
    by_shard: dict[str, list[ManifestRow]] = defaultdict(list)
    for r in frame_rows:
        by_shard[r.shard].append(r)
    # a write refused for want of space or permission under the dataset folder ends in one line
    with (
        storage_errors(cfg.folder, lambda: shard_estimate(cfg.folder), within=cfg.data),
        exclusive(cfg.data, "iic-prep flow"),
    ):
        try:
            return _compute(cfg, settings, by_shard, device)
        except StorageError:
            # the parts and shards in flight in other workers (joblib killed them); a folder that cannot be
            # written holds none
            with contextlib.suppress(OSError):
                remove_stale_temporaries(cfg.folder)
            raise


def _compute(
    cfg: FlowStageConfig, settings: dict, by_shard: dict[str, list[ManifestRow]], device: str | None
) -> StageSummary:
    """The flow stage in the dataset folder locked by `compute`."""
    _prepare(cfg, settings)
    # until this run completes there is no flow manifest: readers never pair it with changed shards
    (cfg.folder / "manifest.csv").unlink(missing_ok=True)
    rows: list[ManifestRow] = []
    todo: list[ManifestRow] = []
    pending: dict[str, list[ManifestRow]] = {}
    kept = 0
    attrs_of = {stage_shard(s, "flow"): _shard_attrs(cfg, settings, r, device) for s, r in by_shard.items()}
    for frames_shard, shard_frame_rows in sorted(by_shard.items()):
        shard = stage_shard(frames_shard, "flow")
        done = _complete_shard(cfg.data / shard, attrs_of[shard])
        if done is None and _stale(cfg.data / shard, attrs_of[shard]):
            # Recomputed rather than refused: stale flow describes frames that are no longer stored (the
            # user re-extracted them), so nothing anyone chose is lost, while keeping it would pair flow with
            # frames it was not computed from. Refusing would only ask for --overwrite, which also
            # recomputes the shards that are still valid.
            log.warning(
                "%s: computed from other frames than %s (re-extracted since): recomputing it",
                shard,
                frames_shard,
            )
        if done is not None and cfg.repair and (damage := shard_damage(cfg.data / shard)):
            log.warning("repairing %s: %s", shard, damage)
            done = None
        if done is not None:
            # same videos and frames; the rows' other columns (splits, label) come from the frames now
            stored = {r.id: r for r in done}
            rows += [
                flow_row(r, shard, stored[r.id].n_frames, stored[r.id].status, stored[r.id].reason)
                for r in shard_frame_rows
            ]
            kept += 1
            continue
        pending[shard] = []
        _reset_parts(cfg.folder / ".parts" / Path(shard).stem, attrs_of[shard]["frames_digest"])
        for r in shard_frame_rows:
            part = _part_path(cfg.folder, r)
            if r.ok and part.exists() and _part_matches(part, r):
                pending[shard].append(flow_row(r, shard, r.n_frames - 1, "ok"))
            else:
                todo.append(r)
    _drop_orphan_shards(cfg.folder, {stage_shard(s, "flow") for s in by_shard})
    expected = {shard: len(by_shard[stage_shard(shard, "frames")]) for shard in pending}
    t0, written = time.perf_counter(), 0
    for shard in [s for s in pending if len(pending[s]) == expected[s]]:
        assemble_shard(shard, sorted(pending[shard], key=lambda r: r.slot), cfg, attrs_of[shard])
        rows += pending.pop(shard)
        written += 1
    gpu_here = device is not None and device.startswith("cuda") and cfg.parallel.backend == "loky"
    # one process per GPU
    run_cfg = replace(cfg, parallel=replace(cfg.parallel, workers=1)) if gpu_here else cfg
    if gpu_here and cfg.parallel.workers > 1:
        log.info(
            "tvl1-torch on %s: one process drives the GPU (--workers %d is not used for flow)",
            device,
            cfg.parallel.workers,
        )
    tasks = [(r, run_cfg) for r in todo]
    for report in run_tasks(flow_task, tasks, run_cfg.parallel, len(tasks), "pairs", "flow"):
        pending[report.shard] += report.rows
        if len(pending[report.shard]) == expected[report.shard]:
            assemble_shard(
                report.shard, sorted(pending[report.shard], key=lambda r: r.slot), cfg, attrs_of[report.shard]
            )
            rows += pending.pop(report.shard)
            written += 1
    shutil.rmtree(cfg.folder / ".parts", ignore_errors=True)
    write_manifest(cfg.folder / "manifest.csv", rows)
    return StageSummary.from_rows(
        rows,
        unit="flow pairs",
        bytes=sum(p.stat().st_size for p in cfg.folder.rglob("shard-*.h5")),
        seconds=time.perf_counter() - t0,
        shards_written=written,
        shards_kept=kept,
        folder=cfg.folder,
    )


def _shard_attrs(
    cfg: FlowStageConfig, settings: dict, frame_rows: list[ManifestRow], device: str | None
) -> dict:
    source = frames_settings(cfg.data / frame_rows[0].shard)
    attrs = {
        "kind": "flow",
        "settings": json.dumps(settings),
        "frames_digest": frames_digest(frame_rows, source),
        "method": cfg.flow.method,
        "bound": cfg.flow.bound,
        "opencv": opencv_version(),
    }
    if device is not None:  # torch methods: where and with what the flow was computed
        attrs |= {
            "device": device,
            "torch": settings["params"]["torch"],
            "params": json.dumps(settings["params"]),
        }
    return attrs


def _complete_shard(path: Path, attrs: dict) -> list[ManifestRow] | None:
    """Rows of an existing flow shard made from the same frames with the same settings, else None."""
    rows = shard_rows(path)
    if rows is None:
        return None
    with h5py.File(path, "r") as f:
        same = all(f.attrs.get(k) == v for k, v in attrs.items() if k in ("settings", "frames_digest"))
    return rows if same else None


def _stale(path: Path, attrs: dict) -> bool:
    """``path`` is a flow shard made from other frames than those ``attrs`` (`_shard_attrs`) describe."""
    try:
        with h5py.File(path, "r") as f:
            digest = f.attrs.get("frames_digest")
    except OSError:  # missing or unreadable: redone as such, not as stale
        return False
    return digest is not None and digest != attrs["frames_digest"]


def stale_shards(data: Path) -> list[str]:
    """Flow shards made from other frames than the current frames shards (re-extracted since)."""
    by_shard: dict[str, list[ManifestRow]] = defaultdict(list)
    for r in read_manifest(Path(data) / "manifest.csv"):
        by_shard[r.shard].append(r)
    stale = []
    for frames_shard, rows in sorted(by_shard.items()):
        shard = stage_shard(frames_shard, "flow")
        try:
            with h5py.File(Path(data) / shard, "r") as f:
                digest = f.attrs.get("frames_digest")
        except OSError:
            continue  # a missing flow shard is reported by its rows
        try:
            with h5py.File(Path(data) / frames_shard, "r") as f:
                settings = str(f.attrs.get("settings", ""))
        except OSError:
            continue  # a missing or damaged frames shard is reported by the frames check, not as re-extracted
        if digest != frames_digest(rows, settings):
            stale.append(shard)
    return stale


def _reset_parts(folder: Path, digest: str) -> None:
    """Parts of a killed run are kept only if made from the same frames (a re-extract may come between)."""
    stamp = folder / "frames_digest"
    if folder.exists() and not (stamp.exists() and stamp.read_text() == digest):
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stamp.write_text(digest)


def _part_matches(part: Path, row: ManifestRow) -> bool:
    try:
        shape = np.load(part, mmap_mode="r").shape
    except (OSError, ValueError):
        return False
    return shape[0] == row.n_frames - 1


def _drop_orphan_shards(folder: Path, planned: set[str]) -> None:
    for p in folder.rglob("shard-*.h5"):
        if f"flow/{p.relative_to(folder).as_posix()}" not in planned:
            p.unlink()
