"""``iic selfcheck``: the first command on a new machine. Each check passes, fails or is skipped with a
one-line reason; the table goes to the terminal and the whole result to a JSON file.

* environment: torch, CUDA and cuDNN versions, the device's name and memory;
* amp: a few training steps of the tiny preset in fp32 and under autocast (fp16 on CUDA; on a CPU the same
  construction in float16), from the same weights: both finite, the losses within `AMP_TOLERANCE`;
* flow: ``tvl1-torch`` on the device against the CPU on synthetic pairs (on a CPU-only machine: against
  OpenCV's TV-L1), mean endpoint error;
* throughput: the chosen preset's training loop on a generated dataset of its frame size for ``seconds``:
  clips/s, the share of time waiting for data, peak memory;
* ddp: a 2-rank ``torchrun`` of the tiny preset when two or more GPUs are visible.

It drives both wings (it generates and extracts data, then trains), so it sits beside cli.py and demo.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .model.config import build_config
from .model.distributed import resolve_device
from .model.methods import build as build_method
from .model.run.train import build_run
from .pipeline.extract import ExtractConfig, extract
from .pipeline.parallel import ParallelConfig
from .pipeline.synth import SynthConfig, generate

AMP_TOLERANCE = 0.01  # |loss(amp) - loss(fp32)| / loss(fp32) of the first step (float16 keeps 11 bits)
FLOW_TOLERANCE = 0.05  # px of mean endpoint error between the device's tvl1-torch and the reference


@dataclass(frozen=True)
class SelfcheckConfig:
    device: str = "auto"
    preset: str = "tiny"
    seconds: float = 60.0  # of the throughput measurement
    workers: int | None = None  # loader workers of the throughput run (None: the preset's)
    out: Path | None = None  # the JSON report (None: not written)


@dataclass
class Check:
    name: str
    status: str = "pass"  # pass | fail | skip
    reason: str = ""  # one line: what was measured, or why it failed or was skipped
    values: dict = field(default_factory=dict)


def _run(name: str, fn: Callable[[], Check]) -> Check:
    """A check's result; an exception inside it is that check's failure, in one line."""
    try:
        return fn()
    except Exception as err:  # a selfcheck reports every failure and goes on with the next check
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        return Check(name, "fail", f"{type(err).__name__}: {first}")


def environment(device: torch.device) -> Check:
    values = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": str(device),
        "cpu_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        values.update(
            name=props.name, memory_gb=round(props.total_memory / 2**30, 1), gpus=torch.cuda.device_count()
        )
    else:
        values.update(
            name=platform.processor() or platform.machine(),
            memory_gb=round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        )
    return Check(
        "environment",
        "pass",
        f"torch {torch.__version__}, {values['name']}, {values['memory_gb']} GB",
        values,
    )


def _random_batch(cfg, device: torch.device, size: int, generator: torch.Generator) -> dict:
    """A batch of random uint8 clips of ``cfg``'s modalities (and second clips when it reads two)."""
    shape = (size, 3, cfg.frames, cfg.crop + 8, cfg.crop + 8)
    batch = {"index": torch.arange(size, device=device)}
    for suffix in ("", "_1")[: cfg.clips_per_sample]:
        for m in cfg.modalities:
            channels = 2 if m == "flow" else 3
            batch[m + suffix] = torch.randint(
                0, 255, (size, channels, *shape[2:]), dtype=torch.uint8, generator=generator
            ).to(device)
    return batch


def amp_steps(device: torch.device, steps: int = 2) -> Check:
    """The tiny preset's step in fp32 and under autocast from the same weights and batches."""
    cfg = build_config("tiny", crop=16, frames=4, batch_size=4, device=str(device))
    dtype = torch.float16
    losses: dict[bool, list[float]] = {}
    for amp in (False, True):
        torch.manual_seed(0)
        net, state, step = build_method(cfg, 4 * cfg.batch_size)
        net, state = net.to(device), state.to(device)
        optimizer = torch.optim.SGD(net.parameters(), lr=1e-3)
        scaler = torch.amp.GradScaler("cuda", enabled=amp and device.type == "cuda")
        g = torch.Generator().manual_seed(0)
        losses[amp] = []
        for i in range(steps):
            batch = _random_batch(cfg, device, cfg.batch_size, g)
            with torch.autocast(device.type, dtype=dtype, enabled=amp):
                loss = step(net, state, batch, cfg, torch.Generator().manual_seed(i), device)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            losses[amp].append(loss.item())
    fp32, amp = losses[False], losses[True]
    values = {"loss_fp32": fp32, "loss_amp": amp, "autocast": str(dtype).removeprefix("torch.")}
    if not all(np.isfinite(fp32 + amp)):
        return Check("amp", "fail", f"a loss is not finite: fp32 {fp32}, amp {amp}", values)
    diff = abs(amp[0] - fp32[0]) / fp32[0]
    values["first_step_difference"] = diff
    status = "pass" if diff < AMP_TOLERANCE else "fail"
    return Check(
        "amp",
        status,
        f"{steps} steps of tiny in fp32 and {values['autocast']} autocast: first losses "
        f"{fp32[0]:.4f} / {amp[0]:.4f} ({100 * diff:.2f} %, limit {100 * AMP_TOLERANCE:.0f} %)",
        values,
    )


def _flow_pairs(n: int = 3, size: tuple[int, int] = (32, 40)) -> np.ndarray:
    """(n + 1, H, W) uint8 frames of a smooth random texture moving by a sub-pixel shift a frame."""
    import cv2

    rng = np.random.default_rng(0)
    h, w = size
    base = cv2.GaussianBlur(rng.uniform(0, 255, (h + 16, w + 16)).astype(np.float32), (0, 0), 2.0)
    frames = []
    for t in range(n + 1):
        m = np.float32([[1, 0, -8 + 0.7 * t], [0, 1, -8 - 0.4 * t]])
        frames.append(cv2.warpAffine(base, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT))
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def flow_on_device(device: torch.device) -> Check:
    """tvl1-torch's compiled kernels on the GPU against the eager code on the CPU; on a CPU-only machine the
    eager code against OpenCV's TV-L1 (the compiled CPU kernels equal the eager code bit for bit, tested), and
    whether the kernels can be compiled here at all (else `iic-prep flow` runs the eager code)."""
    from .pipeline.flowcalc import FlowConfig, compute_flow, make_estimator
    from .pipeline.tvl1_torch import fused_unavailable

    gray = _flow_pairs()
    on_gpu = device.type == "cuda"
    reference_method = "tvl1-torch" if on_gpu else "tvl1"
    ref = compute_flow(gray, make_estimator(FlowConfig(reference_method, device="cpu", compile=False)))
    got = compute_flow(gray, make_estimator(FlowConfig("tvl1-torch", device=str(device), compile=on_gpu)))
    epe = float(np.sqrt(((got.astype(np.float64) - ref.astype(np.float64)) ** 2).sum(axis=-1)).mean())
    against = "its eager code on the CPU" if on_gpu else "OpenCV's TV-L1"
    fused = fused_unavailable(device)
    what = f"tvl1-torch{' (compiled)' if on_gpu else ''} on {device} against {against}"
    values = {
        "epe_px": epe,
        "pairs": len(gray) - 1,
        "reference": reference_method,
        "fused_kernels": fused or "yes",
    }
    status = "pass" if epe < FLOW_TOLERANCE else "fail"
    note = "" if fused is None else f"; no fused kernels here ({fused}): the eager code runs"
    return Check("flow", status, f"{what}: mean EPE {epe:.2g} px (limit {FLOW_TOLERANCE}){note}", values)


def _dataset(root: Path, frame_size: tuple[int, int], videos_per_class: int = 4) -> Path:
    """A generated dataset of ``frame_size`` frames (the throughput run's), extracted into ``root``."""
    generate(
        SynthConfig(
            out=root / "raw",
            classes=8,
            per_class=videos_per_class,
            frames=24,
            height=frame_size[0] + frame_size[0] % 2,
            width=frame_size[1] + frame_size[1] % 2,
        )
    )
    summary = extract(
        ExtractConfig(
            dataset="ucf101",
            root=root / "raw",
            out=root,
            name="selfcheck",
            size=frame_size,
            parallel=ParallelConfig(workers=min(2, os.cpu_count() or 1)),
        )
    )
    if summary.failed:
        raise RuntimeError(f"{summary.failed} generated videos failed extraction")
    return root / "selfcheck"


def throughput(cfg: SelfcheckConfig, device: torch.device, root: Path) -> Check:
    """The preset's training loop (loader, augmentation, step, optimiser) for ``cfg.seconds``."""
    preset = build_config(cfg.preset)
    size = (
        (128, 171) if preset.crop > 64 else (80, 106)
    )  # the paper's stored frames; the tiny presets' crop 64
    data = _dataset(root, size)
    run_cfg = build_config(
        cfg.preset,
        data=data,
        out=root / "run",
        device=str(device),
        monitor_every=0,
        batch_size=min(preset.batch_size, 32),
        **({"workers": cfg.workers} if cfg.workers is not None else {}),
    )
    run = build_run(run_cfg)
    run.loop.train_epoch(until=0.0)  # one step first: worker start-up and first-call costs are not throughput
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    meter = run.loop.train_epoch(until=time.perf_counter() + cfg.seconds)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    values = {
        "preset": cfg.preset,
        "batch_size": run_cfg.batch_size,
        "frame_size": list(size),
        "steps": int(meter.n),
        "clips_per_s": meter.clips_per_s,
        "data_share": meter.data_share,
        "peak_memory_gb": peak,
        "workers": run_cfg.workers,
    }
    if meter.n == 0:
        return Check("throughput", "fail", f"no step finished in {cfg.seconds:.0f} s", values)
    return Check(
        "throughput",
        "pass",
        f"{cfg.preset}: {meter.clips_per_s:.1f} clips/s, "
        f"{100 * meter.data_share:.0f} % waiting for data, peak {peak:.2f} GB "
        f"({int(meter.n)} steps of {run_cfg.batch_size})",
        values,
    )


def ddp_smoke(device: torch.device, root: Path) -> Check:
    """Two ranks of the tiny preset under torchrun (NCCL), one epoch."""
    if device.type != "cuda" or torch.cuda.device_count() < 2:
        return Check("ddp", "skip", "needs two or more GPUs")
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    iic = shutil.which("iic", path=str(Path(sys.executable).parent)) or shutil.which("iic")
    data = root / "selfcheck" if (root / "selfcheck").exists() else _dataset(root, (80, 106))
    cmd = [
        torchrun,
        "--standalone",
        "--nproc_per_node",
        "2",
        iic,
        "train",
        "--preset",
        "tiny",
        "--data",
        str(data),
        "--out",
        str(root / "ddp"),
        "--epochs",
        "1",
        "--monitor-every",
        "0",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if r.returncode:
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        return Check("ddp", "fail", f"torchrun exited {r.returncode}: {lines[-1] if lines else ''}")
    return Check("ddp", "pass", "2 ranks of tiny trained one epoch with NCCL")


def selfcheck(cfg: SelfcheckConfig) -> list[Check]:
    """Every check, in order; the first (the device) decides where the others run."""
    try:
        device = resolve_device(cfg.device)
    except ValueError as err:
        return [Check("environment", "fail", str(err).splitlines()[0])]
    checks = [
        _run("environment", lambda: environment(device)),
        _run("amp", lambda: amp_steps(device)),
        _run("flow", lambda: flow_on_device(device)),
    ]
    with tempfile.TemporaryDirectory(prefix="iic-selfcheck-") as tmp:
        checks.append(_run("throughput", lambda: throughput(cfg, device, Path(tmp))))
        checks.append(_run("ddp", lambda: ddp_smoke(device, Path(tmp))))
    if cfg.out is not None:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_text(
            json.dumps(
                {
                    "config": json.loads(json.dumps(dataclasses.asdict(cfg), default=str)),
                    "checks": [dataclasses.asdict(c) for c in checks],
                },
                indent=1,
            )
        )
    return checks


def table(checks: list[Check]) -> list[str]:
    width = max(len(c.name) for c in checks)
    return [f"{c.name:{width}}  {c.status.upper():4}  {c.reason}" for c in checks]
