"""Layer table and receptive fields against an empirical probe; forward recording."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from rf_probe import empirical_box
import pytest

from zfwidgets.backend.layers import Geometry, record_forward, split_layer_id
from zfwidgets.errors import UnsupportedModelError


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
            want = empirical_box(model, x, name, y, xx, info.layout)
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


# ----------------------------------------------------------------------------- issue 10
# Geometry right or None; every piece of a split tracked; channels-last and token maps.

def _support_box(model, x, info, y, xx):
    """Bounding box of the plain input gradient of unit (y, xx) (all channels) of a layer."""
    from zfwidgets.backend.layers import forward_to

    inp = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = forward_to(model, inp, info.name, layout=info.layout)
        (g,) = torch.autograd.grad(out[0, :, y, xx].sum(), inp)
    support = g[0].abs().sum(0) > 0
    rows = torch.nonzero(support.any(1)).flatten()
    cols = torch.nonzero(support.any(0)).flatten()
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def test_vgg11_at_128_upsampling_adaptive_pool_gives_no_box_rather_than_a_wrong_one():
    """features end at 4x4, avgpool makes 7x7: the box used to be (0, 0, -5, -5) while the
    unit's input gradient reaches (0, 0, 91, 91)."""
    torch.manual_seed(0)
    model = torchvision.models.vgg11(weights=None).eval()
    x = torch.randn(1, 3, 128, 128)
    infos = {i.name: i for i in record_forward(model, x).layers}
    assert infos["avgpool"].shape == (512, 7, 7)
    assert infos["avgpool"].geometry is None
    feat = infos["features.20"]
    assert feat.geometry.box(0, 0, 128, 128) == _support_box(model, x, feat, 0, 0) == \
        (0, 0, 91, 91)
    assert _check_boxes(model, x, ["features.15", "features.20"]) >= 8


class _Adaptive(nn.Module):
    def __init__(self, out):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(out)
        self.after = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return self.after(self.pool(self.conv(x)))


def test_adaptive_pools_are_exact_when_uniform_else_none():
    x = torch.randn(1, 3, 16, 12)
    rec = record_forward(_Adaptive((4, 3)).eval(), x)  # 16 / 4 and 12 / 3: uniform windows
    g = {i.name: i.geometry for i in rec.layers}
    assert g["pool"] == Geometry((6, 6), (4, 4), (-1, -1))
    _check_boxes(_Adaptive((4, 3)).eval(), x, ["pool", "after"])
    for out in [(5, 3), (32, 24), (7, 7)]:  # windows of several sizes; upsampling
        rec = record_forward(_Adaptive(out).eval(), x)
        g = {i.name: i.geometry for i in rec.layers}
        assert g["conv"] is not None and g["pool"] is None and g["after"] is None


class _Pieces(nn.Module):
    """ShuffleNet / CSP-style channel splits and a spatial split, each piece used."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.left = nn.Conv2d(4, 4, 3, padding=1)
        self.right = nn.Conv2d(4, 4, 5, padding=2)
        self.top = nn.Conv2d(8, 2, 1)
        self.bottom = nn.Conv2d(8, 2, 3)

    def forward(self, x):
        x = self.stem(x)
        a, b = x.chunk(2, dim=1)
        c, d = torch.split(x, [3, 5], dim=1)
        x = torch.cat([self.left(a), self.right(b)], 1) + torch.cat([c, d], 1)
        up, down = x.split([6, 10], dim=2)  # rows 0-5 and 6-15
        return self.top(up).sum() + self.bottom(down).sum()


def test_every_piece_of_a_split_is_tracked():
    torch.manual_seed(0)
    model = _Pieces().eval()
    x = torch.randn(1, 3, 32, 24)
    infos = {i.name: i for i in record_forward(model, x).layers}
    assert all(infos[n].geometry is not None for n in ("left", "right", "top", "bottom"))
    _check_boxes(model, x, ["left", "right", "top", "bottom"])


def test_shufflenet_and_cspdarknet_pieces_keep_their_geometry():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    shuffle = torchvision.models.shufflenet_v2_x0_5(weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    table = record_forward(shuffle, x).layers
    assert all(i.geometry is not None for i in table if i.name != "fc")
    _check_boxes(shuffle, x, ["stage2.0.branch1.0", "stage2.1.branch2.0", "stage3.2",
                              "stage4.0.branch2.5"])
    csp = timm.create_model("cspdarknet53", pretrained=False).eval()
    table = record_forward(csp, x).layers
    assert all(i.geometry is not None for i in table)
    _check_boxes(csp, x, ["stages.0.blocks.0.conv1.conv", "stages.1.conv_transition.conv",
                          "stages.2"])


class _ChannelsLast(nn.Module):
    """A ConvNeXt / Swin-style stage: channels-last tensors, per-position norm and linear,
    Swin's patch merging by strided slices."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 2, stride=2)
        self.norm = nn.LayerNorm(6)
        self.fc = nn.Linear(6, 5)
        self.merge = nn.Linear(20, 7)
        self.head = nn.Conv2d(7, 3, 3, padding=1)

    def forward(self, x):
        x = self.stem(x).permute(0, 2, 3, 1)           # [N, H, W, C]
        x = self.fc(self.norm(x))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2],
                       x[..., 1::2, 1::2, :]], -1)
        x = self.merge(x)
        return self.head(x.permute(0, 3, 1, 2))


def test_channels_last_tensors_are_read_as_channels_by_rows_by_columns():
    torch.manual_seed(0)
    model = _ChannelsLast().eval()
    x = torch.randn(1, 3, 24, 16)
    rec = record_forward(model, x)
    infos = {i.name: i for i in rec.layers}
    assert infos["norm"].shape == (6, 12, 8) and infos["norm"].layout.kind == "channels_last"
    assert infos["fc"].shape == (5, 12, 8) and infos["merge"].shape == (7, 6, 4)
    with torch.no_grad():
        nhwc = model.norm(model.stem(x).permute(0, 2, 3, 1))
    torch.testing.assert_close(rec.activations["norm"], nhwc.permute(0, 3, 1, 2))
    assert infos["fc"].geometry == infos["stem"].geometry
    assert infos["merge"].geometry == Geometry((4, 4), (4, 4), (0, 0))
    _check_boxes(model, x, ["stem", "fc", "merge", "head"])  # (a norm's channel sum is 0)


def test_torchvision_swin_layers_are_channels_last_maps():
    torch.manual_seed(0)
    model = torchvision.models.swin_t(weights=None).eval()
    x = torch.randn(1, 3, 32, 32)
    rec = record_forward(model, x)
    infos = {i.name: i for i in rec.layers}
    assert infos["features.0.1"].layout.kind == "channels_last"
    assert infos["features.0.1"].shape == (96, 8, 8)
    assert infos["features.0.2"].geometry == Geometry((4, 4), (4, 4), (0, 0))
    assert infos["features.1.0"].shape == (96, 8, 8) and infos["features.1.0"].geometry is None
    assert infos["features.2"].shape == (192, 4, 4)
    with torch.no_grad():
        want = model.features[:2](x).permute(0, 3, 1, 2)
    torch.testing.assert_close(rec.activations["features.1"], want)
    for info in rec.layers:  # every listed layer really is maps of that shape
        assert rec.activations[info.name].shape[1:] == info.shape


def _tiny_vit():
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                             hidden_dim=16, mlp_dim=24, num_classes=5).eval()


def test_vit_token_layers_are_maps_of_the_patch_grid_without_the_class_token():
    from zfwidgets.backend.layers import as_maps

    model = _tiny_vit()
    x = torch.randn(1, 3, 32, 32)
    rec = record_forward(model, x)
    infos = {i.name: i for i in rec.layers}
    block = infos["encoder.layers.encoder_layer_1"]
    assert block.layout.kind == "tokens" and block.layout.offset == 1
    assert block.shape == (16, 4, 4) and infos["encoder.layers.encoder_layer_0.mlp.0"].shape == \
        (24, 4, 4)
    seen = {}
    with torch.no_grad():
        hook = model.encoder.layers[1].register_forward_hook(
            lambda m, i, o: seen.setdefault("out", o))
        model(x)
        hook.remove()
    tokens = seen["out"][:, 1:]                     # [1, 16, D], class token dropped
    want = tokens.transpose(1, 2).reshape(1, 16, 4, 4)
    torch.testing.assert_close(rec.activations[block.name], want)
    torch.testing.assert_close(as_maps(seen["out"], block.layout), want)
    # before attention the patches' geometry is exact; attention mixes every patch
    assert infos["encoder.dropout"].geometry == Geometry((8, 8), (8, 8), (0, 0))
    assert block.geometry is None
    assert "heads.head" not in infos                   # [N, classes]: not maps


def test_as_maps_of_each_layout():
    from zfwidgets.backend.layers import Layout, as_maps

    x = torch.arange(2 * 3 * 4 * 5.0).reshape(2, 3, 4, 5)     # [N, C, H, W]
    assert as_maps(x) is x
    nhwc = x.permute(0, 2, 3, 1).contiguous()
    torch.testing.assert_close(as_maps(nhwc, Layout(3, (1, 2), (4, 5))), x)
    tokens = torch.cat([torch.full((2, 2, 3), -1.0), x.flatten(2).transpose(1, 2)], 1)
    torch.testing.assert_close(as_maps(tokens, Layout(2, (1,), (4, 5), 2)), x)
    with pytest.raises(UnsupportedModelError):
        as_maps(x.flatten(2))


def test_same_shape_reorderings_never_keep_a_wrong_box():
    class Reorder(nn.Module):
        def __init__(self, how):
            super().__init__()
            self.how = how
            self.conv = nn.Conv2d(3, 3, 3)
            self.after = nn.Conv2d(3, 3, 3)

        def forward(self, x):
            y = self.conv(x)
            y = {"flip": lambda t: t.flip(3), "roll": lambda t: t.roll(2, 2),
                 "transpose": lambda t: t.transpose(2, 3)}[self.how](y)
            return self.after(y)

    x = torch.randn(1, 3, 12, 12)
    for how in ("flip", "roll", "transpose"):
        model = Reorder(how).eval()
        infos = {i.name: i for i in record_forward(model, x).layers}
        g = infos["after"].geometry
        if g is not None:
            _check_boxes(model, x, ["after"])
        assert how == "transpose" or g is None


def test_scoped_eval_restores_mixed_flags_and_leaves_an_eval_model_alone():
    from zfwidgets.backend.layers import scoped_eval

    calls = []

    class Counting(nn.Sequential):
        def train(self, mode=True):
            calls.append(mode)
            return super().train(mode)

    net = Counting(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5))
    net.train()
    net[1].eval()                                    # a frozen batch norm inside
    before = [m.training for m in net.modules()]
    calls.clear()
    with scoped_eval(net):
        assert not any(m.training for m in net.modules())
    assert [m.training for m in net.modules()] == before
    assert calls == [False]                          # model.eval() itself, once

    net.eval()
    calls.clear()
    with scoped_eval(net):
        assert not any(m.training for m in net.modules())
    assert calls == [] and not any(m.training for m in net.modules())
