"""Runs side by side (`model/sweep.py`): real loky worker processes, the same weights as one after another."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import small_synth_dataset

from iic.model import checkpoint
from iic.model.config import build_config
from iic.model.run.sweep import train_all


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return small_synth_dataset(tmp_path_factory.mktemp("sweep") / "data")


def _cfgs(data: Path, out: Path) -> list:
    small = dict(data=data, crop=32, batch_size=4, epochs=2, workers=0, threads=1, monitor_every=0)
    return [
        build_config("tiny", out=out / "iic", seed=0, **small),
        build_config("cmc-tiny", out=out / "cmc", seed=1, **small),
        build_config("dualvar-tiny", out=out / "dualvar", seed=2, **{**small, "epochs": 1}),
    ]


def _weights(final: Path) -> dict[str, torch.Tensor]:
    return checkpoint.load(final, ("model",))["model"]


def test_side_by_side_gives_the_weights_of_one_after_another(data, tmp_path):
    ended = []
    parallel = train_all(
        _cfgs(data, tmp_path / "par"), jobs=2, done=lambda c, f, s: ended.append(Path(c.out).name)
    )
    serial = train_all(_cfgs(data, tmp_path / "ser"), jobs=1)
    assert [f.parent.name for f in parallel] == ["iic", "cmc", "dualvar"] and sorted(ended) == [
        "cmc",
        "dualvar",
        "iic",
    ]
    for a, b in zip(parallel, serial, strict=True):
        wa, wb = _weights(a), _weights(b)
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), a.parent.name
    # finished runs are skipped: nothing is trained again and the same checkpoints come back
    stamps = [f.stat().st_mtime_ns for f in parallel]
    again = train_all(
        _cfgs(data, tmp_path / "par"), jobs=2, done=lambda *_: pytest.fail("a finished run was trained again")
    )
    assert again == parallel and [f.stat().st_mtime_ns for f in again] == stamps


def test_a_failing_run_is_its_own_one_line_error(data, tmp_path):
    cfgs = _cfgs(data, tmp_path)
    (tmp_path / "cmc").mkdir()
    (tmp_path / "cmc" / "last.pt").write_bytes(
        b"not a checkpoint"
    )  # an interrupted run whose checkpoint is damaged
    with pytest.raises(checkpoint.CheckpointError, match="last.pt"):
        train_all(cfgs, jobs=2)
