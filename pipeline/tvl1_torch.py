"""TV-L1 optical flow in PyTorch, batched over frame pairs: ``iic-prep flow --method tvl1-torch``.

The algorithm is OpenCV's ``cv::optflow::DualTVL1OpticalFlow`` (Zach, Pock, Bischof 2007, in the form of
Sanchez, Meinhardt-Llopis, Facciolo, "TV-L1 Optical Flow Estimation", IPOL 2013), step for step, with the
parameters of ``flowcalc.TVL1_PARAMS``; every tensor carries a leading batch dimension ``B`` (one entry per
frame pair) so one call runs many pairs on one device.  Notation (IPOL): ``u = (u1, u2)`` the flow,
``v`` the auxiliary flow of the data term, ``p = (p1, p2)`` the dual variable of each flow component
(``p11, p12`` for ``u1``), ``I0`` the first frame, ``I1w`` the second one warped by the current flow.

Per scale (coarse to fine, ``nscales`` levels of a ``scaleStep`` pyramid, zero flow at the coarsest):
``p = 0``; then ``warps`` times: warp ``I1`` and its centred gradient by ``u`` (bicubic), linearise the
data term ``rho(u) = rho_c + grad(I1w) . u``; then up to ``outerIterations`` times a 5x5 median filter on
``u`` followed by up to ``innerIterations`` primal-dual iterations
(``v = TH(u)``, ``u = v + theta div(p)``, ``p = (p + tau/theta grad(u)) / (1 + tau/theta |grad(u)|)``),
both loops ending as soon as ``sum |u_new - u|^2 <= epsilon^2 * H * W``.  The flow is then resized to the
next finer level (bilinear) and multiplied by ``1 / scaleStep``.

Details copied from OpenCV so that the results agree with ``tvl1`` (tests/test_flow_torch.py):

* pyramid: ``cv2.resize(INTER_LINEAR)`` by ``scaleStep`` of the previous level (no smoothing), levels below
  16 px on a side are dropped; sizes are ``round(side * scaleStep)``;
* warping: ``cv2.remap(INTER_CUBIC)`` (Keys kernel, a = -0.75) at the exact sample positions, zero outside
  the image (``BORDER_CONSTANT``);
* gradients: centred differences for the image (half one-sided differences on the border), forward
  differences for the flow (zero on the last row / column), the matching backward-difference divergence;
* median filter: ``cv2.medianBlur(ksize=5)`` (replicated border).

The stopping rule is per pair.  In a batch the loops run while any pair is unconverged, on the unconverged
pairs only (they are gathered into a smaller batch when some converge): every pair goes through exactly the
arithmetic it would go through alone, so a pair's flow does not depend on the batch it was computed in
(only element-wise operations and per-pair reductions, no transcendental functions whose vectorised and
scalar versions could differ).  ``gamma`` (the illumination term) must be 0, as in ``TVL1_PARAMS``.

Parallelism.  On the CPU the flow stage runs ``--workers`` processes with ONE torch thread each, every
process taking whole videos (as for the OpenCV methods), not one process with ``--workers`` torch threads:
torch's threads meet at a barrier after every element-wise operation (~60 per iteration), so one
descheduled thread stalls them all, and on a shared machine (this one: 2 cores, load 2.6-4) two torch
threads ran 5-40x SLOWER than one (bench/bench_flow_torch.py, BENCHMARKS.md); independent processes lose
only their own share.  Each process caps its batch from its share of the free memory.  On a GPU the
parallelism is the batch: one process drives the device (several would only split its memory).  Since a
pair's flow does not depend on its batch, how the pairs are spread over processes never changes the result.
"""
from __future__ import annotations

import functools
import logging
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .flowerrors import FlowDeviceError

log = logging.getLogger(__name__)

__all__ = [
    "BYTES_PER_PIXEL",
    "CPU_BATCH",
    "TorchTVL1",
    "resolve_device",
    "free_memory",
    "max_batch",
    "pyramid_sizes",
    "resize_linear",
    "centered_gradient",
    "forward_gradient",
    "divergence",
    "warp_cubic",
    "median5",
    "threshold",
    "primal_dual_step",
    "tvl1",
]

# Bytes of device memory to plan per pixel of a pair at full resolution: the peak resident memory of a
# CPU run grew by 490-590 bytes per pixel per pair (batches of 16 and 32 at 128x171: pyramids, warped images
# and gradients, u, v, p, the warp's int64 indices and the median network's intermediates); twice that.
BYTES_PER_PIXEL = 1024
MEMORY_FRACTION = 0.5  # of the free memory a batch may plan to use
# Default batch on the CPU: small, so that a batch's ~40 planes stay in the cache. At 128x171, one thread,
# CPU time against OpenCV's tvl1 just before: 1.09x at batch 1, 1.22x at 2, 1.19x at 4, 0.98x at 8,
# 0.76x at 24 (bench/bench_flow_torch.py, BENCHMARKS.md).
CPU_BATCH = 2
MIN_SIDE = 16  # OpenCV drops pyramid levels smaller than this
_FLT_EPSILON = float(np.finfo(np.float32).eps)
_CUBIC_A = -0.75


def resolve_device(device: str) -> torch.device:
    """``cpu`` | ``cuda`` | ``cuda:N`` | ``auto`` (CUDA when available) -> a usable ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FlowDeviceError(f"--device {device}: CUDA is not available to this torch {torch.__version__} "
                          "(CPU build or no GPU); use --device cpu or auto")
    if dev.type not in ("cpu", "cuda"):
        raise FlowDeviceError(f"--device {device}: only cpu, cuda and auto are supported")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise FlowDeviceError(f"--device {device}: there are {torch.cuda.device_count()} CUDA devices")
    return dev


def free_memory(device: torch.device) -> int:
    """Free bytes on ``device``: ``cudaMemGetInfo`` for CUDA, MemAvailable of /proc/meminfo for the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def max_batch(height: int, width: int, free_bytes: int) -> int:
    """Most pairs of ``height x width`` frames a batch may hold in ``free_bytes`` (at least 1)."""
    return max(1, int(free_bytes * MEMORY_FRACTION) // (BYTES_PER_PIXEL * height * width))


# ---------------------------------------------------------------------------------------------- pyramid


def pyramid_sizes(height: int, width: int, nscales: int, scale_step: float) -> list[tuple[int, int]]:
    """(H, W) of each level, finest first, as OpenCV builds them (levels under 16 px dropped)."""
    sizes = [(height, width)]
    for _ in range(1, nscales):
        h, w = sizes[-1]
        nh, nw = round(h * scale_step), round(w * scale_step)  # cv::resize(Size(), fx, fy): saturate_cast
        if nw < MIN_SIDE or nh < MIN_SIDE:
            break
        sizes.append((nh, nw))
    return sizes


def _linear_taps(src: int, dst: int, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (i0, i1) and weight of i1 per output index, for a source-to-destination ``scale``
    (source px per destination px), as cv::resize INTER_LINEAR computes them (clamped at the borders)."""
    pos = ((np.arange(dst) + 0.5) * scale - 0.5).astype(np.float32)
    i0 = np.floor(pos).astype(np.int64)
    frac = pos - i0
    low, high = i0 < 0, i0 >= src - 1
    frac[low | high] = 0.0
    i0 = np.clip(i0, 0, src - 1)
    i1 = np.minimum(i0 + 1, src - 1)
    return i0, i1, frac.astype(np.float32)


def resize_linear(x: torch.Tensor, size: tuple[int, int], scale: tuple[float, float] | None = None) -> torch.Tensor:
    """``(B, H, W)`` -> ``(B, h, w)`` bilinear, as ``cv2.resize(INTER_LINEAR)`` on float images.

    ``scale = (sy, sx)`` are the factors OpenCV maps with (source px per destination px): ``1 / fy, 1 / fx``
    when the size was derived from factors (the pyramid), ``H / h, W / w`` when a size was given (the flow).
    """
    h, w = size
    src_h, src_w = x.shape[-2:]
    sy, sx = scale if scale is not None else (src_h / h, src_w / w)
    y0, y1, fy = (torch.from_numpy(a).to(x.device) for a in _linear_taps(src_h, h, sy))
    x0, x1, fx = (torch.from_numpy(a).to(x.device) for a in _linear_taps(src_w, w, sx))
    rows = x.index_select(-1, x0) * (1 - fx) + x.index_select(-1, x1) * fx  # horizontal pass first, as OpenCV
    fy = fy[:, None]
    return rows.index_select(-2, y0) * (1 - fy) + rows.index_select(-2, y1) * fy


# ---------------------------------------------------------------------------------------------- differences


def centered_gradient(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, H, W)`` -> (dx, dy): central differences / 2, one-sided differences / 2 on the borders."""
    dx, dy = torch.empty_like(img), torch.empty_like(img)
    dx[..., 1:-1] = 0.5 * (img[..., 2:] - img[..., :-2])
    dx[..., 0] = 0.5 * (img[..., 1] - img[..., 0])
    dx[..., -1] = 0.5 * (img[..., -1] - img[..., -2])
    dy[..., 1:-1, :] = 0.5 * (img[..., 2:, :] - img[..., :-2, :])
    dy[..., 0, :] = 0.5 * (img[..., 1, :] - img[..., 0, :])
    dy[..., -1, :] = 0.5 * (img[..., -1, :] - img[..., -2, :])
    return dx, dy


def forward_gradient(u: torch.Tensor, ux: torch.Tensor | None = None, uy: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(..., H, W)`` -> (ux, uy): forward differences, zero on the last column (ux) / last row (uy);
    written into ``ux``, ``uy`` when given."""
    ux = torch.empty_like(u) if ux is None else ux
    uy = torch.empty_like(u) if uy is None else uy
    torch.sub(u[..., 1:], u[..., :-1], out=ux[..., :-1])
    ux[..., -1] = 0.0
    torch.sub(u[..., 1:, :], u[..., :-1, :], out=uy[..., :-1, :])
    uy[..., -1, :] = 0.0
    return ux, uy


def divergence(p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
    """Backward-difference divergence of ``(p1, p2)``, each ``(B, H, W)``, with p = 0 outside the image:
    the negative adjoint of `forward_gradient`."""
    div, dy = torch.empty_like(p1), torch.empty_like(p2)
    div[..., 0] = p1[..., 0]
    torch.sub(p1[..., 1:], p1[..., :-1], out=div[..., 1:])
    dy[..., 0, :] = p2[..., 0, :]
    torch.sub(p2[..., 1:, :], p2[..., :-1, :], out=dy[..., 1:, :])
    div += dy
    return div


# ---------------------------------------------------------------------------------------------- warping


def _cubic_weights(t: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Keys cubic kernel (a = -0.75, OpenCV's interpolateCubic) at offsets -1, 0, 1, 2 for fractions t."""
    a = _CUBIC_A
    t1 = t + 1
    w0 = ((a * t1 - 5 * a) * t1 + 8 * a) * t1 - 4 * a
    w1 = ((a + 2) * t - (a + 3)) * t * t + 1
    s = 1 - t
    w2 = ((a + 2) * s - (a + 3)) * s * s + 1
    w3 = 1 - w0 - w1 - w2
    return w0, w1, w2, w3


def warp_cubic(imgs: torch.Tensor, u1: torch.Tensor, u2: torch.Tensor) -> torch.Tensor:
    """Images ``(K, B, H, W)`` sampled at ``(x + u1, y + u2)`` (``u1, u2``: ``(B, H, W)``), each like
    ``cv2.remap(INTER_CUBIC)``: Keys cubic (a = -0.75) at the exact positions (OpenCV 5's float remap;
    older versions rounded them to 1/32 px), samples outside the image 0 (BORDER_CONSTANT).
    """
    b, h, w = u1.shape
    k = imgs.shape[0]
    dev = u1.device
    xs = torch.arange(w, device=dev, dtype=u1.dtype)
    ys = torch.arange(h, device=dev, dtype=u1.dtype)[:, None]
    limit = float(1 << 20)  # far outside any image; keeps the positions in int range
    x = (xs + u1).clamp(-limit, limit)
    y = (ys + u2).clamp(-limit, limit)
    x0, y0 = torch.floor(x), torch.floor(y)
    wx, wy = _cubic_weights(x - x0), _cubic_weights(y - y0)
    ix, iy = x0.to(torch.int64), y0.to(torch.int64)
    pad = 3  # zero border wide enough that every clamped tap outside the image reads 0
    hp, wp = h + 2 * pad, w + 2 * pad
    cols = [(ix + (j - 1)).clamp(-pad, w - 1 + pad) + pad for j in range(4)]
    rows = [((iy + (i - 1)).clamp(-pad, h - 1 + pad) + pad) * wp + (torch.arange(b, device=dev) * (hp * wp))[:, None, None]
            for i in range(4)]
    flat = F.pad(imgs, (pad, pad, pad, pad)).reshape(k, -1)
    acc = None
    for i in range(4):
        row = None
        for j in range(4):
            tap = flat.index_select(1, (rows[i] + cols[j]).reshape(-1)).reshape(k, b, h, w)  # 6x faster than []
            tap *= wx[j]
            row = tap if row is None else row.add_(tap)
        row *= wy[i]
        acc = row if acc is None else acc.add_(row)
    return acc


def _batcher_pairs(n: int) -> list[tuple[int, int]]:
    """Comparators of Batcher's odd-even merge sort of ``n`` (a power of 2) wires, in order."""
    pairs = []
    p = 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return pairs


@functools.lru_cache(maxsize=None)
def _selection_network(n: int, rank: int) -> tuple[tuple[tuple[str, int, int, int], ...], int]:
    """A min/max network giving the ``rank``-th smallest of ``n`` inputs: Batcher's sorting network on the
    next power of two with +inf padding resolved symbolically, pruned to what the output depends on.

    Returns (ops, output) where each op is ``(min|max, out, a, b)`` over variable ids (0..n-1 = inputs).
    """
    size = 1 << (n - 1).bit_length()
    inf = -1
    wire = list(range(n)) + [inf] * (size - n)
    ops, next_id = [], n
    for a, b in _batcher_pairs(size):
        if wire[b] == inf:
            continue
        if wire[a] == inf:
            wire[a], wire[b] = wire[b], inf
            continue
        lo, hi = next_id, next_id + 1
        next_id += 2
        ops += [("min", lo, wire[a], wire[b]), ("max", hi, wire[a], wire[b])]
        wire[a], wire[b] = lo, hi
    needed, kept = {wire[rank]}, []
    for op in reversed(ops):
        if op[1] in needed:
            kept.append(op)
            needed |= {op[2], op[3]}
    return tuple(reversed(kept)), wire[rank]


def median5(u: torch.Tensor) -> torch.Tensor:
    """5x5 median of each ``(B, H, W)`` plane, border replicated: ``cv2.medianBlur(u, 5)``.

    A pruned selection network of element-wise min/max over the 25 shifted views (exact, like OpenCV's
    sorting network; about twice as fast as ``Tensor.median`` over unfolded windows).
    """
    b, h, w = u.shape
    padded = F.pad(u[:, None], (2, 2, 2, 2), mode="replicate")[:, 0]
    values: dict[int, torch.Tensor] = {5 * i + j: padded[:, i:i + h, j:j + w] for i in range(5) for j in range(5)}
    ops, out = _selection_network(25, 12)
    last_use = {}
    for k, op in enumerate(ops):
        last_use[op[2]] = last_use[op[3]] = k
    for k, (kind, dst, a, c) in enumerate(ops):
        values[dst] = (torch.minimum if kind == "min" else torch.maximum)(values[a], values[c])
        for v in (a, c):
            if last_use[v] == k and v != out:
                values.pop(v, None)
    return values[out].contiguous()


# ---------------------------------------------------------------------------------------------- iterations


@dataclass
class _Data:
    """The linearised data term of one warp, per pair: ``grad = (I1wx, I1wy)`` ``(2, B, H, W)`` the gradient
    of the warped second image, ``rho_c = I1w - grad(I1w).u0 - I0`` and ``neg_grad = -|grad I1w|^2``
    ``(B, H, W)`` (-1 where ``|grad I1w|^2 <= FLT_EPSILON``: there the step is below 2e-5 px anyway)."""

    grad: torch.Tensor
    rho_c: torch.Tensor
    neg_grad: torch.Tensor

    def take(self, idx: torch.Tensor) -> _Data:
        return _Data(self.grad.index_select(1, idx), self.rho_c.index_select(0, idx), self.neg_grad.index_select(0, idx))


def threshold(data: _Data, u: torch.Tensor, l_t: float) -> torch.Tensor:
    """v = TH(u), the pointwise minimiser of the linearised data term (``l_t = lambda * theta``), for the
    flow ``u = (u1, u2)`` ``(2, B, H, W)``: ``v = u + clip(-rho(u) / |grad I1w|^2, -l_t, l_t) grad I1w``,
    which is OpenCV's three cases (``rho < -l_t |grad|^2``, ``rho > l_t |grad|^2``, otherwise) at once."""
    rho = data.grad[0] * u[0]
    rho += data.grad[1] * u[1]
    rho += data.rho_c
    fi = rho.div_(data.neg_grad).clamp_(-l_t, l_t)
    v = data.grad * fi
    v += u
    return v


def primal_dual_step(data: _Data, u: torch.Tensor, p: torch.Tensor, l_t: float, theta: float, taut: float):
    """One inner iteration: v = TH(u); u = v + theta div p; p = (p + taut grad u) / (1 + taut |grad u|).

    ``u = (u1, u2)`` is ``(2, B, H, W)``; ``p`` is ``(2, 2, B, H, W)``, ``p[c] = (p_c1, p_c2)`` the dual
    variable of component ``c`` (x and y parts).  Returns the new (u, p) and ``error`` ``(B,)`` = sum over
    the pixels of |u_new - u|^2 (per row, then over rows, then over components: a per-pair reduction
    whose order does not depend on B).  The inputs are not modified.
    """
    v = threshold(data, u, l_t)
    n = divergence(p[:, 0], p[:, 1])
    n *= theta
    n += v
    d = n - u
    d *= d
    error = d.sum(-1).sum(-1)
    error = error[0] + error[1]
    q = torch.empty_like(p)  # (2, 2, B, H, W): grad u, then the new p
    gx, gy = forward_gradient(n, q[:, 0], q[:, 1])
    ng = gx * gx
    ng += gy * gy
    ng.sqrt_().mul_(taut).add_(1.0)
    q *= taut
    q += p
    q /= ng[:, None]
    return n, q, error


def _data_term(i0: torch.Tensor, i1: torch.Tensor, i1x: torch.Tensor, i1y: torch.Tensor, u: torch.Tensor) -> _Data:
    i1w, i1wx, i1wy = warp_cubic(torch.stack([i1, i1x, i1y]), u[0], u[1])
    grad = i1wx * i1wx + i1wy * i1wy
    rho_c = i1w - i1wx * u[0] - i1wy * u[1] - i0
    return _Data(torch.stack([i1wx, i1wy]), rho_c, torch.where(grad > _FLT_EPSILON, -grad, -1.0))


def _median(u: torch.Tensor) -> torch.Tensor:
    two, b, h, w = u.shape
    return median5(u.reshape(two * b, h, w)).reshape(two, b, h, w)


def _one_scale(i0: torch.Tensor, i1: torch.Tensor, u: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
    """Refine the flow ``u`` ``(2, B, H, W)`` of one pyramid level (OpenCV's procOneScale) for every pair."""
    b, h, w = i0.shape
    eps = float(np.float32(params["epsilon"] ** 2 * h * w))
    l_t = float(np.float32(params["lambda"] * params["theta"]))
    taut = float(np.float32(params["tau"] / params["theta"]))
    theta = float(np.float32(params["theta"]))
    median = params["medianFiltering"] > 1
    if median and params["medianFiltering"] != 5:
        raise ValueError("tvl1-torch implements medianFiltering 5 (OpenCV's default) or off (<= 1)")
    i1x, i1y = centered_gradient(i1)
    p = torch.zeros((2, 2, b, h, w), dtype=i0.dtype, device=i0.device)
    for _ in range(params["warps"]):
        data = _data_term(i0, i1, i1x, i1y, u)
        idx = torch.arange(b, device=i0.device)  # the pairs still iterating in this warp
        sub_u, sub_p, sub_data = u, p, data
        for _ in range(params["outerIterations"]):
            if len(idx) == 0:
                break
            if median:
                sub_u = _median(sub_u)
            for _ in range(params["innerIterations"]):
                sub_u, sub_p, error = primal_dual_step(sub_data, sub_u, sub_p, l_t, theta, taut)
                going = error > eps
                if not bool(going.all()):  # some pairs converged: store everyone, go on with the rest
                    u, p = u.index_copy(1, idx, sub_u), p.index_copy(2, idx, sub_p)
                    keep = going.nonzero().squeeze(1)
                    idx = idx.index_select(0, keep)
                    sub_u, sub_p, sub_data = sub_u.index_select(1, keep), sub_p.index_select(2, keep), sub_data.take(keep)
                    if len(idx) == 0:
                        break
        if len(idx):
            u, p = u.index_copy(1, idx, sub_u), p.index_copy(2, idx, sub_p)
    return u


def tvl1(i0: torch.Tensor, i1: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
    """TV-L1 flow from ``i0`` to ``i1``: ``(B, H, W)`` float32 intensities in [0, 255] -> ``(B, H, W, 2)``
    float32 flow in px, channel 0 = u (x), 1 = v (y), OpenCV's convention (``prev(y, x) ~ next(y+v, x+u)``)."""
    if params["gamma"] != 0:
        raise ValueError("tvl1-torch implements gamma = 0 (no illumination term), as in TVL1_PARAMS")
    if params.get("useInitialFlow"):
        raise ValueError("tvl1-torch starts from zero flow (useInitialFlow False)")
    if i0.shape != i1.shape or i0.ndim != 3:
        raise ValueError(f"expected two (B, H, W) batches of the same shape, got {tuple(i0.shape)}, {tuple(i1.shape)}")
    if min(i0.shape[1:]) < 3:
        raise ValueError(f"frames must be at least 3x3 px, got {i0.shape[1]}x{i0.shape[2]}")
    step = float(params["scaleStep"])
    sizes = pyramid_sizes(i0.shape[1], i0.shape[2], int(params["nscales"]), step)
    pyramid = [torch.stack([i0, i1])]  # (2, B, H, W) per level: I0 and I1 resized together
    for size in sizes[1:]:
        pyramid.append(resize_linear(pyramid[-1], size, (1 / step, 1 / step)))
    u = torch.zeros_like(pyramid[-1])  # (u1, u2): (2, B, h, w) at the coarsest level
    for s in range(len(sizes) - 1, -1, -1):
        u = _one_scale(pyramid[s][0], pyramid[s][1], u, params)
        if s == 0:
            break
        u = resize_linear(u, sizes[s - 1]) * float(np.float32(1 / step))
    return u.permute(1, 2, 3, 0).contiguous()


# ---------------------------------------------------------------------------------------------- estimator


class TorchTVL1:
    """Batched TV-L1 on one device: ``estimator.video_flow(gray)`` for a whole video.

    ``batch`` is the most pairs per call (None: `CPU_BATCH` on the CPU, as many as the free memory allows
    on a GPU); it is further capped from the frame size and this process's share (``1 / processes``) of
    the device's free memory when a video comes (`max_batch`).  ``threads`` sets torch's intra-op threads
    on the CPU (None: leave torch's setting).
    """

    def __init__(self, params: dict[str, Any], device: str = "auto", batch: int | None = None,
                 threads: int | None = None, processes: int = 1) -> None:
        if batch is not None and batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        self.params = dict(params)
        self.device = resolve_device(device)
        self.batch = batch
        self.processes = max(1, processes)
        if threads is not None and self.device.type == "cpu":
            torch.set_num_threads(threads)

    def batch_size(self, height: int, width: int) -> int:
        cap = max_batch(height, width, free_memory(self.device) // self.processes)
        wanted = self.batch if self.batch is not None else CPU_BATCH if self.device.type == "cpu" else cap
        return min(wanted, cap)

    def batches(self, n_pairs: int, height: int, width: int) -> list[range]:
        """Consecutive ranges of pair indices, each at most `batch_size` long, in order."""
        size = self.batch_size(height, width)
        n_batches = math.ceil(n_pairs / size)
        return [range(k * size, min(n_pairs, (k + 1) * size)) for k in range(n_batches)]

    @torch.inference_mode()
    def video_flow(self, gray: np.ndarray) -> np.ndarray:
        """``(N, H, W)`` uint8 frames -> ``(N - 1, H, W, 2)`` float32 flow of the consecutive pairs."""
        if gray.ndim != 3 or len(gray) < 2:
            raise ValueError(f"expected (N, H, W) frames with N >= 2, got shape {gray.shape}")
        n, h, w = gray.shape
        frames = torch.from_numpy(np.ascontiguousarray(gray))
        out = np.empty((n - 1, h, w, 2), dtype=np.float32)
        batches = self.batches(n - 1, h, w)
        log.debug("tvl1-torch: %d pairs of %dx%d on %s in %d batches of <= %d", n - 1, h, w, self.device,
                  len(batches), len(batches[0]))
        for r in batches:
            # frames r.start .. r.stop of the video: the pairs (t, t + 1) for t in r
            chunk = frames[r.start:r.stop + 1].to(self.device, torch.float32)
            out[r.start:r.stop] = tvl1(chunk[:-1], chunk[1:], self.params).cpu().numpy()
        return out

    def __call__(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        """One pair, ``(H, W)`` uint8 each -> ``(H, W, 2)`` float32 (the FlowEstimator interface)."""
        return self.video_flow(np.stack([prev, nxt]))[0]

    def __repr__(self) -> str:
        return f"TorchTVL1(device={self.device}, batch={self.batch})"
