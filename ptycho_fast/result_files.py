"""The reconstruction output directory that ``infer`` and ``refine`` write and ``evaluate``,
``compare`` and ``info`` read: its file names, its layout, its writers and its readers, in
one place (docs/inference.md, docs/refine.md, docs/evaluation.md).

Every reconstruction directory holds the object in the data's object pixel frame:

* ``object.npz``: ``object`` (H, W) complex64, ``coverage`` (H, W) float32 (the accumulated
  weight: the stitch window for infer, the probe dose for refine), ``covered`` (H, W) bool,
  ``positions`` (P, 2) probe centres (row, col) in canvas pixels, ``origin`` (2,) the
  data-frame (row, col) of canvas pixel [0, 0], ``coverage_floor``;
* ``object.h5``: the same arrays with units and the convention as attributes;
* ``object_ptychodus.h5`` (on request), ``amplitude.png``, ``phase.png``, ``summary.json``
  (infer's holds ``patch_stats``: ``var_zero_mean`` of the view ``var_zero_mean_view`` and
  each view's mean/std/min/max).

infer's ``--debug-dump`` directory holds ``stats.json`` (the same ``patch_stats`` block).

Readers: :func:`read_reconstruction` (a reconstruction directory, or an NPZ/.npy holding a
complex ``object``) and :func:`read_output_directory` (what ``compare`` reads: a
reconstruction directory or a debug-dump directory, with its patch statistics). Anything
that is not one of these is one :class:`~ptycho_fast.files.UserError` naming the path and
what was expected.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import figures
from .data import file_kind
from .files import OutputSet, UserError, read_json_object

__all__ = [
    "OBJECT_NPZ", "OBJECT_H5", "PTYCHODUS_PRODUCT", "AMPLITUDE_PNG", "PHASE_PNG", "SUMMARY_JSON",
    "OBJECT_FORMAT", "FORMAT_VERSION", "CONVENTION", "ObjectArrays", "write_object_npz",
    "write_object_h5", "write_object_images", "FORMATS", "DEFAULT_FORMATS", "parse_formats",
    "DEBUG_STATS_JSON", "StoredReconstruction", "PatchStatistics", "OutputDirectory",
    "read_reconstruction", "read_output_directory", "read_patch_statistics", "is_reconstruction_dir",
    "open_npz", "npz_array", "as_complex_object", "STAT_NAMES",
]

OBJECT_NPZ = "object.npz"
OBJECT_H5 = "object.h5"
PTYCHODUS_PRODUCT = "object_ptychodus.h5"
AMPLITUDE_PNG = "amplitude.png"
PHASE_PNG = "phase.png"
SUMMARY_JSON = "summary.json"
#: the statistics file of infer's --debug-dump directory
DEBUG_STATS_JSON = "stats.json"
FORMATS = ("npz", "h5", "ptychodus")
DEFAULT_FORMATS = ("npz", "h5")
OBJECT_FORMAT = "ptycho_fast.inference_object"
FORMAT_VERSION = 1
CONVENTION = ("object[row, col] in canvas pixels; canvas pixel [0, 0] is data-frame pixel origin "
              "(row, col) (0, 0 when the data has objectGuess: same frame); positions are probe "
              "centres (row, col) in canvas pixels; a patch centred at (y, x) has top-left "
              "(y - N/2, x - N/2)")


@dataclass
class ObjectArrays:
    """The arrays of ``object.npz`` / ``object.h5`` (module doc)."""
    object: np.ndarray
    coverage: np.ndarray
    covered: np.ndarray
    positions: np.ndarray
    origin: np.ndarray
    coverage_floor: float
    coverage_units: str = "accumulated window weight"


def write_object_npz(path: Path, arrays: ObjectArrays) -> None:
    with open(path, "wb") as f:
        np.savez(f, object=arrays.object.astype(np.complex64), coverage=arrays.coverage.astype(np.float32),
                 covered=arrays.covered, positions=arrays.positions.astype(np.float64),
                 origin=np.asarray(arrays.origin, dtype=np.float64),
                 coverage_floor=np.float64(arrays.coverage_floor))


def write_object_h5(path: Path, arrays: ObjectArrays, attrs: dict) -> None:
    import h5py
    with h5py.File(path, "w") as f:
        f.attrs["format"] = OBJECT_FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["convention"] = CONVENTION
        for k, v in attrs.items():
            f.attrs[k] = v
        d = f.create_dataset("object", data=arrays.object.astype(np.complex64), chunks=True, compression="gzip")
        d.attrs["units"] = "complex transmission"
        f.create_dataset("coverage", data=arrays.coverage.astype(np.float32), chunks=True,
                         compression="gzip").attrs["units"] = arrays.coverage_units
        f.create_dataset("covered", data=arrays.covered, chunks=True, compression="gzip")
        f.create_dataset("positions", data=arrays.positions.astype(np.float64)).attrs["units"] = \
            "probe centres (row, col), canvas pixels"
        f.create_dataset("origin", data=np.asarray(arrays.origin, dtype=np.float64)).attrs["units"] = \
            "data-frame (row, col) of canvas pixel [0, 0]"


def write_object_images(outputs: OutputSet, arrays: ObjectArrays, title: str, pixel_size_m=None) -> None:
    """``amplitude.png`` and ``phase.png``; ``title`` has a ``{what}`` placeholder."""
    with outputs.file(AMPLITUDE_PNG) as tmp:
        tmp.write_bytes(figures.object_png(np.abs(arrays.object), arrays.covered, title.format(what="amplitude"),
                                           "amplitude (transmission)", "gray", pixel_size_m))
    with outputs.file(PHASE_PNG) as tmp:
        tmp.write_bytes(figures.object_png(np.angle(arrays.object), arrays.covered, title.format(what="phase"),
                                           "phase (rad)", "viridis", pixel_size_m))


def parse_formats(values) -> tuple[str, ...]:
    """``--format`` values (repeated or comma-separated) -> the formats to write: the
    defaults (npz, h5) plus the ones named (``--format ptychodus`` adds the product)."""
    out = list(DEFAULT_FORMATS)
    for v in values or ():
        for item in str(v).split(","):
            item = item.strip()
            if not item:
                continue
            if item not in FORMATS:
                raise UserError(f"--format: must be a comma-separated list of {', '.join(FORMATS)}, "
                                f"got {item!r}")
            if item not in out:
                out.append(item)
    return tuple(out)


# ----------------------------------------------------------------------------- readers
#: the patch statistics shown next to var_zero_mean
STAT_NAMES = ("mean", "std", "min", "max")


@dataclass
class StoredReconstruction:
    """A reconstruction read back from its files (:func:`read_reconstruction`)."""
    object: np.ndarray                      # (H, W) complex128
    coverage: np.ndarray | None = None      # (H, W) float, 0 = not covered
    positions: np.ndarray | None = None     # (P, 2) probe centres (row, col), canvas pixels
    N: int | None = None
    source: str = "<memory>"
    summary: dict = field(default_factory=dict)
    covered: np.ndarray | None = None       # (H, W) bool: the pixels the writer counted as covered
    origin: tuple[int, int] | None = None   # data-frame (row, col) of canvas pixel [0, 0]

    def covered_mask(self) -> np.ndarray | None:
        if self.covered is not None:
            return self.covered
        return None if self.coverage is None else self.coverage > 0


def is_reconstruction_dir(path) -> bool:
    """Whether ``path`` is a directory holding a reconstruction (its ``object.npz``)."""
    return (Path(path) / OBJECT_NPZ).is_file()


def open_npz(path: Path, what: str):
    """``np.load`` without pickle; a damaged or pickled file is one UserError."""
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc):
            raise UserError(f"{what} {path}: holds pickled Python objects; refusing to load it") from None
        raise UserError(f"{what} {path}: not a readable NPZ/.npy file ({exc})") from None
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise UserError(f"{what} {path}: not a readable NPZ/.npy file ({exc})") from None


def npz_array(npz, key: str, path: Path, what: str) -> np.ndarray:
    try:
        return np.asarray(npz[key])
    except KeyError:
        raise UserError(f"{what} {path}: no key '{key}' (found: {', '.join(sorted(npz.files)) or 'nothing'})") from None
    except ValueError as exc:
        raise UserError(f"{what} {path}: key '{key}' cannot be read without pickle ({exc})") from None


def as_complex_object(arr: np.ndarray, where: str, other_is_complex_hint: str) -> np.ndarray:
    """``arr`` as a finite (H, W) complex128 object; anything else is one UserError."""
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise UserError(f"{where}: expected a 2-D (H, W) complex object, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise UserError(f"{where}: expected complex numbers, got dtype {arr.dtype}")
    if not np.iscomplexobj(arr):
        raise UserError(f"{where}: is real ({arr.dtype}) but {other_is_complex_hint}; evaluate compares "
                        "complex objects (amplitude·exp(i·phase)), so give the complex object, not an "
                        "amplitude or phase image")
    arr = arr.astype(np.complex128)
    if not np.all(np.isfinite(arr)):
        raise UserError(f"{where}: contains NaN or infinite values")
    return arr


def _summary_N(summary: dict) -> int | None:
    for key in ("N", "patch_size"):
        v = summary.get(key)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def read_reconstruction(path, what: str = "RECON") -> StoredReconstruction:
    """A reconstruction directory (``object.npz`` [+ ``summary.json``]), an NPZ with key
    ``object`` (optional ``coverage``, ``covered``, ``origin``, ``positions``), or a .npy
    complex array; every key checked (shape, dtype, finiteness) with one UserError."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} {path}: no such file or directory")
    summary: dict = {}
    file = path
    if path.is_dir():
        if not is_reconstruction_dir(path):
            raise UserError(f"{what} {path}: not a reconstruction directory: no {OBJECT_NPZ} in it (expected "
                            "a 'ptycho-fast infer' or 'refine' output directory, or an NPZ file with key 'object')")
        if (path / SUMMARY_JSON).is_file():
            summary = read_json_object(path / SUMMARY_JSON, what)
        file = path / OBJECT_NPZ
    kind = file_kind(file)
    if kind == "npy":
        obj = as_complex_object(open_npz(file, what), f"{what} {file}", "the truth must be complex too")
        return StoredReconstruction(obj, source=str(path), summary=summary, N=_summary_N(summary))
    if kind != "npz":
        raise UserError(f"{what} {path}: not an NPZ/.npy file or a reconstruction directory")
    with open_npz(file, what) as npz:
        rec = _npz_reconstruction(npz, file, what)
    rec.source, rec.summary, rec.N = str(path), summary, _summary_N(summary)
    return rec


def _npz_reconstruction(npz, file: Path, what: str) -> StoredReconstruction:
    obj = as_complex_object(npz_array(npz, "object", file, what), f"{what} {file}: key 'object'",
                            "the truth is complex")
    rec = StoredReconstruction(obj)
    if "coverage" in npz.files:
        coverage = npz_array(npz, "coverage", file, what)
        if coverage.shape != obj.shape or np.iscomplexobj(coverage) or not np.issubdtype(coverage.dtype, np.number):
            raise UserError(f"{what} {file}: key 'coverage' must be a real (H, W) = {obj.shape} "
                            f"weight map, got {coverage.dtype} of shape {coverage.shape}")
        rec.coverage = np.nan_to_num(coverage.astype(np.float64), nan=0.0)
    if "covered" in npz.files:
        covered = npz_array(npz, "covered", file, what)
        if covered.shape != obj.shape or not (covered.dtype == bool or np.issubdtype(covered.dtype, np.integer)):
            raise UserError(f"{what} {file}: key 'covered' must be a boolean (H, W) = {obj.shape} "
                            f"mask, got {covered.dtype} of shape {covered.shape}")
        rec.covered = covered.astype(bool)
    if "origin" in npz.files:
        o = npz_array(npz, "origin", file, what)
        if o.shape != (2,) or not np.issubdtype(o.dtype, np.number) or np.iscomplexobj(o) \
                or not np.all(np.isfinite(o)) or not np.array_equal(o, np.round(o)):
            raise UserError(f"{what} {file}: key 'origin' must be two integers (row, col), "
                            f"got {o.dtype} {o.tolist()}")
        rec.origin = (int(o[0]), int(o[1]))
    if "positions" in npz.files:
        positions = npz_array(npz, "positions", file, what)
        if positions.ndim != 2 or positions.shape[1:] != (2,) or np.iscomplexobj(positions) \
                or not np.issubdtype(positions.dtype, np.number) or not np.all(np.isfinite(positions)):
            raise UserError(f"{what} {file}: key 'positions' must be finite (P, 2) probe centres "
                            f"(row, col), got {positions.dtype} of shape {positions.shape}")
        rec.positions = positions.astype(np.float64)
    return rec


@dataclass
class PatchStatistics:
    """The ``patch_stats`` block of a summary.json or stats.json (:func:`read_patch_statistics`)."""
    var_zero_mean: float                    # NaN/Inf kept: patches that went non-finite
    source: str                             # e.g. "summary.json:patch_stats.var_zero_mean"
    stats: dict = field(default_factory=dict)   # mean/std/min/max of the var_zero_mean view


def read_patch_statistics(doc: dict, name: str, where: str) -> PatchStatistics | None:
    """The patch statistics infer writes into ``doc`` (the JSON of file ``name``) under
    ``patch_stats``, or None when it holds none (a refine summary). ``where`` names the
    file in errors."""
    block = doc.get("patch_stats")
    if not isinstance(block, dict) or "var_zero_mean" not in block:
        return None
    value = block["var_zero_mean"]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{where}: patch_stats.var_zero_mean: expected a number, got {value!r}")
    if float(value) < 0:
        raise UserError(f"{where}: patch_stats.var_zero_mean: expected a variance >= 0, got {value!r}")
    view = block.get("var_zero_mean_view")
    src = block[view] if isinstance(view, str) and isinstance(block.get(view), dict) else block
    stats = {k: float(src[k]) for k in STAT_NAMES
             if isinstance(src.get(k), (int, float)) and not isinstance(src.get(k), bool)}
    return PatchStatistics(float(value), f"{name}:patch_stats.var_zero_mean", stats)


@dataclass
class OutputDirectory:
    """What an infer/refine output directory or an infer --debug-dump directory holds."""
    path: Path
    summary: dict = field(default_factory=dict)
    patch_stats: PatchStatistics | None = None      # from summary.json, else stats.json
    reconstruction: StoredReconstruction | None = None   # object.npz


def read_output_directory(path, what: str) -> OutputDirectory:
    """Read a reconstruction directory (object.npz, summary.json) or a --debug-dump
    directory (stats.json); anything else is one UserError naming the path and these."""
    path = Path(path)
    expected = (f"expected a 'ptycho-fast infer' output directory ({OBJECT_NPZ}, {SUMMARY_JSON}) "
                f"or a --debug-dump directory ({DEBUG_STATS_JSON})")
    if not path.exists():
        raise UserError(f"{what} {path}: no such directory")
    if not path.is_dir():
        raise UserError(f"{what} {path}: is not a directory; {expected}")
    out = OutputDirectory(path)
    if is_reconstruction_dir(path):
        out.reconstruction = read_reconstruction(path, what)
        out.summary = out.reconstruction.summary
    elif (path / SUMMARY_JSON).is_file():
        out.summary = read_json_object(path / SUMMARY_JSON, what)
    docs = [(SUMMARY_JSON, out.summary)] if (path / SUMMARY_JSON).is_file() else []
    if (path / DEBUG_STATS_JSON).is_file():
        docs.append((DEBUG_STATS_JSON, read_json_object(path / DEBUG_STATS_JSON, what)))
    if not docs and out.reconstruction is None:
        raise UserError(f"{what} {path}: holds none of {OBJECT_NPZ}, {SUMMARY_JSON}, {DEBUG_STATS_JSON}; "
                        f"{expected}")
    for name, doc in docs:
        out.patch_stats = read_patch_statistics(doc, name, f"{what} {path / name}")
        if out.patch_stats is not None:
            break
    return out
