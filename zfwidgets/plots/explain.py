"""Class explanations drawn: every class map beside occlusion, deletion curves, the sanity check.

Pure matplotlib, from the results of :mod:`zfwidgets.backend.explain`:

* :func:`explanation_figure`: the image, each method's class map and the occlusion map (the drop
  in the class probability when each square is hidden), each titled with its Spearman agreement
  with occlusion;
* :func:`deletion_figure`: the class probability as each ranking's top pixels are greyed;
* :func:`sanity_figure`: the randomization sanity check (Adebayo et al. 2018), each method's
  similarity to its trained map as the layers are randomized from the top, and the maps at a few
  steps of the cascade;
* :func:`explain_panels` / :func:`update_explain_panels`: the explorer's Explain tab, two rows of
  panels (the image and every map, each titled with its agreement, and a bar per method) whose
  artists are updated in place as the maps arrive.

Each map is drawn on its own colour scale, from 0 to its 99.5th percentile (the titles say so
once); a map that is all zero is drawn black and its title says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from matplotlib.figure import Figure

from .base import new_figure

__all__ = ["ExplainPanels", "METHOD_NAMES", "deletion_figure", "explain_panels",
           "explanation_figure", "sanity_figure", "update_explain_panels"]

#: How each method is named on a figure.
METHOD_NAMES = {"saliency": "saliency", "guided": "guided backprop", "deconvnet": "deconvnet",
                "gradcam": "Grad-CAM", "guided_gradcam": "guided Grad-CAM",
                "occlusion": "occlusion", "random": "random order"}
MAP_CMAP = "magma"


def _scaled(m: np.ndarray) -> np.ndarray:
    """``m`` divided by its 99.5th percentile and clipped to [0, 1] (all zero stays zero)."""
    m = np.asarray(m, np.float64)
    top = float(np.percentile(m, 99.5)) if m.size else 0.0
    if top <= 0:
        top = float(m.max()) if m.size and m.max() > 0 else 1.0
    return np.clip(m / top, 0, 1)


def _map_title(name: str, rho: float | None, blank: bool) -> str:
    head = METHOD_NAMES.get(name, name)
    if blank:
        return f"{head}\n(all zero)"
    if rho is None:
        return head
    return f"{head}\nρ = {rho:.2f}" if np.isfinite(rho) else f"{head}\nρ undefined"


def explanation_figure(image: np.ndarray, explanation, *, fig: Figure | None = None,
                       size: float = 1.75, title: str | None = None) -> tuple[Figure, list]:
    """The image, every class map of an explanation, and the occlusion map, in one row.

    Parameters
    ----------
    image : numpy.ndarray
        ``[H, W, 3]`` the model's view of the image (``session.display_image``).
    explanation : Explanation
        From :func:`zfwidgets.explain`.
    fig : Figure, optional
        Drawn into (cleared first); a new ``Figure`` otherwise.
    size : float
        Inches per panel (new figures).
    title : str, optional
        Figure title (default: the class and the colour scale).

    Returns
    -------
    (Figure, list of Axes)
        The image's axes, then one per method in ``explanation.methods`` order, then occlusion's.
    """
    e = explanation
    names = e.methods
    n = len(names) + 2
    fig = new_figure(fig, (size * n, size * 1.25 + 0.35), layout="constrained")
    axes = list(fig.subplots(1, n, squeeze=False)[0])
    axes[0].imshow(image)
    axes[0].set_title(f"image\nP = {e.occlusion.base_prob:.2f}", fontsize=8)
    for ax, name in zip(axes[1:], names):
        m = e.maps[name].map
        ax.imshow(_scaled(m), cmap=MAP_CMAP, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(_map_title(name, e.agreement.get(name), not np.any(m > 0)), fontsize=8)
    occ = axes[-1]
    occ.imshow(image, alpha=0.35)
    drop = np.clip(e.drop, 0, None)
    occ.imshow(_scaled(drop), cmap=MAP_CMAP, vmin=0, vmax=1, extent=e.occlusion.extent(),
               interpolation="nearest")
    occ.set_xlim(-0.5, image.shape[1] - 0.5)
    occ.set_ylim(image.shape[0] - 0.5, -0.5)
    occ.set_title(f"occlusion\n(P drop, {e.occlusion.size} px)", fontsize=8)
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle(title or f"class '{e.label}': each map on its own scale (0 to its 99.5th "
                 "percentile); ρ = Spearman agreement with occlusion", fontsize=9)
    return fig, axes


def deletion_figure(explanation, *, fig: Figure | None = None,
                    size: tuple[float, float] = (5.2, 3.2)) -> tuple[Figure, object]:
    """Deletion curves: the class probability as each ranking's top pixels are greyed.

    Parameters
    ----------
    explanation : Explanation
    fig : Figure, optional
        Drawn into (cleared first); a new ``Figure`` otherwise.
    size : (float, float)
        Inches (new figures).

    Returns
    -------
    (Figure, Axes)
    """
    e = explanation
    fig = new_figure(fig, size, layout="constrained")
    ax = fig.add_subplot()
    area = e.deletion_area()
    for k, name in enumerate(e.methods):
        ax.plot(e.fractions, e.deletion[name], color=f"C{k}", lw=1.3,
                label=f"{METHOD_NAMES.get(name, name)} ({area[name]:.3f})")
    ax.plot(e.fractions, e.deletion["occlusion"], color="black", lw=1.8,
            label=f"occlusion ({area['occlusion']:.3f})")
    ax.plot(e.fractions, e.deletion["random"], color="0.55", lw=1.3, ls="--",
            label=f"random order ({area['random']:.3f})")
    ax.set_xlabel("fraction of the image greyed, top-ranked squares first", fontsize=8)
    ax.set_ylabel(f"P({e.label})", fontsize=8)
    ax.set_title("deletion curves (area in brackets: lower = found it sooner)", fontsize=9)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6.5, frameon=False)
    return fig, ax


def sanity_figure(results: Sequence, *, steps: Sequence[int] | None = None,
                  fig: Figure | None = None, size: float = 1.5) -> tuple[Figure, list]:
    """The randomization sanity check of one or more methods.

    Parameters
    ----------
    results : sequence of SanityResult
        From :func:`zfwidgets.sanity_check`, one per method, the same cascade.
    steps : sequence of int, optional
        How many layers randomized for the maps shown (default 1, a quarter, half and all of
        the cascade); 0 is the trained model.
    fig : Figure, optional
        Drawn into (cleared first); a new ``Figure`` otherwise.
    size : float
        Inches per map (new figures).

    Returns
    -------
    (Figure, list)
        The curve's Axes, then one list of map Axes per result.
    """
    results = list(results)
    if not results:
        raise ValueError("no sanity-check results to draw")
    n = len(results[0].layers)
    steps = list(steps) if steps is not None else \
        sorted(dict.fromkeys([0, 1, max(1, n // 4), max(1, n // 2), n]))
    cols = len(steps)
    fig = new_figure(fig, (size * cols + 3.6, size * len(results) + 0.7), layout="constrained")
    grid = fig.add_gridspec(len(results), cols + 2)
    curve = fig.add_subplot(grid[:, :2])
    rows = []
    for k, res in enumerate(results):
        x = np.arange(0, len(res.layers) + 1)
        curve.plot(x, np.r_[1.0, res.spearman_abs], color=f"C{k}", lw=1.4,
                   label=METHOD_NAMES.get(res.method, res.method))
        row = []
        for j, s in enumerate(steps):
            ax = fig.add_subplot(grid[k, j + 2])
            m = res.original.map if s == 0 else res.maps[s - 1].map
            ax.imshow(_scaled(m), cmap=MAP_CMAP, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if k == 0:
                ax.set_title("trained" if s == 0 else f"top {s} random", fontsize=7)
            if j == 0:
                ax.set_ylabel(METHOD_NAMES.get(res.method, res.method), fontsize=7)
            row.append(ax)
        rows.append(row)
    curve.axhline(0, color="0.6", lw=0.8)
    curve.set_ylim(-1.05, 1.05)
    curve.set_xlabel("learned layers randomized, from the top", fontsize=8)
    curve.set_ylabel("rank correlation with the trained map", fontsize=8)
    curve.set_title("randomization sanity check", fontsize=9)
    curve.tick_params(labelsize=7)
    curve.grid(alpha=0.3)
    curve.legend(fontsize=7, frameon=False)
    return fig, [curve, *rows]


# --------------------------------------------------------------------------- the Explain tab

@dataclass
class ExplainPanels:
    """The artists of :func:`explain_panels`, for :func:`update_explain_panels`.

    Attributes
    ----------
    fig : Figure
    methods : list of str
        The class-map methods, in panel order.
    image : AxesImage
        The image panel's picture.
    maps : dict of str to AxesImage
        Each method's map, and ``"occlusion"``'s (drawn over a faded copy of the image).
    axes : dict of str to Axes
        ``"image"``, each method, ``"occlusion"`` and ``"agreement"`` (the bars).
    bars : dict of str to Rectangle
        One horizontal bar per method: its agreement with occlusion.
    labels : dict of str to Text
        Each bar's method name, on the side of 0 its bar is not.
    faded : AxesImage
        The faded copy of the image under the occlusion map.
    """

    fig: Figure
    methods: list[str]
    image: object
    maps: dict = field(default_factory=dict)
    axes: dict = field(default_factory=dict)
    bars: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)
    faded: object = None


def explain_panels(image: np.ndarray, methods: Sequence[str], *, fig: Figure | None = None,
                   size: tuple[float, float] = (7.6, 4.3)) -> tuple[Figure, ExplainPanels]:
    """Empty panels of the Explain tab: the image, one per method, occlusion, the agreements.

    Two rows of four: the image and the first three methods, then occlusion, the other methods
    and a bar chart of each method's Spearman agreement with occlusion (-1 to 1). Maps start
    black, titled "computing"; :func:`update_explain_panels` fills them in.

    Parameters
    ----------
    image : numpy.ndarray
        ``[H, W, 3]`` the model's view of the image.
    methods : sequence of str
        Class-map methods (at most six), in order.
    fig : Figure, optional
        Drawn into (cleared first); a new ``Figure`` otherwise.
    size : (float, float)
        Inches (new figures).

    Returns
    -------
    (Figure, ExplainPanels)
    """
    methods = list(methods)
    if not 1 <= len(methods) <= 6:
        raise ValueError(f"the Explain panels hold 1 to 6 methods, got {len(methods)}")
    fig = new_figure(fig, size, layout="constrained")
    grid = fig.subplots(2, 4, squeeze=False)
    order = ["image", *methods[:3], "occlusion", *methods[3:]]
    cells = [ax for row in grid for ax in row]
    axes = dict(zip(order, cells))
    blank = np.zeros(image.shape[:2], np.float32)
    panels = ExplainPanels(fig, methods, axes["image"].imshow(image), axes=axes)
    axes["image"].set_title("image", fontsize=8)
    for name in [*methods, "occlusion"]:
        ax = axes[name]
        if name == "occlusion":
            panels.faded = ax.imshow(image, alpha=0.35)
        panels.maps[name] = ax.imshow(blank, cmap=MAP_CMAP, vmin=0, vmax=1,
                                      interpolation="nearest",
                                      alpha=0.85 if name == "occlusion" else None)
        ax.set_title(f"{METHOD_NAMES.get(name, name)}\ncomputing", fontsize=8)
    for ax in cells[:len(order)]:
        ax.set_axis_off()
    for ax in cells[len(order):-1]:
        ax.set_visible(False)
    bars_ax = cells[-1]
    axes["agreement"] = bars_ax
    short = {"guided": "guided BP", "guided_gradcam": "g. Grad-CAM"}  # fit half the axes
    labels = [short.get(m, METHOD_NAMES.get(m, m)) for m in methods]
    rects = bars_ax.barh(range(len(methods)), np.zeros(len(methods)), color="C0", height=0.6)
    panels.bars = dict(zip(methods, rects))
    bars_ax.set_yticks([])
    # Names inside the axes (no tick labels to lay out), on the side of 0 the bar is not.
    panels.labels = {m: bars_ax.text(-0.04, i, label, ha="right", va="center", fontsize=7)
                     for i, (m, label) in enumerate(zip(methods, labels))}
    bars_ax.invert_yaxis()
    bars_ax.set_xlim(-1, 1)
    bars_ax.axvline(0, color="0.5", lw=0.8)
    bars_ax.set_title("agreement with occlusion\n(Spearman ρ)", fontsize=8)
    bars_ax.tick_params(axis="x", labelsize=7)
    return fig, panels


def update_explain_panels(panels: ExplainPanels, *, image: np.ndarray | None = None,
                          maps: Mapping[str, np.ndarray] | None = None,
                          explanation=None, skipped: Mapping[str, str] | None = None,
                          pending: bool = False, draw: bool = True) -> None:
    """Update the Explain panels in place.

    Parameters
    ----------
    panels : ExplainPanels
    image : numpy.ndarray, optional
        A new ``[H, W, 3]`` image (a new photo).
    maps : mapping of str to numpy.ndarray, optional
        ``[H, W]`` maps that arrived (method -> map), drawn each on its own scale.
    explanation : Explanation, optional
        The finished explanation: every map, occlusion's drop and the agreements (titles and
        bars).
    skipped : mapping of str to str, optional
        Methods the model cannot support: drawn blank, titled "not for this model".
    pending : bool
        Title the maps not given "computing" (a new request started) instead of leaving them.
    draw : bool
        Call ``fig.canvas.draw_idle()``.
    """
    if image is not None:
        panels.image.set_data(image)
        panels.faded.set_data(image)
    maps = dict(maps or {})
    skipped = dict(skipped or {})
    rho: dict[str, float] = {}
    e = explanation
    if e is not None:
        maps.update({m: c.map for m, c in e.maps.items()})
        rho = dict(e.agreement)
        skipped = {**e.skipped, **skipped}
        panels.axes["image"].set_title(f"image\nP({_short(e.label)}) = "
                                       f"{e.occlusion.base_prob:.2f}", fontsize=8)
    for name in panels.methods:
        ax, art = panels.axes[name], panels.maps[name]
        if name in skipped:
            _blank(ax, art, f"{METHOD_NAMES.get(name, name)}\nnot for this model")
        elif name in maps:
            m = np.asarray(maps[name])
            art.set_data(_scaled(m))
            ax.set_title(_map_title(name, rho.get(name), not np.any(m > 0)), fontsize=8)
        elif pending:
            _blank(ax, art, f"{METHOD_NAMES.get(name, name)}\ncomputing")
    ax, art = panels.axes["occlusion"], panels.maps["occlusion"]
    if e is not None:
        art.set_data(_scaled(np.clip(e.drop, 0, None)))
        art.set_extent(e.occlusion.extent())
        h, w = panels.image.get_array().shape[:2]
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        ax.set_title(f"occlusion\n(P drop, {e.occlusion.size} px)", fontsize=8)
    elif pending:
        _blank(ax, art, "occlusion\ncomputing")
    for name, bar in panels.bars.items():
        value = rho.get(name, 0.0)
        bar.set_width(float(value) if np.isfinite(value) else 0.0)
        negative = bool(np.isfinite(value) and value < 0)
        bar.set_color("C3" if negative else "C0")
        text = panels.labels.get(name)
        if text is not None:
            text.set_x(0.04 if negative else -0.04)
            text.set_horizontalalignment("left" if negative else "right")
    if draw:
        panels.fig.canvas.draw_idle()


def _blank(ax, art, title: str) -> None:
    """A map panel drawn black (same grid), with ``title``."""
    art.set_data(np.zeros(art.get_array().shape[:2], np.float32))
    ax.set_title(title, fontsize=8)


def _short(label: str, width: int = 28) -> str:
    return label if len(label) <= width else label[: width - 1] + "…"
