"""Every tutorial notebook under the inline backend: no error, each figure shown exactly once.

CI runs the notebooks under nbval with ``%matplotlib widget`` (ipympl), as a learner in
JupyterLab does. A learner on a static viewer, nbconvert or a front end without ipympl gets
``%matplotlib inline``: this test runs every ``notebooks/NN_*.ipynb`` with the magic swapped
(``tests/nbrun.py``) and checks that no cell fails and that every figure a cell makes through
pyplot appears as exactly one PNG of that cell: a figure shown twice (a canvas returned *and*
flushed) or one that vanishes (made under ``plt.ioff()`` and never shown) fails it.

The runs execute in the background, two at a time, each in its own process and kernel with one
torch thread and a lower CPU priority (``tests/inline_runs.py``): pytest starts them all once it
has collected them, longest first, and moves these tests to the end of the run, where each
waits for its own notebook's result. A test run alone runs only its notebook.
"""

from __future__ import annotations

import pytest

import inline_runs  # noqa: E402  (tests/ is on sys.path: conftest)
from nbrun import notebooks, run_notebook

NOTEBOOKS = notebooks()


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_inline_and_shows_each_figure_once(path):
    run = inline_runs.RUNS.result((inline_runs.TEST, path))
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
