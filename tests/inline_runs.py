"""The inline-backend runs of the tutorial notebooks (tests/test_notebooks_inline.py): a
:class:`background.Runs` pool (two background children at a time in all), the longest notebook
first, each its own kernel with one torch thread, started at collection."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from background import Runs

TESTS = Path(__file__).resolve().parent
TIMES = TESTS.parent / "bench" / "results" / "notebooks.json"

_CHILD = """
import json, sys
sys.path.insert(0, sys.argv[2])
from pathlib import Path
from nbrun import run_notebook
run = run_notebook(Path(sys.argv[1]), "inline")
code = [i for i, c in enumerate(run.notebook.cells) if c.cell_type == "code"]
print(json.dumps({"problems": run.problems, "last": run.cells[-1].index if run.cells else None,
                  "last_code": max(code)}))
"""


def longest_first(keys: list[tuple]) -> list[tuple]:
    """``keys`` (test name, notebook path) in the order their runs should start: the longest first, by the run times
    ``bench/notebooks.py`` last recorded (``bench/results/notebooks.json``; a notebook it does
    not know starts first, the rest keep their order), so that two workers end together
    instead of one running the longest notebook alone at the end."""
    try:
        times = json.loads(TIMES.read_text())
    except (OSError, ValueError):
        return list(keys)

    def seconds(key: tuple) -> float:
        try:
            return float(times[Path(key[1]).stem]["inline"]["seconds"])
        except (KeyError, TypeError, ValueError):
            return float("inf")

    return sorted(keys, key=seconds, reverse=True)


TEST = "test_notebook_runs_inline_and_shows_each_figure_once"
RUNS = Runs({TEST: "path"}, lambda key: [sys.executable, "-c", _CHILD, str(key[1]), str(TESTS)],
            order=longest_first)
