"""PatchGallery without a browser: traits and clicks in, figure pixels out."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import traitlets

from events import click

from zfwidgets import Session
from zfwidgets.backend.project import gallery
from zfwidgets.data.datasets import ImageList, sample_collection
from zfwidgets.plots.deconv import projection_image
from zfwidgets.plots.gallery import fig2_figure, fit_tile, mosaic, tile_index
from zfwidgets.widgets.gallery import PatchGallery
from zfwidgets.widgets.grid import FeatureMapGrid


MID = "blocks.7.depthwise.act"   # 480 maps 14x14, RF 147
EARLY = "blocks.1.expand.act"    # 96 maps 112x112, RF 7


def pixels(fig, ax=None):
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    if ax is None:
        return rgb
    x0, y0, x1, y1 = (int(round(v)) for v in ax.bbox.extents)
    h = rgb.shape[0]
    return rgb[h - y1:h - y0, x0:x1]


def tile_center(artists, index):
    r, c = divmod(index, artists.cols)
    step = artists.tile + artists.gap
    return artists.gap + c * step + artists.tile / 2, artists.gap + r * step + artists.tile / 2


@pytest.fixture(scope="module")
def session():
    s = Session()
    s.layer_table()
    return s


@pytest.fixture(scope="module")
def data():
    return sample_collection(samples=["chelsea", "coffee"])  # 44 images


@pytest.fixture(scope="module")
def mined(session, data):
    g = PatchGallery(session, data, layer=MID, channel=3, layers=[EARLY], auto=False)
    assert not g.mined() and "press <b>Mine</b>" in g.status.value
    g.mine_button.click()
    assert g.mined(MID) and g.mined(EARLY) and not g.errors.message
    yield g
    g.close()


def test_mine_button_then_channel_change_changes_the_patches(mined, session, data):
    g = mined
    assert g.current.channel == 3 and len(g.current) == 9
    ref = gallery(session, g.result, MID, 3)
    top = g.result[MID]  # the nine strongest of channel 3, strongest first
    assert g.current.image_ids == top.image[3].tolist()
    assert g.current.image_ids == ref.image_ids and g.current.boxes == ref.boxes
    assert len(set(g.current.image_ids)) == 9  # one hit per image, as in the paper
    expect = mosaic(ref.patches, tile=g.artists.tile, gap=g.artists.gap)
    np.testing.assert_allclose(g.artists.im_patches.get_array(), expect, atol=1e-6)
    patches_before = pixels(g.fig, g.artists.ax_patches)
    proj_before = pixels(g.fig, g.artists.ax_projections)

    g.channel = 11
    assert g.current.channel == 11 and g.channel_slider.value == 11
    assert (pixels(g.fig, g.artists.ax_patches) != patches_before).any()
    assert (pixels(g.fig, g.artists.ax_projections) != proj_before).any()
    assert "channel <b>11</b>" in g.status.value

    g.channel_slider.value = 12  # the slider drives the trait too
    assert g.channel == 12 and g.current.channel == 12

    before = pixels(g.fig, g.artists.ax_patches)
    g.layer = EARLY  # mined in the same pass: no new mining, small receptive fields
    assert g.current.layer == EARLY and g.channel_slider.max == 95
    assert all(p.shape[0] <= 7 and p.shape[1] <= 7 for p in g.current.patches)
    assert (pixels(g.fig, g.artists.ax_patches) != before).any()

    before = pixels(g.fig, g.artists.ax_projections)
    new = "deconvnet" if g.rule == "guided" else "guided"  # issue 12: starts on default_rule
    g.rule = new
    assert g.current.rule == new and g.rule_dropdown.value == new
    assert (pixels(g.fig, g.artists.ax_projections) != before).any()


def test_a_grid_click_drives_the_gallery(mined, session):
    g = mined
    g.layer, g.channel = MID, 3
    grid = FeatureMapGrid(session, MID, 3)
    link = traitlets.link((grid, "channel"), (g, "channel"))
    try:
        before = pixels(g.fig, g.artists.ax_patches)
        y0, x0 = grid.mosaic.layout.origin(42)
        h, w = grid.mosaic.layout.tile
        click(grid.fig, grid.mosaic.ax, x0 + (w - 1) / 2, y0 + (h - 1) / 2)
        assert grid.channel == 42
        assert g.channel == 42 and g.current.channel == 42
        assert (pixels(g.fig, g.artists.ax_patches) != before).any()
        ref = gallery(session, g.result, MID, 42, k=9)
        assert g.current.image_ids == ref.image_ids
        g.channel = 7  # and back: the grid follows the gallery
        assert grid.channel == 7
    finally:
        link.unlink()
        grid.close()


def test_click_on_a_patch_shows_its_source_image(mined):
    g = mined
    g.layer, g.channel = MID, 3
    a = g.artists
    before = pixels(g.fig, a.ax_source)
    x, y = tile_center(a, 4)
    assert tile_index(a, x, y) == 4
    click(g.fig, a.ax_patches, x, y)
    assert g.selected == 4
    np.testing.assert_array_equal(a.im_source.get_array(), g.current.views[4])
    top, left, bottom, right = g.current.boxes[4]
    assert a.box.get_visible() and a.box.get_xy() == (left - 0.5, top - 0.5)
    assert (a.box.get_width(), a.box.get_height()) == (right - left, bottom - top)
    assert g.current.names[4] in a.ax_source.get_title()
    assert a.highlight.get_visible()
    after = pixels(g.fig, a.ax_source)
    assert before.shape != after.shape or (after != before).any()

    x, y = tile_center(a, 7)  # the projections grid is clickable too
    click(g.fig, a.ax_projections, x, y)
    assert g.selected == 7
    np.testing.assert_array_equal(a.im_source.get_array(), g.current.views[7])
    assert (pixels(g.fig, a.ax_source) != after).any()
    click(g.fig, a.ax_patches, 1.0, 1.0)  # in the gap: nothing changes
    assert g.selected == 7
    g.channel = 8  # a new gallery resets the selection
    assert g.selected == -1 and not a.box.get_visible()


def test_errors_are_shown_inside_the_widget(mined):
    g = mined
    g.layer = MID
    g.channel = 480  # MID has 480 channels: 0..479
    assert "out of range" in g.errors.message and "480" in g.errors.message
    assert g.current is None
    g.channel = 5  # still usable
    assert not g.errors.message and g.current.channel == 5
    with pytest.raises(traitlets.TraitError):
        g.channel = -1

    class Broken(ImageList):
        def load(self, i):
            raise RuntimeError("the network share went away")

    bad = PatchGallery(g.session, Broken([np.zeros((4, 4, 3), np.uint8)] * 3), layer=MID,
                       auto=False)
    try:
        assert bad.mine_now() is None
        assert "network share" in bad.errors.message
        assert not bad.mine_button.disabled  # usable again
    finally:
        bad.close()


def test_auto_mining_runs_as_a_task_with_progress_and_follows_the_model():
    s = Session("zfnet_small", weights=None)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 48, 3), dtype=np.uint8) for _ in range(12)]
    plain = PatchGallery(s, images, auto=True, batch_size=4)
    assert not plain.mined() and "press <b>Mine</b>" in plain.status.value  # no event loop
    plain.close()

    async def until_mined(g, layer=None):
        for _ in range(2000):
            if g.mined(layer) and not g.mining:
                return
            await asyncio.sleep(0.005)
        raise AssertionError("auto mining did not finish")

    async def scenario():
        steps = []
        g = PatchGallery(s, images, auto=True, batch_size=4)
        g.progress.observe(lambda ch: steps.append(ch["new"]), names="value")
        try:
            assert g.mining and not g.mined()  # started, not done: the loop runs it
            assert "mining" in g.status.value
            await until_mined(g)
            assert g.layer == g.current.layer == "features.relu2"
            assert g.current.channel == g.channel and len(g.current) == 9
            assert steps[-1] == 12 and len(steps) >= 3  # one step per batch of 4
            assert "over 12 images" in g.status.value
            assert not g.mined("features.conv2")
            g.layer = "features.conv2"  # not mined yet: a new task
            await until_mined(g, "features.conv2")
            assert g.current.layer == "features.conv2"
            old = g.result
            s.set_model("zfnet_small", weights=None)  # new weights: results are stale
            assert g.result is None
            await until_mined(g)  # mined again for the new model
            assert g.result.model != old.model
            assert g.current.layer == g.layer  # drawn from the new result:
            assert g.current.image_ids == g.result[g.layer].image[g.channel].tolist()
        finally:
            g.close()
        return g

    g = asyncio.run(scenario())
    assert g._session_changed not in s._listeners


def test_plot_helpers():
    tile = fit_tile(np.ones((3, 6, 3), np.float32) * 0.2, 12)
    assert tile.shape == (12, 12, 3)
    assert np.allclose(tile[3:9], 0.2) and np.allclose(tile[:3], 1.0)  # centered, aspect kept
    grid = mosaic([np.zeros((5, 5, 3))] * 2, rows=2, cols=2, tile=4, gap=1)
    assert grid.shape == (11, 11, 3)
    assert np.allclose(grid[1:5, 1:5], 0) and np.allclose(grid[6:10, 6:10], 0.85)
    proj = np.zeros((3, 4, 4), np.float32)
    proj[0, 1, 1] = 2.0
    assert projection_image(proj)[1, 1, 0] == 1.0


def test_fig2_figure_for_several_layers(mined, session):
    g = mined
    galleries = {layer: [gallery(session, g.result, layer, c) for c in (0, 1)]
                 for layer in (EARLY, MID)}
    fig = fig2_figure(galleries)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 4 and axes[0].get_ylabel() == EARLY
    image = axes[3].images[0].get_array()
    assert image.shape[1] > 2 * image.shape[0] * 0.9  # projections beside patches


def small_data():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (40, 48, 3), dtype=np.uint8) for _ in range(12)]


async def turns(n):
    for _ in range(n):
        await asyncio.sleep(0)


def test_cancel_stops_mining_and_mine_starts_again():
    s = Session("zfnet_small", weights=None)

    async def scenario():
        g = PatchGallery(s, small_data(), auto=True, batch_size=4)
        try:
            assert g.mining and g.cancel_button.layout.display is None
            assert g.mine_button.disabled
            await turns(2)                             # a batch or two
            job = g.runner.job
            g.cancel_button.click()
            assert job.closed and not job.done and not g.mining
            assert "cancelled after" in g.status.value and "of 12 images" in g.status.value
            assert not g.mine_button.disabled and g.cancel_button.layout.display == "none"
            assert g.progress.layout.display == "none" and not g.mined()
            g.channel = 1                              # cancelled: auto mining stays off
            await turns(3)
            assert not g.mining and not g.mined()
            g.mine_button.click()                      # Mine: mines (and auto is back on)
            assert g.mining
            for _ in range(400):
                if g.mined() and not g.mining:
                    break
                await asyncio.sleep(0.005)
            assert g.mined() and g.current.layer == g.layer and g.auto
            assert "over 12 images" in g.status.value and g.errors.message == ""
        finally:
            g.close()

    asyncio.run(scenario())


def test_a_hidden_gallery_mines_nothing_until_shown(monkeypatch):
    """A Top-9 view that is not shown starts no mining on a layer change, and pauses the
    mining it was doing; shown, it mines the layer asked for, once."""
    import zfwidgets.widgets.gallery as module

    s = Session("zfnet_small", weights=None)
    jobs = []
    real = module.mine_job
    monkeypatch.setattr(module, "mine_job", lambda *a, **k: jobs.append(a[2]) or real(*a, **k))

    async def until_mined(g):
        for _ in range(400):
            if g.mined() and not g.mining:
                return
            await asyncio.sleep(0.005)
        raise AssertionError("mining did not finish")

    async def scenario():
        g = PatchGallery(s, small_data(), auto=True, batch_size=4, layers=[], shown=False)
        try:
            await turns(5)
            assert jobs == [] and not g.mining and g.stale   # built hidden: nothing
            g.layer = "features.conv2"
            s.set_image(np.zeros((32, 32, 3), np.uint8))
            await turns(5)
            assert jobs == [] and not g.mining
            g.shown = True                             # shown: mines the layer asked for
            assert jobs == [["features.conv2"]] and g.mining
            await turns(1)
            done = g.runner.job.last.done
            g.shown = False                            # hidden half way: paused
            await turns(10)
            assert g.runner.job.last.done == done and g.mining
            s.set_image(None)                          # a new image does not stop mining
            g.shown = True
            await until_mined(g)
            assert jobs == [["features.conv2"]] and g.current.layer == "features.conv2"
        finally:
            g.close()

    asyncio.run(scenario())
