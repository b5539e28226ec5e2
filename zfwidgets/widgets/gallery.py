"""PatchGallery: the top-9 patches of a feature map over a data set, beside their projections.

The paper's Fig. 2 as a widget. For the selected layer and channel it shows the receptive-field
crops of the nine strongest activations found in a data set (each from a different image by
default) beside the deconvnet projections of those activations; a click on a patch shows the
whole image it came from with the box. The data is mined on demand (button "Mine", or on its
own for the offline sample collection) with a progress bar and a Cancel button, once per
layer, and kept in memory (and on disk with ``cache_dir``). Mining is a
:class:`~zfwidgets.backend.jobs.Job` run by the view's background runner
(:mod:`zfwidgets.widgets.runner`): one batch per turn of the kernel's event loop, paused while
the view is hidden, stopped when the model changes (the data set's hits belong to a model; a
new image changes nothing here).
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from typing import Any

import ipywidgets as W
import traitlets as T

from ..backend.rules import RULES, check_rule
from ..backend.mining import MiningResult, mine_job
from ..backend.project import gallery
from ..data.datasets import SampleCollection, as_source
from ..backend.defaults import mining_layers
from ..errors import OutOfRangeError
from ..plots.gallery import gallery_figure, show_source, tile_index, update_gallery
from .base import MapView
from .runner import running_loop
from .selector import LayerSelector

__all__ = ["PatchGallery"]


class PatchGallery(MapView):
    """Top-9 image patches of a feature map beside their deconvnet projections (Fig. 2).

    Parameters
    ----------
    session : zfwidgets.Session
    images : None, folder, list of images, torch Dataset or ImageSource
        The data to mine (see :func:`zfwidgets.data.as_source`); ``None``: the offline sample
        collection (the sample photos and their crops).
    layer : str, optional
        Defaults to the model's middle layer.
    channel : int
    layers : sequence of str, optional
        Layers mined together with the selected one on the first pass (one pass over the data
        for all of them); default :func:`zfwidgets.backend.defaults.mining_layers`.
    k : int
        Hits per channel (a ``rows x cols`` grid shows the first ``rows * cols``).
    per_image : int or None
        Hits per image and channel (1: nine different images, as in the paper).
    cache_dir : path, optional
        Disk cache of mining results (see :func:`zfwidgets.mine`).
    batch_size : int, optional
        Images per forward pass (default: :func:`zfwidgets.backend.mining.mining_batch_size`).
    auto : bool, optional
        Mine without waiting for the button whenever the selected layer is not mined yet and
        the view is shown, in the background of the kernel's event loop (one batch per turn,
        so the page stays live). Outside an event loop (plain Python, tests) nothing starts on
        its own: call :meth:`mine_now`. Default: ``True`` for the sample collection (quick),
        ``False`` for your own data; Cancel turns it off until Mine is pressed.
    rule : {"deconvnet", "guided", "gradient"}, optional
        Defaults to ``session.default_rule(layer)`` (issue 12).
    tile : int
        Pixels per tile.
    result : MiningResult, optional
        Already mined layers (from :func:`zfwidgets.mine`, same session model); its source is
        used when ``images`` is not given.
    layer_selector : bool
        Show a layer selector (``selector``). The :class:`Explorer` passes ``False``: its own
        selector drives the ``layer`` trait, and ``selector`` is then ``None``.

    Attributes
    ----------
    layer, channel, selected, rule : traits
        ``channel`` can be linked to a feature-map grid's (a click there selects the map here);
        ``selected`` is the hit (0-based) whose source image is shown, ``-1`` for none.
    result : MiningResult or None
        What has been mined so far (the mined layers accumulate).
    mining : bool
        Whether a mining job is running (or paused while the view is hidden).
    runner : zfwidgets.widgets.runner.Runner
        Runs the mining jobs.
    current : Gallery or None
        What the figure shows.
    fig : matplotlib.figure.Figure
        Drawn by an ipympl canvas (``fig.canvas``).
    """

    selected = T.Int(-1)
    rule = T.Unicode("deconvnet")

    def __init__(self, session, images: Any = None, *, layer: str | None = None,
                 channel: int = 0, layers: Sequence[str] | None = None, k: int = 9,
                 per_image: int | None = 1, cache_dir=None, batch_size: int | None = None,
                 auto: bool | None = None, rule: str | None = None, tile: int = 80,
                 result: MiningResult | None = None, size: tuple[float, float] = (9.6, 3.6),
                 dpi: float = 100, layer_selector: bool = True, **kwargs):
        super().__init__(session, **kwargs)
        if images is None and result is not None and result.source is not None:
            images = result.source
        self.source = as_source(images)
        self.auto = isinstance(self.source, SampleCollection) if auto is None else bool(auto)
        self._auto = self.auto  # what Mine turns back on after a Cancel
        self.k = k
        self.per_image = per_image
        self.cache_dir = cache_dir
        self.batch_size = batch_size
        self._mine_layers = list(layers) if layers is not None else None
        self.result: MiningResult | None = None
        if result is not None:  # more layers are mined with the same k / per_image
            self.k, self.per_image = result.k, result.per_image
            self.result = MiningResult(dict(result.layers), **{
                name: getattr(result, name) for name in (
                    "k", "per_image", "n_images", "n_skipped", "skipped", "source",
                    "source_spec", "model", "preprocessing", "data", "shard")})
        self.current = None
        self._started = 0.0
        self._what = ""
        # an image change does not make hits over the data set stale (a model change stops the
        # job: session_changed)
        self.runner = self.new_runner(on_step=self._mining_step, on_end=self._mining_ended,
                                      watch_session=False)

        self.fig = self.new_figure(*size, dpi=dpi)
        _, self.artists = gallery_figure(None, tile=tile, fig=self.fig)
        self.fig.canvas.mpl_connect("button_press_event", self._clicked)

        first = layer or self.fallback_layer()
        self.selector = LayerSelector(session, first) if layer_selector else None
        self.channel_slider = W.IntSlider(value=0, min=0, max=1, description="channel",
                                          continuous_update=False,
                                          layout=W.Layout(width="360px"),
                                          style={"description_width": "55px"})
        self.rule_dropdown = W.Dropdown(options=list(RULES),
                                        value=check_rule(rule or session.default_rule(first)),
                                        description="rule", layout=W.Layout(width="170px"),
                                        style={"description_width": "35px"})
        self.mine_button = W.Button(description="Mine", icon="search", button_style="primary",
                                    tooltip="find the strongest activations over the data set",
                                    layout=W.Layout(width="90px"))
        self.cancel_button = W.Button(description="Cancel", icon="stop",
                                      tooltip="stop mining (mined layers are kept)",
                                      layout=W.Layout(width="90px", display="none"))
        self.progress = W.IntProgress(value=0, min=0, max=1, layout=W.Layout(width="240px",
                                                                              display="none"))
        self.status = W.HTML()
        self.hits = W.HTML()
        self.data_label = W.HTML(f"<span style='font-size:12px;color:#555'>data: "
                                 f"{html.escape(repr(self.source))}</span>")

        self.open_at(first, int(channel), rule=self.rule_dropdown.value)
        self.link((self.rule_dropdown, "value"), (self, "rule"))
        if self.selector is not None:
            self.link((self.selector, "layer"), (self, "layer"))
        self.channel_slider.observe(self._slider_changed, names="value")
        self.mine_button.on_click(lambda _: self._mine_pressed())
        self.cancel_button.on_click(lambda _: self.cancel())

        self.children = [
            *([self.selector] if self.selector is not None else []),
            W.HBox([self.channel_slider, self.rule_dropdown, self.mine_button,
                    self.cancel_button, self.progress],
                   layout=W.Layout(align_items="center", flex_flow="row wrap")),
            self.status, self.fig.canvas, self.hits, self.data_label, self.errors]
        self._sync_slider()
        self.ready(refresh=self.current is None and not self.mining)

    # ------------------------------------------------------------------ traits
    @T.validate("rule")
    def _check_rule(self, proposal):
        return check_rule(proposal["value"])

    def on_layer(self, layer: str) -> None:
        self._sync_slider()  # the channel stays: a grid linked to it selects the map here

    @T.observe("channel", "rule")
    def _changed(self, change) -> None:
        self._sync_slider()
        self.request_refresh()

    @T.observe("selected")
    def _selected_changed(self, change) -> None:
        index = change["new"]
        show_source(self.artists, self.current, index if index >= 0 else None)

    def _sync_slider(self) -> None:
        try:
            count = self.session.layer_info(self.layer).shape[0]
        except Exception:
            return
        slider = self.channel_slider
        slider.unobserve(self._slider_changed, names="value")
        try:
            slider.max = max(count - 1, 0)
            if 0 <= self.channel < count:
                slider.value = self.channel
        finally:
            slider.observe(self._slider_changed, names="value")

    def _slider_changed(self, change) -> None:
        self.channel = int(change["new"])

    # ------------------------------------------------------------------ mining
    @property
    def mining(self) -> bool:
        """Whether a mining job is running (or waiting while the view is hidden)."""
        return self.runner.running

    def mined(self, layer: str | None = None) -> bool:
        """Whether ``layer`` (default: the selected one) has been mined for the current model."""
        return self.result is not None and (layer or self.layer) in self.result.layers

    def mine_now(self, layers: Sequence[str] | None = None) -> MiningResult | None:
        """Mine now, blocking until done (progress shown in the widget), and redraw.

        Parameters
        ----------
        layers : sequence of str, optional
            Default: the selected layer, plus (on the first pass) the default layer set.

        Returns
        -------
        MiningResult or None
            ``None`` when mining failed (the error is shown in the widget) or was superseded.
        """
        if self.mining:
            return None
        job = self._mining_job(layers)
        if job is None:
            return self.result
        outcome = []
        self.runner.start(job, on_done=lambda result: outcome.append(self._mined(result)),
                          at_once=True)
        return outcome[0] if outcome else None

    def start_mining(self, layers: Sequence[str] | None = None) -> None:
        """Mine without blocking the kernel: one batch per turn of its event loop.

        Between batches the kernel handles other messages, so the page stays live (and
        ipympl's canvases can finish connecting). Without a running event loop (plain Python),
        this is :meth:`mine_now`. A mining job already running goes on (what it does not mine
        is mined after it).
        """
        if running_loop() is None:
            self.mine_now(layers)
            return
        if self.mining:
            return
        job = self._mining_job(layers)
        if job is not None:
            self.runner.start(job, on_done=self._mined)

    def cancel(self) -> None:
        """Stop mining (the Cancel button); the layers mined before stay, ``auto`` is turned
        off until Mine is pressed."""
        if not self.mining:
            return
        done = self.runner.job.last
        self.auto = False
        self.runner.cancel()
        where = "" if done is None else f" after {done.done} of {done.total} images"
        self.status.value = (f"<span style='font-size:12px'>mining cancelled{where}: press "
                             "<b>Mine</b> to start again.</span>")

    def _mine_pressed(self) -> None:
        self.auto = self._auto
        self.start_mining()

    def _mining_job(self, layers):
        """The job that mines ``layers`` (default: see :meth:`mine_now`), or ``None`` when they
        are all mined (then the view redraws) or the job cannot be made (the error is shown)."""
        if layers is None:
            layers = [self.layer]
            if self.result is None:
                extra = self._mine_layers
                if extra is None:
                    try:
                        extra = mining_layers(self.session)
                    except Exception:
                        extra = []
                layers += [name for name in extra if name != self.layer]
        layers = [name for name in dict.fromkeys(layers) if not self.mined(name)]
        if not layers:
            self.request_refresh()
            return None
        self.errors.clear()
        try:  # the arguments are checked here, before any step
            job = mine_job(self.session, self.source, layers, k=self.k, per_image=self.per_image,
                           batch_size=self.batch_size, cache_dir=self.cache_dir)
        except Exception as exc:
            self.errors.show(exc)
            return None
        self.mine_button.disabled = True
        self.cancel_button.layout.display = None
        self.progress.layout.display = None
        self.progress.value, self.progress.max = 0, max(len(self.source), 1)
        self._what = layers[0] if len(layers) == 1 else f"{len(layers)} layers"
        self._started = time.monotonic()
        self.status.value = f"<i>mining {html.escape(self._what)}&hellip;</i>"
        return job

    def _mining_step(self, step) -> None:
        rate = step.done / max(time.monotonic() - self._started, 1e-6)
        self.progress.max = max(step.total, 1)
        self.progress.value = step.done
        extra = f", {html.escape(step.note)}" if step.note else ""
        self.status.value = (f"<i>mining {html.escape(self._what)}: {step.done}/{step.total} "
                             f"images ({rate:.0f} img/s{extra})</i>")

    def _mining_ended(self, job) -> None:
        self.mine_button.disabled = False
        self.cancel_button.layout.display = "none"
        self.progress.layout.display = "none"
        if not job.done:
            self.status.value = ""

    def _mined(self, result: MiningResult) -> MiningResult:
        if self.result is None or self.result.model != result.model:
            self.result = result
        else:
            self.result.layers.update(result.layers)
        self.request_refresh()
        return self.result

    # ------------------------------------------------------------------ drawing
    def refresh(self) -> None:
        """Redraw for the current layer, channel and rule (starting to mine if ``auto``)."""
        token = self._requests.new()
        if not self.mined():
            self.current = None
            self.hits.value = ""
            self.errors.clear()
            if self.auto and not self.mining and running_loop() is not None:
                self.start_mining()  # in the background of the kernel's loop: the page stays live
            waiting = self.mining
            update_gallery(self.artists, None, title=f"{self.layer}: not mined yet" +
                           (" (mining…)" if waiting else " — press Mine"))
            if not waiting:
                self.status.value = (f"<span style='font-size:12px'>{html.escape(self.layer)} "
                                     f"has not been mined over the {len(self.source)} images "
                                     f"yet: press <b>Mine</b>.</span>")
            return
        try:
            self.check_channel()
        except OutOfRangeError as exc:
            self.current = None
            update_gallery(self.artists, None, title=f"{self.layer}: no channel {self.channel}")
            self.hits.value = ""
            self.errors.show(exc)
            return
        g = gallery(self.session, self.result, self.layer, self.channel, self.rule,
                    k=self.artists.rows * self.artists.cols, source=self.source)
        if not self._requests.current(token):
            return
        self.current = g
        update_gallery(self.artists, g, draw=False)
        if self.selected != -1:
            self.selected = -1  # its observer resets the source panel and draws
        else:
            self.fig.canvas.draw_idle()
        self.errors.clear()
        r = self.result
        skipped = f", {r.n_skipped} unreadable skipped" if r.n_skipped else ""
        self.status.value = (f"<span style='font-size:12px'>top {len(g)} of channel "
                             f"<b>{self.channel}</b> over {r.n_images} images{skipped} "
                             f"&middot; click a patch to see its image</span>")
        rows = "".join(
            f"<tr><td>{j + 1}</td><td>{v:.3g}</td><td>{html.escape(name)}</td>"
            f"<td>({y}, {x})</td></tr>"
            for j, (v, name, (y, x)) in enumerate(zip(g.values.tolist(), g.names, g.positions)))
        self.hits.value = ("<details><summary style='font-size:12px'>hits</summary>"
                           "<table style='font-size:11px'><tr><th>#</th><th>value</th>"
                           f"<th>image</th><th>unit</th></tr>{rows}</table></details>")

    # ------------------------------------------------------------------ clicks
    def _clicked(self, event) -> None:
        try:
            a = self.artists
            if event.inaxes not in (a.ax_patches, a.ax_projections) or self.current is None:
                return
            index = tile_index(a, event.xdata, event.ydata)
            if index is not None and index < len(self.current):
                self.selected = index
        except Exception as exc:  # ipympl would swallow it
            self.errors.show(exc)

    def select(self, index: int) -> None:
        """Show the source image of hit ``index`` (as a click on its patch does)."""
        self.selected = int(index)

    # ------------------------------------------------------------------ session
    def session_changed(self, what: str) -> None:
        if what not in ("model", "knockouts"):
            return  # the data set does not depend on the current image
        self.runner.cancel()  # hits of the old model: stale
        self.result = None
        self.current = None
        super().session_changed(what)  # a layer the new model lacks: the opening layer
        self._sync_slider()
