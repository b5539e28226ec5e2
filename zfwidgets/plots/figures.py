"""Figures of the explorer: feature-map mosaics, layer-1 filters, deconvnet panels, top-5 bars.

Pure matplotlib: every ``*_figure`` function takes results (numpy arrays, lists) and returns the
figure plus a small handle holding the artists; the matching ``update_*`` function changes those
artists in place (``set_data``, ``set_xy`` ...) and asks for a redraw, without rebuilding the
figure. Figures are created with :class:`matplotlib.figure.Figure` (never through pyplot), or
drawn into a figure the caller passes (an ipympl canvas, say).

:func:`render_overview` is the headless entry point: it writes the main figures of a
:class:`~zfwidgets.Session` as PNG files.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from ..backend.defaults import opening_layer
from ..backend.layers import first_rgb_conv
from ..errors import BadParameterError

__all__ = [
    "MosaicLayout", "Mosaic", "DeconvPanel", "TopKBars",
    "mosaic_layout", "normalize_maps", "tile_maps", "filters_to_rgb", "first_rgb_conv",
    "projection_image", "new_figure",
    "feature_mosaic_figure", "update_feature_mosaic",
    "deconv_panel_figure", "update_deconv_panel",
    "topk_figure", "update_topk",
    "render_overview", "deconv_titles",
]

#: Colour of the separators between tiles and of empty cells.
SEPARATOR_COLOR = (0.16, 0.20, 0.32)
#: Colour of the selection outline, the strongest-position marker and receptive-field boxes.
HIGHLIGHT_COLOR = "#ff7f0e"
MARKER_COLOR = "#ff2d2d"


# ----------------------------------------------------------------------------- tiling

@dataclass(frozen=True)
class MosaicLayout:
    """Where each map sits in a mosaic.

    Attributes
    ----------
    count : int
        Number of maps.
    rows, cols : int
        Grid size.
    tile : tuple of int
        ``(height, width)`` of one map in pixels.
    pad : int
        Separator width in pixels (between tiles, not around the border).
    """

    count: int
    rows: int
    cols: int
    tile: tuple[int, int]
    pad: int = 1

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` of the whole mosaic in pixels."""
        h, w = self.tile
        return (self.rows * h + (self.rows - 1) * self.pad,
                self.cols * w + (self.cols - 1) * self.pad)

    def origin(self, k: int) -> tuple[int, int]:
        """Pixel ``(row, column)`` of the top-left corner of map ``k``."""
        if not 0 <= k < self.count:
            raise BadParameterError(f"map {k} is outside the mosaic of {self.count} maps")
        r, c = divmod(int(k), self.cols)
        return r * (self.tile[0] + self.pad), c * (self.tile[1] + self.pad)

    def locate(self, y: float, x: float) -> tuple[int, int, int] | None:
        """Map and position under mosaic data coordinates ``(y, x)`` (pixel centres at integers).

        Returns
        -------
        tuple or None
            ``(k, row, column)`` inside map ``k``, or ``None`` on a separator, an empty cell or
            outside the mosaic.
        """
        if y is None or x is None or not (np.isfinite(y) and np.isfinite(x)):
            return None
        h, w = self.tile
        py, px = math.floor(y + 0.5), math.floor(x + 0.5)
        if py < 0 or px < 0:
            return None
        r, yy = divmod(py, h + self.pad)
        c, xx = divmod(px, w + self.pad)
        if yy >= h or xx >= w or r >= self.rows or c >= self.cols:
            return None
        k = r * self.cols + c
        return (k, yy, xx) if k < self.count else None


def mosaic_layout(count: int, tile: tuple[int, int], pad: int = 1, aspect: float = 1.0
                  ) -> MosaicLayout:
    """A near-square grid for ``count`` maps of size ``tile``.

    Parameters
    ----------
    count : int
        Number of maps (at least 1).
    tile : (height, width)
        Size of one map.
    pad : int
        Separator width.
    aspect : float
        Wanted width / height of the whole mosaic.
    """
    if count < 1:
        raise BadParameterError(f"a mosaic needs at least one map, got {count}")
    h, w = int(tile[0]), int(tile[1])
    cols = max(1, min(count, math.ceil(math.sqrt(count * aspect * (h + pad) / (w + pad)))))
    rows = math.ceil(count / cols)
    return MosaicLayout(int(count), int(rows), int(cols), (h, w), int(pad))


def normalize_maps(maps: np.ndarray, mode: str | None = "map") -> np.ndarray:
    """Scale maps to [0, 1].

    Parameters
    ----------
    maps : array ``[C, H, W]`` or ``[C, H, W, 3]``
    mode : {"map", "layer", None}
        ``"map"``: each map's own minimum -> 0 and maximum -> 1 (a constant map becomes 0);
        ``"layer"``: one minimum and maximum for all maps; ``None``: clip to [0, 1] only.
    """
    a = np.asarray(maps, dtype=np.float32)
    if mode is None:
        return np.clip(a, 0.0, 1.0)
    if mode == "map":
        axes = tuple(range(1, a.ndim))
        lo = a.min(axis=axes, keepdims=True)
        hi = a.max(axis=axes, keepdims=True)
    elif mode == "layer":
        lo, hi = a.min(), a.max()
    else:
        raise BadParameterError(f"normalization must be 'map', 'layer' or None, not {mode!r}")
    span = hi - lo
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(span > 0, (a - lo) / np.where(span > 0, span, 1), 0.0)
    return out.astype(np.float32)


def tile_maps(maps: np.ndarray, layout: MosaicLayout | None = None, *, normalize: str | None = "map",
              pad: int = 1) -> tuple[np.ndarray, MosaicLayout]:
    """Tile maps into one image with separators.

    Parameters
    ----------
    maps : array ``[C, H, W]`` (gray) or ``[C, H, W, 3]`` (RGB)
    layout : MosaicLayout, optional
        Defaults to :func:`mosaic_layout`.
    normalize : {"map", "layer", None}
        See :func:`normalize_maps`.
    pad : int
        Separator width when ``layout`` is not given.

    Returns
    -------
    mosaic : numpy.ndarray
        Gray: ``[Hm, Wm]`` float32 in [0, 1] with NaN on separators and empty cells (shown in
        the colormap's "bad" colour). RGB: ``[Hm, Wm, 3]`` with :data:`SEPARATOR_COLOR` there.
    layout : MosaicLayout
    """
    a = np.asarray(maps)
    if a.ndim not in (3, 4) or (a.ndim == 4 and a.shape[-1] != 3):
        raise BadParameterError(f"maps must be [C, H, W] or [C, H, W, 3], got shape {a.shape}")
    c, h, w = a.shape[:3]
    if layout is None:
        layout = mosaic_layout(c, (h, w), pad)
    elif layout.count != c or layout.tile != (h, w):
        raise BadParameterError(f"layout for {layout.count} maps of {layout.tile} does not fit "
                                f"maps of shape {a.shape}")
    norm = normalize_maps(a, normalize)
    hm, wm = layout.shape
    if a.ndim == 3:
        out = np.full((hm, wm), np.nan, np.float32)
    else:
        out = np.empty((hm, wm, 3), np.float32)
        out[:] = SEPARATOR_COLOR
    # Vectorized placement: pad every tile to (h + pad, w + pad), then reshape the grid.
    step_h, step_w = h + layout.pad, w + layout.pad
    grid = np.full((layout.rows * layout.cols, step_h, step_w) + a.shape[3:], np.nan, np.float32)
    grid[:c, :h, :w] = norm
    grid = grid.reshape((layout.rows, layout.cols, step_h, step_w) + a.shape[3:])
    grid = grid.swapaxes(1, 2).reshape((layout.rows * step_h, layout.cols * step_w) + a.shape[3:])
    grid = grid[:hm, :wm]
    if a.ndim == 3:
        out[:] = grid
    else:
        ok = ~np.isnan(grid[..., 0])
        out[ok] = grid[ok]
    return out, layout


def filters_to_rgb(weight) -> np.ndarray:
    """First-layer filters ``[C, 3, kh, kw]`` as RGB images ``[C, kh, kw, 3]`` in [0, 1].

    Each filter is scaled on its own (minimum -> 0, maximum -> 1), as in the paper's layer-1
    figures.
    """
    w = np.asarray(weight.detach().cpu() if hasattr(weight, "detach") else weight, np.float32)
    if w.ndim != 4 or w.shape[1] != 3:
        raise BadParameterError(f"layer-1 filters must have shape [C, 3, kh, kw], got {w.shape}")
    return normalize_maps(w.transpose(0, 2, 3, 1), "map")


def projection_image(projection, percentile: float | None = 99.5) -> np.ndarray:
    """A projection as displayable RGB, with the contrast set by a high percentile.

    Values are clipped to ``[-s, s]`` where ``s`` is the ``percentile`` of ``|projection|``,
    then :func:`zfwidgets.projection_to_rgb` maps 0 to mid-gray and ``+-s`` to the ends. On deep
    layers a handful of extreme pixels would otherwise leave the rest of the picture flat gray.

    Parameters
    ----------
    projection : tensor or array ``[3, H, W]`` (or ``[N, 3, H, W]``)
    percentile : float or None
        ``None`` scales by the maximum (exactly :func:`~zfwidgets.projection_to_rgb`).

    Returns
    -------
    numpy.ndarray
        ``[H, W, 3]`` (or ``[N, H, W, 3]``) float32 in [0, 1].
    """
    from ..backend.project import projection_to_rgb

    p = np.asarray(projection.detach().float().cpu() if hasattr(projection, "detach")
                   else projection, np.float32)
    if percentile is not None:
        batch = p if p.ndim == 4 else p[None]
        flat = np.abs(batch.reshape(len(batch), -1))
        s = np.percentile(flat, float(percentile), axis=1)
        s = np.where(s > 0, s, flat.max(axis=1))[:, None, None, None]
        batch = np.clip(batch, -s, s)
        p = batch if p.ndim == 4 else batch[0]
    return projection_to_rgb(p)


# ----------------------------------------------------------------------------- mosaic figure

@dataclass
class Mosaic:
    """Artists of a feature-map mosaic figure.

    Attributes
    ----------
    fig : Figure
    ax : Axes
    image : AxesImage
        The one image artist holding every map (as 8-bit RGBA: colour-mapped here, so a
        redraw skips matplotlib's normalization and colormap of a masked float array).
    highlight : Rectangle
        Outline of the selected map (invisible when none is selected).
    marker : Line2D
        The strongest position of the selected map (invisible when not given).
    layout : MosaicLayout
    title : Text
    data : numpy.ndarray
        The tiled maps as :func:`tile_maps` returns them (values in [0, 1], NaN between maps).
    cmap : str
        Colormap of gray maps.
    """

    fig: Figure
    ax: object
    image: object
    highlight: Rectangle
    marker: Line2D
    layout: MosaicLayout
    title: object
    data: np.ndarray = field(repr=False, default=None)
    cmap: str = "gray"


def _rgba8(mosaic: np.ndarray, cmap: str) -> np.ndarray:
    """A tiled mosaic as 8-bit RGBA: gray values through ``cmap``, NaN -> separator colour."""
    import matplotlib

    sep = np.array([*(round(255 * v) for v in SEPARATOR_COLOR), 255], np.uint8)
    if mosaic.ndim == 2:
        lut = (matplotlib.colormaps[cmap](np.linspace(0, 1, 256)) * 255).round().astype(np.uint8)
        bad = np.isnan(mosaic)
        idx = np.rint(np.clip(np.where(bad, 0, mosaic), 0, 1) * 255).astype(np.uint8)
        out = lut[idx]
        out[bad] = sep
        return out
    out = np.empty(mosaic.shape[:2] + (4,), np.uint8)
    out[..., :3] = np.rint(np.clip(mosaic, 0, 1) * 255)
    out[..., 3] = 255
    return out


def new_figure(fig: Figure | None, size: tuple[float, float], dpi: float = 100,
               layout: str | None = None) -> Figure:
    """``fig`` cleared, or a new ``Figure`` of ``size`` inches (no pyplot) with an Agg canvas,
    so that it is drawable headless (``fig.canvas.draw()``, ``buffer_rgba()``, ``savefig``)."""
    if fig is None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        fig = Figure(figsize=size, dpi=dpi, layout=layout)
        FigureCanvasAgg(fig)
        return fig
    fig.clear()
    return fig


def feature_mosaic_figure(maps: np.ndarray, *, selected: int | None = None,
                          position: tuple[int, int] | None = None, title: str = "",
                          normalize: str | None = "map", cmap: str = "gray",
                          fig: Figure | None = None, size: tuple[float, float] = (5.2, 5.4),
                          dpi: float = 100) -> tuple[Figure, Mosaic]:
    """All maps of a layer as one image.

    Parameters
    ----------
    maps : array ``[C, H, W]`` (activations) or ``[C, H, W, 3]`` (RGB filters)
    selected : int, optional
        Map to outline.
    position : (y, x), optional
        Position inside the selected map to mark (its strongest activation, say).
    title : str
        Line above the mosaic; empty: no title, the mosaic fills the figure.
    normalize : {"map", "layer", None}
        See :func:`normalize_maps`.
    cmap : str
        Colormap of gray maps.
    fig : Figure, optional
        Draw into this figure (cleared first) instead of a new one.
    size, dpi
        Size of a new figure.

    Returns
    -------
    fig : Figure
    handle : Mosaic
    """
    fig = new_figure(fig, size, dpi)
    mosaic, layout = tile_maps(maps, normalize=normalize)
    # No title: the image fills the figure (an interactive view shows its title as HTML, which
    # keeps text rendering out of every redraw).
    ax = fig.add_axes((0.01, 0.01, 0.98, 0.90) if title else (0.005, 0.005, 0.99, 0.99))
    ax.set_axis_off()
    image = ax.imshow(_rgba8(mosaic, cmap), interpolation="nearest", resample=False)
    highlight = Rectangle((0, 0), 1, 1, fill=False, edgecolor=HIGHLIGHT_COLOR, linewidth=2.0,
                          visible=False)
    ax.add_patch(highlight)
    (marker,) = ax.plot([], [], marker="o", markersize=6, markerfacecolor="none",
                        markeredgecolor=MARKER_COLOR, markeredgewidth=1.8, linestyle="none")
    text = fig.suptitle(title, fontsize=9, y=0.985, va="top")
    handle = Mosaic(fig, ax, image, highlight, marker, layout, text, mosaic, cmap)
    _place_selection(handle, selected, position)
    return fig, handle


def _place_selection(h: Mosaic, selected: int | None, position) -> None:
    if selected is None or not 0 <= selected < h.layout.count:
        h.highlight.set_visible(False)
        h.marker.set_visible(False)
        return
    y0, x0 = h.layout.origin(selected)
    th, tw = h.layout.tile
    h.highlight.set_xy((x0 - 0.5, y0 - 0.5))
    h.highlight.set_width(tw)
    h.highlight.set_height(th)
    h.highlight.set_visible(True)
    if position is None:
        h.marker.set_visible(False)
    else:
        h.marker.set_data([x0 + position[1]], [y0 + position[0]])
        h.marker.set_visible(True)


def update_feature_mosaic(handle: Mosaic, maps: np.ndarray | None = None, *,
                          selected: int | None = None, position: tuple[int, int] | None = None,
                          title: str | None = None, normalize: str | None = "map",
                          draw: bool = True) -> Mosaic:
    """Change a mosaic in place: new maps (any count and size), selection, marker, title.

    The image artist is reused (``set_data`` and ``set_extent``); nothing is rebuilt.
    """
    if maps is not None:
        mosaic, layout = tile_maps(maps, normalize=normalize)
        hm, wm = layout.shape
        handle.data = mosaic
        handle.image.set_data(_rgba8(mosaic, handle.cmap))
        handle.image.set_extent((-0.5, wm - 0.5, hm - 0.5, -0.5))
        handle.ax.set_xlim(-0.5, wm - 0.5)
        handle.ax.set_ylim(hm - 0.5, -0.5)
        handle.layout = layout
    _place_selection(handle, selected, position)
    if title is not None:
        handle.title.set_text(title)
    if draw:
        handle.fig.canvas.draw_idle()
    return handle


# ----------------------------------------------------------------------------- deconv panel

def _box_patch(box, color=HIGHLIGHT_COLOR) -> Rectangle:
    r = Rectangle((0, 0), 1, 1, fill=False, edgecolor=color, linewidth=1.8, visible=False)
    _set_box(r, box)
    return r


def _set_box(patch: Rectangle, box) -> None:
    if box is None:
        patch.set_visible(False)
        return
    top, left, bottom, right = (int(v) for v in box)
    patch.set_xy((left - 0.5, top - 0.5))
    patch.set_width(right - left)
    patch.set_height(bottom - top)
    patch.set_visible(True)


def _crop(image: np.ndarray, box) -> np.ndarray:
    if box is None:
        return image
    top, left, bottom, right = (int(v) for v in box)
    crop = image[top:bottom, left:right]
    return crop if crop.size else image[:1, :1]


def _show(image_artist, ax, data: np.ndarray) -> None:
    image_artist.set_data(data)
    h, w = data.shape[:2]
    image_artist.set_extent((-0.5, w - 0.5, h - 0.5, -0.5))
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)


@dataclass
class DeconvPanel:
    """Artists of the deconvnet panel: image | projection | receptive-field crop.

    Attributes
    ----------
    fig : Figure
    axes : list of Axes
        ``[image, projection, crop]``.
    image, projection, crop : AxesImage
    boxes : list of Rectangle
        The receptive-field box on the image and on the projection.
    titles : list of Text
    source : numpy.ndarray
        The image the crop is taken from.
    """

    fig: Figure
    axes: list
    image: object
    projection: object
    crop: object
    boxes: list
    titles: list
    suptitle: object = None
    source: np.ndarray = field(repr=False, default=None)


def deconv_panel_figure(image: np.ndarray, projection: np.ndarray, box=None, *,
                        titles: Sequence[str] = ("image", "projection", "receptive field"),
                        suptitle: str = "",
                        fig: Figure | None = None, size: tuple[float, float] = (6.9, 2.75),
                        dpi: float = 100) -> tuple[Figure, DeconvPanel]:
    """Image with the receptive-field box, the projection, and the crop, side by side.

    Parameters
    ----------
    image : array ``[H, W, 3]`` in [0, 1]
        What the model sees (``Session.display_image``).
    projection : array ``[H, W, 3]`` in [0, 1]
        A projection turned into RGB with :func:`zfwidgets.projection_to_rgb`.
    box : (top, left, bottom, right), optional
        Receptive field to outline and crop; ``None`` shows the whole image as the crop.
    titles : three str, or None
        One title per panel (keep them short: a panel is about a third of the width).
    suptitle : str
        A line above the three panels. With neither titles nor suptitle the panels fill the
        figure.
    fig : Figure, optional
        Draw into this figure (cleared first).
    """
    fig = new_figure(fig, size, dpi)
    titles = tuple(titles) if titles else ("", "", "")
    top = 0.80 if suptitle else (0.88 if any(titles) else 0.98)
    axes = list(fig.subplots(1, 3, gridspec_kw=dict(left=0.01, right=0.99, bottom=0.02,
                                                      top=top, wspace=0.06)))
    artists = []
    for ax, data in zip(axes, (image, projection, _crop(image, box))):
        ax.set_xticks([])
        ax.set_yticks([])
        artists.append(ax.imshow(np.clip(data, 0, 1), interpolation="nearest"))
    boxes = [_box_patch(box), _box_patch(box)]
    axes[0].add_patch(boxes[0])
    axes[1].add_patch(boxes[1])
    texts = [ax.set_title(t, fontsize=8.5) for ax, t in zip(axes, titles)]
    top = fig.suptitle(suptitle, fontsize=9.5, y=0.985, va="top")
    return fig, DeconvPanel(fig, axes, *artists, boxes, texts, top, np.asarray(image))


def update_deconv_panel(handle: DeconvPanel, *, image: np.ndarray | None = None,
                        projection: np.ndarray | None = None, box=None,
                        titles: Sequence[str | None] | None = None, suptitle: str | None = None,
                        draw: bool = True) -> DeconvPanel:
    """Change a deconv panel in place (``set_data`` on the three images, ``set_xy`` on boxes).

    ``box`` is always applied (``None`` hides the boxes and shows the whole image as the crop).
    """
    if image is not None:
        handle.source = np.asarray(image)
        _show(handle.image, handle.axes[0], np.clip(handle.source, 0, 1))
    if projection is not None:
        _show(handle.projection, handle.axes[1], np.clip(projection, 0, 1))
    for patch in handle.boxes:
        _set_box(patch, box)
    _show(handle.crop, handle.axes[2], np.clip(_crop(handle.source, box), 0, 1))
    if titles is not None:
        for text, t in zip(handle.titles, titles):
            if t is not None:
                text.set_text(t)
    if suptitle is not None:
        handle.suptitle.set_text(suptitle)
    if draw:
        handle.fig.canvas.draw_idle()
    return handle


# ----------------------------------------------------------------------------- top-k bars

@dataclass
class TopKBars:
    """Artists of a top-k prediction chart: one bar, one class label and one value per row."""

    fig: Figure
    ax: object
    bars: list
    labels: list
    values: list
    title: object


def _short(label: str, n: int = 28) -> str:
    return label if len(label) <= n else label[:n - 1] + "\u2026"


def topk_figure(predictions: Sequence[tuple[str, float]], *, title: str = "top-5 predictions",
                k: int | None = None, fig: Figure | None = None,
                size: tuple[float, float] = (3.6, 1.9), dpi: float = 100
                ) -> tuple[Figure, TopKBars]:
    """Horizontal bars of the top-k ``(label, probability)`` pairs, most probable on top.

    Parameters
    ----------
    predictions : sequence of (label, probability)
    title : str
    k : int, optional
        Number of rows (default: one per prediction), so later updates can show more.
    fig : Figure, optional
        Draw into this figure (cleared first).
    """
    fig = new_figure(fig, size, dpi)
    k = max(1, k or len(predictions))
    ax = fig.add_axes((0.02, 0.03, 0.96, 0.80))
    ax.set_xlim(0, 1.22)            # bars end by 1.0; the values sit to their right
    ax.set_ylim(k - 0.5, -0.5)
    ax.set_axis_off()
    bars = list(ax.barh(range(k), [0.0] * k, height=0.78, color="#9ec5e8"))
    labels = [ax.text(0.01, i, "", va="center", ha="left", fontsize=9) for i in range(k)]
    values = [ax.text(1.21, i, "", va="center", ha="right", fontsize=9, color="#333333")
              for i in range(k)]
    text = ax.set_title(title, fontsize=9, loc="left")
    handle = TopKBars(fig, ax, bars, labels, values, text)
    update_topk(handle, predictions, draw=False)
    return fig, handle


def update_topk(handle: TopKBars, predictions: Sequence[tuple[str, float]], *,
                title: str | None = None, draw: bool = True) -> TopKBars:
    """New predictions on the same bars (extra rows are left empty)."""
    for i, bar in enumerate(handle.bars):
        if i < len(predictions):
            label, p = predictions[i]
            bar.set_width(float(p))
            handle.labels[i].set_text(_short(str(label)))
            handle.values[i].set_text(f"{100 * float(p):.1f}%")
        else:
            bar.set_width(0.0)
            handle.labels[i].set_text("")
            handle.values[i].set_text("")
    if title is not None:
        handle.title.set_text(title)
    if draw:
        handle.fig.canvas.draw_idle()
    return handle


# ----------------------------------------------------------------------------- headless overview

def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "layer"


def render_overview(session, out_dir: str | os.PathLike, *, layer: str | None = None,
                    rule: str = "deconvnet", dpi: float = 100) -> list[Path]:
    """Write the explorer's main figures for a session as PNG files.

    Parameters
    ----------
    session : zfwidgets.Session
    out_dir : path
        Created if missing.
    layer : str, optional
        Layer of the feature maps and the projection; defaults to the model's middle layer.
    rule : {"deconvnet", "guided", "gradient"}
    dpi : float

    Returns
    -------
    list of Path
        ``predictions.png`` (when the model has class outputs), ``layer1_filters.png`` (when
        the model has a convolution reading RGB), ``feature_maps_<layer>.png`` and
        ``<rule>_<layer>.png`` (image with the receptive-field box of the strongest activation
        of the layer's strongest feature map | that map's projection | the crop).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []

    def save(fig: Figure, name: str) -> None:
        path = out / name
        fig.savefig(path, dpi=dpi)
        paths.append(path)

    layer = layer or opening_layer(session)
    info = session.layer_info(layer)

    if session.logits.dim() == 1 and session.logits.numel() > 1:
        fig, _ = topk_figure(session.predict(5), title=f"top-5 predictions: {session.image_name}"
                             f" ({session.entry.name})", size=(4.2, 2.0))
        save(fig, "predictions.png")

    conv = first_rgb_conv(session.model)
    if conv is not None:
        name, module = conv
        filters = filters_to_rgb(module.weight)
        fig, _ = feature_mosaic_figure(filters, title=f"layer-1 filters: {name} "
                                       f"({filters.shape[0]} x {filters.shape[1]}x{filters.shape[2]})")
        save(fig, "layer1_filters.png")

    acts = session.activation(layer).detach().cpu().numpy()
    channel = session.strongest_channel(layer)
    _, y, x, value = session.strongest(layer, channel)
    fig, _ = feature_mosaic_figure(acts, selected=channel, position=(y, x),
                                   title=f"{layer} ({info.kind}, {len(acts)} maps): "
                                         f"strongest map {channel}")
    save(fig, f"feature_maps_{_slug(layer)}.png")

    box = session.receptive_field(layer, y, x)
    proj = projection_image(session.project(layer, channel, (y, x), rule))
    fig, _ = deconv_panel_figure(
        session.display_image, proj, box, titles=deconv_titles(info, rule, "strongest"),
        suptitle=f"{layer}: map {channel}, strongest activation {value:.3g} at ({y}, {x})")
    save(fig, f"{rule}_{_slug(layer)}.png")
    return paths


def deconv_titles(info, rule: str, scope: str) -> tuple[str, str, str]:
    """Panel titles of a deconv panel for a layer (LayerInfo), a rule and a scope."""
    rf = info.rf_size
    rf_text = "?" if rf is None else (str(rf[0]) if rf[0] == rf[1] else f"{rf[0]}x{rf[1]}")
    what = "whole map" if scope == "map" else "strongest unit"
    return (f"image, receptive field {rf_text}px", f"{rule}: {what}", "receptive-field crop")
