"""The paper's Fig. 4: chosen feature maps' strongest hits, projected, at each training snapshot.

Pure matplotlib: :func:`evolution_figure` draws an
:class:`~zfwidgets.backend.experiments.EvolutionResult` as a grid, one row per (layer, map) and
one column per snapshot; each cell is the projection of the map's strongest activation over the
data (and, with ``show="both"``, the image patch that caused it beside it).
"""

from __future__ import annotations

from matplotlib.figure import Figure

from .base import new_figure
from .deconv import projection_image

__all__ = ["evolution_figure"]


def evolution_figure(result, *, show: str = "projections", fig: Figure | None = None,
                     cell: float = 0.9) -> tuple[Figure, list]:
    """Draw Fig. 4 from an evolution result.

    Parameters
    ----------
    result : EvolutionResult
    show : {"projections", "patches", "both"}
        What each cell shows for the strongest hit.
    fig : Figure, optional
        Drawn into (cleared first); a new ``Figure`` otherwise.
    cell : float
        Inches per picture (new figures).

    Returns
    -------
    (Figure, list of list of Axes)
        ``axes[row][column]``.
    """
    if show not in ("projections", "patches", "both"):
        raise ValueError(f"show must be 'projections', 'patches' or 'both', not {show!r}")
    rows = [(layer, c) for layer in result.layers for c in result.channels[layer]]
    per = 2 if show == "both" else 1
    cols = len(result.snapshots) * per
    if not rows:
        raise ValueError("the result follows no feature maps")
    fig = new_figure(fig, (cell * cols + 1.2, cell * len(rows) + 0.6), layout="constrained")
    axes = fig.subplots(len(rows), cols, squeeze=False)
    for i, (layer, c) in enumerate(rows):
        for j, snap in enumerate(result.snapshots):
            g = result.gallery(snap, layer, c)
            pictures = []
            if show in ("patches", "both"):
                pictures.append(g.patches[0])
            if show in ("projections", "both"):
                pictures.append(projection_image(g.projections[0]))
            for p, picture in enumerate(pictures):
                ax = axes[i][j * per + p]
                ax.imshow(picture, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0 and p == 0:
                    ax.set_title(snap, fontsize=8)
            if j == 0:
                axes[i][0].set_ylabel(f"{layer}\nmap {c}", fontsize=7, rotation=0,
                                      ha="right", va="center")
    return fig, [list(r) for r in axes]
