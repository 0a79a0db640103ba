"""DualVar (Zhang et al., BMVC 2021): clip contrast + temporal-coherent contrast + shuffle-rank.

    L = w_clip L_clip(v0, v1) + w_tc L_tc(v0, v1) + 0.5 L_rank(v0, restored v2) + 0.5 L_rank(v2, restored v2)

v0, v1: 16-frame clips from two random times of the same video; v2: an unshuffled copy of v0 (its own
augmentation); the shuffled v2 has its S segments permuted, is encoded, and its slots are put back in
original segment order ("calibration") before ranking. Heads and the MoCo queue hold state (modules);
the losses are pure functions. Choices follow the official code, lzhangbj/DualVar ``model/simclr.py``
(``SimCLR_TimeSeriesV4``) and ``model/moco.py`` (``MoCo_TimeSeriesV4``):

* heads: Linear-ReLU-Linear (the official 1x1x1 Conv3d-ReLU-Conv3d on pooled features), no BatchNorm;
* L_tc: clip similarity = mean over the S x S slot dot products = (mean slot of a) . (mean slot of b),
  NOT re-normalised (official ``series_similarity_matrix.mean(dim=(2,3))``);
* L_rank: 2S x 2S cosine matrix of both members' slots; every one of the 2S slots is an anchor, its
  positive is the same segment in the other member, its negatives are ALL other slots of both members
  (2S-2 of them: for S=2 the other slot of its own member and the other slot of the other member);
  loss = mean softplus(min((s_neg - s_pos) / theta, clamp)) over B * 2S * (2S-2) terms;
* shuffling draws a uniform permutation per sample, identity included (official
  ``np.random.permutation``); ``allow_identity=False`` excludes it.

The module reads top to bottom as the method: its config (`DualVarConfig` and SimCLR's augmentation, in
model/config/sections.py), its state (the network with both heads; the MoCo variant's key encoder and queues,
checkpointed with the run), the losses (pure functions), one training step, and `build` for the training
loop (``iic train --method dualvar``). The loader yields two clips per video (``rgb``, ``rgb_1``;
model/data/clips.py); each view gets its own SimCLR augmentation (model/data/augment.py).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from ..config import MODALITIES, DualVarConfig, SimCLRAugmentConfig, TrainConfig
from ..data import augment
from ..data.views import view_input
from ..distributed import gather_from_ranks, gather_with_grad
from ..nets.backbones import build_backbone
from ..nets.heads import ProjectionHead

__all__ = [
    "DualVarConfig",
    "DualVarState",
    "MoCoQueue",
    "nt_xent",
    "temporal_coherent_loss",
    "rank_loss",
    "dualvar_loss",
    "dualvar_step",
    "build",
]

Gather = Callable[[torch.Tensor], torch.Tensor]

# -------------------------------------------------------------------------------------------- config
# `DualVarConfig` (model/config/sections.py, torch-free): heads, temperatures, weights, the MoCo variant; and
# `SimCLRAugmentConfig`, the augmentation of every view.


# -------------------------------------------------------------------------------------------- state


class DualVarNet(nn.Module):
    """Backbone + clip head + series head. ``forward(x)`` with x (N, 3, T, h, w) returns the clip
    embeddings (N, clip_dim) and the segment slots (N, S, slot_dim). The heads read ``backbone.out_dim``
    (512 for the paper's backbones, 64 for the tiny ones); hidden width = in_dim as in the paper."""

    def __init__(self, model: str, cfg: DualVarConfig) -> None:
        super().__init__()
        self.backbone = build_backbone(model)
        d = self.backbone.out_dim
        self.clip_head = ProjectionHead(d, d, cfg.clip_dim)  # (N, clip_dim) unit vectors
        self.series_head = ProjectionHead(
            d, d, cfg.slot_dim, slots=cfg.n_segments
        )  # (N, S, slot_dim), unit slots

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.backbone(x)["pool"]  # (N, out_dim)
        return self.clip_head(f), self.series_head(f)


class DualVarState(nn.Module):
    """What DualVar keeps besides the trained network: for the MoCo variant the momentum (key) encoder
    and the two key queues (module state, so checkpoints save and restore it); nothing for SimCLR."""

    def __init__(self, net: DualVarNet, cfg: DualVarConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.key_net: DualVarNet | None = None
        if cfg.clip_loss == "moco":
            self.key_net = copy.deepcopy(net)  # starts equal to the query network, as MoCo
            for p in self.key_net.parameters():
                p.requires_grad_(False)
            self.clip_queue = MoCoQueue(cfg.clip_dim, cfg.moco_k, generator)
            self.slot_queue = MoCoQueue(cfg.n_segments * cfg.slot_dim, cfg.moco_k, generator)


class MoCoQueue(nn.Module):
    """FIFO queue of K momentum-encoder keys (K, D), rows unit norm; state lives in buffers."""

    def __init__(self, dim: int, k: int = 16384, generator: torch.Generator | None = None):
        super().__init__()
        self.register_buffer("queue", F.normalize(torch.randn(k, dim, generator=generator), dim=1))
        self.register_buffer("ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Replace the oldest rows with ``keys`` (N, D), gathered from every rank so all ranks agree."""
        k = self.queue.shape[0]
        keys = keys.detach().to(self.queue.dtype)[-k:]
        n = keys.shape[0]
        ptr = int(self.ptr)
        rows = (ptr + torch.arange(n, device=self.queue.device)) % k  # wraps around: no K % N requirement
        self.queue[rows] = keys
        self.ptr[0] = (ptr + n) % k


@torch.no_grad()
def momentum_update(model_q: nn.Module, model_k: nn.Module, m: float = 0.999) -> None:
    """theta_k <- m theta_k + (1 - m) theta_q for every parameter (buffers untouched, as in MoCo)."""
    params_q, params_k = list(model_q.parameters()), list(model_k.parameters())
    if len(params_q) != len(params_k):
        raise ValueError("query and key models have different parameter lists")
    for p_q, p_k in zip(params_q, params_k, strict=True):
        if p_q.shape != p_k.shape:
            raise ValueError(f"parameter shape mismatch {tuple(p_q.shape)} vs {tuple(p_k.shape)}")
        p_k.mul_(m).add_(p_q.detach(), alpha=1.0 - m)


# -------------------------------------------------------------------------------------------- loss


def _resolve_rank(rank: int | None) -> int:
    if rank is not None:
        return rank
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def nt_xent(
    a: torch.Tensor,
    b: torch.Tensor,
    tau: float = 0.07,
    *,
    a_all: torch.Tensor | None = None,
    b_all: torch.Tensor | None = None,
    gather: Gather | None = None,
    rank: int | None = None,
) -> torch.Tensor:
    """SimCLR NT-Xent over 2N samples; positives are (i, i+N); self-similarity excluded.

    a, b: (B, D) local embeddings of the two views (assumed L2-normalised; the dot product is used as is).
    Negatives: every other sample of both views across all ranks, N = world * B. Pass either the
    already-gathered a_all, b_all (N, D), or a ``gather`` callable (e.g. :func:`gather_with_grad`);
    neither = world size 1. The local rows are the anchors (2B of them) and ``rank`` (default: the
    torch.distributed rank, else 0) locates them in the gathered batch, so the per-rank losses average
    to the full-batch loss. Returns the mean cross-entropy over the local anchors (scalar).
    """
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"a and b must both be (B, D), got {tuple(a.shape)} and {tuple(b.shape)}")
    if gather is not None:
        if a_all is not None or b_all is not None:
            raise ValueError("pass either gather or a_all/b_all, not both")
        a_all, b_all = gather(a), gather(b)
    if a_all is None or b_all is None:
        a_all, b_all, offset = a, b, 0
    else:
        offset = _resolve_rank(rank) * a.shape[0]
    n_local, n_all = a.shape[0], a_all.shape[0]
    if b_all.shape[0] != n_all or offset + n_local > n_all:
        raise ValueError("gathered tensors do not match the local batch and rank")

    anchors = torch.cat([a, b])  # (2B, D)
    candidates = torch.cat([a_all, b_all])  # (2N, D)
    logits = anchors @ candidates.T / tau  # (2B, 2N)
    local = torch.arange(n_local, device=a.device) + offset  # global index of each local sample
    self_idx = torch.cat([local, local + n_all])  # where each anchor sits among the candidates
    pos_idx = torch.cat([local + n_all, local])  # its other view
    rows = torch.arange(2 * n_local, device=a.device)
    minus_inf = torch.full((), float("-inf"), dtype=logits.dtype, device=logits.device)
    logits = logits.index_put((rows, self_idx), minus_inf)  # drop self-similarity
    return F.cross_entropy(logits, pos_idx)


def segment_mean(slots: torch.Tensor) -> torch.Tensor:
    """(B, S, d) slots -> (B, d) mean slot, NOT re-normalised: a.b = mean of the S x S slot dot products."""
    return slots.mean(dim=1)


def temporal_coherent_loss(
    slots_a: torch.Tensor,
    slots_b: torch.Tensor,
    tau: float = 0.07,
    *,
    gather: Gather | None = None,
    rank: int | None = None,
) -> torch.Tensor:
    """L_tc: NT-Xent on the (un-normalised) mean of each clip's segment slots, (B, S, d) x 2 -> scalar."""
    return nt_xent(segment_mean(slots_a), segment_mean(slots_b), tau, gather=gather, rank=rank)


def rank_loss(
    ref_slots: torch.Tensor, restored_slots: torch.Tensor, theta: float = 0.05, clamp: float = 5.0
) -> torch.Tensor:
    """Shuffle-rank loss of (reference, restored) slot pairs, (B, S, d) x 2 -> scalar.

    Per pair the 2S slot vectors [ref_0..ref_{S-1}, res_0..res_{S-1}] give a (2S, 2S) cosine matrix; for
    anchor i the positive is the same segment in the other member (i +- S), the negatives are the 2S-2
    remaining off-diagonal entries of row i. Loss = mean softplus(min((s_neg - s_pos) / theta, clamp)):
    beyond the clamp the gradient is zero (official SimCLR_TimeSeriesV4.calc_ranking_loss).
    """
    if ref_slots.shape != restored_slots.shape or ref_slots.ndim != 3:
        raise ValueError("ref_slots and restored_slots must both be (B, S, d)")
    bsz, s, _ = ref_slots.shape
    v = F.normalize(torch.cat([ref_slots, restored_slots], dim=1), dim=2)  # (B, 2S, d)
    sim = v @ v.transpose(1, 2)  # (B, 2S, 2S)
    idx = torch.arange(2 * s, device=v.device)
    pos_col = (idx + s) % (2 * s)
    s_pos = sim[:, idx, pos_col].unsqueeze(2)  # (B, 2S, 1)
    neg_mask = (idx[None, :] != idx[:, None]) & (idx[None, :] != pos_col[:, None])  # (2S, 2S)
    s_neg = sim[:, neg_mask].view(bsz, 2 * s, 2 * s - 2)  # row-major: row i's negatives together
    return F.softplus(((s_neg - s_pos) / theta).clamp(max=clamp)).mean()


def moco_logits(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, tau: float = 0.07) -> torch.Tensor:
    """(B, 1+K) logits, target 0: [q.k, q.queue_1..K] / tau. q, k: (B, D) unit; queue: (K, D), no gradient."""
    pos = (q * k).sum(dim=1, keepdim=True)  # (B, 1)
    neg = q @ queue.detach().T  # (B, K)
    return torch.cat([pos, neg], dim=1) / tau


def moco_tc_logits(
    q_slots: torch.Tensor, k_slots: torch.Tensor, slot_queue: torch.Tensor, tau: float = 0.07
) -> torch.Tensor:
    """MoCo form of L_tc (official MoCo_TimeSeriesV4): (B, 1+K) logits on mean slots, target 0.

    q_slots, k_slots: (B, S, d); slot_queue: (K, S*d) flattened key slots.
    """
    s, d = q_slots.shape[1:]
    queue_means = slot_queue.view(-1, s, d).mean(dim=1)  # (K, d)
    return moco_logits(segment_mean(q_slots), segment_mean(k_slots), queue_means, tau)


def dualvar_loss(
    clip0: torch.Tensor,
    clip1: torch.Tensor,
    slots0: torch.Tensor,
    slots1: torch.Tensor,
    slots2: torch.Tensor,
    restored2: torch.Tensor,
    cfg: DualVarConfig,
    *,
    clip_queue: torch.Tensor | None = None,
    slot_queue: torch.Tensor | None = None,
    gather: Gather | None = None,
    rank: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total DualVar loss and its parts {"clip", "tc", "rank_v0", "rank_v2"} (unweighted).

    clip0, clip1: (B, clip_dim) clip-head outputs of views 0 and 1 (for cfg.clip_loss == "moco", clip1 and
    slots1 are the momentum encoder's keys and clip_queue (K, clip_dim), slot_queue (K, S*d) the queues).
    slots0, slots1, slots2: (B, S, d) series-head outputs of views 0, 1 and the unshuffled view 2.
    restored2: (B, S, d) slots of the shuffled view 2 after :func:`restore_order`.
    """
    if cfg.clip_loss == "moco":
        if clip_queue is None or slot_queue is None:
            raise ValueError("the moco variant needs clip_queue and slot_queue")
        target = torch.zeros(clip0.shape[0], dtype=torch.long, device=clip0.device)
        l_clip = F.cross_entropy(moco_logits(clip0, clip1, clip_queue, cfg.tau_clip), target)
        l_tc = F.cross_entropy(moco_tc_logits(slots0, slots1, slot_queue, cfg.tau_tc), target)
    else:
        l_clip = nt_xent(clip0, clip1, cfg.tau_clip, gather=gather, rank=rank)
        l_tc = temporal_coherent_loss(slots0, slots1, cfg.tau_tc, gather=gather, rank=rank)
    parts = {
        "clip": l_clip,
        "tc": l_tc,
        "rank_v0": rank_loss(slots0, restored2, cfg.theta, cfg.rank_clamp),
        "rank_v2": rank_loss(slots2, restored2, cfg.theta, cfg.rank_clamp),
    }
    total = (
        cfg.w_clip * parts["clip"]
        + cfg.w_tc * parts["tc"]
        + cfg.w_rank_v0 * parts["rank_v0"]
        + cfg.w_rank_v2 * parts["rank_v2"]
    )
    return total, parts


# -------------------------------------------------------------------------------------------- step


def random_permutations(
    batch: int,
    n_segments: int,
    generator: torch.Generator | None = None,
    allow_identity: bool = True,
    device: torch.device | None = None,
) -> torch.Tensor:
    """(batch, S) int64: an independent uniform permutation of range(S) per row.

    With ``allow_identity=False`` identity rows are redrawn (uniform over the S! - 1 others).
    """
    gen_device = generator.device if generator is not None else torch.device("cpu")
    perm = torch.argsort(torch.rand(batch, n_segments, generator=generator, device=gen_device), dim=1)
    if not allow_identity:
        identity = torch.arange(n_segments, device=gen_device)
        while True:
            redo = (perm == identity).all(dim=1)
            if not redo.any():
                break
            fresh = torch.rand(int(redo.sum()), n_segments, generator=generator, device=gen_device)
            perm[redo] = torch.argsort(fresh, dim=1)
    return perm.to(device) if device is not None else perm


def shuffle_segments(
    clip: torch.Tensor,
    n_segments: int = 2,
    generator: torch.Generator | None = None,
    allow_identity: bool = True,
    perm: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split T into S equal segments and permute them per sample.

    clip: (B, C, T, H, W), T divisible by S. Returns (shuffled (B, C, T, H, W), perm (B, S)) where segment j
    of the shuffled clip is segment ``perm[b, j]`` of the original. ``perm`` may be given (tests, replay).
    """
    bsz, c, t, h, w = clip.shape
    if t % n_segments:
        raise ValueError(f"T={t} is not divisible by n_segments={n_segments}")
    if perm is None:
        perm = random_permutations(bsz, n_segments, generator, allow_identity)
    perm = perm.to(clip.device, torch.long)
    if perm.shape != (bsz, n_segments):
        raise ValueError(f"perm must be ({bsz}, {n_segments}), got {tuple(perm.shape)}")
    seg = clip.reshape(bsz, c, n_segments, t // n_segments, h, w)
    index = perm.view(bsz, 1, n_segments, 1, 1, 1).expand_as(seg)
    return torch.gather(seg, 2, index).reshape(bsz, c, t, h, w), perm


def restore_order(slots: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Calibration: slots (B, S, d) of a shuffled clip -> slots in original segment order.

    Slot j of the shuffled clip describes original segment perm[b, j]:
    restored[b, perm[b, j]] = slots[b, j].
    """
    perm = perm.to(slots.device, torch.long)
    index = perm.unsqueeze(-1).expand_as(slots)
    return torch.zeros_like(slots).scatter(1, index, slots)


def _unwrap(net: nn.Module) -> nn.Module:
    return net.module if isinstance(net, DistributedDataParallel) else net


@torch.no_grad()
def _sync_buffers(module: nn.Module) -> None:
    """Rank 0's buffers (BN statistics) everywhere, as DDP's broadcast_buffers does for the query net."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for b in module.buffers():
            dist.broadcast(b, 0)


def make_views(
    batch: dict,
    aug: SimCLRAugmentConfig,
    view2: str,
    n_segments: int,
    generator: torch.Generator,
    device: torch.device,
    allow_identity: bool = True,
) -> dict[str, torch.Tensor]:
    """The encoder inputs of a pair batch (uint8 clips on ``device``): x0 = clip 0, x1 = clip 1 as
    ``view2`` (rgb = the paper; res/flow = IIC's cross-modal view of clip 1), x2 = clip 0 again with its
    own augmentation, x2s = x2 with its S segments permuted by ``perm`` (B, S). Each view draws its own
    SimCLR parameters from ``generator`` in this order: x0, x1, x2, then perm. Inputs (B, 3, T, crop,
    crop)."""
    modalities = [m for m in MODALITIES if m in batch]
    clip0 = augment.clips_of(batch, modalities)
    clip1 = augment.clips_of(batch, modalities, "_1")
    B, hw = batch["rgb"].shape[0], augment.batch_hw(batch)

    def view(raw: dict, kind: str) -> torch.Tensor:
        need = {"rgb": ["rgb"], "res": ["res"], "res-aligned": ["rgb", "prev", "camera"]}.get(kind, ["flow"])
        params = augment.sample_simclr_params(B, hw, aug, generator, device)
        return view_input(augment.apply_simclr({m: raw[m] for m in need}, params, aug), kind)

    x0, x1, x2 = view(clip0, "rgb"), view(clip1, view2), view(clip0, "rgb")
    x2s, perm = shuffle_segments(x2, n_segments, generator, allow_identity)
    return {"x0": x0, "x1": x1, "x2": x2, "x2s": x2s, "perm": perm.to(device)}


def dualvar_step(
    net: nn.Module,
    state: DualVarState,
    batch: dict,
    cfg: TrainConfig,
    gen: torch.Generator,
    device: torch.device,
) -> torch.Tensor:
    """One DualVar loss on a pair batch (see :func:`make_views`).

    All views go through the encoder as ONE batch (SimCLR's BatchNorm over every view, so batch statistics
    cannot tell the views apart; one forward per backward for DDP). MoCo variant: view 1 is encoded by the
    momentum encoder (updated first, as MoCo), and its keys are enqueued after the loss. The losses run in
    fp32 even under autocast: unit vectors divided by tau = 0.07 in fp16 lose the differences the losses
    are made of (the networks' forward stays in mixed precision).
    """
    dv, aug = cfg.dualvar, cfg.simclr
    with torch.autocast(device.type, enabled=False):  # augmentation in fp32 (its blur is a convolution)
        v = make_views(batch, aug, cfg.view2, dv.n_segments, gen, device, dv.allow_identity_shuffle)
    B = v["x0"].shape[0]
    if dv.clip_loss == "moco":
        z, slots = net(torch.cat([v["x0"], v["x2"], v["x2s"]]))
        z, slots = z.float(), slots.float()
        z0, s0, s2, s2s = z[:B], slots[:B], slots[B : 2 * B], slots[2 * B :]
        with torch.no_grad():
            momentum_update(_unwrap(net), state.key_net, dv.moco_m)
            k1, ks1 = (t.float() for t in state.key_net(v["x1"]))
            _sync_buffers(state.key_net)
        with torch.autocast(device.type, enabled=False):
            # clones: the enqueue below writes the queues in place before the loop's backward reads them
            loss, _ = dualvar_loss(
                z0,
                k1,
                s0,
                ks1,
                s2,
                restore_order(s2s, v["perm"]),
                dv,
                clip_queue=state.clip_queue.queue.clone(),
                slot_queue=state.slot_queue.queue.clone(),
            )
        state.clip_queue.enqueue(gather_from_ranks(k1))
        state.slot_queue.enqueue(gather_from_ranks(ks1.flatten(1)))
        return loss
    z, slots = net(torch.cat([v["x0"], v["x1"], v["x2"], v["x2s"]]))
    z, slots = z.float(), slots.float()
    z0, z1 = z[:B], z[B : 2 * B]
    s0, s1, s2, s2s = slots.split(B)
    with torch.autocast(device.type, enabled=False):
        loss, _ = dualvar_loss(z0, z1, s0, s1, s2, restore_order(s2s, v["perm"]), dv, gather=gather_with_grad)
    return loss


# -------------------------------------------------------------------------------------------- build


def build(cfg: TrainConfig, n_data: int) -> tuple[nn.Module, nn.Module, Callable]:
    """DualVar for the training loop: (DualVarNet with ``.backbone``, DualVarState, :func:`dualvar_step`).
    ``n_data`` is unused (no memory banks)."""
    dv = cfg.dualvar
    net = DualVarNet(cfg.model, dv)
    state = DualVarState(net, dv, generator=torch.Generator().manual_seed(cfg.seed))
    return net, state, dualvar_step
