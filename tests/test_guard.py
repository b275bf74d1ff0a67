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


# ----------------------------------------------------------------------------- absorption
def test_count_spread_tells_an_absorbing_object_from_a_pure_phase_one():
    """By Parseval a pure-phase object keeps the total counts per pattern constant (Poisson
    noise only); an absorbing one makes them vary with position."""
    from ptycho_fast import simulate as sim
    phase_only = sim.simulate(seed=4, N=32, n_patterns=64, photons=1e5, amp_contrast=0.0, object="mixed",
                                forward="fourier")
    absorbing = sim.simulate(seed=4, N=32, n_patterns=64, photons=1e5, amp_contrast=0.3, object="mixed",
                              forward="fourier")
    p = guard.CountSpread.of(phase_only.diffraction).summary()
    a = guard.CountSpread.of(absorbing.diffraction).summary()
    assert p["n_patterns"] == a["n_patterns"] == 64
    assert not p["absorbing"] and p["excess"] < guard.ABSORPTION_SPREAD
    assert p["std"] < 0.01 * p["mean"] < a["std"]
    assert a["absorbing"] and a["excess"] > 3 * guard.ABSORPTION_SPREAD
    # streamed in batches = all at once (device sums)
    spread = guard.CountSpread()
    X = torch.as_tensor(absorbing.diffraction)
    for k in range(0, 64, 10):
        spread.add(X[k:k + 10])
    assert spread.summary() == pytest.approx(a)


def test_degenerate_amplitude_rule():
    flat = {"amplitude": {"var_zero_mean": 0.0, "mean": 0.9}}
    varying = {"amplitude": {"var_zero_mean": 1e-3, "mean": 0.9}}
    absorbing = {"absorbing": True, "excess": 0.08}
    phase_only = {"absorbing": False, "excess": 0.0}
    reason = guard.degenerate_amplitude_reason(flat, 1e-10, absorbing)
    assert "data say the object absorbs" in reason and "8 %" in reason
    assert guard.degenerate_amplitude_reason(flat, 1e-10, phase_only) is None
    assert guard.degenerate_amplitude_reason(varying, 1e-10, absorbing) is None
