"""Every torchvision classification constructor and popular timm models, random weights.

For each model (eval mode, small inputs, one thread), against references written here:

* the session's forward equals the model's own output;
* receptive-field boxes contain the input-gradient support of units (or the geometry is None);
* deconvnet / guided equal an independent reference (Zennit's composites, with a hand-written
  hook for the rectifiers Zennit has no rule for) where every rectifier is a module call, or
  raise ``UnsupportedModelError``; they never equal the gradient through rectifiers;
* occlusion equals a plain occlude-and-forward loop (a 2 x 2 grid);
* mining equals a brute-force search over a few images;
* the model is unchanged afterwards: parameters, buffers, hooks, training flags, outputs.
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import zfwidgets as zf
import zoo_runs
from zfwidgets.backend.layers import as_maps, forward_to, split_layer_id
from zfwidgets.backend.mining.topk import rectifier_layers
from zfwidgets.backend.rules import RuleMode
from zfwidgets.errors import UnsupportedModelError

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

TORCHVISION = torchvision.models.list_models(module=torchvision.models)
#: Constructors left out, and why (random init alone takes minutes and GBs on the CI machine).
TOO_BIG = {
    "regnet_y_128gf": "644M parameters (2.6 GB in float32, 4x the next largest torchvision "
                      "classifier): too big for the 2-core CI machine",
    "vit_h_14": "632M parameters (2.5 GB in float32): too big for the 2-core CI machine",
}
TIMM = ["resnet26d", "seresnet18", "resnest14d", "skresnet18", "efficientnet_b0",
        "mobilenetv3_small_100", "regnety_002", "dla34", "cspdarknet53", "convnext_atto",
        "ghostnet_100", "rexnet_100", "dpn68", "hrnet_w18_small", "vit_tiny_patch16_224",
        "deit_tiny_distilled_patch16_224"]
RECTIFIER_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh)


def _size(name: str) -> int:
    if name == "maxvit_t":
        return 224          # its window partitions need 224 x 224
    return 80 if "inception" in name else 64


def _torchvision(name: str, px: int) -> nn.Module:
    kwargs = {"image_size": px} if name.startswith("vit_") else {}
    return torchvision.models.get_model(name, weights=None, **kwargs)


def _timm(name: str, px: int) -> nn.Module:
    timm = pytest.importorskip("timm")
    kwargs = {"img_size": px} if "vit_" in name or "deit" in name else {}
    return timm.create_model(name, pretrained=False, **kwargs)


# ----------------------------------------------------------------------------- references

@contextlib.contextmanager
def _evaluating(model):
    """Eval mode for a reference computation; every module's flag restored after."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _forward(model, x):
    with torch.no_grad(), _evaluating(model):
        return zf.models.registry.pick_logits(model(x))


def _logits_and_maps(model, layer, x, layout, inputs=False):
    """The logits for ``x`` and ``layer``'s maps, read with a plain forward hook
    (``inputs``: and the maps of the module's input, cloned before an in-place module runs)."""
    name, call = split_layer_id(layer)
    module = model.get_submodule(name)
    seen, fed = [], []
    handles = [module.register_forward_hook(lambda m, i, o: seen.append(o.clone())),
               module.register_forward_pre_hook(lambda m, i: fed.append(i[0].clone()))]
    try:
        logits = _forward(model, x)
    finally:
        for handle in handles:
            handle.remove()
    if inputs:
        return logits, as_maps(seen[call], layout), as_maps(fed[call], layout)
    return logits, as_maps(seen[call], layout)


class _GuidedRectifier:
    """Guided backprop at a ReLU6 / LeakyReLU / Hardtanh(0, t) module, by hand: the positive
    part of the signal, times 1 where the unit was active (``x > 0``, saturated units too) and
    the leak slope elsewhere."""

    def __init__(self, module):
        self.slope = getattr(module, "negative_slope", 0.0)

    def forward_hook(self, module, inputs, output):
        self.active = output > 0  # same sign as the input for these rectifiers

    def backward_hook(self, module, grad_input, grad_output):
        gate = torch.where(self.active, 1.0, self.slope).to(grad_output[0].dtype)
        return (grad_output[0].clamp(min=0) * gate,)


def _reference(model, x, info, channel, rule):
    """The whole-map projection of ``channel`` by Zennit's composites (nn.ReLU modules) and
    the hand-written hook above (the other rectifier modules)."""
    from zennit.composites import DeconvNet, GuidedBackprop
    from zennit.rules import ReLUDeconvNet

    others = (nn.ReLU6, nn.LeakyReLU, nn.Hardtanh)
    if rule == "deconvnet":
        composite = DeconvNet(layer_map=[(others, ReLUDeconvNet())])
    else:
        composite = GuidedBackprop()
    handles = []
    inp = x.detach().clone().requires_grad_(True)
    try:
        if rule == "guided":
            for m in model.modules():
                if isinstance(m, others) and not isinstance(m, nn.ReLU):
                    hook = _GuidedRectifier(m)
                    handles += [m.register_forward_hook(hook.forward_hook),
                                m.register_full_backward_hook(hook.backward_hook)]
                    m.inplace_was, m.inplace = m.inplace, False  # full backward hooks
        with torch.enable_grad(), _evaluating(model), composite.context(model) as modified:
            acts = forward_to(modified, inp, info.name, layout=info.layout)
            sig = torch.zeros_like(acts)
            sig[:, channel] = acts[:, channel].detach()
            (grad,) = torch.autograd.grad(acts, inp, sig)
    finally:
        for h in handles:
            h.remove()
        for m in model.modules():
            if hasattr(m, "inplace_was"):
                m.inplace = m.inplace_was
                del m.inplace_was
    return grad[0]


def _rectifier_calls(model, x, info):
    """``(module rectifier calls, rectifier calls the rules see)`` up to the layer."""
    count = [0]
    handles = [m.register_forward_hook(lambda *a: count.__setitem__(0, count[0] + 1))
               for m in model.modules() if isinstance(m, RECTIFIER_MODULES)]
    try:
        with torch.enable_grad(), _evaluating(model), RuleMode("gradient") as mode:
            forward_to(model, x.clone().requires_grad_(True), info.name, layout=info.layout)
    finally:
        for h in handles:
            h.remove()
    return count[0], mode.rectifiers


# ----------------------------------------------------------------------------- the checks

def _snapshot(model):
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    hooks = [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
             for m in model.modules()]
    return state, flags, hooks


def _spread(table, n):
    picks = [table[round(j * (len(table) - 1) / max(n - 1, 1))] for j in range(n)]
    return list({i.name: i for i in picks}.values())


def _check_boxes(s, model, x):
    px = x.shape[-1]
    tracked = [i for i in s.layer_table() if i.geometry is not None]
    for info in _spread(tracked, 3) if tracked else []:
        _, h, w = info.shape
        for y, xx in {(0, 0), (h - 1, w - 1)}:
            inp = x.clone().requires_grad_(True)
            with torch.enable_grad(), _evaluating(model):
                maps = forward_to(model, inp, info.name, layout=info.layout)
                (g,) = torch.autograd.grad(maps[0, :, y, xx].sum(), inp)
            support = g[0].abs().sum(0) > 0
            if not support.any():
                continue
            rows = torch.nonzero(support.any(1)).flatten()
            cols = torch.nonzero(support.any(0)).flatten()
            top, left, bottom, right = s.receptive_field(info.name, y, xx)
            assert (top <= rows[0] and bottom > rows[-1] and left <= cols[0]
                    and right > cols[-1]), (info.name, (y, xx), (top, left, bottom, right),
                                            (rows[0], cols[0], rows[-1], cols[-1]))
    assert px == x.shape[-2]


def _check_rules(s, model, x, info):
    channel = s.strongest_channel(info.name)
    grad = s.project(info.name, channel, rule="gradient")
    assert torch.isfinite(grad).all()
    module_calls, rule_calls = _rectifier_calls(model, x, info)
    outcome = {}
    for rule in ("deconvnet", "guided"):
        try:
            got = s.project(info.name, channel, rule=rule)
        except UnsupportedModelError as exc:
            assert "rule='gradient'" in str(exc) and " in " in str(exc)
            outcome[rule] = "refused"
            continue
        outcome[rule] = "ok"
        if rule_calls >= 2:  # through rectifiers the rules are not the gradient
            assert (got - grad).abs().max() > 1e-4 * grad.abs().max()
        if module_calls == rule_calls:  # every rectifier a module: the reference applies
            want = _reference(model, x, info, channel, rule)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * want.abs().max())
    return outcome


def _check_occlusion(s, model, x, info):
    px = x.shape[-1]
    size = px // 2
    r = s.occlusion(size=size, stride=size, layer=info.name, progress=False)
    with torch.no_grad():
        base = torch.softmax(s.logits.float(), 0)
    assert r.target == int(base.argmax())
    for i, top in enumerate(r.rows):
        for j, left in enumerate(r.cols):
            occ = x.clone()
            occ[..., top:top + size, left:left + size] = 0.0  # "gray": the mean pixel
            logits, maps = _logits_and_maps(model, info.name, occ, info.layout)
            p = torch.softmax(logits.float(), 1)[0]
            assert abs(float(p[r.target]) - float(r.prob[i, j])) < 1e-4
            totals = maps.double().sum((2, 3))[0]
            np.testing.assert_allclose(r.features[i, j], totals.numpy(), rtol=1e-3,
                                       atol=1e-4 * float(totals.abs().max()) + 1e-6)


def _check_mining(s, model, info):
    images = [zf.load_sample(n) for n in ("chelsea", "coffee", "astronaut")]
    result = zf.mine(s, images, [info.name], k=2, progress=False, workers=0)
    top = result[info.name]
    runs = [_logits_and_maps(model, info.name, s.preprocessing(im).to(s.input_tensor),
                             info.layout, inputs=True)[1:] for im in images]
    maps = [out[0].float() for out, _ in runs]
    # a rectifier's output ties (ReLU6 at its cap, dead units at 0) are ranked by its input
    pres = [inp[0].float() if rectifier_layers(model, [info.name]) else out[0].float()
            for out, inp in runs]
    c = maps[0].shape[0]
    for ch in range(0, c, max(1, c // 8)):
        best = []
        for img, (m, pre) in enumerate(zip(maps, pres)):
            keys = sorted((-float(v), -float(p), pos) for pos, (v, p) in
                          enumerate(zip(m[ch].flatten(), pre[ch].flatten())))
            v, p, pos = keys[0]  # exact ties of both: the first position
            best.append((v, p, img, pos))
        best.sort()
        for slot, (v, _, img, pos) in enumerate(best[:2]):
            assert int(top.image[ch, slot]) == img
            assert divmod(pos, m.shape[2]) == (int(top.y[ch, slot]), int(top.x[ch, slot]))
            assert abs(float(top.values[ch, slot]) + v) <= 1e-5 * (1 + abs(v))


def _sweep(model: nn.Module, px: int):
    torch.manual_seed(0)
    model.eval()
    image = zf.load_sample("coffee")
    pre = zf.Preprocessing(size=px)
    x = pre(image)
    want = _forward(model, x)
    before = _snapshot(model)
    model.train()  # the session must leave the flags as the user had them
    flags = [m.training for m in model.modules()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = zf.Session(model, image, preprocessing=pre)
        torch.testing.assert_close(s.logits, want[0], rtol=0, atol=0)
        table = s.layer_table()
        assert table, "no feature maps found"
        for info in table:
            assert tuple(s.activation(info.name).shape) == info.shape
        _check_boxes(s, model, x)
        info = _spread(table, 3)[1]  # a middle layer
        outcome = _check_rules(s, model, x, info)
        _check_occlusion(s, model, x, info)
        _check_mining(s, model, info)
    assert [m.training for m in model.modules()] == flags
    model.eval()
    state, _, hooks = _snapshot(model)
    assert hooks == before[2]
    assert all(torch.equal(state[k], v) for k, v in before[0].items())
    assert torch.equal(_forward(model, x), want)
    return outcome


def check_torchvision(name: str) -> None:
    """The sweep of one torchvision constructor (random weights), raising on a failure."""
    if name in TOO_BIG:
        pytest.skip(TOO_BIG[name])
    px = _size(name)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = _torchvision(name, px)
    outcome = _sweep(model, px)
    family_refuses = any(k in name for k in ("efficientnet", "mobilenet_v3", "regnet_y",
                                             "convnext", "swin", "vit", "maxvit"))
    assert set(outcome.values()) == ({"refused"} if family_refuses else {"ok"}), outcome


def check_timm(name: str) -> None:
    """The sweep of one timm model (random weights), raising on a failure."""
    px = _size(name)
    torch.manual_seed(0)
    outcome = _sweep(_timm(name, px), px)
    assert len(set(outcome.values())) == 1, outcome  # deconvnet and guided agree on the model


def check(test: str, name: str) -> None:
    """What ``test`` checks of model ``name``; run by its background child (tests/zoo_runs.py)."""
    {zoo_runs.TORCHVISION_TEST: check_torchvision, zoo_runs.TIMM_TEST: check_timm}[test](name)


# The sweeps run in background children started at collection, two at a time, one torch thread
# each (tests/zoo_runs.py, tests/background.py); these tests, moved to the end of the run, judge
# their reports. Run alone, a test starts its own child.

@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_constructor(name):
    zoo_runs.judge(zoo_runs.TORCHVISION_TEST, name)


@pytest.mark.parametrize("name", TIMM)
def test_timm_model(name):
    zoo_runs.judge(zoo_runs.TIMM_TEST, name)
