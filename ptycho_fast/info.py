"""``ptycho-fast info FILE``: what a data file, a model bundle or an inference output holds
(docs/evaluation.md §info).

* a **data file** (PtychoPINN NPZ, our HDF5, a ptychodus product): the stored arrays (names,
  shapes, dtypes, read from the headers), then the dataset as the data layer reads it —
  P, N, probe modes, object, positions extent and step, photon statistics per pattern
  (counts = Σ amplitude²: mean/std/min/max, brightest pixel), the intensity scale
  ``s = sqrt(mean_p Σ X_p²) / (N/2)`` and the probe gain fitted by Parseval (and what
  ``train --probe-gain auto`` would pick), metadata, versions;
* a **model bundle** (or a training run directory holding one in ``model/``): N,
  gridsize, network, the stored intensity scale and probe gain, probe, weights (format,
  size, parameter count), object_big settings, training data fingerprint, training facts,
  versions, and whether the bundle passes ``load_bundle``'s checks;
* an **inference output** directory (``object.npz``): the object, coverage, positions and
  the summary;
* any other NPZ: its arrays.

Text by default; ``--json`` prints one JSON object instead.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import struct
import sys
import tokenize
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

from . import result_files
from .data import file_kind
from .data.dataset import DataError, UserError

__all__ = ["describe", "describe_dataset", "describe_bundle", "describe_reconstruction",
           "format_text"]

def _version() -> str:
    from .runtime import package_version
    return package_version()


def _shape(x) -> list[int]:
    return [int(s) for s in x.shape]


# ----------------------------------------------------------------------------- stored arrays
#: what reading one damaged .npy header of a ZIP member can raise (zlib.error: a corrupt
#: deflate stream; NotImplementedError: an unknown compression; RuntimeError: encrypted;
#: TokenError / SyntaxError: numpy parsing a damaged header dictionary)
_MEMBER_ERRORS = (ValueError, OSError, EOFError, zlib.error, NotImplementedError, RuntimeError,
                  zipfile.BadZipFile, struct.error, SyntaxError, tokenize.TokenError, RecursionError,
                  MemoryError, OverflowError, TypeError, KeyError, IndexError)


def _npz_arrays(path: Path) -> list[dict]:
    """Name, shape, dtype of each array in an NPZ, from the .npy headers (nothing loaded,
    nothing unpickled). A member whose header cannot be read is listed as unreadable;
    DataError when the archive itself cannot be read."""
    out = []
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                try:
                    with zf.open(info) as f:
                        version = np.lib.format.read_magic(f)
                        if version == (1, 0):
                            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                        else:
                            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                    out.append({"name": name, "shape": [int(s) for s in shape], "dtype": str(dtype)})
                except _MEMBER_ERRORS as exc:
                    out.append({"name": name, "shape": None,
                                "dtype": f"unreadable ({type(exc).__name__}: {_short(exc, 120)})"})
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, RuntimeError,
            zlib.error, struct.error, OverflowError, KeyError, IndexError, TypeError) as exc:
        raise DataError(f"{path}: not a readable NPZ file ({type(exc).__name__}: {_short(exc)})") from None
    return out


def _short(text, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _h5_arrays(path: Path) -> tuple[list[dict], dict]:
    """Name, shape, dtype of each dataset of an HDF5 file (nothing read) and its ``format`` /
    ``format_version`` attributes (read by type: a damaged file's variable-length values are
    never decoded blindly). DataError when the file cannot be read."""
    import h5py
    from .data.ptychodus import _H5_ERRORS, text_attributes
    out: list[dict] = []
    try:
        with h5py.File(path, "r") as f:
            try:
                attrs = text_attributes(f, ("format", "format_version"), path)
            except DataError as exc:  # e.g. a corrupt global heap: described without them
                attrs = {"problem": str(exc)}
            version = attrs.get("format_version")
            if version is not None:
                try:
                    number = float(version)
                    attrs["format_version"] = int(number) if number.is_integer() else number
                except (TypeError, ValueError, OverflowError):
                    pass

            def visit(name, obj):
                if isinstance(obj, h5py.Dataset):
                    try:
                        out.append({"name": name, "shape": None if obj.shape is None else list(obj.shape),
                                    "dtype": str(obj.dtype)})
                    except _H5_ERRORS as exc:  # a damaged header or an unsupported type
                        out.append({"name": name, "shape": None,
                                    "dtype": f"unreadable ({type(exc).__name__}: {_short(exc, 120)})"})
            try:
                f.visititems(visit)
            except _H5_ERRORS:  # one damaged object header stops the walk: list the top level
                out.clear()
                for name in f.keys():
                    try:
                        obj = f.get(name)
                    except _H5_ERRORS as exc:
                        out.append({"name": name, "shape": None,
                                    "dtype": f"unreadable ({type(exc).__name__}: {_short(exc, 120)})"})
                        continue
                    visit(name, obj)
    except DataError:
        raise
    except _H5_ERRORS as exc:
        raise DataError(f"{path}: not a readable HDF5 file (truncated or corrupt: "
                        f"{type(exc).__name__}: {_short(exc)})") from None
    return out, attrs


def _jsonable(v):
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.ndarray):
        return v.tolist() if v.size <= 16 else f"array {v.dtype} {list(v.shape)}"
    if isinstance(v, np.generic):
        return v.item()
    return v


# ----------------------------------------------------------------------------- data files
def _stats(values: np.ndarray) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max())}


def describe_dataset(path) -> dict:
    """Facts about a data file (see the module doc)."""
    from . import physics
    from .data import detect_format, load_dataset
    path = Path(path)
    fmt = detect_format(path)
    stored, attrs = (_npz_arrays(path), {}) if fmt == "npz" else _h5_arrays(path)
    if fmt == "ptychodus":  # the patterns live in a companion file
        from .data.ptychodus import default_diffraction_path
        companion = default_diffraction_path(path)
        if companion.is_file():
            stored += [{**a, "name": f"{companion.name}:{a['name']}"} for a in _h5_arrays(companion)[0]]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_dataset(path, lazy=True)
    try:
        N, P = ds.N, ds.n_patterns
        # One pass over the diffraction: counts per pattern and the brightest pixel.
        energies = np.empty(P, dtype=np.float64)
        brightest = 0.0
        for idx, block in ds.iter_batches(1024):
            b = np.asarray(block, dtype=np.float64)
            energies[idx] = np.einsum("pij,pij->p", b, b)
            brightest = max(brightest, float(b.max()) ** 2 if b.size else 0.0)
        E = float(energies.mean())
        probe = ds.probe_modes.astype(np.complex128)
        probe_energy = float(np.sum(np.abs(probe) ** 2))
        scale = math.sqrt(E) / (N / 2)                     # physics.intensity_scale
        fitted = math.sqrt(E / probe_energy)               # physics.probe_gain
        auto = physics.auto_probe_gain(fitted, ds.metadata.says_probe_calibrated)
        pos = ds.positions
        result = {
            "kind": "dataset", "path": str(path), "format": fmt,
            "file_size_bytes": os.path.getsize(path),
            "stored_arrays": stored,
            "n_patterns": P, "N": N,
            "gridsize": None,
            "diffraction": {"shape": _shape(ds.diffraction), "dtype": "float32",
                            "units": "sqrt(counts)", "lazy": ds.is_lazy},
            "photons_per_pattern": _stats(energies),
            "brightest_pixel_counts": brightest,
            "zero_patterns": int(np.sum(energies == 0)),
            "intensity_scale": scale,
            "probe_gain_fitted": fitted,
            "probe_gain_auto": {"value": auto[0], "choice": auto[1], "warning": auto[2],
                                "probe_calibrated": ds.metadata.probe_calibrated},
            "probe": {"shape": _shape(ds.probe), "dtype": str(ds.probe.dtype), "modes": int(probe.shape[0]),
                      "energy": probe_energy, "diameter_px_estimate": _probe_diameter(probe)},
            "positions": {
                "count": int(len(pos)),
                "row_min": float(pos[:, 0].min()), "row_max": float(pos[:, 0].max()),
                "col_min": float(pos[:, 1].min()), "col_max": float(pos[:, 1].max()),
                "median_step_px": _median_step(pos),
                "convention": "probe centres (row, col) in object pixels",
            },
            "object": None if ds.object is None else {
                "shape": _shape(ds.object), "dtype": str(ds.object.dtype),
                "amplitude": _stats(np.abs(ds.object)), "phase": _stats(np.angle(ds.object))},
            "scan_index": ds.scan_index is not None,
            "positions_start": ds.positions_start is not None,
            "metadata": ds.metadata.to_dict(),
            "versions": {"file_format_version": attrs.get("format_version"),
                         "file_format": attrs.get("format"), "ptycho_fast": _version()},
            "warnings": [str(w.message) for w in caught] + ([attrs["problem"]] if attrs.get("problem") else []),
        }
    finally:
        ds.close()
    return result


def _probe_diameter(modes: np.ndarray) -> float:
    """Intensity FWHM of a Gaussian with the probe's second moment (as simulate's estimate)."""
    intensity = (np.abs(modes) ** 2).sum(axis=0)
    N = intensity.shape[-1]
    r = np.arange(N) - N / 2
    yy, xx = np.meshgrid(r, r, indexing="ij")
    w = intensity / intensity.sum()
    cy, cx = (w * yy).sum(), (w * xx).sum()
    r2 = (w * ((yy - cy) ** 2 + (xx - cx) ** 2)).sum()
    return float(2 * math.sqrt(math.log(2)) * math.sqrt(r2))


def _median_step(pos: np.ndarray) -> float | None:
    if len(pos) < 2:
        return None
    from scipy.spatial import cKDTree
    d, _ = cKDTree(pos).query(pos, k=2)
    return float(np.median(d[:, 1]))


# ----------------------------------------------------------------------------- bundles
def describe_bundle(path) -> dict:
    """Facts about a model bundle, read from bundle.json; ``valid`` says whether
    ``load_bundle`` accepts it (checksums, shapes, required fields). The fields are reported
    as stored, whatever their type (a damaged bundle.json is described, not trusted)."""
    from .bundle import BUNDLE_JSON, MAX_JSON_BYTES, find_bundle_dir, load_bundle
    bdir = find_bundle_dir(path)
    where = bdir / BUNDLE_JSON
    try:
        size = where.stat().st_size
        if size > MAX_JSON_BYTES:
            raise UserError(f"{where}: {size} bytes; a bundle.json is a few kB (at most "
                            f"{MAX_JSON_BYTES}); not read")
        info = json.loads(where.read_text())
    except RecursionError:
        raise UserError(f"{where}: not readable JSON (nested too deeply)") from None
    except (OSError, ValueError) as exc:  # ValueError: JSONDecodeError, UnicodeDecodeError, huge ints
        if isinstance(exc, UserError):
            raise
        raise UserError(f"{where}: not readable JSON ({_short(exc)})") from None
    if not isinstance(info, dict):
        raise UserError(f"{where}: expected a JSON object")
    out = {"kind": "bundle", "path": str(bdir)}
    for key in ("format", "format_version", "N", "gridsize", "intensity_scale", "probe_gain", "network",
                "probe", "weights", "object_big", "training_data", "training", "versions", "created"):
        out[key] = info.get(key)
    weights = info.get("weights") if isinstance(info.get("weights"), dict) else {}
    out["weights_size_bytes"] = None
    if isinstance(weights.get("file"), str) and weights["file"]:
        try:
            wfile = bdir / weights["file"]
            out["weights_size_bytes"] = os.path.getsize(wfile) if wfile.is_file() else None
        except (OSError, ValueError):  # a name too long, or holding a NUL byte
            pass
    try:
        bundle = load_bundle(bdir)
        out["valid"] = True
        out["problem"] = None
        out["n_parameters"] = int(sum(p.numel() for p in bundle.model.parameters()))
    except UserError as exc:
        out["valid"] = False
        out["problem"] = str(exc)
        out["n_parameters"] = None
    return out


# ----------------------------------------------------------------------------- infer outputs
def describe_reconstruction(path) -> dict:
    """Facts about a ``ptycho-fast infer``/``refine`` output directory or an NPZ with key
    ``object`` (read by :func:`ptycho_fast.result_files.read_reconstruction`)."""
    rec = result_files.read_reconstruction(path, "FILE")
    obj = rec.object
    out = {"kind": "reconstruction", "path": str(path),
           "object": {"shape": _shape(obj), "amplitude": _stats(np.abs(obj)), "phase": _stats(np.angle(obj))},
           "coverage": None, "positions": None, "summary": rec.summary or None}
    if rec.coverage is not None:
        cov = rec.coverage
        out["coverage"] = {"covered_fraction": float(np.mean(cov > 0)), "max_weight": float(cov.max())}
    if rec.positions is not None:
        p = rec.positions
        out["positions"] = {"count": int(len(p)), "row_min": float(p[:, 0].min()), "row_max": float(p[:, 0].max()),
                            "col_min": float(p[:, 1].min()), "col_max": float(p[:, 1].max())}
    for key in ("intensity_scale", "probe_gain", "n_patterns", "ops"):
        if key in rec.summary:
            out[key] = rec.summary[key]
    return out


# ----------------------------------------------------------------------------- dispatch
def describe(path) -> dict:
    """Describe whatever ``path`` is (see the module doc)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"FILE {path}: no such file or directory")
    if path.is_dir():
        if (path / "bundle.json").is_file() or (path / "model" / "bundle.json").is_file():
            return describe_bundle(path)
        if result_files.is_reconstruction_dir(path):
            return describe_reconstruction(path)
        raise UserError(f"FILE {path}: is a directory but neither a model bundle (bundle.json), a training "
                        f"run (model/bundle.json) nor an inference output ({result_files.OBJECT_NPZ})")
    if path.name == "bundle.json":
        return describe_bundle(path.parent)
    try:
        return describe_dataset(path)
    except DataError as exc:
        # Not a dataset: an NPZ may still be a reconstruction or a plain set of arrays.
        try:
            kind = file_kind(path)
        except UserError:
            raise exc from None
        if kind != "npz":
            raise
        arrays = _npz_arrays(path)
        if any(a["name"] == "object" for a in arrays):
            try:
                return describe_reconstruction(path)
            except UserError:
                pass
        return {"kind": "arrays", "path": str(path), "file_size_bytes": os.path.getsize(path),
                "stored_arrays": arrays, "not_a_dataset": str(exc)}


# ----------------------------------------------------------------------------- text
def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        return " x ".join(str(x) for x in v) if all(isinstance(x, int) for x in v) else str(v)
    return str(v)


def _stat_line(s: dict | None) -> str:
    if not s:
        return "n/a"
    return f"mean {s['mean']:.6g}, std {s['std']:.4g}, min {s['min']:.6g}, max {s['max']:.6g}"


def _arrays_lines(arrays) -> list[str]:
    width = max([len(a["name"]) for a in arrays] + [4])
    return [f"  {a['name']:<{width}s}  {_fmt(a['shape']) if a['shape'] is not None else '?':>18s}  {a['dtype']}"
            for a in arrays]


def _mapping(value) -> dict:
    """A bundle.json field that should be an object: itself, or {} when it is not one."""
    return value if isinstance(value, dict) else {}


def format_text(d: dict) -> str:
    kind = d["kind"]
    L: list[str] = []
    if kind == "dataset":
        L.append(f"{d['path']}: ptychography dataset ({d['format']}, {d['file_size_bytes'] / 1e6:.3g} MB)")
        L.append("stored arrays:")
        L.extend(_arrays_lines(d["stored_arrays"]))
        L.append(f"patterns P          {d['n_patterns']}")
        L.append(f"pattern size N      {d['N']}")
        L.append("gridsize            n/a (a property of the model, not the data)")
        L.append(f"diffraction         {_fmt(d['diffraction']['shape'])} float32 sqrt(counts)"
                 + (" (read lazily)" if d["diffraction"]["lazy"] else ""))
        L.append(f"counts per pattern  {_stat_line(d['photons_per_pattern'])}")
        L.append(f"brightest pixel     {d['brightest_pixel_counts']:.6g} counts"
                 + (f"; {d['zero_patterns']} empty patterns" if d["zero_patterns"] else ""))
        L.append(f"intensity scale s   {d['intensity_scale']:.6g}  (sqrt(mean counts per pattern) / (N/2))")
        pg = d["probe_gain_auto"]
        L.append(f"probe gain          fitted {d['probe_gain_fitted']:.6g} (Parseval); train --probe-gain auto "
                 f"would use {pg['value']:.6g} ({pg['choice']})")
        if pg["warning"]:
            L.append(f"WARNING             {pg['warning']}")
        p = d["probe"]
        L.append(f"probe               {_fmt(p['shape'])} {p['dtype']}, {p['modes']} mode(s), "
                 f"sum |probe|^2 {p['energy']:.6g}, diameter ~{p['diameter_px_estimate']:.3g} px")
        pos = d["positions"]
        L.append(f"positions           {pos['count']} probe centres: rows {pos['row_min']:.2f} .. {pos['row_max']:.2f}, "
                 f"cols {pos['col_min']:.2f} .. {pos['col_max']:.2f}, median step {_fmt(pos['median_step_px'])} px")
        if d["object"] is None:
            L.append("object              none (no ground truth)")
        else:
            o = d["object"]
            L.append(f"object              {_fmt(o['shape'])} {o['dtype']}")
            L.append(f"  amplitude         {_stat_line(o['amplitude'])}")
            L.append(f"  phase (rad)       {_stat_line(o['phase'])}")
        L.append(f"scan_index          {_fmt(d['scan_index'])}; positions_start {_fmt(d['positions_start'])}")
        meta = d["metadata"]
        L.append("metadata            " + (", ".join(f"{k} {v:g}" for k, v in meta.items()) if meta else "none"))
        v = d["versions"]
        ff = (f"{v['file_format']} v{_fmt(v['file_format_version'])}" if v["file_format"]
              else {"npz": "PtychoPINN NPZ (unversioned)", "ptychodus": "ptychodus product"}.get(d["format"], "unversioned"))
        L.append(f"versions            file format {ff}; read by ptycho_fast {v['ptycho_fast']}")
        for w in d["warnings"]:
            L.append(f"warning: {w}")
    elif kind == "bundle":
        L.append(f"{d['path']}: model bundle ({d['format']} v{_fmt(d['format_version'])})"
                 + ("" if d["valid"] else "  ** INVALID **"))
        L.append(f"N                   {_fmt(d['N'])}")
        L.append(f"gridsize            {_fmt(d['gridsize'])}")
        net = _mapping(d.get("network"))
        arch = net.get("arch", "cnn" if d["format_version"] == 1 else "?")
        shape = (f"filters {_fmt(net.get('filters'))}" if arch == "cnn"
                 else f"modes {_fmt(net.get('modes'))}, blocks {_fmt(net.get('blocks'))}")
        L.append(f"network             {arch}, width {_fmt(net.get('width'))}, {shape}, "
                 f"amplitude {net.get('amp_activation', '?')}"
                 + (f", {d['n_parameters']:,} parameters" if d.get("n_parameters") else ""))
        L.append(f"intensity scale s   {_fmt(d['intensity_scale'])}  (stored)")
        L.append(f"probe gain g        {_fmt(d['probe_gain'])}  (stored)")
        probe = _mapping(d.get("probe"))
        L.append(f"probe               {_fmt(probe.get('shape'))} {probe.get('dtype', '?')} ({probe.get('file', '?')})")
        w = _mapping(d.get("weights"))
        size = d.get("weights_size_bytes")
        L.append(f"weights             {w.get('file', '?')} ({w.get('format', '?')}"
                 + (f", {size / 1e6:.3g} MB" if size else "") + ")")
        ob = _mapping(d.get("object_big"))
        L.append(f"object_big          enabled {_fmt(ob.get('enabled'))}, window {ob.get('window', '?')}, "
                 f"local canvas {_fmt(ob.get('local_canvas_size'))}")
        td = _mapping(d.get("training_data"))
        L.append(f"training data       {td.get('n_patterns', '?')} patterns from {td.get('source', '?')}, "
                 f"{td.get('fingerprint', '?')}")
        tr = _mapping(d.get("training"))
        if tr:
            L.append("training            " + ", ".join(f"{k} {_fmt(v)}" for k, v in tr.items()
                                                      if not isinstance(v, (dict, list))))
        v = _mapping(d.get("versions"))
        L.append("versions            " + ", ".join(f"{k} {_short(val, 80)}" for k, val in v.items())
                 + (f"; created {d['created']}" if d.get("created") else ""))
        L.append(f"valid               {'yes (checksums, shapes and fields verified)' if d['valid'] else 'NO: ' + d['problem']}")
    elif kind == "reconstruction":
        o = d["object"]
        L.append(f"{d['path']}: reconstruction, object {_fmt(o['shape'])}")
        L.append(f"  amplitude         {_stat_line(o['amplitude'])}")
        L.append(f"  phase (rad)       {_stat_line(o['phase'])}")
        if d["coverage"]:
            L.append(f"coverage            {d['coverage']['covered_fraction']:.3f} of the pixels covered, "
                     f"max weight {d['coverage']['max_weight']:.4g}")
        if d["positions"]:
            p = d["positions"]
            L.append(f"positions           {p['count']}: rows {p['row_min']:.2f} .. {p['row_max']:.2f}, "
                     f"cols {p['col_min']:.2f} .. {p['col_max']:.2f}")
        for key in ("intensity_scale", "probe_gain", "n_patterns", "ops"):
            if key in d:
                L.append(f"{key.replace('_', ' '):20s}{_fmt(d[key])}")
    else:
        L.append(f"{d['path']}: NPZ arrays (not a ptychography dataset: {d['not_a_dataset']})")
        L.extend(_arrays_lines(d["stored_arrays"]))
    return "\n".join(L)


# ----------------------------------------------------------------------------- CLI
CLI_HELP = "show what a data file, model bundle or inference output contains"
CLI_DESCRIPTION = """\
Show what FILE contains: for a data file (PtychoPINN NPZ, our HDF5, a ptychodus product)
the stored arrays, P, N, probe, object, positions extent, photon statistics per pattern,
the intensity scale and the fitted probe gain; for a model bundle (or a training run
directory) N, gridsize, network, the stored intensity scale and probe gain, weights,
versions and whether it passes the load checks; for an infer output directory its object,
coverage and summary. --json prints the same as one JSON object."""


def add_cli_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="data file, model bundle directory (or run directory), "
                                                "or inference output directory")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of text")


def to_json(d: dict) -> str:
    """``d`` as strict JSON (a NaN or infinite value read from a bundle.json becomes the
    string 'nan' / 'inf' / '-inf')."""
    return json.dumps(_finite(d), indent=2, allow_nan=False, default=_jsonable)


def _finite(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def cli_main(args: argparse.Namespace) -> int:
    d = describe(args.file)
    if args.json:
        sys.stdout.write(to_json(d) + "\n")
    else:
        print(format_text(d))
    return 0
