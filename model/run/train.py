"""``iic train``: a method's self-supervised run: checkpoints, resume, DDP and logging around the shared loop.

Determinism: every random draw of a step (clip starts, crops, intra-negatives, bank negatives) comes from
seeds derived from (seed, epoch, step or sample, rank), never from global RNG state, so a run resumed from
its last epoch checkpoint continues exactly as the uninterrupted run (CPU, same seed). CPU convolutions sum
in an order that depends on the intra-op thread count: the same command, seed and thread count give
bit-identical checkpoints, in a fresh process or inside another (``--threads`` pins the count; a process
that changed torch's thread count earlier, as a test fixture may, otherwise trains differently). On CUDA,
cuDNN's algorithm choice and atomics make runs differ in the last bits.

Under torchrun, ``batch_size`` is the global batch: each of N processes takes ``batch_size / N`` clips a
step, so a run trains with the same recipe (batch, learning rate, schedule) on any number of GPUs. Every
process draws its own random numbers (its own rank's stream), while the weights and the method's state stay
equal on all of them: checked after every epoch.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from .. import checkpoint, methods
from ..config import ConfigError, TrainConfig, intra_negatives, resume_paths
from ..data.clips import ClipConfig, ClipDataset, EpochSampler, collate_clips
from ..distributed import (
    Dist,
    all_reduce_mean,
    barrier,
    cleanup,
    cpu_threads,
    init_distributed,
    ranks_disagree,
    resolve_device,
)
from ..evaluation.monitor import Monitor, alike_warning
from ..evaluation.protocol import iic_chance_loss
from .loop import Loop, TrainingError, cosine, shutdown_workers
from .resume import check_resumable, data_identity, refuse_existing, saved_config
from .runlog import Meter, RunLog, plot_curves

log = logging.getLogger(__name__)

__all__ = ["TrainingError", "train", "build_run", "lr_factor"]

STEP_SEED = (
    7919  # added to the run's seed for the step generators (the loader's clip starts use the seed itself)
)


@dataclass
class Run:
    cfg: TrainConfig
    dist: Dist
    dataset: ClipDataset
    loop: Loop
    data_identity: dict = field(
        default_factory=dict
    )  # resume.data_identity of cfg.data, saved with each checkpoint

    @property
    def encoder(self) -> torch.nn.Module:  # the unwrapped network, with ``.backbone``
        return self.loop.module

    @property
    def epoch(self) -> int:  # epochs done
        return self.loop.epoch


def build_loader(
    cfg: TrainConfig, d: Dist, device: torch.device
) -> tuple[ClipDataset, EpochSampler, DataLoader]:
    if (
        cfg.skip_corrupt and d.world > 1
    ):  # ranks would step on batches of different sizes (gathers need equal)
        raise ConfigError(
            "--skip-corrupt runs on one process only: under torchrun, repair the data first "
            "(`iic-prep extract --repair`)"
        )
    if cfg.batch_size % d.world:
        raise ConfigError(
            f"--batch-size {cfg.batch_size} is the global batch: it must divide among the {d.world} processes"
        )
    clip_cfg = ClipConfig(
        frames=cfg.frames,
        stride=cfg.stride,
        modalities=cfg.modalities,
        clips_per_sample=cfg.clips_per_sample,
        skip_corrupt=cfg.skip_corrupt,
    )
    dataset = ClipDataset(cfg.data, cfg.split, "train", clip_cfg, mode="train")
    per_rank = cfg.batch_size // d.world
    if dataset.n_videos < cfg.batch_size:
        raise ConfigError(
            f"batch size {cfg.batch_size} is larger than the {dataset.n_videos} training videos of "
            f"split {cfg.split}; lower --batch-size"
        )
    sampler = EpochSampler(dataset.n_videos, cfg.seed, shuffle=True, rank=d.rank, world=d.world)
    loader = DataLoader(
        dataset,
        batch_size=per_rank,
        sampler=sampler,
        num_workers=cfg.workers,
        drop_last=True,
        pin_memory=device.type == "cuda",
        persistent_workers=cfg.workers > 0,
        prefetch_factor=4 if cfg.workers > 0 else None,
        collate_fn=collate_clips,
    )
    return dataset, sampler, loader


def build_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def lr_factor(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Learning-rate factor of optimiser step s (0-based): linear warm-up over ``warmup_epochs``, then the
    paper's multi-step decay (at epoch boundaries) or a cosine decay to 0 at the last step. A function of the
    step and of ``cfg.epochs`` only, so a run extended to more epochs (``--resume RUN --epochs N``) goes on as
    a run planned for N epochs would at that step."""
    warm = cfg.warmup_epochs * steps_per_epoch
    total = cfg.epochs * steps_per_epoch
    milestones = cfg.milestone_epochs()

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.schedule == "cosine":
            return cosine(step, warm, total)
        epoch = step // steps_per_epoch
        return cfg.gamma ** sum(epoch >= m for m in milestones)

    return factor


def build_run(cfg: TrainConfig) -> Run:
    d = init_distributed(
        "cuda"
        if cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
        else "cpu"
    )
    device = resolve_device(cfg.device, d)
    torch.manual_seed(cfg.seed)  # model initialisation, identical on every rank
    dataset, sampler, loader = build_loader(cfg, d, device)
    encoder, memory, step = methods.build(cfg, dataset.n_videos)
    encoder, memory = encoder.to(device), memory.to(device)
    net = (
        DistributedDataParallel(encoder, device_ids=[device] if device.type == "cuda" else None)
        if d.world > 1
        else encoder
    )
    optimizer = build_optimizer(encoder.parameters(), cfg)
    loop = Loop(
        net,
        encoder,
        optimizer,
        loader,
        sampler,
        device,
        cfg.seed + STEP_SEED,
        lambda batch, gen: step(net, memory, batch, cfg, gen, device),
        state=memory,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, len(loader))),  # per step
        scaler=torch.amp.GradScaler("cuda", enabled=cfg.amp and device.type == "cuda"),
        rank=d.rank,
        world=d.world,
    )
    return Run(cfg, d, dataset, loop)


# ----------------------------------------------------------------------------------------------------------
# checkpoints


def state_dict(run: Run) -> dict:
    return {
        "config": run.cfg.to_dict(),
        **run.loop.state_dict(),
        "n_data": run.dataset.n_videos,
        "dataset": run.dataset.store.meta["dataset"],  # names the pretraining data in every evaluation report
        "data_identity": run.data_identity,
        "video_ids": run.dataset.video_ids,
        "cpu_threads": torch.get_num_threads(),  # CPU results are bit-identical only for the same count
        "world": run.dist.world,
    }


# what `restore` needs of a checkpoint (`state_dict` writes more)
RESUME_KEYS = (
    "config",
    "epoch",
    "step",
    "model",
    "memory",
    "optimizer",
    "scheduler",
    "scaler",
    "rng",
    "n_data",
)


def restore(run: Run, ckpt: dict, path: Path) -> None:
    """Put the run in the state ``ckpt`` (loaded from ``path``) describes; anything that does not fit is a
    one-line `CheckpointError` naming the file. A run extended to more epochs continues on the schedule of
    its new length (`lr_factor`)."""
    if ckpt["n_data"] != run.dataset.n_videos:
        raise checkpoint.CheckpointError(
            f"checkpoint {path} banks have {ckpt['n_data']} rows, the training list now has "
            f"{run.dataset.n_videos} videos"
        )
    run.loop.load_state_dict(ckpt, path)
    scheduler = run.loop.scheduler
    for group, base, f in zip(
        run.loop.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True
    ):
        group["lr"] = base * f(scheduler.last_epoch)  # the rate of the next step on this run's schedule


def train_one_epoch(run: Run, bar: tqdm | None, runlog: RunLog) -> Meter:
    def log_window(window: Meter) -> None:
        runlog.write(
            run.loop.step,
            epoch=run.loop.epoch + 1,
            loss=window.loss,
            lr=run.loop.optimizer.param_groups[0]["lr"],
            clips_per_s=window.clips_per_s,
            data_share=window.data_share,
        )

    return run.loop.train_epoch(bar, log_window, run.cfg.log_every)


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> Path:
    """Train; returns the path of the final checkpoint. See the module docstring for determinism.
    ``resume``: continue the run in ``cfg.out`` (its config may differ only in where and how it runs, and in
    more ``epochs``). ``progress=False``: no progress bar (runs side by side, model/run/sweep.py)."""
    with cpu_threads(cfg.threads):
        return _train(cfg, resume, progress)


def _train(cfg: TrainConfig, resume: bool, progress: bool) -> Path:
    run = build_run(cfg)
    loop = run.loop
    run.data_identity = data_identity(cfg.data, "flow" in cfg.modalities)
    out, main = Path(cfg.out), run.dist.main
    last, final = out / "last.pt", out / "final.pt"
    if resume:
        ckpt = checkpoint.load(last, RESUME_KEYS, "an `iic train` checkpoint")
        ckpt["config"] = saved_config(ckpt, last).to_dict()
        check_resumable(ckpt, last, cfg.to_dict(), resume_paths("free") | resume_paths("extend"), cfg.data)
        restore(run, ckpt, last)
        log.info("resumed from %s at epoch %d of %d", last, loop.epoch, cfg.epochs)
        if main and final.exists() and loop.epoch < cfg.epochs:  # a finished run extended: its weights stay
            final.rename(out / f"final-epoch{loop.epoch}.pt")
    elif main:
        refuse_existing(last, "a run")
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        log.info("config: %s", json.dumps(cfg.to_dict()))
        log.info(
            "%d training videos, %d steps/epoch, device %s, world %d, %d CPU threads",
            run.dataset.n_videos,
            len(loop.loader),
            loop.device,
            run.dist.world,
            torch.get_num_threads(),
        )
    runlog = RunLog(out, enabled=main)
    chance = (
        iic_chance_loss(
            cfg.iic.K,
            len(intra_negatives(cfg.iic.neg)),
            cfg.iic.live_negative,
            cfg.batch_size if cfg.iic.batch_negatives else 0,
        )
        if cfg.method == "iic"
        else None
    )
    monitor = (
        Monitor(cfg, loop.device, progress=progress, rank=run.dist.rank, world=run.dist.world)
        if cfg.monitor_every > 0
        else None
    )
    if (
        monitor is not None and loop.epoch == 0
    ):  # the untrained network: the baseline the curve is read against
        runlog.write(0, epoch=0, **monitor(run.encoder.backbone))
    bar = tqdm(
        total=len(loop.loader) * cfg.epochs,
        initial=len(loop.loader) * loop.epoch,
        unit="step",
        dynamic_ncols=True,
        disable=not (main and progress),
    )
    try:
        while loop.epoch < cfg.epochs:
            meter = train_one_epoch(run, bar if main else None, runlog)
            loop.epoch += 1
            epoch_loss = all_reduce_mean(meter.loss, loop.device)
            disagree = ranks_disagree([*loop.module.parameters(), *loop.state.buffers()])
            if disagree:
                raise TrainingError(
                    f"the processes hold different weights or memory after epoch {loop.epoch} "
                    f"({disagree}); stopped, last good checkpoint kept"
                )
            scores = monitor(run.encoder.backbone) if monitor is not None and monitor.due(loop.epoch) else {}
            if main:
                runlog.write(
                    loop.step,
                    epoch=loop.epoch,
                    epoch_loss=epoch_loss,
                    lr=loop.optimizer.param_groups[0]["lr"],
                    clips_per_s=meter.clips_per_s,
                    data_share=meter.data_share,
                    **({"chance_loss": chance} if chance is not None else {}),
                )
                if scores:
                    runlog.write(loop.step, epoch=loop.epoch, **scores)
                    if loop.epoch == cfg.epochs and (alike := alike_warning(scores, loop.epoch)):
                        log.warning("%s", alike)
                checkpoint.save_atomic(state_dict(run), last)
            barrier()
        if loop.corrupt.videos:
            log.warning("%s", loop.corrupt.summary())
        if main:
            checkpoint.save_atomic(state_dict(run), final)
            plot_curves(
                out / "metrics.jsonl",
                out / "curves.png",
                title=f"{out.name}: {describe(cfg)}",
                chance_top1=monitor.chance_top1 if monitor is not None else None,
            )
    finally:
        bar.close()
        runlog.close()
        shutdown_workers(loop.loader)
        cleanup()
    return final


def describe(cfg: TrainConfig) -> str:
    """``iic r3d-tiny rgb/res, neg repeat``: the method, backbone and views of a run, for titles."""
    if cfg.method == "iic":
        return f"{'CMC' if cfg.iic.neg == 'none' else 'IIC'} {cfg.model} rgb/{cfg.view2}, neg {cfg.iic.neg}"
    return f"{cfg.method} {cfg.model} rgb/{cfg.view2}"
