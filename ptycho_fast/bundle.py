"""Model bundles: a trained network with everything needed to use it (docs/training.md).

A bundle is a directory::

    bundle.json           format, version, N, gridsize, network hyper-parameters,
                          intensity scale, probe gain, probe and weights checksums,
                          object_big/window settings, training-data fingerprint, versions
    weights.safetensors   the network's state dict (safetensors, when the package is
      or weights.pt       importable; else torch.save of the state dict, read back with
                          torch.load(weights_only=True))
    probe.npy             the probe (N, N) or modes (M, N, N), complex64 (np.load with
                          allow_pickle=False)

Nothing in a bundle executes code on load: JSON, a NumPy array without pickle, and
safetensors or a weights-only torch file. :func:`load_bundle` checks the format version,
every required field, the shapes and the checksums, and raises one :class:`BundleError`
(a ``UserError``: the CLI prints one line) naming what is wrong. The intensity scale and
the probe gain are required: a bundle without them is rejected, never defaulted.

:func:`save_bundle` writes into a temporary directory beside the target and renames it
into place, so a reader never sees a half-written bundle.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import physics
from .data.dataset import one_line, read_npy_header
from .data.dataset import dataset_fingerprint
from .files import UserError, atomic_directory
from .runtime import package_version
from .model import NetworkConfig, PtychoPINNNet
from .object_big import WINDOWS, ObjectBig, make_window

__all__ = [
    "FORMAT", "FORMAT_VERSION", "SUPPORTED_VERSIONS", "BundleError", "Bundle", "BundlePredictor", "save_bundle",
    "load_bundle", "find_bundle_dir", "dataset_fingerprint", "have_safetensors", "package_version",
    "BUNDLE_JSON", "PROBE_FILE", "WEIGHTS_SAFETENSORS", "WEIGHTS_TORCH", "RUN_BUNDLE_SUBDIR",
]

FORMAT = "ptycho_fast.model_bundle"
#: 2 names the generator (network.arch, and for ffno network.modes / network.blocks);
#: a version-1 bundle is a CNN (it predates the choice) and still loads;
#: 3 names the network input (network.input: amplitude or backprojection); versions 1
#: and 2 predate the choice and load as "amplitude", the only input they knew
FORMAT_VERSION = 3
SUPPORTED_VERSIONS = (1, 2, 3)
#: the first version that names the network input
INPUT_VERSION = 3
BUNDLE_JSON = "bundle.json"
PROBE_FILE = "probe.npy"
WEIGHTS_SAFETENSORS = "weights.safetensors"
WEIGHTS_TORCH = "weights.pt"
#: a training run directory RUN holds its bundle in RUN/model (load_bundle(RUN) finds it)
RUN_BUNDLE_SUBDIR = "model"

#: every field bundle.json must have, as dotted paths
REQUIRED_FIELDS = (
    "format", "format_version", "N", "gridsize",
    "network.width", "network.amp_activation", "network.filters",
    "intensity_scale", "probe_gain",
    "probe.file", "probe.shape", "probe.dtype", "probe.sha256",
    "weights.file", "weights.format", "weights.sha256",
    "object_big.enabled", "object_big.window", "object_big.local_canvas_size",
    "training_data.fingerprint",
    "versions.ptycho_fast", "versions.torch",
)


#: the largest bundle.json read (a real one is a few kB)
MAX_JSON_BYTES = 1 << 20


class BundleError(UserError):
    """A model bundle is missing, incomplete, inconsistent or of an unknown version. The
    message is always one line of at most ``data.dataset.MESSAGE_LIMIT`` characters."""

    def __init__(self, message: str = "") -> None:
        super().__init__(one_line(message))


def have_safetensors() -> bool:
    try:
        import safetensors.torch  # noqa: F401
    except ImportError:
        return False
    return True


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- the bundle
@dataclass
class Bundle:
    """A loaded bundle: the network (eval mode) and the settings it was trained with."""
    model: PtychoPINNNet
    network: NetworkConfig
    intensity_scale: float
    probe_gain: float
    #: the gain the backprojection input divides by: the probe gain at the start of
    #: training (differs from probe_gain only when the gain was trained)
    input_gain: float
    probe: np.ndarray
    window: str
    object_big: bool
    local_canvas_size: int | None
    info: dict = field(repr=False)
    path: Path | None = None
    _transform: physics.InputTransform | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def N(self) -> int:  # noqa: N802
        return self.network.N

    @property
    def gridsize(self) -> int:
        return self.network.gridsize

    @property
    def C(self) -> int:  # noqa: N802
        return self.network.C

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device) -> "Bundle":
        self.model.to(device)
        return self

    def window_tensor(self, device=None, dtype=torch.float32) -> torch.Tensor:
        """The stitching window (N, N) this model was trained with (maximum 1)."""
        return make_window(self.window, self.N, self.probe, dtype=dtype, device=device)

    def probe_tensor(self, device=None) -> torch.Tensor:
        return torch.as_tensor(self.probe, device=device)

    def input_transform(self) -> physics.InputTransform:
        """The training run's network input (kind, stored scale, probe and gain)."""
        if self._transform is None:
            self._transform = physics.InputTransform(self.network.input, self.intensity_scale,
                                                     self.probe, self.input_gain)
        return self._transform

    def network_input(self, X) -> torch.Tensor:
        """Measured amplitudes (B, C, N, N) in count units -> the network input: ``X / s``
        with the **stored** intensity scale, and for ``network.input = backprojection``
        also the back-projected patches (physics.InputTransform)."""
        X = torch.as_tensor(X, dtype=torch.float32, device=self.device)
        return self.input_transform()(X)

    @torch.no_grad()
    def predict(self, X) -> torch.Tensor:
        """The network's complex object patches (B, C, N, N) for measured amplitudes X
        (B, C, N, N) in count units (scaled by the stored intensity scale here), before
        object_big; :class:`BundlePredictor` applies that too (the one prediction path)."""
        return self.model(self.network_input(X))

    def predicted_amplitude(self, patches: torch.Tensor) -> torch.Tensor:
        """Diffraction amplitude in count units of object ``patches``, with the stored
        probe and **stored** probe gain."""
        return physics.predicted_amplitude(patches, self.probe_tensor(patches.device), self.probe_gain)


class BundlePredictor:
    """A bundle's predictions as ``infer`` (and anything else) uses them: :meth:`Bundle.predict`
    (the stored intensity scale, the network), then object_big with the bundle's window when
    the model uses it (gridsize > 1), through the chosen ops (a backend module or its name).
    ``predictor(X, offsets, indices=None)`` returns ``(network_patches, patches)``, each
    (B, C, N, N) complex; ``offsets`` (B, C, 2) are member - centroid."""

    def __init__(self, bundle: Bundle, ops="ptycho_fast"):
        self.bundle = bundle
        self.merge = None
        if bundle.object_big and bundle.C > 1:
            # canvas size per batch (None): inference groups may reach further than training
            # ones; an integer shift of the local canvas leaves the result unchanged.
            self.merge = ObjectBig(bundle.window_tensor(device=bundle.device), None, ops)

    @torch.no_grad()
    def __call__(self, X, offsets, indices=None):
        raw = self.bundle.predict(X)
        if self.merge is None:
            return raw, raw
        offsets = torch.as_tensor(offsets, dtype=torch.float32, device=raw.device)
        return raw, self.merge(raw, offsets)


# ----------------------------------------------------------------------------- saving
def _atomic_dir(path: Path):
    """A temporary directory beside ``path`` that becomes ``path`` on success (an existing
    bundle there is replaced; anything else is refused)."""
    return atomic_directory(path, may_replace=lambda p: (p / BUNDLE_JSON).is_file(),
                            what="a model bundle", error=BundleError)


def _positive(name: str, value) -> float:
    try:
        if isinstance(value, bool):
            raise TypeError
        v = float(value)
    except OverflowError:
        raise BundleError(f"{name} must be a finite number > 0, got {_short(value)}") from None
    except (TypeError, ValueError):
        raise BundleError(f"{name} must be a number > 0, got {_short(value)}") from None
    if not (math.isfinite(v) and v > 0):
        raise BundleError(f"{name} must be a finite number > 0, got {_short(value)}")
    return v


def _short(value, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters (a value from a file may be huge)."""
    try:
        text = repr(value)
    except ValueError:  # an int too long for repr (sys.get_int_max_str_digits)
        return f"an integer of more than {sys.get_int_max_str_digits()} digits"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def save_bundle(path, model: PtychoPINNNet, *, intensity_scale: float, probe_gain: float,
                probe, input_gain: float | None = None, window: str = "probe", object_big: bool = True,
                local_canvas_size: int | None = None, training_data: dict | None = None,
                training: dict | None = None, weights_format: str | None = None) -> Path:
    """Write ``model`` and its settings as a bundle directory at ``path`` (atomically).

    ``training_data``: :func:`dataset_fingerprint` of the training set (required to have a
    'fingerprint'); ``training``: free-form facts about the run (loss, epochs, ...).
    ``weights_format``: 'safetensors' (default when importable) or 'torch'.
    ``input_gain``: the gain the network input was computed with (Bundle.input_gain;
    default ``probe_gain``, which it is unless the gain was trained).
    """
    path = Path(path)
    s = _positive("intensity_scale", intensity_scale)
    g = _positive("probe_gain", probe_gain)
    gi = g if input_gain is None else _positive("input_gain", input_gain)
    if window not in WINDOWS:
        raise BundleError(f"window must be one of {', '.join(WINDOWS)}, got {window!r}")
    cfg = model.config
    probe = np.ascontiguousarray(np.asarray(probe), dtype=np.complex64)
    if probe.ndim not in (2, 3) or probe.shape[-2:] != (cfg.N, cfg.N):
        raise BundleError(f"probe must be (N, N) or (M, N, N) with N = {cfg.N}, got shape {probe.shape}")
    if training_data is None or "fingerprint" not in training_data:
        raise BundleError("save_bundle needs training_data with a 'fingerprint' "
                          "(bundle.dataset_fingerprint(dataset))")
    fmt = weights_format or ("safetensors" if have_safetensors() else "torch")
    if fmt not in ("safetensors", "torch"):
        raise BundleError(f"weights_format must be 'safetensors' or 'torch', got {fmt!r}")
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}

    with _atomic_dir(path) as tmp:
        if fmt == "safetensors":
            if not have_safetensors():
                raise BundleError("weights_format 'safetensors' needs the safetensors package "
                                  "(pip install safetensors)")
            from safetensors.torch import save_file
            weights_name = WEIGHTS_SAFETENSORS
            save_file(state, str(tmp / weights_name), metadata={"format": FORMAT})
        else:
            weights_name = WEIGHTS_TORCH
            torch.save(state, tmp / weights_name)
        with open(tmp / PROBE_FILE, "wb") as f:
            np.save(f, probe, allow_pickle=False)
        info = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "N": cfg.N,
            "gridsize": cfg.gridsize,
            "network": {"arch": cfg.arch, "width": cfg.width, "amp_activation": cfg.amp_activation,
                        "filters": list(cfg.filters), "modes": cfg.modes, "blocks": cfg.blocks,
                        "input": cfg.input, "input_gain": gi},
            "intensity_scale": s,
            "probe_gain": g,
            "probe": {"file": PROBE_FILE, "shape": list(probe.shape), "dtype": "complex64",
                      "sha256": _sha256_file(tmp / PROBE_FILE)},
            "weights": {"file": weights_name, "format": fmt, "sha256": _sha256_file(tmp / weights_name)},
            "object_big": {"enabled": bool(object_big), "window": window,
                           "local_canvas_size": None if local_canvas_size is None else int(local_canvas_size)},
            "training_data": dict(training_data),
            "training": dict(training or {}),
            "versions": {"ptycho_fast": package_version(), "torch": torch.__version__},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        with open(tmp / BUNDLE_JSON, "w") as f:
            json.dump(info, f, indent=2, allow_nan=False)
            f.write("\n")
    return path


# ----------------------------------------------------------------------------- loading
def find_bundle_dir(path) -> Path:
    """The bundle directory for ``path``: the bundle itself, or a training run directory
    holding one in ``model/``."""
    path = Path(path)
    if not path.exists():
        raise BundleError(f"{path}: no such model bundle (expected a directory with {BUNDLE_JSON})")
    if not path.is_dir():
        raise BundleError(f"{path}: is not a directory; a model bundle is a directory with {BUNDLE_JSON}")
    if (path / BUNDLE_JSON).is_file():
        return path
    if (path / RUN_BUNDLE_SUBDIR / BUNDLE_JSON).is_file():
        return path / RUN_BUNDLE_SUBDIR
    raise BundleError(f"{path}: not a model bundle: no {BUNDLE_JSON} in it (nor in "
                      f"{RUN_BUNDLE_SUBDIR}/; has the training run finished?)")


def _get(info: dict, dotted: str):
    node = info
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


#: what a version-2 bundle must have besides REQUIRED_FIELDS (per architecture)
REQUIRED_V2 = {"cnn": ("network.arch",), "ffno": ("network.arch", "network.modes", "network.blocks")}
#: and what version 3 adds
REQUIRED_V3 = ("network.input", "network.input_gain")


def _check_fields(info: dict, where: str) -> None:
    missing = []
    required = list(REQUIRED_FIELDS)
    if info.get("format_version") != 1:
        net = info.get("network")
        arch = net.get("arch") if isinstance(net, dict) else None
        required += REQUIRED_V2.get(arch, ("network.arch",))
    if info["format_version"] >= INPUT_VERSION:   # checked to be a supported version first
        required += REQUIRED_V3
    for name in required:
        try:
            value = _get(info, name)
        except KeyError:
            missing.append(name)
            continue
        if value is None and name != "object_big.local_canvas_size":
            missing.append(name)
    if missing:
        message = (f"{where}: missing required field{'s' if len(missing) > 1 else ''}: "
                   f"{', '.join(missing)}")
        if {"intensity_scale", "probe_gain"} & set(missing):
            message += (" (the intensity scale and the probe gain are computed from the training "
                        "data and are never defaulted)")
        raise BundleError(message)


def _file_in_bundle(bundle_dir: Path, name, what: str) -> Path:
    if not isinstance(name, str) or not name or Path(name).name != name:
        raise BundleError(f"{bundle_dir / BUNDLE_JSON}: {what}.file must be a plain file name "
                          f"inside the bundle, got {name!r}")
    path = bundle_dir / name
    if not path.is_file():
        raise BundleError(f"{path}: missing ({what} file named in {BUNDLE_JSON})")
    return path


def _verify_checksum(path: Path, expected, what: str) -> None:
    got = _sha256_file(path)
    if not isinstance(expected, str) or got != expected.removeprefix("sha256:"):
        raise BundleError(f"{path}: {what} checksum mismatch (bundle.json says {expected}, the "
                          f"file has sha256 {got}); the bundle is corrupt or was edited")


def _torch_load_error(exc: Exception) -> str:
    """The gist of a ``torch.load(weights_only=True)`` refusal (its message is a page of advice)."""
    text = str(exc)
    if "Unsupported" in text:  # e.g. "Unsupported global: GLOBAL os.system was not an allowed ..."
        detail = text[text.index("Unsupported"):].split(". ")[0].splitlines()[0].strip()
        return f"refusing to unpickle anything but tensors: {detail}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _load_state_dict(path: Path, fmt: str) -> dict[str, torch.Tensor]:
    if fmt == "safetensors":
        if not have_safetensors():
            raise BundleError(f"{path}: reading safetensors weights needs the safetensors package "
                              "(pip install safetensors)")
        from safetensors.torch import load_file
        try:
            state = load_file(str(path), device="cpu")
        except MemoryError:
            raise BundleError(f"{path}: too large to load into memory") from None
        except Exception as exc:  # safetensors raises its own error types
            raise BundleError(f"{path}: not a readable safetensors file ({exc})") from None
        return state
    if fmt == "torch":
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except MemoryError:
            raise BundleError(f"{path}: too large to load into memory") from None
        except Exception as exc:
            raise BundleError(f"{path}: not a readable weights-only torch file "
                              f"({_torch_load_error(exc)})") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise BundleError(f"{path}: expected a state dict of tensors")
        return state
    raise BundleError(f"{path}: weights.format must be 'safetensors' or 'torch', got {_short(fmt)}")


def _load_probe(path: Path, N: int, shape: list) -> np.ndarray:
    """probe.npy as complex (N, N) / (M, N, N) of ``shape``, never unpickled, its header
    checked against the file's size before numpy allocates the array."""
    try:
        with open(path, "rb") as f:
            found, _, dtype, nbytes = read_npy_header(f)
            header = f.tell()
        size = path.stat().st_size
    except (ValueError, OSError, EOFError) as exc:
        raise BundleError(f"{path}: not a readable .npy array ({exc})") from None
    if dtype.hasobject:
        raise BundleError(f"{path}: holds Python objects (pickled); a probe is read without "
                          "pickle, refusing to load it")
    if len(found) not in (2, 3) or found[-2:] != (N, N) or list(found) != shape or dtype.kind != "c":
        raise BundleError(f"{path}: probe must be complex (N, N) or (M, N, N) with N = {N} and "
                          f"shape {shape} (bundle.json), got {dtype} of shape {_short(found)}")
    if header + nbytes > size:
        raise BundleError(f"{path}: declares shape {found} ({nbytes} bytes) but holds "
                          f"{max(size - header, 0)} (truncated or corrupt)")
    try:
        probe = np.load(path, allow_pickle=False)
    except MemoryError:
        raise BundleError(f"{path}: too large to load into memory") from None
    except (ValueError, OSError, EOFError) as exc:
        raise BundleError(f"{path}: not a readable .npy array without pickle ({exc})") from None
    if not np.isfinite(probe).all() or not np.abs(probe).any():
        raise BundleError(f"{path}: probe contains NaN/Inf or is zero everywhere")
    return probe


def load_bundle(path, device="cpu") -> Bundle:
    """Read and check a bundle (or a training run directory holding one in ``model/``).
    Returns a :class:`Bundle` with the network in eval mode on ``device``."""
    bundle_dir = find_bundle_dir(path)
    where = str(bundle_dir / BUNDLE_JSON)
    try:
        size = (bundle_dir / BUNDLE_JSON).stat().st_size
        if size > MAX_JSON_BYTES:
            raise BundleError(f"{where}: {size} bytes; a bundle.json is a few kB (at most "
                              f"{MAX_JSON_BYTES}); not read")
        text = (bundle_dir / BUNDLE_JSON).read_text()
        info = json.loads(text)
    except RecursionError:
        raise BundleError(f"{where}: not readable JSON (nested too deeply)") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # ValueError: JSONDecodeError, huge ints
        if isinstance(exc, BundleError):
            raise
        raise BundleError(f"{where}: not readable JSON ({exc})") from None
    if not isinstance(info, dict):
        raise BundleError(f"{where}: expected a JSON object")
    if info.get("format") != FORMAT:
        raise BundleError(f"{where}: format is {_short(info.get('format'))}, expected {FORMAT!r}")
    version = info.get("format_version")
    if version not in SUPPORTED_VERSIONS or isinstance(version, bool):
        raise BundleError(f"{where}: unknown format_version {_short(version)}; this ptycho_fast "
                          f"({package_version()}) reads version(s) "
                          f"{', '.join(map(str, SUPPORTED_VERSIONS))}")
    _check_fields(info, where)

    s = _positive(f"{where}: intensity_scale", info["intensity_scale"])
    g = _positive(f"{where}: probe_gain", info["probe_gain"])
    names_input = version >= INPUT_VERSION
    gi = _positive(f"{where}: network.input_gain", info["network"]["input_gain"]) if names_input else g
    try:
        net = info["network"]
        arch = "cnn" if version == 1 else net["arch"]
        extra = {"modes": net["modes"], "blocks": net["blocks"]} if arch == "ffno" else {}
        kind = net["input"] if names_input else "amplitude"
        if not isinstance(kind, str):
            raise ValueError(f"network.input must be a string, got {_short(kind)}")
        config = NetworkConfig(N=info["N"], gridsize=info["gridsize"], width=net["width"],
                               amp_activation=net["amp_activation"], filters=net["filters"],
                               arch=arch, input=kind, **extra)
    except (ValueError, TypeError, OverflowError) as exc:
        raise BundleError(f"{where}: bad network settings: {exc}") from None
    try:  # the parameter shapes, allocating nothing (a huge gridsize or width must not)
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in PtychoPINNNet(config).state_dict().items()}
    except Exception as exc:  # noqa: BLE001 - torch's errors for impossible sizes vary
        raise BundleError(f"{where}: bad network settings (N = {config.N}, gridsize "
                          f"{_short(config.gridsize)}, width {_short(config.width)}): "
                          f"{type(exc).__name__}: {exc}") from None

    ob = info["object_big"]
    if ob["window"] not in WINDOWS:
        raise BundleError(f"{where}: object_big.window must be one of {', '.join(WINDOWS)}, "
                          f"got {ob['window']!r}")
    canvas = ob["local_canvas_size"]
    if canvas is not None and (not isinstance(canvas, int) or isinstance(canvas, bool) or canvas < config.N):
        raise BundleError(f"{where}: object_big.local_canvas_size must be null or an integer "
                          f">= N = {config.N}, got {_short(canvas)}")

    # Probe: no pickle, checksum, shape; the .npy header checked before anything is allocated.
    pinfo = info["probe"]
    shape = pinfo["shape"]
    if not isinstance(shape, list) or len(shape) not in (2, 3) \
            or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise BundleError(f"{where}: probe.shape must be a list of 2 or 3 integers, got {_short(shape)}")
    probe_path = _file_in_bundle(bundle_dir, pinfo["file"], "probe")
    _verify_checksum(probe_path, pinfo["sha256"], "probe")
    probe = _load_probe(probe_path, config.N, shape)

    # Weights: checksum, no code execution, exact keys and shapes.
    winfo = info["weights"]
    weights_path = _file_in_bundle(bundle_dir, winfo["file"], "weights")
    _verify_checksum(weights_path, winfo["sha256"], "weights")
    state = _load_state_dict(weights_path, winfo["format"])
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} (expected {v})"
             for k, v in expected.items() if k in state and tuple(state[k].shape) != v]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}")
        if wrong:
            parts.append(f"wrong shape {', '.join(wrong[:5])}{' ...' if len(wrong) > 5 else ''}")
        raise BundleError(f"{weights_path}: weights do not match the network in bundle.json "
                          f"(N = {config.N}, gridsize {config.gridsize}, width {config.width}): "
                          + "; ".join(parts))
    bad = [k for k, v in state.items() if not v.is_floating_point() or not bool(torch.isfinite(v).all())]
    if bad:
        raise BundleError(f"{weights_path}: non-float or non-finite weights: {', '.join(bad[:5])}")
    model = PtychoPINNNet(config)  # only now: its size matches the weights file's
    model.load_state_dict(state)
    model.eval().to(device)
    return Bundle(model=model, network=config, intensity_scale=s, probe_gain=g, input_gain=gi,
                  probe=probe.astype(np.complex64), window=ob["window"],
                  object_big=bool(ob["enabled"]), local_canvas_size=canvas, info=info,
                  path=bundle_dir)
