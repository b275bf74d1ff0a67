"""Training-step benchmark (issue 4): forward + backward of the full PtychoPINN step,
B = 16 groups, C = 4, N = 64, width 2 (PtychoPINN's default), with our kernels in object_big
vs the same model with ``ptycho_fast.reference`` ops; plus the share of the step spent in
our ops (torch.profiler: inclusive CPU time of the ``ptycho_fast`` op events and their
autograd nodes) and in the whole object_big step (timed alone, forward + backward).

    pytest benchmarks/bench_train.py --benchmark-json=.benchmarks/train.json -s
    python benchmarks/report.py .benchmarks/train.json

``-s`` shows the printed ops-share line. PTYCHO_FAST_BENCH_SMALL=1 shrinks everything
(B = 2, N = 32, width 0.25) for the CI smoke run.
"""

import math

import pytest
import torch

from conftest import SMALL
from ptycho_fast import physics
from ptycho_fast.model import PtychoPINNNet
from ptycho_fast.object_big import ObjectBig, local_canvas_size, make_window
from ptycho_fast.train import PINNTrainingModule

B, C, N, WIDTH = (2, 4, 32, 0.25) if SMALL else (16, 4, 64, 2.0)
PROFILED_STEPS = 1 if SMALL else 3


def _probe():
    r = torch.arange(N, dtype=torch.float64) - N / 2
    rr = r[:, None] ** 2 + r[None, :] ** 2
    return (30 * torch.exp(-rr / (2 * (N / 6) ** 2)) * torch.exp(1j * 0.002 * rr)).to(torch.complex64)


@pytest.fixture(scope="module")
def case():
    g = torch.Generator().manual_seed(0)
    probe = _probe()
    X = torch.rand(B, C, N, N, generator=g) * 20
    # a gridsize-2 group: 2 x 2 positions ~N/4 apart with sub-pixel jitter, about the centroid
    grid = torch.tensor([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]]) * (N / 8)
    offsets = grid + (torch.rand(B, C, 2, generator=g) - 0.5)
    offsets = offsets - offsets.mean(dim=1, keepdim=True)
    size = local_canvas_size(offsets, N)
    s = physics.intensity_scale(X.reshape(-1, N, N))
    return probe, X, offsets, size, s


def make_module(case, backend):
    probe, _, _, size, _ = case
    torch.manual_seed(0)
    net = PtychoPINNNet(N=N, gridsize=int(math.isqrt(C)), width=WIDTH)
    merge = ObjectBig(make_window("probe", N, probe), size, ops=backend)
    return PINNTrainingModule(net, probe, 1.0, object_big=merge)


def step(module, case):
    _, X, offsets, _, s = case
    module.zero_grad(set_to_none=True)
    _, amplitude = module(physics.network_input(X, s), offsets)
    loss = physics.poisson_nll(amplitude, X)
    loss.backward()
    return loss


def run(benchmark, fn, rounds):
    fn()  # warm-up
    return benchmark.pedantic(fn, rounds=rounds, iterations=1)


@pytest.mark.benchmark(group="train_step")
def test_train_step_ptycho_fast(benchmark, case):
    module = make_module(case, "ptycho_fast")
    run(benchmark, lambda: step(module, case), rounds=1 if SMALL else 5)


@pytest.mark.benchmark(group="train_step")
def test_train_step_baseline_reference_ops(benchmark, case):
    module = make_module(case, "reference")
    run(benchmark, lambda: step(module, case), rounds=1 if SMALL else 5)


def test_train_step_same_result_with_either_ops(case):
    """The benchmark compares like with like: same loss and gradients with either ops."""
    fast, ref = make_module(case, "ptycho_fast"), make_module(case, "reference")
    loss_fast, loss_ref = step(fast, case), step(ref, case)
    torch.testing.assert_close(loss_fast, loss_ref, rtol=1e-4, atol=1e-4)
    for (name, a), (_, b) in zip(fast.named_parameters(), ref.named_parameters()):
        rel = float((a.grad - b.grad).norm() / a.grad.norm())
        assert rel < 1e-4, (name, rel)   # float32 round-off (measured ~1e-6 .. 3e-5)


def _profile(module, case):
    """(profiled step ms, ms inside our ops) per step, from torch.profiler. "Inside our
    ops" is the inclusive CPU time of every outermost profiler event whose name contains
    ``ptycho_fast``: the ``ptycho_fast::*`` kernels, their autograd wrappers and the
    backward nodes (which call the adjoint kernel), counted once each (the end-to-end
    report's classification, e2e.classify_events)."""
    from torch.profiler import ProfilerActivity, profile

    from e2e import classify_events
    step(module, case)  # warm-up outside the profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(PROFILED_STEPS):
            step(module, case)
    split = classify_events(prof.events())
    return split["total"] / PROFILED_STEPS, split["ptycho_fast kernels"] / PROFILED_STEPS


def _object_big_ms(module, case, repeats):
    """Forward + backward of the object_big step alone (the part the ops serve), ms."""
    from time import perf_counter
    _, X, offsets, _, _ = case
    g = torch.Generator().manual_seed(1)
    patches = torch.complex(torch.randn(B, C, N, N, generator=g), torch.randn(B, C, N, N, generator=g))

    def once():
        p = patches.clone().requires_grad_(True)
        module.object_big(p, offsets).abs().sum().backward()
    once()
    t0 = perf_counter()
    for _ in range(repeats):
        once()
    return (perf_counter() - t0) / repeats * 1e3


def test_train_step_ops_share(case, capsys):
    """Print the share of a training step spent in our ops, and object_big's cost with
    either ops."""
    from time import perf_counter
    lines = []
    for backend in ("ptycho_fast", "reference"):
        module = make_module(case, backend)
        step(module, case)
        t0 = perf_counter()
        for _ in range(PROFILED_STEPS):
            step(module, case)
        wall = (perf_counter() - t0) / PROFILED_STEPS * 1e3
        merge = _object_big_ms(module, case, 2 if SMALL else 10)
        head = (f"train step B={B} C={C} N={N} width={WIDTH:g} ({backend} ops): {wall:.1f} ms; "
                f"object_big fwd+bwd {merge:.2f} ms = {100 * merge / wall:.2f}% of the step")
        if backend == "ptycho_fast":
            profiled, ours = _profile(module, case)
            assert ours > 0, "no ptycho_fast:: op ran in the training step"
            head += (f"; inside ptycho_fast ops (profiler, incl. autograd) {ours:.2f} ms = "
                     f"{100 * ours / profiled:.2f}% of the profiled step ({profiled:.1f} ms)")
        lines.append(head)
    with capsys.disabled():
        print("\n" + "\n".join(lines))
