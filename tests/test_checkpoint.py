"""Every bad checkpoint is one line: real damaged, foreign and hostile files given to `iic eval --ckpt` and
to `iic train --resume` end with exit 1 and one ``Error:`` line naming the file and the cause."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import small_synth_dataset

from iic.cli import main
from iic.model import checkpoint
from iic.model.config import backbone_config
from iic.model.nets.backbones import build_backbone

TINY = [
    "--preset",
    "tiny",
    "--crop",
    "32",
    "--frames",
    "8",
    "--batch-size",
    "4",
    "--K",
    "16",
    "--epochs",
    "1",
    "--workers",
    "0",
    "--device",
    "cpu",
    "--seed",
    "0",
    "--monitor-every",
    "0",
]
MARKER = "iic-test-code-ran"


class RunsCode:
    """Unpickling this calls ``os.system``: the file must be refused, never loaded."""

    def __reduce__(self):
        return (os.system, (f"echo {MARKER} > {MARKER}.txt",))


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def world(tmp_path_factory, one_thread) -> tuple[Path, Path]:
    """(data folder, run folder of a real 1-epoch tiny run with last.pt and final.pt)."""
    root = tmp_path_factory.mktemp("ckpt")
    runner = CliRunner()
    data = small_synth_dataset(root / "data")
    r = runner.invoke(main, ["train", "--data", str(data), "--out", str(root / "run"), *TINY])
    assert r.exit_code == 0, r.output
    return data, root / "run"


def _save(obj, path: Path) -> Path:
    torch.save(obj, path)
    return path


def _edited(run: Path, path: Path, **changes) -> Path:
    state = checkpoint.load(run / "last.pt")
    state["config"] = {**state["config"], "out": str(path.parent)}  # as if the run had been made there
    for key, value in changes.items():
        if key == "config_model":
            state["config"] = {**state["config"], "model": value}
        else:
            state[key] = value
    return _save(state, path)


def _other_architecture_weights() -> dict:
    """An encoder state of another backbone (R(2+1)D-tiny) under the same keys' prefix."""
    return {f"backbone.{k}": v for k, v in build_backbone(backbone_config("r21d-tiny")).state_dict().items()}


# name -> (writer of the bad file, words the one line must contain)
BAD = {
    "garbage": (
        lambda run, p: p.write_bytes(np.random.default_rng(0).bytes(5000)),
        "not a PyTorch checkpoint",
    ),
    "empty": (lambda run, p: p.write_bytes(b""), "empty (0 bytes)"),
    "truncated": (
        lambda run, p: p.write_bytes((run / "last.pt").read_bytes()[:20000]),
        "truncated or corrupt",
    ),
    "text": (lambda run, p: p.write_text("epoch 3 loss 1.25\nthis is a log, not weights\n"), "a text file"),
    "list": (lambda run, p: _save([1, 2, 3], p), "holds a list"),
    "no-keys": (lambda run, p: _save({"101": torch.zeros(2), "data": 1}, p), "no 'config'"),
    "unsafe": (lambda run, p: _save({"config": {}, "model": RunsCode()}, p), "unsafe: it would run code"),
    "unsafe-raw-pickle": (
        lambda run, p: p.write_bytes(pickle.dumps({"model": RunsCode()}, protocol=4)),
        "unsafe: it would run code",
    ),
    "newer-format": (
        lambda run, p: _edited(run, p, format=checkpoint.FORMAT_VERSION + 1),
        "newer than this iic",
    ),
    "bad-format-key": (lambda run, p: _edited(run, p, format="v2"), "format key"),
    "config-not-a-dict": (lambda run, p: _edited(run, p, config="r3d-tiny"), "config"),
    "model-not-weights": (lambda run, p: _edited(run, p, model=[1, 2]), "list"),
}


def _one_error_line(result, path: Path) -> str:
    assert result.exit_code == 1, (result.exit_code, result.output, repr(result.exception))
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert str(path) in lines[0], lines[0]
    return lines[0]


def _eval(data: Path, ckpt: Path, out: Path):
    return CliRunner().invoke(
        main,
        [
            "eval",
            "retrieval",
            "--data",
            str(data),
            "--ckpt",
            str(ckpt),
            "--out",
            str(out),
            "--workers",
            "0",
            "--device",
            "cpu",
            "--clips",
            "1",
        ],
    )


def _resume(data: Path, out: Path, *flags: str):
    """``iic train --resume``, giving the run's own options again (allowed: they do not change it)."""
    return CliRunner().invoke(main, ["train", "--resume", str(out), "--data", str(data), *TINY[2:], *flags])


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_checkpoint_for_eval_is_one_line(world, tmp_path, monkeypatch, kind):
    data, run = world
    monkeypatch.chdir(tmp_path)  # where RunsCode would leave its marker
    write, words = BAD[kind]
    bad = tmp_path / f"{kind}.pt"
    write(run, bad)
    line = _one_error_line(_eval(data, bad, tmp_path / "eval"), bad)
    assert words in line, line
    assert not (tmp_path / f"{MARKER}.txt").exists(), "the checkpoint's code ran"


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_checkpoint_for_resume_is_one_line(world, tmp_path, monkeypatch, kind):
    data, run = world
    monkeypatch.chdir(tmp_path)
    write, words = BAD[kind]
    out = tmp_path / "run"
    out.mkdir()
    write(run, out / "last.pt")
    line = _one_error_line(_resume(data, out), out / "last.pt")
    assert words in line, line
    assert not (tmp_path / f"{MARKER}.txt").exists(), "the checkpoint's code ran"


def test_checkpoint_of_another_architecture(world, tmp_path):
    data, run = world
    # the config says R(2+1)D-tiny, the weights are the R3D-tiny ones
    relabelled = _edited(run, tmp_path / "relabelled.pt", config_model="r21d-tiny")
    assert "does not match" in _one_error_line(_eval(data, relabelled, tmp_path / "e"), relabelled)
    unknown = _edited(run, tmp_path / "unknown.pt", config_model="resnet-9000")
    assert "resnet-9000" in _one_error_line(_eval(data, unknown, tmp_path / "e"), unknown)
    # resume: the config matches, the weights are of another backbone
    out = tmp_path / "run"
    out.mkdir()
    _edited(run, out / "last.pt", model=_other_architecture_weights())
    assert "does not match" in _one_error_line(_resume(data, out), out / "last.pt")
    # resume: another architecture is another recipe: a usage error that names the difference
    _edited(run, out / "last.pt", config_model="r21d-tiny")
    r = _resume(data, out, "--model", "r3d-tiny")
    assert r.exit_code == 2 and "--model r3d-tiny (the run's: r21d-tiny)" in r.output, r.output


def test_damaged_optimizer_state_is_one_line(world, tmp_path):
    data, run = world
    out = tmp_path / "run"
    out.mkdir()
    _edited(run, out / "last.pt", optimizer={"state": {}, "param_groups": [{"params": [0]}]})
    assert "cannot resume from" in _one_error_line(_resume(data, out), out / "last.pt")


def test_format_key_is_saved_and_old_checkpoints_load(world, tmp_path):
    data, run = world
    state = checkpoint.load(run / "final.pt")
    assert state["format"] == checkpoint.FORMAT_VERSION
    del state["format"]  # as written before the key existed
    old = _save(state, tmp_path / "old.pt")
    assert "format" not in torch.load(old, weights_only=True)
    r = _eval(data, old, tmp_path / "eval")
    assert r.exit_code == 0, r.output
    out = tmp_path / "run"
    shutil.copytree(run, out)
    last = checkpoint.load(out / "last.pt")
    del last["format"]
    last["config"]["out"] = str(out)
    _save(last, out / "last.pt")
    (out / "final.pt").unlink()
    r = _resume(data, out)  # the run had finished its epoch: resuming only writes final.pt again
    assert r.exit_code == 0, r.output
    assert checkpoint.load(out / "final.pt")["epoch"] == 1
