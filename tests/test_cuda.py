"""What only CUDA has: the stitch's two kernels (atomic, and deterministic under
torch.use_deterministic_algorithms), the public API across devices, device errors.

The CUDA kernels' parity with the CPU kernels, their gradients (float64 gradcheck) and
opcheck are the `cuda` variants of the op tests (tests/test_ops_*.py), which run the CPU
and CUDA kernels on the same samples (tests/op_samples.py). Skipped where no GPU is
visible. Data are made on the CPU with a seeded generator and copied to the GPU, so both
devices see identical inputs.
"""

import pytest
import torch

from ptycho_fast import ops
from conftest import REAL_AND_COMPLEX, random_data, tolerance
from op_samples import (HAVE_CUDA_OPS, assert_matches, deterministic_algorithms, make_positions,
                        to_device)

pytestmark = pytest.mark.skipif(
    not HAVE_CUDA_OPS, reason="needs a GPU and ptycho_fast built with CUDA (FORCE_CUDA=1)")
K = torch.ops.ptycho_fast
CUDA = "cuda"


def cuda(*tensors):
    return to_device(CUDA, *tensors)


def test_public_api_on_cuda(gen):
    canvas = random_data((2, 30, 30), torch.complex64, gen)
    pos = make_positions("fractional", 2, 9, (30, 30), (8, 8), gen, torch.float32)
    window = torch.rand(8, 8, generator=gen)
    patches = ops.extract_patches(canvas, pos, 8)
    want = ops.stitch_normalized(patches, pos, (30, 30), window)
    got = ops.stitch_normalized(*cuda(patches, pos), (30, 30), window.to(CUDA))
    for g, w in zip(got, want):
        assert_matches(g, w, CUDA, rtol=1e-5, atol=1e-5)
    assert_matches(ops.extract_patches(*cuda(canvas, pos), 8), patches, CUDA, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", REAL_AND_COMPLEX)
@pytest.mark.parametrize("weights", [None, "shared", "per_patch"])
def test_deterministic_stitch_is_bitwise_reproducible(dtype, weights, gen):
    # Many heavily overlapping patches: atomics would add in a different order each run.
    patches = random_data((2, 200, 16, 16), dtype, gen)
    pos = make_positions("outside", 2, 200, (40, 40), (16, 16), gen, torch.float32)
    real = patches.real.dtype if dtype.is_complex else dtype
    w = None if weights is None else torch.rand((16, 16) if weights == "shared" else patches.shape,
                                                dtype=real, generator=gen)
    args = (*cuda(patches, pos), 40, 40, *cuda(w))
    with deterministic_algorithms():
        first = K.stitch_patches(*args)
        second = K.stitch_patches(*args)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    want = K.stitch_patches(patches, pos, 40, 40, w)
    for g, want_t in zip(first, want):
        assert_matches(g, want_t, CUDA, **tolerance(dtype))


def test_deterministic_flag_is_read_per_call(gen):
    # Switching the flag between calls changes the path, not the result (up to round-off).
    patches = random_data((50, 8, 8), torch.float64, gen)
    pos = make_positions("fractional", 0, 50, (20, 20), (8, 8), gen)
    with deterministic_algorithms(False):
        fast = K.stitch_patches(*cuda(patches, pos), 20, 20, None)[0]
    with deterministic_algorithms(True):
        exact = K.stitch_patches(*cuda(patches, pos), 20, 20, None)[0]
    torch.testing.assert_close(fast, exact, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------
# Devices and errors
# --------------------------------------------------------------------------------------
def test_mixed_devices_are_rejected(gen):
    canvas = random_data((10, 10), torch.float32, gen)
    pos = torch.zeros(3, 2, device=CUDA)
    with pytest.raises(ValueError, match="same device"):
        K.extract_patches(canvas, pos, 3, 3)
    with pytest.raises(ValueError, match="same device"):
        K.stitch_patches(canvas.unsqueeze(0).expand(3, 10, 10), pos, 10, 10, None)


def test_nonfinite_cuda_positions_are_rejected_by_the_public_api(gen):
    canvas = random_data((10, 10), torch.float32, gen).to(CUDA)
    pos = torch.tensor([[1.0, float("nan")]], device=CUDA)
    with pytest.raises(ValueError, match="non-finite"):
        ops.extract_patches(canvas, pos, 3)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_runs_on_a_non_current_device(gen):
    # The device guard: inputs on cuda:1 while cuda:0 is current.
    canvas = random_data((2, 20, 20), torch.complex64, gen)
    pos = make_positions("fractional", 2, 5, (20, 20), (6, 6), gen)
    want = K.extract_patches(canvas, pos, 6, 6)
    with torch.cuda.device(0):
        got = K.extract_patches(canvas.to("cuda:1"), pos.to("cuda:1"), 6, 6)
        assert got.device == torch.device("cuda:1")
        torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-5)
        # The other ops, each with its own guard.
        patches = want
        on1 = lambda *ts: tuple(t.to("cuda:1") for t in ts)
        for got, expect in [
                (K.stitch_patches(*on1(patches, pos), 20, 20, None)[0], K.stitch_patches(patches, pos, 20, 20, None)[0]),
                (K.patch_stats(*on1(patches), "amplitude")[1], K.patch_stats(patches, "amplitude")[1]),
                (K._position_grad(*on1(canvas, pos, patches)), K._position_grad(canvas, pos, patches))]:
            assert got.device == torch.device("cuda:1")
            torch.testing.assert_close(got.cpu(), expect, rtol=1e-4, atol=1e-4)
