"""Session: the shared state; real models from the registry."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import zfwidgets as zf
from rf_probe import empirical_box
from zfwidgets.errors import BadImageError, BadParameterError, OutOfRangeError, UnknownLayerError


@pytest.fixture(scope="module")
def lite0():
    return zf.Session()  # the offline default: EfficientNet-Lite0 on chelsea


@pytest.fixture(scope="module")
def alexnet():
    torch.manual_seed(0)
    return zf.Session("alexnet", weights=None, image=zf.load_sample("coffee"))


def test_default_session_sees_a_cat(lite0):
    assert lite0.entry.name == "efficientnet_lite0" and lite0.image_name == "chelsea"
    label, p = lite0.predict(1)[0]
    assert "cat" in label and p > 0.25
    assert tuple(lite0.input_tensor.shape) == (1, 3, 224, 224)
    img = lite0.display_image
    assert img.shape == (224, 224, 3) and 0 <= img.min() and img.max() <= 1


def test_layers_are_dotted_module_names_in_forward_order(lite0):
    names = dict(lite0.model.named_modules())
    assert all(zf.backend.layers.split_layer_id(n)[0] in names for n in lite0.layers)
    assert lite0.layers[0] == "stem.conv"
    order = [lite0.layers.index(n) for n in ("stem.act", "blocks.3", "blocks.9", "head.act")]
    assert order == sorted(order)
    info = lite0.layer_info("head.act")
    assert info.kind == "ReLU6" and info.shape == (1280, 7, 7)


def test_activation_equals_a_hand_made_hook(lite0):
    got = {}

    def hook(module, inputs, output):  # returns None: must not replace the output
        got["x"] = output.clone()

    module = lite0.model.get_submodule("blocks.5.expand.bn")  # followed by an in-place ReLU6
    h = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            lite0.model.eval()(lite0.input_tensor)
    finally:
        h.remove()
    assert torch.allclose(lite0.activation("blocks.5.expand.bn"), got["x"][0], atol=1e-5)
    assert (lite0.activation("blocks.5.expand.bn") < 0).any()


def test_unknown_layer_suggests_close_names(lite0):
    with pytest.raises(UnknownLayerError, match="blocks.5.expand.conv"):
        lite0.layer_info("blocks.5.expand.cnv")
    with pytest.raises(OutOfRangeError, match="channel 5000"):
        lite0.project("head.act", 5000)
    with pytest.raises(OutOfRangeError, match="outside"):
        lite0.project("head.act", 0, (7, 0))
    with pytest.raises(BadParameterError, match="rule"):
        lite0.project("head.act", 0, rule="nope")


@pytest.mark.parametrize("which", ["lite0", "alexnet"])
def test_rules_differ_from_the_gradient_on_real_models(which, request):
    s = request.getfixturevalue(which)
    layer = s.entry.middle_layer
    act = s.activation(layer)
    act = torch.where(act < 5.9, act, torch.zeros_like(act))  # a ReLU6 unit at 6 has 0 gradient
    flat = int(act.argmax())
    c, rest = divmod(flat, act.shape[1] * act.shape[2])
    y, x = divmod(rest, act.shape[2])
    p = {r: s.project(layer, c, (y, x), rule=r) for r in zf.RULES}
    for r in ("deconvnet", "guided"):
        rel = (p[r] - p["gradient"]).abs().max() / p["gradient"].abs().max()
        assert rel > 0.05, (which, r, float(rel))
    assert (p["deconvnet"] - p["guided"]).abs().max() > 0
    # projections of one unit live inside its receptive field
    t, left, b, r_ = s.receptive_field(layer, y, x)
    mask = torch.zeros(p["gradient"].shape[-2:], dtype=torch.bool)
    mask[t:b, left:r_] = True
    for r in zf.RULES:
        assert p[r].abs().sum(0)[~mask].max() == 0, r


def test_project_many_equals_single_projections(lite0):
    layer = lite0.entry.middle_layer
    units = [(3, 2, 2), (7, 10, 4), (3, None, None)]
    many = lite0.project_many(layer, units, rule="guided")
    lite0._projections.clear()
    for n, (c, y, x) in enumerate(units):
        one = lite0.project(layer, c, None if y is None else (y, x), rule="guided")
        assert torch.allclose(many[n], one, atol=1e-6)


@pytest.mark.parametrize("name", zf.list_models())
def test_receptive_fields_match_gradient_support_for_every_registry_model(name):
    torch.manual_seed(0)
    weights = "default" if name == "efficientnet_lite0" else None
    s = zf.Session(name, weights=weights)
    table = [i for i in s.layer_table() if i.is_leaf and i.shape[1] > 1]
    picks = table[:: max(1, len(table) // 5)][:6] + [table[-1]]
    H, W = s.input_tensor.shape[-2:]
    for info in picks:
        _, h, w = info.shape
        for y, x in {(0, 0), (h // 2, w // 2), (h - 1, w - 2)}:
            want = empirical_box(s.model, s.input_tensor, info.name, y, x)
            assert s.receptive_field(info.name, y, x) == want, (name, info.name, (y, x))


def test_set_image_notifies_and_bad_images_keep_the_old_one(tmp_path):
    s = zf.Session("zfnet_small", weights=None)
    seen = []
    s.on_change(seen.append)
    before = s.input_tensor.clone()
    s.set_image(zf.load_sample("coffee"), name="coffee")
    assert seen == ["image"] and s.image_name == "coffee"
    assert not torch.equal(before, s.input_tensor)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(BadImageError, match="broken.png"):
        s.set_image(bad)
    assert s.image_name == "coffee" and seen == ["image"]
    s.off_change(seen.append)
    s.set_image(np.zeros((40, 50, 3), np.uint8))
    assert seen == ["image"]


def test_user_module_and_model_switch():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 4, 3), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    s = zf.Session(net, labels=["a", "b", "c"],
                   preprocessing=zf.Preprocessing(size=(64, 96), resize=None))
    assert tuple(s.input_tensor.shape) == (1, 3, 64, 96)
    assert len(s.predict(3)) == 3 and {lab for lab, _ in s.predict(3)} == {"a", "b", "c"}
    assert s.layers == ["0", "1", "2", "3", "4"]
    assert s.receptive_field("2", 0, 0) == (0, 0, 7, 7)
    s.set_model("zfnet_small", weights=None)
    assert s.entry.name == "zfnet_small" and "features.relu2" in s.layers


def test_backend_imports_no_gui_stack():
    code = ("import sys, zfwidgets, zfwidgets.backend; s = zfwidgets.Session('zfnet_small', "
            "weights=None); s.project(s.layers[2], 0); "
            "bad = [m for m in ('ipywidgets', 'matplotlib', 'ipympl') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------- issue 10
# Models that used to fail outright: other dtypes, dict outputs, gray inputs, no maps at all.

def _small_cnn(in_channels=3, classes=6):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(in_channels, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, classes)).eval()


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_the_session_feeds_the_model_its_own_dtype(dtype):
    net = _small_cnn().to(dtype)
    s = zf.Session(net, preprocessing=zf.Preprocessing(size=24))
    x = s.input_tensor
    assert x.dtype == dtype
    with torch.no_grad():
        assert torch.equal(s.logits, net(x)[0])
    assert s.activation("4").dtype == dtype and s.display_image.dtype == np.float32
    p = s.project("4", 1, rule="deconvnet")
    assert p.shape == (3, 24, 24) and torch.isfinite(p.float()).all()
    assert s.predict(2)[0][1] > 0


def test_a_dtype_the_cpu_cannot_run_says_what_to_do(monkeypatch):
    s = zf.Session(_small_cnn().double(), preprocessing=zf.Preprocessing(size=16))

    def refuse(*args, **kwargs):
        raise RuntimeError('"slow_conv2d_cpu" not implemented for \'Double\'')

    monkeypatch.setattr("zfwidgets.backend.session.record_forward", refuse)
    with pytest.raises(zf.UnsupportedModelError, match=r"model.float\(\)"):
        s.layers


class _DictNet(nn.Module):
    def __init__(self, key="logits"):
        super().__init__()
        self.key = key
        self.body = _small_cnn()

    def forward(self, x):
        logits = self.body(x)
        return {"feat": self.body[:3](x), self.key: logits, "extra": logits * 2}


def test_dict_and_tuple_outputs_give_the_logits_by_the_documented_rule():
    image = zf.load_sample("coffee")
    pre = zf.Preprocessing(size=32)
    s = zf.Session(_DictNet(), image, preprocessing=pre)
    with torch.no_grad():
        want = s.model(s.input_tensor)["logits"][0]
    # (the session's forward may run on another thread count: equal up to float rounding)
    assert torch.allclose(s.logits, want, rtol=1e-5, atol=1e-6) and s.layers[0] == "body.0"
    r = s.occlusion(size=16, stride=16, progress=False)
    assert r.prob.shape == (2, 2) and r.base_class == int(want.argmax())
    # no "logits" key and two 2-d values: the error lists the keys; output= chooses
    with pytest.raises(zf.UnsupportedModelError, match=r"'feat', 'scores', 'extra'"):
        zf.Session(_DictNet("scores"), image, preprocessing=pre).logits
    s = zf.Session(_DictNet("scores"), image, preprocessing=pre, output="extra")
    torch.testing.assert_close(s.logits, 2 * want)
    s = zf.Session(_DictNet("scores"), image, preprocessing=pre, output=lambda o: o["scores"])
    torch.testing.assert_close(s.logits, want)
    assert s.occlusion(size=16, stride=16, progress=False).base_class == int(want.argmax())


def test_a_gray_model_just_works_and_is_shown_in_rgb():
    net = _small_cnn(in_channels=1, classes=10)
    s = zf.Session(net, zf.load_sample("coffee"), preprocessing=zf.Preprocessing(size=28,
                                                                                channels=1))
    assert tuple(s.input_tensor.shape) == (1, 1, 28, 28)
    assert s.display_image.shape == (28, 28, 3)
    assert np.allclose(s.display_image[..., 0], s.display_image[..., 2])
    p = s.project("4", 0, rule="guided")
    assert p.shape == (1, 28, 28) and zf.projection_to_rgb(p).shape == (28, 28, 3)
    assert s.occlusion(size=7, stride=7, progress=False).prob.shape == (4, 4)
    # wrap_model reads the channel count from the first convolution
    s = zf.Session(net, zf.load_sample("coffee"))
    assert s.preprocessing.channels == 1 and s.input_tensor.shape[1] == 1
    with pytest.raises(BadParameterError, match=r"channels=1"):  # a 3-channel preprocessing
        zf.Session(net, preprocessing=zf.Preprocessing(size=28)).layers


def test_a_model_without_maps_says_what_is_missing():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4)).eval()
    s = zf.Session(mlp, preprocessing=zf.Preprocessing(size=16))
    assert s.layers == [] and len(s.predict(2)) == 2
    for call in (lambda: zf.explore(s), lambda: s.occlusion(size=8, stride=8, progress=False),
                 lambda: zf.mine(s, [s.image])):
        with pytest.raises(zf.UnsupportedModelError, match="no layer that makes feature maps"):
            call()


def test_token_layers_of_a_vision_transformer():
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                            hidden_dim=16, mlp_dim=24, num_classes=5).eval()
    s = zf.Session(vit, zf.load_sample("coffee"), preprocessing=zf.Preprocessing(size=32))
    layer = "encoder.layers.encoder_layer_1"
    assert s.layer_info(layer).layout.kind == "tokens"
    assert s.activation(layer).shape == (16, 4, 4)
    p = s.project(layer, 3, (1, 2), "gradient")
    x = s.input_tensor.clone().requires_grad_(True)
    seen = {}
    hook = vit.encoder.layers[1].register_forward_hook(lambda m, i, o: seen.setdefault("o", o))
    try:
        vit(x)
    finally:
        hook.remove()
    unit = seen["o"][0, 1 + 1 * 4 + 2, 3]              # class token first, then row-major
    (want,) = torch.autograd.grad(unit, x, unit.detach().clamp(min=0) + (unit <= 0).float())
    torch.testing.assert_close(p, want[0], rtol=1e-5, atol=1e-7)
    with pytest.raises(zf.UnsupportedModelError, match="layer_norm|gelu"):
        s.project(layer, 3, (1, 2), "deconvnet")
    r = s.occlusion(size=16, stride=16, layer=layer, progress=False)
    assert r.features.shape == (2, 2, 16)


def test_strongest_unit_of_a_capped_map_is_ranked_by_the_pre_activation():
    """Many units of a ReLU6 map sit at the cap: the strongest is the one whose input is
    largest, the unit top-k mining ranks first, not the first in reading order."""
    s = zf.Session("efficientnet_lite0", zf.load_sample("chelsea"))
    layer = "blocks.2.depthwise.act"
    act = s.activation(layer)
    capped = [c for c in range(act.shape[0]) if int((act[c] == 6.0).sum()) > 1][:4]
    assert capped
    mined = zf.mine(s, zf.ImageList([zf.load_sample("chelsea")]), [layer], k=1, progress=False)
    top = mined[layer]
    moved = 0
    for c in capped:
        y, x = int(top.y[c, 0]), int(top.x[c, 0])
        assert s.strongest(layer, c) == (c, y, x, 6.0)
        pre = s._pre_activation(layer)[c]
        assert float(pre[y, x]) == float(pre[act[c] == 6.0].max())    # the largest input
        moved += (y, x) != divmod(int(act[c].argmax()), act.shape[2])
    assert moved                                  # not the first capped unit in reading order
    free = next(c for c in range(act.shape[0]) if 0 < float(act[c].max()) < 6.0
                and int((act[c] == act[c].max()).sum()) == 1)
    y, x = divmod(int(act[free].argmax()), act.shape[2])
    assert s.strongest(layer, free)[:3] == (free, y, x)
