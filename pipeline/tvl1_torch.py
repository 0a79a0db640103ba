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
pairs only: the eager code gathers them into a smaller batch when some converge, the fused path (below:
compiled kernels, static shapes) leaves the converged ones unchanged, bit for bit.  Either way every pair
goes through exactly the arithmetic it would go through alone, so a pair's flow does not depend on the batch
it was computed in (only element-wise operations and per-pair reductions; the square root, ATen's, gives
the same value for a value wherever it sits).  ``gamma`` (the illumination term) must be 0, as in
``TVL1_PARAMS``.

Two paths compute this: the eager torch operations (``tvl1(..., fused=False)``, about 30 operations over
whole planes per iteration and a host sync per iteration for the stopping rule) and the fused path
(``fused=True``, the default of `TorchTVL1` and of ``iic-prep flow``): the iteration and the median filter
compiled by TorchInductor into a few kernels per level shape, the stopping rule checked on the device and
read every `CHECK_EVERY` iterations.  Both give the same flow (see "fused path" below).

Parallelism.  On the CPU the flow stage runs ``--workers`` processes with ONE torch thread each, every
process taking whole videos (as for the OpenCV methods), not one process with ``--workers`` torch threads:
torch's threads meet at a barrier after every operation (~60 per eager iteration, a few per fused one), so
one descheduled thread stalls them all, and on a shared machine (this one: 2 cores, load 2.6-4) two torch
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
import time
from collections.abc import Callable
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
    "CHECK_EVERY",
    "TorchTVL1",
    "fused_unavailable",
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
# Default batch on the CPU: small, so that a batch's planes stay in the cache, and one compiled shape per
# frame size. At 128x171, one thread, CPU time against OpenCV's tvl1 on the same 24 pairs just before: fused
# 3.10x at batch 1, 3.44x at 2, 3.48x at 4 (eager: 1.09x at batch 1, 1.22x at 2, 1.19x at 4, 0.98x at 8,
# 0.76x at 24; BENCHMARKS.md).
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
        raise FlowDeviceError(
            f"--device {device}: CUDA is not available to this torch {torch.__version__} "
            "(CPU build or no GPU); use --device cpu or auto"
        )
    if dev.type not in ("cpu", "cuda"):
        raise FlowDeviceError(f"--device {device}: only cpu, cuda and auto are supported")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise FlowDeviceError(f"--device {device}: there are {torch.cuda.device_count()} CUDA devices")
    return dev


def free_memory(device: torch.device) -> int:
    """Free bytes on ``device``: for CUDA ``cudaMemGetInfo`` plus PyTorch's cached but unused memory, for the
    CPU MemAvailable of /proc/meminfo."""
    if device.type == "cuda":
        # what PyTorch's caching allocator holds but does not use is free for this process, though not for
        # cudaMemGetInfo: without it the batch would shrink after the first video
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(torch.cuda.mem_get_info(device)[0] + cached)
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


def resize_linear(
    x: torch.Tensor, size: tuple[int, int], scale: tuple[float, float] | None = None
) -> torch.Tensor:
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


def forward_gradient(
    u: torch.Tensor, ux: torch.Tensor | None = None, uy: torch.Tensor | None = None
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
    pair_offset = (torch.arange(b, device=dev) * (hp * wp))[:, None, None]
    rows = [((iy + (i - 1)).clamp(-pad, h - 1 + pad) + pad) * wp + pair_offset for i in range(4)]
    flat = F.pad(imgs, (pad, pad, pad, pad)).reshape(k, -1)
    acc = None
    for i in range(4):
        row = None
        for j in range(4):
            # index_select: 6x faster than []
            tap = flat.index_select(1, (rows[i] + cols[j]).reshape(-1)).reshape(k, b, h, w)
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


@functools.cache
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
    values: dict[int, torch.Tensor] = {
        5 * i + j: padded[:, i : i + h, j : j + w] for i in range(5) for j in range(5)
    }
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
        return _Data(
            self.grad.index_select(1, idx),
            self.rho_c.index_select(0, idx),
            self.neg_grad.index_select(0, idx),
        )


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


def _data_term(
    i0: torch.Tensor, i1: torch.Tensor, i1x: torch.Tensor, i1y: torch.Tensor, u: torch.Tensor
) -> _Data:
    i1w, i1wx, i1wy = warp_cubic(torch.stack([i1, i1x, i1y]), u[0], u[1])
    grad = i1wx * i1wx + i1wy * i1wy
    rho_c = i1w - i1wx * u[0] - i1wy * u[1] - i0
    return _Data(torch.stack([i1wx, i1wy]), rho_c, torch.where(grad > _FLT_EPSILON, -grad, -1.0))


def _median(u: torch.Tensor) -> torch.Tensor:
    two, b, h, w = u.shape
    return median5(u.reshape(two * b, h, w)).reshape(two, b, h, w)


def _constants(params: dict[str, Any], h: int, w: int) -> tuple[float, float, float, float]:
    """(lambda * theta, theta, tau / theta, epsilon^2 * H * W) of a level, rounded to float32 as OpenCV's."""
    f32 = lambda x: float(np.float32(x))  # noqa: E731
    lam, theta, tau = params["lambda"], params["theta"], params["tau"]
    return f32(lam * theta), f32(theta), f32(tau / theta), f32(params["epsilon"] ** 2 * h * w)


def _one_scale(i0: torch.Tensor, i1: torch.Tensor, u: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
    """Refine the flow ``u`` ``(2, B, H, W)`` of one pyramid level (OpenCV's procOneScale) for every pair."""
    b, h, w = i0.shape
    l_t, theta, taut, eps = _constants(params, h, w)
    median = params["medianFiltering"] > 1
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
                    sub_u, sub_p = sub_u.index_select(1, keep), sub_p.index_select(2, keep)
                    sub_data = sub_data.take(keep)
                    if len(idx) == 0:
                        break
        if len(idx):
            u, p = u.index_copy(1, idx, sub_u), p.index_copy(2, idx, sub_p)
    return u


def tvl1(i0: torch.Tensor, i1: torch.Tensor, params: dict[str, Any], fused: bool = False) -> torch.Tensor:
    """TV-L1 flow from ``i0`` to ``i1``: ``(B, H, W)`` float32 intensities in [0, 255] -> ``(B, H, W, 2)``
    float32 flow in px, channel 0 = u (x), 1 = v (y), OpenCV's convention (``prev(y, x) ~ next(y+v, x+u)``).

    ``fused``: the iterations as compiled kernels (see "fused path" below; compiled on the first call for a
    frame size and batch, then cached for the process); otherwise eager torch operations."""
    if params["gamma"] != 0:
        raise ValueError("tvl1-torch implements gamma = 0 (no illumination term), as in TVL1_PARAMS")
    if params.get("useInitialFlow"):
        raise ValueError("tvl1-torch starts from zero flow (useInitialFlow False)")
    if params["medianFiltering"] > 1 and params["medianFiltering"] != 5:
        raise ValueError("tvl1-torch implements medianFiltering 5 (OpenCV's default) or off (<= 1)")
    if i0.shape != i1.shape or i0.ndim != 3:
        raise ValueError(
            f"expected two (B, H, W) batches of the same shape, got {tuple(i0.shape)}, {tuple(i1.shape)}"
        )
    if min(i0.shape[1:]) < 3:
        raise ValueError(f"frames must be at least 3x3 px, got {i0.shape[1]}x{i0.shape[2]}")
    step = float(params["scaleStep"])
    sizes = pyramid_sizes(i0.shape[1], i0.shape[2], int(params["nscales"]), step)
    pyramid = [torch.stack([i0, i1])]  # (2, B, H, W) per level: I0 and I1 resized together
    for size in sizes[1:]:
        pyramid.append(resize_linear(pyramid[-1], size, (1 / step, 1 / step)))
    u = torch.zeros_like(pyramid[-1])  # (u1, u2): (2, B, h, w) at the coarsest level
    one_scale = _one_scale_fused if fused else _one_scale
    for s in range(len(sizes) - 1, -1, -1):
        u = one_scale(pyramid[s][0], pyramid[s][1], u, params)
        if s == 0:
            break
        u = resize_linear(u, sizes[s - 1]) * float(np.float32(1 / step))
    return u.permute(1, 2, 3, 0).contiguous()


# ---------------------------------------------------------------------------------------------- fused path
#
# The same iterations as compiled code.  TorchInductor (vectorised C++ on the CPU, Triton on CUDA) compiles
# two graphs per pyramid level shape (B, H, W), every shape static: one primal-dual iteration, and the median
# filter's selection network.  The iteration becomes two passes over the planes (the new flow, from the data
# term and the divergence of p; then p from the gradient of that flow, with the per-pair error as a reduction
# in the same pass) and a tiny one for the flags; on the CPU the square root runs in ATen between the two
# (`_aten_sqrt`).  The warp with its data term stays eager, once per warp: compiled, its gathers were slower
# than ATen's ``index_select``.  Each graph is traced once (``make_fx``) and compiled by Inductor directly,
# without Dynamo: no guards on the calls, no recompilation limit; `_FUSED_LEVELS` keeps one compiled
# function per shape for the process, Inductor's on-disk cache keeps the code across processes.
#
# Stopping rule.  Each pair carries a flag ``going`` on the device; an iteration updates only the pairs still
# going (``where``: the others keep their values bit for bit) and clears the flag of a pair whose update was
# at most epsilon, so every pair runs exactly OpenCV's number of iterations per warp, however often the host
# looks.  The host reads the flags every `CHECK_EVERY` iterations (one device sync) and ends the warp when
# no pair is going: the iterations in between cost time, never a change of the flow.  The arithmetic is the
# eager path's, operation for operation (same order, no contraction into fused multiply-adds, ATen's square
# root on the CPU); only the error sums add in another order, which can matter only where an error is within
# rounding of epsilon: the flows of the two paths agree to 0.0000 px (tests, BENCHMARKS.md).
#
# Layout.  Each plane of a pair, ``H x W``, is held flat with ``W`` zeros before and after it, ``(B, L)``
# with ``L = H * W + 2 * W``, so that the neighbours a stencil reads (x - 1, y - 1, x + 1, y + 1) are plain
# shifted loads, without the bounds masks that make compiled stencils slow.  Across the edge of the image
# such a load reads the next row or the margin, where the iteration either multiplies it by 0 (the forward
# differences of the last column / row) or finds exactly 0 (the x part of p is 0 on the last column and its
# y part on the last row: they start at 0 and the forward difference there is 0).  The kernels write their
# results in place into a second set of buffers (then the two swap), never touching the margins.

CHECK_EVERY = 5  # inner iterations between two looks of the host at the stopping rule (30 = 6 x 5)
_FUSED_LEVELS: dict[tuple, _FusedLevel] = {}  # compiled once per level shape, device and parameters
_FUSED_REFUSED: dict[str, str] = {}  # device type -> why the fused path cannot run there (said once)


def fused_unavailable(device: torch.device) -> str | None:
    """Why the fused path cannot run on ``device`` (no C++ compiler for the CPU, no Triton for CUDA); None
    if it can."""
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "Triton is not installed"
    from torch._inductor.cpp_builder import get_cpp_compiler
    from torch._inductor.exc import InvalidCxxCompiler

    try:
        get_cpp_compiler()
    except InvalidCxxCompiler as err:
        return f"no C++ compiler ({_first_line(err)})"
    return None


def _fallback(device: torch.device, reason: str, level: int = logging.DEBUG) -> None:
    """Use the eager code on this device type from now on; said once per process."""
    if device.type not in _FUSED_REFUSED:
        _FUSED_REFUSED[device.type] = reason
        log.log(level, "tvl1-torch: no fused kernels on %s, using the eager code: %s", device.type, reason)


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


@dataclass(frozen=True)
class _Level:
    """The layout of one level's planes in the fused path (see "Layout" above): ``b`` pairs, each plane
    ``h x w`` flattened with ``w`` values of margin before and after it; ``k`` such planes per buffer,
    ``(k, b, w + h * w + w)``."""

    b: int
    h: int
    w: int

    @property
    def hw(self) -> int:
        return self.h * self.w

    def inner(self, buf: torch.Tensor) -> torch.Tensor:
        """The ``(..., b, h, w)`` view of the pixels of padded planes."""
        return buf[..., self.w : self.w + self.hw].unflatten(-1, (self.h, self.w))

    def buffer(self, k: int, device: torch.device) -> torch.Tensor:
        return torch.zeros((k, self.b, self.hw + 2 * self.w), dtype=torch.float32, device=device)


@functools.cache
def _aten_sqrt():
    """ATen's float square root as an operator that TorchInductor calls instead of generating its own.

    On the CPU ATen's (MKL's) is not always correctly rounded, 1 ulp off for about 16 % of the values, while
    the generated code's is; ``ng`` of every iteration goes through it, so the two would drift apart by
    0.01-0.02 px (mean EPE at 48x64; the stopping rule amplifies a 1 ulp difference).  With ATen's square root
    the fused path computes what the eager one does, to the order of the error sums."""
    try:
        return torch.ops.iic_tvl1.sqrt.default
    except (AttributeError, RuntimeError):  # not registered yet in this process
        lib = torch.library.Library("iic_tvl1", "DEF")
        lib.define("sqrt(Tensor x) -> Tensor")
        lib.impl("sqrt", torch.ops.aten.sqrt.default, "CPU")
        lib.impl("sqrt", lambda x: torch.empty_like(x), "Meta")
        _LIBRARIES.append(lib)  # registered for as long as it lives
        return torch.ops.iic_tvl1.sqrt.default


_LIBRARIES: list = []


def _iteration_graph(lv: _Level, l_t: float, theta: float, taut: float, eps: float, aten_sqrt: bool):
    """One primal-dual iteration (`primal_dual_step`: the same operations in the same order) of the pairs
    still going, on padded planes (`_Level`): ``data`` ``(4, B, L)`` = g1, g2, rho_c, neg_grad;
    ``masks`` ``(2, H * W)`` = 1 except on the last column / row (0), whole planes so that every load is
    contiguous; ``u1, u2`` and ``p11, p12, p21, p22``, each ``(B, L)``.  Reads u, p and writes the new
    values into ``o1 .. o22``, ``iters + going`` into ``iters_out``; returns the new flags.  (One tensor
    per plane: the stores of the last pass then go straight into them; several iterations in one graph
    compile to copies of whole buffers between them.)"""
    hw, w = lv.hw, lv.w

    def at(x: torch.Tensor, shift: int = 0, length: int = hw) -> torch.Tensor:  # x[..., i + shift], pixels i
        return x[..., w + shift : w + shift + length]

    def step(data, masks, going, iters, u1, u2, p11, p12, p21, p22, o1, o2, o11, o12, o21, o22, iters_out):
        u, p, u_out, p_out = (u1, u2), (p11, p12, p21, p22), (o1, o2), (o11, o12, o21, o22)
        col, row = masks[0], masks[1]
        keep = going[:, None]
        k = hw + w  # the pixels and the margin after them, which the forward differences of the last row read
        rho = at(data[0], 0, k) * at(u[0], 0, k) + at(data[1], 0, k) * at(u[1], 0, k) + at(data[2], 0, k)
        fi = (rho / at(data[3], 0, k)).clamp(-l_t, l_t)
        grads = []
        for c in range(2):
            px, py = p[2 * c], p[2 * c + 1]
            v = at(data[c], 0, k) * fi + at(u[c], 0, k)
            div = (at(px, 0, k) - at(px, -1, k)) + (at(py, 0, k) - at(py, -w, k))
            nu = div * theta + v  # (B, H * W + W): u after this iteration, and the margin
            gx = (nu[:, 1 : hw + 1] - nu[:, :hw]) * col
            gy = (nu[:, w : hw + w] - nu[:, :hw]) * row
            grads.append((nu, gx, gy))
        if aten_sqrt:  # one call for both components
            norms = _aten_sqrt()(torch.stack([gx * gx + gy * gy for _, gx, gy in grads]))
        else:
            norms = [torch.sqrt(gx * gx + gy * gy) for _, gx, gy in grads]
        error = None
        for c, (nu, gx, gy) in enumerate(grads):
            px, py = p[2 * c], p[2 * c + 1]
            ng = norms[c] * taut + 1.0
            old_u, old_x, old_y = at(u[c]), at(px), at(py)
            new_u = torch.where(keep, nu[:, :hw], old_u)
            at(u_out[c]).copy_(new_u)
            at(p_out[2 * c]).copy_(torch.where(keep, (gx * taut + old_x) / ng, old_x))
            at(p_out[2 * c + 1]).copy_(torch.where(keep, (gy * taut + old_y) / ng, old_y))
            d = new_u - old_u
            error = d * d if error is None else error + d * d
        iters_out.copy_(iters + going.to(iters.dtype))
        return going & (error.sum(1) > eps)  # error: 0 for the pairs not going

    return step


def _median_graph(lv: _Level):
    """`median5` of ``padded`` ``(2B, H + 4, W + 4)`` (both flow components, borders replicated:
    `_median_into`) -> ``(2B, H, W)``.  The result is a fresh buffer: stored into the flow's planes from
    the same graph, the network's intermediate values would each become a plane in memory."""
    h, w = lv.h, lv.w
    ops, out = _selection_network(25, 12)

    def step(padded):
        values = {5 * i + j: padded[:, i : i + h, j : j + w] for i in range(5) for j in range(5)}
        for kind, v, a, z in ops:
            values[v] = (torch.minimum if kind == "min" else torch.maximum)(values[a], values[z])
        return values[out]

    return step


def _median_into(
    kl: _FusedLevel, going: torch.Tensor, u: list[torch.Tensor], out: list[torch.Tensor]
) -> None:
    """The median filter of the flow ``u`` (2 planes ``(B, L)``) of the pairs still going into ``out``, the
    others copied."""
    lv = kl.lv
    flow = torch.cat([lv.inner(u[0]), lv.inner(u[1])])  # (2B, H, W)
    median = kl.median(F.pad(flow[:, None], (2, 2, 2, 2), mode="replicate")[:, 0])
    keep = going[:, None, None]
    for c in range(2):
        pairs = slice(c * lv.b, (c + 1) * lv.b)
        torch.where(keep, median[pairs], flow[pairs], out=lv.inner(out[c]))


def _compile(fn, example: list[torch.Tensor]):
    """``fn`` traced on ``example`` (its shapes become static) and compiled by TorchInductor: no guards and no
    recompilation (the caller keeps one compiled function per shape), no size checks on the calls."""
    from torch._guards import TracingContext, tracing
    from torch._inductor import compile as inductor_compile
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    # A shape environment lets Inductor keep the compiled code in its on-disk cache; the inputs, made fake
    # here with static shapes, keep it from turning the sizes into symbols.
    fake = FakeTensorMode(allow_non_fake_inputs=True, shape_env=ShapeEnv())
    with torch.inference_mode(False), torch.no_grad(), tracing(TracingContext(fake)):
        example = [x.clone() for x in example]  # distinct tensors, none of them an inference tensor
        graph = make_fx(fn)(*example)
        static = [fake.from_tensor(x, static_shapes=True) for x in example]
        return inductor_compile(graph, static, options={"size_asserts": False})


class _FusedLevel:
    """The compiled kernels of one level shape (B, H, W) on one device, for the constants of `_constants`:
    ``median(padded) -> median`` and ``iteration(data, masks, going, iters, u1, u2, p11, p12, p21, p22,
    o1, o2, o11, o12, o21, o22, iters_out) -> going`` (`_median_graph`, `_iteration_graph`)."""

    def __init__(self, lv: _Level, device: torch.device, l_t: float, theta: float, taut: float, eps: float):
        self.lv = lv
        t0 = time.perf_counter()
        with torch.inference_mode(False):
            self.masks = torch.ones(2, lv.h, lv.w, device=device)
            self.masks[0, :, -1] = 0.0  # col: the forward difference along x is 0 on the last column
            self.masks[1, -1, :] = 0.0  # row: along y, on the last row
            self.masks = self.masks.view(2, lv.hw)
        going = torch.ones(lv.b, dtype=torch.bool, device=device)
        iters = torch.zeros(lv.b, dtype=torch.int32, device=device)
        plane = lv.buffer(1, device)[0]
        aten_sqrt = device.type == "cpu"  # CUDA's square root is correctly rounded in ATen too
        self.iteration = _compile(
            _iteration_graph(lv, l_t, theta, taut, eps, aten_sqrt),
            [lv.buffer(4, device), self.masks, going, iters, *[plane] * 12, iters],
        )
        padded = torch.zeros(2 * lv.b, lv.h + 4, lv.w + 4, device=device)
        self.median = _compile(_median_graph(lv), [padded])
        self.seconds = time.perf_counter() - t0


def _fused_level(b: int, h: int, w: int, device: torch.device, params: dict[str, Any]) -> _FusedLevel:
    """The kernels of a level shape: compiled on first use, then from the process's cache."""
    consts = _constants(params, h, w)
    key = (str(device), b, h, w, consts)
    if key not in _FUSED_LEVELS:
        _FUSED_LEVELS[key] = _FusedLevel(_Level(b, h, w), device, *consts)
        log.debug(
            "tvl1-torch: compiled the kernels of %dx%dx%d on %s in %.1f s",
            b,
            h,
            w,
            device,
            _FUSED_LEVELS[key].seconds,
        )
    return _FUSED_LEVELS[key]


class _FusedState:
    """One level's working buffers (`_Level`): the flow ``u`` (2 planes ``(B, L)``) and dual variable ``p``
    (4) that the next kernel reads, the ones it writes (``u_next``, ``p_next``), the data term ``(4, B, L)``
    and the inner iterations applied so far to each pair (``iters``, ``iters_next``)."""

    def __init__(self, lv: _Level, u: torch.Tensor) -> None:
        dev = u.device
        self.u, self.u_next = list(lv.buffer(2, dev)), list(lv.buffer(2, dev))
        self.p, self.p_next = list(lv.buffer(4, dev)), list(lv.buffer(4, dev))
        lv.inner(self.u[0]).copy_(u[0])
        lv.inner(self.u[1]).copy_(u[1])
        self.data = lv.buffer(4, dev)
        self.data[3] = -1.0  # neg_grad: the margins must not divide by zero
        self.iters, self.iters_next = (torch.zeros(lv.b, dtype=torch.int32, device=dev) for _ in range(2))

    def flow(self, lv: _Level) -> torch.Tensor:
        """``(2, B, H, W)``: the current flow."""
        return torch.stack([lv.inner(self.u[0]), lv.inner(self.u[1])])

    def swap(self) -> None:
        """After an iteration: what it wrote is what the next one reads."""
        self.u, self.u_next, self.p, self.p_next = self.u_next, self.u, self.p_next, self.p
        self.iters, self.iters_next = self.iters_next, self.iters


def _data_into(
    lv: _Level, i0: torch.Tensor, i1: torch.Tensor, i1x: torch.Tensor, i1y: torch.Tensor, st: _FusedState
) -> None:
    """`_data_term` (eager: its gathers compile to slower code than ATen's ``index_select``) into the data
    planes of ``st``: g1, g2, rho_c, neg_grad."""
    data = _data_term(i0, i1, i1x, i1y, st.flow(lv))
    lv.inner(st.data).copy_(torch.stack([data.grad[0], data.grad[1], data.rho_c, data.neg_grad]))


def _fused_warp(kl: _FusedLevel, st: _FusedState, params: dict[str, Any]) -> None:
    """The outer and inner loops of one warp (after `_data_into`), every pair stopping as OpenCV's does."""
    going = torch.ones(kl.lv.b, dtype=torch.bool, device=st.iters.device)
    for _ in range(params["outerIterations"]):
        if params["medianFiltering"] > 1:
            _median_into(kl, going, st.u, st.u_next)
            st.u, st.u_next = st.u_next, st.u
        inner = params["innerIterations"]
        for k in range(inner):
            going = kl.iteration(
                st.data, kl.masks, going, st.iters, *st.u, *st.p, *st.u_next, *st.p_next, st.iters_next
            )
            st.swap()
            if ((k + 1) % CHECK_EVERY == 0 or k + 1 == inner) and not bool(going.any()):
                return  # the only host sync of the loop


def _one_scale_fused(
    i0: torch.Tensor, i1: torch.Tensor, u: torch.Tensor, params: dict[str, Any]
) -> torch.Tensor:
    """`_one_scale` with the compiled kernels: the same arithmetic but for the order of the error sums, and
    for every pair exactly OpenCV's iteration counts."""
    b, h, w = i0.shape
    kl = _fused_level(b, h, w, i0.device, params)
    st = _FusedState(kl.lv, u)
    i1x, i1y = centered_gradient(i1)
    for _ in range(params["warps"]):
        _data_into(kl.lv, i0, i1, i1x, i1y, st)
        _fused_warp(kl, st, params)
    return st.flow(kl.lv)


# ---------------------------------------------------------------------------------------------- estimator


class TorchTVL1:
    """Batched TV-L1 on one device: ``estimator.video_flow(gray)`` for a whole video.

    ``batch`` is the most pairs per call (None: `CPU_BATCH` on the CPU, as many as the free memory allows
    on a GPU); it is further capped from the frame size and this process's share (``1 / processes``) of
    the device's free memory when a video comes (`max_batch`).  ``threads`` sets torch's intra-op threads
    on the CPU (None: leave torch's setting).  ``compile``: the fused path (compiled kernels, see "fused
    path"), falling back to the eager code where it cannot run (`fused_unavailable`); False: the eager code.
    """

    def __init__(
        self,
        params: dict[str, Any],
        device: str = "auto",
        batch: int | None = None,
        threads: int | None = None,
        processes: int = 1,
        compile: bool = True,
    ) -> None:
        if batch is not None and batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        self.params = dict(params)
        self.device = resolve_device(device)
        self.batch = batch
        self.processes = max(1, processes)
        if threads is not None and self.device.type == "cpu":
            torch.set_num_threads(threads)
        self.fused = compile and self._fused_possible()

    def _fused_possible(self) -> bool:
        reason = _FUSED_REFUSED.get(self.device.type) or fused_unavailable(self.device)
        if reason:
            _fallback(self.device, reason)
        return reason is None

    def batch_size(self, height: int, width: int) -> int:
        cap = max_batch(height, width, free_memory(self.device) // self.processes)
        wanted = self.batch if self.batch is not None else CPU_BATCH if self.device.type == "cpu" else cap
        size = min(wanted, cap)
        if self.fused and self.device.type == "cuda":  # a power of two: few compiled shapes (`fused_batch`)
            size = 1 << (size.bit_length() - 1)
        return size

    def batches(self, n_pairs: int, height: int, width: int, size: int | None = None) -> list[range]:
        """Consecutive ranges of pair indices, each at most ``size`` (default: `batch_size`) long, in
        order."""
        size = size or self.batch_size(height, width)
        n_batches = math.ceil(n_pairs / size)
        return [range(k * size, min(n_pairs, (k + 1) * size)) for k in range(n_batches)]

    def fused_batch(self, n: int, size: int) -> int:
        """How many pairs the fused kernels compute for a batch of ``n <= size`` (padded with still pairs):
        the full batch on the CPU, one compiled shape per frame size (its batch is small, so is the waste);
        on CUDA the next power of two, at most log2(size) + 1 shapes and at most twice the work."""
        return size if self.device.type == "cpu" else min(size, 1 << (n - 1).bit_length())

    def prepare(self, height: int, width: int) -> float:
        """Compile the fused kernels for ``height x width`` frames and this estimator's batch now (else the
        first video of that size does); returns the seconds spent (about 0 when they were compiled already
        in this process, or there is no fused path)."""
        t0 = time.perf_counter()
        if self.fused:
            b = self.batch_size(height, width)
            sizes = pyramid_sizes(height, width, int(self.params["nscales"]), float(self.params["scaleStep"]))
            self._fused_or_eager(lambda: [_fused_level(b, h, w, self.device, self.params) for h, w in sizes])
        return time.perf_counter() - t0

    def _fused_or_eager(self, fused: Callable[[], Any], eager: Callable[[], Any] | None = None) -> Any:
        """``fused()``; if compiling fails (a compiler was found, yet it failed): the eager code from now
        on (``eager()``)."""
        from torch._inductor.exc import InductorError

        try:
            return fused()
        except InductorError as err:
            _fallback(self.device, f"compiling failed: {_first_line(err)}", logging.WARNING)
            self.fused = False
            return eager() if eager is not None else None

    def _flow(self, i0: torch.Tensor, i1: torch.Tensor) -> torch.Tensor:
        eager = lambda: tvl1(i0, i1, self.params)  # noqa: E731
        if self.fused:
            return self._fused_or_eager(lambda: tvl1(i0, i1, self.params, fused=True), eager)
        return eager()

    @torch.inference_mode()
    def video_flow(self, gray: np.ndarray) -> np.ndarray:
        """``(N, H, W)`` uint8 frames -> ``(N - 1, H, W, 2)`` float32 flow of the consecutive pairs."""
        if gray.ndim != 3 or len(gray) < 2:
            raise ValueError(f"expected (N, H, W) frames with N >= 2, got shape {gray.shape}")
        n, h, w = gray.shape
        frames = torch.from_numpy(np.ascontiguousarray(gray))
        out = np.empty((n - 1, h, w, 2), dtype=np.float32)
        size = self.batch_size(h, w)
        batches = self.batches(n - 1, h, w, size)
        log.debug(
            "tvl1-torch: %d pairs of %dx%d on %s in %d batches of <= %d (%s)",
            n - 1,
            h,
            w,
            self.device,
            len(batches),
            size,
            "fused" if self.fused else "eager",
        )
        for r in batches:
            # frames r.start .. r.stop of the video: the pairs (t, t + 1) for t in r
            chunk = frames[r.start : r.stop + 1].to(self.device, torch.float32)
            i0, i1 = chunk[:-1], chunk[1:]
            if self.fused and len(r) < self.fused_batch(len(r), size):
                still = torch.zeros((self.fused_batch(len(r), size) - len(r), h, w), device=self.device)
                i0, i1 = torch.cat([i0, still]), torch.cat([i1, still])  # a pair's flow ignores the others
            out[r.start : r.stop] = self._flow(i0, i1)[: len(r)].cpu().numpy()
        return out

    def __call__(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        """One pair, ``(H, W)`` uint8 each -> ``(H, W, 2)`` float32 (the FlowEstimator interface)."""
        return self.video_flow(np.stack([prev, nxt]))[0]

    def __repr__(self) -> str:
        return f"TorchTVL1(device={self.device}, batch={self.batch}, fused={self.fused})"
