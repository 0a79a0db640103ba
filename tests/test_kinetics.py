"""Kinetics: the adapter on a generated annotation tree (both layouts, odd labels, subsets, an unlabelled test
CSV), then real encoded videos of different aspect ratios through the real CLI."""
from __future__ import annotations

from pathlib import Path

import pytest

from iic.pipeline.datasets import DatasetLayoutError, load_index
from iic.pipeline.kinetics import video_name

ODD = "passing American football (in game)"
APOS = "tying bow tie's knot"
PLAIN = "abseiling"

# (label, youtube_id, start, end) of train.csv and validate.csv
TRAIN = [(ODD, "aaaaaaaaaaa", 10, 20), (APOS, "bbbbbbbbbbb", 0, 10), (PLAIN, "ccccccccccc", 5, 15),
         (PLAIN, "missing-one", 1, 11)]
VALIDATE = [(ODD, "ddddddddddd", 30, 40), (PLAIN, "eeeeeeeeeee", 7, 17)]
TEST = [("fffffffffff", 3, 13)]


def write_csvs(ann: Path, train=TRAIN, validate=VALIDATE, test=TEST, is_cc: bool = True) -> None:
    """The official CSVs: quoted labels where needed, times as integers (the test CSV has no label column)."""
    import csv

    ann.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("validate", validate)):
        with open(ann / f"{name}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["label", "youtube_id", "time_start", "time_end", "split"] + (["is_cc"] if is_cc else []))
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
    assert missing.path == video_rel("train", PLAIN, "missing-one", 1, 11, layout) and not (root / missing.path).exists()
    assert not any(e.id.startswith("test/") for e in index.entries)  # unlabelled only when asked for
    assert len(index.entries) == len(TRAIN) + len(VALIDATE)


def test_unlabelled_test_split(tmp_path):
    index = load_index("kinetics400", placeholder_tree(tmp_path, "flat"), unlabelled=True)
    test = [e for e in index.entries if e.id.startswith("test/")]
    assert [(e.id, e.label, e.class_name, e.splits) for e in test] == [
        ("test/fffffffffff_000003_000013", -1, "", {1: "unlabelled"})]
    assert index.classes == (PLAIN, ODD, APOS)  # unlabelled videos add no class


def test_subset_of_classes_and_of_videos(tmp_path):
    root = placeholder_tree(tmp_path, "labels")
    (tmp_path / "classes.txt").write_text(f"# two classes\n{ODD}\n{PLAIN}\n\n")
    index = load_index("kinetics400", root, subset=tmp_path / "classes.txt", unlabelled=True)
    assert index.classes == (PLAIN, ODD)
    assert {e.class_name for e in index.entries} == {PLAIN, ODD}  # the unlabelled video cannot belong to a class
    assert [e.label for e in index.entries if e.class_name == ODD] == [1, 1]
    (tmp_path / "videos.txt").write_text("bbbbbbbbbbb\neeeeeeeeeee_000007_000017\n")
    index = load_index("kinetics400", root, subset=tmp_path / "videos.txt")
    assert [e.id for e in index.entries] == ["train/bbbbbbbbbbb_000000_000010", "validate/eeeeeeeeeee_000007_000017"]
    assert index.classes == (PLAIN, APOS) and [e.label for e in index.entries] == [1, 0]


@pytest.mark.parametrize("text, message", [
    ("abseiling\nno such class\n", "1 of 2 entries are neither a label nor a video"),
    ("abseiling\naaaaaaaaaaa\n", "mixes labels"),
    ("# nothing\n", "is empty"),
])
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
