"""Image chooser (offline samples + the user's own file) and the top-5 prediction display."""

from __future__ import annotations

import html
import io

import ipywidgets as W
import traitlets as T

from ..backend.explain.ablation import intact_probabilities
from ..data import load_sample, sample_images
from ..plots.topk import topk_figure, update_topk
from .base import View

__all__ = ["ImageChooser", "TopPredictions"]


def _named_file(content: bytes, filename: str) -> io.BytesIO:
    """The uploaded bytes as a file object called ``filename``: errors name the user's file."""
    data = io.BytesIO(bytes(content))
    data.name = str(filename)
    return data


class ImageChooser(View):
    """Pick the session's image: an offline sample photo, or upload your own file.

    A file that cannot be decoded leaves the session's image unchanged and shows the error
    inside the widget; the chooser keeps working.

    Parameters
    ----------
    session : zfwidgets.Session

    Attributes
    ----------
    image_name : str
        Name of the session's current image (a trait, read-only in spirit).
    dropdown : ipywidgets.Dropdown
        The sample photos (empty selection after an upload).
    upload : ipywidgets.FileUpload
    """

    image_name = T.Unicode("")

    def __init__(self, session, **kwargs):
        super().__init__(session, **kwargs)
        self._updating = False
        samples = sample_images()
        self.dropdown = W.Dropdown(options=samples, value=None, description="image",
                                   layout=W.Layout(width="230px"),
                                   style={"description_width": "45px"})
        self.upload = W.FileUpload(accept="image/*", multiple=False, description="upload",
                                   tooltip="analyse your own photo (JPEG, PNG ...)",
                                   layout=W.Layout(width="105px"))
        self.current = W.HTML()
        self._show_current()
        self.dropdown.observe(self._sample_chosen, names="value")
        self.upload.observe(self._uploaded, names="value")
        self.children = [W.HBox([self.dropdown, self.upload], layout=W.Layout(align_items="center")),
                         self.current, self.errors]
        self.add_class("zf-images")
        self.ready(refresh=False)

    def choose_sample(self, name: str) -> None:
        """Analyse the offline sample ``name`` (see :func:`zfwidgets.sample_images`)."""
        self._use(lambda: load_sample(name), name)

    def load_file(self, filename: str, content: bytes) -> bool:
        """Analyse an uploaded file; returns whether it could be used.

        A bad file shows its error, which names ``filename``, inside the widget and leaves the
        session's image unchanged.
        """
        return self._use(lambda: _named_file(content, filename), filename)

    def _use(self, source, name: str) -> bool:
        """Give the session the image ``source()``; on any error show it and keep the old one."""
        self.errors.clear()
        try:
            self.session.set_image(source(), name=name)
        except Exception as exc:
            self.errors.show(exc)
            self._show_current()
            return False
        return True

    def _sample_chosen(self, change) -> None:
        if not self._updating and change["new"]:
            self.choose_sample(change["new"])

    def _uploaded(self, change) -> None:
        files = change["new"]
        if not files:
            return
        item = files[0]
        self.load_file(item.get("name", "upload"), item.get("content", b""))
        self.upload.value = ()  # so that the same file can be chosen again

    def _show_current(self) -> None:
        s = self.session
        w, h = s.image.size
        self.image_name = s.image_name
        self.current.value = (f"<span style='font-size:12px;color:#444'>analysing "
                              f"<b>{html.escape(str(s.image_name))}</b> ({w}×{h})</span>")
        self._updating = True
        try:
            name = s.image_name if s.image_name in self.dropdown.options else None
            self.dropdown.value = name
        finally:
            self._updating = False

    def session_changed(self, what: str) -> None:
        self._show_current()


class TopPredictions(View):
    """Bar chart of the model's top-k classes for the session's image.

    Parameters
    ----------
    session : zfwidgets.Session
    k : int, default 5
    size : (width, height) in inches
    dpi : float

    Attributes
    ----------
    fig : matplotlib.figure.Figure
    bars : zfwidgets.plots.TopKBars
    """

    def __init__(self, session, k: int = 5, *, size: tuple[float, float] = (3.6, 1.75),
                 dpi: float = 100, **kwargs):
        super().__init__(session, **kwargs)
        self.k = int(k)
        self._drawn = None
        self.fig = self.new_figure(*size, dpi=dpi)
        self.bars = None
        self.children = [self.fig.canvas, self.errors]
        self.add_class("zf-top5")
        self.ready()

    def refresh(self) -> None:
        """Redraw for the session's current model and image."""
        s = self.session
        if self._drawn == s.version:
            return
        token = self._requests.new()
        logits = s.logits
        before = None
        if logits.dim() != 1 or logits.numel() < 2:
            preds, title = [], f"{s.entry.name}: no class scores (output {tuple(logits.shape)})"
        else:
            preds = s.predict(self.k)
            title = f"top-{len(preds)}: {s.entry.name}"
            knocked = sum(len(chans) for chans in s.knockouts.values())
            if knocked:                  # what the intact model gave the same classes
                ids = s.probabilities().topk(len(preds)).indices
                before = intact_probabilities(s)[ids].tolist()
                title += f" · {knocked} map{'s' * (knocked > 1)} knocked out"
        if not self._requests.current(token):
            return
        if self.bars is None:
            _, self.bars = topk_figure(preds, title=title, k=self.k, fig=self.fig, before=before)
        else:
            update_topk(self.bars, preds, title=title, before=before, draw=False)
        self._drawn = s.version
        self.errors.clear()
        self.fig.canvas.draw_idle()
