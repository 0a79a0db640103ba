"""The retrieval figure: a few queries, each followed by its nearest gallery videos (middle frames)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..pipeline.shards import VideoStore


def middle_frame(store: VideoStore, video_id: str) -> np.ndarray:
    """(H, W, 3) uint8: the middle frame of a video."""
    return store.read(video_id, "rgb", store.n_frames(video_id) // 2, 1)[0]


def retrieval_figure(result: dict, data: Path, png: Path, n_show: int = 6, n_nearest: int = 5) -> Path:
    """Rows = the first ``n_show`` queries spread evenly over the query list; each row = the query (blue
    border) then its ``n_nearest`` nearest gallery videos, green border = same class, red = another class,
    labelled with the cosine similarity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    store = VideoStore(data)
    classes = store.classes
    queries = result["queries"]
    picks = sorted({int(i) for i in np.linspace(0, len(queries) - 1, min(n_show, len(queries)))})
    cols = 1 + min(n_nearest, len(queries[0]["nearest"]))
    fig, axes = plt.subplots(len(picks), cols, figsize=(1.9 * cols, 1.7 * len(picks)), squeeze=False)
    for row, qi in enumerate(picks):
        q = queries[qi]
        cells = [(q["id"], "tab:blue", f"query: {classes[q['label']]}")]
        for vid, lab, sim in list(zip(q["nearest"], q["nearest_labels"], q["similarities"]))[: cols - 1]:
            cells.append((vid, "tab:green" if lab == q["label"] else "tab:red", f"{classes[lab]} {sim:.2f}"))
        for col, (vid, colour, title) in enumerate(cells):
            ax = axes[row, col]
            ax.imshow(middle_frame(store, vid))
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(4)
            ax.set_title(title, fontsize=7)
    top1 = result["topk"].get(1, result["topk"].get("1"))
    fig.suptitle(f"retrieval top-1 {top1:.1f}% ({result['counts']['queries']} queries) — {Path(result['checkpoint']).name}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return Path(png)
