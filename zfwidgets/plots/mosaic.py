"""Feature-map mosaics: all maps of a layer (or the layer-1 filters, as RGB) tiled in one image.

:func:`mosaic_layout` and :func:`tile_maps` place maps on a near-square grid with separators
(:class:`MosaicLayout` maps a click back to a map and position); :func:`feature_mosaic_figure`
draws the tiled maps with a selection outline, a marker and a cross over each knocked-out map,
and :func:`update_feature_mosaic` changes them in place (``set_data``), never rebuilding the
figure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from ..errors import BadParameterError
from .base import HIGHLIGHT_COLOR, KNOCKED_COLOR, MARKER_COLOR, SEPARATOR_COLOR, new_figure

__all__ = [
    "MosaicLayout", "Mosaic", "mosaic_layout", "normalize_maps", "tile_maps", "filters_to_rgb",
    "feature_mosaic_figure", "update_feature_mosaic",
]


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
    knocked : LineCollection
        A cross over each knocked-out map (empty when none is).
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
    knocked: LineCollection
    layout: MosaicLayout
    title: object
    data: np.ndarray = field(repr=False, default=None)
    cmap: str = "gray"
    knocked_out: tuple = ()


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


def feature_mosaic_figure(maps: np.ndarray, *, selected: int | None = None,
                          position: tuple[int, int] | None = None, title: str = "",
                          normalize: str | None = "map", cmap: str = "gray",
                          fig: Figure | None = None, size: tuple[float, float] = (5.2, 5.4),
                          dpi: float = 100, knocked_out: Sequence[int] = ()
                          ) -> tuple[Figure, Mosaic]:
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
    knocked_out : sequence of int
        Maps knocked out (zero in the model: :meth:`zfwidgets.Session.set_knockouts`), each
        crossed out.

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
    knocked = LineCollection([], colors=KNOCKED_COLOR, linewidths=1.6)
    ax.add_collection(knocked, autolim=False)
    text = fig.suptitle(title, fontsize=9, y=0.985, va="top")
    handle = Mosaic(fig, ax, image, highlight, marker, knocked, layout, text, mosaic, cmap)
    _place_selection(handle, selected, position)
    _place_knocked(handle, knocked_out)
    return fig, handle


def _place_knocked(h: Mosaic, knocked_out: Sequence[int]) -> None:
    """A cross from corner to corner of each knocked-out map's tile."""
    th, tw = h.layout.tile
    segments = []
    chosen = tuple(sorted({int(k) for k in knocked_out if 0 <= int(k) < h.layout.count}))
    for k in chosen:
        y0, x0 = h.layout.origin(k)
        top, left, bottom, right = y0 - 0.5, x0 - 0.5, y0 + th - 0.5, x0 + tw - 0.5
        segments += [[(left, top), (right, bottom)], [(left, bottom), (right, top)]]
    h.knocked.set_segments(segments)
    h.knocked_out = chosen


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
                          draw: bool = True, knocked_out: Sequence[int] | None = None) -> Mosaic:
    """Change a mosaic in place: new maps (any count and size), selection, marker, title,
    knocked-out maps (``None``: the same as before; crosses follow a new layout).

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
    if knocked_out is not None or maps is not None:
        _place_knocked(handle, handle.knocked_out if knocked_out is None else knocked_out)
    if title is not None:
        handle.title.set_text(title)
    if draw:
        handle.fig.canvas.draw_idle()
    return handle
