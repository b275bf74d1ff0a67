import pytest
import torch

from ptycho_fast import ops

REAL_AND_COMPLEX = [torch.float32, torch.float64, torch.complex64, torch.complex128]


def tolerance(dtype):
    """Parity tolerance: the kernels and the reference do the same arithmetic, but in
    float32 the order of additions (and FMA contraction) may differ."""
    return dict(rtol=1e-5, atol=1e-5) if dtype in (torch.float32, torch.complex64) else dict(rtol=1e-12, atol=1e-12)


def random_data(shape, dtype, generator):
    if dtype.is_complex:
        real = torch.float32 if dtype == torch.complex64 else torch.float64
        return torch.complex(torch.randn(shape, dtype=real, generator=generator),
                             torch.randn(shape, dtype=real, generator=generator))
    return torch.randn(shape, dtype=dtype, generator=generator)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


def pytest_report_header(config):
    return f"ptycho_fast compiled extension: {ops.HAVE_EXTENSION}; torch {torch.__version__}"
