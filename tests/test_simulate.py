"""Simulator: the coordinate convention end to end, photon counts, objects, probes, scans."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ptycho_fast import physics
from ptycho_fast import simulate as sim
from ptycho_fast.data import (UserError, load_dataset, read_npz, read_ptychodus, write_h5,
                              write_ptychodus)

N = 32
H = N // 2


# ------------------------------------------------------------------ the convention, end to end
def f_object(shape=(112, 120)) -> np.ndarray:
    """An "F" (asymmetric under every flip, transpose and 90° turn) in the amplitude plus a
    phase ramp with different slopes along rows and columns."""
    amp = np.ones(shape)
    amp[20:84, 30:40] = 0.25   # stem
    amp[20:30, 30:80] = 0.25   # top bar
    amp[48:57, 30:66] = 0.25   # middle bar
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    phase = 0.011 * rows + 0.029 * cols
    return (amp * np.exp(1j * phase)).astype(np.complex64)


# Probe centres (row, col) with row != col everywhere, so a swap moves every patch.
CENTRES = np.array([[40, 50], [60, 45], [35, 70], [75, 52], [50, 38]], dtype=np.float64)


def _f_file(tmp_path, centres=CENTRES):
    """A PtychoPINN NPZ written by hand: xcoords = column, ycoords = row."""
    obj = f_object()
    probe = sim.make_probe("gaussian", N, 12.0)
    path = tmp_path / "f.npz"
    with open(path, "wb") as f:
        np.savez(f, diffraction=np.zeros((len(centres), N, N), np.float32), probeGuess=probe,
                 objectGuess=obj, xcoords=centres[:, 1], ycoords=centres[:, 0])
    return path, obj, probe


def test_f_object_patches_at_known_positions(tmp_path):
    path, obj, _ = _f_file(tmp_path)
    ds = read_npz(path)
    patches = sim.object_patches(ds.object, ds.positions, N).numpy()
    for p, (y, x) in enumerate(CENTRES.astype(int)):
        # the patch centred at (y, x) is object[y - N/2 : y + N/2, x - N/2 : x + N/2] ...
        np.testing.assert_array_equal(patches[p], obj[y - H:y + H, x - H:x + H])
        # ... so its pixel [N/2, N/2] is object[y, x]
        assert patches[p][H, H] == obj[y, x]
        assert np.angle(patches[p][H, H]) == pytest.approx(0.011 * y + 0.029 * x, abs=1e-5)


def test_f_object_stem_and_bar_land_where_expected(tmp_path):
    """Read the F back through the patches: which patch pixels are dark."""
    path, obj, _ = _f_file(tmp_path, centres=np.array([[40.0, 50.0]]))
    ds = read_npz(path)
    patch = sim.object_patches(ds.object, ds.positions, N).numpy()[0]
    dark = np.abs(patch) < 0.5
    # top-left of the patch is object (24, 34): the stem (cols 30..39) covers patch cols 0..5,
    # the top bar (rows 20..29) covers patch rows 0..5, the middle bar rows 48..56 -> 24..31
    expected = np.zeros((N, N), bool)
    expected[:, :6] = True   # stem
    expected[:6, :] = True   # top bar
    expected[24:, :] = True  # middle bar
    np.testing.assert_array_equal(dark, expected)


def test_f_object_half_pixel_positions(tmp_path):
    """A fractional centre interpolates between the two neighbouring integer patches, in the
    right direction: +0.5 row is halfway to the patch one row further down."""
    centres = CENTRES + np.array([0.5, 0.0])
    path, obj, _ = _f_file(tmp_path, centres)
    ds = read_npz(path)
    patches = sim.object_patches(ds.object, ds.positions, N).numpy()
    for p, (y, x) in enumerate(CENTRES.astype(int)):
        expected = 0.5 * (obj[y - H:y + H, x - H:x + H] + obj[y - H + 1:y + H + 1, x - H:x + H])
        np.testing.assert_allclose(patches[p], expected, atol=1e-6)


def test_f_object_diffraction_and_file_round_trip(tmp_path):
    """Simulated amplitudes equal an independent numpy forward model of the hand-cut patch,
    and survive NPZ -> HDF5/ptychodus -> dataset with the same positions."""
    path, obj, probe = _f_file(tmp_path)
    ds = read_npz(path)
    amps, used = sim.simulate_diffraction(ds.object, ds.probe, ds.positions, photons=None, noise=False)
    np.testing.assert_array_equal(used, probe)
    for p, (y, x) in enumerate(CENTRES.astype(int)):
        exit_wave = probe.astype(np.complex128) * obj[y - H:y + H, x - H:x + H]
        expected = np.abs(np.fft.fftshift(np.fft.fft2(exit_wave, norm="ortho")))
        np.testing.assert_allclose(amps[p], expected, rtol=1e-4, atol=1e-4 * expected.max())
    ds.diffraction = amps
    ds.metadata.pixel_size_m = 1e-8
    write_h5(ds, tmp_path / "f.h5")
    write_ptychodus(ds, tmp_path / "fp.h5")
    for other in (load_dataset(tmp_path / "f.h5"), read_ptychodus(tmp_path / "fp.h5")):
        np.testing.assert_allclose(other.positions, CENTRES, atol=1e-9)
        np.testing.assert_allclose(other.xcoords, CENTRES[:, 1], atol=1e-9)
        again = sim.object_patches(other.object, other.positions, N).numpy()
        for p, (y, x) in enumerate(CENTRES.astype(int)):
            np.testing.assert_allclose(again[p], obj[y - H:y + H, x - H:x + H], atol=1e-6)


# ------------------------------------------------------------------ forward model and dose
def test_simulator_uses_the_physics_forward_model():
    obj = f_object()
    probe = sim.make_probe("aperture", N)
    amps, used = sim.simulate_diffraction(obj, probe, CENTRES, photons=1e4, noise=False)
    direct = physics.diffraction_amplitude(sim.object_patches(obj, CENTRES, N), np.asarray(used))
    np.testing.assert_array_equal(amps, direct.numpy())


def test_photon_counts_match_within_poisson_error():
    photons, P = 2e4, 200
    ds = sim.simulate(seed=5, N=N, n_patterns=P, photons=photons)
    counts = ds.diffraction.astype(np.float64) ** 2
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-2)  # integer counts
    mean = counts.sum(axis=(1, 2)).mean()
    # sum of P Poisson totals ~ Poisson(P * photons): the mean has std sqrt(photons / P)
    assert abs(mean - photons) < 5 * math.sqrt(photons / P)
    assert ds.metadata.photons_per_pattern == photons
    # the stored probe is calibrated: the true object reproduces the counts exactly
    exact = sim.simulate(seed=5, N=N, n_patterns=P, photons=photons, noise=False)
    assert (exact.diffraction.astype(np.float64) ** 2).sum(axis=(1, 2)).mean() == pytest.approx(photons, rel=1e-5)
    np.testing.assert_array_equal(exact.probe, ds.probe)
    # no noise changes neither the object nor the scan
    np.testing.assert_array_equal(exact.object, ds.object)
    np.testing.assert_array_equal(exact.positions, ds.positions)


def test_seed_reproduces():
    a = sim.simulate(seed=11, N=N, n_patterns=30)
    b = sim.simulate(seed=11, N=N, n_patterns=30)
    c = sim.simulate(seed=12, N=N, n_patterns=30)
    np.testing.assert_array_equal(a.diffraction, b.diffraction)
    np.testing.assert_array_equal(a.object, b.object)
    # the simulator's probe is calibrated to --photons, and both files say so
    assert a.metadata.probe_calibrated == 1.0 and b.metadata.probe_calibrated == 1.0
    assert not np.array_equal(a.diffraction, c.diffraction)


@pytest.mark.parametrize("forward", sim.FORWARD_KINDS)
def test_npz_and_h5_outputs_are_identical(tmp_path, forward):
    cfg = sim.SimulationConfig(N=N, n_patterns=40, object="random", probe="gaussian", scan="spiral",
                               forward=forward)
    sim.simulate_to_file(cfg, tmp_path / "a.npz", "npz", seed=3, progress=False)
    sim.simulate_to_file(cfg, tmp_path / "a.h5", "h5", seed=3, progress=False)
    a, b = load_dataset(tmp_path / "a.npz"), load_dataset(tmp_path / "a.h5")
    np.testing.assert_array_equal(a.diffraction, b.diffraction)
    np.testing.assert_array_equal(a.probe, b.probe)
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_array_equal(a.object, b.object)


# ------------------------------------------------------------------ --forward fourier
def _rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _smooth_object(shape=(128, 128)) -> np.ndarray:
    """Band-limited and periodic (a few low-frequency cosines): translating the whole object
    in Fourier space is the exact sub-pixel shift, a reference for both forwards."""
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]] / np.array(shape)[:, None, None]
    amp = 1 + 0.3 * np.cos(2 * np.pi * (3 * rows + 2 * cols)) + 0.2 * np.sin(2 * np.pi * (rows - 4 * cols))
    return (amp * np.exp(0.5j * np.cos(2 * np.pi * 5 * cols))).astype(np.complex64)


def _exact_shifted_patches(obj, centres, n):
    """Patches of the object translated as a whole by each position's fraction (exact for a
    band-limited periodic object): patch[i, j] = obj(top_left + (i, j))."""
    spectrum = np.fft.fft2(obj.astype(np.complex128))
    ky, kx = np.fft.fftfreq(obj.shape[0])[:, None], np.fft.fftfreq(obj.shape[1])[None, :]
    out = []
    for top_left in centres - n / 2:
        base = np.floor(top_left).astype(int)
        fy, fx = top_left - base
        moved = np.fft.ifft2(spectrum * np.exp(2j * np.pi * (ky * fy + kx * fx)))
        out.append(moved[base[0]:base[0] + n, base[1]:base[1] + n])
    return np.array(out)


def test_fourier_patches_equal_bilinear_at_integer_positions():
    obj = f_object()
    # the last centre's patch sticks out of the object: both read zeros there
    centres = np.vstack([CENTRES, [[10.0, 12.0]]])
    fourier = sim.object_patches_fourier(obj, centres, N).numpy()
    bilinear = sim.object_patches(obj, centres, N).numpy()
    np.testing.assert_allclose(fourier, bilinear, atol=2e-6)
    assert np.abs(fourier[-1][:6, :4]).max() < 2e-6  # rows/cols -6.. and -4.. are outside


def test_fourier_patches_smooth_object_agree_sharp_object_differ():
    rng = np.random.default_rng(0)
    centres = 40 + rng.random((30, 2)) * 48          # fractional everywhere
    smooth = _smooth_object()
    fourier = sim.object_patches_fourier(smooth, centres, N).numpy()
    bilinear = sim.object_patches(smooth, centres, N).numpy()
    exact = _exact_shifted_patches(smooth, centres, N)
    assert _rel(fourier, bilinear) < 1e-2                 # band-limited: nearly the same ...
    assert np.abs(fourier - exact).max() < 1e-3           # ... and fourier is the exact shift
    assert np.abs(bilinear - exact).max() > 3 * np.abs(fourier - exact).max()
    # a sharp object: bilinear blurs edges the band-limited shift keeps -> a clear residual
    sharp = sim.make_object("mixed", (160, 160), np.random.default_rng(1))
    centres = 30 + rng.random((30, 2)) * 100
    residual = _rel(sim.object_patches_fourier(sharp, centres, N).numpy() - 1,
                    sim.object_patches(sharp, centres, N).numpy() - 1)
    assert residual > 0.03


def test_fourier_shift_moves_the_content_like_bilinear_extraction():
    """An asymmetric object at (+0.25, +0.5) px: the fourier patch must be the bilinear patch
    at the same position, not at the mirrored one (a flipped ramp sign would give that)."""
    from scipy.ndimage import gaussian_filter
    obj = f_object()
    obj = (gaussian_filter(obj.real, 1.5) + 1j * gaussian_filter(obj.imag, 1.5)).astype(np.complex64)
    shift = np.array([0.25, 0.5])
    fourier = sim.object_patches_fourier(obj, CENTRES + shift, N).numpy()
    same = _rel(fourier, sim.object_patches(obj, CENTRES + shift, N).numpy())
    mirrored = _rel(fourier, sim.object_patches(obj, CENTRES - shift, N).numpy())
    unshifted = _rel(fourier, sim.object_patches(obj, CENTRES, N).numpy())
    assert same < 0.02 and same < 0.2 * mirrored and same < 0.3 * unshifted, (same, mirrored, unshifted)
    # one axis at a time: a row-only and a column-only shift, so a swapped axis fails too
    for axis_shift in ([0.5, 0.0], [0.0, 0.5]):
        fourier = sim.object_patches_fourier(obj, CENTRES + axis_shift, N).numpy()
        same = _rel(fourier, sim.object_patches(obj, CENTRES + axis_shift, N).numpy())
        swapped = _rel(fourier, sim.object_patches(obj, CENTRES + axis_shift[::-1], N).numpy())
        assert same < 0.2 * swapped, (axis_shift, same, swapped)


def test_fourier_forward_keeps_the_photon_count_exact():
    photons, P = 2e4, 150
    kw = dict(seed=4, N=N, n_patterns=P, photons=photons, noise=False, object="mixed")
    fourier = sim.simulate(forward="fourier", **kw)
    bilinear = sim.simulate(**kw)
    counts = (fourier.diffraction.astype(np.float64) ** 2).sum(axis=(1, 2))
    assert counts.mean() == pytest.approx(photons, rel=1e-5)
    # same object and scan, other patterns (the probe scale differs a little with the patches)
    np.testing.assert_array_equal(fourier.object, bilinear.object)
    np.testing.assert_array_equal(fourier.positions, bilinear.positions)
    assert 1e-3 < _rel(fourier.diffraction, bilinear.diffraction) < 0.3
    # Parseval on the patches themselves: the calibration is that of the fourier patches
    probe = sim.calibrate_probe(fourier.object, sim.make_probe("aperture", N), fourier.positions, photons,
                                forward="fourier")
    patches = sim.object_patches_fourier(fourier.object, fourier.positions, N).numpy()
    assert (np.abs(probe.astype(np.complex128) * patches) ** 2).sum() / P == pytest.approx(photons, rel=1e-5)


# ------------------------------------------------------------------ building blocks
@pytest.mark.parametrize("kind", ["lines", "random", "deadleaves", "siemens", "mixed"])
def test_objects(kind):
    obj = sim.make_object(kind, (70, 90), np.random.default_rng(0), amp_contrast=0.4, phase_max=1.0)
    assert obj.shape == (70, 90) and obj.dtype == np.complex64
    amp, phase = np.abs(obj), np.angle(obj)
    assert amp.max() <= 1 + 1e-6 and amp.min() >= 0.6 - 1e-6 and amp.std() > 0.01
    assert phase.min() >= -1e-6 and phase.max() <= 1 + 1e-6


def _feature_map(kind, shape, seed):
    """The feature map f in [0, 1] of an object kind: amplitude = 1 - f with contrast 1."""
    obj = sim.make_object(kind, shape, np.random.default_rng(seed), amp_contrast=1.0, phase_max=1.0)
    return 1.0 - np.abs(obj).astype(np.float64)


def _energy_above(f, frequency):
    """Fraction of the spectral energy of f (mean removed) above ``frequency`` cycles/pixel."""
    power = np.abs(np.fft.fft2(f - f.mean())) ** 2
    k = np.hypot(np.fft.fftfreq(f.shape[0])[:, None], np.fft.fftfreq(f.shape[1])[None, :])
    return power[k > frequency].sum() / power.sum()


@pytest.mark.parametrize("shape", [(512, 512), (64, 64), (64, 300), (200, 96)])
def test_mixed_object(shape):
    f = _feature_map("mixed", shape, 3)
    assert f.shape == shape
    assert f.min() >= -1e-6 and f.max() <= 1 + 1e-6 and f.std() > 0.15
    np.testing.assert_array_equal(f, _feature_map("mixed", shape, 3))      # deterministic per seed
    assert np.abs(f - _feature_map("mixed", shape, 4)).mean() > 0.02       # and the seed matters
    # no mirror symmetry of the whole map (a centred star or bar chart alone would have some)
    flips = [f[::-1], f[:, ::-1], f[::-1, ::-1]] + ([f.T] if shape[0] == shape[1] else [])
    for flipped in flips:
        assert np.abs(f - flipped).mean() > 0.1
    # sharp: a good share of the energy above 0.2 cycles/pixel (a smooth blob has ~none)
    assert _energy_above(f, 0.2) > 0.05


def test_mixed_object_has_the_fine_structure_a_blob_lacks():
    """The high-frequency test above would fail for a smooth map: check it does."""
    assert _energy_above(_feature_map("random", (512, 512), 3), 0.2) < 0.01
    f = _feature_map("mixed", (512, 512), 3)
    assert _energy_above(f, 0.2) > 5 * _energy_above(_feature_map("random", (512, 512), 3), 0.2) + 0.05
    # the bar target reaches the 2-pixel period: 0/1 columns alternating somewhere in the map
    rows_with_period_2 = ((np.abs(np.diff(f, axis=1)) > 0.9).sum(axis=1) >= 2)
    assert rows_with_period_2.any()


def test_image_object(tmp_path):
    img = np.zeros((20, 30))
    img[:, 15:] = 1.0
    np.save(tmp_path / "a.npy", img)
    obj = sim.make_object("image", (40, 60), amp_contrast=0.5, phase_max=2.0,
                          amplitude_image=tmp_path / "a.npy", phase_image=tmp_path / "a.npy")
    assert np.abs(obj[:, :25]).max() == pytest.approx(0.5, abs=1e-6)   # black: 1 - contrast
    assert np.abs(obj[:, 35:]).min() == pytest.approx(1.0, abs=1e-6)   # white: transmits
    assert np.angle(obj[:, 35:]).min() == pytest.approx(2.0, abs=1e-5)
    PIL = pytest.importorskip("PIL.Image")
    PIL.fromarray((img * 255).astype(np.uint8)).save(tmp_path / "a.png")
    np.testing.assert_allclose(sim.read_image(tmp_path / "a.png"), img, atol=1e-6)
    with pytest.raises(UserError, match="no such image"):
        sim.read_image(tmp_path / "missing.png")


@pytest.mark.parametrize("kind", ["aperture", "gaussian"])
@pytest.mark.parametrize("n", [64, 128])
def test_probes(kind, n):
    probe = sim.make_probe(kind, n, n / 4)
    assert probe.shape == (n, n) and probe.dtype == np.complex64
    assert (np.abs(probe) ** 2).sum() == pytest.approx(1.0, rel=1e-5)
    intensity = np.abs(probe) ** 2
    yy, xx = np.mgrid[0:n, 0:n]
    assert (intensity * yy).sum() == pytest.approx(n / 2, abs=0.6)  # centred at (N/2, N/2)
    assert (intensity * xx).sum() == pytest.approx(n / 2, abs=0.6)
    r = np.hypot(yy - n / 2, xx - n / 2)
    assert intensity[r > 0.45 * n].sum() < 0.02                      # fits in the window
    if kind == "gaussian":
        assert sim.probe_diameter_estimate(probe) == pytest.approx(n / 4, rel=0.02)


def test_probe_from_file(tmp_path):
    probe = sim.make_probe("gaussian", N, 10)
    np.save(tmp_path / "p.npy", 3 * probe)
    np.testing.assert_allclose(sim.make_probe("file", N, probe_file=tmp_path / "p.npy"), probe, rtol=1e-5, atol=1e-7)
    with pytest.raises(UserError, match="N = 64"):
        sim.make_probe("file", 64, probe_file=tmp_path / "p.npy")


def test_scans():
    raster = sim.make_scan("raster", 10, 3.0)
    assert raster.shape == (10, 2) and raster.min() == 0
    np.testing.assert_array_equal(raster[:5], [[0, 0], [0, 3], [0, 6], [0, 9], [3, 0]])
    spiral = sim.make_scan("spiral", 500, 4.0, rng=0)
    from scipy.spatial import cKDTree
    nearest = cKDTree(spiral).query(spiral, k=2)[0][:, 1]
    assert 2.5 < np.median(nearest) < 5.0        # same density as a raster of step 4
    shift = sim.make_scan("raster", 100, 5.0, jitter=0.5, rng=1) - sim.make_scan("raster", 100, 5.0)
    assert 0.35 < (shift - shift.mean(axis=0)).std() < 0.65
    centres, shape = sim.place_scan(raster, N, margin=2)
    top_left = centres - N / 2
    assert top_left.min() >= 2 and (top_left + N + 1 + 2 <= np.array(shape)).all()
    with pytest.raises(UserError, match="too small"):
        sim.place_scan(raster, N, object_size=N)


def test_config_errors_name_the_option():
    for change, option in [({"photons": -1}, "--photons"), ({"overlap": 1.0}, "--overlap"),
                           ({"N": 33}, "--N"), ({"object": "image"}, "--object"),
                           ({"probe": "file"}, "--probe"), ({"n_patterns": 0}, "--n-patterns"),
                           ({"forward": "linear"}, "--forward")]:
        with pytest.raises(UserError, match=option):
            sim.simulate(**change)
