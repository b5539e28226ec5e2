"""DeconvView: project the selected feature map back to pixels, beside its receptive field."""

from __future__ import annotations

import html

import ipywidgets as W
import traitlets as T

from ..backend.project import saturation_note
from ..backend.rules import check_rule
from ..errors import check_choice
from ..plots.deconv import (deconv_panel_figure, deconv_titles, projection_image,
                            update_deconv_panel)
from .base import MapView

__all__ = ["DeconvView"]

SCOPES = ("strongest", "map")
EXTENTS = ("receptive field", "whole image")


class DeconvView(MapView):
    """Image with the receptive-field box | projection | receptive-field crop, for one map.

    The box is the receptive field of the map's strongest activation. The projection carries
    either that one activation (``scope="strongest"``) or the whole map (``scope="map"``) down
    to pixels with the chosen backward rule: ``"deconvnet"`` (Zeiler & Fergus), ``"guided"``
    (guided backpropagation) or ``"gradient"`` (plain saliency).

    Parameters
    ----------
    session : zfwidgets.Session
    layer : str, optional
        Defaults to the model's middle layer.
    channel : int, optional
        Defaults to the layer's strongest channel.
    rule : {"deconvnet", "guided", "gradient"}, optional
        Defaults to ``session.default_rule(layer)``: "guided" on a model that does not
        max-pool before the layer (its deconvnet would show the weights), said in the header.
    scope : {"strongest", "map"}
    extent : {"receptive field", "whole image"}
        Where the strongest unit's projection is shown: cut to the unit's receptive field
        (default: at low layers a 3-11 px field would be a dot on the whole image; the paper's
        Fig. 2 shows projections at this scale) beside the image patch, or on the whole image.
        A whole map's projection is always shown on the whole image.
    size : (width, height) in inches
    dpi : float

    Attributes
    ----------
    layer, channel, rule, scope, extent : traits
    fig : matplotlib.figure.Figure
        Drawn by an ipympl canvas.
    panel : zfwidgets.plots.DeconvPanel
        Its artists.
    """

    rule = T.Unicode("deconvnet")
    scope = T.Unicode("strongest")
    extent = T.Unicode("receptive field")

    def __init__(self, session, layer: str | None = None, channel: int | None = None, *,
                 rule: str | None = None, scope: str = "strongest",
                 extent: str = "receptive field",
                 size: tuple[float, float] = (6.6, 2.25), dpi: float = 100, **kwargs):
        super().__init__(session, **kwargs)
        self._drawn = None
        self._image_version = None
        self.panel = None
        self.fig = self.new_figure(*size, dpi=dpi)
        self.rule_buttons = W.ToggleButtons(
            options=[("deconvnet", "deconvnet"), ("guided", "guided"), ("gradient", "gradient")],
            tooltips=["Zeiler & Fergus: ReLU applied to the backward signal",
                      "Springenberg et al.: forward mask and ReLU on the backward signal",
                      "plain gradient (Simonyan et al.): forward mask only"],
            layout=W.Layout(margin="0 18px 0 0"),
            style={"button_width": "92px"})
        self.scope_buttons = W.ToggleButtons(
            options=[("strongest unit", "strongest"), ("whole map", "map")],
            tooltips=["project only the map's strongest activation (the box)",
                      "project every activation of the map"],
            style={"button_width": "120px"})
        self.extent_buttons = W.ToggleButtons(
            options=[("receptive field", "receptive field"), ("whole image", "whole image")],
            tooltips=["the unit's projection cut to its receptive field, beside the image patch",
                      "the projection on the whole image"],
            style={"button_width": "120px"})
        self.extent_buttons.add_class("zf-deconv-extent")
        self.status = W.HTML()
        self.header = W.HTML(layout=W.Layout(margin="2px 0 0 4px"))
        column = W.Layout(width=f"{size[0] * dpi * 0.98 / 3:.0f}px")
        self.panel_titles = [W.HTML(layout=column) for _ in range(3)]
        layer = layer or self.fallback_layer()
        self.open_at(layer, channel, rule=rule or session.default_rule(layer), scope=scope,
                     extent=extent)
        self.link((self, "rule"), (self.rule_buttons, "value"))
        self.link((self, "scope"), (self.scope_buttons, "value"))
        self.link((self, "extent"), (self.extent_buttons, "value"))
        self.children = [W.HBox([self.rule_buttons, self.scope_buttons, self.extent_buttons],
                                layout=W.Layout(flex_flow="row wrap")),
                         self.header, W.HBox(self.panel_titles, layout=W.Layout(margin="0 0 0 6px")),
                         self.fig.canvas, self.status, self.errors]
        self.add_class("zf-deconv")
        self.layout.width = f"{size[0] * dpi + 12:.0f}px"
        self.ready()

    # ------------------------------------------------------------------ traits
    @T.validate("rule")
    def _check_rule(self, proposal):
        return check_rule(proposal["value"])

    @T.validate("scope")
    def _check_scope(self, proposal):
        return check_choice("scope", proposal["value"], SCOPES)

    @T.validate("extent")
    def _check_extent(self, proposal):
        return check_choice("extent", proposal["value"], EXTENTS)

    @T.observe("rule", "scope", "extent")
    def _changed(self, change) -> None:
        self.request_refresh()

    # ------------------------------------------------------------------ drawing
    def refresh(self) -> None:
        """Recompute the projection for the current traits and redraw."""
        session = self.session
        key = (session.version, self.layer, self.channel, self.rule, self.scope, self.extent)
        if key == self._drawn:
            return
        token = self._requests.new()
        info = session.layer_info(self.layer)
        _, y, x, value = session.strongest(self.layer, self.channel)
        box = session.receptive_field(self.layer, y, x)
        self.status.value = ("<span style='font-size:12px;color:#555'>"
                             "<i class='fa fa-spinner fa-spin'></i> projecting&hellip;</span>")
        try:
            projection = session.project(self.layer, self.channel,
                                         (y, x) if self.scope == "strongest" else None, self.rule)
        finally:
            self.status.value = ""
        if not self._requests.current(token):
            return  # a newer request (or a new image) came in meanwhile: it draws
        cropped = self.scope == "strongest" and self.extent == "receptive field"
        if cropped:  # exact: a unit's projection is zero outside its receptive field
            top, left, bottom, right = (int(v) for v in box)
            projection = projection[..., top:bottom, left:right]
        rgb = projection_image(projection)
        image = session.display_image if self._image_version != session.version else None
        if self.panel is None:
            _, self.panel = deconv_panel_figure(session.display_image, rgb, box, titles=None,
                                                fig=self.fig)
            image = None
        update_deconv_panel(self.panel, image=image, projection=rgb, box=box,
                            projection_box=not cropped, draw=False)
        # Titles are HTML, not figure text: no glyph rendering in the redraw.
        notes = []
        if session.default_rule(self.layer) == "guided":
            notes.append(session.rule_reason(self.layer))
        blank = saturation_note(session, self.layer, self.channel,
                                *((y, x) if self.scope == "strongest" else (None, None)),
                                self.rule, projection)
        if blank:
            notes.append(blank)
        where = "in the receptive field" if cropped else "over the image"
        notes.append(f"projection colours: 0 is mid-gray, +-(99.5th percentile of |value| "
                     f"{where}) the ends (clipped beyond)")
        note_html = "".join(f"<div style='font-size:11px;color:#666'>{html.escape(n)}</div>"
                            for n in notes)
        self.header.value = (f"<div style='font-size:13px;line-height:1.35'>"
                             f"<b>{html.escape(self.layer)}</b>: map <b>{self.channel}</b>, "
                             f"strongest activation {value:.3g} at ({y}, {x})</div>{note_html}")
        for label, text in zip(self.panel_titles, deconv_titles(info, self.rule, self.scope,
                                                                    cropped)):
            label.value = (f"<div style='text-align:center;font-size:12px;line-height:1.35'>"
                           f"{html.escape(text)}</div>")
        self._image_version = session.version
        self._drawn = key
        self.errors.clear()
        self.fig.canvas.draw_idle()
