"""``iic train``: the training loop, checkpoints, resume, DDP and logging.

Determinism: every random draw of a step (clip starts, crops, intra-negatives, bank negatives) comes
from seeds derived from (seed, epoch, step or sample), never from global RNG state, so a run resumed
from its last epoch checkpoint continues exactly as the uninterrupted run (CPU, same seed). CPU
convolutions sum in an order that depends on the intra-op thread count: the same command, seed and
thread count give bit-identical checkpoints, in a fresh process or inside another (``--threads`` pins the
count; a process that changed torch's thread count earlier, as a test fixture may, otherwise trains
differently). On CUDA, cuDNN's algorithm choice and atomics make runs differ in the last bits.
"""
from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from . import checkpoint
from .clips import ClipConfig, ClipDataset, CorruptTally, EpochSampler, clip_seed, collate_clips, worker_errors
from .config import ConfigError, TrainConfig
from .distributed import (Dist, all_reduce_mean, barrier, cleanup, cpu_threads, init_distributed, max_divergence,
                          resolve_device)
from .dualvar import build_dualvar
from .iic import build_iic
from .monitor import Monitor
from .protocol import iic_chance_loss
from .resume import check_data, data_identity, load_states, refuse_changes, refuse_existing
from .runlog import Meter, RunLog, ensure_finite, plot_curves

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on (one-line message); the last good checkpoint is kept."""


# ----------------------------------------------------------------------------------------------------------
# building blocks

def step_generator(cfg: TrainConfig, epoch: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(clip_seed(cfg.seed + 7919, epoch, step))



@dataclass
class Run:
    cfg: TrainConfig
    dist: Dist
    device: torch.device
    dataset: ClipDataset
    sampler: EpochSampler
    loader: DataLoader
    net: nn.Module  # possibly DDP-wrapped
    encoder: nn.Module  # unwrapped network, with ``.backbone``
    memory: nn.Module  # method state that is not trained by SGD (memory banks, queues)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    step_fn: Callable
    epoch: int = 0
    step: int = 0
    data_identity: dict = field(default_factory=dict)  # resume.data_identity of cfg.data, saved with each checkpoint
    corrupt: CorruptTally = field(default_factory=CorruptTally)  # clips left out by --skip-corrupt


def build_loader(cfg: TrainConfig, d: Dist, device: torch.device) -> tuple[ClipDataset, EpochSampler, DataLoader]:
    if cfg.skip_corrupt and d.world > 1:  # ranks would step on batches of different sizes (gathers need equal)
        raise ConfigError("--skip-corrupt runs on one process only: under torchrun, repair the data first "
                          "(`iic-prep extract --repair`)")
    clip_cfg = ClipConfig(frames=cfg.frames, stride=cfg.stride, modalities=cfg.modalities,
                          clips_per_sample=cfg.clips_per_sample, skip_corrupt=cfg.skip_corrupt)
    dataset = ClipDataset(cfg.data, cfg.split, "train", clip_cfg, mode="train")
    per_rank = cfg.batch_size
    if dataset.n_videos < per_rank * d.world:
        raise ConfigError(
            f"batch size {per_rank} x {d.world} rank(s) is larger than the {dataset.n_videos} training videos "
            f"of split {cfg.split}; lower --batch-size")
    sampler = EpochSampler(dataset.n_videos, cfg.seed, shuffle=True, rank=d.rank, world=d.world)
    loader = DataLoader(
        dataset, batch_size=per_rank, sampler=sampler, num_workers=cfg.workers, drop_last=True,
        pin_memory=device.type == "cuda", persistent_workers=cfg.workers > 0,
        prefetch_factor=4 if cfg.workers > 0 else None, collate_fn=collate_clips,
    )
    return dataset, sampler, loader


# Each method's module builds (net, state, step); ``step(net, state, batch, cfg, generator, device) -> loss``.
# The keys are config.METHODS (tests/test_architecture.py checks it).
METHOD_BUILDERS: dict[str, Callable[[TrainConfig, int], tuple[nn.Module, nn.Module, Callable]]] = {
    "iic": build_iic, "dualvar": build_dualvar}


def build_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def lr_factor(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Learning-rate factor of optimiser step s (0-based): linear warm-up over ``warmup_epochs``, then the
    paper's multi-step decay (at epoch boundaries) or a cosine decay to 0 at the last step."""
    warm = cfg.warmup_epochs * steps_per_epoch
    total = cfg.epochs * steps_per_epoch
    milestones = cfg.milestone_epochs()

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
        epoch = step // steps_per_epoch
        return cfg.gamma ** sum(epoch >= m for m in milestones)

    return factor


def build_run(cfg: TrainConfig) -> Run:
    d = init_distributed("cuda" if cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu")
    device = resolve_device(cfg.device, d)
    torch.manual_seed(cfg.seed)  # model initialisation, identical on every rank
    dataset, sampler, loader = build_loader(cfg, d, device)
    encoder, memory, step_fn = METHOD_BUILDERS[cfg.method](cfg, dataset.n_videos)
    encoder, memory = encoder.to(device), memory.to(device)
    net = DistributedDataParallel(encoder, device_ids=[device] if device.type == "cuda" else None) if d.world > 1 else encoder
    optimizer = build_optimizer(encoder.parameters(), cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, len(loader)))  # stepped per step
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp and device.type == "cuda")
    return Run(cfg, d, device, dataset, sampler, loader, net, encoder, memory, optimizer, scheduler, scaler, step_fn)


# ----------------------------------------------------------------------------------------------------------
# checkpoints


def state_dict(run: Run) -> dict:
    return {
        "config": run.cfg.to_dict(),
        "epoch": run.epoch,
        "step": run.step,
        "model": run.encoder.state_dict(),
        "memory": run.memory.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "rng": {"torch": torch.get_rng_state(), **({"cuda": torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else {})},
        "n_data": run.dataset.n_videos,
        "dataset": run.dataset.store.meta["dataset"],  # names the pretraining data in every evaluation report
        "data_identity": run.data_identity,
        "video_ids": run.dataset.video_ids,
        "cpu_threads": torch.get_num_threads(),  # CPU results are bit-identical only for the same count
    }


# what `restore` needs of a checkpoint (`state_dict` writes more)
RESUME_KEYS = ("config", "epoch", "step", "model", "memory", "optimizer", "scheduler", "scaler", "rng", "n_data")


def restore(run: Run, ckpt: dict, path: Path) -> None:
    """Put the run in the state ``ckpt`` (loaded from ``path``) describes; anything that does not fit is a
    one-line `CheckpointError` naming the file."""
    if ckpt["n_data"] != run.dataset.n_videos:
        raise checkpoint.CheckpointError(
            f"checkpoint {path} banks have {ckpt['n_data']} rows, the training list now has {run.dataset.n_videos} videos")
    checkpoint.load_state(run.encoder, ckpt["model"], "the model", path)
    checkpoint.load_state(run.memory, ckpt["memory"], "the memory banks", path)
    load_states(ckpt, path, optimizer=run.optimizer, scheduler=run.scheduler, scaler=run.scaler)
    try:
        torch.set_rng_state(ckpt["rng"]["torch"])
        if "cuda" in ckpt["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
        epoch, step = int(ckpt["epoch"]), int(ckpt["step"])
    except Exception as err:  # a damaged or foreign RNG state or counters
        raise checkpoint.CheckpointError(f"cannot resume from {path}: {checkpoint.describe_error(err)}") from None
    run.epoch, run.step = epoch, step


def check_resumable(cfg: TrainConfig, ckpt: dict, path: Path) -> None:
    """The saved config must match, except for what may change between sessions (workers, device) and for
    places: the run folder is where ``path`` is, the data is compared by identity (model/resume.py)."""
    free = {"workers", "device", "amp", "log_every", "monitor_every", "threads", "out", "data", "skip_corrupt"}
    saved = ckpt["config"]
    if not isinstance(saved, dict):
        raise checkpoint.CheckpointError(f"{path} is not an `iic train` checkpoint: its config is a "
                                         f"{type(saved).__name__}, not a dict")
    refuse_changes(saved, cfg.to_dict(), free, path)
    check_data(ckpt.get("data_identity") or {}, saved.get("data"), cfg.data, path)


# ----------------------------------------------------------------------------------------------------------
# the loop


def train_one_epoch(run: Run, bar: tqdm | None, runlog: RunLog) -> Meter:
    cfg, device = run.cfg, run.device
    run.net.train()
    run.memory.train()
    run.sampler.set_epoch(run.epoch)
    meter, window = Meter(), Meter()
    t_end = time.perf_counter()
    for i, batch in enumerate(worker_errors(run.loader)):
        t_data = time.perf_counter()
        if not run.corrupt.add(batch):  # every clip of the batch was corrupt: the schedule moves on without it
            run.scheduler.step()
            run.step += 1
            continue
        batch = {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}
        gen = step_generator(cfg, run.epoch, i)
        with torch.autocast(device.type, dtype=torch.float16, enabled=run.scaler.is_enabled()):
            loss = run.step_fn(run.net, run.memory, batch, cfg, gen, device)
        ensure_finite(loss, f"epoch {run.epoch + 1} step {run.step}", TrainingError)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.scheduler.step()
        run.step += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t_step = time.perf_counter()
        clips = batch["rgb"].shape[0] * run.dist.world
        for m in (meter, window):
            m.update(loss.item(), clips, t_data - t_end, t_step - t_data)
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"loss {window.loss:.3f}  {window.clips_per_s:.1f} clips/s  data {100 * window.data_share:.0f}%")
        if run.step % cfg.log_every == 0:
            runlog.write(run.step, epoch=run.epoch + 1, loss=window.loss, lr=run.optimizer.param_groups[0]["lr"],
                         clips_per_s=window.clips_per_s, data_share=window.data_share)
            window.reset()
        t_end = time.perf_counter()
    return meter


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> Path:
    """Train; returns the path of the final checkpoint. See the module docstring for determinism.
    ``progress=False``: no progress bar (runs side by side, `model/sweep.py`)."""
    with cpu_threads(cfg.threads):
        return _train(cfg, resume, progress)


def _train(cfg: TrainConfig, resume: bool, progress: bool) -> Path:
    run = build_run(cfg)
    run.data_identity = data_identity(cfg.data, "flow" in cfg.modalities)
    out, main = Path(cfg.out), run.dist.main
    last, final = out / "last.pt", out / "final.pt"
    if resume:
        ckpt = checkpoint.load(last, RESUME_KEYS, "an `iic train` checkpoint")
        check_resumable(cfg, ckpt, last)
        restore(run, ckpt, last)
        log.info("resumed from %s at epoch %d", last, run.epoch)
    elif main:
        refuse_existing(last, "a run")
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        log.info("config: %s", json.dumps(cfg.to_dict()))
        log.info("%d training videos, %d steps/epoch, device %s, world %d, %d CPU threads",
                 run.dataset.n_videos, len(run.loader), run.device, run.dist.world, torch.get_num_threads())
    runlog = RunLog(out, enabled=main)
    chance = (iic_chance_loss(cfg.K, cfg.neg != "none", cfg.live_negative,
                              cfg.batch_size * run.dist.world if cfg.batch_negatives else 0)
              if cfg.method == "iic" else None)
    monitor = Monitor(cfg, run.device, progress=progress) if main and cfg.monitor_every > 0 else None
    if monitor is not None and run.epoch == 0:  # the untrained network: the baseline the curve is read against
        runlog.write(0, epoch=0, **monitor(run.encoder.backbone))
    bar = tqdm(total=len(run.loader) * cfg.epochs, initial=len(run.loader) * run.epoch, unit="step",
               dynamic_ncols=True, disable=not (main and progress))
    try:
        while run.epoch < cfg.epochs:
            meter = train_one_epoch(run, bar if main else None, runlog)
            run.epoch += 1
            epoch_loss = all_reduce_mean(meter.loss, run.device)
            if main:
                runlog.write(run.step, epoch=run.epoch, epoch_loss=epoch_loss, lr=run.optimizer.param_groups[0]["lr"],
                             clips_per_s=meter.clips_per_s, data_share=meter.data_share,
                             **({"chance_loss": chance} if chance is not None else {}))
                if monitor is not None and monitor.due(run.epoch):
                    runlog.write(run.step, epoch=run.epoch, **monitor(run.encoder.backbone))
                checkpoint.save_atomic(state_dict(run), last)
            barrier()
        divergence = max_divergence(list(run.memory.buffers()))
        if divergence > 0:
            raise TrainingError(f"ranks hold different memory state (max difference {divergence:.3g})")
        if run.corrupt.videos:
            log.warning("%s", run.corrupt.summary())
        if main:
            checkpoint.save_atomic(state_dict(run), final)
            plot_curves(out / "metrics.jsonl", out / "curves.png",
                        title=f"{out.name}: {cfg.method} {cfg.model} {cfg.view2}/{cfg.neg}",
                        chance_top1=monitor.chance_top1 if monitor is not None else None)
    finally:
        bar.close()
        runlog.close()
        shutdown_workers(run.loader)
        cleanup()
    return final


def shutdown_workers(loader: DataLoader) -> None:
    """Stop a loader's persistent workers now. The loader and its iterator reference each other, so they are
    otherwise freed only by a later garbage collection, possibly inside a process forked in the meantime
    (the next run's workers), where the iterator's __del__ fails ("can only test a child process")."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    loader._iterator = None


