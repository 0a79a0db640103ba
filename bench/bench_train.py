"""Benchmark of training throughput on CPU (the ``tiny`` preset), run by hand; results go to BENCHMARKS.md.

Builds the demo's synthetic dataset once with the real CLI (``iic-prep synth`` defaults: 6 classes x 12
videos x 40 frames at 96x128, stored at 96x128 as the demo does; the tiny preset crops 64), then for each
worker count runs ``iic train --preset tiny --device cpu --epochs E --workers N`` and reads the per-epoch
lines of ``metrics.jsonl``: clips/s and the share of the step time spent waiting for data (``data_share``,
from the training loop's own meters). Epoch 1 includes worker start-up, so the last epoch and the mean
of epochs 2..E are reported.

    python bench/bench_train.py                                   # workers 0,1,2, 4 epochs
    python bench/bench_train.py --work /tmp/iic-bench-train --workers 0,2 --epochs 6

Writes ``bench/out/bench_train-<date>.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import tempfile
from pathlib import Path

from benchutil import cli, run_cli, write_json

from iic.model.config import build_config

TINY = build_config("tiny")
BATCH = TINY.batch_size  # steps/s = clips/s / BATCH


def run_quiet(args: list[str]) -> float:
    return run_cli(args, quiet=True)


def build_dataset(work: Path) -> Path:
    raw, data = work / "raw" / "synth", work / "ucf101"
    if not (data / "manifest.csv").exists():
        run_quiet([cli("iic-prep"), "synth", "--out", str(raw)])
        run_quiet(
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
                "96x128",
                "--workers",
                "2",
            ]
        )
    return data


def epoch_lines(run: Path) -> list[dict]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [m for m in lines if "epoch_loss" in m]


def bench(data: Path, work: Path, workers: int, epochs: int, seed: int) -> dict:
    out = work / "runs" / f"workers{workers}"
    shutil.rmtree(out, ignore_errors=True)
    wall = run_quiet(
        [
            cli("iic"),
            "train",
            "--preset",
            "tiny",
            "--data",
            str(data),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--epochs",
            str(epochs),
            "--workers",
            str(workers),
            "--seed",
            str(seed),
        ]
    )
    ep = epoch_lines(out)
    later = ep[1:] or ep
    mean = lambda key: sum(m[key] for m in later) / len(later)  # noqa: E731
    return {
        "workers": workers,
        "wall_seconds": wall,
        "steps_per_epoch": ep[0]["step"],
        "last_epoch": {
            "clips_per_s": ep[-1]["clips_per_s"],
            "steps_per_s": ep[-1]["clips_per_s"] / BATCH,
            "data_share": ep[-1]["data_share"],
        },
        "epochs_2_on": {
            "clips_per_s": mean("clips_per_s"),
            "steps_per_s": mean("clips_per_s") / BATCH,
            "data_share": mean("data_share"),
        },
        "epochs": ep,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--workers", default="0,1,2", help="comma-separated DataLoader worker counts (tiny default: 2)"
    )
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--work", type=Path, default=None, help="scratch folder to keep/reuse [default: temporary]"
    )
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "out")
    args = ap.parse_args()

    tmp = None if args.work else tempfile.mkdtemp(prefix="iic-bench-train-")
    work = args.work or Path(tmp)
    load_before = os.getloadavg()
    try:
        data = build_dataset(work)
        results = [bench(data, work, int(w), args.epochs, args.seed) for w in args.workers.split(",")]
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    load_after = os.getloadavg()

    print(
        f"\ntiny preset (r3d-tiny, 16x64x64 crops, batch {BATCH}, rgb+res, K {TINY.K}, {TINY.optimizer}), "
        f"CPU, {results[0]['steps_per_epoch']} steps/epoch, {args.epochs} epochs; "
        f"load {load_before[0]:.2f} before, {load_after[0]:.2f} after\n"
    )
    print(
        "| workers | steps/s (last epoch) | clips/s | data wait (last epoch) | steps/s (epochs 2+) | "
        "data wait (epochs 2+) | wall s |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        a, b = r["last_epoch"], r["epochs_2_on"]
        print(
            f"| {r['workers']} | {a['steps_per_s']:.2f} | {a['clips_per_s']:.1f} | "
            f"{100 * a['data_share']:.1f}% | "
            f"{b['steps_per_s']:.2f} | {100 * b['data_share']:.1f}% | {r['wall_seconds']:.0f} |"
        )
    result = {
        "date": datetime.date.today().isoformat(),
        "cpu_count": os.cpu_count(),
        "load_before": load_before,
        "load_after": load_after,
        "epochs": args.epochs,
        "batch": BATCH,
        "results": results,
    }
    write_json(args.json, "bench_train", result)


if __name__ == "__main__":
    main()
