"""``iic eval recognition``: fine-tune backbone + Linear(out_dim, classes) on the split's train list, a
`loop.Loop` like every training run.

Protocol (docs/method.md, "Recognition"): a seeded held-out part of the train list for validation,
supervised cross-entropy, SGD lr 1e-3 momentum 0.9 wd 5e-4, batch 16, ReduceLROnPlateau on the validation
loss (x0.1, patience scaled with the epoch count: 10 at 150 epochs), random-crop training clips; test =
``clips`` uniform clips per video, centre crop, mean of the clip softmax scores, top-1 and top-5 per video.
Checkpoints every epoch (atomic), ``--resume``, ``metrics.jsonl`` + ``curves.png`` as in ``iic train``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from .. import checkpoint
from ..config import modalities_for
from ..data import augment
from ..data.clips import ClipConfig, ClipDataset, EpochSampler, collate_clips, worker_errors
from ..data.views import view_input
from ..distributed import resolve_device
from ..evaluation.evaluate import SourceConfig, eval_dir, resolve_source
from ..evaluation.features import BackboneSource, check_dataset_size, data_record, load_backbone
from ..evaluation.protocol import default_input
from ..nets.backbones import VideoBackbone
from .loop import Loop, TrainingError, cosine
from .resume import check_resumable, data_identity, file_digest, refuse_existing, same_path
from .runlog import RunLog, plot_curves, read_metrics

log = logging.getLogger(__name__)

STEP_SEED = 104729  # added to the seed for the step generators (as train.STEP_SEED for pretraining)


RESUME_KEYS = ("config", "epoch", "model", "optimizer", "scheduler")  # of the per-epoch last.pt


@dataclass(frozen=True)
class FinetuneConfig:
    data: Path = Path("data/ucf101")
    split: int = 1
    source: SourceConfig = SourceConfig()  # --random-init = training from scratch
    modality: str | None = (
        None  # None: the method's protocol (model/protocol.py): res for IIC/CMC, rgb for DualVar
    )
    epochs: int = 150
    batch_size: int = 16
    lr: float = 1e-3
    schedule: str = "plateau"  # plateau (the paper's: x0.1 when the validation loss stalls) | cosine (to 0)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    val_fraction: float = 0.1
    clips: int = 10
    workers: int = 2
    device: str = "auto"
    out: Path | None = None  # default: <run folder>/eval/recognition-<data>-s<split>-<modality> (`eval_dir`)
    seed: int = 0

    @property
    def patience(self) -> int:
        return max(1, round(10 * self.epochs / 150))

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))


class Classifier(nn.Module):
    """Backbone + linear classifier on the pooled feature: ``(B, 3, T, H, W) -> (B, classes)`` logits."""

    def __init__(self, backbone: VideoBackbone, n_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(backbone.out_dim, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.backbone(x)["pool"])


def split_train_val(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (train, val) positions of a list of ``n`` videos; val has ``round(fraction * n)``."""
    n_val = int(round(fraction * n))
    if fraction > 0 and n_val == 0 and n >= 2:
        n_val = 1
    perm = np.random.default_rng([seed, 1]).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _inputs(
    batch: dict, modality: str, crop: int, train: bool, gen: torch.Generator | None, device: torch.device
) -> Tensor:
    loaded = augment.clips_of(batch, modalities_for((modality,)))
    raw = {k: v.to(device, non_blocking=True) for k, v in loaded.items()}
    B, hw = batch["index"].shape[0], augment.batch_hw(batch, next(iter(raw)))
    aug = augment.AugmentConfig(crop=crop, train=train, camera_views=(modality,))
    views = augment.apply(raw, augment.sample_params(B, hw, aug, gen, device), aug)
    return view_input(views, modality)


@torch.no_grad()
def clip_scores(
    net: nn.Module,
    dataset,
    modality: str,
    crop: int,
    device: torch.device,
    batch_size: int,
    workers: int,
    n_videos: int,
    desc: str,
) -> tuple[Tensor, Tensor]:
    """Mean softmax scores per video ``(n_videos, classes)`` and labels ``(n_videos,)`` over test-mode
    clips."""
    net.eval()
    sums, labels, counts = None, torch.full((n_videos,), -1, dtype=torch.long), torch.zeros(n_videos)
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate_clips
    )
    for batch in tqdm(
        worker_errors(loader), total=len(loader), desc=desc, unit="batch", leave=False, dynamic_ncols=True
    ):
        p = F.softmax(net(_inputs(batch, modality, crop, False, None, device)).float(), dim=1).cpu()
        sums = torch.zeros(n_videos, p.shape[1]) if sums is None else sums
        idx = batch["index"].long()
        sums.index_add_(0, idx, p)
        counts.index_add_(0, idx, torch.ones(len(idx)))
        labels[idx] = batch["label"].long()
    seen = counts > 0
    return sums[seen] / counts[seen, None], labels[seen]


def topk_accuracy(scores: Tensor, labels: Tensor, k: int) -> float:
    k = min(k, scores.shape[1])
    return 100.0 * float((scores.topk(k, dim=1).indices == labels[:, None]).any(1).double().mean())


def source_identity(src: BackboneSource) -> str:
    """What the fine-tuning starts from, wherever its file is: the checkpoint's content hash, or the
    random initialisation's description."""
    return src.describe() if src.ckpt is None else file_digest(src.ckpt)


def source_changes(saved: dict, now: dict, ckpt: dict, source_id: str) -> tuple[str, ...]:
    """How the backbone a fine-tuning starts from differs from the saved run's: by content (older
    checkpoints: by resolved path), and in the options that pick it."""
    old_source, new_source = saved.get("source") or {}, now["source"]
    source = [
        f"source.{k}" for k, v in new_source.items() if k not in ("ckpt", "runs") and old_source.get(k) != v
    ]
    if "source_identity" in ckpt:
        if ckpt["source_identity"] != source_id:
            source.append("source (another backbone checkpoint)")
    elif not (
        same_path(old_source.get("ckpt"), new_source["ckpt"])
        and same_path(old_source.get("runs"), new_source["runs"])
    ):
        source.append("source")
    return tuple(source)


# what may change when a fine-tuning resumes: where and how it runs, places, more epochs (the plateau
# schedule just goes on), and the source, compared by `source_changes`
RESUME_FREE = {"workers", "device", "epochs", "out", "data", "source"}


CHANCE_SHARE = 0.95  # a final training loss above this share of ln(classes) has learnt (next to) nothing


def chance_warnings(metrics: list[dict], n_classes: int, steps: int, cfg: FinetuneConfig) -> list[str]:
    """Why a fine-tuning that ended at chance did, and what to change: the paper's recipe (lr 1e-3, a plateau
    decay on the validation loss) is made for tens of thousands of steps; in a short run a small validation
    set's noisy loss cuts the rate before anything moves (BENCHMARKS.md, "Recognition")."""
    losses = [row for row in metrics if "loss" in row and "epoch" in row]
    if not losses or losses[-1]["loss"] < CHANCE_SHARE * math.log(n_classes):
        return []
    last = losses[-1]
    how = f"cut on plateaus of {cfg.patience} epochs" if cfg.schedule == "plateau" else "cosine"
    return [
        f"the fine-tuning ended near chance: training loss {last['loss']:.3f} against ln({n_classes}) = "
        f"{math.log(n_classes):.3f} after {steps} steps, at a rate of {last['lr']:.2g} "
        f"(from --lr {cfg.lr:g}, {how}); a short run needs --schedule cosine with a higher --lr (e.g. 0.01), "
        "or more --epochs"
    ]


def finetune(cfg: FinetuneConfig, resume: bool = False) -> dict:
    """Fine-tune and test; returns (and writes to ``recognition.json``) top-1/top-5 and the counts."""
    src, state = resolve_source(cfg.source)
    cfg = dataclasses.replace(cfg, modality=cfg.modality or default_input(src.method, src.view2))
    out = (
        Path(cfg.out)
        if cfg.out
        else eval_dir(src, cfg.source.runs, "recognition", cfg.data, cfg.split, cfg.modality)
    )
    device = resolve_device(cfg.device)
    mods = modalities_for((cfg.modality,))
    train_set = ClipDataset(
        cfg.data, cfg.split, "train", ClipConfig(src.frames, src.stride, mods), mode="train"
    )
    check_dataset_size(src, train_set.n_videos, cfg.data, cfg.split)
    val_set = ClipDataset(
        cfg.data, cfg.split, "train", ClipConfig(src.frames, src.stride, mods, test_clips=1), mode="test"
    )
    test_set = ClipDataset(
        cfg.data,
        cfg.split,
        "test",
        ClipConfig(src.frames, src.stride, mods, test_clips=cfg.clips),
        mode="test",
    )
    n_classes = len(train_set.store.classes)
    tr_idx, val_idx = split_train_val(train_set.n_videos, cfg.val_fraction, cfg.seed)
    if len(tr_idx) < cfg.batch_size:
        raise TrainingError(
            f"{len(tr_idx)} fine-tuning videos is fewer than a batch of {cfg.batch_size}; lower --batch-size"
        )

    torch.manual_seed(cfg.seed)
    net = Classifier(load_backbone(src, state), n_classes).to(device)
    optimizer = torch.optim.SGD(
        net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    sampler = EpochSampler(len(tr_idx), cfg.seed, indices=tr_idx)
    loader = DataLoader(
        train_set,
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.workers,
        drop_last=True,
        collate_fn=collate_clips,
    )

    def step(batch: dict, gen: torch.Generator) -> Tensor:
        return F.cross_entropy(net(_inputs(batch, cfg.modality, src.crop, True, gen, device)), batch["label"])

    if cfg.schedule == "cosine":  # stepped by the loop after every step
        total = cfg.epochs * len(loader)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine(s, 0, total))
    else:  # stepped here after every epoch, on the validation loss
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.1, patience=cfg.patience)
    per_step = scheduler if cfg.schedule == "cosine" else None
    loop = Loop(net, net, optimizer, loader, sampler, device, cfg.seed + STEP_SEED, step, scheduler=per_step)
    last, final = out / "last.pt", out / "final.pt"
    data_id, source_id = data_identity(cfg.data, "flow" in mods), source_identity(src)
    if resume:
        ckpt = checkpoint.load(last, RESUME_KEYS, "an `iic eval recognition` checkpoint")
        saved = ckpt["config"] if isinstance(ckpt["config"], dict) else {}
        check_resumable(
            ckpt,
            last,
            cfg.to_dict(),
            RESUME_FREE,
            cfg.data,
            source_changes(saved, cfg.to_dict(), ckpt, source_id),
        )
        loop.load_state_dict(ckpt, last, scheduler=None if per_step else scheduler)
        log.info("resumed from %s at epoch %d", last, loop.epoch)
    else:
        refuse_existing(last, "a fine-tuning run")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    log.info(
        "fine-tuning %s on %d videos (%d held out), %d classes, %s",
        src.describe(),
        len(tr_idx),
        len(val_idx),
        n_classes,
        device,
    )
    runlog = RunLog(out)
    try:
        while loop.epoch < cfg.epochs:
            with tqdm(
                total=len(loader), desc=f"epoch {loop.epoch + 1}/{cfg.epochs}", unit="step", leave=False
            ) as bar:
                meter = loop.train_epoch(bar)
            loop.epoch += 1
            metrics = {
                "epoch": loop.epoch,
                "loss": meter.loss,
                "lr": optimizer.param_groups[0]["lr"],
                "clips_per_s": meter.clips_per_s,
            }
            if len(val_idx):
                scores, labels = clip_scores(
                    net,
                    Subset(val_set, val_idx.tolist()),
                    cfg.modality,
                    src.crop,
                    device,
                    cfg.batch_size,
                    cfg.workers,
                    val_set.n_videos,
                    "validation",
                )
                metrics["val_loss"] = float(F.nll_loss(scores.clamp_min(1e-12).log(), labels))
                metrics["val_top1"] = topk_accuracy(scores, labels, 1)
            if per_step is None:
                scheduler.step(metrics.get("val_loss", meter.loss))
            runlog.write(loop.step, **metrics)
            log.info(
                "epoch %d: %s",
                loop.epoch,
                ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k != "epoch"),
            )
            checkpoint.save_atomic(
                {
                    "config": cfg.to_dict(),
                    **loop.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "n_data": train_set.n_videos,
                    "source": src.describe(),
                    "source_identity": source_id,
                    "data_identity": data_id,
                },
                last,
            )
    finally:
        runlog.close()
    scores, labels = clip_scores(
        net, test_set, cfg.modality, src.crop, device, cfg.batch_size, cfg.workers, test_set.n_videos, "test"
    )
    result = {
        "config": cfg.to_dict(),
        "checkpoint": src.describe(),
        "chosen": src.chosen,
        "trained_with": src.recipe,
        "data": data_record(src, cfg.data, cfg.split),
        "top1": topk_accuracy(scores, labels, 1),
        "top5": topk_accuracy(scores, labels, 5),
        "classes": n_classes,
        "counts": {"train": len(tr_idx), "val": len(val_idx), "test": int(labels.shape[0])},
        "out": str(out),
        "warnings": chance_warnings(read_metrics(out / "metrics.jsonl"), n_classes, loop.step, cfg),
    }
    for warning in result["warnings"]:
        log.warning("%s", warning)
    checkpoint.save_atomic(
        {
            "config": cfg.to_dict(),
            "epoch": loop.epoch,
            "model": net.state_dict(),
            "n_data": train_set.n_videos,
            "result": {k: result[k] for k in ("top1", "top5")},
        },
        final,
    )
    (out / "recognition.json").write_text(json.dumps(result, indent=1))
    run = src.ckpt.parent.name if src.ckpt is not None else src.describe()
    plot_curves(
        out / "metrics.jsonl", out / "curves.png", title=f"{run}: fine-tuning on {cfg.modality} input"
    )
    return result
