"""Time-to-quality of pty-chi's LSQML engine against ours (``ptycho_fast.refine``), on the
same data, the same CPU threads, measured in one run of this script.

    PYTHONPATH=/path/to/ptycho_fast-checkout /work/ptychi-venv/bin/python \\
        benchmarks/ptychi_compare.py DATA.npz --epochs-ptychi 400 --epochs-ours 60 --out DIR

For each engine, from a flat start (1 + 0j), with the data's probe fixed and the scan
positions fixed, it records after every few epochs the refinement wall time so far
(evaluation EXCLUDED) and the amplitude and phase SSIM in the illuminated region
(``ptycho_fast.evaluate.evaluate``, the object frame of the data, no registration), then
writes DIR/ptychi_compare.json (curves, final metrics, settings, versions),
DIR/ptychi_compare.png (SSIM against wall time) and prints a table with the time each
engine took to reach each SSIM level (``--levels``, default 0.95 and 0.97) and the ratio
of those times (pty-chi / ours). Before the runs it checks the data mapping (below) on a
tiny simulated data set and stops if the mapping is wrong (``--skip-check`` skips it).

Environment (pty-chi must not pull a CUDA torch)
------------------------------------------------
pty-chi lives in its own virtual environment; ptycho_fast is not installed there but
imported from the checkout (``PYTHONPATH``), whose compiled extension ``ptycho_fast/_C*.so``
was built against the same torch (2.13.0+cpu), so it loads as is::

    python3 -m venv /work/ptychi-venv
    /work/ptychi-venv/bin/pip install torch==2.13.0          # the local CPU wheel
    /work/ptychi-venv/bin/pip install ptychi==2.2.0 --no-deps
    # ptychi's runtime requirements (its METADATA Requires-Dist), one by one:
    for p in "numpy>=2.1" scipy h5py pandas "pydantic>=2,<3" scikit-image scikit-learn tqdm \\
             "matplotlib>=3.10.6"; do /work/ptychi-venv/bin/pip install "$p"; done
    # for ptycho_fast (its pyproject dependencies not already there):
    /work/ptychi-venv/bin/pip install safetensors Pillow

ptychi's other Requires-Dist entries (mypy, ruff, pytest) are development tools that the
package never imports; they are not installed.

torchvision: pty-chi imports exactly one symbol from it, ``torchvision.transforms.GaussianBlur``
(``ptychi/utils.py``), used only by ``generate_gaussian_random_image`` to smooth a RANDOM
initial object (``generate_initial_object``). This script starts pty-chi from a flat
object that it passes in, so that code never runs. The PyPI torchvision wheels are CUDA
builds: torchvision 0.28.0 (the release paired with torch 2.13) installs with ``--no-deps``
but its ``_C.so`` links ``libtorch_cuda.so``/``libc10_cuda.so``, which the CPU torch lacks,
and ``import torchvision`` then fails ("operator torchvision::nms does not exist" from its
``_meta_registrations``). So torchvision is NOT installed; when ``import torchvision``
fails, this script puts a stub ``torchvision``/``torchvision.transforms`` into
``sys.modules`` before importing pty-chi, whose ``GaussianBlur`` raises if it is ever
constructed (so a code path that needed it could not pass silently). With a working
torchvision installed, the real one is used.

Data mapping (verified by ``check_mapping`` at the start of every run)
----------------------------------------------------------------------
Our files hold amplitudes ``sqrt(counts)`` with the zero frequency at the array centre;
our model is ``|fftshift(fft2(probe * patch, norm="ortho"))|`` with the patch's top-left
pixel at ``centre - N/2`` (``ds.positions``: probe centres (row, col), object pixels).

* diffraction: pty-chi takes INTENSITIES with the zero frequency at the centre and
  ``data_options.fft_shift=True`` (it fftshifts them to its corner-DC convention), so it
  gets ``ds.diffraction ** 2``;
* FFT norm: pty-chi's far field is ``fft2`` with the default ("backward", unnormalised)
  norm, which is ``N`` times the ortho one, so the probe it gets is ``ds.probe / N``
  (counts stay counts; the calibrated probe keeps its meaning);
* positions: pty-chi puts the patch's top-left at the integer pixel ``round(p) + origin + 0.5 - N/2`` and
  shifts the PROBE by the fractional part ``p - round(p)`` (its forward model always
  applies sub-pixel shifts to the probe, Fourier-interpolated); with
  ``position_origin_coords = (H//2 - 0.5, W//2 - 0.5)`` (``determine_position_origin_coords_by
  = SPECIFIED``) the positions ``p = (row - H//2, col - W//2)`` (y = row, x = col; no sign
  flip, no transpose) put every patch where ours is, up to that sub-pixel model;
* object: ``(1, H, W)`` of the truth's shape, in the same pixel frame: no padding, no
  cropping (every patch lies inside the object, so pty-chi never pads); its result
  ``[0]`` is compared with the truth directly.

The check simulates ``simulate(seed=0, N=32, n_patterns=64, noise=False)`` variants and
runs pty-chi's forward model on the TRUE object and probe: on integer scan positions
(``jitter=0, step=3``) it must reproduce our amplitudes to a relative error < 1e-3 (it is
~1e-7: float32 round-off); with sub-pixel positions the two sub-pixel models (ours shifts
the object, bilinear or Fourier per ``--forward``; pty-chi shifts the probe by Fourier
interpolation) differ by ~1e-2 (bilinear data) and ~5e-3 (Fourier data), while a
half-pixel position error or swapped axes give 2-20e-2: those numbers are reported, not
asserted.

pty-chi LSQML settings (and why)
--------------------------------
* ``LSQMLOptions``, Gaussian noise model (pty-chi's default; the amplitude-domain
  likelihood, like our default ``--loss amplitude``; ``gaussian_noise_std = 0.5``), SGD with
  ``step_size = 1`` for the object and ``optimal_step_size_scaler = 0.9`` (its defaults,
  examples and tests);
* minibatches: ``batching_mode = COMPACT`` (spatially clustered, PtychoShelves' "compact"),
  ``batch_size = 96``, ``momentum_acceleration_gain = 0.5``: the recipe of pty-chi's own
  momentum test (``tests/test_2d_ptycho_lsqml_momentum.py``); its option docs say momentum
  is "strongly recommended for compact batching mode. Start with 0.5". Measured on the
  small set (256 patterns, N = 64, ``simulate -n 256 --object mixed --seed 1``), 100
  epochs: amplitude / phase SSIM 0.958 / 0.929 with this recipe, 0.955 / 0.781 with the
  generic example of its Options guide (random minibatches of 64, no momentum; 0.14 s per
  epoch on a quiet machine, the same cost per epoch within the noise): the low spatial
  frequencies of the phase are what the momentum carries. ``--ptychi-batching random
  --ptychi-batch-size 64 --ptychi-momentum 0`` selects that other recipe;
* fixed probe: ``probe_options.optimizable = False``; positions not refined;
* ``rescale_probe_intensity_in_first_epoch = False``: the default spends epoch 0 only
  rescaling the probe to the data assuming the starting object (a flat 1 would make the
  calibrated probe wrong) and updates nothing else;
* ``remove_object_probe_ambiguity.enabled = False``: it rescales object and probe every
  10 epochs (mean transmission ~1), which would change the fixed, calibrated probe and the
  object's amplitude scale;
* ``patch_interpolation_method = FOURIER`` (the default; the sub-pixel probe shifts);
  ``default_device = CPU``, ``default_dtype = FLOAT32``; ``random_seed = --seed``.

Ours: ``Refiner(ds, RefineOptions(epochs=E))``, its defaults (fixed probe and positions).
Its step follows a cosine schedule over the E epochs, so its curve belongs to a run of E
epochs. Both run with ``torch.set_num_threads(--threads)`` (default 2). The time axis is
refinement time only: building the engine (pty-chi's task, including its k-means
clustering of the scan for COMPACT minibatches; our Refiner) is timed separately ("setup
s" in the table, "setup_s" in the JSON). pty-chi runs with the torch default device it
sets itself (``torch.set_default_device``); that setting is undone before our engine
runs. A level's time is interpolated linearly between the two evaluations around its
first crossing ("time_to_level_s"; the first evaluated point at or above it is
"time_to_level_checkpoint_s").
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import io
import json
import logging
import math
import os
import platform
import sys
import time
import types
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("TQDM_DISABLE", "1")   # pty-chi's per-epoch progress bar

import torch  # noqa: E402


# ----------------------------------------------------------------------------- pty-chi import
def _install_torchvision_stub() -> str:
    """Import torchvision's GaussianBlur; if torchvision cannot be imported, put a stub in
    sys.modules (see the module doc). Returns which one is in use."""
    try:
        import importlib
        importlib.import_module("torchvision.transforms").GaussianBlur
        return f"torchvision {importlib.import_module('torchvision').__version__}"
    except Exception as exc:  # not installed, or a CUDA build that cannot load
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    tv = types.ModuleType("torchvision")
    tv.__path__ = []          # a package, so 'import torchvision.transforms' resolves
    tv.__version__ = "stub"
    transforms = types.ModuleType("torchvision.transforms")

    class GaussianBlur:  # the only symbol pty-chi imports from torchvision
        def __init__(self, *args, **kwargs):
            raise NotImplementedError(
                "ptychi_compare.py: torchvision is a stub here (see the script's docstring); "
                "pty-chi's random initial object needs torchvision.transforms.GaussianBlur, "
                "but this benchmark starts from a flat object it passes in")

    transforms.GaussianBlur = GaussianBlur
    tv.transforms = transforms
    sys.modules["torchvision"] = tv
    sys.modules["torchvision.transforms"] = transforms
    return f"stub (import torchvision failed: {reason})"


TORCHVISION = _install_torchvision_stub()

import ptychi  # noqa: E402
import ptychi.api as papi  # noqa: E402
from ptychi.api.task import PtychographyTask  # noqa: E402

from ptycho_fast import evaluate as ev  # noqa: E402
from ptycho_fast.data import load_dataset  # noqa: E402
from ptycho_fast.refine import RefineOptions, Refiner  # noqa: E402
from ptycho_fast.result_files import StoredReconstruction  # noqa: E402
from ptycho_fast.simulate import simulate  # noqa: E402

logging.getLogger("ptychi").setLevel(logging.WARNING)
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ptychi(\.|$)")
# raised inside pty-chi's LSQML step (a scalar read of a tensor that requires grad): harmless
warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True to a scalar")


@contextlib.contextmanager
def ptychi_globals():
    """pty-chi sets torch's default device (``torch.set_default_device``, a
    ``__torch_function__`` mode that costs every torch call ~2 us of Python) and default
    dtype when it builds a task; it runs with them (as it does for any user), and they are
    undone afterwards so that our engine, run later in the same process, runs as it does on
    its own."""
    dtype = torch.get_default_dtype()
    try:
        yield
    finally:
        torch.set_default_device(None)
        torch.set_default_dtype(dtype)


# ----------------------------------------------------------------------------- pty-chi task
def ptychi_options(epochs: int, args) -> "papi.LSQMLOptions":
    """LSQML options (see the module doc for each choice)."""
    o = papi.LSQMLOptions()
    r = o.reconstructor_options
    r.num_epochs = max(int(epochs), 1)
    r.batch_size = int(args.ptychi_batch_size)
    r.batching_mode = getattr(papi.BatchingModes, args.ptychi_batching.upper())
    r.momentum_acceleration_gain = float(args.ptychi_momentum)
    r.noise_model = getattr(papi.NoiseModels, args.ptychi_noise_model.upper())
    r.default_device = papi.Devices.CPU
    r.default_dtype = papi.Dtypes.FLOAT32
    r.random_seed = int(args.seed)
    r.rescale_probe_intensity_in_first_epoch = False
    ob = o.object_options
    ob.optimizable = True
    ob.optimizer = papi.Optimizers.SGD
    ob.step_size = 1.0
    ob.patch_interpolation_method = papi.PatchInterpolationMethods.FOURIER
    ob.remove_object_probe_ambiguity.enabled = False
    o.probe_options.optimizable = False
    o.probe_position_options.optimizable = False
    return o


def ptychi_task(ds, initial_object: np.ndarray, epochs: int, args) -> PtychographyTask:
    """A pty-chi LSQML task on our dataset ``ds`` (the mapping of the module doc)."""
    H, W = ds.object.shape if ds.object is not None else initial_object.shape
    N = int(ds.N)
    o = ptychi_options(epochs, args)
    kH, kW = H // 2, W // 2
    o.object_options.determine_position_origin_coords_by = papi.ObjectPosOriginCoordsMethods.SPECIFIED
    o.object_options.position_origin_coords = [kH - 0.5, kW - 0.5]
    pos = np.asarray(ds.positions, dtype=np.float64)
    probe = np.asarray(ds.probe)
    if probe.ndim == 2:
        probe = probe[None]                               # (modes, N, N)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return PtychographyTask(
            o,
            diffraction_data=np.square(np.asarray(ds.diffraction, dtype=np.float32)),
            object_data=torch.as_tensor(np.asarray(initial_object, dtype=np.complex64))[None],
            probe_data=torch.as_tensor((probe / N).astype(np.complex64))[None],   # (1 OPR, modes, N, N)
            probe_position_x_px=pos[:, 1] - kW,
            probe_position_y_px=pos[:, 0] - kH,
        )


def ptychi_object(task: PtychographyTask) -> np.ndarray:
    return task.get_data_to_cpu("object", as_numpy=True)[0]


# ----------------------------------------------------------------------------- mapping check
def _forward_error(ds, args, positions=None) -> dict:
    """pty-chi's forward model on the true object and probe against our amplitudes."""
    if positions is not None:
        ds = copy.copy(ds)
        ds.positions = positions
    with ptychi_globals():
        task = ptychi_task(ds, ds.object, 1, args)
        with torch.no_grad():
            y = task.reconstructor.forward_model(torch.arange(len(ds.positions)))
    y_true = task.dataset.patterns                       # ours, squared and fftshifted by pty-chi
    a, a_true = y.clamp_min(0).sqrt().double(), y_true.sqrt().double()
    return {"amplitude_rel_err": float((a - a_true).norm() / a_true.norm()),
            "intensity_rel_err": float((y.double() - y_true.double()).norm() / y_true.double().norm()),
            "total_counts_ratio": float(y.double().sum() / y_true.double().sum())}


CHECK_TOLERANCE = 1e-3


def check_mapping(args) -> dict:
    """The data mapping on tiny noise-free data (module doc); raises if it is wrong."""
    out = {"tolerance": CHECK_TOLERANCE, "cases": {}}
    cases = {
        "integer_positions": dict(jitter=0.0, step=3.0),
        "subpixel_bilinear_data": {},
        "subpixel_fourier_data": dict(forward="fourier"),
    }
    for name, kw in cases.items():
        ds = simulate(seed=0, N=32, n_patterns=64, noise=False, **kw)
        res = _forward_error(ds, args)
        res["simulate"] = dict(seed=0, N=32, n_patterns=64, noise=False, **kw)
        if name == "subpixel_fourier_data":   # what wrong conventions would cost
            pos = np.asarray(ds.positions, dtype=np.float64)
            res["wrong_conventions_amplitude_rel_err"] = {
                "positions +0.5 px (row)": _forward_error(ds, args, pos + [0.5, 0.0])["amplitude_rel_err"],
                "positions +0.5 px (col)": _forward_error(ds, args, pos + [0.0, 0.5])["amplitude_rel_err"],
                "positions +1 px (row)": _forward_error(ds, args, pos + [1.0, 0.0])["amplitude_rel_err"],
                "row/col swapped": _forward_error(ds, args, pos[:, ::-1].copy())["amplitude_rel_err"],
            }
        out["cases"][name] = res
    err = out["cases"]["integer_positions"]["amplitude_rel_err"]
    out["passed"] = bool(err < CHECK_TOLERANCE)
    if not out["passed"]:
        raise SystemExit(f"mapping check FAILED: pty-chi's forward model on the true object and probe "
                         f"misses our patterns by {err:.3g} (relative, amplitudes) on integer positions "
                         f"(tolerance {CHECK_TOLERANCE:g}); the data conventions are not mapped right")
    return out


# ----------------------------------------------------------------------------- evaluation
def scores(obj: np.ndarray, ds, register: bool = False) -> dict:
    r = ev.evaluate(StoredReconstruction(object=np.asarray(obj, np.complex128), positions=ds.positions),
                    ev.Truth(object=np.asarray(ds.object, np.complex128), positions=ds.positions, N=ds.N,
                             probe=np.asarray(ds.probe)),
                    register=register)
    m = r.metrics
    out = {k: (None if m.get(k) is None else float(m[k])) for k in (
        "amplitude_ssim", "phase_ssim", "amplitude_psnr", "phase_psnr", "amplitude_rmse", "phase_rmse",
        "amplitude_frc_half_bit_px", "phase_frc_half_bit_px", "amplitude_scale_fit",
        "register_shift_row_px", "register_shift_col_px")}
    out["region"] = {"rows": r.info["region"]["rows"], "cols": r.info["region"]["cols"]}
    return out


def _point(epoch: int, seconds: float, s: dict, loss=None) -> dict:
    return {"epoch": int(epoch), "seconds": float(seconds), "amplitude_ssim": s["amplitude_ssim"],
            "phase_ssim": s["phase_ssim"], "loss": None if loss is None else float(loss)}


# ----------------------------------------------------------------------------- the runs
def run_ptychi(ds, args) -> dict:
    E, every = int(args.epochs_ptychi), max(int(args.eval_every_ptychi), 1)
    H, W = ds.object.shape
    t0 = time.perf_counter()
    task = ptychi_task(ds, np.ones((H, W), np.complex64), E, args)
    setup = time.perf_counter() - t0
    curve = [_point(0, 0.0, scores(ptychi_object(task), ds))]
    elapsed, done = 0.0, 0
    while done < E:
        k = min(every, E - done)
        t0 = time.perf_counter()
        task.run(n_epochs=k)
        elapsed += time.perf_counter() - t0
        done += k
        table = task.reconstructor.loss_tracker.table
        loss = float(table.iloc[-1].loss) if len(table) else None
        curve.append(_point(done, elapsed, scores(ptychi_object(task), ds), loss))
        if not args.quiet:
            p = curve[-1]
            print(f"  pty-chi epoch {done:4d}  {elapsed:8.1f} s  amp SSIM {p['amplitude_ssim']:.4f}  "
                  f"phase SSIM {p['phase_ssim']:.4f}", flush=True)
    final = ptychi_object(task)
    return {"curve": curve, "setup_s": setup, "final_object": final}


def run_ours(ds, args) -> dict:
    E, every = int(args.epochs_ours), max(int(args.eval_every_ours), 1)
    t0 = time.perf_counter()
    r = Refiner(ds, RefineOptions(epochs=E, seed=int(args.seed)))
    setup = time.perf_counter() - t0
    curve = [_point(0, 0.0, scores(r.state.object.cpu().numpy(), ds))]

    def on_epoch(rec):
        if rec.epoch % every == 0 or rec.epoch == E:
            curve.append(_point(rec.epoch, rec.elapsed, scores(r.state.object.cpu().numpy(), ds), rec.loss))
            if not args.quiet:
                p = curve[-1]
                print(f"  ours    epoch {rec.epoch:4d}  {rec.elapsed:8.1f} s  amp SSIM {p['amplitude_ssim']:.4f}  "
                      f"phase SSIM {p['phase_ssim']:.4f}", flush=True)

    r.run(on_epoch=on_epoch)
    return {"curve": curve, "setup_s": setup, "final_object": r.state.object.cpu().numpy(),
            "options": dataclasses.asdict(r.options)}


def time_to_level(curve: list, key: str, level: float) -> tuple[float | None, float | None]:
    """(interpolated seconds, first checkpoint seconds) at which ``key`` first reaches
    ``level``; (None, None) if it never does."""
    prev = None
    for p in curve:
        v = p[key]
        if v is not None and v >= level:
            if prev is None or prev[key] is None:
                return p["seconds"], p["seconds"]
            v0, t0 = prev[key], prev["seconds"]
            t = t0 + (level - v0) / (v - v0) * (p["seconds"] - t0) if v > v0 else p["seconds"]
            return float(t), p["seconds"]
        prev = p
    return None, None


# ----------------------------------------------------------------------------- outputs
def _versions() -> dict:
    import ptycho_fast
    from ptycho_fast import ops
    cpu = None
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    version = None
    with contextlib.suppress(Exception):
        from ptycho_fast.runtime import package_version
        version = package_version()
    commit = None
    with contextlib.suppress(Exception):
        import subprocess
        root = Path(ptycho_fast.__file__).resolve().parent.parent
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
        if commit and subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                     capture_output=True, text=True, timeout=10).stdout.strip():
            commit += " (modified)"
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "ptychi": getattr(ptychi, "__version__", None) or _dist_version("ptychi"),
            "ptycho_fast": version or _dist_version("ptycho_fast"),
            "ptycho_fast_path": str(Path(ptycho_fast.__file__).resolve().parent), "ptycho_fast_commit": commit,
            "ptycho_fast_extension": bool(ops.HAVE_EXTENSION), "torchvision": TORCHVISION,
            "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}


def _dist_version(name: str):
    from importlib import metadata
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def figure(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    styles = {"pty-chi LSQML": dict(color="tab:orange", marker="s"), "ptycho_fast": dict(color="tab:blue", marker="o")}
    for ax, key, title in ((axes[0], "amplitude_ssim", "amplitude SSIM"), (axes[1], "phase_ssim", "phase SSIM")):
        for name, eng in (("pty-chi LSQML", result["ptychi"]), ("ptycho_fast", result["ours"])):
            t = [p["seconds"] for p in eng["curve"]]
            v = [np.nan if p[key] is None else p[key] for p in eng["curve"]]
            ax.plot(t, v, label=f"{name} ({eng['epochs']} epochs)", markersize=3, linewidth=1.4, **styles[name])
        for level in result["settings"]["levels"]:
            ax.axhline(level, color="0.6", linestyle="--", linewidth=0.8)
        ax.set_xlabel(f"refinement wall time, s ({result['settings']['threads']} CPU threads, evaluation excluded)")
        ax.set_ylabel(title)
        ax.set_title(f"{title}, illuminated region")
        lo = min([p[key] for e in ("ptychi", "ours") for p in result[e]["curve"][1:] if p[key] is not None] + [0.5])
        ax.set_ylim(max(lo - 0.02, 0.0), 1.0)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(f"time to quality on {Path(result['data']['path']).name}: "
                 f"{result['data']['n_patterns']} patterns, N = {result['data']['N']}, "
                 f"object {result['data']['object_shape'][0]} x {result['data']['object_shape'][1]}", fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    _write(path, buf.getvalue())


def _jsonable(v):
    """Plain JSON: non-finite floats become strings ("inf"), numpy scalars numbers."""
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (bool, np.bool_)) or v is None or isinstance(v, str):
        return bool(v) if isinstance(v, np.bool_) else v
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else str(float(v))
    return str(v)


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _fmt(v, spec=".1f") -> str:
    return "-" if v is None else format(v, spec)


def table(result: dict) -> str:
    levels = result["settings"]["levels"]
    cols = [(k, lv) for k in ("amplitude", "phase") for lv in levels]
    head = ["engine", "epochs", "setup s", "wall s", "amp SSIM", "phase SSIM"] + [
        f"t(amp>={lv:g}) s" if k == "amplitude" else f"t(ph>={lv:g}) s" for k, lv in cols]
    rows = []
    for name, key in (("pty-chi LSQML", "ptychi"), ("ptycho_fast", "ours")):
        e = result[key]
        f = e["final"]
        rows.append([name, str(e["epochs"]), _fmt(e["setup_s"], ".2f"), _fmt(e["wall_s"]),
                     _fmt(f["amplitude_ssim"], ".4f"),
                     _fmt(f["phase_ssim"], ".4f")]
                    + [_fmt(e["time_to_level_s"][f"{k}_ssim>={lv:g}"]) for k, lv in cols])
    ratio_row = ["ratio pty-chi/ours", "", "", _fmt(result["ratio"]["wall_s"], ".2f"), "", ""]
    for k, lv in cols:
        r = result["ratio"]["time_to_level"][f"{k}_ssim>={lv:g}"]
        ratio_row.append(_fmt(r["ratio"], ".2f") if r["ratio"] is not None
                         else f">{r['at_least']:.2f}" if r["at_least"] is not None
                         else f"<{r['at_most']:.2f}" if r["at_most"] is not None else "-")
    rows.append(ratio_row)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    out = [line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]
    out.append("(times: refinement wall time, evaluation excluded, interpolated at the first crossing; "
               "'-': not reached; '>x' ('<x'): reached by ours (pty-chi) only, so the ratio is at least (at most) x)")
    return "\n".join(out)


def summarise(run: dict, epochs: int, levels, ds) -> dict:
    curve = run["curve"]
    ttl, ttl_cp = {}, {}
    for k in ("amplitude", "phase"):
        for lv in levels:
            a, b = time_to_level(curve, f"{k}_ssim", lv)
            ttl[f"{k}_ssim>={lv:g}"], ttl_cp[f"{k}_ssim>={lv:g}"] = a, b
    final = scores(run["final_object"], ds)
    registered = scores(run["final_object"], ds, register=True)
    return {"epochs": int(epochs), "wall_s": curve[-1]["seconds"], "setup_s": run["setup_s"],
            "seconds_per_epoch": curve[-1]["seconds"] / max(epochs, 1), "curve": curve,
            "time_to_level_s": ttl, "time_to_level_checkpoint_s": ttl_cp, "final": final,
            "final_registered": {k: registered[k] for k in (
                "amplitude_ssim", "phase_ssim", "register_shift_row_px", "register_shift_col_px")}}


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="data file (ptycho-fast format, with the ground-truth object)")
    p.add_argument("--epochs-ptychi", type=int, default=400)
    p.add_argument("--epochs-ours", type=int, default=60)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads for both engines (default 2)")
    p.add_argument("--eval-every-ptychi", type=int, default=10, help="epochs between pty-chi evaluations")
    p.add_argument("--eval-every-ours", type=int, default=2, help="epochs between evaluations of ours")
    p.add_argument("--levels", type=float, nargs="+", default=[0.95, 0.97], help="SSIM levels")
    p.add_argument("--ptychi-batch-size", type=int, default=96)
    p.add_argument("--ptychi-batching", choices=("random", "compact", "uniform"), default="compact")
    p.add_argument("--ptychi-momentum", type=float, default=0.5, help="LSQML momentum_acceleration_gain")
    p.add_argument("--ptychi-noise-model", choices=("gaussian", "poisson"), default="gaussian")
    p.add_argument("--seed", type=int, default=0, help="minibatch order seed of both engines")
    p.add_argument("--skip-check", action="store_true", help="skip the data-mapping check")
    p.add_argument("--quiet", action="store_true", help="no per-evaluation progress lines")
    args = p.parse_args(argv)
    if min(args.epochs_ptychi, args.epochs_ours) < 1:
        p.error("--epochs-ptychi and --epochs-ours must be >= 1")

    torch.set_num_threads(int(args.threads))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    check = None
    if not args.skip_check:
        check = check_mapping(args)
        c = check["cases"]
        print(f"mapping check (pty-chi forward model on the true object and probe vs our amplitudes, "
              f"relative error): integer positions {c['integer_positions']['amplitude_rel_err']:.2e} "
              f"(< {CHECK_TOLERANCE:g}: passed); sub-pixel positions: bilinear data "
              f"{c['subpixel_bilinear_data']['amplitude_rel_err']:.2e}, Fourier data "
              f"{c['subpixel_fourier_data']['amplitude_rel_err']:.2e} (sub-pixel models differ); "
              + ", ".join(f"{k} {v:.2e}" for k, v in
                          c["subpixel_fourier_data"]["wrong_conventions_amplitude_rel_err"].items()), flush=True)

    ds = load_dataset(args.data)
    if ds.object is None:
        raise SystemExit(f"{args.data}: no ground-truth object in the file; SSIM needs one")
    if np.asarray(ds.probe).ndim != 2:
        print(f"note: the probe has {np.asarray(ds.probe).shape[0]} incoherent modes; both engines use them all")
    print(f"data {args.data}: {ds.n_patterns} patterns, N = {ds.N}, object {ds.object.shape[0]} x "
          f"{ds.object.shape[1]}; {args.threads} threads", flush=True)

    print(f"pty-chi LSQML, {args.epochs_ptychi} epochs", flush=True)
    with ptychi_globals():
        pt = run_ptychi(ds, args)
    torch.set_num_threads(int(args.threads))   # (pty-chi does not change it; kept explicit)
    print(f"ptycho_fast refine, {args.epochs_ours} epochs", flush=True)
    ours = run_ours(ds, args)

    levels = [float(v) for v in args.levels]
    result = {
        "format": "ptycho_fast.ptychi_compare", "format_version": 1,
        "data": {"path": str(Path(args.data).resolve()), "n_patterns": int(ds.n_patterns), "N": int(ds.N),
                 "object_shape": list(ds.object.shape)},
        "settings": {
            "threads": int(args.threads), "levels": levels, "seed": int(args.seed),
            "eval_every": {"ptychi": int(args.eval_every_ptychi), "ours": int(args.eval_every_ours)},
            "timing": "refinement wall time (time.perf_counter), evaluation and engine setup excluded",
            "metric": "ptycho_fast.evaluate.evaluate: SSIM of amplitude and phase (global phase aligned), "
                      "illuminated region, no registration",
            "ptychi_options": ptychi_options(args.epochs_ptychi, args).get_dict(),
            "ptychi_mapping": {"diffraction": "ds.diffraction**2, data_options.fft_shift=True",
                               "probe": "ds.probe / N (pty-chi's unnormalised FFT)",
                               "positions": "y = row - H//2, x = col - W//2, position_origin_coords = "
                                            "(H//2 - 0.5, W//2 - 0.5) (SPECIFIED)",
                               "object": "(1, H, W) ones, the truth's frame; result [0]"},
            "ours_options": ours["options"],
        },
        "mapping_check": check,
        "versions": _versions(),
        "ptychi": summarise(pt, args.epochs_ptychi, levels, ds),
        "ours": summarise(ours, args.epochs_ours, levels, ds),
    }
    ratio = {"wall_s": result["ptychi"]["wall_s"] / max(result["ours"]["wall_s"], 1e-12), "time_to_level": {}}
    for key, t_ours in result["ours"]["time_to_level_s"].items():
        t_pt = result["ptychi"]["time_to_level_s"][key]
        entry = {"ptychi_s": t_pt, "ours_s": t_ours, "ratio": None, "at_least": None, "at_most": None}
        if t_pt is not None and t_ours is not None:
            entry["ratio"] = t_pt / max(t_ours, 1e-12)
        elif t_ours is not None:      # pty-chi never got there in its run
            entry["at_least"] = result["ptychi"]["wall_s"] / max(t_ours, 1e-12)
        elif t_pt is not None:        # ours never got there in its run
            entry["at_most"] = t_pt / max(result["ours"]["wall_s"], 1e-12)
        ratio["time_to_level"][key] = entry
    result["ratio"] = ratio

    _write(out / "ptychi_compare.json", (json.dumps(_jsonable(result), indent=2, allow_nan=False) + "\n").encode())
    figure(result, out / "ptychi_compare.png")
    np.savez_compressed(out / "objects.npz", ptychi=pt["final_object"], ours=ours["final_object"])
    print()
    print(table(result))
    for name, key in (("pty-chi", "ptychi"), ("ours", "ours")):
        fr = result[key]["final_registered"]
        print(f"{name}: final object registered to the truth: shift ({_fmt(fr['register_shift_row_px'], '+.2f')}, "
              f"{_fmt(fr['register_shift_col_px'], '+.2f')}) px; setup {result[key]['setup_s']:.2f} s, "
              f"{result[key]['seconds_per_epoch']:.3f} s/epoch")
    print(f"wrote {out / 'ptychi_compare.json'}, {out / 'ptychi_compare.png'}, {out / 'objects.npz'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
