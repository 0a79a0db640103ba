"""Retrieval top-k against a brute-force NumPy reference (explicit loops, stable argsort)."""

import numpy as np
import pytest
import torch

from iic.model.evaluation.retrieval import RetrievalResult, retrieval_topk

KS = (1, 5, 10, 20, 50)


def brute_force(query, qy, gallery, gy, ks, center):
    """Reference: loop over queries, stable argsort of -similarity (ties -> lower gallery index)."""
    q = np.asarray(query, dtype=np.float64)
    g = np.asarray(gallery, dtype=np.float64)
    if center:
        q = q - q.mean(axis=0, keepdims=True)
        g = g - g.mean(axis=0, keepdims=True)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    g = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
    hits = {k: 0 for k in ks}
    orders = []
    for i in range(q.shape[0]):
        sim = g @ q[i]
        order = np.argsort(-sim, kind="stable")
        orders.append(order)
        for k in ks:
            kk = min(k, g.shape[0])
            hits[k] += int(np.any(gy[order[:kk]] == qy[i]))
    return {k: 100.0 * hits[k] / q.shape[0] for k in ks}, np.stack(orders)


def random_problem(seed, n_q=23, n_g=61, dim=7, n_cls=5):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(n_q, dim)),
        rng.integers(0, n_cls, n_q),
        rng.normal(size=(n_g, dim)),
        rng.integers(0, n_cls, n_g),
    )


@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_brute_force(center, seed):
    q, qy, g, gy = random_problem(seed)
    res = retrieval_topk(q, qy, g, gy, ks=KS, center=center, dtype=torch.float64, block_size=5)
    ref, order = brute_force(q, qy, g, gy, KS, center)
    assert isinstance(res, RetrievalResult)
    assert res.topk == pytest.approx(ref, abs=1e-9)
    np.testing.assert_array_equal(res.indices, order[:, :50])
    assert res.n_queries == len(q) and res.indices.shape == (len(q), 50)
    assert res.capped == () and res.ks_used == {k: k for k in KS}


def test_centering_changes_result_and_uses_each_sets_own_mean():
    q, qy, g, gy = random_problem(3)
    # Shifting each set by its own constant must not change the centred result.
    shifted = retrieval_topk(q + 5.0, qy, g - 3.0, gy, center=True, dtype=torch.float64)
    base = retrieval_topk(q, qy, g, gy, center=True, dtype=torch.float64)
    np.testing.assert_array_equal(shifted.indices, base.indices)
    assert shifted.topk == pytest.approx(base.topk)
    uncentred = retrieval_topk(q + 5.0, qy, g - 3.0, gy, center=False, dtype=torch.float64)
    assert not np.array_equal(uncentred.indices, base.indices)


def test_exact_ties_broken_by_gallery_index():
    # Entries +-1/2 on 4 coordinates: unit norm and exact dot products, so ties are genuine.
    g = np.zeros((6, 4))
    g[0] = g[1] = g[2] = [0.5, 0.5, 0.5, 0.5]  # three duplicates with different labels
    g[3] = [0.5, 0.5, 0.5, -0.5]
    g[4] = [0.5, -0.5, 0.5, -0.5]
    g[5] = [0.5, 0.5, 0.5, 0.5]  # a later duplicate of rows 0-2
    gy = np.array([7, 8, 9, 9, 9, 7])
    q = np.array([[0.5, 0.5, 0.5, 0.5], [1.0, 1.0, 1.0, 1.0]])  # same direction
    qy = np.array([9, 8])
    res = retrieval_topk(q, qy, g, gy, ks=(1, 2, 3), dtype=torch.float64)
    np.testing.assert_array_equal(res.indices, [[0, 1, 2], [0, 1, 2]])
    np.testing.assert_allclose(res.similarities, 1.0)
    # query 0 (label 9) only meets label 9 at rank 3; query 1 (label 8) at rank 2.
    assert res.topk == {1: 0.0, 2: 50.0, 3: 100.0}
    ref, order = brute_force(q, qy, g, gy, (1, 2, 3), False)
    assert res.topk == ref
    np.testing.assert_array_equal(res.indices, order[:, :3])
    # Reversing the gallery must move the tie winners to the other end of the index range.
    rev = retrieval_topk(q, qy, g[::-1].copy(), gy[::-1].copy(), ks=(1,), dtype=torch.float64)
    np.testing.assert_array_equal(rev.indices[:, 0], [0, 0])  # row 5 reversed = old row 5, label 7
    assert rev.topk == {1: 0.0}


def test_k_above_gallery_size_is_capped():
    q, qy, g, gy = random_problem(4, n_q=9, n_g=12)
    res = retrieval_topk(q, qy, g, gy, ks=KS, dtype=torch.float64)
    assert res.ks_used == {1: 1, 5: 5, 10: 10, 20: 12, 50: 12}
    assert res.capped == (20, 50)
    assert res.indices.shape == (9, 12)
    ref, _ = brute_force(q, qy, g, gy, KS, False)
    assert res.topk == pytest.approx(ref)
    # At k = G every query whose label exists in the gallery is a hit.
    present = np.isin(qy, gy).mean() * 100
    assert res.topk[50] == pytest.approx(present)


def test_every_query_counted():
    # 7 queries: with batched/drop_last code the tail would vanish; count must be exact sevenths.
    g = np.eye(3)
    gy = np.array([0, 1, 2])
    q = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0.1, 0]])
    qy = np.array([0, 1, 2, 1, 1, 1, 0])
    res = retrieval_topk(q, qy, g, gy, ks=(1, 3), block_size=2)
    assert res.n_queries == 7
    assert res.topk[1] == pytest.approx(100.0 * 5 / 7)
    assert res.topk[3] == pytest.approx(100.0)


def test_blockwise_equals_one_shot_and_float32():
    q, qy, g, gy = random_problem(5, n_q=40, n_g=90, dim=16)
    one = retrieval_topk(q, qy, g, gy, block_size=10_000)
    for bs in (1, 3, 7, 40):
        blk = retrieval_topk(q, qy, g, gy, block_size=bs)
        np.testing.assert_array_equal(blk.indices, one.indices)
        # BLAS may pick another kernel for another block height: last-bit differences only
        np.testing.assert_allclose(blk.similarities, one.similarities, rtol=0, atol=1e-6)
        assert blk.topk == one.topk
    ref, _ = brute_force(q, qy, g, gy, KS, False)  # float32 agrees with float64 without near-ties
    assert one.topk == pytest.approx(ref)
    assert one.similarities.dtype == np.float32


def test_blockwise_bit_exact_on_exact_data_with_ties():
    # +-1/2 entries on 4 of 8 coordinates: unit rows, exact dot products, many exact ties.
    rng = np.random.default_rng(9)

    def rows(n):
        x = np.zeros((n, 8))
        for r in range(n):
            x[r, rng.choice(8, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
        return x

    q, g = rows(30), rows(50)
    qy, gy = rng.integers(0, 4, 30), rng.integers(0, 4, 50)
    one = retrieval_topk(q, qy, g, gy, block_size=1000)
    ref, order = brute_force(q, qy, g, gy, KS, False)
    assert one.topk == ref
    np.testing.assert_array_equal(one.indices, order[:, :50])
    for bs in (1, 4, 13):
        blk = retrieval_topk(q, qy, g, gy, block_size=bs)
        np.testing.assert_array_equal(blk.indices, one.indices)
        np.testing.assert_array_equal(blk.similarities, one.similarities)
        assert blk.topk == one.topk


def test_accepts_torch_inputs_and_int_labels_only():
    q, qy, g, gy = random_problem(6)
    a = retrieval_topk(torch.from_numpy(q), torch.from_numpy(qy), torch.from_numpy(g), torch.from_numpy(gy))
    b = retrieval_topk(q, qy.astype(np.int32), g, gy.astype(np.int16))
    assert a.topk == b.topk
    with pytest.raises(ValueError):
        retrieval_topk(q, qy.astype(float), g, gy)
    with pytest.raises(ValueError):
        retrieval_topk(q, qy[:-1], g, gy)
    with pytest.raises(ValueError):
        retrieval_topk(q[:, :3], qy, g, gy)
    with pytest.raises(ValueError):
        retrieval_topk(q, qy, g, gy, ks=(0,))


def test_to_dict_is_plain():
    q, qy, g, gy = random_problem(7, n_g=8)
    d = retrieval_topk(q, qy, g, gy, center=True).to_dict()
    assert set(d) == {"topk", "ks_used", "capped", "n_queries", "n_gallery", "center"}
    assert d["capped"] == [10, 20, 50] and d["n_gallery"] == 8 and d["center"] is True
