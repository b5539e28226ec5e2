"""Numbers for the lecture kit: how far each class map agrees with occlusion, and what knocking
out a layer's strongest maps does compared with random ones. EfficientNet-Lite0, offline.

Run on demand::

    .venv/bin/python bench/explain.py [--photos chelsea coffee ...] [--size 32 --stride 8]
                                      [--k 10 --trials 5] [--layers L1 L2] [--skip-knockout]

1. For each sample photo, ``zf.explain`` for the model's top class: every class map's
   Spearman rank correlation with the exact occlusion map (at the occlusion grid, squares of
   ``--size`` px every ``--stride`` px) and the area under its deletion curve (lower = the
   ranking finds what the class needs sooner), beside occlusion's own ranking and a random one.
2. Over the offline sample collection (``zf.sample_collection()``, 202 images), for two layers
   (default the model's ``middle_layer`` and ``default_layer``): the fraction of images whose
   top-1 class changes, and the mean drop of the clean top-1 probability, when the layer's
   ``--k`` strongest maps (largest mean activation over the collection) are knocked out,
   against ``--trials`` sets of ``--k`` random maps (``zf.knockout_comparison``).

Writes ``bench/results/explain.md``. These are measurements of the model, not timings; the
seconds are reported only to size the work.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from _common import load_note, load_text, machine_info, machine_table

import zfwidgets as zf

RESULTS = Path(__file__).resolve().parent / "results" / "explain.md"
DEFAULT_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "motorcycle", "camera")


def agreement_rows(session, photos, size, stride):
    """One row per photo: label, P, Spearman per method, deletion area per ranking."""
    rows = []
    for name in photos:
        session.set_image(zf.load_sample(name), name=name)
        t0 = time.perf_counter()
        e = zf.explain(session, size=size, stride=stride, progress=False)
        rows.append({"photo": name, "label": e.label, "layer": e.layer,
                     "p": float(session.probabilities()[e.target[0]]),
                     "agreement": e.agreement, "area": e.deletion_area(),
                     "seconds": time.perf_counter() - t0})
        print(f"{name}: {e.label} " + " ".join(f"{m}={v:.2f}" for m, v in e.agreement.items()),
              flush=True)
    return rows


def knockout_rows(session, layers, k, trials):
    source = zf.sample_collection()
    rows = []
    for layer in layers:
        t0 = time.perf_counter()
        c = zf.knockout_comparison(session, layer, source, k=k, trials=trials, progress=False)
        rows.append({"layer": layer, "maps": int(c.mean_activation.size), "cmp": c,
                     "seconds": time.perf_counter() - t0})
        print(f"{layer}: strongest changed {c.strongest.changed:.3f} drop {c.strongest.drop:.3f}"
              f" | random changed {c.random_changed:.3f} drop {c.random_drop:.3f}", flush=True)
    return rows, len(source)


def agreement_table(rows) -> list[str]:
    methods = list(rows[0]["agreement"])
    rankings = list(rows[0]["area"])
    out = ["| photo | top class (P) | " + " | ".join(methods) + " |",
           "|---|---|" + "---|" * len(methods)]
    for r in rows:
        out.append(f"| {r['photo']} | {r['label']} ({r['p']:.2f}) | "
                   + " | ".join(f"{r['agreement'][m]:.2f}" for m in methods) + " |")
    med = {m: np.nanmedian([r["agreement"][m] for r in rows]) for m in methods}
    out.append("| **median** | | " + " | ".join(f"**{med[m]:.2f}**" for m in methods) + " |")
    out += ["", "Deletion: area under the probability curve as the top-ranked 8 px squares are "
            "greyed (lower = found what the class needs sooner; each row's first point is the "
            "photo's P).", "",
            "| photo | " + " | ".join(rankings) + " |", "|---|" + "---|" * len(rankings)]
    for r in rows:
        out.append(f"| {r['photo']} | " + " | ".join(f"{r['area'][m]:.3f}" for m in rankings)
                   + " |")
    med = {m: np.median([r["area"][m] for r in rows]) for m in rankings}
    out.append("| **median** | " + " | ".join(f"**{med[m]:.3f}**" for m in rankings) + " |")
    return out


def knockout_table(rows, n_images, k, trials) -> list[str]:
    out = [f"Over the {n_images} images of the offline sample collection; {k} maps knocked out; "
           f"random: mean (min-max) over {trials} sets.", "",
           "| layer | maps | strongest: top-1 changed | strongest: P drop | random: top-1 "
           "changed | random: P drop |", "|---|---|---|---|---|---|"]
    for r in rows:
        c = r["cmp"]
        ch = [x.changed for x in c.random]
        dr = [x.drop for x in c.random]
        out.append(f"| `{r['layer']}` | {r['maps']} | **{c.strongest.changed:.3f}** | "
                   f"**{c.strongest.drop:.3f}** | {np.mean(ch):.3f} ({min(ch):.3f}-{max(ch):.3f})"
                   f" | {np.mean(dr):.3f} ({min(dr):.3f}-{max(dr):.3f}) |")
    out += ["", "Strongest maps: " + "; ".join(
        f"`{r['layer']}` {list(r['cmp'].strongest.channels)}" for r in rows)]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photos", nargs="*", default=list(DEFAULT_PHOTOS))
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--stride", type=int, default=8)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--layers", nargs="*", default=None)
    ap.add_argument("--skip-knockout", action="store_true")
    args = ap.parse_args(argv)
    info = machine_info()
    before = load_text()
    s = zf.Session()
    t0 = time.perf_counter()
    rows = agreement_rows(s, args.photos, args.size, args.stride)
    lines = ["# Class maps against occlusion; knock-out of strongest vs random maps", "",
             *machine_table(info), "",
             f"EfficientNet-Lite0 (offline weights), the top class of each photo; occlusion "
             f"{args.size} px / stride {args.stride}; Grad-CAM at `{rows[0]['layer']}` "
             "(the default: the last layer with a spatial map).", "",
             "## Agreement with occlusion (Spearman, at the occlusion grid)", "",
             "Each map's mean over every occluder square ranked against the drop in the class "
             "probability that hiding the square caused (1 = the same ranking).", "",
             *agreement_table(rows), ""]
    if not args.skip_knockout:
        s.set_image(None)
        layers = args.layers or [s.entry.middle_layer, s.entry.default_layer]
        krows, n = knockout_rows(s, layers, args.k, args.trials)
        lines += ["## Knock-out: strongest vs random maps", "",
                  *knockout_table(krows, n, args.k, args.trials), ""]
    after = load_text()
    lines += [f"Total {time.perf_counter() - t0:.0f} s. {load_note(before, after)}", ""]
    RESULTS.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
