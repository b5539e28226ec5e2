"""Explorer: every view over one Session, with the layer and channel shared between them."""

from __future__ import annotations

import importlib

import ipywidgets as W
import traitlets as T

from ..backend.rules import check_rule
from ..backend.session import Session
from ..models import list_models
from ..backend.defaults import opening_layer
from .base import ErrorBox, SessionView, close_tree
from .deconv import DeconvView
from .grid import FeatureMapGrid
from .images import ImageChooser, TopPredictions
from .selector import LayerSelector

__all__ = ["Explorer", "explore", "OPTIONAL_TABS"]

#: Tabs shown when their module can be imported: (title, module, class name, extra keyword
#: arguments). Each view is built with the explorer's session, layer and channel, so that linking
#: the shared traits afterwards changes nothing (no second computation); the explorer's own layer
#: selector drives the gallery, which therefore hides its own.
OPTIONAL_TABS = (
    ("Occlusion", "zfwidgets.widgets.occlusion", "OcclusionExplorer", {}),
    ("Top-9 patches", "zfwidgets.widgets.gallery", "PatchGallery", {"layer_selector": False}),
)

_SHARED = ("layer", "channel")


class Explorer(SessionView, W.VBox):
    """The whole explorer: image and model choice, top-5, layer selector, feature-map grid,
    deconvnet view, and (when installed) the occlusion and top-9 patch tabs.

    All views share one :class:`~zfwidgets.Session` and the ``layer`` and ``channel`` traits
    (linked with :func:`traitlets.link`): choosing a layer anywhere changes it everywhere,
    clicking a map in the grid selects that channel in every view.

    Parameters
    ----------
    session : Session, optional
        Defaults to ``Session()`` (EfficientNet-Lite0 and the default sample photo).
    layer : str, optional
        Defaults to the model's middle layer.
    channel : int, optional
        Defaults to the layer's strongest channel.
    rule : {"deconvnet", "guided", "gradient"}

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
        Optional tabs left out, with the reason (module not installed ...).
    """

    layer = T.Unicode("")
    channel = T.Int(0)
    rule = T.Unicode("deconvnet")

    def __init__(self, session: Session | None = None, *, layer: str | None = None,
                 channel: int | None = None, rule: str = "deconvnet", **kwargs):
        super().__init__(**kwargs)
        self.session = session if session is not None else Session()
        self.errors = ErrorBox()
        self._views: list = []
        self._links: list = []
        self._holding: list = []
        self._ready = False
        # The explorer hears about model changes before its views (see _on_session).
        self._listen()
        first = layer or opening_layer(self.session)
        self.session.layer_info(first)
        self.layer = first
        self.channel = self.session.strongest_channel(first) if channel is None else int(channel)
        self.rule = rule

        self.model_dropdown = W.Dropdown(
            options=self._model_options(), value=self._model_value(), description="model",
            layout=W.Layout(width="230px"), style={"description_width": "45px"})
        self.model_status = W.HTML()
        self.model_dropdown.observe(self._model_chosen, names="value")
        self.images = ImageChooser(self.session)
        self.top5 = TopPredictions(self.session)
        self.selector = LayerSelector(self.session, self.layer)
        self.grid = FeatureMapGrid(self.session, self.layer, self.channel)
        self.deconv = DeconvView(self.session, self.layer, self.channel, rule=self.rule)
        for view in (self.selector, self.grid, self.deconv):
            self._attach(view)
        self._links.append(T.link((self, "rule"), (self.deconv, "rule")))
        # Registered after the links, so it runs once every linked view has the new value.
        self.observe(self._release_views, names=list(_SHARED))
        self._ready = True

        self.extra: dict = {}
        self.missing_tabs: dict = {}
        self._tab_specs = []
        pages = [W.HBox([self.grid, self.deconv],
                        layout=W.Layout(flex_flow="row wrap", align_items="flex-start",
                                        grid_gap="12px"))]
        titles = ["Feature maps"]
        for title, module, cls, options in OPTIONAL_TABS:
            factory = self._optional(module, cls)
            if factory is None:
                self.missing_tabs[title] = f"{module}.{cls} is not available"
                continue
            self._tab_specs.append((title, (factory, options)))
            pages.append(W.VBox([W.HTML(f"<i>{title}: opening&hellip;</i>")]))
            titles.append(title)
        self.tabs = W.Tab(children=pages, titles=titles)
        self.tabs.observe(self._tab_selected, names="selected_index")

        header = W.HTML("<div style='font-size:15px;font-weight:600;margin:2px 0 4px'>"
                        "zfwidgets &middot; what does the network see? "
                        "<span style='font-weight:400;color:#666;font-size:12px'>"
                        "(Zeiler &amp; Fergus 2014: feature maps, deconvnet, occlusion)</span>"
                        "</div>")
        controls = W.VBox([W.HBox([self.model_dropdown, self.model_status],
                                  layout=W.Layout(align_items="center")),
                           self.images, self.selector])
        self.children = [header,
                         W.HBox([controls, self.top5],
                                layout=W.Layout(flex_flow="row wrap", align_items="flex-start",
                                                grid_gap="16px")),
                         self.errors, self.tabs]
        self.add_class("zf-explorer")

    # ------------------------------------------------------------------ linking
    def _attach(self, view) -> None:
        for name in _SHARED:
            if view.has_trait(name):
                self._links.append(T.link((self, name), (view, name)))
        self._views.append(view)

    def _held_views(self):
        return [v for v in self._views if hasattr(v, "hold") and hasattr(v, "release")]

    @T.validate("layer")
    def _check_layer(self, proposal):
        name = proposal["value"]
        self.session.layer_info(name)
        if name != self.layer:
            self._hold_views()
        return name

    @T.validate("channel")
    def _check_channel(self, proposal):
        value = int(proposal["value"])
        if value != self.channel:
            self._hold_views()
        return value

    @T.validate("rule")
    def _check_rule(self, proposal):
        return check_rule(proposal["value"])

    def _hold_views(self) -> None:
        # Views redraw once, after the new value has reached all of them (never a half-updated
        # state such as the new channel with the old layer). Released by _release_views, which
        # observes after the links.
        if not self._ready:
            return
        views = self._held_views()
        for view in views:
            view.hold()
        self._holding.append(views)

    def _release_views(self, change) -> None:
        if not self._holding:
            return
        for view in self._holding.pop():
            view.release()

    # ------------------------------------------------------------------ optional tabs
    @staticmethod
    def _optional(module: str, cls: str):
        try:
            return getattr(importlib.import_module(module), cls)
        except Exception:
            return None

    def _tab_selected(self, change) -> None:
        index = change["new"]
        if index is None or index == 0:
            return
        self.open_tab(self.tabs.titles[index])

    def open_tab(self, title: str):
        """Build (once) and return the optional view of tab ``title``; selects the tab."""
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
            try:
                view = factory(self.session, layer=self.layer, channel=self.channel, **options)
                self._attach(view)
            except Exception as exc:
                box = ErrorBox()
                box.show(exc)
                page.children = [box]
                return None
            self.extra[title] = view
            page.children = [view]
        return self.extra[title]

    # ------------------------------------------------------------------ model choice
    def _model_options(self) -> list[str]:
        names = list(list_models())
        current = self.session.entry.name
        return names if current in names else [current] + names

    def _model_value(self) -> str:
        return self.session.entry.name

    def _model_chosen(self, change) -> None:
        name = change["new"]
        if not name or name == self.session.entry.name:
            return
        self.errors.clear()
        self.model_status.value = "<i>loading&hellip;</i>"
        try:
            self.session.set_model(name)
        except Exception as exc:
            self.errors.show(exc)
            self.model_dropdown.unobserve(self._model_chosen, names="value")
            self.model_dropdown.value = self.session.entry.name
            self.model_dropdown.observe(self._model_chosen, names="value")
        finally:
            self.model_status.value = ""

    def _on_session(self, what: str) -> None:
        if what != "model":
            return
        if self.model_dropdown.value != self.session.entry.name:
            self.model_dropdown.unobserve(self._model_chosen, names="value")
            self.model_dropdown.options = self._model_options()
            self.model_dropdown.value = self.session.entry.name
            self.model_dropdown.observe(self._model_chosen, names="value")
        layer = self.layer if self.layer in self.session.layers else opening_layer(self.session)
        held = self._held_views()
        for view in held:
            view.hold()
        try:
            self.layer = layer
            self.channel = self.session.strongest_channel(layer)
        finally:
            for view in held:
                view.release()

    def close(self) -> None:
        """Close every view and unlink the shared traits."""
        for link in self._links:
            link.unlink()
        self._links = []
        for view in list(self._views) + list(getattr(self, "extra", {}).values()):
            close_tree(view)
        super().close()


def explore(model="efficientnet_lite0", image=None, *, layer: str | None = None,
            channel: int | None = None, rule: str = "deconvnet", **session_kwargs) -> Explorer:
    """Open the explorer in one line.

    Parameters
    ----------
    model : str, nn.Module, LoadedModel or Session
        A registry name (default: the offline EfficientNet-Lite0), your own CNN, or an existing
        Session (then ``image`` and ``session_kwargs`` must be left out).
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
