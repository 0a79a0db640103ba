"""Dense optical flow between consecutive grayscale frames, and its uint8 storage format.

Conventions (OpenCV's, kept unchanged):

* ``flow[t]`` is the flow from frame ``t`` to frame ``t + 1``; ``N`` frames give ``N - 1`` flows.
* ``flow[t, y, x] = (u, v)``: ``u`` is the horizontal (x, column) displacement, ``v`` the vertical
  (y, row) one, in pixels of the frames given.  Frame ``t + 1`` at ``(x + u, y + v)`` matches frame ``t``
  at ``(x, y)``: ``prev(y, x) ~ next(y + v, x + u)``.  An object moving right has ``u > 0``; moving down,
  ``v > 0``.

Storage: each component is clipped to ``[-B, B]`` and quantised to uint8 (``B = 20`` by default, one level
= ``2B / 255`` = 0.157 px), laid out ``(N - 1, 2, H, W)`` with channel 0 = ``u`` and 1 = ``v``.

Usage, once per worker process::

    init_worker_threads()
    estimator = make_estimator(FlowConfig("tvl1"))
    for video in videos:
        stored = to_stored(compute_flow(rgb_to_gray(rgb), estimator), cfg.bound)

``tvl1-torch`` is the same TV-L1 in PyTorch (``pipeline/tvl1_torch.py``, imported only when that method is
chosen, so nothing else here needs torch), batched over the pairs of a video on ``FlowConfig.device``, its
iterations compiled into fused kernels unless ``FlowConfig.compile`` is False.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from .flowerrors import FlowDeviceError, FlowError
from .names import FLOW_METHODS, OPENCV_FLOW_METHODS, TORCH_FLOW_METHODS

__all__ = [
    "METHODS",
    "OPENCV_METHODS",
    "TVL1_PARAMS",
    "TVL1_FAST_PARAMS",
    "FARNEBACK_PARAMS",
    "TORCH_METHODS",
    "DEVICES",
    "FlowError",
    "FlowDeviceError",
    "FlowConfig",
    "FlowEstimator",
    "flow_params",
    "opencv_version",
    "make_estimator",
    "torch_device",
    "compute_flow",
    "rgb_to_gray",
    "quantize",
    "dequantize",
    "to_stored",
    "from_stored",
    "init_worker_threads",
]

OPENCV_METHODS, TORCH_METHODS, METHODS = OPENCV_FLOW_METHODS, TORCH_FLOW_METHODS, FLOW_METHODS
DEVICES = ("auto", "cpu", "cuda")  # for the torch methods; "cuda:N" picks a GPU

# OpenCV's own defaults for cv::optflow::DualTVL1OpticalFlow::create (checked against the getters of a
# default-created object in tests), under the C++ parameter names.
TVL1_PARAMS: dict[str, Any] = {
    "tau": 0.25,
    "lambda": 0.15,
    "theta": 0.3,
    "nscales": 5,
    "warps": 5,
    "epsilon": 0.01,
    "innerIterations": 30,
    "outerIterations": 10,
    "scaleStep": 0.8,
    "gamma": 0.0,
    "medianFiltering": 5,
    "useInitialFlow": False,
}

# TV-L1 with a relaxed stopping rule: a larger convergence threshold epsilon on the per-iteration flow
# update (default 0.01), everything else unchanged. bench/bench_flow_methods.py, 36 real pairs at 171x128,
# one thread (tvl1: 2.4 pairs/s of CPU time), speedup over tvl1 (range over 3 runs on a shared machine)
# and mean EPE against tvl1:
#   epsilon 0.02: 2-3.6x, 0.06 px;   0.05: 7-11x, 0.16 px;   0.1: 11-16x, 0.33 px;
#   0.05 with 3 warps: 11-16x, 0.25 px;   0.05 with 3 scales: 8-12x, 0.38 px.   (DIS 0.30, Farneback 0.55)
# 0.05 keeps the error at about one storage level (0.157 px) for most of the speed; it grows with the
# motion (0.29 px on a clip with mean |flow| 1.9 px; 0.66 px on a faster stretch with mean |flow| 2.6 px).
TVL1_FAST_PARAMS: dict[str, Any] = {**TVL1_PARAMS, "epsilon": 0.05}

# The values everyone uses (OpenCV's samples/python/opt_flow.py), flags 0 = box window, no initial flow.
FARNEBACK_PARAMS: dict[str, Any] = {
    "pyr_scale": 0.5,
    "levels": 3,
    "winsize": 15,
    "iterations": 3,
    "poly_n": 5,
    "poly_sigma": 1.2,
    "flags": 0,
}

DIS_PRESET = "medium"

# Python keyword names of DualTVL1OpticalFlow_create's arguments where they differ from the C++ names
# (`lambda` is reserved; OpenCV spells the inner iterations argument with three n's).
_TVL1_KWARG = {"lambda": "lambda_", "innerIterations": "innnerIterations"}

_DIS_GETTERS = (
    "FinestScale",
    "CoarsestScale",
    "PatchSize",
    "PatchStride",
    "GradientDescentIterations",
    "VariationalRefinementIterations",
    "VariationalRefinementAlpha",
    "VariationalRefinementDelta",
    "VariationalRefinementGamma",
    "VariationalRefinementEpsilon",
    "UseMeanNormalization",
    "UseSpatialPropagation",
)


@dataclass(frozen=True)
class FlowConfig:
    """Which flow estimator, and the clipping bound ``B`` (px) used when storing it as uint8.

    ``device``, ``batch`` (most pairs per call; None = as many as the free memory allows) and ``compile``
    (the compiled, fused kernels; False = the eager torch code, for debugging) apply to the torch methods
    only.  The batch never changes the flow, only the speed and the memory used; the device and ``compile``
    change it by float rounding at most (on the CPU both paths give the same flow, tested), so neither is
    part of the stored settings.
    """

    method: str = "tvl1"
    bound: float = 20.0
    device: str = "auto"
    batch: int | None = None
    compile: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown flow method {self.method!r}; expected one of {', '.join(METHODS)}")
        if not (np.isfinite(self.bound) and self.bound > 0):
            raise ValueError(f"flow bound must be a positive number, got {self.bound!r}")
        if self.device not in DEVICES and not (self.device.startswith("cuda:") and self.device[5:].isdigit()):
            raise ValueError(
                f"unknown device {self.device!r}; expected one of {', '.join(DEVICES)} or cuda:N"
            )
        if self.batch is not None and self.batch < 1:
            raise ValueError(f"batch must be at least 1, got {self.batch}")


def opencv_version() -> str:
    """Version of the OpenCV build computing the flow (flow values depend on it)."""
    return cv2.__version__


def _tvl1_create(params: dict[str, Any]) -> Any:
    return cv2.optflow.DualTVL1OpticalFlow_create(**{_TVL1_KWARG.get(k, k): v for k, v in params.items()})


def _dis_create() -> Any:
    return cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)


def _dis_params(dis: Any) -> dict[str, Any]:
    """What the preset actually set, read back from the object (presets may change between versions)."""
    out: dict[str, Any] = {"preset": DIS_PRESET}
    for name in _DIS_GETTERS:
        value = getattr(dis, "get" + name)()
        out[name[0].lower() + name[1:]] = value.item() if isinstance(value, np.generic) else value
    return out


def flow_params(cfg: FlowConfig) -> dict[str, Any]:
    """The exact parameters of ``cfg``'s estimator, flat and JSON/HDF5-attribute friendly.

    Holds ``method``, ``bound``, ``opencv`` (version), ``estimator`` (the OpenCV function) and every
    parameter of that function.
    """
    head: dict[str, Any] = {"method": cfg.method, "bound": float(cfg.bound), "opencv": opencv_version()}
    if cfg.method in TORCH_METHODS:
        import torch  # only for this method (see the module docstring)

        return {
            **head,
            "estimator": "iic.pipeline.tvl1_torch.tvl1",
            "torch": str(torch.__version__),
            **TVL1_PARAMS,
        }
    if cfg.method in ("tvl1", "tvl1-fast"):
        params = TVL1_PARAMS if cfg.method == "tvl1" else TVL1_FAST_PARAMS
        return {**head, "estimator": "cv2.optflow.DualTVL1OpticalFlow_create", **params}
    if cfg.method == "dis":
        return {**head, "estimator": "cv2.DISOpticalFlow_create", **_dis_params(_dis_create())}
    return {**head, "estimator": "cv2.calcOpticalFlowFarneback", **FARNEBACK_PARAMS}


class FlowEstimator:
    """A reusable flow estimator: build one per worker process, call it for every pair.

    ``estimator(prev, next)`` takes two ``(H, W)`` uint8 frames and returns the ``(H, W, 2)`` float32
    flow from ``prev`` to ``next``.  ``impl`` is the underlying OpenCV object (``None`` for Farneback,
    which is a plain function).  Not thread-safe: OpenCV objects keep internal buffers.
    """

    def __init__(self, cfg: FlowConfig) -> None:
        self.cfg = cfg
        self.impl: Any = None
        self._calc: Callable[[np.ndarray, np.ndarray], np.ndarray]
        self._create: Callable[[], Any] | None = None
        if cfg.method in ("tvl1", "tvl1-fast"):
            self._create = lambda: _tvl1_create(TVL1_PARAMS if cfg.method == "tvl1" else TVL1_FAST_PARAMS)
        elif cfg.method == "dis":
            self._create = _dis_create
        if self._create is not None:
            self.impl = self._create()
            self._calc = self._calc_impl
        else:
            self._calc = self._calc_farneback
        self._by_size: dict[tuple[int, int], Any] = {}

    def _calc_impl(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        # One OpenCV object per frame size: DualTVL1 lowers its own pyramid depth for good after a frame whose
        # short side is under ~39 px, so a reused object would give every later, larger video fewer levels
        # (videos of one dataset may differ in size: `extract --size S`).
        size = prev.shape[:2]
        if size not in self._by_size:
            self._by_size[size] = self.impl if not self._by_size else self._create()
        return self._by_size[size].calc(prev, nxt, None)

    @staticmethod
    def _calc_farneback(prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        p = FARNEBACK_PARAMS
        return cv2.calcOpticalFlowFarneback(
            prev,
            nxt,
            None,
            p["pyr_scale"],
            p["levels"],
            p["winsize"],
            p["iterations"],
            p["poly_n"],
            p["poly_sigma"],
            p["flags"],
        )

    def __call__(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        return self._calc(prev, nxt)

    def video_flow(self, frames: np.ndarray) -> np.ndarray:
        """``(N, H, W)`` uint8 -> ``(N - 1, H, W, 2)`` float32, one OpenCV call per pair."""
        n, h, w = frames.shape
        flow = np.empty((n - 1, h, w, 2), dtype=np.float32)
        for t in range(n - 1):
            flow[t] = self._calc(frames[t], frames[t + 1])
        return flow

    def __repr__(self) -> str:
        return f"FlowEstimator({self.cfg!r})"


def make_estimator(cfg: FlowConfig, threads: int | None = None, processes: int = 1) -> Any:
    """The estimator for ``cfg``; create it once per worker and reuse it (TV-L1 setup is not free).

    A `FlowEstimator` for the OpenCV methods; for ``tvl1-torch`` a ``tvl1_torch.TorchTVL1`` on
    ``cfg.device`` (fused kernels unless ``cfg.compile`` is False) using ``threads`` torch threads on the
    CPU (None: torch's setting), its batch capped from ``1 / processes`` of the free memory.  Both take
    ``(prev, next)`` and have ``video_flow(frames)``.
    Raises `FlowDeviceError` for an unusable device.
    """
    if cfg.method in TORCH_METHODS:
        from .tvl1_torch import TorchTVL1  # imports torch: only when this method is chosen

        return TorchTVL1(
            TVL1_PARAMS,
            device=cfg.device,
            batch=cfg.batch,
            threads=threads,
            processes=processes,
            compile=cfg.compile,
        )
    return FlowEstimator(cfg)


def torch_device(cfg: FlowConfig) -> str:
    """The device the torch method of ``cfg`` runs on ("cpu", "cuda"...); `FlowDeviceError` if unusable."""
    from .tvl1_torch import resolve_device

    return str(resolve_device(cfg.device))


def compute_flow(gray_frames: np.ndarray, estimator: Any) -> np.ndarray:
    """Flow between consecutive frames.

    gray_frames: ``(N, H, W)`` uint8, N >= 2.
    Returns ``(N - 1, H, W, 2)`` float32; ``[t]`` is the flow from frame t to t + 1, channel 0 = u
    (x, px), 1 = v (y, px).  Raises ``FlowError`` for fewer than 2 frames or a wrong shape/dtype.
    """
    frames = np.asarray(gray_frames)
    if frames.ndim != 3:
        raise FlowError(f"expected grayscale frames (N, H, W), got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise FlowError(f"expected uint8 frames, got {frames.dtype}")
    n, h, w = frames.shape
    if n < 2:
        raise FlowError(f"needs at least 2 frames, got {n}")
    return estimator.video_flow(np.ascontiguousarray(frames))


def rgb_to_gray(frames: np.ndarray) -> np.ndarray:
    """``(N, H, W, 3)`` uint8 RGB -> ``(N, H, W)`` uint8 luma (cv2.COLOR_RGB2GRAY, BT.601 weights)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise FlowError(f"expected uint8 RGB frames (N, H, W, 3), got {frames.dtype} {frames.shape}")
    n, h, w, _ = frames.shape
    if n == 0:
        return np.empty((0, h, w), dtype=np.uint8)
    # The conversion is per pixel, so the whole clip goes through as one (N*H, W) image in one call.
    stacked = np.ascontiguousarray(frames).reshape(n * h, w, 3)
    return cv2.cvtColor(stacked, cv2.COLOR_RGB2GRAY).reshape(n, h, w)


def quantize(flow: np.ndarray, bound: float) -> np.ndarray:
    """Flow (px, any shape) -> uint8 levels, per component.

    ``v > B -> 255``, ``v < -B -> 0``, else ``round(255 * (v + B) / (2B))`` with ties rounded half up
    (``floor(x + 0.5)``, unlike ``np.round``'s half-to-even, so equal steps in ``v`` give equal steps in
    the level whatever its parity).  Zero flow maps to 128 (127.5 rounded up).  Computed in float64.
    Raises ``FlowError`` on NaN or infinite values rather than storing garbage.
    """
    v = np.asarray(flow, dtype=np.float64)
    if not np.isfinite(v).all():
        raise FlowError("flow contains NaN or infinite values")
    levels = np.floor(255.0 * (v + bound) / (2.0 * bound) + 0.5)
    # Inside [-B, B] the formula already lies in [0, 255]; clipping outside it is the v > B / v < -B rule.
    return np.clip(levels, 0, 255).astype(np.uint8)


def dequantize(q: np.ndarray, bound: float) -> np.ndarray:
    """uint8 levels -> flow in px (float32): ``q * 2B / 255 - B``."""
    return (np.asarray(q, dtype=np.float32) * np.float32(2.0 * bound / 255.0) - np.float32(bound)).astype(
        np.float32, copy=False
    )


def to_stored(flow: np.ndarray, bound: float) -> np.ndarray:
    """``(N - 1, H, W, 2)`` float flow -> stored ``(N - 1, 2, H, W)`` uint8 (channel 0 = u, 1 = v)."""
    if flow.ndim != 4 or flow.shape[-1] != 2:
        raise FlowError(f"expected flow (N-1, H, W, 2), got shape {flow.shape}")
    return np.ascontiguousarray(quantize(flow, bound).transpose(0, 3, 1, 2))


def from_stored(stored: np.ndarray, bound: float) -> np.ndarray:
    """Stored ``(N - 1, 2, H, W)`` uint8 -> ``(N - 1, H, W, 2)`` float32 flow in px."""
    if stored.ndim != 4 or stored.shape[1] != 2:
        raise FlowError(f"expected stored flow (N-1, 2, H, W), got shape {stored.shape}")
    return np.ascontiguousarray(dequantize(stored, bound).transpose(0, 2, 3, 1))


def init_worker_threads(n: int = 1) -> None:
    """Limit OpenCV's own thread pool (call at worker-process start; OpenCV ignores OMP_NUM_THREADS)."""
    cv2.setNumThreads(n)
