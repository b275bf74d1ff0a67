"""Public ops: patch extraction, stitching (its adjoint) and per-patch statistics.

The compiled kernels live in ``torch.ops.ptycho_fast`` (csrc/). This module registers
their fake (shape) kernels, so ``torch.compile(fullgraph=True)`` traces them, and their
autograd formulas, and wraps them in friendly Python functions.

A backend is a module: this one (the compiled kernels) or ``ptycho_fast.reference`` (plain
PyTorch), with the same ``extract_patches``, ``stitch_patches`` and ``patch_stats`` (same
signatures, same results); :func:`backend` resolves the names ``--ops`` takes. If the
extension was not built, this module's three ops are the reference's (with a one-time
warning), so everything built on them still runs.

Coordinate convention (docs/ops.md): ``positions[..., 0]`` is the row and
``positions[..., 1]`` the column of each patch's TOP-LEFT pixel, in canvas pixels,
fractional, possibly outside the canvas.
"""

from __future__ import annotations

import functools
import math
import sys
import warnings
from typing import Sequence

import torch

from . import reference
from .reference import PatchStats, check_out_without_grad, size_pair

__all__ = [
    "HAVE_EXTENSION", "extract_patches", "stitch_patches", "stitch_normalized",
    "patch_stats", "PatchStats", "var_zero_mean", "global_mean_std", "BACKENDS", "backend",
]

try:
    from . import _C  # noqa: F401  (loading it registers torch.ops.ptycho_fast)
    HAVE_EXTENSION = True
except ImportError as exc:  # pragma: no cover - exercised only without a build
    HAVE_EXTENSION = False
    _IMPORT_ERROR = exc

#: the backends by the name ``--ops`` takes (each a module with the same ops)
BACKENDS = ("ptycho_fast", "reference")


def backend(ops=None):
    """The ops module of ``ops``: None or 'ptycho_fast' -> this module (the compiled
    kernels), 'reference' -> ``ptycho_fast.reference``; a module (or any object with the
    same functions) as is."""
    if ops is None or ops == "ptycho_fast":
        return sys.modules[__name__]
    if ops == "reference":
        return reference
    if isinstance(ops, str) or not all(hasattr(ops, f) for f in ("extract_patches", "stitch_patches",
                                                                   "patch_stats")):
        raise ValueError(f"ops must be one of {', '.join(BACKENDS)} or an ops module, got {ops!r}")
    return ops


def _real_dtype(t: torch.Tensor) -> torch.dtype:
    return t.real.dtype if t.is_complex() else t.dtype


# --------------------------------------------------------------------------------------
# Fake kernels and autograd (only when the compiled ops exist).
# --------------------------------------------------------------------------------------
def _check_same_device(op: str, *named: tuple[str, torch.Tensor | None]) -> None:
    """The device check of the C++ launchers, for the fake kernels (a meta tensor never
    reaches C++)."""
    (first_name, first), *rest = [(n, t) for n, t in named if t is not None]
    for name, t in rest:
        if t.device != first.device:
            raise ValueError(f"{op}: {first_name} is on {first.device} but {name} is on {t.device}; "
                             "move them to the same device")


if HAVE_EXTENSION:
    _ops = torch.ops.ptycho_fast

    @torch.library.register_fake("ptycho_fast::extract_patches")
    def _extract_fake(canvas, positions, patch_h, patch_w):
        _check_same_device("extract_patches", ("canvas", canvas), ("positions", positions))
        torch._check(canvas.dim() in (2, 3), lambda: "extract_patches: canvas must be (H, W) or (B, H, W)")
        torch._check(positions.dim() == canvas.dim(), lambda: "extract_patches: positions must be (P, 2) or (B, P, 2)")
        return canvas.new_empty((*positions.shape[:-1], patch_h, patch_w))

    @torch.library.register_fake("ptycho_fast::extract_patches_into")
    def _extract_into_fake(canvas, positions, patch_h, patch_w, out):
        _check_same_device("extract_patches", ("canvas", canvas), ("positions", positions), ("out", out))

    @torch.library.register_fake("ptycho_fast::stitch_patches")
    def _stitch_fake(patches, positions, height, width, weights=None):
        _check_same_device("stitch_patches", ("patches", patches), ("positions", positions), ("weights", weights))
        torch._check(patches.dim() in (3, 4), lambda: "stitch_patches: patches must be (P, h, w) or (B, P, h, w)")
        canvas = patches.new_empty((*patches.shape[:-3], height, width))
        real = _real_dtype(patches)
        if weights is None:
            return canvas, patches.new_empty((0,), dtype=real)
        return canvas, patches.new_empty((*patches.shape[:-3], height, width), dtype=real)

    @torch.library.register_fake("ptycho_fast::patch_stats")
    def _stats_fake(patches, view="auto"):
        shape, real = patches.shape[:-2], _real_dtype(patches)
        return tuple(patches.new_empty(shape, dtype=real) for _ in range(4))

    @torch.library.register_fake("ptycho_fast::_position_grad")
    def _position_grad_fake(canvas, positions, grad_patches):
        _check_same_device("_position_grad", ("canvas", canvas), ("positions", positions),
                           ("grad_patches", grad_patches))
        return torch.empty_like(positions)

    # extract and stitch are linear in the data and each other's adjoint, so each one's
    # data gradient is the other op (double backward comes free); position gradients
    # go through the internal op _position_grad.
    def _extract_setup(ctx, inputs, output):
        canvas, positions, _, _ = inputs
        ctx.canvas_hw = canvas.shape[-2:]
        ctx.save_for_backward(canvas, positions)

    def _extract_backward(ctx, grad):
        canvas, positions = ctx.saved_tensors
        grad_canvas = grad_positions = None
        if ctx.needs_input_grad[0]:
            grad_canvas = _ops.stitch_patches(grad, positions, *ctx.canvas_hw, None)[0]
        if ctx.needs_input_grad[1]:
            grad_positions = _ops._position_grad(canvas, positions, grad)
        return grad_canvas, grad_positions, None, None

    torch.library.register_autograd("ptycho_fast::extract_patches", _extract_backward,
                                    setup_context=_extract_setup)

    def _stitch_setup(ctx, inputs, output):
        patches, positions, _, _, weights = inputs
        ctx.has_weights = weights is not None
        ctx.shared_weights = weights is not None and weights.dim() == 2
        ctx.save_for_backward(patches, positions, weights)

    def _stitch_backward(ctx, grad_canvas, grad_weight_map):
        patches, positions, weights = ctx.saved_tensors
        ph, pw = patches.shape[-2:]
        back = _ops.extract_patches(grad_canvas, positions, ph, pw)
        grad_patches = grad_positions = grad_weights = None
        if not ctx.has_weights:
            if ctx.needs_input_grad[0]:
                grad_patches = back
            if ctx.needs_input_grad[1]:
                grad_positions = _ops._position_grad(grad_canvas, positions, patches)
            return grad_patches, grad_positions, None, None, None
        w = weights.expand(patches.shape) if ctx.shared_weights else weights
        if ctx.needs_input_grad[0]:
            grad_patches = back * w
        if ctx.needs_input_grad[4]:
            # canvas = sum bilinear*w*patch, weight_map = sum bilinear*w (w real):
            # dL/dw = Re(conj(patch) * extract(dL/dcanvas)) + extract(dL/dweight_map).
            grad_w = (back * patches.conj()).real if patches.is_complex() else back * patches
            grad_w = grad_w + _ops.extract_patches(grad_weight_map, positions, ph, pw)
            grad_weights = grad_w.sum(dim=tuple(range(grad_w.dim() - 2))) if ctx.shared_weights else grad_w
        if ctx.needs_input_grad[1]:
            grad_positions = (_ops._position_grad(grad_canvas, positions, patches * w)
                              + _ops._position_grad(grad_weight_map, positions, w.contiguous()))
        return grad_patches, grad_positions, None, None, grad_weights

    torch.library.register_autograd("ptycho_fast::stitch_patches", _stitch_backward,
                                    setup_context=_stitch_setup)

    # Second derivatives through _position_grad and gradients of the statistics are rare
    # (position refinement's double backward, monitoring): both differentiate the
    # plain-PyTorch formulation with autograd instead of a dedicated kernel.
    def _saved_inputs_setup(ctx, inputs, output):
        ctx.save_for_backward(*[t if isinstance(t, torch.Tensor) else None for t in inputs])
        ctx.other_args = [None if isinstance(t, torch.Tensor) else t for t in inputs]

    def _grad_through_reference(fn, ctx, grads):
        saved = ctx.saved_tensors
        with torch.enable_grad():
            inputs, wrt = [], []
            for i, (t, arg) in enumerate(zip(saved, ctx.other_args)):
                if t is None:
                    inputs.append(arg)
                    continue
                if ctx.needs_input_grad[i] and not t.requires_grad:
                    t = t.detach().requires_grad_(True)
                inputs.append(t)
                if ctx.needs_input_grad[i]:
                    wrt.append(i)
            outputs = fn(*inputs)
            outputs = outputs if isinstance(outputs, tuple) else (outputs,)
            pairs = [(o, g) for o, g in zip(outputs, grads) if o.requires_grad and g is not None]
            got = torch.autograd.grad([o for o, _ in pairs], [inputs[i] for i in wrt],
                                      [g for _, g in pairs], allow_unused=True,
                                      create_graph=torch.is_grad_enabled())
        result = [None] * len(saved)
        for i, g in zip(wrt, got):
            result[i] = g
        return tuple(result)

    torch.library.register_autograd(
        "ptycho_fast::_position_grad",
        lambda ctx, grad: _grad_through_reference(reference.position_grad, ctx, (grad,)),
        setup_context=_saved_inputs_setup)
    torch.library.register_autograd(
        "ptycho_fast::patch_stats",
        lambda ctx, *grads: _grad_through_reference(reference.patch_stats, ctx, grads),
        setup_context=_saved_inputs_setup)


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------
def _check_cuda_positions(op: str, positions: torch.Tensor) -> None:
    # The CPU kernels check finiteness themselves; on CUDA that check needs a sync,
    # done here (eager only) so that a NaN position is an error on every device.
    if positions.is_cuda and not torch.compiler.is_compiling():
        if not bool(torch.isfinite(positions).all()):
            raise ValueError(f"{op}: positions contains a non-finite value")


def extract_patches(canvas: torch.Tensor, positions: torch.Tensor,
                    patch_size: int | Sequence[int], *, out: torch.Tensor | None = None) -> torch.Tensor:
    """Cut bilinear patches out of ``canvas`` at sub-pixel ``positions``.

    canvas (H, W) or (B, H, W), float32/64 or complex64/128; positions (P, 2) or
    (B, P, 2), the (row, col) of each patch's top-left pixel. Returns (P, h, w) or
    (B, P, h, w) in the canvas dtype; pixels outside the canvas read as zero.

    ``out``: a contiguous buffer of that shape and dtype to write into instead of a new
    tensor (reuse it across a loop: no allocation, no page faults). Not differentiable.
    """
    ph, pw = size_pair(patch_size, "patch_size")
    check_out_without_grad(out, canvas, positions)
    _check_cuda_positions("extract_patches", positions)
    if out is not None:
        torch.ops.ptycho_fast.extract_patches_into(canvas, positions, ph, pw, out)
        return out
    return torch.ops.ptycho_fast.extract_patches(canvas, positions, ph, pw)


def stitch_patches(patches: torch.Tensor, positions: torch.Tensor,
                   canvas_size: int | Sequence[int], weights: torch.Tensor | None = None):
    """Add patches into a zero canvas: the exact adjoint of :func:`extract_patches`.

    Without ``weights`` returns the canvas ``sum bilinear*patch``. With ``weights``
    ((h, w) shared, or one per patch like ``patches``; real, same precision) returns
    ``(sum bilinear*w*patch, sum bilinear*w)`` from one pass.
    """
    H, W = size_pair(canvas_size, "canvas_size")
    _check_cuda_positions("stitch_patches", positions)
    canvas, weight_map = torch.ops.ptycho_fast.stitch_patches(patches, positions, H, W, weights)
    return canvas if weights is None else (canvas, weight_map)


def stitch_normalized(patches: torch.Tensor, positions: torch.Tensor,
                      canvas_size: int | Sequence[int], weights: torch.Tensor | None = None,
                      eps: float | None = None):
    """Weighted average of overlapping patches: ``sum w*patch / (sum w + eps)``.

    ``weights`` defaults to ones. ``eps`` defaults to 1e-6 of the largest accumulated
    weight, so uncovered pixels come out 0 and covered ones are not biased. Returns
    ``(normalised_canvas, weight_map)``; the weight map says which pixels are covered.
    """
    ph, pw = patches.shape[-2:]
    if weights is None:
        weights = torch.ones((ph, pw), dtype=_real_dtype(patches), device=patches.device)
    canvas, weight_map = stitch_patches(patches, positions, canvas_size, weights)
    if eps is None:
        eps = 1e-6 * float(weight_map.detach().max()) if weight_map.numel() else 1.0
        eps = eps if eps > 0 else 1.0
    return canvas / (weight_map + eps), weight_map


def patch_stats(patches: torch.Tensor, view: str = "auto") -> PatchStats:
    """Mean, population variance, min and max of every patch, in one pass (float64 sums).

    ``view`` picks the values described: ``auto`` (the value for real input, the
    amplitude |z| for complex), ``value``, ``amplitude``, ``real``, ``imag``, ``phase``.
    """
    return PatchStats(*torch.ops.ptycho_fast.patch_stats(patches, view))


def var_zero_mean(patches: torch.Tensor, view: str = "auto") -> torch.Tensor:
    """The health figure of a batch: the mean over patches of the per-patch variance
    (ddof=0). ~0 means the patches collapsed to constants."""
    return patch_stats(patches, view).var.to(torch.float64).mean()


def global_mean_std(patches: torch.Tensor, view: str = "auto") -> tuple[float, float]:
    """Mean and population std over every pixel of every patch, from the per-patch
    statistics (Chan's combination in float64: no second pass over the data)."""
    stats = patch_stats(patches, view)
    n = patches.shape[-2] * patches.shape[-1]
    means = stats.mean.to(torch.float64).flatten()
    if n == 0 or means.numel() == 0:
        return math.nan, math.nan
    grand = means.mean()
    total_var = (stats.var.to(torch.float64).flatten() + (means - grand) ** 2).mean()
    return float(grand), float(total_var.sqrt())


if not HAVE_EXTENSION:  # pragma: no cover - exercised only without a build
    _warned_fallback = False

    def _fallback(fn):
        """The reference function ``fn`` (same signature), warning once that it stands in."""
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            global _warned_fallback
            if not _warned_fallback:
                _warned_fallback = True
                warnings.warn("ptycho_fast: the compiled extension is not available "
                              f"({_IMPORT_ERROR}); using the slower plain-PyTorch reference ops. "
                              "Build it with: pip install -e . --no-build-isolation",
                              RuntimeWarning, stacklevel=2)
            return fn(*args, **kwargs)
        return wrapper

    extract_patches = _fallback(reference.extract_patches)
    stitch_patches = _fallback(reference.stitch_patches)
    patch_stats = _fallback(reference.patch_stats)
