"""Benchmark: how many different photos a top-9 of the offline sample collection draws on.

Run on demand::

    .venv/bin/python bench/sample_diversity.py [--model efficientnet_lite0] [--busiest 5]

Fig. 2 of the paper shows, per feature map, the 9 strongest activations over the data set; with
few photos (and every crop of a photo counted as its own image) the 9 patches of a map come
from one or two photos and the figure teaches little. This script mines the offline collection
twice with the same model and layers (``mining_layers``, ``k=9``, one hit per image): over the
12 photos the collection had before issue 12 (202 images) and over every photo the installed
packages bundle (:func:`zfwidgets.sample_collection`'s default), and reports per layer

* the number of distinct photos in the top-9 of the ``--busiest`` maps (those with the largest
  9th value, as notebook 04 picks them), and
* the mean number of distinct photos over all maps of the layer.

Results go to ``bench/results/sample_diversity.md``. Counts do not depend on machine load; the
wall time does.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from _common import machine_info, machine_table

#: The sample photos of the collection before issue 12 (scikit-image's 12).
BEFORE = ["chelsea", "coffee", "astronaut", "rocket", "motorcycle", "hubble_deep_field", "camera",
          "coins", "moon", "brick", "grass", "gravel"]


def photo_of(data, image_id: int) -> str:
    """The sample photo an image of the collection is cut from."""
    return data.name(int(image_id)).split()[0]


def diversity(session, data, layers, busiest: int) -> tuple[dict, float]:
    """Per layer: distinct photos of the busiest maps' top-9, and the mean over all maps."""
    from zfwidgets import mine

    t0 = time.perf_counter()
    result = mine(session, data, layers, k=9, progress=False)
    seconds = time.perf_counter() - t0
    rows = {}
    for layer in layers:
        top = result[layer]
        live = top.values[:, -1] > 0
        counts = [len({photo_of(data, i) for i in top.image[c].tolist()})
                  for c in range(top.image.shape[0]) if live[c]]
        chosen = torch.argsort(top.values[:, -1], descending=True)[:busiest].tolist()
        rows[layer] = {
            "busiest": [(c, len({photo_of(data, i) for i in top.image[c].tolist()}))
                        for c in chosen],
            "mean": statistics.fmean(counts) if counts else 0.0,
            "live": int(live.sum()),
            "tied": int((live & (top.values[:, 0] == top.values[:, -1])).sum()),
            "maps": int(top.image.shape[0]),
        }
    return rows, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--busiest", type=int, default=5)
    parser.add_argument("--layers", type=int, default=3, help="how many of mining_layers")
    args = parser.parse_args()

    import zfwidgets as zf
    from zfwidgets.backend.defaults import mining_layers

    info = machine_info()
    session = zf.Session(args.model)
    every = mining_layers(session)
    picks = [every[round(j * (len(every) - 1) / (args.layers - 1))] for j in range(args.layers)]
    collections = {"before (12 scikit-image photos)": zf.sample_collection(samples=BEFORE),
                   "after (every bundled photo)": zf.sample_collection()}
    lines = ["# Distinct photos in a top-9 over the offline sample collection", "",
             f"Model {args.model}, layers {', '.join(picks)}; k=9, one hit per image; the "
             f"{args.busiest} maps with the largest 9th value, and the mean over all maps that "
             "fire (9th value > 0). A map whose 9 values are all equal (ReLU6's cap) ranks its "
             "ties by image order, i.e. by the first photos of the catalogue.", ""]
    for title, data in collections.items():
        rows, seconds = diversity(session, data, picks, args.busiest)
        n_photos = len(set(photo_of(data, i) for i in range(len(data))))
        lines += [f"## {title}: {n_photos} photos, {len(data)} images (mined in {seconds:.0f} s)",
                  "", "| layer | busiest maps: distinct photos of 9 | mean over live maps | "
                  "maps whose 9 values are all equal |", "|---|---|---|---|"]
        for layer, row in rows.items():
            busy = ", ".join(f"#{c}: {n}" for c, n in row["busiest"])
            lines.append(f"| {layer} | {busy} | {row['mean']:.1f} ({row['live']} of "
                         f"{row['maps']} maps) | {row['tied']} |")
        lines.append("")
    lines += machine_table(info)
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(__file__).parent / "results" / "sample_diversity.md"
    out.write_text(text)


if __name__ == "__main__":
    main()
