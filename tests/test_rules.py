"""Backward rules against slow, explicit re-implementations (the paper's deconvnet, by hand)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from zfwidgets.backend.ops import rectifier_call
from zfwidgets.backend.project import Target, project
from zfwidgets.backend.rules import RuleMode
from zfwidgets.errors import BadParameterError, UnknownLayerError, UnsupportedModelError

RULES = ["deconvnet", "guided", "gradient"]


MODULE_ACTS = {"module": lambda: nn.ReLU(), "inplace": lambda: nn.ReLU(inplace=True),
               "relu6": lambda: nn.ReLU6(inplace=True),
               "leaky": lambda: nn.LeakyReLU(0.1, inplace=True),
               "hardtanh": lambda: nn.Hardtanh(0.0, 6.0), "threshold": lambda: nn.Threshold(0, 0)}


class TinyZF(nn.Module):
    """conv -> relu -> maxpool -> conv -> relu -> maxpool -> conv -> relu, ZF-style.

    ``act`` picks how the rectifiers are written: separate modules, in-place modules, one module
    reused everywhere, functional calls, ReLU6 modules, in-place tensor methods, or the other
    rectifier modules (in-place LeakyReLU, Hardtanh(0, 6), Threshold(0, 0)).
    """

    def __init__(self, act="module", pool=(2, 2)):
        super().__init__()
        self.act_kind = act
        self.conv1 = nn.Conv2d(3, 8, 5, stride=2, padding=2)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.conv3 = nn.Conv2d(16, 12, 3, padding=1)
        self.pool1 = nn.MaxPool2d(*pool)
        self.pool2 = nn.MaxPool2d(*pool)
        if act in MODULE_ACTS:
            make = MODULE_ACTS[act]
            self.relu1, self.relu2, self.relu3 = make(), make(), make()
        elif act == "shared":
            self.relu = nn.ReLU(inplace=True)

    def rect(self, i, x):
        if self.act_kind == "functional":
            return F.relu(x)
        if self.act_kind == "method":
            return x.relu_()
        if self.act_kind == "clamp":
            return x.clamp(min=0)
        if self.act_kind == "shared":
            return self.relu(x)
        return getattr(self, f"relu{i}")(x)

    def forward(self, x):
        x = self.pool1(self.rect(1, self.conv1(x)))
        x = self.pool2(self.rect(2, self.conv2(x)))
        return self.rect(3, self.conv3(x))


def reference(net: TinyZF, x: torch.Tensor, signal: torch.Tensor, rule: str,
              hi: float | None = None, top_gate: bool = True, slope: float = 0.0,
              ) -> torch.Tensor:
    """The paper's deconvnet written out: rectify, transposed filters, unpool with switches.

    ``guided`` and ``gradient`` use the same walk with their own gate at each rectifier
    (``slope``: a leaky rectifier's slope below 0, ``hi``: its upper bound).
    Overlapping pools route with scatter-add (several windows may pick one switch); for
    non-overlapping pools that is exactly ``MaxUnpool2d``.
    """
    convs = [net.conv1, net.conv2, net.conv3]
    pools = [net.pool1, net.pool2]
    pre, idx, sizes, conv_in = [], [], [], []
    h = x
    for i, conv in enumerate(convs):
        conv_in.append(h.shape)
        z = F.conv2d(h, conv.weight, conv.bias, conv.stride, conv.padding)
        pre.append(z)
        a = torch.where(z > 0, z.clamp(max=hi) if hi is not None else z, slope * z)
        if i < 2:
            sizes.append(a.shape)
            a, ind = F.max_pool2d(a, pools[i].kernel_size, pools[i].stride, return_indices=True)
            idx.append(ind)
        h = a

    def gate(s, z):
        if rule == "deconvnet":
            return s.clamp(min=0)
        below = torch.full_like(z, slope)  # the derivative under 0 (0 for a plain rectifier)
        if rule == "guided":  # "was the unit active": saturated ReLU6 units count as active
            return s.clamp(min=0) * torch.where(z > 0, torch.ones_like(z), below)
        inside = ((z > 0) & (z < hi)) if hi is not None else z > 0
        return s * torch.where(inside, torch.ones_like(z), torch.where(z > 0, 0.0, below))

    s = signal
    for i in (2, 1, 0):
        if i < 2 or top_gate:  # top_gate=False: the signal starts at conv3's output
            s = gate(s, pre[i])
        conv = convs[i]
        out_h, out_w = conv_in[i][-2:]
        full = F.conv_transpose2d(s, conv.weight, None, conv.stride, conv.padding)
        pad_h, pad_w = out_h - full.shape[-2], out_w - full.shape[-1]
        if pad_h or pad_w:  # output_padding of the transposed conv
            full = F.conv_transpose2d(s, conv.weight, None, conv.stride, conv.padding,
                                      output_padding=(pad_h, pad_w))
        s = full
        if i > 0:
            p = pools[i - 1]
            if p.kernel_size == p.stride:
                s = F.max_unpool2d(s, idx[i - 1], p.kernel_size, p.stride,
                                   output_size=sizes[i - 1][-2:])
            else:
                n, c = s.shape[:2]
                flat = torch.zeros(n, c, sizes[i - 1][-2] * sizes[i - 1][-1])
                flat.scatter_add_(2, idx[i - 1].flatten(2), s.flatten(2))
                s = flat.view(sizes[i - 1])
    return s


def _signal(acts, channel, pos):
    sig = torch.zeros_like(acts)
    if pos is None:
        sig[:, channel] = acts[:, channel]
    else:
        v = acts[0, channel, pos[0], pos[1]]
        sig[:, channel, pos[0], pos[1]] = v if v > 0 else 1.0
    return sig


def _net(act="module", pool=(2, 2), seed=0):
    torch.manual_seed(seed)
    net = TinyZF(act, pool).eval()
    x = torch.randn(1, 3, 48, 40)
    return net, x


LAST = {"module": "relu3", "inplace": "relu3", "relu6": "relu3", "shared": "relu@2",
        "functional": "conv3", "method": "conv3", "clamp": "conv3", "leaky": "relu3",
        "hardtanh": "relu3", "threshold": "relu3"}


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("pool", [(2, 2), (3, 2)], ids=["pool2x2", "pool3x3s2"])
@pytest.mark.parametrize("pos", [None, (3, 2)], ids=["map", "unit"])
def test_rules_match_explicit_reference(rule, pool, pos):
    net, x = _net(pool=pool)
    acts = net(x).detach()
    channel = int(acts[0].flatten(1).sum(1).argmax())
    want = reference(net, x, _signal(acts, channel, pos), rule)
    got = project(net, x, "relu3", [Target(0, channel, *(pos or (None, None)))], rule)
    assert got.shape == x.shape
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), (got - want).abs().max()


@pytest.mark.parametrize("act", ["inplace", "shared", "functional", "method", "clamp", "relu6",
                                 "leaky", "hardtanh", "threshold"])
@pytest.mark.parametrize("rule", RULES)
def test_every_way_of_writing_a_rectifier(act, rule):
    """Inplace modules, a module reused 3 times, F.relu, x.relu_(), clamp(min=0), ReLU6,
    in-place LeakyReLU(0.1), Hardtanh(0, 6), Threshold(0, 0)."""
    net, x = _net(act)
    hi = 6.0 if act in ("relu6", "hardtanh") else None
    slope = 0.1 if act == "leaky" else 0.0
    x = x * 30 if hi is not None else x  # make some units saturate at 6
    layer = LAST[act]
    with torch.no_grad():
        acts = net(x.clone())
    if act in ("functional", "method", "clamp"):
        # the target is the conv output: the reference starts below the last rectifier
        acts = F.conv2d(_pre_last(net, x), net.conv3.weight, net.conv3.bias, padding=1)
    channel = int(acts[0].flatten(1).sum(1).argmax())
    sig = _signal(acts, channel, (2, 3))
    ref = reference(net, x, sig, rule, hi, top_gate=act not in ("functional", "method", "clamp"),
                    slope=slope)
    got = project(net, x, layer, [Target(0, channel, 2, 3)], rule)
    assert torch.allclose(got, ref, atol=1e-5, rtol=1e-4), (got - ref).abs().max()


def _pre_last(net, x):
    with torch.no_grad():
        h = net.pool1(net.conv1(x).clamp(min=0))
        return net.pool2(net.conv2(h).clamp(min=0))


def test_relu6_saturation_is_respected():
    """ReLU6: the gradient gates units above 6; deconvnet and guided do not."""
    net, x = _net("relu6")
    x = x * 30
    assert (net.conv1(x) > 6).float().mean() > 0.05, "test input must saturate some units"
    g = project(net, x, "relu3", [Target(0, 0)], "gradient")
    d = project(net, x, "relu3", [Target(0, 0)], "deconvnet")
    gb = project(net, x, "relu3", [Target(0, 0)], "guided")
    assert not torch.allclose(g, d)
    assert not torch.allclose(g, gb)


def test_batched_equals_one_by_one():
    net, x = _net(pool=(3, 2))
    x = torch.cat([x, torch.randn_like(x)])
    targets = [Target(0, 1, 2, 2), Target(1, 3, None, None), Target(0, 5, 4, 1), Target(1, 1, 2, 2)]
    for rule in RULES:
        many = project(net, x, "relu3", targets, rule)
        for n, t in enumerate(targets):
            one = project(net, x, "relu3", [t], rule)
            assert torch.allclose(many[n], one[0], atol=1e-6)
        # a different batch composition (chunks of 1) gives the same results
        chunked = project(net, x, "relu3", targets, rule, batch_size=1)
        assert torch.allclose(many, chunked, atol=1e-6)


def test_rules_differ_from_each_other():
    net, x = _net(pool=(3, 2))
    outs = {r: project(net, x, "relu3", [Target(0, 0)], r) for r in RULES}  # a live map
    assert not torch.allclose(outs["deconvnet"], outs["gradient"])
    assert not torch.allclose(outs["guided"], outs["gradient"])
    assert not torch.allclose(outs["guided"], outs["deconvnet"])


@pytest.mark.parametrize("act", [nn.SiLU, nn.GELU, nn.Sigmoid, nn.Tanh, nn.Hardswish])
def test_non_rectifiers_are_refused_not_silently_gradient(act):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), act(), nn.Conv2d(4, 4, 3)).eval()
    x = torch.randn(1, 3, 16, 16)
    for rule in ("deconvnet", "guided"):
        with pytest.raises(UnsupportedModelError, match="gradient"):
            project(net, x, "2", [Target(0, 0)], rule)
    # the gradient rule goes through them: map 0's own values sent down by plain autograd
    leaf = x.clone().requires_grad_(True)
    out = net(leaf)[:, 0]
    (want,) = torch.autograd.grad(out, leaf, out.detach())
    got = project(net, x, "2", [Target(0, 0)], "gradient")
    assert want.abs().sum() > 0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_unknown_rule_and_layer():
    net, x = _net()
    with pytest.raises(BadParameterError, match="deconvnet"):
        project(net, x, "relu3", [Target(0, 0)], "lrp")
    with pytest.raises(UnknownLayerError, match="relu3"):
        project(net, x, "relu33", [Target(0, 0)], "gradient", known=["relu1", "relu3"])


def test_mode_leaves_ordinary_results_unchanged():
    net, x = _net("inplace")
    want = net(x.clone())
    with RuleMode("deconvnet"):
        got = net(x.clone())
    assert torch.equal(want, got)


# ----------------------------------------------------------------------------- rectifier forms
# Each way of writing a rectifier, the (lo, hi, slope, inplace) that `rectifier_call` must read
# from it, and each rule's backward against a hand-written reference.

RECTIFIER_FORMS = {
    # name: (call, (lo, hi, slope, inplace))
    "F.relu": (F.relu, (0.0, None, 0.0, False)),
    "F.relu(inplace=True)": (lambda x: F.relu(x, inplace=True), (0.0, None, 0.0, True)),
    "torch.relu_": (torch.relu_, (0.0, None, 0.0, True)),
    "x.relu()": (lambda x: x.relu(), (0.0, None, 0.0, False)),
    "nn.ReLU(inplace=True)": (nn.ReLU(inplace=True), (0.0, None, 0.0, True)),
    "F.leaky_relu(x)": (F.leaky_relu, (0.0, None, 0.01, False)),
    "F.leaky_relu(x, 0.2)": (lambda x: F.leaky_relu(x, 0.2), (0.0, None, 0.2, False)),
    "F.leaky_relu(x, negative_slope=0.3)": (lambda x: F.leaky_relu(x, negative_slope=0.3),
                                            (0.0, None, 0.3, False)),
    "F.leaky_relu(x, 0.2, True)": (lambda x: F.leaky_relu(x, 0.2, True),
                                   (0.0, None, 0.2, True)),
    "F.leaky_relu(x, 0.2, inplace=True)": (lambda x: F.leaky_relu(x, 0.2, inplace=True),
                                           (0.0, None, 0.2, True)),
    "F.leaky_relu_(x, 0.1)": (lambda x: F.leaky_relu_(x, 0.1), (0.0, None, 0.1, True)),
    "nn.LeakyReLU(0.05)": (nn.LeakyReLU(0.05), (0.0, None, 0.05, False)),
    "nn.LeakyReLU(0.05, inplace=True)": (nn.LeakyReLU(0.05, inplace=True),
                                         (0.0, None, 0.05, True)),
    "F.hardtanh(x, 0, 4)": (lambda x: F.hardtanh(x, 0.0, 4.0), (0.0, 4.0, 0.0, False)),
    "F.hardtanh(x, min_val=0, max_val=4, inplace=True)": (
        lambda x: F.hardtanh(x, min_val=0.0, max_val=4.0, inplace=True), (0.0, 4.0, 0.0, True)),
    "F.hardtanh_(x, 0, 4)": (lambda x: F.hardtanh_(x, 0.0, 4.0), (0.0, 4.0, 0.0, True)),
    "nn.Hardtanh(0, 6)": (nn.Hardtanh(0, 6), (0.0, 6.0, 0.0, False)),
    "nn.ReLU6(inplace=True)": (nn.ReLU6(inplace=True), (0.0, 6.0, 0.0, True)),
    "F.relu6": (F.relu6, (0.0, 6.0, 0.0, False)),
    "F.relu6(x, inplace=True)": (lambda x: F.relu6(x, inplace=True), (0.0, 6.0, 0.0, True)),
    "F.threshold(x, 0, 0)": (lambda x: F.threshold(x, 0.0, 0.0), (0.0, None, 0.0, False)),
    "F.threshold(x, 0, 0, True)": (lambda x: F.threshold(x, 0.0, 0.0, True),
                                   (0.0, None, 0.0, True)),
    "F.threshold_(x, 0, 0)": (lambda x: F.threshold_(x, 0.0, 0.0), (0.0, None, 0.0, True)),
    "nn.Threshold(0, 0)": (nn.Threshold(0.0, 0.0), (0.0, None, 0.0, False)),
    "nn.Threshold(0, 0, inplace=True)": (nn.Threshold(0, 0, inplace=True),
                                         (0.0, None, 0.0, True)),
    "x.clamp(min=0)": (lambda x: x.clamp(min=0), (0.0, None, 0.0, False)),
    "torch.clamp(x, 0)": (lambda x: torch.clamp(x, 0), (0.0, None, 0.0, False)),
    "x.clamp(0, 3)": (lambda x: x.clamp(0, 3), (0.0, 3.0, 0.0, False)),
    "torch.clip(x, min=0)": (lambda x: torch.clip(x, min=0), (0.0, None, 0.0, False)),
    "x.clamp_(min=0)": (lambda x: x.clamp_(min=0), (0.0, None, 0.0, True)),
    "x.clip_(0, 3)": (lambda x: x.clip_(0, 3), (0.0, 3.0, 0.0, True)),
    "torch.clamp_min(x, 0)": (lambda x: torch.clamp_min(x, 0), (0.0, None, 0.0, False)),
    "x.clamp_min(0)": (lambda x: x.clamp_min(0), (0.0, None, 0.0, False)),
    "x.clamp_min_(0)": (lambda x: x.clamp_min_(0), (0.0, None, 0.0, True)),
}

# Calls of the same functions that are not rectifiers at 0: no rule may treat them as one.
NOT_RECTIFIERS = {
    "F.hardtanh(x)": F.hardtanh,                                   # [-1, 1]
    "nn.Hardtanh()": nn.Hardtanh(),
    "F.hardtanh(x, -0.5, 6)": lambda x: F.hardtanh(x, -0.5, 6.0),
    "nn.Hardtanh(-2, 6, inplace=True)": nn.Hardtanh(-2.0, 6.0, inplace=True),
    "F.hardtanh_(x, 1, 6)": lambda x: F.hardtanh_(x, 1.0, 6.0),
    "F.threshold(x, 0.5, 0)": lambda x: F.threshold(x, 0.5, 0.0),
    "F.threshold(x, 0, -1)": lambda x: F.threshold(x, 0.0, -1.0),
    "nn.Threshold(-1, 0, inplace=True)": nn.Threshold(-1.0, 0.0, inplace=True),
    "x.clamp(min=-1)": lambda x: x.clamp(min=-1),
    "x.clamp(max=3)": lambda x: x.clamp(max=3),
    "x.clamp(min=tensor 0)": lambda x: x.clamp(min=torch.tensor(0.0)),
    "x.clamp_min(0.5)": lambda x: x.clamp_min(0.5),
}


class _SeenRectifiers(TorchFunctionMode):
    """Records what `rectifier_call` reads from every call made while active (runs the call)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        rect = rectifier_call(func, args, kwargs)
        if rect is not None:
            self.seen.append(rect)
        return func(*args, **kwargs)


def _rectifier_input(seed=0):
    """Values from about -8 to 8 (past 6, so that ReLU6 saturates) and the kinks themselves
    (0 and every upper bound used here), where the derivative is torch's own convention."""
    x = torch.randn(400, generator=torch.Generator().manual_seed(seed)) * 4
    return torch.cat([x, torch.tensor([0.0, -0.0, 3.0, 4.0, 6.0])])


def _backward(call, x, g, rule=None):
    """``(y, dL/dx, input after the call, rectifiers replaced)`` of ``call`` for upstream
    ``g``, under ``RuleMode(rule)`` (None: plain autograd). The call gets a non-leaf copy of
    ``x``, so that in-place forms are legal."""
    leaf = x.clone().requires_grad_(True)
    inp = leaf * 1.0
    replaced = 0
    if rule is None:
        y = call(inp)
    else:
        with RuleMode(rule) as mode:
            y = call(inp)
        replaced = mode.rectifiers
    (dx,) = torch.autograd.grad(y, leaf, g)
    return y.detach(), dx, inp.detach(), replaced


@pytest.mark.parametrize("name", list(RECTIFIER_FORMS))
def test_rectifier_call_reads_each_form(name):
    call, want = RECTIFIER_FORMS[name]
    x = _rectifier_input()
    with _SeenRectifiers() as mode:
        call(x)
    assert len(mode.seen) == 1, [(r.lo, r.hi, r.slope, r.inplace) for r in mode.seen]
    rect = mode.seen[0]
    assert (rect.lo, rect.hi, rect.slope, rect.inplace) == want
    assert rect.x is x                            # the rectified tensor: the call's input


@pytest.mark.parametrize("name", list(NOT_RECTIFIERS))
def test_rectifier_call_refuses_other_bounds(name):
    with _SeenRectifiers() as mode:
        NOT_RECTIFIERS[name](_rectifier_input())
    assert mode.seen == []


def test_rectifier_call_refuses_non_float_and_non_tensor_inputs():
    assert rectifier_call(F.relu, (torch.arange(-3, 3),), {}) is None          # integer tensor
    assert rectifier_call(torch.clamp, (torch.arange(-3, 3),), {"min": 0}) is None
    assert rectifier_call(F.relu, (), {}) is None
    assert rectifier_call(torch.clamp, (3.0,), {"min": 0}) is None
    assert rectifier_call(torch.add, (torch.ones(2), 1), {}) is None           # not in the table
    rect = rectifier_call(F.leaky_relu, (torch.ones(2),), {"negative_slope": 0.25,
                                                           "inplace": True})
    assert (rect.lo, rect.hi, rect.slope, rect.inplace) == (0.0, None, 0.25, True)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("name", list(RECTIFIER_FORMS))
def test_each_rectifier_form_against_its_hand_written_backward(name, rule):
    call, (lo, hi, slope, inplace) = RECTIFIER_FORMS[name]
    x = _rectifier_input(1)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    y, got, inp, replaced = _backward(call, x, g, rule)
    assert replaced == 1
    plain_y, plain_dx, _, _ = _backward(call, x, g)
    # the forward is the op's own, in place where the op writes into its input
    want_y = torch.where(x > lo, x if hi is None else x.clamp(max=hi), slope * x)
    torch.testing.assert_close(y, want_y, rtol=0, atol=0)
    torch.testing.assert_close(y, plain_y, rtol=0, atol=0)
    torch.testing.assert_close(inp, want_y if inplace else x, rtol=0, atol=0)
    if rule == "deconvnet":                       # the signal is rectified, the input ignored
        want = g.clamp(min=0)
    elif rule == "guided":                        # ... and gated by "was the unit active"
        want = g.clamp(min=0) * torch.where(x > lo, 1.0, slope)
    else:                                         # the derivative of the op itself
        want = plain_dx
        inside = (x > lo) & (x < hi) if hi is not None else x > lo
        deriv = torch.where(inside, 1.0, torch.where(x > lo, 0.0, slope))
        torch.testing.assert_close(plain_dx, g * deriv, rtol=0, atol=0)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    if rule != "gradient":                        # the references do tell the rules apart
        assert not torch.equal(got, plain_dx)


@pytest.mark.parametrize("name", list(NOT_RECTIFIERS))
def test_other_bounds_keep_their_own_derivative_under_the_gradient(name):
    """hardtanh(-1, 1), threshold(0.5, 0), clamp(min=-1) ... are not rectifiers at 0: no rule
    treats them as one. The gradient goes through with the op's ordinary derivative."""
    call = NOT_RECTIFIERS[name]
    x = _rectifier_input(3)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
    y, got, _, replaced = _backward(call, x, g, "gradient")
    want_y, want, _, _ = _backward(call, x, g)
    assert replaced == 0
    torch.testing.assert_close(y, want_y, rtol=0, atol=0)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert not torch.equal(got, g.clamp(min=0))             # not treated as deconvnet
    assert not torch.equal(got, g.clamp(min=0) * (x > 0))   # nor as guided


@pytest.mark.parametrize("rule", ["deconvnet", "guided"])
@pytest.mark.parametrize("name", list(NOT_RECTIFIERS))
def test_other_bounds_are_refused_by_deconvnet_and_guided(name, rule):
    """... and the deconvnet and guided rules are not defined through them: refused (issue 10:
    they used to pass with their plain derivative), naming the op."""
    call = NOT_RECTIFIERS[name]
    leaf = _rectifier_input(3).requires_grad_(True)
    inp = leaf * 1.0
    with pytest.raises(UnsupportedModelError, match=r"applies (hardtanh|threshold|clamp)"):
        with RuleMode(rule, inputs=inp):
            call(inp)


# ----------------------------------------------------------------------------- the allow-list
# Issue 10: anything that is not on the allow-list and lies on the path from the input to the
# layer makes deconvnet and guided undefined; it used to pass with its plain gradient.

class _Act(nn.Module):
    """An activation written out as a function (a hand-written ReLU, exp, erf ...)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


HAND_WRITTEN = {
    "sigmoid_": (lambda x: x.sigmoid_(), "sigmoid_"),
    "tanh_": (lambda x: x.tanh_(), "tanh_"),
    "LogSigmoid": (nn.LogSigmoid(), "log_?sigmoid"),
    "exp": (torch.exp, "exp"),
    "erf": (torch.erf, "erf"),
    "abs": (torch.abs, "abs"),
    "where(x > 0, x, 0)": (lambda x: torch.where(x > 0, x, 0.0), "gt"),
    "x * (x > 0)": (lambda x: x * (x > 0), "gt"),
    "x * (x > 0).float()": (lambda x: x * (x > 0).float(), "gt"),
    "x * sigmoid(x)": (lambda x: x * torch.sigmoid(x), "sigmoid"),
    "softmax over channels": (nn.Softmax2d(), "softmax"),
    "x / x.norm()": (lambda x: x / x.norm(dim=1, keepdim=True), "norm"),
    "GroupNorm": (nn.GroupNorm(2, 8), "group_norm"),
    "x ** 2": (lambda x: x ** 2, "pow"),
    "clamp(-1, 1)": (lambda x: x.clamp(-1, 1), "clamp"),
}


OUT_OF_PLACE = {"sigmoid_": torch.sigmoid, "tanh_": torch.tanh}


def _act_net(act) -> nn.Sequential:
    torch.manual_seed(0)
    a = act if isinstance(act, nn.Module) else _Act(act)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), a,
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()).eval()


@pytest.mark.parametrize("name", list(HAND_WRITTEN))
@pytest.mark.parametrize("rule", ["deconvnet", "guided"])
def test_ops_off_the_allow_list_are_refused(name, rule):
    act, op = HAND_WRITTEN[name]
    net = _act_net(act)
    x = torch.randn(1, 3, 12, 12)
    with pytest.raises(UnsupportedModelError, match=rf"applies {op}\b.* in module '2' "):
        project(net, x, "4", [Target(0, 1)], rule)
    got = project(net, x, "4", [Target(0, 1)], "gradient")  # the gradient goes through anything
    leaf = x.clone().requires_grad_(True)
    # (plain autograd cannot go through an in-place sigmoid_ of a ReLU's output: the reference
    # uses the out-of-place op)
    reference_net = _act_net(OUT_OF_PLACE.get(name, act))
    out = reference_net(leaf)[:, 1]
    (want,) = torch.autograd.grad(out, leaf, out.detach())
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_the_issue_example_is_no_longer_the_gradient():
    """nn.Sequential(Conv2d, Softmax2d, Conv2d, ...): deconvnet was bit-identical to the
    gradient; now it is refused, naming the op and the module."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Softmax2d(),
                        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1)).eval()
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(UnsupportedModelError) as err:
        project(net, x, "4", [Target(0, 0)], "deconvnet")
    assert "softmax" in str(err.value) and "'1' (Softmax2d)" in str(err.value)
    assert "rule='gradient'" in str(err.value)
    assert project(net, x, "4", [Target(0, 0)], "gradient").abs().sum() > 0
    # a layer before the softmax is still projected by the deconvnet
    assert project(net, x, "0", [Target(0, 0)], "deconvnet").abs().sum() > 0


class _Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3), _Gate())

    def forward(self, x):
        return self.block(self.stem(x))


class _Gate(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x.mean((2, 3), keepdim=True))  # squeeze-excitation style


def test_the_message_names_the_innermost_module_by_its_dotted_name():
    with pytest.raises(UnsupportedModelError, match=r"applies sigmoid in module 'block.1' "
                                                    r"\(_Gate\)"):
        project(_Nested().eval(), torch.randn(1, 3, 10, 10), "block", [Target(0, 0)], "guided")


class _StdConv(nn.Conv2d):
    """A convolution whose weights are standardized at every call (timm's StdConv2d): the
    computation touches only the weights, not the path from the input."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / torch.sqrt(w.var((1, 2, 3), keepdim=True)
                                                                + 1e-5)
        return F.conv2d(x, torch.tanh(w), self.bias, self.stride, self.padding)


def test_computations_on_weights_alone_do_not_count():
    torch.manual_seed(0)
    net = nn.Sequential(_StdConv(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        _StdConv(6, 6, 3, padding=1), nn.ReLU()).eval()
    plain = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(6, 6, 3, padding=1), nn.ReLU()).eval()
    with torch.no_grad():
        for a, b in ((net[0], plain[0]), (net[3], plain[3])):
            w = a.weight
            w = (w - w.mean((1, 2, 3), keepdim=True)) / torch.sqrt(
                w.var((1, 2, 3), keepdim=True) + 1e-5)
            b.weight.copy_(torch.tanh(w))
            b.bias.copy_(a.bias)
    x = torch.randn(1, 3, 16, 16)
    for rule in ("deconvnet", "guided"):
        got = project(net, x, "4", [Target(0, 2, 3, 3)], rule)
        want = project(plain, x, "4", [Target(0, 2, 3, 3)], rule)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(got, project(net, x, "4", [Target(0, 2, 3, 3)], "gradient"))


class _Glue(nn.Module):
    """Everything on the allow-list at once: joins, splits, sums, scalings, pools, reshapes."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        x = F.relu(self.bn(self.conv1(x)))
        a, b = x.chunk(2, dim=1)
        x = torch.cat([b, a * 0.5], 1) + x / 3 - 1.0
        x = F.pad(F.avg_pool2d(x, 2), (1, 1, 1, 1))
        x = F.interpolate(x, size=(8, 8), mode="bilinear", align_corners=False)
        x = self.conv2(x.permute(0, 1, 3, 2).contiguous())
        x = F.adaptive_max_pool2d(F.relu(x), 4)
        return self.fc(self.drop(torch.flatten(x, 1)))


def test_the_allow_list_covers_the_usual_glue():
    torch.manual_seed(0)
    net = _Glue().eval()
    x = torch.randn(1, 3, 12, 12)
    with RuleMode("deconvnet"):
        net(x.clone().requires_grad_(True))  # nothing refused
    d = project(net, x, "conv2", [Target(0, 1)], "deconvnet")
    g = project(net, x, "conv2", [Target(0, 1)], "gradient")
    assert d.abs().sum() > 0 and not torch.allclose(d, g)


def test_training_mode_batch_norm_and_dropout_are_refused():
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    with pytest.raises(UnsupportedModelError, match="training mode"):
        with RuleMode("deconvnet", inputs=x):
            F.batch_norm(x, None, None, training=True)
    with pytest.raises(UnsupportedModelError, match="training mode"):
        with RuleMode("guided", inputs=x):
            F.dropout(x, 0.3)
    with RuleMode("deconvnet", inputs=x):
        F.dropout(x, 0.3, training=False)


def test_no_global_hook_outlives_the_mode_even_after_a_refusal():
    from torch.nn.modules import module as m

    before = (dict(m._global_forward_hooks), dict(m._global_forward_pre_hooks))
    net = _act_net(torch.exp)
    with pytest.raises(UnsupportedModelError):
        project(net, torch.randn(1, 3, 8, 8), "4", [Target(0, 0)], "deconvnet")
    assert (dict(m._global_forward_hooks), dict(m._global_forward_pre_hooks)) == before
    assert torch.overrides._get_current_function_mode() is None


class _HalfRectified(nn.Module):
    """A conv whose first half of channels is rectified: in place on a view (``h[:, :4]``,
    the return value ignored), in place on a whole intermediate, or out of place."""

    def __init__(self, how: str):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.how = how

    def forward(self, x):
        h = self.conv1(x)
        if self.how == "view":
            h[:, :4].relu_()
        elif self.how == "whole":
            g = h[:, :4] * 1.0
            F.relu6(g, inplace=True)          # the return value ignored
            h = torch.cat([g, h[:, 4:]], 1)
        else:
            h = torch.cat([F.relu6(h[:, :4]) if self.how == "out6" else h[:, :4].relu(),
                           h[:, 4:]], 1)
        return F.relu(self.conv2(h))


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("how, same_as", [("view", "out"), ("whole", "out6")])
def test_in_place_rectifiers_on_views_and_intermediates_equal_out_of_place(rule, how, same_as):
    """An in-place rectifier clamps its input itself (no copy) where it can, and copies back
    into a view; either way the projection is the out-of-place one's."""
    x = torch.randn(1, 3, 12, 12) * 3
    nets = {k: _HalfRectified(k).eval() for k in (how, same_as)}
    got = {k: project(n, x, "conv2", [Target(0, 2, 5, 6)], rule) for k, n in nets.items()}
    assert got[how].abs().max() > 0
    assert torch.allclose(got[how], got[same_as], atol=1e-6), (got[how] - got[same_as]).abs().max()
    h = torch.randn(1, 4, 5, 5, requires_grad=True) * 1.0    # a non-leaf, not a view
    with torch.enable_grad(), RuleMode(rule):
        y = F.relu6(h, inplace=True)
    assert y is h and "InPlace" in type(y.grad_fn).__name__
