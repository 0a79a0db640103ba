"""The loop every training run of the core shares: ``iic train`` (a method's self-supervised step) and
``iic eval recognition`` (fine-tuning with labels) are a `Loop` each, with their own step and checkpoint
contents around it.

A step draws its random numbers (crops, intra-negatives, bank indices) from a generator seeded with (the
loop's seed, epoch, step index within the epoch, and the rank under torchrun), never from global state, so a
resumed run continues exactly as the uninterrupted one (CPU, same thread count). The loop never waits on the
device to time a step: the loss is summed on the device and read at the log interval and the epoch's end.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from .. import checkpoint
from ..data.clips import CorruptTally, EpochSampler, clip_seed, worker_errors
from .runlog import Meter, ensure_finite


def cosine(step: int, start: int, end: int) -> float:
    """The factor of a cosine decay from 1 at ``start`` to 0 at ``end`` (optimiser steps)."""
    return 0.5 * (1.0 + math.cos(math.pi * (step - start) / max(1, end - start)))


class TrainingError(RuntimeError):
    """Training cannot go on (one-line message); the last good checkpoint is kept."""


@dataclass
class Loop:
    """One training loop: the network and its optimiser, the data, and ``step_fn(batch, generator) -> loss``
    on a batch already on ``device``."""

    net: nn.Module  # what the step calls (DDP-wrapped under torchrun)
    module: nn.Module  # the unwrapped network: saved and restored
    optimizer: torch.optim.Optimizer
    loader: DataLoader
    sampler: EpochSampler
    device: torch.device
    seed: int  # of the step generators
    step_fn: Callable[[dict, torch.Generator], Tensor]
    state: nn.Module | None = None  # what the method keeps that SGD does not train (banks, queues)
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = (
        None  # stepped after every step (else: the caller's)
    )
    scaler: torch.amp.GradScaler = field(default_factory=lambda: torch.amp.GradScaler("cuda", enabled=False))
    rank: int = 0
    world: int = 1
    epoch: int = 0
    step: int = 0
    corrupt: CorruptTally = field(default_factory=CorruptTally)  # clips left out by --skip-corrupt

    def generator(self, index: int) -> torch.Generator:
        """The random numbers of the ``index``-th step of the current epoch (on this rank)."""
        return torch.Generator().manual_seed(clip_seed(self.seed, self.epoch, index, self.rank))

    def train_epoch(
        self,
        bar: tqdm | None = None,
        log: Callable[[Meter], None] | None = None,
        log_every: int = 0,
        until: float | None = None,
    ) -> Meter:
        """One pass over the loader; ``log(window)`` every ``log_every`` steps. Returns the epoch's meter.
        ``until``: stop after the step that ends past this `time.perf_counter` (a timed measurement)."""
        self.net.train()
        if self.state is not None:
            self.state.train()
        self.sampler.set_epoch(self.epoch)
        meter, window = Meter(self.device), Meter(self.device)
        autocast = self.scaler.is_enabled()
        t_end = time.perf_counter()
        for i, batch in enumerate(worker_errors(self.loader)):
            t_data = time.perf_counter()
            if not self.corrupt.add(
                batch
            ):  # every clip of the batch was corrupt: the schedule moves on without it
                self._advance()
                continue
            batch = {
                k: v.to(self.device, non_blocking=True) if isinstance(v, Tensor) else v
                for k, v in batch.items()
            }
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=autocast):
                loss = self.step_fn(batch, self.generator(i))
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self._advance()
            clips = batch["index"].shape[0] * self.world
            t_step = time.perf_counter()
            for m in (meter, window):
                m.update(loss.detach(), clips, t_data - t_end, t_step - t_data)
            if bar is not None:
                bar.update(1)
            if log_every and self.step % log_every == 0:
                ensure_finite(window.loss, f"epoch {self.epoch + 1} step {self.step}", TrainingError)
                if bar is not None:
                    bar.set_postfix_str(
                        f"loss {window.loss:.3f}  {window.clips_per_s:.1f} clips/s  "
                        f"data {100 * window.data_share:.0f}%"
                    )
                if log is not None:
                    log(window)
                window.reset()
            t_end = time.perf_counter()
            if until is not None and t_end > until:
                break
        ensure_finite(meter.loss, f"epoch {self.epoch + 1}", TrainingError)
        return meter

    def _advance(self) -> None:
        if self.scheduler is not None:
            self.scheduler.step()
        self.step += 1

    def state_dict(self) -> dict:
        """The loop's part of a checkpoint."""
        return {
            "epoch": self.epoch,
            "step": self.step,
            "model": self.module.state_dict(),
            **({"memory": self.state.state_dict()} if self.state is not None else {}),
            "optimizer": self.optimizer.state_dict(),
            **({"scheduler": self.scheduler.state_dict()} if self.scheduler is not None else {}),
            "scaler": self.scaler.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                **({"cuda": torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else {}),
            },
        }

    def load_state_dict(self, ckpt: dict, path: Path, scheduler: object | None = None) -> None:
        """Put the loop in the state ``ckpt`` (loaded from ``path``) describes; ``scheduler``: the caller's
        own (stepped per epoch) when the loop has none. Anything that does not fit is a one-line
        CheckpointError."""
        checkpoint.load_state(self.module, ckpt["model"], "the model", path)
        if self.state is not None:
            checkpoint.load_state(
                self.state, ckpt["memory"], "the method's state (memory banks, queues)", path
            )
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            if self.scheduler is not None or scheduler is not None:
                (self.scheduler or scheduler).load_state_dict(ckpt["scheduler"])
            if "scaler" in ckpt:
                self.scaler.load_state_dict(ckpt["scaler"])
            if "rng" in ckpt:
                torch.set_rng_state(ckpt["rng"]["torch"])
                if "cuda" in ckpt["rng"] and torch.cuda.is_available():
                    torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
            self.epoch = int(ckpt["epoch"])
            self.step = int(ckpt["step"]) if "step" in ckpt else self.epoch * len(self.loader)
        except Exception as err:  # a damaged or foreign optimiser / scheduler / RNG state or counters
            raise checkpoint.CheckpointError(
                f"cannot resume from {path}: {checkpoint.describe_error(err)}"
            ) from None


def shutdown_workers(loader: DataLoader) -> None:
    """Stop a loader's persistent workers now. The loader and its iterator reference each other, so they are
    otherwise freed only by a later garbage collection, possibly inside a process forked in the meantime
    (the next run's workers), where the iterator's __del__ fails ("can only test a child process")."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    loader._iterator = None
