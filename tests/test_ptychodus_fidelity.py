"""ptychodus fidelity, proven with ptychodus' own code (ptychodus==1.7.0, requirements-dev.txt).

Asymmetric on purpose: non-square pixels (5 nm wide, 7 nm high), a non-square object, a
non-zero object centre (-200, 300) nm, fractional positions, two incoherent probe modes,
out-of-order sparse scan indexes, and a diffraction file whose pattern order differs from
the product's position order.

* (a) our writer -> ptychodus' loaders (``load_product``, ``load_diffraction_data``,
  ``prepare_reconstruct_input``): every field agrees, and every patch corner computed by
  ptychodus (``ObjectGeometry.map_coordinates_probe_to_object`` +
  ``ProbeGeometry.resolve_patch_bounds``) equals ours (``coords.centres_to_top_left``);
* (b) ptychodus' writers (``save_product``, ``save_diffraction_data``) -> our reader: same;
* (c) ptychodus -> ours -> ptychodus keeps every geometric and metadata field.

Without ptychodus these tests fail (they do not skip): CI installs it.
"""

from __future__ import annotations

import math
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import h5py
import numpy as np
import pytest

from ptycho_fast import cli, coords, simulate
from ptycho_fast.data import (DataWarning, Metadata, PtychoDataset, load_dataset, read_ptychodus,
                              write_ptychodus, write_ptychodus_pair)
from ptycho_fast.data.ptychodus import HC_EV_M, PTYCHODUS_VERSION

try:
    from ptychodus.api import io as pio
    from ptychodus.api.assemble import AssembledDiffractionData
    from ptychodus.api.diffraction import Polarization
    from ptychodus.api.geometry import ImageExtent, PixelGeometry
    from ptychodus.api.object import Object, ObjectCenter, ObjectGeometry, ObjectPosition
    from ptychodus.api.probe import ProbeSequence
    from ptychodus.api.probe_positions import ProbePosition, ProbePositionSequence
    from ptychodus.api.product import LossValue, Product, ProductMetadata
    from ptychodus.api.propagate import compute_far_field_pixel_geometry, compute_product_geometry
    from ptychodus.api.reconstruct import prepare_reconstruct_input
    _IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - CI installs it
    _IMPORT_ERROR = exc


@pytest.fixture(autouse=True)
def _ptychodus_installed():
    """Fail (never skip) without the pinned ptychodus."""
    if _IMPORT_ERROR is not None:
        pytest.fail(f"these tests need ptychodus=={PTYCHODUS_VERSION} (pip install -r requirements-dev.txt); "
                    f"importing it failed: {_IMPORT_ERROR!r}", pytrace=False)
    try:
        installed = version("ptychodus")
    except PackageNotFoundError:  # pragma: no cover
        installed = "unknown"
    if installed != PTYCHODUS_VERSION:
        pytest.fail(f"these tests check the layout of ptychodus {PTYCHODUS_VERSION}; ptychodus {installed} "
                    "is installed: re-check ptycho_fast/data/ptychodus.py against it and update the pin",
                    pytrace=False)


N, P, H, W = 16, 20, 48, 56
DX, DY = 5e-9, 7e-9                 # pixel width, height
CX, CY = -200e-9, 300e-9            # object centre
ENERGY, DISTANCE = 9000.0, 1.5


# ---------------------------------------------------------------------------- helpers
def ptychodus_corners(product) -> dict[int, tuple[float, float]]:
    """index -> (row, col) of the patch's top-left, as ptychodus places it: the object-pixel
    position (``map_coordinates_probe_to_object``), then ``resolve_patch_bounds``' integer
    lower corner plus the sub-pixel shift it applies to the probe."""
    object_geometry = product.object_.get_geometry()
    probe_geometry = product.probes.get_geometry()
    out = {}
    for position in product.probe_positions:
        op = object_geometry.map_coordinates_probe_to_object(position)
        bounds = probe_geometry.resolve_patch_bounds(op.x_px, op.y_px)
        out[int(position.index)] = (bounds.y_slice.start + bounds.dy, bounds.x_slice.start + bounds.dx)
    return out


def our_corners(ds: PtychoDataset) -> dict[int, tuple[float, float]]:
    index = np.arange(ds.n_patterns) if ds.scan_index is None else ds.scan_index
    return {int(i): tuple(c) for i, c in zip(index, coords.centres_to_top_left(ds.positions, ds.N))}


def assert_same_corners(ours: dict, theirs: dict) -> None:
    assert sorted(ours) == sorted(theirs)
    a = np.array([ours[i] for i in sorted(ours)])
    b = np.array([theirs[i] for i in sorted(ours)])
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-9)


def our_dataset(seed=0, **meta) -> PtychoDataset:
    rng = np.random.default_rng(seed)
    positions = np.stack([rng.uniform(N / 2 + 1, H - N / 2 - 2, P), rng.uniform(N / 2 + 1, W - N / 2 - 2, P)], 1)
    probe = (rng.normal(size=(2, N, N)) + 1j * rng.normal(size=(2, N, N))).astype(np.complex64)
    obj = (rng.uniform(0.5, 1, (H, W)) * np.exp(1j * rng.uniform(-1, 1, (H, W)))).astype(np.complex64)
    fields = dict(photons_per_pattern=1e5, pixel_size_m=DX, pixel_height_m=DY, energy_eV=ENERGY,
                  distance_m=DISTANCE, probe_calibrated=1.0, object_center_x_m=CX, object_center_y_m=CY,
                  exposure_time_s=0.25, mass_attenuation_m2_per_kg=2.5, tomography_angle_deg=12.5,
                  tilt_angle_deg=3.0, focus_object_distance_m=-0.01, far_field=1.0)
    fields.update(meta)
    return PtychoDataset(diffraction=rng.uniform(0, 30, (P, N, N)).astype(np.float32), positions=positions,
                         probe=probe, object=obj, scan_index=rng.choice(1000, P, replace=False),
                         metadata=Metadata(**fields))


def ptychodus_inputs(seed=1, opr_modes=1, opr_weights=False, bad_pixel=True):
    """A ptychodus Product and AssembledDiffractionData built with ptychodus' own types."""
    rng = np.random.default_rng(seed)
    geometry = ObjectGeometry(width_px=W, height_px=H, pixel_width_m=DX, pixel_height_m=DY,
                              center_x_m=CX, center_y_m=CY)
    indexes = rng.choice(500, P, replace=False)
    points = []
    for i, (y, x) in zip(indexes, np.stack([rng.uniform(N / 2 + 1, H - N / 2 - 2, P),
                                            rng.uniform(N / 2 + 1, W - N / 2 - 2, P)], 1)):
        p = geometry.map_coordinates_object_to_probe(ObjectPosition(int(i), float(x), float(y)))
        points.append(ProbePosition(p.index, p.x_m, p.y_m, probe_photon_count=float(rng.uniform(9e4, 1.1e5))))
    probe = rng.normal(size=(opr_modes, 2, N, N)) + 1j * rng.normal(size=(opr_modes, 2, N, N))
    weights = rng.uniform(0.2, 1.0, (P, opr_modes)) if opr_weights else None
    obj = rng.uniform(0.5, 1, (1, H, W)) * np.exp(1j * rng.uniform(-1, 1, (1, H, W)))
    metadata = ProductMetadata(
        name="scan 42", comments="asymmetric fidelity test", detector_distance_m=DISTANCE,
        photon_energy_eV=ENERGY, probe_photon_count=1e5, exposure_time_s=0.25,
        mass_attenuation_m2_per_kg=2.5, tomography_angle_deg=12.5, focus_object_distance_m=-0.01,
        tilt_angle_deg=3.0, polarization=Polarization.LEFT_CIRCULAR, far_field=True)
    product = Product(metadata=metadata, probe_positions=ProbePositionSequence(points),
                      probes=ProbeSequence(probe, weights, PixelGeometry(width_m=DX, height_m=DY)),
                      object_=Object(obj, PixelGeometry(width_m=DX, height_m=DY), ObjectCenter(CX, CY)),
                      losses=[LossValue(1, 0.5), LossValue(2, 0.25), LossValue(3, 0.125)])
    order = rng.permutation(P)  # the diffraction file lists the patterns in another order
    bad = np.zeros((N, N), bool)
    if bad_pixel:
        bad[3, 11] = True
    detector = compute_far_field_pixel_geometry(  # self-inverse: object pixel -> detector pixel
        PixelGeometry(width_m=DX, height_m=DY), ImageExtent(width_px=N, height_px=N),
        wavelength_m=metadata.photon_wavelength_m, propagation_distance_m=DISTANCE)
    assembled = AssembledDiffractionData(indexes[order], rng.poisson(40.0, (P, N, N)).astype(np.uint32),
                                         detector, bad, probe_photon_counts=rng.uniform(9e4, 1.1e5, P))
    return product, assembled


def save_ptychodus(directory: Path, product, assembled) -> Path:
    directory.mkdir()
    pio.save_product(pio.StandardFileLayout.PRODUCT.path(directory), product)
    pio.save_diffraction_data(pio.StandardFileLayout.DIFFRACTION.path(directory), assembled)
    return directory


def load_ptychodus(directory: Path):
    return (pio.load_product(pio.StandardFileLayout.PRODUCT.path(directory)),
            pio.load_diffraction_data(pio.StandardFileLayout.DIFFRACTION.path(directory)))


def patterns_by_index(assembled) -> dict[int, np.ndarray]:
    return {int(i): p for i, p in zip(assembled.get_indexes(), assembled.get_patterns())}


# ---------------------------------------------------------------------------- (a) ours -> ptychodus
def test_a_our_pair_loads_in_ptychodus_with_every_field_and_placement(tmp_path):
    ds = our_dataset()
    product_path, diffraction_path = write_ptychodus_pair(ds, tmp_path / "run")
    assert (product_path.name, diffraction_path.name) == ("product.h5", "diffraction.h5")
    product, assembled = load_ptychodus(tmp_path / "run")   # what ptychodus' workflow opens

    m = product.metadata
    assert (m.photon_energy_eV, m.detector_distance_m, m.probe_photon_count) == (ENERGY, DISTANCE, 1e5)
    assert (m.exposure_time_s, m.mass_attenuation_m2_per_kg, m.tomography_angle_deg, m.tilt_angle_deg,
            m.focus_object_distance_m, m.far_field) == (0.25, 2.5, 12.5, 3.0, -0.01, True)
    geometry = product.object_.get_geometry()
    assert (geometry.pixel_width_m, geometry.pixel_height_m) == (DX, DY)
    assert (geometry.center_x_m, geometry.center_y_m) == (CX, CY)
    assert (geometry.width_px, geometry.height_px) == (W, H)
    np.testing.assert_array_equal(product.object_.get_layer(0), ds.object)
    assert product.probes.get_array().shape == (1, 2, N, N)
    np.testing.assert_array_equal(product.probes.get_array()[0], ds.probe)
    assert product.probes.get_pixel_geometry() == PixelGeometry(width_m=DX, height_m=DY)
    np.testing.assert_array_equal(product.probe_positions.get_indexes(), ds.scan_index)

    # placement: ptychodus' patch corners == ours; its pixel = ours - 1/2
    assert_same_corners(our_corners(ds), ptychodus_corners(product))
    x_px = geometry.map_probe_positions_to_object_x_px(product.probe_positions)
    y_px = geometry.map_probe_positions_to_object_y_px(product.probe_positions)
    np.testing.assert_allclose(np.stack([y_px, x_px], 1), coords.to_ptychodus_pixels(ds.positions), atol=1e-9)
    np.testing.assert_allclose(np.stack([y_px, x_px], 1), ds.positions - 0.5, atol=1e-9)

    # diffraction: counts = our amplitudes squared; ptychodus derives our object pixel from it
    np.testing.assert_array_equal(assembled.get_indexes(), ds.scan_index)
    np.testing.assert_allclose(assembled.get_patterns(), ds.diffraction.astype(np.float32) ** 2, rtol=1e-6)
    assert not assembled.get_bad_pixels().any()
    derived = compute_product_geometry(
        photon_energy_eV=m.photon_energy_eV, probe_photon_count=m.probe_photon_count,
        exposure_time_s=m.exposure_time_s, detector_distance_m=m.detector_distance_m,
        focus_object_distance_m=m.focus_object_distance_m, far_field=m.far_field,
        detector_extent=ImageExtent(width_px=N, height_px=N),
        detector_pixel_geometry=assembled.get_pixel_geometry()).object_plane_pixel_geometry
    np.testing.assert_allclose((derived.width_m, derived.height_m), (DX, DY), rtol=1e-12)

    # ptychodus' reconstruction input pairs every pattern with its position
    rin = prepare_reconstruct_input(assembled, product)
    assert len(rin.product.probe_positions) == P
    amplitude = dict(zip(ds.scan_index.tolist(), ds.diffraction))
    for position, pattern in zip(rin.product.probe_positions, rin.diffraction_patterns):
        np.testing.assert_allclose(pattern, amplitude[int(position.index)].astype(np.float32) ** 2, rtol=1e-6)
    assert_same_corners(our_corners(ds), ptychodus_corners(rin.product))


def test_a_same_object_pixels_under_the_same_probe_pixels(tmp_path):
    """At integer placements ptychodus cuts its patch with plain slicing: it equals ours."""
    ds = our_dataset()
    ds.positions = np.round(ds.positions)
    write_ptychodus_pair(ds, tmp_path / "run")
    product, _ = load_ptychodus(tmp_path / "run")
    ours = simulate.object_patches(ds.object, ds.positions, N).numpy()
    object_geometry, probe_geometry = product.object_.get_geometry(), product.probes.get_geometry()
    for k, position in enumerate(product.probe_positions):
        op = object_geometry.map_coordinates_probe_to_object(position)
        bounds = probe_geometry.resolve_patch_bounds(op.x_px, op.y_px)
        assert abs(bounds.dx) < 1e-9 and abs(bounds.dy) < 1e-9
        np.testing.assert_array_equal(product.object_.get_layer(0)[bounds.y_slice, bounds.x_slice], ours[k])


def test_a_unknown_energy_and_distance_are_nan_with_a_warning_never_zero(tmp_path):
    ds = our_dataset(energy_eV=None, distance_m=None)
    with pytest.warns(DataWarning, match="unknown photon energy .* and detector distance .* NaN"):
        write_ptychodus_pair(ds, tmp_path / "run")
    product, assembled = load_ptychodus(tmp_path / "run")
    assert math.isnan(product.metadata.photon_energy_eV) and math.isnan(product.metadata.detector_distance_m)
    assert math.isnan(product.metadata.photon_wavelength_m)      # not a wavelength of 0
    assert math.isnan(assembled.get_pixel_geometry().width_m)
    back = read_ptychodus(tmp_path / "run")
    assert back.metadata.energy_eV is None and back.metadata.distance_m is None


# ---------------------------------------------------------------------------- (b) ptychodus -> ours
def test_b_ptychodus_files_read_by_us_with_every_field_and_placement(tmp_path):
    product, assembled = ptychodus_inputs()
    save_ptychodus(tmp_path / "src", product, assembled)
    with pytest.warns(DataWarning, match="1 pixels are flagged in 'bad_pixels'"):
        ds = load_dataset(tmp_path / "src")                 # a directory with product.h5 + diffraction.h5
    loaded, _ = load_ptychodus(tmp_path / "src")
    assert ds.n_patterns == P and ds.N == N
    np.testing.assert_array_equal(ds.scan_index, product.probe_positions.get_indexes())
    assert_same_corners(our_corners(ds), ptychodus_corners(loaded))
    counts = patterns_by_index(assembled)
    for i, amplitude in zip(ds.scan_index, ds.diffraction):
        np.testing.assert_allclose(amplitude.astype(np.float64) ** 2, counts[int(i)], rtol=1e-6)
    np.testing.assert_array_equal(ds.probe, product.probes.get_array()[0].astype(np.complex64))
    np.testing.assert_array_equal(ds.object, product.object_.get_layer(0).astype(np.complex64))
    m = ds.metadata
    assert (m.pixel_size_m, m.pixel_height_m, m.pixel_size_yx_m) == (DX, DY, (DY, DX))
    assert (m.object_center_x_m, m.object_center_y_m) == (CX, CY)
    assert (m.energy_eV, m.distance_m, m.photons_per_pattern) == (ENERGY, DISTANCE, 1e5)
    assert (m.exposure_time_s, m.mass_attenuation_m2_per_kg, m.tomography_angle_deg, m.tilt_angle_deg,
            m.focus_object_distance_m, m.far_field) == (0.25, 2.5, 12.5, 3.0, -0.01, 1.0)
    assert m.probe_calibrated is None
    # the reconstruction input ptychodus makes of the same files pairs the same patterns and corners
    rin = prepare_reconstruct_input(assembled, loaded)
    ours = dict(zip(ds.scan_index.tolist(), ds.diffraction))
    for position, pattern in zip(rin.product.probe_positions, rin.diffraction_patterns):
        np.testing.assert_allclose(ours[int(position.index)].astype(np.float64) ** 2, pattern, rtol=1e-6)


def test_b_opr_probe_is_the_position_average_of_ptychodus_probes_with_a_warning(tmp_path):
    product, assembled = ptychodus_inputs(opr_modes=3, opr_weights=True, bad_pixel=False)
    save_ptychodus(tmp_path / "src", product, assembled)
    with pytest.warns(DataWarning, match="OPR modes .* took the position-averaged probe"):
        ds = read_ptychodus(tmp_path / "src")
    loaded, _ = load_ptychodus(tmp_path / "src")
    per_position = np.mean([loaded.probes[k].get_array() for k in range(P)], axis=0)  # ptychodus' own
    np.testing.assert_allclose(ds.probe, per_position, rtol=1e-5, atol=1e-5)
    # back to ptychodus: the OPR modes and weights as they were
    write_ptychodus_pair(ds, tmp_path / "out")
    again, _ = load_ptychodus(tmp_path / "out")
    np.testing.assert_array_equal(again.probes.get_array(), loaded.probes.get_array())
    np.testing.assert_array_equal(again.probes.get_opr_weights(), loaded.probes.get_opr_weights())
    # a changed probe no longer matches the modes: they are not written (and it says so)
    ds.probe = ds.probe * 2
    with pytest.warns(DataWarning, match="OPR modes and weights are not written"):
        write_ptychodus_pair(ds, tmp_path / "changed")
    changed, _ = load_ptychodus(tmp_path / "changed")
    assert changed.probes.get_array().shape == (1, 2, N, N) and changed.probes.get_opr_weights_or_none() is None


def test_b_opr_modes_without_weights_take_mode_0_like_ptychodus(tmp_path):
    product, assembled = ptychodus_inputs(opr_modes=2, opr_weights=False, bad_pixel=False)
    save_ptychodus(tmp_path / "src", product, assembled)
    with pytest.warns(DataWarning, match="took OPR mode 0 of 2"):
        ds = read_ptychodus(tmp_path / "src")
    loaded, _ = load_ptychodus(tmp_path / "src")
    np.testing.assert_array_equal(ds.probe, loaded.probes[0].get_array().astype(np.complex64))


def test_b_legacy_attribute_names_are_read(tmp_path):
    write_ptychodus(our_dataset(), tmp_path / "old.h5")
    with h5py.File(tmp_path / "old.h5", "r+") as f:  # what ptycho_fast wrote before
        f.attrs["probe_energy_eV"] = f.attrs.pop("photon_energy_eV")
        f.attrs["mass_attenuation_m2_kg"] = f.attrs.pop("mass_attenuation_m2_per_kg")
    back = read_ptychodus(tmp_path / "old.h5")
    assert back.metadata.energy_eV == ENERGY and back.metadata.mass_attenuation_m2_per_kg == 2.5
    assert pio.load_product(tmp_path / "old.h5").metadata.photon_energy_eV == ENERGY  # its legacy fallback


# ---------------------------------------------------------------------------- (c) ptychodus -> ours -> ptychodus
def test_c_round_trip_keeps_every_geometric_and_metadata_field(tmp_path):
    product, assembled = ptychodus_inputs()
    save_ptychodus(tmp_path / "src", product, assembled)
    with pytest.warns(DataWarning, match="bad_pixels"):
        ds = read_ptychodus(tmp_path / "src")
    write_ptychodus_pair(ds, tmp_path / "out")
    src, src_diffraction = load_ptychodus(tmp_path / "src")
    out, out_diffraction = load_ptychodus(tmp_path / "out")

    assert out.metadata == src.metadata     # every field: name, comments, energy, ..., polarization, far_field
    assert out.losses == src.losses
    a, b = src.object_.get_geometry(), out.object_.get_geometry()
    assert a == b                           # size, pixel width AND height, centre: exactly
    np.testing.assert_array_equal(out.object_.layer_spacing_m, src.object_.layer_spacing_m)
    np.testing.assert_allclose(out.object_.get_array(), src.object_.get_array(), rtol=1e-6, atol=1e-7)
    assert out.probes.get_pixel_geometry() == src.probes.get_pixel_geometry()
    np.testing.assert_allclose(out.probes.get_array(), src.probes.get_array(), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(out.probe_positions.get_indexes(), src.probe_positions.get_indexes())
    np.testing.assert_allclose(out.probe_positions.get_coordinates_x_m(), src.probe_positions.get_coordinates_x_m(),
                               rtol=1e-13, atol=DX * 1e-12)
    np.testing.assert_allclose(out.probe_positions.get_coordinates_y_m(), src.probe_positions.get_coordinates_y_m(),
                               rtol=1e-13, atol=DY * 1e-12)
    np.testing.assert_array_equal(out.probe_positions.get_probe_photon_counts(),
                                  src.probe_positions.get_probe_photon_counts())
    assert_same_corners(ptychodus_corners(out), ptychodus_corners(src))

    # diffraction: exact integer counts, the mask, the detector pixel, the per-pattern counts
    assert out_diffraction.get_patterns_dtype() == src_diffraction.get_patterns_dtype() == np.uint32
    before, after = patterns_by_index(src_diffraction), patterns_by_index(out_diffraction)
    assert sorted(before) == sorted(after)
    for i in before:
        np.testing.assert_array_equal(after[i], before[i])
    np.testing.assert_array_equal(out_diffraction.get_bad_pixels(), src_diffraction.get_bad_pixels())
    assert out_diffraction.get_pixel_geometry() == src_diffraction.get_pixel_geometry()
    counts_before = dict(zip(src_diffraction.get_indexes().tolist(), src_diffraction.get_probe_photon_counts()))
    counts_after = dict(zip(out_diffraction.get_indexes().tolist(), out_diffraction.get_probe_photon_counts()))
    assert counts_before == counts_after


def test_c_round_trip_through_npz_with_the_cli_keeps_the_geometry(tmp_path, capsys):
    """ptychodus -> NPZ -> ptychodus with ``ptycho-fast convert``: the NPZ holds every number
    (pixel width and height, centre, energy, ...); refusing what it cannot hold, by name."""
    product, assembled = ptychodus_inputs(bad_pixel=False)
    save_ptychodus(tmp_path / "src", product, assembled)
    code = cli.main(["convert", str(tmp_path / "src"), str(tmp_path / "scan.npz")])
    err = capsys.readouterr().err
    assert code == 2 and "cannot hold" in err
    for field in ("name", "comments", "polarization", "losses", "position_photon_counts", "pattern_photon_counts"):
        assert field in err, field
    assert not (tmp_path / "scan.npz").exists()
    assert cli.main(["convert", str(tmp_path / "src"), str(tmp_path / "scan.npz"), "--drop", "all", "-q"]) == 0
    assert cli.main(["convert", str(tmp_path / "scan.npz"), str(tmp_path / "back"), "--to", "ptychodus", "-q"]) == 0
    src, src_diffraction = load_ptychodus(tmp_path / "src")
    back, back_diffraction = load_ptychodus(tmp_path / "back")
    assert back.object_.get_geometry() == src.object_.get_geometry()
    for field in ("detector_distance_m", "photon_energy_eV", "probe_photon_count", "exposure_time_s",
                  "mass_attenuation_m2_per_kg", "tomography_angle_deg", "focus_object_distance_m",
                  "tilt_angle_deg", "far_field"):
        assert getattr(back.metadata, field) == getattr(src.metadata, field), field
    assert_same_corners(ptychodus_corners(back), ptychodus_corners(src))
    np.testing.assert_allclose(back_diffraction.get_pixel_geometry().width_m,
                               src_diffraction.get_pixel_geometry().width_m, rtol=1e-12)
    np.testing.assert_allclose(back_diffraction.get_pixel_geometry().height_m,
                               src_diffraction.get_pixel_geometry().height_m, rtol=1e-12)


def test_hc_constant_matches_ptychodus():
    from ptychodus.api.constants import energy_eV_to_wavelength_m
    assert HC_EV_M / ENERGY == pytest.approx(energy_eV_to_wavelength_m(ENERGY), rel=1e-12)


def test_b_unmatched_indexes_pair_like_ptychodus_and_warn(tmp_path):
    """Positions without a pattern and patterns without a position are left out (with a
    warning); what remains is paired exactly as ptychodus' prepare_reconstruct_input pairs it."""
    product, assembled = ptychodus_inputs(bad_pixel=False)
    indexes = assembled.get_indexes()
    keep = np.ones(P, bool)
    keep[[2, 7]] = False                                   # two positions lose their pattern
    extra_index = int(product.probe_positions.get_indexes().max()) + 5   # beyond every position
    trimmed = AssembledDiffractionData(
        np.append(indexes[keep], extra_index), np.concatenate([assembled.get_patterns()[keep],
                                                               assembled.get_patterns()[:1]]),
        assembled.get_pixel_geometry(), assembled.get_bad_pixels())
    save_ptychodus(tmp_path / "src", product, trimmed)
    with pytest.warns(DataWarning) as caught:
        ds = read_ptychodus(tmp_path / "src")
    messages = " ".join(str(w.message) for w in caught)
    assert "2 probe positions have no pattern" in messages and "1 patterns have no probe position" in messages
    loaded, diffraction = load_ptychodus(tmp_path / "src")
    rin = prepare_reconstruct_input(diffraction, loaded)   # drops the extra pattern (outside the range)
    theirs = {int(p.index): pattern for p, pattern in zip(rin.product.probe_positions, rin.diffraction_patterns)}
    assert sorted(theirs) == sorted(ds.scan_index.tolist())
    for i, amplitude in zip(ds.scan_index, ds.diffraction):
        np.testing.assert_allclose(amplitude.astype(np.float64) ** 2, theirs[int(i)], rtol=1e-6)
    assert_same_corners(our_corners(ds), {i: c for i, c in ptychodus_corners(rin.product).items()})


def test_a_product_alone_as_infer_writes_it_loads_in_ptychodus(tmp_path):
    """write_ptychodus_product (``infer --format ptychodus``): metadata's pixel (with its
    height), centre and numbers; placement as ptychodus computes it."""
    from ptycho_fast.data import write_ptychodus_product
    ds = our_dataset()
    write_ptychodus_product(tmp_path / "object_ptychodus.h5", ds.positions, ds.probe, ds.object,
                            ds.metadata.pixel_size_m, ds.metadata, name="ptycho_fast infer: test")
    product = pio.load_product(tmp_path / "object_ptychodus.h5")
    geometry = product.object_.get_geometry()
    assert (geometry.pixel_width_m, geometry.pixel_height_m) == (DX, DY)
    assert (geometry.center_x_m, geometry.center_y_m) == (CX, CY)
    assert product.metadata.name == "ptycho_fast infer: test" and product.metadata.photon_energy_eV == ENERGY
    ds.scan_index = None
    assert_same_corners(our_corners(ds), ptychodus_corners(product))


def test_c_per_position_fields_follow_the_scan_index_through_a_subset(tmp_path):
    """Kept per-position values (photon counts) go with their position's index; when rows
    can no longer be matched to the source (indexes 0..P-1 and a subset) they are left out
    with a warning, never attached to the wrong position."""
    product, assembled = ptychodus_inputs(bad_pixel=False)
    save_ptychodus(tmp_path / "src", product, assembled)
    ds = read_ptychodus(tmp_path / "src")
    pick = np.array([9, 2, 14, 5])
    write_ptychodus_pair(ds.subset(pick), tmp_path / "subset")
    sub, sub_diffraction = load_ptychodus(tmp_path / "subset")
    counts = dict(zip(product.probe_positions.get_indexes().tolist(), product.probe_positions.get_probe_photon_counts()))
    assert dict(zip(sub.probe_positions.get_indexes().tolist(), sub.probe_positions.get_probe_photon_counts())) == {
        int(i): counts[int(i)] for i in ds.scan_index[pick]}
    pattern_counts = dict(zip(assembled.get_indexes().tolist(), assembled.get_probe_photon_counts()))
    assert dict(zip(sub_diffraction.get_indexes().tolist(), sub_diffraction.get_probe_photon_counts())) == {
        int(i): pattern_counts[int(i)] for i in ds.scan_index[pick]}

    # the same product with indexes 0..P-1: our scan_index is None, rows match by order only
    points = [ProbePosition(k, p.x_m, p.y_m, p.probe_photon_count) for k, p in enumerate(product.probe_positions)]
    plain = Product(product.metadata, ProbePositionSequence(points), product.probes, product.object_, product.losses)
    plain_diffraction = AssembledDiffractionData(np.arange(P), assembled.get_patterns(), assembled.get_pixel_geometry(),
                                                 assembled.get_bad_pixels())
    save_ptychodus(tmp_path / "plain", plain, plain_diffraction)
    ds = read_ptychodus(tmp_path / "plain")
    assert ds.scan_index is None
    write_ptychodus_pair(ds, tmp_path / "plain_back")              # whole: restored
    back, _ = load_ptychodus(tmp_path / "plain_back")
    np.testing.assert_array_equal(back.probe_positions.get_probe_photon_counts(),
                                  plain.probe_positions.get_probe_photon_counts())
    with pytest.warns(DataWarning, match="per-position photon counts .* not written"):
        write_ptychodus_pair(ds.subset(pick), tmp_path / "plain_subset")
    assert pio.load_product(tmp_path / "plain_subset" / "product.h5").probe_positions.get_probe_photon_counts() is None
