"""The inputs of the op tests, one builder per op, shared by their CPU and CUDA variants.

The op tests are parametrised over DEVICES (as torchvision's and extension-cpp's are):
the same samples run on every device. Inputs are made on the CPU with the test's seeded
generator and then moved, so both devices see identical values, and a CUDA variant is
checked against the CPU kernel on the same inputs (`expected`), while the CPU variant is
checked against the plain-PyTorch reference. The CUDA variants skip where there is no GPU
or the extension was built without CUDA, but are always collected.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from ptycho_fast import ops, reference
from conftest import random_data

HAVE_CUDA_OPS = (ops.HAVE_EXTENSION and torch.cuda.is_available()
                 and torch._C._dispatch_has_kernel_for_dispatch_key("ptycho_fast::extract_patches", "CUDA"))
needs_cuda = pytest.mark.skipif(
    not HAVE_CUDA_OPS, reason="needs a GPU and ptycho_fast built with CUDA (FORCE_CUDA=1)")
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]
# stitch_patches has one CPU kernel and two CUDA kernels: atomics by default, a gather in
# patch order under torch.use_deterministic_algorithms(True). Parametrise as "device, mode".
STITCH_MODES = [pytest.param("cpu", "default", id="cpu"),
                pytest.param("cuda", "atomic", marks=needs_cuda, id="cuda-atomic"),
                pytest.param("cuda", "deterministic", marks=needs_cuda, id="cuda-deterministic")]
# Atomic float64 additions may differ in the last bit between runs (order varies).
ATOMIC_TOL = 1e-10
KINDS = ["integer", "fractional", "negative", "outside"]


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool = True):
    """torch.use_deterministic_algorithms(enabled) inside the block, restored after."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(enabled)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def stitch_mode(mode: str):
    """The context a STITCH_MODES mode runs in: deterministic turns the flag on."""
    return deterministic_algorithms(True) if mode == "deterministic" else contextlib.nullcontext()


def nondet_tol(device: str) -> float:
    """gradcheck's nondet_tol: on CUDA a backward may run the atomic stitch, whose float64
    sums may differ in the last bit between two passes (far below gradcheck's tolerance)."""
    return ATOMIC_TOL if device == "cuda" else 0.0


def lead(batch: int) -> tuple[int, ...]:
    return (batch,) if batch else ()


def to_device(device: str, *tensors):
    return tuple(None if t is None else t.to(device) for t in tensors)


def on_cpu(args):
    return tuple(a.cpu() if isinstance(a, torch.Tensor) else a for a in args)


def expected(device: str, reference_fn, kernel, args):
    """What the kernel on `device` must give for `args`: the reference on the CPU; on
    CUDA, the CPU kernel (which the CPU variant checks against the reference) on the same
    values."""
    return (reference_fn if device == "cpu" else kernel)(*on_cpu(args))


# The reference in the raw ops' calling convention (torch.ops.ptycho_fast: sizes as two
# ints; stitch returns (canvas, weight_map), the map empty without weights), so that
# `expected` applies one argument tuple to the kernel and to the reference.
def reference_extract(canvas, positions, patch_h, patch_w):
    return reference.extract_patches(canvas, positions, (patch_h, patch_w))


def reference_stitch(patches, positions, height, width, weights=None):
    out = reference.stitch_patches(patches, positions, (height, width), weights)
    if weights is not None:
        return out
    return out, patches.new_zeros(0, dtype=patches.real.dtype if patches.is_complex() else patches.dtype)


def assert_matches(got: torch.Tensor, want: torch.Tensor, device: str, **tol):
    """got (on `device`) equals want (on the CPU) in dtype, shape and value."""
    assert got.device.type == device
    assert got.dtype == want.dtype and got.shape == want.shape
    torch.testing.assert_close(got.cpu(), want, **tol)


def make_positions(kind, batch, P, canvas_hw, patch_hw, gen, dtype=torch.float64):
    """(B,P,2) or (P,2) positions: integer, fractional, negative (partly above/left of
    the canvas) or outside (some partly, some wholly beyond every edge)."""
    H, W = canvas_hw
    h, w = patch_hw
    u = torch.rand(lead(batch) + (P, 2), dtype=torch.float64, generator=gen)
    span = torch.tensor([H - h - 1, W - w - 1], dtype=torch.float64)
    if kind == "integer":
        pos = torch.floor(u * span)
    elif kind == "fractional":
        pos = u * span
    elif kind == "negative":
        pos = -u * torch.tensor([h, w], dtype=torch.float64) * 0.9
    else:
        pos = u * torch.tensor([H + 2 * h, W + 2 * w], dtype=torch.float64) - torch.tensor([1.5 * h, 1.5 * w])
    return pos.to(dtype)


def off_integer_positions(shape, lo, hi, gen):
    """Positions 0.2 away from integers: finite differences of the piecewise-bilinear
    interpolant must not straddle a kink."""
    base = torch.randint(lo, hi, shape, generator=gen).to(torch.float64)
    return base + 0.2 + 0.6 * torch.rand(shape, dtype=torch.float64, generator=gen)


def maybe_noncontiguous(t, noncontig):
    if not noncontig:
        return t
    # Same values, transposed storage: exercises the kernels' layout handling.
    return t.transpose(-1, -2).contiguous().transpose(-1, -2)


# --------------------------------------------------------------------------------------
# One builder per op: the op's arguments, in order, on `device`.
# --------------------------------------------------------------------------------------
def extract_inputs(device, gen, *, dtype, batch, kind, P, patch_hw, pos_dtype=torch.float64,
                   noncontig=False, canvas_hw=(19, 23)):
    """(canvas, positions, patch_h, patch_w)."""
    canvas = maybe_noncontiguous(random_data(lead(batch) + canvas_hw, dtype, gen), noncontig)
    pos = maybe_noncontiguous(make_positions(kind, batch, P, canvas_hw, patch_hw, gen, pos_dtype), noncontig)
    return (*to_device(device, canvas, pos), *patch_hw)


def stitch_inputs(device, gen, *, dtype, batch, kind, P, patch_hw, weights,
                  pos_dtype=torch.float64, noncontig=False, canvas_hw=(19, 23)):
    """(patches, positions, height, width, weights); weights None, "shared" ((h, w)) or
    "per_patch" (the shape of patches), real in the patches' precision."""
    patches = maybe_noncontiguous(random_data(lead(batch) + (P, *patch_hw), dtype, gen), noncontig)
    pos = make_positions(kind, batch, P, canvas_hw, patch_hw, gen, pos_dtype)
    real = patches.real.dtype if dtype.is_complex else dtype
    w = None
    if weights is not None:
        w = torch.rand(patch_hw if weights == "shared" else patches.shape, dtype=real, generator=gen)
    patches, pos, w = to_device(device, patches, pos, w)
    return patches, pos, *canvas_hw, w


def stats_inputs(device, gen, *, dtype, shape):
    """(patches,): values with a nonzero mean."""
    return to_device(device, random_data(shape, dtype, gen) * 3 + 1)


def stats_views(dtype):
    """Every view patch_stats accepts for the dtype."""
    return ["auto", "amplitude", "real"] + (["imag", "phase"] if dtype.is_complex else ["value"])


def position_grad_inputs(device, gen, *, dtype, batch, kind, P, patch_hw, canvas_hw):
    """(canvas, positions, grad_patches)."""
    canvas = random_data(lead(batch) + canvas_hw, dtype, gen)
    pos = make_positions(kind, batch, P, canvas_hw, patch_hw, gen)
    grad = random_data(lead(batch) + (P, *patch_hw), dtype, gen)
    return to_device(device, canvas, pos, grad)
