"""The paper's Fig. 8 and Table 1: the occluded parts on each image, and the consistency scores.

Pure matplotlib: :func:`correspondence_figure` draws the images with each part's square (one
colour per part; the first random trial dashed) and, per layer, the score of every part beside
the random baseline with its spread. Lower bars mean a more consistent encoding of the part.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from .base import new_figure
from matplotlib.patches import Rectangle

__all__ = ["correspondence_figure"]

RANDOM_COLOR = "#7f7f7f"


def correspondence_figure(images, result, *, names=None, fig: Figure | None = None
                          ) -> tuple[Figure, list]:
    """Draw the images with the occluded squares, and the scores per layer.

    Parameters
    ----------
    images : array ``[N, H, W, 3]`` in [0, 1]
        The model's view of each image (e.g. ``preprocessing.denormalize(x)`` as HWC).
    result : CorrespondenceResult
    names : sequence of str, optional
        Image titles.
    fig : Figure, optional
        Drawn into (cleared first); a new ``Figure`` otherwise.

    Returns
    -------
    (Figure, list of Axes)
        The image axes, then one score axes per layer.
    """
    images = np.asarray(images)
    n = len(images)
    n_layers = len(result.layers)
    fig = new_figure(fig, (max(2.0 * n, 3.2 * n_layers), 4.8), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1, 1.1])
    img_axes = list(top.subplots(1, n, squeeze=False)[0])
    parts = [p for p in result.parts if p != "random"]
    colors = {p: f"C{k}" for k, p in enumerate(parts)}
    for i, ax in enumerate(img_axes):
        ax.imshow(images[i], interpolation="nearest")
        for p in result.parts:
            t, l, b, r = result.boxes[p][i]
            ax.add_patch(Rectangle((l - 0.5, t - 0.5), r - l, b - t, fill=False, lw=1.3,
                                   ls="--" if p == "random" else "-",
                                   edgecolor=RANDOM_COLOR if p == "random" else colors[p]))
        ax.set_axis_off()
        if names is not None and i < len(names):
            ax.set_title(names[i], fontsize=8)
    score_axes = list(bottom.subplots(1, n_layers, squeeze=False)[0])
    for ax, layer in zip(score_axes, result.layers):
        values = [result.score[(p, layer)] for p in result.parts]
        errors = [result.spread[(p, layer)] for p in result.parts]
        ax.bar(np.arange(len(result.parts)), values, yerr=errors, capsize=3,
               color=[RANDOM_COLOR if p == "random" else colors[p] for p in result.parts])
        ax.set_xticks(np.arange(len(result.parts)), result.parts, fontsize=7, rotation=20)
        ax.set_title(f"consistency at {layer} (lower = more consistent)", fontsize=8)
        ax.tick_params(labelsize=7)
    return fig, img_axes + score_axes
