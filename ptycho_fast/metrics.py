"""Image-quality metrics for reconstructions (docs/evaluation.md).

Plain numpy/scipy, float64 throughout, no torch. Every function takes real 2-D arrays
unless it says otherwise and raises ``ValueError`` with a message that names the argument
on bad input.

The public API is stable: ``ssim(a, b, data_range=None) -> float`` is called by
``ptycho-fast infer`` as well as by ``evaluate`` and ``compare``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

__all__ = [
    "ssim", "ssim_map", "mae", "rmse", "psnr", "FRCResult", "frc", "frc_resolution",
    "half_bit_threshold", "ONE_SEVENTH", "PhaseAlignment", "align_phase", "wrap_phase",
    "phase_relative_to", "register", "shift_image", "match_amplitude_scale", "scan_region",
    "scan_mask", "bounding_box", "illumination_map", "illuminated_region", "largest_rectangle",
    "ILLUMINATION_FLOOR",
]

# Wang, Bovik, Sheikh & Simoncelli (2004), "Image quality assessment: from error
# visibility to structural similarity", IEEE TIP 13(4): Gaussian window sigma = 1.5,
# K1 = 0.01, K2 = 0.03. The window is truncated at 3.5 sigma (radius 5, 11 x 11 as in the
# paper), normalised to sum 1.
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
SSIM_TRUNCATE = 3.5
SSIM_RADIUS = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)  # = 5 -> 11 x 11 window


def _real_2d(x, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if np.iscomplexobj(arr):
        raise ValueError(f"{name} must be a real array, got complex dtype {arr.dtype} "
                         "(pass the amplitude or the phase)")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
            or arr.dtype == bool):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _pair_2d(a, b, names=("a", "b")) -> tuple[np.ndarray, np.ndarray]:
    a = _real_2d(a, names[0])
    b = _real_2d(b, names[1])
    if a.shape != b.shape:
        raise ValueError(f"{names[0]} and {names[1]} must have the same shape, got {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError(f"{names[0]} and {names[1]} are empty")
    return a, b


def _data_range(a: np.ndarray, b: np.ndarray, data_range) -> float:
    if data_range is not None:
        dr = float(data_range)
        if not math.isfinite(dr) or dr <= 0:
            raise ValueError(f"data_range must be a positive finite number, got {data_range!r}")
        return dr
    dr = float(a.max() - a.min())
    if dr > 0:
        return dr
    # A constant truth has no range of its own: fall back to the range of both images,
    # then to 1 (two identical constants then score exactly 1).
    dr = float(max(a.max(), b.max()) - min(a.min(), b.min()))
    return dr if dr > 0 else 1.0


def ssim_map(a, b, data_range=None) -> np.ndarray:
    """Local SSIM values (H - 10, W - 10) of real 2-D images ``a`` (truth) and ``b``.

    ``SSIM = (2 mu_a mu_b + C1)(2 cov_ab + C2) / ((mu_a² + mu_b² + C1)(var_a + var_b + C2))``
    with Gaussian-weighted local means/variances/covariance (sigma 1.5, 11 x 11 window,
    population moments as in Wang et al. 2004), ``C1 = (K1 L)²``, ``C2 = (K2 L)²``,
    ``L = data_range``. Only windows that lie fully inside the image are kept ("valid").
    """
    a, b = _pair_2d(a, b)
    win = 2 * SSIM_RADIUS + 1
    if min(a.shape) < win:
        raise ValueError(f"SSIM needs images of at least {win} x {win} pixels (the Gaussian "
                         f"window), got {a.shape}")
    L = _data_range(a, b, data_range)
    c1 = (SSIM_K1 * L) ** 2
    c2 = (SSIM_K2 * L) ** 2

    def filt(x):
        return ndimage.gaussian_filter(x, sigma=SSIM_SIGMA, truncate=SSIM_TRUNCATE, mode="reflect")

    mu_a, mu_b = filt(a), filt(b)
    # Remove the means before forming second moments: the variance of amplitudes ~1e4
    # with small spread would otherwise cancel catastrophically.
    ca, cb = a - a.mean(), b - b.mean()
    m_a, m_b = mu_a - a.mean(), mu_b - b.mean()
    var_a = filt(ca * ca) - m_a * m_a
    var_b = filt(cb * cb) - m_b * m_b
    cov = filt(ca * cb) - m_a * m_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    r = SSIM_RADIUS
    return s[r:-r, r:-r]


def ssim(a, b, data_range=None) -> float:
    """Mean structural similarity of real 2-D images ``a`` (the truth) and ``b``.

    Gaussian-window SSIM of Wang et al. (2004): sigma 1.5, K1 0.01, K2 0.03, the mean of
    :func:`ssim_map` over all windows that fit inside the image. Identical to
    ``skimage.metrics.structural_similarity(a, b, data_range=L, gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False)``. ``data_range`` L defaults to
    ``a.max() - a.min()`` (the range of the truth; if ``a`` is constant, the range of both
    images, then 1). Returns 1.0 for identical images; images need at least 11 x 11 pixels.
    """
    return float(np.mean(ssim_map(a, b, data_range)))


# ----------------------------------------------------------------------------- pixel errors
def mae(a, b) -> float:
    """Mean absolute error ``mean |a - b|`` of real 2-D arrays of one shape."""
    a, b = _pair_2d(a, b)
    return float(np.mean(np.abs(a - b)))


def rmse(a, b) -> float:
    """Root-mean-square error ``sqrt(mean (a - b)²)``."""
    a, b = _pair_2d(a, b)
    return float(np.sqrt(np.mean((a - b) ** 2)))


def psnr(a, b, data_range=None) -> float:
    """Peak signal-to-noise ratio in dB: ``10 log10(L² / mean (a - b)²)``, ``L = data_range``
    (default: the range of ``a``, the truth, as in :func:`ssim`). ``inf`` for identical images."""
    a, b = _pair_2d(a, b)
    L = _data_range(a, b, data_range)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return math.inf
    return float(10.0 * math.log10(L * L / mse))


# ----------------------------------------------------------------------------- FRC
#: the fixed 1/7 threshold (Rosenthal & Henderson 2003, for FSC between half data sets)
ONE_SEVENTH = 1.0 / 7.0


def half_bit_threshold(n_pixels) -> np.ndarray:
    """The 1/2-bit information threshold of van Heel & Schatz (2005) for rings of
    ``n_pixels`` Fourier pixels: ``(0.2071 + 1.9102/sqrt(n)) / (1.2071 + 0.9102/sqrt(n))``."""
    n = np.maximum(np.asarray(n_pixels, dtype=np.float64), 1.0)
    r = 1.0 / np.sqrt(n)
    return (0.2071 + 1.9102 * r) / (1.2071 + 0.9102 * r)


class FRCResult:
    """Fourier ring correlation of two images.

    Attributes (arrays over rings k = 0 .. K, ring 0 is the zero frequency):
    ``frequency`` (cycles per pixel, k / min(H, W); Nyquist is 0.5), ``frc``,
    ``n_pixels`` (Fourier pixels per ring), ``half_bit`` (threshold per ring); and for
    each threshold (``"half_bit"``, ``"one_seventh"``) the crossing frequency, the
    half-period resolution in pixels and the fraction of Nyquist, via :meth:`resolution`.
    """

    def __init__(self, frequency, frc, n_pixels):
        self.frequency = np.asarray(frequency, dtype=np.float64)
        self.frc = np.asarray(frc, dtype=np.float64)
        self.n_pixels = np.asarray(n_pixels, dtype=np.int64)
        self.half_bit = half_bit_threshold(self.n_pixels)
        self.one_seventh = np.full_like(self.frequency, ONE_SEVENTH)

    def threshold(self, name: str) -> np.ndarray:
        if name == "half_bit":
            return self.half_bit
        if name == "one_seventh":
            return self.one_seventh
        raise ValueError(f"threshold must be 'half_bit' or 'one_seventh', got {name!r}")

    def resolution(self, name: str = "half_bit") -> dict:
        """``{"frequency": f_c, "resolution_px": 1 / (2 f_c), "fraction_of_nyquist": f_c / 0.5,
        "crossed": bool}`` for threshold ``name`` (see :func:`frc_resolution`)."""
        return frc_resolution(self.frequency, self.frc, self.threshold(name))

    def mean(self) -> float:
        """Mean FRC over rings 1 .. Nyquist (ring 0, the mean value, excluded; NaN rings skipped)."""
        v = self.frc[1:]
        v = v[np.isfinite(v)]
        return float(v.mean()) if v.size else math.nan

    def to_dict(self) -> dict:
        return {"frequency": self.frequency.tolist(), "frc": _finite_or_none(self.frc),
                "n_pixels": self.n_pixels.tolist(), "half_bit": self.half_bit.tolist(),
                "one_seventh": ONE_SEVENTH}


def _finite_or_none(values) -> list:
    return [float(v) if math.isfinite(v) else None for v in np.asarray(values, dtype=np.float64)]


def _tukey(n: int, alpha: float) -> np.ndarray:
    """scipy.signal.windows.tukey(n, alpha) (cosine edges over alpha/2 of each side),
    without importing scipy.signal (1 s)."""
    if n < 2 or alpha <= 0:
        return np.ones(n)
    x = np.arange(n) / (n - 1)
    w = np.ones(n)
    lo = x < alpha / 2
    hi = x > 1 - alpha / 2
    w[lo] = 0.5 * (1 + np.cos(np.pi * (2 * x[lo] / alpha - 1)))
    w[hi] = 0.5 * (1 + np.cos(np.pi * (2 * x[hi] / alpha - 2 / alpha + 1)))
    return w


def _tukey_2d(shape, taper: float) -> np.ndarray:
    return np.outer(_tukey(shape[0], 2 * taper), _tukey(shape[1], 2 * taper))


def frc(a, b, taper: float = 0.1) -> FRCResult:
    """Fourier ring correlation of real 2-D images ``a`` and ``b`` (same shape, >= 8 x 8).

    Each image has its mean removed and is multiplied by a 2-D Tukey window whose cosine
    edges take ``taper`` of each side (0 = none; the taper stops the crop's edges, which
    both images share, from correlating at every frequency). Then, with ``F = fft2``::

        FRC(k) = Re Σ_ring F_a conj(F_b) / sqrt(Σ_ring |F_a|² · Σ_ring |F_b|²)

    over ring k = all frequencies with ``round(|f| · min(H, W)) == k``, ``|f|`` the radial
    frequency in cycles per pixel, for k = 0 .. min(H, W) // 2 (Nyquist). A ring where
    either spectrum vanishes (below 1e-24 of its total power: round-off) is NaN. An image
    with itself gives 1 in every (defined) ring.
    """
    a, b = _pair_2d(a, b)
    if min(a.shape) < 8:
        raise ValueError(f"FRC needs images of at least 8 x 8 pixels, got {a.shape}")
    if not 0 <= taper < 0.5:
        raise ValueError(f"taper must be in [0, 0.5), got {taper}")
    win = _tukey_2d(a.shape, taper)
    fa = np.fft.fft2((a - a.mean()) * win)
    fb = np.fft.fft2((b - b.mean()) * win)
    H, W = a.shape
    n = min(H, W)
    fy = np.fft.fftfreq(H)[:, None]
    fx = np.fft.fftfreq(W)[None, :]
    ring = np.rint(np.sqrt(fy ** 2 + fx ** 2) * n).astype(np.int64)
    K = n // 2
    keep = ring <= K
    idx = ring[keep]
    cross = np.bincount(idx, weights=(fa * np.conj(fb)).real[keep], minlength=K + 1)
    pa = np.bincount(idx, weights=(np.abs(fa) ** 2)[keep], minlength=K + 1)
    pb = np.bincount(idx, weights=(np.abs(fb) ** 2)[keep], minlength=K + 1)
    counts = np.bincount(idx, minlength=K + 1)
    denom = np.sqrt(pa * pb)
    # a ring where either spectrum is zero (below round-off: 1e-24 of the image's power)
    # has no defined correlation
    defined = (pa > 1e-24 * pa.sum()) & (pb > 1e-24 * pb.sum())
    values = np.full(K + 1, np.nan)
    values[defined] = cross[defined] / denom[defined]
    if np.array_equal(a, b):  # exactly 1, not an ulp away
        values[defined] = 1.0
    return FRCResult(np.arange(K + 1) / n, np.clip(values, -1.0, 1.0), counts)


#: a curve that starts below the threshold (the lowest rings disagree: e.g. a slow phase
#: error the data barely constrain) is searched from its first run of FRC_START_RUN rings
#: at or above the threshold, if that run starts below FRC_START_MAX_NYQUIST of Nyquist
FRC_START_RUN = 3
FRC_START_MAX_NYQUIST = 0.1


def frc_resolution(frequency, values, threshold) -> dict:
    """Where an FRC curve first drops below a threshold.

    Searches rings 1 .. K (ring 0 is the mean and always skipped; NaN rings are skipped).
    At the first ring k whose FRC is below the threshold, the crossing frequency ``f_c`` is
    linearly interpolated between rings k-1 and k (at the first searched ring: ``f_c`` = its
    frequency). A curve that never drops below gives ``f_c`` = the last ring (Nyquist) and
    ``crossed = False``. Resolution is the **half-period** ``1 / (2 f_c)`` pixels (1 pixel at
    Nyquist); ``fraction_of_nyquist = f_c / 0.5``.

    Low-frequency deficit: when ring 1 is below the threshold but a run of
    :data:`FRC_START_RUN` rings at or above it starts below :data:`FRC_START_MAX_NYQUIST` of
    Nyquist, the search starts at that run, and ``low_frequency_deficit_to`` (else None)
    gives its frequency: the images agree from there on, but not on the coarsest scales.
    Without that run (a curve that is never correlated) ``f_c`` is ring 1's frequency.
    """
    f = np.asarray(frequency, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    t = np.broadcast_to(np.asarray(threshold, dtype=np.float64), v.shape)
    rings = [k for k in range(1, len(v)) if math.isfinite(v[k])]
    start, deficit_to = 0, None
    if rings and v[rings[0]] < t[rings[0]]:
        for n in range(len(rings) - FRC_START_RUN + 1):
            k = rings[n]
            if f[k] > FRC_START_MAX_NYQUIST * 0.5:
                break
            if all(v[j] >= t[j] for j in rings[n:n + FRC_START_RUN]):
                start, deficit_to = n, float(f[k])
                break
    f_c, crossed = float(f[-1]), False
    prev = None
    for k in rings[start:]:
        d = v[k] - t[k]
        if d < 0:
            crossed = True
            if prev is None:
                f_c = float(f[k])
            else:
                kp, dp = prev
                f_c = float(f[kp] + (f[k] - f[kp]) * dp / (dp - d))
            break
        prev = (k, d)
    f_c = max(f_c, float(f[1]) if len(f) > 1 else f_c)
    return {"frequency": f_c, "resolution_px": 1.0 / (2.0 * f_c), "fraction_of_nyquist": f_c / 0.5,
            "crossed": crossed, "low_frequency_deficit_to": deficit_to}


# ----------------------------------------------------------------------------- phase
def wrap_phase(phi):
    """Angles wrapped into [-pi, pi)."""
    return (np.asarray(phi) + np.pi) % (2 * np.pi) - np.pi


def phase_relative_to(truth, recon) -> np.ndarray:
    """The phase of ``recon`` unwrapped onto the truth's: ``angle(truth) + wrap(angle(recon) -
    angle(truth))``, so a phase near ±pi does not count as a 2 pi error."""
    t = np.asarray(truth)
    r = np.asarray(recon)
    return np.angle(t) + np.angle(r * np.conj(t))


class PhaseAlignment:
    """The phase removed from a reconstruction: ``offset + ramp_row·(y - y0) + ramp_col·(x - x0)``
    radians, ``(y0, x0)`` the centre of the aligned array ((H-1)/2, (W-1)/2)."""

    def __init__(self, offset=0.0, ramp_row=0.0, ramp_col=0.0, shape=(1, 1)):
        self.offset, self.ramp_row, self.ramp_col = float(offset), float(ramp_row), float(ramp_col)
        self.shape = tuple(shape)

    def phase(self, shape=None) -> np.ndarray:
        H, W = self.shape if shape is None else shape
        y = (np.arange(H) - (H - 1) / 2.0)[:, None]
        x = (np.arange(W) - (W - 1) / 2.0)[None, :]
        return self.offset + self.ramp_row * y + self.ramp_col * x

    def to_dict(self) -> dict:
        return {"offset_rad": float(wrap_phase(self.offset)), "ramp_row_rad_per_px": self.ramp_row,
                "ramp_col_rad_per_px": self.ramp_col}


def _complex_2d(x, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got shape {arr.shape}")
    if not np.iscomplexobj(arr):
        raise ValueError(f"{name} must be complex (amplitude·exp(i·phase)), got {arr.dtype}")
    arr = arr.astype(np.complex128, copy=False)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def align_phase(truth, recon, ramp: bool = False, mask=None, iterations: int = 3):
    """Remove the global phase offset (and with ``ramp`` a linear phase ramp) of ``recon``
    relative to ``truth`` (complex (H, W) of one shape). Returns ``(aligned, PhaseAlignment)``
    with ``aligned = recon · exp(-i·model)``.

    With ``z = recon · conj(truth)`` and weights ``w = |z| = |recon|·|truth|`` (the
    amplitude weighting: dark pixels, whose phase is noise, count little):

    * offset only: ``c = angle(Σ z)``, the exact minimiser of ``Σ |recon·e^{-ic} - truth|²``;
    * with ramp: minimise ``Σ w · wrap(angle z - c - g_r·y - g_c·x)²`` (weighted least squares
      on the wrapped phase difference). Start from the mean neighbour phase steps
      ``g_r = angle(Σ z[y+1,x]·conj(z[y,x]))`` (likewise g_c) and ``c = angle(Σ z e^{-i ramp})``
      — exact for a pure ramp, free of 2 pi wrapping as long as the ramp is below pi per
      pixel — then refine by ``iterations`` Gauss-Newton steps on the wrapped residual.

    ``mask`` (bool (H, W)) restricts the fit to some pixels (the aligned array is the whole).
    """
    t = _complex_2d(truth, "truth")
    r = _complex_2d(recon, "recon")
    if t.shape != r.shape:
        raise ValueError(f"truth and recon must have the same shape, got {t.shape} and {r.shape}")
    z = r * np.conj(t)
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != z.shape:
            raise ValueError(f"mask must have shape {z.shape}, got {m.shape}")
        z = np.where(m, z, 0)
    H, W = z.shape
    if not np.any(z):
        return r.copy(), PhaseAlignment(shape=(H, W))
    if not ramp:
        c = float(np.angle(z.sum()))
        al = PhaseAlignment(c, 0.0, 0.0, (H, W))
        return r * np.exp(-1j * c), al
    gr = float(np.angle(np.sum(z[1:, :] * np.conj(z[:-1, :])))) if H > 1 else 0.0
    gc = float(np.angle(np.sum(z[:, 1:] * np.conj(z[:, :-1])))) if W > 1 else 0.0
    al = PhaseAlignment(0.0, gr, gc, (H, W))
    al.offset = float(np.angle(np.sum(z * np.exp(-1j * al.phase()))))
    w = np.abs(z).ravel()
    y = np.broadcast_to((np.arange(H) - (H - 1) / 2.0)[:, None], (H, W)).ravel()
    x = np.broadcast_to((np.arange(W) - (W - 1) / 2.0)[None, :], (H, W)).ravel()
    A = np.stack([np.ones_like(y), y, x], axis=1)
    sw = np.sqrt(w)
    for _ in range(max(0, int(iterations))):
        resid = np.angle(z * np.exp(-1j * al.phase())).ravel()
        delta, *_ = np.linalg.lstsq(A * sw[:, None], resid * sw, rcond=None)
        al.offset += float(delta[0])
        al.ramp_row += float(delta[1])
        al.ramp_col += float(delta[2])
    return r * np.exp(-1j * al.phase()), al


# ----------------------------------------------------------------------------- registration
def _upsampled_dft(data, region_size, upsample_factor, offsets):
    """The DFT of ``data`` sampled on a ``region_size``² grid ``upsample_factor`` times finer
    than the FFT's, starting at ``offsets`` (Guizar-Sicairos et al. 2008): matrix products,
    no zero padding of the whole array."""
    for n_items, off in zip(data.shape[::-1], offsets[::-1]):
        kernel = (np.arange(region_size) - off)[:, None] * np.fft.fftfreq(n_items, upsample_factor)
        data = np.tensordot(np.exp(-2j * np.pi * kernel), data, axes=(1, -1))
    return data


def register(reference, moving, upsample_factor: int = 100, normalization: str | None = "phase",
             taper: float = 0.0):
    """Sub-pixel translation ``(row, col)`` that maps ``moving`` onto ``reference``:
    ``shift_image(moving, shift) ≈ reference``.

    Phase correlation (``normalization="phase"``: the cross-power spectrum divided by its
    magnitude; ``None``: plain cross-correlation, more robust for very noisy images) gives
    the integer peak; an upsampled DFT of the cross-power spectrum in a 1.5-pixel
    neighbourhood refines it to ``1 / upsample_factor`` pixel (Guizar-Sicairos, Thurman &
    Fienup, Opt. Lett. 33, 156 (2008)). Real or complex 2-D arrays of one shape; shifts are
    periodic (an image's content wraps), so crop the edges after shifting. ``taper`` > 0
    removes each image's mean and applies the Tukey window of :func:`frc` first: for crops
    of a larger image, whose edges do not move with the content, that keeps the edges
    from pulling the peak towards zero shift.
    """
    ref = np.asarray(reference)
    mov = np.asarray(moving)
    for name, arr in (("reference", ref), ("moving", mov)):
        if arr.ndim != 2:
            raise ValueError(f"{name} must be a 2-D array, got shape {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} contains NaN or infinite values")
    if ref.shape != mov.shape:
        raise ValueError(f"reference and moving must have the same shape, got {ref.shape} and {mov.shape}")
    if normalization not in ("phase", None):
        raise ValueError(f"normalization must be 'phase' or None, got {normalization!r}")
    upsample_factor = int(upsample_factor)
    if upsample_factor < 1:
        raise ValueError(f"upsample_factor must be >= 1, got {upsample_factor}")
    if not 0 <= taper < 0.5:
        raise ValueError(f"taper must be in [0, 0.5), got {taper}")
    if taper > 0:
        win = _tukey_2d(ref.shape, taper)
        ref = (ref - ref.mean()) * win
        mov = (mov - mov.mean()) * win
    product = np.fft.fft2(ref) * np.conj(np.fft.fft2(mov))
    if normalization == "phase":
        product = product / np.maximum(np.abs(product), 100 * np.finfo(np.float64).eps)
    cc = np.fft.ifft2(product)
    peak = np.array(np.unravel_index(int(np.argmax(np.abs(cc))), cc.shape), dtype=np.float64)
    shape = np.array(cc.shape, dtype=np.float64)
    mid = np.fix(shape / 2)
    peak[peak > mid] -= shape[peak > mid]
    if upsample_factor > 1:
        peak = np.round(peak * upsample_factor) / upsample_factor
        region = int(np.ceil(upsample_factor * 1.5))
        dftshift = np.fix(region / 2.0)
        offsets = dftshift - peak * upsample_factor
        cc = np.conj(_upsampled_dft(np.conj(product), region, upsample_factor, offsets))
        fine = np.array(np.unravel_index(int(np.argmax(np.abs(cc))), cc.shape), dtype=np.float64)
        peak = peak + (fine - dftshift) / upsample_factor
    peak[shape == 1] = 0.0
    return float(peak[0]), float(peak[1])


def shift_image(image, shift, order: int = 3, mode: str = "nearest"):
    """Translate a real or complex 2-D image by ``shift`` (row, col) pixels (positive moves
    content down/right) with spline interpolation of ``order`` (``scipy.ndimage.shift``;
    real and imaginary parts separately). Local, unlike a Fourier shift: the zeros around a
    reconstruction's covered area do not ring into it."""
    img = np.asarray(image)
    s = (float(shift[0]), float(shift[1]))
    if np.iscomplexobj(img):
        return (ndimage.shift(img.real.astype(np.float64), s, order=order, mode=mode)
                + 1j * ndimage.shift(img.imag.astype(np.float64), s, order=order, mode=mode))
    return ndimage.shift(img.astype(np.float64), s, order=order, mode=mode)


# ----------------------------------------------------------------------------- amplitude scale
def match_amplitude_scale(truth_amplitude, recon_amplitude, mask=None):
    """The factor ``k = Σ a·b / Σ b²`` minimising ``Σ (k·b - a)²`` (a = truth, b = recon
    amplitudes, over ``mask`` when given). Returns ``(k·b, k)``; k = 1 when b is all zero."""
    a, b = _pair_2d(truth_amplitude, recon_amplitude, ("truth_amplitude", "recon_amplitude"))
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != a.shape:
            raise ValueError(f"mask must have shape {a.shape}, got {m.shape}")
        aa, bb = a[m], b[m]
    else:
        aa, bb = a, b
    den = float(np.sum(bb * bb))
    k = float(np.sum(aa * bb)) / den if den > 0 else 1.0
    return b * k, k


# ----------------------------------------------------------------------------- scanned region
def _scan_extent(positions, N: int):
    from . import coords
    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 2 or pos.shape[0] == 0:
        raise ValueError(f"positions must be (P, 2) probe centres (row, col) with P >= 1, got shape {pos.shape}")
    if not np.all(np.isfinite(pos)):
        raise ValueError("positions contains NaN or infinite values")
    top_left = coords.centres_to_top_left(pos, int(N))
    return top_left


def scan_region(positions, N: int, shape) -> tuple[slice, slice]:
    """The scanned region: the bounding box of every N x N patch centred at ``positions``
    ((P, 2) probe centres (row, col), object pixels), clipped to ``shape`` (H, W).

    A patch at top-left ``t = centre - N/2`` (:mod:`ptycho_fast.coords`) covers the pixels
    ``ceil(t) .. floor(t) + N - 1`` in full (its bilinear read also touches the next one);
    the region runs from the smallest ``ceil(t)`` to the largest ``floor(t) + N - 1``.
    Returns ``(rows, cols)`` slices; ValueError if nothing of it lies inside the image.
    """
    tl = _scan_extent(positions, N)
    H, W = (int(s) for s in shape[-2:])
    r0 = max(0, int(np.ceil(tl[:, 0].min())))
    c0 = max(0, int(np.ceil(tl[:, 1].min())))
    r1 = min(H, int(np.floor(tl[:, 0].max())) + int(N))
    c1 = min(W, int(np.floor(tl[:, 1].max())) + int(N))
    if r1 <= r0 or c1 <= c0:
        raise ValueError(f"the scanned region (patches of N = {N} at the given positions) does not "
                         f"overlap the {H} x {W} image")
    return slice(r0, r1), slice(c0, c1)


def scan_mask(positions, N: int, shape) -> np.ndarray:
    """Boolean (H, W): the union of the N x N patches (pixels each covers in full, as in
    :func:`scan_region`) at ``positions``."""
    tl = _scan_extent(positions, N)
    H, W = (int(s) for s in shape[-2:])
    diff = np.zeros((H + 1, W + 1), dtype=np.int64)
    r0 = np.clip(np.ceil(tl[:, 0]).astype(np.int64), 0, H)
    c0 = np.clip(np.ceil(tl[:, 1]).astype(np.int64), 0, W)
    r1 = np.clip(np.floor(tl[:, 0]).astype(np.int64) + int(N), 0, H)
    c1 = np.clip(np.floor(tl[:, 1]).astype(np.int64) + int(N), 0, W)
    ok = (r1 > r0) & (c1 > c0)
    for a, b, c, d in zip(r0[ok], r1[ok], c0[ok], c1[ok]):  # 2-D difference array: O(P + HW)
        diff[a, c] += 1
        diff[a, d] -= 1
        diff[b, c] -= 1
        diff[b, d] += 1
    return np.cumsum(np.cumsum(diff, axis=0), axis=1)[:H, :W] > 0


def bounding_box(mask) -> tuple[slice, slice] | None:
    """The smallest (rows, cols) slices holding every True pixel of ``mask``; None if none."""
    m = np.asarray(mask, dtype=bool)
    rows = np.flatnonzero(m.any(axis=1))
    cols = np.flatnonzero(m.any(axis=0))
    if rows.size == 0:
        return None
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


# ----------------------------------------------------------------------------- illuminated region
#: a pixel counts as illuminated where the summed probe intensity reaches this fraction of
#: its peak (the 99th percentile of the lit pixels: robust to one over-dense scan spot)
ILLUMINATION_FLOOR = 0.1


def illumination_map(positions, probe, shape) -> np.ndarray:
    """(H, W) float64: the probe intensity ``sum_modes |probe|^2`` (peak normalised to 1)
    added at every scan position, i.e. how much light each object pixel received.

    ``positions`` (P, 2) probe centres (row, col); ``probe`` (N, N) or modes (M, N, N).
    Each placement is bilinear at the sub-pixel top-left ``centre - N/2`` (the same
    convention and weights as ``stitch_patches``); light falling outside ``shape`` is
    dropped."""
    pr = np.asarray(probe)
    if pr.ndim not in (2, 3) or pr.shape[-1] != pr.shape[-2] or pr.shape[-1] < 2:
        raise ValueError(f"probe must be (N, N) or (M, N, N), got shape {pr.shape}")
    intensity = np.abs(pr.astype(np.complex128)) ** 2
    if intensity.ndim == 3:
        intensity = intensity.sum(axis=0)
    peak = float(intensity.max())
    if not peak > 0 or not np.isfinite(peak):
        raise ValueError("probe must have a finite, non-zero intensity")
    intensity = intensity / peak
    N = intensity.shape[0]
    tl = _scan_extent(positions, N)
    H, W = (int(s) for s in shape[-2:])
    pad = N + 1
    canvas = np.zeros((H + 2 * pad, W + 2 * pad))
    r0 = np.floor(tl[:, 0]).astype(np.int64)
    c0 = np.floor(tl[:, 1]).astype(np.int64)
    fr, fc = tl[:, 0] - r0, tl[:, 1] - c0
    for r, c, a, b in zip(r0, c0, fr, fc):
        if r + N < 0 or c + N < 0 or r >= H or c >= W:
            continue  # entirely outside (the padding holds every partial overlap)
        # the bilinear spread of one placement: four integer shifts of the probe
        R, C = r + pad, c + pad
        canvas[R:R + N, C:C + N] += (1 - a) * (1 - b) * intensity
        canvas[R:R + N, C + 1:C + N + 1] += (1 - a) * b * intensity
        canvas[R + 1:R + N + 1, C:C + N] += a * (1 - b) * intensity
        canvas[R + 1:R + N + 1, C + 1:C + N + 1] += a * b * intensity
    return canvas[pad:pad + H, pad:pad + W]


def largest_rectangle(mask) -> tuple[slice, slice] | None:
    """The axis-aligned rectangle of largest area whose pixels are all True in ``mask``
    (row by row column heights + a monotonic stack: O(H W)); None if no pixel is True.
    Ties go to the first found (top-most, then left-most)."""
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {m.shape}")
    H, W = m.shape
    heights = np.zeros(W + 1, dtype=np.int64)   # a sentinel 0 column flushes the stack
    best, box = 0, None
    for i in range(H):
        heights[:W] = np.where(m[i], heights[:W] + 1, 0)
        hs = heights.tolist()
        stack: list[int] = []
        for j, h in enumerate(hs):
            while stack and hs[stack[-1]] >= h:
                k = stack.pop()
                left = stack[-1] + 1 if stack else 0
                area = hs[k] * (j - left)
                if area > best:
                    best, box = area, (slice(i - hs[k] + 1, i + 1), slice(left, j))
            stack.append(j)
    return box


def illuminated_region(positions, probe, shape, floor: float = ILLUMINATION_FLOOR):
    """The region a reconstruction can be judged on: the largest rectangle of pixels whose
    illumination (:func:`illumination_map`) reaches ``floor`` times its peak (the 99th
    percentile of the lit pixels). Outside it only the probe's faint tails touched the
    object, so any reconstruction there is unconstrained guesswork.

    Returns ``(rows, cols, illumination)``; ValueError if no pixel qualifies."""
    if not 0 < floor < 1:
        raise ValueError(f"floor must be in (0, 1), got {floor}")
    illum = illumination_map(positions, probe, shape)
    lit = illum[illum > 0]
    if lit.size == 0:
        raise ValueError(f"no scan position illuminates the {shape[-2]} x {shape[-1]} image")
    box = largest_rectangle(illum >= floor * float(np.percentile(lit, 99)))
    if box is None:  # pragma: no cover - the percentile pixel itself always qualifies
        raise ValueError("no pixel reaches the illumination floor")
    return box[0], box[1], illum
