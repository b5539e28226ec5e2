"""The occlusion panel in a real browser: Voila serves a notebook showing OcclusionExplorer.

Playwright drives Debian's chromium (never a downloaded browser); skipped, with the reason, when
/usr/bin/chromium is missing. One server and one browser for the module; every test opens its
own page (its own kernel), so it starts from the panel as it opens and runs alone.
"""

from __future__ import annotations

import numpy as np
import pytest

from browser import (CANVAS, chromium, needs_chromium, open_page, pixels, serve_voila,
                     wait_canvas_changed, wait_canvas_painted)

from zfwidgets.cli import one_cell_notebook

pytestmark = [pytest.mark.browser, needs_chromium(),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]

CELL = """\
from zfwidgets import Session
from zfwidgets.widgets.occlusion import OcclusionExplorer

explorer = OcclusionExplorer(Session(), size=64, stride=40)
explorer
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("occlusion")
    path = one_cell_notebook(tmp / "occlusion.ipynb", CELL)
    with serve_voila(path, tmp, timeout=180) as url, chromium() as browser:
        yield url, browser


@pytest.fixture
def page(server):
    with open_page(*server, 1200, 700) as page:
        yield page


EMPTY_AXES = (0xF3, 0xF3, 0xF3)   # the panels' facecolor before anything is drawn on them


def canvas(page):
    return page.locator(f".zf-occlusion {CANVAS}")


def slider(page, k: int):
    """k: 0 occluder y, 1 occluder x, 2 size, 3 stride."""
    return page.locator(".zf-occlusion-slider").nth(k)


def test_panel_paints(page):
    png = wait_canvas_painted(page, canvas(page), timeout=240)
    page.locator(".zf-occlusion-top5", has_text="top-5 with the occluder").wait_for(
        timeout=60_000)
    assert page.locator(".zf-error:visible").count() == 0
    # all five panels (a)-(e) are drawn: none is left as the empty axes' background
    for k in range(5):
        panel = pixels(png, map_box(k))
        assert (np.abs(panel.astype(int) - EMPTY_AXES).max(-1) > 8).mean() > 0.5, k
    image, projection = pixels(png, map_box(0)), pixels(png, map_box(2))
    assert image.std() > 10 and projection.std() > 2         # (a) the photo, (c) a projection


def test_moving_the_occluder_repaints(page):
    before = wait_canvas_painted(page, canvas(page))
    top5 = page.locator(".zf-occlusion-top5").inner_text()
    y = slider(page, 0)
    value = int(y.locator(".widget-readout").inner_text())
    y.locator(".noUi-handle").focus()
    for _ in range(30):
        page.keyboard.press("ArrowLeft")
    want = str(max(0, value - 30))
    page.locator(".zf-occlusion-slider .widget-readout", has_text=want).first.wait_for(
        timeout=30_000)
    # (a), the image with the occluder, shows it at its new place
    wait_canvas_changed(page, canvas(page), before, timeout=60, box=map_box(0))
    page.wait_for_function(
        "t => document.querySelector('.zf-occlusion-top5').innerText !== t", arg=top5,
        timeout=60_000)
    assert page.locator(".zf-error:visible").count() == 0


def map_box(k: int) -> tuple[int, int, int, int]:
    """Pixel box (left, top, right, bottom) of panel k in the widget's canvas: the same
    figure geometry drawn headless (the widget's default size and dpi)."""
    import inspect

    from zfwidgets.backend.occlusion import OcclusionResult
    from zfwidgets.plots.occlusion import occlusion_figure
    from zfwidgets.widgets.occlusion import OcclusionExplorer

    params = inspect.signature(OcclusionExplorer.__init__).parameters

    grid = np.arange(0, 161, 40)
    result = OcclusionResult(prob=np.zeros((5, 5), np.float32), top_class=np.zeros((5, 5), int),
                             top_prob=np.zeros((5, 5), np.float32), feature=None, layer=None,
                             channel=None, target=0, target_label="x", size=64, stride=40,
                             rows=grid, cols=grid, image_shape=(224, 224), base_prob=0.5,
                             base_class=0, base_feature=None, labels={0: "x"})
    fig, panels = occlusion_figure(np.zeros((224, 224, 3)), result,
                                   size=params["figsize"].default, dpi=params["dpi"].default)
    fig.canvas.draw()
    box = panels.axes[k].get_window_extent()
    height = fig.bbox.height
    return (int(box.x0) + 3, int(height - box.y1) + 3, int(box.x1) - 3, int(height - box.y0) - 3)


def test_size_slider_recomputes_the_maps(page):
    before = wait_canvas_painted(page, canvas(page))
    prob_box = map_box(3)  # (d) P(class): changes only when new maps arrive
    size = slider(page, 2)
    assert size.locator(".widget-readout").inner_text() == "64"   # the notebook's size
    size.locator(".noUi-handle").focus()
    for _ in range(16):
        page.keyboard.press("ArrowRight")
    size.locator(".widget-readout", has_text="80").wait_for(timeout=30_000)
    wait_canvas_changed(page, canvas(page), before, timeout=120, box=prob_box)
    assert page.locator(".zf-error:visible").count() == 0
