"""One epoch of the refine engine (docs/refine.md) on our kernels vs the same engine on
the plain-PyTorch reference ops, on the benchmark scan of docs/refine.md (1600 patterns,
N = 64, a 512 x 512 object; the coarse phase fit is off so both time the same steps).

    pytest benchmarks/bench_refine.py --benchmark-json=.benchmarks/refine.json
    python benchmarks/report.py .benchmarks/refine.json

PTYCHO_FAST_BENCH_SMALL=1 shrinks it to 64 patterns of N = 32 (CI smoke run).
"""

from __future__ import annotations

import pytest

from conftest import SMALL
from ptycho_fast import simulate
from ptycho_fast.refine import Refiner, RefineOptions

SIZE = (dict(n_patterns=64, N=32) if SMALL else
        dict(n_patterns=1600, N=64, object_size=512, step=11.0, probe_diameter=32.0))


@pytest.fixture(scope="module")
def scan():
    return simulate.simulate(seed=1, object="mixed", forward="fourier", **SIZE)


def _epoch(benchmark, scan, ops):
    r = Refiner(scan, RefineOptions(epochs=10_000, coarse_phase_every=0), ops=ops)
    r.run_epoch()                                   # warm-up (allocations, first FFT plans)
    benchmark.pedantic(r.run_epoch, rounds=2 if SMALL else 5, iterations=1)
    benchmark.extra_info["patterns"] = r.P


@pytest.mark.benchmark(group="refine_epoch")
def test_refine_epoch_ptycho_fast(benchmark, scan):
    _epoch(benchmark, scan, "ptycho_fast")


@pytest.mark.benchmark(group="refine_epoch")
def test_refine_epoch_reference_ops(benchmark, scan):
    _epoch(benchmark, scan, "reference")
