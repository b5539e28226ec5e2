"""Shared pieces of the widgets: ipympl figures outside pyplot, error display, request tokens.

Figures are made with :class:`matplotlib.figure.Figure` and given an ipympl canvas directly, so
they work whatever matplotlib backend the notebook uses (``%matplotlib widget`` or not), never
enter pyplot's figure registry, and are closed with :func:`close_figure` when a view is closed.
"""

from __future__ import annotations

import contextlib
import html
import itertools
import traceback
import warnings

import ipywidgets as W
from matplotlib.figure import Figure

__all__ = ["canvas_figure", "close_figure", "close_tree", "ErrorBox", "Latest", "Requests",
           "SessionView"]

_numbers = itertools.count(10_000)


def _canvas_class():
    """ipympl's canvas widget, with frames PNG-encoded at zlib level 1.

    A frame is the figure's pixels ("full" mode) or, after the first one, only the pixels
    that changed ("diff" mode), as matplotlib's web backend protocol expects. Level 1 encodes
    about 2-3x faster than the default level 6 for the same size within ~10 %, and encoding
    is most of the cost of a redraw.
    """
    global _Canvas
    if _Canvas is None:
        import io

        import numpy as np
        from ipympl.backend_nbagg import Canvas
        from PIL import Image

        class FastCanvas(Canvas):
            def get_diff_image(self):
                if not self._png_is_old:
                    return None
                rgba = np.asarray(self.get_renderer().buffer_rgba())
                words = rgba.view(np.uint32)[..., 0]   # one integer per pixel: fast compare
                previous = self._last_buff
                if (self._force_full or previous.shape != words.shape
                        or not (rgba[..., 3] == 255).all()):
                    self.set_image_mode("full")
                    frame = words
                else:
                    self.set_image_mode("diff")
                    frame = np.where(words != previous, words, 0)
                self._last_buff = words.copy()
                self._force_full = False
                self._png_is_old = False
                pixels = np.ascontiguousarray(frame).view(np.uint8).reshape(frame.shape + (4,))
                with io.BytesIO() as out:
                    Image.fromarray(pixels).save(out, format="png", compress_level=1)
                    return out.getvalue()

        _Canvas = FastCanvas
    return _Canvas


_Canvas = None


def canvas_figure(width: float, height: float, dpi: float = 100) -> Figure:
    """A matplotlib figure drawn by an ipympl canvas widget (``fig.canvas``).

    The canvas has no header, footer or toolbar (clicks select things here, they do not pan)
    and a fixed size of ``width`` x ``height`` inches.
    """
    from ipympl.backend_nbagg import FigureManager

    fig = Figure(figsize=(width, height), dpi=dpi)
    fig.patch.set_facecolor("white")
    canvas = _canvas_class()(fig)
    with warnings.catch_warnings():
        # ipympl's Toolbar hands its canvas on to traitlets' constructor, which warns (a
        # DeprecationWarning about ipympl's code, not ours or the user's).
        warnings.filterwarnings("ignore", "Passing unrecognized arguments",
                                DeprecationWarning)
        FigureManager(canvas, next(_numbers))
    canvas.header_visible = False
    canvas.footer_visible = False
    canvas.toolbar_visible = False
    canvas.resizable = False
    canvas.capture_scroll = False
    canvas.on_msg(_keep_fixed_size)
    # The size a view starts with. ipympl sets it only when the browser side says hello, and
    # a view created before that answer (e.g. "run all" in JupyterLab) would stay 0 x 0.
    canvas._size = (float(width * dpi), float(height * dpi))
    canvas.layout.width = f"{int(round(width * dpi))}px"
    canvas.layout.height = f"{int(round(height * dpi))}px"
    return fig


def _keep_fixed_size(canvas, content, buffers) -> None:
    # ipympl's front-end turns `resizable` back on when a view connects; say it again then,
    # so no resize handle sits where a click should select a map.
    if isinstance(content, dict) and content.get("type") == "initialized":
        canvas.send_state("resizable")


def close_figure(fig: Figure | None) -> None:
    """Close a figure made by :func:`canvas_figure`: its canvas and toolbar widgets too."""
    if fig is None:
        return
    canvas = fig.canvas
    manager = getattr(canvas, "manager", None)
    toolbar = getattr(manager, "toolbar", None)
    for widget in (toolbar, canvas):
        if isinstance(widget, W.Widget):
            _close_with_parts(widget)


class ErrorBox(W.HTML):
    """A red message line inside a widget; empty (and hidden) when there is no error.

    ``show(exc)`` displays ``exc``: the message of a zfwidgets error (they name the problem and
    the value), the type and message of anything else.
    """

    def __init__(self, **kwargs):
        super().__init__(value="", **kwargs)
        self.layout.display = "none"
        self.add_class("zf-error")
        self.message = ""
        self.details = ""

    def show(self, exc: BaseException | str) -> None:
        """Display ``exc`` (an exception or a text)."""
        from ..errors import ZFError

        if isinstance(exc, BaseException):
            text = str(exc) if isinstance(exc, ZFError) else f"{type(exc).__name__}: {exc}"
            self.details = "".join(traceback.format_exception(exc))
        else:
            text = str(exc)
        self.message = text
        self.value = (f"<div style='color:#b00020;background:#fdecea;padding:4px 8px;"
                      f"border-radius:4px;white-space:pre-wrap'>&#9888; {html.escape(text)}</div>")
        self.layout.display = None

    def clear(self) -> None:
        """Hide the message."""
        self.message = ""
        self.value = ""
        self.layout.display = "none"


class Requests:
    """Request tokens: a newer request supersedes an older one.

    ``token = requests.new()`` before slow work; ``requests.current(token)`` after it tells
    whether the result may still be shown (no newer request started and the session has not
    changed since).
    """

    def __init__(self, session):
        self.session = session
        self._count = 0

    def new(self) -> tuple[int, int]:
        """Start a request; returns its token."""
        self._count += 1
        return self._count, self.session.version

    def current(self, token: tuple[int, int]) -> bool:
        """Whether ``token`` is still the newest request for the current session state."""
        return token == (self._count, self.session.version)


class Latest:
    """Run only the newest of quickly repeated UI requests (clicks arriving in a burst).

    Inside a running kernel the call waits ``delay`` seconds on the event loop and is
    cancelled by a newer one: clicks that queued up while a projection was computing collapse
    into the last one. Without an event loop (scripts, tests) the call runs at once.
    """

    def __init__(self, delay: float = 0.03):
        self.delay = delay
        self._handle = None

    def __call__(self, fn) -> None:
        import asyncio

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            fn()
            return
        if self._handle is not None:
            self._handle.cancel()
        self._handle = loop.call_later(self.delay, fn)


class SessionView:
    """Mixin for widgets over a :class:`~zfwidgets.Session`: listens to it, closes cleanly.

    A subclass sets ``self.session`` and calls :meth:`_listen` once built; it implements
    ``_on_session(what)`` (``"image"`` or ``"model"``) and lists its figures in ``self._figures``.
    """

    _holds = 0
    _dirty = False

    def _listen(self) -> None:
        self.session.on_change(self._session_changed)

    # ------------------------------------------------------------------ batched refreshes
    def hold(self) -> None:
        """Defer refreshes until the matching :meth:`release` (calls nest)."""
        self._holds += 1

    def release(self) -> None:
        """End a :meth:`hold`; refresh once if something asked for it meanwhile."""
        self._holds = max(0, self._holds - 1)
        if self._holds == 0 and self._dirty:
            self._dirty = False
            self.request_refresh()

    @contextlib.contextmanager
    def held(self):
        """Context manager around :meth:`hold` / :meth:`release`."""
        self.hold()
        try:
            yield self
        finally:
            self.release()

    def request_refresh(self) -> None:
        """Redraw now, or once the current hold ends; errors are shown inside the widget."""
        if self._holds:
            self._dirty = True
            return
        try:
            self.refresh()
        except Exception as exc:
            self.errors.show(exc)

    def select_strongest(self, layer: str) -> None:
        """Select ``layer``'s strongest channel (what a view does when the layer changes);
        an error is shown inside the widget and the channel is left as it was."""
        try:
            self.channel = self.session.strongest_channel(layer)
        except Exception as exc:
            self.errors.show(exc)

    def refresh(self) -> None:  # pragma: no cover - overridden
        """Bring the figures up to date with the traits and the session."""

    def _session_changed(self, what: str) -> None:
        try:
            self._on_session(what)
        except Exception as exc:  # keep the session's other listeners running
            self.errors.show(exc)

    def _on_session(self, what: str) -> None:  # pragma: no cover - overridden
        pass

    def close(self) -> None:
        """Stop listening to the session and close the figures and child widgets."""
        session = getattr(self, "session", None)
        if session is not None:
            session.off_change(self._session_changed)
        for fig in getattr(self, "_figures", []):
            close_figure(fig)
        self._figures = []
        for child in list(getattr(self, "children", ())):
            close_tree(child)
        parts = [getattr(self, name, None) for name in ("layout", "style")]
        super().close()
        for part in parts:
            if isinstance(part, W.Widget):
                part.close()


def close_tree(widget) -> None:
    """Close a widget and, for boxes, everything inside it."""
    if isinstance(widget, SessionView):
        widget.close()
        return
    for child in list(getattr(widget, "children", ())):
        close_tree(child)
    _close_with_parts(widget)


def _close_with_parts(widget) -> None:
    parts = [getattr(widget, name, None) for name in ("layout", "style")]
    widget.close()
    for part in parts:
        if isinstance(part, W.Widget):
            part.close()
