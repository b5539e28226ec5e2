"""Small training runs drawn: first-layer filters of variants side by side, accuracy per epoch.

Pure matplotlib: :func:`first_layer_figure` takes, per variant, a title, a
:class:`~zfwidgets.backend.experiments.FilterDiagnosis` and the first layer's weights, and draws
one column per variant: the filters as RGB above, below them where their energy lies per band of
radial spatial frequency, with the output grid's Nyquist frequency (``0.5 / stride``) marked and
the bands beyond it in red (the title's aliased share is exact: energy above the Nyquist
frequency on either axis). :func:`training_figure` draws the held-out accuracy (and the
training loss) of :class:`~zfwidgets.backend.experiments.TrainingRun` objects per epoch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from .base import new_figure
from .mosaic import filters_to_rgb, tile_maps

__all__ = ["first_layer_figure", "training_figure"]

ALIASED_COLOR = "#d62728"
HELD_COLOR = "#1f77b4"
NYQUIST_COLOR = "#2ca02c"


def first_layer_figure(variants: Sequence[tuple[str, object, object]], *,
                       fig: Figure | None = None, column: float = 2.3
                       ) -> tuple[Figure, list[list]]:
    """First-layer filters and their spectra, one column per variant.

    Parameters
    ----------
    variants : sequence of (str, FilterDiagnosis, tensor)
        Title, diagnosis and ``[F, 3, k, k]`` weights of each variant's first layer.
    fig : Figure, optional
        Drawn into (cleared first); a new ``Figure`` otherwise.
    column : float
        Inches per column (new figures).

    Returns
    -------
    (Figure, list of list of Axes)
        ``axes[0]``: the filter mosaics; ``axes[1]``: the spectra, in ``variants`` order.
    """
    variants = list(variants)
    if not variants:
        raise ValueError("no variants to draw")
    fig = new_figure(fig, (column * len(variants), column * 1.95), layout="constrained")
    axes = fig.subplots(2, len(variants), squeeze=False,
                        gridspec_kw={"height_ratios": [1.15, 1]})
    top = max(float(d.band_coverage().max()) for _, d, _ in variants)
    for j, (title, diag, weight) in enumerate(variants):
        a, b = axes[0][j], axes[1][j]
        mosaic, _ = tile_maps(filters_to_rgb(weight), normalize=None)
        a.imshow(mosaic, interpolation="nearest")
        a.set_title(title, fontsize=8)
        a.set_axis_off()
        f, cover = diag.frequencies, diag.band_coverage()
        nyq = min(diag.nyquist)
        step = f[1] - f[0] if len(f) > 1 else 0.05
        b.bar(f, cover, width=step * 0.9,
              color=[ALIASED_COLOR if v > nyq else HELD_COLOR for v in f])
        b.axvline(nyq, color=NYQUIST_COLOR, lw=1.2, ls="--")
        b.set_ylim(0, top * 1.15)
        b.set_title(f"stride {diag.stride[0]}: {diag.summary()['aliased energy']:.0%} aliased",
                    fontsize=8)
        b.set_xlabel("cycles / pixel", fontsize=7)
        b.tick_params(labelsize=6)
        if j == 0:
            b.set_ylabel("share of energy", fontsize=7)
        else:
            b.set_yticklabels([])
    handles = [Patch(color=HELD_COLOR), Patch(color=ALIASED_COLOR),
               Line2D([], [], color=NYQUIST_COLOR, lw=1.2, ls="--")]
    fig.legend(handles, ["energy the output grid holds", "beyond its Nyquist frequency",
                         "Nyquist (0.5 / stride)"],
               loc="outside lower center", ncol=3, fontsize=7, frameon=False)
    return fig, [list(r) for r in axes]


def training_figure(runs: Mapping[str, object], *, chance: float | None = None,
                    fig: Figure | None = None, size: tuple[float, float] = (7.0, 2.6)
                    ) -> tuple[Figure, list]:
    """Held-out accuracy and training loss per epoch, one line per run.

    Parameters
    ----------
    runs : mapping of str to TrainingRun
        Name -> run (runs with held-out images; the accuracy before training is epoch 0).
    chance : float, optional
        A dotted line at this accuracy (always answering the most frequent class).
    fig : Figure, optional
        Drawn into (cleared first); a new ``Figure`` otherwise.
    size : (float, float)
        Inches (new figures).

    Returns
    -------
    (Figure, list of Axes)
        The accuracy and the loss panels.
    """
    runs = dict(runs)
    if not runs:
        raise ValueError("no training runs to draw")
    fig = new_figure(fig, size, layout="constrained")
    acc, loss = fig.subplots(1, 2)
    for k, (name, run) in enumerate(runs.items()):
        curve = run.curve()
        acc.plot(np.arange(len(curve)), curve, color=f"C{k}", lw=1.4, label=name)
        loss.plot(np.arange(1, len(run.epochs) + 1), [e.loss for e in run.epochs],
                  color=f"C{k}", lw=1.4, label=name)
    if chance is not None:
        acc.axhline(chance, color="0.4", ls=":", lw=1, label="chance")
    acc.set_ylim(0, 1)
    acc.set_title("held-out accuracy", fontsize=9)
    loss.set_title("training loss", fontsize=9)
    for ax in (acc, loss):
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    acc.legend(fontsize=7, loc="upper left", frameon=False)
    return fig, [acc, loss]
