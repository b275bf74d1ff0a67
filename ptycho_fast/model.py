"""The PtychoPINN encoder/decoder network (docs/design.md §1).

Input: C = gridsize² channels of **normalised** diffraction amplitudes ``X / s``
(``physics.network_input``), shape (B, C, N, N). Output: C complex object patches
``amplitude * exp(i * phase)``, shape (B, C, N, N).

Architecture (PtychoPINN's, with the width as a multiplier ``s`` of the filter counts):

* encoder: conv blocks of ``32s, 64s, 128s`` filters for N = 32 or 64 (``16s, 32s, 64s,
  128s`` for N = 128); each block is two 3x3 convolutions with ReLU and a 2x2 max-pool, so
  the bottleneck is N/8 (N/16 for N = 128) pixels wide;
* two decoders with separate weights, one for the amplitude and one for the phase; each
  mirrors the encoder: per level two 3x3 convolutions with ReLU and a 2x nearest
  upsampling (filters ``64s, 32s, 32s`` for N = 64), then a 3x3 convolution to C channels;
* amplitude = ``sigmoid`` (transmission in (0, 1)) or ``silu`` of the last convolution;
  phase = ``pi * tanh``.

The encoder and decoders are fully convolutional, so nothing but the pooling depth
depends on N; ``N`` must be divisible by 2**levels.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

__all__ = ["NetworkConfig", "PtychoPINNNet", "SUPPORTED_N", "AMP_ACTIVATIONS", "encoder_filters"]

SUPPORTED_N = (32, 64, 128)   # 32 is for fast tests; 64 and 128 are the PtychoPINN sizes
AMP_ACTIVATIONS = ("sigmoid", "silu")


def encoder_filters(N: int, width: float) -> list[int]:
    """Filter counts of the encoder blocks: 32s, 64s, 128s (N = 32, 64) or 16s, 32s, 64s, 128s
    (N = 128), at least 1 each."""
    base = (16, 32, 64, 128) if N == 128 else (32, 64, 128)
    return [max(1, int(round(b * width))) for b in base]


@dataclass
class NetworkConfig:
    """The network's hyper-parameters (stored in the model bundle)."""
    N: int = 64
    gridsize: int = 2
    width: float = 2.0
    amp_activation: str = "sigmoid"
    filters: list[int] = field(default_factory=list)  # derived from N and width

    def __post_init__(self) -> None:
        self.N, self.gridsize, self.width = int(self.N), int(self.gridsize), float(self.width)
        if self.N not in SUPPORTED_N:
            raise ValueError(f"N must be one of {', '.join(map(str, SUPPORTED_N))}, got {self.N}")
        if self.gridsize < 1:
            raise ValueError(f"gridsize must be >= 1, got {self.gridsize}")
        if not (math.isfinite(self.width) and self.width > 0):
            raise ValueError(f"width must be a number > 0, got {self.width}")
        if self.amp_activation not in AMP_ACTIVATIONS:
            raise ValueError(f"amp_activation must be one of {', '.join(AMP_ACTIVATIONS)}, "
                             f"got {self.amp_activation!r}")
        expected = encoder_filters(self.N, self.width)
        if self.filters and list(self.filters) != expected:
            raise ValueError(f"filters {list(self.filters)} do not match N = {self.N} and width "
                             f"{self.width} (expected {expected})")
        self.filters = expected

    @property
    def C(self) -> int:  # noqa: N802
        return self.gridsize ** 2

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
    def __init__(self, filters: list[int], C: int):
        super().__init__()
        # mirrored encoder: e.g. [32s, 64s, 128s] -> up blocks 64s, 32s, 32s
        outs = list(reversed(filters))[1:] + [filters[0]]
        cins = [filters[-1]] + outs[:-1]
        self.blocks = nn.Sequential(*[_UpBlock(i, o) for i, o in zip(cins, outs)])
        self.head = _conv(outs[-1], C)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(z))


class PtychoPINNNet(nn.Module):
    """Encoder + amplitude decoder + phase decoder. ``forward(x)``: (B, C, N, N) normalised
    amplitudes -> (B, C, N, N) complex patches (complex64 for float32 weights)."""

    def __init__(self, config: NetworkConfig | None = None, **kwargs):
        super().__init__()
        self.config = config if config is not None else NetworkConfig(**kwargs)
        cfg = self.config
        f = cfg.filters
        cins = [cfg.C] + f[:-1]
        self.encoder = nn.Sequential(*[_DownBlock(i, o) for i, o in zip(cins, f)])
        self.amplitude_decoder = _Decoder(f, cfg.C)
        self.phase_decoder = _Decoder(f, cfg.C)
        self._levels = len(f)

    def _check_input(self, x: torch.Tensor) -> None:
        cfg = self.config
        if x.dim() != 4 or x.shape[1] != cfg.C or x.shape[-2:] != (cfg.N, cfg.N):
            raise ValueError(f"network input must be (B, C, N, N) = (B, {cfg.C}, {cfg.N}, {cfg.N}) "
                             f"(gridsize {cfg.gridsize}), got {tuple(x.shape)}")

    def amplitude_phase(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(amplitude, phase), each (B, C, N, N) real."""
        self._check_input(x)
        z = self.encoder(x)
        a = self.amplitude_decoder(z)
        amp = torch.sigmoid(a) if self.config.amp_activation == "sigmoid" else nn.functional.silu(a)
        phase = math.pi * torch.tanh(self.phase_decoder(z))
        return amp, phase

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        amp, phase = self.amplitude_phase(x)
        # not torch.polar: SiLU amplitudes may be (slightly) negative
        return torch.complex(amp * torch.cos(phase), amp * torch.sin(phase))
