"""Class maps (saliency, guided / deconvnet projections, Grad-CAM, guided Grad-CAM) against
slow explicit references, and Grad-CAM against pytorch-grad-cam on torchvision models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import zfwidgets as zf
from test_rules import TinyZF, reference
from zfwidgets.backend.defaults import gradcam_layer
from zfwidgets.backend.explain import class_projection, compute_map
from zfwidgets.errors import (BadParameterError, UnknownClassError, UnknownLayerError,
                              UnsupportedModelError)
from zfwidgets.models import Preprocessing

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LABELS = ["tabby", "tiger cat", "dog", "car", "boat"]


def classifier(act="inplace", pool=(2, 2), seed=0) -> nn.Sequential:
    """TinyZF features -> global average -> linear, 5 classes."""
    torch.manual_seed(seed)
    return nn.Sequential(TinyZF(act, pool), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(12, 5)).eval()


def session(net, size=(48, 40), seed=1) -> zf.Session:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (60, 50, 3), dtype=np.uint8)
    return zf.Session(net, image, preprocessing=Preprocessing(size=size, resize=None),
                      labels=LABELS)


def manual_forward(net: nn.Sequential, x: torch.Tensor, split: str | None = None):
    """The classifier written out by hand; with ``split`` the output of that stage is a fresh
    leaf (returned), so the gradient there can be read without any hook."""
    f = net[0]
    leaf = None

    def cut(name, t):
        nonlocal leaf
        if name == split:
            leaf = t.detach().clone().requires_grad_(True)
            return leaf
        return t

    h = cut("conv1", f.conv1(x))
    h = f.pool1(torch.relu(h))
    h = cut("conv2", f.conv2(h))
    h = f.pool2(torch.relu(h))
    h = cut("relu3", torch.relu(f.conv3(h)))
    logits = net[3](h.mean(dim=(2, 3)))
    return logits, leaf


def bilinear_by_hand(low: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Half-pixel-centre bilinear interpolation, clamped at the borders, by loops."""
    h, w = low.shape
    out = np.zeros((out_h, out_w))
    for i in range(out_h):
        sy = max((i + 0.5) * h / out_h - 0.5, 0.0)
        y0 = min(int(np.floor(sy)), h - 1)
        y1, fy = min(y0 + 1, h - 1), sy - y0
        for j in range(out_w):
            sx = max((j + 0.5) * w / out_w - 0.5, 0.0)
            x0 = min(int(np.floor(sx)), w - 1)
            x1, fx = min(x0 + 1, w - 1), sx - x0
            out[i, j] = ((1 - fy) * ((1 - fx) * low[y0, x0] + fx * low[y0, x1])
                         + fy * ((1 - fx) * low[y1, x0] + fx * low[y1, x1]))
    return out


# ----------------------------------------------------------------------------- saliency

def test_saliency_equals_finite_differences():
    net = classifier().double()
    torch.manual_seed(3)
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    target = 2
    got = compute_map(net, x, "saliency", [target])
    eps = 1e-6
    grad = torch.zeros(3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        for c in range(3):
            for i in range(16):
                for j in range(16):
                    up, down = x.clone(), x.clone()
                    up[0, c, i, j] += eps
                    down[0, c, i, j] -= eps
                    grad[c, i, j] = (net(up)[0, target] - net(down)[0, target]) / (2 * eps)
    assert np.allclose(got.projection, grad.numpy(), atol=1e-6)
    assert np.allclose(got.map, grad.abs().amax(0).numpy(), atol=1e-6)
    assert np.allclose(np.abs(got.raw), got.map)
    assert got.method == "saliency" and got.target == (2,) and got.layer is None


def test_session_saliency_is_the_gradient_of_the_top_logit():
    net = classifier()
    s = session(net)
    got = s.saliency()
    top = int(s.logits.argmax())
    x = s.input_tensor.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(net(x)[0, top], x)
    assert got.target == (top,) and got.label == LABELS[top]
    assert np.allclose(got.map, grad[0].abs().amax(0).numpy(), atol=1e-6)
    assert np.isclose(got.score, float(s.logits[top]), atol=1e-5)


# ----------------------------------------------------------------------------- guided / deconvnet

@pytest.mark.parametrize("rule", ["guided", "deconvnet", "gradient"])
@pytest.mark.parametrize("act", ["inplace", "shared", "functional"])
def test_class_projection_equals_the_explicit_rule_walk(rule, act):
    net = classifier(act=act, pool=(3, 2))
    s = session(net)
    x = s.input_tensor
    target = 3
    with torch.no_grad():
        acts = net[0](x)
    # d logit / d relu3 output: the linear row spread evenly by the global average
    h, w = acts.shape[-2:]
    signal = (net[3].weight[target] / (h * w)).view(1, -1, 1, 1).expand_as(acts).detach()
    with torch.no_grad():
        want = reference(net[0], x, signal, rule)[0]
    got = class_projection(s, target, rule=rule)
    assert np.allclose(got.projection, want.numpy(), atol=1e-5, rtol=1e-4)
    assert np.allclose(got.map, want.abs().amax(0).numpy(), atol=1e-5, rtol=1e-4)


def test_guided_and_deconvnet_refuse_a_non_rectifier_but_saliency_works():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 3)).eval()
    s = session(net, size=(16, 16))
    for rule in ("guided", "deconvnet"):
        with pytest.raises(UnsupportedModelError, match="SiLU"):
            class_projection(s, 0, rule=rule)
    with pytest.raises(UnsupportedModelError):
        s.guided_gradcam(0)
    assert s.saliency(0).map.shape == (16, 16)
    assert s.gradcam(0).map.shape == (16, 16)


# ----------------------------------------------------------------------------- Grad-CAM

@pytest.mark.parametrize("split,layer", [("relu3", "0.relu3"), ("conv2", "0.conv2"),
                                         ("conv1", "0.conv1")])
def test_gradcam_equals_explicit_loops(split, layer):
    """conv2 and conv1 are followed by in-place ReLUs: the layer's own output must be used."""
    net = classifier(act="inplace")
    s = session(net)
    x = s.input_tensor
    target = 1
    logits, a = manual_forward(net, x, split)
    (g,) = torch.autograd.grad(logits[0, target], a)
    a, g = a[0].detach().numpy().astype(np.float64), g[0].numpy().astype(np.float64)
    channels, h, w = a.shape
    weights = [sum(g[k, i, j] for i in range(h) for j in range(w)) / (h * w)
               for k in range(channels)]
    cam = np.zeros((h, w))
    for k in range(channels):
        for i in range(h):
            for j in range(w):
                cam[i, j] += weights[k] * a[k, i, j]
    low = np.maximum(cam, 0)
    got = s.gradcam(target, layer=layer)
    assert got.layer == layer and got.method == "gradcam"
    assert np.allclose(got.low, low, atol=1e-5, rtol=1e-4)
    assert np.allclose(got.map, bilinear_by_hand(low, 48, 40), atol=1e-5, rtol=1e-4)
    assert np.allclose(got.raw, bilinear_by_hand(cam, 48, 40), atol=1e-5, rtol=1e-4)


def test_guided_gradcam_is_guided_backprop_times_gradcam():
    s = session(classifier())
    guided = class_projection(s, "dog", rule="guided")
    cam = s.gradcam("dog")
    both = s.guided_gradcam("dog")
    assert both.target == (2,) and both.label == "dog" and both.layer == cam.layer
    assert np.allclose(both.projection, guided.projection * cam.map[None], atol=1e-7)
    assert np.allclose(both.map, np.abs(both.projection).max(0), atol=1e-7)


def test_several_targets_sum_their_scores():
    s = session(classifier())
    one, two = s.saliency("tabby"), s.saliency(1)
    both = s.saliency(["tabby", "tiger cat"])
    assert both.target == (0, 1) and both.label == "tabby + tiger cat"
    assert np.allclose(both.projection, one.projection + two.projection, atol=1e-6)
    assert np.isclose(both.score, one.score + two.score, atol=1e-5)
    cams = [s.gradcam(t) for t in (0, 1, [0, 1])]
    assert np.allclose(cams[2].raw, cams[0].raw + cams[1].raw, atol=1e-5)


def test_default_layer_is_the_last_with_a_spatial_map():
    s = session(classifier())
    assert gradcam_layer(s) == "0"                       # "1" (the average) is 1x1
    assert s.gradcam(0).layer == "0"
    assert np.allclose(s.gradcam(0).map, s.gradcam(0, layer="0.relu3").map)


def test_bad_arguments_raise_clear_errors():
    s = session(classifier())
    with pytest.raises(UnknownClassError):
        s.saliency("zebra")
    with pytest.raises(UnknownLayerError, match="did you mean"):
        s.gradcam(0, layer="0.relu4")
    with pytest.raises(BadParameterError):
        class_projection(s, 0, rule="lrp")
    with pytest.raises(BadParameterError):
        zf.backend.explain.class_map(s, "gradcam++")


def test_maps_follow_the_image_and_the_cache_is_per_image():
    s = session(classifier())
    first = s.gradcam(0)
    assert s.gradcam(0) is not first and np.array_equal(s.gradcam(0).map, first.map)
    s.set_image(np.random.default_rng(7).integers(0, 256, (60, 50, 3), dtype=np.uint8))
    assert not np.allclose(s.gradcam(0).map, first.map)


# ----------------------------------------------------------------------------- peers

def _peer_cam(model, x, layer_module, target):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with GradCAM(model=model, target_layers=[layer_module]) as cam:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(target)])[0]


@pytest.mark.parametrize("name,layer", [("resnet18", "layer4.1"), ("vgg16", "features.30")])
def test_gradcam_equals_pytorch_grad_cam(name, layer):
    pytest.importorskip("pytorch_grad_cam")
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    s = zf.Session(model, zf.load_sample("chelsea"),
                   preprocessing=Preprocessing(size=112, resize=128))
    target = int(s.logits.argmax())
    ours = s.gradcam(target, layer=layer)
    peer = _peer_cam(model, s.input_tensor.clone(), s.layer_module(layer), target)
    # the peer rescales its upsampled map to [0, 1]
    lo, hi = ours.map.min(), ours.map.max()
    assert hi > lo
    assert np.allclose((ours.map - lo) / (hi - lo), peer, atol=1e-4)
    if name == "resnet18":
        assert gradcam_layer(s) == "layer4"              # the same tensor as layer4.1's
        assert np.allclose(s.gradcam(target).map, ours.map)
