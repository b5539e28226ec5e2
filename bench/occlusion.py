"""Benchmark: occlusion maps (paper Fig. 7) against Captum's ``Occlusion`` and a plain loop.

Run on demand::

    .venv/bin/python bench/occlusion.py [--configs 32x8,16x4] [--repeats 1] [--threads N]
                                        [--omp-active] [--no-allocator-section] [--quick]

EfficientNet-Lite0 (real ImageNet weights) on the sample photo "chelsea" at 224 x 224, gray
occluder (0 in normalized space), target = the unoccluded top class. For each occluder
configuration (size 32 stride 8 = 625 positions, size 16 stride 4 = 2809 positions) it times, in
this one process:

* Captum's ``Occlusion.attribute`` with ``perturbations_per_eval`` 1, 16 and 64 (forward
  function = softmax of the model, so that its map is the drop of P(target));
* a plain batched loop: occluded copies, ``model(batch)`` under ``torch.inference_mode``, batch
  16 and 64, in NCHW and in channels-last (a channels-last copy of the model);
* ours: ``occlusion_maps(..., method="incremental")`` at batch 16, 32 and 64 (it also computes
  the most probable class and every channel's total of ``head.act``, which Captum does not).

and prints a table with each time and its ratio to Captum's best. In the same run it checks that
ours equals the plain loop (P(target) within 1e-5, same top class) and that Captum's attribution
equals ours turned into the same per-pixel average (``OcclusionResult.heatmap("drop")``).

CPU settings. Two process-wide settings matter a lot on a small shared machine, for every method:

* ``OMP_WAIT_POLICY``: with OpenMP's default (threads spin at barriers), a busy machine makes
  every parallel region wait for a descheduled thread; many small kernels (ours) suffer most.
  The script sets ``PASSIVE`` before importing torch unless ``--omp-active`` is given or the
  variable is already set.
* glibc's allocator: large tensors are ``mmap``-ed and returned on free, so every batch pays page
  faults again. The main tables run with glibc's defaults (what a user gets); then the script
  calls ``mallopt`` (the equivalent of ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``,
  ``MALLOC_TOP_PAD_``) so that freed memory is kept and reused, and times the first
  configuration again (``--no-allocator-section`` skips that).

Results go to ``bench/results/occlusion.md``.
"""

from __future__ import annotations

import argparse
import os
import sys

if "--omp-active" not in sys.argv:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("KINETO_LOG_LEVEL", "5")

import copy  # noqa: E402
import ctypes  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import load_note, load_text, machine_info, machine_table  # noqa: E402

import zfwidgets  # noqa: E402
from zfwidgets.backend.occlusion import occlude, occlusion_grid, occlusion_maps  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "occlusion.md"
IMAGE = "chelsea"


# --------------------------------------------------------------------------- helpers

def tune_allocator() -> bool:
    """Keep freed memory in glibc's heap (no mmap / trim churn); False if not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
    ok = libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)
    ok &= libc.mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1)
    ok &= libc.mallopt(M_TOP_PAD, 1 << 28)
    return bool(ok)


class Timer:
    """Median wall time and process CPU time (all threads) of ``repeats`` calls."""

    def __init__(self, repeats: int):
        self.repeats = repeats

    def __call__(self, fn):
        walls, cpus, out = [], [], None
        for _ in range(self.repeats):
            c0, t0 = time.process_time(), time.perf_counter()
            out = fn()
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
        return statistics.median(walls), statistics.median(cpus), out


# --------------------------------------------------------------------------- the methods

def captum_map(model, x, size, stride, target, ppe):
    from captum.attr import Occlusion

    def forward(inp):
        return torch.softmax(model(inp), 1)

    occ = Occlusion(forward)
    with torch.no_grad():
        return occ.attribute(x, sliding_window_shapes=(3, size, size), strides=(3, stride, stride),
                             baselines=0.0, target=target, perturbations_per_eval=ppe)


def plain_loop(model, x, size, stride, target, batch, channels_last=False):
    rows, cols = occlusion_grid(x.shape[2], x.shape[3], size, stride)
    corners = [(int(r), int(c)) for r in rows for c in cols]
    out = np.empty(len(corners), np.float32)
    top = np.empty(len(corners), np.int64)
    fill = torch.zeros(1, 3, 1, 1)
    with torch.inference_mode():
        for b in range(0, len(corners), batch):
            chunk = corners[b:b + batch]
            xb = occlude(x, chunk, size, fill)
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            p = torch.softmax(model(xb), 1)
            out[b:b + len(chunk)] = p[:, target].numpy()
            top[b:b + len(chunk)] = p.argmax(1).numpy()
    return out.reshape(len(rows), len(cols)), top.reshape(len(rows), len(cols))


def ours(model, x, size, stride, target, layer, batch):
    return occlusion_maps(model, x, size, stride, target=target, layer=layer,
                          method="incremental", batch_size=batch)


# --------------------------------------------------------------------------- the run

def run(args) -> str:
    session = zfwidgets.Session("efficientnet_lite0", zfwidgets.load_sample(IMAGE))
    model = session.model.eval()
    x = session.input_tensor
    target = int(session.probabilities().argmax())
    layer = session.entry.default_layer
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    timer = Timer(args.repeats)
    import captum

    info = machine_info(captum=captum.__version__)
    load_before = info["load average (1/5/15 min) at start"]
    lines = []

    def say(text=""):
        print(text, flush=True)
        lines.append(text)

    say("# Occlusion maps: zfwidgets vs Captum `Occlusion` vs a plain batched loop")
    say()
    say("Generated by `bench/occlusion.py`. EfficientNet-Lite0 (ImageNet weights), photo "
        f"`{IMAGE}` at 224x224, gray occluder, target = unoccluded top class "
        f"({session.label(target)!r}). Wall time per map and process CPU time (all threads), "
        f"median of {args.repeats} run(s); ratios are to Captum's best in the same section.")
    say()
    for line in machine_table(info):
        say(line)
    say()
    header_at = len(lines)  # the load note goes here once the run is over
    say()
    configs = [tuple(int(v) for v in c.split("x")) for c in args.configs.split(",")]
    summary = []

    def section(title, size, stride, methods, key):
        R = len(range(0, 224 - size + 1, stride))
        say(f"## {title}: size {size}, stride {stride} ({R} x {R} = {R * R} positions)")
        say()
        say(f"Load average at the start of this section: {load_text()}.")
        say()
        results, timings = {}, []
        for name, fn in methods:
            t, c, out = timer(fn)
            timings.append((name, t, c))
            results[name] = out
            print(f"   {name}: {t:.2f} s wall, {c:.2f} s CPU", flush=True)

        def best(prefix, k):
            return min(row[k] for row in timings if row[0].startswith(prefix))

        cw, cc = best("Captum", 1), best("Captum", 2)
        pw = best("plain", 1)
        ow, oc = best("ours", 1), best("ours", 2)
        say("| method | wall s | / Captum's best | CPU s | / Captum's best |")
        say("|---|---:|---:|---:|---:|")
        for name, t, c in timings:
            say(f"| {name} | {t:.2f} | {t / cw:.2f} | {c:.2f} | {c / cc:.2f} |")
        say()
        # ---- exactness, same run
        plain_name = next(n for n, *_ in timings if n.startswith("plain"))
        ours_name = next(n for n, *_ in timings if n.startswith("ours"))
        captum_name = next(n for n, *_ in timings if n.startswith("Captum"))
        ref_prob, ref_top = results[plain_name]
        mine = results[ours_name]
        dp = float(np.abs(mine.prob - ref_prob).max())
        same_top = float((mine.top_class == ref_top).mean())
        cap = results[captum_name][0].mean(0).numpy()
        dc = float(np.nanmax(np.abs(cap - np.nan_to_num(mine.heatmap("drop")))))
        say(f"Exactness (same run): {ours_name} vs {plain_name}: max |P difference| = {dp:.2e} "
            f"(limit 1e-5), same top class at {same_top:.1%} of positions; {captum_name}'s "
            f"attribution vs ours as a per-pixel average drop of P: max difference {dc:.2e}.")
        if dp > 1e-5:
            say("**EXACTNESS CHECK FAILED**")
        say()
        say(f"Best: Captum {cw:.2f} s, plain loop {pw:.2f} s, ours {ow:.2f} s wall = "
            f"**{ow / cw:.2f} x Captum's best** ({cw / ow:.1f} x faster; goal <= 0.33); "
            f"by CPU time {oc / cc:.2f} x ({cc / oc:.1f} x faster).")
        say()
        summary.append((key, size, stride, R * R, cw, pw, ow, oc / cc, dp))

    def methods(size, stride, full=True):
        rows = []
        for ppe in ((1, 16, 64) if full else (16, 64)):
            rows.append((f"Captum Occlusion, perturbations_per_eval {ppe}",
                         lambda ppe=ppe: captum_map(model, x, size, stride, target, ppe)))
        for batch in (16, 64):
            rows.append((f"plain loop, batch {batch}",
                         lambda batch=batch: plain_loop(model, x, size, stride, target, batch)))
            rows.append((f"plain loop, batch {batch}, channels_last",
                         lambda batch=batch: plain_loop(model_cl, x, size, stride, target, batch,
                                                        channels_last=True)))
        for batch in ((16, 32, 64) if full else (32, 64)):
            rows.append((f"ours (incremental), batch {batch}",
                         lambda batch=batch: ours(model, x, size, stride, target, layer, batch)))
        return rows

    for size, stride in configs:
        section("glibc allocator defaults", size, stride, methods(size, stride), "defaults")
    if not args.no_allocator_section:
        tuned = tune_allocator()
        say(f"mallopt (keep freed memory, no mmap/trim churn) applied: {tuned}. From here on "
            "every method runs with the tuned allocator.")
        say()
        size, stride = configs[0]
        section("tuned allocator", size, stride, methods(size, stride, full=False), "tuned")

    say("## Summary")
    say()
    say("| allocator | occluder | positions | Captum best (s) | plain best (s) | ours best (s) | "
        "ours / Captum (wall) | ours / Captum (CPU) | max abs P diff vs plain |")
    say("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for key, size, stride, n, c, p, o, cpu_ratio, dp in summary:
        say(f"| {key} | {size} px, stride {stride} | {n} | {c:.2f} | {p:.2f} | {o:.2f} | "
            f"{o / c:.2f} | {cpu_ratio:.2f} | {dp:.1e} |")
    say()
    lines[header_at] = load_note(load_before, load_text()) + "\n"
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="32x8,16x4",
                        help="occluder SIZExSTRIDE list (default 32x8,16x4)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per method (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--omp-active", action="store_true",
                        help="leave OMP_WAIT_POLICY unset (OpenMP threads spin)")
    parser.add_argument("--no-allocator-section", action="store_true",
                        help="skip the timings with glibc's allocator defaults")
    parser.add_argument("--quick", action="store_true", help="only 32x8, no allocator section")
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args(argv)
    if args.quick:
        args.configs = "32x8"
        args.no_allocator_section = True
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    text = run(args)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
