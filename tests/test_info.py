"""``ptycho-fast info`` on simulated data files, a small model bundle and other files."""

import json

import numpy as np
import pytest
import torch

from ptycho_fast import cli, physics
from ptycho_fast.bundle import dataset_fingerprint, save_bundle
from ptycho_fast.data import save_dataset
from ptycho_fast.model import NetworkConfig, PtychoPINNNet
from ptycho_fast.simulate import simulate


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("info")
    ds = simulate(seed=2, N=32, n_patterns=16, photons=1e5)
    save_dataset(ds, d / "scan.npz")
    save_dataset(ds, d / "scan.h5")
    torch.manual_seed(0)
    net = PtychoPINNNet(NetworkConfig(N=32, gridsize=2, width=0.25))
    (d / "run").mkdir()                                   # a training run directory
    save_bundle(d / "run" / "model", net, intensity_scale=12.5,
                probe_gain=1.0, probe=ds.probe, training_data=dataset_fingerprint(ds),
                training={"epochs": 3, "loss": "poisson"})
    return d, ds, net


def run(argv, capsys):
    code = cli.main(["info", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("name,fmt", [("scan.npz", "npz"), ("scan.h5", "h5")])
def test_data_file(files, capsys, name, fmt):
    d, ds, _ = files
    code, out, err = run([str(d / name), "--json"], capsys)
    assert code == 0, err
    info = json.loads(out)
    X = ds.diffraction.astype(np.float64)
    counts = (X ** 2).sum(axis=(1, 2))
    assert info["kind"] == "dataset" and info["format"] == fmt
    assert info["n_patterns"] == 16 and info["N"] == 32 and info["gridsize"] is None
    assert info["intensity_scale"] == pytest.approx(physics.intensity_scale(ds.diffraction), rel=1e-12)
    assert info["probe_gain_fitted"] == pytest.approx(physics.probe_gain(ds.diffraction, ds.probe), rel=1e-9)
    # the simulator's file says its probe is calibrated: auto uses g = 1, as training would
    g, how = physics.choose_probe_gain(ds.diffraction, ds.probe, "auto", calibrated=True)
    assert info["probe_gain_auto"]["value"] == g == 1.0 and info["probe_gain_auto"]["choice"] == how
    assert info["probe_gain_auto"]["probe_calibrated"] == 1.0 and info["probe_gain_auto"]["warning"] is None
    ph = info["photons_per_pattern"]
    assert ph["mean"] == pytest.approx(counts.mean()) and ph["min"] == pytest.approx(counts.min())
    assert ph["max"] == pytest.approx(counts.max()) and ph["mean"] == pytest.approx(1e5, rel=0.05)
    assert info["brightest_pixel_counts"] == pytest.approx((X ** 2).max())
    pos = info["positions"]
    assert [pos["row_min"], pos["row_max"]] == pytest.approx([ds.positions[:, 0].min(), ds.positions[:, 0].max()])
    assert [pos["col_min"], pos["col_max"]] == pytest.approx([ds.positions[:, 1].min(), ds.positions[:, 1].max()])
    assert info["object"]["shape"] == list(ds.object.shape)
    assert info["probe"]["shape"] == [32, 32] and info["probe"]["modes"] == 1
    assert info["metadata"]["photons_per_pattern"] == 1e5
    stored = {a["name"]: a for a in info["stored_arrays"]}
    diff_key = "diffraction"
    assert stored[diff_key]["shape"] == [16, 32, 32] and stored[diff_key]["dtype"] == "float32"
    if fmt == "h5":
        assert info["versions"]["file_format_version"] == 1
    else:
        assert stored["probeGuess"]["dtype"] == "complex64" and "xcoords" in stored
    code, text, _ = run([str(d / name)], capsys)
    assert code == 0
    for needle in ("patterns P          16", "pattern size N      32", "intensity scale s", "probe gain",
                   "counts per pattern", "positions           16 probe centres", "object              "):
        assert needle in text, needle


def test_bundle(files, capsys):
    d, _, net = files
    for target in (d / "run", d / "run" / "model", d / "run" / "model" / "bundle.json"):
        code, out, err = run([str(target), "--json"], capsys)
        assert code == 0, err
        info = json.loads(out)
        assert info["kind"] == "bundle" and info["valid"] and info["problem"] is None
        assert info["N"] == 32 and info["gridsize"] == 2
        assert info["intensity_scale"] == 12.5 and info["probe_gain"] == 1.0
        assert info["n_parameters"] == sum(p.numel() for p in net.parameters())
        assert info["training"]["epochs"] == 3 and "torch" in info["versions"]
    code, text, _ = run([str(d / "run")], capsys)
    assert "gridsize            2" in text and "intensity scale s   12.5" in text and "valid               yes" in text


def test_corrupt_bundle_is_described_with_its_problem(files, tmp_path, capsys):
    import shutil
    d, _, _ = files
    shutil.copytree(d / "run" / "model", tmp_path / "model")
    weights = next(p for p in (tmp_path / "model").iterdir() if p.name.startswith("weights"))
    weights.write_bytes(weights.read_bytes() + b"x")
    code, out, _ = run([str(tmp_path / "model"), "--json"], capsys)
    assert code == 0
    info = json.loads(out)
    assert not info["valid"] and "checksum" in info["problem"]
    code, text, _ = run([str(tmp_path / "model")], capsys)
    assert "INVALID" in text and "NO: " in text


def test_other_files(files, tmp_path, capsys):
    d, ds, _ = files
    np.savez(tmp_path / "arrays.npz", a=np.zeros((2, 3), np.float32), b=np.arange(4))
    code, out, _ = run([str(tmp_path / "arrays.npz"), "--json"], capsys)
    info = json.loads(out)
    assert code == 0 and info["kind"] == "arrays"
    assert {a["name"]: a["shape"] for a in info["stored_arrays"]} == {"a": [2, 3], "b": [4]}
    # an infer-style output directory
    (tmp_path / "rec").mkdir()
    cov = np.ones(ds.object.shape, np.float32)
    np.savez(tmp_path / "rec" / "object.npz", object=ds.object, coverage=cov, positions=ds.positions)
    code, out, _ = run([str(tmp_path / "rec"), "--json"], capsys)
    info = json.loads(out)
    assert code == 0 and info["kind"] == "reconstruction" and info["object"]["shape"] == list(ds.object.shape)
    assert info["coverage"]["covered_fraction"] == 1.0 and info["positions"]["count"] == 16
    # unusable paths: one line, exit 2
    np.save(tmp_path / "single.npy", np.zeros(3))
    (tmp_path / "nothing").mkdir()
    for target, message in ((tmp_path / "missing.npz", "no such file"), (tmp_path / "single.npy", ".npy"),
                            (tmp_path / "nothing", "is a directory")):
        code, _, err = run([str(target)], capsys)
        assert code == 2 and err.startswith("ptycho-fast: error: ") and message in err, (target, err)
