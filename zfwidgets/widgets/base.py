"""The view skeleton: what every widget over a Session has, so that a view holds only what it draws.

* :class:`View` owns the session, an :class:`ErrorBox`, request tokens (:class:`Requests`), the
  figures, links and runners it makes (closed or removed by :meth:`View.close`), batched
  refreshes (:meth:`View.hold` / :meth:`View.release`: several traits, one redraw), the
  reaction to the session's changes (override :meth:`View.session_changed`) and whether it is
  on screen (:attr:`View.shown`): a hidden view computes nothing; what it is asked to redraw
  meanwhile it redraws once, when it is shown again (or on :meth:`View.update_now`).
* :class:`LayerView` adds the validated ``layer`` trait, :class:`MapView` the ``channel`` trait
  of one feature map of that layer.
* :class:`SharedTraits` keeps traits equal across several views (the :class:`Explorer`'s layer
  and channel): a change reaches every view, and each redraws once.

A new view subclasses one of them, builds its controls, calls :meth:`View.ready` at the end of
its constructor and implements :meth:`View.refresh` (what it draws). Its long work goes through
:meth:`View.new_runner` (paused while the view is hidden). A container that shows only some of
its views at a time (tabs) says which with :func:`set_shown` (see :meth:`View.follow_selection`).
"""

from __future__ import annotations

import contextlib
import html
import traceback

import ipywidgets as W
import traitlets as T
from matplotlib.figure import Figure

from ..backend.defaults import informative_channel
from ..backend.defaults import opening_layer
from ..errors import OutOfRangeError, UnknownLayerError
from .canvas import canvas_figure, close_figure, close_widget
from .runner import Runner

__all__ = ["ErrorBox", "LayerView", "MapView", "Requests", "SharedTraits", "View", "close_tree",
           "keep_recent", "set_shown"]


class ErrorBox(W.HTML):
    """A red message line inside a widget; empty (and hidden) when there is no error.

    ``show(exc)`` displays ``exc``: the message of a zfwidgets error (they name the problem and
    the value), the type and message of anything else.

    Attributes
    ----------
    message : str
        The text shown ("" when hidden).
    details : str
        The traceback of the exception shown, if any.
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


class View(W.VBox):
    """Base of every widget over a :class:`~zfwidgets.Session`.

    Parameters
    ----------
    session : zfwidgets.Session
    **kwargs
        Passed to :class:`ipywidgets.VBox`.

    Attributes
    ----------
    session : zfwidgets.Session
        A plain attribute, not a synced trait.
    errors : ErrorBox
        Where the view shows what went wrong (ipympl would swallow callback errors); the
        subclass places it among its children.
    shown : bool
        Whether the view is on screen (a trait, not synced; default ``True``). While it is
        false the view computes nothing: a refresh it is asked for (a new image, a new layer)
        marks it stale, its runners pause, and the views inside it are hidden too; set back
        to true, it resumes its jobs and refreshes once if it is stale. The :class:`Explorer`
        hides the views of the tabs not selected.
    stale : bool
        Whether a refresh was skipped because the view was hidden (read-only).
    """

    shown = T.Bool(True)

    def __init__(self, session, **kwargs):
        self._runners: list[Runner] = []
        self._stale = False
        super().__init__(**kwargs)
        self.session = session
        self.errors = ErrorBox()
        self._requests = Requests(session)
        self._figures: list[Figure] = []
        self._links: list = []
        self._followed: list = []
        self._holds = 0
        self._dirty = False
        self._listening = False

    # ------------------------------------------------------------------ what the view owns
    def new_figure(self, width: float, height: float, dpi: float = 100) -> Figure:
        """A figure drawn by an ipympl canvas (see :func:`canvas_figure`), closed with the view."""
        fig = canvas_figure(width, height, dpi=dpi)
        self._figures.append(fig)
        return fig

    def link(self, source: tuple, target: tuple) -> T.link:
        """:func:`traitlets.link` ``source`` and ``target``; unlinked when the view closes."""
        link = T.link(source, target)
        self._links.append(link)
        return link

    def new_runner(self, *, watch_session: bool = True, **callbacks) -> Runner:
        """A :class:`~zfwidgets.widgets.runner.Runner` of long jobs over this view's session,
        showing errors in its error box; paused while the view is hidden, its job is stopped
        when the view closes.

        ``watch_session``: drop a job when the session changes (its image or model); ``False``
        for work that depends on neither (the view stops it itself when it must).
        ``callbacks``: ``on_step``, ``on_end``, ``background`` (see the Runner).
        """
        runner = Runner(self.session if watch_session else None, errors=self.errors,
                        **callbacks)
        if not self.shown:
            runner.pause()
        self._runners.append(runner)
        return runner

    def ready(self, refresh: bool = True) -> None:
        """End of the constructor: draw (unless ``refresh`` is false), then follow the session."""
        if refresh:
            self.request_refresh()
        self.listen()

    def listen(self) -> None:
        """Follow the session's changes (once; :meth:`ready` calls it)."""
        if not self._listening:
            self.session.on_change(self._session_changed)
            self._listening = True

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
        """Context manager around :meth:`hold` / :meth:`release`: several changes, one redraw."""
        self.hold()
        try:
            yield self
        finally:
            self.release()

    def request_refresh(self) -> None:
        """Redraw now, or once the current hold ends, or (hidden) once shown again; errors are
        shown inside the widget."""
        if self._holds:
            self._dirty = True
            return
        if not self.shown:
            self._stale = True
            return
        self._refresh()

    def update_now(self) -> None:
        """Bring the view up to date now, shown or not (an explicit request): its paused jobs
        go on and it refreshes."""
        for runner in self._runners:
            runner.resume()
        self._refresh()

    def _refresh(self) -> None:
        self._stale = False
        try:
            self.refresh()
        except Exception as exc:
            self.errors.show(exc)

    def refresh(self) -> None:
        """Override point: bring the figures up to date with the traits and the session."""

    # ------------------------------------------------------------------ on screen or not
    @property
    def stale(self) -> bool:
        """Whether the view skipped a refresh while hidden (it refreshes when shown)."""
        return self._stale

    @T.observe("shown")
    def _shown_changed(self, change) -> None:
        shown = change["new"]
        for runner in self._runners:
            if shown:
                runner.resume()
            else:
                runner.pause()
        self.show_children(shown)
        if shown and self._stale:
            self.request_refresh()

    def show_children(self, shown: bool) -> None:
        """Override point: show or hide the views inside this one when it is shown or hidden.
        The default passes ``shown`` to every child (:func:`set_shown`: in a tab container,
        only the selected page is shown)."""
        for child in self.children:
            set_shown(child, shown)

    def follow_selection(self, container) -> None:
        """Keep the views in the pages of ``container`` (a Tab, Accordion or Stack inside this
        view) shown only while their page is selected and this view is shown."""
        def selected(change):
            set_shown(container, self.shown)

        container.observe(selected, names="selected_index")
        self._followed.append((container, selected))

    # ------------------------------------------------------------------ the session
    def session_changed(self, what: str) -> None:
        """Override point: the session's image (``what="image"``), model (``"model"``) or
        knocked-out maps (``"knockouts"``: same layers, new values) changed.

        Runs inside a hold (one redraw at the end); errors are shown inside the widget. The
        default redraws.
        """
        self.request_refresh()

    def _session_changed(self, what: str) -> None:
        try:
            with self.held():
                self.session_changed(what)
        except Exception as exc:  # keep the session's other listeners running
            self.errors.show(exc)

    def close(self) -> None:
        """Stop listening to the session, stop runners, unlink, close figures and children."""
        if getattr(self, "_listening", False):
            self.session.off_change(self._session_changed)
            self._listening = False
        for runner in getattr(self, "_runners", ()):
            runner.close()
        for container, callback in getattr(self, "_followed", ()):
            container.unobserve(callback, names="selected_index")
        self._followed = []
        for link in getattr(self, "_links", ()):
            link.unlink()
        self._links = []
        for fig in getattr(self, "_figures", ()):
            close_figure(fig)
        self._figures = []
        for child in list(self.children):
            close_tree(child)
        parts = [getattr(self, name, None) for name in ("layout", "style")]
        super().close()
        for part in parts:
            if isinstance(part, W.Widget):
                part.close()


class LayerView(View):
    """A :class:`View` of one layer of the session's model.

    Attributes
    ----------
    layer : str
        A layer id of the session's model (a trait). Setting anything else raises
        :class:`~zfwidgets.errors.UnknownLayerError`, with the nearest names as suggestions
        (or shows it inside the view: :attr:`raise_unknown_layer`).
    """

    layer = T.Unicode("")

    #: Setting an unknown layer raises (``True``), or shows the error inside the view and keeps
    #: the layer (``False``; a view whose first layer is unknown always raises).
    raise_unknown_layer = True

    def fallback_layer(self) -> str:
        """The layer shown when none is given, and when the layer left the model (override:
        the occlusion view opens on the top layer)."""
        return opening_layer(self.session)

    @T.validate("layer")
    def _check_layer(self, proposal):
        name = proposal["value"]
        try:
            self.session.layer_info(name)  # UnknownLayerError with suggestions
        except UnknownLayerError as exc:
            if self.raise_unknown_layer or not self.layer:
                raise
            self.errors.show(exc)
            return self.layer
        return name

    @T.observe("layer")
    def _layer_changed(self, change) -> None:
        with self.held():
            self.on_layer(change["new"])
            self.request_refresh()

    def on_layer(self, layer: str) -> None:
        """Override point: what follows a new ``layer`` before the (one) redraw."""

    def session_changed(self, what: str) -> None:
        """A new model that lacks the layer falls back to :meth:`fallback_layer`; redraw."""
        if what == "model" and self.layer not in self.session.layers:
            self.layer = self.fallback_layer()
        self.request_refresh()


class MapView(LayerView):
    """A :class:`LayerView` of one feature map: a layer and a channel.

    Attributes
    ----------
    channel : int
        The map (a trait, ``>= 0``). Whether the layer has it is checked when drawing, not
        when setting (the layer may change in the same batch): see :meth:`check_channel`.
    """

    channel = T.Int(0)

    def open_at(self, layer: str | None, channel: int | None, **traits) -> None:
        """Set the first ``layer`` (default :meth:`fallback_layer`), then ``traits`` in order,
        then ``channel`` (default: ``defaults.informative_channel``, alive and not flat); one redraw."""
        with self.held():
            self.layer = layer or self.fallback_layer()
            for name, value in traits.items():
                setattr(self, name, value)
            self.channel = informative_channel(self.session, self.layer) if channel is None \
                else channel

    @T.validate("channel")
    def _check_channel(self, proposal):
        value = int(proposal["value"])
        if value < 0:
            raise T.TraitError(f"channel must be >= 0, got {value}")
        return value

    @T.observe("channel")
    def _channel_changed(self, change) -> None:
        self.request_refresh()

    def on_layer(self, layer: str) -> None:
        """A new layer selects its strongest channel (override to keep the channel)."""
        self.select_strongest(layer)

    def select_strongest(self, layer: str) -> None:
        """Select ``layer``'s strongest channel; an error is shown inside the widget and the
        channel is left as it was."""
        try:
            self.channel = informative_channel(self.session, layer)
        except Exception as exc:
            self.errors.show(exc)

    def check_channel(self) -> int:
        """The layer's channel count; :class:`~zfwidgets.errors.OutOfRangeError` when the layer
        has no map ``channel``."""
        count = self.session.layer_info(self.layer).shape[0]
        if not 0 <= self.channel < count:
            raise OutOfRangeError(f"channel {self.channel} is out of range for layer "
                                  f"{self.layer!r} ({count} channels: 0..{count - 1})")
        return count


class SharedTraits:
    """Keep traits equal across several widgets, each redrawing once per change.

    When a member changes a shared trait, every :class:`View` member is held, the value is
    copied to the other members (whose own reactions, such as a new layer selecting its
    strongest channel, are shared the same way), and the views are released: each redraws
    once, with every shared value already new (never the new channel with the old layer).

    Parameters
    ----------
    owner : traitlets.HasTraits
        The first member; later members take its values when they join.
    names : sequence of str
        The shared traits (a member shares those it has).
    """

    def __init__(self, owner, names):
        self.names = tuple(names)
        self._members: list[tuple[object, list[str]]] = []
        self.add(owner)

    def add(self, member) -> None:
        """Share the traits ``member`` has: it takes the owner's values, then follows."""
        names = [name for name in self.names if member.has_trait(name)]
        if self._members:
            owner = self._members[0][0]
            with self.held():
                for name in names:
                    if owner.has_trait(name) and getattr(member, name) != getattr(owner, name):
                        setattr(member, name, getattr(owner, name))
        member.observe(self._changed, names=names)
        self._members.append((member, names))

    @contextlib.contextmanager
    def held(self):
        """Hold every view member: changes made inside redraw each view once, at the end."""
        views = [member for member, _ in self._members if isinstance(member, View)]
        for view in views:
            view.hold()
        try:
            yield
        finally:
            for view in views:
                view.release()

    def _changed(self, change) -> None:
        name, value = change["name"], change["new"]
        with self.held():
            for member, names in list(self._members):
                if name in names and getattr(member, name) != value:
                    setattr(member, name, value)

    def close(self) -> None:
        """Stop sharing (the members stay as they are)."""
        for member, names in self._members:
            member.unobserve(self._changed, names=names)
        self._members = []


def keep_recent(cache, key, value, most: int):
    """Store ``value`` under ``key`` in ``cache`` (an ``OrderedDict``), dropping the oldest
    entries beyond ``most``: a view's bounded memory of results it may show again."""
    cache[key] = value
    while len(cache) > most:
        cache.popitem(last=False)
    return value


def set_shown(widget, shown: bool) -> None:
    """Tell the views in ``widget``'s tree whether they are on screen (see :attr:`View.shown`).

    A :class:`View` takes ``shown`` and passes it on to the views inside it; in a Tab,
    Accordion or Stack only the selected page's views are shown; other widgets pass it to
    their children.
    """
    if isinstance(widget, View):
        widget.shown = shown
        return
    children = list(getattr(widget, "children", ()))
    if isinstance(widget, (W.Tab, W.Accordion, W.Stack)):
        selected = widget.selected_index
        states = [shown and index == selected for index in range(len(children))]
    else:
        states = [shown] * len(children)
    for state in (False, True):  # hide first: what leaves the screen pauses before the rest
        for child, child_shown in zip(children, states):
            if child_shown is state:
                set_shown(child, state)


def close_tree(widget) -> None:
    """Close a widget and, for boxes, everything inside it."""
    if isinstance(widget, View):
        widget.close()
        return
    for child in list(getattr(widget, "children", ())):
        close_tree(child)
    close_widget(widget)
