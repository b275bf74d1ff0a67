"""The refine engine (ptycho_fast.refine) and ``ptycho-fast refine`` / ``infer --refine``.

Small noise-free simulations of asymmetric objects (N = 32, 144 patterns): a flat start
recovers the object (never mirrored or shifted), perturbed positions and a wrong-defocus
probe are recovered, gradients equal those through the reference ops, a killed run resumes
bit for bit, two processes equal one, divergence and bad input are caught.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ptycho_fast import cli, coords, evaluate as ev, guard, metrics, simulate
from ptycho_fast.data import load_dataset, save_dataset
from ptycho_fast.files import UserError
from ptycho_fast.refine import DivergedError, Refiner, RefineOptions
from ptycho_fast.refine_output import CHECKPOINT
from ptycho_fast.result_files import StoredReconstruction

REPO = Path(__file__).resolve().parents[1]


def small(kind="deadleaves", seed=3, noise=False, n=144):
    return simulate.simulate(seed=seed, N=32, n_patterns=n, noise=noise, object=kind, jitter=0.5)


@pytest.fixture(scope="module")
def data():
    return small()


@pytest.fixture(scope="module")
def data_file(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("refine") / "scan.npz"
    save_dataset(data, path)
    return path


def scores(obj, ds):
    r = ev.evaluate(StoredReconstruction(object=np.asarray(obj, np.complex128), positions=ds.positions),
                    ev.Truth(object=ds.object.astype(np.complex128), positions=ds.positions, N=ds.N,
                             probe=ds.probe))
    return r.metrics["amplitude_ssim"], r.metrics["phase_ssim"]


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err, *fragments, exit_code=2):
    assert code == exit_code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ptycho-fast: error: "), err
    for f in fragments:
        assert f in lines[0], (f, lines[0])


# ----------------------------------------------------------------------------- quality
def test_flat_start_recovers_the_object_unmirrored_and_unshifted(data):
    r = Refiner(data, RefineOptions(epochs=60)).run()
    obj = r.state.object.numpy()
    amp, phase = scores(obj, data)
    assert amp > 0.99 and phase > 0.99, (amp, phase)
    # orientation: the cross-correlation peak is at zero shift; a mirrored or transposed
    # truth matches far worse (the dead-leaves object is asymmetric)
    rows, cols, _ = metrics.illuminated_region(data.positions, data.probe, obj.shape)
    shift = metrics.register(data.object[rows, cols], obj[rows, cols])
    assert max(abs(shift[0]), abs(shift[1])) < 0.05, shift
    for wrong in (np.flipud(data.object), np.fliplr(data.object), data.object.T[:obj.shape[0], :obj.shape[1]]):
        if wrong.shape == obj.shape:
            assert metrics.ssim(np.abs(wrong)[rows, cols], np.abs(obj)[rows, cols]) < 0.5
    assert r.health() is None
    losses = [h["loss"] for h in r.state.history]
    assert losses[-1] < 0.01 * losses[0]


def test_fourier_subpixel_model(data):
    """At integer positions both sub-pixel models give the same amplitudes; at fractional ones
    the Fourier model reconstructs the object too, unmirrored (the shift's sign)."""
    a = Refiner(data, RefineOptions(subpixel="bilinear"))
    b = Refiner(data, RefineOptions(subpixel="fourier"))
    tl = torch.round(a.state.top_left[:20])
    obj = torch.as_tensor(data.object)
    with torch.no_grad():
        fa, fb = a.forward(obj, a.state.probe, tl)[0], b.forward(obj, b.state.probe, tl)[0]
    assert float((fa - fb).abs().max()) <= 1e-4 * float(fa.abs().max())
    # the true object fits the (bilinear, fractional-position) data better under a correct
    # shift than under the mirrored one
    frac = a.state.top_left[:40]
    X = a._patterns(torch.arange(40))
    with torch.no_grad():
        right = float(b.batch_loss(obj, b.state.probe, frac, X))
        mirrored = float(b.batch_loss(obj, b.state.probe, 2 * torch.round(frac) - frac, X))
    assert right < 0.5 * mirrored, (right, mirrored)
    r = Refiner(data, RefineOptions(epochs=40, subpixel="fourier")).run()
    amp, phase = scores(r.state.object.numpy(), data)
    assert amp > 0.95 and phase > 0.95, (amp, phase)


def test_noisy_data_and_poisson_loss(data):
    noisy = small(noise=True)
    for loss in ("amplitude", "poisson"):
        r = Refiner(noisy, RefineOptions(epochs=40, loss=loss)).run()
        amp, phase = scores(r.state.object.numpy(), noisy)
        assert amp > 0.9 and phase > 0.9, (loss, amp, phase)


def test_gradients_equal_those_through_the_reference_ops(data):
    fast = Refiner(data, RefineOptions(), ops="ptycho_fast")
    ref = Refiner(data, RefineOptions(), ops="reference")
    gen = torch.Generator().manual_seed(0)
    H, W = fast.frame.shape
    obj = (1 + 0.1 * torch.randn(H, W, generator=gen)).to(torch.complex64) * torch.exp(
        1j * 0.3 * torch.randn(H, W, generator=gen))
    idx = torch.arange(0, 40)
    X = fast._patterns(idx)
    grads = []
    for r in (fast, ref):
        o = obj.clone().requires_grad_(True)
        p = r.state.probe.clone().requires_grad_(True)
        tl = (r.state.top_left[idx] + 0.3).clone().requires_grad_(True)
        loss = r.batch_loss(o, p, tl, X)
        grads.append([loss.detach()] + list(torch.autograd.grad(loss, [o, p, tl])))
    for a, b in zip(*grads):
        scale = float(b.abs().max())
        assert float((a - b).abs().max()) <= 2e-4 * scale + 1e-6, (float((a - b).abs().max()), scale)


def test_position_refinement_recovers_known_errors(data):
    rng = np.random.default_rng(0)
    err = rng.normal(scale=1.5, size=data.positions.shape)
    err -= err.mean(axis=0)        # a mean shift is a translation of the object: not observable
    bad = dataclasses.replace(data, positions=data.positions + err)
    frame = coords.canvas_frame(data.positions, data.N, data.object.shape)
    r = Refiner(bad, RefineOptions(epochs=80, refine_positions=True), frame=frame).run()
    recovered = bad.positions + (r.centres() - r.centres_start)
    resid = recovered - data.positions
    resid -= resid.mean(axis=0)
    rms_before = float(np.sqrt((err ** 2).sum(1).mean()))
    rms_after = float(np.sqrt((resid ** 2).sum(1).mean()))
    assert rms_before > 2.0 and rms_after <= 0.3, (rms_before, rms_after)
    # the engine removes the mean correction (global translation)
    assert np.abs((r.centres() - r.centres_start).mean(axis=0)).max() < 1e-6


def test_probe_refinement_recovers_the_defocus(data):
    wrong = simulate.make_probe("aperture", data.N, data.N / 3 * 1.6)
    wrong = (wrong * np.sqrt((np.abs(data.probe) ** 2).sum() / (np.abs(wrong) ** 2).sum())).astype(np.complex64)

    def error(p):   # relative error up to a global phase
        c = np.vdot(p, data.probe) / np.vdot(p, p)
        return float(np.linalg.norm(c * p - data.probe) / np.linalg.norm(data.probe))
    bad = dataclasses.replace(data, probe=wrong)
    r = Refiner(bad, RefineOptions(epochs=80, refine_probe=True, probe_start=3)).run()
    assert error(wrong) > 0.5 and error(r.state.probe[0].numpy()) < 0.05
    # the probe's power is held (the object keeps the transmission scale)
    assert np.isclose(float((r.state.probe.abs() ** 2).sum()), float((np.abs(wrong) ** 2).sum()), rtol=1e-4)
    amp, phase = scores(r.state.object.numpy(), data)
    assert amp > 0.98 and phase > 0.98


def test_probe_modes_stay_orthogonal_and_keep_their_power(data):
    r = Refiner(data, RefineOptions(epochs=8, refine_probe=True, probe_start=1, probe_modes=3)).run()
    modes = r.state.probe.reshape(3, -1).to(torch.complex128)
    gram = modes @ modes.conj().T
    off = gram - torch.diag(torch.diagonal(gram))
    assert float(off.abs().max()) < 1e-4 * float(gram.abs().max())
    power = torch.diagonal(gram).real
    assert bool((power[:-1] >= power[1:]).all())            # sorted by power
    assert np.isclose(float(power.sum()), float((np.abs(data.probe) ** 2).sum()), rtol=1e-4)


def test_streamed_hdf5_equals_in_memory(tmp_path, data, monkeypatch):
    import ptycho_fast.refine as refine_mod
    path = tmp_path / "scan.h5"
    save_dataset(data, path)
    a = Refiner(data, RefineOptions(epochs=3)).run()
    monkeypatch.setattr(refine_mod, "IN_MEMORY_BYTES", 0)
    with load_dataset(path, lazy=True) as lazy:
        b = Refiner(lazy, RefineOptions(epochs=3))
        assert b._X is None                                  # read batch by batch
        b.run()
    assert torch.equal(a.state.object, b.state.object)


# ----------------------------------------------------------------------------- faults
def test_a_non_finite_loss_halves_the_step_then_gives_up(data, monkeypatch):
    r = Refiner(data, RefineOptions(epochs=2))
    calls = {"n": 0}
    real = Refiner._loss

    def flaky(self, amp, X):
        calls["n"] += 1
        value = real(self, amp, X)
        return value * float("nan") if calls["n"] == 2 else value
    monkeypatch.setattr(Refiner, "_loss", flaky)
    r.run()
    assert r.state.history[0]["step_halvings"] == 1 and np.isfinite(r.state.history[-1]["loss"])
    monkeypatch.setattr(Refiner, "_loss", lambda self, amp, X: real(self, amp, X) * float("nan"))
    with pytest.raises(DivergedError, match="diverged at epoch 3"):
        r.options.epochs = 3
        r.run()


def test_cli_divergence_exits_3_and_writes_nothing(tmp_path, capsys, data_file, monkeypatch):
    real = Refiner._loss
    monkeypatch.setattr(Refiner, "_loss", lambda self, amp, X: real(self, amp, X) * float("inf"))
    out = tmp_path / "out"
    code, _, err = run(capsys, "refine", "--data", data_file, "--out", out, "--epochs", 2, "-q")
    one_line_error(code, err, "diverged", exit_code=guard.EXIT_COLLAPSE)
    assert not (out / "object.npz").exists()


@pytest.mark.parametrize("argv, fragments", [
    (["--epochs", "0"], ["--epochs", ">= 1"]),
    (["--batch-size", "0"], ["--batch-size"]),
    (["--step", "3"], ["--step", "(0, 2]"]),
    (["--momentum", "1"], ["--momentum"]),
    (["--probe-modes", "0"], ["--probe-modes"]),
    (["--max-time", "-1"], ["--max-time"]),
    (["--device", "tpu"], ["--device", "'tpu'"]),
    (["--format", "npz,tiff"], ["--format", "'tiff'"]),
])
def test_bad_options(tmp_path, capsys, data_file, argv, fragments):
    code, _, err = run(capsys, "refine", "--data", data_file, "--out", tmp_path / "o", *argv)
    one_line_error(code, err, *fragments)
    assert not (tmp_path / "o").exists()


def test_bad_init_and_data(tmp_path, capsys, data_file, data):
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, object=np.ones((10, 12), np.complex64))
    code, _, err = run(capsys, "refine", "--data", data_file, "--out", tmp_path / "o", "--init", wrong)
    one_line_error(code, err, "--init", "10 x 12", "object frame")
    code, _, err = run(capsys, "refine", "--data", tmp_path / "none.npz", "--out", tmp_path / "o")
    one_line_error(code, err, "none.npz")
    far = dataclasses.replace(data, object=None, positions=data.positions.copy())
    frame = coords.canvas_frame(data.positions, data.N, data.object.shape)
    far.positions[5] = [5000.0, 20.0]
    with pytest.raises(UserError, match="entirely outside"):
        Refiner(far, RefineOptions(), frame=frame)
    assert not (tmp_path / "o" / "object.npz").exists()


# ----------------------------------------------------------------------------- CLI and outputs
def test_cli_writes_every_output(tmp_path, capsys, data_file, data):
    out = tmp_path / "r"
    code, stdout, err = run(capsys, "refine", "--data", data_file, "--out", out, "--epochs", 6,
                            "--refine-positions", "--refine-probe", "--probe-start", 2, "--positions-start", 2)
    assert code == 0, err
    assert "refined 144 patterns for 6 epochs" in stdout
    names = {p.name for p in out.iterdir()}
    assert {"object.npz", "object.h5", "amplitude.png", "phase.png", "probe.npy", "positions.csv",
            "loss_curve.png", "position_corrections.png", "summary.json", CHECKPOINT} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 6 and len(summary["loss_per_epoch"]) == 6
    assert summary["options"]["refine_positions"] and summary["guard"]["result"] == "ok"
    probe = np.load(out / "probe.npy", allow_pickle=False)
    assert probe.shape == (1, 32, 32) and probe.dtype == np.complex64
    rows = (out / "positions.csv").read_text().splitlines()
    assert rows[0] == "index,ycoord,xcoord,ycoord_start,xcoord_start,dy,dx" and len(rows) == 145
    start = np.array([[float(v) for v in r.split(",")[3:5]] for r in rows[1:]])
    np.testing.assert_allclose(start, data.positions, atol=1e-5)   # the data's frame, row = ycoord
    # evaluate reads the directory, and the refined object is in the truth's frame
    code, _, err = run(capsys, "evaluate", out, "--truth", data_file, "--out", tmp_path / "eval")
    assert code == 0, err
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert m["amplitude_ssim"] > 0.8
    # a second run into the same directory needs --resume
    code, _, err = run(capsys, "refine", "--data", data_file, "--out", out)
    one_line_error(code, err, "--resume")


def test_init_from_an_infer_directory_starts_there(tmp_path, capsys, data_file, data):
    first = tmp_path / "first"
    assert run(capsys, "refine", "--data", data_file, "--out", first, "--epochs", 30, "-q")[0] == 0
    code, _, err = run(capsys, "refine", "--data", data_file, "--out", tmp_path / "second", "--init", first,
                       "--epochs", 1, "-q")
    assert code == 0, err
    s = json.loads((tmp_path / "second" / "summary.json").read_text())
    f = json.loads((first / "summary.json").read_text())
    assert s["loss_per_epoch"][0] < 0.2 * f["loss_per_epoch"][0]   # started from a good image


def _cli(*args):
    return [sys.executable, "-m", "ptycho_fast", *[str(a) for a in args]]


def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path, data_file):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["refine", "--data", data_file, "--epochs", 40, "--deterministic", "-q", "--refine-positions"]
    whole = tmp_path / "whole"
    subprocess.run(_cli(*args, "--out", whole), check=True, env=env, timeout=300)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli(*args, "--out", killed), env=env)
    ckpt = killed / CHECKPOINT
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists() and not (killed / "summary.json").exists(), "the run finished before the kill"
    subprocess.run(_cli(*args, "--out", killed, "--resume"), check=True, env=env, timeout=300)
    with np.load(whole / "object.npz") as a, np.load(killed / "object.npz") as b:
        assert np.array_equal(a["object"], b["object"]) and np.array_equal(a["positions"], b["positions"])
    sw = json.loads((whole / "summary.json").read_text())
    sk = json.loads((killed / "summary.json").read_text())
    assert sw["loss_per_epoch"] == sk["loss_per_epoch"] and sk["resumed"]


def test_two_processes_equal_one(tmp_path, data_file):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["refine", "--data", data_file, "--epochs", 4, "-q", "--refine-positions", "--positions-start", 2,
            "--refine-probe", "--probe-start", 2]
    subprocess.run(_cli(*args, "--out", tmp_path / "one"), check=True, env=env, timeout=300)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                    str(29500 + os.getpid() % 1000), "-m", "ptycho_fast", *[str(a) for a in args],
                    "--out", str(tmp_path / "two")], check=True, env=env, timeout=300)
    with np.load(tmp_path / "one" / "object.npz") as a, np.load(tmp_path / "two" / "object.npz") as b:
        np.testing.assert_allclose(a["object"], b["object"], atol=2e-4)
        np.testing.assert_allclose(a["positions"], b["positions"], atol=2e-4)
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["processes"] == 2


def test_infer_refine_writes_both_results(tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "infer", "--out", out, "--refine", 5)
    assert code == 0, err
    assert (out / "object.npz").exists() and (out / "refined" / "object.npz").exists()
    assert "refined it for 5 epochs" in stdout
    s = json.loads((out / "refined" / "summary.json").read_text())
    assert s["epochs"] == 5 and "network" in s["init"]


def test_bare_package_import_registers_the_ops():
    code = ("import torch, ptycho_fast; "
            "assert hasattr(torch.ops.ptycho_fast, 'extract_patches'); "
            "assert hasattr(torch.ops.ptycho_fast, 'stitch_patches'); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
