"""OcclusionExplorer without a browser: traits in, figure pixels and the top-5 out."""

from __future__ import annotations

import asyncio

import matplotlib
import numpy as np
import pytest
from matplotlib.backend_bases import MouseEvent

matplotlib.use("module://ipympl.backend_nbagg")

from zfwidgets import Session, load_sample  # noqa: E402
from zfwidgets.backend.occlusion import occluded_prediction  # noqa: E402
from zfwidgets.widgets.occlusion import OcclusionExplorer  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = dict(size=64, stride=40)  # 5 x 5 positions on 224 x 224: fast sweeps


@pytest.fixture(scope="module")
def session():
    return Session("efficientnet_lite0")


@pytest.fixture
def explorer(session):
    w = OcclusionExplorer(session, **SMALL)
    yield w
    w.close()


def pixels(w: OcclusionExplorer) -> np.ndarray:
    w.fig.canvas.draw()
    return np.asarray(w.fig.canvas.buffer_rgba())[..., :3].copy()


def panel(w: OcclusionExplorer, buf: np.ndarray, k: int) -> np.ndarray:
    """Pixels of panel k: (a) image, (b) feature, (c) projection, (d) P(class), (e) class."""
    box = w.panels.axes[k].get_window_extent()
    H = buf.shape[0]
    return buf[int(H - box.y1) + 2:int(H - box.y0) - 2, int(box.x0) + 2:int(box.x1) - 2]


def changed(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape != b.shape or bool((a != b).any())


def test_builds_and_draws(explorer, session):
    assert explorer.result is not None and explorer.result.size == 64
    assert explorer.result.layer == explorer.layer == session.entry.default_layer
    assert explorer.channel == session.strongest_channel(explorer.layer)
    buf = pixels(explorer)
    for k in range(5):
        assert panel(explorer, buf, k).std() > 3, f"panel {k} is blank"
    assert "top-5" in explorer.top5.value and explorer.errors.message == ""


def test_position_slider_changes_image_and_top5(explorer, session):
    before = pixels(explorer)
    top5_before = explorer.top5.value
    explorer.y_slider.value = 0
    explorer.x_slider.value = 60
    assert (explorer.y, explorer.x) == (0, 60)
    after = pixels(explorer)
    assert changed(panel(explorer, before, 0), panel(explorer, after, 0))
    assert explorer.top5.value != top5_before
    assert explorer.prediction == occluded_prediction(session, 0, 60, 64)
    # the maps did not change (only the cell marker moved): same sweep, no new one
    assert explorer.sweeps == 1
    # the occluder is gray where it should be, in the model's view of the image
    a = explorer.panels.image.get_array()
    assert np.allclose(a[0:64, 60:124], 127 / 255, atol=1e-6)
    assert not np.allclose(a[100:164, 60:124], 127 / 255, atol=1e-3)


def test_size_change_recomputes_maps(explorer):
    before = pixels(explorer)
    first = explorer.result
    explorer.size_slider.value = 100
    assert explorer.sweeps == 2 and explorer.result.size == 100
    assert explorer.result.shape == (4, 4) != first.shape
    after = pixels(explorer)
    for k in (1, 3, 4):
        assert changed(panel(explorer, before, k), panel(explorer, after, k)), k
    explorer.stride_slider.value = 60
    assert explorer.sweeps == 3 and explorer.result.shape == (3, 3)
    with explorer.held():  # two changes, one refresh
        explorer.size_slider.value = 64
        explorer.stride_slider.value = 40  # back to the first maps: served from the cache
    assert explorer.sweeps == 3
    np.testing.assert_array_equal(explorer.result.prob, first.prob)


def test_channel_change_is_free(explorer):
    before = pixels(explorer)
    explorer.channel = (explorer.channel + 1) % 1280
    assert explorer.sweeps == 1 and explorer.result.channel == explorer.channel
    after = pixels(explorer)
    assert changed(panel(explorer, before, 1), panel(explorer, after, 1))
    assert not changed(panel(explorer, before, 3), panel(explorer, after, 3))


def test_click_on_a_map_moves_the_occluder(explorer):
    r = explorer.result
    ax = explorer.panels.axes[3]
    # centre of map cell [3, 1]
    cy, cx = r.rows[3] + (r.size - 1) / 2, r.cols[1] + (r.size - 1) / 2
    pixels(explorer)
    x, y = ax.transData.transform((cx, cy))
    MouseEvent("button_press_event", explorer.fig.canvas, x, y, button=1)._process()
    assert (explorer.y, explorer.x) == (r.rows[3], r.cols[1])
    explorer.move_to(0, 0)
    assert (explorer.y, explorer.x) == (0, 0)


def test_errors_show_inside_and_widget_recovers(explorer):
    explorer.layer = "no.such.layer"
    assert "unknown layer" in explorer.errors.message
    explorer.layer = explorer.session.entry.middle_layer
    assert explorer.errors.message == ""
    assert explorer.result.layer == explorer.session.entry.middle_layer


def test_refreshes_on_session_change():
    s = Session("efficientnet_lite0")
    w = OcclusionExplorer(s, **SMALL)
    try:
        before = pixels(w)
        old = w.result
        s.set_image(load_sample("coffee"), name="coffee")
        assert w.sweeps == 2 and w.result is not old
        assert w.result.target_label != old.target_label
        after = pixels(w)
        for k in range(5):
            assert changed(panel(w, before, k), panel(w, after, k)), k
    finally:
        w.close()
    assert w._session_changed not in s._listeners


def test_event_loop_steps_and_newer_request_supersedes(session):
    """With a running loop a sweep advances one batch per turn; a newer size drops it."""

    async def scenario():
        w = OcclusionExplorer(session, size=64, stride=20, background=True)
        try:
            assert w.result is None and w.progress.layout.visibility == "visible"
            first = w._sweep[2]
            await asyncio.sleep(0)  # one batch at most
            w.size = 48  # supersedes the running sweep
            second = w._sweep[2]
            assert second is not first
            for _ in range(200):
                if w.result is not None:
                    break
                await asyncio.sleep(0)
            assert not first.done  # dropped half way
            assert w.result is not None and w.result.size == 48
            assert w.progress.layout.visibility == "hidden"
        finally:
            w.close()

    asyncio.run(scenario())


def test_explorer_tab_sweeps_once_for_the_shared_layer(session):
    """The explorer builds its Occlusion view with its own layer and channel: linking them
    afterwards must not start a second sweep, and the view follows the shared traits."""
    from zfwidgets.widgets.explorer import Explorer

    layer = "blocks.10.expand.act"
    ex = Explorer(session, layer=layer, channel=5)
    ex._tab_specs = [(t, (OcclusionExplorer, SMALL) if t == "Occlusion" else spec)
                     for t, spec in ex._tab_specs]
    view = ex.open_tab("Occlusion")
    assert view.sweeps == 1 and view.result.layer == layer
    assert (view.layer, view.channel) == (layer, 5) and view.result.channel == 5
    ex.channel = 9                                     # another map of the same layer: free
    assert view.sweeps == 1 and view.result.channel == 9
    ex.layer = "head.act"                              # another layer: one new sweep
    assert view.sweeps == 2 and view.result.layer == "head.act"
    assert view.channel == ex.channel == session.strongest_channel("head.act")
    gallery = ex.open_tab("Top-9 patches")             # driven by the explorer's selector
    assert gallery.selector is None and ex.selector in ex.children[1].children[0].children
    assert gallery.layer == "head.act" and gallery.channel == ex.channel
    ex.close()
