"""Foreground-background merging (FAME): the motion map against OpenCV's Gaussian blur, the mask on clips
whose moving part is known, and the merged batch."""

import cv2
import numpy as np
import torch

from iic.model.data.background import BLUR, FOREGROUND, foreground, merge_backgrounds, motion_map

H = W = 40


def textured(seed: int, frames: int = 6) -> torch.Tensor:
    """(3, T, H, W) in [0, 1]: a still random texture."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, 1, H, W, generator=g).expand(3, frames, H, W).clone()


def with_square(clip: torch.Tensor, top: int, left: int, step: int, side: int = 6) -> torch.Tensor:
    """``clip`` with a white square moving ``step`` px a frame to the right from (top, left)."""
    out = clip.clone()
    for t in range(out.shape[1]):
        out[:, t, top : top + side, left + step * t : left + step * t + side] = 1.0
    return out


def test_motion_map_is_the_mean_change_blurred_as_opencv_blurs():
    g = torch.Generator().manual_seed(3)
    clip = torch.rand(2, 3, 5, H, W, generator=g, dtype=torch.float32)
    side = int(BLUR * H) // 2 * 2 + 1
    got = motion_map(clip).numpy()
    for b in range(2):
        x = clip[b].numpy()
        change = np.abs(np.diff(x, axis=1)).sum(0).mean(0).astype(np.float32)
        want = cv2.GaussianBlur(change, (side, side), side / 3, borderType=cv2.BORDER_REFLECT_101)
        np.testing.assert_allclose(got[b], want, atol=1e-5)


def test_the_foreground_is_what_moved_and_at_most_the_fraction_asked():
    moving = with_square(textured(0), top=10, left=4, step=3)
    still = textured(1)
    noise = torch.rand(3, 6, H, W, generator=torch.Generator().manual_seed(2))  # everything changes
    fg = foreground(torch.stack([moving, still, noise]))
    path = torch.zeros(H, W, dtype=torch.bool)
    path[10:16, 4 : 4 + 3 * 5 + 6] = True  # every pixel the square covered
    assert bool(fg[0][path].all())  # the square's path (and a halo from the blur) ...
    assert not bool(fg[0][30:, :].any()) and not bool(fg[0][:, 34:].any())  # ... and nothing far from it
    assert not bool(fg[1].any())  # a clip that does not change has no foreground
    assert abs(float(fg[2].float().mean()) - FOREGROUND) < 0.01  # everything moves: the top half


def test_merged_clips_keep_their_foreground_over_another_clips_frames():
    clips = torch.stack([with_square(textured(s), top=5 + 8 * s, left=2, step=2) for s in range(4)])
    fg = foreground(clips)
    seen_shifts = set()
    for seed in range(8):
        out = merge_backgrounds(clips, torch.Generator().manual_seed(seed))
        again = merge_backgrounds(clips, torch.Generator().manual_seed(seed))
        assert torch.equal(out, again)  # the generator decides
        shifts = [s for s in range(1, 4) if torch.equal(out[0][:, :, ~fg[0]], clips[s][:, :, ~fg[0]])]
        assert len(shifts) == 1  # one other clip gives every background pixel, frame by frame
        shift = shifts[0]
        seen_shifts.add(shift)
        for b in range(4):
            donor = clips[(b + shift) % 4]
            assert torch.equal(out[b][:, :, fg[b]], clips[b][:, :, fg[b]])
            assert torch.equal(out[b][:, :, ~fg[b]], donor[:, :, ~fg[b]])
    assert seen_shifts == {1, 2, 3}  # never its own background
    single = clips[:1]
    assert merge_backgrounds(single, torch.Generator().manual_seed(0)) is single
