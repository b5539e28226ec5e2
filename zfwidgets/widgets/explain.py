"""ExplainView: every class map of the image beside exact occlusion, each with its agreement.

The lecture's comparison on one screen: gradient saliency (Simonyan et al. 2014), guided
backprop (Springenberg et al. 2015), the deconvnet (Zeiler & Fergus 2014), Grad-CAM and guided
Grad-CAM (Selvaraju et al. 2017), and the occlusion map, the one that measures what it claims;
each map titled with its Spearman rank agreement with occlusion
(:func:`zfwidgets.backend.explain.explanation.explain_job`), and the agreements as bars.

The class is chosen among the image's top 5 (buttons; the top class at first). The work is one
:class:`~zfwidgets.backend.jobs.Job` run by the view's background runner: the maps are drawn
as they arrive (one backward pass each), then the occlusion sweep moves the progress bar, then
every title gets its number. A newer request (another class, a new image) supersedes a job
still running; finished explanations are kept, so going back to a class is immediate. Hidden
(an explorer tab not selected), the view computes nothing.
"""

from __future__ import annotations

import html
from collections import OrderedDict

import ipywidgets as W
import traitlets as T

from ..backend.defaults import gradcam_layer
from ..backend.explain.explanation import explain_job
from ..backend.explain.methods import METHODS
from ..errors import OutOfRangeError
from ..plots.explain import METHOD_NAMES, explain_panels, update_explain_panels
from .base import View, keep_recent

__all__ = ["ExplainView"]


class ExplainView(View):
    """Saliency, guided backprop, deconvnet, Grad-CAM, guided Grad-CAM and occlusion of one
    class, side by side, each with its agreement with occlusion.

    Parameters
    ----------
    session : zfwidgets.Session
    target : int, optional
        The class explained; default the image's top class (chosen again for each image).
    cam_layer : str, optional
        The Grad-CAM layer; default the last layer with a spatial map
        (:func:`~zfwidgets.backend.defaults.gradcam_layer`).
    size, stride : int
        The occlusion sweep's square and step in input pixels (default 32 / 16: 169
        positions; the agreement is measured at that grid's resolution).
    background : bool, optional
        Step the job from the kernel's event loop (default: when one is running).
    figsize : (width, height) in inches
    dpi : float

    Attributes
    ----------
    target : int
        The class shown (a trait; ``-1`` until the first image is read: the top class).
    explanation : Explanation or None
        The finished explanation shown (``None`` while the first one is computed).
    maps : dict of str to numpy.ndarray
        The maps drawn so far for the current request.
    runner : zfwidgets.widgets.runner.Runner
    jobs : int
        Explanations started (tests and curious users).
    fig : matplotlib.figure.Figure
    panels : zfwidgets.plots.explain.ExplainPanels
    """

    target = T.Int(-1)

    def __init__(self, session, target: int | None = None, *, cam_layer: str | None = None,
                 size: int = 32, stride: int = 16, background: bool | None = None,
                 figsize: tuple[float, float] = (7.6, 4.3), dpi: float = 90, **kwargs):
        super().__init__(session, **kwargs)
        self.cam_layer = cam_layer
        self.size, self.stride = int(size), int(stride)
        self._cache: OrderedDict = OrderedDict()
        self._computing = None
        self._image_version = None
        self.explanation = None
        self.maps: dict = {}
        self.jobs = 0
        self.fig = self.new_figure(*figsize, dpi=dpi)
        self.panels = None
        self.runner = self.new_runner(on_step=self._progress, on_end=self._ended,
                                      background=background)
        self.classes = W.ToggleButtons(options=[], style={"button_width": "140px"},
                                       layout=W.Layout(flex_flow="row wrap"))
        self.classes.add_class("zf-explain-classes")
        self.progress = W.IntProgress(value=0, min=0, max=1, bar_style="info",
                                      layout=W.Layout(width="160px", visibility="hidden"))
        self.status = W.HTML(layout=W.Layout(min_width="160px"))
        self.notes = W.HTML()
        self.notes.add_class("zf-explain-notes")
        self._built = False                # no refresh before the constructor's end
        self._fill_classes()
        if target is not None:
            self.target = int(target)
        self.link((self, "target"), (self.classes, "value"))
        self.children = [W.HTML("<b style='font-size:12px'>class</b>"), self.classes,
                         W.HBox([self.progress, self.status],
                                layout=W.Layout(align_items="center")),
                         self.fig.canvas, self.notes, self.errors]
        self.add_class("zf-explain")
        self._built = True
        self.ready()

    # ------------------------------------------------------------------ the class
    def _fill_classes(self) -> None:
        """The top-5 buttons for the current image; the target becomes its top class unless
        it is among them."""
        session = self.session
        probs = session.probabilities()
        top = probs.topk(min(5, probs.numel()))
        options = [(f"{session.label(int(c))} {float(p):.2f}", int(c))
                   for p, c in zip(top.values, top.indices)]
        keep = self.target if self.target in [c for _, c in options] else options[0][1]
        with self.held():
            self.classes.options = options
            self.classes.value = keep
            self.target = keep

    @T.validate("target")
    def _check_target(self, proposal):
        value = int(proposal["value"])
        n = int(self.session.probabilities().numel())
        if not 0 <= value < n:
            raise OutOfRangeError(f"class {value} is out of range for this model ({n} classes)")
        return value

    @T.observe("target")
    def _target_changed(self, change) -> None:
        if self._built:
            self.request_refresh()

    def session_changed(self, what: str) -> None:
        """A new image or model: its own top 5, its top class, new maps."""
        self._cache.clear()
        self._fill_classes()
        if what == "model":
            self.panels = None           # the methods a model supports may differ
        self.request_refresh()

    # ------------------------------------------------------------------ drawing
    def _key(self):
        return (self.session.version, self.target, self.cam_layer, self.size, self.stride)

    @property
    def layer(self) -> str:
        """The Grad-CAM layer used."""
        return self.cam_layer or gradcam_layer(self.session)

    def refresh(self) -> None:
        """Show the explanation of the current class: cached, being computed, or started."""
        key = self._key()
        cached = self._cache.get(key)
        if cached is not None:
            self.runner.cancel()
            self._show(cached)
            return
        if self._computing == key and self.runner.running:
            return
        self._start(key)

    def _start(self, key) -> None:
        job = explain_job(self.session, self.target, layer=self.layer, size=self.size,
                          stride=self.stride, deletion=False)
        self.jobs += 1
        self._computing = key
        self.maps = {}
        self.explanation = None
        self._ensure_panels()
        update_explain_panels(self.panels, image=self._new_image(), pending=True, draw=False)
        self.progress.value = 0
        self.progress.layout.visibility = "visible"
        self.status.value = "<span style='font-size:12px;color:#555'>explaining&hellip;</span>"
        self.fig.canvas.draw_idle()
        self.runner.start(job, on_done=lambda result: self._done(key, result))

    def _ensure_panels(self) -> None:
        if self.panels is None:
            _, self.panels = explain_panels(self.session.display_image, list(METHODS),
                                            fig=self.fig)
            self._image_version = self.session.version

    def _new_image(self):
        if self._image_version == self.session.version:
            return None
        self._image_version = self.session.version
        return self.session.display_image

    def _progress(self, step) -> None:
        """A step: the progress bar; a class map that arrived is drawn."""
        self.progress.max = max(1, step.total)
        self.progress.value = step.done
        note = html.escape(step.note or "")
        self.status.value = f"<span style='font-size:12px;color:#555'>{note}&hellip;</span>"
        partial = step.partial
        if self._computing is not None and getattr(partial, "method", None) in METHODS:
            self.maps[partial.method] = partial.map
            update_explain_panels(self.panels, maps={partial.method: partial.map}, draw=True)

    def _ended(self, job) -> None:
        self._computing = None
        self.progress.layout.visibility = "hidden"
        self.status.value = ""

    def _done(self, key, result) -> None:
        keep_recent(self._cache, key, result, 8)
        if key == self._key():
            self._show(result)

    def _show(self, result) -> None:
        self._ensure_panels()
        self.explanation = result
        self.maps = {m: c.map for m, c in result.maps.items()}
        update_explain_panels(self.panels, image=self._new_image(), explanation=result,
                              draw=False)
        self.notes.value = self._notes(result)
        self.errors.clear()
        self.fig.canvas.draw_idle()

    def _notes(self, e) -> str:
        """Grey lines under the figure: what is explained, how to read ρ, what was skipped."""
        rows = [f"class '{e.label}' (P = {e.occlusion.base_prob:.3f}); Grad-CAM at {e.layer}; "
                f"occlusion: {e.occlusion.size} px squares every {self.stride} px",
                "each map on its own scale (0 to its 99.5th percentile); ρ: Spearman rank "
                "agreement of the map's mean over each square with the drop in P when that "
                "square is hidden (1: same order as occlusion, 0: unrelated)"]
        if "deconvnet" in e.maps and self.session.default_rule(e.layer) != "deconvnet":
            rows.append(f"deconvnet: {self.session.rule_reason(e.layer)}")
        rows += [f"{METHOD_NAMES.get(m, m)}: {why}" for m, why in e.skipped.items()]
        body = "<br>".join(html.escape(r) for r in rows)
        return f"<div style='font-size:11px;color:#666;max-width:700px'>{body}</div>"

    def close(self) -> None:
        """Drop any running job, stop listening to the session, close the figure."""
        self._computing = None
        super().close()
