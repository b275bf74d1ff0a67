"""``ptycho-fast compare``: the parity / regression guard, on infer-style directories the
tests write themselves (no dependence on ``ptycho-fast infer``)."""

import json
import math

import numpy as np
import pytest

from ptycho_fast import cli, compare, metrics
from ptycho_fast.simulate import make_object


@pytest.fixture(scope="module")
def canvas():
    obj = make_object("lines", (72, 80), rng=3).astype(np.complex128)
    coverage = np.zeros(obj.shape, np.float32)
    coverage[6:-6, 5:-7] = 1.0 + np.random.default_rng(0).random((60, 68))
    return np.where(coverage > 0, obj, 0), coverage


def patch_stats(var, mean=0.8):
    return {"var_zero_mean": var, "var_zero_mean_view": "amplitude",
            "amplitude": {"mean": mean, "std": math.sqrt(var), "min": 0.1, "max": 1.0, "var_zero_mean": var}}


def infer_dir(path, obj, coverage, var, ops="ptycho_fast"):
    path.mkdir()
    np.savez(path / "object.npz", object=obj.astype(np.complex64), coverage=coverage,
             covered=coverage > 0, positions=np.array([[36.0, 40.0]]), origin=np.zeros(2))
    (path / "summary.json").write_text(json.dumps({"ops": ops, "N": 32, "patch_stats": patch_stats(var)}))
    return str(path)


def dump_dir(path, var):
    path.mkdir()
    (path / "stats.json").write_text(json.dumps({"patch_stats": patch_stats(var), "canvas": {}}))
    return str(path)


def run(argv, capsys):
    code = cli.main(["compare", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_identical_runs_pass(canvas, tmp_path, capsys):
    obj, cov = canvas
    a = infer_dir(tmp_path / "a", obj, cov, 0.01)
    b = infer_dir(tmp_path / "b", obj, cov, 0.01, ops="reference")
    code, out, err = run([a, b, "--json", str(tmp_path / "c.json")], capsys)
    assert code == 0, out + err
    assert "PASS" in out and "REGRESSION" not in err
    assert "reference" in out                                   # the ops of each side are shown
    doc = json.loads((tmp_path / "c.json").read_text())
    assert doc["passed"] and doc["var_ratio"] == 1.0
    assert doc["amplitude_ssim"] == pytest.approx(1.0) and doc["phase_ssim"] == pytest.approx(1.0)
    assert doc["amplitude_mae"] == 0.0 and doc["covered_pixels"] == int((cov > 0).sum())


def test_float32_rounding_passes(canvas, tmp_path, capsys):
    obj, cov = canvas
    rng = np.random.default_rng(1)
    b_obj = obj * (1 + 1e-6 * rng.standard_normal(obj.shape))
    code, out, err = run([infer_dir(tmp_path / "a", obj, cov, 0.01),
                          infer_dir(tmp_path / "b", b_obj, cov, 0.01 * (1 + 1e-6))], capsys)
    assert code == 0, out + err


@pytest.mark.parametrize("ratio", [1.2, 0.8])
def test_variance_ratio_outside_ten_percent_fails(canvas, tmp_path, capsys, ratio):
    obj, cov = canvas
    code, out, err = run([infer_dir(tmp_path / "a", obj, cov, 0.01 * ratio),
                          infer_dir(tmp_path / "b", obj, cov, 0.01)], capsys)
    assert code == compare.EXIT_REGRESSION == 1
    assert err.startswith("REGRESSION: patch variance ratio") and "FAIL" in out
    # a looser tolerance accepts it; 1.05 passes the default
    code, _, _ = run([str(tmp_path / "a"), str(tmp_path / "b"), "--var-ratio-tolerance", "0.25"], capsys)
    assert code == 0


def test_ssim_drop_fails(canvas, tmp_path, capsys):
    obj, cov = canvas
    shifted = metrics.shift_image(obj, (0.0, 0.5))              # every patch half a pixel off
    code, out, err = run([infer_dir(tmp_path / "a", obj, cov, 0.01),
                          infer_dir(tmp_path / "b", shifted, cov, 0.01), "--json", "-"], capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert lines and all(line.startswith("REGRESSION: ") for line in lines)
    assert any("amplitude SSIM" in line for line in lines)
    doc = json.loads(out[out.index("{"):])
    assert not doc["passed"] and doc["amplitude_ssim"] < compare.DEFAULT_SSIM_THRESHOLD
    # a phase sign flip leaves the amplitude alone and is caught by the phase SSIM
    code, _, err = run([str(tmp_path / "a"), infer_dir(tmp_path / "c", np.conj(obj), cov, 0.01)], capsys)
    assert code == 1 and "phase SSIM" in err and "amplitude SSIM" not in err


def test_missing_coverage_counts_as_a_difference(canvas, tmp_path, capsys):
    obj, cov = canvas
    b_obj, b_cov = obj.copy(), cov.copy()
    b_obj[30:50, 30:50] = 0
    b_cov[30:50, 30:50] = 0                                     # B lost some patches
    code, _, err = run([infer_dir(tmp_path / "a", obj, cov, 0.01),
                        infer_dir(tmp_path / "b", b_obj, b_cov, 0.01)], capsys)
    assert code == 1 and "SSIM" in err


def test_debug_dump_directories(tmp_path, capsys):
    a, b = dump_dir(tmp_path / "a", 0.02), dump_dir(tmp_path / "b", 0.02)
    code, out, err = run([a, b], capsys)
    assert code == 0 and "canvases not compared" in out
    code, _, err = run([a, dump_dir(tmp_path / "c", 0.025)], capsys)   # ratio 0.8
    assert code == 1 and "REGRESSION" in err


def test_non_finite_variance_is_a_regression(canvas, tmp_path, capsys):
    obj, cov = canvas
    code, _, err = run([infer_dir(tmp_path / "a", obj, cov, 0.01),
                        infer_dir(tmp_path / "b", obj, cov, float("nan"))], capsys)
    assert code == 1 and "variance" in err


def test_unusable_inputs_exit_2(canvas, tmp_path, capsys):
    obj, cov = canvas
    a = infer_dir(tmp_path / "a", obj, cov, 0.01)
    (tmp_path / "empty").mkdir()
    bad_shape = infer_dir(tmp_path / "small", obj[:-4], cov[:-4], 0.01)
    for argv, message in (([a, str(tmp_path / "nope")], "no such directory"),
                          ([a, str(tmp_path / "empty")], "holds none of"),
                          ([a, dump_dir(tmp_path / "d", 0.01)], "no object.npz"),
                          ([a, bad_shape], "cannot compare the canvases"),
                          ([a, a, "--ssim-threshold", "2"], "--ssim-threshold"),
                          ([a, a, "--json", str(tmp_path / "no" / "x.json")], "--json")):
        code, _, err = run(argv, capsys)
        assert code == 2, (argv, err)
        line = err.strip()
        assert line.startswith("ptycho-fast: error: ") and message in line and "\n" not in line, (argv, err)


def test_round_off_variances_are_not_compared(tmp_path, capsys):
    # constant patches (a collapsed model): both variances are float32 round-off of a mean
    # of 0.8, and their ratio (here 3) means nothing
    a, b = dump_dir(tmp_path / "a", 3e-16), dump_dir(tmp_path / "b", 1e-16)
    code, out, err = run([a, b], capsys)
    assert code == 0 and "round-off floor" in out, out + err
    code, _, err = run([a, b, "--var-floor", "0"], capsys)
    assert code == 1 and "REGRESSION" in err
    # one side constant, the other not: a regression
    code, _, err = run([a, dump_dir(tmp_path / "c", 1e-4)], capsys)
    assert code == 1 and "variance ratio" in err
