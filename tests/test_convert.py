"""``ptycho-fast convert``: lossless round trips between NPZ, our HDF5 and a ptychodus product,
refusal (by field name) of what the target cannot hold, exit code 2 on bad input."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from ptycho_fast import cli
from ptycho_fast.convert import convert, target_format
from ptycho_fast.data import (Metadata, PtychoDataset, UserError, detect_format, load_dataset,
                              write_npz, write_ptychodus)

N, P, H, W = 16, 24, 40, 44


def make_dataset(seed=0, with_object=True, scan_index="shuffled", **meta) -> PtychoDataset:
    rng = np.random.default_rng(seed)
    positions = np.stack([rng.uniform(N / 2 + 1, H - N / 2 - 2, P), rng.uniform(N / 2 + 1, W - N / 2 - 2, P)], 1)
    probe = (rng.normal(size=(2, N, N)) + 1j * rng.normal(size=(2, N, N))).astype(np.complex64)
    obj = None
    if with_object:
        obj = (rng.uniform(0.5, 1, (H, W)) * np.exp(1j * rng.uniform(-1, 1, (H, W)))).astype(np.complex64)
    index = {"shuffled": rng.choice(1000, P, replace=False), "repeated": np.zeros(P, np.int64), None: None}[scan_index]
    fields = dict(photons_per_pattern=1e5, pixel_size_m=5e-9, pixel_height_m=7e-9, energy_eV=9000.0,
                  distance_m=1.5, probe_calibrated=1.0, object_center_x_m=-2e-7, object_center_y_m=3e-7,
                  exposure_time_s=0.25, tilt_angle_deg=3.0)
    fields.update(meta)
    return PtychoDataset(diffraction=rng.uniform(0, 30, (P, N, N)).astype(np.float32), positions=positions,
                         probe=probe, object=obj, scan_index=index,
                         positions_start=positions + rng.normal(0, 0.3, positions.shape),
                         metadata=Metadata(**fields))


def assert_same(a: PtychoDataset, b: PtychoDataset, rtol=0.0, pos_atol=0.0):
    """Equal on every field both hold (all of ours)."""
    np.testing.assert_allclose(np.asarray(b.diffraction[:]), np.asarray(a.diffraction[:]), rtol=rtol, atol=0)
    np.testing.assert_allclose(b.positions, a.positions, rtol=0, atol=pos_atol)
    np.testing.assert_array_equal(b.probe, a.probe)
    assert (a.object is None) == (b.object is None)
    if a.object is not None:
        np.testing.assert_array_equal(b.object, a.object)
    for name in ("scan_index", "positions_start"):
        va, vb = getattr(a, name), getattr(b, name)
        assert (va is None) == (vb is None), name
        if va is not None:
            np.testing.assert_allclose(vb, va, rtol=0, atol=pos_atol)
    for k in Metadata.KEYS:
        va, vb = getattr(a.metadata, k), getattr(b.metadata, k)
        assert (va is None and vb is None) or vb == pytest.approx(va, rel=1e-12), k


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_npz_h5_npz_round_trip_is_exact(tmp_path, capsys):
    src = make_dataset()
    write_npz(src, tmp_path / "a.npz")
    code, out, err = run(capsys, "convert", tmp_path / "a.npz", tmp_path / "b.h5")
    assert code == 0 and err == "" and "ptycho_fast HDF5 file" in out and "24 patterns" in out
    assert detect_format(tmp_path / "b.h5") == "h5"
    assert run(capsys, "convert", tmp_path / "b.h5", tmp_path / "c.npz", "-q")[:2] == (0, "")
    assert_same(load_dataset(tmp_path / "a.npz"), load_dataset(tmp_path / "c.npz"))
    assert_same(load_dataset(tmp_path / "a.npz"), load_dataset(tmp_path / "b.h5"))


@pytest.mark.parametrize("variant", ["full", "no object", "repeated scan_index", "no scan_index"])
def test_npz_ptychodus_npz_round_trip_equal_on_every_field(tmp_path, capsys, variant):
    src = make_dataset(with_object=variant != "no object",
                       scan_index={"repeated scan_index": "repeated", "no scan_index": None}.get(variant, "shuffled"))
    write_npz(src, tmp_path / "a.npz")
    assert run(capsys, "convert", tmp_path / "a.npz", tmp_path / "run", "--to", "ptychodus", "-q")[0] == 0
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["diffraction.h5", "product.h5"]
    assert run(capsys, "convert", tmp_path / "run", tmp_path / "b.npz", "-q")[0] == 0
    # counts on disk (amplitude squared, float32) and metres: float round-off only
    assert_same(load_dataset(tmp_path / "a.npz"), load_dataset(tmp_path / "b.npz"), rtol=1e-6, pos_atol=1e-9)


def test_ptychodus_target_named_h5_and_existing_directory(tmp_path):
    src = make_dataset()
    write_npz(src, tmp_path / "a.npz")
    result = convert(tmp_path / "a.npz", tmp_path / "p.h5", to="ptychodus")
    assert result.written == [tmp_path / "p.h5", tmp_path / "p-diffraction.h5"]
    assert detect_format(tmp_path / "p.h5") == "ptychodus"
    (tmp_path / "d").mkdir()
    result = convert(tmp_path / "p.h5", tmp_path / "d")          # an existing directory: ptychodus
    assert result.target_format == "ptychodus" and (tmp_path / "d" / "product.h5").is_file()
    assert_same(load_dataset(tmp_path / "a.npz"), load_dataset(tmp_path / "d"), rtol=1e-6, pos_atol=1e-9)


def test_refuses_fields_the_target_cannot_hold_by_name(tmp_path, capsys):
    write_ptychodus(make_dataset(), tmp_path / "p.h5", name="scan 7")
    with h5py.File(tmp_path / "p.h5", "r+") as f:  # a ptychodus reconstruction's loss history
        del f["loss_epochs"], f["loss_values"]
        f["loss_epochs"], f["loss_values"] = np.arange(3), np.array([0.5, 0.25, 0.125])
    (tmp_path / "b.npz").write_bytes(b"previous")
    code, out, err = run(capsys, "convert", tmp_path / "p.h5", tmp_path / "b.npz")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "cannot hold" in err
    assert "name (product name 'scan 7')" in err and "losses (3 loss values)" in err
    assert "--drop name,losses" in err
    assert (tmp_path / "b.npz").read_bytes() == b"previous"       # nothing written
    code, _, err = run(capsys, "convert", tmp_path / "p.h5", tmp_path / "b.npz", "--drop", "name")
    assert code == 2 and "losses" in err and "name (" not in err
    code, out, _ = run(capsys, "convert", tmp_path / "p.h5", tmp_path / "b.npz", "--drop", "name,losses")
    assert code == 0 and "left out: name, losses" in out
    with pytest.raises(UserError, match="--drop colour: unknown field"):
        convert(tmp_path / "p.h5", tmp_path / "c.npz", drop=["colour"])


def test_ptychodus_target_needs_the_pixel_size(tmp_path, capsys):
    write_npz(make_dataset(pixel_size_m=None, pixel_height_m=None), tmp_path / "a.npz")
    code, _, err = run(capsys, "convert", tmp_path / "a.npz", tmp_path / "run", "--to", "ptychodus")
    assert code == 2 and "pixel_size_m" in err and "--pixel-size" in err
    assert not (tmp_path / "run").exists()
    assert run(capsys, "convert", tmp_path / "a.npz", tmp_path / "run", "--to", "ptychodus",
               "--pixel-size", "1e-8", "-q")[0] == 0
    assert load_dataset(tmp_path / "run").metadata.pixel_size_m == 1e-8


def test_cli_exit_code_2_on_bad_input(tmp_path, capsys):
    write_npz(make_dataset(), tmp_path / "a.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip archive")
    cases = [
        ((tmp_path / "missing.npz", tmp_path / "b.h5"), "no such file"),
        ((tmp_path / "junk.npz", tmp_path / "b.h5"), "junk.npz"),
        ((tmp_path / "a.npz", tmp_path / "b.txt"), "cannot tell the output format"),
        ((tmp_path / "a.npz", tmp_path / "b.h5", "--to", "npz"), "does not match"),
        ((tmp_path / "a.npz", tmp_path / "nodir" / "b.h5"), "does not exist"),
        ((tmp_path / "a.npz", tmp_path / "a.npz"), "is the input file"),
        ((tmp_path / "a.npz", tmp_path / "b.npz", "--to", "tiff"), "invalid choice"),
        ((tmp_path / "a.npz", tmp_path / "b.npz", "--pixel-size", "-1"), "positive length"),
    ]
    for argv, message in cases:
        code, out, err = run(capsys, "convert", *argv)
        assert code == 2, argv
        assert err.startswith("ptycho-fast: error:") and message in err and "Traceback" not in err, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "junk.npz"]


def test_target_format_rules(tmp_path):
    assert target_format("x.npz") == "npz" and target_format("x.H5") == "h5" and target_format("x.hdf5") == "h5"
    assert target_format("x.h5", "ptychodus") == "ptychodus" and target_format(tmp_path) == "ptychodus"
    assert target_format("run/") == "ptychodus"
    for out, to in (("x", None), ("x.npz", "h5"), ("x.h5", "npz"), (str(tmp_path), "h5")):
        with pytest.raises(UserError):
            target_format(out, to)
