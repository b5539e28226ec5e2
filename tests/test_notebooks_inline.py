"""Every tutorial notebook under the inline backend: no error, each figure shown exactly once.

CI runs the notebooks under nbval with ``%matplotlib widget`` (ipympl), as a learner in
JupyterLab does. A learner on a static viewer, nbconvert or a front end without ipympl gets
``%matplotlib inline``: this test runs every ``notebooks/NN_*.ipynb`` with the magic swapped
(``tests/nbrun.py``) and checks that no cell fails and that every figure a cell makes through
pyplot appears as exactly one PNG of that cell: a figure shown twice (a canvas returned *and*
flushed) or one that vanishes (made under ``plt.ioff()`` and never shown) fails it.

The notebooks a run selects execute two at a time, each in its own process and kernel with one
torch thread (a notebook's small kernels gain little from a second thread, and two kernels keep
both cores of the CI machine busy): the first test to ask starts them all, the longest first,
each test waits for its own notebook's result. A test run alone runs only its notebook.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from nbrun import notebooks, run_notebook

NOTEBOOKS = notebooks()
_AT_ONCE = 2
_TIMES = Path(__file__).resolve().parent.parent / "bench" / "results" / "notebooks.json"
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


def _run_in_child(path: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(Path(__file__).parent)],
                          env=env, capture_output=True, text=True, timeout=1200)
    if done.returncode != 0:
        return {"problems": [f"the runner failed (exit {done.returncode}): "
                             f"{done.stderr.strip()[-2000:]}"], "last": None, "last_code": None}
    return json.loads(done.stdout.strip().splitlines()[-1])


def longest_first(paths: list[Path]) -> list[Path]:
    """``paths`` in the order their runs should start: the longest first, by the run times
    ``bench/notebooks.py`` last recorded (``bench/results/notebooks.json``; a notebook it does
    not know starts first, the rest keep their order), so that two workers end together
    instead of one running the longest notebook alone at the end."""
    try:
        times = json.loads(_TIMES.read_text())
    except (OSError, ValueError):
        return list(paths)

    def seconds(path: Path) -> float:
        try:
            return float(times[path.stem]["inline"]["seconds"])
        except (KeyError, TypeError, ValueError):
            return float("inf")

    return sorted(paths, key=seconds, reverse=True)


@pytest.fixture(scope="module")
def inline_runs(request):
    """``{path: future of its run}`` for every notebook this pytest run selected."""
    name = test_notebook_runs_inline_and_shows_each_figure_once.__name__
    wanted = [item.callspec.params["path"] for item in request.session.items
              if getattr(item, "originalname", "") == name]
    pool = ThreadPoolExecutor(max_workers=_AT_ONCE, thread_name_prefix="inline-notebook")
    futures = {path: pool.submit(_run_in_child, path) for path in longest_first(wanted)}
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_inline_and_shows_each_figure_once(path, inline_runs):
    run = inline_runs[path].result()
    assert not run["problems"], f"{path.name} under %matplotlib inline:\n" + "\n".join(
        run["problems"])
    assert run["last"] is not None and run["last"] == run["last_code"]   # ran to the end


@pytest.mark.slow
def test_the_figure_check_catches_a_doubled_and_a_vanished_figure(tmp_path):
    import nbformat

    cells = [nbformat.v4.new_code_cell(src) for src in (
        "%matplotlib widget\nimport matplotlib.pyplot as plt\nfrom IPython.display import display",
        "fig, ax = plt.subplots()\nax.plot([1, 2])\nplt.show()",                  # once: fine
        "fig, ax = plt.subplots()\nax.plot([2, 1])\nfig.canvas",                  # canvas + flush
        "with plt.ioff():\n    fig, ax = plt.subplots()\nax.plot([1, 3])\n1",    # never shown
        "raise ValueError('boom')",
    )]
    path = tmp_path / "figures.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=cells), path)

    inline = run_notebook(path, "inline", keep_going=True)
    by_cell = {c.index: c for c in inline.cells}
    assert not by_cell[1].problems and by_cell[1].pngs == 1
    assert by_cell[3].problems == ["made 1 figure(s), showed 0 PNG(s)"]
    assert "boom" in by_cell[4].error
    widget = run_notebook(path, "widget", keep_going=True)
    by_cell = {c.index: c for c in widget.cells}
    assert not by_cell[1].problems
    assert any("shown 2 times" in p for p in by_cell[2].problems)
    assert any("shown 0 times" in p for p in by_cell[3].problems)
