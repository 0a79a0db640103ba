"""Runs side by side on CPU (`model/sweep.py`): is training two runs at once, one thread each, faster than one
after another with every thread? Run by hand on an idle machine; figures in BENCHMARKS.md ("Runs side by
side").

Two `tiny` IIC runs (seeds 0 and 1, ``--epochs`` each, no loader workers, no monitor) on the learning
benchmark's data, trained (a) one after another in this process with ``--threads`` threads each and (b) side
by side in two worker processes with one thread each; then (a) again, so a change of the machine's load shows
as a difference between the two (a) timings. Reports wall seconds and the ratio (a) / (b).

    python bench/bench_sweep.py --data /tmp/iic-learning/data/ucf101 --work /tmp/iic-bench-sweep [--epochs 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import shutil
import time
from pathlib import Path

from benchutil import write_json

from iic.model.config import build_config
from iic.model.run.sweep import cpu_cores, train_all


def timed(data: Path, out: Path, epochs: int, threads: int, jobs: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    cfgs = [
        build_config(
            "tiny",
            data=data,
            out=out / f"s{seed}",
            seed=seed,
            epochs=epochs,
            threads=threads,
            workers=0,
            monitor_every=0,
        )
        for seed in (0, 1)
    ]
    t0 = time.perf_counter()
    train_all(cfgs, jobs)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/iic-bench-sweep"))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=cpu_cores(), help="threads of each run in (a)")
    args = ap.parse_args()
    seq1 = timed(args.data, args.work / "a1", args.epochs, args.threads, jobs=1)
    side = timed(args.data, args.work / "b", args.epochs, 1, jobs=2)
    seq2 = timed(args.data, args.work / "a2", args.epochs, args.threads, jobs=1)
    result = {
        "date": dt.date.today().isoformat(),
        "machine": platform.platform(),
        "cores": cpu_cores(),
        "epochs_per_run": args.epochs,
        "runs": 2,
        f"one_after_another_{args.threads}_threads_s": [round(seq1, 1), round(seq2, 1)],
        "side_by_side_1_thread_s": round(side, 1),
        "speedup": round(min(seq1, seq2) / side, 2),
    }
    print(result)
    write_json(Path(__file__).parent / "out", "sweep", result)


if __name__ == "__main__":
    main()
