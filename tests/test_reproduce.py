"""The kernels `iic demo` pins, and what a report says a CPU result depends on."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from iic.reproduce import PINNED, machine, pin_kernels


def test_pinning_sets_the_caps_and_keeps_the_users_own(monkeypatch):
    for key in PINNED:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")  # a user's choice stays
    got = pin_kernels()
    assert got == {**PINNED, "MKL_CBWR": "COMPATIBLE"} and all(os.environ[k] == v for k, v in got.items())


def test_the_caps_reach_torch_when_set_before_it_loads():
    """ATen reads its cap when torch loads: a fresh process that pins first runs AVX2 kernels at most."""
    code = (
        "from iic.reproduce import pin_kernels; pin_kernels(); import torch, json; "
        "print(json.dumps(torch.backends.cpu.get_cpu_capability()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if k not in PINNED},
    ).stdout
    assert json.loads(out) in ("AVX2", "DEFAULT")  # AVX2, or less on a CPU without it: never AVX512


def test_a_report_names_the_cpu_its_instruction_sets_and_the_libraries():
    m = machine()
    assert m["cpu"] and isinstance(m["instruction_sets"], list) and m["cores"] >= 1
    assert set(m["kernels"]) == set(PINNED) and m["torch"] and m["numpy"]
    assert any("MKL" in lib or "oneAPI" in lib for lib in m["libraries"]) or not m["libraries"]
