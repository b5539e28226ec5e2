"""Helpers for real-browser tests: a Voila server, Debian's chromium via Playwright, canvas polling.

Usage in a test module: one server and one chromium for the module, a fresh page (so a fresh
kernel: the notebook's own starting state) for every test::

    import pytest
    from browser import chromium, needs_chromium, open_page, serve_voila, wait_canvas_changed

    pytestmark = [pytest.mark.browser, needs_chromium()]

    @pytest.fixture(scope="module")
    def server(tmp_path_factory):
        tmp = tmp_path_factory.mktemp("x")
        with serve_voila("notebooks/x.ipynb", tmp) as url, chromium() as browser:
            yield url, browser

    @pytest.fixture
    def page(server):
        with open_page(*server, 1200, 800) as page:
            yield page

Nothing waits a fixed time: every wait polls a condition (a port, a label, a canvas's pixels)
until a deadline, and says what it waited for when the deadline passes.

Nothing here downloads a browser: Playwright drives ``/usr/bin/chromium`` (``apt-get install
chromium``); tests skip with the reason when it is missing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("ZFWIDGETS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
CANVAS = ".jupyter-matplotlib-canvas-div"   # one per ipympl figure

__all__ = ["CHROMIUM", "CANVAS", "needs_chromium", "free_port", "jupyter_env", "wait_for_port",
           "serve_voila", "serve_lab", "lab_run_all", "serve_command", "explore_command",
           "launch_chromium", "chromium", "open_page", "wait_until", "pixels", "has_content",
           "wait_canvas_painted", "wait_canvas_changed", "wait_canvas_settled",
           "screenshot_changed", "mosaic_geometry"]


def needs_chromium():
    """A skip mark naming the reason, when chromium or playwright are missing."""
    reason = None
    if not Path(CHROMIUM).exists():
        reason = f"chromium not found at {CHROMIUM} (apt-get install -y chromium)"
    elif importlib.util.find_spec("playwright") is None:
        reason = "playwright (Python package) is not installed"
    return pytest.mark.skipif(reason is not None, reason=reason or "")


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def jupyter_env(tmp_path: Path, **extra) -> dict:
    """Environment for a server under test: Jupyter/IPython/matplotlib state inside ``tmp_path``."""
    env = dict(os.environ)
    for var, sub in (("JUPYTER_CONFIG_DIR", "jupyter_config"),
                     ("JUPYTER_RUNTIME_DIR", "jupyter_runtime"),
                     ("JUPYTER_DATA_DIR", "jupyter_data"), ("IPYTHONDIR", "ipython"),
                     ("MPLCONFIGDIR", "mpl")):
        folder = Path(tmp_path) / sub
        folder.mkdir(parents=True, exist_ok=True)
        env[var] = str(folder)
    env.pop("MPLBACKEND", None)
    env["PYTHONUNBUFFERED"] = "1"
    env.update({k: str(v) for k, v in extra.items()})
    return env


def wait_for_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 120) -> None:
    """Block until something listens on ``127.0.0.1:port``; fail if ``proc`` dies first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before listening")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def _stop_group(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)


@contextlib.contextmanager
def serve_command(cmd: list[str], port: int, tmp_path: Path, *, cwd=None, env=None,
                  timeout: float = 120):
    """Run a server command in its own process group; yield its URL once the port is open.

    The whole group is terminated at exit (SIGTERM, then SIGKILL). The server's output goes
    to ``tmp_path / "server.log"``, shown in the failure message when it does not start.
    """
    log_path = Path(tmp_path) / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env or jupyter_env(tmp_path),
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            try:
                wait_for_port(port, proc, timeout)
            except (RuntimeError, TimeoutError) as exc:
                log.flush()
                raise RuntimeError(f"{exc}\n--- server log ---\n"
                                   f"{log_path.read_text(errors='replace')[-4000:]}") from None
            yield f"http://127.0.0.1:{port}/"
        finally:
            _stop_group(proc)


@contextlib.contextmanager
def serve_voila(notebook_path, tmp_path: Path, *, port: int | None = None, env=None,
                timeout: float = 120):
    """Serve one notebook with Voila on 127.0.0.1; yield the URL.

    The notebook is copied into ``tmp_path`` (Voila writes nothing next to the original).
    """
    port = port or free_port()
    src = Path(notebook_path).resolve()
    work = Path(tmp_path) / "voila_root"
    work.mkdir(parents=True, exist_ok=True)
    nb = work / src.name
    shutil.copy(src, nb)
    cmd = [sys.executable, "-m", "zfwidgets.cli.voila_server", str(nb), "--no-browser",
           f"--port={port}", "--Voila.ip=127.0.0.1", f"--Voila.root_dir={work}",
           "--VoilaConfiguration.show_tracebacks=True"]
    with serve_command(cmd, port, tmp_path, cwd=src.parent, env=env or jupyter_env(tmp_path),
                       timeout=timeout) as url:
        yield url


@contextlib.contextmanager
def serve_lab(root, tmp_path: Path, *, port: int | None = None, env=None, timeout: float = 180):
    """Serve JupyterLab 4 on 127.0.0.1 over the folder ``root`` (no token); yield its URL.

    Open a notebook at ``url + "lab/tree/NAME.ipynb"`` and run it with :func:`lab_run_all`.
    The workspace (which panels are open) starts from JupyterLab's defaults: the file browser
    is open on the left.
    """
    port = port or free_port()
    env = env or jupyter_env(tmp_path)
    env.setdefault("JUPYTERLAB_WORKSPACES_DIR", str(Path(tmp_path) / "lab_workspaces"))
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root",
           f"--port={port}", "--ServerApp.ip=127.0.0.1", "--IdentityProvider.token=",
           "--ServerApp.password=", "--LabApp.expose_app_in_browser=True",
           f"--ServerApp.root_dir={Path(root).resolve()}"]
    with serve_command(cmd, port, tmp_path, env=env, timeout=timeout) as url:
        yield url


def lab_run_all(page, timeout: float = 180) -> None:
    """In a JupyterLab page showing a notebook: wait for its kernel, then run all cells."""
    page.wait_for_function(
        "() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
        " const k = w && w.sessionContext && w.sessionContext.session"
        " && w.sessionContext.session.kernel;"
        " return k && k.connectionStatus === 'connected' && k.status === 'idle'; }",
        timeout=timeout * 1000)
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")


def explore_command(port: int, *options: str) -> list[str]:
    """``zfwidgets explore --no-browser --port P [options]`` from this interpreter's
    environment (its ``zfwidgets`` script, else ``python -m zfwidgets.cli``)."""
    script = Path(sys.executable).with_name("zfwidgets")
    if not script.exists():
        found = shutil.which("zfwidgets")
        script = Path(found) if found else None
    base = [str(script)] if script else [sys.executable, "-m", "zfwidgets.cli"]
    return base + ["explore", "--no-browser", "--port", str(port), *options]


def launch_chromium(playwright, **kwargs):
    """Debian's chromium, headless, with the flags that work offline in a container."""
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                      args=CHROMIUM_ARGS, **kwargs)


@contextlib.contextmanager
def chromium():
    """Debian's chromium (headless) for a module of tests; pages are opened with :func:`open_page`."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def open_page(url: str, browser, width: int, height: int, timeout: float = 180):
    """A fresh page at ``url`` in its own browser context; Voila starts a kernel for it and runs
    the notebook, so a test starts from the notebook's own state whatever ran before.

    Leaving the page shuts that kernel down: Voila posts the shutdown from ``beforeunload`` with
    the page's ``_xsrf`` cookie, which Voila 0.5's own pages never set (voila#1458: the post is
    refused and every page left would keep its kernel, and its model, running). The context
    gets one, as a Jupyter page would have.
    """
    context = browser.new_context(viewport={"width": width, "height": height})
    try:
        context.add_cookies([{"name": "_xsrf", "value": secrets.token_hex(16), "url": url}])
        page = context.new_page()
        try:
            page.goto(url, timeout=timeout * 1000)
            yield page
        finally:
            with contextlib.suppress(Exception):
                page.goto("about:blank")  # runs beforeunload: the kernel shutdown is posted
    finally:
        context.close()


def wait_until(page, condition, what: str, timeout: float = 60, poll: float = 0.2):
    """Poll ``condition()`` until it returns something true, and return that; the page keeps
    running between polls. ``TimeoutError`` naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        page.wait_for_timeout(poll * 1000)


def pixels(png: bytes, box=None):
    """RGB array ``[H, W, 3]`` (uint8) of a PNG screenshot, or of its ``box`` = ``(left, top,
    right, bottom)`` in pixels."""
    import numpy as np
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    if box is None:
        return rgb
    left, top, right, bottom = (int(round(v)) for v in box)
    return rgb[top:bottom, left:right]


def has_content(png: bytes, box=None) -> bool:
    """Whether a screenshot (or its ``box``) holds a picture rather than one flat colour."""
    arr = pixels(png, box).mean(-1)
    return arr.size > 0 and float(arr.std()) > 2.0


def wait_canvas_painted(page, locator, timeout: float = 90, box=None) -> bytes:
    """Wait until the ipympl canvas at ``locator`` is visible and has content (within ``box``
    when given); its screenshot.

    ipympl paints only after the kernel sends the first image, so this polls screenshots.
    """
    locator.wait_for(state="visible", timeout=timeout * 1000)

    def painted():
        png = locator.screenshot()
        return png if has_content(png, box) else None

    where = "the canvas" if box is None else f"the canvas within {box}"
    return wait_until(page, painted, f"{where} to be painted", timeout)


def screenshot_changed(before: bytes, after: bytes, box=None) -> bool:
    """Whether two PNG screenshots differ in their pixels (within ``box`` when given)."""
    a, b = pixels(before, box), pixels(after, box)
    return a.shape != b.shape or bool((a != b).any())


def wait_canvas_changed(page, locator, before_png: bytes, timeout: float = 30,
                        box=None) -> bytes:
    """Poll element screenshots until they differ from ``before_png`` (within ``box`` when
    given); the new screenshot."""
    def changed():
        png = locator.screenshot()
        return png if screenshot_changed(before_png, png, box) else None

    where = "the canvas" if box is None else f"the canvas within {box}"
    return wait_until(page, changed, f"{where} to change", timeout, poll=0.15)


def wait_canvas_settled(page, locator, quiet: float = 1.5, timeout: float = 120,
                        busy=None) -> float:
    """Wait until the canvas at ``locator`` has not changed for ``quiet`` seconds and ``busy``
    (a locator, e.g. a progress bar; optional) is not shown; the ``time.monotonic()`` of the
    canvas's last change (of the first look when it never changed)."""
    last_png, last_change = locator.screenshot(), time.monotonic()
    deadline = last_change + timeout
    while (time.monotonic() - last_change < quiet
           or (busy is not None and busy.count() and busy.first.is_visible())):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the canvas to settle: still changing after {timeout} s")
        page.wait_for_timeout(100)
        png = locator.screenshot()
        if screenshot_changed(last_png, png):
            last_png, last_change = png, time.monotonic()
    return last_change


def mosaic_geometry(count: int, h: int, w: int):
    """Where the grid widget draws the cells of a mosaic of ``count`` maps ``h x w``: the same
    figure geometry as the widget's (its default size, 100 dpi), drawn headless.

    Returns ``at(k, y, x)``: the canvas pixel ``(column, row)`` of unit ``(y, x)`` of cell ``k``
    (cells after the last map are the mosaic's empty cells), and the cells' count.
    """
    import inspect

    import numpy as np

    from zfwidgets.plots.mosaic import feature_mosaic_figure
    from zfwidgets.widgets import FeatureMapGrid

    params = inspect.signature(FeatureMapGrid.__init__).parameters
    size, dpi = params["size"].default, params["dpi"].default
    fig, mosaic = feature_mosaic_figure(np.zeros((count, h, w), np.float32), size=size, dpi=dpi)
    fig.canvas.draw()
    layout, height = mosaic.layout, fig.bbox.height

    def at(k, y, x):
        r, c = divmod(k, layout.cols)
        px, py = mosaic.ax.transData.transform((c * (w + layout.pad) + x,
                                                r * (h + layout.pad) + y))
        return float(px), float(height - py)

    return at, layout.rows * layout.cols
