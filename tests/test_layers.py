"""Layer table and receptive fields against an empirical probe; forward recording."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from rf_probe import empirical_box
from zfwidgets.backend.layers import Geometry, record_forward, split_layer_id


def _check_boxes(model, x, layers_to_check):
    rec = record_forward(model, x)
    infos = {i.name: i for i in rec.layers}
    H, W = x.shape[-2:]
    checked = 0
    for name in layers_to_check:
        info = infos[name]
        assert info.geometry is not None, name
        _, h, w = info.shape
        for (y, xx) in {(0, 0), (h // 2, w // 2), (h - 1, w - 1), (h // 3, w - 1)}:
            want = empirical_box(model, x, name, y, xx)
            got = info.geometry.box(y, xx, H, W)
            assert got == want, (name, (y, xx), got, want)
            checked += 1
    return checked


def test_alexnet_receptive_fields():
    torch.manual_seed(0)
    model = torchvision.models.alexnet(weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    rec = record_forward(model, x)
    names = [i.name for i in rec.layers]
    assert names[:3] == ["features.0", "features.1", "features.2"]
    # textbook AlexNet: conv1 11x11/4 -> RF 11, pool1 -> 19, conv5 -> 163, pool5 -> 195
    g = {i.name: i.geometry for i in rec.layers}
    assert g["features.0"].size == (11, 11) and g["features.0"].stride == (4, 4)
    assert g["features.2"].size == (19, 19)
    assert g["features.10"].size == (163, 163) and g["features.10"].stride == (16, 16)
    assert g["features.12"].size == (195, 195) and g["features.12"].stride == (32, 32)
    assert _check_boxes(model, x, ["features.0", "features.2", "features.5", "features.10",
                                   "features.12"]) >= 15


class Residual(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return x + self.act(self.bn(self.conv(x)))


class Odd(nn.Module):
    """Residuals, depthwise and dilated convs, 'same' padding, F.pad, concat, non-square input."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, (5, 3), stride=(2, 1), padding=(2, 0))
        self.res = Residual(8)
        self.dw = nn.Conv2d(8, 8, 3, stride=2, groups=8, padding=1)
        self.dil = nn.Conv2d(8, 8, 3, dilation=2, padding="same")
        self.pool = nn.MaxPool2d(3, 2, padding=1, ceil_mode=True)
        self.branch = nn.Conv2d(8, 4, 1)
        self.relu = nn.ReLU()

    def forward(self, x):
        x = self.res(self.stem(x))
        x = self.relu(self.dw(x))
        x = torch.nn.functional.pad(x, (1, 0, 2, 0))
        x = self.relu(self.dil(x))
        x = self.pool(x)
        return torch.cat([x, self.branch(x)], dim=1)


def test_odd_architecture_receptive_fields():
    torch.manual_seed(0)
    model = Odd().eval()
    x = torch.randn(1, 3, 57, 41)
    rec = record_forward(model, x)
    assert [i.name for i in rec.layers] == [
        "stem", "res.conv", "res.bn", "res.act", "res", "dw", "relu", "dil", "relu@1", "pool",
        "branch"]
    _check_boxes(model, x, ["stem", "res", "dw", "dil", "pool", "branch"])


def test_activations_are_copies_taken_before_inplace_ops():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(inplace=True)).eval()
    x = torch.randn(1, 3, 10, 10)
    rec = record_forward(model, x)
    bn = rec.activations["1"]
    assert (bn < 0).any(), "the BatchNorm output must be captured before the in-place ReLU"
    assert torch.equal(rec.activations["2"], bn.clamp(min=0))


def test_unknown_ops_give_no_geometry_rather_than_a_wrong_one():
    class Up(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3)
            self.after = nn.Conv2d(3, 3, 3)

        def forward(self, x):
            y = torch.nn.functional.interpolate(self.conv(x), scale_factor=2)
            return self.after(y)

    rec = record_forward(Up().eval(), torch.randn(1, 3, 12, 12))
    g = {i.name: i.geometry for i in rec.layers}
    assert g["conv"] == Geometry((3, 3), (1, 1), (0, 0))
    assert g["after"] is None


def test_split_layer_id():
    assert split_layer_id("features.1@2") == ("features.1", 2)
    assert split_layer_id("features.1") == ("features.1", 0)
    assert split_layer_id("a@b") == ("a@b", 0)
