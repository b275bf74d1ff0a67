"""PtychoPINN NPZ files (docs/data.md): read and write, never unpickling.

Keys read: ``diffraction`` (or legacy ``diff3d``) (P, N, N) amplitudes (a legacy (N, N, P)
stack is transposed; integer data are counts and become sqrt(counts)), ``probeGuess``
(N, N) or (M, N, N) complex, ``xcoords`` (column) and ``ycoords`` (row) probe centres in
object pixels, optional ``objectGuess`` (H, W) complex, ``scan_index``,
``xcoords_start``/``ycoords_start``, and the metadata scalars ``photons_per_pattern``,
``pixel_size_m``, ``energy_eV``, ``distance_m``, ``probe_calibrated``. Other keys are ignored.
"""

from __future__ import annotations

import lzma
import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .. import coords
from .dataset import (DataError, Metadata, PtychoDataset, atomic_output, is_legacy_stack,
                      list_names, read_npy_header, real_vector, untranspose_legacy_stack)

__all__ = ["read_npz", "write_npz", "NPZ_REQUIRED"]

#: required keys and what they hold (for error messages)
NPZ_REQUIRED = {
    "diffraction": "(P, N, N) float32 diffraction amplitudes (legacy name: diff3d)",
    "probeGuess": "(N, N) complex probe",
    "xcoords": "(P,) probe-centre columns in object pixels",
    "ycoords": "(P,) probe-centre rows in object pixels",
}

#: what zipfile / numpy raise on a damaged archive or member (NotImplementedError: an
#: unknown zip version or compression method; RuntimeError: an encrypted member)
_READ_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, lzma.LZMAError, EOFError,
                OSError, ValueError, KeyError, NotImplementedError, RuntimeError, struct.error,
                OverflowError, UnicodeDecodeError)
#: deflate never unpacks more than ~1032 bytes per stored byte: a member claiming more is corrupt
_DEFLATE_MAX_RATIO = 1100


def _open(path: Path):
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected an NPZ file")
    try:
        with zipfile.ZipFile(path):  # a damaged archive fails here, its file closed (np.load
            pass                     # would leave it open)
        npz = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc):
            raise DataError(f"{path}: holds pickled Python objects; refusing to load it "
                            "(only plain NPZ arrays are read)") from None
        raise DataError(f"{path}: not a readable NPZ file ({exc})") from None
    except _READ_ERRORS as exc:
        raise DataError(f"{path}: not a readable NPZ file (truncated or corrupt: "
                        f"{type(exc).__name__}: {exc})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: is a single .npy array, expected an NPZ archive with the keys "
                        + ", ".join(NPZ_REQUIRED))
    return npz


def _check_member(npz, path: Path, key: str) -> None:
    """Check the zip entry and .npy header of member ``key`` before numpy allocates its array:
    sizes consistent with the archive (nothing declares more data than it holds), an array of
    numbers (nothing to unpickle). A member that is not an .npy array is left to ``_get``."""
    zf = npz.zip
    member = key if key in zf.namelist() else key + ".npy"  # numpy's rule: the exact name first
    info = zf.getinfo(member)
    archive = path.stat().st_size
    if info.compress_size > archive or (info.compress_type == zipfile.ZIP_STORED
                                        and info.file_size != info.compress_size) \
            or (info.compress_type == zipfile.ZIP_DEFLATED
                and info.file_size > _DEFLATE_MAX_RATIO * info.compress_size + 65536):
        raise DataError(f"{path}: key '{key}' cannot be read: the zip entry claims {info.file_size} "
                        f"bytes from {info.compress_size} stored in a {archive}-byte file "
                        "(truncated or corrupt)")
    with zf.open(info) as f:
        if f.read(6) != b"\x93NUMPY":
            return
        f.seek(0)
        try:
            shape, _, dtype, nbytes = read_npy_header(f)
        except ValueError as exc:
            raise DataError(f"{path}: key '{key}' cannot be read: not a valid .npy header ({exc})") from None
        header = f.tell()
    if dtype.hasobject:
        raise DataError(f"{path}: key '{key}' holds Python objects (pickled); refusing to load it")
    if dtype.kind not in "biufc":
        raise DataError(f"{path}: key '{key}': expected numbers, got {dtype}")
    if header + nbytes > info.file_size:
        raise DataError(f"{path}: key '{key}' declares shape {shape} ({nbytes} bytes of {dtype}) "
                        f"but holds {max(info.file_size - header, 0)} bytes (truncated or corrupt)")


def _get(npz, path: Path, key: str) -> np.ndarray:
    try:
        _check_member(npz, path, key)
        value = npz[key]
    except DataError:
        raise
    except MemoryError:
        raise DataError(f"{path}: key '{key}' is too large to load into memory") from None
    except ValueError as exc:
        if "pickle" in str(exc) or "Object arrays" in str(exc):
            raise DataError(f"{path}: key '{key}' holds Python objects (pickled); refusing to "
                            "load it") from None
        raise DataError(f"{path}: key '{key}' cannot be read ({exc})") from None
    except _READ_ERRORS as exc:
        raise DataError(f"{path}: key '{key}' cannot be read: the file is truncated or corrupt "
                        f"({type(exc).__name__}: {exc})") from None
    if not isinstance(value, np.ndarray):  # a member that is not an .npy array comes back as bytes
        raise DataError(f"{path}: key '{key}' cannot be read: not a NumPy array (corrupt NPZ member)")
    if value.dtype.kind in "OSUV":
        raise DataError(f"{path}: key '{key}': expected numbers, got {value.dtype}")
    return value


def memmap_member(path: Path, key: str) -> np.memmap | None:
    """The ``key`` member of an NPZ as a read-only memory map, when it is stored
    uncompressed (``np.savez``; our ``write_npz``) as a C-ordered array of numbers; else None
    (a compressed member can only be read whole)."""
    try:
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo(key + ".npy")
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:  # compressed / encrypted
            return None
        with open(path, "rb") as f:
            f.seek(info.header_offset)
            local = f.read(30)  # the member's local header: its name and extra field lengths follow
            if len(local) < 30 or local[:4] != b"PK\x03\x04":
                return None
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            start = info.header_offset + 30 + name_len + extra_len
            f.seek(start)
            shape, fortran, dtype, nbytes = read_npy_header(f)
            offset = f.tell()
    except _READ_ERRORS:
        return None
    if fortran or dtype.hasobject or dtype.kind not in "iufb" or len(shape) != 3 or nbytes == 0:
        return None
    if offset + nbytes > os.path.getsize(path) or offset + nbytes > start + info.compress_size:
        return None  # truncated or inconsistent: the whole read reports it
    try:
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
    except (ValueError, OSError, OverflowError):
        return None


def read_npz(path: str | os.PathLike, edge_policy: str = "warn", lazy: bool = False) -> PtychoDataset:
    """Read a PtychoPINN NPZ file into a validated :class:`PtychoDataset`.

    ``lazy``: leave an uncompressed diffraction member on disk (memory-mapped; read and
    checked block by block, like our lazy HDF5); a compressed one is read whole."""
    path = Path(path)
    with _open(path) as npz:
        keys = set(npz.files)
        diff_key = "diffraction" if "diffraction" in keys else ("diff3d" if "diff3d" in keys else None)
        missing = ([] if diff_key else ["diffraction"]) + [k for k in ("probeGuess", "xcoords", "ycoords")
                                                             if k not in keys]
        if missing:
            what = "; ".join(f"'{k}' ({NPZ_REQUIRED[k]})" for k in missing)
            raise DataError(f"{path}: missing key{'s' if len(missing) > 1 else ''} {what}; "
                            f"found: {list_names(keys)}")
        x = real_vector(_get(npz, path, "xcoords"), path, "xcoords")
        y = real_vector(_get(npz, path, "ycoords"), path, "ycoords")
        if x.shape != y.shape:
            raise DataError(f"{path}: keys 'xcoords' and 'ycoords' differ in length ({x.size} vs {y.size})")
        positions = coords.positions_from_xy(x, y)
        mapped = memmap_member(path, diff_key) if lazy else None
        if mapped is not None:
            from .hdf5 import LazyDiffraction
            diffraction = LazyDiffraction(mapped, diff_key, str(path), is_legacy_stack(mapped.shape, len(x)))
        else:
            diffraction = untranspose_legacy_stack(_get(npz, path, diff_key), len(x),
                                                   f"{path}: key '{diff_key}'")
        probe = _get(npz, path, "probeGuess")
        obj = _get(npz, path, "objectGuess") if "objectGuess" in keys else None
        scan_index = real_vector(_get(npz, path, "scan_index"), path, "scan_index") if "scan_index" in keys else None
        start = None
        if "xcoords_start" in keys or "ycoords_start" in keys:
            if not {"xcoords_start", "ycoords_start"} <= keys:
                raise DataError(f"{path}: has only one of the keys 'xcoords_start'/'ycoords_start'; "
                                "expected both or neither")
            xs = real_vector(_get(npz, path, "xcoords_start"), path, "xcoords_start")
            ys = real_vector(_get(npz, path, "ycoords_start"), path, "ycoords_start")
            if xs.shape != x.shape or ys.shape != x.shape:
                raise DataError(f"{path}: keys 'xcoords_start'/'ycoords_start' must have {x.size} "
                                f"entries like 'xcoords', got {xs.size} and {ys.size}")
            start = coords.positions_from_xy(xs, ys)
        meta = {k: _get(npz, path, k) for k in Metadata.KEYS if k in keys}
    return PtychoDataset(
        diffraction=diffraction, positions=positions, probe=probe, object=obj,
        scan_index=scan_index, positions_start=start,
        metadata=Metadata.from_mapping(meta, str(path)), source=str(path),
        key_names={"diffraction": diff_key, "positions": "xcoords/ycoords", "probe": "probeGuess",
                   "object": "objectGuess", "positions_start": "xcoords_start/ycoords_start"},
        edge_policy=edge_policy)


def write_npz(dataset: PtychoDataset, path: str | os.PathLike, compressed: bool = False) -> Path:
    """Write ``dataset`` as a PtychoPINN NPZ file, atomically. Returns the path."""
    path = Path(path)
    x, y = coords.xy_from_positions(dataset.positions)
    arrays = {
        "diffraction": np.asarray(dataset.diffraction[:], dtype=np.float32),
        "probeGuess": dataset.probe.astype(np.complex64),
        "xcoords": x,
        "ycoords": y,
    }
    if dataset.object is not None:
        arrays["objectGuess"] = dataset.object.astype(np.complex64)
    if dataset.scan_index is not None:
        arrays["scan_index"] = dataset.scan_index.astype(np.int64)
    if dataset.positions_start is not None:
        arrays["xcoords_start"], arrays["ycoords_start"] = coords.xy_from_positions(dataset.positions_start)
    arrays.update({k: np.float64(v) for k, v in dataset.metadata.to_dict().items()})
    save = np.savez_compressed if compressed else np.savez
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:  # a file object: savez would append ".npz" to a name
            save(f, **arrays)
    return path
