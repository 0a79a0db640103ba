"""Planning and manifest work for a Kinetics-sized list, without videos; results go to BENCHMARKS.md.

Generates official-format annotation CSVs (train / validate / test, ``--rows`` in all, 700 labels with
spaces, parentheses and apostrophes) and, with ``--files F``, an empty placeholder file in a label folder for
a share F of the listed clips (the rest are "missing"), then times, in one process:

* ``index``     `load_index("kinetics700", ..., unlabelled=True)`: CSV parsing, one scan of each split folder,
                entries sorted by id (what ``iic-prep extract`` does before any decoding);
* ``plan``      `plan_shards` (64 videos a shard, subfolders above 1000 shards);
* ``manifest``  one `ManifestRow` per video (as the shards return them), `write_manifest`, then `VideoStore`
                on the result (reads the manifest, indexes it by id) and the train list (`ok_rows`), which is
                what every training / evaluation run does first.

Peak memory is the process's peak resident set (``ru_maxrss``) after each phase (it only grows).

With ``--identity-shards N``, also ``identity``: N shards of 64 videos whose streams hold 300 one-byte
"frames" (offsets and CRC32s as real ones), then `VideoStore.identity` (what ``iic train`` records for
--resume and the feature cache keys on: one stored digest per shard), timed per video, beside
`VideoStore.legacy_identity` (the form before: one read of the offsets and CRC32s per video); then asked
again by a new store of the same unchanged folder (a stat of each file: the process keeps what it computed).

    python bench/bench_k400_plan.py --work /tmp/k400-plan                  # 650,000 rows, no files
    python bench/bench_k400_plan.py --work /tmp/k400-plan --files 0.95     # + 617,500 empty files

Writes ``bench/out/bench_k400_plan-<date>.json``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from iic.pipeline.datasets import load_index
from iic.pipeline.extract import plan_shards
from iic.pipeline.format import FORMAT_VERSION, ManifestRow, format_splits, write_manifest
from iic.pipeline.kinetics import video_name
from iic.pipeline.reader import VideoStore
from iic.pipeline.writer import ShardWriter

sys.path.insert(0, str(Path(__file__).parent))
from benchutil import write_json  # noqa: E402

SHARES = {"train": 0.89, "validate": 0.055, "test": 0.055}  # Kinetics-700's proportions, roughly
WORDS = (
    "playing",
    "passing American football",
    "tying",
    "bow tie's knot",
    "(in game)",
    "riding",
    "mountain bike",
    "juggling",
    "soccer ball",
    "making",
    "tea",
    "rock scissors paper",
    "dunking basketball",
)


def labels(n: int) -> list[str]:
    rng = np.random.default_rng(1)
    out = set()
    while len(out) < n:
        out.add(" ".join(rng.choice(WORDS, 2, replace=False)) + f" {len(out)}")
    return sorted(out)


def generate(root: Path, rows: int, n_labels: int, files: float) -> dict:
    """The CSVs (and placeholder files); returns counts and the seconds it took."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    names = labels(n_labels)
    ann = root / "kinetics700"
    ann.mkdir(parents=True)
    alphabet = np.array(list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"))
    made = 0
    for split, share in SHARES.items():
        n = (
            int(rows * share)
            if split != "test"
            else rows - sum(int(rows * s) for s in list(SHARES.values())[:2])
        )
        ids = ["".join(r) for r in alphabet[rng.integers(0, len(alphabet), (n, 11))]]
        starts = rng.integers(0, 300, n)
        lab = rng.integers(0, n_labels, n)
        keep = rng.random(n) < files
        (root / split).mkdir()
        with open(ann / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(
                ["label", "youtube_id", "time_start", "time_end", "split"]
                if split != "test"
                else ["youtube_id", "time_start", "time_end", "split"]
            )
            for i in range(n):
                a, b = int(starts[i]), int(starts[i]) + 10
                w.writerow([names[lab[i]], ids[i], a, b, split] if split != "test" else [ids[i], a, b, split])
                if keep[i]:
                    folder = root / split / names[lab[i]] if split != "test" else root / split
                    folder.mkdir(exist_ok=True)
                    (folder / f"{video_name(ids[i], str(a), str(b))}.mp4").touch()
                    made += 1
    return {"seconds": time.perf_counter() - t0, "files": made}


def identity(data: Path, n_shards: int) -> dict:
    """Seconds per video of `VideoStore.identity` on generated shards (64 videos x 300 tiny frames each)."""
    rows = []
    frames = [b"x"] * 300
    for s in range(n_shards):
        shard = f"frames/shard-{s:05d}.h5"
        with ShardWriter(data / shard, {"kind": "frames"}) as w:
            part = [
                ManifestRow(f"train/{s:05d}_{v:02d}", "p", "c", 0, "1:train", shard, v, 300, "ok")
                for v in range(64)
            ]
            for r in part:
                w.add_stream(r.slot, "rgb", frames)
            w.commit(part)
        rows += part
    write_manifest(data / "manifest.csv", rows)
    (data / "dataset.json").write_text(
        json.dumps(
            {
                "format_version": FORMAT_VERSION,
                "dataset": "kinetics700",
                "size": {"short_side": 128},
                "classes": ["c"],
            }
        )
    )
    t0 = time.perf_counter()  # the form before per-shard digests (every video's items read), for the ratio
    VideoStore(data).legacy_identity()
    legacy = time.perf_counter() - t0
    t0 = time.perf_counter()
    first = VideoStore(data).identity()
    seconds = time.perf_counter() - t0
    t0 = time.perf_counter()  # what resume and each evaluation list and view pay after the first ask
    again = VideoStore(data)
    assert again.identity() == first
    repeat = time.perf_counter() - t0
    return {
        "identity_videos": len(rows),
        "identity_s": round(seconds, 3),
        "identity_ms_per_video": round(1000 * seconds / len(rows), 4),
        "legacy_identity_s": round(legacy, 2),
        "legacy_ms_per_video": round(1000 * legacy / len(rows), 3),
        "legacy_over_digests": round(legacy / seconds, 1),
        "identity_again_s": round(repeat, 3),
        "identity_again_ms_per_video": round(1000 * repeat / len(rows), 4),
    }


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="scratch folder (deleted first)")
    ap.add_argument("--rows", type=int, default=650_000)
    ap.add_argument("--labels", type=int, default=700)
    ap.add_argument("--files", type=float, default=0.0, help="share of listed clips given an (empty) file")
    ap.add_argument(
        "--identity-shards", type=int, default=0, help="also time VideoStore.identity on this many shards"
    )
    args = ap.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    raw, data = args.work / "raw", args.work / "data" / "kinetics700"
    gen = generate(raw, args.rows, args.labels, args.files)
    print(f"generated {args.rows} rows, {gen['files']} files in {gen['seconds']:.1f} s")
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}",
        "rows": args.rows,
        "labels": args.labels,
        "files": gen["files"],
        "generate_s": round(gen["seconds"], 1),
        "rss_start_mib": round(peak_mib(), 1),
    }

    t0 = time.perf_counter()
    index = load_index("kinetics700", raw, 1, unlabelled=True)
    result["index_s"], result["index_peak_mib"] = round(time.perf_counter() - t0, 2), round(peak_mib(), 1)
    t0 = time.perf_counter()
    plan = plan_shards(index, 64)
    result["plan_s"], result["plan_peak_mib"] = round(time.perf_counter() - t0, 2), round(peak_mib(), 1)
    result["videos"], result["shards"] = len(index.entries), len(plan)
    result["largest_folder"] = max(
        sum(1 for n, _ in plan if n.rsplit("/", 1)[0] == d) for d in {n.rsplit("/", 1)[0] for n, _ in plan}
    )

    # which placeholder files exist (the bench's own stat calls, not timed: extraction learns it by opening
    # them)
    found = {e.id for e in index.entries if (raw / e.path).exists()} if gen["files"] else set()
    t0 = time.perf_counter()
    rows = [
        ManifestRow(
            e.id,
            e.path,
            e.class_name,
            e.label,
            format_splits(e.splits),
            shard,
            slot,
            300 if e.id in found else 0,
            "ok" if e.id in found else "failed",
            "" if e.id in found else "file not found",
        )
        for shard, entries in plan
        for slot, e in enumerate(entries)
    ]
    data.mkdir(parents=True)
    write_manifest(data / "manifest.csv", rows)
    (data / "dataset.json").write_text(
        json.dumps(
            {
                "format_version": FORMAT_VERSION,
                "dataset": "kinetics700",
                "size": {"short_side": 128},
                "classes": list(index.classes),
            }
        )
    )
    del rows, plan, index, found
    store = VideoStore(data)
    train = store.ok_rows(1, "train")
    result["manifest_s"], result["manifest_peak_mib"] = (
        round(time.perf_counter() - t0, 2),
        round(peak_mib(), 1),
    )
    result["manifest_mib"] = round((data / "manifest.csv").stat().st_size / 2**20, 1)
    result["train_ok"] = len(train)
    if args.identity_shards:
        result.update(identity(args.work / "identity" / "kinetics700", args.identity_shards))
    print(json.dumps(result, indent=1))
    write_json(Path(__file__).parent / "out", "bench_k400_plan", result)


if __name__ == "__main__":
    main()
