"""Physics refinement engine: iterative reconstruction of the object, the probe and the scan
positions by preconditioned gradient descent through our ops (docs/refine.md).

The unknown is the full object canvas (complex, in the data's object pixel frame: the frame
``infer`` writes, :func:`ptycho_fast.coords.canvas_frame`). The forward model is the one
the simulator and training use (``physics.diffraction_amplitude``: incoherent probe modes,
``|fftshift(fft2(probe * patch, ortho))|``), patches cut by ``ops.extract_patches``; the
gradients come from autograd through our ops (the object's through ``stitch_patches``, the
positions' through the analytic bilinear position gradients).

One epoch visits every pattern once, in minibatches of a seeded random order. Each
minibatch takes the step (per pixel)::

    object -= s(t) * c * grad_object / (D + reg * max D)       D = sum_batch |probe|^2 at the patches

the regularised ptychographic preconditioner of rPIE/LSQML (``reg = --illumination-reg``):
with ``s = 1`` and ``reg = 0`` a minibatch of non-overlapping patterns is moved exactly to
the projection onto its measured moduli (ePIE's full step); ``c`` (1/2 for the amplitude
loss, 1/4 for Poisson: the inverse curvature of the loss in the modulus) makes ``s`` the
same fraction of that step for either loss. After each epoch a momentum step
(mPIE-style: ``v = m v + (O - O_prev); O += m v``) carries the slow, low spatial
frequencies (the last to converge, mostly in the phase); the step ``s(t)`` follows a cosine
from ``--step`` down to ``--step * --final-step`` over the run (epochs or the time budget),
which averages out the photon noise a constant step keeps re-fitting.

Probe (``--refine-probe``, from epoch ``--probe-start``): the same rule with the object's
intensity as preconditioner; the probe's total power is held at its start value (the
object/probe scale ambiguity goes to the object, whose transmission the calibrated probe
fixes); several modes (``--probe-modes M``) are kept orthogonal (eigen-decomposition after
each epoch). Positions (``--refine-positions``, from ``--positions-start``): a per-pattern
Gauss-Newton step ``dr = -g / H`` from the analytic position gradient ``g`` and the
curvature bound ``H = (1/c) sum |probe|^2 |d patch / dr|^2``, clipped to
``--max-position-step`` per update and ``--max-position-correction`` in all; the mean
correction (a global translation, indistinguishable from shifting the object) is removed
after each epoch.

Several processes (``torchrun``): each takes a slice of every minibatch; the object, probe
and preconditioner sums are all-reduced before the (identical) update, so the result equals
one process's to float round-off.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from . import coords, guard, physics
from .files import UserError
from .ops import backend as ops_backend
from .runtime import Dist

__all__ = [
    "RefineOptions", "Refiner", "LOSSES", "SUBPIXEL_MODELS", "COVERAGE_FLOOR", "DivergedError",
    "load_init_object",
]

LOSSES = ("amplitude", "poisson")
#: how a patch at a fractional position is modelled: 'bilinear' interpolates the object
#: (our extract kernel at the position); 'fourier' cuts the object at the nearest integer
#: position (the same kernel, exact) and moves the probe by the fraction with a Fourier
#: phase ramp (band-limited, exact for a band-limited probe: pty-chi's model)
SUBPIXEL_MODELS = ("bilinear", "fourier")
#: a canvas pixel is refined ("covered") when the probe dose there is above this fraction
#: of the largest dose; elsewhere the object keeps its starting value
COVERAGE_FLOOR = 1e-3
#: an epoch whose loss exceeds the previous epoch's by this factor is a divergence
DIVERGENCE_FACTOR = 10.0
#: halvings of the step tried after a divergence before giving up
MAX_STEP_HALVINGS = 4
#: patterns whose patches the final health check reads
GUARD_PATCHES = 512
#: patterns loaded whole when they take at most this many bytes; above, each minibatch is
#: read from the (lazy) file
IN_MEMORY_BYTES = 2 << 30


class DivergedError(guard.CollapseError):
    """The loss or the refined values became non-finite, or the loss grew without bound,
    even after the step was reduced."""


@dataclass
class RefineOptions:
    """Every setting of the engine (``ptycho-fast refine --help``, docs/refine.md)."""
    epochs: int = 60
    max_time: float | None = None        # minutes; stop after the epoch that crosses it
    batch_size: int = 64
    loss: str = "amplitude"
    subpixel: str = "bilinear"
    step: float = 1.0                    # object step: fraction of the full projection step
    final_step: float = 0.04             # the cosine schedule ends at step * final_step
    momentum: float = 0.7
    coarse_phase_every: int = 10         # epochs between coarse phase fits (0: never)
    coarse_phase_grid: int = 16          # the smooth phase's control points per axis
    coarse_phase_iters: int = 15         # L-BFGS iterations per fit
    coarse_phase_patterns: int = 400     # patterns (evenly spread) the fit reads
    illumination_reg: float = 0.1
    refine_probe: bool = False
    probe_start: int = 5                 # first epoch (1-based) that updates the probe
    probe_modes: int | None = None       # None: as many as the data's probe has
    probe_step: float = 1.0
    refine_positions: bool = False
    positions_start: int = 3
    position_step: float = 2.0
    max_position_step: float = 0.5       # pixels per update and axis
    max_position_correction: float = 5.0  # pixels from the start position (radius)
    rate_floor: float = physics.DEFAULT_RATE_FLOOR
    seed: int = 0

    def validate(self) -> "RefineOptions":
        def bad(option, message):
            raise UserError(f"--{option.replace('_', '-')}: {message}")
        if int(self.epochs) < 1:
            bad("epochs", f"must be >= 1, got {self.epochs}")
        if self.max_time is not None and not (math.isfinite(self.max_time) and self.max_time > 0):
            bad("max_time", f"must be a number of minutes > 0, got {self.max_time}")
        if int(self.batch_size) < 1:
            bad("batch_size", f"must be >= 1, got {self.batch_size}")
        if self.loss not in LOSSES:
            bad("loss", f"must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.subpixel not in SUBPIXEL_MODELS:
            bad("subpixel", f"must be one of {', '.join(SUBPIXEL_MODELS)}, got {self.subpixel!r}")
        for name, top in (("step", 2), ("probe_step", 2), ("position_step", 4)):
            v = getattr(self, name)
            if not (math.isfinite(v) and 0 < v <= top):
                bad(name, f"must be in (0, {top}], got {v}")
        if not 0 < self.final_step <= 1:
            bad("final_step", f"must be in (0, 1], got {self.final_step}")
        if not 0 <= self.momentum < 1:
            bad("momentum", f"must be in [0, 1), got {self.momentum}")
        if not (math.isfinite(self.illumination_reg) and self.illumination_reg > 0):
            bad("illumination_reg", f"must be a number > 0, got {self.illumination_reg}")
        for name in ("coarse_phase_every", "coarse_phase_iters"):
            if int(getattr(self, name)) < 0:
                bad(name, f"must be >= 0, got {getattr(self, name)}")
        if not 2 <= int(self.coarse_phase_grid) <= 256:
            bad("coarse_phase_grid", f"must be between 2 and 256, got {self.coarse_phase_grid}")
        if int(self.coarse_phase_patterns) < 1:
            bad("coarse_phase_patterns", f"must be >= 1, got {self.coarse_phase_patterns}")
        if self.probe_modes is not None and not 1 <= int(self.probe_modes) <= 16:
            bad("probe_modes", f"must be between 1 and 16, got {self.probe_modes}")
        for name in ("probe_start", "positions_start"):
            if int(getattr(self, name)) < 1:
                bad(name, f"must be an epoch >= 1, got {getattr(self, name)}")
        for name in ("max_position_step", "max_position_correction"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                bad(name, f"must be a number of pixels > 0, got {v}")
        if not (math.isfinite(self.rate_floor) and self.rate_floor > 0):
            bad("rate_floor", f"must be a number > 0, got {self.rate_floor}")
        return self


# ----------------------------------------------------------------------------- starting points
def load_init_object(path, shape: tuple[int, int]) -> np.ndarray:
    """The starting object from ``--init``: an ``infer``/``refine`` output directory
    (its object.npz) or an NPZ with key ``object``; it must have the canvas ``shape``."""
    from .result_files import read_reconstruction
    rec = read_reconstruction(path, what="--init")
    obj = np.asarray(rec.object)
    if obj.shape != tuple(shape):
        raise UserError(f"--init {path}: the object is {obj.shape[0]} x {obj.shape[1]} but this data's "
                        f"object frame is {shape[0]} x {shape[1]} (start from a reconstruction of the "
                        "same data)")
    if not np.isfinite(obj).all():
        raise UserError(f"--init {path}: the object contains NaN or Inf")
    return obj.astype(np.complex64)


def _initial_modes(probe: np.ndarray, modes: int | None, generator: torch.Generator) -> torch.Tensor:
    """(M, N, N) starting probe modes: the data's modes, then (if more are asked for) extra
    modes of ~5 % of the power each, shaped as the main mode times a random smooth
    phase-and-amplitude perturbation; the total power is the data probe's."""
    p = torch.as_tensor(np.asarray(probe)).to(torch.complex64)
    p = p if p.dim() == 3 else p[None]
    M = p.shape[0] if modes is None else int(modes)
    if M <= p.shape[0]:
        return p[:M].clone()
    N = p.shape[-1]
    power = float((p.abs() ** 2).sum())
    extra = []
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, N), torch.linspace(-1, 1, N), indexing="ij")
    for k in range(M - p.shape[0]):
        a, b = torch.rand(2, generator=generator) * 2 - 1
        mode = p[0] * torch.exp(1j * math.pi * (a * yy + b * xx)).to(torch.complex64) * (yy * a + xx * b)
        mode = mode * math.sqrt(0.05 * power / max(float((mode.abs() ** 2).sum()), 1e-30))
        extra.append(mode)
    modes = _orthogonal_modes(torch.cat([p, torch.stack(extra)]))
    return modes * math.sqrt(power / float((modes.abs() ** 2).sum()))   # the data's total power


def _orthogonal_modes(modes: torch.Tensor) -> torch.Tensor:
    """Incoherent modes with the same summed intensity, made orthogonal and sorted by power
    (eigenvectors of their density matrix)."""
    if modes.shape[0] == 1:
        return modes
    M, N, _ = modes.shape
    flat = modes.reshape(M, -1).to(torch.complex128)
    u, s, vh = torch.linalg.svd(flat, full_matrices=False)
    return (s[:, None] * vh).reshape(M, N, N).to(modes.dtype)


# ----------------------------------------------------------------------------- the engine
@dataclass
class EpochRecord:
    epoch: int
    loss: float               # mean per pixel over the epoch's minibatches (before each update)
    step: float
    seconds: float
    elapsed: float
    position_rms_px: float | None = None
    probe_updated: bool = False
    step_halvings: int = 0


@dataclass
class _State:
    """Everything an epoch changes (saved in the checkpoint)."""
    object: torch.Tensor         # (H, W) complex64
    probe: torch.Tensor          # (M, N, N) complex64
    top_left: torch.Tensor       # (P, 2) float64, canvas pixels
    velocity: torch.Tensor       # (H, W) complex64 momentum
    anchor: torch.Tensor         # (H, W) complex64 object after the last momentum step
    generator: torch.Tensor      # uint8 RNG state of the minibatch order
    epoch: int = 0
    elapsed: float = 0.0         # seconds of refinement so far (over resumes)
    step_scale: float = 1.0      # halved after each divergence
    history: list = field(default_factory=list)

    TENSORS = ("object", "probe", "top_left", "velocity", "anchor", "generator")

    def clone(self) -> "_State":
        return dataclasses.replace(self, **{k: getattr(self, k).clone() for k in self.TENSORS},
                                   history=list(self.history))


class Refiner:
    """The engine over one dataset (see the module doc). ``frame``: the canvas (default the
    data's object frame); ``init_object``: the starting object in that frame (default flat
    ``1 + 0j``); ``ops``: 'ptycho_fast' (our kernels) or 'reference' (plain PyTorch)."""

    def __init__(self, dataset, options: RefineOptions | None = None, *, init_object=None,
                 frame: coords.CanvasFrame | None = None, device="cpu", ops: str = "ptycho_fast",
                 dist: Dist | None = None):
        self.options = (options or RefineOptions()).validate()
        self.dataset = dataset
        self.device = torch.device(device)
        self.dist = dist or Dist()
        self.kernels = ops_backend(ops)      # the ops module: ptycho_fast.ops or ptycho_fast.reference
        self.ops_name = ops or "ptycho_fast"
        self.extract = self.kernels.extract_patches
        self.N = N = int(dataset.N)
        self.P = int(dataset.n_patterns)
        positions = np.asarray(dataset.positions, dtype=np.float64)
        obj_shape = None if dataset.object is None else dataset.object.shape
        self.frame = frame or coords.canvas_frame(positions, N, obj_shape)
        self.centres_start = positions - self.frame.origin
        top_left = torch.as_tensor(coords.centres_to_top_left(self.centres_start, N), dtype=torch.float64)
        H, W = self.frame.shape
        self._check_positions(top_left.numpy(), H, W)
        self.top_left_start = top_left.to(self.device)
        if init_object is None:
            obj = torch.ones((H, W), dtype=torch.complex64)
        else:
            obj = torch.as_tensor(np.asarray(init_object)).to(torch.complex64)
            if tuple(obj.shape) != (H, W):
                raise UserError(f"--init: the object is {tuple(obj.shape)} but the canvas is {(H, W)}")
        gen = torch.Generator().manual_seed(int(self.options.seed))
        probe = _initial_modes(dataset.probe, self.options.probe_modes, gen).to(self.device)
        self.probe_power = float((probe.abs() ** 2).sum())
        obj = obj.to(self.device)
        self.state = _State(object=obj, probe=probe, top_left=top_left.to(self.device),
                            velocity=torch.zeros_like(obj), anchor=obj.clone(), generator=gen.get_state())
        self._X = self._patterns_in_memory()
        self.curvature = 0.5 if self.options.loss == "amplitude" else 0.25

    # ------------------------------------------------------------------ data
    def _check_positions(self, top_left: np.ndarray, H: int, W: int) -> None:
        N = self.N
        miss = ((top_left[:, 0] > H - 1) | (top_left[:, 0] + N - 1 < 0)
                | (top_left[:, 1] > W - 1) | (top_left[:, 1] + N - 1 < 0))
        if miss.any():
            i = int(np.argmax(miss))
            raise UserError(f"{getattr(self.dataset, 'source', 'data')}: {int(miss.sum())} of {len(miss)} scan "
                            f"positions put their patch entirely outside the {H} x {W} object canvas (e.g. "
                            f"position {i}); positions are probe centres in object pixels")

    def _patterns_in_memory(self):
        d = self.dataset.diffraction
        if isinstance(d, np.ndarray) or self.P * self.N * self.N * 4 <= IN_MEMORY_BYTES:
            # (a copy: a memory-mapped file is read-only)
            return torch.as_tensor(np.asarray(d, dtype=np.float32) if isinstance(d, np.ndarray)
                                   else np.array(d[:], dtype=np.float32))
        return None   # streamed: each minibatch reads its patterns from the file

    def _patterns(self, idx: torch.Tensor) -> torch.Tensor:
        if self._X is not None:
            return self._X[idx].to(self.device)
        order = np.argsort(idx.numpy())
        rows = np.asarray(self.dataset.diffraction[idx.numpy()[order]], dtype=np.float32)
        out = np.empty_like(rows)
        out[order] = rows
        return torch.as_tensor(out).to(self.device)

    def _stitch_real(self, values: torch.Tensor, top_left: torch.Tensor, shape) -> torch.Tensor:
        """Real patches added into a zero canvas (the adjoint of extraction), with the
        chosen ops."""
        return self.kernels.stitch_patches(values, top_left, shape)

    # ------------------------------------------------------------------ losses
    def _loss(self, amp: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        if self.options.loss == "amplitude":
            return (amp - X).square().sum()
        return physics.poisson_nll(amp, X, self.options.rate_floor, reduction="sum")

    def forward(self, obj, probe, top_left):
        """(predicted amplitudes (B, N, N), object patches (B, N, N), the probe intensity
        each pattern sees (B, N, N)) of the patterns at ``top_left`` (B, 2), under the
        sub-pixel model (SUBPIXEL_MODELS); differentiable in all three unknowns."""
        if self.options.subpixel == "bilinear":
            patches = self.extract(obj, top_left.to(torch.float64), self.N)
            probes = probe
            intensity = (probe.detach().abs() ** 2).sum(0).expand(len(top_left), self.N, self.N)
        else:
            whole = torch.round(top_left.detach())
            patches = self.extract(obj, whole, self.N)          # integer positions: exact slices
            probes = self._shifted_probes(probe, top_left - whole)
            intensity = (probes.detach().abs() ** 2).sum(1)
        return physics.diffraction_amplitude(patches, probes), patches, intensity

    def _shifted_probes(self, probe: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """(B, M, N, N): ``probe(r - shift_b)`` for each pattern (a Fourier phase ramp; the
        exit wave ``O(p + r) P(r)`` at a fractional ``p`` has the far-field intensity of
        ``O(round(p) + r) P(r - frac)``, its translate)."""
        N = self.N
        k = torch.fft.fftfreq(N, device=probe.device, dtype=torch.float64)
        shift = shift.to(torch.float64)
        phase = -2 * math.pi * (shift[:, 0, None, None] * k[None, :, None] + shift[:, 1, None, None] * k[None, None, :])
        ramp = torch.polar(torch.ones_like(phase), phase).to(probe.dtype)          # (B, N, N)
        return torch.fft.ifft2(torch.fft.fft2(probe)[None] * ramp[:, None])

    def batch_loss(self, obj, probe, top_left, X) -> torch.Tensor:
        """The summed loss of the patterns ``X`` at ``top_left`` (differentiable in all
        three unknowns): the engine's objective."""
        return self._loss(self.forward(obj, probe, top_left)[0], X)

    # ------------------------------------------------------------------ schedule
    def step_at(self, progress: float) -> float:
        """The object step at ``progress`` in [0, 1] of the run (cosine schedule)."""
        o = self.options
        f = o.final_step + (1 - o.final_step) * 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
        return o.step * f

    def _progress(self, epoch_fraction: float, elapsed: float) -> float:
        o = self.options
        p = epoch_fraction / o.epochs
        if o.max_time is not None:
            p = max(p, elapsed / (60.0 * o.max_time))
        return p

    # ------------------------------------------------------------------ one minibatch
    def _batch_update(self, idx: torch.Tensor, step: float, probe_on: bool, positions_on: bool) -> float:
        s, o, N = self.state, self.options, self.N
        mine = idx[self.dist.rank::self.dist.world]
        H, W = self.frame.shape
        obj = s.object.detach().requires_grad_(True)
        probe = s.probe.detach().requires_grad_(probe_on)
        tl = s.top_left[mine.to(self.device)].detach().requires_grad_(positions_on)
        X = self._patterns(mine)
        wrt = [obj] + ([probe] if probe_on else []) + ([tl] if positions_on else [])
        if len(mine):
            amp, patches, intensity = self.forward(obj, probe, tl)
            loss = self._loss(amp, X)
            grads = list(torch.autograd.grad(loss, wrt))
            loss_value = loss.detach().double()
        else:  # more processes than patterns in this minibatch
            patches = torch.zeros((0, N, N), dtype=obj.dtype, device=self.device)
            intensity = torch.zeros((0, N, N), dtype=obj.real.dtype, device=self.device)
            grads = [torch.zeros_like(t) for t in wrt]
            loss_value = torch.zeros((), dtype=torch.float64, device=self.device)
        g_obj = grads.pop(0)
        with torch.no_grad():
            where = tl.detach() if o.subpixel == "bilinear" else torch.round(tl.detach())
            D = self._stitch_real(intensity.contiguous(), where, (H, W))
            sums = [loss_value.reshape(1), g_obj, D]
            if probe_on:
                g_probe = grads.pop(0)
                Dp = (patches.detach().abs() ** 2).sum(0)
                sums += [g_probe, Dp]
            self.dist.all_reduce_(*sums)
            loss_total = float(sums[0])
            if not math.isfinite(loss_total):
                raise _Diverge(f"the loss became {loss_total}")
            s.object -= (step * self.curvature) * g_obj / (D + o.illumination_reg * D.max().clamp_min(1e-30))
            if probe_on:
                scale = Dp + o.illumination_reg * Dp.max().clamp_min(1e-30)
                s.probe -= (o.probe_step * step / o.step * self.curvature) * g_probe / scale
                s.probe *= math.sqrt(self.probe_power / max(float((s.probe.abs() ** 2).sum()), 1e-30))
            if positions_on:
                self._position_update(mine, tl.detach(), grads.pop(0))
        return loss_total

    def _position_update(self, mine, tl, g) -> None:
        """Gauss-Newton step per pattern (module doc); every process holds every position,
        so the (P, 2) change is all-reduced."""
        s, o, N = self.state, self.options, self.N
        intensity = (s.probe.abs() ** 2).sum(0)
        curv = []
        for axis in (0, 1):
            d = torch.zeros_like(tl)
            d[:, axis] = 0.5
            deriv = self.extract(s.object, tl + d, N) - self.extract(s.object, tl - d, N)
            curv.append(((deriv.abs() ** 2) * intensity).sum(dim=(-2, -1)).double())
        H = torch.stack(curv, dim=-1) / self.curvature
        dr = -o.position_step * g.double() / (H + 1e-12 * H.max().clamp_min(1e-30))
        dr = dr.clamp(-o.max_position_step, o.max_position_step)
        change = torch.zeros_like(s.top_left)
        change[mine.to(self.device)] = dr.to(change.dtype)
        self.dist.all_reduce_(change)
        moved = s.top_left + change
        total = moved - self.top_left_start
        r = torch.linalg.vector_norm(total, dim=-1, keepdim=True)
        limit = o.max_position_correction
        s.top_left = self.top_left_start + total * torch.clamp(limit / r.clamp_min(1e-12), max=1.0)

    # ------------------------------------------------------------------ epochs
    def run_epoch(self, elapsed_before: float | None = None) -> EpochRecord:
        """One epoch (module doc), with divergence handling: a non-finite loss or a loss
        growing by more than DIVERGENCE_FACTOR restores the epoch's start, halves the step
        and tries again (at most MAX_STEP_HALVINGS times, then :class:`DivergedError`)."""
        start = self.state.clone()
        halvings = 0
        while True:
            try:
                return self._epoch(halvings)
            except _Diverge as exc:
                halvings += 1
                if halvings > MAX_STEP_HALVINGS:
                    raise DivergedError(f"refinement diverged at epoch {start.epoch + 1}: {exc}, even with the "
                                        f"step reduced {2 ** MAX_STEP_HALVINGS}x; try a smaller --step") from None
                self.state = start.clone()
                self.state.step_scale = start.step_scale * 0.5 ** halvings

    def _epoch(self, halvings: int) -> EpochRecord:
        s, o = self.state, self.options
        t0 = time.perf_counter()
        epoch = s.epoch + 1
        gen = torch.Generator()
        gen.set_state(s.generator)
        order = torch.randperm(self.P, generator=gen)
        B = int(o.batch_size)
        n_batches = math.ceil(self.P / B)
        probe_on = o.refine_probe and epoch >= o.probe_start
        positions_on = o.refine_positions and epoch >= o.positions_start
        total = 0.0
        step = 0.0
        for k in range(n_batches):
            step = self.step_at(self._progress(s.epoch + k / n_batches, s.elapsed + time.perf_counter() - t0))
            step *= s.step_scale
            total += self._batch_update(order[k * B:(k + 1) * B], step, probe_on, positions_on)
        loss = total / (self.P * self.N * self.N)
        previous = s.history[-1]["loss"] if s.history else None
        if previous is not None and loss > DIVERGENCE_FACTOR * previous:
            raise _Diverge(f"the loss grew from {previous:.4g} to {loss:.4g} per pixel")
        with torch.no_grad():
            if not bool(torch.isfinite(torch.view_as_real(s.object)).all()):
                raise _Diverge("the object became non-finite")
            if o.momentum > 0:
                s.velocity = o.momentum * s.velocity + (s.object - s.anchor)
                s.object = s.object + o.momentum * s.velocity
                s.anchor = s.object.clone()
            if probe_on:
                s.probe = _orthogonal_modes(s.probe)
        if o.coarse_phase_every and epoch % o.coarse_phase_every == 0:
            self._coarse_phase_fit()
        with torch.no_grad():
            rms = None
            if o.refine_positions:
                if positions_on:   # the mean correction is a global translation: remove it
                    s.top_left = s.top_left - (s.top_left - self.top_left_start).mean(dim=0)
                d = s.top_left - self.top_left_start
                rms = float(torch.sqrt((d ** 2).sum(-1).mean()))
        seconds = time.perf_counter() - t0
        s.epoch = epoch
        s.elapsed += seconds
        s.generator = gen.get_state()
        record = EpochRecord(epoch, loss, step, seconds, s.elapsed, rms, probe_on, halvings)
        s.history.append(dataclasses.asdict(record))
        return record

    def _coarse_phase_fit(self) -> None:
        """Multiply the object by ``exp(i phi)``, ``phi`` a smooth phase (bicubic over a
        ``coarse_phase_grid``^2 grid of control points) fitted by L-BFGS to the loss over
        ``coarse_phase_patterns`` evenly spread patterns: a coarse-grid correction of the
        slow phase variations the pixel-wise steps take hundreds of epochs to find (their
        curvature is tiny: a smooth phase only tilts the exit waves slightly)."""
        s, o = self.state, self.options
        H, W = self.frame.shape
        G = int(o.coarse_phase_grid)
        stride = max(1, self.P // max(int(o.coarse_phase_patterns), 1))
        chosen = torch.arange(0, self.P, stride)[:o.coarse_phase_patterns]
        idx = chosen[self.dist.rank::self.dist.world]          # this process's share
        n_all = len(chosen)
        base = s.object.detach()
        phi = torch.zeros((1, 1, G, G), dtype=torch.float32, device=self.device, requires_grad=True)
        lbfgs = torch.optim.LBFGS([phi], lr=1, max_iter=int(o.coarse_phase_iters), history_size=10,
                                  line_search_fn="strong_wolfe")
        X = self._patterns(idx) if len(idx) <= 4096 else None

        def upsampled():
            return torch.nn.functional.interpolate(phi, size=(H, W), mode="bicubic", align_corners=True)[0, 0]

        def closure():
            lbfgs.zero_grad()
            obj = base * torch.exp(1j * upsampled())
            leaf = obj.detach().requires_grad_(True)
            total = torch.zeros((), dtype=torch.float64, device=self.device)
            for k in range(0, len(idx), 512):
                b = idx[k:k + 512]
                Xb = X[k:k + 512] if X is not None else self._patterns(b)
                loss = self.batch_loss(leaf, s.probe, s.top_left[b.to(self.device)], Xb) / (n_all * self.N ** 2)
                loss.backward()
                total += loss.detach().double()
            obj.backward(leaf.grad)
            self.dist.all_reduce_(total, phi.grad)
            return total

        lbfgs.step(closure)
        with torch.no_grad():
            if bool(torch.isfinite(phi).all()):
                s.object = base * torch.exp(1j * upsampled())
                s.anchor = s.object.clone()
                s.velocity.zero_()

    def finished(self) -> bool:
        o, s = self.options, self.state
        if s.epoch >= o.epochs:
            return True
        return o.max_time is not None and s.elapsed >= 60.0 * o.max_time

    def run(self, on_epoch: Callable[[EpochRecord], None] | None = None) -> "Refiner":
        """Epochs until :meth:`finished`; ``on_epoch(record)`` after each (checkpoint,
        progress)."""
        while not self.finished():
            record = self.run_epoch()
            if on_epoch is not None:
                on_epoch(record)
        return self

    # ------------------------------------------------------------------ results
    def coverage(self) -> torch.Tensor:
        """(H, W) probe dose ``sum_p |probe|^2`` at the current positions (float64)."""
        s, N = self.state, self.N
        intensity = (s.probe.abs() ** 2).sum(0).double()
        total = torch.zeros(self.frame.shape, dtype=torch.float64, device=self.device)
        for i in range(0, self.P, 1024):
            tl = s.top_left[i:i + 1024]
            total += self._stitch_real(intensity.expand(len(tl), N, N).contiguous(), tl, self.frame.shape)
        return total

    def health(self, floor: float = guard.DEFAULT_COLLAPSE_FLOOR) -> str | None:
        """The guard's verdict on patches of the refined object (None: healthy)."""
        s = self.state
        idx = torch.linspace(0, self.P - 1, min(self.P, GUARD_PATCHES)).round().long().to(self.device)
        with torch.no_grad():
            patches = self.extract(s.object, s.top_left[idx], self.N)
        return guard.collapse_reason(guard.summarize(patches), floor)

    def centres(self) -> np.ndarray:
        """(P, 2) refined probe centres (row, col), canvas pixels."""
        return coords.top_left_to_centres(self.state.top_left.cpu().numpy(), self.N)

    # ------------------------------------------------------------------ checkpoint
    def state_tensors(self) -> tuple[dict, dict]:
        """(tensors, metadata) of the state: tensors for safetensors (complex as real pairs),
        metadata as JSON-ready values."""
        s = self.state
        tensors = {}
        for k in _State.TENSORS:
            t = getattr(s, k).detach().cpu().contiguous()
            tensors[k] = torch.view_as_real(t).contiguous() if t.is_complex() else t
        meta = {"epoch": s.epoch, "elapsed": s.elapsed, "step_scale": s.step_scale, "history": s.history,
                "probe_power": self.probe_power}
        return tensors, meta

    def load_state_tensors(self, tensors: dict, meta: dict) -> None:
        s = self.state
        for k in _State.TENSORS:
            if k not in tensors:
                raise UserError(f"the checkpoint has no '{k}'")
            t = tensors[k]
            ref = getattr(s, k)
            if ref.is_complex():
                t = torch.view_as_complex(t.contiguous())
            if t.shape != ref.shape or t.dtype != ref.dtype:
                raise UserError(f"the checkpoint's '{k}' is {tuple(t.shape)} {t.dtype}, expected "
                                f"{tuple(ref.shape)} {ref.dtype}: it belongs to other data or options")
            setattr(s, k, t.to(ref.device))
        s.epoch = int(meta["epoch"])
        s.elapsed = float(meta["elapsed"])
        s.step_scale = float(meta["step_scale"])
        s.history = list(meta["history"])
        self.probe_power = float(meta["probe_power"])


class _Diverge(Exception):
    """Internal: this epoch diverged (caught by :meth:`Refiner.run_epoch`)."""




def options_json(options: RefineOptions) -> str:
    return json.dumps(dataclasses.asdict(options), sort_keys=True)
