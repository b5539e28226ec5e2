"""Widgets without a browser: traits in, figure pixels out (ipympl canvases drawn headless)."""

import datetime
import io

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from events import click

from zfwidgets import Session
from zfwidgets.errors import BadParameterError, UnknownLayerError, UnsupportedModelError
from zfwidgets.plots.deconv import projection_image
from zfwidgets.plots.mosaic import filters_to_rgb
from zfwidgets.widgets import (DeconvView, Explorer, FeatureMapGrid, ImageChooser, LayerSelector,
                               TopPredictions, explore)

# ipympl's own Toolbar construction warns under traitlets 5; not ours to fix.

NOW = datetime.datetime.now(datetime.timezone.utc)
MID = "blocks.7.depthwise.act"      # 480 maps 14x14
TOP = "head.act"                    # 1280 maps 7x7
EARLY = "blocks.1.expand.act"       # 96 maps 112x112


def pixels(fig):
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def changed(before, after):
    return before.shape != after.shape or (before != after).any()


def click_map(grid, k, dy=None, dx=None):
    y0, x0 = grid.mosaic.layout.origin(k)
    h, w = grid.mosaic.layout.tile
    click(grid.fig, grid.mosaic.ax, x0 + (w - 1) / 2 if dx is None else x0 + dx,
          y0 + (h - 1) / 2 if dy is None else y0 + dy)


def canvases():
    from ipympl.backend_nbagg import Canvas
    from ipywidgets.widgets.widget import _instances

    return sum(isinstance(w, Canvas) for w in list(_instances.values()))


def png_bytes(color=(200, 30, 30), size=(96, 80)):
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def shared():
    s = Session()
    s.layer_table()
    return s


@pytest.fixture
def session():
    return Session()


# ----------------------------------------------------------------------------- selector

def test_layer_selector_labels_and_layer_trait(shared):
    sel = LayerSelector(shared)
    labels = dict((v, k) for k, v in sel.dropdown.options)
    assert sel.layer == MID and sel.dropdown.value == MID
    assert labels[MID] == f"{MID} · ReLU6 · 480×14×14 · RF 147px"
    assert "blocks.7" not in labels                     # containers hidden by default
    assert list(labels) == [i.name for i in shared.layer_table() if i.is_leaf]
    sel.dropdown.value = TOP
    assert sel.layer == TOP
    sel.layer = "stem.conv"
    assert sel.dropdown.value == "stem.conv"
    sel.step(+1)
    assert sel.layer == "stem.bn"
    sel.all_box.value = True                             # "containers too"
    assert not sel.leaves_only and len(sel.dropdown.options) == len(shared.layers)
    sel.layer = "blocks.7"
    sel.leaves_only = True                               # the selected container stays listed
    assert sel.dropdown.value == "blocks.7"
    with pytest.raises(UnknownLayerError, match="did you mean"):
        sel.layer = "blocks.7.depthwise.actt"
    sel.close()


# ----------------------------------------------------------------------------- grid

def test_grid_layer_channel_and_weights_change_pixels(shared):
    grid = FeatureMapGrid(shared)
    assert grid.layer == MID and grid.channel == shared.strongest_channel(MID)
    artist = grid.mosaic.image
    data = grid.mosaic.data
    y0, x0 = grid.mosaic.layout.origin(7)
    act = shared.activation(MID)[7].numpy()
    span = act.max() - act.min()
    expect = (act - act.min()) / span if span > 0 else np.zeros_like(act)
    np.testing.assert_allclose(data[y0:y0 + 14, x0:x0 + 14], expect, atol=1e-5)

    before = pixels(grid.fig)
    grid.channel = 3
    after = pixels(grid.fig)
    assert changed(before, after)
    y0, x0 = grid.mosaic.layout.origin(3)
    assert grid.mosaic.highlight.get_xy() == (x0 - 0.5, y0 - 0.5)
    _, y, x, _ = shared.strongest(MID, 3)
    assert grid.mosaic.marker.get_data()[0][0] == x0 + x
    assert "map <b>3</b>" in grid.status.value

    grid.layer = TOP                                   # 1280 maps: same artist, new data
    assert grid.mosaic.image is artist and len(grid.mosaic.ax.images) == 1
    assert grid.mosaic.layout.count == 1280
    assert grid.channel == shared.strongest_channel(TOP)
    top = pixels(grid.fig)
    assert changed(after, top)

    grid.mode = "weights"                              # jumps to the first RGB convolution
    assert grid.layer == "stem.conv"
    rgb = grid.mosaic.data
    assert rgb.ndim == 3
    y0, x0 = grid.mosaic.layout.origin(5)
    w = filters_to_rgb(shared.model.get_submodule("stem.conv").weight)
    np.testing.assert_allclose(rgb[y0:y0 + 3, x0:x0 + 3], w[5], atol=1e-6)
    assert changed(top, pixels(grid.fig))
    grid.layer = MID                                   # not an RGB conv: back to activations
    assert grid.mode == "activations" and grid.mosaic.data.ndim == 2
    grid.close()


def test_grid_click_selects_the_map_under_the_mouse(shared):
    grid = FeatureMapGrid(shared, TOP)
    grid.channel = 0
    before = pixels(grid.fig)
    click_map(grid, 777)
    assert grid.channel == 777
    y0, x0 = grid.mosaic.layout.origin(777)
    assert grid.mosaic.highlight.get_xy() == (x0 - 0.5, y0 - 0.5)
    assert changed(before, pixels(grid.fig))
    click_map(grid, 12, dy=0, dx=6)                    # a corner pixel of map 12 still hits it
    assert grid.channel == 12
    click_map(grid, 12, dy=7.2, dx=3)                  # the separator under map 12: nothing
    assert grid.channel == 12
    click(grid.fig, grid.mosaic.ax, *grid.mosaic.layout.shape[::-1])  # outside the mosaic
    assert grid.channel == 12 and not grid.errors.message
    grid.close()


def test_clicks_in_a_burst_collapse_into_the_last(shared, monkeypatch):
    """In a kernel (an event loop runs), a click on an idle kernel is acted on at once; of the
    clicks queued while the kernel was busy with it, only the newest is acted on."""
    import asyncio

    grid = FeatureMapGrid(shared, MID)
    view = DeconvView(shared, MID)
    import traitlets

    traitlets.link((grid, "channel"), (view, "channel"))
    real, calls = shared.project, []
    monkeypatch.setattr(shared, "project", lambda *a, **k: calls.append(a[1]) or real(*a, **k))

    grid.fig.canvas.draw()
    height = grid.fig.canvas.get_renderer().height

    def press(k):                                     # as the front-end sends it
        y0, x0 = grid.mosaic.layout.origin(k)
        px, py = grid.mosaic.ax.transData.transform((x0 + 6, y0 + 6))
        grid.fig.canvas._handle_message(grid.fig.canvas, {
            "type": "button_press", "x": float(px), "y": float(height - py), "button": 0,
            "buttons": 1, "modifiers": []}, [])

    async def burst():
        press(3)                                      # the kernel was idle: at once
        assert grid.channel == view.channel == 3 and calls == [3]
        for k in (4, 5, 6):                           # queued up while it projected
            press(k)
        assert grid.channel == 3 and calls == [3]     # nothing happened yet
        await asyncio.sleep(0.2)

    asyncio.run(burst())
    assert grid.channel == view.channel == 6
    assert calls == [3, 6]                            # one projection for the queued clicks
    for w in (grid, view):
        w.close()


# ----------------------------------------------------------------------------- deconv view

def test_deconv_view_rule_scope_channel_change_pixels(shared):
    from zfwidgets.backend.defaults import informative_channel
    c = informative_channel(shared, MID)               # issue 12: alive, not flat
    view = DeconvView(shared, MID)
    assert view.channel == c
    assert view.rule == shared.default_rule(MID)       # issue 12: the session's default rule
    view.rule = "deconvnet"
    _, y, x, _ = shared.strongest(MID, c)
    whole = shared.project(MID, c, (y, x), "deconvnet")
    top, left, bottom, right = shared.receptive_field(MID, y, x)
    # issue 12: by default the unit's projection is cut to its receptive field, normalised there
    assert view.extent == "receptive field"
    assert float(whole.abs().sum()) == pytest.approx(
        float(whole[..., top:bottom, left:right].abs().sum()))   # nothing outside is lost
    np.testing.assert_allclose(view.panel.projection.get_array(),
                               projection_image(whole[..., top:bottom, left:right]), atol=1e-6)
    assert not view.panel.boxes[1].get_visible() and "its receptive field" in \
        view.panel_titles[1].value
    assert "in the receptive field" in view.header.value
    cropped = pixels(view.fig)
    view.extent_buttons.value = "whole image"                # the toggle drives the trait
    assert view.extent == "whole image"
    np.testing.assert_allclose(view.panel.projection.get_array(), projection_image(whole),
                               atol=1e-6)
    assert view.panel.boxes[0].get_xy() == (left - 0.5, top - 0.5)
    assert view.panel.boxes[1].get_visible()
    np.testing.assert_allclose(view.panel.crop.get_array(),
                               np.clip(shared.display_image[top:bottom, left:right], 0, 1))
    states = [cropped, pixels(view.fig)]
    view.rule = "guided"
    assert view.rule_buttons.value == "guided"
    states.append(pixels(view.fig))
    assert "guided: strongest unit" in view.panel_titles[1].value
    view.rule_buttons.value = "gradient"               # the toggle drives the trait
    assert view.rule == "gradient"
    states.append(pixels(view.fig))
    view.scope = "map"
    np.testing.assert_allclose(view.panel.projection.get_array(),
                               projection_image(shared.project(MID, c, None, "gradient")),
                               atol=1e-6)
    states.append(pixels(view.fig))
    view.channel = 12
    states.append(pixels(view.fig))
    view.layer = EARLY
    assert view.channel == shared.strongest_channel(EARLY)
    states.append(pixels(view.fig))
    for a, b in zip(states, states[1:]):
        assert changed(a, b)
    with pytest.raises(BadParameterError):
        view.rule = "lrp"
    view.close()


def test_deconv_error_shows_inside_and_next_action_works(shared):
    view = DeconvView(shared, MID, 0)
    before = pixels(view.fig)
    view.channel = 4000                                # no such map: message, old picture kept
    assert "channel 4000 is out of range" in view.errors.message
    assert view.errors.layout.display is None
    assert not changed(before, pixels(view.fig))
    view.channel = 2                                   # the next action works and clears it
    assert view.errors.message == "" and view.errors.layout.display == "none"
    assert changed(before, pixels(view.fig))
    view.close()


def test_newer_request_supersedes_older(shared, monkeypatch):
    view = DeconvView(shared, MID, 0, rule="deconvnet", extent="whole image")
    real = shared.project
    calls = []

    def project(layer, channel, position=None, rule="deconvnet"):
        calls.append(channel)
        if channel == 1:          # while channel 1 is being projected, the user clicks map 2
            view.channel = 2
        return real(layer, channel, position, rule)

    monkeypatch.setattr(shared, "project", project)
    view.channel = 1
    assert calls == [1, 2]
    _, y, x, _ = shared.strongest(MID, 2)
    np.testing.assert_allclose(view.panel.projection.get_array(),
                               projection_image(real(MID, 2, (y, x), "deconvnet")), atol=1e-6)
    assert "map <b>2</b>," in view.header.value
    view.close()


# ----------------------------------------------------------------------------- images

def test_image_chooser_sample_upload_and_bad_upload(session):
    chooser = ImageChooser(session)
    grid = FeatureMapGrid(session, MID)
    top5 = TopPredictions(session)
    assert chooser.dropdown.value == "chelsea" and "chelsea" in chooser.current.value
    g0, t0 = pixels(grid.fig), pixels(top5.fig)

    chooser.dropdown.value = "coffee"
    assert session.image_name == "coffee"
    assert top5.bars.labels[0].get_text() == "espresso"
    g1, t1 = pixels(grid.fig), pixels(top5.fig)
    assert changed(g0, g1) and changed(t0, t1)

    chooser.upload.value = ({"name": "broken.jpg", "type": "image/jpeg", "size": 9,
                             "content": memoryview(b"not a jpg"), "last_modified": NOW},)
    assert "broken.jpg" in chooser.errors.message or "not a recognised" in chooser.errors.message
    assert chooser.errors.layout.display is None
    assert session.image_name == "coffee" and chooser.upload.value == ()
    assert not changed(g1, pixels(grid.fig))

    chooser.upload.value = ({"name": "red.png", "type": "image/png", "size": 10,
                             "content": memoryview(png_bytes()), "last_modified": NOW},)
    assert chooser.errors.message == ""
    assert session.image_name == "red.png" and chooser.dropdown.value is None
    assert "red.png" in chooser.current.value
    assert changed(g1, pixels(grid.fig))
    chooser.dropdown.value = "astronaut"               # and the samples still work
    assert session.image_name == "astronaut"
    for w in (chooser, grid, top5):
        w.close()


# ----------------------------------------------------------------------------- explorer

def test_explorer_links_views_and_redraws_once(session, monkeypatch):
    ex = Explorer(session)
    assert ex.layer == ex.grid.layer == ex.deconv.layer == ex.selector.layer == MID
    assert ex.channel == ex.grid.channel == ex.deconv.channel
    real = session.project
    calls = []
    monkeypatch.setattr(session, "project",
                        lambda *a, **k: calls.append(a[:2]) or real(*a, **k))

    d0, g0 = pixels(ex.deconv.fig), pixels(ex.grid.fig)
    ex.selector.dropdown.value = TOP                   # a layer chosen in the dropdown
    best = session.strongest_channel(TOP)
    assert ex.layer == ex.grid.layer == ex.deconv.layer == TOP
    assert ex.channel == ex.grid.channel == ex.deconv.channel == best
    assert calls == [(TOP, best)]                      # one projection, never a half state
    d1, g1 = pixels(ex.deconv.fig), pixels(ex.grid.fig)
    assert changed(d0, d1) and changed(g0, g1)

    calls.clear()
    click_map(ex.grid, 100)                            # a click in the grid...
    assert ex.channel == ex.deconv.channel == 100      # ...selects the map everywhere
    assert calls == [(TOP, 100)]
    assert changed(d1, pixels(ex.deconv.fig))

    ex.rule = "guided"
    assert ex.deconv.rule == "guided"
    ex.channel = 5                                     # driven from code
    assert ex.grid.channel == 5 and "map <b>5</b>," in ex.deconv.header.value
    d2 = pixels(ex.deconv.fig)
    ex.images.dropdown.value = "coffee"                # a new image redraws every view
    assert changed(d2, pixels(ex.deconv.fig))
    assert ex.top5.bars.labels[0].get_text() == "espresso"
    assert not any(w.errors.message for w in (ex, ex.grid, ex.deconv, ex.images))
    ex.close()


def test_explorer_model_change_and_model_error(session, monkeypatch):
    ex = Explorer(session)
    ex.model_dropdown.value = "zfnet_small"
    assert session.entry.name == "zfnet_small"
    assert ex.layer in session.layers and ex.grid.layer == ex.deconv.layer == ex.layer
    assert ex.selector.dropdown.value == ex.layer
    assert ex.selector.dropdown.options[0][1] == session.layer_table()[0].name
    assert not any(w.errors.message for w in (ex, ex.grid, ex.deconv))
    g = pixels(ex.grid.fig)

    def refuse(model, **kwargs):
        raise UnsupportedModelError(f"model {model!r} uses something unsupported")

    monkeypatch.setattr(session, "set_model", refuse)
    ex.model_dropdown.value = "zfnet"
    assert "'zfnet' uses something unsupported" in ex.errors.message
    assert ex.model_dropdown.value == "zfnet_small"    # the choice snaps back
    monkeypatch.undo()
    ex.grid.channel = 1 if ex.grid.channel != 1 else 2  # and the explorer keeps working
    assert changed(g, pixels(ex.grid.fig))
    ex.model_dropdown.value = "efficientnet_lite0"
    assert ex.errors.message == "" and ex.layer == MID
    ex.close()


def test_no_figure_or_canvas_leak():
    small = Session("zfnet_small")                     # the leak does not depend on the model
    layers = ["features.relu1", "features.relu2", "features.relu3"]
    figs, start = plt.get_fignums(), canvases()
    ex = Explorer(small)
    assert canvases() == start + 3
    for i in range(9):
        ex.layer = layers[i % 3]
        ex.channel = i
        ex.rule = ["deconvnet", "guided", "gradient"][i % 3]
        ex.grid.mode = "weights" if i % 4 == 0 else "activations"
        ex.images.choose_sample(["coffee", "chelsea"][i % 2])
    assert not any(w.errors.message for w in (ex, ex.grid, ex.deconv, ex.images))
    assert canvases() == start + 3 and plt.get_fignums() == figs
    ex.close()
    assert canvases() == start and plt.get_fignums() == figs


def test_explore_one_liner_and_optional_tabs(shared):
    import ipywidgets as W
    import traitlets as T

    ex = explore(shared, layer=EARLY, channel=3, rule="gradient")
    assert ex.session is shared and (ex.layer, ex.channel, ex.deconv.rule) == (EARLY, 3, "gradient")
    titles = list(ex.tabs.titles)
    assert titles[0] == "Feature maps"
    for title in ("Occlusion", "Top-9 patches"):       # present once their modules exist
        assert (title in titles) != (title in ex.missing_tabs)

    class Fake(W.VBox):                                # stands in for the (slow) real views
        layer = T.Unicode("")
        channel = T.Int(0)

        def __init__(self, session, *, layer, channel, flag=None):
            super().__init__()
            self.session = session
            self.built_with = (layer, channel, flag)   # the explorer's view, before linking

    ex._tab_specs = [("Occlusion", (Fake, {"flag": 1})),
                     ("Broken", (lambda s, **kw: 1 / 0, {}))]
    ex.tabs.children = list(ex.tabs.children[:1]) + [W.VBox(), W.VBox()]
    ex.tabs.titles = [titles[0], "Occlusion", "Broken"]
    ex.tabs.selected_index = 1                         # opening the tab builds the view once
    view = ex.extra["Occlusion"]
    assert isinstance(view, Fake) and ex.tabs.children[1].children == (view,)
    assert view.built_with == (EARLY, 3, 1)
    assert (view.layer, view.channel) == (EARLY, 3)
    view.channel = 7                                   # linked both ways
    assert ex.channel == ex.grid.channel == ex.deconv.channel == 7
    ex.layer = MID
    assert view.layer == MID and view.channel == ex.channel
    assert ex.open_tab("Occlusion") is view
    assert ex.open_tab("Broken") is None               # a failing view shows its error
    assert "ZeroDivisionError" in ex.tabs.children[2].children[0].message
    ex.close()


def test_only_a_missing_package_leaves_a_tab_out(shared, tmp_path, monkeypatch):
    """A tab whose module needs an uninstalled package is left out, with the reason; any other
    error importing a tab's module (a bug) surfaces instead of hiding the tab."""
    import zfwidgets.widgets.explorer as E

    (tmp_path / "zf_tab_needs_pkg.py").write_text("import zf_no_such_package\n")
    (tmp_path / "zf_tab_broken.py").write_text("x = 1 / 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ZeroDivisionError):
        E._optional("zf_tab_broken", "View")
    with pytest.raises(ModuleNotFoundError, match="zfwidgets.widgets.no_such_tab"):
        E._optional("zfwidgets.widgets.no_such_tab", "View")
    with pytest.raises(AttributeError, match="NoSuchView"):
        E._optional("zfwidgets.widgets.grid", "NoSuchView")
    assert E._optional("zfwidgets.widgets.grid", "FeatureMapGrid") == (FeatureMapGrid, None)

    monkeypatch.setattr(E, "OPTIONAL_TABS", (("Needs", "zf_tab_needs_pkg", "View", {}),)
                        + E.OPTIONAL_TABS)
    ex = Explorer(shared)
    assert "Needs" not in ex.tabs.titles and list(ex.tabs.titles)[1:] == \
        [title for title, *_ in E.OPTIONAL_TABS[1:]]
    assert "'zf_no_such_package'" in ex.missing_tabs["Needs"]
    ex.close()
    monkeypatch.setattr(E, "OPTIONAL_TABS", (("Broken", "zf_tab_broken", "View", {}),))
    with pytest.raises(ZeroDivisionError):
        Explorer(shared)


def test_canvas_frames_rebuild_the_figure():
    """Every frame sent to the browser is the whole figure (ipympl's browser side drops a frame
    still loading when the next arrives; a diff after a dropped frame would leave it blank)."""
    from zfwidgets.widgets.canvas import canvas_figure

    fig = canvas_figure(2.0, 1.5, dpi=50)
    ax = fig.add_axes((0, 0, 1, 1))
    image = ax.imshow(np.random.default_rng(0).uniform(size=(6, 8)), cmap="gray")
    fig.canvas.syncing_data_url = False                # as with a browser connected
    frames = []
    fig.canvas.send_binary = lambda data: frames.append((fig.canvas._current_image_mode, data))
    for step in range(3):
        if step:
            image.set_data(np.random.default_rng(step).uniform(size=(6, 8)))
        fig.canvas.draw()
        assert len(frames) == step + 1
        mode, data = frames[-1]
        frame = np.asarray(Image.open(io.BytesIO(data)).convert("RGBA"))
        assert mode == "full"
        np.testing.assert_array_equal(frame, np.asarray(fig.canvas.buffer_rgba()))
    close_figure = __import__("zfwidgets.widgets", fromlist=["close_figure"]).close_figure
    close_figure(fig)


def test_canvas_pushes_frames_once_the_browser_is_ready():
    """A change is sent as a frame at once when the browser has asked for a frame since the
    last one (it has them all); otherwise the browser is asked to ask, and the frame follows
    its request. Every frame is followed by a "draw" event that a live browser answers."""
    import json

    from zfwidgets.widgets.canvas import canvas_figure, close_figure

    fig = canvas_figure(2.0, 1.5, dpi=50)
    ax = fig.add_axes((0, 0, 1, 1))
    image = ax.imshow(np.zeros((6, 8)), cmap="gray", vmin=0, vmax=1)
    canvas = fig.canvas
    canvas.syncing_data_url = False                    # as with a browser connected
    out = []

    def send(content, buffers=None):
        message = json.loads(content["data"])
        out.append(("frame", bytes(buffers[0])) if message["type"] == "binary"
                   else ("event", message["type"]))

    canvas.send = send
    shown = None

    def receive():                                     # what the browser paints
        nonlocal shown
        for kind, data in out:
            if kind != "frame":
                continue
            frame = np.asarray(Image.open(io.BytesIO(data)).convert("RGBA"))
            if shown is None or canvas._current_image_mode == "full":
                shown = frame.copy()
            else:                                      # diff: changed pixels, others zero
                mask = frame.view(np.uint32)[..., 0] != 0
                shown[mask] = frame[mask]
        return [data for kind, data in out if kind == "frame"]

    def browser_asks():
        del out[:]
        canvas._handle_message(canvas, {"type": "draw"}, [])
        return receive()

    def change(value):
        del out[:]
        image.set_data(np.full((6, 8), value))
        canvas.draw_idle()
        receive()
        return list(out)

    def painted():
        return np.array_equal(shown, np.asarray(canvas.buffer_rgba()))

    assert change(0.3) == [("event", "draw")]          # not asked yet: ask the browser
    assert len(browser_asks()) == 1 and out[-1] == ("event", "draw")   # frame, then a ping
    assert painted()
    assert browser_asks() == []                        # the ping's answer: nothing new
    pushed = change(0.6)                               # ready: the frame goes at once
    assert [kind for kind, _ in pushed] == ["frame", "event"] and painted()
    assert browser_asks() == []                        # (the browser got it)
    assert change(0.9) != [] and painted()
    before = shown.copy()
    assert change(0.1) == [("event", "draw")]          # not asked since the last frame
    assert np.array_equal(shown, before)               # still the 0.9 picture
    assert len(browser_asks()) == 1 and painted()      # the request brings the last change
    assert not np.array_equal(shown, before)
    close_figure(fig)


def test_widgets_import_without_display():
    import subprocess
    import sys

    code = ("import os; os.environ.pop('DISPLAY', None); import zfwidgets.widgets, sys; "
            "print('matplotlib.pyplot' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"               # widgets never go through pyplot


def test_explorer_says_which_model_runs_and_marks_models_without_weights(session):
    """The dropdown's labels mark models whose weights are random or not here; the line
    under it names the running model, its weights and why it runs; it follows a change."""
    from zfwidgets.models import model_status

    ex = Explorer(session)
    try:
        labels = dict((name, label) for label, name in ex.model_dropdown.options)
        assert labels["efficientnet_lite0"] == "efficientnet_lite0"
        assert labels["zfnet"] == "zfnet · random weights"
        assert labels["alexnet"] == f"alexnet · {model_status('alexnet')}"
        note = ex.model_note.value
        assert session.entry.name in note and "ImageNet weights" in note
        ex.model_dropdown.value = "zfnet_small"
        assert "zfnet_small (random weights): chosen in the explorer" in ex.model_note.value
        session.set_model("efficientnet_lite0")      # from code: the line follows
        assert ex.model_dropdown.value == "efficientnet_lite0"
        assert "efficientnet_lite0 (ImageNet weights)" in ex.model_note.value
    finally:
        ex.close()
