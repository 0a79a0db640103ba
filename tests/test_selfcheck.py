"""`iic selfcheck` on this machine: every CPU check runs and passes, the report is written, a failing check
makes the exit status 1 and says why in its row."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from iic import selfcheck as selfcheck_mod
from iic.cli import main


def run(tmp_path, *args: str):
    return CliRunner().invoke(
        main,
        ["selfcheck", "--seconds", "2", "--workers", "0", "--out", str(tmp_path / "selfcheck.json"), *args],
    )


def test_the_cpu_checks_pass_and_are_reported(tmp_path):
    r = run(tmp_path, "--device", "cpu")
    assert r.exit_code == 0, r.output
    rows = r.stdout.splitlines()
    assert [row.split()[:2] for row in rows] == [
        ["environment", "PASS"],
        ["amp", "PASS"],
        ["flow", "PASS"],
        ["throughput", "PASS"],
        ["ddp", "SKIP"],
    ]
    report = json.loads((tmp_path / "selfcheck.json").read_text())
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["environment"]["values"]["torch"] == torch.__version__
    assert checks["amp"]["values"]["first_step_difference"] < selfcheck_mod.AMP_TOLERANCE
    assert checks["flow"]["values"]["epe_px"] < selfcheck_mod.FLOW_TOLERANCE
    t = checks["throughput"]["values"]
    assert t["steps"] >= 1 and t["clips_per_s"] > 0 and 0 <= t["data_share"] <= 1 and t["peak_memory_gb"] > 0
    assert checks["ddp"]["reason"] == "needs two or more GPUs"


def test_a_failing_check_fails_the_command_with_its_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(selfcheck_mod, "AMP_TOLERANCE", 0.0)  # no difference is small enough
    # not what this test is about (the test above runs it): the throughput row says so
    monkeypatch.setattr(
        selfcheck_mod, "throughput", lambda cfg, device, root: selfcheck_mod.Check("throughput", "skip")
    )
    r = run(tmp_path, "--device", "cpu", "--seconds", "1")
    assert r.exit_code == 1
    amp = next(row for row in r.stdout.splitlines() if row.startswith("amp"))
    assert amp.split()[1] == "FAIL" and "limit 0 %" in amp
    assert "Error: 1 check(s) failed: amp" in r.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine with CUDA passes this check")
def test_asking_for_cuda_without_it_fails_in_one_row(tmp_path):
    r = run(tmp_path, "--device", "cuda")
    assert r.exit_code == 1
    assert r.stdout.splitlines() == ["environment  FAIL  --device cuda: CUDA is not available"]


def test_an_unknown_preset_is_a_usage_error(tmp_path):
    r = run(tmp_path, "--preset", "nosuch")
    assert r.exit_code == 2 and "unknown preset 'nosuch'" in r.output
