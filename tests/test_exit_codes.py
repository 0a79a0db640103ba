"""The README's exit statuses through the installed console scripts (real processes): 2 for bad usage,
1 for data errors, each with one ``Error:`` line and no traceback."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def _run(tmp_path: Path, script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / script), *args], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "IIC_DATA": str(tmp_path / "data")})


@pytest.mark.parametrize("script,args,words", [
    ("iic", ["train", "--preset", "nosuch"], "unknown preset 'nosuch'"),
    ("iic-prep", ["synth", "--size", "97x128"], "must be even"),
    ("iic-prep", ["synth", "--classes", "99"], "classes must be in"),
    ("iic-prep", ["synth", "--per-class", "4", "--groups", "5"], "per_class must be >= groups"),
])
def test_bad_usage_exits_2(tmp_path, script, args, words):
    r = _run(tmp_path, script, *args, *(["--out", str(tmp_path / "synth")] if args[0] == "synth" else []))
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and words in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "synth").exists()


def test_data_errors_still_exit_1(tmp_path):
    out = str(tmp_path / "synth")
    first = _run(tmp_path, "iic-prep", "synth", "--out", out, "--classes", "2", "--per-class", "3", "--frames", "2")
    assert first.returncode == 0, first.stderr
    other = _run(tmp_path, "iic-prep", "synth", "--out", out, "--classes", "2", "--per-class", "3", "--frames", "3")
    assert other.returncode == 1 and "another config" in other.stderr and "Traceback" not in other.stderr
    missing = _run(tmp_path, "iic", "train", "--preset", "tiny", "--data", str(tmp_path / "nothing"))
    assert missing.returncode == 1 and "iic-prep extract" in missing.stderr
