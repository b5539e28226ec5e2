"""Benchmark: a large JPEG upload analysed, with and without libjpeg's reduced-scale decoding.

Run on demand::

    .venv/bin/python bench/upload.py [--repeats 5] [--wait-load 1.0]

What a user waits for after an upload: ``Session.set_image`` of the file's bytes and the first
forward pass (``Session.predict``, which preprocesses the image). The session decodes a JPEG
whose both sides are at least twice :meth:`zfwidgets.Preprocessing.draft_side` at 1/2, 1/4 or
1/8 scale (Pillow's ``draft``); the "full decode" column decodes the same bytes at full size
first (``load_image`` without ``min_side``), as before. Photos: mosaics of the offline sample
photos at their native resolution (real photo detail at every scale), saved as JPEG quality 90,
from 1600 x 1200 to 4000 x 3000 (12 megapixels). EfficientNet-Lite0, real weights, torch's
default threads.

It also says what the reduced decode changes: the model input in pixel units (0..255) against
the full decode's, and the predictions (top-1 class, largest change of a top-5 probability).

Results go to ``bench/results/upload.md``.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from pathlib import Path

from _common import load_note, load_text, machine_info, machine_table, wait_for_quiet
from PIL import Image

from zfwidgets import Session, load_image, load_sample, sample_images

RESULTS = Path(__file__).resolve().parent / "results" / "upload.md"
SIZES = ((1600, 1200), (2400, 1800), (4000, 3000))


def mosaic_jpeg(width: int, height: int) -> bytes:
    """The sample photos tiled at native resolution (flipped in turn), cropped to the size."""
    tiles = [load_sample(name) for name in sample_images()]
    canvas = Image.new("RGB", (width, height))
    y, row, i = 0, 0, 0
    while y < height:
        x, tallest = 0, 0
        while x < width:
            tile = tiles[i % len(tiles)]
            if (i // len(tiles) + row) % 2:
                tile = tile.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            canvas.paste(tile, (x, y))
            x, tallest, i = x + tile.width, max(tallest, tile.height), i + 1
        y, row = y + tallest, row + 1
    buf = io.BytesIO()
    canvas.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(session: Session, data: bytes, repeats: int) -> dict:
    def reduced():
        session.set_image(data, name="upload.jpg")
        session.predict(5)

    def full():
        session.set_image(load_image(data), name="upload.jpg")
        session.predict(5)

    times = {"reduced": [], "full": []}
    for _ in range(repeats):  # interleaved: machine noise hits both alike
        times["reduced"].append(timed(reduced))
        times["full"].append(timed(full))
    session.set_image(data)
    small, x_small, p_small = session.image.size, session.input_tensor, session.probabilities()
    session.set_image(load_image(data))
    x_full, p_full = session.input_tensor, session.probabilities()
    to255 = session.preprocessing.denormalize
    diff = (to255(x_small) - to255(x_full)).abs() * 255
    top5 = p_full.topk(5).indices
    return {"reduced": statistics.median(times["reduced"]),
            "full": statistics.median(times["full"]), "decoded": small,
            "mean": float(diff.mean()), "max": float(diff.max()),
            "top1": int(p_small.argmax()) == int(p_full.argmax()),
            "dp": float((p_small[top5] - p_full[top5]).abs().max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--wait-load", type=float, default=None,
                        help="wait until the 1-minute load average is below this")
    args = parser.parse_args()
    wait_for_quiet(args.wait_load, 600)
    before = load_text()
    info = machine_info()
    session = Session("efficientnet_lite0")
    session.predict(1)
    rows = []
    for w, h in SIZES:
        data = mosaic_jpeg(w, h)
        r = measure(session, data, args.repeats)
        rows.append(f"| {w} x {h} ({w * h / 1e6:.1f} MP, {len(data) / 1e6:.1f} MB) | "
                    f"{r['full'] * 1e3:.0f} ms | {r['reduced'] * 1e3:.0f} ms | "
                    f"{r['decoded'][0]} x {r['decoded'][1]} | {r['mean']:.2f} / {r['max']:.0f} | "
                    f"{'same' if r['top1'] else 'CHANGED'} | {r['dp']:.4f} |")
        print(rows[-1], flush=True)
    after = load_text()
    lines = ["# Upload: a large JPEG analysed (set_image + first forward)", "",
             "`bench/upload.py`: median of %d interleaved rounds. EfficientNet-Lite0, 224 x 224 "
             "input (draft side 512: a JPEG is reduced when both sides are >= 1024)." %
             args.repeats, "", load_note(before, after), "",
             "| photo | full decode | reduced decode (the session) | decoded at | "
             "input change, mean / max (of 255) | top-1 | top-5 prob. change |",
             "|---|---|---|---|---|---|---|", *rows, "", *machine_table(info), ""]
    RESULTS.write_text("\n".join(lines))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
