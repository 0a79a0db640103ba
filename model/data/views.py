"""What an encoder sees: the 3-channel input of each view, made from the augmented float clips of
model/data/augment.py (``(B, C, T, h, w)`` per modality, ranges in its docstring)."""

from __future__ import annotations

import torch
from torch import Tensor

from ...pipeline.reader import FLOW_FIT_INLIER, FLOW_FIT_ROUNDS
from ..config import FLOW_ALIGNED, FLOW_COMPONENTS, VIEWS


def residual_input(res: Tensor) -> Tensor:
    """Map a residual in [-1, 1] to the encoder's [0, 1] input: ``(res + 1) / 2``.

    This is the official IIC input, ``(x - roll(x) + 1) / 2`` on [0, 1] clips, minus its wrap-around
    first frame (ours is 0.5 = no change).
    """
    return (res + 1.0) / 2.0


def camera_flow(flow: Tensor, rounds: int = FLOW_FIT_ROUNDS, inlier: float = FLOW_FIT_INLIER) -> Tensor:
    """The camera's part of a flow field: per sample and frame, the affine field ``f(x, y) = a + B (x, y)``
    that fits ``flow`` (B, 2, T, h, w) robustly, by least squares over the pixels, refitted ``rounds`` times on
    the pixels within ``inlier`` times the median distance of the fit (the moving objects drop out).

    An affine field is what a camera's pan, shake, zoom and roll make of a (distant) scene: translation,
    scale and rotation, as dense trajectories remove it (Wang & Schmid, ICCV 2013, from a homography fitted
    to matches); fitted to the flow itself it needs no estimate of the camera's motion. The constants are the
    pipeline's (pipeline/format.py: `iic-prep show` draws the same field with numpy).
    """
    B, _, T, h, w = flow.shape
    f = flow.permute(0, 2, 3, 4, 1).reshape(B, T, h * w, 2).to(torch.float32)
    ys, xs = torch.meshgrid(
        torch.linspace(-1, 1, h, device=f.device), torch.linspace(-1, 1, w, device=f.device), indexing="ij"
    )
    X = torch.stack([torch.ones_like(xs), xs, ys], dim=-1).reshape(1, 1, h * w, 3)
    weight = torch.ones(B, T, h * w, 1, device=f.device)
    ridge = 1e-6 * torch.eye(3, device=f.device)
    for _ in range(rounds + 1):
        Xw = X * weight
        beta = torch.linalg.solve(Xw.transpose(-1, -2) @ X + ridge, Xw.transpose(-1, -2) @ f)  # (B, T, 3, 2)
        fitted = X @ beta
        distance = (f - fitted).norm(dim=-1, keepdim=True)  # (B, T, N, 1)
        scale = distance.median(dim=2, keepdim=True).values.clamp(min=1e-6)
        weight = (distance <= inlier * scale).to(f.dtype)
    return fitted.reshape(B, T, h, w, 2).permute(0, 4, 1, 2, 3).to(flow.dtype)


def view_input(views: dict[str, Tensor], view: str) -> Tensor:
    """3-channel encoder input ``(B, 3, T, h, w)`` in [0, 1] for one view, so one shared encoder
    handles every view (the official code fed all views as [0, 1] images, no mean/std normalisation).

    * ``rgb``, ``rgb-stable`` (the clip stabilised on its middle frame): unchanged.  ``res``, ``res-aligned``,
      ``res-stable`` (the residuals after the camera's motion): :func:`residual_input`.
    * ``flow-u`` / ``flow-v``: that component mapped by ``(f + 1) / 2`` and replicated to 3 channels
      (IIC's flow view; 0.5 = no motion).
    * ``flow``: ``(u + 1) / 2``, ``(v + 1) / 2`` and the magnitude ``sqrt(u^2 + v^2) / sqrt(2)`` as third
      channel: unlike a zero channel it carries signal, and it is flip-invariant.
    * ``flow-u-aligned`` / ``flow-v-aligned``: as ``flow-u`` / ``flow-v`` after the camera's part of the flow
      (`camera_flow`, fitted on the crop) is subtracted: what moves in the scene, clamped to the bound.
    """
    if view in ("rgb", "rgb-stable"):
        return views[view]
    if view in ("res", "res-aligned", "res-stable"):
        return residual_input(views[view])
    if view in FLOW_COMPONENTS or view in FLOW_ALIGNED:
        f = views["flow"]
        if view in FLOW_ALIGNED:
            f = (f - camera_flow(f)).clamp_(-1.0, 1.0)
        f = f[:, 0 if view.startswith("flow-u") else 1]
        return ((f + 1.0) / 2.0).unsqueeze(1).expand(-1, 3, -1, -1, -1)
    if view == "flow":
        f = views["flow"]
        mag = f.pow(2).sum(1, keepdim=True).sqrt() / 2**0.5
        return torch.cat([(f + 1.0) / 2.0, mag], dim=1)
    raise ValueError(f"unknown view {view!r}; expected one of {VIEWS}")
