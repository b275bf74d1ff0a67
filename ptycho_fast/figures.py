"""Figures: arrays in, PNG bytes out (matplotlib's object API, no global pyplot state).

Shared by every command: object images with a colour bar and scale bar
(:func:`object_png`), patch grids (:func:`patch_grid_png`), loss curves
(:func:`loss_curve_png`) and scan-position corrections as arrows (:func:`corrections_png`).
Callers write the bytes through ``files`` (atomically).
"""

from __future__ import annotations

import io
import math
from typing import Mapping, Sequence

import numpy as np

__all__ = ["object_png", "patch_grid_png", "loss_curve_png", "corrections_png", "nice_length"]


def _figure(figsize):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _png(fig, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def nice_length(width_px: int) -> int:
    """A round scale-bar length (1, 2 or 5 x 10^k pixels) near a fifth of ``width_px``."""
    target = max(width_px / 5.0, 1.0)
    exp = 10 ** math.floor(math.log10(target))
    for m in (1, 2, 5, 10):
        if m * exp >= target * 0.75:
            return int(m * exp)
    return int(10 * exp)


def object_png(values: np.ndarray, covered: np.ndarray, title: str, label: str, cmap: str,
               pixel_size_m: float | None = None) -> bytes:
    """A PNG of ``values`` (uncovered pixels grey), with a colour bar (0.5-99.5 percentile
    range), pixel axes and a scale bar in pixels (and metres when the pixel size is known)."""
    import matplotlib
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar
    H, W = values.shape
    fig = _figure((6.4, 5.6))
    ax = fig.add_subplot()
    colours = matplotlib.colormaps[cmap].with_extremes(bad="0.8")
    data = np.ma.masked_invalid(np.where(covered, values, np.nan))
    kw = {}
    if covered.any():
        lo, hi = np.percentile(values[covered], [0.5, 99.5])
        if hi > lo:
            kw = {"vmin": lo, "vmax": hi}
    im = ax.imshow(data, cmap=colours, interpolation="nearest", **kw)
    fig.colorbar(im, ax=ax, label=label, fraction=0.046, pad=0.04)
    ax.set_xlabel("column (px)")
    ax.set_ylabel("row (px)")
    length = nice_length(W)
    bar_label = f"{length} px"
    if pixel_size_m:
        metres = length * pixel_size_m
        bar_label += f" = {metres * 1e6:.3g} µm" if metres >= 1e-6 else f" = {metres * 1e9:.3g} nm"
    bar = AnchoredSizeBar(ax.transData, length, bar_label, "lower right", pad=0.4, color="white",
                          frameon=True, size_vertical=max(H / 150, 1), label_top=True)
    bar.patch.set_facecolor("0.2")
    bar.patch.set_alpha(0.6)
    ax.add_artist(bar)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _png(fig)


def patch_grid_png(values: np.ndarray, title: str, per_patch: bool, cmap: str, label: str,
                   names: Sequence[str] | None = None) -> bytes:
    """A 4 x 4 grid of (up to 16) patches: on one colour scale, or each scaled to its own
    min..max (``per_patch``)."""
    k = len(values)
    if per_patch:
        lo = values.reshape(k, -1).min(axis=1)[:, None, None]
        hi = values.reshape(k, -1).max(axis=1)[:, None, None]
        values = np.where(hi > lo, (values - lo) / np.where(hi > lo, hi - lo, 1), 0.0)
    fig = _figure((7.5, 7.5))
    axes = fig.subplots(4, 4)
    finite = values[np.isfinite(values)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    im = None
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i < k:
            im = ax.imshow(values[i], cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_title(names[i] if names else f"patch {i}", fontsize=7)
        else:
            ax.axis("off")
    if im is not None:
        fig.colorbar(im, ax=axes, label=label + (" (per-patch min..max -> 0..1)" if per_patch else ""),
                     fraction=0.03, pad=0.02)
    fig.suptitle(title, fontsize=9)
    return _png(fig, dpi=80)


def loss_curve_png(x: Sequence[float], series: Mapping[str, Sequence[float | None]], xlabel: str = "epoch",
                   ylabel: str = "loss", title: str | None = None, markers: bool = True) -> bytes:
    """Loss curves: one line per ``series`` name (None values are gaps); log scale when every
    value is positive."""
    fig = _figure((6, 4))
    ax = fig.add_subplot()
    values = []
    styles = ("o-", "s-", "^-", "d-", "v-", "x-", "*-", "+-")
    for k, (name, ys) in enumerate(series.items()):  # every series drawn (styles cycle)
        style = styles[k % len(styles)]
        y = np.array([np.nan if v is None else float(v) for v in ys])
        if np.isfinite(y).any():
            ax.plot(x, y, style if markers else "-", label=name, markersize=3)
            values.append(y[np.isfinite(y)])
    if values and all((v > 0).all() for v in values):
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    if len(values) > 1:
        ax.legend()
    fig.tight_layout()
    return _png(fig, dpi=90)


def corrections_png(start: np.ndarray, corrected: np.ndarray, title: str, scale: float | None = None) -> bytes:
    """Scan-position corrections: each start position (row, col centres, pixels) with an arrow
    to its corrected position, magnified ``scale`` times (default: the largest correction
    drawn as ~4 % of the scan's extent); colour = correction length."""
    start, corrected = np.asarray(start, np.float64), np.asarray(corrected, np.float64)
    d = corrected - start
    length = np.hypot(d[:, 0], d[:, 1])
    extent = float(np.ptp(start, axis=0).max()) if len(start) > 1 else 1.0
    if scale is None:
        scale = 0.04 * extent / max(float(length.max()) if len(length) else 0.0, 1e-9)
    fig = _figure((6.4, 5.6))
    ax = fig.add_subplot()
    ax.scatter(start[:, 1], start[:, 0], s=2, c="0.6")
    q = ax.quiver(start[:, 1], start[:, 0], d[:, 1] * scale, d[:, 0] * scale, length,
                  angles="xy", scale_units="xy", scale=1, cmap="viridis", width=0.003)
    fig.colorbar(q, ax=ax, label="correction (px)", fraction=0.046, pad=0.04)
    ax.set_xlabel("column (px)")
    ax.set_ylabel("row (px)")
    ax.invert_yaxis()   # rows grow downwards, as in the object images
    ax.set_aspect("equal")
    ax.set_title(f"{title}\narrows magnified {scale:.3g}x; rms {float(np.sqrt((length ** 2).mean())) if len(length) else 0:.3g} px, "
                 f"max {float(length.max()) if len(length) else 0:.3g} px", fontsize=9)
    fig.tight_layout()
    return _png(fig)
