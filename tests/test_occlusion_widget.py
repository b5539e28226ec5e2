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
from zfwidgets.plots.deconv import projection_image  # noqa: E402
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
            first = w.runner.job
            await asyncio.sleep(0)  # one batch at most
            w.size = 48  # supersedes the running sweep
            second = w.runner.job
            assert second is not first and first.closed
            coarse = []                 # progressive: coarse exact stages drawn first
            for _ in range(400):
                if w.result is not None and w.partial:
                    coarse.append(w.result.shape)
                if w.result is not None and not w.partial:
                    break
                await asyncio.sleep(0)
            assert not first.done  # dropped half way
            assert w.result is not None and w.result.size == 48 and not w.partial
            assert coarse and all(c[0] < w.result.shape[0] for c in coarse)
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


# ----------------------------------------------------------------------------- coarse stages

def staged_job(calls):
    """A stand-in for ``occlusion_job`` with progressive stages: a coarse stage (an exact
    OcclusionResult on a grid of twice the stride) as ``Step.partial``, then the requested map."""
    from zfwidgets.backend.jobs import Job, Step
    from zfwidgets.backend.occlusion import occlusion

    def job(session, size, stride, target=None, layer=None, fill="gray", *, channel=None, **kw):
        coarse = occlusion(session, size, 2 * stride, layer=layer, channel=channel, fill=fill,
                           progress=False)
        calls.append((size, stride))

        def steps():
            yield Step(1, 3, note="coarse map", partial=coarse)
            yield Step(2, 3)
            final = occlusion(session, size, stride, layer=layer, channel=channel, fill=fill,
                              progress=False)
            yield Step(3, 3)
            return final
        return Job(steps(), what="staged occlusion")
    return job


async def until(condition, turns: int = 200) -> None:
    """Let the event loop turn until ``condition()`` holds (at most ``turns`` turns)."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)


def test_coarse_stages_are_drawn_as_they_arrive(session, monkeypatch):
    import zfwidgets.widgets.occlusion as module

    calls = []
    monkeypatch.setattr(module, "occlusion_job", staged_job(calls))

    async def scenario():
        w = OcclusionExplorer(session, size=64, stride=20, background=True)
        try:
            assert w.result is None and calls == [(64, 20)]
            await asyncio.sleep(0)                     # the first step: the coarse stage
            assert w.partial and w.result.stride == 40 and w.result.shape == (5, 5)
            coarse = pixels(w)
            for k in range(5):
                assert panel(w, coarse, k).std() > 3, f"panel {k} is blank"
            assert "coarse map" in w.status.value and w.runner.running
            channel = (w.channel + 1) % 1280           # a coarse stage follows the channel
            w.channel = channel
            assert w.partial and w.result.channel == channel and calls == [(64, 20)]
            assert changed(panel(w, coarse, 1), panel(w, pixels(w), 1))
            assert not changed(panel(w, coarse, 3), panel(w, pixels(w), 3))
            await until(lambda: not w.partial, 20)
            assert not w.partial and w.result.stride == 20 and w.result.shape == (9, 9)
            assert w.result.channel == channel and not w.runner.running
            assert changed(panel(w, coarse, 3), panel(w, pixels(w), 3))   # the finer map
            assert w.progress.layout.visibility == "hidden"
        finally:
            w.close()

    asyncio.run(scenario())


def test_a_newer_request_supersedes_a_coarse_stage(session, monkeypatch):
    import zfwidgets.widgets.occlusion as module

    calls = []
    monkeypatch.setattr(module, "occlusion_job", staged_job(calls))

    async def scenario():
        w = OcclusionExplorer(session, size=64, stride=20, background=True)
        try:
            await asyncio.sleep(0)
            first = w.runner.job
            assert w.partial and w.result.size == 64
            w.size = 48                                # while the first sweep refines
            assert first.closed and not first.done and w.runner.job is not first
            await until(lambda: not w.runner.running, 20)
            assert not w.partial and (w.result.size, w.result.stride) == (48, 20)
        finally:
            w.close()

    asyncio.run(scenario())
    # without an event loop the stages run at once and the last one is shown
    w = OcclusionExplorer(session, size=64, stride=20)
    try:
        assert not w.partial and w.result.stride == 20 and not w.runner.running
    finally:
        w.close()


# ----------------------------------------------------------------------------- hidden views

class Forwards:
    """Counts the forward passes of a model (a hook removed on exit)."""

    def __init__(self, model):
        self.model, self.count = model, 0

    def __enter__(self):
        self.handle = self.model.register_forward_pre_hook(self._hook)
        return self

    def _hook(self, module, args):
        self.count += 1

    def __exit__(self, *exc):
        self.handle.remove()


def counting(monkeypatch, module, name):
    """Count the calls of ``module.name`` (still calling it)."""
    calls = []
    real = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **k: calls.append(a[1:3]) or real(*a, **k))
    return calls


def test_a_hidden_view_computes_nothing_until_shown(monkeypatch):
    import zfwidgets.widgets.occlusion as module

    s = Session("efficientnet_lite0")
    w = OcclusionExplorer(s, **SMALL)
    try:
        assert w.sweeps == 1
        w.shown = False
        predictions = counting(monkeypatch, module, "occluded_prediction")
        projections = counting(monkeypatch, s, "project")
        with Forwards(s.model) as forwards:
            s.set_image(load_sample("coffee"), name="coffee")   # a new image, a new size ...
            w.size_slider.value = 100
            w.y = 10
        # no sweep, no occluded prediction, no projection; at most the session's own forward
        # pass of the new image, shared by every view (the strongest channel is read from it)
        assert w.sweeps == 1 and predictions == [] and projections == [] and w.stale
        assert forwards.count <= 1
        assert w.result.size == 64                # the old maps stay until shown
        w.shown = True                                # shown: one sweep for the latest state
        assert w.sweeps == 2 and not w.stale and len(predictions) == 1
        assert w.result.size == 100 and w.result.target_label == s.predict(1)[0][0]
        assert w.prediction == occluded_prediction(s, 10, w.x, 100)

        w.shown = False
        w.stride_slider.value = 60
        assert w.sweeps == 2 and w.stale
        w.update_now()                                # an explicit request computes hidden
        assert w.sweeps == 3 and w.result.stride == 60 and not w.stale
    finally:
        w.close()


def test_hiding_pauses_a_running_sweep(session):
    async def scenario():
        w = OcclusionExplorer(session, size=64, stride=20, background=True)
        try:
            await asyncio.sleep(0)
            job = w.runner.job
            done, shown = job.last.done, w.result       # a coarse stage, or nothing yet
            w.shown = False
            for _ in range(10):
                await asyncio.sleep(0)
            assert job.last.done == done and w.runner.running and w.result is shown
            w.shown = True                             # goes on where it stopped
            await until(lambda: w.result is not None and not w.partial)
            assert job.done and w.result.size == 64 and w.sweeps == 1
        finally:
            w.close()

    asyncio.run(scenario())


def test_explorer_hidden_tabs_compute_nothing(monkeypatch):
    """Only the selected tab's views compute: a session change reaches a hidden tab as a
    note (stale), and the tab computes once, for the latest state, when it is selected."""
    import zfwidgets.widgets.occlusion as module
    from zfwidgets.widgets.explorer import Explorer

    s = Session("efficientnet_lite0")
    ex = Explorer(s)
    ex._tab_specs = [(t, (OcclusionExplorer, SMALL) if t == "Occlusion" else spec)
                     for t, spec in ex._tab_specs]
    try:
        view = ex.open_tab("Occlusion")
        assert view.sweeps == 1 and view.shown and not ex.grid.shown
        grid_maps = ex.grid._maps_key
        ex.tabs.selected_index = 0                     # back to the feature maps
        assert not view.shown and ex.grid.shown and ex.deconv.shown
        predictions = counting(monkeypatch, module, "occluded_prediction")
        ex.layer = "head.act"
        ex.images.choose_sample("coffee")
        ex.layer = "blocks.10.expand.act"
        assert view.sweeps == 1 and predictions == [] and view.stale
        assert view.result.layer != "blocks.10.expand.act"
        assert ex.grid._maps_key != grid_maps          # the shown tab did follow
        ex.open_tab("Occlusion")                       # one sweep, for what is asked now
        assert view.sweeps == 2 and not view.stale and len(predictions) == 1
        assert view.result.layer == "blocks.10.expand.act" and view.channel == ex.channel
        assert view.result.target_label == s.predict(1)[0][0]

        before = ex.grid._maps_key                     # now the feature-maps tab is hidden
        ex.layer = "head.act"
        assert ex.grid._maps_key == before and ex.grid.stale and view.sweeps == 3
        ex.tabs.selected_index = 0
        assert ex.grid._maps_key[1] == "head.act" and not ex.grid.stale
    finally:
        ex.close()


def test_default_figure_fits_a_jupyterlab_output(explorer):
    """Five panels and the legend of (e) inside the figure, the figure no wider than a notebook
    output in JupyterLab with the file browser open (848 px in a 1280 px window, measured;
    tests/test_browser_lab.py checks it in the browser)."""
    fig = explorer.fig
    width, height = fig.bbox.width, fig.bbox.height
    assert width <= 840 and explorer.fig.canvas.layout.width == f"{int(round(width))}px"
    renderer = fig.canvas.get_renderer()
    fig.canvas.draw()
    for k, ax in enumerate(explorer.panels.axes):
        box = ax.get_tightbbox(renderer)                # with its title and label
        assert 0 <= box.x0 and box.x1 <= width and 0 <= box.y0 and box.y1 <= height, k
    legend = explorer.panels.legend.get_window_extent(renderer)
    assert 0 <= legend.x0 and legend.x1 <= width and legend.y0 >= 0
    right = explorer.panels.axes[4].get_window_extent(renderer)
    assert right.x1 <= width - 2                       # panel (e) whole, not cut at the edge


def test_map_d_sums_the_top_class_and_its_synonyms_and_says_so():
    """On the cat photo the view's map (d) is P(top class + the other cats in the top 5),
    equal to the session's summed sweep; the note names the classes; an explicit target
    overrides it, and panel (d) changes with it."""
    from zfwidgets.backend.defaults import target_classes

    s = Session("efficientnet_lite0", image=load_sample("chelsea"))
    cats = target_classes(s)
    assert len(cats) > 1  # the photo's probability is shared among cat classes
    w = OcclusionExplorer(s, **SMALL)
    try:
        assert w.targets == tuple(cats) and w.result.targets == tuple(cats)
        ref = s.occlusion(size=64, stride=40, target=cats, progress=False)
        np.testing.assert_allclose(w.result.prob, ref.prob, atol=1e-6)
        note = w.top5.value
        assert all(s.labels[c] in note for c in cats) and "near-synonyms" in note
        before = panel(w, pixels(w), 3)
        single = OcclusionExplorer(s, target=cats[0], **SMALL)
        try:
            assert single.result.targets == (cats[0],) and "as asked" in single.top5.value
            assert changed(before, panel(single, pixels(single), 3))
        finally:
            single.close()
    finally:
        w.close()


def test_panel_c_uses_the_default_rule_and_the_notes_say_why(explorer, session):
    """Lite0 has no max-pooling: panel (c) is the guided projection (the deconvnet's would be
    the same for every image), titled so, and the notes give the reason and the layer."""
    layer = explorer.layer
    assert explorer.rule == session.default_rule(layer) == "guided"
    assert explorer.panels.titles[2].get_text() == "(c) guided projection"
    notes = explorer.notes.value
    assert f"layer {layer}, map {explorer.channel}" in notes
    assert "max-pool" in session.rule_reason(layer)
    assert session.rule_reason(layer).split(":")[0] in notes
    expected = np.asarray(projection_image(session.project(layer, explorer.channel,
                                                            rule="guided")))
    np.testing.assert_array_equal(np.asarray(explorer._projection()), expected)
