"""``iic-prep show``: one picture of a stored video (RGB frames, residuals, residuals with the camera's motion
removed when `iic-prep camera` has estimated it, flow, and flow without its camera part) to check
preprocessing.

The flow row is colour-coded (hue = direction, brightness = length) and carries the colour-wheel key drawn
by the same coding. The picture's file format follows the suffix of the output name (`picture_format`).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .flowcalc import from_stored
from .format import camera_flow, dequantize_residual
from .reader import VideoStore

# suffix -> matplotlib format; anything else is refused rather than guessed
PICTURE_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".pdf": "pdf", ".svg": "svg"}


def picture_format(path: Path) -> str:
    """The file format named by ``path``'s suffix; ValueError (one line) for any other suffix."""
    fmt = PICTURE_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise ValueError(
            f"cannot write {Path(path).name!r}: the picture's name must end in {', '.join(PICTURE_FORMATS)}"
        )
    return fmt


def flow_to_colour(flow: np.ndarray, max_magnitude: float | None = None) -> np.ndarray:
    """(H, W, 2) flow in px -> (H, W, 3) uint8 RGB: hue = direction, brightness = magnitude (the usual
    colour-wheel coding), saturation full. ``max_magnitude`` maps to full brightness (default: the max)."""
    mag, ang = cv2.cartToPolar(flow[..., 0].astype(np.float32), flow[..., 1].astype(np.float32))
    top = max_magnitude if max_magnitude else max(float(mag.max()), 1e-6)
    hsv = np.zeros((*flow.shape[:2], 3), np.uint8)
    hsv[..., 0] = (ang * 90 / np.pi).astype(np.uint8)  # OpenCV hue is 0..179
    hsv[..., 1] = 255
    hsv[..., 2] = np.clip(mag / top * 255, 0, 255).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def colour_wheel(size: int = 65) -> np.ndarray:
    """(size, size, 3) uint8 key of `flow_to_colour`: the pixel at offset (dx, dy) from the centre (y down, as
    in the frames) has the colour of flow (dx, dy); the rim is the largest length, outside the disc white."""
    r = (size - 1) / 2
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) - r
    wheel = flow_to_colour(np.stack([xx, yy], axis=-1), max_magnitude=r)
    wheel[np.hypot(xx, yy) > r] = 255
    return wheel


def residual_to_image(q: np.ndarray) -> np.ndarray:
    """Stored residual q -> viewable uint8 image: mid-grey = no change, contrast stretched x2."""
    d = dequantize_residual(q).astype(np.float32)
    return np.clip(128 + d, 0, 255).astype(np.uint8)


def draw_video(data: Path, video_id: str, columns: int = 8):
    """The matplotlib figure of `show_video` (rows RGB / residual / res-aligned / flow / flow-aligned, plus
    the flow key)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    store = VideoStore(data)
    n = store.n_frames(video_id)
    has_flow = store.has_flow and video_id in store.flow_rows and store.flow_rows[video_id].ok
    last = n - 2 if has_flow else n - 1
    idx = np.unique(np.linspace(0, max(last, 0), min(columns, max(last, 0) + 1)).round().astype(int))
    rows = [
        ("RGB", [store.frames(video_id, t, 1)[0] for t in idx]),
        ("residual", [residual_to_image(store.residuals(video_id, t, 1)[0]) for t in idx]),
    ]
    if store.has_camera:  # beside the plain residual: what the res-aligned view sees
        aligned = [residual_to_image(store.aligned_residuals(video_id, t, 1)[0]) for t in idx]
        rows.append(("res-aligned", aligned))
    if has_flow:
        bound = float(store.flow_meta["bound"])
        flows = [from_stored(store.flow(video_id, t, 1), bound)[0] for t in idx]
        top = max(float(np.linalg.norm(f, axis=-1).max()) for f in flows)
        rows.append(
            (f"flow ({store.flow_meta['method']}, max {top:.1f} px)", [flow_to_colour(f, top) for f in flows])
        )
        # beside it: what the flow-u-aligned / flow-v-aligned views see, on the same colour scale
        rows.append(("flow-aligned", [flow_to_colour(f - camera_flow(f), top) for f in flows]))
    h, w = store.frame_size(video_id)
    cols = len(idx) + (1 if has_flow else 0)  # the last column holds the flow key
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.6 * cols * w / h, 1.7 * len(rows)), squeeze=False)
    for r, (name, images) in enumerate(rows):
        for c, (t, image) in enumerate(zip(idx, images, strict=True)):
            ax = axes[r][c]
            ax.imshow(image)
            ax.set_xticks([])
            ax.set_yticks([])
            label = (
                f"{t}->{t + 1}"
                if name.startswith("flow")
                else (f"{t}-{t - 1}" if name in ("residual", "res-aligned") and t else str(t))
            )
            ax.set_title(label, fontsize=7)
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
    if has_flow:
        for r in range(len(rows) - 1):
            axes[r][-1].axis("off")
        key = axes[-1][-1]
        key.imshow(colour_wheel())
        key.set_xticks([])
        key.set_yticks([])
        key.set_title("flow key", fontsize=7)
        key.set_xlabel(f"hue = direction\nrim = {top:.1f} px", fontsize=6)
    row = store.by_id[video_id]
    fig.suptitle(f"{video_id}  ({row.class_name}, {n} frames, {h}x{w})", fontsize=9)
    fig.tight_layout()
    return fig


def show_video(data: Path, video_id: str, out: Path, columns: int = 8) -> Path:
    """Write the picture of rows RGB / residual / res-aligned / flow / flow-aligned for ``columns`` frames
    spread over the video (res-aligned when the camera's motion was estimated, flow when computed), in the
    format named by
    ``out``'s suffix (`picture_format`: checked before any data is read)."""
    out = Path(out)
    fmt = picture_format(out)
    fig = draw_video(data, video_id, columns)
    import matplotlib.pyplot as plt

    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, format=fmt)
    plt.close(fig)
    return out
