"""Backbones: parameter counts of the official variants, feature shapes, retrieval features, gradients."""

import dataclasses
import json

import pytest
import torch
from torch import nn

from iic.model.config import ARCHS, BACKBONES, BackboneConfig, backbone_config
from iic.model.nets.backbones import Conv2Plus1d, build_backbone, r21d_mid_channels, retrieval_feature

TINY = {"r3d": "r3d-tiny", "r21d": "r21d-tiny", "c3d": "c3d-tiny"}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def clip(b: int = 2, t: int = 8, h: int = 32, w: int = 32) -> torch.Tensor:
    return torch.randn(b, 3, t, h, w, generator=torch.Generator().manual_seed(0))


# docs/method.md, "Backbones": full width and depth, no classifier.
@pytest.mark.parametrize(
    "name, reference",
    [("r3d-10", 14.36e6), ("r21d-10", 14.37e6), ("c3d", 27.66e6)],
)
def test_parameter_count_matches_reference(name, reference):
    count = n_params(build_backbone(backbone_config(name)))
    assert abs(count - reference) / reference < 0.01
    # Tighter than the spec: the layouts reproduce the reference to its printed precision.
    assert round(count / 1e6, 2) == pytest.approx(reference / 1e6)


@pytest.mark.parametrize(
    "cin, cout, kernel, mid",
    [
        (3, 64, (3, 7, 7), 83),  # stem: 28224 // 339
        (64, 64, (3, 3, 3), 144),  # the 144 torchvision's R(2+1)D also uses
        (64, 128, (3, 3, 3), 230),  # 221184 // 960
        (64, 128, (1, 1, 1), 42),  # factorised 1x1x1 shortcut: 8192 // 192
        (1, 1, (1, 1, 1), 1),  # floor(1 / 2) = 0, clamped to 1
    ],
)
def test_r21d_mid_channels(cin, cout, kernel, mid):
    assert r21d_mid_channels(cin, cout, kernel) == mid


def test_conv2plus1d_is_spatial_then_temporal_with_3d_conv_shapes():
    conv = Conv2Plus1d(4, 6, (3, 3, 3), (2, 2, 2), (1, 1, 1))
    assert conv.spatial.kernel_size == (1, 3, 3) and conv.spatial.stride == (1, 2, 2)
    assert conv.temporal.kernel_size == (3, 1, 1) and conv.temporal.stride == (2, 1, 1)
    reference = nn.Conv3d(4, 6, 3, stride=2, padding=1)
    x = torch.randn(1, 4, 5, 9, 9)
    assert conv(x).shape == reference(x).shape == (1, 6, 3, 5, 5)


@pytest.mark.parametrize("name", ["r3d-10", "r21d-10", "c3d"])
def test_full_model_shapes_at_16x112x112(name):
    # Shape inference on the meta device: the full models at the real clip size, without compute.
    with torch.device("meta"):
        model = build_backbone(backbone_config(name))
        features = model(torch.empty(2, 3, 16, 112, 112))
    assert model.out_dim == 512
    assert features["conv5"].shape == (2, 512, 2, 7, 7)
    assert features["pool"].shape == (2, 512)
    assert retrieval_feature(features, "conv5").shape == (2, 9216)  # 512 x 2 x 3 x 3, as in IIC
    assert retrieval_feature(features, "pool").shape == (2, 512)


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_forward_returns_named_features(arch):
    cfg = backbone_config(TINY[arch])
    model = build_backbone(cfg).eval()
    with torch.no_grad():
        features = model(clip(t=8, h=32, w=32))
    assert set(features) == {"conv5", "pool"}
    assert model.out_dim == cfg.out_dim == 64
    # r3d/r21d: T 8 -> 4 -> 2 -> 1, H 32 -> 16 -> 8 -> 4 -> 2; c3d pools T 8 -> 4 -> 2 -> 1, H 32 -> 2.
    assert features["conv5"].shape == (2, 64, 1, 2, 2)
    assert torch.allclose(features["pool"], features["conv5"].mean(dim=(2, 3, 4)))
    assert torch.isfinite(features["pool"]).all()


def test_retrieval_feature_is_conv5_maxpooled_over_2x2_then_flattened():
    conv5 = torch.arange(2 * 3 * 2 * 5 * 5, dtype=torch.float32).reshape(2, 3, 2, 5, 5)
    pool = torch.randn(2, 3)
    features = {"conv5": conv5, "pool": pool}
    got = retrieval_feature(features, "conv5")
    assert got.shape == (2, 3 * 2 * 2 * 2)  # 5x5 -> 2x2: the odd last row and column are dropped
    # The values increase along W then H, so each 2x2 window's max is its bottom-right cell.
    expected = conv5[:, :, :, 1:4:2, 1:4:2].reshape(2, -1)
    assert torch.equal(got, expected)
    assert retrieval_feature(features, "pool") is pool
    with pytest.raises(ValueError, match="unknown retrieval feature"):
        retrieval_feature(features, "conv4")


@pytest.mark.parametrize("arch", ARCHS)
def test_gradient_reaches_first_conv(arch):
    model = build_backbone(backbone_config(TINY[arch])).train()
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv3d))
    assert first_conv.in_channels == 3
    features = model(clip(t=8, h=32, w=32))
    (features["pool"].pow(2).sum() + retrieval_feature(features).sum()).backward()
    grad = first_conv.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_eighteen_layer_variant_and_in_channels():
    cfg = BackboneConfig("r21d", width=8, blocks=(2, 2, 2, 2), in_channels=1)
    model = build_backbone(cfg)
    assert [len(getattr(model.features, f"conv{i}")) for i in range(2, 6)] == [2, 2, 2, 2]
    assert n_params(build_backbone(backbone_config("r3d-18"))) > 2 * n_params(
        build_backbone(backbone_config("r3d-10"))
    )
    with torch.no_grad():
        features = model.eval()(torch.randn(1, 1, 8, 32, 32))
    assert features["conv5"].shape == (1, 64, 1, 2, 2)


def test_c3d_layout():
    model = build_backbone(backbone_config("c3d"))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv3d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 256, 512, 512, 512, 512]
    assert all(c.kernel_size == (3, 3, 3) and c.bias is not None for c in convs)
    pools = [m.kernel_size for m in model.modules() if isinstance(m, nn.MaxPool3d)]
    assert pools == [(1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2)]


def test_resnet_convs_have_no_bias_and_only_downsampling_blocks_have_shortcuts():
    model = build_backbone(backbone_config("r3d-10"))
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv3d))
    first_blocks = [getattr(model.features, f"conv{i}")[0] for i in range(2, 6)]
    assert [block.shortcut is not None for block in first_blocks] == [False, True, True, True]
    stem = model.features.conv1.conv
    assert (stem.kernel_size, stem.stride, stem.out_channels) == ((3, 7, 7), (1, 2, 2), 64)


@pytest.mark.parametrize("arch", ARCHS)
def test_init_bn_is_identity_and_convs_are_kaiming(arch):
    model = build_backbone(backbone_config(TINY[arch]))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm3d):
            assert torch.equal(m.weight, torch.ones_like(m.weight))
            assert torch.equal(m.bias, torch.zeros_like(m.bias))
        elif isinstance(m, nn.Conv3d) and m.bias is not None:
            assert torch.equal(m.bias, torch.zeros_like(m.bias))
    # fan_out Kaiming normal: std = sqrt(2 / (out_channels * kernel volume)).
    conv = build_backbone(backbone_config("r3d-10")).features.conv5[0].conv2
    expected_std = (2.0 / (512 * 27)) ** 0.5
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.02)


def test_unknown_arch_is_a_one_line_value_error():
    with pytest.raises(ValueError) as err:
        build_backbone(BackboneConfig(arch="resnet50"))
    assert "resnet50" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "kwargs", [{"blocks": (1, 1, 1)}, {"blocks": (1, 0, 1, 1)}, {"width": 0}, {"in_channels": 0}]
)
def test_invalid_config_is_rejected(kwargs):
    with pytest.raises(ValueError):
        BackboneConfig("r3d", **kwargs)


def test_unknown_preset_is_rejected():
    with pytest.raises(ValueError, match="unknown backbone preset"):
        backbone_config("r3d-50")


def test_config_resolves_default_blocks_and_round_trips_through_json():
    assert backbone_config("r3d-10").blocks == (1, 1, 1, 1)
    assert backbone_config("c3d").blocks == (1, 2, 2, 2)
    assert backbone_config("r3d-10").stage_channels == (64, 64, 128, 256, 512)
    assert backbone_config("c3d").stage_channels == (64, 128, 256, 512, 512)
    for cfg in BACKBONES.values():
        restored = BackboneConfig(**json.loads(json.dumps(dataclasses.asdict(cfg))))
        assert restored == cfg and isinstance(restored.blocks, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        backbone_config("tiny").width = 16  # type: ignore[misc]


def test_channels_last_3d_gives_the_same_features():
    model = build_backbone(backbone_config("r3d-tiny")).eval()
    x = clip(t=4, h=32, w=32)
    with torch.no_grad():
        expected = retrieval_feature(model(x))
        model_cl = model.to(memory_format=torch.channels_last_3d)
        got = retrieval_feature(model_cl(x.contiguous(memory_format=torch.channels_last_3d)))
    assert torch.allclose(got, expected, atol=1e-5)
