"""IIC objective: logits and loss against the formula, memory banks, intra-negatives, the variants'
columns."""

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from iic.model.distributed import gather_from_ranks
from iic.model.evaluation.protocol import iic_chance_loss
from iic.model.methods import build
from iic.model.methods.iic import IICMemory, MemoryBank, draw_negatives, intra_negative, nce_loss
from iic.model.methods.variants import LiveMemory
from iic.model.nets.heads import CenterHead, ProjectionHead, l2_normalize

N, D, K, BATCH, TAU, M = 10, 4, 5, 3, 0.07, 0.5


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def features(seed: int = 0, batch: int = BATCH):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, D, generator=g, dtype=torch.float64) for _ in range(3)]


def reference_logits(f, pos_bank, neg_bank, idx):
    """The REFERENCE formula with explicit loops: [P[y].f, P[j..].f, Mn[y].f, Mn[j..].f] / tau."""
    f = unit(f)
    rows = []
    for b in range(f.shape[0]):
        row = [pos_bank[i] @ f[b] for i in idx[b]]
        if neg_bank is not None:
            row += [neg_bank[i] @ f[b] for i in idx[b]]
        rows.append(row)
    return np.array(rows) / TAU


def reference_loss(z):
    return float(np.mean([-(r[0] - np.log(np.sum(np.exp(r)))) for r in z]))


def make_memory(**kw):
    """The paper's banks, or with the variants' live columns when ``kw`` asks for them."""
    cls = LiveMemory if {"positive", "live_negative", "batch_negatives"} & set(kw) else IICMemory
    return cls(N, D, K, TAU, M, generator=torch.Generator().manual_seed(7), **kw).double()


def test_logits_and_loss_match_formula():
    mem = make_memory()
    banks = {k: getattr(mem, k).memory.numpy().copy() for k in ("M1", "M2", "Mn")}
    f1, f2, fn = features()
    index = torch.tensor([2, 7, 4])
    z1, z2 = mem(f1, f2, fn, index, torch.Generator().manual_seed(3))
    j = draw_negatives(BATCH, K, N, torch.Generator().manual_seed(3)).numpy()
    idx = np.concatenate([index.numpy()[:, None], j], 1)
    ref1 = reference_logits(f1.numpy(), banks["M2"], banks["Mn"], idx)
    ref2 = reference_logits(f2.numpy(), banks["M1"], banks["Mn"], idx)
    assert z1.shape == z2.shape == (BATCH, 2 * K + 2)
    assert np.allclose(z1.detach().numpy(), ref1) and np.allclose(z2.detach().numpy(), ref2)
    loss = nce_loss(z1, z2)
    assert math.isclose(loss.item(), reference_loss(ref1) + reference_loss(ref2), rel_tol=1e-9)


def test_loss_target_is_column_zero():
    z = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
    expected = (-torch.log_softmax(z, 1)[:, 0]).mean() * 2
    assert torch.allclose(nce_loss(z, z), expected)
    assert nce_loss(torch.tensor([[50.0, 0.0]]), torch.tensor([[50.0, 0.0]])).item() < 1e-6


def test_logit_counts():
    f1, f2, fn = features()
    index = torch.tensor([0, 1, 2])
    cmc = make_memory(intra_neg=False)
    assert cmc.Mn is None
    assert cmc(f1, f2, None, index)[0].shape == (BATCH, K + 1)
    live = make_memory(live_negative=True)
    fn = fn.clone().requires_grad_(True)
    z1, z2 = live(f1, f2, fn, index)
    assert z1.shape == z2.shape == (BATCH, 2 * K + 3)
    assert torch.allclose(z1[:, -1], (l2_normalize(f1) * l2_normalize(fn)).sum(1) / TAU)
    nce_loss(z1, z2).backward()
    assert fn.grad is not None and fn.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        make_memory()(f1, f2, None, index)
    with pytest.raises(ValueError):
        make_memory(intra_neg=False, live_negative=True)


def test_cmc_logits_match_formula():
    mem = make_memory(intra_neg=False)
    m2 = mem.M2.memory.numpy().copy()
    f1, f2, _ = features(1)
    index = torch.tensor([9, 0, 3])
    z1, _ = mem(f1, f2, None, index, torch.Generator().manual_seed(4))
    j = draw_negatives(BATCH, K, N, torch.Generator().manual_seed(4)).numpy()
    idx = np.concatenate([index.numpy()[:, None], j], 1)
    assert np.allclose(z1.numpy(), reference_logits(f1.numpy(), m2, None, idx))


def test_bank_update_formula_and_only_in_training():
    m = 0.3  # not 0.5, so swapping m and 1 - m would fail
    mem = IICMemory(N, D, K, TAU, m, generator=torch.Generator().manual_seed(7)).double()
    old = {k: getattr(mem, k).memory.clone() for k in ("M1", "M2", "Mn")}
    f1, f2, fn = features(2)
    index = torch.tensor([5, 1, 8])
    mem(f1, f2, fn, index)
    others = [i for i in range(N) if i not in index.tolist()]
    for name, f in (("M1", f1), ("M2", f2), ("Mn", fn)):
        new = getattr(mem, name).memory
        for b, y in enumerate(index.tolist()):
            expected = unit(m * old[name][y].numpy() + (1 - m) * unit(f[b].numpy()))
            assert np.allclose(new[y].numpy(), expected)
        assert torch.equal(new[others], old[name][others])
    mem.eval()
    before = mem.M1.memory.clone()
    mem(*features(3), index)
    assert torch.equal(mem.M1.memory, before)


def test_rows_stay_unit_norm():
    mem = make_memory()
    assert torch.allclose(mem.M1.memory.norm(dim=1), torch.ones(N, dtype=torch.float64))
    g = torch.Generator().manual_seed(5)
    for _ in range(20):
        f1, f2, fn = (10 * torch.randn(4, D, generator=g, dtype=torch.float64) for _ in range(3))
        mem(f1, f2, fn, torch.randint(N, (4,), generator=g))
    for bank in (mem.M1, mem.M2, mem.Mn):
        assert torch.allclose(bank.memory.norm(dim=1), torch.ones(N, dtype=torch.float64))


def test_bank_init_range():
    a = 1 / math.sqrt(D / 3)
    bank = MemoryBank(1000, D, torch.Generator().manual_seed(0))
    raw = torch.rand(1000, D, generator=torch.Generator().manual_seed(0)) * 2 * a - a
    assert torch.allclose(bank.memory, l2_normalize(raw))


def test_duplicate_indices_use_the_mean_feature():
    bank = MemoryBank(N, D, torch.Generator().manual_seed(0)).double()
    old = bank.memory.clone()
    f = torch.randn(3, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    bank.update(torch.tensor([3, 6, 3]), f, 0.25)
    assert torch.allclose(bank.memory[3], l2_normalize(0.25 * old[3] + 0.75 * (f[0] + f[2]) / 2))
    assert torch.allclose(bank.memory[6], l2_normalize(0.25 * old[6] + 0.75 * f[1]))
    again = MemoryBank(N, D, torch.Generator().manual_seed(0)).double()
    again.update(torch.tensor([3, 3, 6]), f[[2, 0, 1]], 0.25)  # order does not matter
    assert torch.allclose(again.memory, bank.memory)


def test_buffers_in_state_dict_and_moved_by_to():
    mem = IICMemory(N, D, K)
    keys = set(mem.state_dict())
    assert keys == {"M1.memory", "M2.memory", "Mn.memory"}
    assert set(IICMemory(N, D, K, intra_neg=False).state_dict()) == {"M1.memory", "M2.memory"}
    assert mem.M1.memory.shape == (N, D)
    assert not any(p.requires_grad for p in mem.buffers())
    moved = mem.to("meta")
    assert all(b.device.type == "meta" for b in moved.buffers())
    assert IICMemory(N, D, K).to(torch.float64).M2.memory.dtype == torch.float64


def test_gather_from_ranks(tmp_path):
    t = torch.arange(6.0).view(3, 2)
    assert gather_from_ranks(t) is t  # not initialised: world size 1
    # a one-process group runs the all_gather path
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        assert torch.equal(gather_from_ranks(t), t)
    finally:
        dist.destroy_process_group()


def distinct_clip(batch: int = 4, T: int = 16) -> torch.Tensor:
    """(B, 2, T, 3, 3) clip whose every frame is unique (value = 100 b + t)."""
    v = 100 * torch.arange(batch).view(batch, 1, 1, 1, 1) + torch.arange(T).view(1, 1, T, 1, 1)
    return v.expand(batch, 2, T, 3, 3).float()


def test_repeat_gives_a_still_clip_of_one_source_frame():
    clip = distinct_clip(8)
    neg = intra_negative(clip, "repeat", torch.Generator().manual_seed(0))
    assert neg.shape == clip.shape
    sources = set()
    for b in range(8):
        i = int(neg[b, 0, 0, 0, 0].item()) - 100 * b
        assert 0 <= i < 16
        assert torch.equal(neg[b], clip[b, :, i : i + 1].expand(2, 16, 3, 3))
        sources.add(i)
    assert len(sources) > 1
    again = intra_negative(clip, "repeat", torch.Generator().manual_seed(0))
    assert torch.equal(neg, again)


def test_shuffle_swaps_exactly_two_distinct_chunks():
    B = 200
    clip = distinct_clip(B)
    neg = intra_negative(clip, "shuffle", torch.Generator().manual_seed(1))
    pairs = set()
    for b in range(B):
        assert not torch.equal(neg[b], clip[b])
        order = [int(neg[b, 0, 4 * c, 0, 0].item()) - 100 * b for c in range(4)]
        perm = [o // 4 for o in order]
        assert sorted(perm) == [0, 1, 2, 3] and all(o % 4 == 0 for o in order)
        for c in range(4):  # chunk c of the negative is source chunk perm[c], frames in order
            assert torch.equal(neg[b, :, 4 * c : 4 * c + 4], clip[b, :, 4 * perm[c] : 4 * perm[c] + 4])
        moved = [c for c in range(4) if perm[c] != c]
        assert len(moved) == 2 and perm[moved[0]] == moved[1] and perm[moved[1]] == moved[0]
        pairs.add(tuple(moved))
    assert pairs == {(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)}


def test_shuffle_needs_t_divisible_by_4_and_kind_is_checked():
    with pytest.raises(ValueError, match="divisible by 4"):
        intra_negative(torch.zeros(1, 3, 6, 2, 2), "shuffle")
    assert intra_negative(torch.zeros(1, 3, 8, 2, 2), "shuffle").shape == (1, 3, 8, 2, 2)
    with pytest.raises(ValueError, match="unknown intra-negative"):
        intra_negative(torch.zeros(1, 3, 8, 2, 2), "backwards")


def test_reverse_plays_every_clip_backwards():
    clip = distinct_clip(4)
    neg = intra_negative(clip, "reverse")
    for b in range(4):
        frames = [int(neg[b, 0, t, 0, 0].item()) - 100 * b for t in range(16)]
        assert frames == list(range(15, -1, -1))
        assert torch.equal(neg[b, :, 3], clip[b, :, 12])


def test_projection_head():
    head = ProjectionHead()
    z = head(torch.randn(5, 512, generator=torch.Generator().manual_seed(0)))
    assert z.shape == (5, 128)
    assert torch.allclose(z.norm(dim=1), torch.ones(5), atol=1e-6)
    assert [m.out_features for m in head.mlp if isinstance(m, torch.nn.Linear)] == [512, 128]


def test_live_positive_scores_the_other_view_of_the_same_step():
    """positive="live": column 0 is f1.f2 / tau (unit features) for both views; every other column is the
    paper's (bank) logit."""
    bank, live = make_memory(), make_memory(positive="live")
    f1, f2, fn = features(1)
    index = torch.tensor([0, 3, 9])
    zb1, zb2 = bank(f1, f2, fn, index, torch.Generator().manual_seed(5))
    zl1, zl2 = live(f1, f2, fn, index, torch.Generator().manual_seed(5))
    expected = (unit(f1.numpy()) * unit(f2.numpy())).sum(1) / TAU
    assert np.allclose(zl1[:, 0].numpy(), expected) and np.allclose(zl2[:, 0].numpy(), expected)
    assert not np.allclose(zb1[:, 0].numpy(), expected)
    assert torch.equal(zl1[:, 1:], zb1[:, 1:]) and torch.equal(zl2[:, 1:], zb2[:, 1:])
    with pytest.raises(ValueError, match="unknown positive"):
        make_memory(positive="nearest")


def test_live_positive_passes_gradient_to_both_views():
    mem = make_memory(positive="live")
    f1, f2, fn = (f.requires_grad_() for f in features(2))
    z1, z2 = mem(f1, f2, fn, torch.tensor([1, 2, 3]), torch.Generator().manual_seed(0))
    nce_loss(z1, z2).backward()
    assert f1.grad.abs().sum() > 0 and f2.grad.abs().sum() > 0


def test_batch_negatives_add_the_other_clips_and_every_intra_negative():
    """batch_negatives: after the bank columns, row b gets f_b.g_c for the N - 1 other clips c of the other
    view and f_b.fn_c for all N intra-negatives (its own included), live (brute-force loops); CMC gets only
    the former. The chance loss counts these columns."""
    for intra in (True, False):
        plain = make_memory(positive="live", intra_neg=intra)
        mem = make_memory(positive="live", intra_neg=intra, batch_negatives=True)
        f1, f2, fn = (f.requires_grad_() for f in features(3, batch=4))
        fn_ = fn if intra else None
        z1, z2 = mem(f1, f2, fn_, torch.tensor([0, 2, 5, 9]), torch.Generator().manual_seed(1))
        p1, p2 = plain(f1, f2, fn_, torch.tensor([0, 2, 5, 9]), torch.Generator().manual_seed(1))
        u1, u2, un = (unit(f.detach().numpy()) for f in (f1, f2, fn))
        for z, p, a, other in ((z1, p1, u1, u2), (z2, p2, u2, u1)):
            assert z.shape[1] == p.shape[1] + 3 + (4 if intra else 0)
            assert torch.allclose(z[:, : p.shape[1]], p)
            for b in range(4):
                expected = [a[b] @ other[c] for c in range(4) if c != b] + (
                    [a[b] @ un[c] for c in range(4)] if intra else []
                )
                assert np.allclose(z[b, p.shape[1] :].detach().numpy(), np.array(expected) / TAU)
        loss = nce_loss(z1, z2)
        loss.backward()
        assert f1.grad.abs().sum() > 0 and f2.grad.abs().sum() > 0
        assert (fn.grad is not None and fn.grad.abs().sum() > 0) == intra
        columns = z1.shape[1]
        assert iic_chance_loss(K, intra, batch=4) == pytest.approx(2 * math.log(columns))


def test_no_bank_negatives_leaves_the_positive_and_the_batch():
    """K = 0: no bank columns at all, the positive f1.f2 and the batch's live negatives (brute force); the
    chance loss is 2 ln(2N) with intra-negatives, 2 ln(N) for CMC; K = 0 without them is refused."""
    for intra in (True, False):
        mem = LiveMemory(N, D, 0, TAU, M, intra_neg=intra, positive="live", batch_negatives=True).double()
        f1, f2, fn = features(4, batch=4)
        z1, _ = mem(
            f1, f2, fn if intra else None, torch.tensor([1, 2, 3, 4]), torch.Generator().manual_seed(0)
        )
        u1, u2, un = (unit(f.numpy()) for f in (f1, f2, fn))
        for b in range(4):
            expected = (
                [u1[b] @ u2[b]]
                + [u1[b] @ u2[c] for c in range(4) if c != b]
                + ([u1[b] @ un[c] for c in range(4)] if intra else [])
            )
            assert np.allclose(z1[b].numpy(), np.array(expected) / TAU)
        assert iic_chance_loss(0, intra, batch=4) == pytest.approx(2 * math.log(8 if intra else 4))
    # two intra-negatives per clip (--neg repeat+reverse): fn holds both kinds, 2N rows, all negatives
    mem = LiveMemory(N, D, 0, TAU, M, positive="live", batch_negatives=True).double()
    f1, f2, fa, fb = features(5, batch=4) + features(6, batch=4)[:1]
    z1, _ = mem(f1, f2, torch.cat([fa, fb]), torch.tensor([1, 2, 3, 4]), torch.Generator().manual_seed(0))
    u1, un = unit(f1.numpy()), unit(torch.cat([fa, fb]).numpy())
    assert z1.shape[1] == 1 + 3 + 8
    assert np.allclose(z1[:, 4:].numpy(), u1 @ un.T / TAU)
    assert iic_chance_loss(0, 2, batch=4) == pytest.approx(2 * math.log(z1.shape[1]))
    # a bank keeps one intra-negative row per video: several per clip with bank negatives are refused
    for banked in (make_memory(), make_memory(positive="live", batch_negatives=True)):
        with pytest.raises(ValueError, match="several per clip need K = 0"):
            banked(f1, f2, torch.cat([fa, fb]), torch.tensor([1, 2, 3, 4]), torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="a whole number per clip"):
        mem(f1, f2, torch.cat([fa, fb[:2]]), torch.tensor([1, 2, 3, 4]), torch.Generator().manual_seed(0))
    for bad in (dict(positive="bank", batch_negatives=True), dict(positive="live", batch_negatives=False)):
        with pytest.raises(ValueError, match="K = 0"):
            LiveMemory(N, D, 0, TAU, M, **bad)


def test_center_head_removes_the_common_direction():
    """Features of a fresh ReLU network share one direction (cosine ~0.95): the BN head centres each batch."""
    g = torch.Generator().manual_seed(0)
    x = 5.0 + 0.3 * torch.randn(16, 8, generator=g)  # every row ~ the same direction
    assert F.cosine_similarity(x[:1], x[1:]).min() > 0.9
    y = CenterHead(8).train()(x)
    assert torch.allclose(y.mean(0), torch.zeros(8), atol=1e-5)
    assert abs(F.cosine_similarity(y[:1], y[1:]).mean()) < 0.5
    assert not any(p.requires_grad for p in CenterHead(8).parameters())  # affine-free: nothing to learn


# autocast dtype on the CPU -> how close the loss must stay to the fp32 step's (relative): float16 is what
# CUDA runs (11 bits of mantissa), bfloat16 keeps 8 (and, through tau = 0.07, the logits feel it)
AMP_TOLERANCE = {torch.float16: 0.01, torch.bfloat16: 0.05}


@pytest.mark.parametrize("dtype", list(AMP_TOLERANCE), ids=str)
def test_logits_and_bank_update_stay_fp32_under_autocast(dtype):
    """On CUDA the step runs under fp16 autocast; the same construction on the CPU must leave the contrastive
    logits, the loss and the banks in float32 (model/methods/iic.py: iic_step), and the loss near the fp32
    step's from the same weights and banks (`AMP_TOLERANCE`)."""
    from iic.model.config import build_config
    from iic.model.methods.iic import Encoder, iic_step

    cfg = build_config("tiny", crop=16, frames=4, K=4)
    torch.manual_seed(0)
    net = Encoder(cfg)
    mem = IICMemory(6, net.out_dim, K=4)  # bank positive: every logit is an einsum
    before = {k: v.clone() for k, v in net.state_dict().items()}
    banks = {k: v.clone() for k, v in mem.state_dict().items()}
    g = torch.Generator().manual_seed(5)
    batch = {
        "rgb": torch.randint(0, 255, (2, 3, 4, 20, 20), dtype=torch.uint8, generator=g),
        "res": torch.randint(0, 255, (2, 3, 4, 20, 20), dtype=torch.uint8, generator=g),
        "index": torch.tensor([0, 3]),
    }
    seen = []
    mem.register_forward_hook(lambda module, args, out: seen.extend(z.dtype for z in out))
    with torch.autocast("cpu", dtype=dtype):
        loss = iic_step(net, mem, batch, cfg, torch.Generator().manual_seed(0), torch.device("cpu"))
        inside = torch.einsum("bd,bd->b", torch.ones(2, 3), torch.ones(2, 3)).dtype
    assert inside == dtype  # autocast was on
    assert seen == [torch.float32, torch.float32]  # z1, z2
    assert loss.dtype == torch.float32 and mem.M1.memory.dtype == torch.float32
    net32, mem32 = Encoder(cfg), IICMemory(6, net.out_dim, K=4)
    net32.load_state_dict(before)
    mem32.load_state_dict(banks)
    fp32 = iic_step(net32, mem32, batch, cfg, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert abs(loss.item() - fp32.item()) < AMP_TOLERANCE[dtype] * fp32.item(), (loss.item(), fp32.item())


def test_mlp_bn_head_normalises_view_1_and_its_intra_negatives_as_one_batch():
    """``--head mlp-bn``: BatchNorm in the head's hidden layer (``mlp-bn-out``: and a centring one at its
    end), with view 1 and the intra-negatives made from it in one batch (what they share, e.g. "still", is
    kept) and view 2 in its own. The plain MLP head has no batch statistics: each clip's output is its own."""
    from iic.model.config import build_config

    g = torch.Generator().manual_seed(0)
    clips = [torch.rand(4, 3, 4, 16, 16, generator=g) for _ in range(3)]
    other_negatives = torch.rand(4, 3, 4, 16, 16, generator=g)
    for head, joint, norms in (("mlp-bn", True, 1), ("mlp-bn-out", True, 2), ("mlp", False, 0)):
        torch.manual_seed(0)
        net = build(build_config("tiny", crop=16, frames=4, head=head), 4)[0].train()
        assert [type(m).__name__ for m in net.head.mlp].count("BatchNorm1d") == norms
        with torch.no_grad():
            f1, f2, fn = net(clips)
            g1, g2, gn = net([clips[0], clips[1], other_negatives])
        assert f1.shape == fn.shape == (4, 128) and torch.allclose(f1.norm(dim=1), torch.ones(4))
        # only view 1 shares the intra-negatives' batch; view 2 never does
        assert torch.equal(f2, g2) and torch.equal(f1, g1) != joint
    # inputs that share one direction (a fresh ReLU network's features): the BN head's outputs differ at once
    x = 5.0 + 0.3 * torch.randn(16, 512, generator=g)
    torch.manual_seed(0)
    plain, bn = ProjectionHead().train()(x), ProjectionHead(batchnorm=True).train()(x)
    assert F.cosine_similarity(plain[:1], plain[1:]).min() > 0.9
    assert F.cosine_similarity(bn[:1], bn[1:]).abs().mean() < 0.5


def test_view2_from_another_time_reads_the_loaders_second_clip():
    """``--view2-time other``: the loader reads two clips per video and view 2 is made from the second (its
    own crop); view 1 is the paper's step's."""
    from iic.model.config import build_config

    g = torch.Generator().manual_seed(0)

    def clip() -> torch.Tensor:
        return torch.randint(0, 255, (2, 3, 4, 20, 20), dtype=torch.uint8, generator=g)

    first, second = clip(), clip()
    batch = {"rgb": first, "res": first, "rgb_1": second, "res_1": second, "index": torch.tensor([0, 3])}
    seen = {}
    for time in ("same", "other"):
        cfg = build_config("tiny", crop=16, frames=4, view2_time=time)
        assert cfg.clips_per_sample == (2 if time == "other" else 1)
        net, mem, step = build(cfg, 6)
        net.register_forward_pre_hook(
            lambda module, args, t=time: seen.__setitem__(t, [x.clone() for x in args[0]])
        )
        step(net, mem, batch, cfg, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert torch.equal(seen["same"][0], seen["other"][0]) and not torch.equal(
        seen["same"][1], seen["other"][1]
    )
    without_second = {k: v for k, v in batch.items() if not k.endswith("_1")}
    with pytest.raises(KeyError):
        step(net, mem, without_second, cfg, torch.Generator().manual_seed(0), torch.device("cpu"))
    with pytest.raises(ValueError, match="view2-time is an IIC option"):
        build_config("dualvar-tiny", view2_time="other")


def encoder_inputs(batch: dict, **values: tuple) -> dict:
    """What the encoder gets in one step of the tiny preset on ``batch``, for each value of the one option
    named (crop 16, 4 frames)."""
    from iic.model.config import build_config

    ((option, choices),) = values.items()
    seen = {}
    for value in choices:
        cfg = build_config("tiny", crop=16, frames=4, **{option: value})
        net, mem, step = build(cfg, len(batch["index"]))
        net.register_forward_pre_hook(
            lambda module, args, v=value: seen.__setitem__(v, [x.clone() for x in args[0]])
        )
        step(net, mem, batch, cfg, torch.Generator().manual_seed(0), torch.device("cpu"))
    return seen


def test_rgb_aug_simclr_recolours_view_1_and_its_intra_negative_not_the_residual():
    """``--rgb-aug simclr``: SimCLR's colour jitter, grayscale and blur on the RGB view only. The crop window
    is the paper step's (drawn first from the same generator), so the residual view is unchanged; the
    intra-negative is made from the recoloured view 1."""
    from iic.model.config import build_config

    g = torch.Generator().manual_seed(0)
    rgb = torch.randint(0, 255, (8, 3, 4, 20, 20), dtype=torch.uint8, generator=g)
    res = torch.randint(0, 255, (8, 3, 4, 20, 20), dtype=torch.uint8, generator=g)
    batch = {"rgb": rgb, "res": res, "index": torch.arange(8)}
    seen = encoder_inputs(batch, rgb_aug=("none", "simclr"))
    (v1, v2, _), (w1, w2, wneg) = seen["none"], seen["simclr"]
    assert torch.equal(v2, w2)  # the residual view: same window, no colour change
    changed = (v1 - w1).abs().flatten(1).amax(1) > 1e-3
    assert bool(changed.any())  # recoloured samples (jitter p = 0.8, grey 0.2, blur 0.5)
    # repeat negatives: one frame of the recoloured view 1, repeated
    assert torch.equal(wneg, wneg[:, :, :1].expand_as(wneg))
    assert all(any(torch.equal(wneg[b, :, 0], w1[b, :, t]) for t in range(4)) for b in range(8))
    with pytest.raises(ValueError, match="rgb-aug is an IIC option"):
        build_config("dualvar-tiny", rgb_aug="simclr")
    with pytest.raises(ValueError, match="--rgb-aug 'strong' is unknown"):
        build_config("tiny", rgb_aug="strong")


def test_rgb_aug_fame_moves_view_1_onto_another_background_and_leaves_the_residual():
    """``--rgb-aug fame``: view 1 keeps its moving part over another clip's frames (the same crop window as
    the paper's step); the residual view is the paper step's; the intra-negatives repeat a frame of the merged
    view 1."""
    from iic.model.data.background import foreground

    g = torch.Generator().manual_seed(0)
    rgb = torch.randint(0, 255, (4, 3, 1, 20, 20), dtype=torch.uint8, generator=g).expand(4, 3, 4, 20, 20)
    rgb = rgb.clone()
    for t in range(4):  # one square moving right in every clip
        rgb[:, :, t, 6:11, 2 + 2 * t : 7 + 2 * t] = 255
    res = torch.randint(0, 255, (4, 3, 4, 20, 20), dtype=torch.uint8, generator=g)
    batch = {"rgb": rgb, "res": res, "index": torch.arange(4)}
    seen = encoder_inputs(batch, rgb_aug=("none", "fame"))
    (v1, v2, _), (w1, w2, wneg) = seen["none"], seen["fame"]
    assert torch.equal(v2, w2)
    fg = foreground(v1)
    assert bool(fg.any(dim=(1, 2)).all())  # every clip has a moving part ...
    assert torch.equal(w1[:, :, :, fg[0]][0], v1[:, :, :, fg[0]][0])  # ... kept as it was
    assert not torch.equal(w1[:, :, :, ~fg[0]][0], v1[:, :, :, ~fg[0]][0])  # ... over another background
    assert torch.equal(wneg, wneg[:, :, :1].expand_as(wneg))
    assert all(any(torch.equal(wneg[b, :, 0], w1[b, :, t]) for t in range(4)) for b in range(4))


def test_without_normalisation_the_raw_features_meet_the_unit_bank_rows():
    """``--no-normalize`` (the authors' code): f1, f2 and fn go into the logits as the encoder gives them; the
    banks still hold unit rows (their update normalises)."""
    mem = make_memory(normalize=False)
    banks = {k: getattr(mem, k).memory.numpy().copy() for k in ("M1", "M2", "Mn")}
    f1, f2, fn = (3.0 * f for f in features())
    index = torch.tensor([2, 7, 4])
    z1, _ = mem(f1, f2, fn, index, torch.Generator().manual_seed(3))
    j = draw_negatives(BATCH, K, N, torch.Generator().manual_seed(3)).numpy()
    idx = np.concatenate([index.numpy()[:, None], j], 1)
    raw = (
        np.array(
            [
                [banks["M2"][i] @ f1[b].numpy() for i in idx[b]]
                + [banks["Mn"][i] @ f1[b].numpy() for i in idx[b]]
                for b in range(BATCH)
            ]
        )
        / TAU
    )
    assert np.allclose(z1.detach().numpy(), raw)
    assert not np.allclose(z1.detach().numpy(), reference_logits(f1.numpy(), banks["M2"], banks["Mn"], idx))
    assert torch.allclose(mem.M1.memory.norm(dim=1), torch.ones(N, dtype=torch.float64))
