"""Forward model and the two scalars of docs/design.md §3.

Diffraction is an **amplitude** (sqrt of counts), zero frequency at the array centre:

    rate = sum_modes |fftshift(fft2(probe * patch, norm="ortho"))|^2,   amp = sqrt(rate)

The simulator and the training loss both call :func:`diffraction_amplitude` (built from
:func:`illuminate` and :func:`far_field`), so they cannot disagree. Its square root is
guarded (:func:`safe_sqrt`): exact values, finite gradients at zero amplitude. Two scalars
are kept apart:

* intensity scale ``s = sqrt(mean_p sum_ij X_p^2) / (N/2)`` normalises the network input;
* probe gain ``g = sqrt(mean_p sum_ij X_p^2 / sum |probe|^2)`` (Parseval) scales the
  predicted amplitude for an uncalibrated probe (1 for a calibrated one and an object of
  unit transmission).

Training applies them with :func:`network_input` (``X / s``) and
:func:`predicted_amplitude` (``g * amplitude``); the losses compare amplitudes in count
units: :func:`poisson_nll` (counts ``X^2`` vs rate ``A^2``, with a rate floor) and
:func:`mae_loss`.

Both scalars read ``mean_p sum_ij X_p^2`` (the mean counts per pattern) from
:func:`mean_pattern_energy`, which accumulates in float64 (integer counts are converted
before squaring, so uint16 data cannot overflow) and accepts either an array or an
iterable of batches (e.g. an HDF5 file streamed in blocks).
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = [
    "diffraction_amplitude", "mean_pattern_energy", "intensity_scale", "probe_gain",
    "illuminate", "far_field", "safe_sqrt", "predicted_amplitude", "network_input",
    "poisson_nll", "mae_loss", "INPUT_KINDS", "BACKPROJECTION_FLOOR", "backprojection",
    "dominant_mode", "InputTransform", "LOSSES", "amplitude_loss", "DEFAULT_RATE_FLOOR",
    "choose_probe_gain", "auto_probe_gain", "CALIBRATED_GAIN_RANGE", "PROBE_GAIN_MODES",
]

_CHUNK = 1024  # patterns per float64 accumulation block


def diffraction_amplitude(patches, probe):
    """Far-field amplitude of ``probe * patch`` for every patch.

    patches: (..., N, N) complex (object patches); probe: (N, N) or incoherent modes
    (M, N, N). Returns (..., N, N) real amplitudes in count units (sqrt of the summed
    mode intensities), fftshifted. numpy in -> numpy out; torch keeps autograd.
    """
    as_numpy = isinstance(patches, np.ndarray)
    patches_t = torch.as_tensor(patches)
    probe_t = torch.as_tensor(probe, device=patches_t.device)
    # far_field without its fftshift copy: for even N, fftshift(fft2(x)) == fft2(x * (-1)^(i+j)),
    # and the sign pattern rides on the (small) probe instead of every exit wave
    _check_probe(patches_t, probe_t)
    far = torch.fft.fft2(illuminate(patches_t, probe_t * _checkerboard(probe_t)), norm="ortho")
    rate = far.real.square() + far.imag.square()
    if probe_t.dim() >= 3:
        rate = rate.sum(dim=-3)
    amp = safe_sqrt(rate)
    return amp.numpy() if as_numpy else amp


def _checkerboard(probe: torch.Tensor) -> torch.Tensor:
    """(-1)^(i+j) over the probe's last two axes (N even: checked by the data layer)."""
    n, m = probe.shape[-2:]
    if n % 2 or m % 2:
        raise ValueError(f"the pattern size must be even, got {n} x {m}")
    i = torch.arange(n, device=probe.device)[:, None]
    j = torch.arange(m, device=probe.device)[None, :]
    return (1 - 2 * ((i + j) % 2)).to(probe.real.dtype if probe.is_complex() else probe.dtype)


def _check_probe(patches: torch.Tensor, probe: torch.Tensor) -> None:
    if probe.dim() not in (2, 3, 4):
        raise ValueError(f"probe must be (N, N), (M, N, N) or one per pattern (P, M, N, N), got shape "
                         f"{tuple(probe.shape)}")
    if patches.shape[-2:] != probe.shape[-2:]:
        raise ValueError(f"patches {tuple(patches.shape)} and probe {tuple(probe.shape)} "
                         "must have the same last two dimensions (N, N)")


def illuminate(patches: torch.Tensor, probe: torch.Tensor) -> torch.Tensor:
    """Exit waves ``probe * patch``: (..., N, N) for a single probe (N, N), (..., M, N, N)
    for incoherent modes (M, N, N) (one exit wave per mode) or for one probe per pattern
    (P, M, N, N) with patches (P, N, N)."""
    _check_probe(patches, probe)
    if probe.dim() == 2:
        return patches * probe
    return patches.unsqueeze(-3) * probe


def far_field(field: torch.Tensor) -> torch.Tensor:
    """``fftshift(fft2(field, norm="ortho"))`` over the last two axes: zero frequency at
    ``[N/2, N/2]``; unitary, so ``sum |far|^2 == sum |field|^2`` (Parseval)."""
    return torch.fft.fftshift(torch.fft.fft2(field, norm="ortho"), dim=(-2, -1))


def safe_sqrt(rate: torch.Tensor) -> torch.Tensor:
    """``sqrt(rate)`` for ``rate >= 0`` whose gradient is finite everywhere.

    d sqrt(r)/dr = 1/(2 sqrt(r)) is infinite at r = 0, and autograd turns the amplitude
    gradient of a zero field into inf * 0 = NaN. The forward value is exact; where
    ``rate <= 0`` the gradient is 0 (the subgradient of |F| at F = 0), elsewhere the usual
    one (finite: 1/(2 sqrt(r)) < 1e162 for the smallest float64 denormal).
    """
    positive = rate > 0
    safe = torch.where(positive, rate, torch.ones_like(rate))
    return torch.where(positive, torch.sqrt(safe), torch.zeros_like(rate))


def predicted_amplitude(patches: torch.Tensor, probe: torch.Tensor, gain) -> torch.Tensor:
    """The model's diffraction amplitude in **count units** (docs/design.md §3):
    ``gain * sqrt(sum_modes |fftshift(fft2(probe * patch, ortho))|^2)``.

    ``gain`` (the probe gain g; a float or a 0-d tensor, e.g. a trainable parameter)
    multiplies the amplitude, so the predicted counts are ``g^2 * rate``.
    """
    return diffraction_amplitude(patches, probe) * gain


def _check_scale(scale) -> None:
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"intensity scale must be a finite number > 0, got {scale!r}")


def network_input(X, scale: float):
    """The network's input ``X / s`` (docs/design.md §3): measured amplitudes divided by the
    intensity scale, so that ``mean_p sum_ij (X_p/s)^2 = (N/2)^2`` at any dose."""
    _check_scale(scale)
    return X / scale


# ----------------------------------------------------------------------------- network input
#: what the network sees per pattern: ``amplitude`` = X / s (one channel, PtychoPINN's);
#: ``backprojection`` = X / s plus the real and imaginary part of :func:`backprojection`
INPUT_KINDS = ("amplitude", "backprojection")
#: Wiener-style floor of the probe division, as a fraction of max |probe|^2
BACKPROJECTION_FLOOR = 0.05


def dominant_mode(probe: torch.Tensor) -> torch.Tensor:
    """The probe (N, N) itself, or of incoherent modes (M, N, N) the one with the most power."""
    if probe.dim() == 2:
        return probe
    if probe.dim() != 3:
        raise ValueError(f"probe must be (N, N) or modes (M, N, N), got shape {tuple(probe.shape)}")
    power = probe.abs().square().sum(dim=(-2, -1))
    return probe[int(torch.argmax(power))]


def backprojection(X: torch.Tensor, probe: torch.Tensor, gain: float = 1.0,
                   floor: float = BACKPROJECTION_FLOOR) -> torch.Tensor:
    """A real-space first estimate of every object patch from its pattern alone:

        O0 = conj(P) * ifft2(ifftshift(X / g * exp(i arg fftshift(fft2(P))))) / (|P|^2 + floor * max|P|^2)

    the measured amplitudes with the empty probe's far-field phase, propagated back and
    divided by the probe (regularised where it is dark). For a weak object it is the
    in-line hologram of the patch: its features sit where the object's are, so a
    convolutional or Fourier network refines an image aligned with its output instead of
    inverting a diffraction pattern (docs/training.md §11). X (..., N, N) real amplitudes in
    count units; probe (N, N) or modes (M, N, N) (the dominant mode is used); returns
    (..., N, N) complex, ~1 where the object is empty and g is right.
    """
    factors = _backprojection_factors(torch.as_tensor(probe, device=X.device), floor)
    if factors[0].shape != X.shape[-2:]:
        raise ValueError(f"patterns {tuple(X.shape)} and probe {tuple(factors[0].shape)} must have the "
                         "same last two dimensions (N, N)")
    return _backproject(X, gain, factors)


def _backprojection_factors(probe: torch.Tensor, floor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(exp(i arg fftshift(fft2(P))), conj(P) / (|P|^2 + floor max|P|^2)) of the dominant mode."""
    P = dominant_mode(probe).to(torch.complex64)
    power = P.abs().square()
    return torch.sgn(far_field(P)), P.conj() / (power + floor * power.max())


def _backproject(X: torch.Tensor, gain: float, factors) -> torch.Tensor:
    far_phase, inverse = factors
    return torch.fft.ifft2(torch.fft.ifftshift((X / gain) * far_phase, dim=(-2, -1)), norm="ortho") * inverse


class InputTransform:
    """Measured amplitudes (B, C, N, N) in count units -> the network input, in one place
    for training and inference (the bundle stores kind, scale, probe and gain):
    ``amplitude``: X / s, (B, C, N, N); ``backprojection``: (B, 3C, N, N), the C channels of
    X / s, then Re and Im of :func:`backprojection` (probe and gain as at training)."""

    def __init__(self, kind: str, scale: float, probe=None, gain: float = 1.0):
        if kind not in INPUT_KINDS:
            raise ValueError(f"network input must be one of {', '.join(INPUT_KINDS)}, got {kind!r}")
        _check_scale(scale)
        if kind == "backprojection" and probe is None:
            raise ValueError("the backprojection input needs the probe")
        if not (math.isfinite(float(gain)) and float(gain) > 0):
            raise ValueError(f"probe gain must be a finite number > 0, got {gain!r}")
        self.kind, self.scale, self.gain = kind, float(scale), float(gain)
        self.probe = None if probe is None else torch.as_tensor(probe)
        self._cache: dict = {}

    @staticmethod
    def channels(kind: str, C: int) -> int:
        """Input channels of a network for C patterns per group."""
        return 3 * C if kind == "backprojection" else C

    def __call__(self, X: torch.Tensor) -> torch.Tensor:
        x = network_input(X, self.scale)
        if self.kind == "amplitude":
            return x
        key = str(X.device)  # the factors once per device, not per batch
        if key not in self._cache:
            self._cache[key] = _backprojection_factors(self.probe.to(X.device), BACKPROJECTION_FLOOR)
        o = _backproject(X, self.gain, self._cache[key])
        return torch.cat([x, o.real.to(x.dtype), o.imag.to(x.dtype)], dim=-3)


# ----------------------------------------------------------------------------- losses
#: default floor (in counts) added to the predicted rate inside the Poisson log
DEFAULT_RATE_FLOOR = 1e-6


def poisson_nll(pred_amplitude: torch.Tensor, measured_amplitude: torch.Tensor,
                rate_floor: float = DEFAULT_RATE_FLOOR, saturated: bool = True,
                reduction: str = "mean") -> torch.Tensor:
    """Poisson negative log-likelihood of the measured counts ``k = X^2`` given the
    predicted rate ``lam = A^2`` (both amplitudes in count units)::

        nll = lam - k * log(lam + rate_floor)  [ - (k - k * log(k + rate_floor)) ]

    The floor keeps the log finite at ``lam = 0``; the gradient with respect to ``A``,
    ``2A (1 - k / (lam + floor))``, is then finite everywhere (0 at ``A = 0``).
    ``saturated=True`` subtracts the value at ``lam = k`` (the saturated model), which does
    not change the gradient but makes the loss >= 0 (up to ~floor) and 0 for a perfect fit,
    so its value reads as a misfit (half the Poisson deviance); ``log(k!)`` is never added.
    ``reduction``: 'mean' over every pixel, 'sum', or 'none'.
    """
    if rate_floor <= 0 or not math.isfinite(rate_floor):
        raise ValueError(f"rate_floor must be a finite number > 0, got {rate_floor}")
    lam = pred_amplitude.square()
    k = measured_amplitude.square()
    nll = lam - k * torch.log(lam + rate_floor)
    if saturated:
        nll = nll - (k - k * torch.log(k + rate_floor))
    return _reduce(nll, reduction)


def mae_loss(pred_amplitude: torch.Tensor, measured_amplitude: torch.Tensor,
             reduction: str = "mean") -> torch.Tensor:
    """Mean absolute error of the amplitudes (count units): ``|A - X|``."""
    return _reduce((pred_amplitude - measured_amplitude).abs(), reduction)


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    if reduction == "none":
        return values
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


LOSSES = ("poisson", "mae")


def amplitude_loss(kind: str, pred_amplitude: torch.Tensor, measured_amplitude: torch.Tensor,
                   rate_floor: float = DEFAULT_RATE_FLOOR, reduction: str = "mean") -> torch.Tensor:
    """The training loss by name: 'poisson' (:func:`poisson_nll`, saturated) or 'mae'."""
    if kind == "poisson":
        return poisson_nll(pred_amplitude, measured_amplitude, rate_floor, reduction=reduction)
    if kind == "mae":
        return mae_loss(pred_amplitude, measured_amplitude, reduction=reduction)
    raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {kind!r}")


def _energy_sum(block) -> tuple[float, int]:
    """(sum over the block of sum_ij X^2 in float64, number of patterns)."""
    if isinstance(block, torch.Tensor):
        block = block.detach().cpu().numpy()
    block = np.asarray(block)
    if block.ndim < 2:
        raise ValueError(f"diffraction must be (P, N, N) or (N, N), got shape {block.shape}")
    block = block.reshape(-1, *block.shape[-2:])
    total = 0.0
    for start in range(0, block.shape[0], _CHUNK):
        chunk = block[start:start + _CHUNK].astype(np.float64)  # before squaring: no uint16 overflow
        total += float(np.einsum("pij,pij->", chunk, chunk))
    return total, block.shape[0]


def mean_pattern_energy(X) -> float:
    """``mean_p sum_ij X_p^2``: the mean counts per pattern of amplitudes ``X``.

    X: (P, N, N) array/tensor, an object with ``iter_batches()`` (a lazily read file), or
    an iterable of batches (arrays or ``(indices, array)`` pairs).
    """
    if isinstance(X, (np.ndarray, torch.Tensor)):
        total, count = _energy_sum(X)
    else:
        # A lazily read file (has iter_batches) or any iterable of batches: streamed.
        total, count = 0.0, 0
        for block in X.iter_batches() if hasattr(X, "iter_batches") else X:
            if isinstance(block, tuple):  # (indices, amplitudes) pairs
                block = block[-1]
            t, c = _energy_sum(block)
            total, count = total + t, count + c
    if count == 0:
        raise ValueError("cannot compute the pattern energy of an empty diffraction set")
    return total / count


def _pattern_size(X) -> int:
    shape = getattr(X, "shape", None)
    if shape is None:
        raise ValueError("pass N explicitly when X is an iterable of batches")
    return int(shape[-1])


def intensity_scale(X, N: int | None = None) -> float:
    """``s = sqrt(mean_p sum_ij X_p^2) / (N/2)``: the network input is ``X / s``."""
    n = _pattern_size(X) if N is None else int(N)
    return math.sqrt(mean_pattern_energy(X)) / (n / 2)


def probe_gain(X, probe) -> float:
    """``g = sqrt(mean_p sum_ij X_p^2 / sum|probe|^2)`` (sum over all modes): Parseval's fit of
    an uncalibrated probe's gain. 1 for a calibrated probe on a unit-transmission object."""
    p = torch.as_tensor(probe).detach().cpu().to(torch.complex128)
    probe_energy = float((p.real.square() + p.imag.square()).sum())
    if not probe_energy > 0:
        raise ValueError("probe_gain: the probe is zero everywhere")
    return math.sqrt(mean_pattern_energy(X) / probe_energy)


# ----------------------------------------------------------------------------- probe gain choice
#: the fitted gains a calibrated probe gives: with a transmission <= 1, Parseval gives at
#: most 1 (a bit less where the object absorbs; simulated data ~0.7-0.97). A file that
#: says its probe is calibrated but fits outside this range gets a warning.
CALIBRATED_GAIN_RANGE = (0.25, 1.05)
PROBE_GAIN_MODES = ("auto", "calibrated", "fit")


def choose_probe_gain(X, probe, mode: str | float = "auto",
                      calibrated: bool | None = None) -> tuple[float, str]:
    """The probe gain to train with, and how it was chosen.

    ``mode``: 'calibrated' (g = 1), 'fit' (:func:`probe_gain`, Parseval), a positive
    number (used as is), or 'auto': g = 1 when the data file says its probe is calibrated
    (``calibrated``, from the metadata key ``probe_calibrated``), else the fitted gain.
    Nothing is guessed from the fitted value: a probe mis-scaled by a modest factor fits
    a plausible-looking gain too. A file that says "calibrated" while the fit lies outside
    :data:`CALIBRATED_GAIN_RANGE` gets a ``UserWarning`` (g = 1 is still used: the file
    is trusted, the user told). Returns ``(g, description)``.
    """
    if isinstance(mode, str) and mode not in PROBE_GAIN_MODES:
        try:
            mode = float(mode)
        except ValueError:
            raise ValueError(f"probe gain must be one of {', '.join(PROBE_GAIN_MODES)} or a "
                             f"number > 0, got {mode!r}") from None
    if not isinstance(mode, str):
        g = float(mode)
        if not (math.isfinite(g) and g > 0):
            raise ValueError(f"probe gain must be a finite number > 0, got {mode!r}")
        return g, "given"
    if mode == "calibrated":
        return 1.0, "calibrated"
    fitted = probe_gain(X, probe)
    if mode == "fit":
        return fitted, "fit"
    g, how, warning = auto_probe_gain(fitted, calibrated)
    if warning:
        import warnings
        warnings.warn(warning, UserWarning, stacklevel=2)
    return g, how


def auto_probe_gain(fitted: float, calibrated: bool | None) -> tuple[float, str, str | None]:
    """``--probe-gain auto`` given the Parseval fit and the file's ``probe_calibrated``
    flag: ``(g, description, warning or None)`` (see :func:`choose_probe_gain`)."""
    if calibrated:
        lo, hi = CALIBRATED_GAIN_RANGE
        warning = None
        if not lo <= fitted <= hi:
            warning = (f"the data file says its probe is calibrated (probe_calibrated = 1), but the "
                       f"Parseval fit of the probe gain is {fitted:.4g}, outside [{lo}, {hi}] where a "
                       "calibrated probe lands: the probe or the counts may be mis-scaled; training "
                       "uses g = 1 as the file says (--probe-gain fit overrides)")
        return 1.0, f"auto: calibrated (the data file says so; fitted gain {fitted:.4g})", warning
    why = "says it is not calibrated" if calibrated is False else "does not say the probe is calibrated"
    return fitted, f"auto: fit (the data file {why}; fitted gain {fitted:.4g})", None
