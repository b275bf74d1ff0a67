"""data.PatternReader: the patterns of batches of groups, read as covering slices and reused."""

from __future__ import annotations

import numpy as np

from ptycho_fast.data import PatternReader
from ptycho_fast.data.hdf5 import COVER_MIN


class _Data:
    def __init__(self, P, N=4):
        self.diffraction = np.random.default_rng(0).random((P, N, N), dtype=np.float32)


def test_any_order_with_repeats_equals_direct_indexing():
    data = _Data(3000)
    read = PatternReader(data)
    for idx in (np.array([5, 3, 3, 9, 4]), np.array([2999, 0, 1500]), np.arange(40, 20, -1).repeat(2)):
        np.testing.assert_array_equal(read(idx), data.diffraction[idx])


def test_overlapping_batches_read_each_row_about_once():
    data = _Data(2000)
    read = PatternReader(data)
    for start in range(0, 1900, 50):                       # neighbours: each batch overlaps the next
        idx = np.arange(start, start + 100)
        np.testing.assert_array_equal(read(idx), data.diffraction[idx])
    assert read.rows_read <= 2000
    # a sparse batch (beyond the covering-slice rule) reads just its distinct rows
    sparse = PatternReader(data)
    idx = np.array([0, 0, COVER_MIN * 3, 1999])
    np.testing.assert_array_equal(sparse(idx), data.diffraction[idx])
    assert sparse.rows_read == 3
