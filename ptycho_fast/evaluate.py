"""``ptycho-fast evaluate``: a reconstruction against its ground truth (docs/evaluation.md).

Steps, each recorded in ``metrics.json``:

1. read the reconstruction through :mod:`ptycho_fast.result_files` (an infer or refine
   output directory: ``object.npz`` with ``object``, optional ``coverage`` and
   ``positions``; or any NPZ/.npy holding a complex ``object``)
   and the truth (a data file's ``objectGuess`` via ``load_dataset``, or an NPZ/.npy with
   a complex object); both must be complex and of one shape (the same object pixel frame);
2. crop to the illuminated region (``metrics.illuminated_region``: the largest rectangle
   where the summed probe intensity at the scan positions reaches ``--illumination-floor``
   of its peak; the default when the truth is a data file, which holds probe and
   positions), or to the scanned region (``metrics.scan_region``: the bounding box of every
   N x N patch), or to the covered region, or not at all;
3. optional sub-pixel registration (``metrics.register``; the shift is applied to the
   whole reconstruction, then the crop loses ceil(|shift|) pixels on each side);
4. phase alignment: the global phase offset, optionally a linear ramp (``metrics.align_phase``);
5. optional amplitude scale matching (the least-squares factor is always reported);
6. MAE, RMSE, PSNR, SSIM and FRC (1/2-bit and 1/7) of amplitude and phase.

Outputs in DIR: ``metrics.json``, ``metrics.csv``, ``frc.png``, ``compare.png``, each
written atomically (temporary file + ``os.replace``).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import metrics
from .files import UserError, atomic_output
from .data import file_kind
from .result_files import StoredReconstruction, as_complex_object, npz_array, open_npz, read_reconstruction
from .runtime import package_version

__all__ = [
    "Truth", "EvaluationResult", "load_truth", "evaluate", "write_outputs", "CROP_MODES",
    "METRIC_NAMES", "FORMAT",
]

FORMAT = "ptycho_fast.evaluation"
FORMAT_VERSION = 1
CROP_MODES = ("auto", "illuminated", "scan", "covered", "none")
#: per-image metrics; the keys of metrics.json are f"{image}_{name}", image = amplitude | phase
METRIC_NAMES = ("mae", "rmse", "psnr", "ssim", "frc_half_bit_px", "frc_half_bit_nyquist",
                "frc_one_seventh_px", "frc_one_seventh_nyquist", "frc_mean")


# ----------------------------------------------------------------------------- reading
@dataclass
class Truth:
    object: np.ndarray                      # (H, W) complex128
    positions: np.ndarray | None = None
    N: int | None = None
    source: str = "<memory>"
    probe: np.ndarray | None = None         # (N, N) or (M, N, N): for --crop illuminated


def load_truth(path, what: str = "--truth") -> Truth:
    """A data file's ``objectGuess`` (NPZ, our HDF5, a ptychodus product; with its positions
    and N), or an NPZ/.npy holding a complex object (key ``objectGuess`` or ``object``, or
    the only array in it)."""
    from .data import load_dataset
    from .data.dataset import DataError
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} {path}: no such file")
    if path.is_dir():
        raise UserError(f"{what} {path}: is a directory; expected a data file (its objectGuess) or an "
                        "NPZ/.npy holding the complex ground-truth object")
    kind = file_kind(path)
    hint = "the reconstruction is complex"
    if kind == "npy":
        return Truth(as_complex_object(open_npz(path, what), f"{what} {path}", hint), source=str(path))
    if kind == "npz":
        with open_npz(path, what) as npz:
            keys = list(npz.files)
            if "diffraction" not in keys and "diff3d" not in keys:
                for key in ("objectGuess", "object"):
                    if key in keys:
                        return Truth(as_complex_object(npz_array(npz, key, path, what),
                                                       f"{what} {path}: key '{key}'", hint), source=str(path))
                if len(keys) == 1:
                    return Truth(as_complex_object(npz_array(npz, keys[0], path, what),
                                                   f"{what} {path}: key '{keys[0]}'", hint), source=str(path))
                raise UserError(f"{what} {path}: no ground-truth object: expected key 'objectGuess' or "
                                f"'object' (found: {', '.join(sorted(keys)) or 'nothing'})")
    try:
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # edge warnings are the data's business, not evaluate's
            ds = load_dataset(path, lazy=True)
    except DataError as exc:
        raise UserError(f"{what}: {exc}") from None
    try:
        if ds.object is None:
            raise UserError(f"{what} {path}: the data file holds no ground-truth object (objectGuess)")
        obj = as_complex_object(ds.object, f"{what} {path}: objectGuess", hint)
        return Truth(obj, ds.positions.copy(), ds.N, str(path), np.asarray(ds.probe).copy())
    finally:
        ds.close()


# ----------------------------------------------------------------------------- evaluation
@dataclass
class EvaluationResult:
    metrics: dict                   # flat: name -> number (None for undefined)
    info: dict                      # region, alignment, inputs, settings
    frc: dict                       # "amplitude"/"phase" -> metrics.FRCResult
    images: dict                    # truth/recon amplitude and phase crops (float64)

    def to_json(self) -> dict:
        out = {"format": FORMAT, "format_version": FORMAT_VERSION}
        out.update({k: _json_number(v) for k, v in self.metrics.items()})
        out.update(self.info)
        out["frc_curves"] = {
            "frequency_cycles_per_px": self.frc["amplitude"].frequency.tolist(),
            "n_pixels": self.frc["amplitude"].n_pixels.tolist(),
            "half_bit": self.frc["amplitude"].half_bit.tolist(),
            "one_seventh": metrics.ONE_SEVENTH,
            "amplitude": metrics._finite_or_none(self.frc["amplitude"].frc),
            "phase": metrics._finite_or_none(self.frc["phase"].frc),
        }
        return out


def _json_number(v):
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, (int, np.integer)):
        return int(v)
    v = float(v)
    return v if math.isfinite(v) else None


def _image_metrics(prefix: str, truth: np.ndarray, recon: np.ndarray, taper: float):
    out = {f"{prefix}_mae": metrics.mae(truth, recon), f"{prefix}_rmse": metrics.rmse(truth, recon),
           f"{prefix}_psnr": metrics.psnr(truth, recon), f"{prefix}_ssim": metrics.ssim(truth, recon)}
    curve = metrics.frc(truth, recon, taper=taper)
    for name in ("half_bit", "one_seventh"):
        res = curve.resolution(name)
        out[f"{prefix}_frc_{name}_px"] = res["resolution_px"]
        out[f"{prefix}_frc_{name}_nyquist"] = res["fraction_of_nyquist"]
        out[f"{prefix}_frc_{name}_crossed"] = res["crossed"]
        deficit = res["low_frequency_deficit_to"]
        out[f"{prefix}_frc_{name}_low_frequency_deficit_nyquist"] = None if deficit is None else deficit / 0.5
    out[f"{prefix}_frc_mean"] = curve.mean()
    return out, curve


def _resolve_region(recon: StoredReconstruction, truth: Truth, crop: str, N, positions, margin: int,
                    illumination_floor: float):
    """(rows, cols, info) of the region to evaluate, in the reconstruction's canvas frame.
    ``truth`` is already cut to that frame (its positions shifted by the origin)."""
    shape = recon.object.shape
    pos = positions if positions is not None else (recon.positions if recon.positions is not None
                                                   else truth.positions)
    pos_source = ("--positions" if positions is not None else "reconstruction" if recon.positions is not None
                  else "truth data file" if truth.positions is not None else None)
    n = N if N is not None else (truth.N if truth.N is not None else recon.N)
    if crop == "auto":
        crop = ("illuminated" if (pos is not None and truth.probe is not None)
                else "scan" if (pos is not None and n is not None)
                else "covered" if recon.covered_mask() is not None else "none")
    info = {"crop": crop, "crop_margin_px": int(margin)}
    if crop == "illuminated":
        if pos is None or truth.probe is None:
            raise UserError("--crop illuminated: needs the scan positions and the probe, which a data file "
                            "given as --truth holds (this truth is a bare object); use --crop scan (with "
                            "positions and --n), covered or none")
        try:
            rows, cols, illum = metrics.illuminated_region(pos, truth.probe, shape, illumination_floor)
        except ValueError as exc:
            raise UserError(f"--crop illuminated: {exc}") from None
        scan_rows, scan_cols = metrics.scan_region(pos, int(truth.probe.shape[-1]), shape)
        info.update({"N": int(truth.probe.shape[-1]), "n_positions": int(len(pos)), "positions_from": pos_source,
                     "illumination_floor": float(illumination_floor),
                     "scan_region_rows": [scan_rows.start, scan_rows.stop],
                     "scan_region_cols": [scan_cols.start, scan_cols.stop],
                     "illumination_min_in_region": float(illum[rows, cols].min()),
                     "illumination_median_in_region": float(np.median(illum[rows, cols]))})
    elif crop == "scan":
        if pos is None:
            raise UserError("--crop scan: no scan positions: the reconstruction has no 'positions' and the "
                            "truth is not a data file; use --crop covered or --crop none")
        if n is None:
            raise UserError("--n: the patch size N is needed to crop to the scanned region (it is read from "
                            "a data file given as --truth); give --n N, or use --crop covered/none")
        try:
            rows, cols = metrics.scan_region(pos, int(n), shape)
        except ValueError as exc:
            raise UserError(f"--crop scan: {exc}") from None
        mask = metrics.scan_mask(pos, int(n), shape)[rows, cols]
        info.update({"N": int(n), "n_positions": int(len(pos)), "positions_from": pos_source,
                     "scanned_fraction_of_region": float(mask.mean())})
    elif crop == "covered":
        if recon.covered_mask() is None:
            raise UserError("--crop covered: the reconstruction has no 'coverage' map; use --crop scan "
                            "(with positions and --n) or --crop none")
        box = metrics.bounding_box(recon.covered_mask())
        if box is None:
            raise UserError(f"RECON {recon.source}: the coverage map is zero everywhere (nothing was reconstructed)")
        rows, cols = box
    else:
        rows, cols = slice(0, shape[0]), slice(0, shape[1])
    return rows, cols, info


def _truth_in_canvas(recon: StoredReconstruction, truth: Truth) -> Truth:
    """The truth cut to the reconstruction's canvas: canvas pixel [0, 0] is truth pixel
    ``recon.origin`` (0, 0 when not given); truth positions move with it."""
    (H, W), (Ht, Wt) = recon.object.shape, truth.object.shape
    o = recon.origin or (0, 0)
    if o == (0, 0) and (H, W) == (Ht, Wt):
        return truth
    where = (f"the reconstruction ({recon.source}, {H} x {W}"
             + (f" at origin ({o[0]}, {o[1]})" if recon.origin is not None else "")
             + f") with the truth ({truth.source}, {Ht} x {Wt})")
    if recon.origin is None:
        raise UserError(f"cannot align {where}: they must have the same shape, in the same object pixel "
                        "frame (as 'ptycho-fast infer' writes it), or the reconstruction must say where its "
                        "canvas lies ('origin' in object.npz)")
    if o[0] < 0 or o[1] < 0 or o[0] + H > Ht or o[1] + W > Wt:
        raise UserError(f"cannot align {where}: the canvas reaches outside the truth object")
    pos = None if truth.positions is None else truth.positions - np.asarray(o, dtype=np.float64)
    return Truth(truth.object[o[0]:o[0] + H, o[1]:o[1] + W], pos, truth.N, truth.source, truth.probe)


#: registration settings used by evaluate: on crops of a few tens of pixels of sparse
#: objects, windowed plain cross-correlation was 5-10x more accurate than whitened phase
#: correlation, whose equal weighting of every frequency lets the crop edges win
REGISTER_NORMALIZATION = None
REGISTER_TAPER = 0.25


def _registration_shift(t: np.ndarray, r: np.ndarray, phase_ramp: bool, upsample: int):
    """Shift (row, col) mapping the reconstruction crop ``r`` onto the truth crop ``t``
    (windowed cross-correlation, upsampled: metrics.register).

    Without a phase ramp the complex fields are registered (a constant phase offset does
    not move the correlation peak). A linear phase ramp does: it shifts the spectrum of
    ``r`` and smears the peak. With ``phase_ramp`` the amplitudes (blind to any phase) are
    registered first, when the truth has amplitude contrast; then the ramp is fitted at that
    shift, removed from ``r``, and the complex fields are registered again (twice)."""
    def reg(a, b):
        return metrics.register(a, b, upsample_factor=upsample, normalization=REGISTER_NORMALIZATION,
                                taper=REGISTER_TAPER)

    if not phase_ramp:
        return reg(t, r)
    amp_t = np.abs(t)
    shift = reg(amp_t, np.abs(r)) if np.ptp(amp_t) > 1e-6 * max(float(amp_t.max()), 1e-30) else reg(t, r)
    h, w = t.shape
    y = (np.arange(h) - (h - 1) / 2.0)[:, None]
    x = (np.arange(w) - (w - 1) / 2.0)[None, :]
    for _ in range(2):
        _, al = metrics.align_phase(t, metrics.shift_image(r, shift), ramp=True)
        # a shift of the field changes only the constant of a linear ramp, not its slope
        deramped = r * np.exp(-1j * (al.ramp_row * y + al.ramp_col * x))
        shift = reg(t, deramped)
    return shift


def _shrink(rows: slice, cols: slice, m: int) -> tuple[slice, slice]:
    return slice(rows.start + m, rows.stop - m), slice(cols.start + m, cols.stop - m)


def evaluate(recon: StoredReconstruction, truth: Truth, *, register: bool = False, phase_ramp: bool = False,
             match_scale: bool = False, crop: str = "auto", crop_margin: int = 0, N: int | None = None,
             positions=None, frc_taper: float = 0.1, upsample: int = 100,
             max_shift: float | None = None,
             illumination_floor: float = metrics.ILLUMINATION_FLOOR) -> EvaluationResult:
    """Align ``recon`` to ``truth`` and compute every metric (see the module doc).
    ``max_shift``: the largest registration shift accepted, pixels per axis (default a
    quarter of the region's smaller side); a larger one is an error, not a result."""
    if crop not in CROP_MODES:
        raise UserError(f"--crop: must be one of {', '.join(CROP_MODES)}, got {crop!r}")
    if crop_margin < 0:
        raise UserError(f"--crop-margin: must be >= 0 pixels, got {crop_margin}")
    if N is not None and (N < 2 or N % 2):
        raise UserError(f"--n: the patch size must be an even number >= 2, got {N}")
    if max_shift is not None and not max_shift >= 0:
        raise UserError(f"--max-shift: must be >= 0 pixels, got {max_shift}")
    if not 0 <= frc_taper < 0.5:
        raise UserError(f"--frc-taper: must be in [0, 0.5), got {frc_taper}")
    if not 0 < illumination_floor < 1:
        raise UserError(f"--illumination-floor: must be in (0, 1), got {illumination_floor}")
    truth = _truth_in_canvas(recon, truth)
    rows, cols, region = _resolve_region(recon, truth, crop, N, positions, crop_margin, illumination_floor)
    rows, cols = _shrink(rows, cols, crop_margin)
    t_full, r_full = truth.object, recon.object

    def check_size(r, c, why):
        h, w = r.stop - r.start, c.stop - c.start
        if h < 11 or w < 11:
            raise UserError(f"the evaluated region is only {max(h, 0)} x {max(w, 0)} pixels {why}; SSIM "
                            "needs at least 11 x 11 (use a smaller --crop-margin or --crop none)")

    check_size(rows, cols, f"(crop '{region['crop']}', margin {crop_margin})")
    shift = None
    if register:
        shift = _registration_shift(t_full[rows, cols], r_full[rows, cols], phase_ramp, upsample)
        limit = max_shift if max_shift is not None else min(rows.stop - rows.start, cols.stop - cols.start) / 4
        if max(abs(shift[0]), abs(shift[1])) > limit:
            raise UserError(f"--register: the best match is a shift of ({shift[0]:.2f}, {shift[1]:.2f}) px, more "
                            f"than --max-shift {limit:g} px; the reconstruction does not resemble the truth "
                            "(untrained model?) or lies in another frame. Evaluate without --register, or "
                            "raise --max-shift")
        r_full = metrics.shift_image(r_full, shift)
        m = int(math.ceil(max(abs(shift[0]), abs(shift[1]))))
        rows, cols = _shrink(rows, cols, m)
        check_size(rows, cols, f"after trimming the registration shift ({shift[0]:.2f}, {shift[1]:.2f}) px")
    t, r = t_full[rows, cols], r_full[rows, cols]
    aligned, phase_al = metrics.align_phase(t, r, ramp=phase_ramp)
    amp_t, amp_r = np.abs(t), np.abs(aligned)
    amp_scaled, k = metrics.match_amplitude_scale(amp_t, amp_r)
    if match_scale:
        amp_r = amp_scaled
    ph_t = np.angle(t)
    ph_r = metrics.phase_relative_to(t, aligned)

    values: dict = {}
    amp_vals, amp_frc = _image_metrics("amplitude", amp_t, amp_r, frc_taper)
    ph_vals, ph_frc = _image_metrics("phase", ph_t, ph_r, frc_taper)
    values.update(amp_vals)
    values.update(ph_vals)
    values.update({
        "amplitude_scale_fit": k, "amplitude_scale_applied": bool(match_scale),
        "phase_offset_rad": phase_al.to_dict()["offset_rad"],
        "phase_ramp_row_rad_per_px": phase_al.ramp_row, "phase_ramp_col_rad_per_px": phase_al.ramp_col,
        "register_shift_row_px": None if shift is None else shift[0],
        "register_shift_col_px": None if shift is None else shift[1],
    })
    region.update({"rows": [rows.start, rows.stop], "cols": [cols.start, cols.stop],
                   "shape": [rows.stop - rows.start, cols.stop - cols.start],
                   "object_shape": list(truth.object.shape),
                   "canvas_origin": None if recon.origin is None else list(recon.origin)})
    info = {
        "region": region,
        "inputs": {"reconstruction": recon.source, "truth": truth.source},
        "settings": {"register": bool(register), "phase_ramp": bool(phase_ramp),
                     "match_scale": bool(match_scale), "frc_taper": float(frc_taper),
                     "register_upsample": int(upsample), "max_shift_px": max_shift,
                     "register_method": ("cross-correlation" if REGISTER_NORMALIZATION is None else "phase correlation")
                                        + f", Tukey taper {REGISTER_TAPER}, upsampled DFT refinement",
                     "resolution_convention": "half-period, pixels (1 px = Nyquist)",
                     "data_range": "range of the truth image (PSNR, SSIM)"},
        "versions": {"ptycho_fast": package_version(), "numpy": np.__version__},
    }
    images = {"truth_amplitude": amp_t, "recon_amplitude": amp_r, "truth_phase": ph_t, "recon_phase": ph_r}
    return EvaluationResult(values, info, {"amplitude": amp_frc, "phase": ph_frc}, images)


# ----------------------------------------------------------------------------- outputs
def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def _csv_text(result: EvaluationResult) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["metric", "value"])
    for k, v in result.metrics.items():
        if isinstance(v, bool):
            w.writerow([k, "true" if v else "false"])
        elif v is None:
            w.writerow([k, ""])
        else:
            w.writerow([k, repr(float(v))])
    return buf.getvalue()


def _figure(width, height):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


def frc_figure(result: EvaluationResult) -> bytes:
    """PNG: FRC of amplitude and phase against frequency (fraction of Nyquist), with the 1/2-bit
    and 1/7 thresholds and the crossings marked."""
    fig = _figure(10, 4)
    for i, name in enumerate(("amplitude", "phase")):
        ax = fig.add_subplot(1, 2, i + 1)
        curve = result.frc[name]
        x = curve.frequency / 0.5
        ax.plot(x[1:], curve.frc[1:], color="C0", lw=1.5, label="FRC")
        ax.plot(x[1:], curve.half_bit[1:], color="C1", lw=1, ls="--", label="1/2-bit threshold")
        ax.axhline(metrics.ONE_SEVENTH, color="C2", lw=1, ls=":", label="1/7 threshold")
        for th, color in (("half_bit", "C1"), ("one_seventh", "C2")):
            res = curve.resolution(th)
            if res["crossed"]:
                ax.axvline(res["fraction_of_nyquist"], color=color, lw=0.8, alpha=0.7)
        hb = result.metrics[f"{name}_frc_half_bit_px"]
        reached = "" if result.metrics[f"{name}_frc_half_bit_crossed"] else ", threshold not reached"
        deficit = result.metrics.get(f"{name}_frc_half_bit_low_frequency_deficit_nyquist")
        if deficit is not None:
            # the coarsest scales disagree: shade them, and say the search started after them
            ax.axvspan(0, deficit, color="C3", alpha=0.12, lw=0, label="low-frequency deficit")
        title = f"{name}: 1/2-bit resolution {hb:.2f} px (half period{reached})"
        if deficit is not None:
            title += f"\nbelow the threshold up to {deficit:.3f} Nyquist (low-frequency deficit)"
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("spatial frequency / Nyquist")
        ax.set_ylabel("FRC")
        ax.set_xlim(0, 1)
        ax.set_ylim(min(-0.1, float(np.nanmin(curve.frc[1:])) - 0.05) if len(curve.frc) > 1 else -0.1, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return _png(fig)


def compare_figure(result: EvaluationResult) -> bytes:
    """PNG: truth / reconstruction / difference (reconstruction - truth), amplitude and phase
    (after alignment), each with a colour bar."""
    fig = _figure(13, 8)
    im = result.images
    for row, (name, unit) in enumerate((("amplitude", ""), ("phase", " (rad)"))):
        t, r = im[f"truth_{name}"], im[f"recon_{name}"]
        lo, hi = float(min(t.min(), r.min())), float(max(t.max(), r.max()))
        diff = r - t
        dmax = float(np.abs(diff).max()) or 1e-12
        panels = ((t, f"truth {name}{unit}", "gray", lo, hi),
                  (r, f"reconstruction {name}{unit}", "gray", lo, hi),
                  (diff, f"difference{unit} (MAE {result.metrics[f'{name}_mae']:.3g}, "
                         f"SSIM {result.metrics[f'{name}_ssim']:.3f})", "RdBu_r", -dmax, dmax))
        for col, (img, title, cmap, vmin, vmax) in enumerate(panels):
            ax = fig.add_subplot(2, 3, row * 3 + col + 1)
            h = ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(h, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return _png(fig)


def write_outputs(result: EvaluationResult, out_dir) -> dict[str, Path]:
    """Write metrics.json, metrics.csv, frc.png and compare.png into ``out_dir`` (created if
    its parent exists), each atomically. Returns name -> path."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    if not out.exists():
        parent = out.parent if str(out.parent) else Path(".")
        if not parent.is_dir():
            raise UserError(f"--out {out}: directory {parent} does not exist")
        out.mkdir()
    paths = {name: out / name for name in ("metrics.json", "metrics.csv", "frc.png", "compare.png")}
    _write_bytes(paths["metrics.json"],
                 (json.dumps(result.to_json(), indent=2, allow_nan=False) + "\n").encode())
    _write_bytes(paths["metrics.csv"], _csv_text(result).encode())
    _write_bytes(paths["frc.png"], frc_figure(result))
    _write_bytes(paths["compare.png"], compare_figure(result))
    return paths


def format_table(result: EvaluationResult) -> str:
    m = result.metrics
    # (label, key, format, text for a missing value)
    rows = [("MAE", "mae", "{:.4g}", "n/a"), ("RMSE", "rmse", "{:.4g}", "n/a"),
            ("PSNR (dB)", "psnr", "{:.2f}", "n/a"), ("SSIM", "ssim", "{:.4f}", "n/a"),
            ("FRC 1/2-bit (px)", "frc_half_bit_px", "{:.2f}", "n/a"),
            ("FRC 1/2-bit (Nyquist)", "frc_half_bit_nyquist", "{:.3f}", "n/a"),
            ("FRC 1/7 (px)", "frc_one_seventh_px", "{:.2f}", "n/a"), ("FRC mean", "frc_mean", "{:.3f}", "n/a"),
            ("FRC deficit to (Nyq.)", "frc_half_bit_low_frequency_deficit_nyquist", "{:.3f}", "none")]
    lines = [f"{'':24s}{'amplitude':>12s}{'phase':>12s}"]
    for label, key, fmt, missing in rows:
        cells = []
        for image in ("amplitude", "phase"):
            v = m.get(f"{image}_{key}")
            cells.append(missing if v is None else ("inf" if v == math.inf else fmt.format(v)))
        lines.append(f"{label:24s}{cells[0]:>12s}{cells[1]:>12s}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI
CLI_HELP = "compare a reconstruction with its ground truth: MAE, RMSE, PSNR, SSIM, FRC, figures"
CLI_DESCRIPTION = """\
Evaluate a reconstruction against the ground truth. RECON is a 'ptycho-fast infer' output
directory (object.npz) or an NPZ with key 'object'; --truth is a data file with objectGuess
(NPZ, HDF5, ptychodus) or an NPZ/.npy holding the complex object, in the same pixel frame.
The images are cropped to the illuminated region (where the probe at the scan positions
delivered at least --illumination-floor of the peak dose), the global phase offset (and with
--phase-ramp a linear ramp) is removed, optionally registered (--register) and
amplitude-scaled (--match-scale). Writes metrics.json, metrics.csv, frc.png and
compare.png into --out (docs/evaluation.md)."""


def add_cli_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recon", metavar="RECON", help="infer output directory, or an NPZ with key 'object'")
    p.add_argument("--truth", "-t", required=True, metavar="FILE",
                   help="data file with objectGuess (NPZ/HDF5/ptychodus), or NPZ/.npy with the complex object")
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="output directory (created; its parent must exist)")
    p.add_argument("--register", action="store_true",
                   help="sub-pixel registration of the reconstruction onto the truth before the metrics")
    p.add_argument("--max-shift", type=float, default=None, metavar="PX",
                   help="largest registration shift accepted per axis; a larger one is an error "
                        "(default: a quarter of the region's smaller side)")
    p.add_argument("--phase-ramp", action="store_true",
                   help="remove a linear phase ramp as well as the global phase offset")
    p.add_argument("--match-scale", action="store_true",
                   help="scale the reconstructed amplitude by the least-squares factor (always reported "
                        "as amplitude_scale_fit; off by default: with a calibrated probe amplitudes are absolute)")
    p.add_argument("--crop", choices=CROP_MODES, default="auto",
                   help="region evaluated: illuminated = largest rectangle where the summed probe intensity "
                        "at the scan positions reaches --illumination-floor of its peak (needs a data file as "
                        "--truth: probe and positions); scan = bounding box of every N x N patch at the scan "
                        "positions (includes the edges only the probe's faint tails reached); covered = bounding "
                        "box of the reconstruction's coverage > 0; none = whole image; auto = the first of "
                        "illuminated, scan, covered, none that the inputs allow (default: auto)")
    p.add_argument("--illumination-floor", type=float, default=metrics.ILLUMINATION_FLOOR, metavar="F",
                   help="--crop illuminated: fraction of the peak summed probe intensity a pixel needs "
                        "(default: %(default)s)")
    p.add_argument("--crop-margin", type=int, default=0, metavar="PX",
                   help="pixels removed from each side of the region (default: 0)")
    p.add_argument("--n", "--N", dest="N", type=int, default=None, metavar="N",
                   help="patch size N for --crop scan (default: from the truth data file or summary.json)")
    p.add_argument("--frc-taper", type=float, default=0.1, metavar="F",
                   help="Tukey window edge fraction per side before the FRC (default: %(default)s)")
    p.add_argument("--quiet", "-q", action="store_true", help="do not print the metrics table")


def cli_main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"--out {out}: directory {parent} does not exist")
    recon = read_reconstruction(args.recon)
    truth = load_truth(args.truth)
    result = evaluate(recon, truth, register=args.register, phase_ramp=args.phase_ramp,
                      match_scale=args.match_scale, crop=args.crop, crop_margin=args.crop_margin,
                      N=args.N, frc_taper=args.frc_taper, max_shift=args.max_shift,
                      illumination_floor=args.illumination_floor)
    paths = write_outputs(result, out)
    if not args.quiet:
        reg = result.info["region"]
        print(f"region: {reg['crop']} rows {reg['rows'][0]}:{reg['rows'][1]} cols "
              f"{reg['cols'][0]}:{reg['cols'][1]} ({reg['shape'][0]} x {reg['shape'][1]} px)")
        print(format_table(result))
        print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0
