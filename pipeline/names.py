"""The names the offline stage's options accept, importable without OpenCV, h5py or joblib (cli.py offers them
as choices; the modules that implement them import them from here)."""

from __future__ import annotations

OPENCV_FLOW_METHODS = ("tvl1", "tvl1-fast", "dis", "farneback")
TORCH_FLOW_METHODS = ("tvl1-torch",)  # computed by pipeline/tvl1_torch.py, with the parameters of TVL1_PARAMS
FLOW_METHODS = OPENCV_FLOW_METHODS + TORCH_FLOW_METHODS
BACKENDS = ("loky", "dask")  # pipeline/parallel.py
# `iic-prep synth --camera` (pipeline/synth.py): how the scene is filmed; "still" first, the default
SYNTH_CAMERAS = ("still", "shake", "pan", "zoom", "rotate", "handheld")
