"""Clip streaming and the IIC training loop, on a tiny synthetic dataset extracted through the real CLI."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import gated_env, wait_for
from torch.utils.data import DataLoader

from iic.cli import main, prep
from iic.model import checkpoint
from iic.model.config import ConfigError, TrainConfig, build_config
from iic.model.data.clips import (
    ClipConfig,
    ClipDataset,
    DataError,
    EpochSampler,
    clip_indices,
    eval_starts,
    train_start,
)
from iic.model.evaluation.monitor import SAME_FEATURES, alike_warning, mean_cosine
from iic.model.run.train import TrainingError, train
from iic.pipeline.reader import VideoStore

TINY = ["--preset", "tiny", "--crop", "32", "--batch-size", "4", "--K", "16"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    runner = CliRunner()
    r = runner.invoke(
        prep,
        [
            "synth",
            "--out",
            str(root / "raw"),
            "--classes",
            "3",
            "--per-class",
            "6",
            "--frames",
            "20",
            "--size",
            "48x64",
        ],
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(
        prep,
        [
            "extract",
            "--dataset",
            "ucf101",
            "--root",
            str(root / "raw"),
            "--out",
            str(root / "data"),
            "--size",
            "40x52",
            "--workers",
            "1",
        ],
    )
    assert r.exit_code == 0, r.output
    return root / "data" / "ucf101"


# -- clip arithmetic ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "length,start,frames,stride,expected",
    [
        (20, 0, 4, 1, [0, 1, 2, 3]),
        (20, 5, 4, 2, [5, 7, 9, 11]),
        (3, 0, 5, 1, [0, 1, 2, 0, 1]),  # short video loops
        (1, 0, 3, 1, [0, 0, 0]),
    ],
)
def test_clip_indices(length, start, frames, stride, expected):
    assert clip_indices(length, start, frames, stride).tolist() == expected


def test_train_start_covers_every_fitting_start():
    rng = np.random.default_rng(0)
    starts = {train_start(20, 16, 1, rng) for _ in range(500)}
    assert starts == set(range(5))
    assert {train_start(10, 16, 1, rng) for _ in range(20)} == {0}
    assert max(train_start(40, 16, 2, rng) for _ in range(500)) == 40 - 31


@pytest.mark.parametrize(
    "length,n,expected",
    [
        (16, 3, [0, 0, 0]),  # exactly one clip fits
        (26, 3, [0, 5, 10]),  # centres linspace(8, 18, 3) = 8, 13, 18
        (100, 10, np.round(np.linspace(8, 92, 10) - 8).astype(int).tolist()),
        (5, 2, [0, 0]),  # shorter than the clip: loops from 0
        (40, 1, [12]),  # one clip: the centre one (centre 20, start 20 - 8), as the training monitor uses
        (41, 1, [12]),  # centre 20.5: start round(12.5) = 12 (banker's rounding)
    ],
)
def test_test_starts_follow_linspace_centres(length, n, expected):
    assert eval_starts(length, 16, 1, n).tolist() == expected


def test_epoch_sampler_partitions_ranks_and_is_deterministic():
    a = list(EpochSampler(10, seed=3, rank=0, world=2))
    b = list(EpochSampler(10, seed=3, rank=1, world=2))
    assert sorted(i for i, _ in a + b) == list(range(10))
    assert a == list(EpochSampler(10, seed=3, rank=0, world=2))
    s = EpochSampler(10, seed=3)
    s.set_epoch(1)
    assert [i for i, _ in s] != [i for i, _ in EpochSampler(10, seed=3)]


# -- the dataset ---------------------------------------------------------------------------------------------


def test_train_and_test_samples(data):
    cfg = ClipConfig(frames=16, modalities=("rgb", "res"), test_clips=4)
    train_ds = ClipDataset(data, 1, "train", cfg, mode="train")
    store = VideoStore(data)
    assert train_ds.n_videos == len(store.ok_rows(1, "train"))
    s = train_ds[(2, 123)]
    assert s["rgb"].shape == (3, 16, 40, 52) and s["rgb"].dtype == torch.uint8
    assert s["res"].shape == (3, 16, 40, 52)
    assert s["index"] == 2 and s["label"] == train_ds.rows[2].label
    test_ds = ClipDataset(data, 1, "test", cfg, mode="test")
    assert len(test_ds) == 4 * len(store.ok_rows(1, "test"))
    # clip k of a 20-frame video starts at round(linspace(8, 12, 4) - 8)
    first = test_ds[1]
    row = test_ds.rows[0]
    start = int(eval_starts(row.n_frames, 16, 1, 4)[1])
    assert torch.equal(first["rgb"], torch.from_numpy(store.frames(row.id, start, 16)).permute(3, 0, 1, 2))


def test_short_videos_loop_and_it_is_said_once(data, caplog):
    with caplog.at_level(logging.WARNING, logger="iic.model.data.clips"):
        ds = ClipDataset(data, 1, "train", ClipConfig(frames=32), mode="train")
    s = ds[(0, 1)]
    n = ds.rows[0].n_frames
    assert torch.equal(s["rgb"][:, n], s["rgb"][:, 0])
    said = [r.getMessage() for r in caplog.records if "shorter than a clip" in r.getMessage()]
    assert said == [
        f"all {ds.n_videos} train videos of split 1 are shorter than a clip (32 frames at stride 1 span 32 "
        f"usable frames; shortest {ds.lengths.min()}): their clips loop, frames repeat"
    ], said
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="iic.model.data.clips"):
        ClipDataset(data, 1, "train", ClipConfig(frames=4), mode="train")
    assert not [r for r in caplog.records if "shorter than a clip" in r.getMessage()]


def test_flow_needed_but_absent(data):
    with pytest.raises(DataError, match="iic-prep flow"):
        ClipDataset(data, 1, "train", ClipConfig(modalities=("rgb", "flow")))


def _collect(ds, workers: int, context: str | None = None) -> list[torch.Tensor]:
    loader = DataLoader(
        ds,
        batch_size=3,
        sampler=EpochSampler(ds.n_videos, seed=1),
        num_workers=workers,
        multiprocessing_context=context,
        persistent_workers=workers > 0,
    )
    return [b["rgb"] for b in loader]


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_loader_workers_give_the_same_clips(data, context):
    ds = ClipDataset(data, 1, "train", ClipConfig(frames=8), mode="train")
    ref = _collect(ds, 0)
    got = _collect(ds, 2, context)
    assert len(ref) == len(got) and all(torch.equal(a, b) for a, b in zip(ref, got, strict=True))


# -- configs -------------------------------------------------------------------------------------------------


def test_presets_and_overrides():
    cfg = build_config("r3d-flowv-shuffle", epochs=24, lr=None)
    assert (cfg.model, cfg.view2, cfg.iic.neg, cfg.lr) == ("r3d-10", "flow-v", "shuffle", 0.01)
    assert cfg.milestone_epochs() == [4, 9, 12, 16]  # 45/90/125/160 of 240, scaled to 24
    assert build_config("r3d-res-repeat").milestone_epochs() == [45, 90, 125, 160]
    assert cfg.modalities == ("rgb", "flow")
    with pytest.raises(ConfigError, match="unknown preset"):
        build_config("nope")
    with pytest.raises(ConfigError, match="divisible by 4"):
        build_config("tiny", neg="shuffle", frames=10)


def test_configs_saved_with_the_retired_jitter_option_still_load():
    cfg = build_config("tiny")
    old = json.loads(
        json.dumps({**cfg.to_dict(), "jitter": 0.0})
    )  # as checkpoints stored it before its removal
    assert TrainConfig.from_dict(old) == cfg
    assert "jitter" not in cfg.to_dict()
    with pytest.raises(ConfigError, match="jitter=0.4"):  # a value no run of ours could have had
        TrainConfig.from_dict({**old, "jitter": 0.4})
    with pytest.raises(ConfigError, match="unknown keys"):
        TrainConfig.from_dict({**old, "nonsense": 1})


@pytest.mark.parametrize(
    "args,message,code",
    [
        (["--preset", "nope"], "unknown preset", 2),
        (["--view2", "flow-u"], "iic-prep flow", 1),
        (["--batch-size", "64"], "larger than the", 2),
        (["--model", "resnet50"], "'resnet50' is not one of", 2),
        (["--resume", "{run}"], "no last.pt there", 1),
        (["--neg", "none", "--live-negative"], "needs one intra-negative", 2),
        (["--neg", "repeat+reverse", "--live-negative"], "needs one intra-negative", 2),
        (["--neg", "repeat+reverse"], "several intra-negatives are contrasted live", 2),
        (["--neg", "reverse+repeat"], "'reverse+repeat' is not one of", 2),
    ],
)
def test_bad_configs_give_one_line_errors(data, tmp_path, args, message, code):
    """Bad flags are usage errors (exit 2); data or checkpoint problems are errors (exit 1)."""
    base = ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--epochs", "1", "--workers", "0"]
    (tmp_path / "run").mkdir()
    r = CliRunner().invoke(main, base + TINY + [a.format(run=tmp_path / "run") for a in args])
    assert r.exit_code == code, r.output
    assert message in r.output and "Traceback" not in r.output
    assert len([line for line in r.output.splitlines() if line.startswith("Error")]) == 1


def test_missing_data_folder(tmp_path):
    r = CliRunner().invoke(main, ["train", "--data", str(tmp_path / "nothing"), "--preset", "tiny"])
    assert r.exit_code == 1 and "iic-prep extract" in r.output


# -- training ------------------------------------------------------------------------------------------------


def _cfg(data: Path, out: Path, **kw):
    base = dict(data=data, out=out, crop=32, batch_size=4, K=16, workers=0, log_every=1, seed=0)
    return build_config("tiny", **{**base, **kw})


def test_tiny_run_lowers_the_loss(data, tmp_path):
    """The paper's bank positive, no head, multi-step decay, on 12 videos (the tiny recipe needs the
    benchmark's 240: tests/test_learning.py)."""
    final = train(
        _cfg(
            data,
            tmp_path / "run",
            epochs=8,
            positive="bank",
            head="none",
            schedule="multistep",
            warmup_epochs=0,
        )
    )
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["epoch_loss"] for r in rows if "epoch_loss" in r]
    assert len(losses) == 8
    # measured (seed 0): 9.1 -> 6.0 over 8 epochs; the first and last pairs of epochs are compared
    assert np.mean(losses[-2:]) < np.mean(losses[:2]) - 0.5, losses
    ckpt = checkpoint.load(final)
    for bank in ("M1", "M2", "Mn"):
        norms = ckpt["memory"][f"{bank}.memory"].norm(dim=1)
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    assert (tmp_path / "run" / "curves.png").stat().st_size > 0
    assert ckpt["config"]["model"] == "r3d-tiny" and ckpt["n_data"] == 12


def test_killed_run_resumes_to_the_uninterrupted_result(data, tmp_path):
    """SIGKILL a real `iic train` as it saves its second epoch checkpoint (held there at a gate, so the kill
    always lands after epoch 1 and before the end); --resume (with other worker settings) must end with
    exactly the weights and banks of an uninterrupted run. Every run is a fresh process with the same thread
    count (CPU convolutions sum in a thread-count-dependent order)."""
    iic = shutil.which("iic", path=str(Path(sys.executable).parent))
    env = {**os.environ, "OMP_NUM_THREADS": "2"}

    def args(out: Path, *extra: str) -> list[str]:
        return [
            iic,
            "train",
            "--data",
            str(data),
            "--out",
            str(out),
            "--epochs",
            "3",
            "--seed",
            "0",
            *TINY,
            *extra,
        ]

    subprocess.run(
        args(tmp_path / "a", "--workers", "0"), check=True, env=env, capture_output=True, timeout=600
    )
    out = tmp_path / "b"
    marker = tmp_path / "held"
    proc = subprocess.Popen(
        args(out, "--workers", "0"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=gated_env("iic.model.checkpoint:save_atomic", "last.pt", marker, nth=2, OMP_NUM_THREADS="2"),
    )
    wait_for(marker.exists, proc, "the second epoch's checkpoint")
    proc.kill()
    proc.wait()
    assert checkpoint.load(out / "last.pt")["epoch"] == 1 and not (out / "final.pt").exists()
    r = subprocess.run(
        args(out, "--workers", "2", "--resume", str(out)),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    full, resumed = checkpoint.load(tmp_path / "a" / "final.pt"), checkpoint.load(out / "final.pt")
    for part in ("model", "memory"):
        for k, v in full[part].items():
            assert torch.equal(v, resumed[part][k]), (part, k)
    assert resumed["epoch"] == 3 and resumed["step"] == full["step"]


# -- the second view and the intra-negative of a real 1-epoch run --------------------------------------------


@pytest.fixture(scope="module")
def flow_data(data, tmp_path_factory) -> Path:
    """The module's dataset with DIS flow (`iic-prep flow` on a copy)."""
    copy = tmp_path_factory.mktemp("flow") / "ucf101"
    shutil.copytree(data, copy, ignore=shutil.ignore_patterns(".lock"))
    r = CliRunner().invoke(prep, ["flow", "--data", str(copy), "--method", "dis", "--workers", "1"])
    assert r.exit_code == 0, r.output
    return copy


@pytest.fixture
def encoder_inputs(monkeypatch) -> list[list[torch.Tensor]]:
    """The inputs of every IIC encoder call of a training step: [view 1, view 2, (intra-negative)]."""
    from iic.model.methods.iic import Encoder

    seen: list[list[torch.Tensor]] = []
    forward = Encoder.forward

    def spy(self, views):
        if self.training:
            seen.append([v.detach().clone() for v in views])
        return forward(self, views)

    monkeypatch.setattr(Encoder, "forward", spy)
    return seen


def _train_cli(data: Path, out: Path, *extra: str) -> dict:
    """`iic train` for one tiny epoch (3 steps of 4 of the 12 training videos); returns the final
    checkpoint."""
    r = CliRunner().invoke(
        main,
        [
            "train",
            "--data",
            str(data),
            "--out",
            str(out),
            *TINY,
            "--epochs",
            "1",
            "--workers",
            "0",
            "--monitor-every",
            "0",
            "--device",
            "cpu",
            *extra,
        ],
        catch_exceptions=False,
    )
    assert r.exit_code == 0, r.output
    ckpt = checkpoint.load(out / "final.pt")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["epoch_loss"] for r in rows if "epoch_loss" in r]
    assert ckpt["epoch"] == 1 and ckpt["step"] == 3 and len(losses) == 1 and np.isfinite(losses[0])
    return ckpt


def test_mean_cosine_is_the_mean_over_pairs_of_videos_and_skips_left_out_ones():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(9, 5)) + 2.0  # a shared direction, as a ReLU network's features have
    f[4] = np.nan  # a video left out as corrupt
    kept = f[np.isfinite(f).all(1)]
    unit = kept / np.linalg.norm(kept, axis=1, keepdims=True)
    pairs = [unit[i] @ unit[j] for i in range(len(unit)) for j in range(len(unit)) if i != j]
    assert mean_cosine(torch.as_tensor(f)) == pytest.approx(float(np.mean(pairs)), abs=1e-12)
    assert mean_cosine(torch.ones(3, 4)) == pytest.approx(1.0)
    assert np.isnan(mean_cosine(torch.as_tensor(f[:1])))


def test_a_run_that_ends_with_every_video_encoded_alike_says_so_in_one_line(data, tmp_path, caplog):
    """One epoch of 3 steps leaves the network on its plateau: its features of the residual input (mostly "no
    change") point the same way for every test video, and the run says so (not an error: it may yet learn).
    RGB, whose appearance differs from video to video, is encoded apart even by an untrained network."""
    with caplog.at_level(logging.WARNING, logger="iic.model.run.train"):
        _train_cli(data, tmp_path / "run", "--monitor-every", "1")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if "monitor_similarity_res" in r][-1]
    assert (
        last["epoch"] == 1
        and last["monitor_similarity_res"] >= SAME_FEATURES > last["monitor_similarity_rgb"]
    )
    said = [r.getMessage() for r in caplog.records if "point the same way" in r.getMessage()]
    assert len(said) == 1 and "epoch 1" in said[0] and "\n" not in said[0], said
    assert f"res {last['monitor_similarity_res']:.4f}" in said[0] and "rgb" not in said[0], said
    assert (
        alike_warning({"monitor_similarity_res": SAME_FEATURES - 0.01, "monitor_top1_res": 99.0}, 1) is None
    )


@pytest.mark.parametrize("view2", ["flow-u", "rgb"])
def test_iic_second_view_trains_one_epoch(data, flow_data, tmp_path, encoder_inputs, figures, view2):
    out = tmp_path / f"tiny-{view2}"
    ckpt = _train_cli(flow_data if view2.startswith("flow") else data, out, "--view2", view2)
    assert ckpt["config"]["view2"] == view2
    assert len(encoder_inputs) == 3
    for x1, x2, _ in encoder_inputs:
        assert x1.shape == x2.shape == (4, 3, 16, 32, 32) and 0 <= float(x2.min()) and float(x2.max()) <= 1
        assert not torch.equal(x1, x2)
        if view2 == "flow-u":  # one flow component replicated to 3 channels, 0.5 = no motion
            assert torch.equal(x2[:, 0], x2[:, 1]) and torch.equal(x2[:, 0], x2[:, 2])
            assert (
                abs(float(x2.median()) - 0.5) < 0.01 and float(x2.std()) > 0.001
            )  # mostly still, some motion
        else:  # another crop of the same RGB clip: colour, not a replicated component
            assert not torch.equal(x2[:, 0], x2[:, 1])
            dims = (
                1,
                2,
                3,
                4,
            )  # crops of the same clips: alike in brightness and contrast (a residual is not)
            assert (x1.mean(dims) - x2.mean(dims)).abs().max() < 0.1
            ratio = x2.std(dims) / x1.std(dims)
            assert float(ratio.min()) > 0.7 and float(ratio.max()) < 1.4, ratio
    # the curves picture names the run and the view
    assert (
        figures[-1]["path"] == out / "curves.png"
        and out.name in figures[-1]["title"]
        and view2 in figures[-1]["title"]
    )


def test_iic_shuffle_negative_trains_one_epoch(data, tmp_path, encoder_inputs):
    """--neg shuffle: the intra-negative is view 1 with two of its four time chunks swapped, and its bank
    (Mn) is trained."""
    ckpt = _train_cli(data, tmp_path / "run", "--neg", "shuffle")
    assert ckpt["config"]["iic"]["neg"] == "shuffle"
    assert len(encoder_inputs) == 3
    for x1, _, neg in encoder_inputs:
        assert neg.shape == x1.shape
        for b in range(x1.shape[0]):
            chunks = x1[b].chunk(4, dim=1)  # (C, 4, H, W) each
            got = neg[b].chunk(4, dim=1)
            source = [next(j for j in range(4) if torch.equal(g, chunks[j])) for g in got]
            moved = [i for i in range(4) if source[i] != i]
            assert sorted(source) == [0, 1, 2, 3] and len(moved) == 2, source  # exactly two chunks swapped
    assert "Mn.memory" in ckpt["memory"]


def test_several_intra_negatives_train_one_epoch(data, tmp_path, encoder_inputs):
    """--neg repeat+reverse (with the batch's live negatives, K = 0): every clip has one intra-negative of
    each kind, in one encoder batch kind after kind, and the chance loss counts them all."""
    out = tmp_path / "run"
    live = ["--K", "0", "--positive", "live", "--batch-negatives"]
    ckpt = _train_cli(data, out, "--neg", "repeat+reverse", *live)
    assert ckpt["config"]["iic"]["neg"] == "repeat+reverse"
    for x1, _, neg in encoder_inputs:
        B, T = x1.shape[0], x1.shape[2]
        assert neg.shape == (2 * B, *x1.shape[1:])
        for b in range(B):
            still = neg[b]
            assert any(all(torch.equal(still[:, t], x1[b, :, i]) for t in range(T)) for i in range(T))
            assert torch.equal(neg[B + b], x1[b].flip(1))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    chance = [r["chance_loss"] for r in rows if "chance_loss" in r]
    assert chance and chance[0] == pytest.approx(2 * math.log(1 + 3 + 2 * 4))  # positive, 3 clips, 2 x 4


def test_existing_run_needs_resume(data, tmp_path):
    train(_cfg(data, tmp_path / "a", epochs=1))
    with pytest.raises(checkpoint.CheckpointError, match="--resume"):
        train(_cfg(data, tmp_path / "a", epochs=1))
    with pytest.raises(checkpoint.CheckpointError, match="another recipe"):
        train(_cfg(data, tmp_path / "a", epochs=2, lr=0.5), resume=True)


def test_safe_load_reports_keys(data, tmp_path):
    from iic.model.methods.iic import Encoder

    enc = Encoder(_cfg(data, tmp_path))
    state = enc.state_dict()
    state["extra.weight"] = torch.zeros(1)
    removed = next(k for k in state if k.startswith("backbone."))
    del state[removed]
    with pytest.raises(checkpoint.CheckpointError, match=f"missing {removed}.*unexpected extra.weight"):
        checkpoint.load_state(enc, state, "the model")


def test_ddp_two_processes_gloo(data, tmp_path):
    """A real torchrun launch: 2 CPU ranks on gloo; training checks that both ranks end with equal banks."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    iic = shutil.which("iic", path=str(Path(sys.executable).parent))
    assert torchrun and iic
    out = tmp_path / "ddp"
    cmd = [
        torchrun,
        "--standalone",
        "--nproc_per_node",
        "2",
        iic,
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--epochs",
        "2",
        "--workers",
        "0",
        *TINY[:-4],
        "--batch-size",
        "4",
        "--K",
        "16",
    ]
    r = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "world 2" in r.stderr
    ckpt = checkpoint.load(out / "final.pt")
    assert ckpt["epoch"] == 2 and ckpt["step"] == 2 * (12 // (2 * 2))


def test_a_manifest_that_disagrees_with_the_shards_stops_training_in_one_line(data, tmp_path):
    """The reader's refusal reaches the user as one line, also from DataLoader worker processes (torch
    re-raises a worker's error under a "Caught ... in DataLoader worker process N." first line)."""
    copy = tmp_path / "ucf101"
    shutil.copytree(data, copy)
    text = (copy / "manifest.csv").read_text()
    row = next(line for line in text.splitlines()[1:] if ",ok," in line and "1:train" in line)
    video, n = row.split(",")[0], int(row.split(",")[7])
    fields = row.split(",")
    fields[7] = str(n + 2)
    (copy / "manifest.csv").write_text(text.replace(row, ",".join(fields)))
    for workers in ("0", "2"):
        r = CliRunner().invoke(
            main,
            [
                "train",
                "--data",
                str(copy),
                "--out",
                str(tmp_path / f"run{workers}"),
                *TINY,
                "--epochs",
                "1",
                "--workers",
                workers,
                "--monitor-every",
                "0",
            ],
        )
        assert r.exit_code == 1, r.output
        errors = [line for line in r.output.splitlines() if line.startswith("Error")]
        assert len(errors) == 1 and "Traceback" not in r.output, r.output
        assert f"holds {n} rgb frames of video '{video}', its manifest says {n + 2}" in errors[0], errors[0]
        assert str(copy) in errors[0] and "frames/shard-00000.h5" in errors[0]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_loss_stops_the_loop_in_one_line(value):
    """One check for pretraining and fine-tuning (`runlog.ensure_finite`): NaN and +-inf stop, in one line
    that says where; a finite loss passes."""
    from iic.model.run.runlog import ensure_finite

    with pytest.raises(
        TrainingError, match=rf"^loss is {value} at epoch 2 step 7; stopped, last good checkpoint kept"
    ):
        ensure_finite(torch.tensor(value), "epoch 2 step 7", TrainingError)
    ensure_finite(torch.tensor(1e30), "epoch 2 step 7", TrainingError)
