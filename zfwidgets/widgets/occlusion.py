"""OcclusionExplorer: slide a gray square over the image (the paper's Fig. 7), live.

Two kinds of reaction:

* moving the occluder (``y`` / ``x`` sliders, or a click on any panel) costs one forward pass:
  panel (a) shows the occluded input and the top-5 list its prediction;
* changing the occluder ``size`` or ``stride`` (or the layer, or the image) recomputes the maps
  (b), (d), (e) with an occlusion sweep, a :class:`~zfwidgets.backend.jobs.Job` run by the
  view's background runner (:mod:`zfwidgets.widgets.runner`): inside a running kernel it
  advances one step per event-loop turn, so the widget stays responsive; the progress bar
  moves; a coarse stage of the maps (``Step.partial``) is drawn as it arrives while the sweep
  refines; a newer request (another size, a new image) supersedes a sweep still running.
  Without an event loop (tests, scripts) the sweep runs to the end at once.

Changing the channel only swaps which of the recorded per-channel totals panel (b) shows.
Hidden (an explorer tab not selected), the view computes nothing; it catches up when shown.
"""

from __future__ import annotations

import html
from collections import OrderedDict

import ipywidgets as W
import traitlets as T

from ..backend.defaults import flat_map_note, informative_channel, target_classes, top_layer
from ..backend.targets import resolve_classes
from ..backend.occlusion import fill_rgb, occluded_prediction, occlusion_job
from ..errors import BadParameterError
from ..models import class_name
from ..plots.deconv import projection_image
from ..plots.occlusion import (FIGSIZE, occluded_image, occlusion_figure, update_occluder,
                               update_occlusion_maps)
from .base import MapView, keep_recent

__all__ = ["OcclusionExplorer"]


class OcclusionExplorer(MapView):
    """Occlusion sensitivity of the session's image: Fig. 7 (a)-(e) with an occluder you move.

    Parameters
    ----------
    session : zfwidgets.Session
    layer : str, optional
        Layer of the feature map in (b) and (c); defaults to the model's top conv layer
        (:func:`~zfwidgets.backend.defaults.top_layer`), the paper's layer 5.
    channel : int, optional
        Defaults to the layer's strongest channel on the unoccluded image.
    size, stride : int
        Occluder side and step, input pixels.
    fill : {"gray", "mean", "black", "white"} or float
        Occluder colour (see :meth:`zfwidgets.Session.occlusion`).
    target : int, str or sequence of them, optional
        The class(es) whose probability map (d) shows, summed. Default: the unoccluded image's
        top class and its near-synonyms among the top 5
        (:func:`~zfwidgets.backend.defaults.target_classes`: a cat photo's probability is
        shared among ImageNet's cat classes), chosen again for each image; the view says
        which.
    background : bool, optional
        Step sweeps from the kernel's event loop (``True``) or run them at once (``False``);
        default: step when an event loop is running.
    figsize : (width, height) in inches
        Default :data:`zfwidgets.plots.occlusion.FIGSIZE`: 828 px wide at 90 dpi, so that the
        five panels fit JupyterLab's notebook with the file browser open.
    dpi : float

    Attributes
    ----------
    layer, channel, size, stride, y, x : traits
        ``y`` / ``x`` are the occluder's top-left corner in input pixels.
    result : OcclusionResult or None
        The maps shown: the sweep's result, or a coarse stage of it while it refines
        (``partial``).
    partial : bool
        Whether ``result`` is a coarse stage of the sweep still running.
    runner : zfwidgets.widgets.runner.Runner
        Runs the sweeps (``runner.job``: the one running).
    prediction : list of (class_id, label, probability)
        Top-5 with the occluder at ``(y, x)``.
    targets : tuple of int
        The classes map (d) sums for the current image.
    fig : matplotlib.figure.Figure
        Drawn by an ipympl canvas.
    panels : zfwidgets.plots.occlusion.OcclusionPanels
    """

    size = T.Int(32)
    stride = T.Int(8)
    y = T.Int(0)
    x = T.Int(0)
    raise_unknown_layer = False  # an unknown layer shows its error inside, like a failed sweep

    def __init__(self, session, layer: str | None = None, channel: int | None = None, *,
                 size: int = 32, stride: int = 8, fill: str | float = "gray",
                 target=None, background: bool | None = None, figsize: tuple[float, float] = FIGSIZE,
                 dpi: float = 90, **kwargs):
        super().__init__(session, **kwargs)
        self.fill = fill
        self.target = None if target is None else resolve_classes(session, target)
        self._cache: OrderedDict = OrderedDict()
        self._projections: OrderedDict = OrderedDict()
        self._computing = None  # key of the sweep the runner runs
        self.result = None
        self.partial = False
        self.prediction: list = []
        self.panels = None
        self.fig = self.new_figure(*figsize, dpi=dpi)
        self.sweeps = 0  # sweeps started (tests and curious users)
        self.runner = self.new_runner(on_step=self._progress, on_end=self._sweep_ended,
                                      background=background)

        H, W_ = self._input_size()
        slider = dict(continuous_update=False, style={"description_width": "72px"},
                      layout=W.Layout(width="270px"))
        self.y_slider = W.IntSlider(description="occluder y", min=0, max=H - size, **slider)
        self.x_slider = W.IntSlider(description="occluder x", min=0, max=W_ - size, **slider)
        self.size_slider = W.IntSlider(description="size", min=4, max=min(H, W_), value=size,
                                       **slider)
        self.stride_slider = W.IntSlider(description="stride", min=2, max=64, value=stride,
                                         **slider)
        for s in (self.y_slider, self.x_slider, self.size_slider, self.stride_slider):
            s.add_class("zf-occlusion-slider")
        self.progress = W.IntProgress(value=0, min=0, max=1, bar_style="info",
                                      layout=W.Layout(width="160px", visibility="hidden"))
        self.status = W.HTML(layout=W.Layout(min_width="120px"))
        self.top5 = W.HTML(layout=W.Layout(min_width="230px"))
        self.top5.add_class("zf-occlusion-top5")
        self.notes = W.HTML()
        self.notes.add_class("zf-occlusion-notes")

        self.open_at(layer, channel, size=size, stride=stride, y=max(0, (H - size) // 2),
                     x=max(0, (W_ - size) // 2))
        for name, s in (("y", self.y_slider), ("x", self.x_slider), ("size", self.size_slider),
                        ("stride", self.stride_slider)):
            self.link((self, name), (s, "value"))
        self.fig.canvas.mpl_connect("button_press_event", self._on_click)

        controls = W.VBox([W.HBox([self.y_slider, self.x_slider]),
                           W.HBox([self.size_slider, self.stride_slider]),
                           W.HBox([self.progress, self.status],
                                  layout=W.Layout(align_items="center"))])
        self.children = [W.HBox([controls, self.top5],
                                layout=W.Layout(flex_flow="row wrap", grid_gap="12px")),
                         self.fig.canvas, self.notes, self.errors]
        self.add_class("zf-occlusion")
        self.ready()

    # ------------------------------------------------------------------ traits
    def fallback_layer(self) -> str:
        """The model's top conv layer (the paper's layer 5)."""
        return top_layer(self.session)

    def _input_size(self) -> tuple[int, int]:
        x = self.session.input_tensor
        return int(x.shape[2]), int(x.shape[3])

    @T.validate("size")
    def _check_size(self, proposal):
        value = int(proposal["value"])
        H, W_ = self._input_size()
        if not 1 <= value <= min(H, W_):
            raise BadParameterError(f"occluder size {value} must be between 1 and "
                                    f"{min(H, W_)} (the {H}x{W_} input)")
        return value

    @T.validate("stride")
    def _check_stride(self, proposal):
        value = int(proposal["value"])
        if value < 1:
            raise BadParameterError(f"occluder stride must be at least 1, got {value}")
        return value

    @T.validate("y", "x")
    def _check_position(self, proposal):
        H, W_ = self._input_size()
        side = H if proposal["trait"].name == "y" else W_
        return int(min(max(0, int(proposal["value"])), max(0, side - self.size)))

    @T.observe("size")
    def _size_changed(self, change):
        H, W_ = self._input_size()
        with self.held():
            self.y_slider.max = max(0, H - self.size)
            self.x_slider.max = max(0, W_ - self.size)
            self.y = min(self.y, H - self.size)
            self.x = min(self.x, W_ - self.size)
            self.request_refresh()

    @T.observe("stride", "y", "x")
    def _changed(self, change):
        self.request_refresh()

    # ------------------------------------------------------------------ drawing
    @property
    def targets(self) -> tuple[int, ...]:
        """The classes map (d) sums for the current image (see ``target``)."""
        if self.target is not None:
            return tuple(self.target)
        version = self.session.version
        if getattr(self, "_targets_for", (None,))[0] != version:
            self._targets_for = (version, tuple(target_classes(self.session)))
        return self._targets_for[1]

    def _key(self):
        return (self.session.version, self.layer, self.size, self.stride, repr(self.fill),
                self.targets)

    def refresh(self) -> None:
        """Bring the figure up to date: the occluder, the top-5, and (if needed) the maps."""
        self._refresh_position()
        key = self._key()
        if self.result is not None and self._shown_key == key and not self.partial:
            if self.result.channel != self.channel:
                self._show(self.result, key)
            self._draw()
            return
        cached = self._cache.get(key)
        if cached is not None:
            self.runner.cancel()
            self._show(cached, key)
        elif self._computing == key and self.runner.running:
            if self.partial and self._shown_key == key:  # a coarse stage: follow the channel
                self._show(self.result, key, partial=True)
        else:
            self._start_sweep(key)
        self._draw()

    _shown_key = None

    def _refresh_position(self) -> None:
        session = self.session
        self.prediction = occluded_prediction(session, self.y, self.x, self.size, self.fill)
        cell = "padding:0 6px 0 0;line-height:1.35;border:none"  # compact in JupyterLab too
        rows = "".join(
            f"<tr><td style='{cell}'>{html.escape(label)}</td>"
            f"<td style='{cell};text-align:right'>{p:.3f}</td></tr>"
            for _, label, p in self.prediction)
        base = session.predict(1)[0]
        self.top5.value = (
            "<div style='font-size:12px'><b>top-5 with the occluder</b>"
            f"<table style='font-size:12px;margin:2px 0'>{rows}</table>"
            f"<span style='color:#666'>unoccluded: {html.escape(base[0])} {base[1]:.3f}</span>"
            f"<br><span style='color:#666'>{self._target_note()}</span></div>")
        if self.panels is not None:
            update_occluder(self.panels, self.y, self.x, image=self._occluded(), draw=False)

    def _target_note(self) -> str:
        """One line: which classes map (d) sums, and why."""
        session, targets = self.session, self.targets
        names = " + ".join(html.escape(class_name(session.labels, c)) for c in targets)
        p = float(session.probabilities()[list(targets)].sum())
        if self.target is not None:
            why = "as asked"
        elif len(targets) > 1:
            why = "the top class and its near-synonyms among the top 5, summed"
        else:
            why = "the top class"
        return f"(d) P({names}) = {p:.3f} unoccluded: {why}"

    def _occluded(self):
        session = self.session
        return occluded_image(session.display_image, self.y, self.x, self.size,
                              fill_rgb(session, self.fill))

    def _draw(self) -> None:
        if self.panels is not None:
            self.fig.canvas.draw_idle()

    # ------------------------------------------------------------------ sweeps
    def _start_sweep(self, key) -> None:
        # progressive: a coarse exact map within a fraction of a second, refined stage by
        # stage (each drawn as it arrives by _progress), the last one the requested grid
        job = occlusion_job(self.session, self.size, self.stride, target=list(self.targets),
                            layer=self.layer, channel=self.channel, fill=self.fill,
                            progressive=True)
        self.sweeps += 1
        self._computing = key
        self.progress.value = 0
        self.progress.layout.visibility = "visible"
        self.status.value = ("<span style='font-size:12px;color:#555'>occluding"
                             "&hellip;</span>")
        self.runner.start(job, on_done=lambda result: self._swept(key, result))

    def _progress(self, step) -> None:
        """A step of the sweep: the progress bar, and a coarse stage of the maps if it has one."""
        self.progress.max = max(1, step.total)
        self.progress.value = step.done
        note = f", {html.escape(step.note)}" if step.note else ""
        self.status.value = (f"<span style='font-size:12px;color:#555'>occluding "
                             f"{step.total} positions{note}&hellip;</span>")
        if step.partial is not None and self._computing is not None:
            self._show(step.partial, self._computing, partial=True)
            self._draw()

    def _sweep_ended(self, job) -> None:
        self._computing = None
        self.progress.layout.visibility = "hidden"
        self.status.value = ""

    def _swept(self, key, result) -> None:
        keep_recent(self._cache, key, result, 8)
        self._show(result, key)
        self._draw()

    @property
    def rule(self) -> str:
        """Panel (c)'s rule: the session's default for the layer (``"deconvnet"`` after a
        max-pool, else ``"guided"``: without switches a deconvnet picture is the same for
        every image)."""
        return self.session.default_rule(self.layer)

    def _projection(self):
        rule = self.rule
        key = (self.session.version, self.layer, self.channel, rule)
        hit = self._projections.get(key)
        if hit is None:
            hit = keep_recent(self._projections, key, projection_image(
                self.session.project(self.layer, self.channel, rule=rule)), 16)
        return hit

    def _show(self, result, key, partial: bool = False) -> None:
        """Put ``result`` (shown for the current channel) in the panels; the caller draws."""
        if result.features is not None:
            result = result.for_channel(self.channel)
        session = self.session
        title = f"(c) {self.rule} projection"
        if self.panels is None:
            _, self.panels = occlusion_figure(session.display_image, result, self._projection(),
                                              occluder=(self.y, self.x),
                                              fill_color=fill_rgb(session, self.fill),
                                              projection_title=title, fig=self.fig)
        else:
            update_occlusion_maps(self.panels, result, projection=self._projection(),
                                  image=self._occluded(), occluder=(self.y, self.x),
                                  projection_title=title, draw=False)
        self.result = result
        self.partial = partial
        self._shown_key = key
        self.notes.value = self._notes(result)
        self.errors.clear()

    def _notes(self, result) -> str:
        """Grey lines under the figure: the rule of (c) when it is not the paper's, and a map
        whose colour scale stretches a tiny variation."""
        lines = [f"(b), (c): layer {self.layer}, map {self.channel}"]
        if self.rule != "deconvnet":
            lines.append(f"(c): {self.session.rule_reason(self.layer)}")
        for panel, values in (("(b)", result.feature), ("(d)", result.prob)):
            note = flat_map_note(values) if values is not None else None
            if note:
                lines.append(f"{panel}: {note}")
        body = "<br>".join(html.escape(line) for line in lines)
        return f"<div style='font-size:11px;color:#666'>{body}</div>"

    # ------------------------------------------------------------------ events
    def _on_click(self, event) -> None:
        try:
            if self.panels is None or event.inaxes not in self.panels.axes or event.xdata is None:
                return
            i, j = self.panels.result.index_of(event.ydata, event.xdata)
            top, left = self.panels.result.corner(i, j)
            with self.held():
                self.y, self.x = top, left
        except Exception as exc:
            self.errors.show(exc)

    def move_to(self, y: float, x: float) -> None:
        """Put the occluder on the map cell nearest to input pixel ``(y, x)`` (like a click)."""
        if self.result is None:
            raise BadParameterError("no occlusion maps yet")
        top, left = self.result.corner(*self.result.index_of(y, x))
        with self.held():
            self.y, self.x = top, left

    def close(self) -> None:
        """Drop any running sweep, stop listening to the session, close the figure."""
        self._computing = None
        super().close()

    def session_changed(self, what: str) -> None:
        self._cache.clear()
        self._projections.clear()
        super().session_changed(what)  # a layer the new model lacks: its top layer
        if what == "model":
            H, W_ = self._input_size()
            self.size_slider.max = min(H, W_)
            if self.size > min(H, W_):
                self.size = min(H, W_)
            self.y_slider.max = max(0, H - self.size)
            self.x_slider.max = max(0, W_ - self.size)
            self.y, self.x = min(self.y, H - self.size), min(self.x, W_ - self.size)
        if what != "knockouts":  # maps knocked out: the same map, recomputed
            self.channel = informative_channel(self.session, self.layer)
