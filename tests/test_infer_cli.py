"""``ptycho-fast infer`` end to end: the bundled sample with no arguments, every output
file, its quality against the ground truth, the debug dump, and one-line errors for bad
input that leave no partial files behind."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from ptycho_fast import cli, infer, metrics, simulate
from ptycho_fast.guard import CountSpread
from ptycho_fast.bundle import dataset_fingerprint, load_bundle, save_bundle
from ptycho_fast.data import PtychoDataset, load_dataset, write_npz
from ptycho_fast.model import PtychoPINNNet

#: the bundled sample's reconstruction must reach these SSIMs against its ground truth
#: (inside the box spanned by the probe centres; phase after removing the global phase
#: offset). scripts/make_sample.py --check reports the values it achieved.
SSIM_AMPLITUDE_MIN = 0.60   # achieved: 0.647 (a realistic object, unseen by the model)
SSIM_PHASE_MIN = 0.42       # achieved: 0.468


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *fragments, exit_code=2):
    assert code == exit_code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ptycho-fast: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def assert_no_files(directory: Path):
    assert not directory.exists() or list(directory.iterdir()) == [], list(directory.iterdir())


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    """``ptycho-fast infer`` with no arguments, run in an empty directory."""
    cwd = tmp_path_factory.mktemp("cwd")
    old = os.getcwd()
    os.chdir(cwd)
    try:
        import contextlib
        import io
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(["infer"])
    finally:
        os.chdir(old)
    return code, out.getvalue(), err.getvalue(), cwd / infer.DEFAULT_OUT


def test_no_arguments_reconstructs_the_sample(sample_run):
    code, out, err, directory = sample_run
    assert code == 0, err
    assert "warning" not in err and "degenerate" not in err
    lines = out.strip().splitlines()
    assert len(lines) == 1
    assert "ptycho_fast_out/amplitude.png" in lines[0] and "ptycho_fast_out/phase.png" in lines[0]
    names = sorted(p.name for p in directory.iterdir())
    assert names == sorted(["object.npz", "object.h5", "amplitude.png", "phase.png", "summary.json"])


def test_sample_outputs_are_valid(sample_run):
    _, _, _, d = sample_run
    model, data = infer.sample_paths()
    truth = load_dataset(data)
    bundle = load_bundle(model)
    with np.load(d / "object.npz", allow_pickle=False) as npz:
        obj, coverage, positions = npz["object"], npz["coverage"], npz["positions"]
        covered, origin = npz["covered"], npz["origin"]
    assert obj.dtype == np.complex64 and obj.shape == truth.object.shape
    assert coverage.dtype == np.float32 and coverage.shape == obj.shape
    assert positions.shape == (truth.n_patterns, 2)
    np.testing.assert_array_equal(origin, [0, 0])                 # the objectGuess frame
    np.testing.assert_allclose(positions, truth.positions)
    assert np.all(obj[~covered] == 0) and np.all(coverage[~covered] <= coverage.max() * infer.COVERAGE_FLOOR)
    with h5py.File(d / "object.h5", "r") as f:
        assert f.attrs["format"] == infer.OBJECT_FORMAT
        np.testing.assert_array_equal(f["object"][()], obj)
        np.testing.assert_array_equal(f["coverage"][()], coverage)
    for name in ("amplitude.png", "phase.png"):
        with Image.open(d / name) as im:
            im.verify()
        with Image.open(d / name) as im:
            assert im.format == "PNG" and min(im.size) > 200
    s = json.loads((d / "summary.json").read_text())
    assert s["intensity_scale"] == bundle.intensity_scale and s["probe_gain"] == bundle.probe_gain
    assert s["n_patterns"] == truth.n_patterns and s["canvas"]["shape"] == list(obj.shape)
    assert s["model"] == str(model) and s["data"] == str(data) and s["sample"] is True
    assert s["ops"] == "ptycho_fast" and s["window"] == "probe"
    assert set(s["timings_s"]) >= {"network", "stitching", "io", "total"} and s["patterns_per_s"] > 0
    assert s["patch_stats"]["ddof"] == 0 and s["patch_stats"]["var_zero_mean"] > 0
    assert s["collapse_guard"]["result"] == "ok" and s["collapse_guard"]["amplitude_flat"] is None
    assert s["versions"]["torch"] == torch.__version__
    assert sorted(s["files"]) == sorted(p.name for p in d.iterdir())


def test_sample_matches_its_ground_truth(sample_run):
    _, _, _, d = sample_run
    truth = load_dataset(infer.sample_paths()[1])
    with np.load(d / "object.npz", allow_pickle=False) as npz:
        obj, positions, covered = npz["object"], npz["positions"], npz["covered"]
    lo = np.ceil(positions.min(axis=0)).astype(int)
    hi = np.floor(positions.max(axis=0)).astype(int) + 1
    box = (slice(lo[0], hi[0]), slice(lo[1], hi[1]))
    assert covered[box].all()
    got, true = obj[box], truth.object[box]
    got = got * np.exp(1j * np.angle(np.vdot(got, true)))        # remove the global phase offset
    amp = metrics.ssim(np.abs(true), np.abs(got))
    phase = metrics.ssim(np.angle(true), np.angle(got))
    assert amp > SSIM_AMPLITUDE_MIN and phase > SSIM_PHASE_MIN, (amp, phase)
    # and it is not an accident of the metric: a shifted reconstruction scores lower
    shifted = np.roll(got, 3, axis=1)
    assert metrics.ssim(np.angle(true), np.angle(shifted)) < phase - 0.05


def test_evaluate_on_the_sample(sample_run, tmp_path, capsys):
    """``ptycho-fast evaluate`` on the sample's reconstruction: every file, the illuminated
    crop, and the same quality as the check above."""
    _, _, _, d = sample_run
    out = tmp_path / "eval"
    code, stdout, err = run(capsys, "evaluate", d, "--truth", infer.sample_paths()[1], "--out", out)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["compare.png", "frc.png", "metrics.csv", "metrics.json"]
    m = json.loads((out / "metrics.json").read_text())
    assert m["region"]["crop"] == "illuminated" and "SSIM" in stdout
    assert m["amplitude_ssim"] > SSIM_AMPLITUDE_MIN and m["phase_ssim"] > SSIM_PHASE_MIN, m


def test_compare_guards_the_sample_against_the_reference_ops(sample_run, tmp_path, capsys):
    """The regression guard on the bundled sample: the same inference through the plain
    PyTorch ops (--ops reference) passes ``ptycho-fast compare``; a mirrored canvas (an x
    sign flip in one code path, the reference system's bug) and a one-pixel shift fail."""
    _, _, _, fast = sample_run
    ref = tmp_path / "ref"
    code, _, err = run(capsys, "infer", "--ops", "reference", "--out", ref, "-q")
    assert code == 0, err
    assert json.loads((ref / "summary.json").read_text())["ops"] == "reference"
    code, out, err = run(capsys, "compare", fast, ref, "--json", tmp_path / "c.json")
    assert code == 0, out + err
    doc = json.loads((tmp_path / "c.json").read_text())
    assert doc["passed"] and abs(doc["var_ratio"] - 1) < 1e-3
    assert doc["amplitude_ssim"] > 0.999 and doc["phase_ssim"] > 0.999
    for name, change in [("mirrored", lambda o: o[:, ::-1]), ("shifted", lambda o: np.roll(o, 1, axis=0))]:
        bad = tmp_path / name
        shutil.copytree(ref, bad)
        with np.load(bad / "object.npz", allow_pickle=False) as npz:
            arrays = dict(npz)
        arrays["object"] = np.ascontiguousarray(change(arrays["object"]))
        np.savez(bad / "object.npz", **arrays)
        code, out, err = run(capsys, "compare", fast, bad)
        assert code == 1 and "REGRESSION" in out + err, (name, out, err)


# ----------------------------------------------------------------------------- options
@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """The first 24 patterns of the sample (with its object), as an NPZ."""
    d = tmp_path_factory.mktemp("data")
    ds = load_dataset(infer.sample_paths()[1]).subset(np.arange(24))
    write_npz(ds, d / "small.npz")
    return d / "small.npz"


def test_debug_dump_patch_stats_ptychodus_and_reference_ops(tmp_path, capsys, small_data):
    ds = load_dataset(small_data)
    out, dump = tmp_path / "out", tmp_path / "dump"
    code, stdout, err = run(capsys, "infer", "--model", infer.SAMPLE_MODEL, "--data", small_data,
                            "--out", out, "--debug-dump", dump, "--log-patch-stats", "--patch-stats-limit", 2,
                            "--batch-size", 10, "--format", "h5,ptychodus", "--ops", "reference", "-q",
                            "--groups", "every")
    assert code == 0 and stdout == "" and err == "", err
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["object.npz", "object.h5", "object_ptychodus.h5", "amplitude.png", "phase.png", "summary.json",
         "patch_stats.json"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ops"] == "reference" and summary["batch_size_groups"] == 10
    log = json.loads((out / "patch_stats.json").read_text())
    assert [r["batch"] for r in log["batches"]] == [0, 1] and log["ddof"] == 0
    with h5py.File(out / "object_ptychodus.h5", "r") as f:
        assert f["object"].shape == (1, *ds.object.shape) and len(f["probe_position_x_m"]) == 24
    stats = json.loads((dump / "stats.json").read_text())
    assert stats["ddof"] == 0
    assert set(stats["patch_stats"]["amplitude"]) >= {"mean", "std", "min", "max", "var_zero_mean"}
    assert set(stats["canvas"]["amplitude"]) == {"mean", "std", "min", "max"}
    offsets = json.loads((dump / "offsets.json").read_text())
    assert offsets["count"] == 24 and len(offsets["first"]) == 16
    assert set(offsets["dx"]) >= {"mean", "std"} and set(offsets["dy"]) >= {"mean", "std"}
    canvas = json.loads((dump / "canvas.json").read_text())
    assert canvas["patch_size"] == 64 and canvas["canvas_size"] == list(ds.object.shape)
    assert canvas["n_patches"] == 24 * 4 and canvas["max_abs_dx"] > 0 and canvas["max_abs_dy"] > 0
    for view in ("amplitude", "phase"):
        for kind in ("raw", "normalised"):
            with Image.open(dump / f"patches_{view}_{kind}.png") as im:
                im.verify()
    # the same inference through the compiled kernels gives the same object
    code, _, err = run(capsys, "infer", "--model", infer.SAMPLE_MODEL, "--data", small_data,
                       "--out", tmp_path / "fast", "--format", "npz", "-q", "--groups", "every")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "fast").iterdir()) == sorted(   # --format adds to the defaults
        ["object.npz", "object.h5", "amplitude.png", "phase.png", "summary.json"])
    with np.load(out / "object.npz") as a, np.load(tmp_path / "fast" / "object.npz") as b:
        np.testing.assert_allclose(a["object"], b["object"], rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- bad input
def test_missing_and_corrupt_bundles(tmp_path, capsys, small_data):
    out = tmp_path / "out"
    code, _, err = run(capsys, "infer", "--model", tmp_path / "nope", "--data", small_data, "--out", out)
    assert_one_line_error(code, err, "nope", "no such model bundle")
    assert_no_files(out)

    bad = tmp_path / "bad"
    shutil.copytree(infer.SAMPLE_MODEL, bad)
    weights = next(bad.glob("weights.*"))
    weights.write_bytes(weights.read_bytes()[:-10] + b"0123456789")
    code, _, err = run(capsys, "infer", "--model", bad, "--data", small_data, "--out", out)
    assert_one_line_error(code, err, "checksum mismatch")
    assert_no_files(out)

    (bad / "bundle.json").write_text("{ not json")
    code, _, err = run(capsys, "infer", "--model", bad, "--data", small_data, "--out", out)
    assert_one_line_error(code, err, "bundle.json", "not readable JSON")
    assert_no_files(out)

    code, _, err = run(capsys, "infer", "--model", infer.SAMPLE_MODEL, "--out", out)
    assert_one_line_error(code, err, "--data", "required with --model")


def test_data_of_another_size(tmp_path, capsys):
    from ptycho_fast.simulate import simulate
    ds = simulate(N=32, n_patterns=16, seed=1)
    write_npz(ds, tmp_path / "n32.npz")
    out = tmp_path / "out"
    code, _, err = run(capsys, "infer", "--model", infer.SAMPLE_MODEL, "--data", tmp_path / "n32.npz",
                       "--out", out)
    assert_one_line_error(code, err, "--data", "32 x 32", "N = 64")
    assert_no_files(out)


def test_positions_off_the_object(tmp_path, capsys, small_data):
    ds = load_dataset(small_data)
    x = ds.xcoords.copy()
    x[5] = 10 * ds.object.shape[1]
    with np.load(small_data) as npz:
        arrays = dict(npz)
    arrays["xcoords"] = x
    np.savez(tmp_path / "off.npz", **arrays)
    out = tmp_path / "out"
    code, _, err = run(capsys, "infer", "--model", infer.SAMPLE_MODEL, "--data", tmp_path / "off.npz",
                       "--out", out)
    assert_one_line_error(code, err, "outside", "position 5")
    assert_no_files(out)


def test_output_directory_is_a_file(tmp_path, capsys, small_data):
    target = tmp_path / "taken"
    target.write_text("mine")
    code, _, err = run(capsys, "infer", "--model", infer.SAMPLE_MODEL, "--data", small_data, "--out", target)
    assert_one_line_error(code, err, "--out", "not a directory")
    assert target.read_text() == "mine"
    code, _, err = run(capsys, "infer", "--debug-dump", target, "--out", tmp_path / "o")
    assert_one_line_error(code, err, "--debug-dump", "not a directory")
    code, _, err = run(capsys, "infer", "--out", tmp_path / "no" / "such" / "dir")
    assert_one_line_error(code, err, "--out", "does not exist")


@pytest.mark.parametrize("existing", [False, True])
def test_full_disk_leaves_nothing_behind(tmp_path, capsys, small_data, monkeypatch, existing):
    def full(path, arrays, attrs):
        with open(path, "wb") as f:
            f.write(b"\x89HDF partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    monkeypatch.setattr(infer.result_files, "write_object_h5", full)
    out = tmp_path / "out"
    previous = {"object.npz": b"old result", "summary.json": b'{"old": true}'}
    if existing:                           # results of an earlier run stay as they were
        out.mkdir()
        for name, content in previous.items():
            (out / name).write_bytes(content)
    code, _, err = run(capsys, "infer", "--model", infer.SAMPLE_MODEL, "--data", small_data, "--out", out, "-q")
    assert_one_line_error(code, err, "--out", "No space left on device", "nothing was written")
    if existing:
        assert {p.name: p.read_bytes() for p in out.iterdir()} == previous
    else:
        assert not out.exists()            # a directory this run created is removed again


# ----------------------------------------------------------------------------- the guard
@pytest.fixture(scope="module")
def zeroed_model(tmp_path_factory, small_data):
    ds = load_dataset(small_data)
    net = PtychoPINNNet(N=64, gridsize=1, width=0.125)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
    path = tmp_path_factory.mktemp("zeroed") / "model"
    save_bundle(path, net, intensity_scale=31.0, probe_gain=1.0, probe=ds.probe,
                training_data=dataset_fingerprint(ds))
    return path


def test_guard_fires_on_a_zeroed_model(tmp_path, capsys, small_data, zeroed_model):
    out, dump = tmp_path / "out", tmp_path / "dump"
    code, stdout, err = run(capsys, "infer", "--model", zeroed_model, "--data", small_data, "--out", out,
                            "--debug-dump", dump)
    assert_one_line_error(code, err, "degenerate after the first batch", "constant",
                          "Likely causes", "scale mismatch", exit_code=infer.EXIT_COLLAPSE)
    assert stdout == ""
    assert_no_files(out)
    stats = json.loads((dump / "stats.json").read_text())      # the evidence is kept
    assert stats["first_batch"]["complex_var_zero_mean"] == 0

    code, stdout, err = run(capsys, "infer", "--model", zeroed_model, "--data", small_data, "--out", out,
                            "--allow-degenerate")
    assert code == 0 and "warning" in err and "--allow-degenerate" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["collapse_guard"]["result"] != "ok" and summary["collapse_guard"]["allow_degenerate"]


def _pure_phase_predictor(seed=0):
    rng = np.random.default_rng(seed)

    def pure_phase(X, offsets, indices):
        phase = torch.as_tensor(rng.uniform(-1, 1, tuple(X.shape)), dtype=torch.float32)
        return 0.8 * torch.polar(torch.ones_like(phase), phase)
    return pure_phase


def test_a_flat_amplitude_on_absorbing_data_is_a_collapse(small_data, tmp_path):
    """A constant amplitude with a varying phase while the data say the object absorbs (the
    sample's total counts per pattern vary far beyond Poisson noise) is the amplitude
    collapse the complex-variance guard cannot see: exit 3, unless --allow-degenerate."""
    ds = load_dataset(small_data)
    counts = CountSpread.of(ds.diffraction).summary()
    assert counts["absorbing"] and counts["excess"] > 0.02
    with pytest.raises(infer.CollapseError, match="data say the object absorbs"):
        infer.reconstruct(ds, _pure_phase_predictor())
    seen = []
    rec = infer.reconstruct(ds, _pure_phase_predictor(), allow_degenerate=True, on_warning=seen.append)
    assert rec.degenerate and "amplitude output collapsed" in rec.degenerate and len(seen) == 1
    assert rec.counts["absorbing"]


def test_a_flat_amplitude_on_a_pure_phase_object_is_a_warning_not_a_stop(tmp_path):
    """Constant amplitude with a varying phase on data whose totals are constant (a
    pure-phase object, Parseval) is right: reported, and the run goes on; a varying
    amplitude is not reported."""
    ds = simulate.simulate(seed=2, N=64, n_patterns=24, photons=1e6, amp_contrast=0.0, forward="fourier")
    assert not CountSpread.of(ds.diffraction).summary()["absorbing"]
    pure_phase = _pure_phase_predictor()
    seen = []
    rec = infer.reconstruct(ds, pure_phase, on_warning=seen.append)
    assert rec.amplitude_flat is not None and "amplitude is constant within every patch" in rec.amplitude_flat
    assert "mean 0.8" in rec.amplitude_flat and seen == [rec.amplitude_flat] and rec.degenerate is None

    def varying(X, offsets, indices):
        return pure_phase(X, offsets, indices) * (1 + 0.1 * torch.rand(tuple(X.shape)))

    seen.clear()
    rec = infer.reconstruct(ds, varying, on_warning=seen.append)
    assert rec.amplitude_flat is None and seen == []
    # a fully constant prediction is a stop (the guard), not this warning
    summary = {"n_patches": 4, "n_nonfinite_patches": 0, "complex_var_zero_mean": 0.0,
               "amplitude": {"var_zero_mean": 0.0, "mean": 0.5, "max": 0.5}}
    assert infer.amplitude_flat_note(summary, 1e-10) is None and infer.collapse_reason(summary, 1e-10)


def test_bad_options_are_one_line_errors(tmp_path, capsys):
    out = tmp_path / "out"
    cases = [(["--batch-size", "0"], ("--batch-size", ">= 1")),
             (["--n-patterns", "0"], ("--n-patterns", ">= 1")),
             (["--n-patterns", "100000"], ("--n-patterns", "256 patterns")),
             (["--format", "npz,tiff"], ("--format", "'tiff'")),
             (["--collapse-floor", "-1"], ("--collapse-floor",)),
             (["--window", "hann"], ("--window", "invalid choice"))]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], ("--device cuda", "no CUDA device")))
    for argv, fragments in cases:
        code, _, err = run(capsys, "infer", "--out", out, *argv)
        assert_one_line_error(code, err, *fragments)
        assert_no_files(out)
