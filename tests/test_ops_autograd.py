"""Adjointness, gradients (gradcheck / gradgradcheck in float64), opcheck, torch.compile
and thread-count determinism of the compiled ops. The gradient and opcheck tests run on
every device (tests/op_samples.py) with the same inputs."""

import contextlib

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from ptycho_fast import ops
from conftest import random_data
from op_samples import (DEVICES, STITCH_MODES, deterministic_algorithms, lead, nondet_tol,
                        off_integer_positions, stitch_mode)

pytestmark = pytest.mark.skipif(not ops.HAVE_EXTENSION, reason="compiled extension not built")
K = torch.ops.ptycho_fast


def real_inner(a, b):
    if a.is_complex():
        a, b = torch.view_as_real(a), torch.view_as_real(b)
    return (a * b).sum()


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize("batch", [0, 2])
def test_stitch_is_the_adjoint_of_extract(dtype, batch, gen):
    x = random_data(lead(batch) + (21, 18), dtype, gen)
    pos = off_integer_positions(lead(batch) + (40, 2), -6, 20, gen)
    y = random_data(lead(batch) + (40, 6, 5), dtype, gen)
    lhs = real_inner(K.extract_patches(x, pos, 6, 5), y)
    rhs = real_inner(x, K.stitch_patches(y, pos, 21, 18, None)[0])
    torch.testing.assert_close(lhs, rhs, rtol=1e-13, atol=1e-12)


def test_weighted_stitch_is_the_adjoint_of_weighted_extract(gen):
    x = random_data((2, 16, 16), torch.float64, gen)
    pos = off_integer_positions((2, 12, 2), -3, 14, gen)
    y = random_data((2, 12, 5, 5), torch.float64, gen)
    w = torch.rand(5, 5, dtype=torch.float64, generator=gen)
    lhs = real_inner(K.extract_patches(x, pos, 5, 5) * w, y)
    rhs = real_inner(x, K.stitch_patches(y, pos, 16, 16, w)[0])
    torch.testing.assert_close(lhs, rhs, rtol=1e-13, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize("batch", [0, 2])
def test_extract_gradients(device, dtype, batch, gen):
    canvas = random_data(lead(batch) + (7, 8), dtype, gen).to(device).requires_grad_(True)
    pos = off_integer_positions(lead(batch) + (4, 2), -3, 7, gen).to(device).requires_grad_(True)
    fn = lambda c, p: ops.extract_patches(c, p, (3, 4))
    # extract's canvas gradient is the stitch (on CUDA the atomic one: not reentrant bitwise).
    assert gradcheck(fn, (canvas, pos), nondet_tol=nondet_tol(device))
    assert gradgradcheck(fn, (canvas, pos), nondet_tol=nondet_tol(device))


@pytest.mark.parametrize("device, mode", STITCH_MODES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize("weights", [None, "shared", "per_patch"])
def test_stitch_gradients(device, mode, dtype, weights, gen):
    patches = random_data((2, 3, 3, 4), dtype, gen).to(device).requires_grad_(True)
    pos = off_integer_positions((2, 3, 2), -3, 6, gen).to(device).requires_grad_(True)
    inputs = [patches, pos]
    if weights is None:
        fn = lambda q, p: ops.stitch_patches(q, p, (7, 8))
    else:
        shape = (3, 4) if weights == "shared" else (2, 3, 3, 4)
        inputs.append(torch.rand(shape, dtype=torch.float64, generator=gen).to(device).requires_grad_(True))
        fn = lambda q, p, w: ops.stitch_patches(q, p, (7, 8), w)
    tol = 0.0 if mode == "deterministic" else nondet_tol(device)
    with stitch_mode(mode):
        assert gradcheck(fn, inputs, nondet_tol=tol)
        assert gradgradcheck(fn, inputs, nondet_tol=tol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("view", ["amplitude", "real", "imag", "phase"])
def test_patch_stats_gradients(device, view, gen):
    patches = random_data((3, 4, 5), torch.complex128, gen).to(device).requires_grad_(True)
    assert gradcheck(lambda q: tuple(ops.patch_stats(q, view)), (patches,))


def test_stitch_normalized_gradient_flows_to_patches(gen):
    patches = random_data((6, 4, 4), torch.float64, gen).requires_grad_(True)
    pos = off_integer_positions((6, 2), 0, 6, gen)
    assert gradcheck(lambda q: ops.stitch_normalized(q, pos, (12, 12))[0], (patches,))


def opcheck_cases(device, gen):
    leaf = lambda t: t.to(device).requires_grad_(True)
    c32 = leaf(random_data((2, 12, 13), torch.float32, gen))
    cz = leaf(random_data((12, 13), torch.complex64, gen))
    p_b = leaf(off_integer_positions((2, 6, 2), -2, 11, gen).float())
    p_u = leaf(off_integer_positions((6, 2), -2, 11, gen))
    q32 = leaf(random_data((2, 6, 4, 5), torch.float32, gen))
    qz = leaf(random_data((6, 4, 5), torch.complex64, gen))
    rand = lambda *shape: torch.rand(*shape, generator=gen).to(device)
    return [
        (K.extract_patches, (c32, p_b, 4, 5)),
        (K.extract_patches, (cz, p_u, 4, 5)),
        (K.stitch_patches, (q32, p_b, 12, 13, None)),
        (K.stitch_patches, (q32, p_b, 12, 13, rand(4, 5))),
        (K.stitch_patches, (qz, p_u, 12, 13, rand(6, 4, 5))),
        (K.stitch_patches, (qz, p_u, 12, 13, rand(4, 5))),
        (K.patch_stats, (qz, "amplitude")),
        (K.patch_stats, (q32, "value")),
        (K._position_grad, (c32, p_b, q32.detach())),
        (K._position_grad, (cz, p_u, qz.detach())),
        (K.extract_patches_into, (c32.detach(), p_b.detach(), 4, 5, torch.empty(2, 6, 4, 5, device=device))),
    ]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", range(11))
def test_opcheck(device, case, gen):
    op, args = opcheck_cases(device, gen)[case]
    # opcheck compares repeated runs: on CUDA the stitch must gather, not use atomics.
    context = deterministic_algorithms() if device == "cuda" else contextlib.nullcontext()
    with context:
        torch.library.opcheck(op, args)


def test_torch_compile_fullgraph(gen):
    canvas = random_data((2, 20, 20), torch.complex64, gen)
    pos = off_integer_positions((2, 7, 2), 0, 12, gen).float()
    window = torch.rand(6, 6, generator=gen)

    def step(canvas, pos):
        patches = ops.extract_patches(canvas, pos, 6)
        merged, weight = ops.stitch_patches(patches, pos, (20, 20), window)
        return merged / (weight + 1e-3), ops.patch_stats(patches).var

    compiled = torch.compile(step, fullgraph=True, backend="inductor")
    got = compiled(canvas, pos)
    want = step(canvas, pos)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_results_do_not_depend_on_thread_count(gen):
    canvas = random_data((2, 200, 180), torch.complex64, gen)
    pos = torch.rand((2, 300, 2), generator=gen) * 170 - 5
    patches = random_data((2, 300, 16, 16), torch.complex64, gen)
    w = torch.rand(16, 16, generator=gen)

    def run_all():
        return (K.extract_patches(canvas, pos, 16, 16), *K.stitch_patches(patches, pos, 200, 180, w),
                *K.patch_stats(patches, "amplitude"), K._position_grad(canvas, pos, patches))

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run_all()
        torch.set_num_threads(2)
        two = run_all()
    finally:
        torch.set_num_threads(before)
    for a, b in zip(one, two):
        assert torch.equal(a, b)  # bitwise
