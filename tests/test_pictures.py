"""The pictures, rendered for real on a tiny extracted dataset with flow: the training curves, the retrieval
figure (title, motion thumbnails, border legend) and `iic-prep show` (flow colour-wheel key, output
format)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import build_ucf101, error_lines, run_prep, synth_frames
from matplotlib.image import imread

from iic.model.evaluation.monitor import SAME_FEATURES
from iic.model.evaluation.report import BORDERS, retrieval_figure
from iic.model.run.runlog import plot_curves
from iic.pipeline.flowcalc import from_stored
from iic.pipeline.reader import VideoStore
from iic.pipeline.show import PICTURE_FORMATS, colour_wheel, flow_to_colour, show_video

CLASSES = ("Jump", "Walk")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """2 classes x 3 videos of 10 frames (a moving disc), extracted at 32x40, with DIS flow."""
    root = tmp_path_factory.mktemp("pictures")
    videos = {
        f"{c}/v_{c}_g{g:02d}_c01.avi": synth_frames(10, seed=3 * i + g)
        for i, c in enumerate(CLASSES)
        for g in range(1, 4)
    }
    raw = build_ucf101(root / "raw", videos, train={k for k in videos if "_g03_" not in k})
    assert (
        run_prep(
            "extract", "--root", raw, "--out", root / "out", "--size", "32x40", "--workers", "1"
        ).exit_code
        == 0
    )
    data = root / "out" / "ucf101"
    assert run_prep("flow", "--data", data, "--method", "dis", "--workers", "1").exit_code == 0
    return data


# ----------------------------------------------------------------------------------------------------------
# training curves


def _write_metrics(path: Path, monitor: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"step": s, "loss": 9.0 - s / 4, "lr": 1e-3 * (1 - s / 20)} for s in range(1, 9)]
    rows += [{"step": 8, "epoch": 1, "epoch_loss": 7.5, "chance_loss": 8.1}]
    if monitor:
        rows += [
            {"step": 0, "epoch": 0, "monitor_top1_rgb": 20.0, "monitor_similarity_rgb": 0.999},
            {"step": 8, "epoch": 1, "monitor_top1_rgb": 40.0, "monitor_similarity_rgb": 0.8},
        ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_curves_are_titled_with_the_run(tmp_path, figures):
    metrics = _write_metrics(tmp_path / "tiny-flowu" / "metrics.jsonl", monitor=True)
    png = plot_curves(
        metrics, tmp_path / "curves.png", title="tiny-flowu: iic r3d-tiny flow-u/repeat", chance_top1=33.3
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig = figures[-1]
    assert fig["title"] == "tiny-flowu: iic r3d-tiny flow-u/repeat"
    titles = ["training loss", "learning rate", "monitor: retrieval top-1", "monitor: feature similarity"]
    assert fig["titles"] == titles
    similar = fig["figure"].axes[3]
    assert (
        list(similar.lines[0].get_ydata()) == [0.999, 0.8]
        and similar.lines[1].get_ydata()[0] == SAME_FEATURES
    )
    loss_ax = fig["figure"].axes[0]
    assert [t.get_text() for t in loss_ax.get_legend().get_texts()] == ["loss", "chance 8.10"]
    assert list(loss_ax.lines[0].get_ydata()) == [9.0 - s / 4 for s in range(1, 9)]

    # without a title the run folder names the figure
    plot_curves(_write_metrics(tmp_path / "other-run" / "metrics.jsonl", monitor=False), tmp_path / "c2.png")
    assert figures[-1]["title"] == "run other-run" and figures[-1]["shape"] == (1, 2)


# ----------------------------------------------------------------------------------------------------------
# retrieval figure


def _result(data: Path, modality: str, merge: bool = False) -> dict:
    """A retrieval result as `evaluate_retrieval` writes it: every test video queries the gallery, nearest
    first the other class's videos then its own (so both border colours occur)."""
    store = VideoStore(data)
    gallery, queries = store.ok_rows(1, "train"), store.ok_rows(1, "test")
    out = []
    for q in queries:
        order = sorted(gallery, key=lambda g: (g.label == q.label, g.id))
        out.append(
            {
                "id": q.id,
                "label": q.label,
                "nearest": [g.id for g in order],
                "nearest_labels": [g.label for g in order],
                "similarities": [round(0.9 - 0.1 * i, 6) for i in range(len(order))],
            }
        )
    return {
        "config": {"modality": modality, "merge": merge},
        "checkpoint": "/runs/tiny-res/final.pt",
        "backbone": {"random_init": False},
        "topk": {"1": 0.0, "5": 100.0},
        "counts": {"queries": len(out)},
        "queries": out,
    }


def _thumbnails(fig) -> list[tuple[np.ndarray, str, str]]:
    """(image, border colour, title) of every thumbnail."""
    from matplotlib.colors import to_hex

    return [
        (np.asarray(ax.images[0].get_array()), to_hex(ax.spines["left"].get_edgecolor()), ax.get_title())
        for ax in fig.axes
        if ax.images
    ]


@pytest.mark.parametrize("modality", ["rgb", "res", "flow-u", "flow-v"])
def test_retrieval_figure_names_the_run_and_shows_the_motion(data, tmp_path, figures, modality):
    from matplotlib.colors import to_hex

    result = _result(data, modality)
    png = retrieval_figure(result, data, tmp_path / "retrieval.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig = figures[-1]["figure"]
    assert figures[-1]["title"].startswith(
        f"run tiny-res: retrieval on {modality} features — top-1 0.0% (2 queries)"
    )
    # the legend explains every border colour, in the colours the borders use
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == list(BORDERS)
    assert [to_hex(h.get_edgecolor()) for h in legend.legend_handles] == [to_hex(c) for c in BORDERS.values()]

    store = VideoStore(data)
    classes = store.classes
    cells = _thumbnails(fig)
    assert len(cells) == 2 * 5  # 2 queries, 4 gallery videos each (all of them)
    for row in range(2):
        q = result["queries"][row]
        (_, colour, title), *neighbours = cells[5 * row : 5 * row + 5]
        assert colour == to_hex(BORDERS["query"]) and title == f"query: {classes[q['label']]}"
        for (_, colour, title), lab in zip(neighbours, q["nearest_labels"], strict=True):
            same = (
                BORDERS["neighbour of the query's class"]
                if lab == q["label"]
                else BORDERS["neighbour of another class"]
            )
            assert colour == to_hex(same) and title.startswith(classes[lab])

    vid = result["queries"][0]["id"]
    image = cells[0][0]
    n = store.n_frames(vid)
    frames = store.frames(vid)
    h, w = store.size
    np.testing.assert_array_equal(image[:, :w], frames[n // 2])  # the middle frame first
    if modality == "rgb":
        assert image.shape == (h, w, 3)
        return
    assert image.shape == (h, 2 * w + 2, 3)  # then its motion
    motion = image[:, w + 2 :].astype(int)
    if modality == "res":  # x[t] - x[t-1] of the stored frames, at the stored resolution of 2 levels
        d = frames[n // 2].astype(int) - frames[n // 2 - 1].astype(int)
        np.testing.assert_array_equal(motion, np.clip(128 + 2 * np.floor_divide(d, 2), 0, 255))
        assert (motion != 128).any()
        return
    # flow: the component in grey, mid-grey = no motion, brighter = positive
    assert (motion[..., 0] == motion[..., 1]).all() and (motion[..., 0] == motion[..., 2]).all()
    comp = from_stored(store.flow(vid, n // 2, 1), float(store.flow_meta["bound"]))[0][
        ..., 0 if modality == "flow-u" else 1
    ]
    moving = np.abs(comp) > 0.3
    assert moving.sum() > 10, "the disc moves: some flow must be drawn"
    assert (np.sign(motion[..., 0][moving] - 128) == np.sign(comp[moving])).mean() > 0.95
    still = np.abs(comp) < 0.1  # the stored levels next to zero (one level = 2 bound / 255 px)
    grey = np.abs(motion[..., 0] - 128)
    assert still.any() and grey[still].max() < grey[moving].min()  # one linear scale


def test_merged_retrieval_is_titled_with_both_views(data, tmp_path, figures):
    retrieval_figure(_result(data, "res", merge=True), data, tmp_path / "r.png")
    assert figures[-1]["title"].startswith("run tiny-res: retrieval on rgb+res (merged) features")


# ----------------------------------------------------------------------------------------------------------
# iic-prep show: the flow key and the output format


def test_colour_wheel_is_the_flow_coding():
    wheel = colour_wheel(65)
    r = 32
    for dx, dy in [(1, 0), (0, 1), (-1, 0), (0, -1), (0.6, -0.8)]:  # +y points down, as in the frames
        x, y = round(r + 0.9 * dx * r), round(r + 0.9 * dy * r)
        expected = flow_to_colour(np.array([[[x - r, y - r]]], np.float32), max_magnitude=r)[0, 0]
        np.testing.assert_allclose(wheel[y, x].astype(int), expected.astype(int), atol=3)
    right = wheel[r, 2 * r - 2].astype(int)
    assert right[0] > 200 and right[1:].max() < 30  # rightward motion is red, as in the usual wheel
    assert (wheel[r, r] < 10).all()  # no motion = black
    assert (wheel[0, 0] == 255).all()  # outside the disc


def _hue_bins(rgb: np.ndarray, bins: int = 12) -> set[int]:
    """The hue bins (of ``bins`` around the circle) of the saturated, bright pixels of an RGB image."""
    hsv = cv2.cvtColor(np.ascontiguousarray(rgb[..., :3]), cv2.COLOR_RGB2HSV)
    keep = (hsv[..., 1] > 150) & (hsv[..., 2] > 150)
    return set((hsv[..., 0][keep].astype(int) * bins // 180).tolist())


def test_show_flow_row_has_a_colour_wheel_key(data, tmp_path, figures):
    vid = VideoStore(data).ok_rows(1, "train")[0].id
    out = tmp_path / "show.png"
    result = run_prep("show", "--data", data, "--video", vid, "--out", out, "--columns", "3")
    assert result.exit_code == 0, result.output
    fig = figures[-1]["figure"]
    key = next(ax for ax in fig.axes if ax.get_title() == "flow key")
    # on the last row: the flow without its camera part, drawn below the flow on the same colour scale
    assert key.get_subplotspec().rowspan.start == 3 and figures[-1]["rows"][2:] == [
        figures[-1]["rows"][2],
        "flow-aligned",
    ]
    png = (imread(str(out))[..., :3] * 255).round().astype(np.uint8)
    height, width = png.shape[:2]
    assert (height, width) == tuple(np.round(fig.get_size_inches()[::-1] * figures[-1]["dpi"]).astype(int))
    box = key.get_position()  # figure fraction, after the draw (aspect applied)
    x0, x1 = int(box.x0 * width) + 2, int(box.x1 * width) - 2
    y0, y1 = int((1 - box.y1) * height) + 2, int((1 - box.y0) * height) - 2
    region = png[y0:y1, x0:x1]
    assert _hue_bins(region) == set(range(12)), "the key shows every direction's hue"
    # the cells beside it in the rows above are blank, not another frame
    above = next(
        ax
        for ax in fig.axes
        if ax.get_subplotspec().rowspan.start == 0
        and ax.get_subplotspec().colspan.start == key.get_subplotspec().colspan.start
    )
    assert not above.axison and not above.images


@pytest.mark.parametrize(
    "suffix, magic",
    [
        (".png", b"\x89PNG"),
        (".jpg", b"\xff\xd8\xff"),
        (".JPEG", b"\xff\xd8\xff"),
        (".pdf", b"%PDF"),
        (".svg", b"<?xml"),
    ],
)
def test_show_writes_the_format_its_suffix_names(data, tmp_path, suffix, magic):
    vid = VideoStore(data).ok_rows()[0].id
    out = tmp_path / f"picture{suffix}"
    result = run_prep("show", "--data", data, "--video", vid, "--out", out, "--columns", "2")
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[: len(magic)] == magic


@pytest.mark.parametrize("name", ["picture.gif", "picture", "picture.png.bak"])
def test_show_refuses_an_unknown_suffix_in_one_line(data, tmp_path, name):
    vid = VideoStore(data).ok_rows()[0].id
    result = run_prep("show", "--data", data, "--video", vid, "--out", tmp_path / name)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert error_lines(result.output) == result.output.strip().splitlines()  # one line, an error
    assert len(error_lines(result.output)) == 1 and all(s in result.output for s in PICTURE_FORMATS)
    assert not list(tmp_path.iterdir())
    with pytest.raises(
        ValueError, match="must end in"
    ):  # the library refuses it too, before reading any data
        show_video(tmp_path / "no-data", vid, tmp_path / name)
