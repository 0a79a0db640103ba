"""DualVar in the training framework: pair sampling, views, the network, `iic train --method dualvar`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import build_ucf101, run_prep, synth_frames, write_video

from iic.cli import main
from iic.model.config import (
    ConfigError,
    DualVarConfig,
    SimCLRAugmentConfig,
    TrainConfig,
    build_config,
    parse_key_values,
)
from iic.model.data import augment
from iic.model.data.clips import ClipConfig, ClipDataset, EpochSampler, clip_indices, clip_seed, train_start
from iic.model.data.views import residual_input
from iic.model.methods.dualvar import DualVarNet, make_views, restore_order, shuffle_segments

N_FRAMES = 70  # index videos: frame t is flat grey 10 + 3 t (lossless FFV1, so the index survives)


@pytest.fixture(scope="module")
def index_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dv_index")
    flat = (10 + 3 * np.arange(N_FRAMES)).astype(np.uint8)[:, None, None, None] * np.ones(
        (1, 24, 32, 3), np.uint8
    )
    videos = {f"Flat/v_Flat_g{g:02d}_c01.avi": flat for g in range(1, 4)}
    short = {"Flat/v_Flat_g04_c01.avi": flat[:20]}  # shorter than one clip: loops
    build_ucf101(
        root / "raw",
        {**videos, **short},
        writer=lambda p, f: write_video(p, f, codec="ffv1", pix_fmt="yuv444p"),
    )
    result = run_prep(
        "extract",
        "--dataset",
        "ucf101",
        "--root",
        root / "raw",
        "--out",
        root,
        "--size",
        "24x32",
        "--workers",
        "1",
    )
    assert result.exit_code == 0, result.output
    return root / "ucf101"


@pytest.fixture(scope="module")
def motion_data(tmp_path_factory) -> Path:
    """4 train + 2 test videos of moving discs, 40x52, 36 frames."""
    root = tmp_path_factory.mktemp("dv_motion")
    videos = {
        f"{cls}/v_{cls}_g{g:02d}_c01.avi": synth_frames(36, seed=10 * c + g)
        for c, cls in enumerate(["Alpha", "Beta"])
        for g in range(1, 4)
    }
    build_ucf101(root / "raw", videos, train={k for k in videos if "_g03_" not in k})
    result = run_prep(
        "extract",
        "--dataset",
        "ucf101",
        "--root",
        root / "raw",
        "--out",
        root,
        "--size",
        "40x52",
        "--workers",
        "1",
    )
    assert result.exit_code == 0, result.output
    return root / "ucf101"


def frame_index(clip: torch.Tensor) -> np.ndarray:
    """(3, T, H, W) uint8 clip of an index video -> the T source frame indices."""
    return np.round((clip.float().mean(dim=(0, 2, 3)).numpy() - 10) / 3).astype(int)


# ---------------------------------------------------------------------------------------------- sampling


def test_pair_sampling_two_times_of_one_video_with_stride(index_data):
    T, stride = 8, 4
    pair = ClipDataset(
        index_data, 1, "train", ClipConfig(frames=T, stride=stride, modalities=("rgb",), clips_per_sample=2)
    )
    single = ClipDataset(index_data, 1, "train", ClipConfig(frames=T, stride=stride, modalities=("rgb",)))
    long_rows = [i for i in range(pair.n_videos) if pair.lengths[i] == N_FRAMES]
    assert len(long_rows) == 3
    differ = 0
    for index, seed in EpochSampler(pair.n_videos, seed=3):
        s = pair[(index, seed)]
        assert s["rgb"].shape == s["rgb_1"].shape == (3, T, 24, 32)
        length = int(pair.lengths[index])
        for key, start in (("rgb", s["start"]), ("rgb_1", s["start_1"])):
            np.testing.assert_array_equal(frame_index(s[key]), clip_indices(length, start, T, stride))
        if index in long_rows:
            # whole clips, and clip 0 is the one-clip mode's clip for the same seed (IIC path unchanged)
            assert s["start"] == train_start(length, T, stride, np.random.default_rng(seed))
            assert max(s["start"], s["start_1"]) <= length - (T - 1) * stride - 1
            assert torch.equal(s["rgb"], single[(index, seed)]["rgb"])
            assert set(single[(index, seed)]) == {"rgb", "index", "label", "clip", "video", "hw"}
            assert single[(index, seed)]["hw"].tolist() == [24, 32]  # the video's own frame size
        else:  # a looping video: both starts over all of it
            assert 0 <= min(s["start"], s["start_1"]) and max(s["start"], s["start_1"]) < length
        differ += s["start"] != s["start_1"]
    assert differ >= 3  # independent random times (4 videos, 2 starts out of >= 20 each)


def test_views_third_is_clip_0_and_shuffle_is_its_permutation(index_data):
    pair = ClipDataset(
        index_data, 1, "train", ClipConfig(frames=8, stride=2, modalities=("rgb",), clips_per_sample=2)
    )
    items = [pair[(i, clip_seed(0, 0, i))] for i in range(3)]
    batch = {k: torch.stack([s[k] for s in items]) for k in ("rgb", "rgb_1")}
    plain = SimCLRAugmentConfig(crop=16, train=False)  # centre crop only: views comparable exactly
    v = make_views(batch, plain, "rgb", 2, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert torch.equal(v["x2"], v["x0"])
    assert torch.equal(v["x0"], batch["rgb"][..., 4:20, 8:24].float() / 255)
    assert torch.equal(v["x1"], batch["rgb_1"][..., 4:20, 8:24].float() / 255)
    assert torch.equal(v["x2s"], shuffle_segments(v["x2"], 2, perm=v["perm"])[0])
    # training views: own crop/colour per view, same shapes; the same seed gives the same views
    aug = SimCLRAugmentConfig(crop=16)
    v = make_views(batch, aug, "rgb", 2, torch.Generator().manual_seed(0), torch.device("cpu"))
    again = make_views(batch, aug, "rgb", 2, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert not torch.equal(v["x2"], v["x0"])
    assert all(torch.equal(v[k], again[k]) for k in v)
    assert v["x0"].shape == v["x1"].shape == v["x2s"].shape == (3, 3, 8, 16, 16)
    # residual frames as the clip view: view 1 = clip 1's residual, views 0 and 2 stay RGB
    pair = ClipDataset(
        index_data, 1, "train", ClipConfig(frames=8, stride=2, modalities=("rgb", "res"), clips_per_sample=2)
    )
    items = [pair[(i, clip_seed(0, 0, i))] for i in range(3)]
    batch = {k: torch.stack([s[k] for s in items]) for k in ("rgb", "rgb_1", "res", "res_1")}
    v = make_views(batch, plain, "res", 2, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert torch.equal(v["x1"], residual_input((batch["res_1"][..., 4:20, 8:24].float() - 128) / 127.5))
    assert torch.equal(v["x2"], v["x0"]) and torch.equal(v["x0"], batch["rgb"][..., 4:20, 8:24].float() / 255)


def test_simclr_augmentation_per_clip():
    x = torch.randint(0, 256, (6, 3, 4, 20, 20), dtype=torch.uint8)
    cfg = SimCLRAugmentConfig(crop=16, jitter_p=0.5, grayscale_p=0.5, blur_p=0.5)
    p = augment.sample_simclr_params(6, (20, 20), cfg, torch.Generator().manual_seed(1))
    out = augment.apply_simclr({"rgb": x}, p, cfg)["rgb"]
    geo = augment.apply({"rgb": x}, p.geometry, augment.simclr_geometry(cfg))["rgb"]
    untouched = (p.colour == 1).all(1) & (p.hue == 0) & ~p.grey & (p.sigma == 0)
    grey = p.grey & (p.sigma == 0)
    assert untouched.any() and grey.any() and (~untouched).any()
    assert torch.equal(out[untouched], geo[untouched])  # no coin came up: exactly the crop
    assert torch.allclose(out[grey][:, 0], out[grey][:, 1]) and torch.allclose(
        out[grey][:, 1], out[grey][:, 2]
    )
    assert out.min() >= 0 and out.max() <= 1
    # blur keeps a constant clip constant, and smooths noise
    flat = torch.full((1, 3, 2, 16, 16), 0.3)
    assert torch.allclose(augment.gaussian_blur(flat, torch.tensor([1.5]), 5), flat)
    noise = torch.rand(1, 3, 2, 16, 16)
    assert augment.gaussian_blur(noise, torch.tensor([1.5]), 5).std() < 0.6 * noise.std()


# ------------------------------------------------------------------------------------------------ network


def test_unpermuted_shuffle_gives_the_same_slots_through_the_net():
    torch.manual_seed(0)
    net = DualVarNet("r3d-tiny", DualVarConfig()).eval()
    x = torch.rand(3, 3, 8, 16, 16)
    identity = torch.arange(2).repeat(3, 1)
    shuffled, perm = shuffle_segments(x, 2, perm=identity)
    with torch.no_grad():
        z, slots = net(x)
        _, slots_s = net(shuffled)
    assert z.shape == (3, 128) and slots.shape == (3, 2, 64)  # heads read backbone.out_dim = 64
    assert torch.allclose(restore_order(slots_s, perm), slots, atol=1e-6)
    swapped, perm = shuffle_segments(x, 2, perm=identity.flip(1))
    with torch.no_grad():
        _, slots_w = net(swapped)
    assert not torch.allclose(restore_order(slots_w, perm), slots, atol=1e-3)  # the net sees time order


# ------------------------------------------------------------------------------------------------- config


def test_parse_options_and_configs():
    sections = parse_key_values(
        ["clip_loss=moco", "moco-k=32", "tau_clip=0.1", "blur_sigma=0.2,1", "allow_identity_shuffle=0"]
    )
    opts = {**sections["dualvar"], **sections["simclr"]}
    assert opts == {
        "clip_loss": "moco",
        "moco_k": 32,
        "tau_clip": 0.1,
        "blur_sigma": (0.2, 1.0),
        "allow_identity_shuffle": False,
    }
    cfg = build_config("dualvar-tiny", **sections)
    dv, aug = cfg.dualvar, cfg.simclr
    assert (dv.clip_loss, dv.moco_k, aug.blur_sigma, aug.crop, aug.flip) == ("moco", 32, (0.2, 1.0), 64, True)
    assert (
        TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    )  # typed options survive a checkpoint
    old = {**cfg.to_dict(), "dualvar": opts}  # checkpoints written before the options were typed: one dict
    del old["simclr"]
    assert TrainConfig.from_dict(old) == cfg
    with pytest.raises(ConfigError, match="need --method dualvar"):
        build_config("tiny", dualvar={"tau_clip": 0.1})
    paper = build_config("dualvar-r21d")
    assert (paper.model, paper.stride, paper.frames, paper.crop, paper.clips_per_sample) == (
        "r21d-10",
        4,
        16,
        112,
        2,
    )
    plain = build_config(method="dualvar")  # the method alone means DualVar's recipe
    assert (plain.view2, plain.stride, plain.flip) == ("rgb", 4, True) and "iic" not in plain.to_dict()
    assert build_config(method="dualvar", view2="res").modalities == ("rgb", "res")  # residual clip view
    assert build_config("tiny").clips_per_sample == 1
    for bad in (["tau_clip"], ["nope=1"], ["moco_k=many"]):
        with pytest.raises(ConfigError):
            parse_key_values(bad)


REFUSED = [
    (["--neg", "repeat"], "intra-negatives"),
    (["--K", "64"], "memory banks"),
    (["--live-negative"], "memory-bank"),
    (["--head", "mlp"], "own clip and series heads"),
    (["--positive", "live"], "memory-bank option"),
    (["--frames", "9"], "not divisible"),
    (["--dualvar", "theta=0"], "theta"),
    (["--dualvar", "blur_p=2"], "blur_p"),
    (["--dualvar", "tau=1"], "expected KEY=VALUE"),
]


@pytest.mark.parametrize("flags,words", REFUSED)
def test_refused_combinations_are_one_line_errors(tmp_path, flags, words):
    result = CliRunner().invoke(
        main,
        ["train", "--method", "dualvar", "--data", str(tmp_path), "--out", str(tmp_path / "run"), *flags],
    )
    assert result.exit_code == 2  # a refused combination of flags is a usage error
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and words in lines[0], result.output
    # IIC refuses DualVar options
    result = CliRunner().invoke(
        main, ["train", "--preset", "tiny", "--data", str(tmp_path), "--dualvar", "w_tc=2"]
    )
    assert result.exit_code == 2 and "need --method dualvar" in result.output


# --------------------------------------------------------------------------------------------- training

TINY = [
    "--frames",
    "8",
    "--stride",
    "2",
    "--crop",
    "32",
    "--batch-size",
    "4",
    "--workers",
    "0",
    "--device",
    "cpu",
    "--seed",
    "0",
]


def train_cli(data: Path, out: Path, *flags: str):
    result = CliRunner().invoke(
        main,
        ["train", "--preset", "dualvar-tiny", "--data", str(data), "--out", str(out), *TINY, *flags],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    return result


def epoch_losses(out: Path) -> list[float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["epoch_loss"] for r in rows if "epoch_loss" in r]


def fixed_batch_loss(net, state, cfg, draws: int = 4) -> float:
    """The DualVar loss of every training video at fixed times, averaged over ``draws`` fixed view draws."""
    from iic.model.methods.dualvar import dualvar_step

    ds = ClipDataset(
        cfg.data,
        1,
        "train",
        ClipConfig(frames=cfg.frames, stride=cfg.stride, modalities=("rgb",), clips_per_sample=2),
    )
    items = [ds[(i, clip_seed(123, 0, i))] for i in range(ds.n_videos)]
    batch = {k: torch.stack([s[k] for s in items]) for k in ("rgb", "rgb_1")}
    with torch.no_grad():
        return (
            sum(
                dualvar_step(
                    net.train(), state, batch, cfg, torch.Generator().manual_seed(g), torch.device("cpu")
                ).item()
                for g in range(draws)
            )
            / draws
        )


def test_short_cpu_run_lowers_the_loss(motion_data, tmp_path):
    """10 steps of `iic train --preset dualvar-tiny` (4 videos, batch 4). Measured with seed 0 (seeds 1, 2):
    epoch losses 6.36 -> mean of the last 3 5.00 (5.92 -> 5.21, 6.24 -> 5.50); the loss of a fixed batch
    and fixed views 6.35 -> 5.44 (5.72 -> 5.38, 5.68 -> 5.44)."""
    from iic.model import checkpoint
    from iic.model.config import TrainConfig
    from iic.model.methods.dualvar import build as build_dualvar

    train_cli(motion_data, tmp_path / "run", "--epochs", "10")
    losses = epoch_losses(tmp_path / "run")
    assert len(losses) == 10 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < losses[0] - 0.5, losses
    ckpt = checkpoint.load(tmp_path / "run" / "final.pt")
    cfg = TrainConfig.from_dict(ckpt["config"])
    torch.manual_seed(cfg.seed)
    initial, state, _ = build_dualvar(cfg, 4)  # the run's initialisation (same seed)
    trained, _, _ = build_dualvar(cfg, 4)
    trained.load_state_dict(ckpt["model"])
    before, after = fixed_batch_loss(initial, state, cfg), fixed_batch_loss(trained, state, cfg)
    assert after < before - 0.5, (before, after)


def test_resume_equals_uninterrupted_moco(motion_data, tmp_path, monkeypatch):
    """MoCo variant (key encoder + queues in the state module): 2 epochs == 1 epoch, stop, --resume."""
    from iic.model import checkpoint
    from iic.model.run import train as train_mod

    def cfg(out):
        return build_config(
            "dualvar-tiny",
            data=motion_data,
            out=out,
            frames=8,
            stride=2,
            crop=32,
            batch_size=4,
            workers=0,
            device="cpu",
            seed=0,
            epochs=2,
            dualvar={"clip_loss": "moco", "moco_k": 8, "moco_m": 0.9},
        )

    full = checkpoint.load(train_mod.train(cfg(tmp_path / "full")))

    real = train_mod.train_one_epoch

    def stop_after_first(run, *args):
        if run.epoch == 1:
            raise KeyboardInterrupt  # killed after the epoch-1 checkpoint
        return real(run, *args)

    monkeypatch.setattr(train_mod, "train_one_epoch", stop_after_first)
    with pytest.raises(KeyboardInterrupt):
        train_mod.train(cfg(tmp_path / "part"))
    monkeypatch.setattr(train_mod, "train_one_epoch", real)
    assert not (tmp_path / "part" / "final.pt").exists()
    resumed = checkpoint.load(train_mod.train(cfg(tmp_path / "part"), resume=True))
    assert resumed["epoch"] == 2 and resumed["step"] == full["step"] == 2
    assert any(k.startswith("key_net.") for k in full["memory"]) and "clip_queue.queue" in full["memory"]
    for part in ("model", "memory"):
        assert full[part].keys() == resumed[part].keys()
        for k, v in full[part].items():
            assert torch.equal(v, resumed[part][k]), (part, k)
    assert int(full["memory"]["clip_queue.ptr"]) == (2 * 4) % 8


@pytest.mark.slow
@pytest.mark.parametrize(
    "variant", [[], ["--dualvar", "clip_loss=moco", "--dualvar", "moco_k=8"]], ids=["simclr", "moco"]
)
def test_ddp_two_processes_gloo(motion_data, tmp_path, variant):
    """torchrun, 2 CPU ranks: NT-Xent negatives gathered across ranks; MoCo key encoder and queues stay equal
    on both ranks (the loop checks the state buffers after training)."""
    import os
    import shutil
    import subprocess
    import sys

    from iic.model import checkpoint

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    iic = shutil.which("iic", path=str(Path(sys.executable).parent))
    out = tmp_path / "ddp"
    cmd = [
        torchrun,
        "--standalone",
        "--nproc_per_node",
        "2",
        iic,
        "train",
        "--preset",
        "dualvar-tiny",
        "--data",
        str(motion_data),
        "--out",
        str(out),
        "--epochs",
        "2",
        *TINY[:-4],
        "--batch-size",
        "2",
        *variant,
    ]
    r = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "world 2" in r.stderr
    ckpt = checkpoint.load(out / "final.pt")
    assert ckpt["epoch"] == 2 and ckpt["step"] == 2 * (4 // (2 * 2))
