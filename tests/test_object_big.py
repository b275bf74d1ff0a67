"""object_big: merge + extract of a group's patches in a local canvas (ptycho_fast.object_big)."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from ptycho_fast import coords, ops, reference
from ptycho_fast.data import group_positions
from ptycho_fast.object_big import (WINDOWS, ObjectBig, local_canvas_size, local_top_left, make_window,
                                    merge_extract)

N = 16


def random_object(shape=(96, 96), seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.complex(torch.randn(shape, generator=g, dtype=torch.float64),
                         torch.randn(shape, generator=g, dtype=torch.float64))


def smooth_object(shape=(96, 96)) -> torch.Tensor:
    rows, cols = torch.meshgrid(torch.arange(shape[0], dtype=torch.float64),
                                torch.arange(shape[1], dtype=torch.float64), indexing="ij")
    amp = 0.8 + 0.1 * torch.sin(rows / 17.0) * torch.cos(cols / 23.0)
    return torch.polar(amp, 0.5 * torch.sin(rows / 19.0 + cols / 29.0))


def cut(obj: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Patches of the object centred at ``centres`` (..., 2): the one consistent truth."""
    return ops.extract_patches(obj, coords.centres_to_top_left(centres, N).reshape(-1, 2), N) \
        .reshape(*centres.shape[:-1], N, N)


def probe_like() -> torch.Tensor:
    r = torch.arange(N, dtype=torch.float64) - N / 2
    rr = r[:, None] ** 2 + r[None, :] ** 2
    return torch.exp(-rr / 30.0).to(torch.complex128) * torch.exp(1j * 0.01 * rr)


# An asymmetric group: no flip, transpose or sign change maps it onto itself. Integer
# member centres with an integer centroid, so every position in the local canvas is an
# integer and merge + extract must be exact.
CENTROIDS = torch.tensor([[48.0, 45.0], [40.0, 52.0], [55.0, 41.0]], dtype=torch.float64)
OFFSETS = torch.tensor([[[-3, -5], [-3, 1], [5, -3], [1, 7]],
                        [[0, 0], [6, -2], [-4, -4], [-2, 6]],
                        [[2, -7], [-6, 3], [1, 1], [3, 3]]], dtype=torch.float64)


def test_offsets_are_relative_to_the_centroid():
    assert torch.equal(OFFSETS.sum(dim=1), torch.zeros(3, 2, dtype=torch.float64))


@pytest.mark.parametrize("window_kind", WINDOWS)
def test_consistent_patches_come_back_unchanged(window_kind):
    """Patches cut from one object, merged and extracted in their local canvases (B = 3
    groups in one call), come back equal wherever some window covers them."""
    obj = random_object()
    patches = cut(obj, CENTROIDS[:, None, :] + OFFSETS)                # (3, 4, N, N)
    window = make_window(window_kind, N, probe_like(), dtype=torch.float64)
    out, canvas, weight_map = merge_extract(patches, OFFSETS, window, return_canvas=True)
    size = local_canvas_size(OFFSETS, N)
    assert size == N + 2 * 7 and canvas.shape == (3, size, size)
    weight_back = ops.extract_patches(weight_map, local_top_left(OFFSETS, N, size), N)
    # inside the weighted support (the normalisation's eps shrinks a pixel of accumulated
    # weight W by W / (W + 1e-9): < 1e-5 for W > 1e-4)
    covered = weight_back > 1e-4
    assert covered.float().mean() > 0.2
    torch.testing.assert_close(out[covered], patches[covered], rtol=1e-5, atol=1e-12)
    # where no window covers a pixel it comes back 0 (outside the weighted support)
    assert torch.equal(out[weight_back == 0], torch.zeros_like(out[weight_back == 0]))
    # the local canvas is the object around the centroid, inside the support
    c = CENTROIDS[0].long()
    crop = obj[c[0] - size // 2:c[0] + size // 2, c[1] - size // 2:c[1] + size // 2]
    inside = weight_map[0] > 1e-4
    torch.testing.assert_close(canvas[0][inside], crop[inside], rtol=1e-5, atol=1e-12)


def test_asymmetric_group_catches_an_offset_sign_error():
    """The same check with the offsets negated (the classic sign slip) must fail."""
    obj = random_object()
    patches = cut(obj, CENTROIDS[:, None, :] + OFFSETS)
    window = make_window("ones", N, dtype=torch.float64)
    good = merge_extract(patches, OFFSETS, window)
    torch.testing.assert_close(good, patches, rtol=1e-8, atol=1e-12)
    for wrong in (-OFFSETS, OFFSETS.flip(-1)):   # sign flipped, row/col swapped
        bad = merge_extract(patches, wrong, window)
        assert float((bad - patches).abs().max()) > 0.5


def test_fractional_positions_of_real_groups():
    """End to end with data-layer groups (fractional centroids): a constant object comes
    back exactly and a smooth one closely; wrong-signed offsets do not."""
    rng = np.random.default_rng(3)
    centres = rng.uniform(30, 66, size=(60, 2))
    groups = group_positions(centres, gridsize=2, seed=0)
    offsets = torch.from_numpy(groups.offsets)
    members = torch.from_numpy(centres[groups.indices])                 # (G, 4, 2)
    size = groups.local_canvas_size(N)
    assert size == local_canvas_size(offsets, N)
    torch.testing.assert_close(torch.from_numpy(groups.local_top_left(N)), local_top_left(offsets, N, size))
    assert (offsets.abs() % 1 > 0.01).any()  # genuinely fractional

    const = torch.full((96, 96), 0.7 - 0.2j, dtype=torch.complex128)
    window = make_window("probe", N, probe_like(), dtype=torch.float64)
    out, _, weight_map = merge_extract(cut(const, members), offsets, window, canvas_size=size,
                                       return_canvas=True)
    weight_back = ops.extract_patches(weight_map, local_top_left(offsets, N, size), N)
    covered = weight_back > 1e-4
    assert covered.float().mean() > 0.5
    torch.testing.assert_close(out[covered], cut(const, members)[covered], rtol=1e-4, atol=1e-12)

    patches = cut(smooth_object(), members)
    err = float((merge_extract(patches, offsets, window, canvas_size=size) - patches)[covered].abs().max())
    err_flipped = float((merge_extract(patches, -offsets, window, canvas_size=size) - patches)[covered].abs().max())
    assert err < 0.02 and err_flipped > 5 * err


@pytest.mark.parametrize("window_kind", ["probe", "central"])
def test_our_kernels_match_the_reference_forward_and_backward(window_kind):
    g = torch.Generator().manual_seed(7)
    B, C = 5, 4
    patches = torch.complex(torch.randn(B, C, N, N, generator=g), torch.randn(B, C, N, N, generator=g))
    offsets = (torch.rand(B, C, 2, generator=g) - 0.5) * 9
    window = make_window(window_kind, N, probe_like())
    results = []
    for backend in (ops, reference):
        p = patches.clone().requires_grad_(True)
        out = merge_extract(p, offsets, window, ops=backend)
        (out.abs().square().sum() + out.real.sum()).backward()
        results.append((out.detach(), p.grad))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-4, atol=1e-4)


def test_gradient_in_float64_matches_finite_differences():
    g = torch.Generator().manual_seed(1)
    patches = torch.complex(torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64),
                            torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)).requires_grad_(True)
    offsets = (torch.rand(2, 4, 2, generator=g, dtype=torch.float64) - 0.5) * 5
    window = make_window("ones", 8, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p: merge_extract(p, offsets, window), (patches,))


def test_ops_backend_selection():
    assert ops.backend(None) is ops and ops.backend(ops) is ops and ops.backend("ptycho_fast") is ops
    assert ops.backend(reference) is reference and ops.backend("reference") is reference
    with pytest.raises(ValueError, match="ops must be"):
        ops.backend("numpy")
    # the reference takes the ops' signatures: a backend is just a module
    g = torch.Generator().manual_seed(3)
    canvas, pos = torch.randn(12, 13, generator=g, dtype=torch.float64), torch.rand(4, 2, generator=g) * 6
    for name in ("extract_patches", "stitch_patches", "patch_stats"):
        assert inspect.signature(getattr(reference, name)) == inspect.signature(getattr(ops, name))
    torch.testing.assert_close(reference.extract_patches(canvas, pos, (3, 4)), ops.extract_patches(canvas, pos, (3, 4)))


def test_module_and_argument_checks():
    window = make_window("central", N)
    merge = ObjectBig(window, canvas_size=40)
    assert "window" not in merge.state_dict()  # rebuilt from the bundle's settings, not stored
    x = torch.zeros(2, 4, N, N, dtype=torch.complex64)
    assert merge(x, torch.zeros(2, 4, 2)).shape == (2, 4, N, N)
    with pytest.raises(ValueError, match="offsets must be"):
        merge(x, torch.zeros(2, 3, 2))
    with pytest.raises(ValueError, match="cannot hold"):
        merge_extract(x, torch.full((2, 4, 2), 20.0), window, canvas_size=40)
    with pytest.raises(ValueError, match="patches must be"):
        merge_extract(x[0], torch.zeros(4, 2), window)


def test_windows():
    c = make_window("central", 16)
    assert c.sum() == 64 and c[4:12, 4:12].min() == 1 and c[:4].max() == 0
    assert torch.equal(make_window("ones", 8), torch.ones(8, 8))
    modes = torch.stack([probe_like(), 0.5 * probe_like()])
    w = make_window("probe", N, modes)
    assert float(w.max()) == pytest.approx(1.0)
    torch.testing.assert_close(w, make_window("probe", N, probe_like()))  # same shape, rescaled
    with pytest.raises(ValueError, match="needs the probe"):
        make_window("probe", N)
    with pytest.raises(ValueError, match="window must be one of"):
        make_window("hann", N)
    with pytest.raises(ValueError, match="zero everywhere"):
        make_window("probe", N, torch.zeros(N, N, dtype=torch.complex64))
