"""The paper's Fig. 6 as measurements: a layer's filters, their frequency content, and how much
of it the stride aliases.

Pure matplotlib: :func:`diagnosis_figure` draws a
:class:`~zfwidgets.backend.experiments.FilterDiagnosis` (and, for a layer reading RGB, its
filters) into four panels: (a) the filters, (b) each filter's energy per frequency band, sorted
by dominant frequency, (c) the layer's mean energy per band with the output grid's Nyquist
frequency, (d) the aliased fraction of each filter, dead filters in red.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from .base import new_figure
from .mosaic import filters_to_rgb, tile_maps

__all__ = ["diagnosis_figure"]

DEAD_COLOR = "#d62728"
LIVE_COLOR = "#1f77b4"


def diagnosis_figure(diag, weight=None, *, fig: Figure | None = None, title: str | None = None
                     ) -> tuple[Figure, list]:
    """Draw a filter diagnosis.

    Parameters
    ----------
    diag : FilterDiagnosis
    weight : tensor ``[F, 3, kh, kw]``, optional
        The layer's weights, to show the filters as RGB in panel (a) (layers reading RGB);
        without it panel (a) shows each filter's RMS.
    fig : Figure, optional
        Drawn into (cleared first); a new ``Figure`` otherwise.
    title : str, optional
        Figure title (default: layer, kernel and stride).

    Returns
    -------
    (Figure, list of Axes)
        The axes of panels (a)-(d).
    """
    fig = new_figure(fig, (12, 3.2), layout="constrained")
    axes = list(fig.subplots(1, 4, gridspec_kw={"width_ratios": [1.1, 1.3, 1, 1.2]}))
    a, b, c, d = axes
    if weight is not None and getattr(weight, "shape", (0, 0))[1] == 3:
        mosaic, _ = tile_maps(filters_to_rgb(weight), normalize=None)
        a.imshow(mosaic, interpolation="nearest")
        a.set_title(f"(a) {len(diag.rms)} filters {diag.kernel[0]}x{diag.kernel[1]}",
                    fontsize=9)
        a.set_axis_off()
    else:
        a.bar(np.arange(len(diag.rms)), diag.rms,
              color=[DEAD_COLOR if x else LIVE_COLOR for x in diag.dead])
        a.set_title("(a) RMS per filter", fontsize=9)
        a.set_xlabel("filter", fontsize=8)
    order = np.argsort(diag.dominant, kind="stable")
    step = diag.frequencies[1] - diag.frequencies[0]
    extent = (diag.frequencies[0] - step / 2, diag.frequencies[-1] + step / 2,
              len(order) - 0.5, -0.5)
    b.imshow(diag.spectrum[order], aspect="auto", cmap="magma", extent=extent,
             interpolation="nearest")
    b.set_title("(b) energy per band", fontsize=9)
    b.set_xlabel("cycles / pixel", fontsize=8)
    b.set_ylabel("filter (by dominant frequency)", fontsize=8)
    nyq = min(diag.nyquist)
    cover = diag.band_coverage()
    c.bar(diag.frequencies, cover, width=step * 0.9, color=LIVE_COLOR)
    for ax in (b, c):
        ax.axvline(nyq, color="#2ca02c", lw=1.2, ls="--",
                   label=f"Nyquist of stride {diag.stride[0]}")
    c.legend(fontsize=7, loc="upper right", frameon=False)
    c.set_title("(c) the layer's energy per band", fontsize=9)
    c.set_xlabel("cycles / pixel", fontsize=8)
    live = (~diag.dead).sum()
    d_order = np.argsort(diag.aliased)
    d.bar(np.arange(len(d_order)), diag.aliased[d_order],
          color=[DEAD_COLOR if diag.dead[i] else LIVE_COLOR for i in d_order])
    d.set_ylim(0, 1)
    mean = float(diag.aliased[~diag.dead].mean()) if live else 0.0
    d.set_title(f"(d) aliased: mean {mean:.0%}, {int(diag.dead.sum())} dead", fontsize=9)
    d.set_xlabel("filter (sorted)", fontsize=8)
    for ax in (b, c, d):
        ax.tick_params(labelsize=7)
    fig.suptitle(title or f"{diag.layer}: {diag.kernel[0]}x{diag.kernel[1]} filters, stride "
                 f"{diag.stride[0]}", fontsize=10)
    return fig, axes
