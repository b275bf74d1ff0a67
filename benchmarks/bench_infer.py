"""End-to-end inference throughput (issue 5): ``ptycho_fast.infer.reconstruct`` on the
bundled sample scaled up to ~10^4 patterns, streamed from an HDF5 file, with our kernels
vs the same run through ``ptycho_fast.reference`` ops (object_big, stitching and patch
statistics all switch), split into network / stitching / patch statistics / reading.

The scaled dataset tiles the sample's 256 scan positions (and their patterns) on a grid
of copies, one object width apart: the same scan density, a 1017 x 1188 pixel canvas,
no ground truth (the canvas is the scan's extent). Two groups of benchmarks:

* ``infer_end_to_end``: the whole reconstruction with the sample model (gridsize 2, so
  ~4 x 10^4 patches are predicted and stitched);
* ``infer_stitching_only``: the same data path (reading, statistics, stitching) with the
  network replaced by one batch of the model's patches computed once and replayed for
  every batch, so the table shows what the kernels change.

    pytest benchmarks/bench_infer.py --benchmark-json=.benchmarks/infer.json -s
    python benchmarks/report.py .benchmarks/infer.json

``-s`` prints the per-stage split. PTYCHO_FAST_BENCH_SMALL=1 shrinks it to 64 patterns
(a few seconds; CI runs it with --benchmark-disable).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import SMALL
from ptycho_fast import infer
from ptycho_fast.bundle import BundlePredictor, load_bundle
from ptycho_fast.data import PtychoDataset, load_dataset, write_h5

TARGET_PATTERNS = 64 if SMALL else 10_240
BATCH_GROUPS = 64
ROUNDS_END_TO_END = 1           # ~1 min each at full size (the network dominates)
ROUNDS_STITCHING = 1 if SMALL else 3
_results: dict[str, dict] = {}


@pytest.fixture(scope="module")
def scaled(tmp_path_factory):
    """(bundle, lazily read HDF5 dataset of ~TARGET_PATTERNS patterns)."""
    model, data = infer.sample_paths()
    bundle = load_bundle(model)
    bundle.model.use_channels_last()   # as `ptycho-fast infer` runs it (infer.run_infer)
    sample = load_dataset(data)
    P = sample.n_patterns
    H, W = sample.object.shape
    tiles = max(1, math.ceil(TARGET_PATTERNS / P))
    side = math.ceil(math.sqrt(tiles))
    shifts = np.array([(i // side * H, i % side * W) for i in range(tiles)], dtype=np.float64)
    positions = (sample.positions[None] + shifts[:, None]).reshape(-1, 2)[:TARGET_PATTERNS]
    index = np.tile(np.arange(P), tiles)[:TARGET_PATTERNS]
    ds = PtychoDataset(diffraction=sample.diffraction[index], positions=positions, probe=sample.probe,
                       metadata=sample.metadata, source="scaled sample")
    path = tmp_path_factory.mktemp("bench") / "scaled.h5"
    write_h5(ds, path)
    lazy = load_dataset(path, lazy=True)
    yield bundle, lazy
    lazy.close()


def _run(bundle, ds, ops, predictor):
    rec = infer.reconstruct(ds, predictor, N=bundle.N, gridsize=bundle.gridsize, batch_size=BATCH_GROUPS,
                            ops=ops, guard=False)
    return rec


def _bench(benchmark, name, fn, rounds, warmup=True):
    if warmup:
        fn()
    recs = []

    def once():
        recs.append(fn())
    benchmark.pedantic(once, rounds=rounds, iterations=1)
    t = {k: float(np.median([r.timings[k] for r in recs])) for k in recs[0].timings}
    P = recs[0].n_patterns
    split = {"patterns": P, "patches": recs[0].n_patches,
             "patterns_per_s": P / t["reconstruct_total"],
             "network_s": t["network"], "stitching_s": t["stitching"], "patch_stats_s": t["stats"],
             "io_read_s": t["read"], "total_s": t["reconstruct_total"]}
    benchmark.extra_info.update(split)
    _results[name] = split
    return recs[-1]


@pytest.mark.benchmark(group="infer_end_to_end")
def test_infer_ptycho_fast(benchmark, scaled):
    bundle, ds = scaled
    _bench(benchmark, "end_to_end ptycho_fast",
           lambda: _run(bundle, ds, "ptycho_fast", BundlePredictor(bundle, "ptycho_fast")),
           ROUNDS_END_TO_END, warmup=False)


@pytest.mark.benchmark(group="infer_end_to_end")
def test_infer_baseline_reference_ops(benchmark, scaled):
    bundle, ds = scaled
    _bench(benchmark, "end_to_end reference",
           lambda: _run(bundle, ds, "reference", BundlePredictor(bundle, "reference")),
           ROUNDS_END_TO_END, warmup=False)


@pytest.fixture(scope="module")
def fixed_patches(scaled):
    """One batch of the model's patches (network and stitched), computed once; replayed for
    every batch (their content does not change the timing)."""
    bundle, ds = scaled
    pool = {}

    def record(X, offsets, indices):
        if not pool:
            pool["raw"], pool["patches"] = BundlePredictor(bundle)(X, offsets, indices)
        return pool["raw"], pool["patches"]
    infer.reconstruct(ds, record, N=bundle.N, gridsize=bundle.gridsize, batch_size=BATCH_GROUPS,
                      n_patterns=min(ds.n_patterns, BATCH_GROUPS), guard=False)
    return pool


def _replay(pool):
    def predictor(X, offsets, indices):
        b = X.shape[0]
        return pool["raw"][:b], pool["patches"][:b]
    return predictor


@pytest.mark.benchmark(group="infer_stitching_only")
def test_stitching_ptycho_fast(benchmark, scaled, fixed_patches):
    bundle, ds = scaled
    _bench(benchmark, "stitching_only ptycho_fast",
           lambda: _run(bundle, ds, "ptycho_fast", _replay(fixed_patches)), ROUNDS_STITCHING)


@pytest.mark.benchmark(group="infer_stitching_only")
def test_stitching_baseline_reference_ops(benchmark, scaled, fixed_patches):
    bundle, ds = scaled
    rec = _bench(benchmark, "stitching_only reference",
                 lambda: _run(bundle, ds, "reference", _replay(fixed_patches)), ROUNDS_STITCHING)
    ours = _run(bundle, ds, "ptycho_fast", _replay(fixed_patches))
    np.testing.assert_allclose(rec.object, ours.object, rtol=1e-4, atol=1e-5)  # same result


def teardown_module(module):
    if not _results:
        return
    print("\n\ninference on the scaled sample (median timings, seconds):")
    print(f"{'run':32s} {'patterns':>8s} {'pat/s':>8s} {'network':>8s} {'stitch':>8s} {'stats':>8s} "
          f"{'read':>8s} {'total':>8s}")
    for name, r in _results.items():
        print(f"{name:32s} {r['patterns']:8d} {r['patterns_per_s']:8.0f} {r['network_s']:8.2f} "
              f"{r['stitching_s']:8.2f} {r['patch_stats_s']:8.2f} {r['io_read_s']:8.2f} {r['total_s']:8.2f}")
