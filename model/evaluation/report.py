"""The retrieval figure: a few queries, each followed by its nearest gallery videos.

Each thumbnail shows what the features were computed from: the middle RGB frame, and for a motion view
(residual, flow) that frame's motion beside it. The title names the run and the view; a legend explains the
border colours.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ...pipeline.reader import FormatError, VideoStore

log = logging.getLogger(__name__)

BORDERS = {
    "query": "tab:blue",
    "neighbour of the query's class": "tab:green",
    "neighbour of another class": "tab:red",
}


def _middle(store: VideoStore, video_id: str, modality: str) -> np.ndarray:
    """(H, W, 3) uint8 middle frame of one stream; a frame whose bytes are damaged is drawn black (a picture
    is no reason to stop an evaluation: the reader's error is logged)."""
    try:
        return store.read(video_id, modality, store.n_frames(video_id) // 2, 1)[0]
    except FormatError as err:
        log.warning("thumbnail of %s drawn black: %s", video_id, str(err).splitlines()[0])
        return np.zeros((*store.frame_size(video_id), 3), np.uint8)


def middle_frame(store: VideoStore, video_id: str) -> np.ndarray:
    """(H, W, 3) uint8: the middle frame of a video."""
    return _middle(store, video_id, "rgb")


def residual_image(store: VideoStore, video_id: str, aligned: bool = False) -> np.ndarray:
    """(H, W, 3) uint8: the residual of the middle frame (``aligned``: after the camera's motion), mid-grey =
    no change (stored q = d / 2 + 128 is stretched back to d: 128 + 2 (q - 128))."""
    if aligned:
        try:
            q = store.aligned_residuals(video_id, store.n_frames(video_id) // 2, 1)[0].astype(np.int16)
        except FormatError as err:
            log.warning("thumbnail of %s drawn black: %s", video_id, str(err).splitlines()[0])
            return np.zeros((*store.frame_size(video_id), 3), np.uint8)
    else:
        q = _middle(store, video_id, "res").astype(np.int16)
    return np.clip(128 + 2 * (q - 128), 0, 255).astype(np.uint8)


def flow_component(store: VideoStore, video_id: str, channel: int) -> np.ndarray:
    """(H, W) float: one stored flow component (0 = u, 1 = v) of the middle pair, in storage levels around
    zero (stored levels are linear in px: q * 2B / 255 - B, zero at 127.5)."""
    t = min(store.n_frames(video_id) // 2, store.n_flow(video_id) - 1)
    return store.flow(video_id, t, 1)[0, channel].astype(np.float32) - 127.5


def thumbnails(store: VideoStore, ids: list[str], modality: str) -> dict[str, np.ndarray]:
    """video id -> (H, W', 3) uint8 thumbnail: the middle RGB frame, with the motion of a motion view beside
    it (residual frame, or the flow component in grey: mid-grey = 0, brighter = positive, one scale for
    all thumbnails so that lengths compare)."""
    rgb = {v: middle_frame(store, v) for v in ids}
    if modality in ("rgb", "rgb-stable"):
        return rgb
    if modality in ("res", "res-aligned", "res-stable"):  # the stabilised residual drawn as the aligned one
        motion = {v: residual_image(store, v, aligned=modality != "res") for v in ids}
    else:
        channel = 0 if modality.endswith("-u") else 1
        comp = {v: flow_component(store, v, channel) for v in ids}
        top = max(max(float(np.abs(c).max()) for c in comp.values()), 1e-6)
        motion = {
            v: np.repeat(np.clip(128 + c / top * 127, 0, 255).astype(np.uint8)[..., None], 3, -1)
            for v, c in comp.items()
        }
    gap = {v: np.full((rgb[v].shape[0], 2, 3), 255, np.uint8) for v in ids}  # videos may differ in size
    return {v: np.concatenate([rgb[v], gap[v], motion[v]], axis=1) for v in ids}


def motion_note(modality: str) -> str:
    if modality in ("rgb", "rgb-stable"):
        return "thumbnails: middle frame"
    if modality == "res":
        return "thumbnails: middle frame | its residual (mid-grey = no change)"
    if modality in ("res-aligned", "res-stable"):
        return "thumbnails: middle frame | its residual after the camera's motion (mid-grey = no change)"
    return f"thumbnails: middle frame | {modality} of the middle pair (mid-grey = 0, brighter = positive)"


def run_name(result: dict) -> str:
    """The run a retrieval result belongs to: the checkpoint's run folder, or the random-init baseline."""
    if result["backbone"]["random_init"]:
        return result["checkpoint"]
    return Path(result["checkpoint"]).parent.name


def retrieval_title(result: dict) -> str:
    c = result["config"]
    views = f"rgb+{c['modality']} (merged)" if c["merge"] else c["modality"]
    top1 = result["topk"].get(1, result["topk"].get("1"))
    title = (
        f"run {run_name(result)}: retrieval on {views} features — top-1 {top1:.1f}% "
        f"({result['counts']['queries']} queries)"
    )
    data = result.get("data")
    if data:  # name both datasets: a transfer (pretrained on one, evaluated on another) reads as one
        pre = data["pretrained_on"]
        title += (
            f" — pretrained on {(pre['dataset'] or pre['path']) if pre else 'nothing (random init)'}, "
            f"evaluated on {data['evaluated_on']['dataset']} split {data['evaluated_on']['split']}"
        )
    return title


def draw_retrieval(result: dict, data: Path, n_show: int = 6, n_nearest: int = 5):
    """The matplotlib figure of `retrieval_figure`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    store = VideoStore(data)
    classes = store.classes
    modality = result["config"]["modality"]
    queries = result["queries"]
    picks = sorted({int(i) for i in np.linspace(0, len(queries) - 1, min(n_show, len(queries)))})
    cols = 1 + min(n_nearest, len(queries[0]["nearest"]))
    grid = []
    for qi in picks:
        q = queries[qi]
        cells = [(q["id"], BORDERS["query"], f"query: {classes[q['label']]}")]
        for vid, lab, sim in list(zip(q["nearest"], q["nearest_labels"], q["similarities"], strict=True))[
            : cols - 1
        ]:
            same = lab == q["label"]
            cells.append(
                (
                    vid,
                    BORDERS["neighbour of the query's class" if same else "neighbour of another class"],
                    f"{classes[lab]} {sim:.2f}",
                )
            )
        grid.append(cells)
    images = thumbnails(store, sorted({vid for cells in grid for vid, _, _ in cells}), modality)
    h, w = images[grid[0][0][0]].shape[:2]
    fig, axes = plt.subplots(
        len(picks), cols, figsize=((1.3 * w / h + 0.3) * cols, 1.9 * len(picks) + 0.8), squeeze=False
    )
    for row, cells in enumerate(grid):
        for col, (vid, colour, title) in enumerate(cells):
            ax = axes[row, col]
            ax.imshow(images[vid])
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(4)
            ax.set_title(title, fontsize=7)
    fig.suptitle(f"{retrieval_title(result)}\n{motion_note(modality)}", fontsize=9)
    fig.legend(
        handles=[
            Patch(facecolor="none", edgecolor=c, linewidth=3, label=label) for label, c in BORDERS.items()
        ],
        loc="lower center",
        ncol=len(BORDERS),
        fontsize=7,
        frameon=False,
        title="border",
    )
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def retrieval_figure(result: dict, data: Path, png: Path, n_show: int = 6, n_nearest: int = 5) -> Path:
    """Rows = the first ``n_show`` queries spread evenly over the query list; each row = the query (blue
    border) then its ``n_nearest`` nearest gallery videos, green border = same class, red = another class,
    labelled with the cosine similarity."""
    fig = draw_retrieval(result, data, n_show, n_nearest)
    import matplotlib.pyplot as plt

    fig.savefig(png, dpi=90, format="png")
    plt.close(fig)
    return Path(png)
