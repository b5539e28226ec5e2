"""Explorer: every view over one Session, with the layer and channel shared between them."""

from __future__ import annotations

import html
import importlib

import ipywidgets as W
import traitlets as T

from ..backend.defaults import informative_channel
from ..backend.rules import check_rule
from ..backend.session import Session
from ..models import list_models, model_status
from ..models.registry import IMAGENET_WEIGHTS
from .base import ErrorBox, MapView, SharedTraits, set_shown
from .deconv import DeconvView
from .grid import FeatureMapGrid
from .images import ImageChooser, TopPredictions
from .selector import LayerSelector

__all__ = ["Explorer", "explore", "OPTIONAL_TABS"]

#: Tabs shown when their module can be imported: (title, module, class name, extra keyword
#: arguments). Each view is built with the explorer's session and those of the shared traits it
#: has (layer, channel), so that sharing them afterwards changes nothing (no second computation);
#: the explorer's own layer selector drives the gallery, which therefore hides its own.
OPTIONAL_TABS = (
    ("Occlusion", "zfwidgets.widgets.occlusion", "OcclusionExplorer", {}),
    ("Top-9 patches", "zfwidgets.widgets.gallery", "PatchGallery", {"layer_selector": False}),
    ("Explain", "zfwidgets.widgets.explain", "ExplainView", {}),
)

_SHARED = ("layer", "channel")


class Explorer(MapView):
    """The whole explorer: image and model choice, top-5, layer selector, feature-map grid,
    deconvnet view, and (when installed) the occlusion and top-9 patch tabs.

    All views share one :class:`~zfwidgets.Session` and the ``layer`` and ``channel`` traits
    (a :class:`~zfwidgets.widgets.base.SharedTraits`): choosing a layer anywhere changes it
    everywhere, clicking a map in the grid selects that channel in every view, and each view
    redraws once per change. Only the selected tab's views compute: the others are hidden
    (:attr:`~zfwidgets.widgets.base.View.shown`), remember that they are stale, and catch up
    once when their tab is selected again.

    Parameters
    ----------
    session : Session, optional
        Defaults to ``Session()`` (EfficientNet-Lite0 and the default sample photo).
    layer : str, optional
        Defaults to the model's middle layer.
    channel : int, optional
        Defaults to the layer's strongest channel.
    rule : {"deconvnet", "guided", "gradient"}, optional
        Defaults to ``session.default_rule(layer)`` (issue 12).

    Attributes
    ----------
    layer, channel, rule : traits
        Set them from code to drive the explorer.
    selector, grid, deconv, images, top5 : widgets
        The views (:class:`LayerSelector`, :class:`FeatureMapGrid`, :class:`DeconvView`,
        :class:`ImageChooser`, :class:`TopPredictions`).
    tabs : ipywidgets.Tab
    extra : dict
        Optional views built so far, by tab title (built when their tab is first opened, or by
        :meth:`open_tab`).
    missing_tabs : dict
        Optional tabs left out because a package they need is not installed, with the reason.
    """

    rule = T.Unicode("deconvnet")

    def __init__(self, session: Session | None = None, *, layer: str | None = None,
                 channel: int | None = None, rule: str | None = None, **kwargs):
        tabs, missing = _optional_tabs()  # before anything is built: a broken tab raises here
        super().__init__(session if session is not None else Session(), **kwargs)
        # The explorer hears about model changes before its views (see session_changed).
        self.listen()
        layer = layer or self.fallback_layer()
        self.open_at(layer, None if channel is None else int(channel),
                     rule=rule or self.session.default_rule(layer))

        self.model_dropdown = W.Dropdown(
            options=self._model_options(), value=self.session.entry.name, description="model",
            layout=W.Layout(width="300px"), style={"description_width": "45px"})
        self.model_status = W.HTML()
        self.model_note = W.HTML(self._model_note(self.session.model_reason))
        self.model_note.add_class("zf-model-note")
        self.model_dropdown.observe(self._model_chosen, names="value")
        self.images = ImageChooser(self.session)
        self.top5 = TopPredictions(self.session)
        self.selector = LayerSelector(self.session, self.layer)
        self.grid = FeatureMapGrid(self.session, self.layer, self.channel)
        self.deconv = DeconvView(self.session, self.layer, self.channel, rule=self.rule)
        self.shared = SharedTraits(self, _SHARED)
        for view in (self.selector, self.grid, self.deconv):
            self.shared.add(view)
        self.link((self, "rule"), (self.deconv, "rule"))

        self.extra: dict = {}
        self.missing_tabs: dict = missing
        self._tab_specs = tabs
        pages = [W.HBox([self.grid, self.deconv],
                        layout=W.Layout(flex_flow="row wrap", align_items="flex-start",
                                        grid_gap="12px"))]
        pages += [W.VBox([W.HTML(f"<i>{title}: opening&hellip;</i>")]) for title, _ in tabs]
        self.tabs = W.Tab(children=pages, titles=["Feature maps"] + [title for title, _ in tabs])
        self.tabs.observe(self._tab_selected, names="selected_index")
        self.follow_selection(self.tabs)  # only the selected tab's views compute

        header = W.HTML("<div style='font-size:15px;font-weight:600;margin:2px 0 4px'>"
                        "zfwidgets &middot; what does the network see? "
                        "<span style='font-weight:400;color:#666;font-size:12px'>"
                        "(Zeiler &amp; Fergus 2014: feature maps, deconvnet, occlusion)</span>"
                        "</div>")
        controls = W.VBox([W.HBox([self.model_dropdown, self.model_status],
                                  layout=W.Layout(align_items="center")),
                           self.model_note, self.images, self.selector])
        self.children = [header,
                         W.HBox([controls, self.top5],
                                layout=W.Layout(flex_flow="row wrap", align_items="flex-start",
                                                grid_gap="16px")),
                         self.errors, self.tabs]
        self.add_class("zf-explorer")

    # ------------------------------------------------------------------ traits
    @T.validate("rule")
    def _check_rule(self, proposal):
        return check_rule(proposal["value"])

    def on_layer(self, layer: str) -> None:
        """Nothing: the views choose the channel that goes with a new layer, and share it."""

    # ------------------------------------------------------------------ optional tabs
    def _tab_selected(self, change) -> None:
        index = change["new"]
        if index is None or index == 0:
            return
        self.open_tab(self.tabs.titles[index])

    def open_tab(self, title: str):
        """Build (once) and return the optional view of tab ``title``; selects the tab.

        A view that fails to build shows its error in the tab (and ``None`` is returned).
        """
        titles = list(self.tabs.titles)
        if title not in titles or title == titles[0]:
            raise KeyError(f"no optional tab {title!r}; tabs are {titles}")
        index = titles.index(title)
        if self.tabs.selected_index != index:
            self.tabs.selected_index = index  # comes back here through _tab_selected
            return self.extra.get(title)
        if title not in self.extra:
            factory, options = dict(self._tab_specs)[title]
            page = self.tabs.children[index]
            view = None
            hidden = {} if self.shown else {"shown": False}
            try:
                has = getattr(factory, "class_trait_names", None)   # a view class, or any callable
                shared = {name: getattr(self, name) for name in _SHARED
                          if has is None or name in has()}
                view = factory(self.session, **shared, **options, **hidden)
                self.shared.add(view)
            except Exception as exc:
                if view is not None:
                    view.close()
                box = ErrorBox()
                box.show(exc)
                page.children = [box]
                return None
            self.extra[title] = view
            page.children = [view]
            set_shown(page, self.shown and self.tabs.selected_index == index)
        return self.extra[title]

    # ------------------------------------------------------------------ model choice
    def _model_options(self) -> list[tuple[str, str]]:
        """``(label, name)`` of every registered model: the label says when its weights are
        random or not available here (:func:`~zfwidgets.models.model_status`)."""
        options = []
        for name in list_models():
            status = model_status(name)
            options.append((name if status == IMAGENET_WEIGHTS else f"{name} · {status}", name))
        current = self.session.entry.name
        names = [name for _, name in options]
        return options if current in names else [(current, current)] + options

    def _model_note(self, reason: str) -> str:
        """One grey line under the dropdown: which model runs and why."""
        name = self.session.entry.name
        status = model_status(name) if name in list_models() else "your model"
        return (f"<div style='font-size:11px;color:#666;max-width:420px'>"
                f"{html.escape(name)} ({html.escape(status)}): {html.escape(reason)}</div>")

    def _show_model(self) -> None:
        """Show the session's model in the dropdown without choosing it again."""
        dropdown, name = self.model_dropdown, self.session.entry.name
        if dropdown.value == name:
            return
        dropdown.unobserve(self._model_chosen, names="value")
        try:
            dropdown.options = self._model_options()
            dropdown.value = name
        finally:
            dropdown.observe(self._model_chosen, names="value")

    def _model_chosen(self, change) -> None:
        name = change["new"]
        if not name or name == self.session.entry.name:
            return
        self.errors.clear()
        self.model_status.value = "<i>loading&hellip;</i>"
        try:
            self.session.set_model(name)
            self.model_note.value = self._model_note("chosen in the explorer")
        except Exception as exc:
            self.errors.show(exc)
            self._show_model()  # the choice snaps back
        finally:
            self.model_status.value = ""

    def session_changed(self, what: str) -> None:
        if what != "model":
            return
        self._show_model()
        self.model_note.value = self._model_note(self.session.model_reason)
        with self.shared.held():  # new layer (if it is gone) and channel: one redraw
            super().session_changed(what)
            self.channel = informative_channel(self.session, self.layer)

    def close(self) -> None:
        """Stop sharing the traits and close every view."""
        shared = getattr(self, "shared", None)
        if shared is not None:
            shared.close()
        super().close()


def _optional_tabs() -> tuple[list, dict]:
    """The :data:`OPTIONAL_TABS` that can be shown, ``[(title, (class, options))]``, and the
    reasons of those left out, ``{title: reason}``."""
    tabs, missing = [], {}
    for title, module, cls, options in OPTIONAL_TABS:
        factory, reason = _optional(module, cls)
        if factory is None:
            missing[title] = reason
        else:
            tabs.append((title, (factory, options)))
    return tabs, missing


def _optional(module: str, cls: str):
    """``(view class, None)``, or ``(None, reason)`` when a package the tab needs is missing.

    Only a missing third-party package may leave a tab out; any other error importing the
    module (a bug in zfwidgets itself, a missing name) is raised.
    """
    try:
        found = importlib.import_module(module)
    except ImportError as exc:
        missing = exc.name or ""
        if not missing or missing == "zfwidgets" or missing.startswith("zfwidgets."):
            raise
        return None, f"{module} needs {missing!r}, which is not installed ({exc})"
    return getattr(found, cls), None


def explore(model=None, image=None, *, layer: str | None = None,
            channel: int | None = None, rule: str = "deconvnet", **session_kwargs) -> Explorer:
    """Open the explorer in one line.

    Parameters
    ----------
    model : str, nn.Module, LoadedModel, Session or None
        A registry name, your own CNN, or an existing Session (then ``image`` and
        ``session_kwargs`` must be left out). ``None``: :func:`zfwidgets.default_model`
        (``alexnet`` when its ImageNet weights are in torch's hub cache, else the offline
        EfficientNet-Lite0; ``ZFWIDGETS_MODEL`` overrides).
    image : path, bytes, PIL image, array or None
        ``None``: the default sample photo.
    layer, channel, rule
        Initial view (see :class:`Explorer`).
    **session_kwargs
        Passed to :class:`~zfwidgets.Session` (``weights``, ``preprocessing``, ``labels``,
        ``device``).

    Returns
    -------
    Explorer
        Display it (it is the last expression of a cell) or keep it to drive it from code.

    Examples
    --------
    >>> import zfwidgets
    >>> zfwidgets.explore()                          # doctest: +SKIP
    >>> zfwidgets.explore("zfnet", "photo.jpg")      # doctest: +SKIP
    """
    if isinstance(model, Session):
        session = model
        if image is not None:
            session.set_image(image)
    else:
        session = Session(model, image, **session_kwargs)
    return Explorer(session, layer=layer, channel=channel, rule=rule)
