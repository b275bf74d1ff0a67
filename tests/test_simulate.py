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


def test_npz_and_h5_outputs_are_identical(tmp_path):
    cfg = sim.SimulationConfig(N=N, n_patterns=40, object="random", probe="gaussian", scan="spiral")
    sim.simulate_to_file(cfg, tmp_path / "a.npz", "npz", seed=3, progress=False)
    sim.simulate_to_file(cfg, tmp_path / "a.h5", "h5", seed=3, progress=False)
    a, b = load_dataset(tmp_path / "a.npz"), load_dataset(tmp_path / "a.h5")
    np.testing.assert_array_equal(a.diffraction, b.diffraction)
    np.testing.assert_array_equal(a.probe, b.probe)
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_array_equal(a.object, b.object)


# ------------------------------------------------------------------ building blocks
@pytest.mark.parametrize("kind", ["lines", "random", "deadleaves", "siemens"])
def test_objects(kind):
    obj = sim.make_object(kind, (70, 90), np.random.default_rng(0), amp_contrast=0.4, phase_max=1.0)
    assert obj.shape == (70, 90) and obj.dtype == np.complex64
    amp, phase = np.abs(obj), np.angle(obj)
    assert amp.max() <= 1 + 1e-6 and amp.min() >= 0.6 - 1e-6 and amp.std() > 0.01
    assert phase.min() >= -1e-6 and phase.max() <= 1 + 1e-6


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
                           ({"probe": "file"}, "--probe"), ({"n_patterns": 0}, "--n-patterns")]:
        with pytest.raises(UserError, match=option):
            sim.simulate(**change)
