"""Split adapters on tiny copies of the official layouts (the list files are the truth)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import error_lines, run_prep

from iic.pipeline.datasets import DatasetLayoutError, load_index


def _ucf_lists(root: Path) -> Path:
    """UCF101 split files as shipped: CRLF, the HandstandPushups folder holding v_HandStandPushups_*."""
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    (root / "UCF-101").mkdir()
    (lists / "classInd.txt").write_bytes(b"1 ApplyEyeMakeup\r\n2 HandstandPushups\r\n3 YoYo\r\n")
    (lists / "trainlist01.txt").write_bytes(
        b"ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\n"
        b"HandstandPushups/v_HandStandPushups_g08_c01.avi 2\r\n"
        b"YoYo/v_YoYo_g08_c01.avi 3\r\n"
    )
    (lists / "testlist01.txt").write_bytes(
        b"ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\r\n"
        b"HandstandPushups/v_HandStandPushups_g01_c01.avi\r\n\r\n"
    )
    # split 2 swaps the roles of g01 and g08 and leaves YoYo out
    (lists / "trainlist02.txt").write_bytes(
        b"ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi 1\r\n"
        b"HandstandPushups/v_HandStandPushups_g01_c01.avi 2\r\n"
    )
    (lists / "testlist02.txt").write_bytes(
        b"ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi\r\nHandstandPushups/v_HandStandPushups_g08_c01.avi\r\n"
    )
    return root


def test_ucf101_paths_labels_and_membership(tmp_path):
    index = load_index("ucf101", _ucf_lists(tmp_path), split=1)
    assert index.classes == ("ApplyEyeMakeup", "HandstandPushups", "YoYo")
    assert index.video_root == tmp_path / "UCF-101"
    by_id = {e.id: e for e in index.entries}
    assert list(by_id) == sorted(by_id)
    assert set(by_id) == {
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01",
        "HandstandPushups/v_HandStandPushups_g01_c01",
        "HandstandPushups/v_HandStandPushups_g08_c01",
        "YoYo/v_YoYo_g08_c01",
    }
    hs = by_id["HandstandPushups/v_HandStandPushups_g01_c01"]
    # the path is the list's, not rebuilt from the file name (which would give HandStandPushups/...)
    assert hs.path == "HandstandPushups/v_HandStandPushups_g01_c01.avi"
    assert not hs.path.endswith("\r") and hs.class_name == "HandstandPushups"
    assert hs.label == 1  # test list: label from the class folder through classInd (1-based -> 0-based)
    assert hs.splits == {1: "test", 2: "train"}
    assert by_id["ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01"].splits == {1: "train", 2: "test"}
    assert by_id["YoYo/v_YoYo_g08_c01"].label == 2 and by_id["YoYo/v_YoYo_g08_c01"].splits == {1: "train"}


def test_ucf101_split_2_names_only_its_videos(tmp_path):
    index = load_index("ucf101", _ucf_lists(tmp_path), split=2)
    assert [e.id for e in index.entries] == [
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01",
        "HandstandPushups/v_HandStandPushups_g01_c01",
        "HandstandPushups/v_HandStandPushups_g08_c01",
    ]
    # split 3 has no list files: a one-line error naming the missing file
    with pytest.raises(DatasetLayoutError, match="trainlist03.txt"):
        load_index("ucf101", tmp_path, split=3)


def test_ucf101_class_missing_from_classind(tmp_path):
    root = _ucf_lists(tmp_path)
    (root / "ucfTrainTestlist" / "testlist01.txt").write_bytes(b"Nope/v_Nope_g01_c01.avi\r\n")
    with pytest.raises(DatasetLayoutError, match="'Nope'.*classInd"):
        load_index("ucf101", root, split=1)


HMDB_NAMES = {
    "brush_hair": [
        "April_09_brush_hair_u_nm_np1_ba_goo_0.avi 1  ",
        "Brushing_my_waist_lenth_hair_brush_hair_u_nm_np1_ba_goo_0.avi 2 ",
        "Aussie_Brushing_Hair!_brush_hair_u_nm_np2_le_med_0.avi 0 ",
    ],
    "cartwheel": [
        "#20_Rhythm_clip1_cartwheel_f_cm_np1_le_med_0.avi 1 ",
        "(Rad)Schlag_die_Bank!_cartwheel_f_cm_np1_le_med_0.avi 2",
        "Bodenturnen_&_Gymnastik+_cartwheel_f_cm_np1_ri_bad_0.avi 1 ",
        "Tom's_Cartwheel_cartwheel_f_cm_np1_fr_med_0.avi 2 ",
    ],
}


def test_hmdb51_flags_trailing_spaces_and_special_names(tmp_path):
    lists = tmp_path / "testTrainMulti_7030_splits"
    lists.mkdir()
    (tmp_path / "hmdb51").mkdir()
    for cls, lines in HMDB_NAMES.items():
        (lists / f"{cls}_test_split1.txt").write_text("".join(line + "\n" for line in lines))
    index = load_index("hmdb51", tmp_path, split=1)
    assert index.classes == ("brush_hair", "cartwheel")
    got = {e.path: (e.label, e.splits) for e in index.entries}
    assert got == {
        "brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi": (0, {1: "train"}),
        "brush_hair/Brushing_my_waist_lenth_hair_brush_hair_u_nm_np1_ba_goo_0.avi": (0, {1: "test"}),
        "cartwheel/#20_Rhythm_clip1_cartwheel_f_cm_np1_le_med_0.avi": (1, {1: "train"}),
        "cartwheel/(Rad)Schlag_die_Bank!_cartwheel_f_cm_np1_le_med_0.avi": (1, {1: "test"}),
        "cartwheel/Bodenturnen_&_Gymnastik+_cartwheel_f_cm_np1_ri_bad_0.avi": (1, {1: "train"}),
        "cartwheel/Tom's_Cartwheel_cartwheel_f_cm_np1_fr_med_0.avi": (1, {1: "test"}),
    }  # flag 0 (unused) is not listed
    assert all(e.id == e.path[:-4] for e in index.entries)


def _folder(root: Path, with_lists: bool) -> Path:
    for rel in ("cats/a.mp4", "cats/b.avi", "dogs/c.mkv", "dogs/d.webm", "dogs/e.mov", "dogs/notes.txt"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    if with_lists:
        (root / "train.txt").write_text("cats/a.mp4\ndogs/c.mkv\r\ndogs/e.mov\n")
        (root / "test.txt").write_text("cats/b.avi \n")
    return root


def test_folder_with_lists_uses_them(tmp_path):
    index = load_index("folder", _folder(tmp_path, with_lists=True), split=1)
    assert index.classes == ("cats", "dogs")
    assert {e.path: e.splits for e in index.entries} == {
        "cats/a.mp4": {1: "train"},
        "dogs/c.mkv": {1: "train"},
        "dogs/e.mov": {1: "train"},
        "cats/b.avi": {1: "test"},
    }
    with pytest.raises(DatasetLayoutError, match="single split"):
        load_index("folder", tmp_path, split=2)


def test_folder_without_lists_is_deterministic(tmp_path):
    a = load_index("folder", _folder(tmp_path / "a", with_lists=False), split=1)
    assert [e.path for e in a.entries] == [
        "cats/a.mp4",
        "cats/b.avi",
        "dogs/c.mkv",
        "dogs/d.webm",
        "dogs/e.mov",
    ]
    assert all(set(e.splits) == {1} and e.splits[1] in ("train", "test") for e in a.entries)
    assert [e.label for e in a.entries] == [0, 0, 1, 1, 1]
    # same files elsewhere -> same split; an extra file does not move the others
    b_root = _folder(tmp_path / "b", with_lists=False)
    (b_root / "dogs" / "f.mp4").write_bytes(b"x")
    b = {e.path: e.splits for e in load_index("folder", b_root, split=1).entries}
    assert all(b[e.path] == e.splits for e in a.entries)


def test_missing_or_empty_roots(tmp_path):
    with pytest.raises(DatasetLayoutError, match="dataset root not found"):
        load_index("ucf101", tmp_path / "nope")
    with pytest.raises(DatasetLayoutError, match="UCF101 video folder not found"):
        load_index("ucf101", tmp_path)
    with pytest.raises(DatasetLayoutError, match="HMDB51 video folder"):
        load_index("hmdb51", tmp_path)
    with pytest.raises(DatasetLayoutError, match="no videos found"):
        load_index("folder", tmp_path)


@pytest.mark.parametrize("dataset", ["ucf101", "hmdb51", "folder"])
def test_cli_missing_root_is_one_line(tmp_path, dataset):
    result = run_prep("extract", "--dataset", dataset, "--root", tmp_path / "nope", "--out", tmp_path / "out")
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert error_lines(result.output) == [f"Error: dataset root not found: {tmp_path / 'nope'}"]
