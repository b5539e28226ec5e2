"""FeatureMapGrid: every feature map of a layer as one clickable mosaic (or layer-1 filters)."""

from __future__ import annotations

import html

import ipywidgets as W
import traitlets as T

from ..errors import BadParameterError, check_choice
from ..backend.layers import first_rgb_conv
from ..plots.mosaic import feature_mosaic_figure, filters_to_rgb, update_feature_mosaic
from .base import MapView
from .runner import Latest

__all__ = ["FeatureMapGrid"]

MODES = ("activations", "weights")


class FeatureMapGrid(MapView):
    """All channels of a layer for the current image, as one mosaic; click a map to select it.

    The mosaic is one image artist, updated in place, so layers with hundreds of maps redraw
    quickly. The selected map is outlined and its strongest position marked. In ``"weights"``
    mode the grid shows the filters of a convolution that reads the RGB image (the paper's
    layer-1 filters) as colour images.

    Parameters
    ----------
    session : zfwidgets.Session
    layer : str, optional
        Defaults to the model's middle layer.
    channel : int, optional
        Defaults to the layer's strongest channel (largest total activation).
    mode : {"activations", "weights"}
    size : (width, height) in inches
    dpi : float

    Attributes
    ----------
    layer, channel, mode : traits
        Observe or link them; clicking a map sets ``channel``.
    knock_out : bool trait
        Whether a click knocks a map out (or back in) instead of selecting it.
    fig : matplotlib.figure.Figure
        The figure, drawn by an ipympl canvas (``fig.canvas``).
    mosaic : zfwidgets.plots.Mosaic
        Its artists.
    """

    mode = T.Unicode("activations")
    knock_out = T.Bool(False)

    def __init__(self, session, layer: str | None = None, channel: int | None = None, *,
                 mode: str = "activations", size: tuple[float, float] = (4.6, 4.6),
                 dpi: float = 100, **kwargs):
        super().__init__(session, **kwargs)
        self._latest_click = Latest()
        self._maps_key = None
        self._drawn = None
        self._maps = None
        self.fig = self.new_figure(*size, dpi=dpi)
        self.mode_buttons = W.ToggleButtons(
            options=[("feature maps", "activations"), ("layer-1 filters", "weights")],
            tooltips=["activations of the selected layer for the current image",
                      "filters of the first convolution (reads RGB), as colour images"],
            style={"button_width": "110px"})
        self.knock_button = W.ToggleButton(
            value=False, description="knock out", icon="scissors",
            tooltip="a click knocks a map out of the model (zero from then on) or brings it back;"
                    " shift-click does so too", layout=W.Layout(width="110px"))
        self.link((self, "knock_out"), (self.knock_button, "value"))
        self.restore_button = W.Button(description="restore", icon="undo",
                                       tooltip="bring every knocked-out map back",
                                       layout=W.Layout(width="96px", flex="0 0 auto",
                                                       display="none"))
        self.restore_button.on_click(lambda _: self.restore())
        self.knocked_note = W.HTML(layout=W.Layout(flex="1 1 auto"))
        self.status = W.HTML()
        self.title = W.HTML(layout=W.Layout(margin="2px 0 0 4px"))
        self.open_at(layer, channel, mode=mode)
        self.mode_buttons.value = self.mode
        self.mode_buttons.observe(lambda ch: setattr(self, "mode", ch["new"]), names="value")
        self.fig.canvas.mpl_connect("button_press_event", self._clicked)
        self.children = [W.HBox([self.mode_buttons, self.knock_button]), self.title,
                         self.fig.canvas, self.status,
                         W.HBox([self.knocked_note, self.restore_button],
                                layout=W.Layout(align_items="center")), self.errors]
        self.layout.width = f"{size[0] * dpi + 12:.0f}px"   # long titles wrap, never widen it
        self.add_class("zf-grid")
        self.ready()

    # ------------------------------------------------------------------ traits
    @T.validate("mode")
    def _check_mode(self, proposal):
        return check_choice("mode", proposal["value"], MODES)

    def on_layer(self, layer: str) -> None:
        if self.mode == "weights" and not self._is_rgb_conv(layer):
            self.mode = "activations"
        self.select_strongest(layer)

    @T.observe("mode")
    def _mode_changed(self, change) -> None:
        self.mode_buttons.value = change["new"]
        self.knock_button.disabled = change["new"] != "activations"   # maps, not filters
        with self.held():
            if change["new"] == "weights" and not self._is_rgb_conv(self.layer):
                conv = first_rgb_conv(self.session.model)
                if conv is None:
                    self.mode = "activations"
                    self.errors.show("weights mode needs a convolution that reads the RGB image;"
                                     f" {self.session.entry.name} has none")
                    return
                self.layer = conv[0]
            self.request_refresh()

    def _is_rgb_conv(self, layer: str) -> bool:
        conv = first_rgb_conv(self.session.model)
        try:
            return conv is not None and self.session.layer_module(layer) is conv[1]
        except Exception:
            return False

    # ------------------------------------------------------------------ drawing
    def _title(self, info) -> str:
        c, h, w = info.shape
        if self.mode == "weights":
            k = self._maps.shape[1:3]
            return (f"<b>{html.escape(info.name)}</b>: {c} filters {k[0]}×{k[1]} "
                    "<span style='color:#666'>(RGB, each scaled to [0, 1])</span>")
        return f"<b>{html.escape(info.name)}</b> ({html.escape(info.kind)}): {c} maps {h}×{w}"

    def refresh(self) -> None:
        """Redraw for the current layer, channel, mode and session state."""
        token = self._requests.new()
        session = self.session
        info = session.layer_info(self.layer)
        maps_key = (session.version, self.layer, self.mode)
        if maps_key != self._maps_key:
            if self.mode == "weights":
                maps = filters_to_rgb(session.layer_module(self.layer).weight)
            else:
                maps = session.activation(self.layer).detach().float().cpu().numpy()
        else:
            maps = None
        count = info.shape[0]
        selected = self.channel if 0 <= self.channel < count else None
        position = None
        status = ""
        if selected is not None and self.mode == "activations":
            _, y, x, value = session.strongest(self.layer, selected)
            position = (y, x)
            status = (f"map <b>{selected}</b> of {count}: strongest {value:.3g} at ({y}, {x})"
                      " &middot; click a map to select it (each map is scaled to its own range)")
        elif selected is not None:
            status = f"filter <b>{selected}</b> of {count} &middot; click a filter to select it"
        else:
            status = (f"channel {self.channel} is not in {html.escape(self.layer)} "
                      f"(0..{count - 1})")
        knocked = session.knockouts.get(self.layer, ()) if self.mode == "activations" else ()
        drawn = (maps_key, selected, position, knocked)
        if not self._requests.current(token) or drawn == self._drawn:
            return
        if maps is not None:
            self._maps = maps
            if self._maps_key is None:
                _, self.mosaic = feature_mosaic_figure(maps, selected=selected, position=position,
                                                       title="", fig=self.fig,
                                                       knocked_out=knocked)
            else:
                update_feature_mosaic(self.mosaic, maps, selected=selected, position=position,
                                      knocked_out=knocked, draw=False)
            self._maps_key = maps_key
        else:
            update_feature_mosaic(self.mosaic, selected=selected, position=position,
                                  knocked_out=knocked, draw=False)
        self._show_knockouts()
        self.title.value = (f"<div style='font-size:13px;line-height:1.35'>{self._title(info)}"
                            "</div>")
        self.status.value = f"<div style='font-size:12px;line-height:1.35'>{status}</div>"
        self._drawn = drawn
        self.errors.clear()
        self.fig.canvas.draw_idle()

    # ------------------------------------------------------------------ clicks
    def channel_at(self, xdata: float, ydata: float) -> int | None:
        """The map under mosaic data coordinates, or ``None`` (separator, empty cell)."""
        hit = self.mosaic.layout.locate(ydata, xdata)
        return None if hit is None else hit[0]

    def _clicked(self, event) -> None:
        try:
            if event.inaxes is not self.mosaic.ax or event.button not in (1, None):
                return
            k = self.channel_at(event.xdata, event.ydata)
            if k is None:
                return
            if self.knock_out or _shift_held(event):
                self._latest_click(lambda: self.toggle_knockout(k))
            else:
                self._latest_click(lambda: self._select(k))
        except Exception as exc:  # ipympl would swallow it
            self.errors.show(exc)

    # ------------------------------------------------------------------ knock-outs
    def toggle_knockout(self, channel: int) -> None:
        """Knock map ``channel`` of the current layer out of the session's model, or bring it
        back when it is out; every view over the session recomputes. Errors are shown inside
        the widget (a layer whose maps cannot be knocked out, the layer-1 filters)."""
        try:
            if self.mode != "activations":
                raise BadParameterError("maps are knocked out in the feature-map view, not "
                                        "among the layer-1 filters")
            knocked = dict(self.session.knockouts)
            chans = set(knocked.get(self.layer, ()))
            chans ^= {int(channel)}
            knocked[self.layer] = sorted(chans)
            self.errors.clear()
            self.session.set_knockouts(knocked)
        except Exception as exc:
            self.errors.show(exc)

    def restore(self) -> None:
        """Bring every knocked-out map back (the intact model)."""
        try:
            self.session.set_knockouts(None)
        except Exception as exc:
            self.errors.show(exc)

    def _show_knockouts(self) -> None:
        knocked = self.session.knockouts
        if not knocked:
            self.knocked_note.value = ""
            self.restore_button.layout.display = "none"
            return
        parts = [f"{html.escape(layer)}: {', '.join(map(str, chans))}"
                 for layer, chans in knocked.items()]
        self.knocked_note.value = (
            "<div style='font-size:12px;line-height:1.35;color:#b0173d'>knocked out (zero in "
            f"every view): {'; '.join(parts)}</div>")
        self.restore_button.layout.display = None

    def _select(self, k: int) -> None:
        try:
            self.channel = k
        except Exception as exc:
            self.errors.show(exc)

    def session_changed(self, what: str) -> None:
        super().session_changed(what)  # a layer the new model lacks: the opening layer
        if what == "model" and self.mode == "weights" and not self._is_rgb_conv(self.layer):
            self.mode = "activations"


def _shift_held(event) -> bool:
    """Whether shift was held during a mouse event (matplotlib's ``modifiers``, or the key
    state a web canvas reports)."""
    if "shift" in (getattr(event, "modifiers", None) or ()):
        return True
    return "shift" in (getattr(event, "key", None) or "").split("+")
