"""LayerSelector: pick a layer of the session's model, in forward order."""

from __future__ import annotations

import ipywidgets as W
import traitlets as T

from .base import LayerView

__all__ = ["LayerSelector", "layer_label"]


def layer_label(info) -> str:
    """Dropdown label of a layer: id, kind, output shape and receptive-field size.

    Example: ``"blocks.7.depthwise.act · ReLU6 · 480×14×14 · RF 147px"``.
    """
    c, h, w = info.shape
    rf = info.rf_size
    if rf is None:
        rf_text = "RF ?"
    elif rf[0] == rf[1]:
        rf_text = f"RF {rf[0]}px"
    else:
        rf_text = f"RF {rf[0]}×{rf[1]}px"
    return f"{info.name} · {info.kind} · {c}×{h}×{w} · {rf_text}"


class LayerSelector(LayerView):
    """A dropdown of the session's layers, each labelled with kind, shape and receptive field.

    Parameters
    ----------
    session : zfwidgets.Session
    layer : str, optional
        Initial layer; defaults to the model's middle layer.
    leaves_only : bool, default True
        List only leaf modules (convolutions, activations, pools ...), not the containers that
        wrap them. The selected layer is always listed.

    Attributes
    ----------
    layer : str
        The selected layer id (a trait: observe it or link it).
    leaves_only : bool
        Trait behind the "containers too" check box.
    """

    leaves_only = T.Bool(True)

    def __init__(self, session, layer: str | None = None, *, leaves_only: bool = True, **kwargs):
        super().__init__(session, **kwargs)
        self.dropdown = W.Dropdown(description="layer", layout=W.Layout(width="460px"),
                                   style={"description_width": "40px"})
        self.prev_button = W.Button(icon="chevron-left", tooltip="previous layer",
                                    layout=W.Layout(width="34px"))
        self.next_button = W.Button(icon="chevron-right", tooltip="next layer",
                                    layout=W.Layout(width="34px"))
        self.all_box = W.Checkbox(value=not leaves_only, description="containers too",
                                  indent=False, layout=W.Layout(width="120px"))
        self.leaves_only = leaves_only
        self._updating = False
        self._rebuild_options(layer or self.fallback_layer())
        self.dropdown.observe(self._dropdown_changed, names="value")
        self.prev_button.on_click(lambda _: self.step(-1))
        self.next_button.on_click(lambda _: self.step(+1))
        self.all_box.observe(lambda ch: setattr(self, "leaves_only", not ch["new"]), names="value")
        self.children = [W.HBox([self.dropdown, self.prev_button, self.next_button, self.all_box],
                                layout=W.Layout(align_items="center")), self.errors]
        self.add_class("zf-layer-selector")
        self.ready(refresh=False)

    # ------------------------------------------------------------------ options
    def _rebuild_options(self, keep: str) -> None:
        table = self.session.layer_table()
        names = {i.name for i in table}
        if keep not in names:
            keep = self.fallback_layer()
        rows = [i for i in table if i.is_leaf or not self.leaves_only or i.name == keep]
        self._updating = True
        try:
            self.dropdown.options = [(layer_label(i), i.name) for i in rows]
            self.dropdown.value = keep
        finally:
            self._updating = False
        self.layer = keep

    def _dropdown_changed(self, change) -> None:
        if not self._updating and change["new"]:
            self.layer = change["new"]

    def on_layer(self, layer: str) -> None:
        self.errors.clear()
        if self.dropdown.value != layer:
            values = [v for _, v in self.dropdown.options]
            if layer not in values:
                self._rebuild_options(layer)
            else:
                self._updating = True
                try:
                    self.dropdown.value = layer
                finally:
                    self._updating = False

    @T.observe("leaves_only")
    def _leaves_changed(self, change) -> None:
        self.all_box.value = not change["new"]
        self._rebuild_options(self.layer)

    def step(self, delta: int) -> None:
        """Select the layer ``delta`` places further in the list (negative: back)."""
        values = [v for _, v in self.dropdown.options]
        if not values:
            return
        i = values.index(self.layer) if self.layer in values else 0
        self.layer = values[max(0, min(len(values) - 1, i + delta))]

    def session_changed(self, what: str) -> None:
        if what == "model":  # the layer stays when the new model has it
            self._rebuild_options(self.layer)
