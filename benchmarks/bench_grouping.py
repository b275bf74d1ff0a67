"""Grouping 10^5 scan positions (pytest-benchmark).

    PYTHONPATH=. pytest benchmarks/bench_grouping.py --benchmark-only

The issue's target: 10^5 positions group "in well under a few seconds"; grouping is one
cKDTree build + query and one argsort of random keys, no Python loop over positions.
"""

import numpy as np
import pytest

from ptycho_fast.data import group_positions


def _raster(P=100_000, seed=0):
    side = int(np.ceil(np.sqrt(P)))
    k = np.arange(P)
    rng = np.random.default_rng(seed)
    return np.stack([k // side, k % side], -1) * 4.0 + rng.normal(scale=0.5, size=(P, 2))


@pytest.mark.parametrize("gridsize", [1, 2, 3])
def test_group_1e5_positions(benchmark, gridsize):
    pos = _raster()
    groups = benchmark.pedantic(group_positions, args=(pos, gridsize), kwargs={"seed": 0},
                                rounds=3, iterations=1)
    assert groups.indices.shape == (100_000, gridsize ** 2)


def test_group_1e5_positions_oversampled_4x(benchmark):
    pos = _raster()
    groups = benchmark.pedantic(group_positions, args=(pos, 2),
                                kwargs={"n_groups": 400_000, "seed": 0}, rounds=2, iterations=1)
    assert groups.indices.shape == (400_000, 4)
