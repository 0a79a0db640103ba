"""Ablation: IIC and CMC with one encoder per modality (CMC's design) instead of IIC's one shared encoder.

`iic train`'s loop and step as they are, with `iic.model.methods.iic.Encoder` replaced for this process by
one that sends view 1 (RGB) and its intra-negatives through ``backbone``/``head`` and view 2 through its own
``backbone2``/``head2``. The finished checkpoint is written again as ``final-res.pt`` (view 2's encoder under
the ``backbone.`` keys) and ``final-rgb.pt`` (view 1's), so that `iic eval retrieval --modality res|rgb`
scores each modality with the encoder that saw it. An ablation harness, not an option of `iic train`: it did
not help (BENCHMARKS.md, "What did not help").

    python bench/ablate_two_encoders.py OUT SEED [PRESET]      # PRESET tiny (default) or cmc-tiny
    iic eval retrieval --data DATA --ckpt OUT/final-res.pt --modality res --workers 0
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from iic.model import checkpoint
from iic.model.config import TrainConfig, build_config
from iic.model.methods import iic
from iic.model.nets.backbones import build_backbone
from iic.model.nets.heads import make_head
from iic.model.run.train import train


class TwoEncoders(nn.Module):
    """View 1 and the intra-negatives made from it: ``backbone`` + ``head``; view 2: ``backbone2`` +
    ``head2``."""

    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__()
        self.backbone, self.backbone2 = (build_backbone(cfg.model) for _ in range(2))
        d = self.backbone.out_dim
        self.head, self.head2 = make_head(cfg.iic.head, d), make_head(cfg.iic.head, d)
        self.out_dim = getattr(self.head, "out_dim", d)

    @staticmethod
    def _embed(backbone: nn.Module, head: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
        f = backbone(x)["pool"]
        return head(f) if head is not None else f

    def forward(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        first = [
            self._embed(self.backbone, self.head, views[0]),
            self._embed(self.backbone2, self.head2, views[1]),
        ]
        return first + [self._embed(self.backbone, self.head, v) for v in views[2:]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("seed", type=int)
    ap.add_argument("preset", nargs="?", default="tiny", choices=("tiny", "cmc-tiny"))
    ap.add_argument("--data", type=Path, default=Path("/tmp/iic-learning/data/ucf101"))
    args = ap.parse_args()
    iic.Encoder = TwoEncoders  # what the IIC builders construct, for this process only
    cfg = build_config(
        args.preset, data=args.data, out=args.out, seed=args.seed, threads=1, workers=0, monitor_every=0
    )
    final = train(cfg, progress=False)  # the monitor would score view 2 with view 1's encoder: off
    ckpt = checkpoint.load(final)
    model = ckpt["model"]
    for view, prefix in (("res", "backbone2."), ("rgb", "backbone.")):
        ckpt["model"] = {"backbone." + k[len(prefix) :]: v for k, v in model.items() if k.startswith(prefix)}
        torch.save(ckpt, args.out / f"final-{view}.pt")
    print(f"wrote {args.out / 'final-res.pt'} and {args.out / 'final-rgb.pt'}")


if __name__ == "__main__":
    main()
