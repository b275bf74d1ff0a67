"""The health guard's streaming statistics (ptycho_fast.guard.StatsAccumulator)."""

from __future__ import annotations

import pytest
import torch

from ptycho_fast import guard


def _patches(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.complex(torch.randn(n, 6, 6, generator=g), torch.randn(n, 6, 6, generator=g)) + 0.5


def test_batches_combine_to_the_statistics_of_all_finite_patches():
    a, b = _patches(5, 0), _patches(7, 1)
    b[3, 2, 2] = complex(float("nan"), 0.0)                 # left out, counted as non-finite
    acc = guard.StatsAccumulator()
    acc.add(guard.batch_stats(a))
    acc.add(guard.batch_stats(b))
    s = acc.summary()
    kept = torch.cat([a, b[[0, 1, 2, 4, 5, 6]]])
    assert s["n_patches"] == 12 and s["n_nonfinite_patches"] == 1
    whole = guard.summarize(kept)
    for view in guard.VIEWS:
        for k in ("mean", "std", "min", "max", "var_zero_mean"):
            assert s[view][k] == pytest.approx(whole[view][k], rel=1e-9, abs=1e-12), (view, k)
    amp = kept.abs().double()
    assert s["amplitude"]["mean"] == pytest.approx(float(amp.mean()), rel=1e-6)
    assert s["amplitude"]["std"] == pytest.approx(float(amp.std(correction=0)), rel=1e-5)


def test_one_device_to_host_copy_per_batch(monkeypatch):
    stats = guard.batch_stats(_patches(4, 2))
    calls = []
    original = torch.Tensor.cpu

    def counting(self, *args, **kwargs):
        calls.append(tuple(self.shape))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "cpu", counting)
    guard.StatsAccumulator().add(stats)
    assert calls == [(4 * len(guard.VIEWS), 4)]
