"""Video backbones for IIC / DualVar: R3D, R(2+1)D and C3D-BN from one builder.

All three share one skeleton: a stem ``conv1`` and four stages ``conv2`` .. ``conv5``, then a global
average pool. They differ only in how a stage is made:

- ``r3d``:  residual BasicBlocks of full 3D convolutions (no conv bias).
- ``r21d``: the same blocks with every ``t x k x k`` conv (stem and 1x1x1 shortcuts included, as in
  the VCOP/IIC ``R2Plus1DNet``) factorised into a spatial ``1 x k x k`` conv to ``M`` channels, BN,
  ReLU and a temporal ``t x 1 x 1`` conv, ``M = floor(t k^2 Cin Cout / (k^2 Cin + t Cout))``.
- ``c3d``:  plain 3x3x3 conv (with bias) + BN + ReLU units, a max-pool at the start of each stage:
  (1,2,2) before ``conv2`` and (2,2,2) before ``conv3`` .. ``conv5``.

Shapes at a 16x112x112 clip, full width (64): every arch gives ``conv5`` = ``(B, 512, 2, 7, 7)``,
``pool`` = ``(B, 512)``, and the IIC retrieval feature (conv5 max-pooled (1,2,2), flattened)
= 512 x 2 x 3 x 3 = 9,216 values.

The configurations (`BackboneConfig`, the named ones in ``BACKBONES``) are in model/config/backbones.py.
Parameter counts of the full models (no classifier): R3D-10 14.36M, R(2+1)D-10 14.37M, C3D-BN 27.66M.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ARCHS, BackboneConfig, backbone_config

Triple = tuple[int, int, int]
# conv(in_channels, out_channels, kernel, stride, padding) -> module
ConvFactory = Callable[[int, int, Triple, Triple, Triple], nn.Module]


# --------------------------------------------------------------------------------------------
# Convolutions


def _conv3d(cin: int, cout: int, kernel: Triple, stride: Triple, padding: Triple) -> nn.Conv3d:
    # No bias: every conv in the ResNets is followed by BN.
    return nn.Conv3d(cin, cout, kernel, stride=stride, padding=padding, bias=False)


def r21d_mid_channels(cin: int, cout: int, kernel: Triple) -> int:
    """Mid channels of a factorised conv, chosen so it has about the parameters of the 3D conv.

    ``M = floor(t kh kw Cin Cout / (kh kw Cin + t Cout))`` (Tran et al. 2018), at least 1.
    """
    t, kh, kw = kernel
    return max(1, (t * kh * kw * cin * cout) // (kh * kw * cin + t * cout))


class Conv2Plus1d(nn.Sequential):
    """A ``t x kh x kw`` conv factorised as spatial ``1 x kh x kw`` -> BN -> ReLU -> temporal ``t x 1 x 1``.

    Same input/output shapes as the 3D conv it replaces: ``(B, Cin, T, H, W) -> (B, Cout, T', H', W')``.
    """

    def __init__(self, cin: int, cout: int, kernel: Triple, stride: Triple, padding: Triple) -> None:
        mid = r21d_mid_channels(cin, cout, kernel)
        (t, kh, kw), (st, sh, sw), (pt, ph, pw) = kernel, stride, padding
        super().__init__(
            OrderedDict(
                spatial=nn.Conv3d(cin, mid, (1, kh, kw), stride=(1, sh, sw), padding=(0, ph, pw), bias=False),
                bn=nn.BatchNorm3d(mid),
                relu=nn.ReLU(inplace=True),
                temporal=nn.Conv3d(mid, cout, (t, 1, 1), stride=(st, 1, 1), padding=(pt, 0, 0), bias=False),
            )
        )


def _conv_bn_relu(
    conv: ConvFactory, cin: int, cout: int, kernel: Triple, stride: Triple, padding: Triple
) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv=conv(cin, cout, kernel, stride, padding),
            bn=nn.BatchNorm3d(cout),
            relu=nn.ReLU(inplace=True),
        )
    )


# --------------------------------------------------------------------------------------------
# Stages


class BasicBlock(nn.Module):
    """Residual block: conv-BN-ReLU-conv-BN (+ shortcut) -> ReLU, 3x3x3 kernels.

    With ``stride`` 2 the first conv halves T, H and W and the shortcut is a strided 1x1x1 conv + BN.
    """

    def __init__(self, conv: ConvFactory, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        s = (stride, stride, stride)
        self.conv1 = conv(cin, cout, (3, 3, 3), s, (1, 1, 1))
        self.bn1 = nn.BatchNorm3d(cout)
        self.conv2 = conv(cout, cout, (3, 3, 3), (1, 1, 1), (1, 1, 1))
        self.bn2 = nn.BatchNorm3d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                OrderedDict(conv=conv(cin, cout, (1, 1, 1), s, (0, 0, 0)), bn=nn.BatchNorm3d(cout))
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def _resnet_layers(cfg: BackboneConfig, conv: ConvFactory) -> list[nn.Module]:
    """conv1 (3x7x7, stride (1,2,2)) then stages conv2..conv5; conv3..conv5 halve T, H and W."""
    ch = cfg.stage_channels
    layers: list[nn.Module] = [_conv_bn_relu(conv, cfg.in_channels, ch[0], (3, 7, 7), (1, 2, 2), (1, 3, 3))]
    for i, n_blocks in enumerate(cfg.blocks):
        cin, cout = ch[i], ch[i + 1]
        stride = 1 if i == 0 else 2
        blocks = [BasicBlock(conv, cin, cout, stride)]
        blocks += [BasicBlock(conv, cout, cout, 1) for _ in range(n_blocks - 1)]
        layers.append(nn.Sequential(*blocks))
    return layers


def _c3d_layers(cfg: BackboneConfig) -> list[nn.Module]:
    """conv1, then each stage = max-pool ((1,2,2) before conv2, (2,2,2) after) + conv units."""

    def conv(cin: int, cout: int, kernel: Triple, stride: Triple, padding: Triple) -> nn.Conv3d:
        # C3D keeps the conv bias even though BN follows (VCOP/IIC's C3D-BN; part of the 27.66M).
        return nn.Conv3d(cin, cout, kernel, stride=stride, padding=padding, bias=True)

    ch = cfg.stage_channels
    unit = (3, 3, 3), (1, 1, 1), (1, 1, 1)
    layers: list[nn.Module] = [_conv_bn_relu(conv, cfg.in_channels, ch[0], *unit)]
    for i, n_units in enumerate(cfg.blocks):
        pool = (1, 2, 2) if i == 0 else (2, 2, 2)
        modules: list[nn.Module] = [nn.MaxPool3d(pool, stride=pool)]
        cins = [ch[i]] + [ch[i + 1]] * (n_units - 1)
        modules += [_conv_bn_relu(conv, cin, ch[i + 1], *unit) for cin in cins]
        layers.append(nn.Sequential(*modules))
    return layers


# --------------------------------------------------------------------------------------------
# Model


class VideoBackbone(nn.Module):
    """conv1 .. conv5 then global average pooling.

    ``forward(x)`` takes a float clip batch ``(B, C, T, H, W)`` and returns named features:
    ``"conv5"``: ``(B, out_dim, T', H', W')``, the last conv feature map (``(B, 512, 2, 7, 7)`` for a
    full-width model at 16x112x112), and ``"pool"``: ``(B, out_dim)``, its spatio-temporal mean.
    """

    def __init__(self, layers: list[nn.Module], out_dim: int) -> None:
        super().__init__()
        self.features = nn.Sequential(OrderedDict((f"conv{i + 1}", layer) for i, layer in enumerate(layers)))
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        # channels-last 3D activations: ~1.8x faster convolutions on CPU (oneDNN) and the layout cuDNN
        # prefers under AMP; the weights are converted by build_backbone. Results keep their logical shape.
        conv5 = self.features(x.contiguous(memory_format=torch.channels_last_3d))
        return {"conv5": conv5, "pool": conv5.mean(dim=(2, 3, 4))}


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm3d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def build_backbone(cfg: BackboneConfig | str) -> VideoBackbone:
    """Build the backbone ``cfg`` describes (or the one named so in ``BACKBONES``), with Kaiming-initialised
    convs and BN at (1, 0)."""
    cfg = backbone_config(cfg) if isinstance(cfg, str) else cfg
    if cfg.arch == "r3d":
        layers = _resnet_layers(cfg, _conv3d)
    elif cfg.arch == "r21d":
        layers = _resnet_layers(cfg, Conv2Plus1d)
    elif cfg.arch == "c3d":
        layers = _c3d_layers(cfg)
    else:  # only reachable if the config was built around __post_init__
        raise ValueError(f"unknown backbone arch {cfg.arch!r}; expected one of {', '.join(ARCHS)}")
    model = VideoBackbone(layers, cfg.out_dim)
    _init_weights(model)
    return model.to(memory_format=torch.channels_last_3d)


def retrieval_feature(features: dict[str, torch.Tensor], kind: str = "conv5") -> torch.Tensor:
    """The clip feature used for nearest-neighbour retrieval, ``(B, D)``.

    ``"conv5"``: IIC's feature, conv5 max-pooled with kernel = stride = (1, 2, 2) and flattened in
    (C, T, H, W) order; D = 512 x 2 x 3 x 3 = 9,216 for a full-width model at 16x112x112.
    ``"pool"``: the globally average-pooled feature, D = out_dim (DualVar's 512-d feature).
    """
    if kind == "conv5":
        pooled = F.max_pool3d(features["conv5"], kernel_size=(1, 2, 2), stride=(1, 2, 2))
        return torch.flatten(pooled, 1)
    if kind == "pool":
        return features["pool"]
    raise ValueError(f"unknown retrieval feature {kind!r}; expected 'conv5' or 'pool'")
