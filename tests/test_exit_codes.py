"""The exit statuses and streams of the installed console scripts, in real processes: 0 done, 1 a data or
runtime error, 2 a usage error (every validation of options), 3 done with failures listed. An error is one
``Error:`` line on stderr, never a traceback; messages, warnings and the lists of failed videos go to stderr,
results (summaries, info) to stdout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def _run(tmp_path: Path, script: str, *args: str, data: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1", "IIC_DATA": str(data or tmp_path / "data")},
    )


def _one_error(r: subprocess.CompletedProcess) -> str:
    """The one ``Error:`` line of a failed run (click's usage errors put its usage lines above it)."""
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and errors[0].startswith("Error: "), r.stderr
    assert "Traceback" not in r.stderr and r.stdout == "", (r.stdout, r.stderr)
    return errors[0]


@pytest.mark.parametrize(
    "script,args,words",
    [
        ("iic", ["train", "--preset", "nosuch"], "unknown preset 'nosuch'"),
        ("iic-prep", ["synth", "--size", "97x128"], "--size 97x128: height and width must be even"),
        ("iic-prep", ["synth", "--classes", "99"], "--classes 99: must be in 1..10"),
        (
            "iic-prep",
            ["synth", "--per-class", "4", "--groups", "5"],
            "--per-class 4 --groups 5: need at least as many videos per class as groups",
        ),
        ("iic-prep", ["synth", "--per-class", "2"], "--per-class 2: need at least 3 videos per class"),
        (
            "iic-prep",
            ["synth", "--groups", "50"],
            "--groups 50 (with --per-class 45, the default): need at least",
        ),
    ],
)
def test_bad_usage_exits_2(tmp_path, script, args, words):
    r = _run(tmp_path, script, *args, *(["--out", str(tmp_path / "synth")] if args[0] == "synth" else []))
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and words in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "synth").exists()


def test_data_errors_still_exit_1(tmp_path):
    out = str(tmp_path / "synth")
    first = _run(
        tmp_path, "iic-prep", "synth", "--out", out, "--classes", "2", "--per-class", "3", "--frames", "2"
    )
    assert first.returncode == 0, first.stderr
    other = _run(
        tmp_path, "iic-prep", "synth", "--out", out, "--classes", "2", "--per-class", "3", "--frames", "3"
    )
    assert other.returncode == 1 and "Traceback" not in other.stderr
    assert _one_error(other) == (
        f"Error: {out} holds a dataset made with another config (--frames 2, "
        "asked 3): pass --overwrite to replace it"
    )
    missing = _run(tmp_path, "iic", "train", "--preset", "tiny", "--data", str(tmp_path / "nothing"))
    assert missing.returncode == 1 and "iic-prep extract" in missing.stderr


# ----------------------------------------------------------------------------------------------------------
# every iic-prep command on a tiny synthetic dataset, one video of which is missing


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict:
    """synth, extract (--name synth) and flow (--dataset synth) through the console scripts; their runs."""
    tmp = tmp_path_factory.mktemp("exit")
    raw = tmp / "data" / "raw" / "synth"
    runs = {
        "synth": _run(
            tmp,
            "iic-prep",
            "synth",
            "--out",
            raw,
            "--classes",
            "2",
            "--per-class",
            "3",
            "--frames",
            "4",
            "--size",
            "32x32",
        )
    }
    missing = sorted((raw / "UCF-101").rglob("*.avi"))[0]
    missing.unlink()
    runs["extract"] = _run(
        tmp, "iic-prep", "extract", "--root", raw, "--name", "synth", "--size", "32x32", "--workers", "1"
    )
    runs["flow"] = _run(
        tmp, "iic-prep", "flow", "--dataset", "synth", "--method", "farneback", "--workers", "1"
    )
    vid = f"{missing.parent.name}/{missing.stem}"
    return {"tmp": tmp, "raw": raw, "data": tmp / "data" / "synth", "missing": vid, "runs": runs}


def test_synth_summary_and_its_hint(prepared):
    r, raw = prepared["runs"]["synth"], prepared["raw"]
    assert r.returncode == 0, r.stderr
    assert r.stdout == (
        f"6 videos of 2 classes in {raw} "
        f"(extract with: iic-prep extract --dataset ucf101 --root {raw} --name synth)\n"
    )
    assert "Error" not in r.stderr


@pytest.mark.parametrize(
    "stage, unit, reason",
    [("extract", "frames", "file not found"), ("flow", "flow pairs", "no frames: file not found")],
)
def test_a_stage_with_failures_exits_3_with_them_on_stderr(prepared, stage, unit, reason):
    r, data = prepared["runs"][stage], prepared["data"]
    assert r.returncode == 3, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"videos: 6 (5 ok, 1 failed)   {unit}: "), r.stdout
    assert lines[0].endswith(f"-> {data if stage == 'extract' else data / 'flow'}")
    assert f"  failed {prepared['missing']}: {reason}" in r.stderr.splitlines()
    assert "Error" not in r.stderr


def test_verbose_logs_debug_lines(prepared):
    args = ["extract", "--root", prepared["raw"], "--name", "synth", "--size", "32x32", "--workers", "1"]
    quiet = _run(prepared["tmp"], "iic-prep", *args)
    verbose, short = (_run(prepared["tmp"], "iic-prep", flag, *args) for flag in ("--verbose", "-v"))
    assert quiet.returncode == verbose.returncode == short.returncode == 3
    debug = "DEBUG iic.pipeline.parallel: extract: 0 task(s) of 0 video(s) on loky with 1 worker(s)"
    assert debug in verbose.stderr.splitlines() and debug in short.stderr.splitlines()
    assert "DEBUG" not in quiet.stderr
    assert "shards: 0 written, 1 kept" in verbose.stdout


def test_info_show_and_check_print_results_on_stdout(prepared):
    tmp, data = prepared["tmp"], prepared["data"]
    info = _run(tmp, "iic-prep", "info", "--data", data)
    assert info.returncode == 0 and info.stderr == "", info.stderr
    assert info.stdout.startswith(f"{data}: ucf101 split 1, 2 classes, frames 32x32 (HxW) jpeg q90\n")
    from iic.pipeline.reader import VideoStore

    vid = VideoStore(data).ok_rows()[0].id
    show = _run(
        tmp, "iic-prep", "show", "--data", data, "--video", vid, "--out", tmp / "v.png", "--columns", "2"
    )
    assert show.returncode == 0 and show.stdout == f"wrote {tmp / 'v.png'}\n" and (tmp / "v.png").exists()
    check = _run(tmp, "iic-prep", "check", "--data", data)
    assert check.returncode == 0 and check.stdout == f"{data}: ok\n" and check.stderr == "", check.stderr


@pytest.mark.parametrize(
    "args, status, words",
    [
        (["extract", "--name", "a/b"], 2, "--name 'a/b': a folder name is needed, not a path"),
        (
            ["extract", "--unlabelled"],
            2,
            "--subset and --unlabelled apply to the Kinetics datasets, not ucf101",
        ),
        (
            ["extract", "--dataset", "folder", "--split", "2"],
            2,
            "the folder layout has a single split: use --split 1",
        ),
        (
            ["extract", "--dataset", "kinetics400", "--subset", "nosuch.txt"],
            2,
            "Invalid value for '--subset': File 'nosuch.txt' does not exist.",
        ),
        (
            ["extract", "--name", "synth", "--size", "32x48"],
            1,
            "{data} was extracted with size 32x32, asked 32x48: pass --overwrite to replace it, or --name to "
            "extract beside it",
        ),
        (["extract", "--root", "nothing"], 1, "dataset root not found: nothing"),
        (
            ["flow", "--dataset", "synth", "--device", "cpu"],
            2,
            "--device is only used with --method tvl1-torch",
        ),
        (
            ["flow", "--dataset", "synth", "--bound", "5"],
            1,
            "{data}/flow was computed with method farneback, asked tvl1; bound 20.0, asked 5.0: "
            "pass --overwrite to recompute it",
        ),
        (["flow", "--data", "nothing"], 1, "no processed dataset at nothing"),
        (
            ["show", "--video", "x", "--out", "v.gif", "--data", "{data}"],
            2,
            "the picture's name must end in .png",
        ),
        (
            ["show", "--video", "nosuch", "--out", "v.png", "--data", "{data}"],
            1,
            "video 'nosuch' is not in the manifest of {data}",
        ),
        (["info", "--data", "nothing"], 1, "no processed dataset at nothing"),
        (["check", "--data", "nothing"], 1, "1 problem(s) in nothing"),
    ],
)
def test_refusals_are_one_error_line_with_their_status(prepared, args, status, words):
    data = prepared["data"]
    args = [a.format(data=data) for a in args]
    root = [] if "--root" in args or args[0] != "extract" else ["--root", prepared["raw"]]
    r = _run(prepared["tmp"], "iic-prep", *args, *root)
    assert r.returncode == status, (args, r.returncode, r.stderr)
    assert words.format(data=data) in _one_error(r), r.stderr
