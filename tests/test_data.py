"""Data layer: formats, round trips, validation, bad files, coordinates and scaling."""

from __future__ import annotations

import math
import zipfile

import h5py
import numpy as np
import pytest
import torch

from ptycho_fast import coords, physics
from ptycho_fast.data import (DataError, DataWarning, H5DatasetWriter, Metadata, PtychoDataset,
                              detect_format, load_dataset, read_h5, read_npz, read_ptychodus,
                              save_dataset, write_h5, write_npz, write_ptychodus)

N = 16


def make_dataset(P=24, with_object=True, modes=0, seed=0, **kw) -> PtychoDataset:
    rng = np.random.default_rng(seed)
    positions = rng.uniform(N / 2 + 1, 40 - N / 2 - 2, size=(P, 2))
    shape = (modes, N, N) if modes else (N, N)
    probe = (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)
    obj = None
    if with_object:
        obj = (rng.uniform(0.5, 1, (40, 44)) * np.exp(1j * rng.uniform(-1, 1, (40, 44)))).astype(np.complex64)
    return PtychoDataset(
        diffraction=rng.uniform(0, 30, (P, N, N)).astype(np.float32), positions=positions, probe=probe,
        object=obj, metadata=Metadata(photons_per_pattern=1e5, pixel_size_m=2e-8, energy_eV=9000.0,
                                      distance_m=1.5, probe_calibrated=0.0), **kw)


def assert_same(a: PtychoDataset, b: PtychoDataset, rtol=0.0, pos_atol=0.0):
    np.testing.assert_allclose(np.asarray(a.diffraction[:]), np.asarray(b.diffraction[:]), rtol=rtol, atol=0)
    assert np.asarray(a.diffraction[:]).dtype == np.float32
    np.testing.assert_allclose(a.positions, b.positions, rtol=0, atol=pos_atol)
    np.testing.assert_array_equal(a.probe, b.probe)
    assert a.probe.dtype == np.complex64
    if a.object is None:
        assert b.object is None
    else:
        np.testing.assert_array_equal(a.object, b.object)
    for k in Metadata.KEYS:
        va, vb = getattr(a.metadata, k), getattr(b.metadata, k)
        assert (va is None and vb is None) or va == pytest.approx(vb, rel=1e-12), k
    for name in ("scan_index", "positions_start"):
        va, vb = getattr(a, name), getattr(b, name)
        assert (va is None) == (vb is None), name
        if va is not None:
            np.testing.assert_array_equal(va, vb)


# ------------------------------------------------------------------ round trips
def test_npz_round_trip_keys_and_dtypes(tmp_path):
    ds = make_dataset(scan_index=np.arange(24)[::-1] * 2, positions_start=np.full((24, 2), 20.0))
    path = write_npz(ds, tmp_path / "a.npz")
    with np.load(path, allow_pickle=False) as f:
        assert {"diffraction", "probeGuess", "objectGuess", "xcoords", "ycoords", "scan_index",
                "xcoords_start", "ycoords_start", "photons_per_pattern"} <= set(f.files)
        # xcoords = column, ycoords = row
        np.testing.assert_array_equal(f["xcoords"], ds.positions[:, 1])
        np.testing.assert_array_equal(f["ycoords"], ds.positions[:, 0])
        assert f["diffraction"].dtype == np.float32 and f["probeGuess"].dtype == np.complex64
    assert_same(ds, read_npz(path))


def test_metadata_probe_calibrated_is_zero_or_one(tmp_path):
    ds = make_dataset()
    path = write_npz(ds, tmp_path / "a.npz")
    assert read_npz(path).metadata.probe_calibrated == 0.0
    with np.load(path, allow_pickle=False) as f:
        arrays = dict(f)
    arrays["probe_calibrated"] = np.float64(0.5)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match="probe_calibrated.*0 or 1"):
        read_npz(tmp_path / "bad.npz")


@pytest.mark.parametrize("fmt", ["npz", "h5", "ptychodus"])
@pytest.mark.parametrize("with_object", [True, False])
def test_npz_to_format_to_dataset_round_trip(tmp_path, fmt, with_object):
    src = make_dataset(with_object=with_object)
    write_npz(src, tmp_path / "src.npz")
    ds = read_npz(tmp_path / "src.npz")
    out = tmp_path / ("out.npz" if fmt == "npz" else "out.h5")
    save_dataset(ds, out, fmt)
    assert detect_format(out) == fmt
    back = load_dataset(out)
    if fmt == "ptychodus":  # counts on disk and metres: float round-off
        # ptychodus has no field for probe_calibrated: our attribute ptycho_fast_probe_calibrated keeps it
        assert back.metadata.probe_calibrated == ds.metadata.probe_calibrated == 0.0
        assert_same(ds, back, rtol=1e-6, pos_atol=1e-9)
    else:
        assert_same(ds, back)


def test_probe_modes_round_trip(tmp_path):
    ds = make_dataset(modes=3)
    for fmt, name in (("npz", "m.npz"), ("h5", "m.h5"), ("ptychodus", "p.h5")):
        save_dataset(ds, tmp_path / name, fmt)
        back = load_dataset(tmp_path / name)
        assert back.probe.shape == (3, N, N)
        np.testing.assert_array_equal(back.probe, ds.probe)


def test_ptychodus_product_layout(tmp_path):
    ds = make_dataset()
    product, diffraction = write_ptychodus(ds, tmp_path / "prod.h5")
    assert diffraction == tmp_path / "prod-diffraction.h5"
    with h5py.File(product, "r") as f:
        # the root attributes ptychodus 1.7.0 writes (ProductFileKeys)
        for attr in ("name", "comments", "detector_object_distance_m", "photon_energy_eV",
                     "probe_photon_count", "exposure_time_s", "mass_attenuation_m2_per_kg",
                     "tomography_angle_deg", "focus_object_distance_m", "tilt_angle_deg", "far_field"):
            assert attr in f.attrs
        assert "probe_energy_eV" not in f.attrs and "mass_attenuation_m2_kg" not in f.attrs
        assert f.attrs["photon_energy_eV"] == 9000.0 and f.attrs["detector_object_distance_m"] == 1.5
        for key in ("probe_position_indexes", "probe_position_x_m", "probe_position_y_m", "probe",
                    "object", "object_layer_spacing_m", "loss_epochs", "loss_values"):
            assert key in f
        assert f["object"].shape == (1, 40, 44) and f["probe"].shape == (1, N, N)
        assert f["object"].attrs["pixel_width_m"] == 2e-8
        # ptychodus' pixel (ours - 1/2) through its mapping x_m = centre_x_m + pixel * (x_px - (W-1)/2)
        np.testing.assert_allclose(f["probe_position_x_m"][()], 2e-8 * ((ds.positions[:, 1] - 0.5) - (44 - 1) / 2))
        np.testing.assert_allclose(f["probe_position_y_m"][()], 2e-8 * ((ds.positions[:, 0] - 0.5) - (40 - 1) / 2))
    with h5py.File(diffraction, "r") as f:
        np.testing.assert_allclose(f["patterns"][()], ds.diffraction.astype(np.float32) ** 2, rtol=1e-6)
        assert f["bad_pixels"].shape == (N, N) and f["indexes"].shape == (24,)


def test_ptychodus_reorders_patterns_by_index_and_needs_pixel_size(tmp_path):
    ds = make_dataset(P=6)
    write_ptychodus(ds, tmp_path / "p.h5")
    with h5py.File(tmp_path / "p-diffraction.h5", "r+") as f:  # shuffle the pattern order
        perm = np.array([3, 0, 5, 1, 4, 2])
        patterns = f["patterns"][()]
        f["patterns"][...] = patterns[perm]
        f["indexes"][...] = perm
    back = read_ptychodus(tmp_path / "p.h5")
    np.testing.assert_allclose(back.diffraction, ds.diffraction, rtol=1e-6)
    (tmp_path / "p-diffraction.h5").unlink()
    with pytest.raises(DataError, match="diffraction file"):
        read_ptychodus(tmp_path / "p.h5")
    ds.metadata.pixel_size_m = None
    with pytest.raises(DataError, match="pixel_size_m"):
        write_ptychodus(ds, tmp_path / "q.h5")


def test_hdf5_layout_is_chunked_compressed_and_streams(tmp_path, monkeypatch):
    ds = make_dataset(P=200)
    write_h5(ds, tmp_path / "a.h5", chunk_patterns=32)
    with h5py.File(tmp_path / "a.h5", "r") as f:
        assert f.attrs["format"] == "ptycho_fast.dataset"
        assert f["diffraction"].chunks == (32, N, N)
        assert f["diffraction"].compression == "gzip"
    with read_h5(tmp_path / "a.h5", lazy=True) as lazy:
        assert lazy.is_lazy and lazy.diffraction.shape == (200, N, N)
        seen = []
        for idx, block in lazy.iter_batches(64):
            assert block.dtype == np.float32 and len(block) <= 64
            np.testing.assert_array_equal(block, ds.diffraction[idx])
            seen.extend(idx)
        assert seen == list(range(200))
        pick = np.array([150, 3, 3, 77])
        np.testing.assert_array_equal(lazy.diffraction[pick], ds.diffraction[pick])
        np.testing.assert_array_equal(lazy.diffraction[5], ds.diffraction[5])
        np.testing.assert_array_equal(lazy.diffraction[10:20:3], ds.diffraction[10:20:3])
        # index reads, through the covering slice (the defaults: every set here is compact)
        # and through point selection (covering disabled): unsorted, repeated, negative
        from ptycho_fast.data import hdf5
        rng = np.random.default_rng(0)
        compact = rng.permutation(np.arange(40, 100))[:20]
        picks = (compact, np.array([199, 0, 120, 0]), np.array([-1, 5, -200]),
                 np.concatenate([compact, compact[:3]]))
        for factor, minimum in ((hdf5.COVER_FACTOR, hdf5.COVER_MIN), (0, 0)):
            monkeypatch.setattr(hdf5, "COVER_FACTOR", factor)
            monkeypatch.setattr(hdf5, "COVER_MIN", minimum)
            for pick in picks:
                np.testing.assert_array_equal(lazy.diffraction[pick], ds.diffraction[pick])
            for idx, block in lazy.iter_batches(7, indices=compact):
                np.testing.assert_array_equal(block, ds.diffraction[idx])
        assert physics.intensity_scale(lazy.diffraction) == pytest.approx(physics.intensity_scale(ds.diffraction))
        assert_same(ds, lazy.load())
    assert lazy.diffraction.closed


def test_lazy_batches_are_validated(tmp_path):
    ds = make_dataset(P=100)
    write_h5(ds, tmp_path / "a.h5")
    with h5py.File(tmp_path / "a.h5", "r+") as f:
        f["diffraction"][90, 1, 2] = np.nan
    with read_h5(tmp_path / "a.h5", lazy=True) as lazy:  # opening does not read the data
        lazy.diffraction[:80]
        with pytest.raises(DataError, match="pattern 90 contains NaN"):
            for _ in lazy.iter_batches(32):
                pass
    with pytest.raises(DataError, match="pattern 90 contains NaN"):
        read_h5(tmp_path / "a.h5")


def test_h5_writer_is_atomic(tmp_path):
    ds = make_dataset(P=10)
    target = tmp_path / "w.h5"
    target.write_bytes(b"old contents")
    with pytest.raises(RuntimeError):
        with H5DatasetWriter(target, ds.positions, ds.probe) as w:
            w.write(0, ds.diffraction[:5])
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old contents"
    with pytest.raises(ValueError, match="never written"):
        with H5DatasetWriter(target, ds.positions, ds.probe) as w:
            w.write(0, ds.diffraction[:5])
    assert target.read_bytes() == b"old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.h5"]


def test_failed_npz_write_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "x.npz"
    target.write_bytes(b"old")

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError):
        write_npz(make_dataset(P=4), target)
    assert target.read_bytes() == b"old" and len(list(tmp_path.iterdir())) == 1


# ------------------------------------------------------------------ legacy inputs
def _save(path, **arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def _npz_arrays(ds):
    return dict(diffraction=ds.diffraction, probeGuess=ds.probe, objectGuess=ds.object,
                xcoords=ds.positions[:, 1], ycoords=ds.positions[:, 0])


def test_legacy_diff3d_and_nnp_stack(tmp_path):
    ds = make_dataset(P=10)
    arrays = _npz_arrays(ds)
    arrays["diff3d"] = np.transpose(arrays.pop("diffraction"), (1, 2, 0))  # (N, N, P)
    back = read_npz(_save(tmp_path / "legacy.npz", **arrays))
    np.testing.assert_array_equal(back.diffraction, ds.diffraction)
    arrays["diff3d"] = ds.diffraction.astype(np.float64)  # (P, N, N) float64
    back = load_dataset(_save(tmp_path / "legacy2.npz", **arrays))
    assert back.diffraction.dtype == np.float32
    np.testing.assert_array_equal(back.diffraction, ds.diffraction)


def test_integer_counts_become_amplitudes_without_overflow(tmp_path):
    ds = make_dataset(P=4)
    counts = np.full((4, N, N), 60000, np.uint16)
    arrays = _npz_arrays(ds) | {"diffraction": counts}
    back = read_npz(_save(tmp_path / "counts.npz", **arrays))
    np.testing.assert_allclose(back.diffraction, np.sqrt(60000.0), rtol=1e-7)
    # the energy of uint16 amplitudes: 300^2 overflows uint16 unless converted first
    X = np.full((2, 4, 4), 300, np.uint16)
    assert physics.mean_pattern_energy(X) == pytest.approx(16 * 300.0 ** 2)


def test_extension_does_not_matter(tmp_path):
    ds = make_dataset(P=4)
    write_npz(ds, tmp_path / "really_npz.h5")
    assert detect_format(tmp_path / "really_npz.h5") == "npz"
    assert_same(ds, load_dataset(tmp_path / "really_npz.h5"))


# ------------------------------------------------------------------ validation
def test_missing_keys_are_named(tmp_path):
    arrays = _npz_arrays(make_dataset(P=4))
    del arrays["probeGuess"], arrays["ycoords"]
    with pytest.raises(DataError, match=r"missing keys 'probeGuess' .*'ycoords'"):
        read_npz(_save(tmp_path / "m.npz", **arrays))


@pytest.mark.parametrize("change, message", [
    (lambda a: a.update(xcoords=a["xcoords"][:-1], ycoords=a["ycoords"][:-1]), "4 diffraction patterns .* 3 scan positions"),
    (lambda a: a.update(diffraction=a["diffraction"][:, :, :-2]), "must be square"),
    (lambda a: a.update(diffraction=a["diffraction"][:, :-1, :-1]), "must be even"),
    (lambda a: a.update(diffraction=a["diffraction"] * np.nan), "contains NaN"),
    (lambda a: a.update(diffraction=-a["diffraction"] - 1), "negative amplitudes"),
    (lambda a: a.update(probeGuess=a["probeGuess"][:8, :8]), "'probeGuess'.*N = 16"),
    (lambda a: a.update(xcoords=a["xcoords"] + 1000), "outside the 40 x 44 object"),
    (lambda a: a.update(xcoords=np.array(["a", "b", "c", "d"])), "'xcoords'.*expected numbers"),
    (lambda a: a.update(diffraction=a["diffraction"].astype(np.complex64)), "real amplitudes"),
    (lambda a: a.update(objectGuess=np.ones(5, np.complex64)), "'objectGuess'.*2-D"),
])
def test_validation_errors_name_the_key(tmp_path, change, message):
    arrays = _npz_arrays(make_dataset(P=4))
    change(arrays)
    with pytest.raises(DataError, match=message) as info:
        read_npz(_save(tmp_path / "bad.npz", **arrays))
    assert str(tmp_path / "bad.npz") in str(info.value)


def test_patches_past_the_edge_warn_or_fail():
    ds = make_dataset(P=3)
    positions = ds.positions.copy()
    positions[0] = (2.0, 2.0)  # centre inside, patch reaches past the top-left corner
    with pytest.warns(DataWarning, match="1 of 3 patches reach past the edge"):
        PtychoDataset(ds.diffraction, positions, ds.probe, ds.object)
    with pytest.raises(DataError, match="reach past the edge"):
        PtychoDataset(ds.diffraction, positions, ds.probe, ds.object, edge_policy="error")
    PtychoDataset(ds.diffraction, positions, ds.probe)  # no object: nothing to check against


# ------------------------------------------------------------------ bad files
def test_truncated_npz(tmp_path):
    path = write_npz(make_dataset(), tmp_path / "t.npz")
    data = path.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_dataset(tmp_path / "cut.npz")


def test_corrupt_member_in_npz(tmp_path):
    path = tmp_path / "c.npz"
    with zipfile.ZipFile(path, "w") as z:  # a member that is not an .npy array
        for name in ("diffraction", "probeGuess", "xcoords", "ycoords"):
            z.writestr(name + ".npy", b"garbage")
    with pytest.raises(DataError, match="cannot be read"):
        read_npz(path)


def test_truncated_hdf5(tmp_path):
    path = write_h5(make_dataset(P=100), tmp_path / "t.h5")
    data = path.read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 3])
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_dataset(tmp_path / "cut.h5")


def test_pickled_npz_is_refused(tmp_path):
    arrays = _npz_arrays(make_dataset(P=4))
    arrays["probeGuess"] = np.array([{"evil": 1}], dtype=object)
    path = tmp_path / "p.npz"
    with open(path, "wb") as f:
        np.savez(f, **arrays)  # object arrays are pickled inside the archive
    with pytest.raises(DataError, match="pickled"):
        read_npz(path)


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"hello world", "unrecognised file format"),
    (None, "single .npy array"),
])
def test_not_a_data_file(tmp_path, content, message):
    path = tmp_path / "f.dat"
    if content is None:
        np.save(open(path, "wb"), np.zeros(3))
    else:
        path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_dataset(path)
    with pytest.raises(DataError, match="no such file"):
        load_dataset(tmp_path / "missing.npz")


def test_unknown_hdf5_layout(tmp_path):
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["something"] = np.zeros(3)
    with pytest.raises(DataError, match="unknown layout"):
        load_dataset(tmp_path / "x.h5")


# ------------------------------------------------------------------ coordinates
def test_coordinate_conversions():
    centres = np.array([[10.0, 20.0], [3.5, -1.25]])
    np.testing.assert_array_equal(coords.centres_to_top_left(centres, 8), centres - 4)
    np.testing.assert_array_equal(coords.top_left_to_centres(centres - 4, 8), centres)
    t = torch.tensor(centres, dtype=torch.float32)
    assert coords.centres_to_top_left(t, 8).dtype == torch.float32
    pos = coords.positions_from_xy(xcoords=[1, 2], ycoords=[5, 6])
    np.testing.assert_array_equal(pos, [[5, 1], [6, 2]])  # (row, col) = (y, x)
    x, y = coords.xy_from_positions(pos)
    np.testing.assert_array_equal(x, [1, 2]) and np.testing.assert_array_equal(y, [5, 6])
    x_m, y_m = coords.pixels_to_metres(centres, (30, 40), 1e-8, centre_m=(1e-6, 2e-6))
    assert x_m[0] == pytest.approx(2e-6 + 1e-8 * (20 - 20)) and y_m[0] == pytest.approx(1e-6 + 1e-8 * (10 - 15))
    np.testing.assert_allclose(coords.metres_to_pixels(x_m, y_m, (30, 40), 1e-8, (1e-6, 2e-6)), centres, atol=1e-9)
    with pytest.raises(ValueError, match="even"):
        coords.centres_to_top_left(centres, 7)


# ------------------------------------------------------------------ scaling and physics
def test_intensity_scale_and_probe_gain_by_hand():
    X = np.stack([np.ones((4, 4)), 3 * np.ones((4, 4))]).astype(np.float32)
    # mean_p sum_ij X^2 = (16 + 144) / 2 = 80
    assert physics.mean_pattern_energy(X) == pytest.approx(80.0)
    assert physics.intensity_scale(X) == pytest.approx(math.sqrt(80.0) / 2)  # N/2 = 2
    probe = np.full((4, 4), 2.0 + 0j)  # sum |probe|^2 = 64
    assert physics.probe_gain(X, probe) == pytest.approx(math.sqrt(80.0 / 64.0))
    modes = np.stack([probe, probe])  # sum over modes: 128
    assert physics.probe_gain(X, modes) == pytest.approx(math.sqrt(80.0 / 128.0))
    # streamed batches give the same numbers; torch input too
    batches = [X[:1], (np.array([1]), X[1:])]
    assert physics.intensity_scale(batches, N=4) == pytest.approx(math.sqrt(80.0) / 2)
    assert physics.intensity_scale(torch.from_numpy(X)) == pytest.approx(math.sqrt(80.0) / 2)


def test_diffraction_amplitude_forward_model():
    rng = np.random.default_rng(1)
    patches = (rng.normal(size=(3, 8, 8)) + 1j * rng.normal(size=(3, 8, 8))).astype(np.complex64)
    probe = (rng.normal(size=(8, 8)) + 1j * rng.normal(size=(8, 8))).astype(np.complex64)
    amp = physics.diffraction_amplitude(patches, probe)
    expected = np.abs(np.fft.fftshift(np.fft.fft2(probe * patches, norm="ortho"), axes=(-2, -1)))
    np.testing.assert_allclose(amp, expected, rtol=1e-5, atol=1e-5)
    # Parseval: total counts equal the exit-wave energy
    np.testing.assert_allclose((amp ** 2).sum((-2, -1)), (np.abs(probe * patches) ** 2).sum((-2, -1)), rtol=1e-5)
    # zero frequency at the array centre [N/2, N/2]
    flat = physics.diffraction_amplitude(np.ones((8, 8), np.complex64), np.ones((8, 8), np.complex64))
    assert flat[4, 4] == pytest.approx(8.0) and np.delete(flat.ravel(), 4 * 8 + 4).max() < 1e-5
    # incoherent modes add intensities
    modes = np.stack([probe, 2 * probe])
    both = physics.diffraction_amplitude(patches, modes)
    np.testing.assert_allclose(both, np.sqrt(5) * amp, rtol=1e-5)
    # torch in, torch out, differentiable
    t = torch.tensor(patches, requires_grad=True)
    physics.diffraction_amplitude(t, torch.tensor(probe)).sum().backward()
    assert t.grad is not None and t.grad.shape == t.shape


# ------------------------------------------------------------------ lazy NPZ (memory-mapped)
def test_uncompressed_npz_streams_from_a_memory_map(tmp_path):
    ds = make_dataset(P=50)
    path = write_npz(ds, tmp_path / "a.npz")                 # np.savez: members stored
    with load_dataset(path, lazy=True) as lazy:
        assert lazy.is_lazy and lazy.diffraction.shape == (50, N, N)
        seen = []
        for idx, block in lazy.iter_batches(16):
            assert block.dtype == np.float32
            np.testing.assert_array_equal(block, ds.diffraction[idx])
            seen.extend(idx)
        assert seen == list(range(50))
        pick = np.array([49, 3, 3, 20])
        np.testing.assert_array_equal(lazy.diffraction[pick], ds.diffraction[pick])
        assert_same(ds, lazy.load())
    assert lazy.diffraction.closed
    with pytest.raises(DataError, match="closed"):
        lazy.diffraction[0]
    # without lazy the same file is read whole, as before
    assert not load_dataset(path).is_lazy


def test_lazy_npz_counts_legacy_stacks_and_compressed_members(tmp_path):
    ds = make_dataset(P=10)
    arrays = _npz_arrays(ds)
    # legacy (N, N, P) stack under its legacy name
    legacy = dict(arrays)
    legacy["diff3d"] = np.transpose(legacy.pop("diffraction"), (1, 2, 0))
    with load_dataset(_save(tmp_path / "legacy.npz", **legacy), lazy=True) as back:
        assert back.is_lazy and back.diffraction.shape == (10, N, N)
        np.testing.assert_array_equal(back.diffraction[2:7], ds.diffraction[2:7])
    # integer counts become amplitudes block by block
    counts = np.full((10, N, N), 60000, np.uint16)
    with load_dataset(_save(tmp_path / "counts.npz", **(arrays | {"diffraction": counts})), lazy=True) as back:
        assert back.is_lazy
        np.testing.assert_allclose(back.diffraction[:3], np.sqrt(60000.0), rtol=1e-7)
    # a compressed member cannot be mapped: read whole
    with open(tmp_path / "z.npz", "wb") as f:
        np.savez_compressed(f, **arrays)
    back = load_dataset(tmp_path / "z.npz", lazy=True)
    assert not back.is_lazy
    np.testing.assert_array_equal(back.diffraction, ds.diffraction)


def test_lazy_npz_checks_each_block_it_reads(tmp_path):
    ds = make_dataset(P=40)
    arrays = _npz_arrays(ds)
    bad = arrays["diffraction"].copy()
    bad[33, 2, 5] = np.nan
    with load_dataset(_save(tmp_path / "nan.npz", **(arrays | {"diffraction": bad})), lazy=True) as back:
        np.testing.assert_array_equal(back.diffraction[:30], ds.diffraction[:30])   # clean rows read fine
        with pytest.raises(DataError, match="non-finite|NaN"):
            back.diffraction[30:40]
    # a truncated file is not mapped (the whole read reports the damage)
    path = write_npz(ds, tmp_path / "t.npz")
    data = path.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError):
        load_dataset(tmp_path / "cut.npz", lazy=True)
