"""The exercises of notebooks 06 and 07: gradient saliency (``check_saliency``) and the aliased
energy of strided filters (``check_aliased_energy``). Each checker's reference equals a slow,
obvious re-implementation, accepts a right answer and rejects the usual wrong ones with the
hint that names the mistake."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import zfwidgets as zf
from zfwidgets import exercises as ex
from zfwidgets.backend.experiments.diagnosis import aliased_energy
from zfwidgets.errors import ExerciseFailed
from zfwidgets.exercises.saliency import reference_saliency


def verdict(check, fn, **kw):
    return check(fn, show=False, **kw)


def assert_rejected(check, fn, hint_words=(), **kw):
    v = verdict(check, fn, **kw)
    assert v.status == "wrong" and not v.passed, v.text()
    for word in hint_words:
        assert word in v.hint, v.text()
    with pytest.raises(ExerciseFailed):
        check(fn, show=False, strict=True, **kw)
    return v


# ============================================================================ saliency

def saliency(model, x, target, *, reduce="max", absolute=True, score="logit", times_input=False):
    x = x.detach().clone().requires_grad_(True)
    out = model(x)
    value = torch.softmax(out, 1)[0, target] if score == "prob" else out[0, target]
    (g,) = torch.autograd.grad(value, x)
    g = g * x if times_input else g
    g = g.abs() if absolute else g
    return {"max": g[0].amax(0), "mean": g[0].mean(0), "sum": g[0].sum(0)}[reduce]


def test_saliency_reference_is_the_per_pixel_largest_gradient_magnitude():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(4 * 5 * 6, 5)).eval()
    x = torch.randn(1, 3, 10, 12)
    # the slow way: one gradient, then every pixel's three channels compared by hand
    xx = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(xx)[0, 2], xx)
    slow = torch.zeros(10, 12, dtype=torch.float64)
    for i in range(10):
        for j in range(12):
            slow[i, j] = max(abs(float(g[0, c, i, j])) for c in range(3))
    ref = reference_saliency(model, x, 2)
    assert ref.shape == (10, 12)
    assert torch.allclose(ref, slow, rtol=1e-6, atol=1e-9)


def test_saliency_checker_accepts_the_gradient_magnitude():
    assert verdict(ex.check_saliency, saliency).passed
    assert verdict(ex.check_saliency, lambda m, x, t: saliency(m, x, t)[None]).passed
    assert verdict(ex.check_saliency, saliency, seed=5).passed


@pytest.mark.parametrize("kw, words", [
    ({"absolute": False}, ["MAGNITUDE"]),
    ({"reduce": "mean"}, ["LARGEST", "not their mean"]),
    ({"reduce": "sum"}, ["not their sum"]),
    ({"score": "prob"}, ["probability"]),
    ({"times_input": True}, ["gradient x input"]),
])
def test_saliency_checker_rejects_the_usual_mistakes(kw, words):
    assert_rejected(ex.check_saliency, lambda m, x, t: saliency(m, x, t, **kw), words)


def test_saliency_checker_names_per_channel_maps_and_a_leftover_hook():
    def per_channel(model, x, target):
        x = x.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model(x)[0, target], x)
        return g[0].abs()

    v = assert_rejected(ex.check_saliency, per_channel)
    assert "one map per colour channel" in v.detail

    def leaky(model, x, target):
        model[0].register_forward_hook(lambda m, i, o: None)
        return saliency(model, x, target)

    v = verdict(ex.check_saliency, leaky)
    assert v.passed and any("handle.remove()" in n for n in v.notes)


def test_saliency_solution_equals_session_saliency_on_the_offline_model():
    session = zf.Session("efficientnet_lite0", zf.load_sample("coffee"))
    ours = session.saliency()
    mine = saliency(session.model.eval(), session.input_tensor, ours.target[0])
    assert np.allclose(mine.detach().numpy(), ours.map, rtol=1e-4,
                       atol=1e-6 * float(np.abs(ours.map).max()))


# ============================================================================ aliased energy

def slow_aliased(weight, stride, size):
    """Each filter's DFT written out as a double sum over its taps, bin by bin."""
    sy, sx = (stride, stride) if isinstance(stride, int) else stride
    w = weight.double().numpy()
    F_, C, kh, kw = w.shape
    freqs = [k / size if k < size / 2 else k / size - 1 for k in range(size)]
    out = np.zeros(F_)
    for f in range(F_):
        total = hidden = 0.0
        for a, fy in enumerate(freqs):
            for b, fx in enumerate(freqs):
                energy = 0.0
                for c in range(C):
                    s = sum(w[f, c, y, x] * complex(math.cos(-2 * math.pi * (fy * y + fx * x)),
                                                    math.sin(-2 * math.pi * (fy * y + fx * x)))
                            for y in range(kh) for x in range(kw))
                    energy += abs(s) ** 2
                total += energy
                if abs(fy) > 0.5 / sy + 1e-12 or abs(fx) > 0.5 / sx + 1e-12:
                    hidden += energy
        out[f] = hidden / total if total > 0 else 0.0
    return out


@pytest.mark.parametrize("shape, stride, size", [((3, 2, 5, 5), 2, 16), ((2, 3, 3, 4), (1, 2), 12),
                                                 ((2, 1, 7, 7), 4, 16)])
def test_aliased_energy_equals_the_dft_written_out(shape, stride, size):
    torch.manual_seed(1)
    w = torch.randn(*shape)
    assert np.allclose(aliased_energy(w, stride, size), slow_aliased(w, stride, size),
                       rtol=1e-9, atol=1e-12)


def test_aliased_energy_known_answers_and_diagnose_filters_agree():
    flat = torch.ones(1, 3, 5, 5)
    assert 0.1 < aliased_energy(flat, 2)[0] < 0.2     # a box: mostly low, its sinc side lobes
    stripes = torch.tensor([(-1.0) ** i for i in range(8)]).expand(1, 1, 8, 8)
    assert aliased_energy(stripes, 2, 8)[0] == pytest.approx(1.0)   # 0.5 c/px: all above 0.25
    assert aliased_energy(stripes, 1, 8)[0] == 0.0
    assert aliased_energy(torch.zeros(1, 1, 3, 3), 2)[0] == 0.0
    conv = nn.Conv2d(3, 6, 7, stride=2)
    assert np.allclose(zf.diagnose_filters(conv).aliased, aliased_energy(conv.weight, 2))


def aliased(weight, stride, size, *, op="or", limit="div", power=2, pad=True, per_channel=False):
    sy, sx = (stride, stride) if isinstance(stride, int) else stride
    spec = torch.fft.fft2(weight.double(), s=(size, size) if pad else None)
    n = spec.shape[-1]
    f = np.abs(np.fft.fftfreq(n))
    ly, lx = (0.5 / sy, 0.5 / sx) if limit == "div" else (0.5 * sy, 0.5 * sx)
    mask = (f[:, None] > ly) | (f[None, :] > lx) if op == "or" else \
        (f[:, None] > ly) & (f[None, :] > lx)
    e = spec.abs().numpy() ** power
    if per_channel:
        return np.mean([(e[:, c][:, mask].sum(1) / e[:, c].reshape(len(e), -1).sum(1))
                        for c in range(e.shape[1])], 0)
    e = e.sum(1)
    return e[:, mask].sum(1) / e.reshape(len(e), -1).sum(1)


def test_aliased_checker_accepts_the_fft_answer():
    assert verdict(ex.check_aliased_energy, aliased).passed
    assert verdict(ex.check_aliased_energy, lambda *a: list(aliased(*a))).passed
    assert verdict(ex.check_aliased_energy, aliased, seed=3).passed


@pytest.mark.parametrize("kw, words", [
    ({"limit": "mul"}, ["0.5 / stride"]),
    ({"op": "and"}, ["EITHER axis"]),
    ({"power": 1}, ["SQUARED"]),
    ({"pad": False}, ["zero-pad"]),
    ({"per_channel": True}, ["over the input channels first"]),
])
def test_aliased_checker_rejects_the_usual_mistakes(kw, words):
    assert_rejected(ex.check_aliased_energy, lambda *a: aliased(*a, **kw), words)


def test_aliased_checker_names_a_shape_mistake_and_swapped_strides():
    v = assert_rejected(ex.check_aliased_energy, lambda w, s, n: aliased(w, s, n).mean())
    assert "one fraction per filter" in v.detail

    def swapped(w, stride, size):
        return aliased(w, stride[::-1] if not isinstance(stride, int) else stride, size)

    assert_rejected(ex.check_aliased_energy, swapped, ["(rows, columns)"])


# ============================================================================ clipping (08)

def clip(weight, radius, *, rms="mean", every=False, axis=0, cut=False):
    w = weight.clone().double()
    out = w.clone()
    for f in range(w.shape[axis]):
        filt = w.select(axis, f)
        value = {"mean": filt.pow(2).mean().sqrt(), "norm": filt.norm(),
                 "std": filt.std()}[rms]
        if every or value > radius:
            out.select(axis, f).copy_(filt.clamp(-radius, radius) if cut else
                                      filt * radius / value)
    return out


def test_clipping_checker_accepts_the_loop_and_the_in_place_library_call():
    assert verdict(ex.check_feature_scale_clipping, clip).passed

    def in_place(weight, radius):
        conv = nn.Conv2d(weight.shape[1], weight.shape[0], tuple(weight.shape[2:]))
        with torch.no_grad():
            conv.weight.copy_(weight)
            zf.models.feature_scale_clipping(conv, radius)
        return conv.weight.detach()

    assert verdict(ex.check_feature_scale_clipping, in_place).passed


@pytest.mark.parametrize("kw, words", [
    ({"rms": "norm"}, ["MEAN of the squares"]),
    ({"rms": "std"}, ["standard deviation"]),
    ({"every": True}, ["EXCEEDS"]),
    ({"cut": True}, ["DOWN to the radius"]),
    ({"axis": 1}, ["OUTPUT channel"]),
])
def test_clipping_checker_rejects_the_usual_mistakes(kw, words):
    assert_rejected(ex.check_feature_scale_clipping, lambda w, r: clip(w, r, **kw), words)


def test_clipped_filters_have_the_radius_as_rms():
    w = torch.randn(6, 3, 5, 5) * torch.linspace(0.01, 1, 6).view(-1, 1, 1, 1)
    ref = ex.clipping.reference_clipping(w, 0.1)
    rms = ref.flatten(1).pow(2).mean(1).sqrt()
    before = w.double().flatten(1).pow(2).mean(1).sqrt()
    assert torch.allclose(rms, torch.minimum(before, torch.tensor(0.1, dtype=torch.float64)))


# ============================================================================ consistency (09)

def delta(changes, *, signs=True, pairs="upper", normalise=True, mean=True):
    c = changes.double()
    s = torch.sign(c) if signs == True else (c > 0) if signs == "positive" else c  # noqa: E712
    n, d = c.shape
    which = [(i, j) for i in range(n) for j in range(n)
             if (pairs == "upper" and i < j) or pairs == "all"]
    parts = [float((s[i] != s[j]).sum()) / (d if normalise else 1) for i, j in which]
    return sum(parts) / len(parts) if mean else sum(parts)


def test_consistency_reference_is_the_papers_score():
    c = torch.tensor([[1.0, -2.0, 0.0, 3.0], [2.0, 1.0, 0.0, 3.0], [-1.0, -1.0, 1.0, 0.0]])
    # pairs (0, 1): 1 of 4 signs differ; (0, 2): 3 of 4; (1, 2): 4 of 4
    assert ex.consistency.reference_consistency(c) == pytest.approx((1 / 4 + 3 / 4 + 4 / 4) / 3)


def test_consistency_checker_accepts_the_pair_loop():
    assert verdict(ex.check_consistency, delta).passed
    assert verdict(ex.check_consistency, lambda c: torch.tensor(delta(c))).passed


@pytest.mark.parametrize("kw, words", [
    ({"signs": "positive"}, ["SIGNS"]),
    ({"signs": False}, ["not the values"]),
    ({"pairs": "all"}, ["i < j"]),
    ({"normalise": False}, ["by D"]),
    ({"mean": False}, ["MEAN over the pairs"]),
])
def test_consistency_checker_rejects_the_usual_mistakes(kw, words):
    assert_rejected(ex.check_consistency, lambda c: delta(c, **kw), words)


# ============================================================================ knock-out (10)

def knockout(model, layer, channels, x, *, pre=False, invert=False, weights=False, leave=False):
    def edit(t):
        t = t.clone()
        chans = [c for c in range(t.shape[1]) if c not in channels] if invert else channels
        t[:, chans] = 0
        return t

    if weights and isinstance(layer, nn.Conv2d):
        with torch.no_grad():
            layer.weight[channels] = 0
            return model(x)
    handle = (layer.register_forward_pre_hook(lambda m, i: (edit(i[0]),)) if pre else
              layer.register_forward_hook(lambda m, i, o: edit(o)))
    try:
        with torch.no_grad():
            return model(x)
    finally:
        if not leave:
            handle.remove()


def test_knockout_reference_equals_zeroing_by_hand():
    model = ex.knockout._net(0)
    x = torch.randn(1, 3, 32, 32)
    # by hand: run the layers one by one and zero the maps between them
    h = x
    for i, m in enumerate(model):
        h = m(h)
        if i == 3:
            h = h.clone()
            h[:, [2, 3]] = 0
    ref = ex.knockout.reference_knockout(model, model[3], [2, 3], x)
    assert torch.allclose(ref, h.double(), atol=1e-6)
    assert not torch.allclose(ref, model(x).double(), atol=1e-4)


def test_knockout_checker_accepts_the_hook_and_names_a_leftover_one():
    assert verdict(ex.check_knockout, knockout).passed
    v = verdict(ex.check_knockout, lambda *a: knockout(*a, leave=True))
    assert any("handle.remove()" in n for n in v.notes)


@pytest.mark.parametrize("kw, words", [
    ({"pre": True}, ["OUTPUT"]),
    ({"invert": True}, ["not the other way round"]),
    ({"weights": True}, ["leaves its bias"]),
])
def test_knockout_checker_rejects_the_usual_mistakes(kw, words):
    assert_rejected(ex.check_knockout, lambda *a: knockout(*a, **kw), words)


def test_knockout_rejects_probabilities():
    assert_rejected(ex.check_knockout, lambda *a: torch.softmax(knockout(*a), 1), ["logits"])
