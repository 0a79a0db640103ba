"""The training monitor: a cheap retrieval top-1 on the test split every ``monitor_every`` epochs.

Each test video (one centre clip, centre crop) retrieves its nearest train video with the method's own
protocol (`protocol.protocol_for`); top-1 = the share of queries whose neighbour has their label. The
views are the encoder's RGB input and, for IIC with a residual or flow-component second view, that view.
Beside it, each view's similarity: the mean cosine between two test videos' features (uncentred); near 1,
every video is encoded alike, as by a random-init network on a residual input (mostly "no change") or a run
still on its chance plateau (`SAME_FEATURES`).
Evaluation mode, no random draws, no state written: a monitored run trains exactly as an unmonitored one.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import EVAL_VIEWS, TrainConfig, modalities_for
from ..data.clips import ClipConfig, ClipDataset
from ..distributed import sum_over_ranks
from .features import extract
from .protocol import protocol_for
from .retrieval import retrieval_topk

# Above this mean cosine a view's features tell no video from another. Measured on the camera benchmark
# (BENCHMARKS.md, "Camera motion"; conv5, res-stable, 120 test videos): random init 0.9999-1.0, the runs
# whose loss stayed at its chance value 0.9991-0.9993, every run that learned 0.72-0.90.
SAME_FEATURES = 0.99
TOP1, SIMILARITY = "monitor_top1_", "monitor_similarity_"  # + the view: the keys the monitor's scores have


def mean_cosine(features: torch.Tensor) -> float:
    """Mean cosine similarity over all pairs of distinct rows of ``features`` (N, D), uncentred; rows with a
    NaN (videos left out as corrupt) do not count. NaN with fewer than two rows."""
    f = features.double()
    f = torch.nn.functional.normalize(f[torch.isfinite(f).all(1)], dim=1)
    n = f.shape[0]
    if n < 2:
        return float("nan")
    total = f.sum(0).pow(2).sum() - n  # sum over i != j of f_i . f_j
    return float(total / (n * (n - 1)))


def alike_warning(scores: dict[str, float], epoch: int) -> str | None:
    """The line that says which views' features at ``epoch`` are alike for every test video (`SAME_FEATURES`),
    from the monitor's ``scores``; None when none is."""
    alike = {
        k[len(SIMILARITY) :]: v for k, v in scores.items() if k.startswith(SIMILARITY) and v >= SAME_FEATURES
    }
    if not alike:
        return None
    said = ", ".join(f"{view} {cos:.4f}" for view, cos in alike.items())
    return (
        f"epoch {epoch}: every test video's features point the same way (mean cosine {said}; 1 = identical, "
        "as a random-init network's on a residual): the run has not yet learned to tell videos apart by that "
        "input, and its retrieval there will be near chance. It may leave this plateau later or with another "
        "--seed."
    )


def monitor_views(cfg: TrainConfig) -> tuple[str, ...]:
    second = (cfg.view2,) if cfg.method == "iic" and cfg.view2 in EVAL_VIEWS and cfg.view2 != "rgb" else ()
    return ("rgb", *second)


class Monitor:
    """Called on every process of a distributed run at once: each encodes its share of the videos and the
    features are summed over the processes, so no process waits in a collective while another evaluates."""

    def __init__(
        self,
        cfg: TrainConfig,
        device: torch.device,
        batch_size: int = 32,
        progress: bool = True,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.cfg, self.device, self.batch_size, self.progress = cfg, device, batch_size, progress
        self.rank, self.world = rank, world
        self.protocol = protocol_for(cfg.method)
        self.views = monitor_views(cfg)
        clip_cfg = ClipConfig(
            frames=cfg.frames, stride=cfg.stride, modalities=modalities_for(self.views), test_clips=1
        )
        self.sets = {s: ClipDataset(cfg.data, cfg.split, s, clip_cfg, mode="test") for s in ("train", "test")}
        self.chance_top1 = 100.0 / len(set(self.sets["train"].labels.tolist()))

    def due(self, epoch: int) -> bool:
        every = self.cfg.monitor_every
        return every > 0 and (epoch % every == 0 or epoch == self.cfg.epochs)

    def __call__(self, backbone: nn.Module) -> dict[str, float]:
        """{``monitor_top1_<view>``: top-1 (%), ``monitor_similarity_<view>``: `mean_cosine` of the test
        videos' features} of the backbone as it is now (left in training mode)."""
        was_training = backbone.training
        f = self.protocol.feature
        feats = {s: self._features(backbone, ds, f, s) for s, ds in self.sets.items()}
        backbone.train(was_training)
        gallery, queries = self.sets["train"], self.sets["test"]
        top1 = {
            TOP1 + v: retrieval_topk(
                feats["test"][v, f],
                queries.labels,
                feats["train"][v, f],
                gallery.labels,
                ks=(1,),
                center=self.protocol.center,
            ).topk[1]
            for v in self.views
        }
        return top1 | {SIMILARITY + v: mean_cosine(torch.as_tensor(feats["test"][v, f])) for v in self.views}

    def _features(self, backbone: nn.Module, dataset: ClipDataset, feature: str, name: str) -> dict:
        """This process's share of the videos (all of them at world size 1), summed over the processes."""
        share = range(self.rank, len(dataset), self.world) if len(dataset) >= self.world else None
        feats = extract(
            backbone,
            dataset,
            self.views,
            (feature,),
            self.cfg.crop,
            self.device,
            self.batch_size,
            desc=f"monitor {name}",
            progress=self.progress and self.rank == 0,
            items=share if self.world > 1 else None,
        )[0]
        if self.world == 1 or share is None:
            return feats
        return {k: sum_over_ranks(v, self.device) for k, v in feats.items()}
