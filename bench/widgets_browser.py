"""Benchmark: the explorer in a real browser, from a click or a layer change to the repaint.

Run on demand (needs /usr/bin/chromium and the playwright package; no browser download)::

    .venv/bin/python bench/widgets_browser.py [--repeats 8] [--breakdown]

The explorer is served by Voila as ``zfwidgets explore`` serves it (EfficientNet-Lite0, sample
photo "chelsea", the kernel's environment of ``zfwidgets explore``: its thread count and
``OMP_WAIT_POLICY=PASSIVE``) and driven by Debian's chromium through Playwright. Timings
are taken inside the page, with no screenshot polling: an init script records
``performance.now()`` of the ``mousedown`` / ``change`` event and of every ``drawImage`` onto a
visible ipympl canvas (the moment a new frame is painted), on the wall clock the kernel's
probe uses too (``--breakdown``).

* **click -> projection repainted**: a click on a map of the 480-map grid (a different map
  each round) to the last paint of the deconv view's canvas (issue 14 goal: <= 150 ms); the
  grid's own repaint (its highlight) is reported beside it.
* **layer change -> grid repainted**: a layer chosen in the selector (1280-map top layer and the
  480-map middle layer, alternating) to the last paint of the grid's canvas (goal: <= 300 ms);
  the deconv view's repaint beside it.

Each is measured for two ways of sending frames, in one run, their rounds interleaved (two
served explorers, one page each): ``pushed`` (zfwidgets' canvas: a
frame goes out as soon as its view has drawn, when the browser is ready for it; a click acts at
once when the kernel is idle) and ``ipympl`` (ipympl's own ``draw_idle``: the kernel asks the
browser to ask for a frame, a round trip that waits behind the other views' work; clicks
delayed 30 ms, as before). ``--breakdown`` adds where the time goes in the kernel (message in,
frames out). Results go to ``bench/results/widgets_browser.md`` with the machine, the load and
the versions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from _common import load_text, machine_info
from widgets import console_table, markdown_table, write_results

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))   # the browser-test helpers

RESULTS = HERE / "results" / "widgets_browser.md"
MID, TOP = "blocks.7.depthwise.act", "head.act"
GOALS = {"click": 150.0, "layer": 300.0}
VARIANTS = {"pushed": "frames pushed when the browser is ready (zfwidgets)",
            "ipympl": "ipympl's draw round trip, clicks delayed 30 ms (before)"}

#: The served notebook: the explorer as `zfwidgets explore` opens it, optionally with ipympl's
#: own frame protocol, optionally with the kernel probe.
CELL = '''\
import os, sys
from zfwidgets.cli import open_session
from zfwidgets.widgets import Explorer

if os.environ.get("ZF_BENCH_PROBE"):  # before any canvas exists: they bind their handlers
    sys.path.insert(0, os.path.dirname(os.environ["ZF_BENCH_PROBE"]))
    import zf_bench_probe

if os.environ.get("ZF_BENCH_PROTOCOL") == "ipympl":
    from ipympl.backend_nbagg import Canvas
    from zfwidgets.widgets.canvas import _canvas_class
    from zfwidgets.widgets import runner

    fast = _canvas_class()
    for name in ("draw_idle", "handle_draw", "send_binary", "set_cursor"):
        setattr(fast, name, getattr(Canvas, name))

    def later(self, fn):
        loop = runner.running_loop()
        if loop is None:
            return fn()
        self.cancel()
        self._handle = loop.call_later(self.delay, fn)
    runner.Latest.__call__ = later

ex = Explorer(open_session("efficientnet_lite0", None))
if os.environ.get("ZF_BENCH_PROBE"):
    zf_bench_probe.label({"grid": ex.grid.fig, "deconv": ex.deconv.fig, "top5": ex.top5.fig})
ex
'''

#: Kernel side of --breakdown: wall-clock marks (ms) of canvas messages in and frames out.
PROBE = '''\
import json, os, time
from ipympl.backend_nbagg import Canvas

_log = open(os.environ["ZF_BENCH_PROBE"], "a", buffering=1)
_labels = {}
_handle, _send = Canvas._handle_message, Canvas.send_binary

def mark(*what):
    _log.write(json.dumps([time.time() * 1000, *what]) + "\\n")

def label(figures):
    for name, fig in figures.items():
        _labels[id(fig.canvas)] = name

def handle_message(self, obj, content, buffers):
    mark("in", _labels.get(id(self), "?"), content.get("type"))
    return _handle(self, obj, content, buffers)

def send_binary(self, data):
    mark("frame", _labels.get(id(self), "?"), len(data))
    return _send(self, data)

Canvas._handle_message, Canvas.send_binary = handle_message, send_binary
'''

#: Page side: when events happen and when a frame is painted on a visible canvas.
INIT_JS = '''
(() => {
  const now = () => performance.timeOrigin + performance.now();
  const log = window.__zf = [];
  const where = (c) => {
    if (!c || !c.isConnected) return null;
    for (const k of ["zf-grid", "zf-deconv", "zf-top5"]) if (c.closest("." + k)) return k;
    return "other";
  };
  const drawImage = CanvasRenderingContext2D.prototype.drawImage;
  CanvasRenderingContext2D.prototype.drawImage = function (...args) {
    const w = where(this.canvas);
    if (w) log.push(["paint", now(), w]);
    return drawImage.apply(this, args);
  };
  for (const type of ["mousedown", "change"])
    document.addEventListener(type, () => log.push([type, now()]), true);
})();
'''


def grid_geometry(count: int, h: int, w: int):
    """``at(k)``: canvas pixel (x, y) of the centre of map ``k`` in the grid widget's mosaic
    (the widget's default figure size, drawn headless)."""
    import inspect

    from zfwidgets.plots.mosaic import feature_mosaic_figure
    from zfwidgets.widgets import FeatureMapGrid

    params = inspect.signature(FeatureMapGrid.__init__).parameters
    fig, mosaic = feature_mosaic_figure(np.zeros((count, h, w), np.float32),
                                        size=params["size"].default, dpi=params["dpi"].default)
    fig.canvas.draw()
    layout, height = mosaic.layout, fig.bbox.height

    def at(k):
        y0, x0 = layout.origin(k)
        px, py = mosaic.ax.transData.transform((x0 + (w - 1) / 2, y0 + (h - 1) / 2))
        return float(px), float(height - py)
    return at


def settle(page, quiet_ms: float = 600, timeout: float = 20) -> list:
    """The page's event log once nothing has been painted for ``quiet_ms``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        page.wait_for_timeout(100)
        log = page.evaluate("window.__zf")
        last = max((e[1] for e in log), default=None)
        if last is not None and page.evaluate("performance.timeOrigin + performance.now()") \
                - last > quiet_ms:
            return log
    return page.evaluate("window.__zf")


def painted(log: list, start: str, canvas: str) -> float | None:
    """ms from the first ``start`` event to the last paint of ``canvas`` in ``log``."""
    t0 = next((e[1] for e in log if e[0] == start), None)
    paints = [e[1] for e in log if e[0] == "paint" and e[2] == canvas]
    return None if t0 is None or not paints else paints[-1] - t0


class Variant:
    """One served explorer (its own Voila server, kernel and page) for one way of sending
    frames; rounds of both variants are interleaved, so a change of load hits both alike."""

    def __init__(self, name: str, tmp: Path, breakdown: bool):
        self.name, self.work = name, tmp / name
        self.work.mkdir(parents=True, exist_ok=True)
        self.probe_log = self.work / "zf_bench_probe.log"
        self.breakdown = breakdown
        self.rounds = {"click": [], "layer": []}

    @contextlib.contextmanager
    def opened(self, browser):
        from browser import CANVAS, jupyter_env, serve_voila, wait_canvas_painted
        from zfwidgets.cli import kernel_env, one_cell_notebook

        notebook = one_cell_notebook(self.work / "explorer.ipynb", CELL)
        extra = {"ZF_BENCH_PROTOCOL": self.name}
        if self.breakdown:
            (self.work / "zf_bench_probe.py").write_text(PROBE)
            extra["ZF_BENCH_PROBE"] = str(self.probe_log)
        # the kernel's environment of `zfwidgets explore` (its threads, OpenMP policy and
        # allocator settings), not a one-thread kernel
        env = kernel_env(None, None, jupyter_env(self.work, **extra))
        self.threads = {k: env.get(k, "(unset)") for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
        with serve_voila(notebook, self.work, env=env, timeout=180) as url:
            context = browser.new_context(viewport={"width": 1300, "height": 950})
            context.add_init_script(INIT_JS)
            page = self.page = context.new_page()
            try:
                t = time.monotonic()
                page.goto(url, timeout=180_000)
                self.grid = page.locator(f".zf-grid {CANVAS}")
                wait_canvas_painted(page, self.grid, timeout=240)
                wait_canvas_painted(page, page.locator(f".zf-deconv {CANVAS}"), timeout=60)
                self.first_paint = time.monotonic() - t
                settle(page, 1500)
                self.at, self.box = grid_geometry(480, 14, 14), self.grid.bounding_box()
                select = page.locator(".zf-layer-selector select")
                self.options = select.locator("option").all_inner_texts()
                yield self
            finally:
                page.close()
                context.close()

    def click(self, i: int) -> None:
        """Round ``i``: click map ``k`` of the 480-map grid, wait for its projection."""
        page, k = self.page, (37 * i + 11) % 480
        x, y = self.at(k)
        page.mouse.move(self.box["x"] + x, self.box["y"] + y)
        settle(page, 400)
        page.evaluate("window.__zf.length = 0")
        page.mouse.down()
        page.mouse.up()
        page.locator(".zf-deconv", has_text=f"map {k},").wait_for(timeout=60_000)
        log = settle(page)
        self.rounds["click"].append((painted(log, "mousedown", "zf-deconv"),
                                     painted(log, "mousedown", "zf-grid"), log))

    def layer(self, i: int) -> None:
        """Round ``i``: choose the top layer (even rounds) or the middle layer (odd ones)."""
        page = self.page
        layer, maps = (TOP, "1280 maps") if i % 2 == 0 else (MID, "480 maps")
        label = next(o for o in self.options if o.split("\xa0")[0].split(" ")[0] == layer)
        page.evaluate("window.__zf.length = 0")
        page.locator(".zf-layer-selector select").select_option(label=label)
        page.locator(".zf-grid", has_text=maps).wait_for(timeout=60_000)
        page.locator(".zf-deconv", has_text=f"{layer}: map").wait_for(timeout=60_000)
        log = settle(page)
        self.rounds["layer"].append((painted(log, "change", "zf-grid"),
                                     painted(log, "change", "zf-deconv"), log))

    def kernel(self) -> list:
        if not (self.breakdown and self.probe_log.exists()):
            return []
        return [json.loads(line) for line in self.probe_log.read_text().splitlines()]


def kernel_phases(rounds, kernel) -> dict[str, list[float]]:
    """Per click: page event -> kernel gets the press, -> grid frame out, -> deconv frame out,
    -> deconv painted (ms, medians taken by the caller)."""
    phases = {"event -> kernel receives it": [], "-> grid frame sent": [],
              "-> deconv frame sent": [], "-> deconv painted": []}
    for deconv, _, log in rounds:
        t0 = next((e[1] for e in log if e[0] == "mousedown"), None)
        end = max((e[1] for e in log), default=None)
        if t0 is None or deconv is None:
            continue
        marks = [m for m in kernel if t0 - 5 <= m[0] <= end + 5]
        press = next((m[0] for m in marks if m[1] == "in" and m[3] == "button_press"), None)
        grid = next((m[0] for m in marks if m[1] == "frame" and m[2] == "grid"), None)
        frames = [m[0] for m in marks if m[1] == "frame" and m[2] == "deconv"]
        if None in (press, grid) or not frames:
            continue
        phases["event -> kernel receives it"].append(press - t0)
        phases["-> grid frame sent"].append(grid - press)
        phases["-> deconv frame sent"].append(frames[-1] - grid)
        phases["-> deconv painted"].append(t0 + deconv - frames[-1])
    return phases


def stats(values) -> tuple[float, float]:
    values = sorted(v for v in values if v is not None)
    if not values:
        return float("nan"), float("nan")
    return statistics.median(values), float(np.percentile(values, 90))


def versions(browser) -> dict[str, str]:
    import importlib.metadata as md

    out = {"chromium": browser.version}
    for name in ("voila", "ipympl", "ipywidgets", "ipykernel", "jupyter_server", "matplotlib",
                 "playwright"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--breakdown", action="store_true",
                        help="also log the kernel's canvas messages (where the time goes)")
    parser.add_argument("--note", default="", help="a line added to the results file")
    args = parser.parse_args(argv)

    import tempfile

    from browser import chromium

    info = machine_info()
    rows, notes, phases = [], [], {}
    with tempfile.TemporaryDirectory(prefix="zf-bench-browser-") as tmp, chromium() as browser, \
            contextlib.ExitStack() as stack:
        info.update(versions(browser))
        variants = [stack.enter_context(Variant(name, Path(tmp), args.breakdown).opened(browser))
                    for name in args.variants]
        for kind in ("click", "layer"):
            for i in range(args.repeats):
                for variant in variants:                # interleaved: the same load for each
                    getattr(variant, kind)(i)
        for variant in variants:
            rounds, label = variant.rounds, f"[{variant.name}]"
            rows.append((f"{label} click -> projection repainted",
                         *stats(r[0] for r in rounds["click"]), GOALS["click"]))
            rows.append((f"{label}   the grid's highlight repainted",
                         *stats(r[1] for r in rounds["click"]), None))
            rows.append((f"{label} layer change -> grid repainted",
                         *stats(r[0] for r in rounds["layer"]), GOALS["layer"]))
            rows.append((f"{label}   the deconv view repainted",
                         *stats(r[1] for r in rounds["layer"]), None))
            notes.append(f"- `{variant.name}`: {VARIANTS[variant.name]}; page to first paint "
                         f"{variant.first_paint:.1f} s.")
            kernel = variant.kernel()
            if kernel:
                phases[variant.name] = {k: stats(v) for k, v in
                                        kernel_phases(rounds["click"], kernel).items()}
    info["load average (1/5/15 min) at end"] = load_text()

    print("\n".join(console_table(rows)))
    for variant, table in phases.items():
        print(f"[{variant}] click, kernel breakdown (median ms): " +
              ", ".join(f"{k} {v[0]:.1f}" for k, v in table.items()))
    for k, v in info.items():
        print(f"{k}: {v}")

    md = ["# Widgets in a real browser (`bench/widgets_browser.py`)", "",
          "The explorer served by Voila (as `zfwidgets explore`), EfficientNet-Lite0, sample photo "
          "`chelsea`, the kernel's environment of `zfwidgets explore` ("
          + ", ".join(f"`{k}={v}`" for k, v in variants[0].threads.items()) +
          "), driven by chromium (Playwright). Times are "
          "measured inside the page: from the `mousedown` / `change` event to the last "
          "`drawImage` of the new frame onto the visible canvas. Median and 90th percentile of "
          f"{args.repeats} rounds each.", "", *markdown_table(rows),
          "", "Variants, measured in the same run:", "", *notes]
    for variant, table in phases.items():
        md += ["", f"Where a click's time goes (`{variant}`, median ms, wall clock shared by "
               "page and kernel):", "", "| phase | median ms | p90 ms |", "|---|---:|---:|"]
        md += [f"| {k} | {v[0]:.1f} | {v[1]:.1f} |" for k, v in table.items()]
    write_results(RESULTS, md, info, [args.note])
    return 0


if __name__ == "__main__":
    sys.exit(main())
