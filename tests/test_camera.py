"""Camera motion: the synthetic cameras (pipeline/synth.py), the estimate (pipeline/camera.py, `iic-prep
camera`), the residual with the camera's motion removed (the ``res-aligned`` view: the reader's picture and
the device's model/data/align.py), its reading and refusals, and the command line."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import error_lines, jpeg_roundtrip, run_prep

from iic.cli import main
from iic.model.config import ConfigError, build_config, modalities_for, view1_of
from iic.model.data import augment
from iic.model.data.align import (
    SMALLEST_WINDOW,
    _inside,
    aligned_residual,
    map_pixels,
    place_window,
    stabilised,
    stable_maps,
)
from iic.model.data.clips import ClipConfig, ClipDataset, DataError
from iic.model.data.clips import camera_path as camera_path_of_clip
from iic.model.data.views import camera_flow, view_input
from iic.pipeline import camera as camera_stage
from iic.pipeline.camera import video_motion
from iic.pipeline.format import ALIGNED_DEAD_ZONE, FormatError, dequantize_residual
from iic.pipeline.format import camera_flow as camera_flow_np
from iic.pipeline.reader import VideoStore
from iic.pipeline.synth import CAMERAS, SynthConfig, camera_path, make_background, render_video

SMALL = ["--classes", "2", "--per-class", "3", "--frames", "12", "--size", "48x64"]


def homogeneous(a: np.ndarray) -> np.ndarray:
    """(..., 2, 3) -> (..., 3, 3)."""
    bottom = np.broadcast_to(np.array([0.0, 0.0, 1.0]), (*a.shape[:-2], 1, 3))
    return np.concatenate([a, bottom], axis=-2)


def steps(path: np.ndarray) -> np.ndarray:
    """(T, 2, 3) motion from frame t-1 to frame t of a camera path (`camera_path`); entry 0 the identity."""
    h = homogeneous(path)
    out = np.tile(np.eye(2, 3), (len(path), 1, 1))
    out[1:] = (h[1:] @ np.linalg.inv(h[:-1]))[:, :2]
    return out


def corner_error(a: np.ndarray, b: np.ndarray, height: int, width: int) -> np.ndarray:
    """Mean distance (px) between where two (T, 2, 3) motions carry the four corners and the centre."""
    pts = np.array(
        [[0, 0], [width - 1, 0], [0, height - 1], [width - 1, height - 1], [width / 2, height / 2]]
    )
    pa = pts @ a[:, :, :2].transpose(0, 2, 1) + a[:, None, :, 2]
    pb = pts @ b[:, :, :2].transpose(0, 2, 1) + b[:, None, :, 2]
    return np.linalg.norm(pa - pb, axis=-1).mean(-1)


# --------------------------------------------------------------------------------------- the synthetic camera

# SHA-256 of render_video's frames before cameras existed (default config, 12 frames), made with OpenCV 5.1.0
# and numpy 2.4: the still camera must reproduce them byte for byte.
STILL = {
    ("MoveLeft", 1, 1): "4ee6ffaafc46cbdcbdfd496390db0f55ecc4d64f12c1c4360169e168a0e520bd",
    ("ZoomOut", 7, 2): "6d28b349473b03c96d3d24d4a4b4871f93dae317887bf71b43be52d1731706f4",
    ("RotateClockwise", 3, 1): "56f19b9df293e8aef505f1f143178a1a5690198035d52cb9940a5dbca988f4c5",
}


def test_the_still_camera_is_the_generator_without_a_camera(tmp_path: Path) -> None:
    cfg = SynthConfig(out=tmp_path, frames=12)
    assert cfg.camera == "still" and "camera" not in cfg.to_dict()  # the dataset marker as it always was
    assert SynthConfig(out=tmp_path, camera="pan").to_dict()["camera"] == "pan"
    assert np.array_equal(camera_path(cfg, 3, 1), np.tile(np.eye(2, 3), (12, 1, 1)))
    if (cv2.__version__, np.__version__.split(".")[0]) != ("5.1.0", "2"):
        pytest.skip(
            f"digests recorded with OpenCV 5.1.0 and numpy 2 (here {cv2.__version__}, {np.__version__})"
        )
    for (name, group, clip), digest in STILL.items():
        assert hashlib.sha256(render_video(cfg, name, group, clip).tobytes()).hexdigest() == digest


@pytest.mark.parametrize("camera", CAMERAS[1:])
def test_camera_laws_move_the_scene_by_the_documented_amounts(camera: str, tmp_path: Path) -> None:
    """Each law as the module docstring states it, in px at 96x128 and twice that at 192x256."""
    for scale, (height, width) in ((1, (96, 128)), (2, (192, 256))):
        cfg = SynthConfig(out=tmp_path, camera=camera, frames=40, height=height, width=width)
        centre = np.array([(width - 1) / 2, (height - 1) / 2])
        for group, clip in ((1, 1), (2, 1), (5, 3), (9, 2)):
            path = camera_path(cfg, group, clip)
            step = steps(path)[1:]
            linear, shift = path[:, :, :2], path[:, :, 2]
            turn = np.degrees(np.arctan2(step[:, 1, 0], step[:, 0, 0]))
            log_scale = np.log(np.sqrt(np.abs(np.linalg.det(step[:, :, :2]))))
            if camera == "shake":  # a fresh offset in [0, 4]^2 px every frame, no turn, no zoom
                assert np.allclose(linear, np.eye(2)) and shift.min() >= 0 and shift.max() <= 4 * scale
                assert np.abs(np.diff(shift, axis=0)).max() > 2 * scale  # it jumps
            elif camera == "pan":  # a constant drift of 1-2 px a frame
                assert np.allclose(linear, np.eye(2)) and np.allclose(step[:, :, 2], step[0, :, 2])
                assert 1 * scale <= np.linalg.norm(step[0, :, 2]) <= 2 * scale
            elif camera in ("zoom", "rotate"):  # a constant rate about the centre, either way
                fixed = step[:, :, :2] @ centre + step[:, :, 2]
                assert np.allclose(fixed, centre)
                rate = log_scale if camera == "zoom" else turn
                other = turn if camera == "zoom" else log_scale
                low, high = (0.004, 0.01) if camera == "zoom" else (0.4, 1.2)
                assert np.allclose(rate, rate[0]) and low <= abs(rate[0]) <= high and np.allclose(other, 0)
            else:  # handheld: all at once, gently
                assert np.abs(turn).max() <= 0.3 + 2 * 0.2 + 1e-9 and np.abs(log_scale).max() <= 0.003 + 1e-9
                assert np.abs(step[:, :, 2] - (step[:, :, :2] - np.eye(2)) @ -centre).max() <= (1 + 2) * scale
            if camera in ("pan", "zoom", "rotate"):  # centred: the middle frame is the still camera's view
                assert np.allclose(
                    path[(len(path) - 1) // 2 : len(path) // 2 + 1].mean(0), np.eye(2, 3), atol=0.1
                )


@pytest.mark.parametrize("camera", ["shake", "pan", "zoom", "rotate", "handheld"])
def test_the_estimate_finds_the_camera_motion_of_every_class(camera: str, tmp_path: Path) -> None:
    """Rendered and JPEG-coded videos of three classes filmed along one path: the background moves by the
    path in every class, and the estimate finds it within 0.2 px on average, 0.5 px at worst (measured:
    0.02-0.07 / 0.2; BENCHMARKS.md, "Camera motion")."""
    cfg = SynthConfig(out=tmp_path, camera=camera, frames=10)
    truth = steps(camera_path(cfg, 4, 1))
    for name in ("MoveLeft", "RotateClockwise", "ZoomIn"):
        motion, lost = video_motion(jpeg_roundtrip(render_video(cfg, name, 4, 1)))
        assert lost == 0 and np.array_equal(motion[0], np.eye(2, 3))
        error = corner_error(motion[1:].astype(np.float64), truth[1:], cfg.height, cfg.width)
        assert error.mean() < 0.2 and error.max() < 0.5, (name, error)
    still, _ = video_motion(
        jpeg_roundtrip(render_video(SynthConfig(out=tmp_path, frames=10), "MoveUp", 4, 1))
    )
    assert corner_error(still.astype(np.float64), np.tile(np.eye(2, 3), (10, 1, 1)), 96, 128).max() < 0.1


# --------------------------------------------------------------------------------------- the aligned residual


def translated(frames: int, height: int, width: int, shifts: np.ndarray, square: int = 0) -> np.ndarray:
    """(T, H, W, 3) uint8: a textured background seen through a camera shifted by ``shifts`` (T, 2) px
    (sub-pixel), so frame t = frame t-1 moved by shifts[t] - shifts[t-1]; ``square`` > 0: a red 10 px square
    crosses the scene that many px a frame, left to right, near the middle (0: no objects)."""
    canvas = make_background(np.random.default_rng(3), height + 40, width + 40)
    out = []
    for t, (dx, dy) in enumerate(shifts):
        scene = canvas.copy()
        if square:
            x = 20 + width // 2 - 5 + square * (t - frames // 2)
            scene[20 + height // 2 - 5 : 20 + height // 2 + 5, x : x + 10] = (250, 30, 30)
        m = np.array([[1.0, 0.0, dx - 20], [0.0, 1.0, dy - 20]])
        out.append(cv2.warpAffine(scene, m, (width, height), flags=cv2.INTER_CUBIC))
    return np.clip(np.rint(np.stack(out)), 0, 255).astype(np.uint8)


def test_a_pure_camera_translation_leaves_no_aligned_residual_away_from_the_borders() -> None:
    T, H, W = 8, 48, 64
    shifts = np.cumsum(np.random.default_rng(0).uniform(-3, 3, (T, 2)), axis=0)
    video = translated(T, H, W, shifts)
    motion = np.tile(np.eye(2, 3), (T, 1, 1))
    motion[1:, :, 2] = np.diff(shifts, axis=0)
    rgb = torch.from_numpy(video).permute(3, 0, 1, 2)[None]  # (1, 3, T, H, W)
    prev = rgb[:, :, np.maximum(np.arange(T) - 1, 0)]
    crop, border = 32, 8
    offsets = torch.tensor([[border, border]])
    res = aligned_residual(
        rgb,
        prev,
        torch.from_numpy(motion)[None],
        offsets,
        torch.tensor([False]),
        torch.tensor([[H, W]]),
        crop,
    )
    plain = (rgb - prev.int())[..., border : border + crop, border : border + crop] / 255.0
    aligned_levels = 255 * res[:, :, 1:].abs().mean()
    plain_levels = 255 * plain[:, :, 1:].abs().mean()
    assert aligned_levels < 1.0 and plain_levels > 5.0, (aligned_levels, plain_levels)  # 0.3 and 7.4
    assert res[:, :, 0].abs().max() < 1e-6  # frame 0: its own previous frame, the identity (float rounding)
    flipped = aligned_residual(
        rgb, prev, torch.from_numpy(motion)[None], offsets, torch.tensor([True]), torch.tensor([[H, W]]), crop
    )
    assert torch.equal(flipped, res.flip(-1))


@pytest.mark.parametrize("camera", ["shake", "pan"])
def test_the_dead_zone_removes_the_background_left_by_the_warp_and_keeps_the_objects(camera: str) -> None:
    """Shaking and panning synthetic videos (JPEG q90 as stored), warped by the true camera motion: what is
    left of the textured background is a faint image of it, which the dead zone removes; the moving objects
    keep most of their residual. With a still camera the dead zone changes nothing measurable."""
    cfg = SynthConfig(out=Path("."), camera=camera, frames=8)
    still = SynthConfig(out=Path("."), frames=8)
    H, W = cfg.height, cfg.width
    background, objects, kept = [], [], []
    for group in (2, 5):
        name = "MoveLeft"
        video = jpeg_roundtrip(render_video(cfg, name, group, 1))
        plain = render_video(still, name, group, 1).astype(np.int16)
        path = camera_path(cfg, group, 1)
        rgb = torch.from_numpy(video).permute(3, 0, 1, 2)[None]
        prev = rgb[:, :, np.maximum(np.arange(len(video)) - 1, 0)]
        args = (rgb, prev, torch.from_numpy(steps(path))[None].float(), torch.tensor([[0, 0]]))
        args += (torch.tensor([False]), torch.tensor([[H, W]]), H)
        cored = 255 * aligned_residual(*args).abs().amax(1)[0, 1:].numpy()  # (T-1, H, H)
        raw = 255 * aligned_residual(*args, factor=0).abs().amax(1)[0, 1:].numpy()
        for t in range(1, len(video)):  # the objects in frame t: where the still video changes, moved by A_t
            change = (np.abs(plain[t] - plain[t - 1]).max(-1) > 8).astype(np.uint8)
            mask = cv2.warpAffine(cv2.dilate(change, np.ones((5, 5), np.uint8)), path[t], (W, H)) > 0
            inner = np.zeros((H, W), bool)
            inner[8:-8, 8:-8] = True
            bg, fg = (inner & ~mask)[:, :H], (inner & mask)[:, :H]
            background.append((raw[t - 1][bg].mean(), cored[t - 1][bg].mean()))
            objects.append((raw[t - 1][fg].mean(), cored[t - 1][fg].mean()))
        filmed_still = torch.from_numpy(jpeg_roundtrip(render_video(still, name, group, 1))).permute(
            3, 0, 1, 2
        )
        still_args = (filmed_still[None], filmed_still[None, :, np.maximum(np.arange(len(video)) - 1, 0)])
        still_args += (torch.eye(2, 3).repeat(1, len(video), 1, 1), *args[3:])
        # the median change of a still frame is float rounding (~1e-5 grey levels): nothing else is removed
        kept.append(
            torch.allclose(aligned_residual(*still_args), aligned_residual(*still_args, factor=0), atol=1e-6)
        )
    (bg_raw, bg_cored), (fg_raw, fg_cored) = np.mean(background, 0), np.mean(objects, 0)
    # measured (grey levels, max over channels): background 2.8-3.0 -> 0.01-0.03, objects 30.2 -> 27.4-27.6
    assert bg_raw > 1.0 and bg_cored < 0.2, (bg_raw, bg_cored)
    assert fg_cored > 0.6 * fg_raw and fg_cored > 20 * bg_cored, (fg_raw, fg_cored, bg_cored)
    assert all(kept)


def test_a_clip_stabilised_along_the_camera_s_path_is_still_and_its_residual_empty() -> None:
    """A textured background seen through a camera shifted at random every frame (no objects): resampled into
    the middle frame's view along the true path, the clip stands still away from the borders, its frames are
    the middle frame's, and ``res-stable`` is empty; the plain clip moves."""
    T, H, W, crop, border = 8, 48, 64, 32, 8
    shifts = np.cumsum(np.random.default_rng(1).uniform(-3, 3, (T, 2)), axis=0)
    video = translated(T, H, W, shifts)
    motion = np.tile(np.eye(2, 3), (T, 1, 1))
    motion[1:, :, 2] = np.diff(shifts, axis=0)
    rgb = torch.from_numpy(video).permute(3, 0, 1, 2)[None]
    prev = rgb[:, :, np.maximum(np.arange(T) - 1, 0)]
    path = torch.from_numpy(camera_path_of_clip(motion.astype(np.float32), np.arange(T)))[None]
    window = (torch.tensor([[border, border]]), torch.tensor([False]), torch.tensor([[H, W]]), crop)
    still, res = stabilised(rgb, prev, torch.from_numpy(motion)[None], path, *window)
    maps = stable_maps(torch.from_numpy(motion)[None], path)[1]
    top, left = place_window(maps, window[0], window[2], crop)[0][0].tolist()
    inner = (slice(None), slice(None), slice(None), slice(6, -6), slice(6, -6))
    moving = 255 * (rgb[..., top : top + crop, left : left + crop] / 255.0).diff(dim=2)[inner].abs()
    steady = 255 * still.diff(dim=2)[inner].abs()
    assert moving.mean() > 5.0 and steady.mean() < 1.5, (moving.mean(), steady.mean())
    middle = rgb[0, :, T // 2, top : top + crop, left : left + crop].float() / 255.0
    assert (still[0, :, T // 2] - middle).abs().max() < 1e-4  # the middle frame is its own view
    assert 255 * res[:, :, 1:].abs().mean() < 0.5


def test_the_stabilised_clip_s_background_stands_still_and_what_moves_keeps_its_pixels() -> None:
    """Resampled along the camera's path, every stabilised frame is blurred by its own sub-pixel offset, so a
    textured background flickers by a few grey levels from frame to frame; a repeated-frame intra-negative
    does not, and would be told from the clip by that alone. ``rgb-stable`` holds the background to the
    middle frame's pixels; the crossing square keeps every frame's own. A still camera's clip is unchanged."""
    T, H, W, crop = 8, 48, 64, 32
    shifts = np.cumsum(np.random.default_rng(5).uniform(-2.5, 2.5, (T, 2)), axis=0)
    rgb = torch.from_numpy(jpeg_roundtrip(translated(T, H, W, shifts, square=3))).permute(3, 0, 1, 2)[None]
    prev = rgb[:, :, np.maximum(np.arange(T) - 1, 0)]
    motion = np.tile(np.eye(2, 3), (T, 1, 1))
    motion[1:, :, 2] = np.diff(shifts, axis=0)
    path = torch.from_numpy(camera_path_of_clip(motion.astype(np.float32), np.arange(T)))[None]
    window = (torch.tensor([[8, 16]]), torch.tensor([False]), torch.tensor([[H, W]]), crop)
    held, _ = stabilised(rgb, prev, torch.from_numpy(motion)[None], path, *window)
    plain, _ = stabilised(rgb, prev, torch.from_numpy(motion)[None], path, *window, factor=0)
    held, plain = 255 * held[0], 255 * plain[0]  # (3, T, crop, crop)
    red = (plain[0] > 150) & (plain[1] < 100)  # (T, crop, crop): the square where it is in each frame
    assert all(int(red[t].sum()) > 40 for t in range(T)), red.sum((1, 2))  # in the window in every frame
    grown = functools.partial(torch.nn.functional.max_pool2d, kernel_size=7, stride=1, padding=3)
    near = grown((red | red[T // 2]).float()).bool()  # the square now and in the middle frame, and its rim
    background = torch.zeros_like(near)
    background[:, 3:-3, 3:-3] = ~near[:, 3:-3, 3:-3]  # away from the window's edges
    flicker = (plain - plain[:, T // 2 : T // 2 + 1]).abs().amax(0)[background]
    steady = (held - held[:, T // 2 : T // 2 + 1]).abs().amax(0)[background]
    assert flicker.mean() > 1.0 and steady.mean() < 0.05, (flicker.mean(), steady.mean())  # measured 2.8, 0.0
    # where the square is now and was not in the middle frame, every frame keeps its own pixels
    moved = red & ~grown(red[T // 2 : T // 2 + 1].float()).bool()
    assert int(moved.sum()) > 20 * (T - 2) and torch.equal(held[:, moved], plain[:, moved])

    calm = torch.from_numpy(translated(T, H, W, np.zeros((T, 2)), square=3)).permute(3, 0, 1, 2)[None]
    identity = torch.from_numpy(np.tile(np.eye(2, 3), (1, T, 1, 1)))
    filmed = [
        stabilised(calm, calm[:, :, np.maximum(np.arange(T) - 1, 0)], identity, identity, *window, factor=f)
        for f in (ALIGNED_DEAD_ZONE, 0)
    ]
    assert torch.equal(filmed[0][0], filmed[1][0])


def _panned(T: int, speed: tuple[float, float]) -> torch.Tensor:
    """(1, T, 2, 3): a camera path from the middle frame drifting ``speed`` (x, y) px a frame."""
    path = np.tile(np.eye(2, 3), (T, 1, 1))
    path[:, :, 2] = (np.arange(T) - T // 2)[:, None] * np.asarray(speed)
    return torch.from_numpy(path)[None]


def test_a_stabilised_window_stays_where_every_frame_of_the_clip_filmed() -> None:
    """Panning 1.5 px a frame to the right and 1 px down over 16 frames: the frames at the clip's ends see the
    middle frame's window up to 12 px away. The window is moved so that all of them see it inside the frame
    (no invented border in either view); a centre crop stays in the middle of what is allowed, random crops
    cover all of it, and a still camera keeps the drawn window."""
    T, H, W, crop = 16, 48, 64, 24
    path = _panned(T, (1.5, 1.0))
    hw = torch.tensor([[H, W]])
    low = path[0, :, :, 2].amin(0).neg()  # (x, y) the window must keep from the left/top edge
    high = torch.tensor([W - crop, H - crop]) - path[0, :, :, 2].amax(0)
    allowed = [(int(t), int(x)) for t in range(H - crop + 1) for x in range(W - crop + 1)]
    allowed = [(t, x) for t, x in allowed if low[1] <= t <= high[1] and low[0] <= x <= high[0]]
    tops, lefts = zip(*allowed, strict=True)
    centre, side = place_window(path, torch.tensor([[(H - crop) // 2, (W - crop) // 2]]), hw, crop)
    assert centre[0].tolist() == [round((min(tops) + max(tops)) / 2), round((min(lefts) + max(lefts)) / 2)]
    assert side.tolist() == [crop]
    drawn = torch.stack(torch.meshgrid(torch.arange(H - crop + 1), torch.arange(W - crop + 1), indexing="ij"))
    drawn = drawn.flatten(1).T  # every window of the frame
    placed, _ = place_window(path.expand(len(drawn), -1, -1, -1), drawn, hw.expand(len(drawn), 2), crop)
    assert {tuple(p) for p in placed.tolist()} == set(allowed)
    for source in (path, _panned(T, (-1.5, 0.5))):
        offsets, sides = place_window(source, torch.tensor([[0, 0]]), hw, crop)
        assert _inside(map_pixels(source, offsets, crop, sides), hw).all()
        assert not _inside(map_pixels(source, torch.tensor([[0, 0]]), crop), hw).all()
    still = torch.eye(2, 3, dtype=torch.float64).expand(3, T, 2, 3)
    assert place_window(still, drawn[:3], hw.expand(3, 2), crop)[0].tolist() == drawn[:3].tolist()
    # a batch of two frame sizes places each sample as it would be placed alone
    sizes, starts = torch.tensor([[H, W], [40, 44]]), torch.tensor([[5, 20], [8, 10]])
    both = place_window(torch.cat([path, path]), starts, sizes, crop)
    alone = [place_window(path, starts[i : i + 1], sizes[i : i + 1], crop) for i in range(2)]
    # (44 px wide, the path spans x - 12 .. x + 10.5: a window of 21 px fits, 24 does not)
    assert both[0].tolist() == [a[0][0].tolist() for a in alone] and both[1].tolist() == [crop, 21]


def test_a_window_the_camera_leaves_shrinks_to_fit_as_a_stabiliser_zooms_in() -> None:
    """A textured scene panned 2.5 px a frame along x over 16 frames (20 px back, 17.5 on) in a 48x64 frame:
    no 32 px window fits (64 - 37.5 = 26.5 px are filmed by every frame), so the largest that fits, 26 px, is
    resampled to 32: the stabilised clip stands still up to its edges. Faster still, below `SMALLEST_WINDOW`
    of the crop, the smallest window that leaves the frame least is used."""
    T, H, W, crop = 16, 48, 64, 32
    hw = torch.tensor([[H, W]])
    shifts = np.stack([2.5 * np.arange(T), np.zeros(T)], axis=1)
    motion = np.tile(np.eye(2, 3), (T, 1, 1))
    motion[1:, :, 2] = np.diff(shifts, axis=0)
    path = torch.from_numpy(camera_path_of_clip(motion.astype(np.float32), np.arange(T)))[None]
    offsets, sides = place_window(path, torch.tensor([[8, 16]]), hw, crop)
    assert sides.tolist() == [26] and offsets[0, 1] == 20
    assert _inside(map_pixels(path, offsets, crop, sides), hw).all()
    rgb = torch.from_numpy(translated(T, H, W, shifts)).permute(3, 0, 1, 2)[None]
    prev = rgb[:, :, np.maximum(np.arange(T) - 1, 0)]
    window = (torch.tensor([[8, 16]]), torch.tensor([False]), hw, crop)
    still, _ = stabilised(rgb, prev, torch.from_numpy(motion)[None], path, *window)
    edges = 255 * still.diff(dim=2)[..., :, [0, 1, -2, -1]].abs()  # the window's outer columns
    assert edges.mean() < 1.5, edges.mean()
    fast = path.clone()
    fast[..., 2] *= 2  # 40 px back, 35 on
    offsets, sides = place_window(fast, torch.tensor([[0, 0]]), hw, crop)
    assert sides.tolist() == [math.ceil(SMALLEST_WINDOW * crop)]
    assert offsets[0, 1] == (40 + (W - sides[0] - 35)) // 2  # as far out on either side


def test_the_loader_s_camera_path_composes_the_stored_motion_for_strided_and_looping_clips() -> None:
    rng = np.random.default_rng(0)
    motion = np.tile(np.eye(2, 3), (12, 1, 1))
    motion[1:, :, :2] += rng.uniform(-0.02, 0.02, (11, 2, 2))
    motion[1:, :, 2] = rng.uniform(-3, 3, (11, 2))
    to_frame = [np.eye(3)]
    for k in range(1, 12):
        to_frame.append(homogeneous(motion[k]) @ to_frame[-1])
    for frames in (np.arange(2, 10), np.arange(0, 12, 3), np.array([8, 9, 10, 11, 0, 1, 2, 3])):
        path = camera_path_of_clip(motion.astype(np.float32), frames)
        middle = np.linalg.inv(to_frame[frames[len(frames) // 2]])
        expected = np.stack([(to_frame[f] @ middle)[:2] for f in frames])
        assert np.allclose(path, expected, atol=1e-4), frames
        assert np.allclose(path[len(frames) // 2], np.eye(2, 3), atol=1e-6)


def test_where_the_warped_frame_has_no_pixel_the_residual_is_zero() -> None:
    """A shift of 10 px to the right: the first 10 columns of frame t come from outside frame t-1."""
    T, H, W = 2, 16, 24
    rgb = torch.randint(0, 256, (1, 3, T, H, W), dtype=torch.uint8)
    motion = torch.eye(2, 3).repeat(1, T, 1, 1)
    motion[0, 1, 0, 2] = 10.0
    res = aligned_residual(
        rgb, rgb, motion, torch.tensor([[0, 0]]), torch.tensor([False]), torch.tensor([[H, W]]), H
    )
    assert res[0, :, 1, :, :10].abs().max() == 0 and res[0, :, 1, :, 10:].abs().max() > 0


# ------------------------------------------------------------------------------------------ stored estimates


@pytest.fixture(scope="module")
def shaking(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small shaking-camera synthetic dataset, extracted at 48x64, with its camera motion estimated."""
    root = tmp_path_factory.mktemp("shaking")
    assert run_prep("synth", "--out", root / "raw", "--camera", "shake", *SMALL).exit_code == 0
    extracted = run_prep(
        "extract", "--root", root / "raw", "--out", root / "data", "--size", "48x64", "--workers", "1"
    )
    assert extracted.exit_code == 0, extracted.output
    data = root / "data" / "ucf101"
    estimated = run_prep("camera", "--data", data, "--workers", "1")
    assert estimated.exit_code == 0, estimated.output
    assert estimated.stdout.startswith("videos: 6 (6 ok, 0 failed)   frames: 72   shards: 1 written, 0 kept")
    return data


def test_the_stored_estimate_is_the_stage_s_and_the_loader_ships_it_with_the_previous_frames(
    shaking: Path,
) -> None:
    store = VideoStore(shaking)
    video = store.ok_rows(1, "train")[0].id
    motion = store.camera(video)
    assert motion.shape == (12, 2, 3) and motion.dtype == np.float32
    assert np.array_equal(motion, video_motion(store.frames(video))[0])  # the stored frames' estimate
    assert np.array_equal(store.camera(video, 3, 4), motion[3:7])
    ds = ClipDataset(shaking, 1, "train", ClipConfig(frames=8, modalities=modalities_for(["res-aligned"])))
    assert ds.cfg.modalities == ("rgb", "camera")
    index = ds.video_ids.index(video)
    for start in (3, 0):
        s = ds.sample(index, start)
        frames = store.frames(video)
        assert np.array_equal(s["rgb"].permute(1, 2, 3, 0).numpy(), frames[start : start + 8])
        before = np.maximum(np.arange(start, start + 8) - 1, 0)
        assert np.array_equal(s["prev"].permute(1, 2, 3, 0).numpy(), frames[before])
        assert torch.equal(s["camera"], torch.from_numpy(motion[start : start + 8]))


def test_the_device_residual_is_the_readers_picture_and_removes_the_shake(shaking: Path) -> None:
    store = VideoStore(shaking)
    video = store.ok_rows(1, "test")[0].id
    ds = ClipDataset(
        shaking, 1, "test", ClipConfig(frames=8, modalities=("rgb", "camera"), test_clips=1), "test"
    )
    batch = ds[ds.video_ids.index(video)]
    start = 2  # the centre clip of 12 frames
    cfg = augment.AugmentConfig(crop=48, train=False)
    views = {k: v[None] for k, v in augment.clips_of(batch, ("rgb", "camera")).items()}
    params = augment.sample_params(1, (48, 64), cfg)
    device = augment.apply(views, params, cfg)["res-aligned"][0]  # (3, T, 48, 48), columns 8..55
    reader = dequantize_residual(store.aligned_residuals(video, start, 8))[:, :, 8:56]  # (T, 48, 48, 3)
    diff = np.abs(255 * device.permute(1, 2, 3, 0).numpy() - reader)[1:, 2:-2, 2:-2]  # away from the borders
    assert diff.mean() < 1.0 and np.percentile(diff, 99) < 4.0, (diff.mean(), np.percentile(diff, 99))
    plain = np.abs(dequantize_residual(store.residuals(video, start + 1, 7))).mean()
    # the shaking background cancels; what is left is the objects' motion and the codecs' noise (measured on
    # these videos: 0.51-0.62 of the plain residual)
    assert np.abs(reader[1:]).mean() < 0.75 * plain


def test_data_without_the_estimate_is_refused_naming_the_command(tmp_path: Path) -> None:
    assert run_prep("synth", "--out", tmp_path / "raw", *SMALL).exit_code == 0
    run_prep(
        "extract", "--root", tmp_path / "raw", "--out", tmp_path / "data", "--size", "48x64", "--workers", "1"
    )
    data = tmp_path / "data" / "ucf101"
    wanted = f"run `iic-prep camera --data {data}`"
    with pytest.raises(DataError, match=f"^no camera motion estimate in {data}: {wanted}"):
        ClipDataset(data, 1, "train", ClipConfig(modalities=("rgb", "camera")))
    with pytest.raises(FormatError, match="no camera motion estimate: run `iic-prep camera"):
        VideoStore(data).camera(VideoStore(data).ok_rows()[0].id)
    r = CliRunner().invoke(
        main,
        [
            "train",
            "--preset",
            "tiny-aligned",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "run"),
            "--workers",
            "0",
        ],
    )
    assert r.exit_code == 1 and len(error_lines(r.stderr)) == 1 and wanted in r.stderr, r.output
    # frames re-extracted since the estimate (another size, the same frame counts): refused, not misread
    assert run_prep("camera", "--data", data, "--workers", "1").exit_code == 0
    run_prep(
        "extract",
        "--root",
        tmp_path / "raw",
        "--out",
        tmp_path / "data",
        "--size",
        "32x48",
        "--overwrite",
        "--workers",
        "1",
    )
    with pytest.raises(
        FormatError, match=r"was estimated from other frames \(re-extracted since\): run `iic-prep"
    ):
        VideoStore(data).camera(VideoStore(data).ok_rows()[0].id)
    again = run_prep("camera", "--data", data, "--workers", "1")
    assert again.exit_code == 0 and "shards: 1 written, 0 kept" in again.stdout
    assert VideoStore(data).camera(VideoStore(data).ok_rows()[0].id).shape == (12, 2, 3)


def test_the_camera_stage_resumes_and_refuses_other_settings(shaking: Path, monkeypatch) -> None:
    identity = VideoStore(shaking).camera_identity()  # what res-aligned feature caches key on
    kept = run_prep("camera", "--data", shaking, "--workers", "1")
    assert kept.exit_code == 0 and "shards: 0 written, 1 kept" in kept.stdout
    assert VideoStore(shaking).camera_identity() == identity
    monkeypatch.setattr(camera_stage, "GRID", 10)
    refused = run_prep("camera", "--data", shaking)
    assert refused.exit_code == 1
    assert error_lines(refused.stderr) == [
        f"Error: {shaking / 'camera'} was estimated with params {{'grid': 12, 'window': 9, 'levels': 2, "
        "'fb_px': 0.5, 'ransac_px': 0.5, 'min_inliers': 0.1}, asked {'grid': 10, 'window': 9, 'levels': 2, "
        "'fb_px': 0.5, 'ransac_px': 0.5, 'min_inliers': 0.1}: pass --overwrite to estimate it again"
    ]
    other = run_prep("camera", "--data", shaking, "--workers", "1", "--overwrite")
    assert other.exit_code == 0 and VideoStore(shaking).camera_identity() != identity
    monkeypatch.setattr(camera_stage, "GRID", 12)
    redone = run_prep("camera", "--data", shaking, "--workers", "1", "--overwrite")
    assert redone.exit_code == 0 and "shards: 1 written, 0 kept" in redone.stdout
    settings = json.loads((shaking / "camera" / "camera.json").read_text())["settings"]
    assert settings["method"] == "lk-grid-similarity" and settings["source"] == "stored frames"


# ------------------------------------------------------------------------------------------ command line


def test_synth_records_its_camera_and_show_draws_the_aligned_row(
    shaking: Path, tmp_path: Path, figures
) -> None:
    assert json.loads((shaking.parent.parent / "raw" / "synth_config.json").read_text())["camera"] == "shake"
    video = VideoStore(shaking).ok_rows()[0].id
    r = run_prep("show", "--data", shaking, "--video", video, "--out", tmp_path / "v.png", "--columns", "4")
    assert r.exit_code == 0, r.output
    assert figures[-1]["rows"] == ["RGB", "residual", "res-aligned"]


@pytest.mark.parametrize("preset, view2", [("tiny-aligned", "res-aligned"), ("tiny-stable", "res-stable")])
def test_train_and_evaluate_with_a_camera_view(
    shaking: Path, tmp_path: Path, preset: str, view2: str
) -> None:
    """A run of each camera preset trains, and is retrieved on its own view 2 by default."""
    run = tmp_path / "run"
    args = ["--data", str(shaking), "--out", str(run), "--epochs", "1", "--batch-size", "2", "--workers", "0"]
    args += ["--crop", "32", "--frames", "8"]
    r = CliRunner().invoke(main, ["train", "--preset", preset, *args, "--threads", "1"])
    assert r.exit_code == 0, r.output
    assert json.loads((run / "config.json").read_text())["view2"] == view2
    e = CliRunner().invoke(
        main, ["eval", "retrieval", "--ckpt", str(run / "final.pt"), "--workers", "0", "--json"]
    )
    assert e.exit_code == 0, e.output
    result = json.loads(e.stdout)
    assert result["config"]["modality"] == view2 and result["counts"]["queries"] == 2


def test_train_and_evaluate_with_the_flow_after_the_camera_s_motion(shaking: Path, tmp_path: Path) -> None:
    """--view2 flow-u-aligned needs the flow only (no camera estimate): it trains, and the run is retrieved on
    that view by default."""
    data = tmp_path / "ucf101"
    shutil.copytree(shaking, data, ignore=shutil.ignore_patterns("camera"))
    assert run_prep("flow", "--data", data, "--method", "dis", "--workers", "1").exit_code == 0
    run = tmp_path / "run"
    args = ["--data", str(data), "--out", str(run), "--epochs", "1", "--batch-size", "2", "--workers", "0"]
    args += ["--crop", "32", "--frames", "8", "--view2", "flow-u-aligned", "--threads", "1"]
    r = CliRunner().invoke(main, ["train", "--preset", "tiny", *args])
    assert r.exit_code == 0, r.output
    assert modalities_for(["rgb", "flow-u-aligned"]) == ("rgb", "flow")
    e = CliRunner().invoke(
        main, ["eval", "retrieval", "--ckpt", str(run / "final.pt"), "--workers", "0", "--json"]
    )
    assert e.exit_code == 0, e.output
    assert json.loads(e.stdout)["config"]["modality"] == "flow-u-aligned"


def test_the_stabilised_views_are_iics() -> None:
    with pytest.raises(ConfigError, match="--view2 res-stable is IIC's"):
        build_config("dualvar-tiny", view2="res-stable")
    assert view1_of("res-stable") == "rgb-stable" and view1_of("res-aligned") == "rgb"
    assert modalities_for(["rgb-stable"]) == ("rgb", "camera")


def test_the_camera_s_part_of_a_flow_field_is_the_affine_field_around_the_moving_object() -> None:
    """A zooming, turning and panning camera's flow (an affine field of the pixel position) with an object
    that moves on its own over 15 % of the frame: `camera_flow` returns the camera's field everywhere (the
    object drops out of the fit), equal to numpy's least squares on the background alone; the aligned views
    keep the object's own motion and leave ~0 elsewhere; a still scene stays as it is."""
    B, T, h, w = 2, 3, 24, 32
    rng = np.random.default_rng(0)
    ys, xs = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    coef = rng.uniform(-0.2, 0.2, (B, T, 3, 2))  # u, v = a + b x + c y (in units of the bound)
    camera = np.einsum("hwk,btkc->bcthw", np.stack([np.ones_like(xs), xs, ys], -1), coef)
    obj = np.zeros((h, w), bool)
    obj[4:13, 6:16] = True  # 90 of 768 px
    flow = camera.copy()
    flow[:, :, :, obj] += np.array([0.5, -0.4])[None, :, None, None]
    fitted = camera_flow(torch.from_numpy(flow).float()).double().numpy()
    assert np.abs(fitted - camera).max() < 1e-4
    X = np.stack([np.ones_like(xs), xs, ys], -1)[~obj]
    ref = np.linalg.lstsq(X, flow[0, :, 1][:, ~obj].T, rcond=None)[0]  # (3, 2): sample 0, frame 1
    assert np.allclose(X @ ref, fitted[0, :, 1][:, ~obj].T, atol=1e-4)
    views = {"flow": torch.from_numpy(flow).float()}
    u = view_input(views, "flow-u-aligned")[:, 0] * 2 - 1  # back to flow units
    v = view_input(views, "flow-v-aligned")[:, 1] * 2 - 1
    assert u.shape == (B, T, h, w) and torch.allclose(view_input(views, "flow-u-aligned")[:, 2], (u + 1) / 2)
    assert u[..., ~torch.from_numpy(obj)].abs().max() < 1e-4
    assert torch.allclose(u[..., torch.from_numpy(obj)], torch.tensor(0.5), atol=1e-4)
    assert torch.allclose(v[..., torch.from_numpy(obj)], torch.tensor(-0.4), atol=1e-4)
    # the pipeline's numpy fit (`iic-prep show`) draws the same field
    assert (
        np.abs(camera_flow_np(flow[1, :, 2].transpose(1, 2, 0)) - camera[1, :, 2].transpose(1, 2, 0)).max()
        < 1e-6
    )
    plain = view_input(views, "flow-u")[:, 0] * 2 - 1
    assert plain[..., ~torch.from_numpy(obj)].abs().mean() > 0.05  # the camera fills the plain view
    still = torch.zeros(1, 2, 2, h, w)
    still[:, :, :, 4:13, 6:16] = 0.3
    assert torch.equal(view_input({"flow": still}, "flow-u-aligned"), view_input({"flow": still}, "flow-u"))
