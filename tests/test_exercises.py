"""zfwidgets.exercises: each checker accepts a right answer, rejects the usual wrong ones (with
the hint that names the mistake), calls a stub "not yet" and never raises without ``strict``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zfwidgets import exercises as ex
from zfwidgets.errors import ExerciseFailed, ZFError
from zfwidgets.exercises.deconvnet import reference_unpooling
from zfwidgets.exercises.receptive_field import ALEXNET, reference_receptive_field


def verdict(check, fn, **kw):
    return check(fn, show=False, **kw)


def assert_rejected(check, fn, hint_words=(), **kw):
    v = verdict(check, fn, **kw)
    assert v.status == "wrong" and not v.passed, v.text()
    assert v.case and v.detail, v.text()
    for word in hint_words:
        assert word in v.hint, v.text()
    with pytest.raises(ExerciseFailed):
        check(fn, show=False, strict=True, **kw)
    return v


# ============================================================================ unpooling

def unpool(signal, switches, input_size):
    out = torch.zeros(input_size[0] * input_size[1], dtype=signal.dtype)
    for value, where in zip(signal.flatten(), switches.flatten()):
        out[where] += value
    return out.view(*input_size)


def unpool_overwrite(signal, switches, input_size):
    out = torch.zeros(input_size[0] * input_size[1], dtype=signal.dtype)
    out[switches.flatten()] = signal.flatten()
    return out.view(*input_size)


def unpool_everywhere(signal, switches, input_size):
    return F.interpolate(signal[None, None], size=tuple(input_size), mode="nearest")[0, 0]


def unpool_first(signal, switches, input_size):
    s = input_size[0] // signal.shape[0]
    out = torch.zeros(*input_size, dtype=signal.dtype)
    for i in range(signal.shape[0]):
        for j in range(signal.shape[1]):
            out[i * s, j * s] += signal[i, j]
    return out


def unpool_swapped(signal, switches, input_size):
    out = torch.zeros(*input_size, dtype=signal.dtype)
    for value, where in zip(signal.flatten(), switches.flatten().tolist()):
        r, c = divmod(where, input_size[0])
        if r < input_size[0] and c < input_size[1]:
            out[r, c] += value
    return out


def test_unpooling_accepts_the_loop_and_numpy_answers():
    assert verdict(ex.check_unpooling, unpool).passed
    v = verdict(ex.check_unpooling, lambda s, w, size: unpool(s, w, size).numpy()[None, None])
    assert v.passed, v.text()                    # an array, and [1, 1, H, W], are fine
    ex.check_unpooling(unpool, show=False, strict=True, seed=3)


@pytest.mark.parametrize("fn, words", [
    (unpool_overwrite, ["add them"]),
    (unpool_everywhere, ["not to every position"]),
    (unpool_first, ["top-left"]),
    (unpool_swapped, ["divide by the width"]),
])
def test_unpooling_rejects_the_usual_mistakes(fn, words):
    assert_rejected(ex.check_unpooling, fn, words)


def test_unpooling_reference_is_max_unpool_where_windows_do_not_overlap():
    x = torch.randn(1, 1, 8, 10)
    pooled, sw = F.max_pool2d(x, 2, return_indices=True)
    signal = torch.randn_like(pooled)
    ref = reference_unpooling(signal[0, 0], sw[0, 0], (8, 10))
    assert torch.equal(ref, F.max_unpool2d(signal, sw, 2, output_size=(8, 10))[0, 0])


def test_overwriting_differs_exactly_where_overlapping_windows_share_a_maximum():
    v = assert_rejected(ex.check_unpooling, unpool_overwrite)
    assert "overlap" in v.case


# ============================================================================ rules

@pytest.mark.parametrize("rule, right", [
    ("guided", lambda g, x: g.clamp(min=0) * (x > 0)),
    ("deconvnet", lambda g, x: g.clamp(min=0)),
    ("gradient", lambda g, x: g * (x > 0)),
])
def test_rule_checker_accepts_each_rule(rule, right):
    assert verdict(ex.check_guided_rule, right, rule=rule).passed


@pytest.mark.parametrize("fn, words", [
    (lambda g, x: g.clamp(min=0), ["deconvnet's rule"]),              # no forward gate
    (lambda g, x: g * (x > 0), ["plain gradient"]),                    # no rectification
    (lambda g, x: g.clamp(min=0) * (x >= 0), ["x == 0"]),
    (lambda g, x: g.clamp(min=0) * x.clamp(min=0), ["sign"]),
    (lambda g, x: x.clamp(min=0), ["backward signal"]),
])
def test_guided_rule_rejects_the_usual_mistakes(fn, words):
    assert_rejected(ex.check_guided_rule, fn, words)


# ============================================================================ receptive field

def rf(layers):
    size, stride, start = 1, 1, 0
    for k, s, p, d in layers:
        size += d * (k - 1) * stride
        start -= p * stride
        stride *= s
    return size, stride, start


def rf_variant(*, dilation=True, pad=0, after=False, summed=False):
    def fn(layers):
        size, stride, start = 1, 1, 0
        for k, s, p, d in layers:
            if after:
                stride *= s
            size += (d if dilation else 1) * (k - 1) * stride
            start -= (p + pad) * stride
            if not after:
                stride = stride + s if summed else stride * s
        return size, stride, start
    return fn


def test_receptive_field_accepts_the_recursion_and_a_geometry_like_answer():
    assert verdict(ex.check_receptive_field, rf).passed

    class Box:
        def __init__(self, size, stride, start):
            self.size, self.stride, self.start = (size, size), (stride, stride), (start, start)

    assert verdict(ex.check_receptive_field, lambda layers: Box(*rf(layers))).passed


@pytest.mark.parametrize("fn, words", [
    (rf_variant(pad=-1), ["p - 1"]),                        # off by one in the padding
    (rf_variant(pad=1), ["p + 1"]),
    (rf_variant(dilation=False), ["dilation"]),
    (rf_variant(after=True), ["*before*"]),                # stride product taken too early
    (rf_variant(summed=True), ["product"]),
])
def test_receptive_field_rejects_the_usual_mistakes(fn, words):
    assert_rejected(ex.check_receptive_field, fn, words)


def test_layer_chain_gives_the_tracked_receptive_field_of_registry_models():
    import zfwidgets as zf
    from zfwidgets.backend.defaults import is_rectifier_layer

    for session in (zf.Session("efficientnet_lite0"), zf.Session("alexnet", weights=None)):
        rows = [i for i in session.layer_table() if is_rectifier_layer(i) and i.geometry]
        assert len(rows) >= 5
        for info in rows:
            g = info.geometry
            assert rf(ex.layer_chain(session, info.name)) == (g.size[0], g.stride[0],
                                                              g.start[0]), info.name
        assert not any(m._forward_hooks for m in session.model.modules())


def test_receptive_field_reference_matches_alexnet_and_the_gradient_support():
    # AlexNet's pool5 units: 195 px fields every 32 px (a known figure); the start by hand:
    # padding 2 at stride 1, 2 at stride 8, then 1 at stride 16 three times: -2 - 16 - 48
    assert reference_receptive_field(ALEXNET) == (195, 32, -66)
    # and the support of an input gradient of a chain's unit agrees with the reference
    chain = [(5, 2, 2, 1), (3, 2, 2, 2), (3, 1, 0, 1)]
    size, stride, start = reference_receptive_field(chain)
    convs = torch.nn.Sequential(*[torch.nn.Conv2d(1, 1, k, s, p, d) for k, s, p, d in chain])
    torch.nn.init.constant_(convs[0].weight, 1.0)
    for c in convs:
        torch.nn.init.constant_(c.weight, 1.0)
    x = torch.ones(1, 1, 64, 64, requires_grad=True)
    out = convs(x)
    y = 3
    (g,) = torch.autograd.grad(out[0, 0, y, y], x)
    rows = torch.nonzero(g[0, 0].abs().sum(1)).flatten()
    assert int(rows.min()) == max(start + y * stride, 0)
    assert int(rows.max()) == start + y * stride + size - 1


# ============================================================================ occlusion loop

def occlusion_loop(model, x, size, stride, fill, target, *, order="rows", fill_value=None,
                   last=1):
    height, width = x.shape[-2:]
    tops = range(0, height - size + last, stride)
    lefts = range(0, width - size + last, stride)
    out = torch.zeros(len(tops), len(lefts))
    with torch.no_grad():
        for i, top in enumerate(tops):
            for j, left in enumerate(lefts):
                y = x.clone()
                if order == "rows":
                    y[..., top:top + size, left:left + size] = fill if fill_value is None \
                        else fill_value
                else:                                # corners taken as (left, top)
                    y[..., left:left + size, top:top + size] = fill
                out[i, j] = torch.softmax(model(y), 1)[0, target]
    return out


def test_occlusion_checker_accepts_the_loop():
    assert verdict(ex.check_occlusion_loop, occlusion_loop).passed


@pytest.mark.parametrize("kw, words", [
    ({"order": "columns"}, ["vertical position"]),         # wrong corner order
    ({"fill_value": 0.0}, ["fill"]),                        # wrong fill
    ({"last": 0}, ["H - size + 1"]),                        # off-by-one last corner
])
def test_occlusion_checker_rejects_the_usual_mistakes(kw, words):
    assert_rejected(ex.check_occlusion_loop, lambda *a: occlusion_loop(*a, **kw), words)


def test_occlusion_checker_rejects_logits_and_moved_last_corners():
    def logits(model, x, size, stride, fill, target):
        return torch.log(occlusion_loop(model, x, size, stride, fill, target))   # not softmax

    assert_rejected(ex.check_occlusion_loop, logits)

    def clamped(model, x, size, stride, fill, target):
        height, width = x.shape[-2:]
        tops = np.unique(np.minimum(np.arange(0, height, stride), height - size))
        lefts = np.unique(np.minimum(np.arange(0, width, stride), width - size))
        out = torch.zeros(len(tops), len(lefts))
        with torch.no_grad():
            for i, top in enumerate(tops):
                for j, left in enumerate(lefts):
                    y = x.clone()
                    y[..., top:top + size, left:left + size] = fill
                    out[i, j] = torch.softmax(model(y), 1)[0, target]
        return out

    assert_rejected(ex.check_occlusion_loop, clamped, ["do not move the last one"])


# ============================================================================ Grad-CAM

def gradcam(model, x, layer, target, *, relu=True, average=True, other=None, upsample=False):
    kept = {}
    handle = (other or layer).register_forward_hook(lambda m, i, o: kept.setdefault("A", o))
    try:
        logits = model(x)
    finally:
        handle.remove()
    A = kept["A"]
    (g,) = torch.autograd.grad(logits[0, target], A)
    cam = (g.mean(dim=(2, 3), keepdim=True) * A).sum(1)[0] if average else (g * A).sum(1)[0]
    cam = cam.clamp(min=0) if relu else cam
    if upsample:
        cam = F.interpolate(cam[None, None], size=x.shape[-2:], mode="bilinear",
                            align_corners=False)[0, 0]
    return cam


def test_gradcam_checker_accepts_low_and_upsampled_maps():
    assert verdict(ex.check_gradcam, gradcam).passed
    assert verdict(ex.check_gradcam, lambda *a: gradcam(*a, upsample=True)).passed


@pytest.mark.parametrize("kw, words", [
    ({"relu": False}, ["ReLU"]),
    ({"average": False}, ["average"]),
    ({"other": "first"}, ["hook the `layer`"]),
])
def test_gradcam_checker_rejects_the_usual_mistakes(kw, words):
    def fn(model, x, layer, target):
        extra = dict(kw)
        if extra.get("other") == "first":
            extra["other"] = model[1]                       # always the first ReLU
        return gradcam(model, x, layer, target, **extra)

    assert_rejected(ex.check_gradcam, fn, words)


def test_gradcam_checker_names_a_normalised_map_and_a_leftover_hook():
    def normalised(model, x, layer, target):
        cam = gradcam(model, x, layer, target)
        return cam / cam.max()

    assert_rejected(ex.check_gradcam, normalised, ["not one scaled"])

    def leaky(model, x, layer, target):
        kept = {}
        layer.register_forward_hook(lambda m, i, o: kept.setdefault("A", o))
        logits = model(x)
        (g,) = torch.autograd.grad(logits[0, target], kept["A"])
        return (g.mean(dim=(2, 3), keepdim=True) * kept["A"]).sum(1)[0].clamp(min=0)

    v = verdict(ex.check_gradcam, leaky)
    assert v.passed and any("handle.remove()" in n for n in v.notes)


# ============================================================================ top-k, distance

def top_k(maps, k, *, per_image=True, descending=True, stable=True):
    n, h, w = maps.shape
    flat = maps.reshape(n, -1)
    if per_image:
        best, where = flat.max(1)
        hits = [(float(best[i]), i, int(where[i]) // w, int(where[i]) % w) for i in range(n)]
    else:
        hits = [(float(v), i, p // w, p % w) for i in range(n) for p, v in
                enumerate(flat[i].tolist())]
    order = (lambda t: (-t[0], t[1])) if stable else (lambda t: (-t[0], -t[1]))
    hits.sort(key=order if descending else (lambda t: t[0]))
    return hits[:k]


def test_top_k_checker_accepts_the_sort_and_matches_mine():
    assert verdict(ex.check_top_k, top_k).passed
    # the reference is zf.mine's selection: one hit per image, strongest first
    maps = torch.randn(15, 4, 6)
    ref = ex.topk.reference_top_k(maps, 9)
    assert [h[1] for h in ref] == [h[1] for h in top_k(maps, 9)]
    assert len({h[1] for h in ref}) == 9


@pytest.mark.parametrize("kw, words", [
    ({"per_image": False}, ["one hit per image"]),
    ({"descending": False}, ["descending"]),
    ({"stable": False}, ["lower image index"]),
])
def test_top_k_checker_rejects_the_usual_mistakes(kw, words):
    assert_rejected(ex.check_top_k, lambda m, k: top_k(m, k, **kw), words)


def test_top_k_checker_names_swapped_coordinates():
    assert_rejected(ex.check_top_k, lambda m, k: [(v, i, x, y) for v, i, y, x in top_k(m, k)],
                    ["row y before the column x"])


def test_feature_distance_checker():
    assert verdict(ex.check_feature_distance,
                   lambda r, t: float((t - r).norm() / r.norm())).passed
    for fn, words in [(lambda r, t: float((t - r).norm() / t.norm()), ["ORIGINAL"]),
                      (lambda r, t: float((t - r).norm()), ["relative"]),
                      (lambda r, t: float(((t - r) ** 2).sum() / r.norm()), ["square root"]),
                      (lambda r, t: float(abs(t.norm() - r.norm()) / r.norm()),
                       ["difference of their lengths"])]:
        assert_rejected(ex.check_feature_distance, fn, words)


# ============================================================================ every checker

CHECKERS = [ex.check_unpooling, ex.check_guided_rule, ex.check_receptive_field,
            ex.check_occlusion_loop, ex.check_gradcam, ex.check_top_k,
            ex.check_feature_distance, ex.check_saliency, ex.check_aliased_energy,
            ex.check_feature_scale_clipping, ex.check_consistency, ex.check_knockout]


@pytest.mark.parametrize("check", CHECKERS)
def test_a_stub_is_not_yet_and_never_raises(check, capsys):
    def stub(*args):
        ...

    def unwritten(*args):
        raise NotImplementedError

    for fn in (stub, unwritten):
        v = check(fn)
        assert v.status == "not yet" and not v.passed
        assert "NOT YET" in capsys.readouterr().out           # printed for the notebook
    with pytest.raises(ExerciseFailed) as info:
        check(stub, show=False, strict=True)
    assert isinstance(info.value, ZFError) and "stub" in str(info.value)


@pytest.mark.parametrize("check", CHECKERS)
def test_a_crashing_answer_is_a_verdict_naming_the_exception(check):
    def broken(*args):
        return 1 / 0

    v = verdict(check, broken)
    assert v.status == "error" and "ZeroDivisionError" in v.detail and "1 / 0" in v.detail
    assert verdict(check, 42).status == "error"                 # not a function at all


def test_cases_are_the_same_for_a_seed_and_other_seeds_pass_too():
    first = verdict(ex.check_unpooling, unpool_overwrite)
    assert verdict(ex.check_unpooling, unpool_overwrite).detail == first.detail
    for check, right in [(ex.check_unpooling, unpool), (ex.check_receptive_field, rf),
                         (ex.check_occlusion_loop, occlusion_loop), (ex.check_gradcam, gradcam),
                         (ex.check_guided_rule, lambda g, x: g.clamp(min=0) * (x > 0)),
                         (ex.check_top_k, top_k),
                         (ex.check_feature_distance,
                          lambda r, t: float((t - r).norm() / r.norm()))]:
        assert verdict(check, right, seed=7).passed, check.__name__


def test_a_function_that_changes_its_inputs_cannot_spoil_the_diagnosis():
    def overwrite_and_vandalize(signal, switches, input_size):
        out = unpool_overwrite(signal, switches, input_size)
        signal.zero_()                                   # in place, on the checker's copy
        switches.zero_()
        return out

    v = verdict(ex.check_unpooling, overwrite_and_vandalize)
    assert v.status == "wrong" and "add them" in v.hint
