"""End-to-end benchmark: simulate -> train (fixed CPU budget) -> infer -> evaluate.

Reproducible (fixed seeds) and self-contained; writes a markdown report and its figures
to --out (default docs/e2e), which docs/benchmarks.md links to:

    .venv/bin/python benchmarks/e2e.py --out docs/e2e

Every stage is the user-facing CLI (``ptycho-fast simulate|train|infer|evaluate``) run
in a subprocess and timed from outside; the stages' own JSON outputs supply the quality
metrics and the inference time split.
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="docs/e2e", help="report directory (default docs/e2e)")
    p.add_argument("--patterns", type=int, default=2000, help="simulated patterns (default 2000)")
    p.add_argument("--photons", type=float, default=1e6, help="photons per pattern (default 1e6)")
    p.add_argument("--object", default="deadleaves", help="simulated object kind (default deadleaves)")
    p.add_argument("--epochs", type=int, default=8, help="training epochs: the fixed CPU budget (default 8)")
    p.add_argument("--n-groups", type=int, default=512, help="training groups per epoch (default 512)")
    p.add_argument("--width", type=int, default=1, help="network width multiplier (default 1)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    out = Path(args.out)
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
            "--n-groups", str(args.n_groups), "--width", str(args.width), "--seed", str(args.seed),
            "--quiet"], log)
        times["infer"] = run_stage("infer", [
            "infer", "--model", str(run_dir), "--data", str(data), "--out", str(infer_dir), "--quiet"], log)
        times["evaluate"] = run_stage("evaluate", [
            "evaluate", str(infer_dir), "--truth", str(data), "--out", str(eval_dir)], log)

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
        (out / "report.md").write_text(render(args, times, metrics, summary) + "\n")
        (out / "log.txt").write_text("\n\n".join(log) + "\n")
        print((out / "report.md").read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def pick(d: dict, *keys, default="n/a"):
    for k in keys:
        if k in d:
            return d[k]
    return default


def fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, (int, float)) else str(v)


def render(args, times, metrics, summary) -> str:
    rows = []
    for part in ("amplitude", "phase"):
        rows.append(f"| {part} | " + " | ".join(fmt(pick(metrics, f"{part}_{m}")) for m in
                                               ("ssim", "psnr", "mae", "rmse", "frc_half_bit_px", "frc_one_seventh_px")) + " |")
    timing = {k: v for k, v in summary.get("timings_s", {}).items() if isinstance(v, (int, float))}
    return "\n".join([
        "# End-to-end benchmark",
        "",
        f"`python benchmarks/e2e.py --out docs/e2e` (seed {args.seed}): simulate {args.patterns} patterns "
        f"(N = 64, {args.photons:g} photons/pattern, object `{args.object}`), train gridsize 2 width "
        f"{args.width} for {args.epochs} epochs of {args.n_groups} groups on the CPU, infer every pattern, "
        "evaluate against the ground truth. CPU: 2 cores, torch " + str(summary.get("versions", {}).get("torch", "?")) + ".",
        "",
        "| stage | wall time (s) |",
        "|---|---:|",
        *[f"| {k} | {v:.1f} |" for k, v in times.items()],
        "",
        f"Inference: {fmt(pick(summary, 'patterns_per_s'))} patterns/s; time split (s): "
        + ", ".join(f"{k} {fmt(v)}" for k, v in timing.items()),
        "",
        "| | SSIM | PSNR (dB) | MAE | RMSE | FRC ½-bit (px) | FRC 1/7 (px) |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "![compare](compare.png)",
        "",
        "![frc](frc.png)",
        "",
        "![loss](loss_curve.png)",
    ])


if __name__ == "__main__":
    sys.exit(main())
