"""Top-k predictions as horizontal bars: class name and probability per row, most probable on top.

:func:`topk_figure` draws the bars; :func:`update_topk` puts new predictions on the same bars,
optionally with what each class had before (a tick on its bar: the intact model's probability
when maps are knocked out).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from matplotlib.figure import Figure

from ..errors import BadParameterError
from .base import new_figure

__all__ = ["TopKBars", "topk_figure", "update_topk"]


@dataclass
class TopKBars:
    """Artists of a top-k prediction chart: one bar, one class label and one value per row, and
    ticks at the probabilities before (``before``, empty unless given)."""

    fig: Figure
    ax: object
    bars: list
    labels: list
    values: list
    title: object
    before: object = None


def _short(label: str, n: int = 28) -> str:
    return label if len(label) <= n else label[:n - 1] + "\u2026"


def topk_figure(predictions: Sequence[tuple[str, float]], *, title: str = "top-5 predictions",
                k: int | None = None, fig: Figure | None = None,
                size: tuple[float, float] = (3.6, 1.9), dpi: float = 100,
                before: Sequence[float] | None = None) -> tuple[Figure, TopKBars]:
    """Horizontal bars of the top-k ``(label, probability)`` pairs, most probable on top.

    Parameters
    ----------
    predictions : sequence of (label, probability)
    title : str
    k : int, optional
        Number of rows (default: one per prediction), so later updates can show more.
    fig : Figure, optional
        Draw into this figure (cleared first).
    size, dpi
        Size of a new figure.
    before : sequence of float, optional
        Each class's probability before (see :func:`update_topk`).
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
    (ticks,) = ax.plot([], [], linestyle="none", marker="|", markersize=13, markeredgewidth=2.0,
                       color="#1f3b57")
    handle = TopKBars(fig, ax, bars, labels, values, text, ticks)
    update_topk(handle, predictions, before=before, draw=False)
    return fig, handle


def update_topk(handle: TopKBars, predictions: Sequence[tuple[str, float]], *,
                title: str | None = None, draw: bool = True,
                before: Sequence[float] | None = None) -> TopKBars:
    """New predictions on the same bars (extra rows are left empty).

    ``before``: for each row, the class's probability before (the intact model's when maps are
    knocked out), drawn as a tick on the bar and written ``"62 → 31.2%"``; ``None``: no ticks.
    """
    if before is not None and len(before) < len(predictions):
        raise BadParameterError(f"before has {len(before)} values for {len(predictions)} "
                                "predictions")
    rows = range(min(len(predictions), len(handle.bars)))
    if handle.before is not None:
        handle.before.set_data(([float(before[i]) for i in rows], list(rows)) if before is not None
                               else ([], []))
    for i, bar in enumerate(handle.bars):
        if i < len(predictions):
            label, p = predictions[i]
            bar.set_width(float(p))
            handle.labels[i].set_text(_short(str(label)))
            was = "" if before is None else f"{100 * float(before[i]):.0f} \u2192 "
            handle.values[i].set_text(f"{was}{100 * float(p):.1f}%")
        else:
            bar.set_width(0.0)
            handle.labels[i].set_text("")
            handle.values[i].set_text("")
    if title is not None:
        handle.title.set_text(title)
    if draw:
        handle.fig.canvas.draw_idle()
    return handle
