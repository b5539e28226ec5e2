"""The channels-last twin that plain occlusion passes may run on (:mod:`.occlusion.twin`): it
shares the model's tensors but holds channels-last 4-d weights, computes the same values, is
rebuilt whenever the model changes, never changes the user's model; and the automatic choice
times it against the model's own layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from zfwidgets.backend.occlusion import batches, occlusion_grid, occlude, occlusion_maps
from zfwidgets.backend.occlusion.choice import Chooser, forget_choices
from zfwidgets.backend.occlusion.twin import channels_last_twin, twin_blocker

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CL = torch.channels_last


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.ReLU())
        self.head = nn.Linear(8, 5)
        self.scale = 1.0
        self.bn.running_mean.uniform_(-0.5, 0.5)

    def forward(self, x):
        x = self.block(F.relu(self.bn(self.conv1(x)))) * self.scale
        return self.head(x.mean((2, 3)))


@pytest.fixture
def net():
    torch.manual_seed(0)
    return Net().eval()


def tensors(model):
    return {k: (v, v.stride(), v.clone()) for k, v in model.state_dict(keep_vars=True).items()}


def assert_unchanged(model, before):
    after = model.state_dict(keep_vars=True)
    assert after.keys() == before.keys()
    for k, (t, stride, value) in before.items():
        assert after[k] is t and after[k].stride() == stride and torch.equal(after[k], value), k
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_the_twin_shares_tensors_holds_channels_last_weights_and_computes_the_same(net):
    before = tensors(net)
    net.train()                                  # the twin runs in eval, the model stays as is
    twin = channels_last_twin(net)
    assert twin is not None and twin is not net and twin.conv1 is not net.conv1
    assert not twin.training and not twin.bn.training and net.training and net.bn.training
    for name, p in net.named_parameters():
        q = twin.get_parameter(name)
        if p.dim() == 4:
            assert q is not p and q.is_contiguous(memory_format=CL) and torch.equal(q, p)
            assert p.is_contiguous()             # the model's own weight untouched
        else:
            assert q is p
    for name, b in net.named_buffers():
        assert twin.get_buffer(name) is b
    net.eval()
    x = torch.randn(4, 3, 20, 20).contiguous(memory_format=CL)
    with torch.inference_mode():
        torch.testing.assert_close(twin(x), net(x), rtol=1e-5, atol=1e-6)
    assert_unchanged(net, before)


def test_the_twin_is_reused_until_the_model_changes(net):
    twin = channels_last_twin(net)
    assert channels_last_twin(net) is twin
    with torch.no_grad():                        # an in-place update (an optimizer step)
        net.conv1.weight.add_(1.0)
    fresh = channels_last_twin(net)
    assert fresh is not twin and torch.equal(fresh.conv1.weight, net.conv1.weight)
    net.block[0] = nn.Conv2d(8, 8, 1)            # a submodule replaced
    again = channels_last_twin(net)
    assert again is not fresh and again.block[0].weight.shape[-1] == 1
    net.scale = 2.0                              # an attribute set
    last = channels_last_twin(net)
    assert last is not again and last.scale == 2.0
    x = torch.randn(2, 3, 12, 12)
    with torch.inference_mode():
        torch.testing.assert_close(last(x), net(x), rtol=1e-5, atol=1e-6)


def test_models_the_twin_cannot_stand_for_get_none(net):
    handle = net.conv1.register_forward_hook(lambda *a: None)
    assert "hooks" in twin_blocker(net) and channels_last_twin(net) is None
    handle.remove()
    assert twin_blocker(net) is None
    assert "4-d weight" in twin_blocker(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)))
    assert "4-d weight" in twin_blocker(Net().to(memory_format=CL))  # channels-last already
    assert "TorchScript" in twin_blocker(torch.jit.script(Net().eval()))

    class Positive(nn.Module):
        def forward(self, w):
            return w.abs()

    para = Net()
    parametrize.register_parametrization(para.conv1, "weight", Positive())
    assert "parametrized" in twin_blocker(para)


def test_plain_batches_on_the_twin_equal_the_models_own(net, monkeypatch):
    """A sweep whose remembered choice is plain passes on the twin: every batch runs on the
    twin (not on the model), the maps equal a one-image-at-a-time reference, and the model is
    as it was."""
    before = tensors(net)
    torch.manual_seed(1)
    x = torch.randn(1, 3, 24, 24)
    calls = []
    real = batches.run_batch
    monkeypatch.setattr(batches, "run_batch",
                        lambda plan, corners, engine, model=None:
                        calls.append(model) or real(plan, corners, engine, model))
    forget_choices()
    chooser = Chooser(net, x, 6, 2, "auto", {"plain": 16, "incremental": 16}, 200, None,
                      twin_ok=True)
    for method, seconds in [("incremental", 9.0), ("incremental", 2.0), ("plain", 9.0),
                            ("plain", 1.0), ("twin", 9.0), ("twin", 0.5)]:
        assert chooser.next(200)[0] == method
        chooser.record(method, 16, seconds)
    assert chooser.method == "plain" and chooser.twin
    assert "with channels-last weights" in chooser.reason
    r = occlusion_maps(net, x, 6, 2)             # remembered: plain passes on the twin
    assert r.method == "plain" and "remembered" in r.method_note
    twin = channels_last_twin(net)
    assert calls and all(m is twin for m in calls)
    rows, cols = occlusion_grid(24, 24, 6, 2)
    with torch.inference_mode():
        ref = [torch.softmax(net(occlude(x, [(t, c)], 6)), 1)[0, r.target]
               for t in rows for c in cols]
    np.testing.assert_allclose(r.prob, torch.stack(ref).reshape(r.prob.shape).numpy(),
                               rtol=1e-5, atol=1e-6)
    assert_unchanged(net, before)
    forget_choices()


def test_the_probe_keeps_the_models_own_layout_on_a_close_call(net):
    x = torch.zeros(1, 3, 24, 24)
    for twin_s, engine_s, method, twin in [(0.97, 5.0, "plain", False),
                                           (0.5, 5.0, "plain", True),
                                           (0.6, 0.52, "incremental", False)]:
        forget_choices()
        chooser = Chooser(net, x, 6, 2, "auto", {"plain": 16, "incremental": 16}, 200, None,
                          twin_ok=True)
        for m, seconds in [("incremental", 9.0), ("incremental", engine_s), ("plain", 9.0),
                           ("plain", 1.0), ("twin", 9.0), ("twin", twin_s)]:
            assert chooser.next(200)[0] == m
            chooser.record(m, 16, seconds)
        assert (chooser.method, chooser.twin) == (method, twin)
        assert chooser.next(100)[0] == ("twin" if twin else method)
        later = Chooser(net, x, 6, 2, "auto", {"plain": 16, "incremental": 16}, 200, None,
                        twin_ok=True)
        assert (later.method, later.twin) == (method, twin) and "remembered" in later.reason
    # the engine's own batch of 48 first (4 x 16 + 48 = 112 positions), then the twin's two
    # batches where they fit (+ 2 x 16)
    for total, sizes in [(111, [16] * 6), (143, [16, 16, 48, 16, 16]),
                         (144, [16, 16, 48, 16, 16, 16, 16])]:
        forget_choices()
        chooser = Chooser(net, x, 6, 2, "auto", {"plain": 16, "incremental": 48}, total, None,
                          twin_ok=True)
        probed = []
        while chooser.probing:
            probed.append(chooser.next(total))
            chooser.record(*probed[-1], 0.1 * probed[-1][1])   # the same time per position
        assert [n for _, n in probed] == sizes
        assert (probed[-1][0] == "twin") is (total != 143)
    forget_choices()


def test_a_real_probe_keeps_the_twin_only_when_it_chose_it(net, monkeypatch):
    """An automatic sweep long enough for the twin's batches (run even should the engine be far
    ahead): exact whichever layout won; the twin is held afterwards exactly when plain passes on
    it were chosen."""
    from zfwidgets.backend.occlusion import twin as twin_module

    monkeypatch.setattr(Chooser, "_engine_far_ahead", lambda self: False)
    before = tensors(net)
    forget_choices()
    torch.manual_seed(3)
    x = torch.randn(1, 3, 40, 40)                # 18 x 18 positions: the twin's batches fit
    r = occlusion_maps(net, x, 6, 2)
    assert "channels-last weights" in r.method_note
    chose_twin = r.method == "plain" and "ms with channels-last weights (" in r.method_note
    assert (net in twin_module._TWINS) is chose_twin
    rows, cols = occlusion_grid(40, 40, 6, 2)
    with torch.inference_mode():
        ref = torch.stack([torch.softmax(net(occlude(x, [(t, c)], 6)), 1)[0, r.target]
                           for t in rows for c in cols])
    np.testing.assert_allclose(r.prob, ref.reshape(r.prob.shape).numpy(), rtol=1e-5, atol=1e-6)
    assert_unchanged(net, before)
    forget_choices()


def test_the_twins_batches_are_skipped_when_the_engine_is_far_ahead(net):
    """An engine under half plain passes' time per position: no layout of plain passes would
    catch up, so the probe ends without the twin's batches (and holds no twin)."""
    x = torch.zeros(1, 3, 24, 24)
    for engine_s, probed in [(0.45, 4), (0.55, 6)]:         # plain: 1.0 s a batch
        forget_choices()
        chooser = Chooser(net, x, 6, 2, "auto", {"plain": 16, "incremental": 16}, 200, None,
                          twin_ok=True)
        seen = []
        for seconds in [9.0, engine_s, 9.0, 1.0, 9.0, 2.0]:
            if not chooser.probing:
                break
            seen.append(chooser.next(200)[0])
            chooser.record(seen[-1], 16, seconds)
        assert len(seen) == probed and chooser.method == "incremental" and not chooser.twin
    forget_choices()
