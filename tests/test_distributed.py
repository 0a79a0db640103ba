"""A real 2-rank `torchrun` (gloo on the CPU) of the bank-path IIC recipe: the ranks draw their own crops,
intra-negatives and bank indices, hold equal weights and banks, share the monitor's work, and a run whose
ranks diverge stops after that epoch in one line (tests/ddp_probe.py records what each rank did)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import small_synth_dataset

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return small_synth_dataset(tmp_path_factory.mktemp("ddp"))


def probe(out: Path, data: Path, mode: str) -> subprocess.CompletedProcess:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun
    return subprocess.run(
        [
            torchrun,
            "--standalone",
            "--nproc_per_node",
            "2",
            str(HERE / "ddp_probe.py"),
            str(out),
            str(data),
            mode,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_ranks_draw_their_own_numbers_and_keep_equal_weights_and_banks(data, tmp_path):
    r = probe(tmp_path, data, "normal")
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1)]
    for key in ("offsets", "draws"):  # crops; intra-negative frames and bank indices
        assert len(ranks[0][key]) == len(ranks[1][key]) > 0, key
        assert ranks[0][key] != ranks[1][key], f"both ranks drew the same {key}"
    assert all(len(d) for d in ranks[0]["draws"])
    assert ranks[0]["weights"] == ranks[1]["weights"] and ranks[0]["banks"] == ranks[1]["banks"]
    # the monitor (every epoch and before the first) is shared: each rank encodes half of each list
    n_train, n_test = 12, 6
    shares = [ranks[0]["monitor_clips"][i] + ranks[1]["monitor_clips"][i] for i in range(6)]
    assert shares == [n_train, n_test] * 3 and max(ranks[0]["monitor_clips"]) < n_train
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows if "monitor_top1_res" in row] == [0, 1, 2]


def test_ranks_that_diverge_stop_the_run_after_that_epoch(data, tmp_path):
    r = probe(tmp_path, data, "diverge")
    assert r.returncode != 0
    assert "the processes hold different weights or memory after epoch 1" in r.stderr, r.stderr[-3000:]
    assert not (tmp_path / "run" / "last.pt").exists()  # the diverged epoch was not saved
