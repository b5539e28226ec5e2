"""The occlusion panel in a real browser: Voila serves a notebook showing OcclusionExplorer.

Playwright drives Debian's chromium (never a downloaded browser); skipped, with the reason, when
/usr/bin/chromium is missing. One server and one page for the module; the tests run in order.
"""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image

from browser import (CANVAS, browser_page, needs_chromium, screenshot_changed, serve_voila,
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
def page(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("occlusion")
    path = one_cell_notebook(tmp / "occlusion.ipynb", CELL)
    with serve_voila(path, tmp, timeout=180) as url, browser_page(url, 1200, 700) as page:
        yield page


def canvas(page):
    return page.locator(f".zf-occlusion {CANVAS}")


def slider(page, k: int):
    """k: 0 occluder y, 1 occluder x, 2 size, 3 stride."""
    return page.locator(".zf-occlusion-slider").nth(k)


def test_panel_paints(page):
    png = wait_canvas_painted(page, canvas(page), timeout=240)
    shown = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    assert abs(shown.shape[0] - 279) <= 2 and abs(shown.shape[1] - 990) <= 2  # 11 x 3.1 in, 90 dpi
    assert len(np.unique(shown)) > 32                 # showing the panels, not a flat canvas
    page.locator(".zf-occlusion-top5", has_text="top-5 with the occluder").wait_for(
        timeout=60_000)
    assert page.locator(".zf-error:visible").count() == 0


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
    after = wait_canvas_changed(page, canvas(page), before, timeout=60)
    assert screenshot_changed(before, after)
    page.wait_for_function(
        "t => document.querySelector('.zf-occlusion-top5').innerText !== t", arg=top5,
        timeout=60_000)
    assert page.locator(".zf-error:visible").count() == 0


def map_box(k: int) -> tuple[int, int, int, int]:
    """Pixel box (left, top, right, bottom) of panel k in the widget's canvas: the same
    figure geometry drawn headless (the widget's default 11 x 3.1 in at 90 dpi)."""
    from zfwidgets.backend.occlusion import OcclusionResult
    from zfwidgets.plots.occlusion import occlusion_figure

    grid = np.arange(0, 161, 40)
    result = OcclusionResult(prob=np.zeros((5, 5), np.float32), top_class=np.zeros((5, 5), int),
                             top_prob=np.zeros((5, 5), np.float32), feature=None, layer=None,
                             channel=None, target=0, target_label="x", size=64, stride=40,
                             rows=grid, cols=grid, image_shape=(224, 224), base_prob=0.5,
                             base_class=0, base_feature=None, labels={0: "x"})
    fig, panels = occlusion_figure(np.zeros((224, 224, 3)), result, size=(11.0, 3.1), dpi=90)
    fig.canvas.draw()
    box = panels.axes[k].get_window_extent()
    height = fig.bbox.height
    return (int(box.x0) + 3, int(height - box.y1) + 3, int(box.x1) - 3, int(height - box.y0) - 3)


def crop(png: bytes, box) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))[box[1]:box[3], box[0]:box[2]]


def test_size_slider_recomputes_the_maps(page):
    before = wait_canvas_painted(page, canvas(page))
    prob_box = map_box(3)  # (d) P(class): changes only when new maps arrive
    size = slider(page, 2)
    size.locator(".noUi-handle").focus()
    for _ in range(16):
        page.keyboard.press("ArrowRight")
    size.locator(".widget-readout", has_text="80").wait_for(timeout=30_000)
    deadline = time.monotonic() + 120
    while True:
        now = canvas(page).screenshot()
        if (crop(now, prob_box) != crop(before, prob_box)).any():
            break
        assert time.monotonic() < deadline, "panel (d) was not redrawn with the new maps"
        page.wait_for_timeout(200)
    assert page.locator(".zf-error:visible").count() == 0
