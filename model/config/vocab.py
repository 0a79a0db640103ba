"""The names the options accept (methods, heads, views, modalities, ...), which stored modalities a view
needs, and the one error every configuration problem raises."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

METHODS = ("iic", "dualvar")
INTRA_NEGATIVES = ("repeat", "shuffle", "reverse")  # IIC's intra-negatives (reverse: not the paper's)
# --neg: one kind, several joined by "+" in this order (each clip then has one of each), or none (CMC)
NEGATIVES = (
    *("+".join(c) for n in range(1, 4) for c in itertools.combinations(INTRA_NEGATIVES, n)),
    "none",
)
HEADS = ("none", "mlp", "mlp-bn", "mlp-bn-out", "bn")  # model/nets/heads.py
VIEW2_TIMES = (
    "same",
    "other",
)  # IIC's view 2: the frames of view 1 (paper) or another random time of the video
# IIC's RGB view: crop only (paper) | + SimCLR's colours | its moving part on another clip's background (FAME)
RGB_AUGS = ("none", "simclr", "fame")
POSITIVES = ("bank", "live")  # model/methods/iic.py, model/methods/variants.py
SCHEDULES = ("multistep", "cosine")
OPTIMIZERS = ("sgd", "adam")
CLIP_LOSSES = ("simclr", "moco")  # DualVar's L_clip: in-batch NT-Xent | a queue of momentum keys
FEATURES = ("conv5", "pool")  # model/nets/backbones.py: retrieval_feature

# A *modality* is what the loader reads from the shards (``rgb`` and ``res`` from the frames shard, ``flow``
# from the flow shard, ``camera`` the camera's motion from the camera shard with the frame before each clip
# frame); a *view* is what an encoder sees (model/data/views.py). ``flow-u``/``flow-v`` are IIC's
# one-component flow views, ``flow`` both components and the magnitude; ``res-aligned`` is the residual after
# the camera's motion (model/data/align.py), made of ``rgb`` and ``camera``.
MODALITIES = ("rgb", "res", "flow", "camera")
FLOW_COMPONENTS = ("flow-u", "flow-v")
# ``rgb-stable`` / ``res-stable``: the clip stabilised on its middle frame by the camera's motion, and the
# residual of its consecutive stabilised frames (model/data/align.py). With view 2 ``res-stable`` IIC's view 1
# (and so its intra-negatives) is ``rgb-stable``: a camera that moves every frame would otherwise tell every
# clip from its still intra-negative by itself.
# ``flow-u-aligned`` / ``flow-v-aligned``: a flow component after the camera's part of the flow (an affine
# field fitted robustly to the flow itself, model/data/views.py) is subtracted; made of ``flow`` alone.
FLOW_ALIGNED = ("flow-u-aligned", "flow-v-aligned")
ALIGNED_VIEWS = ("res-aligned", "res-stable", *FLOW_ALIGNED)  # view-2 choices without the camera's motion
STABLE_VIEWS = ("rgb-stable", "res-stable")
CAMERA_VIEWS = ("res-aligned", *STABLE_VIEWS)  # every view that needs the ``camera`` modality
VIEWS = ("rgb", "res", *ALIGNED_VIEWS, *FLOW_COMPONENTS, "flow")
EVAL_VIEWS = ("rgb", "res", *CAMERA_VIEWS, *FLOW_COMPONENTS, *FLOW_ALIGNED)  # what evaluation scores a net on


def intra_negatives(neg: str) -> tuple[str, ...]:
    """The intra-negative kinds of a ``--neg`` value, one per clip each (none: the CMC baseline)."""
    return () if neg == "none" else tuple(neg.split("+"))


def view1_of(view2: str) -> str:
    """IIC's view 1 for a view 2: ``rgb-stable`` beside ``res-stable``, else ``rgb``."""
    return "rgb-stable" if view2 == "res-stable" else "rgb"


def modality_of(view: str) -> str:
    """The stored modality a view is computed from (the camera views: ``camera``, with ``rgb``)."""
    known = dict.fromkeys((*VIEWS, *EVAL_VIEWS))
    if view not in known:
        raise ValueError(f"unknown view {view!r}; choose one of {', '.join(known)}")
    if view in CAMERA_VIEWS:
        return "camera"
    return "flow" if view.startswith("flow") else view


def modalities_for(views: Iterable[str]) -> tuple[str, ...]:
    """The stored modalities the loader must read for these views, in ``MODALITIES`` order (``camera``
    brings ``rgb``: the aligned residual is taken of the RGB frames)."""
    needed = {modality_of(v) for v in views}
    if "camera" in needed:
        needed.add("rgb")
    return tuple(m for m in MODALITIES if m in needed)


class ConfigError(ValueError):
    """An invalid or inconsistent configuration (one-line message)."""


def check_device(name: str) -> str:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``, else a ConfigError in the words of every command."""
    ok = name in ("auto", "cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit())
    if not ok:
        raise ConfigError(f"--device {name!r} is unknown; choose one of auto, cpu, cuda, cuda:N")
    return name
