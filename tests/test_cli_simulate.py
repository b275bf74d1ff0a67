"""``ptycho-fast simulate``: options, output, and one-line errors for user mistakes."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ptycho_fast import cli
from ptycho_fast import simulate as sim
from ptycho_fast.data import load_dataset, write_npz

SMALL = ["--N", "32", "-n", "16", "--seed", "1"]
ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code, err, *fragments):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ptycho-fast: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_simulate_writes_npz_with_summary(tmp_path, capsys):
    out = tmp_path / "sim.npz"
    code, stdout, err = run(capsys, "simulate", "--out", str(out), *SMALL)
    assert code == 0, err
    assert len(stdout.strip().splitlines()) == 1
    assert "16 patterns N=32" in stdout and "seed 1" in stdout
    ds = load_dataset(out)
    assert ds.diffraction.shape == (16, 32, 32) and ds.object is not None
    assert ds.metadata.photons_per_pattern == 1e6
    assert [p.name for p in tmp_path.iterdir()] == ["sim.npz"]  # no temporary left behind


def test_simulate_h5_spiral_quiet(tmp_path, capsys):
    out = tmp_path / "sim.h5"
    code, stdout, err = run(capsys, "simulate", "-o", str(out), *SMALL, "--scan", "spiral",
                            "--probe", "gaussian", "--object", "deadleaves", "--quiet", "--no-noise")
    assert code == 0 and stdout == "" and err == ""
    with load_dataset(out, lazy=True) as ds:
        assert ds.is_lazy and ds.diffraction.shape == (16, 32, 32)


def test_same_seed_same_file(tmp_path, capsys):
    for name in ("a.npz", "b.npz"):
        assert run(capsys, "simulate", "--out", str(tmp_path / name), *SMALL, "-q")[0] == 0
    a, b = load_dataset(tmp_path / "a.npz"), load_dataset(tmp_path / "b.npz")
    np.testing.assert_array_equal(a.diffraction, b.diffraction)


def test_defaults_and_help_document_every_option(capsys):
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    p = sub.choices["simulate"]
    args = p.parse_args(["--out", "x.npz"])
    assert args.N == 64 and args.n_patterns == 1024 and args.photons == 1e6 and args.seed is None
    assert args.forward == "bilinear"
    for action in p._actions:
        assert action.help, f"option {action.option_strings} has no help"
        takes_value = action.nargs != 0 and not isinstance(action, argparse._HelpAction)
        if takes_value and not action.required and action.default is not None:
            assert "default" in action.help, f"{action.option_strings} does not state its default"
    with pytest.raises(SystemExit) as info:
        cli.main(["simulate", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--out", "--format", "--seed", "--preview", "--N", "--n-patterns", "--photons",
                   "--object", "--amplitude-image", "--phase-image", "--probe", "--probe-file",
                   "--scan", "--step", "--overlap", "--jitter", "--quiet", "--forward", "mixed"):
        assert option in text


def test_image_and_probe_files(tmp_path, capsys):
    img = np.linspace(0, 1, 40 * 50).reshape(40, 50)
    np.save(tmp_path / "img.npy", img)
    np.save(tmp_path / "probe.npy", sim.make_probe("gaussian", 32, 8))
    out = tmp_path / "img.npz"
    code, _, err = run(capsys, "simulate", "--out", str(out), *SMALL, "--amplitude-image",
                       str(tmp_path / "img.npy"), "--probe-file", str(tmp_path / "probe.npy"), "-q")
    assert code == 0, err
    ds = load_dataset(out)
    assert np.angle(ds.object).max() == 0  # amplitude image only: flat phase


def test_forward_fourier_with_mixed_object(tmp_path, capsys):
    """--forward fourier: same object and scan as bilinear, other patterns, exact photon
    count; the summary line (the record of the simulation settings) names the forward."""
    files = {}
    for forward in ("bilinear", "fourier"):
        out = tmp_path / f"{forward}.npz"
        code, stdout, err = run(capsys, "simulate", "--out", str(out), *SMALL, "--object", "mixed",
                                "--forward", forward, "--no-noise")
        assert code == 0, err
        assert f"{forward} forward" in stdout and "(mixed)" in stdout
        files[forward] = load_dataset(out)
    a, b = files["fourier"], files["bilinear"]
    np.testing.assert_array_equal(a.object, b.object)
    np.testing.assert_array_equal(a.positions, b.positions)
    assert not np.allclose(a.diffraction, b.diffraction, rtol=1e-3, atol=1e-3)
    counts = (a.diffraction.astype(np.float64) ** 2).sum(axis=(1, 2)).mean()
    assert counts == pytest.approx(1e6, rel=1e-5) and a.metadata.photons_per_pattern == 1e6


@pytest.mark.parametrize("use_matplotlib", [True, False])
def test_preview_png(tmp_path, capsys, monkeypatch, use_matplotlib):
    if use_matplotlib:
        pytest.importorskip("matplotlib")
    else:  # the label-less mosaic written with Pillow
        monkeypatch.setitem(sys.modules, "matplotlib", None)
    png = tmp_path / "preview.png"
    code, stdout, err = run(capsys, "simulate", "--out", str(tmp_path / "s.npz"), *SMALL, "--preview", str(png))
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    assert "preview" in stdout
    from PIL import Image
    with Image.open(png) as im:  # a readable image, not just a PNG signature
        im.load()
        assert im.size[0] > 400 and im.size[1] > 200


@pytest.mark.parametrize("argv, fragments", [
    (["simulate"], ["--out"]),
    (["simulate", "--out", "x.npz", "--photons", "-5"], ["--photons"]),
    (["simulate", "--out", "x.npz", "--photons", "lots"], ["--photons", "invalid float"]),
    (["simulate", "--out", "x.npz", "--N", "63"], ["--N", "even"]),
    (["simulate", "--out", "x.npz", "--overlap", "1.2"], ["--overlap"]),
    (["simulate", "--out", "x.npz", "--object", "teapot"], ["--object", "invalid choice"]),
    (["simulate", "--out", "x.npz", "--forward", "linear"], ["--forward", "invalid choice"]),
    (["simulate", "--out", "x.npz", "--format", "h5"], ["--format h5", ".npz"]),
    (["simulate", "--out", "no/such/dir/x.npz"], ["does not exist"]),
    (["simulate", "--out", "x.npz", "--object", "lines", "--phase-image", "p.png"], ["--object image"]),
    (["simulate", "--out", "x.npz", "--probe-file", "missing.npz"], ["missing.npz", "no such file"]),
    (["simulate", "--out", "x.npz", "--amplitude-image", "missing.png"], ["missing.png"]),
    (["simulate", "--out", "x.npz", "--object-size", "40", "--N", "32"], ["--object-size", "too small"]),
    (["frobnicate"], ["invalid choice"]),
])
def test_user_errors_are_one_line(tmp_path, capsys, monkeypatch, argv, fragments):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, *argv)
    assert_user_error(code, err, *fragments)
    assert not (tmp_path / "x.npz").exists()


def _small_dataset():
    from ptycho_fast.data import PtychoDataset
    rng = np.random.default_rng(0)
    return PtychoDataset(diffraction=rng.random((4, 32, 32)).astype(np.float32),
                         positions=np.full((4, 2), 40.0), probe=np.ones((32, 32), np.complex64))


@pytest.mark.parametrize("damage, fragment", [
    ("truncate", "truncated or corrupt"),
    ("missing_key", "missing key 'probeGuess'"),
    ("wrong_dtype", "'probeGuess': expected numbers"),
    ("not_data", "unrecognised file format"),
])
def test_bad_dataset_files_are_one_line(tmp_path, capsys, damage, fragment):
    path = tmp_path / "probe.npz"
    write_npz(_small_dataset(), path)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:300])
    elif damage in ("missing_key", "wrong_dtype"):
        with np.load(path) as f:
            arrays = dict(f)
        if damage == "missing_key":
            del arrays["probeGuess"]
        else:
            arrays["probeGuess"] = np.array(["not", "a", "probe"])
        with open(path, "wb") as f:
            np.savez(f, **arrays)
    else:
        path.write_text("just some text\n")
    code, _, err = run(capsys, "simulate", "--out", str(tmp_path / "o.npz"), *SMALL,
                       "--probe-file", str(path))
    assert_user_error(code, err, str(path), fragment)
    assert not (tmp_path / "o.npz").exists()


def test_failure_mid_run_leaves_old_output_untouched(tmp_path, capsys, monkeypatch):
    out = tmp_path / "keep.npz"
    out.write_bytes(b"previous result")
    real = sim.simulate_diffraction

    def fail_after_first_block(*args, **kwargs):  # blocks of 256 patterns: fail in the 2nd
        sink = kwargs.get("sink")

        def progress_then_fail(start, block):
            if start > 0:
                raise KeyboardInterrupt
            if sink:
                sink(start, block)
        kwargs["sink"] = progress_then_fail
        return real(*args, **kwargs)

    monkeypatch.setattr(sim, "simulate_diffraction", fail_after_first_block)
    for fmt in ("npz", "h5"):
        target = out if fmt == "npz" else tmp_path / "keep.h5"
        if fmt == "h5":
            target.write_bytes(b"previous result")
        code, _, err = run(capsys, "simulate", "--out", str(target), *SMALL, "-n", "300")
        assert code == 130 and "interrupted" in err
        assert target.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.h5", "keep.npz"]


def test_python_dash_m_entry_point(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "ptycho_fast", "simulate", "--out", str(tmp_path / "x.npz"),
                           "--probe-file", str(tmp_path / "nope.npz")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("ptycho-fast: error: ") and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_progress_bar():
    import io
    from ptycho_fast.progress import Progress
    stream = io.StringIO()
    with Progress(10, "sim", enabled=True, stream=stream, min_interval=0) as bar:
        for _ in range(5):
            bar.update(2)
    text = stream.getvalue()
    assert "sim:" in text and "10/10" in text and text.endswith("\n")
    quiet = io.StringIO()  # not a terminal: nothing printed
    with Progress(10, stream=quiet) as bar:
        bar.update(10)
    assert quiet.getvalue() == ""
