"""The health guard shared by train, infer and refine: are a batch's complex patches (a
network's predictions, or a refined object's) degenerate? (docs/inference.md)

:func:`collapse_reason`: a patch with a non-finite value, an amplitude that is zero
everywhere, or a complex ``var_zero_mean`` (mean over patches of ``E|z - mean z|^2`` =
``var(real) + var(imag)``: 0 for constant patches whatever their amplitude and phase)
below the floor. :func:`amplitude_flat_note` is the softer warning of an amplitude that is
constant while the phase varies, and :func:`degenerate_amplitude_reason` the stop for the same
when the data say the object absorbs (:class:`CountSpread`: the total counts per pattern
vary with position beyond Poisson noise; by Parseval a pure-phase object keeps them
constant) — a collapsed amplitude, not a phase object. Statistics come from ``ops.patch_stats`` (one pass per
view) and are combined across batches by :class:`StatsAccumulator` (float64, Chan's
combination: no second pass over the data).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from . import ops as fast_ops

__all__ = [
    "CollapseError", "DEFAULT_COLLAPSE_FLOOR", "EXIT_COLLAPSE", "STATS_DDOF", "VIEWS",
    "PHASE_STATS_BATCHES", "StatsAccumulator", "batch_stats", "summarize", "batch_record",
    "collapse_reason", "amplitude_flat_note", "CountSpread", "ABSORPTION_SPREAD",
    "degenerate_amplitude_reason",
]

#: --collapse-floor default. The guard reads the variance of the complex patches,
#: var_zero_mean(real) + var_zero_mean(imag) = mean over patches of E|z - mean(z)|^2 (0 for
#: constant patches, whatever their amplitude and phase). A freshly initialised network
#: gives 3e-6 .. 2e-4 (N = 32..128, width 0.25..2), a trained one 1e-3 .. 1e-1; 1e-10 is a
#: spread of 1e-5 within every patch, a few float32 steps of a transmission ~1: constant.
DEFAULT_COLLAPSE_FLOOR = 1e-10
#: exit code of every command whose guard (or a non-finite loss) stops it
EXIT_COLLAPSE = 3
#: patch statistics are population statistics (ddof = 0), as ops.patch_stats computes them
STATS_DDOF = 0


class CollapseError(RuntimeError):
    """The patches are degenerate (non-finite, zero, or constant) or a loss diverged.
    ``partial`` holds the state so far (infer: the reconstruction, for the debug dump)."""

    def __init__(self, message: str, partial: Any = None):
        super().__init__(message)
        self.partial = partial


#: the data say the object absorbs when the total counts per pattern spread (relative
#: standard deviation, the Poisson part removed) by more than this: a transmission varying
#: by ~1 % or more. A pure-phase object's totals vary by Poisson noise only (Parseval;
#: measured on Fourier-shifted simulations of lines, dead leaves, mixed, Siemens star:
#: < 0.5 %, and 0.5 .. 3 % at an amplitude contrast of 0.1). Note: bilinear-interpolated
#: patches of a phase object are not a phase object (up to 5 % for steep phase edges).
ABSORPTION_SPREAD = 0.01

VIEWS = ("amplitude", "phase", "real", "imag")
#: phase statistics (an atan2 per pixel: ~5x the cost of the other views) are gathered over
#: the first PHASE_STATS_BATCHES batches (and every batch logged with --log-patch-stats)
PHASE_STATS_BATCHES = 4


class StatsAccumulator:
    """Running statistics over patches from per-patch statistics (float64; Chan's
    combination of the per-patch means, so no second pass over the data). Each view keeps
    its own count (phase may be gathered over fewer batches); a patch with a non-finite
    statistic in any view of its batch is counted in ``n_nonfinite_patches`` and left out."""

    def __init__(self):
        self.n = 0
        self.n_nonfinite = 0
        self.v = {v: {"n": 0, "mean": 0.0, "m2_means": 0.0, "sum_var": 0.0, "min": math.inf,
                      "max": -math.inf} for v in VIEWS}

    def add(self, stats: dict) -> None:
        # every statistic of every view as one (4 x views, b) float64 block, stacked on the
        # device and copied to the host once per batch (not one small copy per tensor)
        block = torch.stack([getattr(st, f).detach().double().flatten() for st in stats.values()
                             for f in ("mean", "var", "min", "max")]).cpu()
        b = int(block.shape[1])
        finite = torch.isfinite(block).all(0)
        k = int(finite.sum())
        if k:
            kept = block[:, finite]
            for i, v in enumerate(stats):
                mean, var, lo, hi = kept[4 * i:4 * i + 4]
                acc = self.v[v]
                n0, total = acc["n"], acc["n"] + k
                mean_b = float(mean.mean())
                m2_b = float(((mean - mean_b) ** 2).sum())
                delta = mean_b - acc["mean"]
                acc["mean"] += delta * k / total
                acc["m2_means"] += m2_b + delta * delta * n0 * k / total
                acc["sum_var"] += float(var.sum())
                acc["min"] = min(acc["min"], float(lo.min()))
                acc["max"] = max(acc["max"], float(hi.max()))
                acc["n"] = total
        self.n += b
        self.n_nonfinite += b - k

    def summary(self) -> dict:
        out: dict[str, Any] = {"n_patches": self.n, "n_nonfinite_patches": self.n_nonfinite,
                               "ddof": STATS_DDOF}
        for v in VIEWS:
            acc = self.v[v]
            n = acc["n"]
            if n == 0:
                out[v] = {k: math.nan for k in ("mean", "std", "min", "max", "var_zero_mean")}
                out[v]["n_patches"] = 0
                continue
            vzm = acc["sum_var"] / n
            # population std over every pixel of every patch: the mean within-patch variance
            # plus the variance of the patch means
            std = math.sqrt(max(vzm + acc["m2_means"] / n, 0.0))
            out[v] = {"mean": acc["mean"], "std": std, "min": acc["min"], "max": acc["max"],
                      "var_zero_mean": vzm, "n_patches": n}
        out["complex_var_zero_mean"] = out["real"]["var_zero_mean"] + out["imag"]["var_zero_mean"]
        return out


def batch_stats(patches: torch.Tensor, phase: bool = True, ops=fast_ops) -> dict:
    """``ops.patch_stats`` of every view (phase optional: an atan2 per pixel); ``ops``: the
    ops module (``ptycho_fast.ops`` or ``ptycho_fast.reference``)."""
    return {v: ops.patch_stats(patches, v) for v in VIEWS if phase or v != "phase"}


def summarize(patches: torch.Tensor, ops=fast_ops) -> dict:
    """The :meth:`StatsAccumulator.summary` of one batch of complex patches."""
    acc = StatsAccumulator()
    acc.add(batch_stats(patches, ops=ops))
    return acc.summary()


def collapse_reason(summary: dict, floor: float) -> str | None:
    """Why a patch-statistics summary (:class:`StatsAccumulator`) is degenerate, or None."""
    n = summary["n_patches"]
    if summary["n_nonfinite_patches"]:
        return (f"{summary['n_nonfinite_patches']} of {n} predicted patches contain non-finite "
                "values (NaN or Inf)")
    if not summary["amplitude"]["max"] > 0:
        return f"the predicted amplitude is zero everywhere (all {n} patches)"
    var = summary["complex_var_zero_mean"]
    if not var >= floor:
        return (f"the predicted patches collapsed to constants: their variance (var_zero_mean of the complex "
                f"values, ddof {STATS_DDOF}) is {var:.3g}, below the floor {floor:.3g} "
                f"(--collapse-floor); amplitude mean {summary['amplitude']['mean']:.4g}")
    return None


def amplitude_flat_note(summary: dict, floor: float) -> str | None:
    """A warning (not a stop) when the predicted amplitude is constant within every patch
    while the complex values still vary: either a pure-phase object, or a model whose
    amplitude output collapsed (which the complex-variance guard cannot tell apart)."""
    amp = summary["amplitude"]["var_zero_mean"]
    if not (math.isfinite(amp) and amp < floor) or collapse_reason(summary, floor) is not None:
        return None
    return (f"the predicted amplitude is constant within every patch (amplitude var_zero_mean {amp:.3g} < "
            f"{floor:.3g}; mean {summary['amplitude']['mean']:.4g}) while the phase varies: right for a "
            "pure-phase object, otherwise an amplitude collapse; check amplitude.png")


class CountSpread:
    """How much the total counts per pattern vary: ``add(X)`` with amplitudes (…, N, N) in
    count units (sums kept on X's device: no host copy until :meth:`summary`)."""

    def __init__(self):
        self.n, self.s1, self.s2 = 0, 0.0, 0.0

    def add(self, X: torch.Tensor) -> None:
        totals = X.detach().double().square().sum((-2, -1)).flatten()
        self.s1 = self.s1 + totals.sum()
        self.s2 = self.s2 + totals.square().sum()
        self.n += int(totals.numel())

    def summary(self) -> dict:
        """mean and std of the totals, ``excess``: the relative spread beyond Poisson noise
        (sqrt(max(var - mean, 0)) / mean), ``absorbing``: excess > ABSORPTION_SPREAD and
        var > 4 mean (clearly beyond the noise)."""
        n = max(self.n, 1)
        mean = float(self.s1) / n
        var = max(float(self.s2) / n - mean * mean, 0.0)
        excess = math.sqrt(max(var - mean, 0.0)) / mean if mean > 0 else 0.0
        return {"n_patterns": self.n, "mean": mean, "std": math.sqrt(var), "excess": excess,
                "absorbing": bool(mean > 0 and excess > ABSORPTION_SPREAD and var > 4 * mean)}

    @classmethod
    def of(cls, X, chunk: int = 4096) -> "CountSpread":
        """The spread of a whole (P, N, N) array, in chunks (a float64 copy of ``chunk``
        patterns at a time, not of the whole file)."""
        spread, X = cls(), torch.as_tensor(X)
        for start in range(0, X.shape[0], chunk):
            spread.add(X[start:start + chunk])
        return spread


def degenerate_amplitude_reason(summary: dict, floor: float, counts: dict) -> str | None:
    """A collapse (exit 3 unless --allow-degenerate): the predicted amplitude is constant
    within every patch (var_zero_mean below ``floor``) while the data say the object absorbs
    (``counts``: a :meth:`CountSpread.summary`). None otherwise (a pure-phase object's
    constant amplitude is right)."""
    amp = summary["amplitude"]["var_zero_mean"]
    if not (math.isfinite(amp) and amp < floor and counts["absorbing"]):
        return None
    return (f"the predicted amplitude is constant within every patch (amplitude var_zero_mean "
            f"{amp:.3g} < {floor:.3g}, mean {summary['amplitude']['mean']:.4g}) but the data say the "
            f"object absorbs: the total counts per pattern vary by {100 * counts['excess']:.2g} % beyond "
            f"Poisson noise (a pure-phase object keeps them constant): the amplitude output collapsed")


def batch_record(stats: dict, batch: int) -> dict:
    """The per-batch log entry (--log-patch-stats) of one batch's statistics."""
    acc = StatsAccumulator()
    acc.add(stats)
    s = acc.summary()
    return {"batch": batch, "n_patches": s["n_patches"], "ddof": STATS_DDOF,
            "complex_var_zero_mean": s["complex_var_zero_mean"],
            "amplitude": s["amplitude"], "phase": s["phase"]}
