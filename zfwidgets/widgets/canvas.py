"""ipympl canvases for matplotlib figures: made outside pyplot, closed with their widgets.

Figures are made with :class:`matplotlib.figure.Figure` and given an ipympl canvas directly, so
they work whatever matplotlib backend the notebook uses (``%matplotlib widget`` or not), never
enter pyplot's figure registry, and are closed with :func:`close_figure` when a view is closed.
The canvas encodes its frames faster than ipympl's own and sends a new frame as soon as the
figure changes, when the browser is ready for it (see :func:`_canvas_class`), and says how long a
frame still waits for the browser (:func:`frames_due`: a long job lets it out before its next step).
"""

from __future__ import annotations

import io
import itertools
import time
import warnings
import weakref

import ipywidgets as W
from matplotlib.figure import Figure

__all__ = ["canvas_figure", "close_figure", "close_widget", "frames_due"]

_numbers = itertools.count(10_000)
_live: weakref.WeakSet = weakref.WeakSet()   # the canvases made here and not closed

# How long a changed figure's frame is worth waiting for before a long job's next step (see
# frames_due): a connected browser asks for a frame within one round trip; a canvas just made
# waits for its browser view's hello (refresh, image mode, initialized, draw: four messages)
HELLO_WAIT = 1.5
FRAME_WAIT = 0.5


class _Frames:
    """What :func:`_canvas_class` adds to ipympl's canvas (mixed in before it): frames pushed
    as soon as they are drawn, each a whole PNG encoded fast.

    **Frames.** matplotlib's web protocol lets a frame after the first carry only the pixels
    that changed ("diff" mode), but ipympl's browser side keeps one ``Image`` per figure and
    replaces its source when the next frame arrives: a frame still loading is dropped, and a
    diff drawn without the frame before it leaves the figure blank (*Run All* in JupyterLab left
    the explorer's deconv view blank in about half the runs on a busy machine). Every frame is
    therefore "full", so a dropped frame is made good by the next one, PNG-encoded at zlib
    level 1 (about 2-3x faster than the default level 6 for the same size within ~10 %; a
    660 x 225 frame: ~9 ms, ~180 KB).

    **When a frame is sent.** ipympl's ``draw_idle`` only asks the browser to ask for a frame
    (a "draw" event out, a "draw" request back, then the frame): a round trip through the
    browser that waits behind whatever the kernel does next (the projection of the deconv view
    after the grid's highlight, an occlusion step), so each canvas of a change was painted only
    once every view had finished. Here a figure that changes is drawn and its frame sent at
    once, when the browser is *ready*: it has asked for a frame since the last frame was sent.
    Every frame is followed by a "draw" event, so a live browser asks again at once and is
    ready for the next change; until it has asked, ``draw_idle`` falls back to ipympl's
    protocol (ask the browser), and the frame follows its request. A front end that went away
    answers nothing: one frame at most is drawn for nobody. The cursor never changes (no
    navigation tools), which saves two messages a frame.

    **While a long job runs.** The browser's requests wait in the kernel's queue behind each
    step of a job (an occlusion stage takes 0.3-0.8 s), so a canvas just made, whose browser view
    says hello in four messages before it asks for its first frame, was painted only after four
    steps (3.3 s after the Occlusion tab was opened, its first stage ready after 0.5 s).
    :meth:`frame_due` tells the :class:`~zfwidgets.widgets.runner.Runner` how long the frame is
    worth waiting for: it lets the event loop answer the browser first.
    """

    _ready = False    # the browser asked for a frame after the last one was sent
    _wanted = False   # the figure changed since the last frame
    _drawing = False
    _made = 0.0       # time.monotonic() when made (canvas_figure)
    _wanted_since = 0.0

    def draw_idle(self):
        if self._ready and not self._drawing:
            self._wanted = False
            self.draw()             # the frame goes out now
        else:
            if not self._wanted:
                self._wanted_since = time.monotonic()
            self._wanted = True
            super().draw_idle()     # ask the browser to ask for it

    def frame_due(self) -> float:
        """Until when (``time.monotonic()``) a frame of the changed figure is worth waiting
        for: 0 when none waits. A browser that said hello gets :data:`FRAME_WAIT` from the
        change; a canvas no browser has greeted yet :data:`HELLO_WAIT` from when it was made
        (a canvas never shown costs a job that much once, not on every step)."""
        if not self._wanted or _without_front_end(self):
            return 0.0
        if not self.syncing_data_url:   # ipympl: the browser's view said "initialized"
            return self._wanted_since + FRAME_WAIT
        return self._made + HELLO_WAIT

    def draw(self):
        self._drawing = True
        try:
            super().draw()
        finally:
            self._drawing = False

    def set_cursor(self, cursor):
        # No navigation tools here (clicks select): matplotlib's only cursor change would be
        # the "wait" cursor around a draw after a pause, two messages a frame.
        pass

    def handle_draw(self, event):
        # The browser asks for a frame: it has received every frame sent before.
        self._ready = True
        if self._wanted:
            self._wanted = False
            self.draw()

    def send_binary(self, data):
        super().send_binary(data)
        self._ready = False
        self.send_event("draw")     # a live browser answers with a request: ready

    def get_diff_image(self):
        if not self._png_is_old:
            return None
        import numpy as np
        from PIL import Image

        rgba = np.asarray(self.get_renderer().buffer_rgba())
        self.set_image_mode("full")
        # ipympl's own data URL (no browser connected yet) is made from _last_buff
        self._last_buff = rgba.view(np.uint32)[..., 0].copy()
        self._force_full = False
        self._png_is_old = False
        with io.BytesIO() as out:
            Image.fromarray(np.ascontiguousarray(rgba)).save(out, format="png", compress_level=1)
            return out.getvalue()


def _without_front_end(canvas) -> bool:
    """Whether no browser can ever ask for this canvas's frames: no kernel (plain Python, the
    tests) gives widgets a dummy comm, and a closed widget has none."""
    comm = getattr(canvas, "comm", None)
    return comm is None or type(comm).__name__ == "DummyComm"


def frames_due() -> float:
    """Until when (``time.monotonic()``) a frame of a changed figure made by
    :func:`canvas_figure` is worth waiting for, over all open ones: 0 when none waits.

    A :class:`~zfwidgets.widgets.runner.Runner` waits until then (or until the frames are
    out) before a job's next step, so that the browser's requests are answered and what a view
    just drew is painted while the job goes on.

    Returns
    -------
    float
    """
    return max((canvas.frame_due() for canvas in list(_live)), default=0.0)


def _canvas_class():
    """ipympl's canvas widget with :class:`_Frames` mixed in (made once, on first use: ipympl
    is imported only when a figure is made)."""
    global _Canvas
    if _Canvas is None:
        from ipympl.backend_nbagg import Canvas

        _Canvas = type("FastCanvas", (_Frames, Canvas), {})
    return _Canvas


_Canvas = None


def canvas_figure(width: float, height: float, dpi: float = 100) -> Figure:
    """A matplotlib figure drawn by an ipympl canvas widget (``fig.canvas``).

    The canvas has no header, footer or toolbar (clicks select things here, they do not pan)
    and a fixed size. A view makes its figures with :meth:`View.new_figure
    <zfwidgets.widgets.base.View.new_figure>`, which closes them with the view.

    Parameters
    ----------
    width, height : float
        Size in inches.
    dpi : float
        Pixels per inch (the canvas is ``width * dpi`` x ``height * dpi`` pixels).

    Returns
    -------
    matplotlib.figure.Figure
        Outside pyplot's registry; close it with :func:`close_figure`.
    """
    from ipympl.backend_nbagg import FigureManager

    fig = Figure(figsize=(width, height), dpi=dpi)
    fig.patch.set_facecolor("white")
    canvas = _canvas_class()(fig)
    canvas._made = time.monotonic()
    _live.add(canvas)
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
    """Close a figure made by :func:`canvas_figure`: its canvas and toolbar widgets too.

    Parameters
    ----------
    fig : Figure or None
        ``None`` does nothing.
    """
    if fig is None:
        return
    canvas = fig.canvas
    _live.discard(canvas)
    manager = getattr(canvas, "manager", None)
    toolbar = getattr(manager, "toolbar", None)
    for widget in (toolbar, canvas):
        if isinstance(widget, W.Widget):
            close_widget(widget)


def close_widget(widget) -> None:
    """Close ``widget`` and the layout and style models it owns (ipywidgets leaves them open)."""
    parts = [getattr(widget, name, None) for name in ("layout", "style")]
    widget.close()
    for part in parts:
        if isinstance(part, W.Widget):
            part.close()
