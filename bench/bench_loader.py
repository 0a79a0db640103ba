"""Benchmark of clip streaming (the training core's loader), run by hand; results go to BENCHMARKS.md.

On one dataset (synthetic 320x240 MPEG-4 AVIs, stored at 128x171), in one run, clips/s for training samples
of 16 consecutive frames at a random start per sample (the same (video, start) list for every loader):

* ``shards-res``   `iic.model.data.clips.ClipDataset` on the HDF5 shards, modalities rgb + res
  (32 JPEG decodes);
* ``shards-rgb``   the same, rgb only (16 JPEG decodes: the like-for-like storage comparison with the
  folders);
* ``shards-flow``  the same, rgb + flow (16 JPEG decodes + 16 gzip flow chunks);
* ``jpeg-folder``  the original IIC code's approach: one JPEG file per frame in a folder per video
  (``<video>/image_00001.jpg``, PIL quality 90, 4:2:0 like ffmpeg's ``-q:v 2`` folders), read with
  ``PIL.Image.open(...).convert("RGB")`` + ``np.asarray``; residual computed from the RGB clip as
  ``x - roll(x, 1, time)`` (stored with our quantisation so both loaders ship the same uint8 dict);
* ``pyav-decode``  straight from the source videos with PyAV: open, seek to the keyframe before the start,
  decode, skip to the start, convert+resize 16 frames to 171x128 RGB (``frame.reformat``), residual as above;
  on the synthetic AVIs (libavcodec's default keyframe every 12 frames) and on copies re-encoded with a
  keyframe every 300 frames (``pyav-decode-gop300``: xvid's default maximum interval, so most UCF101-length
  videos hold one keyframe and a random clip decodes from the start: the ~16 clips/s the authors' loader
  reaches on such files).

Each loader is timed per worker (this process, ``num_workers=0``, a plain loop over ``dataset[item]``)
in interleaved rounds (the machine is shared: interleaving spreads load changes over all loaders), and
``shards-res`` and ``jpeg-folder`` also through a DataLoader with 2 workers (batch 8; timed from the first
batch so worker start-up is excluded). All files are in the page cache (warm reads).
Also: bytes on disk and file counts of the shards vs the JPEG folders, and a cProfile breakdown of
``shards-res``.

    python bench/bench_loader.py                              # builds the dataset in a temporary folder
    python bench/bench_loader.py --work /tmp/iic-bench-loader  # keep/reuse the dataset

Writes ``bench/out/bench_loader-<date>.json`` and prints markdown tables.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import io
import os
import platform
import pstats
import shutil
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch
from benchutil import cli, run_cli, write_json
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from iic.model.data.clips import ClipConfig, ClipDataset, train_start

T = 16
SIZE = (128, 171)  # (H, W) stored and decoded
JPEG_QUALITY = 90


# ----------------------------------------------------------------------------------------------------------
# the dataset, built once with the real CLI


def build_dataset(work: Path, classes: int, per_class: int, frames: int) -> dict:
    """Synthetic AVIs -> shards (frames + DIS flow) -> JPEG folders; skipped when already there."""
    raw, data = work / "raw" / "synth", work / "ucf101"
    times = {}
    if not (data / "flow" / "manifest.csv").exists():
        times["synth"] = run_cli(
            [
                cli("iic-prep"),
                "synth",
                "--out",
                str(raw),
                "--classes",
                str(classes),
                "--per-class",
                str(per_class),
                "--frames",
                str(frames),
                "--size",
                "240x320",
            ]
        )
        times["extract"] = run_cli(
            [
                cli("iic-prep"),
                "extract",
                "--dataset",
                "ucf101",
                "--root",
                str(raw),
                "--out",
                str(work),
                "--size",
                f"{SIZE[0]}x{SIZE[1]}",
                "--workers",
                "2",
            ]
        )
        times["flow"] = run_cli(
            [cli("iic-prep"), "flow", "--data", str(data), "--method", "dis", "--workers", "2"]
        )
    gop = work / "raw" / "gop300"
    if not (gop / ".complete").exists():
        t0 = time.perf_counter()
        reencode_long_gop(raw / "UCF-101", gop)
        times["reencode_gop300"] = time.perf_counter() - t0
    jpeg = work / "jpeg"
    if not (jpeg / ".complete").exists():
        t0 = time.perf_counter()
        write_jpeg_folders(data, jpeg)
        times["jpeg_folders"] = time.perf_counter() - t0
    return times


def write_jpeg_folders(data: Path, jpeg: Path) -> None:
    """The same stored RGB frames as one JPEG file per frame (what the original code's folders hold)."""
    from iic.pipeline.reader import VideoStore

    store = VideoStore(data)
    for row in store.ok_rows():
        folder = jpeg / row.id
        folder.mkdir(parents=True, exist_ok=True)
        for t, frame in enumerate(store.frames(row.id)):
            Image.fromarray(frame).save(folder / f"image_{t + 1:05d}.jpg", quality=JPEG_QUALITY)
    store.close()
    (jpeg / ".complete").touch()


def reencode_long_gop(src: Path, dst: Path, gop: int = 300) -> None:
    """The same AVIs with a keyframe every ``gop`` frames (xvid's default maximum interval, as in UCF101's
    AVIs) instead of libavcodec's default 12: a random clip then decodes from the video's first frame."""
    from iic.pipeline.synth import write_video

    for path in sorted(src.rglob("*.avi")):
        with av.open(str(path)) as c:
            frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
        out = dst / path.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_video(out, frames, options={"g": str(gop)}, container_format="avi")
    (dst / ".complete").touch()


# ----------------------------------------------------------------------------------------------------------
# the two baselines, shipping the same sample dict as ClipDataset (uint8 (C, T, H, W) clips)


def residual_from_rgb(x: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 -> residual x[t] - x[t-1] with a wrap-around at t = 0 (the original code's
    ``torch.roll``), quantised as our shards store it so that both loaders ship the same thing."""
    d = x.astype(np.int16) - np.roll(x, 1, axis=0).astype(np.int16)
    return (np.floor_divide(d, 2) + 128).clip(0, 255).astype(np.uint8)


def to_sample(x: np.ndarray, index: int) -> dict:
    return {
        "rgb": torch.from_numpy(np.ascontiguousarray(x.transpose(3, 0, 1, 2))),
        "res": torch.from_numpy(np.ascontiguousarray(residual_from_rgb(x).transpose(3, 0, 1, 2))),
        "index": index,
    }


class JpegFolderClips(Dataset):
    """The original code's loader: 16 consecutive ``image_%05d.jpg`` files opened with PIL."""

    def __init__(self, root: Path, ids: list[str], lengths: np.ndarray) -> None:
        self.root, self.ids, self.lengths = Path(root), ids, lengths

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, item: tuple[int, int]) -> dict:
        index, seed = item
        start = train_start(int(self.lengths[index]), T, 1, np.random.default_rng(seed))
        folder = self.root / self.ids[index]
        frames = []
        for t in range(start, start + T):
            with Image.open(folder / f"image_{t + 1:05d}.jpg") as img:
                frames.append(np.asarray(img.convert("RGB")))
        return to_sample(np.stack(frames), index)


class VideoDecodeClips(Dataset):
    """Random clips decoded from the source videos with PyAV (seek to the keyframe before the start)."""

    def __init__(self, paths: list[Path], lengths: np.ndarray) -> None:
        self.paths, self.lengths = paths, lengths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: tuple[int, int]) -> dict:
        index, seed = item
        start = train_start(int(self.lengths[index]), T, 1, np.random.default_rng(seed))
        return to_sample(self.decode(self.paths[index], start), index)

    @staticmethod
    def decode(path: Path, start: int) -> np.ndarray:
        out = np.empty((T, *SIZE, 3), np.uint8)
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_count = 1  # one worker = one core
            fps = stream.average_rate
            to_pts = lambda i: int(round(i / fps / stream.time_base))  # noqa: E731
            container.seek(to_pts(start), stream=stream, backward=True, any_frame=False)
            n = 0
            for frame in container.decode(stream):
                i = int(round(frame.pts * stream.time_base * fps))
                if i < start:
                    continue
                out[n] = frame.reformat(width=SIZE[1], height=SIZE[0], format="rgb24").to_ndarray()
                n += 1
                if n == T:
                    break
        if n < T:
            raise RuntimeError(f"{path}: decoded {n} of {T} frames from frame {start}")
        return out


def keyframe_interval(path: Path) -> float:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        keys = [p.pts for p in c.demux(s) if p.is_keyframe and p.pts is not None]
        frames = s.frames or 0
    return frames / max(len(keys), 1)


# ----------------------------------------------------------------------------------------------------------
# timing


def time_loop(dataset: Dataset, items: list[tuple[int, int]]) -> float:
    t0 = time.perf_counter()
    for item in items:
        dataset[item]
    return time.perf_counter() - t0


def time_loader(
    dataset: Dataset, items: list[tuple[int, int]], workers: int, batch: int
) -> tuple[float, int]:
    """Seconds and clips after the first batch (worker start-up and the first fill excluded)."""
    loader = DataLoader(dataset, batch_size=batch, sampler=items, num_workers=workers, drop_last=True)
    it = iter(loader)
    next(it)
    t0, clips = time.perf_counter(), 0
    for b in it:
        clips += b["rgb"].shape[0]
    return time.perf_counter() - t0, clips


def profile_shards(dataset: ClipDataset, items: list[tuple[int, int]]) -> tuple[str, dict]:
    """cProfile of ``shards-res`` samples, with the self time grouped: JPEG decode, HDF5, copies."""
    prof = cProfile.Profile()
    prof.enable()
    for item in items:
        dataset[item]
    prof.disable()
    stats = pstats.Stats(prof)
    groups = {"jpeg_decode": 0.0, "hdf5": 0.0, "copies_transposes": 0.0, "other": 0.0}
    for (file, _, name), (_, _, tottime, _, _) in stats.stats.items():
        if "decode_jpeg" in name:  # decode_jpegs: simplejpeg (not seen by cProfile) + the out[i] copy
            groups["jpeg_decode"] += tottime
        elif "h5py" in file or "h5py" in name or name.startswith("<method 'read'") or "_selector" in file:
            groups["hdf5"] += tottime
        elif any(k in name for k in ("ascontiguousarray", "tobytes", "from_numpy", "numpy.empty")) or (
            name == "_read" and file.endswith("clips.py")
        ):
            groups["copies_transposes"] += tottime  # _read's self time = the fancy-index copy
        else:
            groups["other"] += tottime
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(14)
    return s.getvalue(), groups


def breakdown_shards(dataset: ClipDataset, items: list[tuple[int, int]]) -> dict:
    """Manual per-stage timing of a ``shards-res`` sample (ms per clip): the two HDF5 reads, the 16 JPEG
    decodes into the output array, the index + HWC->CHW transpose copy, per modality."""
    import simplejpeg

    from iic.pipeline.format import slot_name

    store = dataset.store
    acc = {"hdf5_read": 0.0, "jpeg_decode": 0.0, "index_copy": 0.0, "transpose_copy": 0.0}
    for index, seed in items:
        row = dataset.rows[index]
        start = train_start(int(dataset.lengths[index]), T, 1, np.random.default_rng(seed))
        frames = np.arange(start, start + T)
        for m in ("rgb", "res"):
            t0 = time.perf_counter()
            group = store._file(row.shard)[slot_name(row.slot)]
            if f"{m}_offsets" not in group:  # residuals derived from the frames (the default): no stream
                continue
            offsets = group[f"{m}_offsets"][start : start + T + 1]
            blob = group[m][offsets[0] : offsets[-1]].tobytes()
            t1 = time.perf_counter()
            offsets = offsets - offsets[0]
            x = np.stack(
                [
                    simplejpeg.decode_jpeg(blob[offsets[i] : offsets[i + 1]], colorspace="RGB")
                    for i in range(T)
                ]
            )
            t2 = time.perf_counter()
            x = x[frames - start]
            t3 = time.perf_counter()
            torch.from_numpy(np.ascontiguousarray(x.transpose(3, 0, 1, 2)))
            t4 = time.perf_counter()
            for k, dt in zip(acc, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                acc[k] += dt
    return {k: 1000 * v / len(items) for k, v in acc.items()}


def disk_usage(folder: Path) -> dict:
    files = [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")]
    return {
        "allocated_bytes": sum(p.stat().st_blocks * 512 for p in files),
        "apparent_bytes": sum(p.stat().st_size for p in files),
        "files": len(files),
    }


def machine() -> dict:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
        "?",
    )
    mem = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/meminfo") if line.startswith("MemTotal")), "?"
    )
    return {
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "mem": mem,
        "load": os.getloadavg(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyav": av.__version__,
        "pillow": Image.__version__,
    }


# ----------------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--classes", type=int, default=4)
    ap.add_argument("--per-class", type=int, default=6, help="videos per class (4 x 6 = 24 videos)")
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--samples", type=int, default=300, help="per-worker samples per loader (PyAV: a third)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds the samples are split over")
    ap.add_argument("--loader-samples", type=int, default=400, help="samples per 2-worker DataLoader run")
    ap.add_argument("--profile-samples", type=int, default=200)
    ap.add_argument(
        "--work", type=Path, default=None, help="scratch folder to keep/reuse [default: temporary]"
    )
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "out")
    args = ap.parse_args()
    torch.set_num_threads(1)

    tmp = None if args.work else tempfile.mkdtemp(prefix="iic-bench-loader-")
    work = args.work or Path(tmp)
    try:
        build_times = build_dataset(work, args.classes, args.per_class, args.frames)
        data = work / "ucf101"
        res_ds = ClipDataset(data, 1, "train", ClipConfig(frames=T, modalities=("rgb", "res")))
        flow_ds = ClipDataset(data, 1, "train", ClipConfig(frames=T, modalities=("rgb", "flow")))
        ids = res_ds.video_ids
        lengths = res_ds.lengths - 1  # the flow view's usable length: every loader draws the same starts
        res_ds.lengths = flow_ds.lengths = lengths
        raw_root = work / "raw" / "synth"
        paths = [
            Path(r.path) if Path(r.path).is_absolute() else raw_root / "UCF-101" / r.path for r in res_ds.rows
        ]
        if not paths[0].exists():
            paths = [next(raw_root.rglob(Path(r.id).name + ".*")) for r in res_ds.rows]
        rgb_ds = ClipDataset(data, 1, "train", ClipConfig(frames=T, modalities=("rgb",)))
        rgb_ds.lengths = lengths
        loaders = {
            "shards-res": res_ds,
            "shards-rgb": rgb_ds,
            "shards-flow": flow_ds,
            "jpeg-folder": JpegFolderClips(work / "jpeg", ids, lengths),
            "pyav-decode": VideoDecodeClips(paths, lengths),
            "pyav-decode-gop300": VideoDecodeClips(
                [work / "raw" / "gop300" / p.relative_to(raw_root / "UCF-101") for p in paths], lengths
            ),
        }
        rng = np.random.default_rng(0)
        n_per = {k: args.samples // (3 if k.startswith("pyav") else 1) for k in loaders}
        items = {
            k: [(int(rng.integers(len(ids))), int(rng.integers(2**62))) for _ in range(n)]
            for k, n in n_per.items()
        }

        # the loaders agree: same frames (JPEG folders are the shard frames re-encoded; PyAV re-decodes)
        check = {}
        a = res_ds[items["shards-res"][0]]
        for k in ("jpeg-folder", "pyav-decode", "pyav-decode-gop300"):
            b = loaders[k][items["shards-res"][0]]
            check[k] = float((a["rgb"].float() - b["rgb"].float()).abs().mean())
        print("mean |rgb difference| vs shards-res on one clip:", {k: round(v, 2) for k, v in check.items()})

        for name, ds in loaders.items():  # warm-up: open files, fill the page cache
            time_loop(ds, items[name][:8])
        seconds = {k: [] for k in loaders}
        for r in range(args.rounds):
            for name, ds in loaders.items():
                chunk = items[name][r :: args.rounds]
                seconds[name].append((len(chunk), time_loop(ds, chunk)))
        per_worker = {k: sum(n for n, _ in v) / sum(s for _, s in v) for k, v in seconds.items()}
        rounds = {k: [round(n / s, 1) for n, s in v] for k, v in seconds.items()}

        loader_items = [
            (int(rng.integers(len(ids))), int(rng.integers(2**62))) for _ in range(args.loader_samples)
        ]
        two_workers = {}
        for name in ("shards-res", "jpeg-folder"):
            s, clips = time_loader(loaders[name], loader_items, workers=2, batch=8)
            two_workers[name] = clips / s

        text, groups = profile_shards(res_ds, items["shards-res"][: args.profile_samples])
        stages = breakdown_shards(res_ds, items["shards-res"][: args.profile_samples])
        disk = {
            "shards_frames": disk_usage(data / "frames"),
            "shards_flow": disk_usage(data / "flow"),
            "jpeg_folders": disk_usage(work / "jpeg"),
        }
        n_frames = int(sum(r.n_frames for r in res_ds.store.ok_rows()))
        gop = keyframe_interval(paths[0])
        gop_long = keyframe_interval(loaders["pyav-decode-gop300"].paths[0])
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    ratio = {k: per_worker["shards-res"] / v for k, v in per_worker.items()}
    print(
        f"\n{len(ids)} training videos x ~{args.frames} frames, 320x240 mpeg4 AVI "
        f"(keyframe every {gop:.0f} frames; "
        f"gop300 copies: every {gop_long:.0f}), "
        f"stored {SIZE[1]}x{SIZE[0]}; clips of {T} frames at random starts; load {os.getloadavg()[0]:.2f}\n"
    )
    print(
        "| loader | samples | clips/s per worker | per round | shards-res / this "
        "| clips/s, DataLoader 2 workers |"
    )
    print("|---|---|---|---|---|---|")
    for k in loaders:
        dl = f"{two_workers[k]:.1f}" if k in two_workers else "-"
        print(f"| {k} | {n_per[k]} | {per_worker[k]:.1f} | {rounds[k]} | {ratio[k]:.2f}x | {dl} |")
    print(
        f"\ntargets: shards-res >= 2x jpeg-folder: {ratio['jpeg-folder']:.2f}x "
        f"({'met' if ratio['jpeg-folder'] >= 2 else 'missed'}); shards-res >= 10x pyav-decode: "
        f"{ratio['pyav-decode']:.1f}x ({'met' if ratio['pyav-decode'] >= 10 else 'missed'}), gop300 copies: "
        f"{ratio['pyav-decode-gop300']:.1f}x ({'met' if ratio['pyav-decode-gop300'] >= 10 else 'missed'})"
    )
    print("\n| storage | files | allocated MB | apparent MB | KB/frame |")
    print("|---|---|---|---|---|")
    for k, d in disk.items():
        print(
            f"| {k} | {d['files']} | {d['allocated_bytes'] / 1e6:.1f} | {d['apparent_bytes'] / 1e6:.1f} | "
            f"{d['apparent_bytes'] / 1e3 / n_frames:.1f} |"
        )
    print(
        f"\nshards-res, ms per clip by stage (manual timing, {args.profile_samples} clips, both modalities):",
        {k: round(v, 2) for k, v in stages.items()},
    )
    total = sum(groups.values())
    print("cProfile self time shares:", {k: f"{100 * v / total:.0f}%" for k, v in groups.items()})
    print(text)

    result = {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "build_seconds": build_times,
        "videos": len(ids),
        "frames_per_video": args.frames,
        "clip": [T, *SIZE],
        "keyframe_interval": gop,
        "keyframe_interval_gop300": gop_long,
        "per_worker_clips_per_s": per_worker,
        "per_round_clips_per_s": rounds,
        "samples": n_per,
        "dataloader_2_workers_clips_per_s": two_workers,
        "ratio_shards_res_over": ratio,
        "agreement_mean_abs": check,
        "disk": disk,
        "stored_frames": n_frames,
        "stage_ms_per_clip": stages,
        "profile_self_seconds": groups,
        "profile_top": text,
    }
    write_json(args.json, "bench_loader", result)


if __name__ == "__main__":
    main()
