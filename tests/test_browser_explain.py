"""The Explain tab's view in a real browser: Voila serves a notebook showing ExplainView.

Playwright drives Debian's chromium (never a downloaded browser); skipped, with the reason, when
/usr/bin/chromium is missing. One server and one browser for the module; every test opens its
own page (its own kernel), so it runs alone.
"""

from __future__ import annotations

import pytest

from browser import (CANVAS, chromium, needs_chromium, open_page, serve_voila,
                     wait_canvas_changed, wait_canvas_painted)

from zfwidgets.cli import one_cell_notebook

pytestmark = [pytest.mark.browser, needs_chromium(),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]

CELL = """\
from zfwidgets import Session
from zfwidgets.widgets.explain import ExplainView

view = ExplainView(Session("efficientnet_lite0"), size=56, stride=56)
view
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("explain")
    path = one_cell_notebook(tmp / "explain.ipynb", CELL)
    with serve_voila(path, tmp, timeout=180) as url, chromium() as browser:
        yield url, browser


@pytest.fixture
def page(server):
    with open_page(*server, 1000, 800) as page:
        yield page


def test_the_maps_paint_with_their_numbers_and_a_class_click_repaints(page):
    canvas = page.locator(f".zf-explain {CANVAS}")
    page.locator(".zf-explain-notes", has_text="Spearman").wait_for(timeout=240_000)
    before = wait_canvas_painted(page, canvas, timeout=120)
    buttons = page.locator(".zf-explain-classes button")
    assert buttons.count() == 5
    first_note = page.locator(".zf-explain-notes").inner_text()
    buttons.nth(1).click()
    page.wait_for_function(
        "t => document.querySelector('.zf-explain-notes').innerText !== t", arg=first_note,
        timeout=240_000)
    wait_canvas_changed(page, canvas, before, timeout=120)
    assert buttons.nth(1).inner_text().split()[0] in \
        page.locator(".zf-explain-notes").inner_text()
    assert page.locator(".zf-error:visible").count() == 0
