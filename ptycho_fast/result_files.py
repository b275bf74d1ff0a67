"""The reconstruction output directory that ``infer`` and ``refine`` write and ``evaluate``,
``compare`` and ``info`` read: its file names, its layout and its writers, in one place
(docs/inference.md, docs/refine.md).

Every reconstruction directory holds the object in the data's object pixel frame:

* ``object.npz``: ``object`` (H, W) complex64, ``coverage`` (H, W) float32 (the accumulated
  weight: the stitch window for infer, the probe dose for refine), ``covered`` (H, W) bool,
  ``positions`` (P, 2) probe centres (row, col) in canvas pixels, ``origin`` (2,) the
  data-frame (row, col) of canvas pixel [0, 0], ``coverage_floor``;
* ``object.h5``: the same arrays with units and the convention as attributes;
* ``object_ptychodus.h5`` (on request), ``amplitude.png``, ``phase.png``, ``summary.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import figures
from .files import OutputSet, UserError

__all__ = [
    "OBJECT_NPZ", "OBJECT_H5", "PTYCHODUS_PRODUCT", "AMPLITUDE_PNG", "PHASE_PNG", "SUMMARY_JSON",
    "OBJECT_FORMAT", "FORMAT_VERSION", "CONVENTION", "ObjectArrays", "write_object_npz",
    "write_object_h5", "write_object_images", "FORMATS", "DEFAULT_FORMATS", "parse_formats",
]

OBJECT_NPZ = "object.npz"
OBJECT_H5 = "object.h5"
PTYCHODUS_PRODUCT = "object_ptychodus.h5"
AMPLITUDE_PNG = "amplitude.png"
PHASE_PNG = "phase.png"
SUMMARY_JSON = "summary.json"
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
