"""ExplainView (the explorer's Explain tab) without a browser: the class in, the maps, their
agreement numbers and the figure's pixels out."""

from __future__ import annotations

import asyncio

import matplotlib
import numpy as np
import pytest

matplotlib.use("module://ipympl.backend_nbagg")

from zfwidgets import Session, load_sample  # noqa: E402
from zfwidgets.backend.explain.explanation import explain_job  # noqa: E402
from zfwidgets.backend.explain.methods import METHODS  # noqa: E402
from zfwidgets.plots.explain import _scaled  # noqa: E402
from zfwidgets.widgets.explain import ExplainView  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = dict(size=56, stride=56)          # 4 x 4 occluder positions on 224 x 224


@pytest.fixture(scope="module")
def session():
    return Session("efficientnet_lite0", load_sample("chelsea"))


@pytest.fixture
def view(session):
    w = ExplainView(session, background=False, **SMALL)
    yield w
    w.close()


def pixels(w) -> np.ndarray:
    w.fig.canvas.draw()
    return np.asarray(w.fig.canvas.buffer_rgba())[..., :3].copy()


def panel(w, buf, name) -> np.ndarray:
    box = w.panels.axes[name].get_window_extent()
    H = buf.shape[0]
    return buf[int(H - box.y1) + 2:int(H - box.y0) - 2, int(box.x0) + 2:int(box.x1) - 2]


def test_opens_on_the_top_class_with_every_map_and_its_agreement(view, session):
    top = int(session.probabilities().argmax())
    assert view.target == top and view.classes.value == top
    assert [c for _, c in view.classes.options] == \
        [int(c) for c in session.probabilities().topk(5).indices]
    ref = explain_job(session, top, size=56, stride=56, deletion=False).run(progress=False)
    e = view.explanation
    assert e.methods == list(METHODS) and e.deletion == {}
    for m in METHODS:
        assert np.allclose(e.maps[m].map, ref.maps[m].map, atol=1e-6)
        assert e.agreement[m] == pytest.approx(ref.agreement[m], abs=1e-6)
        # each panel shows its map on its own scale, titled with its number
        assert np.allclose(view.panels.maps[m].get_array(), _scaled(ref.maps[m].map))
        assert f"ρ = {ref.agreement[m]:.2f}" in view.panels.axes[m].get_title()
        assert view.panels.bars[m].get_width() == pytest.approx(ref.agreement[m], abs=1e-6)
    assert np.allclose(view.panels.maps["occlusion"].get_array(),
                       _scaled(np.clip(ref.drop, 0, None)))
    assert "Spearman" in view.notes.value and e.label in view.notes.value
    # Lite0 has no max-pooling: the notes say what its deconvnet shows
    assert "max-pool" in view.notes.value


def test_choosing_another_class_repaints_and_going_back_is_cached(view, session):
    before = pixels(view)
    first = view.explanation
    other = view.classes.options[1][1]
    view.classes.value = other                       # a click on the second button
    assert view.target == other and view.jobs == 2
    assert view.explanation.target == (other,) and view.explanation is not first
    after = pixels(view)
    assert (panel(view, before, "gradcam") != panel(view, after, "gradcam")).any()
    assert view.panels.axes["image"].get_title() != ""
    view.classes.value = view.classes.options[0][1]
    assert view.jobs == 2 and view.explanation is first     # from the cache, no new job


def test_a_new_image_gets_its_own_top_five_and_maps(session):
    s = Session("efficientnet_lite0", load_sample("chelsea"))
    w = ExplainView(s, background=False, **SMALL)
    try:
        cat = w.explanation
        s.set_image(load_sample("coffee"))
        assert w.jobs == 2 and w.explanation is not cat
        assert w.target == int(s.probabilities().argmax())
        assert w.explanation.label == s.predict(1)[0][0]
        assert np.array_equal(w.panels.image.get_array(), s.display_image)
    finally:
        w.close()


def test_hidden_it_computes_nothing_until_shown():
    s = Session("efficientnet_lite0", load_sample("chelsea"))
    w = ExplainView(s, background=False, shown=False, **SMALL)
    try:
        assert w.jobs == 0 and w.explanation is None and w.stale
        s.set_image(load_sample("coffee"))
        assert w.jobs == 0
        w.shown = True
        assert w.jobs == 1 and w.explanation.label == s.predict(1)[0][0]
    finally:
        w.close()


def test_maps_are_drawn_as_they_arrive_and_a_newer_class_supersedes(session):
    async def scenario():
        w = ExplainView(session, background=True, **SMALL)
        try:
            assert w.explanation is None and w.progress.layout.visibility == "visible"
            first = w.runner.job
            for _ in range(50):
                if w.maps:
                    break
                await asyncio.sleep(0)
            arrived = dict(w.maps)
            assert arrived and w.explanation is None          # a map before the numbers
            m = next(iter(arrived))
            assert np.allclose(w.panels.maps[m].get_array(), _scaled(arrived[m]))
            assert "computing" in w.panels.axes["occlusion"].get_title()
            w.classes.value = w.classes.options[2][1]         # supersedes the running job
            assert first.closed and w.runner.job is not first
            for _ in range(400):
                if w.explanation is not None:
                    break
                await asyncio.sleep(0)
            assert w.explanation.target == (w.classes.options[2][1],)
            assert w.progress.layout.visibility == "hidden"
        finally:
            w.close()

    asyncio.run(scenario())


def test_the_explorer_has_an_explain_tab(session):
    from zfwidgets.widgets.explorer import Explorer

    ex = Explorer(Session("efficientnet_lite0"))
    ex._tab_specs = [(t, (ExplainView, {"background": False, **SMALL}) if t == "Explain"
                      else spec) for t, spec in ex._tab_specs]
    try:
        assert "Explain" in ex.tabs.titles
        view = ex.open_tab("Explain")
        assert isinstance(view, ExplainView) and view.jobs == 1 and not ex.grid.shown
        ex.layer = ex.session.layers[3]                 # the explorer's layer is not its concern
        assert view.jobs == 1
        ex.tabs.selected_index = 0
        ex.images.choose_sample("coffee")
        assert view.jobs == 1 and view.stale            # hidden: nothing computed
        ex.open_tab("Explain")
        assert view.jobs == 2 and view.explanation.label == ex.session.predict(1)[0][0]
    finally:
        ex.close()
