"""Fig. 6 filter diagnosis: spectra against an explicit DFT, aliasing and dead filters on
filters whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import zfwidgets as zf
from zfwidgets.backend.experiments.diagnosis import diagnose_filters, filter_spectra
from zfwidgets.errors import BadParameterError, OutOfRangeError, UnknownLayerError


def net_with(weight: torch.Tensor, stride: int) -> nn.Module:
    f, c, kh, kw = weight.shape
    conv = nn.Conv2d(c, f, (kh, kw), stride=stride, bias=False)
    with torch.no_grad():
        conv.weight.copy_(weight)
    return nn.Sequential(conv, nn.ReLU(), nn.Conv2d(f, 4, 3))


def test_spectra_equal_an_explicit_dft():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(2, 3, 5, 4))
    energy, fy, fx = filter_spectra(torch.from_numpy(w), size=8)
    for f in range(2):
        for u in range(8):
            for v in range(8):
                total = 0.0
                for c in range(3):
                    z = sum(w[f, c, y, x] * np.exp(-2j * np.pi * (u * y + v * x) / 8)
                            for y in range(5) for x in range(4))
                    total += abs(z) ** 2
                assert energy[f, u, v] == pytest.approx(total, rel=1e-9, abs=1e-9)
    assert fy[1] == pytest.approx(1 / 8) and fx[4] == pytest.approx(-0.5)


def test_known_filters():
    k = 16
    flat = torch.ones(3, k, k)
    yy, xx = torch.meshgrid(torch.arange(k), torch.arange(k), indexing="ij")
    checker = ((-1.0) ** (yy + xx)).expand(3, k, k)            # 0.5 cycles/px on both axes
    stripes = torch.cos(2 * math.pi * 0.18 * yy).expand(3, k, k)  # 0.18 cycles/px along rows
    zero = torch.zeros(3, k, k)
    w = torch.stack([flat, checker, stripes, zero]) * 0.05
    d1 = diagnose_filters(net_with(w, 1))
    d2 = diagnose_filters(net_with(w, 2))
    d4 = diagnose_filters(net_with(w, 4))
    assert d1.layer == "0" and d4.stride == (4, 4) and d4.kernel == (16, 16)
    assert d1.dominant[0] < 0.05 and d1.dominant[1] > 0.6    # flat: lowest band, checker: corner
    assert abs(d1.dominant[2] - 0.18) < 0.04
    assert d1.aliased[0] < 0.01 and d4.aliased[0] < 0.15      # flat: only the box's side lobes
    assert d1.aliased[1] == pytest.approx(0.0, abs=1e-9)      # stride 1 holds everything
    assert d2.aliased[1] > 0.9                                 # checkerboard aliases at stride 2
    assert d2.aliased[2] < 0.1 and d4.aliased[2] > 0.9        # 0.18 c/px fits stride 2, not 4
    assert list(d1.dead) == [False, False, False, True]
    np.testing.assert_allclose(d1.spectrum[:3].sum(1), 1.0)
    assert d1.spectrum[3].sum() == 0 and d1.clipped.sum() == 0
    s = d2.summary()
    assert s["filters"] == 4 and s["dead"] == 1 and s["stride"] == (2, 2)
    assert sum(s["low / mid / high energy"]) == pytest.approx(1.0)


def test_mined_dead_maps_and_clipping():
    w = torch.randn(4, 3, 5, 5) * 0.2                          # RMS ~0.2 > radius 0.1
    net = net_with(w, 2)

    class Top:                                                 # a LayerTopK stand-in
        values = torch.tensor([[3.0, 1.0], [0.0, 0.0], [2.0, 1.0], [5.0, 4.0]])

    d = diagnose_filters(net, mined=Top())
    assert list(d.dead) == [False, True, False, False] and d.clipped.all()
    with pytest.raises(OutOfRangeError):
        diagnose_filters(net, mined=type("T", (), {"values": torch.zeros(3, 1)})())


def test_first_layer_of_the_offline_model_and_the_models_left_alone():
    s = zf.Session()
    before = {k: v.clone() for k, v in s.model.state_dict().items()}
    d = diagnose_filters(s)
    assert d.layer == "stem.conv" and d.kernel == (3, 3) and d.stride == (2, 2)
    assert d.spectrum.shape == (32, 12) and 0 <= d.aliased.min() and d.aliased.max() <= 1
    assert d.dead.sum() < 32
    for k, v in s.model.state_dict().items():
        assert torch.equal(v, before[k])
    assert not any(m._forward_hooks for m in s.model.modules())


def test_bad_input_raises():
    net = net_with(torch.randn(2, 3, 3, 3), 1)
    with pytest.raises(BadParameterError):
        diagnose_filters(net, "1")                             # a ReLU
    with pytest.raises(UnknownLayerError):
        diagnose_filters(net, "nope")
    with pytest.raises(BadParameterError):
        diagnose_filters(nn.Sequential(nn.Conv2d(1, 2, 3)))    # no RGB conv
    with pytest.raises(BadParameterError):
        diagnose_filters(net, bands=1)
    with pytest.raises(BadParameterError):
        filter_spectra(torch.randn(2, 3, 9, 9), size=8)


def test_figure_panels():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from zfwidgets.plots.diagnosis import diagnosis_figure

    w = torch.randn(6, 3, 5, 5) * 0.05
    w[2] = 0
    net = net_with(w, 2)
    d = diagnose_filters(net)
    fig = Figure(figsize=(10, 3))
    FigureCanvasAgg(fig)
    fig, axes = diagnosis_figure(d, net[0].weight, fig=fig)
    assert len(axes) == 4 and "6 filters 5x5" in axes[0].get_title()
    assert "1 dead" in axes[3].get_title()
    bars = axes[3].patches
    assert len(bars) == 6 and sum(p.get_facecolor()[0] > 0.8 for p in bars) == 1   # one red
    np.testing.assert_allclose(sorted(p.get_height() for p in bars), np.sort(d.aliased))
    fig.canvas.draw()
    _, axes2 = diagnosis_figure(d)                     # without weights: RMS bars
    assert "RMS" in axes2[0].get_title() and len(axes2[0].patches) == 6
