"""Pictures made by gradient ascent, side by side, with how their objective rose.

Pure matplotlib: :func:`ascent_figure` takes :class:`~zfwidgets.backend.experiments.AscentResult`
objects and returns a figure (no pyplot) and its image artists; :func:`update_ascent_image`
replaces one picture in place (an interactive run).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from .base import new_figure

__all__ = ["ascent_figure", "ascent_title", "stretch", "update_ascent_image"]


def stretch(image: np.ndarray) -> np.ndarray:
    """Contrast stretch for display: the deviation from the mean colour scaled so that the
    largest one reaches the end of the range (colours keep their direction; 0.5 is the mean).

    Ascent changes the pixels by small amounts; shown as they are, most pictures look gray.
    """
    d = image - image.reshape(-1, image.shape[-1]).mean(0)
    scale = float(np.abs(d).max())
    if scale < 1e-12:
        return np.full_like(image, 0.5)
    return np.clip(0.5 + 0.5 * d / scale, 0, 1)


def ascent_title(result) -> str:
    """Two short lines: what was maximized, and P(class) at the end for class objectives."""
    if result.layer is not None:
        head = f"{result.layer}\nchannel {result.channel}"
    else:
        name = result.objective.split("(", 1)[-1].rstrip(")") if "(" in result.objective \
            else result.objective
        head = f"{name}\nP = {result.prob:.2f}"
    blur = result.settings.get("blur_every", 0)
    return head + ("" if blur else " (no blur)")


def ascent_figure(results: Sequence, *, titles: Sequence[str] | None = None,
                  history: bool = True, contrast: bool = True, fig: Figure | None = None,
                  size: float = 2.2) -> tuple[Figure, list]:
    """One picture per result, and (``history=True``) the objective of each over the steps.

    Parameters
    ----------
    results : sequence of AscentResult
    titles : sequence of str, optional
        Default :func:`ascent_title`.
    history : bool
        Add a panel with each run's objective against the step (each divided by its final
        value, so runs of different scales share the axes), with a legend naming each line by
        its title's first line when there are several.
    fig : Figure, optional
        Drawn into (cleared first); a new ``Figure`` otherwise.
    size : float
        Inches per picture (new figures).

    Returns
    -------
    (Figure, list of AxesImage)
    """
    results = list(results)
    if not results:
        raise ValueError("no ascent results to draw")
    n = len(results) + (1 if history else 0)
    fig = new_figure(fig, (size * n, size * 1.25), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    images = []
    for k, (ax, res) in enumerate(zip(axes, results)):
        images.append(ax.imshow(stretch(res.image) if contrast else res.image,
                                interpolation="nearest"))
        ax.set_title(titles[k] if titles is not None else ascent_title(res), fontsize=8)
        ax.set_axis_off()
    if history:
        ax = axes[-1]
        for k, res in enumerate(results):
            h = res.history
            scale = abs(h[-1]) if abs(h[-1]) > 1e-12 else 1.0
            name = (titles[k] if titles is not None else ascent_title(res)).split("\n")[0]
            ax.plot(h / scale, lw=1.2, color=f"C{k}", label=name)
        if len(results) > 1:
            ax.legend(fontsize=6, frameon=False, loc="lower right")
        ax.set_xlabel("step", fontsize=8)
        ax.set_title("objective / final value", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.set_box_aspect(1)
    return fig, images


def update_ascent_image(image_artist, result, contrast: bool = True) -> None:
    """Show ``result``'s picture in an existing image artist (contrast-stretched by default)."""
    image_artist.set_data(stretch(result.image) if contrast else result.image)
    image_artist.axes.set_title(ascent_title(result), fontsize=8)
    if image_artist.figure.canvas is not None:
        image_artist.figure.canvas.draw_idle()
