"""PatchGallery in a real browser: Voila serves a notebook, Playwright drives Debian's chromium.

One server and one browser for the module; every test opens its own page (its own kernel)."""

from __future__ import annotations

import re

import pytest
from browser import (CANVAS, chromium, has_content, needs_chromium, open_page, serve_voila,
                     wait_canvas_changed, wait_canvas_painted)

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

def canvas_xy(g, x, y):
    """Figure pixel (x, y) as canvas pixels from the top left."""
    return f"{x:.1f},{g.fig.bbox.height - y:.1f}"

def tile_xy(g, index):
    """Where tile `index` of the patches grid is, in canvas pixels from the top left."""
    a = g.artists
    r, c = divmod(index, a.cols)
    step = a.tile + a.gap
    # lays the axes out (equal aspect) without rendering: a canvas.draw() before the browser
    # has connected would hand ipympl 0.10 a broken first image
    g.fig.draw_without_rendering()
    return canvas_xy(g, *a.ax_patches.transData.transform((a.gap + c * step + a.tile / 2,
                                                           a.gap + r * step + a.tile / 2)))

def source_xy(g):
    """The centre of the source-image panel, in canvas pixels from the top left."""
    g.fig.draw_without_rendering()
    box = g.artists.ax_source.get_window_extent()
    return canvas_xy(g, (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2)

where = W.HTML(f"<span class='zf-tile4'>{tile_xy(auto, 4)}</span> "
               f"<span class='zf-source'>{source_xy(auto)}</span> "
               f"<span class='zf-manual-tile0'>{tile_xy(manual, 0)}</span>")
W.VBox([auto, where, manual])
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("voila_gallery")
    path = one_cell_notebook(tmp / "gallery.ipynb", NOTEBOOK)
    with serve_voila(path, tmp, timeout=180) as url, chromium() as browser:
        yield url, browser


@pytest.fixture
def page(server):
    """A fresh page: Voila starts a kernel and runs the notebook for it."""
    with open_page(*server, 1100, 1400) as page:
        yield page


def around(page, marker: str, half: float = 10) -> tuple[float, float, float, float]:
    """A ``2 * half`` pixel box (left, top, right, bottom) of the canvas around the point the
    notebook wrote into ``.{marker}``; the point itself for ``half=0``."""
    x, y = (float(v) for v in page.locator(f".{marker}").inner_text().split(","))
    return (x - half, y - half, x + half, y + half)


def test_gallery_mines_then_follows_the_channel_and_clicks(page):
    # auto mining ran after display: the status line says what is shown ...
    page.get_by_text(re.compile(r"top 9 of channel 3 over 44 images")).wait_for(timeout=180_000)
    canvas = page.locator(CANVAS).first
    # ... and the canvas shows the patches (the grid is one flat colour until they arrive)
    first = wait_canvas_painted(page, canvas, timeout=120, box=around(page, "zf-tile4"))

    handle = page.locator(".widget-slider .noUi-handle").first
    handle.focus()
    handle.press("ArrowRight")
    page.get_by_text(re.compile(r"top 9 of channel 4 over")).wait_for(timeout=60_000)
    wait_canvas_changed(page, canvas, first, timeout=60)

    # the source panel, blank until a patch is clicked, then shows the patch's image
    source = around(page, "zf-source")
    assert not has_content(canvas.screenshot(), source)
    x, y, _, _ = around(page, "zf-tile4", 0)
    box = canvas.bounding_box()
    page.mouse.click(box["x"] + x, box["y"] + y)
    wait_canvas_painted(page, canvas, timeout=60, box=source)


def test_mine_button_fills_the_gallery(page):
    page.get_by_text(re.compile(r"has not been mined over the 44 images yet: press")).wait_for(
        timeout=180_000)
    canvas = page.locator(CANVAS).nth(1)
    canvas.wait_for(state="visible", timeout=120_000)
    canvas.scroll_into_view_if_needed()
    before = wait_canvas_painted(page, canvas, timeout=120)    # its "not mined yet" title
    tile = around(page, "zf-manual-tile0")
    assert not has_content(before, tile)                       # an empty grid ...
    page.get_by_role("button", name="Mine").nth(1).click()
    page.get_by_text(re.compile(r"top 9 of channel 5 over 44 images")).wait_for(timeout=180_000)
    wait_canvas_painted(page, canvas, timeout=60, box=tile)    # ... filled with patches
    wait_canvas_changed(page, canvas, before, timeout=60)
