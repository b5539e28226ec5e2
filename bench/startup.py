"""Benchmark: the served explorer in a real browser, from a fresh ``zfwidgets explore`` process.

Run on demand (needs Debian's chromium and the Python playwright package, as the browser tests)::

    .venv/bin/python bench/startup.py [--runs 2] [--model efficientnet_lite0]

What is timed, on the wall clock of this script:

* **first paint** (each of ``--runs`` fresh processes): ``zfwidgets explore --no-browser --port P``
  started -> the feature-map grid's canvas painted in chromium. On the way: the port listens
  (Voila is up), the page's first bytes arrive, the explorer's widgets are in the page, then the
  grid, the deconv view and the top-5 have content. A browser page is opened as soon as the
  port listens, as ``make explore`` opens one.
* then, in the last run's page:

  - **tab switch**: a click on the *Occlusion* tab -> its canvas painted (the first picture;
    timed in the page, on its own clock, at the ``drawImage`` that puts a picture on the canvas
    (:data:`PAINT_CLOCK`), and as the screenshot polling of the other marks first sees it), and
    -> the canvas settled (no change for ``--quiet`` s: the last refinement drawn);
  - **image change, Occlusion shown**: another sample chosen -> the occlusion canvas first
    repainted, and settled;
  - **image change, Occlusion opened and hidden**: back on *Feature maps*, another sample ->
    the grid repainted and settled (a hidden tab that computes competes for the CPU here);
    then the *Occlusion* tab opened again -> its canvas repainted;
  - **upload**: a 12-megapixel JPEG (4000 x 3000, generated on the fly from a sample photo)
    given to the upload button -> the "analysing" line names it, the grid repainted.

* **kernel-side phases** (a fresh Python process with the kernel's environment, no browser):
  the imports (torch, torchvision, matplotlib, ipympl, zfwidgets), ``open_session``, ``Explorer()``.

Results go to ``bench/results/startup.md`` with the machine, load and versions. Nothing here is
a test: times on a shared machine are noisy; the load average is recorded beside them.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import load_note, load_text, machine_info, machine_table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from browser import (CANVAS, chromium, explore_command, free_port, has_content,  # noqa: E402
                     screenshot_changed, serve_command, wait_canvas_settled, wait_until)

RESULTS = Path(__file__).resolve().parent / "results" / "startup.md"
GOAL_FIRST_PAINT = 10.0   # issue 14: `make explore` to first paint, quiet machine


def server_env(tmp: Path) -> dict:
    """The user's environment with Jupyter's runtime / config state in ``tmp`` (matplotlib's
    font cache stays the user's: "after the first install")."""
    env = dict(os.environ)
    for var, sub in (("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_RUNTIME_DIR", "runtime"),
                     ("IPYTHONDIR", "ipython")):
        (tmp / sub).mkdir(parents=True, exist_ok=True)
        env[var] = str(tmp / sub)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Clock:
    """Seconds since ``start``, by name."""

    def __init__(self):
        self.start = time.monotonic()
        self.marks: dict[str, float] = {}

    def mark(self, name: str) -> float:
        self.marks[name] = time.monotonic() - self.start
        return self.marks[name]


# In the page, before any script of its own: every drawImage onto a canvas that matches
# window.__zfWatch (a selector) is timed, and kept when the canvas then holds a picture (not one
# flat colour: the grey-level spread of a sample of its pixels above 2, as has_content). This
# times a paint where it happens, on the page's own clock, without the screenshots that
# polling takes (each costs the 2-core machine CPU that the kernel is using for the work).
PAINT_CLOCK = r"""
(() => {
  const draw = CanvasRenderingContext2D.prototype.drawImage;
  window.__zfPainted = [];
  CanvasRenderingContext2D.prototype.drawImage = function (...args) {
    const out = draw.apply(this, args);
    const c = this.canvas, sel = window.__zfWatch;
    if (sel && c.isConnected && c.matches(sel) && c.width > 0 && c.height > 0) {
      const t = performance.now();
      const px = this.getImageData(0, 0, c.width, c.height).data;
      let n = 0, sum = 0, sq = 0;
      for (let i = 0; i < px.length; i += 4 * 7) {
        const g = (px[i] + px[i + 1] + px[i + 2]) / 3;
        n += 1; sum += g; sq += g * g;
      }
      const sd = Math.sqrt(Math.max(0, sq / n - (sum / n) ** 2));
      if (sd > 2) window.__zfPainted.push(t);
    }
    return out;
  };
})();
"""


def paint_after(page, selector: str, action, timeout: float) -> float:
    """Seconds on the page's clock from just before ``action()`` to the first paint of a
    picture onto the canvas at ``selector`` (see :data:`PAINT_CLOCK`)."""
    t0 = page.evaluate("(sel) => { window.__zfWatch = sel; window.__zfPainted = [];"
                       " return performance.now(); }", selector)
    action()
    handle = page.wait_for_function(
        "(t0) => { const t = (window.__zfPainted || []).find((v) => v > t0);"
        " return t === undefined ? null : t; }", arg=t0, timeout=timeout * 1000, polling=50)
    return (handle.json_value() - t0) / 1000


def painted(page, locator, timeout: float) -> bytes:
    locator.wait_for(state="visible", timeout=timeout * 1000)

    def ready():
        png = locator.screenshot()
        return png if has_content(png) else None

    return wait_until(page, ready, "a painted canvas", timeout, poll=0.05)


def changed(page, locator, before: bytes, timeout: float) -> bytes:
    def differs():
        png = locator.screenshot()
        return png if screenshot_changed(before, png) else None

    return wait_until(page, differs, "a repainted canvas", timeout, poll=0.05)


def settled(page, locator, quiet: float, timeout: float, busy=None) -> float:
    return wait_canvas_settled(page, locator, quiet, timeout, busy)


def first_paint(browser, model: str | None, tmp: Path, timeout: float):
    """One fresh ``zfwidgets explore``: its first-paint marks; yields the page for more."""
    port = free_port()
    clock = Clock()
    options = ["--model", model] if model else []
    with serve_command(explore_command(port, *options), port, tmp, env=server_env(tmp),
                       timeout=timeout) as url:
        clock.mark("port listens (Voila up)")
        context = browser.new_context(viewport={"width": 1300, "height": 1000})
        context.add_init_script(PAINT_CLOCK)
        try:
            page = context.new_page()
            page.goto(url, wait_until="commit", timeout=timeout * 1000)
            clock.mark("page's first bytes")
            page.locator(".zf-explorer").wait_for(state="attached", timeout=timeout * 1000)
            clock.mark("explorer widgets in the page")
            painted(page, page.locator(f".zf-grid {CANVAS}"), timeout)
            clock.mark("grid painted (first paint)")
            painted(page, page.locator(f".zf-deconv {CANVAS}"), timeout)
            painted(page, page.locator(f".zf-top5 {CANVAS}"), timeout)
            clock.mark("grid, deconv and top-5 painted")
            yield clock, page
        finally:
            context.close()


def tab(page, title: str):
    return page.locator(".lm-TabBar-tab", has_text=title).first


def choose_sample(page, name: str) -> None:
    page.locator(".zf-images select").first.select_option(label=name)


def after(page, action, canvas, quiet: float, timeout: float, busy=None) -> tuple[float, float]:
    """Seconds from ``action()`` to the canvas's first repaint, and to it settled."""
    before = canvas.screenshot()
    t = time.monotonic()
    action()
    changed(page, canvas, before, timeout)
    first = time.monotonic() - t
    return first, settled(page, canvas, quiet, timeout, busy) - t


def interactions(page, quiet: float, timeout: float) -> dict[str, float]:
    """Tab switch, image changes, upload; seconds each."""
    out: dict[str, float] = {}
    occ = page.locator(f".zf-occlusion {CANVAS}")
    sweeping = page.locator(".zf-occlusion .widget-hprogress:visible")   # while a sweep runs
    grid = page.locator(f".zf-grid {CANVAS}")

    occ_canvas = f".zf-occlusion {CANVAS} canvas"
    t = time.monotonic()
    out["tab switch: Feature maps -> Occlusion first picture (the page's paint clock)"] = \
        paint_after(page, occ_canvas, lambda: tab(page, "Occlusion").click(), timeout)
    painted(page, occ, timeout)
    out["tab switch: ... -> Occlusion first picture seen in a screenshot"] = \
        time.monotonic() - t
    out["tab switch: ... -> Occlusion settled"] = \
        settled(page, occ, quiet, timeout, sweeping) - t

    first, last = after(page, lambda: choose_sample(page, "coffee"), occ, quiet, timeout,
                        sweeping)
    out["image change, Occlusion shown: first repaint"] = first
    out["image change, Occlusion shown: settled"] = last

    tab(page, "Feature maps").click()
    painted(page, grid, timeout)
    settled(page, grid, quiet, timeout)
    first, last = after(page, lambda: choose_sample(page, "astronaut"), grid, quiet, timeout)
    out["image change, Occlusion opened and hidden: grid repainted"] = first
    out["image change, Occlusion opened and hidden: grid settled"] = last

    t = time.monotonic()
    tab(page, "Occlusion").click()
    painted(page, occ, timeout)
    out["Occlusion shown again after that change: settled"] = \
        settled(page, occ, quiet, timeout, sweeping) - t
    tab(page, "Feature maps").click()
    painted(page, grid, timeout)
    settled(page, grid, quiet, timeout)

    jpeg = photo_12mp()

    def upload():
        with page.expect_file_chooser(timeout=timeout * 1000) as chooser:
            page.locator(".zf-images .widget-upload").first.click()
        chooser.value.set_files({"name": "photo-12mp.jpg", "mimeType": "image/jpeg",
                                 "buffer": jpeg})

    first, last = after(page, upload, grid, quiet, timeout)
    out["upload 12 MP JPEG: grid repainted"] = first
    out["upload 12 MP JPEG: grid settled"] = last
    page.locator(".zf-images", has_text="photo-12mp.jpg").wait_for(timeout=timeout * 1000)
    out[f"(the JPEG: {len(jpeg) / 1e6:.1f} MB)"] = float("nan")
    return out


def photo_12mp() -> bytes:
    """A 4000 x 3000 JPEG (quality 90): a sample photo scaled up, with fine noise."""
    import numpy as np
    from PIL import Image
    from skimage import data

    small = Image.fromarray(data.coffee()).resize((4000, 3000), Image.Resampling.BILINEAR)
    noise = np.random.default_rng(0).integers(-6, 7, (3000, 4000, 3))
    pixels = np.clip(np.asarray(small, np.int16) + noise, 0, 255).astype(np.uint8)
    with io.BytesIO() as out:
        Image.fromarray(pixels).save(out, format="JPEG", quality=90)
        return out.getvalue()


_PHASES = r"""
import json, sys, time
marks = {}
t = time.perf_counter()
def lap(name):
    global t
    now = time.perf_counter(); marks[name] = now - t; t = now
import torch; lap("import torch")
import torchvision; lap("import torchvision (only where a model needs it)")
import matplotlib.figure; lap("import matplotlib")
import ipympl.backend_nbagg; lap("import ipympl")
import zfwidgets.widgets; lap("import zfwidgets.widgets")
from zfwidgets.cli import open_session
s = open_session(sys.argv[1], None); lap("open_session (model, weights, first forward)")
ex = zfwidgets.widgets.Explorer(s); lap("Explorer() (all views of the first tab)")
print(json.dumps(marks))
"""

_NO_TORCHVISION = _PHASES.replace(
    'import torchvision; lap("import torchvision (only where a model needs it)")\n', "")


def kernel_phases(model: str, tmp: Path) -> dict[str, float]:
    """Imports and construction in a fresh process with the explorer kernel's environment.

    torchvision is timed after torch when the start-up path itself does not import it;
    otherwise its cost is inside the zfwidgets lines."""
    from zfwidgets.cli import kernel_env

    env = kernel_env(model, None, server_env(tmp))
    env["MPLBACKEND"] = "module://ipympl.backend_nbagg"
    probe = subprocess.run([sys.executable, "-c", "import sys, zfwidgets.widgets, zfwidgets.cli;"
                            "print('torchvision' in sys.modules)"],
                           env=env, capture_output=True, text=True, check=True)
    code = _PHASES if probe.stdout.strip() == "True" else _NO_TORCHVISION
    out = subprocess.run([sys.executable, "-c", code, model], env=env, capture_output=True,
                         text=True, check=True)
    marks = json.loads(out.stdout.strip().splitlines()[-1])
    if code is _NO_TORCHVISION:
        marks = {"(torchvision not imported on this path)": 0.0, **marks}
    return marks


def table(rows: dict[str, float]) -> list[str]:
    lines = ["| step | seconds |", "|---|---|"]
    for name, value in rows.items():
        lines.append(f"| {name} | {'' if value != value else f'{value:.2f}'} |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="fresh processes for first paint")
    parser.add_argument("--model", default=None, help="--model for zfwidgets explore")
    parser.add_argument("--quiet", type=float, default=1.5,
                        help="seconds without a change that count as settled")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--no-interactions", action="store_true")
    parser.add_argument("--note", default="", help="a line added to the results file")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    load_before = load_text()
    print(f"# load average before: {load_before}", flush=True)
    runs, more = [], {}
    with tempfile.TemporaryDirectory(prefix="zf-startup-") as tmp, chromium() as browser:
        for k in range(args.runs):
            run_dir = Path(tmp) / f"run{k}"
            run_dir.mkdir()
            gen = first_paint(browser, args.model, run_dir, args.timeout)
            clock, page = next(gen)
            runs.append(dict(clock.marks))
            print(f"run {k + 1}: " + ", ".join(f"{n} {v:.2f} s" for n, v in clock.marks.items()),
                  flush=True)
            if k == args.runs - 1 and not args.no_interactions:
                more = interactions(page, args.quiet, args.timeout)
                for name, value in more.items():
                    print(f"  {name}: {value:.2f} s" if value == value else f"  {name}",
                          flush=True)
            gen.close()
        phases = kernel_phases(args.model or "efficientnet_lite0", Path(tmp) / "phases")
    load_after = load_text()
    for name, value in phases.items():
        print(f"  kernel: {name}: {value:.2f} s", flush=True)

    paint = [r["grid painted (first paint)"] for r in runs]
    from importlib.metadata import version

    info = machine_info(playwright=version("playwright"), voila=version("voila"),
                        ipympl=version("ipympl"), ipywidgets=version("ipywidgets"),
                        chromium=browser_version())
    info["load average (1/5/15 min) at start"] = load_before
    lines = ["# Start-up and the browser round trip (bench/startup.py)", "",
             f"Model: {args.model or 'the default'}; {len(runs)} fresh `zfwidgets explore` "
             f"processes; first paint median **{statistics.median(paint):.2f} s** "
             f"(goal <= {GOAL_FIRST_PAINT:.0f} s on the quiet machine).", "",
             load_note(load_before, load_after), ""]
    if args.note:
        lines += [args.note, ""]
    lines += ["## First paint, seconds from the process start", "",
              "| mark | " + " | ".join(f"run {k + 1}" for k in range(len(runs))) + " |",
              "|---|" + "---|" * len(runs)]
    for name in runs[0]:
        lines.append(f"| {name} | " + " | ".join(f"{r[name]:.2f}" for r in runs) + " |")
    if more:
        lines += ["", "## In the last run's page (seconds from the user's action)", "",
                  *table(more)]
    lines += ["", "## Kernel side: a fresh process with the kernel's environment, no browser", "",
              *table(phases), "", *machine_table(info), ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


def browser_version() -> str:
    try:
        out = subprocess.run(["/usr/bin/chromium", "--version"], capture_output=True, text=True,
                             timeout=30)
        return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
