"""Model bundles: round trip, the stored scalars, and every way loading must refuse."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from ptycho_fast import bundle as bundle_mod
from ptycho_fast import physics
from ptycho_fast.bundle import BundleError, BundlePredictor, load_bundle, save_bundle
from ptycho_fast.data import UserError
from ptycho_fast.model import PtychoPINNNet

N = 32
SCALE, GAIN = 3.25, 1.75
FINGERPRINT = {"fingerprint": "sha256:" + "0" * 64, "n_patterns": 10, "N": N, "source": "test"}
FORMATS = ["torch"] + (["safetensors"] if bundle_mod.have_safetensors() else [])


def _probe():
    r = np.arange(N) - N / 2
    return (np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / 40.0) * np.exp(0.3j)).astype(np.complex64)


def _model(gridsize=2, seed=0, **kw):
    torch.manual_seed(seed)
    return PtychoPINNNet(N=N, gridsize=gridsize, width=0.25, **kw).eval()


def _save(path, model=None, fmt=None, **kw):
    args = dict(intensity_scale=SCALE, probe_gain=GAIN, probe=_probe(), window="probe",
                object_big=True, local_canvas_size=44, training_data=FINGERPRINT, weights_format=fmt)
    args.update(kw)
    return save_bundle(path, model or _model(), **args)


def _edit_json(path: Path, fn):
    info = json.loads((path / "bundle.json").read_text())
    fn(info)
    (path / "bundle.json").write_text(json.dumps(info))


def _X(gridsize=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, gridsize ** 2, N, N, generator=g) * 40


OFFSETS = torch.tensor([[[-2.0, -3.0], [-2.0, 3.0], [2.5, -3.0], [1.5, 3.0]]] * 3)


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_identical_predictions(tmp_path, fmt):
    model = _model()
    path = _save(tmp_path / "b", model, fmt)
    names = sorted(p.name for p in path.iterdir())
    assert names == sorted(["bundle.json", "probe.npy",
                            "weights.safetensors" if fmt == "safetensors" else "weights.pt"])
    b = load_bundle(path)
    assert (b.N, b.gridsize, b.C, b.window, b.object_big, b.local_canvas_size) == (N, 2, 4, "probe", True, 44)
    assert b.intensity_scale == SCALE and b.probe_gain == GAIN
    np.testing.assert_array_equal(b.probe, _probe())
    X = _X()
    with torch.no_grad():
        expected = model(X / SCALE)
    assert torch.equal(b.predict(X), expected)
    raw, patches = BundlePredictor(b)(X, OFFSETS)         # the prediction path infer takes
    assert torch.equal(raw, expected)
    assert torch.equal(BundlePredictor(b)(X, OFFSETS)[1], patches)
    # no temporary directories are left beside the bundle
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_stored_scale_and_gain_are_the_ones_used(tmp_path):
    model = _model()
    path = _save(tmp_path / "b", model)
    X = _X()
    b = load_bundle(path)
    with torch.no_grad():
        assert torch.equal(b.predict(X), model(X / SCALE))
    patches = b.predict(X)
    torch.testing.assert_close(b.predicted_amplitude(patches),
                               GAIN * physics.diffraction_amplitude(patches, torch.as_tensor(_probe())))
    # change them in bundle.json: the loaded bundle follows
    _edit_json(path, lambda i: i.update(intensity_scale=2 * SCALE, probe_gain=3.0))
    b2 = load_bundle(path)
    with torch.no_grad():
        assert torch.equal(b2.predict(X), model(X / (2 * SCALE)))
    torch.testing.assert_close(b2.predicted_amplitude(patches), b.predicted_amplitude(patches) * (3.0 / GAIN))


@pytest.mark.parametrize("removed", [["intensity_scale"], ["probe_gain"], ["intensity_scale", "probe_gain"]])
def test_missing_scale_or_gain_is_rejected(tmp_path, removed):
    path = _save(tmp_path / "b")
    _edit_json(path, lambda i: [i.pop(k) for k in removed])
    with pytest.raises(BundleError) as err:
        load_bundle(path)
    message = str(err.value)
    assert all(k in message for k in removed) and "never defaulted" in message
    assert isinstance(err.value, UserError)


@pytest.mark.parametrize("edit,match", [
    (lambda i: i.update(probe_gain=None), "missing required field: probe_gain"),
    (lambda i: i.update(intensity_scale=-1.0), "intensity_scale must be a finite number > 0"),
    (lambda i: i.update(probe_gain="big"), "probe_gain must be a number"),
    (lambda i: i.update(format_version=4), "unknown format_version 4"),
    (lambda i: i["network"].pop("input"), "missing required field: network.input"),
    (lambda i: i["network"].pop("input_gain"), "missing required field: network.input_gain"),
    (lambda i: i["network"].update(input="log"), "input must be one of amplitude, backprojection"),
    (lambda i: i["network"].update(input=3), "network.input must be a string"),
    (lambda i: i["network"].update(input_gain=0), "input_gain must be a finite number > 0"),
    (lambda i: i["network"].pop("arch"), "missing required field: network.arch"),
    (lambda i: i["network"].update(arch="unet"), "arch must be one of cnn, ffno"),
    (lambda i: (i["network"].update(arch="ffno"), i["network"].pop("modes")),
     "missing required field: network.modes"),
    (lambda i: i.update(format="something.else"), "format is 'something.else'"),
    (lambda i: i["probe"].pop("sha256"), "missing required field: probe.sha256"),
    (lambda i: (i.pop("N"), i["network"].pop("width")), "missing required fields: N, network.width"),
    (lambda i: i.update(N=64), "local_canvas_size must be null or an integer >= N = 64"),
    (lambda i: (i.update(N=64), i["object_big"].update(local_canvas_size=80)),
     r"probe must be complex \(N, N\) or \(M, N, N\) with N = 64"),
    (lambda i: i["network"].update(width=1.0), r"filters \[8, 16, 32\] do not match"),
    (lambda i: i["object_big"].update(window="hann"), "object_big.window must be one of"),
    (lambda i: i["probe"].update(file="../probe.npy"), "plain file name"),
    (lambda i: i["weights"].update(format="pickle"), r"weights.format must be|checksum"),
])
def test_bad_fields_are_rejected_with_a_clear_message(tmp_path, edit, match):
    path = _save(tmp_path / "b", fmt="torch")
    _edit_json(path, edit)
    with pytest.raises(BundleError, match=match):
        load_bundle(path)


def test_checksum_mismatches(tmp_path):
    path = _save(tmp_path / "b")
    probe = _probe()
    probe[0, 0] += 1
    np.save(path / "probe.npy", probe)
    with pytest.raises(BundleError, match="probe checksum mismatch"):
        load_bundle(path)
    path = _save(tmp_path / "c")
    weights = path / json.loads((path / "bundle.json").read_text())["weights"]["file"]
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="weights checksum mismatch"):
        load_bundle(path)


def _replace_with_checksum(path: Path, name: str, writer):
    writer(path / name)
    digest = hashlib.sha256((path / name).read_bytes()).hexdigest()
    key = "probe" if name == "probe.npy" else "weights"
    _edit_json(path, lambda i: i[key].update(sha256=digest))


def test_wrong_shapes_are_rejected(tmp_path):
    path = _save(tmp_path / "b")
    _replace_with_checksum(path, "probe.npy", lambda p: np.save(p, np.ones((16, 16), np.complex64)))
    with pytest.raises(BundleError, match=r"probe must be complex .* got complex64 of shape \(16, 16\)"):
        load_bundle(path)
    # weights of another width under the same name
    path = _save(tmp_path / "c", fmt="torch")
    torch.manual_seed(0)
    other = PtychoPINNNet(N=N, gridsize=2, width=0.5)
    _replace_with_checksum(path, "weights.pt", lambda p: torch.save(other.state_dict(), p))
    with pytest.raises(BundleError, match=r"weights do not match the network .* wrong shape"):
        load_bundle(path)


def test_no_pickle_on_load(tmp_path):
    """An object array (needs pickle) as the probe, and a weights file holding an arbitrary
    Python object: both refused, nothing executed."""
    path = _save(tmp_path / "b", fmt="torch")
    obj = np.empty(1, dtype=object)
    obj[0] = {"not": "an array"}
    _replace_with_checksum(path, "probe.npy", lambda p: np.save(p, obj, allow_pickle=True))
    with pytest.raises(BundleError, match="without pickle"):
        load_bundle(path)

    path = _save(tmp_path / "c", fmt="torch")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))
    _replace_with_checksum(path, "weights.pt", lambda p: torch.save({"x": Evil()}, p))
    with pytest.raises(BundleError, match="not a readable weights-only torch file"):
        load_bundle(path)
    assert not (tmp_path / "pwned").exists()


def test_safetensors_missing_gives_a_clear_error(tmp_path, monkeypatch):
    if not bundle_mod.have_safetensors():
        pytest.skip("safetensors not installed")
    path = _save(tmp_path / "b", fmt="safetensors")
    monkeypatch.setattr(bundle_mod, "have_safetensors", lambda: False)
    with pytest.raises(BundleError, match="needs the safetensors package"):
        load_bundle(path)
    # and saving falls back to torch.save (weights-only) by default
    path = _save(tmp_path / "c")
    assert (path / "weights.pt").is_file() and load_bundle(path).info["weights"]["format"] == "torch"


def test_run_directory_and_missing_bundles(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(BundleError, match="has the training run finished"):
        load_bundle(run)
    _save(run / "model")
    assert load_bundle(run).path == run / "model"
    with pytest.raises(BundleError, match="no such model bundle"):
        load_bundle(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(BundleError, match="is not a directory"):
        load_bundle(tmp_path / "file")
    (run / "model" / "bundle.json").write_text("{not json")
    with pytest.raises(BundleError, match="not readable JSON"):
        load_bundle(run)


def test_save_replaces_a_bundle_atomically_and_refuses_other_directories(tmp_path):
    path = _save(tmp_path / "b", _model(seed=0))
    _save(path, _model(seed=1), intensity_scale=9.0)
    assert load_bundle(path).intensity_scale == 9.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    other = tmp_path / "data"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(BundleError, match="not a model bundle; refusing"):
        _save(other)
    assert (other / "precious.txt").read_text() == "keep me"
    # a failure while writing leaves the old bundle and no temporary directory
    with pytest.raises(BundleError, match="probe must be"):
        _save(path, probe=np.ones((8, 8), np.complex64))
    with pytest.raises(BundleError, match="intensity_scale"):
        _save(path, intensity_scale=0.0)
    with pytest.raises(BundleError, match="fingerprint"):
        _save(path, training_data={})
    assert load_bundle(path).intensity_scale == 9.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "data"]


def test_bundle_json_records_everything(tmp_path):
    info = load_bundle(_save(tmp_path / "b")).info
    for field in bundle_mod.REQUIRED_FIELDS:
        bundle_mod._get(info, field)
    assert info["format_version"] == bundle_mod.FORMAT_VERSION
    assert info["network"]["filters"] == [8, 16, 32]
    assert info["versions"]["torch"] == torch.__version__
    assert info["training_data"] == FINGERPRINT


@pytest.mark.parametrize("fmt", FORMATS)
def test_ffno_round_trip_names_the_architecture(tmp_path, fmt):
    model = _model(arch="ffno", modes=6, blocks=2)
    path = _save(tmp_path / "b", model, fmt)
    info = json.loads((path / "bundle.json").read_text())
    assert info["format_version"] == bundle_mod.FORMAT_VERSION == 3
    assert info["network"]["arch"] == "ffno" and (info["network"]["modes"], info["network"]["blocks"]) == (6, 2)
    b = load_bundle(path)
    assert (b.network.arch, b.network.modes, b.network.blocks) == ("ffno", 6, 2)
    X = _X()
    with torch.no_grad():
        assert torch.equal(b.predict(X), model(X / SCALE))


def test_a_version_1_bundle_still_loads_as_a_cnn(tmp_path):
    """Bundles written before the architecture choice: format_version 1, no network.arch."""
    model = _model(amp_activation="sigmoid")
    path = _save(tmp_path / "b", model, "torch")

    def as_version_1(info):
        info["format_version"] = 1
        net = info["network"]
        for k in ("arch", "modes", "blocks", "input", "input_gain"):
            net.pop(k)
        net["architecture"] = "ptychopinn-unet"
    _edit_json(path, as_version_1)
    b = load_bundle(path)
    assert b.network.arch == "cnn" and b.network.amp_activation == "sigmoid"
    X = _X()
    with torch.no_grad():
        assert torch.equal(b.predict(X), model(X / SCALE))


def test_a_version_2_bundle_loads_with_the_amplitude_input(tmp_path):
    """Bundles written before the input choice: format_version 2, no network.input."""
    model = _model()
    path = _save(tmp_path / "b", model, "torch")

    def as_version_2(info):
        info["format_version"] = 2
        info["network"].pop("input")
        info["network"].pop("input_gain")
    _edit_json(path, as_version_2)
    b = load_bundle(path)
    assert b.network.input == "amplitude" and b.input_gain == GAIN
    X = _X()
    with torch.no_grad():
        assert torch.equal(b.predict(X), model(X / SCALE))


@pytest.mark.parametrize("arch", ["cnn", "ffno"])
def test_backprojection_round_trip_uses_the_stored_probe_and_input_gain(tmp_path, arch):
    """The bundle's input is rebuilt from what it stores: kind, scale, probe, input gain
    (not the trained probe gain) — an edit of any of them changes the prediction."""
    model = _model(arch=arch, input="backprojection")
    path = _save(tmp_path / "b", model, "torch", input_gain=1.25)
    info = json.loads((path / "bundle.json").read_text())
    assert info["format_version"] == 3
    assert (info["network"]["input"], info["network"]["input_gain"]) == ("backprojection", 1.25)
    b = load_bundle(path)
    assert (b.network.input, b.input_gain, b.probe_gain) == ("backprojection", 1.25, GAIN)
    X = _X()
    x = physics.InputTransform("backprojection", SCALE, _probe(), 1.25)(X)
    assert x.shape == (3, 12, N, N)
    with torch.no_grad():
        expected = model(x)
    assert torch.equal(b.predict(X), expected)
    raw, _ = BundlePredictor(b)(X, OFFSETS)
    assert torch.equal(raw, expected)
    _edit_json(path, lambda i: i["network"].update(input_gain=2.5))
    assert not torch.allclose(load_bundle(path).predict(X), expected)
