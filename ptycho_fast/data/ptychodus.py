"""ptychodus product and diffraction files (HDF5), read and write; checked against ptychodus 1.7.0.

The layout is ptychodus' own (1.7.0, ``ptychodus/api/io.py``: ``ProductFileKeys`` with
``load_product`` / ``save_product``, ``DiffractionFileKeys`` with ``load_diffraction_data`` /
``save_diffraction_data``; docs/data.md §5.3 lists every key)::

    product:  / attrs name, comments, detector_object_distance_m, photon_energy_eV,
                      probe_photon_count, exposure_time_s, mass_attenuation_m2_per_kg,
                      tomography_angle_deg, focus_object_distance_m, tilt_angle_deg,
                      far_field [, polarization]
              /probe_position_indexes (P,)  /probe_position_x_m (P,)  /probe_position_y_m (P,)
              [/probe_photon_counts (P,)]
              /probe (M, N, N) or (OPR, M, N, N) complex, attrs pixel_width_m, pixel_height_m
              [/opr_weights (P, OPR)]
              /object (1, H, W) complex, attrs center_x_m, center_y_m, pixel_width_m, pixel_height_m
              /object_layer_spacing_m (L-1,)  /loss_epochs  /loss_values
    diffraction: /patterns (P, N, N) counts, attrs detector_pixel_width_m, detector_pixel_height_m
              /indexes (P,)  /bad_pixels (N, N) bool  [/probe_photon_counts (P,)]

**Pixel convention.** ptychodus puts a probe position at the geometric middle of its
N x N patch (the patch starts at ``centre - (N-1)/2``) and the object centre at pixel
``(W-1)/2``; ours is at patch pixel ``N/2``. The same placement therefore has ptychodus
pixel = ours - 1/2; ``coords.pixels_to_metres`` / ``metres_to_pixels`` convert (tested
against ptychodus' own ``ObjectGeometry`` and ``resolve_patch_bounds``).

**Unknowns.** An unknown photon energy or detector distance is written as NaN with a
:class:`DataWarning` (ptychodus requires both attributes; 0 would load as a zero
wavelength). 0 or NaN read back as unknown (None). Other unknown values are written as
ptychodus' defaults (0, far_field true, centre (0, 0)) and listed in our attribute
``ptycho_fast_unknown``, so they read back as unknown.

**What is kept.** Numeric product fields become :class:`Metadata` keys (written to NPZ /
our HDF5 too). The rest of what ptycho_fast does not use (name, comments, polarization,
losses, per-position and per-pattern photon counts, the bad-pixel mask, OPR modes and
weights, detector and probe pixel sizes, integer pattern dtype) is kept in
``metadata.extra["ptychodus"]`` so that :func:`write_ptychodus` restores it;
:func:`ptychodus_only_fields` says which of it NPZ / HDF5 would lose.

Ours, beyond ptychodus (ptychodus ignores these): ``ptycho_fast_diffraction_file`` (the
companion file's name), ``ptycho_fast_placeholder_object = 1`` (an all-ones object written
because the dataset has none; dropped on reading), ``ptycho_fast_probe_calibrated``,
``ptycho_fast_unknown``, ``ptycho_fast_scan_index`` (when our scan_index has repeats, which ptychodus would average
as one position) and ``ptycho_fast_positions_start_x_m`` / ``_y_m``.
"""

from __future__ import annotations

import math
import mmap
import os
import warnings
from pathlib import Path

import h5py
import numpy as np

from .. import coords
from .dataset import (DataError, DataWarning, Metadata, PtychoDataset, atomic_output, check_amplitudes,
                      list_names)
from .hdf5 import _H5_ERRORS, check_storage, damaged_file_errors, open_h5, short_text

__all__ = ["write_ptychodus", "write_ptychodus_pair", "write_ptychodus_product", "read_ptychodus",
           "default_diffraction_path", "find_diffraction_path", "resolve_product_path",
           "is_ptychodus_product", "is_ptychodus_diffraction", "ptychodus_only_fields",
           "detector_pixel_size", "PRODUCT_FILE", "DIFFRACTION_FILE", "PTYCHODUS_VERSION"]

PTYCHODUS_VERSION = "1.7.0"  # the version this layout was checked against (tests use it)
#: h*c / e in eV*m (exact SI constants): wavelength_m = HC_EV_M / energy_eV
HC_EV_M = 6.62607015e-34 * 299792458.0 / 1.602176634e-19
#: ptychodus' workflow directory layout (``ptychodus.api.io.StandardFileLayout``)
PRODUCT_FILE = "product.h5"
DIFFRACTION_FILE = "diffraction.h5"

_DIFFRACTION_ATTR = "ptycho_fast_diffraction_file"
_PLACEHOLDER_ATTR = "ptycho_fast_placeholder_object"
_CALIBRATED_ATTR = "ptycho_fast_probe_calibrated"
_UNKNOWN_ATTR = "ptycho_fast_unknown"  # metadata keys written as ptychodus' defaults because unknown
_SCAN_INDEX_KEY = "ptycho_fast_scan_index"
_START_KEYS = ("ptycho_fast_positions_start_x_m", "ptycho_fast_positions_start_y_m")
_EXTRA = "ptychodus"  # key of metadata.extra

# Root attributes that become Metadata keys as read: (ptychodus name, legacy names), key.
_PLAIN_ATTRS = (
    (("exposure_time_s",), "exposure_time_s"),
    (("mass_attenuation_m2_per_kg", "mass_attenuation_m2_kg"), "mass_attenuation_m2_per_kg"),
    (("tomography_angle_deg",), "tomography_angle_deg"),
    (("tilt_angle_deg",), "tilt_angle_deg"),
    (("focus_object_distance_m",), "focus_object_distance_m"),
)


# ---------------------------------------------------------------------------- file names
def default_diffraction_path(product_path: str | os.PathLike) -> Path:
    """The companion diffraction file written beside a product: ``diffraction.h5`` beside a
    ``product.h5`` (ptychodus' workflow layout), else ``<stem>-diffraction.h5``."""
    p = Path(product_path)
    if p.name == PRODUCT_FILE:
        return p.with_name(DIFFRACTION_FILE)
    return p.with_name(p.stem + "-diffraction.h5")


def resolve_product_path(path: str | os.PathLike) -> Path:
    """A product file, or a directory holding ptychodus' ``product.h5``."""
    p = Path(path)
    if p.is_dir():
        if not (p / PRODUCT_FILE).is_file():
            raise DataError(f"{p}: is a directory without a ptychodus {PRODUCT_FILE}")
        return p / PRODUCT_FILE
    return p


def find_diffraction_path(product_path: str | os.PathLike, named=None) -> Path:
    """The diffraction file of a product: the one it names (``ptycho_fast_diffraction_file``),
    else :func:`default_diffraction_path`, else ``diffraction.h5`` beside it (ptychodus'
    workflow directory, also for its checkpoint products). DataError if none exists."""
    product_path = Path(product_path)
    tried = []
    if named is not None:
        tried.append(product_path.parent / (named.decode("utf-8", "replace") if isinstance(named, bytes)
                                            else str(named)))
    tried += [default_diffraction_path(product_path), product_path.with_name(DIFFRACTION_FILE)]
    for candidate in dict.fromkeys(tried):
        try:
            if candidate.is_file():
                return candidate
        except (OSError, ValueError):  # a name too long, or holding a NUL byte (a corrupt attribute)
            continue
    names = ", ".join(short_text(str(t), 120) for t in dict.fromkeys(tried))
    raise DataError(f"{product_path}: a ptychodus product holds no diffraction patterns and no "
                    f"diffraction file was found (tried {names}); pass the diffraction file explicitly")




def _has(f, key: str) -> bool:
    """``key in f``; DataError (naming the file) when the file's link table is damaged."""
    try:
        return key in f
    except _H5_ERRORS as exc:
        raise DataError(f"{f.filename}: not a readable HDF5 file (its links cannot be read: "
                        f"{short_text(exc)})") from None


def _keys(f) -> str:
    """The file's top-level names for a message (what could be listed)."""
    try:
        return list_names(f.keys())
    except _H5_ERRORS as exc:
        return f"(unreadable: {short_text(exc, 100)})"


def is_ptychodus_product(f: h5py.File) -> bool:
    """Whether ``f`` holds a ptychodus product's datasets. DataError when its links cannot
    be read (a corrupt file)."""
    return _has(f, "probe_position_x_m") and _has(f, "probe") and _has(f, "object")


def is_ptychodus_diffraction(f: h5py.File) -> bool:
    """Whether ``f`` is a ptychodus diffraction file (patterns, no positions). DataError
    when its links cannot be read."""
    return _has(f, "patterns") and not _has(f, "probe_position_x_m")


# ---------------------------------------------------------------------------- geometry helpers
def _pixel_pair(pixel_size_m, where: str = "ptychodus") -> tuple[float, float]:
    dy, dx = np.broadcast_to(np.asarray(pixel_size_m, dtype=np.float64), (2,))
    if not (np.isfinite([dy, dx]).all() and dy > 0 and dx > 0):
        raise DataError(f"{where}: pixel_size_m must be positive and finite, got {pixel_size_m}")
    return float(dy), float(dx)


def _resolve_pixel(pixel_size_m, meta: Metadata, where: str) -> tuple[float, float] | None:
    """(height, width): the argument ((dy, dx) or a scalar), else the metadata's pixel. A
    scalar equal to ``meta.pixel_size_m`` takes the metadata's height (non-square pixels)."""
    if pixel_size_m is None:
        yx = meta.pixel_size_yx_m
        return None if yx is None else _pixel_pair(yx, where)
    if np.ndim(pixel_size_m) == 0 and meta.pixel_size_yx_m is not None and float(pixel_size_m) == meta.pixel_size_m:
        return _pixel_pair(meta.pixel_size_yx_m, where)
    return _pixel_pair(pixel_size_m, where)


def _magnification(meta: Metadata) -> float:
    """ptychodus' ``compute_magnification`` (1 without a focusing optic)."""
    zf = meta.focus_object_distance_m or 0.0
    if zf == 0.0 or meta.distance_m is None:
        return 1.0
    return abs((meta.distance_m - zf) / zf)


def detector_pixel_size(meta: Metadata, N: int, pixel_yx_m=None) -> tuple[float, float] | None:
    """The detector pixel (height, width) in metres that ptychodus' geometry
    (``compute_product_geometry``) maps onto this object pixel: far field (the default)
    ``lambda * distance / (N * pixel)``, near field ``pixel * magnification``. None when a
    needed value is unknown."""
    yx = pixel_yx_m if pixel_yx_m is not None else meta.pixel_size_yx_m
    if yx is None:
        return None
    dy, dx = yx
    if meta.far_field is not None and not meta.far_field:
        m = _magnification(meta)
        return dy * m, dx * m
    if not meta.energy_eV or not meta.distance_m:
        return None
    lz = HC_EV_M / meta.energy_eV * abs(meta.distance_m)
    return lz / (N * dy), lz / (N * dx)


def _extra(meta: Metadata) -> dict:
    return meta.extra.get(_EXTRA, {}) if isinstance(meta.extra, dict) else {}


# ---------------------------------------------------------------------------- what NPZ/HDF5 lose
def ptychodus_only_fields(metadata: Metadata, N: int | None = None) -> dict[str, str]:
    """What ``metadata`` keeps from a ptychodus product that a PtychoPINN NPZ or our HDF5
    cannot hold: ``{field: description}``, only fields with a value that says something
    (a default name, an empty mask, a derivable detector pixel are not listed)."""
    ext = _extra(metadata)
    out: dict[str, str] = {}
    name = ext.get("name")
    if name not in (None, "", "Unnamed", ext.get("source_stem")):
        out["name"] = f"product name {name!r}"
    if ext.get("comments"):
        text = ext["comments"]
        out["comments"] = f"comments {text[:40]!r}{'...' if len(text) > 40 else ''}"
    if ext.get("polarization"):
        out["polarization"] = f"polarization {ext['polarization']!r}"
    if ext.get("losses") is not None:
        out["losses"] = f"{len(ext['losses'][0])} loss values"
    if ext.get("position_photon_counts") is not None:
        out["position_photon_counts"] = "per-position probe photon counts (product 'probe_photon_counts')"
    if ext.get("pattern_photon_counts") is not None:
        out["pattern_photon_counts"] = "per-pattern probe photon counts (diffraction 'probe_photon_counts')"
    if ext.get("bad_pixels") is not None:
        out["bad_pixels"] = f"bad-pixel mask ({int(np.count_nonzero(ext['bad_pixels']))} bad pixels)"
    if ext.get("opr") is not None:
        opr = ext["opr"]
        weights = "with" if opr["weights"] is not None else "without"
        out["opr_modes"] = f"{opr['array'].shape[0]} OPR probe modes {weights} per-position weights"
    if ext.get("probe_pixel_size_m") is not None:
        h, w = ext["probe_pixel_size_m"]
        out["probe_pixel_size"] = f"probe pixel {w:.4g} x {h:.4g} m (differs from the object pixel)"
    stored = ext.get("detector_pixel_size_m")
    if stored is not None:
        n, h, w = stored
        derived = detector_pixel_size(metadata, n)
        if derived is None or not np.allclose(derived, (h, w), rtol=1e-9, atol=0):
            out["detector_pixel_size"] = (f"detector pixel {w:.4g} x {h:.4g} m (not derivable from "
                                          "the pixel size, energy and distance)")
    return out


# ---------------------------------------------------------------------------- writing
def _warn_unknown(path: Path, meta: Metadata) -> None:
    unknown = [f"{what} (metadata '{key}', attribute '{attr}')"
               for what, key, attr in (("photon energy", "energy_eV", "photon_energy_eV"),
                                       ("detector distance", "distance_m", "detector_object_distance_m"))
               if getattr(meta, key) is None]
    if unknown:
        warnings.warn(f"{path}: unknown {' and '.join(unknown)}: written as NaN; ptychodus needs "
                      "them (wavelength, far-field sampling): set them there before reconstructing",
                      DataWarning, stacklevel=3)


def _write_product(path: Path, *, positions, probe, object_, pixel_yx, meta: Metadata, index,
                   name: str, comments: str, centre_yx, centre_known=True, losses=None, probe_pixel_yx=None,
                   opr_weights=None, position_photon_counts=None, attrs=None, datasets=None) -> None:
    """The product file, written at ``path`` (a temporary name: callers make it atomic)."""
    dy, dx = pixel_yx
    obj = np.asarray(object_)
    obj = obj[None] if obj.ndim == 2 else obj
    probe = np.asarray(probe)
    probe = probe[None] if probe.ndim == 2 else probe
    x_m, y_m = _metres(positions, obj.shape[-2:], (dy, dx), centre_yx)
    epochs, values = (np.zeros(0, np.int64), np.zeros(0, np.float64)) if losses is None else losses
    nan = float("nan")
    with h5py.File(path, "w") as f:
        f.attrs["name"] = name
        f.attrs["comments"] = comments
        f.attrs["detector_object_distance_m"] = nan if meta.distance_m is None else float(meta.distance_m)
        f.attrs["photon_energy_eV"] = nan if meta.energy_eV is None else float(meta.energy_eV)
        f.attrs["probe_photon_count"] = float(meta.photons_per_pattern or 0.0)
        for _, key in _PLAIN_ATTRS:
            f.attrs[key] = float(getattr(meta, key) or 0.0)
        f.attrs["far_field"] = np.bool_(True if meta.far_field is None else bool(meta.far_field))
        polarization = _extra(meta).get("polarization")
        if polarization:
            f.attrs["polarization"] = polarization
        unknown = [key for key in ("photons_per_pattern", *(k for _, k in _PLAIN_ATTRS), "far_field")
                   if getattr(meta, key) is None]
        unknown += [] if centre_known else ["object_center_x_m", "object_center_y_m"]
        if unknown:  # ptychodus' defaults were written: read them back as unknown
            f.attrs[_UNKNOWN_ATTR] = ",".join(unknown)
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
        f.create_dataset("probe_position_indexes", data=np.asarray(index, dtype=np.int64))
        f.create_dataset("probe_position_x_m", data=x_m)
        f.create_dataset("probe_position_y_m", data=y_m)
        if position_photon_counts is not None:
            f.create_dataset("probe_photon_counts", data=np.asarray(position_photon_counts, np.float64))
        h5_probe = f.create_dataset("probe", data=probe)
        py, px = probe_pixel_yx if probe_pixel_yx is not None else (dy, dx)
        h5_probe.attrs["pixel_width_m"] = float(px)
        h5_probe.attrs["pixel_height_m"] = float(py)
        if opr_weights is not None:
            f.create_dataset("opr_weights", data=np.asarray(opr_weights))
        h5_obj = f.create_dataset("object", data=obj)
        h5_obj.attrs["center_x_m"] = float(centre_yx[1])
        h5_obj.attrs["center_y_m"] = float(centre_yx[0])
        h5_obj.attrs["pixel_width_m"] = dx
        h5_obj.attrs["pixel_height_m"] = dy
        f.create_dataset("object_layer_spacing_m", data=np.zeros(obj.shape[0] - 1, np.float64))
        f.create_dataset("loss_epochs", data=np.asarray(epochs, dtype=np.int64))
        f.create_dataset("loss_values", data=np.asarray(values, dtype=np.float64))
        for k, v in (datasets or {}).items():
            f.create_dataset(k, data=v)


def _metres(positions, object_shape, pixel_yx, centre_yx) -> tuple[np.ndarray, np.ndarray]:
    """``coords.pixels_to_metres``, each value then raised by the few ulps that make
    ptychodus' inverse (``(x_m - centre) / pixel + (W-1)/2``) come back at least at
    the ptychodus pixel: ``resolve_patch_bounds`` truncates with ``int()``, and an integer
    placement read back as 5.999999999999996 would start its patch a pixel early and
    Fourier-shift the probe by a whole pixel instead."""
    x_m, y_m = coords.pixels_to_metres(positions, object_shape, pixel_yx, centre_yx)
    target = coords.to_ptychodus_pixels(positions)
    out = []
    for values, want, size, pixel, centre in ((x_m, target[..., 1], object_shape[-1], pixel_yx[1], centre_yx[1]),
                                              (y_m, target[..., 0], object_shape[-2], pixel_yx[0], centre_yx[0])):
        values = np.array(values, dtype=np.float64)
        for _ in range(8):
            low = (values - centre) / pixel + (size - 1) / 2 < want
            if not low.any():
                break
            values[low] = np.nextafter(values[low], np.inf)
        out.append(values)
    return out[0], out[1]


def _centre(meta: Metadata, centre_m) -> tuple[tuple[float, float], bool]:
    """(the object centre (y_m, x_m), whether it is known)."""
    if centre_m is not None:
        return (float(centre_m[0]), float(centre_m[1])), True
    known = meta.object_center_y_m is not None and meta.object_center_x_m is not None
    return (float(meta.object_center_y_m or 0.0), float(meta.object_center_x_m or 0.0)), known


def write_ptychodus_product(path: str | os.PathLike, positions, probe, object_, pixel_size_m=None,
                            metadata: Metadata | None = None, scan_index=None, losses=None,
                            name: str = "ptycho_fast", comments: str = "", centre_m=None,
                            extra_attrs: dict | None = None) -> Path:
    """Write a ptychodus product (positions (P, 2) centres (row, col) in object pixels, probe
    (N, N) or (M, N, N), object (H, W) complex) atomically.

    ``pixel_size_m``: the object pixel, a scalar or (height, width); None: the metadata's.
    ``centre_m``: the object centre (y_m, x_m); None: the metadata's, else (0, 0).
    ``losses``: optional (epochs, values). Unknown energy / distance: NaN and a DataWarning.
    """
    path = Path(path)
    meta = metadata or Metadata()
    pixel = _resolve_pixel(pixel_size_m, meta, str(path))
    if pixel is None:
        raise DataError(f"{path}: writing a ptychodus product needs the object pixel size in metres "
                        "(metadata 'pixel_size_m' or the pixel_size_m argument)")
    positions = np.asarray(positions, dtype=np.float64)
    index = np.arange(len(positions)) if scan_index is None else np.asarray(scan_index, dtype=np.int64)
    centre, centre_known = _centre(meta, centre_m)
    _warn_unknown(path, meta)
    with atomic_output(path) as tmp:
        _write_product(tmp, positions=positions, probe=np.asarray(probe).astype(np.complex64),
                       object_=np.asarray(object_).astype(np.complex64), pixel_yx=pixel, meta=meta,
                       index=index, name=name, comments=comments, centre_yx=centre,
                       centre_known=centre_known, losses=losses, attrs=extra_attrs)
    return path


def _source_keys(dataset: PtychoDataset, ext: dict):
    """The ptychodus index each row of ``dataset`` had in the product it was read from: its
    scan_index when that is unique (it is the product's index, and survives subsets and
    reordering), else the index read in that order when the positions are still the ones
    read; None when the rows cannot be matched (then per-position fields are not written)."""
    if dataset.scan_index is not None and len(np.unique(dataset.scan_index)) == len(dataset.scan_index):
        return dataset.scan_index
    read_index, read_positions = ext.get("read_index"), ext.get("read_positions")
    if read_index is not None and np.array_equal(read_positions, dataset.positions):
        return read_index
    return None


def _by_index(values, value_index, index, what: str, where: str):
    """Rows of ``values`` (keyed by ``value_index``) for each of ``index``; None (and a
    warning) when some are missing or ``index`` is None."""
    lookup = {int(k): i for i, k in enumerate(np.asarray(value_index).reshape(-1))}
    rows = [None] if index is None else [lookup.get(int(k)) for k in index]
    if any(r is None for r in rows):
        warnings.warn(f"{where}: {what} kept from the source file do not cover every position "
                      "(the dataset was subset or re-indexed): not written", DataWarning, stacklevel=4)
        return None
    return np.asarray(values)[np.asarray(rows, dtype=np.int64)]


def _pattern_dtype(dataset: PtychoDataset, dtype_name: str | None):
    """The integer dtype of the source's counts when every count written is (to float32
    round-off of sqrt) an integer again; else float32."""
    if dtype_name is None:
        return np.float32
    dtype = np.dtype(dtype_name)
    limit = np.iinfo(dtype).max
    for _, block in dataset.iter_batches(1024):
        counts = np.square(block.astype(np.float64))
        rounded = np.rint(counts)
        if (np.abs(counts - rounded) > 1e-6 * np.maximum(rounded, 1.0)).any() or rounded.max() > limit:
            return np.float32
    return dtype


def _write_diffraction(path: Path, dataset: PtychoDataset, index, detector_yx, bad_pixels,
                       photon_counts, dtype) -> None:
    N, P = dataset.N, dataset.n_patterns
    with h5py.File(path, "w") as f:
        patterns = f.create_dataset("patterns", shape=(P, N, N), dtype=dtype, chunks=(min(64, P), N, N),
                                    compression="gzip", compression_opts=4, shuffle=True)
        patterns.attrs["detector_pixel_width_m"] = float(detector_yx[1])
        patterns.attrs["detector_pixel_height_m"] = float(detector_yx[0])
        patterns.attrs["units"] = "counts (ptycho_fast stores sqrt(counts); this file squares them)"
        for idx, block in dataset.iter_batches(1024):
            counts = np.square(block.astype(np.float64 if dtype != np.float32 else np.float32))
            patterns[int(idx[0]):int(idx[-1]) + 1] = np.rint(counts) if dtype != np.float32 else counts
        f.create_dataset("indexes", data=np.asarray(index, dtype=np.int64))
        f.create_dataset("bad_pixels", data=np.asarray(bad_pixels, dtype=bool))
        if photon_counts is not None:
            f.create_dataset("probe_photon_counts", data=np.asarray(photon_counts, np.float64))


def write_ptychodus(dataset: PtychoDataset, path: str | os.PathLike, diffraction_path=None,
                    pixel_size_m=None, name: str | None = None, comments: str | None = None) -> tuple[Path, Path]:
    """Write ``dataset`` as a ptychodus product plus its diffraction file (both complete
    before either replaces its target). Returns (product, diffraction).

    ``diffraction_path`` defaults to :func:`default_diffraction_path` (``diffraction.h5``
    beside a ``product.h5``). ``pixel_size_m`` (object pixel, metres; scalar or (height,
    width)) defaults to the metadata's; one of the two is required. What the dataset kept
    from a ptychodus product (``metadata.extra``) is written back (module doc).
    """
    path = Path(path)
    diffraction_path = default_diffraction_path(path) if diffraction_path is None else Path(diffraction_path)
    meta = dataset.metadata
    pixel = _resolve_pixel(pixel_size_m, meta, str(path))
    if pixel is None:
        raise DataError(f"{path}: writing a ptychodus product needs the object pixel size in metres "
                        "(metadata 'pixel_size_m' or the pixel_size_m argument) to express "
                        "positions in metres")
    dy, dx = pixel
    N, P = dataset.N, dataset.n_patterns
    ext = _extra(meta)
    attrs: dict = {_DIFFRACTION_ATTR: os.path.relpath(diffraction_path, path.parent)}
    datasets: dict = {}
    centre, centre_known = _centre(meta, None)

    # Indexes: ptychodus pairs patterns and positions by them and averages repeats.
    if dataset.scan_index is None:
        index = np.arange(P)
    elif len(np.unique(dataset.scan_index)) == P:
        index = dataset.scan_index
    else:
        index = np.arange(P)
        datasets[_SCAN_INDEX_KEY] = dataset.scan_index
    obj = dataset.object
    if obj is None:  # ptychodus needs an object frame: ones covering every patch
        bottom_right = coords.centres_to_top_left(dataset.positions, N).max(axis=0) + N
        h, w = (max(int(math.ceil(v)), N) for v in bottom_right)
        obj = np.ones((h, w), np.complex64)
        attrs[_PLACEHOLDER_ATTR] = 1
    if meta.probe_calibrated is not None:
        attrs[_CALIBRATED_ATTR] = float(meta.probe_calibrated)
    if dataset.positions_start is not None:
        sx, sy = _metres(dataset.positions_start, obj.shape, (dy, dx), centre)
        datasets[_START_KEYS[0]], datasets[_START_KEYS[1]] = sx, sy

    # What the dataset kept from a ptychodus product.
    where = str(path)
    keys = _source_keys(dataset, ext)
    probe, opr_weights = dataset.probe, None
    opr = ext.get("opr")
    if opr is not None and np.array_equal(opr["taken"], dataset.probe):
        probe = opr["array"]
        if opr["weights"] is not None:
            opr_weights = _by_index(opr["weights"], opr["index"], keys, "OPR weights", where)
            if opr_weights is None:
                probe = dataset.probe
    elif opr is not None:
        warnings.warn(f"{where}: the probe differs from the one taken from the source's OPR modes: "
                      "the OPR modes and weights are not written", DataWarning, stacklevel=2)
    position_counts = None
    if ext.get("position_photon_counts") is not None:
        position_counts = _by_index(ext["position_photon_counts"][1], ext["position_photon_counts"][0],
                                    keys, "per-position photon counts", where)
    pattern_counts = None
    if ext.get("pattern_photon_counts") is not None:
        pattern_counts = _by_index(ext["pattern_photon_counts"][1], ext["pattern_photon_counts"][0],
                                   keys, "per-pattern photon counts", where)
    bad = ext.get("bad_pixels")
    bad_pixels = bad if bad is not None and bad.shape == (N, N) else np.zeros((N, N), bool)
    detector = None
    stored = ext.get("detector_pixel_size_m")
    if stored is not None and stored[0] == N:
        detector = stored[1:]
    if detector is None:
        detector = detector_pixel_size(meta, N, (dy, dx)) or (float("nan"), float("nan"))
    dtype = _pattern_dtype(dataset, ext.get("pattern_dtype"))

    _warn_unknown(path, meta)
    with atomic_output(diffraction_path) as tmp_diffraction, atomic_output(path) as tmp_product:
        _write_diffraction(tmp_diffraction, dataset, index, detector, bad_pixels, pattern_counts, dtype)
        _write_product(tmp_product, positions=dataset.positions, probe=probe, object_=obj,
                       pixel_yx=(dy, dx), meta=meta, index=index,
                       name=name if name is not None else ext.get("name", path.stem),
                       comments=comments if comments is not None else ext.get("comments", ""),
                       centre_yx=centre, centre_known=centre_known, losses=ext.get("losses"),
                       probe_pixel_yx=ext.get("probe_pixel_size_m"), opr_weights=opr_weights,
                       position_photon_counts=position_counts, attrs=attrs, datasets=datasets)
    return path, diffraction_path


def write_ptychodus_pair(dataset: PtychoDataset, directory: str | os.PathLike, pixel_size_m=None,
                         name: str | None = None, comments: str | None = None) -> tuple[Path, Path]:
    """Write ``directory/product.h5`` + ``directory/diffraction.h5``: ptychodus' workflow
    layout (``StandardFileLayout``), which its reconstruction workflow loads as is
    (``load_product``, ``load_diffraction_data``, ``prepare_reconstruct_input``). The
    directory is created if missing (its parent must exist)."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise DataError(f"{directory}: exists and is not a directory")
    if not directory.exists():
        parent = directory.parent if str(directory.parent) else Path(".")
        if not parent.is_dir():
            raise DataError(f"{directory}: cannot create it: directory {parent} does not exist")
        directory.mkdir()
    return write_ptychodus(dataset, directory / PRODUCT_FILE, directory / DIFFRACTION_FILE,
                           pixel_size_m=pixel_size_m, name=name, comments=comments)


# ---------------------------------------------------------------------------- reading
# A damaged file must end in a DataError, never another exception, a hang or a crash:
#
# * every h5py call on the file is guarded (_H5_ERRORS become DataError naming the file);
# * datasets are read only when their type says numbers and hdf5.check_storage finds the
#   declared size backed by data in this file (no external / virtual storage, no chunks
#   never written: they would read as a fill value of any declared size);
# * attributes are classified from their HDF5 type before anything is read: numbers are
#   read, strings are read as text, anything else (variable-length sequences, references,
#   opaque, compound) is refused unread. HDF5 2.0 crashes (SIGSEGV) reading a variable-length
#   sequence whose type was damaged, and decodes a corrupt global heap (where the
#   variable-length strings h5py and ptychodus write live) in an endless loop: the file's
#   global heap collections are checked (_check_global_heaps) before the first one is read.

#: numeric attribute classes (ENUM: h5py's bool; COMPOUND: h5py's complex, checked by dtype)
_NUMBER_CLASSES = (h5py.h5t.INTEGER, h5py.h5t.FLOAT, h5py.h5t.ENUM, h5py.h5t.COMPOUND)
_CLASS_NAMES = {h5py.h5t.VLEN: "a variable-length sequence", h5py.h5t.REFERENCE: "a reference",
                h5py.h5t.OPAQUE: "opaque bytes", h5py.h5t.ARRAY: "an array type",
                h5py.h5t.BITFIELD: "a bit field", h5py.h5t.TIME: "a time", h5py.h5t.COMPOUND: "a compound"}
#: the longest fixed-length string attribute read (the text attributes are names and notes)
_MAX_TEXT = 1 << 20


def _open_attr(node, name: str, path: Path):
    """(attribute id, its type id, number of elements) of ``node.attrs[name]``, nothing read."""
    try:
        aid = node.attrs.get_id(name)
        return aid, aid.get_type(), aid.get_space().get_simple_extent_npoints()
    except _H5_ERRORS as exc:
        raise DataError(f"{path}: attribute '{name}' cannot be read (corrupt: {short_text(exc)})") from None


def _has_attr(node, name: str, path: Path) -> bool:
    try:
        return name in node.attrs
    except _H5_ERRORS as exc:
        raise DataError(f"{path}: the attributes cannot be read (corrupt: {short_text(exc)})") from None


def _attr_value(node, name: str, path: Path):
    try:
        return node.attrs[name]
    except MemoryError:
        raise DataError(f"{path}: attribute '{name}' is too large to read") from None
    except _H5_ERRORS as exc:
        raise DataError(f"{path}: attribute '{name}' cannot be read (corrupt: {short_text(exc)})") from None


def _number(node, name: str, path: Path, where: str, heaps: set | None = None) -> float:
    """Attribute ``name`` as a float; DataError when it is not one number. ``heaps``: the
    files whose global heaps were checked (see :func:`_string`)."""
    aid, tid, npoints = _open_attr(node, name, path)
    cls = tid.get_class()
    if cls == h5py.h5t.STRING:  # as ptychodus' float(attrs[key]) reads it
        text = _string(node, name, path, tid, npoints, heaps)
        try:
            return float(text)
        except (TypeError, ValueError):
            raise DataError(f"{path}: attribute '{name}' of {where}: expected a number, got "
                            f"{'text ' + repr(short_text(text, 40)) if text is not None else 'text'}") from None
    if cls not in _NUMBER_CLASSES:
        raise DataError(f"{path}: attribute '{name}' of {where}: expected a number, got "
                        f"{_CLASS_NAMES.get(cls, f'HDF5 type class {cls}')} (not read)")
    try:
        dtype = aid.dtype
    except _H5_ERRORS as exc:
        raise DataError(f"{path}: attribute '{name}' cannot be read (corrupt: {short_text(exc)})") from None
    if dtype.kind not in "biufc":
        raise DataError(f"{path}: attribute '{name}' of {where}: expected a number, got {dtype} (not read)")
    if npoints != 1:
        raise DataError(f"{path}: attribute '{name}' of {where}: expected a number, got "
                        f"{npoints} values")
    value = _attr_value(node, name, path)
    try:
        return float(np.asarray(value).reshape(()))
    except (TypeError, ValueError):
        raise DataError(f"{path}: attribute '{name}' of {where}: expected a number, "
                        f"got {short_text(repr(value), 60)}") from None


def _attr(node, names: tuple[str, ...], path: Path, where: str, default=None, required=False,
          heaps: set | None = None):
    """The first present of the attributes ``names`` (current name, legacy names) as a float."""
    for n in names:
        if _has_attr(node, n, path):
            return _number(node, n, path, where, heaps)
    if required:
        raise DataError(f"{path}: {where} is missing the attribute '{names[0]}'")
    return default


def _string(node, name: str, path: Path, tid, npoints, heaps: set | None) -> str | None:
    """A string attribute (class STRING) as text; None when it holds no single string. A
    variable-length one is read only after :func:`_check_global_heaps` (once per file: the
    files checked are added to ``heaps``)."""
    if npoints != 1:
        return None
    try:
        variable = tid.is_variable_str()
        size = tid.get_size()
    except _H5_ERRORS as exc:
        raise DataError(f"{path}: attribute '{name}' cannot be read (corrupt: {short_text(exc)})") from None
    if not variable:
        if size > _MAX_TEXT:
            raise DataError(f"{path}: attribute '{name}' declares a {size}-byte string (corrupt)")
    elif heaps is None or str(path) not in heaps:
        _check_global_heaps(node.file, path)
        if heaps is not None:
            heaps.add(str(path))
    value = _attr_value(node, name, path)
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0] if value.size == 1 else None
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, str):  # h5py decodes invalid UTF-8 with surrogate escapes
        return value.encode("utf-8", "surrogateescape").decode("utf-8", errors="replace")
    return None


def _text(node, name: str, path: Path, heaps: set | None = None) -> str | None:
    """Attribute ``name`` as text (a number as its str); None when absent or of another kind
    (an array, a sequence, ...: not decoded, ignored)."""
    if not _has_attr(node, name, path):
        return None
    _, tid, npoints = _open_attr(node, name, path)
    cls = tid.get_class()
    if cls == h5py.h5t.STRING:
        return _string(node, name, path, tid, npoints, heaps)
    if cls in (h5py.h5t.INTEGER, h5py.h5t.FLOAT, h5py.h5t.ENUM) and npoints == 1:
        value = _number(node, name, path, "the file", heaps)
        return str(int(value)) if value.is_integer() else str(value)
    return None


def text_attributes(node, names, path) -> dict:
    """``{name: text or None}`` of attributes of ``node`` (an open HDF5 file, group or
    dataset; a number reads as its str, other kinds as None), read without the risks of
    decoding a damaged file's variable-length strings (see :func:`_check_global_heaps`);
    DataError when the file is damaged there."""
    path, heaps = Path(path), set()
    return {name: _text(node, name, path, heaps) for name in names}


#: a global heap collection: signature and version 1 (H5HGpkg.h); its size field follows
_GCOL = b"GCOL\x01"
_GCOL_MIN_SIZE = 4096   # H5HG_MINSIZE: HDF5 refuses smaller collections itself


def _check_global_heaps(f: h5py.File, path: Path) -> None:
    """Refuse a file whose global heap collections HDF5 2.0 would decode in an endless loop
    or beyond their end: an object of size 0 where the walk expects the free space (the
    walk never advances), an object reaching beyond its collection (in C the end pointer
    can wrap around). Every collection signature in the file is walked as
    H5HG__cache_heap_deserialize does (a well-formed collection ends exactly at its size).
    A collection declaring fewer than 4096 bytes or more than the file holds is not walked:
    HDF5 refuses it itself (it checks on opening that the file holds its whole allocation,
    then never reads past that), which also keeps signature bytes that happen to occur in
    array data from refusing a good file. A linear scan of the file (memory-mapped): done
    once per file read."""
    try:
        _, length = f.id.get_create_plist().get_sizes()
    except _H5_ERRORS as exc:
        raise DataError(f"{path}: not a readable HDF5 file (corrupt superblock: {short_text(exc)})") from None
    align = lambda n: (n + 7) // 8 * 8  # noqa: E731 - H5HG_ALIGN
    header = align(8 + length)          # H5HG_SIZEOF_HDR: magic, version, reserved, size
    obj_header = align(8 + length)      # H5HG_SIZEOF_OBJHDR: index, refs, reserved, size
    try:
        with open(path, "rb") as fh:
            if os.fstat(fh.fileno()).st_size == 0:
                return
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as m:
                end_of_file = len(m)
                at = m.find(_GCOL)
                while at >= 0:
                    bad = _walk_collection(m, at, end_of_file, length, header, obj_header)
                    if bad:
                        raise DataError(f"{path}: corrupt global heap collection at byte {at} ({bad}); "
                                        "its variable-length strings are not read")
                    at = m.find(_GCOL, at + 1)
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({short_text(exc)})") from None


def _walk_collection(m, at: int, end_of_file: int, length: int, header: int, obj_header: int) -> str | None:
    """Why the collection at byte ``at`` is unsafe to decode, or None."""
    if at + header > end_of_file:
        return None  # HDF5 cannot read its header either
    size = int.from_bytes(m[at + 8:at + 8 + length], "little")
    end = at + size
    if size < _GCOL_MIN_SIZE or end > end_of_file:
        return None  # HDF5 refuses it with an error (or it is not a collection): nothing to fear
    p = at + header
    while p < end:
        if p + obj_header > end:  # the tail too small for an object: free space
            break
        index = int.from_bytes(m[p:p + 2], "little")
        obj_size = int.from_bytes(m[p + 8:p + 8 + length], "little")
        need = obj_header + (obj_size + 7) // 8 * 8 if index else obj_size
        if need <= 0:
            return f"an object of size 0 at byte {p}"
        if p + need > end:
            return f"object {index} at byte {p} runs past the collection"
        p += need
    return None


def _dataset(f, key: str, path: Path) -> h5py.Dataset:
    try:
        obj = f.get(key)  # None for a missing key or a dangling soft link
    except _H5_ERRORS as exc:  # an external link to a missing file, a link loop, a damaged header
        raise DataError(f"{path}: dataset '{key}' cannot be opened (a broken link or a damaged "
                        f"object header: {short_text(exc)})") from None
    if obj is None:
        try:
            link = f.get(key, getlink=True)
        except _H5_ERRORS:
            link = None
        if isinstance(link, h5py.SoftLink):
            raise DataError(f"{path}: dataset '{key}' is a soft link to {short_text(link.path, 100)!r}, "
                            "which does not exist")
        if isinstance(link, h5py.ExternalLink):
            raise DataError(f"{path}: dataset '{key}' is an external link to "
                            f"{short_text(link.filename, 100)!r}:{short_text(link.path, 100)!r}, which cannot be opened")
        raise DataError(f"{path}: missing dataset '{key}' (ptychodus layout)")
    if not isinstance(obj, h5py.Dataset):
        raise DataError(f"{path}: '{key}' is not a dataset (ptychodus layout)")
    return obj


def _read(f, key: str, path: Path) -> np.ndarray:
    """A numeric dataset, read only when its type says numbers and the file holds the data
    its shape declares (hdf5.check_storage)."""
    dset = _dataset(f, key, path)
    with damaged_file_errors(path, f"dataset '{key}' cannot be read",
                             f"dataset '{key}' is too large to load into memory"):
        dtype = dset.dtype
        if dtype.kind not in "iufcb":  # refused from the type: nothing decoded
            raise DataError(f"{path}: dataset '{key}': expected numbers, got {dtype}")
        check_storage(dset, path, key)
        data = np.asarray(dset[()])
    if data.dtype.kind not in "iufcb":
        raise DataError(f"{path}: dataset '{key}': expected numbers, got {data.dtype}")
    return data


def _unique(index: np.ndarray, path: Path, key: str) -> None:
    values, counts = np.unique(index, return_counts=True)
    if (counts > 1).any():
        raise DataError(f"{path}: dataset '{key}' repeats index {int(values[counts > 1][0])} "
                        f"({int((counts > 1).sum())} repeated); ptychodus averages the positions of a "
                        "repeated index, ptycho_fast needs one position per pattern")


def _known(value: float | None, positive: bool = False) -> float | None:
    if value is None or not math.isfinite(value) or value == 0.0 or (positive and value < 0):
        return None
    return value


def _probe_from(probe: np.ndarray, weights, path: Path):
    """(the (M, N, N) or (N, N) probe ptycho_fast uses, OPR record or None). ptychodus'
    ``ProbeSequence[p]``: incoherent mode 0 = sum_k weights[p, k] * probe[k, 0], the other
    modes from OPR mode 0; without weights every position gets OPR mode 0."""
    if probe.ndim != 4:
        return probe, None
    K = probe.shape[0]
    if K == 0 or probe.shape[1] == 0:
        raise DataError(f"{path}: 'probe': expected (OPR, M, N, N) with OPR, M >= 1, got shape {probe.shape}")
    if weights is None and K == 1:
        return probe[0], None
    taken = probe[0].astype(np.complex128)
    if weights is None:
        what = (f"OPR mode 0 of {K} (ptychodus also uses mode 0 for every position when the "
                "product has no 'opr_weights')")
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim != 2 or w.shape[1] != K:
            raise DataError(f"{path}: dataset 'opr_weights': expected (P, {K}) for {K} OPR modes, "
                            f"got shape {w.shape}")
        mean = w.mean(axis=0)
        taken[0] = np.tensordot(mean, probe[:, 0], axes=1)
        varies = not np.allclose(w, w[:1], rtol=1e-6, atol=0)
        what = (f"the position-averaged probe of {K} OPR modes (incoherent mode 0 = OPR modes "
                f"weighted by the mean 'opr_weights' {np.array2string(mean, precision=4)}, other "
                "modes from OPR mode 0)" + ("; ptychodus varies the probe per position, ptycho_fast "
                                            "uses this one probe everywhere" if varies else ""))
    if K > 1 or weights is not None:
        warnings.warn(f"{path}: 'probe' has OPR modes (shape {probe.shape}): took {what}",
                      DataWarning, stacklevel=4)
    return taken.astype(np.complex64), {"array": probe, "weights": None if weights is None else np.asarray(weights)}


def read_ptychodus(path: str | os.PathLike, diffraction_path=None, edge_policy: str = "warn") -> PtychoDataset:
    """Read a ptychodus product (or a directory holding ``product.h5``) and its diffraction
    file into a :class:`PtychoDataset`.

    The diffraction file is ``diffraction_path`` if given, else :func:`find_diffraction_path`.
    Patterns and positions are paired by index (ptychodus' ``prepare_reconstruct_input``);
    positions without a pattern and patterns without a position are left out with a
    DataWarning. Positions become our convention (``coords.metres_to_pixels``). A damaged
    file raises DataError (see "reading" above), never another exception.
    """
    path = resolve_product_path(path)
    ext: dict = {"source_stem": path.stem}
    with open_h5(path) as f:
        with damaged_file_errors(path, "not a readable ptychodus product"):  # link tables, headers, heaps
            product = _read_product(f, path, ext)
    x_m, y_m, index, obj, probe, weights, (dy, dx), (py, px), placeholder, named, scan_index, start, meta = product

    if obj.ndim == 3:
        if obj.shape[0] != 1:
            raise DataError(f"{path}: 'object' has {obj.shape[0]} layers (multislice); only "
                            "single-layer objects are supported")
        obj = obj[0]
    if obj.ndim != 2:
        raise DataError(f"{path}: 'object': expected (H, W) or (1, H, W), got shape {obj.shape}")
    if probe.ndim not in (2, 3, 4):
        raise DataError(f"{path}: 'probe': expected (N, N), (M, N, N) or (OPR, M, N, N), got shape {probe.shape}")
    probe, opr = _probe_from(probe, weights, path)
    if probe.ndim == 3 and probe.shape[0] == 1:
        probe = probe[0]
    if opr is not None:  # restored on writing while the dataset's probe is still this one
        opr["index"], opr["taken"] = index, probe.astype(np.complex64)
        ext["opr"] = opr
    if not np.allclose((py, px), (dy, dx), rtol=1e-6, atol=0):
        warnings.warn(f"{path}: the probe pixel ({px:.4g} x {py:.4g} m) differs from the object pixel "
                      f"({dx:.4g} x {dy:.4g} m); ptycho_fast (like ptychodus' patch extraction) "
                      "places the probe on the object's pixel grid", DataWarning, stacklevel=2)
    if (py, px) != (dy, dx):
        ext["probe_pixel_size_m"] = (py, px)
    centre = (meta.object_center_y_m or 0.0, meta.object_center_x_m or 0.0)
    positions = coords.metres_to_pixels(x_m, y_m, obj.shape, (dy, dx), centre)
    positions_start = (None if start is None
                       else coords.metres_to_pixels(start[0], start[1], obj.shape, (dy, dx), centre))

    explicit = diffraction_path is not None
    diffraction_path = find_diffraction_path(path, named) if not explicit else Path(diffraction_path)
    try:
        keep, amplitudes = _read_patterns(diffraction_path, index, ext)
    except DataError as exc:
        standard = (default_diffraction_path(path), path.with_name(DIFFRACTION_FILE))
        if explicit or diffraction_path in standard or str(path) in str(exc):
            raise
        # found through the product's ptycho_fast_diffraction_file: say which product named it
        raise DataError(f"{exc} (the diffraction file named by {path})") from None
    if not keep.all():
        positions, index = positions[keep], index[keep]
        positions_start = None if positions_start is None else positions_start[keep]
        scan_index = None if scan_index is None else scan_index[keep]
    if scan_index is None and not np.array_equal(index, np.arange(len(index))):
        scan_index = index
    ext["read_index"], ext["read_positions"] = index, positions
    meta.extra[_EXTRA] = ext
    return PtychoDataset(diffraction=amplitudes, positions=positions, probe=probe,
                         object=None if placeholder else obj, scan_index=scan_index,
                         positions_start=positions_start, metadata=meta,
                         source=str(path), key_names={"positions": "probe_position_x_m/y_m"},
                         edge_policy=edge_policy)


def _read_product(f: h5py.File, path: Path, ext: dict) -> tuple:
    """Everything :func:`read_ptychodus` takes from the open product ``f`` (what ptycho_fast
    does not use goes to ``ext``)."""
    if not is_ptychodus_product(f):
        raise DataError(f"{path}: not a ptychodus product: expected the datasets 'probe', "
                        f"'object', 'probe_position_x_m', 'probe_position_y_m'; found: {_keys(f)}")
    x_m = _read(f, "probe_position_x_m", path).reshape(-1).astype(np.float64)
    y_m = _read(f, "probe_position_y_m", path).reshape(-1).astype(np.float64)
    if x_m.shape != y_m.shape:
        raise DataError(f"{path}: 'probe_position_x_m' and 'probe_position_y_m' differ in length")
    index = (_read(f, "probe_position_indexes", path).reshape(-1).astype(np.int64)
             if _has(f, "probe_position_indexes") else np.arange(len(x_m)))
    if index.shape != x_m.shape:
        raise DataError(f"{path}: 'probe_position_indexes' has {len(index)} entries for "
                        f"{len(x_m)} positions")
    _unique(index, path, "probe_position_indexes")
    obj = _read(f, "object", path)
    h5_obj = _dataset(f, "object", path)
    dx = _attr(h5_obj, ("pixel_width_m", "object_pixel_width_m"), path, "'object'", required=True)
    dy = _attr(h5_obj, ("pixel_height_m", "object_pixel_height_m"), path, "'object'", required=True)
    _pixel_pair((dy, dx), f"{path}: 'object' pixel_height_m / pixel_width_m")
    cx = _attr(h5_obj, ("center_x_m", "object_center_x_m"), path, "'object'")
    cy = _attr(h5_obj, ("center_y_m", "object_center_y_m"), path, "'object'")
    probe = _read(f, "probe", path)
    h5_probe = _dataset(f, "probe", path)
    py = _attr(h5_probe, ("pixel_height_m",), path, "'probe'", dy)
    px = _attr(h5_probe, ("pixel_width_m",), path, "'probe'", dx)
    weights = _read(f, "opr_weights", path) if _has(f, "opr_weights") else None
    if _has(f, "probe_photon_counts"):
        counts = _read(f, "probe_photon_counts", path).reshape(-1).astype(np.float64)
        if counts.shape == index.shape:
            ext["position_photon_counts"] = (index, counts)
    if _has(f, "loss_values") and _has(f, "loss_epochs"):
        epochs = _read(f, "loss_epochs", path).reshape(-1)
        values = _read(f, "loss_values", path).reshape(-1)
        if len(values):
            ext["losses"] = (epochs.astype(np.int64), values.astype(np.float64))
    if _has(f, "object_layer_spacing_m") and _read(f, "object_layer_spacing_m", path).size:
        raise DataError(f"{path}: 'object_layer_spacing_m' is not empty: a multislice object; "
                        "only single-layer objects are supported")
    heaps: set = set()  # the text attributes are variable-length strings: heaps checked once
    for key in ("name", "comments", "polarization"):
        value = _text(f, key, path, heaps)
        if value:
            ext[key] = value
    placeholder = bool(_attr(f, (_PLACEHOLDER_ATTR,), path, "the file", 0.0, heaps=heaps))
    named = _text(f, _DIFFRACTION_ATTR, path, heaps)
    calibrated = _attr(f, (_CALIBRATED_ATTR,), path, "the file", heaps=heaps)
    scan_index = _read(f, _SCAN_INDEX_KEY, path).reshape(-1) if _has(f, _SCAN_INDEX_KEY) else None
    start = None
    if all(_has(f, k) for k in _START_KEYS):
        start = [_read(f, k, path).reshape(-1).astype(np.float64) for k in _START_KEYS]
        if start[0].shape != x_m.shape or start[1].shape != x_m.shape:
            raise DataError(f"{path}: '{_START_KEYS[0]}' / '{_START_KEYS[1]}' have {start[0].size} "
                            f"and {start[1].size} entries for {x_m.size} positions")
    far_field = _attr(f, ("far_field",), path, "the file", heaps=heaps)
    unknown = set((_text(f, _UNKNOWN_ATTR, path, heaps) or "").split(","))
    plain = {}  # as read (0 included: a real angle, or ptychodus' "no optic"); NaN: unknown
    for names, key in _PLAIN_ATTRS:
        value = _attr(f, names, path, "the file", heaps=heaps)
        plain[key] = value if value is not None and math.isfinite(value) else None
    meta = Metadata(
        photons_per_pattern=_known(_attr(f, ("probe_photon_count",), path, "the file", heaps=heaps), True),
        pixel_size_m=dx, pixel_height_m=None if dy == dx else dy,
        energy_eV=_known(_attr(f, ("photon_energy_eV", "probe_energy_eV"), path, "the file", heaps=heaps), True),
        distance_m=_known(_attr(f, ("detector_object_distance_m",), path, "the file", heaps=heaps)),
        probe_calibrated=calibrated if calibrated in (0.0, 1.0) else None,
        object_center_x_m=cx if cx is not None and math.isfinite(cx) else None,
        object_center_y_m=cy if cy is not None and math.isfinite(cy) else None,
        far_field=None if far_field is None else float(bool(far_field)), **plain)
    for key in unknown & set(Metadata.KEYS):
        setattr(meta, key, None)
    return x_m, y_m, index, obj, probe, weights, (dy, dx), (py, px), placeholder, named, scan_index, start, meta


def _span(values: np.ndarray) -> str:
    return f"{int(values.min())}..{int(values.max())}" if values.size else "none"


def _read_patterns(diffraction_path: Path, position_index: np.ndarray, ext: dict):
    """(keep mask over the product's positions, (P_kept, N, N) amplitudes in their order)."""
    with open_h5(diffraction_path) as f:
        try:
            counts, index, pattern_counts = _read_diffraction(f, diffraction_path, ext)
        except DataError:
            raise
        except MemoryError:
            raise DataError(f"{diffraction_path}: too large to load into memory") from None
        except _H5_ERRORS as exc:  # h5py on a damaged file
            raise DataError(f"{diffraction_path}: not a readable ptychodus diffraction file (truncated "
                            f"or corrupt: {type(exc).__name__}: {short_text(exc)})") from None
    if counts.dtype.kind == "c":
        raise DataError(f"{diffraction_path}: dataset 'patterns': expected real counts, got {counts.dtype}")
    if counts.dtype.kind in "iu":
        ext["pattern_dtype"] = counts.dtype.str
    if index is None:
        if len(counts) != len(position_index):
            raise DataError(f"{diffraction_path}: {len(counts)} patterns (and no 'indexes') for "
                            f"{len(position_index)} probe positions in the product")
        index = position_index
    elif len(index) != len(counts):
        raise DataError(f"{diffraction_path}: 'indexes' has {len(index)} entries for {len(counts)} patterns")
    _unique(index, diffraction_path, "indexes")
    if pattern_counts is not None and pattern_counts.shape == index.shape:
        ext["pattern_photon_counts"] = (index, pattern_counts)
    keep = np.isin(position_index, index)
    if not keep.any():
        raise DataError(f"{diffraction_path}: no pattern index matches a probe position index of the "
                        f"product (patterns {_span(index)}, positions {_span(position_index)})")
    if not keep.all():
        warnings.warn(f"{diffraction_path}: {int((~keep).sum())} probe positions have no pattern "
                      f"(e.g. index {int(position_index[~keep][0])}) and are left out, as ptychodus does",
                      DataWarning, stacklevel=3)
    orphans = ~np.isin(index, position_index)
    if orphans.any():
        warnings.warn(f"{diffraction_path}: {int(orphans.sum())} patterns have no probe position in "
                      f"the product (e.g. index {int(index[orphans][0])}) and are left out (ptychodus "
                      "interpolates a position for those whose index lies between the product's)",
                      DataWarning, stacklevel=3)
    order = np.argsort(index, kind="stable")
    rows = order[np.searchsorted(index[order], position_index[keep])]
    counts = counts[rows] if not np.array_equal(rows, np.arange(len(counts))) else counts
    counts = counts.astype(np.float32)
    check_amplitudes(counts, f"{diffraction_path}: dataset 'patterns'")  # counts >= 0, finite
    return keep, np.sqrt(counts)


def _read_diffraction(f: h5py.File, diffraction_path: Path, ext: dict):
    """(counts, indexes or None, per-pattern photon counts or None) of the open diffraction
    file ``f`` (its detector pixel and bad-pixel mask go to ``ext``)."""
    if not _has(f, "patterns"):
        raise DataError(f"{diffraction_path}: not a ptychodus diffraction file: no dataset "
                        f"'patterns' (found: {_keys(f)})")
    counts = _read(f, "patterns", diffraction_path)
    h5_patterns = _dataset(f, "patterns", diffraction_path)
    if counts.ndim != 3:
        raise DataError(f"{diffraction_path}: dataset 'patterns': expected (P, N, N) counts, "
                        f"got shape {counts.shape}")
    N = counts.shape[-1]
    index = (_read(f, "indexes", diffraction_path).reshape(-1).astype(np.int64)
             if _has(f, "indexes") else None)
    det_w = _attr(h5_patterns, ("detector_pixel_width_m",), diffraction_path, "'patterns'")
    det_h = _attr(h5_patterns, ("detector_pixel_height_m",), diffraction_path, "'patterns'")
    if det_w and det_h and math.isfinite(det_w) and math.isfinite(det_h) and det_w > 0 and det_h > 0:
        ext["detector_pixel_size_m"] = (N, det_h, det_w)
    if _has(f, "bad_pixels"):
        bad = _read(f, "bad_pixels", diffraction_path).astype(bool)
        if bad.any():
            ext["bad_pixels"] = bad
            warnings.warn(f"{diffraction_path}: {int(bad.sum())} pixels are flagged in 'bad_pixels'; "
                          "ptycho_fast has no bad-pixel mask and uses their values as measured",
                          DataWarning, stacklevel=4)
    pattern_counts = (_read(f, "probe_photon_counts", diffraction_path).reshape(-1).astype(np.float64)
                      if _has(f, "probe_photon_counts") else None)
    return counts, index, pattern_counts
