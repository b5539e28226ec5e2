"""Tables 4-7 layer probes: features against a plain hook loop, the classifier at its optimum,
separable and random labels, splits, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nets import tiny_cnn

import zfwidgets as zf
from zfwidgets.backend.experiments.probes import (fit_linear, layer_features, probe,
                                                  stratified_split)
from zfwidgets.errors import BadParameterError, DataError, UnknownLayerError
from zfwidgets.threads import using_threads


@pytest.fixture(scope="module")
def session():
    return zf.Session(tiny_cnn((8, 8), 3, second_stride=2), zf.load_sample("chelsea"))


def coloured(n_per: int, seed: int = 0):
    """Noisy pictures of three colours: red, green, blue dominant."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for c, name in enumerate(["red", "green", "blue"]):
        for _ in range(n_per):
            a = rng.uniform(0, 0.4, size=(48, 48, 3))
            a[..., c] += 0.5
            images.append((a * 255).astype(np.uint8))
            labels.append(name)
    return images, labels


def test_features_equal_a_plain_hook_loop(session):
    images, _ = coloured(2)
    for pool in ("avg", "max"):
        got = layer_features(session, images, ["1", "3"], pool=pool, batch_size=4)
        grabbed = {}
        hooks = [session.model[int(k)].register_forward_hook(
            lambda m, i, o, k=k: grabbed.__setitem__(k, o.detach().clone())) for k in ("1", "3")]
        try:
            for n, im in enumerate(images):
                with torch.no_grad():
                    session.model(session.preprocessing(zf.load_image(im)))
                for k in ("1", "3"):
                    t = grabbed[k][0]
                    want = t.mean((1, 2)) if pool == "avg" else t.amax((1, 2))
                    np.testing.assert_allclose(got[k][n].numpy(), want.double().numpy(),
                                               rtol=1e-5, atol=1e-6)
        finally:
            for h in hooks:
                h.remove()


def test_classifier_reaches_the_optimum():
    torch.manual_seed(0)
    x = torch.randn(40, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (40,))
    w, b = fit_linear(x, y, 3, l2=1e-2)
    w.requires_grad_(True)
    b.requires_grad_(True)
    loss = F.cross_entropy(x @ w + b, y) + 1e-2 * (w * w).sum()
    gw, gb = torch.autograd.grad(loss, (w, b))
    assert gw.abs().max() < 1e-6 and gb.abs().max() < 1e-6


def test_the_fit_runs_on_one_thread_and_restores_the_count(monkeypatch):
    """Its tiny operations run on one torch thread whatever the process's count (a second
    thread only wakes up per operation), the count is restored after, and the result is the
    one of a one-thread process."""
    seen = []
    step = torch.optim.LBFGS.step

    def spy(self, closure):
        seen.append(torch.get_num_threads())
        return step(self, closure)

    monkeypatch.setattr(torch.optim.LBFGS, "step", spy)
    torch.manual_seed(1)
    x = torch.randn(30, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (30,))
    before = torch.get_num_threads()
    with using_threads(2):
        w2, b2 = fit_linear(x, y, 3)
        assert torch.get_num_threads() == 2
    with using_threads(1):
        w1, b1 = fit_linear(x, y, 3)
    assert seen == [1, 1] and torch.get_num_threads() == before
    assert torch.equal(w1, w2) and torch.equal(b1, b2)


def test_separable_colours_and_shuffled_labels(session):
    images, labels = coloured(6)
    res = probe(session, images, labels, ["1", "3"], train_per_class=2, trials=3)
    assert res.classes == ["blue", "green", "red"] and res.dims == {"1": 8, "3": 8}
    assert res.mean("1") == 1.0 and res.accuracy["1"].shape == (3,)
    assert res.chance == pytest.approx(1 / 3)
    feats = layer_features(session, images, ["1"])
    shuffled = list(np.random.default_rng(1).permutation(labels))
    noise = probe(session, None, shuffled, ["1"], train_per_class=2, trials=20, features=feats)
    assert noise.mean("1") < 0.65                      # about chance, far from 1
    assert res.table()[0] == ("1", "100.0 ± 0.0")


def test_splits_are_stratified_disjoint_and_seeded():
    labels = np.array([0] * 5 + [1] * 7 + [2] * 4)
    a = stratified_split(labels, 2, np.random.default_rng(3))
    b = stratified_split(labels, 2, np.random.default_rng(3))
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    train, test = a
    assert np.bincount(labels[train]).tolist() == [2, 2, 2]
    assert set(train).isdisjoint(test) and len(train) + len(test) == len(labels)


def test_bad_input(session):
    images, labels = coloured(3)
    with pytest.raises(BadParameterError):
        probe(session, images, labels[:-1], ["1"], train_per_class=1)
    with pytest.raises(BadParameterError):
        probe(session, images, labels, ["1"], train_per_class=3)      # no test example left
    with pytest.raises(BadParameterError):
        probe(session, images, ["a"] * 9, ["1"], train_per_class=1)   # one class
    with pytest.raises(UnknownLayerError):
        probe(session, images, labels, ["nope"], train_per_class=1)
    with pytest.raises(BadParameterError):
        layer_features(session, images, ["1"], pool="median")
    with pytest.raises(DataError):
        layer_features(session, [b"not an image"], ["1"])


def test_figure(session):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from zfwidgets.plots.probes import probe_figure

    images, labels = coloured(5)
    feats = layer_features(session, images, ["1", "3"])
    runs = [probe(session, None, labels, ["1", "3"], train_per_class=n, trials=2, features=feats)
            for n in (1, 3)]
    fig = Figure()
    FigureCanvasAgg(fig)
    fig, ax = probe_figure(runs, fig=fig)
    bars = ax.containers                               # one errorbar per result
    assert [c.get_label() for c in bars] == ["1 per class", "3 per class"]
    np.testing.assert_allclose(np.asarray(bars[1].lines[0].get_ydata(), dtype=float),
                               [100 * runs[1].mean(k) for k in ("1", "3")])
    fig.canvas.draw()
    with pytest.raises(ValueError):
        probe_figure([])
