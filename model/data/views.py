"""What an encoder sees: the 3-channel input of each view, made from the augmented float clips of
model/data/augment.py (``(B, C, T, h, w)`` per modality, ranges in its docstring)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..config import VIEWS


def residual_input(res: Tensor) -> Tensor:
    """Map a residual in [-1, 1] to the encoder's [0, 1] input: ``(res + 1) / 2``.

    This is the official IIC input, ``(x - roll(x) + 1) / 2`` on [0, 1] clips, minus its wrap-around
    first frame (ours is 0.5 = no change).
    """
    return (res + 1.0) / 2.0


def view_input(views: dict[str, Tensor], view: str) -> Tensor:
    """3-channel encoder input ``(B, 3, T, h, w)`` in [0, 1] for one view, so one shared encoder
    handles every view (the official code fed all views as [0, 1] images, no mean/std normalisation).

    * ``rgb``, ``rgb-stable`` (the clip stabilised on its middle frame): unchanged.  ``res``, ``res-aligned``,
      ``res-stable`` (the residuals after the camera's motion): :func:`residual_input`.
    * ``flow-u`` / ``flow-v``: that component mapped by ``(f + 1) / 2`` and replicated to 3 channels
      (IIC's flow view; 0.5 = no motion).
    * ``flow``: ``(u + 1) / 2``, ``(v + 1) / 2`` and the magnitude ``sqrt(u^2 + v^2) / sqrt(2)`` as third
      channel: unlike a zero channel it carries signal, and it is flip-invariant.
    """
    if view in ("rgb", "rgb-stable"):
        return views[view]
    if view in ("res", "res-aligned", "res-stable"):
        return residual_input(views[view])
    if view == "flow-u" or view == "flow-v":
        f = views["flow"][:, 0 if view == "flow-u" else 1]
        return ((f + 1.0) / 2.0).unsqueeze(1).expand(-1, 3, -1, -1, -1)
    if view == "flow":
        f = views["flow"]
        mag = f.pow(2).sum(1, keepdim=True).sqrt() / 2**0.5
        return torch.cat([(f + 1.0) / 2.0, mag], dim=1)
    raise ValueError(f"unknown view {view!r}; expected one of {VIEWS}")
