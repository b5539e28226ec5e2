"""Screenshots of the explorer for the README, taken in a real browser.

Run from the repository root (needs Debian's chromium and the Python playwright package, as the
browser tests)::

    .venv/bin/python docs/make_screenshots.py [--out docs] [--model NAME] [--scene NAME]

It serves the explorer exactly as a user starts it (``zfwidgets explore --no-browser``), opens
it in chromium, does what a user does, and saves each view once it has settled (its canvases
painted, no progress bar shown, nothing changing for a moment):

* ``explorer.png``: the opening view (the default image, layer and map);
* ``low_layer.png``: a low layer chosen in the layer selector (``--low-layer``; default: the
  first layer of the opening layer's kind, a rectifier, whose receptive field is at least
  ``--low-rf`` pixels wide), with its grid and the projection of its strongest map;
* ``top9.png``: the *Top-9 patches* tab, mined over the offline sample collection;
* ``occlusion.png``: the *Occlusion* tab on ``--scene`` (default: the offline sample scene,
  a sample whose name contains "scene", when there is one; else the default photo), with the
  top layer of that kind selected (``--occlusion-layer``), as the paper's Fig. 7;
* ``explain.png``: the *Explain* tab on the same image: every class map of its top class beside
  occlusion, each with its agreement;
* ``knockout.png``: back on the *Feature maps* tab with the default photo and the same top
  layer, its ``--knockouts`` strongest maps (largest total activation) knocked out with the
  grid's "knock out" toggle: crossed out in the grid, the top-5 beside the intact model's.

Each view is cropped to the explorer widget. Nothing is written until every view has been
taken. The script exits with an error (and writes nothing) when a view shows an error box.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from browser import (CANVAS, chromium, explore_command, free_port, has_content,  # noqa: E402
                     jupyter_env, mosaic_geometry, serve_command, wait_canvas_settled, wait_until)

NAMES = ("explorer.png", "low_layer.png", "top9.png", "occlusion.png", "explain.png",
         "knockout.png")


def default_scene() -> str:
    """The offline sample scene (a sample whose name contains "scene"), else the default
    sample photo."""
    from zfwidgets.data import DEFAULT_SAMPLE, sample_images

    return next((name for name in sample_images() if "scene" in name), DEFAULT_SAMPLE)


def layer_options(page) -> list[tuple[str, str, int | None]]:
    """The layer selector's layers: ``(name, kind, receptive-field width or None)`` each, from
    its labels (``"blocks.7.depthwise.act · ReLU6 · 480×14×14 · RF 147px"``)."""
    rows = []
    for text in page.locator(".zf-explorer .zf-layer-selector select option").all_inner_texts():
        text = text.replace("\xa0", " ")
        parts = [p.strip() for p in text.split("·")]
        rf = re.search(r"RF (\d+)", text)
        rows.append((parts[0], parts[1] if len(parts) > 1 else "",
                     int(rf.group(1)) if rf else None))
    return rows


def selected_layer(page) -> str:
    select = page.locator(".zf-explorer .zf-layer-selector select")
    text = select.evaluate("s => s.options[s.selectedIndex].text")
    return text.replace("\xa0", " ").split("·")[0].strip()


def low_layer(rows, kind: str, min_rf: int) -> str:
    """The first layer of ``kind`` (the opening layer's: a rectifier) whose receptive field is
    at least ``min_rf`` px wide; else the first of that kind."""
    same = [r for r in rows if r[1] == kind] or rows
    return next((name for name, _, rf in same if rf and rf >= min_rf), same[0][0])


def top_layer(rows, kind: str) -> str:
    """The last layer of ``kind``: the top rectified layer (the paper's layer 5 role)."""
    same = [r for r in rows if r[1] == kind] or rows
    return same[-1][0]


def no_error(page, what: str) -> None:
    shown = page.locator(".zf-explorer .zf-error:visible").all_inner_texts()
    if shown:
        raise RuntimeError(f"{what}: the explorer shows an error: {shown}")


def settle(page, scope: str, timeout: float, busy_text: str | None = None) -> None:
    """Every visible canvas in ``scope`` painted and still, no progress bar shown there (nor,
    with ``busy_text``, a line matching it: the gallery says "mining ..." until its result is
    drawn)."""
    canvases = page.locator(f"{scope} {CANVAS}:visible")
    wait_until(page, lambda: canvases.count() > 0, f"a canvas in {scope}", timeout)
    if busy_text:
        region = page.locator(scope).first
        wait_until(page, lambda: not re.search(busy_text, region.inner_text(), re.I),
                   f"{scope}: no line saying {busy_text!r}", timeout)
    busy = page.locator(f"{scope} .widget-hprogress:visible")
    for k in range(canvases.count()):
        canvas = canvases.nth(k)
        wait_until(page, lambda: has_content(canvas.screenshot()), f"{scope}: canvas painted",
                   timeout)
        wait_canvas_settled(page, canvas, quiet=2.0, timeout=timeout, busy=busy)


def choose_layer(page, layer: str, timeout: float) -> None:
    if selected_layer(page) == layer:
        return
    select = page.locator(".zf-explorer .zf-layer-selector select")
    labels = select.locator("option").all_inner_texts()
    label = next(t for t in labels if re.match(rf"{re.escape(layer)}[\s\xa0]", t))
    select.select_option(label=label)
    page.locator(".zf-deconv", has_text=f"{layer}").first.wait_for(timeout=timeout * 1000)


def open_tab(page, title: str) -> str:
    page.locator(".zf-explorer .lm-TabBar-tab", has_text=title).first.click()
    return ".zf-explorer .widget-tab-contents > :not(.lm-mod-hidden)"


def shoot(page, what: str) -> bytes:
    no_error(page, what)
    return page.locator(".zf-explorer").screenshot()


def knock_out_strongest(page, args, layer: str, timeout: float) -> None:
    """On the default photo, knock out ``layer``'s ``args.knockouts`` strongest maps with the
    grid's toggle, as a user clicks them (which maps: from a session like the explorer's), then
    select the next strongest map, which stays in."""
    import zfwidgets as zf
    from zfwidgets.data import DEFAULT_SAMPLE

    page.locator(".zf-images select").first.select_option(label=DEFAULT_SAMPLE)
    page.locator(".zf-images", has_text=DEFAULT_SAMPLE).first.wait_for(timeout=timeout * 1000)
    session = zf.Session(args.model, zf.load_sample(DEFAULT_SAMPLE))
    maps = session.activation(layer)
    ranked = maps.flatten(1).sum(1).topk(args.knockouts + 1).indices.tolist()
    strongest, selected = ranked[:-1], ranked[-1]
    at, _ = mosaic_geometry(*maps.shape)
    canvas = page.locator(f".zf-explorer .zf-grid {CANVAS}")
    settle(page, ".zf-explorer", timeout)
    page.locator(".zf-grid button", has_text="knock out").click()
    box = canvas.bounding_box()
    for done, k in enumerate(strongest, 1):
        x, y = at(k, maps.shape[1] / 2, maps.shape[2] / 2)
        page.mouse.click(box["x"] + x, box["y"] + y)
        listed = f"{layer}: {', '.join(map(str, sorted(strongest[:done])))}"
        wait_until(page, lambda: listed in page.locator(".zf-grid").inner_text(),
                   f"the grid to list {listed!r}", timeout)
    page.locator(".zf-grid button", has_text="knock out").click()     # the toggle off again
    x, y = at(selected, maps.shape[1] / 2, maps.shape[2] / 2)          # the next strongest map
    page.mouse.click(box["x"] + x, box["y"] + y)
    page.locator(".zf-grid", has_text=f"map {selected} of").wait_for(timeout=timeout * 1000)


def take(url: str, browser, args) -> dict[str, bytes]:
    """The six views, by file name."""
    timeout = args.timeout
    context = browser.new_context(viewport={"width": args.width, "height": 1000},
                                  device_scale_factor=args.scale)
    try:
        page = context.new_page()
        page.goto(url, timeout=timeout * 1000)
        page.locator(".zf-explorer").wait_for(timeout=timeout * 1000)
        shots = {}
        settle(page, ".zf-explorer", timeout)
        shots["explorer.png"] = shoot(page, "the opening view")

        rows, opening = layer_options(page), selected_layer(page)
        kind = next((k for name, k, _ in rows if name == opening), "")
        layer = args.low_layer or low_layer(rows, kind, args.low_rf)
        choose_layer(page, layer, timeout)
        settle(page, ".zf-explorer", timeout)
        shots["low_layer.png"] = shoot(page, f"layer {layer}")

        if args.top9_layer:
            choose_layer(page, args.top9_layer, timeout)
        settle(page, open_tab(page, "Top-9 patches"), timeout, busy_text=r"\bmining\b")
        shots["top9.png"] = shoot(page, "the top-9 tab")

        open_tab(page, "Feature maps")
        choose_layer(page, args.occlusion_layer or top_layer(rows, kind), timeout)
        page.locator(".zf-images select").first.select_option(label=args.scene)
        page.locator(".zf-images", has_text=args.scene).first.wait_for(timeout=timeout * 1000)
        settle(page, ".zf-explorer", timeout)
        settle(page, open_tab(page, "Occlusion"), timeout)
        shots["occlusion.png"] = shoot(page, f"the occlusion tab on {args.scene}")
        settle(page, open_tab(page, "Explain"), timeout)
        shots["explain.png"] = shoot(page, f"the explain tab on {args.scene}")

        open_tab(page, "Feature maps")
        knock_out_strongest(page, args, selected_layer(page), timeout)
        settle(page, ".zf-explorer", timeout)
        shots["knockout.png"] = shoot(page, "maps knocked out")
        return shots
    finally:
        context.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="folder for the PNGs")
    parser.add_argument("--model", help="--model for zfwidgets explore (default: its default)")
    parser.add_argument("--scene", default=None, help="sample image for the occlusion view")
    parser.add_argument("--low-layer", default=None, help="layer of low_layer.png")
    parser.add_argument("--low-rf", type=int, default=19,
                        help="without --low-layer: the first layer with at least this RF (px)")
    parser.add_argument("--top9-layer", default=None,
                        help="layer of top9.png (default: the low layer)")
    parser.add_argument("--occlusion-layer", default=None,
                        help="layer of occlusion.png (default: the top layer of the opening "
                             "layer's kind, the paper's layer 5)")
    parser.add_argument("--knockouts", type=int, default=10,
                        help="strongest maps of the top layer knocked out in knockout.png")
    parser.add_argument("--width", type=int, default=1280, help="browser window width (px)")
    parser.add_argument("--scale", type=float, default=1.0, help="device pixel ratio")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args(argv)
    args.scene = args.scene or default_scene()

    with tempfile.TemporaryDirectory(prefix="zf-screenshots-") as tmp:
        port = free_port()
        options = ["--model", args.model] if args.model else []
        env = jupyter_env(Path(tmp))
        del env["MPLCONFIGDIR"]                 # matplotlib's own (font cache) as the user's
        if os.environ.get("MPLCONFIGDIR"):
            env["MPLCONFIGDIR"] = os.environ["MPLCONFIGDIR"]
        with serve_command(explore_command(port, *options), port, Path(tmp), env=env,
                           timeout=args.timeout) as url, chromium() as browser:
            shots = take(url, browser, args)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        (args.out / name).write_bytes(shots[name])
        print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
