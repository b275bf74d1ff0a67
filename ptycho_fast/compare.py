"""``ptycho-fast compare A B``: the parity / regression guard between two inference runs
(docs/evaluation.md §compare).

A and B are two ``ptycho-fast infer`` output directories (``object.npz`` + ``summary.json``)
or two ``--debug-dump`` directories (``stats.json``), e.g. the same inference through our
kernels and through ``--ops reference``, read through :mod:`ptycho_fast.result_files` (the
module that writes them). A is the baseline. Reported:

* the patch-variance ratio ``var_zero_mean(A) / var_zero_mean(B)`` (the health figure of the
  predicted patches, ``ops.var_zero_mean``), and the other patch statistics side by side;
* MAE and SSIM between the stitched canvases, amplitude and phase, over the covered region
  (pixels with weight > 0 in either run; phase differences are wrapped into [-pi, pi)).

The exit code is 1, with one ``REGRESSION: ...`` line per failed check on stderr, when the
variance ratio leaves ``1 ± --var-ratio-tolerance`` (default 0.1; not checked when both
variances are float32 round-off of constant patches, below ``(--var-floor x mean)²``) or
an SSIM falls below
``--ssim-threshold`` (default :data:`DEFAULT_SSIM_THRESHOLD`); 0 when every check passes;
2 for unusable inputs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import metrics
from .files import UserError, atomic_output
from .result_files import DEBUG_STATS_JSON, OBJECT_NPZ, STAT_NAMES, SUMMARY_JSON, read_output_directory

__all__ = ["DEFAULT_SSIM_THRESHOLD", "DEFAULT_VAR_RATIO_TOLERANCE", "RunOutput", "load_run",
           "compare_runs", "Comparison", "EXIT_REGRESSION"]

#: SSIM below this between the two canvases (amplitude or phase) is a regression. Two
#: correct execution paths (our kernels, --ops reference) differ by float32 rounding,
#: relative ~1e-6, which costs ~1e-9 of SSIM; even 1e-4 relative differences cost only
#: 2e-5. Real changes measured on a simulated 'lines' object (docs/evaluation.md): every
#: position 0.1 px off 0.994, a wrong stitching window 0.93, a phase sign flip 0.79,
#: transposed patches 0.61, one patch of 100 placed 1 px off 0.998.
DEFAULT_SSIM_THRESHOLD = 0.999
#: |var_zero_mean(A) / var_zero_mean(B) - 1| above this is a regression (issue 6: ±10 %)
DEFAULT_VAR_RATIO_TOLERANCE = 0.1
#: variances below (this x the patch mean)² on both sides are float32 round-off of
#: constant patches (std ~ 6e-8 x mean; 1e-6 leaves a 16x margin): their ratio is noise
#: (2.7 measured on a collapsed model), so the check passes with a note
DEFAULT_VAR_FLOOR = 1e-6
EXIT_REGRESSION = 1


@dataclass
class RunOutput:
    """What one side of the comparison holds."""
    source: str
    object: np.ndarray | None = None        # (H, W) complex
    coverage: np.ndarray | None = None      # (H, W) float
    covered: np.ndarray | None = None       # (H, W) bool
    var_zero_mean: float | None = None
    var_from: str | None = None             # "summary.json:patch_stats.var_zero_mean"
    stats: dict = field(default_factory=dict)   # mean/std/min/max next to var_zero_mean
    summary: dict = field(default_factory=dict)


def load_run(path, what: str) -> RunOutput:
    """Read an infer output directory or a --debug-dump directory (see module doc)."""
    found = read_output_directory(path, what)
    run = RunOutput(source=str(found.path), summary=found.summary)
    if found.patch_stats is not None:
        run.var_zero_mean, run.var_from = found.patch_stats.var_zero_mean, found.patch_stats.source
        run.stats = found.patch_stats.stats
    if found.reconstruction is not None:
        rec = found.reconstruction
        run.object, run.coverage, run.covered = rec.object, rec.coverage, rec.covered_mask()
    return run


@dataclass
class Comparison:
    values: dict
    failures: list
    notes: list

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_json(self) -> dict:
        def clean(v):
            if isinstance(v, float) and not math.isfinite(v):
                return None
            return v
        return {"format": "ptycho_fast.compare", "format_version": 1, "passed": self.passed,
                **{k: clean(v) for k, v in self.values.items()},
                "regressions": list(self.failures), "notes": list(self.notes)}


def _canvas_metrics(a: RunOutput, b: RunOutput) -> dict:
    if a.object.shape != b.object.shape:
        raise UserError(f"cannot compare the canvases: A ({a.source}) is {a.object.shape[0]} x {a.object.shape[1]} "
                        f"but B ({b.source}) is {b.object.shape[0]} x {b.object.shape[1]}; both runs must "
                        "reconstruct the same data")
    covered = [run.covered for run in (a, b) if run.covered is not None]
    mask = np.logical_or.reduce(covered) if covered else (np.abs(a.object) > 0) | (np.abs(b.object) > 0)
    box = metrics.bounding_box(mask)
    if box is None:
        raise UserError(f"cannot compare the canvases: nothing is covered in A ({a.source}) or B ({b.source})")
    rows, cols = box
    m = mask[rows, cols]
    A = np.where(m, a.object[rows, cols], 0)
    B = np.where(m, b.object[rows, cols], 0)
    if min(A.shape) < 11:
        raise UserError(f"cannot compare the canvases: the covered region is only {A.shape[0]} x {A.shape[1]} "
                        "pixels; SSIM needs at least 11 x 11")
    amp_a, amp_b = np.abs(A), np.abs(B)
    ph_a = np.where(m, np.angle(A), 0.0)
    ph_b = np.where(m, metrics.phase_relative_to(A, B), 0.0)
    out = {
        "covered_pixels": int(m.sum()),
        "region_rows": [rows.start, rows.stop], "region_cols": [cols.start, cols.stop],
        "amplitude_mae": float(np.abs(amp_a - amp_b)[m].mean()),
        "amplitude_max_abs_diff": float(np.abs(amp_a - amp_b)[m].max()),
        "amplitude_ssim": metrics.ssim(amp_a, amp_b, data_range=_range(amp_a[m], amp_b[m])),
        "phase_mae": float(np.abs(ph_a - ph_b)[m].mean()),
        "phase_max_abs_diff": float(np.abs(ph_a - ph_b)[m].max()),
        "phase_ssim": metrics.ssim(ph_a, ph_b, data_range=_range(ph_a[m], ph_b[m])),
    }
    if a.coverage is not None and b.coverage is not None:
        ca, cb = a.coverage, b.coverage
        scale = float(max(np.abs(ca).max(), np.abs(cb).max())) or 1.0
        out["coverage_max_rel_diff"] = float(np.abs(ca - cb).max() / scale)
    return out


def _range(a: np.ndarray, b: np.ndarray) -> float:
    """The SSIM data range: the range of A's values (the baseline), else of both, else 1."""
    r = float(a.max() - a.min()) if a.size else 0.0
    if r > 0:
        return r
    both = np.concatenate([a, b]) if a.size else b
    r = float(both.max() - both.min()) if both.size else 0.0
    return r if r > 0 else 1.0


def compare_runs(a: RunOutput, b: RunOutput, ssim_threshold: float = DEFAULT_SSIM_THRESHOLD,
                 var_ratio_tolerance: float = DEFAULT_VAR_RATIO_TOLERANCE,
                 var_floor: float = DEFAULT_VAR_FLOOR) -> Comparison:
    """Run every check both sides have data for (see module doc). ``var_floor``: when both
    variances are below ``(var_floor · max |patch mean|)²`` they are round-off and the
    ratio is not checked (0 disables; without patch means there is no floor)."""
    if not -1.0 <= ssim_threshold <= 1.0:
        raise UserError(f"--ssim-threshold: must be in [-1, 1], got {ssim_threshold}")
    if not (math.isfinite(var_ratio_tolerance) and var_ratio_tolerance >= 0):
        raise UserError(f"--var-ratio-tolerance: must be a number >= 0, got {var_ratio_tolerance}")
    if not (math.isfinite(var_floor) and var_floor >= 0):
        raise UserError(f"--var-floor: must be a number >= 0, got {var_floor}")
    values: dict = {"a": a.source, "b": b.source, "ssim_threshold": ssim_threshold,
                    "var_ratio_tolerance": var_ratio_tolerance}
    for side, run in (("a", a), ("b", b)):
        if "ops" in run.summary:
            values[f"{side}_ops"] = run.summary["ops"]
    failures, notes = [], []
    checks = 0

    # Patch variance.
    if (a.var_zero_mean is None) != (b.var_zero_mean is None):
        have, lack = (a, b) if a.var_zero_mean is not None else (b, a)
        raise UserError(f"{lack.source}: no patch statistics (var_zero_mean in {SUMMARY_JSON} patch_stats or "
                        f"{DEBUG_STATS_JSON}) while {have.source} has them; compare two outputs of the same kind")
    if a.var_zero_mean is not None:
        checks += 1
        va, vb = a.var_zero_mean, b.var_zero_mean
        ratio = 1.0 if va == vb else (va / vb if vb > 0 else (math.inf if va > 0 else math.nan))
        values.update({"a_var_zero_mean": va, "b_var_zero_mean": vb, "var_ratio": ratio,
                       "a_var_from": a.var_from, "b_var_from": b.var_from})
        for k in STAT_NAMES:
            if k in a.stats and k in b.stats:
                values[f"a_patch_{k}"], values[f"b_patch_{k}"] = a.stats[k], b.stats[k]
        floor = 0.0
        if "mean" in a.stats and "mean" in b.stats:
            floor = (var_floor * max(abs(a.stats["mean"]), abs(b.stats["mean"]))) ** 2
        values["var_floor"] = floor
        if va <= floor and vb <= floor:
            values["var_below_floor"] = True
            notes.append(f"both patch variances ({va:.3g}, {vb:.3g}) are below the round-off floor {floor:.3g} "
                         f"(({var_floor:g} x patch mean)²): constant patches on both sides, ratio not checked")
        elif not abs(ratio - 1.0) <= var_ratio_tolerance:
            failures.append(f"patch variance ratio var_zero_mean A/B = {ratio:.4g} is outside "
                            f"1 ± {var_ratio_tolerance:g} (A {va:.6g}, B {vb:.6g})")
    else:
        notes.append("no patch statistics on either side: variance ratio not checked")

    # Stitched canvases.
    if (a.object is None) != (b.object is None):
        have, lack = (a, b) if a.object is not None else (b, a)
        raise UserError(f"{lack.source}: no {OBJECT_NPZ} (stitched canvas) while {have.source} has one; "
                        "compare two outputs of the same kind")
    if a.object is not None:
        checks += 1
        cm = _canvas_metrics(a, b)
        values.update(cm)
        for image in ("amplitude", "phase"):
            s = cm[f"{image}_ssim"]
            if not s >= ssim_threshold:
                failures.append(f"{image} SSIM between the canvases = {s:.6f} is below the threshold "
                                f"{ssim_threshold:g} (MAE {cm[f'{image}_mae']:.4g})")
    else:
        notes.append(f"no {OBJECT_NPZ} on either side: canvases not compared")
    if checks == 0:  # pragma: no cover - load_run guarantees one of them
        raise UserError("nothing to compare")
    return Comparison(values, failures, notes)


def format_table(c: Comparison) -> str:
    v = c.values
    lines = [f"A: {v['a']}" + (f"  (ops {v['a_ops']})" if "a_ops" in v else ""),
             f"B: {v['b']}" + (f"  (ops {v['b_ops']})" if "b_ops" in v else ""),
             f"{'':26s}{'A':>14s}{'B':>14s}{'A/B, A-B':>14s}  check"]

    def num(x, fmt="{:.6g}"):
        return "n/a" if x is None else ("inf" if x == math.inf else fmt.format(x))

    if "var_ratio" in v:
        ok = abs(v["var_ratio"] - 1) <= v["var_ratio_tolerance"]
        check = ("ok (round-off, not checked)" if v.get("var_below_floor") else
                 f"{'ok' if ok else 'FAIL'} (1 ± {v['var_ratio_tolerance']:g})")
        lines.append(f"{'patch var_zero_mean':26s}{num(v['a_var_zero_mean']):>14s}{num(v['b_var_zero_mean']):>14s}"
                     f"{num(v['var_ratio'], '{:.4f}'):>14s}  {check}")
        for k in STAT_NAMES:
            if f"a_patch_{k}" in v:
                lines.append(f"{'patch ' + k:26s}{num(v[f'a_patch_{k}']):>14s}{num(v[f'b_patch_{k}']):>14s}"
                             f"{num(v[f'a_patch_{k}'] - v[f'b_patch_{k}']):>14s}")
    if "amplitude_ssim" in v:
        for image in ("amplitude", "phase"):
            s = v[f"{image}_ssim"]
            lines.append(f"{image + ' SSIM':26s}{'':>14s}{'':>14s}{num(s, '{:.6f}'):>14s}  "
                         f"{'ok' if s >= v['ssim_threshold'] else 'FAIL'} (>= {v['ssim_threshold']:g})")
            lines.append(f"{image + ' MAE':26s}{'':>14s}{'':>14s}{num(v[f'{image}_mae'], '{:.4g}'):>14s}")
        lines.append(f"{'covered pixels':26s}{v['covered_pixels']:>42d}")
    for n in c.notes:
        lines.append(f"note: {n}")
    lines.append("PASS" if c.passed else f"FAIL ({len(c.failures)} regression{'s' if len(c.failures) > 1 else ''})")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI
CLI_HELP = "compare two inference outputs (kernels vs --ops reference): patch variance ratio, canvas MAE/SSIM"
CLI_DESCRIPTION = f"""\
Compare two 'ptycho-fast infer' output directories (or two --debug-dump directories), A
the baseline: the patch-variance ratio var_zero_mean A/B, and MAE and SSIM between the
stitched canvases (amplitude and phase, covered region). Exit code 1 with a 'REGRESSION:'
line per failure when the ratio leaves 1 ± --var-ratio-tolerance or an SSIM is below
--ssim-threshold (default {DEFAULT_SSIM_THRESHOLD}: float32 rounding between two correct
paths costs ~1e-9 of SSIM, a real change a thousandth or more; docs/evaluation.md).
Across devices (CPU vs GPU with TF32) use a looser threshold, e.g. 0.99."""


def add_cli_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("a", metavar="A", help="baseline: infer output directory or --debug-dump directory")
    p.add_argument("b", metavar="B", help="the run to check, of the same kind as A")
    p.add_argument("--ssim-threshold", type=float, default=DEFAULT_SSIM_THRESHOLD, metavar="T",
                   help="fail when the amplitude or phase SSIM of the canvases is below T (default: %(default)s)")
    p.add_argument("--var-ratio-tolerance", type=float, default=DEFAULT_VAR_RATIO_TOLERANCE, metavar="TOL",
                   help="fail when var_zero_mean A/B leaves 1 ± TOL (default: %(default)s)")
    p.add_argument("--var-floor", type=float, default=DEFAULT_VAR_FLOOR, metavar="REL",
                   help="variances below (REL x patch mean)^2 on both sides are round-off and their ratio "
                        "is not checked; 0 disables (default: %(default)g)")
    p.add_argument("--json", metavar="OUT", default=None,
                   help="also write the results as JSON to OUT (atomically; '-' = stdout)")
    p.add_argument("--quiet", "-q", action="store_true", help="no table; only REGRESSION lines")


def cli_main(args: argparse.Namespace) -> int:
    if args.json not in (None, "-"):
        target = Path(args.json)
        parent = target.parent if str(target.parent) else Path(".")
        if not parent.is_dir():
            raise UserError(f"--json {target}: directory {parent} does not exist")
        if target.is_dir():
            raise UserError(f"--json {target}: is a directory, expected a file name")
    a = load_run(args.a, "A")
    b = load_run(args.b, "B")
    result = compare_runs(a, b, args.ssim_threshold, args.var_ratio_tolerance, args.var_floor)
    if not args.quiet:
        print(format_table(result))
    text = json.dumps(result.to_json(), indent=2, allow_nan=False) + "\n"
    if args.json == "-":
        sys.stdout.write(text)
    elif args.json is not None:
        with atomic_output(args.json) as tmp:
            tmp.write_text(text)
    for f in result.failures:
        print(f"REGRESSION: {f}", file=sys.stderr)
    return 0 if result.passed else EXIT_REGRESSION
