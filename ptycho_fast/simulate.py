"""Simulated ptychography datasets (``ptycho-fast simulate``; docs/data.md).

Pipeline: an object (H, W) complex transmission, a probe (N, N), probe-centre scan
positions (P, 2) (row, col) in object pixels -> object patches cut with
``ops.extract_patches`` at ``coords.centres_to_top_left(centres, N)`` (``--forward
bilinear``, the models' own extraction) or shifted by a Fourier phase ramp (``--forward
fourier``: no inverse crime) -> the physics forward model ``physics.diffraction_amplitude``
-> Poisson noise -> amplitudes sqrt(counts).

The probe is **calibrated**: it is scaled so that the noise-free mean counts per pattern
equal ``photons`` exactly (Parseval: the total counts of a pattern equal
``sum |probe * patch|^2`` in real space, so the scale comes from a cheap first pass over
the same patches, without the far-field FFTs). The stored probe is that calibrated probe, so the true object reproduces
the measured counts (probe gain 1).

Random streams are split from one seed (``numpy.random.SeedSequence``): object, scan and
noise each get their own, so e.g. ``--no-noise`` does not change the object or the scan.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import coords, ops, physics
from .data.dataset import Metadata, PtychoDataset, UserError, atomic_output
from .progress import Progress

__all__ = [
    "OBJECT_KINDS", "PROBE_KINDS", "SCAN_KINDS", "FORWARD_KINDS", "SimulationConfig", "make_object",
    "make_probe", "make_scan", "place_scan", "object_patches", "object_patches_fourier", "calibrate_probe",
    "simulate_diffraction", "simulate", "simulate_to_file", "save_preview", "read_image",
    "probe_diameter_estimate",
]

OBJECT_KINDS = ("lines", "random", "deadleaves", "siemens", "mixed", "image")
PROBE_KINDS = ("aperture", "gaussian", "file")
SCAN_KINDS = ("raster", "spiral")
FORWARD_KINDS = ("bilinear", "fourier")  # how sub-pixel patches are cut (object_patches*)
FOURIER_MARGIN = 8                       # pixels of object read around each fourier patch
GOLDEN_ANGLE = math.pi * (3.0 - math.sqrt(5.0))


@dataclass
class SimulationConfig:
    """Every option of ``ptycho-fast simulate`` with its default (see ``--help``)."""
    N: int = 64
    n_patterns: int = 1024
    photons: float = 1e6
    noise: bool = True
    object: str = "lines"
    amplitude_image: str | None = None
    phase_image: str | None = None
    object_size: int | None = None
    amp_contrast: float = 0.5
    phase_max: float = math.pi / 2
    probe: str = "aperture"
    probe_file: str | None = None
    probe_diameter: float | None = None  # default N/3 pixels
    scan: str = "raster"
    step: float | None = None            # default from overlap
    overlap: float = 0.7
    jitter: float = 0.5
    margin: int = 4
    pixel_size_m: float = 10e-9
    energy_eV: float = 8000.0
    distance_m: float = 1.0
    batch_size: int = 256
    forward: str = "bilinear"            # patch cutting: bilinear (= the models') or fourier

    def validate(self) -> "SimulationConfig":
        def bad(option, message):
            raise UserError(f"--{option.replace('_', '-')}: {message}")
        if self.N < 8 or self.N % 2:
            bad("N", f"must be an even number >= 8 (64 or 128 for the models), got {self.N}")
        if self.n_patterns < 1:
            bad("n_patterns", f"must be >= 1, got {self.n_patterns}")
        if not (self.photons > 0 and math.isfinite(self.photons)):
            bad("photons", f"must be a positive number of counts per pattern, got {self.photons}")
        if self.object not in OBJECT_KINDS:
            bad("object", f"must be one of {', '.join(OBJECT_KINDS)}, got {self.object!r}")
        if self.object == "image" and not (self.amplitude_image or self.phase_image):
            bad("object", "'image' needs --amplitude-image and/or --phase-image")
        if self.object != "image" and (self.amplitude_image or self.phase_image):
            bad("object", f"--amplitude-image/--phase-image need --object image, not {self.object!r}")
        if self.probe not in PROBE_KINDS:
            bad("probe", f"must be one of {', '.join(PROBE_KINDS)}, got {self.probe!r}")
        if (self.probe == "file") != bool(self.probe_file):
            bad("probe", "--probe file and --probe-file PATH go together")
        if self.scan not in SCAN_KINDS:
            bad("scan", f"must be one of {', '.join(SCAN_KINDS)}, got {self.scan!r}")
        if self.probe_diameter is not None and not 0 < self.probe_diameter <= self.N:
            bad("probe_diameter", f"must be in (0, N = {self.N}] pixels, got {self.probe_diameter}")
        if self.step is not None and not self.step > 0:
            bad("step", f"must be > 0 pixels, got {self.step}")
        if not 0 <= self.overlap < 1:
            bad("overlap", f"must be in [0, 1), got {self.overlap}")
        if not self.jitter >= 0:
            bad("jitter", f"must be >= 0 pixels, got {self.jitter}")
        if not 0 <= self.amp_contrast <= 1:
            bad("amp_contrast", f"must be in [0, 1], got {self.amp_contrast}")
        if self.object_size is not None and self.object_size < self.N:
            bad("object_size", f"must be >= N = {self.N}, got {self.object_size}")
        for name in ("pixel_size_m", "energy_eV", "distance_m"):
            if not getattr(self, name) > 0:
                bad(name.rsplit("_", 1)[0], f"must be > 0, got {getattr(self, name)}")
        if self.batch_size < 1:
            bad("batch_size", f"must be >= 1, got {self.batch_size}")
        if self.forward not in FORWARD_KINDS:
            bad("forward", f"must be one of {', '.join(FORWARD_KINDS)}, got {self.forward!r}")
        return self

    @property
    def diameter(self) -> float:
        return self.N / 3 if self.probe_diameter is None else float(self.probe_diameter)


# ----------------------------------------------------------------------------- objects
def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter
    return gaussian_filter(img, sigma, mode="wrap")


def _normalise(f: np.ndarray) -> np.ndarray:
    lo, hi = float(f.min()), float(f.max())
    return np.zeros_like(f) if hi <= lo else (f - lo) / (hi - lo)


def _lines(shape, rng) -> np.ndarray:
    H, W = shape
    n = max(4, int(H * W / 600))
    length = 0.25 * min(H, W)
    samples = int(2 * length) + 2
    centre = rng.random((n, 2)) * (H, W)
    angle = rng.random(n) * math.pi
    t = np.linspace(-0.5, 0.5, samples) * length
    rows = np.rint(centre[:, :1] + np.sin(angle)[:, None] * t).astype(np.int64) % H
    cols = np.rint(centre[:, 1:] + np.cos(angle)[:, None] * t).astype(np.int64) % W
    img = np.zeros(shape, np.float64)
    img[rows.ravel(), cols.ravel()] = 1.0
    return _normalise(_blur(img, 1.0))


def _random_field(shape, rng, feature: float = 4.0) -> np.ndarray:
    return _normalise(_blur(rng.standard_normal(shape), feature))


def _dead_leaves(shape, rng) -> np.ndarray:
    H, W = shape
    r_min, r_max = 2.0, max(3.0, 0.12 * min(H, W))
    n = min(20000, int(4 * H * W / (math.pi * (2 * r_min) ** 2)))
    # radii ~ r^-3 on [r_min, r_max] (scale invariance), by inverse transform sampling
    u = rng.random(n)
    radii = (r_min ** -2 - u * (r_min ** -2 - r_max ** -2)) ** -0.5
    centres = rng.random((n, 2)) * (H, W)
    grey = rng.random(n)
    img = np.full(shape, 0.5)
    for (cy, cx), r, g in zip(centres, radii, grey):  # one small box per leaf, back to front
        y0, y1 = max(int(cy - r), 0), min(int(cy + r) + 2, H)
        x0, x1 = max(int(cx - r), 0), min(int(cx + r) + 2, W)
        yy, xx = np.ogrid[y0:y1, x0:x1]
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        img[y0:y1, x0:x1][mask] = g
    return _normalise(_blur(img, 0.7))


def _siemens_star(shape, spokes: int = 36) -> np.ndarray:
    H, W = shape
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    dy, dx = yy - H / 2, xx - W / 2
    r = np.hypot(dy, dx)
    star = (np.sin(spokes / 2 * np.arctan2(dy, dx)) > 0) & (r < 0.45 * min(H, W)) & (r > 2)
    return _normalise(_blur(star.astype(np.float64), 0.5))


def _coverage(i: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Fraction of each unit pixel [i, i+1) covered by the interval [lo, hi): antialiased
    edges at sub-pixel positions instead of a staircase."""
    return np.clip(np.minimum(i + 1, hi) - np.maximum(i, lo), 0.0, 1.0)


def _fine_lines(shape, rng) -> np.ndarray:
    """Straight lines 1, 1.5, 2 and 3 px wide at spread-out angles, antialiased, unblurred."""
    H, W = shape
    yy, xx = np.mgrid[0:H, 0:W] + 0.5                        # pixel centres
    img = np.zeros(shape)
    n = max(6, int(H * W / 1500))
    for k in range(n):
        width = (1.0, 1.5, 2.0, 3.0)[k % 4]
        angle = (k * 0.61803 + 0.1 * rng.random()) * math.pi  # golden-ratio spread of angles
        half = 0.3 * min(H, W) * (0.6 + 0.4 * rng.random())
        cy, cx = rng.random(2) * (H, W)
        uy, ux = math.sin(angle), math.cos(angle)
        along = np.clip((yy - cy) * uy + (xx - cx) * ux, -half, half)
        dist = np.hypot(yy - cy - along * uy, xx - cx - along * ux)
        img = np.maximum(img, np.clip(width / 2 + 0.5 - dist, 0.0, 1.0))
    return img


def _discs(shape, rng) -> np.ndarray:
    """Filled discs of radii 1 to ~10 px and random grey levels, placed without overlap
    (largest first), antialiased."""
    H, W = shape
    yy, xx = np.mgrid[0:H, 0:W] + 0.5
    img = np.zeros(shape)
    placed = []
    radii = [r for r in (10.0, 6.0, 4.0, 2.5, 1.5, 1.0) if 2 * r + 2 <= min(H, W)]
    for r in radii * max(1, int(H * W / 3000)):
        for _ in range(50):                                   # a few tries, then give up
            cy, cx = r + 1 + rng.random(2) * (H - 2 * r - 2, W - 2 * r - 2)
            if all(math.hypot(cy - y, cx - x) > r + q + 2 for y, x, q in placed):
                placed.append((cy, cx, r))
                disc = np.clip(r + 0.5 - np.hypot(yy - cy, xx - cx), 0.0, 1.0)
                img = np.maximum(img, (0.4 + 0.6 * rng.random()) * disc)
                break
    return img


def _bar_target(shape, periods=(8, 6, 4, 3, 2)) -> np.ndarray:
    """USAF-like resolution target: for each period (px) a group of three vertical and
    three horizontal bars of width period/2, groups in decreasing period laid out like
    text (left to right, wrapping) and repeated until the cell is full; a group too big
    for the cell is left out, so small cells still get the finest periods."""
    H, W = shape
    img = np.zeros(shape)
    gap = 3
    y, x, line_h = gap, gap, 0
    i = np.arange(max(H, W), dtype=np.float64)
    while True:
        placed = 0
        for p in periods:
            size = int(math.ceil(2.5 * p))                    # three bars: 2 periods + a bar
            if x + 2 * size + gap > W:                        # next line
                y, x, line_h = y + line_h + gap, gap, 0
            if y + size > H or x + 2 * size + gap > W:
                continue
            bars = sum(_coverage(i[:size], k * p, k * p + p / 2) for k in range(3))
            img[y:y + size, x:x + size] = bars[None, :]         # vertical bars: vary along columns
            img[y:y + size, x + size + gap:x + 2 * size + gap] = bars[:, None]  # horizontal bars
            x, line_h, placed = x + 2 * size + 2 * gap, max(line_h, size), placed + 1
        if not placed:
            return img


def _mixed(shape, rng) -> np.ndarray:
    """A realistic test chart: fine lines, a bar target and a Siemens star on top; discs
    and dead leaves below, in cells of unequal size (no mirror symmetry as a whole)."""
    H, W = shape
    r = int(0.45 * H)
    top = [0, int(0.3 * W), int(0.62 * W), W]
    bottom = [0, int(0.38 * W), W]
    img = np.zeros(shape)
    for (c0, c1), make in zip(zip(top, top[1:]), (lambda s: _fine_lines(s, rng), _bar_target, _siemens_star)):
        img[:r, c0:c1] = make((r, c1 - c0))
    img[r:, :bottom[1]] = _discs((H - r, bottom[1]), rng)
    img[r:, bottom[1]:] = _dead_leaves((H - r, W - bottom[1]), rng)
    return np.clip(img, 0.0, 1.0)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """A 2-D real image scaled to [0, 1]: .npy (no pickle) or any format Pillow reads
    (PNG, TIFF, JPEG, ...; colour becomes luminance)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such image file")
    if path.suffix.lower() == ".npy":
        try:
            img = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise UserError(f"{path}: not a readable .npy array ({exc})") from None
    else:
        try:
            from PIL import Image, UnidentifiedImageError
        except ImportError:
            raise UserError(f"{path}: reading images other than .npy needs Pillow "
                            "(pip install Pillow)") from None
        try:
            with Image.open(path) as im:
                img = np.asarray(im.convert("F"), dtype=np.float64)
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise UserError(f"{path}: not a readable image ({exc})") from None
    if img.ndim == 3 and img.shape[-1] in (3, 4):
        img = img[..., :3].mean(axis=-1)
    if img.ndim != 2 or min(img.shape) < 2 or np.iscomplexobj(img) or not np.issubdtype(img.dtype, np.number):
        raise UserError(f"{path}: expected a 2-D real image, got {img.dtype} of shape {img.shape}")
    img = img.astype(np.float64)
    if not np.isfinite(img).all():
        raise UserError(f"{path}: image contains NaN or Inf")
    return _normalise(img)


def _resize(img: np.ndarray, shape) -> np.ndarray:
    if img.shape == tuple(shape):
        return img
    t = torch.as_tensor(img, dtype=torch.float64)[None, None]
    out = torch.nn.functional.interpolate(t, size=tuple(shape), mode="bilinear", align_corners=False,
                                          antialias=True)
    return out[0, 0].numpy()


def make_object(kind: str, shape, rng=None, amp_contrast: float = 0.5, phase_max: float = math.pi / 2,
                amplitude_image=None, phase_image=None) -> np.ndarray:
    """(H, W) complex64 object: ``amplitude = 1 - amp_contrast * f``, ``phase = phase_max * f``
    for a feature map f in [0, 1] of the given kind. For 'image', f comes from the image
    files (resized to ``shape``); a missing one leaves amplitude 1 or phase 0."""
    rng = np.random.default_rng(rng)
    shape = tuple(int(s) for s in shape)
    if kind == "image":
        fa = None if amplitude_image is None else _resize(read_image(amplitude_image), shape)
        fp = None if phase_image is None else _resize(read_image(phase_image), shape)
        amp = np.ones(shape) if fa is None else 1 - amp_contrast * (1 - fa)  # white transmits
        phase = np.zeros(shape) if fp is None else phase_max * fp
    else:
        f = {"lines": lambda: _lines(shape, rng), "random": lambda: _random_field(shape, rng),
             "deadleaves": lambda: _dead_leaves(shape, rng),
             "siemens": lambda: _siemens_star(shape), "mixed": lambda: _mixed(shape, rng)}.get(kind)
        if f is None:
            raise UserError(f"--object: must be one of {', '.join(OBJECT_KINDS)}, got {kind!r}")
        f = f()
        amp, phase = 1 - amp_contrast * f, phase_max * f
    return (amp * np.exp(1j * phase)).astype(np.complex64)


# ----------------------------------------------------------------------------- probes
def _centred_grid(N: int):
    """Pixel offsets from the array centre (N/2, N/2), the fftshift origin."""
    r = np.arange(N) - N / 2
    return np.meshgrid(r, r, indexing="ij")


def _unit(probe: np.ndarray) -> np.ndarray:
    return (probe / np.sqrt(np.sum(np.abs(probe) ** 2))).astype(np.complex64)


def make_probe(kind: str, N: int, diameter: float | None = None, probe_file=None,
               aperture_fraction: float = 0.5) -> np.ndarray:
    """Probe with sum |probe|^2 = 1 (calibrated later), centred at pixel (N/2, N/2).

    * gaussian: intensity FWHM = ``diameter`` pixels, flat phase.
    * aperture: a focusing optic's circular pupil (radius ``aperture_fraction`` of the
      Nyquist frequency) with enough defocus that the geometric beam is ``diameter``
      pixels wide: an Airy-like core with Fresnel fringes, as at a beamline.
    * file: a probe (N, N) or modes (M, N, N) from .npy, or the probe of any dataset file.
    """
    diameter = N / 3 if diameter is None else float(diameter)
    if kind == "gaussian":
        yy, xx = _centred_grid(N)
        sigma = diameter / (2 * math.sqrt(math.log(2)))  # |P|^2 = exp(-r^2/sigma^2)
        return _unit(np.exp(-(yy ** 2 + xx ** 2) / (2 * sigma ** 2)).astype(np.complex128))
    if kind == "aperture":
        uy, ux = _centred_grid(N)                # frequency index, cycles per N pixels
        rho2 = (uy ** 2 + ux ** 2) / (aperture_fraction * N / 2) ** 2
        # defocus phase 2*pi*w*rho^2 displaces edge rays by 2*N*w/r_pupil pixels: choose w
        # so that the geometric diameter 4*N*w/r_pupil is `diameter`
        waves = diameter * (aperture_fraction * N / 2) / (4 * N)
        pupil = (rho2 <= 1) * np.exp(2j * np.pi * waves * rho2)
        field = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(pupil)))
        return _unit(field)
    if kind == "file":
        return _probe_from_file(probe_file, N)
    raise UserError(f"--probe: must be one of {', '.join(PROBE_KINDS)}, got {kind!r}")


def _probe_from_file(path, N: int) -> np.ndarray:
    path = Path(path)
    if path.suffix.lower() == ".npy":
        if not path.is_file():
            raise UserError(f"{path}: no such probe file")
        try:
            probe = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise UserError(f"{path}: not a readable .npy array ({exc})") from None
    else:
        from .data import load_dataset
        probe = load_dataset(path).probe
    if probe.ndim not in (2, 3) or probe.shape[-2:] != (N, N) or not np.issubdtype(probe.dtype, np.number):
        raise UserError(f"{path}: probe must be (N, N) or (M, N, N) numbers with N = {N} (--N), "
                        f"got {probe.dtype} of shape {probe.shape}")
    probe = probe.astype(np.complex128)
    if not np.isfinite(probe).all() or not np.abs(probe).any():
        raise UserError(f"{path}: probe contains NaN/Inf or is zero everywhere")
    return _unit(probe)


def probe_diameter_estimate(probe: np.ndarray) -> float:
    """Intensity FWHM of a Gaussian with the probe's second moment (exact for a Gaussian):
    ``2*sqrt(ln 2)*sqrt(<r^2>)`` about the intensity centroid, in pixels."""
    intensity = (np.abs(probe) ** 2).reshape(-1, *probe.shape[-2:]).sum(axis=0)
    N = intensity.shape[-1]
    yy, xx = _centred_grid(N)
    w = intensity / intensity.sum()
    cy, cx = (w * yy).sum(), (w * xx).sum()
    r2 = (w * ((yy - cy) ** 2 + (xx - cx) ** 2)).sum()
    return float(2 * math.sqrt(math.log(2)) * math.sqrt(r2))


# ----------------------------------------------------------------------------- scans
def make_scan(kind: str, n: int, step: float, jitter: float = 0.0, rng=None) -> np.ndarray:
    """(n, 2) (row, col) probe centres, ``step`` pixels apart (a spiral has the same area per
    point as a raster of that step), Gaussian ``jitter`` (pixels rms), minimum at 0."""
    rng = np.random.default_rng(rng)
    if kind == "raster":
        side = int(math.ceil(math.sqrt(n)))
        k = np.arange(n)
        pos = np.stack([k // side, k % side], axis=-1).astype(np.float64) * step
    elif kind == "spiral":  # Fermat spiral: r = c*sqrt(k), theta = k * golden angle
        k = np.arange(n) + 0.5
        r = step / math.sqrt(math.pi) * np.sqrt(k)
        pos = np.stack([r * np.sin(k * GOLDEN_ANGLE), r * np.cos(k * GOLDEN_ANGLE)], axis=-1)
    else:
        raise UserError(f"--scan: must be one of {', '.join(SCAN_KINDS)}, got {kind!r}")
    if jitter > 0:
        pos = pos + rng.normal(scale=jitter, size=pos.shape)
    return pos - pos.min(axis=0)


def place_scan(scan: np.ndarray, N: int, margin: int = 4, object_size: int | None = None):
    """Shift a scan (minimum at 0) into object pixels so every patch (and the extra pixel
    bilinear interpolation reads) lies ``margin`` pixels inside the object. Returns
    (centres, (H, W)); a given ``object_size`` must be big enough and centres the scan."""
    centres = coords.top_left_to_centres(scan + margin, N)
    need = np.ceil(coords.centres_to_top_left(centres, N).max(axis=0)).astype(int) + N + 1 + margin
    if object_size is None:
        return centres, (int(need[0]), int(need[1]))
    if (need > object_size).any():
        raise UserError(f"--object-size: {object_size} pixels is too small for this scan, which "
                        f"needs {int(need.max())}; use fewer patterns, a smaller step, or omit it")
    shift = np.floor((object_size - need) / 2)
    return centres + shift, (int(object_size), int(object_size))


# ----------------------------------------------------------------------------- forward
def object_patches(obj, centres, N: int) -> torch.Tensor:
    """Object patches (P, N, N) centred at ``centres`` (P, 2) (row, col): the simulator's and
    the model's one way to cut them (``coords`` + ``ops.extract_patches``)."""
    obj_t = torch.as_tensor(obj)
    top_left = torch.as_tensor(coords.centres_to_top_left(np.asarray(centres, dtype=np.float64), N),
                               dtype=obj_t.real.dtype)
    return ops.extract_patches(obj_t, top_left, N)


def _fourier_shift_axis(x: torch.Tensor, frac: torch.Tensor, dim: int) -> torch.Tensor:
    """``x`` (P, ...) translated along ``dim`` by ``frac`` (P,) pixels, band-limited: the
    output at i is the trigonometric interpolant of x at i + frac (bilinear extraction
    reads i + frac too). The axis is mirror-extended first so that the periodic FFT sees
    no jump at the window's ends (a jump would ring into the patch)."""
    L = x.shape[dim]
    ext = torch.cat([x, x.flip(dim)], dim=dim)
    k = torch.fft.fftfreq(2 * L, dtype=torch.float64)                   # cycles per pixel
    # f(x + a) <-> F(k) exp(+2 pi i k a) for torch's forward FFT exp(-2 pi i k x)
    ramp = torch.exp(2j * math.pi * frac.to(torch.float64)[:, None] * k)   # (P, 2L)
    ramp[:, L] = torch.cos(math.pi * frac.to(torch.float64))            # Nyquist: +-k average, real
    shape = [1] * x.dim()
    shape[0], shape[dim] = len(frac), 2 * L
    ramp = ramp.reshape(shape).to(x.dtype)
    shifted = torch.fft.ifft(torch.fft.fft(ext, dim=dim) * ramp, dim=dim)
    return shifted.narrow(dim, 0, L)


def object_patches_fourier(obj, centres, N: int, margin: int = FOURIER_MARGIN) -> torch.Tensor:
    """Object patches (P, N, N) at ``centres`` like :func:`object_patches`, but translated
    by the sub-pixel fraction with a Fourier phase ramp instead of bilinear weights, so a
    reconstruction that extracts bilinearly does not invert the simulator's own model (no
    "inverse crime"). Each patch's integer window plus ``margin`` pixels per side (zero
    outside the object, as ``extract_patches`` reads) is shifted, then cropped to N x N.
    Integer positions give exactly the bilinear patches."""
    obj_t = torch.as_tensor(obj)
    if not obj_t.is_complex():
        obj_t = obj_t.to(torch.complex64)
    H, W = obj_t.shape
    top_left = torch.as_tensor(coords.centres_to_top_left(np.asarray(centres, dtype=np.float64), N),
                               dtype=torch.float64).reshape(-1, 2)
    base = torch.floor(top_left)
    frac = top_left - base                                              # in [0, 1), float64 split
    L = N + 2 * margin
    offsets = torch.arange(L) - margin
    rows = base[:, 0, None].long() + offsets                           # (P, L)
    cols = base[:, 1, None].long() + offsets
    inside = (((rows >= 0) & (rows < H))[:, :, None] & ((cols >= 0) & (cols < W))[:, None, :])
    window = obj_t[rows.clamp(0, H - 1)[:, :, None], cols.clamp(0, W - 1)[:, None, :]] * inside
    # separable: the 2-D ramp exp(2 pi i (ky fy + kx fx)) is a product of 1-D ramps, and
    # shifting columns first lets the row pass work on N instead of L columns
    window = _fourier_shift_axis(window, frac[:, 1], dim=2).narrow(2, margin, N)
    return _fourier_shift_axis(window, frac[:, 0], dim=1).narrow(1, margin, N).contiguous()


FORWARD_PATCHES = {"bilinear": object_patches, "fourier": object_patches_fourier}


def _patch_function(forward: str):
    try:
        return FORWARD_PATCHES[forward]
    except KeyError:
        raise UserError(f"--forward: must be one of {', '.join(FORWARD_KINDS)}, got {forward!r}") from None


def calibrate_probe(obj, probe, centres, photons: float, batch_size: int = 256,
                    forward: str = "bilinear") -> np.ndarray:
    """``probe`` scaled so that the noise-free mean counts per pattern over ``centres`` is
    ``photons``. Parseval: a pattern's total counts equal ``sum |probe * patch|^2`` (over
    modes) in real space, so no FFT is needed; the patches are those of ``forward``, the
    ones the patterns are made from, so the count is exact for either."""
    obj_t = torch.as_tensor(np.asarray(obj, dtype=np.complex64)) if not isinstance(obj, torch.Tensor) else obj
    probe = np.asarray(probe).astype(np.complex64)
    N = probe.shape[-1]
    centres = np.asarray(centres, dtype=np.float64)
    probe_power = torch.as_tensor((np.abs(probe.astype(np.complex128)) ** 2).reshape(-1, N, N).sum(axis=0))
    cut = _patch_function(forward)
    energy = 0.0
    for start in range(0, len(centres), batch_size):
        patches = cut(obj_t, centres[start:start + batch_size], N)
        energy += float((patches.abs().double() ** 2 * probe_power).sum())
    if not energy > 0:
        raise UserError("simulate: the probe sees no signal (the object is zero under every position)")
    return (probe * np.sqrt(photons * len(centres) / energy)).astype(np.complex64)


def simulate_diffraction(obj, probe, centres, photons: float | None = None, rng=None, noise: bool = True,
                         batch_size: int = 256, progress: Progress | None = None, sink=None,
                         forward: str = "bilinear"):
    """Diffraction amplitudes for ``obj`` (H, W) under ``probe`` (N, N)/(M, N, N) at ``centres``,
    from patches cut by ``forward`` ('bilinear': :func:`object_patches`, 'fourier':
    :func:`object_patches_fourier`).

    ``photons`` set: the probe is first scaled so the noise-free mean counts per pattern is
    ``photons``; None keeps the probe as given. ``noise``: Poisson counts, else the exact
    amplitude. ``sink(start, block)`` receives each block instead of returning the stack.
    Returns (amplitudes (P, N, N) float32 or None with a sink, the probe used (complex64)).
    """
    rng = np.random.default_rng(rng)
    cut = _patch_function(forward)
    obj_t = torch.as_tensor(np.asarray(obj, dtype=np.complex64))
    centres = np.asarray(centres, dtype=np.float64)
    if photons is not None:
        probe = calibrate_probe(obj_t, probe, centres, photons, batch_size, forward)
    probe = np.asarray(probe).astype(np.complex64)
    N, P = probe.shape[-1], len(centres)
    probe_t = torch.as_tensor(probe)
    out = None if sink is not None else np.empty((P, N, N), np.float32)
    for start in range(0, P, batch_size):
        patches = cut(obj_t, centres[start:start + batch_size], N)
        amp = physics.diffraction_amplitude(patches, probe_t).numpy()
        if noise:
            counts = rng.poisson(np.square(amp, dtype=np.float64))
            amp = np.sqrt(counts, dtype=np.float64)
        block = amp.astype(np.float32)
        if sink is not None:
            sink(start, block)
        else:
            out[start:start + len(block)] = block
        if progress is not None:
            progress.update(len(block))
    return out, probe


# ----------------------------------------------------------------------------- driver
@dataclass
class _Inputs:
    obj: np.ndarray
    probe: np.ndarray
    centres: np.ndarray
    step: float
    noise_rng: np.random.Generator
    seed: int


def _build_inputs(config: SimulationConfig, seed: int | None) -> _Inputs:
    config.validate()
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2 ** 63))
    obj_ss, scan_ss, noise_ss = np.random.SeedSequence(int(seed)).spawn(3)
    probe = make_probe(config.probe, config.N, config.diameter, config.probe_file)
    diameter = config.diameter if config.probe != "file" else probe_diameter_estimate(probe)
    step = config.step if config.step is not None else (1 - config.overlap) * diameter
    if not step > 0:
        raise UserError(f"--overlap {config.overlap} leaves no step for a {diameter:.1f} px probe; give --step")
    scan = make_scan(config.scan, config.n_patterns, step, config.jitter, np.random.default_rng(scan_ss))
    centres, shape = place_scan(scan, config.N, config.margin, config.object_size)
    obj = make_object(config.object, shape, np.random.default_rng(obj_ss), config.amp_contrast,
                      config.phase_max, config.amplitude_image, config.phase_image)
    return _Inputs(obj, probe, centres, float(step), np.random.default_rng(noise_ss), int(seed))


def _metadata(config: SimulationConfig) -> Metadata:
    # the probe is always calibrated to --photons (calibrate_probe): say so in the file, so
    # that training's --probe-gain auto uses g = 1 without guessing
    return Metadata(photons_per_pattern=float(config.photons), pixel_size_m=config.pixel_size_m,
                    energy_eV=config.energy_eV, distance_m=config.distance_m, probe_calibrated=1.0)


def simulate(config: SimulationConfig | None = None, seed: int | None = None, progress: bool = False,
             **overrides) -> PtychoDataset:
    """Simulate a dataset in memory. ``overrides`` replace fields of ``config``."""
    config = dataclasses.replace(config or SimulationConfig(), **overrides)
    inp = _build_inputs(config, seed)
    with Progress(config.n_patterns, "simulate", enabled=None if progress else False, unit="pat") as bar:
        amps, probe = simulate_diffraction(inp.obj, inp.probe, inp.centres, config.photons, inp.noise_rng,
                                           config.noise, config.batch_size, bar, forward=config.forward)
    ds = PtychoDataset(diffraction=amps, positions=inp.centres, probe=probe, object=inp.obj,
                       metadata=_metadata(config), source="<simulated>")
    return ds


def simulate_to_file(config: SimulationConfig, path, fmt: str = "npz", seed: int | None = None,
                     progress: bool = True, preview=None) -> str:
    """Simulate straight into ``path`` ('npz' or 'h5'; h5 streams block by block, so big
    simulations need not fit in memory), atomically. Returns a one-line summary."""
    from .data import H5DatasetWriter, write_npz
    t0 = time.perf_counter()
    inp = _build_inputs(config, seed)
    meta = _metadata(config)
    bar = Progress(config.n_patterns, "simulate", enabled=None if progress else False, unit="pat")
    with bar:
        if fmt == "h5":  # calibrate first (the writer stores the final probe), then stream
            probe = calibrate_probe(inp.obj, inp.probe, inp.centres, config.photons, config.batch_size,
                                    config.forward)
            with H5DatasetWriter(path, inp.centres, probe, inp.obj, meta) as writer:
                simulate_diffraction(inp.obj, probe, inp.centres, None, inp.noise_rng, config.noise,
                                     config.batch_size, bar, sink=writer.write, forward=config.forward)
            first = None
        else:
            amps, probe = simulate_diffraction(inp.obj, inp.probe, inp.centres, config.photons,
                                               inp.noise_rng, config.noise, config.batch_size, bar,
                                               forward=config.forward)
            ds = PtychoDataset(diffraction=amps, positions=inp.centres, probe=probe, object=inp.obj,
                               metadata=meta, source="<simulated>")
            write_npz(ds, path)
            first = amps[:4]
    if preview is not None:
        if first is None:
            from .data import read_h5
            with read_h5(path, lazy=True) as ds:
                first = ds.diffraction[:4]
        save_preview(preview, inp.obj, probe, inp.centres, first)
    H, W = inp.obj.shape
    how = f"step {inp.step:.2f}px" if config.step is not None else f"step {inp.step:.2f}px (overlap {config.overlap:.2f})"
    noise = f"{config.photons:.3g} photons/pattern" + ("" if config.noise else " (no noise)")
    return (f"wrote {path}: {config.n_patterns} patterns N={config.N}, object {H}x{W} ({config.object}), "
            f"probe {config.probe}, {config.scan} scan {how}, {config.forward} forward, {noise}, seed {inp.seed} "
            f"[{time.perf_counter() - t0:.1f} s]")


# ----------------------------------------------------------------------------- preview
def save_preview(path, obj, probe, centres, patterns) -> None:
    """PNG of object amplitude, object phase with the scan, probe amplitude, and up to four
    diffraction patterns (log scale). Uses matplotlib when installed, else a plain mosaic
    (same panels, no labels) written with Pillow. Written atomically."""
    path = Path(path)
    probe2 = np.sqrt((np.abs(probe) ** 2).reshape(-1, *probe.shape[-2:]).sum(axis=0))
    patterns = np.asarray(patterns)[:4]
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _save_mosaic(path, obj, probe2, centres, patterns)
        return
    fig, axes = plt.subplots(2, 4, figsize=(13, 6.5))
    a = axes[0]
    im = a[0].imshow(np.abs(obj), cmap="gray"); a[0].set_title("object amplitude"); fig.colorbar(im, ax=a[0])
    im = a[1].imshow(np.angle(obj), cmap="twilight"); a[1].set_title("object phase + scan")
    fig.colorbar(im, ax=a[1])
    a[1].plot(centres[:, 1], centres[:, 0], ".", ms=1.5, color="tab:orange")
    im = a[2].imshow(probe2, cmap="magma"); a[2].set_title("probe amplitude"); fig.colorbar(im, ax=a[2])
    im = a[3].imshow(np.angle(probe.reshape(-1, *probe.shape[-2:])[0]), cmap="twilight")
    a[3].set_title("probe phase"); fig.colorbar(im, ax=a[3])
    for i, ax in enumerate(axes[1]):
        if i < len(patterns):
            im = ax.imshow(np.log10(1 + patterns[i] ** 2), cmap="viridis")
            ax.set_title(f"pattern {i}: log10(1+counts)")
            fig.colorbar(im, ax=ax)
        else:
            ax.axis("off")
    fig.tight_layout()
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            fig.savefig(f, format="png", dpi=80)
    plt.close(fig)


def _to_u8(img: np.ndarray, size: int) -> np.ndarray:
    img = _resize(np.asarray(img, dtype=np.float64), (size, size))
    return (255 * _normalise(img)).astype(np.uint8)


def _save_mosaic(path: Path, obj, probe_amp, centres, patterns, size: int = 192) -> None:
    from PIL import Image
    H, W = obj.shape
    phase = np.angle(obj).astype(np.float64)
    scan = np.zeros((H, W))
    r = np.clip(np.rint(centres[:, 0]).astype(int), 0, H - 1)
    c = np.clip(np.rint(centres[:, 1]).astype(int), 0, W - 1)
    scan[r, c] = 1
    panels = [_to_u8(np.abs(obj), size), _to_u8(phase, size), _to_u8(probe_amp, size),
              (255 * (_resize(scan, (size, size)) > 0)).astype(np.uint8)]
    panels += [_to_u8(np.log10(1 + p.astype(np.float64) ** 2), size) for p in patterns]
    panels += [np.zeros((size, size), np.uint8)] * (8 - len(panels))
    gap = np.full((size, 4), 128, np.uint8)
    rows = [np.hstack(sum(([p, gap] for p in panels[i:i + 4]), [])[:-1]) for i in (0, 4)]
    img = np.vstack([rows[0], np.full((4, rows[0].shape[1]), 128, np.uint8), rows[1]])
    with atomic_output(path) as tmp:  # the temporary's suffix is .tmp: name the format
        Image.fromarray(img).save(tmp, format="PNG")


# ----------------------------------------------------------------------------- CLI
CLI_HELP = "simulate a dataset (object, probe, scan, Poisson noise) into an NPZ or HDF5 file"
CLI_DESCRIPTION = """\
Simulate a ptychography dataset with its ground truth and write it as a PtychoPINN NPZ
(default) or our HDF5 layout. Positions are probe centres in object pixels (xcoords =
column, ycoords = row); diffraction is sqrt(counts), fftshifted; the stored probe is
calibrated so that the mean counts per pattern equal --photons (docs/data.md)."""


def add_cli_arguments(p: argparse.ArgumentParser) -> None:
    d = SimulationConfig()
    out = p.add_argument_group("output")
    out.add_argument("--out", "-o", required=True, metavar="FILE",
                     help="output file (.npz or .h5); written atomically")
    out.add_argument("--format", choices=("npz", "h5"), default=None,
                     help="file format (default: from the --out suffix; npz if it has none)")
    out.add_argument("--seed", type=int, default=None,
                     help="random seed for object, scan and noise (default: fresh; the summary prints it)")
    out.add_argument("--preview", metavar="PNG", default=None,
                     help="also save a PNG of object, probe, scan positions and a few patterns")
    out.add_argument("--quiet", "-q", action="store_true", help="no progress bar and no summary line")

    g = p.add_argument_group("size and dose")
    g.add_argument("--N", "-N", type=int, default=d.N, metavar="N",
                   help="pattern and probe size in pixels, even (64 or 128 for the models) (default: %(default)s)")
    g.add_argument("--n-patterns", "-n", type=int, default=d.n_patterns, metavar="P",
                   help="number of diffraction patterns (default: %(default)s)")
    g.add_argument("--photons", type=float, default=d.photons,
                   help="mean counts per pattern; the probe is calibrated to it (default: %(default)g)")
    g.add_argument("--no-noise", action="store_true", help="exact amplitudes instead of Poisson counts")
    g.add_argument("--forward", choices=FORWARD_KINDS, default=d.forward,
                   help="how sub-pixel object patches are cut: bilinear (the models' own extraction) or "
                        "fourier (phase-ramp shift: no inverse crime for bilinear reconstructions) "
                        "(default: %(default)s)")

    o = p.add_argument_group("object")
    o.add_argument("--object", choices=OBJECT_KINDS, default=None,
                   help=f"object kind; 'image' uses --amplitude-image/--phase-image (default: {d.object}, "
                        "or image when an image is given)")
    o.add_argument("--amplitude-image", metavar="PATH", default=None,
                   help="image (.npy, or PNG/TIFF/JPEG with Pillow) for the amplitude: white = 1, "
                        "black = 1 - amp-contrast; implies --object image")
    o.add_argument("--phase-image", metavar="PATH", default=None,
                   help="image for the phase: black = 0, white = phase-max; implies --object image")
    o.add_argument("--object-size", type=int, default=None, metavar="PX",
                   help="object side in pixels (default: just big enough for the scan)")
    o.add_argument("--amp-contrast", type=float, default=d.amp_contrast,
                   help="amplitude = 1 - amp-contrast * feature (default: %(default)s)")
    o.add_argument("--phase-max", type=float, default=d.phase_max,
                   help="phase = phase-max * feature, radians (default: %(default).4f)")

    pr = p.add_argument_group("probe")
    pr.add_argument("--probe", choices=PROBE_KINDS, default=None,
                    help=f"aperture: circular pupil + defocus; gaussian; file: --probe-file (default: "
                         f"{d.probe}, or file when --probe-file is given)")
    pr.add_argument("--probe-file", metavar="PATH", default=None,
                    help="probe from a .npy (N,N)/(M,N,N) complex array or any dataset file; implies --probe file")
    pr.add_argument("--probe-diameter", type=float, default=None, metavar="PX",
                    help="probe diameter in pixels: Gaussian intensity FWHM, or the aperture "
                         "probe's defocused beam width (default: N/3)")

    s = p.add_argument_group("scan")
    s.add_argument("--scan", choices=SCAN_KINDS, default=d.scan,
                   help="raster (row by row) or Fermat spiral (default: %(default)s)")
    s.add_argument("--step", type=float, default=None, metavar="PX",
                   help="scan step in pixels (spiral: same area per point) (default: from --overlap)")
    s.add_argument("--overlap", type=float, default=d.overlap,
                   help="step = (1 - overlap) * probe diameter, when --step is not given (default: %(default)s)")
    s.add_argument("--jitter", type=float, default=d.jitter, metavar="PX",
                   help="Gaussian position jitter, pixels rms (default: %(default)s)")

    m = p.add_argument_group("metadata (recorded in the file; the simulation works in pixels)")
    m.add_argument("--pixel-size", type=float, default=d.pixel_size_m, metavar="M",
                   help="object pixel size in metres (default: %(default)g)")
    m.add_argument("--energy", type=float, default=d.energy_eV, metavar="EV",
                   help="photon energy in eV (default: %(default)g)")
    m.add_argument("--distance", type=float, default=d.distance_m, metavar="M",
                   help="sample-detector distance in metres (default: %(default)g)")


def cli_main(args: argparse.Namespace) -> int:
    from .data import format_from_suffix
    fmt_suffix = format_from_suffix(args.out)
    fmt = args.format or fmt_suffix or "npz"
    if args.format and fmt_suffix and fmt_suffix != args.format:
        raise UserError(f"--format {args.format} does not match the --out suffix {Path(args.out).suffix}")
    for option, target in (("--out", args.out), ("--preview", args.preview)):
        if target is not None:
            folder = Path(target).parent
            if not folder.is_dir():
                raise UserError(f"{option} {target}: directory {folder} does not exist")
            if Path(target).is_dir():
                raise UserError(f"{option} {target}: is a directory, expected a file name")
    obj_kind = args.object or ("image" if args.amplitude_image or args.phase_image else SimulationConfig.object)
    probe_kind = args.probe or ("file" if args.probe_file else SimulationConfig.probe)
    config = SimulationConfig(
        N=args.N, n_patterns=args.n_patterns, photons=args.photons, noise=not args.no_noise,
        object=obj_kind, amplitude_image=args.amplitude_image, phase_image=args.phase_image,
        object_size=args.object_size, amp_contrast=args.amp_contrast, phase_max=args.phase_max,
        probe=probe_kind, probe_file=args.probe_file, probe_diameter=args.probe_diameter,
        scan=args.scan, step=args.step, overlap=args.overlap, jitter=args.jitter,
        pixel_size_m=args.pixel_size, energy_eV=args.energy, distance_m=args.distance, forward=args.forward)
    summary = simulate_to_file(config, args.out, fmt, seed=args.seed, progress=not args.quiet,
                               preview=args.preview)
    if not args.quiet:
        print(summary + (f"; preview {args.preview}" if args.preview else ""))
    return 0
