"""Typed, frozen training configuration and the named presets of the paper's configurations.

A run's config is built once (preset, then explicit flags on top), printed at start and saved as a
plain dict with every checkpoint; `from_dict` restores it for ``--resume`` and evaluation.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from .augment import SimCLRAugmentConfig
from .names import HEADS, METHODS, NEGATIVES, OPTIMIZERS, POSITIVES, RGB_AUGS, SCHEDULES, VIEW2_TIMES
from .backbones import PRESETS as BACKBONE_PRESETS
from .views import VIEWS, modalities_for



class ConfigError(ValueError):
    """An invalid or inconsistent configuration (one-line message)."""


@dataclass(frozen=True)
class DualVarConfig:
    """Hyper-parameters of the DualVar objective (REFERENCE.md section 2)."""

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
        if self.clip_loss not in ("simclr", "moco"):
            raise ValueError(f"clip_loss must be 'simclr' or 'moco', got {self.clip_loss!r}")
        if self.n_segments < 2:
            raise ValueError(f"n_segments must be >= 2, got {self.n_segments}")
        for name in ("tau_clip", "tau_tc", "theta"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if not 0.0 <= self.moco_m < 1.0:
            raise ValueError(f"moco_m must be in [0, 1), got {self.moco_m}")

    def to_dict(self) -> dict:
        return asdict(self)


# Options that were removed, with the only value they ever held in a saved config (no preset or flag set
# another): `TrainConfig.from_dict` drops them so that old checkpoints still load.
RETIRED_OPTIONS: dict = {"jitter": 0.0}  # IIC colour jitter (the paper's recipe has none)


# ----------------------------------------------------------------------------------------- heads


@dataclass(frozen=True)
class TrainConfig:
    # data
    data: Path = Path("data/ucf101")
    split: int = 1
    out: Path = Path("data/runs/iic")
    frames: int = 16  # T
    stride: int = 1  # frame stride within a clip (DualVar: 4)
    crop: int = 112
    flip: bool = False
    workers: int = 4
    # model
    method: str = "iic"
    model: str = "r3d-10"  # a backbone preset name (model/backbones.py)
    view2: str = "res"
    neg: str = "repeat"  # intra-negative; none = the CMC baseline
    view2_time: str = "same"  # IIC view 2 from the same clip as view 1 (paper) | other (another random time of the video)
    rgb_aug: str = "none"  # IIC's RGB views: crop only (paper) | simclr (+ colour jitter, grayscale, blur: `simclr` below)
    head: str = "none"  # none (IIC paper) | mlp (512-512-128 + L2 norm, the authors' v2 code) | mlp-bn (+ BN in its hidden layer) | mlp-bn-out (+ centring BN at the end) | bn (centring BN)
    live_negative: bool = False  # also feed the current intra-negative (with gradient) as a logit
    positive: str = "bank"  # bank (paper: M2[y].f1) | live (f2.f1 of the same step; model/iic.py)
    batch_negatives: bool = False  # also contrast with the batch's other clips and intra-negatives (live)
    K: int = 1024
    tau: float = 0.07
    m: float = 0.5
    # DualVar (used when method == "dualvar"): the objective, and SimCLR's augmentation (its crop and flip
    # are always ``crop`` / ``flip`` above: __post_init__ makes them so; IIC uses it with --rgb-aug simclr)
    dualvar: DualVarConfig = DualVarConfig()
    simclr: SimCLRAugmentConfig = SimCLRAugmentConfig()
    # optimisation (IIC: SGD 0.01, momentum 0.9, wd 1e-4, batch 16, 240 epochs, x0.2 at 45/90/125/160)
    epochs: int = 240
    batch_size: int = 16
    lr: float = 0.01
    optimizer: str = "sgd"  # sgd (the paper's) | adam (the tiny CPU presets: SGD needs far more steps there)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "multistep"  # multistep (the paper's) | cosine (to 0 at the end of the run)
    milestones: tuple[float, ...] = (45 / 240, 90 / 240, 125 / 240, 160 / 240)  # fractions of the run
    gamma: float = 0.2
    warmup_epochs: int = 0  # linear warm-up from lr / (warm-up steps) to lr, then the schedule
    # run
    device: str = "auto"
    threads: int = 0  # CPU intra-op threads for the run (0 = leave torch's setting); results depend on it
    amp: bool = True  # used on CUDA only
    skip_corrupt: bool = False  # leave out clips whose stored bytes are damaged (counted, said once each) instead of stopping
    seed: int = 0
    log_every: int = 10  # steps between JSONL metric lines
    monitor_every: int = 10  # epochs between the training monitor's test-split top-1 (0 = off; model/monitor.py)

    def __post_init__(self) -> None:
        if (self.simclr.crop, self.simclr.flip) != (self.crop, self.flip):
            object.__setattr__(self, "simclr", dataclasses.replace(self.simclr, crop=self.crop, flip=self.flip))

    def milestone_epochs(self) -> list[int]:
        """The paper's decay epochs scaled to ``epochs`` (45/90/125/160 of 240)."""
        return sorted({max(1, round(f * self.epochs)) for f in self.milestones if round(f * self.epochs) < self.epochs})

    @property
    def modalities(self) -> tuple[str, ...]:
        """What the loader must read for this config."""
        return modalities_for(("rgb", self.view2))

    @property
    def clips_per_sample(self) -> int:
        """Clips the loader reads per video and step: DualVar contrasts two random times of a video."""
        return 2 if self.method == "dualvar" or self.view2_time == "other" else 1

    def validate(self) -> TrainConfig:
        checks = [
            (self.method in METHODS, f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}"),
            (self.model in BACKBONE_PRESETS, f"unknown model {self.model!r}; choose one of {', '.join(BACKBONE_PRESETS)}"),
            (self.optimizer in OPTIMIZERS, f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}"),
            (self.head in HEADS, f"unknown head {self.head!r}; choose one of {', '.join(HEADS)}"),
            (self.positive in POSITIVES, f"unknown positive {self.positive!r}; choose one of {', '.join(POSITIVES)}"),
            (self.schedule in SCHEDULES, f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}"),
            (0 <= self.warmup_epochs <= self.epochs, f"need 0 <= warm-up epochs <= epochs, got {self.warmup_epochs}"),
            (self.monitor_every >= 0, "need --monitor-every >= 0 (0 = off)"),
            (self.threads >= 0, "need --threads >= 0 (0 = torch's default)"),
            (self.view2 in VIEWS, f"unknown view2 {self.view2!r}; choose one of {', '.join(VIEWS)}"),
            (self.neg in NEGATIVES, f"unknown neg {self.neg!r}; choose one of {', '.join(NEGATIVES)}"),
            (self.rgb_aug in RGB_AUGS, f"unknown RGB augmentation {self.rgb_aug!r}; choose one of {', '.join(RGB_AUGS)}"),
            (self.view2_time in VIEW2_TIMES, f"unknown view2 time {self.view2_time!r}; choose one of {', '.join(VIEW2_TIMES)}"),
            (self.neg != "shuffle" or self.frames % 4 == 0, f"--neg shuffle needs frames divisible by 4, got {self.frames}"),
            (not (self.live_negative and self.neg == "none"), "--live-negative needs an intra-negative (--neg repeat|shuffle)"),
            (self.epochs >= 1 and self.batch_size >= 2, "need epochs >= 1 and batch size >= 2"),
            (self.frames >= 2 and self.stride >= 1, "need at least 2 frames per clip and stride >= 1"),
            (self.K >= 0 and self.tau > 0 and 0 <= self.m < 1, "need K >= 0, tau > 0 and 0 <= m < 1"),
            (self.K > 0 or (self.positive == "live" and self.batch_negatives and not self.live_negative),
             "--K 0 (no bank negatives) needs --positive live --batch-negatives, without --live-negative"),
            (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"), f"unknown device {self.device!r}"),
        ]
        if self.method == "dualvar":  # first: its refusals say why better than IIC's own checks
            self._validate_dualvar()
        elif self.dualvar != DualVarConfig() or self.simclr != SimCLRAugmentConfig(crop=self.crop, flip=self.flip):
            raise ConfigError("DualVar options (--dualvar) need --method dualvar")
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self

    def _validate_dualvar(self) -> None:
        checks = [
            (self.neg == "none", f"--neg {self.neg}: intra-negatives are an IIC option; DualVar takes --neg none"),
            (not self.live_negative, "--live-negative is an IIC memory-bank option; DualVar has no banks"),
            (self.head == "none", "--head is IIC's projection head; DualVar always has its own clip and series heads"),
            (self.view2_time == "same", "--view2-time is an IIC option; DualVar always contrasts two times of a video"),
            (self.rgb_aug == "none", "--rgb-aug is an IIC option; DualVar always applies its SimCLR augmentation"),
            (self.positive == "bank", "--positive is an IIC memory-bank option; DualVar has no banks"),
            (not self.batch_negatives, "--batch-negatives is an IIC option; DualVar contrasts its batch already"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if self.frames % self.dualvar.n_segments:
            raise ConfigError(f"DualVar splits a clip into {self.dualvar.n_segments} segments: "
                              f"--frames {self.frames} is not divisible")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(data=str(self.data), out=str(self.out), milestones=list(self.milestones))
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        for key, only in RETIRED_OPTIONS.items():  # checkpoints written while the option existed
            if key in d and (value := d.pop(key)) != only:
                raise ConfigError(f"config sets {key}={value}, an option this version no longer has")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"config has unknown keys {sorted(unknown)}")
        if "simclr" not in d:  # written before the DualVar options were typed: one dict of both, by name
            d["dualvar"], d["simclr"] = split_dualvar_options(d.get("dualvar") or {})
        d["dualvar"] = DualVarConfig(**d["dualvar"])
        d["simclr"] = SimCLRAugmentConfig(**{**d["simclr"], "blur_sigma": tuple(d["simclr"].get("blur_sigma", (0.1, 2.0)))})
        if isinstance(d.get("head"), bool):  # format of checkpoints written before heads had names
            d["head"] = "mlp" if d["head"] else "none"
        return cls(**{**d, "data": Path(d["data"]), "out": Path(d["out"]), "milestones": tuple(d["milestones"])})


# IIC on a CPU in minutes (the synthetic benchmark: 240 training videos). Chosen by the ablation in
# BENCHMARKS.md ("Learning signal"): the paper's memory-bank logits do not train here. A bank row of a video
# is written once an epoch (30 fast Adam steps on 240 videos), so a bank positive carries no signal, and
# bank negatives are easy only because they are stale: the loss falls while the encoder drifts and climbs
# back to chance when the learning rate decays and the banks catch up (CMC ends at chance). A live positive
# against bank negatives alone collapses (one feature for every clip). So the tiny presets contrast live
# features only: the positive f1.f2 and, as negatives, the batch's other clips of the other view and all its
# intra-negatives (K = 0 bank negatives, --batch-negatives); the authors' MLP head; Adam with one warm-up
# epoch and a cosine decay. The paper presets keep the paper's banks.
TINY_IIC: dict = dict(model="r3d-tiny", view2="res", neg="repeat", frames=16, crop=64, epochs=20, batch_size=8,
                      optimizer="adam", lr=1e-3, K=0, head="mlp", positive="live", batch_negatives=True,
                      schedule="cosine", warmup_epochs=1, monitor_every=5, workers=2)

# The paper's configurations (REFERENCE.md section 1) and the tiny CPU presets for tests and the demo.
PRESETS: dict[str, dict] = {
    "r3d-res-repeat": dict(model="r3d-10", view2="res", neg="repeat"),
    "r3d-flowu-repeat": dict(model="r3d-10", view2="flow-u", neg="repeat"),
    "r3d-res-shuffle": dict(model="r3d-10", view2="res", neg="shuffle"),
    "r3d-flowv-shuffle": dict(model="r3d-10", view2="flow-v", neg="shuffle"),
    "r21d-res-repeat": dict(model="r21d-10", view2="res", neg="repeat"),
    "c3d-res-repeat": dict(model="c3d", view2="res", neg="repeat"),
    "cmc-r3d-res": dict(model="r3d-10", view2="res", neg="none"),
    # The tiny CPU presets (demo, tests, bench/bench_learning.py): see TINY_IIC below.
    "tiny": TINY_IIC,
    "tiny-shuffle": {**TINY_IIC, "neg": "shuffle"},
    "tiny-reverse": {**TINY_IIC, "neg": "reverse"},  # not the paper's: the clip played backwards as intra-negative
    "cmc-tiny": {**TINY_IIC, "neg": "none"},
    # DualVar (REFERENCE.md section 2): R(2+1)D-10, 16 frames at stride 4, crop 112, SimCLR augmentation.
    # Batch, lr and schedule are not in REFERENCE.md; these are SimCLR/MoCo-style SGD values: 64 clips per
    # rank, lr 0.05 (MoCo/SimSiam's linear rule, 0.2 per 256 clips), momentum 0.9, wd 1e-4, 200 epochs,
    # x0.1 at 50 % and 75 % of the run.
    "dualvar-r21d": dict(method="dualvar", model="r21d-10", view2="rgb", neg="none", frames=16, stride=4, crop=112,
                         flip=True, epochs=200, batch_size=64, lr=0.05, milestones=(0.5, 0.75), gamma=0.1),
    # CPU: stride 2 so the demo's 40-frame videos hold a whole clip; crop 64; one x0.1 decay at 75 % (short
    # runs need most of their few steps at the full rate).
    "dualvar-tiny": dict(method="dualvar", model="r3d-tiny", view2="rgb", neg="none", frames=16, stride=2, crop=64,
                         flip=True, epochs=6, batch_size=8, lr=0.05, milestones=(0.75,), gamma=0.1, workers=2,
                         monitor_every=2),
}


# What --method X alone means: the method's own recipe under the preset and the flags.
METHOD_DEFAULTS: dict[str, dict] = {
    "dualvar": dict(view2="rgb", neg="none", stride=4, flip=True),
}


# ------------------------------------------------------------------------------------- DualVar options
# ``--dualvar KEY=VALUE``: a field of DualVarConfig or of SimCLRAugmentConfig (crop and flip come from
# TrainConfig.crop / .flip, shared with IIC).
_LOSS_OPTIONS = tuple(f.name for f in dataclasses.fields(DualVarConfig))
_AUG_OPTIONS = tuple(f.name for f in dataclasses.fields(SimCLRAugmentConfig) if f.name not in ("crop", "flip", "train"))
_ALL_OPTIONS = ", ".join(_LOSS_OPTIONS + _AUG_OPTIONS)


def split_dualvar_options(options: dict) -> tuple[dict, dict]:
    """``{name: value}`` of both configs -> (DualVarConfig kwargs, SimCLRAugmentConfig kwargs)."""
    unknown = sorted(set(options) - set(_LOSS_OPTIONS) - set(_AUG_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown DualVar option {unknown[0]!r}; choose from {_ALL_OPTIONS}")
    return ({k: v for k, v in options.items() if k in _LOSS_OPTIONS},
            {k: v for k, v in options.items() if k in _AUG_OPTIONS})


def parse_dualvar_options(items: Sequence[str]) -> dict:
    """``["tau_clip=0.1", "clip_loss=moco", "blur_sigma=0.1,2"]`` -> typed dict (types of the defaults)."""
    defaults = {**asdict(DualVarConfig()), **asdict(SimCLRAugmentConfig())}
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in _LOSS_OPTIONS + _AUG_OPTIONS:
            raise ConfigError(f"--dualvar {item!r}: expected KEY=VALUE with KEY one of {_ALL_OPTIONS}")
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
        out[key] = value
    return out


def build_config(preset: str | None = None, **overrides) -> TrainConfig:
    """Preset values, then every override that is not None; validated."""
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    base = PRESETS[preset] if preset else {}
    method = given.get("method", base.get("method", "iic"))
    if method == "dualvar":
        bank = sorted(k for k in ("K", "tau", "m") if k in given)
        if bank:
            raise ConfigError(f"{', '.join(bank)} set the IIC memory banks; DualVar has none "
                              "(its MoCo queue: --dualvar clip_loss=moco --dualvar moco_k=N)")
    values = {**METHOD_DEFAULTS.get(method, {}), **base, **given}
    try:
        if isinstance(values.get("dualvar"), dict):  # options by name (--dualvar KEY=VALUE)
            loss, aug = split_dualvar_options(values["dualvar"])
            values.update(dualvar=DualVarConfig(**loss), simclr=SimCLRAugmentConfig(**aug))
        return TrainConfig(**values).validate()
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{err}") from None
