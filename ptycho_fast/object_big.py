"""object_big: the gridsize > 1 consistency step of PtychoPINN (docs/design.md §1, §3).

The C = gridsize² patches the network predicts for one group overlap in the object. They
are made consistent by stitching them into a small **local canvas** around the group's
centroid (weighted by a window, normalised by the accumulated weight) and cutting the C
patches back out::

    canvas  = stitch(w * patches) / (stitch(w) + eps)      one kernel call for the batch
    patches = extract(canvas)                               one kernel call for the batch

with B local canvases for a batch of B groups (``(B, C, N, N)`` patches, ``(B, C, 2)``
positions). Member c of group b sits at its relative offset ``pos - centroid`` (positive
sense, (row, col) object pixels) from the canvas centre ``(S/2, S/2)``; its top-left pixel
comes from :func:`ptycho_fast.coords.centres_to_top_left`. The canvas side is
``S = N + 2*ceil(max|offset|)`` (just big enough for the group), and that of the whole
dataset (:meth:`ptycho_fast.data.Groups.local_canvas_size`) can be passed so that every
batch uses one size.

Pixels covered by no window (e.g. outside the central mask of every member) come back as
0: the consistent patches are defined inside the weighted support.

The ops are injectable (``ops=``): a backend module, ``ptycho_fast.ops`` (the compiled
kernels, the default) or ``ptycho_fast.reference`` (plain PyTorch, the same functions and
signatures), or its name ('ptycho_fast', 'reference'; :func:`ptycho_fast.ops.backend`) —
how the benchmark compares them in the same training step.
"""

from __future__ import annotations

import math

import torch

from . import coords, ops as _ops

__all__ = [
    "WINDOWS", "make_window", "local_canvas_size", "local_top_left", "merge_extract", "ObjectBig", "EPS_RELATIVE",
]

WINDOWS = ("probe", "central", "ones")

#: eps of the normalisation ``sum w*patch / (sum w + eps)``, relative to the window's
#: maximum. It only has to turn 0/0 (pixels no window covers) into 0: the gradient with
#: respect to the patches, w / (sum w + eps), is at most 1 whatever eps is. So it is tiny:
#: a pixel whose accumulated weight is W is shrunk by the factor W / (W + eps), i.e. by
#: less than 1e-5 wherever W > 1e-4 of the peak (|probe|^2 tails below ~1e-9 of the peak
#: count as outside the support).
EPS_RELATIVE = 1e-9


def make_window(kind: str, N: int, probe=None, dtype=torch.float32, device=None) -> torch.Tensor:
    """(N, N) real weights for stitching, maximum 1.

    * ``probe``: ``sum_modes |probe|^2`` normalised to a maximum of 1 (needs ``probe``);
    * ``central``: 1 on the central N/2 x N/2 block (rows and columns N/4 .. 3N/4 - 1),
      0 elsewhere (PtychoPINN's object support);
    * ``ones``: uniform.
    """
    N = int(N)
    if kind == "ones":
        return torch.ones((N, N), dtype=dtype, device=device)
    if kind == "central":
        if N % 4:
            raise ValueError(f"window 'central' needs N divisible by 4, got N = {N}")
        w = torch.zeros((N, N), dtype=dtype, device=device)
        w[N // 4:3 * N // 4, N // 4:3 * N // 4] = 1
        return w
    if kind == "probe":
        if probe is None:
            raise ValueError("window 'probe' needs the probe")
        p = torch.as_tensor(probe)
        if p.shape[-2:] != (N, N) or p.dim() not in (2, 3):
            raise ValueError(f"window 'probe': probe must be (N, N) or (M, N, N) with N = {N}, "
                             f"got shape {tuple(p.shape)}")
        intensity = p.abs().to(torch.float64).square()
        if intensity.dim() == 3:
            intensity = intensity.sum(0)
        peak = float(intensity.max())
        if not peak > 0:
            raise ValueError("window 'probe': the probe is zero everywhere")
        return (intensity / peak).to(dtype=dtype, device=device)
    raise ValueError(f"window must be one of {', '.join(WINDOWS)}, got {kind!r}")


def local_canvas_size(offsets, N: int) -> int:
    """``N + 2*ceil(max|offset|)``: the side of a local canvas that holds every group of
    ``offsets`` (..., C, 2) (the same rule as ``Groups.local_canvas_size``)."""
    off = torch.as_tensor(offsets)
    reach = float(off.detach().abs().max()) if off.numel() else 0.0
    return int(N + 2 * math.ceil(reach - 1e-9))


def local_top_left(offsets: torch.Tensor, N: int, size: int) -> torch.Tensor:
    """(..., C, 2) top-left pixel of each member in a local canvas of side ``size`` whose
    centre ``(size/2, size/2)`` is the group centroid; ``offsets`` = member - centroid."""
    return coords.centres_to_top_left(offsets + size / 2.0, N)


def merge_extract(patches: torch.Tensor, offsets: torch.Tensor, window: torch.Tensor,
                  canvas_size: int | None = None, ops=None, eps: float | None = None,
                  return_canvas: bool = False):
    """Stitch each group's C patches into its local canvas (weighted by ``window``,
    normalised) and extract them back.

    patches (B, C, N, N) real or complex; offsets (B, C, 2) member - centroid, (row, col);
    window (N, N) shared or (B, C, N, N) real weights; ``canvas_size`` defaults to
    :func:`local_canvas_size` of this batch (must be at least that); ``ops``: the backend
    module or its name (module doc). Differentiable
    through the kernels' autograd (and in ``offsets``). Returns the consistent patches
    (B, C, N, N), plus ``(canvas, weight_map)`` with ``return_canvas``.
    """
    if patches.dim() != 4:
        raise ValueError(f"patches must be (B, C, N, N), got shape {tuple(patches.shape)}")
    B, C, N, N2 = patches.shape
    if N != N2:
        raise ValueError(f"patches must be square, got {N} x {N2}")
    if tuple(offsets.shape) != (B, C, 2):
        raise ValueError(f"offsets must be (B, C, 2) = ({B}, {C}, 2), got {tuple(offsets.shape)}")
    need = local_canvas_size(offsets, N)
    size = need if canvas_size is None else int(canvas_size)
    if size < need:
        raise ValueError(f"canvas_size {size} cannot hold these groups: their offsets need {need}")
    backend = _ops.backend(ops)
    real = patches.real.dtype if patches.is_complex() else patches.dtype
    window = window.to(device=patches.device, dtype=real)
    positions = local_top_left(offsets.to(device=patches.device, dtype=real), N, size)
    canvas, weight_map = backend.stitch_patches(patches, positions, (size, size), window)
    if eps is None:
        eps = EPS_RELATIVE * _window_peak(window)
    canvas = canvas / (weight_map + eps)
    out = backend.extract_patches(canvas, positions, N)
    return (out, canvas, weight_map) if return_canvas else out


def _window_peak(window: torch.Tensor) -> float:
    # One host sync per call on CUDA; a module caches it (ObjectBig).
    peak = float(window.detach().abs().max()) if window.numel() else 1.0
    return peak if peak > 0 else 1.0


class ObjectBig(torch.nn.Module):
    """:func:`merge_extract` with a fixed window and canvas size (a buffer moves with the
    module to its device). ``forward(patches, offsets)``."""

    def __init__(self, window: torch.Tensor, canvas_size: int | None = None, ops=None):
        super().__init__()
        self.register_buffer("window", window.detach().clone(), persistent=False)
        self.canvas_size = None if canvas_size is None else int(canvas_size)
        self.backend = _ops.backend(ops)
        self.eps = EPS_RELATIVE * _window_peak(window)

    def forward(self, patches: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return merge_extract(patches, offsets, self.window, self.canvas_size, self.backend, self.eps)

    def extra_repr(self) -> str:
        return f"canvas_size={self.canvas_size}, ops={getattr(self.backend, '__name__', self.backend)}"
