"""Shared setup of the pytest-benchmark runs (see docs/benchmarks.md).

Sizes follow docs/design.md §7. PTYCHO_FAST_BENCH_SMALL=1 shrinks every case (CI smoke run:
the benchmark code is exercised without timing anything meaningful).
"""

import os

import pytest
import torch

SMALL = os.environ.get("PTYCHO_FAST_BENCH_SMALL") == "1"


def pytest_report_header(config):
    return (f"ptycho_fast benchmarks: torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"{'SMALL smoke sizes' if SMALL else 'full sizes'}")


@pytest.fixture(scope="session")
def gen():
    return torch.Generator().manual_seed(0)
