"""The same numbers on any x86-64 machine: pin the CPU kernels, and say what a result depends on.

PyTorch's CPU build picks its kernels by the instruction set of the machine: ATen's vectorised kernels
(``ATEN_CPU_CAPABILITY``), oneDNN's convolutions (``ONEDNN_MAX_CPU_ISA``) and MKL's matrix products
(``MKL_CBWR``, conditional numerical reproducibility). Two machines that pick different kernels sum in
different orders, so a training run, and with it every figure of the demo, differs in its last bits and then
beyond. `pin_kernels` caps all three at AVX2, which every x86-64 CPU of the last decade has: the kernels, and
so the results, are then the same on any of them, for the same thread count. On a machine whose best is AVX2
(the one BENCHMARKS.md was measured on) the pinned kernels are the ones it uses anyway (the same weights,
bit for bit); one with AVX-512 gives up its wider kernels.

Torch-free: the variables must be set before torch loads its libraries (``iic demo`` and the benchmarks call
`pin_kernels` first; worker processes inherit them).
"""

from __future__ import annotations

import os
import platform
from importlib import metadata

PINNED = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2,STRICT"}


def pin_kernels() -> dict[str, str]:
    """Cap the CPU kernels at AVX2 (`PINNED`), leaving any variable the user set; returns the values in
    force."""
    for key, value in PINNED.items():
        os.environ.setdefault(key, value)
    return {key: os.environ[key] for key in PINNED}


def _cpu() -> tuple[str, list[str]]:
    """The CPU's model name and its vector instruction sets (Linux: /proc/cpuinfo)."""
    model, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model in ("", platform.machine()):
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = value.split()
                    break
    except OSError:  # not Linux: the model name alone
        pass
    wanted = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "amx_tile")
    return model, [f for f in wanted if f in flags]


def machine() -> dict:
    """What a CPU result depends on: the CPU and its instruction sets, the kernels in force, the libraries."""
    import torch

    model, isa = _cpu()
    config = torch.__config__.show()
    libs = [
        line.strip("- ").strip() for line in config.splitlines() if "Math Kernel" in line or "MKL-DNN" in line
    ]
    return {
        "cpu": model,
        "instruction_sets": isa,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "kernels": {key: os.environ.get(key, "(not set)") for key in PINNED},
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": metadata.version("numpy"),
        "opencv": metadata.version("opencv-contrib-python-headless")
        if _installed("opencv-contrib-python-headless")
        else None,
        "libraries": libs,
    }


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
        return True
    except metadata.PackageNotFoundError:
        return False
