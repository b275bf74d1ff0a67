"""Checks a CUDA build of ptycho_fast: every op has a CPU and a CUDA kernel.

Called by .ci/cuda_build_check.sh as `python check_cuda_registration.py BUILD_DIR`, with
BUILD_DIR first on sys.path. Works without a GPU (only the registrations are checked);
where a GPU is visible it also runs each op once on it against the CPU kernel.
Exits non-zero on any failure.
"""

import os
import sys

import torch

OPS = ("extract_patches", "extract_patches_into", "stitch_patches", "patch_stats", "_position_grad")
KEYS = ("CPU", "CUDA")


def registered_ops() -> set[str]:
    """Every op of the ptycho_fast namespace that the loaded library defines."""
    return {name.split("::", 1)[1] for name in torch._C._dispatch_get_all_op_names()
            if name.startswith("ptycho_fast::")}


def main() -> int:
    build_dir = os.path.realpath(sys.argv[1]) if len(sys.argv) > 1 else None
    import ptycho_fast._C as ext
    from ptycho_fast import ops

    where = os.path.realpath(ext.__file__)
    if build_dir is not None and not where.startswith(build_dir + os.sep):
        print(f"FAIL: imported {where}, not the build in {build_dir}", file=sys.stderr)
        return 1
    if not ops.HAVE_EXTENSION:
        print("FAIL: ptycho_fast.ops did not load the compiled extension", file=sys.stderr)
        return 1

    defined = registered_ops()
    if defined != set(OPS):
        print(f"FAIL: the library defines ops {sorted(defined)}, this check expects {sorted(OPS)}",
              file=sys.stderr)
        return 1
    missing = [f"{op}/{key}" for op in OPS for key in KEYS
               if not torch._C._dispatch_has_kernel_for_dispatch_key(f"ptycho_fast::{op}", key)]
    if missing:
        print(f"FAIL: no kernel registered for {', '.join(missing)} ({where})", file=sys.stderr)
        return 1

    ran = "no GPU visible, kernels not run"
    if torch.cuda.is_available():
        g = torch.Generator().manual_seed(0)
        canvas = torch.randn(2, 40, 50, dtype=torch.complex128, generator=g)
        pos = torch.rand(2, 7, 2, dtype=torch.float64, generator=g) * 40 - 5
        patches = ops.extract_patches(canvas, pos, 12)
        grad = torch.randn(patches.shape, dtype=patches.dtype, generator=g)
        cpu = (patches, ops.stitch_patches(grad, pos, (40, 50)),
               *ops.patch_stats(grad), torch.ops.ptycho_fast._position_grad(canvas, pos, grad))
        c, p, q = canvas.cuda(), pos.cuda(), grad.cuda()
        gpu = (ops.extract_patches(c, p, 12), ops.stitch_patches(q, p, (40, 50)),
               *ops.patch_stats(q), torch.ops.ptycho_fast._position_grad(c, p, q))
        for name, a, b in zip(("extract", "stitch", "mean", "var", "min", "max", "_position_grad"),
                              cpu, gpu):
            torch.testing.assert_close(b.cpu(), a, rtol=1e-10, atol=1e-10, msg=f"{name}: CUDA != CPU")
        ran = f"ran on {torch.cuda.get_device_name()} and matched the CPU"

    print(f"cuda_build_check: {len(OPS)} ops x {'+'.join(KEYS)} registered "
          f"(torch {torch.__version__}, CUDA {torch.version.cuda}; {ran}) from {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
