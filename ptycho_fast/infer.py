"""Inference: ``ptycho-fast infer`` (docs/inference.md).

Reconstruct the full-field object from a dataset with a trained model bundle::

    data (P patterns, positions)  --groups of C = gridsize² neighbours (--groups every, the
         default: data.group_positions, one group per pattern as in training, each pattern
         predicted ~C times and averaged; cover: data.cover_groups, each pattern in one
         group, ~P/C network inputs: faster, measurably worse images, docs/inference.md)
      -> batches of B groups, each reading only its patterns (data.PatternReader: an HDF5
         file streams)
      -> BundlePredictor: X / s (stored intensity scale) -> network -> object_big (gridsize > 1)
      -> EVERY predicted patch stitched at its own scan position (ops.stitch_patches with
         the window as weights, one call per batch into the batch's bounding box)
      -> object = sum w*patch / sum w where covered (sum w > COVERAGE_FLOOR * max), 0 elsewhere

The canvas is the object pixel frame of the data: the shape and origin of ``objectGuess``
when the file has one (results compare pixel for pixel with the ground truth), else the
scan's extent, its pixel [0, 0] at ``origin`` = floor of the smallest patch top-left.

Outputs in DIR (all-or-nothing: every file goes to a temporary name beside it and all are
renamed into place only once every one is complete; written by :mod:`ptycho_fast.infer_output`
on the layout of :mod:`ptycho_fast.result_files`): ``object.npz``, ``object.h5``,
``object_ptychodus.h5`` (``--format ptychodus``), ``amplitude.png``, ``phase.png``,
``summary.json`` [, ``patch_stats.json`` with ``--log-patch-stats``].

This module is the reconstruction loop (:func:`reconstruct`: the canvas accumulators, the
per-batch monitor and the guard's checks) and the command (:func:`run_infer`, the CLI); the
predictor is :class:`ptycho_fast.bundle.BundlePredictor`, the pattern reader
:class:`ptycho_fast.data.PatternReader`.

The collapse guard checks the statistics of the network's predicted patches (ops.patch_stats)
after the first batch and over all patches at the end: non-finite values, an amplitude that
is zero everywhere, or a complex ``var_zero_mean`` below ``--collapse-floor`` stop the run
with exit code 3 (as ``ptycho-fast train``'s guard does), unless ``--allow-degenerate``.

The stitching path is testable without a network: :func:`reconstruct` takes any
``predictor(X, offsets, indices) -> patches`` (or ``(network_patches, stitched_patches)``).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from . import coords, ops as fast_ops
from . import result_files
from .bundle import BundlePredictor, load_bundle
from .coords import CanvasFrame, canvas_frame
from .data import PatternReader, cover_groups, group_positions, load_dataset, load_dataset_reporting
from .files import UserError
from .guard import (DEFAULT_COLLAPSE_FLOOR, EXIT_COLLAPSE, PHASE_STATS_BATCHES, STATS_DDOF, CollapseError,
                    StatsAccumulator, amplitude_flat_note, batch_record, batch_stats, collapse_reason,
                    CountSpread, degenerate_amplitude_reason)
from .infer_output import (DEBUG_PATCHES, PATCH_STATS_JSON, Source, canvas_stats, write_collapse_outputs,
                           write_debug_dump, write_outputs)
from .object_big import make_window
from .progress import Progress
from .result_files import (AMPLITUDE_PNG, OBJECT_FORMAT, OBJECT_H5, OBJECT_NPZ, PHASE_PNG,  # noqa: F401
                           PTYCHODUS_PRODUCT, SUMMARY_JSON)
from .runtime import check_device_name, resolve_device

__all__ = [
    "InferConfig", "InferResult", "Reconstruction", "CollapseError", "CanvasFrame",
    "canvas_frame", "reconstruct", "run_infer", "collapse_reason", "sample_paths",
    "SAMPLE_DIR", "SAMPLE_DATA", "SAMPLE_MODEL", "DEFAULT_OUT", "WINDOWS", "FORMATS", "OPS",
    "COVERAGE_FLOOR", "STATS_DDOF", "DEFAULT_BATCH_SIZE", "DEFAULT_COLLAPSE_FLOOR", "EXIT_COLLAPSE",
]

#: the bundled sample (package data, produced by scripts/make_sample.py)
SAMPLE_DIR = Path(__file__).resolve().parent / "sample"
SAMPLE_DATA = SAMPLE_DIR / "sample.npz"
SAMPLE_MODEL = SAMPLE_DIR / "model"
#: output directory when --out is not given
DEFAULT_OUT = "ptycho_fast_out"
#: stitching windows: |probe|^2, the central N/2 x N/2 mask (object_big's 'central'), ones
WINDOWS = ("probe", "mask", "ones")
_WINDOW_KIND = {"probe": "probe", "mask": "central", "ones": "ones"}
FORMATS, DEFAULT_FORMATS = result_files.FORMATS, result_files.DEFAULT_FORMATS
OPS = fast_ops.BACKENDS
#: groups per network call: 16 measured fastest for the default CNN on 2 CPU cores (network
#: stage 635-690 patterns/s vs 504-535 at 64, docs/benchmarks.md); raise it on a GPU
DEFAULT_BATCH_SIZE = 16
#: a canvas pixel is covered when its accumulated weight exceeds this fraction of the
#: largest accumulated weight; uncovered pixels are 0 in the object (never divided)
COVERAGE_FLOOR = 1e-6
#: warn when this data's intensity scale differs from the model's by more than this factor
SCALE_WARN_FACTOR = 2.0
#: where --refine K writes the refined result, inside DIR
REFINED_DIR = "refined"


def _check_positions_hit(top_left: np.ndarray, shape, N: int, where: str) -> None:
    """Every patch must overlap the canvas (else its prediction would be thrown away)."""
    H, W = shape
    miss = ((top_left[:, 0] > H - 1) | (top_left[:, 0] + N - 1 < 0)
            | (top_left[:, 1] > W - 1) | (top_left[:, 1] + N - 1 < 0))
    if miss.any():
        i = int(np.argmax(miss))
        centre = coords.top_left_to_centres(top_left[i], N)
        raise UserError(f"{where}: {int(miss.sum())} of {len(miss)} scan positions put their patch "
                        f"entirely outside the {H} x {W} object canvas (e.g. position {i}, centre "
                        f"row {centre[0]:.1f}, col {centre[1]:.1f}); positions are probe centres in "
                        "object pixels (xcoords = column, ycoords = row)")


# ----------------------------------------------------------------------------- reconstruction
@dataclass
class Reconstruction:
    """What :func:`reconstruct` produced (or had produced when the guard stopped it)."""
    object: np.ndarray | None             # (H, W) complex64
    coverage: np.ndarray | None           # (H, W) float32 accumulated weight
    covered: np.ndarray | None            # (H, W) bool: coverage > floor
    coverage_floor: float
    frame: CanvasFrame
    positions: np.ndarray                 # (P, 2) probe centres, canvas pixels
    N: int
    gridsize: int
    n_patterns: int
    n_groups: int
    n_patches: int = 0                    # stitched so far
    window: str = "probe"
    ops: str = "ptycho_fast"
    batch_size: int = DEFAULT_BATCH_SIZE
    seed: int = 0
    groups: str = "every"
    timings: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)             # all predicted patches
    first_batch_stats: dict = field(default_factory=dict)
    batch_records: list = field(default_factory=list)     # first K batches
    first_patches: np.ndarray | None = None               # up to 16 network patches
    group_offsets: np.ndarray | None = None               # (G, C, 2) member - centroid
    data_intensity_scale: float | None = None              # from the patterns read
    degenerate: str | None = None                         # guard reason (--allow-degenerate)
    amplitude_flat: str | None = None                     # amplitude_flat_note (a warning)
    counts: dict | None = None                            # CountSpread.summary of the patterns
    canvas_stats: dict = field(default_factory=dict)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _as_pair(out):
    if isinstance(out, tuple):
        raw, patches = out
    else:
        raw = patches = out
    return raw, patches


def reconstruct(dataset, predictor, *, N: int | None = None, gridsize: int = 1,
                batch_size: int = DEFAULT_BATCH_SIZE, window: str = "probe", ops: str = "ptycho_fast",
                n_patterns: int | None = None, seed: int = 0, groups: str = "every", device="cpu",
                progress: bool = False,
                collapse_floor: float = DEFAULT_COLLAPSE_FLOOR, allow_degenerate: bool = False,
                guard: bool = True, stats_limit: int = 0, model_intensity_scale: float | None = None,
                on_warning=None) -> Reconstruction:
    """Predict every group of ``dataset`` in batches and stitch every predicted patch at its
    own scan position into the full-field object (module doc).

    ``predictor(X, offsets, indices)``: X (B, C, N, N) float32 measured amplitudes (counts
    units, on ``device``), offsets (B, C, 2) float32 member - centroid, indices (B, C) int64
    pattern indices; returns complex patches (B, C, N, N), or ``(network_patches,
    stitched_patches)`` (the statistics and the guard read the first). ``batch_size`` is in
    groups. The data are read batch by batch through the data layer
    (:class:`ptycho_fast.data.PatternReader`; a lazy HDF5 file streams).
    Raises :class:`CollapseError` when the guard trips (unless ``allow_degenerate``, which
    records the reason in ``Reconstruction.degenerate`` and goes on). ``model_intensity_scale``
    (the bundle's s) is compared with this data's, estimated from the first batch: a factor
    beyond :data:`SCALE_WARN_FACTOR` is reported to ``on_warning(message)``, and the guard's
    message quotes both.
    """
    t_start = time.perf_counter()
    device = torch.device(device)
    N, P, C = _check_arguments(dataset, N, gridsize, batch_size, window, ops, n_patterns)
    if groups not in GROUPINGS:
        raise UserError(f"--groups: must be one of {', '.join(GROUPINGS)}, got {groups!r}")
    rec, groups, top_left = _layout(dataset, N, P, int(gridsize), window, ops, int(batch_size), seed, groups)
    win = make_window(_WINDOW_KIND[window], N, dataset.probe, dtype=torch.float32, device=device)
    kernels = fast_ops.backend(ops)
    canvas = _Canvas(rec.frame.shape, top_left, win, N, kernels, device)
    monitor = _Monitor(rec, kernels, stats_limit)
    checks = _Guard(collapse_floor, allow_degenerate, guard, model_intensity_scale, on_warning)
    t = {"read": 0.0, "network": 0.0, "stats": 0.0, "stitching": 0.0}
    G, B = groups.n_groups, int(batch_size)
    flat = groups.indices.reshape(-1)
    read = PatternReader(dataset)
    bar = Progress(G * C, "infer", enabled=None if progress else False, unit="pat")
    with bar:
        for k, g0 in enumerate(range(0, G, B)):
            g1 = min(g0 + B, G)
            b = g1 - g0
            t0 = time.perf_counter()
            idx = flat[g0 * C:g1 * C]
            X = torch.as_tensor(np.asarray(read(idx), dtype=np.float32)).reshape(b, C, N, N).to(device)
            offsets = torch.as_tensor(groups.offsets[g0:g1], dtype=torch.float32, device=device)
            monitor.add_patterns(X)
            _sync(device)
            t1 = time.perf_counter()
            raw, patches = _as_pair(predictor(X, offsets, groups.indices[g0:g1]))
            raw = raw.reshape(b * C, N, N)
            raw = raw if raw.is_complex() else torch.complex(raw, torch.zeros_like(raw))
            patches = patches.reshape(b * C, N, N).to(torch.complex64)
            _sync(device)
            t2 = time.perf_counter()
            monitor.add_patches(raw, k)
            _sync(device)
            t3 = time.perf_counter()
            if k == 0:
                checks.first_batch(rec, monitor)
            canvas.add(patches, idx)
            _sync(device)
            t4 = time.perf_counter()
            for stage, seconds in (("read", t1 - t0), ("network", t2 - t1), ("stats", t3 - t2),
                                   ("stitching", t4 - t3)):
                t[stage] += seconds
            rec.n_patches += b * C
            bar.update(b * C)
    t0 = time.perf_counter()
    canvas.finish(rec)
    _sync(device)
    t["stitching"] += time.perf_counter() - t0
    monitor.finish(rec)
    t["reconstruct_total"] = time.perf_counter() - t_start
    rec.timings = t
    checks.end(rec)
    return rec


def _check_arguments(dataset, N, gridsize, batch_size, window, ops, n_patterns) -> tuple[int, int, int]:
    """(N, P, C) of a reconstruction, or the UserError naming the bad option."""
    if ops not in OPS:
        raise UserError(f"--ops: must be one of {', '.join(OPS)}, got {ops!r}")
    N = int(dataset.N if N is None else N)
    if window not in WINDOWS:
        raise UserError(f"--window: must be one of {', '.join(WINDOWS)}, got {window!r}")
    P_all = dataset.n_patterns
    P = P_all if n_patterns is None else int(n_patterns)
    if not 1 <= P <= P_all:
        raise UserError(f"--n-patterns: must be between 1 and the {P_all} patterns of the data, got {P}")
    C = int(gridsize) ** 2
    if P < C:
        raise UserError(f"--n-patterns {P}: a gridsize-{gridsize} model needs groups of {C} patterns")
    if int(batch_size) < 1:
        raise UserError(f"--batch-size: must be >= 1, got {batch_size}")
    return N, P, C


def _layout(dataset, N: int, P: int, gridsize: int, window: str, ops: str, batch_size: int, seed: int,
            grouping: str):
    """The canvas frame, the patches' top-left positions and the groups of the first P
    patterns: (an empty Reconstruction, the groups, top-left (P, 2) canvas pixels)."""
    positions = np.asarray(dataset.positions[:P], dtype=np.float64)
    obj_shape = None if dataset.object is None else dataset.object.shape
    frame = canvas_frame(positions, N, obj_shape)
    centres = positions - frame.origin
    top_left = coords.centres_to_top_left(centres, N)
    _check_positions_hit(top_left, frame.shape, N, str(getattr(dataset, "source", "data")))
    groups = (cover_groups(positions, gridsize) if grouping == "cover"
              else group_positions(positions, gridsize, seed=seed))
    rec = Reconstruction(object=None, coverage=None, covered=None, coverage_floor=COVERAGE_FLOOR,
                         frame=frame, positions=centres, N=N, gridsize=gridsize, n_patterns=P,
                         n_groups=groups.n_groups, window=window, ops=ops, batch_size=batch_size,
                         seed=seed, groups=grouping, group_offsets=groups.offsets)
    return rec, groups, top_left


class _Canvas:
    """The full-field stitch: float64 accumulators of ``sum w*patch`` and ``sum w`` over the
    canvas, each batch stitched into the bounding box of its patches."""

    def __init__(self, shape, top_left: np.ndarray, window: torch.Tensor, N: int, kernels, device):
        self.canvas = torch.zeros(shape, dtype=torch.complex128, device=device)
        self.weight = torch.zeros(shape, dtype=torch.float64, device=device)
        self.top_left = top_left
        self.top_left_t = torch.as_tensor(top_left, dtype=torch.float64, device=device)
        self.window, self.N, self.kernels, self.device = window, N, kernels, device

    def add(self, patches: torch.Tensor, idx: np.ndarray) -> None:
        """Stitch the patches of patterns ``idx`` into the bounding box of their patches (the
        canvas is not touched elsewhere), then add the box into the accumulators. Bilinear
        fractions are unchanged by the integer shift, so this equals stitching into the whole
        canvas. The box comes from the host copy of the positions: no device round trip."""
        top_left = self.top_left_t[torch.as_tensor(idx, device=self.device)]
        host = self.top_left[idx]
        H, W = self.canvas.shape
        lo = np.floor(host.min(axis=0))
        hi = np.floor(host.max(axis=0))
        r0, c0 = max(int(lo[0]), 0), max(int(lo[1]), 0)
        r1, c1 = min(int(hi[0]) + self.N + 1, H), min(int(hi[1]) + self.N + 1, W)
        if r1 <= r0 or c1 <= c0:
            return
        shift = torch.tensor([r0, c0], dtype=top_left.dtype, device=top_left.device)
        part, wpart = self.kernels.stitch_patches(patches, top_left - shift, (r1 - r0, c1 - c0), self.window)
        self.canvas[r0:r1, c0:c1] += part
        self.weight[r0:r1, c0:c1] += wpart

    def finish(self, rec: Reconstruction) -> None:
        """object = sum w*patch / sum w where covered (sum w > COVERAGE_FLOOR * max), else 0."""
        canvas, weight = self.canvas, self.weight
        wmax = float(weight.max()) if weight.numel() else 0.0
        floor = rec.coverage_floor * wmax
        covered = weight > floor if wmax > 0 else torch.zeros_like(weight, dtype=torch.bool)
        obj = torch.where(covered, canvas / torch.where(covered, weight, torch.ones_like(weight)),
                          torch.zeros_like(canvas))
        rec.object = obj.to(torch.complex64).cpu().numpy()
        rec.coverage = weight.to(torch.float32).cpu().numpy()
        rec.covered = covered.cpu().numpy()


class _Monitor:
    """What the loop records about its inputs and the network's patches: the data's
    intensity, the streaming patch statistics (guard and summary), the per-batch log of the
    first ``stats_limit`` batches and the first patches (debug dump)."""

    def __init__(self, rec: Reconstruction, kernels, stats_limit: int):
        self.rec, self.kernels, self.stats_limit = rec, kernels, stats_limit
        self.accumulator = StatsAccumulator()
        self.counts = CountSpread()  # device sums: read on the host after the first batch and at the end

    def add_patterns(self, X: torch.Tensor) -> None:
        self.counts.add(X)

    def intensity_scale(self) -> float:
        """sqrt(mean_p sum X_p^2) / (N/2) of the patterns read so far."""
        return math.sqrt(self.counts.summary()["mean"]) / (self.rec.N / 2)

    def add_patches(self, raw: torch.Tensor, k: int) -> None:
        rec = self.rec
        stats = batch_stats(raw, phase=k < max(PHASE_STATS_BATCHES, self.stats_limit), ops=self.kernels)
        self.accumulator.add(stats)
        if k < self.stats_limit:
            rec.batch_records.append(batch_record(stats, k))
        if rec.first_patches is None or len(rec.first_patches) < DEBUG_PATCHES:
            more = raw[:DEBUG_PATCHES].detach().to(torch.complex64).cpu().numpy()
            rec.first_patches = more if rec.first_patches is None else np.concatenate(
                [rec.first_patches, more])[:DEBUG_PATCHES]

    def finish(self, rec: Reconstruction) -> None:
        rec.data_intensity_scale = self.intensity_scale()
        rec.counts = self.counts.summary()
        rec.stats = self.accumulator.summary()
        rec.canvas_stats = canvas_stats(rec.object, rec.covered)


@dataclass
class _Guard:
    """The checks of a reconstruction: the data's intensity scale against the model's (a
    warning), and the collapse guard after the first batch and at the end (``enabled``)."""
    floor: float
    allow: bool
    enabled: bool
    model_scale: float | None
    on_warning: Callable[[str], None] | None

    def first_batch(self, rec: Reconstruction, monitor: _Monitor) -> None:
        rec.first_batch_stats = monitor.accumulator.summary()
        rec.data_intensity_scale = monitor.intensity_scale()
        if self.model_scale and self.on_warning is not None:
            ratio = rec.data_intensity_scale / self.model_scale
            if not 1 / SCALE_WARN_FACTOR <= ratio <= SCALE_WARN_FACTOR:
                self.on_warning(f"this data's intensity scale ({rec.data_intensity_scale:.4g}, from "
                                f"the first batch) differs from the model's ({self.model_scale:.4g}) "
                                f"by a factor {ratio:.3g}: the dose differs from the training data's")
        if self.enabled:
            self.check(rec, rec.first_batch_stats, "after the first batch")

    def end(self, rec: Reconstruction) -> None:
        if not self.enabled:
            return
        when = f"over all {rec.stats['n_patches']} patches"
        self.check(rec, rec.stats, when)
        self.stop_or_allow(rec, degenerate_amplitude_reason(rec.stats, self.floor, rec.counts), when)
        rec.amplitude_flat = amplitude_flat_note(rec.stats, self.floor)
        if rec.amplitude_flat and self.on_warning is not None and rec.degenerate is None:
            self.on_warning(rec.amplitude_flat)

    def check(self, rec: Reconstruction, summary: dict, when: str) -> None:
        self.stop_or_allow(rec, collapse_reason(summary, self.floor), when)

    def stop_or_allow(self, rec: Reconstruction, reason: str | None, when: str) -> None:
        if reason is None:
            return
        scale = rec.data_intensity_scale
        message = f"the predicted patches are degenerate {when}: {reason}"
        if self.allow:
            rec.degenerate = message
            if self.on_warning is not None:
                self.on_warning(message + " (--allow-degenerate: writing the result anyway)")
            return
        hint = ("Likely causes: the model does not fit this data (trained on another kind of sample, "
                "probe or detector), or a scale mismatch between the data and the model's training data")
        if scale is not None and self.model_scale:
            hint += f" (this data's intensity scale is {scale:.4g}, the model's {self.model_scale:.4g})"
        raise CollapseError(f"{message}. {hint}. Inspect them with --debug-dump DIR2, or pass "
                            "--allow-degenerate to write the result anyway", partial=rec)


# ----------------------------------------------------------------------------- the command
#: how inference groups the patterns (gridsize > 1): --groups
GROUPINGS = ("cover", "every")


@dataclass
class InferConfig:
    """Every option of ``ptycho-fast infer`` (see ``--help`` and docs/inference.md)."""
    model: str | None = None
    data: str | None = None
    out: str = DEFAULT_OUT
    device: str = "auto"
    batch_size: int = DEFAULT_BATCH_SIZE
    n_patterns: int | None = None
    window: str = "probe"
    formats: tuple = DEFAULT_FORMATS
    ops: str = "ptycho_fast"
    seed: int = 0
    groups: str = "every"
    debug_dump: str | None = None
    log_patch_stats: bool = False
    patch_stats_limit: int = 4
    collapse_floor: float = DEFAULT_COLLAPSE_FLOOR
    allow_degenerate: bool = False
    quiet: bool = False
    refine: int = 0          # refinement epochs on the network's image (0: none)


@dataclass
class InferResult:
    reconstruction: Reconstruction
    out: Path
    files: list[str]
    summary: dict
    line: str
    refined: Any = None      # the refine engine after --refine K (its outputs in out/refined)


def sample_paths() -> tuple[Path, Path]:
    """(model bundle, data file) of the bundled sample; UserError if it is not installed."""
    missing = [p for p in (SAMPLE_MODEL / "bundle.json", SAMPLE_DATA) if not p.is_file()]
    if missing:
        raise UserError(f"the bundled sample is missing from this installation ({missing[0]}); "
                        "regenerate it with 'python scripts/make_sample.py', or pass --model RUN "
                        "and --data FILE")
    return SAMPLE_MODEL, SAMPLE_DATA


def _validate(config: InferConfig) -> None:
    def bad(option, message):
        raise UserError(f"--{option.replace('_', '-')}: {message}")
    if (config.model is None) != (config.data is None):
        given, other = ("model", "data") if config.data is None else ("data", "model")
        bad(other, f"required with --{given} (give both, or neither to reconstruct the bundled sample)")
    if int(config.batch_size) < 1:
        bad("batch_size", f"must be >= 1 (groups per network call), got {config.batch_size}")
    if config.n_patterns is not None and int(config.n_patterns) < 1:
        bad("n_patterns", f"must be >= 1, got {config.n_patterns}")
    if config.window not in WINDOWS:
        bad("window", f"must be one of {', '.join(WINDOWS)}, got {config.window!r}")
    if config.ops not in OPS:
        bad("ops", f"must be one of {', '.join(OPS)}, got {config.ops!r}")
    check_device_name(config.device)
    if int(config.refine) < 0:
        bad("refine", f"must be a number of epochs >= 0, got {config.refine}")
    if int(config.patch_stats_limit) < 1:
        bad("patch_stats_limit", f"must be >= 1, got {config.patch_stats_limit}")
    if not (math.isfinite(config.collapse_floor) and config.collapse_floor >= 0):
        bad("collapse_floor", f"must be a number >= 0, got {config.collapse_floor}")
    for option in ("out", "debug_dump"):
        value = getattr(config, option)
        if value is None:
            continue
        path = Path(value)
        if path.exists() and not path.is_dir():
            bad(option, f"{path} exists and is not a directory")
        parent = path.parent if str(path.parent) else Path(".")
        if not path.exists() and not parent.is_dir():
            bad(option, f"cannot create {path}: directory {parent} does not exist")


def run_infer(config: InferConfig, predictor=None) -> InferResult:
    """The ``infer`` command: load, reconstruct, write (module doc). Raises UserError for bad
    input, CollapseError when the guard trips. ``predictor`` replaces the bundle's network
    (tests)."""
    t_start = time.perf_counter()
    config = dataclasses.replace(config, formats=result_files.parse_formats(config.formats))
    _validate(config)
    say = (lambda *a: None) if config.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))

    def warn(message):
        say(f"ptycho-fast infer: warning: {message}")

    is_sample = config.model is None
    model_path, data_path = sample_paths() if is_sample else (Path(config.model), Path(config.data))
    device = resolve_device(config.device)
    t0 = time.perf_counter()
    bundle = load_bundle(model_path, device=device)
    bundle.model.use_channels_last()   # the CNN 2-3x faster on CPU (model.use_channels_last)
    dataset = load_dataset_reporting(data_path, warn, lazy=True)
    load_time = time.perf_counter() - t0
    with dataset:
        _check_data(config, dataset, bundle, data_path)
        source = Source(bundle, data_path, is_sample, np.asarray(dataset.probe), dataset.metadata, load_time)
        if predictor is None:
            predictor = BundlePredictor(bundle, config.ops)
        try:
            rec = _reconstruct_guarded(dataset, predictor, bundle, config, device, warn)
        except CollapseError as exc:
            if exc.partial is not None:
                write_collapse_outputs(config, exc.partial)
            raise
    out = Path(config.out)
    files, summary = write_outputs(out, config, rec, source, t_start)
    if config.debug_dump is not None:
        write_debug_dump(config.debug_dump, rec)
    total = time.perf_counter() - t_start
    line = (f"reconstructed {rec.n_patterns} patterns ({rec.n_patches} patches, gridsize {rec.gridsize}) "
            f"into a {rec.frame.shape[0]} x {rec.frame.shape[1]} object in {total:.1f} s "
            f"({rec.n_patterns / total:.0f} patterns/s); images: {out / AMPLITUDE_PNG}, "
            f"{out / PHASE_PNG}")
    refined = None
    if config.refine:
        refined = _refine_network_image(config, rec, data_path, device, source.dataset_name)
        s = refined.state
        line += (f"\nrefined it for {s.epoch} epochs ({s.elapsed:.1f} s, final loss {s.history[-1]['loss']:.4g} "
                 f"per pixel): {out / REFINED_DIR / AMPLITUDE_PNG}, {out / REFINED_DIR / PHASE_PNG}")
    return InferResult(reconstruction=rec, out=out, files=files, summary=summary, line=line, refined=refined)


def _check_data(config: InferConfig, dataset, bundle, data_path: Path) -> None:
    """The data must fit the model (N) and the formats asked for (a pixel size for ptychodus)."""
    if dataset.N != bundle.N:
        raise UserError(f"--data {data_path}: patterns are {dataset.N} x {dataset.N} but the model "
                        f"(--model {bundle.path}) was trained on N = {bundle.N}; use a model "
                        "trained on data of this size")
    if "ptychodus" in config.formats and not dataset.metadata.pixel_size_m:
        raise UserError(f"--format ptychodus: {data_path} does not record the object pixel size "
                        "(metadata 'pixel_size_m'), which a ptychodus product needs to express "
                        "positions in metres")


def _refine_network_image(config: InferConfig, rec: Reconstruction, data_path, device, dataset_name: str):
    """``--refine K``: K epochs of the refine engine (its default recipe) from the network's
    image, in the same canvas; written to DIR/refined/ (the same files as ``refine``)."""
    from .refine import Refiner, RefineOptions
    from .refine_output import write_refinement
    with load_dataset(data_path, lazy=True) as dataset:
        data = dataset if rec.n_patterns == dataset.n_patterns else dataset.subset(np.arange(rec.n_patterns))
        start = np.where(rec.covered, rec.object, np.complex64(1.0))   # uncovered pixels start flat
        refiner = Refiner(data, RefineOptions(epochs=int(config.refine), seed=config.seed), init_object=start,
                          frame=rec.frame, device=device, ops=config.ops)
        bar = Progress(int(config.refine), "refine", enabled=False if config.quiet else None, unit="epoch")
        with bar:
            refiner.run(lambda record: bar.update(1))
        reason = refiner.health(config.collapse_floor)
        if reason is not None and not config.allow_degenerate:
            raise CollapseError(f"the refined object is degenerate: {reason}; pass --allow-degenerate to "
                                "write it anyway")
        write_refinement(Path(config.out) / REFINED_DIR, refiner, data, data_path=data_path,
                         init=f"the network's image ({Path(config.out) / OBJECT_NPZ})", formats=config.formats,
                         title=f"{dataset_name} — network + refine")
    return refiner


def _reconstruct_guarded(dataset, predictor, bundle, config: InferConfig, device, warn) -> Reconstruction:
    return reconstruct(dataset, predictor, N=bundle.N, gridsize=bundle.gridsize,
                       batch_size=config.batch_size, window=config.window, ops=config.ops,
                       n_patterns=config.n_patterns, seed=config.seed, groups=config.groups, device=device,
                       progress=not config.quiet, collapse_floor=config.collapse_floor,
                       allow_degenerate=config.allow_degenerate,
                       stats_limit=config.patch_stats_limit if config.log_patch_stats else 0,
                       model_intensity_scale=bundle.intensity_scale, on_warning=warn)


# ----------------------------------------------------------------------------- CLI
CLI_HELP = "reconstruct the full-field object from a dataset with a trained model"
CLI_DESCRIPTION = f"""\
Reconstruct the object from DATA with the model bundle RUN (a training run directory or
its model/ bundle): every pattern's predicted patch is stitched at its own scan position
into the object frame of the data (objectGuess's when the file has one), weighted by the
window and normalised by the accumulated weight. HDF5 data is streamed in batches.

Without --model and --data it reconstructs the bundled sample into ./{DEFAULT_OUT}/.

Writes into DIR: {OBJECT_NPZ} (object, coverage, covered, positions, origin), {OBJECT_H5},
{PTYCHODUS_PRODUCT} (--format ptychodus), {AMPLITUDE_PNG}, {PHASE_PNG}, {SUMMARY_JSON}.
Exit codes: 0 done, 2 bad input, 3 degenerate predictions (the collapse guard).
See docs/inference.md."""


def add_cli_arguments(p: argparse.ArgumentParser) -> None:
    d = InferConfig()
    io_ = p.add_argument_group("input and output")
    io_.add_argument("--model", "-m", metavar="RUN", default=None,
                     help="model bundle, or a training run directory holding one in model/ "
                          "(default: the bundled sample's)")
    io_.add_argument("--data", "-d", metavar="FILE", default=None,
                     help="data file: PtychoPINN NPZ, our HDF5 (streamed) or a ptychodus product "
                          "(default: the bundled sample)")
    io_.add_argument("--out", "-o", metavar="DIR", default=DEFAULT_OUT,
                     help="output directory, created if missing (default: %(default)s)")
    io_.add_argument("--format", action="append", metavar="FMT[,FMT]", default=None,
                     help=f"object files to write besides the defaults ({','.join(DEFAULT_FORMATS)}), from "
                          f"{', '.join(FORMATS)} (repeat or comma-separate; ptychodus adds {PTYCHODUS_PRODUCT})")
    r = p.add_argument_group("reconstruction")
    r.add_argument("--device", default=d.device, metavar="DEV",
                   help="auto (cuda when available), cpu, cuda or cuda:K (default: %(default)s)")
    r.add_argument("--batch-size", "-b", type=int, default=d.batch_size, metavar="B",
                   help="groups per network call (B x gridsize^2 patterns) (default: %(default)s)")
    r.add_argument("--n-patterns", "-n", type=int, default=None, metavar="K",
                   help="use only the first K patterns of the file (default: all)")
    r.add_argument("--window", choices=WINDOWS, default=d.window,
                   help="stitching weights: probe (|probe|^2 of the data's probe), mask (the central "
                        "N/2 x N/2 block), ones (default: %(default)s)")
    r.add_argument("--ops", choices=OPS, default=d.ops,
                   help="ptycho_fast: the compiled kernels; reference: the same computation with the "
                        "plain-PyTorch ops of ptycho_fast.reference (parity checks) (default: %(default)s)")
    r.add_argument("--groups", choices=GROUPINGS, default=d.groups,
                   help="gridsize > 1: every (one group per pattern, as in training: each pattern "
                        "predicted ~gridsize^2 times and averaged) or cover (groups that cover the "
                        "scan, each pattern in one: ~1/gridsize^2 of the network work, slightly worse "
                        "images) (default: %(default)s)")
    r.add_argument("--seed", type=int, default=d.seed,
                   help="seed of the neighbour grouping for --groups every (default: %(default)s)")
    r.add_argument("--refine", type=int, default=d.refine, metavar="K",
                   help="then refine the network's image for K epochs with the physics engine (ptycho-fast "
                        f"refine's recipe) and write that result into DIR/{REFINED_DIR}/ too (default: 0, none)")
    m = p.add_argument_group("monitoring")
    m.add_argument("--debug-dump", metavar="DIR2", default=None,
                   help="also write stats.json, offsets.json, canvas.json and PNG grids of the first "
                        f"{DEBUG_PATCHES} predicted patches into DIR2")
    m.add_argument("--log-patch-stats", action="store_true",
                   help=f"log the statistics of the first K batches to DIR/{PATCH_STATS_JSON}")
    m.add_argument("--patch-stats-limit", type=int, default=d.patch_stats_limit, metavar="K",
                   help="batches to log with --log-patch-stats (default: %(default)s)")
    m.add_argument("--collapse-floor", type=float, default=d.collapse_floor, metavar="F",
                   help="the guard trips when var_zero_mean of the predicted complex patches is below "
                        "this (default: %(default)g)")
    m.add_argument("--allow-degenerate", action="store_true",
                   help="warn instead of stopping when the predicted patches are degenerate")
    m.add_argument("--quiet", "-q", action="store_true", help="no progress bar, warnings or summary line")


def config_from_args(args: argparse.Namespace) -> InferConfig:
    return InferConfig(model=args.model, data=args.data, out=args.out, device=args.device,
                       batch_size=args.batch_size, n_patterns=args.n_patterns, window=args.window,
                       formats=tuple(args.format or ()), ops=args.ops, seed=args.seed, groups=args.groups,
                       debug_dump=args.debug_dump, log_patch_stats=args.log_patch_stats,
                       patch_stats_limit=args.patch_stats_limit, collapse_floor=args.collapse_floor,
                       allow_degenerate=args.allow_degenerate, quiet=args.quiet, refine=args.refine)


def cli_main(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    try:
        result = run_infer(config)
    except CollapseError as exc:
        print(f"ptycho-fast: error: {exc}", file=sys.stderr)
        return EXIT_COLLAPSE
    if not config.quiet:
        print(result.line)
    return 0
