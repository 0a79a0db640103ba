"""What IIC's training can do that the paper does not: the CPU recipe and the ablations (docs/method.md,
"Departures"). Each is an option of `IICConfig`; `build` gives the paper's IIC (model/methods/iic.py) with
the chosen variants in place of its parts, and the paper's own `build` when none is chosen.

* ``positive="live"`` (the tiny CPU presets) scores the positive against the other view's feature of the
  same step, f1.f2, instead of its bank row M2[y].f1: the bank row of a video was written when it was last
  seen (an epoch, i.e. a few dozen optimiser steps, ago on a small set) by an encoder that has changed since,
  from another clip and crop, and on small sets that stale positive carries no learnable signal (measured in
  BENCHMARKS.md, "Learning"). Negatives still come from the banks.
* ``batch_negatives`` (the tiny presets) appends the batch's live negatives: the other view of the batch's
  N - 1 other clips and all N intra-negatives (N = the global batch, gathered with gradient), of every kind
  when ``neg`` names several (``repeat+reverse``: 2N; they need ``K = 0``, a bank keeps one row a video). A
  live positive against bank negatives alone has a trivial solution, one feature for every clip: the
  positive is then 1 while the stale bank rows still differ, until they catch up. Live negatives make that
  collapse cost loss.
  With ``K = 0`` they are the only negatives (no bank is read or written).
* ``live_negative``: the current intra-negative fn (with gradient) as one more negative column.
* heads with BatchNorm (``mlp-bn``, ``mlp-bn-out``): view 1 and its intra-negatives go through the head as
  one batch, so what the intra-negatives share ("still", "shuffled") is not subtracted from them.
* ``view2_time="other"``: view 2 comes from the loader's second clip of the video (another random time),
  with its own crop.
* ``rgb_aug="simclr"``: SimCLR's colour jitter, grayscale and blur on the RGB view (the residual view is
  untouched; the intra-negative is made from the recoloured clip).
* ``rgb_aug="fame"``: the RGB view's moving part kept over another clip's background (FAME,
  model/data/background.py): view 2 is untouched, the intra-negative is made from the merged clip, so the
  background tells a clip neither from its partner nor from its intra-negative.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..config import IICConfig, TrainConfig, view1_of
from ..data import augment
from ..data.background import merge_backgrounds
from ..data.views import view_input
from ..distributed import gather_with_grad
from . import iic

PAPER = IICConfig()


def chosen(c: IICConfig) -> list[str]:
    """The variant options ``c`` sets (empty: the paper's IIC)."""
    names = ("positive", "live_negative", "batch_negatives", "view2_time", "rgb_aug")
    out = [n for n in names if getattr(c, n) != getattr(PAPER, n)]
    return out + (["K=0"] if c.K == 0 else []) + (["head"] if c.head in ("mlp-bn", "mlp-bn-out") else [])


class LiveMemory(iic.IICMemory):
    """The banks with the live columns: the live positive, the live intra-negative and the batch's
    negatives (module docstring). Same banks, same draws, same update as the paper's."""

    def __init__(
        self,
        n_data: int,
        dim: int,
        K: int,
        tau: float,
        m: float,
        intra_neg: bool = True,
        normalize: bool = True,
        positive: str = "bank",
        live_negative: bool = False,
        batch_negatives: bool = False,
        generator: torch.Generator | None = None,
    ):
        if live_negative and not intra_neg:
            raise ValueError("live_negative needs intra-negatives (intra_neg=True)")
        if positive not in ("bank", "live"):
            raise ValueError(f"unknown positive {positive!r}; expected bank or live")
        if K == 0 and not (positive == "live" and batch_negatives and not live_negative):
            raise ValueError(
                "K = 0 (no bank negatives) needs positive='live' and batch_negatives, without live_negative"
            )
        super().__init__(n_data, dim, K, tau, m, intra_neg, normalize, generator)
        self.positive, self.live_negative, self.batch_negatives = positive, live_negative, batch_negatives

    def logits(self, f: Tensor, M: iic.MemoryBank, idx: Tensor, fn: Tensor | None, other: Tensor) -> Tensor:
        positive = (f * other).sum(1, keepdim=True)  # f . f_other
        if self.K == 0:  # no bank columns: live only
            return torch.cat([positive, self._batch_logits(f, other, fn)], dim=1) / self.tau
        z = super().logits(f, M, idx, fn, other)  # B x (2K+2), / tau
        if self.positive == "live":  # column 0: f . f_other
            z = torch.cat([positive / self.tau, z[:, 1:]], dim=1)
        extra = ([(f * fn).sum(1, keepdim=True)] if self.live_negative else []) + (
            [self._batch_logits(f, other, fn)] if self.batch_negatives else []
        )
        return torch.cat([z, *(e / self.tau for e in extra)], dim=1) if extra else z

    @staticmethod
    def _batch_logits(f: Tensor, other: Tensor, fn: Tensor | None) -> Tensor:
        """The batch's live negatives of each local row (gathered over ranks, N = world x B, with gradient):
        the other view of the N - 1 other clips, and the N intra-negatives (its own included)."""
        B = f.shape[0]
        other_all = gather_with_grad(other)
        rows = torch.arange(B, device=f.device)
        mine = rows + (dist.get_rank() * B if other_all.shape[0] > B else 0)  # the local rows in the gather
        s = f @ other_all.T  # B x N
        keep = torch.ones_like(s, dtype=torch.bool)
        keep[rows, mine] = False  # drop the positive pair
        z = s[keep].view(B, -1)  # B x (N-1)
        if fn is not None:
            z = torch.cat([z, f @ gather_with_grad(fn).T], dim=1)  # B x (2N-1)
        return z

    def update_banks(self, index: Tensor, f1: Tensor, f2: Tensor, fn: Tensor | None) -> None:
        if self.K > 0:  # K = 0 reads no bank row: nothing to keep up to date
            super().update_banks(index, f1, f2, fn)


class JointHeadEncoder(iic.Encoder):
    """With a head that has BatchNorm (``mlp-bn``), view 1 (index 0) and the intra-negatives (index 2, made
    from view 1) go through the head as one batch; view 2 on its own."""

    def forward(self, views: list[Tensor]) -> list[Tensor]:
        if len(views) != 3:
            return super().forward(views)
        f = [self.backbone(x)["pool"] for x in views]
        f1, fn = self.head(torch.cat([f[0], f[2]])).split([len(f[0]), len(f[2])])
        return [f1, self.head(f[1]), fn]


def _augment(
    clips: dict[str, Tensor], batch: dict, cfg: TrainConfig, gen: torch.Generator, device: torch.device
) -> dict[str, Tensor]:
    """The paper's crop of every modality, with one window per sample; with ``rgb_aug="simclr"`` also SimCLR's
    colour jitter, grayscale and blur on the RGB clip (``cfg.simclr``)."""
    B, hw = next(iter(clips.values())).shape[0], augment.batch_hw(batch)
    if cfg.iic.rgb_aug == "simclr":
        return augment.apply_simclr(
            clips, augment.sample_simclr_params(B, hw, cfg.simclr, gen, device), cfg.simclr
        )
    aug = augment.AugmentConfig(crop=cfg.crop, flip=cfg.flip, camera_views=(view1_of(cfg.view2), cfg.view2))
    return augment.apply(clips, augment.sample_params(B, hw, aug, gen, device), aug)


def make_views(
    batch: dict, cfg: TrainConfig, gen: torch.Generator, device: torch.device
) -> tuple[Tensor, Tensor]:
    """x1 and x2 with the view variants: view 2 from the loader's second clip (``view2_time="other"``),
    SimCLR's colours on the RGB clip (``rgb_aug="simclr"``), view 1 on another clip's background
    (``rgb_aug="fame"``)."""
    raw = augment.clips_of(batch, cfg.modalities)
    other = cfg.iic.view2_time == "other"
    if other:  # view 2 comes from the second clip: only RGB is needed of the first
        raw = {"rgb": raw["rgb"]}
    views = _augment(raw, batch, cfg, gen, device)
    if other:  # view 2 from the loader's second clip (another time), with its own crop
        second = augment.clips_of(batch, cfg.modalities, "_1")
        x2 = view_input(_augment(second, batch, cfg, gen, device), cfg.view2)
    elif cfg.view2 == "rgb":  # RGB against RGB: the second view is another crop of the same clip
        x2 = _augment({"rgb": raw["rgb"]}, batch, cfg, gen, device)["rgb"]
    else:
        x2 = view_input(views, cfg.view2)
    view1 = view1_of(cfg.view2)
    if cfg.iic.rgb_aug == "fame":
        views = {**views, view1: merge_backgrounds(views[view1], gen)}
    return view_input(views, view1), x2


def build(cfg: TrainConfig, n_data: int) -> tuple[nn.Module, nn.Module, Callable]:
    """IIC with the variants ``cfg.iic`` chooses (`chosen`); the paper's `iic.build` when it chooses none."""
    c = cfg.iic
    if not chosen(c):
        return iic.build(cfg, n_data)
    joint = c.head in ("mlp-bn", "mlp-bn-out")
    encoder = JointHeadEncoder(cfg) if joint else iic.Encoder(cfg)
    memory = LiveMemory(
        n_data,
        encoder.out_dim,
        K=c.K,
        tau=c.tau,
        m=c.m,
        intra_neg=c.neg != "none",
        normalize=c.normalize,
        positive=c.positive,
        live_negative=c.live_negative,
        batch_negatives=c.batch_negatives,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    views = make_views if (c.view2_time, c.rgb_aug) != (PAPER.view2_time, PAPER.rgb_aug) else iic.make_views
    return encoder, memory, functools.partial(iic.iic_step, views=views)
