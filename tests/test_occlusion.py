"""Occlusion maps (paper Fig. 7): the incremental engine against a plain occlude-and-run loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zfwidgets import Preprocessing, Session, ZFError, get_model, wrap_model
from zfwidgets.backend.layers import split_layer_id
from zfwidgets.backend.occlusion import (IncrementalMode, OcclusionResult, fill_tensor, occlude,
                                         occlusion_grid, occlusion_maps)
from zfwidgets.errors import BadParameterError, Cancelled, OutOfRangeError, UnknownLayerError



pytestmark = pytest.mark.usefixtures("one_torch_thread")

# ----------------------------------------------------------------------------- the reference

def plain_loop(model, x, size, stride, layer, channel, fill, chunk=12):
    """Occluded copies run through the model (a few per forward pass, nothing incremental):
    P(every class) ``[R, C, classes]`` and the channel total of ``layer`` ``[R, C]``."""
    H, W = x.shape[2:]
    name, call = split_layer_id(layer)
    module = model.get_submodule(name)
    copies = []
    for top in range(0, H - size + 1, stride):
        for left in range(0, W - size + 1, stride):
            xo = x.clone()
            xo[0, :, top:top + size, left:left + size] = fill.reshape(-1, 1, 1)
            copies.append(xo)
    probs, feats = [], []
    for start in range(0, len(copies), chunk):
        seen = []

        def hook(m, i, o):
            seen.append(o.detach()[:, channel].sum((1, 2)))

        handle = module.register_forward_hook(hook)
        try:
            with torch.no_grad():
                out = model(torch.cat(copies[start:start + chunk]))
        finally:
            handle.remove()
        probs.append(torch.softmax(out.float(), 1))
        feats.append(seen[call])
    rows = len(range(0, H - size + 1, stride))
    probs = torch.cat(probs)
    return probs.reshape(rows, -1, probs.shape[-1]), torch.cat(feats).numpy().reshape(rows, -1)


def check_equal(result: OcclusionResult, probs: torch.Tensor, feats: np.ndarray):
    assert result.prob.shape == probs.shape[:2] == feats.shape
    ref = probs[..., result.target].numpy()
    np.testing.assert_allclose(result.prob, ref, atol=1e-5, rtol=0)
    # near-uniform outputs (random weights) would pass any 1e-5 test: compare relatively too
    np.testing.assert_allclose(result.prob, ref, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(result.top_prob, probs.max(-1).values.numpy(), atol=1e-5, rtol=1e-4)
    # the top class agrees wherever the top two are not a float-rounding tie
    two = probs.topk(2, -1).values
    clear = (two[..., 0] - two[..., 1] > 1e-4 * two[..., 0]).numpy()
    assert clear.mean() > 0.5
    np.testing.assert_array_equal(result.top_class[clear], probs.argmax(-1).numpy()[clear])
    scale = max(1.0, float(np.abs(feats).max()))
    np.testing.assert_allclose(result.feature, feats, atol=1e-5 * scale, rtol=1e-5)


def snapshot(model: nn.Module):
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    flags = [(n, m.training) for n, m in model.named_modules()]
    return state, flags


def assert_unmodified(model: nn.Module, snap):
    state, flags = snap
    now = model.state_dict()
    assert now.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(now[k], v), k
    assert [(n, m.training) for n, m in model.named_modules()] == flags
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
    assert torch._C._len_torch_function_stack() == 0  # no IncrementalMode left active


# ----------------------------------------------------------------------------- models

@pytest.fixture(scope="module")
def lite0():
    return Session("efficientnet_lite0")


@pytest.fixture(scope="module")
def alexnet():
    torch.manual_seed(0)
    return get_model("alexnet", weights=None)


class OddNet(nn.Module):
    """A small net using many kinds of op: strided/dilated/'same' convs, BN, in-place and
    functional activations, max/avg pools with padding, a residual add, a channel concat, F.pad,
    a bilinear resize (not handled incrementally: must fall back exactly) and a global pool."""

    def __init__(self, classes: int = 7):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 5, stride=2, padding=2)
        self.bn1 = nn.BatchNorm2d(8)
        self.act1 = nn.ReLU(inplace=True)
        self.pool1 = nn.MaxPool2d(3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding="same", dilation=2)
        self.conv3 = nn.Conv2d(8, 8, (3, 1), padding=(1, 0), groups=8)
        self.pool2 = nn.AvgPool2d(3, stride=2, padding=1)
        self.conv4 = nn.Conv2d(16, 12, 3, padding=1, padding_mode="reflect")
        self.act4 = nn.ReLU6()
        self.head = nn.Linear(12, classes)
        for bn in (self.bn1,):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        x = self.pool1(self.act1(self.bn1(self.conv1(x))))
        y = F.silu(self.conv2(x))
        y = y + x
        y += 0.5 * self.conv3(x)
        z = torch.cat([y, torch.sigmoid(x) * 2.0], dim=1)
        z = self.pool2(z)
        z = F.pad(z, (1, 0, 2, 1))
        z = self.act4(self.conv4(z))
        z = F.interpolate(z, scale_factor=2, mode="bilinear", align_corners=False)
        return self.head(z.mean((2, 3)))


@pytest.fixture(scope="module")
def oddnet():
    torch.manual_seed(1)
    return OddNet().eval()


# ----------------------------------------------------------------------------- exactness

def test_grid_convention():
    rows, cols = occlusion_grid(224, 100, 32, 8)
    assert rows[0] == 0 and rows[-1] == 192 and len(rows) == 25
    assert cols[-1] == 64 and len(cols) == 9
    rows, cols = occlusion_grid(50, 60, 16, 10)  # last corner not moved to the border
    assert list(rows) == [0, 10, 20, 30] and list(cols) == [0, 10, 20, 30, 40]
    assert occlusion_grid(10, 10, 10, 3)[0].tolist() == [0]


def test_lite0_equals_plain_loop(lite0):
    layer = lite0.entry.default_layer
    r = lite0.occlusion(size=48, stride=32, method="incremental", progress=False)
    assert r.method == "incremental" and r.layer == layer and r.shape == (6, 6)
    assert r.channel == lite0.strongest_channel(layer)
    assert r.target == int(lite0.probabilities().argmax())
    assert r.target_label == lite0.label(r.target)
    probs, feats = plain_loop(lite0.model, lite0.input_tensor, 48, 32, layer, r.channel,
                              torch.zeros(3))
    check_equal(r, probs, feats)
    assert r.base_prob == pytest.approx(float(lite0.probabilities()[r.target]), abs=1e-6)
    assert r.base_feature == pytest.approx(float(lite0.activation(layer)[r.channel].sum()),
                                           rel=1e-5)
    # every channel's total was recorded: another channel costs nothing and is exact too
    other = r.for_channel(5)
    assert other.channel == 5 and other.prob is r.prob
    _, feats5 = plain_loop(lite0.model, lite0.input_tensor, 48, 32, layer, 5, torch.zeros(3))
    check_equal(other, probs, feats5)
    assert other.base_feature == pytest.approx(float(lite0.activation(layer)[5].sum()), rel=1e-5)
    with pytest.raises(OutOfRangeError):
        r.for_channel(1280)


def test_lite0_middle_layer_other_target_and_fill(lite0):
    layer = lite0.entry.middle_layer
    fill = "mean"
    r = lite0.occlusion(size=40, stride=45, target=281, layer=layer, fill=fill, progress=False)
    x = lite0.input_tensor
    value = fill_tensor(fill, x).reshape(3)
    assert torch.allclose(value, x.mean((0, 2, 3)))
    probs, feats = plain_loop(lite0.model, x, 40, 45, layer, r.channel, value)
    assert r.target == 281 and r.fill == "mean"
    check_equal(r, probs, feats)


@pytest.mark.parametrize("size,stride", [(16, 52), (60, 41), (224, 1)])
def test_alexnet_equals_plain_loop(alexnet, size, stride):
    torch.manual_seed(2)
    x = torch.randn(1, 3, 224, 224)
    layer = alexnet.default_layer
    r = occlusion_maps(alexnet.module, x, size, stride, layer=layer, method="incremental")
    probs, feats = plain_loop(alexnet.module, x, size, stride, layer, r.channel, torch.zeros(3))
    check_equal(r, probs, feats)


@pytest.mark.parametrize("shape", [(72, 120), (130, 66)])
def test_non_square_user_module(oddnet, shape):
    pre = Preprocessing(size=shape, resize=None)
    session = Session(wrap_model(oddnet, preprocessing=pre, labels=[f"c{i}" for i in range(7)]))
    assert tuple(session.input_tensor.shape[2:]) == shape
    for size, stride, layer in [(9, 11, "conv4"), (20, 23, "conv2"), (5, 17, "act1")]:
        r = session.occlusion(size=size, stride=stride, layer=layer, fill=0.7,
                              method="incremental", progress=False)
        assert r.method == "incremental"
        assert r.shape == (len(range(0, shape[0] - size + 1, stride)),
                           len(range(0, shape[1] - size + 1, stride)))
        probs, feats = plain_loop(oddnet, session.input_tensor, size, stride, layer, r.channel,
                                  torch.full((3,), 0.7))
        check_equal(r, probs, feats)
        assert set(r.labels) >= {r.target, *np.unique(r.top_class).tolist()}
        assert r.labels[r.target] == f"c{r.target}"


@pytest.mark.parametrize("fuse", [True, False])
def test_incremental_engine_really_skips_work(lite0, oddnet, fuse):
    """The fast path is taken (convolutions windowed), and unknown ops fall back; with and
    without batch norm / ReLU6 folded into the convolutions."""
    mode = IncrementalMode(fuse=fuse)
    x = lite0.input_tensor
    corners = [(0, 50), (100, 10), (192, 192)]
    with torch.inference_mode(), mode:
        inp = mode.inputs(x, np.array([c[0] for c in corners]), np.array([c[1] for c in corners]),
                          32, torch.zeros(1, 3, 1, 1))
        out = mode.resolve(lite0.model(inp))
    assert mode.stats["conv2d"] == sum(isinstance(m, nn.Conv2d) for m in lite0.model.modules())
    assert not mode.unhandled and mode.stats["adaptive_avg_pool2d"] == 1  # no op runs densely
    # fused: every batch norm was folded into its convolution (in the folding's own cache)
    bns = sum(isinstance(m, nn.BatchNorm2d) for m in lite0.model.modules())
    assert len(mode.cache("fold")) == (bns if fuse else 0)
    xo = torch.cat([x] * 3)
    for n, (t, l) in enumerate(corners):
        xo[n, :, t:t + 32, l:l + 32] = 0
    with torch.no_grad():
        ref = lite0.model(xo)
    assert torch.allclose(out.softmax(1), ref.softmax(1), atol=1e-6)
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-5)

    mode = IncrementalMode(fuse=fuse)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode(), mode:
        inp = mode.inputs(x, np.array([3]), np.array([40]), 8, torch.zeros(1, 3, 1, 1))
        out = mode.resolve(oddnet(inp))
    # the reflect padding of conv4 is not handled: it is made dense, and all after it runs densely
    assert mode.unhandled == {"pad": 1}
    assert {"conv2d", "cat", "pad", "silu", "max_pool2d"} <= set(mode.stats)
    xo = x.clone()
    xo[..., 3:11, 40:48] = 0
    with torch.no_grad():
        assert torch.allclose(out, oddnet(xo), atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_channel_totals_of_windows_equal_the_dense_totals(dtype):
    """A patched map's per-channel totals (clean total - clean under the window + window, the
    clean part from a summed-area table) equal the totals of the occluded images computed
    densely, for windows at the borders and inside, and for a map whose window is the whole
    map; on a map far from zero, where ``total - under`` cancels most of its digits."""
    torch.manual_seed(5)
    conv = nn.Conv2d(3, 4, 3, padding=1).to(dtype)
    grow = nn.Sequential(*[nn.Conv2d(4, 4, 3, padding=1) for _ in range(8)]).to(dtype)
    with torch.no_grad():
        conv.bias += 300.0                        # totals ~ 1e5, windows far smaller
    x = torch.randn(1, 3, 21, 17, dtype=dtype)
    corners = [(0, 11), (7, 0), (15, 11), (4, 5)]
    tops, lefts = np.array([c[0] for c in corners]), np.array([c[1] for c in corners])
    mode = IncrementalMode()
    with torch.inference_mode(), mode:
        inp = mode.inputs(x, tops, lefts, 6, torch.zeros(1, 3, 1, 1, dtype=dtype))
        y = conv(inp)
        whole = grow(y)                           # each conv widens the window by 2
        st = mode.state(y)
        partial = st is not None and (st.h, st.w) < (21, 17)
        totals = mode.channel_totals(y)
        totals_whole = mode.channel_totals(whole)
        whole_window = mode.state(whole).h == 21 and mode.state(whole).w == 17
        dense, dense_whole = mode.resolve(y), mode.resolve(whole)
    assert partial and whole_window
    xo = torch.cat([x] * len(corners))
    for n, (t, left) in enumerate(corners):
        xo[n, :, t:t + 6, left:left + 6] = 0
    with torch.no_grad():
        ref = conv(xo).double().sum((2, 3))
        ref_whole = grow(conv(xo)).double().sum((2, 3))
        scale_whole = grow(conv(xo)).double().abs().sum((2, 3))  # the float sum's own scale
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    assert torch.allclose(dense, conv(xo).detach(), rtol=tol, atol=0)
    assert totals.dtype == dtype and totals_whole.dtype == dtype
    assert torch.allclose(totals.double(), ref, rtol=tol, atol=0)
    assert ((totals_whole.double() - ref_whole).abs() <= tol * scale_whole).all()
    assert not torch.allclose(totals.double(), conv(x).double().sum((2, 3)).expand(4, -1),
                              rtol=tol, atol=0)   # the occluders changed every image's totals
    assert dense_whole.shape == (4, 4, 21, 17)


@pytest.mark.parametrize("method", ["incremental", "plain"])
def test_batch_composition_does_not_change_results(alexnet, method):
    torch.manual_seed(3)
    x = torch.randn(1, 3, 224, 224)
    kw = dict(layer="features.7", method=method)
    ref = occlusion_maps(alexnet.module, x, 50, 43, batch_size=64, **kw)
    for bs in (1, 6):
        r = occlusion_maps(alexnet.module, x, 50, 43, batch_size=bs, **kw)
        np.testing.assert_allclose(r.prob, ref.prob, atol=1e-6, rtol=0)
        np.testing.assert_allclose(r.feature, ref.feature, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(r.top_class, ref.top_class)
    other = occlusion_maps(alexnet.module, x, 50, 43, batch_size=7,
                           **dict(kw, method="plain" if method == "incremental" else "incremental"))
    np.testing.assert_allclose(other.prob, ref.prob, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- errors, hygiene

@pytest.mark.parametrize("kwargs,error", [
    (dict(size=0), BadParameterError),
    (dict(size=-3), BadParameterError),
    (dict(size=225), BadParameterError),
    (dict(size=2.5), BadParameterError),
    (dict(size=True), BadParameterError),
    (dict(stride=0), BadParameterError),
    (dict(stride=-8), BadParameterError),
    (dict(target=1000), OutOfRangeError),
    (dict(target=-1), OutOfRangeError),
    (dict(target="no such class"), BadParameterError),
    (dict(layer="blocks.99"), UnknownLayerError),
    (dict(channel=100_000), OutOfRangeError),
    (dict(fill="purple"), BadParameterError),
    (dict(fill=float("nan")), BadParameterError),
    (dict(method="fast"), BadParameterError),
    (dict(batch_size=0), BadParameterError),
])
def test_bad_parameters_raise(lite0, kwargs, error):
    args = dict(size=32, stride=8, progress=False)
    args.update(kwargs)
    with pytest.raises(error) as info:
        lite0.occlusion(**args)
    assert isinstance(info.value, ZFError)
    key = next(iter(kwargs))
    if key in ("size", "stride", "target", "fill"):
        assert str(kwargs[key]) in str(info.value) or repr(kwargs[key]) in str(info.value)


def test_target_by_label(lite0):
    r = lite0.occlusion(size=112, stride=112, target="tabby", progress=False)
    assert r.target == lite0.labels.index("tabby") and r.target_label == "tabby"


def test_model_unmodified_even_after_cancel(alexnet):
    model = alexnet.module
    model.train()  # a user's model may be in training mode: it must stay so
    try:
        snap = snapshot(model)
        x = torch.randn(1, 3, 224, 224)
        seen = []
        r = occlusion_maps(model, x, 64, 40, layer="features.4", batch_size=8,
                           on_progress=lambda d, t: seen.append((d, t)))
        assert seen[-1] == (r.prob.size, r.prob.size) and len(seen) == -(-r.prob.size // 8)
        assert_unmodified(model, snap)
        calls = []
        with pytest.raises(Cancelled):
            occlusion_maps(model, x, 64, 40, layer="features.4", batch_size=4,
                           should_stop=lambda: calls.append(1) or len(calls) > 2)
        assert len(calls) == 3
        assert_unmodified(model, snap)
        with pytest.raises(UnknownLayerError):
            occlusion_maps(model, x, 64, 40, layer="features.99")
        assert_unmodified(model, snap)
    finally:
        model.eval()


def test_user_hooks_select_the_plain_path(oddnet):
    seen = []
    handle = oddnet.conv4.register_forward_hook(lambda m, i, o: seen.append(o.shape[0]))
    x = torch.randn(1, 3, 40, 40)
    try:
        r = occlusion_maps(oddnet, x, 10, 15, layer="conv4")
    finally:
        handle.remove()
    assert r.method == "plain" and r.shape == (3, 3)
    assert sum(seen) >= r.prob.size                  # the hook saw every occluded copy
    check_equal(r, *plain_loop(oddnet, x, 10, 15, "conv4", r.channel, torch.zeros(3)))


def test_result_helpers(lite0):
    r = lite0.occlusion(size=64, stride=40, progress=False)
    H, W = r.image_shape
    heat = r.heatmap("prob")
    assert heat.shape == (H, W)
    # pixel (0, 0) is covered only by the first occluder
    assert heat[0, 0] == pytest.approx(r.prob[0, 0])
    drop = r.heatmap("drop")
    assert np.nanmax(np.abs(drop + heat - r.base_prob)) < 1e-5
    left, right, bottom, top = r.extent()
    assert (left, top) == (r.cols[0] + 31.5 - 20, r.rows[0] + 31.5 - 20)
    assert right - left == r.shape[1] * r.stride and bottom - top == r.shape[0] * r.stride
    assert r.index_of(0, 0) == (0, 0) and r.index_of(H - 1, W - 1) == (r.shape[0] - 1, r.shape[1] - 1)
    assert r.index_of(r.rows[1] + 32, r.cols[2] + 32) == (1, 2)
    classes = r.classes()
    assert sum(c for _, _, c in classes) == r.prob.size
    assert all(label == r.labels[cid] for cid, label, _ in classes)
    with pytest.raises(BadParameterError):
        r.heatmap("nope")


def test_engine_failure_falls_back_to_plain_passes(monkeypatch, alexnet):
    """method="auto": should the engine ever trip over a model, the sweep finishes with plain
    forward passes (and says so); method="incremental" raises instead."""
    from zfwidgets.backend.occlusion.table import HANDLERS

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setitem(HANDLERS, torch.conv2d, broken)
    x = torch.randn(1, 3, 224, 224)
    with pytest.warns(RuntimeWarning, match="boom"):  # batches of 1: auto probes the engine
        r = occlusion_maps(alexnet.module, x, 112, 56, layer="features.11", batch_size=1)
    assert r.method == "plain" and "engine failed" in r.method_note
    ref = occlusion_maps(alexnet.module, x, 112, 56, layer="features.11", method="plain")
    np.testing.assert_allclose(r.prob, ref.prob, atol=1e-6, rtol=0)
    with pytest.raises(RuntimeError, match="boom"):
        occlusion_maps(alexnet.module, x, 112, 56, layer="features.11", method="incremental")
    assert torch._C._len_torch_function_stack() == 0


def test_sweep_steps_and_fill_colours(lite0):
    from zfwidgets.backend.occlusion import fill_rgb, occluded_prediction, occlusion_job

    job = occlusion_job(lite0, 112, 56, fill="black", batch_size=4)
    assert not job.done
    with pytest.raises(BadParameterError):
        job.result
    steps = [job.step(), job.step(), job.step()]
    assert [s.done for s in steps] == [4, 8, 9] and {s.total for s in steps} == {9}
    assert job.step() is None and job.done
    r = job.result
    probs, _ = plain_loop(lite0.model, lite0.input_tensor, 112, 56, r.layer, r.channel,
                          fill_tensor("black", lite0.input_tensor, lite0.preprocessing.mean,
                                      lite0.preprocessing.std).reshape(3))
    np.testing.assert_allclose(r.prob, probs[..., r.target].numpy(), atol=1e-5)
    assert fill_rgb(lite0, "black") == pytest.approx((0, 0, 0), abs=1e-6)
    assert fill_rgb(lite0, "white") == pytest.approx((1, 1, 1), abs=1e-6)
    assert fill_rgb(lite0, "gray") == pytest.approx((127 / 255,) * 3, abs=1e-6)
    gray, _ = plain_loop(lite0.model, lite0.input_tensor, 112, 56, r.layer, r.channel,
                         torch.zeros(3))
    top5 = occluded_prediction(lite0, 56, 56, 112)  # gray, the centre position of the grid
    assert len(top5) == 5 and top5[0][1] == lite0.label(top5[0][0])
    assert top5[0][0] == int(gray[1, 1].argmax())
    assert top5[0][2] == pytest.approx(float(gray[1, 1].max()), abs=1e-5)
    with pytest.raises(OutOfRangeError):
        occluded_prediction(lite0, 200, 0, 32)


# ----------------------------------------------------------------------------- the package's pieces

class ErfNet(nn.Module):
    """conv -> erf (no built-in handler) -> strided conv -> global pool -> linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        return self.head(self.conv2(torch.erf(self.conv1(x))).mean((2, 3)))


def test_an_op_registered_in_the_handler_table_is_used():
    """A handler written against the engine's public interface, registered with ``handles``,
    is called for its op (no dense fallback), and the result stays exact."""
    from zfwidgets.backend.occlusion.table import HANDLERS, Fallback, handles
    from zfwidgets.backend.ops import RECTIFIER_FUNCS

    assert RECTIFIER_FUNCS <= set(HANDLERS)  # every rectifier of the one table runs windowed
    torch.manual_seed(4)
    net, x = ErfNet().eval(), torch.randn(1, 3, 24, 24)
    corners = np.array([2, 13]), np.array([9, 0])

    def run():
        mode = IncrementalMode()
        with torch.inference_mode(), mode:
            out = mode.resolve(net(mode.inputs(x, *corners, 6, torch.zeros(1, 3, 1, 1))))
        return mode, out

    mode, before = run()
    # erf falls back: its output is dense, so conv2 runs as plain torch, unseen by the mode
    assert mode.unhandled == {"_VariableFunctionsClass.erf": 1} and "erf" not in mode.stats
    assert mode.stats["conv2d"] == 1
    calls = []

    def erf(mode, func, args, kwargs):
        st = mode.state(args[0])
        if st is None or len(args) != 1 or kwargs:
            raise Fallback
        calls.append(st.shape)
        return mode.emit(mode.clean(func, args, kwargs), func(st.patch), top=st.top,
                         left=st.left)

    assert torch.erf not in HANDLERS
    handles(torch.erf)(erf)
    try:
        with pytest.raises(ValueError, match="already handled"):
            handles(torch.erf)(lambda *a: None)
        mode, after = run()
    finally:
        del HANDLERS[torch.erf]
    assert calls and mode.stats["erf"] == 1 and mode.stats["conv2d"] == 2  # conv2 windowed too
    assert not mode.unhandled and mode.stats["mean"] == 1  # the global pool: from the windows
    xo = occlude(x, list(zip(*corners)), 6)
    with torch.no_grad():
        ref = net(xo)
    assert torch.allclose(after, ref, atol=1e-5) and torch.allclose(before, ref, atol=1e-5)


def test_occlusion_job_steps_and_equals_occlusion(lite0):
    from zfwidgets.backend.jobs import Step
    from zfwidgets.backend.occlusion import occlusion_job

    job = occlusion_job(lite0, 64, 40, target="tabby", fill="mean", batch_size=7,
                        method="incremental")
    steps = []
    while (step := job.step()) is not None:
        steps.append(step)
    assert all(isinstance(s, Step) for s in steps) and {s.total for s in steps} == {25}
    assert [s.done for s in steps] == [7, 14, 21, 25]
    r = job.result
    ref = lite0.occlusion(64, 40, target="tabby", fill="mean", batch_size=7,
                          method="incremental", progress=False)
    assert (r.target, r.layer, r.channel, r.fill, r.method) == \
        (ref.target, ref.layer, ref.channel, "mean", "incremental")
    np.testing.assert_allclose(r.prob, ref.prob, atol=1e-7, rtol=0)
    np.testing.assert_allclose(r.features, ref.features, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(r.top_class, ref.top_class)
    with pytest.raises(UnknownLayerError):  # validated when the job is made, before any step
        occlusion_job(lite0, 64, 40, layer="blocks.99")


def test_cancelling_a_job_midway_leaves_the_model_untouched(alexnet):
    from zfwidgets.backend.occlusion import occlusion_maps_job

    model = alexnet.module
    model.train()
    try:
        snap = snapshot(model)
        x = torch.randn(1, 3, 224, 224)
        job = occlusion_maps_job(model, x, 64, 40, layer="features.4", batch_size=4)
        assert job.step().done == 4
        job.close()  # dropped between two steps, as a superseded widget sweep is
        assert job.step() is None and not job.done
        assert_unmodified(model, snap)
        job = occlusion_maps_job(model, x, 64, 40, layer="features.4", batch_size=4)
        stops = iter([False, False, True])
        with pytest.raises(Cancelled, match="after 8 of 25"):
            job.run(progress=False, should_stop=lambda: next(stops))
        with pytest.raises(BadParameterError, match="cancelled"):
            job.result
        assert_unmodified(model, snap)
    finally:
        model.eval()


def test_the_engine_batch_grows_within_a_memory_budget():
    """Larger engine batches amortize its per-call work; a model with a large map gets fewer
    positions per batch (a dense fallback materializes that map for every position)."""
    from zfwidgets.backend.occlusion import sweep

    assert sweep._engine_batch(32 * 112 * 112 * 4) == 64          # Lite0's stem at 224 px
    assert sweep._engine_batch(64 * 224 * 224 * 4) == 20          # VGG16's first maps
    assert sweep._engine_batch(2 ** 40) == 16 and sweep._engine_batch(0) == 16
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(8, 5)).eval()
    x = torch.randn(1, 3, 40, 40)
    seen = []
    hook = net[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    try:
        inc = occlusion_maps(net, x, 4, 4, method="incremental", progress=False)  # 100 positions
        sizes, seen[:] = list(seen), []
        small = occlusion_maps(net, x, 4, 4, method="incremental", batch_size=30,
                               progress=False)
    finally:
        hook.remove()
    assert sizes == [1, 64, 36] and seen == [1, 30, 30, 30, 10]
    np.testing.assert_allclose(inc.prob, small.prob, atol=1e-6)
