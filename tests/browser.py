"""Helpers for real-browser tests: a Voila server, Debian's chromium via Playwright, canvas polling.

Usage in a test module::

    import pytest
    from browser import launch_chromium, serve_voila, wait_canvas_changed, wait_canvas_painted

    pytestmark = [pytest.mark.browser, needs_chromium()]

    def test_x(tmp_path):
        with serve_voila("notebooks/x.ipynb", tmp_path) as url, sync_playwright() as pw:
            browser = launch_chromium(pw)
            page = browser.new_page()
            page.goto(url)
            ...

Nothing here downloads a browser: Playwright drives ``/usr/bin/chromium`` (``apt-get install
chromium``); tests skip with the reason when it is missing.
"""

from __future__ import annotations

import contextlib
import os
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
           "serve_voila", "serve_command", "launch_chromium", "wait_canvas_painted",
           "wait_canvas_changed", "screenshot_changed"]


def needs_chromium():
    """A skip mark naming the reason, when chromium or playwright are missing."""
    reason = None
    if not Path(CHROMIUM).exists():
        reason = f"chromium not found at {CHROMIUM} (apt-get install -y chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
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
    cmd = [sys.executable, "-m", "voila", str(nb), "--no-browser", f"--port={port}",
           "--Voila.ip=127.0.0.1", f"--Voila.root_dir={work}",
           "--VoilaConfiguration.show_tracebacks=True"]
    with serve_command(cmd, port, tmp_path, cwd=src.parent, env=env or jupyter_env(tmp_path),
                       timeout=timeout) as url:
        yield url


def launch_chromium(playwright, **kwargs):
    """Debian's chromium, headless, with the flags that work offline in a container."""
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                      args=CHROMIUM_ARGS, **kwargs)


@contextlib.contextmanager
def browser_page(url: str, width: int, height: int):
    """A chromium page (headless, Debian's build) at ``url``; the browser closes after."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(url, timeout=180_000)
            yield page
        finally:
            browser.close()


def _has_content(png: bytes) -> bool:
    import io

    import numpy as np
    from PIL import Image

    arr = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    return arr.size > 0 and float(arr.std()) > 2.0


def wait_canvas_painted(page, locator, timeout: float = 90) -> bytes:
    """Wait until the ipympl canvas at ``locator`` is visible and has content; its screenshot.

    ipympl paints only after the kernel sends the first image, so this polls screenshots.
    """
    locator.wait_for(state="visible", timeout=timeout * 1000)
    deadline = time.monotonic() + timeout
    while True:
        png = locator.screenshot()
        if _has_content(png):
            return png
        if time.monotonic() > deadline:
            raise TimeoutError("the canvas stayed blank")
        page.wait_for_timeout(200)


def screenshot_changed(before: bytes, after: bytes) -> bool:
    """Whether two PNG screenshots differ in their pixels."""
    import io

    import numpy as np
    from PIL import Image

    a = np.asarray(Image.open(io.BytesIO(before)).convert("RGB"))
    b = np.asarray(Image.open(io.BytesIO(after)).convert("RGB"))
    return a.shape != b.shape or bool((a != b).any())


def wait_canvas_changed(page, locator, before_png: bytes, timeout: float = 30) -> bytes:
    """Poll element screenshots until they differ from ``before_png``; the new screenshot."""
    deadline = time.monotonic() + timeout
    while True:
        png = locator.screenshot()
        if screenshot_changed(before_png, png):
            return png
        if time.monotonic() > deadline:
            raise TimeoutError(f"the canvas did not change within {timeout} s")
        page.wait_for_timeout(150)
