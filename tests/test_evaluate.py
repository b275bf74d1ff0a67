"""``ptycho-fast evaluate``: outputs, alignment steps and errors on synthetic reconstructions
(no dependence on ``ptycho-fast infer``: the tests write infer-style directories themselves)."""

import csv
import json

import numpy as np
import pytest

from ptycho_fast import cli, metrics
from ptycho_fast.data import save_dataset
from ptycho_fast.simulate import simulate

N = 32


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A small simulated dataset with its ground truth (written as NPZ)."""
    ds = simulate(seed=1, N=N, n_patterns=25, object="lines")
    path = tmp_path_factory.mktemp("data") / "scan.npz"
    save_dataset(ds, path)
    return path, ds


def write_recon(directory, obj, positions=None, coverage=None, origin=None, summary=None):
    """An infer-style output directory: object.npz (+ summary.json)."""
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {"object": np.asarray(obj, dtype=np.complex64)}
    if positions is not None:
        arrays["positions"] = np.asarray(positions, dtype=np.float64)
    if coverage is not None:
        arrays["coverage"] = np.asarray(coverage, dtype=np.float32)
        arrays["covered"] = np.asarray(coverage) > 0
    if origin is not None:
        arrays["origin"] = np.asarray(origin, dtype=np.float64)
    np.savez(directory / "object.npz", **arrays)
    if summary is not None:
        (directory / "summary.json").write_text(json.dumps(summary))
    return directory


def run(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def load_metrics(out_dir):
    return json.loads((out_dir / "metrics.json").read_text())


def test_cli_writes_every_file_for_a_perfect_reconstruction(data, tmp_path, capsys):
    path, ds = data
    recon = write_recon(tmp_path / "run", ds.object * np.exp(0.7j), positions=ds.positions)
    out = tmp_path / "eval"
    code, stdout, err = run(["evaluate", str(recon), "--truth", str(path), "--out", str(out)], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["compare.png", "frc.png", "metrics.csv", "metrics.json"]
    m = load_metrics(out)
    for image in ("amplitude", "phase"):
        for name in ("mae", "rmse", "psnr", "ssim", "frc_half_bit_px", "frc_half_bit_nyquist",
                     "frc_one_seventh_px", "frc_one_seventh_nyquist", "frc_mean"):
            assert f"{image}_{name}" in m
    assert m["amplitude_ssim"] == pytest.approx(1.0, abs=1e-9)
    assert m["phase_ssim"] == pytest.approx(1.0, abs=1e-6)
    assert m["phase_mae"] < 1e-6 and m["amplitude_mae"] < 1e-6
    assert m["phase_offset_rad"] == pytest.approx(0.7, abs=1e-6)
    assert m["amplitude_psnr"] is None or m["amplitude_psnr"] > 120     # inf is written as null
    assert m["amplitude_frc_half_bit_nyquist"] == pytest.approx(1.0, abs=0.05)
    assert m["amplitude_frc_half_bit_low_frequency_deficit_nyquist"] is None    # key present, no deficit
    assert m["phase_frc_one_seventh_low_frequency_deficit_nyquist"] is None
    # default crop: the illuminated region (metrics.illuminated_region), inside the scanned
    # region (bounding box of every patch), both recorded
    rows, cols, _ = metrics.illuminated_region(ds.positions, ds.probe, ds.object.shape)
    assert m["region"]["crop"] == "illuminated" and m["region"]["rows"] == [rows.start, rows.stop]
    assert m["region"]["cols"] == [cols.start, cols.stop] and m["region"]["N"] == N
    scan_rows, scan_cols = metrics.scan_region(ds.positions, N, ds.object.shape)
    assert m["region"]["scan_region_rows"] == [scan_rows.start, scan_rows.stop]
    assert scan_rows.start < rows.start < rows.stop < scan_rows.stop
    assert scan_cols.start < cols.start < cols.stop < scan_cols.stop
    assert m["region"]["illumination_min_in_region"] >= 0.1 * m["region"]["illumination_median_in_region"] * 0.5
    assert len(m["frc_curves"]["amplitude"]) == len(m["frc_curves"]["frequency_cycles_per_px"])
    with open(out / "metrics.csv") as f:
        table = {row["metric"]: row["value"] for row in csv.DictReader(f)}
    assert float(table["phase_ssim"]) == pytest.approx(m["phase_ssim"])
    from PIL import Image
    for png in ("frc.png", "compare.png"):
        with Image.open(out / png) as im:
            assert im.format == "PNG" and im.size[0] > 300
    assert "SSIM" in stdout and "amplitude" in stdout
    assert not [p for p in out.iterdir() if p.name.startswith(".")]    # no temporary files left


def test_noise_lowers_the_scores(data, tmp_path, capsys):
    path, ds = data
    rng = np.random.default_rng(0)
    noisy = ds.object * (1 + 0.1 * rng.standard_normal(ds.object.shape)) \
        * np.exp(0.2j * rng.standard_normal(ds.object.shape))
    recon = write_recon(tmp_path / "noisy", noisy, positions=ds.positions)
    code, _, err = run(["evaluate", str(recon), "--truth", str(path), "--out", str(tmp_path / "e"), "-q"], capsys)
    assert code == 0, err
    m = load_metrics(tmp_path / "e")
    assert m["amplitude_ssim"] < 0.9 and m["phase_ssim"] < 0.9
    assert 0.05 < m["phase_mae"] < 0.3
    assert m["amplitude_frc_half_bit_nyquist"] < 1.0


def test_register_and_phase_ramp_are_removed(data, tmp_path, capsys):
    path, ds = data
    y, x = np.mgrid[:ds.object.shape[0], :ds.object.shape[1]]
    shifted = metrics.shift_image(ds.object.astype(np.complex128), (1.5, -0.75))
    recon = write_recon(tmp_path / "r", shifted * np.exp(1j * (0.3 + 0.05 * y - 0.02 * x)),
                        positions=ds.positions)
    out = tmp_path / "e"
    code, _, err = run(["evaluate", str(recon), "--truth", str(path), "--out", str(out),
                        "--register", "--phase-ramp", "--crop", "scan", "-q"], capsys)
    assert code == 0, err
    m = load_metrics(out)
    assert m["register_shift_row_px"] == pytest.approx(-1.5, abs=0.05)
    assert m["register_shift_col_px"] == pytest.approx(0.75, abs=0.05)
    assert m["phase_ramp_row_rad_per_px"] == pytest.approx(0.05, abs=2e-3)
    assert m["phase_ramp_col_rad_per_px"] == pytest.approx(-0.02, abs=2e-3)
    assert m["phase_ssim"] > 0.95 and m["amplitude_ssim"] > 0.9
    # the registration trims ceil(|shift|) = 2 pixels from each side of the scanned region
    rows, _ = metrics.scan_region(ds.positions, N, ds.object.shape)
    assert m["region"]["rows"] == [rows.start + 2, rows.stop - 2]
    # without the two corrections the same reconstruction scores much worse
    code, _, _ = run(["evaluate", str(recon), "--truth", str(path), "--out", str(tmp_path / "e0"), "-q",
                      "--crop", "scan"], capsys)
    assert load_metrics(tmp_path / "e0")["phase_ssim"] < m["phase_ssim"] - 0.2


def test_an_implausible_registration_is_an_error(data, tmp_path, capsys):
    path, ds = data
    rows, cols = metrics.scan_region(ds.positions, N, ds.object.shape)
    far = np.roll(ds.object, 15, axis=1)                 # 15 px: more than a quarter of the region
    assert (cols.stop - cols.start) / 4 < 15
    recon = write_recon(tmp_path / "r", far, positions=ds.positions)
    argv = ["evaluate", str(recon), "--truth", str(path), "--out", str(tmp_path / "e"), "--register", "-q",
            "--crop", "scan"]
    code, _, err = run(argv, capsys)
    assert code == 2 and "--max-shift" in _one_error_line(err)
    code, _, err = run(argv + ["--max-shift", "16"], capsys)
    assert code == 0, err
    assert load_metrics(tmp_path / "e")["register_shift_col_px"] == pytest.approx(-15, abs=0.25)


def test_amplitude_scale_is_reported_and_optionally_matched(data, tmp_path, capsys):
    path, ds = data
    recon = write_recon(tmp_path / "r", ds.object * 0.5, positions=ds.positions)
    run(["evaluate", str(recon), "--truth", str(path), "--out", str(tmp_path / "a"), "-q"], capsys)
    run(["evaluate", str(recon), "--truth", str(path), "--out", str(tmp_path / "b"), "-q", "--match-scale"], capsys)
    a, b = load_metrics(tmp_path / "a"), load_metrics(tmp_path / "b")
    assert a["amplitude_scale_fit"] == pytest.approx(2.0, rel=1e-6) and not a["amplitude_scale_applied"]
    assert a["amplitude_mae"] > 0.3
    assert b["amplitude_scale_applied"] and b["amplitude_mae"] < 1e-6


def test_canvas_with_an_origin_and_other_crops(data, tmp_path, capsys):
    path, ds = data
    H, W = ds.object.shape
    o = (3, 2)
    canvas = ds.object[o[0]:H - 1, o[1]:W - 2]
    cov = np.zeros(canvas.shape)
    cov[4:-4, 5:-5] = 1.0
    recon = write_recon(tmp_path / "r", canvas, positions=ds.positions - o, coverage=cov, origin=o)
    for crop in ("illuminated", "scan", "covered", "none"):
        out = tmp_path / crop
        code, _, err = run(["evaluate", str(recon), "--truth", str(path), "--out", str(out), "--crop", crop, "-q"],
                           capsys)
        assert code == 0, err
        m = load_metrics(out)
        assert m["amplitude_ssim"] == pytest.approx(1.0, abs=1e-9), crop
        assert m["region"]["canvas_origin"] == list(o)
    assert load_metrics(tmp_path / "covered")["region"]["rows"] == [4, canvas.shape[0] - 4]
    assert load_metrics(tmp_path / "none")["region"]["shape"] == list(canvas.shape)
    # the scan crop in the canvas frame: the data frame's region moved by the origin
    rows, cols = metrics.scan_region(ds.positions, N, ds.object.shape)
    scan = load_metrics(tmp_path / "scan")["region"]
    assert scan["rows"] == [rows.start - o[0], min(rows.stop - o[0], canvas.shape[0])]
    assert scan["cols"] == [cols.start - o[1], min(cols.stop - o[1], canvas.shape[1])]
    rows, cols, _ = metrics.illuminated_region(ds.positions, ds.probe, ds.object.shape)
    lit = load_metrics(tmp_path / "illuminated")["region"]
    assert lit["rows"] == [rows.start - o[0], rows.stop - o[0]] and lit["cols"] == [cols.start - o[1], cols.stop - o[1]]


def _one_error_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ptycho-fast: error: "), err
    return lines[0]


def test_bad_inputs_give_one_clear_line(data, tmp_path, capsys):
    path, ds = data
    obj = ds.object
    out = str(tmp_path / "out")
    cases = []
    # shapes that cannot be aligned
    cases.append((write_recon(tmp_path / "shape", obj[:-3]), str(path), "cannot align"))
    # a canvas reaching outside the truth
    cases.append((write_recon(tmp_path / "outside", obj[5:], origin=(10, 0)), str(path), "outside the truth"))
    # real reconstruction against a complex truth
    np.savez(tmp_path / "real.npz", object=np.abs(obj))
    cases.append((tmp_path / "real.npz", str(path), "is real"))
    # real truth against a complex reconstruction
    np.save(tmp_path / "truth_real.npy", np.abs(obj))
    cases.append((write_recon(tmp_path / "ok", obj, positions=ds.positions), str(tmp_path / "truth_real.npy"),
                  "is real"))
    # missing key
    np.savez(tmp_path / "nokey.npz", recon=obj)
    cases.append((tmp_path / "nokey.npz", str(path), "no key 'object'"))
    # pickled arrays are refused
    np.savez(tmp_path / "pickled.npz", object=np.array([obj, None], dtype=object))
    cases.append((tmp_path / "pickled.npz", str(path), "pickle"))
    # a directory without object.npz
    (tmp_path / "empty").mkdir()
    cases.append((tmp_path / "empty", str(path), "no object.npz"))
    # a truth NPZ without an object
    np.savez(tmp_path / "noobj.npz", a=np.zeros(3), b=np.zeros(3))
    cases.append((tmp_path / "ok", str(tmp_path / "noobj.npz"), "no ground-truth object"))
    # no positions and no N: the scanned region cannot be found
    np.save(tmp_path / "truth.npy", obj)
    write_recon(tmp_path / "nopos", obj)
    for recon, truth, message in cases:
        code, _, err = run(["evaluate", str(recon), "--truth", truth, "--out", out], capsys)
        assert code == 2, (recon, err)
        assert message in _one_error_line(err), (recon, err)
    code, _, err = run(["evaluate", str(tmp_path / "nopos"), "--truth", str(tmp_path / "truth.npy"),
                        "--out", out, "--crop", "scan"], capsys)
    assert code == 2 and "--crop scan" in _one_error_line(err)
    code, _, err = run(["evaluate", str(tmp_path / "ok"), "--truth", str(tmp_path / "truth.npy"),
                        "--out", out, "--crop", "scan"], capsys)
    assert code == 2 and "--n" in _one_error_line(err)
    # the illuminated crop needs the probe: a bare-object truth has none
    code, _, err = run(["evaluate", str(tmp_path / "ok"), "--truth", str(tmp_path / "truth.npy"),
                        "--out", out, "--crop", "illuminated"], capsys)
    assert code == 2 and "--crop illuminated" in _one_error_line(err) and "probe" in _one_error_line(err)
    for floor in ("0", "1", "-0.5"):
        code, _, err = run(["evaluate", str(tmp_path / "ok"), "--truth", str(path), "--out", out,
                            "--illumination-floor", floor], capsys)
        assert code == 2 and "--illumination-floor" in _one_error_line(err), floor
    code, _, err = run(["evaluate", str(tmp_path / "ok"), "--truth", str(path), "--out",
                        str(tmp_path / "missing" / "out")], capsys)
    assert code == 2 and "does not exist" in _one_error_line(err)
    # the bare truth works with --n (positions from the reconstruction) or --crop none
    code, _, err = run(["evaluate", str(tmp_path / "ok"), "--truth", str(tmp_path / "truth.npy"),
                        "--out", out, "--n", str(N), "-q"], capsys)
    assert code == 0, err
    assert not (tmp_path / "out" / "metrics.json").with_suffix(".tmp").exists()
