"""The paper's Fig. 5: feature distances and class probability against a transformation amount.

Pure matplotlib. :func:`invariance_figure` draws one row per transformation sweep
(:class:`~zfwidgets.backend.experiments.InvarianceResult`): a strip of transformed examples, the
feature distance of each layer from the untransformed image, and P(target class). With several
images (one result per image for the same transformation) the curves share the axes, one colour
per image, as in the paper. :func:`update_amount` moves the marker of the amount shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure

from .base import new_figure

__all__ = ["InvariancePanels", "invariance_figure", "update_amount", "example_strip"]

_UNITS = {"translation": "vertical shift (pixels)", "scale": "zoom factor",
          "rotation": "rotation (degrees)"}
_IDENTITY = {"translation": 0.0, "scale": 1.0, "rotation": 0.0}


@dataclass
class InvariancePanels:
    """Artists of an invariance figure.

    Attributes
    ----------
    fig : Figure
    rows : list of list of Axes
        Per transformation: [examples, one axes per layer ..., probability].
    curves : list of list of Line2D
        Per transformation, every curve drawn (layers then probability, per image).
    markers : list of list of Line2D
        Per transformation, the vertical marker lines at the amount shown (one per curve axes).
    """

    fig: Figure
    rows: list
    curves: list
    markers: list


def example_strip(images: np.ndarray, count: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """``count`` evenly spaced images of ``images`` ``[T, H, W, 3]`` side by side with a white
    gap; returns the strip and the indices used."""
    T = images.shape[0]
    index = np.unique(np.linspace(0, T - 1, min(count, T)).round().astype(int))
    H, W = images.shape[1:3]
    gap = max(2, W // 20)
    strip = np.ones((H, len(index) * (W + gap) - gap, 3), dtype=np.float32)
    for k, i in enumerate(index):
        strip[:, k * (W + gap):k * (W + gap) + W] = images[i]
    return strip, index


def invariance_figure(results, *, relative: bool = True, fig: Figure | None = None,
                      names: Sequence[str] | None = None, width: float = 12.0
                      ) -> tuple[Figure, InvariancePanels]:
    """Draw Fig. 5 for one or more sweeps.

    Parameters
    ----------
    results : InvarianceResult, or sequence of them, or sequence of sequences of them
        One row per transformation; a row may hold several results (one per image, same
        transformation and layers), drawn as curves of one colour each.
    relative : bool
        Plot distances divided by the untransformed feature vector's norm (comparable across
        layers) instead of raw Euclidean distances.
    fig : Figure, optional
        Drawn into (cleared first); a new ``Figure`` otherwise (no pyplot).
    names : sequence of str, optional
        Legend names of the images of a row.
    width : float
        Figure width in inches (new figures).

    Returns
    -------
    (Figure, InvariancePanels)
    """
    rows = _rows(results)
    n_layers = len(rows[0][0].layers)
    n_cols = 2 + n_layers
    fig = new_figure(fig, (width, 2.5 * len(rows)), layout="constrained")
    grid = fig.add_gridspec(len(rows), n_cols, width_ratios=[1.6] + [1] * (n_cols - 1))
    all_axes, all_curves, all_markers = [], [], []
    for r, row in enumerate(rows):
        first = row[0]
        axes = [fig.add_subplot(grid[r, c]) for c in range(n_cols)]
        curves, markers = [], []
        start = _IDENTITY.get(first.kind, float(first.amounts[0]))  # the dashed marker
        if first.images is not None:
            strip, index = example_strip(first.images)
            axes[0].imshow(strip, interpolation="nearest")
            axes[0].set_title(f"{first.kind}: " + ", ".join(
                f"{first.amounts[i]:g}" for i in index), fontsize=9)
        axes[0].set_axis_off()
        for c, layer in enumerate(first.layers):
            ax = axes[1 + c]
            for k, res in enumerate(row):
                y = res.relative(layer) if relative else res.distance[layer]
                label = names[k] if names is not None and k < len(names) else None
                curves += ax.plot(res.amounts, y, "o-", ms=3, lw=1.2, color=f"C{k}", label=label)
            ax.set_title(("relative " if relative else "") + f"distance at {layer}", fontsize=9)
            markers.append(ax.axvline(start, color="0.6", lw=0.8, ls="--"))
        ax = axes[-1]
        for k, res in enumerate(row):
            curves += ax.plot(res.amounts, res.prob, "o-", ms=3, lw=1.2, color=f"C{k}")
        ax.set_ylim(-0.02, 1.02)
        target = first.target_label if len(row) == 1 else "true class"
        ax.set_title(f"P({target})", fontsize=9)
        markers.append(ax.axvline(start, color="0.6", lw=0.8, ls="--"))
        for ax in axes[1:]:
            ax.set_xlabel(_UNITS.get(first.kind, first.kind), fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        if names is not None and len(row) > 1:
            axes[1].legend(fontsize=7)
        all_axes.append(axes)
        all_curves.append(curves)
        all_markers.append(markers)
    return fig, InvariancePanels(fig, all_axes, all_curves, all_markers)


def update_amount(panels: InvariancePanels, row: int, amount: float) -> None:
    """Move the dashed marker of row ``row`` to ``amount`` (an interactive slider's value)."""
    for line in panels.markers[row]:
        line.set_xdata([amount, amount])
    panels.fig.canvas.draw_idle()


def _rows(results) -> list[list]:
    if hasattr(results, "kind"):
        return [[results]]
    rows = []
    for item in results:
        rows.append([item] if hasattr(item, "kind") else list(item))
    if not rows or not all(rows):
        raise ValueError("no invariance results to draw")
    layers = rows[0][0].layers
    for row in rows:
        if any(res.layers != layers for res in row) or len({res.kind for res in row}) != 1:
            raise ValueError("every result of a figure needs the same layers, and every result "
                             "of a row the same transformation")
    return rows
