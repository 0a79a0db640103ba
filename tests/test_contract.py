"""One exit-status contract for every command of `iic` (README, "Exit statuses"): 2 for every usage error
(click's own and the library's validations, in one ``Error:`` line on stderr, nothing on stdout), 1 for data
and runtime errors, 130 for an interrupted command with one line saying how to continue it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import small_synth_dataset

from iic.cli import main

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return small_synth_dataset(tmp_path_factory.mktemp("contract"))


USAGE = [
    (["train", "--batch-size", "1"], "--batch-size"),
    (["train", "--neg", "none", "--live-negative"], "needs one intra-negative"),
    (["train", "--device", "gpu"], "--device 'gpu' is unknown"),
    (["train", "--milestones", "0.5,x"], "comma-separated list"),
    (["train", "--config", "{tmp}/missing.toml"], "config file not found"),
    (["presets", "--show", "nosuch"], "unknown preset 'nosuch'"),
    (["demo", "--per-class", "2"], "--per-class"),
    (
        ["eval", "retrieval", "--device", "gpu", "--random-init", "--model", "r3d-tiny"],
        "--device 'gpu' is unknown",
    ),
    (
        ["eval", "retrieval", "--merge", "--modality", "rgb", "--random-init", "--model", "r3d-tiny"],
        "--merge concatenates RGB with another modality",
    ),
    (["eval", "retrieval", "--model", "r3d-11", "--random-init"], "'r3d-11' is not one of"),
    (["eval", "linear", "--knn", "0", "--random-init", "--model", "r3d-tiny"], "--knn"),
    (
        ["eval", "recognition", "--val-fraction", "2", "--random-init", "--model", "r3d-tiny"],
        "--val-fraction",
    ),
    (["eval", "retrieval", "--ckpt", "{tmp}/x.pt", "--random-init"], "exclude each other"),
    (["selfcheck", "--preset", "nosuch"], "unknown preset 'nosuch'"),
]


@pytest.mark.parametrize("args,words", USAGE, ids=lambda a: " ".join(a) if isinstance(a, list) else None)
def test_usage_errors_exit_2_in_one_line_on_stderr(data, tmp_path, args, words):
    args = [a.format(tmp=tmp_path) for a in args]
    extra = ["--data", str(data)] if args[0] in ("train", "eval") else []
    r = CliRunner().invoke(main, [*args, *extra])
    assert r.exit_code == 2, (r.exit_code, r.output)
    assert r.stdout == ""
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("Error: ") and words in r.stderr, r.stderr


def test_data_errors_exit_1(data, tmp_path):
    missing = CliRunner().invoke(
        main,
        ["train", "--preset", "tiny", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "run")],
    )
    assert missing.exit_code == 1 and "iic-prep extract" in missing.stderr
    no_ckpt = CliRunner().invoke(
        main, ["eval", "retrieval", "--data", str(data), "--ckpt", str(tmp_path / "no.pt")]
    )
    assert no_ckpt.exit_code == 1 and no_ckpt.stderr.startswith("Error: checkpoint not found")
    on_a_file = tmp_path / "file"
    on_a_file.write_text("not a folder")
    r = CliRunner().invoke(main, ["train", "--preset", "tiny", "--data", str(data), "--out", str(on_a_file)])
    assert r.exit_code == 2 and "is a file, not a run folder" in r.stderr


def test_an_interrupted_run_exits_130_and_says_how_to_continue(data, tmp_path):
    """Ctrl-C (SIGINT) of a real `iic train` once its first epoch is saved: status 130, one line naming the
    command that continues it, and that command does."""
    out = tmp_path / "run"
    iic = shutil.which("iic", path=str(BIN))
    args = [
        iic,
        "train",
        "--preset",
        "tiny",
        "--data",
        str(data),
        "--out",
        str(out),
        "--crop",
        "32",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--monitor-every",
        "0",
        "--epochs",
        "40",
    ]
    proc = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        # a shell without job control starts background jobs with SIGINT ignored, and a child inherits that
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 300
    while not (out / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert err.splitlines()[-1] == f"Interrupted: `iic train --resume {out}` continues it.", err[-500:]
    resumed = subprocess.run(
        [iic, "train", "--resume", str(out), "--epochs", "2"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert resumed.returncode == 2 and "fewer than the run's 40" in resumed.stderr  # a run is not shortened
    done = subprocess.run(
        [iic, "train", "--resume", str(out), "--epochs", "41"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "final.pt").exists()


def test_a_checkpoint_that_cannot_be_written_is_one_line_and_the_last_one_is_kept(
    data, tmp_path, monkeypatch
):
    """The second epoch's checkpoint meets a full disk (or a read-only, or a forbidden folder): one line
    naming the run folder and what to do; the first epoch's last.pt is whole, no temporary file is left, and
    the run continues from it."""
    import torch

    from iic.model import checkpoint

    out, code, words = tmp_path / "run", 28, "no space left on"
    save, calls = torch.save, []

    def failing_save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(code, os.strerror(code), str(out / ".last.pt.tmp"))
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    args = [
        "train",
        "--preset",
        "tiny",
        "--data",
        str(data),
        "--out",
        str(out),
        "--crop",
        "32",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--monitor-every",
        "0",
        "--epochs",
        "2",
    ]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1, r.output
    [line] = [line for line in r.stderr.splitlines() if line.startswith("Error:")]
    assert (
        line.startswith("Error: ")
        and words in line
        and str(out) in line
        and "last.pt as it was is kept" in line
    ), line
    assert "a run continues with --resume" in line
    assert checkpoint.load(out / "last.pt")["epoch"] == 1 and not list(out.glob(".*.tmp"))
    monkeypatch.setattr(torch, "save", save)
    resumed = CliRunner().invoke(main, ["train", "--resume", str(out)])
    assert resumed.exit_code == 0, resumed.output
    assert checkpoint.load(out / "final.pt")["epoch"] == 2


@pytest.mark.parametrize(
    "code,words",
    [(28, "no space left on"), (30, "read-only file system"), (13, "permission denied")],
    ids=["ENOSPC", "EROFS", "EACCES"],
)
def test_every_unwritable_checkpoint_is_one_storage_line(tmp_path, monkeypatch, code, words):
    import torch

    from iic.model import checkpoint
    from iic.pipeline.storage import StorageError

    path = tmp_path / "last.pt"
    checkpoint.save_atomic({"epoch": 1}, path)
    monkeypatch.setattr(
        torch, "save", lambda *a, **k: (_ for _ in ()).throw(OSError(code, os.strerror(code)))
    )
    with pytest.raises(StorageError) as err:
        checkpoint.save_atomic({"epoch": 2}, path)
    assert (
        words in str(err.value) and str(tmp_path) in str(err.value) and len(str(err.value).splitlines()) == 1
    )
    assert checkpoint.load(path)["epoch"] == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
