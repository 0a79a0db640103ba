"""Distributed helpers configured from torchrun's environment (world size 1 when not launched by it), and
the CPU thread count a piece of work runs with."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


@contextmanager
def cpu_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (0: leave the setting), then restore it. CPU results
    are bit-identical only for the same count."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def init_distributed(device_type: str) -> Dist:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): NCCL on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


class DeviceError(ValueError):
    """The asked-for device is not available (one-line message)."""


def resolve_device(name: str, d: Dist = Dist()) -> torch.device:
    """``auto`` = CUDA when available (one GPU per local rank), else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {name}: CUDA is not available")
        device = torch.device("cuda", d.local_rank) if name == "cuda" else torch.device(name)
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def all_reduce_mean(value: float, device: torch.device) -> float:
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], device=device, dtype=torch.float64)
    dist.all_reduce(t)
    return t.item() / dist.get_world_size()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def ranks_disagree(tensors: list[torch.Tensor]) -> str:
    """Whether every process holds the same ``tensors`` as rank 0 ("" when they do, or at world size 1), in
    the same words on every rank. Cheap enough for every epoch: each rank reduces each tensor to its sum and
    its sum of squares (float64) and compares those with rank 0's. Collectives run on the tensors' own
    device (NCCL refuses CPU tensors)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1 or not tensors:
        return ""
    mine = torch.stack(
        [torch.stack([t.detach().double().sum(), t.detach().double().square().sum()]) for t in tensors]
    )  # (n, 2)
    ref = mine.clone()
    dist.broadcast(ref, src=0)
    differ = (ref != mine).any(dim=1).sum()
    dist.all_reduce(differ, op=dist.ReduceOp.MAX)
    n = int(differ.item())
    return f"{n} of {len(tensors)} tensors differ from rank 0's" if n else ""


def sum_over_ranks(x: np.ndarray, device: torch.device) -> np.ndarray:
    """The sum of ``x`` over every process (the array itself at world size 1), through ``device``."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    t = torch.from_numpy(np.ascontiguousarray(x)).to(device)
    dist.all_reduce(t)
    return t.cpu().numpy()


def gather_from_ranks(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` (same shape on every rank) from all ranks along dim 0, without gradient.

    Returns ``t`` unchanged when torch.distributed is not initialised (world size 1).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=0)


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather (B, ...) from every rank into (world*B, ...), keeping the gradient to the local part.

    Falls back to the identity when torch.distributed is not initialised or world size is 1.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather  # autograd-aware all_gather

    return torch.cat(all_gather(x), dim=0)
