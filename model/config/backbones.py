"""The backbone architectures (built by model/nets/backbones.py) and the named ones."""

from __future__ import annotations

import sys
from dataclasses import dataclass

if sys.version_info >= (3, 11):
    pass
else:  # the same parser, from PyPI (setup.cfg)
    pass


ARCHS = ("r3d", "r21d", "c3d")
# Units per stage conv2..conv5: residual blocks for r3d/r21d, conv+BN+ReLU units for c3d.
DEFAULT_BLOCKS: dict[str, tuple[int, int, int, int]] = {
    "r3d": (1, 1, 1, 1),
    "r21d": (1, 1, 1, 1),
    "c3d": (1, 2, 2, 2),
}
# Output channels of conv1..conv5 as multiples of `width`.
WIDTH_MULTIPLIERS: dict[str, tuple[int, ...]] = {
    "r3d": (1, 1, 2, 4, 8),
    "r21d": (1, 1, 2, 4, 8),
    "c3d": (1, 2, 4, 8, 8),
}


@dataclass(frozen=True)
class BackboneConfig:
    """Backbone architecture (built by model/nets/backbones.py).

    arch: ``"r3d"`` | ``"r21d"`` | ``"c3d"``.
    width: channels of conv1; conv1..conv5 have width x (1, 1, 2, 4, 8) for the ResNets and
        width x (1, 2, 4, 8, 8) for C3D, so ``out_dim = 8 * width``.
    blocks: units in each of the stages conv2..conv5 (residual blocks, or C3D conv units).
        ``None`` means the arch's standard layout: (1, 1, 1, 1) for the 10-layer ResNets,
        (1, 2, 2, 2) for C3D; (2, 2, 2, 2) gives an 18-layer ResNet.
    in_channels: channels of the input clip (3 for RGB, residual frames and replicated flow).
    """

    arch: str = "r3d"
    width: int = 64
    blocks: tuple[int, ...] | None = None
    in_channels: int = 3

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"unknown backbone arch {self.arch!r}; expected one of {', '.join(ARCHS)}")
        blocks = DEFAULT_BLOCKS[self.arch] if self.blocks is None else tuple(int(b) for b in self.blocks)
        if len(blocks) != 4 or min(blocks) < 1:
            raise ValueError(f"blocks must be 4 positive ints (stages conv2..conv5), got {self.blocks!r}")
        if self.width < 1 or self.in_channels < 1:
            raise ValueError(f"width and in_channels must be positive, got {self.width}, {self.in_channels}")
        # Stored resolved (and as a tuple even when read back from JSON) so the saved dict is explicit.
        object.__setattr__(self, "blocks", blocks)

    @property
    def stage_channels(self) -> tuple[int, ...]:
        """Output channels of conv1..conv5."""
        return tuple(self.width * m for m in WIDTH_MULTIPLIERS[self.arch])

    @property
    def out_dim(self) -> int:
        """Channels of conv5, i.e. the size of the pooled feature."""
        return self.stage_channels[-1]


BACKBONES: dict[str, BackboneConfig] = {
    "r3d-10": BackboneConfig("r3d"),
    "r3d-18": BackboneConfig("r3d", blocks=(2, 2, 2, 2)),
    "r21d-10": BackboneConfig("r21d"),
    "r21d-18": BackboneConfig("r21d", blocks=(2, 2, 2, 2)),
    "c3d": BackboneConfig("c3d"),
    # Tiny variants (out_dim 64) for tests and CPU smoke runs; "tiny" is the R3D one.
    "tiny": BackboneConfig("r3d", width=8),
    "r3d-tiny": BackboneConfig("r3d", width=8),
    "r21d-tiny": BackboneConfig("r21d", width=8),
    "c3d-tiny": BackboneConfig("c3d", width=8),
    # Twice the tiny width (out_dim 128, ~4x the compute): the CPU ablation's "wider backbone".
    "r3d-small": BackboneConfig("r3d", width=16),
}


def backbone_config(name: str) -> BackboneConfig:
    """The named backbone (see ``BACKBONES``); adjust with ``dataclasses.replace``."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone preset {name!r}; expected one of {', '.join(BACKBONES)}")
    return BACKBONES[name]
