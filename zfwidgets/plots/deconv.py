"""The deconvnet panel: image with the receptive-field box | projection | receptive-field crop.

:func:`projection_image` turns a projection into displayable RGB (contrast set by a high
percentile); :func:`deconv_panel_figure` draws the three panels and :func:`update_deconv_panel`
changes them in place (``set_data`` on the images, ``set_xy`` on the boxes);
:func:`deconv_titles` words the panel titles for a layer, a rule and a scope.
:func:`rf_crop_figure` shows a projection at the scale of its receptive field beside the image
patch, with its colour scale stated (:func:`update_rf_crop_figure` changes it in place).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .base import HIGHLIGHT_COLOR, new_figure

__all__ = ["DeconvPanel", "RFCropPanel", "deconv_panel_figure", "deconv_titles",
           "projection_image", "rf_crop_figure", "update_deconv_panel", "update_rf_crop_figure"]


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
                        projection_box: bool = True, draw: bool = True) -> DeconvPanel:
    """Change a deconv panel in place (``set_data`` on the three images, ``set_xy`` on boxes).

    ``box`` is always applied (``None`` hides the boxes and shows the whole image as the crop).
    ``projection_box=False`` hides the box on the projection: a projection already cut to the
    receptive field fills its panel.
    """
    if image is not None:
        handle.source = np.asarray(image)
        _show(handle.image, handle.axes[0], np.clip(handle.source, 0, 1))
    if projection is not None:
        _show(handle.projection, handle.axes[1], np.clip(projection, 0, 1))
    for k, patch in enumerate(handle.boxes):
        _set_box(patch, box if projection_box or k == 0 else None)
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


def deconv_titles(info, rule: str, scope: str, cropped: bool = False) -> tuple[str, str, str]:
    """Panel titles of a deconv panel for a layer (LayerInfo), a rule and a scope;
    ``cropped``: the projection is shown cut to the receptive field."""
    rf = info.rf_size
    rf_text = "?" if rf is None else (str(rf[0]) if rf[0] == rf[1] else f"{rf[0]}x{rf[1]}")
    what = "whole map" if scope == "map" else "strongest unit"
    if cropped:
        return (f"image, receptive field {rf_text}px", f"{rule}: {what}, its receptive field",
                "image patch")
    return (f"image, receptive field {rf_text}px", f"{rule}: {what}", "receptive-field crop")


# ============================================================================ receptive-field scale

@dataclass
class RFCropPanel:
    """Artists of :func:`rf_crop_figure`: image patch | projection crop | colour scale.

    Attributes
    ----------
    fig : Figure
    axes : list of Axes
        ``[patch, projection, scale bar]``.
    patch, projection, bar : AxesImage
    titles : list of Text
        The two panel titles.
    caption : Text
        The stated normalisation (or why the projection is blank).
    """

    fig: Figure
    axes: list
    patch: object
    projection: object
    bar: object
    titles: list
    caption: object


_BAR = np.repeat(np.linspace(1.0, 0.0, 129)[:, None, None], 3, axis=2)  # +scale on top


def _rf_texts(crop) -> tuple[str, str, str, list[str]]:
    t, left, b, r = crop.box
    caption = crop.note or crop.normalisation
    rf = getattr(crop, "rf_size", None)
    if rf is not None and tuple(rf) != (b - t, r - left):
        caption += f"; receptive field {rf[0]}x{rf[1]} px, clipped at the image border"
    where = "whole map" if crop.position is None else f"unit {tuple(crop.position)}"
    s = float(crop.scale)
    ticks = [f"+{s:.3g}", "0", f"-{s:.3g}"] if s > 0 else ["", "0", ""]
    return f"image patch {b - t}x{r - left} px", f"{crop.rule}: {where}", caption, ticks


def rf_crop_figure(crop, *, fig: Figure | None = None, size: tuple[float, float] = (5.4, 2.9),
                   dpi: float = 100) -> tuple[Figure, RFCropPanel]:
    """A projection at the scale of its receptive field beside the image patch, with its
    colour scale.

    The paper's Fig. 2 shows projections cropped to the unit's receptive field next to the
    patch that drives it; at low layers the whole-image projection is a dot on a gray square.

    Parameters
    ----------
    crop : ProjectionCrop
        From :func:`zfwidgets.backend.project.projection_crop` (``patch``, ``rgb``, ``box``,
        ``scale``, ``normalisation``, ``note``, ``rule``, ``position``).
    fig : Figure, optional
        Draw into this figure (cleared first).
    size : (float, float)
        Figure size in inches.
    dpi : float

    Returns
    -------
    (Figure, RFCropPanel)
        Change it with :func:`update_rf_crop_figure`.
    """
    fig = new_figure(fig, size, dpi)
    grid = fig.add_gridspec(1, 3, width_ratios=(1, 1, 0.06), left=0.02, right=0.88,
                            bottom=0.2, top=0.86, wspace=0.08)
    axes = [fig.add_subplot(grid[0, j]) for j in range(3)]
    titles_text = _rf_texts(crop)
    images = []
    for ax, data in zip(axes[:2], (crop.patch, crop.rgb)):
        ax.set_xticks([])
        ax.set_yticks([])
        images.append(ax.imshow(np.clip(data, 0, 1), interpolation="nearest"))
    bar = axes[2].imshow(_BAR, aspect="auto", interpolation="nearest")
    axes[2].set_xticks([])
    axes[2].yaxis.tick_right()
    axes[2].set_yticks([0, 64, 128])
    axes[2].set_yticklabels(titles_text[3], fontsize=7)
    titles = [ax.set_title(t, fontsize=8.5) for ax, t in zip(axes[:2], titles_text[:2])]
    caption = fig.text(0.02, 0.03, titles_text[2], fontsize=7.5, va="bottom", wrap=True,
                       color="#b22222" if crop.note else "0.2")
    return fig, RFCropPanel(fig, axes, images[0], images[1], bar, titles, caption)


def update_rf_crop_figure(handle: RFCropPanel, crop, *, draw: bool = True) -> RFCropPanel:
    """Show another :class:`~zfwidgets.backend.project.ProjectionCrop` in a
    :func:`rf_crop_figure` (``set_data`` on the images, new titles, ticks and caption)."""
    patch_title, proj_title, caption, ticks = _rf_texts(crop)
    _show(handle.patch, handle.axes[0], np.clip(crop.patch, 0, 1))
    _show(handle.projection, handle.axes[1], np.clip(crop.rgb, 0, 1))
    handle.axes[2].set_yticklabels(ticks, fontsize=7)
    handle.titles[0].set_text(patch_title)
    handle.titles[1].set_text(proj_title)
    handle.caption.set_text(caption)
    handle.caption.set_color("#b22222" if crop.note else "0.2")
    if draw:
        handle.fig.canvas.draw_idle()
    return handle
