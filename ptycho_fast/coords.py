"""The coordinate convention, converted in exactly one place (docs/design.md §3, docs/data.md).

Data files (PtychoPINN NPZ, our HDF5) hold each scan position as the **probe centre in
object pixels**: ``xcoords`` is the column, ``ycoords`` the row. In memory, positions are
``(P, 2)`` arrays of ``(row, col)`` = ``(y, x)`` centres.

The kernels (``ptycho_fast.ops``) take the ``(row, col)`` of each patch's **top-left**
pixel. A patch of size N centred at ``(y, x)`` has its top-left pixel at
``(y - N/2, x - N/2)``, so for integer positions ``patch[N/2, N/2] == object[y, x]``::

        col x-N/2        col x        col x+N/2-1
    row y-N/2 +------------+-------------+
              |            :             |
    row y     |. . . . . . * . . . . . . |     * = object[y, x] = patch[N/2, N/2]
              |            :             |
    row y+N/2-1 +----------+-------------+

ptychodus product files hold positions in metres. ptychodus (1.7.0: ``api/object.py``
``ObjectGeometry``, ``api/probe.py`` ``ProbeGeometry.resolve_patch_bounds``) puts the
object centre at pixel ``(W-1)/2`` and a probe position at the **geometric middle** of its
patch, which starts at ``centre - (N-1)/2``; ours is at patch pixel ``N/2``, half a pixel
further. So the same placement (the same object pixels under the same probe pixels) has
**ptychodus pixel = ours - 1/2** in each axis (:func:`to_ptychodus_pixels`,
:func:`from_ptychodus_pixels`), and in metres (:func:`pixels_to_metres`,
:func:`metres_to_pixels`)::

    x_m = centre_x_m + pixel_width_m  * ((col - 1/2) - (W - 1)/2)     # = ... * (col - W/2)
    y_m = centre_y_m + pixel_height_m * ((row - 1/2) - (H - 1)/2)

Every other module calls these functions instead of writing ``± N/2`` itself. They work
on numpy arrays and torch tensors alike and keep the input's type and float dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "centres_to_top_left", "top_left_to_centres", "positions_from_xy", "xy_from_positions",
    "pixels_to_metres", "metres_to_pixels", "CanvasFrame", "canvas_frame",
    "to_ptychodus_pixels", "from_ptychodus_pixels", "PTYCHODUS_PIXEL_OFFSET",
]

#: ptychodus' object-pixel coordinate of a probe position is ours minus this (both axes)
PTYCHODUS_PIXEL_OFFSET = 0.5


def _half(n: int) -> float:
    n = int(n)
    if n <= 0 or n % 2:
        raise ValueError(f"patch size N must be a positive even integer, got {n}")
    return n / 2.0


def _float_positions(yx: Any):
    """(…, 2) float array/tensor; integers become float64 (numpy) or the default dtype (torch)."""
    try:
        import torch
        if isinstance(yx, torch.Tensor):
            if yx.shape[-1:] != (2,):
                raise ValueError(f"positions must have a last axis of length 2 (row, col), got shape {tuple(yx.shape)}")
            return yx if yx.is_floating_point() else yx.to(torch.get_default_dtype())
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    arr = np.asarray(yx)
    if arr.shape[-1:] != (2,):
        raise ValueError(f"positions must have a last axis of length 2 (row, col), got shape {arr.shape}")
    return arr if np.issubdtype(arr.dtype, np.floating) else arr.astype(np.float64)


def centres_to_top_left(yx_centres, N: int):
    """Probe centres ``(…, 2)`` (row, col) -> top-left pixel of each N x N patch."""
    return _float_positions(yx_centres) - _half(N)


def top_left_to_centres(yx_top_left, N: int):
    """Top-left pixel ``(…, 2)`` (row, col) of each N x N patch -> probe centres."""
    return _float_positions(yx_top_left) + _half(N)


def positions_from_xy(xcoords, ycoords) -> np.ndarray:
    """File columns ``xcoords`` (column) and ``ycoords`` (row), each (P,) -> (P, 2) float64 (row, col)."""
    x = np.asarray(xcoords, dtype=np.float64).reshape(-1)
    y = np.asarray(ycoords, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"xcoords and ycoords must have the same length, got {x.size} and {y.size}")
    return np.stack([y, x], axis=-1)


def xy_from_positions(positions) -> tuple[np.ndarray, np.ndarray]:
    """(P, 2) (row, col) centres -> ``(xcoords, ycoords)`` for writing files."""
    pos = np.asarray(positions, dtype=np.float64)
    return pos[..., 1].copy(), pos[..., 0].copy()


def to_ptychodus_pixels(positions) -> np.ndarray:
    """Our (P, 2) (row, col) probe centres -> ptychodus' object-pixel coordinates (row, col)
    of the same placement: ``ours - 1/2`` (ptychodus' patch starts at ``c - (N-1)/2``, ours
    at ``c - N/2``)."""
    return np.asarray(positions, dtype=np.float64) - PTYCHODUS_PIXEL_OFFSET


def from_ptychodus_pixels(positions) -> np.ndarray:
    """ptychodus' object-pixel coordinates (row, col) -> our probe centres: ``+ 1/2``."""
    return np.asarray(positions, dtype=np.float64) + PTYCHODUS_PIXEL_OFFSET


def _object_frame(object_shape, pixel_size_m, centre_m):
    h, w = (float(s) for s in object_shape[-2:])
    dy, dx = np.broadcast_to(np.asarray(pixel_size_m, dtype=np.float64), (2,))
    cy, cx = (float(c) for c in centre_m)
    return h, w, float(dy), float(dx), cy, cx


def pixels_to_metres(positions, object_shape, pixel_size_m, centre_m=(0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """(P, 2) (row, col) centres in object pixels -> ptychodus ``(x_m, y_m)``.

    ``object_shape`` is (H, W); ``pixel_size_m`` a scalar or (height_m, width_m);
    ``centre_m`` the object centre (y_m, x_m) in metres. ptychodus' mapping
    (``ObjectGeometry.map_coordinates_object_to_probe``) applied to
    :func:`to_ptychodus_pixels`: ``x_m = centre_x_m + pixel_width_m * (x_pty - (W-1)/2)``.
    """
    h, w, dy, dx, cy, cx = _object_frame(object_shape, pixel_size_m, centre_m)
    pty = to_ptychodus_pixels(positions)
    x_m = cx + dx * (pty[..., 1] - (w - 1.0) / 2.0)
    y_m = cy + dy * (pty[..., 0] - (h - 1.0) / 2.0)
    return x_m, y_m


def metres_to_pixels(x_m, y_m, object_shape, pixel_size_m, centre_m=(0.0, 0.0)) -> np.ndarray:
    """ptychodus ``(x_m, y_m)`` -> (P, 2) (row, col) centres in object pixels (inverse of
    :func:`pixels_to_metres`): ptychodus' ``map_coordinates_probe_to_object``, then
    :func:`from_ptychodus_pixels`."""
    h, w, dy, dx, cy, cx = _object_frame(object_shape, pixel_size_m, centre_m)
    col = (np.asarray(x_m, dtype=np.float64) - cx) / dx + (w - 1.0) / 2.0
    row = (np.asarray(y_m, dtype=np.float64) - cy) / dy + (h - 1.0) / 2.0
    return from_ptychodus_pixels(positions_from_xy(col, row))


@dataclass
class CanvasFrame:
    """``shape`` (H, W) of the canvas; ``origin`` (row, col): the data-frame coordinates of
    canvas pixel [0, 0]; ``source``: 'objectGuess' or 'scan extent'."""
    shape: tuple[int, int]
    origin: np.ndarray
    source: str


def canvas_frame(positions: np.ndarray, N: int, object_shape=None) -> CanvasFrame:
    """The object pixel frame of the data: ``objectGuess``'s shape and origin when known,
    else the scan's extent (every patch, plus the pixel bilinear interpolation reaches)."""
    if object_shape is not None:
        H, W = (int(s) for s in object_shape[-2:])
        return CanvasFrame((H, W), np.zeros(2), "objectGuess")
    top_left = centres_to_top_left(np.asarray(positions, dtype=np.float64), N)
    origin = np.floor(top_left.min(axis=0))
    extent = np.ceil(top_left.max(axis=0) - origin).astype(np.int64) + N
    return CanvasFrame((int(extent[0]), int(extent[1])), origin, "scan extent")
