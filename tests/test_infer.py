"""``ptycho-fast infer``: the stitching path (exact, with injected predictors), streaming,
the --ops reference path, the collapse guard, and the reconstruction API.

The end-to-end CLI runs (bundled sample, outputs, bad input) are in test_infer_cli.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ptycho_fast import coords, infer, reference, simulate
from ptycho_fast.bundle import BundlePredictor, load_bundle
from ptycho_fast.data import PtychoDataset, load_dataset, write_h5
from ptycho_fast.data.hdf5 import COVER_FACTOR, COVER_MIN, LazyDiffraction
from ptycho_fast.object_big import make_window

N = 32


def f_object(H=96, W=96):
    """An asymmetric "F" (amplitude) on a phase ramp: a mirror, a transpose or a shift shows."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    f = np.zeros((H, W))
    f[20:76, 30:40] = 1          # stem
    f[20:30, 40:70] = 1          # top bar
    f[44:52, 40:62] = 1          # middle bar
    from scipy.ndimage import gaussian_filter
    f = gaussian_filter(f, 1.0)
    amp = 1 - 0.6 * f
    phase = 0.8 * f + 0.01 * xx - 0.005 * yy
    return (amp * np.exp(1j * phase)).astype(np.complex64)


def scan(H, W, step, jitter, seed=0):
    rng = np.random.default_rng(seed)
    r = np.arange(N / 2 + 3, H - N / 2 - 3, step)
    c = np.arange(N / 2 + 3, W - N / 2 - 3, step)
    cy, cx = np.meshgrid(r, c, indexing="ij")
    pos = np.stack([cy.ravel(), cx.ravel()], axis=1)
    return pos + (rng.normal(scale=jitter, size=pos.shape) if jitter else 0.0)


def dataset(obj, positions, probe=None):
    probe = simulate.make_probe("gaussian", N, 12) if probe is None else probe
    return PtychoDataset(diffraction=np.ones((len(positions), N, N), np.float32), positions=positions,
                         probe=probe, object=obj)


def truth_predictor(ds):
    """Patches cut from the true object at each pattern's own position (no network)."""
    def predict(X, offsets, indices):
        idx = np.asarray(indices).reshape(-1)
        return simulate.object_patches(ds.object, ds.positions[idx], N).reshape(X.shape).to(torch.complex64)
    return predict


class RandomPredictor:
    """Random complex patches, a fixed function of (pattern index, member slot) so that any
    batching gives the same patches; records what it returned, in order."""

    def __init__(self, seed=0, n_patterns=4096):
        gen = torch.Generator().manual_seed(seed)
        shape = (n_patterns, N, N)
        self.table = torch.complex(torch.randn(shape, generator=gen), torch.randn(shape, generator=gen))
        self.patches, self.indices = [], []

    def __call__(self, X, offsets, indices):
        idx = torch.as_tensor(np.asarray(indices))
        member = torch.arange(idx.shape[1]).view(1, -1, 1, 1)
        p = self.table[idx] * (1 + 0.25 * member)          # (B, C, N, N)
        self.patches.append(p.reshape(-1, N, N))
        self.indices.append(idx.reshape(-1).numpy())
        return p


# ----------------------------------------------------------------------------- stitching
@pytest.mark.parametrize("gridsize", [1, 2])
@pytest.mark.parametrize("groups", ["cover", "every"])
def test_integer_positions_reproduce_the_object_exactly(gridsize, groups):
    obj = f_object()
    ds = dataset(obj, np.rint(scan(*obj.shape, step=5, jitter=0)))
    rec = infer.reconstruct(ds, truth_predictor(ds), gridsize=gridsize, batch_size=7, window="probe",
                            groups=groups)
    assert rec.object.shape == obj.shape and rec.object.dtype == np.complex64
    assert rec.covered.sum() > 0.5 * obj.size
    # every patch at its own position: the weighted average of exact copies is exact
    np.testing.assert_allclose(rec.object[rec.covered], obj[rec.covered], atol=2e-6)
    assert np.all(rec.object[~rec.covered] == 0)
    if groups == "every" or gridsize == 1:
        assert rec.n_patches == gridsize ** 2 * len(ds.positions)
    else:  # each pattern predicted once where it can be
        assert len(ds.positions) <= rec.n_patches <= 1.25 * len(ds.positions)


def _xcorr_peak(a, b):
    """Integer shift (dy, dx) maximising the circular cross-correlation of a and b."""
    a = a - a.mean()
    b = b - b.mean()
    xc = np.fft.ifft2(np.fft.fft2(a) * np.conj(np.fft.fft2(b))).real
    dy, dx = np.unravel_index(np.argmax(xc), xc.shape)
    H, W = a.shape
    return (dy if dy <= H // 2 else dy - H), (dx if dx <= W // 2 else dx - W)


def test_orientation_not_mirrored_transposed_or_shifted():
    obj = f_object()
    ds = dataset(obj, scan(*obj.shape, step=4.3, jitter=0.7, seed=3))   # fractional positions
    rec = infer.reconstruct(ds, truth_predictor(ds), gridsize=1, batch_size=16, window="ones")
    lo = np.ceil(rec.positions.min(axis=0)).astype(int)
    side = int(np.floor(rec.positions.max(axis=0) - lo).min())     # a square: .T is comparable
    box = (slice(lo[0], lo[0] + side), slice(lo[1], lo[1] + side))
    got, truth = np.abs(rec.object[box]), np.abs(obj[box])
    assert _xcorr_peak(got, truth) == (0, 0)
    assert _xcorr_peak(np.angle(rec.object[box]), np.angle(obj[box])) == (0, 0)

    def corr(a, b):
        a, b = a - a.mean(), b - b.mean()
        return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))
    c = corr(got, truth)
    assert c > 0.99
    for wrong in (truth[::-1], truth[:, ::-1], truth.T):
        assert corr(got, wrong) < c - 0.3


def test_stitching_equals_reference_on_the_same_patches():
    obj = f_object(80, 100)
    ds = dataset(obj, scan(80, 100, step=6.1, jitter=0.8, seed=1))
    pred = RandomPredictor()
    rec = infer.reconstruct(ds, pred, gridsize=2, batch_size=5, window="probe")
    patches = torch.cat(pred.patches)
    idx = np.concatenate(pred.indices)
    top_left = torch.as_tensor(coords.centres_to_top_left(ds.positions[idx], N))
    w = make_window("probe", N, ds.probe)
    canvas, weight = reference.stitch_patches(patches.to(torch.complex128), top_left, (80, 100), w.double())
    covered = weight > infer.COVERAGE_FLOOR * weight.max()
    expected = torch.where(covered, canvas / torch.where(covered, weight, 1), 0).numpy()
    np.testing.assert_array_equal(rec.covered, covered.numpy())
    np.testing.assert_allclose(rec.coverage, weight.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rec.object, expected, rtol=1e-4, atol=1e-5)


def test_batches_of_seven_equal_one_batch_and_reference_ops_agree():
    obj = f_object(80, 80)
    ds = dataset(obj, scan(80, 80, step=5.5, jitter=0.5, seed=2))
    one = infer.reconstruct(ds, RandomPredictor(5), gridsize=2, batch_size=10_000)
    seven = infer.reconstruct(ds, RandomPredictor(5), gridsize=2, batch_size=7)
    ref = infer.reconstruct(ds, RandomPredictor(5), gridsize=2, batch_size=7, ops="reference")
    assert seven.n_patches == one.n_patches
    np.testing.assert_array_equal(seven.covered, one.covered)
    np.testing.assert_allclose(seven.object, one.object, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ref.object, seven.object, rtol=1e-5, atol=1e-6)
    assert ref.ops == "reference"
    for view in ("amplitude", "phase"):
        assert ref.stats[view]["var_zero_mean"] == pytest.approx(seven.stats[view]["var_zero_mean"], rel=1e-5)


@pytest.mark.parametrize("window", ["mask", "ones"])
def test_other_windows(window):
    obj = f_object(72, 72)
    ds = dataset(obj, np.rint(scan(72, 72, step=4, jitter=0)))
    rec = infer.reconstruct(ds, truth_predictor(ds), window=window)
    np.testing.assert_allclose(rec.object[rec.covered], obj[rec.covered], atol=2e-6)
    if window == "mask":  # only the central N/2 block of each patch counts
        inner = coords.centres_to_top_left(ds.positions, N) + N / 4
        assert rec.covered[int(inner[:, 0].min()), int(inner[:, 1].min())]
        assert not rec.covered[int(inner[:, 0].min()) - 1, int(inner[:, 1].min()) - 1]


def test_canvas_from_the_scan_extent_without_an_object():
    obj = f_object(80, 80)
    positions = scan(80, 80, step=6, jitter=0.4, seed=4) + np.array([-30.0, 1000.0])  # off the object frame
    ds = PtychoDataset(diffraction=np.ones((len(positions), N, N), np.float32), positions=positions,
                       probe=simulate.make_probe("gaussian", N, 12))
    rec = infer.reconstruct(ds, RandomPredictor(), window="ones")
    top_left = coords.centres_to_top_left(positions, N)
    np.testing.assert_array_equal(rec.frame.origin, np.floor(top_left.min(axis=0)))
    assert rec.frame.source == "scan extent"
    np.testing.assert_allclose(rec.positions, positions - rec.frame.origin)
    # the canvas just holds every patch: covered up to each edge, no pixel lost
    assert rec.covered[0].any() and rec.covered[-1].any() and rec.covered[:, 0].any() and rec.covered[:, -1].any()
    assert rec.coverage.sum() == pytest.approx(len(positions) * N * N, rel=1e-5)


def test_hdf5_is_streamed_in_batches_not_loaded_whole(tmp_path, monkeypatch):
    H = W = 300
    positions = scan(H, W, step=14, jitter=0.5, seed=5)           # 19 x 19 = 361 patterns
    rng = np.random.default_rng(0)
    ds = PtychoDataset(diffraction=rng.random((len(positions), N, N), dtype=np.float32),
                       positions=positions, probe=simulate.make_probe("gaussian", N, 12),
                       object=np.ones((H, W), np.complex64))
    write_h5(ds, tmp_path / "d.h5", chunk_patterns=8)
    reads = []
    original = LazyDiffraction._read_rows

    def spy(self, rows):
        block = original(self, rows)
        reads.append(len(block))
        return block
    monkeypatch.setattr(LazyDiffraction, "_read_rows", spy)

    def predictor(X, offsets, indices):
        return torch.complex(X, torch.zeros_like(X))
    with load_dataset(tmp_path / "d.h5", lazy=True) as lazy:
        assert lazy.is_lazy
        rec = infer.reconstruct(lazy, predictor, gridsize=2, batch_size=12)
    bound = max(COVER_FACTOR * 12 * 4, COVER_MIN)
    assert len(reads) >= len(positions) // 48 and max(reads) <= bound < len(positions)
    assert sum(reads) < 2 * len(positions)          # each pattern read ~once, not once per group
    in_memory = infer.reconstruct(ds, predictor, gridsize=2, batch_size=12)
    np.testing.assert_array_equal(rec.object, in_memory.object)


def test_subset_and_bad_arguments():
    obj = f_object(72, 72)
    ds = dataset(obj, scan(72, 72, step=5, jitter=0.3))
    rec = infer.reconstruct(ds, RandomPredictor(), n_patterns=10, gridsize=2, groups="every")
    assert rec.n_patterns == 10 and rec.positions.shape == (10, 2) and rec.n_patches == 40
    with pytest.raises(infer.UserError, match="--n-patterns"):
        infer.reconstruct(ds, RandomPredictor(), n_patterns=len(ds.positions) + 1)
    with pytest.raises(infer.UserError, match="--groups: must be one of cover, every"):
        infer.reconstruct(ds, RandomPredictor(), groups="all")
    with pytest.raises(infer.UserError, match="--window"):
        infer.reconstruct(ds, RandomPredictor(), window="hann")
    with pytest.raises(infer.UserError, match="--batch-size"):
        infer.reconstruct(ds, RandomPredictor(), batch_size=0)


def test_positions_missing_the_canvas_are_an_error():
    obj = f_object(72, 72)
    ds = dataset(obj, scan(72, 72, step=8, jitter=0))
    ds.positions[3] = [5000.0, 20.0]      # past the data layer's check: a patch nowhere near
    with pytest.raises(infer.UserError, match=r"1 of \d+ scan positions .* entirely outside the 72 x 72"):
        infer.reconstruct(ds, RandomPredictor())


# ----------------------------------------------------------------------------- guard
def test_guard_on_constant_nan_and_zero_patches():
    obj = f_object(72, 72)
    ds = dataset(obj, scan(72, 72, step=6, jitter=0.3))
    cases = {
        "constant": (lambda X, o, i: torch.full(X.shape, 0.5 + 0.1j, dtype=torch.complex64), "constant"),
        "nan": (lambda X, o, i: torch.full(X.shape, float("nan"), dtype=torch.complex64), "non-finite"),
        "zero": (lambda X, o, i: torch.zeros(X.shape, dtype=torch.complex64), "zero everywhere"),
    }
    for predictor, words in cases.values():
        with pytest.raises(infer.CollapseError, match=words) as info:
            infer.reconstruct(ds, predictor, batch_size=4, model_intensity_scale=2.0)
        message = str(info.value)
        assert "after the first batch" in message and "Likely causes" in message
        assert "scale mismatch" in message and "--allow-degenerate" in message
        assert info.value.partial is not None and info.value.partial.n_patches == 0
    warned = []
    rec = infer.reconstruct(ds, cases["constant"][0], allow_degenerate=True, on_warning=warned.append)
    assert rec.degenerate and len(warned) == 2 and "allow-degenerate" in warned[0]


def test_guard_at_the_end_sees_a_collapse_after_the_first_batch():
    obj = f_object(72, 72)
    ds = dataset(obj, scan(72, 72, step=6, jitter=0.3))
    calls = []

    def predictor(X, offsets, indices):
        calls.append(1)
        if len(calls) == 1:
            return torch.complex(torch.rand(X.shape), torch.rand(X.shape))
        return torch.full(X.shape, float("nan"), dtype=torch.complex64)
    with pytest.raises(infer.CollapseError, match=r"over all \d+ patches: \d+ of \d+ predicted patches"):
        infer.reconstruct(ds, predictor, batch_size=4)


def test_statistics_match_the_kernel_over_all_patches():
    obj = f_object(72, 72)
    ds = dataset(obj, scan(72, 72, step=6, jitter=0.3))
    pred = RandomPredictor(3)

    def network_and_stitched(X, offsets, indices):     # statistics are of the network's patches
        raw = pred(X, offsets, indices)
        return raw, 3 * raw + 1
    rec = infer.reconstruct(ds, network_and_stitched, batch_size=5, gridsize=2)
    allp = torch.cat(pred.patches)
    amp = allp.abs().double()
    assert rec.stats["ddof"] == 0 and rec.stats["n_patches"] == len(allp)
    assert rec.stats["amplitude"]["var_zero_mean"] == pytest.approx(
        float(infer.fast_ops.var_zero_mean(allp)), rel=1e-6)
    assert rec.stats["amplitude"]["mean"] == pytest.approx(float(amp.mean()), rel=1e-6)
    assert rec.stats["amplitude"]["std"] == pytest.approx(float(amp.std(correction=0)), rel=1e-5)
    assert rec.stats["amplitude"]["max"] == pytest.approx(float(amp.max()), rel=1e-6)
    assert rec.stats["complex_var_zero_mean"] == pytest.approx(
        float(allp.real.double().var(dim=(-2, -1), correction=0).mean()
              + allp.imag.double().var(dim=(-2, -1), correction=0).mean()), rel=1e-5)


# ----------------------------------------------------------------------------- with the sample model
@pytest.fixture(scope="module")
def sample():
    model, data = infer.sample_paths()
    return load_bundle(model), load_dataset(data)


def test_sample_model_streaming_and_ops_parity(sample):
    bundle, ds = sample
    kw = dict(N=bundle.N, gridsize=bundle.gridsize, n_patterns=20)
    one = infer.reconstruct(ds, BundlePredictor(bundle), batch_size=1000, **kw)
    seven = infer.reconstruct(ds, BundlePredictor(bundle), batch_size=7, **kw)
    ref = infer.reconstruct(ds, BundlePredictor(bundle, "reference"), batch_size=7, ops="reference", **kw)
    np.testing.assert_allclose(seven.object, one.object, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ref.object, seven.object, rtol=1e-4, atol=1e-5)
    assert one.degenerate is None and one.stats["complex_var_zero_mean"] > 1e-4
