"""``--resume`` compares meaning, not spelling: a moved run folder, the data given by another path (relative,
absolute, a symlink, a copy elsewhere) resume; another dataset with the same video list is refused."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import small_synth_dataset

from iic.cli import main, prep
from iic.model import checkpoint
from iic.pipeline.reader import VideoStore

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


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def world(tmp_path_factory, one_thread) -> dict[str, Path]:
    """Two datasets with the same video list (synthetic seeds 0 and 1) and a finished 1-epoch run on the
    first."""
    root = tmp_path_factory.mktemp("resume")
    data, other = small_synth_dataset(root / "a" / "data"), small_synth_dataset(root / "b" / "data", seed=1)
    run = root / "run"
    _train(data, run, ok=True)
    return {"data": data, "other": other, "run": run}


def _train(data, out, *extra, ok: bool | None = None):
    """``iic train`` into ``out``; ``"--resume"`` in ``extra`` continues the run there (its options given
    again)."""
    extra = [x for e in extra for x in ((e, str(out)) if e == "--resume" else (e,))]
    r = CliRunner().invoke(main, ["train", "--data", str(data), "--out", str(out), *TINY, *extra])
    if ok is not None:
        assert (r.exit_code == 0) == ok, r.output
    return r


def _copy_run(world, dest: Path) -> Path:
    shutil.copytree(world["run"], dest)
    return dest


def _refused(r, *words: str) -> str:
    assert r.exit_code == 1, r.output
    lines = [line for line in r.output.splitlines() if line.startswith("Error")]
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    assert all(w in lines[0] for w in words), lines[0]
    return lines[0]


def test_the_manifest_fingerprint_cannot_tell_the_two_datasets_apart(world):
    """Why resume compares `identity`: the manifest holds ids, lists and frame counts, not pixels."""
    a, b = VideoStore(world["data"]), VideoStore(world["other"])
    assert a.fingerprint() == b.fingerprint()
    assert a.identity() != b.identity()
    assert checkpoint.load(world["run"] / "last.pt")["data_identity"]["identity"] == a.identity()


def test_the_identity_is_read_once_per_state_of_the_files(world, tmp_path):
    """Every evaluation list and view asks for it (0.65 ms a video): a second store of an unchanged folder
    gets it without opening a shard; rewriting a shard (same bytes, new mtime) makes the next ask read
    again."""
    copy = tmp_path / "ucf101"
    shutil.copytree(world["data"], copy)
    first = VideoStore(copy).identity()
    again = VideoStore(copy)
    assert again.identity() == first and not again._files
    shard = copy / again.rows[0].shard
    shard.write_bytes(shard.read_bytes())
    reread = VideoStore(copy)
    assert reread.identity() == first and reread._files


def test_the_identity_is_the_same_from_the_shards_digests_and_from_their_videos(world, tmp_path):
    """Each shard stores the digest of its videos' offsets and CRC32s when it is written, so the identity
    reads one attribute per shard; a shard without it (written by an earlier version) gets the same digest
    from its videos. Another dataset with the same video list still differs."""
    import h5py

    copy = tmp_path / "ucf101"
    shutil.copytree(world["data"], copy)
    store = VideoStore(copy)
    with_digests = store.identity()
    shards = sorted({r.shard for r in store.rows if r.ok})
    store.close()
    for shard in shards:
        with h5py.File(copy / shard, "a") as f:
            assert len(f.attrs["content_digest"]) == 64
            del f.attrs["content_digest"]
    assert VideoStore(copy).identity() == with_digests
    assert VideoStore(world["other"]).identity() != with_digests


def test_a_checkpoint_with_the_legacy_identity_resumes_and_another_datasets_does_not(world, tmp_path):
    """Checkpoints of versions before per-shard digests recorded the legacy identity (one running hash over
    every video): they still resume on their data, and not on another dataset with the same video list."""
    from iic.model.run.resume import check_data

    legacy, other = VideoStore(world["data"]).legacy_identity(), VideoStore(world["other"]).legacy_identity()
    assert legacy != VideoStore(world["data"]).identity() and legacy != other
    saved = {"path": str(world["data"]), "identity": legacy, "flow": False}
    check_data(saved, str(world["data"]), world["data"], tmp_path / "last.pt")
    with pytest.raises(checkpoint.CheckpointError, match="is not the dataset"):
        check_data(saved, str(world["data"]), world["other"], tmp_path / "last.pt")


def test_a_moved_run_folder_resumes(world, tmp_path):
    moved = tmp_path / "elsewhere" / "run"
    moved.parent.mkdir()
    shutil.move(str(_copy_run(world, tmp_path / "run")), moved)
    (moved / "final.pt").unlink()
    _train(world["data"], moved, "--resume", ok=True)
    assert checkpoint.load(moved / "final.pt")["epoch"] == 1
    assert f'"out": "{moved}"' in (moved / "config.json").read_text()


def test_the_same_data_by_another_path_resumes(world, tmp_path, monkeypatch):
    run = _copy_run(world, tmp_path / "run")
    data = world["data"]
    monkeypatch.chdir(data.parent.parent)
    _train(Path("data") / "ucf101", run, "--resume", ok=True)  # relative instead of absolute
    _train(f"{data.parent}/../data/ucf101/", run, "--resume", ok=True)  # another spelling
    os.symlink(data, tmp_path / "link")
    _train(tmp_path / "link", run, "--resume", ok=True)  # a symlink
    copy = tmp_path / "copy" / "ucf101"
    shutil.copytree(data, copy)
    _train(copy, run, "--resume", ok=True)  # the dataset moved (copied) elsewhere
    r = CliRunner().invoke(prep, ["flow", "--data", str(copy), "--method", "farneback", "--workers", "1"])
    assert r.exit_code == 0, r.output
    _train(copy, run, "--resume", ok=True)  # flow added later: not read by this run (view2 res)


def test_another_dataset_is_refused(world, tmp_path):
    run = _copy_run(world, tmp_path / "run")
    line = _refused(_train(world["other"], run, "--resume"), str(run / "last.pt"), "is not the dataset")
    assert str(world["data"]) in line
    # the same folder re-extracted with other pixels (another JPEG quality): same manifest, other data
    copy = tmp_path / "copy"
    shutil.copytree(world["data"].parent, copy)  # the raw videos and the dataset beside them
    data = copy / "ucf101"
    _train(data, tmp_path / "fresh", ok=True)  # a run on the copy, then the copy is re-extracted
    r = CliRunner().invoke(
        prep,
        [
            "extract",
            "--root",
            str(copy / "raw"),
            "--out",
            str(copy),
            "--size",
            "40x52",
            "--workers",
            "1",
            "--quality",
            "70",
            "--overwrite",
        ],
    )
    assert r.exit_code == 0, r.output
    _refused(_train(data, tmp_path / "fresh", "--resume"), "changed since")
    n_data = checkpoint.load(tmp_path / "fresh" / "last.pt")["n_data"]
    assert n_data == len(VideoStore(data).ok_rows(1, "train"))  # the size check alone would let it through


def test_old_checkpoints_compare_resolved_paths(world, tmp_path, monkeypatch):
    """Checkpoints written before data identities: the resolved path decides."""
    run = _copy_run(world, tmp_path / "run")
    state = checkpoint.load(run / "last.pt")
    del state["data_identity"], state["format"]
    torch.save(state, run / "last.pt")
    monkeypatch.chdir(world["data"].parent)
    _train(Path("ucf101"), run, "--resume", ok=True)
    _refused(_train(world["other"], run, "--resume"), "predates data identities", str(world["other"]))


def test_recognition_resumes_in_a_moved_folder_and_refuses_another_source(world, tmp_path):
    data = world["data"]
    root = tmp_path / "a"
    _copy_run(world, root / "run")
    args = [
        "eval",
        "recognition",
        "--data",
        str(data),
        "--workers",
        "0",
        "--device",
        "cpu",
        "--clips",
        "1",
        "--batch-size",
        "4",
        "--val-fraction",
        "0",
    ]
    r = CliRunner().invoke(main, [*args, "--ckpt", str(root / "run" / "final.pt"), "--epochs", "1"])
    assert r.exit_code == 0, r.output
    moved = tmp_path / "b"
    shutil.move(str(root), moved)  # the run and its recognition folder
    r = CliRunner().invoke(
        main, [*args, "--ckpt", str(moved / "run" / "final.pt"), "--epochs", "2", "--resume"]
    )
    assert r.exit_code == 0, r.output
    assert checkpoint.load(moved / "run" / "eval" / "recognition-ucf101-s1-res" / "final.pt")["epoch"] == 2
    # another backbone checkpoint (trained on the other dataset) for the same folder is refused
    _train(world["other"], tmp_path / "other-run", ok=True)
    r = CliRunner().invoke(
        main,
        [
            *args,
            "--ckpt",
            str(tmp_path / "other-run" / "final.pt"),
            "--out",
            str(moved / "run" / "eval" / "recognition-ucf101-s1-res"),
            "--epochs",
            "3",
            "--resume",
        ],
    )
    _refused(r, "another backbone checkpoint")
