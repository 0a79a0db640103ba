"""Foreground-background merging (FAME; Ding et al., CVPR 2022): the moving part of each clip pasted onto
another clip of the batch, so that the background stops telling clips apart.

Contrastive video learning leans on the static background ("background bias"): two views of a clip share
it, and matching them by it needs no motion. FAME finds each clip's foreground from its frame differences
and keeps it over the background of another clip; a view made so shares only the moving part with its
partner. IIC's RGB view takes it with ``--rgb-aug fame`` (model/methods/variants.py); the residual view and
the intra-negatives follow from the clips as merged (docs/method.md, "Departures").

The mask, per clip, as FAME computes it: the mean over consecutive frame pairs of the absolute difference
summed over channels, blurred by a Gaussian of side `BLUR` of the crop (sigma a third of the side), its
top `FOREGROUND` fraction of pixels; one mask for all frames. FAME then refines the mask by the colours
of the foreground (a colour histogram of the clip's most moving pixels against its least moving); this
module keeps the motion map alone: pixels tied at the threshold are background, so a clip whose moving
part covers less than `FOREGROUND` of the crop (a held, stabilised background does not change at all)
keeps just that part. The background comes from the batch's clip ``shift`` places further on (a random
shift in [1, B - 1] drawn from the run's generator): no clip keeps its own.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .augment import gaussian_blur

FOREGROUND = 0.5  # FAME's beta: the largest fraction of a clip's pixels kept as its foreground
BLUR = 0.1  # FAME's Gaussian: an odd side of this fraction of the crop, sigma a third of it


def motion_map(clip: Tensor) -> Tensor:
    """(B, h, w): the blurred mean absolute change between consecutive frames of ``clip`` (B, C, T, h, w),
    summed over channels (reflected at the borders, as FAME's blur)."""
    change = (clip[:, :, 1:] - clip[:, :, :-1]).abs().sum(1).mean(1)  # (B, h, w)
    side = int(BLUR * min(clip.shape[-2:])) // 2 * 2 + 1
    if side > 1:
        sigma = torch.full((clip.shape[0],), side / 3, device=clip.device)
        change = gaussian_blur(change[:, None, None], sigma, side)[:, 0, 0]
    return change


def foreground(clip: Tensor, fraction: float = FOREGROUND) -> Tensor:
    """(B, h, w) bool: the pixels of each clip whose `motion_map` lies strictly above its ``1 - fraction``
    quantile (ties at the threshold are background)."""
    m = motion_map(clip).flatten(1)
    threshold = torch.quantile(m, 1.0 - fraction, dim=1, keepdim=True)
    return (m > threshold).view(clip.shape[0], *clip.shape[-2:])


def merge_backgrounds(clip: Tensor, gen: torch.Generator, fraction: float = FOREGROUND) -> Tensor:
    """``clip`` (B, C, T, h, w) with every clip's background (outside its `foreground`) taken from the clip
    ``shift`` places further on in the batch, frame by frame; ``shift`` uniform in [1, B - 1] from ``gen``.
    A batch of one is returned as it is."""
    B = clip.shape[0]
    if B < 2:
        return clip
    shift = int(torch.randint(1, B, (1,), generator=gen, device=gen.device))
    keep = foreground(clip, fraction)[:, None, None]  # (B, 1, 1, h, w)
    return torch.where(keep, clip, clip.roll(-shift, dims=0))
