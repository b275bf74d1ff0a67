#!/usr/bin/env python
"""Regenerate the bundled sample of ``ptycho-fast infer`` (ptycho_fast/sample/).

    PYTHONPATH=. python scripts/make_sample.py            # ~10 min on 2 CPU cores
    PYTHONPATH=. python scripts/make_sample.py --check    # also report the SSIM vs the truth

What it does (every step seeded; docs/inference.md §6):

1. simulates a TRAINING set with ``ptycho_fast.simulate`` (N = 64, TRAIN_PATTERNS patterns
   over a TRAIN_OBJECT_SIZE² realistic "mixed" object — lines, blobs, discs, a bar target,
   a Siemens star — aperture probe of 32 px, raster step 11 px, Fourier-shifted forward
   model, 1e6 photons/pattern, Poisson noise, seed TRAIN_SEED) into a temporary
   directory — it is not shipped;
2. simulates the SAMPLE dataset the same way with another seed (SAMPLE_SEED) and fewer
   patterns (another object realisation, a "beamline" scan the model never saw), and
   writes ``sample.npz`` with the diffraction stored as integer **counts** (uint16; the
   data layer reads integer data as counts and takes the square root, exactly recovering
   the float32 amplitudes) in a compressed NPZ, so it stays small;
3. trains the PtychoPINN model on the training set with ``ptycho_fast.train.train``
   (the train defaults — CNN, backprojection input, gridsize 2, width 0.5, batch 16, lr
   1e-3 cosine — for EPOCHS epochs, seed 0, deterministic algorithms) and copies its model
   bundle to ``model/``;
4. writes ``provenance.json`` (seeds, sizes, settings, versions, run time and, with
   ``--check``, the reconstruction's SSIM against the ground truth).

The new sample is assembled in a temporary directory beside the target and swapped in at
the end, so an interrupted run leaves the old sample intact. The result is reproducible on
one machine and torch version (CPU training with deterministic algorithms); another torch
build may differ in the last bits of the weights, not in quality.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ptycho_fast import coords  # noqa: E402
from ptycho_fast.data import load_dataset  # noqa: E402
from ptycho_fast.data.dataset import atomic_output  # noqa: E402
from ptycho_fast.simulate import SimulationConfig, simulate, simulate_to_file  # noqa: E402
from ptycho_fast.train import TrainConfig, train  # noqa: E402

N = 64
TRAIN_PATTERNS = 1600
TRAIN_OBJECT_SIZE = 512
TRAIN_SEED = 1
SAMPLE_PATTERNS = 256
SAMPLE_SEED = 2
OBJECT = "mixed"       # realistic: fine lines, blobs, discs, a bar target, a Siemens star
#: the scan both sets share (benchmarks/quality_budget.py uses the same)
SCAN = dict(forward="fourier", probe_diameter=32.0, step=11.0)
GRIDSIZE = 2
WIDTH = 0.5            # conv blocks of 16, 32, 64 filters (train's default)
EPOCHS = 40
BATCH_SIZE = 16        # train's default
LR = 1e-3              # cosine schedule (train's default) down to 1e-5
TRAIN_SEED_MODEL = 0
DEFAULT_OUT = ROOT / "ptycho_fast" / "sample"


def write_sample_npz(dataset, path: Path) -> None:
    """The sample as a compressed PtychoPINN NPZ with integer counts (see module doc)."""
    counts = np.rint(dataset.diffraction.astype(np.float64) ** 2)
    dtype = np.uint16 if counts.max() <= np.iinfo(np.uint16).max else np.uint32
    counts = counts.astype(dtype)
    back = np.sqrt(counts.astype(np.float32))
    if not np.array_equal(back, dataset.diffraction):
        raise RuntimeError("integer counts do not reproduce the amplitudes exactly")
    x, y = coords.xy_from_positions(dataset.positions)
    arrays = {"diffraction": counts, "probeGuess": dataset.probe.astype(np.complex64),
              "objectGuess": dataset.object.astype(np.complex64), "xcoords": x, "ycoords": y}
    arrays.update({k: np.float64(v) for k, v in dataset.metadata.to_dict().items()})
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)


def check(sample_dir: Path) -> dict:
    """Reconstruct the new sample and compare with its ground truth (SSIM, covered region)."""
    from ptycho_fast import metrics
    from ptycho_fast.bundle import BundlePredictor, load_bundle
    from ptycho_fast.infer import reconstruct
    bundle = load_bundle(sample_dir / "model")
    ds = load_dataset(sample_dir / "sample.npz")
    rec = reconstruct(ds, BundlePredictor(bundle), N=bundle.N, gridsize=bundle.gridsize)
    return quality(rec, ds, metrics)


def quality(rec, ds, metrics) -> dict:
    """SSIM of amplitude and phase (global phase offset removed) against the truth, inside
    the box spanned by the scan's probe centres (every pixel there is well covered)."""
    lo = np.ceil(rec.positions.min(axis=0)).astype(int)
    hi = np.floor(rec.positions.max(axis=0)).astype(int) + 1
    box = (slice(lo[0], hi[0]), slice(lo[1], hi[1]))
    truth, got = ds.object[box], rec.object[box]
    offset = np.angle(np.vdot(got, truth))         # the phase that best aligns got with truth
    aligned = got * np.exp(1j * offset)
    amp = metrics.ssim(np.abs(truth), np.abs(aligned))
    phase = metrics.ssim(np.angle(truth), np.angle(aligned))
    return {"region_rows": [int(lo[0]), int(hi[0])], "region_cols": [int(lo[1]), int(hi[1])],
            "ssim_amplitude": float(amp), "ssim_phase": float(phase),
            "global_phase_offset_removed": float(offset)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="sample directory (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=EPOCHS, help="training epochs (default: %(default)s)")
    p.add_argument("--width", type=float, default=WIDTH, help="network width (default: %(default)s)")
    p.add_argument("--train-patterns", type=int, default=TRAIN_PATTERNS)
    p.add_argument("--check", action="store_true", help="reconstruct the new sample and report its SSIM")
    args = p.parse_args(argv)

    t_start = time.perf_counter()
    out = args.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".sample-work.", dir=out.parent))
    staging = Path(tempfile.mkdtemp(prefix=".sample-new.", dir=out.parent))
    try:
        train_file = work / "train.npz"
        print(simulate_to_file(SimulationConfig(N=N, n_patterns=args.train_patterns, object=OBJECT,
                                                object_size=TRAIN_OBJECT_SIZE, **SCAN), train_file,
                               "npz", seed=TRAIN_SEED, progress=False), flush=True)
        sample = simulate(SimulationConfig(N=N, n_patterns=SAMPLE_PATTERNS, object=OBJECT, **SCAN), seed=SAMPLE_SEED)
        write_sample_npz(sample, staging / "sample.npz")
        print(f"sample: {sample.summary()} -> {staging / 'sample.npz'}", flush=True)

        t_train = time.perf_counter()
        result = train(TrainConfig(data=str(train_file), out=str(work / "run"), epochs=args.epochs,
                                   batch_size=BATCH_SIZE, gridsize=GRIDSIZE, width=args.width, lr=LR,
                                   seed=TRAIN_SEED_MODEL, deterministic=True, device="cpu"))
        train_seconds = time.perf_counter() - t_train
        shutil.copytree(result.bundle_dir, staging / "model")
        # the training file lived in a temporary directory: name what it was instead
        bundle_json = staging / "model" / "bundle.json"
        info = json.loads(bundle_json.read_text())
        info["training_data"]["source"] = (f"scripts/make_sample.py: simulated train.npz ({args.train_patterns} "
                                           f"patterns, seed {TRAIN_SEED}; not shipped, regenerated by the script)")
        bundle_json.write_text(json.dumps(info, indent=2) + "\n")

        provenance = {
            "made_by": "scripts/make_sample.py",
            "training_set": {"N": N, "n_patterns": args.train_patterns, "seed": TRAIN_SEED,
                             "object": OBJECT, "object_size": TRAIN_OBJECT_SIZE, "scan": SCAN,
                             "simulation": "ptycho_fast.simulate defaults otherwise (aperture probe, "
                                           "raster scan, 1e6 photons/pattern, Poisson noise)"},
            "sample": {"file": "sample.npz", "N": N, "n_patterns": SAMPLE_PATTERNS, "seed": SAMPLE_SEED,
                       "object": OBJECT, "scan": SCAN,
                       "diffraction_stored_as": "uint16 counts (read back as sqrt(counts))",
                       "object_shape": list(sample.object.shape)},
            "model": {"dir": "model", "arch": result.model.config.arch, "input": result.model.config.input,
                      "gridsize": GRIDSIZE, "width": args.width, "epochs": args.epochs,
                      "batch_size": BATCH_SIZE, "lr": LR, "seed": TRAIN_SEED_MODEL, "deterministic": True,
                      "final_train_loss": result.history[-1]["train_loss"],
                      "final_val_loss": result.history[-1]["val_loss"],
                      "intensity_scale": result.intensity_scale, "probe_gain": result.probe_gain},
            "train_seconds": round(train_seconds, 1),
        }
        if args.check:
            provenance["quality"] = check(staging)
            print(f"quality vs ground truth: {provenance['quality']}", flush=True)
        import torch
        provenance["versions"] = {"torch": torch.__version__, "numpy": np.__version__}
        provenance["total_seconds"] = round(time.perf_counter() - t_start, 1)
        sizes = {str(f.relative_to(staging)): f.stat().st_size for f in sorted(staging.rglob("*")) if f.is_file()}
        provenance["bytes"] = sizes
        (staging / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")

        for f in staging.rglob("*"):     # package data: readable by everyone (mkdtemp gives 0700)
            f.chmod(0o755 if f.is_dir() else 0o644)
        staging.chmod(0o755)
        # swap the new sample in (the old one is removed only after the new one is in place)
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=".sample-old.", dir=out.parent))
            out.replace(old / "sample")
        staging.replace(out)
        staging = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({total / 1e6:.2f} MB) in {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
