"""Batched augmentation: one crop/flip per sample for every frame and every view."""

import pytest
import torch

from iic.model.data.augment import (
    AugmentConfig,
    AugmentParams,
    apply,
    colour_jitter,
    crop_flip,
    sample_params,
)
from iic.model.data.views import residual_input, view_input

B, T, H, W, CROP = 6, 4, 12, 14, 8


def coordinate_views(batch: int = B) -> dict[str, torch.Tensor]:
    """Views whose pixels encode where they came from: rgb/res channel 0 = h, channel 1 = w (rgb channel
    2 = t, res channel 2 = sample index); flow u = w, v = h."""
    h = torch.arange(H).view(1, 1, H, 1).expand(batch, T, H, W)
    w = torch.arange(W).view(1, 1, 1, W).expand(batch, T, H, W)
    t = torch.arange(T).view(1, T, 1, 1).expand(batch, T, H, W)
    b = torch.arange(batch).view(batch, 1, 1, 1).expand(batch, T, H, W)
    rgb = torch.stack([h, w, t], 1).to(torch.uint8)
    res = torch.stack([h, w, b], 1).to(torch.uint8)
    flow = torch.stack([w, h], 1).to(torch.uint8)
    return {"rgb": rgb, "res": res, "flow": flow}


def decode(out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Back to the uint8 codes (exact for these formulas)."""
    return {
        "rgb": (out["rgb"] * 255).round().long(),
        "res": (out["res"] * 127.5 + 128).round().long(),
        "flow": ((out["flow"] + 1) * 127.5).round().long(),
    }


def test_same_window_for_every_frame_and_view():
    cfg = AugmentConfig(crop=CROP, flip=True, train=True)
    params = sample_params(B, (H, W), cfg, torch.Generator().manual_seed(0))
    q = decode(apply(coordinate_views(), params, cfg))
    ar = torch.arange(CROP)
    for b in range(B):
        top, left = params.offsets[b].tolist()
        cols = left + (ar.flip(0) if params.flip[b] else ar)
        exp_h = (top + ar).view(CROP, 1).expand(T, CROP, CROP)
        exp_w = cols.view(1, CROP).expand(T, CROP, CROP)
        for name in ("rgb", "res"):
            assert torch.equal(q[name][b, 0], exp_h) and torch.equal(q[name][b, 1], exp_w), name
        assert torch.equal(q["rgb"][b, 2], torch.arange(T).view(T, 1, 1).expand(T, CROP, CROP))
        assert torch.equal(q["res"][b, 2], torch.full((T, CROP, CROP), b))
        assert torch.equal(q["flow"][b, 0], (255 - exp_w) if params.flip[b] else exp_w)  # u negated
        assert torch.equal(q["flow"][b, 1], exp_h)


def test_samples_get_different_windows_and_flips():
    cfg = AugmentConfig(crop=CROP, flip=True)
    p = sample_params(64, (H, W), cfg, torch.Generator().manual_seed(1))
    assert p.offsets.shape == (64, 2) and p.offsets.dtype == torch.int64
    assert len({tuple(o) for o in p.offsets.tolist()}) > 1
    assert (p.offsets[:, 0] <= H - CROP).all() and (p.offsets[:, 1] <= W - CROP).all()
    assert (p.offsets >= 0).all()
    assert 0 < int(p.flip.sum()) < 64


def test_flip_negates_flow_u_and_mirrors_everything():
    cfg = AugmentConfig(crop=CROP, flip=True)
    g = torch.Generator().manual_seed(2)
    views = {
        "flow": torch.randint(0, 256, (1, 2, T, H, W), generator=g, dtype=torch.uint8),
        "rgb": torch.randint(0, 256, (1, 3, T, H, W), generator=g, dtype=torch.uint8),
    }
    views = {k: v.repeat(2, 1, 1, 1, 1) for k, v in views.items()}  # the same clip twice
    p = AugmentParams(torch.tensor([[1, 3], [1, 3]]), torch.tensor([False, True]))
    out = apply(views, p, cfg)
    plain, flipped = out["flow"][0], out["flow"][1]
    assert torch.allclose(flipped[0], -plain[0].flip(-1))  # u: mirrored and negated
    assert torch.allclose(flipped[1], plain[1].flip(-1))  # v: mirrored only
    assert torch.allclose(out["rgb"][1], out["rgb"][0].flip(-1))
    assert not torch.allclose(flipped[0], plain[0].flip(-1))


def test_eval_is_centre_crop_without_flip_or_jitter():
    cfg = AugmentConfig(crop=CROP, flip=True, train=False)
    p = sample_params(3, (H, W), cfg, torch.Generator().manual_seed(0))
    assert p.offsets.tolist() == [[(H - CROP) // 2, (W - CROP) // 2]] * 3
    assert not p.flip.any()
    q = decode(apply(coordinate_views(3), p, cfg))
    ar = torch.arange(CROP).expand(3, T, CROP)
    assert torch.equal(q["rgb"][:, 0, :, :, 0], (H - CROP) // 2 + ar)
    assert torch.equal(q["rgb"][:, 1, :, 0, :], (W - CROP) // 2 + ar)


def test_determinism_for_a_seed():
    cfg = AugmentConfig(crop=CROP, flip=True)
    views = coordinate_views()
    runs = [
        apply(views, sample_params(B, (H, W), cfg, torch.Generator().manual_seed(s)), cfg) for s in (5, 5, 6)
    ]
    for k in views:
        assert torch.equal(runs[0][k], runs[1][k])
    assert not torch.equal(runs[0]["rgb"], runs[2]["rgb"])


def test_dtypes_and_ranges():
    cfg = AugmentConfig(crop=CROP)
    g = torch.Generator().manual_seed(3)
    views = {
        "rgb": torch.randint(0, 256, (B, 3, T, H, W), generator=g, dtype=torch.uint8),
        "res": torch.randint(0, 256, (B, 3, T, H, W), generator=g, dtype=torch.uint8),
        "flow": torch.randint(0, 256, (B, 2, T, H, W), generator=g, dtype=torch.uint8),
    }
    views["res"][:, :, :, :, :] = 0
    views["res"][0] = 255
    views["flow"][:, 0], views["flow"][:, 1] = 0, 255
    out = apply(views, sample_params(B, (H, W), cfg, g), cfg)
    for k, c in (("rgb", 3), ("res", 3), ("flow", 2)):
        assert out[k].dtype == torch.float32 and out[k].shape == (B, c, T, CROP, CROP)
    assert out["rgb"].min() >= 0 and out["rgb"].max() <= 1
    assert torch.allclose(out["res"][0], torch.tensor(127 / 127.5)) and torch.allclose(
        out["res"][1:], torch.tensor(-128 / 127.5)
    )
    assert torch.all(out["flow"][:, 0] == -1) and torch.all(out["flow"][:, 1] == 1)
    p = sample_params(B, (H, W), AugmentConfig(crop=CROP), g)
    plain = apply({"rgb": views["rgb"]}, p, AugmentConfig(crop=CROP))
    assert torch.allclose(plain["rgb"], crop_flip(views["rgb"], p.offsets, p.flip, CROP).float() / 255)


def test_colour_jitter_is_one_transform_per_clip():
    """`colour_jitter` (DualVar's SimCLR augmentation) gives a still clip the same colours in every frame, and
    factors of 1 are the identity."""
    g = torch.Generator().manual_seed(4)
    frame = torch.rand(B, 3, 1, H, W, generator=g)
    still = frame.expand(B, 3, T, H, W).contiguous()
    factors = 0.5 + torch.rand(B, 3, generator=g)
    out = colour_jitter(still.clone(), factors)
    assert not torch.allclose(out, still)
    assert torch.equal(out, out[:, :, :1].expand_as(out))  # a still clip stays still
    assert torch.allclose(colour_jitter(still.clone(), torch.ones(B, 3)), still)
    bright = colour_jitter(torch.full((1, 3, 2, 2, 2), 0.4), torch.tensor([[2.0, 1.0, 1.0]]))
    assert torch.allclose(bright, torch.full_like(bright, 0.8))


def test_view_input_channels():
    g = torch.Generator().manual_seed(5)
    views = {
        "rgb": torch.rand(2, 3, T, 4, 4, generator=g),
        "res": torch.rand(2, 3, T, 4, 4, generator=g) * 2 - 1,
        "flow": torch.rand(2, 2, T, 4, 4, generator=g) * 2 - 1,
    }
    assert view_input(views, "rgb") is views["rgb"]
    assert torch.allclose(view_input(views, "res"), (views["res"] + 1) / 2)
    assert torch.allclose(residual_input(torch.tensor([-1.0, 0.0, 1.0])), torch.tensor([0.0, 0.5, 1.0]))
    for name, c in (("flow-u", 0), ("flow-v", 1)):
        x = view_input(views, name)
        assert x.shape == (2, 3, T, 4, 4)
        for k in range(3):
            assert torch.allclose(x[:, k], (views["flow"][:, c] + 1) / 2)
    x = view_input(views, "flow")
    u, v = views["flow"][:, 0], views["flow"][:, 1]
    assert x.shape == (2, 3, T, 4, 4)
    assert torch.allclose(x[:, 2], torch.sqrt(u**2 + v**2) / 2**0.5)
    assert x.min() >= 0 and x.max() <= 1
    with pytest.raises(ValueError):
        view_input(views, "depth")


def test_input_validation():
    cfg = AugmentConfig(crop=CROP)
    p = sample_params(1, (H, W), cfg, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="spatial size"):
        apply(
            {
                "rgb": torch.zeros(1, 3, T, H, W, dtype=torch.uint8),
                "res": torch.zeros(1, 3, T, H + 2, W, dtype=torch.uint8),
            },
            p,
            cfg,
        )
    with pytest.raises(ValueError, match="uint8"):
        apply({"rgb": torch.zeros(1, 3, T, H, W)}, p, cfg)
    with pytest.raises(ValueError, match="unknown"):
        apply({"depth": torch.zeros(1, 1, T, H, W, dtype=torch.uint8)}, p, cfg)
    with pytest.raises(ValueError, match="batch of 2"):
        apply({"rgb": torch.zeros(2, 3, T, H, W, dtype=torch.uint8)}, p, cfg)
    with pytest.raises(ValueError, match="larger"):
        sample_params(1, (4, 4), cfg, None)


def test_per_sample_sizes():
    """(B, 2) sizes: one size for all draws exactly what the (H, W) tuple draws; mixed sizes put every window
    inside its own sample (all offsets reachable), the centre crop at each sample's centre."""
    cfg = AugmentConfig(crop=CROP, flip=True)
    same = torch.tensor([[H, W]] * B)
    a = sample_params(B, (H, W), cfg, torch.Generator().manual_seed(3))
    b = sample_params(B, same, cfg, torch.Generator().manual_seed(3))
    assert all(torch.equal(getattr(a, k), getattr(b, k)) for k in ("offsets", "flip"))
    sizes = torch.tensor([[CROP, CROP + 3], [CROP + 5, CROP]] * 200)
    p = sample_params(400, sizes, AugmentConfig(crop=CROP), torch.Generator().manual_seed(0))
    top, left = p.offsets[:, 0], p.offsets[:, 1]
    assert set(top[0::2].tolist()) == {0} and set(left[0::2].tolist()) == {0, 1, 2, 3}
    assert set(top[1::2].tolist()) == set(range(6)) and set(left[1::2].tolist()) == {0}
    centre = sample_params(2, torch.tensor([[20, 31], [9, 12]]), AugmentConfig(crop=CROP, train=False))
    assert centre.offsets.tolist() == [[6, 11], [0, 2]]
