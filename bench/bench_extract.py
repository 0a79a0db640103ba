"""Benchmark of the frames stage (``iic-prep extract``), run by hand; results go to BENCHMARKS.md.

On the same videos, for each worker count:

* ``decode``  PyAV decode + convert/resize to 128x171 RGB (`iic.pipeline.decode.iter_frames`), nothing stored;
* ``extract`` the real stage (`iic.pipeline.extract.extract`, what ``iic-prep extract`` calls): decode,
  residuals, JPEG q90 of both streams, HDF5 shards, manifest;
* ``ffmpeg``  Debian's ffmpeg writing a JPEG frame folder per video at the same size
  (``ffmpeg -i in.avi -vf scale=171:128 -q:v 2 out/%05d.jpg``), ``workers`` videos at a time;

and the bytes on disk (allocated blocks, as ``du``) and file count of the shards vs the JPEG folders.
Note that the shards hold two streams (RGB and residual) while the JPEG folders hold RGB only.

    python bench/bench_extract.py                      # 40 synthetic 320x240 mpeg4 AVIs x 150 frames
    python bench/bench_extract.py --videos 8 --frames 60 --workers 1,2 --profile

Writes ``bench/out/bench_extract-<date>.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import io
import json
import os
import platform
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from joblib import Parallel, delayed

from iic.pipeline.datasets import load_index
from iic.pipeline.decode import iter_frames
from iic.pipeline.extract import ExtractConfig, extract, extract_shard
from iic.pipeline.parallel import ParallelConfig, threads_per_worker

SIZE = (128, 171)  # (H, W)


# ----------------------------------------------------------------------------------------------------------
# input: a UCF101-like layout of synthetic 320x240 MPEG-4 AVIs


def _frames(n: int, seed: int, height: int = 240, width: int = 320) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [60 + 120 * xx / width, 60 + 120 * yy / height, np.full_like(xx, 40 + 100 * rng.random())], -1
    )
    texture = (
        rng.normal(0, 14, (height // 8 + 1, width // 8 + 1, 3)).repeat(8, 0).repeat(8, 1)[:height, :width]
    )
    img = (base + texture).clip(0, 255).astype(np.uint8)
    out = np.empty((n, height, width, 3), np.uint8)
    vx, vy = rng.uniform(-3, 3, 2)
    for t in range(n):
        shifted = np.roll(img, (int(t * vy), int(t * vx)), axis=(0, 1))  # camera pan
        cx, cy = (width / 2 + 80 * np.sin(t / 9 + seed)), (height / 2 + 50 * np.cos(t / 7))
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 < 30**2
        shifted[disc] = (230, 200, 40)
        out[t] = shifted
    return out


def _write_avi(path: Path, frames: np.ndarray, fps: int = 25) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=fps)
        s.height, s.width = frames.shape[1:3]
        s.pix_fmt = "yuv420p"
        s.bit_rate = 600_000  # UCF101's AVIs are MPEG-4 (xvid) at a few hundred kbit/s
        for t, img in enumerate(frames):
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts, f.time_base = t, Fraction(1, fps)
            c.mux(s.encode(f))
        c.mux(s.encode())


def make_dataset(root: Path, videos: int, frames: int) -> Path:
    classes = [f"Class{i}" for i in range(4)]
    rels = [f"{classes[i % 4]}/v_{classes[i % 4]}_g{i:02d}_c01.avi" for i in range(videos)]
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "classInd.txt").write_text("".join(f"{i + 1} {c}\r\n" for i, c in enumerate(classes)))
    (lists / "trainlist01.txt").write_text(
        "".join(f"{r} {classes.index(r.split('/')[0]) + 1}\r\n" for r in rels[::2])
    )
    (lists / "testlist01.txt").write_text("".join(f"{r}\r\n" for r in rels[1::2]))
    for i, rel in enumerate(rels):
        _write_avi(root / "UCF-101" / rel, _frames(frames, seed=i))
    return root


# ----------------------------------------------------------------------------------------------------------
# the three contenders


def _decode_one(path: Path, threads: int) -> int:
    return sum(1 for _ in iter_frames(path, SIZE, threads))


def bench_decode(paths: list[Path], workers: int) -> tuple[float, int]:
    threads = threads_per_worker(workers)
    t0 = time.perf_counter()
    if workers == 1:
        n = sum(_decode_one(p, threads) for p in paths)
    else:
        n = sum(Parallel(n_jobs=workers)(delayed(_decode_one)(p, threads) for p in paths))
    return time.perf_counter() - t0, n


def bench_extract(root: Path, out: Path, workers: int, shard_size: int) -> tuple[float, int, object]:
    shutil.rmtree(out, ignore_errors=True)
    cfg = ExtractConfig(
        dataset="ucf101",
        root=root,
        out=out,
        size=SIZE,
        shard_size=shard_size,
        parallel=ParallelConfig(workers=workers),
    )
    t0 = time.perf_counter()
    summary = extract(cfg)
    return time.perf_counter() - t0, summary.units, summary


def _ffmpeg_one(ffmpeg: str, src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            ffmpeg,
            "-nostdin",
            "-loglevel",
            "error",
            "-y",
            "-i",
            str(src),
            "-vf",
            f"scale={SIZE[1]}:{SIZE[0]}",
            "-q:v",
            "2",
            str(dst / "%05d.jpg"),
        ],
        check=True,
    )


def bench_ffmpeg(ffmpeg: str, paths: list[Path], root: Path, out: Path, workers: int) -> tuple[float, int]:
    shutil.rmtree(out, ignore_errors=True)
    dsts = [out / p.relative_to(root).with_suffix("") for p in paths]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:  # each task is its own ffmpeg process
        list(pool.map(lambda a: _ffmpeg_one(ffmpeg, *a), zip(paths, dsts, strict=True)))
    return time.perf_counter() - t0, sum(len(list(d.glob("*.jpg"))) for d in dsts)


def disk_usage(folder: Path) -> tuple[int, int, int]:
    """(allocated bytes as du counts them, apparent bytes, number of files) under ``folder``."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    return sum(p.stat().st_blocks * 512 for p in files), sum(p.stat().st_size for p in files), len(files)


def stream_bytes(data: Path) -> dict[str, int]:
    """Bytes of the RGB and residual JPEG streams (offsets included) inside the shards."""
    import h5py

    total = {"rgb": 0, "res": 0}
    for shard in sorted((data / "frames").glob("shard-*.h5")):
        with h5py.File(shard, "r") as f:
            for group in f["videos"].values():
                for m in total:
                    if m in group:  # residuals are derived from the frames unless --store-residuals
                        total[m] += group[m].nbytes + group[f"{m}_offsets"].nbytes
    return total


def profile_extract(root: Path, out: Path, n_videos: int) -> str:
    """cProfile of one shard task in this process (1 worker): where the time of extract goes."""
    index = load_index("ucf101", root, 1)
    cfg = ExtractConfig(dataset="ucf101", root=root, out=out, size=SIZE, parallel=ParallelConfig(workers=1))
    prof = cProfile.Profile()
    prof.enable()
    extract_shard("frames/shard-00000.h5", list(index.entries[:n_videos]), index.video_root, cfg)
    prof.disable()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(12)
    return s.getvalue()


# ----------------------------------------------------------------------------------------------------------


def machine() -> dict:
    cpu = "unknown"
    try:
        cpu = next(
            line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    ffmpeg = shutil.which("ffmpeg")
    ffv = (
        subprocess.run([ffmpeg, "-version"], capture_output=True, text=True).stdout.split("\n")[0]
        if ffmpeg
        else None
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "pyav": av.__version__,
        "ffmpeg": ffv,
        "platform": platform.platform(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--videos", type=int, default=40)
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    ap.add_argument(
        "--shard-size", type=int, default=4, help="videos per shard (enough shards to feed every worker)"
    )
    ap.add_argument("--repeat", type=int, default=1, help="runs per measurement; the best is kept")
    ap.add_argument("--profile", action="store_true", help="also cProfile one shard task")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder [default: a temporary one]")
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "out")
    args = ap.parse_args()

    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        sys.exit("ffmpeg not found: apt-get install -y ffmpeg")
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-extract-"))
    root = work / "raw"
    if not (root / "UCF-101").exists():
        t0 = time.perf_counter()
        make_dataset(root, args.videos, args.frames)
        print(
            f"made {args.videos} videos x {args.frames} frames in {time.perf_counter() - t0:.1f} s",
            file=sys.stderr,
        )
    paths = sorted((root / "UCF-101").rglob("*.avi"))
    src_bytes = sum(p.stat().st_size for p in paths)

    results = []
    for w in (int(x) for x in args.workers.split(",")):
        if w > 1:
            Parallel(n_jobs=w)(delayed(abs)(i) for i in range(w))  # warm the loky pool for every contender
        best = {}
        for _ in range(args.repeat):
            for name, run in (
                ("decode", lambda n_workers: bench_decode(paths, n_workers)),
                (
                    "extract",
                    lambda n_workers: bench_extract(root, work / "shards", n_workers, args.shard_size)[:2],
                ),
                (
                    "ffmpeg",
                    lambda n_workers: bench_ffmpeg(ffmpeg, paths, root / "UCF-101", work / "jpeg", n_workers),
                ),
            ):
                sec, n = run(w)
                if name not in best or sec < best[name][0]:
                    best[name] = (sec, n)
        row = {"workers": w}
        for name, (sec, n) in best.items():
            row[name] = {
                "seconds": round(sec, 3),
                "frames": n,
                "fps": round(n / sec, 1),
                "fps_per_worker": round(n / sec / w, 1),
            }
        row["extract_vs_decode"] = round(row["extract"]["fps"] / row["decode"]["fps"], 3)
        row["extract_vs_ffmpeg"] = round(row["extract"]["fps"] / row["ffmpeg"]["fps"], 3)
        results.append(row)
        print(f"workers={w}: {json.dumps(row)}", file=sys.stderr)

    shards_du, shards_bytes, shards_files = disk_usage(work / "shards" / "ucf101")
    jpeg_du, jpeg_bytes, jpeg_files = disk_usage(work / "jpeg")
    streams = stream_bytes(work / "shards" / "ucf101")
    disk = {
        "source_bytes": src_bytes,
        "shards": {"du": shards_du, "bytes": shards_bytes, "files": shards_files, **streams},
        "jpeg_folders": {"du": jpeg_du, "bytes": jpeg_bytes, "files": jpeg_files},
    }
    profile = profile_extract(root, work / "profile", min(8, len(paths))) if args.profile else None

    report = {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "videos": len(paths),
        "frames_per_video": args.frames,
        "size": list(SIZE),
        "shard_size": args.shard_size,
        "results": results,
        "disk": disk,
        "profile": profile,
    }
    args.json.mkdir(parents=True, exist_ok=True)
    out = args.json / f"bench_extract-{report['date']}.json"
    out.write_text(json.dumps(report, indent=2))

    print(
        f"\n{len(paths)} videos x {args.frames} frames, 320x240 mpeg4 -> {SIZE[0]}x{SIZE[1]}; "
        f"{machine()['cores']} cores\n"
    )
    print(
        "| workers | decode+convert f/s (per worker) | extract f/s (per worker) "
        "| ffmpeg JPEG dirs f/s (per worker) | extract / decode | extract / ffmpeg |"
    )
    print("|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['workers']} | {r['decode']['fps']:.0f} ({r['decode']['fps_per_worker']:.0f}) "
            f"| {r['extract']['fps']:.0f} ({r['extract']['fps_per_worker']:.0f}) "
            f"| {r['ffmpeg']['fps']:.0f} ({r['ffmpeg']['fps_per_worker']:.0f}) "
            f"| {r['extract_vs_decode']:.2f} | {r['extract_vs_ffmpeg']:.2f} |"
        )
    print("\n| output | du (MiB) | bytes (MiB) | files |\n|---|---|---|---|")
    for name, d in (
        ("shards (rgb stream; residuals derived on read unless --store-residuals)", disk["shards"]),
        ("ffmpeg JPEG folders (rgb only)", disk["jpeg_folders"]),
    ):
        print(f"| {name} | {d['du'] / 2**20:.1f} | {d['bytes'] / 2**20:.1f} | {d['files']} |")
    print(f"| of which the RGB stream | | {streams['rgb'] / 2**20:.1f} | |")
    print(f"| of which the residual stream | | {streams['res'] / 2**20:.1f} | |")
    print(f"| source AVIs | | {src_bytes / 2**20:.1f} | {len(paths)} |")
    if profile:
        print("\n" + profile)
    print(f"\nJSON: {out}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
