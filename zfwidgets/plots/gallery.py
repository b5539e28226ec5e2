"""Figures of the top-9 patch gallery (the paper's Fig. 2), pure matplotlib.

A gallery figure shows, for one feature map, a 3x3 grid of the image patches (receptive-field
crops) that caused its strongest activations beside a 3x3 grid of the deconvnet projections of
those activations (cropped to the same boxes), and optionally one source image with the box of
a selected hit. Each grid is one image (a mosaic), so an update is one ``set_data`` per grid.

Functions take a :class:`zfwidgets.backend.project.Gallery` (plain data) and return or update
matplotlib artists; nothing here computes activations.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

from .deconv import projection_image

__all__ = ["GalleryArtists", "fit_tile", "mosaic", "projection_tiles", "gallery_figure",
           "update_gallery", "show_source", "tile_index", "fig2_figure"]

BACKGROUND = 1.0  # white between and around tiles
_EMPTY = 0.85     # light gray for a slot without a hit


def fit_tile(image: np.ndarray, size: int, background: float = BACKGROUND) -> np.ndarray:
    """Scale ``image`` ``[h, w, 3]`` (floats in [0, 1]) to fit a ``size x size`` tile, centered.

    Small patches are enlarged with nearest-neighbour sampling (pixels stay visible), larger
    ones shrunk with area-aware sampling.
    """
    out = np.full((size, size, 3), background, np.float32)
    h, w = image.shape[:2]
    if h == 0 or w == 0:
        return out
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    u8 = Image.fromarray(np.clip(np.asarray(image) * 255 + 0.5, 0, 255).astype(np.uint8))
    resample = Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.BOX if scale < 1 \
        else Image.Resampling.BILINEAR
    resized = np.asarray(u8.resize((nw, nh), resample), np.float32) / 255.0
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top:top + nh, left:left + nw] = resized
    return out


def mosaic(images: Sequence[np.ndarray], rows: int = 3, cols: int = 3, tile: int = 80,
           gap: int = 3, background: float = BACKGROUND) -> np.ndarray:
    """Arrange up to ``rows * cols`` images into one ``[H, W, 3]`` grid image, row by row.

    Missing slots are drawn light gray.
    """
    height = rows * tile + (rows + 1) * gap
    width = cols * tile + (cols + 1) * gap
    out = np.full((height, width, 3), background, np.float32)
    for j in range(rows * cols):
        r, c = divmod(j, cols)
        top, left = gap + r * (tile + gap), gap + c * (tile + gap)
        if j < len(images):
            out[top:top + tile, left:left + tile] = fit_tile(images[j], tile, background)
        else:
            out[top:top + tile, left:left + tile] = _EMPTY
    return out


def projection_tiles(gallery, n: int | None = None, percentile: float | None = 99.5
                     ) -> list[np.ndarray]:
    """The gallery's projections as RGB images (``[h, w, 3]``), contrast per tile.

    See :func:`zfwidgets.plots.deconv.projection_image` for ``percentile``.
    """
    return [projection_image(p, percentile) for p in gallery.projections[:n]]


@dataclass
class GalleryArtists:
    """Handles of a gallery figure, for :func:`update_gallery` and :func:`show_source`."""

    fig: Figure
    ax_patches: object
    ax_projections: object
    ax_source: object | None
    im_patches: object
    im_projections: object
    im_source: object | None
    box: Rectangle | None
    highlight: Rectangle
    rows: int
    cols: int
    tile: int
    gap: int
    percentile: float | None = 99.5


def _blank_grid(rows, cols, tile, gap):
    return mosaic([], rows, cols, tile, gap)


def _style(ax, title):
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(title, fontsize=9)


def gallery_figure(gallery=None, *, rows: int = 3, cols: int = 3, tile: int = 80, gap: int = 3,
                   source: bool = True, percentile: float | None = 99.5, fig: Figure | None = None,
                   figsize: tuple[float, float] | None = None) -> tuple[Figure, GalleryArtists]:
    """A Fig. 2 panel: patches grid, projections grid and (optionally) one source image.

    Parameters
    ----------
    gallery : Gallery, optional
        Drawn right away; ``None`` draws empty grids (fill them with :func:`update_gallery`).
    rows, cols : int
        Grid shape (3 x 3 in the paper).
    tile : int
        Pixels per tile side in the mosaic.
    gap : int
        Pixels between tiles.
    source : bool
        Add a third panel for the source image of a selected hit.
    percentile : float or None
        Contrast of each projection tile (see :func:`projection_tiles`).
    fig : Figure, optional
        Draw into this figure (cleared first); default a new ``matplotlib.figure.Figure``.
    figsize : (float, float), optional

    Returns
    -------
    (Figure, GalleryArtists)
    """
    n = 3 if source else 2
    if fig is None:
        fig = Figure(figsize=figsize or (3.2 * n, 3.6))
    else:
        fig.clear()
        if figsize is not None:
            fig.set_size_inches(*figsize)
    axes = fig.subplots(1, n, squeeze=True)
    blank = _blank_grid(rows, cols, tile, gap)
    im_p = axes[0].imshow(blank, interpolation="nearest")
    im_q = axes[1].imshow(blank, interpolation="nearest")
    _style(axes[0], "image patches")
    _style(axes[1], "projections")
    highlight = Rectangle((0, 0), tile + 2, tile + 2, fill=False, edgecolor="tab:orange",
                          linewidth=2, visible=False)
    axes[0].add_patch(highlight)
    ax_s = im_s = box = None
    if source:
        ax_s = axes[2]
        im_s = ax_s.imshow(np.full((8, 8, 3), BACKGROUND, np.float32), interpolation="bilinear")
        box = Rectangle((0, 0), 1, 1, fill=False, edgecolor="yellow", linewidth=2, visible=False)
        ax_s.add_patch(box)
        _style(ax_s, "click a patch to see its image")
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.86, wspace=0.05)
    artists = GalleryArtists(fig, axes[0], axes[1], ax_s, im_p, im_q, im_s, box, highlight,
                             rows, cols, tile, gap, percentile)
    if gallery is not None:
        update_gallery(artists, gallery)
    return fig, artists


def update_gallery(artists: GalleryArtists, gallery, title: str | None = None, *,
                   draw: bool = True) -> None:
    """Show ``gallery`` in an existing figure (``set_data``; the source panel is reset).

    Parameters
    ----------
    artists : GalleryArtists
    gallery : Gallery or None
        ``None`` clears the grids.
    title : str, optional
        Figure title; default names the layer and channel.
    draw : bool
        Ask the canvas for a redraw (``draw_idle``).
    """
    a = artists
    if gallery is None:
        blank = _blank_grid(a.rows, a.cols, a.tile, a.gap)
        a.im_patches.set_data(blank)
        a.im_projections.set_data(blank)
        a.fig.suptitle(title or "", fontsize=10)
    else:
        n = a.rows * a.cols
        a.im_patches.set_data(mosaic(gallery.patches[:n], a.rows, a.cols, a.tile, a.gap))
        a.im_projections.set_data(mosaic(projection_tiles(gallery, n, a.percentile), a.rows,
                                         a.cols, a.tile, a.gap))
        if title is None:
            title = f"{gallery.layer}, channel {gallery.channel}: top {min(len(gallery), n)}"
            if len(gallery):
                title += f" (activation {float(gallery.values[0]):.3g} ... " \
                         f"{float(gallery.values[min(len(gallery), n) - 1]):.3g})"
        a.fig.suptitle(title, fontsize=10)
    a.highlight.set_visible(False)
    if a.im_source is not None:
        a.im_source.set_data(np.full((8, 8, 3), BACKGROUND, np.float32))
        a.im_source.set_extent((-0.5, 7.5, 7.5, -0.5))
        a.ax_source.set_xlim(-0.5, 7.5)
        a.ax_source.set_ylim(7.5, -0.5)
        a.box.set_visible(False)
        a.ax_source.set_title("click a patch to see its image", fontsize=9)
    if draw and a.fig.canvas is not None:
        a.fig.canvas.draw_idle()


def show_source(artists: GalleryArtists, gallery, index: int | None) -> None:
    """Show hit ``index``'s whole image (the model's view) with its receptive-field box.

    ``None`` (or an index without a hit) resets the panel.
    """
    a = artists
    if a.im_source is None:
        return
    if gallery is None or index is None or not 0 <= index < min(len(gallery), a.rows * a.cols):
        a.highlight.set_visible(False)
        a.box.set_visible(False)
        a.im_source.set_data(np.full((8, 8, 3), BACKGROUND, np.float32))
        a.ax_source.set_title("click a patch to see its image", fontsize=9)
    else:
        view = gallery.views[index]
        h, w = view.shape[:2]
        a.im_source.set_data(view)
        a.im_source.set_extent((-0.5, w - 0.5, h - 0.5, -0.5))
        a.ax_source.set_xlim(-0.5, w - 0.5)
        a.ax_source.set_ylim(h - 0.5, -0.5)
        top, left, bottom, right = gallery.boxes[index]
        a.box.set_bounds(left - 0.5, top - 0.5, right - left, bottom - top)
        a.box.set_visible(True)
        y, x = gallery.positions[index]
        a.ax_source.set_title(f"#{index + 1} {gallery.names[index]}\nunit ({y}, {x}) = "
                              f"{float(gallery.values[index]):.3g}", fontsize=8)
        r, c = divmod(index, a.cols)
        a.highlight.set_bounds(a.gap + c * (a.tile + a.gap) - 1.5, a.gap + r * (a.tile + a.gap) - 1.5,
                               a.tile + 2, a.tile + 2)
        a.highlight.set_visible(True)
    if a.fig.canvas is not None:
        a.fig.canvas.draw_idle()


def tile_index(artists: GalleryArtists, xdata: float | None, ydata: float | None) -> int | None:
    """Which grid slot data coordinates ``(xdata, ydata)`` of a grid panel fall in (or None)."""
    a = artists
    if xdata is None or ydata is None:
        return None
    col = (xdata + 0.5 - a.gap) / (a.tile + a.gap)
    row = (ydata + 0.5 - a.gap) / (a.tile + a.gap)
    c, r = int(np.floor(col)), int(np.floor(row))
    if not (0 <= r < a.rows and 0 <= c < a.cols):
        return None
    if (col - c) * (a.tile + a.gap) > a.tile or (row - r) * (a.tile + a.gap) > a.tile:
        return None  # in the gap
    return r * a.cols + c


def fig2_figure(galleries: Mapping[str, Sequence] | Sequence[Sequence], *, rows: int = 3,
                cols: int = 3, tile: int = 40, gap: int = 2, percentile: float | None = 99.5,
                fig: Figure | None = None) -> Figure:
    """The paper's Fig. 2 for several layers: per feature map, projections beside patches.

    Parameters
    ----------
    galleries : mapping layer -> list of Gallery, or list of lists of Gallery
        One row per layer, one panel per feature map.
    rows, cols, tile, gap : int
        Grid shape and tile size of each panel.
    percentile : float or None
        Contrast of the projection tiles (see :func:`projection_tiles`).
    fig : Figure, optional
        Draw into this figure (cleared first).

    Returns
    -------
    Figure
    """
    groups = list(galleries.values()) if isinstance(galleries, Mapping) else list(galleries)
    names = list(galleries.keys()) if isinstance(galleries, Mapping) else \
        [g[0].layer if g else "" for g in groups]
    n_rows = len(groups)
    n_cols = max((len(g) for g in groups), default=1)
    if fig is None:
        fig = Figure(figsize=(2.6 * n_cols, 1.45 * n_rows + 0.3))
    else:
        fig.clear()
    axes = np.atleast_2d(fig.subplots(max(n_rows, 1), max(n_cols, 1), squeeze=False))
    for i, group in enumerate(groups):
        for j in range(n_cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if j >= len(group):
                ax.set_visible(False)
                continue
            g = group[j]
            n = rows * cols
            left = mosaic(projection_tiles(g, n, percentile), rows, cols, tile, gap)
            right = mosaic(g.patches[:n], rows, cols, tile, gap)
            sep = np.full((left.shape[0], 2 * gap, 3), BACKGROUND, np.float32)
            ax.imshow(np.concatenate([left, sep, right], 1), interpolation="nearest")
            ax.set_title(f"ch {g.channel}", fontsize=7, pad=2)
            if j == 0:
                ax.set_ylabel(names[i], fontsize=7)
    fig.subplots_adjust(left=0.04, right=0.995, bottom=0.01, top=0.95, wspace=0.04, hspace=0.2)
    return fig
