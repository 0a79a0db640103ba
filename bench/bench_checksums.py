"""What the per-frame CRC32 checks cost the loader, run by hand (numbers in docs/format.md, "Checksums").

The same clips (16 frames at seeded random starts) through `ClipDataset` from a dataset with checksums and
from a copy of it with the ``*_crc32`` datasets removed (read unverified, as shards written before them),
timed in one process in interleaved rounds (alternating order) so that a shared machine's load changes hit
both alike. Reports clips/s per worker and the ratio with / without, for rgb + res, rgb, rgb + flow.

    python bench/bench_checksums.py --data /tmp/iic-bench-loader/ucf101   # e.g. bench_loader.py's --work
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from iic.model.data.clips import ClipConfig, ClipDataset
from iic.pipeline.format import CRC_SUFFIX


def strip_checksums(data: Path, dest: Path) -> Path:
    shutil.copytree(data, dest)
    for shard in dest.glob("*/shard-*.h5"):
        with h5py.File(shard, "a") as f:
            for group in f["videos"].values():
                for name in [n for n in group if n.endswith(CRC_SUFFIX)]:
                    del group[name]
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="a processed dataset with checksums (and flow)")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--per-round", type=int, default=100, help="clips per loader per round")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="iic-bench-crc-") as tmp:
        bare = strip_checksums(args.data, Path(tmp) / args.data.name)
        for mods in (("rgb", "res"), ("rgb",), ("rgb", "flow")):
            ds = {
                name: ClipDataset(path, 1, "train", ClipConfig(frames=16, modalities=mods))
                for name, path in (("without", bare), ("with", args.data))
            }
            rng = np.random.default_rng(0)
            items = [
                (int(rng.integers(ds["with"].n_videos)), int(rng.integers(2**62)))
                for _ in range(args.rounds * args.per_round)
            ]
            for d in ds.values():  # warm-up: open files, fill the page cache
                for item in items[:10]:
                    d[item]
            total, ratios = {k: 0.0 for k in ds}, []
            for r in range(args.rounds):
                chunk = items[r * args.per_round : (r + 1) * args.per_round]
                took = {}
                for name in list(ds) if r % 2 == 0 else list(ds)[::-1]:
                    t0 = time.perf_counter()
                    for item in chunk:
                        ds[name][item]
                    took[name] = time.perf_counter() - t0
                    total[name] += took[name]
                ratios.append(took["without"] / took["with"])
            cps = {k: len(items) / v for k, v in total.items()}
            print(
                f"{' + '.join(mods):10} clips/s per worker: without checksums {cps['without']:.1f}, with "
                f"{cps['with']:.1f}: x{cps['with'] / cps['without']:.3f} "
                f"(rounds: median x{np.median(ratios):.3f}, range {min(ratios):.3f}-{max(ratios):.3f})"
            )


if __name__ == "__main__":
    main()
