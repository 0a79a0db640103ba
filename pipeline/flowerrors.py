"""The errors of the flow stage, apart so that the torch backend (``tvl1_torch.py``) and the OpenCV methods
(``flowcalc.py``) both raise them without importing each other."""

from __future__ import annotations


class FlowError(ValueError):
    """Input that flow cannot be computed for; the message is a one-line reason."""


class FlowDeviceError(ValueError):
    """A device the torch method cannot use (CUDA asked for and absent); the message is one line."""
