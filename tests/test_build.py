"""The compiled extension must be there: without it every kernel test is skipped and the
library silently runs the slow reference ops."""

import os

import pytest
import torch

from ptycho_fast import ops

OPS = ("extract_patches", "extract_patches_into", "stitch_patches", "patch_stats", "_position_grad")


def test_extension_is_built():
    if os.environ.get("PTYCHO_FAST_ALLOW_FALLBACK") == "1":
        pytest.skip("PTYCHO_FAST_ALLOW_FALLBACK=1: running on the reference ops on purpose")
    assert ops.HAVE_EXTENSION, "ptycho_fast._C is missing: pip install -e . --no-build-isolation"


@pytest.mark.skipif(not ops.HAVE_EXTENSION, reason="compiled extension not built")
def test_the_library_defines_exactly_the_documented_ops():
    defined = {n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("ptycho_fast::")}
    assert defined == set(OPS)


@pytest.mark.skipif(not ops.HAVE_EXTENSION, reason="compiled extension not built")
@pytest.mark.parametrize("name", OPS)
def test_every_op_has_a_cpu_kernel_fake_and_autograd(name):
    qualified = f"ptycho_fast::{name}"
    # extract_patches_into mutates its argument: no autograd by design.
    keys = ("CPU", "Meta") if name == "extract_patches_into" else ("CPU", "Meta", "Autograd")
    for key in keys:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(qualified, key), f"{name}: no {key} kernel"
