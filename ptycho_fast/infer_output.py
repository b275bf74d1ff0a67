"""What ``infer`` writes (docs/inference.md §5): the reconstruction directory of
:mod:`ptycho_fast.result_files` with infer's summary, the per-batch patch-statistics log,
and the ``--debug-dump`` directory.

Files in DIR (all-or-nothing, :class:`ptycho_fast.files.OutputSet`): ``object.npz``,
``object.h5`` [, ``object_ptychodus.h5``], ``amplitude.png``, ``phase.png``,
``summary.json`` [, ``patch_stats.json`` with ``--log-patch-stats``]. On a collapse only the
log (marked ``collapsed``) and the debug dump are written. The debug dump (DIR2):
``stats.json``, ``offsets.json``, ``canvas.json`` and patch-grid PNGs of the first
predicted patches.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import figures, result_files
from .files import OutputSet, atomic_output, write_json
from .guard import STATS_DDOF
from .runtime import versions

if TYPE_CHECKING:  # annotations only: infer imports this module
    from .infer import InferConfig, Reconstruction

__all__ = [
    "PATCH_STATS_JSON", "SUMMARY_FORMAT", "DEBUG_PATCHES", "Source", "write_outputs",
    "write_collapse_outputs", "write_debug_dump", "patch_stats_doc", "canvas_stats", "object_arrays",
]

#: the per-batch patch-statistics log (--log-patch-stats)
PATCH_STATS_JSON = "patch_stats.json"
SUMMARY_FORMAT = "ptycho_fast.inference_summary"
#: predicted patches kept for (and shown in) the debug dump
DEBUG_PATCHES = 16


@dataclass
class Source:
    """Where a reconstruction came from, as its outputs record it."""
    bundle: Any                     # the model bundle (ptycho_fast.bundle.Bundle)
    data_path: Path
    is_sample: bool
    probe: np.ndarray
    metadata: Any                   # the dataset's Metadata
    load_time: float                # seconds to load the bundle and open the data

    @property
    def pixel_size(self):
        return self.metadata.pixel_size_m

    @property
    def dataset_name(self) -> str:
        return "ptycho_fast sample" if self.is_sample else Path(self.data_path).name

    @property
    def model_name(self) -> str:
        if self.is_sample:
            return "sample model"
        path = self.bundle.path
        if path is None:
            return "?"
        path = Path(path)
        return f"{path.parent.name}/{path.name}" if path.name == "model" else path.name


def object_arrays(rec: "Reconstruction") -> result_files.ObjectArrays:
    return result_files.ObjectArrays(rec.object, rec.coverage, rec.covered, rec.positions, rec.frame.origin,
                                     rec.coverage_floor)


def write_outputs(out, config: "InferConfig", rec: "Reconstruction", source: Source,
                  t_start: float) -> tuple[list[str], dict]:
    """Every file of DIR (module doc), all-or-nothing; returns (file names, summary).
    ``t_start``: when the command started (the summary's total time)."""
    t_write = time.perf_counter()
    bundle, name = source.bundle, source.dataset_name
    with OutputSet(out) as outputs:
        arrays = object_arrays(rec)
        with outputs.file(result_files.OBJECT_NPZ) as tmp:
            result_files.write_object_npz(tmp, arrays)
        attrs = {"model": str(bundle.path), "data": str(source.data_path),
                 "intensity_scale": bundle.intensity_scale, "probe_gain": bundle.probe_gain,
                 "window": config.window, "ops": config.ops, "canvas_frame": rec.frame.source}
        if "h5" in config.formats:
            with outputs.file(result_files.OBJECT_H5) as tmp:
                result_files.write_object_h5(tmp, arrays, attrs)
        if "ptychodus" in config.formats:
            from .data import write_ptychodus_product
            with outputs.file(result_files.PTYCHODUS_PRODUCT) as tmp:
                # the product replaces its target atomically itself: give it the temp name
                write_ptychodus_product(tmp, rec.positions, source.probe, rec.object, source.pixel_size,
                                        source.metadata, name=f"ptycho_fast infer: {name}",
                                        comments=f"model {bundle.path}; data {source.data_path}")
        result_files.write_object_images(outputs, arrays, f"{name} — {{what}}\nmodel: {source.model_name}",
                                         source.pixel_size)
        if config.log_patch_stats:
            outputs.write_json(PATCH_STATS_JSON, {"ddof": STATS_DDOF, "batches": rec.batch_records})
        write_seconds = time.perf_counter() - t_write
        summary = _summary(config, rec, source, write_seconds, time.perf_counter() - t_start,
                           list(outputs.pending) + [result_files.SUMMARY_JSON])
        outputs.write_json(result_files.SUMMARY_JSON, summary)
    return outputs.committed, summary


def write_collapse_outputs(config: "InferConfig", rec: "Reconstruction") -> None:
    """On collapse: the debug dump (if asked) and the per-batch log (with --log-patch-stats)."""
    if config.debug_dump is not None:
        with contextlib.suppress(OSError):
            write_debug_dump(config.debug_dump, rec)
    if config.log_patch_stats:
        out = Path(config.out)
        with contextlib.suppress(OSError):
            out.mkdir(exist_ok=True)
            write_json(out / PATCH_STATS_JSON, {"ddof": STATS_DDOF, "batches": rec.batch_records,
                                                "collapsed": True})


def _summary(config, rec: "Reconstruction", source: Source, write_time: float, total: float, files) -> dict:
    bundle, load_time = source.bundle, source.load_time
    t = rec.timings
    io_time = load_time + t["read"] + write_time
    n = rec.n_patterns
    return {
        "format": SUMMARY_FORMAT, "format_version": result_files.FORMAT_VERSION,
        "model": str(bundle.path), "data": str(source.data_path), "sample": source.is_sample,
        "intensity_scale": bundle.intensity_scale, "probe_gain": bundle.probe_gain,
        "scalars_from": "the model bundle (bundle.json); never recomputed from this data",
        "data_intensity_scale": rec.data_intensity_scale,
        "n_patterns": n, "n_groups": rec.n_groups, "gridsize": rec.gridsize, "n_patches": rec.n_patches,
        "N": rec.N,
        "canvas": {"shape": list(rec.frame.shape), "origin": rec.frame.origin.tolist(),
                   "frame": rec.frame.source, "coverage_floor": rec.coverage_floor,
                   "coverage_floor_is": "relative to the largest accumulated weight",
                   **rec.canvas_stats},
        "window": config.window, "ops": rec.ops, "device": str(bundle.device),
        "batch_size_groups": rec.batch_size, "grouping": rec.groups, "grouping_seed": rec.seed,
        "object_big": bool(bundle.object_big and bundle.C > 1),
        "timings_s": {"network": t["network"], "stitching": t["stitching"], "io": io_time,
                      "io_detail": {"load": load_time, "read": t["read"], "write": write_time},
                      "patch_stats": t["stats"], "total": total},
        "patterns_per_s": n / total if total > 0 else None,
        "patterns_per_s_by_stage": {k: (n / v if v > 0 else None) for k, v in
                                    (("network", t["network"]), ("stitching", t["stitching"]),
                                     ("io", io_time))},
        "patch_stats": patch_stats_doc(rec.stats),
        "collapse_guard": {"floor": config.collapse_floor, "checked": ["first batch", "end"],
                           "statistic": "complex_var_zero_mean = var_zero_mean(real) + var_zero_mean(imag)",
                           "result": "ok" if rec.degenerate is None else rec.degenerate,
                           "allow_degenerate": config.allow_degenerate,
                           "amplitude_flat": rec.amplitude_flat,
                           "counts_per_pattern": rec.counts},
        "files": files,
        "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def patch_stats_doc(stats: dict) -> dict:
    """The patch statistics as written to summary.json / stats.json: ``var_zero_mean`` at the
    top is that of the amplitude (= ``ops.var_zero_mean(patches)``)."""
    if not stats:
        return {}
    return {"of": "the network's predicted patches (before object_big)",
            "var_zero_mean": stats["amplitude"]["var_zero_mean"],
            "var_zero_mean_view": "amplitude",
            "definition": "var_zero_mean = mean over patches of each patch's population variance "
                          "(ddof 0); std = population std over every pixel of every patch",
            **stats}


def canvas_stats(obj: np.ndarray, covered: np.ndarray) -> dict:
    n = int(covered.sum())
    out: dict[str, Any] = {"covered_pixels": n, "covered_fraction": n / max(covered.size, 1)}
    if n == 0:
        return out
    amp = np.abs(obj[covered]).astype(np.float64)
    phase = np.angle(obj[covered]).astype(np.float64)
    for name, v in (("amplitude", amp), ("phase", phase)):
        out[name] = {"mean": float(v.mean()), "std": float(v.std(ddof=STATS_DDOF)),
                     "min": float(v.min()), "max": float(v.max())}
    out["ddof"] = STATS_DDOF
    out["of"] = "covered canvas pixels"
    return out


def write_debug_dump(directory, rec: "Reconstruction") -> list[str]:
    """stats.json, offsets.json, canvas.json and patch-grid PNGs of the first predicted
    patches into ``directory`` (created if missing; each file written atomically)."""
    directory = Path(directory)
    directory.mkdir(exist_ok=True)
    written = []

    def put_json(name, obj):
        write_json(directory / name, obj)
        written.append(name)

    put_json(result_files.DEBUG_STATS_JSON, {
        "patch_stats": patch_stats_doc(rec.stats),
        "first_batch": patch_stats_doc(rec.first_batch_stats),
        "canvas": rec.canvas_stats,
        "ddof": STATS_DDOF,
        "data_intensity_scale": rec.data_intensity_scale,
        "degenerate": rec.degenerate,
    })
    H, W = rec.frame.shape
    centre = np.array([H / 2.0, W / 2.0])
    offsets = rec.positions - centre                        # (P, 2) dy, dx
    group_off = rec.group_offsets.reshape(-1, 2) if rec.group_offsets is not None else np.zeros((0, 2))

    def describe(arr):
        if len(arr) == 0:
            return {}
        return {name: {"mean": float(arr[:, i].mean()), "std": float(arr[:, i].std()),
                       "min": float(arr[:, i].min()), "max": float(arr[:, i].max())}
                for i, name in enumerate(("dy", "dx"))}
    put_json("offsets.json", {
        "definition": "dy, dx = probe centre - canvas centre (H/2, W/2), canvas pixels (rows, cols)",
        "count": int(len(offsets)), "first": offsets[:DEBUG_PATCHES].tolist(), **describe(offsets),
        "std_ddof": 0,
        "group_offsets": {"definition": "dy, dx = member position - group centroid (object_big)",
                          "count": int(len(group_off)), "first": group_off[:DEBUG_PATCHES].tolist(),
                          **describe(group_off),
                          "max_abs": float(np.abs(group_off).max()) if len(group_off) else 0.0},
    })
    put_json("canvas.json", {
        "patch_size": rec.N, "canvas_size": [H, W], "origin": rec.frame.origin.tolist(),
        "frame": rec.frame.source, "n_patterns": rec.n_patterns, "n_groups": rec.n_groups,
        "gridsize": rec.gridsize, "n_patches": rec.n_patches,
        "max_abs_dy": float(np.abs(offsets[:, 0]).max()) if len(offsets) else 0.0,
        "max_abs_dx": float(np.abs(offsets[:, 1]).max()) if len(offsets) else 0.0,
        "covered_fraction": rec.canvas_stats.get("covered_fraction"),
        "window": rec.window, "coverage_floor": rec.coverage_floor,
    })
    if rec.first_patches is not None and len(rec.first_patches):
        patches = rec.first_patches
        C = rec.gridsize ** 2
        names = [f"group {k // C}, member {k % C}" if C > 1 else f"pattern {k}" for k in range(len(patches))]
        for view, values, cmap, label in (("amplitude", np.abs(patches), "gray", "amplitude"),
                                          ("phase", np.angle(patches), "viridis", "phase (rad)")):
            for per_patch, suffix in ((False, "raw"), (True, "normalised")):
                name = f"patches_{view}_{suffix}.png"
                png = figures.patch_grid_png(values.astype(np.float64),
                                             f"first {len(patches)} predicted patches: {view}, "
                                             + ("per-patch normalised" if per_patch else "raw (one scale)"),
                                             per_patch, cmap, label, names)
                with atomic_output(directory / name) as tmp:
                    tmp.write_bytes(png)
                written.append(name)
    return written
