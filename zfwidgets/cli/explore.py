"""``zfwidgets explore``: serve the explorer as a web app (Voila) on 127.0.0.1."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import fail, kernel_env, model_help, one_cell_notebook

__all__ = ["DEFAULT_PORT", "add_parser", "explorer_notebook", "run"]

DEFAULT_PORT = 8866

_EXPLORER_CODE = """\
# The zfwidgets explorer, as served by `zfwidgets explore` (options come from the environment).
import os

from zfwidgets.cli import open_session
from zfwidgets.widgets import Explorer

Explorer(open_session(os.environ.get("ZFWIDGETS_MODEL") or None,
                      os.environ.get("ZFWIDGETS_IMAGE") or None))
"""


def explorer_notebook(path: str | os.PathLike) -> Path:
    """Write the one-cell notebook that ``zfwidgets explore`` serves with Voila.

    The cell reads the model name and image path from the ``ZFWIDGETS_MODEL`` and
    ``ZFWIDGETS_IMAGE`` environment variables, which the kernel inherits from the server.
    """
    return one_cell_notebook(path, _EXPLORER_CODE)


def add_parser(sub) -> None:
    """Add the ``explore`` command to the ``zfwidgets`` subparsers."""
    p = sub.add_parser("explore", help="serve the interactive explorer (Voila) on 127.0.0.1",
                       description="Serve the explorer as a web app with Voila on 127.0.0.1 and "
                                   "print its URL. Ctrl-C stops it.")
    p.add_argument("--model", default=None, help=model_help())
    p.add_argument("--image", help="image file, or a sample photo's name (chelsea, coffee, "
                   "astronaut ...), to start with; default chelsea")
    p.add_argument("--port", type=int, help=f"port (default {DEFAULT_PORT}, or a free one)")
    p.add_argument("--no-browser", action="store_true", help="do not open a web browser")
    p.set_defaults(run=run)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.2)
    return False


def _pick_port(asked: int | None) -> int | str:
    """The port to serve on, or a message saying why ``asked`` cannot be used."""
    if asked is None:
        return DEFAULT_PORT if _port_free(DEFAULT_PORT) else _free_port()
    if not 0 < asked < 65536:
        return f"--port must be between 1 and 65535, got {asked}"
    if not _port_free(asked):
        return (f"port {asked} on 127.0.0.1 is already in use; pick another with --port, or "
                "leave it out to get a free one")
    return asked


_CHECK = """\
import sys, types
from zfwidgets.cli.common import check_inputs, default_model_choice
model = sys.argv[1] or default_model_choice()[0]
sys.exit(check_inputs(types.SimpleNamespace(model=model, image=sys.argv[2] or None)) or 0)
"""


def _start_check(args) -> subprocess.Popen:
    """:func:`~zfwidgets.cli.common.check_inputs` in a child process, started at once.

    It imports the models (torch: a few seconds and several hundred MB) while Voila starts:
    running it first would delay the page by that much, and running it here would keep that
    memory in this process for as long as the explorer is served. It runs at a lower priority
    than the kernel, which prepares the page meanwhile.
    """
    env = dict(os.environ, OMP_NUM_THREADS="1")
    nice = getattr(os, "nice", None)
    return subprocess.Popen([sys.executable, "-c", _CHECK, args.model or "", args.image or ""],
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=(lambda: nice(5)) if nice else None)


def _check_result(check: subprocess.Popen) -> int:
    """The check's exit status; its messages (the library's own) go to this stderr."""
    _, err = check.communicate()
    if err:
        sys.stderr.write(err)
    return check.returncode


def voila_command(notebook: Path, folder: Path, port: int) -> list[str]:
    """The Voila command serving the explorer notebook on 127.0.0.1:``port``.

    Not pre-heated (``preheat_kernel``): measured, a kernel started with Voila (rather than
    when the page asks for it) brought the first paint forward by at most the browser's own
    start, about a second, since it competes with Voila's start for the CPU; and Voila then
    keeps a second kernel with its own model warm for the next page, which doubles the memory
    and takes a core while the user's first clicks are computed. Voila runs through
    :mod:`zfwidgets.cli.voila_server` (Voila itself, without a 1.45 s optional import).
    """
    return [sys.executable, "-m", "zfwidgets.cli.voila_server", str(notebook), "--no-browser",
            f"--port={port}",
            "--Voila.ip=127.0.0.1", "--Voila.root_dir=" + str(folder),
            "--VoilaConfiguration.show_tracebacks=True"]


def run(args) -> int:
    """Run ``zfwidgets explore``; returns the exit status.

    Start-up is ordered for the first paint: the inputs are checked in a child process while
    Voila starts (a bad ``--model`` or ``--image`` stops it before the URL is printed).
    """
    if importlib.util.find_spec("voila") is None:
        return fail("the explorer app needs Voila: pip install voila")
    port = _pick_port(args.port)
    if isinstance(port, str):
        return fail(port)

    folder = Path(tempfile.mkdtemp(prefix="zfwidgets-explore-"))
    notebook = explorer_notebook(folder / "zfwidgets explorer.ipynb")
    env = kernel_env(args.model, args.image, os.environ)
    check = _start_check(args)
    # Same process group as this command: Ctrl-C in a terminal, or killing the group, stops both.
    proc = subprocess.Popen(voila_command(notebook, folder, port), env=env, cwd=folder,
                            stdin=subprocess.DEVNULL)

    def stop(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        bad = _check_result(check)
        if bad:
            return bad
        if not _wait_for_port(port, proc, timeout=120):
            code = proc.poll()
            return fail(f"Voila did not start (exit code {code}); see its messages above")
        url = f"http://127.0.0.1:{port}/"
        model = args.model or "the default model: see the page"
        print(f"zfwidgets explorer ({model}) at {url}", flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        if not args.no_browser:
            import webbrowser

            webbrowser.open(url)
        return proc.wait()
    except KeyboardInterrupt:
        print("\nstopping the explorer", flush=True)
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        for child in (check, proc):
            _stop(child)
        shutil.rmtree(folder, ignore_errors=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
