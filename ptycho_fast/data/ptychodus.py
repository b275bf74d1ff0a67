"""ptychodus product files (HDF5), read and write, so results open in ptychodus.

The layout follows ptychodus' own product reader/writer (``ptychodus.api.io``,
``plugins/h5_product_file.py``, checked against its source; docs/data.md lists it)::

    /  attrs: name, comments, detector_object_distance_m, probe_energy_eV,
              probe_photon_count, exposure_time_s, mass_attenuation_m2_kg, tomography_angle_deg
    /probe_position_indexes (P,) int      /probe_position_x_m (P,)   /probe_position_y_m (P,)
    /probe   (M, N, N) complex64 [ptychodus also accepts (N, N) and (OPR, M, N, N)]
             attrs pixel_width_m, pixel_height_m
    /object  (1, H, W) complex64 [layers, H, W]
             attrs center_x_m, center_y_m, pixel_width_m, pixel_height_m
    /object_layer_spacing_m (L-1,)   /loss_epochs   /loss_values

Positions are in metres, converted with ptychodus' mapping (``coords.pixels_to_metres``):
``x_m = center_x_m + pixel_width_m * (col - W/2)``.

A product holds no diffraction: ptychodus keeps patterns in a separate file
(``ptychodus.api.io`` diffraction layout: ``patterns`` (P, N, N) **counts**, attrs
``detector_pixel_width_m``/``detector_pixel_height_m``; ``indexes`` (P,); ``bad_pixels``
(N, N) bool). :func:`write_ptychodus` writes that companion file beside the product
(``<stem>-diffraction.h5``) and names it in the product's ``ptycho_fast_diffraction_file``
attribute (ptychodus ignores unknown attributes); :func:`read_ptychodus` finds it there.

Ours, beyond ptychodus: when the dataset has no ground-truth object, the product still
needs one (ptychodus requires it and positions are relative to it), so an all-ones object
covering the scan is written and flagged ``ptycho_fast_placeholder_object = 1``; reading
drops it again.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import h5py
import numpy as np

from .. import coords
from .dataset import DataError, Metadata, PtychoDataset, atomic_output, check_amplitudes

__all__ = ["write_ptychodus", "write_ptychodus_product", "read_ptychodus", "default_diffraction_path",
           "is_ptychodus_product", "is_ptychodus_diffraction"]

HC_EV_M = 1.239841984e-6  # h*c in eV*m: wavelength = HC_EV_M / energy_eV
_DIFFRACTION_ATTR = "ptycho_fast_diffraction_file"
_PLACEHOLDER_ATTR = "ptycho_fast_placeholder_object"


def default_diffraction_path(product_path: str | os.PathLike) -> Path:
    p = Path(product_path)
    return p.with_name(p.stem + "-diffraction.h5")


def is_ptychodus_product(f: h5py.File) -> bool:
    return "probe_position_x_m" in f and "probe" in f and "object" in f


def is_ptychodus_diffraction(f: h5py.File) -> bool:
    return "patterns" in f and "probe_position_x_m" not in f


def _pixel_size(pixel_size_m) -> tuple[float, float]:
    dy, dx = np.broadcast_to(np.asarray(pixel_size_m, dtype=np.float64), (2,))
    if not (np.isfinite([dy, dx]).all() and dy > 0 and dx > 0):
        raise DataError(f"ptychodus: pixel_size_m must be positive and finite, got {pixel_size_m}")
    return float(dy), float(dx)


def write_ptychodus_product(path: str | os.PathLike, positions, probe, object_, pixel_size_m,
                            metadata: Metadata | None = None, scan_index=None, losses=None,
                            name: str = "ptycho_fast", comments: str = "", centre_m=(0.0, 0.0),
                            extra_attrs: dict | None = None) -> Path:
    """Write a ptychodus product (positions (P, 2) centres in object pixels, probe (N, N) or
    (M, N, N), object (H, W) complex) atomically. ``losses``: optional (epochs, values)."""
    path = Path(path)
    meta = metadata or Metadata()
    dy, dx = _pixel_size(pixel_size_m)
    obj = np.asarray(object_).astype(np.complex64)
    obj = obj[None] if obj.ndim == 2 else obj
    probe = np.asarray(probe).astype(np.complex64)
    probe = probe[None] if probe.ndim == 2 else probe
    positions = np.asarray(positions, dtype=np.float64)
    x_m, y_m = coords.pixels_to_metres(positions, obj.shape[-2:], (dy, dx), centre_m)
    index = np.arange(len(positions)) if scan_index is None else np.asarray(scan_index, dtype=np.int64)
    epochs, values = (np.zeros(0, np.int64), np.zeros(0, np.float64)) if losses is None else losses
    with atomic_output(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["name"] = name
        f.attrs["comments"] = comments
        f.attrs["detector_object_distance_m"] = float(meta.distance_m or 0.0)
        f.attrs["probe_energy_eV"] = float(meta.energy_eV or 0.0)
        f.attrs["probe_photon_count"] = float(meta.photons_per_pattern or 0.0)
        f.attrs["exposure_time_s"] = 0.0
        f.attrs["mass_attenuation_m2_kg"] = 0.0
        f.attrs["tomography_angle_deg"] = 0.0
        for k, v in (extra_attrs or {}).items():
            f.attrs[k] = v
        f.create_dataset("probe_position_indexes", data=index)
        f.create_dataset("probe_position_x_m", data=x_m)
        f.create_dataset("probe_position_y_m", data=y_m)
        h5_probe = f.create_dataset("probe", data=probe)
        h5_probe.attrs["pixel_width_m"] = dx
        h5_probe.attrs["pixel_height_m"] = dy
        h5_obj = f.create_dataset("object", data=obj)
        h5_obj.attrs["center_x_m"] = float(centre_m[1])
        h5_obj.attrs["center_y_m"] = float(centre_m[0])
        h5_obj.attrs["pixel_width_m"] = dx
        h5_obj.attrs["pixel_height_m"] = dy
        f.create_dataset("object_layer_spacing_m", data=np.zeros(obj.shape[0] - 1, np.float64))
        f.create_dataset("loss_epochs", data=np.asarray(epochs, dtype=np.int64))
        f.create_dataset("loss_values", data=np.asarray(values, dtype=np.float64))
    return path


def write_ptychodus(dataset: PtychoDataset, path: str | os.PathLike, diffraction_path=None,
                   pixel_size_m: float | None = None, name: str | None = None, comments: str = "") -> tuple[Path, Path]:
    """Write ``dataset`` as a ptychodus product plus its companion diffraction file.

    ``pixel_size_m`` (object pixel, metres) defaults to ``dataset.metadata.pixel_size_m``; one
    of the two is required to express positions in metres. Returns (product, diffraction).
    """
    path = Path(path)
    diffraction_path = default_diffraction_path(path) if diffraction_path is None else Path(diffraction_path)
    pixel = pixel_size_m if pixel_size_m is not None else dataset.metadata.pixel_size_m
    if pixel is None:
        raise DataError(f"{path}: writing a ptychodus product needs the object pixel size in metres "
                        "(metadata 'pixel_size_m' or the pixel_size_m argument) to express "
                        "positions in metres")
    dy, dx = _pixel_size(pixel)
    N = dataset.N
    extra = {_DIFFRACTION_ATTR: os.path.relpath(diffraction_path, path.parent)}
    obj = dataset.object
    if obj is None:  # ptychodus needs an object frame: ones covering every patch
        bottom_right = coords.centres_to_top_left(dataset.positions, N).max(axis=0) + N
        h, w = (max(int(math.ceil(v)), N) for v in bottom_right)
        obj = np.ones((h, w), np.complex64)
        extra[_PLACEHOLDER_ATTR] = 1
    meta = Metadata(**{**vars(dataset.metadata), "pixel_size_m": dx})

    # Companion diffraction file in ptychodus' layout: counts, not amplitudes.
    detector_pixel = 0.0
    if meta.energy_eV and meta.distance_m:
        detector_pixel = HC_EV_M / meta.energy_eV * meta.distance_m / (N * dx)
    with atomic_output(diffraction_path) as tmp, h5py.File(tmp, "w") as f:
        patterns = f.create_dataset("patterns", shape=(dataset.n_patterns, N, N), dtype=np.float32,
                                    chunks=(min(64, dataset.n_patterns), N, N), compression="gzip",
                                    compression_opts=4, shuffle=True)
        patterns.attrs["detector_pixel_width_m"] = detector_pixel
        patterns.attrs["detector_pixel_height_m"] = detector_pixel
        patterns.attrs["units"] = "counts (ptycho_fast stores sqrt(counts); this file squares them)"
        for idx, block in dataset.iter_batches(1024):
            patterns[int(idx[0]):int(idx[-1]) + 1] = np.square(block.astype(np.float32))
        index = np.arange(dataset.n_patterns) if dataset.scan_index is None else dataset.scan_index
        f.create_dataset("indexes", data=np.asarray(index, dtype=np.int64))
        f.create_dataset("bad_pixels", data=np.zeros((N, N), dtype=bool))
    write_ptychodus_product(path, dataset.positions, dataset.probe, obj, (dy, dx), meta,
                            scan_index=dataset.scan_index, name=name or path.stem, comments=comments,
                            extra_attrs=extra)
    return path, diffraction_path


def _attr(node, names: tuple[str, ...], path: Path, where: str, default=None) -> float:
    for n in names:
        if n in node.attrs:
            try:
                return float(np.asarray(node.attrs[n]).reshape(()))
            except (TypeError, ValueError):
                raise DataError(f"{path}: attribute '{n}' of {where}: expected a number, "
                                f"got {node.attrs[n]!r}") from None
    if default is not None:
        return default
    raise DataError(f"{path}: {where} is missing the attribute '{names[0]}'")


def _read(f, key: str, path: Path) -> np.ndarray:
    if key not in f or not isinstance(f[key], h5py.Dataset):
        raise DataError(f"{path}: missing dataset '{key}' (ptychodus product layout)")
    try:
        data = np.asarray(f[key][()])
    except (OSError, RuntimeError, ValueError) as exc:
        raise DataError(f"{path}: dataset '{key}' cannot be read (truncated or corrupt: {exc})") from None
    if data.dtype.kind not in "iufcb":
        raise DataError(f"{path}: dataset '{key}': expected numbers, got {data.dtype}")
    return data


def _open(path: Path) -> h5py.File:
    if not path.exists():
        raise DataError(f"{path}: no such file")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: not a readable HDF5 file (truncated or corrupt: {exc})") from None


def _read_patterns(diffraction_path: Path, position_index: np.ndarray) -> np.ndarray:
    with _open(diffraction_path) as f:
        counts = _read(f, "patterns", diffraction_path)
        if counts.ndim != 3:
            raise DataError(f"{diffraction_path}: dataset 'patterns': expected (P, N, N) counts, "
                            f"got shape {counts.shape}")
        index = _read(f, "indexes", diffraction_path).reshape(-1) if "indexes" in f else None
    if counts.dtype.kind == "c":
        raise DataError(f"{diffraction_path}: dataset 'patterns': expected real counts, got {counts.dtype}")
    counts = counts.astype(np.float32)
    check_amplitudes(counts, f"{diffraction_path}: dataset 'patterns'")  # counts >= 0, finite
    if index is not None and len(index) == len(counts) and not np.array_equal(index, position_index):
        order = np.argsort(index, kind="stable")
        found = np.searchsorted(index[order], position_index)
        found = np.clip(found, 0, len(index) - 1)
        ok = index[order][found] == position_index
        if not ok.all():
            raise DataError(f"{diffraction_path}: no pattern for probe position index "
                            f"{int(position_index[~ok][0])} (dataset 'indexes')")
        counts = counts[order[found]]
    elif len(counts) != len(position_index):
        raise DataError(f"{diffraction_path}: {len(counts)} patterns for {len(position_index)} "
                        "probe positions in the product")
    return np.sqrt(counts)


def read_ptychodus(path: str | os.PathLike, diffraction_path=None, edge_policy: str = "warn") -> PtychoDataset:
    """Read a ptychodus product and its diffraction file into a :class:`PtychoDataset`.

    The diffraction file is ``diffraction_path`` if given, else the one the product names
    (written by :func:`write_ptychodus`), else ``<stem>-diffraction.h5`` beside it.
    """
    path = Path(path)
    with _open(path) as f:
        if not is_ptychodus_product(f):
            raise DataError(f"{path}: not a ptychodus product: expected the datasets 'probe', "
                            f"'object', 'probe_position_x_m', 'probe_position_y_m'; found: "
                            f"{', '.join(sorted(f.keys())) or 'nothing'}")
        x_m = _read(f, "probe_position_x_m", path).reshape(-1).astype(np.float64)
        y_m = _read(f, "probe_position_y_m", path).reshape(-1).astype(np.float64)
        if x_m.shape != y_m.shape:
            raise DataError(f"{path}: 'probe_position_x_m' and 'probe_position_y_m' differ in length")
        index = (_read(f, "probe_position_indexes", path).reshape(-1).astype(np.int64)
                 if "probe_position_indexes" in f else np.arange(len(x_m)))
        obj = _read(f, "object", path)
        h5_obj = f["object"]
        dx = _attr(h5_obj, ("pixel_width_m", "object_pixel_width_m"), path, "'object'")
        dy = _attr(h5_obj, ("pixel_height_m", "object_pixel_height_m"), path, "'object'")
        cx = _attr(h5_obj, ("center_x_m", "object_center_x_m"), path, "'object'", 0.0)
        cy = _attr(h5_obj, ("center_y_m", "object_center_y_m"), path, "'object'", 0.0)
        probe = _read(f, "probe", path)
        placeholder = bool(f.attrs.get(_PLACEHOLDER_ATTR, 0))
        named = f.attrs.get(_DIFFRACTION_ATTR)
        meta = Metadata(
            photons_per_pattern=_attr(f, ("probe_photon_count",), path, "the file", 0.0) or None,
            pixel_size_m=dx,
            energy_eV=_attr(f, ("probe_energy_eV", "photon_energy_eV"), path, "the file", 0.0) or None,
            distance_m=_attr(f, ("detector_object_distance_m",), path, "the file", 0.0) or None)
    if obj.ndim == 3:
        if obj.shape[0] != 1:
            raise DataError(f"{path}: 'object' has {obj.shape[0]} layers (multislice); only "
                            "single-layer objects are supported")
        obj = obj[0]
    if obj.ndim != 2:
        raise DataError(f"{path}: 'object': expected (H, W) or (1, H, W), got shape {obj.shape}")
    if probe.ndim == 4:  # (OPR modes, incoherent modes, N, N): the shared (first) OPR mode
        probe = probe[0]
    if probe.ndim == 3 and probe.shape[0] == 1:
        probe = probe[0]
    positions = coords.metres_to_pixels(x_m, y_m, obj.shape, (dy, dx), (cy, cx))

    if diffraction_path is None:
        if named is not None:
            diffraction_path = path.parent / (named.decode() if isinstance(named, bytes) else str(named))
        else:
            diffraction_path = default_diffraction_path(path)
        if not Path(diffraction_path).exists():
            raise DataError(f"{path}: a ptychodus product holds no diffraction patterns and its "
                            f"diffraction file {diffraction_path} does not exist; pass the "
                            "diffraction file explicitly")
    amplitudes = _read_patterns(Path(diffraction_path), index)
    return PtychoDataset(diffraction=amplitudes, positions=positions, probe=probe,
                         object=None if placeholder else obj,
                         scan_index=None if np.array_equal(index, np.arange(len(index))) else index,
                         metadata=meta,
                         source=str(path), key_names={"positions": "probe_position_x_m/y_m"},
                         edge_policy=edge_policy)
