"""IIC: Inter-Intra Contrastive learning (Tao, Wang, Yamasaki, ACM MM 2020), in the paper's notation.

View 1 = RGB clip, view 2 = residual / flow / RGB of the same clip, intra-negative = view 1 with its time
broken (``repeat`` or ``shuffle``). One shared encoder gives f1, f2, fn (B x D). Memory banks M1, M2, Mn
(N x D, unit rows) hold a running feature per training video. For sample y and K indices j drawn
uniformly with replacement (shared by both views):

    z1 = [M2[y].f1, M2[j1..jK].f1, Mn[y].f1, Mn[j1..jK].f1] / tau      (B x 2K+2, positive at 0)
    z2 = [M1[y].f2, M1[j1..jK].f2, Mn[y].f2, Mn[j1..jK].f2] / tau
    L  = CE(z1, 0) + CE(z2, 0)
    then M[y] <- normalize(m M[y] + (1 - m) f) for (M1, f1), (M2, f2), (Mn, fn).

CMC baseline: no Mn (K+1 logits). Defaults K = 1024, tau = 0.07, m = 0.5.

``positive="live"`` (the tiny CPU presets, not the paper) scores the positive against the other view's
feature of the same step, f1.f2, instead of its bank row M2[y].f1: the bank row of a video was written
when it was last seen (an epoch, i.e. a few dozen optimiser steps, ago on a small set) by an encoder that
has changed since, from another clip and crop, and on small sets that stale positive carries no learnable
signal (measured in BENCHMARKS.md, "Learning signal"). Negatives still come from the banks.

``batch_negatives=True`` (the tiny presets) appends, after those columns, the batch's live negatives: the
other view of the batch's N - 1 other clips and all N intra-negatives (N = the global batch, gathered with
gradient). A live positive against bank negatives alone has a trivial solution, one feature for every
clip: the positive is then 1 while the stale bank rows still differ, until they catch up. Live negatives
make that collapse cost loss.

Features are L2-normalised before the dot products (``normalize=True``). CMC's encoders end in an L2
``Normalize`` layer; IIC's R3D returns the raw 512-d pooled feature to a CMC-style bank that does not
normalise its inputs. The banks hold unit rows and tau = 0.07 is a temperature for cosine similarities;
with raw ReLU features of norm >> 1 the logits scale with |f| and the softmax saturates, so we normalise.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from . import augment
from .backbones import build_backbone, preset as backbone_preset
from .config import TrainConfig
from .names import POSITIVES
from .distributed import gather_from_ranks, gather_with_grad


def l2_normalize(x: Tensor, dim: int = -1) -> Tensor:
    return F.normalize(x, p=2, dim=dim, eps=1e-12)


def residual(clip: Tensor) -> Tensor:
    """Frame differences of a float clip ``(..., C, T, H, W)``: ``r[t] = x[t] - x[t-1]``, ``r[0] = 0``.

    For [0, 1] frames the result is in [-1, 1]. Unlike the official ``x - roll(x, 1)``, frame 0 is not
    differenced against the last frame (a wrap-around artefact of working per clip).
    """
    if not clip.is_floating_point():
        raise ValueError(f"residual needs a float clip (uint8 subtraction wraps), got {clip.dtype}")
    r = torch.zeros_like(clip)
    r[..., 1:, :, :] = clip[..., 1:, :, :] - clip[..., :-1, :, :]
    return r


def _randint(high: int, size: tuple[int, ...], generator: torch.Generator | None, device) -> Tensor:
    gdev = generator.device if generator is not None else torch.device("cpu")
    return torch.randint(high, size, generator=generator, device=gdev).to(device)


def intra_negative(clip: Tensor, kind: str, generator: torch.Generator | None = None) -> Tensor:
    """Intra-negative of a cropped view-1 batch ``(B, C, T, H, W)``: same appearance, broken time.

    repeat:  frame i ~ U{0..T-1} per sample, repeated T times (a still clip).
    shuffle: T split into 4 chunks of T/4 frames; two distinct chunks, chosen uniformly per sample,
             are swapped (never the identity).
    reverse: the clip played backwards (not in the paper: its time is intact but its arrow is not, so only
             a feature that knows the direction of motion tells it from the clip).
    """
    B, C, T, H, W = clip.shape
    if kind == "repeat":
        i = _randint(T, (B,), generator, clip.device)
        return clip[torch.arange(B, device=clip.device), :, i].unsqueeze(2).expand_as(clip).contiguous()
    if kind == "shuffle":
        if T % 4:
            raise ValueError(f"shuffle splits T into 4 chunks: T = {T} is not divisible by 4")
        L = T // 4
        a = _randint(4, (B,), generator, clip.device)
        b = _randint(3, (B,), generator, clip.device)
        b = b + (b >= a).long()                                   # uniform over chunks != a
        perm = torch.arange(4, device=clip.device).repeat(B, 1)   # B x 4 chunk order
        rows = torch.arange(B, device=clip.device)
        perm[rows, a], perm[rows, b] = b, a
        t = torch.arange(T, device=clip.device)
        src = perm[:, t // L] * L + t % L                         # B x T source frame of each frame
        return clip.gather(2, src.view(B, 1, T, 1, 1).expand_as(clip))
    if kind == "reverse":
        return clip.flip(2)
    raise ValueError(f"unknown intra-negative kind {kind!r}; expected 'repeat', 'shuffle' or 'reverse'")


class MemoryBank(nn.Module):
    """N x D bank of unit rows (buffer ``memory``: saved in checkpoints, moved by ``.to()``).

    Initialised uniform in [-a, a], a = 1 / sqrt(D / 3) (as CMC), then rows L2-normalised.
    """

    def __init__(self, n_data: int, dim: int, generator: torch.Generator | None = None):
        super().__init__()
        a = 1.0 / math.sqrt(dim / 3)
        self.register_buffer("memory", l2_normalize(torch.rand(n_data, dim, generator=generator) * 2 * a - a))

    @torch.no_grad()
    def update(self, index: Tensor, feats: Tensor, m: float = 0.5) -> None:
        """M[y] <- normalize(m M[y] + (1 - m) f) for index (B,) and feats (B, D).

        A row indexed several times in one call (e.g. DistributedSampler padding) is updated once with
        the mean of its features: order-independent and deterministic (a one-hot matmul, no atomics),
        whereas ``index_copy_`` with duplicates keeps an arbitrary one on GPU.
        """
        feats = feats.detach().to(self.memory.dtype)
        rows, inverse = torch.unique(index.to(self.memory.device), return_inverse=True)
        onehot = F.one_hot(inverse, rows.numel()).T.to(feats)     # U x B
        f = (onehot @ feats) / onehot.sum(1, keepdim=True)        # U x D mean feature per row
        self.memory[rows] = l2_normalize(m * self.memory[rows] + (1 - m) * f)



def draw_negatives(batch_size: int, K: int, n_data: int, generator: torch.Generator | None = None,
                   device=None) -> Tensor:
    """K bank indices per sample, uniform with replacement (may include the sample itself, as CMC)."""
    return _randint(n_data, (batch_size, K), generator, device)


class IICMemory(nn.Module):
    """Banks M1 (view 1), M2 (view 2), Mn (intra-negatives; None for CMC) and the IIC logits.

    n_data: bank rows = training videos (from the manifest). dim: feature size D. K: negatives per
    sample. tau: temperature. m: bank momentum. intra_neg: False = CMC baseline (no Mn).
    live_negative: also append the current fn (with gradient) as one extra negative column; the paper
    uses the intra-negative only through its bank. normalize: L2-normalise f1, f2, fn (module docstring).
    Banks are updated only in training mode.
    """

    def __init__(self, n_data: int, dim: int = 512, K: int = 1024, tau: float = 0.07, m: float = 0.5,
                 intra_neg: bool = True, live_negative: bool = False, normalize: bool = True,
                 positive: str = "bank", batch_negatives: bool = False, generator: torch.Generator | None = None):
        super().__init__()
        if live_negative and not intra_neg:
            raise ValueError("live_negative needs intra-negatives (intra_neg=True)")
        if positive not in POSITIVES:
            raise ValueError(f"unknown positive {positive!r}; expected one of {', '.join(POSITIVES)}")
        if K == 0 and not (positive == "live" and batch_negatives and not live_negative):
            raise ValueError("K = 0 (no bank negatives) needs positive='live' and batch_negatives, "
                             "without live_negative")
        self.n_data, self.dim, self.K, self.tau, self.m = n_data, dim, K, tau, m
        self.live_negative, self.normalize, self.positive = live_negative, normalize, positive
        self.batch_negatives = batch_negatives
        self.M1 = MemoryBank(n_data, dim, generator)
        self.M2 = MemoryBank(n_data, dim, generator)
        self.Mn = MemoryBank(n_data, dim, generator) if intra_neg else None

    def _logits(self, f: Tensor, M: MemoryBank, idx: Tensor, fn: Tensor | None, other: Tensor) -> Tensor:
        if self.K == 0:                                                       # no bank columns: live only
            z = (f * other).sum(1, keepdim=True)
            return torch.cat([z, self._batch_logits(f, other, fn)], dim=1) / self.tau
        z = torch.einsum("bkd,bd->bk", M.memory[idx], f)                       # B x (K+1)
        if self.positive == "live":                                           # column 0: f . f_other
            z = torch.cat([(f * other).sum(1, keepdim=True), z[:, 1:]], dim=1)
        if self.Mn is not None:
            z = torch.cat([z, torch.einsum("bkd,bd->bk", self.Mn.memory[idx], f)], dim=1)  # B x (2K+2)
        if self.live_negative:
            z = torch.cat([z, (f * fn).sum(1, keepdim=True)], dim=1)          # B x (2K+3)
        if self.batch_negatives:
            z = torch.cat([z, self._batch_logits(f, other, fn)], dim=1)
        return z / self.tau

    @staticmethod
    def _batch_logits(f: Tensor, other: Tensor, fn: Tensor | None) -> Tensor:
        """The batch's live negatives of each local row (gathered over ranks, N = world x B, with gradient):
        the other view of the N - 1 other clips, and the N intra-negatives (its own included)."""
        B = f.shape[0]
        other_all = gather_with_grad(other)
        rows = torch.arange(B, device=f.device)
        mine = rows + (dist.get_rank() * B if other_all.shape[0] > B else 0)   # the local rows in the gather
        s = f @ other_all.T                                                   # B x N
        keep = torch.ones_like(s, dtype=torch.bool)
        keep[rows, mine] = False                                              # drop the positive pair
        z = s[keep].view(B, -1)                                               # B x (N-1)
        if fn is not None:
            z = torch.cat([z, f @ gather_with_grad(fn).T], dim=1)             # B x (2N-1)
        return z

    def forward(self, f1: Tensor, f2: Tensor, fn: Tensor | None, index: Tensor,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """f1, f2, fn: (B, D) features of view 1, view 2, intra-negative (fn None for CMC);
        index: (B,) bank rows. Returns logits z1, z2 (B x 2K+2, or K+1 for CMC, +1 with live_negative),
        positive at column 0."""
        if (fn is None) != (self.Mn is None):
            raise ValueError("pass fn exactly when the module has an intra-negative bank")
        if self.normalize:
            f1, f2 = l2_normalize(f1), l2_normalize(f2)
            fn = l2_normalize(fn) if fn is not None else None
        B = f1.shape[0]
        j = draw_negatives(B, self.K, self.n_data, generator, f1.device)       # B x K
        idx = torch.cat([index.view(B, 1).to(j), j], dim=1)                   # B x (K+1), y first
        z1 = self._logits(f1, self.M2, idx, fn, f2)
        z2 = self._logits(f2, self.M1, idx, fn, f1)
        if self.training and self.K > 0:  # K = 0 reads no bank row: nothing to keep up to date
            y = gather_from_ranks(index.to(f1.device))
            self.M1.update(y, gather_from_ranks(f1.detach()), self.m)
            self.M2.update(y, gather_from_ranks(f2.detach()), self.m)
            if self.Mn is not None:
                self.Mn.update(y, gather_from_ranks(fn.detach()), self.m)
        return z1, z2


def nce_loss(z1: Tensor, z2: Tensor) -> Tensor:
    """NCE-softmax loss: CE(z1, 0) + CE(z2, 0), each averaged over the batch (positive at column 0)."""
    target = torch.zeros(z1.shape[0], dtype=torch.long, device=z1.device)
    return F.cross_entropy(z1, target) + F.cross_entropy(z2, target)


class CenterHead(nn.Module):
    """Affine-free BatchNorm1d on the pooled feature (``--head bn``): removes the direction that every
    feature of a fresh ReLU network shares (cosine ~0.95 between any two clips), so the banks do not
    collapse onto it. Each view is encoded in its own pass, so each is centred by its own batch."""

    def __init__(self, dim: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, affine=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(x)


class ProjectionHead(nn.Module):
    """Optional MLP head of the authors' v2 code: D_in -> hidden -> D_out with ReLU, then L2 norm.

    ``batchnorm=True`` (``--head mlp-bn``, not the authors') puts a BatchNorm in the hidden layer, as SimCLR's
    head has: a fresh ReLU network maps every clip to nearly one direction (cosine ~0.95), and centring the
    hidden layer per batch removes that from the first step. The encoder normalises view 1 and its
    intra-negatives as one batch (:class:`Encoder`), so what the intra-negatives share ("still", "shuffled")
    is not subtracted from them. Measured against the tiny recipe's chance plateau (BENCHMARKS.md, session
    19): it does not shorten it and does not raise retrieval; an ablation option, in no preset."""

    def __init__(self, in_dim: int = 512, hidden_dim: int = 512, out_dim: int = 128, batchnorm: bool = False,
                 center_out: bool = False):
        super().__init__()
        self.out_dim, self.batchnorm = out_dim, batchnorm
        norm = [nn.BatchNorm1d(hidden_dim)] if batchnorm else []
        # center_out (``--head mlp-bn-out``): an affine-free BatchNorm on the output too, as SimCLR v2's head,
        # so the head cannot map every clip to one point (the constant a bias could learn is removed)
        out = [nn.BatchNorm1d(out_dim, affine=False)] if center_out else []
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), *norm, nn.ReLU(inplace=True),
                                 nn.Linear(hidden_dim, out_dim), *out)

    def forward(self, x: Tensor) -> Tensor:
        return l2_normalize(self.mlp(x))


# ----------------------------------------------------------------------------------------------------------
# the method for train.py's loop: network, step, build


def make_head(name: str, dim: int) -> nn.Module | None:
    """The projection head ``--head name`` on ``dim``-d pooled features (None: the paper's, no head)."""
    if name == "none":
        return None
    if name == "bn":
        return CenterHead(dim)
    return ProjectionHead(dim, batchnorm=name in ("mlp-bn", "mlp-bn-out"), center_out=name == "mlp-bn-out")


class Encoder(nn.Module):
    """Backbone (+ optional projection head). ``forward`` encodes each view in its own pass (per-view
    BatchNorm statistics, as the official code) inside one call, so DDP sees one forward per backward.
    With a head that has BatchNorm (``mlp-bn``), view 1 (index 0) and the intra-negatives (index 2, made
    from view 1) go through the head as one batch."""

    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__()
        self.backbone = build_backbone(backbone_preset(cfg.model))
        d = self.backbone.out_dim
        self.head = make_head(cfg.head, d)
        self.joint_head = getattr(self.head, "batchnorm", False)  # batch statistics in the head: one batch for view 1 + negatives
        self.out_dim = getattr(self.head, "out_dim", d)

    def embed(self, x: Tensor) -> Tensor:
        f = self.backbone(x)["pool"]
        return self.head(f) if self.head is not None else f

    def forward(self, views: list[Tensor]) -> list[Tensor]:
        if not (self.joint_head and len(views) == 3):
            return [self.embed(x) for x in views]  # the order of operations of every earlier run, kept
        f = [self.backbone(x)["pool"] for x in views]
        f1, fn = self.head(torch.cat([f[0], f[2]])).split([len(f[0]), len(f[2])])
        return [f1, self.head(f[1]), fn]


def augment_config(cfg: TrainConfig, train: bool = True) -> augment.AugmentConfig:
    return augment.AugmentConfig(crop=cfg.crop, flip=cfg.flip, train=train)


def augment_views(clips: dict[str, Tensor], batch: dict, cfg: TrainConfig, gen: torch.Generator,
                  device: torch.device) -> dict[str, Tensor]:
    """Crop every modality of ``clips`` with one window per sample (the paper's augmentation); with
    ``--rgb-aug simclr`` also SimCLR's colour jitter, grayscale and blur on the RGB clip (``cfg.simclr``)."""
    B, hw = next(iter(clips.values())).shape[0], augment.batch_hw(batch)
    if cfg.rgb_aug == "simclr":
        return augment.apply_simclr(clips, augment.sample_simclr_params(B, hw, cfg.simclr, gen, device), cfg.simclr)
    aug_cfg = augment_config(cfg)
    return augment.apply(clips, augment.sample_params(B, hw, aug_cfg, gen, device), aug_cfg)


def iic_step(net: nn.Module, memory: IICMemory, batch: dict, cfg: TrainConfig, gen: torch.Generator,
             device: torch.device) -> Tensor:
    """One IIC loss on a batch of uint8 clips already on ``device``. The intra-negative is made from view 1 as
    augmented, so it keeps view 1's colours."""
    raw = {m: batch[m] for m in cfg.modalities}
    if cfg.view2_time == "other":  # view 2 comes from the second clip: only RGB is needed of the first
        raw = {"rgb": raw["rgb"]}
    views = augment_views(raw, batch, cfg, gen, device)
    x1 = augment.view_input(views, "rgb")
    if cfg.view2_time == "other":  # view 2 from the loader's second clip (another time), with its own crop
        second = {m: batch[f"{m}_1"] for m in cfg.modalities}
        x2 = augment.view_input(augment_views(second, batch, cfg, gen, device), cfg.view2)
    elif cfg.view2 == "rgb":  # RGB against RGB: the second view is another crop of the same clip
        x2 = augment_views({"rgb": raw["rgb"]}, batch, cfg, gen, device)["rgb"]
    else:
        x2 = augment.view_input(views, cfg.view2)
    xs = [x1, x2] + ([intra_negative(x1, cfg.neg, gen)] if cfg.neg != "none" else [])
    f = net(xs)
    # logits, loss and bank update in fp32 even under autocast (fp16 dot products of unit vectors / 0.07
    # lose the differences the loss is made of, and the banks would accumulate fp16 rounding)
    with torch.autocast(device.type, enabled=False):
        z1, z2 = memory(f[0].float(), f[1].float(), f[2].float() if len(f) > 2 else None, batch["index"], gen)
        return nce_loss(z1, z2)


def build_iic(cfg: TrainConfig, n_data: int) -> tuple[nn.Module, nn.Module, Callable]:
    """IIC: (trainable network with ``.backbone``, state module holding the memory banks, step function)."""
    encoder = Encoder(cfg)
    memory = IICMemory(n_data, encoder.out_dim, K=cfg.K, tau=cfg.tau, m=cfg.m, intra_neg=cfg.neg != "none",
                       live_negative=cfg.live_negative, positive=cfg.positive, batch_negatives=cfg.batch_negatives,
                       generator=torch.Generator().manual_seed(cfg.seed))
    return encoder, memory, iic_step
