"""Kernel benchmarks against the pure-PyTorch baselines of docs/design.md §7.

Each benchmark group holds our op and its baselines, run in the same process; the ratios
in docs/benchmarks.md come from `python benchmarks/report.py` over the JSON of one run:

    pytest benchmarks/bench_ops.py --benchmark-json=.benchmarks/ops.json
    python benchmarks/report.py .benchmarks/ops.json
"""

import math

import pytest
import torch

from ptycho_fast import ops, reference
from conftest import SMALL

P, N, HW = (256, 32, 256) if SMALL else (4096, 64, 1024)
FULL_FIELD_P = 64 if SMALL else 1024
B_GROUPS, C = (4, 4) if SMALL else (16, 4)


@pytest.fixture(scope="module")
def data(gen):
    canvas = torch.complex(torch.randn(HW, HW, generator=gen), torch.randn(HW, HW, generator=gen))
    positions = torch.rand(P, 2, generator=gen) * (HW - N - 1)  # fractional, inside
    patches = ops.extract_patches(canvas, positions, N)
    window = torch.rand(N, N, generator=gen)
    return canvas, positions, patches, window


def run(benchmark, fn, rounds=5):
    fn()  # warm-up (allocator, first-touch of pages, lazy init)
    return benchmark.pedantic(fn, rounds=rounds, iterations=1)


# ---- extract ---------------------------------------------------------------------
@pytest.mark.benchmark(group="extract")
def test_extract_ptycho_fast(benchmark, data):
    canvas, positions, _, _ = data
    run(benchmark, lambda: ops.extract_patches(canvas, positions, N))


@pytest.mark.benchmark(group="extract")
def test_extract_baseline_gather_lerp(benchmark, data):
    canvas, positions, _, _ = data
    run(benchmark, lambda: reference.extract_patches(canvas, positions, N))


@pytest.mark.benchmark(group="extract")
def test_extract_baseline_clone_of_output(benchmark, data):
    patches = data[2]
    run(benchmark, lambda: patches.clone())


# Into a reused buffer (the training/inference loop case): no allocation, no page faults.
@pytest.mark.benchmark(group="extract_into_buffer")
def test_extract_into_buffer_ptycho_fast(benchmark, data):
    canvas, positions, patches, _ = data
    out = torch.empty_like(patches)
    run(benchmark, lambda: ops.extract_patches(canvas, positions, N, out=out))


@pytest.mark.benchmark(group="extract_into_buffer")
def test_extract_into_buffer_baseline_copy_of_output(benchmark, data):
    patches = data[2]
    out = torch.empty_like(patches)
    run(benchmark, lambda: out.copy_(patches))


# ---- stitch (with weight map) -------------------------------------------------------
@pytest.mark.benchmark(group="stitch")
def test_stitch_ptycho_fast(benchmark, data):
    _, positions, patches, window = data
    run(benchmark, lambda: ops.stitch_patches(patches, positions, (HW, HW), window))


@pytest.mark.benchmark(group="stitch")
def test_stitch_baseline_spread_index_add(benchmark, data):
    _, positions, patches, window = data
    run(benchmark, lambda: reference.stitch_patches(patches, positions, HW, window))


# ---- patch statistics ---------------------------------------------------------------
@pytest.mark.benchmark(group="patch_stats")
def test_patch_stats_ptycho_fast(benchmark, data):
    patches = data[2]
    run(benchmark, lambda: ops.patch_stats(patches))


@pytest.mark.benchmark(group="patch_stats")
def test_patch_stats_baseline_abs_var_mean_amin_amax(benchmark, data):
    patches = data[2]

    def baseline():
        amp = patches.abs()
        var, mean = torch.var_mean(amp, dim=(-2, -1), correction=0)
        return mean, var, amp.amin((-2, -1)), amp.amax((-2, -1))

    run(benchmark, baseline)


# ---- object_big: merge a group's C patches in a local canvas, extract back ----------
def object_big_case(gen):
    offsets = torch.tensor([[-6.3, -5.8], [-5.7, 6.1], [6.2, -6.4], [5.9, 5.6]])  # (C, 2)
    offsets = offsets + 0.3 * torch.randn(B_GROUPS, C, 2, generator=gen)
    pad = math.ceil(offsets.abs().max().item())
    local = N + 2 * pad
    top_left = offsets + pad  # (B, C, 2) in the local canvas
    patches = torch.complex(torch.randn(B_GROUPS, C, N, N, generator=gen),
                            torch.randn(B_GROUPS, C, N, N, generator=gen)).requires_grad_(True)
    window = torch.rand(N, N, generator=gen)
    return patches, top_left, local, window


def object_big_step(backend, patches, top_left, local, window):
    merged, weight = backend.stitch_patches(patches, top_left, local, window)
    back = backend.extract_patches(merged / (weight + 1e-3), top_left, N)
    back.abs().sum().backward()


@pytest.mark.benchmark(group="object_big")
def test_object_big_ptycho_fast(benchmark, gen):
    case = object_big_case(gen)
    run(benchmark, lambda: object_big_step(ops, *case), rounds=20)


@pytest.mark.benchmark(group="object_big")
def test_object_big_baseline_reference_ops(benchmark, gen):
    case = object_big_case(gen)
    run(benchmark, lambda: object_big_step(reference, *case), rounds=10)


# ---- full-field stitch of many patches -----------------------------------------------
def full_field_case(gen):
    side = int(math.sqrt(FULL_FIELD_P))
    step = N / 4
    grid = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij"), -1)
    positions = (grid.reshape(-1, 2) * step + torch.rand(side * side, 2, generator=gen)).float()
    size = int(step * side + N + 2)
    patches = torch.complex(torch.randn(side * side, N, N, generator=gen),
                            torch.randn(side * side, N, N, generator=gen))
    window = torch.rand(N, N, generator=gen)
    return patches, positions, size, window


@pytest.mark.benchmark(group="full_field_stitch")
def test_full_field_stitch_ptycho_fast(benchmark, gen):
    patches, positions, size, window = full_field_case(gen)
    run(benchmark, lambda: ops.stitch_normalized(patches, positions, (size, size), window), rounds=20)


@pytest.mark.benchmark(group="full_field_stitch")
def test_full_field_stitch_baseline_reference(benchmark, gen):
    patches, positions, size, window = full_field_case(gen)

    def baseline():
        canvas, weight = reference.stitch_patches(patches, positions, size, window)
        return canvas / (weight + 1e-6)

    run(benchmark, baseline)
