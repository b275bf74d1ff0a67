"""What ``refine`` (and ``infer --refine``) writes: the reconstruction directory of
:mod:`ptycho_fast.result_files` plus the refined probe and positions, the loss curve and the
position corrections; and the per-epoch checkpoint that ``--resume`` continues from.

Files in the output directory (all-or-nothing, :class:`ptycho_fast.files.OutputSet`):
``object.npz``, ``object.h5`` [, ``object_ptychodus.h5``], ``amplitude.png``, ``phase.png``,
``probe.npy`` (M, N, N) complex64, ``positions.csv``, ``loss_curve.png``,
[``position_corrections.png``], ``summary.json``. The checkpoint
``refine_checkpoint.safetensors`` (tensors + JSON metadata; no pickle) is replaced
atomically after every epoch.
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
from pathlib import Path

import numpy as np

from . import figures, result_files
from .files import OutputSet, UserError, atomic_output
from .refine import Refiner, RefineOptions
from .runtime import versions

__all__ = [
    "PROBE_NPY", "POSITIONS_CSV", "LOSS_CURVE_PNG", "CORRECTIONS_PNG", "CHECKPOINT", "SUMMARY_FORMAT",
    "write_refinement", "save_checkpoint", "load_checkpoint", "positions_csv", "refine_identity",
]

PROBE_NPY = "probe.npy"
POSITIONS_CSV = "positions.csv"
LOSS_CURVE_PNG = "loss_curve.png"
CORRECTIONS_PNG = "position_corrections.png"
CHECKPOINT = "refine_checkpoint.safetensors"
CHECKPOINT_FORMAT = "ptycho_fast.refine_checkpoint"
CHECKPOINT_VERSION = 1
SUMMARY_FORMAT = "ptycho_fast.refine_summary"


def positions_csv(refiner: Refiner) -> str:
    """One row per pattern: refined and starting probe centres in the data's frame
    (ycoord = row, xcoord = column, as the data file's ycoords/xcoords) and the correction."""
    origin = np.asarray(refiner.frame.origin, dtype=np.float64)
    now = refiner.centres() + origin
    start = refiner.centres_start + origin
    out = io.StringIO()
    out.write("index,ycoord,xcoord,ycoord_start,xcoord_start,dy,dx\n")
    for i, (a, b) in enumerate(zip(now, start)):
        out.write(f"{i},{a[0]:.6f},{a[1]:.6f},{b[0]:.6f},{b[1]:.6f},{a[0] - b[0]:.6f},{a[1] - b[1]:.6f}\n")
    return out.getvalue()


def _arrays(refiner: Refiner) -> result_files.ObjectArrays:
    from .refine import COVERAGE_FLOOR
    dose = refiner.coverage()
    floor = COVERAGE_FLOOR * float(dose.max()) if dose.numel() else 0.0
    return result_files.ObjectArrays(
        object=refiner.state.object.detach().cpu().numpy(), coverage=dose.float().cpu().numpy(),
        covered=(dose > floor).cpu().numpy(), positions=refiner.centres(),
        origin=np.asarray(refiner.frame.origin, dtype=np.float64), coverage_floor=COVERAGE_FLOOR,
        coverage_units="probe dose sum |probe|^2 at the scan positions")


def write_refinement(out, refiner: Refiner, dataset, *, data_path, init: str | None, formats=("npz", "h5"),
                     extra_summary: dict | None = None, title: str | None = None) -> tuple[list[str], dict]:
    """Write every output of a finished refinement into ``out`` (module doc). Returns
    (file names, summary). UserError (nothing written) on an unwritable directory."""
    arrays = _arrays(refiner)
    history = refiner.state.history
    pixel_size = dataset.metadata.pixel_size_m
    name = title or f"{Path(str(data_path)).name} — refined"
    with OutputSet(out) as outputs:
        with outputs.file(result_files.OBJECT_NPZ) as tmp:
            result_files.write_object_npz(tmp, arrays)
        if "h5" in formats:
            with outputs.file(result_files.OBJECT_H5) as tmp:
                result_files.write_object_h5(tmp, arrays, {"data": str(data_path), "method": "refine",
                                                           "ops": refiner.ops_name, "canvas_frame": refiner.frame.source})
        if "ptychodus" in formats:
            from .data import write_ptychodus_product
            with outputs.file(result_files.PTYCHODUS_PRODUCT) as tmp:
                write_ptychodus_product(tmp, arrays.positions, refiner.state.probe.cpu().numpy(), arrays.object,
                                        None, dataset.metadata, name=f"ptycho_fast refine: {name}",
                                        comments=f"data {data_path}",
                                        losses=([h["epoch"] for h in history], [h["loss"] for h in history]))
        result_files.write_object_images(outputs, arrays, f"{name} — {{what}}", pixel_size)
        with outputs.file(PROBE_NPY) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, refiner.state.probe.detach().cpu().numpy().astype(np.complex64), allow_pickle=False)
        outputs.write_bytes(POSITIONS_CSV, positions_csv(refiner).encode())
        outputs.write_bytes(LOSS_CURVE_PNG, figures.loss_curve_png(
            [h["epoch"] for h in history], {"loss per pixel": [h["loss"] for h in history]},
            title=f"refine ({refiner.options.loss} loss)", markers=len(history) <= 60))
        if refiner.options.refine_positions:
            origin = np.asarray(refiner.frame.origin)
            outputs.write_bytes(CORRECTIONS_PNG, figures.corrections_png(
                refiner.centres_start + origin, refiner.centres() + origin, f"{name}: position corrections"))
        summary = _summary(refiner, data_path, init, list(outputs.pending) + [result_files.SUMMARY_JSON],
                           extra_summary or {})
        outputs.write_json(result_files.SUMMARY_JSON, summary)
    return outputs.committed, summary


def _summary(refiner: Refiner, data_path, init, files, extra: dict) -> dict:
    s, o = refiner.state, refiner.options
    d = refiner.centres() - refiner.centres_start
    length = np.hypot(d[:, 0], d[:, 1])
    total = s.elapsed
    return {
        "format": SUMMARY_FORMAT, "format_version": result_files.FORMAT_VERSION,
        "data": str(data_path), "init": init or "flat (1 + 0j)",
        "n_patterns": refiner.P, "N": refiner.N, "probe_modes": int(s.probe.shape[0]),
        "canvas": {"shape": list(refiner.frame.shape), "origin": np.asarray(refiner.frame.origin).tolist(),
                   "frame": refiner.frame.source},
        "options": dataclasses.asdict(o), "ops": refiner.ops_name, "device": str(refiner.device),
        "processes": refiner.dist.world,
        "epochs": s.epoch, "final_loss_per_pixel": s.history[-1]["loss"] if s.history else None,
        "loss_per_epoch": [h["loss"] for h in s.history], "history": s.history,
        "timings_s": {"refinement": total, "per_epoch": total / max(s.epoch, 1)},
        "patterns_per_s": refiner.P * s.epoch / total if total > 0 else None,
        "positions": {"rms_correction_px": float(np.sqrt((length ** 2).mean())) if len(length) else 0.0,
                      "max_correction_px": float(length.max()) if len(length) else 0.0,
                      "refined": bool(o.refine_positions)},
        **extra,
        "files": files,
        "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# ----------------------------------------------------------------------------- checkpoint
def save_checkpoint(path, refiner: Refiner, identity: dict) -> None:
    """The engine's state after an epoch (safetensors: tensors + JSON metadata), atomically.
    ``identity``: what must match on --resume (data fingerprint, options, init)."""
    from safetensors.torch import save_file
    tensors, meta = refiner.state_tensors()
    metadata = {"format": CHECKPOINT_FORMAT, "version": str(CHECKPOINT_VERSION),
                "state": json.dumps(meta), "identity": json.dumps(identity, sort_keys=True)}
    with atomic_output(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_checkpoint(path, refiner: Refiner, identity: dict) -> None:
    """Restore ``refiner`` from ``path``; UserError when the file is not a refine checkpoint
    or belongs to other data / options."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # a truncated or foreign file: say so, do not crash
        raise UserError(f"--resume: {path} is not a readable refine checkpoint ({exc}); remove it to "
                        "start over") from None
    if meta.get("format") != CHECKPOINT_FORMAT or meta.get("version") != str(CHECKPOINT_VERSION):
        raise UserError(f"--resume: {path} is not a ptycho_fast refine checkpoint (version "
                        f"{CHECKPOINT_VERSION})")
    stored = json.loads(meta["identity"])
    differ = sorted(k for k in set(stored) | set(identity) if stored.get(k) != identity.get(k))
    if differ:
        raise UserError(f"--resume: the run in {Path(path).parent} was made with other "
                        f"{', '.join(differ)}; give the same data and options, or another --out")
    refiner.load_state_tensors(tensors, json.loads(meta["state"]))


def refine_identity(options: RefineOptions, fingerprint: str, init: str | None, ops: str) -> dict:
    """What a resumed run must share with the interrupted one (the stopping rule, epochs and
    --max-time, may change)."""
    opts = dataclasses.asdict(options)
    for k in ("epochs", "max_time"):
        opts.pop(k)
    return {"data": fingerprint, "options": opts, "init": init, "ops": ops}
