"""The compiled kernels against the plain-PyTorch reference, over the input space.

The kernels are called through torch.ops.ptycho_fast directly, so these tests can only
pass if the extension was built (tests/test_build.py fails loudly when it is not). Each
test runs on every device with the same samples (tests/op_samples.py): the CPU kernels
against the reference, the CUDA kernels against the CPU kernels.
"""

import pytest
import torch

from ptycho_fast import ops, reference
from conftest import REAL_AND_COMPLEX, random_data, tolerance
from op_samples import (DEVICES, KINDS, STITCH_MODES, assert_matches, expected, extract_inputs,
                        lead, make_positions, position_grad_inputs, reference_extract, reference_stitch,
                        stats_inputs, stats_views, stitch_inputs, stitch_mode, to_device)

pytestmark = pytest.mark.skipif(not ops.HAVE_EXTENSION, reason="compiled extension not built")
K = torch.ops.ptycho_fast


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", REAL_AND_COMPLEX)
@pytest.mark.parametrize("batch", [0, 3])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("P", [0, 1, 17])
@pytest.mark.parametrize("patch_hw", [(5, 5), (4, 7)])
@pytest.mark.parametrize("noncontig", [False, True])
@pytest.mark.parametrize("pos_dtype", [torch.float32, torch.float64])
def test_extract_matches_reference(device, dtype, batch, kind, P, patch_hw, noncontig, pos_dtype, gen):
    args = extract_inputs(device, gen, dtype=dtype, batch=batch, kind=kind, P=P, patch_hw=patch_hw,
                          pos_dtype=pos_dtype, noncontig=noncontig)
    got = K.extract_patches(*args)
    want = expected(device, reference_extract, K.extract_patches, args)
    assert got.shape == lead(batch) + (P, *patch_hw)
    assert got.dtype == dtype
    assert_matches(got, want, device, **tolerance(dtype))


@pytest.mark.parametrize("device, mode", STITCH_MODES)
@pytest.mark.parametrize("dtype", REAL_AND_COMPLEX)
@pytest.mark.parametrize("batch", [0, 2])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("P", [0, 1, 17])
@pytest.mark.parametrize("patch_hw", [(5, 5), (4, 7)])
@pytest.mark.parametrize("weights", [None, "shared", "per_patch"])
@pytest.mark.parametrize("pos_dtype", [torch.float32, torch.float64])
def test_stitch_matches_reference(device, mode, dtype, batch, kind, P, patch_hw, weights, pos_dtype, gen):
    args = stitch_inputs(device, gen, dtype=dtype, batch=batch, kind=kind, P=P, patch_hw=patch_hw,
                         weights=weights, pos_dtype=pos_dtype, noncontig=kind == "fractional")
    with stitch_mode(mode):
        got_canvas, got_wmap = K.stitch_patches(*args)
    want_canvas, want_wmap = expected(device, reference_stitch, K.stitch_patches, args)
    assert got_canvas.shape == lead(batch) + (19, 23)
    assert_matches(got_canvas, want_canvas, device, **tolerance(dtype))
    assert_matches(got_wmap, want_wmap, device, **tolerance(dtype))
    if weights is None:
        assert got_wmap.numel() == 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", REAL_AND_COMPLEX)
@pytest.mark.parametrize("shape", [(4, 6, 6), (2, 3, 5, 7), (8, 1), (6, 0, 4), (3, 300, 3),
                                   (7, 5), (3, 4, 5), (2, 3, 64, 64), (5, 1, 1), (0, 4, 4),
                                   (3, 0, 4), (4, 300, 7)])
def test_patch_stats_matches_reference(device, dtype, shape, gen):
    args = stats_inputs(device, gen, dtype=dtype, shape=shape)
    for view in stats_views(dtype):
        got = K.patch_stats(*args, view)
        want = expected(device, reference.patch_stats, K.patch_stats, (*args, view))
        for g, w in zip(got, want):
            assert g.shape == shape[:-2]
            assert_matches(g, w, device, **tolerance(dtype), equal_nan=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(64, 32, 32), (16, 64, 64)])
def test_patch_stats_keeps_tiny_variance_of_large_float32_amplitudes(device, shape, gen):
    # Amplitudes ~1e4 with a spread of 1e-2: a float32 sum of squares would lose it all.
    base = torch.full(shape, 1.0e4, dtype=torch.float32)
    noise = torch.randn(base.shape, generator=gen, dtype=torch.float64) * 1e-2
    patches = (base.double() + noise).float()
    exact = patches.double().flatten(-2).var(-1, correction=0)
    got = K.patch_stats(patches.to(device), "value")
    torch.testing.assert_close(got[1].double().cpu(), exact, rtol=1e-4, atol=0)
    assert (got[1] > 0).all()
    if device != "cpu":
        for g, w in zip(got, K.patch_stats(patches, "value")):
            assert_matches(g, w, device, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_patch_stats_reports_nan_and_inf(device):
    patches = torch.ones(3, 4, 4)
    patches[1, 2, 2] = float("nan")
    patches[2, 0, 0] = float("inf")
    mean, var, mn, mx = K.patch_stats(patches.to(device), "value")
    assert torch.isfinite(mean[0]) and var[0] == 0
    assert torch.isnan(mean[1]) and torch.isnan(var[1]) and torch.isnan(mn[1]) and torch.isnan(mx[1])
    assert torch.isinf(mx[2]) and not torch.isfinite(var[2])


@pytest.mark.parametrize("device", DEVICES)
def test_patch_stats_propagates_nan_in_complex_patches(device, gen):
    patches = random_data((4, 16, 16), torch.complex64, gen)
    patches[1, 3, 7] = complex(float("nan"), 0.0)
    patches[3, 15, 15] = complex(0.0, float("nan"))
    got = K.patch_stats(patches.to(device), "amplitude")
    want = expected(device, reference.patch_stats, K.patch_stats, (patches, "amplitude"))
    for g, w in zip(got, want):
        assert torch.isnan(g[[1, 3]]).all().item()
        assert_matches(g, w, device, equal_nan=True, rtol=1e-5, atol=1e-5)


# (canvas, patch, P): a small canvas; 35 values a patch; 1320 values a patch (on CUDA one
# ragged warp and many warps of a block).
POSITION_GRAD_GEOMETRIES = [((15, 17), (4, 6), 9)] + [
    ((50, 45), patch_hw, P) for patch_hw in [(5, 7), (40, 33)] for P in [0, 1, 17]]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", REAL_AND_COMPLEX)
@pytest.mark.parametrize("batch", [0, 2])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("canvas_hw, patch_hw, P", POSITION_GRAD_GEOMETRIES)
def test_position_grad_matches_reference(device, dtype, batch, kind, canvas_hw, patch_hw, P, gen):
    args = position_grad_inputs(device, gen, dtype=dtype, batch=batch, kind=kind, P=P,
                                patch_hw=patch_hw, canvas_hw=canvas_hw)
    got = K._position_grad(*args)
    want = expected(device, reference.position_grad, K._position_grad, args)
    assert got.dtype == args[1].dtype
    tol = tolerance(dtype)
    if device != "cpu" and dtype in (torch.float32, torch.complex64):
        # Sums of many products in a different order (and FMA contraction on the GPU).
        tol = dict(rtol=1e-4, atol=1e-4)
    assert_matches(got, want, device, **tol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("height, width", [(0, 0), (0, 9), (9, 0)])
def test_empty_canvas(device, height, width, gen):
    patches = random_data((2, 3, 4, 4), torch.complex64, gen)
    pos = make_positions("fractional", 2, 3, (12, 12), (4, 4), gen)
    w = torch.rand(4, 4, generator=gen)
    canvas, wmap = K.stitch_patches(*to_device(device, patches, pos), height, width, *to_device(device, w))
    assert canvas.shape == (2, height, width) and wmap.shape == (2, height, width)
    out = K.extract_patches(torch.zeros(2, height, width, dtype=torch.complex64, device=device),
                            pos.to(device), 4, 4)
    assert out.shape == (2, 3, 4, 4) and not out.abs().any()


def test_float32_positions_are_split_once_per_patch():
    # 1e5 + 0.25 is exact in float32; every pixel of the patch must see fraction 0.25
    # (flooring pos + i per pixel in float32 would not).
    canvas = torch.arange(8 * 100010, dtype=torch.float64).view(8, 100010).remainder(97)
    pos32 = torch.tensor([[2.25, 100000.25]], dtype=torch.float32)
    got = K.extract_patches(canvas, pos32, 3, 5)
    want = reference.extract_patches(canvas, pos32.double(), (3, 5))
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
    canvas = random_data(lead(batch) + (19, 23), dtype, gen)
    pos = make_positions("outside", batch, 9, (19, 23), (4, 6), gen, torch.float32)
    out = torch.full(lead(batch) + (9, 4, 6), float("nan"), dtype=dtype)
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
