"""Hostile files: fuzz every reader with seeded mutations of valid files.

Readers: ``load_dataset`` on a PtychoPINN NPZ, our HDF5 layout and a ptychodus product
(+ its diffraction file; ``read_ptychodus`` with an explicit diffraction path too),
``lazy=True`` or not, and ``load_bundle`` on a model bundle (a copy of the shipped sample).

Each case copies the valid seed files, mutates them (seeded: ``numpy.random.default_rng``
of (seed, format, case), so any case can be replayed alone with ``--case``) and calls the
reader. Mutations: byte level (truncate, flip bytes / bits, zero a block, append garbage)
and structure level (keys removed or added, wrong dtypes: strings, structured, object
arrays that would need pickle, wrong shapes and ndim, empty arrays, NaN/Inf, negative and
huge values, .npy headers and HDF5 datasets declaring enormous shapes with no data behind
them (chunked, contiguous, virtual, external storage), links, attributes; bundle.json fields
removed / retyped / huge, probe and weights files rewritten, safetensors headers claiming
huge lengths), each re-signed (checksums updated) where the bundle would otherwise stop at
the checksum.

A case passes when the reader either returns a valid result (a dataset whose arrays are
finite with consistent shapes, a lazy one read through; a bundle with a finite probe and
network) or raises ``UserError`` with a one-line message < 500 characters naming the file.
A fifth of the cases (``INFO_FRACTION``) then also run ``ptycho-fast info`` on the same
files (``info.describe``, its text and JSON output), which must likewise return or raise
such a ``UserError``.
Anything else fails: another exception type, > 5 s, > 500 MB allocated (tracemalloc peak
or RSS growth), a pickled payload executed (it would create a marker file). The run holds
the address space to its start + ``MEMORY_CAP`` (a runaway allocation becomes a
MemoryError, i.e. a failure, not a swapping machine), interrupts a case stuck in Python
after ``SOFT_TIMEOUT_S`` and aborts the process with a traceback of a case stuck in C
after ``HARD_TIMEOUT_S``.

    python benchmarks/fuzz_readers.py --per-format 1000 --seed 0
    python benchmarks/fuzz_readers.py --per-format 1000 --seed 0 --fork  # a segfault is a failure
    python benchmarks/fuzz_readers.py --format h5 --case 17 --seed 0     # replay one case

``tests/test_fuzz_readers.py`` runs a few hundred cases per format with the same engine.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import io
import json
import os
import resource
import shutil
import signal
import struct
import sys
import tempfile
import time
import tracemalloc
import traceback
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

FORMATS = ("npz", "h5", "ptychodus", "bundle")
SLOW_S = 5.0                 # a case slower than this fails
SOFT_TIMEOUT_S = 10.0        # a case still in Python after this is interrupted (fails)
HARD_TIMEOUT_S = 60.0        # a case stuck in C code this long aborts the process
MAX_ALLOC = 500 * 2 ** 20    # tracemalloc peak / RSS growth per case
MEMORY_CAP = 2 * 2 ** 30     # address space allowed beyond the start of the run
MAX_MESSAGE = 500

#: share of the cases whose mutated files are also described by ``ptycho-fast info``
#: (``info.describe``, its text and its JSON): drawn per case after the mutation
INFO_FRACTION = 0.2


# ============================================================================ seeds
@dataclass
class Seeds:
    """Valid files every mutation starts from (built once per run)."""
    root: Path
    npz: Path = None
    npz_compressed: Path = None
    h5: Path = None
    product: Path = None
    diffraction: Path = None
    bundle: Path = None
    cache: dict = field(default_factory=dict)


def build_seeds(root: Path, n_patterns: int = 16, N: int = 16) -> Seeds:
    from ptycho_fast.data import save_dataset, write_npz
    from ptycho_fast.simulate import simulate

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    ds = simulate(n_patterns=n_patterns, N=N, seed=0)
    ds.scan_index = np.arange(n_patterns, dtype=np.int64) * 2
    ds.positions_start = ds.positions + 0.25
    s = Seeds(root)
    s.npz = save_dataset(ds, root / "seed.npz")
    s.npz_compressed = write_npz(ds, root / "seed_c.npz", compressed=True)
    s.h5 = save_dataset(ds, root / "seed.h5")
    s.product, s.diffraction = save_dataset(ds, root / "product.h5", "ptychodus")
    sample = Path(__file__).resolve().parents[1] / "ptycho_fast" / "sample" / "model"
    s.bundle = root / "bundle"
    shutil.copytree(sample, s.bundle)
    return s


# ============================================================================ helpers
def _cached(seeds: Seeds, key: str, make):
    if key not in seeds.cache:
        seeds.cache[key] = make()
    return seeds.cache[key]


def _choice(rng, items):
    items = list(items)
    return items[int(rng.integers(len(items)))]


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=True)
    return buf.getvalue()


def npy_header(descr, shape, fortran=False, version=1) -> bytes:
    """A hand-made .npy header (any descr / shape, even ones numpy would never write)."""
    shape = shape if isinstance(shape, str) else repr(tuple(shape))  # a string: written as is
    text = "{'descr': %r, 'fortran_order': %r, 'shape': %s, }" % (descr, fortran, shape)
    prefix = 10 if version == 1 else 12
    pad = (64 - (prefix + len(text) + 1) % 64) % 64
    text = (text + " " * pad + "\n").encode("latin1")
    if version == 1:
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text
    return b"\x93NUMPY" + bytes([version, 0]) + struct.pack("<I", len(text)) + text


class Pickled:
    """An object whose unpickling would create the marker file: it must never happen."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


HUGE_SHAPES = [(10 ** 9, 64, 64), (2 ** 62,), (10 ** 6, 16, 16), (2 ** 31, 2 ** 31, 4),
               (10 ** 30, 16, 16), (-1, 16, 16), (16, -16, 16), (0, 16, 16), (3 * 10 ** 5, 32, 32)]


def _random_numeric_dtype(rng):
    return np.dtype(_choice(rng, ["?", "i1", "u1", "<i2", ">u2", "<i4", "<i8", ">i8", "<u8", "<f2",
                                  "<f4", ">f4", "<f8", "<c8", ">c16", "<c16"]))


def _random_shape(rng, size=None):
    ndim = int(rng.integers(0, 5))
    if size is None:
        return tuple(int(v) for v in rng.integers(0, 5, ndim))
    # a shape with the same number of elements
    dims = []
    rest = size
    for _ in range(max(ndim - 1, 0)):
        divs = [d for d in range(1, min(rest, 64) + 1) if rest % d == 0]
        d = _choice(rng, divs)
        dims.append(d)
        rest //= d
    dims.append(rest)
    rng.shuffle(dims)
    return tuple(dims)


# ============================================================================ array-level mutations
# Each takes (rng, arrays: dict name -> ndarray, key, ctx) and mutates ``arrays`` in place;
# ``ctx.storable(arr)`` says whether the container can hold the array (HDF5: no unicode,
# no pickles, no datetimes). Returns a short description.

def _pick_key(rng, arrays, prefer=()):
    keys = sorted(arrays)
    if prefer and rng.random() < 0.6:
        pref = [k for k in prefer if k in arrays]
        if pref:
            return _choice(rng, pref)
    return _choice(rng, keys)


def a_drop_key(rng, arrays, key, ctx):
    del arrays[key]
    return f"drop {key}"


def a_extra_key(rng, arrays, key, ctx):
    name = _choice(rng, ctx.optional_keys + ["extra", "diff3d", "x" * 200, "probe_modes",
                                             "__init__", "a/b"])
    arrays[name] = _random_array(rng, ctx)
    return f"extra {name} {arrays[name].dtype}{arrays[name].shape}"


def _random_array(rng, ctx):
    kind = int(rng.integers(6))
    if kind == 0:
        return np.asarray(rng.normal(size=_random_shape(rng)), dtype=_random_numeric_dtype(rng))
    if kind == 1:
        return np.array([b"abc", b"defgh"])
    if kind == 2:
        return np.float64(rng.normal() * 10 ** int(rng.integers(-300, 300)))
    if kind == 3:
        return np.zeros((0,), dtype=np.float32)
    if kind == 4:
        return np.full(_random_shape(rng), np.nan)
    return np.arange(16, dtype=np.int64)


def a_dtype_string(rng, arrays, key, ctx):
    arr = arrays[key]
    text = np.asarray(arr).astype(str) if arr.size < 100_000 else np.array(["x"])
    if not ctx.unicode or rng.random() < 0.5:
        text = np.char.encode(text.astype("U32"), "ascii")
    arrays[key] = text
    return f"{key} as {text.dtype}"


def a_dtype_object(rng, arrays, key, ctx):
    if ctx.pickles:
        obj = np.empty(int(rng.integers(1, 4)), dtype=object)
        obj[:] = [Pickled(ctx.marker) for _ in range(obj.size)]
        if rng.random() < 0.5:  # a structured dtype with an object field: pickled too
            obj = np.array([(1.0, Pickled(ctx.marker))], dtype=[("a", "f8"), ("b", "O")])
        arrays[key] = obj
        return f"{key} as pickled object array"
    # HDF5 holds no pickles: variable-length strings, or pickle bytes as an opaque blob
    import pickle
    if rng.random() < 0.5:
        arrays[key] = np.array(["a", "bc"], dtype=h5py.string_dtype())
        return f"{key} as vlen str"
    blob = pickle.dumps(Pickled(ctx.marker))
    arrays[key] = np.frombuffer(blob, dtype=f"V{len(blob)}")
    return f"{key} as opaque pickle bytes"


def a_dtype_numeric(rng, arrays, key, ctx):
    arr = arrays[key]
    dt = _random_numeric_dtype(rng)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        src = arr.real if np.iscomplexobj(arr) and dt.kind != "c" else arr
        try:
            arrays[key] = np.asarray(src).astype(dt)
        except (TypeError, ValueError):
            arrays[key] = np.zeros(arr.shape, dt)
    return f"{key} {arr.dtype} -> {dt}"


def a_dtype_exotic(rng, arrays, key, ctx):
    arr = arrays[key]
    kind = int(rng.integers(4 if ctx.unicode else 2))
    if kind == 0:
        out = np.zeros(arr.shape, dtype=[("re", "<f4"), ("im", "<f4")])
    elif kind == 1:
        out = np.zeros(arr.shape, dtype="V8")
    elif kind == 2:
        out = np.zeros(arr.shape, dtype="datetime64[s]")
    else:
        out = np.zeros(arr.shape, dtype="timedelta64[ms]")
    arrays[key] = out
    return f"{key} as {out.dtype}"


def a_reshape(rng, arrays, key, ctx):
    arr = arrays[key]
    if arr.size == 0:
        return a_empty(rng, arrays, key, ctx)
    shape = _random_shape(rng, arr.size)
    if shape == arr.shape or (len(shape) == 0 and arr.size != 1):
        shape = (arr.size,) if arr.ndim != 1 else (1, arr.size)
    arrays[key] = arr.reshape(shape)
    return f"{key} {arr.shape} -> {shape}"


def a_transpose(rng, arrays, key, ctx):
    arr = arrays[key]
    if arr.ndim < 2:
        arrays[key] = arr.reshape(-1, 1) if arr.ndim == 1 else arr.reshape(1, 1)
    else:
        axes = list(rng.permutation(arr.ndim))
        arrays[key] = np.ascontiguousarray(np.transpose(arr, axes))
    return f"{key} transposed -> {arrays[key].shape}"


def a_slice(rng, arrays, key, ctx):
    arr = arrays[key]
    if arr.ndim == 0:
        arrays[key] = np.stack([arr, arr])
        return f"{key} scalar -> (2,)"
    axis = int(rng.integers(arr.ndim))
    n = arr.shape[axis]
    keep = int(rng.integers(0, max(n, 1) + 1))
    if rng.random() < 0.3:  # grow instead
        arrays[key] = np.concatenate([arr, np.take(arr, [0], axis=axis)], axis=axis)
    else:
        arrays[key] = np.take(arr, np.arange(keep), axis=axis)
    return f"{key} axis {axis} {arr.shape} -> {arrays[key].shape}"


def a_scalar(rng, arrays, key, ctx):
    arr = arrays[key]
    arrays[key] = arr.reshape(-1)[:1].reshape(()) if arr.size else np.zeros((), arr.dtype)
    return f"{key} -> scalar"


def a_empty(rng, arrays, key, ctx):
    arr = arrays[key]
    shape = list(arr.shape) or [0]
    shape[int(rng.integers(len(shape)))] = 0
    arrays[key] = np.zeros(shape, dtype=arr.dtype if arr.dtype.kind in "biufc" else "f4")
    return f"{key} -> empty {tuple(shape)}"


def _float_version(arr):
    if arr.dtype.kind in "fc":
        return arr.copy()
    if arr.dtype.kind in "biu":
        return arr.astype(np.float64)
    return np.zeros(arr.shape, np.float64)  # strings, structured, object: numbers instead


def a_nan_inf(rng, arrays, key, ctx):
    arr = _float_version(arrays[key])
    if arr.size == 0:
        return "nan_inf on empty"
    flat = arr.reshape(-1)
    n = int(rng.integers(1, min(flat.size, 5) + 1))
    where = rng.choice(flat.size, n, replace=False)
    flat[where] = _choice(rng, [np.nan, np.inf, -np.inf])
    if arr.dtype.kind == "c" and rng.random() < 0.5:
        flat[where] = complex(0, np.nan)
    arrays[key] = arr
    return f"{key} NaN/Inf at {n} places"


def a_negative(rng, arrays, key, ctx):
    arr = arrays[key]
    if arr.dtype.kind not in "iufc" or arr.size == 0:
        arrays[key] = -np.abs(_float_version(arr)) - 1 if arr.size else arr
        return f"{key} negated"
    if arr.dtype.kind == "u":
        arr = arr.astype(np.int64)
    arr = arr.copy()
    if rng.random() < 0.5:
        arr = -np.abs(arr) - 1
    else:
        flat = arr.reshape(-1)
        flat[rng.integers(flat.size)] = -1
    arrays[key] = arr
    return f"{key} negative values"


def a_huge_values(rng, arrays, key, ctx):
    arr = arrays[key]
    value = _choice(rng, [1e30, 1e38, 3.4e38, 1e300, 1.7e308, 2.0 ** 63, -1e300, 1e-320])
    if arr.dtype.kind in "iu" and rng.random() < 0.5:
        arrays[key] = np.full(arr.shape, np.iinfo(arr.dtype).max, dtype=arr.dtype)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arrays[key] = (_float_version(arr) * 0 + value) if arr.size else arr
    return f"{key} values {value:g}"


ARRAY_MUTATIONS = {
    "drop_key": a_drop_key, "extra_key": a_extra_key, "dtype_string": a_dtype_string,
    "dtype_object": a_dtype_object, "dtype_numeric": a_dtype_numeric, "dtype_exotic": a_dtype_exotic,
    "reshape": a_reshape, "transpose": a_transpose, "slice": a_slice, "scalar": a_scalar,
    "empty": a_empty, "nan_inf": a_nan_inf, "negative": a_negative, "huge_values": a_huge_values,
}


# ============================================================================ byte-level mutations
def b_truncate(rng, data: bytes):
    if rng.random() < 0.3:
        cut = int(rng.integers(0, min(len(data), 2048)))
    else:
        cut = int(rng.integers(0, len(data)))
    return data[:cut], f"truncate at {cut}/{len(data)}"


def b_flip_bytes(rng, data: bytes):
    buf = bytearray(data)
    n = int(rng.integers(1, 17))
    # half of the flips near the start: headers, superblocks, zip directories (end)
    for _ in range(n):
        r = rng.random()
        if r < 0.35:
            i = int(rng.integers(0, min(len(buf), 1024)))
        elif r < 0.5:
            i = int(rng.integers(max(0, len(buf) - 1024), len(buf)))
        else:
            i = int(rng.integers(0, len(buf)))
        buf[i] = int(rng.integers(256))
    return bytes(buf), f"flip {n} bytes"


def b_flip_bits(rng, data: bytes):
    buf = bytearray(data)
    n = int(rng.integers(1, 9))
    for _ in range(n):
        i = int(rng.integers(0, len(buf)))
        buf[i] ^= 1 << int(rng.integers(8))
    return bytes(buf), f"flip {n} bits"


def b_zero_block(rng, data: bytes):
    start = int(rng.integers(0, len(data)))
    length = int(rng.integers(1, 4097))
    buf = bytearray(data)
    buf[start:start + length] = bytes(len(buf[start:start + length]))
    return bytes(buf), f"zero {length} bytes at {start}"


def b_append(rng, data: bytes):
    n = int(rng.integers(1, 4097))
    return data + rng.bytes(n), f"append {n} bytes"


def b_int_field(rng, data: bytes):
    """Overwrite 4 or 8 bytes with a huge / negative / boundary integer (sizes, offsets)."""
    width = _choice(rng, [4, 8])
    value = _choice(rng, [2 ** (8 * width) - 1, 2 ** (8 * width - 1), 2 ** (8 * width - 1) - 1,
                          10 ** 9, 2 ** 31, len(data) + 1, 0])
    r = rng.random()
    i = int(rng.integers(0, min(len(data), 512))) if r < 0.5 else int(rng.integers(0, max(len(data) - width, 1)))
    buf = bytearray(data)
    buf[i:i + width] = value.to_bytes(width, "little")[: len(buf[i:i + width])]
    return bytes(buf), f"int{8 * width} {value} at {i}"


BYTE_MUTATIONS = {"truncate": b_truncate, "flip_bytes": b_flip_bytes, "flip_bits": b_flip_bits,
                  "zero_block": b_zero_block, "append": b_append, "int_field": b_int_field}


def mutate_bytes(rng, path: Path) -> tuple[str, str]:
    kind = _choice(rng, sorted(BYTE_MUTATIONS))
    data = path.read_bytes()
    if not data:
        return kind, "empty file"
    new, what = BYTE_MUTATIONS[kind](rng, data)
    path.write_bytes(new)
    return kind, what


# ============================================================================ containers
@dataclass
class Ctx:
    marker: Path
    unicode: bool          # the container holds numpy unicode / datetimes
    pickles: bool          # the container can hold pickled object arrays
    optional_keys: list


def npz_arrays(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def write_npz_members(path: Path, members: dict, compressed: bool) -> None:
    """members: name -> ndarray or raw bytes (a hand-made member)."""
    comp = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=comp) as zf:
        for name, value in members.items():
            data = value if isinstance(value, bytes) else npy_bytes(value)
            zf.writestr(name + ".npy", data)


@dataclass
class H5Node:
    data: np.ndarray | None = None
    attrs: dict = field(default_factory=dict)
    kw: dict = field(default_factory=dict)
    special: tuple | None = None   # ("soft", target) / ("external", file, path) / ("group",) / layout


def h5_snapshot(path: Path) -> tuple[dict, dict]:
    nodes = {}
    with h5py.File(path, "r") as f:
        root = dict(f.attrs)
        for k, d in f.items():
            kw = {}
            if d.chunks:
                kw = dict(chunks=d.chunks, compression=d.compression,
                          compression_opts=d.compression_opts, shuffle=d.shuffle)
            nodes[k] = H5Node(d[()], dict(d.attrs), kw)
    return root, nodes


def h5_write(path: Path, root: dict, nodes: dict) -> None:
    with h5py.File(path, "w") as f:
        for k, v in root.items():
            f.attrs[k] = v
        for name, node in nodes.items():
            sp = node.special
            if sp is None:
                data = node.data
                kw = dict(node.kw)
                chunks = kw.get("chunks")
                if np.size(data) == 0 or np.ndim(data) == 0:
                    kw = {}  # no chunks, hence no filters, for an empty array or a scalar
                elif isinstance(chunks, tuple) and (len(chunks) != np.ndim(data) or any(
                        c > n for c, n in zip(chunks, np.shape(data)))):
                    kw["chunks"] = True  # the seed's chunks no longer fit the mutated shape
                d = f.create_dataset(name, data=data, **kw)
            elif sp[0] == "soft":
                f[name] = h5py.SoftLink(sp[1])
                continue
            elif sp[0] == "external_link":
                f[name] = h5py.ExternalLink(sp[1], sp[2])
                continue
            elif sp[0] == "group":
                f.create_group(name).create_dataset("inside", data=np.zeros(3))
                continue
            elif sp[0] == "unwritten":
                _, shape, dtype, kw = sp
                d = f.create_dataset(name, shape=shape, dtype=dtype, **kw)
            elif sp[0] == "partial":
                _, shape, dtype, kw, block = sp
                d = f.create_dataset(name, shape=shape, dtype=dtype, **kw)
                d[: len(block)] = block
            elif sp[0] == "virtual":
                _, shape, dtype, source = sp
                layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
                layout[...] = h5py.VirtualSource(source, "data", shape=shape)
                d = f.create_virtual_dataset(name, layout, fillvalue=None if np.dtype(dtype).kind == "c" else 0)
            elif sp[0] == "external":
                _, shape, dtype, target = sp
                d = f.create_dataset(name, shape=shape, dtype=dtype,
                                     external=[(target, 0, h5py.h5f.UNLIMITED)])
            else:
                raise AssertionError(sp)
            for k, v in node.attrs.items():
                d.attrs[k] = v


def h5_huge(rng, nodes, key, path: Path):
    node = nodes.get(key) or H5Node()
    old = np.asarray(node.data) if node.data is not None else np.zeros((4, 16, 16), np.float32)
    dtype = old.dtype if old.dtype.kind in "biufc" else np.float32
    N = old.shape[-1] if old.ndim else 16
    variant = _choice(rng, ["chunked", "chunked", "contiguous", "partial", "virtual", "external",
                            "external_self", "fill_nan"])
    P = _choice(rng, [10 ** 9, 10 ** 7, 10 ** 6, 2 ** 20, 5000])
    shape = (P, N, N) if old.ndim >= 2 else (P,)
    new = H5Node(attrs=node.attrs)
    if variant == "chunked":
        chunks = (1,) + shape[1:] if len(shape) > 1 else (min(P, 4096),)
        new.special = ("unwritten", shape, dtype, dict(chunks=chunks, compression=_choice(rng, [None, "gzip"])))
    elif variant == "contiguous":
        shape = (min(P, 2 ** 20),) + shape[1:]
        new.special = ("unwritten", shape, dtype, {})
    elif variant == "fill_nan":
        shape = old.shape or (1,)
        new.special = ("unwritten", shape, np.float32, dict(fillvalue=np.nan, chunks=True))
    elif variant == "partial":
        chunks = (1,) + shape[1:] if len(shape) > 1 else (min(P, 4096),)
        block = old.astype(dtype)[:1] if old.ndim else np.zeros((1,), dtype)
        if block.shape[1:] != shape[1:]:
            block = np.zeros((1,) + shape[1:], dtype)
        new.special = ("partial", shape, dtype, dict(chunks=chunks), block)
    elif variant == "virtual":
        new.special = ("virtual", shape, dtype, _choice(rng, ["missing.h5", str(path)]))
    elif variant == "external":
        new.special = ("external", shape, dtype, _choice(rng, ["/dev/zero", "missing.raw"]))
    else:
        new.special = ("external", (min(P, 10 ** 6),) + shape[1:], dtype, path.name)
    nodes[key] = new
    return f"{key} declared {new.special[1]} ({variant})"


def h5_link(rng, nodes, key, path):
    variant = _choice(rng, ["soft_dangling", "soft_other", "external_missing", "external_self",
                            "group"])
    node = H5Node()
    if variant == "soft_dangling":
        node.special = ("soft", "/nowhere")
    elif variant == "soft_other":
        node.special = ("soft", "/" + _choice(rng, sorted(k for k in nodes if k != key) or ["x"]))
    elif variant == "external_missing":
        node.special = ("external_link", "missing_file.h5", "/data")
    elif variant == "external_self":
        node.special = ("external_link", path.name, "/" + key)
    else:
        node.special = ("group",)
    nodes[key] = node
    return f"{key} -> {variant}"


ATTR_VALUES = [
    lambda rng: "text", lambda rng: b"bytes", lambda rng: np.nan, lambda rng: np.inf,
    lambda rng: -1.0, lambda rng: 0.0, lambda rng: 1e308, lambda rng: np.arange(3.0),
    lambda rng: np.int64(2 ** 62), lambda rng: h5py.Empty("f8"), lambda rng: 2,
    lambda rng: np.array([b"a", b"b"]), lambda rng: complex(1, 1), lambda rng: "../" * 30 + "etc/passwd",
    lambda rng: "/dev/zero", lambda rng: "", lambda rng: ".", lambda rng: True,
]


def h5_attr(rng, root, nodes, names):
    """Change, remove or add an attribute of the root or of a dataset."""
    if rng.random() < 0.6 or not nodes:
        target, where = root, "/"
    else:
        k = _choice(rng, sorted(k for k in nodes if nodes[k].special is None) or sorted(nodes))
        target, where = nodes[k].attrs, k
    name = _choice(rng, sorted(set(target) | set(names)))
    if name in target and rng.random() < 0.25:
        del target[name]
        return f"attr {where}:{name} removed"
    target[name] = _choice(rng, ATTR_VALUES)(rng)
    return f"attr {where}:{name} = {target[name]!r}"[:120]


def h5_layout(rng, nodes, key):
    node = nodes[key]
    if node.special is not None or node.data is None or np.ndim(node.data) == 0:
        return f"{key} layout unchanged"
    data = np.asarray(node.data)
    choice = _choice(rng, ["contiguous", "chunk1", "lzf", "fletcher32", "scaleoffset", "big_chunk"])
    kw = {"contiguous": {}, "chunk1": dict(chunks=(1,) * data.ndim), "lzf": dict(compression="lzf"),
          "fletcher32": dict(fletcher32=True, chunks=True), "big_chunk": dict(chunks=data.shape or None),
          "scaleoffset": dict(scaleoffset=4) if data.dtype.kind in "f" else {}}[choice]
    node.kw = kw
    return f"{key} layout {choice}"


# ============================================================================ cases
@dataclass
class Result:
    format: str
    case: int
    kind: str
    detail: str
    outcome: str = ""           # "load", "error", "fail" (or "skip": not read)
    seconds: float = 0.0
    alloc: int = 0              # tracemalloc peak (bytes)
    rss: int = 0                # ru_maxrss growth (bytes)
    message: str = ""
    info: bool = False          # ``ptycho-fast info`` described the files too


class CaseTimeout(BaseException):
    """Raised by the soft timer: a BaseException, so readers' ``except Exception`` keep it."""


class Workspace:
    """Per-format working copy of the seed files; each case restores it, mutates, reads."""

    def __init__(self, fmt: str, seeds: Seeds, root: Path):
        self.fmt, self.seeds = fmt, seeds
        self.dir = Path(root) / fmt
        self.marker = Path(root) / "PICKLE_EXECUTED"
        self.marker.unlink(missing_ok=True)

    def reset(self) -> None:
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        s = self.seeds
        if self.fmt == "npz":
            self.file = self.dir / "data.npz"
        elif self.fmt == "h5":
            self.file = self.dir / "data.h5"
            shutil.copy(s.h5, self.file)
        elif self.fmt == "ptychodus":
            self.file = self.dir / s.product.name
            self.diffraction = self.dir / s.diffraction.name
            shutil.copy(s.product, self.file)
            shutil.copy(s.diffraction, self.diffraction)
        else:
            self.file = self.dir / "bundle"
            shutil.copytree(s.bundle, self.file)

    def names(self) -> list[str]:
        """Strings of which an error message must contain one (the file it is about)."""
        if self.fmt == "ptychodus":
            return [str(self.file), str(self.diffraction)]
        return [str(self.file)]


# ---------------------------------------------------------------------------- per format
NPZ_OPTIONAL = ["objectGuess", "scan_index", "xcoords_start", "ycoords_start", "photons_per_pattern",
                "pixel_size_m", "energy_eV", "distance_m", "probe_calibrated"]
NPZ_REQUIRED = ["diffraction", "probeGuess", "xcoords", "ycoords"]
H5_REQUIRED = ["diffraction", "probe", "xcoords", "ycoords"]
H5_OPTIONAL = ["object", "scan_index", "xcoords_start", "ycoords_start"]
H5_ATTRS = ["format", "format_version", "photons_per_pattern", "pixel_size_m", "energy_eV",
            "distance_m", "probe_calibrated"]
PRODUCT_KEYS = ["probe_position_x_m", "probe_position_y_m", "probe_position_indexes", "probe", "object"]
PRODUCT_ATTRS = ["ptycho_fast_diffraction_file", "ptycho_fast_placeholder_object", "probe_energy_eV",
                 "detector_object_distance_m", "probe_photon_count", "pixel_width_m",
                 "pixel_height_m", "center_x_m", "center_y_m"]
DIFFRACTION_KEYS = ["patterns", "indexes", "bad_pixels"]


def _structure(rng, arrays, ctx, prefer) -> list[str]:
    out = []
    for _ in range(int(rng.integers(1, 3))):
        if not arrays:
            break
        kind = _choice(rng, sorted(ARRAY_MUTATIONS))
        key = _pick_key(rng, arrays, prefer)
        out.append((kind, ARRAY_MUTATIONS[kind](rng, arrays, key, ctx)))
    return out


def mutate_npz(rng, ws: Workspace) -> tuple[str, str, dict]:
    s = ws.seeds
    compressed = rng.random() < 0.3
    seed = s.npz_compressed if compressed else s.npz
    opts = {"lazy": bool(rng.random() < 0.5)}
    if rng.random() < 0.35:
        shutil.copy(seed, ws.file)
        kind, what = mutate_bytes(rng, ws.file)
        return kind, what + (" (compressed)" if compressed else ""), opts
    arrays = dict(_cached(s, "npz", lambda: npz_arrays(s.npz)))
    ctx = Ctx(ws.marker, True, True, NPZ_OPTIONAL)
    r = rng.random()
    members: dict = {}
    if r < 0.2:  # a hand-made .npy header: huge / overflowing / negative shapes, odd dtypes
        key = _choice(rng, NPZ_REQUIRED + ["objectGuess", "scan_index", "energy_eV"])
        arr = arrays.get(key, np.zeros(4))
        descr = np.lib.format.dtype_to_descr(arr.dtype)
        v = rng.random()
        if v < 0.6:
            shape = _choice(rng, HUGE_SHAPES)
        elif v < 0.8:
            shape = arr.shape
            descr = _choice(rng, ["|O", "<U2000000000", "|V999999999999", "<f4", ">c16", "[('a', '<f8')]",
                                  "xyz", [("a", "|O")], "<M8[s]", "|S100000000"])
        else:
            shape = _choice(rng, [(2 ** 64,), (1.5, 2), "(16,16)", ()])
        header = npy_header(descr, shape, fortran=bool(rng.random() < 0.2),
                            version=_choice(rng, [1, 1, 2, 3]))
        members = {k: v for k, v in arrays.items()}
        members[key] = header + arr.tobytes()
        kinds = [("npy_header", f"{key} header descr={descr!r} shape={shape!r}")]
    elif r < 0.25:  # a member that is no .npy at all, or a duplicate member name
        key = _choice(rng, NPZ_REQUIRED)
        members = dict(arrays)
        if rng.random() < 0.5:
            members[key] = rng.bytes(int(rng.integers(0, 2000)))
            kinds = [("raw_member", f"{key} raw bytes")]
        else:
            write_npz_members(ws.file, members, compressed)
            with zipfile.ZipFile(ws.file, "a") as zf, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                zf.writestr(key + ".npy", npy_bytes(np.zeros((3, 5), np.float32)))
            return "duplicate_member", key, opts
    else:
        kinds = _structure(rng, arrays, ctx, NPZ_REQUIRED)
        members = arrays
    write_npz_members(ws.file, members, compressed)
    kind = "+".join(k for k, _ in kinds)
    return kind, "; ".join(d for _, d in kinds), opts


def _h5_structure(rng, path: Path, root, nodes, required, optional, attr_names,
                  marker: Path) -> list[tuple[str, str]]:
    plain = {k: n.data for k, n in nodes.items() if n.special is None}
    ctx = Ctx(marker, False, False, optional)
    r = rng.random()
    if r < 0.15:
        key = _choice(rng, required) if rng.random() < 0.8 else _choice(rng, sorted(nodes))
        return [("huge_declared", h5_huge(rng, nodes, key, path))]
    if r < 0.25:
        key = _choice(rng, required + optional)
        return [("link", h5_link(rng, nodes, key, path))]
    if r < 0.4:
        return [("attr", h5_attr(rng, root, nodes, attr_names))]
    if r < 0.45:
        key = _choice(rng, sorted(k for k in nodes if nodes[k].special is None))
        return [("layout", h5_layout(rng, nodes, key))]
    out = _structure(rng, plain, ctx, required)
    for k in list(nodes):
        if k not in plain:
            del nodes[k]
    for k, v in plain.items():
        if k in nodes:
            nodes[k].data = v
        else:
            nodes[k] = H5Node(v)
    return out


def _h5_rewrite(rng, path: Path, snapshot, required, optional, attr_names, marker: Path):
    root, nodes = snapshot
    root = dict(root)
    nodes = {k: H5Node(n.data, dict(n.attrs), dict(n.kw)) for k, n in nodes.items()}
    kinds = _h5_structure(rng, path, root, nodes, required, optional, attr_names, marker)
    try:
        h5_write(path, root, nodes)
    except (TypeError, ValueError) as exc:  # something HDF5 cannot hold: the case is skipped
        raise _Unwritable(f"{kinds}: {exc}") from None
    return kinds


class _Unwritable(Exception):
    pass


def mutate_h5(rng, ws: Workspace) -> tuple[str, str, dict]:
    opts = {"lazy": bool(rng.random() < 0.5)}
    if rng.random() < 0.35:
        kind, what = mutate_bytes(rng, ws.file)
        return kind, what, opts
    snap = _cached(ws.seeds, "h5", lambda: h5_snapshot(ws.seeds.h5))
    kinds = _h5_rewrite(rng, ws.file, snap, H5_REQUIRED, H5_OPTIONAL, H5_ATTRS, ws.marker)
    return "+".join(k for k, _ in kinds), "; ".join(d for _, d in kinds), opts


def mutate_ptychodus(rng, ws: Workspace) -> tuple[str, str, dict]:
    explicit = bool(rng.random() < 0.3)
    opts = {"diffraction_path": str(ws.diffraction) if explicit else None}
    product = rng.random() < 0.6
    target = ws.file if product else ws.diffraction
    prefix = "product:" if product else "diffraction:"
    if rng.random() < 0.35:
        kind, what = mutate_bytes(rng, target)
        return prefix + kind, what, opts
    seed = ws.seeds.product if product else ws.seeds.diffraction
    snap = _cached(ws.seeds, prefix, lambda: h5_snapshot(seed))
    req = PRODUCT_KEYS if product else DIFFRACTION_KEYS
    attrs = PRODUCT_ATTRS if product else ["detector_pixel_width_m", "units"]
    kinds = _h5_rewrite(rng, target, snap, req, ["loss_epochs", "object_layer_spacing_m"] if product else [],
                        attrs, ws.marker)
    return prefix + "+".join(k for k, _ in kinds), "; ".join(d for _, d in kinds), opts


# ---------------------------------------------------------------------------- bundles
def _sha(path: Path) -> str:
    import hashlib
    return hashlib.sha256(path.read_bytes()).hexdigest()


def resign(bundle: Path, what: str) -> None:
    """Update bundle.json's checksum of ``what`` ('probe' / 'weights') to the file's."""
    path = bundle / "bundle.json"
    try:
        info = json.loads(path.read_text())
        node = info[what]
        node["sha256"] = _sha(bundle / node["file"])
    except Exception:  # noqa: BLE001 - bundle.json itself may be mutated; then nothing to do
        return
    path.write_text(json.dumps(info, indent=2))


def _json_paths(node, prefix=""):
    if isinstance(node, dict):
        for k, v in node.items():
            p = f"{prefix}.{k}" if prefix else k
            yield p
            yield from _json_paths(v, p)


def _json_parent(info, dotted):
    parts = dotted.split(".")
    node = info
    for p in parts[:-1]:
        node = node[p]
    return node, parts[-1]


JSON_VALUES = [None, True, False, 0, -1, 1, 2, 3, 16, 10 ** 6, 10 ** 12, 2 ** 63, 10 ** 400, -10 ** 400,
               1e308, 1e-308, 0.5, -0.0, float("nan"), float("inf"), float("-inf"), "", "64", "nan",
               "sigmoid", "probe", "../bundle.json", "/etc/passwd", "probe.npy", "weights.safetensors",
               "torch", [], [64, 64], [10 ** 9, 64, 64], [-1, 64], {}, {"a": 1}, "x" * 1000]


def _huge_value(rng):
    return _choice(rng, [10 ** 6, 10 ** 9, 10 ** 12, 2 ** 63, 2 ** 64 + 1, 10 ** 400, 1e308,
                         float("inf"), -10 ** 18, 4096])


def mutate_bundle(rng, ws: Workspace) -> tuple[str, str, dict]:
    b = ws.file
    info_path = b / "bundle.json"
    r = rng.random()
    if r < 0.3:  # bytes of one file, re-signed half the time
        name = _choice(rng, ["bundle.json", "probe.npy", "weights.safetensors", "weights.safetensors"])
        kind, what = mutate_bytes(rng, b / name)
        signed = name != "bundle.json" and rng.random() < 0.6
        if signed:
            resign(b, "probe" if name == "probe.npy" else "weights")
        return f"{name}:{kind}", what + (" (re-signed)" if signed else ""), {}
    info = json.loads(info_path.read_text())
    if r < 0.6:  # bundle.json fields
        paths = list(_json_paths(info))
        dotted = _choice(rng, paths)
        parent, last = _json_parent(info, dotted)
        v = rng.random()
        if v < 0.25:
            del parent[last]
            kind, what = "json_drop", dotted
        elif v < 0.6:
            parent[last] = _choice(rng, JSON_VALUES)
            kind, what = "json_type", f"{dotted} = {parent[last]!r}"[:100]
        elif v < 0.85:
            key = _choice(rng, ["N", "gridsize", "network.width", "network.filters", "probe.shape",
                                "object_big.local_canvas_size", "intensity_scale", "probe_gain",
                                "format_version"])
            parent, last = _json_parent(info, key)
            value = _huge_value(rng)
            if key in ("network.filters", "probe.shape"):
                value = [value] * (3 if key == "network.filters" else 2)
            parent[last] = value
            kind, what = "json_huge", f"{key} = {value!r}"[:100]
        else:
            parent[_choice(rng, ["extra", "N ", "__proto__"])] = _choice(rng, JSON_VALUES)
            kind, what = "json_extra", dotted
        text = json.dumps(info, indent=2)
        w = rng.random()
        if w < 0.05:
            text = "[" * 100_000 + "]" * 100_000
            kind, what = "json_deep", "nested 100000 deep"
        elif w < 0.08:
            text = json.dumps(_choice(rng, [[], "text", 3, None]))
            kind, what = "json_not_object", text
        elif w < 0.1:
            text = '{"format": "ptycho_fast.model_bundle", "N": ' + "9" * 100_000 + "}"
            kind, what = "json_long_number", "100000 digits"
        info_path.write_text(text)
        return kind, what, {}
    if r < 0.75:  # the probe file, re-signed
        probe = np.load(b / "probe.npy")
        v = rng.random()
        if v < 0.2:
            obj = np.empty(2, dtype=object)
            obj[:] = [Pickled(ws.marker), Pickled(ws.marker)]
            (b / "probe.npy").write_bytes(npy_bytes(obj))
            kind = "probe_pickle"
        elif v < 0.45:
            shape = _choice(rng, HUGE_SHAPES)
            (b / "probe.npy").write_bytes(npy_header("<c8", shape) + probe.tobytes())
            if rng.random() < 0.5:
                info["probe"]["shape"] = list(shape)
                info_path.write_text(json.dumps(info, indent=2))
            kind = f"probe_huge_header {shape}"
        else:
            arrays = {"probe": probe}
            m = _choice(rng, ["dtype_numeric", "dtype_string", "reshape", "slice", "nan_inf",
                              "empty", "scalar", "huge_values", "dtype_exotic"])
            ARRAY_MUTATIONS[m](rng, arrays, "probe", Ctx(ws.marker, True, True, []))
            (b / "probe.npy").write_bytes(npy_bytes(arrays["probe"]))
            if rng.random() < 0.5:
                info["probe"]["shape"] = list(np.shape(arrays["probe"]))
                info_path.write_text(json.dumps(info, indent=2))
            kind = f"probe_{m}"
        resign(b, "probe")
        return kind.split(" ")[0], kind, {}
    return _mutate_weights(rng, ws, info)


def _mutate_weights(rng, ws, info) -> tuple[str, str, dict]:
    import torch
    from safetensors.torch import load_file, save_file
    b = ws.file
    wpath = b / "weights.safetensors"
    v = rng.random()
    if v < 0.3:  # the safetensors header
        data = wpath.read_bytes()
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + n])
        w = rng.random()
        if w < 0.3:
            new_n = _choice(rng, [2 ** 64 - 1, 2 ** 63, 10 ** 9, 100_000_001, len(data), n + 1, 0])
            data = struct.pack("<Q", new_n) + data[8:]
            what = f"header length {new_n}"
        else:
            name = _choice(rng, sorted(k for k in header if k != "__metadata__"))
            t = header[name]
            field_ = _choice(rng, ["shape", "data_offsets", "dtype"])
            if field_ == "shape":
                t["shape"] = _choice(rng, [[10 ** 9, 64, 64], [2 ** 62, 2 ** 62], [-1], [], [0]])
            elif field_ == "data_offsets":
                t["data_offsets"] = _choice(rng, [[0, 2 ** 63], [t["data_offsets"][0], 10 ** 12],
                                                  [5, 3], [-1, 4]])
            else:
                t["dtype"] = _choice(rng, ["I64", "BOOL", "F16", "F64", "U8", "XYZ", "F8_E4M3"])
            body = json.dumps(header).encode()
            body += b" " * ((8 - len(body) % 8) % 8)
            data = struct.pack("<Q", len(body)) + body + data[8 + n:]
            what = f"header {name}.{field_} = {t[field_]}"
        wpath.write_bytes(data)
        kind = "weights_header"
    elif v < 0.45:  # a torch pickle that would execute code
        import pickle
        (b / "weights.pt").write_bytes(pickle.dumps({"w": Pickled(ws.marker)}))
        if rng.random() < 0.5:
            torch.save({"w": torch.zeros(2), "evil": Pickled(ws.marker)}, b / "weights.pt")
        info["weights"].update(file="weights.pt", format="torch")
        (b / "bundle.json").write_text(json.dumps(info, indent=2))
        kind, what = "weights_pickle", "weights.pt with a code-executing pickle"
    else:
        state = dict(load_file(str(wpath)))
        name = _choice(rng, sorted(state))
        m = _choice(rng, ["drop", "extra", "shape", "int", "half", "double", "nan", "huge_shape"])
        t = state[name]
        if m == "drop":
            del state[name]
        elif m == "extra":
            state["extra.weight"] = torch.zeros(3)
        elif m == "shape":
            state[name] = t.reshape(-1)[: max(t.numel() - 1, 0)].clone()
        elif m == "int":
            state[name] = t.to(torch.int32)
        elif m == "half":
            state[name] = t.to(torch.float16)
        elif m == "double":
            state[name] = t.to(torch.float64)
        elif m == "nan":
            t = t.clone()
            t.view(-1)[0] = float("nan")
            state[name] = t
        else:
            state[name] = torch.zeros((t.shape[0] * 256,) + tuple(t.shape[1:]))
        save_file(state, str(wpath))
        kind, what = "weights_state", f"{name}: {m}"
    if rng.random() < 0.9:
        resign(b, "weights")
    return kind, what, {}


MUTATE = {"npz": mutate_npz, "h5": mutate_h5, "ptychodus": mutate_ptychodus, "bundle": mutate_bundle}


# ---------------------------------------------------------------------------- reading and checking
def _check_dataset(ds) -> None:
    """A loaded dataset must be finite with consistent shapes (a lazy one is read through)."""
    P, N = ds.n_patterns, ds.N
    assert ds.diffraction.shape == (P, N, N), ds.diffraction.shape
    for _, block in ds.iter_batches(64):
        assert block.dtype == np.float32 and block.shape[1:] == (N, N)
        assert np.isfinite(block).all() and (block >= 0).all()
    assert ds.positions.shape == (P, 2) and np.isfinite(ds.positions).all()
    assert ds.probe.shape[-2:] == (N, N) and ds.probe.ndim in (2, 3) and np.isfinite(ds.probe).all()
    if ds.object is not None:
        assert ds.object.ndim == 2 and np.isfinite(ds.object).all()
    if ds.scan_index is not None:
        assert ds.scan_index.shape == (P,) and ds.scan_index.dtype == np.int64
    if ds.positions_start is not None:
        assert ds.positions_start.shape == (P, 2) and np.isfinite(ds.positions_start).all()
    for k, v in ds.metadata.to_dict().items():
        assert np.isfinite(v), k


def _check_bundle(b) -> None:
    import torch
    from ptycho_fast.model import SUPPORTED_N
    assert b.N in SUPPORTED_N
    assert b.probe.shape[-2:] == (b.N, b.N) and np.isfinite(b.probe).all()
    assert np.isfinite(b.intensity_scale) and b.intensity_scale > 0
    assert np.isfinite(b.probe_gain) and b.probe_gain > 0
    assert all(bool(torch.isfinite(p).all()) for p in b.model.parameters())


def read_case(ws: Workspace, opts: dict) -> None:
    """Call the reader of ``ws.fmt`` and check what it returns (raises UserError when the
    file is refused)."""
    from ptycho_fast.bundle import load_bundle
    from ptycho_fast.data import load_dataset, read_ptychodus
    if ws.fmt == "bundle":
        _check_bundle(load_bundle(ws.file))
        return
    if ws.fmt == "ptychodus" and opts.get("diffraction_path"):
        ds = read_ptychodus(ws.file, diffraction_path=opts["diffraction_path"])
    else:
        ds = load_dataset(ws.file, lazy=opts.get("lazy", False))
    with ds:
        _check_dataset(ds)


def info_case(ws: Workspace) -> None:
    """``ptycho-fast info`` on the case's file: describe it, render its text and its JSON."""
    from ptycho_fast import info
    d = info.describe(ws.file)
    info.format_text(d)
    info.to_json(d)


def _message_ok(message: str, names: list[str]) -> str | None:
    """Why an error message is not acceptable, or None."""
    if "\n" in message or "\r" in message:
        return "message spans several lines"
    if len(message) >= MAX_MESSAGE:
        return f"message is {len(message)} characters long"
    if not any(n in message for n in names):
        return "message does not name the file"
    return None


def _where(exc) -> str:
    """The innermost frames of ptycho_fast (and the very last frame) of an exception."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "ptycho_fast" in f.filename and "benchmarks" not in f.filename]
    picked = ours[-2:] + ([frames[-1]] if frames and (not ours or frames[-1] is not ours[-1]) else [])
    return " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(picked))


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _attempt(ws: Workspace, fn) -> tuple[str, str]:
    """(outcome, message) of calling ``fn``: "load" when it returns, "error" for a
    ``UserError`` with an acceptable message, "fail" for anything else."""
    from ptycho_fast.files import UserError
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn()
        return "load", ""
    except UserError as exc:
        why = _message_ok(str(exc), ws.names())
        return ("error", str(exc)) if why is None else ("fail", f"{why}: {exc!s}"[:2000])
    except CaseTimeout:
        return "fail", f"still running after {SOFT_TIMEOUT_S} s (interrupted)"
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - any other exception is the finding
        return "fail", f"{type(exc).__name__}: {str(exc)[:300]} | at {_where(exc)}"


def run_case(ws: Workspace, index: int, seed: int, skip_kinds: tuple[str, ...] = (),
             info_fraction: float = INFO_FRACTION) -> Result:
    """Mutate the seed files (case ``index``), read them (and, for ``info_fraction`` of the
    cases, describe them with ``ptycho-fast info``); a mutation whose kind contains one of
    ``skip_kinds`` is not read (outcome "skip")."""
    fmt_index = FORMATS.index(ws.fmt)
    rng = np.random.default_rng([seed, fmt_index, index])
    ws.reset()
    try:
        kind, detail, opts = MUTATE[ws.fmt](rng, ws)
    except _Unwritable as exc:
        return Result(ws.fmt, index, "unwritable", str(exc)[:200], "skip")
    except Exception as exc:  # noqa: BLE001 - a bug of this script, not of a reader
        return Result(ws.fmt, index, "mutation_error", f"{type(exc).__name__}: {exc}"[:300], "skip")
    describe = bool(rng.random() < info_fraction)  # drawn after the mutation: it is unchanged
    res = Result(ws.fmt, index, kind, f"{detail} {opts}" if opts else detail, info=describe)
    if any(k in kind for k in skip_kinds):
        res.outcome = "skip"
        return res
    rss0 = _maxrss()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    _arm_soft_timer(SOFT_TIMEOUT_S)
    faulthandler.dump_traceback_later(HARD_TIMEOUT_S, exit=True, file=sys.__stderr__)
    try:
        res.outcome, res.message = _attempt(ws, lambda: read_case(ws, opts))
        if describe and res.outcome != "fail":
            outcome, message = _attempt(ws, lambda: info_case(ws))
            if outcome == "fail":
                res.outcome, res.message = "fail", f"info: {message}"
    except CaseTimeout:  # the timer fired between the two attempts
        res.outcome, res.message = "fail", f"still running after {SOFT_TIMEOUT_S} s (interrupted)"
    finally:
        faulthandler.cancel_dump_traceback_later()
        _arm_soft_timer(0)
    res.seconds = time.perf_counter() - t0
    res.alloc = max(tracemalloc.get_traced_memory()[1] - base, 0)
    res.rss = max(_maxrss() - rss0, 0)
    if res.outcome != "fail":
        if res.seconds > SLOW_S:
            res.outcome, res.message = "fail", f"took {res.seconds:.1f} s"
        elif res.alloc > MAX_ALLOC or res.rss > MAX_ALLOC:
            res.outcome, res.message = "fail", f"allocated {max(res.alloc, res.rss) / 2**20:.0f} MB"
    if ws.marker.exists():
        res.outcome, res.message = "fail", "a pickled payload was EXECUTED (marker file created)"
        ws.marker.unlink()
    return res


def _arm_soft_timer(seconds: float) -> None:
    if _Guard.active_signal:
        signal.setitimer(signal.ITIMER_REAL, seconds)


def _on_alarm(signum, frame):
    raise CaseTimeout()


class _Guard:
    active_signal = False


@contextlib.contextmanager
def guarded(memory_cap: int = MEMORY_CAP):
    """Cap the address space, one torch thread, tracemalloc on, the soft timer's handler."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    old_limit = resource.getrlimit(resource.RLIMIT_AS)
    vm = _vm_size()
    if vm and memory_cap:
        soft = vm + memory_cap
        if old_limit[1] == resource.RLIM_INFINITY or soft < old_limit[1]:
            resource.setrlimit(resource.RLIMIT_AS, (soft, old_limit[1]))
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    old_handler = None
    import threading
    if threading.current_thread() is threading.main_thread():
        old_handler = signal.signal(signal.SIGALRM, _on_alarm)
        _Guard.active_signal = True
    try:
        yield
    finally:
        if _Guard.active_signal:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old_handler)
            _Guard.active_signal = False
        if not tracing:
            tracemalloc.stop()
        resource.setrlimit(resource.RLIMIT_AS, old_limit)
        torch.set_num_threads(threads)


def _vm_size() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@dataclass
class Summary:
    format: str
    tried: int = 0
    loads: int = 0
    errors: int = 0
    failures: list = field(default_factory=list)
    described: int = 0          # cases also run through ``ptycho-fast info``
    skipped: int = 0            # mutations HDF5 cannot hold, or a bug of this script
    skipped_kinds: int = 0      # mutations of the kinds left out on request (``--skip``)
    slowest: float = 0.0
    slowest_case: str = ""
    max_alloc: int = 0
    rss_growth: int = 0
    kinds: dict = field(default_factory=dict)


def run_case_forked(ws: Workspace, index: int, seed: int, skip_kinds: tuple[str, ...] = (),
                    info_fraction: float = INFO_FRACTION) -> Result:
    """:func:`run_case` in a forked child: a crash of the reader (SIGSEGV in a C library) is
    recorded as a failure instead of ending the run. For exploring; the default is in-process."""
    import pickle
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        try:
            res = run_case(ws, index, seed, skip_kinds, info_fraction)
            data = pickle.dumps(res)
        except BaseException as exc:  # noqa: BLE001
            data = pickle.dumps(Result(ws.fmt, index, "?", "", "fail", message=repr(exc)))
        with os.fdopen(w, "wb") as f:
            f.write(data)
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    if data:
        return pickle.loads(data)
    rng = np.random.default_rng([seed, FORMATS.index(ws.fmt), index])
    ws.reset()
    try:
        kind, detail, _ = MUTATE[ws.fmt](rng, ws)
        described = bool(rng.random() < info_fraction)
    except Exception:  # noqa: BLE001
        kind, detail, described = "?", "", False
    sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    return Result(ws.fmt, index, kind, detail, "fail", info=described,
                  message=f"the process died ({f'signal {sig}' if sig else f'exit {os.WEXITSTATUS(status)}'})")


def run_format(fmt: str, n_cases: int, seed: int, seeds: Seeds, root: Path,
               skip_kinds: tuple[str, ...] = (), progress=None, fork: bool = False,
               info_fraction: float = INFO_FRACTION) -> Summary:
    """Run cases 0, 1, ... of ``fmt`` until ``n_cases`` were tried; mutations whose kind
    contains one of ``skip_kinds`` are left out (counted, not read), like those HDF5 cannot
    hold. ``fork``: each case in a child process."""
    ws = Workspace(fmt, seeds, root)
    summary = Summary(fmt)
    rss0 = _maxrss()
    for i in range(10 * n_cases):
        if summary.tried >= n_cases:
            break
        res = (run_case_forked if fork else run_case)(ws, i, seed, skip_kinds, info_fraction)
        if res.outcome == "skip":
            if res.kind in ("unwritable", "mutation_error"):
                summary.skipped += 1
            else:
                summary.skipped_kinds += 1
            continue
        summary.tried += 1
        summary.kinds[res.kind.split("+")[0]] = summary.kinds.get(res.kind.split("+")[0], 0) + 1
        if res.outcome == "load":
            summary.loads += 1
        elif res.outcome == "error":
            summary.errors += 1
        else:
            summary.failures.append(res)
        summary.described += res.info
        if res.seconds > summary.slowest:
            summary.slowest, summary.slowest_case = res.seconds, f"{res.case} {res.kind}"
        summary.max_alloc = max(summary.max_alloc, res.alloc)
        if progress:
            progress(res)
    summary.rss_growth = max(_maxrss() - rss0, 0)
    shutil.rmtree(ws.dir, ignore_errors=True)
    return summary


def table(summaries: list[Summary]) -> str:
    head = ("| format | cases tried | clean loads | clean errors | failures | also run through info "
            "| slowest case (s) | max traced alloc (MB) | peak RSS growth (MB) |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in summaries:
        lines.append(f"| {s.format} | {s.tried} | {s.loads} | {s.errors} | {len(s.failures)} "
                     f"| {s.described} | {s.slowest:.3f} | {s.max_alloc / 2**20:.1f} "
                     f"| {s.rss_growth / 2**20:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--per-format", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=FORMATS, action="append")
    p.add_argument("--case", type=int, help="replay this one case (with its traceback)")
    p.add_argument("--all", action="store_true",
                   help="accepted for old command lines: every mutation kind runs by default")
    p.add_argument("--info-fraction", type=float, default=INFO_FRACTION, metavar="F",
                   help=f"share of the cases also described by ptycho-fast info (default {INFO_FRACTION})")
    p.add_argument("--skip", action="append", default=[], metavar="KIND",
                   help="leave out the mutations whose kind contains KIND (repeatable)")
    p.add_argument("--keep", help="work in this directory and keep it")
    p.add_argument("--fork", action="store_true",
                   help="each case in a forked child (a reader's segfault becomes a failure)")
    p.add_argument("-v", "--verbose", action="store_true", help="one line per case")
    args = p.parse_args(argv)
    formats = args.format or list(FORMATS)
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="fuzz_readers."))
    try:
        t0 = time.perf_counter()
        seeds = build_seeds(root / "seeds")
        if args.case is not None:
            for fmt in formats:
                ws = Workspace(fmt, seeds, root)
                ws.reset()
                rng = np.random.default_rng([args.seed, FORMATS.index(fmt), args.case])
                kind, detail, opts = MUTATE[fmt](rng, ws)
                describe = bool(rng.random() < args.info_fraction)
                print(f"{fmt} case {args.case}: {kind}: {detail} {opts}" + (" (+ info)" if describe else ""))
                steps = [("read", lambda: read_case(ws, opts))]
                steps += [("info", lambda: info_case(ws))] if describe else []
                for what, fn in steps:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        try:
                            fn()
                            print(f"  {what} -> {'loaded' if what == 'read' else 'described'}")
                        except Exception as exc:  # noqa: BLE001
                            from ptycho_fast.files import UserError
                            if isinstance(exc, UserError):
                                print(f"  {what} -> {type(exc).__name__}: {exc}")
                            else:
                                traceback.print_exc()
            return 0
        summaries = []
        for fmt in formats:
            skip = tuple(args.skip)
            verbose = (lambda r: print(f"  {r.format} {r.case:5d} {r.outcome:5s} {r.seconds:6.3f}s "
                                       f"{r.kind}{' +info' if r.info else ''}: {r.detail} | "
                                       f"{r.message[:200]}", flush=True)
                       ) if args.verbose else None
            with guarded():
                summaries.append(run_format(fmt, args.per_format, args.seed, seeds, root, skip, verbose,
                                            fork=args.fork, info_fraction=args.info_fraction))
        print(f"fuzz_readers: seed {args.seed}, {args.per_format} cases per format, "
              f"{time.perf_counter() - t0:.0f} s")
        print(table(summaries))
        for s in summaries:
            if s.skipped:
                print(f"{s.format}: {s.skipped} mutations not tried (the container cannot hold them)")
            if s.skipped_kinds:
                print(f"{s.format}: {s.skipped_kinds} mutations left out (--skip {' '.join(args.skip)})")
            for f in s.failures:
                print(f"FAIL {f.format} case {f.case} [{f.kind}] {f.detail}: {f.message}")
        return 1 if any(s.failures for s in summaries) else 0
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
