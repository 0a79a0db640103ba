"""Per-frame CRC32 checksums in the shards: written by the stages, verified on every read and by
`iic-prep check`; a seeded fault injection flips bytes of a real shard file and every flip must be caught.
Shards without checksums (written before them) still read, and `check` says they are unverified."""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import error_lines, run_prep

from iic.cli import main
from iic.pipeline.format import CRC_SUFFIX, ChecksumError, FormatError, slot_name
from iic.pipeline.reader import VideoStore

FLIPS = 240  # seeded random byte flips inside stored frame bytes (at least 200)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A real extraction (RGB + stored residual streams, 2 shards) with flow: never modified."""
    from conftest import build_ucf101, synth_frames

    root = tmp_path_factory.mktemp("crc")
    videos = {
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi": synth_frames(20, seed=1),
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g02_c01.avi": synth_frames(18, seed=2),
        "HandstandPushups/v_HandStandPushups_g01_c01.avi": synth_frames(20, seed=3),
        "HandstandPushups/v_HandStandPushups_g02_c01.avi": synth_frames(17, seed=4),
    }
    raw = build_ucf101(root / "raw", videos, train={k for k in videos if "_g01_" in k})
    r = run_prep(
        "extract",
        "--root",
        raw,
        "--out",
        root / "out",
        "--size",
        "32x40",
        "--shard-size",
        "2",
        "--workers",
        "1",
        "--store-residuals",
    )
    assert r.exit_code == 0, r.output
    data = root / "out" / "ucf101"
    assert run_prep("flow", "--data", data, "--method", "farneback", "--workers", "1").exit_code == 0
    return data


@pytest.fixture
def data(pristine, tmp_path) -> Path:
    """A private copy to damage."""
    return Path(shutil.copytree(pristine, tmp_path / "ucf101"))


def _read_all(store: VideoStore, video: str) -> None:
    n = store.n_frames(video)
    store.frames(video)
    store.residuals(video)
    store.read_clip(video, ("rgb", "res"), 0, n)
    store.flow(video)


def test_stages_write_a_checksum_per_frame_and_pair(pristine):
    store = VideoStore(pristine)
    for row in store.ok_rows():
        with h5py.File(pristine / row.shard) as f, h5py.File(pristine / "flow" / Path(row.shard).name) as g:
            group, flow = f[slot_name(row.slot)], g[slot_name(row.slot)]
            for m in ("rgb", "res"):
                blob, offsets, crcs = (
                    group[m][()].tobytes(),
                    group[f"{m}_offsets"][()],
                    group[f"{m}{CRC_SUFFIX}"][()],
                )
                assert crcs.dtype == np.uint32 and len(crcs) == row.n_frames
                assert [
                    zlib.crc32(blob[a:b]) for a, b in zip(offsets[:-1], offsets[1:], strict=True)
                ] == crcs.tolist()
            pairs = flow["flow"][()]
            assert flow[f"flow{CRC_SUFFIX}"][()].tolist() == [zlib.crc32(p.tobytes()) for p in pairs]
        _read_all(store, row.id)
    check = run_prep("check", "--data", pristine)
    assert check.exit_code == 0 and check.output.strip() == f"{pristine}: ok", check.output


def test_shards_without_checksums_still_read_and_check_says_so(data):
    for shard in sorted(data.glob("*/shard-*.h5")):
        with h5py.File(shard, "a") as f:
            del f.attrs["content_digest"]  # written after checksums were: a shard from before has neither
            for group in f["videos"].values():
                for name in [n for n in group if n.endswith(CRC_SUFFIX)]:
                    del group[name]
    store = VideoStore(data)
    for row in store.ok_rows():
        _read_all(store, row.id)
    check = run_prep("check", "--data", data)
    assert check.exit_code == 0, check.output
    lines = check.stderr.splitlines()  # what could not be verified: warnings, beside the verdict on stdout
    assert len(lines) == 2, check.stderr
    assert (
        "frames: no checksums for 4 of 4 videos" in lines[1]
        and "flow: no checksums for 4 of 4 videos" in lines[0]
    )
    assert check.stdout == f"{data}: ok\n"


def _frame_bytes(path: Path) -> list[tuple[str, str, int, np.ndarray]]:
    """(slot, stream, file offset of the stream's first byte, its offsets table) of every stored JPEG
    stream."""
    out = []
    with h5py.File(path) as f:
        for slot, group in f["videos"].items():
            for m in ("rgb", "res"):
                out.append((slot, m, group[m].id.get_offset(), group[f"{m}_offsets"][()]))
    return out


def test_seeded_byte_flips_in_stored_frames_are_all_caught(data):
    """Flip one random byte (xor a random non-zero value) at a time inside the stored JPEG bytes of a real
    shard file; every read of the video must raise ChecksumError naming the folder, shard, video and the frame
    that holds the byte: no flip may decode into wrong pixels silently."""
    rng = np.random.default_rng(20261203)
    shard = "frames/shard-00000.h5"
    streams = _frame_bytes(data / shard)
    rows = {r.slot: r for r in VideoStore(data).ok_rows() if r.shard == shard}
    sizes = np.array([offsets[-1] for *_, offsets in streams])
    caught = 0
    with open(data / shard, "r+b") as f:
        for i in range(FLIPS):
            slot, stream, base, offsets = streams[rng.choice(len(streams), p=sizes / sizes.sum())]
            k = int(rng.integers(offsets[-1]))  # byte k of the stream
            frame = int(np.searchsorted(offsets, k, side="right") - 1)
            f.seek(base + k)
            old = f.read(1)[0]
            f.seek(base + k)
            f.write(bytes([old ^ int(rng.integers(1, 256))]))
            f.flush()
            try:
                row = rows[int(slot)]
                store = VideoStore(data)
                with pytest.raises(ChecksumError) as info:
                    store.read(row.id, stream)
                message = str(info.value)
                for part in (str(data), shard, repr(row.id), f"{stream} frame {frame}:", "checksum mismatch"):
                    assert part in message, (i, message)
                if stream == "rgb":  # a derived-residual read of the same frames decodes rgb: caught too
                    with pytest.raises(ChecksumError):
                        store.read_clip(row.id, ("rgb", "res"), max(frame - 1, 0), 2)
                untouched = [t for t in range(row.n_frames) if t != frame]
                store.read(row.id, stream, untouched[0], 1)  # other frames still read
                if i % 60 == 0:
                    check = run_prep("check", "--data", data)
                    assert check.exit_code == 1
                    assert f"{row.id}: {stream} frame {frame} of {shard}: checksum mismatch" in check.output
                store.close()
                caught += 1
            finally:
                f.seek(base + k)
                f.write(bytes([old]))
                f.flush()
    assert caught == FLIPS
    store = VideoStore(data)
    for row in rows.values():
        _read_all(store, row.id)  # restored: every byte as written


def test_corrupt_flow_chunks_are_never_returned(data):
    """Flow pairs are gzip chunks: a flipped byte either breaks the chunk (a FormatError naming it) or
    inflates to other bytes (the CRC32 catches it)."""
    rng = np.random.default_rng(7)
    shard = data / "flow" / "shard-00000.h5"
    with h5py.File(shard) as f:
        chunks = [
            (int(slot), i, info.byte_offset, info.size)
            for slot, group in f["videos"].items()
            for i, info in (
                (i, group["flow"].id.get_chunk_info(i)) for i in range(group["flow"].id.get_num_chunks())
            )
        ]
    rows = {r.slot: r for r in VideoStore(data).ok_rows() if r.shard == "frames/shard-00000.h5"}
    kinds = set()
    with open(shard, "r+b") as f:
        for _ in range(60):
            slot, pair, offset, size = chunks[rng.integers(len(chunks))]
            k = offset + int(rng.integers(size))
            f.seek(k)
            old = f.read(1)[0]
            f.seek(k)
            f.write(bytes([old ^ int(rng.integers(1, 256))]))
            f.flush()
            try:
                with pytest.raises(FormatError) as info:
                    VideoStore(data).flow(rows[slot].id)
                message = str(info.value)
                assert (
                    str(data) in message
                    and "flow/shard-00000.h5" in message
                    and repr(rows[slot].id) in message
                )
                assert f"flow pair {pair}" in message, message
                kinds.add(type(info.value).__name__)
            finally:
                f.seek(k)
                f.write(bytes([old]))
                f.flush()
    assert kinds <= {"ChecksumError", "FormatError"}


def test_training_on_a_corrupt_frame_stops_in_one_line(data, tmp_path):
    shard = "frames/shard-00000.h5"
    slot, stream, base, offsets = _frame_bytes(data / shard)[0]
    with open(data / shard, "r+b") as f:
        f.seek(base + int(offsets[10]) + 5)  # inside frame 10, which every 16-frame clip of the 20 holds
        b = f.read(1)[0]
        f.seek(base + int(offsets[10]) + 5)
        f.write(bytes([b ^ 0x5A]))
    video = next(r.id for r in VideoStore(data).ok_rows() if r.shard == shard and r.slot == int(slot))
    r = CliRunner().invoke(
        main,
        [
            "train",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "run"),
            "--preset",
            "tiny",
            "--crop",
            "16",
            "--frames",
            "16",
            "--batch-size",
            "2",
            "--K",
            "2",
            "--epochs",
            "1",
            "--workers",
            "2",
            "--monitor-every",
            "0",
        ],
    )
    assert r.exit_code == 1, r.output
    errors = error_lines(r.output)
    assert len(errors) == 1 and "Traceback" not in r.output, r.output
    assert f"{shard} video {video!r} rgb frame 10: checksum mismatch" in errors[0] and str(data) in errors[0]


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_damaged_frames_shard_is_named_and_not_called_re_extracted(data, damage):
    """Truncating or deleting a frames shard is reported as that shard's problem, on stderr with the verdict;
    its flow shard is not said to be "computed from other frames" (nothing was re-extracted)."""
    shard = data / "frames" / "shard-00000.h5"
    if damage == "truncate":
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    else:
        shard.unlink()
    check = run_prep("check", "--data", data)
    assert check.exit_code == 1, check.output
    assert check.stdout == "", check.stdout  # nothing to say on stdout: every line is a problem
    assert "frames/shard-00000.h5: cannot open" in check.stderr, check.stderr
    assert "computed from other frames" not in check.stderr, check.stderr
    assert error_lines(check.stderr) == [f"Error: 1 problem(s) in {data}"], check.stderr


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([old ^ 0x5A]))


def test_repair_rewrites_exactly_the_damaged_shards(pristine, data):
    """A flipped byte in a frames shard and one in a flow shard: a plain resume keeps both (their attributes
    are in order), `check` fails; `extract --repair` and `flow --repair` rewrite those two shards only, and
    the dataset reads as the pristine one again."""
    with h5py.File(data / "frames" / "shard-00000.h5") as f:
        group = f[slot_name(1)]
        frames_at = group["rgb"].id.get_offset() + int(group["rgb_offsets"][3]) + 5  # inside rgb frame 3
    with h5py.File(data / "flow" / "shard-00001.h5") as f:
        info = f[slot_name(0)]["flow"].id.get_chunk_info(2)  # the compressed bytes of pair 2
        flow_at = info.byte_offset + info.size // 2
    _flip(data / "frames" / "shard-00000.h5", frames_at)
    _flip(data / "flow" / "shard-00001.h5", flow_at)
    raw = pristine.parent.parent / "raw"
    extract = [
        "extract",
        "--root",
        raw,
        "--out",
        data.parent,
        "--size",
        "32x40",
        "--shard-size",
        "2",
        "--workers",
        "1",
        "--store-residuals",
    ]
    flow = ["flow", "--data", data, "--method", "farneback", "--workers", "1"]
    assert "0 written, 2 kept" in run_prep(*extract).output
    assert run_prep("check", "--data", data).exit_code == 1
    fixed = run_prep(*extract, "--repair")
    assert fixed.exit_code == 0 and "1 written, 1 kept" in fixed.output, fixed.output
    assert "flow/shard-00001.h5" in run_prep("check", "--data", data).stderr  # the flow damage is still there
    fixed = run_prep(*flow, "--repair")
    assert fixed.exit_code == 0 and "1 written, 1 kept" in fixed.output, fixed.output
    check = run_prep("check", "--data", data)
    assert check.exit_code == 0, check.output
    assert (data / "manifest.csv").read_text() == (pristine / "manifest.csv").read_text()
    a, b = VideoStore(data), VideoStore(pristine)
    for row in b.ok_rows():
        for read in ("frames", "residuals", "flow"):
            np.testing.assert_array_equal(
                getattr(a, read)(row.id), getattr(b, read)(row.id), err_msg=f"{row.id} {read}"
            )
    assert "2 kept" in run_prep(*extract, "--repair").output  # nothing left to repair


def _corrupt_every_frame(data: Path, video: str) -> None:
    """One flipped byte in each stored RGB and residual frame of ``video``: every clip of it reads corrupt
    bytes."""
    row = next(r for r in VideoStore(data).ok_rows() if r.id == video)
    for slot, _stream, base, offsets in _frame_bytes(data / row.shard):
        if int(slot) == row.slot:
            for a, b in zip(offsets[:-1], offsets[1:], strict=True):
                _flip(data / row.shard, base + int(a + b) // 2)


def test_skip_corrupt_leaves_out_the_damaged_video_in_training_and_retrieval(data, tmp_path, caplog):
    """Without --skip-corrupt a damaged video stops training and retrieval with one line; with it, the run
    goes on without that video, says it once and counts it, and retrieval lists it as left out."""
    store = VideoStore(data)
    train_id = store.ok_rows(1, "train")[0].id
    query_id = store.ok_rows(1, "test")[0].id
    _corrupt_every_frame(data, train_id)
    _corrupt_every_frame(data, query_id)
    run = [
        "train",
        "--preset",
        "tiny",
        "--data",
        data,
        "--frames",
        "8",
        "--crop",
        "24",
        "--batch-size",
        "2",
        "--epochs",
        "2",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--monitor-every",
        "0",
    ]

    def iic(*args):
        return CliRunner().invoke(main, [str(a) for a in args])

    stopped = iic(*run, "--out", tmp_path / "a")
    assert stopped.exit_code == 1, stopped.output
    assert "checksum mismatch" in error_lines(stopped.output)[0] and "Traceback" not in stopped.output
    caplog.clear()
    went_on = iic(*run, "--out", tmp_path / "b", "--skip-corrupt")
    assert went_on.exit_code == 0, went_on.output
    said = [r.getMessage() for r in caplog.records if "corrupt" in r.getMessage()]
    assert len([m for m in said if m.startswith(f"skipping a corrupt clip of {train_id}: ")]) == 1, (
        said
    )  # once
    assert any(m.startswith(f"2 clip(s) of 1 corrupt video(s) left out ({train_id})") for m in said), (
        said
    )  # 2 epochs
    ckpt = tmp_path / "b" / "final.pt"
    assert ckpt.exists()
    retrieval = [
        "eval",
        "retrieval",
        "--data",
        data,
        "--ckpt",
        ckpt,
        "--clips",
        "2",
        "--workers",
        "0",
        "--device",
        "cpu",
    ]
    stopped = iic(*retrieval, "--out", tmp_path / "e1")
    assert stopped.exit_code == 1 and "checksum mismatch" in error_lines(stopped.output)[0], stopped.output
    for _ in range(2):  # extracted, then read from the cache: the same videos left out
        went_on = iic(*retrieval, "--out", tmp_path / "e2", "--skip-corrupt")
        assert went_on.exit_code == 0, went_on.output
        result = json.loads((tmp_path / "e2" / "retrieval.json").read_text())
        assert result["counts"]["queries"] == 1 and result["counts"]["gallery"] == 1
        left = {r["id"]: r["reason"] for s in ("train", "test") for r in result["failed"][s]}
        assert set(left) == {train_id, query_id}
        assert all(
            reason.startswith("corrupt, left out: ") and "checksum mismatch" in reason
            for reason in left.values()
        )
