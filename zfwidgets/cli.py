"""The ``zfwidgets`` command: open the explorer, render figures headless, mine top-9 patches.

::

    zfwidgets explore [--model NAME] [--image PATH] [--port N] [--no-browser]
    zfwidgets render  [--model NAME] [--image PATH] [--out DIR] [--layer ID] [--rule RULE]
    zfwidgets mine ...            (see ``zfwidgets mine --help``)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["main", "explorer_notebook", "open_session"]

DEFAULT_MODEL = "efficientnet_lite0"
DEFAULT_PORT = 8866
ENV_MODEL = "ZFWIDGETS_MODEL"
ENV_IMAGE = "ZFWIDGETS_IMAGE"

_EXPLORER_CODE = """\
# The zfwidgets explorer, as served by `zfwidgets explore` (options come from the environment).
import os

from zfwidgets.cli import open_session
from zfwidgets.widgets import Explorer

Explorer(open_session(os.environ.get("ZFWIDGETS_MODEL") or "efficientnet_lite0",
                      os.environ.get("ZFWIDGETS_IMAGE") or None))
"""


def explorer_notebook(path: str | os.PathLike) -> Path:
    """Write the one-cell notebook that ``zfwidgets explore`` serves with Voila.

    The cell reads the model name and image path from the ``ZFWIDGETS_MODEL`` and
    ``ZFWIDGETS_IMAGE`` environment variables, which the kernel inherits from the server.
    """
    return one_cell_notebook(path, _EXPLORER_CODE)


def one_cell_notebook(path: str | os.PathLike, source: str) -> Path:
    """Write a Python 3 notebook holding one code cell with ``source`` (for Voila)."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    path = Path(path)
    nbformat.write(nb, str(path))
    return path


# ----------------------------------------------------------------------------- helpers

def _is_sample(image: str | None) -> bool:
    from .data import sample_images

    return bool(image) and not os.path.exists(image) and image in sample_images()


def open_session(model: str, image: str | None = None):
    """A Session for the command line: ``image`` is a file path or a sample photo's name."""
    from .backend.session import Session
    from .data import load_sample

    if _is_sample(image):
        session = Session(model)
        session.set_image(load_sample(image), name=image)
        return session
    return Session(model, image)


def _fail(message: str) -> int:
    print(f"zfwidgets: error: {message}", file=sys.stderr)
    return 2


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


#: glibc malloc settings for the explorer's kernel (a variable already set is left alone): keep
#: freed memory for reuse instead of returning every large tensor to the system and
#: page-faulting it in again on the next forward pass. Measured on the 2-core development
#: machine: EfficientNet-Lite0 forward passes 1.4-3x faster (batch 1: 31 -> 43 images/s, batch
#: 32: 19 -> 56), at the price of the kernel keeping its peak memory. Other C libraries ignore
#: these variables.
ALLOCATOR_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(1 << 30),
    "MALLOC_TRIM_THRESHOLD_": str(2 ** 31 - 1),
    "MALLOC_TOP_PAD_": str(1 << 28),
}


def kernel_env(model: str, image: str | None, environ) -> dict[str, str]:
    """The environment of the explorer's server and kernel: ``environ`` plus the model and image
    to open (a file path made absolute, a sample name kept) and :data:`ALLOCATOR_ENV` where
    ``environ`` does not set those variables itself."""
    env = dict(environ)
    for key, value in ALLOCATOR_ENV.items():  # the kernel's glibc reads them at start
        env.setdefault(key, value)
    env[ENV_MODEL] = model
    image = image or ""
    env[ENV_IMAGE] = str(Path(image).resolve()) if image and not _is_sample(image) else image
    return env


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


def _check_inputs(args) -> int | None:
    """Fail early, with the library's own messages, on a bad model name or image."""
    from .errors import ZFError
    from .models import list_models

    if args.model not in list_models():
        return _fail(f"unknown model {args.model!r}; models are {', '.join(list_models())}")
    if args.image and not _is_sample(args.image):
        from .data import load_image

        try:
            load_image(args.image)
        except ZFError as exc:
            return _fail(str(exc))
    return None


# ----------------------------------------------------------------------------- commands

def _render(args) -> int:
    from .errors import ZFError
    from .plots.overview import render_overview

    bad = _check_inputs(args)
    if bad is not None:
        return bad
    try:
        session = open_session(args.model, args.image)
        paths = render_overview(session, args.out, layer=args.layer, rule=args.rule)
    except ZFError as exc:
        return _fail(str(exc))
    out = Path(args.out).resolve()
    print(f"model {session.entry.name}, image {session.image_name}")
    print(f"wrote {len(paths)} figures to {out}:")
    for path in paths:
        print(f"  {path.name}")
    if session.logits.dim() == 1 and session.logits.numel() > 1:
        print("top-5:")
        for label, p in session.predict(5):
            print(f"  {100 * p:5.1f}%  {label}")
    return 0


def _explore(args) -> int:
    bad = _check_inputs(args)
    if bad is not None:
        return bad
    try:
        import voila  # noqa: F401
    except ImportError:
        return _fail("the explorer app needs Voila: pip install voila")
    if args.port is not None:
        if not 0 < args.port < 65536:
            return _fail(f"--port must be between 1 and 65535, got {args.port}")
        if not _port_free(args.port):
            return _fail(f"port {args.port} on 127.0.0.1 is already in use; pick another with "
                         "--port, or leave it out to get a free one")
        port = args.port
    else:
        port = DEFAULT_PORT if _port_free(DEFAULT_PORT) else _free_port()

    folder = Path(tempfile.mkdtemp(prefix="zfwidgets-explore-"))
    notebook = explorer_notebook(folder / "zfwidgets explorer.ipynb")
    env = kernel_env(args.model, args.image, os.environ)
    cmd = [sys.executable, "-m", "voila", str(notebook), "--no-browser", f"--port={port}",
           "--Voila.ip=127.0.0.1", "--Voila.root_dir=" + str(folder),
           "--VoilaConfiguration.show_tracebacks=True"]
    # Same process group as this command: Ctrl-C in a terminal, or killing the group, stops both.
    proc = subprocess.Popen(cmd, env=env, cwd=folder, stdin=subprocess.DEVNULL)

    def stop(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        if not _wait_for_port(port, proc, timeout=120):
            code = proc.poll()
            return _fail(f"Voila did not start (exit code {code}); see its messages above")
        url = f"http://127.0.0.1:{port}/"
        print(f"zfwidgets explorer ({args.model}) at {url}", flush=True)
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
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(folder, ignore_errors=True)


def _mine(argv: list[str]) -> int:
    try:
        from . import mining_cli
    except ImportError as exc:
        return _fail(f"`zfwidgets mine` is not available in this installation ({exc})")
    return int(mining_cli.main(argv) or 0)


def _parser() -> argparse.ArgumentParser:
    from .models import list_models

    parser = argparse.ArgumentParser(
        prog="zfwidgets",
        description="Zeiler & Fergus (2014) visualizations of any PyTorch CNN: live Jupyter "
                    "widgets and headless figures.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    models = ", ".join(list_models())

    p = sub.add_parser("explore", help="serve the interactive explorer (Voila) on 127.0.0.1",
                       description="Serve the explorer as a web app with Voila on 127.0.0.1 and "
                                   "print its URL. Ctrl-C stops it.")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model name ({models}); "
                   f"default {DEFAULT_MODEL} (offline, ImageNet weights)")
    p.add_argument("--image", help="image file, or a sample photo's name (chelsea, coffee, "
                   "astronaut ...), to start with; default chelsea")
    p.add_argument("--port", type=int, help=f"port (default {DEFAULT_PORT}, or a free one)")
    p.add_argument("--no-browser", action="store_true", help="do not open a web browser")

    p = sub.add_parser("render", help="write the main figures as PNG files (no browser)",
                       description="Write predictions, layer-1 filters, the feature maps of a "
                                   "layer and a deconvnet projection as PNG files.")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model name ({models})")
    p.add_argument("--image", help="image file, or a sample photo's name; default chelsea")
    p.add_argument("--out", default="zfwidgets-figures", help="output folder "
                   "(default ./zfwidgets-figures)")
    p.add_argument("--layer", help="layer id for the feature maps and the projection "
                   "(default: the model's middle layer)")
    p.add_argument("--rule", default="deconvnet", choices=("deconvnet", "guided", "gradient"),
                   help="backward rule of the projection")

    sub.add_parser("mine", help="mine the top-9 activations of a data set "
                                "(see `zfwidgets mine --help`)", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``zfwidgets`` command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "mine":
        return _mine(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    with contextlib.suppress(AttributeError):
        sys.stdout.reconfigure(line_buffering=True)
    if args.command == "render":
        return _render(args)
    return _explore(args)


if __name__ == "__main__":
    sys.exit(main())
