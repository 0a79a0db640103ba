"""Tests of the synthetic motion-only UCF101-layout generator (iic.pipeline.synth)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from iic.pipeline.synth import (
    CLASS_NAMES,
    REVERSAL_PAIRS,
    SynthConfig,
    clips_per_group,
    generate,
    held_out_groups,
    quantize_332,
    render_video,
    sample_pose,
    video_specs,
    write_video,
)

NAME_RE = re.compile(r"^v_(?P<cls>[A-Za-z]+)_g(?P<g>\d\d)_c(?P<c>\d\d)\.avi$")


def decode(path: Path) -> np.ndarray:
    """All frames of a video as (T, H, W, 3) uint8 RGB."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def decode_all(root: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(root)): decode(p) for p in sorted(root.rglob("*.avi"))}


def read_lines(path: Path) -> list[str]:
    data = path.read_bytes()
    assert data.endswith(b"\r\n")
    assert data.count(b"\n") == data.count(b"\r\n"), f"{path.name}: not CRLF"
    return data.decode("ascii").split("\r\n")[:-1]


TINY = dict(classes=3, per_class=4, groups=3, frames=5, height=32, width=48)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[SynthConfig, object]:
    cfg = SynthConfig(out=tmp_path_factory.mktemp("tiny"), **TINY)
    return cfg, generate(cfg)


# ------------------------------------------------------------------------------------------ config / layout


@pytest.mark.parametrize(
    "override",
    [
        dict(classes=0),
        dict(classes=len(CLASS_NAMES) + 1),
        dict(groups=2),
        dict(per_class=2, groups=3),
        dict(height=33),
        dict(width=47),
        dict(frames=0),
        dict(quality=0),
        dict(height=8, width=8),
    ],
)
def test_config_rejects_invalid(override: dict, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        SynthConfig(out=tmp_path, **{**TINY, **override})


def test_at_least_eight_motion_classes() -> None:
    assert len(CLASS_NAMES) >= 8
    assert len(set(CLASS_NAMES)) == len(CLASS_NAMES)
    assert all(re.fullmatch(r"([A-Z][a-z]+)+", n) for n in CLASS_NAMES)


@pytest.mark.parametrize(
    ("groups", "split", "expected"),
    [
        (3, 1, {1}),
        (3, 2, {2}),
        (3, 3, {3}),
        (7, 1, {1, 2, 3}),
        (7, 2, {4, 5}),
        (7, 3, {6, 7}),
        (25, 1, set(range(1, 10))),
    ],
)
def test_held_out_groups(groups: int, split: int, expected: set[int]) -> None:
    assert held_out_groups(groups, split) == expected


@pytest.mark.parametrize(
    ("per_class", "groups", "expected"),
    [(12, 3, [4, 4, 4]), (12, 5, [3, 3, 2, 2, 2]), (3, 3, [1, 1, 1]), (7, 3, [3, 2, 2])],
)
def test_clips_per_group(per_class: int, groups: int, expected: list[int], tmp_path: Path) -> None:
    cfg = SynthConfig(out=tmp_path, per_class=per_class, groups=groups)
    assert clips_per_group(cfg) == expected
    assert len(video_specs(cfg)) == cfg.classes * per_class


def test_layout(tiny) -> None:
    cfg, report = tiny
    root = cfg.out / "UCF-101"
    assert report.video_root == root
    assert report.videos == report.written == cfg.classes * cfg.per_class
    assert sorted(p.name for p in root.iterdir()) == list(report.class_names)
    assert report.class_names == tuple(sorted(CLASS_NAMES[: cfg.classes]))
    for name in report.class_names:
        files = sorted(p.name for p in (root / name).iterdir())
        expected = [
            f"v_{name}_g{g:02d}_c{c:02d}.avi" for g in (1, 2, 3) for c in range(1, 1 + (2 if g == 1 else 1))
        ]
        assert files == expected
    assert not list(cfg.out.rglob("*.part"))


def test_split_files(tiny) -> None:
    cfg, report = tiny
    lists = cfg.out / "ucfTrainTestlist"
    class_ind = [line.split(" ") for line in read_lines(lists / "classInd.txt")]
    assert [int(i) for i, _ in class_ind] == list(range(1, cfg.classes + 1))
    label_of = {name: int(i) for i, name in class_ind}
    assert tuple(label_of) == report.class_names

    all_videos = {str(p.relative_to(report.video_root)) for p in report.video_root.rglob("*.avi")}
    tested_groups: dict[tuple[str, int], int] = {}
    for split in (1, 2, 3):
        train = [line.split(" ") for line in read_lines(lists / f"trainlist{split:02d}.txt")]
        test = read_lines(lists / f"testlist{split:02d}.txt")
        assert all(len(t) == 2 for t in train) and all(" " not in t for t in test)
        for path, label in train:
            assert int(label) == label_of[path.split("/")[0]]
        train_paths = [p for p, _ in train]
        assert len(set(train_paths)) == len(train_paths) and len(set(test)) == len(test)
        assert set(train_paths) | set(test) == all_videos
        assert not set(train_paths) & set(test)

        def groups(paths: list[str]) -> set[tuple[str, int]]:
            out = set()
            for p in paths:
                cls, name = p.split("/")
                m = NAME_RE.match(name)
                assert m is not None and m["cls"] == cls
                out.add((cls, int(m["g"])))
            return out

        assert not groups(train_paths) & groups(test), f"split {split}: a group is in train and test"
        for key in groups(test):
            tested_groups[key] = tested_groups.get(key, 0) + 1
    # like UCF101 each split tests different groups; here the three splits cover every group once
    assert set(tested_groups.values()) == {1}
    assert len(tested_groups) == cfg.classes * cfg.groups


def test_decoded_videos_match_config(tiny) -> None:
    cfg, report = tiny
    for spec in video_specs(cfg):
        path = report.video_root / spec.relpath
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "mpeg4"
            assert stream.average_rate == cfg.fps
        frames = decode(path)
        assert frames.shape == (cfg.frames, cfg.height, cfg.width, 3)
        source = render_video(cfg, spec.class_name, spec.group, spec.clip)
        yuv420 = np.stack(
            [
                av.VideoFrame.from_ndarray(f, format="rgb24")
                .reformat(format="yuv420p")
                .to_ndarray(format="rgb24")
                for f in source
            ]
        )
        # most of the error is the yuv420p chroma subsampling; measured at this size: 3.3-4.6 vs the
        # source, 1.8-2.3 vs the source through yuv420p (quantiser 2)
        assert np.abs(frames.astype(int) - source).mean() < 6.0
        assert np.abs(frames.astype(int) - yuv420).mean() < 3.0


def test_rerun_keeps_videos_and_refuses_other_config(tiny, tmp_path: Path) -> None:
    cfg, report = tiny
    before = {p: p.stat().st_mtime_ns for p in report.video_root.rglob("*.avi")}
    again = generate(cfg)
    assert (again.written, again.skipped) == (0, report.videos)
    assert {p: p.stat().st_mtime_ns for p in report.video_root.rglob("*.avi")} == before

    other = SynthConfig(out=tmp_path, **TINY)
    generate(other)
    with pytest.raises(FileExistsError):
        generate(dataclasses.replace(other, seed=1))
    redone = generate(dataclasses.replace(other, seed=1, overwrite=True))
    assert redone.written == redone.videos


# ------------------------------------------------------------------------------------------ determinism


def test_deterministic_and_seed_dependent(tmp_path: Path) -> None:
    small = dict(classes=2, per_class=3, groups=3, frames=4, height=32, width=48)
    first = generate(SynthConfig(out=tmp_path / "a", **small))
    second = generate(SynthConfig(out=tmp_path / "b", **small))
    other = generate(SynthConfig(out=tmp_path / "c", seed=7, **small))
    a, b, c = (decode_all(r.video_root) for r in (first, second, other))
    assert a.keys() == b.keys() == c.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
        assert np.abs(a[key].astype(int) - c[key]).mean() > 10.0  # different seed: another dataset
    for s in (1, 2, 3):
        name = f"trainlist{s:02d}.txt"
        assert (first.split_root / name).read_bytes() == (second.split_root / name).read_bytes()


def test_video_does_not_depend_on_dataset_size(tmp_path: Path) -> None:
    small = SynthConfig(out=tmp_path, classes=2, per_class=3, groups=3, frames=4, height=32, width=48)
    large = dataclasses.replace(small, classes=5, per_class=8, groups=4)
    for name in CLASS_NAMES[:2]:
        np.testing.assert_array_equal(render_video(small, name, 1, 1), render_video(large, name, 1, 1))
    assert not np.array_equal(render_video(small, "MoveLeft", 1, 1), render_video(small, "MoveLeft", 1, 2))
    assert not np.array_equal(render_video(small, "MoveLeft", 1, 1), render_video(small, "MoveLeft", 2, 1))


# ------------------------------------------------------------------------------------------ motion only


def test_pose_distribution_at_any_frame_does_not_depend_on_class() -> None:
    """Position, angle and scale at a given frame are uniform for every class: no single-frame cue."""
    height, width, n = 48, 64, 2000
    for name in CLASS_NAMES:
        rng = np.random.default_rng(0)
        poses = [sample_pose(name, rng, 10, height, width) for _ in range(n)]
        for t in (0, 9):
            unit = np.array(
                [
                    [
                        p.centre[t, 0] / width,
                        p.centre[t, 1] / height,
                        p.angle[t] / 360.0,
                        p.log_scale[t] + 0.5,
                    ]
                    for p in poses
                ]
            )
            assert unit.min() >= 0.0 and unit.max() < 1.0
            # U(0, 1): mean 0.5, std 0.2887; 4 standard errors of the mean is 0.026
            np.testing.assert_allclose(unit.mean(0), 0.5, atol=0.03, err_msg=f"{name} t={t}")
            np.testing.assert_allclose(unit.std(0), 0.2887, atol=0.02, err_msg=f"{name} t={t}")


def _circular_step(values: np.ndarray, period: float) -> np.ndarray:
    """Per-frame change of a wrapped quantity, mapped to [-period / 2, period / 2)."""
    return np.mod(np.diff(values, axis=0) + period / 2, period) - period / 2


@pytest.mark.parametrize(
    ("name", "dx", "dy", "dangle", "dscale"),
    [
        ("MoveLeft", -1, 0, 0, 0),
        ("MoveRight", 1, 0, 0, 0),
        ("MoveUp", 0, -1, 0, 0),
        ("MoveDown", 0, 1, 0, 0),
        ("RotateClockwise", 0, 0, 1, 0),
        ("RotateCounterClockwise", 0, 0, -1, 0),
        ("ZoomIn", 0, 0, 0, 1),
        ("ZoomOut", 0, 0, 0, -1),
        ("Static", 0, 0, 0, 0),
    ],
)
def test_pose_motion_by_class(name: str, dx: int, dy: int, dangle: int, dscale: int) -> None:
    height, width = 48, 64
    for seed in range(20):
        pose = sample_pose(name, np.random.default_rng(seed), 12, height, width)
        steps = [
            _circular_step(pose.centre[:, 0], width),
            _circular_step(pose.centre[:, 1], height),
            _circular_step(pose.angle, 360.0),
            _circular_step(pose.log_scale, 1.0),
        ]
        for step, sign in zip(steps, (dx, dy, dangle, dscale), strict=True):
            if sign == 0:
                np.testing.assert_allclose(step, 0.0, atol=1e-9)
            else:
                assert np.all(np.sign(step) == sign), name


def test_oscillate_reverses_direction() -> None:
    for seed in range(20):
        pose = sample_pose("Oscillate", np.random.default_rng(seed), 40, 48, 64)
        step = np.stack([_circular_step(pose.centre[:, 0], 64), _circular_step(pose.centre[:, 1], 48)], 1)
        along = step @ step[np.argmax(np.linalg.norm(step, axis=1))]
        assert along.max() > 0 > along.min()  # goes back and forth (periods of 10-20 frames)


def _anova_f(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """One-way ANOVA F statistic per feature column: between-class / within-class variance."""
    classes = np.unique(labels)
    n, k = len(labels), len(classes)
    grand = features.mean(0)
    between = sum((labels == c).sum() * (features[labels == c].mean(0) - grand) ** 2 for c in classes)
    within = sum(((features[labels == c] - features[labels == c].mean(0)) ** 2).sum(0) for c in classes)
    return (between / (k - 1)) / (within / (n - k))


def _frame_features(frame: np.ndarray) -> np.ndarray:
    """Colour statistics and coarse layout of one frame: RGB mean, RGB std, 4x4 gray thumbnail (22,)."""
    rgb = frame.reshape(-1, 3).astype(np.float64)
    thumb = cv2.resize(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), (4, 4), interpolation=cv2.INTER_AREA)
    return np.concatenate([rgb.mean(0), rgb.std(0), thumb.ravel()])


def _temporal_shift(video: np.ndarray) -> np.ndarray:
    """(dx, dy) between consecutive temporal differences, by phase correlation (static background cancels)."""
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY).astype(np.float64) for f in video]
    diffs = [b - a for a, b in zip(gray[:-1], gray[1:], strict=True)]
    return np.mean([cv2.phaseCorrelate(a, b)[0] for a, b in zip(diffs[:-1], diffs[1:], strict=True)], axis=0)


def test_single_frames_do_not_separate_classes_but_motion_does(tmp_path: Path) -> None:
    # one clip per group: independent samples (clips of a group share their appearance)
    cfg = SynthConfig(
        out=tmp_path, classes=len(CLASS_NAMES), per_class=6, groups=6, frames=4, height=48, width=64
    )
    videos = [render_video(cfg, s.class_name, s.group, s.clip) for s in video_specs(cfg)]
    labels = np.array([s.label for s in video_specs(cfg)])
    for t in (0, cfg.frames - 1):
        f = _anova_f(np.stack([_frame_features(v[t]) for v in videos]), labels)
        # null distribution F(9, 50): mean ~1; measured over seeds 0-5: mean 0.47-1.35, max 1.5-2.8
        assert f.mean() < 2.0 and f.max() < 5.0, f
    # the same statistic on a temporal feature separates the classes by far (measured over seeds 0-5:
    # F 13-3100, seed 0: 785 and 1543)
    motion = _anova_f(np.stack([_temporal_shift(v) for v in videos]), labels)
    assert motion.min() > 10.0, motion


@pytest.fixture(scope="module")
def motion_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[SynthConfig, dict[str, np.ndarray]]:
    """Decoded videos of every class, one sprite each, so the flow of a video is one rigid motion."""
    cfg = SynthConfig(
        out=tmp_path_factory.mktemp("motion"),
        classes=len(CLASS_NAMES),
        per_class=3,
        groups=3,
        frames=6,
        height=96,
        width=96,
        max_objects=1,
    )
    report = generate(cfg)
    return cfg, decode_all(report.video_root)


@pytest.mark.parametrize(
    ("name", "axis", "sign"),
    [("MoveLeft", 0, -1), ("MoveRight", 0, 1), ("MoveUp", 1, -1), ("MoveDown", 1, 1)],
)
def test_translation_direction_by_phase_correlation(motion_set, name: str, axis: int, sign: int) -> None:
    _, videos = motion_set
    clips = [v for k, v in videos.items() if k.startswith(f"{name}/")]
    assert len(clips) == 3
    for video in clips:
        shift = _temporal_shift(video)
        # speed is 1.2-2.9 px/frame at 96 px; measured |along| >= 0.9
        assert sign * shift[axis] > 0.5, shift
        assert abs(shift[1 - axis]) < 0.5 * abs(shift[axis]), shift


def _affine_flow(video: np.ndarray) -> tuple[float, float]:
    """Median over frame pairs of (curl, divergence) of an affine fit to the optical flow of moving pixels.

    Image axes: x right, y down; curl > 0 is clockwise on screen, divergence > 0 is expansion.
    """
    curls, divs = [], []
    for a, b in zip(video[:-1], video[1:], strict=True):
        moving = np.abs(a.astype(int) - b).max(-1) > 6
        if moving.sum() < 10:
            continue
        # roll the emptiest row/column to the border so a sprite wrapped around the frame is whole
        shift = (-int(np.argmin(moving.sum(1))), -int(np.argmin(moving.sum(0))))
        ga, gb = (np.roll(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), shift, (0, 1)) for f in (a, b))
        flow = cv2.calcOpticalFlowFarneback(ga, gb, None, 0.5, 3, 9, 3, 5, 1.1, 0)
        ys, xs = np.nonzero(np.roll(moving, shift, (0, 1)))
        design = np.stack([xs, ys, np.ones_like(xs)], 1).astype(np.float64)
        coef, *_ = np.linalg.lstsq(design, flow[ys, xs].astype(np.float64), rcond=None)
        jac = coef[:2].T  # jac[i, j] = d flow_i / d coord_j
        curls.append(jac[1, 0] - jac[0, 1])
        divs.append(jac[0, 0] + jac[1, 1])
    assert curls, "no motion found"
    return float(np.median(curls)), float(np.median(divs))


@pytest.mark.parametrize(
    ("name", "curl_sign", "div_sign"),
    [("RotateClockwise", 1, 0), ("RotateCounterClockwise", -1, 0), ("ZoomIn", 0, 1), ("ZoomOut", 0, -1)],
)
def test_rotation_and_zoom_direction_by_optical_flow(
    motion_set, name: str, curl_sign: int, div_sign: int
) -> None:
    _, videos = motion_set
    clips = [v for k, v in videos.items() if k.startswith(f"{name}/")]
    for video in clips:
        curl, div = _affine_flow(video)
        # measured over seeds 0-2: |curl| 0.02-0.16 for rotations, |div| 0.012-0.068 for zooms
        if curl_sign:
            assert curl_sign * curl > 0.01 and abs(div) < abs(curl), (curl, div)
        if div_sign:
            assert div_sign * div > 0.005 and abs(curl) < abs(div), (curl, div)


def test_static_class_does_not_move(motion_set) -> None:
    _, videos = motion_set
    change = {k: np.abs(np.diff(v.astype(int), axis=0)).mean() for k, v in videos.items()}
    static = [c for k, c in change.items() if k.startswith("Static/")]
    moving = [c for k, c in change.items() if not k.startswith("Static/")]
    # measured: 0.0 for Static (the codec repeats identical frames exactly), 0.09-3.8 for the others
    # (mean over the whole frame of one small sprite's change)
    assert max(static) < 0.05 < min(moving)


# ------------------------------------------------------------------------------------------ write_video


def _smooth_video(frames: int, height: int, width: int) -> np.ndarray:
    """(T, H, W, 3) uint8 smooth colour ramps moving over time (compressible, so lossy errors are small)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    out = []
    for t in range(frames):
        r = 128 + 100 * np.sin(2 * np.pi * (x + 3 * t) / width)
        g = 128 + 100 * np.cos(2 * np.pi * (y - 2 * t) / height)
        b = 128 + 80 * np.sin(2 * np.pi * (x + y) / (width + height))
        out.append(np.stack([r, g, b], -1))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("size", [(96, 128), (239, 321)], ids=["even", "odd"])
@pytest.mark.parametrize(
    ("codec", "pix_fmt", "gray", "max_error"),
    [
        ("mpeg4", "yuv420p", False, 3.0),
        ("mjpeg", "yuvj444p", False, 3.0),
        ("ffv1", "yuv444p", False, 1.0),
        ("ffv1", "bgr0", False, 0.0),
        ("png", "rgb24", False, 0.0),
        ("ffv1", "gray", True, 0.0),
        ("png", "gray", True, 0.0),
        ("png", "pal8", False, 0.0),  # exact w.r.t. quantize_332
    ],
)
def test_write_video_roundtrip(
    tmp_path: Path, size: tuple[int, int], codec: str, pix_fmt: str, gray: bool, max_error: float
) -> None:
    height, width = size
    frames = _smooth_video(3, height, width)
    expected = frames
    if gray:
        frames = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])
        expected = np.repeat(frames[..., None], 3, axis=3)
    if pix_fmt == "pal8":
        expected = np.stack([quantize_332(f)[1] for f in frames])
    path = tmp_path / "clip.avi"
    write_video(path, frames, fps=10, codec=codec, pix_fmt=pix_fmt)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == codec
        decoded = list(container.decode(video=0))
        assert decoded[0].format.name == pix_fmt
        assert stream.average_rate == 10
    got = np.stack([f.to_ndarray(format="rgb24") for f in decoded])
    assert got.shape == (3, height, width, 3)
    assert np.abs(got.astype(int) - expected).mean() <= max_error


def test_write_video_quality_controls_error(tmp_path: Path) -> None:
    frames = _smooth_video(4, 64, 64)
    errors = []
    for q in (2, 20):
        write_video(tmp_path / f"q{q}.avi", frames, quality=q)
        errors.append(np.abs(decode(tmp_path / f"q{q}.avi").astype(int) - frames).mean())
    assert errors[0] < errors[1]


@pytest.mark.parametrize(
    "frames",
    [
        np.zeros((2, 8, 8, 3), np.float32),
        np.zeros((2, 8, 8, 4), np.uint8),
        np.zeros((8, 8), np.uint8),
        np.zeros((0, 8, 8, 3), np.uint8),
    ],
)
def test_write_video_rejects_bad_frames(tmp_path: Path, frames: np.ndarray) -> None:
    with pytest.raises(ValueError):
        write_video(tmp_path / "bad.avi", frames)


def test_default_benchmark_is_four_reversal_pairs_of_independent_videos(tmp_path: Path) -> None:
    cfg = SynthConfig(out=tmp_path)
    assert set(cfg.class_names()) == {name for pair in REVERSAL_PAIRS for name in pair}
    assert cfg.groups == cfg.per_class  # one video per group: every video has its own appearance
    specs = video_specs(cfg)
    test = [s for s in specs if s.group in held_out_groups(cfg.groups, 1)]
    assert len(specs) == 360 and len(test) == 120 and len({(s.class_name, s.group) for s in test}) == 120


@pytest.mark.parametrize(("forward", "backward"), REVERSAL_PAIRS)
def test_reversal_pairs_are_each_others_time_reversal(forward: str, backward: str) -> None:
    """A clip of one class played backwards moves like a clip of the other: per-frame steps of opposite
    sign and the same size distribution (the same random numbers give the same speeds)."""
    height, width = 48, 64
    wraps = (width, height, 360.0, 1.0)
    for seed in range(10):
        a = sample_pose(forward, np.random.default_rng(seed), 12, height, width)
        b = sample_pose(backward, np.random.default_rng(seed), 12, height, width)
        for x, y, period in zip(
            (a.centre[:, 0], a.centre[:, 1], a.angle, a.log_scale),
            (b.centre[:, 0], b.centre[:, 1], b.angle, b.log_scale),
            wraps,
            strict=True,
        ):
            np.testing.assert_allclose(_circular_step(x[::-1], period), _circular_step(y, period), atol=1e-9)


def test_shared_appearance_reuses_a_group_look_across_classes(tmp_path: Path) -> None:
    base = dict(classes=2, per_class=3, frames=2, height=48, width=64, max_objects=1)
    shared = SynthConfig(out=tmp_path, shared_appearance=True, **base)
    own = SynthConfig(out=tmp_path, **base)

    def colour_gaps(
        cfg: SynthConfig,
    ) -> list[float]:  # per group: largest gap of the two classes' mean colours
        return [
            float(
                np.abs(
                    np.subtract(
                        *(
                            render_video(cfg, name, g, 1)[0].reshape(-1, 3).mean(0)
                            for name in cfg.class_names()
                        )
                    )
                ).max()
            )
            for g in (1, 2, 3)
        ]

    # the background crop still differs per video (measured, seed 0: shared 3.6-23.5, own 39-108)
    assert max(colour_gaps(shared)) < 30.0 < min(colour_gaps(own))


# ------------------------------------------------------------------------------------------ command line


def test_cli_writes_what_its_options_say_and_refuses_another_config(tmp_path: Path) -> None:
    import json

    from conftest import error_lines, run_prep

    out = tmp_path / "synth"
    args = [
        "synth",
        "--out",
        out,
        "--classes",
        "2",
        "--per-class",
        "6",
        "--groups",
        "3",
        "--frames",
        "3",
        "--size",
        "32x48",
    ]
    first = run_prep(*args, "--seed", "1")
    assert first.exit_code == 0, first.output
    cfg = json.loads((out / "synth_config.json").read_text())
    fields = ("classes", "per_class", "groups", "frames", "height", "width", "seed")
    assert {k: cfg[k] for k in fields} == dict(
        classes=2, per_class=6, groups=3, frames=3, height=32, width=48, seed=1
    )
    videos = sorted((out / "UCF-101").rglob("*.avi"))
    assert len(videos) == 12 and {NAME_RE.match(p.name)["g"] for p in videos} == {"01", "02", "03"}
    assert all(decode(p).shape == (3, 32, 48, 3) for p in videos)
    before = {p: p.read_bytes() for p in videos}
    refused = run_prep(*args, "--seed", "2")
    assert refused.exit_code == 1 and error_lines(refused.stderr) == [
        f"Error: {out} holds a dataset made with another config (--seed 1, asked 2): pass --overwrite to "
        "replace it"
    ]
    assert {p: p.read_bytes() for p in videos} == before
    replaced = run_prep(*args, "--seed", "2", "--overwrite")
    assert replaced.exit_code == 0 and json.loads((out / "synth_config.json").read_text())["seed"] == 2
    assert any(p.read_bytes() != before[p] for p in videos)  # another seed draws other videos


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--per-class", "2"],
            "--per-class 2: need at least 3 videos per class (each video is its own group, "
            "and each split tests a third of the groups)",
        ),
        (
            ["--per-class", "100"],
            "--per-class 100: at most 99 videos per class when each video is its own group "
            "(give fewer groups: the videos of a group share their appearance)",
        ),
        (["--groups", "3", "--per-class", "400"], "--per-class 400 --groups 3: at most 99 videos per group"),
        (
            ["--groups", "60"],
            "--groups 60 (with --per-class 45, the default): need at least as many videos per "
            "class as groups (no empty group)",
        ),
        (
            ["--groups", "100", "--per-class", "200"],
            "--groups 100: must be in 3..99 (each split tests a third of the groups)",
        ),
        (
            ["--size", "30x31"],
            "--size 30x31: height and width must be even (yuv420p halves the chroma planes)",
        ),
        (["--classes", "11"], "--classes 11: must be in 1..10 (there are 10 motion classes)"),
    ],
)
def test_cli_refusals_name_the_options_given(tmp_path: Path, args: list[str], message: str) -> None:
    from conftest import run_prep

    result = run_prep("synth", "--out", tmp_path / "synth", *args)
    assert result.exit_code == 2 and result.stderr == f"Error: {message}\n" and result.stdout == ""
    assert not (tmp_path / "synth").exists()
