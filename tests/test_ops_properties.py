"""Property-based checks (hypothesis) and orientation checks on an asymmetric object.

The orientation tests pin the convention with exact slices of an asymmetric canvas, so a
swapped row/column, a sign flip or a half-pixel shift anywhere in the kernels fails.
"""

import pytest
import torch
from hypothesis import given, settings, strategies as st

from ptycho_fast import ops, reference

pytestmark = pytest.mark.skipif(not ops.HAVE_EXTENSION, reason="compiled extension not built")
K = torch.ops.ptycho_fast


def letter_f(h=23, w=17):
    """An 'F' plus a ramp: no symmetry, no two pixels alike along either axis."""
    img = torch.zeros(h, w, dtype=torch.float64)
    img[3:20, 4:7] = 10.0     # stem
    img[3:6, 4:14] = 10.0     # top bar
    img[10:13, 4:11] = 10.0   # middle bar
    ramp = torch.arange(h, dtype=torch.float64)[:, None] * 0.01 + torch.arange(w, dtype=torch.float64) * 0.001
    return img + ramp


def test_extract_at_integer_positions_is_a_slice_row_then_column():
    canvas = letter_f()
    pos = torch.tensor([[2.0, 3.0], [9.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    patches = K.extract_patches(canvas, pos, 8, 11)
    for p, (r, c) in enumerate(pos.long().tolist()):
        assert torch.equal(patches[p], canvas[r:r + 8, c:c + 11])


def test_extract_at_half_pixel_is_the_mean_of_neighbours():
    canvas = letter_f()
    half_row = K.extract_patches(canvas, torch.tensor([[2.5, 3.0]], dtype=torch.float64), 5, 6)[0]
    torch.testing.assert_close(half_row, 0.5 * (canvas[2:7, 3:9] + canvas[3:8, 3:9]))
    half_col = K.extract_patches(canvas, torch.tensor([[2.0, 3.5]], dtype=torch.float64), 5, 6)[0]
    torch.testing.assert_close(half_col, 0.5 * (canvas[2:7, 3:9] + canvas[2:7, 4:10]))
    # A quarter pixel towards +row weights the next row by 1/4 (not 3/4: sign convention).
    quarter = K.extract_patches(canvas, torch.tensor([[2.25, 3.0]], dtype=torch.float64), 5, 6)[0]
    torch.testing.assert_close(quarter, 0.75 * canvas[2:7, 3:9] + 0.25 * canvas[3:8, 3:9])


def test_stitch_places_a_patch_at_row_then_column():
    patch = letter_f()[2:10, 3:14]
    canvas = K.stitch_patches(patch[None], torch.tensor([[5.0, 2.0]], dtype=torch.float64), 20, 18, None)[0]
    expected = torch.zeros(20, 18, dtype=torch.float64)
    expected[5:13, 2:13] = patch
    assert torch.equal(canvas, expected)
    shifted = K.stitch_patches(patch[None], torch.tensor([[5.25, 2.0]], dtype=torch.float64), 20, 18, None)[0]
    expected_shifted = torch.zeros(20, 18, dtype=torch.float64)
    expected_shifted[5:13, 2:13] += 0.75 * patch
    expected_shifted[6:14, 2:13] += 0.25 * patch
    torch.testing.assert_close(shifted, expected_shifted)


def test_stitch_normalized_of_exact_slices_recovers_the_canvas():
    canvas = letter_f()
    pos = torch.tensor([[r, c] for r in range(0, 16, 3) for c in range(0, 10, 3)], dtype=torch.float64)
    patches = torch.stack([canvas[r:r + 8, c:c + 8] for r, c in pos.long().tolist()])
    merged, weight = ops.stitch_normalized(patches, pos, canvas.shape)
    covered = weight > 0
    assert covered[:23, :17].sum() == 23 * 17
    torch.testing.assert_close(merged, canvas, rtol=1e-5, atol=0)


@settings(max_examples=60, deadline=None)
@given(
    B=st.integers(0, 2), P=st.integers(0, 6), H=st.integers(1, 12), W=st.integers(1, 12),
    h=st.integers(1, 6), w=st.integers(1, 6), complex_=st.booleans(), seed=st.integers(0, 2**31 - 1),
    scale=st.sampled_from([0.5, 1.0, 3.0]),
)
def test_random_shapes_and_positions_match_reference(B, P, H, W, h, w, complex_, seed, scale):
    g = torch.Generator().manual_seed(seed)
    lead = (B,) if B else ()
    dtype = torch.complex128 if complex_ else torch.float64
    canvas = torch.randn(lead + (H, W), dtype=dtype, generator=g)
    pos = (torch.rand(lead + (P, 2), dtype=torch.float64, generator=g) * (max(H, W) + 2 * h) - h) * scale
    torch.testing.assert_close(K.extract_patches(canvas, pos, h, w), reference.extract_patches(canvas, pos, (h, w)))
    patches = torch.randn(lead + (P, h, w), dtype=dtype, generator=g)
    weights = torch.rand(h, w, dtype=torch.float64, generator=g)
    for got, want in zip(K.stitch_patches(patches, pos, H, W, weights),
                         reference.stitch_patches(patches, pos, (H, W), weights)):
        torch.testing.assert_close(got, want)
    for got, want in zip(K.patch_stats(patches, "auto"), reference.patch_stats(patches, "auto")):
        torch.testing.assert_close(got, want, equal_nan=True)
