"""The CUDA kernels against the CPU kernels (which the rest of the suite checks against
the reference), deterministic stitching, float64 gradcheck on the GPU, opcheck.

Skipped where no GPU is visible. Data are made on the CPU with a seeded generator and
copied to the GPU, so both devices see identical inputs.
"""

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from ptycho_fast import ops
from conftest import REAL_AND_COMPLEX, random_data, tolerance

HAVE_CUDA_OPS = (ops.HAVE_EXTENSION and torch.cuda.is_available()
                 and torch._C._dispatch_has_kernel_for_dispatch_key("ptycho_fast::extract_patches", "CUDA"))
pytestmark = pytest.mark.skipif(
    not HAVE_CUDA_OPS, reason="needs a GPU and ptycho_fast built with CUDA (FORCE_CUDA=1)")
K = torch.ops.ptycho_fast
CUDA = "cuda"
# Atomic float64 additions may differ in the last bit between runs (order varies).
ATOMIC_TOL = 1e-10


@pytest.fixture
def deterministic():
    """Turns torch.use_deterministic_algorithms on for one test, restoring it after."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before)


def lead(batch):
    return (batch,) if batch else ()


def make_positions(kind, batch, P, canvas_hw, patch_hw, gen, dtype=torch.float64):
    """(B,P,2) or (P,2) positions: integer, fractional, negative (partly above/left of
    the canvas) or outside (some partly, some wholly beyond every edge)."""
    H, W = canvas_hw
    h, w = patch_hw
    u = torch.rand(lead(batch) + (P, 2), dtype=torch.float64, generator=gen)
    if kind == "integer":
        pos = torch.floor(u * torch.tensor([H - h - 1, W - w - 1.0]))
    elif kind == "fractional":
        pos = u * torch.tensor([H - h - 1, W - w - 1.0])
    elif kind == "negative":
        pos = -u * torch.tensor([h, w], dtype=torch.float64) * 0.9
    else:
        pos = u * torch.tensor([H + 2.0 * h, W + 2.0 * w]) - torch.tensor([1.5 * h, 1.5 * w])
    return pos.to(dtype)


def off_integer_positions(shape, lo, hi, gen):
    """Positions 0.2 away from integers: finite differences must not straddle a kink."""
    base = torch.randint(lo, hi, shape, generator=gen).to(torch.float64)
    return base + 0.2 + 0.6 * torch.rand(shape, dtype=torch.float64, generator=gen)


def cuda(*tensors):
    return tuple(None if t is None else t.to(CUDA) for t in tensors)


def assert_same_on_cpu(got, want, **tol):
    assert got.device.type == CUDA
    assert got.dtype == want.dtype and got.shape == want.shape
    torch.testing.assert_close(got.cpu(), want, **tol)


KINDS = ["integer", "fractional", "negative", "outside"]


# --------------------------------------------------------------------------------------
# Parity with the CPU kernels
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", REAL_AND_COMPLEX)
@pytest.mark.parametrize("batch", [0, 3])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("P", [0, 1, 17])
@pytest.mark.parametrize("pos_dtype", [torch.float32, torch.float64])
def test_extract_matches_cpu(dtype, batch, kind, P, pos_dtype, gen):
    canvas = random_data(lead(batch) + (19, 23), dtype, gen)
    pos = make_positions(kind, batch, P, (19, 23), (5, 7), gen, pos_dtype)
    want = K.extract_patches(canvas, pos, 5, 7)
    got = K.extract_patches(*cuda(canvas, pos), 5, 7)
    assert_same_on_cpu(got, want, **tolerance(dtype))


@pytest.mark.parametrize("dtype", REAL_AND_COMPLEX)
@pytest.mark.parametrize("batch", [0, 2])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("P", [0, 1, 17])
@pytest.mark.parametrize("weights", [None, "shared", "per_patch"])
@pytest.mark.parametrize("mode", ["atomic", "deterministic"])
def test_stitch_matches_cpu(dtype, batch, kind, P, weights, mode, gen, request):
    if mode == "deterministic":
        request.getfixturevalue("deterministic")
    patches = random_data(lead(batch) + (P, 5, 7), dtype, gen)
    pos = make_positions(kind, batch, P, (19, 23), (5, 7), gen)
    real = patches.real.dtype if dtype.is_complex else dtype
    w = None
    if weights is not None:
        shape = (5, 7) if weights == "shared" else patches.shape
        w = torch.rand(shape, dtype=real, generator=gen)
    want_canvas, want_map = K.stitch_patches(patches, pos, 19, 23, w)
    got_canvas, got_map = K.stitch_patches(*cuda(patches, pos), 19, 23, *cuda(w))
    assert_same_on_cpu(got_canvas, want_canvas, **tolerance(dtype))
    assert_same_on_cpu(got_map, want_map, **tolerance(dtype))


@pytest.mark.parametrize("dtype", REAL_AND_COMPLEX)
@pytest.mark.parametrize("batch", [0, 2])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("P", [0, 1, 17])
@pytest.mark.parametrize("patch_hw", [(5, 7), (40, 33)])  # 33 values: one ragged warp; 1320: many
def test_position_grad_matches_cpu(dtype, batch, kind, P, patch_hw, gen):
    canvas = random_data(lead(batch) + (50, 45), dtype, gen)
    pos = make_positions(kind, batch, P, (50, 45), patch_hw, gen)
    grad = random_data(lead(batch) + (P, *patch_hw), dtype, gen)
    want = K.position_grad(canvas, pos, grad)
    got = K.position_grad(*cuda(canvas, pos, grad))
    # Sums of many products in a different order (and FMA contraction on the GPU).
    tol = dict(rtol=1e-4, atol=1e-4) if dtype in (torch.float32, torch.complex64) else tolerance(dtype)
    assert_same_on_cpu(got, want, **tol)


@pytest.mark.parametrize("dtype", REAL_AND_COMPLEX)
@pytest.mark.parametrize("shape", [(7, 5), (3, 4, 5), (2, 3, 64, 64), (5, 1, 1), (0, 4, 4),
                                   (3, 0, 4), (4, 300, 7)])
def test_patch_stats_matches_cpu(dtype, shape, gen):
    patches = random_data(shape, dtype, gen)
    views = ["auto", "amplitude", "real", "imag", "phase"] if dtype.is_complex else ["auto", "value", "amplitude"]
    for view in views:
        want = K.patch_stats(patches, view)
        got = K.patch_stats(patches.to(CUDA), view)
        for g, w in zip(got, want):
            assert_same_on_cpu(g, w, equal_nan=True, **tolerance(dtype))


def test_patch_stats_keeps_variance_of_large_float32_values(gen):
    # Amplitudes ~1e4 with a spread of ~1e-2: float64 accumulation must keep the variance.
    patches = 1e4 + 1e-2 * torch.randn(16, 64, 64, generator=gen)
    want = K.patch_stats(patches, "auto")
    got = K.patch_stats(patches.to(CUDA), "auto")
    exact = patches.double().var(dim=(-2, -1), unbiased=False).float()
    torch.testing.assert_close(got[1].cpu(), exact, rtol=1e-4, atol=0)
    for g, w in zip(got, want):
        assert_same_on_cpu(g, w, rtol=1e-5, atol=1e-5)


def test_patch_stats_propagates_nan(gen):
    patches = random_data((4, 16, 16), torch.complex64, gen)
    patches[1, 3, 7] = complex(float("nan"), 0.0)
    patches[3, 15, 15] = complex(0.0, float("nan"))
    for g, w in zip(K.patch_stats(patches.to(CUDA), "amplitude"), K.patch_stats(patches, "amplitude")):
        assert torch.isnan(g[[1, 3]]).all().item()
        assert_same_on_cpu(g, w, equal_nan=True, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("height, width", [(0, 0), (0, 9), (9, 0)])
def test_empty_canvas(height, width, gen):
    patches = random_data((2, 3, 4, 4), torch.complex64, gen)
    pos = make_positions("fractional", 2, 3, (12, 12), (4, 4), gen)
    w = torch.rand(4, 4, generator=gen)
    canvas, wmap = K.stitch_patches(*cuda(patches, pos), height, width, *cuda(w))
    assert canvas.shape == (2, height, width) and wmap.shape == (2, height, width)
    out = K.extract_patches(torch.zeros(2, height, width, dtype=torch.complex64, device=CUDA),
                            pos.to(CUDA), 4, 4)
    assert out.shape == (2, 3, 4, 4) and not out.abs().any()


def test_public_api_on_cuda(gen):
    canvas = random_data((2, 30, 30), torch.complex64, gen)
    pos = make_positions("fractional", 2, 9, (30, 30), (8, 8), gen, torch.float32)
    window = torch.rand(8, 8, generator=gen)
    patches = ops.extract_patches(canvas, pos, 8)
    want = ops.stitch_normalized(patches, pos, (30, 30), window)
    got = ops.stitch_normalized(*cuda(patches, pos), (30, 30), window.to(CUDA))
    for g, w in zip(got, want):
        assert_same_on_cpu(g, w, rtol=1e-5, atol=1e-5)
    assert_same_on_cpu(ops.extract_patches(*cuda(canvas, pos), 8), patches, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", REAL_AND_COMPLEX)
@pytest.mark.parametrize("weights", [None, "shared", "per_patch"])
def test_deterministic_stitch_is_bitwise_reproducible(dtype, weights, deterministic, gen):
    # Many heavily overlapping patches: atomics would add in a different order each run.
    patches = random_data((2, 200, 16, 16), dtype, gen)
    pos = make_positions("outside", 2, 200, (40, 40), (16, 16), gen, torch.float32)
    real = patches.real.dtype if dtype.is_complex else dtype
    w = None if weights is None else torch.rand((16, 16) if weights == "shared" else patches.shape,
                                                dtype=real, generator=gen)
    args = (*cuda(patches, pos), 40, 40, *cuda(w))
    first = K.stitch_patches(*args)
    second = K.stitch_patches(*args)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    want = K.stitch_patches(patches, pos, 40, 40, w)
    for g, want_t in zip(first, want):
        assert_same_on_cpu(g, want_t, **tolerance(dtype))


def test_deterministic_flag_is_read_per_call(gen):
    # Switching the flag between calls changes the path, not the result (up to round-off).
    patches = random_data((50, 8, 8), torch.float64, gen)
    pos = make_positions("fractional", 0, 50, (20, 20), (8, 8), gen)
    before = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(False)
        fast = K.stitch_patches(*cuda(patches, pos), 20, 20, None)[0]
        torch.use_deterministic_algorithms(True)
        exact = K.stitch_patches(*cuda(patches, pos), 20, 20, None)[0]
    finally:
        torch.use_deterministic_algorithms(before)
    torch.testing.assert_close(fast, exact, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------
# Gradients in float64 on the GPU
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize("batch", [0, 2])
def test_extract_gradcheck(dtype, batch, gen):
    canvas = random_data(lead(batch) + (7, 8), dtype, gen).to(CUDA).requires_grad_(True)
    pos = off_integer_positions(lead(batch) + (4, 2), -3, 7, gen).to(CUDA).requires_grad_(True)
    fn = lambda c, p: ops.extract_patches(c, p, (3, 4))
    # extract's canvas gradient is the atomic stitch: two backward passes may differ in
    # the last bit of a float64 sum (not reentrant bitwise), far below gradcheck's tolerance.
    assert gradcheck(fn, (canvas, pos), nondet_tol=ATOMIC_TOL)
    assert gradgradcheck(fn, (canvas, pos), nondet_tol=ATOMIC_TOL)


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize("weights", [None, "shared", "per_patch"])
@pytest.mark.parametrize("mode", ["atomic", "deterministic"])
def test_stitch_gradcheck(dtype, weights, mode, gen, request):
    if mode == "deterministic":
        request.getfixturevalue("deterministic")
    patches = random_data((2, 3, 3, 4), dtype, gen).to(CUDA).requires_grad_(True)
    pos = off_integer_positions((2, 3, 2), -3, 6, gen).to(CUDA).requires_grad_(True)
    inputs = [patches, pos]
    if weights is None:
        fn = lambda q, p: ops.stitch_patches(q, p, (7, 8))
    else:
        shape = (3, 4) if weights == "shared" else (2, 3, 3, 4)
        w = torch.rand(shape, dtype=torch.float64, generator=gen).to(CUDA).requires_grad_(True)
        inputs.append(w)
        fn = lambda q, p, w: ops.stitch_patches(q, p, (7, 8), w)
    tol = 0.0 if mode == "deterministic" else ATOMIC_TOL
    assert gradcheck(fn, inputs, nondet_tol=tol)
    assert gradgradcheck(fn, inputs, nondet_tol=tol)


@pytest.mark.parametrize("view", ["amplitude", "real", "imag", "phase"])
def test_patch_stats_gradcheck(view, gen):
    patches = random_data((3, 4, 5), torch.complex128, gen).to(CUDA).requires_grad_(True)
    assert gradcheck(lambda q: tuple(ops.patch_stats(q, view)), (patches,))


def test_opcheck_on_cuda(gen):
    c32 = random_data((2, 12, 13), torch.float32, gen).to(CUDA).requires_grad_(True)
    cz = random_data((12, 13), torch.complex64, gen).to(CUDA).requires_grad_(True)
    p_b = off_integer_positions((2, 6, 2), -2, 11, gen).float().to(CUDA).requires_grad_(True)
    p_u = off_integer_positions((6, 2), -2, 11, gen).to(CUDA).requires_grad_(True)
    q32 = random_data((2, 6, 4, 5), torch.float32, gen).to(CUDA).requires_grad_(True)
    qz = random_data((6, 4, 5), torch.complex64, gen).to(CUDA).requires_grad_(True)
    w = torch.rand(4, 5, generator=gen).to(CUDA)
    cases = [
        (K.extract_patches, (c32, p_b, 4, 5)),
        (K.extract_patches, (cz, p_u, 4, 5)),
        (K.stitch_patches, (q32, p_b, 12, 13, None)),
        (K.stitch_patches, (qz, p_u, 12, 13, w)),
        (K.patch_stats, (qz, "amplitude")),
        (K.position_grad, (c32, p_b, q32.detach())),
    ]
    # The atomic stitch is not bitwise reproducible; opcheck compares repeated runs.
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        for op, args in cases:
            torch.library.opcheck(op, args)
    finally:
        torch.use_deterministic_algorithms(before)


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
