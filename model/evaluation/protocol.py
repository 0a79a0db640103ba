"""Each method's own retrieval protocol, in one place (docs/method.md, "Evaluation protocols").

IIC (and its CMC baseline) retrieve with conv5 features max-pooled (1, 2, 2), cosine similarity, no
centring, and report retrieval with RGB and with residual input, fine-tuning on residual input (the paper:
"repeat+res"); DualVar uses the pooled feature, each set centred by its own mean, on RGB input only (it trains
on RGB only).
``iic eval retrieval|linear|recognition``, the training monitor and the demo take their defaults from here,
so a method is never scored with another's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import ALIGNED_VIEWS, FLOW_COMPONENTS


@dataclass(frozen=True)
class RetrievalProtocol:
    feature: str  # conv5 | pool (backbones.retrieval_feature)
    center: bool  # subtract each set's mean before the cosine similarity
    paper: str
    modality: str = "res"  # the input view evaluated by default (views.EVAL_VIEWS)
    inputs: tuple[str, ...] = ("rgb", "res")  # the inputs the paper reports retrieval with

    def describe(self) -> str:
        return (
            f"{self.modality} input, {self.feature} features, {'centred' if self.center else 'not centred'} "
            f"({self.paper})"
        )


PROTOCOLS: dict[str, RetrievalProtocol] = {
    "iic": RetrievalProtocol("conv5", False, "IIC's protocol", "res", ("rgb", "res")),
    "dualvar": RetrievalProtocol("pool", True, "DualVar's protocol", "rgb", ("rgb",)),
}


def protocol_of_source(method: str) -> RetrievalProtocol:
    """The protocol of a backbone trained with ``method``; a random init (or another method) is read with
    IIC's."""
    return PROTOCOLS.get(method, PROTOCOLS["iic"])


def default_input(method: str, view2: str | None = None) -> str:
    """The input a backbone is scored on by default: its method's protocol's, except for an IIC run whose
    second view was a flow component or the residual after the camera's motion, which is scored on that view
    (it never saw plain residuals)."""
    if method == "iic" and view2 in (*FLOW_COMPONENTS, *ALIGNED_VIEWS):
        return view2
    return protocol_of_source(method).modality


def protocol_for(method: str) -> RetrievalProtocol:
    if method not in PROTOCOLS:
        raise ValueError(f"no retrieval protocol for method {method!r}; choose one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[method]


def iic_chance_loss(K: int, intra: int, live_negative: bool = False, batch: int = 0) -> float:
    """The IIC / CMC loss of uniform logits: 2 ln(columns), columns = K + 1 (CMC) or 2K + 2 (IIC) (1 with K =
    0), + 1 with the live negative, + the batch negatives of a global batch of ``batch`` clips (N - 1 other
    clips, and N intra-negatives of each of the ``intra`` kinds; 0 = no batch negatives). ``intra``: the
    intra-negatives per clip (0: CMC). A run whose loss stays here has learnt nothing."""
    bank = (K + (K + 1 if intra else 0)) if K else 0  # K = 0: no bank columns
    columns = 1 + bank + (1 if live_negative else 0)
    if batch:
        columns += batch - 1 + batch * intra
    return 2 * math.log(columns)
