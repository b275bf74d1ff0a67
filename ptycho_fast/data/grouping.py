"""Groups of C = gridsize² neighbouring scan positions (docs/design.md §3, docs/data.md).

Each group is an **anchor** position plus C-1 others drawn (seeded) from the anchor's
K nearest neighbours (``scipy.spatial.cKDTree``; K = ``k_candidates``, default 2C-1,
clamped to P). Relative offsets are ``position - group centroid`` (positive sense), in
(row, col) object pixels. Vectorised throughout: one tree query, one argsort of random
keys; no Python loop over positions (10^5 positions group in well under a second).

``n_groups`` defaults to one group per position. Fewer picks distinct anchors at random;
more **oversamples**: every position anchors ``n_groups // P`` groups and a random
``n_groups % P`` of them one more, each group drawing its own random neighbours.

:func:`cover_groups` is inference's cheaper layout: groups of the same kind (an anchor and
C-1 of its K nearest neighbours) that **cover** the scan, each position in one group where
it can be (about P/C groups instead of P: one network call per C patterns).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from .. import coords

__all__ = ["Groups", "group_positions", "cover_groups", "default_k_candidates"]


def default_k_candidates(C: int) -> int:
    """2C-1 candidates: for gridsize 2, 7 (the anchor and 6 neighbours to choose 3 from)."""
    return 2 * C - 1


@dataclass
class Groups:
    """``indices`` (G, C) int64 position indices, column 0 the anchor, the rest in order of
    distance from it; ``centroids`` (G, 2) (row, col); ``offsets`` (G, C, 2) member centre
    minus centroid."""
    indices: np.ndarray
    centroids: np.ndarray
    offsets: np.ndarray
    gridsize: int

    @property
    def C(self) -> int:  # noqa: N802
        return self.gridsize ** 2

    @property
    def n_groups(self) -> int:
        return int(self.indices.shape[0])

    def __len__(self) -> int:
        return self.n_groups

    def local_canvas_size(self, N: int) -> int:
        """Side of the local canvas that holds every group: ``N + 2*ceil(max|offset|)``."""
        reach = float(np.abs(self.offsets).max()) if self.offsets.size else 0.0
        return int(N + 2 * math.ceil(reach - 1e-9))

    def local_top_left(self, N: int, size: int | None = None) -> np.ndarray:
        """(G, C, 2) top-left pixel of each member's patch in a local canvas of side ``size``
        (default :meth:`local_canvas_size`) whose centre (size/2, size/2) is the centroid."""
        size = self.local_canvas_size(N) if size is None else int(size)
        return coords.centres_to_top_left(size / 2.0 + self.offsets, N)


def group_positions(positions, gridsize: int = 1, n_groups: int | None = None,
                    k_candidates: int | None = None, seed=None) -> Groups:
    """Group (P, 2) (row, col) positions into C = gridsize² nearest neighbours.

    Deterministic for a given ``seed`` (an int or a ``numpy.random.Generator``).
    """
    pos, gridsize, C, P, K = _checked(positions, gridsize, k_candidates)
    G = P if n_groups is None else int(n_groups)
    if G < 1:
        raise ValueError(f"n_groups must be >= 1, got {G}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    # Anchors: each position once (in order), a random subset, or oversampled.
    if G <= P:
        anchors = np.arange(P) if G == P else np.sort(rng.choice(P, size=G, replace=False))
    else:
        anchors = np.concatenate([np.tile(np.arange(P), G // P),
                                  np.sort(rng.choice(P, size=G % P, replace=False))])

    if C == 1:
        indices = anchors[:, None].astype(np.int64)
    else:
        _, nbrs = cKDTree(pos).query(pos, k=K)
        nbrs = nbrs[anchors].astype(np.int64)                        # (G, K), nearest first
        # The anchor itself comes first (with duplicate positions the tree may list a twin
        # first, or leave the anchor out when more than K share its position).
        is_self = nbrs == anchors[:, None]
        missing = ~is_self.any(axis=1)
        nbrs[missing, -1] = anchors[missing]
        is_self[missing, -1] = True
        order = np.argsort(np.where(is_self, -1, np.arange(K)), axis=1, kind="stable")
        nbrs = np.take_along_axis(nbrs, order, axis=1)
        # C-1 distinct others out of K-1: the first C-1 of a random permutation per row,
        # then back in distance order.
        pick = np.argsort(rng.random((G, K - 1)), axis=1)[:, :C - 1]
        pick.sort(axis=1)
        members = np.take_along_axis(nbrs[:, 1:], pick, axis=1)
        indices = np.concatenate([nbrs[:, :1], members], axis=1)

    return _groups(pos, indices, gridsize)


def _checked(positions, gridsize, k_candidates) -> tuple[np.ndarray, int, int, int, int]:
    """(positions as (P, 2) float64, gridsize, C, P, K candidates clamped to P), or the
    ValueError naming the bad argument (shared by both layouts)."""
    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 2:
        raise ValueError(f"positions must be (P, 2) (row, col), got shape {pos.shape}")
    if not np.isfinite(pos).all():
        raise ValueError("positions contain NaN or Inf")
    gridsize = int(gridsize)
    if gridsize < 1:
        raise ValueError(f"gridsize must be >= 1, got {gridsize}")
    C, P = gridsize * gridsize, pos.shape[0]
    if P < C:
        raise ValueError(f"gridsize {gridsize} needs groups of {C} positions but there are only {P}")
    K = default_k_candidates(C) if k_candidates is None else int(k_candidates)
    if K < C:
        raise ValueError(f"k_candidates must be >= C = {C} (gridsize {gridsize}), got {K}")
    return pos, gridsize, C, P, min(K, P)


def _groups(pos: np.ndarray, indices: np.ndarray, gridsize: int) -> Groups:
    """Groups of the member ``indices`` (G, C): centroids and member - centroid offsets."""
    member_pos = pos[indices]                                         # (G, C, 2)
    centroids = member_pos.mean(axis=1)
    return Groups(indices=indices, centroids=centroids, offsets=member_pos - centroids[:, None, :],
                  gridsize=gridsize)


def cover_groups(positions, gridsize: int = 1, k_candidates: int | None = None) -> Groups:
    """Groups of C = gridsize² that cover every position, each in one group where it can be.

    Greedy in scan order: the first position not yet in a group anchors one, with the
    nearest C-1 of its K nearest neighbours (K as :func:`group_positions`: the same group
    geometry, so the same local canvas) that are not in a group yet; where fewer than C-1
    are left, the nearest already-grouped ones fill the group (a few positions are then
    predicted twice). Deterministic; no randomness.
    """
    pos, gridsize, C, P, K = _checked(positions, gridsize, k_candidates)
    if C == 1:
        return _groups(pos, np.arange(P, dtype=np.int64)[:, None], gridsize)
    _, nbrs = cKDTree(pos).query(pos, k=K)
    nbrs = np.asarray(nbrs, dtype=np.int64).reshape(P, K)
    grouped = np.zeros(P, dtype=bool)
    rows = []
    for anchor in range(P):
        if grouped[anchor]:
            continue
        cand = nbrs[anchor][nbrs[anchor] != anchor]
        free = cand[~grouped[cand]]
        members = list(free[:C - 1])
        if len(members) < C - 1:  # fill with the nearest grouped ones (in distance order)
            members += [int(c) for c in cand if c not in members][:C - 1 - len(members)]
        row = [anchor] + [int(m) for m in members]
        grouped[row] = True
        rows.append(row)
    return _groups(pos, np.asarray(rows, dtype=np.int64), gridsize)
