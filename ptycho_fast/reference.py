"""Plain-PyTorch versions of the compiled ops: the test oracle and the fallback.

The same functions with the same signatures and results as :mod:`ptycho_fast.ops`
(``extract_patches``, ``stitch_patches``, ``patch_stats``), so a backend is just a module:
code that takes ``ops=`` calls ``ops.extract_patches(...)`` on either (names resolved by
:func:`ptycho_fast.ops.backend`). ``position_grad`` is the oracle of the internal op
``_position_grad``. The derived helpers of ``ops`` (``stitch_normalized``,
``var_zero_mean``, ``global_mean_std``) are built on these three and live only there.

Same semantics as the kernels (docs/ops.md): positions are the (row, col) of each
patch's top-left pixel, split once into ``floor`` and a fraction; pixels outside the
canvas read as zero and are dropped in the adjoint. Everything here is differentiable
by autograd, including with respect to positions (through the fraction), which is how
the tests check the kernels' analytic position gradients.

The extraction is the best pure-PyTorch formulation we know (docs/design.md §7): gather the
(h+1) x (w+1) window of every patch once with advanced indexing, then two 1-D lerps.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

__all__ = ["extract_patches", "stitch_patches", "patch_stats", "PatchStats", "position_grad"]


class PatchStats(NamedTuple):
    """Per-patch statistics: shapes are ``patches.shape[:-2]``; ``var`` has ddof=0."""
    mean: torch.Tensor
    var: torch.Tensor
    min: torch.Tensor
    max: torch.Tensor


def size_pair(size: int | Sequence[int], name: str) -> tuple[int, int]:
    """An int or a (height, width) pair -> (height, width) (the ops' size arguments)."""
    if isinstance(size, int):
        size = (size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 2:
        raise ValueError(f"{name} must be an int or a (height, width) pair, got {size}")
    return size


def check_out_without_grad(out: torch.Tensor | None, *inputs: torch.Tensor) -> None:
    """``extract_patches(..., out=)`` is not differentiable: refuse it when autograd records."""
    if out is not None and torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        raise ValueError("extract_patches: out= does not support autograd; call it under "
                         "torch.no_grad() or without out=")


def _batched(x: torch.Tensor, data: torch.Tensor, unbatched_dim: int):
    """Adds the batch axis to (data, positions) pairs given without one."""
    return (data.unsqueeze(0), x.unsqueeze(0), True) if data.dim() == unbatched_dim else (data, x, False)


def _split(positions: torch.Tensor, dtype: torch.dtype):
    """Integer base (int64) and fraction (in the data's real dtype) of each position.

    Split in float64 like the kernels: in float32, x - floor(x) rounds for negative x
    (-2**-30 would give a fraction of exactly 1.0)."""
    positions = positions.to(torch.float64)
    base = torch.floor(positions)
    frac = (positions - base).to(dtype)
    return base.to(torch.int64), frac


def _real_dtype(t: torch.Tensor) -> torch.dtype:
    return t.real.dtype if t.is_complex() else t.dtype


def _window_indices(base: torch.Tensor, length: int, limit: int):
    """Canvas indices base + 0..length-1 along one axis, clamped, and their validity."""
    idx = base.unsqueeze(-1) + torch.arange(length, device=base.device)
    valid = (idx >= 0) & (idx < limit)
    return idx.clamp(0, max(limit - 1, 0)), valid


def extract_patches(canvas: torch.Tensor, positions: torch.Tensor,
                    patch_size: int | Sequence[int], *, out: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`ptycho_fast.ops.extract_patches`: (P, h, w) or (B, P, h, w) bilinear patches."""
    patch_h, patch_w = size_pair(patch_size, "patch_size")
    check_out_without_grad(out, canvas, positions)
    patches = _extract(canvas, positions, patch_h, patch_w)
    return patches if out is None else out.copy_(patches)


def _extract(canvas: torch.Tensor, positions: torch.Tensor, patch_h: int, patch_w: int) -> torch.Tensor:
    canvas_b, pos_b, squeeze = _batched(positions, canvas, 2)
    B, H, W = canvas_b.shape
    P = pos_b.shape[1]
    base, frac = _split(pos_b, _real_dtype(canvas_b))
    rows, row_ok = _window_indices(base[..., 0], patch_h + 1, H)  # (B, P, h+1)
    cols, col_ok = _window_indices(base[..., 1], patch_w + 1, W)  # (B, P, w+1)
    if H == 0 or W == 0:
        window = canvas_b.new_zeros(B, P, patch_h + 1, patch_w + 1)
    else:
        b_idx = torch.arange(B, device=canvas.device).view(B, 1, 1, 1)
        window = canvas_b[b_idx, rows.unsqueeze(-1), cols.unsqueeze(-2)]
        window = window * (row_ok.unsqueeze(-1) & col_ok.unsqueeze(-2)).to(window.dtype)
    fy = frac[..., 0, None, None]
    fx = frac[..., 1, None, None]
    along_cols = window[..., :, :-1] * (1 - fx) + window[..., :, 1:] * fx  # (B, P, h+1, w)
    out = along_cols[..., :-1, :] * (1 - fy) + along_cols[..., 1:, :] * fy  # (B, P, h, w)
    return out.squeeze(0) if squeeze else out


def _spread(values: torch.Tensor, frac: torch.Tensor) -> torch.Tensor:
    """Adjoint of the two lerps: (B,P,h,w) values -> (B,P,h+1,w+1) window contributions."""
    fy = frac[..., 0, None, None]
    fx = frac[..., 1, None, None]
    zeros_col = values.new_zeros(values.shape[:-1] + (1,))
    along_cols = torch.cat([values * (1 - fx), zeros_col], -1) + torch.cat([zeros_col, values * fx], -1)
    zeros_row = along_cols.new_zeros(along_cols.shape[:-2] + (1, along_cols.shape[-1]))
    return torch.cat([along_cols * (1 - fy), zeros_row], -2) + torch.cat([zeros_row, along_cols * fy], -2)


def _scatter_windows(windows: torch.Tensor, base: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """index_add_ of (B,P,h+1,w+1) windows at their bases into (B,H,W), dropping outside pixels."""
    B, P, wh, ww = windows.shape
    rows, row_ok = _window_indices(base[..., 0], wh, max(height, 1))
    cols, col_ok = _window_indices(base[..., 1], ww, max(width, 1))
    ok = row_ok.unsqueeze(-1) & col_ok.unsqueeze(-2)
    flat = (torch.arange(B, device=windows.device).view(B, 1, 1, 1) * height + rows.unsqueeze(-1)) * width
    flat = flat + cols.unsqueeze(-2)
    # Outside pixels go to one extra slot that is cut off afterwards.
    flat = torch.where(ok, flat, torch.full_like(flat, B * height * width))
    out = windows.new_zeros(B * height * width + 1)
    out = out.index_add(0, flat.reshape(-1), windows.reshape(-1))
    return out[:-1].view(B, height, width)


def stitch_patches(patches: torch.Tensor, positions: torch.Tensor,
                   canvas_size: int | Sequence[int], weights: torch.Tensor | None = None):
    """:func:`ptycho_fast.ops.stitch_patches`: the canvas ``sum bilinear*patch``; with
    ``weights``, ``(sum bilinear*w*patch, sum bilinear*w)``."""
    height, width = size_pair(canvas_size, "canvas_size")
    patches_b, pos_b, squeeze = _batched(positions, patches, 3)
    base, frac = _split(pos_b, _real_dtype(patches_b))
    if weights is None:
        canvas = _scatter_windows(_spread(patches_b, frac), base, height, width)
        return canvas.squeeze(0) if squeeze else canvas
    w = weights if weights.dim() == 2 else (weights.unsqueeze(0) if squeeze else weights)
    w = w.expand(patches_b.shape)
    canvas = _scatter_windows(_spread(patches_b * w, frac), base, height, width)
    weight_map = _scatter_windows(_spread(w, frac), base, height, width)
    if squeeze:
        canvas, weight_map = canvas.squeeze(0), weight_map.squeeze(0)
    return canvas, weight_map


VIEWS = ("auto", "value", "amplitude", "real", "imag", "phase")


def stats_view(patches: torch.Tensor, view: str) -> torch.Tensor:
    """The real values that patch_stats describes (see docs/ops.md)."""
    complex_ = patches.is_complex()
    if view not in VIEWS:
        raise ValueError(f"patch_stats: view must be one of {', '.join(VIEWS)}; got {view!r}")
    if view == "auto":
        view = "amplitude" if complex_ else "value"
    if view == "value" and complex_:
        raise ValueError("patch_stats: view 'value' needs real patches; for complex patches use "
                         "one of amplitude, real, imag, phase")
    if view in ("imag", "phase") and not complex_:
        raise ValueError(f"patch_stats: view '{view}' needs complex patches; for real patches use "
                         "value or amplitude")
    if view == "amplitude":
        return patches.abs()
    if view == "phase":
        return torch.angle(patches)
    if view == "imag":
        return patches.imag
    return patches.real if complex_ else patches


def patch_stats(patches: torch.Tensor, view: str = "auto") -> PatchStats:
    """:func:`ptycho_fast.ops.patch_stats`: (mean, population variance, min, max) over the
    last two dims, computed in float64."""
    values = stats_view(patches, view)
    out_dtype = values.dtype
    flat = values.to(torch.float64).flatten(-2)
    if flat.numel() == 0:
        nan = flat.new_full(flat.shape[:-1], float("nan")).to(out_dtype)
        return PatchStats(nan, nan.clone(), nan.clone(), nan.clone())
    var, mean = torch.var_mean(flat, dim=-1, correction=0)
    return PatchStats(mean.to(out_dtype), var.to(out_dtype), flat.amin(-1).to(out_dtype),
                      flat.amax(-1).to(out_dtype))


def _real_view(t: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(t) if t.is_complex() else t


def position_grad(canvas: torch.Tensor, positions: torch.Tensor, grad_patches: torch.Tensor) -> torch.Tensor:
    """d/dpositions of the real inner product <grad_patches, extract(canvas, positions)>.

    Differentiable itself (create_graph), so it also serves as the double backward.
    """
    with torch.enable_grad():
        pos = positions if positions.requires_grad else positions.detach().requires_grad_(True)
        patches = _extract(canvas, pos, grad_patches.shape[-2], grad_patches.shape[-1])
        inner = (_real_view(patches) * _real_view(grad_patches)).sum()
        (grad,) = torch.autograd.grad(inner, pos, create_graph=torch.is_grad_enabled())
    return grad
