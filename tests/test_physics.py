"""Forward model, losses and the two scalars (docs/design.md §3; ptycho_fast.physics)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ptycho_fast import physics


def _complex(shape, gen, dtype=torch.float64):
    return torch.complex(torch.randn(shape, generator=gen, dtype=dtype),
                         torch.randn(shape, generator=gen, dtype=dtype))


# ------------------------------------------------------------------ forward model
def test_parseval_single_probe(gen):
    """Unitary FFT: the counts of a pattern equal the exit-wave energy in real space."""
    patches, probe = _complex((5, 16, 16), gen), _complex((16, 16), gen)
    amp = physics.diffraction_amplitude(patches, probe)
    counts = amp.square().sum(dim=(-2, -1))
    energy = (patches * probe).abs().square().sum(dim=(-2, -1))
    torch.testing.assert_close(counts, energy, rtol=1e-12, atol=0)


def test_parseval_incoherent_modes(gen):
    """Modes add in intensity: counts = sum over modes of each mode's exit-wave energy."""
    patches, modes = _complex((3, 16, 16), gen), _complex((4, 16, 16), gen)
    amp = physics.diffraction_amplitude(patches, modes)
    counts = amp.square().sum(dim=(-2, -1))
    energy = sum((patches * m).abs().square().sum(dim=(-2, -1)) for m in modes)
    torch.testing.assert_close(counts, energy, rtol=1e-12, atol=0)
    # ... and each mode alone is its own single-probe forward model
    per_mode = torch.stack([physics.diffraction_amplitude(patches, m).square() for m in modes]).sum(0)
    torch.testing.assert_close(amp.square(), per_mode, rtol=1e-12, atol=1e-12)


def test_forward_model_zero_frequency_at_centre():
    """A flat exit wave puts all its counts at [N/2, N/2] (fftshifted), amplitude = sqrt(sum)."""
    N = 16
    probe = torch.ones((N, N), dtype=torch.complex128)
    amp = physics.diffraction_amplitude(torch.full((N, N), 0.5 + 0j, dtype=torch.complex128), probe)
    assert amp[N // 2, N // 2] == pytest.approx(math.sqrt(N * N * 0.25), rel=1e-12)
    assert float(amp.sum() - amp[N // 2, N // 2]) == pytest.approx(0, abs=1e-9)


def test_illuminate_and_far_field_shapes(gen):
    patches = _complex((2, 3, 8, 8), gen)
    assert physics.illuminate(patches, _complex((8, 8), gen)).shape == (2, 3, 8, 8)
    assert physics.illuminate(patches, _complex((5, 8, 8), gen)).shape == (2, 3, 5, 8, 8)
    with pytest.raises(ValueError, match="same last two dimensions"):
        physics.illuminate(patches, _complex((4, 4), gen))
    field = _complex((8, 8), gen)
    torch.testing.assert_close(physics.far_field(field).abs().square().sum(),
                               field.abs().square().sum(), rtol=1e-12, atol=0)


def test_diffraction_amplitude_numpy_in_numpy_out(gen):
    patches, probe = _complex((2, 8, 8), gen), _complex((8, 8), gen)
    out = physics.diffraction_amplitude(patches.numpy(), probe.numpy())
    assert isinstance(out, np.ndarray)
    np.testing.assert_allclose(out, physics.diffraction_amplitude(patches, probe).numpy(), rtol=1e-12)


# ------------------------------------------------------------------ the two scalars, applied
def test_network_input_divides_by_the_intensity_scale(gen):
    X = torch.rand((6, 16, 16), generator=gen, dtype=torch.float64) * 30
    s = physics.intensity_scale(X)
    x = physics.network_input(X, s)
    torch.testing.assert_close(x, X / s)
    # DESIGN §3: the normalised input has mean_p sum_ij x^2 = (N/2)^2 at any dose
    assert float(x.square().sum(dim=(-2, -1)).mean()) == pytest.approx((16 / 2) ** 2, rel=1e-12)
    assert float(physics.network_input(100 * X, physics.intensity_scale(100 * X)).square().sum()) \
        == pytest.approx(float(x.square().sum()), rel=1e-12)
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="intensity scale"):
            physics.network_input(X, bad)


def test_predicted_amplitude_multiplies_by_the_probe_gain(gen):
    patches, probe = _complex((3, 8, 8), gen), _complex((8, 8), gen)
    base = physics.diffraction_amplitude(patches, probe)
    torch.testing.assert_close(physics.predicted_amplitude(patches, probe, 2.5), 2.5 * base)
    # a trainable gain gets a gradient
    g = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    physics.predicted_amplitude(patches, probe, g).sum().backward()
    torch.testing.assert_close(g.grad, base.sum())


def test_probe_gain_choice():
    N = 8
    probe = np.ones((N, N), np.complex64) / N          # sum |probe|^2 = 1
    X_bright = np.full((4, N, N), 10.0, np.float32)     # 6400 counts per pattern: uncalibrated
    X_cal = np.full((4, N, N), 0.9 / N, np.float32)     # 0.81 counts: a calibrated probe, |O| = 0.9
    # auto follows what the file says; it never guesses from the fitted value
    g, how = physics.choose_probe_gain(X_cal, probe, "auto", calibrated=True)
    assert g == 1.0 and how.startswith("auto: calibrated") and "0.9" in how
    for flag, words in ((None, "does not say"), (False, "says it is not")):
        g, how = physics.choose_probe_gain(X_cal, probe, "auto", calibrated=flag)
        assert g == pytest.approx(0.9, rel=1e-6) and how.startswith("auto: fit") and words in how
    # a probe mis-scaled by 1.5 fits a plausible 0.6: still fitted without the flag
    assert physics.choose_probe_gain(X_cal, probe * 1.5, "auto")[0] == pytest.approx(0.6, rel=1e-6)
    g, how = physics.choose_probe_gain(X_bright, probe, "auto")
    assert g == pytest.approx(80.0) and "fit" in how
    # a file that says "calibrated" but fits far outside the calibrated range: g = 1, warned
    with pytest.warns(UserWarning, match="probe_calibrated = 1.*80"):
        assert physics.choose_probe_gain(X_bright, probe, "auto", calibrated=True)[0] == 1.0
    assert physics.choose_probe_gain(X_cal, probe, "fit")[0] == pytest.approx(0.9, rel=1e-6)
    assert physics.choose_probe_gain(X_bright, probe, "calibrated") == (1.0, "calibrated")
    assert physics.choose_probe_gain(X_bright, probe, "2.5", calibrated=True) == (2.5, "given")
    for bad in ("-1", "nope", "0"):
        with pytest.raises(ValueError, match="probe gain"):
            physics.choose_probe_gain(X_bright, probe, bad)


# ------------------------------------------------------------------ losses
def test_poisson_nll_matches_hand_computed_value():
    pred = torch.tensor([2.0, 1.0, 0.0, 3.0], dtype=torch.float64)   # lam = 4, 1, 0, 9
    meas = torch.tensor([1.0, 0.0, 2.0, 3.0], dtype=torch.float64)   # k   = 1, 0, 4, 9
    eps = 1e-6
    # raw NLL (no log k!): lam - k log(lam + eps)
    raw = [4 - 1 * math.log(4 + eps), 1 - 0.0, 0 - 4 * math.log(0 + eps), 9 - 9 * math.log(9 + eps)]
    got = physics.poisson_nll(pred, meas, rate_floor=eps, saturated=False, reduction="none")
    torch.testing.assert_close(got, torch.tensor(raw, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    assert float(physics.poisson_nll(pred, meas, eps, saturated=False)) == pytest.approx(sum(raw) / 4, rel=1e-12)
    # saturated: minus the value at lam = k, so a perfect fit is 0
    sat = [r - (k - k * math.log(k + eps)) for r, k in zip(raw, [1, 0, 4, 9])]
    got_sat = physics.poisson_nll(pred, meas, rate_floor=eps, reduction="none")
    torch.testing.assert_close(got_sat, torch.tensor(sat, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    assert float(got_sat[3]) == pytest.approx(0.0, abs=1e-12)
    assert float(physics.poisson_nll(pred, meas, eps, reduction="sum")) == pytest.approx(sum(sat), rel=1e-12)
    # the same as torch's Poisson NLL on counts (log_input=False, eps inside the log)
    ref = torch.nn.functional.poisson_nll_loss(pred ** 2, meas ** 2, log_input=False, eps=eps,
                                               reduction="none")
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def test_poisson_nll_is_minimised_at_the_counts():
    k = torch.tensor([5.0], dtype=torch.float64)
    amps = torch.linspace(1.0, 3.5, 251, dtype=torch.float64)
    values = torch.stack([physics.poisson_nll(a.view(1), k.sqrt()) for a in amps])
    assert float(amps[values.argmin()] ** 2) == pytest.approx(5.0, abs=0.03)
    assert float(values.min()) == pytest.approx(0.0, abs=1e-4)


def test_mae_loss():
    pred = torch.tensor([1.0, 2.0, 4.0])
    meas = torch.tensor([1.5, 2.0, 1.0])
    assert float(physics.mae_loss(pred, meas)) == pytest.approx((0.5 + 0 + 3) / 3)
    assert float(physics.amplitude_loss("mae", pred, meas, reduction="sum")) == pytest.approx(3.5)
    with pytest.raises(ValueError, match="loss must be one of"):
        physics.amplitude_loss("l2", pred, meas)
    with pytest.raises(ValueError, match="reduction"):
        physics.mae_loss(pred, meas, reduction="max")
    with pytest.raises(ValueError, match="rate_floor"):
        physics.poisson_nll(pred, meas, rate_floor=0.0)


@pytest.mark.parametrize("loss", physics.LOSSES)
@pytest.mark.parametrize("modes", [False, True])
def test_gradients_finite_at_zero_rate(loss, modes):
    """A zero object (rate exactly 0 everywhere) against non-zero counts: the loss and the
    gradients with respect to the object, through |FFT| and the square root, are finite."""
    N = 8
    patches = torch.zeros((2, N, N), dtype=torch.complex64, requires_grad=True)
    probe = torch.ones((3, N, N) if modes else (N, N), dtype=torch.complex64)
    measured = torch.rand((2, N, N), generator=torch.Generator().manual_seed(0)) * 3
    measured[0, 0, :4] = 0.0    # and some zero counts
    amp = physics.predicted_amplitude(patches, probe, 1.0)
    assert torch.equal(amp, torch.zeros_like(amp))
    value = physics.amplitude_loss(loss, amp, measured)
    assert torch.isfinite(value)
    value.backward()
    assert torch.isfinite(torch.view_as_real(patches.grad)).all()


def test_safe_sqrt_value_and_gradient():
    r = torch.tensor([0.0, 1e-30, 4.0], dtype=torch.float64, requires_grad=True)
    out = physics.safe_sqrt(r)
    torch.testing.assert_close(out.detach(), torch.tensor([0.0, 1e-15, 2.0], dtype=torch.float64))
    out.sum().backward()
    assert torch.isfinite(r.grad).all()
    assert float(r.grad[0]) == 0.0 and float(r.grad[2]) == pytest.approx(0.25)
    # the plain sqrt would have given NaN/inf for the field gradient at zero
    z = torch.zeros(3, dtype=torch.complex64, requires_grad=True)
    physics.safe_sqrt(z.real.square() + z.imag.square()).sum().backward()
    assert torch.isfinite(torch.view_as_real(z.grad)).all()


def test_gradient_nonzero_where_the_rate_is_positive(gen):
    """The guard does not switch the gradient off elsewhere: matches autograd of abs()."""
    patches = _complex((2, 8, 8), gen).requires_grad_(True)
    probe = _complex((8, 8), gen)
    measured = torch.rand((2, 8, 8), generator=gen, dtype=torch.float64)
    physics.mae_loss(physics.diffraction_amplitude(patches, probe), measured).backward()
    g1 = patches.grad.clone()
    patches.grad = None
    far = torch.fft.fftshift(torch.fft.fft2(patches * probe, norm="ortho"), dim=(-2, -1))
    physics.mae_loss(far.abs(), measured).backward()
    torch.testing.assert_close(g1, patches.grad, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- backprojection input
def _defocused_probe(N=64, seed=None):
    """A soft disc with a quadratic phase: bright centre, defocus makes the hologram."""
    r = torch.arange(N, dtype=torch.float64) - N / 2
    rr = r[:, None] ** 2 + r[None, :] ** 2
    return (torch.exp(-rr / (2 * (N / 6) ** 2)) * torch.exp(1j * 0.01 * rr)).to(torch.complex64) * 20


def _asymmetric_phase(N=64):
    """Features that a flip, transpose or shift moves: an L of bars and an off-centre dot."""
    phi = torch.zeros(N, N)
    phi[20:44, 22:26] = 1.0        # long vertical bar
    phi[40:44, 26:38] = 1.0        # foot of the L, to the right
    yy, xx = torch.meshgrid(torch.arange(N), torch.arange(N), indexing="ij")
    phi[(yy - 26) ** 2 + (xx - 38) ** 2 < 9] = 1.0   # dot upper right
    return phi


def test_backprojection_of_an_empty_object_is_one_where_the_probe_is_bright():
    P = _defocused_probe()
    X = physics.diffraction_amplitude(torch.ones(64, 64, dtype=torch.complex64), P)
    O0 = physics.backprojection(X, P, gain=1.0)
    power = P.abs().square()
    bright = power > 0.5 * power.max()
    expected = power / (power + physics.BACKPROJECTION_FLOOR * power.max())   # the Wiener factor
    torch.testing.assert_close(O0.real[bright], expected[bright], atol=1e-4, rtol=1e-4)
    assert float(O0.imag[bright].abs().max()) < 1e-4
    # the gain divides: patterns measured with gain 3 back-project to the same object
    torch.testing.assert_close(physics.backprojection(3 * X, P, gain=3.0), O0, atol=1e-5, rtol=1e-5)


def test_backprojection_sees_the_object_where_it_is_not_its_mirror_or_shift():
    """The convention: O0 of an asymmetric weak phase object correlates with the object,
    and clearly less with its flips, transpose and a 2-pixel shift (which a sign or axis
    slip in the propagation would give)."""
    P = _defocused_probe()
    phi = _asymmetric_phase()
    O = torch.polar(torch.ones(64, 64), 0.3 * phi).to(torch.complex64)
    O0 = physics.backprojection(physics.diffraction_amplitude(O, P), P)
    power = P.abs().square()
    bright = power > 0.3 * power.max()

    def corr(a, b):
        a, b = a[bright] - a[bright].mean(), b[bright] - b[bright].mean()
        return float((a * b).sum() / (a.norm() * b.norm()))
    seen = torch.angle(O0)
    true = corr(seen, phi)
    assert true > 0.5, true
    for name, wrong in [("flip y", phi.flip(0)), ("flip x", phi.flip(1)), ("transpose", phi.T),
                        ("shift", torch.roll(phi, (2, 2), (0, 1)))]:
        assert corr(seen, wrong) < true - 0.2, (name, corr(seen, wrong), true)


def test_input_transform_kinds_channels_and_errors():
    g = torch.Generator().manual_seed(0)
    X = torch.rand(3, 4, 64, 64, generator=g) * 30
    P = _defocused_probe()
    amp = physics.InputTransform("amplitude", 2.5)
    torch.testing.assert_close(amp(X), X / 2.5)
    bp = physics.InputTransform("backprojection", 2.5, P, gain=1.5)
    x = bp(X)
    assert x.shape == (3, 12, 64, 64) and x.dtype == torch.float32
    torch.testing.assert_close(x[:, :4], X / 2.5)
    O0 = physics.backprojection(X, P, gain=1.5)
    torch.testing.assert_close(x[:, 4:8], O0.real)
    torch.testing.assert_close(x[:, 8:], O0.imag)
    assert physics.InputTransform.channels("backprojection", 4) == 12
    assert physics.InputTransform.channels("amplitude", 4) == 4
    # incoherent modes: the dominant one is used
    modes = torch.stack([0.1 * P.flip(0), P])
    assert torch.equal(physics.dominant_mode(modes), P)
    torch.testing.assert_close(physics.InputTransform("backprojection", 2.5, modes, 1.5)(X), x)
    with pytest.raises(ValueError, match="one of amplitude, backprojection"):
        physics.InputTransform("log", 1.0)
    with pytest.raises(ValueError, match="needs the probe"):
        physics.InputTransform("backprojection", 1.0)
    with pytest.raises(ValueError, match="probe gain must be a finite number > 0"):
        physics.InputTransform("backprojection", 1.0, P, gain=0.0)
    with pytest.raises(ValueError, match="same last two dimensions"):
        physics.backprojection(X[..., :32, :32], P)
