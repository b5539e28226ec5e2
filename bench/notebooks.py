"""The tutorial notebooks' run times under both matplotlib backends, one torch thread each.

Runs every ``notebooks/NN_*.ipynb`` (or those whose names start with the prefixes given) in a
fresh kernel with ``%matplotlib widget`` (ipympl, what CI's nbval runs) and with ``%matplotlib
inline`` (``tests/test_notebooks_inline.py``), cell by cell through ``tests/nbrun.py``, with
``OMP_NUM_THREADS=1`` and ``OMP_WAIT_POLICY=PASSIVE`` (one thread per process is what fits a
shared machine; issue 14 asks for each notebook under 60 s on the 2-core machine). Records, per
notebook and backend: the wall time (kernel start included), the slowest cell, and any failed cell
or figure shown other than once.

Results merge into ``bench/results/notebooks.json`` (a run of some notebooks keeps the others'
rows, so helpers working on different notebooks can each run theirs) and are written as
``bench/results/notebooks.md``; ``--readme`` also rewrites the table between the
``<!-- notebook-times -->`` markers of the README.

    .venv/bin/python bench/notebooks.py                 # all of them
    .venv/bin/python bench/notebooks.py 01 03 --readme  # two, and the README's table
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from _common import load_note, load_text, machine_info, machine_table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
RESULTS = ROOT / "bench" / "results"
BACKENDS = ("widget", "inline")
BEGIN, END = "<!-- notebook-times -->", "<!-- /notebook-times -->"


def measure(paths: list[Path]) -> dict[str, dict]:
    """Run each notebook under both backends; ``{name: {backend: row}}``."""
    from nbrun import run_notebook

    rows: dict[str, dict] = {}
    for path in paths:
        for backend in BACKENDS:
            load = load_text()
            run = run_notebook(path, backend)
            slow = run.slowest
            rows.setdefault(path.stem, {})[backend] = {
                "seconds": round(run.seconds, 1), "slowest_cell": slow.index,
                "slowest_seconds": round(slow.seconds, 1), "problems": run.problems,
                "load": load}
            status = "ok" if not run.problems else "; ".join(run.problems)
            print(f"{path.stem:24s} {backend:6s} {run.seconds:6.1f} s (slowest cell "
                  f"{slow.index}: {slow.seconds:.1f} s) load {load}  {status}", flush=True)
    return rows


def table(rows: dict[str, dict]) -> list[str]:
    """The markdown table: one row per notebook, both backends."""
    lines = ["| notebook | `%matplotlib widget` (nbval) | `%matplotlib inline` | slowest cell "
             "(widget) | load average (1/5/15 min) at its start |", "|---|---|---|---|---|"]
    total = {b: 0.0 for b in BACKENDS}
    for name in sorted(rows):
        r = rows[name]
        cells = []
        for b in BACKENDS:
            if b in r:
                total[b] += r[b]["seconds"]
                bad = " **(fails: see results)**" if r[b]["problems"] else ""
                cells.append(f"{r[b]['seconds']:.1f} s{bad}")
            else:
                cells.append("-")
        w = r.get("widget") or r.get("inline")
        lines.append(f"| `{name}` | {cells[0]} | {cells[1]} | cell {w['slowest_cell']}: "
                     f"{w['slowest_seconds']:.1f} s | {w['load']} |")
    lines.append(f"| **all** | **{total['widget']:.0f} s** | **{total['inline']:.0f} s** | | |")
    return lines


def write(rows: dict[str, dict], info: dict[str, str], readme: bool) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "notebooks.json").write_text(json.dumps(rows, indent=1, sort_keys=True) + "\n")
    body = table(rows)
    problems = [f"- `{n}` ({b}): {p}" for n, r in sorted(rows.items()) for b, v in r.items()
                for p in v["problems"]]
    md = ["# Notebook run times", "",
          "Each tutorial notebook in a fresh kernel, cell by cell (`tests/nbrun.py`), with one "
          "torch thread (`OMP_NUM_THREADS=1`, `OMP_WAIT_POLICY=PASSIVE`), under both matplotlib "
          "backends; the time includes the kernel's start. Written by `bench/notebooks.py`; rows "
          "of notebooks not run this time are kept from earlier runs (their load is in their row).",
          "", *body, "", load_note(info["load average (1/5/15 min) at start"], load_text()), "",
          *(["Problems:", "", *problems, ""] if problems else []), *machine_table(info), ""]
    (RESULTS / "notebooks.md").write_text("\n".join(md))
    if readme:
        path = ROOT / "README.md"
        text = path.read_text()
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            _, tail = rest.split(END, 1)
            path.write_text(head + BEGIN + "\n" + "\n".join(body) + "\n" + END + tail)
        else:
            print(f"README.md has no {BEGIN} ... {END} markers: not updated")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prefixes", nargs="*", help="notebook name prefixes (default: all)")
    parser.add_argument("--readme", action="store_true", help="rewrite the README's table")
    args = parser.parse_args()
    os.environ.update(OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE",
                      PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT),
                                                               os.environ.get("PYTHONPATH")])))
    from nbrun import notebooks

    paths = [p for p in notebooks() if not args.prefixes
             or any(p.stem.startswith(x) for x in args.prefixes)]
    info = machine_info()
    old = RESULTS / "notebooks.json"
    rows = json.loads(old.read_text()) if old.is_file() else {}
    rows.update(measure(paths))
    rows = {k: v for k, v in rows.items() if (ROOT / "notebooks" / f"{k}.ipynb").is_file()}
    write(rows, info, args.readme)
    print("\n".join(table(rows)))


if __name__ == "__main__":
    main()
