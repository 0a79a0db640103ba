"""The self-supervised methods, one module each in the same layout (config, state, loss, step, build):
`iic` (and its CMC baseline), `dualvar`; `variants` holds what IIC's training can do beyond the paper.

`build(cfg, n_data)` gives the training loop ``(net, state, step)``: the network to train (with
``.backbone``), the method's state that SGD does not train (memory banks, queues, a key encoder; saved with
every checkpoint) and ``step(net, state, batch, cfg, generator, device) -> loss``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..config import TrainConfig
from . import dualvar, variants

# One builder per name of config.METHODS (tests/test_architecture.py checks it). IIC's is the variants'
# builder, which is the paper's own `iic.build` when the config chooses no variant.
BUILDERS: dict[str, Callable[[TrainConfig, int], tuple[nn.Module, nn.Module, Callable]]] = {
    "iic": variants.build,
    "dualvar": dualvar.build,
}


def build(cfg: TrainConfig, n_data: int) -> tuple[nn.Module, nn.Module, Callable]:
    """The method of ``cfg`` for ``n_data`` training videos: ``(net, state, step)``."""
    return BUILDERS[cfg.method](cfg, n_data)
