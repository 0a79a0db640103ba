"""`iic-prep flow` and `iic-prep show` through the real CLI: values against OpenCV, known motion, counts,
resume after SIGKILL, settings changes, dask, info/check, the picture, and flow clips in ClipDataset."""

from __future__ import annotations

import csv
import errno
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from conftest import (
    build_ucf101,
    error_lines,
    failing_writes,
    gated_env,
    prep_command,
    run_prep,
    synth_frames,
    wait_for,
    write_video,
)

from iic.model.data.clips import ClipConfig, ClipDataset, eval_starts, train_start
from iic.pipeline.flowcalc import dequantize
from iic.pipeline.lock import exclusive
from iic.pipeline.parallel import EXIT_SOME_FAILED
from iic.pipeline.reader import VideoStore
from iic.pipeline.storage import size_text

SIZE = "32x40"
B = 20.0
LEVEL = 2 * B / 255  # one storage level, 0.157 px


# ----------------------------------------------------------------------------------------------------------
# a small dataset with every case: N frames -> N-1 pairs, a 2-frame, a 1-frame and a missing video

VIDEOS = {  # rel -> number of frames (None = listed, no file)
    "Jump/v_Jump_g01_c01.avi": 9,
    "Jump/v_Jump_g02_c01.avi": 2,
    "Jump/v_Jump_g03_c01.avi": 1,
    "Walk/v_Walk_g01_c01.avi": 7,
    "Walk/v_Walk_g02_c01.avi": None,
    "Walk/v_Walk_g03_c01.avi": 12,
}
SHARDS = 3  # --shard-size 2
ONE_FRAME, MISSING = "Jump/v_Jump_g03_c01", "Walk/v_Walk_g02_c01"


def _id(rel: str) -> str:
    return rel.rsplit(".", 1)[0]


def _extract(raw: Path, out: Path, *extra: str) -> Path:
    result = run_prep(
        "extract", "--root", raw, "--out", out, "--size", SIZE, "--shard-size", "2", "--workers", "1", *extra
    )
    assert result.exit_code == EXIT_SOME_FAILED, result.output  # the missing video
    return out / "ucf101"


@pytest.fixture(scope="module")
def flowdata(tmp_path_factory) -> tuple[Path, Path, str]:
    """(raw layout, processed dataset with tvl1 flow, output of the flow run). Read-only: copy to change."""
    root = tmp_path_factory.mktemp("flow")
    videos = {
        rel: None if n is None else synth_frames(n, seed=i) for i, (rel, n) in enumerate(VIDEOS.items())
    }
    # the 1-frame video is a test video: a flow ClipDataset of the train list then has flow for every video
    raw = build_ucf101(root / "raw", videos, train={rel for rel in VIDEOS if _id(rel) != ONE_FRAME})
    data = _extract(raw, root / "out")
    result = run_prep("flow", "--data", data, "--workers", "1")
    return raw, data, result.output + f"\nexit {result.exit_code}"


def _copy(data: Path, dst: Path) -> Path:
    shutil.copytree(data, dst / "ucf101", ignore=shutil.ignore_patterns(".lock"))
    return dst / "ucf101"


def _flow_manifest(data: Path) -> dict[str, dict]:
    with open(data / "flow" / "manifest.csv", newline="") as f:
        return {r["id"]: r for r in csv.DictReader(f)}


def _gray(rgb: np.ndarray) -> np.ndarray:
    return np.stack([cv2.cvtColor(x, cv2.COLOR_RGB2GRAY) for x in rgb])


def _assert_within_one_level(store: VideoStore, calc, bound: float) -> int:
    """Every stored pair of every video, dequantised, is within one level of ``calc`` on the stored frames."""
    pairs = 0
    for vid, row in store.flow_rows.items():
        if not row.ok:
            continue
        gray = _gray(store.frames(vid))
        stored = dequantize(store.flow(vid), bound)  # (N-1, 2, H, W)
        assert stored.shape[0] == len(gray) - 1
        for t in range(len(gray) - 1):
            ref = np.clip(calc(gray[t], gray[t + 1]), -bound, bound).transpose(2, 0, 1)
            err = np.abs(stored[t] - ref)
            assert err.max() <= 2 * bound / 255 + 1e-5, (vid, t, err.max())
            assert err.mean() <= bound / 255, (
                vid,
                t,
                err.mean(),
            )  # rounding: half a level on average at most
            pairs += 1
    return pairs


# ----------------------------------------------------------------------------------------------------------
# values


def test_stored_tvl1_equals_opencv_on_the_stored_frames(flowdata):
    _, data, _ = flowdata
    tvl1 = cv2.optflow.DualTVL1OpticalFlow_create()  # OpenCV's defaults, as the reference
    store = VideoStore(data)
    assert _assert_within_one_level(store, lambda a, b: tvl1.calc(a, b, None), B) == 8 + 1 + 6 + 11
    with h5py.File(data / "flow" / "shard-00000.h5") as f:
        assert f.attrs["method"] == "tvl1" and f.attrs["bound"] == B and f.attrs["opencv"] == cv2.__version__
        assert '"epsilon": 0.01' in f.attrs["settings"]
    store.close()


def test_method_change_recomputes_and_dis_equals_opencv(flowdata, tmp_path):
    """--method dis (with a small bound, so clipping is exercised) is refused over tvl1 flow, then with
    --overwrite replaces it everywhere."""
    data = _copy(flowdata[1], tmp_path)
    before = {p: p.read_bytes() for p in sorted((data / "flow").rglob("*")) if p.is_file()}
    refused = run_prep("flow", "--data", data, "--method", "dis", "--bound", "2.5", "--workers", "1")
    assert refused.exit_code == 1 and isinstance(refused.exception, SystemExit)
    assert error_lines(refused.output) == [
        f"Error: {data / 'flow'} was computed with method tvl1, asked dis; bound 20.0, asked 2.5: pass "
        "--overwrite to recompute it"
    ], refused.output
    assert {p: p.read_bytes() for p in sorted((data / "flow").rglob("*")) if p.is_file()} == before
    bound = run_prep("flow", "--data", data, "--bound", "10", "--workers", "1")
    assert bound.exit_code == 1 and error_lines(bound.output) == [
        f"Error: {data / 'flow'} was computed with bound 20.0, asked 10.0: pass --overwrite to recompute it"
    ]
    result = run_prep(
        "flow", "--data", data, "--method", "dis", "--bound", "2.5", "--workers", "1", "--overwrite"
    )
    assert result.exit_code == EXIT_SOME_FAILED, result.output
    assert f"shards: {SHARDS} written, 0 kept" in result.output
    store = VideoStore(data)
    assert store.flow_meta["method"] == "dis" and store.flow_meta["bound"] == 2.5
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    assert _assert_within_one_level(store, lambda a, b: dis.calc(a, b, None), 2.5) == 26
    q = np.concatenate([store.flow(v) for v, r in store.flow_rows.items() if r.ok])
    assert (q == 0).any() and (q == 255).any()  # the synthetic disc moves faster than 2.5 px: clipped
    for p in (data / "flow").glob("shard-*.h5"):
        with h5py.File(p) as f:
            assert f.attrs["method"] == "dis" and f.attrs["bound"] == 2.5


def _texture(x: np.ndarray, y: np.ndarray, seed: int = 0) -> np.ndarray:
    """A smooth random texture (sum of sinusoids, periods 9-20 px) in grey levels 20..235, any real (x, y)."""
    rng = np.random.default_rng(seed)
    out = np.zeros_like(x, dtype=np.float64)
    for _ in range(12):
        period, angle, phase = rng.uniform(9, 20), rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
        out += np.cos(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period + phase)
    out = (out - out.min()) / (out.max() - out.min())
    return 20 + 215 * out


H, W, MARGIN = 48, 64, 8
SHIFT = (0.7, -0.4)  # (dx, dy) px per frame
THETA = np.deg2rad(1.2)  # rad per frame, about the centre: |flow| up to 0.59 px inside the margin


def _moving(kind: str, n: int) -> np.ndarray:
    """(n, H, W) uint8 frames of the texture translated by SHIFT or rotated by THETA per frame."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    cx, cy = (W - 1) / 2, (H - 1) / 2
    frames = []
    for t in range(n):
        if kind == "translate":  # content moves by +SHIFT: I_t(x) = f(x - t * SHIFT)
            sx, sy = xx - t * SHIFT[0], yy - t * SHIFT[1]
        else:  # content rotates by +THETA: I_t(p) = f(c + R(-t THETA)(p - c))
            a = -t * THETA
            sx = cx + np.cos(a) * (xx - cx) - np.sin(a) * (yy - cy)
            sy = cy + np.sin(a) * (xx - cx) + np.cos(a) * (yy - cy)
        frames.append(np.round(_texture(sx, sy)).astype(np.uint8))
    return np.stack(frames)


def _true_flow(kind: str) -> np.ndarray:
    """(H, W, 2) flow from frame t to t+1 (the same for every t)."""
    if kind == "translate":
        return np.broadcast_to(np.array(SHIFT), (H, W, 2))
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    dx, dy = xx - (W - 1) / 2, yy - (H - 1) / 2
    c, s = np.cos(THETA), np.sin(THETA)
    return np.stack([c * dx - s * dy - dx, s * dx + c * dy - dy], axis=-1)


def test_known_translation_and_rotation(tmp_path):
    """Lossless gray ffv1 sources, extracted at their own size (JPEG q90 in the store), tvl1 through the
    stage.

    Measured mean EPE per pair (interior, 8 px margin), OpenCV 5.0.0: translation by (0.7, -0.4) px
    0.010-0.012 px, i.e. the quantisation of (0.7, -0.4) itself (0.0098 px); rotation by 1.2 deg (|flow| mean
    0.32, max 0.59 px) 0.075-0.082 px, TV-L1's smoothness shrinking the linear field by ~10-20 % (DIS and
    Farneback measure 0.07-0.08 on it too). Asserted: translation < 0.05 px, rotation < 0.15 px; a zero field
    would score 0.81 and 0.32 px, a sign-flipped one 1.6 and 0.65 px.
    """
    videos = {
        "Move/v_Move_g01_c01.mkv": _moving("translate", 5),
        "Move/v_Move_g02_c01.mkv": _moving("rotate", 5),
    }
    raw = build_ucf101(
        tmp_path / "raw", videos, writer=lambda p, f: write_video(p, f, codec="ffv1", pix_fmt="gray")
    )
    assert (
        run_prep(
            "extract", "--root", raw, "--out", tmp_path / "out", "--size", f"{H}x{W}", "--workers", "1"
        ).exit_code
        == 0
    )
    data = tmp_path / "out" / "ucf101"
    result = run_prep("flow", "--data", data, "--workers", "1")
    assert result.exit_code == 0, result.output
    store = VideoStore(data)
    inner = np.s_[MARGIN : H - MARGIN, MARGIN : W - MARGIN]
    for vid, kind in (("Move/v_Move_g01_c01", "translate"), ("Move/v_Move_g02_c01", "rotate")):
        flow = dequantize(store.flow(vid), B).transpose(0, 2, 3, 1)  # (4, H, W, 2)
        assert flow.shape == (4, H, W, 2)
        epe = np.linalg.norm(flow[:, inner[0], inner[1]] - _true_flow(kind)[inner], axis=-1).mean(axis=(1, 2))
        assert epe.max() < (0.05 if kind == "translate" else 0.15), (kind, epe)
        if kind == "translate":
            np.testing.assert_allclose(flow[:, inner[0], inner[1]].mean(axis=(0, 1, 2)), SHIFT, atol=0.05)


# ----------------------------------------------------------------------------------------------------------
# counts and failures


def test_counts_and_failed_videos(flowdata):
    _, data, output = flowdata
    assert output.endswith(f"exit {EXIT_SOME_FAILED}")
    assert f"videos: 6 (4 ok, 2 failed)   flow pairs: 26   shards: {SHARDS} written, 0 kept" in output
    assert f"  failed {ONE_FRAME}: needs at least 2 frames, got 1" in output
    assert f"  failed {MISSING}: no frames: file not found" in output
    rows = _flow_manifest(data)
    store = VideoStore(data)
    h, w = store.size
    for rel, n in VIDEOS.items():
        vid, r = _id(rel), rows[_id(rel)]
        if n is None or n < 2:
            assert (
                r["status"] == "failed" and r["n_frames"] == "0" and "\n" not in r["reason"] and r["reason"]
            )
            with pytest.raises(KeyError, match="failed flow"):
                store.n_flow(vid)
            continue
        assert (
            r["status"] == "ok"
            and int(r["n_frames"]) == n - 1 == store.n_flow(vid) == store.n_frames(vid) - 1
        )
        with h5py.File(data / r["shard"]) as f:
            assert f[f"videos/{int(r['slot']):05d}/flow"].shape == (n - 1, 2, h, w)
            assert f[f"videos/{int(r['slot']):05d}/flow"].dtype == np.uint8
        with pytest.raises(IndexError):
            store.flow(vid, n - 1, 1)  # pair N-1 does not exist
    # flow shards line up with the frames shards: same file names, same slots
    frames = {r.id: (Path(r.shard).name, r.slot) for r in store.rows}
    assert {vid: (Path(r["shard"]).name, int(r["slot"])) for vid, r in rows.items()} == frames
    assert not (data / "flow" / ".parts").exists()


# ----------------------------------------------------------------------------------------------------------
# resume, locking, settings changes


def _assert_same_flow(a: Path, b: Path) -> None:
    assert (a / "flow" / "manifest.csv").read_text() == (b / "flow" / "manifest.csv").read_text()
    sa, sb = VideoStore(a), VideoStore(b)
    for vid, row in sa.flow_rows.items():
        if row.ok:
            np.testing.assert_array_equal(sa.flow(vid), sb.flow(vid))
    sa.close()
    sb.close()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path, workers):
    videos = {f"C{i % 2}/v_C{i % 2}_g{i:02d}_c01.avi": synth_frames(12, seed=i) for i in range(8)}
    raw = build_ucf101(tmp_path / "raw", videos)
    extracted = tmp_path / "extracted" / "ucf101"
    assert (
        run_prep(
            "extract",
            "--root",
            raw,
            "--out",
            extracted.parent,
            "--size",
            SIZE,
            "--shard-size",
            "2",
            "--workers",
            "1",
        ).exit_code
        == 0
    )
    ref = _copy(extracted, tmp_path / "ref")
    assert run_prep("flow", "--data", ref, "--workers", "1").exit_code == 0

    data = _copy(extracted, tmp_path / "killed")
    flow_dir = data / "flow"
    # the last video (the 2nd of the 4th frames shard) waits at a gate: the run cannot finish before the kill,
    # whatever the machine's load; the other three shards are assembled (how many before the kill varies
    # with the batching of tasks, so it is counted, not assumed)
    last = sorted(_id(rel) for rel in videos)[-1]
    marker = tmp_path / "held"
    proc = subprocess.Popen(
        prep_command() + ["flow", "--data", str(data), "--workers", workers],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env=gated_env("iic.pipeline.flow:flow_task", f"id='{last}'", tmp_path / "held"),
    )
    wait_for(
        lambda: marker.exists() and list(flow_dir.glob("shard-*.h5")),
        proc,
        "a flow shard and the last video held",
    )
    os.killpg(proc.pid, signal.SIGKILL)  # the run and its worker processes, mid-run
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    assert not (flow_dir / "manifest.csv").exists() and not VideoStore(data).has_flow
    done = len(list(flow_dir.glob("shard-*.h5")))
    assert 0 < done < 4 and not (flow_dir / "shard-00003.h5").exists()
    for p in flow_dir.glob("shard-*.h5"):  # every file under a final name is whole
        with h5py.File(p) as f:
            assert "rows" in f.attrs

    again = run_prep("flow", "--data", data, "--workers", workers)
    assert again.exit_code == 0, again.output
    assert f"shards: {4 - done} written, {done} kept" in again.output
    assert not list(flow_dir.rglob("*.tmp")) and not (flow_dir / ".parts").exists()
    _assert_same_flow(data, ref)


def test_rerun_keeps_shards_and_overwrite_recomputes(flowdata, tmp_path):
    data = _copy(flowdata[1], tmp_path)
    shards = sorted((data / "flow").glob("shard-*.h5"))
    mtimes = [p.stat().st_mtime_ns for p in shards]
    again = run_prep("flow", "--data", data, "--workers", "1")
    assert again.exit_code == EXIT_SOME_FAILED and f"shards: 0 written, {SHARDS} kept" in again.output
    assert "flow pairs: 26" in again.output
    assert [p.stat().st_mtime_ns for p in shards] == mtimes
    assert (data / "flow" / "manifest.csv").read_text() == (flowdata[1] / "flow" / "manifest.csv").read_text()
    overwrite = run_prep("flow", "--data", data, "--workers", "1", "--overwrite")
    assert overwrite.exit_code == EXIT_SOME_FAILED and f"shards: {SHARDS} written, 0 kept" in overwrite.output
    assert all(p.stat().st_mtime_ns != m for p, m in zip(shards, mtimes, strict=True))
    _assert_same_flow(data, flowdata[1])


def test_concurrent_run_is_refused_without_damage(flowdata, tmp_path):
    data = _copy(flowdata[1], tmp_path)
    before = {p: p.read_bytes() for p in sorted(data.rglob("*")) if p.is_file() and p.name != ".lock"}
    for holder in ("iic-prep flow", "iic-prep extract"):
        with exclusive(data, holder):
            result = run_prep("flow", "--data", data, "--workers", "1", "--overwrite")
        assert result.exit_code == 1 and "Traceback" not in result.output
        errors = error_lines(result.output)
        assert len(errors) == 1 and f"in use by {holder} (pid" in errors[0] and "concurrently" in errors[0], (
            result.output
        )
    assert {p: p.read_bytes() for p in sorted(data.rglob("*")) if p.is_file() and p.name != ".lock"} == before


def test_reextracted_frames_invalidate_their_flow(flowdata, tmp_path, caplog):
    raw = tmp_path / "raw"
    shutil.copytree(flowdata[0], raw)
    data = _copy(flowdata[1], tmp_path / "out")
    # other JPEG quality: every frames shard changes (same rows), so every flow shard is stale
    _extract(raw, data.parent, "--quality", "70", "--overwrite")
    check = run_prep("check", "--data", data)
    stale = [
        f"flow/shard-{i:05d}.h5: computed from other frames than frames/shard-{i:05d}.h5 (re-extracted "
        "since): re-run `iic-prep flow`"
        for i in range(SHARDS)
    ]
    assert check.exit_code == 1
    assert check.stderr.splitlines() == stale + [f"Error: {SHARDS} problem(s) in {data}"]
    # info reports the same shards in the same words, as warnings beside its summary
    info = run_prep("info", "--data", data)
    assert info.exit_code == 0 and info.stderr.splitlines() == [f"Warning: {line}" for line in stale]
    assert info.stdout.startswith(f"{data}: ucf101 split 1")
    assert "computed from other frames" not in info.stdout
    result = run_prep("flow", "--data", data, "--workers", "1")
    assert result.exit_code == EXIT_SOME_FAILED and f"shards: {SHARDS} written, 0 kept" in result.output
    recomputed = [
        r.getMessage() for r in caplog.records if r.name == "iic.pipeline.flow" and r.levelname == "WARNING"
    ]
    assert recomputed == [line.replace("re-run `iic-prep flow`", "recomputing it") for line in stale]
    assert run_prep("info", "--data", data).stderr == ""
    store = VideoStore(data)
    tvl1 = cv2.optflow.DualTVL1OpticalFlow_create()
    assert _assert_within_one_level(store, lambda a, b: tvl1.calc(a, b, None), B) == 26  # from the new frames
    store.close()
    assert run_prep("check", "--data", data).exit_code == 0
    # one source video gets longer and its frames shard is redone: only that flow shard is recomputed
    write_video(raw / "UCF-101" / "Walk/v_Walk_g03_c01.avi", synth_frames(15, seed=9))
    (data / "frames" / "shard-00002.h5").unlink()
    _extract(raw, data.parent, "--quality", "70")
    result = run_prep("flow", "--data", data, "--workers", "1")
    assert result.exit_code == EXIT_SOME_FAILED and "shards: 1 written, 2 kept" in result.output
    assert VideoStore(data).n_flow("Walk/v_Walk_g03_c01") == 14
    assert run_prep("check", "--data", data).exit_code == 0


@pytest.mark.parametrize("where", ["part", "shard"])
def test_a_full_disk_during_flow_ends_in_one_line_and_a_rerun_resumes(flowdata, tmp_path, monkeypatch, where):
    """No space for a video's flow (written by a worker) or for a flow shard (assembled by the run): one line,
    the complete flow shard kept, nothing partial left, and a rerun resumes to the same flow."""
    data = _copy(flowdata[1], tmp_path)
    shutil.rmtree(data / "flow")

    def full(name=None):
        return OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        if where == "part":  # the third video with flow: the first of the second shard
            real, saved = np.save, []

            def save(f, array, *args, **kwargs):
                saved.append(array.shape)
                if len(saved) > 2:
                    raise full()
                return real(f, array, *args, **kwargs)

            patch.setattr(np, "save", save)
        else:
            failing_writes(patch, "flow/shard-00001.h5", full)
        result = run_prep("flow", "--data", data, "--workers", "1")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit) and result.stdout == ""
    needed = size_text((data / "flow" / "shard-00000.h5").stat().st_size)
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and re.fullmatch(
        rf"Error: no space left on {re.escape(str(data / 'flow'))}: [\d.]+ [kMG]B free, ~{needed} needed for "
        r"the next shard \(shards so far are kept; free space and rerun to resume\)",
        errors[0],
    ), errors
    assert sorted(p.name for p in (data / "flow").glob("shard-*")) == ["shard-00000.h5"]
    assert not list((data / "flow").rglob("*.tmp")) and not (data / "flow" / "manifest.csv").exists()
    again = run_prep("flow", "--data", data, "--workers", "1")
    assert again.exit_code == EXIT_SOME_FAILED and f"shards: {SHARDS - 1} written, 1 kept" in again.stdout
    _assert_same_flow(data, flowdata[1])


# ----------------------------------------------------------------------------------------------------------
# dask


def test_dask_backend_equals_loky(flowdata, tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    loky_data = _copy(flowdata[1], tmp_path / "loky")
    dask_data = _copy(flowdata[1], tmp_path / "dask")
    loky = run_prep("flow", "--data", loky_data, "--workers", "2", "--overwrite")
    assert loky.exit_code == EXIT_SOME_FAILED, loky.output
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        result = run_prep(
            "flow",
            "--data",
            dask_data,
            "--overwrite",
            "--backend",
            "dask",
            "--scheduler",
            cluster.scheduler_address,
        )
    assert result.exit_code == EXIT_SOME_FAILED, result.output
    assert (
        "videos: 6 (4 ok, 2 failed)" in result.output
        and f"failed {ONE_FRAME}: needs at least 2 frames" in result.output
    )
    _assert_same_flow(dask_data, loky_data)
    _assert_same_flow(dask_data, flowdata[1])


# ----------------------------------------------------------------------------------------------------------
# info, check, show, flags


def test_info_and_check_cover_flow(flowdata, tmp_path):
    info = run_prep("info", "--data", flowdata[1])
    assert info.exit_code == 0, info.output
    assert (
        "flow (tvl1, bound 20.0): 6 videos, 4 ok, 2 failed; 26 pairs (per video min 1, median 7, max 11); "
        f"{SHARDS} shards"
    ) in info.output
    assert "failed (1): needs at least 2 frames, got 1" in info.output
    check = run_prep("check", "--data", flowdata[1])
    assert check.exit_code == 0 and check.output.strip().endswith(": ok"), check.output

    data = _copy(flowdata[1], tmp_path)
    row = _flow_manifest(data)["Walk/v_Walk_g03_c01"]
    with h5py.File(data / row["shard"], "r+") as f:  # one pair too many: N pairs for N frames
        group = f[f"videos/{int(row['slot']):05d}"]
        flow = group["flow"][()]
        del group["flow"]
        group.create_dataset("flow", data=np.concatenate([flow, flow[-1:]]))
    bad = run_prep("check", "--data", data)
    assert bad.exit_code == 1 and "Traceback" not in bad.output
    problems = [line for line in bad.output.splitlines() if not line.startswith("Error")]
    assert problems == ["Walk/v_Walk_g03_c01: flow is (12, 2, 32, 40), expected (11, 2, 32, 40)"], bad.output
    assert error_lines(bad.output) == [f"Error: 1 problem(s) in {data}"]


def test_show_writes_a_picture_with_flow_row(flowdata, tmp_path, figures):
    data = flowdata[1]
    out = tmp_path / "pics" / "walk.png"
    result = run_prep(
        "show", "--data", data, "--video", "Walk/v_Walk_g03_c01", "--out", out, "--columns", "4"
    )
    assert result.exit_code == 0 and result.output.strip() == f"wrote {out}", result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig = figures[-1]
    assert fig["shape"] == (4, 5)  # 4 frames and the flow key
    assert fig["rows"][:2] == ["RGB", "residual"] and fig["rows"][2].startswith("flow (tvl1")
    assert fig["rows"][3] == "flow-aligned"  # the flow without its camera part, beside it
    pairs = ["0->1", "3->4", "7->8", "10->11"]  # the last pair of 12 frames is 10->11
    assert fig["titles"][10:] == [*pairs, "", *pairs, "flow key"]
    assert fig["titles"][:4] == ["0", "3", "7", "10"]

    # no flow for this video (1 frame), or no flow at all: two rows
    one = run_prep("show", "--data", data, "--video", ONE_FRAME, "--out", tmp_path / "one.png")
    assert one.exit_code == 0 and figures[-1]["shape"] == (2, 1) and (tmp_path / "one.png").exists()
    bare = _copy(data, tmp_path / "noflow")
    shutil.rmtree(bare / "flow")
    none = run_prep("show", "--data", bare, "--video", "Walk/v_Walk_g03_c01", "--out", tmp_path / "none.png")
    assert (
        none.exit_code == 0 and figures[-1]["shape"] == (2, 8) and figures[-1]["rows"] == ["RGB", "residual"]
    )


@pytest.mark.parametrize(
    "video, needle",
    [("Nope/v_Nope_g01_c01", "is not in the manifest"), (MISSING, "failed extraction: file not found")],
)
def test_show_unusable_video_is_a_one_line_error(flowdata, tmp_path, video, needle):
    result = run_prep("show", "--data", flowdata[1], "--video", video, "--out", tmp_path / "x.png")
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = error_lines(result.output)
    assert len(errors) == 1 and needle in errors[0] and video in errors[0], result.output
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--method", "nope"], "--method"),
        (["--bound", "-1"], "--bound"),
        (["--bound", "0"], "--bound"),
        (["--workers", "0"], "--workers"),
        (["--backend", "dask"], "--scheduler"),
        (["--scheduler", "tcp://127.0.0.1:1"], "--scheduler"),
        (["--backend", "spark"], "--backend"),
    ],
)
def test_bad_flags_are_one_line_usage_errors(flowdata, flags, needle):
    result = run_prep("flow", "--data", flowdata[1], *flags)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = error_lines(result.output)
    assert len(errors) == 1 and needle in errors[0], result.output


def test_flow_without_extracted_data_is_a_one_line_error(tmp_path):
    result = run_prep("flow", "--data", tmp_path / "nothing")
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = error_lines(result.output)
    assert len(errors) == 1 and "run `iic-prep extract` first" in errors[0], result.output
    assert not (tmp_path / "nothing" / "flow").exists()


# ----------------------------------------------------------------------------------------------------------
# flow clips


def test_clip_dataset_flow_lines_up_with_frames(flowdata):
    data = flowdata[1]
    T = 4
    cfg = ClipConfig(frames=T, modalities=("rgb", "flow"), test_clips=3)
    test = ClipDataset(data, 1, "train", cfg, mode="test")
    store = VideoStore(data)
    assert test.video_ids == [
        "Jump/v_Jump_g01_c01",
        "Jump/v_Jump_g02_c01",
        "Walk/v_Walk_g01_c01",
        "Walk/v_Walk_g03_c01",
    ]
    assert list(test.lengths) == [8, 1, 6, 11]  # usable length L - 1
    h, w = store.size
    for index, vid in enumerate(test.video_ids):
        L = store.n_frames(vid)
        starts = eval_starts(L - 1, T, 1, 3)
        for clip, start in enumerate(starts):
            s = test[index * 3 + clip]
            assert s["flow"].shape == (2, T, h, w) and s["rgb"].shape == (3, T, h, w)
            if L - 1 >= T:
                np.testing.assert_array_equal(
                    s["flow"].numpy(), store.flow(vid, int(start), T).transpose(1, 0, 2, 3)
                )
                np.testing.assert_array_equal(
                    s["rgb"].numpy(), store.frames(vid, int(start), T).transpose(3, 0, 1, 2)
                )
        if L - 1 >= T:
            assert starts[-1] == L - 1 - T  # the last clip ends on the last pair (N-2 -> N-1) and frame N-2
        else:  # 2 frames, 1 pair: the clip loops over pair 0 and frame 0 (frame 1 has no pair)
            np.testing.assert_array_equal(
                s["flow"].numpy(), np.repeat(store.flow(vid, 0, 1).transpose(1, 0, 2, 3), T, 1)
            )
            np.testing.assert_array_equal(
                s["rgb"].numpy(), np.repeat(store.frames(vid, 0, 1).transpose(3, 0, 1, 2), T, 1)
            )
    train = ClipDataset(data, 1, "train", cfg, mode="train")
    index, vid = 3, "Walk/v_Walk_g03_c01"
    last = []
    for seed in range(40):
        start = train_start(11, T, 1, np.random.default_rng(seed))
        s = train[(index, seed)]
        np.testing.assert_array_equal(s["flow"].numpy(), store.flow(vid, start, T).transpose(1, 0, 2, 3))
        last.append(start)
    assert max(last) == 11 - T  # every start with a whole clip of pairs, and no further
