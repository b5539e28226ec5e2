"""The user's model is never left modified: hooks, flags, outputs, also after errors."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import zfwidgets as zf
from zfwidgets.backend import layers as layers_mod
from zfwidgets.errors import UnsupportedModelError, ZFError

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
               "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs",
               "_state_dict_hooks", "_load_state_dict_pre_hooks")


def snapshot(model: nn.Module, x: torch.Tensor):
    """Everything about a model that zfwidgets promises to leave alone."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        was = {n: m.training for n, m in modules.items()}
        model.eval()
        out = model(x.clone())
        for n, m in modules.items():
            m.training = was[n]
    return {
        "hooks": {n: {d: list(getattr(m, d, {}).keys()) for d in _HOOK_DICTS}
                  for n, m in modules.items()},
        "global": (len(torch.nn.modules.module._global_forward_hooks),
                   len(torch.nn.modules.module._global_forward_pre_hooks),
                   len(torch.nn.modules.module._global_backward_hooks)),
        "training": {n: m.training for n, m in modules.items()},
        "inplace": {n: getattr(m, "inplace", None) for n, m in modules.items()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "buffers": {n: b.detach().clone() for n, b in model.named_buffers()},
        "output": out,
        "mode_stack": torch._C._len_torch_function_stack(),
    }


def assert_same(a, b):
    for key in ("hooks", "global", "training", "inplace", "requires_grad", "mode_stack"):
        assert a[key] == b[key], key
    for key in ("params", "buffers"):
        assert a[key].keys() == b[key].keys()
        for n in a[key]:
            assert torch.equal(a[key][n], b[key][n]), (key, n)
    assert torch.equal(a["output"], b["output"])


@pytest.fixture
def user_alexnet():
    torch.manual_seed(0)
    net = torchvision.models.alexnet(weights=None)
    net.train()                                    # the user's flag: must survive
    net.features[0].weight.requires_grad_(False)   # the user's choice: must survive
    own = net.features[3].register_forward_hook(lambda m, i, o: None)  # the user's hook: kept
    yield net
    own.remove()


def exercise(s: zf.Session):
    layer = s.entry.default_layer or s.layers[-1]
    s.activation(layer)
    s.predict(5)
    for rule in zf.RULES:
        s.project(layer, 0, rule=rule)
        s.project_many(layer, [(1, 0, 0), (2, 1, 1)], rule=rule)
    s.receptive_field(layer, 0, 0)
    s.occlusion(size=112, stride=112, layer=layer, progress=False)  # 2 x 2 positions
    zf.mine(s, [s.image], layers=[layer], k=2, progress=False)
    zf.invariance(s, "rotation", [0, 90], layers=[layer])
    zf.ascent(s, steps=2, progress=False)
    zf.ascent(s, layer=layer, steps=2, progress=False)
    zf.correspondence(s, s.input_tensor.repeat(2, 1, 1, 1), {"p": [(0, 0, 32, 32)] * 2},
                      [layer], random_trials=1)
    zf.diagnose_filters(s)
    zf.probe(s, [s.image] * 4, ["a", "a", "b", "b"], [layer], train_per_class=1, trials=1)
    s.saliency()
    s.gradcam()
    s.guided_gradcam(layer=layer)
    zf.backend.explain.class_projection(s, rule="deconvnet")
    zf.explain(s, size=112, stride=112, steps=2, progress=False)
    zf.sanity_check(s, "gradcam", depth=2, progress=False)
    a = s.ablated(layer, [0, 1])
    a.predict(5)
    a.project(layer, 2)
    a.gradcam()
    a.occlusion(size=112, stride=112, layer=layer, progress=False)
    zf.knockout_effect(s, layer, [0, 1], [s.image], progress=False)


def test_session_leaves_the_users_model_alone(user_alexnet):
    x = torch.randn(1, 3, 224, 224)
    before = snapshot(user_alexnet, x)
    s = zf.Session(user_alexnet)
    exercise(s)
    s.set_image(zf.load_sample("coffee"))
    exercise(s)
    assert_same(before, snapshot(user_alexnet, x))
    assert user_alexnet.training and user_alexnet.features[1].inplace


def test_hygiene_after_errors_inside_the_forward(user_alexnet, monkeypatch):
    x = torch.randn(1, 3, 224, 224)
    before = snapshot(user_alexnet, x)
    s = zf.Session(user_alexnet)

    # 1. an exception raised in the middle of a forward pass, from inside a rule
    calls = {"n": 0}
    real = zf.backend.rules._Rectifier.apply

    def failing(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("injected")
        return real(*args)

    monkeypatch.setattr(zf.backend.rules._Rectifier, "apply", failing)
    with pytest.raises(RuntimeError, match="injected"):
        s.project("features.11", 0, rule="deconvnet")
    monkeypatch.undo()

    # 2. an exception from the hook machinery while recording
    real_record = layers_mod.LayerInfo

    def broken(*a, **k):
        raise RuntimeError("injected in hook")

    monkeypatch.setattr(layers_mod, "LayerInfo", broken)
    s._reset()
    with pytest.raises(RuntimeError, match="injected in hook"):
        s.layers
    monkeypatch.setattr(layers_mod, "LayerInfo", real_record)

    # 3. ordinary user errors
    with pytest.raises(ZFError):
        s.project("features.99", 0)
    with pytest.raises(ZFError):
        s.project("features.11", 10_000)
    assert_same(before, snapshot(user_alexnet, x))
    exercise(s)  # and everything still works afterwards
    assert_same(before, snapshot(user_alexnet, x))


def test_hygiene_after_unsupported_activation():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.SiLU(inplace=True), nn.Conv2d(8, 8, 3),
                        nn.ReLU(inplace=True))
    x = torch.randn(1, 3, 224, 224)
    before = snapshot(net, x)
    s = zf.Session(net)
    with pytest.raises(UnsupportedModelError, match="SiLU"):
        s.project("3", 0, rule="deconvnet")
    s.project("3", 0, rule="gradient")
    assert_same(before, snapshot(net, x))


def test_registry_models_unchanged_by_a_session():
    s = zf.Session()
    x = s.input_tensor
    before = snapshot(s.model, x)
    exercise(s)
    assert_same(before, snapshot(s.model, x))
