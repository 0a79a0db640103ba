"""One ``iic train`` run: `TrainConfig`, its generated `OPTIONS`, validation, and the plain dict saved with
every checkpoint (and the layouts of older ones)."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    pass
else:  # the same parser, from PyPI (setup.cfg)
    pass

from .backbones import BACKBONES
from .options import RESUME_EXTEND, RESUME_FREE, Option, check_option, option, options_of
from .sections import _SHARED_AUG, DualVarConfig, IICConfig, SimCLRAugmentConfig, split_key_values
from .vocab import (
    METHODS,
    OPTIMIZERS,
    SCHEDULES,
    STABLE_VIEWS,
    VIEWS,
    ConfigError,
    check_device,
    intra_negatives,
    modalities_for,
)


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
        10,
        "Epochs between the test-split checks of retrieval top-1 and feature similarity (0 = off).",
        low=0,
        resume=RESUME_FREE,
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
                self.method != "iic" or "shuffle" not in intra_negatives(iic.neg) or self.frames % 4 == 0,
                f"--neg shuffle splits a clip into 4 chunks: --frames {self.frames} is not divisible by 4",
            ),
            (
                not iic.live_negative or len(intra_negatives(iic.neg)) == 1,
                "--live-negative needs one intra-negative (--neg repeat|shuffle|reverse)",
            ),
            (
                len(intra_negatives(iic.neg)) <= 1 or iic.K == 0,
                f"--neg {iic.neg}: several intra-negatives are contrasted live, in the batch "
                "(--K 0); the memory bank keeps one per video",
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
