"""Benchmark: Python-side time from a widget trait change to a drawn figure (EfficientNet-Lite0).

Run on demand::

    .venv/bin/python bench/widgets.py [--repeats 15]

What is timed (each a median over ``--repeats`` rounds, with the 90th percentile beside it),
on the offline EfficientNet-Lite0 and the sample photo "chelsea", in one :class:`Explorer`:

* **grid, new layer**: ``grid.layer = L`` for a 480-map layer (14x14) and the 1280-map top layer
  (7x7), alternating, up to the figure drawn by its ipympl canvas (``canvas.draw()``: Agg render
  plus the PNG diff ipympl sends to the browser). Activations come from the session's cached
  forward pass, as in real use.
* **grid, new channel**: only the highlight and the marker move.
* **click -> projection**: a mouse press as the ipympl front-end sends it, on a map of the 480-map
  grid (a different map each round, so the projection cache never helps), up to both the grid
  and the deconv view drawn: channel selection, strongest position, receptive field,
  ``Session.project`` (one deconvnet backward pass), and the redraw of the three panels. The
  projection alone is reported on its own line.

Goals (issue 3): grid <= 50 ms, click -> projection <= 150 ms. Results go to
``bench/results/widgets.md``. The same interactions measured in a real browser, round trips
included, are ``bench/widgets_browser.py``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _common import load_note, load_text, machine_info


RESULTS = Path(__file__).resolve().parent / "results" / "widgets.md"
MID, TOP = "blocks.7.depthwise.act", "head.act"
GOALS = {"grid": 50.0, "click": 150.0}


def click(fig, ax, x, y) -> None:
    """A mouse press exactly as ipympl's front-end delivers it."""
    px, py = ax.transData.transform((x, y))
    height = fig.canvas.get_renderer().height
    fig.canvas._handle_message(fig.canvas, {"type": "button_press", "x": float(px),
                                            "y": float(height - py), "button": 0,
                                            "buttons": 1, "modifiers": []}, [])


def stats(samples: list[float]) -> tuple[float, float]:
    ms = sorted(1000 * s for s in samples)
    return statistics.median(ms), float(np.percentile(ms, 90))


def console_table(rows) -> list[str]:
    """``rows`` of (what, median ms, p90 ms, goal ms or None) as aligned text lines."""
    width = max(len(r[0]) for r in rows)
    lines = [f"{'what':<{width}}  median ms   p90 ms   goal ms  met"]
    for name, med, p90, goal in rows:
        met = "" if goal is None else ("yes" if med <= goal else "NO")
        goal_text = "" if goal is None else f"{goal:g}"
        lines.append(f"{name:<{width}}  {med:9.1f}  {p90:7.1f}  {goal_text:>8}  {met}")
    return lines


def markdown_table(rows) -> list[str]:
    """``rows`` (see :func:`console_table`) as a markdown table."""
    md = ["| what | median ms | p90 ms | goal ms | met |", "|---|---:|---:|---:|---|"]
    for name, med, p90, goal in rows:
        met = "" if goal is None else ("yes" if med <= goal else "**no**")
        goal_text = "" if goal is None else f"{goal:g}"
        md.append(f"| {name.strip()} | {med:.1f} | {p90:.1f} | {goal_text} | {met} |")
    return md


def write_results(path: Path, md: list[str], info: dict, notes=()) -> None:
    """Write ``md`` + the machine, the load and ``notes`` (lines) to ``path``."""
    md = md + ["", "Machine:", ""] + [f"- {k}: {v}" for k, v in info.items()]
    md += ["", load_note(info["load average (1/5/15 min) at start"],
                         info["load average (1/5/15 min) at end"])]
    for note in notes:
        if note:
            md += ["", note]
    md.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(md))
    print(f"wrote {path}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--note", default="", help="a line added to the results file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from zfwidgets import Session
    from zfwidgets.widgets import Explorer

    info = machine_info()
    session = Session("efficientnet_lite0")  # image: the sample photo "chelsea"
    ex = Explorer(session, layer=MID)
    grid, deconv = ex.grid, ex.deconv
    for fig in (grid.fig, deconv.fig):
        # as once a browser view is connected: ipympl then stops re-encoding a data URL on
        # every draw and only sends the PNG diff
        fig.canvas.syncing_data_url = False
        fig.canvas.draw()
    # warm-up: both layers tiled once, a few projections (first backward passes are slow)
    for layer in (TOP, MID):
        ex.layer = layer
        grid.fig.canvas.draw()
    for c in range(3):
        session.project(MID, c, session.strongest(MID, c)[1:3])

    rows = []

    # grid: new layer (480 maps, 1280 maps alternating); the deconv view is not part of it
    grid_only = type(grid)(session, MID)
    grid_only.fig.canvas.syncing_data_url = False
    grid_only.fig.canvas.draw()
    times = {MID: [], TOP: []}
    for i in range(args.repeats):
        for layer in (TOP, MID):
            t = time.perf_counter()
            grid_only.layer = layer
            grid_only.fig.canvas.draw()
            times[layer].append(time.perf_counter() - t)
    for layer, maps in ((MID, "480 maps 14x14"), (TOP, "1280 maps 7x7")):
        rows.append((f"grid: layer -> {layer} ({maps})", *stats(times[layer]), GOALS["grid"]))

    # grid: new channel (highlight + marker only)
    samples = []
    for i in range(args.repeats):
        t = time.perf_counter()
        grid_only.channel = (7 * i + 3) % 1280
        grid_only.fig.canvas.draw()
        samples.append(time.perf_counter() - t)
    rows.append(("grid: channel -> highlight", *stats(samples), GOALS["grid"]))
    grid_only.close()

    # click -> projection, in the explorer (grid + deconv view linked)
    ex.layer = MID
    grid.fig.canvas.draw()
    deconv.fig.canvas.draw()
    layout = grid.mosaic.layout
    samples, proj = [], []
    real_project = session.project

    def timed_project(*a, **k):
        t = time.perf_counter()
        out = real_project(*a, **k)
        proj.append(time.perf_counter() - t)
        return out

    session.project = timed_project
    channels = [(37 * i + 11) % layout.count for i in range(args.repeats)]
    for k in channels:
        y0, x0 = layout.origin(k)
        t = time.perf_counter()
        click(grid.fig, grid.mosaic.ax, x0 + 6.5, y0 + 6.5)
        grid.fig.canvas.draw()
        deconv.fig.canvas.draw()
        samples.append(time.perf_counter() - t)
        assert ex.channel == k and deconv.channel == k, (k, ex.channel)
    session.project = real_project
    rows.append(("click -> projection drawn (deconvnet, 480-map layer)", *stats(samples),
                 GOALS["click"]))
    rows.append(("  of which Session.project", *stats(proj), None))

    ex.rule = "guided"
    samples = []
    for k in channels[: max(3, args.repeats // 2)]:
        y0, x0 = layout.origin((k + 1) % layout.count)
        t = time.perf_counter()
        click(grid.fig, grid.mosaic.ax, x0 + 6.5, y0 + 6.5)
        grid.fig.canvas.draw()
        deconv.fig.canvas.draw()
        samples.append(time.perf_counter() - t)
    rows.append(("click -> projection drawn (guided)", *stats(samples), GOALS["click"]))
    ex.close()

    info["load average (1/5/15 min) at end"] = load_text()
    print("\n".join(console_table(rows)))
    for k, v in info.items():
        print(f"{k}: {v}")
    md = ["# Widgets benchmark (`bench/widgets.py`)", "",
          "Python-side time from a trait change (or a click as ipympl delivers it) to the figure "
          "drawn by its ipympl canvas (Agg render + PNG diff), EfficientNet-Lite0, sample photo "
          "`chelsea`, median and 90th percentile of "
          f"{args.repeats} rounds. Browser round-trips are not included: see "
          "`bench/widgets_browser.py` (`results/widgets_browser.md`).", "", *markdown_table(rows)]
    write_results(RESULTS, md, info, [
        "The click cost is `Session.project` (one forward to the layer and one backward pass on "
        "the CPU) plus redrawing the grid and the three deconv panels.", args.note])
    return 0


if __name__ == "__main__":
    sys.exit(main())
