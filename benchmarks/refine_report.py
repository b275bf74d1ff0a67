"""The refine engine's benchmark report (docs/refine.md, docs/benchmarks.md).

On data made by a forward model that is NOT the engine's own (``simulate --forward
fourier``: sub-pixel shifts by Fourier phase ramps, while the engine interpolates
bilinearly — no inverse crime): 1600 patterns, N = 64, a 512 x 512 object, 1e6 photons per
pattern, the defocused aperture probe. For each object kind (``mixed``: lines, bar target,
Siemens star, discs, dead leaves; ``deadleaves``) it measures

* time-to-quality: amplitude and phase SSIM (``ptycho-fast evaluate``'s metrics, the
  illuminated region) against the refinement's own wall time (evaluation excluded), for the
  default recipe from a flat start;
* seconds per epoch of the same engine on our kernels and on ``--ops reference``;
* position refinement: the scan positions perturbed by sigma = 1.5 px (mean removed),
  recovered with ``--refine-positions``; probe refinement from a wrong-defocus probe;
* from the network's image: the bundled sample, ``infer`` then refine, against a flat start.

    python benchmarks/refine_report.py --out docs/refine [--quick]

writes report.json, time_to_quality.png, the reconstructions' compare figures and
position_corrections.png into --out, and prints the tables (the numbers quoted in
docs/refine.md come from this script).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ptycho_fast import coords, evaluate as ev, figures, simulate
from ptycho_fast.data import load_dataset, save_dataset
from ptycho_fast.refine import Refiner, RefineOptions
from ptycho_fast.result_files import StoredReconstruction

BENCH = dict(n_patterns=1600, N=64, object_size=512, step=11.0, probe_diameter=32.0, photons=1e6,
             forward="fourier")


def make_data(kind: str, directory: Path, quick: bool, seed: int = 1):
    path = directory / f"{kind}{'_quick' if quick else ''}.npz"
    if not path.exists():
        cfg = dict(BENCH, object=kind)
        if quick:
            cfg.update(n_patterns=256, object_size=None)
        ds = simulate.simulate(seed=seed, **cfg)
        save_dataset(ds, path)
    return load_dataset(path), path


def scores(obj, ds) -> tuple[float, float]:
    r = ev.evaluate(StoredReconstruction(object=np.asarray(obj, np.complex128), positions=ds.positions),
                    ev.Truth(object=ds.object.astype(np.complex128), positions=ds.positions, N=ds.N, probe=ds.probe))
    return float(r.metrics["amplitude_ssim"]), float(r.metrics["phase_ssim"])


def time_to_quality(ds, options: RefineOptions, every: int = 2, **kw):
    """(curve rows [epoch, seconds, amp, phase, loss], refiner)."""
    r = Refiner(ds, options, **kw)
    rows = []

    def on_epoch(rec):
        if rec.epoch % every == 0 or rec.epoch == options.epochs:
            a, p = scores(r.state.object.cpu().numpy(), ds)
            rows.append([rec.epoch, rec.elapsed, a, p, rec.loss])
    r.run(on_epoch)
    return rows, r


def seconds_per_epoch(ds, ops: str, epochs: int) -> float:
    r = Refiner(ds, RefineOptions(epochs=epochs, coarse_phase_every=0), ops=ops)
    r.run_epoch()                      # warm-up
    t0 = time.perf_counter()
    for _ in range(epochs - 1):
        r.run_epoch()
    return (time.perf_counter() - t0) / (epochs - 1)


def first_time(rows, column: int, level: float):
    for row in rows:
        if row[column] >= level:
            return row[1]
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="docs/refine")
    p.add_argument("--data-dir", default=".benchmarks/refine_data")
    p.add_argument("--epochs", type=int, default=RefineOptions().epochs)
    p.add_argument("--quick", action="store_true", help="256 patterns, few epochs (a smoke run)")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    out, data_dir = Path(args.out), Path(args.data_dir)
    out.mkdir(parents=True, exist_ok=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    epochs = 6 if args.quick else args.epochs
    report: dict = {"settings": {**BENCH, "epochs": epochs, "threads": torch.get_num_threads(),
                                 "options": dataclasses.asdict(RefineOptions(epochs=epochs))}, "objects": {}}
    curves = {}
    for kind in ("mixed", "deadleaves"):
        ds, path = make_data(kind, data_dir, args.quick)
        rows, r = time_to_quality(ds, RefineOptions(epochs=epochs))
        curves[kind] = rows
        obj = r.state.object.cpu().numpy()
        res = ev.evaluate(StoredReconstruction(object=obj.astype(np.complex128), positions=ds.positions),
                          ev.Truth(object=ds.object.astype(np.complex128), positions=ds.positions, N=ds.N,
                                   probe=ds.probe))
        (out / f"compare_{kind}.png").write_bytes(ev.compare_figure(res))
        entry = {"data": str(path), "final": {k: res.metrics[k] for k in (
                     "amplitude_ssim", "phase_ssim", "amplitude_psnr", "phase_psnr",
                     "amplitude_frc_half_bit_px", "phase_frc_half_bit_px")},
                 "seconds": r.state.elapsed, "curve": rows,
                 "time_to": {f"{what}_{lvl}": first_time(rows, col, lvl) for what, col in
                             (("amplitude", 2), ("phase", 3)) for lvl in (0.8, 0.9, 0.95, 0.97)}}
        n = 3 if args.quick else 6
        entry["seconds_per_epoch"] = {"ptycho_fast": seconds_per_epoch(ds, "ptycho_fast", n),
                                      "reference": seconds_per_epoch(ds, "reference", max(2, n // 2))}
        entry["seconds_per_epoch"]["ratio"] = entry["seconds_per_epoch"]["reference"] / entry["seconds_per_epoch"]["ptycho_fast"]
        report["objects"][kind] = entry
        print(f"{kind}: {epochs} epochs in {r.state.elapsed:.1f} s: amplitude SSIM {entry['final']['amplitude_ssim']:.3f}, "
              f"phase SSIM {entry['final']['phase_ssim']:.3f}; s/epoch ours {entry['seconds_per_epoch']['ptycho_fast']:.3f} "
              f"vs reference {entry['seconds_per_epoch']['reference']:.3f} ({entry['seconds_per_epoch']['ratio']:.1f}x)",
              flush=True)

    # position and probe refinement on dead leaves (structure everywhere: every position is
    # observable)
    ds, _ = make_data("deadleaves", data_dir, args.quick)
    rng = np.random.default_rng(0)
    err = rng.normal(scale=1.5, size=ds.positions.shape)
    err -= err.mean(axis=0)
    bad = dataclasses.replace(ds, positions=ds.positions + err)
    frame = coords.canvas_frame(ds.positions, ds.N, ds.object.shape)
    r = Refiner(bad, RefineOptions(epochs=epochs, refine_positions=True), frame=frame).run()
    resid = bad.positions + (r.centres() - r.centres_start) - ds.positions
    resid -= resid.mean(axis=0)
    fixed = scores(r.state.object.cpu().numpy(), ds)
    r0 = Refiner(bad, RefineOptions(epochs=epochs), frame=frame).run()
    unfixed = scores(r0.state.object.cpu().numpy(), ds)
    report["positions"] = {"sigma_px": 1.5, "rms_before_px": float(np.sqrt((err ** 2).sum(1).mean())),
                           "rms_after_px": float(np.sqrt((resid ** 2).sum(1).mean())),
                           "ssim_with_correction": fixed, "ssim_without_correction": unfixed,
                           "seconds": r.state.elapsed}
    (out / "position_corrections.png").write_bytes(figures.corrections_png(
        bad.positions, bad.positions + (r.centres() - r.centres_start),
        "dead leaves, positions perturbed by 1.5 px rms per axis: corrections found"))
    print(f"positions: rms error {report['positions']['rms_before_px']:.2f} -> {report['positions']['rms_after_px']:.3f} px; "
          f"SSIM {fixed} with correction, {unfixed} without", flush=True)

    wrong = simulate.make_probe("aperture", ds.N, 32 * 1.5)
    wrong = (wrong * np.sqrt((np.abs(ds.probe) ** 2).sum() / (np.abs(wrong) ** 2).sum())).astype(np.complex64)
    badp = dataclasses.replace(ds, probe=wrong)
    r = Refiner(badp, RefineOptions(epochs=epochs, refine_probe=True)).run()
    r0 = Refiner(badp, RefineOptions(epochs=epochs)).run()

    def probe_error(q):
        c = np.vdot(q, ds.probe) / np.vdot(q, q)
        return float(np.linalg.norm(c * q - ds.probe) / np.linalg.norm(ds.probe))
    report["probe"] = {"start": "aperture probe defocused for a 48 px beam (true: 32 px)",
                       "error_before": probe_error(wrong), "error_after": probe_error(r.state.probe[0].cpu().numpy()),
                       "ssim_with_refinement": scores(r.state.object.cpu().numpy(), ds),
                       "ssim_without_refinement": scores(r0.state.object.cpu().numpy(), ds), "seconds": r.state.elapsed}
    print(f"probe: relative error {report['probe']['error_before']:.3f} -> {report['probe']['error_after']:.3f}; "
          f"SSIM {report['probe']['ssim_with_refinement']} vs {report['probe']['ssim_without_refinement']} fixed",
          flush=True)

    # from the network's image: the bundled sample
    from ptycho_fast import infer
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        res = infer.run_infer(infer.InferConfig(out=str(Path(tmp) / "sample"), quiet=True))
    sample = load_dataset(infer.SAMPLE_DATA)
    start = np.where(res.reconstruction.covered, res.reconstruction.object, np.complex64(1))
    se = 2 if args.quick else 20
    net_rows, _ = time_to_quality(sample, RefineOptions(epochs=se), every=1, init_object=start)
    flat_rows, _ = time_to_quality(sample, RefineOptions(epochs=se), every=1)
    report["sample_from_network"] = {"network_only": scores(res.reconstruction.object, sample),
                                     "network_seconds": res.summary["timings_s"]["total"],
                                     "from_network": net_rows, "from_flat": flat_rows}
    print(f"sample: network alone {report['sample_from_network']['network_only']}; after {se} epochs from it "
          f"{net_rows[-1][2:4]}, from flat {flat_rows[-1][2:4]}", flush=True)

    _figure(out / "time_to_quality.png", curves, net_rows, flat_rows)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out / 'report.json'}, {out / 'time_to_quality.png'}")
    return 0


def _figure(path: Path, curves: dict, net_rows, flat_rows) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(11, 4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    for ax, col, what in ((axes[0], 2, "amplitude"), (axes[1], 3, "phase")):
        for kind, rows in curves.items():
            a = np.array(rows)
            ax.plot(a[:, 1], a[:, col], ".-", label=f"{kind} (flat start)")
        ax.set_xlabel("refinement wall time (s), 2 threads")
        ax.set_ylabel(f"{what} SSIM (illuminated region)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_ylim(0, 1)
    ax = axes[2]
    for rows, label in ((net_rows, "from the network's image"), (flat_rows, "from flat")):
        a = np.array(rows)
        ax.plot(a[:, 0], a[:, 2], ".-", label=f"amplitude, {label}")
        ax.plot(a[:, 0], a[:, 3], ".--", label=f"phase, {label}")
    ax.set_xlabel("epoch (bundled sample)")
    ax.set_ylabel("SSIM")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    sys.exit(main())
