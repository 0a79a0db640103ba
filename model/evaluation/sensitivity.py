"""The paper's claim measured directly: how much a backbone's features change when time is broken.

For every test video (one centre clip, centre crop, RGB input) the cosine similarity between the feature of
the clip and that of the same clip shuffled (IIC's shuffle intra-negative: two of four chunks swapped),
reversed, and repeated (one frame held, IIC's repeat intra-negative). A model blind to the order of frames
gives 1.0 for ``reversed`` and ``shuffled``; lower = more sensitive to temporal order.

With another input ``view`` (``res``, ``res-aligned``, a flow component) the same edits are made to that
view's input clip: its frames (each frame's motion) reordered, reversed, or one of them held.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..config import modalities_for
from ..data import augment
from ..data.clips import ClipConfig, ClipDataset, collate_clips
from ..data.views import view_input
from ..methods.iic import intra_negative
from ..nets.backbones import retrieval_feature

BROKEN = ("shuffled", "reversed", "repeated")


def broken_versions(x: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The broken-time versions of a float clip batch ``(B, C, T, H, W)``."""
    return {
        "shuffled": intra_negative(x, "shuffle", generator),
        "reversed": x.flip(2),
        "repeated": intra_negative(x, "repeat", generator),
    }


@torch.inference_mode()
def order_sensitivity(
    backbone: nn.Module,
    data,
    split: int,
    frames: int,
    stride: int,
    crop: int,
    feature: str = "pool",
    center: bool = False,
    device: torch.device | str = "cpu",
    seed: int = 0,
    batch_size: int = 32,
    view: str = "rgb",
) -> dict[str, float]:
    """Mean cosine similarity (over test videos) between a clip's feature and each broken version's.

    ``center``: subtract the mean feature of the intact clips first (the protocol of a centred method), so
    the similarity is measured around the features' common component, not through it. ``view``: the input
    (`views.EVAL_VIEWS`) whose clip is broken.
    """
    device = torch.device(device)
    modalities = modalities_for((view,))
    dataset = ClipDataset(
        data,
        split,
        "test",
        ClipConfig(frames=frames, stride=stride, modalities=modalities, test_clips=1),
        mode="test",
    )
    backbone = backbone.to(device).eval()
    aug = augment.AugmentConfig(crop=crop, train=False, camera_views=(view,))
    generator = torch.Generator().manual_seed(seed)
    feats: dict[str, list[torch.Tensor]] = {k: [] for k in ("intact", *BROKEN)}
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_clips):
        raw = {k: v.to(device) for k, v in augment.clips_of(batch, modalities).items()}
        params = augment.sample_params(batch["index"].shape[0], augment.batch_hw(batch), aug, device=device)
        x = view_input(augment.apply(raw, params, aug), view)
        for name, clip in {"intact": x, **broken_versions(x, generator)}.items():
            feats[name].append(retrieval_feature(backbone(clip), feature).double().cpu())
    f = {k: torch.cat(v) for k, v in feats.items()}
    mean = f["intact"].mean(0, keepdim=True) if center else 0.0
    intact = F.normalize(f["intact"] - mean, dim=1)
    return {k: float((intact * F.normalize(f[k] - mean, dim=1)).sum(1).mean()) for k in BROKEN}
