"""`iic-prep extract` through the real CLI: bad input, exit codes, resume after SIGKILL, locking, dask."""

from __future__ import annotations

import contextlib
import csv
import errno
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import av
import h5py
import numpy as np
import pytest
from conftest import (
    build_hmdb51,
    build_ucf101,
    decode_count,
    decode_resized,
    error_lines,
    failing_writes,
    gated_env,
    jpeg_roundtrip,
    prep_command,
    release_gate,
    run_prep,
    synth_frames,
    wait_for,
    write_audio_only,
    write_video,
)

from iic.pipeline.decode import iter_frames
from iic.pipeline.format import FormatError, read_manifest
from iic.pipeline.lock import exclusive
from iic.pipeline.parallel import EXIT_SOME_FAILED
from iic.pipeline.reader import VideoStore
from iic.pipeline.storage import size_text

SIZE = (45, 61)  # odd on purpose: JPEG and the resize must cope with any HxW
SIZE_ARG = f"{SIZE[0]}x{SIZE[1]}"


def _manifest(data: Path) -> dict[str, dict]:
    with open(data / "manifest.csv", newline="") as f:
        return {r["id"]: r for r in csv.DictReader(f)}


def _truncate(path: Path, fraction: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def _bad_input_layout(raw: Path) -> dict[str, str]:
    """A UCF101 layout where most videos are broken in one of the ways real archives are broken.
    Returns rel path -> what the case is."""
    cases = {
        "Good/v_Good_g01_c01.avi": "good",
        "Good/v_Good_g02_c01.avi": "good",
        "Broken/v_Broken_trunc_c01.mp4": "truncated mp4, index at the end: cannot open",
        "Broken/v_Broken_lying_c01.avi": "truncated avi: header says 60 frames",
        "Broken/v_Broken_lying_c02.mp4": "faststart mp4 cut at 90%: header says 40 frames",
        "Broken/v_Broken_empty_c01.avi": "0 bytes",
        "Broken/v_Broken_missing_c01.avi": "listed, no file",
        "Broken/v_Broken_audio_c01.avi": "audio only",
        "Broken/v_Broken_garbage_c01.avi": "random bytes",
        "Odd/v_Odd_short_c01.avi": "10 frames",
        "Odd/v_Odd_single_c01.avi": "1 frame",
        "Odd/v_Odd_size_c01.mkv": "321x239 ffv1",
        "Odd/v_Odd_gray_c01.mkv": "gray ffv1",
        "Odd/v_Odd_pal8_c01.avi": "pal8 png",
    }
    build_ucf101(raw, {rel: None for rel in cases}, train={r for r in cases if "c01" in r})
    v = raw / "UCF-101"
    write_video(v / "Good/v_Good_g01_c01.avi", synth_frames(20, seed=1))
    write_video(v / "Good/v_Good_g02_c01.avi", synth_frames(24, seed=2))
    write_video(v / "Broken/v_Broken_trunc_c01.mp4", synth_frames(30, seed=3))
    _truncate(v / "Broken/v_Broken_trunc_c01.mp4", 0.5)
    write_video(v / "Broken/v_Broken_lying_c01.avi", synth_frames(60, seed=4))
    _truncate(v / "Broken/v_Broken_lying_c01.avi", 0.7)
    write_video(
        v / "Broken/v_Broken_lying_c02.mp4",
        synth_frames(40, seed=5),
        container_options={"movflags": "faststart"},
    )
    _truncate(v / "Broken/v_Broken_lying_c02.mp4", 0.9)
    (v / "Broken/v_Broken_empty_c01.avi").write_bytes(b"")
    write_audio_only(v / "Broken/v_Broken_audio_c01.avi")
    (v / "Broken/v_Broken_garbage_c01.avi").write_bytes(np.random.default_rng(0).bytes(5000))
    write_video(v / "Odd/v_Odd_short_c01.avi", synth_frames(10, seed=6))
    write_video(v / "Odd/v_Odd_single_c01.avi", synth_frames(1, seed=7))
    write_video(
        v / "Odd/v_Odd_size_c01.mkv", synth_frames(12, 239, 321, seed=8), codec="ffv1", pix_fmt="yuv444p"
    )
    write_video(v / "Odd/v_Odd_gray_c01.mkv", synth_frames(12, seed=9), codec="ffv1", pix_fmt="gray")
    write_video(v / "Odd/v_Odd_pal8_c01.avi", synth_frames(12, seed=10), codec="png", pix_fmt="pal8")
    return cases


def test_bad_input_is_extracted_or_failed_with_a_reason(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    cases = _bad_input_layout(raw)
    result = run_prep(
        "extract", "--root", raw, "--out", out, "--size", SIZE_ARG, "--shard-size", "3", "--workers", "2"
    )
    assert "Traceback" not in result.output
    assert result.exit_code == EXIT_SOME_FAILED == 3, result.output
    data = out / "ucf101"
    rows = {r.id: r for r in read_manifest(data / "manifest.csv")}
    assert sorted(r.path for r in rows.values()) == sorted(cases)  # every listed video has a row
    failed = {r.id.split("/")[1]: r.reason for r in rows.values() if not r.ok}
    assert set(failed) == {
        "v_Broken_trunc_c01",
        "v_Broken_empty_c01",
        "v_Broken_missing_c01",
        "v_Broken_audio_c01",
        "v_Broken_garbage_c01",
    }
    assert failed["v_Broken_empty_c01"] == "empty file (0 bytes)"
    assert failed["v_Broken_missing_c01"] == "file not found"
    assert failed["v_Broken_audio_c01"] == "no video stream"
    assert failed["v_Broken_trunc_c01"].startswith("cannot open")
    assert failed["v_Broken_garbage_c01"].startswith(("cannot open", "no decodable frames"))
    assert all(reason and "\n" not in reason for reason in failed.values())
    # the summary on stdout; every failure on one line each on stderr
    for vid, reason in failed.items():
        assert any(
            line.strip().startswith("failed") and vid in line and reason in line
            for line in result.stderr.splitlines()
        )
    assert result.stdout.startswith("videos: 14 (9 ok, 5 failed)") and len(result.stdout.splitlines()) == 1

    store = VideoStore(data)
    v = raw / "UCF-101"
    expected_counts = {
        "Good/v_Good_g01_c01": 20,
        "Good/v_Good_g02_c01": 24,
        "Odd/v_Odd_short_c01": 10,
        "Odd/v_Odd_single_c01": 1,
        "Odd/v_Odd_size_c01": 12,
        "Odd/v_Odd_gray_c01": 12,
        "Odd/v_Odd_pal8_c01": 12,
    }
    for vid, n in expected_counts.items():
        assert rows[vid].n_frames == n, vid
    # headers that lie: the count is the decoded one, not the container's
    for vid, header in (("Broken/v_Broken_lying_c01", 60), ("Broken/v_Broken_lying_c02", 40)):
        path = v / rows[vid].path
        with av.open(str(path)) as c:
            assert c.streams.video[0].frames == header
        assert 0 < rows[vid].n_frames == decode_count(path) < header, vid
        # kept, with the damage in its reason (never a damaged stream recorded as clean)
        assert (
            rows[vid].ok
            and f"decoded {rows[vid].n_frames} of the {header} frames the container claims"
            in rows[vid].reason
        )
    for vid in expected_counts:  # clean files say nothing
        assert rows[vid].reason == "", (vid, rows[vid].reason)
    info = run_prep("info", "--data", data)
    assert "ok with warnings: 2 videos" in info.output, info.output
    assert "decoded N of the N frames the container claims (2)" in info.output, info.output
    for vid in expected_counts:
        got = store.frames(vid)
        ref = decode_resized(v / rows[vid].path, SIZE)
        assert got.shape == ref.shape == (rows[vid].n_frames, *SIZE, 3)
        # exactly the codec's round trip of a fresh decode + resize: the only loss is the documented JPEG q90
        np.testing.assert_array_equal(got, jpeg_roundtrip(ref, 90), err_msg=vid)
        assert np.abs(got.astype(np.int16) - ref).mean() < 8, (
            vid
        )  # 4:2:0 chroma; pal8 (saturated colours) 6.7
    gray = store.frames("Odd/v_Odd_gray_c01").astype(np.int16)
    assert np.abs(gray[..., 0] - gray[..., 1]).max() <= 2 and np.abs(gray[..., 0] - gray[..., 2]).max() <= 2
    single = store.residuals("Odd/v_Odd_single_c01")
    assert single.shape == (1, *SIZE, 3) and (single == 128).all()
    store.close()

    check = run_prep("check", "--data", data)
    assert check.exit_code == 0, check.output
    info = run_prep("info", "--data", data)
    assert info.exit_code == 0
    assert "14 videos, 9 ok, 5 failed" in info.output
    assert f"frames {SIZE[0]}x{SIZE[1]} (HxW) jpeg q90" in info.output


def test_hmdb_special_names_through_the_cli(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    names = [
        "#20_Rhythm_clip1_cartwheel_f_cm_np1_le_med_0.avi",
        "(Rad)Schlag_die_Bank!_cartwheel_f_cm_np1_le_med_0.avi",
        "Bodenturnen_&_Gymnastik+_cartwheel_f_cm_np1_ri_bad_0.avi",
        "Tom's_Cartwheel_cartwheel_f_cm_np1_fr_med_0.avi",
    ]
    flags = ["1", "2", "1", "0"]
    lines = {"cartwheel": [f"{n} {f} " for n, f in zip(names, flags, strict=True)]}
    build_hmdb51(raw, lines, {f"cartwheel/{n}": synth_frames(16 + i, seed=i) for i, n in enumerate(names)})
    result = run_prep(
        "extract", "--dataset", "hmdb51", "--root", raw, "--out", out, "--workers", "1", "--size", "32x40"
    )
    assert result.exit_code == 0, result.output
    rows = {r.path: r for r in read_manifest(out / "hmdb51" / "manifest.csv")}
    assert sorted(rows) == sorted(f"cartwheel/{n}" for n in names[:3])  # flag 0 is not listed
    assert [rows[f"cartwheel/{n}"].n_frames for n in names[:3]] == [16, 17, 18]
    assert rows[f"cartwheel/{names[1]}"].splits == "1:test"
    store = VideoStore(out / "hmdb51")
    assert store.frames(f"cartwheel/{names[2][:-4]}", 3, 2).shape == (2, 32, 40, 3)


def test_folder_layout_mixed_containers(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_video(raw / "a/one.avi", synth_frames(16, seed=1))
    write_video(raw / "a/two.mp4", synth_frames(17, seed=2))
    write_video(raw / "b/three.mkv", synth_frames(18, seed=3), codec="ffv1", pix_fmt="yuv420p")
    write_video(raw / "b/four.mov", synth_frames(19, seed=4), codec="mjpeg", pix_fmt="yuvj420p")
    result = run_prep(
        "extract", "--dataset", "folder", "--root", raw, "--out", out, "--workers", "1", "--size", "32x40"
    )
    assert result.exit_code == 0, result.output
    rows = {r.id: (r.class_name, r.label, r.n_frames) for r in read_manifest(out / "folder" / "manifest.csv")}
    assert rows == {
        "a/one": ("a", 0, 16),
        "a/two": ("a", 0, 17),
        "b/three": ("b", 1, 18),
        "b/four": ("b", 1, 19),
    }


def test_all_ok_exits_0_and_rerun_keeps_shards(small_ucf, tmp_path):
    out = tmp_path / "out"
    args = [
        "extract",
        "--root",
        small_ucf,
        "--out",
        out,
        "--size",
        "32x40",
        "--shard-size",
        "2",
        "--workers",
        "1",
    ]
    first = run_prep(*args)
    assert first.exit_code == 0, first.output
    assert "videos: 4 (4 ok, 0 failed)   frames: 75" in first.output
    assert "shards: 2 written, 0 kept" in first.output
    data = out / "ucf101"
    assert sorted(p.name for p in (data / "frames").iterdir()) == ["shard-00000.h5", "shard-00001.h5"]
    mtimes = {p: p.stat().st_mtime_ns for p in (data / "frames").iterdir()}
    second = run_prep(*args)
    assert second.exit_code == 0 and "shards: 0 written, 2 kept" in second.output
    assert {p: p.stat().st_mtime_ns for p in (data / "frames").iterdir()} == mtimes
    # a setting that changes the stored bytes is refused: the data is never replaced without --overwrite
    refused = run_prep(*args, "--quality", "70")
    assert refused.exit_code == 1 and error_lines(refused.output) == [
        f"Error: {data} was extracted with quality 90, asked 70: pass --overwrite to replace it, or --name "
        "to extract beside it"
    ], refused.output
    assert {p: p.stat().st_mtime_ns for p in (data / "frames").iterdir()} == mtimes
    assert (data / "manifest.csv").exists()  # still a dataset
    third = run_prep(*args, "--quality", "70", "--overwrite")
    assert "shards: 2 written, 0 kept" in third.output
    with h5py.File(data / "frames" / "shard-00000.h5") as f:
        assert '"quality": 70' in f.attrs["settings"]
    # --overwrite redoes everything even when nothing changed
    fourth = run_prep(*args, "--quality", "70", "--overwrite")
    assert fourth.exit_code == 0 and "shards: 2 written, 0 kept" in fourth.output
    # another shard size: shards of the old plan are removed, not left behind
    fifth = run_prep(*args[:-4], "--shard-size", "3", "--workers", "1", "--quality", "70")
    assert fifth.exit_code == 0
    assert sorted(p.name for p in (data / "frames").iterdir()) == ["shard-00000.h5", "shard-00001.h5"]
    assert [r.shard for r in read_manifest(data / "manifest.csv")] == ["frames/shard-00000.h5"] * 3 + [
        "frames/shard-00001.h5"
    ]
    assert run_prep("check", "--data", data).exit_code == 0


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--size", "12x"], "--size"),
        (["--size", "8x8"], "--size"),
        (["--split", "4"], "--split"),
        (["--workers", "0"], "--workers"),
        (["--quality", "30"], "--quality"),
        (["--dataset", "kinetics"], "--dataset"),
        (["--backend", "dask"], "--scheduler"),
        (["--scheduler", "tcp://127.0.0.1:1"], "--scheduler"),
        (["--backend", "spark"], "--backend"),
    ],
)
def test_bad_flags_are_one_line_usage_errors(small_ucf, tmp_path, flags, needle):
    result = run_prep("extract", "--root", small_ucf, "--out", tmp_path / "out", *flags)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = error_lines(result.output)
    assert len(errors) == 1 and needle in errors[0], result.output
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------------------
# resume, locking


def _resume_layout(raw: Path, n: int = 12) -> Path:
    videos = {f"C{i % 3}/v_C{i % 3}_g{i:02d}_c01.avi": synth_frames(40, 96, 128, seed=i) for i in range(n)}
    return build_ucf101(raw, videos, train={k for k in videos if int(k.split("_g")[1][:2]) % 2})


def _assert_same_data(a: Path, b: Path) -> None:
    """Same manifest and bit-identical stored JPEG streams of every video."""
    assert (a / "manifest.csv").read_text() == (b / "manifest.csv").read_text()
    sa, sb = VideoStore(a), VideoStore(b)
    for row in sa.rows:
        assert row.ok
        for m in ("rgb", "res"):
            np.testing.assert_array_equal(sa.read(row.id, m), sb.read(row.id, m))
        with h5py.File(a / row.shard) as fa, h5py.File(b / row.shard) as fb:
            ga, gb = fa[f"videos/{row.slot:05d}"], fb[f"videos/{row.slot:05d}"]
            assert sorted(ga) == sorted(gb)
            for name in ga:
                np.testing.assert_array_equal(ga[name][()], gb[name][()])
    sa.close()
    sb.close()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path, workers):
    """SIGKILL a real run (and its workers) while it decodes the last video, its shard half-open, every other
    shard written: held there at a gate, the run cannot finish first, however busy the machine."""
    raw = _resume_layout(tmp_path / "raw")
    args = ["extract", "--root", str(raw), "--size", "64x80", "--shard-size", "1", "--workers", workers]
    ref = run_prep(*args, "--out", tmp_path / "ref")
    assert ref.exit_code == 0, ref.output

    out = tmp_path / "out"
    frames_dir = out / "ucf101" / "frames"
    # an earlier complete run at another size: the killed run must not leave its manifest looking valid
    assert run_prep(*args[:3], "--size", "32x40", *args[5:], "--out", out).exit_code == 0
    last = sorted(p.name for p in (raw / "UCF-101").rglob("*.avi"))[-1]  # the videos are sorted by id
    marker = tmp_path / "held"
    env = gated_env("iic.pipeline.extract:encode_video", last, marker)

    def rewritten() -> list[Path]:  # complete shards at the new size (renamed into place whole)
        done = []
        for p in sorted(frames_dir.glob("shard-*.h5")):
            with h5py.File(p) as f:
                if '"size": [64, 80]' in f.attrs["settings"]:
                    done.append(p)
        return done

    # at another size: --overwrite (refused without)
    proc = subprocess.Popen(
        prep_command() + args + ["--out", str(out), "--overwrite"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    wait_for(lambda: marker.exists() and len(rewritten()) == 11, proc, "11 shards written and the 12th held")
    os.killpg(proc.pid, signal.SIGKILL)  # the run and its worker processes, mid-run
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    assert not (out / "ucf101" / "manifest.csv").exists()
    with pytest.raises(FormatError, match="no manifest"):
        VideoStore(out / "ucf101")  # an unfinished run is never read as a dataset
    assert len(list(frames_dir.glob("shard-00011.h5.*.tmp"))) == 1  # the held shard, half-written
    for p in sorted(frames_dir.glob("shard-*.h5")):  # every file under a final name is whole
        with h5py.File(p) as f:
            assert "rows" in f.attrs
    assert len(rewritten()) == 11

    again = run_prep(*args, "--out", out)
    assert again.exit_code == 0, again.output
    assert "1 written, 11 kept" in again.output
    assert not list(frames_dir.glob("*.tmp"))
    _assert_same_data(out / "ucf101", tmp_path / "ref" / "ucf101")


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    """Running (a zombie left unreaped by a PID 1 that does not reap is dead)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_stream_cut_inside_a_frame_notes_the_decoder_errors(tmp_path):
    """An MPEG-4 AVI of noise cut at 40%, inside a frame: FFmpeg logs the damage (at ERROR level, captured per
    video, not printed); the video is kept with the shortfall and the decoder's first error in its notes."""
    noise = np.random.default_rng(0).integers(0, 256, (48, 96, 128, 3), dtype=np.uint8)
    path = _truncate(write_video(tmp_path / "cut.avi", noise), 0.4)
    notes: list[str] = []
    n = sum(1 for _ in iter_frames(path, (48, 64), 1, notes))
    assert 0 < n < 48
    assert notes[0] == f"decoded {n} of the 48 frames the container claims", notes
    assert notes[1].startswith("decoder reported ") and " error(s), first: " in notes[1], notes
    clean: list[str] = []
    assert sum(1 for _ in iter_frames(write_video(tmp_path / "whole.avi", noise), (48, 64), 1, clean)) == 48
    assert clean == []


def test_workers_end_with_a_killed_run(tmp_path):
    """SIGKILL of the run's process alone (not its group): its 2 workers, one held at a gate inside a video
    and one busy with the rest, end within seconds, publish no shard after the kill, and a new run resumes."""
    raw = _resume_layout(tmp_path / "raw", n=24)
    out = tmp_path / "out"
    args = [
        "extract",
        "--root",
        str(raw),
        "--out",
        str(out),
        "--size",
        "64x80",
        "--shard-size",
        "1",
        "--workers",
        "2",
    ]
    held = sorted(p.name for p in (raw / "UCF-101").rglob("*.avi"))[1]
    marker = tmp_path / "held"
    proc = subprocess.Popen(
        prep_command() + args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env=gated_env("iic.pipeline.extract:encode_video", held, marker),
    )
    try:
        wait_for(marker.exists, proc, "a worker held inside a video")
        workers = _children(proc.pid)
        assert int(marker.read_text()) in workers, (workers, marker.read_text())
        killed = time.time()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [w for w in workers if _alive(w)], "workers outlived their run by 10 s"
        frames_dir = out / "ucf101" / "frames"
        late = [p.name for p in frames_dir.glob("shard-*.h5") if p.stat().st_mtime > killed + 1.0]
        assert not late, f"shards published after the run was killed: {late}"
        assert len(list(frames_dir.glob("shard-*.h5"))) < 24  # the run was stopped, not finished
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    again = run_prep(*args)
    assert again.exit_code == 0, again.output
    assert not list((out / "ucf101" / "frames").glob("*.tmp"))


def test_changed_lists_redo_the_shards_they_touch(small_ucf, tmp_path):
    """Rows of a kept shard go into the manifest as they are: a change in the lists must redo the shard."""
    args = ["extract", "--root", small_ucf, "--size", "32x40", "--shard-size", "2", "--workers", "1"]
    assert run_prep(*args, "--out", tmp_path / "out").exit_code == 0
    lists = small_ucf / "ucfTrainTestlist"
    (lists / "trainlist02.txt").write_bytes(b"HandstandPushups/v_HandStandPushups_g02_c01.avi 2\r\n")
    (lists / "testlist02.txt").write_bytes(b"HandstandPushups/v_HandStandPushups_g01_c01.avi\r\n")
    again = run_prep(*args, "--out", tmp_path / "out")
    assert again.exit_code == 0 and "shards: 1 written, 1 kept" in again.output
    fresh = run_prep(*args, "--out", tmp_path / "fresh")
    assert fresh.exit_code == 0
    _assert_same_data(tmp_path / "out" / "ucf101", tmp_path / "fresh" / "ucf101")
    rows = {r.id: r.splits for r in read_manifest(tmp_path / "out" / "ucf101" / "manifest.csv")}
    assert rows["HandstandPushups/v_HandStandPushups_g02_c01"] == "1:test 2:train"


def test_concurrent_run_is_refused_without_damage(small_ucf, tmp_path):
    out = tmp_path / "out"
    args = [
        "extract",
        "--root",
        small_ucf,
        "--out",
        out,
        "--size",
        "32x40",
        "--shard-size",
        "2",
        "--workers",
        "1",
    ]
    assert run_prep(*args).exit_code == 0
    data = out / "ucf101"
    before = {p: p.read_bytes() for p in sorted(data.rglob("*")) if p.is_file() and p.name != ".lock"}
    with exclusive(data, "iic-prep extract"):  # another run holds the folder
        result = run_prep(*args, "--overwrite")
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    errors = error_lines(result.output)
    assert len(errors) == 1 and "in use by iic-prep extract (pid" in errors[0] and "concurrently" in errors[0]
    after = {p: p.read_bytes() for p in sorted(data.rglob("*")) if p.is_file() and p.name != ".lock"}
    assert after == before
    assert run_prep("check", "--data", data).exit_code == 0


def test_second_live_run_is_refused(tmp_path):
    """A real second process while the first is writing (held at a gate on its last video): refused, and the
    first, let go, completes intact."""
    raw = _resume_layout(tmp_path / "raw")
    out = tmp_path / "out"
    args = [
        "extract",
        "--root",
        str(raw),
        "--out",
        str(out),
        "--size",
        "64x80",
        "--shard-size",
        "1",
        "--workers",
        "1",
    ]
    marker = tmp_path / "held"
    last = sorted(p.name for p in (raw / "UCF-101").rglob("*.avi"))[-1]
    first = subprocess.Popen(
        prep_command() + args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=gated_env("iic.pipeline.extract:encode_video", last, marker),
    )
    try:
        wait_for(marker.exists, first, "the first run at its last video")
        second = subprocess.run(prep_command() + args, capture_output=True, text=True, timeout=120)
    finally:
        release_gate(marker, first)
    first_out, first_err = first.communicate(timeout=300)
    assert second.returncode == 1, second.stderr
    assert "Traceback" not in second.stderr
    assert error_lines(second.stderr)[0].startswith(
        f"Error: {out / 'ucf101'} is in use by iic-prep extract (pid {first.pid})"
    )
    assert first.returncode == 0, first_err.decode()
    assert b"videos: 12 (12 ok, 0 failed)" in first_out
    assert run_prep("check", "--data", out / "ucf101").exit_code == 0


# ----------------------------------------------------------------------------------------------------------
# what the options store, and data never replaced without --overwrite


def _stored_jpeg(data: Path, row) -> bytes:
    """The first stored JPEG file of a video, as bytes."""
    with h5py.File(data / row.shard) as f:
        group = f[f"videos/{row.slot:05d}"]
        offsets = group["rgb_offsets"][()]
        return group["rgb"][offsets[0] : offsets[1]].tobytes()


@pytest.mark.parametrize(
    "flags, quality, subsampling",
    [([], 90, "420"), (["--subsampling", "444"], 90, "444"), (["--quality", "60"], 60, "420")],
)
def test_quality_and_subsampling_are_what_is_stored(small_ucf, tmp_path, flags, quality, subsampling):
    import simplejpeg

    result = run_prep(
        "extract", "--root", small_ucf, "--out", tmp_path, "--size", "32x40", "--workers", "1", *flags
    )
    assert result.exit_code == 0, result.output
    data = tmp_path / "ucf101"
    store = VideoStore(data)
    assert (store.meta["quality"], store.meta["subsampling"]) == (quality, subsampling)
    for row in store.ok_rows():
        assert simplejpeg.decode_jpeg_header(_stored_jpeg(data, row))[3] == subsampling
        ref = decode_resized(small_ucf / "UCF-101" / row.path, (32, 40))
        np.testing.assert_array_equal(store.frames(row.id), jpeg_roundtrip(ref, quality, subsampling))


def test_split_reads_that_splits_lists(small_ucf, tmp_path):
    lists = small_ucf / "ucfTrainTestlist"
    (lists / "trainlist02.txt").write_bytes(b"HandstandPushups/v_HandStandPushups_g02_c01.avi 2\r\n")
    (lists / "testlist02.txt").write_bytes(b"ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\r\n")
    result = run_prep(
        "extract", "--root", small_ucf, "--out", tmp_path, "--size", "32x40", "--workers", "1", "--split", "2"
    )
    assert result.exit_code == 0, result.output
    store = VideoStore(tmp_path / "ucf101")
    assert store.meta["split"] == 2
    assert {r.id: r.splits for r in store.rows} == {
        "HandstandPushups/v_HandStandPushups_g02_c01": "1:test 2:train",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01": "1:train 2:test",
    }
    assert [r.id for r in store.ok_rows(2, "train")] == ["HandstandPushups/v_HandStandPushups_g02_c01"]


def test_other_settings_are_refused_and_name_extracts_beside(small_ucf, tmp_path):
    args = [
        "extract",
        "--root",
        small_ucf,
        "--data-root",
        tmp_path,
        "--size",
        "32x40",
        "--shard-size",
        "2",
        "--workers",
        "1",
    ]
    assert run_prep(*args).exit_code == 0
    data = tmp_path / "ucf101"
    before = {p: p.read_bytes() for p in sorted(data.rglob("*")) if p.is_file() and p.name != ".lock"}
    tail = ": pass --overwrite to replace it, or --name to extract beside it"
    folder_layout = ["--dataset", "folder", "--root", small_ucf / "UCF-101"]
    for flags, differences in [
        (["--size", "24x32"], "size 32x40, asked 24x32"),
        (["--size", "24"], "size 32x40, asked short side 24"),
        (["--quality", "60"], "quality 90, asked 60"),
        (["--subsampling", "444"], "subsampling 420, asked 444"),
        (["--store-residuals"], "residuals derived, asked stored"),
        (["--quality", "60", "--subsampling", "444"], "quality 90, asked 60; subsampling 420, asked 444"),
        ([*folder_layout, "--name", "ucf101"], "layout ucf101, asked folder"),
    ]:
        result = run_prep(*args, *flags)
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (flags, result.output)
        assert result.stderr.splitlines() == [f"Error: {data} was extracted with {differences}{tail}"], flags
        assert result.stdout == ""
    assert {p: p.read_bytes() for p in sorted(data.rglob("*")) if p.is_file() and p.name != ".lock"} == before
    # the same settings resume; another shard size re-shards the same frames (no setting of the data changes)
    assert "shards: 0 written, 2 kept" in run_prep(*args).stdout
    resharded = run_prep(*args[:-4], "--shard-size", "3", "--workers", "1")
    assert resharded.exit_code == 0 and "shards: 2 written, 0 kept" in resharded.stdout
    # --name: beside it, with other settings
    beside = run_prep(*args, "--size", "24x32", "--name", "small")
    assert beside.exit_code == 0, beside.output
    assert beside.stdout.rstrip().endswith(f"-> {tmp_path / 'small'}")
    assert VideoStore(tmp_path / "small").size == (24, 32) and VideoStore(data).size == (32, 40)
    # --dataset folder writes <data root>/folder unless --name says otherwise
    folder = run_prep(*args, *folder_layout)
    assert folder.exit_code == 0 and VideoStore(tmp_path / "folder").meta["dataset"] == "folder"
    replaced = run_prep(*args, "--size", "24x32", "--overwrite")
    assert replaced.exit_code == 0 and VideoStore(data).size == (24, 32)
    assert run_prep("check", "--data", data).exit_code == 0


@pytest.mark.parametrize("name", ["a/b", "..", ".", ""])
def test_name_must_be_a_folder_name(small_ucf, tmp_path, name):
    result = run_prep("extract", "--root", small_ucf, "--out", tmp_path / "out", "--name", name)
    assert result.exit_code == 2 and result.stderr.splitlines() == [
        f"Error: --name {name!r}: a folder name is needed, not a path (the dataset goes to "
        "<data root>/<name>)"
    ]
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------------------
# a full disk, a read-only folder, permission denied: one line, complete shards kept, a rerun resumes

# HDF5's own wording of a write that the filesystem refused (h5py 3.16: the time holds a line break)
H5_WRITE_FAILED = (
    "Can't synchronously write data (file write failed: time = Sun Dec  6 05:30:06 2026\n, "
    "filename = '{name}', file descriptor = 5, errno = {errno}, error message = '{text}', "
    "buf = 0x55c7c8a94268, total write size = 4096, bytes this sub-write = 4096, offset = 0)"
)
H5_CREATE_FAILED = (
    "Unable to synchronously create file (unable to open file: name = '{name}', "
    "errno = {errno}, error message = '{text}', flags = 13, o_flags = 242)"
)


def _failing_creation(monkeypatch, shard: str, error) -> None:
    """Creating ``shard``'s temporary file raises ``error(filename)`` (or, for ``"/dev/full"``, writes it on a
    device that is always full: HDF5's real error)."""
    real = h5py.File

    def file(name, mode="r", *args, **kwargs):
        if mode == "w" and shard in str(name):
            if error == "/dev/full":
                os.symlink("/dev/full", name)
            else:
                raise error(str(name))
        return real(name, mode, *args, **kwargs)

    monkeypatch.setattr(h5py, "File", file)


def _no_space(name: str) -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


def _hdf5_no_space(name: str) -> OSError:
    return OSError(H5_WRITE_FAILED.format(name=name, errno=errno.ENOSPC, text="No space left on device"))


def _read_only(name: str) -> OSError:
    return OSError(errno.EROFS, "Read-only file system", name)


def _hdf5_read_only(name: str) -> OSError:
    return OSError(H5_CREATE_FAILED.format(name=name, errno=errno.EROFS, text="Read-only file system"))


def _denied(name: str) -> OSError:
    return PermissionError(errno.EACCES, "Permission denied")


NO_SPACE_TAIL = "needed for the next shard (shards so far are kept; free space and rerun to resume)"
READ_ONLY = (
    "read-only file system (shards so far are kept; make it writable or choose another folder, and rerun "
    "to resume)"
)
DENIED = (
    "permission denied (shards so far are kept; give this user write access or choose another folder, "
    "and rerun to resume)"
)

STORAGE_CASES = {  # where the write fails, the error, the message after "Error: cannot write to <folder>: "
    "ENOSPC": ("write", _no_space, "no space"),
    "hdf5 ENOSPC": ("write", _hdf5_no_space, "no space"),
    "/dev/full": ("create", "/dev/full", "no space"),
    "EROFS": ("create", _read_only, READ_ONLY),
    "hdf5 EROFS": ("create", _hdf5_read_only, READ_ONLY),
    "EACCES": ("write", _denied, DENIED),
}


@pytest.mark.parametrize("case", STORAGE_CASES)
def test_a_full_or_read_only_disk_ends_in_one_line_and_a_rerun_resumes(
    small_ucf, tmp_path, monkeypatch, case
):
    where, error, expected = STORAGE_CASES[case]
    if error == "/dev/full" and not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    args = [
        "extract",
        "--root",
        small_ucf,
        "--out",
        tmp_path,
        "--size",
        "32x40",
        "--shard-size",
        "2",
        "--workers",
        "1",
    ]
    frames = tmp_path / "ucf101" / "frames"
    with monkeypatch.context() as patch:
        if where == "write":  # the second shard's second video
            failing_writes(patch, "shard-00001.h5", error, after=3)
        else:
            _failing_creation(patch, "shard-00001.h5", error)
        result = run_prep(*args)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert result.stdout == ""
    errors = error_lines(result.stderr)
    kept = frames / "shard-00000.h5"
    if expected == "no space":
        needed = size_text(kept.stat().st_size)  # the next shard is estimated from the complete one
        assert re.fullmatch(
            rf"Error: no space left on {re.escape(str(frames))}: [\d.]+ [kMG]B free, "
            rf"~{needed} {re.escape(NO_SPACE_TAIL)}",
            errors[0],
        ), errors
    else:
        assert errors[0] == f"Error: cannot write to {frames}: {expected}", errors
    assert len(errors) == 1 and "buf =" not in result.output and "errno" not in result.output
    assert sorted(p.name for p in frames.rglob("*")) == ["shard-00000.h5"]  # no partial shard, the first kept
    assert not (tmp_path / "ucf101" / "manifest.csv").exists()
    again = run_prep(*args)
    assert again.exit_code == 0 and "shards: 1 written, 1 kept" in again.stdout, again.output
    assert run_prep("check", "--data", tmp_path / "ucf101").exit_code == 0


def test_a_full_disk_in_the_first_shard_estimates_from_the_shard_so_far(small_ucf, tmp_path, monkeypatch):
    """No shard is complete yet: the space needed is the first shard's bytes so far, scaled to its videos."""
    from iic.pipeline import writer

    attempted = []
    real = writer.ShardWriter.add_stream

    def add_stream(self, slot, name, encoded):
        attempted.append(sum(len(b) for b in encoded))
        return real(self, slot, name, encoded)

    monkeypatch.setattr(writer.ShardWriter, "add_stream", add_stream)
    failing_writes(monkeypatch, "shard-00000.h5", _no_space, after=3)
    result = run_prep(
        "extract",
        "--root",
        small_ucf,
        "--out",
        tmp_path,
        "--size",
        "32x40",
        "--shard-size",
        "4",
        "--workers",
        "1",
    )
    assert result.exit_code == 1 and len(attempted) == 2  # the second video's frames could not be written
    needed = sum(attempted) * 4 // 2  # 2 videos attempted of the shard's 4
    assert f"~{size_text(needed)} {NO_SPACE_TAIL}" in error_lines(result.stderr)[0], result.stderr
    assert not list((tmp_path / "ucf101" / "frames").rglob("*"))


def test_a_storage_error_crosses_the_worker_processes_as_one_line(tmp_path):
    """With loky workers the error is raised in a worker and re-raised in the run's process by joblib: the
    same type and the same one line (the writer's translation happens where the write failed)."""
    from iic.pipeline.parallel import ParallelConfig, run_tasks
    from iic.pipeline.storage import StorageError, storage_error

    expected = storage_error(OSError(errno.ENOSPC, "No space left on device"), tmp_path, 40_000_000)
    assert isinstance(expected, StorageError) and str(expected).startswith(f"no space left on {tmp_path}: ")
    code = (
        "from iic.pipeline.storage import storage_error; import errno; "
        f"raise storage_error(OSError(errno.ENOSPC, 'full'), {str(tmp_path)!r}, 40_000_000)"
    )
    with pytest.raises(StorageError) as caught:
        list(run_tasks(exec, [(code,)], ParallelConfig(workers=2), 1))
    assert type(caught.value) is StorageError and "\n" not in str(caught.value)
    assert str(caught.value).split(" free, ")[1] == str(expected).split(" free, ")[1]  # free space may move
    assert "~40 MB needed for the next shard" in str(caught.value)


@pytest.mark.parametrize(
    "n, text",
    [
        (0, "0 kB"),
        (850_000, "850 kB"),
        (999_499, "999 kB"),
        (1_000_000, "1.0 MB"),
        (4_240_000, "4.2 MB"),
        (37_400_000, "37 MB"),
        (9_990_000_000, "9990 MB"),
        (12_300_000_000, "12 GB"),
    ],
)
def test_size_text(n, text):
    assert size_text(n) == text


# ----------------------------------------------------------------------------------------------------------
# dask


def test_dask_backend_equals_loky(tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    raw = build_ucf101(
        tmp_path / "raw",
        {f"C{i % 2}/v_C{i % 2}_g{i:02d}_c01.avi": synth_frames(18, seed=i) for i in range(6)},
    )
    (raw / "UCF-101" / "C0/v_C0_g00_c01.avi").write_bytes(
        b""
    )  # a failure travels back from a dask worker too
    common = ["extract", "--root", raw, "--size", "32x40", "--shard-size", "2"]
    loky = run_prep(*common, "--out", tmp_path / "loky", "--workers", "2")
    assert loky.exit_code == 3, loky.output
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        result = run_prep(
            *common, "--out", tmp_path / "dask", "--backend", "dask", "--scheduler", cluster.scheduler_address
        )
    assert result.exit_code == 3, result.output
    assert "videos: 6 (5 ok, 1 failed)" in result.output
    _assert_same_data_allow_failed(tmp_path / "dask" / "ucf101", tmp_path / "loky" / "ucf101")


def _assert_same_data_allow_failed(a: Path, b: Path) -> None:
    assert (a / "manifest.csv").read_text() == (b / "manifest.csv").read_text()
    sa, sb = VideoStore(a), VideoStore(b)
    for row in sa.ok_rows():
        for m in ("rgb", "res"):
            np.testing.assert_array_equal(sa.read(row.id, m), sb.read(row.id, m))


def test_quiet_leak_guard_silences_lokys_leak_warning_and_nothing_else():
    """Workers (an HD decode, a training run) outgrow loky's 300 MB leak guard by design; loky then replaces
    them and warns, although nothing was lost. The guard hides that warning, as loky words it, and no
    other."""
    import inspect
    import warnings

    from joblib.externals.loky import process_executor

    from iic.pipeline.orphans import quiet_leak_guard

    text = (
        "A worker stopped while some jobs were given to the executor. This can be caused by a too short "
        "worker timeout or by a memory leak."
    )
    assert '"A worker stopped while some jobs were given to the "' in inspect.getsource(process_executor)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_leak_guard():
            warnings.warn(text, UserWarning, stacklevel=1)
            warnings.warn("another warning", UserWarning, stacklevel=1)
        warnings.warn(text, UserWarning, stacklevel=1)  # outside the block: shown
    assert [str(w.message) for w in seen] == ["another warning", text]
