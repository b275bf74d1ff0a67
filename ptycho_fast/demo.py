"""A short demonstration of the kernels: cut patches out of an asymmetric complex
object at sub-pixel scan positions, check them against the plain-PyTorch reference,
stitch them back (weighted, normalised), and time both implementations.

    python -m ptycho_fast.demo [--size 512] [--patch 64] [--step 12.5]
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch

from . import ops, reference


def test_object(size: int) -> torch.Tensor:
    """Complex object: an 'F'-shaped amplitude (no mirror symmetry) and a phase ramp."""
    amp = torch.full((size, size), 0.5)
    s = size // 16
    amp[3 * s:13 * s, 4 * s:6 * s] = 1.0
    amp[3 * s:5 * s, 4 * s:12 * s] = 1.0
    amp[7 * s:9 * s, 4 * s:10 * s] = 1.0
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    phase = 0.6 * yy / size - 0.3 * xx / size
    return torch.polar(amp, phase.float())


def best_time(fn, repeats: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ptycho_fast.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512, help="object side in pixels (default 512)")
    parser.add_argument("--patch", type=int, default=64, help="patch side N (default 64)")
    parser.add_argument("--step", type=float, default=12.5, help="scan step in pixels (default 12.5)")
    args = parser.parse_args(argv)
    if args.patch <= 0 or args.size < args.patch or args.step <= 0:
        parser.error("need 0 < --patch <= --size and --step > 0")

    obj = test_object(args.size)
    n_side = int((args.size - args.patch - 1) // args.step) + 1
    grid = torch.arange(n_side, dtype=torch.float32) * args.step + 0.37  # sub-pixel on purpose
    positions = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    print(f"ptycho_fast demo: object {args.size}x{args.size} complex64, {len(positions)} patches of "
          f"{args.patch}x{args.patch}, extension built: {ops.HAVE_EXTENSION}, threads: {torch.get_num_threads()}")

    patches = ops.extract_patches(obj, positions, args.patch)
    ref = reference.extract_patches(obj, positions, args.patch)
    err = (patches - ref).abs().max().item()
    print(f"  extract: max |ours - reference| = {err:.2e}")

    stats = ops.patch_stats(patches)
    print(f"  patch amplitude: mean {stats.mean.mean():.4f}, var_zero_mean {ops.var_zero_mean(patches):.3e}, "
          f"min {stats.min.min():.3f}, max {stats.max.max():.3f}")

    window = torch.ones(args.patch, args.patch)
    merged, weight = ops.stitch_normalized(patches, positions, obj.shape, window)
    inner = weight > 0.5 * weight.max()
    err_stitch = (merged - obj).abs()[inner].mean().item()
    print(f"  stitch_normalized: {inner.float().mean():.0%} of the object well covered, "
          f"mean |merged - object| there = {err_stitch:.3e} (bilinear smoothing only)")

    t_ours = best_time(lambda: ops.extract_patches(obj, positions, args.patch))
    t_ref = best_time(lambda: reference.extract_patches(obj, positions, args.patch))
    s_ours = best_time(lambda: ops.stitch_patches(patches, positions, obj.shape, window))
    s_ref = best_time(lambda: reference.stitch_patches(patches, positions, obj.shape, window))
    print(f"  extract: {t_ours * 1e3:.1f} ms (reference {t_ref * 1e3:.1f} ms, {t_ref / t_ours:.1f}x)")
    print(f"  stitch+weights: {s_ours * 1e3:.1f} ms (reference {s_ref * 1e3:.1f} ms, {s_ref / s_ours:.1f}x)")
    ok = err < 1e-4 and math.isfinite(err_stitch) and err_stitch < 0.05
    print("demo OK" if ok else "demo FAILED: results disagree with the reference")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
