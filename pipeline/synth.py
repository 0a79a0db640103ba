"""Synthetic motion-only video dataset in the official UCF101 layout.

The classes differ only by how objects MOVE (direction, rotation, scale change, periodicity); what the
frames LOOK like (textured background, number/shape/colour/texture/size/position/angle of the sprites) is
drawn at random, with the same distribution for every class, so a single frame does not reveal the class.

Layout written under ``cfg.out`` (as in the official UCF101 release)::

    UCF-101/<ClassName>/v_<ClassName>_gNN_cMM.avi     mpeg4 / yuv420p, fixed quantiser
    ucfTrainTestlist/classInd.txt                      "1 ClassName"            (CRLF)
    ucfTrainTestlist/trainlist0{1,2,3}.txt             "Class/v_..._c01.avi 1"  (CRLF, label 1-based)
    ucfTrainTestlist/testlist0{1,2,3}.txt              "Class/v_..._c01.avi"    (CRLF)
    synth_config.json                                  the config, to make re-runs safe

Classes come in pairs that are each other's time reversal (MoveLeft/MoveRight, MoveUp/MoveDown,
RotateClockwise/RotateCounterClockwise, ZoomIn/ZoomOut: ``REVERSAL_PAIRS``): a video of one class played
backwards is a video of the other, with the same distribution of speeds and poses, so the two classes have the
same distribution of single frames AND of unordered sets of frames. Only the order of the frames tells them
apart; a method blind to it scores at most chance within each pair. The default 8 classes are the 4 pairs.

Groups play the role of UCF101's groups: clips of one group share the background canvas and the sprites'
shape and texture, and the test list of split ``s`` holds whole groups (the ``s``-th third of them), so
no group is in both the train and the test list of a split. By default every video is its own group
(``groups=None``): each video's appearance is drawn independently, so every test video is an independent
sample and retrieval cannot match a query to a gallery video of the same group by its looks.

Randomness: every clip uses ``numpy.random.default_rng([seed, class_id, group, clip])`` and every group's
appearance ``default_rng([seed, class_id, group, 0])`` (``class_id`` is the index in ``CLASS_NAMES``), so a
video never depends on how many other videos are generated.

Camera (``camera``, the same law for every class; `camera_path`): ``still`` (the default) films the scene
from a fixed point. The others move the whole scene, background and sprites together, by a transform of the
image about its centre, so a class is the sprites' motion RELATIVE to the background; amplitudes in pixels
at the default 96x128 (they scale with min(H, W)):

* ``shake``: every frame the scene is shifted by (dx, dy), each uniform in [0, 4] px, drawn anew (from one
  frame to the next it jumps by up to 4 px along each axis);
* ``pan``: the scene drifts at a constant 1-2 px a frame (uniform) in a uniform random direction;
* ``zoom``: the scene is scaled about the centre at a constant rate, log scale +-0.004-0.01 a frame (0.4-1%);
* ``rotate``: the scene turns about the centre at a constant 0.4-1.2 degrees a frame, either way;
* ``handheld``: all at once, gently: a drift of 0-1 px a frame plus a jitter of +-1 px, a turn of
  +-0.3 degrees a frame plus a jitter of +-0.2 degrees, a zoom of +-0.003 a frame.

Pan, zoom and rotate are centred on the middle frame (the middle frame is the still camera's view), so the
view stays near the background canvas; where it leaves it the canvas is mirrored. A clip's camera path is
drawn from ``default_rng([seed, 1000, group, clip])``: it does not depend on the class, so clip (g, c) of
every class is filmed along the same path. ``still`` videos are those of the generator without a camera,
byte for byte.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from .names import SYNTH_CAMERAS

logger = logging.getLogger(__name__)

# Order matters: ``SynthConfig.classes = k`` uses the first k. Labels are then numbered in alphabetical
# order of the chosen names, so classInd.txt agrees with a sorted listing of the class folders.
CLASS_NAMES: tuple[str, ...] = (
    "MoveLeft",
    "MoveRight",
    "MoveUp",
    "MoveDown",
    "RotateClockwise",
    "RotateCounterClockwise",
    "ZoomIn",
    "ZoomOut",
    "Oscillate",
    "Static",
)
# Each pair: a clip of one class played backwards is a clip of the other (same speed distribution).
REVERSAL_PAIRS: tuple[tuple[str, str], ...] = (
    ("MoveLeft", "MoveRight"),
    ("MoveUp", "MoveDown"),
    ("RotateClockwise", "RotateCounterClockwise"),
    ("ZoomIn", "ZoomOut"),
)
CAMERAS: tuple[str, ...] = SYNTH_CAMERAS  # the camera laws (module docstring, `camera_path`)
NUM_SPLITS = 3
VIDEO_DIR = "UCF-101"
SPLIT_DIR = "ucfTrainTestlist"
CONFIG_FILE = "synth_config.json"
_FORMAT_VERSION = 1

# Sprite geometry, as fractions of min(height, width). The largest sprite at the largest scale must fit in
# the frame, so that its wrapped paste never overlaps itself: 0.38 * exp(0.5) + margin < 1.
_SPRITE_DIAMETER = (0.22, 0.38)
_LOG_SCALE_RANGE = 0.5  # log of the size factor lives in [-0.5, 0.5) (wraps around for the zoom classes)
_ZOOM_RATE = (0.015, 0.035)  # change of log scale per frame (ZoomIn/ZoomOut)
_SPEED = (0.012, 0.03)  # translation, fraction of min(H, W) per frame
_ANGULAR_SPEED = (3.0, 8.0)  # degrees per frame
_OSC_AMPLITUDE = (0.08, 0.18)  # fraction of min(H, W)
_OSC_PERIOD = (10.0, 20.0)  # frames
# Camera amplitudes, in px at a short side of 96 (scaled with min(H, W)) or per frame.
_CAMERA_SHAKE = 4.0  # px: the scene's offset, each axis uniform in [0, 4], drawn every frame
_CAMERA_PAN = (1.0, 2.0)  # px a frame
_CAMERA_ZOOM = (0.004, 0.01)  # change of log scale a frame
_CAMERA_TURN = (0.4, 1.2)  # degrees a frame
_HANDHELD = dict(drift=1.0, jitter=1.0, turn=0.3, turn_jitter=0.2, zoom=0.003)  # px, px, deg, deg, log
_CAMERA_STREAM = 1000  # the camera's random stream: never a class_id, so no clip's stream is reused
_CAMERA_REFERENCE = 96  # the short side at which the amplitudes above are given

# Codecs whose quality is a quantiser (1 = best, 31 = worst) set through qmin = qmax.
_QSCALE_CODECS = frozenset({"mpeg4", "mjpeg", "mpeg1video", "mpeg2video", "msmpeg4", "msmpeg4v2"})


class SynthConfigError(ValueError):
    """A refused setting: ``fields`` are the `SynthConfig` fields at fault, ``reason`` says why (one line)."""

    def __init__(self, fields: tuple[str, ...], reason: str) -> None:
        super().__init__(f"SynthConfig: {', '.join(fields)}: {reason}")
        self.fields, self.reason = fields, reason


class SynthExistsError(FileExistsError):
    """The output folder holds a dataset made with another config; ``differences`` maps each content field
    (`SynthConfig.to_dict`) that differs to (found, wanted)."""

    def __init__(self, out: Path, differences: dict[str, tuple]) -> None:
        shown = "; ".join(f"{k} {a}, asked {b}" for k, (a, b) in differences.items())
        super().__init__(f"{out} holds a dataset made with another config ({shown}); use overwrite")
        self.out, self.differences = out, differences


@dataclass(frozen=True)
class SynthConfig:
    """Synthetic dataset parameters.

    height and width must be even (yuv420p halves the chroma planes; odd sizes are rejected rather than
    rounded so that decoded frames always have exactly ``(height, width)``).
    """

    out: Path
    classes: int = 8  # first `classes` of CLASS_NAMES (8: the four time-reversal pairs)
    per_class: int = 45  # videos per class
    groups: int | None = None  # groups per class (>= 3: each split tests a third); None = one video each
    shared_appearance: bool = False  # group g of EVERY class has the same appearance (else: its own class's)
    frames: int = 40
    height: int = 96
    width: int = 128
    seed: int = 0
    fps: int = 25
    max_objects: int = 3  # sprites per group: 1..max_objects
    quality: int = 2  # mpeg4 fixed quantiser, 1 (best) .. 31
    camera: str = "still"  # CAMERAS: how the scene is filmed (module docstring), the same for every class
    overwrite: bool = False  # regenerate existing videos / replace an output made with another config

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        size = ("height", "width")
        if self.groups is None:  # one video per group: what is refused is the number of videos
            object.__setattr__(self, "groups", self.per_class)
            groups = [
                (
                    self.per_class >= NUM_SPLITS,
                    ("per_class",),
                    f"need at least {NUM_SPLITS} videos per class (each video is its own group, and each "
                    "split tests a third of the groups)",
                ),
                (
                    self.per_class <= 99,
                    ("per_class",),
                    "at most 99 videos per class when each video is its own group (give fewer groups: the "
                    "videos of a group share their appearance)",
                ),
            ]
        else:
            groups = [
                (
                    NUM_SPLITS <= self.groups <= 99,
                    ("groups",),
                    f"must be in {NUM_SPLITS}..99 (each split tests a third of the groups)",
                ),
                (
                    self.per_class >= self.groups,
                    ("per_class", "groups"),
                    "need at least as many videos per class as groups (no empty group)",
                ),
                (
                    math.ceil(self.per_class / self.groups) <= 99,
                    ("per_class", "groups"),
                    "at most 99 videos per group",
                ),
            ]
        checks = [
            (
                1 <= self.classes <= len(CLASS_NAMES),
                ("classes",),
                f"must be in 1..{len(CLASS_NAMES)} (there are {len(CLASS_NAMES)} motion classes)",
            ),
            *groups,
            (self.frames >= 1, ("frames",), "must be >= 1"),
            (self.height >= 16 and self.width >= 16, size, "height and width must be >= 16"),
            (
                self.height % 2 == 0 and self.width % 2 == 0,
                size,
                "height and width must be even (yuv420p halves the chroma planes)",
            ),
            (self.fps >= 1, ("fps",), "must be >= 1"),
            (self.max_objects >= 1, ("max_objects",), "must be >= 1"),
            (1 <= self.quality <= 31, ("quality",), "must be in 1..31"),
            (self.seed >= 0, ("seed",), "must be >= 0"),
            (self.camera in CAMERAS, ("camera",), f"must be one of {', '.join(CAMERAS)}"),
        ]
        for ok, fields, reason in checks:
            if not ok:
                raise SynthConfigError(fields, reason)

    def class_names(self) -> tuple[str, ...]:
        """Chosen class names in label order (label = position + 1)."""
        return tuple(sorted(CLASS_NAMES[: self.classes]))

    def to_dict(self) -> dict[str, object]:
        """Plain, JSON-able dict of the parameters that define the content (not `out`/`overwrite`)."""
        d = dataclasses.asdict(self)
        for key in ("out", "overwrite"):
            d.pop(key)
        if self.camera == "still":  # recorded only when moving: a still dataset's marker is as it always was
            d.pop("camera")
        d["format_version"] = _FORMAT_VERSION
        return d


@dataclass(frozen=True)
class SynthReport:
    """What `generate` produced."""

    out: Path
    video_root: Path
    split_root: Path
    class_names: tuple[str, ...]  # label order, label = index + 1
    videos: int
    written: int
    skipped: int
    frames: int
    height: int
    width: int
    seconds: float


@dataclass(frozen=True)
class VideoSpec:
    """One video of the dataset (group and clip are 1-based, as in UCF101 file names)."""

    class_name: str
    label: int  # 1-based
    group: int
    clip: int

    @property
    def relpath(self) -> str:
        """Path relative to the video root, with '/' as in the official split lists."""
        name = self.class_name
        return f"{name}/v_{name}_g{self.group:02d}_c{self.clip:02d}.avi"


@dataclass(frozen=True)
class Pose:
    """Per-frame pose of one sprite.

    centre: (T, 2) float, (x, y) in pixels, in [0, W) x [0, H) (positions wrap around the frame).
    angle: (T,) float, degrees in [0, 360), positive = clockwise as seen on screen.
    log_scale: (T,) float, natural log of the size factor, in [-0.5, 0.5).
    """

    centre: np.ndarray
    angle: np.ndarray
    log_scale: np.ndarray


@dataclass(frozen=True)
class Sprite:
    """A textured shape of side S. rgb: (S, S, 3) float32 premultiplied by alpha, in [0, 255];
    alpha: (S, S, 3) float32 in [0, 1], repeated over the channels (contiguous arrays composite fast)."""

    rgb: np.ndarray
    alpha: np.ndarray


# --------------------------------------------------------------------------------------------- layout


def clips_per_group(cfg: SynthConfig) -> list[int]:
    """Number of clips of each group (1-based groups in order), as even as possible, first groups larger."""
    base, extra = divmod(cfg.per_class, cfg.groups)
    return [base + (1 if g < extra else 0) for g in range(cfg.groups)]


def video_specs(cfg: SynthConfig) -> list[VideoSpec]:
    """All videos, sorted by label, group, clip (the order of the official lists)."""
    specs = []
    for label, name in enumerate(cfg.class_names(), start=1):
        for group, n_clips in enumerate(clips_per_group(cfg), start=1):
            specs.extend(VideoSpec(name, label, group, clip) for clip in range(1, n_clips + 1))
    return specs


def held_out_groups(groups: int, split: int) -> frozenset[int]:
    """1-based groups in the test list of `split` (1..3): the split-th of three contiguous chunks."""
    if not 1 <= split <= NUM_SPLITS:
        raise ValueError(f"split must be in 1..{NUM_SPLITS}, got {split}")
    chunks = np.array_split(np.arange(1, groups + 1), NUM_SPLITS)
    return frozenset(int(g) for g in chunks[split - 1])


def _write_crlf(path: Path, lines: Iterable[str]) -> None:
    """Write lines with CRLF endings (like the official UCF101 lists), atomically."""
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes("".join(f"{line}\r\n" for line in lines).encode("ascii"))
    os.replace(tmp, path)


def write_split_files(cfg: SynthConfig, split_root: Path) -> None:
    """Write classInd.txt and the three train/test lists (CRLF) into `split_root`."""
    split_root.mkdir(parents=True, exist_ok=True)
    names = cfg.class_names()
    _write_crlf(split_root / "classInd.txt", (f"{i} {n}" for i, n in enumerate(names, start=1)))
    specs = video_specs(cfg)
    for split in range(1, NUM_SPLITS + 1):
        held_out = held_out_groups(cfg.groups, split)
        train = [f"{s.relpath} {s.label}" for s in specs if s.group not in held_out]
        test = [s.relpath for s in specs if s.group in held_out]
        _write_crlf(split_root / f"trainlist{split:02d}.txt", train)
        _write_crlf(split_root / f"testlist{split:02d}.txt", test)


# --------------------------------------------------------------------------------------------- appearance


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """(H, W, 3) float32 smooth noise, roughly unit variance, `cells` blobs along the shorter side."""
    short = min(height, width)
    gh = max(2, round(cells * height / short))
    gw = max(2, round(cells * width / short))
    low = rng.standard_normal((gh, gw, 3)).astype(np.float32)
    return cv2.resize(low, (width, height), interpolation=cv2.INTER_CUBIC)


def make_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W, 3) float32 in [0, 255]: a random colour with coarse and fine colour noise."""
    base = rng.uniform(40.0, 215.0, size=3).astype(np.float32)
    coarse = _smooth_noise(rng, height, width, cells=4)
    fine = _smooth_noise(rng, height, width, cells=max(2, min(height, width) // 8))  # ~8 px blobs
    return np.clip(base + 45.0 * coarse + 15.0 * fine, 0.0, 255.0)


def _shape_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """(S, S) float32 alpha in [0, 1]: a random shape inside the disc of diameter `size` (anti-aliased)."""
    mask = np.zeros((size, size), np.uint8)
    c = (size - 1) / 2.0
    r = (size - 1) / 2.0
    kind = int(rng.integers(4))
    if kind == 0:  # ellipse, eccentric so that rotation shows
        axes = (round(r), max(2, round(r * rng.uniform(0.45, 0.8))))
        cv2.ellipse(
            mask, (round(c), round(c)), axes, float(rng.uniform(0, 180)), 0, 360, 255, -1, cv2.LINE_AA
        )
    else:  # triangle, quadrilateral or irregular pentagon with vertices on the circle
        n = (3, 4, 5)[kind - 1]
        # evenly spaced vertices with jitter: irregular but never degenerate
        angles = rng.uniform(0, 2 * np.pi) + (np.arange(n) + rng.uniform(-0.3, 0.3, n)) * (2 * np.pi / n)
        radius = r * rng.uniform(0.8, 1.0, n)
        pts = np.stack([c + radius * np.cos(angles), c + radius * np.sin(angles)], axis=1)
        cv2.fillPoly(mask, [np.round(pts * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
    return mask.astype(np.float32) / 255.0


def make_sprite(rng: np.random.Generator, size: int) -> Sprite:
    """A random shape with a striped two-colour texture plus colour noise, diameter `size` pixels."""
    alpha = _shape_mask(rng, size)
    c1, c2 = rng.uniform(0.0, 255.0, size=(2, 3)).astype(np.float32)
    theta = rng.uniform(0.0, np.pi)
    period = rng.uniform(4.0, 10.0)
    phase = rng.uniform(0.0, 2 * np.pi)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (x * np.cos(theta) + y * np.sin(theta)) / period + phase)
    mix = stripes[..., None]
    rgb = c1 * (1.0 - mix) + c2 * mix + 20.0 * _smooth_noise(rng, size, size, cells=3)
    rgb = np.clip(rgb, 0.0, 255.0)
    alpha3 = np.repeat(alpha[..., None], 3, axis=2)
    return Sprite(rgb=(rgb * alpha3).astype(np.float32), alpha=alpha3.astype(np.float32))


# --------------------------------------------------------------------------------------------- motion


def sample_pose(class_name: str, rng: np.random.Generator, frames: int, height: int, width: int) -> Pose:
    """Random initial pose and motion of class `class_name` for one sprite over `frames` frames.

    Only the change over time depends on the class. At every frame t and for every class, the pose is
    uniform: position over the frame, angle over [0, 360), log scale over [-0.5, 0.5), because the
    initial pose is uniform and the motions wrap around (translation modulo the frame size, zoom modulo
    the scale range: a zooming sprite jumps back to the other end of the range, as a translating one
    re-enters from the opposite border). The same random numbers are drawn for every class.
    """
    if class_name not in CLASS_NAMES:
        raise ValueError(f"unknown class {class_name!r}")
    extent = min(height, width)
    t = np.arange(frames, dtype=np.float64)
    x0, y0 = rng.uniform(0.0, width), rng.uniform(0.0, height)
    a0 = rng.uniform(0.0, 360.0)
    s0 = rng.uniform(0.0, 2 * _LOG_SCALE_RANGE)
    speed = rng.uniform(*_SPEED) * extent
    omega = rng.uniform(*_ANGULAR_SPEED)
    zoom = rng.uniform(*_ZOOM_RATE)
    amplitude = rng.uniform(*_OSC_AMPLITUDE) * extent
    period = rng.uniform(*_OSC_PERIOD)
    phase = rng.uniform(0.0, 2 * np.pi)
    axis = rng.uniform(0.0, 2 * np.pi)

    velocity = {
        "MoveLeft": (-speed, 0.0),
        "MoveRight": (speed, 0.0),
        "MoveUp": (0.0, -speed),
        "MoveDown": (0.0, speed),
    }.get(class_name, (0.0, 0.0))
    shift = t[:, None] * np.array(velocity)
    if class_name == "Oscillate":
        swing = amplitude * np.sin(2 * np.pi * t / period + phase)
        shift = swing[:, None] * np.array([np.cos(axis), np.sin(axis)])
    spin = {"RotateClockwise": omega, "RotateCounterClockwise": -omega}.get(class_name, 0.0)
    grow = {"ZoomIn": zoom, "ZoomOut": -zoom}.get(class_name, 0.0)
    centre = np.mod(np.array([x0, y0]) + shift, np.array([width, height], dtype=np.float64))
    angle = np.mod(a0 + spin * t, 360.0)
    log_scale = np.mod(s0 + grow * t, 2 * _LOG_SCALE_RANGE) - _LOG_SCALE_RANGE
    return Pose(centre=centre, angle=angle, log_scale=log_scale)


# --------------------------------------------------------------------------------------------- camera


def camera_path(cfg: SynthConfig, group: int, clip: int) -> np.ndarray:
    """(T, 2, 3) float64, T = cfg.frames: for each frame t the affine map A_t from the still camera's image to
    frame t's (pixel coordinates, x right, y down): a scene point seen at p by the still camera is filmed at
    ``A_t @ [p, 1]``. A rotation by theta_t (clockwise on screen) and a scale s_t about the image centre c,
    then a shift d_t: ``A_t p = c + s_t R(theta_t) (p - c) + d_t``. Identity for ``still``.

    The law of each camera is in the module docstring; the path depends on (seed, group, clip) and the frame
    size only, never on the class. The motion from frame t-1 to frame t is ``A_t A_{t-1}^-1``.
    """
    frames = cfg.frames
    if cfg.camera == "still":
        return np.tile(np.eye(2, 3), (frames, 1, 1))
    rng = np.random.default_rng([cfg.seed, _CAMERA_STREAM, group, clip])
    px = min(cfg.height, cfg.width) / _CAMERA_REFERENCE
    t = np.arange(frames, dtype=np.float64) - (frames - 1) / 2  # centred on the middle frame
    shift, turn, log_scale = np.zeros((frames, 2)), np.zeros(frames), np.zeros(frames)

    def direction() -> np.ndarray:
        phi = rng.uniform(0.0, 2 * np.pi)
        return np.array([np.cos(phi), np.sin(phi)])

    def sign() -> float:
        return 1.0 if rng.random() < 0.5 else -1.0

    if cfg.camera == "shake":
        shift = rng.uniform(0.0, _CAMERA_SHAKE, size=(frames, 2)) * px
    elif cfg.camera == "pan":
        speed = rng.uniform(*_CAMERA_PAN) * px
        shift = t[:, None] * speed * direction()
    elif cfg.camera == "zoom":
        log_scale = sign() * rng.uniform(*_CAMERA_ZOOM) * t
    elif cfg.camera == "rotate":
        turn = sign() * rng.uniform(*_CAMERA_TURN) * t
    else:  # handheld
        h = _HANDHELD
        speed = rng.uniform(0.0, h["drift"]) * px
        shift = t[:, None] * speed * direction() + rng.uniform(-h["jitter"], h["jitter"], (frames, 2)) * px
        wobble = rng.uniform(-h["turn_jitter"], h["turn_jitter"], frames)
        turn = rng.uniform(-h["turn"], h["turn"]) * t + wobble
        log_scale = rng.uniform(-h["zoom"], h["zoom"]) * t
    centre = np.array([(cfg.width - 1) / 2.0, (cfg.height - 1) / 2.0])
    angle, scale = np.deg2rad(turn), np.exp(log_scale)
    cos, sin = scale * np.cos(angle), scale * np.sin(angle)
    linear = np.stack([np.stack([cos, -sin], axis=-1), np.stack([sin, cos], axis=-1)], axis=1)  # (T, 2, 2)
    offset = centre + shift - linear @ centre
    return np.concatenate([linear, offset[..., None]], axis=2)


def _film(
    canvas: np.ndarray,
    corner: tuple[int, int],
    sprites: list[Sprite],
    poses: list[Pose],
    path: np.ndarray,
    height: int,
    width: int,
) -> np.ndarray:
    """Frames of a moving camera (T, H, W, 3) uint8: the background is the canvas seen through ``path``
    (`camera_path`; the still view is the canvas window at ``corner`` = (x0, y0); outside the canvas it is
    mirrored), the sprites are pasted at their poses carried by the same transform."""
    video = np.empty((len(path), height, width, 3), np.uint8)
    x0, y0 = corner
    for t, a in enumerate(path):
        to_image = a.copy()
        to_image[:, 2] -= a[:, :2] @ np.array([x0, y0], dtype=np.float64)  # canvas -> still view -> frame t
        frame = cv2.warpAffine(
            canvas, to_image, (width, height), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT_101
        )
        scale = math.sqrt(abs(np.linalg.det(a[:, :2])))
        turn = math.degrees(math.atan2(a[1, 0], a[0, 0]))  # clockwise on screen (y down)
        for sprite, pose in zip(sprites, poses, strict=True):
            cx, cy = a @ np.array([*pose.centre[t], 1.0])
            _paste(
                frame,
                sprite,
                float(np.mod(cx, width)),
                float(np.mod(cy, height)),
                float(pose.angle[t]) + turn,
                math.exp(pose.log_scale[t]) * scale,
            )
        video[t] = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
    return video


# --------------------------------------------------------------------------------------------- rendering


def _patch_size(sprite_size: int, scale: float) -> int:
    """Odd side of the square patch that holds a sprite (inscribed in a disc) at `scale`."""
    side = math.ceil(sprite_size * scale) + 2
    return side + 1 - side % 2


def _wrapped_runs(start: int, length: int, size: int) -> list[tuple[slice, slice]]:
    """Split [start, start + length) taken modulo `size` (length <= size) into (dst, src) slice runs."""
    first = start % size
    head = min(length, size - first)
    runs = [(slice(first, first + head), slice(0, head))]
    if head < length:
        runs.append((slice(0, length - head), slice(head, length)))
    return runs


def _paste(frame: np.ndarray, sprite: Sprite, cx: float, cy: float, angle_cw: float, scale: float) -> None:
    """Composite `sprite` onto `frame` (H, W, 3) float32 in place, centred at (cx, cy) with wrap-around."""
    height, width = frame.shape[:2]
    size = sprite.rgb.shape[0]
    side = min(_patch_size(size, scale), height, width)
    half = (side - 1) // 2
    ix, iy = math.floor(cx), math.floor(cy)
    src_c = (size - 1) / 2.0
    # cv2 angles are counter-clockwise on screen; the sub-pixel part of the position goes in the warp.
    m = cv2.getRotationMatrix2D((src_c, src_c), -angle_cw, scale)
    m[0, 2] += half - src_c + (cx - ix)
    m[1, 2] += half - src_c + (cy - iy)
    rgb = cv2.warpAffine(sprite.rgb, m, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    alpha = cv2.warpAffine(
        sprite.alpha, m, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
    )
    keep = 1.0 - alpha
    for dst_rows, src_rows in _wrapped_runs(iy - half, side, height):
        for dst_cols, src_cols in _wrapped_runs(ix - half, side, width):
            region = frame[dst_rows, dst_cols]  # a view: composite in place
            region *= keep[src_rows, src_cols]
            region += rgb[src_rows, src_cols]


def render_video(cfg: SynthConfig, class_name: str, group: int, clip: int) -> np.ndarray:
    """Render one clip: (T, H, W, 3) uint8 RGB, T = cfg.frames. Pure function of (cfg, class, group, clip)."""
    if group < 1 or clip < 1:
        raise ValueError(f"group and clip are 1-based, got group={group} clip={clip}")
    class_id = CLASS_NAMES.index(class_name)
    height, width, frames = cfg.height, cfg.width, cfg.frames
    extent = min(height, width)

    # Group appearance: background canvas larger than the frame, sprite shapes and textures.
    app = np.random.default_rng(
        [cfg.seed, group, 0] if cfg.shared_appearance else [cfg.seed, class_id, group, 0]
    )
    canvas = make_background(app, height + height // 2, width + width // 2)
    n_sprites = int(app.integers(1, cfg.max_objects + 1))
    sprites = [make_sprite(app, round(app.uniform(*_SPRITE_DIAMETER) * extent)) for _ in range(n_sprites)]

    # Clip: background crop, initial poses and motions.
    rng = np.random.default_rng([cfg.seed, class_id, group, clip])
    y0 = int(rng.integers(canvas.shape[0] - height + 1))
    x0 = int(rng.integers(canvas.shape[1] - width + 1))
    background = canvas[y0 : y0 + height, x0 : x0 + width]
    poses = [sample_pose(class_name, rng, frames, height, width) for _ in sprites]
    if cfg.camera != "still":
        return _film(canvas, (x0, y0), sprites, poses, camera_path(cfg, group, clip), height, width)

    video = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        frame = background.copy()
        for sprite, pose in zip(sprites, poses, strict=True):
            cx, cy = pose.centre[t]
            _paste(frame, sprite, float(cx), float(cy), float(pose.angle[t]), math.exp(pose.log_scale[t]))
        video[t] = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
    return video


# --------------------------------------------------------------------------------------------- encoding


def _palette_332() -> np.ndarray:
    """(256, 4) uint8 ARGB palette of the 3-3-2 colour cube (PyAV's pal8 palette row order is A, R, G, B)."""
    idx = np.arange(256)
    r = ((idx >> 5) & 7) * 255 // 7
    g = ((idx >> 2) & 7) * 255 // 7
    b = (idx & 3) * 255 // 3
    return np.stack([np.full(256, 255), r, g, b], axis=1).astype(np.uint8)


def quantize_332(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 RGB -> ((H, W) uint8 indices into the 3-3-2 palette, (H, W, 3) uint8 RGB they show)."""
    r = (rgb[..., 0].astype(np.uint16) * 7 + 127) // 255
    g = (rgb[..., 1].astype(np.uint16) * 7 + 127) // 255
    b = (rgb[..., 2].astype(np.uint16) * 3 + 127) // 255
    index = ((r << 5) | (g << 2) | b).astype(np.uint8)
    return index, _palette_332()[index][..., 1:]


def _to_av_frame(image: np.ndarray, pix_fmt: str) -> av.VideoFrame:
    """One (H, W, 3) RGB or (H, W) gray uint8 image as a PyAV frame (the encoder converts the format)."""
    if image.ndim == 2:
        if pix_fmt == "pal8":
            image = np.repeat(image[..., None], 3, axis=2)
        else:
            return av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="gray")
    if pix_fmt == "pal8":  # swscale cannot convert to pal8: quantise to a fixed palette ourselves
        index, _ = quantize_332(image)
        return av.VideoFrame.from_ndarray((index, _palette_332()), format="pal8")
    return av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")


def write_video(
    path: str | os.PathLike[str],
    frames: np.ndarray,
    fps: int = 25,
    codec: str = "mpeg4",
    pix_fmt: str = "yuv420p",
    *,
    quality: int | None = 2,
    bit_rate: int | None = None,
    options: Mapping[str, str] | None = None,
    container_format: str | None = None,
) -> None:
    """Encode `frames` to a video file with PyAV (single-threaded, deterministic).

    frames: (T, H, W, 3) uint8 RGB or (T, H, W) uint8 gray. fps: frames per second (integer).
    quality: fixed quantiser (qmin = qmax, 1 best .. 31) for mpeg4/mjpeg/mpeg1-2video, ignored otherwise.
    container_format: e.g. "avi" when `path` does not end in a known extension (default: from the name).

    Pairs checked by tests/test_synth.py (AVI container, sizes 96x128 and odd 239x321):
      mpeg4/yuv420p (lossy; this FFmpeg build accepts odd sizes too), mjpeg/yuvj444p (lossy, odd sizes),
      ffv1/yuv444p (near lossless: only the RGB<->YUV rounding), ffv1/bgr0 and png/rgb24 (lossless),
      ffv1/gray and png/gray (lossless for gray input), png/pal8 (lossless w.r.t. `quantize_332`: RGB is
      quantised to a fixed 3-3-2 palette because swscale cannot convert to pal8).
    Not supported: png or rawvideo in Matroska (FFmpeg refuses them).
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim not in (3, 4) or (frames.ndim == 4 and frames.shape[3] != 3):
        raise ValueError(f"frames must be uint8 (T, H, W, 3) or (T, H, W), got {frames.dtype} {frames.shape}")
    if len(frames) == 0:
        raise ValueError("frames is empty")
    height, width = frames.shape[1:3]
    with av.open(os.fspath(path), mode="w", format=container_format) as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        stream.width = width
        stream.height = height
        stream.pix_fmt = pix_fmt
        stream.thread_count = 1
        opts = dict(options or {})
        if quality is not None and codec in _QSCALE_CODECS:
            opts.update(qmin=str(quality), qmax=str(quality))
        if bit_rate is not None:
            stream.bit_rate = bit_rate
        stream.options = opts
        for i, image in enumerate(frames):
            frame = _to_av_frame(image, pix_fmt)
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


# --------------------------------------------------------------------------------------------- driver


def _check_marker(cfg: SynthConfig) -> bool:
    """Write/compare the config marker. Returns True if existing videos may be reused."""
    marker = cfg.out / CONFIG_FILE
    wanted = cfg.to_dict()
    if marker.exists():
        found = json.loads(marker.read_text())
        if found == wanted:
            return not cfg.overwrite
        if not cfg.overwrite:
            keys = sorted(set(found) | set(wanted))
            raise SynthExistsError(
                cfg.out, {k: (found.get(k), wanted.get(k)) for k in keys if found.get(k) != wanted.get(k)}
            )
    cfg.out.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_name(marker.name + ".part")
    tmp.write_text(json.dumps(wanted, indent=2, sort_keys=True))
    os.replace(tmp, marker)
    return False


def generate(cfg: SynthConfig) -> SynthReport:
    """Write the dataset described by `cfg` (layout in the module docstring) and return a report.

    Safe to re-run: with an unchanged config, videos already present are kept (each is written atomically).
    """
    start = time.perf_counter()
    reuse = _check_marker(cfg)
    video_root = cfg.out / VIDEO_DIR
    split_root = cfg.out / SPLIT_DIR
    written = skipped = 0
    specs = video_specs(cfg)
    for spec in specs:
        path = video_root / spec.relpath
        if reuse and path.exists():
            skipped += 1
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        video = render_video(cfg, spec.class_name, spec.group, spec.clip)
        tmp = path.with_name(path.name + ".part")
        write_video(tmp, video, cfg.fps, quality=cfg.quality, container_format="avi")
        os.replace(tmp, path)
        written += 1
    write_split_files(cfg, split_root)
    seconds = time.perf_counter() - start
    logger.info(
        "synthetic UCF101 layout: %d classes, %d videos (%d written, %d kept) in %s [%.1fs]",
        cfg.classes,
        len(specs),
        written,
        skipped,
        cfg.out,
        seconds,
    )
    return SynthReport(
        out=cfg.out,
        video_root=video_root,
        split_root=split_root,
        class_names=cfg.class_names(),
        videos=len(specs),
        written=written,
        skipped=skipped,
        frames=cfg.frames,
        height=cfg.height,
        width=cfg.width,
        seconds=seconds,
    )
