"""The compiled kernels against the plain-PyTorch reference, over the input space.

The kernels are called through torch.ops.ptycho_fast directly, so these tests can only
pass if the extension was built (tests/test_build.py fails loudly when it is not).
"""

import pytest
import torch

from ptycho_fast import ops, reference
from conftest import REAL_AND_COMPLEX, random_data, tolerance

pytestmark = pytest.mark.skipif(not ops.HAVE_EXTENSION, reason="compiled extension not built")
K = torch.ops.ptycho_fast


def make_positions(kind, batch, P, canvas_hw, patch_hw, dtype, gen):
    """(B,P,2) or (P,2) positions of the given kind."""
    H, W = canvas_hw
    h, w = patch_hw
    shape = (batch, P, 2) if batch else (P, 2)
    u = torch.rand(shape, dtype=torch.float64, generator=gen)
    span = torch.tensor([H - h - 1, W - w - 1], dtype=torch.float64)
    if kind == "integer":
        pos = torch.floor(u * span)
    elif kind == "fractional":
        pos = u * span
    elif kind == "negative":
        pos = -u * torch.tensor([h, w], dtype=torch.float64) * 0.9
    else:  # "outside": some partly outside, some entirely beyond every edge
        pos = u * torch.tensor([H + 2 * h, W + 2 * w], dtype=torch.float64) - torch.tensor([1.5 * h, 1.5 * w])
    return pos.to(dtype)


def maybe_noncontiguous(t, noncontig):
    if not noncontig:
        return t
    # Same values, transposed storage: exercises the kernels' layout handling.
    return t.transpose(-1, -2).contiguous().transpose(-1, -2)


@pytest.mark.parametrize("dtype", REAL_AND_COMPLEX)
@pytest.mark.parametrize("batch", [0, 3])
@pytest.mark.parametrize("kind", ["integer", "fractional", "negative", "outside"])
@pytest.mark.parametrize("P", [0, 1, 17])
@pytest.mark.parametrize("patch_hw", [(5, 5), (4, 7)])
@pytest.mark.parametrize("noncontig", [False, True])
def test_extract_matches_reference(dtype, batch, kind, P, patch_hw, noncontig, gen):
    canvas_hw = (19, 23)
    canvas = random_data(((batch,) if batch else ()) + canvas_hw, dtype, gen)
    canvas = maybe_noncontiguous(canvas, noncontig)
    pos = maybe_noncontiguous(make_positions(kind, batch, P, canvas_hw, patch_hw, torch.float64, gen), noncontig)
    got = K.extract_patches(canvas, pos, *patch_hw)
    want = reference.extract_patches(canvas, pos, *patch_hw)
    assert got.shape == want.shape == ((batch,) if batch else ()) + (P, *patch_hw)
    assert got.dtype == canvas.dtype
    torch.testing.assert_close(got, want, **tolerance(dtype))


@pytest.mark.parametrize("dtype", REAL_AND_COMPLEX)
@pytest.mark.parametrize("batch", [0, 2])
@pytest.mark.parametrize("kind", ["integer", "fractional", "negative", "outside"])
@pytest.mark.parametrize("P", [0, 1, 17])
@pytest.mark.parametrize("patch_hw", [(5, 5), (4, 7)])
@pytest.mark.parametrize("weights", [None, "shared", "per_patch"])
def test_stitch_matches_reference(dtype, batch, kind, P, patch_hw, weights, gen):
    canvas_hw = (19, 23)
    lead = ((batch,) if batch else ()) + (P,)
    patches = maybe_noncontiguous(random_data(lead + patch_hw, dtype, gen), kind == "fractional")
    pos = make_positions(kind, batch, P, canvas_hw, patch_hw, torch.float32, gen)
    real = patches.real.dtype if dtype.is_complex else dtype
    w = None
    if weights == "shared":
        w = torch.rand(patch_hw, dtype=real, generator=gen)
    elif weights == "per_patch":
        w = torch.rand(lead + patch_hw, dtype=real, generator=gen)
    got_canvas, got_wmap = K.stitch_patches(patches, pos, *canvas_hw, w)
    want_canvas, want_wmap = reference.stitch_patches(patches, pos, *canvas_hw, w)
    assert got_canvas.shape == lead[:-1] + canvas_hw
    torch.testing.assert_close(got_canvas, want_canvas, **tolerance(dtype))
    torch.testing.assert_close(got_wmap, want_wmap, **tolerance(dtype))
    if w is None:
        assert got_wmap.numel() == 0


@pytest.mark.parametrize("dtype", REAL_AND_COMPLEX)
@pytest.mark.parametrize("shape", [(4, 6, 6), (2, 3, 5, 7), (8, 1), (6, 0, 4), (3, 300, 3)])
def test_patch_stats_matches_reference(dtype, shape, gen):
    patches = random_data(shape, dtype, gen) * 3 + 1
    views = ["auto", "amplitude", "real"] + (["imag", "phase"] if dtype.is_complex else ["value"])
    for view in views:
        got = K.patch_stats(patches, view)
        want = reference.patch_stats(patches, view)
        for g, w in zip(got, want):
            assert g.shape == shape[:-2]
            torch.testing.assert_close(g, w, **tolerance(dtype), equal_nan=True)


def test_patch_stats_keeps_tiny_variance_of_large_float32_amplitudes(gen):
    # Amplitudes ~1e4 with a spread of 1e-2: a float32 sum of squares would lose it all.
    base = torch.full((64, 32, 32), 1.0e4, dtype=torch.float32)
    noise = torch.randn(base.shape, generator=gen, dtype=torch.float64) * 1e-2
    patches = (base.double() + noise).float()
    exact = patches.double().flatten(-2).var(-1, correction=0)
    got = K.patch_stats(patches, "value")[1].double()
    torch.testing.assert_close(got, exact, rtol=1e-4, atol=0)
    assert (got > 0).all()


def test_patch_stats_reports_nan_and_inf():
    patches = torch.ones(3, 4, 4)
    patches[1, 2, 2] = float("nan")
    patches[2, 0, 0] = float("inf")
    mean, var, mn, mx = K.patch_stats(patches, "value")
    assert torch.isfinite(mean[0]) and var[0] == 0
    assert torch.isnan(mean[1]) and torch.isnan(var[1]) and torch.isnan(mn[1]) and torch.isnan(mx[1])
    assert torch.isinf(mx[2]) and not torch.isfinite(var[2])


@pytest.mark.parametrize("dtype", REAL_AND_COMPLEX)
@pytest.mark.parametrize("batch", [0, 2])
def test_position_grad_matches_reference(dtype, batch, gen):
    canvas_hw, patch_hw, P = (15, 17), (4, 6), 9
    canvas = random_data(((batch,) if batch else ()) + canvas_hw, dtype, gen)
    pos = make_positions("outside", batch, P, canvas_hw, patch_hw, torch.float64, gen)
    grad = random_data(((batch,) if batch else ()) + (P, *patch_hw), dtype, gen)
    got = K.position_grad(canvas, pos, grad)
    want = reference.position_grad(canvas, pos, grad)
    assert got.dtype == pos.dtype
    torch.testing.assert_close(got, want, **tolerance(dtype))


def test_float32_positions_are_split_once_per_patch():
    # 1e5 + 0.25 is exact in float32; every pixel of the patch must see fraction 0.25
    # (flooring pos + i per pixel in float32 would not).
    canvas = torch.arange(8 * 100010, dtype=torch.float64).view(8, 100010).remainder(97)
    pos32 = torch.tensor([[2.25, 100000.25]], dtype=torch.float32)
    got = K.extract_patches(canvas, pos32, 3, 5)
    want = reference.extract_patches(canvas, pos32.double(), 3, 5)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64])
def test_positions_beyond_int32_do_not_wrap(dtype, gen):
    # floor(2**32 + 1) truncated to 32 bits would be 1: inside the canvas. With 64-bit
    # indexing these patches are far outside: zeros on extract, dropped on stitch.
    canvas = random_data((10, 10), dtype, gen)
    big = float(2**32)
    pos = torch.tensor([[big + 1, 2.0], [2.0, big + 1], [-big + 1, 2.0]], dtype=torch.float64)
    assert K.extract_patches(canvas, pos, 3, 3).abs().max() == 0
    patches = random_data((3, 3, 3), dtype, gen)
    assert K.stitch_patches(patches, pos, 10, 10, None)[0].abs().max() == 0


@pytest.mark.parametrize("dtype", REAL_AND_COMPLEX)
@pytest.mark.parametrize("batch", [0, 2])
def test_extract_into_a_buffer_equals_extract(dtype, batch, gen):
    lead = (batch,) if batch else ()
    canvas = random_data(lead + (19, 23), dtype, gen)
    pos = make_positions("outside", batch, 9, (19, 23), (4, 6), torch.float32, gen)
    out = torch.full(lead + (9, 4, 6), float("nan"), dtype=dtype)
    result = ops.extract_patches(canvas, pos, (4, 6), out=out)
    assert result is out
    assert torch.equal(out, K.extract_patches(canvas, pos, 4, 6))


def test_extract_into_a_buffer_checks_the_buffer(gen):
    canvas = random_data((2, 10, 10), torch.complex64, gen)
    pos = torch.zeros(2, 3, 2)
    with pytest.raises(ValueError, match=r"out must have shape \[2, 3, 4, 4\]"):
        ops.extract_patches(canvas, pos, 4, out=torch.empty(3, 4, 4, dtype=torch.complex64))
    with pytest.raises(ValueError, match="out must have the dtype of canvas"):
        ops.extract_patches(canvas, pos, 4, out=torch.empty(2, 3, 4, 4))
    with pytest.raises(ValueError, match="out must be contiguous"):
        ops.extract_patches(canvas, pos, 4, out=torch.empty(2, 3, 4, 8, dtype=torch.complex64)[..., ::2])
    with pytest.raises(ValueError, match="out= does not support autograd"):
        ops.extract_patches(canvas.requires_grad_(True), pos, 4, out=torch.empty(2, 3, 4, 4, dtype=torch.complex64))
