"""plots.explain: what notebook 11 draws from zf.explain and zf.sanity_check, checked against
the results it draws (the pixels of each map panel, the curves' data)."""

from __future__ import annotations

import numpy as np
import pytest

import zfwidgets as zf
from test_class_maps import classifier, session
from zfwidgets.plots.explain import (METHOD_NAMES, _scaled, deletion_figure, explanation_figure,
                                     sanity_figure)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def explained():
    s = session(classifier(), size=(48, 40))
    return s, zf.explain(s, "dog", size=12, stride=4, steps=6, progress=False)


def test_explanation_figure_draws_each_map_on_its_own_scale(explained):
    s, e = explained
    fig, axes = explanation_figure(s.display_image, e)
    assert len(axes) == len(e.methods) + 2
    for ax, name in zip(axes[1:], e.methods):
        shown = ax.images[0].get_array()
        np.testing.assert_allclose(shown, _scaled(e.maps[name].map))
        assert METHOD_NAMES[name] in ax.get_title()
        assert f"ρ = {e.agreement[name]:.2f}" in ax.get_title() or "undefined" in ax.get_title() \
            or "all zero" in ax.get_title()
    occ = axes[-1].images[-1]
    np.testing.assert_allclose(occ.get_array(), _scaled(np.clip(e.drop, 0, None)))
    assert tuple(occ.get_extent()) == pytest.approx(e.occlusion.extent())
    fig.canvas.draw()


def test_scaled_maps():
    m = np.arange(1000, dtype=float)
    out = _scaled(m)
    assert out.min() == 0 and out.max() == 1 and np.isclose(out[500], 500 / np.percentile(m, 99.5))
    assert np.all(_scaled(np.zeros((3, 3))) == 0)


def test_deletion_figure_plots_every_curve(explained):
    _, e = explained
    fig, ax = deletion_figure(e)
    lines = ax.get_lines()
    assert len(lines) == len(e.methods) + 2
    for line, name in zip(lines, [*e.methods, "occlusion", "random"]):
        np.testing.assert_allclose(line.get_xdata(), e.fractions)
        np.testing.assert_allclose(line.get_ydata(), e.deletion[name])
    area = e.deletion_area()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[-2] == f"occlusion ({area['occlusion']:.3f})"
    fig.canvas.draw()


def test_sanity_figure_curves_and_maps():
    s = session(classifier(), size=(48, 40))
    checks = [zf.sanity_check(s, m, "dog", progress=False) for m in ("saliency", "gradcam")]
    n = len(checks[0].layers)
    fig, (curve, *rows) = sanity_figure(checks, steps=[0, n])
    for line, c in zip(curve.get_lines(), checks):
        np.testing.assert_allclose(line.get_ydata(), np.r_[1.0, c.spearman_abs])
    for row, c in zip(rows, checks):
        assert len(row) == 2
        np.testing.assert_allclose(row[0].images[0].get_array(), _scaled(c.original.map))
        np.testing.assert_allclose(row[1].images[0].get_array(), _scaled(c.maps[-1].map))
    fig.canvas.draw()
    with pytest.raises(ValueError):
        sanity_figure([])
