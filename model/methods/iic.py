"""IIC: Inter-Intra Contrastive learning (Tao, Wang, Yamasaki, ACM MM 2020), in the paper's notation.

View 1 = RGB clip x1, view 2 = residual / flow / RGB of the same clip x2, intra-negative xn = view 1 with its
time broken (``repeat`` or ``shuffle``; or ``reverse``, or several kinds at once with the batch's live
negatives: model/methods/variants.py). One shared encoder gives f1, f2, fn (B x D). Memory banks M1, M2, Mn
(N x D, unit rows) hold a running feature per training video. For sample y and K indices j drawn uniformly
with replacement (shared by both views):

    z1 = [M2[y].f1, M2[j1..jK].f1, Mn[y].f1, Mn[j1..jK].f1] / tau      (B x 2K+2, positive at 0)
    z2 = [M1[y].f2, M1[j1..jK].f2, Mn[y].f2, Mn[j1..jK].f2] / tau
    L  = CE(z1, 0) + CE(z2, 0)
    then M[y] <- normalize(m M[y] + (1 - m) f) for (M1, f1), (M2, f2), (Mn, fn).

CMC baseline: no Mn (K+1 logits). Defaults K = 1024, tau = 0.07, m = 0.5. Features are L2-normalised before
the dot products (``normalize``; the authors' code feeds the raw features: docs/method.md, "Departures").

The module reads top to bottom as the method: its config, its state (the banks), the logits and the loss,
one training step, and `build` for the training loop. What is not in the paper (the CPU recipe's live
positive and batch negatives, the heads with BatchNorm, view 2 from another time, colour augmentation of
the RGB view) is model/methods/variants.py, which builds on this module; this one does not need it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import IICConfig, TrainConfig, intra_negatives, view1_of
from ..data import augment
from ..data.views import view_input
from ..distributed import gather_from_ranks
from ..nets.backbones import build_backbone
from ..nets.heads import l2_normalize, make_head

__all__ = ["IICConfig", "IICMemory", "MemoryBank", "intra_negative", "nce_loss", "iic_step", "build"]

# ---------------------------------------------------------------------------------------------- config
# `IICConfig` (model/config/sections.py, torch-free): neg, K, tau, m, normalize; the variants' options
# besides.


def _randint(high: int, size: tuple[int, ...], generator: torch.Generator | None, device) -> Tensor:
    gdev = generator.device if generator is not None else torch.device("cpu")
    return torch.randint(high, size, generator=generator, device=gdev).to(device)


# ---------------------------------------------------------------------------------------------- state


class Encoder(nn.Module):
    """The shared encoder: backbone (+ the optional projection head ``cfg.iic.head``). ``forward`` encodes
    each view in its own pass (per-view BatchNorm statistics, as the official code) inside one call, so
    DDP sees one forward per backward."""

    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__()
        self.backbone = build_backbone(cfg.model)
        d = self.backbone.out_dim
        self.head = make_head(cfg.iic.head, d)
        self.out_dim = getattr(self.head, "out_dim", d)

    def embed(self, x: Tensor) -> Tensor:
        f = self.backbone(x)["pool"]
        return self.head(f) if self.head is not None else f

    def forward(self, views: list[Tensor]) -> list[Tensor]:
        return [self.embed(x) for x in views]


class MemoryBank(nn.Module):
    """N x D bank of unit rows (buffer ``memory``: saved in checkpoints, moved by ``.to()``).

    Initialised uniform in [-a, a], a = 1 / sqrt(D / 3) (as CMC), then rows L2-normalised.
    """

    def __init__(self, n_data: int, dim: int, generator: torch.Generator | None = None):
        super().__init__()
        a = 1.0 / math.sqrt(dim / 3)
        self.register_buffer("memory", l2_normalize(torch.rand(n_data, dim, generator=generator) * 2 * a - a))

    @torch.no_grad()
    def update(self, index: Tensor, feats: Tensor, m: float = IICConfig.m) -> None:
        """M[y] <- normalize(m M[y] + (1 - m) f) for index (B,) and feats (B, D).

        A row indexed several times in one call (e.g. DistributedSampler padding) is updated once with
        the mean of its features: order-independent and deterministic (a one-hot matmul, no atomics),
        whereas ``index_copy_`` with duplicates keeps an arbitrary one on GPU.
        """
        feats = feats.detach().to(self.memory.dtype)
        rows, inverse = torch.unique(index.to(self.memory.device), return_inverse=True)
        onehot = F.one_hot(inverse, rows.numel()).T.to(feats)  # U x B
        f = (onehot @ feats) / onehot.sum(1, keepdim=True)  # U x D mean feature per row
        self.memory[rows] = l2_normalize(m * self.memory[rows] + (1 - m) * f)


def draw_negatives(
    batch_size: int, K: int, n_data: int, generator: torch.Generator | None = None, device=None
) -> Tensor:
    """K bank indices per sample, uniform with replacement (may include the sample itself, as CMC)."""
    return _randint(n_data, (batch_size, K), generator, device)


class IICMemory(nn.Module):
    """Banks M1 (view 1), M2 (view 2), Mn (intra-negatives; None for CMC) and the IIC logits.

    n_data: bank rows = training videos (from the manifest). dim: feature size D. K: negatives per sample.
    tau: temperature. m: bank momentum. intra_neg: False = CMC baseline (no Mn). normalize: L2-normalise
    f1, f2, fn first. Banks are updated only in training mode, from every rank's features.
    """

    def __init__(
        self,
        n_data: int,
        dim: int = 512,
        K: int = IICConfig.K,
        tau: float = IICConfig.tau,
        m: float = IICConfig.m,
        intra_neg: bool = True,
        normalize: bool = IICConfig.normalize,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        self.n_data, self.dim, self.K, self.tau, self.m, self.normalize = n_data, dim, K, tau, m, normalize
        self.M1 = MemoryBank(n_data, dim, generator)
        self.M2 = MemoryBank(n_data, dim, generator)
        self.Mn = MemoryBank(n_data, dim, generator) if intra_neg else None

    def logits(self, f: Tensor, M: MemoryBank, idx: Tensor, fn: Tensor | None, other: Tensor) -> Tensor:
        """[M[y].f, M[j..].f, Mn[y].f, Mn[j..].f] / tau for ``idx`` = [y, j1..jK] (B x K+1).
        (``fn`` and ``other``, the other view's feature, are for the variants' live columns.)"""
        z = torch.einsum("bkd,bd->bk", M.memory[idx], f)  # B x (K+1)
        if self.Mn is not None:
            z = torch.cat([z, torch.einsum("bkd,bd->bk", self.Mn.memory[idx], f)], dim=1)  # B x (2K+2)
        return z / self.tau

    @torch.no_grad()
    def update_banks(self, index: Tensor, f1: Tensor, f2: Tensor, fn: Tensor | None) -> None:
        """Every bank's rows ``index`` from the features of every rank (all ranks keep equal banks)."""
        y = gather_from_ranks(index.to(f1.device))
        self.M1.update(y, gather_from_ranks(f1.detach()), self.m)
        self.M2.update(y, gather_from_ranks(f2.detach()), self.m)
        if self.Mn is not None:
            self.Mn.update(y, gather_from_ranks(fn.detach()), self.m)

    def forward(
        self,
        f1: Tensor,
        f2: Tensor,
        fn: Tensor | None,
        index: Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """f1, f2, fn: (B, D) features of view 1, view 2, intra-negative (fn None for CMC; (nB, D), n kinds
        kind after kind, with K = 0 only); index: (B,) bank rows. Returns the logits z1, z2 (B x 2K+2, or
        K+1 for CMC), positive at column 0."""
        if (fn is None) != (self.Mn is None):
            raise ValueError("pass fn exactly when the module has an intra-negative bank")
        B = f1.shape[0]
        if fn is not None and fn.shape[0] != B and (self.K > 0 or fn.shape[0] % B):
            raise ValueError(
                f"{fn.shape[0]} intra-negative rows for {B} clips: several per clip need K = 0 "
                "(a bank keeps one intra-negative row per video) and a whole number per clip"
            )
        if self.normalize:
            f1, f2 = l2_normalize(f1), l2_normalize(f2)
            fn = l2_normalize(fn) if fn is not None else None
        j = draw_negatives(B, self.K, self.n_data, generator, f1.device)  # B x K
        idx = torch.cat([index.view(B, 1).to(j), j], dim=1)  # B x (K+1), y first
        z1 = self.logits(f1, self.M2, idx, fn, f2)
        z2 = self.logits(f2, self.M1, idx, fn, f1)
        if self.training:
            self.update_banks(index, f1, f2, fn)
        return z1, z2


# ---------------------------------------------------------------------------------------------- loss


def nce_loss(z1: Tensor, z2: Tensor) -> Tensor:
    """NCE-softmax loss: CE(z1, 0) + CE(z2, 0), each averaged over the batch (positive at column 0)."""
    target = torch.zeros(z1.shape[0], dtype=torch.long, device=z1.device)
    return F.cross_entropy(z1, target) + F.cross_entropy(z2, target)


# ---------------------------------------------------------------------------------------------- step


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
        b = b + (b >= a).long()  # uniform over chunks != a
        perm = torch.arange(4, device=clip.device).repeat(B, 1)  # B x 4 chunk order
        rows = torch.arange(B, device=clip.device)
        perm[rows, a], perm[rows, b] = b, a
        t = torch.arange(T, device=clip.device)
        src = perm[:, t // L] * L + t % L  # B x T source frame of each frame
        return clip.gather(2, src.view(B, 1, T, 1, 1).expand_as(clip))
    if kind == "reverse":
        return clip.flip(2)
    raise ValueError(f"unknown intra-negative kind {kind!r}; expected 'repeat', 'shuffle' or 'reverse'")


def make_views(
    batch: dict, cfg: TrainConfig, gen: torch.Generator, device: torch.device
) -> tuple[Tensor, Tensor]:
    """x1 (RGB) and x2 (``cfg.view2``) of a batch of uint8 clips on ``device``: one random crop per sample for
    every modality, so both views see the same pixels; RGB against RGB takes a second crop of the clip."""
    raw = augment.clips_of(batch, cfg.modalities)
    B, hw = batch["rgb"].shape[0], augment.batch_hw(batch)
    view1 = view1_of(cfg.view2)  # rgb-stable beside res-stable
    aug = augment.AugmentConfig(crop=cfg.crop, flip=cfg.flip, camera_views=(view1, cfg.view2))
    views = augment.apply(raw, augment.sample_params(B, hw, aug, gen, device), aug)
    if cfg.view2 == "rgb":
        x2 = augment.apply({"rgb": raw["rgb"]}, augment.sample_params(B, hw, aug, gen, device), aug)["rgb"]
    else:
        x2 = view_input(views, cfg.view2)
    return view_input(views, view1), x2


Views = Callable[[dict, TrainConfig, torch.Generator, torch.device], tuple[Tensor, Tensor]]


def iic_step(
    net: nn.Module,
    memory: IICMemory,
    batch: dict,
    cfg: TrainConfig,
    gen: torch.Generator,
    device: torch.device,
    views: Views = make_views,
) -> Tensor:
    """One IIC loss on a batch of uint8 clips on ``device``. The intra-negative is made from view 1 as
    augmented, so it keeps view 1's appearance. ``views`` makes (x1, x2) (the variants' own, for them)."""
    with torch.autocast(device.type, enabled=False):  # augmentation in fp32 (SimCLR's blur is a convolution)
        x1, x2 = views(batch, cfg, gen, device)
        kinds = intra_negatives(cfg.iic.neg)  # several: one batch, kind after kind
        xs = [x1, x2] + ([torch.cat([intra_negative(x1, k, gen) for k in kinds])] if kinds else [])
    f = net(xs)
    # logits, loss and bank update in fp32 even under autocast (fp16 dot products of unit vectors / 0.07
    # lose the differences the loss is made of, and the banks would accumulate fp16 rounding)
    with torch.autocast(device.type, enabled=False):
        z1, z2 = memory(f[0].float(), f[1].float(), f[2].float() if len(f) > 2 else None, batch["index"], gen)
        return nce_loss(z1, z2)


# ---------------------------------------------------------------------------------------------- build


def build(cfg: TrainConfig, n_data: int) -> tuple[nn.Module, nn.Module, Callable]:
    """IIC for the training loop: (the encoder, with ``.backbone``; the memory banks; the step)."""
    encoder = Encoder(cfg)
    c = cfg.iic
    memory = IICMemory(
        n_data,
        encoder.out_dim,
        K=c.K,
        tau=c.tau,
        m=c.m,
        intra_neg=c.neg != "none",
        normalize=c.normalize,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    return encoder, memory, iic_step
