"""The PtychoPINN network (ptycho_fast.model)."""

from __future__ import annotations

import math

import pytest
import torch

from ptycho_fast.model import NetworkConfig, PtychoPINNNet, encoder_filters


@pytest.mark.parametrize("N,gridsize,width", [(32, 1, 0.25), (64, 2, 0.25), (128, 2, 0.125)])
def test_shapes_and_output_ranges(N, gridsize, width):
    torch.manual_seed(0)
    net = PtychoPINNNet(N=N, gridsize=gridsize, width=width)
    C = gridsize ** 2
    x = torch.rand(2, C, N, N) * 2
    out = net(x)
    assert out.shape == (2, C, N, N) and out.dtype == torch.complex64
    amp, phase = net.amplitude_phase(x)
    assert (amp > 0).all() and (amp < 1).all()                  # sigmoid: a transmission
    assert (phase.abs() <= math.pi).all()                        # pi * tanh
    torch.testing.assert_close(out, torch.polar(amp, phase))


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
    cfg = NetworkConfig(N=32, gridsize=2, width=0.25)
    assert cfg.to_dict() == {"N": 32, "gridsize": 2, "width": 0.25, "amp_activation": "sigmoid",
                             "filters": [8, 16, 32]}
    net = PtychoPINNNet(cfg)
    with pytest.raises(ValueError, match=r"\(B, 4, 32, 32\)"):
        net(torch.rand(1, 1, 32, 32))
