"""Batched, device-side clip augmentation shared by every view of a sample.

A batch arrives from the loader as uint8 tensors ``(B, C, T, H, W)`` per modality (``rgb``, ``res``,
``flow``). :func:`sample_params` draws ONE set of random parameters per sample from an explicit
``torch.Generator``; :func:`apply` uses it for every frame of the clip and for every view, so RGB,
residual and flow stay pixel-aligned. (The official IIC code re-seeded Python's ``random`` per frame
to keep crops in sync, which broke silently: every frame got its own crop.)

Value ranges returned by :func:`apply` (float32):

* ``rgb``:  ``q / 255`` in [0, 1].
* ``res``:  ``(q - 128) / 127.5`` in [-1.004, 0.996], the frame difference ``x[t] - x[t-1]`` of [0, 1]
  frames as stored by the pipeline (``d = 2 (q - 128)``, so no change is exactly 0).
* ``flow``: ``q / 127.5 - 1`` in [-1, 1] per component (u, v); multiply by the quantisation bound
  (e.g. 20) for pixels. A horizontal flip negates u: mirroring an image reverses horizontal motion.
* ``res-aligned`` (from the ``camera`` modality: ``prev``, ``camera`` and ``path``, with ``rgb``): the residual
  after the camera's motion, ``(x[t] - W_t(x[t-1])) / 255`` in [-1, 1] (model/data/align.py), on the same crop;
  ``rgb-stable`` in [0, 1] and ``res-stable`` in [-1, 1]: the clip stabilised on its middle frame and the
  residual of its consecutive stabilised frames.

:func:`view_input` (model/data/views.py) then maps a view to the 3-channel encoder input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..config import MODALITIES, STABLE_VIEWS, SimCLRAugmentConfig
from .align import aligned_residual, stabilised

# What the loader ships for each modality (model/data/clips.py): ``camera`` is two tensors.
LOADED = {m: (m,) for m in MODALITIES} | {"camera": ("prev", "camera", "path")}


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation settings. IIC's recipe is a random 112 crop only (no flip, no colour jitter; DualVar's
    SimCLR-style colour augmentation is `apply_simclr`).

    crop:   side of the square crop in pixels.
    flip:   random horizontal flip with p = 0.5 (train only; off in IIC).
    train:  True = random crop/flip; False = centre crop, no flip.
    camera_views: which of the views made with the camera's motion `apply` returns when the batch has it.
    """

    crop: int = 112
    flip: bool = False
    train: bool = True
    camera_views: tuple[str, ...] = ("res-aligned",)


@dataclass(frozen=True)
class AugmentParams:
    """Per-sample parameters: offsets (B, 2) int64 (top, left); flip (B,) bool; hw (B, 2) int64, each
    sample's own frame size (None: the clips' size)."""

    offsets: Tensor
    flip: Tensor
    hw: Tensor | None = None


def clips_of(batch: dict, modalities: tuple[str, ...] | list[str], suffix: str = "") -> dict[str, Tensor]:
    """The loader's tensors of ``modalities`` in a batch (``suffix``: ``_1`` for its second clip), keyed as
    `apply` takes them: ``camera`` gives ``prev`` and ``camera``."""
    return {key: batch[f"{key}{suffix}"] for m in modalities for key in LOADED[m]}


def batch_hw(batch: dict, modality: str = "rgb") -> tuple[int, int] | Tensor:
    """Each sample's own frame size: the batch's ``hw`` (B, 2) when the loader gives one (videos of several
    sizes, zero-padded by `clips.collate_clips`), else the clips' (H, W)."""
    if "hw" in batch:
        return batch["hw"]
    x = (
        batch[modality]
        if modality in batch
        else next(v for v in batch.values() if torch.is_tensor(v) and v.dim() == 5)
    )
    return tuple(x.shape[-2:])


def sample_params(
    batch_size: int,
    in_hw: tuple[int, int] | Tensor,
    cfg: AugmentConfig,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> AugmentParams:
    """Draw one crop window and flip bit per sample.

    ``in_hw`` is the (H, W) of every sample, or a (B, 2) tensor of each sample's own (H, W) (videos of
    different sizes in one batch): a crop then lies inside its own sample's frames, the centre crop is
    each sample's centre. Random numbers come from ``generator`` only (on the generator's device, then
    moved to ``device``), so the same seed gives the same parameters on any device.
    """
    B = batch_size
    gdev = generator.device if generator is not None else torch.device("cpu")
    if torch.is_tensor(in_hw):
        hw = in_hw.to(gdev, torch.int64).reshape(B, 2)
        if bool((hw == hw[0]).all()):  # one size: exactly the draws of the fixed-size path
            in_hw = tuple(hw[0].tolist())
    if isinstance(in_hw, tuple):
        hw = torch.tensor([in_hw], device=gdev).expand(B, 2)
    H, W = hw[:, 0], hw[:, 1]
    if cfg.crop > int(H.min()) or cfg.crop > int(W.min()):
        small = int(torch.minimum(H, W).argmin())
        raise ValueError(f"crop {cfg.crop} larger than input {int(H[small])}x{int(W[small])}")
    if cfg.train and isinstance(in_hw, tuple):
        top = torch.randint(in_hw[0] - cfg.crop + 1, (B,), generator=generator, device=gdev)
        left = torch.randint(in_hw[1] - cfg.crop + 1, (B,), generator=generator, device=gdev)
        offsets = torch.stack([top, left], dim=1)
    elif cfg.train:  # uniform over each sample's own valid offsets
        u = torch.rand(B, 2, generator=generator, device=gdev, dtype=torch.float64)
        offsets = (u * (hw - cfg.crop + 1)).floor().long().minimum(hw - cfg.crop)
    else:  # centre crop
        offsets = (hw - cfg.crop) // 2
    if cfg.train and cfg.flip:
        flip = torch.rand(B, generator=generator, device=gdev) < 0.5
    else:
        flip = torch.zeros(B, dtype=torch.bool, device=gdev)
    return AugmentParams(offsets.to(device), flip.to(device), hw.to(device))


def crop_flip(x: Tensor, offsets: Tensor, flip: Tensor, crop: int) -> Tensor:
    """Crop ``(B, C, T, H, W)`` to ``(B, C, T, crop, crop)`` at per-sample offsets, mirroring the
    columns of flipped samples. One slice per sample covers all its frames (no loop over frames); on
    CPU this is ~25x faster than a vectorised gather, and the loop is only over B."""
    clips = []
    for b, ((top, left), f) in enumerate(zip(offsets.tolist(), flip.tolist(), strict=True)):
        clip = x[b, :, :, top : top + crop, left : left + crop]
        clips.append(clip.flip(-1) if f else clip)
    return torch.stack(clips)


def colour_jitter(rgb: Tensor, factors: Tensor) -> Tensor:
    """Brightness, contrast, saturation (in that order) on [0, 1] clips ``(B, 3, T, h, w)``.

    ``factors`` is (B, 3). The contrast reference is the mean grey level of the whole clip, so each
    sample gets one colour transform for all its frames (no flicker between frames).
    """
    b, c, s = (factors[:, i].view(-1, 1, 1, 1, 1).to(rgb) for i in range(3))
    grey_w = torch.tensor([0.299, 0.587, 0.114], dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1, 1)
    x = (rgb * b).clamp_(0, 1)
    mean = (x * grey_w).sum(1, keepdim=True).mean(dim=(2, 3, 4), keepdim=True)
    x.mul_(c).add_((1 - c) * mean).clamp_(0, 1)
    grey = (x * grey_w).sum(1, keepdim=True)
    return x.mul_(s).add_((1 - s) * grey).clamp_(0, 1)


def apply(views: dict[str, Tensor], params: AugmentParams, cfg: AugmentConfig) -> dict[str, Tensor]:
    """Crop/flip every view with the same per-sample window, convert to float (ranges in the module
    docstring). ``views`` maps a subset of ``rgb``/``res``/``flow`` to uint8
    ``(B, C, T, H, W)`` tensors of one spatial size; returns float32 ``(B, C, T, crop, crop)``. With ``prev``,
    ``camera`` and ``path`` (`clips_of`'s ``camera`` modality) beside ``rgb`` it also returns the camera views
    named in ``cfg.camera_views`` (``res-aligned``, ``rgb-stable``, ``res-stable``; the stabilised two are made
    together, ``rgb-stable``'s held background only when it is named)."""
    views = dict(views)
    camera = {k: views.pop(k) for k in LOADED["camera"] if k in views}
    unknown = set(views) - set(MODALITIES)
    if unknown:
        raise ValueError(f"unknown modalities {sorted(unknown)}; expected a subset of {MODALITIES}")
    if camera and (len(camera) != len(LOADED["camera"]) or "rgb" not in views):
        raise ValueError(f"the camera views need rgb and {', '.join(LOADED['camera'])} together")
    sizes = {tuple(v.shape[-2:]) for v in views.values()}
    if len(sizes) != 1:
        raise ValueError(f"all views must share one spatial size to stay aligned, got {sizes}")
    out = {}
    for name, q in views.items():
        if q.dtype != torch.uint8 or q.dim() != 5:
            raise ValueError(f"{name}: expected uint8 (B, C, T, H, W), got {q.dtype} {tuple(q.shape)}")
        if q.shape[0] != params.offsets.shape[0]:
            raise ValueError(f"{name}: batch of {q.shape[0]} but params for {params.offsets.shape[0]}")
        x = crop_flip(q, params.offsets, params.flip, cfg.crop).float()
        if name == "rgb":
            x = x / 255.0
        elif name == "res":
            x = (x - 128.0) / 127.5
        else:
            x = x / 127.5 - 1.0
            sign = torch.ones(x.shape[0], 2, device=x.device)
            sign[:, 0] = 1.0 - 2.0 * params.flip.to(x.device).float()  # u -> -u when flipped
            x = x * sign.view(-1, 2, 1, 1, 1)
        out[name] = x
    if camera:
        rgb = views["rgb"]
        hw = params.hw if params.hw is not None else torch.tensor([rgb.shape[-2:]]).expand(rgb.shape[0], 2)
        window = (params.offsets, params.flip, hw, cfg.crop)
        if "res-aligned" in cfg.camera_views:
            out["res-aligned"] = aligned_residual(rgb, camera["prev"], camera["camera"], *window)
        wanted = [v for v in STABLE_VIEWS if v in cfg.camera_views]
        if wanted:
            made = stabilised(
                rgb, camera["prev"], camera["camera"], camera["path"], *window, held="rgb-stable" in wanted
            )
            out.update({v: made[STABLE_VIEWS.index(v)] for v in wanted})
    return out


# ----------------------------------------------------------------------------------------------------------
# SimCLR-style clip augmentation (DualVar). Every view is its own clip with its own parameters, drawn per
# clip and applied to all of its frames (no flicker); the random crop/flip is the one above.


def simclr_geometry(cfg: SimCLRAugmentConfig) -> AugmentConfig:
    """The crop and flip of SimCLR's augmentation."""
    return AugmentConfig(crop=cfg.crop, flip=cfg.flip, train=cfg.train)


@dataclass(frozen=True)
class SimCLRParams:
    """Per-clip parameters: ``geometry`` (crop offsets, flip); colour (B, 3) b/c/s factors and hue (B,)
    in turns (identity where jitter is off); grey (B,) bool; sigma (B,) blur sigma, 0 = no blur."""

    geometry: AugmentParams
    colour: Tensor
    hue: Tensor
    grey: Tensor
    sigma: Tensor


def sample_simclr_params(
    batch_size: int,
    in_hw: tuple[int, int],
    cfg: SimCLRAugmentConfig,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> SimCLRParams:
    """Draw one parameter set per clip from ``generator`` only (same seed, same parameters on any device).

    A fixed number of draws per call, whatever the probabilities, so changing one probability does not
    shift the random stream of the other augmentations.
    """
    B = batch_size
    geometry = sample_params(B, in_hw, simclr_geometry(cfg), generator, device)
    gdev = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(B, 8, generator=generator, device=gdev)  # jitter?, b, c, s, h, grey?, blur?, sigma
    if not cfg.train:
        u[:, 0], u[:, 5], u[:, 6] = 1.0, 1.0, 1.0  # every coin says no
    strength = torch.tensor([cfg.brightness, cfg.contrast, cfg.saturation], device=gdev)
    jitter = (u[:, 0] < cfg.jitter_p).unsqueeze(1)
    colour = torch.where(jitter, 1.0 - strength + 2.0 * strength * u[:, 1:4], torch.ones(B, 3, device=gdev))
    hue = torch.where(jitter[:, 0], cfg.hue * (2.0 * u[:, 4] - 1.0), torch.zeros(B, device=gdev))
    grey = u[:, 5] < cfg.grayscale_p
    lo, hi = cfg.blur_sigma
    sigma = torch.where(u[:, 6] < cfg.blur_p, lo + (hi - lo) * u[:, 7], torch.zeros(B, device=gdev))
    return SimCLRParams(geometry, colour.to(device), hue.to(device), grey.to(device), sigma.to(device))


_GREY = (0.299, 0.587, 0.114)
# RGB <-> YIQ: a hue shift is a rotation of the (I, Q) chroma plane, linear and per clip.
_RGB2YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


def hue_shift(rgb: Tensor, turns: Tensor) -> Tensor:
    """Rotate the hue of [0, 1] clips ``(B, 3, T, h, w)`` by ``turns`` (B,) of a full circle (YIQ rotation),
    clamped to [0, 1]. 0 is the identity."""
    m = torch.tensor(_RGB2YIQ, dtype=rgb.dtype, device=rgb.device)
    angle = 2 * torch.pi * turns.to(rgb)
    cos, sin = angle.cos(), angle.sin()
    rot = torch.zeros(rgb.shape[0], 3, 3, dtype=rgb.dtype, device=rgb.device)
    rot[:, 0, 0] = 1.0
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    t = torch.linalg.inv(m) @ rot @ m  # (B, 3, 3) RGB -> RGB
    shifted = torch.einsum("bij,bjthw->bithw", t, rgb).clamp(0, 1)
    return torch.where((turns == 0).view(-1, 1, 1, 1, 1).to(rgb.device), rgb, shifted)  # exact identity at 0


def grayscale(rgb: Tensor, mask: Tensor) -> Tensor:
    """Replace the clips with ``mask`` (B,) True by their luma, replicated to 3 channels."""
    w = torch.tensor(_GREY, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1, 1)
    grey = (rgb * w).sum(1, keepdim=True).expand_as(rgb)
    return torch.where(mask.view(-1, 1, 1, 1, 1).to(rgb.device), grey, rgb)


def gaussian_blur(x: Tensor, sigma: Tensor, kernel: int) -> Tensor:
    """Separable Gaussian blur of each clip ``(B, C, T, h, w)`` with its own ``sigma`` (B,), the same for
    every frame; clips with sigma 0 are returned unchanged. Reflect padding keeps the borders bright."""
    todo = (sigma > 0).nonzero().flatten()
    if todo.numel() == 0:
        return x
    sub = x[todo]
    n, c, t, h, w = sub.shape
    r = kernel // 2
    pos = torch.arange(kernel, dtype=x.dtype, device=x.device) - r
    k = torch.exp(-(pos.view(1, -1) ** 2) / (2 * sigma[todo].to(x).view(-1, 1) ** 2))
    k = k / k.sum(1, keepdim=True)  # (n, kernel)
    k = k.repeat_interleave(c * t, dim=0)  # one filter per (clip, channel, frame) plane
    planes = sub.reshape(1, n * c * t, h, w)
    planes = torch.nn.functional.pad(planes, (r, r, 0, 0), mode="reflect" if w > r else "replicate")
    planes = torch.nn.functional.conv2d(planes, k.view(-1, 1, 1, kernel), groups=n * c * t)
    planes = torch.nn.functional.pad(planes, (0, 0, r, r), mode="reflect" if h > r else "replicate")
    planes = torch.nn.functional.conv2d(planes, k.view(-1, 1, kernel, 1), groups=n * c * t)
    out = x.clone()
    out[todo] = planes.view(n, c, t, h, w)
    return out


def apply_simclr(
    views: dict[str, Tensor], params: SimCLRParams, cfg: SimCLRAugmentConfig
) -> dict[str, Tensor]:
    """Crop/flip every view with the clip's window (as :func:`apply`), then on ``rgb`` only: colour jitter
    (b, c, s, then hue), grayscale, Gaussian blur. Returns float32 ``(B, C, T, crop, crop)`` views."""
    out = apply(views, params.geometry, simclr_geometry(cfg))
    if "rgb" in out and cfg.train:
        x = colour_jitter(out["rgb"], params.colour)
        if cfg.hue > 0:
            x = hue_shift(x, params.hue)
        x = grayscale(x, params.grey)
        out["rgb"] = gaussian_blur(x, params.sigma, cfg.blur_kernel)
    return out
