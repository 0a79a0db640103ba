"""Benchmark of the camera-motion estimate and of the residual after the camera's motion, run by hand; results
go to BENCHMARKS.md ("Camera motion").

Four parts, each on one thread (``torch.set_num_threads(1)``, ``cv2.setNumThreads(1)``):

* ``estimate``: for each of `iic-prep synth`'s moving cameras, videos of every class rendered at 96x128 (the
  learning benchmark's size) and at 128x172 (about the stored UCF101 size), JPEG q90 as stored; per frame pair
  the error of each estimator against the known motion (`synth.camera_path`: the mean distance in px between
  where the estimate and the truth carry the four corners and the centre) and its time per pair. Estimators:
  ``phase`` (cv2.phaseCorrelate, a translation), ``gftt-lk`` (the strongest 200 corners by
  goodFeaturesToTrack, pyramidal LK, estimateAffinePartial2D with RANSAC: the textbook stabiliser), ``ecc``
  (findTransformECC, affine, started from the phase estimate), ``grid-lk`` (`pipeline/camera.py`: a regular
  grid, LK forward and back, the similarity by RANSAC: what `iic-prep camera` stores).
* ``residual``: for each synthetic camera, still included, what the plain residual and the camera views
  (``res-aligned``, ``res-stable``, with and without the dead zone; motion as `iic-prep camera` estimates it)
  leave on the background and on the moving objects (`bench_residual`).
* ``flow``: for each synthetic camera, still included, what the flow (``--flow-method``, as stored) keeps
  of the camera's motion on the background and of the objects' motion, plain and after the camera's part is
  removed by the median flow, by the affine field fitted to the flow (``flow-u-aligned``) or by the stored
  estimate (`bench_flow`).
* ``loader``: on an extracted dataset with its camera estimated (``--data``; default: a shaking-camera copy
  of the learning benchmark's videos), in interleaved rounds, random training clips of 16 frames:
  ``res`` (the loader's rgb + residual, then the crop of both on the device: what ``--view2 res`` costs),
  ``res-aligned`` (rgb + the previous frames + the stored motion, then the warp on the device at the crop:
  what ``--view2 res-aligned`` costs), ``res-stable`` (the same loader, then ``rgb-stable`` and
  ``res-stable`` made on the device: what ``--view2 res-stable`` costs), ``cpu-warp`` (the same residual
  warped with OpenCV in the loader from the stored motion, `VideoStore.aligned_residuals`),
  ``estimate-on-read`` (the motion estimated in the loader from the clip's frames, then warped there: no
  stored estimate). Loader clips/s (``dataset[item]`` and the
  collate of batches of 8) and loader + view clips/s, each as a ratio to ``res``.

    python bench/bench_camera.py [--part estimate residual flow loader] [--data DATA/ucf101] [--rounds 5]

Writes ``bench/out/bench_camera-<date>.json`` (``bench_camera-<part>-<date>.json`` for one part) and prints
markdown tables.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time
from pathlib import Path

import cv2
import numpy as np
import simplejpeg
import torch
from benchutil import cli, run_cli, write_json

from iic.model.data import augment
from iic.model.data.align import aligned_residual, map_pixels, place_window, stabilised, stable_maps
from iic.model.data.clips import ClipConfig, ClipDataset, collate_clips
from iic.model.data.clips import camera_path as camera_path_of_clip
from iic.model.data.views import camera_flow
from iic.pipeline.camera import estimate_motion, grid_points, video_motion
from iic.pipeline.flowcalc import FlowConfig, compute_flow, dequantize, make_estimator, quantize, rgb_to_gray
from iic.pipeline.format import ALIGNED_DEAD_ZONE, quantize_residual
from iic.pipeline.reader import aligned_residual_q
from iic.pipeline.synth import CLASS_NAMES, SynthConfig, camera_path, render_video

MOVING = ("shake", "pan", "zoom", "rotate", "handheld")


def jpeg(frame: np.ndarray) -> np.ndarray:
    data = simplejpeg.encode_jpeg(frame, quality=90, colorspace="RGB", colorsubsampling="420")
    return simplejpeg.decode_jpeg(data, colorspace="RGB")


def homogeneous(a: np.ndarray) -> np.ndarray:
    return np.vstack([a, [0.0, 0.0, 1.0]])


def corner_error(estimate: np.ndarray, truth: np.ndarray, height: int, width: int) -> float:
    pts = np.array(
        [[0, 0], [width - 1, 0], [0, height - 1], [width - 1, height - 1], [width / 2, height / 2]]
    )
    a = pts @ estimate[:, :2].T + estimate[:, 2]
    b = pts @ truth[:, :2].T + truth[:, 2]
    return float(np.linalg.norm(a - b, axis=1).mean())


def phase(prev: np.ndarray, cur: np.ndarray) -> np.ndarray:
    window = cv2.createHanningWindow(prev.shape[::-1], cv2.CV_32F)
    (dx, dy), _ = cv2.phaseCorrelate(prev.astype(np.float32), cur.astype(np.float32), window)
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]])


def gftt_lk(prev: np.ndarray, cur: np.ndarray) -> np.ndarray:
    points = cv2.goodFeaturesToTrack(prev, 200, 0.01, 4, blockSize=5)
    if points is None or len(points) < 8:
        return np.eye(2, 3)
    ahead, found, _ = cv2.calcOpticalFlowPyrLK(prev, cur, points, None, winSize=(15, 15), maxLevel=3)
    ok = found[:, 0] == 1
    m, _ = cv2.estimateAffinePartial2D(points[ok], ahead[ok], method=cv2.RANSAC, ransacReprojThreshold=1.0)
    return np.eye(2, 3) if m is None else m


def ecc(prev: np.ndarray, cur: np.ndarray) -> np.ndarray:
    start = phase(prev, cur)
    warp = np.linalg.inv(homogeneous(start))[:2].astype(np.float32)  # ECC maps the template (cur) to prev
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 50, 1e-4)
    try:
        _, warp = cv2.findTransformECC(
            cur.astype(np.float32), prev.astype(np.float32), warp, cv2.MOTION_AFFINE, criteria, None, 5
        )
    except cv2.error:
        return start
    return np.linalg.inv(homogeneous(warp.astype(np.float64)))[:2]


def grid_lk(prev: np.ndarray, cur: np.ndarray) -> np.ndarray:
    m = estimate_motion(prev, cur, grid_points(*prev.shape))
    return np.eye(2, 3) if m is None else m


ESTIMATORS = {"phase": phase, "gftt-lk": gftt_lk, "ecc": ecc, "grid-lk": grid_lk}


def bench_estimate(sizes: list[tuple[int, int]], clips: int) -> list[dict]:
    rows = []
    for height, width in sizes:
        for camera in MOVING:
            cfg = SynthConfig(out=Path("."), camera=camera, height=height, width=width)
            errors = {k: [] for k in ESTIMATORS}
            seconds = dict.fromkeys(ESTIMATORS, 0.0)
            pairs = 0
            for c, name in enumerate(CLASS_NAMES[:8]):
                for clip in range(1, clips + 1):
                    group = 1 + c + 8 * clip
                    video = [
                        cv2.cvtColor(jpeg(f), cv2.COLOR_RGB2GRAY) for f in render_video(cfg, name, group, 1)
                    ]
                    path = camera_path(cfg, group, 1)
                    for t in range(1, len(video)):
                        truth = (homogeneous(path[t]) @ np.linalg.inv(homogeneous(path[t - 1])))[:2]
                        for key, fn in ESTIMATORS.items():
                            t0 = time.perf_counter()
                            m = fn(video[t - 1], video[t])
                            seconds[key] += time.perf_counter() - t0
                            errors[key].append(corner_error(m, truth, height, width))
                        pairs += 1
            for key in ESTIMATORS:
                e = np.array(errors[key])
                rows.append(
                    {
                        "size": f"{height}x{width}",
                        "camera": camera,
                        "estimator": key,
                        "pairs": pairs,
                        "mean_px": float(e.mean()),
                        "p95_px": float(np.percentile(e, 95)),
                        "max_px": float(e.max()),
                        "ms_per_pair": 1e3 * seconds[key] / pairs,
                    }
                )
                print(rows[-1], flush=True)
    return rows


# ----------------------------------------------------------------------------------------------------------
# what the residuals leave of the background


def objects_mask(still_from: np.ndarray, still_to: np.ndarray, to_frame: np.ndarray) -> np.ndarray:
    """(H, W) bool: where the still camera's video changes between two frames (the moving objects, dilated by
    2 px), carried into the filmed frame by the camera's ``to_frame`` (2, 3)."""
    H, W = still_from.shape[:2]
    change = (np.abs(still_to - still_from).max(-1) > 8).astype(np.uint8)
    return cv2.warpAffine(cv2.dilate(change, np.ones((5, 5), np.uint8)), to_frame, (W, H)) > 0


def inner(H: int, W: int, margin: int = 8) -> np.ndarray:
    keep = np.zeros((H, W), bool)
    keep[margin:-margin, margin:-margin] = True
    return keep


def add_levels(sums: dict, key: str, level: np.ndarray, region: np.ndarray, objects: np.ndarray) -> None:
    """Add the mean ``level`` on the background and (when there are any) on the objects of ``region``."""
    totals = sums.setdefault(key, [[], []])
    totals[0].append(level[region & ~objects].mean())
    if (region & objects).any():
        totals[1].append(level[region & objects].mean())


def level_rows(camera: str, sums: dict) -> list[dict]:
    rows = [
        {"camera": camera, "view": key, "background": float(np.mean(bg)), "objects": float(np.mean(fg))}
        for key, (bg, fg) in sums.items()
    ]
    for row in rows:
        print(row, flush=True)
    return rows


def filmed(camera: str, groups: int):
    """The benchmark's videos filmed by ``camera`` (16 frames, 96x128): for every class and ``groups`` groups,
    (the video as stored, JPEG q90; the still camera's video, int16; the true camera path)."""
    cfg, still = SynthConfig(out=Path("."), camera=camera, frames=16), SynthConfig(out=Path("."), frames=16)
    for name in CLASS_NAMES[:8]:
        for group in range(1, groups + 1):
            video = np.stack([jpeg(f) for f in render_video(cfg, name, group, 1)])
            yield video, render_video(still, name, group, 1).astype(np.int16), camera_path(cfg, group, 1)


def bench_residual(cameras: tuple[str, ...], groups: int) -> list[dict]:
    """For videos of every class filmed by each camera (JPEG q90 as stored, 16 frames, 96x128): the mean
    |residual| (grey levels, largest over channels) on the background and on the moving objects, 8 px from the
    borders, for the plain residual and the device's camera views (estimated motion, `video_motion`), with
    and without the dead zone. The objects are where the still camera's video changes, carried by the true
    camera path."""
    rows = []
    for camera in cameras:
        sums: dict[str, list[list[float]]] = {}
        for video, plain, path in filmed(camera, groups):
            H, W = video.shape[1:3]
            motion = video_motion(video)[0]
            rgb = torch.from_numpy(video).permute(3, 0, 1, 2)[None]
            prev = rgb[:, :, np.maximum(np.arange(len(video)) - 1, 0)]
            frames = np.arange(len(video))
            stable_path = torch.from_numpy(camera_path_of_clip(motion, frames))[None]
            window = (torch.tensor([[0, 0]]), torch.tensor([False]), torch.tensor([[H, W]]), H)
            m = torch.from_numpy(motion)[None]
            # where each pixel of the stabilised window lies in frame t (it is placed, maybe shrunk, in
            # the middle frame: align.place_window), to look the objects' mask up there
            placed = place_window(stable_maps(m, stable_path)[1], window[0], window[2], H)
            here = map_pixels(stable_path, placed[0], H, placed[1])[0].round().long().numpy()
            here[..., 0], here[..., 1] = here[..., 0].clip(0, W - 1), here[..., 1].clip(0, H - 1)
            views = {"res": (rgb.float() - prev.float())[..., :H] / 255.0}
            for factor in (0.0, ALIGNED_DEAD_ZONE):
                tag = "" if factor else " (no dead zone)"
                views["res-aligned" + tag] = aligned_residual(rgb, prev, m, *window, factor=factor)
                views["res-stable" + tag] = stabilised(rgb, prev, m, stable_path, *window, factor=factor)[1]
            for t in range(1, len(video)):
                mask = objects_mask(plain[t - 1], plain[t], path[t])
                stable_mask = mask[here[t, ..., 1], here[t, ..., 0]]  # the mask seen in the window
                for key, v in views.items():
                    seen = stable_mask if key.startswith("res-stable") else mask[:, :H]
                    level = 255 * v[0, :, t].abs().amax(0).numpy()
                    add_levels(sums, key, level, inner(H, W)[:, :H], seen)
        rows += level_rows(camera, sums)
    return rows


def bench_flow(cameras: tuple[str, ...], groups: int, method: str) -> list[dict]:
    """For videos of every class filmed by each camera (JPEG q90 as stored, 16 frames, 96x128), the flow of
    the flow stage's ``method`` as stored (quantised at its bound): the mean flow length (px) on the
    background and on the moving objects, 8 px from the borders, for the plain flow and after removing the
    camera's part three ways: the frame's median flow (a translation), `views.camera_flow` (the affine field
    fitted to the flow, what ``flow-u-aligned`` / ``flow-v-aligned`` subtract) and the field of the camera's
    motion as `iic-prep camera` estimates it (``M p - p``, from the frames). The objects: where the still
    camera's video changes from frame t to t+1, carried to frame t by the true camera path."""
    estimator = make_estimator(FlowConfig(method), threads=1)
    bound = FlowConfig(method).bound
    rows = []
    for camera in cameras:
        sums: dict[str, list[list[float]]] = {}
        for video, plain, path in filmed(camera, groups):
            H, W = video.shape[1:3]
            ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
            flow = compute_flow(rgb_to_gray(video), estimator)
            flow = dequantize(quantize(flow, bound), bound)  # (T-1, H, W, 2) as stored
            motion = video_motion(video)[0]
            as_view = torch.from_numpy(flow / bound).permute(3, 0, 1, 2)[None].float()
            fitted = camera_flow(as_view)[0].permute(1, 2, 3, 0).double().numpy() * bound
            for t in range(len(video) - 1):
                m = motion[t + 1]  # frame t -> t + 1
                field = np.stack(
                    [
                        m[0, 0] * xs + m[0, 1] * ys + m[0, 2] - xs,
                        m[1, 0] * xs + m[1, 1] * ys + m[1, 2] - ys,
                    ],
                    axis=-1,
                )
                views = {
                    "flow": flow[t],
                    "flow - median": flow[t] - np.median(flow[t].reshape(-1, 2), axis=0),
                    "flow - affine fit (flow-*-aligned)": flow[t] - fitted[t],
                    "flow - estimated camera": flow[t] - field,
                }
                mask = objects_mask(plain[t], plain[t + 1], path[t])
                for key, v in views.items():
                    add_levels(sums, key, np.linalg.norm(v, axis=-1), inner(H, W), mask)
        rows += level_rows(camera, sums)
    return rows


# ----------------------------------------------------------------------------------------------------------
# the loader


class CpuWarp(ClipDataset):
    """The residual after the camera's motion warped in the loader (OpenCV), shipped as ``res``; with
    ``estimate`` the motion is estimated there too, from the clip's own frames (no stored estimate)."""

    def __init__(self, *args, estimate: bool = False, **kw) -> None:
        super().__init__(*args, **kw)
        self.estimate = estimate

    def _read(self, video, modalities, frames):
        start, n = int(frames[0]), len(frames)
        if not self.estimate:
            out = super()._read(video, ("rgb",), frames)
            out["res"] = torch.from_numpy(self.store.aligned_residuals(video, start, n)).permute(3, 0, 1, 2)
            return out
        first = max(start - 1, 0)
        rgb = self.store.frames(video, first, start + n - first)
        motion, _ = video_motion(rgb)
        res = np.empty((n, *rgb.shape[1:]), np.uint8)
        for i in range(n):
            t = start + i - first
            if start + i == 0:
                res[i] = quantize_residual(rgb[t], None)
                continue
            res[i] = aligned_residual_q(rgb[t - 1], rgb[t], motion[t])
        return {
            "rgb": torch.from_numpy(rgb[start - first :]).permute(3, 0, 1, 2),
            "res": torch.from_numpy(res).permute(3, 0, 1, 2),
        }


def bench_loader(data: Path, rounds: int, clips: int) -> dict:
    contenders = {
        "res": ClipDataset(data, 1, "train", ClipConfig(modalities=("rgb", "res"))),
        "res-aligned": ClipDataset(data, 1, "train", ClipConfig(modalities=("rgb", "camera"))),
        "res-stable": ClipDataset(data, 1, "train", ClipConfig(modalities=("rgb", "camera"))),
        "cpu-warp": CpuWarp(data, 1, "train", ClipConfig(modalities=("rgb", "res"))),
        "estimate-on-read": CpuWarp(data, 1, "train", ClipConfig(modalities=("rgb", "res")), estimate=True),
    }
    view = {name: name if name.startswith("res") else "res" for name in contenders}
    rng = np.random.default_rng(0)
    items = [
        (int(rng.integers(contenders["res"].n_videos)), int(rng.integers(1 << 62))) for _ in range(clips)
    ]
    augs = {  # the stabilised views are made together, as IIC's tiny-stable trains on them
        name: augment.AugmentConfig(
            crop=64, camera_views=("rgb-stable", "res-stable") if name == "res-stable" else (view[name],)
        )
        for name in contenders
    }
    load_s = {k: [] for k in contenders}
    view_s = {k: [] for k in contenders}
    for ds in contenders.values():  # warm the caches (streams, camera arrays)
        collate_clips([ds[i] for i in items[:8]])
    for _ in range(rounds):
        for name, ds in contenders.items():
            t0 = time.perf_counter()
            batches = [collate_clips([ds[i] for i in items[b : b + 8]]) for b in range(0, len(items), 8)]
            t1 = time.perf_counter()
            gen = torch.Generator().manual_seed(0)
            for batch in batches:
                mods = ds.cfg.modalities
                raw = augment.clips_of(batch, mods)
                aug = augs[name]
                params = augment.sample_params(batch["index"].shape[0], augment.batch_hw(batch), aug, gen)
                augment.apply(raw, params, aug)[view[name]]
            t2 = time.perf_counter()
            load_s[name].append(t1 - t0)
            view_s[name].append(t2 - t1)
    out = {}
    for name in contenders:
        load = len(items) / np.median(load_s[name])
        both = len(items) / np.median(np.add(load_s[name], view_s[name]))
        out[name] = {
            "loader_clips_per_s": float(load),
            "loader_and_view_clips_per_s": float(both),
            "view_ms_per_clip": float(1e3 * np.median(view_s[name]) / len(items)),
            "rounds_loader_clips_per_s": [len(items) / s for s in load_s[name]],
        }
    for name in contenders:
        out[name]["loader_ratio"] = out[name]["loader_clips_per_s"] / out["res"]["loader_clips_per_s"]
        out[name]["loader_and_view_ratio"] = (
            out[name]["loader_and_view_clips_per_s"] / out["res"]["loader_and_view_clips_per_s"]
        )
        print(name, {k: v for k, v in out[name].items() if not k.startswith("rounds")}, flush=True)
    return out


def default_data(root: Path) -> Path:
    data = root / "data" / "ucf101"
    if not (data / "camera" / "camera.json").exists():
        run_cli([cli("iic-prep"), "synth", "--out", str(root / "raw"), "--camera", "shake"], quiet=True)
        run_cli(
            [cli("iic-prep"), "extract", "--root", str(root / "raw"), "--out", str(root / "data")]
            + ["--size", "96x128"],
            quiet=True,
        )
        run_cli([cli("iic-prep"), "camera", "--data", str(data)], quiet=True)
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parts = ["estimate", "residual", "flow", "loader"]
    ap.add_argument("--part", nargs="+", default=parts, choices=parts)
    ap.add_argument("--data", type=Path, default=None, help="an extracted dataset with its camera estimated")
    ap.add_argument("--work", type=Path, default=Path("/tmp/iic-bench-camera"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--clips", type=int, default=160, help="training clips per loader round")
    ap.add_argument("--videos", type=int, default=2, help="videos per class and camera for the estimate")
    ap.add_argument("--flow-method", default="tvl1", help="the flow stage's method for the flow part")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": platform.platform(),
        "opencv": cv2.__version__,
    }
    if "estimate" in args.part:
        result["estimate"] = bench_estimate([(96, 128), (128, 172)], args.videos)
        print("| size | camera | " + " | ".join(ESTIMATORS) + " |")
        print("|---|---|" + "---|" * len(ESTIMATORS))
        for size in ("96x128", "128x172"):
            for camera in MOVING:
                cells = [
                    f"{r['mean_px']:.3f} / {r['max_px']:.2f} ({r['ms_per_pair']:.2f} ms)"
                    for r in result["estimate"]
                    if r["size"] == size and r["camera"] == camera
                ]
                print(f"| {size} | {camera} | " + " | ".join(cells) + " |")
    if "residual" in args.part:
        result["residual"] = bench_residual(("still", *MOVING), args.videos)
        print("| camera | view | background | objects |")
        print("|---|---|---|---|")
        for r in result["residual"]:
            print(f"| {r['camera']} | {r['view']} | {r['background']:.2f} | {r['objects']:.2f} |")
    if "flow" in args.part:
        result["flow"] = bench_flow(("still", *MOVING), args.videos, args.flow_method)
        print(f"| camera | view ({args.flow_method}) | background px | objects px |")
        print("|---|---|---|---|")
        for r in result["flow"]:
            print(f"| {r['camera']} | {r['view']} | {r['background']:.2f} | {r['objects']:.2f} |")
    if "loader" in args.part:
        data = args.data or default_data(args.work)
        result["loader"] = {"data": str(data), **bench_loader(data, args.rounds, args.clips)}
        print("| loader | clips/s | ratio | loader + view clips/s | ratio | view ms/clip |")
        print("|---|---|---|---|---|---|")
        for name, r in result["loader"].items():
            if name == "data":
                continue
            print(
                f"| {name} | {r['loader_clips_per_s']:.1f} | {r['loader_ratio']:.2f} | "
                f"{r['loader_and_view_clips_per_s']:.1f} | {r['loader_and_view_ratio']:.2f} | "
                f"{r['view_ms_per_clip']:.2f} |"
            )
    name = "bench_camera" + ("" if len(args.part) == len(parts) else "-" + "-".join(args.part))
    write_json(Path(__file__).parent / "out", name, result)


if __name__ == "__main__":
    main()
