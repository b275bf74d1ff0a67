"""Grouping of scan positions into C = gridsize² nearest neighbours."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial import cKDTree

from ptycho_fast import ops
from ptycho_fast.data import cover_groups, group_positions
from ptycho_fast.data.grouping import default_k_candidates


def scan(P=300, seed=0):
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(P)))
    k = np.arange(P)
    return np.stack([k // side, k % side], -1) * 5.0 + rng.normal(scale=0.7, size=(P, 2)) + 40


def check_groups(pos, groups, gridsize, K):
    C = gridsize ** 2
    idx = groups.indices
    assert idx.shape == (groups.n_groups, C) and idx.dtype == np.int64
    # C distinct members per group
    srt = np.sort(idx, axis=1)
    assert (np.diff(srt, axis=1) > 0).all()
    # every member is among the anchor's K nearest neighbours (distance <= the K-th nearest)
    kth = cKDTree(pos).query(pos, k=min(K, len(pos)))[0].reshape(len(pos), -1)[:, -1]
    anchor = idx[:, 0]
    dist = np.linalg.norm(pos[idx] - pos[anchor][:, None], axis=-1)
    assert (dist <= kth[anchor][:, None] + 1e-9).all()
    # members after the anchor are in order of distance
    assert (np.diff(dist[:, 1:], axis=1) >= -1e-9).all()
    # offsets = member - centroid, positive sense; they sum to zero
    np.testing.assert_allclose(groups.centroids, pos[idx].mean(axis=1))
    np.testing.assert_allclose(groups.offsets, pos[idx] - groups.centroids[:, None])
    np.testing.assert_allclose(groups.offsets.sum(axis=1), 0, atol=1e-9)


@pytest.mark.parametrize("gridsize", [1, 2, 3])
def test_groups_are_distinct_nearest_neighbours(gridsize):
    pos = scan()
    g = group_positions(pos, gridsize, seed=1)
    assert g.C == gridsize ** 2 and len(g) == len(pos)
    np.testing.assert_array_equal(g.indices[:, 0], np.arange(len(pos)))  # one group per position
    check_groups(pos, g, gridsize, default_k_candidates(gridsize ** 2))


def test_seed_reproduces_and_differs():
    pos = scan()
    a = group_positions(pos, 2, seed=7)
    b = group_positions(pos, 2, seed=7)
    c = group_positions(pos, 2, seed=8)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.offsets, b.offsets)
    assert not np.array_equal(a.indices, c.indices)
    d = group_positions(pos, 2, seed=np.random.default_rng(7))  # a Generator works too
    np.testing.assert_array_equal(a.indices, d.indices)


def test_fewer_groups_have_distinct_anchors():
    pos = scan()
    g = group_positions(pos, 2, n_groups=50, seed=0)
    assert len(np.unique(g.indices[:, 0])) == 50
    check_groups(pos, g, 2, 7)


def test_oversampling():
    pos = scan(P=100)
    g = group_positions(pos, 2, n_groups=250, k_candidates=8, seed=0)
    counts = np.bincount(g.indices[:, 0], minlength=100)
    assert counts.sum() == 250 and counts.min() == 2 and counts.max() == 3
    check_groups(pos, g, 2, 8)
    # an anchor's repeated groups draw their neighbours independently: mostly different
    same = [len({tuple(r) for r in g.indices[g.indices[:, 0] == a]}) == 1 for a in range(100)]
    assert np.mean(same) < 0.2


def test_duplicate_positions():
    pos = np.zeros((20, 2))  # every position is the same point
    g = group_positions(pos, 2, seed=0)
    check_groups(pos, g, 2, 7)
    np.testing.assert_array_equal(g.indices[:, 0], np.arange(20))


def test_local_canvas_holds_every_patch():
    pos = scan()
    N = 16
    g = group_positions(pos, 2, seed=3)
    size = g.local_canvas_size(N)
    reach = np.abs(g.offsets).max()
    assert size == N + 2 * int(np.ceil(reach))
    tl = g.local_top_left(N)
    assert tl.min() >= 0 and (tl + N).max() <= size
    # extracting the members from a local canvas matches extracting them from the full
    # object when the centroid is placed at the canvas centre (integer shift)
    rng = np.random.default_rng(0)
    obj = rng.normal(size=(200, 200)).astype(np.float64)
    import torch
    from ptycho_fast import coords
    gi = 5
    centre = np.round(g.centroids[gi])
    shift = centre - size / 2  # local canvas origin in object pixels
    local = obj[int(shift[0]):int(shift[0]) + size, int(shift[1]):int(shift[1]) + size]
    in_local = ops.extract_patches(torch.tensor(local), torch.tensor(tl[gi] + (g.centroids[gi] - centre)), N)
    in_full = ops.extract_patches(torch.tensor(obj), torch.tensor(coords.centres_to_top_left(pos[g.indices[gi]], N)), N)
    np.testing.assert_allclose(in_local.numpy(), in_full.numpy(), atol=1e-12)


def test_errors():
    pos = scan(P=3)
    with pytest.raises(ValueError, match="only 3"):
        group_positions(pos, 2)
    with pytest.raises(ValueError, match="k_candidates"):
        group_positions(scan(), 2, k_candidates=3)
    with pytest.raises(ValueError, match=r"\(P, 2\)"):
        group_positions(np.zeros(5), 1)
    with pytest.raises(ValueError, match="n_groups"):
        group_positions(scan(), 1, n_groups=0)


@settings(max_examples=25, deadline=None)
@given(P=st.integers(4, 60), gridsize=st.integers(1, 2), n_groups=st.integers(1, 150),
       k=st.integers(4, 12), seed=st.integers(0, 2 ** 16))
def test_properties(P, gridsize, n_groups, k, seed):
    pos = np.random.default_rng(seed).uniform(0, 50, size=(P, 2)).round(1)  # ties happen
    g = group_positions(pos, gridsize, n_groups=n_groups, k_candidates=k, seed=seed)
    assert len(g) == n_groups
    check_groups(pos, g, gridsize, k)


@pytest.mark.parametrize("gridsize", [2, 3])
def test_cover_groups_cover_every_position_about_once_with_training_geometry(gridsize):
    rng = np.random.default_rng(5)
    rows, cols = np.meshgrid(np.arange(20) * 7.0, np.arange(17) * 7.0, indexing="ij")
    pos = np.stack([rows.ravel(), cols.ravel()], 1) + rng.uniform(-1, 1, (340, 2))
    C = gridsize ** 2
    g = cover_groups(pos, gridsize)
    counts = np.bincount(g.indices.ravel(), minlength=len(pos))
    assert counts.min() == 1                                     # every position covered
    assert g.n_groups <= 1.25 * len(pos) / C                     # ~P/C network inputs
    assert (counts == 1).mean() > 0.75                           # most positions exactly once
    assert all(len(set(r)) == C for r in g.indices.tolist())     # distinct members
    np.testing.assert_allclose(g.offsets, pos[g.indices] - g.centroids[:, None, :])
    # members come from the anchor's K nearest neighbours, as in training: no larger reach
    train = group_positions(pos, gridsize, seed=0)
    assert g.local_canvas_size(32) <= train.local_canvas_size(32) + 2
    assert np.array_equal(cover_groups(pos, gridsize).indices, g.indices)  # deterministic
    one = cover_groups(pos, 1)
    assert np.array_equal(one.indices[:, 0], np.arange(len(pos)))
