"""Backward rules against slow, explicit re-implementations (the paper's deconvnet, by hand)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zfwidgets.backend.project import Target, project
from zfwidgets.backend.rules import RuleMode
from zfwidgets.errors import BadParameterError, UnknownLayerError, UnsupportedModelError

RULES = ["deconvnet", "guided", "gradient"]


class TinyZF(nn.Module):
    """conv -> relu -> maxpool -> conv -> relu -> maxpool -> conv -> relu, ZF-style.

    ``act`` picks how the rectifiers are written: separate modules, in-place modules, one module
    reused everywhere, functional calls, ReLU6 modules, or in-place tensor methods.
    """

    def __init__(self, act="module", pool=(2, 2)):
        super().__init__()
        self.act_kind = act
        self.conv1 = nn.Conv2d(3, 8, 5, stride=2, padding=2)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.conv3 = nn.Conv2d(16, 12, 3, padding=1)
        self.pool1 = nn.MaxPool2d(*pool)
        self.pool2 = nn.MaxPool2d(*pool)
        if act in ("module", "inplace", "relu6"):
            make = {"module": lambda: nn.ReLU(),
                    "inplace": lambda: nn.ReLU(inplace=True),
                    "relu6": lambda: nn.ReLU6(inplace=True)}[act]
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
              hi: float | None = None, top_gate: bool = True) -> torch.Tensor:
    """The paper's deconvnet written out: rectify, transposed filters, unpool with switches.

    ``guided`` and ``gradient`` use the same walk with their own gate at each rectifier.
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
        a = z.clamp(0, hi)
        if i < 2:
            sizes.append(a.shape)
            a, ind = F.max_pool2d(a, pools[i].kernel_size, pools[i].stride, return_indices=True)
            idx.append(ind)
        h = a

    def gate(s, z):
        if rule == "deconvnet":
            return s.clamp(min=0)
        if rule == "guided":  # "was the unit active": saturated ReLU6 units count as active
            return s.clamp(min=0) * (z > 0).to(s.dtype)
        deriv = ((z > 0) & (z < hi)).to(s.dtype) if hi is not None else (z > 0).to(s.dtype)
        return s * deriv

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
        "functional": "conv3", "method": "conv3", "clamp": "conv3"}


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


@pytest.mark.parametrize("act", ["inplace", "shared", "functional", "method", "clamp", "relu6"])
@pytest.mark.parametrize("rule", RULES)
def test_every_way_of_writing_a_rectifier(act, rule):
    """Inplace modules, a module reused 3 times, F.relu, x.relu_(), clamp(min=0), ReLU6."""
    net, x = _net(act)
    hi = 6.0 if act == "relu6" else None
    x = x * 30 if act == "relu6" else x  # make some units saturate at 6
    layer = LAST[act]
    with torch.no_grad():
        acts = net(x.clone())
    if act in ("functional", "method", "clamp"):
        # the target is the conv output: the reference starts below the last rectifier
        acts = F.conv2d(_pre_last(net, x), net.conv3.weight, net.conv3.bias, padding=1)
    channel = int(acts[0].flatten(1).sum(1).argmax())
    sig = _signal(acts, channel, (2, 3))
    ref = reference(net, x, sig, rule, hi, top_gate=act not in ("functional", "method", "clamp"))
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
    assert project(net, x, "2", [Target(0, 0)], "gradient").abs().sum() > 0


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
