"""What every figure of the explorer starts from: the figure factory and the shared colours.

Figures are created with :class:`matplotlib.figure.Figure` (never through pyplot) and an Agg
canvas, so they draw headless; or drawn into a figure the caller passes (an ipympl canvas, say).
"""

from __future__ import annotations

from matplotlib.figure import Figure

__all__ = ["HIGHLIGHT_COLOR", "KNOCKED_COLOR", "MARKER_COLOR", "SEPARATOR_COLOR", "new_figure"]

#: Colour of the separators between tiles and of empty cells.
SEPARATOR_COLOR = (0.16, 0.20, 0.32)
#: Colour of the selection outline and of receptive-field boxes.
HIGHLIGHT_COLOR = "#ff7f0e"
#: Colour of the strongest-position marker.
MARKER_COLOR = "#ff2d2d"
#: Colour of the cross over a knocked-out feature map.
KNOCKED_COLOR = "#e6194b"


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
