"""The PINN generators (docs/design.md §1, docs/training.md §1).

Input (``NetworkConfig.input``, built by ``physics.InputTransform``): ``amplitude`` — C =
gridsize² channels of **normalised** diffraction amplitudes ``X / s``, (B, C, N, N);
``backprojection`` — those plus the real and imaginary parts of each pattern propagated
back through the probe (``physics.backprojection``), (B, 3C, N, N): a first image of the
patch, aligned with the output. Output: C complex object patches
``amplitude * exp(i * phase)``, shape (B, C, N, N).

Two architectures (``NetworkConfig.arch``), the same heads:

* ``cnn``: PtychoPINN's encoder/decoder, with the width as a multiplier ``s`` of the filter
  counts. Encoder: conv blocks of ``32s, 64s, 128s`` filters for N = 32 or 64 (``16s, 32s,
  64s, 128s`` for N = 128); each block is two 3x3 convolutions with ReLU and a 2x2 max-pool.
  Two decoders with separate weights (amplitude, phase) mirror it: per level two 3x3
  convolutions with ReLU and a 2x nearest upsampling, then a 3x3 convolution to C channels
  (with the backprojection input: a 3x3 convolution to 32s channels with ReLU on the
  upsampled features concatenated with the input, then the 3x3 to C — a full-resolution
  skip, as the 8x8 bottleneck cannot carry the backprojection's detail).
* ``ffno``: a factorised Fourier neural operator at constant resolution (Tran et al. 2023,
  as PtychoPINN's FFNO generator): a 1x1 lift of the C (or 3C) inputs and two coordinate channels
  to ``round(32 s)`` channels; ``blocks`` residual blocks ``x + W2 gelu(W1 K(x))`` where K
  mixes channels on the lowest ``modes`` frequencies along y and along x separately
  (``torch.fft.rfft``, one complex weight per mode and channel pair); a refiner of two 3x3
  convolutions to half the channels; 1x1 amplitude and phase heads. Global in one layer,
  which a diffraction-to-object map needs, and ~10x fewer parameters than the CNN.

Amplitude = ``exp`` (the default: any transmission > 0, which a probe gain fitted by
Parseval on an absorbing object needs — the measured amplitudes then imply transmissions
above 1; docs/training.md §11), ``sigmoid`` (transmission in (0, 1), PtychoPINN's)
or ``silu`` of the head; phase = ``pi * tanh``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .physics import INPUT_KINDS, InputTransform

__all__ = ["NetworkConfig", "PtychoPINNNet", "SUPPORTED_N", "ARCHITECTURES", "AMP_ACTIVATIONS",
           "LOG_AMPLITUDE_LIMIT", "encoder_filters", "ffno_channels"]

SUPPORTED_N = (32, 64, 128)   # 32 is for fast tests; 64 and 128 are the PtychoPINN sizes
ARCHITECTURES = ("cnn", "ffno")
AMP_ACTIVATIONS = ("exp", "sigmoid", "silu")
#: the exp amplitude is exp(clamp(a, -L, L)): transmissions from 3e-4 to 3e3, never 0 or inf
LOG_AMPLITUDE_LIMIT = 8.0


def encoder_filters(N: int, width: float) -> list[int]:
    """Filter counts of the encoder blocks: 32s, 64s, 128s (N = 32, 64) or 16s, 32s, 64s, 128s
    (N = 128), at least 1 each."""
    base = (16, 32, 64, 128) if N == 128 else (32, 64, 128)
    return [max(1, int(round(b * width))) for b in base]


def ffno_channels(width: float) -> int:
    """The FFNO's constant channel count: round(32 s), at least 2 (the refiner halves it)."""
    return max(2, int(round(32 * width)))


@dataclass
class NetworkConfig:
    """The network's hyper-parameters (stored in the model bundle)."""
    N: int = 64
    gridsize: int = 2
    width: float = 2.0
    amp_activation: str = "exp"
    filters: list[int] = field(default_factory=list)  # cnn: derived from N and width; ffno: []
    arch: str = "cnn"
    modes: int = 12      # ffno: Fourier modes kept per axis
    blocks: int = 4      # ffno: Fourier blocks
    input: str = "amplitude"   # physics.INPUT_KINDS: what the network sees per pattern

    def __post_init__(self) -> None:
        self.N, self.gridsize, self.width = int(self.N), int(self.gridsize), float(self.width)
        self.modes, self.blocks = int(self.modes), int(self.blocks)
        if self.N not in SUPPORTED_N:
            raise ValueError(f"N must be one of {', '.join(map(str, SUPPORTED_N))}, got {self.N}")
        if self.gridsize < 1:
            raise ValueError(f"gridsize must be >= 1, got {self.gridsize}")
        if not (math.isfinite(self.width) and self.width > 0):
            raise ValueError(f"width must be a number > 0, got {self.width}")
        if self.amp_activation not in AMP_ACTIVATIONS:
            raise ValueError(f"amp_activation must be one of {', '.join(AMP_ACTIVATIONS)}, "
                             f"got {self.amp_activation!r}")
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"arch must be one of {', '.join(ARCHITECTURES)}, got {self.arch!r}")
        if not 1 <= self.modes <= self.N // 2 + 1:
            raise ValueError(f"modes must be in [1, N/2 + 1 = {self.N // 2 + 1}], got {self.modes}")
        if self.blocks < 1:
            raise ValueError(f"blocks must be >= 1, got {self.blocks}")
        if self.input not in INPUT_KINDS:
            raise ValueError(f"input must be one of {', '.join(INPUT_KINDS)}, got {self.input!r}")
        expected = encoder_filters(self.N, self.width) if self.arch == "cnn" else []
        if self.filters and list(self.filters) != expected:
            raise ValueError(f"filters {list(self.filters)} do not match N = {self.N}, arch "
                             f"{self.arch} and width {self.width} (expected {expected})")
        self.filters = expected

    @property
    def C(self) -> int:  # noqa: N802
        return self.gridsize ** 2

    @property
    def in_channels(self) -> int:
        """Input channels: C (amplitude) or 3C (backprojection: X / s, Re O0, Im O0)."""
        return InputTransform.channels(self.input, self.C)

    @property
    def channels(self) -> int:
        """ffno: the constant channel count."""
        return ffno_channels(self.width)

    def to_dict(self) -> dict:
        return asdict(self)


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, padding=1)


class _DownBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(_conv(cin, cout), nn.ReLU(inplace=True), _conv(cout, cout),
                         nn.ReLU(inplace=True), nn.MaxPool2d(2))


class _UpBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(_conv(cin, cout), nn.ReLU(inplace=True), _conv(cout, cout),
                         nn.ReLU(inplace=True), nn.Upsample(scale_factor=2, mode="nearest"))


class _Decoder(nn.Module):
    """Mirrored encoder, then the head. ``skip`` > 0 (the backprojection input): the head
    also sees the network input at full resolution (concatenated) through a hidden 3x3
    layer — the backprojection is an image aligned with the output, and the 8x8
    bottleneck alone cannot carry its detail."""

    def __init__(self, filters: list[int], C: int, skip: int = 0):
        super().__init__()
        # mirrored encoder: e.g. [32s, 64s, 128s] -> up blocks 64s, 32s, 32s
        outs = list(reversed(filters))[1:] + [filters[0]]
        cins = [filters[-1]] + outs[:-1]
        self.blocks = nn.Sequential(*[_UpBlock(i, o) for i, o in zip(cins, outs)])
        self.skip = skip
        if skip:
            self.head = nn.Sequential(_conv(outs[-1] + skip, filters[0]), nn.ReLU(inplace=True),
                                      _conv(filters[0], C))
        else:
            self.head = _conv(outs[-1], C)

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        y = self.blocks(z)
        return self.head(torch.cat([y, x], dim=1) if self.skip else y)


class _FactorizedSpectralConv(nn.Module):
    """K(x): channel mixing on the lowest ``modes`` frequencies along y, plus the same along
    x (separate weights), each through a real FFT of that axis. Weights are stored real
    (..., 2) so the state dict is float (safetensors, the bundle's finite-float check)."""

    def __init__(self, channels: int, modes: int):
        super().__init__()
        self.modes = modes
        scale = 1.0 / channels
        self.weight_y = nn.Parameter(scale * torch.randn(channels, channels, modes, 2))
        self.weight_x = nn.Parameter(scale * torch.randn(channels, channels, modes, 2))

    def _axis(self, x: torch.Tensor, weight: torch.Tensor, dim: int) -> torch.Tensor:
        n = x.shape[dim]
        m = min(self.modes, n // 2 + 1)
        xf = torch.fft.rfft(x, dim=dim, norm="ortho").narrow(dim, 0, m)
        w = torch.view_as_complex(weight[:, :, :m].contiguous())
        if dim == -1:
            yf = torch.einsum("bihm,iom->bohm", xf, w)
        else:
            yf = torch.einsum("bimw,iom->bomw", xf, w)
        return torch.fft.irfft(yf, n=n, dim=dim, norm="ortho")  # zero-pads the high modes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._axis(x, self.weight_y, -2) + self._axis(x, self.weight_x, -1)


class _FourierBlock(nn.Module):
    def __init__(self, channels: int, modes: int):
        super().__init__()
        self.spectral = _FactorizedSpectralConv(channels, modes)
        self.mlp = nn.Sequential(nn.Conv2d(channels, channels, 1), nn.GELU(),
                                 nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.spectral(x))


class _FFNO(nn.Module):
    """Lift (inputs + y/x coordinates) -> Fourier blocks -> conv refiner -> two 1x1 heads."""

    def __init__(self, cfg: NetworkConfig):
        super().__init__()
        ch, half = cfg.channels, max(1, cfg.channels // 2)
        self.lift = nn.Conv2d(cfg.in_channels + 2, ch, 1)
        self.blocks = nn.Sequential(*[_FourierBlock(ch, cfg.modes) for _ in range(cfg.blocks)])
        self.refiner = nn.Sequential(nn.Conv2d(ch, half, 3, padding=1), nn.GELU(),
                                     nn.Conv2d(half, half, 3, padding=1), nn.GELU())
        self.amplitude_head = nn.Conv2d(half, cfg.C, 1)
        self.phase_head = nn.Conv2d(half, cfg.C, 1)
        ramp = torch.linspace(-1.0, 1.0, cfg.N)
        grid = torch.stack(torch.meshgrid(ramp, ramp, indexing="ij"))  # (2, N, N): y, x
        self.register_buffer("grid", grid, persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        grid = self.grid.to(x.dtype).expand(x.shape[0], -1, -1, -1)
        z = self.refiner(self.blocks(self.lift(torch.cat([x, grid], dim=1))))
        return self.amplitude_head(z), self.phase_head(z)


class PtychoPINNNet(nn.Module):
    """The generator (``config.arch``) + amplitude/phase activations. ``forward(x)``:
    (B, C, N, N) normalised amplitudes -> (B, C, N, N) complex patches (complex64 for
    float32 weights). State-dict keys: the CNN's are those of version-1 bundles
    (``encoder.*``, ``amplitude_decoder.*``, ``phase_decoder.*``), the FFNO's ``ffno.*``."""

    def __init__(self, config: NetworkConfig | None = None, **kwargs):
        super().__init__()
        self.config = config if config is not None else NetworkConfig(**kwargs)
        cfg = self.config
        if cfg.arch == "cnn":
            f = cfg.filters
            self.encoder = nn.Sequential(*[_DownBlock(i, o) for i, o in zip([cfg.in_channels] + f[:-1], f)])
            skip = cfg.in_channels if cfg.input == "backprojection" else 0
            self.amplitude_decoder = _Decoder(f, cfg.C, skip)
            self.phase_decoder = _Decoder(f, cfg.C, skip)
        else:
            self.ffno = _FFNO(cfg)

    channels_last = False

    def use_channels_last(self, enabled: bool = True) -> "PtychoPINNNet":
        """CNN: run the 3x3 convolutions channels-last — measured 2-3x faster at inference
        and 1.5x per training step on 2 CPU cores (docs/benchmarks.md). Equal to the default
        layout up to float round-off, but not bit-for-bit repeatable from one process to
        the next (oneDNN), so ``train --deterministic`` leaves it off. The FFNO is unchanged."""
        if self.config.arch == "cnn":
            self.channels_last = bool(enabled)
            self.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)
        return self

    def _logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.config.arch == "ffno":
            return self.ffno(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        z = self.encoder(x)
        a, p = self.amplitude_decoder(z, x), self.phase_decoder(z, x)
        return a.contiguous(), p.contiguous()

    def _check_input(self, x: torch.Tensor) -> None:
        cfg = self.config
        if x.dim() != 4 or x.shape[1] != cfg.in_channels or x.shape[-2:] != (cfg.N, cfg.N):
            what = "C" if cfg.input == "amplitude" else "3C"
            raise ValueError(f"network input must be (B, {what}, N, N) = (B, {cfg.in_channels}, {cfg.N}, "
                             f"{cfg.N}) (gridsize {cfg.gridsize}, input {cfg.input}), got {tuple(x.shape)}")

    def amplitude_phase(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(amplitude, phase), each (B, C, N, N) real."""
        self._check_input(x)
        a, p = self._logits(x)
        act = self.config.amp_activation
        if act == "exp":
            amp = torch.exp(torch.clamp(a, -LOG_AMPLITUDE_LIMIT, LOG_AMPLITUDE_LIMIT))
        elif act == "sigmoid":
            amp = torch.sigmoid(a)
        else:
            amp = nn.functional.silu(a)
        return amp, math.pi * torch.tanh(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        amp, phase = self.amplitude_phase(x)
        # not torch.polar: SiLU amplitudes may be (slightly) negative
        return torch.complex(amp * torch.cos(phase), amp * torch.sin(phase))
