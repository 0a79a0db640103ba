"""Helpers shared by the benchmark scripts (run as ``python bench/<script>.py``, so this folder is on sys.path)."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def cli(name: str) -> str:
    """The console script ``name`` of the running venv (falls back to PATH)."""
    exe = Path(sys.executable).parent / name
    return str(exe) if exe.exists() else name


def run_cli(args: list[str], quiet: bool = False) -> float:
    """Run a command (argument list, no shell), echoing it; returns the wall seconds."""
    print("$", Path(args[0]).name, *args[1:], flush=True)
    t0 = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL if quiet else None)
    return time.perf_counter() - t0
