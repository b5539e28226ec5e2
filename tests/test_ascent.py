"""Gradient ascent with blur: one step against a slow explicit version, the objective rises,
blur removes high frequencies, the model is left alone, bad parameters raise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nets import tiny_cnn

import zfwidgets as zf
from zfwidgets.backend.experiments.ascent import (AscentState, ascent, ascent_job, gaussian_blur,
                                                 gaussian_kernel)
from zfwidgets.errors import BadParameterError, Cancelled, OutOfRangeError, UnknownLayerError


@pytest.fixture(scope="module")
def session():
    return zf.Session(tiny_cnn().train(), zf.load_sample("coffee"),
                      labels=[f"thing {i}" for i in range(10)])


# ----------------------------------------------------------------------------- blur
def slow_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """2-d Gaussian by explicit sums over the full 2-d kernel, reflect borders (no edge repeat)."""
    r = int(np.ceil(3 * sigma))
    t = np.arange(-r, r + 1)
    k1 = np.exp(-0.5 * (t / sigma) ** 2)
    k2 = np.outer(k1, k1)
    k2 /= k2.sum()
    h, w = x.shape
    out = np.zeros_like(x)

    def reflect(i, n):
        while i < 0 or i >= n:
            i = -i if i < 0 else 2 * (n - 1) - i
        return i

    for i in range(h):
        for j in range(w):
            out[i, j] = sum(k2[a + r, b + r] * x[reflect(i + a, h), reflect(j + b, w)]
                            for a in t for b in t)
    return out


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_gaussian_blur_equals_the_explicit_2d_sum(sigma):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 9, 11))
    got = gaussian_blur(torch.from_numpy(x), sigma).numpy()
    for n in range(2):
        for c in range(3):
            np.testing.assert_allclose(got[n, c], slow_blur(x[n, c], sigma), atol=1e-10)
    assert gaussian_kernel(sigma).sum().item() == pytest.approx(1.0)
    assert torch.equal(gaussian_blur(torch.from_numpy(x), 0), torch.from_numpy(x))  # no blur


# ----------------------------------------------------------------------------- the steps
def explicit_steps(model, x, target, steps, lr, decay, blur_every, sigma, low, high):
    """The update written out, without jitter: gradient of the logit, normalized step, decay,
    blur every few steps, clip."""
    x = x.clone()
    values = []
    for step in range(steps):
        xs = x.clone().requires_grad_(True)
        logit = model(xs)[0, target]
        (g,) = torch.autograd.grad(logit, xs)
        values.append(float(logit.detach()))
        x = x + lr * g / g.abs().mean()
        x = x * (1 - decay)
        if blur_every and (step + 1) % blur_every == 0:
            x = torch.from_numpy(np.stack([[slow_blur(ch, sigma) for ch in im]
                                           for im in x.detach().numpy()]))
        x = torch.maximum(torch.minimum(x.detach(), high), low)
    return x, values


def test_steps_equal_the_explicit_update(session):
    model = session.model
    prep = session.preprocessing
    mean = torch.tensor(prep.mean).view(1, 3, 1, 1)
    std = torch.tensor(prep.std).view(1, 3, 1, 1)
    start = 0.1 * torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    res = ascent(session, 4, steps=3, lr=0.05, decay=0.01, blur_every=3, blur_sigma=0.5,
                 jitter=0, start=start, progress=False)
    x, values = explicit_steps(model.eval(), start, 4, 3, 0.05, 0.01, 3, 0.5,
                               (0 - mean) / std, (1 - mean) / std)
    torch.testing.assert_close(res.input, x.float(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(res.history[:3], values, rtol=1e-5, atol=1e-5)
    assert res.target == 4 and res.objective == "score of class 4 (thing 4)"
    assert res.image.shape == (224, 224, 3) and 0 <= res.image.min() and res.image.max() <= 1


def test_class_score_rises_and_the_model_is_untouched(session):
    model = session.model
    model.train()
    for p in model.parameters():
        p.grad = None
    flags = [m.training for m in model.modules()]
    inplace = model[1].inplace
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = ascent(session, "thing 7", steps=30, lr=0.2, progress=False)
    assert res.history[-1] > res.history[0] + 0.2       # a random tiny net responds weakly
    with torch.no_grad():
        start = float(torch.softmax(model.eval()(torch.zeros(1, 3, 224, 224)), 1)[0, 7])
    assert res.prob > start
    model.train()
    assert [m.training for m in model.modules()] == flags and model[1].inplace == inplace
    assert all(p.grad is None for p in model.parameters())
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_feature_map_objective_and_determinism(session):
    a = ascent(session, layer="2", channel=5, steps=12, progress=False, seed=1)
    b = ascent(session, layer="2", channel=5, steps=12, progress=False, seed=1)
    c = ascent(session, layer="2", channel=5, steps=12, progress=False, seed=2)
    assert a.objective == "mean of 2 channel 5" and a.prob is None and a.target is None
    assert a.history[-1] > a.history[0]
    torch.testing.assert_close(a.input, b.input)
    assert not torch.equal(a.input, c.input)          # jitter follows the seed


def test_blur_removes_high_frequencies_on_the_real_model():
    s = zf.Session()                                   # EfficientNet-Lite0, real weights

    def roughness(img):                                # mean |Laplacian| of the picture
        return float(np.abs(img[1:-1, 1:-1] * 4 - img[:-2, 1:-1] - img[2:, 1:-1]
                            - img[1:-1, :-2] - img[1:-1, 2:]).mean())

    sharp = ascent(s, "goldfish", steps=40, blur_every=0, progress=False)
    smooth = ascent(s, "goldfish", steps=40, blur_every=2, blur_sigma=1.0, progress=False)
    assert sharp.prob > 0.5 and smooth.prob > 0.5      # both fool the model ...
    assert roughness(smooth.image) < 0.2 * roughness(sharp.image)   # ... one looks like a picture


def test_rectifier_layers_climb_their_input(session):
    """On a ReLU layer the objective is the mean of the ReLU's input channel (pre-activation):
    its first value equals the conv output's channel mean at the start image."""
    start = 0.1 * torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    r = ascent(session, layer="3", channel=2, steps=6, jitter=0, start=start, progress=False)
    assert r.objective == "mean of 3 channel 2 (its input, before the ReLU)"
    with torch.no_grad():
        conv = session.model[:3].eval()(start)
    assert r.history[0] == pytest.approx(float(conv[0, 2].mean()), rel=1e-5, abs=1e-6)
    assert r.history[-1] > r.history[0]
    assert not any(m._forward_pre_hooks for m in session.model.modules())


def test_cancel_and_progress_callbacks(session):
    seen = []
    ascent(session, 1, steps=5, progress=False, on_step=lambda k, v: seen.append(k))
    assert seen == [1, 2, 3, 4, 5]
    calls = iter(range(100))
    with pytest.raises(Cancelled):
        ascent(session, 1, steps=5, progress=False, should_stop=lambda: next(calls) >= 2)


def test_the_job_steps_like_an_event_loop_and_gives_the_same_result(session):
    model = session.model.train()
    job = ascent_job(session, 3, steps=4, jitter=0)
    states = []
    while (step := job.step()) is not None:
        assert model.training and all(m.training for m in model.modules())  # eval only in a step
        assert isinstance(step.partial, AscentState) and step.total == 4
        states.append(step.partial)
    ref = ascent(session, 3, steps=4, jitter=0, progress=False)
    torch.testing.assert_close(job.result.input, ref.input)
    assert [s.objective for s in states] == pytest.approx(list(ref.history[:4]))
    torch.testing.assert_close(states[-1].input, job.result.input)
    with pytest.raises(BadParameterError):          # parameters are checked before any step
        ascent_job(session, steps=0)


@pytest.mark.parametrize("kwargs, error", [
    (dict(steps=0), BadParameterError),
    (dict(lr=-1.0), BadParameterError),
    (dict(decay=1.0), BadParameterError),
    (dict(blur_sigma=0), BadParameterError),
    (dict(jitter=-1), BadParameterError),
    (dict(start="sky"), BadParameterError),
    (dict(start=torch.zeros(1, 3, 10, 10)), BadParameterError),
    (dict(channel=3), BadParameterError),
    (dict(target=10), OutOfRangeError),
    (dict(target="thing 77"), OutOfRangeError),
    (dict(layer="nope"), UnknownLayerError),
    (dict(layer="2", channel=16), OutOfRangeError),
])
def test_bad_parameters_raise_our_errors(session, kwargs, error):
    with pytest.raises(error):
        ascent(session, progress=False, **kwargs)


def test_figure_shows_the_pictures_and_updates_in_place(session):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from zfwidgets.plots.ascent import ascent_figure, stretch, update_ascent_image

    runs = [ascent(session, 2, steps=3, progress=False),
            ascent(session, layer="2", channel=1, steps=3, blur_every=0, progress=False)]
    fig = Figure(figsize=(6, 2.5))
    FigureCanvasAgg(fig)
    fig, images = ascent_figure(runs, fig=fig)
    assert len(fig.axes) == 3 and len(images) == 2
    shown = np.asarray(images[0].get_array())
    np.testing.assert_allclose(shown, stretch(runs[0].image))
    assert shown.max() == pytest.approx(1.0) or shown.min() == pytest.approx(0.0)
    _, raw = ascent_figure(runs, contrast=False, history=False)
    np.testing.assert_array_equal(raw[0].get_array(), runs[0].image)
    assert "thing 2" in fig.axes[0].get_title() and "(no blur)" in fig.axes[1].get_title()
    fig.canvas.draw()
    before = np.asarray(fig.canvas.buffer_rgba()).copy()
    update_ascent_image(images[0], runs[1])
    fig.canvas.draw()
    assert (np.asarray(fig.canvas.buffer_rgba()) != before).any()
    with pytest.raises(ValueError):
        ascent_figure([])
