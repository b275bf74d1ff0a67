"""Data layer: the dataset type, file formats, grouping (docs/data.md).

``load_dataset(path)`` recognises a file by its content, not its name:

* a ZIP archive -> PtychoPINN NPZ (:mod:`.npz`);
* HDF5 with ``format = "ptycho_fast.dataset"`` -> our layout (:mod:`.hdf5`);
* HDF5 with ``probe_position_x_m`` -> a ptychodus product (:mod:`.ptychodus`), read with
  its companion diffraction file; a directory holding ptychodus' ``product.h5`` (+
  ``diffraction.h5``, its workflow layout) too.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import h5py

from .dataset import (DataError, DataWarning, Metadata, PtychoDataset, UserError, atomic_output,
                      list_names)
from .grouping import Groups, cover_groups, group_positions
from .hdf5 import H5DatasetWriter, LazyDiffraction, is_our_h5, read_h5, write_h5
from .npz import read_npz, write_npz
from .pattern_reader import PatternReader
from .ptychodus import (PRODUCT_FILE, is_ptychodus_diffraction, is_ptychodus_product,
                        ptychodus_only_fields, read_ptychodus, write_ptychodus, write_ptychodus_pair,
                        write_ptychodus_product)

__all__ = [
    "DataError", "DataWarning", "UserError", "Metadata", "PtychoDataset", "atomic_output",
    "Groups", "group_positions", "cover_groups", "LazyDiffraction", "H5DatasetWriter", "PatternReader",
    "read_npz", "write_npz", "read_h5", "write_h5", "read_ptychodus", "write_ptychodus",
    "write_ptychodus_product", "write_ptychodus_pair", "ptychodus_only_fields",
    "load_dataset", "save_dataset", "detect_format", "format_from_suffix", "FORMATS", "PatternReader",
    "file_head", "file_kind", "load_dataset_reporting",
]

FORMATS = ("npz", "h5", "ptychodus")
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_NPY_MAGIC = b"\x93NUMPY"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
#: what h5py raises on a damaged file (RuntimeError: a corrupt link table or heap; KeyError:
#: an object header that cannot be read; TypeError: a type with no NumPy equivalent;
#: IndexError: h5py decoding a damaged filter pipeline)
_H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError, IndexError)


def _is_hdf5(path: Path) -> bool:
    """h5py.is_hdf5 (an HDF5 superblock after a user block), False when it cannot tell."""
    try:
        return bool(h5py.is_hdf5(path))
    except _H5_ERRORS:
        return False


def file_head(path: str | os.PathLike, size: int = 8) -> bytes:
    """The first ``size`` bytes of ``path``; DataError (a UserError) when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def file_kind(path: str | os.PathLike) -> str | None:
    """'npz' (a ZIP archive), 'npy' (one NumPy array) or None, from the first bytes of ``path``."""
    head = file_head(path)
    if head.startswith(_NPY_MAGIC):
        return "npy"
    return "npz" if head[:4] in _ZIP_MAGIC else None


def detect_format(path: str | os.PathLike) -> str:
    """'npz', 'h5' (ours) or 'ptychodus', from the file's content (a directory holding
    ptychodus' ``product.h5`` is 'ptychodus'); DataError otherwise."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        if (path / PRODUCT_FILE).is_file():
            return "ptychodus"
        raise DataError(f"{path}: is a directory, expected a data file (NPZ or HDF5) or a "
                        f"directory holding a ptychodus {PRODUCT_FILE}")
    head = file_head(path)
    if not head:
        raise DataError(f"{path}: is empty")
    if head[:4] in _ZIP_MAGIC:
        return "npz"
    if head.startswith(_NPY_MAGIC):
        raise DataError(f"{path}: is a single .npy array, expected an NPZ archive or an HDF5 file")
    if head == _HDF5_MAGIC or _is_hdf5(path):
        try:
            with h5py.File(path, "r") as f:
                if is_our_h5(f):
                    return "h5"
                if is_ptychodus_product(f):
                    return "ptychodus"
                if is_ptychodus_diffraction(f):
                    raise DataError(f"{path}: is a ptychodus diffraction file (patterns only); "
                                    "load the ptychodus product file that goes with it")
                if "diffraction" in f and "probe" in f:
                    return "h5"  # our layout without the format attribute
                keys = list_names(f.keys())
        except DataError:
            raise
        except _H5_ERRORS as exc:  # a damaged file: superblock, link tables, headers, heaps
            message = " ".join(str(exc).split())[:200]
            raise DataError(f"{path}: not a readable HDF5 file (truncated or corrupt: "
                            f"{type(exc).__name__}: {message})") from None
        raise DataError(f"{path}: HDF5 file of unknown layout (found: {keys}); expected ours "
                        "(format attribute 'ptycho_fast.dataset') or a ptychodus product")
    raise DataError(f"{path}: unrecognised file format; expected a PtychoPINN NPZ or an HDF5 file")


def load_dataset(path: str | os.PathLike, lazy: bool = False, diffraction_path=None,
                 edge_policy: str = "warn") -> PtychoDataset:
    """Read any supported file (see module doc). ``lazy`` keeps the diffraction of our HDF5
    layout, or of an uncompressed NPZ (memory-mapped), on disk (stream it with
    ``dataset.iter_batches``; close the dataset after)."""
    fmt = detect_format(path)
    if fmt == "npz":
        return read_npz(path, edge_policy=edge_policy, lazy=lazy)
    if fmt == "h5":
        return read_h5(path, lazy=lazy, edge_policy=edge_policy)
    return read_ptychodus(path, diffraction_path=diffraction_path, edge_policy=edge_policy)


def load_dataset_reporting(path: str | os.PathLike, report, **kwargs) -> PtychoDataset:
    """:func:`load_dataset` (same keyword arguments) with its :class:`DataWarning` messages
    handed to ``report(message)`` (a command's warning line) instead of ``warnings``; other
    warnings are re-issued as they were."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        dataset = load_dataset(path, **kwargs)
    for w in caught:
        if issubclass(w.category, DataWarning):
            report(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return dataset


def format_from_suffix(path: str | os.PathLike) -> str | None:
    suffix = Path(path).suffix.lower()
    return {".npz": "npz", ".h5": "h5", ".hdf5": "h5", ".hdf": "h5"}.get(suffix)


def save_dataset(dataset: PtychoDataset, path: str | os.PathLike, format: str | None = None):
    """Write ``dataset`` as 'npz', 'h5' (ours) or 'ptychodus' (product + diffraction file;
    ``path`` an existing directory or one without a suffix: ``product.h5`` +
    ``diffraction.h5`` in it, ptychodus' workflow layout); the format defaults from the
    suffix (.npz, .h5/.hdf5). Written atomically."""
    fmt = format or format_from_suffix(path)
    if fmt not in FORMATS:
        raise DataError(f"{path}: cannot tell the output format from the name; give one of "
                        f"{', '.join(FORMATS)}")
    if fmt == "npz":
        return write_npz(dataset, path)
    if fmt == "h5":
        return write_h5(dataset, path)
    if Path(path).is_dir() or not Path(path).suffix:
        return write_ptychodus_pair(dataset, path)
    return write_ptychodus(dataset, path)
