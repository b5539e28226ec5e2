"""Projections on receptive-field crops equal the whole-image projections, border units included."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from nets import tiny_cnn
from torch import nn

import zfwidgets as zf
from zfwidgets.backend.layers import Geometry, forward_to
from zfwidgets.backend.project import Target, project
from zfwidgets.backend.rfcrop import CropAudit, crop_plan, cut_crops
from zfwidgets.backend.rules import RuleMode

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RULES = ("deconvnet", "guided", "gradient")


class Residual(nn.Module):
    """Strided stem, a ceil-mode max-pool, a residual block with a strided 1x1 shortcut, an
    inception-like concatenation of 1x1 / 3x3 / 5x5 branches, an average pool that does not
    count its padding, reflect-padded and dilated convolutions, local response norm."""

    def __init__(self, padding_mode: str = "reflect"):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU6(inplace=True)
        self.pool = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.a = nn.Conv2d(8, 12, 3, stride=2, padding=1)
        self.b = nn.Conv2d(12, 12, 3, padding=1, padding_mode=padding_mode)
        self.short = nn.Conv2d(8, 12, 1, stride=2)
        self.relu = nn.ReLU()
        self.br1 = nn.Conv2d(12, 4, 1)
        self.br3 = nn.Conv2d(12, 4, 3, padding=2, dilation=2)
        self.br5 = nn.Conv2d(12, 4, 5, padding=2)
        self.avg = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
        self.lrn = nn.LocalResponseNorm(3)
        self.out = nn.ReLU()
        with torch.no_grad():  # batch norm that is not the identity
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        x = self.pool(self.act(self.bn(self.stem(x))))
        x = self.relu(self.b(F.relu(self.a(x))) + self.short(x))
        x = torch.cat([self.br1(x), self.br3(x), self.br5(x)], 1)
        return self.out(self.lrn(self.avg(x)))


class NotLocal(nn.Module):
    """A network whose layer depends on more than its receptive field, in one of several ways:
    a crop cannot reproduce it, so the crop path must fall back to the whole image."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.conv = nn.Conv2d(3, 6, 3, padding=1, padding_mode="circular" if how == "circular"
                              else "zeros")
        self.norm = nn.InstanceNorm2d(6) if how == "instance" else nn.Identity()
        self.conv2 = nn.Conv2d(6, 5, 3, stride=2, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x):
        x = self.norm(self.conv(x))
        if self.how == "se":  # squeeze-and-excitation: a global average gates every channel
            x = x * torch.sigmoid(x.mean((2, 3), keepdim=True))
        if self.how == "position":  # a ramp over columns, as wide as the map it is added to
            x = x + torch.linspace(0, 1, x.shape[-1])
        return self.relu(self.conv2(x))


def whole_and_crop(model, x, layer, targets, rule, geometry):
    whole = project(model, x, layer, targets, rule, crop=False)
    crop = project(model, x, layer, targets, rule, geometry=geometry, crop=True)
    return whole, crop


def assert_same(crop: torch.Tensor, whole: torch.Tensor, tol: float = 1e-5,
                values: torch.Tensor | None = None) -> None:
    """Each projection equal to its whole-image one within ``tol`` of its largest value.

    A unit's projection is sent down with the unit's own value, whose float rounding (up to
    about 1e-6 of the layer's largest activations, from sums that cancel) is a relative error of
    more than 1e-5 for a value under a tenth of them: with ``values`` (the units' activations
    divided by the layer's largest), those units are compared after dividing each projection by
    its largest value (their shape exact, their scale as exact as the value allows).
    """
    scale = whole.abs().flatten(1).amax(1)
    assert bool((scale > 0).any())  # not 0 == 0 everywhere
    ill = torch.zeros_like(scale, dtype=torch.bool)
    if values is not None:
        ill = (values > 0) & (values < 0.1)
    err = (crop - whole).abs().flatten(1).amax(1) / scale.clamp(min=1e-30)
    norm = crop.abs().flatten(1).amax(1).clamp(min=1e-30)
    err_shape = (crop / norm[:, None, None, None] - whole / scale.clamp(min=1e-30)[
        :, None, None, None]).abs().flatten(1).amax(1)
    err = torch.where(ill, err_shape, err)
    assert float(err.max()) <= tol, err


def unit_values(s, layer, targets, x=None):
    """The units' activations over the layer's largest absolute activation."""
    acts = s.activation(layer) if x is None else forward_to(s.model, x, layer).detach()[0]
    return torch.stack([acts[t.channel, t.y, t.x] for t in targets]) / acts.abs().max()


def session_for(model, size):
    return zf.Session(model, preprocessing=zf.Preprocessing(size=(size, size), resize=None))


def border_units(info, channels):
    """A grid of units with the three outer rows and columns of each side and a few inside:
    each kind of border case on each axis (a field crossing the near border, both, none, the far
    one), all in one batch (one crop size)."""
    c, h, w = info.shape

    def picks(n):
        return sorted({0, 1, 2, n // 4, n // 2, n - 3, n - 2, n - 1} & set(range(n)))

    return [Target(0, (y * w + x) % min(c, channels), y, x) for y in picks(h) for x in picks(w)]


@pytest.mark.parametrize("model,size", [
    (lambda: tiny_cnn(pool=True, second_stride=2), 29),
    (lambda: tiny_cnn(second_stride=2), 24),
    (lambda: Residual().eval(), 65),
    (lambda: Residual().eval(), 64),
], ids=["tiny-pool-odd", "tiny-stride", "residual-odd", "residual"])
def test_border_and_middle_units_of_every_layer_equal_the_whole_image(model, size):
    torch.manual_seed(1)
    s = session_for(model(), size)
    x = torch.randn(1, 3, size, size)
    cropped = 0
    for info in s.layer_table():
        if info.geometry is None or info.shape[1] * info.shape[2] < 2:
            continue
        targets = border_units(info, 5)
        c, h, w = info.shape
        cropped += crop_plan(info.geometry, [(h // 2, w // 2)], size, size).area_ratio < 0.5
        values = unit_values(s, info.name, targets, x)
        for rule in RULES:
            whole, crop = whole_and_crop(s.model, x, info.name, targets, rule, info.geometry)
            assert_same(crop, whole, values=values)
    assert cropped >= 3  # the crops are real: a middle unit sees under half the image


def test_the_crop_path_is_the_one_taken_and_is_cheaper():
    """The comparison above is between two different computations: the crops really are
    smaller than the image, the audit passes, and a geometry that is too small gives a wrong
    projection (so a wrongly computed receptive field would be caught)."""
    torch.manual_seed(0)
    # zero padding: a reflect-padded convolution leaves the geometry unknown (None, never a box
    # that could be wrong), and without a geometry there is no crop to take
    s = session_for(Residual(padding_mode="zeros").eval(), 97)
    assert session_for(Residual().eval(), 97).layer_info("out").geometry is None
    layer = "out"
    info = s.layer_info(layer)
    plan = crop_plan(info.geometry, [(2, 3)], 97, 97)
    assert plan.area_ratio < 0.8
    crops = cut_crops(s.input_tensor, [0], plan).requires_grad_(True)
    audit = CropAudit(crops)
    with torch.enable_grad(), RuleMode("guided"), audit:
        acts = forward_to(s.model, crops, layer)
    assert audit.safe and audit.derived(acts), audit.reason
    g = info.geometry
    wrong = Geometry((g.size[0] // 3, g.size[1] // 3), g.stride,
                     (g.start[0] + g.size[0] // 3, g.start[1] + g.size[1] // 3))
    t = [Target(0, 3, 2, 3)]
    whole = project(s.model, s.input_tensor, layer, t, "guided", crop=False)
    bad = project(s.model, s.input_tensor, layer, t, "guided", geometry=wrong, crop=True)
    assert float((bad - whole).abs().max()) > 1e-3 * float(whole.abs().max())
    # ... and the session's check against its own forward pass refuses that wrong crop
    act = s.activation(layer)[None]
    safe = project(s.model, s.input_tensor, layer, t, "guided", geometry=wrong, crop=True,
                   reference=act)
    assert_same(safe, whole)


@pytest.mark.parametrize("how", ["instance", "se", "circular", "position"])
def test_non_local_networks_fall_back_to_the_whole_image(how):
    torch.manual_seed(0)
    net = NotLocal(how).eval()
    x = torch.randn(1, 3, 24, 24)
    g = Geometry((7, 7), (2, 2), (-3, -3))  # what a purely local net of this shape would have
    plan = crop_plan(g, [(5, 6)], 24, 24)
    crops = cut_crops(x, [0], plan)
    audit = CropAudit(crops)
    with torch.enable_grad(), RuleMode("gradient"), audit:
        forward_to(net, crops, "relu")
    assert not audit.safe, how
    targets = [Target(0, 1, 5, 6), Target(0, 2, 0, 0), Target(0, 4, 11, 11)]
    whole, crop = whole_and_crop(net, x, "relu", targets, "gradient", g)
    assert_same(crop, whole, tol=0)


@pytest.mark.parametrize("name", ["alexnet", "zfnet", "efficientnet_lite0"])
def test_registry_models_crop_equals_whole(name):
    torch.manual_seed(0)
    s = zf.Session(name, weights="default" if name == "efficientnet_lite0" else None)
    layers = [s.layers[2], s.entry.middle_layer, s.entry.default_layer]
    for layer in layers:
        info = s.layer_info(layer)
        c, h, w = info.shape
        units = [(0, 0), (h // 2, w // 2), (h - 1, w - 1), (0, w - 1), (h - 1, 1)]
        acts = s.activation(layer)
        targets = [Target(0, int(acts[:, y, x].argmax()), y, x) for y, x in units]
        values = unit_values(s, layer, targets)
        for rule in ("deconvnet", "guided"):
            whole, crop = whole_and_crop(s.model, s.input_tensor, layer, targets, rule,
                                         info.geometry)
            assert_same(crop, whole, values=values)


def test_session_project_uses_crops_and_matches_the_whole_image():
    lite0 = zf.Session("efficientnet_lite0")
    layer = lite0.entry.middle_layer
    info = lite0.layer_info(layer)
    units = [(5, 6, 5), (9, 0, 13), (30, 13, 0), (60, 7, 7)]
    lite0._projections.clear()
    got = lite0.project_many(layer, units, "guided")
    whole = project(lite0.model, lite0.input_tensor, layer, [Target(0, *u) for u in units],
                    "guided", crop=False)
    assert_same(got, whole, values=unit_values(lite0, layer, [Target(0, *u) for u in units]))
    plan = crop_plan(info.geometry, [u[1:] for u in units[:1]], 224, 224)
    assert plan.area_ratio < 0.5  # a middle-layer unit of Lite0 is computed on under half


@settings(max_examples=200, deadline=None)
@given(size=st.integers(1, 40), stride=st.sampled_from([1, 2, 3, 4, 8]),
       start=st.integers(-20, 3), n=st.integers(8, 60), data=st.data())
def test_crop_plan_holds_every_field_on_the_stride_grid(size, stride, start, n, data):
    g = Geometry((size, size + 1), (stride, stride), (start, start - 1))
    h_map = max(1, (n - 1) // stride + 1)
    units = data.draw(st.lists(st.tuples(st.integers(0, h_map - 1), st.integers(0, h_map - 1)),
                               min_size=1, max_size=9))
    plan = crop_plan(g, units, n, n)
    h, w = plan.size
    for (y, x), (top, left), (uy, ux) in zip(units, plan.origins, plan.units):
        for axis, (p, origin, length, u) in enumerate([(y, top, h, uy), (x, left, w, ux)]):
            r0 = g.start[axis] + p * stride
            r1 = r0 + g.size[axis]
            assert origin % stride == 0
            assert origin <= max(r0, 0) and min(r1, n) <= origin + length
            if r0 < 0:
                assert origin == 0      # the image's own border, padded by the network
            if r1 > n:
                assert origin + length == n
            assert u == p - origin // stride
            assert r0 - origin == g.start[axis] + u * stride


def test_crop_plan_small_cases():
    assert crop_plan(None, [(0, 0)], 8, 8) is None
    assert crop_plan(Geometry((3, 3), (1, 1), (0, 0)), [], 8, 8) is None
    # a 3x3 field, padding 1: the corner units cross the near / far borders, one crop size
    plan = crop_plan(Geometry((3, 3), (1, 1), (-1, -1)), [(0, 0), (7, 7), (3, 4)], 8, 8)
    assert plan.size == (3, 3)
    assert plan.origins == [(0, 0), (5, 5), (2, 3)] and plan.units == [(0, 0), (2, 2), (1, 1)]
    # a field larger than the image on both sides: the whole image
    plan = crop_plan(Geometry((30, 30), (4, 4), (-10, -10)), [(1, 1)], 16, 16)
    assert plan.size == (16, 16) and plan.origins == [(0, 0)] and plan.area_ratio == 1.0


def test_units_of_several_crop_sizes_share_one_batch_where_that_costs_less():
    """On a CPU the crops of a projection batch go in one batch of the largest size when the
    pixels saved by smaller crops do not pay for more passes (a gallery's units spread over the
    image), and in batches by size when they do (many small border crops beside one large);
    either way each projection equals its whole-image one."""
    import importlib

    project_module = importlib.import_module("zfwidgets.backend.project")
    lite0 = zf.Session("efficientnet_lite0")
    layer = lite0.entry.middle_layer
    info = lite0.layer_info(layer)
    c, h, w = info.shape
    spread = [(0, 0), (0, w // 2), (h // 2, 0), (h // 2, w // 2), (h - 1, w - 1), (3, 9),
              (h - 1, 2), (1, w - 2), (9, 12)]
    corner_heavy = [(0, 0)] * 8 + [(h // 2, w // 2)]
    for units, batches in ((spread, 1), (corner_heavy, 2)):
        targets = [Target(0, (7 * n) % c, y, x) for n, (y, x) in enumerate(units)]
        sizes = {crop_plan(info.geometry, [(y, x)], 224, 224).size for y, x in units}
        assert len(sizes) >= 2                      # several crop sizes to choose between
        groups = project_module._crop_groups(info.geometry, targets, list(range(len(units))),
                                             (224, 224), torch.device("cpu"))
        assert len(groups) == batches, [(len(m), p.size) for m, p in groups]
        assert sorted(n for members, _ in groups for n in members) == list(range(len(units)))
        whole, crop = whole_and_crop(lite0.model, lite0.input_tensor, layer, targets, "guided",
                                     info.geometry)
        assert_same(crop, whole, values=unit_values(lite0, layer, targets))


def test_a_rule_mode_outside_the_audit_sees_the_models_calls_only():
    """The audit's own reads of shapes and dims are not the model's calls: a RuleMode outside it
    sees exactly what it sees without the audit (its per-call checks are the cost of a pass)."""
    seen = []

    class Counting(RuleMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return super().__torch_function__(func, types, args, kwargs)

    torch.manual_seed(0)
    net = Residual(padding_mode="zeros").eval()
    x = torch.randn(1, 3, 45, 45)
    runs = {}
    for audited in (False, True):
        seen.clear()
        crops = x.clone().requires_grad_(True)
        audit = CropAudit(crops)
        with torch.enable_grad(), Counting("guided"), audit if audited else nullcontext():
            forward_to(net, crops, "out")
        runs[audited] = list(seen)
        if audited:
            assert audit.safe, audit.reason
    assert runs[True] == runs[False] and len(runs[False]) > 10
