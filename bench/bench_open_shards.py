"""What a store's open shards cost and what closing them costs, run by hand (BENCHMARKS.md, "Open shards").

A `VideoStore` (one per loader worker) keeps shard files open and, per video it has read, the stream handles
with their offsets and CRC32s, so that a second read of a video costs no metadata lookup. Measured in one
process on a processed dataset:

* memory (resident set) and time per opened shard, and per video whose stream was looked up, with no limit;
* clips/s of `ClipDataset` (16 frames, rgb + res, random starts, the same list for both) with the default
  ``MAX_OPEN_SHARDS`` and with 2 open at most (so most reads reopen a shard and re-read its offsets, as at
  Kinetics scale, where ~10,000 shards outnumber any limit), in interleaved rounds.

    python bench/bench_open_shards.py --data /tmp/iic-learning/data/ucf101 [--rounds 6] [--per-round 200]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from iic.model.data.clips import ClipConfig, ClipDataset
from iic.pipeline import reader
from iic.pipeline.reader import VideoStore


def rss_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def footprint(data: Path) -> dict:
    limit, reader.MAX_OPEN_SHARDS = reader.MAX_OPEN_SHARDS, 10**9
    try:
        store = VideoStore(data)
        rows = store.ok_rows()
        names = sorted({r.shard for r in rows})
        r0, t0 = rss_mib(), time.perf_counter()
        for name in names:
            store._file(name)
        r1, t1 = rss_mib(), time.perf_counter()
        for r in rows:
            store._stream(r, "rgb")
        r2, t2 = rss_mib(), time.perf_counter()
        store.close()
    finally:
        reader.MAX_OPEN_SHARDS = limit
    return {
        "shards": len(names),
        "videos": len(rows),
        "kib_per_open_shard": round(1024 * (r1 - r0) / len(names)),
        "ms_per_open": round(1000 * (t1 - t0) / len(names), 2),
        "kib_per_cached_stream": round(1024 * (r2 - r1) / len(rows), 1),
        "ms_per_stream_lookup": round(1000 * (t2 - t1) / len(rows), 2),
    }


class Loader:
    """One `ClipDataset` read with a given open-shard limit (its store, and so its caches, kept across
    rounds); counts the shard opens."""

    def __init__(self, data: Path, limit: int) -> None:
        self.limit, self.opens = limit, 0
        self.ds = ClipDataset(data, 1, "train", ClipConfig(frames=16, modalities=("rgb", "res")))
        store, real_file = self.ds.store, self.ds.store._file

        def counting(rel: str) -> object:
            self.opens += rel not in store._files
            return real_file(rel)

        store._file = counting

    def clips_per_s(self, items: list[int]) -> float:
        saved, reader.MAX_OPEN_SHARDS = reader.MAX_OPEN_SHARDS, self.limit
        try:
            t0 = time.perf_counter()
            for i in items:
                self.ds[(i, 0)]  # train items are (video index, epoch)
            return len(items) / (time.perf_counter() - t0)
        finally:
            reader.MAX_OPEN_SHARDS = saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--per-round", type=int, default=200)
    args = ap.parse_args()
    result = {"footprint": footprint(args.data), "default_limit": reader.MAX_OPEN_SHARDS}
    loaders = {"default": Loader(args.data, reader.MAX_OPEN_SHARDS), "2 open": Loader(args.data, 2)}
    n = len(loaders["default"].ds)
    rng = np.random.default_rng(0)
    for loader in loaders.values():  # warm: every video read once (what a store holds after its first epoch)
        loader.clips_per_s(list(range(n)))
        loader.opens = 0
    rates: dict[str, list[float]] = {k: [] for k in loaders}
    for r in range(args.rounds):
        items = rng.integers(n, size=args.per_round).tolist()
        for name in list(loaders) if r % 2 == 0 else list(loaders)[::-1]:
            rates[name].append(loaders[name].clips_per_s(items))
    reads = args.rounds * args.per_round
    result["clips_per_s"] = {k: round(float(np.median(v)), 1) for k, v in rates.items()}
    result["shard_opens_per_read"] = {k: round(loaders[k].opens / reads, 3) for k in loaders}
    result["ratio_2_open_over_default"] = round(
        result["clips_per_s"]["2 open"] / result["clips_per_s"]["default"], 3
    )
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
