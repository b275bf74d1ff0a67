"""Our own HDF5 layout: chunked, compressed diffraction that can be streamed in batches.

Layout (format_version 1, docs/data.md)::

    /                 attrs: format="ptycho_fast.dataset", format_version=1, convention=...,
                             [photons_per_pattern, pixel_size_m, energy_eV, distance_m,
                              probe_calibrated]
    /diffraction      (P, N, N) float32 amplitudes sqrt(counts), fftshifted;
                      chunks (min(P, 64), N, N), gzip level 4 + shuffle
    /xcoords /ycoords (P,) float64 probe centres in object pixels (column, row)
    /probe            (N, N) or (M, N, N) complex64
    /object           (H, W) complex64            optional ground truth
    /scan_index       (P,) int64                  optional
    /xcoords_start /ycoords_start (P,) float64    optional

``read_h5(path, lazy=True)`` leaves the diffraction on disk: ``dataset.iter_batches(B)``
reads it block by block (validated as it goes), so a dataset larger than memory can be
streamed. :class:`H5DatasetWriter` writes one incrementally (the simulator uses it).
"""

from __future__ import annotations

import math
import contextlib
import os
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from .. import coords
from .dataset import (DataError, Metadata, PtychoDataset, as_amplitude, atomic_output,
                      check_amplitudes, is_legacy_stack, list_names, real_vector,
                      untranspose_legacy_stack)

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "LazyDiffraction", "H5DatasetWriter", "read_h5",
           "write_h5", "is_our_h5"]

FORMAT_NAME = "ptycho_fast.dataset"
FORMAT_VERSION = 1
CONVENTION = ("xcoords/ycoords are probe centres in object pixels (xcoords = column, ycoords = row); "
              "a patch centred at (y, x) has top-left (y - N/2, x - N/2); diffraction is "
              "sqrt(counts), float32, zero frequency at the array centre")
_REQUIRED = {
    "diffraction": "(P, N, N) float32 diffraction amplitudes",
    "probe": "(N, N) complex probe",
    "xcoords": "(P,) probe-centre columns in object pixels",
    "ycoords": "(P,) probe-centre rows in object pixels",
}


def open_h5(path: Path) -> h5py.File:
    """``path`` opened read-only, or one DataError naming what is wrong with it (the one
    open of every HDF5 reader: our datasets and ptychodus files)."""
    try:
        exists, is_dir = path.exists(), path.is_dir()
    except (OSError, ValueError) as exc:  # a name too long, or holding a NUL byte
        raise DataError(f"{path}: cannot be read ({short_text(exc)})") from None
    if not exists:
        raise DataError(f"{path}: no such file")
    if is_dir:
        raise DataError(f"{path}: is a directory, expected an HDF5 file")
    try:
        return h5py.File(path, "r")
    except _H5_ERRORS as exc:
        raise DataError(f"{path}: not a readable HDF5 file (truncated or corrupt: {short_text(exc)})") from None


def short_text(text: object, limit: int = 200) -> str:
    """``text`` on one line, at most ``limit`` characters (for a message)."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


#: what h5py raises on a damaged file (RuntimeError: a corrupt link table or heap; KeyError: an
#: unreadable object header or a link that cannot be followed; TypeError: a type with no
#: NumPy equivalent; IndexError: a damaged filter pipeline)
_H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError, IndexError)


@contextlib.contextmanager
def damaged_file_errors(path, unreadable: str, too_large: str = "too large to load into memory"):
    """Reading ``path`` inside: what h5py raises on a damaged file becomes the DataError
    "{path}: {unreadable} (truncated or corrupt: ...)", a failed allocation
    "{path}: {too_large}"; a DataError passes."""
    try:
        yield
    except DataError:
        raise
    except MemoryError:
        raise DataError(f"{path}: {too_large}") from None
    except _H5_ERRORS as exc:
        raise DataError(f"{path}: {unreadable} (truncated or corrupt: {type(exc).__name__}: {exc})") from None


#: deflate never unpacks more than ~1032 bytes per stored byte
_DEFLATE_MAX_RATIO = 1100


# Variable-length data (strings written by h5py, sequences) live in the file's global heap,
# and HDF5 2.0 decodes a corrupt global heap in an endless loop (a free-space object of size
# 0: H5HG__cache_heap_deserialize never advances) or crashes on a corrupt variable-length
# type (SIGSEGV in the conversion). Neither can be interrupted from Python, so the readers
# here never read variable-length values: attributes are read only when their *type* says
# number or fixed-length string, datasets only when it says number.

def _attribute_type(node, name: str, path) -> np.dtype:
    try:
        return node.attrs.get_id(name).dtype
    except _H5_ERRORS as exc:
        raise DataError(f"{path}: attribute '{name}' cannot be read (corrupt: {exc})") from None


def attribute(node, name: str, path) -> object:
    """Numeric attribute ``name`` of ``node`` (a file, group or dataset); DataError when it is
    of another type (refused from the type alone: nothing is decoded) or unreadable."""
    dtype = _attribute_type(node, name, path)
    if dtype.kind not in "biufc":
        raise DataError(f"{path}: attribute '{name}': expected a number, got "
                        f"{'a string' if h5py.check_string_dtype(dtype) else dtype}")
    try:
        return node.attrs[name]
    except _H5_ERRORS as exc:
        raise DataError(f"{path}: attribute '{name}' cannot be read (corrupt: {exc})") from None


def is_our_h5(f: h5py.File) -> bool:
    """Whether ``f`` is our layout: its ``format`` attribute is ours. A variable-length
    string (what h5py writes) is not decoded (see above): its presence and any of our
    required datasets decide (the reader then names what is missing). DataError when the
    attributes cannot even be listed (a corrupt file)."""
    try:
        if "format" not in f.attrs:
            return False
    except _H5_ERRORS as exc:
        raise DataError(f"{f.filename}: not a readable HDF5 file (its attributes cannot be read: "
                        f"{exc})") from None
    string = h5py.check_string_dtype(_attribute_type(f, "format", f.filename))
    if string is None:
        return False
    if string.length is None:  # variable length
        try:
            return any(k in f for k in _REQUIRED)
        except _H5_ERRORS as exc:
            raise DataError(f"{f.filename}: not a readable HDF5 file (truncated or corrupt: "
                            f"{exc})") from None
    try:
        value = f.attrs["format"]
    except _H5_ERRORS as exc:
        raise DataError(f"{f.filename}: attribute 'format' cannot be read (corrupt: {exc})") from None
    if isinstance(value, (bytes, np.bytes_)):
        value = bytes(value).decode("utf-8", "replace")
    return str(value) == FORMAT_NAME


def _dataset(f: h5py.File, key: str, path: Path) -> h5py.Dataset:
    try:
        obj = f.get(key)
    except _H5_ERRORS as exc:  # e.g. an external link to a missing file
        raise DataError(f"{path}: key '{key}' cannot be opened ({exc})") from None
    if not isinstance(obj, h5py.Dataset):
        raise DataError(f"{path}: '{key}' is not a dataset")
    return obj


def check_storage(dset: h5py.Dataset, path, key: str) -> None:
    """Refuse, before anything is allocated, a dataset whose declared size is not backed by
    data in this file: data in other files (virtual or external storage), contiguous data
    never written or past the end of the file, chunks never written (they would read as the
    fill value, however large the declared shape), more than deflate can unpack."""
    if dset.is_virtual:
        raise DataError(f"{path}: key '{key}' is a virtual dataset (it maps data from other "
                        "files); not read")
    if dset.external:
        raise DataError(f"{path}: key '{key}' keeps its data in external files; not read")
    if dset.shape is None:
        raise DataError(f"{path}: key '{key}' holds no data (an empty dataspace)")
    nbytes = math.prod(dset.shape) * dset.dtype.itemsize
    if nbytes == 0:
        return
    file_size = os.path.getsize(path)
    stored = dset.id.get_storage_size()
    what = f"{path}: key '{key}' declares shape {dset.shape} ({nbytes} bytes of {dset.dtype})"
    if dset.chunks is None:
        offset = dset.id.get_offset()  # None: compact (in the header) or never written
        if stored < nbytes or (offset is not None and offset + nbytes > file_size):
            raise DataError(f"{what} but the file holds {min(stored, file_size)} bytes of it "
                            "(never written, truncated or corrupt)")
        return
    needed = math.prod(-(-s // c) for s, c in zip(dset.shape, dset.chunks))
    have = dset.id.get_num_chunks()
    if have < needed or stored > file_size:
        raise DataError(f"{what} but the file holds {have} of its {needed} chunks "
                        "(never written, truncated or corrupt)")
    if dset.compression == "gzip" and nbytes > _DEFLATE_MAX_RATIO * stored + (1 << 20):
        raise DataError(f"{what} but stores {stored} compressed bytes: more than deflate can "
                        "unpack (corrupt)")


def _read(f: h5py.File, key: str, path: Path) -> np.ndarray:
    with damaged_file_errors(path, f"key '{key}' cannot be read", f"key '{key}' is too large to load into memory"):
        dset = _dataset(f, key, path)
        if dset.dtype.kind not in "biufc":  # refused from the type: nothing decoded
            raise DataError(f"{path}: key '{key}': expected numbers, got {dset.dtype}")
        check_storage(dset, path, key)
        data = dset[()]
    if isinstance(data, bytes) or getattr(data, "dtype", np.float64).kind in "OSUV":
        raise DataError(f"{path}: key '{key}': expected numbers, got {getattr(data, 'dtype', type(data))}")
    return np.asarray(data)


#: an index read whose rows span at most COVER_FACTOR times their number (or COVER_MIN
#: rows) reads the covering slice instead: a chunked slice decompresses each chunk once,
#: while h5py's point selection of scattered rows was ~5x slower (docs/data.md §5.2)
COVER_FACTOR = 4
COVER_MIN = 256


def covering_slice(uniq: np.ndarray) -> tuple[int, int] | None:
    """``(lo, hi)`` when the sorted unique row indices ``uniq`` are compact enough to read as
    the one slice ``[lo, hi)`` covering them (the rule above), else None."""
    lo, hi = int(uniq[0]), int(uniq[-1]) + 1
    return (lo, hi) if hi - lo <= max(COVER_FACTOR * uniq.size, COVER_MIN) else None


class LazyDiffraction:
    """A (P, N, N) diffraction stack left on disk: a dataset of an open HDF5 file, or a
    memory map of an uncompressed NPZ member (``data``; ``file`` is the HDF5 file to close,
    None for a memory map).

    Indexing (``lazy[i]``, ``lazy[a:b]``, ``lazy[index_array]``) and :meth:`iter_batches`
    read only what is asked for, return float32 amplitudes (integer counts become
    sqrt(counts)) and raise :class:`DataError` on NaN/Inf or negative values.
    """

    def __init__(self, data, key: str, source: str, transposed: bool = False, file: h5py.File | None = None):
        self._file = file
        self._data = data
        self._key = key
        self._source = source
        self._transposed = transposed  # legacy (N, N, P) on disk
        s = self._data.shape
        self.shape = (s[2], s[0], s[1]) if transposed else tuple(s)
        self.ndim = 3
        self.dtype = np.dtype(np.float32)
        chunks = getattr(data, "chunks", None)   # an HDF5 dataset's; None: contiguous / a memory map
        self.chunk_patterns = max(1, chunks[2 if transposed else 0]) if chunks else 64

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"LazyDiffraction({self._source}:{self._key}, shape={self.shape})"

    @property
    def closed(self) -> bool:
        if self._file is not None:
            return not bool(self._file.id.valid)
        return self._data is None

    def close(self) -> None:
        if self.closed:
            return
        if self._file is not None:
            self._file.close()
        else:
            self._data = None  # the memory map is released with its last reference

    def _read_rows(self, rows) -> np.ndarray:
        if self.closed:
            raise DataError(f"{self._source}: the file was closed; reopen it to read diffraction")
        try:
            if self._transposed:
                block = np.moveaxis(self._data[:, :, rows], -1, 0)
            else:
                block = np.asarray(self._data[rows])
        except (OSError, RuntimeError, ValueError, TypeError) as exc:
            raise DataError(f"{self._source}: key '{self._key}' cannot be read "
                            f"(truncated or corrupt: {exc})") from None
        return block

    def _take(self, idx: np.ndarray) -> np.ndarray:
        """Rows at arbitrary integer indices (h5py needs increasing unique indices)."""
        if idx.size == 0:
            return np.empty((0, *self.shape[1:]), np.float32)
        if (idx < -self.shape[0]).any() or (idx >= self.shape[0]).any():
            raise IndexError(f"index out of range for {self.shape[0]} patterns")
        idx = np.where(idx < 0, idx + self.shape[0], idx)
        uniq, inverse = np.unique(idx, return_inverse=True)
        cover = covering_slice(uniq)
        if cover is not None:
            # compact (neighbours in a scan): one slice read covering them; the surplus rows
            # cost less than h5py's point selection
            block = self._read_rows(slice(*cover))[uniq - cover[0]]
        else:
            block = self._read_rows(uniq)
        return block[inverse]

    def __getitem__(self, key):
        rest = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        if isinstance(key, (int, np.integer)):
            block = self._take(np.array([int(key)]))[0]
            first = int(key)
        elif isinstance(key, slice):
            start, stop, step = key.indices(self.shape[0])
            if step == 1:
                block = self._read_rows(slice(start, stop)) if stop > start else self._take(np.arange(0))
            else:
                block = self._take(np.arange(start, stop, step))
            first = start
        else:
            idx = np.asarray(key)
            if idx.dtype == np.bool_:
                idx = np.flatnonzero(idx)
            block = self._take(idx.astype(np.int64))
            first = 0
        block = as_amplitude(block)
        check_amplitudes(block[None] if block.ndim == 2 else block, f"{self._source}: key '{self._key}'", first)
        return block[(slice(None),) + rest] if rest and block.ndim == 3 else (block[rest] if rest else block)

    def __array__(self, dtype=None, copy=None):
        block = self[:]
        return block if dtype is None else block.astype(dtype)

    def iter_batches(self, batch_size: int | None = None, indices=None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(indices, amplitudes)`` blocks; ``batch_size`` defaults to a multiple of
        the chunk size near 1024 patterns (whole chunks are decompressed once)."""
        if batch_size is None:
            batch_size = self.chunk_patterns * max(1, 1024 // self.chunk_patterns)
        if indices is None:
            for start in range(0, self.shape[0], batch_size):
                stop = min(start + batch_size, self.shape[0])
                yield np.arange(start, stop), self[start:stop]
        else:
            order = np.asarray(indices, dtype=np.int64)
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                yield idx, self[idx]


class H5DatasetWriter:
    """Write a dataset in our layout incrementally and atomically::

        with H5DatasetWriter(path, positions, probe, object_, metadata) as w:
            w.write(0, amplitudes_block)   # blocks in any order, each (B, N, N)

    The file appears at ``path`` only when the block exits without an error.
    """

    def __init__(self, path, positions, probe, object_=None, metadata: Metadata | None = None,
                 scan_index=None, positions_start=None, chunk_patterns: int = 64,
                 compression: str | None = "gzip", compression_opts: int | None = 4):
        self.path = Path(path)
        self.positions = np.asarray(positions, dtype=np.float64)
        self.probe = np.asarray(probe).astype(np.complex64)
        self.N = int(self.probe.shape[-1])
        self.P = int(self.positions.shape[0])
        self.object = None if object_ is None else np.asarray(object_).astype(np.complex64)
        self.metadata = metadata or Metadata()
        self.scan_index = scan_index
        self.positions_start = positions_start
        self.chunk_patterns = max(1, min(int(chunk_patterns), max(self.P, 1)))
        self.compression = compression
        self.compression_opts = compression_opts if compression == "gzip" else None
        self._atomic = None
        self._file = None
        self._written = None

    def __enter__(self) -> "H5DatasetWriter":
        self._atomic = atomic_output(self.path)
        tmp = self._atomic.__enter__()
        try:
            self._file = f = h5py.File(tmp, "w")
            f.attrs["format"] = FORMAT_NAME
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["convention"] = CONVENTION
            for k, v in self.metadata.to_dict().items():
                f.attrs[k] = v
            d = f.create_dataset("diffraction", shape=(self.P, self.N, self.N), dtype=np.float32,
                                 chunks=(self.chunk_patterns, self.N, self.N) if self.P else None,
                                 compression=self.compression if self.P else None,
                                 compression_opts=self.compression_opts if self.P else None,
                                 shuffle=bool(self.compression) and self.P > 0)
            d.attrs["units"] = "sqrt(counts)"
            d.attrs["layout"] = "(pattern, row, col), zero frequency at [N/2, N/2] (fftshifted)"
            x, y = coords.xy_from_positions(self.positions)
            f.create_dataset("xcoords", data=x).attrs["units"] = "object pixels (column of the probe centre)"
            f.create_dataset("ycoords", data=y).attrs["units"] = "object pixels (row of the probe centre)"
            f.create_dataset("probe", data=self.probe)
            if self.object is not None:
                f.create_dataset("object", data=self.object, chunks=True, compression=self.compression,
                                 compression_opts=self.compression_opts)
            if self.scan_index is not None:
                f.create_dataset("scan_index", data=np.asarray(self.scan_index, dtype=np.int64))
            if self.positions_start is not None:
                xs, ys = coords.xy_from_positions(self.positions_start)
                f.create_dataset("xcoords_start", data=xs)
                f.create_dataset("ycoords_start", data=ys)
            self._written = np.zeros(self.P, dtype=bool)
        except BaseException as exc:
            self._abort(exc)
            raise
        return self

    def write(self, start: int, amplitudes) -> None:
        block = np.asarray(amplitudes, dtype=np.float32)
        if block.ndim != 3 or block.shape[1:] != (self.N, self.N) or start < 0 or start + len(block) > self.P:
            raise ValueError(f"H5DatasetWriter.write: expected a (B, {self.N}, {self.N}) block inside "
                             f"[0, {self.P}), got shape {block.shape} at {start}")
        self._file["diffraction"][start:start + len(block)] = block
        self._written[start:start + len(block)] = True

    def _abort(self, exc) -> None:
        if self._file is not None:
            self._file.close()
        self._atomic.__exit__(type(exc), exc, None)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and not self._written.all():
            exc = ValueError(f"H5DatasetWriter: {int((~self._written).sum())} of {self.P} patterns "
                             "were never written")
            self._abort(exc)
            raise exc
        self._file.close()
        self._atomic.__exit__(exc_type, exc, tb)


def write_h5(dataset: PtychoDataset, path: str | os.PathLike, chunk_patterns: int = 64,
             compression: str | None = "gzip", compression_opts: int | None = 4) -> Path:
    """Write ``dataset`` in our HDF5 layout, atomically (a lazy source is streamed)."""
    with H5DatasetWriter(path, dataset.positions, dataset.probe, dataset.object, dataset.metadata,
                         dataset.scan_index, dataset.positions_start, chunk_patterns, compression,
                         compression_opts) as w:
        for idx, block in dataset.iter_batches(chunk_patterns * max(1, 1024 // chunk_patterns)):
            w.write(int(idx[0]), block)
    return Path(path)


def _vector(f: h5py.File, key: str, path: Path) -> np.ndarray:
    return real_vector(_read(f, key, path), path, key)


def _check_version(f: h5py.File, path: Path) -> None:
    if "format_version" not in f.attrs:
        return
    version = np.asarray(attribute(f, "format_version", path))
    if version.size != 1 or version.dtype.kind not in "iuf" or float(version.reshape(())) != FORMAT_VERSION:
        raise DataError(f"{path}: format_version {version.tolist()!r} is not one this ptycho_fast "
                        f"reads ({FORMAT_VERSION})")


def _read_fields(f: h5py.File, path: Path, lazy: bool) -> dict:
    """Every field of our layout, checked for what the file itself must get right."""
    missing = [k for k in _REQUIRED if k not in f]
    if missing:
        what = "; ".join(f"'{k}' ({_REQUIRED[k]})" for k in missing)
        raise DataError(f"{path}: missing key{'s' if len(missing) > 1 else ''} {what}; "
                        f"found: {list_names(f.keys())}")
    _check_version(f, path)
    x = _vector(f, "xcoords", path)
    y = _vector(f, "ycoords", path)
    if x.shape != y.shape:
        raise DataError(f"{path}: keys 'xcoords' and 'ycoords' differ in length ({x.size} vs {y.size})")
    out = {"positions": coords.positions_from_xy(x, y)}
    dset = _dataset(f, "diffraction", path)
    if dset.dtype.kind not in "iufb":
        raise DataError(f"{path}: key 'diffraction': expected real amplitudes, got {dset.dtype}")
    if lazy:
        check_storage(dset, path, "diffraction")
        if dset.ndim != 3:
            raise DataError(f"{path}: key 'diffraction': expected a (P, N, N) stack of amplitudes, "
                            f"got shape {dset.shape}")
        out["diffraction"] = LazyDiffraction(dset, "diffraction", str(path),
                                             is_legacy_stack(dset.shape, len(x)), file=f)
    else:
        out["diffraction"] = untranspose_legacy_stack(_read(f, "diffraction", path), len(x),
                                                      f"{path}: key 'diffraction'")
    out["probe"] = _read(f, "probe", path)
    out["object"] = _read(f, "object", path) if "object" in f else None
    out["scan_index"] = _read(f, "scan_index", path).reshape(-1) if "scan_index" in f else None
    out["positions_start"] = None
    has = [k in f for k in ("xcoords_start", "ycoords_start")]
    if any(has):
        if not all(has):
            raise DataError(f"{path}: has only one of the keys 'xcoords_start'/'ycoords_start'; "
                            "expected both or neither")
        xs, ys = _vector(f, "xcoords_start", path), _vector(f, "ycoords_start", path)
        if xs.shape != x.shape or ys.shape != x.shape:
            raise DataError(f"{path}: keys 'xcoords_start'/'ycoords_start' must have {x.size} "
                            f"entries like 'xcoords', got {xs.size} and {ys.size}")
        out["positions_start"] = coords.positions_from_xy(xs, ys)
    out["metadata"] = Metadata.from_mapping(
        {k: attribute(f, k, path) for k in Metadata.KEYS if k in f.attrs}, str(path))
    return out


def read_h5(path: str | os.PathLike, lazy: bool = False, edge_policy: str = "warn") -> PtychoDataset:
    """Read our HDF5 layout. ``lazy=True`` keeps the diffraction on disk (close the dataset,
    or use it as a context manager, when done)."""
    path = Path(path)
    f = open_h5(path)
    keep_open = False
    try:
        with damaged_file_errors(path, "not a readable HDF5 file"):  # link tables, attributes, types
            fields = _read_fields(f, path, lazy)
        ds = PtychoDataset(**fields, source=str(path), edge_policy=edge_policy)
        keep_open = lazy
        return ds
    finally:
        if not keep_open:
            f.close()
