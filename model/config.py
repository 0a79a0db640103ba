"""Every configuration of the training core, torch-free: typed frozen dataclasses, the names their options
accept, and the presets (``model/presets/*.toml``).

Each option is declared once, as a dataclass field made by `option`: its type (the annotation), default,
help text, choices or range, and what a resumed run may do with it. cli.py generates the click options of
``iic train`` from these declarations (`OPTIONS`); presets and ``--config FILE`` are TOML files with the same
names. A run's config is resolved once (defaults, the method's defaults, the preset or config file, then the
flags: `build_config`), validated, printed at start and saved as a plain dict with every checkpoint
(`TrainConfig.to_dict`, `TrainConfig.from_dict`).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, from PyPI (setup.cfg)
    import tomli as tomllib

# ------------------------------------------------------------------------------------------ vocabulary

METHODS = ("iic", "dualvar")
NEGATIVES = (
    "repeat",
    "shuffle",
    "reverse",
    "none",
)  # IIC intra-negatives (reverse: not the paper's); none = CMC
HEADS = ("none", "mlp", "mlp-bn", "mlp-bn-out", "bn")  # model/nets/heads.py
VIEW2_TIMES = (
    "same",
    "other",
)  # IIC's view 2: the frames of view 1 (paper) or another random time of the video
RGB_AUGS = ("none", "simclr")  # IIC's RGB view: crop only (paper) | + SimCLR's colour jitter, grayscale, blur
POSITIVES = ("bank", "live")  # model/methods/iic.py, model/methods/variants.py
SCHEDULES = ("multistep", "cosine")
OPTIMIZERS = ("sgd", "adam")
CLIP_LOSSES = ("simclr", "moco")  # DualVar's L_clip: in-batch NT-Xent | a queue of momentum keys
FEATURES = ("conv5", "pool")  # model/nets/backbones.py: retrieval_feature

# A *modality* is what the loader reads from the shards (``rgb`` and ``res`` from the frames shard, ``flow``
# from the flow shard, ``camera`` the camera's motion from the camera shard with the frame before each clip
# frame); a *view* is what an encoder sees (model/data/views.py). ``flow-u``/``flow-v`` are IIC's
# one-component flow views, ``flow`` both components and the magnitude; ``res-aligned`` is the residual after
# the camera's motion (model/data/align.py), made of ``rgb`` and ``camera``.
MODALITIES = ("rgb", "res", "flow", "camera")
FLOW_COMPONENTS = ("flow-u", "flow-v")
# ``rgb-stable`` / ``res-stable``: the clip stabilised on its middle frame by the camera's motion, and the
# residual of its consecutive stabilised frames (model/data/align.py). With view 2 ``res-stable`` IIC's view 1
# (and so its intra-negatives) is ``rgb-stable``: a camera that moves every frame would otherwise tell every
# clip from its still intra-negative by itself.
# ``flow-u-aligned`` / ``flow-v-aligned``: a flow component after the camera's part of the flow (an affine
# field fitted robustly to the flow itself, model/data/views.py) is subtracted; made of ``flow`` alone.
FLOW_ALIGNED = ("flow-u-aligned", "flow-v-aligned")
ALIGNED_VIEWS = ("res-aligned", "res-stable", *FLOW_ALIGNED)  # view-2 choices without the camera's motion
STABLE_VIEWS = ("rgb-stable", "res-stable")
CAMERA_VIEWS = ("res-aligned", *STABLE_VIEWS)  # every view that needs the ``camera`` modality
VIEWS = ("rgb", "res", *ALIGNED_VIEWS, *FLOW_COMPONENTS, "flow")
EVAL_VIEWS = ("rgb", "res", *CAMERA_VIEWS, *FLOW_COMPONENTS, *FLOW_ALIGNED)  # what evaluation scores a net on


def view1_of(view2: str) -> str:
    """IIC's view 1 for a view 2: ``rgb-stable`` beside ``res-stable``, else ``rgb``."""
    return "rgb-stable" if view2 == "res-stable" else "rgb"


def modality_of(view: str) -> str:
    """The stored modality a view is computed from (the camera views: ``camera``, with ``rgb``)."""
    known = dict.fromkeys((*VIEWS, *EVAL_VIEWS))
    if view not in known:
        raise ValueError(f"unknown view {view!r}; choose one of {', '.join(known)}")
    if view in CAMERA_VIEWS:
        return "camera"
    return "flow" if view.startswith("flow") else view


def modalities_for(views: Iterable[str]) -> tuple[str, ...]:
    """The stored modalities the loader must read for these views, in ``MODALITIES`` order (``camera``
    brings ``rgb``: the aligned residual is taken of the RGB frames)."""
    needed = {modality_of(v) for v in views}
    if "camera" in needed:
        needed.add("rgb")
    return tuple(m for m in MODALITIES if m in needed)


class ConfigError(ValueError):
    """An invalid or inconsistent configuration (one-line message)."""


def check_device(name: str) -> str:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``, else a ConfigError in the words of every command."""
    ok = name in ("auto", "cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit())
    if not ok:
        raise ConfigError(f"--device {name!r} is unknown; choose one of auto, cpu, cuda, cuda:N")
    return name


# ------------------------------------------------------------------------------------------ declarations

RESUME_FIXED, RESUME_FREE, RESUME_EXTEND = "fixed", "free", "extend"


def option(
    default: Any,
    help: str,
    *,
    choices: tuple[str, ...] | None = None,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    flag: str | None = None,
    cli: bool = True,
    resume: str = RESUME_FIXED,
) -> Any:
    """A config field with everything the command line needs: ``help``, ``choices`` or a range
    [``low``, ``high``] (``low_open``/``high_open``: that bound excluded), its ``flag`` (default: ``--`` + the
    name with dashes), ``cli=False`` for the places that cli.py sets itself. ``resume``: what ``iic train
    --resume`` allows: fixed (the run's recipe), free (where and how it runs) or extend (``epochs``: more of
    them continue the run)."""
    meta = dict(
        help=help,
        choices=choices,
        low=low,
        high=high,
        low_open=low_open,
        high_open=high_open,
        flag=flag,
        cli=cli,
        resume=resume,
    )
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Option:
    """One command-line option generated from a config field."""

    path: str  # where it lives: "epochs", "iic.K"
    name: str  # its keyword (the flag without dashes, dashes as underscores): "epochs", "K", "batch_size"
    flag: str  # "--epochs", "--K"
    kind: type  # int, float, str, bool, tuple (of floats), Path
    default: Any
    help: str
    choices: tuple[str, ...] | None
    low: float | None
    high: float | None
    low_open: bool
    high_open: bool
    resume: str
    cli: bool


def _kind(annotation: Any) -> type:
    text = str(annotation)
    for kind in (bool, int, float, str):
        if annotation is kind or text == kind.__name__:
            return kind
    if text.startswith("tuple"):
        return tuple
    if "Path" in text:
        return Path
    raise TypeError(f"no command-line kind for {annotation!r}")


def options_of(cls: type, prefix: str = "") -> list[Option]:
    """The `Option` of every field of ``cls`` declared with `option` (nested sections: their own fields)."""
    hints = get_type_hints(cls)
    out = []
    for f in fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += options_of(hints[f.name], f"{prefix}{f.name}.")
            continue
        if "help" not in f.metadata:
            continue
        m = f.metadata
        flag = m["flag"] or "--" + f.name.replace("_", "-")
        out.append(
            Option(
                prefix + f.name,
                flag.lstrip("-").replace("-", "_"),
                flag,
                _kind(hints[f.name]),
                f.default,
                m["help"],
                m["choices"],
                m["low"],
                m["high"],
                m["low_open"],
                m["high_open"],
                m["resume"],
                m["cli"],
            )
        )
    return out


def check_option(opt: Option, value: Any) -> None:
    """Refuse a value outside ``opt``'s choices or range, in the words every command uses."""
    if opt.choices is not None and value not in opt.choices:
        raise ConfigError(f"{opt.flag} {value!r} is unknown; choose one of {', '.join(opt.choices)}")
    if opt.kind in (int, float) and not isinstance(value, bool):
        too_low = opt.low is not None and (value <= opt.low if opt.low_open else value < opt.low)
        too_high = opt.high is not None and (value >= opt.high if opt.high_open else value > opt.high)
        if too_low or too_high:
            raise ConfigError(f"{opt.flag} {value} is out of range; need {range_text(opt)}")


def range_text(opt: Option) -> str:
    """``0 <= x < 1``, ``x > 0``, ``x >= 2``: an option's range as its messages and --help say it."""
    low = f"{opt.low:g} {'<' if opt.low_open else '<='} " if opt.low is not None else ""
    high = f" {'<' if opt.high_open else '<='} {opt.high:g}" if opt.high is not None else ""
    return f"{low}x{high}"


# ------------------------------------------------------------------------------------------ backbones

ARCHS = ("r3d", "r21d", "c3d")
# Units per stage conv2..conv5: residual blocks for r3d/r21d, conv+BN+ReLU units for c3d.
DEFAULT_BLOCKS: dict[str, tuple[int, int, int, int]] = {
    "r3d": (1, 1, 1, 1),
    "r21d": (1, 1, 1, 1),
    "c3d": (1, 2, 2, 2),
}
# Output channels of conv1..conv5 as multiples of `width`.
WIDTH_MULTIPLIERS: dict[str, tuple[int, ...]] = {
    "r3d": (1, 1, 2, 4, 8),
    "r21d": (1, 1, 2, 4, 8),
    "c3d": (1, 2, 4, 8, 8),
}


@dataclass(frozen=True)
class BackboneConfig:
    """Backbone architecture (built by model/nets/backbones.py).

    arch: ``"r3d"`` | ``"r21d"`` | ``"c3d"``.
    width: channels of conv1; conv1..conv5 have width x (1, 1, 2, 4, 8) for the ResNets and
        width x (1, 2, 4, 8, 8) for C3D, so ``out_dim = 8 * width``.
    blocks: units in each of the stages conv2..conv5 (residual blocks, or C3D conv units).
        ``None`` means the arch's standard layout: (1, 1, 1, 1) for the 10-layer ResNets,
        (1, 2, 2, 2) for C3D; (2, 2, 2, 2) gives an 18-layer ResNet.
    in_channels: channels of the input clip (3 for RGB, residual frames and replicated flow).
    """

    arch: str = "r3d"
    width: int = 64
    blocks: tuple[int, ...] | None = None
    in_channels: int = 3

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"unknown backbone arch {self.arch!r}; expected one of {', '.join(ARCHS)}")
        blocks = DEFAULT_BLOCKS[self.arch] if self.blocks is None else tuple(int(b) for b in self.blocks)
        if len(blocks) != 4 or min(blocks) < 1:
            raise ValueError(f"blocks must be 4 positive ints (stages conv2..conv5), got {self.blocks!r}")
        if self.width < 1 or self.in_channels < 1:
            raise ValueError(f"width and in_channels must be positive, got {self.width}, {self.in_channels}")
        # Stored resolved (and as a tuple even when read back from JSON) so the saved dict is explicit.
        object.__setattr__(self, "blocks", blocks)

    @property
    def stage_channels(self) -> tuple[int, ...]:
        """Output channels of conv1..conv5."""
        return tuple(self.width * m for m in WIDTH_MULTIPLIERS[self.arch])

    @property
    def out_dim(self) -> int:
        """Channels of conv5, i.e. the size of the pooled feature."""
        return self.stage_channels[-1]


BACKBONES: dict[str, BackboneConfig] = {
    "r3d-10": BackboneConfig("r3d"),
    "r3d-18": BackboneConfig("r3d", blocks=(2, 2, 2, 2)),
    "r21d-10": BackboneConfig("r21d"),
    "r21d-18": BackboneConfig("r21d", blocks=(2, 2, 2, 2)),
    "c3d": BackboneConfig("c3d"),
    # Tiny variants (out_dim 64) for tests and CPU smoke runs; "tiny" is the R3D one.
    "tiny": BackboneConfig("r3d", width=8),
    "r3d-tiny": BackboneConfig("r3d", width=8),
    "r21d-tiny": BackboneConfig("r21d", width=8),
    "c3d-tiny": BackboneConfig("c3d", width=8),
    # Twice the tiny width (out_dim 128, ~4x the compute): the CPU ablation's "wider backbone".
    "r3d-small": BackboneConfig("r3d", width=16),
}


def backbone_config(name: str) -> BackboneConfig:
    """The named backbone (see ``BACKBONES``); adjust with ``dataclasses.replace``."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone preset {name!r}; expected one of {', '.join(BACKBONES)}")
    return BACKBONES[name]


# ------------------------------------------------------------------------------------------ the methods


@dataclass(frozen=True)
class SimCLRAugmentConfig:
    """SimCLR's augmentation of clips (Chen et al. 2020, appendix A), applied by model/data/augment.py:
    DualVar's views, and IIC's RGB view with ``--rgb-aug simclr``. Set with ``--dualvar KEY=VALUE``.

    crop, flip:        random square crop, horizontal flip with p = 0.5 (a run's are
    `TrainConfig.crop`/``flip``). jitter_p:          probability of colour jitter; then
    brightness/contrast/saturation factors are drawn
                       from [1 - s, 1 + s] (s = ``brightness``, ``contrast``, ``saturation``) and a hue shift
                       from [-hue, hue] turns (order b, c, s, h; SimCLR's strength 0.5: 0.4, 0.4, 0.4, 0.1).
    grayscale_p:       probability of converting the clip to grey (0 = off).
    blur_p:            probability of a Gaussian blur with sigma ~ U[blur_sigma]; kernel ~10 % of the crop.
    train:             False = centre crop and nothing else (the deterministic view).
    """

    crop: int = 112
    flip: bool = True
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    train: bool = True

    def __post_init__(self) -> None:
        for name in ("jitter_p", "grayscale_p", "blur_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("brightness", "contrast", "saturation"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {self.hue}")
        lo, hi = self.blur_sigma
        if not 0 < lo <= hi:
            raise ValueError(f"blur_sigma must be 0 < low <= high, got {self.blur_sigma}")
        object.__setattr__(self, "blur_sigma", (float(lo), float(hi)))  # a list read back from JSON

    @property
    def blur_kernel(self) -> int:
        """Odd kernel side, about 10 % of the crop (SimCLR: 23 for 224)."""
        return max(3, (self.crop // 10) | 1)


@dataclass(frozen=True)
class IICConfig:
    """IIC's options (model/methods/iic.py; docs/method.md). The paper's are ``neg``, ``K``, ``tau``, ``m``;
    the others select the variants of model/methods/variants.py (the CPU recipe and the ablations)."""

    neg: str = option(
        "repeat",
        "Intra-negative: repeat (one frame held), shuffle (two of four chunks swapped), "
        "reverse (played backwards; not the paper's) or none (the CMC baseline).",
        choices=NEGATIVES,
    )
    K: int = option(
        1024,
        "Negatives per sample drawn from each memory bank (0: none; needs --positive live "
        "--batch-negatives).",
        low=0,
    )
    tau: float = option(0.07, "Temperature of the logits.", low=0, low_open=True)
    m: float = option(
        0.5,
        "Momentum of the memory-bank update M[y] <- normalize(m M[y] + (1 - m) f).",
        low=0,
        high=1,
        high_open=True,
    )
    normalize: bool = option(
        True,
        "L2-normalise f1, f2 and the intra-negative before the dot products (the "
        "authors' code feeds the raw features; docs/method.md).",
    )
    positive: str = option(
        "bank",
        "The positive: the other view's bank row (paper) or its feature of the same "
        "step (live; the CPU recipe).",
        choices=POSITIVES,
    )
    live_negative: bool = option(
        False, "Also contrast with the current intra-negative (with gradient), not only its bank row."
    )
    batch_negatives: bool = option(
        False,
        "Also contrast with the batch's other clips and intra-negatives (live, "
        "with gradient; the CPU recipe).",
    )
    head: str = option(
        "none",
        "Projection head: none (paper), mlp (512-512-128 + L2, the authors' v2 code), "
        "mlp-bn (+ BatchNorm in its hidden layer), mlp-bn-out (+ a centring one on its output) or "
        "bn (a centring BatchNorm).",
        choices=HEADS,
    )
    view2_time: str = option(
        "same",
        "View 2 from the frames of view 1 (same, the paper's) or from another random "
        "time of the video (other).",
        choices=VIEW2_TIMES,
    )
    rgb_aug: str = option(
        "none",
        "The RGB view's augmentation: random crop only (none, the paper's) or also "
        "SimCLR's colour jitter, grayscale and blur (simclr).",
        choices=RGB_AUGS,
    )


@dataclass(frozen=True)
class DualVarConfig:
    """DualVar's options (model/methods/dualvar.py; docs/method.md). Set with ``--dualvar KEY=VALUE``."""

    clip_dim: int = 128  # L_clip embedding
    n_segments: int = 2  # S, slots per clip
    slot_dim: int = 64  # d, per-slot embedding
    tau_clip: float = 0.07
    tau_tc: float = 0.07
    theta: float = 0.05  # shuffle-rank temperature
    rank_clamp: float = 5.0  # upper clamp of (s_neg - s_pos) / theta
    w_clip: float = 1.0
    w_tc: float = 1.0
    w_rank_v0: float = 0.5  # reference = view 0
    w_rank_v2: float = 0.5  # reference = view 2 (unshuffled copy)
    clip_loss: str = "simclr"  # "simclr" (in-batch NT-Xent) or "moco" (queue of momentum keys)
    moco_k: int = 16384
    moco_m: float = 0.999
    allow_identity_shuffle: bool = True

    def __post_init__(self) -> None:
        if self.clip_loss not in CLIP_LOSSES:
            raise ValueError(f"clip_loss must be one of {', '.join(CLIP_LOSSES)}, got {self.clip_loss!r}")
        if self.n_segments < 2:
            raise ValueError(f"n_segments must be >= 2, got {self.n_segments}")
        for name in ("tau_clip", "tau_tc", "theta"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if not 0.0 <= self.moco_m < 1.0:
            raise ValueError(f"moco_m must be in [0, 1), got {self.moco_m}")


# SimCLR's crop and flip are the run's own (`TrainConfig.crop`, ``flip``); ``train`` is the loader's mode.
_SHARED_AUG = ("crop", "flip", "train")


# ------------------------------------------------------------------------------------------ a training run


@dataclass(frozen=True)
class TrainConfig:
    """One ``iic train`` run. The paper's IIC recipe is the default; presets and flags change it."""

    # data (``data`` and ``out`` are places: cli.py's --data/--dataset and --out set them)
    data: Path = option(Path("data/ucf101"), "Processed dataset folder.", cli=False, resume=RESUME_FREE)
    out: Path = option(Path("data/runs/iic"), "Run folder.", cli=False, resume=RESUME_FREE)
    split: int = option(1, "Official split whose train list is used.", low=1, high=3)
    frames: int = option(16, "Frames per clip (T).", low=2)
    stride: int = option(1, "Frame stride within a clip (DualVar: 4).", low=1)
    crop: int = option(112, "Side of the square random crop of the stored frames, px.", low=8)
    flip: bool = option(False, "Random horizontal flip (IIC: off; DualVar: on).")
    workers: int = option(4, "DataLoader worker processes.", low=0, resume=RESUME_FREE)
    skip_corrupt: bool = option(
        False,
        "Leave out clips whose stored bytes are damaged (each video said once, "
        "counted at the end) instead of stopping at the first; one process only.",
        resume=RESUME_FREE,
    )
    # the method
    method: str = option("iic", "Objective: IIC (CMC with --neg none) or DualVar.", choices=METHODS)
    model: str = option("r3d-10", "Backbone.", choices=tuple(BACKBONES))
    view2: str = option("res", "The second view contrasted with RGB.", choices=VIEWS)
    iic: IICConfig = IICConfig()
    dualvar: DualVarConfig = DualVarConfig()
    simclr: SimCLRAugmentConfig = SimCLRAugmentConfig()
    # optimisation (IIC: SGD 0.01, momentum 0.9, wd 1e-4, batch 16, 240 epochs, x0.2 at 45/90/125/160)
    epochs: int = option(
        240,
        "Training epochs (on --resume: more extend the run; docs/method.md, schedules).",
        low=1,
        resume=RESUME_EXTEND,
    )
    batch_size: int = option(
        16,
        "Clips per optimiser step, over all processes (under torchrun each of N "
        "processes takes batch-size / N).",
        low=2,
    )
    lr: float = option(
        0.01,
        "Peak learning rate (for the whole --batch-size: no scaling with processes).",
        low=0,
        low_open=True,
    )
    optimizer: str = option("sgd", "sgd (the paper's) or adam (the tiny CPU presets).", choices=OPTIMIZERS)
    momentum: float = option(0.9, "SGD momentum.", low=0, high=1, high_open=True)
    weight_decay: float = option(1e-4, "L2 weight decay.", low=0)
    schedule: str = option(
        "multistep", "Learning-rate decay: the paper's steps (multistep) or cosine to 0.", choices=SCHEDULES
    )
    milestones: tuple[float, ...] = option(
        (45 / 240, 90 / 240, 125 / 240, 160 / 240),
        "multistep: where the rate is multiplied by --gamma, as fractions of the run (comma-separated).",
    )
    gamma: float = option(0.2, "multistep: the factor at each milestone.", low=0, low_open=True)
    warmup_epochs: int = option(0, "Linear learning-rate warm-up, then the schedule.", low=0)
    # where and how it runs
    device: str = option("auto", "auto (CUDA when available) | cpu | cuda | cuda:N.", resume=RESUME_FREE)
    threads: int = option(
        0,
        "CPU threads for the run (0 = torch's default); CPU results are bit-identical for the same count.",
        low=0,
        resume=RESUME_FREE,
    )
    amp: bool = option(
        True, "Mixed precision on CUDA (fp16 autocast; ignored on the CPU).", resume=RESUME_FREE
    )
    seed: int = option(0, "Seed of initialisation, sampling and augmentation.", low=0)
    log_every: int = option(
        10, "Optimiser steps between metric lines of metrics.jsonl.", low=1, resume=RESUME_FREE
    )
    monitor_every: int = option(
        10, "Epochs between the test-split retrieval top-1 checks (0 = off).", low=0, resume=RESUME_FREE
    )

    def __post_init__(self) -> None:
        if (self.simclr.crop, self.simclr.flip) != (self.crop, self.flip):
            object.__setattr__(
                self, "simclr", dataclasses.replace(self.simclr, crop=self.crop, flip=self.flip)
            )

    def milestone_epochs(self) -> list[int]:
        """The decay epochs: ``milestones`` (fractions) of ``epochs`` (the paper's 45/90/125/160 of 240)."""
        return sorted(
            {max(1, round(f * self.epochs)) for f in self.milestones if round(f * self.epochs) < self.epochs}
        )

    @property
    def modalities(self) -> tuple[str, ...]:
        """What the loader must read for this config."""
        return modalities_for(("rgb", self.view2))

    @property
    def clips_per_sample(self) -> int:
        """Clips the loader reads per video and step: DualVar contrasts two random times of a video."""
        return 2 if self.method == "dualvar" or self.iic.view2_time == "other" else 1

    @property
    def sections(self) -> tuple[str, ...]:
        """The method sections this run uses (the others stay at their defaults and are not saved)."""
        if self.method == "dualvar":
            return ("dualvar", "simclr")
        return ("iic", "simclr") if self.iic.rgb_aug == "simclr" else ("iic",)

    def validate(self) -> TrainConfig:
        for opt in OPTIONS:
            check_option(opt, get_path(self, opt.path))
        self._refuse_unused_sections()
        check_device(self.device)
        iic = self.iic
        checks = [
            (
                self.method != "iic" or iic.neg != "shuffle" or self.frames % 4 == 0,
                f"--neg shuffle splits a clip into 4 chunks: --frames {self.frames} is not divisible by 4",
            ),
            (
                not (iic.live_negative and iic.neg == "none"),
                "--live-negative needs an intra-negative (--neg repeat|shuffle)",
            ),
            (
                iic.K > 0 or (iic.positive == "live" and iic.batch_negatives and not iic.live_negative),
                "--K 0 (no bank negatives) needs --positive live --batch-negatives, without --live-negative",
            ),
            (
                self.warmup_epochs <= self.epochs,
                f"--warmup-epochs {self.warmup_epochs}: the warm-up must fit in the run "
                f"(--epochs {self.epochs})",
            ),
            (
                all(0 < f < 1 for f in self.milestones),
                f"--milestones {self.milestones}: fractions of the run in (0, 1)",
            ),
            (
                self.method == "iic" or self.view2 not in STABLE_VIEWS,
                f"--view2 {self.view2} is IIC's (its view 1 is then rgb-stable); DualVar takes res-aligned",
            ),
            (
                self.method != "dualvar" or self.frames % self.dualvar.n_segments == 0,
                f"DualVar splits a clip into {self.dualvar.n_segments} segments: "
                f"--frames {self.frames} is not divisible",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self

    def _refuse_unused_sections(self) -> None:
        for section in ("iic", "dualvar", "simclr"):
            if section not in self.sections and _changed(getattr(self, section)):
                raise unused_option(section, _changed(getattr(self, section))[0])

    def to_dict(self) -> dict:
        """The plain dict saved with every checkpoint and as config.json: every field, the sections the
        method uses (`sections`)."""
        d = dataclasses.asdict(self)
        for section in ("iic", "dualvar", "simclr"):
            if section not in self.sections:
                del d[section]
        d.update(data=str(self.data), out=str(self.out), milestones=list(self.milestones))
        if "simclr" in d:
            d["simclr"] = {k: v for k, v in d["simclr"].items() if k not in _SHARED_AUG}
            d["simclr"]["blur_sigma"] = list(d["simclr"]["blur_sigma"])
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> TrainConfig:
        """The config of a saved dict (`to_dict`, or the layouts of older checkpoints)."""
        d = _upgrade(dict(d))
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"config has unknown keys {sorted(unknown)}")
        sections = {"iic": IICConfig, "dualvar": DualVarConfig, "simclr": SimCLRAugmentConfig}
        try:
            for name, section in sections.items():
                d[name] = _section(section, d.get(name) or {}, name)
            for key, kind in (("data", Path), ("out", Path), ("milestones", tuple)):
                if key in d:
                    d[key] = kind(d[key])
            return cls(**d)
        except TypeError as err:
            raise ConfigError(f"config does not fit this version: {err}") from None


# Why DualVar refuses each IIC option (and what to use instead).
_NOT_DUALVAR = {
    "neg": "intra-negatives are an IIC option; DualVar takes none",
    "head": "is IIC's projection head; DualVar always has its own clip and series heads",
    "view2_time": "is an IIC option; DualVar always contrasts two times of a video",
    "rgb_aug": "is an IIC option; DualVar always applies its SimCLR augmentation",
}
_BANKS = (
    "is an IIC memory-bank option; DualVar has no memory banks (its MoCo queue: --dualvar clip_loss=moco "
    "--dualvar moco_k=N)"
)


def unused_option(section: str, name: str) -> ConfigError:
    """The refusal of an option of a section the run's method does not use, naming the option as given."""
    if section == "iic":
        return ConfigError(f"{OPTIONS_BY_PATH[f'iic.{name}'].flag} {_NOT_DUALVAR.get(name, _BANKS)}")
    if section == "dualvar":
        return ConfigError(f"DualVar options (--dualvar {name}=...) need --method dualvar")
    return ConfigError(
        f"SimCLR augmentation options (--dualvar {name}=...) need --method dualvar or --rgb-aug simclr"
    )


OPTIONS: tuple[Option, ...] = tuple(options_of(TrainConfig))
OPTIONS_BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}
OPTIONS_BY_PATH: dict[str, Option] = {o.path: o for o in OPTIONS}
assert len(OPTIONS_BY_NAME) == len(OPTIONS), "two options share a name"


def get_path(cfg: Any, path: str) -> Any:
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _changed(section: Any) -> list[str]:
    """Fields of a section that differ from its defaults (crop and flip of SimCLR's follow the run's)."""
    default = type(section)()
    return [
        f.name
        for f in fields(section)
        if f.name not in _SHARED_AUG and getattr(section, f.name) != getattr(default, f.name)
    ]


def _section(cls: type, values: Mapping, name: str) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown {name} option {unknown[0]!r}; choose from {', '.join(sorted(known))}")
    values = dict(values)
    if "blur_sigma" in values:
        values["blur_sigma"] = tuple(values["blur_sigma"])
    try:
        return cls(**values)
    except ValueError as err:
        raise ConfigError(f"{name}: {err}") from None


# Options that were removed, with the only value they ever held in a saved config: `_upgrade` drops them.
RETIRED_OPTIONS: dict = {"jitter": 0.0}  # IIC colour jitter (the paper's recipe has none)
_IIC_FIELDS = tuple(f.name for f in fields(IICConfig))


def _upgrade(d: dict) -> dict:
    """Older checkpoints' configs: IIC's options as top-level fields (and DualVar runs' unused ones), the
    DualVar and SimCLR options in one dict, ``head`` a bool, retired options."""
    for key, only in RETIRED_OPTIONS.items():
        if key in d and (value := d.pop(key)) != only:
            raise ConfigError(f"config sets {key}={value}, an option this version no longer has")
    flat = {k: d.pop(k) for k in _IIC_FIELDS if k in d}
    if isinstance(flat.get("head"), bool):
        flat["head"] = "mlp" if flat["head"] else "none"
    if flat and d.get("method", "iic") == "iic":
        d["iic"] = {**flat, **(d.get("iic") or {})}
    if isinstance(d.get("dualvar"), dict) and "simclr" not in d:  # one dict of both, by name
        d["dualvar"], d["simclr"] = split_key_values(d["dualvar"])
    return d


# ------------------------------------------------------------------------------------------ KEY=VALUE

_KV_OPTIONS = {
    "dualvar": tuple(f.name for f in fields(DualVarConfig)),
    "simclr": tuple(f.name for f in fields(SimCLRAugmentConfig) if f.name not in _SHARED_AUG),
}
_KV_ALL = ", ".join(_KV_OPTIONS["dualvar"] + _KV_OPTIONS["simclr"])


def split_key_values(options: Mapping) -> tuple[dict, dict]:
    """``{name: value}`` of DualVar's and SimCLR's options -> (the dualvar section, the simclr section)."""
    unknown = sorted(set(options) - set(_KV_OPTIONS["dualvar"]) - set(_KV_OPTIONS["simclr"]))
    if unknown:
        raise ConfigError(f"unknown DualVar option {unknown[0]!r}; choose from {_KV_ALL}")
    return (
        {k: v for k, v in options.items() if k in _KV_OPTIONS["dualvar"]},
        {k: v for k, v in options.items() if k in _KV_OPTIONS["simclr"]},
    )


def parse_key_values(items: Iterable[str]) -> dict:
    """``["tau_clip=0.1", "clip_loss=moco", "blur_sigma=0.1,2"]`` -> ``{"dualvar": {...}, "simclr": {...}}``,
    each value of its field's type."""
    defaults = {**dataclasses.asdict(DualVarConfig()), **dataclasses.asdict(SimCLRAugmentConfig())}
    values = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in _KV_OPTIONS["dualvar"] + _KV_OPTIONS["simclr"]:
            raise ConfigError(f"--dualvar {item!r}: expected KEY=VALUE with KEY one of {_KV_ALL}")
        kind = type(defaults[key])
        try:
            if kind is bool:
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError
                value = text.lower() in ("true", "1")
            elif kind is tuple:
                value = tuple(float(v) for v in text.split(","))
            else:
                value = kind(text)
        except ValueError:
            raise ConfigError(f"--dualvar {item!r}: {text!r} is not a {kind.__name__}") from None
        values[key] = value
    dualvar, simclr = split_key_values(values)
    return {k: v for k, v in (("dualvar", dualvar), ("simclr", simclr)) if v}


# ------------------------------------------------------------------------------------------ presets, files

PRESET_DIR = Path(__file__).with_name("presets")
# What --method X alone means: the method's own recipe under the preset and the flags.
METHOD_DEFAULTS: dict[str, dict] = {"dualvar": dict(view2="rgb", stride=4, flip=True)}


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def preset_path(name: str) -> Path:
    path = PRESET_DIR / f"{name}.toml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(preset_names())}")
    return path


def read_config_file(path: Path, _seen: tuple[Path, ...] = ()) -> dict:
    """The values of a TOML config file, on top of its ``base`` preset (recursively): top-level options and
    sections (``[iic]``, ``[dualvar]``, ``[simclr]``) by field name; ``description`` is dropped."""
    path = Path(path)
    if path in _seen:
        raise ConfigError(f"{path}: its base presets form a loop")
    try:
        values = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"cannot read config file {path}: {err}") from None
    base = values.pop("base", None)
    values.pop("description", None)
    if base is not None:
        values = merge(read_config_file(preset_path(base), (*_seen, path)), values)
    return values


def describe_file(path: Path) -> str:
    """A config file's ``description``."""
    return str(tomllib.loads(Path(path).read_text()).get("description", ""))


def merge(base: Mapping, top: Mapping) -> dict:
    """``top`` over ``base``, sections merged field by field."""
    out = dict(base)
    for k, v in top.items():
        out[k] = merge(out.get(k) or {}, v) if isinstance(v, Mapping) else v
    return out


def _nest(overrides: Mapping) -> dict:
    """Flat overrides (option names ``K``, paths ``iic.K``, section dicts ``dualvar={...}``, places ``data``,
    ``out``) -> the nested layout of `TrainConfig.to_dict`."""
    nested: dict = {}
    places = {f.name for f in fields(TrainConfig)}
    for key, value in overrides.items():
        if isinstance(value, Mapping):
            nested = merge(nested, {key: value})
        elif key in OPTIONS_BY_NAME or "." in key:
            path = OPTIONS_BY_NAME[key].path if key in OPTIONS_BY_NAME else key
            section, _, name = path.rpartition(".")
            nested = merge(nested, {section: {name: value}} if section else {name: value})
        elif key in places:
            nested[key] = value
        else:
            raise ConfigError(f"unknown option {key!r}")
    return nested


def build_config(preset: str | None = None, config_file: Path | None = None, **overrides: Any) -> TrainConfig:
    """Resolve a run's config: defaults, the method's defaults, the preset (or config file), then every
    override that is not None (option names as the flags', e.g. ``neg="shuffle"``, ``epochs=3``; sections as
    dicts, e.g. ``dualvar={"tau_clip": 0.1}``); validated."""
    if preset is not None and config_file is not None:
        raise ConfigError("--preset and --config exclude each other (a config file may name a base preset)")
    base = (
        read_config_file(preset_path(preset) if preset is not None else config_file)
        if (preset or config_file)
        else {}
    )
    given = _nest({k: v for k, v in overrides.items() if v is not None})
    method = given.get("method", base.get("method", "iic"))
    values = merge(merge(METHOD_DEFAULTS.get(method, {}), base), given)
    unknown = sorted(set(values) - {f.name for f in fields(TrainConfig)})
    if unknown:
        raise ConfigError(f"unknown option {unknown[0]!r} in {config_file or preset or 'the overrides'}")
    if method == "dualvar" and values.get("iic"):  # given, even at its default: the method would ignore it
        raise unused_option("iic", next(iter(values["iic"])))
    try:
        return TrainConfig.from_dict(values).validate()
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(str(err)) from None


def flat_dict(d: Mapping, prefix: str = "") -> dict:
    """``{"iic": {"K": 0}}`` -> ``{"iic.K": 0}``: the dotted names that `refuse_changes` reports."""
    out = {}
    for k, v in d.items():
        out.update(flat_dict(v, f"{prefix}{k}.") if isinstance(v, Mapping) else {f"{prefix}{k}": v})
    return out


def recipe_changes(saved: TrainConfig, asked: TrainConfig) -> list[str]:
    """Where ``asked`` differs from ``saved`` in a fixed option (the run's recipe): ``--neg shuffle (the
    run's: repeat)``, or ``dualvar.tau_clip 0.1 (...)`` for an option without a flag of its own."""
    old, new = flat_dict(saved.to_dict()), flat_dict(asked.to_dict())
    loose = resume_paths(RESUME_FREE) | resume_paths(RESUME_EXTEND)
    out = []
    for path in sorted(set(old) | set(new)):
        if path in loose or old.get(path) == new.get(path):
            continue
        opt = OPTIONS_BY_PATH.get(path)
        out.append(f"{opt.flag if opt else path} {_text(new.get(path))} (the run's: {_text(old.get(path))})")
    return out


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def resume_paths(kind: str) -> set[str]:
    """The dotted paths of the options whose ``resume`` is ``kind``."""
    return {o.path for o in OPTIONS if o.resume == kind}


def to_toml(d: Mapping, comment: str = "") -> str:
    """A config dict as a TOML file (`read_config_file` reads it back to the same config)."""
    scalars = [(k, v) for k, v in d.items() if not isinstance(v, Mapping)]
    tables = [(k, v) for k, v in d.items() if isinstance(v, Mapping)]
    lines = [f"# {line}" for line in comment.splitlines()]
    lines += [f"{k} = {_toml_value(v)}" for k, v in scalars]
    for name, table in tables:
        lines += ["", f"[{name}]", *(f"{k} = {_toml_value(v)}" for k, v in table.items())]
    return "\n".join(lines) + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, (str, Path)):
        return json.dumps(str(v))
    raise ConfigError(f"cannot write {v!r} to TOML")
