"""End-to-end benchmark: simulate -> train (fixed CPU budget) -> infer -> evaluate.

Reproducible (fixed seeds) and self-contained; writes a markdown report and its figures
to --out (default docs/e2e), which docs/benchmarks.md links to:

    .venv/bin/python benchmarks/e2e.py --out docs/e2e

Every stage is the user-facing CLI (``ptycho-fast simulate|train|infer|evaluate``) run
in a subprocess and timed from outside; the stages' own JSON outputs supply the quality
metrics and the inference time split. The training time split (network / FFT / our
kernels / optimizer) comes from torch.profiler over a few training steps of the trained
model on the same data (:func:`training_time_split`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_stage(name: str, args: list[str], log: list[str]) -> float:
    cmd = [sys.executable, "-m", "ptycho_fast", *args]
    print(f"==> {name}: ptycho-fast {' '.join(args)}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    log.append(f"$ ptycho-fast {' '.join(args)}\n{proc.stdout.strip()}\n{proc.stderr.strip()[-2000:]}")
    if proc.returncode != 0:
        print(proc.stdout, proc.stderr, sep="\n", file=sys.stderr)
        raise SystemExit(f"e2e: stage {name} failed with exit code {proc.returncode}")
    print(f"    {seconds:.1f} s", flush=True)
    return seconds


def write_report(out: Path, report: str, log: list[str]) -> None:
    """report.md (printed too) and log.txt (every stage's command and output) into ``out``."""
    (out / "report.md").write_text(report + "\n")
    (out / "log.txt").write_text("\n\n".join(log) + "\n")
    print(report)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="docs/e2e", help="report directory (default docs/e2e)")
    p.add_argument("--patterns", type=int, default=2000, help="simulated patterns (default 2000)")
    p.add_argument("--photons", type=float, default=1e6, help="photons per pattern (default 1e6)")
    p.add_argument("--object", default="deadleaves", help="simulated object kind (default deadleaves)")
    p.add_argument("--epochs", type=int, default=30, help="training epochs: the fixed CPU budget (default 30)")
    p.add_argument("--n-groups", type=int, default=None,
                   help="training groups per epoch (default: one per pattern)")
    p.add_argument("--width", type=float, default=0.5, help="network width multiplier (default 0.5)")
    p.add_argument("--batch-size", type=int, default=8, help="training batch size in groups (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", metavar="DIR", default=None,
                   help="keep the intermediate files (data, run, inference, evaluation) in DIR")
    args = p.parse_args(argv)

    out = Path(args.out)
    if args.keep:
        work = Path(args.keep)
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="ptycho_fast_e2e."))
    log: list[str] = []
    try:
        data = work / "data.npz"
        run_dir, infer_dir, eval_dir = work / "run", work / "infer", work / "eval"
        times = {}
        times["simulate"] = run_stage("simulate", [
            "simulate", "--out", str(data), "--seed", str(args.seed), "--n-patterns", str(args.patterns),
            "--photons", str(args.photons), "--object", args.object, "--N", "64"], log)
        times["train"] = run_stage("train", [
            "train", str(data), "--out", str(run_dir), "--epochs", str(args.epochs), "--gridsize", "2",
            *(["--n-groups", str(args.n_groups)] if args.n_groups else []), "--width", f"{args.width:g}",
            "--batch-size", str(args.batch_size), "--seed", str(args.seed), "--quiet"], log)
        times["infer"] = run_stage("infer", [
            "infer", "--model", str(run_dir), "--data", str(data), "--out", str(infer_dir), "--quiet"], log)
        times["evaluate"] = run_stage("evaluate", [
            "evaluate", str(infer_dir), "--truth", str(data), "--out", str(eval_dir)], log)

        print("==> training time split (torch.profiler)", flush=True)
        split = training_time_split(run_dir / "model", data, args.batch_size, seed=args.seed)
        metrics = json.loads((eval_dir / "metrics.json").read_text())
        summary = json.loads((infer_dir / "summary.json").read_text())
        out.mkdir(parents=True, exist_ok=True)
        for src, dst in [(eval_dir / "compare.png", "compare.png"), (eval_dir / "frc.png", "frc.png"),
                         (run_dir / "loss_curve.png", "loss_curve.png"),
                         (infer_dir / "amplitude.png", "amplitude.png"), (infer_dir / "phase.png", "phase.png")]:
            if src.exists():
                shutil.copyfile(src, out / dst)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (out / "infer_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        (out / "train_split.json").write_text(json.dumps(split, indent=2) + "\n")
        history = json.loads((run_dir / "losses.json").read_text())
        write_report(out, render(args, times, metrics, summary, split, history), log)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


#: profiler event names -> category of the training step (first match wins; an event
#: nested in an already-classified one is not counted again)
SPLIT_CATEGORIES = (
    ("ptycho_fast kernels", ("ptycho_fast",)),
    ("FFT", ("fft",)),
    ("optimizer (Adam)", ("optimizer.step", "optimizer.zero_grad")),
)


def classify_events(events) -> dict[str, float]:
    """Inclusive CPU milliseconds per category of :data:`SPLIT_CATEGORIES`, plus
    ``network and the rest`` (total minus the categories: convolutions, activations, the
    loss, autograd bookkeeping) and ``total`` (the top-level events). An event counts in
    the first category one of its names matches, unless an ancestor already counted."""
    def category(name: str):
        low = name.lower()
        for label, keys in SPLIT_CATEGORIES:
            if any(k in low for k in keys):
                return label
        return None

    out = {label: 0.0 for label, _ in SPLIT_CATEGORIES}
    total = 0.0
    for e in events:
        if e.cpu_parent is None:
            total += e.cpu_time_total
        label = category(e.name)
        if label is None:
            continue
        parent, counted = e.cpu_parent, False
        while parent is not None and not counted:
            counted = category(parent.name) is not None
            parent = parent.cpu_parent
        if not counted:
            out[label] += e.cpu_time_total
    out = {k: v / 1e3 for k, v in out.items()}
    out["network and the rest"] = total / 1e3 - sum(out.values())
    out["total"] = total / 1e3
    return out


def training_time_split(model_dir: Path, data_path: Path, batch_size: int, steps: int = 4,
                        seed: int = 0) -> dict:
    """Profile ``steps`` training steps (forward, Poisson loss, backward, Adam) of the
    trained bundle on the first groups of the data, as ``ptycho-fast train`` runs them;
    returns milliseconds per step by category (:func:`classify_events`)."""
    import numpy as np
    import torch
    from torch.profiler import ProfilerActivity, profile

    from ptycho_fast import physics
    from ptycho_fast.bundle import load_bundle
    from ptycho_fast.data import group_positions, load_dataset
    from ptycho_fast.object_big import ObjectBig
    from ptycho_fast.train import PINNTrainingModule

    bundle = load_bundle(model_dir)
    data = load_dataset(data_path)
    groups = group_positions(np.asarray(data.positions), bundle.gridsize, seed=seed)
    merge = (ObjectBig(bundle.window_tensor(), bundle.local_canvas_size)
             if bundle.object_big and bundle.C > 1 else None)
    module = PINNTrainingModule(bundle.model.train(), bundle.probe_tensor(), bundle.probe_gain,
                                object_big=merge)
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-5)
    N = bundle.N
    batches = []
    for k in range(steps + 1):
        ids = np.arange(k * batch_size, (k + 1) * batch_size) % groups.n_groups
        X = torch.as_tensor(np.asarray(data.diffraction[groups.indices[ids].reshape(-1)], dtype=np.float32))
        batches.append((X.reshape(batch_size, -1, N, N),
                        torch.as_tensor(groups.offsets[ids], dtype=torch.float32)))

    def step(X, offsets):
        optimizer.zero_grad(set_to_none=True)
        _, amplitude = module(bundle.network_input(X), offsets)
        physics.poisson_nll(amplitude, X).backward()
        optimizer.step()

    step(*batches[0])  # warm-up outside the profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for X, offsets in batches[1:]:
            step(X, offsets)
    split = {k: v / steps for k, v in classify_events(prof.events()).items()}
    return {"batch_groups": batch_size, "C": bundle.C, "N": N, "steps": steps, "ms_per_step": split}


def pick(d: dict, *keys, default="n/a"):
    for k in keys:
        if k in d:
            return d[k]
    return default


def fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, (int, float)) else str(v)


def deficit_lines(metrics) -> list[str]:
    """A sentence per image whose FRC is below the 1/2-bit threshold on the coarsest rings
    (metrics.frc_resolution: the resolution is then measured from above them)."""
    out = []
    for part in ("amplitude", "phase"):
        v = metrics.get(f"{part}_frc_half_bit_low_frequency_deficit_nyquist")
        if v is not None:
            out += [f"The {part} FRC is below the 1/2-bit threshold up to {v:.3f} of Nyquist: the coarsest "
                    "scales disagree (a slow error the data barely constrain; the resolution above is "
                    "measured from there on; docs/evaluation.md §2).", ""]
    return out


def render(args, times, metrics, summary, split, history) -> str:
    rows = []
    for part in ("amplitude", "phase"):
        rows.append(f"| {part} | " + " | ".join(fmt(pick(metrics, f"{part}_{m}")) for m in
                                               ("ssim", "psnr", "mae", "rmse", "frc_half_bit_px", "frc_one_seventh_px")) + " |")
    timing = {k: v for k, v in summary.get("timings_s", {}).items() if isinstance(v, (int, float))}
    region = metrics.get("region", {})
    epochs = history.get("epochs", [])
    last = epochs[-1] if epochs else {}
    train_rate = (sum(e["patterns_per_s"] for e in epochs) / len(epochs)) if epochs else float("nan")
    ms = split["ms_per_step"]
    groups = f"{args.n_groups} groups" if args.n_groups else "one group per pattern"
    return "\n".join([
        "# End-to-end benchmark",
        "",
        f"`python benchmarks/e2e.py --out docs/e2e` (seed {args.seed}): simulate {args.patterns} patterns "
        f"(N = 64, {args.photons:g} photons/pattern, object `{args.object}`), train gridsize 2, width "
        f"{args.width:g}, batch {args.batch_size}, {args.epochs} epochs ({groups}, 10 % held out) on the CPU, "
        "infer every pattern, evaluate against the ground truth. CPU: 2 cores, torch "
        + str(summary.get("versions", {}).get("torch", "?")) + ".",
        "",
        "| stage | wall time (s) |",
        "|---|---:|",
        *[f"| {k} | {v:.1f} |" for k, v in times.items()],
        "",
        f"Training: final loss {fmt(last.get('train_loss'))} (validation {fmt(last.get('val_loss'))}), "
        f"{fmt(train_rate)} patterns/s on average.",
        "",
        f"Training step time split (torch.profiler, {split['steps']} steps of {split['batch_groups']} groups "
        f"x C = {split['C']}, N = {split['N']}; inclusive CPU time):",
        "",
        "| part of the step | ms per step | share |",
        "|---|---:|---:|",
        *[f"| {k} | {v:.1f} | {100 * v / ms['total']:.1f} % |" for k, v in ms.items() if k != "total"],
        f"| total | {ms['total']:.1f} | 100 % |",
        "",
        f"Inference: {fmt(pick(summary, 'patterns_per_s'))} patterns/s; time split (s): "
        + ", ".join(f"{k} {fmt(v)}" for k, v in timing.items()),
        "",
        f"Quality in the {region.get('crop', '?')} region, rows {region.get('rows')} cols {region.get('cols')} "
        f"({region.get('shape', ['?', '?'])[0]} x {region.get('shape', ['?', '?'])[1]} px of the "
        f"{region.get('object_shape', ['?', '?'])[0]} x {region.get('object_shape', ['?', '?'])[1]} object; "
        "docs/evaluation.md §3), phase after removing the global offset:",
        "",
        "| | SSIM | PSNR (dB) | MAE | RMSE | FRC ½-bit (px) | FRC 1/7 (px) |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        *deficit_lines(metrics),
        "![compare](compare.png)",
        "",
        "![frc](frc.png)",
        "",
        "![loss](loss_curve.png)",
    ])


if __name__ == "__main__":
    sys.exit(main())
