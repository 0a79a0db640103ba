"""Kinetics: the adapter on a generated annotation tree (both layouts, odd labels, subsets, an unlabelled test
CSV), then real encoded videos of different aspect ratios through the real CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_prep, synth_frames, write_video
from torch.utils.data import DataLoader

from iic.pipeline.datasets import DatasetLayoutError, load_index
from iic.pipeline.kinetics import video_name

ODD = "passing American football (in game)"
APOS = "tying bow tie's knot"
PLAIN = "abseiling"

# (label, youtube_id, start, end) of train.csv and validate.csv
TRAIN = [
    (ODD, "aaaaaaaaaaa", 10, 20),
    (APOS, "bbbbbbbbbbb", 0, 10),
    (PLAIN, "ccccccccccc", 5, 15),
    (PLAIN, "missing-one", 1, 11),
]
VALIDATE = [(ODD, "ddddddddddd", 30, 40), (PLAIN, "eeeeeeeeeee", 7, 17)]
TEST = [("fffffffffff", 3, 13)]


def write_csvs(ann: Path, train=TRAIN, validate=VALIDATE, test=TEST, is_cc: bool = True) -> None:
    """The official CSVs: quoted labels where needed, times as integers (the test CSV has no label column)."""
    import csv

    ann.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("validate", validate)):
        with open(ann / f"{name}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(
                ["label", "youtube_id", "time_start", "time_end", "split"] + (["is_cc"] if is_cc else [])
            )
            for label, yid, a, b in rows:
                w.writerow([label, yid, a, b, name] + ([0] if is_cc else []))
    with open(ann / "test.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["youtube_id", "time_start", "time_end", "split"])
        for yid, a, b in test:
            w.writerow([yid, a, b, "test"])


def video_rel(split: str, label: str, yid: str, a: int, b: int, layout: str) -> str:
    name = f"{video_name(yid, str(a), str(b))}.mp4"
    return f"{split}/{label}/{name}" if layout == "labels" and label else f"{split}/{name}"


def placeholder_tree(root: Path, layout: str) -> Path:
    """CSVs + placeholder files (not videos) for every listed clip but ``missing-one``."""
    write_csvs(root / "kinetics400")
    for split, rows in (("train", TRAIN), ("validate", VALIDATE), ("test", [("", *r) for r in TEST])):
        (root / split).mkdir(parents=True, exist_ok=True)
        for label, yid, a, b in rows:
            if yid == "missing-one":
                continue
            p = root / video_rel(split, label, yid, a, b, layout)
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"x")
    return root


@pytest.mark.parametrize("layout", ["flat", "labels"])
def test_adapter_lists_labels_and_paths(tmp_path, layout):
    root = placeholder_tree(tmp_path, layout)
    index = load_index("kinetics400", root)
    assert index.classes == (PLAIN, ODD, APOS)  # sorted label names
    by_id = {e.id: e for e in index.entries}
    assert list(by_id) == sorted(by_id)
    odd = by_id["train/aaaaaaaaaaa_000010_000020"]
    assert odd.class_name == ODD and odd.label == 1 and odd.splits == {1: "train"}
    assert odd.path == video_rel("train", ODD, "aaaaaaaaaaa", 10, 20, layout)
    assert (root / odd.path).is_file()
    val = by_id["validate/ddddddddddd_000030_000040"]
    assert val.splits == {1: "test"} and val.label == 1  # validate = the evaluation (test) list
    # a listed clip without a file keeps its expected path (extraction records it as missing)
    missing = by_id["train/missing-one_000001_000011"]
    assert (
        missing.path == video_rel("train", PLAIN, "missing-one", 1, 11, layout)
        and not (root / missing.path).exists()
    )
    assert not any(e.id.startswith("test/") for e in index.entries)  # unlabelled only when asked for
    assert len(index.entries) == len(TRAIN) + len(VALIDATE)


def test_unlabelled_test_split(tmp_path):
    index = load_index("kinetics400", placeholder_tree(tmp_path, "flat"), unlabelled=True)
    test = [e for e in index.entries if e.id.startswith("test/")]
    assert [(e.id, e.label, e.class_name, e.splits) for e in test] == [
        ("test/fffffffffff_000003_000013", -1, "", {1: "unlabelled"})
    ]
    assert index.classes == (PLAIN, ODD, APOS)  # unlabelled videos add no class


def test_subset_of_classes_and_of_videos(tmp_path):
    root = placeholder_tree(tmp_path, "labels")
    (tmp_path / "classes.txt").write_text(f"# two classes\n{ODD}\n{PLAIN}\n\n")
    index = load_index("kinetics400", root, subset=tmp_path / "classes.txt", unlabelled=True)
    assert index.classes == (PLAIN, ODD)
    assert {e.class_name for e in index.entries} == {
        PLAIN,
        ODD,
    }  # the unlabelled video cannot belong to a class
    assert [e.label for e in index.entries if e.class_name == ODD] == [1, 1]
    (tmp_path / "videos.txt").write_text("bbbbbbbbbbb\neeeeeeeeeee_000007_000017\n")
    index = load_index("kinetics400", root, subset=tmp_path / "videos.txt")
    assert [e.id for e in index.entries] == [
        "train/bbbbbbbbbbb_000000_000010",
        "validate/eeeeeeeeeee_000007_000017",
    ]
    assert index.classes == (PLAIN, APOS) and [e.label for e in index.entries] == [1, 0]


@pytest.mark.parametrize(
    "text, message",
    [
        ("abseiling\nno such class\n", "1 of 2 entries are neither a label nor a video"),
        ("abseiling\naaaaaaaaaaa\n", "mixes labels"),
        ("# nothing\n", "is empty"),
    ],
)
def test_subset_errors_are_one_line(tmp_path, text, message):
    root = placeholder_tree(tmp_path, "flat")
    (tmp_path / "s.txt").write_text(text)
    with pytest.raises(DatasetLayoutError, match=message):
        load_index("kinetics400", root, subset=tmp_path / "s.txt")


def test_layout_errors(tmp_path):
    with pytest.raises(DatasetLayoutError, match="no kinetics400 annotations"):
        load_index("kinetics400", tmp_path)
    write_csvs(tmp_path / "kinetics400")
    with pytest.raises(DatasetLayoutError, match="video folder not found"):
        load_index("kinetics400", tmp_path)
    with pytest.raises(DatasetLayoutError, match="single split"):
        load_index("kinetics400", tmp_path, split=2)
    with pytest.raises(DatasetLayoutError, match="apply to the Kinetics datasets"):
        load_index("folder", tmp_path, unlabelled=True)


def test_kinetics700_val_names_and_csvs_in_root(tmp_path):
    """Same format under other names: CSVs in the root, ``val.csv`` and a ``val/`` folder, no is_cc."""
    write_csvs(tmp_path, is_cc=False)
    (tmp_path / "validate.csv").rename(tmp_path / "val.csv")
    for split in ("train", "val"):
        (tmp_path / split).mkdir()
    index = load_index("kinetics700", tmp_path)
    assert index.name == "kinetics700"
    assert {e.path.split("/")[0] for e in index.entries} == {"train", "val"}
    assert {e.id.split("/")[0] for e in index.entries} == {"train", "validate"}


# ----------------------------------------------------------------------------------------------------------
# real videos through the CLI: label folders for train, flat validate, a 16:9, a portrait and a 4:3 video, a
# missing and a corrupt file, an unlabelled test split; --size 128 (short side)

# (list, label, youtube_id, start, end, (H, W) or None = no file, "corrupt" = garbage bytes)
VIDEOS = [
    ("train", ODD, "wide169wide", 10, 20, (90, 160)),
    ("train", ODD, "portrait916", 0, 10, (160, 90)),
    ("train", APOS, "fourthree43", 5, 15, (48, 64)),
    ("train", APOS, "wide169two2", 3, 13, (72, 128)),
    ("train", PLAIN, "nofilehere1", 1, 11, None),
    ("train", PLAIN, "corruptfile", 2, 12, "corrupt"),
    ("validate", ODD, "valwide1691", 30, 40, (72, 128)),
    ("validate", APOS, "valport9161", 7, 17, (128, 72)),
    ("test", "", "unlabelled1", 3, 13, (64, 48)),
]
FRAMES = 20


def real_tree(root: Path) -> Path:
    rows = {
        s: [(lab, yid, a, b) for s_, lab, yid, a, b, _ in VIDEOS if s_ == s] for s in ("train", "validate")
    }
    write_csvs(
        root / "kinetics400",
        rows["train"],
        rows["validate"],
        [(yid, a, b) for s, _, yid, a, b, _ in VIDEOS if s == "test"],
    )
    for i, (split, label, yid, a, b, what) in enumerate(VIDEOS):
        rel = video_rel(split, label, yid, a, b, "labels" if split == "train" else "flat")
        if what is None:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
        elif what == "corrupt":
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(
                np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
            )
        else:
            write_video(root / rel, synth_frames(FRAMES, *what, seed=i))
    return root


def source_size(yid: str) -> tuple[int, int]:
    return next(what for *_, y, _, _, what in VIDEOS if y == yid)


@pytest.fixture(scope="module")
def k400(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("k400")
    root = real_tree(base / "raw")
    result = run_prep(
        "extract",
        "--dataset",
        "kinetics400",
        "--root",
        root,
        "--out",
        base / "out",
        "--size",
        "128",
        "--unlabelled",
        "--shard-size",
        "3",
        "--workers",
        "1",
    )
    assert result.exit_code == 3, result.output  # 3 = finished, some listed videos failed
    assert "videos: 9 (7 ok, 2 failed)" in result.output
    return base / "out" / "kinetics400"


def test_extract_records_missing_and_broken_and_keeps_aspect(k400):
    from iic.pipeline.reader import VideoStore

    store = VideoStore(k400)
    assert store.meta["size"] == {"short_side": 128} and store.size is None and store.short_side == 128
    assert store.classes == [PLAIN, ODD, APOS]
    by_yid = {r.id.split("/")[1][:11]: r for r in store.rows}
    assert by_yid["nofilehere1"].status == "failed" and by_yid["nofilehere1"].reason == "file not found"
    assert by_yid["corruptfile"].status == "failed" and by_yid["corruptfile"].reason.startswith("cannot open")
    unl = by_yid["unlabelled1"]
    assert unl.ok and unl.label == -1 and unl.class_name == "" and unl.splits == "1:unlabelled"
    assert by_yid["valwide1691"].splits == "1:test" and by_yid["valwide1691"].class_name == ODD
    for yid, row in by_yid.items():
        if not row.ok:
            continue
        h, w = store.frame_size(row.id)
        sh, sw = source_size(yid)
        assert min(h, w) == 128 and h % 2 == 0 and w % 2 == 0, (yid, h, w)
        assert abs(max(h, w) - 128 * max(sh, sw) / min(sh, sw)) <= 1, (yid, h, w)  # aspect within one pixel
        assert (h > w) == (sh > sw)  # portrait stays portrait
        assert store.frames(row.id, 0, 2).shape == (2, h, w, 3) and row.n_frames == FRAMES
    assert store.frame_size(by_yid["wide169wide"].id) == (128, 228)
    assert store.frame_size(by_yid["portrait916"].id) == (228, 128)
    assert store.frame_size(by_yid["fourthree43"].id) == (128, 170)


def test_info_reports_missing_share_per_list(k400):
    info = run_prep("info", "--data", k400)
    assert info.exit_code == 0, info.output
    lines = info.output.splitlines()
    assert lines[0] == f"{k400}: kinetics400 split 1, 3 classes, frames short side 128 (aspect kept) jpeg q90"
    assert "  split 1: 4 train, 2 test videos (ok), 1 unlabelled" in lines
    assert "  split 1 train: 6 listed, 4 ok, 1 missing (16.7%), 1 broken (16.7%)" in lines
    assert "  split 1 validate: 2 listed, 2 ok, 0 missing (0.0%), 0 broken (0.0%)" in lines
    assert "  split 1 test (unlabelled): 1 listed, 1 ok, 0 missing (0.0%), 0 broken (0.0%)" in lines
    check = run_prep("check", "--data", k400)
    assert check.exit_code == 0 and check.output.strip() == f"{k400}: ok", check.output


def test_rerun_keeps_every_shard(k400):
    root = k400.parent.parent / "raw"
    result = run_prep(
        "extract",
        "--dataset",
        "kinetics400",
        "--root",
        root,
        "--out",
        k400.parent,
        "--size",
        "128",
        "--unlabelled",
        "--shard-size",
        "3",
        "--workers",
        "1",
    )
    assert result.exit_code == 3 and "shards: 0 written, 3 kept" in result.output, result.output


def test_batch_of_mixed_sizes_gives_the_requested_crop(k400):
    """A 16:9, a portrait and a 4:3 video in one batch: every clip is cropped inside its own frames."""
    from iic.model.data import augment
    from iic.model.data.clips import ClipConfig, ClipDataset, collate_clips

    ds = ClipDataset(k400, 1, "train", ClipConfig(frames=4, modalities=("rgb", "res")), mode="train")
    assert ds.n_videos == 4 and len({ds.store.frame_size(v) for v in ds.video_ids}) == 3
    items = [(i, 7 + i) for i in range(ds.n_videos)]
    batch = next(iter(DataLoader(ds, batch_size=4, sampler=items, collate_fn=collate_clips)))
    assert batch["rgb"].shape == (4, 3, 4, 228, 228)  # padded to the largest H and W of the batch
    assert [tuple(hw) for hw in batch["hw"].tolist()] == [ds.store.frame_size(v) for v in ds.video_ids]
    for train in (True, False):
        cfg = augment.AugmentConfig(crop=112, train=train)
        params = augment.sample_params(4, augment.batch_hw(batch), cfg, torch.Generator().manual_seed(0))
        out = augment.apply({m: batch[m] for m in ("rgb", "res")}, params, cfg)
        assert out["rgb"].shape == out["res"].shape == (4, 3, 4, 112, 112)
        for b, (top, left) in enumerate(params.offsets.tolist()):
            h, w = batch["hw"][b].tolist()
            assert 0 <= top <= h - 112 and 0 <= left <= w - 112
            if not train:
                assert (top, left) == ((h - 112) // 2, (w - 112) // 2)
            own = ds[items[b]]["rgb"][:, :, top : top + 112, left : left + 112]  # the unpadded clip
            assert torch.equal(out["rgb"][b], own.float() / 255)
    too_big = augment.AugmentConfig(crop=130, train=True)
    with pytest.raises(ValueError, match="crop 130 larger than input 128x"):
        augment.sample_params(4, batch["hw"], too_big)


def test_unlabelled_videos_are_in_no_list(k400):
    from iic.model.data.clips import ClipConfig, ClipDataset

    test = ClipDataset(k400, 1, "test", ClipConfig(frames=4), mode="test")
    train = ClipDataset(k400, 1, "train", ClipConfig(frames=4), mode="train")
    assert all(not v.startswith("test/") for v in test.video_ids + train.video_ids)
    assert sorted(v.split("/")[0] for v in test.video_ids) == ["validate", "validate"]


def test_shard_names_flat_below_the_threshold_and_spread_above():
    from iic.pipeline.datasets import DatasetIndex, VideoEntry
    from iic.pipeline.extract import plan_shards

    def index(n):
        return DatasetIndex(
            "x",
            Path("."),
            ("a",),
            tuple(VideoEntry(f"a/{i:07d}", f"a/{i:07d}.mp4", "a", 0, {1: "train"}) for i in range(n)),
        )

    flat = [
        name for name, _ in plan_shards(index(150 * 64), 64)
    ]  # UCF101-sized: the names of every earlier version
    assert (
        flat[:2] == ["frames/shard-00000.h5", "frames/shard-00001.h5"] and flat[-1] == "frames/shard-00149.h5"
    )
    spread = [name for name, _ in plan_shards(index(2500 * 4), 4)]
    assert (
        len(set(spread)) == 2500
        and spread[0] == "frames/000/shard-000000.h5"
        and spread[-1] == "frames/002/shard-002499.h5"
    )
    per_folder = {}
    for name in spread:
        per_folder[name.rsplit("/", 1)[0]] = per_folder.get(name.rsplit("/", 1)[0], 0) + 1
    assert per_folder == {"frames/000": 1000, "frames/001": 1000, "frames/002": 500}


def test_shards_in_subfolders_read_resume_and_flow(k400, tmp_path):
    """Spread shards (forced small: 2 a folder) are read, checked, kept on a re-run and get aligned flow;
    going back to the flat layout replaces them."""
    from iic.pipeline.extract import ExtractConfig, extract
    from iic.pipeline.reader import VideoStore

    raw = k400.parent.parent / "raw"
    cfg = ExtractConfig(
        dataset="kinetics400",
        root=raw,
        out=tmp_path,
        size=128,
        unlabelled=True,
        shard_size=1,
        shards_per_folder=2,
    )
    first = extract(cfg)
    data = tmp_path / "kinetics400"
    shards = sorted(p.relative_to(data).as_posix() for p in data.rglob("shard-*.h5"))
    assert shards[:3] == [
        "frames/000/shard-000000.h5",
        "frames/000/shard-000001.h5",
        "frames/001/shard-000002.h5",
    ]
    assert len(shards) == 9 and first.shards_written == 9 and first.failed == 2
    store = VideoStore(data)
    ok = [r for r in store.rows if r.ok]
    assert {r.shard for r in store.rows} == set(shards)
    assert all(store.frames(r.id, 0, 1).shape[0] == 1 for r in ok)
    assert extract(cfg).shards_kept == 9
    flow = run_prep("flow", "--data", data, "--method", "farneback", "--workers", "1")
    assert flow.exit_code == 3, flow.output  # the two failed videos have no flow
    flows = sorted(p.relative_to(data).as_posix() for p in (data / "flow").rglob("shard-*.h5"))
    assert flows == [s.replace("frames/", "flow/", 1) for s in shards]
    fstore = VideoStore(data)
    r = ok[0]
    assert fstore.flow(r.id, 0, 2).shape == (2, 2, *fstore.frame_size(r.id))
    assert run_prep("check", "--data", data).exit_code == 0
    flat = extract(
        ExtractConfig(dataset="kinetics400", root=raw, out=tmp_path, size=128, unlabelled=True, shard_size=1)
    )
    assert flat.shards_written == 9
    assert sorted(
        p.relative_to(data / "frames").as_posix() for p in (data / "frames").rglob("shard-*.h5")
    ) == [f"shard-{i:05d}.h5" for i in range(9)]


def test_pretrain_on_kinetics_evaluate_on_ucf101(k400, small_ucf, tmp_path, one_thread):
    """``iic train --data <kinetics400>`` (a batch of 16:9, portrait and 4:3 videos), then retrieval and
    recognition on UCF101 with that checkpoint: allowed (a transfer), and every report names both datasets."""
    import json

    from click.testing import CliRunner

    from iic.cli import main

    def run_iic(*args):
        result = CliRunner().invoke(main, [str(a) for a in args])
        assert result.exit_code == 0, result.output + repr(result.exception)
        return result

    run_iic(
        "train",
        "--preset",
        "tiny",
        "--data",
        k400,
        "--out",
        tmp_path / "run",
        "--crop",
        "32",
        "--frames",
        "8",
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--workers",
        "0",
        "--device",
        "cpu",
    )
    ckpt = tmp_path / "run" / "final.pt"
    ext = run_prep(
        "extract", "--root", small_ucf, "--out", tmp_path / "data", "--size", "40x52", "--workers", "1"
    )
    assert ext.exit_code == 0, ext.output
    ucf = tmp_path / "data" / "ucf101"
    fast = ["--workers", "0", "--device", "cpu", "--clips", "1", "--ckpt", ckpt]
    res = run_iic("eval", "retrieval", "--data", ucf, "--out", tmp_path / "eval", *fast)
    named = f"pretrained on kinetics400 (4 videos, {k400.resolve()}); evaluated on ucf101 split 1 ({ucf})"
    assert named in res.output.splitlines()
    result = json.loads((tmp_path / "eval" / "retrieval.json").read_text())
    assert result["data"]["pretrained_on"]["dataset"] == "kinetics400" and result["data"]["transfer"] is True
    assert result["counts"] == {"queries": 2, "gallery": 2, "failed_queries": 0, "failed_gallery": 0}
    rec = run_iic(
        "eval",
        "recognition",
        "--data",
        ucf,
        "--out",
        tmp_path / "rec",
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--val-fraction",
        "0",
        *fast,
    )
    assert named in rec.output.splitlines()
    assert (
        json.loads((tmp_path / "rec" / "recognition.json").read_text())["data"]["evaluated_on"]["dataset"]
        == "ucf101"
    )
    # on Kinetics itself: validate queries train; the unlabelled test video is said to be left out
    own = run_iic("eval", "retrieval", "--data", k400, "--out", tmp_path / "own", *fast)
    assert "retrieval of 2 queries against 4 gallery videos" in own.output
    assert "1 unlabelled videos are in neither list and left out" in own.output


def test_cli_subset_restricts_and_is_recorded(k400, tmp_path):
    import json

    raw = k400.parent.parent / "raw"
    (tmp_path / "classes.txt").write_text(f"{ODD}\n")
    res = run_prep(
        "extract",
        "--dataset",
        "kinetics400",
        "--root",
        raw,
        "--out",
        tmp_path,
        "--size",
        "64",
        "--subset",
        tmp_path / "classes.txt",
        "--workers",
        "1",
    )
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "kinetics400" / "dataset.json").read_text())
    assert (
        meta["classes"] == [ODD]
        and meta["subset"] == str(tmp_path / "classes.txt")
        and "unlabelled" not in meta
    )
    from iic.pipeline.format import read_manifest

    rows = read_manifest(tmp_path / "kinetics400" / "manifest.csv")
    assert sorted(r.id.split("/")[1][:11] for r in rows) == ["portrait916", "valwide1691", "wide169wide"]
    assert {r.label for r in rows} == {0}
    bad = run_prep("extract", "--dataset", "ucf101", "--root", raw, "--out", tmp_path / "u", "--unlabelled")
    assert bad.exit_code == 2 and bad.output.strip().splitlines()[-1] == (
        "Error: --subset and --unlabelled apply to the Kinetics datasets, not ucf101"
    )


def test_existing_datasets_keep_their_shards_and_identity(small_ucf, tmp_path):
    """What decides whether an earlier version's shards are kept (their settings attribute, their names) and
    whether a checkpoint's data identity still matches (dataset.json's content) is unchanged for UCF101-style
    datasets: the literal values of the previous version."""
    import json

    import h5py

    from iic.pipeline.extract import ExtractConfig

    assert ExtractConfig("ucf101", small_ucf, tmp_path).storage() == {
        "size": [128, 171],
        "quality": 90,
        "subsampling": "420",
        "store_residuals": False,
        "format_version": 1,
    }
    res = run_prep(
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
    )
    assert res.exit_code == 0, res.output
    data = tmp_path / "ucf101"
    assert sorted(p.relative_to(data).as_posix() for p in data.rglob("*.h5")) == [
        "frames/shard-00000.h5",
        "frames/shard-00001.h5",
    ]
    with h5py.File(data / "frames" / "shard-00000.h5") as f:
        assert json.loads(f.attrs["settings"])["size"] == [32, 40]
    assert set(json.loads((data / "dataset.json").read_text())) == {
        "format",
        "format_version",
        "dataset",
        "split",
        "size",
        "codec",
        "quality",
        "subsampling",
        "residual",
        "residual_source",
        "classes",
        "shard_size",
        "versions",
    }


def test_show_a_portrait_video_and_long_failure_lists(k400, tmp_path, figures):
    from iic.pipeline.format import ManifestRow
    from iic.pipeline.parallel import StageSummary

    vid = "train/portrait916_000000_000010"
    res = run_prep("show", "--data", k400, "--video", vid, "--out", tmp_path / "p.png")
    assert res.exit_code == 0, res.output
    assert figures[-1]["title"] == f"{vid}  ({ODD}, {FRAMES} frames, 228x128)"
    w, h = figures[-1]["figure"].get_size_inches()
    assert w < 8 * 1.6 * 128 / 228 + 1  # laid out for a portrait frame, not a landscape one
    rows = [
        ManifestRow(
            f"train/v{i:02d}",
            f"train/v{i:02d}.mp4",
            "a",
            0,
            "1:train",
            "frames/shard-00000.h5",
            i,
            0,
            "failed",
            "file not found",
        )
        for i in range(25)
    ]
    lines = StageSummary.from_rows(
        rows, unit="frames", bytes=0, seconds=1.0, shards_written=1, shards_kept=0, folder=Path("d")
    ).lines()
    assert len(lines) == 22 and lines[20] == "  failed train/v19: file not found"
    assert lines[21] == "  ... and 5 more failed (reasons in d/manifest.csv, shares in `iic-prep info`)"


@pytest.mark.parametrize(
    "size, message", [("8", "neither HxW"), ("abc", "neither HxW"), ("12x300", "at least 16")]
)
def test_cli_size_refuses_bad_values_as_usage(tmp_path, size, message):
    res = run_prep(
        "extract", "--dataset", "kinetics400", "--root", tmp_path, "--out", tmp_path, "--size", size
    )
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output


@pytest.mark.parametrize(
    "short, h, w, out",
    [
        (128, 1080, 1920, (128, 228)),
        (128, 1920, 1080, (228, 128)),
        (128, 480, 640, (128, 170)),
        (128, 256, 340, (128, 170)),
        (128, 100, 100, (128, 128)),
        (112, 720, 1280, (112, 200)),
        (128, 272, 640, (128, 302)),
    ],
)
def test_short_side_table(short, h, w, out):
    from iic.pipeline.decode import output_size

    got = output_size(short, h, w)
    assert got == out and got[0] % 2 == 0 and got[1] % 2 == 0
    assert abs(max(got) - short * max(h, w) / min(h, w)) <= 1
    assert output_size((128, 171), h, w) == (128, 171)  # HxW: every video the same size, as before
