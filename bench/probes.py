"""The full layer-probe sweep that notebook 10 used to run (Tables 4-7 of the paper, offline).

Run on demand::

    .venv/bin/python bench/probes.py [--model efficientnet_lite0] [--trials 10]
                                     [--per-class 1 3] [--scales 0.5 0.333]

Over the offline sample collection (``zf.sample_collection()``: every sample photo whole and cut
into crops at the given scales; 345 images of 19 photos with the defaults), labelled by the photo
each image comes from: the features of each layer of ``mining_layers`` (one forward pass over
the data for all of them, ``layer_features``), then a linear probe (``zf.probe``) per number of
training examples per class, over ``--trials`` random splits. Notebook 10 runs a smaller version
(the half-size crops only, three splits) so that it stays under a minute; this is the sweep it
replaced, with its cost: the seconds of the feature pass and of each probe.

Writes ``bench/results/probes.md``. The accuracies are measurements of the model; the seconds
size the work (they depend on the load: see the note at the end of the file).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from _common import load_note, load_text, machine_info, machine_table

import zfwidgets as zf
from zfwidgets.backend.defaults import mining_layers
from zfwidgets.backend.experiments import layer_features

RESULTS = Path(__file__).resolve().parent / "results" / "probes.md"


def sweep(session, data, labels, layers, per_class, trials):
    """Features once, then one probe per ``per_class``; rows of accuracies and seconds."""
    t0 = time.perf_counter()
    features = layer_features(session, data, layers)
    feature_seconds = time.perf_counter() - t0
    print(f"features of {len(layers)} layers over {len(data)} images: {feature_seconds:.1f} s",
          flush=True)
    rows = []
    for n in per_class:
        t0 = time.perf_counter()
        r = zf.probe(session, None, labels, layers, train_per_class=n, trials=trials,
                     features=features)
        rows.append({"n": n, "result": r, "seconds": time.perf_counter() - t0})
        print(f"{n} per class ({rows[-1]['seconds']:.1f} s): "
              + ", ".join(f"{layer} {cell}%" for layer, cell in r.table()), flush=True)
    return feature_seconds, rows


def table(layers, rows) -> list[str]:
    out = ["| examples per class | " + " | ".join(f"`{layer}`" for layer in layers)
           + " | chance | seconds |", "|---|" + "---|" * (len(layers) + 2)]
    for row in rows:
        r = row["result"]
        out.append(f"| {row['n']} | " + " | ".join(f"{cell}" for _, cell in r.table())
                   + f" | {100 * r.chance:.1f} | {row['seconds']:.1f} |")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--per-class", type=int, nargs="*", default=[1, 3])
    ap.add_argument("--scales", type=float, nargs="*", default=[1 / 2, 1 / 3])
    args = ap.parse_args(argv)
    info = machine_info()
    before = load_text()
    session = zf.Session(args.model)
    data = zf.sample_collection(scales=args.scales)
    labels = [data.name(i).split()[0] for i in range(len(data))]
    layers = mining_layers(session)
    t0 = time.perf_counter()
    feature_seconds, rows = sweep(session, data, labels, layers, args.per_class, args.trials)
    after = load_text()
    lines = ["# Layer probes over the offline sample collection (the sweep notebook 10 replaced)",
             "", *machine_table(info), "",
             f"`{args.model}`, {len(data)} images of {len(set(labels))} photos (crop scales "
             f"{', '.join(f'{s:.3g}' for s in args.scales)}), labelled by photo; layers from "
             f"`mining_layers`; {args.trials} random splits per row; accuracy on the held-out "
             "images, mean ± standard deviation over the splits (%).", "",
             *table(layers, rows), "",
             f"Feature pass (all layers at once): {feature_seconds:.1f} s. Total "
             f"{time.perf_counter() - t0:.0f} s. {load_note(before, after)}", ""]
    RESULTS.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
