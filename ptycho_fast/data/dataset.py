"""The in-memory dataset type, its validation, and small I/O helpers shared by the formats.

A :class:`PtychoDataset` holds (docs/design.md §3, docs/data.md):

* ``diffraction`` (P, N, N) float32 **amplitudes** (sqrt of counts), fftshifted; an
  in-memory array or a lazily read HDF5 dataset (:class:`ptycho_fast.data.hdf5.LazyDiffraction`);
* ``positions`` (P, 2) float64 probe **centres** (row, col) in object pixels;
* ``probe`` (N, N) or incoherent modes (M, N, N) complex64;
* optional ``object`` (H, W) complex64 ground truth, ``scan_index`` (P,) int64,
  ``positions_start`` (P, 2) (the positions before any refinement), and :class:`Metadata`.

Everything is checked on construction; each problem raises :class:`DataError` naming the
file, the key and what was expected.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
import tokenize
import warnings
from dataclasses import dataclass, field

from typing import Any, Iterator, Mapping

import numpy as np

from .. import coords, files
from ..files import UserError

__all__ = [
    "UserError", "DataError", "DataWarning", "Metadata", "PtychoDataset", "atomic_output",
    "as_amplitude", "check_amplitudes", "real_vector", "dataset_fingerprint", "is_legacy_stack", "untranspose_legacy_stack",
    "one_line", "read_npy_header", "list_names", "MESSAGE_LIMIT",
]

_CHECK_CHUNK = 1024  # patterns per validation block (bounded temporary memory)
#: the longest error message (the CLI prints it as one line)
MESSAGE_LIMIT = 480
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def one_line(text, limit: int = MESSAGE_LIMIT) -> str:
    """``text`` on one line (control characters, e.g. newlines from a file's own strings or a
    library's error, become spaces) and at most ``limit`` characters."""
    text = _CONTROL.sub(" ", str(text))
    return text if len(text) <= limit else text[:limit - 3] + "..."


class DataError(UserError):
    """A data file is missing, unreadable, or holds keys of the wrong shape, dtype or value.
    The message is always one line of at most :data:`MESSAGE_LIMIT` characters."""

    def __init__(self, message: str = "") -> None:
        super().__init__(one_line(message))


def read_npy_header(f) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """``(shape, fortran_order, dtype, nbytes)`` from the header of an .npy stream positioned
    at its start, without reading the data or unpickling anything; ``nbytes`` is what the
    header declares (a Python int: no overflow). ValueError when the header is malformed."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
    except (TypeError, OverflowError, SyntaxError, RecursionError, MemoryError, UnicodeDecodeError,
            tokenize.TokenError) as exc:
        raise ValueError(f"malformed .npy header ({type(exc).__name__})") from None
    if any(d < 0 for d in shape):
        raise ValueError(f"negative dimension in the shape {shape}")
    return tuple(shape), bool(fortran), dtype, math.prod(shape) * dtype.itemsize


class DataWarning(UserWarning):
    """Something in a data file is unusual but usable (e.g. patches reaching past the object)."""


def atomic_output(path: str | os.PathLike):
    """:func:`ptycho_fast.files.atomic_output` raising :class:`DataError`."""
    return files.atomic_output(path, error=DataError)


@dataclass
class Metadata:
    """Optional acquisition facts (None = unknown). Units are in the names.

    Every key in :attr:`KEYS` is a finite number, written to NPZ and our HDF5 when known.
    The keys after ``probe_calibrated`` come from ptychodus products (docs/data.md §5.3);
    ptycho_fast does not use them, it only keeps them, so a product read and written again
    (or converted through NPZ / HDF5) still holds them. ``extra`` keeps, in memory only,
    what a source file holds beyond these numbers (a ptychodus product's name, comments,
    losses, bad-pixel mask, ...): the writer of the same format restores it.
    """
    photons_per_pattern: float | None = None  # mean counts per diffraction pattern
    pixel_size_m: float | None = None         # object pixel size (its width when not square)
    energy_eV: float | None = None            # photon energy
    distance_m: float | None = None           # sample-detector distance
    #: 1: the probe is in count units (a pattern of a unit-transmission object has
    #: sum |probe|^2 counts: the simulator's probe), 0: it is not; None: not said
    probe_calibrated: float | None = None
    pixel_height_m: float | None = None       # object pixel height, when it differs from pixel_size_m
    object_center_x_m: float | None = None    # ptychodus object centre (x, y) in metres
    object_center_y_m: float | None = None
    exposure_time_s: float | None = None      # ptychodus product fields, kept as read
    mass_attenuation_m2_per_kg: float | None = None
    tomography_angle_deg: float | None = None
    tilt_angle_deg: float | None = None
    focus_object_distance_m: float | None = None
    far_field: float | None = None            # 1: far-field geometry, 0: near field
    #: what a source file holds beyond KEYS (not written to NPZ / HDF5; see class doc)
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    KEYS = ("photons_per_pattern", "pixel_size_m", "energy_eV", "distance_m", "probe_calibrated",
            "pixel_height_m", "object_center_x_m", "object_center_y_m", "exposure_time_s",
            "mass_attenuation_m2_per_kg", "tomography_angle_deg", "tilt_angle_deg",
            "focus_object_distance_m", "far_field")
    _FLAGS = ("probe_calibrated", "far_field")  # 0 or 1

    @property
    def says_probe_calibrated(self) -> bool | None:
        """``probe_calibrated`` as True / False, or None when the file does not say."""
        return None if self.probe_calibrated is None else bool(self.probe_calibrated)

    @property
    def pixel_size_yx_m(self) -> tuple[float, float] | None:
        """The object pixel as (height, width) in metres, or None when unknown."""
        if self.pixel_size_m is None:
            return None
        height = self.pixel_height_m if self.pixel_height_m is not None else self.pixel_size_m
        return float(height), float(self.pixel_size_m)

    def to_dict(self) -> dict[str, float]:
        """The known values only."""
        return {k: float(getattr(self, k)) for k in self.KEYS if getattr(self, k) is not None}

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str = "<memory>") -> "Metadata":
        out = {}
        for key in cls.KEYS:
            if key not in values:
                continue
            raw = np.asarray(values[key])
            if raw.size != 1 or not np.issubdtype(raw.dtype, np.number) or np.iscomplexobj(raw):
                raise DataError(f"{source}: metadata key '{key}': expected a real number, "
                                f"got {raw.dtype} of shape {raw.shape}")
            value = float(raw.reshape(()))
            if not np.isfinite(value):
                raise DataError(f"{source}: metadata key '{key}': expected a finite number, got {value}")
            if key in cls._FLAGS and value not in (0.0, 1.0):
                raise DataError(f"{source}: metadata key '{key}': expected 0 or 1, got {value:g}")
            if key in _POSITIVE_KEYS and value <= 0:
                raise DataError(f"{source}: metadata key '{key}': expected a positive number, got {value:g}")
            out[key] = value
        return cls(**out)


def as_amplitude(block: np.ndarray) -> np.ndarray:
    """Amplitudes as float32: integer data are detector **counts** and become sqrt(counts)
    (converted to float first: squaring or summing uint16 cannot overflow); float data are
    already amplitudes."""
    block = np.asarray(block)
    if np.issubdtype(block.dtype, np.integer) or block.dtype == np.bool_:
        return np.sqrt(block.astype(np.float32))
    return block.astype(np.float32, copy=False)


def real_vector(arr: np.ndarray, path, key: str) -> np.ndarray:
    """``arr`` as a 1-D array of real numbers (a (1, P) or (P, 1) column is flattened);
    DataError naming the file and key otherwise."""
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.reshape(-1)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise DataError(f"{path}: key '{key}': expected a 1-D array of real numbers, "
                        f"got {arr.dtype} of shape {arr.shape}")
    return arr


def check_amplitudes(block: np.ndarray, where: str, first_index: int = 0) -> None:
    """Raise DataError if a block of amplitudes holds NaN/Inf or negative values."""
    finite = np.isfinite(block)
    if not finite.all():
        bad = int(np.argwhere(~finite.reshape(finite.shape[0], -1).all(axis=1))[0, 0])
        raise DataError(f"{where}: pattern {first_index + bad} contains NaN or Inf")
    if (block < 0).any():
        bad = int(np.argwhere((block < 0).reshape(block.shape[0], -1).any(axis=1))[0, 0])
        raise DataError(f"{where}: pattern {first_index + bad} has negative amplitudes "
                        "(diffraction must be sqrt(counts) >= 0)")


def is_legacy_stack(shape, n_positions: int) -> bool:
    """Whether a diffraction stack of ``shape`` is a legacy (N, N, P) one: three axes, the
    first two equal, the last equal to the number of positions and the first not (a
    (N, N, N) stack with P == N is read as (P, N, N))."""
    shape = tuple(shape)
    return len(shape) == 3 and shape[0] == shape[1] and shape[2] == n_positions and shape[0] != n_positions


def untranspose_legacy_stack(diffraction, n_positions: int, where: str):
    """A legacy (N, N, P) stack (:func:`is_legacy_stack`) becomes (P, N, N); a (P, N, N)
    stack is returned as is."""
    shape = tuple(diffraction.shape)
    if len(shape) != 3:
        raise DataError(f"{where}: expected a (P, N, N) stack of patterns, got shape {shape}")
    if is_legacy_stack(shape, n_positions):
        return np.ascontiguousarray(np.transpose(np.asarray(diffraction), (2, 0, 1)))
    return diffraction


#: metadata keys that must be > 0 when a file gives them (a count, a size, an energy, a distance)
_POSITIVE_KEYS = ("photons_per_pattern", "pixel_size_m", "energy_eV", "distance_m")


def list_names(names, limit: int = 12) -> str:
    """Sorted ``names`` for a message: at most ``limit`` of them, 'nothing' when empty."""
    names = sorted(str(n) for n in names)
    if not names:
        return "nothing"
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(n if len(n) <= 40 else n[:37] + "..." for n in names[:limit]) + more


def _coordinate(v: float) -> str:
    return f"{v:.2f}" if abs(v) < 1e9 else f"{v:.3g}"


def _describe(arr) -> str:
    return f"{getattr(arr, 'dtype', type(arr).__name__)} of shape {tuple(getattr(arr, 'shape', ()))}"


@dataclass(eq=False)
class PtychoDataset:
    """Diffraction amplitudes, scan positions, probe [, object, metadata]. See module doc."""

    diffraction: Any
    positions: np.ndarray
    probe: np.ndarray
    object: np.ndarray | None = None
    scan_index: np.ndarray | None = None
    positions_start: np.ndarray | None = None
    metadata: Metadata = field(default_factory=Metadata)
    #: where the data came from, for error messages
    source: str = field(default="<memory>", repr=False)
    #: file key of each field, for error messages (e.g. {"probe": "probeGuess"})
    key_names: Mapping[str, str] = field(default_factory=dict, repr=False)
    #: what to do with positions whose patches reach past the object: "warn" or "error"
    #: (a centre outside the object is always an error)
    edge_policy: str = field(default="warn", repr=False)

    def __post_init__(self) -> None:
        self._validate()

    # ------------------------------------------------------------------ validation
    def _key(self, name: str) -> str:
        return self.key_names.get(name, name)

    def _fail(self, name: str, message: str):
        raise DataError(f"{self.source}: key '{self._key(name)}': {message}")

    def _validate(self) -> None:
        if self.edge_policy not in ("warn", "error"):
            raise ValueError(f"edge_policy must be 'warn' or 'error', got {self.edge_policy!r}")
        # Diffraction: shape and dtype (values below, for in-memory arrays).
        d = self.diffraction
        if not hasattr(d, "shape") or not hasattr(d, "dtype"):
            d = self.diffraction = np.asarray(d)
        if len(d.shape) != 3:
            self._fail("diffraction", f"expected a (P, N, N) stack of amplitudes, got {_describe(d)}")
        if np.issubdtype(d.dtype, np.complexfloating):
            self._fail("diffraction", f"expected real amplitudes (sqrt of counts), got {d.dtype}")
        if not (np.issubdtype(d.dtype, np.number) or d.dtype == np.bool_):
            self._fail("diffraction", f"expected numbers, got {_describe(d)}")
        P, h, w = (int(s) for s in d.shape)
        if P == 0:
            self._fail("diffraction", "holds no diffraction patterns (P = 0)")
        if h != w:
            self._fail("diffraction", f"patterns must be square (N, N), got {h} x {w}")
        if w < 2 or w % 2:
            self._fail("diffraction", f"the pattern size N must be even and >= 2, got N = {w}")
        N = w
        if isinstance(d, np.ndarray):
            self.diffraction = as_amplitude(d)
            for start in range(0, P, _CHECK_CHUNK):
                check_amplitudes(self.diffraction[start:start + _CHECK_CHUNK],
                                 f"{self.source}: key '{self._key('diffraction')}'", start)

        # Positions.
        pos = np.asarray(self.positions)
        if pos.ndim != 2 or pos.shape[1] != 2:
            self._fail("positions", f"expected (P, 2) (row, col) probe centres, got {_describe(pos)}")
        if not np.issubdtype(pos.dtype, np.number) or np.iscomplexobj(pos):
            self._fail("positions", f"expected real numbers, got {pos.dtype}")
        pos = pos.astype(np.float64)
        if pos.shape[0] != P:
            raise DataError(f"{self.source}: {P} diffraction patterns ('{self._key('diffraction')}') "
                            f"but {pos.shape[0]} scan positions ('{self._key('positions')}')")
        if not np.isfinite(pos).all():
            self._fail("positions", "contains NaN or Inf")
        self.positions = pos

        # Probe: (N, N) or modes (M, N, N).
        probe = np.asarray(self.probe)
        if probe.ndim not in (2, 3) or probe.shape[-2:] != (N, N) or (probe.ndim == 3 and probe.shape[0] < 1):
            self._fail("probe", f"expected (N, N) or (M, N, N) with N = {N} (the pattern size), "
                                f"got {_describe(probe)}")
        if not np.issubdtype(probe.dtype, np.number):
            self._fail("probe", f"expected complex numbers, got {probe.dtype}")
        probe = probe.astype(np.complex64)
        if not np.isfinite(probe).all():
            self._fail("probe", "contains NaN or Inf")
        if not np.abs(probe).any():
            self._fail("probe", "is zero everywhere")
        self.probe = probe

        # Optional fields.
        if self.object is not None:
            obj = np.asarray(self.object)
            if obj.ndim == 3 and obj.shape[0] == 1:
                obj = obj[0]
            if obj.ndim != 2 or min(obj.shape) < 1:
                self._fail("object", f"expected a 2-D (H, W) complex object, got {_describe(obj)}")
            if not np.issubdtype(obj.dtype, np.number):
                self._fail("object", f"expected complex numbers, got {obj.dtype}")
            obj = obj.astype(np.complex64)
            if not np.isfinite(obj).all():
                self._fail("object", "contains NaN or Inf")
            self.object = obj
            self._check_positions_in_object(N)
        if self.scan_index is not None:
            idx = np.asarray(self.scan_index)
            if idx.shape != (P,) or not (np.issubdtype(idx.dtype, np.integer)
                                         or (np.issubdtype(idx.dtype, np.floating)
                                             and np.array_equal(idx, np.round(idx)))):
                self._fail("scan_index", f"expected ({P},) integers, got {_describe(idx)}")
            self.scan_index = idx.astype(np.int64)
        if self.positions_start is not None:
            ps = np.asarray(self.positions_start)
            if ps.shape != (P, 2) or not np.issubdtype(ps.dtype, np.number) or np.iscomplexobj(ps):
                self._fail("positions_start", f"expected ({P}, 2) real numbers, got {_describe(ps)}")
            ps = ps.astype(np.float64)
            if not np.isfinite(ps).all():
                self._fail("positions_start", "contains NaN or Inf")
            self.positions_start = ps
        if not isinstance(self.metadata, Metadata):
            self.metadata = Metadata.from_mapping(self.metadata, self.source)

    def _check_positions_in_object(self, N: int) -> None:
        H, W = self.object.shape
        y, x = self.positions[:, 0], self.positions[:, 1]
        outside = (y < 0) | (y > H - 1) | (x < 0) | (x > W - 1)
        if outside.any():
            i = int(np.argmax(outside))
            raise DataError(
                f"{self.source}: {int(outside.sum())} scan positions lie outside the "
                f"{H} x {W} object ('{self._key('object')}'); e.g. position {i} at "
                f"(row {_coordinate(y[i])}, col {_coordinate(x[i])}). Positions are probe "
                "centres in object pixels (xcoords = column, ycoords = row)")
        top_left = coords.centres_to_top_left(self.positions, N)
        partial = ((top_left < 0).any(axis=1) | (top_left[:, 0] + N - 1 > H - 1)
                   | (top_left[:, 1] + N - 1 > W - 1))
        if partial.any():
            message = (f"{self.source}: {int(partial.sum())} of {len(partial)} patches reach past "
                       f"the edge of the {H} x {W} object; pixels outside read as zero")
            if self.edge_policy == "error":
                raise DataError(message)
            warnings.warn(message, DataWarning, stacklevel=4)

    # ------------------------------------------------------------------ accessors
    @property
    def n_patterns(self) -> int:
        return int(self.diffraction.shape[0])

    def __len__(self) -> int:
        return self.n_patterns

    @property
    def N(self) -> int:  # noqa: N802 - the conventional name
        return int(self.diffraction.shape[-1])

    @property
    def probe_modes(self) -> np.ndarray:
        """The probe as (M, N, N) modes."""
        return self.probe if self.probe.ndim == 3 else self.probe[None]

    @property
    def xcoords(self) -> np.ndarray:
        return coords.xy_from_positions(self.positions)[0]

    @property
    def ycoords(self) -> np.ndarray:
        return coords.xy_from_positions(self.positions)[1]

    def top_left(self) -> np.ndarray:
        """(P, 2) (row, col) of each patch's top-left pixel: what ``ops.extract_patches`` takes."""
        return coords.centres_to_top_left(self.positions, self.N)

    @property
    def is_lazy(self) -> bool:
        return not isinstance(self.diffraction, np.ndarray)

    def iter_batches(self, batch_size: int = 1024, indices=None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(indices, amplitudes)`` blocks of at most ``batch_size`` patterns, reading a
        lazy file block by block (each block validated as it is read)."""
        if self.is_lazy:
            yield from self.diffraction.iter_batches(batch_size, indices)
            return
        order = np.arange(self.n_patterns) if indices is None else np.asarray(indices, dtype=np.int64)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            yield idx, self.diffraction[idx]

    def load(self) -> "PtychoDataset":
        """An in-memory copy (reads a lazy file whole)."""
        if not self.is_lazy:
            return self
        return dataclasses.replace(self, diffraction=self.diffraction[:])

    def subset(self, indices) -> "PtychoDataset":
        """The patterns at ``indices`` (in memory)."""
        idx = np.asarray(indices, dtype=np.int64)
        return dataclasses.replace(
            self, diffraction=np.asarray(self.diffraction[idx]), positions=self.positions[idx],
            scan_index=None if self.scan_index is None else self.scan_index[idx],
            positions_start=None if self.positions_start is None else self.positions_start[idx])

    def close(self) -> None:
        """Close a lazily read file (no-op in memory)."""
        close = getattr(self.diffraction, "close", None)
        if self.is_lazy and close is not None:
            close()

    def __enter__(self) -> "PtychoDataset":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def summary(self) -> str:
        probe = f"probe {self.probe.shape[0]} modes" if self.probe.ndim == 3 else "probe"
        obj = "no object" if self.object is None else f"object {self.object.shape[0]}x{self.object.shape[1]}"
        return f"{self.n_patterns} patterns N={self.N}, {probe}, {obj}"


def dataset_fingerprint(dataset) -> dict[str, Any]:
    """Identity of a training set: sha256 over the diffraction (float32), the positions
    (float64) and the probe (complex64), in that order, streamed block by block; plus its
    size and source."""
    h = hashlib.sha256()
    for _, block in dataset.iter_batches(1024):
        h.update(np.ascontiguousarray(block, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(dataset.positions, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(dataset.probe, dtype=np.complex64).tobytes())
    return {"fingerprint": "sha256:" + h.hexdigest(), "n_patterns": int(dataset.n_patterns),
            "N": int(dataset.N), "source": str(getattr(dataset, "source", "<memory>"))}
