"""The notebooks in the front ends the README names, in a real browser: JupyterLab 4 and
Jupyter Notebook 7 (Voila is tested by test_browser*.py).

Each test opens a notebook as a user does (the server's own URL for it), runs every cell from
the *Run* menu, waits for the last cell to finish (failing at once, with the traceback, if a
cell raises), checks that every ipympl figure of the notebook is painted, and drives one widget
(the explorer's layer selector; the occlusion panel's slider) until its canvas repaints.

One server per front end and one chromium for the module; each test opens its own page and
shuts its kernel down at the end, so it runs alone and leaves no kernel behind (checked when
the server stops). Nothing waits a fixed time. Servers keep their Jupyter, IPython and
matplotlib state in the test's temporary folder and run in their own process group.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from browser import (CANVAS, chromium, free_port, has_content, jupyter_env, needs_chromium,
                     serve_command, wait_canvas_changed, wait_until)

pytestmark = [pytest.mark.browser, pytest.mark.slow, needs_chromium(),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
EXPLORER, OCCLUSION = "01_explorer.ipynb", "03_occlusion.ipynb"

#: front end -> (server module, its app's option prefix, URL path of a notebook)
FRONTENDS = {
    "jupyterlab4": ("jupyterlab", "LabApp", "lab/tree/{}?reset"),
    "notebook7": ("notebook", "JupyterNotebookApp", "notebooks/{}"),
}

#: what the first run of a fresh JupyterLab asks the user (news, updates): answered "no"
QUIET_SETTINGS = {"@jupyterlab/apputils-extension/notification.jupyterlab-settings":
                  {"fetchNews": "false", "checkForUpdates": False}}


def kernel_processes(runtime_dir: Path) -> list[int]:
    """PIDs of the processes started with a connection file in ``runtime_dir`` (kernels)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if str(runtime_dir) in cmdline and "kernel" in cmdline:
                pids.append(int(proc.name))
    return pids


@contextlib.contextmanager
def serve_frontend(frontend: str, tmp: Path):
    """A JupyterLab 4 or Notebook 7 server over a copy of notebooks 01 and 03; yields
    ``(base URL, notebook URL pattern)``. Stopping it, every kernel must be gone."""
    module, app, path = FRONTENDS[frontend]
    root = tmp / "root"
    root.mkdir()
    for name in (EXPLORER, OCCLUSION):
        shutil.copy(NOTEBOOKS / name, root / name)
    env = jupyter_env(tmp)
    for rel, settings in QUIET_SETTINGS.items():
        target = Path(env["JUPYTER_CONFIG_DIR"]) / "lab" / "user-settings" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(settings))
    port = free_port()
    cmd = [sys.executable, "-m", module, "--no-browser", "--allow-root", f"--port={port}",
           "--ServerApp.ip=127.0.0.1", "--IdentityProvider.token=", "--ServerApp.password=",
           f"--ServerApp.root_dir={root}", f"--{app}.expose_app_in_browser=True"]
    runtime = Path(env["JUPYTER_RUNTIME_DIR"])
    with serve_command(cmd, port, tmp, cwd=root, env=env, timeout=180) as url:
        yield url, url + path
    left = kernel_processes(runtime)
    deadline = time.monotonic() + 30
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = kernel_processes(runtime)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
    assert not left, f"kernels still running after the {frontend} server stopped: {left}"


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture(scope="module", params=list(FRONTENDS))
def server(request, tmp_path_factory, browser):
    tmp = tmp_path_factory.mktemp(request.param)
    with serve_frontend(request.param, tmp) as (url, pattern):
        yield url, pattern


def kernels(url: str) -> list[dict]:
    with urllib.request.urlopen(url + "api/kernels", timeout=30) as reply:
        return json.loads(reply.read())


def shut_down_kernels(context, url: str) -> None:
    """Shut every kernel of the server down (as *Kernel > Shut Down All Kernels* does, with
    the page's XSRF cookie) and wait until the server lists none."""
    xsrf = next((c["value"] for c in context.cookies(url) if c["name"] == "_xsrf"), "")
    for kernel in kernels(url):
        context.request.delete(f"{url}api/kernels/{kernel['id']}",
                               headers={"X-XSRFToken": xsrf}, timeout=60_000)
    deadline = time.monotonic() + 60
    while kernels(url) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not kernels(url), "a kernel did not shut down"


@contextlib.contextmanager
def open_notebook(server, browser, name: str):
    """The notebook ``name`` opened in a fresh page, its kernel started and idle."""
    url, pattern = server
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        page = context.new_page()
        page.goto(pattern.format(name), timeout=180_000)
        page.wait_for_function(
            "() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
            " const k = w && w.sessionContext && w.sessionContext.session"
            "   && w.sessionContext.session.kernel;"
            " return k && k.status === 'idle'; }", timeout=180_000)
        yield page
    finally:
        try:
            shut_down_kernels(context, url)
        finally:
            context.close()


_CELLS = """() => {
  const cells = window.jupyterapp.shell.currentWidget.content.widgets
      .filter(c => c.model.type === 'code');
  return {counts: cells.map(c => c.model.executionCount),
          errors: cells.flatMap(c => c.model.outputs.toJSON()
              .filter(o => o.output_type === 'error')
              .map(o => o.ename + ': ' + o.evalue + '\\n' + (o.traceback || []).join('\\n')))};
}"""


def run_all_cells(page, timeout: float = 420) -> int:
    """*Run > Run All Cells*, then wait until every code cell has run; the code cells' count.
    A cell that raises fails the test with its traceback (ANSI colours removed)."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).first.click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).first.click()

    def finished():
        state = page.evaluate(_CELLS)
        if state["errors"]:
            text = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(state["errors"]))
            pytest.fail(f"a cell raised:\n{text[-4000:]}")
        return len(state["counts"]) if all(c is not None for c in state["counts"]) else None

    return wait_until(page, finished, "every cell to run", timeout, poll=0.25)


def all_canvases_painted(page, at_least: int, timeout: float = 120) -> None:
    """Every ipympl canvas in the notebook is painted (scrolled to, as a reader would)."""
    canvases = page.locator(CANVAS)
    wait_until(page, lambda: canvases.count() >= at_least,
               f"at least {at_least} figures in the notebook", timeout)
    for k in range(canvases.count()):
        canvas = canvases.nth(k)
        canvas.scroll_into_view_if_needed(timeout=timeout * 1000)
        try:
            wait_until(page, lambda: has_content(canvas.screenshot()),
                       f"figure {k + 1} of {canvases.count()} to be painted", timeout)
        except TimeoutError as exc:
            inside = canvas.evaluate("e => Array.from(e.querySelectorAll('canvas'))"
                                     ".map(c => c.width + 'x' + c.height).join(', ')")
            owner = canvas.evaluate("e => (e.closest('[class*=zf-]') || {}).className || ''")
            raise TimeoutError(f"{exc} (its canvases {inside}; in {owner!r})") from None


def test_explorer_notebook_runs_paints_and_repaints(server, browser):
    with open_notebook(server, browser, EXPLORER) as page:
        assert run_all_cells(page) >= 10
        # the explorer (grid, deconv view, top-5) and the stand-alone DeconvView
        all_canvases_painted(page, at_least=4)
        explorer = page.locator(".zf-explorer")
        grid = explorer.locator(f".zf-grid {CANVAS}")
        grid.scroll_into_view_if_needed()
        before = grid.screenshot()
        select = explorer.locator(".zf-layer-selector select")
        label = next(t for t in select.locator("option").all_inner_texts()
                     if re.match(r"head\.act[\s\xa0]", t))
        select.select_option(label=label)
        explorer.locator(".zf-grid", has_text="1280 maps").wait_for(timeout=120_000)
        wait_canvas_changed(page, grid, before, timeout=120)
        for view in (".zf-grid", ".zf-deconv", ".zf-top5", ".zf-layer-selector"):
            assert explorer.locator(f"{view} .zf-error:visible").count() == 0, view
        # the one error shown is the notebook's own bad upload (cell "Another image")
        shown = explorer.locator(".zf-error:visible").all_inner_texts()
        assert shown == explorer.locator(".zf-images .zf-error:visible").all_inner_texts()
        assert all("not a recognised image" in text for text in shown), shown


def test_occlusion_notebook_runs_paints_and_repaints(server, browser):
    with open_notebook(server, browser, OCCLUSION) as page:
        assert run_all_cells(page) >= 8
        # three pyplot figures (%matplotlib widget: the scene, the figure, the head
        # occluded) and the OcclusionExplorer
        all_canvases_painted(page, at_least=4)
        panel = page.locator(".zf-occlusion")
        canvas = panel.locator(CANVAS)
        canvas.scroll_into_view_if_needed()
        before = canvas.screenshot()
        top5 = panel.locator(".zf-occlusion-top5")
        wait_until(page, lambda: "top-5" in top5.inner_text(), "the occluded top-5", 120)
        shown = top5.inner_text()
        # drag the occluder's y slider to the left with the mouse (keys would go to the
        # notebook's own shortcuts in Notebook 7)
        y = panel.locator(".zf-occlusion-slider").first
        value = int(y.locator(".widget-readout").inner_text())
        handle = y.locator(".noUi-handle").bounding_box()
        track = y.locator(".noUi-target").bounding_box()
        page.mouse.move(handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2)
        page.mouse.down()
        page.mouse.move(track["x"] + 2, handle["y"] + handle["height"] / 2, steps=8)
        page.mouse.up()
        wait_until(page, lambda: int(y.locator(".widget-readout").inner_text()) < value,
                   "the slider to move", 60)
        wait_canvas_changed(page, canvas, before, timeout=120)   # (a): the occluder moved
        wait_until(page, lambda: top5.inner_text() != shown, "the top-5 to follow", 120)
        assert panel.locator(".zf-error:visible").count() == 0
