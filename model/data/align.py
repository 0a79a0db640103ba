"""The residual with the camera's motion removed (the ``res-aligned`` view), made on the training device.

With a moving camera the plain residual ``x[t] - x[t-1]`` is mostly an image of the background's texture
(everything moves), so an RGB clip and its residual can be matched by appearance alone. Here frame t-1 is
warped onto frame t by the camera's motion between them, estimated offline (`iic-prep camera`,
pipeline/camera.py: a similarity per frame pair, 24 bytes a frame), and then subtracted: what moves with the
camera cancels, what moves in the scene stays.

The warp runs on the batch (``grid_sample``, bilinear), at the pixels of each sample's crop window only, and
reads the previous frame over the whole stored frame: the crop's pixels near its edge get their source from
outside the crop, and every view stays pixel-aligned with the RGB crop. Where the source falls outside the
previous frame (what the camera has just brought into view) the residual is 0, as at frame 0 of a video.

What the warp leaves of a moving textured background (interpolation, compression) is then removed by a dead
zone: a pixel's change is kept only where it exceeds `ALIGNED_DEAD_ZONE` times the median change over the
sample's crop in that frame (pipeline/format.py says why and what it measured).

The stabilised views (``rgb-stable``, ``res-stable``) go further: every frame of the clip is resampled into
the coordinates of the clip's middle frame along the camera's path (the loader's ``path``: the map from the
middle frame to each frame), so the clip looks filmed by a still camera; ``res-stable`` is the difference of
consecutive stabilised frames (both resampled alike, then the same dead zone), and ``rgb-stable`` holds its
background to the middle frame's pixels by that dead zone (`_hold_background`: resampling at a different
sub-pixel offset every frame makes a still background flicker). Their crop window is moved
(or shrunk, as a video stabiliser zooms in) inside what every frame of the clip filmed (`place_window`): the
border a moving camera leaves otherwise is a cue of its own. IIC contrasts ``rgb-stable``
with ``res-stable``, and its intra-negatives are made of ``rgb-stable``: with the RGB clip still moving with
the camera, every clip is told from its still (repeated-frame) intra-negative by the camera's motion alone.
Measured against a loader that warps with OpenCV on the CPU: BENCHMARKS.md, "Camera motion".
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ...pipeline.reader import ALIGNED_DEAD_ZONE


def _affine(maps: Tensor) -> Tensor:
    """(..., 2, 3) -> (..., 3, 3) float64."""
    m = maps.to(torch.float64)
    bottom = torch.zeros(*m.shape[:-2], 1, 3, dtype=m.dtype, device=m.device)
    bottom[..., 0, 2] = 1.0
    return torch.cat([m, bottom], dim=-2)


def map_pixels(maps: Tensor, offsets: Tensor, crop: int, sides: Tensor | None = None) -> Tensor:
    """(B, T, crop, crop, 2) float32 (x, y): ``maps`` (B, T, 2, 3) (pixel coordinates, ``[x', y'] = A [x, y,
    1]``) evaluated at every pixel of each sample's crop window (offsets (B, 2): top, left), by broadcasting
    over the crop's rows and columns. ``sides`` (B,): a window of that many stored pixels resampled to
    ``crop`` (default: ``crop``, one pixel a pixel)."""
    device = maps.device
    a = maps.to(torch.float64)
    corner = torch.stack([offsets[:, 1], offsets[:, 0]], dim=-1).to(device, torch.float64)  # (B, 2) (x, y)
    origin = a[..., :2] @ corner[:, None, :, None] + a[..., 2:]  # (B, T, 2, 1): where the crop's (0, 0) goes
    r = torch.arange(crop, device=device, dtype=torch.float32)
    along_x, along_y, origin = (v.to(torch.float32) for v in (a[..., :2, 0], a[..., :2, 1], origin[..., 0]))
    if sides is not None:
        step = (sides.to(device, torch.float32) - 1) / max(crop - 1, 1)  # stored pixels per output pixel
        along_x, along_y = along_x * step[:, None, None], along_y * step[:, None, None]
    return (
        origin[:, :, None, None]
        + along_x[:, :, None, None] * r.view(1, 1, 1, crop, 1)
        + along_y[:, :, None, None] * r.view(1, 1, crop, 1, 1)
    )


def source_pixels(motion: Tensor, offsets: Tensor, crop: int) -> Tensor:
    """(B, T, crop, crop, 2) float32 (x, y): for each pixel of each sample's crop window in frame t, where in
    frame t-1 it was before the camera's ``motion`` (B, T, 2, 3), i.e. ``M^-1 p``."""
    return map_pixels(torch.linalg.inv(_affine(motion))[..., :2, :], offsets, crop)


def _sample(frames: Tensor, src: Tensor) -> Tensor:
    """Bilinear samples of uint8 ``frames`` (B, C, T, H, W) at ``src`` (B, T, h, w, 2) pixel coordinates ->
    float32 (B, C, T, h, w). Frame by frame: (B, 3, H, W) slices of the clip need no transposed copy of it
    (1.8x faster on a CPU)."""
    H, W = frames.shape[-2:]
    scale = torch.tensor([2.0 / max(W - 1, 1), 2.0 / max(H - 1, 1)], device=frames.device)
    grid = src * scale - 1.0  # normalised for grid_sample
    return torch.stack(
        [
            F.grid_sample(
                frames[:, :, t].float(),
                grid[:, t],
                mode="bilinear",
                padding_mode="border",
                align_corners=True,
            )
            for t in range(frames.shape[2])
        ],
        dim=2,
    )


def _inside(src: Tensor, hw: Tensor) -> Tensor:
    """(B, T, h, w) bool: ``src`` within each sample's own frame (hw (B, 2): its H, W; beyond it: padding).
    The maps are affine, so only frames whose crop corners fall outside need the per-pixel test; the tolerance
    keeps the border pixels of an identity map."""
    last = hw.to(src.device, torch.float32).flip(-1) - 1  # (B, 2): (x, y) of each sample's last pixel
    inside = torch.ones(src.shape[:-1], dtype=torch.bool, device=src.device)
    corners = src[:, :, [0, 0, -1, -1], [0, -1, 0, -1]]  # (B, T, 4, 2)
    outside = (corners < -1e-3) | (corners > last[:, None, None] + 1e-3)
    for b, t in outside.flatten(2).any(-1).nonzero().tolist():
        p = src[b, t]
        inside[b, t] = ((p >= -1e-3) & (p <= last[b] + 1e-3)).all(-1)
    return inside


def _beyond(change: Tensor, factor: float) -> Tensor:
    """(B, 1, T, h, w) bool: where ``change`` (B, C, T, h, w), largest over channels, exceeds ``factor`` times
    its median over each sample's frame."""
    magnitude = change.abs().amax(dim=1)  # (B, T, h, w)
    median = magnitude.flatten(2).median(dim=-1).values  # (B, T)
    return (magnitude > factor * median[..., None, None]).unsqueeze(1)


def _dead_zone(res: Tensor, factor: float) -> Tensor:
    """``res`` (B, C, T, h, w) with the changes within ``factor`` times the median change of each sample's
    frame set to 0 (in place)."""
    if factor:
        res *= _beyond(res, factor)
    return res


def _hold_background(clip: Tensor, factor: float) -> Tensor:
    """``clip`` (B, C, T, h, w) with every pixel whose change from the clip's middle frame is within
    ``factor`` times the median such change of its frame set to the middle frame's value: the residual's
    dead zone, applied to the clip itself against its middle frame.

    A stabilised frame is resampled at its own sub-pixel offset, so a still textured background flickers from
    frame to frame (bilinear interpolation blurs each frame by its own amount, on top of the compression's
    own changes). The residual's dead zone removes that flicker from ``res-stable`` but not from
    ``rgb-stable``, and a clip is then told from its repeated-frame intra-negative (no flicker) by the
    flicker alone, over the whole frame, before anything that moves in the scene counts (BENCHMARKS.md,
    "Camera motion"). Held, the background stands as still as a still camera's; where the scene moved, every
    frame keeps its own pixels.
    """
    if factor:
        middle = clip[:, :, clip.shape[2] // 2].unsqueeze(2)
        clip = torch.where(_beyond(clip - middle, factor), clip, middle)
    return clip


def _flip(x: Tensor, flip: Tensor) -> Tensor:
    if bool(flip.any()):
        return torch.where(flip.to(x.device).view(-1, 1, 1, 1, 1), x.flip(-1), x)
    return x


def aligned_residual(
    rgb: Tensor,
    prev: Tensor,
    motion: Tensor,
    offsets: Tensor,
    flip: Tensor,
    hw: Tensor,
    crop: int,
    factor: float = ALIGNED_DEAD_ZONE,
) -> Tensor:
    """``(x[t] - W_t(x[t-1])) / 255`` on each sample's crop: float32 ``(B, 3, T, crop, crop)`` in [-1, 1].

    rgb, prev: uint8 ``(B, 3, T, H, W)``, the clip and the frame before each of its frames (full stored
    frames, zero-padded beyond each sample's own size); motion: ``(B, T, 2, 3)``, the camera's motion from
    frame t-1 to frame t in pixels (``[x', y'] = M [x, y, 1]``); offsets (B, 2) (top, left) and flip (B,) of
    the crop (`augment.sample_params`); hw (B, 2) each sample's own (H, W). W_t(x[t-1]) at pixel p is the
    previous frame (bilinear) at ``M^-1 p``; where that lies outside the previous frame the residual is 0.
    Changes within ``factor`` times the median change of the sample's crop in that frame are set to 0 (0:
    kept).
    """
    src = source_pixels(motion.to(rgb.device), offsets, crop)  # (B, T, h, w, 2)
    current = torch.stack(
        [rgb[b, :, :, y : y + crop, x : x + crop] for b, (y, x) in enumerate(offsets.tolist())]
    ).float()
    res = current.sub_(_sample(prev, src)).div_(255.0)
    res *= _inside(src, hw).unsqueeze(1)
    return _flip(_dead_zone(res, factor), flip)


SMALLEST_WINDOW = 0.75  # of the crop's side: how far a stabilised window may shrink to fit (`place_window`)


def _slack(maps: Tensor, hw: Tensor, side: int) -> Tensor:
    """(B, n_top, n_left) float32: for every window of ``side`` px in each sample's frame of ``hw`` (B, 2),
    how far inside the frame its four corners stay under every map of ``maps`` (B, K, 2, 3), in px (< 0: it
    leaves the frame; -inf: beyond the sample's own frame, in a batch of several sizes)."""
    device, a = maps.device, maps.to(torch.float64)
    hw = hw.to(device)
    corners = torch.tensor([[0, 0], [side - 1, 0], [0, side - 1], [side - 1, side - 1]], dtype=a.dtype)
    # where each corner of the window at (0, 0) goes, (B, K, 4, 2) (x, y); moving the window moves all four
    # alike, so per map, axis and side of the frame only the outermost corner can leave it first
    base = corners.to(device) @ a[..., :2].transpose(-1, -2) + a[..., None, :, 2]
    last = hw.to(a.dtype).flip(-1)[:, None] - 1  # (B, 1, 2) (x, y) of each frame's last pixel
    low, high = base.amin(-2).float(), (last - base.amax(-2)).float()  # (B, K, 2) at (0, 0)
    span = hw - side  # (B, 2) each sample's largest offset
    top = torch.arange(int(span[:, 0].max()) + 1, device=device, dtype=torch.float32)
    left = torch.arange(int(span[:, 1].max()) + 1, device=device, dtype=torch.float32)
    step = a[..., :2].float()  # (B, K, 2 axes, 2): how each axis moves per pixel of left / top
    moved = step[..., 0, None, None] * left + step[..., 1, None, None] * top[:, None]  # (B, K, 2, nt, nl)
    slack = torch.minimum(low[..., None, None] + moved, high[..., None, None] - moved).flatten(1, 2).amin(1)
    beyond = (top[:, None] > span[:, 0, None, None]) | (left > span[:, 1, None, None])
    return slack.masked_fill_(beyond, -math.inf)


def _fitting(slack: Tensor) -> Tensor:
    return slack >= -1e-3


def _largest_fit(maps: Tensor, hw: Tensor, crop: int) -> tuple[int, Tensor]:
    """For one sample (maps (1, K, 2, 3), hw (1, 2)): the largest window side in [`SMALLEST_WINDOW` x crop,
    crop - 1] for which some window stays inside every frame, with its slack grid (a window that fits holds
    every smaller one: bisection); the smallest side's grid when none fits."""
    lo, hi = math.ceil(SMALLEST_WINDOW * crop), crop - 1
    best, best_slack = lo, _slack(maps, hw, lo)[0]
    if not bool(_fitting(best_slack).any()):
        return best, best_slack
    while lo < hi:
        mid = (lo + hi + 1) // 2
        grid = _slack(maps, hw, mid)[0]
        if bool(_fitting(grid).any()):
            lo, best, best_slack = mid, mid, grid
        else:
            hi = mid - 1
    return best, best_slack


def _nearest_fit(slack: Tensor, fraction: Tensor) -> Tensor:
    """(B, 2) int64: per sample, the fitting offset (``slack`` (B, nt, nl) >= 0) nearest to ``fraction`` (B, 2)
    of the way across the fitting offsets' bounding box (the first in row order on a tie)."""
    fits = _fitting(slack)
    n_top, n_left = fits.shape[1:]
    top = torch.arange(n_top, device=fits.device, dtype=torch.float64)[:, None].expand(n_top, n_left)
    left = torch.arange(n_left, device=fits.device, dtype=torch.float64)[None].expand(n_top, n_left)
    lo = torch.stack([top.where(fits, math.inf).amin((1, 2)), left.where(fits, math.inf).amin((1, 2))], -1)
    hi = torch.stack([top.where(fits, -math.inf).amax((1, 2)), left.where(fits, -math.inf).amax((1, 2))], -1)
    target = lo + fraction * (hi - lo)
    distance = (top - target[:, 0, None, None]) ** 2 + (left - target[:, 1, None, None]) ** 2
    flat = distance.where(fits, math.inf).flatten(1).argmin(1)
    return torch.stack([flat // n_left, flat % n_left], -1)


def place_window(maps: Tensor, offsets: Tensor, hw: Tensor, crop: int) -> tuple[Tensor, Tensor]:
    """Each sample's crop window, moved (and if need be shrunk) to where its image under every map of
    ``maps`` (B, K, 2, 3) lies inside the sample's own frame (hw (B, 2)), so no view of it shows what the
    camera never filmed. Returns offsets (B, 2) int64 (top, left) and sides (B,) int64 in stored pixels (a
    side below ``crop`` is resampled to ``crop``).

    A stabilised clip's window is placed in the middle frame; frames away from the middle see it shifted by the
    camera's path, and where that leaves the frame the pixels are invented (edge-repeated RGB, zero residual).
    That border is a strong cue shared by both views (its side and width give the direction and speed of the
    camera, a different one for every clip), so a contrastive task can be solved by it instead of by the
    scene. The windows whose four corners stay inside every frame form a convex set of offsets (the maps are
    affine); the drawn offset, as a fraction of the full range ``hw - crop``, is carried to the same fraction
    of that set's bounding box and then to the nearest offset of the set (a centre crop stays central; when
    every window fits, the drawn one). When no window of the crop's side fits (the camera moved more than the
    frame's margin) the largest that fits down to `SMALLEST_WINDOW` of it is used, as a video stabiliser zooms
    in; below that, the one that leaves the frame least. The whole batch is placed at once; only a sample
    whose window must shrink is handled alone.
    """
    device = maps.device
    hw = hw.to(device)
    fraction = offsets.to(device, torch.float64) / (hw - crop).clamp(min=1).double()
    slack = _slack(maps, hw, crop)
    placed = _nearest_fit(slack, fraction)
    sides = torch.full((len(placed),), crop, dtype=torch.int64, device=device)
    shrink = ~_fitting(slack).flatten(1).any(1)
    if bool(shrink.any()):  # rare: the camera moved more than the frame's margin
        for b in shrink.nonzero()[:, 0].tolist():
            side, grid = _largest_fit(maps[b : b + 1], hw[b : b + 1], crop)
            sides[b] = side
            if bool(_fitting(grid).any()):
                placed[b] = _nearest_fit(grid[None], fraction[b : b + 1])[0]
            else:
                flat = int(grid.flatten().argmax())
                placed[b] = torch.tensor(divmod(flat, grid.shape[1]), device=device)
    return placed.to(offsets.device), sides.to(offsets.device)


def stable_maps(motion: Tensor, path: Tensor) -> tuple[Tensor, Tensor]:
    """For the stabilised views: ``M_t^-1 path_t`` (B, T, 2, 3), where a point of the middle frame was one
    stored frame before frame t, and every map the stabilised window is seen through, (B, 2T, 2, 3): the
    path's and those (`place_window`)."""
    earlier = (torch.linalg.inv(_affine(motion)) @ _affine(path))[..., :2, :]
    return earlier, torch.cat([path.to(torch.float64), earlier], dim=1)


def stabilised(
    rgb: Tensor,
    prev: Tensor,
    motion: Tensor,
    path: Tensor,
    offsets: Tensor,
    flip: Tensor,
    hw: Tensor,
    crop: int,
    factor: float = ALIGNED_DEAD_ZONE,
    held: bool = True,
) -> tuple[Tensor, Tensor]:
    """``rgb-stable`` in [0, 1] and ``res-stable`` in [-1, 1], float32 ``(B, 3, T, crop, crop)``: the clip
    seen from its middle frame's camera, and the difference of consecutive such frames.

    rgb, prev, motion, offsets, flip, hw: as `aligned_residual`; path ``(B, T, 2, 3)``: the map from the
    clip's middle frame to frame t (pixel coordinates). The crop window is placed in the middle frame, moved
    (or shrunk) inside the part of it that every frame of the clip filmed (`place_window`).
    Frame t of ``rgb-stable`` at p is x[t] at ``path_t p`` (bilinear, the frame's edge repeated beyond it),
    its background then held to the middle frame's (`_hold_background`, the same ``factor``); ``res-stable``
    is x[t] at ``path_t p`` minus x[t-1] at ``M_t^-1 path_t p`` (the same point one stored frame earlier), 0
    where either lies outside its frame, then the dead zone. ``factor`` 0: neither. ``held`` False: the clip
    is returned as resampled, without the hold (a caller that wants ``res-stable`` only skips its cost, about
    a third of the view's on a CPU).
    """
    device = rgb.device
    path = path.to(device)
    earlier, maps = stable_maps(motion.to(device), path)
    offsets, sides = place_window(maps, offsets, hw, crop)
    here = map_pixels(path, offsets, crop, sides)
    before = map_pixels(earlier, offsets, crop, sides)
    current = _sample(rgb, here)
    res = (current - _sample(prev, before)).div_(255.0)
    res *= (_inside(here, hw) & _inside(before, hw)).unsqueeze(1)
    if held:
        current = _hold_background(current, factor)
    return _flip(current.div_(255.0), flip), _flip(_dead_zone(res, factor), flip)
