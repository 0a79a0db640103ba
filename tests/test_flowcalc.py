"""Flow computation and its uint8 storage: formula tables, OpenCV equivalence, synthetic motions."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from iic.pipeline import flowcalc
from iic.pipeline.flowcalc import (
    FARNEBACK_PARAMS,
    METHODS,
    OPENCV_METHODS,
    TVL1_FAST_PARAMS,
    TVL1_PARAMS,
    FlowConfig,
    FlowError,
    compute_flow,
    dequantize,
    flow_params,
    from_stored,
    init_worker_threads,
    make_estimator,
    quantize,
    rgb_to_gray,
    to_stored,
)

H, W = 64, 64
B = 20.0
LEVEL = 2 * B / 255  # px per quantisation level


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    init_worker_threads()  # as in workers; also keeps this test off the other workers' cores
    assert cv2.getNumThreads() == 1
    yield
    cv2.setNumThreads(-1)


@pytest.fixture(scope="module")
def estimators():
    """One estimator per method; tvl1-torch's eager path (its compiled path, which gives the same flow, is
    tests/test_flow_torch.py's: compiling 96x96 kernels here would cost a minute with an empty cache)."""
    return {
        m: make_estimator(FlowConfig(m, compile=False) if m == "tvl1-torch" else FlowConfig(m))
        for m in METHODS
    }


def smooth_texture(h: int, w: int, seed: int = 0, sigma: float = 2.5) -> np.ndarray:
    """Band-limited random texture in float64, range ~[30, 225], so sub-pixel warps are accurate."""
    noise = np.random.default_rng(seed).standard_normal((h, w))
    tex = cv2.GaussianBlur(noise, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    tex = (tex - tex.min()) / (tex.max() - tex.min())
    return 30 + 195 * tex


def warp(tex: np.ndarray, m: np.ndarray) -> np.ndarray:
    """dst(p) = tex(M^-1 p): content at p in tex moves to M p."""
    out = cv2.warpAffine(
        tex, m, (tex.shape[1], tex.shape[0]), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT
    )
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def affine_pair(m: np.ndarray, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """Frames (prev, next) with next = prev moved by the affine map m, and the true flow (H, W, 2)."""
    tex = smooth_texture(size, size)
    prev = np.clip(np.rint(tex), 0, 255).astype(np.uint8)
    nxt = warp(tex, m)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    true = np.stack(
        [m[0, 0] * xs + m[0, 1] * ys + m[0, 2] - xs, m[1, 0] * xs + m[1, 1] * ys + m[1, 2] - ys], axis=-1
    )
    return np.stack([prev, nxt]), true


def interior_epe(flow: np.ndarray, true: np.ndarray, margin: int = 12) -> float:
    err = np.linalg.norm(flow[margin:-margin, margin:-margin] - true[margin:-margin, margin:-margin], axis=-1)
    return float(err.mean())


# ---------------------------------------------------------------- config and parameters


def test_config_is_frozen_and_validated():
    cfg = FlowConfig()
    assert (cfg.method, cfg.bound) == ("tvl1", 20.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.method = "dis"  # type: ignore[misc]
    with pytest.raises(ValueError, match="unknown flow method"):
        FlowConfig("tvl2")
    with pytest.raises(ValueError, match="positive"):
        FlowConfig("tvl1", bound=0.0)


def test_tvl1_params_are_opencv_defaults():
    default = cv2.optflow.DualTVL1OpticalFlow_create()
    got = {
        "tau": default.getTau(),
        "lambda": default.getLambda(),
        "theta": default.getTheta(),
        "nscales": default.getScalesNumber(),
        "warps": default.getWarpingsNumber(),
        "epsilon": default.getEpsilon(),
        "innerIterations": default.getInnerIterations(),
        "outerIterations": default.getOuterIterations(),
        "scaleStep": default.getScaleStep(),
        "gamma": default.getGamma(),
        "medianFiltering": default.getMedianFiltering(),
        "useInitialFlow": default.getUseInitialFlow(),
    }
    assert got == TVL1_PARAMS


@pytest.mark.parametrize("method, table", [("tvl1", TVL1_PARAMS), ("tvl1-fast", TVL1_FAST_PARAMS)])
def test_tvl1_estimator_has_recorded_params(estimators, method, table):
    impl = estimators[method].impl
    assert impl.getEpsilon() == pytest.approx(table["epsilon"])
    assert impl.getLambda() == pytest.approx(table["lambda"])
    assert impl.getInnerIterations() == table["innerIterations"]
    assert impl.getWarpingsNumber() == table["warps"]
    assert impl.getScalesNumber() == table["nscales"]
    params = flow_params(FlowConfig(method))
    assert {k: params[k] for k in table} == table
    assert params["estimator"] == "cv2.optflow.DualTVL1OpticalFlow_create"


def test_tvl1_fast_only_relaxes_the_stopping_rule():
    diff = {k for k in TVL1_PARAMS if TVL1_PARAMS[k] != TVL1_FAST_PARAMS[k]}
    assert diff == {"epsilon"} and TVL1_FAST_PARAMS["epsilon"] > TVL1_PARAMS["epsilon"]


def test_flow_params_are_flat_scalars_with_version():
    for method in METHODS:
        params = flow_params(FlowConfig(method, bound=15.0))
        assert params["method"] == method and params["bound"] == 15.0
        assert params["opencv"] == flowcalc.opencv_version() == cv2.__version__
        assert all(isinstance(v, (str, int, float, bool)) for v in params.values()), params
    dis = flow_params(FlowConfig("dis"))
    assert dis["preset"] == "medium" and dis["finestScale"] == 1 and dis["patchSize"] == 8
    assert {k: flow_params(FlowConfig("farneback"))[k] for k in FARNEBACK_PARAMS} == FARNEBACK_PARAMS


# ---------------------------------------------------------------- quantisation


@pytest.mark.parametrize(
    "v, q",
    [
        (-1000.0, 0),
        (-20.0001, 0),
        (-20.0, 0),
        (-19.99, 0),  # 0.06 levels -> 0
        (-20 + LEVEL * 0.49, 0),
        (-20 + LEVEL * 0.51, 1),
        (-20 + LEVEL, 1),
        (-0.1, 127),
        (0.0, 128),  # 127.5 rounds half up
        (LEVEL / 2 - 1e-9, 128),
        (-LEVEL / 2, 127),  # 127.0 exactly
        (19.99, 255),
        (20.0, 255),
        (20.0001, 255),
        (1e6, 255),
        (20 - LEVEL, 254),
    ],
)
def test_quantize_table(v, q):
    assert quantize(np.array([v], dtype=np.float64), B)[0] == q
    assert quantize(np.array([v], dtype=np.float32), B).dtype == np.uint8


def test_quantize_ties_round_half_up():
    # With B = 127.5 the level is v + 127.5 exactly, so integer v are exact ties.
    v = np.array([-2.0, -1.0, 0.0, 1.0])
    np.testing.assert_array_equal(quantize(v, 127.5), [126, 127, 128, 129])
    assert list(np.round(v + 127.5)) == [126, 126, 128, 128]  # what half-to-even would have given


def test_quantize_matches_formula_elementwise():
    v = np.random.default_rng(1).uniform(-30, 30, size=(3, 5, 7, 2)).astype(np.float32)
    expected = np.where(
        v > B, 255, np.where(v < -B, 0, np.floor(255 * (v.astype(np.float64) + B) / (2 * B) + 0.5))
    )
    q = quantize(v, B)
    assert q.shape == v.shape and q.dtype == np.uint8
    np.testing.assert_array_equal(q, expected.astype(np.uint8))


def test_quantize_rejects_nan():
    with pytest.raises(FlowError, match="NaN"):
        quantize(np.array([0.0, np.nan]), B)


def test_dequantize_formula_and_roundtrip():
    levels = np.arange(256, dtype=np.uint8)
    deq = dequantize(levels, B)
    assert deq.dtype == np.float32
    np.testing.assert_allclose(deq, levels.astype(np.float64) * 2 * B / 255 - B, atol=1e-5)
    assert deq[0] == pytest.approx(-B) and deq[255] == pytest.approx(B, abs=1e-5)
    np.testing.assert_array_equal(quantize(deq, B), levels)  # levels survive a round trip
    v = np.random.default_rng(2).uniform(-B, B, size=10_000).astype(np.float32)
    err = np.abs(dequantize(quantize(v, B), B) - v)
    assert err.max() <= B / 255 + 1e-5  # half a level


def test_stored_layout_channel_first():
    flow = np.zeros((3, 4, 5, 2), dtype=np.float32)
    flow[1, 2, 3, 0] = 5.0  # u
    flow[2, 0, 4, 1] = -7.0  # v
    stored = to_stored(flow, B)
    assert stored.shape == (3, 2, 4, 5) and stored.dtype == np.uint8 and stored.flags.c_contiguous
    assert stored[1, 0, 2, 3] == quantize(np.array([5.0]), B)[0]
    assert stored[2, 1, 0, 4] == quantize(np.array([-7.0]), B)[0]
    assert stored[0, 0, 0, 0] == 128
    back = from_stored(stored, B)
    assert back.shape == flow.shape and back.dtype == np.float32
    assert np.abs(back - flow).max() <= B / 255 + 1e-5
    with pytest.raises(FlowError):
        to_stored(flow.transpose(0, 3, 1, 2), B)
    with pytest.raises(FlowError):
        from_stored(stored.transpose(0, 2, 3, 1), B)


# ---------------------------------------------------------------- gray and flow


def test_rgb_to_gray_equals_per_frame_cvtcolor():
    rgb = np.random.default_rng(3).integers(0, 256, size=(3, 6, 7, 3), dtype=np.uint8)
    gray = rgb_to_gray(rgb)
    assert gray.shape == (3, 6, 7) and gray.dtype == np.uint8
    for t in range(3):
        np.testing.assert_array_equal(gray[t], cv2.cvtColor(rgb[t], cv2.COLOR_RGB2GRAY))
    # RGB, not BGR: pure red is darker than pure blue is bright under BT.601 (0.299 R vs 0.114 B)
    red = np.zeros((1, 1, 1, 3), np.uint8)
    red[..., 0] = 255
    assert rgb_to_gray(red)[0, 0, 0] == 76
    with pytest.raises(FlowError):
        rgb_to_gray(rgb[..., 0])


@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("method", OPENCV_METHODS)
def test_compute_flow_equals_direct_opencv(estimators, method, n):
    tex = smooth_texture(48, 64, seed=4)
    frames = np.stack([warp(tex, np.float64([[1, 0, 0.7 * t], [0, 1, -0.4 * t]])) for t in range(n)])
    flow = compute_flow(frames, estimators[method])
    assert flow.shape == (n - 1, 48, 64, 2) and flow.dtype == np.float32
    for t in range(n - 1):
        if method in ("tvl1", "tvl1-fast"):
            params = TVL1_PARAMS if method == "tvl1" else TVL1_FAST_PARAMS
            direct = cv2.optflow.DualTVL1OpticalFlow_create(
                params["tau"],
                params["lambda"],
                params["theta"],
                params["nscales"],
                params["warps"],
                params["epsilon"],
                params["innerIterations"],
                params["outerIterations"],
                params["scaleStep"],
                params["gamma"],
                params["medianFiltering"],
                params["useInitialFlow"],
            ).calc(frames[t], frames[t + 1], None)
        elif method == "dis":
            direct = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM).calc(
                frames[t], frames[t + 1], None
            )
        else:
            direct = cv2.calcOpticalFlowFarneback(frames[t], frames[t + 1], None, 0.5, 3, 15, 3, 5, 1.2, 0)
        np.testing.assert_array_equal(flow[t], direct)  # same parameters, fresh object: bit-identical


@pytest.mark.parametrize("n", [0, 1])
def test_too_few_frames(estimators, n):
    with pytest.raises(FlowError, match=f"needs at least 2 frames, got {n}$"):
        compute_flow(np.zeros((n, 8, 8), np.uint8), estimators["dis"])


def test_bad_frames(estimators):
    with pytest.raises(FlowError, match="uint8"):
        compute_flow(np.zeros((2, 8, 8), np.float32), estimators["dis"])
    with pytest.raises(FlowError, match=r"\(N, H, W\)"):
        compute_flow(np.zeros((2, 8, 8, 3), np.uint8), estimators["dis"])


@pytest.mark.parametrize("method", METHODS)
def test_sign_convention(estimators, method):
    """Content moving right and up: u > 0, v < 0, and next(x + u, y + v) ~ prev(x, y)."""
    frames, true = affine_pair(np.float64([[1, 0, 3.0], [0, 1, -2.0]]))
    flow = compute_flow(frames, estimators[method])[0]
    inner = flow[12:-12, 12:-12]
    assert np.median(inner[..., 0]) > 2.5 and np.median(inner[..., 1]) < -1.5
    # Warping next back with the flow recovers prev (what the convention means).
    ys, xs = np.mgrid[0:96, 0:96].astype(np.float32)
    back = cv2.remap(frames[1].astype(np.float32), xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR)
    err_back = np.abs(back - frames[0])[12:-12, 12:-12].mean()
    err_still = np.abs(frames[1].astype(np.float32) - frames[0])[12:-12, 12:-12].mean()
    assert err_back < 0.2 * err_still


# Interior mean endpoint error (px) against the true field; 96x96 smooth texture, 12 px margin, the
# rotation moves interior points by up to 1.9 px. Measured with opencv-contrib 5.0.0 (seed 0; over seeds
# 0-5 the worst case was within 0.005 px of these):
#              translation (2, -1)   rotation 3 deg about the centre
#   tvl1       0.003                 0.027
#   tvl1-fast  0.012                 0.033
#   dis        0.014                 0.062
#   farneback  0.002                 0.115
#   tvl1-torch 0.003                 0.030   (torch 2.13 CPU; tests/test_flow_torch.py compares it to tvl1)
# Bounds are ~3x the measurement (at least 0.01 px).
EPE_BOUNDS = {  # method: (translation, rotation)
    "tvl1": (0.01, 0.08),
    "tvl1-fast": (0.04, 0.1),
    "dis": (0.05, 0.2),
    "farneback": (0.01, 0.35),
    "tvl1-torch": (0.01, 0.08),
}


@pytest.mark.parametrize("method", METHODS)
def test_translation_epe(estimators, method):
    frames, true = affine_pair(np.float64([[1, 0, 2.0], [0, 1, -1.0]]))
    flow = compute_flow(frames, estimators[method])[0]
    assert interior_epe(flow, true) < EPE_BOUNDS[method][0]


@pytest.mark.parametrize("method", METHODS)
def test_rotation_epe(estimators, method):
    m = cv2.getRotationMatrix2D((47.5, 47.5), 3.0, 1.0)
    frames, true = affine_pair(m)
    assert np.abs(true[12:-12, 12:-12]).max() > 1.0  # the motion is not negligible
    flow = compute_flow(frames, estimators[method])[0]
    assert interior_epe(flow, true) < EPE_BOUNDS[method][1]


@pytest.mark.parametrize("method", ["tvl1", "tvl1-fast"])
def test_a_small_video_does_not_change_the_flow_of_the_next_one(method):
    """OpenCV's DualTVL1 object lowers its pyramid depth for good after a frame with a short side under
    ~39 px; an estimator reused across videos of different sizes (`extract --size S`) must give a larger video
    the flow a fresh estimator gives it."""
    small, _ = affine_pair(np.array([[1, 0, 1.0], [0, 1, 0.5]]), size=24)
    big, _ = affine_pair(np.array([[1, 0, 1.5], [0, 1, -0.5]]), size=96)
    fresh = compute_flow(big, make_estimator(FlowConfig(method)))
    reused = make_estimator(FlowConfig(method))
    compute_flow(small, reused)
    np.testing.assert_array_equal(compute_flow(big, reused), fresh)
