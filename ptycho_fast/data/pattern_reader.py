"""Reading the patterns of batches of groups: :class:`PatternReader` (docs/inference.md).

A consumer that walks the scan batch by batch (``infer``'s reconstruction loop) asks for the
patterns of each batch's group members, an index array with repeats. Group members are
neighbours in the scan, hence close in file order, so the reader applies the data layer's
covering-slice rule (:func:`ptycho_fast.data.hdf5.covering_slice`) and keeps the last slice
to reuse its overlap with the next batch.
"""

from __future__ import annotations

import numpy as np

from .hdf5 import covering_slice

__all__ = ["PatternReader"]


class PatternReader:
    """The patterns of each batch's group members, read through the data layer.

    A batch reads the one contiguous slice ``dataset.diffraction[lo:hi]`` covering them when
    it is compact (:func:`~ptycho_fast.data.hdf5.covering_slice`: at most COVER_FACTOR times
    the number of distinct patterns, or COVER_MIN rows) — a slice of a chunked HDF5 file
    reads ~5x faster than an index list — else just the distinct indices. Consecutive
    batches' slices overlap (the scan's neighbouring rows), so the rows still held from the
    previous slice are reused and only the new ones are read: a scan in file order is read
    about once. A lazy file is validated block by block as it is read. ``rows_read`` counts
    the rows read from the dataset."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.lo = self.hi = 0
        self.block = None
        self.rows_read = 0

    def _read(self, lo: int, hi: int) -> np.ndarray:
        self.rows_read += hi - lo
        return np.asarray(self.dataset.diffraction[lo:hi], dtype=np.float32)

    def _rows(self, lo: int, hi: int) -> np.ndarray:
        if self.block is not None and lo < self.hi and hi > self.lo:   # overlaps the last slice
            parts = []
            if lo < self.lo:
                parts.append(self._read(lo, self.lo))
            parts.append(self.block[max(lo, self.lo) - self.lo:min(hi, self.hi) - self.lo])
            if hi > self.hi:
                parts.append(self._read(self.hi, hi))
            block = np.concatenate(parts) if len(parts) > 1 else parts[0]
        else:
            block = self._read(lo, hi)
        self.lo, self.hi, self.block = lo, hi, block
        return block

    def __call__(self, idx: np.ndarray) -> np.ndarray:
        """float32 patterns (len(idx), N, N) of the pattern indices ``idx`` (any order, repeats)."""
        uniq = np.unique(idx)
        cover = covering_slice(uniq)
        if cover is not None:
            return self._rows(*cover)[idx - cover[0]]
        self.rows_read += len(uniq)
        return np.asarray(self.dataset.diffraction[uniq], dtype=np.float32)[np.searchsorted(uniq, idx)]
