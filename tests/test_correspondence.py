"""Fig. 8 / Table 1 correspondence: scores against an explicit computation, and the cases whose
answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nets import tiny_cnn

import zfwidgets as zf
from zfwidgets.backend.experiments.correspondence import correspondence, sign_consistency
from zfwidgets.errors import BadParameterError, UnknownLayerError


@pytest.fixture(scope="module")
def session():
    return zf.Session(tiny_cnn((6, 8), 4, second_stride=2), zf.load_sample("chelsea"))


def test_sign_consistency_is_the_pairwise_hamming_fraction():
    rng = np.random.default_rng(0)
    e = rng.normal(size=(4, 50))
    e[:, :10] = 0                                        # unchanged features: sign 0 everywhere
    got = sign_consistency(torch.from_numpy(e))
    want = [np.mean(np.sign(e[i]) != np.sign(e[j])) for i in range(4) for j in range(i + 1, 4)]
    np.testing.assert_allclose(got, want)


def test_scores_equal_an_explicit_computation(session):
    torch.manual_seed(1)
    x = torch.randn(3, 3, 224, 224)
    parts = {"a": [(10, 10, 50, 50), (20, 30, 60, 70), (100, 100, 140, 140)],
             "b": [(0, 100, 32, 132), (150, 0, 182, 32), (180, 180, 212, 212)]}
    res = correspondence(session, x, parts, ["1", "3"], random_trials=3, seed=4)
    model = session.model
    for name, boxes in parts.items():
        xo = x.clone()
        for i, (t, l, b, r) in enumerate(boxes):
            xo[i, :, t:b, l:r] = 0
        for layer, upto in (("1", 2), ("3", 4)):
            with torch.no_grad():
                eps = (model[:upto](x) - model[:upto](xo)).flatten(1)
            s = torch.sign(eps)
            want = [float((s[i] != s[j]).float().mean()) for i in range(3) for j in range(i + 1, 3)]
            np.testing.assert_allclose(res.pairs[(name, layer)], want, atol=1e-12)
            assert res.score[(name, layer)] == pytest.approx(np.mean(want))
    assert res.parts == ["a", "b", "random"] and res.layers == ["1", "3"]
    assert len(res.pairs[("random", "1")]) == 3 and len(res.boxes["random"]) == 3
    assert res.table()[0][0] == "a" and "±" in res.table()[2][1]


def test_identical_images_are_perfectly_consistent(session):
    x = session.input_tensor.repeat(4, 1, 1, 1)
    box = (60, 40, 100, 80)
    res = correspondence(session, x, {"eye": [box] * 4}, ["1", "3"], random_trials=4)
    for layer in res.layers:
        assert res.score[("eye", layer)] == 0.0          # the same change in every copy
        assert res.score[("random", layer)] > 0.0        # squares at different places
    again = correspondence(session, [zf.load_sample("chelsea")] * 2, {"eye": [box] * 2},
                           ["3"], random_trials=1)       # images go through preprocessing
    assert again.score[("eye", "3")] == 0.0


@pytest.mark.parametrize("images, parts, kwargs", [
    ("one", {"p": [(0, 0, 8, 8)]}, {}),
    ("two", {}, {}),
    ("two", {"p": [(0, 0, 8, 8)]}, {}),                   # one box for two images
    ("two", {"p": [(0, 0, 8, 8), (10, 10, 10, 20)]}, {}),  # empty box
    ("two", {"p": [(0, 0, 8, 8), (200, 200, 240, 240)]}, {}),  # outside
    ("two", {"random": [(0, 0, 8, 8)] * 2}, {}),
    ("two", {"p": [(0, 0, 8, 8)] * 2}, {"random_trials": 0}),
])
def test_bad_input_raises(session, images, parts, kwargs):
    x = session.input_tensor.repeat(1 if images == "one" else 2, 1, 1, 1)
    with pytest.raises(BadParameterError):
        correspondence(session, x, parts, ["1"], **kwargs)


def test_unknown_layer(session):
    x = session.input_tensor.repeat(2, 1, 1, 1)
    with pytest.raises(UnknownLayerError):
        correspondence(session, x, {"p": [(0, 0, 8, 8)] * 2}, ["nope"])


def test_figure(session):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from zfwidgets.plots.correspondence import correspondence_figure

    x = session.input_tensor.repeat(3, 1, 1, 1)
    res = correspondence(session, x, {"eye": [(60, 40, 100, 80)] * 3,
                                      "nose": [(150, 120, 190, 160)] * 3}, ["1", "3"],
                         random_trials=2)
    fig = Figure()
    FigureCanvasAgg(fig)
    rgb = session.preprocessing.denormalize(x).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    fig, axes = correspondence_figure(rgb, res, names=["a", "b", "c"], fig=fig)
    assert len(axes) == 5 and axes[0].get_title() == "a"
    assert len(axes[0].patches) == 3                      # eye, nose, random
    heights = [p.get_height() for p in axes[4].patches]
    np.testing.assert_allclose(heights, [res.score[(p, "3")] for p in res.parts])
    fig.canvas.draw()
