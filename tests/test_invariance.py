"""Fig. 5 invariance: transformations against explicit references, curves against a plain loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from nets import tiny_cnn

import zfwidgets as zf
from zfwidgets.backend.defaults import invariance_layers
from zfwidgets.backend.experiments import invariance, transform
from zfwidgets.backend.experiments.invariance import default_amounts
from zfwidgets.errors import BadParameterError, OutOfRangeError, UnknownLayerError, ZFError


@pytest.fixture(scope="module")
def session():
    return zf.Session(tiny_cnn(pool=True), zf.load_sample("chelsea"))


def ramp(h=12, w=12) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(1, 3, h, w)


# ----------------------------------------------------------------------------- transformations
def test_identity_amounts_change_nothing():
    x = ramp()
    for kind, amount in (("translation", 0), ("scale", 1), ("rotation", 0)):
        torch.testing.assert_close(transform(x, kind, [amount]), x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("shift", [-5, -1, 3, 7])
def test_translation_is_an_exact_vertical_shift_with_gray_fill(shift):
    x = ramp(10, 14)
    expected = torch.zeros_like(x)
    H = x.shape[2]
    for row in range(H):                              # the slow, obvious version
        src = row - shift
        if 0 <= src < H:
            expected[..., row, :] = x[..., src, :]
    torch.testing.assert_close(transform(x, "translation", [shift]), expected, atol=1e-5, rtol=0)


def test_rotation_is_counter_clockwise_and_exact_at_quarter_turns():
    x = torch.zeros(1, 3, 9, 9)
    x[0, :, 0, 4] = 1.0                               # a dot at the top centre
    turned = transform(x, "rotation", [90, 180, 270])
    # counter-clockwise on screen: top -> left -> bottom -> right
    where = [divmod(int(t[0].argmax()), 9) for t in turned]
    assert where == [(4, 0), (8, 4), (4, 8)]
    assert all(float(t[0].max()) == pytest.approx(1.0, abs=1e-5) for t in turned)
    y = ramp(8, 8)
    for k, t in zip((1, 2, 3), transform(y, "rotation", [90, 180, 270])):
        torch.testing.assert_close(t[None], torch.rot90(y, k, dims=(2, 3)), atol=1e-5, rtol=0)


def test_rotation_of_a_non_square_input_keeps_pixels_square():
    x = torch.zeros(1, 1, 8, 16)
    x[0, 0, 3:5, 4:12] = 1.0                          # a horizontal bar, 2 x 8, centred
    t = transform(x, "rotation", [90])[0, 0]
    rows, cols = (t > 0.5).nonzero(as_tuple=True)
    assert rows.max() - rows.min() + 1 == 8 and cols.max() - cols.min() + 1 == 2


def test_zoom_two_is_the_centre_half_upsampled():
    x = ramp(16, 16)
    z = transform(x, "scale", [2.0])
    ref = nn.functional.interpolate(x[:, :, 4:12, 4:12], scale_factor=2, mode="bilinear",
                                    align_corners=False)
    # equal away from the border, where interpolate clamps and grid_sample reads neighbours
    torch.testing.assert_close(z[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1], atol=1e-5, rtol=0)
    out = transform(x, "scale", [0.5])                # zoom out: a gray frame around
    assert out[..., :3, :].abs().max() == 0 and out[..., 5:11, 5:11].abs().max() > 0


# ----------------------------------------------------------------------------- the sweep
def plain_sweep(model, x, kind, amounts, layers, target):
    """The obvious version: one transformed image at a time, forward hooks on named modules."""
    modules = dict(model.named_modules())
    grab = {}
    handles = [modules[name].register_forward_hook(
        lambda m, i, o, name=name: grab.__setitem__(name, o.detach().clone()))
        for name in layers]
    try:
        with torch.no_grad():
            model(x)
            ref = {name: grab[name].flatten() for name in layers}
            dist = {name: [] for name in layers}
            probs = []
            for a in amounts:
                xt = transform(x, kind, [a])
                p = torch.softmax(model(xt), 1)[0]
                probs.append(float(p[target]))
                for name in layers:
                    dist[name].append(float((grab[name].flatten() - ref[name]).norm()))
    finally:
        for h in handles:
            h.remove()
    return dist, np.array(probs)


@pytest.mark.parametrize("kind", ["translation", "scale", "rotation"])
def test_sweep_equals_a_plain_loop(session, kind):
    amounts = default_amounts(kind)[::3]
    res = invariance(session, kind, amounts, layers=["1", "4"], batch_size=3)
    dist, probs = plain_sweep(session.model, session.input_tensor, kind, amounts, ["1", "4"],
                              res.target)
    assert res.target == int(session.probabilities().argmax())
    np.testing.assert_allclose(res.prob, probs, atol=1e-5)
    for layer in ("1", "4"):
        np.testing.assert_allclose(res.distance[layer], dist[layer], rtol=1e-4, atol=1e-4)
    assert res.images.shape == (len(amounts), 224, 224, 3)
    assert 0 <= res.images.min() and res.images.max() <= 1
    assert res.top_class.shape == (len(amounts),)


def test_identity_has_zero_distance_and_the_session_probability(session):
    res = invariance(session, "translation", [0, 20], target=3)
    assert res.layers == invariance_layers(session) == ["1", "3"]  # first ReLU, last conv
    for layer in res.layers:
        assert res.distance[layer][0] < 1e-4 * res.reference_norm[layer]
        assert res.distance[layer][1] > 1e-3 * res.reference_norm[layer]
        assert res.relative(layer)[1] == pytest.approx(
            res.distance[layer][1] / res.reference_norm[layer])
    assert res.prob[0] == pytest.approx(float(session.probabilities()[3]), abs=1e-6)
    assert res.label(3) == session.label(3)


def test_batch_size_does_not_change_results(session):
    a = invariance(session, "rotation", [0, 30, 60, 90, 120], batch_size=1, keep_images=False)
    b = invariance(session, "rotation", [0, 30, 60, 90, 120], batch_size=5, keep_images=False)
    assert a.images is None
    np.testing.assert_allclose(a.prob, b.prob, atol=1e-6)
    for layer in a.layers:
        np.testing.assert_allclose(a.distance[layer], b.distance[layer], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs, error", [
    (dict(kind="shear"), BadParameterError),
    (dict(kind="scale", amounts=[1.0, 0.0]), BadParameterError),
    (dict(amounts=[]), BadParameterError),
    (dict(amounts=[1.0, float("nan")]), BadParameterError),
    (dict(target=10), OutOfRangeError),
    (dict(layers=["nope"]), UnknownLayerError),
    (dict(batch_size=0), BadParameterError),
])
def test_bad_parameters_raise_our_errors(session, kwargs, error):
    with pytest.raises(error) as info:
        invariance(session, **kwargs)
    assert isinstance(info.value, ZFError)


def test_default_layers_of_the_offline_model():
    s = zf.Session()
    assert invariance_layers(s) == ["stem.act", "head.act"]


# ----------------------------------------------------------------------------- the figure
def test_figure_draws_the_curves_and_moves_the_marker(session):
    from zfwidgets.plots.invariance import invariance_figure, update_amount

    sweeps = [invariance(session, kind, default_amounts(kind)[::4])
              for kind in ("translation", "rotation")]
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 5), layout="constrained")
    FigureCanvasAgg(fig)
    fig, panels = invariance_figure(sweeps, fig=fig)
    assert len(panels.rows) == 2 and all(len(r) == 4 for r in panels.rows)
    first = panels.curves[0][0]
    np.testing.assert_allclose(first.get_ydata(), sweeps[0].relative("1"))
    np.testing.assert_allclose(panels.curves[0][-1].get_ydata(), sweeps[0].prob)
    fig.canvas.draw()
    before = np.asarray(fig.canvas.buffer_rgba()).copy()
    update_amount(panels, 1, 90)
    assert all(m.get_xdata()[0] == 90 for m in panels.markers[1])
    fig.canvas.draw()
    assert (np.asarray(fig.canvas.buffer_rgba()) != before).any()
    raw, _ = invariance_figure(sweeps[0], relative=False)
    assert "relative" not in raw.axes[1].get_title()
    with pytest.raises(ValueError):
        invariance_figure([])
