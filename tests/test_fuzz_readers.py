"""Hostile files: every reader under seeded mutations of valid files (the engine is
benchmarks/fuzz_readers.py; ``python benchmarks/fuzz_readers.py --per-format 1000 --fork`` is
the long run), ``ptycho-fast info`` on a fifth of them, then the bugs it found, one by one,
and the CLI path.

A case passes when the reader returns a valid dataset / bundle or raises ``UserError`` with
a one-line message < 500 characters naming the file; never another exception, a hang, a
crash, a huge allocation or an unpickled payload executed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import fuzz_readers as fz  # noqa: E402

from ptycho_fast import info  # noqa: E402
from ptycho_fast.bundle import BundleError, load_bundle  # noqa: E402
from ptycho_fast.data import DataError, detect_format, load_dataset, read_ptychodus  # noqa: E402
from ptycho_fast.files import UserError  # noqa: E402

#: cases per format: a few hundred in all, ~20 s on 2 cores (bundles are the slow ones)
PER_FORMAT = {"npz": 250, "h5": 250, "ptychodus": 200, "bundle": 120}
SEED = int(os.environ.get("PTYCHO_FAST_FUZZ_SEED", "1"))  # the benchmark's default is 0


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fz.build_seeds(tmp_path_factory.mktemp("fuzz_seeds"))


# ------------------------------------------------------------------ the fuzz run
@pytest.mark.parametrize("fmt", fz.FORMATS)
def test_fuzz_reader(fmt, seeds, tmp_path, capsys):
    """Every mutation kind of every format (the ptychodus reader's included), a fifth of the
    cases also through ``ptycho-fast info``."""
    with fz.guarded():
        s = fz.run_format(fmt, PER_FORMAT[fmt], SEED, seeds, tmp_path)
    with capsys.disabled():
        print(f"\nfuzz {fmt} (seed {SEED}): {s.tried} cases tried, {s.loads} clean loads, "
              f"{s.errors} clean errors, {len(s.failures)} failures, {s.described} also through "
              f"info; slowest {s.slowest:.2f} s")
    assert not s.failures, "\n".join(f"case {f.case} [{f.kind}] {f.detail}: {f.message}"
                                     for f in s.failures)
    assert s.tried == PER_FORMAT[fmt]
    assert s.loads > 0 and s.errors > 0  # both outcomes are exercised
    assert s.described > 0
    assert s.slowest < fz.SLOW_S


# ------------------------------------------------------------------ the bugs it found
def _assert_clean(exc_info, path, cls=UserError):
    message = str(exc_info.value)
    assert isinstance(exc_info.value, cls)
    assert "\n" not in message and len(message) < 500 and str(path) in message, message
    return message


def _npz_with_member(src: Path, dst: Path, key: str, data: bytes) -> Path:
    members = fz.npz_arrays(src)
    members[key] = data
    fz.write_npz_members(dst, members, compressed=False)
    return dst


@pytest.mark.parametrize("descr, shape, fragment", [
    ("<f4", (10 ** 9, 64, 64), "declares shape"),            # MemoryError before
    ("<f4", (10 ** 6, 16, 16), "declares shape"),            # ~1 GB allocated before
    ("<f4", (10 ** 30, 16, 16), "declares shape"),           # OverflowError before
    ("<f4", (16, -16, 16), "negative dimension"),
    ("|S100000000", (16,), "expected numbers"),              # 1.5 GB of strings before
    ("|O", (16,), "Python objects"),
])
@pytest.mark.parametrize("lazy", [False, True])
def test_npz_header_declaring_a_huge_array_is_refused_before_allocating(seeds, tmp_path, descr, shape,
                                                                         fragment, lazy):
    path = _npz_with_member(seeds.npz, tmp_path / "a.npz", "diffraction",
                            fz.npy_header(descr, shape) + b"\0" * 4096)
    with pytest.raises(DataError) as exc:
        load_dataset(path, lazy=lazy)
    assert fragment in _assert_clean(exc, path)
    assert "'diffraction'" in str(exc.value)


def test_npz_zip_of_unknown_version_is_a_data_error(seeds, tmp_path):
    data = bytearray(seeds.npz.read_bytes())
    central = data.index(b"PK\x01\x02")
    data[central + 6:central + 8] = (86).to_bytes(2, "little")  # "version needed" 8.6
    path = tmp_path / "v.npz"
    path.write_bytes(bytes(data))
    with pytest.raises(DataError) as exc:  # NotImplementedError before
        load_dataset(path)
    _assert_clean(exc, path)


def test_position_far_outside_the_object_gives_a_short_message(seeds, tmp_path):
    arrays = fz.npz_arrays(seeds.npz)
    arrays["ycoords"] = np.full_like(arrays["ycoords"], -1e300)
    path = tmp_path / "far.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match="outside") as exc:  # a 300-digit number before
        load_dataset(path)
    assert "-1e+300" in _assert_clean(exc, path)


@pytest.mark.parametrize("key, value", [("energy_eV", -8000.0), ("pixel_size_m", 0.0)])
def test_npz_negative_or_zero_metadata_is_refused(seeds, tmp_path, key, value):
    arrays = fz.npz_arrays(seeds.npz)
    arrays[key] = np.float64(value)
    path = tmp_path / "m.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=f"'{key}': expected a positive number") as exc:
        load_dataset(path)
    _assert_clean(exc, path)


def _h5_rewrite(src: Path, dst: Path, edit) -> Path:
    root, nodes = fz.h5_snapshot(src)
    edit(root, nodes)
    fz.h5_write(dst, root, nodes)
    return dst


@pytest.mark.parametrize("special, fragment", [
    (("unwritten", (10 ** 9, 16, 16), np.float32, dict(chunks=(1, 16, 16))), "0 of its"),
    (("unwritten", (10 ** 6, 16, 16), np.float32, dict(chunks=(64, 16, 16), compression="gzip")), "0 of its"),
    (("partial", (10 ** 6, 16, 16), np.float32, dict(chunks=(1, 16, 16)), np.ones((1, 16, 16), np.float32)),
     "1 of its"),
    (("unwritten", (2 ** 20, 16, 16), np.float32, {}), "never written"),
    (("external", (10 ** 6, 16, 16), np.float32, "/dev/zero"), "external files"),
    (("virtual", (10 ** 6, 16, 16), np.float32, "missing.h5"), "virtual dataset"),
])
@pytest.mark.parametrize("lazy", [False, True])
def test_h5_dataset_declaring_data_it_does_not_hold_is_refused(seeds, tmp_path, special, fragment, lazy):
    def edit(root, nodes):
        nodes["diffraction"] = fz.H5Node(special=special)
    path = _h5_rewrite(seeds.h5, tmp_path / "d.h5", edit)
    t0 = time.perf_counter()
    with pytest.raises(DataError) as exc:  # MemoryError or a GB allocated (and filled) before
        load_dataset(path, lazy=lazy)
    assert time.perf_counter() - t0 < 5
    message = _assert_clean(exc, path)
    assert fragment in message and "'diffraction'" in message


@pytest.mark.parametrize("edit, fragment", [
    (lambda r, n: n.__setitem__("xcoords_start", fz.H5Node(np.zeros(3))), "xcoords_start"),  # ValueError before
    (lambda r, n: n.pop("ycoords_start"), "only one of"),
    (lambda r, n: r.__setitem__("format_version", 2), "format_version"),
    (lambda r, n: r.__setitem__("energy_eV", "8 keV"), "'energy_eV': expected a number"),
    (lambda r, n: n.__setitem__("probe", fz.H5Node(np.array(["a", "b"], dtype=h5py.string_dtype()))),
     "expected numbers"),
    (lambda r, n: n.__setitem__("xcoords", fz.H5Node(special=("external_link", "missing.h5", "/x"))),
     "'xcoords'"),                                                                          # KeyError before
])
def test_h5_bad_fields_are_data_errors(seeds, tmp_path, edit, fragment):
    path = _h5_rewrite(seeds.h5, tmp_path / "f.h5", edit)
    with pytest.raises(DataError) as exc:
        load_dataset(path)
    assert fragment in _assert_clean(exc, path)


def test_h5_corrupt_global_heap_does_not_hang(seeds, tmp_path):
    """HDF5 2.0 decodes a global heap holding a zero-size free-space object in an endless
    loop (H5HG__cache_heap_deserialize): reading any variable-length string of such a file
    never returns. Our reader never decodes one. Checked in a child process with a timeout,
    so that a regression fails instead of hanging the suite."""
    data = bytearray(seeds.h5.read_bytes())
    heap = data.index(b"GCOL")
    data[heap + 16:heap + 2016] = bytes(2000)  # the objects after the collection header
    path = tmp_path / "heap.h5"
    path.write_bytes(bytes(data))
    code = ("import sys\nfrom ptycho_fast.data import load_dataset, UserError\n"
            "try:\n    load_dataset(sys.argv[1]).close()\n    print('loaded')\n"
            "except UserError as exc:\n    print('error', exc)\n")
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                            timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(("loaded", "error"))


def _bundle(seeds, tmp_path) -> Path:
    path = tmp_path / "bundle"
    shutil.copytree(seeds.bundle, path)
    return path


def _edit_info(path: Path, fn) -> None:
    data = json.loads((path / "bundle.json").read_text())
    fn(data)
    (path / "bundle.json").write_text(json.dumps(data))


# ------------------------------------------------------------------ ptychodus product / diffraction file
def _pair(seeds, tmp_path) -> tuple[Path, Path]:
    product, diffraction = tmp_path / seeds.product.name, tmp_path / seeds.diffraction.name
    shutil.copy(seeds.product, product)
    shutil.copy(seeds.diffraction, diffraction)
    return product, diffraction


def test_ptychodus_damaged_attribute_type_and_global_heap_neither_crash_nor_hang(seeds, tmp_path):
    """Two damages HDF5 2.0 cannot survive when the value is decoded, read in a child process
    (so that a regression fails instead of killing or hanging the suite):

    * one byte of the product (the type of attribute ``comments``: string -> variable-length
      sequence) made ``f.attrs['comments']`` a SIGSEGV (fuzz seed 0, case 391): the type is
      now checked first and such a value left unread (the product loads);
    * the global heap's objects zeroed (a free-space object of size 0): reading ``name``
      never returned; the collections are now walked first and the file refused."""
    crash = tmp_path / "crash"
    crash.mkdir()
    product, _ = _pair(seeds, crash)
    data = bytearray(product.read_bytes())
    at = data.index(b"comments\x00") + 17  # the attribute's datatype message: class bit field
    assert data[at - 1] == 0x19 and data[at] == 1  # version 1, class 9 (VLEN), type 1 (string)
    data[at] = 242
    product.write_bytes(bytes(data))
    hang = tmp_path / "hang"
    hang.mkdir()
    product2, _ = _pair(seeds, hang)
    data = bytearray(product2.read_bytes())
    heap = data.index(b"GCOL")
    data[heap + 16:heap + 2016] = bytes(2000)
    product2.write_bytes(bytes(data))
    code = ("import sys, warnings\nwarnings.simplefilter('ignore')\n"
            "from ptycho_fast.data import load_dataset, UserError\nfrom ptycho_fast import info\n"
            "for p in sys.argv[1:]:\n    for fn in (load_dataset, info.describe):\n"
            "        try:\n            fn(p)\n            print('loaded')\n"
            "        except UserError as exc:\n            print('error', exc)\n")
    result = subprocess.run([sys.executable, "-c", code, str(product), str(product2)], capture_output=True,
                            text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[:2] == ["loaded", "loaded"], lines
    assert all(line.startswith("error") and "corrupt global heap" in line and str(product2) in line
               for line in lines[2:4]), lines


@pytest.mark.parametrize("target, key", [("product", "probe"), ("diffraction", "patterns")])
@pytest.mark.parametrize("link, fragment", [
    (("soft", "/nowhere"), "soft link to '/nowhere'"),
    (("external_link", "missing_file.h5", "/data"), "external link to 'missing_file.h5'"),
    (("external_self", None), "external link to"),     # a link loop
])
def test_ptychodus_broken_links_are_data_errors(seeds, tmp_path, target, key, link, fragment):
    product, diffraction = _pair(seeds, tmp_path)
    path = product if target == "product" else diffraction
    if link[0] == "external_self":
        link = ("external_link", path.name, "/" + key)
    _h5_rewrite(path, path, lambda r, n: n.__setitem__(key, fz.H5Node(special=link)))
    with pytest.raises(DataError) as exc:  # KeyError before
        read_ptychodus(product)
    assert fragment in _assert_clean(exc, path) and f"'{key}'" in str(exc.value)


@pytest.mark.parametrize("target, key", [("product", "object"), ("product", "probe"),
                                         ("diffraction", "patterns")])
@pytest.mark.parametrize("special, fragment", [
    (("unwritten", (10 ** 6, 16, 16), np.complex64, dict(chunks=(1, 16, 16))), "0 of its"),
    (("unwritten", (2 ** 20, 16, 16), np.complex64, {}), "never written"),
    (("external", (10 ** 6, 16, 16), np.complex64, "/dev/zero"), "external files"),
    (("virtual", (10 ** 6, 16, 16), np.complex64, "missing.h5"), "virtual dataset"),
])
def test_ptychodus_dataset_declaring_data_it_does_not_hold_is_refused(seeds, tmp_path, target, key,
                                                                      special, fragment):
    product, diffraction = _pair(seeds, tmp_path)
    path = product if target == "product" else diffraction
    if key == "patterns":
        special = (special[0], special[1], np.float32, *special[3:])
    _h5_rewrite(path, path, lambda r, n: n.__setitem__(key, fz.H5Node(special=special)))
    t0 = time.perf_counter()
    with pytest.raises(DataError) as exc:  # 8 GB - 7 TB requested (or 1-2 GB used) before
        read_ptychodus(product)
    assert time.perf_counter() - t0 < 5
    assert fragment in _assert_clean(exc, path) and f"'{key}'" in str(exc.value)


def test_ptychodus_damaged_filter_pipeline_is_a_data_error(seeds, tmp_path):
    """The deflate filter of 'patterns' left with no client value: h5py's ``compression``
    property raises IndexError (found by a single-byte sweep)."""
    product, diffraction = _pair(seeds, tmp_path)
    data = bytearray(diffraction.read_bytes())
    at = data.index(b"deflate\x00") - 2  # filter id 1, name length 8, flags, number of values
    assert data[at - 6:at - 2] == b"\x01\x00\x08\x00" and data[at] == 1
    data[at] = 0
    diffraction.write_bytes(bytes(data))
    with pytest.raises(DataError) as exc:  # IndexError before
        read_ptychodus(product)
    assert "'patterns'" in _assert_clean(exc, diffraction)


def test_ptychodus_start_positions_of_the_wrong_length(seeds, tmp_path):
    product, _ = _pair(seeds, tmp_path)
    _h5_rewrite(product, product, lambda r, n: n.__setitem__(
        "ptycho_fast_positions_start_x_m", fz.H5Node(np.zeros(3))))
    with pytest.raises(DataError, match="3 and 16 entries for 16 positions") as exc:  # ValueError before
        read_ptychodus(product)
    _assert_clean(exc, product)


@pytest.mark.parametrize("value", [np.arange(3.0), h5py.Empty("f8"), "text", b"bytes",
                                   np.array(["a", "b"], dtype=h5py.string_dtype())])
def test_ptychodus_text_attributes_of_another_kind_are_ignored(seeds, tmp_path, value):
    product, _ = _pair(seeds, tmp_path)
    _h5_rewrite(product, product, lambda r, n: r.__setitem__("comments", value))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = read_ptychodus(product)
    comments = ds.metadata.extra["ptychodus"].get("comments")
    assert comments == {str: "text", bytes: "bytes"}.get(type(value)), comments


def test_detect_format_on_a_corrupt_link_table_is_a_data_error(seeds, tmp_path):
    product, _ = _pair(seeds, tmp_path)
    product.write_bytes(product.read_bytes().replace(b"SNOD", b"SNOX"))  # symbol table nodes
    with pytest.raises(DataError, match="links cannot be read") as exc:  # RuntimeError before
        detect_format(product)
    _assert_clean(exc, product)


# ------------------------------------------------------------------ ptycho-fast info on damaged files
def test_info_on_a_corrupt_compressed_npz_lists_what_it_can(seeds, tmp_path):
    import zipfile
    data = bytearray(seeds.npz_compressed.read_bytes())
    with zipfile.ZipFile(seeds.npz_compressed) as zf:
        member = zf.getinfo("diffraction.npy")
    start = member.header_offset + 30 + len(member.filename) + len(member.extra)
    data[start:start + 40] = bytes(b ^ 0xFF for b in data[start:start + 40])  # the deflate stream
    path = tmp_path / "c.npz"
    path.write_bytes(bytes(data))
    d = info.describe(path)  # zlib.error before
    assert d["kind"] == "arrays"
    stored = {a["name"]: a for a in d["stored_arrays"]}
    assert stored["diffraction"]["shape"] is None and "unreadable" in stored["diffraction"]["dtype"]
    assert stored["probeGuess"]["dtype"] == "complex64"
    info.format_text(d)


@pytest.mark.parametrize("field", ["network", "probe", "weights", "training", "training_data",
                                   "object_big", "versions"])
@pytest.mark.parametrize("value", [[1, 2], "text", 3, None])
def test_info_on_a_bundle_whose_fields_are_not_objects(seeds, tmp_path, field, value):
    path = _bundle(seeds, tmp_path)
    _edit_info(path, lambda i: i.__setitem__(field, value))
    d = info.describe(path)  # AttributeError before
    assert d["valid"] or str(path) in d["problem"]
    assert "model bundle" in info.format_text(d)
    json.loads(info.to_json(d))


def test_info_on_a_bundle_json_nested_too_deeply_or_not_finite(seeds, tmp_path):
    path = _bundle(seeds, tmp_path)
    (path / "bundle.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(UserError, match="nested too deeply") as exc:  # RecursionError before
        info.describe(path)
    _assert_clean(exc, path)
    path2 = _bundle(seeds, tmp_path / "b2")
    _edit_info(path2, lambda i: i.__setitem__("intensity_scale", float("nan")))
    d = info.describe(path2)
    assert not d["valid"] and json.loads(info.to_json(d))["intensity_scale"] == "nan"


@pytest.mark.parametrize("edit, fragment", [
    (lambda i: i.__setitem__("gridsize", 10 ** 6), "do not match"),   # 10^12 input channels allocated before
    (lambda i: i.__setitem__("gridsize", 10 ** 9), "bad network settings"),  # TypeError before
    (lambda i: i["network"].__setitem__("width", 1e6), "bad network settings"),
    (lambda i: i.__setitem__("intensity_scale", 10 ** 400), "intensity_scale"),  # OverflowError before
    (lambda i: i["probe"].__setitem__("shape", 64), "probe.shape"),             # TypeError before
    (lambda i: i["network"].__setitem__("filters", [10 ** 400] * 3), "bad network settings"),
])
def test_bundle_json_hostile_values_are_bundle_errors(seeds, tmp_path, edit, fragment):
    path = _bundle(seeds, tmp_path)
    _edit_info(path, edit)
    t0 = time.perf_counter()
    with pytest.raises(BundleError) as exc:
        load_bundle(path)
    assert time.perf_counter() - t0 < 5
    assert fragment in _assert_clean(exc, path)


def test_bundle_json_nested_too_deeply(seeds, tmp_path):
    path = _bundle(seeds, tmp_path)
    (path / "bundle.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(BundleError, match="nested too deeply") as exc:  # RecursionError before
        load_bundle(path)
    _assert_clean(exc, path)


def test_bundle_probe_header_declaring_a_huge_array(seeds, tmp_path):
    path = _bundle(seeds, tmp_path)
    probe = np.load(path / "probe.npy")
    (path / "probe.npy").write_bytes(fz.npy_header("<c8", (10 ** 6, 64, 64)) + probe.tobytes())
    _edit_info(path, lambda i: i["probe"].__setitem__("shape", [10 ** 6, 64, 64]))
    fz.resign(path, "probe")
    with pytest.raises(BundleError, match="declares shape") as exc:  # 30 GB requested before
        load_bundle(path)
    _assert_clean(exc, path)


@pytest.mark.parametrize("torch_save", [False, True])
def test_bundle_torch_weights_that_would_run_code(seeds, tmp_path, torch_save):
    import pickle
    import torch
    path = _bundle(seeds, tmp_path)
    marker = tmp_path / "EXECUTED"
    if torch_save:
        torch.save({"w": torch.zeros(2), "evil": fz.Pickled(marker)}, path / "weights.pt")
    else:
        (path / "weights.pt").write_bytes(pickle.dumps({"w": fz.Pickled(marker)}))
    _edit_info(path, lambda i: i["weights"].update(file="weights.pt", format="torch"))
    fz.resign(path, "weights")
    with warnings.catch_warnings(), pytest.raises(BundleError, match="refusing to unpickle") as exc:
        warnings.simplefilter("ignore")
        load_bundle(path)
    _assert_clean(exc, path)  # torch's message is a page of advice: one line here
    assert not marker.exists()


# ------------------------------------------------------------------ the CLI path
def _cli(*args):
    return subprocess.run([sys.executable, "-m", "ptycho_fast", *map(str, args)], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)


def _assert_cli_error(result, path):
    err = result.stderr.strip()
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert len(err.splitlines()) == 1 and err.startswith("ptycho-fast: error:") and str(path) in err, err


def test_cli_info_on_hostile_data_files_exits_2(seeds, tmp_path):
    """One hostile file per data format through ``ptycho-fast info`` (subprocesses: slow).
    (An NPZ whose arrays are wrong is still listed by ``info``, exit 0: a truncated one is not.)"""
    npz = tmp_path / "truncated.npz"
    npz.write_bytes(seeds.npz.read_bytes()[:20000])
    h5 = _h5_rewrite(seeds.h5, tmp_path / "huge.h5", lambda r, n: n.__setitem__(
        "diffraction", fz.H5Node(special=("unwritten", (10 ** 9, 16, 16), np.float32, dict(chunks=(1, 16, 16))))))
    product = tmp_path / seeds.product.name
    shutil.copy(seeds.product, product)
    diffraction = tmp_path / seeds.diffraction.name
    def nan_patterns(root, nodes):
        data = nodes["patterns"].data.copy()
        data[3, 2, 1] = np.nan
        nodes["patterns"].data = data
    _h5_rewrite(seeds.diffraction, diffraction, nan_patterns)
    for path in (npz, h5, product):
        _assert_cli_error(_cli("info", path), path if path != product else diffraction)


def test_cli_infer_on_a_hostile_bundle_exits_2(seeds, tmp_path):
    """(``info`` on a bundle reports whether it loads and exits 0: ``infer`` is the path that
    must refuse it.)"""
    path = _bundle(seeds, tmp_path)
    _edit_info(path, lambda i: i.__setitem__("gridsize", 10 ** 6))
    _assert_cli_error(_cli("infer", "--model", path, "--data", seeds.npz, "--out", tmp_path / "out"), path)
    assert not (tmp_path / "out").exists()
