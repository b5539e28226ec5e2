"""The explorer in a real browser, served exactly as `zfwidgets explore` serves it (Voila).

Playwright drives Debian's chromium (never a downloaded browser); skipped, with the reason, when
/usr/bin/chromium is missing. One server and one browser for the module; every test opens its
own page (its own kernel), so it starts from the explorer as it opens and runs alone.
"""

import re

import numpy as np
import pytest

from browser import (CANVAS, chromium, explore_command, free_port, jupyter_env, mosaic_geometry,
                     needs_chromium, open_page, pixels, serve_command, wait_canvas_changed,
                     wait_canvas_painted, wait_until)

pytestmark = [pytest.mark.browser, needs_chromium(),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]

TOP = "head.act"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("explore")
    port = free_port()
    with serve_command(explore_command(port), port, tmp, env=jupyter_env(tmp),
                       timeout=180) as url, chromium() as browser:
        yield url, browser


@pytest.fixture
def page(server):
    with open_page(*server, 1300, 950) as page:
        yield page


def grid_canvas(page):
    return page.locator(f".zf-grid {CANVAS}")


def deconv_canvas(page):
    return page.locator(f".zf-deconv {CANVAS}")


def choose_layer(page, layer: str, maps: str) -> None:
    """Pick ``layer`` in the layer selector; return once the grid says ``maps`` and both the
    grid and the deconv panel have been repainted for it."""
    before_grid = wait_canvas_painted(page, grid_canvas(page), timeout=240)
    before_deconv = wait_canvas_painted(page, deconv_canvas(page), timeout=60)
    select = page.locator(".zf-layer-selector select")
    label = [t for t in select.locator("option").all_inner_texts() if t.startswith(layer + "\xa0")
             or t.startswith(layer + " ")][0]
    select.select_option(label=label)
    page.locator(".zf-grid", has_text=maps).wait_for(timeout=60_000)
    wait_canvas_changed(page, grid_canvas(page), before_grid, timeout=60)
    wait_canvas_changed(page, deconv_canvas(page), before_deconv, timeout=60)
    page.locator(".zf-deconv", has_text=f"{layer}: map").wait_for(timeout=60_000)


def test_explorer_renders(page):
    grid = wait_canvas_painted(page, grid_canvas(page), timeout=240)
    wait_canvas_painted(page, deconv_canvas(page), timeout=60)
    wait_canvas_painted(page, page.locator(f".zf-top5 {CANVAS}"), timeout=60)
    text = page.locator(".zf-grid").inner_text()
    assert "480 maps 14×14" in text
    assert "blocks.7.depthwise.act" in page.locator(".zf-layer-selector select").input_value() \
        or "blocks.7.depthwise.act" in page.locator(".zf-layer-selector").inner_text()
    assert page.locator(".zf-error:visible").count() == 0
    # the canvas shows that mosaic: gray maps where the layout puts the 480 maps, the separator
    # colour in the empty cells after the last one
    from zfwidgets.plots.base import SEPARATOR_COLOR

    at, cells = mosaic_geometry(480, 14, 14)
    assert cells > 480
    shown = pixels(grid)
    selected = int(re.search(r"map (\d+) of 480", text).group(1))
    for k in {0, 240, 479} - {selected}:           # the selected map wears a coloured frame
        x, y = at(k, 7, 7)
        r, g, b = shown[int(y), int(x)].astype(int)
        assert r == g == b, (k, (r, g, b))
    x, y = at(cells - 1, 7, 7)
    np.testing.assert_allclose(shown[int(y), int(x)], np.array(SEPARATOR_COLOR) * 255, atol=3)


def test_choosing_a_layer_repaints(page):
    choose_layer(page, TOP, "1280 maps 7×7")
    assert page.locator(".zf-error:visible").count() == 0


def test_clicking_a_map_selects_it(page):
    choose_layer(page, TOP, "1280 maps 7×7")
    at, _ = mosaic_geometry(1280, 7, 7)
    k = 555
    px, py = at(k, 3, 3)
    left, top = at(k, -1.5, -1.5)        # map k's tile and its frame, where the highlight goes
    right, bottom = at(k, 7.5, 7.5)

    canvas = grid_canvas(page)
    before_grid = canvas.screenshot()
    before_deconv = deconv_canvas(page).screenshot()
    box = canvas.bounding_box()
    page.mouse.click(box["x"] + px, box["y"] + py)
    page.locator(".zf-grid", has_text=f"map {k} of 1280").wait_for(timeout=60_000)
    # the highlight is drawn around map k itself
    wait_canvas_changed(page, canvas, before_grid, timeout=60, box=(left, top, right, bottom))
    page.locator(".zf-deconv", has_text=f"map {k},").wait_for(timeout=60_000)
    wait_canvas_changed(page, deconv_canvas(page), before_deconv, timeout=60)
    assert page.locator(".zf-error:visible").count() == 0


def test_shift_click_knocks_a_map_out_and_restore_brings_it_back(page):
    """Issue 13: shift-click knocks a map out of the model (crossed out in the grid, the top-5
    repainted with the intact probabilities beside), and "restore" brings the intact model back."""
    grid = wait_canvas_painted(page, grid_canvas(page), timeout=240)
    top5 = wait_canvas_painted(page, page.locator(f".zf-top5 {CANVAS}"), timeout=60)
    at, _ = mosaic_geometry(480, 14, 14)
    k = 300
    px, py = at(k, 7, 7)
    cell = (*at(k, 0, 0), *at(k, 13, 13))             # the tile's pixels, inside its frame
    canvas = grid_canvas(page)
    box = canvas.bounding_box()
    page.keyboard.down("Shift")
    page.mouse.click(box["x"] + px, box["y"] + py)
    page.keyboard.up("Shift")
    page.locator(".zf-grid", has_text=f"knocked out (zero in every view): "
                                      f"blocks.7.depthwise.act: {k}").wait_for(timeout=60_000)
    crossed = wait_canvas_changed(page, canvas, grid, timeout=60, box=cell)
    assert red(pixels(crossed, cell))                                  # the cross
    wait_canvas_changed(page, page.locator(f".zf-top5 {CANVAS}"), top5, timeout=60)
    assert page.locator(".zf-grid", has_text=f"map {k} of 480").count() == 0  # not selected
    page.locator(".zf-grid button", has_text="restore").click()
    wait_until(page, lambda: "knocked out" not in page.locator(".zf-grid").inner_text(),
               "the knock-out note to go", timeout=60)
    restored = wait_canvas_changed(page, canvas, crossed, timeout=60, box=cell)
    assert not red(pixels(restored, cell))
    assert page.locator(".zf-error:visible").count() == 0


def red(rgb) -> bool:
    """Whether any pixel is the knock-out cross's red."""
    r, g = rgb[..., 0].astype(int), rgb[..., 1].astype(int)
    return bool(((r > 180) & (g < 80)).any())
