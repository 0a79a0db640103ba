"""Nearest-neighbour video retrieval: the top-k metric of IIC (Tao et al. 2020) and DualVar.

Gallery = train-split videos, queries = test-split videos, one feature row per video. Protocol:

1. optional centring: each set has its OWN mean subtracted (query mean from the queries, gallery mean
   from the gallery; DualVar's variant, docs/method.md);
2. L2 normalisation of every row, then cosine similarity = dot product;
3. gallery ranked per query by descending similarity; a query is a hit at k if ANY of its k nearest
   gallery videos has the query's label; top-k is reported in percent over ALL queries (no batch is
   dropped, unlike the official code's ``drop_last=True``).

Tie rule: gallery videos are ordered by descending similarity, and equal similarities by ascending
gallery index (a stable sort of ``-sim``). Ties are decided on the similarity values as computed in
``dtype``, so results never depend on the sort implementation.

Similarities are computed one block of queries at a time, so memory is O(block_size * G) on top of the
two feature matrices (9.5k x 3.8k x 9,216 runs in well under 1 GB).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

ArrayLike = np.ndarray | torch.Tensor

DEFAULT_KS: tuple[int, ...] = (1, 5, 10, 20, 50)


@dataclass(frozen=True)
class RetrievalResult:
    """Outcome of :func:`retrieval_topk`.

    topk: requested k -> percentage of queries (0-100) with a same-label video among the k nearest
        (k capped at the gallery size, see ``ks_used``).
    ks_used: requested k -> k actually used (``min(k, G)``).
    capped: the requested ks that were larger than the gallery and therefore capped.
    indices: (Q, kmax) int64 gallery indices of each query's nearest videos, best first (tie rule above).
    similarities: (Q, kmax) cosine similarities matching ``indices``.
    n_queries, n_gallery: Q and G; every query is evaluated.
    center: whether each set was mean-centred.
    """

    topk: dict[int, float]
    ks_used: dict[int, int]
    capped: tuple[int, ...]
    indices: np.ndarray = field(repr=False)
    similarities: np.ndarray = field(repr=False)
    n_queries: int
    n_gallery: int
    center: bool

    def to_dict(self) -> dict:
        """Plain, JSON-serialisable summary (no per-query arrays)."""
        return {
            "topk": {int(k): float(v) for k, v in self.topk.items()},
            "ks_used": {int(k): int(v) for k, v in self.ks_used.items()},
            "capped": [int(k) for k in self.capped],
            "n_queries": self.n_queries,
            "n_gallery": self.n_gallery,
            "center": self.center,
        }


def _as_features(x: ArrayLike, name: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, D), got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if not torch.is_floating_point(t):
        t = t.to(torch.float64)
    return t


def _as_labels(y: ArrayLike, n: int, name: str, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(y, device=device)
    if t.ndim != 1 or t.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), got {tuple(t.shape)}")
    if torch.is_floating_point(t) or t.dtype == torch.bool:
        raise ValueError(f"{name} must be integer class ids, got {t.dtype}")
    return t.long()


def prepare_features(x: torch.Tensor, center: bool, dtype: torch.dtype) -> torch.Tensor:
    """Optionally subtract the set's own mean (computed in float64), then L2-normalise rows.

    x: (N, D). Returns (N, D) in ``dtype``; an all-zero row stays zero (similarity 0 to everything).
    """
    x = x.to(dtype)
    if center:
        # float64 accumulation for the mean, but no float64 copy of the whole set (9.5k x 9,216 = 0.7 GB)
        x = x - x.mean(dim=0, keepdim=True, dtype=torch.float64).to(dtype)
    return F.normalize(x, dim=1)


def nearest_neighbours(
    query: torch.Tensor, gallery: torch.Tensor, kmax: int, block_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """kmax nearest gallery rows of each query by dot product, computed in query blocks.

    query: (Q, D), gallery: (G, D), both already normalised. Returns (indices (Q, kmax) int64,
    similarities (Q, kmax)); order = descending similarity, ties by ascending gallery index.
    """
    if not 1 <= kmax <= gallery.shape[0]:
        raise ValueError(f"kmax must be in [1, {gallery.shape[0]}], got {kmax}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    idx_blocks, sim_blocks = [], []
    for start in range(0, query.shape[0], block_size):
        sim = query[start : start + block_size] @ gallery.T  # (b, G)
        # A stable ascending sort of -sim keeps equal similarities in gallery-index order: the tie rule.
        order = torch.sort(-sim, dim=1, stable=True).indices[:, :kmax]  # (b, kmax)
        idx_blocks.append(order)
        sim_blocks.append(torch.gather(sim, 1, order))
    return torch.cat(idx_blocks), torch.cat(sim_blocks)


def retrieval_topk(
    query: ArrayLike,
    query_labels: ArrayLike,
    gallery: ArrayLike,
    gallery_labels: ArrayLike,
    ks: Sequence[int] = DEFAULT_KS,
    center: bool = False,
    block_size: int = 256,
    dtype: torch.dtype = torch.float32,
) -> RetrievalResult:
    """Top-k retrieval accuracy (percent) of queries against a gallery by cosine similarity.

    query: (Q, D) features, query_labels: (Q,) int class ids; gallery: (G, D), gallery_labels: (G,).
    ks: requested k values; k > G is capped at G and listed in ``capped``.
    center: subtract each set's own mean before normalising (DualVar's protocol).
    block_size: queries per similarity block (memory ~ block_size * G).
    dtype: precision of the similarity computation (ties are decided in this precision).
    Runs on the device of ``query``; the returned arrays are NumPy on the CPU.
    """
    ks = tuple(int(k) for k in ks)
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty sequence of positive ints, got {ks}")
    q = _as_features(query, "query")
    g = _as_features(gallery, "gallery").to(q.device)
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"feature dims differ: query {q.shape[1]} vs gallery {g.shape[1]}")
    n_q, n_g = q.shape[0], g.shape[0]
    yq = _as_labels(query_labels, n_q, "query_labels", q.device)
    yg = _as_labels(gallery_labels, n_g, "gallery_labels", q.device)

    ks_used = {k: min(k, n_g) for k in ks}
    capped = tuple(k for k in ks if k > n_g)
    kmax = max(ks_used.values())

    q = prepare_features(q, center, dtype)
    g = prepare_features(g, center, dtype)
    indices, sims = nearest_neighbours(q, g, kmax, block_size)

    match = yg[indices] == yq[:, None]  # (Q, kmax)
    hit_by_depth = match.cumsum(dim=1) > 0  # [:, j]: a same-label video among the first j+1
    topk = {k: 100.0 * int(hit_by_depth[:, ks_used[k] - 1].sum()) / n_q for k in ks}
    return RetrievalResult(
        topk=topk,
        ks_used=ks_used,
        capped=capped,
        indices=indices.cpu().numpy(),
        similarities=sims.cpu().numpy(),
        n_queries=n_q,
        n_gallery=n_g,
        center=center,
    )
