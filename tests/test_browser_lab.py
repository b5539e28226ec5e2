"""The occlusion panel in JupyterLab 4 with the file browser open: every panel fits.

Issue 13: at JupyterLab's usual layout (file browser open beside the notebook) panel (e) and
its legend were cut off at 990 px. Measured here in chromium at a 1280 px wide window: the
figure's canvas lies inside the notebook output, which does not scroll sideways, and all five
panels are painted. Skipped, with the reason, when /usr/bin/chromium is missing.
"""

from __future__ import annotations

import numpy as np
import pytest

from browser import (CANVAS, chromium, lab_run_all, needs_chromium, pixels, serve_lab,
                     wait_canvas_painted)

from zfwidgets.cli import one_cell_notebook

pytestmark = [pytest.mark.browser, needs_chromium(),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]

CELL = """\
%matplotlib widget
from zfwidgets import Session
from zfwidgets.widgets.occlusion import OcclusionExplorer

OcclusionExplorer(Session(), size=64, stride=40)
"""

EMPTY_AXES = (0xF3, 0xF3, 0xF3)


def test_occlusion_figure_fits_beside_the_file_browser(tmp_path):
    from test_browser_occlusion import map_box

    root = tmp_path / "root"
    root.mkdir()
    one_cell_notebook(root / "occlusion.ipynb", CELL)
    with serve_lab(root, tmp_path) as url, chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        try:
            page.goto(url + "lab/tree/occlusion.ipynb", timeout=180_000)
            lab_run_all(page)
            canvas = page.locator(f".zf-occlusion {CANVAS}")
            png = wait_canvas_painted(page, canvas, timeout=240)
            geometry = page.evaluate("""() => {
                const box = (e) => { const b = e.getBoundingClientRect();
                                     return [b.left, b.right]; };
                const out = document.querySelector('.jp-OutputArea-output');
                return {browser: box(document.querySelector('.jp-FileBrowser')),
                        output: box(out), scroll: [out.scrollWidth, out.clientWidth],
                        canvas: box(document.querySelector(
                            '.zf-occlusion .jupyter-matplotlib-canvas-div'))}; }""")
        finally:
            page.close()
    assert geometry["browser"][1] - geometry["browser"][0] > 100     # the file browser is open
    left, right = geometry["output"]
    assert left <= geometry["canvas"][0] and geometry["canvas"][1] <= right, geometry
    assert geometry["scroll"][0] <= geometry["scroll"][1], geometry  # nothing off to the side
    for k in range(5):                                # every panel painted, (e) included
        panel = pixels(png, map_box(k))
        assert (np.abs(panel.astype(int) - EMPTY_AXES).max(-1) > 8).mean() > 0.5, k
