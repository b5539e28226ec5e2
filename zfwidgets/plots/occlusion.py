"""The paper's Fig. 7 panels for one image: occluder, feature map, projection, P(class), top class.

Pure matplotlib. :func:`occlusion_figure` draws the five panels side by side from an
:class:`~zfwidgets.backend.occlusion.OcclusionResult` and returns the figure with an
:class:`OcclusionPanels` handle; :func:`update_occlusion_maps` (new maps: another size, stride,
layer or image) and :func:`update_occluder` (the occluder moved) change those artists in place.

All five panels share the input's pixel coordinates: map cell ``[i, j]`` is drawn centred on the
centre of its occluder, so a click anywhere maps back to an occluder position
(:meth:`OcclusionResult.index_of`).

(a) the image with the occluder, (b) total activation of the feature map per occluder position,
(c) the feature map's projection (deconvnet), (d) P(target class) per position, (e) the most
probable class per position, one colour per class with a legend of class names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from .base import new_figure

__all__ = ["OcclusionPanels", "occlusion_figure", "update_occlusion_maps", "update_occluder",
           "occluded_image", "class_index_map", "CLASS_COLORS", "FIGSIZE", "DPI"]

#: Default figure size (inches) and resolution: 828 x 261 pixels, which fits a notebook output in
#: JupyterLab with its file browser open (measured in chromium: an output is 848 px wide in a
#: 1280 px window, whose main area is 962 px).
FIGSIZE = (9.2, 2.9)
DPI = 90

#: Colours of the most frequent classes in panel (e); the rest share OTHER_COLOR.
CLASS_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                "#17becf", "#bcbd22")
OTHER_COLOR = "#c7c7c7"
OCCLUDER_EDGE = "#ff2d2d"
MARKER_EDGE = "white"


@dataclass
class OcclusionPanels:
    """Artists of an occlusion figure (see :func:`occlusion_figure`).

    Attributes
    ----------
    fig : Figure
    axes : list of Axes
        (a) image, (b) feature, (c) projection, (d) probability, (e) top class.
    image, feature, projection, prob, top : AxesImage
    occluder : Rectangle
        The occluder outline on (a).
    markers : list of Rectangle
        The current occluder's cell on (b), (d) and (e).
    titles : list of Text
    legend : Legend or None
        Class names of (e).
    classes : list of int
        Class ids in colour order of (e) (the last colour is "other" when there are more).
    result : OcclusionResult
        The maps shown.
    """

    fig: Figure
    axes: list
    image: object
    feature: object
    projection: object
    prob: object
    top: object
    occluder: Rectangle
    markers: list
    titles: list
    legend: object = None
    classes: list = field(default_factory=list)
    result: object = None


def occluded_image(image: np.ndarray, top: int, left: int, size: int, color) -> np.ndarray:
    """A copy of ``image`` ``[H, W, 3]`` with a ``size`` square of ``color`` at ``(top, left)``."""
    out = np.array(image, dtype=np.float32, copy=True)
    out[top:top + size, left:left + size] = np.asarray(color, np.float32).reshape(1, 1, -1)
    return out


def class_index_map(top_class: np.ndarray, labels: dict, max_classes: int = len(CLASS_COLORS)
                    ) -> tuple[np.ndarray, list[int], list[str], ListedColormap]:
    """Turn a map of class ids into colour indices for a categorical image.

    The ``max_classes`` most frequent classes get their own colour (most frequent first), every
    other class shares a gray "other" colour.

    Returns
    -------
    index : numpy.ndarray
        ``[R, C]`` colour indices.
    classes : list of int
        Class id of each colour (without "other").
    names : list of str
        Legend entries (``"other (k classes)"`` last when needed).
    cmap : ListedColormap
    """
    ids, counts = np.unique(top_class, return_counts=True)
    order = ids[np.argsort(-counts, kind="stable")]
    keep = [int(c) for c in order[:max_classes]]
    rest = [int(c) for c in order[max_classes:]]
    lookup = {c: k for k, c in enumerate(keep)}
    other = len(keep)
    index = np.vectorize(lambda c: lookup.get(int(c), other), otypes=[np.int64])(top_class) \
        if top_class.size else np.zeros_like(top_class)
    names = [_short(labels.get(c, f"class {c}")) for c in keep]
    colors = list(CLASS_COLORS[:len(keep)])
    if rest:
        names.append(f"other ({len(rest)} classes)")
        colors.append(OTHER_COLOR)
    return index, keep, names, ListedColormap(colors)


def _short(text: str, n: int = 22) -> str:
    text = str(text)
    return text if len(text) <= n else text[:n - 1] + "\u2026"


def _titles(result, projection_title: str) -> list[str]:
    feat = ("(b) feature map" if result.feature is None else
            f"(b) {_short(result.layer, 16)} #{result.channel}")
    return ["(a) occluded input", feat, projection_title,
            f"(d) P({_short(result.target_label, 16)})", "(e) most probable class"]


def _labels(result, top: int, left: int) -> list[str]:
    def span(values):
        if values is None:
            return ""
        return f"{float(np.nanmin(values)):.3g} \u2013 {float(np.nanmax(values)):.3g}"

    n = len(np.unique(result.top_class))
    return [f"{result.size}px at ({top}, {left})",
            span(result.feature) + (f" (unoccluded {result.base_feature:.3g})"
                                    if result.base_feature is not None else ""),
            "", span(result.prob) + f" (unoccluded {result.base_prob:.2f})",
            f"{n} class{'es' if n != 1 else ''}, stride {result.stride}px"]


def _map_limits(values: np.ndarray | None) -> tuple[float, float]:
    if values is None or not np.isfinite(values).any():
        return 0.0, 1.0
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    return (lo, hi) if hi > lo else (lo - 0.5, hi + 0.5)


def occlusion_figure(image: np.ndarray, result, projection: np.ndarray | None = None, *,
                     occluder: tuple[int, int] | None = None, fill_color=(0.5, 0.5, 0.5),
                     projection_title: str = "(c) projection", fig: Figure | None = None,
                     size: tuple[float, float] = FIGSIZE, dpi: float = DPI
                     ) -> tuple[Figure, OcclusionPanels]:
    """The five Fig. 7 panels side by side.

    Parameters
    ----------
    image : array ``[H, W, 3]`` in [0, 1]
        The model's view of the image (``Session.display_image``), unoccluded.
    result : OcclusionResult
        The maps.
    projection : array ``[H, W, 3]`` in [0, 1], optional
        The feature map's projection (e.g. ``projection_image(session.project(layer, channel))``);
        gray when not given.
    occluder : (top, left), optional
        Where to draw the occluder on (a); default the centre of the image.
    fill_color : RGB in [0, 1]
        Colour of the occluder on (a).
    projection_title : str
    fig : Figure, optional
        Draw into this figure (cleared first), e.g. an ipympl canvas.
    size, dpi
        Figure size in inches and resolution when a new figure is made.

    Returns
    -------
    (Figure, OcclusionPanels)
    """
    fig = new_figure(fig, size, dpi)
    H, W = result.image_shape
    axes = list(fig.subplots(1, 5, gridspec_kw=dict(left=0.005, right=0.995, bottom=0.2,
                                                    top=0.91, wspace=0.04)))
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlim(-0.5, W - 0.5)
        ax.set_ylim(H - 0.5, -0.5)
        ax.set_facecolor("#f3f3f3")
    if occluder is None:
        occluder = (max(0, (H - result.size) // 2), max(0, (W - result.size) // 2))
    top, left = occluder
    shown = occluded_image(image, top, left, result.size, fill_color)
    a = axes[0].imshow(np.clip(shown, 0, 1), interpolation="nearest", extent=(-0.5, W - 0.5, H - 0.5, -0.5))
    box = Rectangle((left - 0.5, top - 0.5), result.size, result.size, fill=False,
                    edgecolor=OCCLUDER_EDGE, linewidth=1.5)
    axes[0].add_patch(box)
    if projection is None:
        projection = np.full((H, W, 3), 0.5, np.float32)
    c = axes[2].imshow(np.clip(projection, 0, 1), interpolation="nearest",
                       extent=(-0.5, W - 0.5, H - 0.5, -0.5))
    ext = result.extent()
    feat = result.feature if result.feature is not None else np.zeros(result.shape, np.float32)
    b = axes[1].imshow(feat, cmap="jet", interpolation="nearest", extent=ext,
                       clim=_map_limits(result.feature))
    d = axes[3].imshow(result.prob, cmap="jet", interpolation="nearest", extent=ext,
                       clim=(0.0, max(1e-6, float(result.prob.max()), result.base_prob)))
    index, classes, names, cmap = class_index_map(result.top_class, result.labels)
    e = axes[4].imshow(index, cmap=cmap, interpolation="nearest", extent=ext,
                       vmin=-0.5, vmax=cmap.N - 0.5)
    for ax in axes:  # imshow resets the limits: keep every panel on the input's pixel grid
        ax.set_xlim(-0.5, W - 0.5)
        ax.set_ylim(H - 0.5, -0.5)
    markers = []
    for ax in (axes[1], axes[3], axes[4]):
        m = Rectangle((0, 0), 1, 1, fill=False, edgecolor=MARKER_EDGE, linewidth=1.4)
        ax.add_patch(m)
        markers.append(m)
    titles = [ax.set_title(t, fontsize=8.5) for ax, t in zip(axes, _titles(result,
                                                                          projection_title))]
    for ax, text in zip(axes, _labels(result, top, left)):
        ax.set_xlabel(text, fontsize=7.5, labelpad=2)
    panels = OcclusionPanels(fig, axes, a, b, c, d, e, box, markers, titles, None, classes,
                             result)
    _legend(panels, cmap, names)
    _place_markers(panels, top, left)
    return fig, panels


def _legend(panels: OcclusionPanels, cmap: ListedColormap, names: Sequence[str]) -> None:
    if panels.legend is not None:
        panels.legend.remove()
    handles = [Patch(facecolor=cmap(k), edgecolor="none", label=name)
               for k, name in enumerate(names)]
    panels.legend = panels.fig.legend(handles=handles, loc="lower center", ncol=min(5, len(names)),
                                      fontsize=7.5, frameon=False, handlelength=1.2,
                                      columnspacing=1.0, bbox_to_anchor=(0.5, -0.01))


def _place_markers(panels: OcclusionPanels, top: int, left: int) -> None:
    r = panels.result
    i, j = r.index_of(top + (r.size - 1) / 2, left + (r.size - 1) / 2)
    cy = r.rows[i] + r.size / 2 - 0.5
    cx = r.cols[j] + r.size / 2 - 0.5
    s = r.stride
    for m in panels.markers:
        m.set_xy((cx - s / 2, cy - s / 2))
        m.set_width(s)
        m.set_height(s)


def update_occluder(panels: OcclusionPanels, top: int, left: int, *, image: np.ndarray | None = None,
                    draw: bool = True) -> OcclusionPanels:
    """Move the occluder: outline on (a), the cell markers on (b), (d), (e).

    Parameters
    ----------
    panels : OcclusionPanels
    top, left : int
        Occluder corner in input pixels.
    image : array ``[H, W, 3]``, optional
        The new occluded input for (a) (see :func:`occluded_image`).
    draw : bool
        Ask the canvas for a redraw (``draw_idle``).
    """
    size = panels.result.size
    panels.axes[0].set_xlabel(_labels(panels.result, top, left)[0])
    if image is not None:
        panels.image.set_data(np.clip(image, 0, 1))
    panels.occluder.set_xy((left - 0.5, top - 0.5))
    panels.occluder.set_width(size)
    panels.occluder.set_height(size)
    _place_markers(panels, top, left)
    if draw:
        panels.fig.canvas.draw_idle()
    return panels


def update_occlusion_maps(panels: OcclusionPanels, result, *, projection: np.ndarray | None = None,
                          image: np.ndarray | None = None, occluder: tuple[int, int] | None = None,
                          projection_title: str | None = None, draw: bool = True
                          ) -> OcclusionPanels:
    """Show new maps (another size, stride, layer, channel or image) in the same artists.

    Parameters
    ----------
    panels : OcclusionPanels
    result : OcclusionResult
    projection : array ``[H, W, 3]``, optional
        New projection for (c).
    image : array ``[H, W, 3]``, optional
        New occluded input for (a).
    occluder : (top, left), optional
        Occluder corner (moves the outline and markers).
    projection_title : str, optional
    draw : bool
    """
    panels.result = result
    ext = result.extent()
    feat = result.feature if result.feature is not None else np.zeros(result.shape, np.float32)
    panels.feature.set_data(feat)
    panels.feature.set_extent(ext)
    panels.feature.set_clim(*_map_limits(result.feature))
    panels.prob.set_data(result.prob)
    panels.prob.set_extent(ext)
    panels.prob.set_clim(0.0, max(1e-6, float(result.prob.max()), result.base_prob))
    index, classes, names, cmap = class_index_map(result.top_class, result.labels)
    panels.top.set_data(index)
    panels.top.set_extent(ext)
    panels.top.set_cmap(cmap)
    panels.top.set_clim(-0.5, cmap.N - 0.5)
    panels.classes = classes
    _legend(panels, cmap, names)
    H, W = result.image_shape
    pixels = (-0.5, W - 0.5, H - 0.5, -0.5)
    if projection is not None:
        panels.projection.set_data(np.clip(projection, 0, 1))
        panels.projection.set_extent(pixels)
    if image is not None:
        panels.image.set_extent(pixels)
    for ax in panels.axes:
        ax.set_xlim(-0.5, W - 0.5)
        ax.set_ylim(H - 0.5, -0.5)
    texts = _titles(result, projection_title or panels.titles[2].get_text())
    for t, text in zip(panels.titles, texts):
        t.set_text(text)
    for ax, text in zip(panels.axes[1:], _labels(result, 0, 0)[1:]):
        ax.set_xlabel(text)
    if occluder is None:
        x, y = panels.occluder.get_xy()
        occluder = (int(round(y + 0.5)), int(round(x + 0.5)))
    update_occluder(panels, *occluder, image=image, draw=False)
    if draw:
        panels.fig.canvas.draw_idle()
    return panels
