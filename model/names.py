"""The names the training core's options accept, in one torch-free place: the configs validate against them and
cli.py offers them as choices without importing torch (the clip vocabulary, views and modalities, is
model/views.py)."""
from __future__ import annotations

METHODS = ("iic", "dualvar")
NEGATIVES = ("repeat", "shuffle", "reverse", "none")  # IIC intra-negatives (reverse: not the paper's); none = CMC
HEADS = ("none", "mlp", "mlp-bn", "mlp-bn-out", "bn")  # model/iic.py: ProjectionHead, CenterHead
VIEW2_TIMES = ("same", "other")  # IIC's view 2: the frames of view 1 (paper) or another random time of the video
RGB_AUGS = ("none", "simclr")  # IIC's RGB view: crop only (paper) | + SimCLR's colour jitter, grayscale, blur
POSITIVES = ("bank", "live")  # model/iic.py: IICMemory
SCHEDULES = ("multistep", "cosine")
OPTIMIZERS = ("sgd", "adam")
FEATURES = ("conv5", "pool")  # backbones.retrieval_feature
