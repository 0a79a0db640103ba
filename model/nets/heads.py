"""Every projection head, for every method: the MLP heads (IIC's v2 code, DualVar's clip and series heads)
and the centring BatchNorm. Inputs are pooled backbone features ``(B, D)``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..config import HEADS


def l2_normalize(x: Tensor, dim: int = -1) -> Tensor:
    return F.normalize(x, p=2, dim=dim, eps=1e-12)


class ProjectionHead(nn.Module):
    """MLP head ``D_in -> hidden -> D_out`` with ReLU, then L2 norm: ``(B, D_in) -> (B, D_out)`` unit vectors.

    * IIC (the authors' v2 code, ``--head mlp``): 512-512-128.
    * DualVar's clip head: hidden = D_in, 128 out. Its series head: ``slots`` > 1 reads the output as
      ``(B, slots, D_out)``, each slot a unit vector (the segment slots of the shuffle-rank loss).
    * ``batchnorm`` (``--head mlp-bn``, not the authors'): BatchNorm in the hidden layer, as SimCLR's head. A
      fresh ReLU network maps every clip to nearly one direction (cosine ~0.95); centring the hidden layer per
      batch removes that from the first step. Measured against the tiny recipe's chance plateau
      (BENCHMARKS.md, "Learning"): it does not shorten it and does not raise retrieval; an ablation option,
      in no preset.
    * ``center_out`` (``--head mlp-bn-out``): an affine-free BatchNorm on the output too, as SimCLR v2's
    head, so
      the head cannot map every clip to one point (the constant a bias could learn is removed).
    """

    def __init__(
        self,
        in_dim: int = 512,
        hidden_dim: int = 512,
        out_dim: int = 128,
        slots: int = 1,
        batchnorm: bool = False,
        center_out: bool = False,
    ):
        super().__init__()
        self.out_dim, self.slots, self.batchnorm = out_dim, slots, batchnorm
        norm = [nn.BatchNorm1d(hidden_dim)] if batchnorm else []
        out = [nn.BatchNorm1d(slots * out_dim, affine=False)] if center_out else []
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            *norm,
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, slots * out_dim),
            *out,
        )

    def forward(self, x: Tensor) -> Tensor:
        z = self.mlp(x)
        return l2_normalize(z) if self.slots == 1 else l2_normalize(z.view(-1, self.slots, self.out_dim))


class CenterHead(nn.Module):
    """Affine-free BatchNorm1d on the pooled feature (``--head bn``): removes the direction that every feature
    of a fresh ReLU network shares (cosine ~0.95 between any two clips), so the banks do not collapse onto it.
    Each view is encoded in its own pass, so each is centred by its own batch."""

    def __init__(self, dim: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, affine=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(x)


def make_head(name: str, dim: int) -> nn.Module | None:
    """IIC's projection head ``--head name`` on ``dim``-d pooled features (None: the paper's, no head)."""
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; choose one of {', '.join(HEADS)}")
    if name == "none":
        return None
    if name == "bn":
        return CenterHead(dim)
    return ProjectionHead(dim, batchnorm=name in ("mlp-bn", "mlp-bn-out"), center_out=name == "mlp-bn-out")
