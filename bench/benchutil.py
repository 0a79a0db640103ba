"""Helpers shared by the benchmark scripts (run as ``python bench/<script>.py``, so this folder is on
sys.path)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import av


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


def write_json(folder: Path, name: str, result: dict) -> Path:
    """Write ``result`` to ``folder/<name>-<result['date']>.json`` and say where."""
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{name}-{result['date']}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return out


def trimmed_clip(src: Path, dst: Path, n: int = 30) -> Path:
    """The first ``n`` packets of ``src`` remuxed (no re-encoding) into ``dst``: a short real clip."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        istream = inp.streams.video[0]
        ostream = out.add_stream_from_template(istream)
        count = 0
        for packet in inp.demux(istream):
            if packet.dts is None:
                continue
            packet.stream = ostream
            out.mux(packet)
            count += 1
            if count == n:
                break
    return dst
