"""Every tutorial notebook under the inline backend: no error, each figure shown exactly once.

CI runs the notebooks under nbval with ``%matplotlib widget`` (ipympl), as a learner in
JupyterLab does. A learner on a static viewer, nbconvert or a front end without ipympl gets
``%matplotlib inline``: this test runs every ``notebooks/NN_*.ipynb`` with the magic swapped
(``tests/nbrun.py``) and checks that no cell fails and that every figure a cell makes through
pyplot appears as exactly one PNG of that cell: a figure shown twice (a canvas returned *and*
flushed) or one that vanishes (made under ``plt.ioff()`` and never shown) fails it.
"""

from __future__ import annotations

import pytest

from nbrun import notebooks, run_notebook

NOTEBOOKS = notebooks()


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_inline_and_shows_each_figure_once(path):
    run = run_notebook(path, "inline")
    assert not run.problems, f"{path.name} under %matplotlib inline:\n" + "\n".join(run.problems)
    assert any(c.pngs for c in run.cells), f"{path.name} showed no figure at all"
