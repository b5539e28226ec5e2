"""The paper's Fig. 9 / Tables 4-7 in one plot: linear-probe accuracy against layer depth.

Pure matplotlib: :func:`probe_figure` draws one line per
:class:`~zfwidgets.backend.experiments.ProbeResult` (e.g. one per number of training examples per
class), mean accuracy with the spread over splits, and the chance level.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from .base import new_figure

__all__ = ["probe_figure"]


def probe_figure(results, *, names: Sequence[str] | None = None, fig: Figure | None = None
                 ) -> tuple[Figure, object]:
    """Accuracy of a linear classifier on each layer's features.

    Parameters
    ----------
    results : ProbeResult or sequence of them
        Same layers in each.
    names : sequence of str, optional
        Legend entries (default: "N per class").
    fig : Figure, optional
        Drawn into (cleared first); a new ``Figure`` otherwise.

    Returns
    -------
    (Figure, Axes)
    """
    results = [results] if hasattr(results, "layers") else list(results)
    if not results:
        raise ValueError("no probe results to draw")
    layers = results[0].layers
    if any(r.layers != layers for r in results):
        raise ValueError("every probe result of one figure needs the same layers")
    fig = new_figure(fig, (max(5.0, 1.1 * len(layers)), 3.4), layout="constrained")
    ax = fig.add_subplot()
    pos = np.arange(len(layers))
    for k, r in enumerate(results):
        label = names[k] if names is not None and k < len(names) else \
            f"{r.train_per_class} per class"
        ax.errorbar(pos, [100 * r.mean(layer) for layer in layers],
                    yerr=[100 * r.std(layer) for layer in layers], marker="o", ms=4, capsize=3,
                    color=f"C{k}", label=label)
    ax.axhline(100 * float(np.mean([r.chance for r in results])), color="0.5", ls=":", lw=1,
               label="chance")
    ax.set_xticks(pos, layers, rotation=25, ha="right", fontsize=7)
    ax.set_ylabel("test accuracy (%)", fontsize=8)
    ax.set_ylim(0, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("linear probe on each layer's features", fontsize=9)
    return fig, ax
