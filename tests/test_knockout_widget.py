"""Knocking maps out from the explorer (issue 13, item 3): the grid's toggle and shift-click
change the session's knock-outs in place, and the top-5, the occlusion view and the Explain tab
recompute for the knocked-out model while keeping their layer and map."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("module://ipympl.backend_nbagg")

from events import click  # noqa: E402
from zfwidgets import Session, load_sample  # noqa: E402
from zfwidgets.backend.explain import intact_probabilities  # noqa: E402
from zfwidgets.widgets.explain import ExplainView  # noqa: E402
from zfwidgets.widgets.explorer import Explorer  # noqa: E402
from zfwidgets.widgets.occlusion import OcclusionExplorer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LAYER = "blocks.7.depthwise.act"
SMALL = dict(size=64, stride=40)            # 5 x 5 occluder positions: fast sweeps


@pytest.fixture
def explorer():
    session = Session("efficientnet_lite0", load_sample("chelsea"))
    ex = Explorer(session, layer=LAYER, channel=7)
    small = {"Occlusion": (OcclusionExplorer, SMALL),
             "Explain": (ExplainView, dict(size=56, stride=56, background=False))}
    ex._tab_specs = [(t, small.get(t, spec)) for t, spec in ex._tab_specs]
    yield ex
    ex.close()


def pixels(fig) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def click_map(grid, k, modifiers=()):
    y0, x0 = grid.mosaic.layout.origin(k)
    h, w = grid.mosaic.layout.tile
    click(grid.fig, grid.mosaic.ax, x0 + w / 2, y0 + h / 2, modifiers=modifiers)


def tile(grid, buf, k):
    """The pixels of map ``k``'s tile in the grid's canvas."""
    ax, (y0, x0), (h, w) = grid.mosaic.ax, grid.mosaic.layout.origin(k), grid.mosaic.layout.tile
    (left, top), (right, bottom) = ax.transData.transform([(x0 - 0.5, y0 - 0.5),
                                                           (x0 + w - 0.5, y0 + h - 0.5)])
    H = buf.shape[0]
    return buf[int(H - top):int(H - bottom), int(left):int(right)]


def is_red(region) -> bool:
    r, g, b = (region[..., i].astype(int) for i in range(3))
    return bool(((r > 180) & (g < 80) & (b < 110)).any())


def test_toggle_and_shift_click_knock_maps_out_and_the_top5_follows(explorer):
    ex, session = explorer, explorer.session
    grid, top5 = ex.grid, ex.top5
    intact = session.probabilities().clone()
    before = pixels(grid.fig)
    assert not is_red(tile(grid, before, 40)) and grid.restore_button.layout.display == "none"

    grid.knock_out = True                                 # the toggle: a click knocks out
    assert grid.knock_button.value
    click_map(grid, 40)
    assert session.knockouts == {LAYER: (40,)}
    assert (ex.layer, ex.channel) == (LAYER, 7)           # the selection stays
    assert torch.all(session.activation(LAYER)[40] == 0)
    after = pixels(grid.fig)
    assert is_red(tile(grid, after, 40)) and not is_red(tile(grid, after, 41))
    assert "knocked out" in grid.knocked_note.value and grid.restore_button.layout.display is None

    grid.knock_out = False                                # without it, shift-click does it
    click_map(grid, 41, modifiers=["shift"])
    click_map(grid, 100)                                  # a plain click selects
    assert session.knockouts == {LAYER: (40, 41)} and ex.channel == 100

    strongest = session.activation(LAYER).flatten(1).sum(1).topk(10).indices.tolist()
    session.set_knockouts({LAYER: strongest})
    probs = session.probabilities()
    assert not torch.allclose(probs, intact, atol=1e-4)
    shown = probs.topk(5)
    assert [b.get_width() for b in top5.bars.bars] == pytest.approx(shown.values.tolist())
    ticks_x, ticks_y = top5.bars.before.get_data()     # each class's intact probability
    assert list(ticks_x) == pytest.approx(intact[shown.indices].tolist(), abs=1e-6)
    assert list(ticks_y) == [0, 1, 2, 3, 4]
    assert "10 maps knocked out" in top5.bars.title.get_text()
    assert top5.bars.values[0].get_text() == \
        f"{100 * intact[shown.indices[0]]:.0f} \u2192 {100 * shown.values[0]:.1f}%"
    torch.testing.assert_close(intact_probabilities(session), intact)
    ex.channel = strongest[0]                             # a knocked-out map: said, not "dead"
    assert f"map {strongest[0]} is knocked out" in ex.deconv.header.value
    assert "dead" not in ex.deconv.header.value

    grid.restore_button.click()
    assert session.knockouts == {} and torch.equal(session.probabilities(), intact)
    assert grid.restore_button.layout.display == "none" and grid.knocked_note.value == ""
    assert len(top5.bars.before.get_data()[0]) == 0
    assert not is_red(tile(grid, pixels(grid.fig), 40))


def test_knocking_out_again_brings_the_map_back_and_the_filters_refuse(explorer):
    grid, session = explorer.grid, explorer.session
    grid.knock_out = True
    click_map(grid, 5)
    click_map(grid, 5)
    assert session.knockouts == {}
    grid.mode = "weights"                                 # the layer-1 filters: no knock-outs
    assert grid.knock_button.disabled
    version = session.version
    click_map(grid, 3)
    assert session.knockouts == {} and session.version == version
    assert "layer-1 filters" in grid.errors.message
    grid.mode = "activations"
    grid.layer = LAYER
    assert not grid.knock_button.disabled
    click_map(grid, 3)                                    # the view stayed usable
    assert session.knockouts == {LAYER: (3,)}


def test_the_occlusion_view_recomputes_for_the_knocked_out_model_keeping_its_map(explorer):
    ex, session = explorer, explorer.session
    view = ex.open_tab("Occlusion")
    ex.layer = "head.act"
    ex.channel = 11
    sweeps, intact = view.sweeps, view.result.prob.copy()
    ex.tabs.selected_index = 0                            # knock out from the grid
    ex.grid.knock_out = True
    click_map(ex.grid, 11)
    assert session.knockouts == {"head.act": (11,)}
    assert view.sweeps == sweeps                          # hidden: nothing computed yet
    ex.tabs.selected_index = 1
    assert view.sweeps == sweeps + 1
    assert (view.layer, view.channel) == ("head.act", 11) and view.result.channel == 11
    want = session.occlusion(layer="head.act", channel=11, target=list(view.result.targets),
                             progress=False, **SMALL)
    np.testing.assert_allclose(view.result.prob, want.prob, atol=1e-6)
    assert np.all(view.result.feature == 0)               # the knocked-out map itself
    assert not np.allclose(view.result.prob, intact, atol=1e-4)


def test_the_explain_tab_shows_the_class_maps_of_the_knocked_out_model(explorer):
    ex, session = explorer, explorer.session
    view = ex.open_tab("Explain")
    before = view.explanation.maps["saliency"].map.copy()
    strongest = session.activation(LAYER).flatten(1).sum(1).topk(20).indices.tolist()
    session.set_knockouts({LAYER: strongest})
    now = view.explanation.maps["saliency"].map
    np.testing.assert_allclose(now, session.saliency(view.target).map, atol=1e-6)
    assert not np.allclose(now, before, atol=1e-6)
