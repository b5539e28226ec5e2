"""The explorer in a real browser, served exactly as `zfwidgets explore` serves it (Voila).

Playwright drives Debian's chromium (never a downloaded browser); skipped, with the reason, when
/usr/bin/chromium is missing. One server and one page for the module; the tests run in order.
"""

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from browser import (CANVAS, browser_page, free_port, jupyter_env, needs_chromium,
                     screenshot_changed, serve_command, wait_canvas_changed, wait_canvas_painted)

pytestmark = [pytest.mark.browser, needs_chromium(),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]

TOP = "head.act"


def explore_command(port: int) -> list[str]:
    """`zfwidgets explore --no-browser --port P`, from this interpreter's environment."""
    script = Path(sys.executable).with_name("zfwidgets")
    if not script.exists():
        found = shutil.which("zfwidgets")
        script = Path(found) if found else None
    base = [str(script)] if script else [sys.executable, "-m", "zfwidgets.cli"]
    return base + ["explore", "--no-browser", "--port", str(port)]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("explore")
    port = free_port()
    with serve_command(explore_command(port), port, tmp, env=jupyter_env(tmp),
                       timeout=180) as url, browser_page(url, 1300, 950) as page:
        yield page


def grid_canvas(page):
    return page.locator(f".zf-grid {CANVAS}")


def deconv_canvas(page):
    return page.locator(f".zf-deconv {CANVAS}")


def test_explorer_renders(page):
    grid = wait_canvas_painted(page, grid_canvas(page), timeout=240)
    wait_canvas_painted(page, deconv_canvas(page), timeout=60)
    wait_canvas_painted(page, page.locator(f".zf-top5 {CANVAS}"), timeout=60)
    import io

    from PIL import Image

    shown = np.asarray(Image.open(io.BytesIO(grid)).convert("L"))
    assert abs(shown.shape[0] - 460) <= 2 and abs(shown.shape[1] - 460) <= 2  # 4.6 in, 100 dpi
    assert len(np.unique(shown)) > 32                 # showing maps, not a flat canvas
    assert "480 maps 14×14" in page.locator(".zf-grid").inner_text()
    assert "blocks.7.depthwise.act" in page.locator(".zf-layer-selector select").input_value() \
        or "blocks.7.depthwise.act" in page.locator(".zf-layer-selector").inner_text()
    assert page.locator(".zf-error:visible").count() == 0


def test_choosing_a_layer_repaints(page):
    before_grid = wait_canvas_painted(page, grid_canvas(page))
    before_deconv = deconv_canvas(page).screenshot()
    select = page.locator(".zf-layer-selector select")
    label = [t for t in select.locator("option").all_inner_texts() if t.startswith(TOP + "\xa0")
             or t.startswith(TOP + " ")][0]
    select.select_option(label=label)
    page.locator(".zf-grid", has_text="1280 maps 7×7").wait_for(timeout=60_000)
    wait_canvas_changed(page, grid_canvas(page), before_grid, timeout=60)
    wait_canvas_changed(page, deconv_canvas(page), before_deconv, timeout=60)
    page.locator(".zf-deconv", has_text=f"{TOP}: map").wait_for(timeout=60_000)
    assert page.locator(".zf-error:visible").count() == 0


def test_clicking_a_map_selects_it(page):
    import inspect

    from zfwidgets.plots.mosaic import feature_mosaic_figure
    from zfwidgets.widgets import FeatureMapGrid

    # Where map k sits: the same figure geometry as the widget's (its default size, 100 dpi).
    params = inspect.signature(FeatureMapGrid.__init__).parameters
    size, dpi = params["size"].default, params["dpi"].default
    fig, mosaic = feature_mosaic_figure(np.zeros((1280, 7, 7), np.float32), size=size, dpi=dpi)
    fig.canvas.draw()
    k = 555
    y0, x0 = mosaic.layout.origin(k)
    px, py = mosaic.ax.transData.transform((x0 + 3, y0 + 3))
    height = fig.bbox.height

    canvas = grid_canvas(page)
    before_grid = canvas.screenshot()
    before_deconv = deconv_canvas(page).screenshot()
    box = canvas.bounding_box()
    page.mouse.click(box["x"] + px, box["y"] + (height - py))
    page.locator(".zf-grid", has_text=f"map {k} of 1280").wait_for(timeout=60_000)
    after = wait_canvas_changed(page, canvas, before_grid, timeout=60)
    assert screenshot_changed(before_grid, after)
    page.locator(".zf-deconv", has_text=f"map {k},").wait_for(timeout=60_000)
    wait_canvas_changed(page, deconv_canvas(page), before_deconv, timeout=60)
    assert page.locator(".zf-error:visible").count() == 0
