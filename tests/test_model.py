"""The PtychoPINN network (ptycho_fast.model)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ptycho_fast import physics
from ptycho_fast import simulate as sim
from ptycho_fast.model import LOG_AMPLITUDE_LIMIT, NetworkConfig, PtychoPINNNet, encoder_filters


@pytest.mark.parametrize("arch", ["cnn", "ffno"])
@pytest.mark.parametrize("N,gridsize,width", [(32, 1, 0.25), (64, 2, 0.25), (128, 2, 0.125)])
def test_shapes_and_output_ranges(N, gridsize, width, arch):
    torch.manual_seed(0)
    net = PtychoPINNNet(N=N, gridsize=gridsize, width=width, arch=arch)
    C = gridsize ** 2
    x = torch.rand(2, C, N, N) * 2
    out = net(x)
    assert out.shape == (2, C, N, N) and out.dtype == torch.complex64
    amp, phase = net.amplitude_phase(x)
    limit = math.exp(LOG_AMPLITUDE_LIMIT)
    assert (amp > 1 / limit).all() and (amp < limit).all()      # exp of a clamped logit
    assert (phase.abs() <= math.pi).all()                        # pi * tanh
    torch.testing.assert_close(out, torch.polar(amp, phase))
    sig = PtychoPINNNet(N=N, gridsize=gridsize, width=width, arch=arch, amp_activation="sigmoid")
    amp, _ = sig.amplitude_phase(x)
    assert (amp > 0).all() and (amp < 1).all()                   # sigmoid: (0, 1)


def test_ffno_layout_and_state_keys():
    net = PtychoPINNNet(N=64, gridsize=2, width=1, arch="ffno", modes=12, blocks=4)
    cfg = net.config
    assert cfg.filters == [] and cfg.channels == 32
    assert all(k.startswith("ffno.") for k in net.state_dict())
    assert len(net.ffno.blocks) == 4
    assert net.ffno.lift.in_channels == 4 + 2                    # C inputs + y/x coordinates
    spectral = net.ffno.blocks[0].spectral
    assert spectral.weight_y.shape == (32, 32, 12, 2)            # real (..., 2) storage
    assert net.ffno.amplitude_head.out_channels == 4 and net.ffno.phase_head.out_channels == 4
    n_ffno = sum(p.numel() for p in net.parameters())
    n_cnn = sum(p.numel() for p in PtychoPINNNet(N=64, gridsize=2, width=2).parameters())
    assert n_ffno < n_cnn / 5                                    # the light generator
    # the CNN keeps the keys of version-1 bundles
    assert {k.split(".")[0] for k in PtychoPINNNet(N=32, gridsize=1, width=0.25).state_dict()} == {
        "encoder", "amplitude_decoder", "phase_decoder"}


def test_ffno_is_global_and_keeps_the_lowest_modes_only():
    """A spectral layer mixes across the whole patch (a CNN's 3x3 layer does not), and
    a pattern beyond the kept modes passes through it as zero."""
    torch.manual_seed(0)
    layer = PtychoPINNNet(N=32, gridsize=1, width=0.25, arch="ffno", modes=4).ffno.blocks[0].spectral
    x = torch.zeros(1, layer.weight_y.shape[0], 32, 32)
    x[..., 3, 5] = 1.0
    with torch.no_grad():
        y = layer(x)
    assert float(y[..., 28, 5].abs().sum()) > 1e-4 and float(y[..., 3, 26].abs().sum()) > 1e-4
    k = torch.arange(32, dtype=torch.float32)
    high = torch.cos(2 * math.pi * 10 * k / 32)                  # mode 10 along both axes
    x = (high[:, None] * high[None, :]).expand(1, layer.weight_y.shape[0], 32, 32).contiguous()
    with torch.no_grad():
        assert float(layer(x).abs().max()) < 1e-5


@pytest.mark.parametrize("arch", ["cnn", "ffno"])
def test_amplitude_represents_an_absorbing_object_with_a_fitted_gain(arch):
    """The saturation bug: with no calibration flag the probe gain is fitted by Parseval
    assuming unit transmission, so for an absorbing object (amplitude 0.5..1) g < 1 and the
    measured amplitudes imply transmissions |O| / g above 1. The default amplitude output
    must reach them (a sigmoid's stops at 1). Fits the amplitude head's bias alone to the
    largest implied transmission."""
    ds = sim.simulate(seed=3, N=32, n_patterns=64, photons=1e6, object="mixed")
    g = physics.probe_gain(ds.diffraction, ds.probe)
    target = float(np.abs(ds.object).max()) / g
    assert g < 0.9 and target > 1.1                            # the case that broke sigmoid
    torch.manual_seed(0)
    net = PtychoPINNNet(N=32, gridsize=1, width=0.25, arch=arch)
    assert net.config.amp_activation == "exp"                    # the default
    head = net.ffno.amplitude_head if arch == "ffno" else net.amplitude_decoder.head
    for p in net.parameters():
        p.requires_grad_(False)
    head.weight.zero_()
    head.bias.requires_grad_(True)
    opt = torch.optim.Adam([head.bias], lr=0.05)
    x = torch.rand(2, 1, 32, 32)
    for _ in range(300):
        amp, _ = net.amplitude_phase(x)
        loss = ((amp - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    amp, _ = net.amplitude_phase(x)
    assert float(amp.max()) == pytest.approx(target, rel=0.01)


def test_filters_follow_ptychopinn():
    assert encoder_filters(64, 1) == [32, 64, 128]
    assert encoder_filters(64, 2) == [64, 128, 256]
    assert encoder_filters(128, 1) == [16, 32, 64, 128]
    net = PtychoPINNNet(N=64, gridsize=2, width=0.5)
    convs = [m for m in net.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 16, 32, 32, 64, 64]
    assert convs[0].in_channels == 4                             # C = gridsize^2 input channels
    pools = [m for m in net.encoder.modules() if isinstance(m, torch.nn.MaxPool2d)]
    assert len(pools) == 3                                       # 64 -> 8 at the bottleneck
    assert net.amplitude_decoder.head.out_channels == 4 and net.phase_decoder.head.out_channels == 4


def test_separate_decoders_both_get_gradients():
    torch.manual_seed(0)
    net = PtychoPINNNet(N=32, gridsize=1, width=0.25)
    amp_params = set(map(id, net.amplitude_decoder.parameters()))
    assert not amp_params & set(map(id, net.phase_decoder.parameters()))
    out = net(torch.rand(3, 1, 32, 32))
    (out.real.sum() + out.imag.sum()).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert float(p.grad.abs().sum()) > 0, name


def test_silu_amplitude_and_seeded_init():
    torch.manual_seed(3)
    a = PtychoPINNNet(N=32, gridsize=1, width=0.25, amp_activation="silu")
    torch.manual_seed(3)
    b = PtychoPINNNet(N=32, gridsize=1, width=0.25, amp_activation="silu")
    x = torch.rand(2, 1, 32, 32)
    assert torch.equal(a(x), b(x))
    amp, _ = a.amplitude_phase(x)
    torch.testing.assert_close(a(x).abs(), amp.abs())


def test_config_and_input_errors():
    with pytest.raises(ValueError, match="N must be one of"):
        NetworkConfig(N=48)
    with pytest.raises(ValueError, match="width"):
        NetworkConfig(width=0)
    with pytest.raises(ValueError, match="amp_activation"):
        NetworkConfig(amp_activation="relu")
    with pytest.raises(ValueError, match="gridsize"):
        NetworkConfig(gridsize=0)
    with pytest.raises(ValueError, match="do not match"):
        NetworkConfig(N=64, width=1, filters=[8, 16, 32])
    with pytest.raises(ValueError, match="arch must be one of cnn, ffno"):
        NetworkConfig(arch="unet")
    with pytest.raises(ValueError, match="modes"):
        NetworkConfig(N=32, arch="ffno", modes=18)
    with pytest.raises(ValueError, match="blocks"):
        NetworkConfig(arch="ffno", blocks=0)
    with pytest.raises(ValueError, match="input must be one of amplitude, backprojection"):
        NetworkConfig(input="log")
    cfg = NetworkConfig(N=32, gridsize=2, width=0.25)
    assert cfg.to_dict() == {"N": 32, "gridsize": 2, "width": 0.25, "amp_activation": "exp",
                             "filters": [8, 16, 32], "arch": "cnn", "modes": 12, "blocks": 4,
                             "input": "amplitude"}
    net = PtychoPINNNet(cfg)
    with pytest.raises(ValueError, match=r"\(B, 4, 32, 32\)"):
        net(torch.rand(1, 1, 32, 32))


@pytest.mark.parametrize("arch", ["cnn", "ffno"])
def test_backprojection_input_takes_3c_channels_and_uses_them_at_full_resolution(arch):
    """3C input channels; the CNN's heads see the input itself (a full-resolution skip):
    a one-pixel change of the back-projection channels changes the output there."""
    torch.manual_seed(0)
    net = PtychoPINNNet(N=32, gridsize=2, width=0.25, arch=arch, input="backprojection").eval()
    assert net.config.in_channels == 12
    x = torch.rand(2, 12, 32, 32)
    out = net(x)
    assert out.shape == (2, 4, 32, 32) and out.dtype == torch.complex64
    with pytest.raises(ValueError, match=r"\(B, 3C, N, N\) = \(B, 12, 32, 32\)"):
        net(torch.rand(2, 4, 32, 32))
    x2 = x.clone()
    x2[:, 4:, 16, 16] += 1.0
    with torch.no_grad():
        assert not torch.allclose(net(x2), out)
    if arch == "cnn":
        assert net.amplitude_decoder.head[0].in_channels == net.config.filters[0] + 12


@pytest.mark.parametrize("input_kind", ["amplitude", "backprojection"])
def test_channels_last_is_the_same_network_up_to_round_off(input_kind):
    """use_channels_last changes the memory layout only: the same outputs and gradients to
    float32 round-off, and a contiguous state dict key for key."""
    torch.manual_seed(0)
    net = PtychoPINNNet(N=32, gridsize=2, width=0.25, input=input_kind)
    fast = PtychoPINNNet(N=32, gridsize=2, width=0.25, input=input_kind)
    fast.load_state_dict(net.state_dict())
    fast.use_channels_last()
    assert fast.channels_last and fast.encoder[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(3, net.config.in_channels, 32, 32)
    out, out_fast = net(x), fast(x)
    assert out_fast.is_contiguous()
    torch.testing.assert_close(out_fast, out, rtol=1e-4, atol=1e-5)
    out.abs().sum().backward()
    out_fast.abs().sum().backward()
    for (name, p), q in zip(net.named_parameters(), fast.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-5, msg=name)
    assert set(fast.state_dict()) == set(net.state_dict())
    fast.use_channels_last(False)
    assert not fast.channels_last and fast.encoder[0][0].weight.is_contiguous()
