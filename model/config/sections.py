"""The methods' own option sections (IIC, DualVar, SimCLR's augmentation) and DualVar's ``--dualvar
KEY=VALUE`` options."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields

if sys.version_info >= (3, 11):
    pass
else:  # the same parser, from PyPI (setup.cfg)
    pass

from .options import option
from .vocab import CLIP_LOSSES, HEADS, NEGATIVES, POSITIVES, RGB_AUGS, VIEW2_TIMES, ConfigError


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
        "reverse (played backwards; not the paper's), several joined by + (one of each per "
        "clip; needs --K 0) or none (the CMC baseline).",
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
        "The RGB view's augmentation: random crop only (none, the paper's), also "
        "SimCLR's colour jitter, grayscale and blur (simclr), or its moving part pasted onto another "
        "clip's background (fame, FAME's foreground-background merging).",
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
