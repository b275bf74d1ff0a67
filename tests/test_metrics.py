"""Metrics against hand-computed values and known properties (docs/evaluation.md)."""

import math

import numpy as np
import pytest

from ptycho_fast import metrics


# ----------------------------------------------------------------------------- SSIM
def _ssim_brute(a, b, L):
    """SSIM written out window by window (Wang et al. 2004, 11 x 11 Gaussian, sigma 1.5)."""
    r = 5
    y = np.arange(-r, r + 1)
    g = np.exp(-y ** 2 / (2 * 1.5 ** 2))
    w = np.outer(g, g)
    w /= w.sum()
    C1, C2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    vals = []
    for i in range(r, a.shape[0] - r):
        for j in range(r, a.shape[1] - r):
            pa, pb = a[i - r:i + r + 1, j - r:j + r + 1], b[i - r:i + r + 1, j - r:j + r + 1]
            ma, mb = (w * pa).sum(), (w * pb).sum()
            va, vb = (w * (pa - ma) ** 2).sum(), (w * (pb - mb) ** 2).sum()
            c = (w * (pa - ma) * (pb - mb)).sum()
            vals.append((2 * ma * mb + C1) * (2 * c + C2) / ((ma * ma + mb * mb + C1) * (va + vb + C2)))
    return float(np.mean(vals))


def test_ssim_identical_is_one():
    a = np.random.default_rng(0).random((16, 19))
    assert metrics.ssim(a, a) == pytest.approx(1.0, abs=1e-12)


def test_ssim_constant_images_hand_computed():
    # mu_a = 0.5, mu_b = 0.25, no variance: SSIM = (2*0.125 + C1) / (0.25 + 0.0625 + C1), C1 = 1e-4
    a, b = np.full((12, 12), 0.5), np.full((12, 12), 0.25)
    assert metrics.ssim(a, b, data_range=1.0) == pytest.approx(0.2501 / 0.3126, rel=1e-12)


@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_ssim_matches_window_by_window(offset):
    rng = np.random.default_rng(1)
    a = rng.random((20, 23)) * 3 + offset
    b = a + 0.3 * rng.standard_normal(a.shape)
    L = float(a.max() - a.min())
    assert metrics.ssim(a, b) == pytest.approx(_ssim_brute(a, b, L), rel=1e-9)
    # data_range defaults to the range of the first argument (the truth)
    assert metrics.ssim(a, b) == pytest.approx(metrics.ssim(a, b, data_range=L), rel=1e-12)


def test_ssim_errors():
    a = np.zeros((12, 12))
    with pytest.raises(ValueError, match="same shape"):
        metrics.ssim(a, np.zeros((12, 13)))
    with pytest.raises(ValueError, match="complex"):
        metrics.ssim(a, a.astype(np.complex64))
    with pytest.raises(ValueError, match="11 x 11"):
        metrics.ssim(np.zeros((8, 8)), np.zeros((8, 8)))
    with pytest.raises(ValueError, match="data_range"):
        metrics.ssim(a, a, data_range=0)


# ----------------------------------------------------------------------------- MAE, RMSE, PSNR
def test_pixel_errors_hand_computed():
    a = np.array([[0.0, 1.0], [2.0, 3.0]])
    b = np.array([[1.0, 1.0], [2.0, 5.0]])          # differences 1, 0, 0, 2
    assert metrics.mae(a, b) == pytest.approx(0.75)
    assert metrics.rmse(a, b) == pytest.approx(math.sqrt(5 / 4))
    # L = range of a = 3: 10 log10(9 / 1.25)
    assert metrics.psnr(a, b) == pytest.approx(10 * math.log10(9 / 1.25))
    assert metrics.psnr(a, b, data_range=1.0) == pytest.approx(10 * math.log10(1 / 1.25))
    assert metrics.psnr(a, a) == math.inf
    assert metrics.mae(a, a) == 0.0


def test_pixel_error_inputs_are_checked():
    a = np.zeros((4, 4))
    with pytest.raises(ValueError, match="b must be a real array"):
        metrics.mae(a, a + 1j)
    with pytest.raises(ValueError, match="same shape"):
        metrics.rmse(a, np.zeros((4, 5)))
    with pytest.raises(ValueError, match="2-D"):
        metrics.psnr(np.zeros(4), np.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        metrics.mae(a, np.full((4, 4), np.nan))


# ----------------------------------------------------------------------------- FRC
def test_half_bit_threshold_values():
    # n = 1: (0.2071 + 1.9102) / (1.2071 + 0.9102) = 1 exactly; n -> inf: 0.2071 / 1.2071
    assert metrics.half_bit_threshold(1) == pytest.approx(1.0)
    assert metrics.half_bit_threshold(1e12) == pytest.approx(0.2071 / 1.2071, rel=1e-5)
    assert metrics.half_bit_threshold(100) == pytest.approx((0.2071 + 0.19102) / (1.2071 + 0.09102))


def test_frc_of_image_with_itself_is_one_everywhere():
    rng = np.random.default_rng(2)
    a = rng.random((40, 48))
    for taper in (0.0, 0.1):
        res = metrics.frc(a, a, taper=taper)
        assert np.all(res.frc[1:] == 1.0)               # ring 0 is the (removed) mean
        assert res.frequency[-1] == pytest.approx(0.5)
        hb = res.resolution("half_bit")
        assert hb == {"frequency": 0.5, "resolution_px": 1.0, "fraction_of_nyquist": 1.0, "crossed": False,
                      "low_frequency_deficit_to": None}


def test_frc_of_independent_noise_is_near_zero():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((128, 128)), rng.standard_normal((128, 128))
    res = metrics.frc(a, b)
    assert abs(res.mean()) < 0.02
    # every ring within 5 standard errors (1/sqrt(n) of a ring of n Fourier pixels) of zero
    assert np.all(np.abs(res.frc[2:]) < 5 / np.sqrt(res.n_pixels[2:]))
    hb = res.resolution("half_bit")
    assert hb["crossed"] and hb["fraction_of_nyquist"] < 0.1
    assert hb["low_frequency_deficit_to"] is None


def test_frc_resolution_skips_a_low_frequency_deficit():
    """A curve below the threshold on the coarsest rings only (as a slow phase error
    gives) is searched from its first run of FRC_START_RUN rings above; the deficit is
    reported. A run that starts beyond FRC_START_MAX_NYQUIST is not a start."""
    f = np.linspace(0, 0.5, 101)                         # ring k at 0.005 k cycles/px
    v = np.full(101, 0.9)
    v[1:4] = -0.5                                        # rings 1..3 anti-correlated
    v[61:] = 0.0                                         # drops between rings 60 and 61
    t = 1 / 7
    res = metrics.frc_resolution(f, v, t)
    d0, d1 = 0.9 - t, 0.0 - t
    assert res["crossed"] and res["frequency"] == pytest.approx(f[60] + 0.005 * d0 / (d0 - d1))
    assert res["low_frequency_deficit_to"] == pytest.approx(f[4])
    # two isolated rings above the threshold are not a run: no start, f_c = ring 1
    w = np.zeros(101)
    w[5:7] = 0.9
    assert metrics.frc_resolution(f, w, t) == pytest.approx(
        {"frequency": f[1], "resolution_px": 1 / (2 * f[1]), "fraction_of_nyquist": f[1] / 0.5,
         "crossed": True, "low_frequency_deficit_to": None})
    # a run that starts past 10 % of Nyquist (ring 11 = 0.055 cycles/px) is not skipped to
    late = np.full(101, 0.9)
    late[1:11] = -0.5
    res = metrics.frc_resolution(f, late, t)
    assert res["frequency"] == pytest.approx(f[1]) and res["low_frequency_deficit_to"] is None
    # just inside the limit (ring 10 = 0.05 cycles/px) it is
    inside = np.full(101, 0.9)
    inside[1:10] = -0.5
    res = metrics.frc_resolution(f, inside, t)
    assert not res["crossed"] and res["low_frequency_deficit_to"] == pytest.approx(f[10])


def test_frc_of_single_frequency_images_hand_computed():
    # cos and sin of 2 cycles per 16 pixels live in ring 2 only: <cos, cos> = 1,
    # <cos, sin> = 0 (Re of F_cos conj(F_sin) vanishes), <cos, -cos> = -1
    x = np.arange(16)
    cos = np.tile(np.cos(2 * np.pi * 2 * x / 16), (16, 1))
    sin = np.tile(np.sin(2 * np.pi * 2 * x / 16), (16, 1))
    assert metrics.frc(cos, cos, taper=0).frc[2] == pytest.approx(1.0)
    assert metrics.frc(cos, sin, taper=0).frc[2] == pytest.approx(0.0, abs=1e-12)
    assert metrics.frc(cos, -cos, taper=0).frc[2] == pytest.approx(-1.0)
    res = metrics.frc(cos, cos, taper=0)
    assert res.n_pixels[0] == 1 and res.n_pixels.sum() == np.sum(
        np.rint(np.hypot(*np.meshgrid(np.fft.fftfreq(16), np.fft.fftfreq(16))) * 16) <= 8)
    assert np.isnan(res.frc[1])        # both spectra vanish in ring 1: undefined, not 0 or 1


def test_frc_resolution_interpolates_the_crossing():
    f = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    v = np.array([1.0, 0.9, 0.5, 0.1, 0.0, 0.0])
    t = 1 / 7
    d0, d1 = 0.5 - t, 0.1 - t
    fc = 0.2 + 0.1 * d0 / (d0 - d1)
    res = metrics.frc_resolution(f, v, t)
    assert res["crossed"]
    assert res["frequency"] == pytest.approx(fc)
    assert res["resolution_px"] == pytest.approx(1 / (2 * fc))
    assert res["fraction_of_nyquist"] == pytest.approx(fc / 0.5)
    # below the threshold at ring 1 already: f_c = ring 1
    assert metrics.frc_resolution(f, [1, 0, 0, 0, 0, 0], t)["frequency"] == pytest.approx(0.1)


def test_frc_errors():
    with pytest.raises(ValueError, match="8 x 8"):
        metrics.frc(np.zeros((4, 4)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="taper"):
        metrics.frc(np.zeros((16, 16)), np.zeros((16, 16)), taper=0.6)


# ----------------------------------------------------------------------------- phase alignment
def _complex_object(shape, seed=4):
    rng = np.random.default_rng(seed)
    amp = 0.3 + 0.7 * rng.random(shape)
    phase = rng.uniform(-np.pi, np.pi, shape)          # wraps everywhere on purpose
    return amp * np.exp(1j * phase)


def test_align_phase_removes_a_constant_exactly():
    t = _complex_object((30, 40))
    aligned, al = metrics.align_phase(t, t * np.exp(1j * 2.9))
    assert al.offset == pytest.approx(2.9, abs=1e-12)
    assert al.ramp_row == 0 and al.ramp_col == 0
    np.testing.assert_allclose(aligned, t, atol=1e-12)


def test_align_phase_removes_a_ramp_exactly():
    t = _complex_object((30, 40))
    y, x = np.mgrid[:30, :40]
    model = 1.0 + 0.4 * y - 0.9 * x                    # 35 rad across the image: wraps many times
    aligned, al = metrics.align_phase(t, t * np.exp(1j * model), ramp=True)
    assert al.ramp_row == pytest.approx(0.4, abs=1e-12)
    assert al.ramp_col == pytest.approx(-0.9, abs=1e-12)
    np.testing.assert_allclose(aligned, t, atol=1e-10)
    # the offset is reported at the array centre, wrapped
    centre = 1.0 + 0.4 * 14.5 - 0.9 * 19.5
    assert al.to_dict()["offset_rad"] == pytest.approx(float(metrics.wrap_phase(centre)), abs=1e-10)
    # without ramp only a constant is removed, so a ramp remains
    _, al0 = metrics.align_phase(t, t * np.exp(1j * model))
    assert al0.ramp_row == 0


def test_align_phase_is_least_squares_weighted_by_amplitude():
    # half the pixels are offset by 0.2 rad, the other half by 0.0; the bright half
    # (amplitude 3 against 1) dominates: c = angle(3*3*e^{0.2i} + 1*1) (|z| = |r||t| weights)
    t = np.ones((4, 4), complex)
    t[:2] *= 3
    r = t.copy()
    r[:2] *= np.exp(0.2j)
    _, al = metrics.align_phase(t, r)
    assert al.offset == pytest.approx(np.angle(9 * np.exp(0.2j) + 1), abs=1e-12)


def test_phase_relative_to_unwraps_onto_the_truth():
    t = np.exp(1j * np.array([[3.1, -3.1]]))
    r = np.exp(1j * np.array([[-3.1, 3.1]]))            # 0.083 rad away across the cut
    rel = metrics.phase_relative_to(t, r)
    np.testing.assert_allclose(rel, [[3.1 + (2 * np.pi - 6.2), -3.1 - (2 * np.pi - 6.2)]], atol=1e-12)


# ----------------------------------------------------------------------------- registration
def _smooth_image(shape, seed=5):
    from scipy import ndimage
    return ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal(shape), 3, mode="wrap")


def _fourier_shift(img, shift):
    ky = np.fft.fftfreq(img.shape[0])[:, None]
    kx = np.fft.fftfreq(img.shape[1])[None, :]
    out = np.fft.ifft2(np.fft.fft2(img) * np.exp(-2j * np.pi * (ky * shift[0] + kx * shift[1])))
    return out if np.iscomplexobj(img) else out.real


@pytest.mark.parametrize("shift", [(2.37, -5.61), (-0.25, 0.5), (3.0, 1.0)])
def test_register_recovers_a_subpixel_shift(shift):
    ref = _smooth_image((96, 80))
    moving = _fourier_shift(ref, shift)                 # content moved by +shift
    for norm in ("phase", None):
        got = metrics.register(ref, moving, normalization=norm)
        assert got == pytest.approx((-shift[0], -shift[1]), abs=0.011)
    # complex images work the same
    cref = ref * np.exp(1j * _smooth_image((96, 80), 6))
    got = metrics.register(cref, _fourier_shift(cref, shift))
    assert got == pytest.approx((-shift[0], -shift[1]), abs=0.011)


def test_shift_image_applies_the_registration():
    ref = _smooth_image((64, 64))
    moving = _fourier_shift(ref, (1.4, -2.2))
    s = metrics.register(ref, moving)
    back = metrics.shift_image(moving, s)
    inner = (slice(8, -8), slice(8, -8))
    assert np.max(np.abs(back[inner] - ref[inner])) < 0.02 * np.ptp(ref)


def test_register_errors():
    with pytest.raises(ValueError, match="same shape"):
        metrics.register(np.zeros((8, 8)), np.zeros((8, 9)))
    with pytest.raises(ValueError, match="normalization"):
        metrics.register(np.zeros((8, 8)), np.zeros((8, 8)), normalization="x")


# ----------------------------------------------------------------------------- scale, region
def test_match_amplitude_scale():
    a = np.random.default_rng(7).random((5, 6)) + 0.5
    scaled, k = metrics.match_amplitude_scale(a, a / 2.5)
    assert k == pytest.approx(2.5)
    np.testing.assert_allclose(scaled, a)
    # least squares: k = sum(a b) / sum(b^2) for a=[1, 2], b=[1, 1] -> 1.5
    assert metrics.match_amplitude_scale(np.array([[1.0, 2.0]]), np.ones((1, 2)))[1] == pytest.approx(1.5)
    assert metrics.match_amplitude_scale(np.ones((2, 2)), np.zeros((2, 2)))[1] == 1.0


def test_scan_region_hand_computed():
    # centres (40, 40) and (50.3, 70.7), N = 32 -> top-left (24, 24) and (34.3, 54.7):
    # rows ceil(24) .. floor(34.3) + 32 = 66, cols 24 .. floor(54.7) + 32 = 86 (exclusive)
    pos = np.array([[40.0, 40.0], [50.3, 70.7]])
    assert metrics.scan_region(pos, 32, (100, 100)) == (slice(24, 66), slice(24, 86))
    # clipped to the image
    assert metrics.scan_region(pos, 32, (60, 80)) == (slice(24, 60), slice(24, 80))
    with pytest.raises(ValueError, match="does not overlap"):
        metrics.scan_region(np.array([[500.0, 500.0]]), 32, (100, 100))


def test_scan_mask_is_the_union_of_patches():
    pos = np.array([[20.0, 20.0], [20.0, 60.0], [21.0, 21.0]])   # two apart, one overlapping the first
    m = metrics.scan_mask(pos, 16, (80, 80))
    assert m.sum() == 2 * 16 * 16 + (16 * 16 - 15 * 15)
    assert m[12:28, 12:28].all() and not m[11, 12] and m[28, 28] and not m[29, 29]
    assert metrics.bounding_box(m) == (slice(12, 29), slice(12, 68))
    assert metrics.bounding_box(np.zeros((3, 3), bool)) is None


# ----------------------------------------------------------------------------- illuminated region
def _brute_force_largest_area(m):
    H, W = m.shape
    best = 0
    for a in range(H):
        for b in range(a + 1, H + 1):
            for c in range(W):
                for d in range(c + 1, W + 1):
                    if m[a:b, c:d].all():
                        best = max(best, (b - a) * (d - c))
    return best


def test_largest_rectangle_matches_brute_force():
    rng = np.random.default_rng(3)
    for _ in range(150):
        m = rng.random((rng.integers(1, 8), rng.integers(1, 8))) < 0.7
        box = metrics.largest_rectangle(m)
        area = 0 if box is None else (box[0].stop - box[0].start) * (box[1].stop - box[1].start)
        assert area == _brute_force_largest_area(m)
        if box is not None:
            assert m[box].all()
    # hand case: an L shape; the tall left bar (5 x 2 = 10) beats the bottom bar (2 x 4 = 8)
    m = np.zeros((6, 7), dtype=bool)
    m[0:5, 1:3] = True
    m[3:5, 1:5] = True
    assert metrics.largest_rectangle(m) == (slice(0, 5), slice(1, 3))
    assert metrics.largest_rectangle(np.zeros((3, 3), dtype=bool)) is None
    with pytest.raises(ValueError, match="mask"):
        metrics.largest_rectangle(np.ones(4, dtype=bool))


def _asymmetric_probe(N):
    """A probe whose intensity is off-centre and lopsided: a flip or transpose of the
    placement changes the map."""
    r = np.arange(N, dtype=np.float64)
    yy, xx = np.meshgrid(r, r, indexing="ij")
    amp = np.exp(-((yy - N / 2 + 2) ** 2) / 8 - ((xx - N / 2 - 3) ** 2) / 18) + 0.3 * (yy == 1) * (xx < 3)
    return (amp * np.exp(1j * 0.1 * xx)).astype(np.complex64)


def test_illumination_map_is_the_stitch_weight_map_of_the_probe_intensity():
    """Same placement convention and bilinear weights as the stitch kernel (an asymmetric
    probe at fractional, negative and edge-crossing positions)."""
    import torch
    from ptycho_fast import coords, reference
    N, shape = 8, (21, 17)
    probe = _asymmetric_probe(N)
    centres = np.array([[4.0, 4.0], [10.25, 6.5], [3.75, 14.125], [19.5, 1.3], [-2.0, 9.0]])
    got = metrics.illumination_map(centres, probe, shape)
    intensity = np.abs(probe.astype(np.complex128)) ** 2
    intensity /= intensity.max()
    top_left = torch.as_tensor(coords.centres_to_top_left(centres, N))
    patches = torch.zeros((len(centres), N, N), dtype=torch.float64)
    _, want = reference.stitch_patches(patches, top_left, shape, torch.as_tensor(intensity))
    np.testing.assert_allclose(got, want.numpy(), atol=1e-12)
    # integer position: the probe intensity itself, at centre - N/2
    one = metrics.illumination_map(np.array([[9.0, 7.0]]), probe, shape)
    np.testing.assert_allclose(one[5:13, 3:11], intensity, atol=1e-12)
    assert one.sum() == pytest.approx(intensity.sum())
    # incoherent modes add their intensities
    modes = np.stack([probe, 0.5 * probe])
    np.testing.assert_allclose(metrics.illumination_map(centres, modes, shape), got, atol=1e-12)


def test_illuminated_region_is_inside_the_scan_and_moves_with_it():
    N, shape = 16, (90, 80)
    probe = _asymmetric_probe(N)
    grid = np.stack(np.meshgrid(np.arange(8) * 4.0, np.arange(6) * 4.0, indexing="ij"), -1).reshape(-1, 2)
    centres = grid + [25.0, 20.0]
    rows, cols, illum = metrics.illuminated_region(centres, probe, shape)
    scan_rows, scan_cols = metrics.scan_region(centres, N, shape)
    assert scan_rows.start < rows.start < rows.stop < scan_rows.stop
    assert scan_cols.start < cols.start < cols.stop < scan_cols.stop
    region = illum[rows, cols]
    assert region.min() >= metrics.ILLUMINATION_FLOOR * np.percentile(illum[illum > 0], 99)
    # the region is the largest: one more row or column on any side takes in a dark pixel
    floor = metrics.ILLUMINATION_FLOOR * np.percentile(illum[illum > 0], 99)
    for r, c in [(slice(rows.start - 1, rows.stop), cols), (slice(rows.start, rows.stop + 1), cols),
                 (rows, slice(cols.start - 1, cols.stop)), (rows, slice(cols.start, cols.stop + 1))]:
        assert illum[r, c].min() < floor
    # an integer move of the scan moves the region by exactly as much (no flip, no transpose)
    moved_rows, moved_cols, _ = metrics.illuminated_region(centres + [7.0, -3.0], probe, shape)
    assert (moved_rows.start, moved_rows.stop) == (rows.start + 7, rows.stop + 7)
    assert (moved_cols.start, moved_cols.stop) == (cols.start - 3, cols.stop - 3)
    # a lower floor keeps more of the scan
    wide_rows, wide_cols, _ = metrics.illuminated_region(centres, probe, shape, floor=0.01)
    assert wide_rows.stop - wide_rows.start > rows.stop - rows.start


def test_illuminated_region_errors():
    probe = _asymmetric_probe(8)
    with pytest.raises(ValueError, match="floor"):
        metrics.illuminated_region(np.zeros((1, 2)) + 4, probe, (16, 16), floor=1.0)
    with pytest.raises(ValueError, match="no scan position illuminates"):
        metrics.illuminated_region(np.array([[100.0, 100.0]]), probe, (16, 16))
    with pytest.raises(ValueError, match="probe"):
        metrics.illumination_map(np.zeros((1, 2)), np.zeros((8, 8), np.complex64), (16, 16))
    with pytest.raises(ValueError, match="probe must be"):
        metrics.illumination_map(np.zeros((1, 2)), np.zeros((8, 6), np.complex64), (16, 16))
    with pytest.raises(ValueError, match="positions"):
        metrics.illumination_map(np.zeros((3,)), probe, (16, 16))
