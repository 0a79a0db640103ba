"""The one vocabulary of what a clip is made of: stored modalities and the encoder views built from them.

A *modality* is what the loader reads from the shards (``rgb`` and ``res`` from the frames shard, ``flow``
from the flow shard); a *view* is what an encoder sees (model/augment.py: ``view_input``). Every other
module takes its names and the view -> modality mapping from here.
"""
from __future__ import annotations

from collections.abc import Iterable

MODALITIES = ("rgb", "res", "flow")
# Encoder inputs: ``flow-u``/``flow-v`` are IIC's one-component flow views, ``flow`` both components and
# the magnitude (model/augment.py). The second view of training may be any of them.
VIEWS = ("rgb", "res", "flow-u", "flow-v", "flow")
# The views that evaluation and fine-tuning score a single-stream network on.
EVAL_VIEWS = ("rgb", "res", "flow-u", "flow-v")


def modality_of(view: str) -> str:
    """The stored modality a view is computed from."""
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; choose one of {', '.join(VIEWS)}")
    return "flow" if view.startswith("flow") else view


def modalities_for(views: Iterable[str]) -> tuple[str, ...]:
    """The stored modalities the loader must read for these views, in ``MODALITIES`` order."""
    needed = {modality_of(v) for v in views}
    return tuple(m for m in MODALITIES if m in needed)
