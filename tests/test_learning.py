"""Training learns, and the same command and seed give the same numbers: the fast CI versions.

The full measurement over seeds and methods is bench/bench_learning.py (BENCHMARKS.md, "Learning signal").
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from iic.cli import main, prep
from iic.model import checkpoint
from iic.model.config import build_config
from iic.model.protocol import iic_chance_loss
from iic.model.runlog import read_metrics
from iic.model.train import lr_factor, train


@pytest.fixture(scope="module")
def motion_data(tmp_path_factory) -> Path:
    """The benchmark's design at a small size: 8 classes (4 reversal pairs) x 12 independent videos."""
    root = tmp_path_factory.mktemp("learning")
    r = CliRunner().invoke(prep, ["synth", "--out", str(root / "raw"), "--per-class", "12", "--frames", "24"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(prep, ["extract", "--root", str(root / "raw"), "--out", str(root / "data"), "--size", "64x86",
                                  "--workers", "1"])
    assert r.exit_code == 0, r.output
    return root / "data" / "ucf101"


def _epochs(metrics: list[dict], key: str) -> dict[int, dict]:
    return {r["epoch"]: r for r in metrics if key in r}


def test_tiny_run_leaves_chance_and_the_monitor_sees_it(motion_data, tmp_path):
    """The tiny IIC recipe on a fixed seed: the epoch loss ends far below its chance value 2 ln(2K + 2), and the
    monitor's test top-1 (residual input) ends above the untrained network's (epoch 0)."""
    cfg = build_config("tiny", data=motion_data, out=tmp_path / "run", epochs=8, workers=0, threads=2, monitor_every=4)
    train(cfg)
    metrics = read_metrics(tmp_path / "run" / "metrics.jsonl")
    losses = _epochs(metrics, "epoch_loss")
    chance = iic_chance_loss(cfg.K, True)
    assert losses[8]["chance_loss"] == pytest.approx(chance)
    assert losses[8]["epoch_loss"] < 0.7 * chance, [round(r["epoch_loss"], 2) for r in losses.values()]
    monitor = _epochs(metrics, "monitor_top1_res")
    assert sorted(monitor) == [0, 4, 8]
    assert monitor[8]["monitor_top1_res"] > monitor[0]["monitor_top1_res"], monitor
    assert (tmp_path / "run" / "curves.png").stat().st_size > 0


def test_monitor_does_not_change_training(motion_data, tmp_path):
    """Monitoring runs in eval mode without random draws: weights and banks match an unmonitored run."""
    finals = [train(build_config("tiny", data=motion_data, out=tmp_path / str(every), epochs=2, workers=0, threads=2,
                                 monitor_every=every)) for every in (0, 1)]
    a, b = (checkpoint.load(f) for f in finals)
    for part in ("model", "memory"):
        for k, v in a[part].items():
            assert torch.equal(v, b[part][k]), (part, k)
    assert not _epochs(read_metrics(tmp_path / "0" / "metrics.jsonl"), "monitor_top1_res")


def _weights(path: Path) -> dict:
    ckpt = checkpoint.load(path)
    return {**{f"model.{k}": v for k, v in ckpt["model"].items()}, **{f"memory.{k}": v for k, v in ckpt["memory"].items()}}


def test_same_command_same_weights_in_pytest_and_in_a_fresh_process(motion_data, tmp_path):
    """The in-pytest divergence seen before: a test module's fixture had set torch to 1 thread, and CPU
    convolutions sum in a thread-count-dependent order. ``--threads`` pins the count, so the run in this
    process (whatever its thread setting) equals the same command in a fresh process."""
    args = ["--preset", "tiny", "--data", str(motion_data), "--epochs", "2", "--workers", "0", "--seed", "3",
            "--threads", "2", "--monitor-every", "0"]
    iic = shutil.which("iic", path=str(Path(sys.executable).parent))
    subprocess.run([iic, "train", *args, "--out", str(tmp_path / "fresh")], check=True, capture_output=True, timeout=600,
                   env={k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"})
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # what tests/test_evaluate.py's fixture does
    try:
        r = CliRunner().invoke(main, ["train", *args, "--out", str(tmp_path / "here")])
        assert r.exit_code == 0, r.output
        assert torch.get_num_threads() == 1  # restored after the run
        unpinned = CliRunner().invoke(main, ["train", *args[:-4], "--monitor-every", "0", "--out", str(tmp_path / "one")])
        assert unpinned.exit_code == 0, unpinned.output
    finally:
        torch.set_num_threads(before)
    fresh, here, one = (_weights(tmp_path / d / "final.pt") for d in ("fresh", "here", "one"))
    assert all(torch.equal(fresh[k], here[k]) for k in fresh)
    assert checkpoint.load(tmp_path / "one" / "final.pt")["cpu_threads"] == 1
    # the cause: the same run on 1 thread instead of 2 ends with other weights
    assert not all(torch.equal(fresh[k], one[k]) for k in fresh)


def test_lr_factor_warmup_cosine_and_multistep():
    cfg = build_config("tiny", epochs=10, warmup_epochs=2)
    f = lr_factor(cfg, steps_per_epoch=5)
    assert [f(s) for s in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert f(9) == pytest.approx(1.0) and f(10) == pytest.approx(1.0)
    assert f(10 + 20) == pytest.approx(0.5) and f(49) == pytest.approx(0.5 * (1 + math.cos(math.pi * 39 / 40)))
    paper = build_config("r3d-res-repeat", epochs=240)
    g = lr_factor(paper, steps_per_epoch=3)
    # the paper's x0.2 at epochs 45/90/125/160, applied at epoch boundaries
    assert [g(3 * e) for e in (0, 44, 45, 90, 125, 160, 239)] == pytest.approx([1, 1, 0.2, 0.04, 0.008, 0.0016, 0.0016])
    assert g(3 * 45 - 1) == 1.0


def test_train_cli_flags_of_the_recipe(motion_data, tmp_path):
    r = CliRunner().invoke(main, ["train", "--data", str(motion_data), "--out", str(tmp_path / "r"), "--preset", "tiny",
                                  "--epochs", "1", "--workers", "0", "--head", "mlp", "--positive", "bank", "--schedule",
                                  "multistep", "--warmup-epochs", "0", "--tau", "0.1", "--m", "0.9", "--K", "8",
                                  "--monitor-every", "0", "--threads", "1"])
    assert r.exit_code == 0, r.output
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert {k: saved[k] for k in ("head", "positive", "schedule", "warmup_epochs", "tau", "m", "K", "monitor_every",
                                  "threads")} == dict(head="mlp", positive="bank", schedule="multistep", warmup_epochs=0,
                                                      tau=0.1, m=0.9, K=8, monitor_every=0, threads=1)
    ckpt = checkpoint.load(tmp_path / "r" / "final.pt")
    assert "head.mlp.0.weight" in ckpt["model"]
    bad = CliRunner().invoke(main, ["train", "--data", str(motion_data), "--preset", "tiny", "--warmup-epochs", "30"])
    assert bad.exit_code == 2 and "warm-up" in bad.output
