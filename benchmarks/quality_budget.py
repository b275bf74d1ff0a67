"""Network quality in a fixed CPU budget, self-supervised and on unseen objects (issue 11).

    .venv/bin/python benchmarks/quality_budget.py --out docs/quality          # ~30 min on 2 cores
    .venv/bin/python benchmarks/quality_budget.py --minutes 1 --out /tmp/q    # a quick look

Simulates (fixed seeds, Fourier-shifted forward model, 1e6 photons, aperture probe of 32
px, raster step 11 px, N = 64) a TRAINING scan of 1600 patterns over a 512² "mixed"
object (lines, blobs, discs, a bar target, a Siemens star) and three UNSEEN scans of 729
patterns: another mixed object, dead leaves and a Siemens star. For each configuration
(``--configs``; default: the train defaults = CNN, and the FFNO) it trains with
``ptycho-fast train --max-time MINUTES`` on the training scan, reconstructs the training
scan itself (the self-supervised case) and the three unseen scans with ``ptycho-fast
infer`` (``--groups every``, and ``cover`` for the training scan), and scores each with
``ptycho-fast evaluate`` (illuminated region, global phase removed). Every stage is the
user-facing CLI in a subprocess. Writes ``report.md``, ``results.json`` and the
evaluation pictures (``<config>_<scan>_every.png``) into --out.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e import run_stage, write_report  # noqa: E402

SCAN = ["--N", "64", "--forward", "fourier", "--probe-diameter", "32", "--step", "11", "--photons", "1e6"]
TRAIN = ("train_mixed", ["--object", "mixed", "--n-patterns", "1600", "--object-size", "512", "--seed", "1"])
UNSEEN = [("unseen_mixed", ["--object", "mixed", "--n-patterns", "729", "--seed", "2"]),
          ("unseen_deadleaves", ["--object", "deadleaves", "--n-patterns", "729", "--seed", "3"]),
          ("unseen_siemens", ["--object", "siemens", "--n-patterns", "729", "--seed", "4"])]
CONFIGS = {"cnn": [], "cnn_gridsize3": ["--gridsize", "3"], "ffno": ["--arch", "ffno", "--width", "1"],
           "cnn_amplitude_input": ["--input", "amplitude"]}


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="docs/quality", help="report directory (default docs/quality)")
    p.add_argument("--minutes", type=float, default=10.0, help="training budget per configuration (default 10)")
    p.add_argument("--configs", default="cnn,ffno",
                   help=f"comma-separated, of {', '.join(CONFIGS)} (default cnn,ffno)")
    p.add_argument("--keep", metavar="DIR", default=None, help="keep data and runs in DIR")
    args = p.parse_args(argv)
    configs = [c for c in args.configs.split(",") if c]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        p.error(f"--configs: unknown {', '.join(unknown)} (known: {', '.join(CONFIGS)})")

    out = Path(args.out)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="ptycho_fast_quality."))
    work.mkdir(parents=True, exist_ok=True)
    log: list[str] = []
    results = []
    try:
        scans = {}
        for name, extra in [TRAIN, *UNSEEN]:
            scans[name] = work / f"{name}.npz"
            if not scans[name].exists():
                run_stage(f"simulate {name}", ["simulate", "--out", str(scans[name]), *SCAN, *extra, "-q"], log)
        for config in configs:
            run_dir = work / config
            if run_dir.exists():
                shutil.rmtree(run_dir)
            train_s = run_stage(f"train {config}", [
                "train", str(scans[TRAIN[0]]), "--out", str(run_dir), "--epochs", "10000",
                "--max-time", f"{args.minutes:g}", "--quiet", *CONFIGS[config]], log)
            history = _json(run_dir / "losses.json")["epochs"]
            cases = [(TRAIN[0], "every"), (TRAIN[0], "cover")] + [(name, "every") for name, _ in UNSEEN]
            for scan, groups in cases:
                tag = f"{scan}_{groups}"
                inf, ev = run_dir / f"infer_{tag}", run_dir / f"eval_{tag}"
                run_stage(f"infer {config} {tag}", ["infer", "--model", str(run_dir), "--data", str(scans[scan]),
                                                    "--out", str(inf), "--groups", groups, "--quiet"], log)
                run_stage(f"evaluate {config} {tag}", ["evaluate", str(inf), "--truth", str(scans[scan]),
                                                       "--out", str(ev), "--quiet"], log)
                m, s = _json(ev / "metrics.json"), _json(inf / "summary.json")
                results.append({
                    "config": config, "options": CONFIGS[config], "scan": scan, "groups": groups,
                    "self_supervised": scan == TRAIN[0], "epochs": len(history),
                    "train_seconds": round(train_s, 1),
                    "train_patterns_per_s": round(history[-1]["patterns_per_s"], 1),
                    "final_train_loss": history[-1]["train_loss"],
                    **{k: m[k] for k in ("amplitude_ssim", "phase_ssim", "amplitude_psnr", "phase_psnr",
                                         "amplitude_frc_half_bit_nyquist", "phase_frc_half_bit_nyquist")},
                    "infer_patterns_per_s": s["patterns_per_s"],
                    "infer_network_patterns_per_s": s["patterns_per_s_by_stage"]["network"],
                })
                out.mkdir(parents=True, exist_ok=True)
                if groups == "every":
                    _small_png(ev / "compare.png", out / f"{config}_{tag}.png")
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        write_report(out, render(args, results), log)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def _small_png(src: Path, dst: Path) -> None:
    """The picture with a 256-colour palette (a quarter of the bytes; the repository keeps
    them), or as it is without Pillow."""
    try:
        from PIL import Image
    except ImportError:
        shutil.copyfile(src, dst)
        return
    with Image.open(src) as im:
        im.convert("RGB").quantize(256).save(dst, optimize=True)


def render(args, results) -> str:
    lines = [f"# Network quality in a {args.minutes:g}-minute CPU budget",
             "", "`benchmarks/quality_budget.py` (module docstring: data and protocol). SSIM / PSNR (dB) / "
             "half-bit FRC (fraction of Nyquist) from `ptycho-fast evaluate` on the illuminated region.", "",
             "| config | scan | groups | epochs | train patterns/s | loss | amp SSIM | phase SSIM | amp PSNR | "
             "phase PSNR | amp FRC | phase FRC | infer patterns/s (network stage) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(
            f"| {r['config']} | {r['scan']} | {r['groups']} | {r['epochs']} | {r['train_patterns_per_s']:.0f} | "
            f"{r['final_train_loss']:.2f} | {r['amplitude_ssim']:.3f} | {r['phase_ssim']:.3f} | "
            f"{r['amplitude_psnr']:.1f} | {r['phase_psnr']:.1f} | {r['amplitude_frc_half_bit_nyquist']:.2f} | "
            f"{r['phase_frc_half_bit_nyquist']:.2f} | {r['infer_patterns_per_s']:.0f} "
            f"({r['infer_network_patterns_per_s']:.0f}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
