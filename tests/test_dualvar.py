"""DualVar heads and losses checked against explicit-loop NumPy computations on small tensors."""

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from iic.model.config import DualVarConfig
from iic.model.methods.dualvar import (
    MoCoQueue,
    dualvar_loss,
    moco_logits,
    moco_tc_logits,
    momentum_update,
    nt_xent,
    random_permutations,
    rank_loss,
    restore_order,
    shuffle_segments,
    temporal_coherent_loss,
)
from iic.model.nets.heads import ProjectionHead


def unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def softplus(x):
    return math.log1p(math.exp(x))


def nt_xent_loops(a, b, tau):
    z = np.concatenate([a, b])
    n2 = len(z)
    half = n2 // 2
    total = 0.0
    for i in range(n2):
        pos = (i + half) % n2
        denom = sum(math.exp(z[i] @ z[j] / tau) for j in range(n2) if j != i)
        total += -math.log(math.exp(z[i] @ z[pos] / tau) / denom)
    return total / n2


def rank_loops(ref, res, theta, clamp):
    bsz, s, _ = ref.shape
    terms = []
    for b in range(bsz):
        v = [x / np.linalg.norm(x) for x in list(ref[b]) + list(res[b])]
        for i in range(2 * s):
            pos = i + s if i < s else i - s
            s_pos = v[i] @ v[pos]
            for j in range(2 * s):
                if j in (i, pos):
                    continue
                terms.append(softplus(min((v[i] @ v[j] - s_pos) / theta, clamp)))
    assert len(terms) == bsz * 2 * s * (2 * s - 2)
    return float(np.mean(terms))


# --------------------------------------------------------------------------------------- heads
def test_heads_output_unit_norm_and_shapes():
    torch.manual_seed(0)
    x = torch.randn(5, 32)
    z = ProjectionHead(32, 32, 128)(x)  # the clip head
    assert z.shape == (5, 128)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(5))
    slots = ProjectionHead(32, 32, 8, slots=3)(x)  # the series head
    assert slots.shape == (5, 3, 8)
    torch.testing.assert_close(slots.norm(dim=2), torch.ones(5, 3))
    head = ProjectionHead(32, 32, 128)
    assert [type(m).__name__ for m in head.mlp] == ["Linear", "ReLU", "Linear"]
    assert head.mlp[0].out_features == 32


# -------------------------------------------------------------------------------------- NT-Xent
def test_nt_xent_matches_loops():
    a, b = unit(4, 6, seed=1), unit(4, 6, seed=2)
    got = nt_xent(a, b, tau=0.5).item()
    assert got == pytest.approx(nt_xent_loops(a.numpy(), b.numpy(), 0.5), rel=1e-10)
    got = nt_xent(a, b, tau=0.07).item()
    assert got == pytest.approx(nt_xent_loops(a.numpy(), b.numpy(), 0.07), rel=1e-10)


def test_nt_xent_symmetric_and_lower_for_aligned_pairs():
    a, b = unit(8, 16, seed=3), unit(8, 16, seed=4)
    torch.testing.assert_close(nt_xent(a, b), nt_xent(b, a))
    aligned = F.normalize(a + 0.05 * unit(8, 16, seed=5), dim=1)
    assert nt_xent(a, aligned) < nt_xent(a, b)


def test_nt_xent_sharded_equals_full_batch():
    # Two simulated ranks: local anchors + gathered candidates; the mean over ranks is the full loss.
    a, b = unit(6, 5, seed=6), unit(6, 5, seed=7)
    full = nt_xent(a, b, tau=0.2)
    shards = [
        nt_xent(a[3 * r : 3 * r + 3], b[3 * r : 3 * r + 3], 0.2, a_all=a, b_all=b, rank=r) for r in (0, 1)
    ]
    torch.testing.assert_close((shards[0] + shards[1]) / 2, full)
    # gather callable form, and the world-size-1 fallback of the real gather helper
    from iic.model.distributed import gather_with_grad

    def gather(t):  # rank 1 of 2: the other rank's rows come first
        return torch.cat([a[:3] if torch.equal(t, a[3:]) else b[:3], t])

    sharded = nt_xent(a[3:], b[3:], 0.2, gather=gather, rank=1)
    torch.testing.assert_close(sharded, shards[1])
    torch.testing.assert_close(nt_xent(a, b, 0.2, gather=gather_with_grad), full)


def test_nt_xent_gradient_finite():
    a = unit(4, 6, seed=8).requires_grad_()
    b = unit(4, 6, seed=9)
    nt_xent(a, b).backward()
    assert torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------ L_tc
def test_temporal_coherent_loss_is_nt_xent_of_unnormalised_mean_slots():
    sa, sb = unit(5, 2, 4, seed=10), unit(5, 2, 4, seed=11)
    tau = 0.3
    # official form: clip similarity = mean of the S x S slot dot products
    z = np.concatenate([sa.numpy(), sb.numpy()])  # (2B, S, d)
    n2, half = len(z), len(z) // 2
    sim = np.zeros((n2, n2))
    for i in range(n2):
        for j in range(n2):
            sim[i, j] = np.mean([z[i, p] @ z[j, q] for p in range(2) for q in range(2)])
    expected = 0.0
    for i in range(n2):
        logits = [sim[i, j] / tau for j in range(n2) if j != i]
        expected += math.log(sum(math.exp(x) for x in logits)) - sim[i, (i + half) % n2] / tau
    expected /= n2
    assert temporal_coherent_loss(sa, sb, tau).item() == pytest.approx(expected, rel=1e-10)


# ------------------------------------------------------------------------------ shuffle / restore
def test_shuffle_identity_and_known_permutation():
    clip = torch.arange(2 * 1 * 4 * 1 * 1, dtype=torch.float32).view(2, 1, 4, 1, 1)  # T = 4, S = 2
    same, perm = shuffle_segments(clip, 2, perm=torch.tensor([[0, 1], [0, 1]]))
    torch.testing.assert_close(same, clip)
    swapped, perm = shuffle_segments(clip, 2, perm=torch.tensor([[1, 0], [0, 1]]))
    assert swapped[0, 0, :, 0, 0].tolist() == [2.0, 3.0, 0.0, 1.0]
    assert swapped[1, 0, :, 0, 0].tolist() == [4.0, 5.0, 6.0, 7.0]
    # S = 3 with a 3-cycle: shuffled segment j is original segment perm[j]
    clip3 = torch.arange(6, dtype=torch.float32).view(1, 1, 6, 1, 1)
    out, _ = shuffle_segments(clip3, 3, perm=torch.tensor([[2, 0, 1]]))
    assert out.flatten().tolist() == [4.0, 5.0, 0.0, 1.0, 2.0, 3.0]
    with pytest.raises(ValueError):
        shuffle_segments(clip3, 4)


def test_restore_order_inverts_the_shuffle():
    # "slots" read off each segment directly (segment mean): restoring must give the unshuffled slots.
    g = torch.Generator().manual_seed(0)
    clip = torch.randn(6, 2, 12, 3, 3, generator=g)

    def slots_of(x, s):
        return x.view(6, 2, s, 12 // s, 3, 3).mean(dim=(3, 4, 5)).transpose(1, 2)  # (B, S, C)

    for s in (2, 3, 4):
        shuffled, perm = shuffle_segments(clip, s, generator=g)
        torch.testing.assert_close(restore_order(slots_of(shuffled, s), perm), slots_of(clip, s))
    ident = torch.arange(3).expand(6, 3)
    slots = torch.randn(6, 3, 5, generator=g)
    torch.testing.assert_close(restore_order(slots, ident), slots)
    known = torch.tensor([[2, 0, 1]])
    restored = restore_order(torch.tensor([[[10.0], [20.0], [30.0]]]), known)
    assert restored.flatten().tolist() == [20.0, 30.0, 10.0]


def test_random_permutations_identity_option():
    g = torch.Generator().manual_seed(1)
    perm = random_permutations(400, 2, g)
    assert sorted(perm.sort(dim=1).values.unique(dim=0).flatten().tolist()) == [0, 1]
    frac_identity = (perm[:, 0] == 0).float().mean().item()
    assert 0.35 < frac_identity < 0.65  # identity included (official np.random.permutation)
    never = random_permutations(400, 3, g, allow_identity=False)
    assert not (never == torch.arange(3)).all(dim=1).any()
    assert (never.sort(dim=1).values == torch.arange(3)).all()


# ------------------------------------------------------------------------------------------ L_rank
def test_rank_loss_matches_loops():
    for s in (2, 3):
        ref, res = unit(3, s, 5, seed=20 + s), unit(3, s, 5, seed=30 + s)
        for theta, clamp in ((0.05, 5.0), (0.5, 5.0), (0.05, 1.0)):
            got = rank_loss(ref, res, theta, clamp).item()
            assert got == pytest.approx(rank_loops(ref.numpy(), res.numpy(), theta, clamp), rel=1e-10)


def test_rank_loss_s2_negatives_are_the_other_off_diagonal_slots():
    # 1-D slot space with hand-picked vectors: ref = (x0, x1), restored = (y0, y1).
    x0, x1 = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    y0, y1 = np.array([0.6, 0.8]), np.array([0.8, -0.6])
    ref = torch.tensor(np.stack([x0, x1])[None])
    res = torch.tensor(np.stack([y0, y1])[None])
    theta, sp = 0.5, softplus
    rows = [  # (anchor, positive, negatives)
        (x0, y0, (x1, y1)),
        (x1, y1, (x0, y0)),
        (y0, x0, (x1, y1)),
        (y1, x1, (x0, y0)),
    ]
    expected = np.mean([sp((a @ n - a @ p) / theta) for a, p, negs in rows for n in negs])
    assert rank_loss(ref, res, theta, 5.0).item() == pytest.approx(expected, rel=1e-12)


def test_rank_loss_clamp_zeroes_gradient():
    # Terms with (s_neg - s_pos)/theta > clamp contribute softplus(clamp) and NO gradient: the autograd
    # gradient must equal that of a loop formula in which exactly those terms are constants.
    ref0 = unit(2, 2, 3, seed=70)
    res0 = F.normalize(ref0.flip(1) + 0.3 * unit(2, 2, 3, seed=71), dim=2)  # wrong order: large diffs
    theta, clamp = 0.05, 5.0

    ref, res = ref0.clone().requires_grad_(), res0.clone().requires_grad_()
    rank_loss(ref, res, theta, clamp).backward()

    ref_l, res_l = ref0.clone().requires_grad_(), res0.clone().requires_grad_()
    terms, n_clamped = [], 0
    for b in range(2):
        v = [F.normalize(t, dim=0) for t in (ref_l[b, 0], ref_l[b, 1], res_l[b, 0], res_l[b, 1])]  # cosine
        for i in range(4):
            pos = (i + 2) % 4
            for j in range(4):
                if j in (i, pos):
                    continue
                x = (v[i] @ v[j] - v[i] @ v[pos]) / theta
                if x.item() > clamp:
                    n_clamped += 1
                    terms.append(torch.tensor(softplus(clamp), dtype=torch.float64))
                else:
                    terms.append(F.softplus(x))
    assert 0 < n_clamped < len(terms)  # the clamp is active for some terms only
    loss_l = torch.stack(terms).mean()
    loss_l.backward()
    torch.testing.assert_close(ref.grad, ref_l.grad)
    torch.testing.assert_close(res.grad, res_l.grad)

    ref_u, res_u = ref0.clone().requires_grad_(), res0.clone().requires_grad_()
    rank_loss(ref_u, res_u, theta, clamp=1e9).backward()  # no clamp: different gradient, larger loss
    assert not torch.allclose(ref_u.grad, ref.grad)
    assert rank_loss(ref0, res0, theta, 1e9) > rank_loss(ref0, res0, theta, clamp)

    # fully clamped single term: zero gradient
    x = torch.tensor([4.0, 6.0], requires_grad=True)
    F.softplus(x.clamp(max=5.0)).sum().backward()
    assert x.grad[0] > 0 and x.grad[1] == 0


def test_rank_loss_lower_when_restored_matches_reference():
    ref = unit(4, 2, 8, seed=40)
    good = F.normalize(ref + 0.01 * unit(4, 2, 8, seed=41), dim=2)
    swapped = good.flip(1)
    assert rank_loss(ref, good) < rank_loss(ref, swapped)
    assert rank_loss(ref, restore_order(swapped, torch.tensor([[1, 0]] * 4))).item() == pytest.approx(
        rank_loss(ref, good).item()
    )


# --------------------------------------------------------------------------------------------- MoCo
def test_moco_queue_enqueue_wraps_and_logits():
    queue = MoCoQueue(dim=3, k=5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(queue.queue.norm(dim=1), torch.ones(5))
    assert dict(queue.named_buffers()).keys() == {"queue", "ptr"}
    keys = F.normalize(torch.arange(12, dtype=torch.float32).view(4, 3) + 1, dim=1)
    queue.enqueue(keys[:3])
    assert int(queue.ptr) == 3
    torch.testing.assert_close(queue.queue[:3], keys[:3])
    queue.enqueue(keys[3:].repeat(3, 1))  # 3 rows: rows 3, 4, then wrap to 0
    assert int(queue.ptr) == 1
    torch.testing.assert_close(queue.queue[[3, 4, 0]], keys[3:].repeat(3, 1))
    torch.testing.assert_close(queue.queue[1:3], keys[1:3])

    q, k = unit(2, 3, seed=50).float(), unit(2, 3, seed=51).float()
    logits = moco_logits(q, k, queue.queue, tau=0.1)
    assert logits.shape == (2, 6)
    for i in range(2):
        assert logits[i, 0].item() == pytest.approx((q[i] @ k[i]).item() / 0.1, rel=1e-5)
        for j in range(5):
            expected = (q[i] @ queue.queue[j]).item() / 0.1
            assert logits[i, 1 + j].item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_moco_tc_logits_uses_mean_slots():
    qs, ks = unit(2, 2, 4, seed=52), unit(2, 2, 4, seed=53)
    bank = unit(3, 2, 4, seed=54)
    logits = moco_tc_logits(qs, ks, bank.reshape(3, 8), tau=1.0)
    for i in range(2):

        def slot_mean_dot(x, y):  # official form: mean of the S x S slot dot products
            return np.mean([(x[p] @ y[r]).item() for p in range(2) for r in range(2)])

        assert logits[i, 0].item() == pytest.approx(slot_mean_dot(qs[i], ks[i]))
        for j in range(3):
            assert logits[i, 1 + j].item() == pytest.approx(slot_mean_dot(qs[i], bank[j]))


def test_momentum_update():
    torch.manual_seed(0)
    net_q, net_k = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before_k = [p.detach().clone() for p in net_k.parameters()]
    momentum_update(net_q, net_k, m=0.9)
    for p_q, p_k, p0 in zip(net_q.parameters(), net_k.parameters(), before_k, strict=True):
        torch.testing.assert_close(p_k, 0.9 * p0 + 0.1 * p_q.detach())
    with pytest.raises(ValueError):
        momentum_update(net_q, torch.nn.Linear(3, 4))


# -------------------------------------------------------------------------------------- objective
def test_config_defaults_and_validation():
    cfg = DualVarConfig()
    assert (cfg.tau_clip, cfg.tau_tc, cfg.theta, cfg.rank_clamp) == (0.07, 0.07, 0.05, 5.0)
    assert (cfg.w_clip, cfg.w_tc, cfg.w_rank_v0, cfg.w_rank_v2) == (1.0, 1.0, 0.5, 0.5)
    assert (cfg.moco_k, cfg.moco_m, cfg.n_segments, cfg.slot_dim, cfg.clip_dim) == (16384, 0.999, 2, 64, 128)
    assert cfg.clip_loss == "simclr"
    with pytest.raises(ValueError):
        DualVarConfig(clip_loss="byol")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.theta = 1.0  # frozen


def test_dualvar_loss_combines_parts():
    cfg = DualVarConfig()
    c0, c1 = unit(4, 128, seed=60), unit(4, 128, seed=61)
    s0, s1, s2 = unit(4, 2, 64, seed=62), unit(4, 2, 64, seed=63), unit(4, 2, 64, seed=64)
    shuffled_slots = unit(4, 2, 64, seed=65)
    perm = torch.tensor([[1, 0], [0, 1], [1, 0], [0, 1]])
    r2 = restore_order(shuffled_slots, perm)
    total, parts = dualvar_loss(c0, c1, s0, s1, s2, r2, cfg)
    torch.testing.assert_close(parts["clip"], nt_xent(c0, c1, 0.07))
    torch.testing.assert_close(parts["tc"], temporal_coherent_loss(s0, s1, 0.07))
    torch.testing.assert_close(parts["rank_v0"], rank_loss(s0, r2, 0.05, 5.0))
    torch.testing.assert_close(parts["rank_v2"], rank_loss(s2, r2, 0.05, 5.0))
    expected = parts["clip"] + parts["tc"] + 0.5 * parts["rank_v0"] + 0.5 * parts["rank_v2"]
    torch.testing.assert_close(total, expected)

    moco = DualVarConfig(clip_loss="moco")
    cq, sq = unit(7, 128, seed=66), unit(7, 2, 64, seed=67).reshape(7, 128)
    total_m, parts_m = dualvar_loss(c0, c1, s0, s1, s2, r2, moco, clip_queue=cq, slot_queue=sq)
    zero = torch.zeros(4, dtype=torch.long)
    torch.testing.assert_close(parts_m["clip"], F.cross_entropy(moco_logits(c0, c1, cq, 0.07), zero))
    torch.testing.assert_close(parts_m["tc"], F.cross_entropy(moco_tc_logits(s0, s1, sq, 0.07), zero))
    with pytest.raises(ValueError):
        dualvar_loss(c0, c1, s0, s1, s2, r2, moco)


def test_end_to_end_gradients_reach_both_heads():
    torch.manual_seed(0)
    feats = torch.randn(3, 4, 16, requires_grad=True)  # (views, B, in_dim) pooled backbone features
    clip_head, series_head = ProjectionHead(16, 16, 128), ProjectionHead(16, 16, 64, slots=2)
    perm = torch.tensor([[1, 0], [0, 1], [1, 0], [1, 0]])
    restored = restore_order(series_head(feats[2] + 0.1), perm)
    total, _ = dualvar_loss(
        clip_head(feats[0]),
        clip_head(feats[1]),
        series_head(feats[0]),
        series_head(feats[1]),
        series_head(feats[2]),
        restored,
        DualVarConfig(),
    )
    total.backward()
    assert torch.isfinite(total)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in clip_head.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in series_head.parameters())


@pytest.mark.parametrize("dtype,tolerance", [(torch.float16, 0.01), (torch.bfloat16, 0.05)], ids=str)
def test_losses_stay_fp32_under_autocast_and_near_the_fp32_step(monkeypatch, dtype, tolerance):
    """On CUDA the step runs under fp16 autocast; the same construction on the CPU must compute every logit
    and loss of DualVar in float32 (the network's forward stays in mixed precision, the augmentation in
    fp32), and give the fp32 step's loss within 1 % (float16, what CUDA runs) or 5 % (bfloat16)."""
    from iic.model.config import build_config
    from iic.model.methods.dualvar import build

    cfg = build_config("dualvar-tiny", crop=16, frames=4, stride=1)
    g = torch.Generator().manual_seed(0)

    def clip() -> torch.Tensor:
        return torch.randint(0, 255, (4, 3, 4, 20, 20), dtype=torch.uint8, generator=g)

    batch = {"rgb": clip(), "rgb_1": clip(), "index": torch.arange(4)}
    seen = []
    cross_entropy = F.cross_entropy
    monkeypatch.setattr(
        F, "cross_entropy", lambda z, y, **kw: seen.append(z.dtype) or cross_entropy(z, y, **kw)
    )
    losses = {}
    for amp in (False, True):
        torch.manual_seed(0)
        net, state, step = build(cfg, 4)
        with torch.autocast("cpu", dtype=dtype, enabled=amp):
            losses[amp] = step(net, state, batch, cfg, torch.Generator().manual_seed(1), torch.device("cpu"))
            inside = (torch.ones(2, 3) @ torch.ones(3, 2)).dtype
        assert inside == (dtype if amp else torch.float32)  # autocast was on
    assert seen and all(d == torch.float32 for d in seen), seen  # L_clip and L_tc logits
    assert losses[True].dtype == torch.float32
    assert abs(losses[True].item() - losses[False].item()) < tolerance * losses[False].item(), losses
