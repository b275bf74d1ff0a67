"""Bad input gives a clear error that names the argument and what was expected."""

import pytest
import torch

from ptycho_fast import ops

pytestmark = pytest.mark.skipif(not ops.HAVE_EXTENSION, reason="compiled extension not built")
K = torch.ops.ptycho_fast

canvas = torch.zeros(2, 10, 10)
pos = torch.zeros(2, 3, 2)
patches = torch.zeros(2, 3, 4, 4)


@pytest.mark.parametrize("call, match", [
    (lambda: K.extract_patches(torch.zeros(10), pos[0], 4, 4), r"canvas must have shape \(H, W\) or \(B, H, W\)"),
    (lambda: K.extract_patches(torch.zeros(1, 2, 10, 10), pos, 4, 4), r"canvas must have shape"),
    (lambda: K.extract_patches(canvas, pos[0], 4, 4), r"positions must have shape \(B, P, 2\)"),
    (lambda: K.extract_patches(canvas[0], pos, 4, 4), r"positions must have shape \(P, 2\)"),
    (lambda: K.extract_patches(canvas, torch.zeros(3, 3, 2), 4, 4), r"positions has batch size 3 but the data has batch size 2"),
    (lambda: K.extract_patches(canvas, torch.zeros(2, 3, 3), 4, 4), r"positions must have shape"),
    (lambda: K.extract_patches(canvas, pos.long(), 4, 4), r"positions must be float32 or float64"),
    (lambda: K.extract_patches(canvas.int(), pos, 4, 4), r"canvas must be float32, float64, complex64 or complex128"),
    (lambda: K.extract_patches(canvas, pos, 0, 4), r"patch_h and patch_w must be positive"),
    (lambda: K.extract_patches(canvas, pos, 4, -1), r"patch_h and patch_w must be positive"),
    (lambda: K.extract_patches(canvas, torch.tensor([[[0.0, float("nan")]]] * 2), 4, 4), r"positions contains a non-finite value"),
    (lambda: K.extract_patches(canvas, torch.tensor([[[float("inf"), 0.0]]] * 2), 4, 4), r"positions contains a non-finite value"),
    (lambda: K.extract_patches(canvas, pos.to("meta"), 4, 4), r"canvas is on cpu but positions is on meta"),
    (lambda: K.stitch_patches(patches, pos, 10, 10, torch.ones(4, 4, device="meta")), r"patches is on cpu but weights is on meta"),
    (lambda: K.stitch_patches(torch.zeros(4, 4), pos[0], 10, 10, None), r"patches must have shape \(P, h, w\) or \(B, P, h, w\)"),
    (lambda: K.stitch_patches(patches, torch.zeros(2, 5, 2), 10, 10, None), r"positions has 5 positions but patches has 3 patches"),
    (lambda: K.stitch_patches(patches, pos, -1, 10, None), r"height and width must be non-negative"),
    (lambda: K.stitch_patches(patches, pos, 10, 10, torch.ones(4, 4, dtype=torch.float64)), r"weights must be real with dtype Float"),
    (lambda: K.stitch_patches(patches.cfloat(), pos, 10, 10, torch.ones(4, 4, dtype=torch.cfloat)), r"weights must be real with dtype Float"),
    (lambda: K.stitch_patches(patches, pos, 10, 10, torch.ones(3, 4)), r"weights must have shape \(4, 4\) or the shape of patches"),
    (lambda: K.stitch_patches(patches, torch.full((2, 3, 2), float("nan")), 10, 10, None), r"positions contains a non-finite value"),
    (lambda: K.patch_stats(torch.zeros(5), "auto"), r"patches must have shape \(\.\.\., h, w\)"),
    (lambda: K.patch_stats(patches, "phase"), r"view 'phase' needs complex patches"),
    (lambda: K.patch_stats(patches.cfloat(), "value"), r"view 'value' needs real patches"),
    (lambda: K.patch_stats(patches, "mean"), r"view must be one of auto, value, amplitude, real, imag, phase"),
    (lambda: K._position_grad(canvas, pos, patches.double()), r"grad_patches must have the dtype of canvas"),
    (lambda: K._position_grad(canvas, pos, patches[:, :2]), r"grad_patches must have shape \(B, P, h, w\)"),
])
def test_bad_input_is_a_value_error_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_python_wrappers_check_sizes():
    with pytest.raises(ValueError, match="patch_size must be an int or a"):
        ops.extract_patches(canvas, pos, (4, 4, 4))
    with pytest.raises(ValueError, match="canvas_size must be an int or a"):
        ops.stitch_patches(patches, pos, (10,))
