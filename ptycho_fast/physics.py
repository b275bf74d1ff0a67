"""Forward model and the two scalars of DESIGN.md §3.

Diffraction is an **amplitude** (sqrt of counts), zero frequency at the array centre:

    rate = sum_modes |fftshift(fft2(probe * patch, norm="ortho"))|^2,   amp = sqrt(rate)

The simulator and the training loss both call :func:`diffraction_amplitude`, so they
cannot disagree. Two scalars are kept apart:

* intensity scale ``s = sqrt(mean_p sum_ij X_p^2) / (N/2)`` normalises the network input;
* probe gain ``g = sqrt(mean_p sum_ij X_p^2 / sum |probe|^2)`` (Parseval) scales the
  predicted amplitude for an uncalibrated probe (1 for a calibrated one and an object of
  unit transmission).

Both read ``mean_p sum_ij X_p^2`` (the mean counts per pattern) from
:func:`mean_pattern_energy`, which accumulates in float64 (integer counts are converted
before squaring, so uint16 data cannot overflow) and accepts either an array or an
iterable of batches (e.g. an HDF5 file streamed in blocks).
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["diffraction_amplitude", "mean_pattern_energy", "intensity_scale", "probe_gain"]

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
    if probe_t.dim() not in (2, 3):
        raise ValueError(f"probe must be (N, N) or (M, N, N), got shape {tuple(probe_t.shape)}")
    if patches_t.shape[-2:] != probe_t.shape[-2:]:
        raise ValueError(f"patches {tuple(patches_t.shape)} and probe {tuple(probe_t.shape)} "
                         "must have the same last two dimensions (N, N)")
    if probe_t.dim() == 2:
        field = patches_t * probe_t
    else:
        field = patches_t.unsqueeze(-3) * probe_t  # (..., M, N, N)
    far = torch.fft.fftshift(torch.fft.fft2(field, norm="ortho"), dim=(-2, -1))
    rate = far.real.square() + far.imag.square()
    if probe_t.dim() == 3:
        rate = rate.sum(dim=-3)
    amp = torch.sqrt(rate)
    return amp.numpy() if as_numpy else amp


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
