"""PatchGallery in a real browser: Voila serves a notebook, Playwright drives Debian's chromium."""

from __future__ import annotations

import re

import pytest
from browser import (CANVAS, browser_page, needs_chromium, serve_voila, wait_canvas_changed,
                     wait_canvas_painted)

from zfwidgets.cli import one_cell_notebook

pytestmark = [pytest.mark.browser, needs_chromium()]

NOTEBOOK = r'''
import ipywidgets as W
from zfwidgets import Session
from zfwidgets.data.datasets import sample_collection
from zfwidgets.plots.gallery import tile_index
from zfwidgets.widgets.gallery import PatchGallery

session = Session()
data = sample_collection(samples=["chelsea", "coffee"])
# mines on its own once displayed (deferred to the kernel's event loop), only this layer
auto = PatchGallery(session, data, layer="blocks.7.depthwise.act", channel=3, layers=[],
                    auto=True, tile=60, size=(8.0, 3.0))
# waits for the Mine button
manual = PatchGallery(session, data, layer="blocks.1.expand.act", channel=5, layers=[],
                      auto=False, tile=60, size=(8.0, 3.0))

def tile_xy(g, index):
    """Where tile `index` of the patches grid is, in canvas pixels from the top left."""
    a = g.artists
    r, c = divmod(index, a.cols)
    step = a.tile + a.gap
    # lays the axes out (equal aspect) without rendering: a canvas.draw() before the browser
    # has connected would hand ipympl 0.10 a broken first image
    g.fig.draw_without_rendering()
    x, y = a.ax_patches.transData.transform((a.gap + c * step + a.tile / 2,
                                             a.gap + r * step + a.tile / 2))
    return f"{x:.1f},{g.fig.bbox.height - y:.1f}"

where = W.HTML(f"<span class='zf-tile4'>{tile_xy(auto, 4)}</span>")
W.VBox([auto, where, manual])
'''


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("voila_gallery")
    path = one_cell_notebook(tmp / "gallery.ipynb", NOTEBOOK)
    with serve_voila(path, tmp, timeout=180) as address:
        yield address


@pytest.fixture(scope="module")
def page(url):
    """One page for the module: Voila starts a kernel and runs the notebook per page load."""
    with browser_page(url, 1100, 1400) as page:
        yield page


def test_gallery_mines_then_follows_the_channel_and_clicks(page):
    # auto mining ran after display: the status line says what is shown
    page.get_by_text(re.compile(r"top 9 of channel 3 over 44 images")).wait_for(timeout=180_000)
    canvas = page.locator(CANVAS).first
    first = wait_canvas_painted(page, canvas, timeout=120)
    page.wait_for_timeout(500)
    first = canvas.screenshot()

    handle = page.locator(".widget-slider .noUi-handle").first
    handle.focus()
    handle.press("ArrowRight")
    page.get_by_text(re.compile(r"top 9 of channel 4 over")).wait_for(timeout=60_000)
    second = wait_canvas_changed(page, canvas, first, timeout=60)

    x, y = (float(v) for v in page.locator(".zf-tile4").inner_text().split(","))
    box = canvas.bounding_box()
    page.mouse.click(box["x"] + x, box["y"] + y)
    wait_canvas_changed(page, canvas, second, timeout=60)  # the source panel shows the image


def test_mine_button_fills_the_gallery(page):
    page.get_by_text(re.compile(r"has not been mined over the 44 images yet: press")).wait_for(
        timeout=180_000)
    canvas = page.locator(CANVAS).nth(1)
    canvas.wait_for(state="visible", timeout=120_000)
    canvas.scroll_into_view_if_needed()
    page.wait_for_timeout(1000)
    before = canvas.screenshot()
    page.get_by_role("button", name="Mine").nth(1).click()
    page.get_by_text(re.compile(r"top 9 of channel 5 over 44 images")).wait_for(timeout=180_000)
    wait_canvas_changed(page, canvas, before, timeout=60)
